//! [`GenericRemoteStorage`]: the operations on a local directory or an S3
//! bucket, each one run by [`crate::retry`] (concurrency limit, per-attempt
//! timeout, retries of transient failures, metrics).
//!
//! Invariants:
//! * keys are [`RemotePath`]s, relative to the configured root or prefix;
//! * an upload is atomic: readers see the old object or the whole new one
//!   (S3 semantics; the local backend writes a staging file and renames it,
//!   fsyncing file and directory);
//! * `download_to_file` never leaves a partial file under the final name: it
//!   writes `<local>.download.tmp` (a new inode per attempt), fsyncs it,
//!   checks the size, renames it into place and fsyncs the directory; on
//!   any failure, cancellation or drop the temporary file is removed, and an
//!   abandoned attempt can touch neither the names nor the file of a later
//!   one (see `DownloadTmp`). Two calls for the same local path must not run
//!   at once;
//! * memory is bounded per call: uploads above [`SINGLE_PUT_MAX`] go as
//!   multipart uploads of [`PART_SIZE`] parts with at most
//!   [`PARTS_IN_FLIGHT`] in flight; downloads to files stream.
//!
//! Cancellation: every operation takes a [`CancellationToken`] and returns
//! [`RemoteStorageError::Cancelled`] soon after it fires. Dropping the future
//! is equally safe (the same cleanup runs): an abandoned multipart upload is
//! aborted from a spawned task, a temporary download file is removed. An
//! upload cancelled at its very end may still have taken effect — like any
//! upload whose answer was lost.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    ClientConfigKey, GetResultPayload, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::{RemoteLocation, RemoteStorageConfig, S3Location};
use crate::error::{AttemptError, ConfigError, Op, RemoteStorageError};
use crate::metrics;
use crate::path::RemotePath;
use crate::retry::Retrier;

/// Files up to this size are uploaded with one PUT (read into memory).
pub const SINGLE_PUT_MAX: u64 = 8 * 1024 * 1024;
/// Part size of multipart uploads (S3 wants at least 5 MiB but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one multipart upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Suffix of the temporary file of [`GenericRemoteStorage::download_to_file`].
pub const DOWNLOAD_TMP_SUFFIX: &str = ".download.tmp";

/// What [`GenericRemoteStorage::head`] tells about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteObjectMeta {
    pub size: u64,
    pub last_modified: SystemTime,
    pub e_tag: Option<String>,
}

/// A handle on the configured object storage. Cheap to clone: clones share
/// the client, the connection pool and the concurrency limit.
#[derive(Clone)]
pub struct GenericRemoteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    retrier: Retrier,
    config: RemoteStorageConfig,
}

impl fmt::Debug for GenericRemoteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GenericRemoteStorage({})", self.inner.config.location)
    }
}

impl GenericRemoteStorage {
    /// Builds the client. A local root is created if missing; an S3 client
    /// connects lazily (nothing is sent before the first operation).
    pub fn new(config: &RemoteStorageConfig) -> Result<Self, ConfigError> {
        if config.concurrency_limit == 0 {
            return Err(ConfigError::Option("concurrency_limit must be at least 1".into()));
        }
        if config.timeout_ms == 0 {
            return Err(ConfigError::Option("timeout_ms must be at least 1".into()));
        }
        let store: Arc<dyn ObjectStore> = match &config.location {
            RemoteLocation::LocalFs { root } => {
                let local_root = |source| ConfigError::LocalRoot { root: root.clone(), source };
                std::fs::create_dir_all(root).map_err(local_root)?;
                let fs = LocalFileSystem::new_with_prefix(root).map_err(|e| ConfigError::Client {
                    location: config.location.to_string(),
                    source: e,
                })?;
                Arc::new(fs.with_fsync(true))
            }
            RemoteLocation::S3(s3) => build_s3(s3, config)?,
        };
        let retrier = Retrier {
            semaphore: Semaphore::new(config.concurrency_limit.min(Semaphore::MAX_PERMITS)),
            timeout: Duration::from_millis(config.timeout_ms),
            max_retries: config.max_retries,
            base_backoff: Duration::from_millis(config.base_backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
        };
        Ok(GenericRemoteStorage { inner: Arc::new(Inner { store, retrier, config: config.clone() }) })
    }

    /// The configuration this handle was built from.
    pub fn config(&self) -> &RemoteStorageConfig {
        &self.inner.config
    }

    /// Uploads the file `local` as `to`, replacing any object there; returns
    /// its size. Files above [`SINGLE_PUT_MAX`] go as a multipart upload,
    /// read part by part (memory stays bounded); a retry starts over.
    pub async fn upload_file(
        &self,
        local: &Path,
        to: &RemotePath,
        cancel: &CancellationToken,
    ) -> Result<u64, RemoteStorageError> {
        let store = &*self.inner.store;
        let location = to.to_object_path();
        let location = &location;
        let size = self
            .inner
            .retrier
            .run(Op::Upload, to.as_str(), cancel, |_| async move {
                let size = tokio::fs::metadata(local).await.map_err(|e| AttemptError::local(local, e))?.len();
                if size <= SINGLE_PUT_MAX {
                    let data = tokio::fs::read(local).await.map_err(|e| AttemptError::local(local, e))?;
                    let len = data.len() as u64;
                    store.put(location, PutPayload::from(data)).await?;
                    Ok(len)
                } else {
                    upload_multipart(store, location, local).await
                }
            })
            .await?;
        metrics::BYTES.with_label_values(&[Op::Upload.as_str()]).inc_by(size);
        Ok(size)
    }

    /// Stores `data` as `to`, replacing any object there.
    pub async fn upload_bytes(
        &self,
        data: Bytes,
        to: &RemotePath,
        cancel: &CancellationToken,
    ) -> Result<(), RemoteStorageError> {
        self.put(data, to, PutMode::Overwrite, cancel).await
    }

    /// Stores `data` as `to` only if no object is there, else
    /// [`RemoteStorageError::AlreadyExists`] (S3 `If-None-Match: *`; the
    /// local backend links without replacing). When a retry finds the key
    /// taken after an earlier attempt of this call failed, the object is
    /// read back: if it holds exactly `data` (the earlier attempt landed but
    /// its answer was lost), the call succeeds.
    pub async fn put_if_absent(
        &self,
        data: Bytes,
        to: &RemotePath,
        cancel: &CancellationToken,
    ) -> Result<(), RemoteStorageError> {
        self.put(data, to, PutMode::Create, cancel).await
    }

    async fn put(
        &self,
        data: Bytes,
        to: &RemotePath,
        mode: PutMode,
        cancel: &CancellationToken,
    ) -> Result<(), RemoteStorageError> {
        let store = &*self.inner.store;
        let location = to.to_object_path();
        let location = &location;
        let len = data.len() as u64;
        let data = &data;
        let mode = &mode;
        self.inner
            .retrier
            .run(Op::Upload, to.as_str(), cancel, |attempt| async move {
                let opts = PutOptions { mode: mode.clone(), ..Default::default() };
                match store.put_opts(location, PutPayload::from(data.clone()), opts).await {
                    Ok(_) => Ok(()),
                    Err(e @ object_store::Error::AlreadyExists { .. }) if attempt > 1 => {
                        let existing = store.get(location).await?.bytes().await?;
                        if existing == *data {
                            Ok(())
                        } else {
                            Err(e.into())
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        metrics::BYTES.with_label_values(&[Op::Upload.as_str()]).inc_by(len);
        Ok(())
    }

    /// Downloads `from` into the file `local` (replacing it) and returns the
    /// size. With `expected_size`, an object of another size fails with
    /// [`RemoteStorageError::SizeMismatch`] before anything is written. See
    /// the module doc for the temporary file and the durability steps.
    pub async fn download_to_file(
        &self,
        from: &RemotePath,
        local: &Path,
        expected_size: Option<u64>,
        cancel: &CancellationToken,
    ) -> Result<u64, RemoteStorageError> {
        let store = &*self.inner.store;
        let location = from.to_object_path();
        let location = &location;
        let tmp = DownloadTmp::new(download_tmp_path(local));
        let tmp = &tmp;
        let size = self
            .inner
            .retrier
            .run(Op::Download, from.as_str(), cancel, |attempt| {
                tmp.begin(attempt);
                download_attempt(store, location, local, tmp, attempt, expected_size)
            })
            .await?;
        metrics::BYTES.with_label_values(&[Op::Download.as_str()]).inc_by(size);
        Ok(size)
    }

    /// The whole object `from`, in memory.
    pub async fn download_bytes(
        &self,
        from: &RemotePath,
        cancel: &CancellationToken,
    ) -> Result<Bytes, RemoteStorageError> {
        let store = &*self.inner.store;
        let location = from.to_object_path();
        let location = &location;
        let data = self
            .inner
            .retrier
            .run(Op::Download, from.as_str(), cancel, |_| async move {
                let got = store.get(location).await?;
                let size = got.meta.size;
                let data = got.bytes().await?;
                if data.len() as u64 != size {
                    return Err(AttemptError::Truncated { expected: size, actual: data.len() as u64 });
                }
                Ok(data)
            })
            .await?;
        metrics::BYTES.with_label_values(&[Op::Download.as_str()]).inc_by(data.len() as u64);
        Ok(data)
    }

    /// Deletes `path`. Idempotent: a missing object is success.
    pub async fn delete(&self, path: &RemotePath, cancel: &CancellationToken) -> Result<(), RemoteStorageError> {
        let store = &*self.inner.store;
        let location = path.to_object_path();
        let location = &location;
        self.inner
            .retrier
            .run(Op::Delete, path.as_str(), cancel, |_| async move {
                match store.delete(location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            })
            .await
    }

    /// Deletes every key of `paths` (S3: batched `DeleteObjects`); missing
    /// ones are success. A retry deletes the whole set again.
    pub async fn delete_many(
        &self,
        paths: &[RemotePath],
        cancel: &CancellationToken,
    ) -> Result<(), RemoteStorageError> {
        let Some(first) = paths.first() else { return Ok(()) };
        let label = match paths.len() {
            1 => first.to_string(),
            n => format!("{first} (and {} more)", n - 1),
        };
        let store = &*self.inner.store;
        let locations: Vec<ObjectPath> = paths.iter().map(RemotePath::to_object_path).collect();
        let locations = &locations;
        self.inner
            .retrier
            .run(Op::Delete, &label, cancel, |_| async move {
                let input = futures::stream::iter(locations.clone().into_iter().map(Ok)).boxed();
                let mut results = store.delete_stream(input);
                while let Some(r) = results.next().await {
                    match r {
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            })
            .await
    }

    /// Every object under `prefix` (all of them for `None`), recursively,
    /// with its size, sorted by key. The prefix matches whole segments:
    /// `a/b` lists `a/b/c` and `a/b/d/e`, not `a/bc`. Objects whose keys are
    /// not valid [`RemotePath`]s (not written through this crate) are left
    /// out with a warning.
    pub async fn list(
        &self,
        prefix: Option<&RemotePath>,
        cancel: &CancellationToken,
    ) -> Result<Vec<(RemotePath, u64)>, RemoteStorageError> {
        Ok(self.list_with_meta(prefix, cancel).await?.into_iter().map(|(p, m)| (p, m.size)).collect())
    }

    /// Like [`GenericRemoteStorage::list`], with each object's size,
    /// modification time and ETag; sorted by key.
    pub async fn list_with_meta(
        &self,
        prefix: Option<&RemotePath>,
        cancel: &CancellationToken,
    ) -> Result<Vec<(RemotePath, RemoteObjectMeta)>, RemoteStorageError> {
        let store = &*self.inner.store;
        let prefix_path = prefix.map(RemotePath::to_object_path);
        let prefix_path = prefix_path.as_ref();
        let label = prefix.map_or("<root>", RemotePath::as_str);
        let metas = self
            .inner
            .retrier
            .run(Op::List, label, cancel, |_| async move {
                Ok(store.list(prefix_path).try_collect::<Vec<_>>().await?)
            })
            .await?;
        let mut out: Vec<(RemotePath, RemoteObjectMeta)> = metas
            .into_iter()
            .filter_map(|m| match RemotePath::new(m.location.as_ref()) {
                Ok(p) => Some((p, RemoteObjectMeta { size: m.size, last_modified: m.last_modified.into(), e_tag: m.e_tag })),
                Err(e) => {
                    warn!(key = %m.location, "remote storage list of '{label}': skipping an object: {e}");
                    None
                }
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Size, modification time and ETag of `path`.
    pub async fn head(
        &self,
        path: &RemotePath,
        cancel: &CancellationToken,
    ) -> Result<RemoteObjectMeta, RemoteStorageError> {
        let store = &*self.inner.store;
        let location = path.to_object_path();
        let location = &location;
        self.inner
            .retrier
            .run(Op::Head, path.as_str(), cancel, |_| async move {
                let m = store.head(location).await?;
                Ok(RemoteObjectMeta { size: m.size, last_modified: m.last_modified.into(), e_tag: m.e_tag })
            })
            .await
    }
}

fn build_s3(s3: &S3Location, config: &RemoteStorageConfig) -> Result<Arc<dyn ObjectStore>, ConfigError> {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&s3.bucket)
        .with_virtual_hosted_style_request(false)
        // Retries are ours (with our classification, logging and metrics).
        .with_retry(RetryConfig { max_retries: 0, ..Default::default() })
        // A backstop only: each attempt runs under our own timeout, which
        // covers the body too. (object_store's default of 30 s would cut
        // long transfers short.)
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            format!("{}ms", config.timeout_ms.saturating_add(5_000)),
        );
    let static_credentials = s3.access_key_id.is_some() && s3.secret_access_key.is_some();
    if let Some(endpoint) = &s3.endpoint {
        // Without keys, object_store would ask the cloud instance metadata
        // service (a link-local address), which an S3-compatible server
        // elsewhere has nothing to do with.
        if !static_credentials && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            return Err(ConfigError::Option(format!(
                "S3 endpoint {endpoint} without credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )));
        }
        b = b.with_endpoint(endpoint);
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
    }
    if let Some(region) = &s3.region {
        b = b.with_region(region);
    }
    if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
    }
    let store = b
        .build()
        .map_err(|e| ConfigError::Client { location: config.location.to_string(), source: e })?;
    Ok(if s3.prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, s3.prefix.as_str()))
    })
}

/// `<local>.download.tmp`.
pub fn download_tmp_path(local: &Path) -> PathBuf {
    let mut name = local.as_os_str().to_owned();
    name.push(DOWNLOAD_TMP_SUFFIX);
    PathBuf::from(name)
}

/// Aborts a multipart upload that was neither completed nor aborted, from a
/// spawned task (drop cannot await).
struct AbortOnDrop(Option<Box<dyn MultipartUpload>>);

impl AbortOnDrop {
    fn upload(&mut self) -> &mut Box<dyn MultipartUpload> {
        self.0.as_mut().expect("not yet completed")
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(mut upload) = self.0.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = upload.abort().await {
                        warn!("aborting an abandoned multipart upload: {e}");
                    }
                });
            }
        }
    }
}

async fn upload_multipart(store: &dyn ObjectStore, to: &ObjectPath, local: &Path) -> Result<u64, AttemptError> {
    let local_err = |e| AttemptError::local(local, e);
    let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
    let mut upload = AbortOnDrop(Some(store.put_multipart(to).await?));
    let mut in_flight = FuturesUnordered::new();
    let mut total = 0u64;
    loop {
        let chunk = read_chunk(&mut file, PART_SIZE).await.map_err(local_err)?;
        if chunk.is_empty() {
            break;
        }
        let full = chunk.len() == PART_SIZE;
        total += chunk.len() as u64;
        while in_flight.len() >= PARTS_IN_FLIGHT {
            in_flight.next().await.expect("non-empty")?;
        }
        in_flight.push(upload.upload().put_part(PutPayload::from(chunk)));
        if !full {
            break;
        }
    }
    while let Some(r) = in_flight.next().await {
        r?;
    }
    upload.upload().complete().await?;
    upload.0 = None;
    Ok(total)
}

/// Up to `len` bytes: fewer only at the end of the file.
async fn read_chunk(file: &mut tokio::fs::File, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        if file.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

async fn download_attempt(
    store: &dyn ObjectStore,
    from: &ObjectPath,
    local: &Path,
    tmp: &DownloadTmp,
    attempt: u32,
    expected_size: Option<u64>,
) -> Result<u64, AttemptError> {
    let got = store.get(from).await?;
    let size = got.meta.size;
    if let Some(expected) = expected_size {
        if expected != size {
            return Err(AttemptError::SizeMismatch { expected, actual: size });
        }
    }
    let tmp_err = |e| AttemptError::local(&tmp.path, e);
    // A new inode for each attempt: writes of an abandoned attempt (its
    // blocking I/O may still run) land in an unlinked file.
    let file = tmp
        .by_name(attempt, |tmp| {
            match std::fs::remove_file(tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::File::create_new(tmp)
        })
        .await
        .map_err(tmp_err)?;
    let written = match got.payload {
        // Local backend: copy file to file (copy_file_range where possible).
        GetResultPayload::File(mut src, _) => blocking(move || {
            let mut dst = file;
            let n = io::copy(&mut io::Read::take(&mut src, size), &mut dst)?;
            dst.sync_all()?;
            Ok(n)
        })
        .await
        .map_err(tmp_err)?,
        GetResultPayload::Stream(mut stream) => {
            let mut out = tokio::io::BufWriter::with_capacity(1024 * 1024, tokio::fs::File::from_std(file));
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                out.write_all(&chunk).await.map_err(tmp_err)?;
                n += chunk.len() as u64;
            }
            out.flush().await.map_err(tmp_err)?;
            out.into_inner().sync_all().await.map_err(tmp_err)?;
            n
        }
    };
    if written != size {
        return Err(AttemptError::Truncated { expected: size, actual: written });
    }
    let target = local.to_path_buf();
    tmp.by_name(attempt, move |tmp| {
        std::fs::rename(tmp, &target)?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    })
    .await
    .map_err(|e| AttemptError::local(local, e))?;
    Ok(written)
}

/// Runs blocking file work off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// The temporary file of one `download_to_file` call, and which attempt may
/// touch it by name. Blocking file work outlives an abandoned (timed out,
/// cancelled, dropped) attempt, so every operation by name — remove and
/// create, rename into place — runs under the lock and only if its attempt
/// is still the current one: a stale attempt can neither unlink a later
/// attempt's file nor rename it into place half-written. Dropping this
/// (the call is over, one way or the other) retires every attempt and
/// removes the file.
struct DownloadTmp {
    path: PathBuf,
    current: Arc<Mutex<u32>>,
}

const RETIRED: u32 = u32::MAX;

impl DownloadTmp {
    fn new(path: PathBuf) -> Self {
        DownloadTmp { path, current: Arc::new(Mutex::new(0)) }
    }

    fn begin(&self, attempt: u32) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = attempt;
    }

    async fn by_name<T: Send + 'static>(
        &self,
        attempt: u32,
        f: impl FnOnce(&Path) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (path, current) = (self.path.clone(), self.current.clone());
        blocking(move || {
            let current = current.lock().unwrap_or_else(|e| e.into_inner());
            if *current != attempt {
                return Err(io::Error::other("superseded by a later attempt"));
            }
            f(&path)
        })
        .await
    }
}

impl Drop for DownloadTmp {
    fn drop(&mut self) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = RETIRED;
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation's future can be spawned on a multi-threaded runtime.
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(s: &GenericRemoteStorage, p: &RemotePath, l: &Path, c: &CancellationToken) {
        fn send<T: Send>(_: T) {}
        send(s.upload_file(l, p, c));
        send(s.upload_bytes(Bytes::new(), p, c));
        send(s.put_if_absent(Bytes::new(), p, c));
        send(s.download_to_file(p, l, None, c));
        send(s.download_bytes(p, c));
        send(s.delete(p, c));
        send(s.delete_many(std::slice::from_ref(p), c));
        send(s.list(Some(p), c));
        send(s.head(p, c));
    }

    #[test]
    fn tmp_path_appends_suffix() {
        assert_eq!(download_tmp_path(Path::new("/a/b.layer")), Path::new("/a/b.layer.download.tmp"));
    }

    #[test]
    fn zero_limits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = RemoteStorageConfig::new(RemoteLocation::LocalFs { root: dir.path().to_path_buf() });
        c.concurrency_limit = 0;
        assert!(GenericRemoteStorage::new(&c).is_err());
        c.concurrency_limit = 1;
        c.timeout_ms = 0;
        assert!(GenericRemoteStorage::new(&c).is_err());
    }
}
