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
//! core dumps disabled. Its [`LiveGuard`] is released only once the child
//! has exited and been reaped (or, without a runtime, killed on drop), which
//! is what [`super::PostgresRedoManager::shutdown`] waits for.
//!
//! Cancellation: if a request future is dropped mid-way, the protocol state
//! of the process is unknown; the caller must not reuse it (the pool marks
//! it dirty and retires it). [`WalRedoProcess::kill_and_wait`] is safe to
//! drop: the child is SIGKILLed first and tokio reaps it.
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::CommandExt;
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

use super::protocol::{self, Base, Target};
use super::scratch;
use super::WalRedoError;

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

/// How to start a process.
pub(crate) struct LaunchSpec<'a> {
    pub pg_bin: &'a Path,
    pub data_dir: PathBuf,
    pub lib_dir: &'a Path,
    pub user: &'a PgUser,
    pub timeout: Duration,
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
            _live: live,
        };
        match tokio::time::timeout(spec.timeout, proc.handshake()).await {
            Ok(Ok(())) => Ok(proc),
            Ok(Err(e)) => Err(WalRedoError::Launch(proc.failure_report(&e.to_string()).await)),
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

    /// A ping round trip.
    pub(crate) async fn ping(&mut self, timeout: Duration) -> Result<(), WalRedoError> {
        let mut answer = [0u8; 4];
        self.roundtrip(&protocol::encode_ping(), &mut answer, timeout).await?;
        if &answer != protocol::PONG {
            return Err(WalRedoError::Process(format!("pid {}: bad ping answer {answer:?}", self.pid)));
        }
        Ok(())
    }

    async fn roundtrip(&mut self, request: &[u8], answer: &mut [u8], timeout: Duration) -> Result<(), WalRedoError> {
        let io = async {
            self.stdin.write_all(request).await?;
            self.stdin.flush().await?;
            self.stdout.read_exact(answer).await.map(|_| ())
        };
        match tokio::time::timeout(timeout, io).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WalRedoError::Process(self.failure_report(&e.to_string()).await)),
            Err(_) => Err(WalRedoError::Timeout { pid: self.pid, timeout }),
        }
    }

    /// Describe a failed exchange, with the last lines the child wrote on
    /// stderr (waiting briefly for it to exit and its stderr to drain).
    async fn failure_report(&mut self, what: &str) -> String {
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(STDERR_DRAIN_WAIT, task).await;
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited with {status}"),
            _ => "still running".to_string(),
        };
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("pid {} ({status}): {what}; stderr: {}", self.pid, tail.join(" | "))
    }

    /// SIGKILL the child and wait until it is reaped.
    pub(crate) async fn kill_and_wait(mut self) {
        if let Err(e) = self.child.kill().await {
            warn!(pid = self.pid, "killing WAL redo process: {e}");
        }
        debug!(pid = self.pid, "WAL redo process stopped");
    }
}

fn spawn(spec: &LaunchSpec<'_>) -> Result<Child, WalRedoError> {
    let mut cmd = spec.user.command(spec.pg_bin.join("postgres"));
    cmd.args(scratch::single_user_args(&spec.data_dir, spec.lib_dir))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd.spawn().map_err(|e| WalRedoError::Launch(format!("spawn postgres --single: {e}")))
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
