//! What the `strata` subcommands do, across pageserver, safekeepers and
//! computes. Every operation validates names and state first and only then
//! changes anything, so bad input leaves nothing half-created.
//!
//! `endpoint start` makes the endpoint's password at its first start and
//! sets it (and the cluster's replication role) on the compute once it is
//! up, and returns only when a quorum of safekeepers follows the compute
//! and holds that change. It takes its start LSN and new term from a quorum of
//! safekeepers ([`crate::election`]), writes the term, then waits for the
//! pageserver (which streams from any safekeeper) to reach exactly that LSN
//! before the basebackup. Branch points and `endpoint compare` still wait
//! for the pageserver to reach the safekeepers' commit LSN
//! (`caught_up_lsn`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;
use utils::pg_user::PgUser;

use crate::api::{field, Api};
use crate::cluster::Cluster;
use crate::endpoint::{self, ComputeMode, Endpoint};
use crate::secrets::Credential;
use crate::settings::SettingsChange;
use crate::state::{Branch, State};

/// Where on its ancestor a new branch starts.
pub enum BranchPoint {
    /// Everything committed so far.
    Latest,
    Lsn(Lsn),
    /// The last commit at or before this RFC 3339 time.
    Timestamp(String),
}

/// How long an endpoint start waits for the pageserver to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    fn ps(&self, path: &str) -> String {
        format!("{}{path}", self.pageserver_http())
    }

    fn timeline_path(t: TenantId, tl: TimelineId) -> String {
        format!("/v1/tenant/{t}/timeline/{tl}")
    }

    fn quorum(&self) -> usize {
        self.conf.safekeepers.len() / 2 + 1
    }

    /// Create the timeline on every safekeeper and point the pageserver's
    /// walreceiver at all of them (it streams from the most advanced).
    async fn attach_wal(&self, api: &Api, t: TenantId, tl: TimelineId, start: Lsn) -> anyhow::Result<()> {
        let peers: Vec<u64> = self.conf.safekeepers.iter().map(|s| s.id).collect();
        for sk in &self.conf.safekeepers {
            let url = format!("{}/v1/tenant/{t}/timeline", sk.at.http(sk.http_port));
            let body = json!({ "timeline_id": tl, "start_lsn": start, "peers": peers, "quorum": self.quorum() });
            api.post(&url, &body).await.with_context(|| format!("create timeline on safekeeper {}", sk.id))?;
        }
        self.point_pageserver_at_safekeepers(api, t, tl).await
    }

    /// Point the pageserver's walreceiver of a timeline at every safekeeper.
    pub(crate) async fn point_pageserver_at_safekeepers(&self, api: &Api, t: TenantId, tl: TimelineId) -> anyhow::Result<()> {
        anyhow::ensure!(!self.conf.safekeepers.is_empty(), "no safekeepers configured");
        let conninfos: Vec<String> = self
            .conf
            .safekeepers
            .iter()
            .map(|sk| format!("host={} port={} user=strata options='-c tenant_id={t} -c timeline_id={tl}'", sk.at.host, sk.pg_port))
            .collect();
        let url = self.ps(&format!("{}/wal_source", Self::timeline_path(t, tl)));
        api.put(&url, &json!({ "kind": "safekeeper", "conninfos": conninfos })).await?;
        Ok(())
    }

    /// `strata tenant create [-c KEY=VALUE]…`: a tenant with those storage
    /// settings (checked by the pageserver before anything is created) whose
    /// `main` branch is a fresh initdb.
    pub async fn tenant_create(&self, set_default: bool, config: &[(String, String)]) -> anyhow::Result<TenantId> {
        let tenant = json!({ "config": crate::tenant_conf::config_object(config) });
        self.tenant_create_from(tenant, json!({ "initdb": true }), set_default).await
    }

    /// `strata tenant import --pgdata DIR`: a tenant whose `main` branch is a
    /// stopped PostgreSQL 15 data directory (checked first: nothing is
    /// created when it is refused).
    pub async fn tenant_import(&self, pgdata: &std::path::Path, set_default: bool) -> anyhow::Result<TenantId> {
        let checked = crate::import::check_pgdata(pgdata)?;
        let mb = checked.size_bytes as f64 / (1 << 20) as f64;
        eprintln!("importing {} ({mb:.1} MiB, system id {})…", checked.path.display(), checked.system_id);
        let started = Instant::now();
        let t = self.tenant_create_from(json!({}), json!({ "import_pgdata": checked.path }), set_default).await?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!("imported {mb:.1} MiB in {secs:.1} s ({:.0} MiB/s)", mb / secs.max(0.001));
        Ok(t)
    }

    /// A new tenant (`tenant`: the body of the pageserver's tenant creation)
    /// whose first timeline (`main`) the pageserver makes from `source` (the
    /// `initdb` or `import_pgdata` field of its API).
    async fn tenant_create_from(&self, tenant: serde_json::Value, source: serde_json::Value, set_default: bool) -> anyhow::Result<TenantId> {
        let api = Api::default();
        let mut state = State::load(&self.repo)?;
        let created = api.post(&self.ps("/v1/tenant"), &tenant).await?;
        let t: TenantId = field(&created, "tenant_id")?;
        let tl = TimelineId::generate();
        let url = self.ps(&format!("/v1/tenant/{t}/timeline"));
        let mut body = source;
        body["new_timeline_id"] = json!(tl);
        let detail = api.post(&url, &body).await?;
        let start: Lsn = field(&detail, "last_record_lsn")?;
        self.attach_wal(&api, t, tl, start).await?;
        state.branches.push(Branch { name: "main".into(), tenant_id: t, timeline_id: tl, ancestor: None, ancestor_lsn: None });
        if set_default || state.default_tenant.is_none() {
            state.default_tenant = Some(t);
        }
        state.save(&self.repo)?;
        Ok(t)
    }

    /// The LSN of the last commit at or before `timestamp` (RFC 3339) on a timeline.
    async fn lsn_at_timestamp(&self, api: &Api, t: TenantId, tl: TimelineId, timestamp: &str) -> anyhow::Result<Lsn> {
        // Every commit made so far must be indexed before the lookup.
        let (commit, _) = self.safekeeper_positions(api, t, tl).await?;
        self.caught_up_lsn(api, t, tl, commit).await?;
        let path = format!("{}/lsn_by_timestamp", Self::timeline_path(t, tl));
        let url = reqwest::Url::parse_with_params(&self.ps(&path), &[("timestamp", timestamp)])?;
        let found = api.get(url.as_str()).await?;
        if found["kind"].as_str() == Some("past") {
            bail!("no transaction committed at or before {timestamp} on this branch");
        }
        field(&found, "lsn")
    }

    /// `strata timeline branch`.
    pub async fn branch(&self, t: TenantId, name: &str, ancestor: &str, at: BranchPoint) -> anyhow::Result<Lsn> {
        let api = Api::default();
        let mut state = State::load(&self.repo)?;
        if state.branch(t, name).is_ok() {
            bail!("branch {name:?} already exists");
        }
        let parent = state.branch(t, ancestor)?.clone();
        // "Latest" means everything committed so far, once the pageserver has it.
        let at = match at {
            BranchPoint::Lsn(lsn) => lsn,
            BranchPoint::Timestamp(ts) => self.lsn_at_timestamp(&api, t, parent.timeline_id, &ts).await?,
            BranchPoint::Latest => {
                let (commit, _) = self.safekeeper_positions(&api, t, parent.timeline_id).await?;
                self.caught_up_lsn(&api, t, parent.timeline_id, commit).await?.0
            }
        };
        let tl = TimelineId::generate();
        let body = json!({ "new_timeline_id": tl, "ancestor_timeline_id": parent.timeline_id, "ancestor_start_lsn": at });
        let detail = api.post(&self.ps(&format!("/v1/tenant/{t}/timeline")), &body).await?;
        let start: Lsn = field(&detail, "last_record_lsn")?;
        self.attach_wal(&api, t, tl, start).await?;
        state.branches.push(Branch {
            name: name.into(),
            tenant_id: t,
            timeline_id: tl,
            ancestor: Some(ancestor.into()),
            ancestor_lsn: Some(start.to_string()),
        });
        state.save(&self.repo)?;
        Ok(start)
    }

    /// Everything committed on a timeline so far, and the highest term the
    /// safekeepers report. Committed is the higher of their highest
    /// `commit_lsn` and the quorum-th highest `flush_lsn`: a commit the
    /// compute acknowledged is flushed on a quorum at once, while the
    /// safekeepers learn it as their `commit_lsn` only with the next broker
    /// round (tens of ms later), so `commit_lsn` alone can miss the commit
    /// a client saw an instant ago.
    async fn safekeeper_positions(&self, api: &Api, t: TenantId, tl: TimelineId) -> anyhow::Result<(Lsn, u64)> {
        let (mut commit, mut term, mut flushes) = (Lsn(0), 0, Vec::new());
        for sk in &self.conf.safekeepers {
            let url = format!("{}{}", sk.at.http(sk.http_port), Self::timeline_path(t, tl));
            if let Ok(status) = api.get(&url).await {
                commit = commit.max(field(&status, "commit_lsn")?);
                term = term.max(field(&status, "term")?);
                flushes.push(field::<Lsn>(&status, "flush_lsn")?);
            }
        }
        let quorum = self.quorum();
        if flushes.len() < quorum {
            bail!("only {} of {} safekeepers answer; a quorum of {quorum} is needed", flushes.len(), self.conf.safekeepers.len());
        }
        flushes.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_flush = flushes.get(quorum.max(1) - 1).copied().unwrap_or(Lsn(0));
        Ok((commit.max(quorum_flush), term))
    }

    /// Wait until the pageserver has ingested what the safekeepers committed;
    /// returns its last record LSN and the start of that record. Committed
    /// WAL may end inside a record (a compute crashed mid-write): then the
    /// pageserver's walreceiver has received every committed byte but its
    /// last record ends before, and that record end is the answer.
    async fn caught_up_lsn(&self, api: &Api, t: TenantId, tl: TimelineId, commit: Lsn) -> anyhow::Result<(Lsn, Option<Lsn>)> {
        let url = self.ps(&Self::timeline_path(t, tl));
        let started = Instant::now();
        let mut unfinished_since: Option<Instant> = None;
        loop {
            let detail = api.get(&url).await?;
            let lsn: Lsn = field(&detail, "last_record_lsn")?;
            let prev: Option<Lsn> = field(&detail, "prev_record_lsn").ok();
            if lsn >= commit {
                return Ok((lsn, prev));
            }
            let received: Option<Lsn> = detail["walreceiver"]["last_received_lsn"].as_str().and_then(|s| s.parse().ok());
            let connected = detail["walreceiver"]["connected"].as_bool() == Some(true);
            if connected && received.is_some_and(|r| r >= commit) {
                // Everything is there; a moment more, in case the last
                // message's records are being ingested right now.
                let since = *unfinished_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    return Ok((lsn, prev));
                }
            } else {
                unfinished_since = None;
            }
            if started.elapsed() > CATCH_UP_TIMEOUT {
                let source = detail["walreceiver"]["source"].to_string();
                bail!("pageserver is at {lsn} (received {received:?} from {source}, connected: {connected}), safekeepers committed {commit}; not caught up after {CATCH_UP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `strata endpoint start`.
    pub async fn endpoint_start(&self, t: TenantId, name: &str, branch: Option<&str>, change: &SettingsChange) -> anyhow::Result<Endpoint> {
        let api = Api::default();
        let mut phases = crate::phases::Phases::start();
        let state = State::load(&self.repo)?;
        let existing = Endpoint::load(&self.repo, name)?;
        let branch_name = branch.map(str::to_string).or(existing.as_ref().map(|e| e.branch.clone())).unwrap_or_else(|| "main".into());
        let branch = state.branch(t, &branch_name)?.clone();
        if let Some(old) = existing.as_ref().filter(|e| e.lazy_active) {
            // Its lazyfs died (the compute can only fail now): clean up, so
            // this start brings it back.
            if !crate::lazy::lazyfs_running(&self.repo, name) {
                crate::lazy::kill_orphaned_postmaster(old).await;
                crate::lazy::stop(&self.repo, old).await?;
            }
        }
        if let Some(pid) = existing.as_ref().and_then(|e| e.running_pid()) {
            bail!("endpoint {name:?} is already running (pid {pid})");
        }
        if let Some(old) = existing.as_ref().filter(|e| e.lazy_active) {
            crate::lazy::stop(&self.repo, old).await?;
        }
        for other in Endpoint::list(&self.repo)? {
            if other.timeline_id == branch.timeline_id && other.name != name && other.running_pid().is_some() {
                bail!("branch {branch_name:?} already has a running endpoint {:?}", other.name);
            }
        }
        let others = Endpoint::list(&self.repo)?;
        let taken: Vec<u16> = others.iter().map(|e| e.port).collect();
        let port = match &existing {
            Some(e) => e.port,
            None => endpoint::free_port(self.conf.endpoint_base_port, &taken)?,
        };
        let mode = change.mode.or(existing.as_ref().map(|e| e.mode)).unwrap_or(self.conf.compute.default_mode);
        let lazy = mode == ComputeMode::Lazy
            && match crate::lazy::unavailable() {
                None => true,
                Some(why) => {
                    eprintln!("strata: lazy start of endpoint {name} is unavailable here ({why}); starting from a full basebackup");
                    false
                }
            };
        // The start LSN and the new term come from a quorum of safekeepers;
        // the term is written before the compute exists, fencing older ones.
        phases.done("checks");
        let election = self.elect(&api, t, branch.timeline_id).await?;
        phases.done("election");
        // No password in it: the safekeepers read the replication password
        // from their --compute-password-file.
        let replication = crate::secrets::replication_credential(&self.repo)?;
        let conninfo = format!("host={} port={port} user={} dbname=postgres", self.conf.compute.at.host, crate::secrets::REPLICATION_ROLE);
        self.establish_term(&api, t, branch.timeline_id, &election, &conninfo).await?;
        phases.done("term");
        let lsn = election.start_lsn;
        let prev = self.pageserver_at(&api, t, branch.timeline_id, lsn).await?;
        phases.done("pageserver catch-up");
        let pgdata = endpoint::pgdata_dir(&self.repo, name, &PgUser::from_env()?)?;
        let lazyfs_port = match (lazy, existing.as_ref().and_then(|e| e.lazyfs_port)) {
            (false, _) => None,
            (true, Some(p)) if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() => Some(p),
            (true, _) => {
                let taken: Vec<u16> = others.iter().filter(|e| e.name != name).filter_map(|e| e.lazyfs_port).collect();
                Some(endpoint::free_port(crate::lazy::lazyfs_base_port(port), &taken)?)
            }
        };
        let ep = Endpoint {
            name: name.into(),
            branch: branch_name,
            tenant_id: t,
            timeline_id: branch.timeline_id,
            port,
            pgdata,
            start_lsn: Some(lsn.to_string()),
            settings: change.apply(&existing.as_ref().map(|e| e.settings.clone()).unwrap_or_default()),
            at: self.conf.compute.at.clone(),
            suspend_after_s: match change.suspend_after_s {
                Some(0) => None,
                Some(s) => Some(s),
                None => existing.as_ref().and_then(|e| e.suspend_after_s),
            },
            suspended: false,
            credential: Some(existing.as_ref().and_then(|e| e.credential.clone()).unwrap_or_else(Credential::generate)),
            mode,
            lazy_active: lazy,
            lazyfs_port,
        };
        match lazyfs_port {
            Some(http_port) => self.mount_lazy(&api, &ep, lsn, prev, http_port, &mut phases).await?,
            None => self.fetch_basebackup(&api, &ep, lsn, prev).await?,
        }
        if lazyfs_port.is_none() {
            phases.done("basebackup");
        }
        ep.write_config(&self.conf.safekeepers.iter().map(|s| format!("sk_{}", s.id)).collect::<Vec<_>>(), self.quorum())?;
        ep.save(&self.repo)?;
        if let Err(e) = ep.start_postgres().await {
            // Settings that keep postgres from starting are not kept.
            let previous = existing.as_ref().map(|e| e.settings.clone()).unwrap_or_default();
            Endpoint { settings: previous, ..ep.clone() }.save(&self.repo)?;
            if ep.lazy_active {
                crate::lazy::stop(&self.repo, &ep).await?;
            }
            return Err(e);
        }
        phases.done("postgres");
        if ep.lazy_active {
            std::fs::copy(ep.pgdata.join("postmaster.pid"), ep.pid_copy_path()).context("copy postmaster.pid beside the lazy data directory")?;
        }
        if let Err(e) = ep.configure_roles(&replication).await {
            // Not left running with passwords no one holds.
            let _ = ep.stop(&self.repo).await;
            return Err(e.context(format!("set the passwords of endpoint {name}")));
        }
        phases.done("roles");
        let streaming = async { self.await_streaming(&api, t, branch.timeline_id, &election, &conninfo, ep.wal_flush_lsn().await?).await };
        if let Err(e) = streaming.await {
            // Writes would wait for ever, and the roles are not durable.
            let _ = ep.stop(&self.repo).await;
            return Err(e.context(format!("endpoint {name}: the safekeepers do not follow it")));
        }
        phases.done("safekeepers");
        eprintln!("strata: endpoint {name} ({}) started in {}", ep.mode_label(), phases.summary());
        Ok(ep)
    }

    /// A lazy data directory for `ep` at `lsn`: a sizes-only basebackup
    /// unpacked into the overlay, then lazyfs mounted over `ep.pgdata`.
    async fn mount_lazy(&self, api: &Api, ep: &Endpoint, lsn: Lsn, prev: Option<Lsn>, http_port: u16, phases: &mut crate::phases::Phases) -> anyhow::Result<()> {
        let backing = crate::lazy::lazyfs_dir(&self.repo, &ep.name).join("backing");
        self.fetch_basebackup_into(api, ep, lsn, prev, "sizes", &backing).await?;
        phases.done("basebackup (sizes)");
        let start = crate::lazy::LazyStart {
            repo: &self.repo,
            ep,
            lsn,
            pageserver_host: &self.conf.pageserver.at.host,
            pageserver_pg_port: self.conf.pageserver.pg_port,
            http_port,
            prefetch: self.conf.compute.lazy_prefetch.unwrap_or(true),
            passthrough: self.conf.compute.lazy_passthrough.unwrap_or(false),
        };
        start.mount().await?;
        phases.done("mount");
        Ok(())
    }

    /// Wait until the pageserver's last record ends exactly at `lsn` (the
    /// elected start); returns the start of that record.
    async fn pageserver_at(&self, api: &Api, t: TenantId, tl: TimelineId, lsn: Lsn) -> anyhow::Result<Option<Lsn>> {
        let url = self.ps(&Self::timeline_path(t, tl));
        let started = Instant::now();
        loop {
            let detail = api.get(&url).await?;
            let last: Lsn = field(&detail, "last_record_lsn")?;
            if last == lsn {
                return Ok(field(&detail, "prev_record_lsn").ok());
            }
            if last > lsn {
                bail!("the pageserver ingested WAL up to {last}, past the start LSN {lsn} the safekeepers elected");
            }
            if started.elapsed() > CATCH_UP_TIMEOUT {
                bail!("pageserver is at {last}, the compute starts at {lsn}; not caught up after {CATCH_UP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fetch_basebackup(&self, api: &Api, ep: &Endpoint, lsn: Lsn, prev: Option<Lsn>) -> anyhow::Result<()> {
        self.fetch_basebackup_into(api, ep, lsn, prev, "full", &ep.pgdata).await
    }

    /// The basebackup of `ep`'s timeline at `lsn` (`relations`: `full` or
    /// `sizes`), unpacked into `dest` (replaced).
    async fn fetch_basebackup_into(&self, api: &Api, ep: &Endpoint, lsn: Lsn, prev: Option<Lsn>, relations: &str, dest: &std::path::Path) -> anyhow::Result<()> {
        let mut url = self.ps(&format!("{}/basebackup?lsn={lsn}&relations={relations}", Self::timeline_path(ep.tenant_id, ep.timeline_id)));
        if let Some(prev) = prev {
            url.push_str(&format!("&prev_lsn={prev}"));
        }
        // Unpacked as it arrives: the tar is neither held in memory nor copied.
        let resp = api.get_body(&url).await?;
        let label = format!("basebackup of endpoint {} ({relations})", ep.name);
        let moved = crate::untar::unpack_from(resp, &url, dest, &label).await?;
        if relations == "full" {
            eprintln!("strata: {label}: {} in {:.1} s ({:.1} MiB/s)", human_bytes(moved.bytes), moved.elapsed.as_secs_f64(), moved.mib_per_s());
        }
        Ok(())
    }

    /// `strata endpoint stop`: stopped by the user, so not woken by the proxy.
    pub async fn endpoint_stop(&self, name: &str) -> anyhow::Result<()> {
        let ep = Endpoint::load(&self.repo, name)?.with_context(|| format!("no endpoint named {name:?}"))?;
        ep.stop(&self.repo).await?;
        if ep.suspended {
            Endpoint { suspended: false, ..ep }.save(&self.repo)?;
        }
        Ok(())
    }
}

impl Cluster {
    /// Tenant ids the pageserver holds.
    pub async fn tenants(&self) -> anyhow::Result<Vec<TenantId>> {
        let list = Api::default().get(&self.ps("/v1/tenant")).await?;
        let items = list.as_array().cloned().unwrap_or_default();
        items.iter().map(|v| match v {
            serde_json::Value::String(s) => Ok(s.parse()?),
            other => field(other, "tenant_id"),
        }).collect()
    }

    /// One line per branch: pageserver LSNs, safekeeper commit LSN, how far
    /// ingest lags behind it, the database size at the last record, and the
    /// layer files' size — all of them (`PHYSICAL`), on the pageserver's disk
    /// (`RESIDENT`) and in object storage (`REMOTE`, as last uploaded); then
    /// the pageserver's whole size on disk.
    pub async fn timeline_status_lines(&self) -> anyhow::Result<Vec<String>> {
        let api = Api::default();
        let state = State::load(&self.repo)?;
        let mut lines = Vec::new();
        if state.branches.is_empty() {
            return Ok(lines);
        }
        lines.push(String::new());
        lines.push(format!(
            "{:<16} {:<34} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "BRANCH", "TIMELINE", "LAST_RECORD", "DISK_CONS", "SK_COMMIT", "LAG", "DB_SIZE", "PHYSICAL", "RESIDENT", "REMOTE"
        ));
        for b in &state.branches {
            let url = format!("{}?include_size=true", self.ps(&Self::timeline_path(b.tenant_id, b.timeline_id)));
            let detail = api.get(&url).await.ok();
            let get = |name: &str| detail.as_ref().and_then(|d| d[name].as_str().map(str::to_string)).unwrap_or_else(|| "-".into());
            let commit = self.safekeeper_positions(&api, b.tenant_id, b.timeline_id).await.ok().map(|(c, _)| c);
            let last: Option<Lsn> = get("last_record_lsn").parse().ok();
            let lag = match (commit, last) {
                (Some(c), Some(l)) => human_bytes(c.0.saturating_sub(l.0)),
                _ => "-".into(),
            };
            let size = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_u64()).map(human_bytes).unwrap_or_else(|| "-".into());
            let db_size = size(detail.as_ref().map(|d| &d["logical_size"]));
            let physical = size(detail.as_ref().map(|d| &d["current_physical_size"]));
            let resident = size(detail.as_ref().map(|d| &d["resident_physical_size"]));
            let remote = size(detail.as_ref().map(|d| &d["remote"]["remote_physical_size"]));
            let commit = commit.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
            lines.push(format!(
                "{:<16} {:<34} {:>12} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
                b.name, b.timeline_id.to_string(), get("last_record_lsn"), get("disk_consistent_lsn"), commit, lag, db_size, physical, resident, remote
            ));
            lines.extend(self.safekeeper_lines(&api, b, detail.as_ref()).await);
        }
        let on_disk = crate::import::dir_size(&self.repo.join("pageserver/data"));
        lines.push(String::new());
        lines.push(format!("pageserver on disk: {}", human_bytes(on_disk)));
        Ok(lines)
    }

    /// Per safekeeper of a branch: term, flush and commit LSN, the WAL
    /// offloaded to remote storage (with remote storage); and which one the
    /// pageserver streams from.
    async fn safekeeper_lines(&self, api: &Api, b: &Branch, detail: Option<&serde_json::Value>) -> Vec<String> {
        let (answers, _) = self.ask_safekeepers(api, b.tenant_id, b.timeline_id).await;
        let source = detail.and_then(|d| d["walreceiver"]["source"]["conninfo"].as_str()).unwrap_or("");
        let connected = detail.and_then(|d| d["walreceiver"]["connected"].as_bool()).unwrap_or(false);
        let mut lines = Vec::new();
        let mut streams_from = "-".to_string();
        for sk in &self.conf.safekeepers {
            let is_source = source.contains(&format!("port={}", sk.pg_port));
            if is_source {
                streams_from = format!("sk_{}{}", sk.id, if connected { "" } else { " (connecting)" });
            }
            let line = match answers.iter().find(|a| a.id == sk.id) {
                Some(a) => {
                    let mut line = format!("  sk_{:<4} term {:<4} last_log_term {:<4} flush {:>12} commit {:>12}", sk.id, a.term, a.last_log_term, a.flush_lsn.to_string(), a.commit_lsn.to_string());
                    if let Some(backup) = a.backup_lsn {
                        line.push_str(&format!(" offloaded {:>12}", backup.to_string()));
                    }
                    line
                }
                None => format!("  sk_{:<4} not answering", sk.id),
            };
            lines.push(line);
        }
        lines.push(format!("  STREAMS_FROM {streams_from}"));
        lines
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut unit) = (n as f64, 0);
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

impl Cluster {
    /// `strata endpoint compare`: stop the endpoint cleanly, take a
    /// basebackup at the LSN it stopped at, and compare every relation page,
    /// SLRU and relmapper file of the two data directories.
    pub async fn endpoint_compare(&self, name: &str) -> anyhow::Result<datadir_compare::Report> {
        let api = Api::default();
        let ep = Endpoint::load(&self.repo, name)?.with_context(|| format!("no endpoint named {name:?}"))?;
        if ep.running_pid().is_some() {
            ep.stop_postgres()?;
        }
        let (commit, _) = self.safekeeper_positions(&api, ep.tenant_id, ep.timeline_id).await?;
        let (lsn, prev) = self.caught_up_lsn(&api, ep.tenant_id, ep.timeline_id, commit).await?;
        let tmp = tempfile::Builder::new().prefix("strata-compare-").tempdir()?;
        let rebuilt = Endpoint { pgdata: tmp.path().join("pgdata"), ..ep.clone() };
        self.fetch_basebackup(&api, &rebuilt, lsn, prev).await?;
        let (a, b) = (ep.pgdata.clone(), rebuilt.pgdata.clone());
        // A lazy data directory is read through its (still mounted) lazyfs:
        // blocks the compute never touched come from the start LSN.
        let report = tokio::task::spawn_blocking(move || datadir_compare::compare_datadirs(&a, &b, &Default::default())).await?;
        if ep.lazy_active {
            crate::lazy::stop(&self.repo, &ep).await?;
        }
        Ok(report?)
    }
}
