//! The components of a local cluster and the order they start and stop in:
//! broker, safekeepers, pageserver, proxy up; the reverse down.

use anyhow::Context;
use std::path::{Path, PathBuf};

use crate::background::{self, Component};
use crate::config::Config;

pub struct Cluster {
    pub repo: PathBuf,
    pub conf: Config,
}

impl Cluster {
    pub fn load(repo: &Path) -> anyhow::Result<Cluster> {
        let repo = std::path::absolute(repo).with_context(|| format!("resolve {}", repo.display()))?;
        let conf = Config::load(&repo)?;
        let token = if conf.auth { Some(crate::auth::admin_token(&repo).context("the control plane's token")?) } else { None };
        crate::api::set_token(token);
        Ok(Cluster { conf, repo })
    }

    pub fn broker_addr(&self) -> String {
        self.conf.broker.at.addr(self.conf.broker.http_port)
    }

    pub fn pageserver_http(&self) -> String {
        self.conf.pageserver.at.http(self.conf.pageserver.http_port)
    }

    /// URL of endpoint `ep` through the proxy, if the cluster has one; with
    /// its password when `with_password`.
    pub fn proxy_url(&self, ep: &crate::endpoint::Endpoint, with_password: bool) -> Option<String> {
        let proxy = self.conf.proxy.as_ref()?;
        let password = match (&ep.credential, with_password) {
            (Some(c), true) => format!(":{}", c.password.expose()),
            _ => String::new(),
        };
        let (role, name) = (crate::secrets::CLIENT_ROLE, &ep.name);
        Some(format!("postgresql://{role}{password}@{}/postgres?options=endpoint%3D{name}", proxy.at.addr(proxy.pg_port)))
    }

    pub fn safekeeper_http(&self, id: u64) -> Option<String> {
        self.conf.safekeepers.iter().find(|s| s.id == id).map(|s| s.at.http(s.http_port))
    }

    /// Components in start order.
    pub fn components(&self) -> anyhow::Result<Vec<Component>> {
        let bin = background::bin_dir()?;
        let mut out = vec![Component {
            name: "broker".into(),
            dir: self.repo.join("broker"),
            binary: bin.join("broker"),
            args: [vec!["--listen".into(), self.conf.broker.at.listen_addr(self.conf.broker.http_port)], crate::auth::broker_args(&self.repo, self.conf.auth)].concat(),
            ports: vec![self.conf.broker.http_port],
            ready_url: format!("http://{}/metrics", self.broker_addr()),
            at: self.conf.broker.at.clone(),
        }];
        for sk in &self.conf.safekeepers {
            let dir = self.repo.join(format!("safekeeper_{}", sk.id));
            out.push(Component {
                name: format!("safekeeper_{}", sk.id),
                binary: bin.join("safekeeper"),
                args: [safekeeper_args(sk, &dir, &self.broker_addr(), &self.repo, &self.conf.pageserver), crate::auth::safekeeper_args(&self.repo, self.conf.auth)].concat(),
                ports: vec![sk.pg_port, sk.http_port],
                ready_url: format!("{}/metrics", sk.at.http(sk.http_port)),
                at: sk.at.clone(),
                dir,
            });
        }
        let ps = &self.conf.pageserver;
        let dir = self.repo.join("pageserver");
        out.push(Component {
            name: "pageserver".into(),
            binary: bin.join("pageserver"),
            args: [pageserver_args(ps, &dir), crate::auth::pageserver_args(&self.repo, self.conf.auth)].concat(),
            ports: vec![ps.pg_port, ps.http_port],
            ready_url: format!("{}/metrics", ps.at.http(ps.http_port)),
            at: ps.at.clone(),
            dir,
        });
        if let Some(proxy) = &self.conf.proxy {
            out.push(Component {
                name: "proxy".into(),
                dir: self.repo.join("proxy"),
                binary: bin.join("proxy"),
                args: vec![
                    "--repo-dir".into(),
                    self.repo.display().to_string(),
                    "--listen".into(),
                    proxy.at.listen_addr(proxy.pg_port),
                    "--listen-http".into(),
                    proxy.at.listen_addr(proxy.http_port),
                ]
                .into_iter()
                .chain(proxy.tls_cert.iter().flat_map(|c| ["--tls-cert".to_string(), c.clone()]))
                .chain(proxy.tls_key.iter().flat_map(|k| ["--tls-key".to_string(), k.clone()]))
                .collect(),
                ports: vec![proxy.pg_port, proxy.http_port],
                ready_url: format!("{}/metrics", proxy.at.http(proxy.http_port)),
                at: proxy.at.clone(),
            });
        }
        Ok(out)
    }

    /// Attach, at a new generation, every tenant the control plane knows
    /// that the pageserver does not have (its directory was lost): the
    /// pageserver restores it from remote storage, then the branches' WAL
    /// sources are set again (they lived in the lost directory).
    pub async fn reattach_missing_tenants(&self) -> anyhow::Result<()> {
        if self.conf.pageserver.remote_storage.is_none() {
            return Ok(());
        }
        let api = crate::api::Api::default();
        let present: Vec<utils::id::TenantId> =
            serde_json::from_value(api.get(&format!("{}/v1/tenant", self.pageserver_http())).await?)?;
        let mut state = crate::state::State::load(&self.repo)?;
        for t in state.tenants() {
            if present.contains(&t) {
                continue;
            }
            let generation = state.next_generation(t);
            state.save(&self.repo)?;
            let url = format!("{}/v1/tenant/{t}/attach", self.pageserver_http());
            api.post(&url, &serde_json::json!({ "generation": generation }))
                .await
                .with_context(|| format!("attach tenant {t} from {}", self.conf.pageserver.remote_storage.as_deref().unwrap_or("")))?;
            for b in state.branches.iter().filter(|b| b.tenant_id == t) {
                self.point_pageserver_at_safekeepers(&api, t, b.timeline_id).await?;
            }
            println!("{:<14} tenant {t} attached from remote storage (generation {generation})", "pageserver");
        }
        Ok(())
    }

    /// Start every component that is not running; stops what it started if
    /// one fails, so nothing is left half-started.
    pub async fn start(&self) -> anyhow::Result<()> {
        let mut started = Vec::new();
        for c in self.components()? {
            if let Some(pid) = background::running_pid(&c.dir) {
                println!("{:<14} already running (pid {pid})", c.name);
                continue;
            }
            match c.start().await {
                Ok(pid) => {
                    println!("{:<14} started (pid {pid}), log {}", c.name, background::log_path(&c.dir).display());
                    started.push(c.dir.clone());
                }
                Err(e) => {
                    for dir in started.iter().rev() {
                        let _ = background::stop(dir).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    pub async fn stop(&self) -> anyhow::Result<()> {
        for c in self.components()?.iter().rev() {
            if background::stop(&c.dir).await? {
                println!("{:<14} stopped", c.name);
            }
        }
        Ok(())
    }

    /// One line per component: name, pid, health, ports.
    pub async fn status_lines(&self) -> anyhow::Result<Vec<String>> {
        let mut lines = vec![format!("{:<14} {:>8}  {:<8} {}", "COMPONENT", "PID", "HEALTH", "PORTS")];
        for c in self.components()? {
            let pid = background::running_pid(&c.dir);
            let health = match pid {
                None => "stopped",
                Some(_) if background::is_ready(&c.ready_url).await => "ok",
                Some(_) => "failing",
            };
            let ports: Vec<String> = c.ports.iter().map(u16::to_string).collect();
            let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            lines.push(format!("{:<14} {:>8}  {:<8} {}", c.name, pid, health, ports.join(",")));
        }
        Ok(lines)
    }
}

/// A safekeeper's command line: it offloads WAL to the cluster's remote
/// storage (the pageserver's), when there is one, and logs in to computes
/// with the cluster's replication password.
fn safekeeper_args(sk: &crate::config::SafekeeperConf, dir: &Path, broker: &str, repo: &Path, ps: &crate::config::PageserverConf) -> Vec<String> {
    let mut args = vec![
        "--id".into(),
        sk.id.to_string(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--listen-pg".into(),
        sk.at.listen_addr(sk.pg_port),
        "--listen-http".into(),
        sk.at.listen_addr(sk.http_port),
        "--advertise-pg".into(),
        sk.at.addr(sk.pg_port),
        "--advertise-http".into(),
        sk.at.addr(sk.http_port),
        "--broker-endpoint".into(),
        broker.to_string(),
        "--compute-password-file".into(),
        crate::secrets::replication_password_path(repo).display().to_string(),
    ];
    args.extend(remote_storage_args(ps));
    args
}

/// `--remote-storage`, `--s3-endpoint`, `--s3-region` of the cluster's remote storage.
fn remote_storage_args(ps: &crate::config::PageserverConf) -> Vec<String> {
    let mut args = Vec::new();
    let options = [("--remote-storage", &ps.remote_storage), ("--s3-endpoint", &ps.s3_endpoint), ("--s3-region", &ps.s3_region)];
    for (flag, value) in options {
        if let Some(v) = value {
            args.extend([flag.to_string(), v.clone()]);
        }
    }
    args
}

/// The pageserver's command line.
fn pageserver_args(ps: &crate::config::PageserverConf, dir: &Path) -> Vec<String> {
    let mut args = vec![
        "--workdir".into(),
        dir.join("data").display().to_string(),
        "--listen-pg".into(),
        ps.at.listen_addr(ps.pg_port),
        "--listen-http".into(),
        ps.at.listen_addr(ps.http_port),
    ];
    let options = [
        ("--remote-storage", &ps.remote_storage),
        ("--s3-endpoint", &ps.s3_endpoint),
        ("--s3-region", &ps.s3_region),
        ("--resident-limit", &ps.resident_limit),
    ];
    for (flag, value) in options {
        if let Some(v) = value {
            args.extend([flag.to_string(), v.clone()]);
        }
    }
    args
}
