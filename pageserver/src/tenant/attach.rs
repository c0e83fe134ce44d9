//! A tenant's link to remote storage, as the repository sees it: one
//! upload queue per loaded timeline, the upload of the tenant's settings,
//! attach of a tenant that has no local state from object storage, and
//! detach.
//!
//! Attach, for a generation `G` the control plane handed out (it keeps the
//! numbers in its state): `G` is refused if the tenant's generation record
//! is higher, else recorded; then the tenant's settings object, if any,
//! becomes its local `config.json`; then for every remote timeline, the
//! newest index at or below `G` is read and written locally, as generation
//! `G` (new layers get `G`), into a fresh timeline directory — no layer
//! file is downloaded: the tenant loads as at startup, every layer the
//! index names becomes a remote layer (seed 001's RemoteLayer), and reads
//! download what they need on demand. Each timeline's upload queue starts by
//! uploading that index as `G`'s own. The timeline resumes WAL ingest at
//! the index's `disk_consistent_lsn`, which is the remote-consistent LSN
//! the safekeepers were told, so they still hold the WAL after it.
//!
//! Loading (at startup or attach) accepts an index naming files that are
//! not on local disk when remote storage holds them: the newest remote
//! index at or below the local index's generation names each with its size
//! ([`Repository::check_remote_only_layers`]). Without remote storage, or
//! when the remote index does not name one, the timeline fails to load as
//! before; when remote storage cannot be read, they load as remote layers
//! (a read that needs one then fails naming it, until storage is back).
//!
//! Invariants: an attach never overwrites local state (a tenant that exists
//! is refused); a failed attach removes what it wrote. Detach flushes and
//! waits for uploads before it removes local state, so nothing ingested is
//! lost.
//!
//! Cancellation: dropping an attach part-way leaves a tenant directory
//! without complete timelines; the next startup ignores timelines without
//! an index, and an attach of the same tenant is refused until the
//! directory is removed (detach does it).
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utils::id::{TenantId, TimelineId};

use crate::remote::{download, generation, tenant_config as remote_config};
use crate::remote::upload_queue::RemoteTimelineClient;
use crate::storage::index::{self, IndexError, IndexPart};
use crate::tenant::config::{self as tenant_config, TenantConfOverrides};
use crate::tenant::repository::{LoadedDir, RepoError, Repository, Tenant};
use crate::tenant::timeline::Timeline;

/// How long a graceful shutdown waits for queued uploads.
pub const SHUTDOWN_UPLOAD_WAIT: Duration = Duration::from_secs(30);

fn remote_err(e: impl std::fmt::Display) -> RepoError {
    RepoError::Remote(e.to_string())
}

impl Repository {
    /// Start the upload queue of a just-loaded timeline whose durable local
    /// index is `index` (nothing without remote storage).
    /// Also links the timeline to the eviction task (woken after downloads).
    pub(crate) fn start_uploads(&self, tl: &Timeline, index: &IndexPart) {
        tl.set_evictor(Arc::clone(&self.evictor));
        if let Some(storage) = &self.conf.remote_storage {
            let client = RemoteTimelineClient::start(storage.clone(), tl.tenant_id, tl.timeline_id, tl.path.clone(), index);
            tl.set_remote(client);
        }
    }

    /// Upload a tenant's settings (nothing without remote storage); done
    /// after the local file was replaced.
    pub(crate) async fn upload_tenant_config(&self, tenant_id: TenantId, overrides: &TenantConfOverrides) -> Result<(), RepoError> {
        let Some(storage) = &self.conf.remote_storage else { return Ok(()) };
        let cancel = CancellationToken::new();
        remote_config::upload_tenant_config(storage, tenant_id, overrides, &cancel)
            .await
            .map_err(|e| remote_err(format!("tenant {tenant_id}: settings saved locally, upload failed: {e}")))
    }

    /// Wait (up to `wait`) for every timeline's queued uploads, then stop
    /// the queues.
    pub(crate) async fn finish_uploads(&self, wait: Duration) {
        for tl in self.all_timelines() {
            if let Some(remote) = tl.remote() {
                if !wait.is_zero() && tokio::time::timeout(wait, remote.wait_uploaded()).await.is_err() {
                    warn!(tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id, "uploads still queued at shutdown; the next start redoes them");
                }
                remote.shutdown();
            }
        }
    }

    /// Attach `tenant_id` from remote storage as `generation` (see the
    /// module doc).
    pub async fn attach_tenant(&self, tenant_id: TenantId, generation: u32) -> Result<Arc<Tenant>, RepoError> {
        let storage = self.conf.remote_storage.clone().ok_or(RepoError::NoRemoteStorage)?;
        let tenant_dir = self.conf.workdir.join("tenants").join(tenant_id.to_string());
        if self.get_tenant(tenant_id).is_ok() || tenant_dir.exists() {
            return Err(RepoError::AlreadyExists(format!("tenant {tenant_id} (detach it first)")));
        }
        let cancel = CancellationToken::new();
        let recorded = generation::read_generation(&storage, tenant_id, &cancel).await.map_err(remote_err)?;
        if let Some(recorded) = recorded.filter(|r| *r > generation) {
            return Err(RepoError::AlreadyExists(format!(
                "tenant {tenant_id} at generation {recorded}: attach with a higher generation than {generation}"
            )));
        }
        // Recorded before any index is read: from now on an older
        // attachment deletes nothing (see crate::remote::generation).
        generation::write_generation(&storage, tenant_id, generation, &cancel).await.map_err(remote_err)?;
        let result = self.download_tenant(&storage, tenant_id, generation).await;
        match result {
            Ok(timelines) => {
                let tenant = self.load_tenant(tenant_id, timelines).await?;
                tenant.generation.store(generation, Ordering::Release);
                info!(%tenant_id, generation, timelines = tenant.timelines().len(), "attached tenant");
                Ok(tenant)
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&tenant_dir).await;
                Err(e)
            }
        }
    }

    /// Download every timeline's newest index (at or below `generation`)
    /// and write it locally as `generation` (no layer file: they are
    /// downloaded on demand).
    async fn download_tenant(
        &self,
        storage: &remote_storage::GenericRemoteStorage,
        tenant_id: TenantId,
        generation: u32,
    ) -> Result<Vec<utils::id::TimelineId>, RepoError> {
        let cancel = CancellationToken::new();
        let ids = download::list_timelines(storage, tenant_id, &cancel).await.map_err(remote_err)?;
        let timelines_dir = self.conf.workdir.join("tenants").join(tenant_id.to_string()).join("timelines");
        let d = timelines_dir.clone();
        tokio::task::spawn_blocking(move || utils::fs::create_dir_all_durable(&d))
            .await
            .map_err(remote_err)?
            .map_err(|e| remote_err(format!("{}: {e}", timelines_dir.display())))?;
        if let Some(overrides) = remote_config::download_tenant_config(storage, tenant_id, &cancel).await.map_err(remote_err)? {
            let dir = self.conf.workdir.join("tenants").join(tenant_id.to_string());
            let path = dir.join(tenant_config::CONFIG_FILE);
            tokio::task::spawn_blocking(move || tenant_config::save(&dir, &overrides))
                .await
                .map_err(remote_err)?
                .map_err(|e| remote_err(format!("{}: {e}", path.display())))?;
        }
        let mut attached = Vec::new();
        for id in ids {
            let Some((found, index)) =
                download::newest_index(storage, tenant_id, id, generation, &cancel).await.map_err(remote_err)?
            else {
                continue;
            };
            let dir = self.timeline_dir(tenant_id, id);
            let (layers, bytes) = (index.layers.len(), index.layers.iter().map(|l| l.size_bytes).sum::<u64>());
            let local = IndexPart { generation, ..index };
            let d = dir.clone();
            tokio::task::spawn_blocking(move || utils::fs::create_dir_all_durable(&d).and_then(|()| index::save(&d, &local)))
                .await
                .map_err(remote_err)?
                .map_err(|e| remote_err(format!("{}: {e}", dir.display())))?;
            info!(%tenant_id, timeline_id = %id, from_generation = found, remote_layers = layers, remote_bytes = bytes, "attached timeline (layers downloaded on demand)");
            attached.push(id);
        }
        Ok(attached)
    }

    /// Check that remote storage holds the layers a loaded timeline
    /// directory lacks (see the module doc).
    pub(crate) async fn check_remote_only_layers(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        dir: &LoadedDir,
    ) -> Result<(), RepoError> {
        let Some(first) = dir.missing.first() else { return Ok(()) };
        let index_path = self.timeline_dir(tenant_id, timeline_id).join(index::INDEX_FILE);
        let Some(storage) = &self.conf.remote_storage else {
            return Err(IndexError::MissingLayer { path: index_path, name: first.name.clone() }.into());
        };
        let cancel = CancellationToken::new();
        let generation = dir.index.generation;
        let remote = match download::newest_index(storage, tenant_id, timeline_id, generation, &cancel).await {
            Ok(Some((_, remote))) => remote,
            Ok(None) => {
                return Err(remote_err(format!(
                    "index file {} names layer file {}, which is missing, and remote storage has no index of the timeline",
                    index_path.display(),
                    first.name
                )))
            }
            Err(e) => {
                warn!(%tenant_id, %timeline_id, remote_only = dir.missing.len(), "cannot read the remote index to check the layers missing locally ({e}); loading them as remote layers");
                return Ok(());
            }
        };
        let names: HashMap<&str, u64> = remote.layers.iter().map(|l| (l.name.as_str(), l.size_bytes)).collect();
        if let Some(l) = dir.missing.iter().find(|l| names.get(l.name.as_str()) != Some(&l.size_bytes)) {
            return Err(remote_err(format!(
                "index file {} names layer file {} of {} bytes, which is missing locally and not in the newest remote index (generation {generation} or older) either",
                index_path.display(),
                l.name,
                l.size_bytes
            )));
        }
        info!(%tenant_id, %timeline_id, remote_only = dir.missing.len(), "layers not on local disk are in remote storage (downloaded on demand)");
        Ok(())
    }

    /// Flush every timeline of the tenant, wait for its uploads, and remove
    /// its local state.
    pub async fn detach_tenant(&self, tenant_id: TenantId) -> Result<(), RepoError> {
        let tenant = self.get_tenant(tenant_id)?;
        for tl in tenant.timelines() {
            crate::ingest::walreceiver::remove(&tl).await;
            tl.freeze_and_flush().await?;
            if let Some(remote) = tl.remote() {
                remote.wait_uploaded().await;
                remote.shutdown();
            }
            tl.shutdown();
        }
        self.tenants.write().unwrap_or_else(|e| e.into_inner()).remove(&tenant_id);
        let dir = tenant.path.clone();
        tokio::fs::remove_dir_all(&dir).await.map_err(|e| remote_err(format!("removing {}: {e}", dir.display())))?;
        info!(%tenant_id, "detached tenant");
        Ok(())
    }
}
