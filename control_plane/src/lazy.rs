//! Lazy computes: the endpoint's data directory is a FUSE mount served by a
//! `lazyfs` process (crate `lazyfs`) over a local overlay built from a
//! sizes-only basebackup; relation blocks are fetched from the pageserver at
//! the start LSN on first read.
//!
//! Owns the lifecycle of that process and its mount. Files, per endpoint:
//! `<repo>/endpoints/<name>/lazyfs/` holds `pid`, `log` and `backing/` (the
//! overlay, root-only); the mount point is the endpoint's usual data
//! directory. Beside the data directory, `postmaster.pid.lazy` is a copy of
//! the postmaster's pid file, readable when the mount is not (see
//! [`crate::endpoint::Endpoint::running_pid`]).
//!
//! Invariants: lazyfs starts before PostgreSQL and stops after it; every
//! start builds a fresh overlay at the start LSN (nothing of an old one is
//! reused, so a crash of either side loses nothing committed: the
//! safekeepers and the pageserver hold it); a mount left by a dead lazyfs is
//! detached (`fusermount3 -u -z`) before anything else touches the
//! directory. A dead lazyfs leaves its mount answering ENOTCONN, so the
//! compute fails with I/O errors and never reads stale or zero pages.
//!
//! Cancellation: `start` dropped midway may leave a lazyfs running; the next
//! `start` or `stop` of the endpoint cleans it up.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use utils::pg_user::PgUser;

use crate::background::{self, Component};
use crate::endpoint::Endpoint;

pub const LAZYFS_BINARY: &str = "lazyfs";
/// First port tried for the lazyfs metrics endpoint of a compute on
/// `endpoint_port`: 3000 below it, so that clusters whose computes use
/// different ports (other repositories on the host) do not collide.
pub fn lazyfs_base_port(endpoint_port: u16) -> u16 {
    endpoint_port.checked_sub(3000).filter(|p| *p >= 1024).unwrap_or_else(|| endpoint_port.saturating_add(1))
}

/// Directory of endpoint `name`'s lazyfs (pid, log, overlay).
pub fn lazyfs_dir(repo: &Path, name: &str) -> PathBuf {
    Endpoint::dir(repo, name).join("lazyfs")
}

fn in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Why a lazy compute cannot run on this machine, if it cannot.
pub fn unavailable() -> Option<String> {
    if let Err(e) = fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse cannot be opened: {e}"));
    }
    if in_path("fusermount3").is_none() {
        return Some("fusermount3 is not installed (Debian package fuse3; scripts/setup.sh installs it)".into());
    }
    match background::bin_dir() {
        Ok(dir) if dir.join(LAZYFS_BINARY).is_file() => None,
        Ok(dir) => Some(format!("{} not found (cargo build --workspace --bins)", dir.join(LAZYFS_BINARY).display())),
        Err(e) => Some(format!("{e:#}")),
    }
}

/// Decode the octal escapes (`\040`) of a /proc/self/mountinfo path.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok()).and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a FUSE filesystem is mounted at `path`.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = fields.iter().position(|f| *f == "-").and_then(|i| fields.get(i + 1)).copied().unwrap_or("");
        fields.get(4).is_some_and(|p| Path::new(&unescape_mount_path(p)) == path) && fstype.starts_with("fuse")
    })
}

/// Detach a FUSE mount at `path` (lazily: open files keep failing).
pub fn unmount(path: &Path) -> anyhow::Result<()> {
    if !is_mounted(path) {
        return Ok(());
    }
    let out = Command::new("fusermount3").arg("-u").arg("-z").arg(path).output().context("run fusermount3")?;
    if !out.status.success() && is_mounted(path) {
        bail!("fusermount3 -u -z {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether the endpoint's lazyfs process is alive.
pub fn lazyfs_running(repo: &Path, name: &str) -> bool {
    background::running_pid(&lazyfs_dir(repo, name)).is_some()
}

/// Stop the endpoint's lazyfs (SIGTERM: it unmounts), detach a mount left
/// behind, and remove the overlay. Call after PostgreSQL stopped.
pub async fn stop(repo: &Path, ep: &Endpoint) -> anyhow::Result<()> {
    let dir = lazyfs_dir(repo, &ep.name);
    background::stop(&dir).await?;
    unmount(&ep.pgdata)?;
    let _ = fs::remove_file(ep.pid_copy_path());
    let backing = dir.join("backing");
    if backing.exists() {
        fs::remove_dir_all(&backing).with_context(|| format!("remove {}", backing.display()))?;
    }
    Ok(())
}

/// A postmaster whose lazyfs died cannot be stopped by `pg_ctl` (its pid
/// file is unreadable): immediate shutdown by signal, then SIGKILL.
pub async fn kill_orphaned_postmaster(ep: &Endpoint) {
    let Some(pid) = ep.running_pid() else { return };
    eprintln!("strata: the lazyfs of endpoint {} is gone: stopping its postmaster (pid {pid}, immediate shutdown)", ep.name);
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGQUIT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && ep.running_pid().is_some() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if ep.running_pid().is_some() {
        let _ = kill(pid, Signal::SIGKILL);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What lazyfs needs to serve one start.
pub struct LazyStart<'a> {
    pub repo: &'a Path,
    pub ep: &'a Endpoint,
    pub lsn: utils::lsn::Lsn,
    pub pageserver_host: &'a str,
    pub pageserver_pg_port: u16,
    pub http_port: u16,
    /// Warm every relation block in the background (`[compute] lazy_prefetch`).
    pub prefetch: bool,
    /// FUSE passthrough for wholly local files (`[compute] lazy_passthrough`).
    pub passthrough: bool,
}

impl LazyStart<'_> {
    /// Prepare the (empty, root-only) mount point and start lazyfs over the
    /// overlay already unpacked in `<lazyfs dir>/backing`; returns once
    /// mounted.
    pub async fn mount(&self) -> anyhow::Result<()> {
        let ep = self.ep;
        let dir = lazyfs_dir(self.repo, &ep.name);
        unmount(&ep.pgdata)?;
        if ep.pgdata.exists() {
            fs::remove_dir_all(&ep.pgdata).with_context(|| format!("remove old {}", ep.pgdata.display()))?;
        }
        fs::create_dir_all(&ep.pgdata)?;
        fs::set_permissions(&ep.pgdata, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let (uid, gid) = PgUser::from_env()?.ids().context("the PostgreSQL user has no uid (lazy computes need one)")?;
        let mut args = vec![
            format!("--endpoint={}", ep.name),
            format!("--mountpoint={}", ep.pgdata.display()),
            format!("--backing={}", dir.join("backing").display()),
            format!("--pageserver-host={}", self.pageserver_host),
            format!("--pageserver-port={}", self.pageserver_pg_port),
            format!("--tenant={}", ep.tenant_id),
            format!("--timeline={}", ep.timeline_id),
            format!("--lsn={}", self.lsn),
            format!("--uid={uid}"),
            format!("--gid={gid}"),
            format!("--http-port={}", self.http_port),
            format!("--prefetch={}", self.prefetch),
            format!("--passthrough={}", self.passthrough),
        ];
        if crate::config::Config::load(self.repo)?.auth {
            let token_file = crate::auth::tenant_token_file(self.repo, ep.tenant_id)?;
            args.push(format!("--auth-token-file={}", token_file.display()));
        }
        let component = Component {
            name: format!("lazyfs of endpoint {}", ep.name),
            dir,
            binary: background::bin_dir()?.join(LAZYFS_BINARY),
            args,
            ports: vec![self.http_port],
            ready_url: format!("http://127.0.0.1:{}/ready", self.http_port),
            at: Default::default(),
        };
        component.start().await?;
        if !is_mounted(&ep.pgdata) {
            bail!("lazyfs answers but {} is not mounted", ep.pgdata.display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/end\\"), "/end\\");
    }
}
