//! Batched reads for the page service: many GetPage@LSN at one LSN, and
//! whole SLRU segments.
//!
//! Owns no state. A batch checks the LSN's scope and waits for it once,
//! reads each relation's directory entry and size once, then reads the
//! blocks concurrently with at most `parallelism` reads in flight, so the
//! memory of a batch is bounded by its length (the results) and the
//! thread hops of the file reads overlap. Results come back in the order
//! of the request. (A vectored layer read, one layer-map walk for the
//! whole batch, can replace the per-block reads without changing this
//! interface.)
//!
//! Invariants: the result for each block is what
//! [`Timeline::get_rel_page_at_lsn`] returns for it at the same LSN.
//!
//! Cancellation: dropping a batch drops the reads in flight, which are
//! cancel-safe (see the timeline module).
use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use postgres_ffi::pg_constants::BLCKSZ;
use postgres_ffi::RelFileNode;
use tracing::instrument;
use utils::lsn::Lsn;

use super::{PageReconstructError, Result, Timeline, ZERO_PAGE};
use crate::metrics;
use crate::storage::key::rel_block_key;
use crate::walredo::SlruKind;

/// One block of a batch: relation, fork, block number.
pub type BlockRef = (RelFileNode, u8, u32);

/// The same error again, for every block it applies to (the variants carry
/// plain data; a layer-file error keeps its text).
fn duplicate(e: &PageReconstructError) -> PageReconstructError {
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
    /// GetPage@LSN for every block of `blocks` at `lsn`, in order, with at
    /// most `parallelism` (≥ 1) block reads in flight.
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id, %lsn, blocks = blocks.len()))]
    pub async fn get_rel_pages_at_lsn(&self, blocks: &[BlockRef], lsn: Lsn, parallelism: usize) -> Vec<Result<Bytes>> {
        if let Err(e) = self.prepare_read(lsn).await {
            return blocks.iter().map(|_| Err(duplicate(&e))).collect();
        }
        let mut sizes: HashMap<(RelFileNode, u8), Result<u32>> = HashMap::new();
        for &(rel, fork, _) in blocks {
            if !sizes.contains_key(&(rel, fork)) {
                let size = self.rel_size(rel, fork, lsn).await;
                sizes.insert((rel, fork), size);
            }
        }
        let read_one = |&(rel, fork, blkno): &BlockRef| {
            let size = sizes.get(&(rel, fork)).map(|s| s.as_ref().map(|n| *n).map_err(duplicate));
            async move {
                let nblocks = size.unwrap_or(Ok(0))?;
                if blkno >= nblocks {
                    return Err(PageReconstructError::BlockBeyondEnd { rel, forknum: fork, blkno, nblocks, lsn });
                }
                let started = std::time::Instant::now();
                let page = self.get_opt(rel_block_key(rel, fork, blkno), lsn).await;
                metrics::GETPAGE_TIME.observe(started.elapsed().as_secs_f64());
                Ok(page?.unwrap_or_else(|| ZERO_PAGE.clone()))
            }
        };
        futures::stream::iter(blocks).map(read_one).buffered(parallelism.max(1)).collect().await
    }

    /// The whole SLRU segment `segno` at `lsn` (its pages concatenated),
    /// with at most `parallelism` page reads in flight.
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id, ?kind, segno, %lsn))]
    pub async fn get_slru_segment_at_lsn(&self, kind: SlruKind, segno: u32, lsn: Lsn, parallelism: usize) -> Result<Bytes> {
        self.prepare_read(lsn).await?;
        if !self.list_slru_segments(kind, lsn).await?.contains(&segno) {
            return Err(PageReconstructError::SlruSegmentNotFound { kind, segno, lsn });
        }
        let blocks = self.slru_segment_size(kind, segno, lsn).await?;
        let mut pages = futures::stream::iter(0..blocks)
            .map(|blkno| self.slru_page(kind, segno, blkno, lsn))
            .buffered(parallelism.max(1));
        let mut out = BytesMut::with_capacity(blocks as usize * BLCKSZ);
        while let Some(page) = pages.next().await {
            out.extend_from_slice(&page?);
        }
        Ok(out.freeze())
    }
}
