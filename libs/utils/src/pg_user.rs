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
//! directory over, and [`PgUser::reachable_dir`] picks a directory the user
//! can reach, falling back to [`state_root`] when the preferred one (say, in
//! a checkout under `/root`) is not. Reachability is asked of the system as
//! the user (`test -r` / `test -x`), never judged from permission bits as root.

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

/// Where state that PostgreSQL processes must reach goes when the
/// repository or checkout is not reachable by them: `STRATA_STATE_DIR`, by
/// default `/var/lib/strata`.
pub fn state_root() -> PathBuf {
    std::env::var_os("STRATA_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/strata"))
}

/// Create `dir` (and its parents) if missing; a directory created here is
/// left traversable by everyone (0755), so that a user-owned directory
/// inside it is reachable.
fn ensure_public_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
}

#[derive(Debug, thiserror::Error)]
pub enum PgUserError {
    #[error("create {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("{path} is not reachable by the unprivileged user {user} (set STRATA_STATE_DIR to a directory it can enter)")]
    Unreachable { path: PathBuf, user: String },
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

    /// A command for `program` that runs as this user, in `/`, with locale
    /// settings that do not depend on the caller.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_in(None, program)
    }

    /// [`PgUser::command`] in network namespace `netns` (see [`crate::netns`]).
    pub fn command_in(&self, netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = crate::netns::command_in(netns, program, self.ids());
        if let Some((name, _, _)) = &self.switch_to {
            // Our working directory may be one the user cannot enter (a
            // checkout under /root): every path handed over is absolute.
            cmd.env("USER", name).current_dir("/");
        }
        cmd.env("LC_ALL", "C.UTF-8").env_remove("PGDATA");
        cmd
    }

    /// Whether this user can read `path` (and traverse every directory above
    /// it), asked the only exact way: `test -r` run as the user. Always true
    /// when not switching.
    pub fn can_read(&self, path: &Path) -> bool {
        self.test_as_user("-r", path)
    }

    /// Whether this user can enter `dir`, or, when it does not exist yet, its
    /// nearest existing ancestor (so that a directory created there and
    /// handed over with [`PgUser::chown`] is reachable).
    pub fn can_enter(&self, dir: &Path) -> bool {
        match dir.ancestors().find(|a| a.exists()) {
            Some(existing) => self.test_as_user("-x", existing),
            None => false,
        }
    }

    fn test_as_user(&self, flag: &str, path: &Path) -> bool {
        if self.switch_to.is_none() {
            return true;
        }
        self.command("test")
            .arg(flag)
            .arg(path)
            .stdin(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// A directory for files that processes of this user must reach (data
    /// directories, logs, sockets, scratch clusters): `preferred` when the
    /// user can enter it, otherwise a directory under [`state_root`] named
    /// after `preferred`'s absolute path (stable across runs, distinct per
    /// path). A checkout or repository under `/root` (mode 0700) takes the
    /// second branch. The directory is created and owned by the user.
    pub fn reachable_dir(&self, preferred: &Path) -> Result<PathBuf, PgUserError> {
        let fail = |path: &Path, source| PgUserError::Dir { path: path.to_path_buf(), source };
        let absolute = std::path::absolute(preferred).map_err(|e| fail(preferred, e))?;
        let chosen = if self.can_enter(&absolute) {
            absolute
        } else {
            let root = state_root();
            ensure_public_dir(&root).map_err(|e| fail(&root, e))?;
            if !self.can_enter(&root) {
                return Err(PgUserError::Unreachable { path: root, user: self.name() });
            }
            let hash = crc32c::crc32c(absolute.to_string_lossy().as_bytes());
            let base = absolute.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            root.join("by-path").join(format!("{hash:08x}-{base}"))
        };
        if let Some(parent) = chosen.parent() {
            ensure_public_dir(parent).map_err(|e| fail(parent, e))?;
        }
        std::fs::create_dir_all(&chosen).map_err(|e| fail(&chosen, e))?;
        self.chown_one(&chosen)?;
        Ok(chosen)
    }

    /// Make `path` itself (not what is under it) owned by this user. No-op
    /// when not switching.
    pub fn chown_one(&self, path: &Path) -> Result<(), PgUserError> {
        let Some((name, uid, gid)) = &self.switch_to else { return Ok(()) };
        std::os::unix::fs::lchown(path, Some(*uid), Some(*gid)).map_err(|source| PgUserError::Chown {
            path: path.to_path_buf(),
            user: name.clone(),
            source,
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
