//! Running PostgreSQL binaries as an unprivileged user.
//!
//! PostgreSQL refuses to run as root. Every process Strata starts from
//! Postgres' binaries (`initdb`, `postgres`, `postgres --single`) goes through
//! [`PgUser::command`], which switches the child to the configured user when
//! the current process is root and leaves it alone otherwise.
//!
//! The user comes from `STRATA_PG_USER` (default `postgres`, the user Debian's
//! `postgresql-15` package creates). Paths such a process touches must be
//! owned by, or at least reachable for, that user: [`PgUser::chown`] hands a
//! directory over.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Default directory of PostgreSQL 15 server binaries on Debian.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Directory of the PostgreSQL server binaries: `STRATA_PG_BIN` or Debian's.
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("STRATA_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN_DIR))
}

#[derive(Debug, thiserror::Error)]
pub enum PgUserError {
    #[error("running as root and the unprivileged user {0:?} does not exist (set STRATA_PG_USER or run scripts/setup.sh)")]
    NoSuchUser(String),
    #[error("looking up user {name:?}: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("chown {path} to {user}: {source}")]
    Chown {
        path: PathBuf,
        user: String,
        source: std::io::Error,
    },
}

/// The identity PostgreSQL processes run under.
#[derive(Debug, Clone)]
pub struct PgUser {
    /// `Some` when we are root and must switch; `None` to run as ourselves.
    switch_to: Option<(String, u32, u32)>,
}

impl PgUser {
    /// Resolve the user from the environment. When not root, processes keep
    /// the current identity and nothing is looked up.
    pub fn from_env() -> Result<PgUser, PgUserError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(PgUser { switch_to: None });
        }
        let name = std::env::var("STRATA_PG_USER").unwrap_or_else(|_| "postgres".to_string());
        let user = nix::unistd::User::from_name(&name)
            .map_err(|source| PgUserError::Lookup {
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| PgUserError::NoSuchUser(name.clone()))?;
        Ok(PgUser {
            switch_to: Some((name, user.uid.as_raw(), user.gid.as_raw())),
        })
    }

    /// Uid/gid processes will run with, if different from ours.
    pub fn ids(&self) -> Option<(u32, u32)> {
        self.switch_to.as_ref().map(|(_, uid, gid)| (*uid, *gid))
    }

    pub fn name(&self) -> String {
        match &self.switch_to {
            Some((name, _, _)) => name.clone(),
            None => std::env::var("USER").unwrap_or_else(|_| "current user".to_string()),
        }
    }

    /// A command for `program` that runs as this user, with `HOME` and locale
    /// settings that do not depend on the caller.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Some((name, uid, gid)) = &self.switch_to {
            cmd.uid(*uid).gid(*gid).env("USER", name);
        }
        cmd.env("LC_ALL", "C.UTF-8").env_remove("PGDATA");
        cmd
    }

    /// Whether this user can reach `dir`: every existing ancestor is owned by
    /// the user or searchable by others. Always true when not switching.
    pub fn can_traverse(&self, dir: &Path) -> bool {
        let Some((_, uid, _)) = &self.switch_to else { return true };
        dir.ancestors().filter(|a| a.exists()).all(|a| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(a).map(|m| m.uid() == *uid || m.mode() & 0o001 != 0).unwrap_or(false)
        })
    }

    /// Make `path` (recursively) owned by this user. No-op when not switching.
    pub fn chown(&self, path: &Path) -> Result<(), PgUserError> {
        let Some((name, uid, gid)) = &self.switch_to else {
            return Ok(());
        };
        let fail = |source| PgUserError::Chown {
            path: path.to_path_buf(),
            user: name.clone(),
            source,
        };
        std::os::unix::fs::lchown(path, Some(*uid), Some(*gid)).map_err(fail)?;
        if path.is_dir() && !path.is_symlink() {
            for entry in std::fs::read_dir(path).map_err(fail)? {
                self.chown(&entry.map_err(fail)?.path())?;
            }
        }
        Ok(())
    }
}
