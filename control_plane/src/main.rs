//! `strata`: manage a local Strata cluster (broker, safekeepers, pageserver).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use control_plane::cluster::Cluster;
use control_plane::config::Config;

#[derive(Parser)]
#[command(name = "strata", about = "Run a local Strata cluster: serverless PostgreSQL storage on stock PostgreSQL 15")]
struct Cli {
    /// Repository directory holding the cluster's config, data and logs.
    #[arg(long, global = true, env = "STRATA_REPO_DIR", default_value = ".strata")]
    repo_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new repository (config and directories); refuses to overwrite one.
    Init {
        /// Number of safekeepers.
        #[arg(long, default_value_t = 1)]
        safekeepers: u64,
        /// Pageserver page-service port (its HTTP API uses the next port).
        #[arg(long, default_value_t = 64000)]
        pageserver_port: u16,
        /// First port of the broker and safekeepers (broker here, safekeeper N at +10N).
        #[arg(long, default_value_t = 50051)]
        base_port: u16,
    },
    /// Start every component in the background and wait until each is ready.
    Start,
    /// Stop every component.
    Stop,
    /// Show each component's pid, health and ports.
    Status,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Init { safekeepers, pageserver_port, base_port } => {
            anyhow::ensure!(safekeepers >= 1, "a cluster needs at least one safekeeper");
            let conf = Config::with_ports(safekeepers, pageserver_port, base_port);
            let path = conf.save_new(&cli.repo_dir)?;
            println!("initialized {} ({} safekeeper(s)); next: strata start", path.display(), safekeepers);
        }
        Cmd::Start => Cluster::load(&cli.repo_dir)?.start().await?,
        Cmd::Stop => Cluster::load(&cli.repo_dir)?.stop().await?,
        Cmd::Status => {
            for line in Cluster::load(&cli.repo_dir)?.status_lines().await? {
                println!("{line}");
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("strata: error: {e:#}");
        std::process::exit(1);
    }
}
