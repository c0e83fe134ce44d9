//! WAL offload: whole WAL segments of every timeline copied to remote
//! storage by one safekeeper, and read back from there when a reader needs
//! WAL that local disks no longer hold.
//!
//! Owns: the remote layout of offloaded WAL, the choice of the offloading
//! safekeeper, the per-timeline offload task, and [`RemoteSegment`], a
//! segment downloaded for the walsender.
//!
//! # Remote layout
//!
//! ```text
//! wal/<tenant_id>/<timeline_id>/<segment file name>
//! e.g. wal/3f.../9c.../000000010000000000000003
//! ```
//!
//! Next to the pageserver's `tenants/...` in the same bucket or directory.
//! Each object is one whole segment of `wal_seg_size_bytes`, byte for byte
//! the segment file of `pg_wal` (PostgreSQL timeline 1, named as PostgreSQL
//! names it), so a stock `restore_command` can fetch it as it is. The first
//! segment of a timeline that starts mid-segment holds zeros before the
//! timeline start (that WAL belongs to the ancestor, or to the basebackup).
//!
//! # What is offloaded, and by whom
//!
//! A segment is offloaded once it is complete and committed: it ends at or
//! below both `flush_lsn` and `commit_lsn`. Committed WAL is never cut by a
//! later term, so every safekeeper holding it holds the same bytes.
//! Segments go in order; `backup_lsn` (in the control file, published to the
//! broker) is the end of the last one uploaded, and every whole segment from
//! the offload's first one up to it is in remote storage.
//!
//! Exactly one safekeeper per timeline uploads at a time: the lowest-id
//! safekeeper of the fresh broker view (this one included) that has remote
//! storage, is on this safekeeper's term, holds WAL up to the current
//! compute's start LSN (so it is not a lagging one whose WAL may be of an
//! older history) and is within one segment of the most advanced flush
//! position — see [`choose_offloader`]. When it dies it drops out of the
//! fresh view after the broker's staleness bound (10 s) and the next one
//! takes over; when it falls more than a segment behind, too. A safekeeper
//! that sees a peer on a newer term offloads nothing. Views may differ for a
//! moment, so two safekeepers may upload the same segment: the upload is a
//! conditional put (`put_if_absent`); the one that finds the object present
//! compares it with its own bytes, and only an identical object counts as
//! offloaded (a different one is an error, never papered over).
//!
//! Every safekeeper adopts the highest `backup_lsn` its peers publish
//! ([`crate::broker_sync`]), so all of them know what is offloaded and may
//! remove it locally (with remote storage, removal keeps WAL at or above
//! the smaller of `backup_lsn` and the pageservers' `remote_consistent_lsn`;
//! see [`Timeline::remove_old_wal`]).
//!
//! # Reading offloaded WAL
//!
//! The walsender serves a start position below the local WAL start, and any
//! local segment that is gone meanwhile, from remote storage: the segment is
//! downloaded to `<timeline dir>/remote_read/<segment>.<connection id>`
//! (atomically, size checked), read from there, and removed when the
//! connection moves to the next segment or ends. This serves pageservers
//! starting below local WAL, and peer recovery (a lagging safekeeper streams
//! from a peer's walsender, which reads the offloaded WAL for it).
//!
//! The last, incomplete segment of an idle timeline is offloaded too, as a
//! partial object ([`partial`]); offloaded WAL nobody needs any more is
//! deleted after a retention period ([`remote_gc`]). Both are done by the
//! chosen offloader.
//!
//! Invariants: `backup_lsn` only grows, and only after the segments below
//! it are durable in remote storage (the offloader also writes it to its
//! control file at once; a peer's value is written with the next persist);
//! nothing is uploaded that is not committed; at most
//! [`UPLOADS_IN_FLIGHT`] segments are held in memory for upload at once.
//!
//! Cancellation: the offload task ends when the timeline's token fires; an
//! upload it drops is harmless (the object is absent, or whole and right,
//! and `backup_lsn` did not move). A [`RemoteSegment`] removes its file when
//! dropped.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use broker::SafekeeperTimelineInfo;
use bytes::Bytes;
use postgres_ffi::wal_files::segment_path;
use remote_storage::{GenericRemoteStorage, RemotePath, RemoteStorageError};
use tokio::sync::Semaphore;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

pub mod partial;
pub mod remote_gc;

use crate::metrics::METRICS;
use crate::timeline::{Timeline, TimelineError};
use crate::wal_storage::PG_TLI;
use crate::SafekeeperConf;

/// Top-level prefix of offloaded WAL in remote storage.
pub const REMOTE_WAL_PREFIX: &str = "wal";
/// Directory of a timeline holding segments downloaded for readers.
pub const REMOTE_READ_DIR: &str = "remote_read";
/// Segments read into memory for upload at once, across all timelines.
pub const UPLOADS_IN_FLIGHT: usize = 4;
/// Look for work at least this often (also woken by commit_lsn and the
/// broker view).
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

static UPLOAD_SLOTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(UPLOADS_IN_FLIGHT));

#[derive(Debug, thiserror::Error)]
pub enum WalBackupError {
    #[error(transparent)]
    Remote(#[from] RemoteStorageError),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("local WAL segment {path}: {source}")]
    Local { path: PathBuf, source: std::io::Error },
    #[error("segment {key} in remote storage differs from this safekeeper's WAL at {lsn}: not counted as offloaded")]
    Mismatch { key: String, lsn: Lsn },
    #[error("blocking task failed: {0}")]
    Join(String),
}

/// `wal/<tenant>/<timeline>`: every offloaded segment of a timeline.
pub fn timeline_prefix(tenant_id: TenantId, timeline_id: TimelineId) -> RemotePath {
    let key = format!("{REMOTE_WAL_PREFIX}/{tenant_id}/{timeline_id}");
    RemotePath::new(&key).unwrap_or_else(|e| panic!("internal: bad remote key {key}: {e}"))
}

/// `wal/<tenant>/<timeline>/<segment file name>` of the segment holding `lsn`.
pub fn segment_key(tenant_id: TenantId, timeline_id: TimelineId, lsn: Lsn, seg_size_bytes: u64) -> RemotePath {
    let name = lsn.segment_file_name(PG_TLI, seg_size_bytes);
    timeline_prefix(tenant_id, timeline_id).join(&name).unwrap_or_else(|e| panic!("internal: bad remote key {name}: {e}"))
}

/// What the offload decision needs to know of this safekeeper.
#[derive(Clone, Copy, Debug)]
pub struct Own {
    pub id: u64,
    pub term: u64,
    pub flush_lsn: Lsn,
}

/// Who offloads: the lowest id among this safekeeper and the fresh `peers`
/// that have remote storage, are on our term, hold WAL up to the compute's
/// start LSN `compute_start` (not lagging: their WAL is the current
/// history) and are within one segment of the most advanced flush LSN
/// (soon to have the next segment, and not stuck). The chosen one uploads a
/// segment once it holds it whole and committed. None when a peer is on a
/// newer term (we are fenced) or nobody qualifies.
///
/// Flush positions in different views differ by in-flight WAL only, so the
/// choice is the same on every safekeeper except around a threshold, where
/// two may upload one segment (harmless, see the module doc).
pub fn choose_offloader(own: Own, peers: &[SafekeeperTimelineInfo], compute_start: Lsn, seg_size_bytes: u64) -> Option<u64> {
    if peers.iter().any(|p| p.term > own.term) {
        return None;
    }
    let others = peers.iter().filter(|p| p.backup_lsn.is_some() && p.safekeeper_id != own.id).map(|p| (p.safekeeper_id, p.term, p.flush_lsn));
    let all: Vec<(u64, u64, Lsn)> = std::iter::once((own.id, own.term, own.flush_lsn)).chain(others).filter(|&(_, term, _)| term == own.term).collect();
    let best = all.iter().map(|&(_, _, flush)| flush).max()?;
    all.iter()
        .filter(|&&(_, _, flush)| flush >= compute_start && flush.0 + seg_size_bytes >= best.0)
        .map(|&(id, _, _)| id)
        .min()
}

/// Offload the timeline's segments until it is cancelled; without remote
/// storage, return at once.
pub async fn run(tl: Arc<Timeline>, conf: Arc<SafekeeperConf>) {
    let Some(storage) = conf.remote_storage.clone() else { return };
    let (tenant, timeline) = (tl.tenant_id.to_string(), tl.timeline_id.to_string());
    let lag = METRICS.wal_backup_lag_bytes.with_label_values(&[&tenant, &timeline]);
    let mut commit = tl.subscribe_commit();
    let mut view = tl.subscribe_peer_view();
    let mut backoff = MIN_BACKOFF;
    let mut partial = partial::PartialOffload::new(conf.wal_partial_offload_after_idle);
    let mut gc = remote_gc::RemoteGc::new(conf.remote_wal_gc_interval, conf.remote_wal_retention);
    loop {
        let result = tokio::select! {
            r = offload_round(&tl, &storage, &mut partial, &mut gc) => r,
            _ = tl.cancel.cancelled() => break,
        };
        let wait = match result {
            Ok(_) => {
                backoff = MIN_BACKOFF;
                tl.set_backup_error(None);
                CHECK_INTERVAL
            }
            Err(e) => {
                METRICS.wal_backup_errors.inc();
                tracing::warn!("WAL offload: {e}");
                tl.set_backup_error(Some(e.to_string()));
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            }
        };
        lag.set(tl.flush_lsn().0.saturating_sub(tl.backup_lsn().0) as i64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = commit.changed(), if wait == CHECK_INTERVAL => {}
            _ = view.changed(), if wait == CHECK_INTERVAL => {}
            _ = tl.cancel.cancelled() => break,
        }
    }
    let _ = METRICS.wal_backup_lag_bytes.remove_label_values(&[&tenant, &timeline]);
}

/// The next segment to offload: its start, or None while it is not complete
/// and committed. Offload resumes at `backup_lsn`, or at the local WAL start
/// when WAL was removed before it was offloaded (offload configured late).
fn next_segment(tl: &Timeline) -> Option<Lsn> {
    let seg = tl.seg_size_bytes();
    let cursor = tl.backup_lsn().max(tl.start_lsn().segment_start(seg));
    let start = cursor.segment_start(seg);
    let end = start + seg;
    (end <= tl.commit_lsn() && end <= tl.flush_lsn()).then_some(start)
}

/// Who offloads now, by this safekeeper's view (also kept for the status).
fn current_offloader(tl: &Timeline) -> Option<u64> {
    let chosen = (|| {
        let compute = tl.persistent().compute?;
        let multi = tl.persistent().peers.iter().any(|p| *p != tl.safekeeper_id);
        // Not before the first broker view: a peer may be offloading.
        let peers = match tl.subscribe_peer_view().borrow().clone() {
            Some(v) => v,
            None if multi => return None,
            None => Vec::new(),
        };
        let own = Own { id: tl.safekeeper_id, term: tl.term(), flush_lsn: tl.flush_lsn() };
        if compute.term != own.term {
            return None;
        }
        choose_offloader(own, &peers, compute.start_lsn, tl.seg_size_bytes())
    })();
    tl.set_offloader(chosen);
    chosen
}

/// Whole segments, then, while this safekeeper is still the offloader, the
/// partial segment and the remote GC.
async fn offload_round(
    tl: &Timeline,
    storage: &GenericRemoteStorage,
    partial: &mut partial::PartialOffload,
    gc: &mut remote_gc::RemoteGc,
) -> Result<(), WalBackupError> {
    offload_ready_segments(tl, storage).await?;
    if current_offloader(tl) == Some(tl.safekeeper_id) {
        partial.run_once(tl, storage).await?;
        gc.run_if_due(tl, storage).await?;
    }
    Ok(())
}

/// Upload every segment that is ready while this safekeeper is the chosen
/// offloader; returns how many it uploaded.
async fn offload_ready_segments(tl: &Timeline, storage: &GenericRemoteStorage) -> Result<usize, WalBackupError> {
    let seg = tl.seg_size_bytes();
    let mut uploaded = 0;
    while current_offloader(tl) == Some(tl.safekeeper_id) {
        let Some(start) = next_segment(tl) else { break };
        if tl.backup_lsn() < start {
            tracing::warn!(backup_lsn = %tl.backup_lsn(), resume = %start, "WAL below the local start was removed before it was offloaded; offload resumes at the local start");
        }
        let term = tl.term();
        if !upload_segment(tl, storage, start, term).await? {
            break;
        }
        tl.advance_backup_lsn(start + seg, true).await?;
        uploaded += 1;
    }
    Ok(uploaded)
}

/// Upload the segment starting at `start`, read from local disk; an object
/// already there counts only if it holds the same bytes. False when the
/// term changed meanwhile (nothing uploaded; the next round decides again).
async fn upload_segment(tl: &Timeline, storage: &GenericRemoteStorage, start: Lsn, term: u64) -> Result<bool, WalBackupError> {
    let seg = tl.seg_size_bytes();
    let key = segment_key(tl.tenant_id, tl.timeline_id, start, seg);
    let _slot = UPLOAD_SLOTS.acquire().await.expect("semaphore never closed");
    let path = segment_path(tl.dir(), PG_TLI, start, seg);
    let data = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || read_segment(&path, seg).map(Bytes::from))
            .await
            .map_err(|e| WalBackupError::Join(e.to_string()))??
    };
    // A term change while reading could only have cut uncommitted WAL, but
    // a changed term is cheap to re-check: read again next round.
    if tl.term() != term {
        return Ok(false);
    }
    match storage.put_if_absent(data.clone(), &key, &tl.cancel).await {
        Ok(()) => {
            METRICS.wal_backup_segments.inc();
            METRICS.wal_backup_bytes.inc_by(data.len() as u64);
            tracing::info!(segment = %key, "WAL segment offloaded");
            Ok(true)
        }
        Err(RemoteStorageError::AlreadyExists { .. }) => {
            let existing = storage.download_bytes(&key, &tl.cancel).await?;
            if existing == data {
                tracing::info!(segment = %key, "WAL segment already offloaded (identical)");
                return Ok(true);
            }
            let differs = existing.iter().zip(data.iter()).position(|(a, b)| a != b).unwrap_or(existing.len().min(data.len()));
            let lsn = start + differs as u64;
            tracing::error!(segment = %key, %lsn, "offloaded WAL segment differs from local WAL");
            Err(WalBackupError::Mismatch { key: key.to_string(), lsn })
        }
        Err(e) => Err(e.into()),
    }
}

fn read_segment(path: &Path, seg_size_bytes: u64) -> Result<Vec<u8>, WalBackupError> {
    let local = |source| WalBackupError::Local { path: path.to_path_buf(), source };
    let data = std::fs::read(path).map_err(local)?;
    if data.len() as u64 != seg_size_bytes {
        let msg = format!("{} bytes, expected {seg_size_bytes}", data.len());
        return Err(local(std::io::Error::new(std::io::ErrorKind::InvalidData, msg)));
    }
    Ok(data)
}

/// Delete every offloaded segment of a timeline (it is being deleted).
pub async fn delete_timeline(storage: &GenericRemoteStorage, tenant_id: TenantId, timeline_id: TimelineId) -> Result<usize, RemoteStorageError> {
    let cancel = remote_storage::CancellationToken::new();
    let objects = storage.list(Some(&timeline_prefix(tenant_id, timeline_id)), &cancel).await?;
    let keys: Vec<RemotePath> = objects.into_iter().map(|(k, _)| k).collect();
    storage.delete_many(&keys, &cancel).await?;
    Ok(keys.len())
}

/// Whether the segment holding `lsn` is in remote storage.
pub async fn segment_exists(storage: &GenericRemoteStorage, tl: &Timeline, lsn: Lsn) -> Result<bool, RemoteStorageError> {
    let key = segment_key(tl.tenant_id, tl.timeline_id, lsn, tl.seg_size_bytes());
    match storage.head(&key, &tl.cancel).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Remove what readers left in the timeline's `remote_read` directory
/// (a crash). Blocking.
pub fn clean_remote_read_dir(timeline_dir: &Path) {
    let dir = timeline_dir.join(REMOTE_READ_DIR);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("remove {}: {e}", dir.display());
        }
    }
}

/// One offloaded segment downloaded for a reader; its file is removed on drop.
pub struct RemoteSegment {
    segno: u64,
    seg_size_bytes: u64,
    path: PathBuf,
    file: Arc<File>,
}

impl RemoteSegment {
    /// Download the segment holding `lsn` for connection `reader_id`.
    pub async fn fetch(storage: &GenericRemoteStorage, tl: &Timeline, lsn: Lsn, reader_id: u64) -> Result<RemoteSegment, WalBackupError> {
        let seg = tl.seg_size_bytes();
        let key = segment_key(tl.tenant_id, tl.timeline_id, lsn, seg);
        let dir = tl.dir().join(REMOTE_READ_DIR);
        let path = dir.join(format!("{}.{reader_id}", lsn.segment_file_name(PG_TLI, seg)));
        let local = |path: PathBuf| move |source| WalBackupError::Local { path, source };
        {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || std::fs::create_dir_all(&dir).map_err(local(dir.clone())))
                .await
                .map_err(|e| WalBackupError::Join(e.to_string()))??;
        }
        storage.download_to_file(&key, &path, Some(seg), &tl.cancel).await?;
        let file = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || File::open(&path).map_err(local(path.clone())))
                .await
                .map_err(|e| WalBackupError::Join(e.to_string()))??
        };
        METRICS.wal_backup_downloads.inc();
        tracing::info!(segment = %key, "serving offloaded WAL from remote storage");
        Ok(RemoteSegment { segno: lsn.segment_number(seg), seg_size_bytes: seg, path, file: Arc::new(file) })
    }

    /// Whether `lsn` is in this segment.
    pub fn holds(&self, lsn: Lsn) -> bool {
        lsn.segment_number(self.seg_size_bytes) == self.segno
    }

    /// Up to `max_len` bytes from `lsn` (which must be in this segment),
    /// stopping at the segment's end.
    pub async fn read(&self, lsn: Lsn, max_len: usize) -> Result<Vec<u8>, WalBackupError> {
        debug_assert!(self.holds(lsn));
        let offset = lsn.segment_offset(self.seg_size_bytes);
        let len = (max_len as u64).min(self.seg_size_bytes - offset) as usize;
        let (file, path) = (self.file.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map_err(|source| WalBackupError::Local { path, source })?;
            Ok(buf)
        })
        .await
        .map_err(|e| WalBackupError::Join(e.to_string()))?
    }
}

impl Drop for RemoteSegment {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("remove {}: {e}", path.display());
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64, term: u64, flush: u64, remote: bool) -> SafekeeperTimelineInfo {
        SafekeeperTimelineInfo {
            safekeeper_id: id,
            tenant_id: TenantId::generate(),
            timeline_id: TimelineId::generate(),
            term,
            flush_lsn: Lsn(flush),
            commit_lsn: Lsn(0),
            remote_consistent_lsn: Lsn(0),
            pg_addr: String::new(),
            http_addr: String::new(),
            backup_lsn: remote.then_some(Lsn(0)),
        }
    }

    #[test]
    fn the_lowest_qualified_id_offloads() {
        const SEG: u64 = 1000;
        let own = |id, flush| Own { id, term: 2, flush_lsn: Lsn(flush) };
        let peers = [info(1, 2, 4500, true), info(3, 2, 5000, true)];
        // Safekeeper 1 is less than a segment behind: it offloads, on every view.
        assert_eq!(choose_offloader(own(2, 5200), &peers, Lsn(100), SEG), Some(1));
        assert_eq!(choose_offloader(Own { id: 1, term: 2, flush_lsn: Lsn(4500) }, &[info(2, 2, 5200, true), info(3, 2, 5000, true)], Lsn(100), SEG), Some(1));
        // More than a segment behind (stuck, or recovering): the next one does.
        assert_eq!(choose_offloader(own(2, 5600), &peers, Lsn(100), SEG), Some(2));
        assert_eq!(choose_offloader(own(2, 3000), &peers, Lsn(100), SEG), Some(1));
        // Below the compute's start LSN (lagging behind a new term): not a candidate.
        assert_eq!(choose_offloader(own(2, 5200), &peers, Lsn(4800), SEG), Some(2));
        // Without remote storage, or on another term: not a candidate.
        let peers = [info(1, 2, 5000, false), info(3, 1, 5000, true)];
        assert_eq!(choose_offloader(own(2, 5000), &peers, Lsn(0), SEG), Some(2));
        // A peer on a newer term: we are fenced and offload nothing.
        let peers = [info(3, 3, 5000, true)];
        assert_eq!(choose_offloader(own(2, 5000), &peers, Lsn(0), SEG), None);
        // Alone and lagging: nobody.
        assert_eq!(choose_offloader(own(2, 300), &[], Lsn(400), SEG), None);
    }

    /// Two uploads of one segment (two safekeepers whose views differed for
    /// a moment): the second finds the same bytes and counts them; different
    /// bytes under the key are an error, and the object stays as it was.
    #[tokio::test]
    async fn a_second_upload_is_harmless_and_a_different_object_is_refused() {
        const SEG: u64 = 1 << 20;
        let (dir, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let storage = GenericRemoteStorage::new(&remote_storage::RemoteStorageConfig::parse_location(remote.path().to_str().unwrap()).unwrap()).unwrap();
        let req = crate::timeline::CreateTimelineRequest { timeline_id: TimelineId::generate(), start_lsn: Lsn(SEG), peers: vec![], quorum: None, wal_seg_size_bytes: SEG };
        let tl = Timeline::create(&dir.path().join("tl"), 1, TenantId::generate(), &req).unwrap();
        let path = segment_path(tl.dir(), PG_TLI, Lsn(SEG), SEG);
        let data: Vec<u8> = (0..SEG).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert!(upload_segment(&tl, &storage, Lsn(SEG), 0).await.unwrap());
        assert!(upload_segment(&tl, &storage, Lsn(SEG), 0).await.unwrap());
        let key = segment_key(tl.tenant_id, tl.timeline_id, Lsn(SEG), SEG);
        let cancel = remote_storage::CancellationToken::new();
        assert_eq!(storage.download_bytes(&key, &cancel).await.unwrap()[..], data[..]);
        let mut other = data.clone();
        other[4096] ^= 1;
        std::fs::write(&path, &other).unwrap();
        match upload_segment(&tl, &storage, Lsn(SEG), 0).await {
            Err(WalBackupError::Mismatch { lsn, .. }) => assert_eq!(lsn, Lsn(SEG + 4096)),
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert_eq!(storage.download_bytes(&key, &cancel).await.unwrap()[..], data[..]);
        // A short local file is never uploaded.
        std::fs::write(&path, &data[..1000]).unwrap();
        assert!(matches!(upload_segment(&tl, &storage, Lsn(SEG), 0).await, Err(WalBackupError::Local { .. })));
    }

    #[test]
    fn segment_keys() {
        let (t, tl) = (TenantId::generate(), TimelineId::generate());
        let key = segment_key(t, tl, Lsn(0x2_0300_0010), 16 << 20);
        assert_eq!(key.as_str(), format!("wal/{t}/{tl}/000000010000000200000003"));
        assert!(key.as_str().starts_with(timeline_prefix(t, tl).as_str()));
    }
}
