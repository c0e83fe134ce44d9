//! A timeline's GC pass, its cutoff, the layer listing for the API and the
//! per-timeline layer metrics (physical size, layer counts by kind).
//!
//! Owns: the cutoff computation (`min(last_record_lsn - gc_horizon_bytes,
//! LSN at now - pitr_interval)`; the time part from the commit-timestamp
//! index, skipped when no commit is known), the retain LSNs (branch points
//! of child timelines) and the durable order of a pass.
//!
//! Invariants:
//! * The cutoff never moves backwards; reads (and branches) below it are
//!   refused with [`PageReconstructError::BelowGcCutoff`].
//! * Order: the index without the removed layers and with the new
//!   `gc_cutoff_lsn` is made durable (under `index_lock`), then the layer
//!   map and the cutoff change, then the files are deleted. So the index
//!   never names a deleted file; a crash between the index write and the
//!   deletion leaves files the next start removes as leftovers.
//! * `gc_lock` is held for the whole pass and by branch creation from this
//!   timeline, so a branch point below the new cutoff cannot appear while
//!   GC decides what its retain LSNs need.
//!
//! Failpoints (`utils::failpoint`, crash tests): `gc-before-index`,
//! `gc-before-delete` (the index without the removed layers is durable,
//! their files are still on disk).
//!
//! Cancellation: dropping a pass before the index write changes nothing;
//! after it, the removed layers' files stay until the next start (or are
//! deleted by the blocking task already running). All file I/O runs in
//! `spawn_blocking`.
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{info, instrument};
use utils::id::TimelineId;
use utils::lsn::Lsn;

use super::{index_entry, other, PageReconstructError, Result, Timeline};
use crate::tenant::commit_ts::{commit_ts_at, find_lsn_for_timestamp, system_time_to_pg_timestamp};
use crate::storage::file::LayerFile;
use crate::storage::gc::{held_key_runs, removable, shadowing_image_lsn, GcCandidate, GcResult};
use crate::storage::index::{IndexLayer, IndexPart, TimelineMetadata};
use crate::storage::LayerKindCounts;
use crate::metrics;

impl Timeline {
    /// The layer files, by LSN start.
    pub fn layers(&self) -> Vec<IndexLayer> {
        self.read_layers().historic().map(|l| index_entry(l)).collect()
    }

    /// Bytes of all layer files, on local disk or only in remote storage.
    pub fn physical_size_bytes(&self) -> u64 {
        self.read_layers().historic().map(|l| l.size_bytes).sum()
    }

    /// Layer files by kind (L0, L1, image) and their bytes.
    pub fn layer_kind_counts(&self) -> LayerKindCounts {
        LayerKindCounts::of(self.read_layers().historic().map(|l| (&l.desc, l.size_bytes)))
    }

    /// Set the physical size and layer count gauges of this timeline.
    pub(crate) fn update_physical_size_metric(&self) {
        let (tenant, timeline) = (self.tenant_id.to_string(), self.timeline_id.to_string());
        let counts = self.layer_kind_counts();
        metrics::PHYSICAL_SIZE.with_label_values(&[&tenant, &timeline]).set(counts.size_bytes as i64);
        self.update_resident_size_metric();
        for (kind, n) in [("l0", counts.l0_deltas), ("l1", counts.l1_deltas), ("image", counts.images)] {
            metrics::LAYERS.with_label_values(&[&tenant, &timeline, kind]).set(n as i64);
        }
    }

    /// Drop this timeline's gauges (it was deleted).
    pub(crate) fn remove_metrics(&self) {
        let (tenant, timeline) = (self.tenant_id.to_string(), self.timeline_id.to_string());
        let _ = metrics::PHYSICAL_SIZE.remove_label_values(&[&tenant, &timeline]);
        metrics::RESIDENT_PHYSICAL_SIZE.remove(&tenant, &timeline);
        metrics::REMOTE_PHYSICAL_SIZE.remove(&tenant, &timeline);
        for kind in ["l0", "l1", "image"] {
            let _ = metrics::LAYERS.remove_label_values(&[&tenant, &timeline, kind]);
        }
    }

    /// The LSN at `now - pitr_interval` as the last GC pass found it.
    pub fn last_pitr_cutoff_lsn(&self) -> Option<Lsn> {
        match self.pitr_cutoff_lsn.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            lsn => Some(Lsn(lsn)),
        }
    }

    /// Record a child timeline branched at `lsn` (a GC retain LSN).
    pub(crate) fn add_branch_point(&self, child: TimelineId, lsn: Lsn) {
        self.branch_points.lock().unwrap_or_else(|e| e.into_inner()).insert(child, lsn);
    }

    pub(crate) fn remove_branch_point(&self, child: TimelineId) {
        self.branch_points.lock().unwrap_or_else(|e| e.into_inner()).remove(&child);
    }

    /// The branch points of the child timelines.
    pub fn retain_lsns(&self) -> Vec<Lsn> {
        self.branch_points.lock().unwrap_or_else(|e| e.into_inner()).values().copied().collect()
    }

    /// The LSN at `now - pitr_interval`, or `None` when no commit time is
    /// known (then only the horizon counts).
    async fn pitr_cutoff_lsn(&self, last: Lsn, pitr_interval: std::time::Duration) -> Result<Option<Lsn>> {
        if pitr_interval.is_zero() {
            return Ok(Some(last));
        }
        if commit_ts_at(self, last).await?.is_none() {
            return Ok(None);
        }
        let Some(t) = SystemTime::now().checked_sub(pitr_interval) else { return Ok(None) };
        Ok(Some(find_lsn_for_timestamp(self, system_time_to_pg_timestamp(t)).await?.lsn))
    }

    /// The cutoff a GC pass now would use (never below the current one).
    pub async fn compute_gc_cutoff(&self) -> Result<Lsn> {
        Ok(self.gc_cutoffs().await?.cutoff)
    }

    /// The horizon and PITR cutoffs now, and the GC cutoff they make.
    async fn gc_cutoffs(&self) -> Result<Cutoffs> {
        let conf = self.conf();
        let last = self.last_record_lsn();
        let horizon = Lsn(last.0.saturating_sub(conf.gc_horizon_bytes));
        let pitr = self.pitr_cutoff_lsn(last, conf.pitr_interval).await?;
        let cutoff = match pitr {
            Some(pitr) => pitr.min(horizon),
            None => horizon,
        };
        Ok(Cutoffs { horizon, pitr, cutoff: cutoff.max(self.gc_cutoff_lsn()) })
    }

    /// Run a GC pass now: remove the layers no read at or above the cutoff
    /// and no child branch point needs (see [`crate::storage::gc`]).
    pub async fn gc_now(&self) -> Result<GcResult> {
        self.gc_pass(true).await
    }

    /// A GC pass that stops after the index write and the layer-map change,
    /// leaving the removed layers' files on disk: what a crash just before
    /// deleting them leaves behind (for tests).
    #[doc(hidden)]
    pub async fn gc_crash_before_deleting_files(&self) -> Result<GcResult> {
        self.gc_pass(false).await
    }

    #[instrument(skip_all, fields(tenant_id = %self.tenant_id, timeline_id = %self.timeline_id))]
    async fn gc_pass(&self, delete_files: bool) -> Result<GcResult> {
        let _g = self.gc_lock.lock().await;
        let started = std::time::Instant::now();
        metrics::GC_RUNS.inc();
        let layers_before = self.layer_kind_counts();
        let Cutoffs { horizon, pitr, cutoff } = self.gc_cutoffs().await?;
        if let Some(pitr) = pitr {
            self.pitr_cutoff_lsn.store(pitr.0, std::sync::atomic::Ordering::Release);
        }
        let doomed = self.layers_to_remove(cutoff).await?;
        utils::failpoint::hit("gc-before-index");
        self.commit_gc(&doomed, cutoff).await?;
        let bytes_removed = doomed.iter().map(|l| l.size_bytes).sum();
        utils::failpoint::hit("gc-before-delete");
        if delete_files {
            delete_layer_files(&doomed).await?;
        }
        metrics::GC_LAYERS_REMOVED.inc_by(doomed.len() as u64);
        metrics::GC_BYTES_REMOVED.inc_by(bytes_removed);
        metrics::GC_TIME.observe(started.elapsed().as_secs_f64());
        self.update_physical_size_metric();
        info!(%cutoff, %horizon, ?pitr, layers_removed = doomed.len(), bytes_removed, "GC pass");
        let mut retain_lsns = self.retain_lsns();
        retain_lsns.sort();
        Ok(GcResult {
            layers_removed: doomed.len(),
            bytes_removed,
            cutoff,
            horizon_cutoff: horizon,
            pitr_cutoff: pitr,
            retain_lsns,
            layers_before,
            layers_after: self.layer_kind_counts(),
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// The layers the removal rule allows removing at `cutoff`.
    async fn layers_to_remove(&self, cutoff: Lsn) -> Result<Vec<Arc<LayerFile>>> {
        let below: Vec<Arc<LayerFile>> =
            self.read_layers().historic().filter(|l| shadowing_image_lsn(&l.desc) <= cutoff).cloned().collect();
        let candidates = tokio::task::spawn_blocking(move || {
            below
                .into_iter()
                .map(|layer| held_key_runs(&layer).map(|key_runs| GcCandidate { layer, key_runs }))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(other)??;
        let retain = self.retain_lsns();
        let map = self.read_layers();
        Ok(candidates.into_iter().filter(|c| removable(&map, c, cutoff, &retain)).map(|c| c.layer).collect())
    }

    /// Make the removal durable (index first), then apply it to the map
    /// and raise the cutoff.
    async fn commit_gc(&self, doomed: &[Arc<LayerFile>], cutoff: Lsn) -> Result<()> {
        if doomed.is_empty() && cutoff == self.gc_cutoff_lsn() {
            return Ok(());
        }
        let _i = self.index_lock.lock().await;
        let index = self.index_without(doomed, cutoff);
        self.save_index(index, &[], doomed).await?;
        self.gc_cutoff_lsn.fetch_max(cutoff.0, std::sync::atomic::Ordering::AcqRel);
        let mut map = self.write_layers();
        for l in doomed {
            map.remove(&l.desc);
        }
        Ok(())
    }

    fn index_without(&self, doomed: &[Arc<LayerFile>], cutoff: Lsn) -> IndexPart {
        let map = self.read_layers();
        let kept = map.historic().filter(|l| !doomed.iter().any(|d| Arc::ptr_eq(d, l)));
        let layers = kept.map(|l| index_entry(l)).collect();
        let metadata = TimelineMetadata { disk_consistent_lsn: self.disk_consistent_lsn(), ..self.metadata() };
        IndexPart { gc_cutoff_lsn: cutoff, ..IndexPart::new(self.generation, metadata, layers) }
    }
}

/// The cutoffs of a GC pass.
struct Cutoffs {
    horizon: Lsn,
    pitr: Option<Lsn>,
    cutoff: Lsn,
}

/// Delete the files of removed layers and make the deletion durable.
pub(super) async fn delete_layer_files(doomed: &[Arc<LayerFile>]) -> Result<()> {
    let paths: Vec<_> = doomed.iter().map(|l| l.path.clone()).collect();
    tokio::task::spawn_blocking(move || {
        for p in &paths {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(other(format!("deleting {}: {e}", p.display())))
                }
                _ => {}
            }
        }
        if let Some(dir) = paths.first().and_then(|p| p.parent()) {
            utils::fs::fsync_dir(dir).map_err(|e| other(format!("fsync {}: {e}", dir.display())))?;
        }
        Ok(())
    })
    .await
    .map_err(other)?
}

/// `BelowGcCutoff` for branch creation checks.
pub(crate) fn check_branch_lsn(tl: &Timeline, lsn: Lsn) -> Result<()> {
    let cutoff = tl.gc_cutoff_lsn();
    if lsn < cutoff {
        return Err(PageReconstructError::BelowGcCutoff { lsn, cutoff, timeline_id: tl.timeline_id });
    }
    Ok(())
}
