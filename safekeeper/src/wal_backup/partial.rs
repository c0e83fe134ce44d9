//! Offload of the last, incomplete segment of an idle timeline.
//!
//! Whole segments go to remote storage as soon as they are complete and
//! committed (the parent module). The WAL after the last whole segment
//! would otherwise live only on safekeeper disks — for ever, on a timeline
//! whose compute is suspended. So once the committed end of a timeline has
//! not moved for `--wal-partial-offload-after-idle`, the offloader uploads
//! its current segment as a partial object:
//!
//! ```text
//! wal/<tenant_id>/<timeline_id>/<segment file name>.<end LSN, 16 hex digits>.partial
//! e.g. wal/3f.../9c.../000000010000000000000003.000000000300A2C8.partial
//! ```
//!
//! The object is a full-size segment: the bytes of the local segment below
//! the end LSN (committed WAL, never cut by a later term, so the same on
//! every safekeeper holding it) and zeros after it, like the `.partial`
//! file `pg_receivewal` leaves; renamed to the segment name it is a
//! segment PostgreSQL can replay up to that end. The end LSN in the name
//! says how far it is valid without reading it.
//!
//! Invariants: a partial object holds only committed WAL; after a newer
//! partial of the timeline is uploaded, the older ones are deleted (the
//! first upload of a process lists the timeline to find those a previous
//! offloader left); once the segment is offloaded whole, its partial is
//! deleted. Readers of offloaded WAL never read partial objects.
//!
//! Cancellation: dropping [`PartialOffload::run_once`] at an await leaves
//! at worst one more partial object, which the next upload deletes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use postgres_ffi::wal_files::segment_path;
use remote_storage::{GenericRemoteStorage, RemotePath};
use utils::lsn::Lsn;

use super::{read_segment, timeline_prefix, WalBackupError};
use crate::metrics::METRICS;
use crate::timeline::Timeline;
use crate::wal_storage::PG_TLI;

/// Suffix of partial segment objects.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// `wal/<tenant>/<timeline>/<segment>.<end>.partial` for WAL ending at `end`.
pub fn partial_key(tl: &Timeline, end: Lsn) -> RemotePath {
    let name = format!("{}.{:016X}{PARTIAL_SUFFIX}", end.segment_file_name(PG_TLI, tl.seg_size_bytes()), end.0);
    timeline_prefix(tl.tenant_id, tl.timeline_id).join(&name).unwrap_or_else(|e| panic!("internal: bad remote key {name}: {e}"))
}

/// The end LSN a partial object's name states (None: not a partial object).
pub fn partial_end_of(key: &RemotePath) -> Option<Lsn> {
    let stem = key.object_name().strip_suffix(PARTIAL_SUFFIX)?;
    let (_, end_hex) = stem.split_once('.')?;
    u64::from_str_radix(end_hex, 16).ok().map(Lsn)
}

/// What one offloader remembers between rounds.
pub struct PartialOffload {
    idle: Duration,
    /// The committed end last seen, and since when it has not moved.
    seen: (Lsn, Instant),
    /// The newest partial object this process uploaded.
    uploaded: Option<(Lsn, RemotePath)>,
    /// Whether leftovers of earlier processes were looked for.
    listed: bool,
}

impl PartialOffload {
    /// `idle` zero: never upload partial segments.
    pub fn new(idle: Duration) -> PartialOffload {
        PartialOffload { idle, seen: (Lsn(0), Instant::now()), uploaded: None, listed: false }
    }

    /// One round, by the chosen offloader after its whole segments: drop a
    /// partial the whole segment superseded, then upload the current one
    /// if the timeline has been idle long enough and it holds more.
    pub async fn run_once(&mut self, tl: &Timeline, storage: &GenericRemoteStorage) -> Result<(), WalBackupError> {
        self.drop_superseded(tl, storage).await?;
        let end = tl.commit_lsn();
        if end != self.seen.0 {
            self.seen = (end, Instant::now());
            return Ok(());
        }
        if self.idle.is_zero() || self.seen.1.elapsed() < self.idle || !self.worth_uploading(tl, end) {
            return Ok(());
        }
        let term = tl.term();
        let data = read_committed_prefix(tl, end).await?;
        if tl.term() != term {
            return Ok(());
        }
        let key = partial_key(tl, end);
        storage.upload_bytes(data, &key, &tl.cancel).await?;
        METRICS.wal_partial_uploads.inc();
        tracing::info!(object = %key, %end, "partial WAL segment offloaded");
        let previous = self.uploaded.replace((end, key.clone()));
        tl.update_backup_status(|b| b.partial_end_lsn = Some(end));
        self.delete_older(tl, storage, previous.map(|(_, k)| k), &key).await
    }

    /// The segment holding `end` is the first not offloaded whole, has
    /// committed WAL in it, and more than the last partial uploaded.
    fn worth_uploading(&self, tl: &Timeline, end: Lsn) -> bool {
        let start = end.segment_start(tl.seg_size_bytes());
        end > start && tl.backup_lsn() == start && self.uploaded.as_ref().is_none_or(|(done, _)| *done < end)
    }

    async fn drop_superseded(&mut self, tl: &Timeline, storage: &GenericRemoteStorage) -> Result<(), WalBackupError> {
        let Some((end, key)) = &self.uploaded else { return Ok(()) };
        if end.segment_start(tl.seg_size_bytes()) >= tl.backup_lsn() {
            return Ok(());
        }
        storage.delete(key, &tl.cancel).await?;
        tracing::info!(object = %key, "partial WAL segment deleted: offloaded whole");
        self.uploaded = None;
        tl.update_backup_status(|b| b.partial_end_lsn = None);
        Ok(())
    }

    /// Delete `previous` and, on the first upload, every other partial of
    /// the timeline except `newest`.
    async fn delete_older(&mut self, tl: &Timeline, storage: &GenericRemoteStorage, previous: Option<RemotePath>, newest: &RemotePath) -> Result<(), WalBackupError> {
        let mut stale: Vec<RemotePath> = previous.into_iter().filter(|k| k != newest).collect();
        if !self.listed {
            let all = storage.list(Some(&timeline_prefix(tl.tenant_id, tl.timeline_id)), &tl.cancel).await?;
            stale.extend(all.into_iter().map(|(k, _)| k).filter(|k| k != newest && partial_end_of(k).is_some()));
            self.listed = true;
        }
        if !stale.is_empty() {
            storage.delete_many(&stale, &tl.cancel).await?;
        }
        Ok(())
    }
}

/// The local segment holding `end`, with every byte from `end` on zeroed.
async fn read_committed_prefix(tl: &Timeline, end: Lsn) -> Result<Bytes, WalBackupError> {
    let seg = tl.seg_size_bytes();
    let path = segment_path(tl.dir(), PG_TLI, end, seg);
    let valid = end.segment_offset(seg) as usize;
    tokio::task::spawn_blocking(move || {
        let mut data = read_segment(&path, seg)?;
        data[valid..].fill(0);
        Ok(Bytes::from(data))
    })
    .await
    .map_err(|e| WalBackupError::Join(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_state_their_end() {
        let key = RemotePath::new("wal/t/l/000000010000000000000003.000000000300A2C8.partial").unwrap();
        assert_eq!(partial_end_of(&key), Some(Lsn(0x300A2C8)));
        assert_eq!(partial_end_of(&RemotePath::new("wal/t/l/000000010000000000000003").unwrap()), None);
        assert_eq!(partial_end_of(&RemotePath::new("wal/t/l/000000010000000000000003.zz.partial").unwrap()), None);
    }
}
