//! `http_api::serve`: a client that sends half a request header is
//! disconnected after the header timeout while other clients are served,
//! and shutdown stops the server after the request in flight is answered.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use axum::routing::get;
use axum::Router;

fn router() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/slow", get(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "slow"
        }))
}

/// Read until the peer closes; the bytes read, or an error on timeout.
fn read_to_close(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

fn get_close(port: u16, path: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    String::from_utf8_lossy(&read_to_close(&mut conn).unwrap()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_is_cut_off_and_shutdown_waits_for_requests_in_flight() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http_api::serve_with(
        listener,
        router(),
        async {
            let _ = stop_rx.await;
        },
        Duration::from_millis(300),
    ));
    let stalled = tokio::task::spawn_blocking(move || {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n").unwrap();
        read_to_close(&mut conn)
    });
    let answer = tokio::task::spawn_blocking(move || get_close(port, "/ok")).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    let cut = stalled.await.unwrap().expect("the stalled connection was closed, not left open");
    assert!(!String::from_utf8_lossy(&cut).contains(" 200 "), "a half request was answered: {cut:?}");

    let slow = tokio::task::spawn_blocking(move || get_close(port, "/slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(()).unwrap();
    let answer = slow.await.unwrap();
    assert!(answer.ends_with("slow"), "the request in flight was cut: {answer}");
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("serve returned").unwrap().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "still listening after shutdown");
}
