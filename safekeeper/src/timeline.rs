//! One timeline on a safekeeper: its persistent state, its WAL, and the
//! positions other tasks wait on.
//!
//! Owns the control file and the [`WalStorage`] of the timeline directory.
//! Invariants:
//! * `flush_lsn` (watch channel) only reports WAL that `WalStorage::flush`
//!   made durable;
//! * `commit_lsn <= flush_lsn`, and it never decreases within a term;
//! * the term only grows; a new term truncates WAL past the new compute's
//!   start LSN *before* the term and compute are persisted and announced, so
//!   no acceptor of the old term can append after the cut;
//! * the term history (control file) names the term of every WAL byte held;
//!   a safekeeper behind a new term's start LSN takes the term (it is fenced
//!   from the old compute) but follows the new compute only once peer
//!   recovery has brought its WAL up to that start LSN;
//! * `last_record_lsn` is always a record boundary at or below `flush_lsn`;
//! * `backup_lsn` (control file) only grows, and the whole segments below
//!   it are in remote storage (see `wal_backup`); WAL is removed locally
//!   only below what is durable elsewhere ([`Timeline::remove_old_wal`]).
//!
//! Locking: `state` is a std mutex held only for field updates; control
//! file writes are serialized by `persist_lock` and write the newest state; `storage` is
//! a std mutex taken only around file I/O, inside `spawn_blocking` or, for
//! [`StorageIo::InLine`], on a thread that owns nothing else. Neither is
//! ever held across an `.await`.
//!
//! Cancellation: `append_and_flush` runs its I/O on the blocking pool (or in
//! line, where it cannot be interrupted); if the caller is dropped the write
//! still completes, but its flush position is not published (the next
//! writer, which waits for the storage lock, sees the durable end), so a
//! cancelled caller never publishes a stale flush.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use broker::SafekeeperTimelineInfo;

use crate::control_file::{self, ComputeSpec, ControlFileError, TermHistory, TimelinePersistentState};
use crate::recovery::RecoveryTarget;
use crate::metrics::METRICS;
use crate::wal_storage::{WalStorage, WalStorageError};

/// Persist the flush position to the control file at most this often.
const CONTROL_FILE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error(transparent)]
    ControlFile(#[from] ControlFileError),
    #[error(transparent)]
    Storage(#[from] WalStorageError),
    #[error("term {requested} is not newer than current term {current}")]
    OldTerm { requested: u64, current: u64 },
    #[error("the compute starts at {start_lsn}, before this timeline's first WAL at {timeline_start_lsn}")]
    BeforeStart { start_lsn: Lsn, timeline_start_lsn: Lsn },
    #[error("compute has system id {got}, timeline has {expected}")]
    SystemIdMismatch { expected: u64, got: u64 },
    #[error("timeline was deleted or the safekeeper is shutting down")]
    Cancelled,
    #[error("blocking task failed: {0}")]
    Join(String),
}

/// What the control plane gives to create a timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateTimelineRequest {
    pub timeline_id: TimelineId,
    /// First LSN of WAL the timeline will hold (default: set by the first compute).
    pub start_lsn: Lsn,
    /// Safekeeper ids of the timeline; default: this one alone.
    #[serde(default)]
    pub peers: Vec<u64>,
    /// Default: a majority of `peers`.
    #[serde(default)]
    pub quorum: Option<usize>,
    #[serde(default = "default_seg_size")]
    pub wal_seg_size_bytes: u64,
}

fn default_seg_size() -> u64 {
    16 * 1024 * 1024
}

/// The WAL offload as this safekeeper sees it, for status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BackupStatus {
    /// Who offloads the next segment, by this safekeeper's broker view
    /// (None: nobody can yet, or offload is not configured).
    pub offloader: Option<u64>,
    /// The last failed offload round, until one succeeds.
    pub last_error: Option<String>,
    /// End of the committed WAL of the last partial segment this
    /// safekeeper uploaded (see `wal_backup::partial`), while that object
    /// is the newest; None once the segment is offloaded whole.
    pub partial_end_lsn: Option<Lsn>,
    /// Offloaded WAL below this was deleted by this safekeeper's last
    /// remote GC pass (see `wal_backup::remote_gc`).
    pub remote_gc_horizon: Option<Lsn>,
}

/// Where the acceptor is, for status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AcceptorStatus {
    pub connected: bool,
    pub conninfo: Option<String>,
    pub last_error: Option<String>,
    pub last_received_ms_ago: Option<u64>,
}

struct Volatile {
    persistent: TimelinePersistentState,
    /// End of the last complete record received; a new connection resumes here.
    last_record_end: Lsn,
    last_persist: Instant,
    acceptor: AcceptorStatus,
    last_received: Option<Instant>,
    backup: BackupStatus,
}

pub struct Timeline {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub safekeeper_id: u64,
    dir: PathBuf,
    seg_size_bytes: u64,
    state: Mutex<Volatile>,
    storage: Arc<Mutex<WalStorage>>,
    flush_lsn: watch::Sender<Lsn>,
    commit_lsn: watch::Sender<Lsn>,
    compute: watch::Sender<Option<ComputeSpec>>,
    /// The control plane says the compute is ready for its safekeepers now
    /// (the same spec again): the acceptor retries at once, not after its
    /// reconnect backoff.
    connect_now: tokio::sync::Notify,
    /// Fresh broker infos of the other peers (None until the first view).
    peer_view: watch::Sender<Option<Vec<SafekeeperTimelineInfo>>>,
    /// The lowest flush LSN last published by any peer (stale or not); 0
    /// until every peer has been seen. WAL at or above it is kept, so a
    /// peer that falls behind can still recover from this one.
    peer_horizon_lsn: AtomicU64,
    /// Peer recovery asked for by the control plane.
    recovery: watch::Sender<Option<RecoveryTarget>>,
    /// Held by every WAL change as a whole (append + publish, term change,
    /// adopt, resume cut), so a term change never interleaves with a batch
    /// of the acceptor or of peer recovery.
    writer: tokio::sync::Mutex<()>,
    /// Serializes control file writes (see [`Timeline::persist`]).
    persist_lock: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled when the timeline is deleted or the safekeeper stops.
    pub cancel: CancellationToken,
}

impl Timeline {
    /// Create the directory and control file of a new timeline.
    pub fn create(dir: &Path, safekeeper_id: u64, tenant_id: TenantId, req: &CreateTimelineRequest) -> Result<Arc<Timeline>, TimelineError> {
        let peers = if req.peers.is_empty() { vec![safekeeper_id] } else { req.peers.clone() };
        let quorum = req.quorum.unwrap_or(peers.len() / 2 + 1).clamp(1, peers.len());
        let state = TimelinePersistentState {
            tenant_id,
            timeline_id: req.timeline_id,
            system_id: 0,
            pg_version: 15,
            wal_seg_size_bytes: req.wal_seg_size_bytes,
            timeline_start_lsn: req.start_lsn,
            term: 0,
            compute: None,
            flush_lsn: req.start_lsn,
            commit_lsn: req.start_lsn,
            remote_consistent_lsn: Lsn(0),
            peers,
            quorum,
            term_history: TermHistory::default(),
            backup_lsn: req.start_lsn,
        };
        utils::fs::create_dir_all_durable(dir).map_err(|error| ControlFileError::Io { path: dir.to_path_buf(), error })?;
        control_file::persist(dir, &state)?;
        Self::open(dir, safekeeper_id, state)
    }

    /// Load an existing timeline from its directory, finding the end of its WAL.
    pub fn load(dir: &Path, safekeeper_id: u64) -> Result<Arc<Timeline>, TimelineError> {
        let state = control_file::load(dir)?;
        crate::wal_backup::clean_remote_read_dir(dir);
        Self::open(dir, safekeeper_id, state)
    }

    fn open(dir: &Path, safekeeper_id: u64, state: TimelinePersistentState) -> Result<Arc<Timeline>, TimelineError> {
        let mut storage = WalStorage::open(dir, state.wal_seg_size_bytes, state.timeline_start_lsn, state.flush_lsn)?;
        storage.term = state.term;
        let flush = storage.flush_lsn();
        let commit = state.commit_lsn.min(flush);
        tracing::info!(tenant_id = %state.tenant_id, timeline_id = %state.timeline_id, %flush, %commit, term = state.term, "timeline opened");
        Ok(Arc::new(Timeline {
            tenant_id: state.tenant_id,
            timeline_id: state.timeline_id,
            safekeeper_id,
            dir: dir.to_path_buf(),
            seg_size_bytes: state.wal_seg_size_bytes,
            flush_lsn: watch::Sender::new(flush),
            commit_lsn: watch::Sender::new(commit),
            compute: watch::Sender::new(state.compute.clone()),
            connect_now: tokio::sync::Notify::new(),
            peer_view: watch::Sender::new(None),
            peer_horizon_lsn: AtomicU64::new(0),
            recovery: watch::Sender::new(None),
            persist_lock: Arc::new(tokio::sync::Mutex::new(())),
            writer: tokio::sync::Mutex::new(()),
            state: Mutex::new(Volatile { persistent: state, last_record_end: flush, last_persist: Instant::now(), acceptor: AcceptorStatus::default(), last_received: None, backup: BackupStatus::default() }),
            storage: Arc::new(Mutex::new(storage)),
            cancel: CancellationToken::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Volatile> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn seg_size_bytes(&self) -> u64 {
        self.seg_size_bytes
    }
    pub fn persistent(&self) -> TimelinePersistentState {
        self.lock().persistent.clone()
    }
    pub fn flush_lsn(&self) -> Lsn {
        *self.flush_lsn.borrow()
    }
    pub fn commit_lsn(&self) -> Lsn {
        *self.commit_lsn.borrow()
    }
    pub fn start_lsn(&self) -> Lsn {
        self.lock().persistent.timeline_start_lsn
    }
    pub fn subscribe_flush(&self) -> watch::Receiver<Lsn> {
        self.flush_lsn.subscribe()
    }
    pub fn subscribe_commit(&self) -> watch::Receiver<Lsn> {
        self.commit_lsn.subscribe()
    }
    pub fn subscribe_compute(&self) -> watch::Receiver<Option<ComputeSpec>> {
        self.compute.subscribe()
    }
    /// Resolves when the control plane last said "connect now" (a permit is
    /// kept when nobody waits, so a nudge during a connection attempt is not
    /// lost).
    pub async fn connect_now(&self) {
        self.connect_now.notified().await
    }
    pub fn term(&self) -> u64 {
        self.lock().persistent.term
    }
    /// End of the last complete record held (a record boundary).
    pub fn last_record_lsn(&self) -> Lsn {
        self.lock().last_record_end.min(self.flush_lsn())
    }
    /// Term of the last WAL held.
    pub fn last_log_term(&self) -> u64 {
        self.lock().persistent.term_history.last_log_term(self.flush_lsn())
    }
    pub fn set_peer_horizon(&self, lsn: Lsn) {
        self.peer_horizon_lsn.store(lsn.0, std::sync::atomic::Ordering::Release);
    }
    pub fn peer_horizon(&self) -> Lsn {
        Lsn(self.peer_horizon_lsn.load(std::sync::atomic::Ordering::Acquire))
    }
    pub fn set_peer_view(&self, infos: Vec<SafekeeperTimelineInfo>) {
        self.peer_view.send_replace(Some(infos));
    }
    pub fn subscribe_peer_view(&self) -> watch::Receiver<Option<Vec<SafekeeperTimelineInfo>>> {
        self.peer_view.subscribe()
    }
    pub fn request_recovery(&self, target: RecoveryTarget) {
        self.recovery.send_replace(Some(target));
    }
    /// The pending recovery request, removing it.
    pub fn take_recovery_request(&self) -> Option<RecoveryTarget> {
        if self.recovery.borrow().is_none() {
            return None;
        }
        self.recovery.send_replace(None)
    }
    pub fn subscribe_recovery(&self) -> watch::Receiver<Option<RecoveryTarget>> {
        self.recovery.subscribe()
    }

    /// Run `f` on the WAL storage in the blocking pool.
    async fn with_storage<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WalStorage) -> Result<T, WalStorageError> + Send + 'static,
    ) -> Result<T, TimelineError> {
        let storage = self.storage.clone();
        let result = tokio::task::spawn_blocking(move || f(&mut storage.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| TimelineError::Join(e.to_string()))?;
        Ok(result?)
    }

    /// Write WAL received from the compute of `term` and make it durable.
    /// `record_end` is the end of the last complete record in it (for the
    /// control file). Returns the new flush LSN.
    pub async fn append_and_flush(
        &self,
        term: u64,
        start: Lsn,
        data: bytes::Bytes,
        record_end: Lsn,
        io: StorageIo,
    ) -> Result<Lsn, TimelineError> {
        let _writer = self.writer.lock().await;
        let len = data.len() as u64;
        let started = Instant::now();
        let write = move |s: &mut WalStorage| {
            s.write(term, start, &data)?;
            s.flush()
        };
        let flush = match io {
            StorageIo::BlockingPool => self.with_storage(write).await?,
            StorageIo::InLine => write(&mut self.storage.lock().unwrap_or_else(|p| p.into_inner()))?,
        };
        METRICS.fsync_seconds.observe(started.elapsed().as_secs_f64());
        METRICS.wal_bytes_written.inc_by(len);
        self.flush_lsn.send_replace(flush);
        if self.lock().persistent.quorum <= 1 {
            // Alone, this safekeeper's flush is the quorum's: committed now,
            // not at the publish loop's next round (up to 50 ms later).
            self.advance_commit_lsn(flush);
        }
        if let Some(snapshot) = self.note_received(record_end) {
            // The control file's flush position is only where the next
            // open starts scanning WAL; everything below `flush` is durable
            // already. A failed write of it (a full disk) is retried with a
            // later batch and does not hold back the acknowledgement.
            if let Err(e) = self.persist(snapshot).await {
                tracing::warn!("control file not updated, WAL up to {flush} is durable and acknowledged: {e}");
            }
        }
        Ok(flush)
    }

    /// Record a received batch; returns a state to persist when the control
    /// file's flush position is due for an update.
    fn note_received(&self, record_end: Lsn) -> Option<TimelinePersistentState> {
        let mut st = self.lock();
        st.last_received = Some(Instant::now());
        st.last_record_end = st.last_record_end.max(record_end);
        if record_end > st.persistent.flush_lsn && st.last_persist.elapsed() >= CONTROL_FILE_FLUSH_INTERVAL {
            st.persistent.flush_lsn = record_end;
            st.persistent.commit_lsn = self.commit_lsn();
            st.last_persist = Instant::now();
            return Some(st.persistent.clone());
        }
        None
    }

    /// Write the control file. Persists are serialized and each writes the
    /// state current when its turn comes (`changed` or newer), so an older
    /// snapshot can never overwrite a newer term on disk. The lock guard
    /// moves into the blocking task: a dropped caller cannot let a second
    /// writer in while the file is being replaced.
    async fn persist(&self, changed: TimelinePersistentState) -> Result<(), TimelineError> {
        let guard = self.persist_lock.clone().lock_owned().await;
        let state = self.lock().persistent.clone();
        debug_assert!(state.term >= changed.term);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            control_file::persist(&dir, &state)
        })
        .await
        .map_err(|e| TimelineError::Join(e.to_string()))??;
        Ok(())
    }

    /// Persist the current state now (clean shutdown, term change).
    pub async fn persist_now(&self, record_end: Option<Lsn>) -> Result<(), TimelineError> {
        let snapshot = {
            let mut st = self.lock();
            if let Some(end) = record_end {
                st.persistent.flush_lsn = st.persistent.flush_lsn.max(end);
            }
            st.persistent.commit_lsn = self.commit_lsn();
            st.last_persist = Instant::now();
            st.persistent.clone()
        };
        self.persist(snapshot).await
    }

    /// Switch to a new compute. A higher term truncates WAL past its start
    /// LSN, then persists and announces it; the same spec again changes
    /// nothing but wakes the acceptor from its reconnect backoff (the
    /// control plane sends it once the compute accepts the replication role).
    /// A safekeeper whose WAL ends before the start LSN takes the term
    /// without cutting anything and catches up from peers later.
    pub async fn set_compute(&self, spec: ComputeSpec) -> Result<(), TimelineError> {
        let _writer = self.writer.lock().await;
        let (current, flush) = {
            let st = self.lock();
            (st.persistent.clone(), self.flush_lsn())
        };
        if current.compute.as_ref() == Some(&spec) {
            self.connect_now.notify_one();
            return Ok(());
        }
        if spec.term <= current.term {
            return Err(TimelineError::OldTerm { requested: spec.term, current: current.term });
        }
        if spec.start_lsn < current.timeline_start_lsn {
            return Err(TimelineError::BeforeStart { start_lsn: spec.start_lsn, timeline_start_lsn: current.timeline_start_lsn });
        }
        let empty = flush == current.timeline_start_lsn;
        let (start, term) = (spec.start_lsn, spec.term);
        // Decided under the storage lock, on the durable end of WAL.
        let lagging_at = self
            .with_storage(move |s| {
                s.term = term;
                if empty && start > s.start_lsn() {
                    s.reset_start(start).map(|_| None)
                } else if s.flush_lsn() < start && !empty {
                    Ok(Some(s.flush_lsn()))
                } else {
                    s.truncate(start).map(|_| None)
                }
            })
            .await?;
        let lagging = lagging_at.is_some();
        let cut = lagging_at.unwrap_or(start);
        let snapshot = {
            let mut st = self.lock();
            if empty {
                st.persistent.timeline_start_lsn = st.persistent.timeline_start_lsn.max(start);
                st.persistent.backup_lsn = st.persistent.backup_lsn.max(st.persistent.timeline_start_lsn);
            }
            st.persistent.term = spec.term;
            st.persistent.term_history.push(spec.term, start);
            if !lagging {
                st.last_record_end = start;
            }
            st.persistent.compute = Some(spec.clone());
            st.persistent.flush_lsn = st.persistent.flush_lsn.min(cut);
            st.persistent.commit_lsn = st.persistent.commit_lsn.min(cut);
            st.persistent.clone()
        };
        self.persist(snapshot).await?;
        self.flush_lsn.send_replace(cut);
        self.commit_lsn.send_modify(|c| *c = (*c).min(cut));
        tracing::info!(term = spec.term, start_lsn = %start, lagging, conninfo = %pq_proto::conninfo::redact_password(&spec.conninfo), "new compute");
        self.compute.send_replace(Some(spec));
        Ok(())
    }

    /// Take a peer's newer term, history and compute (peer recovery): WAL
    /// past the common prefix of the two histories is cut first.
    pub async fn adopt(&self, term: u64, history: TermHistory, compute: Option<ComputeSpec>) -> Result<Lsn, TimelineError> {
        let _writer = self.writer.lock().await;
        let current = self.persistent();
        if term < current.term {
            return Err(TimelineError::OldTerm { requested: term, current: current.term });
        }
        let cut = current.term_history.common_prefix_end(&history, self.last_record_lsn()).max(current.timeline_start_lsn);
        self.with_storage(move |s| {
            s.term = term;
            if s.write_lsn() > cut {
                s.truncate(cut)?;
            }
            Ok(())
        })
        .await?;
        let snapshot = {
            let mut st = self.lock();
            st.persistent.term = term;
            st.persistent.term_history = history;
            st.persistent.compute = compute.clone();
            st.last_record_end = st.last_record_end.min(cut);
            st.persistent.flush_lsn = st.persistent.flush_lsn.min(cut);
            st.persistent.commit_lsn = st.persistent.commit_lsn.min(cut);
            st.persistent.clone()
        };
        self.persist(snapshot).await?;
        self.flush_lsn.send_modify(|f| *f = (*f).min(cut));
        self.commit_lsn.send_modify(|c| *c = (*c).min(cut));
        tracing::info!(term, %cut, "adopted a peer's term history");
        self.compute.send_replace(compute);
        Ok(cut)
    }

    /// Where a new connection of the compute of `term` starts: the end of
    /// the last complete record. WAL past it (part of a record cut by a
    /// disconnect) is removed first, so the resent bytes append contiguously.
    pub async fn resume_position(&self, term: u64) -> Result<Lsn, TimelineError> {
        let _writer = self.writer.lock().await;
        let resume = self.lock().last_record_end;
        self.with_storage(move |s| {
            if s.term != term {
                return Err(WalStorageError::WrongTerm { current: s.term, got: term });
            }
            if s.write_lsn() > resume {
                s.truncate(resume)?;
            }
            Ok(())
        })
        .await?;
        self.flush_lsn.send_modify(|f| *f = (*f).min(resume));
        Ok(resume)
    }

    /// Record the compute's system id, or check it against the known one.
    pub async fn check_system_id(&self, system_id: u64) -> Result<(), TimelineError> {
        let snapshot = {
            let mut st = self.lock();
            match st.persistent.system_id {
                0 => {
                    st.persistent.system_id = system_id;
                    st.persistent.clone()
                }
                known if known == system_id => return Ok(()),
                known => return Err(TimelineError::SystemIdMismatch { expected: known, got: system_id }),
            }
        };
        self.persist(snapshot).await
    }

    /// Raise commit_lsn (never above flush_lsn, never down).
    pub fn advance_commit_lsn(&self, candidate: Lsn) {
        let target = candidate.min(self.flush_lsn());
        self.commit_lsn.send_if_modified(|c| {
            if target > *c {
                *c = target;
                true
            } else {
                false
            }
        });
    }

    /// Remove whole WAL segments nobody needs; returns how many. Always
    /// kept: WAL at or above commit_lsn, and at or above every connected
    /// replica's flush position. Then:
    /// * without WAL offload (`offload` false), WAL at or above the
    ///   pageservers' remote-consistent LSN and at or above every peer's
    ///   last published flush position (a peer that is down may need it to
    ///   recover: a long-down peer holds WAL here);
    /// * with WAL offload, WAL at or above the smaller of the
    ///   remote-consistent LSN and `backup_lsn`: what is below both is in
    ///   remote storage twice over (as layers and as WAL segments), and a
    ///   lagging peer or pageserver reads it from there (see `wal_backup`).
    pub async fn remove_old_wal(&self, replica_min_flush: Option<Lsn>, offload: bool) -> Result<usize, TimelineError> {
        let horizon = self.removal_horizon(replica_min_flush, offload);
        if horizon.segment_number(self.seg_size_bytes) == 0 {
            return Ok(0);
        }
        let removed = self.with_storage(move |s| s.remove_segments_below(horizon)).await?;
        if removed > 0 {
            let start = self.storage.lock().unwrap_or_else(|p| p.into_inner()).start_lsn();
            let snapshot = {
                let mut st = self.lock();
                st.persistent.timeline_start_lsn = st.persistent.timeline_start_lsn.max(start);
                st.persistent.clone()
            };
            self.persist(snapshot).await?;
            tracing::info!(removed, %horizon, offload, "removed old WAL segments");
        }
        Ok(removed)
    }

    /// WAL below this LSN may be removed (see [`Timeline::remove_old_wal`]).
    pub fn removal_horizon(&self, replica_min_flush: Option<Lsn>, offload: bool) -> Lsn {
        let (remote, backup, has_peers) = {
            let st = self.lock();
            let p = &st.persistent;
            (p.remote_consistent_lsn, p.backup_lsn, p.peers.iter().any(|p| *p != self.safekeeper_id))
        };
        let peer_horizon = has_peers.then(|| self.peer_horizon());
        let positions = Positions { remote_consistent: remote, commit: self.commit_lsn(), backup, peer_horizon, replica_min_flush };
        removal_horizon_of(&positions, offload)
    }

    /// WAL offloaded to remote storage (by this safekeeper or a peer).
    pub fn backup_lsn(&self) -> Lsn {
        self.lock().persistent.backup_lsn
    }

    pub fn remote_consistent_lsn(&self) -> Lsn {
        self.lock().persistent.remote_consistent_lsn
    }

    /// Raise `backup_lsn` to `lsn` (never down): segments below it are in
    /// remote storage, uploaded by this safekeeper (`persist`: the control
    /// file is written before this returns) or reported by a peer (kept in
    /// memory and written with the next persist; a restart that loses it
    /// learns it again from the broker). Returns whether it grew.
    pub async fn advance_backup_lsn(&self, lsn: Lsn, persist: bool) -> Result<bool, TimelineError> {
        let snapshot = {
            let mut st = self.lock();
            if lsn <= st.persistent.backup_lsn {
                return Ok(false);
            }
            st.persistent.backup_lsn = lsn;
            st.persistent.clone()
        };
        if persist {
            self.persist(snapshot).await?;
        }
        Ok(true)
    }

    pub fn update_remote_consistent_lsn(&self, lsn: Lsn) {
        let mut st = self.lock();
        st.persistent.remote_consistent_lsn = st.persistent.remote_consistent_lsn.max(lsn);
    }

    pub fn set_offloader(&self, id: Option<u64>) {
        self.lock().backup.offloader = id;
    }

    pub fn set_backup_error(&self, error: Option<String>) {
        self.lock().backup.last_error = error;
    }

    pub fn update_backup_status(&self, f: impl FnOnce(&mut BackupStatus)) {
        f(&mut self.lock().backup);
    }

    pub fn backup_status(&self) -> BackupStatus {
        self.lock().backup.clone()
    }

    pub fn set_acceptor_status(&self, f: impl FnOnce(&mut AcceptorStatus)) {
        f(&mut self.lock().acceptor);
    }

    pub fn acceptor_status(&self) -> AcceptorStatus {
        let st = self.lock();
        let mut status = st.acceptor.clone();
        status.last_received_ms_ago = st.last_received.map(|t| t.elapsed().as_millis() as u64);
        status
    }
}

/// What WAL removal depends on (see [`removal_horizon_of`]).
#[derive(Clone, Copy, Debug)]
pub struct Positions {
    pub remote_consistent: Lsn,
    pub commit: Lsn,
    pub backup: Lsn,
    /// The lowest flush LSN a peer last published (None: no peers).
    pub peer_horizon: Option<Lsn>,
    /// The lowest flush position of the connected replicas.
    pub replica_min_flush: Option<Lsn>,
}

/// Where [`Timeline::append_and_flush`] does its file I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageIo {
    /// On tokio's blocking pool: for callers on the shared runtime.
    BlockingPool,
    /// On the calling thread: only for a caller that has a thread (and a
    /// runtime) of its own, where blocking delays nothing but itself and a
    /// commit's write, fsync and acknowledgement need no thread hand-off.
    InLine,
}

/// WAL below this LSN may be removed: below commit_lsn, every connected
/// replica and the remote-consistent LSN, and then below `backup_lsn` with
/// WAL offload, or below the peer horizon without it.
pub fn removal_horizon_of(p: &Positions, offload: bool) -> Lsn {
    let mut horizon = p.remote_consistent.min(p.commit);
    if offload {
        horizon = horizon.min(p.backup);
    } else if let Some(peers) = p.peer_horizon {
        horizon = horizon.min(peers);
    }
    if let Some(replica) = p.replica_min_flush {
        horizon = horizon.min(replica);
    }
    horizon
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_safekeeper_commits_what_it_flushed_at_once_a_member_of_three_does_not() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let start = Lsn(0x0100_0028);
        for (name, peers, committed) in [("alone", vec![], true), ("of-three", vec![1, 2, 3], false)] {
            let req = CreateTimelineRequest { timeline_id: TimelineId::generate(), start_lsn: start, peers, quorum: None, wal_seg_size_bytes: 1 << 20 };
            let tl = Timeline::create(&dir.path().join(name), 1, TenantId::generate(), &req).unwrap();
            let flush = rt.block_on(tl.append_and_flush(0, start, bytes::Bytes::from(vec![0u8; 100]), start, StorageIo::InLine)).unwrap();
            assert_eq!(flush, start + 100);
            let expected = if committed { flush } else { start };
            assert_eq!(tl.commit_lsn(), expected, "{name}");
        }
    }

    #[test]
    fn offload_replaces_the_peer_horizon_by_backup_lsn() {
        let p = Positions { remote_consistent: Lsn(900), commit: Lsn(1000), backup: Lsn(700), peer_horizon: Some(Lsn(100)), replica_min_flush: None };
        // Without offload, a peer that is far behind holds WAL here.
        assert_eq!(removal_horizon_of(&p, false), Lsn(100));
        // With offload it reads the WAL from remote storage; only what is
        // both uploaded by the pageserver and offloaded goes.
        assert_eq!(removal_horizon_of(&p, true), Lsn(700));
        assert_eq!(removal_horizon_of(&Positions { backup: Lsn(950), ..p }, true), Lsn(900));
        // Never above commit_lsn or a connected replica.
        assert_eq!(removal_horizon_of(&Positions { remote_consistent: Lsn(2000), backup: Lsn(2000), ..p }, true), Lsn(1000));
        assert_eq!(removal_horizon_of(&Positions { replica_min_flush: Some(Lsn(50)), ..p }, true), Lsn(50));
        // Nothing uploaded by a pageserver yet: nothing goes, offloaded or not.
        assert_eq!(removal_horizon_of(&Positions { remote_consistent: Lsn(0), ..p }, true), Lsn(0));
        assert_eq!(removal_horizon_of(&Positions { peer_horizon: None, ..p }, false), Lsn(900));
    }
}
