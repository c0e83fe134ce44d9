//! Prometheus metrics of one lazyfs process (one endpoint), served as text
//! on `GET /metrics` of its HTTP port ([`serve`]).
//!
//! Owns its own registry (not the process default), so tests can build
//! several filesystems in one process. Names: `lazyfs_blocks_fetched_total`,
//! `lazyfs_cache_hits_total`, `lazyfs_blocks_written_total`,
//! `lazyfs_fetch_seconds`, `lazyfs_fetch_errors_total`,
//! `lazyfs_pending_blocks` (blocks still only remote),
//! `lazyfs_blocks_prefetched_total` (made local by the background
//! prefetcher; `lazyfs_blocks_fetched_total` counts on-demand fetches only),
//! `lazyfs_passthrough_opens_total` / `lazyfs_cached_opens_total` (opens the
//! kernel serves from the backing file directly / through lazyfs).
//!
//! Cancellation: [`serve`] runs until its task is dropped; each request is
//! independent.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub blocks_fetched: IntCounter,
    pub cache_hits: IntCounter,
    pub blocks_written: IntCounter,
    pub fetch_seconds: Histogram,
    pub fetch_errors: IntCounter,
    pub pending_blocks: IntGauge,
    pub blocks_prefetched: IntCounter,
    pub passthrough_opens: IntCounter,
    pub cached_opens: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric name");
            registry.register(Box::new(c.clone())).expect("unique metric name");
            c
        };
        let blocks_fetched = counter("lazyfs_blocks_fetched_total", "Blocks fetched on demand from the pageserver (GetPage at the start LSN) for the compute's reads and partial writes");
        let cache_hits = counter("lazyfs_cache_hits_total", "Blocks read by the compute that were already local");
        let blocks_prefetched = counter("lazyfs_blocks_prefetched_total", "Blocks made local by the background prefetcher");
        let blocks_written = counter("lazyfs_blocks_written_total", "Blocks (whole or part) written by the compute");
        let passthrough_opens = counter("lazyfs_passthrough_opens_total", "Opens of wholly local files answered with FUSE passthrough (the kernel does their I/O on the backing file)");
        let cached_opens = counter("lazyfs_cached_opens_total", "Opens whose reads and writes go through lazyfs (files with remote blocks, or passthrough unavailable)");
        let fetch_errors = counter("lazyfs_fetch_errors_total", "Fetches that failed (the read got EIO)");
        let buckets = vec![0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0];
        let fetch_seconds = Histogram::with_opts(HistogramOpts::new("lazyfs_fetch_seconds", "Time of one batch fetch from the pageserver").buckets(buckets))
            .expect("valid histogram");
        registry.register(Box::new(fetch_seconds.clone())).expect("unique metric name");
        let pending_blocks = IntGauge::new("lazyfs_pending_blocks", "Relation blocks not yet local (still only on the pageserver)").expect("valid metric name");
        registry.register(Box::new(pending_blocks.clone())).expect("unique metric name");
        Metrics { registry, blocks_fetched, cache_hits, blocks_written, fetch_seconds, fetch_errors, pending_blocks, blocks_prefetched, passthrough_opens, cached_opens }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding our own, valid metrics into a String cannot fail.
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serve `GET /metrics` (and `/` for readiness) on `listener` until dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut conn, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // The request head, up to its blank line (clients may send it
            // in pieces); anything longer than 8 KiB is not ours.
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/" | "/ready" => ("200 OK", "mounted\n".to_string()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let reply = format!("HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}
