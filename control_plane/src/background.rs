//! Running the cluster's components as background processes.
//!
//! Each component has a directory under the repository holding its data, a
//! `pid` file and a `log` file. Invariants: a component is started only if
//! its pid file names no live process (a stale pid file is removed) and its
//! ports are free; `start` returns only once the component answers its
//! readiness URL, or fails with the tail of its log; a component with a
//! network namespace is started inside it (`nsenter --net`, which execs, so
//! the pid file names the component itself); `stop` sends SIGTERM,
//! waits, then SIGKILL, and removes the pid file.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a component may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a component may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Component {
    /// e.g. `pageserver`, `safekeeper_1`.
    pub name: String,
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub ports: Vec<u16>,
    /// HTTP URL that answers 2xx once the component is ready.
    pub ready_url: String,
    /// Its host and network namespace.
    pub at: crate::config::Placement,
}

/// Directory of Strata's binaries: `$STRATA_BIN_DIR`, else next to `strata`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("STRATA_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locate the strata binary")?;
    Ok(exe.parent().context("strata binary has no directory")?.to_path_buf())
}

fn pid_path(dir: &Path) -> PathBuf {
    dir.join("pid")
}

pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("log")
}

/// The pid of a live process recorded in `dir`, removing a stale pid file.
pub fn running_pid(dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(pid_path(dir)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    if is_alive(pid) {
        return Some(pid);
    }
    let _ = fs::remove_file(pid_path(dir));
    None
}

/// Whether `pid` names a live process: it exists and is not a zombie.
/// `kill(pid, 0)` alone succeeds on a zombie, and where orphans are reaped
/// late or never (a container's init) a killed process stays one.
pub fn is_alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok() && !is_zombie(pid)
}

/// Whether `pid` is a zombie (dead, not yet reaped by its parent).
pub fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

pub fn log_tail(dir: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log_path(dir)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `url` answers with a 2xx status.
pub async fn is_ready(url: &str) -> bool {
    is_ready_with(&reqwest::Client::new(), url).await
}

async fn is_ready_with(client: &reqwest::Client, url: &str) -> bool {
    let request = client.get(url).timeout(Duration::from_secs(2)).send();
    matches!(request.await, Ok(resp) if resp.status().is_success())
}

/// How often a starting component's readiness URL is asked.
pub const READY_POLL: Duration = Duration::from_millis(5);

impl Component {
    /// Start in the background and wait until ready.
    pub async fn start(&self) -> anyhow::Result<i32> {
        if let Some(pid) = running_pid(&self.dir) {
            bail!("{} is already running (pid {pid})", self.name);
        }
        // A port in another namespace cannot be probed from here; the
        // component's own bind reports it.
        if self.at.netns.is_none() && self.at.is_loopback() {
            for &port in &self.ports {
                TcpListener::bind((self.at.listen_host(), port))
                    .with_context(|| format!("{}: port {port} is in use", self.name))?;
            }
        }
        if let Some(ns) = &self.at.netns {
            if !utils::netns::netns_path(ns).exists() {
                bail!("{}: network namespace {ns} does not exist (ip netns add {ns})", self.name);
            }
        }
        if !self.binary.exists() {
            bail!("{}: binary {} not found (build it: `cargo build --workspace --bins`, add `--release` for the release directory)", self.name, self.binary.display());
        }
        fs::create_dir_all(&self.dir)?;
        let log = fs::OpenOptions::new().create(true).append(true).open(log_path(&self.dir))?;
        let mut command = utils::netns::command_in(self.at.netns.as_deref(), &self.binary, None);
        command.args(&self.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().with_context(|| format!("spawn {}", self.binary.display()))?;
        let pid = child.id() as i32;
        fs::write(pid_path(&self.dir), format!("{pid}\n"))?;
        // Not waited for: it outlives this command and is reaped by init.
        drop(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if is_ready_with(&client, &self.ready_url).await {
                return Ok(pid);
            }
            if running_pid(&self.dir).is_none() {
                bail!("{} exited during start:\n{}", self.name, log_tail(&self.dir, 20));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        bail!("{} did not become ready within {START_TIMEOUT:?}:\n{}", self.name, log_tail(&self.dir, 20))
    }
}

/// Stop the component recorded in `dir`; returns whether one was running.
pub async fn stop(dir: &Path) -> anyhow::Result<bool> {
    let Some(pid) = running_pid(dir) else { return Ok(false) };
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && is_alive(pid.as_raw()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if is_alive(pid.as_raw()) {
        let _ = kill(pid, Signal::SIGKILL);
    }
    let _ = fs::remove_file(pid_path(dir));
    Ok(true)
}
