//! The set of timelines a safekeeper holds, and their background tasks.
//!
//! Layout on disk: `<data_dir>/<tenant_id>/<timeline_id>/` holds a
//! timeline's control file and WAL segments. At start every such directory is
//! loaded; a directory that fails to load is reported and skipped, so one
//! damaged timeline does not stop the others.
//!
//! Each loaded timeline runs two tasks (acceptor — WAL from the compute or,
//! when behind, from a peer — and broker sync), and a third with remote
//! storage (WAL offload), all stopped by the timeline's cancellation token
//! on delete or shutdown. Deleting a timeline also deletes its offloaded
//! WAL (best effort: what is left behind is only garbage).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use utils::id::{TenantId, TimelineId};

use crate::control_file::CONTROL_FILE_NAME;
use crate::timeline::{CreateTimelineRequest, Timeline, TimelineError};
use crate::{acceptor, broker_sync, wal_backup, SafekeeperConf};

#[derive(Debug, thiserror::Error)]
pub enum TimelinesError {
    #[error("timeline {0}/{1} already exists")]
    AlreadyExists(TenantId, TimelineId),
    #[error("timeline {0}/{1} not found")]
    NotFound(TenantId, TimelineId),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error("{0}")]
    Io(String),
}

pub struct Timelines {
    pub conf: Arc<SafekeeperConf>,
    map: Mutex<HashMap<(TenantId, TimelineId), Arc<Timeline>>>,
}

impl Timelines {
    /// Load every timeline under the data directory and start its tasks.
    pub fn load_all(conf: Arc<SafekeeperConf>) -> Result<Arc<Timelines>, TimelinesError> {
        let timelines = Arc::new(Timelines { conf: conf.clone(), map: Mutex::new(HashMap::new()) });
        std::fs::create_dir_all(&conf.data_dir).map_err(|e| TimelinesError::Io(format!("{}: {e}", conf.data_dir.display())))?;
        for dir in timeline_dirs(&conf.data_dir) {
            match Timeline::load(&dir, conf.id) {
                Ok(tl) => timelines.insert_and_start(tl),
                Err(e) => tracing::error!("skipping timeline {}: {e}", dir.display()),
            }
        }
        Ok(timelines)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TenantId, TimelineId), Arc<Timeline>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert_and_start(&self, tl: Arc<Timeline>) {
        self.lock().insert((tl.tenant_id, tl.timeline_id), tl.clone());
        let span = tracing::info_span!("timeline", tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id);
        let _enter = span.enter();
        tokio::spawn(tracing::Instrument::in_current_span(acceptor::run(tl.clone(), self.conf.clone())));
        tokio::spawn(tracing::Instrument::in_current_span(broker_sync::run(tl.clone(), self.conf.clone())));
        if self.conf.remote_storage.is_some() {
            tokio::spawn(tracing::Instrument::in_current_span(wal_backup::run(tl, self.conf.clone())));
        }
    }

    pub fn timeline_dir(&self, tenant_id: TenantId, timeline_id: TimelineId) -> PathBuf {
        self.conf.data_dir.join(tenant_id.to_string()).join(timeline_id.to_string())
    }

    pub fn create(&self, tenant_id: TenantId, req: &CreateTimelineRequest) -> Result<Arc<Timeline>, TimelinesError> {
        let dir = self.timeline_dir(tenant_id, req.timeline_id);
        if self.get(tenant_id, req.timeline_id).is_ok() || dir.join(CONTROL_FILE_NAME).exists() {
            return Err(TimelinesError::AlreadyExists(tenant_id, req.timeline_id));
        }
        let tl = Timeline::create(&dir, self.conf.id, tenant_id, req)?;
        self.insert_and_start(tl.clone());
        Ok(tl)
    }

    pub fn get(&self, tenant_id: TenantId, timeline_id: TimelineId) -> Result<Arc<Timeline>, TimelinesError> {
        self.lock().get(&(tenant_id, timeline_id)).cloned().ok_or(TimelinesError::NotFound(tenant_id, timeline_id))
    }

    pub fn list(&self) -> Vec<Arc<Timeline>> {
        self.lock().values().cloned().collect()
    }

    /// Stop a timeline's tasks and remove its directory.
    pub async fn delete(&self, tenant_id: TenantId, timeline_id: TimelineId) -> Result<(), TimelinesError> {
        let tl = self.lock().remove(&(tenant_id, timeline_id)).ok_or(TimelinesError::NotFound(tenant_id, timeline_id))?;
        tl.cancel.cancel();
        let dir = tl.dir().to_path_buf();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
            .await
            .map_err(|e| TimelinesError::Io(e.to_string()))?
            .map_err(|e| TimelinesError::Io(format!("remove timeline directory: {e}")))?;
        if let Some(storage) = &self.conf.remote_storage {
            match wal_backup::delete_timeline(storage, tenant_id, timeline_id).await {
                Ok(n) => tracing::info!(%tenant_id, %timeline_id, segments = n, "offloaded WAL deleted"),
                Err(e) => tracing::warn!(%tenant_id, %timeline_id, "offloaded WAL left in remote storage: {e}"),
            }
        }
        tracing::info!(%tenant_id, %timeline_id, "timeline deleted");
        Ok(())
    }

    /// Stop all tasks and persist every timeline's state.
    pub async fn shutdown(&self) {
        for tl in self.list() {
            tl.cancel.cancel();
            if let Err(e) = tl.persist_now(None).await {
                tracing::error!(tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id, "persist at shutdown: {e}");
            }
        }
    }
}

/// `<data_dir>/<tenant>/<timeline>/` directories holding a control file.
fn timeline_dirs(data_dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(tenants) = std::fs::read_dir(data_dir) else { return out };
    for tenant in tenants.flatten() {
        let Ok(timelines) = std::fs::read_dir(tenant.path()) else { continue };
        for tl in timelines.flatten() {
            if tl.path().join(CONTROL_FILE_NAME).exists() {
                out.push(tl.path());
            }
        }
    }
    out
}
