//! Batched reads for the page service and basebackup: many GetPage@LSN at
//! one LSN, whole SLRU segments, ranges of a relation's blocks.
//!
//! Owns no state. A batch checks the LSN's scope and waits for it once,
//! reads each relation's size once (from the relation-size cache when it
//! can answer: see submodule `relcache`), then reads all blocks with one
//! vectored read (submodule `vectored`: one layer-map walk and one
//! blocking section per round of layers for the whole batch, adjacent
//! values coalesced into one file read). Results come back in the order of
//! the request.
//!
//! Invariants: the result for each block is what
//! [`Timeline::get_rel_page_at_lsn`] returns for it at the same LSN.
//!
//! Cancellation: dropping a batch drops its vectored read, which is
//! cancel-safe (see the timeline module).
use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use postgres_ffi::pg_constants::BLCKSZ;
use postgres_ffi::RelFileNode;
use tracing::instrument;
use utils::lsn::Lsn;

use super::{other, PageReconstructError, Result, Timeline, ZERO_PAGE};
use crate::metrics;
use crate::storage::key::{rel_block_key, slru_block_key};
use crate::walredo::SlruKind;

/// One block of a batch: relation, fork, block number.
pub type BlockRef = (RelFileNode, u8, u32);

/// The same error again, for every block it applies to (the variants carry
/// plain data; a layer-file error keeps its text).
pub(super) fn duplicate(e: &PageReconstructError) -> PageReconstructError {
    use PageReconstructError as E;
    match e {
        E::MissingKey { key, lsn } => E::MissingKey { key: *key, lsn: *lsn },
        E::LayerFile(e) => E::Other(e.to_string()),
        E::WalRedo { key, lsn, reason } => E::WalRedo { key: *key, lsn: *lsn, reason: reason.clone() },
        E::WaitLsnTimeout { lsn, last, timeout } => E::WaitLsnTimeout { lsn: *lsn, last: *last, timeout: *timeout },
        E::BelowBranchPoint { lsn, ancestor_lsn, timeline_id } => {
            E::BelowBranchPoint { lsn: *lsn, ancestor_lsn: *ancestor_lsn, timeline_id: *timeline_id }
        }
        E::BelowGcCutoff { lsn, cutoff, timeline_id } => {
            E::BelowGcCutoff { lsn: *lsn, cutoff: *cutoff, timeline_id: *timeline_id }
        }
        E::LsnOutOfRange { lsn } => E::LsnOutOfRange { lsn: *lsn },
        E::RelationNotFound { rel, forknum, lsn } => E::RelationNotFound { rel: *rel, forknum: *forknum, lsn: *lsn },
        E::BlockBeyondEnd { rel, forknum, blkno, nblocks, lsn } => {
            E::BlockBeyondEnd { rel: *rel, forknum: *forknum, blkno: *blkno, nblocks: *nblocks, lsn: *lsn }
        }
        E::SlruSegmentNotFound { kind, segno, lsn } => E::SlruSegmentNotFound { kind: *kind, segno: *segno, lsn: *lsn },
        E::Corrupt { key, reason } => E::Corrupt { key: *key, reason: reason.clone() },
        E::LayerDownload { layer, timeline_id, reason } => {
            E::LayerDownload { layer: layer.clone(), timeline_id: *timeline_id, reason: reason.clone() }
        }
        E::Cancelled => E::Cancelled,
        E::Other(s) => E::Other(s.clone()),
    }
}

impl Timeline {
    /// GetPage@LSN for every block of `blocks` at `lsn`, in order: the
    /// sizes of the relations first (from the relation-size cache when it
    /// can answer), then one vectored read of all blocks inside them.
    /// A batch of many blocks is read in up to `parallelism` parts at once
    /// ([`Timeline::get_vectored_parallel`]).
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id, %lsn, blocks = blocks.len()))]
    pub async fn get_rel_pages_at_lsn(&self, blocks: &[BlockRef], lsn: Lsn, parallelism: usize) -> Vec<Result<Bytes>> {
        if let Err(e) = self.prepare_read(lsn).await {
            return blocks.iter().map(|_| Err(duplicate(&e))).collect();
        }
        let started = std::time::Instant::now();
        let mut sizes: HashMap<(RelFileNode, u8), Result<u32>> = HashMap::new();
        for &(rel, fork, _) in blocks {
            if !sizes.contains_key(&(rel, fork)) {
                let size = self.rel_size(rel, fork, lsn).await;
                sizes.insert((rel, fork), size);
            }
        }
        let mut results: Vec<Option<Result<Bytes>>> = Vec::with_capacity(blocks.len());
        let mut keys = Vec::with_capacity(blocks.len());
        for &(rel, fork, blkno) in blocks {
            match sizes.get(&(rel, fork)) {
                Some(Ok(nblocks)) if blkno < *nblocks => {
                    results.push(None);
                    keys.push(rel_block_key(rel, fork, blkno));
                }
                Some(Ok(nblocks)) => results.push(Some(Err(PageReconstructError::BlockBeyondEnd {
                    rel,
                    forknum: fork,
                    blkno,
                    nblocks: *nblocks,
                    lsn,
                }))),
                Some(Err(e)) => results.push(Some(Err(duplicate(e)))),
                None => results.push(Some(Err(PageReconstructError::RelationNotFound { rel, forknum: fork, lsn }))),
            }
        }
        let mut pages = self.get_vectored_parallel(&keys, lsn, parallelism).await.into_iter();
        let out = results
            .into_iter()
            .map(|r| match r {
                Some(r) => r,
                // A block inside the relation that no WAL ever wrote is zeroes.
                None => pages.next().unwrap_or_else(|| Err(other("vectored read lost a block"))).map(|p| p.unwrap_or_else(|| ZERO_PAGE.clone())),
            })
            .collect();
        let per_page = started.elapsed().as_secs_f64() / blocks.len().max(1) as f64;
        for _ in blocks {
            metrics::GETPAGE_TIME.observe(per_page);
        }
        out
    }

    /// The whole SLRU segment `segno` at `lsn` (its pages concatenated), read
    /// as one vectored read of the segment's blocks (in up to `parallelism`
    /// parts at once).
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id, ?kind, segno, %lsn))]
    pub async fn get_slru_segment_at_lsn(&self, kind: SlruKind, segno: u32, lsn: Lsn, parallelism: usize) -> Result<Bytes> {
        self.prepare_read(lsn).await?;
        if !self.list_slru_segments(kind, lsn).await?.contains(&segno) {
            return Err(PageReconstructError::SlruSegmentNotFound { kind, segno, lsn });
        }
        self.read_slru_segment_parallel(kind, segno, lsn, parallelism).await
    }

    /// The pages of SLRU segment `segno` at `lsn` concatenated (no waiting,
    /// no scope check), in one vectored read.
    pub async fn read_slru_segment(&self, kind: SlruKind, segno: u32, lsn: Lsn) -> Result<Bytes> {
        self.read_slru_segment_parallel(kind, segno, lsn, 1).await
    }

    async fn read_slru_segment_parallel(&self, kind: SlruKind, segno: u32, lsn: Lsn, parallelism: usize) -> Result<Bytes> {
        let blocks = self.slru_segment_size(kind, segno, lsn).await?;
        let keys: Vec<_> = (0..blocks).map(|b| slru_block_key(kind, segno, b)).collect();
        let mut out = BytesMut::with_capacity(blocks as usize * BLCKSZ);
        for (key, page) in keys.iter().zip(self.get_vectored_parallel(&keys, lsn, parallelism).await) {
            let page = page?.ok_or(PageReconstructError::MissingKey { key: *key, lsn })?;
            out.extend_from_slice(&page);
        }
        Ok(out.freeze())
    }

    /// Blocks `blocks` of a relation fork at `lsn` (no waiting, no scope
    /// check; the caller knows they are inside the relation), in one
    /// vectored read; blocks no WAL ever wrote are zero pages.
    pub async fn rel_page_range(&self, rel: RelFileNode, forknum: u8, blocks: std::ops::Range<u32>, lsn: Lsn) -> Result<Vec<Bytes>> {
        let keys: Vec<_> = blocks.map(|b| rel_block_key(rel, forknum, b)).collect();
        self.get_vectored(&keys, lsn).await.into_iter().map(|p| Ok(p?.unwrap_or_else(|| ZERO_PAGE.clone()))).collect()
    }
}
