//! Reading a tenant's remote state: which timelines it has, the newest
//! index of a timeline at or below a generation, and layer files.
//!
//! Invariants: a downloaded layer appears under its final name only
//! complete and with the size its index records (remote_storage downloads
//! to a temporary name, checks the size, renames and fsyncs); an index
//! object is checked (version, checksum, layer entries) before it is used.
//!
//! Cancellation: every function is cancel-safe: a dropped download leaves
//! at most a temporary file, which the next load of the timeline removes.
use std::collections::BTreeSet;
use std::path::Path;

use remote_storage::GenericRemoteStorage;
use tokio_util::sync::CancellationToken;
use utils::id::{TenantId, TimelineId};

use super::layout;
use super::RemoteError;
use crate::storage::index::{IndexLayer, IndexPart};

/// The timelines with at least one object under `tenants/<tenant>/timelines`.
pub async fn list_timelines(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    cancel: &CancellationToken,
) -> Result<BTreeSet<TimelineId>, RemoteError> {
    let objects = storage.list(Some(&layout::timelines_prefix(tenant_id)), cancel).await?;
    Ok(objects.iter().filter_map(|(key, _)| layout::parse_timeline_of(key)).collect())
}

/// The newest index object of a timeline written by a generation at or
/// below `max_generation`, and that generation; `None` if there is none.
pub async fn newest_index(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    max_generation: u32,
    cancel: &CancellationToken,
) -> Result<Option<(u32, IndexPart)>, RemoteError> {
    let objects = storage.list(Some(&layout::timeline_prefix(tenant_id, timeline_id)), cancel).await?;
    let newest = objects
        .iter()
        .filter_map(|(key, _)| layout::parse_index_generation(key.object_name()))
        .filter(|g| *g <= max_generation)
        .max();
    let Some(generation) = newest else { return Ok(None) };
    let path = layout::index_path(tenant_id, timeline_id, generation);
    let body = storage.download_bytes(&path, cancel).await?;
    let index = IndexPart::from_json_bytes(Path::new(path.as_str()), &body)
        .map_err(|e| RemoteError::BadObject { path: path.to_string(), reason: e.to_string() })?;
    Ok(Some((generation, index)))
}

/// Download `layer` of a timeline into `dir` under its own name.
pub async fn download_layer(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    layer: &IndexLayer,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<u64, RemoteError> {
    let from = layout::layer_path(tenant_id, timeline_id, &layer.name);
    let started = std::time::Instant::now();
    let bytes = storage.download_to_file(&from, &dir.join(&layer.name), Some(layer.size_bytes), cancel).await?;
    crate::metrics::LAYER_DOWNLOADS.inc();
    crate::metrics::LAYER_DOWNLOAD_SECONDS.observe(started.elapsed().as_secs_f64());
    tracing::info!(layer = %layer.name, bytes, "downloaded layer");
    Ok(bytes)
}
