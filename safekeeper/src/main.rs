//! `safekeeper`: one safekeeper process (replication service + HTTP API).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use safekeeper::timelines::Timelines;
use safekeeper::{http, walsender, SafekeeperConf};

#[derive(Parser)]
#[command(about = "Strata safekeeper: stores WAL from a PostgreSQL compute durably and serves it to pageservers")]
struct Args {
    /// Unique id of this safekeeper in the cluster (its standby name is sk_<id>).
    #[arg(long, env = "STRATA_SAFEKEEPER_ID")]
    id: u64,
    /// Directory holding the timelines' control files and WAL.
    #[arg(long, short = 'D')]
    data_dir: PathBuf,
    /// Replication service address (pageservers, pg_receivewal).
    #[arg(long, default_value = "127.0.0.1:5454")]
    listen_pg: String,
    /// HTTP management API address.
    #[arg(long, default_value = "127.0.0.1:7676")]
    listen_http: String,
    /// Replication address peers are told to use (through the broker), when
    /// it differs from --listen-pg (e.g. listening on 0.0.0.0).
    #[arg(long)]
    advertise_pg: Option<String>,
    /// HTTP address peers are told to use, when it differs from --listen-http.
    #[arg(long)]
    advertise_http: Option<String>,
    /// Broker address (host:port); needed when timelines have several safekeepers.
    #[arg(long)]
    broker_endpoint: Option<String>,
    /// Keepalive interval to idle replicas, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    keepalive_interval_ms: u64,
    /// A client of the replication port must send its startup packet, and
    /// complete every message it begins, within this many milliseconds;
    /// else its connection is closed (a stalled client holds nothing).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    partial_message_timeout_ms: u64,
    #[command(flatten)]
    remote: remote_storage::cli::RemoteStorageArgs,
    /// With remote storage: upload the last, incomplete WAL segment of a
    /// timeline whose committed WAL has not moved for this long (e.g. 10s;
    /// 0s: never), so that an idle timeline's WAL is not only on local disks.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wal_partial_offload_after_idle: std::time::Duration,
    /// With remote storage: delete offloaded WAL below what the pageservers
    /// have uploaded and every peer holds, once it is this old (e.g. 7d, 0s).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    remote_wal_retention: std::time::Duration,
    /// How often the offloading safekeeper looks for offloaded WAL to delete.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    remote_wal_gc_interval: std::time::Duration,
    /// File holding the password of the role the compute's conninfo names
    /// (the cluster's replication role), used when the conninfo has none;
    /// read at every connection, so it may appear or change later.
    #[arg(long, value_name = "FILE")]
    compute_password_file: Option<std::path::PathBuf>,
    /// Check tokens (EdDSA JWTs) on the HTTP API and the walsender against
    /// the public keys (`*.pem`) in this directory (or this one file); keys
    /// added or removed there are picked up within a second. Without it,
    /// nothing is checked.
    #[arg(long, value_name = "DIR")]
    auth_public_key_dir: Option<PathBuf>,
    /// File holding the token this safekeeper presents to its peers and to
    /// the broker; read at every use, so a re-signed token is picked up.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    utils::logging::init();
    let args = Args::parse();
    let pg_listener = tokio::net::TcpListener::bind(&args.listen_pg).await.with_context(|| format!("listen on {}", args.listen_pg))?;
    let http_listener = tokio::net::TcpListener::bind(&args.listen_http).await.with_context(|| format!("listen on {}", args.listen_http))?;
    let remote_storage = args.remote.open().context("--remote-storage")?;
    let auth_keys = match &args.auth_public_key_dir {
        Some(dir) => Some(Arc::new(auth::KeySet::load(dir).context("--auth-public-key-dir")?)),
        None => {
            tracing::warn!("no --auth-public-key-dir: the HTTP API and the walsender accept every caller");
            None
        }
    };
    let conf = Arc::new(SafekeeperConf {
        id: args.id,
        data_dir: args.data_dir,
        advertise_pg: args.advertise_pg.clone().map_or_else(|| pg_listener.local_addr().map(|a| a.to_string()), Ok)?,
        advertise_http: args.advertise_http.clone().map_or_else(|| http_listener.local_addr().map(|a| a.to_string()), Ok)?,
        broker_endpoint: args.broker_endpoint,
        keepalive_interval_ms: args.keepalive_interval_ms,
        partial_message_timeout_ms: args.partial_message_timeout_ms,
        remote_storage,
        wal_partial_offload_after_idle: args.wal_partial_offload_after_idle,
        remote_wal_gc_interval: args.remote_wal_gc_interval,
        remote_wal_retention: args.remote_wal_retention,
        compute_password_file: args.compute_password_file,
        auth_keys: auth_keys.clone(),
        auth_token_file: args.auth_token_file,
    });
    tracing::info!(id = conf.id, pg = %conf.advertise_pg, http = %conf.advertise_http, data_dir = %conf.data_dir.display(), "safekeeper starting");
    let timelines = Timelines::load_all(conf.clone())?;
    let pg_task = tokio::spawn(walsender::serve(pg_listener, timelines.clone()));
    let router = http_api::auth::with_auth(http::router(timelines.clone()), auth_keys, http::scopes_for);
    let http_task = tokio::spawn(http_api::serve(http_listener, router, std::future::pending()));
    tokio::select! {
        r = pg_task => r?.context("replication service")?,
        r = http_task => r?.context("HTTP service")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    timelines.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
