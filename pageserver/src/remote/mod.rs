//! Object storage for a pageserver: the local disk becomes a cache of what
//! is uploaded, and a tenant can be attached on a pageserver that has no
//! local state for it.
//!
//! * [`layout`]: the object keys (layers, per-generation index objects, the
//!   tenant's generation record).
//! * [`generation`]: the generation record written by the control plane at
//!   each attach, and the check a pageserver makes before it deletes
//!   objects or advances `remote_consistent_lsn`.
//! * [`upload_queue`]: [`upload_queue::RemoteTimelineClient`], one per
//!   timeline: layer uploads, index uploads and remote deletions in an
//!   order that keeps the remote state consistent at every moment.
//! * [`tenant_config`]: the tenant's settings, uploaded when they change
//!   and restored by attach.
//! * [`download`]: reading remote indexes and downloading layer files
//!   (attach, and reads of layers that are not resident).
pub mod download;
pub mod generation;
pub mod layout;
pub mod tenant_config;
pub mod upload_queue;

use remote_storage::RemoteStorageError;

/// Failures of the remote side of a timeline.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Storage(#[from] RemoteStorageError),
    /// A remote object that should be ours is not readable as such.
    #[error("remote object {path}: {reason}")]
    BadObject { path: String, reason: String },
    /// A local file the queue needs is gone or unreadable.
    #[error("local {path}: {reason}")]
    Local { path: String, reason: String },
}
