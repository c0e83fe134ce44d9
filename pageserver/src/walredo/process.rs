//! One redo process: a stock `postgres --single` running `walredo_main()`.
//!
//! Owns the child and its three pipes. stdin/stdout carry the protocol
//! ([`super::protocol`]); stderr is drained by a task of its own that
//! forwards every line to `tracing` and keeps the last lines for error
//! reports, so no request ever reads stderr (no race between requests, and
//! the child can never block on a full stderr pipe).
//!
//! Invariants: at most one request uses a process at a time (`&mut self`).
//! The process runs as the unprivileged Postgres user, never as root, with
//! core dumps disabled and the resource limits of [`Limits`] (set before
//! exec, so they cover the whole process); unless the sandbox is turned off
//! it installs its seccomp filter before it reports ready (see
//! `pgxn/walredo/walredo.c`). A process that dies is classified
//! ([`DeathCause`]: killed by the sandbox, over its CPU limit, another
//! signal, an error exit) in the error and in
//! `strata_pageserver_wal_redo_process_deaths_total`. Its [`LiveGuard`] is released only once the child
//! has exited and been reaped (or, without a runtime, killed on drop), which
//! is what [`super::PostgresRedoManager::shutdown`] waits for.
//!
//! Cancellation: if a request future is dropped mid-way, the protocol state
//! of the process is unknown; the caller must not reuse it (the pool marks
//! it dirty and retires it). [`WalRedoProcess::kill_and_wait`] is safe to
//! drop: the child is SIGKILLed first and tokio reaps it.
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use postgres_ffi::pg_constants::BLCKSZ;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use utils::lsn::Lsn;
use utils::pg_user::PgUser;

use super::protocol::{self, Base, Target, TestCommand};
use super::scratch;
use super::WalRedoError;
use crate::metrics;

const STDERR_TAIL_LINES: usize = 20;
const STDERR_DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Counts live redo processes (launched and not yet reaped) and their pids.
#[derive(Debug)]
pub(crate) struct LiveTracker {
    pub(crate) count: watch::Sender<usize>,
    /// pid -> pool slot of every live process.
    pub(crate) pids: Mutex<BTreeMap<u32, usize>>,
}

impl LiveTracker {
    pub(crate) fn new() -> Arc<LiveTracker> {
        Arc::new(LiveTracker { count: watch::channel(0).0, pids: Mutex::new(BTreeMap::new()) })
    }

    /// Count one more live process in `slot` (the caller checked shutdown).
    pub(crate) fn enter(self: &Arc<Self>, slot: usize) -> LiveGuard {
        self.count.send_modify(|n| *n += 1);
        LiveGuard { tracker: Arc::clone(self), slot, pid: None }
    }
}

/// One live process; dropping it decrements the count.
#[derive(Debug)]
pub(crate) struct LiveGuard {
    tracker: Arc<LiveTracker>,
    slot: usize,
    pid: Option<u32>,
}

impl LiveGuard {
    fn set_pid(&mut self, pid: u32) {
        self.pid = Some(pid);
        self.tracker.pids.lock().unwrap_or_else(|e| e.into_inner()).insert(pid, self.slot);
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            self.tracker.pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
        }
        self.tracker.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Confinement of a redo process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Install the seccomp filter (GUC `strata_walredo.sandbox`).
    pub sandbox: bool,
    /// RLIMIT_DATA: private writable memory (heap, anonymous mappings);
    /// Postgres' shared memory is a shared mapping and does not count.
    pub memory_limit_bytes: u64,
    /// RLIMIT_CPU: CPU time over the process's life (SIGXCPU at the limit,
    /// SIGKILL a few seconds later).
    pub cpu_limit_secs: u64,
}

/// Seconds between the soft CPU limit (SIGXCPU) and the hard one (SIGKILL).
const CPU_HARD_LIMIT_GRACE_SECS: u64 = 5;

/// How to start a process.
pub(crate) struct LaunchSpec<'a> {
    pub pg_bin: &'a Path,
    pub data_dir: PathBuf,
    pub lib_dir: &'a Path,
    pub user: &'a PgUser,
    pub timeout: Duration,
    pub limits: Limits,
}

/// Why a redo process died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeathCause {
    /// SIGSYS: the seccomp filter killed it for a forbidden system call.
    Sandbox,
    /// SIGXCPU: it used up its CPU time limit.
    CpuLimit,
    /// Another signal (SIGKILL from the OOM killer or an operator, ...).
    Signal(i32),
    /// It exited (after reporting an error on stderr).
    Exit(i32),
}

impl DeathCause {
    fn of(status: std::process::ExitStatus) -> DeathCause {
        match (status.signal(), status.code()) {
            (Some(libc::SIGSYS), _) => DeathCause::Sandbox,
            (Some(libc::SIGXCPU), _) => DeathCause::CpuLimit,
            (Some(sig), _) => DeathCause::Signal(sig),
            (None, code) => DeathCause::Exit(code.unwrap_or(-1)),
        }
    }

    /// Label of `strata_pageserver_wal_redo_process_deaths_total`.
    pub fn label(&self) -> &'static str {
        match self {
            DeathCause::Sandbox => "sandbox",
            DeathCause::CpuLimit => "cpu_limit",
            DeathCause::Signal(_) => "signal",
            DeathCause::Exit(_) => "exit",
        }
    }
}

impl std::fmt::Display for DeathCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeathCause::Sandbox => write!(f, "killed by the seccomp sandbox (SIGSYS: a forbidden system call)"),
            DeathCause::CpuLimit => write!(f, "killed by its CPU time limit (SIGXCPU)"),
            DeathCause::Signal(sig) => write!(f, "killed by signal {sig}"),
            DeathCause::Exit(code) => write!(f, "exited with code {code}"),
        }
    }
}

type StderrTail = Arc<Mutex<VecDeque<String>>>;

pub(crate) struct WalRedoProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    pid: u32,
    stderr_task: Option<JoinHandle<()>>,
    stderr_tail: StderrTail,
    pub(crate) last_used: Instant,
    /// When the CPU time was last compared with the budget (never: `None`).
    pub(crate) cpu_checked_at: Option<Instant>,
    _live: LiveGuard,
}

impl WalRedoProcess {
    /// Spawn the process and wait until it serves the protocol.
    pub(crate) async fn launch(spec: LaunchSpec<'_>, mut live: LiveGuard) -> Result<WalRedoProcess, WalRedoError> {
        let mut child = spawn(&spec)?;
        let pid = child.id().unwrap_or(0);
        let (stdin, stdout, stderr) = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (Some(i), Some(o), Some(e)) => (i, o, e),
            _ => return Err(WalRedoError::Launch("child pipes missing".into())),
        };
        let stderr_tail: StderrTail = Arc::default();
        let stderr_task = tokio::spawn(forward_stderr(stderr, pid, Arc::clone(&stderr_tail)));
        live.set_pid(pid);
        let mut proc = WalRedoProcess {
            child,
            stdin,
            stdout,
            pid,
            stderr_task: Some(stderr_task),
            stderr_tail,
            last_used: Instant::now(),
            cpu_checked_at: None,
            _live: live,
        };
        match tokio::time::timeout(spec.timeout, proc.handshake()).await {
            Ok(Ok(())) => Ok(proc),
            Ok(Err(e)) => Err(proc.launch_failure(&e.to_string()).await),
            Err(_) => Err(WalRedoError::Launch(format!("pid {pid} not ready within {:?}", spec.timeout))),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Send the start SQL and skip stdout up to the ready marker.
    async fn handshake(&mut self) -> std::io::Result<()> {
        self.stdin.write_all(protocol::START_SQL.as_bytes()).await?;
        self.stdin.flush().await?;
        let marker = format!("\n{}\n", protocol::READY_MARKER);
        let mut seen = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = self.stdout.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "stdout closed before ready"));
            }
            seen.extend_from_slice(&chunk[..n]);
            if seen.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                return Ok(());
            }
        }
    }

    /// Rebuild the target page from `base` and `records` ((end LSN, raw record)).
    pub(crate) async fn apply(
        &mut self,
        target: Target,
        base: Base<'_>,
        records: &[(Lsn, &Bytes)],
        timeout: Duration,
    ) -> Result<Bytes, WalRedoError> {
        let request = protocol::encode_request(target, base, records.iter().copied());
        let mut page = vec![0u8; BLCKSZ];
        let result = self.roundtrip(&request, &mut page, timeout).await;
        self.last_used = Instant::now();
        result.map(|()| Bytes::from(page))
    }

    /// Several requests pipelined: all of `requests` (each a whole encoded
    /// request, see [`protocol::encode_request`]) are written while the
    /// answers are read, so the process never waits for the next request;
    /// the answers are the pages in order, concatenated.
    pub(crate) async fn apply_many(&mut self, requests: &[Vec<u8>], timeout: Duration) -> Result<Bytes, WalRedoError> {
        let mut pages = vec![0u8; BLCKSZ * requests.len()];
        let (stdin, stdout) = (&mut self.stdin, &mut self.stdout);
        let write = async {
            for r in requests {
                stdin.write_all(r).await?;
            }
            stdin.flush().await
        };
        let read = async { stdout.read_exact(&mut pages).await.map(|_| ()) };
        let outcome = tokio::time::timeout(timeout, async { tokio::try_join!(write, read) }).await;
        let result = match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failure(&e.to_string()).await),
            Err(_) => {
                metrics::WAL_REDO_PROCESS_DEATHS.with_label_values(&["timeout"]).inc();
                Err(WalRedoError::Timeout { pid: self.pid, timeout })
            }
        };
        self.last_used = Instant::now();
        result.map(|()| Bytes::from(pages))
    }

    /// A ping round trip.
    pub(crate) async fn ping(&mut self, timeout: Duration) -> Result<(), WalRedoError> {
        let mut answer = [0u8; 4];
        self.roundtrip(&protocol::encode_ping(), &mut answer, timeout).await?;
        if &answer != protocol::PONG {
            return Err(WalRedoError::Process(format!("pid {}: bad ping answer {answer:?}", self.pid)));
        }
        Ok(())
    }

    /// A test command (only a test build of the extension serves it).
    pub(crate) async fn test_command(&mut self, cmd: TestCommand, timeout: Duration) -> Result<(), WalRedoError> {
        let mut answer = [0u8; 4];
        self.roundtrip(&protocol::encode_test_command(cmd), &mut answer, timeout).await?;
        if &answer != protocol::DONE {
            return Err(WalRedoError::Process(format!("pid {}: bad test command answer {answer:?}", self.pid)));
        }
        Ok(())
    }

    /// CPU time the process has used so far (user + system), from
    /// `/proc/PID/stat`; `None` if it cannot be read.
    pub(crate) async fn cpu_time(&self) -> Option<Duration> {
        let stat = tokio::fs::read_to_string(format!("/proc/{}/stat", self.pid)).await.ok()?;
        cpu_time_from_stat(&stat)
    }

    async fn roundtrip(&mut self, request: &[u8], answer: &mut [u8], timeout: Duration) -> Result<(), WalRedoError> {
        let io = async {
            self.stdin.write_all(request).await?;
            self.stdin.flush().await?;
            self.stdout.read_exact(answer).await.map(|_| ())
        };
        match tokio::time::timeout(timeout, io).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.failure(&e.to_string()).await),
            Err(_) => {
                metrics::WAL_REDO_PROCESS_DEATHS.with_label_values(&["timeout"]).inc();
                Err(WalRedoError::Timeout { pid: self.pid, timeout })
            }
        }
    }

    /// The error of a failed exchange: [`WalRedoError::Died`] if the child
    /// is gone (counted by cause), else [`WalRedoError::Process`].
    async fn failure(&mut self, what: &str) -> WalRedoError {
        let (status, report) = self.failure_details(what).await;
        match status {
            Some(status) => {
                let cause = DeathCause::of(status);
                metrics::WAL_REDO_PROCESS_DEATHS.with_label_values(&[cause.label()]).inc();
                warn!(pid = self.pid, %cause, "WAL redo process died");
                WalRedoError::Died { pid: self.pid, cause, report }
            }
            None => WalRedoError::Process(report),
        }
    }

    /// Describe a failed exchange, with the last lines the child wrote on
    /// stderr (waiting briefly for it to exit and its stderr to drain);
    /// returns the exit status if the child has exited.
    async fn failure_details(&mut self, what: &str) -> (Option<std::process::ExitStatus>, String) {
        let drained = match self.stderr_task.take() {
            Some(task) => tokio::time::timeout(STDERR_DRAIN_WAIT, task).await.is_ok(),
            None => false,
        };
        // stderr closes while the child exits, a moment before it can be
        // reaped: once drained, wait (briefly) for the exit status.
        let status = if drained {
            tokio::time::timeout(STDERR_DRAIN_WAIT, self.child.wait()).await.ok().and_then(Result::ok)
        } else {
            self.child.try_wait().ok().flatten()
        };
        let state = match status {
            Some(status) => format!("{}", DeathCause::of(status)),
            None => "still running".to_string(),
        };
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        (status, format!("pid {} ({state}): {what}; stderr: {}", self.pid, tail.join(" | ")))
    }

    /// The error of a failed launch.
    async fn launch_failure(&mut self, what: &str) -> WalRedoError {
        let (status, report) = self.failure_details(what).await;
        if let Some(status) = status {
            metrics::WAL_REDO_PROCESS_DEATHS.with_label_values(&[DeathCause::of(status).label()]).inc();
        }
        WalRedoError::Launch(report)
    }

    /// SIGKILL the child and wait until it is reaped.
    pub(crate) async fn kill_and_wait(mut self) {
        if let Err(e) = self.child.kill().await {
            warn!(pid = self.pid, "killing WAL redo process: {e}");
        }
        debug!(pid = self.pid, "WAL redo process stopped");
    }
}

/// User + system time from the text of `/proc/PID/stat` (fields 14 and 15,
/// in clock ticks, counted after the parenthesised command name).
fn cpu_time_from_stat(stat: &str) -> Option<Duration> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    let total = utime.checked_add(stime)?;
    Some(Duration::from_millis(total.checked_mul(1000)? / ticks))
}

fn spawn(spec: &LaunchSpec<'_>) -> Result<Child, WalRedoError> {
    let mut cmd = spec.user.command(spec.pg_bin.join("postgres"));
    cmd.args(scratch::single_user_args(&spec.data_dir, spec.lib_dir, spec.limits.sandbox))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let limits = spec.limits;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || set_rlimits(&limits));
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd.spawn().map_err(|e| WalRedoError::Launch(format!("spawn postgres --single: {e}")))
}

/// In the child before exec: no core dumps, and the memory and CPU limits.
fn set_rlimits(limits: &Limits) -> std::io::Result<()> {
    let cpu_hard = limits.cpu_limit_secs.saturating_add(CPU_HARD_LIMIT_GRACE_SECS);
    for (resource, soft, hard) in [
        (libc::RLIMIT_CORE, 0, 0),
        (libc::RLIMIT_DATA, limits.memory_limit_bytes, limits.memory_limit_bytes),
        (libc::RLIMIT_CPU, limits.cpu_limit_secs, cpu_hard),
    ] {
        let limit = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: a valid rlimit struct; setrlimit is async-signal-safe.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Forward the child's stderr to the log, line by line, until EOF.
async fn forward_stderr(stderr: ChildStderr, pid: u32, tail: StderrTail) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if ["ERROR", "FATAL", "PANIC", "walredo:"].iter().any(|w| line.contains(w)) {
            error!(pid, "wal-redo-postgres: {line}");
        } else if line.contains("WARNING") {
            warn!(pid, "wal-redo-postgres: {line}");
        } else {
            debug!(pid, "wal-redo-postgres: {line}");
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    info!(pid, "wal-redo-postgres stderr closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // A command name with spaces and parentheses must not shift fields.
        let stat = "4242 (postgres (x) y) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0";
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(cpu_time_from_stat(stat), Some(Duration::from_millis(400 * 1000 / ticks)));
        assert_eq!(cpu_time_from_stat("garbage"), None);
        assert_eq!(cpu_time_from_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn death_causes_are_classified() {
        use std::process::ExitStatus;
        assert_eq!(DeathCause::of(ExitStatus::from_raw(libc::SIGSYS)), DeathCause::Sandbox);
        assert_eq!(DeathCause::of(ExitStatus::from_raw(libc::SIGXCPU)), DeathCause::CpuLimit);
        assert_eq!(DeathCause::of(ExitStatus::from_raw(libc::SIGKILL)), DeathCause::Signal(libc::SIGKILL));
        assert_eq!(DeathCause::of(ExitStatus::from_raw(1 << 8)), DeathCause::Exit(1));
    }
}
