//! Generations: each attach of a tenant gets a higher number from the
//! control plane (which keeps the numbers in its state); the attaching
//! pageserver records it in object storage
//! (`tenants/<tenant>/generation.json`) before it reads anything, and
//! refuses a number lower than the recorded one.
//! The record is the authority a pageserver checks before it does anything
//! that a newer attachment could be hurt by: deleting remote objects and
//! advancing `remote_consistent_lsn` (which lets safekeepers delete WAL).
//!
//! Why this is safe (the split-brain case: two pageservers that both
//! believe they hold a tenant): the new attachment's record is written
//! before it reads any index. An old attachment deletes a layer only after
//! it uploaded an index without it and then found the record unchanged; if
//! it found the record unchanged, the new attachment had not started to
//! read yet, so what it reads does not name the layer. If the record has
//! moved, the old attachment deletes nothing and stops advancing its LSN.
//!
//! A tenant with no record (created before generations were recorded, or
//! by a test that writes none) counts as current.
//!
//! Cancellation: the functions are single object-storage operations; a
//! dropped call changes nothing or writes the whole record.
use bytes::Bytes;
use remote_storage::GenericRemoteStorage;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utils::id::TenantId;

use super::layout::generation_record_path;
use super::RemoteError;

/// The content of `generation.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: u32,
}

/// The recorded generation of `tenant_id`, if a record exists.
pub async fn read_generation(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    cancel: &CancellationToken,
) -> Result<Option<u32>, RemoteError> {
    let path = generation_record_path(tenant_id);
    match storage.download_bytes(&path, cancel).await {
        Ok(body) => match serde_json::from_slice::<GenerationRecord>(&body) {
            Ok(record) => Ok(Some(record.generation)),
            Err(e) => Err(RemoteError::BadObject { path: path.to_string(), reason: format!("not a generation record: {e}") }),
        },
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Record `generation` for `tenant_id` (done by attach).
pub async fn write_generation(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    generation: u32,
    cancel: &CancellationToken,
) -> Result<(), RemoteError> {
    let body = serde_json::to_vec(&GenerationRecord { generation }).unwrap_or_default();
    Ok(storage.upload_bytes(Bytes::from(body), &generation_record_path(tenant_id), cancel).await?)
}

/// Whether an attachment with `own` generation is still the newest one.
pub async fn is_current(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    own: u32,
    cancel: &CancellationToken,
) -> Result<bool, RemoteError> {
    Ok(read_generation(storage, tenant_id, cancel).await?.is_none_or(|recorded| recorded <= own))
}
