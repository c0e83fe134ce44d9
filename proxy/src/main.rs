//! `proxy`: started by `strata start` for the cluster in `--repo-dir`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use proxy::conn::{serve, ProxyContext};
use proxy::endpoints::Endpoints;

#[derive(Parser)]
#[command(about = "Strata proxy: one PostgreSQL port for every endpoint (route with options=endpoint=NAME, \
                   the TLS SNI name, or the password endpoint=NAME;PASSWORD), waking suspended endpoints \
                   and suspending idle ones")]
struct Args {
    /// The cluster's repository (its endpoints and configuration).
    #[arg(long, env = "STRATA_REPO_DIR")]
    repo_dir: PathBuf,
    /// PostgreSQL protocol address for clients.
    #[arg(long, default_value = "127.0.0.1:4432")]
    listen: String,
    /// HTTP address for /metrics.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen_http: String,
    /// How long a connection waits for a suspended endpoint to start.
    #[arg(long, default_value_t = 120)]
    wake_timeout_s: u64,
    /// How long a client has to send its startup packet.
    #[arg(long, default_value_t = 10_000)]
    startup_timeout_ms: u64,
    /// Client connections open at once, over all endpoints.
    #[arg(long, default_value_t = 1000)]
    max_connections: usize,
    /// Client connections open at once to one endpoint.
    #[arg(long, default_value_t = 100)]
    max_connections_per_endpoint: usize,
    /// How often idle endpoints are looked for.
    #[arg(long, default_value_t = 1000)]
    suspend_check_interval_ms: u64,
    /// On SIGTERM, how long open sessions may go on before the proxy exits.
    #[arg(long, default_value_t = 5)]
    drain_timeout_s: u64,
    /// TLS certificate chain (PEM); with --tls-key, SSL requests are accepted.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// A TLS acceptor from PEM files.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("read a private key from {}", key.display()))?;
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    utils::logging::init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let http = tokio::net::TcpListener::bind(&args.listen_http).await.with_context(|| format!("listen on {}", args.listen_http))?;
    let endpoints = Endpoints::new(args.repo_dir.clone(), Duration::from_secs(args.wake_timeout_s), args.max_connections_per_endpoint);
    let connections = Arc::new(tokio::sync::Semaphore::new(args.max_connections));
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let ctx = Arc::new(ProxyContext {
        endpoints: Arc::clone(&endpoints),
        startup_timeout: Duration::from_millis(args.startup_timeout_ms),
        connect_timeout: Duration::from_secs(10),
        connections: Arc::clone(&connections),
        max_connections: args.max_connections,
        tls,
        cancel: Default::default(),
    });
    tokio::spawn(Arc::clone(&endpoints).run_suspender(Duration::from_millis(args.suspend_check_interval_ms)));
    let router = axum::Router::new().route("/metrics", axum::routing::get(|| async { proxy::metrics::gather_text() }));
    // The shared server: header-read timeout and connection limit, as on
    // every other component's HTTP port.
    tokio::spawn(async move {
        if let Err(e) = http_api::serve(http, router, std::future::pending()).await {
            tracing::error!("metrics server failed: {e}");
        }
    });
    tracing::info!(listen = %args.listen, repo = %args.repo_dir.display(), tls = args.tls_cert.is_some(), "proxy started");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(listener, ctx, stop_rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    drain(&connections, args.max_connections, Duration::from_secs(args.drain_timeout_s)).await;
    Ok(())
}

/// Wait until every session ended or `timeout` passed.
async fn drain(connections: &tokio::sync::Semaphore, max: usize, timeout: Duration) {
    let open = max - connections.available_permits();
    tracing::info!(open, "stopping: no new connections; draining open sessions");
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    match tokio::time::timeout(timeout, connections.acquire_many(all)).await {
        Ok(_) => tracing::info!("all sessions ended"),
        Err(_) => tracing::warn!(open = max - connections.available_permits(), "drain timeout: closing open sessions"),
    }
}
