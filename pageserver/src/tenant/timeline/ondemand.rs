//! On-demand download of a timeline's remote layers (seed 001): a read
//! that reaches a layer whose file is not on local disk downloads it, then
//! reads it. Also the per-timeline residency numbers (resident bytes,
//! downloads and evictions) and their gauges.
//!
//! Owns: the downloads in flight of this timeline's layers — one per layer,
//! however many readers wait for it.
//!
//! Invariants:
//! * At most one download of a layer at a time: a reader takes the
//!   in-flight map's lock, checks residence again under it, then joins the
//!   download in flight or starts one. A download marks the layer resident
//!   *before* it leaves the map, so a reader that finds no download in
//!   flight finds the layer resident (or starts the next attempt after a
//!   failure).
//! * A download is a spawned task: a reader that goes away does not cancel
//!   it for the others (nor for the next reader); only the shutdown of the
//!   timeline's remote client does.
//! * The file appears under the layer's name only complete and with the
//!   size the index records (remote_storage writes `<name>.download.tmp`,
//!   checks the size, fsyncs and renames; a leftover temporary file is
//!   removed at the next load).
//! * Readers pin the layer before they look at its residence
//!   ([`crate::storage::file::LayerPin`]), so what a download brought in
//!   stays resident until their read is done.
//! * Failures: remote_storage retries transient errors within an attempt;
//!   a failed attempt is repeated up to [`DOWNLOAD_ATTEMPTS`] times in all
//!   (not for failures that cannot heal: object missing, size mismatch),
//!   then every waiting reader gets [`PageReconstructError::LayerDownload`]
//!   naming the layer, and the next read tries again.
//!
//! Cancellation: [`Timeline::ensure_resident`] is cancel-safe: dropping it
//! drops the reader's pin and its wait, never the download.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remote_storage::RemoteStorageError;
use tokio::sync::{watch, Notify};
use tracing::{info_span, warn, Instrument};

use super::{PageReconstructError, Result, Timeline};
use crate::metrics;
use crate::remote::upload_queue::RemoteTimelineClient;
use crate::remote::{download, RemoteError};
use crate::storage::file::{LayerFile, LayerPin};
use crate::storage::index::IndexLayer;

/// Attempts of one layer download (each with remote_storage's own retries).
pub const DOWNLOAD_ATTEMPTS: u32 = 3;
/// Wait before the second attempt; each further one waits 4× longer.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(250);

/// The outcome of a download, as waiting readers see it.
type Outcome = Option<std::result::Result<(), String>>;

/// The on-demand state of one timeline.
#[derive(Default)]
pub(crate) struct OnDemand {
    /// Layer file name → the outcome channel of its download in flight.
    in_flight: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    downloads: AtomicU64,
    evictions: AtomicU64,
    /// Woken after each download (the pageserver's eviction task).
    evictor: Mutex<Option<Arc<Notify>>>,
}

impl OnDemand {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<Outcome>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_evictor(&self) {
        if let Some(n) = self.evictor.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            n.notify_one();
        }
    }
}

/// Residency numbers of a timeline (see [`Timeline::residency`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Residency {
    /// Layers (and their bytes) with their file on local disk.
    pub resident_layers: usize,
    pub resident_bytes: u64,
    /// Layers only in remote storage.
    pub remote_only_layers: usize,
    /// Layer downloads completed / evictions done since the timeline loaded.
    pub downloads: u64,
    pub evictions: u64,
    /// Downloads in flight now.
    pub downloads_in_flight: usize,
}

fn retryable(e: &RemoteError) -> bool {
    match e {
        RemoteError::Storage(s) => !matches!(
            s,
            RemoteStorageError::NotFound { .. }
                | RemoteStorageError::SizeMismatch { .. }
                | RemoteStorageError::Cancelled { .. }
                | RemoteStorageError::InvalidPath(_)
        ),
        RemoteError::BadObject { .. } => false,
        RemoteError::Local { .. } => true,
    }
}

impl Timeline {
    /// A pin of `layer` (one of this timeline's layers), with its file on
    /// local disk: downloaded first if it is remote (see the module doc).
    pub async fn ensure_resident(&self, layer: &Arc<LayerFile>) -> Result<LayerPin> {
        let pin = layer.pin();
        if !pin.is_resident() {
            self.download_remote_layer(layer).await?;
            self.update_resident_size_metric();
        }
        Ok(pin)
    }

    /// Pins of every layer of `layers`, each resident (downloads run
    /// concurrently).
    pub(crate) async fn ensure_all_resident(&self, layers: &[Arc<LayerFile>]) -> Result<Vec<LayerPin>> {
        futures::future::try_join_all(layers.iter().map(|l| self.ensure_resident(l))).await
    }

    /// Wait for `layer` to become resident, joining the download in flight
    /// or starting one.
    async fn download_remote_layer(&self, layer: &Arc<LayerFile>) -> Result<()> {
        let name = layer.file_name();
        let mut rx = {
            let mut in_flight = self.ondemand.lock();
            if layer.is_resident() {
                return Ok(());
            }
            match in_flight.get(&name) {
                Some(rx) => rx.clone(),
                None => {
                    let Some(remote) = self.remote().cloned() else {
                        return Err(PageReconstructError::LayerDownload {
                            layer: name,
                            timeline_id: self.timeline_id,
                            reason: "the file is not on local disk and no remote storage is configured".into(),
                        });
                    };
                    let (tx, rx) = watch::channel(None);
                    in_flight.insert(name.clone(), rx.clone());
                    let span = info_span!("layer_download", tenant_id = %self.tenant_id, timeline_id = %self.timeline_id, layer = %name);
                    let task = run_download(remote, Arc::clone(layer), name.clone(), Arc::clone(&self.ondemand), tx);
                    tokio::spawn(task.instrument(span));
                    rx
                }
            }
        };
        let outcome = match rx.wait_for(|o| o.is_some()).await {
            Ok(o) => o.clone().unwrap_or(Ok(())),
            Err(_) => Err("the download task ended without an outcome".to_string()),
        };
        outcome.map_err(|reason| PageReconstructError::LayerDownload { layer: name, timeline_id: self.timeline_id, reason })
    }

    /// Resident and remote-only layers, downloads and evictions.
    pub fn residency(&self) -> Residency {
        let map = self.read_layers();
        let mut r = Residency {
            downloads: self.ondemand.downloads.load(Ordering::Relaxed),
            evictions: self.ondemand.evictions.load(Ordering::Relaxed),
            downloads_in_flight: self.ondemand.lock().len(),
            ..Residency::default()
        };
        for l in map.historic() {
            if l.is_resident() {
                r.resident_layers += 1;
                r.resident_bytes += l.size_bytes;
            } else {
                r.remote_only_layers += 1;
            }
        }
        r
    }

    /// Bytes of the layer files on local disk.
    pub fn resident_physical_size_bytes(&self) -> u64 {
        self.read_layers().historic().filter(|l| l.is_resident()).map(|l| l.size_bytes).sum()
    }

    /// Set `strata_pageserver_resident_physical_size_bytes` (and seed 001's
    /// `pageserver_resident_physical_size`) of this timeline.
    pub(crate) fn update_resident_size_metric(&self) {
        let (tenant, timeline) = (self.tenant_id.to_string(), self.timeline_id.to_string());
        metrics::RESIDENT_PHYSICAL_SIZE.set(&tenant, &timeline, self.resident_physical_size_bytes());
    }

    /// Count an eviction of one of this timeline's layers.
    pub(crate) fn note_eviction(&self) {
        self.ondemand.evictions.fetch_add(1, Ordering::Relaxed);
        metrics::LAYER_EVICTIONS.inc();
    }

    /// Wake `evictor` after each download (the pageserver's eviction task).
    pub(crate) fn set_evictor(&self, evictor: Arc<Notify>) {
        *self.ondemand.evictor.lock().unwrap_or_else(|e| e.into_inner()) = Some(evictor);
    }
}

/// Download `layer` (attempts and waits: see the module doc), mark it
/// resident, leave the in-flight map, then tell the waiting readers.
async fn run_download(
    remote: Arc<RemoteTimelineClient>,
    layer: Arc<LayerFile>,
    name: String,
    state: Arc<OnDemand>,
    tx: watch::Sender<Outcome>,
) {
    let entry = IndexLayer::new(name.clone(), &layer.desc, layer.size_bytes);
    let dir = layer.path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let cancel = remote.cancel_token();
    let mut wait = FIRST_RETRY_WAIT;
    let mut attempt = 1;
    let result = loop {
        let r = download::download_layer(remote.storage(), remote.tenant_id, remote.timeline_id, &entry, &dir, cancel).await;
        match r {
            Ok(_) => break Ok(()),
            Err(e) if attempt < DOWNLOAD_ATTEMPTS && retryable(&e) && !cancel.is_cancelled() => {
                warn!(attempt, retry_in_ms = wait.as_millis() as u64, "downloading the layer failed, will retry: {e}");
                tokio::select! {
                    _ = cancel.cancelled() => break Err(format!("cancelled (shutdown) after: {e}")),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait *= 4;
                attempt += 1;
            }
            Err(e) => break Err(format!("{e} (attempt {attempt} of {DOWNLOAD_ATTEMPTS})")),
        }
    };
    match &result {
        Ok(()) => {
            layer.mark_resident();
            state.downloads.fetch_add(1, Ordering::Relaxed);
        }
        Err(reason) => {
            metrics::LAYER_DOWNLOAD_ERRORS.inc();
            warn!("downloading the layer failed: {reason}");
        }
    }
    state.lock().remove(&name);
    tx.send_replace(Some(result));
    state.wake_evictor();
}
