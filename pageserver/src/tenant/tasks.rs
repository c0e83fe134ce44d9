//! The background loop of a tenant: every `compaction_period` an L0
//! compaction check on each of its timelines (merging when there are at
//! least `compaction_threshold` L0 files), every `gc_period` a GC pass on
//! each. Periods of zero disable that part.
//!
//! Owns: the schedule. Both periods are read from the tenant's current
//! settings ([`SharedConf`]); a settings change wakes the loop, which
//! re-plans from the time each part last ran (so lowering `gc_period` from
//! an hour to seconds takes effect at once, without a restart).
//!
//! Invariants: one loop per tenant, started when the tenant is registered
//! and aborted when the repository shuts down; it ends by itself when the
//! tenant's settings channel closes or the tenant is gone. Passes of one
//! tenant run one after another; the passes do their file I/O in
//! `spawn_blocking` and take the timeline's `gc_lock`, so they never run
//! concurrently with another compaction or GC of the same timeline.
//!
//! Cancellation: aborting the task drops a pass at an await point; the
//! compaction and GC passes are cancel-safe (see their modules).
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{warn, Instrument};
use utils::id::TenantId;

use crate::tenant::timeline::{SharedConf, Timeline};

/// Start the loop. `timelines` lists the tenant's loaded timelines, or
/// `None` once the tenant is gone (the loop then ends).
pub(crate) fn spawn(
    tenant_id: TenantId,
    mut conf: SharedConf,
    timelines: impl Fn() -> Option<Vec<Arc<Timeline>>> + Send + 'static,
) -> JoinHandle<()> {
    let span = tracing::info_span!("tenant_background", %tenant_id);
    tokio::spawn(
        async move {
            let start = Instant::now();
            let (mut last_compaction, mut last_gc) = (start, start);
            loop {
                let c = Arc::clone(&conf.borrow_and_update());
                let due = |last: Instant, period: Duration| (!period.is_zero()).then(|| last + period);
                let (compaction_at, gc_at) = (due(last_compaction, c.compaction_period), due(last_gc, c.gc_period));
                let wake = [compaction_at, gc_at].into_iter().flatten().min();
                let sleep = async move {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sleep => {}
                    changed = conf.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => break,
                    },
                }
                let now = Instant::now();
                let Some(timelines) = timelines() else { break };
                if compaction_at.is_some_and(|at| at <= now) {
                    for tl in &timelines {
                        if let Err(e) = tl.compact_level0().await {
                            warn!(timeline_id = %tl.timeline_id, "background compaction: {e}");
                        }
                    }
                    last_compaction = Instant::now();
                }
                if gc_at.is_some_and(|at| at <= now) {
                    for tl in &timelines {
                        if let Err(e) = tl.gc_now().await {
                            warn!(timeline_id = %tl.timeline_id, "background GC: {e}");
                        }
                    }
                    last_gc = Instant::now();
                }
            }
        }
        .instrument(span),
    )
}
