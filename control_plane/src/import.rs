//! Checks on a PostgreSQL data directory before `strata tenant import`
//! hands it to the pageserver.
//!
//! Owns: the refusals a user needs to understand in one line — a missing
//! directory, another PostgreSQL major version, a server still running on
//! it, a directory that was not shut down cleanly, tablespaces outside it —
//! all decided before anything is created, so a refused import leaves no
//! tenant behind.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use postgres_ffi::controlfile::{ControlFile, DbState};

/// A data directory that passed the checks.
#[derive(Debug)]
pub struct CheckedPgdata {
    /// Canonical path (the pageserver resolves it itself).
    pub path: PathBuf,
    pub system_id: u64,
    pub size_bytes: u64,
}

/// Refuse what the pageserver cannot import; see the module doc.
pub fn check_pgdata(dir: &Path) -> anyhow::Result<CheckedPgdata> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let path = dir.canonicalize().with_context(|| format!("resolve {}", dir.display()))?;
    let shown = path.display();
    let version = std::fs::read_to_string(path.join("PG_VERSION"))
        .with_context(|| format!("{shown} is not a PostgreSQL data directory (no PG_VERSION)"))?;
    let version = version.trim();
    if version != "15" {
        bail!("{shown} is a PostgreSQL {version} data directory; Strata runs PostgreSQL 15 (upgrade it with pg_upgrade first)");
    }
    if let Some(pid) = running_postmaster(&path) {
        bail!("{shown} is in use by a running PostgreSQL (pid {pid}); stop it first (pg_ctl -D {shown} stop -m fast)");
    }
    let control_path = path.join("global/pg_control");
    let bytes = std::fs::read(&control_path).with_context(|| format!("read {}", control_path.display()))?;
    let control = ControlFile::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", control_path.display()))?;
    if control.state() != DbState::Shutdowned {
        bail!(
            "{shown} was not shut down cleanly (state {:?}); start it and stop it with `pg_ctl stop -m fast` so it writes a shutdown checkpoint",
            control.state()
        );
    }
    check_tablespaces(&path)?;
    Ok(CheckedPgdata { system_id: control.system_identifier(), size_bytes: dir_size(&path), path })
}

/// Pid of a live postmaster named by `postmaster.pid`, if any.
fn running_postmaster(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    crate::background::is_alive(pid).then_some(pid)
}

fn check_tablespaces(pgdata: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(pgdata.join("pg_tblspc")) else { return Ok(()) };
    if let Some(entry) = entries.flatten().next() {
        let target = std::fs::read_link(entry.path()).unwrap_or_else(|_| entry.path());
        bail!(
            "{} has a user tablespace (oid {}, at {}); Strata imports only the default tablespaces: move its objects with ALTER ... SET TABLESPACE pg_default first",
            pgdata.display(),
            entry.file_name().to_string_lossy(),
            target.display()
        );
    }
    Ok(())
}

/// Bytes in regular files under `dir` (symlinks not followed).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
