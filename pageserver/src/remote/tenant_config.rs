//! A tenant's settings in object storage: `tenants/<tenant>/config.json`,
//! the same bytes as the local file ([`crate::tenant::config`]), uploaded
//! after every local change and read by attach, so that a tenant attached
//! on an empty pageserver keeps its settings.
//!
//! Invariant: the object is written only after the local file, so it is
//! never newer than what some pageserver made durable; the last writer
//! wins (settings are operator actions, not data).
//!
//! Cancellation: each function is one object-storage operation; a dropped
//! upload leaves the old or the new object.
use std::path::PathBuf;

use bytes::Bytes;
use remote_storage::GenericRemoteStorage;
use tokio_util::sync::CancellationToken;
use utils::id::TenantId;

use super::layout::tenant_config_path;
use super::RemoteError;
use crate::tenant::config::{self, TenantConfOverrides};

/// Upload `overrides` as the tenant's settings object.
pub async fn upload_tenant_config(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    overrides: &TenantConfOverrides,
    cancel: &CancellationToken,
) -> Result<(), RemoteError> {
    let body = Bytes::from(config::encode(overrides));
    Ok(storage.upload_bytes(body, &tenant_config_path(tenant_id), cancel).await?)
}

/// The tenant's settings object, if there is one.
pub async fn download_tenant_config(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    cancel: &CancellationToken,
) -> Result<Option<TenantConfOverrides>, RemoteError> {
    let path = tenant_config_path(tenant_id);
    match storage.download_bytes(&path, cancel).await {
        Ok(body) => config::decode(&body, &PathBuf::from(path.to_string()))
            .map(Some)
            .map_err(|e| RemoteError::BadObject { path: path.to_string(), reason: e.to_string() }),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}
