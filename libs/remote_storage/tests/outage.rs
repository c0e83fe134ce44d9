//! S3 unavailable: with moto killed (connections refused) or frozen
//! (requests never answered), operations fail after their retries within a
//! bounded time, with errors naming the operation and key, and log each
//! retry; once the server is back, they work again.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use remote_storage::testing::MotoServer;
use remote_storage::{CancellationToken, GenericRemoteStorage, RemotePath, RemoteStorageConfig, RemoteStorageError};

fn quick(mut config: RemoteStorageConfig) -> RemoteStorageConfig {
    config.timeout_ms = 1_500;
    config.max_retries = 2;
    config.base_backoff_ms = 50;
    config.max_backoff_ms = 200;
    config
}

/// Collects what the test's (thread-local) subscriber logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stdout().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn stopped_server_fails_bounded_then_recovers() {
    let (logs, _guard) = capture_logs();
    let mut server = MotoServer::start();
    let storage = GenericRemoteStorage::new(&quick(server.config("outage"))).unwrap();
    let cancel = CancellationToken::new();
    let k = RemotePath::new("k/obj").unwrap();
    storage.upload_bytes(Bytes::from_static(b"before"), &k, &cancel).await.unwrap();

    server.stop();
    let started = Instant::now();
    let e = storage.download_bytes(&k, &cancel).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "gave up only after {took:?}");
    match &e {
        RemoteStorageError::Other { attempts: 3, path, .. } | RemoteStorageError::Timeout { attempts: 3, path, .. } => {
            assert_eq!(path, "k/obj")
        }
        other => panic!("expected a transient failure after 3 attempts, got {other}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("download of 'k/obj'"), "{msg}");
    let logged = logs.text();
    assert!(
        logged.contains("download of 'k/obj' failed on attempt 1 of 3, retrying"),
        "no retry line in the log:\n{logged}"
    );
    assert!(logged.contains("attempt 3 of 3, giving up"), "no give-up line in the log:\n{logged}");

    // Back on the same port (moto's state is gone: upload again).
    server.restart();
    storage.upload_bytes(Bytes::from_static(b"after"), &k, &cancel).await.unwrap();
    assert_eq!(&storage.download_bytes(&k, &cancel).await.unwrap()[..], b"after");
}

#[tokio::test]
async fn frozen_server_times_out_then_recovers() {
    let server = MotoServer::start();
    let storage = GenericRemoteStorage::new(&quick(server.config("frozen"))).unwrap();
    let cancel = CancellationToken::new();
    let k = RemotePath::new("f/obj").unwrap();
    storage.upload_bytes(Bytes::from_static(b"kept"), &k, &cancel).await.unwrap();

    server.pause();
    let started = Instant::now();
    let e = storage.head(&k, &cancel).await.unwrap_err();
    let took = started.elapsed();
    server.resume();
    match &e {
        RemoteStorageError::Timeout { attempts: 3, after_ms: 1500, path, .. } => assert_eq!(path, "f/obj"),
        other => panic!("expected Timeout after 3 attempts, got {other}"),
    }
    assert!(took >= Duration::from_millis(4_500) && took < Duration::from_secs(10), "took {took:?}");
    assert!(e.to_string().contains("head of 'f/obj' timed out after 1500 ms"), "{e}");

    // A cancelled wait ends at once, even while the server hangs.
    server.pause();
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        canceller.cancel();
    });
    let started = Instant::now();
    let e = storage.download_bytes(&k, &token).await.unwrap_err();
    assert!(matches!(e, RemoteStorageError::Cancelled { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_millis(1_000));
    server.resume();

    // The state survived the freeze.
    assert_eq!(&storage.download_bytes(&k, &cancel).await.unwrap()[..], b"kept");
}
