//! A timeline's L0 → L1 compaction pass (see [`crate::storage::compaction`]).
//!
//! Owns: when compaction runs (at least `compaction_threshold` L0 files,
//! checked after each flush) and the durable order: the L1 files are
//! written and made durable; the index naming them instead of the L0s is
//! replaced under `index_lock`; then the layer map swaps them; then the L0
//! files are deleted. Readers see either the L0s or the L1s, never both.
//!
//! Invariants: runs under `gc_lock`, so GC never deletes an L0 file being
//! merged and never sees a half-applied swap.
//!
//! Cancellation: dropped before the index write, the L1 files are
//! unnamed leftovers (removed at the next start); after it, the L0 files
//! stay until the next start.
use std::sync::Arc;

use tracing::{info, instrument};

use super::gc::delete_layer_files;
use super::{index_entry, other, Result, Timeline};
use crate::storage::compaction::{is_level0, merge_into_l1};
use crate::storage::file::LayerFile;
use crate::storage::index::{IndexPart, TimelineMetadata};

impl Timeline {
    /// Merge the L0 files into L1 files if there are at least
    /// `compaction_threshold` of them; returns the number of L1 files.
    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id))]
    pub async fn compact_level0(&self) -> Result<usize> {
        let _g = self.gc_lock.lock().await;
        let l0: Vec<Arc<LayerFile>> = self.read_layers().historic().filter(|l| is_level0(&l.desc)).cloned().collect();
        if l0.len() < self.conf.compaction_threshold.max(2) {
            return Ok(0);
        }
        let (dir, inputs) = (self.path.clone(), l0.clone());
        let (target, generation) = (self.conf.compaction_target_size_bytes, self.generation);
        let l1 = tokio::task::spawn_blocking(move || merge_into_l1(&dir, &inputs, target, generation))
            .await
            .map_err(other)?
            .map_err(|e| other(format!("compaction: {e}")))?;
        let l1: Vec<Arc<LayerFile>> = l1.into_iter().map(Arc::new).collect();
        self.commit_replacement(&l1, &l0).await?;
        delete_layer_files(&l0).await?;
        self.update_physical_size_metric();
        info!(l0 = l0.len(), l1 = l1.len(), "compacted L0 files into L1 files");
        Ok(l1.len())
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
