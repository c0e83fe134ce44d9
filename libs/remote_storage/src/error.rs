//! What can go wrong with a remote storage operation, and which failures are
//! worth another attempt.
//!
//! Owns [`RemoteStorageError`] (what callers see: one value per operation,
//! after all retries, naming the operation and the key), [`Op`] (the
//! operation names used in errors, logs and metric labels) and the
//! crate-internal [`AttemptError`] (the failure of one attempt, classified as
//! transient or permanent).
//!
//! Invariant: only failures that another attempt can cure are transient —
//! timeouts, connection and transport errors, HTTP 5xx / 408 / 429 and
//! truncated bodies. Not found, already exists, precondition, permission,
//! authentication, invalid path, size mismatch and local file errors are
//! permanent and returned at once.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;

use object_store::client::{HttpError, HttpErrorKind};

/// The operations of [`crate::GenericRemoteStorage`], as named in errors, log
/// lines and the `op` label of the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `upload_file`, `upload_bytes`, `put_if_absent`.
    Upload,
    /// `download_to_file`, `download_bytes`.
    Download,
    /// `delete`, `delete_many`.
    Delete,
    /// `list`.
    List,
    /// `head`.
    Head,
}

impl Op {
    /// The label value: `upload`, `download`, `delete`, `list`, `head`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upload => "upload",
            Op::Download => "download",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Head => "head",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key that is not a valid [`crate::RemotePath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid remote path '{path}': {reason}")]
pub struct InvalidPathError {
    /// The rejected text.
    pub path: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// The failure of one remote storage operation, after its retries.
///
/// `path` is the key the operation was about, relative to the configured
/// prefix (for `list`, the listed prefix; `<root>` for the whole store).
#[derive(Debug, thiserror::Error)]
pub enum RemoteStorageError {
    /// The object does not exist (never returned by `delete`).
    #[error("remote storage {op} of '{path}': object not found")]
    NotFound { op: Op, path: String },

    /// A conditional put found the key already present.
    #[error("remote storage {op} of '{path}': object already exists")]
    AlreadyExists { op: Op, path: String },

    /// The last attempt did not finish within the per-attempt timeout.
    #[error("remote storage {op} of '{path}' timed out after {after_ms} ms (attempt {attempts}, giving up)")]
    Timeout { op: Op, path: String, after_ms: u64, attempts: u32 },

    /// The caller's cancellation token fired.
    #[error("remote storage {op} of '{path}' cancelled")]
    Cancelled { op: Op, path: String },

    /// `download_to_file` was told to expect a size that the object does not
    /// have. Nothing was written under the final name.
    #[error("remote storage download of '{path}': expected {expected} bytes, the object has {actual}")]
    SizeMismatch { path: String, expected: u64, actual: u64 },

    /// The key is not a valid [`crate::RemotePath`].
    #[error(transparent)]
    InvalidPath(#[from] InvalidPathError),

    /// Reading or writing the local file failed (not retried).
    #[error("remote storage {op} of '{path}': local file {}: {source}", local.display())]
    Local { op: Op, path: String, local: PathBuf, source: io::Error },

    /// Any other failure: the store's error of the last attempt.
    #[error("remote storage {op} of '{path}' failed after {attempts} attempt(s): {}", error_chain(source.as_ref()))]
    Other { op: Op, path: String, attempts: u32, source: Box<dyn StdError + Send + Sync + 'static> },
}

impl RemoteStorageError {
    /// A short name of the variant (`not_found`, `timeout`, ...), for
    /// callers' own logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RemoteStorageError::NotFound { .. } => "not_found",
            RemoteStorageError::AlreadyExists { .. } => "already_exists",
            RemoteStorageError::Timeout { .. } => "timeout",
            RemoteStorageError::Cancelled { .. } => "cancelled",
            RemoteStorageError::SizeMismatch { .. } => "size_mismatch",
            RemoteStorageError::InvalidPath(_) => "invalid_path",
            RemoteStorageError::Local { .. } => "local_io",
            RemoteStorageError::Other { .. } => "other",
        }
    }

    /// True for [`RemoteStorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, RemoteStorageError::NotFound { .. })
    }
}

/// Why [`crate::GenericRemoteStorage::new`] or
/// [`crate::RemoteStorageConfig::parse_location`] refused a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The location string is neither a directory nor `s3://BUCKET[/PREFIX]`.
    #[error("invalid remote storage location '{location}': {reason}")]
    Location { location: String, reason: String },
    /// An option that does not fit the location (for example an S3 endpoint
    /// for a local directory), or a zero limit.
    #[error("invalid remote storage option: {0}")]
    Option(String),
    /// The local root could not be created or opened.
    #[error("remote storage directory {}: {source}", root.display())]
    LocalRoot { root: PathBuf, source: io::Error },
    /// `object_store` refused to build the client.
    #[error("remote storage client for {location}: {source}")]
    Client { location: String, source: object_store::Error },
}

/// The failure of one attempt (crate-internal): classified by
/// [`AttemptError::is_transient`] and turned into a [`RemoteStorageError`]
/// once the retry loop gives up.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// The store's own error.
    Store(object_store::Error),
    /// The attempt ran out of its time.
    Timeout,
    /// A body ended before the object's advertised size (transient).
    Truncated { expected: u64, actual: u64 },
    /// The object's size is not the one the caller expected (permanent).
    SizeMismatch { expected: u64, actual: u64 },
    /// A local file operation failed (permanent).
    Local { local: PathBuf, source: io::Error },
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Store(e) => f.write_str(&error_chain(e)),
            AttemptError::Timeout => write!(f, "attempt timed out"),
            AttemptError::Truncated { expected, actual } => {
                write!(f, "body ended after {actual} of {expected} bytes")
            }
            AttemptError::SizeMismatch { expected, actual } => {
                write!(f, "expected {expected} bytes, the object has {actual}")
            }
            AttemptError::Local { local, source } => write!(f, "local file {}: {source}", local.display()),
        }
    }
}

impl StdError for AttemptError {}

impl From<object_store::Error> for AttemptError {
    fn from(e: object_store::Error) -> Self {
        AttemptError::Store(e)
    }
}

impl AttemptError {
    pub(crate) fn local(local: impl Into<PathBuf>, source: io::Error) -> Self {
        AttemptError::Local { local: local.into(), source }
    }

    /// Would another attempt possibly succeed?
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            AttemptError::Store(e) => store_error_is_transient(e),
            AttemptError::Timeout | AttemptError::Truncated { .. } => true,
            AttemptError::SizeMismatch { .. } | AttemptError::Local { .. } => false,
        }
    }

    /// The `kind` label of `remote_storage_errors_total` for this attempt.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            AttemptError::Store(object_store::Error::NotFound { .. }) => "not_found",
            AttemptError::Store(object_store::Error::AlreadyExists { .. }) => "already_exists",
            AttemptError::Store(e) if store_error_is_transient(e) => "transient",
            AttemptError::Store(_) => "permanent",
            AttemptError::Timeout => "timeout",
            AttemptError::Truncated { .. } => "transient",
            AttemptError::SizeMismatch { .. } => "size_mismatch",
            AttemptError::Local { .. } => "local_io",
        }
    }

    /// The caller-facing error of an operation whose last attempt failed so.
    pub(crate) fn into_final(self, op: Op, path: &str, attempts: u32, timeout_ms: u64) -> RemoteStorageError {
        let path = path.to_string();
        match self {
            AttemptError::Store(object_store::Error::NotFound { .. }) => RemoteStorageError::NotFound { op, path },
            AttemptError::Store(object_store::Error::AlreadyExists { .. }) => {
                RemoteStorageError::AlreadyExists { op, path }
            }
            AttemptError::Timeout => RemoteStorageError::Timeout { op, path, after_ms: timeout_ms, attempts },
            AttemptError::SizeMismatch { expected, actual } => {
                RemoteStorageError::SizeMismatch { path, expected, actual }
            }
            AttemptError::Local { local, source } => RemoteStorageError::Local { op, path, local, source },
            e @ AttemptError::Truncated { .. } => RemoteStorageError::Other { op, path, attempts, source: Box::new(e) },
            AttemptError::Store(e) => RemoteStorageError::Other { op, path, attempts, source: Box::new(e) },
        }
    }
}

/// `e` and its sources, each cause appended unless the text already holds it
/// (`object_store`'s errors often stop at "error sending request", with
/// "Connection refused" two sources down).
pub(crate) fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        cur = cause.source();
    }
    text
}

/// Classifies an `object_store` error. Its variants say most of it; a
/// `Generic` error is judged by what its source chain holds: an
/// [`HttpError`] (transport: transient unless undecodable), an I/O error of
/// a transient kind, or an HTTP status in the message of the request error
/// (`object_store` does not export that type, so the status is read from its
/// text: "status code: NNN").
fn store_error_is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::Generic { source, .. } => generic_is_transient(source.as_ref()),
        E::JoinError { .. } => true,
        E::NotFound { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. } => false,
        _ => false,
    }
}

fn generic_is_transient(source: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(source);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<HttpError>() {
            return !matches!(h.kind(), HttpErrorKind::Decode);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io_is_transient(io);
        }
        if let Some(status) = status_in_message(&e.to_string()) {
            return status >= 500 || status == 408 || status == 429;
        }
        cur = e.source();
    }
    false
}

fn io_is_transient(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::TimedOut
            | K::Interrupted
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::NotConnected
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::WouldBlock
    )
}

/// The HTTP status in an `object_store` request error's text, which reads
/// "Server returned non-2xx status code: 503 Service Unavailable: ...".
fn status_in_message(msg: &str) -> Option<u16> {
    let rest = &msg[msg.find("status code: ")? + "status code: ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.len() == 3 {
        digits.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(msg: &str) -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: msg.to_string().into() }
    }

    #[test]
    fn status_codes_in_messages_classify() {
        assert_eq!(status_in_message("Server returned non-2xx status code: 503 Service Unavailable: x"), Some(503));
        assert_eq!(status_in_message("no status here"), None);
        assert!(store_error_is_transient(&generic("Server returned non-2xx status code: 500 Internal: x")));
        assert!(store_error_is_transient(&generic("Server returned non-2xx status code: 429 Too Many: x")));
        assert!(!store_error_is_transient(&generic("Server returned non-2xx status code: 400 Bad Request: x")));
        assert!(!store_error_is_transient(&generic("something unknown")));
    }

    #[test]
    fn variants_classify() {
        let nf = object_store::Error::NotFound { path: "a".into(), source: "x".into() };
        assert!(!store_error_is_transient(&nf));
        let io = object_store::Error::Generic {
            store: "S3",
            source: Box::new(io::Error::new(io::ErrorKind::ConnectionReset, "reset")),
        };
        assert!(store_error_is_transient(&io));
        let e = AttemptError::Timeout.into_final(Op::Download, "a/b", 3, 100);
        assert_eq!(e.to_string(), "remote storage download of 'a/b' timed out after 100 ms (attempt 3, giving up)");
    }
}
