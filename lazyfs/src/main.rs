//! `lazyfs`: mount one lazy compute's data directory (see the crate docs).
//!
//! Start: read the manifest of the sizes-only basebackup unpacked in
//! `--backing` (relation files are created there only when first used),
//! connect to the page service, mount `--mountpoint`
//! (allow_other, default_permissions, writeback cache), then serve
//! `GET /metrics` on `--http-port` (answering means: mounted). SIGTERM or
//! SIGINT unmounts and exits 0. If the process dies instead, the mount stays
//! behind answering ENOTCONN (the compute fails, it never reads stale data)
//! until the control plane runs `fusermount3 -u -z`. Once mounted, the
//! prefetcher ([`lazyfs::prefetch`]) warms every relation block in the
//! background unless `--prefetch=false`. With `--passthrough=true` wholly
//! local files are opened with FUSE passthrough and the mount has no
//! writeback cache ([`lazyfs::fs`]).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use fuser::{Config, MountOption, SessionACL};
use lazyfs::fetch::Fetcher;
use lazyfs::fs::{LazyFs, Owner};
use lazyfs::metrics::Metrics;
use lazyfs::overlay::Overlay;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

#[derive(Parser)]
#[command(about = "FUSE data directory of a lazy Strata compute")]
struct Args {
    /// Endpoint name (for logs).
    #[arg(long)]
    endpoint: String,
    /// The data directory to mount (an empty directory).
    #[arg(long)]
    mountpoint: PathBuf,
    /// Local directory holding the unpacked sizes-only basebackup; becomes the overlay.
    #[arg(long)]
    backing: PathBuf,
    /// Page service host.
    #[arg(long, default_value = "127.0.0.1")]
    pageserver_host: String,
    /// Page service port (the pageserver's PostgreSQL-protocol port).
    #[arg(long)]
    pageserver_port: u16,
    #[arg(long)]
    tenant: TenantId,
    #[arg(long)]
    timeline: TimelineId,
    /// Start LSN: every remote block is read at it.
    #[arg(long)]
    lsn: Lsn,
    /// Owner shown for every file (the PostgreSQL user).
    #[arg(long)]
    uid: u32,
    #[arg(long)]
    gid: u32,
    /// Port of the metrics endpoint (`GET /metrics`), on 127.0.0.1.
    #[arg(long)]
    http_port: u16,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Extra blocks fetched after a multi-block read that missed.
    #[arg(long, default_value_t = 32)]
    readahead_blocks: u32,
    /// File holding the token (a tenant-scoped JWT) presented to the page
    /// service; read at every connection.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// Fetch every remaining relation block in the background after the
    /// mount (`--prefetch=false`: only on demand).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    prefetch: bool,
    /// Open wholly local files (created by the compute, or fully fetched)
    /// with FUSE passthrough, so the kernel does their I/O on the backing
    /// file (needs kernel ≥ 6.9 and root). The kernel grants passthrough
    /// only without the writeback cache, so `--passthrough=true` mounts
    /// without it; where passthrough is refused every open goes through
    /// lazyfs.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    passthrough: bool,
}

fn main() {
    utils::logging::init();
    let args = Args::parse();
    let span = tracing::info_span!("lazyfs", endpoint = %args.endpoint, tenant = %args.tenant, timeline = %args.timeline, lsn = %args.lsn);
    let _guard = span.enter();
    if let Err(e) = run(args) {
        tracing::error!("{e:#}");
        eprintln!("lazyfs: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let lazyfs::Prepared { remote, unmade } = lazyfs::prepare_backing(&args.backing)?;
    let blocks: u64 = remote.iter().map(|(_, r)| r.remote_blocks() as u64).sum();
    let catalogs: std::collections::HashSet<PathBuf> =
        remote.iter().filter(|(p, r)| lazyfs::prefetch::Target::is_catalog(p, r.tag.rel)).map(|(p, _)| p.clone()).collect();
    tracing::info!(files = remote.len(), not_created = unmade.len(), blocks, "relation files are remote");
    let metrics = Metrics::new();
    let fetcher = Arc::new(
        Fetcher::connect(&args.pageserver_host, args.pageserver_port, args.tenant, args.timeline, args.lsn, metrics.clone(), args.auth_token_file.clone())
            .context("connect to the page service")?,
    );
    let listener = TcpListener::bind(("127.0.0.1", args.http_port)).with_context(|| format!("metrics port {}", args.http_port))?;
    listener.set_nonblocking(true)?;
    std::fs::set_permissions(&args.backing, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let overlay = Overlay::new(fetcher.clone(), metrics.clone(), args.readahead_blocks);
    let prefetch_overlay = args.prefetch.then(|| {
        // Its own counters for the connection: lazyfs_blocks_fetched_total
        // counts on-demand fetches only; the prefetched blocks are counted
        // by the overlay (lazyfs_blocks_prefetched_total).
        let (base, metrics) = (overlay.for_prefetch(fetcher.clone()), Metrics::new());
        let (host, port, tenant, timeline, lsn) = (args.pageserver_host.clone(), args.pageserver_port, args.tenant, args.timeline, args.lsn);
        let token_file = args.auth_token_file.clone();
        move || -> anyhow::Result<Overlay> {
            let source = Fetcher::connect(&host, port, tenant, timeline, lsn, metrics, token_file).context("connect the prefetcher to the page service")?;
            Ok(base.for_prefetch(Arc::new(source)))
        }
    });
    let fs = LazyFs::new(args.backing.clone(), Owner { uid: args.uid, gid: args.gid }, overlay, remote, unmade).with_passthrough(args.passthrough);
    let targets: Vec<lazyfs::prefetch::Target> =
        fs.remote_files().into_iter().map(|(path, state)| lazyfs::prefetch::Target { catalog: catalogs.contains(&path), path, state }).collect();
    let opener = fs.opener();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("lazyfs-{}", args.endpoint)),
        MountOption::Subtype("lazyfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RW,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    let mut session = fuser::Session::new(fs, &args.mountpoint, &config).with_context(|| format!("mount {}", args.mountpoint.display()))?;
    tracing::info!(mountpoint = %args.mountpoint.display(), prefetch = args.prefetch, "mounted");
    let stop_prefetch = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(overlay) = prefetch_overlay {
        let open = Box::new(move |state: &Arc<lazyfs::overlay::FileState>| opener.open(state));
        lazyfs::prefetch::spawn(overlay, targets, open, stop_prefetch.clone()).context("start the prefetcher")?;
    }
    let mut unmounter = session.unmount_callable();
    let rt = fetcher.runtime();
    let listener = {
        let _enter = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    rt.spawn(lazyfs::metrics::serve(listener, metrics.clone()));
    let span = tracing::Span::current();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!(parent: &span, "cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(parent: &span, "signal: unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::error!(parent: &span, "unmount failed: {e}");
        }
    });
    let ran = session.run().context("FUSE session");
    stop_prefetch.store(true, std::sync::atomic::Ordering::Relaxed);
    ran?;
    tracing::info!(fetched = metrics.blocks_fetched.get(), hits = metrics.cache_hits.get(), "unmounted; exiting");
    Ok(())
}
