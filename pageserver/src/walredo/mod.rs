//! WAL redo: rebuild a page version from a base image and the WAL records
//! that followed it.
//!
//! Owns: [`PostgresRedoManager`], a small pool of redo processes (stock
//! `postgres --single` running Strata's `walredo` extension, see
//! `pgxn/walredo`), and the split of each request into runs of records that
//! Strata applies in Rust ([`WalRecord::is_rust_applied`]) and runs that the
//! processes apply.
//!
//! Behaviour (after Neon's redo manager): the template cluster they copy is
//! made in the background when the manager is created; processes are
//! launched lazily on first use and reused; each serves one request at a
//! time; every request has a timeout; a process whose request fails is taken out of rotation and
//! the request is retried once on a fresh process; processes idle for
//! `idle_timeout` are stopped; [`PostgresRedoManager::shutdown`] waits until
//! no process runs, after which requests needing a process fail with
//! [`WalRedoError::Cancelled`].
//!
//! Sandbox: every process runs under the seccomp filter of the extension
//! (unless [`WalRedoConfig::sandbox`] is off) and with memory and CPU-time
//! limits ([`WalRedoConfig::memory_limit_bytes`],
//! [`WalRedoConfig::cpu_limit_secs`]). A process killed by the filter or a
//! limit fails its request with [`WalRedoError::Died`] (the request is
//! retried once on a fresh process, like any failure). A process that has
//! used half of its CPU limit is retired after its request, so that a busy
//! long-lived process does not hit the limit in the middle of one.
//!
//! Invariants: the number of pool slots equals the semaphore's permits; a
//! slot is either free in the pool or held by exactly one [`Lease`]; a
//! process is launched only while the manager is not shut down (checked
//! under the pool lock that `shutdown` also takes).
//!
//! Cancellation: every public method is cancel-safe. Dropping a request
//! mid-way leaves its process in an unknown protocol state; the lease is then
//! "dirty" and the process is killed instead of being returned to the pool.
mod apply_rust;
mod process;
pub mod protocol;
pub mod record;
pub mod scratch;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use postgres_ffi::pg_constants::BLCKSZ;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};
use utils::lsn::Lsn;
use utils::pg_user::PgUser;

use crate::metrics;
pub use apply_rust::{
    apply_record as apply_rust_record, clog_status, MULTIXACT_MEMBERS_PER_PAGE, MULTIXACT_OFFSETS_PER_PAGE,
    VM_HEAPBLOCKS_PER_PAGE,
};
pub use process::DeathCause;
use process::{LaunchSpec, Limits, LiveTracker, WalRedoProcess};
pub use protocol::TestCommand;
use protocol::{Base, Target};
pub use record::{vm_clear_for_heap_record, MultiXactMember, RedoKey, SlruKind, WalRecord};

/// A failed page reconstruction.
#[derive(Debug, thiserror::Error)]
pub enum WalRedoError {
    #[error("cancelled: the WAL redo manager is shut down")]
    Cancelled,
    #[error("invalid WAL redo request: {0}")]
    InvalidRequest(String),
    #[error("WAL redo process pid {pid} did not answer within {timeout:?}")]
    Timeout { pid: u32, timeout: Duration },
    #[error("WAL redo process failed: {0}")]
    Process(String),
    #[error("WAL redo process pid {pid} died, {cause}: {report}")]
    Died { pid: u32, cause: DeathCause, report: String },
    #[error("could not launch a WAL redo process: {0}")]
    Launch(String),
    #[error("applying Rust WAL records to {key}: {reason}")]
    RustApply { key: RedoKey, reason: String },
}

/// Settings of a [`PostgresRedoManager`].
#[derive(Clone, Debug)]
pub struct WalRedoConfig {
    /// Directory for this manager's scratch clusters (one per pool slot).
    pub work_dir: PathBuf,
    /// Template cluster, shared by managers; default `<work_dir>/template`.
    pub template_dir: Option<PathBuf>,
    /// The built `walredo.so`; default: [`scratch::locate_walredo_lib`].
    pub lib_path: Option<PathBuf>,
    /// Directory of `postgres` and `initdb`.
    pub pg_bin_dir: PathBuf,
    /// Number of redo processes that may run at once.
    pub pool_size: usize,
    /// Time limit of one request to one process.
    pub request_timeout: Duration,
    /// Time limit for a process to start serving.
    pub launch_timeout: Duration,
    /// Processes unused for this long are stopped.
    pub idle_timeout: Duration,
    /// Confine each process with the extension's seccomp filter.
    pub sandbox: bool,
    /// Private memory a process may use (RLIMIT_DATA; shared memory not
    /// counted).
    pub memory_limit_bytes: u64,
    /// CPU time a process may use over its life (RLIMIT_CPU); processes are
    /// retired once they have used half of it.
    pub cpu_limit_secs: u64,
    /// Requests [`PostgresRedoManager::request_redo_many`] pipelines to one
    /// process per exchange, at most ([`PIPELINE_DEPTH`], the default, is
    /// the largest); 1 sends them one by one, several processes at once.
    /// Batched GetPage with ~9 records of redo measured 39k-47k pages/s
    /// pipelined beside 25k-26k one by one (release, 2 cores, one run,
    /// 2026-12-05), and the every-block comparison suites pass with it.
    pub pipeline_depth: usize,
}

/// Default [`WalRedoConfig::pool_size`]: one process per CPU (at least 2,
/// at most 16): redo is CPU-bound in the process, and each process is
/// kept busy by pipelining ([`PostgresRedoManager::request_redo_many`]).
pub fn default_pool_size() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 16)
}

/// Requests pipelined to one redo process in one exchange.
pub const PIPELINE_DEPTH: usize = 16;

/// One page of [`PostgresRedoManager::request_redo_many`].
pub struct RedoRequest {
    pub key: RedoKey,
    pub lsn: Lsn,
    pub base: Option<Bytes>,
    /// (end LSN, record), in LSN order.
    pub records: Vec<(Lsn, WalRecord)>,
}

/// Default [`WalRedoConfig::memory_limit_bytes`]: 1 GiB.
pub const DEFAULT_MEMORY_LIMIT_BYTES: u64 = 1 << 30;
/// Default [`WalRedoConfig::cpu_limit_secs`]: 1 hour.
pub const DEFAULT_CPU_LIMIT_SECS: u64 = 3600;

impl WalRedoConfig {
    pub fn new(work_dir: impl Into<PathBuf>) -> WalRedoConfig {
        WalRedoConfig {
            work_dir: work_dir.into(),
            template_dir: None,
            lib_path: None,
            pg_bin_dir: utils::pg_user::pg_bin_dir(),
            pool_size: default_pool_size(),
            request_timeout: Duration::from_secs(60),
            launch_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            sandbox: true,
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            cpu_limit_secs: DEFAULT_CPU_LIMIT_SECS,
            pipeline_depth: PIPELINE_DEPTH,
        }
    }
}

/// A live process, as [`PostgresRedoManager::status`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessStatus {
    pub slot: usize,
    pub pid: u32,
}

/// Snapshot of a manager's state.
#[derive(Clone, Debug)]
pub struct WalRedoStatus {
    pub last_redo_at: Option<SystemTime>,
    pub processes: Vec<ProcessStatus>,
}

const MAX_RETRY_ATTEMPTS: u32 = 1;
/// How often a process's CPU time is compared with its budget.
const CPU_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Rebuilds pages with Rust-applied records and a pool of redo processes.
pub struct PostgresRedoManager {
    inner: Arc<Inner>,
}

struct Inner {
    conf: WalRedoConfig,
    user: PgUser,
    lib_dir: PathBuf,
    template: tokio::sync::OnceCell<PathBuf>,
    permits: Arc<Semaphore>,
    /// [`WalRedoConfig::pipeline_depth`], changeable at run time
    /// ([`PostgresRedoManager::set_pipeline_depth`]).
    pipeline_depth: AtomicUsize,
    pool: Mutex<Pool>,
    live: Arc<LiveTracker>,
    last_redo_at: Mutex<Option<SystemTime>>,
}

struct Pool {
    shutdown: bool,
    free: Vec<Slot>,
}

struct Slot {
    idx: usize,
    proc: Option<WalRedoProcess>,
}

/// What a leased process is asked to do.
#[derive(Clone, Copy)]
enum Op<'a> {
    Apply { target: Target, base: Option<&'a Bytes>, records: &'a [(Lsn, &'a Bytes)] },
    /// Encoded requests, pipelined; the answer is their pages concatenated.
    ApplyMany { requests: &'a [Vec<u8>] },
    Ping,
    Test(TestCommand),
}

impl PostgresRedoManager {
    /// A manager; no process is launched until the first request. Inside a
    /// tokio runtime, background tasks make the template cluster at once
    /// and stop idle processes.
    pub fn new(conf: WalRedoConfig) -> Result<PostgresRedoManager, WalRedoError> {
        let user = PgUser::from_env().map_err(|e| WalRedoError::Launch(e.to_string()))?;
        let lib = scratch::locate_walredo_lib(conf.lib_path.as_deref(), &user).map_err(WalRedoError::Launch)?;
        let mut conf = conf;
        // Scratch clusters must be reachable by the redo user wherever the
        // pageserver's workdir is (a checkout under /root is not).
        conf.work_dir = user.reachable_dir(&conf.work_dir).map_err(|e| WalRedoError::Launch(e.to_string()))?;
        if let Some(t) = conf.template_dir.take() {
            conf.template_dir = Some(user.reachable_dir(&t).map_err(|e| WalRedoError::Launch(e.to_string()))?);
        }
        let lib_dir = lib.parent().map(PathBuf::from).unwrap_or_default();
        if lib.file_name().and_then(|n| n.to_str()) != Some(scratch::LIB_FILE) {
            return Err(WalRedoError::Launch(format!("{} must be named {}", lib.display(), scratch::LIB_FILE)));
        }
        scratch::ensure_owned_dir(&conf.work_dir, &user).map_err(WalRedoError::Launch)?;
        let pool_size = conf.pool_size.max(1);
        let pipeline_depth = conf.pipeline_depth;
        let free = (0..pool_size).rev().map(|idx| Slot { idx, proc: None }).collect();
        let inner = Arc::new(Inner {
            conf,
            user,
            lib_dir,
            template: tokio::sync::OnceCell::new(),
            permits: Arc::new(Semaphore::new(pool_size)),
            pipeline_depth: AtomicUsize::new(pipeline_depth),
            pool: Mutex::new(Pool { shutdown: false, free }),
            live: LiveTracker::new(),
            last_redo_at: Mutex::new(None),
        });
        spawn_quiesce_task(&inner);
        spawn_template_warmup(&inner);
        Ok(PostgresRedoManager { inner })
    }

    /// Rebuild the page `key` at `lsn` from `base_image` (if any) and
    /// `records` ((end LSN, record), in LSN order).
    pub async fn request_redo(
        &self,
        key: impl Into<RedoKey>,
        lsn: Lsn,
        base_image: Option<Bytes>,
        records: Vec<(Lsn, WalRecord)>,
    ) -> Result<Bytes, WalRedoError> {
        let key = key.into();
        validate_request(&base_image, &records)?;
        let mut image = base_image;
        for (rust, range) in split_runs(&records) {
            let run = &records[range];
            let page = if rust {
                self.apply_rust(&key, image, run)?
            } else {
                self.apply_postgres(&key, lsn, image.as_ref(), run).await?
            };
            image = Some(page);
        }
        image.ok_or_else(|| WalRedoError::InvalidRequest("no records".into()))
    }

    /// Rebuild several pages, results in the order of `reqs`. With
    /// [`WalRedoConfig::pipeline_depth`] above 1, requests made
    /// only of records the processes apply go to them pipelined, spread
    /// over the processes, up to [`PIPELINE_DEPTH`] per exchange and one
    /// exchange per process at a time, each request one message (base page and all its records); the
    /// others, and the requests of an exchange that failed, go one by one
    /// through [`PostgresRedoManager::request_redo`] (with its retry).
    pub async fn request_redo_many(&self, mut reqs: Vec<RedoRequest>) -> Vec<Result<Bytes, WalRedoError>> {
        use futures::StreamExt;
        let mut results: Vec<Option<Result<Bytes, WalRedoError>>> = (0..reqs.len()).map(|_| None).collect();
        let pipelined: Vec<usize> = (0..reqs.len()).filter(|&i| pipelinable(&reqs[i])).collect();
        let depth = self.pipeline_depth();
        if depth > 1 && pipelined.len() > 1 {
            // Spread over every process, at most PIPELINE_DEPTH per exchange.
            let per_exchange = pipelined.len().div_ceil(self.pool_size()).clamp(1, depth);
            let exchanges: Vec<_> = pipelined
                .chunks(per_exchange)
                .map(|chunk| {
                    let batch: Vec<&RedoRequest> = chunk.iter().map(|&i| &reqs[i]).collect();
                    let chunk = chunk.to_vec();
                    async move { (chunk, self.apply_pipelined(batch).await) }
                })
                .collect();
            let mut exchanges = futures::stream::iter(exchanges).buffer_unordered(self.pool_size());
            while let Some((chunk, pages)) = exchanges.next().await {
                match pages {
                    Ok(pages) => {
                        for (n, &i) in chunk.iter().enumerate() {
                            results[i] = Some(Ok(pages.slice(n * BLCKSZ..(n + 1) * BLCKSZ)));
                        }
                    }
                    Err(e) => warn!(requests = chunk.len(), "pipelined WAL redo failed, retrying one by one: {e}"),
                }
            }
        }
        let rest: Vec<(usize, RedoRequest)> = (0..reqs.len())
            .filter(|&i| results[i].is_none())
            .map(|i| {
                let empty = RedoRequest { key: reqs[i].key, lsn: reqs[i].lsn, base: None, records: Vec::new() };
                (i, std::mem::replace(&mut reqs[i], empty))
            })
            .collect();
        let mut singles = futures::stream::iter(rest)
            .map(|(i, r)| async move { (i, self.request_redo(r.key, r.lsn, r.base, r.records).await) })
            .buffer_unordered(self.pool_size() * 2);
        while let Some((i, page)) = singles.next().await {
            results[i] = Some(page);
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(WalRedoError::Process("request not served".into())))).collect()
    }

    /// One pipelined exchange with one process (no retry: the caller
    /// falls back to single requests).
    async fn apply_pipelined(&self, reqs: Vec<&RedoRequest>) -> Result<Bytes, WalRedoError> {
        let mut encoded = Vec::new();
        let mut records = 0;
        for r in reqs {
            let RedoKey::Rel { rel, forknum, blkno } = r.key else {
                return Err(WalRedoError::InvalidRequest(format!("Postgres records for {}", r.key)));
            };
            let raw = r.records.iter().filter_map(postgres_record);
            let base = r.base.as_ref().map_or(Base::None, |b| Base::Image(b));
            encoded.push(protocol::encode_request(Target { rel, forknum, blkno }, base, raw));
            records += r.records.len();
        }
        *self.inner.last_redo_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        let started = Instant::now();
        let pages = self.inner.run(Op::ApplyMany { requests: &encoded }).await?;
        if pages.len() != encoded.len() * BLCKSZ {
            return Err(WalRedoError::Process(format!("{} bytes for {} pages", pages.len(), encoded.len())));
        }
        let per_page = started.elapsed().as_secs_f64() / encoded.len() as f64;
        for _ in &encoded {
            metrics::WAL_REDO_TIME.observe(per_page);
            metrics::WAL_REDO_RECORDS.observe(records as f64 / encoded.len() as f64);
        }
        metrics::WAL_REDO_PIPELINED_REQUESTS.observe(encoded.len() as f64);
        Ok(pages)
    }

    /// Requests pipelined per exchange now (see
    /// [`WalRedoConfig::pipeline_depth`]).
    pub fn pipeline_depth(&self) -> usize {
        self.inner.pipeline_depth.load(Ordering::Relaxed).clamp(1, PIPELINE_DEPTH)
    }

    /// Change [`WalRedoConfig::pipeline_depth`] for later
    /// [`PostgresRedoManager::request_redo_many`] calls (benches compare
    /// both settings in one run).
    pub fn set_pipeline_depth(&self, depth: usize) {
        self.inner.pipeline_depth.store(depth, Ordering::Relaxed);
    }

    /// Number of redo processes that may run at once.
    pub fn pool_size(&self) -> usize {
        self.inner.conf.pool_size.max(1)
    }

    /// A ping round trip through a (possibly new) process.
    pub async fn ping(&self) -> Result<(), WalRedoError> {
        self.inner.run(Op::Ping).await.map(|_| ())
    }

    /// Send a [`TestCommand`] through the request path (with its retry).
    /// Only a redo process built with `scripts/build-walredo.sh --test`
    /// serves it; a production build exits on it (an unknown message), so
    /// this cannot make a production process break its sandbox.
    #[doc(hidden)]
    pub async fn test_command(&self, cmd: TestCommand) -> Result<(), WalRedoError> {
        self.run_with_retry(Op::Test(cmd), &|| format!("test command {cmd:?}")).await.map(|_| ())
    }

    /// Last redo time and the live processes.
    pub fn status(&self) -> WalRedoStatus {
        let pids = self.inner.live.pids.lock().unwrap_or_else(|e| e.into_inner());
        WalRedoStatus {
            last_redo_at: *self.inner.last_redo_at.lock().unwrap_or_else(|e| e.into_inner()),
            processes: pids.iter().map(|(&pid, &slot)| ProcessStatus { slot, pid }).collect(),
        }
    }

    /// Stop processes idle for at least `idle`; returns how many.
    pub fn maybe_quiesce(&self, idle: Duration) -> usize {
        self.inner.quiesce(idle)
    }

    /// Refuse new work and wait until no redo process runs. Requests in
    /// flight finish on their process; later ones (and their retries) fail
    /// with [`WalRedoError::Cancelled`]. Idempotent.
    pub async fn shutdown(&self) {
        let idle: Vec<WalRedoProcess> = {
            let mut pool = self.inner.lock_pool();
            pool.shutdown = true;
            pool.free.iter_mut().filter_map(|slot| slot.proc.take()).collect()
        };
        self.inner.permits.close();
        for proc in idle {
            proc.kill_and_wait().await;
        }
        let mut live = self.inner.live.count.subscribe();
        let _ = live.wait_for(|n| *n == 0).await;
    }

    fn apply_rust(&self, key: &RedoKey, base: Option<Bytes>, run: &[(Lsn, WalRecord)]) -> Result<Bytes, WalRedoError> {
        let started = Instant::now();
        let page = apply_rust::apply_run(key, base, run)
            .map_err(|reason| WalRedoError::RustApply { key: *key, reason })?;
        metrics::WAL_REDO_TIME.observe(started.elapsed().as_secs_f64());
        Ok(page)
    }

    async fn apply_postgres(
        &self,
        key: &RedoKey,
        lsn: Lsn,
        base: Option<&Bytes>,
        run: &[(Lsn, WalRecord)],
    ) -> Result<Bytes, WalRedoError> {
        let RedoKey::Rel { rel, forknum, blkno } = *key else {
            return Err(WalRedoError::InvalidRequest(format!("Postgres records for {key}")));
        };
        let raw: Vec<(Lsn, &Bytes)> = run.iter().filter_map(postgres_record).collect();
        let nbytes: usize = raw.iter().map(|(_, r)| r.len()).sum();
        *self.inner.last_redo_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        let target = Target { rel, forknum, blkno };
        let started = Instant::now();
        let page = self.apply_with_retry(key, lsn, target, base, &raw).await?;
        metrics::WAL_REDO_TIME.observe(started.elapsed().as_secs_f64());
        metrics::WAL_REDO_RECORDS.observe(raw.len() as f64);
        metrics::WAL_REDO_BYTES.observe(nbytes as f64);
        Ok(page)
    }

    async fn apply_with_retry(
        &self,
        key: &RedoKey,
        lsn: Lsn,
        target: Target,
        base: Option<&Bytes>,
        raw: &[(Lsn, &Bytes)],
    ) -> Result<Bytes, WalRedoError> {
        let op = Op::Apply { target, base, records: raw };
        self.run_with_retry(op, &|| format!("{key} at {lsn} ({} records)", raw.len())).await
    }

    /// Run `op`, retrying once on a fresh process if it fails (other than
    /// by shutdown or a request that is invalid in itself).
    /// `what` describes the request for the log.
    async fn run_with_retry(&self, op: Op<'_>, what: &(dyn Fn() -> String + Sync)) -> Result<Bytes, WalRedoError> {
        let mut attempt = 0;
        loop {
            match self.inner.run(op).await {
                Ok(page) => {
                    if attempt > 0 {
                        info!(request = what(), attempt, "retried WAL redo succeeded");
                    }
                    return Ok(page);
                }
                Err(e @ (WalRedoError::Cancelled | WalRedoError::InvalidRequest(_))) => return Err(e),
                Err(e) => {
                    metrics::WAL_REDO_FAILURES.inc();
                    warn!(request = what(), attempt, "WAL redo failed: {e}");
                    if attempt >= MAX_RETRY_ATTEMPTS {
                        return Err(e);
                    }
                }
            }
            attempt += 1;
        }
    }
}

/// The raw record of a record the processes apply.
fn postgres_record((lsn, rec): &(Lsn, WalRecord)) -> Option<(Lsn, &Bytes)> {
    match rec {
        WalRecord::Postgres { rec, .. } => Some((*lsn, rec)),
        _ => None,
    }
}

/// Whether a request can go pipelined: a page of a relation, rebuilt only
/// by records the processes apply, and well-formed.
fn pipelinable(r: &RedoRequest) -> bool {
    matches!(r.key, RedoKey::Rel { .. })
        && r.records.iter().all(|(_, rec)| !rec.is_rust_applied())
        && validate_request(&r.base, &r.records).is_ok()
}

fn validate_request(base: &Option<Bytes>, records: &[(Lsn, WalRecord)]) -> Result<(), WalRedoError> {
    if records.is_empty() {
        return Err(WalRedoError::InvalidRequest("no records".into()));
    }
    if let Some(base) = base {
        if base.len() != BLCKSZ {
            return Err(WalRedoError::InvalidRequest(format!("base image of {} bytes", base.len())));
        }
    }
    for (lsn, rec) in records {
        if let WalRecord::Postgres { rec, .. } = rec {
            let tot_len = rec.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            if rec.len() < 24 || tot_len != Some(rec.len() as u32) {
                return Err(WalRedoError::InvalidRequest(format!("record at {lsn} is not a whole XLogRecord")));
            }
        }
    }
    Ok(())
}

/// Split `records` into maximal runs applied by the same party:
/// (applied in Rust?, index range).
pub fn split_runs(records: &[(Lsn, WalRecord)]) -> Vec<(bool, Range<usize>)> {
    let mut runs: Vec<(bool, Range<usize>)> = Vec::new();
    for (i, (_, rec)) in records.iter().enumerate() {
        let rust = rec.is_rust_applied();
        match runs.last_mut() {
            Some((last_rust, range)) if *last_rust == rust => range.end = i + 1,
            _ => runs.push((rust, i..i + 1)),
        }
    }
    runs
}

/// Build the template cluster (`initdb`, most of a first launch's cost) in
/// the background at once, so that the first redo request, often a
/// compute's first read at start, does not wait for it. Launches nothing:
/// processes still start on first use. A failure is only logged; the first
/// request then tries again and reports it.
fn spawn_template_warmup(inner: &Arc<Inner>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let inner = Arc::clone(inner);
    handle.spawn(async move {
        let started = Instant::now();
        match inner.template_data().await {
            Ok(_) => info!(elapsed_ms = started.elapsed().as_millis() as u64, "WAL redo template cluster ready"),
            Err(e) => warn!("WAL redo template cluster not made in advance (the first request will retry): {e}"),
        }
    });
}

fn spawn_quiesce_task(inner: &Arc<Inner>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let idle = inner.conf.idle_timeout;
    let period = (idle / 4).max(Duration::from_millis(50));
    handle.spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(inner) = weak.upgrade() else { return };
            if inner.lock_pool().shutdown {
                return;
            }
            inner.quiesce(idle);
        }
    });
}

/// Stop a process without waiting (from sync code): SIGKILL now, reap in
/// a task (or on drop, outside a runtime).
fn retire(proc: WalRedoProcess) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn(proc.kill_and_wait())),
        Err(_) => drop(proc),
    }
}

impl Inner {
    fn lock_pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn quiesce(&self, idle: Duration) -> usize {
        let mut pool = self.lock_pool();
        let mut stopped = 0;
        for slot in pool.free.iter_mut() {
            if slot.proc.as_ref().is_some_and(|p| p.last_used.elapsed() >= idle) {
                if let Some(proc) = slot.proc.take() {
                    info!(pid = proc.pid(), "stopping idle WAL redo process");
                    retire(proc);
                    stopped += 1;
                }
            }
        }
        stopped
    }

    async fn lease(self: &Arc<Self>) -> Result<Lease, WalRedoError> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(|_| WalRedoError::Cancelled)?;
        let mut pool = self.lock_pool();
        if pool.shutdown {
            return Err(WalRedoError::Cancelled);
        }
        // Prefer a slot whose process is already running (kept at the end).
        let slot = pool.free.pop().ok_or_else(|| WalRedoError::Process("no free pool slot".into()))?;
        Ok(Lease { inner: Arc::clone(self), slot: Some(slot), dirty: false, _permit: permit })
    }

    async fn run(self: &Arc<Self>, op: Op<'_>) -> Result<Bytes, WalRedoError> {
        let mut lease = self.lease().await?;
        lease.run(op).await
    }

    fn release(&self, mut slot: Slot, dirty: bool) {
        let mut pool = self.lock_pool();
        if dirty || pool.shutdown {
            if let Some(proc) = slot.proc.take() {
                retire(proc);
            }
        }
        if slot.proc.is_some() {
            pool.free.push(slot);
        } else {
            pool.free.insert(0, slot);
        }
    }

    async fn launch(&self, idx: usize) -> Result<WalRedoProcess, WalRedoError> {
        let template = self.template_data().await?;
        let live = {
            let pool = self.lock_pool();
            if pool.shutdown {
                return Err(WalRedoError::Cancelled);
            }
            self.live.enter(idx)
        };
        let (work_dir, user) = (self.conf.work_dir.clone(), self.user.clone());
        let data_dir = blocking(move || scratch::ensure_slot(&work_dir, idx, &template, &user)).await?;
        let started = Instant::now();
        let spec = LaunchSpec {
            pg_bin: &self.conf.pg_bin_dir,
            data_dir,
            lib_dir: &self.lib_dir,
            user: &self.user,
            timeout: self.conf.launch_timeout,
            limits: Limits {
                sandbox: self.conf.sandbox,
                memory_limit_bytes: self.conf.memory_limit_bytes,
                cpu_limit_secs: self.conf.cpu_limit_secs,
            },
        };
        let proc = WalRedoProcess::launch(spec, live).await?;
        let elapsed = started.elapsed();
        metrics::WAL_REDO_LAUNCH_TIME.observe(elapsed.as_secs_f64());
        info!(pid = proc.pid(), slot = idx, elapsed_ms = elapsed.as_millis() as u64, "launched WAL redo process");
        Ok(proc)
    }

    async fn template_data(&self) -> Result<PathBuf, WalRedoError> {
        let init = || async {
            let template_dir = self.conf.template_dir.clone().unwrap_or_else(|| self.conf.work_dir.join("template"));
            let (lib_dir, user, bin) = (self.lib_dir.clone(), self.user.clone(), self.conf.pg_bin_dir.clone());
            blocking(move || scratch::ensure_template(&template_dir, &lib_dir, &user, &bin)).await
        };
        self.template.get_or_try_init(init).await.cloned()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, WalRedoError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(WalRedoError::Launch),
        Err(e) => Err(WalRedoError::Launch(format!("setup task failed: {e}"))),
    }
}

/// Exclusive use of one pool slot (and its process, if any).
struct Lease {
    inner: Arc<Inner>,
    slot: Option<Slot>,
    /// Set while a request is in flight: if the lease is dropped then, the
    /// process's protocol state is unknown and it must not be reused.
    dirty: bool,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    async fn run(&mut self, op: Op<'_>) -> Result<Bytes, WalRedoError> {
        let Some(slot) = self.slot.as_mut() else {
            return Err(WalRedoError::Process("lease without a slot".into()));
        };
        let proc = match slot.proc.as_mut() {
            Some(proc) => proc,
            None => slot.proc.insert(self.inner.launch(slot.idx).await?),
        };
        self.dirty = true;
        let timeout = self.inner.conf.request_timeout;
        let result = match op {
            Op::Apply { target, base, records } => {
                let base = base.map_or(Base::None, |b| Base::Image(b));
                proc.apply(target, base, records, timeout).await
            }
            Op::ApplyMany { requests } => proc.apply_many(requests, timeout).await,
            Op::Ping => proc.ping(timeout).await.map(|()| Bytes::new()),
            Op::Test(cmd) => proc.test_command(cmd, timeout).await.map(|()| Bytes::new()),
        };
        let retire = match &result {
            Err(_) => true,
            Ok(_) => over_cpu_budget(proc, self.inner.conf.cpu_limit_secs).await,
        };
        if retire {
            if let Some(proc) = slot.proc.take() {
                proc.kill_and_wait().await; // out of rotation before any retry
            }
        }
        self.dirty = false;
        result
    }
}

/// Whether `proc` has used half of its CPU limit (checked at most once
/// a second per process).
async fn over_cpu_budget(proc: &mut WalRedoProcess, cpu_limit_secs: u64) -> bool {
    if proc.cpu_checked_at.is_some_and(|at| at.elapsed() < CPU_CHECK_INTERVAL) {
        return false;
    }
    proc.cpu_checked_at = Some(Instant::now());
    let budget = Duration::from_secs(cpu_limit_secs / 2);
    match proc.cpu_time().await {
        Some(used) if used >= budget => {
            info!(pid = proc.pid(), used_ms = used.as_millis() as u64, "retiring WAL redo process: half of its CPU limit used");
            true
        }
        _ => false,
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.inner.release(slot, self.dirty);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(will_init: bool) -> (Lsn, WalRecord) {
        (Lsn(1), WalRecord::Postgres { will_init, rec: Bytes::new() })
    }

    fn clog() -> (Lsn, WalRecord) {
        (Lsn(2), WalRecord::ClogSetAborted { xids: vec![1] })
    }

    #[test]
    fn runs_split_where_the_applier_changes() {
        let records = vec![pg(true), pg(false), clog(), clog(), pg(false), clog()];
        let runs = split_runs(&records);
        assert_eq!(runs, vec![(false, 0..2), (true, 2..4), (false, 4..5), (true, 5..6)]);
        assert!(split_runs(&[]).is_empty());
    }

    #[test]
    fn malformed_requests_are_rejected() {
        assert!(validate_request(&None, &[]).is_err());
        let short = Some(Bytes::from_static(b"abc"));
        assert!(validate_request(&short, &[clog()]).is_err());
        assert!(validate_request(&None, &[pg(true)]).is_err(), "empty raw record");
        assert!(validate_request(&None, &[clog()]).is_ok());
    }
}
