//! A timeline: one WAL history of a tenant, possibly branched from an
//! ancestor timeline at an LSN, with its layers and its LSNs.
//!
//! Owns: the [`LayerMap`], `last_record_lsn` (a [`SeqWait`]: the end LSN of
//! the last ingested record, what readers wait for), `disk_consistent_lsn`
//! (everything at or below it is in layer files and the index says so).
//! The walreceiver that feeds it is registered in
//! [`crate::ingest::walreceiver`], not here.
//!
//! Invariants:
//! * One writer at a time (`write_lock`): values of a record are added to
//!   the open in-memory layer *before* `last_record_lsn` advances past it,
//!   so a reader that waited for LSN X sees every value at or below X.
//! * Freezing happens under `write_lock`, so a frozen layer never receives
//!   writes; flushing happens under `flush_lock`, oldest frozen layer first.
//!   The compaction and image creation that follow a flush run after the
//!   flush lock is released (one pass at a time, coalesced: see
//!   [`Timeline::flush_frozen_layers`]), so a slow image pass never keeps
//!   frozen layers from being flushed, nor ingest waiting on them.
//! * Layer files become part of the timeline in this order: the file is
//!   written and made durable; the index (`index.json`, naming it and the
//!   new `disk_consistent_lsn`) is replaced durably under `index_lock`; only
//!   then the layer map and `disk_consistent_lsn` change. So the index never
//!   names a file that is not complete, and the map never holds a file that
//!   a restart would not find.
//! * A branch's own layers hold only LSNs above `ancestor_lsn`; reads below
//!   that continue in the ancestor at `ancestor_lsn`.
//! * Backpressure: at most [`MAX_FROZEN_LAYERS`] frozen layers exist;
//!   ingest waits ([`Timeline::wait_for_flush_backlog`]) before adding more.
//! * An import writes image layer files and then the first index
//!   ([`Timeline::commit_import`] via [`crate::ingest::import`]).
//! * Reads below `gc_cutoff_lsn` are refused; GC (submodule `gc`) removes
//!   only layers no read at or above it, and no child branch point, needs.
//!
//! Settings are the tenant's, read through [`SharedConf`] at each decision
//! (freeze, image creation, compaction, GC), so a change of the tenant's
//! config applies to a running timeline without a restart.
//!
//! * Layer files may be remote-only (after an attach, or evicted): a read
//!   pins each layer it visits and makes it resident first (submodule
//!   `ondemand`: one download per layer however many readers wait, not
//!   cancelled when one goes away), then does the blocking read with the
//!   pin held, so eviction never takes a layer from under a read.
//!   Compaction and image creation do the same for what they read; GC
//!   reads nothing of a remote layer (see [`crate::storage::gc`]).
//!
//! * Reads are vectored (submodule `vectored`): one walk down the layers
//!   for any number of keys, one blocking section per round of layers.
//!   Relation existence and sizes come from a cache kept exact by ingest
//!   (submodule `relcache`) where it can answer.
//!
//! Cancellation: reads are cancel-safe (dropping them leaves no state
//! behind; a blocking file read that was started completes on its own
//! thread; a download that was started completes for the others). Dropping `flush_frozen_layers` after a file was written but
//! before the index named it leaves a file that the next flush overwrites
//! or the next restart removes (the index does not name it); dropping it
//! after the index was written leaves the frozen layer in the map, and the
//! next flush writes the same file and index again.
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use postgres_ffi::pg_constants::BLCKSZ;
use postgres_ffi::RelFileNode;
use tracing::{info, instrument};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;
use utils::seqwait::SeqWait;

mod batch;
mod compaction;
mod gc;
mod ondemand;
pub mod relcache;
mod vectored;

pub use crate::storage::gc::GcResult;
pub use batch::BlockRef;
pub use compaction::CompactResult;
pub use ondemand::{Residency, DOWNLOAD_ATTEMPTS};
pub(crate) use gc::check_branch_lsn;

use crate::storage::key::*;
use crate::storage::file::{LayerFile, LayerFileError, LayerFileWriter};
use crate::storage::index::{self, IndexLayer, IndexPart, TimelineMetadata};
use crate::remote::upload_queue::RemoteTimelineClient;
use crate::storage::gc::{held_key_runs, partitions_freeing_deltas, shadowing_image_lsn, GcCandidate};
use crate::storage::inmemory::InMemoryLayer;
use crate::storage::layer_map::LayerMap;
use crate::storage::partition::{partition, Partition};
use crate::storage::{LayerDesc, ValueReconstructState};
use crate::metrics;
use crate::storage::value::*;
use crate::walredo::{PostgresRedoManager, SlruKind};

/// A key partition that may need an image ([`Timeline::partitions_needing_images`]).
struct ImageCandidate {
    index: usize,
    range: Range<Key>,
    /// LSN of the partition's image coverage (none: some keys have no image).
    coverage: Option<Lsn>,
    /// What the deltas' values above the coverage must weigh for an image.
    weight_bytes: u64,
    /// The delta files overlapping the partition above its coverage.
    deltas: Vec<Arc<LayerFile>>,
}

impl ImageCandidate {
    /// Whether `threshold` of `pins` hold data in the partition, or (with
    /// `weigh`) their values above the coverage reach `weight_bytes`.
    /// Blocking (reads layer indexes).
    fn needs_image(&self, pins: &[crate::storage::file::LayerPin], threshold: usize, weigh: bool) -> Result<bool> {
        let mut with_data = 0;
        for p in pins {
            with_data += p.layer().has_key_in(&self.range)? as usize;
        }
        if with_data >= threshold {
            return Ok(true);
        }
        if !weigh {
            return Ok(false);
        }
        let above = self.coverage.unwrap_or(Lsn(0));
        let mut bytes = 0u64;
        for p in pins {
            bytes += p.layer().value_bytes_in(&self.range, above, self.weight_bytes.saturating_sub(bytes))?;
            if bytes >= self.weight_bytes {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// An all-zero page.
pub static ZERO_PAGE: Bytes = Bytes::from_static(&[0u8; BLCKSZ]);

/// Tuning of a timeline's storage.
#[derive(Clone, Debug)]
pub struct TimelineConf {
    /// Freeze the open in-memory layer when it holds this many bytes.
    pub checkpoint_distance: usize,
    /// ... or when it is this old.
    pub checkpoint_timeout: Duration,
    /// Create an image layer for a key partition once this many delta
    /// files with data in the partition lie above its newest image.
    pub image_creation_threshold: usize,
    /// ... or once the values of the delta files above its newest image
    /// (or, without one, all of them) weigh this percentage of the image
    /// (its pages): a table bulk-loaded in one or two flushes would
    /// otherwise be read by replaying its load record by record until GC
    /// asks for an image. 0: never.
    pub image_creation_delta_percent: usize,
    /// Keys per key partition (and so per image layer file), at most.
    pub image_layer_keys: usize,
    /// How long a read waits for its LSN to be ingested.
    pub wait_lsn_timeout: Duration,
    /// GC keeps at least this many bytes of WAL history below
    /// `last_record_lsn` readable.
    pub gc_horizon_bytes: u64,
    /// ... and at least this much time (point-in-time recovery window).
    pub pitr_interval: Duration,
    /// How often the background GC loop runs (zero: never).
    pub gc_period: Duration,
    /// Merge L0 delta files into L1 files once there are this many.
    pub compaction_threshold: usize,
    /// Size an L1 file is cut at (at the next key boundary).
    pub compaction_target_size_bytes: u64,
    /// How often the tenant's background loop checks for L0 files to
    /// compact (zero: only after flushes).
    pub compaction_period: Duration,
}

/// A timeline's settings as its tenant has them now: the tenant publishes
/// a new value when its config changes ([`crate::tenant::config`]), and
/// [`Timeline::conf`] reads the current one at each decision.
pub type SharedConf = tokio::sync::watch::Receiver<Arc<TimelineConf>>;

impl Default for TimelineConf {
    fn default() -> Self {
        TimelineConf {
            checkpoint_distance: 64 << 20,
            checkpoint_timeout: Duration::from_secs(600),
            image_creation_threshold: 3,
            image_creation_delta_percent: 50,
            image_layer_keys: 2048,
            wait_lsn_timeout: Duration::from_secs(60),
            gc_horizon_bytes: 64 << 20,
            pitr_interval: Duration::from_secs(7 * 24 * 3600),
            gc_period: Duration::from_secs(3600),
            compaction_threshold: 10,
            compaction_target_size_bytes: 128 << 20,
            compaction_period: Duration::from_secs(20),
        }
    }
}

/// Why a read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum PageReconstructError {
    #[error("key {key:?} not found at {lsn}")]
    MissingKey { key: Key, lsn: Lsn },
    #[error(transparent)]
    LayerFile(#[from] LayerFileError),
    #[error("WAL redo of {key:?} at {lsn}: {reason}")]
    WalRedo { key: Key, lsn: Lsn, reason: String },
    #[error("timed out after {timeout:?} waiting for LSN {lsn}; last record LSN is {last}")]
    WaitLsnTimeout { lsn: Lsn, last: Lsn, timeout: Duration },
    #[error("LSN {lsn} is below the branch point {ancestor_lsn} of timeline {timeline_id}")]
    BelowBranchPoint { lsn: Lsn, ancestor_lsn: Lsn, timeline_id: TimelineId },
    #[error("LSN {lsn} is below the GC cutoff {cutoff} of timeline {timeline_id}")]
    BelowGcCutoff { lsn: Lsn, cutoff: Lsn, timeline_id: TimelineId },
    /// `FFFFFFFF/FFFFFFFF`: no WAL can ever reach it (and reads look at `lsn + 1`).
    #[error("LSN {lsn} is past the end of the LSN space")]
    LsnOutOfRange { lsn: Lsn },
    #[error("relation {rel} fork {forknum} does not exist at {lsn}")]
    RelationNotFound { rel: RelFileNode, forknum: u8, lsn: Lsn },
    #[error("block {blkno} is beyond the end of relation {rel} fork {forknum} ({nblocks} blocks) at {lsn}")]
    BlockBeyondEnd { rel: RelFileNode, forknum: u8, blkno: u32, nblocks: u32, lsn: Lsn },
    #[error("SLRU segment {segno:04X} of {kind:?} does not exist at {lsn}")]
    SlruSegmentNotFound { kind: SlruKind, segno: u32, lsn: Lsn },
    #[error("corrupt value of {key:?}: {reason}")]
    Corrupt { key: Key, reason: String },
    /// A layer the read needs is only in remote storage and could not be
    /// downloaded (after retries).
    #[error("layer {layer} of timeline {timeline_id} could not be downloaded from remote storage: {reason}")]
    LayerDownload { layer: String, timeline_id: TimelineId, reason: String },
    #[error("timeline is shutting down")]
    Cancelled,
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = PageReconstructError> = std::result::Result<T, E>;

fn other(e: impl std::fmt::Display) -> PageReconstructError {
    PageReconstructError::Other(e.to_string())
}

pub struct Timeline {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub path: PathBuf,
    conf: SharedConf,
    pub ancestor: Option<Arc<Timeline>>,
    pub ancestor_lsn: Lsn,
    pub pg_version: u32,
    pub system_id: u64,
    /// LSN of the import (root timelines) or the branch point.
    pub initdb_lsn: Lsn,
    pub wal_seg_size: u64,
    /// Generation of this attachment: new layer files carry it.
    pub generation: u32,
    /// Reads below this LSN are refused (GC may have removed their layers).
    gc_cutoff_lsn: AtomicU64,
    /// The LSN at `now - pitr_interval` as the last GC pass found it (0: none yet).
    pitr_cutoff_lsn: AtomicU64,
    /// Held by a GC pass and by branch creation from this timeline.
    pub(crate) gc_lock: tokio::sync::Mutex<()>,
    /// Child timelines and their branch points (GC retain LSNs).
    branch_points: Mutex<BTreeMap<TimelineId, Lsn>>,
    layers: RwLock<LayerMap>,
    last_record_lsn: SeqWait,
    disk_consistent_lsn: AtomicU64,
    /// Start LSN of the record ending at `last_record_lsn`; 0 when unknown
    /// (after a restart, until the next record is ingested).
    prev_record_lsn: AtomicU64,
    pub(crate) write_lock: tokio::sync::Mutex<()>,
    flush_lock: tokio::sync::Mutex<()>,
    /// Held by the after-flush pass (compaction, image creation); see
    /// `Timeline::after_flush`.
    after_flush_lock: tokio::sync::Mutex<()>,
    /// An after-flush pass is wanted (set by each flush, taken by the pass).
    after_flush_requested: AtomicBool,
    /// Serialises index writes with the layer-map changes they announce.
    index_lock: tokio::sync::Mutex<()>,
    /// Relation sizes kept exact by ingest (see submodule `relcache`).
    rel_sizes: relcache::RelSizeCache,
    pub(crate) walredo: Arc<PostgresRedoManager>,
    /// The upload queue, when the pageserver has remote storage.
    remote: OnceLock<Arc<RemoteTimelineClient>>,
    /// Downloads of remote layers in flight, and residency counters.
    ondemand: Arc<ondemand::OnDemand>,
    /// Signalled whenever a flush removed a frozen layer (backpressure).
    flushed: tokio::sync::Notify,
    /// Most frozen layers seen at once (for tests of the backpressure).
    frozen_high_water: AtomicUsize,
    /// Test hook: flushes wait while set ([`Timeline::pause_flushes_for_tests`]).
    flush_paused: tokio::sync::watch::Sender<bool>,
    flush_paused_flag: AtomicBool,
}

/// Keys of an image layer whose pages image creation reads and holds at
/// once (2 MiB of pages).
const IMAGE_CHUNK_KEYS: usize = 256;

/// Ingest waits while this many frozen in-memory layers are not flushed
/// yet ([`Timeline::wait_for_flush_backlog`]), so at most this many exist:
/// memory stays at about `(MAX_FROZEN_LAYERS + 1) * checkpoint_distance`.
pub const MAX_FROZEN_LAYERS: usize = 2;

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("tenant_id", &self.tenant_id)
            .field("timeline_id", &self.timeline_id)
            .field("ancestor_lsn", &self.ancestor_lsn)
            .field("last_record_lsn", &self.last_record_lsn())
            .finish_non_exhaustive()
    }
}

impl Timeline {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tenant_id: TenantId,
        timeline_id: TimelineId,
        path: PathBuf,
        conf: SharedConf,
        ancestor: Option<Arc<Timeline>>,
        index: &IndexPart,
        layers: LayerMap,
        walredo: Arc<PostgresRedoManager>,
    ) -> Timeline {
        let md = &index.metadata;
        Timeline {
            tenant_id,
            timeline_id,
            path,
            conf,
            ancestor,
            ancestor_lsn: md.ancestor_lsn,
            pg_version: md.pg_version,
            system_id: md.system_id,
            initdb_lsn: md.initdb_lsn,
            wal_seg_size: md.wal_seg_size,
            generation: index.generation,
            gc_cutoff_lsn: AtomicU64::new(index.gc_cutoff_lsn.0),
            pitr_cutoff_lsn: AtomicU64::new(0),
            gc_lock: tokio::sync::Mutex::new(()),
            branch_points: Mutex::new(BTreeMap::new()),
            layers: RwLock::new(layers),
            last_record_lsn: SeqWait::new(md.disk_consistent_lsn),
            disk_consistent_lsn: AtomicU64::new(md.disk_consistent_lsn.0),
            prev_record_lsn: AtomicU64::new(0),
            write_lock: tokio::sync::Mutex::new(()),
            flush_lock: tokio::sync::Mutex::new(()),
            after_flush_lock: tokio::sync::Mutex::new(()),
            after_flush_requested: AtomicBool::new(false),
            index_lock: tokio::sync::Mutex::new(()),
            rel_sizes: relcache::RelSizeCache::new(md.disk_consistent_lsn, relcache::capacity()),
            flushed: tokio::sync::Notify::new(),
            frozen_high_water: AtomicUsize::new(0),
            flush_paused: tokio::sync::watch::Sender::new(false),
            flush_paused_flag: AtomicBool::new(false),
            walredo,
            remote: OnceLock::new(),
            ondemand: Arc::default(),
        }
    }

    pub fn metadata(&self) -> TimelineMetadata {
        TimelineMetadata {
            disk_consistent_lsn: self.disk_consistent_lsn(),
            ancestor_timeline: self.ancestor.as_ref().map(|a| a.timeline_id),
            ancestor_lsn: self.ancestor_lsn,
            pg_version: self.pg_version,
            system_id: self.system_id,
            initdb_lsn: self.initdb_lsn,
            wal_seg_size: self.wal_seg_size,
        }
    }

    /// The tenant's settings now (they may change between two calls).
    pub fn conf(&self) -> Arc<TimelineConf> {
        Arc::clone(&self.conf.borrow())
    }

    pub fn last_record_lsn(&self) -> Lsn {
        self.last_record_lsn.load()
    }

    pub fn disk_consistent_lsn(&self) -> Lsn {
        Lsn(self.disk_consistent_lsn.load(Ordering::Acquire))
    }

    /// Stop waiters (shutdown / delete).
    pub fn shutdown(&self) {
        self.last_record_lsn.shutdown();
    }

    /// Wait until `lsn` is ingested (or the timeout passes).
    pub async fn wait_lsn(&self, lsn: Lsn) -> Result<()> {
        let timeout = self.conf().wait_lsn_timeout;
        self.last_record_lsn.wait_for_timeout(lsn, timeout).await.map_err(|e| match e {
            utils::seqwait::SeqWaitError::Timeout { .. } => {
                PageReconstructError::WaitLsnTimeout { lsn, last: self.last_record_lsn(), timeout }
            }
            _ => PageReconstructError::Cancelled,
        })
    }

    /// Reads below this LSN are refused (0 before the first GC).
    pub fn gc_cutoff_lsn(&self) -> Lsn {
        Lsn(self.gc_cutoff_lsn.load(Ordering::Acquire))
    }

    /// Refuse LSNs below a branch's start or below the GC cutoff.
    pub fn check_lsn_in_scope(&self, lsn: Lsn) -> Result<()> {
        if lsn == Lsn::MAX {
            return Err(PageReconstructError::LsnOutOfRange { lsn });
        }
        check_branch_lsn(self, lsn)?;
        if self.ancestor.is_some() && lsn < self.ancestor_lsn {
            return Err(PageReconstructError::BelowBranchPoint {
                lsn,
                ancestor_lsn: self.ancestor_lsn,
                timeline_id: self.timeline_id,
            });
        }
        Ok(())
    }

    fn read_layers(&self) -> std::sync::RwLockReadGuard<'_, LayerMap> {
        self.layers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_layers(&self) -> std::sync::RwLockWriteGuard<'_, LayerMap> {
        self.layers.write().unwrap_or_else(|e| e.into_inner())
    }

    /// (number of delta files, image files, in-memory layers, bytes on disk).
    pub fn layer_stats(&self) -> (usize, usize, usize, u64) {
        let map = self.read_layers();
        let images = map.historic().filter(|l| l.desc.is_image).count();
        let bytes = map.historic().map(|l| l.size_bytes).sum();
        (map.historic_len() - images, images, map.frozen.len() + map.open.is_some() as usize, bytes)
    }

    /// The layer files (resident or remote-only).
    pub fn historic_layers(&self) -> Vec<Arc<LayerFile>> {
        self.read_layers().historic().cloned().collect()
    }

    /// Paths of the layer files (for tests and the HTTP API).
    pub fn layer_files(&self) -> Vec<(LayerDesc, PathBuf)> {
        self.read_layers().historic().map(|l| (l.desc.clone(), l.path.clone())).collect()
    }

    // ---------------------------------------------------------------------
    // Reads: the layer walk and WAL redo.

    /// The value of `key` at `lsn` (no waiting, no scope check): walk the
    /// layers newest first collecting records until an image or an
    /// initialising record, following the ancestor below the branch point,
    /// then run WAL redo if records were found (a vectored read of one key,
    /// see submodule `vectored`).
    pub async fn get(&self, key: Key, lsn: Lsn) -> Result<Bytes> {
        match self.get_vectored(&[key], lsn).await.pop() {
            Some(Ok(Some(v))) => Ok(v),
            Some(Ok(None)) => Err(PageReconstructError::MissingKey { key, lsn }),
            Some(Err(e)) => Err(e),
            None => Err(other("vectored read of one key returned nothing")),
        }
    }

    /// WAL redo for several keys at `lsn` at once, spread over the redo
    /// processes ([`PostgresRedoManager::request_redo_many`]); results in
    /// order.
    async fn reconstruct_many(&self, reqs: Vec<(Key, ValueReconstructState)>, lsn: Lsn) -> Vec<Result<Bytes>> {
        let mut results: Vec<Option<Result<Bytes>>> = Vec::with_capacity(reqs.len());
        let (mut redo, mut redo_keys) = (Vec::new(), Vec::new());
        for (key, st) in reqs {
            let ValueReconstructState { mut records, img } = st;
            let Some(redo_key) = key.to_redo_key() else {
                results.push(Some(Err(PageReconstructError::Corrupt { key, reason: "WAL records under a non-page key".into() })));
                continue;
            };
            records.reverse();
            metrics::RECONSTRUCT_RECORDS.observe(records.len() as f64);
            results.push(None);
            redo_keys.push((results.len() - 1, key));
            redo.push(crate::walredo::RedoRequest { key: redo_key, lsn, base: img.map(|(_, b)| b), records });
        }
        let pages = self.walredo.request_redo_many(redo).await;
        for ((i, key), page) in redo_keys.into_iter().zip(pages) {
            results[i] = Some(page.map_err(|e| PageReconstructError::WalRedo { key, lsn, reason: e.to_string() }));
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(other("redo result missing")))).collect()
    }

    async fn get_opt(&self, key: Key, lsn: Lsn) -> Result<Option<Bytes>> {
        match self.get(key, lsn).await {
            Ok(v) => Ok(Some(v)),
            Err(PageReconstructError::MissingKey { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    // ---------------------------------------------------------------------
    // PostgreSQL-level reads (no waiting; see the `*_at_lsn` wrappers).

    pub async fn list_dbs(&self, lsn: Lsn) -> Result<BTreeSet<(u32, u32)>> {
        match self.get_opt(DBDIR_KEY, lsn).await? {
            Some(b) => decode_dbdir(&b).map_err(|reason| PageReconstructError::Corrupt { key: DBDIR_KEY, reason }),
            None => Ok(BTreeSet::new()),
        }
    }

    pub async fn list_rels(&self, spc: u32, db: u32, lsn: Lsn) -> Result<BTreeSet<(u32, u8)>> {
        let key = rel_dir_key(spc, db);
        match self.get_opt(key, lsn).await? {
            Some(b) => decode_reldir(&b).map_err(|reason| PageReconstructError::Corrupt { key, reason }),
            None => Ok(BTreeSet::new()),
        }
    }

    pub async fn rel_exists(&self, rel: RelFileNode, forknum: u8, lsn: Lsn) -> Result<bool> {
        Ok(self.rel_size_opt(rel, forknum, lsn).await?.is_some())
    }

    pub async fn rel_size(&self, rel: RelFileNode, forknum: u8, lsn: Lsn) -> Result<u32> {
        self.rel_size_opt(rel, forknum, lsn).await?.ok_or(PageReconstructError::RelationNotFound { rel, forknum, lsn })
    }

    /// The fork's size at `lsn`, `None` if it does not exist: from the
    /// relation-size cache, else from the relation directory and the size
    /// key (and then remembered if the cache may keep it).
    async fn rel_size_opt(&self, rel: RelFileNode, forknum: u8, lsn: Lsn) -> Result<Option<u32>> {
        if let Some(size) = self.rel_sizes.get(rel, forknum, lsn) {
            return Ok(size);
        }
        let size = if self.list_rels(rel.spc_node, rel.db_node, lsn).await?.contains(&(rel.rel_node, forknum)) {
            let key = rel_size_key(rel, forknum);
            Some(match self.get_opt(key, lsn).await? {
                Some(b) => decode_u32(&b).map_err(|reason| PageReconstructError::Corrupt { key, reason })?,
                None => 0,
            })
        } else {
            None
        };
        self.rel_sizes.observed(rel, forknum, lsn, size);
        Ok(size)
    }

    pub async fn rel_page(&self, rel: RelFileNode, forknum: u8, blkno: u32, lsn: Lsn) -> Result<Bytes> {
        let nblocks = self.rel_size(rel, forknum, lsn).await?;
        if blkno >= nblocks {
            return Err(PageReconstructError::BlockBeyondEnd { rel, forknum, blkno, nblocks, lsn });
        }
        // A block inside the relation that no WAL ever wrote is zeroes
        // (relation extension writes zero pages without WAL).
        Ok(self.get_opt(rel_block_key(rel, forknum, blkno), lsn).await?.unwrap_or_else(|| ZERO_PAGE.clone()))
    }

    pub async fn db_size(&self, spc: u32, db: u32, lsn: Lsn) -> Result<u64> {
        let mut total = 0u64;
        for (rel_node, fork) in self.list_rels(spc, db, lsn).await? {
            let rel = RelFileNode { spc_node: spc, db_node: db, rel_node };
            total += self.rel_size(rel, fork, lsn).await? as u64 * BLCKSZ as u64;
        }
        Ok(total)
    }

    pub async fn list_slru_segments(&self, kind: SlruKind, lsn: Lsn) -> Result<BTreeSet<u32>> {
        let key = slru_dir_key(kind);
        match self.get_opt(key, lsn).await? {
            Some(b) => decode_u32_set(&b).map_err(|reason| PageReconstructError::Corrupt { key, reason }),
            None => Ok(BTreeSet::new()),
        }
    }

    pub async fn slru_segment_size(&self, kind: SlruKind, segno: u32, lsn: Lsn) -> Result<u32> {
        let key = slru_segment_size_key(kind, segno);
        match self.get_opt(key, lsn).await? {
            Some(b) => decode_u32(&b).map_err(|reason| PageReconstructError::Corrupt { key, reason }),
            None => Ok(0),
        }
    }

    pub async fn slru_page(&self, kind: SlruKind, segno: u32, blkno: u32, lsn: Lsn) -> Result<Bytes> {
        self.get(slru_block_key(kind, segno, blkno), lsn).await
    }

    pub async fn list_twophase(&self, lsn: Lsn) -> Result<BTreeSet<u32>> {
        match self.get_opt(TWOPHASEDIR_KEY, lsn).await? {
            Some(b) => decode_u32_set(&b)
                .map_err(|reason| PageReconstructError::Corrupt { key: TWOPHASEDIR_KEY, reason }),
            None => Ok(BTreeSet::new()),
        }
    }

    pub async fn relmap_file(&self, spc: u32, db: u32, lsn: Lsn) -> Result<Option<Bytes>> {
        self.get_opt(relmap_file_key(spc, db), lsn).await
    }

    pub async fn control_file(&self, lsn: Lsn) -> Result<Bytes> {
        self.get(CONTROLFILE_KEY, lsn).await
    }

    pub async fn checkpoint(&self, lsn: Lsn) -> Result<Bytes> {
        self.get(CHECKPOINT_KEY, lsn).await
    }

    /// Logical size: bytes of all relations of all databases at `lsn`.
    pub async fn logical_size(&self, lsn: Lsn) -> Result<u64> {
        let mut total = 0;
        for (spc, db) in self.list_dbs(lsn).await? {
            total += self.db_size(spc, db, lsn).await?;
        }
        Ok(total)
    }

    // Request-level wrappers: wait for the LSN and check the branch scope.

    async fn prepare_read(&self, lsn: Lsn) -> Result<()> {
        self.check_lsn_in_scope(lsn)?;
        self.wait_lsn(lsn).await
    }

    /// GetPage@LSN.
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id, %rel, forknum, blkno, %lsn))]
    pub async fn get_rel_page_at_lsn(&self, rel: RelFileNode, forknum: u8, blkno: u32, lsn: Lsn) -> Result<Bytes> {
        self.prepare_read(lsn).await?;
        let started = std::time::Instant::now();
        let page = self.rel_page(rel, forknum, blkno, lsn).await;
        metrics::GETPAGE_TIME.observe(started.elapsed().as_secs_f64());
        page
    }

    pub async fn get_rel_size_at_lsn(&self, rel: RelFileNode, forknum: u8, lsn: Lsn) -> Result<u32> {
        self.prepare_read(lsn).await?;
        self.rel_size(rel, forknum, lsn).await
    }

    pub async fn get_rel_exists_at_lsn(&self, rel: RelFileNode, forknum: u8, lsn: Lsn) -> Result<bool> {
        self.prepare_read(lsn).await?;
        self.rel_exists(rel, forknum, lsn).await
    }

    pub async fn get_db_size_at_lsn(&self, spc: u32, db: u32, lsn: Lsn) -> Result<u64> {
        self.prepare_read(lsn).await?;
        self.db_size(spc, db, lsn).await
    }

    pub async fn get_slru_page_at_lsn(&self, kind: SlruKind, segno: u32, blkno: u32, lsn: Lsn) -> Result<Bytes> {
        self.prepare_read(lsn).await?;
        self.slru_page(kind, segno, blkno, lsn).await
    }

    // ---------------------------------------------------------------------
    // Writes.

    /// Add the values of one record (or one import step) at their LSNs.
    /// Callers hold `write_lock`.
    pub(crate) fn put_batch(&self, items: Vec<(Key, Lsn, Value)>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let open = {
            let mut map = self.write_layers();
            match &map.open {
                Some(open) => Arc::clone(open),
                None => {
                    let start = map.next_open_start(self.disk_consistent_lsn() + 1);
                    let open = Arc::new(InMemoryLayer::new(start));
                    map.open = Some(Arc::clone(&open));
                    open
                }
            }
        };
        if !open.put_batch(items) {
            return Err(other(format!("write below the open layer start {} or into a frozen layer", open.start_lsn)));
        }
        Ok(())
    }

    /// Start of the last ingested record, if known (for the `xl_prev` of a
    /// basebackup's checkpoint record).
    pub fn prev_record_lsn(&self) -> Option<Lsn> {
        match self.prev_record_lsn.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            lsn => Some(Lsn(lsn)),
        }
    }

    pub(crate) fn set_prev_record_lsn(&self, lsn: Lsn) {
        self.prev_record_lsn.store(lsn.0, std::sync::atomic::Ordering::Release);
    }

    /// Make everything up to `lsn` visible to readers. Callers hold `write_lock`.
    pub(crate) fn finish_write(&self, lsn: Lsn) {
        self.last_record_lsn.advance(lsn);
    }

    /// The latest size of a relation fork as the relation-size cache knows
    /// it (for ingest, which reads at the last record LSN).
    pub(crate) fn cached_rel_size(&self, rel: RelFileNode, forknum: u8) -> Option<u32> {
        self.rel_sizes.latest(rel, forknum)
    }

    /// Ingest changed a fork's size at `lsn` (`None`: dropped); called
    /// before `last_record_lsn` reaches `lsn`. Callers hold `write_lock`.
    pub(crate) fn ingested_rel_size(&self, rel: RelFileNode, forknum: u8, lsn: Lsn, size: Option<u32>) {
        self.rel_sizes.ingested(rel, forknum, lsn, size);
    }

    /// Ingest read a fork's size at the last record LSN from storage.
    pub(crate) fn observed_rel_size(&self, rel: RelFileNode, forknum: u8, size: u32) {
        self.rel_sizes.observed(rel, forknum, self.last_record_lsn(), Some(size));
    }

    /// A change at `lsn` the relation-size cache cannot track per fork (a
    /// database dropped, an import): it forgets everything.
    pub(crate) fn invalidate_rel_sizes(&self, lsn: Lsn) {
        self.rel_sizes.invalidate(lsn);
    }

    /// Whether the open layer should be frozen (size or age threshold).
    pub fn should_freeze(&self) -> bool {
        let map = self.read_layers();
        map.open.as_ref().is_some_and(|open| {
            !open.is_empty()
                && (open.size_bytes() >= self.conf().checkpoint_distance || open.age() >= self.conf().checkpoint_timeout)
        })
    }

    /// Freeze the open layer at `last_record_lsn + 1`. Callers hold `write_lock`.
    pub(crate) fn freeze_locked(&self) {
        let end = self.last_record_lsn() + 1;
        let mut map = self.write_layers();
        if let Some(open) = map.open.take() {
            if open.is_empty() || end <= open.start_lsn {
                map.open = Some(open);
                return;
            }
            open.freeze(end);
            map.frozen.push(open);
            self.frozen_high_water.fetch_max(map.frozen.len(), Ordering::Relaxed);
        }
    }

    /// Whether ingest must wait for a flush before taking more WAL: at
    /// least [`MAX_FROZEN_LAYERS`] frozen layers are not flushed yet.
    pub fn flush_backlog_full(&self) -> bool {
        self.read_layers().frozen.len() >= MAX_FROZEN_LAYERS
    }

    /// Whether a flush holds the flush lock now.
    pub fn flush_in_progress(&self) -> bool {
        self.flush_lock.try_lock().is_err()
    }

    /// Wait (asynchronously) until fewer than [`MAX_FROZEN_LAYERS`] frozen
    /// layers wait for their flush. The time waited is added to
    /// `strata_pageserver_ingest_backpressure_seconds_total`, also when the
    /// wait is cancelled (dropping it is safe: it changes nothing).
    pub async fn wait_for_flush_backlog(&self) {
        struct Timer(Option<std::time::Instant>);
        impl Drop for Timer {
            fn drop(&mut self) {
                if let Some(t) = self.0 {
                    metrics::INGEST_BACKPRESSURE_SECONDS.inc_by(t.elapsed().as_secs_f64());
                }
            }
        }
        let mut timer = Timer(None);
        loop {
            let notified = self.flushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.flush_backlog_full() {
                return;
            }
            if timer.0.is_none() {
                timer.0 = Some(std::time::Instant::now());
                metrics::INGEST_BACKPRESSURE_WAITS.inc();
            }
            notified.await;
        }
    }

    /// The most frozen layers that existed at once so far.
    #[doc(hidden)]
    pub fn frozen_layers_high_water(&self) -> usize {
        self.frozen_high_water.load(Ordering::Relaxed)
    }

    /// Test hook: while paused, flushes wait (holding the flush lock)
    /// before writing anything.
    #[doc(hidden)]
    pub fn pause_flushes_for_tests(&self, paused: bool) {
        self.flush_paused_flag.store(paused, Ordering::Release);
        self.flush_paused.send_replace(paused);
    }

    /// Freeze the open layer and flush every frozen layer to disk.
    pub async fn freeze_and_flush(&self) -> Result<()> {
        {
            let _w = self.write_lock.lock().await;
            self.freeze_locked();
        }
        self.flush_frozen_layers().await
    }

    /// Write the frozen layers to delta files, oldest first, advancing
    /// `disk_consistent_lsn` after each; then (without the flush lock, so
    /// that later flushes and ingest go on meanwhile) an after-flush pass:
    /// L0 compaction and image layers for the key partitions whose delta
    /// chains have grown past the threshold. Returns once every flush made
    /// before it returns (its own, or one another task made) is covered by
    /// a finished pass.
    pub async fn flush_frozen_layers(&self) -> Result<()> {
        self.flush_frozen_only().await?;
        self.after_flush(true).await
    }

    /// [`Timeline::flush_frozen_layers`] for the walreceiver's flush tasks:
    /// the after-flush pass is requested, not waited for — if one is
    /// running, it runs once more after it ends, covering this flush too.
    pub(crate) async fn flush_frozen_layers_in_background(&self) -> Result<()> {
        if self.flush_frozen_only().await? {
            self.after_flush(false).await?;
        }
        Ok(())
    }

    /// The flush itself, under `flush_lock`; whether anything was flushed.
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id))]
    async fn flush_frozen_only(&self) -> Result<bool> {
        let _f = self.flush_lock.lock().await;
        if self.flush_paused_flag.load(Ordering::Acquire) {
            let mut paused = self.flush_paused.subscribe();
            let _ = paused.wait_for(|p| !*p).await;
        }
        let mut flushed = false;
        loop {
            let Some(frozen) = self.read_layers().frozen.first().cloned() else { break };
            let Some(end) = frozen.end_lsn() else { break };
            let started = std::time::Instant::now();
            let file = match frozen.key_bounds() {
                Some(_) => {
                    // An L0 file: the whole key space (see layers::compaction).
                    let desc = LayerDesc {
                        key_range: Key::MIN..Key::MAX,
                        lsn_range: frozen.start_lsn..end,
                        is_image: false,
                        generation: self.generation,
                    };
                    let (dir, layer) = (self.path.clone(), Arc::clone(&frozen));
                    let what = format!("writing delta layer {} in {}", desc.file_name(), self.path.display());
                    let file = tokio::task::spawn_blocking(move || {
                        let mut w = LayerFileWriter::new(&dir, desc)?;
                        layer.for_each(|k, l, v| w.put(k, l, v))?;
                        w.finish()
                    })
                    .await
                    .map_err(other)?
                    .map_err(|e| other(format!("{what}: {e}")))?;
                    Some(Arc::new(file))
                }
                None => None,
            };
            self.commit_layers(file.iter().cloned().collect(), Some((&frozen, Lsn(end.0 - 1)))).await?;
            metrics::LAYER_FLUSH_TIME.observe(started.elapsed().as_secs_f64());
            if let Some(file) = file {
                info!(layer = %file.desc, bytes = file.size_bytes, "flushed in-memory layer");
            }
            flushed = true;
        }
        if flushed {
            // Under the flush lock: a flush that finds nothing left to do
            // after this one still sees the request (and waits for it).
            self.after_flush_requested.store(true, Ordering::Release);
        }
        Ok(flushed)
    }

    /// Make new layer files part of the timeline (and, for a flush, drop
    /// the frozen layer and advance `disk_consistent_lsn` to the given LSN):
    /// the index naming them is made durable first, then the map changes.
    async fn commit_layers(
        &self,
        files: Vec<Arc<LayerFile>>,
        flushed: Option<(&Arc<InMemoryLayer>, Lsn)>,
    ) -> Result<()> {
        let frozen = flushed.map(|(frozen, _)| frozen);
        self.commit_layers_at(files, frozen, flushed.map_or(Lsn(0), |(_, lsn)| lsn)).await
    }

    /// Make the image layer files of an import (at `lsn`, the timeline's
    /// first state) part of the timeline: last record and disk-consistent
    /// LSN become `lsn`. Writes the timeline's first index.
    pub(crate) async fn commit_import(&self, files: Vec<Arc<LayerFile>>, lsn: Lsn, prev_record_lsn: Lsn) -> Result<()> {
        {
            let _w = self.write_lock.lock().await;
            self.invalidate_rel_sizes(lsn);
            self.finish_write(lsn);
            self.set_prev_record_lsn(prev_record_lsn);
        }
        self.commit_layers_at(files, None, lsn).await
    }

    async fn commit_layers_at(
        &self,
        files: Vec<Arc<LayerFile>>,
        flushed: Option<&Arc<InMemoryLayer>>,
        new_disk_consistent_lsn: Lsn,
    ) -> Result<()> {
        let _i = self.index_lock.lock().await;
        let dcl = new_disk_consistent_lsn.max(self.disk_consistent_lsn());
        let index = self.index_with(&files, dcl);
        self.save_index(index, &files, &[]).await?;
        {
            let mut map = self.write_layers();
            for file in files {
                map.insert(file);
            }
            if let Some(frozen) = flushed {
                map.frozen.retain(|f| !Arc::ptr_eq(f, frozen));
            }
        }
        if flushed.is_some() {
            self.flushed.notify_waiters();
        }
        self.disk_consistent_lsn.fetch_max(dcl.0, Ordering::AcqRel);
        self.update_physical_size_metric();
        Ok(())
    }

    /// Make `index` durable locally, then queue the upload of the layer
    /// files it adds (`added`), of the index itself, and the remote deletion
    /// of the layers it drops (`removed`). Callers hold `index_lock`.
    pub(super) async fn save_index(
        &self,
        index: IndexPart,
        added: &[Arc<LayerFile>],
        removed: &[Arc<LayerFile>],
    ) -> Result<()> {
        let (dir, saved) = (self.path.clone(), index.clone());
        tokio::task::spawn_blocking(move || index::save(&dir, &saved))
            .await
            .map_err(other)?
            .map_err(|e| other(format!("writing {}: {e}", self.path.join(index::INDEX_FILE).display())))?;
        if let Some(remote) = self.remote.get() {
            let added: Vec<IndexLayer> = added.iter().map(|l| index_entry(l)).collect();
            remote.schedule_index_with_layers(&added, &index);
            remote.schedule_deletions(removed.iter().map(|l| index_entry(l).name).collect());
        }
        Ok(())
    }

    /// Attach the upload queue (once, right after the timeline is loaded).
    pub(crate) fn set_remote(&self, client: Arc<RemoteTimelineClient>) {
        let _ = self.remote.set(client);
    }

    /// The upload queue, if the pageserver has remote storage.
    pub fn remote(&self) -> Option<&Arc<RemoteTimelineClient>> {
        self.remote.get()
    }

    /// What safekeepers may remove WAL below: the disk-consistent LSN of
    /// the last index uploaded under a current generation (0 without remote
    /// storage: then nothing is durable beyond this pageserver's disk).
    pub fn remote_consistent_lsn(&self) -> Lsn {
        self.remote.get().map_or(Lsn(0), |r| r.remote_consistent_lsn())
    }

    /// The index of the current layers plus `new` (replacing layers with
    /// the same ranges), at `disk_consistent_lsn`.
    fn index_with(&self, new: &[Arc<LayerFile>], disk_consistent_lsn: Lsn) -> IndexPart {
        let same = |a: &LayerDesc, b: &LayerDesc| {
            a.key_range == b.key_range && a.lsn_range == b.lsn_range && a.is_image == b.is_image
        };
        let map = self.read_layers();
        let current = map.historic().filter(|l| !new.iter().any(|n| same(&n.desc, &l.desc)));
        let layers = current.chain(new).map(|l| index_entry(l)).collect();
        let metadata = TimelineMetadata { disk_consistent_lsn, ..self.metadata() };
        IndexPart { gc_cutoff_lsn: self.gc_cutoff_lsn(), ..IndexPart::new(self.generation, metadata, layers) }
    }

    /// Every key that exists at `lsn`, sorted: directories, sizes, blocks.
    pub async fn collect_keyspace(&self, lsn: Lsn) -> Result<Vec<Key>> {
        let mut keys = vec![DBDIR_KEY];
        for (spc, db) in self.list_dbs(lsn).await? {
            if self.relmap_file(spc, db, lsn).await?.is_some() {
                keys.push(relmap_file_key(spc, db));
            }
            keys.push(rel_dir_key(spc, db));
            for (rel_node, fork) in self.list_rels(spc, db, lsn).await? {
                let rel = RelFileNode { spc_node: spc, db_node: db, rel_node };
                let n = self.rel_size(rel, fork, lsn).await?;
                keys.push(rel_size_key(rel, fork));
                keys.extend((0..n).map(|b| rel_block_key(rel, fork, b)));
            }
        }
        for kind in ALL_SLRU_KINDS {
            keys.push(slru_dir_key(kind));
            for segno in self.list_slru_segments(kind, lsn).await? {
                let n = self.slru_segment_size(kind, segno, lsn).await?;
                keys.push(slru_segment_size_key(kind, segno));
                keys.extend((0..n).map(|b| slru_block_key(kind, segno, b)));
            }
        }
        keys.push(TWOPHASEDIR_KEY);
        keys.extend(self.list_twophase(lsn).await?.into_iter().map(twophase_file_key));
        keys.extend([CONTROLFILE_KEY, CHECKPOINT_KEY, COMMIT_TS_KEY]);
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Materialise every key at `lsn` (at or below disk_consistent_lsn) into
    /// image layer files, one per key partition (see [`partition`]).
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id, %lsn))]
    pub async fn create_image_layers(&self, lsn: Lsn) -> Result<usize> {
        let keys = self.collect_keyspace(lsn).await?;
        self.write_image_layers(partition(&keys, self.conf().image_layer_keys), lsn).await
    }

    /// Image layers at `lsn` for the partitions that need one: more than
    /// `image_creation_threshold - 1` delta files with data in the
    /// partition above the partition's newest image, or fewer whose values
    /// there weigh `image_creation_delta_percent` of its pages (see
    /// `partitions_needing_images`), or an image that lets
    /// GC remove a delta below the cutoff
    /// ([`crate::storage::gc::partitions_freeing_deltas`]). A partition
    /// nothing was written to gets no new image.
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id, %lsn))]
    pub async fn create_image_layers_where_needed(&self, lsn: Lsn) -> Result<usize> {
        let keys = self.collect_keyspace(lsn).await?;
        let parts = partition(&keys, self.conf().image_layer_keys);
        let mut needed = self.partitions_needing_images(&parts, lsn).await?;
        needed.extend(self.partitions_freeing_gc(&parts, lsn).await?);
        needed.sort_unstable();
        needed.dedup();
        let mut parts: Vec<Option<Partition>> = parts.into_iter().map(Some).collect();
        self.write_image_layers(needed.into_iter().filter_map(|i| parts[i].take()).collect(), lsn).await
    }

    /// The partitions (indexes) that need an image at `lsn`: at least
    /// `image_creation_threshold` delta files holding data in them above
    /// their image coverage, or fewer whose values there weigh
    /// `image_creation_delta_percent` of the partition's pages (a table
    /// loaded in one or two flushes). Remote deltas are downloaded for the
    /// count only (as a read of the partition would); the weighing reads
    /// the indexes of resident deltas and never downloads.
    async fn partitions_needing_images(&self, parts: &[Partition], lsn: Lsn) -> Result<Vec<usize>> {
        let conf = self.conf();
        let threshold = conf.image_creation_threshold.max(1);
        let percent = conf.image_creation_delta_percent as u64;
        let candidates: Vec<ImageCandidate> = {
            let map = self.read_layers();
            let candidate = |(i, p): (usize, &Partition)| {
                let coverage = map.image_coverage(p.key_range.clone(), lsn);
                let layers = map.overlapping(p.key_range.clone(), lsn + 1).into_iter();
                let deltas: Vec<_> = layers.filter(|l| !l.desc.is_image && coverage.is_none_or(|c| l.desc.lsn_range.end > c + 1)).collect();
                let weigh = percent > 0 && !deltas.is_empty();
                let weight_bytes = (p.keys.len() as u64 * BLCKSZ as u64).saturating_mul(percent) / 100;
                (deltas.len() >= threshold || weigh).then(|| ImageCandidate { index: i, range: p.key_range.clone(), coverage, weight_bytes, deltas })
            };
            parts.iter().enumerate().filter_map(candidate).collect()
        };
        let mut pinned = Vec::with_capacity(candidates.len());
        for c in candidates {
            let pins = match c.deltas.len() >= threshold {
                true => self.ensure_all_resident(&c.deltas).await?,
                false => c.deltas.iter().map(|l| l.pin_untouched()).filter(|p| p.is_resident()).collect(),
            };
            pinned.push((c, pins));
        }
        tokio::task::spawn_blocking(move || {
            let mut needed = Vec::new();
            for (c, pins) in pinned {
                if c.needs_image(&pins, threshold, percent > 0)? {
                    needed.push(c.index);
                }
            }
            Ok(needed)
        })
        .await
        .map_err(other)?
    }

    /// The partitions (indexes) whose images at `lsn` let GC remove a delta
    /// below the GC cutoff that no branch point needs (see
    /// [`crate::storage::gc`]).
    async fn partitions_freeing_gc(&self, parts: &[Partition], lsn: Lsn) -> Result<Vec<usize>> {
        let cutoff = self.gc_cutoff_lsn().min(lsn);
        let retain = self.retain_lsns();
        let stale: Vec<Arc<LayerFile>> = self
            .read_layers()
            .historic()
            .filter(|l| !l.desc.is_image && shadowing_image_lsn(&l.desc) <= cutoff)
            .filter(|l| retain.iter().all(|r| *r < l.desc.lsn_range.start))
            .cloned()
            .collect();
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let stale = tokio::task::spawn_blocking(move || {
            stale
                .into_iter()
                .map(|layer| held_key_runs(&layer).map(|key_runs| GcCandidate { layer, key_runs }))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(other)??;
        Ok(partitions_freeing_deltas(&self.read_layers(), parts, &stale, lsn))
    }

    /// Write one image layer per partition (with keys) and commit them.
    async fn write_image_layers(&self, parts: Vec<Partition>, lsn: Lsn) -> Result<usize> {
        let started = std::time::Instant::now();
        let mut files = Vec::with_capacity(parts.len());
        for p in parts.into_iter().filter(|p| !p.keys.is_empty()) {
            files.push(self.write_image_layer(p, lsn).await?);
        }
        let created = files.len();
        if created > 0 {
            self.commit_layers(files, None).await?;
            info!(layers = created, elapsed_ms = started.elapsed().as_millis() as u64, "created image layers");
        }
        Ok(created)
    }

    /// The values of `keys` at `lsn` (missing relation blocks read as
    /// zeros), in one vectored read (one walk down the layers, redo
    /// pipelined over the redo processes).
    async fn image_values(&self, keys: &[Key], lsn: Lsn) -> Result<Vec<(Key, Bytes)>> {
        let mut values = Vec::with_capacity(keys.len());
        for (&key, value) in keys.iter().zip(self.get_vectored(keys, lsn).await) {
            match value? {
                Some(v) => values.push((key, v)),
                None if key.is_rel_block_key() => values.push((key, ZERO_PAGE.clone())),
                None => {}
            }
        }
        Ok(values)
    }

    /// Write the image layer of partition `p` at `lsn`, reading and writing
    /// [`IMAGE_CHUNK_KEYS`] keys at a time, so that the pages held at once
    /// do not grow with the partition. Dropped midway, the writer removes
    /// its temporary file.
    async fn write_image_layer(&self, p: Partition, lsn: Lsn) -> Result<Arc<LayerFile>> {
        let desc = LayerDesc { key_range: p.key_range, lsn_range: lsn..lsn + 1, is_image: true, generation: self.generation };
        let dir = self.path.clone();
        let image_err = |e: std::io::Error| other(format!("writing image layer: {e}"));
        let mut writer = tokio::task::spawn_blocking(move || LayerFileWriter::new(&dir, desc)).await.map_err(other)?.map_err(image_err)?;
        for keys in p.keys.chunks(IMAGE_CHUNK_KEYS) {
            let values = self.image_values(keys, lsn).await?;
            writer = tokio::task::spawn_blocking(move || {
                for (k, v) in values {
                    writer.put(k, lsn, &Value::Image(v))?;
                }
                Ok::<_, std::io::Error>(writer)
            })
            .await
            .map_err(other)?
            .map_err(image_err)?;
        }
        let file = tokio::task::spawn_blocking(move || writer.finish()).await.map_err(other)?.map_err(image_err)?;
        Ok(Arc::new(file))
    }

    /// The LSN range a new branch may start at: `[ancestor start, last_record_lsn]`.
    pub fn branchable_range(&self) -> Range<Lsn> {
        let start = if self.ancestor.is_some() { self.ancestor_lsn } else { self.initdb_lsn };
        start..self.last_record_lsn() + 1
    }
}

/// The index entry of a layer file, under its actual file name (which may
/// be a name from before generations).
fn index_entry(layer: &LayerFile) -> IndexLayer {
    IndexLayer::new(layer.file_name(), &layer.desc, layer.size_bytes)
}
