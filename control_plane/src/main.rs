//! `strata`: manage a local Strata cluster (broker, safekeepers, pageserver,
//! and stock PostgreSQL computes on branches).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use control_plane::cluster::Cluster;
use control_plane::config::Config;
use control_plane::endpoint::{ComputeMode, Endpoint};
use control_plane::ops::BranchPoint;
use control_plane::settings::SettingsChange;
use control_plane::state::{Branch, State};
use utils::id::TenantId;
use utils::lsn::Lsn;

#[derive(Parser)]
#[command(name = "strata", version, about = "Run a local Strata cluster: serverless PostgreSQL storage on stock PostgreSQL 15")]
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
        /// First port tried for computes.
        #[arg(long, default_value_t = 55432)]
        endpoint_base_port: u16,
        /// The proxy's PostgreSQL port, the one address for every endpoint
        /// (its metrics on the next port). Default: base-port + 3.
        #[arg(long)]
        proxy_port: Option<u16>,
        /// The proxy's TLS certificate (PEM), with --proxy-tls-key. Default:
        /// one signed by a CA made for this repository (<repo>/tls/ca.crt,
        /// for clients' sslrootcert), valid for localhost, *.localhost and
        /// 127.0.0.1.
        #[arg(long, requires = "proxy_tls_key", value_name = "FILE")]
        proxy_tls_cert: Option<PathBuf>,
        /// The proxy's TLS private key (PEM).
        #[arg(long, requires = "proxy_tls_cert", value_name = "FILE")]
        proxy_tls_key: Option<PathBuf>,
        /// No TLS on the proxy (clients must connect without SSL).
        #[arg(long, conflicts_with = "proxy_tls_cert")]
        no_proxy_tls: bool,
        /// Object storage for the pageserver's layers and indexes and the
        /// safekeepers' offloaded WAL: a directory, s3://BUCKET/PREFIX
        /// (credentials from AWS_*), or "none" (the pageserver's and the
        /// safekeepers' disks are then the only copies).
        /// Default: <repo>/remote.
        #[arg(long)]
        remote_storage: Option<String>,
        /// S3 endpoint URL, for S3-compatible servers.
        #[arg(long)]
        s3_endpoint: Option<String>,
        /// S3 region.
        #[arg(long)]
        s3_region: Option<String>,
        /// Budget of layer files on the pageserver's disk, e.g. 64MiB or
        /// 10GiB (default unlimited): least recently used layers that are
        /// in object storage are evicted, and downloaded again when read.
        #[arg(long, value_name = "SIZE")]
        pageserver_resident_limit: Option<String>,
        /// Mode of new endpoints started without --lazy/--full: `full`
        /// (copy the database at start) or `lazy` (FUSE, pages on demand).
        #[arg(long, value_enum, default_value_t = ComputeMode::Full)]
        default_compute_mode: ComputeMode,
        /// No tokens: the pageserver, safekeepers and broker accept every
        /// caller. Default: an Ed25519 key pair under <repo>/auth/ and
        /// tokens on every component interface.
        #[arg(long)]
        no_auth: bool,
    },
    /// Start every component in the background and wait until each is ready.
    Start,
    /// Stop every endpoint and component.
    Stop,
    /// Show each component's pid, health and ports, and the branches' LSNs.
    Status,
    /// Print a component's log (broker, safekeeper_N, pageserver, proxy) or an endpoint's.
    Logs {
        /// Component or endpoint name.
        name: String,
        /// Number of lines from the end.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing what is appended (Ctrl-C to stop).
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Tenants: one PostgreSQL cluster each, with its branches.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Branches (timelines) of a tenant.
    #[command(subcommand)]
    Timeline(TimelineCmd),
    /// Computes: stock PostgreSQL started on a branch.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Tokens (EdDSA JWTs) and the keys that sign them.
    #[command(subcommand)]
    Auth(AuthCmd),
}

#[derive(Subcommand)]
enum AuthCmd {
    /// Print a new token signed by the current key.
    Token {
        /// admin, pageserverapi, safekeeperdata or tenant.
        #[arg(long)]
        scope: auth::Scope,
        /// The tenant of a `tenant` token.
        #[arg(long)]
        tenant: Option<utils::id::TenantId>,
        /// Expire after this long (e.g. 1h); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Start a key rotation: a new key signs from now on and every
    /// component token is re-signed; the old key is still accepted until
    /// `strata auth finish-rotation`.
    Rotate,
    /// End a rotation: remove every key but the newest; tokens signed by
    /// the old keys are refused from then on.
    FinishRotation,
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant from a fresh initdb; its first branch is `main`.
    Create {
        /// Make it the tenant commands use when --tenant-id is not given.
        #[arg(long)]
        set_default: bool,
        /// A storage setting of the tenant (repeatable), e.g. `-c gc_horizon=1MiB
        /// -c pitr_interval=0s`; see `strata tenant config` for the keys. An
        /// unknown key or a bad value creates nothing.
        #[arg(short = 'c', value_name = "KEY=VALUE", value_parser = control_plane::tenant_conf::parse_kv)]
        config: Vec<(String, String)>,
    },
    /// Show a tenant's storage settings (which are its own, which the
    /// pageserver's defaults), or change them with -c / --reset. Keys:
    /// checkpoint_distance, checkpoint_timeout, compaction_threshold,
    /// compaction_target_size, compaction_period, image_creation_threshold,
    /// image_creation_delta_percent, gc_horizon, pitr_interval, gc_period.
    /// Sizes: bytes or 512KiB, 64MiB, 1GiB; durations: 0s, 10m, 1h.
    /// Running timelines pick changes up.
    Config {
        #[arg(long, visible_alias = "tenant")]
        tenant_id: Option<TenantId>,
        /// Set a setting (repeatable), e.g. `-c compaction_threshold=4`.
        #[arg(short = 'c', value_name = "KEY=VALUE", value_parser = control_plane::tenant_conf::parse_kv)]
        config: Vec<(String, String)>,
        /// Back to the pageserver's default (repeatable).
        #[arg(long, value_name = "KEY")]
        reset: Vec<String>,
    },
    /// Import a stopped PostgreSQL 15 data directory as a new tenant (its
    /// `main` branch); the directory is read, not changed. For a database
    /// on a running server, or another major version, use
    /// `pg_dump URL | psql ENDPOINT_URL` into a new tenant instead.
    Import {
        /// The data directory (cleanly shut down, no user tablespaces).
        #[arg(long)]
        pgdata: PathBuf,
        /// Make it the tenant commands use when --tenant-id is not given.
        #[arg(long)]
        set_default: bool,
    },
    /// List the pageserver's tenants.
    List,
}

#[derive(Subcommand)]
enum TimelineCmd {
    /// Create a branch, instantly (no data is copied).
    Branch {
        #[arg(long)]
        branch_name: String,
        #[arg(long, default_value = "main")]
        ancestor_branch_name: String,
        /// Branch at this LSN of the ancestor (default: its latest).
        #[arg(long, conflicts_with = "at")]
        ancestor_start_lsn: Option<Lsn>,
        /// Branch at the last commit at or before this time (RFC 3339, e.g. 2026-11-27T09:30:00Z).
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
    /// Show the branch tree with branch points.
    List {
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
    /// Delete a branch: its layers on the pageserver, its WAL on the
    /// safekeepers, its stopped endpoints. Refused while it has child
    /// branches or a running endpoint.
    Delete {
        /// The branch name (as in `strata timeline list`).
        name: String,
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Start (creating if needed) a compute on a branch; prints its URL
    /// (through the proxy), with the endpoint's password at its first start.
    Start {
        name: String,
        /// Branch to run on (default: the endpoint's branch, or `main`).
        #[arg(long)]
        branch_name: Option<String>,
        #[arg(long)]
        tenant_id: Option<TenantId>,
        /// A PostgreSQL setting for this endpoint, kept for later starts
        /// (repeatable), e.g. `-c work_mem=64MB`. Settings that Strata needs
        /// (port, replication, synchronous standbys) are refused.
        #[arg(short = 'c', value_name = "KEY=VALUE", value_parser = control_plane::settings::parse_setting)]
        setting: Vec<(String, String)>,
        /// Drop a setting given earlier with -c (back to the default; repeatable).
        #[arg(long, value_name = "KEY")]
        reset: Vec<String>,
        /// Suspend the compute after this long without a client connection
        /// (e.g. 5m, 30s; 0 never, the default); the proxy stops it and
        /// starts it again, on the latest LSN, at the next connection
        /// through it. Kept for later starts.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_s)]
        suspend_after: Option<u64>,
        /// Lazy compute: the data directory is a FUSE mount (lazyfs) and
        /// relation pages are fetched from the pageserver on first read, so
        /// the start does not copy the database. Kept for later starts.
        /// Falls back to a full basebackup where FUSE is unavailable.
        #[arg(long, conflicts_with = "full")]
        lazy: bool,
        /// Copy the whole database at start (the default unless the
        /// cluster's `[compute] default_mode` is `lazy`). Kept for later starts.
        #[arg(long)]
        full: bool,
    },
    /// Stop a compute (fast shutdown; committed data stays in the cluster).
    Stop { name: String },
    /// Print the password of an endpoint's role `postgres` (made at its
    /// first start, kept in <repo>/endpoints/NAME/endpoint.toml, mode 0600).
    ShowPassword { name: String },
    /// List computes: address, branch, timeline, start LSN, status.
    List,
    /// Prove the storage is exact: stop the compute, rebuild its data directory
    /// from the pageserver at the LSN it stopped at, and compare page by page.
    Compare {
        name: String,
        /// Also print notes, exclusions and pages by kind.
        #[arg(long)]
        verbose: bool,
    },
}

/// A duration like `5m`, `30s`, `1h` or `0`, in whole seconds.
fn parse_duration_s(text: &str) -> Result<u64, String> {
    if text.trim() == "0" {
        return Ok(0);
    }
    humantime::parse_duration(text.trim()).map(|d| d.as_secs()).map_err(|e| format!("{text:?} is not a duration like 5m or 30s: {e}"))
}

fn print_tree(branches: &[Branch], parent: Option<&str>, depth: usize) {
    for b in branches.iter().filter(|b| b.ancestor.as_deref() == parent) {
        match depth {
            0 => println!("{} [{}]", b.name, b.timeline_id),
            _ => println!("{}┗━ @{}: {} [{}]", "   ".repeat(depth - 1), b.ancestor_lsn.as_deref().unwrap_or("?"), b.name, b.timeline_id),
        }
        print_tree(branches, Some(&b.name), depth + 1);
    }
}

/// The URLs of a started endpoint: through the proxy (when the cluster has
/// one), then directly to its compute; the password in the first only when
/// it was just made (`show_password`).
fn print_urls(cluster: &Cluster, ep: &Endpoint, show_password: bool) {
    let name = &ep.name;
    let proxy = cluster.proxy_url(ep, show_password);
    let main = proxy.clone().unwrap_or_else(|| if show_password { ep.url_with_password() } else { ep.url() });
    let hint = if show_password { String::new() } else { format!(" (password: `strata endpoint show-password {name}`)") };
    println!("connect with: psql \"{main}\"{hint}");
    if proxy.is_some() {
        println!("directly, bypassing the proxy: psql \"{}\" (same password)", ep.url());
    }
    if show_password {
        println!("the password of role {} was made now and is shown only this once; print it again with `strata endpoint show-password {name}`", control_plane::secrets::CLIENT_ROLE);
    }
}

async fn run_endpoint(repo: &Path, cmd: EndpointCmd) -> anyhow::Result<()> {
    match cmd {
        EndpointCmd::Start { name, branch_name, tenant_id, setting, reset, suspend_after, lazy, full } => {
            let cluster = Cluster::load(repo)?;
            let tenant = State::load(repo)?.tenant(tenant_id)?;
            let mode = match (lazy, full) {
                (true, _) => Some(ComputeMode::Lazy),
                (_, true) => Some(ComputeMode::Full),
                _ => None,
            };
            let change = SettingsChange { set: setting, reset, suspend_after_s: suspend_after, mode };
            let had_password = Endpoint::load(repo, &name)?.is_some_and(|e| e.credential.is_some());
            let ep = cluster.endpoint_start(tenant, &name, branch_name.as_deref(), &change).await?;
            println!(
                "endpoint {} on branch {} (timeline {}) at LSN {} ({})",
                ep.name,
                ep.branch,
                ep.timeline_id,
                ep.start_lsn.as_deref().unwrap_or("?"),
                ep.mode_label()
            );
            print_urls(&cluster, &ep, !had_password);
        }
        EndpointCmd::ShowPassword { name } => {
            Config::load(repo)?;
            let ep = Endpoint::load(repo, &name)?.with_context(|| format!("no endpoint named {name:?}"))?;
            let credential = ep.credential.with_context(|| format!("endpoint {name:?} has no password yet: it is made at its first `strata endpoint start {name}`"))?;
            println!("{}", credential.password.expose());
        }
        EndpointCmd::Stop { name } => {
            Cluster::load(repo)?.endpoint_stop(&name).await?;
            println!("endpoint {name} stopped");
        }
        EndpointCmd::Compare { name, verbose } => {
            let report = Cluster::load(repo)?.endpoint_compare(&name).await?;
            print!("{}", report.render(verbose));
            if !report.is_equal() {
                anyhow::bail!("the data directory rebuilt by the pageserver differs from endpoint {name}'s");
            }
        }
        EndpointCmd::List => {
            Config::load(repo)?;
            println!("{:<16} {:<22} {:<16} {:<34} {:<12} {:<8} STATUS", "NAME", "ADDRESS", "BRANCH", "TIMELINE", "LSN", "MODE");
            for ep in Endpoint::list(repo)? {
                let status = match (ep.running_pid(), ep.suspended) {
                    (Some(_), _) => "running",
                    (None, true) => "suspended",
                    (None, false) => "stopped",
                };
                let addr = ep.at.addr(ep.port);
                let lsn = ep.start_lsn.clone().unwrap_or_default();
                println!("{:<16} {:<22} {:<16} {:<34} {:<12} {:<8} {status}", ep.name, addr, ep.branch, ep.timeline_id, lsn, ep.mode_label());
            }
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Absolute from here on: paths reach other processes (postgres runs in
    // its data directory, components in their own).
    let repo_dir = std::path::absolute(&cli.repo_dir).with_context(|| format!("resolve {}", cli.repo_dir.display()))?;
    let repo = repo_dir.as_path();
    match cli.command {
        Cmd::Init { safekeepers, pageserver_port, base_port, endpoint_base_port, proxy_port, proxy_tls_cert, proxy_tls_key, no_proxy_tls, remote_storage, s3_endpoint, s3_region, pageserver_resident_limit, default_compute_mode, no_auth } => {
            anyhow::ensure!(safekeepers >= 1, "a cluster needs at least one safekeeper");
            let mut conf = Config::with_ports(safekeepers, pageserver_port, base_port);
            if let (Some(port), Some(proxy)) = (proxy_port, conf.proxy.as_mut()) {
                anyhow::ensure!(port < u16::MAX, "--proxy-port {port}: the next port is its metrics port");
                (proxy.pg_port, proxy.http_port) = (port, port + 1);
            }
            conf.endpoint_base_port = endpoint_base_port;
            conf.compute.default_mode = default_compute_mode;
            conf.pageserver.remote_storage = match remote_storage.as_deref() {
                Some("none") => None,
                Some(location) if location.starts_with("s3://") => Some(location.to_string()),
                Some(dir) => Some(std::path::absolute(dir)?.display().to_string()),
                None => Some(repo.join("remote").display().to_string()),
            };
            let is_s3 = conf.pageserver.remote_storage.as_deref().is_some_and(|l| l.starts_with("s3://"));
            anyhow::ensure!(is_s3 || (s3_endpoint.is_none() && s3_region.is_none()), "--s3-endpoint and --s3-region need --remote-storage s3://BUCKET/PREFIX");
            (conf.pageserver.s3_endpoint, conf.pageserver.s3_region) = (s3_endpoint, s3_region);
            if let Some(limit) = &pageserver_resident_limit {
                anyhow::ensure!(
                    control_plane::config::parse_size(limit).is_some(),
                    "--pageserver-resident-limit {limit:?} is not a size (e.g. 64MiB, 10GiB)"
                );
                anyhow::ensure!(conf.pageserver.remote_storage.is_some(), "--pageserver-resident-limit needs object storage (not --remote-storage none): evicted layers are read back from it");
            }
            conf.pageserver.resident_limit = pageserver_resident_limit;
            let tls_dir = repo.join(control_plane::tls::TLS_DIR);
            if let (Some(proxy), false) = (conf.proxy.as_mut(), no_proxy_tls) {
                proxy.tls_cert = Some(tls_dir.join("proxy.crt").display().to_string());
                proxy.tls_key = Some(tls_dir.join("proxy.key").display().to_string());
            }
            conf.auth = !no_auth;
            let path = conf.save_new(repo)?;
            if conf.auth {
                control_plane::auth::init(repo).context("generate the cluster's key pair and tokens")?;
                println!("auth: tokens on every component; keys and tokens in {}", repo.join(control_plane::auth::AUTH_DIR).display());
            }
            if let Some(proxy) = conf.proxy.as_ref().filter(|p| p.tls_cert.is_some()) {
                let files = match (&proxy_tls_cert, &proxy_tls_key) {
                    (Some(cert), Some(key)) => control_plane::tls::install(repo, cert, key)?,
                    _ => control_plane::tls::generate(repo, &proxy.at.host)?,
                };
                if let Some(ca) = &files.ca {
                    println!("proxy TLS: clients verify it with sslrootcert={}", ca.display());
                }
            }
            println!("initialized {} ({} safekeeper(s)); next: strata start", path.display(), safekeepers);
        }
        Cmd::Auth(cmd) => {
            anyhow::ensure!(Config::load(repo)?.auth, "auth is off in this repository (strata init --no-auth)");
            match cmd {
                AuthCmd::Token { scope, tenant, ttl } => println!("{}", control_plane::auth::sign(repo, scope, tenant, ttl)?),
                AuthCmd::Rotate => {
                    let key = control_plane::auth::rotate(repo)?;
                    println!("new signing key {key}; tokens re-signed; old keys are still accepted until `strata auth finish-rotation`");
                }
                AuthCmd::FinishRotation => {
                    let removed = control_plane::auth::finish_rotation(repo)?;
                    println!("removed {} old key(s): {}", removed.len(), removed.join(", "));
                }
            }
        }
        Cmd::Start => {
            let cluster = Cluster::load(repo)?;
            cluster.start().await?;
            cluster.reattach_missing_tenants().await?;
        }
        Cmd::Stop => {
            let cluster = Cluster::load(repo)?;
            for ep in Endpoint::list(repo)?.iter().filter(|e| e.running_pid().is_some() || (e.lazy_active && control_plane::lazy::is_mounted(&e.pgdata))) {
                ep.stop(repo).await?;
                println!("{:<14} stopped", format!("endpoint {}", ep.name));
            }
            cluster.stop().await?
        }
        Cmd::Status => {
            let cluster = Cluster::load(repo)?;
            for line in cluster.status_lines().await? {
                println!("{line}");
            }
            for line in cluster.timeline_status_lines().await? {
                println!("{line}");
            }
        }
        Cmd::Tenant(TenantCmd::Create { set_default, config }) => {
            let t = Cluster::load(repo)?.tenant_create(set_default, &config).await?;
            println!("created tenant {t} with branch main{}", if set_default { " (default)" } else { "" });
            if !config.is_empty() {
                let set: Vec<String> = config.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("settings: {}", set.join(" "));
            }
        }
        Cmd::Tenant(TenantCmd::Config { tenant_id, config, reset }) => {
            let cluster = Cluster::load(repo)?;
            let tenant = State::load(repo)?.tenant(tenant_id)?;
            let settings = if config.is_empty() && reset.is_empty() {
                cluster.tenant_config(tenant).await?
            } else {
                cluster.tenant_config_change(tenant, &config, &reset).await?
            };
            print!("{}", settings.render());
        }
        Cmd::Tenant(TenantCmd::Import { pgdata, set_default }) => {
            let t = Cluster::load(repo)?.tenant_import(&pgdata, set_default).await?;
            println!("imported tenant {t} with branch main{}", if set_default { " (default)" } else { "" });
        }
        Cmd::Tenant(TenantCmd::List) => {
            let cluster = Cluster::load(repo)?;
            let default = State::load(repo)?.default_tenant;
            for t in cluster.tenants().await? {
                println!("{t}{}", if Some(t) == default { " (default)" } else { "" });
            }
        }
        Cmd::Timeline(TimelineCmd::Branch { branch_name, ancestor_branch_name, ancestor_start_lsn, at, tenant_id }) => {
            let cluster = Cluster::load(repo)?;
            let tenant = State::load(repo)?.tenant(tenant_id)?;
            let point = match (ancestor_start_lsn, at) {
                (Some(lsn), _) => BranchPoint::Lsn(lsn),
                (None, Some(ts)) => BranchPoint::Timestamp(ts),
                (None, None) => BranchPoint::Latest,
            };
            let lsn = cluster.branch(tenant, &branch_name, &ancestor_branch_name, point).await?;
            println!("created branch {branch_name} at LSN {lsn} of {ancestor_branch_name} (tenant {tenant})");
        }
        Cmd::Timeline(TimelineCmd::List { tenant_id }) => {
            Config::load(repo)?;
            let state = State::load(repo)?;
            let tenant = state.tenant(tenant_id)?;
            let branches: Vec<Branch> = state.branches.iter().filter(|b| b.tenant_id == tenant).cloned().collect();
            print_tree(&branches, None, 0);
        }
        Cmd::Timeline(TimelineCmd::Delete { name, tenant_id }) => {
            let cluster = Cluster::load(repo)?;
            let tenant = State::load(repo)?.tenant(tenant_id)?;
            let deleted = cluster.timeline_delete(tenant, &name).await?;
            for ep in &deleted.endpoints {
                println!("removed stopped endpoint {ep}");
            }
            println!("deleted branch {name} (timeline {}) of tenant {tenant}", deleted.timeline_id);
        }
        Cmd::Endpoint(cmd) => run_endpoint(repo, cmd).await?,
        Cmd::Logs { name, lines, follow } => {
            let path = control_plane::logs::log_file(&Cluster::load(repo)?, &name)?;
            print!("{}", control_plane::logs::tail(&path, lines)?);
            if follow {
                tokio::task::spawn_blocking(move || control_plane::logs::follow(&path, &mut std::io::stdout())).await??;
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("strata: error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
