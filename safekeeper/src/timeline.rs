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
//!   no acceptor of the old term can append after the cut.
//!
//! Locking: `state` is a std mutex held only for field updates; `storage` is
//! a std mutex taken only inside `spawn_blocking` (file I/O). Neither is ever
//! held across an `.await`.
//!
//! Cancellation: `append_and_flush` runs its I/O on the blocking pool; if the
//! caller is dropped the write still completes (and the flush position is
//! published), so a cancelled caller never leaves a half-recorded flush.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::control_file::{self, ComputeSpec, ControlFileError, TimelinePersistentState};
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
    #[error("this safekeeper has WAL only up to {flush_lsn}, the compute starts at {start_lsn}; it cannot serve this term")]
    Lagging { flush_lsn: Lsn, start_lsn: Lsn },
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
        };
        std::fs::create_dir_all(dir).map_err(|source| ControlFileError::Io { path: dir.to_path_buf(), source })?;
        control_file::persist(dir, &state)?;
        Self::open(dir, safekeeper_id, state)
    }

    /// Load an existing timeline from its directory, finding the end of its WAL.
    pub fn load(dir: &Path, safekeeper_id: u64) -> Result<Arc<Timeline>, TimelineError> {
        let state = control_file::load(dir)?;
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
            state: Mutex::new(Volatile { persistent: state, last_record_end: flush, last_persist: Instant::now(), acceptor: AcceptorStatus::default(), last_received: None }),
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
    pub async fn append_and_flush(&self, term: u64, start: Lsn, data: bytes::Bytes, record_end: Lsn) -> Result<Lsn, TimelineError> {
        let len = data.len() as u64;
        let started = Instant::now();
        let flush = self
            .with_storage(move |s| {
                s.write(term, start, &data)?;
                s.flush()
            })
            .await?;
        METRICS.fsync_seconds.observe(started.elapsed().as_secs_f64());
        METRICS.wal_bytes_written.inc_by(len);
        self.flush_lsn.send_replace(flush);
        if let Some(snapshot) = self.note_received(record_end) {
            self.persist(snapshot).await?;
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

    async fn persist(&self, state: TimelinePersistentState) -> Result<(), TimelineError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || control_file::persist(&dir, &state))
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
    /// LSN, then persists and announces it; the same spec again is a no-op.
    pub async fn set_compute(&self, spec: ComputeSpec) -> Result<(), TimelineError> {
        let (current, flush) = {
            let st = self.lock();
            (st.persistent.clone(), self.flush_lsn())
        };
        if current.compute.as_ref() == Some(&spec) {
            return Ok(());
        }
        if spec.term <= current.term {
            return Err(TimelineError::OldTerm { requested: spec.term, current: current.term });
        }
        if spec.start_lsn < current.timeline_start_lsn {
            return Err(TimelineError::BeforeStart { start_lsn: spec.start_lsn, timeline_start_lsn: current.timeline_start_lsn });
        }
        let empty = flush == current.timeline_start_lsn;
        if flush < spec.start_lsn && !empty {
            return Err(TimelineError::Lagging { flush_lsn: flush, start_lsn: spec.start_lsn });
        }
        let (cut, term) = (spec.start_lsn, spec.term);
        self.with_storage(move |s| {
            s.term = term;
            if empty && cut > s.start_lsn() {
                s.reset_start(cut)
            } else {
                s.truncate(cut)
            }
        })
        .await?;
        let snapshot = {
            let mut st = self.lock();
            if empty {
                st.persistent.timeline_start_lsn = st.persistent.timeline_start_lsn.max(cut);
            }
            st.persistent.term = spec.term;
            st.last_record_end = cut;
            st.persistent.compute = Some(spec.clone());
            st.persistent.flush_lsn = cut;
            st.persistent.commit_lsn = st.persistent.commit_lsn.min(cut);
            st.persistent.clone()
        };
        self.persist(snapshot).await?;
        self.flush_lsn.send_replace(cut);
        self.commit_lsn.send_modify(|c| *c = (*c).min(cut));
        tracing::info!(term = spec.term, start_lsn = %cut, conninfo = %spec.conninfo, "new compute");
        self.compute.send_replace(Some(spec));
        Ok(())
    }

    /// Where a new connection of the compute of `term` starts: the end of
    /// the last complete record. WAL past it (part of a record cut by a
    /// disconnect) is removed first, so the resent bytes append contiguously.
    pub async fn resume_position(&self, term: u64) -> Result<Lsn, TimelineError> {
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

    /// Remove whole WAL segments nobody needs: below the remote-consistent
    /// LSN (pageservers hold that WAL durably elsewhere), below commit_lsn and
    /// below every connected replica's flush position. Returns how many.
    pub async fn remove_old_wal(&self, replica_min_flush: Option<Lsn>) -> Result<usize, TimelineError> {
        let remote = self.lock().persistent.remote_consistent_lsn;
        let mut horizon = remote.min(self.commit_lsn());
        if let Some(replica) = replica_min_flush {
            horizon = horizon.min(replica);
        }
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
            tracing::info!(removed, %horizon, "removed old WAL segments");
        }
        Ok(removed)
    }

    pub fn update_remote_consistent_lsn(&self, lsn: Lsn) {
        let mut st = self.lock();
        st.persistent.remote_consistent_lsn = st.persistent.remote_consistent_lsn.max(lsn);
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
