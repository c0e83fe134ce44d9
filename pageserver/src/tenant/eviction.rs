//! Eviction: the pageserver's local disk as a bounded cache of remote
//! storage. With a resident-size limit (`--resident-limit`), a background
//! task evicts the least recently used resident layers back to remote-only
//! until the resident bytes of all timelines are at or below the limit;
//! reads download them again on demand (`crate::tenant::timeline`,
//! submodule `ondemand`).
//!
//! Owns: the pass ([`Repository::evict_now`], [`Repository::evict_to`]) and
//! the task's schedule: every [`EVICTION_PERIOD`], and at once when a
//! download finished (timelines wake it).
//!
//! Invariants: a layer is evicted only if
//! * the last index its timeline uploaded names it with its size (remote
//!   storage holds it), and the attachment's generation is not known to be
//!   stale (a newer generation may delete what our index names);
//! * no read holds a pin on it, nor its opened handle
//!   ([`LayerFile::try_evict`]): never a layer in use by a read in flight.
//!
//! So the resident size may stay above the limit while new layers wait for
//! their upload or are in use; each pass reports how far it got. Order:
//! least recently used first (a layer's last pin; layers not read since
//! they were loaded come first). Passes run one at a time.
//!
//! Cancellation: a pass runs in `spawn_blocking` (it deletes files) and
//! completes once started; aborting the task (shutdown) stops it between
//! passes.
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, info_span, warn, Instrument};

use crate::metrics;
use crate::storage::file::{EvictOutcome, LayerFile};
use crate::tenant::repository::{RepoError, Repository};
use crate::tenant::timeline::Timeline;

/// How often the task checks the resident size (besides after downloads).
pub const EVICTION_PERIOD: Duration = Duration::from_secs(10);

/// What one eviction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EvictionReport {
    /// The limit the pass worked to.
    pub limit_bytes: u64,
    /// Resident bytes of all timelines before and after the pass.
    pub resident_bytes_before: u64,
    pub resident_bytes_after: u64,
    pub evicted_layers: usize,
    pub evicted_bytes: u64,
    /// Layers the pass would have evicted but kept: not (yet) named by an
    /// uploaded index, or the attachment is stale.
    pub kept_not_uploaded: usize,
    /// ... or pinned by a read in flight.
    pub kept_in_use: usize,
}

impl Repository {
    /// An eviction pass to the configured `--resident-limit` (no limit: a
    /// pass that only measures).
    pub async fn evict_now(&self) -> Result<EvictionReport, RepoError> {
        self.evict_to(self.conf.resident_limit_bytes.unwrap_or(u64::MAX)).await
    }

    /// An eviction pass to `limit_bytes` (see the module doc).
    pub async fn evict_to(&self, limit_bytes: u64) -> Result<EvictionReport, RepoError> {
        let _one_at_a_time = self.eviction_lock.lock().await;
        let timelines = self.all_timelines();
        tokio::task::spawn_blocking(move || eviction_pass(&timelines, limit_bytes))
            .await
            .map_err(|e| RepoError::Remote(format!("eviction pass: {e}")))
    }

    /// Start the eviction task (with a resident-size limit only).
    pub(crate) fn start_eviction_task(self: &Arc<Self>) {
        if self.conf.resident_limit_bytes.is_none() {
            return;
        }
        let task = spawn(Arc::downgrade(self), Arc::clone(&self.evictor));
        *self.eviction_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    pub(crate) fn stop_eviction_task(&self) {
        if let Some(task) = self.eviction_task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

fn spawn(repo: Weak<Repository>, wake: Arc<Notify>) -> JoinHandle<()> {
    let span = info_span!("eviction");
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(EVICTION_PERIOD) => {}
                    _ = wake.notified() => {}
                }
                let Some(repo) = repo.upgrade() else { return };
                if let Err(e) = repo.evict_now().await {
                    warn!("eviction pass failed: {e}");
                }
            }
        }
        .instrument(span),
    )
}

/// Whether remote storage holds `layer` as this attachment last uploaded it.
fn uploaded(tl: &Timeline, layer: &LayerFile) -> bool {
    tl.remote().is_some_and(|r| !r.is_stale() && r.uploaded_size(&layer.file_name()) == Some(layer.size_bytes))
}

/// Evict least recently used layers until `limit_bytes`. Blocking.
fn eviction_pass(timelines: &[Arc<Timeline>], limit_bytes: u64) -> EvictionReport {
    let mut report = EvictionReport { limit_bytes, ..EvictionReport::default() };
    let mut candidates: Vec<(u64, &Arc<Timeline>, Arc<LayerFile>)> = Vec::new();
    let mut resident = 0u64;
    for tl in timelines {
        for layer in tl.historic_layers() {
            if layer.is_resident() {
                resident += layer.size_bytes;
                candidates.push((layer.last_use(), tl, layer));
            }
        }
    }
    report.resident_bytes_before = resident;
    if resident > limit_bytes {
        metrics::EVICTION_PASSES.inc();
        candidates.sort_by_key(|(last_use, _, _)| *last_use);
        for (_, tl, layer) in &candidates {
            if resident <= limit_bytes {
                break;
            }
            if !uploaded(tl, layer) {
                report.kept_not_uploaded += 1;
                continue;
            }
            match layer.try_evict() {
                Ok(EvictOutcome::Evicted) => {
                    resident -= layer.size_bytes;
                    report.evicted_layers += 1;
                    report.evicted_bytes += layer.size_bytes;
                    tl.note_eviction();
                    info!(tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id, layer = %layer.file_name(), bytes = layer.size_bytes, "evicted layer");
                }
                Ok(EvictOutcome::NotResident) => resident -= layer.size_bytes,
                Ok(EvictOutcome::Pinned | EvictOutcome::InUse) => report.kept_in_use += 1,
                Err(e) => warn!(tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id, "eviction: {e}"),
            }
        }
    }
    report.resident_bytes_after = resident;
    for tl in timelines {
        tl.update_resident_size_metric();
    }
    if report.evicted_layers > 0 || report.resident_bytes_after > limit_bytes {
        info!(
            limit_bytes,
            before = report.resident_bytes_before,
            after = report.resident_bytes_after,
            evicted = report.evicted_layers,
            kept_not_uploaded = report.kept_not_uploaded,
            kept_in_use = report.kept_in_use,
            "eviction pass"
        );
    }
    report
}
