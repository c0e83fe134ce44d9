//! The `pageserver` binary: opens the repository in `--workdir`, serves the
//! HTTP management API on `--listen-http` and the page service on
//! `--listen-pg` (text commands and the binary page stream), and resumes the WAL sources recorded per timeline. With
//! `--remote-storage`, every layer and index is uploaded there, tenants
//! can be attached from it, layers are downloaded when a read needs them,
//! and `--resident-limit` bounds the layer bytes kept on local disk
//! (least recently used layers are evicted back to remote-only). Stops on
//! SIGINT/SIGTERM, flushing in-memory layers first.
//!
//! The storage flags are the defaults of every tenant; a tenant may
//! override them (`PUT /v1/tenant/{tenant_id}/config`, `strata tenant
//! config`), see `pageserver::tenant::config`. The allocator is tuned
//! (`--malloc-arena-max`, `--malloc-trim-period`, see `pageserver::malloc`)
//! before the runtime's threads start.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use pageserver::tenant::repository::{PageServerConf, Repository};
use tracing::info;

#[derive(Parser, Debug)]
#[command(name = "pageserver", about = "Strata pageserver: WAL ingest, layered storage, GetPage@LSN, branches")]
struct Args {
    /// Directory holding tenants, timelines and layer files.
    #[arg(long, env = "STRATA_PAGESERVER_WORKDIR")]
    workdir: PathBuf,
    /// HTTP management API address.
    #[arg(long, default_value = "127.0.0.1:9898")]
    listen_http: SocketAddr,
    /// Page service (PostgreSQL protocol) address.
    #[arg(long, default_value = "127.0.0.1:6400")]
    listen_pg: SocketAddr,
    /// Path of walredo.so (default: the build output, or STRATA_WALREDO_LIB).
    #[arg(long)]
    walredo_lib: Option<PathBuf>,
    /// Confine WAL redo processes with the extension's seccomp filter
    /// ("false" turns it off, for debugging only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    walredo_sandbox: bool,
    /// Private memory each WAL redo process may use (RLIMIT_DATA, e.g.
    /// "1GiB"; Postgres shared memory does not count).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    walredo_memory_limit: u64,
    /// CPU time each WAL redo process may use over its life (RLIMIT_CPU,
    /// e.g. "1h"); a process is replaced once it has used half of it.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    walredo_cpu_limit: std::time::Duration,
    /// WAL redo processes that may run at once (default: one per CPU, at
    /// least 2, at most 16).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    walredo_pool_size: Option<u64>,
    /// Memory of the process-wide cache of layer-file index blocks (e.g.
    /// "64MiB").
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    layer_index_cache_size: u64,
    /// Memory of the process-wide cache of layer-file value blocks (e.g.
    /// "128MiB"; 0 turns it off: values are read from the kernel's page
    /// cache).
    #[arg(long, default_value = "128MiB", value_parser = parse_size)]
    layer_value_cache_size: u64,
    /// Relation forks whose size each timeline's relation-size cache holds.
    #[arg(long, default_value_t = 32768, value_parser = clap::value_parser!(u64).range(1..))]
    rel_size_cache_entries: u64,
    /// Freeze the in-memory layer at this many MiB.
    #[arg(long, default_value_t = 64)]
    checkpoint_distance_mb: usize,
    /// Create image layers after this many delta layers.
    #[arg(long, default_value_t = 3)]
    image_creation_threshold: usize,
    /// ... or once the delta values above a key partition's image weigh
    /// this percentage of the image (0: never).
    #[arg(long, default_value_t = 50)]
    image_creation_delta_percent: usize,
    /// GC keeps at least this many MiB of WAL history readable.
    #[arg(long, default_value_t = 64)]
    gc_horizon_mb: u64,
    /// ... and at least this much time (e.g. "7d", "0s").
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pitr_interval: std::time::Duration,
    /// Background GC period (e.g. "1h"; "0s" disables it).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    gc_period: std::time::Duration,
    /// Merge L0 delta files into L1 files once there are this many.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..))]
    compaction_threshold: u64,
    /// Background compaction check period (e.g. "20s"; "0s": only after flushes).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    compaction_period: std::time::Duration,
    #[command(flatten)]
    remote: remote_storage::cli::RemoteStorageArgs,
    /// Budget of layer files on local disk, all tenants together (e.g.
    /// "64MiB", "10GiB"; default unlimited): least recently used layers
    /// that are uploaded are evicted to stay under it.
    #[arg(long, requires = "remote_storage", value_parser = parse_size)]
    resident_limit: Option<u64>,
    /// Page stream: a message whose first byte arrived must be complete
    /// within this many milliseconds, or the connection is closed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    page_service_partial_message_timeout_ms: u64,
    /// Page service: the startup packet, the token and the greeting must be
    /// done within this many milliseconds, or the connection is closed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    page_service_startup_timeout_ms: u64,
    /// Page stream: requests read ahead and served as one batch, at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    page_service_pipeline_depth: u64,
    /// Page stream: parts a batch of many blocks is read in at once (each
    /// in its own blocking section), at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    page_service_read_parallelism: u64,
    /// Check tokens (EdDSA JWTs) on the HTTP API and the page service
    /// against the public keys (`*.pem`) in this directory (or this one
    /// file); keys added or removed there are picked up within a second.
    /// Without it, nothing is checked.
    #[arg(long, value_name = "DIR")]
    auth_public_key_dir: Option<PathBuf>,
    /// File holding the token this pageserver presents to the safekeepers
    /// (as the password of WAL source conninfos that have none); read at
    /// every connection, so a re-signed token is picked up.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// glibc malloc arenas, at most (0: glibc's default of 8 per CPU). Few
    /// arenas let memory freed by one thread be reused by the others.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=1024))]
    malloc_arena_max: u32,
    /// Return free memory inside malloc's arenas to the system this often
    /// (e.g. "10s"; "0s" disables it).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    malloc_trim_period: std::time::Duration,
}

fn page_service_conf(args: &Args, keys: Option<Arc<auth::KeySet>>) -> anyhow::Result<pageserver::read::page_service::PageServiceConf> {
    Ok(pageserver::read::page_service::PageServiceConf {
        auth: keys,
        partial_message_timeout_ms: args.page_service_partial_message_timeout_ms,
        startup_timeout_ms: args.page_service_startup_timeout_ms,
        pipeline_depth: usize::try_from(args.page_service_pipeline_depth).context("--page-service-pipeline-depth")?,
        read_parallelism: usize::try_from(args.page_service_read_parallelism)
            .context("--page-service-read-parallelism")?,
        ..Default::default()
    })
}

fn parse_size(s: &str) -> Result<u64, String> {
    pageserver::tenant::config::parse_size(s).ok_or_else(|| format!("'{s}' is not a size (e.g. 64MiB, 10GiB)"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any thread exists (see pageserver::malloc).
    let malloc_ok = pageserver::malloc::configure(args.malloc_arena_max);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    if !malloc_ok {
        tracing::warn!(malloc_arena_max = args.malloc_arena_max, "malloc refused the allocator settings");
    }
    pageserver::malloc::spawn_trimmer(args.malloc_trim_period).context("start the malloc-trim thread")?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the runtime")?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.workdir).with_context(|| format!("create {}", args.workdir.display()))?;
    let mut conf = PageServerConf::new(&args.workdir);
    conf.walredo.lib_path = args.walredo_lib.clone();
    conf.walredo.sandbox = args.walredo_sandbox;
    conf.walredo.memory_limit_bytes = args.walredo_memory_limit;
    conf.walredo.cpu_limit_secs = args.walredo_cpu_limit.as_secs().max(1);
    if let Some(n) = args.walredo_pool_size {
        conf.walredo.pool_size = usize::try_from(n).context("--walredo-pool-size")?;
    }
    let index_cache_bytes = usize::try_from(args.layer_index_cache_size).context("--layer-index-cache-size")?;
    if !pageserver::storage::block_cache::set_global_budget(index_cache_bytes) {
        anyhow::bail!("--layer-index-cache-size: the cache was already in use");
    }
    let value_cache_bytes = usize::try_from(args.layer_value_cache_size).context("--layer-value-cache-size")?;
    if !pageserver::storage::block_cache::set_values_budget(value_cache_bytes) {
        anyhow::bail!("--layer-value-cache-size: the cache was already in use");
    }
    pageserver::tenant::timeline::relcache::set_capacity(
        usize::try_from(args.rel_size_cache_entries).context("--rel-size-cache-entries")?,
    );
    if !args.walredo_sandbox {
        tracing::warn!("WAL redo sandbox turned off (--walredo-sandbox false)");
    }
    conf.timeline.checkpoint_distance = args.checkpoint_distance_mb << 20;
    conf.timeline.image_creation_threshold = args.image_creation_threshold;
    conf.timeline.image_creation_delta_percent = args.image_creation_delta_percent;
    conf.timeline.gc_horizon_bytes = args.gc_horizon_mb << 20;
    conf.timeline.pitr_interval = args.pitr_interval;
    conf.timeline.gc_period = args.gc_period;
    conf.timeline.compaction_threshold = usize::try_from(args.compaction_threshold).context("--compaction-threshold")?;
    conf.timeline.compaction_period = args.compaction_period;
    conf.remote_storage = args.remote.open().context("--remote-storage")?;
    conf.resident_limit_bytes = args.resident_limit;
    if let Some(limit) = args.resident_limit {
        info!(resident_limit_bytes = limit, "resident size limit");
    }
    if let Some(path) = &args.auth_token_file {
        pageserver::ingest::walreceiver::set_auth_token_file(path.clone());
    }
    let keys = match &args.auth_public_key_dir {
        Some(dir) => Some(Arc::new(auth::KeySet::load(dir).context("--auth-public-key-dir")?)),
        None => {
            tracing::warn!("no --auth-public-key-dir: the HTTP API and the page service accept every caller");
            None
        }
    };
    let repo = Repository::open(conf).await.context("open repository")?;
    let http = tokio::net::TcpListener::bind(args.listen_http).await.context("bind HTTP")?;
    let pg = tokio::net::TcpListener::bind(args.listen_pg).await.context("bind page service")?;
    info!(http = %http.local_addr()?, pg = %pg.local_addr()?, workdir = %args.workdir.display(), "pageserver started");
    let app = pageserver::http::router_with_auth(repo.clone(), keys.clone());
    let page_service =
        tokio::spawn(pageserver::read::page_service::serve_with(pg, repo.clone(), page_service_conf(&args, keys)?));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    http_api::serve(http, app, shutdown).await?;
    page_service.abort();
    info!("shutting down");
    repo.shutdown(true).await;
    Ok(())
}
