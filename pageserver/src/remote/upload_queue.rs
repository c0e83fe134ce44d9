//! [`RemoteTimelineClient`]: the upload queue of one timeline. The timeline
//! schedules, in the order its local index changes, the layer files it
//! wrote, the index that names them, and the layers a compaction or GC
//! removed; one task per timeline carries them out.
//!
//! Invariants (what makes the remote state consistent at every moment):
//! * The remote index never names a layer that is not uploaded: a batch
//!   uploads its layers first, then its index.
//! * A layer is deleted remotely only after an index without it is
//!   uploaded: a batch's deletions come after its index, and indexes only
//!   ever drop a removed layer (a layer name never comes back).
//! * Consecutive index uploads are merged: a batch uploads only the last
//!   index queued in it (it describes a later state that names every layer
//!   the batch uploaded and still needs).
//! * Deleting remote objects and advancing `remote_consistent_lsn` happen
//!   only while the tenant's generation record still names this
//!   attachment's generation (see [`super::generation`]); a stale
//!   attachment keeps uploading its own index object, which no newer
//!   attachment reads, but deletes nothing and reports nothing.
//! * A failed batch is retried (whole, with exponential backoff capped at
//!   [`MAX_RETRY_BACKOFF`]) before anything queued after it; every step is
//!   idempotent.
//!
//! A crash loses the queue; the task's first step (reconcile) rebuilds it
//! at the next load by comparing the local index with the newest remote
//! one, and puts what it finds ahead of anything scheduled meanwhile. It
//! also deletes this generation's layer objects that neither index names
//! (a crash between an index upload and its deletions leaves them), so
//! a crash leaves no orphan behind once the timeline is loaded again.
//!
//! Failpoints (`utils::failpoint`, crash tests): `upload-layer-done` (after
//! each layer upload; `kill@N` dies with N layers uploaded),
//! `upload-before-index`, `upload-before-deletions` (the index without the
//! removed layers is uploaded, their objects are not deleted yet).
//!
//! Cancellation: scheduling never waits. [`RemoteTimelineClient::shutdown`]
//! cancels the task; an operation cut short is repeated at the next load
//! (reconcile). [`RemoteTimelineClient::wait_uploaded`] may be dropped.
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use remote_storage::GenericRemoteStorage;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use super::{download, generation, layout, RemoteError};
use crate::metrics;
use crate::storage::index::{IndexLayer, IndexPart};
use crate::storage::LayerDesc;

/// Longest wait between attempts of a failing batch.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);
/// Layer uploads in flight at once per timeline.
const UPLOAD_CONCURRENCY: usize = 4;

/// One queued operation.
#[derive(Debug, Clone)]
enum Op {
    UploadLayer(IndexLayer),
    UploadIndex(Box<IndexPart>),
    Delete(Vec<String>),
}

#[derive(Default)]
struct Queue {
    pending: Vec<Op>,
    /// Number of operations ever scheduled / ever finished.
    scheduled: u64,
    /// Layers named by the last uploaded index, with their sizes.
    remote_layers: BTreeMap<String, u64>,
    last_error: Option<String>,
    stale: bool,
}

/// What [`RemoteTimelineClient::status`] reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoteStatus {
    pub remote_consistent_lsn: Lsn,
    pub remote_physical_size: u64,
    pub queued_operations: usize,
    pub stale_generation: bool,
    pub last_error: Option<String>,
}

/// The upload queue of one timeline (see the module doc).
pub struct RemoteTimelineClient {
    storage: GenericRemoteStorage,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub generation: u32,
    local_dir: PathBuf,
    queue: Mutex<Queue>,
    wake: Notify,
    finished: watch::Sender<u64>,
    remote_consistent_lsn: AtomicU64,
    cancel: CancellationToken,
}

impl RemoteTimelineClient {
    /// A client for the timeline in `local_dir`, whose durable local index
    /// is `local`; its task reconciles with the remote state first, then
    /// runs the queue until [`RemoteTimelineClient::shutdown`].
    pub fn start(
        storage: GenericRemoteStorage,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        local_dir: PathBuf,
        local: &IndexPart,
    ) -> Arc<RemoteTimelineClient> {
        let generation = local.generation;
        let client = Arc::new(RemoteTimelineClient {
            storage,
            tenant_id,
            timeline_id,
            generation,
            local_dir,
            // The reconcile counts as the first operation.
            queue: Mutex::new(Queue { scheduled: 1, ..Queue::default() }),
            wake: Notify::new(),
            finished: watch::channel(0).0,
            remote_consistent_lsn: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        });
        let span = info_span!("upload_queue", %tenant_id, %timeline_id, generation);
        tokio::spawn(Arc::clone(&client).run(local.clone()).instrument(span));
        client
    }

    pub fn storage(&self) -> &GenericRemoteStorage {
        &self.storage
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, ops: impl IntoIterator<Item = Op>) {
        let mut q = self.lock();
        for op in ops {
            q.pending.push(op);
            q.scheduled += 1;
        }
        self.pending_gauge().set(q.pending.len() as i64);
        drop(q);
        self.wake.notify_one();
    }

    fn pending_gauge(&self) -> prometheus::IntGauge {
        metrics::UPLOAD_QUEUE_PENDING.with_label_values(&[&self.tenant_id.to_string(), &self.timeline_id.to_string()])
    }

    /// Queue the new layer files of a local index change, then the index.
    pub fn schedule_index_with_layers(&self, new_layers: &[IndexLayer], index: &IndexPart) {
        let uploads = new_layers.iter().cloned().map(Op::UploadLayer);
        self.push(uploads.chain([Op::UploadIndex(Box::new(index.clone()))]));
    }

    /// Queue the remote deletion of layers that an index queued before no
    /// longer names.
    pub fn schedule_deletions(&self, names: Vec<String>) {
        if !names.is_empty() {
            self.push([Op::Delete(names)]);
        }
    }

    /// After a load: upload what the local index names and the newest
    /// remote index at or below our generation lacks, then the local index,
    /// then delete what only the remote index names — ahead of what was
    /// scheduled meanwhile.
    async fn reconcile(&self, local: &IndexPart) -> Result<(), RemoteError> {
        let remote = download::newest_index(&self.storage, self.tenant_id, self.timeline_id, self.generation, &self.cancel).await?;
        let remote_layers: BTreeMap<String, u64> =
            remote.iter().flat_map(|(_, i)| i.layers.iter().map(|l| (l.name.clone(), l.size_bytes))).collect();
        let missing: Vec<IndexLayer> =
            local.layers.iter().filter(|l| remote_layers.get(&l.name) != Some(&l.size_bytes)).cloned().collect();
        let local_names: HashSet<&str> = local.layers.iter().map(|l| l.name.as_str()).collect();
        let mut dropped: Vec<String> = remote_layers.keys().filter(|n| !local_names.contains(n.as_str())).cloned().collect();
        dropped.extend(self.own_orphans(&local_names, &remote_layers).await?);
        info!(
            remote_generation = remote.as_ref().map(|(g, _)| *g),
            to_upload = missing.len(),
            to_delete = dropped.len(),
            "reconciling with remote storage"
        );
        let mut ops: Vec<Op> = missing.into_iter().map(Op::UploadLayer).collect();
        ops.push(Op::UploadIndex(Box::new(local.clone())));
        if !dropped.is_empty() {
            ops.push(Op::Delete(dropped));
        }
        let mut q = self.lock();
        q.remote_layers = remote_layers;
        q.scheduled += ops.len() as u64;
        let meanwhile = std::mem::take(&mut q.pending);
        q.pending = ops.into_iter().chain(meanwhile).collect();
        Ok(())
    }

    /// Layer objects written by this generation that neither the local nor
    /// the remote index names: removed by a compaction or GC whose remote
    /// deletion a crash cut short (after the index without them was
    /// uploaded). Only this generation writes names with its number, and
    /// every layer it uploads is named by its local index first, so such an
    /// object is garbage. Older generations' objects are left alone (their
    /// indexes may still be read by an attach at their generation).
    async fn own_orphans(
        &self,
        local_names: &HashSet<&str>,
        remote_layers: &BTreeMap<String, u64>,
    ) -> Result<Vec<String>, RemoteError> {
        let prefix = layout::timeline_prefix(self.tenant_id, self.timeline_id);
        let listed = self.storage.list(Some(&prefix), &self.cancel).await?;
        let own = |name: &str| {
            LayerDesc::parse_file_name(name).is_some_and(|d| d.generation == self.generation && d.file_name() == name)
        };
        Ok(listed
            .into_iter()
            .map(|(p, _)| p.object_name().to_string())
            .filter(|n| own(n) && !local_names.contains(n.as_str()) && !remote_layers.contains_key(n))
            .collect())
    }

    /// Wait until everything scheduled before this call is done.
    pub async fn wait_uploaded(&self) {
        let target = self.lock().scheduled;
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|done| *done >= target).await;
    }

    /// The disk-consistent LSN of the last index uploaded while this
    /// attachment's generation was current.
    pub fn remote_consistent_lsn(&self) -> Lsn {
        Lsn(self.remote_consistent_lsn.load(Ordering::Acquire))
    }

    /// Whether layer `name` is named by the last uploaded index (and so
    /// safe to evict locally).
    pub fn is_uploaded(&self, name: &str) -> bool {
        self.lock().remote_layers.contains_key(name)
    }

    /// The size the last uploaded index records for layer `name`, if it
    /// names it.
    pub fn uploaded_size(&self, name: &str) -> Option<u64> {
        self.lock().remote_layers.get(name).copied()
    }

    /// Whether a newer generation holds the tenant (as last checked): then
    /// it may delete objects this attachment's index names.
    pub fn is_stale(&self) -> bool {
        self.lock().stale
    }

    /// Cancelled by [`RemoteTimelineClient::shutdown`]: for the timeline's
    /// other remote operations (layer downloads).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn status(&self) -> RemoteStatus {
        let q = self.lock();
        RemoteStatus {
            remote_consistent_lsn: self.remote_consistent_lsn(),
            remote_physical_size: q.remote_layers.values().sum(),
            queued_operations: q.pending.len(),
            stale_generation: q.stale,
            last_error: q.last_error.clone(),
        }
    }

    /// Stop the task (what is still queued is redone by the next load).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Stop the queue and delete every object of the timeline (while this
    /// attachment's generation is current; a stale one deletes nothing).
    pub async fn delete_everything(&self) -> Result<(), RemoteError> {
        self.shutdown();
        let cancel = CancellationToken::new();
        if !generation::is_current(&self.storage, self.tenant_id, self.generation, &cancel).await? {
            warn!("timeline deleted locally only: a newer generation holds the tenant");
            return Ok(());
        }
        let prefix = layout::timeline_prefix(self.tenant_id, self.timeline_id);
        let objects: Vec<_> = self.storage.list(Some(&prefix), &cancel).await?.into_iter().map(|(p, _)| p).collect();
        self.storage.delete_many(&objects, &cancel).await?;
        info!(objects = objects.len(), "deleted the timeline's remote objects");
        Ok(())
    }

    async fn run(self: Arc<Self>, local: IndexPart) {
        let mut finished = 0u64;
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.reconcile(&local) => r,
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    metrics::UPLOAD_QUEUE_ERRORS.inc();
                    warn!(retry_in_ms = backoff.as_millis() as u64, "reading the remote index failed, will retry: {e}");
                    self.lock().last_error = Some(e.to_string());
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
                }
            }
        }
        backoff = Duration::from_millis(100);
        loop {
            let (batch, upto) = {
                let mut q = self.lock();
                (std::mem::take(&mut q.pending), q.scheduled)
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = self.wake.notified() => continue,
                }
            }
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.process(&batch) => r,
            };
            match result {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    finished = finished.max(upto);
                    self.finished.send_replace(finished);
                    let mut q = self.lock();
                    q.last_error = None;
                    self.pending_gauge().set(q.pending.len() as i64);
                }
                Err(e) => {
                    metrics::UPLOAD_QUEUE_ERRORS.inc();
                    warn!(retry_in_ms = backoff.as_millis() as u64, "upload batch failed, will retry: {e}");
                    {
                        let mut q = self.lock();
                        q.last_error = Some(e.to_string());
                        let later = std::mem::take(&mut q.pending);
                        q.pending = batch.into_iter().chain(later).collect();
                    }
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
                }
            }
        }
    }

    /// Layers, then the last index, then deletions (see the module doc).
    async fn process(&self, batch: &[Op]) -> Result<(), RemoteError> {
        let mut layers = Vec::new();
        let mut index = None;
        let mut deletions = Vec::new();
        for op in batch {
            match op {
                Op::UploadLayer(l) => layers.push(l),
                Op::UploadIndex(i) => index = Some(i),
                Op::Delete(names) => deletions.extend(names.iter().cloned()),
            }
        }
        let doomed: HashSet<&str> = deletions.iter().map(String::as_str).collect();
        let wanted: Vec<&IndexLayer> = layers.into_iter().filter(|l| !doomed.contains(l.name.as_str())).collect();
        self.upload_layers(&wanted).await?;
        utils::failpoint::hit("upload-before-index");
        if let Some(index) = index {
            self.upload_index(index).await?;
        }
        if !deletions.is_empty() {
            utils::failpoint::hit("upload-before-deletions");
            self.delete_layers(deletions).await?;
        }
        Ok(())
    }

    async fn upload_layers(&self, layers: &[&IndexLayer]) -> Result<(), RemoteError> {
        let uploads: Vec<_> = layers.iter().map(|l| self.upload_layer((*l).clone())).collect();
        let results: Vec<_> = futures::stream::iter(uploads).buffer_unordered(UPLOAD_CONCURRENCY).collect().await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    async fn upload_layer(&self, layer: IndexLayer) -> Result<(), RemoteError> {
        let local = self.local_dir.join(&layer.name);
        let to = layout::layer_path(self.tenant_id, self.timeline_id, &layer.name);
        let bytes = self.storage.upload_file(&local, &to, &self.cancel).await?;
        if bytes != layer.size_bytes {
            return Err(RemoteError::Local {
                path: local.display().to_string(),
                reason: format!("uploaded {bytes} bytes, the index records {}", layer.size_bytes),
            });
        }
        metrics::LAYER_UPLOADS.inc();
        utils::failpoint::hit("upload-layer-done");
        Ok(())
    }

    async fn upload_index(&self, index: &IndexPart) -> Result<(), RemoteError> {
        let path = layout::index_path(self.tenant_id, self.timeline_id, self.generation);
        let body = Bytes::from(IndexPart { generation: self.generation, ..index.clone() }.to_json_bytes());
        self.storage.upload_bytes(body, &path, &self.cancel).await?;
        metrics::INDEX_UPLOADS.inc();
        let layers: BTreeMap<String, u64> = index.layers.iter().map(|l| (l.name.clone(), l.size_bytes)).collect();
        let size: u64 = layers.values().sum();
        self.lock().remote_layers = layers;
        metrics::REMOTE_PHYSICAL_SIZE.set(&self.tenant_id.to_string(), &self.timeline_id.to_string(), size);
        if self.still_current().await? {
            let lsn = index.metadata.disk_consistent_lsn;
            self.remote_consistent_lsn.fetch_max(lsn.0, Ordering::AcqRel);
        }
        Ok(())
    }

    async fn delete_layers(&self, names: Vec<String>) -> Result<(), RemoteError> {
        if !self.still_current().await? {
            warn!(layers = names.len(), "not deleting remote layers: a newer generation holds the tenant");
            return Ok(());
        }
        let paths: Vec<_> = names.iter().map(|n| layout::layer_path(self.tenant_id, self.timeline_id, n)).collect();
        self.storage.delete_many(&paths, &self.cancel).await?;
        metrics::REMOTE_DELETIONS.inc_by(paths.len() as u64);
        Ok(())
    }

    async fn still_current(&self) -> Result<bool, RemoteError> {
        let current = generation::is_current(&self.storage, self.tenant_id, self.generation, &self.cancel).await?;
        if !current {
            metrics::STALE_GENERATION_SKIPS.inc();
            let mut q = self.lock();
            if !q.stale {
                warn!("a newer generation holds this tenant: remote deletions and remote_consistent_lsn are frozen");
            }
            q.stale = true;
        }
        Ok(current)
    }
}
