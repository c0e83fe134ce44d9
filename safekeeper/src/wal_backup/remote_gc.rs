//! Garbage collection of offloaded WAL.
//!
//! Offloaded WAL is needed by whoever may still read WAL below the local
//! disks' start: a pageserver resuming from its remote-consistent LSN (it
//! never needs WAL below it: everything below is in its layers in remote
//! storage), and a peer safekeeper recovering from its flush position. So
//! the chosen offloader, every `--remote-wal-gc-interval`, deletes the
//! objects of segments that end at or below
//!
//! ```text
//! horizon = min(remote_consistent_lsn, backup_lsn, every peer's last flush)
//! ```
//!
//! and that are older than `--remote-wal-retention` (default 7 days, the
//! pageserver's default PITR window: an operator can rebuild anything in
//! that window from WAL alone). A peer that stopped publishing long ago
//! still holds the horizon, exactly as it holds local WAL without offload.
//!
//! Invariants: nothing at or above the horizon is deleted, whatever its
//! age; an object whose name is not a segment (or a partial segment, see
//! [`super::partial`]) of this timeline is never touched.
//!
//! Cancellation: a pass may be dropped at any await; a deletion either
//! happened or not, and the next pass looks again.

use std::time::{Duration, Instant, SystemTime};

use remote_storage::{GenericRemoteStorage, RemotePath, RemoteObjectMeta};
use utils::lsn::Lsn;

use super::partial::partial_end_of;
use super::{timeline_prefix, WalBackupError};
use crate::metrics::METRICS;
use crate::timeline::Timeline;

/// When the next pass is due, and how old an object must be to go.
pub struct RemoteGc {
    interval: Duration,
    retention: Duration,
    last_pass: Option<Instant>,
}

impl RemoteGc {
    pub fn new(interval: Duration, retention: Duration) -> RemoteGc {
        RemoteGc { interval, retention, last_pass: None }
    }

    /// Run a pass if one is due; returns how many objects it deleted.
    pub async fn run_if_due(&mut self, tl: &Timeline, storage: &GenericRemoteStorage) -> Result<usize, WalBackupError> {
        if self.last_pass.is_some_and(|t| t.elapsed() < self.interval) {
            return Ok(0);
        }
        self.last_pass = Some(Instant::now());
        let horizon = remote_horizon(tl);
        let objects = storage.list_with_meta(Some(&timeline_prefix(tl.tenant_id, tl.timeline_id)), &tl.cancel).await?;
        let now = SystemTime::now();
        let doomed: Vec<RemotePath> = objects
            .into_iter()
            .filter(|(key, meta)| deletable(key, meta, horizon, tl.seg_size_bytes(), now, self.retention))
            .map(|(key, _)| key)
            .collect();
        if !doomed.is_empty() {
            storage.delete_many(&doomed, &tl.cancel).await?;
            METRICS.remote_wal_deleted_objects.inc_by(doomed.len() as u64);
            tracing::info!(deleted = doomed.len(), %horizon, "offloaded WAL below the horizon deleted");
        }
        tl.update_backup_status(|b| b.remote_gc_horizon = Some(horizon));
        Ok(doomed.len())
    }
}

/// Offloaded WAL below this is needed by nobody (see the module doc).
fn remote_horizon(tl: &Timeline) -> Lsn {
    let has_peers = tl.persistent().peers.iter().any(|p| *p != tl.safekeeper_id);
    let mut horizon = tl.remote_consistent_lsn().min(tl.backup_lsn());
    if has_peers {
        horizon = horizon.min(tl.peer_horizon());
    }
    horizon
}

/// Whether the object `key` is a segment (or partial segment) wholly below
/// `horizon` and older than `retention`.
fn deletable(key: &RemotePath, meta: &RemoteObjectMeta, horizon: Lsn, seg_size_bytes: u64, now: SystemTime, retention: Duration) -> bool {
    // A segment is named by its 24 hex digits; a partial one starts with them.
    let name = key.object_name();
    let segment_name = if partial_end_of(key).is_some() { name.get(..24) } else { Some(name) };
    let Some(start) = segment_name.and_then(|n| segment_start_of_name(n, seg_size_bytes)) else { return false };
    // A modification time after `now` (clock skew) counts as age zero.
    let old_enough = now.duration_since(meta.last_modified).unwrap_or(Duration::ZERO) >= retention;
    start.checked_add(seg_size_bytes).is_some_and(|end| end <= horizon) && old_enough
}

/// The start LSN of the segment a PostgreSQL WAL file name (`TTTTTTTTXXXXXXXXYYYYYYYY`) names.
pub fn segment_start_of_name(name: &str, seg_size_bytes: u64) -> Option<Lsn> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) || seg_size_bytes == 0 {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let segs_per_log = 0x1_0000_0000u64 / seg_size_bytes;
    if seg >= segs_per_log {
        return None;
    }
    log.checked_mul(segs_per_log)?.checked_add(seg)?.checked_mul(seg_size_bytes).map(Lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    fn meta(age_s: u64) -> RemoteObjectMeta {
        RemoteObjectMeta { size: SEG, last_modified: SystemTime::now() - Duration::from_secs(age_s), e_tag: None }
    }

    #[test]
    fn segment_names_parse_to_their_start() {
        let lsn = Lsn(0x2_3F00_0000);
        assert_eq!(segment_start_of_name(&lsn.segment_file_name(1, SEG), SEG), Some(lsn));
        assert_eq!(segment_start_of_name("000000010000000000000100", SEG), None, "segment number past one log file");
        assert_eq!(segment_start_of_name("00000001000000000000000G", SEG), None);
        assert_eq!(segment_start_of_name("0000000100000000", SEG), None);
    }

    #[test]
    fn only_old_segments_wholly_below_the_horizon_go() {
        let key = |n: &str| RemotePath::new(&format!("wal/t/l/{n}")).unwrap();
        let (now, day) = (SystemTime::now(), Duration::from_secs(86_400));
        let seg2 = "000000010000000000000002"; // [0x2000000, 0x3000000)
        assert!(deletable(&key(seg2), &meta(2 * 86_400), Lsn(0x3000000), SEG, now, day));
        assert!(!deletable(&key(seg2), &meta(2 * 86_400), Lsn(0x2FFFFFF), SEG, now, day), "horizon inside the segment");
        assert!(!deletable(&key(seg2), &meta(3_600), Lsn(0x3000000), SEG, now, day), "younger than the retention");
        assert!(deletable(&key(seg2), &meta(0), Lsn(0x3000000), SEG, now, Duration::ZERO));
        let partial = format!("{seg2}.0000000002000100.partial");
        assert!(deletable(&key(&partial), &meta(0), Lsn(0x3000000), SEG, now, Duration::ZERO));
        assert!(!deletable(&key(&format!("{seg2}.tmp")), &meta(9_999_999), Lsn(u64::MAX), SEG, now, Duration::ZERO), "not a segment");
        assert!(!deletable(&key("index.json"), &meta(9_999_999), Lsn(u64::MAX), SEG, now, Duration::ZERO));
    }
}
