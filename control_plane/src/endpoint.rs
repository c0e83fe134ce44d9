//! Computes ("endpoints"): stock PostgreSQL 15 servers started from a
//! basebackup of a branch, with the cluster's safekeepers as synchronous
//! standbys.
//!
//! Each endpoint has a directory `<repo>/endpoints/<name>/` with its
//! `endpoint.toml` and log; its data directory lives there too when the
//! unprivileged Postgres user can reach the repository, otherwise under
//! `/var/lib/strata/endpoints/<repo hash>/<name>` (CI checkouts under
//! `/root` are not reachable). Postgres runs as that user via `pg_ctl`.
//!
//! Invariants: one running endpoint per branch (checked by the caller
//! against `endpoint.toml` files and live postmasters); the data directory is
//! replaced wholesale at every start, since the pageserver holds the truth.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use utils::id::{TenantId, TimelineId};
use utils::pg_user::{pg_bin_dir, PgUser};

pub const ENDPOINT_FILE: &str = "endpoint.toml";
/// WAL a compute keeps for an absent safekeeper's slot; one further behind
/// catches up from its peers instead.
pub const MAX_SLOT_WAL_KEEP_SIZE: &str = "1GB";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub branch: String,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub port: u16,
    pub pgdata: PathBuf,
    /// LSN of the basebackup the endpoint last started from.
    pub start_lsn: Option<String>,
}

pub fn endpoints_dir(repo: &Path) -> PathBuf {
    repo.join("endpoints")
}

/// Where the data directory of endpoint `name` goes.
pub fn pgdata_dir(repo: &Path, name: &str, user: &PgUser) -> anyhow::Result<PathBuf> {
    let local = endpoints_dir(repo).join(name).join("pgdata");
    let repo_abs = fs::canonicalize(repo).with_context(|| format!("resolve {}", repo.display()))?;
    if user.can_traverse(&repo_abs) {
        return Ok(local);
    }
    let hash = crc32c::crc32c(repo_abs.to_string_lossy().as_bytes());
    Ok(PathBuf::from(format!("/var/lib/strata/endpoints/{hash:08x}/{name}/pgdata")))
}

impl Endpoint {
    pub fn dir(repo: &Path, name: &str) -> PathBuf {
        endpoints_dir(repo).join(name)
    }

    pub fn load(repo: &Path, name: &str) -> anyhow::Result<Option<Endpoint>> {
        let path = Self::dir(repo, name).join(ENDPOINT_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        Ok(Some(toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?))
    }

    pub fn list(repo: &Path) -> anyhow::Result<Vec<Endpoint>> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(endpoints_dir(repo)) else { return Ok(out) };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(ep) = Self::load(repo, &name)? {
                out.push(ep);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn save(&self, repo: &Path) -> anyhow::Result<()> {
        let dir = Self::dir(repo, &self.name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(ENDPOINT_FILE), toml::to_string_pretty(self)?)?;
        Ok(())
    }

    pub fn log_path(&self, repo: &Path) -> PathBuf {
        Self::dir(repo, &self.name).join("postgres.log")
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Pid of the running postmaster, if any.
    pub fn running_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        (alive && !crate::background::is_zombie(pid)).then_some(pid)
    }

    /// Write the compute's configuration: local port, the safekeepers as
    /// synchronous standbys, and trust authentication on loopback.
    pub fn write_config(&self, standby_names: &[String], quorum: usize) -> anyhow::Result<()> {
        let socket_dir = self.pgdata.parent().context("pgdata has a parent")?;
        let sync = format!("ANY {quorum} ({})", standby_names.join(", "));
        let conf = format!(
            "# Written by strata: changes are lost at the next `strata endpoint start`.\n\
             listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sock}'\n\
             wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             synchronous_standby_names = '{sync}'\nsynchronous_commit = on\n\
             wal_sender_timeout = 10s\nfull_page_writes = on\nmax_prepared_transactions = 10\n\
             logging_collector = off\n\
             max_slot_wal_keep_size = {keep}\n",
            port = self.port,
            sock = socket_dir.display(),
            keep = MAX_SLOT_WAL_KEEP_SIZE,
        );
        fs::write(self.pgdata.join("postgresql.conf"), conf)?;
        fs::write(self.pgdata.join("postgresql.auto.conf"), "")?;
        let hba = "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n";
        fs::write(self.pgdata.join("pg_hba.conf"), hba)?;
        fs::write(self.pgdata.join("pg_ident.conf"), "")?;
        Ok(())
    }

    fn pg_ctl(&self, repo: &Path, args: &[&str]) -> anyhow::Result<()> {
        let user = PgUser::from_env()?;
        let log = self.log_path(repo);
        if !log.exists() {
            fs::write(&log, "")?;
        }
        user.chown(&log)?;
        let out = user
            .command(pg_bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .args(args)
            .output()
            .context("run pg_ctl")?;
        if !out.status.success() {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "pg_ctl {} failed: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// Start the postmaster in the background and wait until it accepts connections.
    pub fn start_postgres(&self, repo: &Path) -> anyhow::Result<()> {
        let user = PgUser::from_env()?;
        let parent = self.pgdata.parent().context("pgdata has a parent")?;
        user.chown(parent)?;
        fs::set_permissions(&self.pgdata, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        self.pg_ctl(repo, &["-w", "-t", "60", "start"])
    }

    /// Fast shutdown (the safekeepers receive the shutdown checkpoint).
    pub fn stop_postgres(&self, repo: &Path) -> anyhow::Result<()> {
        if self.running_pid().is_none() {
            return Ok(());
        }
        self.pg_ctl(repo, &["-w", "-t", "60", "-m", "fast", "stop"])
    }
}

/// A free loopback port for a new endpoint, starting at `from`.
pub fn free_port(from: u16, taken: &[u16]) -> anyhow::Result<u16> {
    for port in from..from.saturating_add(1000) {
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {from}..{}", from.saturating_add(1000))
}
