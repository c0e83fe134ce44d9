//! `broker`: the cluster's publish/subscribe service for safekeeper status.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Strata broker: safekeepers publish per-timeline status here; peers and pageservers subscribe")]
struct Args {
    /// Address to listen on for HTTP.
    #[arg(long, default_value = "127.0.0.1:50051", env = "STRATA_BROKER_LISTEN")]
    listen: String,
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
    broker::server::serve(listener, shutdown).await
}
