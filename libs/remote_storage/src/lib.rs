//! Object storage for Strata: the durable home of layer files, timeline
//! indexes and offloaded WAL, in a local directory or an S3 bucket.
//!
//! A thin layer over the `object_store` crate that owns what every caller
//! would otherwise redo: validated keys ([`RemotePath`]), one configuration
//! shape for config files and the command line ([`RemoteStorageConfig`]),
//! and, around every operation of [`GenericRemoteStorage`], a per-attempt
//! timeout, retries of transient failures with exponential backoff and full
//! jitter (each logged with operation, key, attempt and error), a
//! concurrency limit, cancellation, errors that name the operation and the
//! key ([`RemoteStorageError`]), and Prometheus [`metrics`].
//!
//! Invariants: uploads are atomic (all or nothing under the key); a
//! download to a file never leaves a partial file under the final name;
//! memory per call is bounded (large files go in parts). Cancellation: every
//! operation takes a `CancellationToken` and is also safe to drop; see
//! [`GenericRemoteStorage`]'s module for what is cleaned up.
//!
//! [`testing::MotoServer`] runs a real S3-compatible server for tests.

pub mod cli;
mod config;
mod error;
pub mod metrics;
mod path;
mod retry;
mod storage;
pub mod testing;

pub use config::{
    RemoteLocation, RemoteStorageConfig, S3Location, DEFAULT_BASE_BACKOFF_MS, DEFAULT_CONCURRENCY_LIMIT,
    DEFAULT_MAX_BACKOFF_MS, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_MS,
};
pub use error::{ConfigError, InvalidPathError, Op, RemoteStorageError};
pub use path::RemotePath;
pub use storage::{
    download_tmp_path, GenericRemoteStorage, RemoteObjectMeta, DOWNLOAD_TMP_SUFFIX, PARTS_IN_FLIGHT, PART_SIZE,
    SINGLE_PUT_MAX,
};
pub use tokio_util::sync::CancellationToken;
