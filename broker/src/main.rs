//! `broker`: the cluster's publish/subscribe service for safekeeper status.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Strata broker: safekeepers publish per-timeline status here; peers and pageservers subscribe")]
struct Args {
    /// Address to listen on for HTTP.
    #[arg(long, default_value = "127.0.0.1:50051", env = "STRATA_BROKER_LISTEN")]
    listen: String,
    /// Check tokens (EdDSA JWTs) against the public keys (`*.pem`) in this
    /// directory (or this one file); without it, nothing is checked.
    #[arg(long, value_name = "DIR")]
    auth_public_key_dir: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    utils::logging::init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let keys = match &args.auth_public_key_dir {
        Some(dir) => Some(std::sync::Arc::new(auth::KeySet::load(dir).map_err(|e| anyhow::anyhow!("--auth-public-key-dir: {e}"))?)),
        None => None,
    };
    broker::server::serve_with_auth(listener, keys, shutdown).await
}
