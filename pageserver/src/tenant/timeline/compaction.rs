//! A timeline's L0 → L1 compaction pass (see [`crate::storage::compaction`])
//! and the on-demand pass of the HTTP API ([`Timeline::compact`]: L0
//! compaction, then image layers where needed, with a report).
//!
//! Owns: when compaction runs (at least `compaction_threshold` L0 files,
//! checked by the after-flush pass ([`Timeline::after_flush`]: one at a
//! time, outside the flush lock, coalescing the flushes that happen while
//! it runs) and every `compaction_period` by the tenant's background loop;
//! any number when forced) and the durable order: the L1 files are
//! written and made durable; the index naming them instead of the L0s is
//! replaced under `index_lock`; then the layer map swaps them; then the L0
//! files are deleted. Readers see either the L0s or the L1s, never both.
//!
//! Invariants: runs under `gc_lock`, so GC never deletes an L0 file being
//! merged and never sees a half-applied swap. Remote L0 files are
//! downloaded before the merge and pinned until it is done.
//!
//! Failpoints (`utils::failpoint`, crash tests): `compaction-before-index`
//! (L1 files durable, the index still names the L0s),
//! `compaction-before-delete` (the index names the L1s, the L0 files are
//! still on disk).
//!
//! Cancellation: dropped before the index write, the L1 files are
//! unnamed leftovers (removed at the next start); after it, the L0 files
//! stay until the next start.
use std::sync::Arc;

use serde::Serialize;
use tracing::{info, instrument};

use super::gc::delete_layer_files;
use super::{index_entry, other, Result, Timeline};
use crate::metrics;
use crate::storage::compaction::{is_level0, merge_into_l1};
use crate::storage::file::LayerFile;
use crate::storage::index::{IndexPart, TimelineMetadata};
use crate::storage::LayerKindCounts;

/// What one on-demand compaction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactResult {
    pub layers_before: LayerKindCounts,
    pub layers_after: LayerKindCounts,
    /// L0 files merged (and removed).
    pub l0_compacted: usize,
    /// L1 files written by the merge.
    pub l1_created: usize,
    pub image_layers_created: usize,
    /// Bytes of the L0 files merged and of the L1 files written.
    pub l0_bytes: u64,
    pub l1_bytes: u64,
    /// The LSN image layers were considered at (`disk_consistent_lsn`).
    pub image_lsn: utils::lsn::Lsn,
    pub elapsed_ms: u64,
}

/// What an L0 merge did.
#[derive(Clone, Copy, Debug, Default)]
struct Merged {
    l0: usize,
    l1: usize,
    l0_bytes: u64,
    l1_bytes: u64,
}

impl Timeline {
    /// Merge the L0 files into L1 files if there are at least
    /// `compaction_threshold` of them; returns the number of L1 files.
    pub async fn compact_level0(&self) -> Result<usize> {
        let threshold = self.conf().compaction_threshold.max(2);
        Ok(self.merge_level0(threshold).await?.l1)
    }

    /// A compaction pass now: merge the L0 files (at least
    /// `compaction_threshold` of them, or any when `force`), then create
    /// image layers at `disk_consistent_lsn` where `image_creation_threshold`
    /// deltas lie above a partition's image, or deltas weighing
    /// `image_creation_delta_percent` of its pages.
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id, force))]
    pub async fn compact(&self, force: bool) -> Result<CompactResult> {
        let started = std::time::Instant::now();
        let layers_before = self.layer_kind_counts();
        let min_l0 = if force { 1 } else { self.conf().compaction_threshold.max(2) };
        let merged = self.merge_level0(min_l0).await?;
        let image_lsn = self.disk_consistent_lsn();
        let images = self.create_image_layers_where_needed(image_lsn).await?;
        if merged.l0 == 0 && images > 0 {
            metrics::COMPACTION_RUNS.inc();
        }
        Ok(CompactResult {
            layers_before,
            layers_after: self.layer_kind_counts(),
            l0_compacted: merged.l0,
            l1_created: merged.l1,
            image_layers_created: images,
            l0_bytes: merged.l0_bytes,
            l1_bytes: merged.l1_bytes,
            image_lsn,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// The pass after a flush: L0 compaction (at `compaction_threshold`),
    /// then image layers where needed at `disk_consistent_lsn`. One pass at
    /// a time; each flush sets `after_flush_requested` (under the flush
    /// lock), and a running pass repeats while it is set, so no flush goes
    /// without a pass that started after it. With `wait`, returns once the
    /// requests made so far are served (waiting for a running pass);
    /// without, returns at once when another pass is running (it will
    /// serve this request).
    pub(super) async fn after_flush(&self, wait: bool) -> Result<()> {
        loop {
            let _pass = match wait {
                true => self.after_flush_lock.lock().await,
                false => match self.after_flush_lock.try_lock() {
                    Ok(g) => g,
                    Err(_) => return Ok(()),
                },
            };
            while self.after_flush_requested.swap(false, std::sync::atomic::Ordering::AcqRel) {
                self.compact_level0().await?;
                self.create_image_layers_where_needed(self.disk_consistent_lsn()).await?;
            }
            drop(_pass);
            // A flush that found the lock held just before it was released.
            if !self.after_flush_requested.load(std::sync::atomic::Ordering::Acquire) {
                return Ok(());
            }
        }
    }

    /// Merge every L0 file into L1 files if there are at least `min_l0`.
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id))]
    async fn merge_level0(&self, min_l0: usize) -> Result<Merged> {
        let _g = self.gc_lock.lock().await;
        let l0: Vec<Arc<LayerFile>> = self.read_layers().historic().filter(|l| is_level0(&l.desc)).cloned().collect();
        if l0.is_empty() || l0.len() < min_l0 {
            return Ok(Merged::default());
        }
        let started = std::time::Instant::now();
        // Remote L0s are downloaded first; the pins keep them until the merge is done.
        let pins = self.ensure_all_resident(&l0).await?;
        let (dir, inputs) = (self.path.clone(), l0.clone());
        let (target, generation) = (self.conf().compaction_target_size_bytes, self.generation);
        let l1 = tokio::task::spawn_blocking(move || {
            let _pins = pins;
            merge_into_l1(&dir, &inputs, target, generation)
        })
            .await
            .map_err(other)?
            .map_err(|e| other(format!("compaction: {e}")))?;
        let l1: Vec<Arc<LayerFile>> = l1.into_iter().map(Arc::new).collect();
        utils::failpoint::hit("compaction-before-index");
        self.commit_replacement(&l1, &l0).await?;
        utils::failpoint::hit("compaction-before-delete");
        delete_layer_files(&l0).await?;
        self.update_physical_size_metric();
        metrics::COMPACTION_RUNS.inc();
        metrics::COMPACTION_TIME.observe(started.elapsed().as_secs_f64());
        let merged = Merged {
            l0: l0.len(),
            l1: l1.len(),
            l0_bytes: l0.iter().map(|l| l.size_bytes).sum(),
            l1_bytes: l1.iter().map(|l| l.size_bytes).sum(),
        };
        metrics::COMPACTION_L0_MERGED.inc_by(merged.l0 as u64);
        info!(l0 = merged.l0, l1 = merged.l1, l0_bytes = merged.l0_bytes, l1_bytes = merged.l1_bytes, "compacted L0 files into L1 files");
        Ok(merged)
    }

    /// Index first (with `add`, without `remove`), then the map.
    async fn commit_replacement(&self, add: &[Arc<LayerFile>], remove: &[Arc<LayerFile>]) -> Result<()> {
        let _i = self.index_lock.lock().await;
        let index = {
            let map = self.read_layers();
            let kept = map.historic().filter(|l| !remove.iter().any(|r| Arc::ptr_eq(r, l)));
            let layers = kept.chain(add).map(|l| index_entry(l)).collect();
            let metadata = TimelineMetadata { disk_consistent_lsn: self.disk_consistent_lsn(), ..self.metadata() };
            IndexPart { gc_cutoff_lsn: self.gc_cutoff_lsn(), ..IndexPart::new(self.generation, metadata, layers) }
        };
        self.save_index(index, add, remove).await?;
        let mut map = self.write_layers();
        for l in remove {
            map.remove(&l.desc);
        }
        for l in add {
            map.insert(Arc::clone(l));
        }
        Ok(())
    }
}
