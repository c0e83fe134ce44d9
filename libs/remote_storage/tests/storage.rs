//! The same suite against a local directory and a real moto S3 server: round
//! trips of multi-MB files, not-found, idempotent deletes, listing, size
//! checks, conditional puts, cancellation and metrics.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use remote_storage::testing::MotoServer;
use remote_storage::{
    download_tmp_path, metrics, CancellationToken, GenericRemoteStorage, RemoteLocation, RemotePath,
    RemoteStorageConfig, RemoteStorageError,
};
use tempfile::TempDir;

/// One moto process shared by the tests of this binary that run at the
/// same time (it dies with the last of them); each test has its own prefix.
static SHARED_MOTO: Mutex<Weak<MotoServer>> = Mutex::new(Weak::new());

fn shared_moto() -> Arc<MotoServer> {
    let mut shared = SHARED_MOTO.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(MotoServer::start());
    *shared = Arc::downgrade(&server);
    server
}

struct Backend {
    storage: GenericRemoteStorage,
    /// Local files of the test (sources and download targets).
    work: TempDir,
    _root: Option<TempDir>,
    _moto: Option<Arc<MotoServer>>,
}

fn tune(mut config: RemoteStorageConfig) -> RemoteStorageConfig {
    config.timeout_ms = 30_000;
    config.max_retries = 2;
    config.base_backoff_ms = 10;
    config.max_backoff_ms = 100;
    config
}

fn local() -> Backend {
    let root = tempfile::tempdir().unwrap();
    let config = tune(RemoteStorageConfig::new(RemoteLocation::LocalFs { root: root.path().join("remote") }));
    Backend {
        storage: GenericRemoteStorage::new(&config).unwrap(),
        work: tempfile::tempdir().unwrap(),
        _root: Some(root),
        _moto: None,
    }
}

fn moto() -> Backend {
    static N: AtomicU32 = AtomicU32::new(0);
    let server = shared_moto();
    let prefix = format!("suite/{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let config = tune(server.config(&prefix));
    Backend {
        storage: GenericRemoteStorage::new(&config).unwrap(),
        work: tempfile::tempdir().unwrap(),
        _root: None,
        _moto: Some(server),
    }
}

fn key(s: &str) -> RemotePath {
    RemotePath::new(s).unwrap()
}

/// Deterministic, incompressible-looking content.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod local_fs {
            $( #[tokio::test] async fn $case() { super::$case(super::local()).await } )*
        }
        mod moto_s3 {
            $( #[tokio::test] async fn $case() { super::$case(super::moto()).await } )*
        }
    };
}

on_both_backends!(
    round_trip_large_and_small,
    missing_key_is_not_found,
    delete_is_idempotent,
    list_under_prefix_is_exact,
    wrong_expected_size_leaves_nothing,
    conditional_put_refuses_existing,
    cancelled_operations_leave_nothing,
    metrics_move,
);

async fn round_trip_large_and_small(b: Backend) {
    let cancel = CancellationToken::new();
    // Above the single-PUT limit: a multipart upload with a short last part.
    let big = pattern(20 * 1024 * 1024 + 123, 1);
    let src = write_file(b.work.path(), "big", &big);
    let k = key("tenants/t1/timelines/tl1/layer-000A");
    assert_eq!(b.storage.upload_file(&src, &k, &cancel).await.unwrap(), big.len() as u64);
    assert_eq!(b.storage.head(&k, &cancel).await.unwrap().size, big.len() as u64);

    let dst = b.work.path().join("big.downloaded");
    let n = b.storage.download_to_file(&k, &dst, Some(big.len() as u64), &cancel).await.unwrap();
    assert_eq!(n, big.len() as u64);
    assert!(std::fs::read(&dst).unwrap() == big, "downloaded content differs");
    assert!(!download_tmp_path(&dst).exists());
    assert!(b.storage.download_bytes(&k, &cancel).await.unwrap() == big);

    // A small file (one PUT), then overwritten from memory.
    let small = pattern(1000, 2);
    let src = write_file(b.work.path(), "small", &small);
    let k = key("small/obj.json");
    b.storage.upload_file(&src, &k, &cancel).await.unwrap();
    let dst = b.work.path().join("small.downloaded");
    b.storage.download_to_file(&k, &dst, None, &cancel).await.unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), small);
    b.storage.upload_bytes(Bytes::from_static(b"replaced"), &k, &cancel).await.unwrap();
    assert_eq!(&b.storage.download_bytes(&k, &cancel).await.unwrap()[..], b"replaced");
    // Downloading over an existing file replaces it.
    b.storage.download_to_file(&k, &dst, Some(8), &cancel).await.unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), b"replaced");

    // An empty object.
    let k = key("empty");
    b.storage.upload_bytes(Bytes::new(), &k, &cancel).await.unwrap();
    assert_eq!(b.storage.download_bytes(&k, &cancel).await.unwrap().len(), 0);
    let dst = b.work.path().join("empty.downloaded");
    assert_eq!(b.storage.download_to_file(&k, &dst, Some(0), &cancel).await.unwrap(), 0);
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 0);
}

async fn missing_key_is_not_found(b: Backend) {
    let cancel = CancellationToken::new();
    let k = key("no/such/object");
    let e = b.storage.download_bytes(&k, &cancel).await.unwrap_err();
    assert!(matches!(e, RemoteStorageError::NotFound { .. }), "{e}");
    assert!(e.is_not_found());
    assert_eq!(e.to_string(), "remote storage download of 'no/such/object': object not found");
    let dst = b.work.path().join("missing");
    let e = b.storage.download_to_file(&k, &dst, None, &cancel).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(!dst.exists() && !download_tmp_path(&dst).exists());
    let e = b.storage.head(&k, &cancel).await.unwrap_err();
    assert!(matches!(e, RemoteStorageError::NotFound { .. }), "{e}");

    // A missing local source is a local error, not retried.
    let src = b.work.path().join("no-such-file");
    let e = b.storage.upload_file(&src, &key("up/x"), &cancel).await.unwrap_err();
    match &e {
        RemoteStorageError::Local { local, .. } => assert_eq!(local, &src),
        other => panic!("expected a local error, got {other}"),
    }
    assert!(e.to_string().contains("upload of 'up/x'"), "{e}");
}

async fn delete_is_idempotent(b: Backend) {
    let cancel = CancellationToken::new();
    let k = key("d/one");
    b.storage.upload_bytes(Bytes::from_static(b"x"), &k, &cancel).await.unwrap();
    b.storage.delete(&k, &cancel).await.unwrap();
    assert!(b.storage.head(&k, &cancel).await.unwrap_err().is_not_found());
    b.storage.delete(&k, &cancel).await.unwrap();
    b.storage.delete(&key("d/never/existed"), &cancel).await.unwrap();

    let many: Vec<RemotePath> = (0..5).map(|i| key(&format!("d/many/{i}"))).collect();
    for k in &many[..4] {
        b.storage.upload_bytes(Bytes::from_static(b"y"), k, &cancel).await.unwrap();
    }
    // The fifth never existed.
    b.storage.delete_many(&many, &cancel).await.unwrap();
    assert_eq!(b.storage.list(Some(&key("d")), &cancel).await.unwrap(), vec![]);
    b.storage.delete_many(&many, &cancel).await.unwrap();
    b.storage.delete_many(&[], &cancel).await.unwrap();
}

async fn list_under_prefix_is_exact(b: Backend) {
    let cancel = CancellationToken::new();
    let objects = [("a/1", 1), ("a/2", 2), ("a/sub/3", 3), ("ab/4", 4), ("b/5", 5)];
    for (k, len) in objects {
        b.storage.upload_bytes(Bytes::from(vec![7u8; len]), &key(k), &cancel).await.unwrap();
    }
    let listed = b.storage.list(Some(&key("a")), &cancel).await.unwrap();
    assert_eq!(listed, vec![(key("a/1"), 1), (key("a/2"), 2), (key("a/sub/3"), 3)]);
    let all = b.storage.list(None, &cancel).await.unwrap();
    let expected: Vec<(RemotePath, u64)> = objects.iter().map(|(k, l)| (key(k), *l as u64)).collect();
    assert_eq!(all, expected);
    assert_eq!(b.storage.list(Some(&key("a/sub")), &cancel).await.unwrap(), vec![(key("a/sub/3"), 3)]);
    assert_eq!(b.storage.list(Some(&key("nothing")), &cancel).await.unwrap(), vec![]);
}

async fn wrong_expected_size_leaves_nothing(b: Backend) {
    let cancel = CancellationToken::new();
    let k = key("sized/obj");
    b.storage.upload_bytes(Bytes::from(pattern(1000, 3)), &k, &cancel).await.unwrap();
    let dst = b.work.path().join("sized");
    // A stale temporary file from an earlier crash is cleaned up too.
    std::fs::write(download_tmp_path(&dst), b"stale").unwrap();
    let e = b.storage.download_to_file(&k, &dst, Some(999), &cancel).await.unwrap_err();
    match &e {
        RemoteStorageError::SizeMismatch { path, expected: 999, actual: 1000 } => assert_eq!(path, "sized/obj"),
        other => panic!("expected SizeMismatch, got {other}"),
    }
    assert!(e.to_string().contains("sized/obj"), "{e}");
    assert!(!dst.exists(), "a file was left at the final path");
    assert!(!download_tmp_path(&dst).exists(), "the temporary file was left behind");
    assert_eq!(std::fs::read_dir(b.work.path()).unwrap().count(), 0);
}

async fn conditional_put_refuses_existing(b: Backend) {
    let cancel = CancellationToken::new();
    let k = key("cond/index.json");
    b.storage.put_if_absent(Bytes::from_static(b"first"), &k, &cancel).await.unwrap();
    let e = b.storage.put_if_absent(Bytes::from_static(b"second"), &k, &cancel).await.unwrap_err();
    assert!(matches!(e, RemoteStorageError::AlreadyExists { .. }), "{e}");
    assert_eq!(e.to_string(), "remote storage upload of 'cond/index.json': object already exists");
    assert_eq!(&b.storage.download_bytes(&k, &cancel).await.unwrap()[..], b"first");
    // An unconditional upload still replaces it.
    b.storage.upload_bytes(Bytes::from_static(b"third"), &k, &cancel).await.unwrap();
    assert_eq!(&b.storage.download_bytes(&k, &cancel).await.unwrap()[..], b"third");
}

async fn cancelled_operations_leave_nothing(b: Backend) {
    let live = CancellationToken::new();
    let k = key("c/obj");
    b.storage.upload_bytes(Bytes::from(pattern(4096, 4)), &k, &live).await.unwrap();
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let dst = b.work.path().join("c");
    let e = b.storage.download_to_file(&k, &dst, None, &cancelled).await.unwrap_err();
    assert!(matches!(e, RemoteStorageError::Cancelled { .. }), "{e}");
    assert!(!dst.exists() && !download_tmp_path(&dst).exists());
    let e = b.storage.upload_bytes(Bytes::from_static(b"new"), &key("c/other"), &cancelled).await.unwrap_err();
    assert!(matches!(e, RemoteStorageError::Cancelled { .. }), "{e}");
    assert!(b.storage.head(&key("c/other"), &live).await.unwrap_err().is_not_found());

    // Dropping a download midway (here: after its first poll) leaves no
    // temporary file either.
    let big = pattern(12 * 1024 * 1024, 5);
    let src = write_file(b.work.path(), "big", &big);
    b.storage.upload_file(&src, &key("c/big"), &live).await.unwrap();
    let dst = b.work.path().join("big.dl");
    let big_key = key("c/big");
    let fut = b.storage.download_to_file(&big_key, &dst, None, &live);
    let _ = tokio::time::timeout(std::time::Duration::from_millis(1), fut).await;
    assert!(!download_tmp_path(&dst).exists());
}

async fn metrics_move(b: Backend) {
    let cancel = CancellationToken::new();
    let ok_uploads = || metrics::OPERATIONS.with_label_values(&["upload", "ok"]).get();
    let uploaded = || metrics::BYTES.with_label_values(&["upload"]).get();
    let downloaded = || metrics::BYTES.with_label_values(&["download"]).get();
    let failed_downloads = || metrics::OPERATIONS.with_label_values(&["download", "error"]).get();
    let not_found = || metrics::ERRORS.with_label_values(&["download", "not_found"]).get();
    let timed = || metrics::OPERATION_SECONDS.with_label_values(&["upload"]).get_sample_count();
    let before = (ok_uploads(), uploaded(), downloaded(), failed_downloads(), not_found(), timed());

    let k = key("m/obj");
    b.storage.upload_bytes(Bytes::from(vec![1u8; 777]), &k, &cancel).await.unwrap();
    b.storage.download_bytes(&k, &cancel).await.unwrap();
    b.storage.download_bytes(&key("m/missing"), &cancel).await.unwrap_err();

    // Other tests run at the same time: counters only grow.
    assert!(ok_uploads() > before.0);
    assert!(uploaded() >= before.1 + 777);
    assert!(downloaded() >= before.2 + 777);
    assert!(failed_downloads() > before.3);
    assert!(not_found() > before.4);
    assert!(timed() > before.5);

    let names: Vec<String> = prometheus::gather().iter().map(|f| f.name().to_string()).collect();
    for name in [
        "remote_storage_operations_total",
        "remote_storage_bytes_total",
        "remote_storage_errors_total",
        "remote_storage_operation_seconds",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in the default registry: {names:?}");
    }
}

#[test]
fn paths_are_validated() {
    for bad in ["../x", "/abs", "a/../../etc/passwd", "", "a//b"] {
        assert!(RemotePath::new(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(key("ok/path").join("../x").is_err());
}
