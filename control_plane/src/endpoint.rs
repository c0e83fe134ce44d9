//! Computes ("endpoints"): stock PostgreSQL 15 servers started from a
//! basebackup of a branch, with the cluster's safekeepers as synchronous
//! standbys.
//!
//! Each endpoint has a directory `<repo>/endpoints/<name>/` with its
//! `endpoint.toml`; its data directory, log and socket live there too when
//! the unprivileged Postgres user can reach the repository, otherwise in a
//! directory under `/var/lib/strata/by-path/` named after that path
//! (repositories under `/root` are not reachable). All paths are absolute.
//! Postgres runs as that user, started directly (its readiness read from
//! `postmaster.pid`) and stopped with `pg_ctl`.
//!
//! A *lazy* endpoint ([`ComputeMode::Lazy`]) has the same data directory
//! path, but it is a FUSE mount served by `lazyfs` ([`crate::lazy`]) and
//! relation blocks are fetched on demand instead of copied at start.
//!
//! Invariants: one running endpoint per branch (checked by the caller
//! against `endpoint.toml` files and live postmasters); the data directory is
//! replaced wholesale at every start, since the pageserver holds the truth.
//!
//! Authentication (`pg_hba.conf`, written at every start):
//! * TCP connections need a password (SCRAM-SHA-256): clients log in as
//!   [`CLIENT_ROLE`] with the endpoint's own password (made at its first
//!   start, kept in `endpoint.toml`, mode 0600), directly or through the
//!   proxy; replication connections only as [`REPLICATION_ROLE`], the
//!   cluster's safekeepers, with the cluster's replication password. Other
//!   roles the user creates log in with their own passwords.
//! * [`CLIENT_ROLE`] is not a superuser and has neither `REPLICATION` nor
//!   `CREATEROLE` (on PostgreSQL 15, `CREATEROLE` may grant itself
//!   `pg_execute_server_program`), so a client can neither stream WAL
//!   (`replication=database` needs one of the two attributes) nor run
//!   programs or read files as the Postgres user, who also owns every other
//!   endpoint's data directory. It owns the `postgres` database (so its
//!   `public` schema), may create databases, and holds `pg_read_all_data`,
//!   `pg_write_all_data` (tables made before it existed), `pg_monitor`,
//!   `pg_checkpoint` and `pg_signal_backend`.
//! * [`SUPERUSER_ROLE`] and [`REPLICATION_ROLE`] are refused on TCP for
//!   databases; the superuser has no password at all.
//! * The Unix socket is trusted. It lives in the runtime directory, mode
//!   0700 and owned by the Postgres user, so only that user and root reach
//!   it — and both can read and change the data directory anyway, so a
//!   password there would protect nothing. The control plane sets the
//!   roles over it as [`SUPERUSER_ROLE`], and the proxy counts client
//!   backends over it.
//! * [`Endpoint::configure_roles`] gives the compute the stored SCRAM
//!   verifiers (never a cleartext password) and changes the catalog only
//!   when it differs, committing with `synchronous_commit = local`: the
//!   safekeepers cannot connect (nor acknowledge) before the replication
//!   role exists.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use utils::id::{TenantId, TimelineId};
use utils::pg_user::{pg_bin_dir, PgUser};

use crate::secrets::{Credential, CLIENT_ROLE, REPLICATION_ROLE, SUPERUSER_ROLE};

pub const ENDPOINT_FILE: &str = "endpoint.toml";
/// WAL a compute keeps for an absent safekeeper's slot; one further behind
/// catches up from its peers instead.
pub const MAX_SLOT_WAL_KEEP_SIZE: &str = "1GB";

/// How an endpoint's data directory is provided.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ComputeMode {
    /// A full basebackup is copied into it at every start.
    #[default]
    Full,
    /// A lazyfs mount: non-relation files from a sizes-only basebackup,
    /// relation blocks fetched from the pageserver on first read.
    Lazy,
}

impl std::fmt::Display for ComputeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ComputeMode::Full => "full",
            ComputeMode::Lazy => "lazy",
        })
    }
}

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
    /// The user's PostgreSQL settings (`-c KEY=VALUE`), applied at every start.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Host the compute listens on and network namespace it runs in (the
    /// cluster's `[compute]` placement when it last started).
    #[serde(flatten, default)]
    pub at: crate::config::Placement,
    /// Suspend (stop) the compute after this many seconds without a client
    /// connection; the proxy does it and wakes it on the next connection
    /// through it. Absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_after_s: Option<u64>,
    /// Stopped by the proxy for being idle (not by the user): the next
    /// connection through the proxy starts it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// The password of [`CLIENT_ROLE`] on this endpoint (made at its first
    /// start; `None` only before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    /// The mode asked for (`--lazy`/`--full`, else the cluster's
    /// `[compute] default_mode`); kept for later starts.
    #[serde(default)]
    pub mode: ComputeMode,
    /// Whether the last start really ran lazy (a lazy endpoint falls back to
    /// a full basebackup where FUSE is unavailable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lazy_active: bool,
    /// Port of its lazyfs's metrics endpoint (`GET /metrics` on 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazyfs_port: Option<u16>,
}

/// How often a starting postmaster's pid file is checked for `ready`.
pub const READY_POLL: std::time::Duration = std::time::Duration::from_millis(5);
/// How long a postmaster may take to accept connections.
pub const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `postmaster.pid` text is that of postmaster `pid` and says it
/// accepts connections (line 8, the status, is `ready`: PostgreSQL 15's
/// `PM_STATUS_READY`, as `pg_ctl -w` checks).
pub fn postmaster_ready(pid_file: &str, pid: u32) -> bool {
    let lines: Vec<&str> = pid_file.lines().collect();
    lines.first().and_then(|l| l.trim().parse::<u32>().ok()) == Some(pid) && lines.get(7).is_some_and(|s| s.trim() == "ready")
}

pub fn endpoints_dir(repo: &Path) -> PathBuf {
    repo.join("endpoints")
}

/// Where the data directory of endpoint `name` goes: in
/// `<repo>/endpoints/<name>/` when the Postgres user can reach it, else in a
/// directory under the state root (see [`PgUser::reachable_dir`]). Its log
/// and socket live beside it, since the postmaster writes both.
pub fn pgdata_dir(repo: &Path, name: &str, user: &PgUser) -> anyhow::Result<PathBuf> {
    let preferred = endpoints_dir(repo).join(name);
    let dir = user.reachable_dir(&preferred).with_context(|| format!("a directory for endpoint {name}"))?;
    Ok(dir.join("pgdata"))
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
        // Atomic: the proxy reads it while the CLI writes it, and back.
        // Private: it holds the endpoint's password.
        utils::fs::write_atomic_private(&dir.join(ENDPOINT_FILE), toml::to_string_pretty(self)?.as_bytes())?;
        Ok(())
    }

    /// The postmaster's log, beside the data directory (reachable by the
    /// Postgres user wherever the repository is).
    pub fn log_path(&self) -> PathBuf {
        self.runtime_dir().join("postgres.log")
    }

    /// Directory of the data directory, log and Unix socket.
    pub fn runtime_dir(&self) -> PathBuf {
        self.pgdata.parent().map(Path::to_path_buf).unwrap_or_else(|| self.pgdata.clone())
    }

    /// The compute's own URL, without the password.
    pub fn url(&self) -> String {
        format!("postgresql://{CLIENT_ROLE}@{}/postgres", self.at.addr(self.port))
    }

    /// The compute's own URL with the password in it.
    pub fn url_with_password(&self) -> String {
        let password = self.credential.as_ref().map(|c| format!(":{}", c.password.expose())).unwrap_or_default();
        format!("postgresql://{CLIENT_ROLE}{password}@{}/postgres", self.at.addr(self.port))
    }

    /// Copy of `postmaster.pid` beside a lazy data directory, readable when
    /// the mount is not (its lazyfs died).
    pub fn pid_copy_path(&self) -> PathBuf {
        self.runtime_dir().join("postmaster.pid.lazy")
    }

    /// The mode the endpoint runs in now (or last ran in): `lazy`, `full`,
    /// or `full (lazy unavailable)` after a fallback.
    pub fn mode_label(&self) -> String {
        match (self.mode, self.lazy_active) {
            (_, true) => "lazy".into(),
            (ComputeMode::Lazy, false) => "full (lazy unavailable)".into(),
            (ComputeMode::Full, false) => "full".into(),
        }
    }

    /// Pid of the running postmaster, if any.
    pub fn running_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.pgdata.join("postmaster.pid"))
            .or_else(|e| if self.lazy_active { fs::read_to_string(self.pid_copy_path()) } else { Err(e) })
            .ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        crate::background::is_alive(pid).then_some(pid)
    }

    /// Write the compute's configuration: defaults sized to the machine,
    /// then the user's settings, then what Strata manages (local port, the
    /// safekeepers as synchronous standbys), and trust authentication on
    /// loopback (and the compute's own subnets when it is not on loopback).
    pub fn write_config(&self, standby_names: &[String], quorum: usize) -> anyhow::Result<()> {
        let sync = format!("ANY {quorum} ({})", standby_names.join(", "));
        let conf = format!(
            "# Written by strata at every `strata endpoint start`: change settings\n\
             # with `strata endpoint start {name} -c KEY=VALUE` (kept in endpoint.toml).\n\
             # Defaults for this machine:\n{defaults}\
             # Settings of this endpoint:\n{user}\
             # Managed by strata:\n\
             listen_addresses = '{host}'\nport = {port}\nunix_socket_directories = '{sock}'\n\
             wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             synchronous_standby_names = '{sync}'\nsynchronous_commit = on\n\
             full_page_writes = on\nwal_compression = off\nlogging_collector = off\n",
            name = self.name,
            defaults = crate::settings::render(&crate::settings::machine_defaults()),
            user = crate::settings::render(&self.settings),
            port = self.port,
            host = self.at.listen_host(),
            sock = self.runtime_dir().display(),
        );
        fs::write(self.pgdata.join("postgresql.conf"), conf)?;
        fs::write(self.pgdata.join("postgresql.auto.conf"), "")?;
        fs::write(self.pgdata.join("pg_hba.conf"), self.hba())?;
        fs::write(self.pgdata.join("pg_ident.conf"), "")?;
        Ok(())
    }

    /// Trust on the Unix socket; passwords on loopback TCP, and on the
    /// subnets the compute is directly on when it listens on another
    /// address (its safekeepers on other hosts); replication only as
    /// [`REPLICATION_ROLE`], which with [`SUPERUSER_ROLE`] is refused for
    /// databases. The first matching line decides. See the module doc.
    fn hba(&self) -> String {
        let mut hba = "# Written by strata at every `strata endpoint start`.\n\
                       # The socket's directory is reachable by root and the Postgres user only.\n\
                       local all all trust\n"
            .to_string();
        let mut nets = vec!["127.0.0.1/32"];
        if !self.at.is_loopback() {
            nets.push("samenet");
        }
        for net in nets {
            hba.push_str(&format!(
                "host replication {REPLICATION_ROLE} {net} scram-sha-256\n\
                 host all {REPLICATION_ROLE} {net} reject\n\
                 host all {SUPERUSER_ROLE} {net} reject\n\
                 host all all {net} scram-sha-256\n"
            ));
        }
        hba
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let user = PgUser::from_env()?;
        let log = self.log_path();
        if !log.exists() {
            fs::write(&log, "")?;
        }
        user.chown(&log)?;
        let out = user
            .command_in(self.at.netns.as_deref(), pg_bin_dir().join("pg_ctl"))
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

    /// Start the postmaster in the background (its own session, output
    /// appended to [`Endpoint::log_path`], as `pg_ctl start` does) and wait
    /// until its `postmaster.pid` says `ready` — checked every
    /// [`READY_POLL`], not `pg_ctl -w`'s 100 ms. A postmaster that exits
    /// first fails the start with its log's tail. A socket lock left by a
    /// postmaster that is gone or a zombie is removed first
    /// ([`clear_stale_socket_lock`]). Cancellation: dropped
    /// midway, the postmaster keeps starting (the next start or stop finds
    /// it by its pid file).
    pub async fn start_postgres(&self) -> anyhow::Result<()> {
        let user = PgUser::from_env()?;
        let parent = self.pgdata.parent().context("pgdata has a parent")?;
        if self.lazy_active {
            // lazyfs shows every file as the Postgres user's; a recursive
            // chown through the mount would name, and so create in the
            // overlay, every relation file (and cost a FUSE round trip each).
            user.chown_one(parent)?;
            for entry in fs::read_dir(parent).with_context(|| format!("list {}", parent.display()))? {
                let path = entry?.path();
                if path != self.pgdata {
                    user.chown(&path)?;
                }
            }
        } else {
            user.chown(parent)?;
        }
        fs::set_permissions(&self.pgdata, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        // The trusted socket is in here: root and the Postgres user only.
        fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let log_path = self.log_path();
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("open {}", log_path.display()))?;
        user.chown(&log_path)?;
        clear_stale_socket_lock(&self.runtime_dir(), self.port, STALE_LOCK_WAIT).await?;
        let mut cmd = user.command_in(self.at.netns.as_deref(), pg_bin_dir().join("postgres"));
        cmd.arg("-D").arg(&self.pgdata).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
        }
        let child = cmd.spawn().context("run postgres")?;
        let pid = child.id();
        let child = std::sync::Arc::new(std::sync::Mutex::new(child));
        let result = self.wait_ready(pid, &child).await;
        // Reaped when it exits, as long as this process lives (else init does).
        std::thread::spawn(move || {
            let _ = child.lock().map(|mut c| c.wait());
        });
        result
    }

    async fn wait_ready(&self, pid: u32, child: &std::sync::Mutex<std::process::Child>) -> anyhow::Result<()> {
        let pid_file = self.pgdata.join("postmaster.pid");
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = fs::read_to_string(&pid_file) {
                if postmaster_ready(&text, pid) {
                    return Ok(());
                }
            }
            let exited = child.lock().map_err(|_| anyhow::anyhow!("postmaster handle poisoned"))?.try_wait()?;
            if let Some(status) = exited {
                bail!("postgres exited during start ({status}):\n{}", self.log_tail(15));
            }
            if std::time::Instant::now() > deadline {
                bail!("postgres did not become ready within {START_TIMEOUT:?}:\n{}", self.log_tail(15));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Fast shutdown (the safekeepers receive the shutdown checkpoint).
    pub fn stop_postgres(&self) -> anyhow::Result<()> {
        if self.running_pid().is_none() {
            return Ok(());
        }
        self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "stop"])
    }

    /// Stop the compute: PostgreSQL, then (lazy) its lazyfs. A postmaster
    /// whose lazyfs died is shut down by signal (its data directory is gone).
    pub async fn stop(&self, repo: &Path) -> anyhow::Result<()> {
        if !self.lazy_active {
            return self.stop_postgres();
        }
        let stopped = if crate::lazy::lazyfs_running(repo, &self.name) {
            self.stop_postgres()
        } else {
            crate::lazy::kill_orphaned_postmaster(self).await;
            Ok(())
        };
        if stopped.is_err() {
            // A postmaster that will not stop must not keep a lazyfs (and
            // its mount) alive after `strata stop`: shut it down hard.
            crate::lazy::kill_orphaned_postmaster(self).await;
        }
        crate::lazy::stop(repo, self).await?;
        stopped
    }
}

/// How long a start waits for the postmaster named in a socket lock file
/// to finish dying (a `kill -9` returns before the process is gone).
const STALE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Remove the socket lock file `.s.PGSQL.PORT.lock` in `dir` (and its
/// socket) when the postmaster it names is gone or a zombie. PostgreSQL
/// removes a lock of a dead process itself, but `kill(pid, 0)` succeeds on
/// a zombie, so a postmaster killed hard whose parent has not reaped it
/// yet (a container whose init reaps late or never) would block every
/// later start on that port. A live owner is waited for up to `wait`, then
/// left to PostgreSQL, which refuses with its own clear message.
async fn clear_stale_socket_lock(dir: &Path, port: u16, wait: std::time::Duration) -> anyhow::Result<()> {
    let lock = dir.join(format!(".s.PGSQL.{port}.lock"));
    let Ok(text) = fs::read_to_string(&lock) else { return Ok(()) };
    let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()).filter(|p| *p > 0) else {
        return Ok(()); // PostgreSQL reports a malformed lock file itself
    };
    let deadline = std::time::Instant::now() + wait;
    while crate::background::is_alive(pid) {
        if std::time::Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    eprintln!("strata: removing {}: postmaster {pid} is gone", lock.display());
    for path in [lock.clone(), dir.join(format!(".s.PGSQL.{port}"))] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove stale {}", path.display())),
        }
    }
    Ok(())
}

impl Endpoint {
    /// Run `sql` as [`SUPERUSER_ROLE`] over the compute's Unix socket with
    /// psql, the SQL on its standard input (never on a command line, which
    /// every local user can read); returns psql's output.
    pub async fn psql_local(&self, sql: &str) -> anyhow::Result<String> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(pg_bin_dir().join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", SUPERUSER_ROLE, "-d", "postgres", "-h"])
            .arg(self.runtime_dir())
            .args(["-p", &self.port.to_string()])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("run psql")?;
        let mut stdin = child.stdin.take().context("psql's stdin")?;
        stdin.write_all(sql.as_bytes()).await.context("write to psql")?;
        drop(stdin);
        let out = child.wait_with_output().await.context("wait for psql")?;
        if !out.status.success() {
            bail!("psql on endpoint {} over its socket: {}", self.name, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Give the running compute the roles of the module doc: the client
    /// role with this endpoint's password (created, with its grants and the
    /// `postgres` database, at the first start of a tenant's data, and
    /// demoted if an older version made it a superuser), the cluster's
    /// replication role, and no password for the superuser. Nothing is
    /// written when all is in place.
    pub async fn configure_roles(&self, replication: &Credential) -> anyhow::Result<()> {
        let client = self.credential.as_ref().with_context(|| format!("endpoint {} has no password", self.name))?;
        let query = format!(
            "SELECT rolname, coalesce(rolpassword, ''), rolsuper OR rolreplication OR rolcreaterole FROM pg_authid \
             WHERE rolname IN ('{CLIENT_ROLE}', '{REPLICATION_ROLE}', '{SUPERUSER_ROLE}')"
        );
        let current = RoleRows::parse(&self.psql_local(&query).await?);
        let sql = role_changes(&current, &client.scram_verifier, &replication.scram_verifier);
        if sql.is_empty() {
            return Ok(());
        }
        // Local commit: the safekeepers need this role to connect at all.
        let preamble = "SET synchronous_commit = local;\nSET log_statement = 'none';\nSET password_encryption = 'scram-sha-256';\n";
        self.psql_local(&format!("{preamble}BEGIN;\n{sql}COMMIT;\n")).await.map(drop)
    }

    /// The end of the WAL the running compute has flushed.
    pub async fn wal_flush_lsn(&self) -> anyhow::Result<utils::lsn::Lsn> {
        let out = self.psql_local("SELECT pg_current_wal_flush_lsn()").await?;
        out.trim().parse().with_context(|| format!("endpoint {}: WAL flush LSN", self.name))
    }
}

/// Rows of `pg_authid` as `configure_roles` reads them (psql's unaligned
/// `|`-separated output): name, verifier, and whether the role has a power
/// the module doc denies clients.
struct RoleRows(Vec<(String, String, bool)>);

impl RoleRows {
    fn parse(out: &str) -> RoleRows {
        let rows = out
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, '|');
                Some((f.next()?.to_string(), f.next()?.to_string(), f.next()? == "t"))
            })
            .collect();
        RoleRows(rows)
    }

    fn get(&self, role: &str) -> Option<&(String, String, bool)> {
        self.0.iter().find(|(r, _, _)| r == role)
    }
}

/// The SQL that brings the roles to the module doc's state (empty when
/// they are there).
fn role_changes(current: &RoleRows, client_verifier: &str, replication_verifier: &str) -> String {
    let mut sql = String::new();
    match current.get(CLIENT_ROLE) {
        None => {
            sql.push_str(&format!(
                "CREATE ROLE {CLIENT_ROLE} LOGIN CREATEDB NOSUPERUSER NOCREATEROLE NOREPLICATION PASSWORD '{client_verifier}';\n\
                 GRANT pg_read_all_data, pg_write_all_data, pg_monitor, pg_checkpoint, pg_signal_backend TO {CLIENT_ROLE};\n\
                 ALTER DATABASE postgres OWNER TO {CLIENT_ROLE};\n"
            ));
        }
        Some((_, verifier, powerful)) => {
            if *powerful {
                sql.push_str(&format!("ALTER ROLE {CLIENT_ROLE} NOSUPERUSER NOCREATEROLE NOREPLICATION;\n"));
            }
            if verifier != client_verifier {
                sql.push_str(&format!("ALTER ROLE {CLIENT_ROLE} PASSWORD '{client_verifier}';\n"));
            }
        }
    }
    match current.get(REPLICATION_ROLE) {
        None => sql.push_str(&format!("CREATE ROLE {REPLICATION_ROLE} LOGIN REPLICATION PASSWORD '{replication_verifier}';\n")),
        Some((_, verifier, _)) if verifier != replication_verifier => {
            sql.push_str(&format!("ALTER ROLE {REPLICATION_ROLE} PASSWORD '{replication_verifier}';\n"))
        }
        Some(_) => {}
    }
    if current.get(SUPERUSER_ROLE).is_some_and(|(_, verifier, _)| !verifier.is_empty()) {
        sql.push_str(&format!("ALTER ROLE {SUPERUSER_ROLE} PASSWORD NULL;\n"));
    }
    sql
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_naming(dir: &Path, port: u16, pid: u32) -> PathBuf {
        let lock = dir.join(format!(".s.PGSQL.{port}.lock"));
        fs::write(&lock, format!("{pid}\n/some/pgdata\n")).unwrap();
        fs::write(dir.join(format!(".s.PGSQL.{port}")), "").unwrap();
        lock
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    }

    #[test]
    fn socket_lock_of_a_dead_or_zombie_postmaster_is_removed_and_a_live_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let lock = lock_naming(dir.path(), 5001, dead_pid);
        block_on(clear_stale_socket_lock(dir.path(), 5001, std::time::Duration::ZERO)).unwrap();
        assert!(!lock.exists() && !dir.path().join(".s.PGSQL.5001").exists());

        // Not waited for: a zombie, which kill(pid, 0) still finds.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !crate::background::is_zombie(zombie.id() as i32) {
            assert!(std::time::Instant::now() < deadline, "child never became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let lock = lock_naming(dir.path(), 5002, zombie.id());
        block_on(clear_stale_socket_lock(dir.path(), 5002, std::time::Duration::ZERO)).unwrap();
        assert!(!lock.exists());
        zombie.wait().unwrap();

        let lock = lock_naming(dir.path(), 5003, std::process::id());
        block_on(clear_stale_socket_lock(dir.path(), 5003, std::time::Duration::from_millis(50))).unwrap();
        assert!(lock.exists() && dir.path().join(".s.PGSQL.5003").exists(), "a live owner's lock was removed");
    }

    #[test]
    fn roles_are_created_once_then_left_alone() {
        let fresh = RoleRows::parse("postgres||t\n");
        let sql = role_changes(&fresh, "V1", "R1");
        assert!(sql.contains(&format!("CREATE ROLE {CLIENT_ROLE} LOGIN CREATEDB NOSUPERUSER NOCREATEROLE NOREPLICATION PASSWORD 'V1'")), "{sql}");
        assert!(sql.contains("ALTER DATABASE postgres OWNER TO"), "{sql}");
        assert!(sql.contains(&format!("CREATE ROLE {REPLICATION_ROLE} LOGIN REPLICATION PASSWORD 'R1'")), "{sql}");
        assert!(!sql.contains("PASSWORD NULL"), "{sql}");

        let done = RoleRows::parse(&format!("postgres||t\n{CLIENT_ROLE}|V1|f\n{REPLICATION_ROLE}|R1|t\n"));
        assert_eq!(role_changes(&done, "V1", "R1"), "");
    }

    #[test]
    fn an_old_superuser_password_and_powers_are_taken_away() {
        let old = RoleRows::parse(&format!("postgres|SCRAM-SHA-256$4096:x$y:z|t\n{CLIENT_ROLE}|V0|t\n{REPLICATION_ROLE}|R1|t\n"));
        let sql = role_changes(&old, "V1", "R1");
        assert!(sql.contains(&format!("ALTER ROLE {CLIENT_ROLE} NOSUPERUSER NOCREATEROLE NOREPLICATION")), "{sql}");
        assert!(sql.contains(&format!("ALTER ROLE {CLIENT_ROLE} PASSWORD 'V1'")), "{sql}");
        assert!(sql.contains("ALTER ROLE postgres PASSWORD NULL"), "{sql}");
        assert!(!sql.contains("CREATE ROLE"), "{sql}");
    }

    #[test]
    fn readiness_is_read_from_the_pid_file_status_line() {
        let starting = "4242\n/d\n1700000000\n5432\n/s\nlocalhost\n  1234  5678\nstarting\n";
        let ready = starting.replace("starting", "ready   ");
        assert!(!postmaster_ready(starting, 4242));
        assert!(postmaster_ready(&ready, 4242));
        assert!(!postmaster_ready(&ready, 4243), "another postmaster's file");
        assert!(!postmaster_ready("4242\n/d\n", 4242), "a file still being written");
    }
}
