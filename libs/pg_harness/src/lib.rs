//! Real PostgreSQL 15 clusters for tests and benchmarks.
//!
//! [`PgCluster::start`] runs `initdb` and `postgres` from Debian's
//! `postgresql-15` as the unprivileged user ([`utils::pg_user::PgUser`]) in a
//! fresh temporary directory, listening only on 127.0.0.1 at a free port.
//! SQL goes through `psql` so the harness works the same from sync and async
//! tests.
//!
//! Invariants: a `PgCluster` owns its directory and its postmaster. Dropping
//! it (also while a failing test unwinds) stops the server and removes the
//! directory, unless `STRATA_KEEP_TEST_DIRS=1` is set, in which case the path
//! is printed and kept for inspection.

pub mod fuzz_replay;
pub mod small_disk;
pub mod standby;
pub mod workload;

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use utils::lsn::Lsn;
use utils::pg_user::{pg_bin_dir, PgUser};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 3;

/// A running (or stopped) PostgreSQL cluster in a temporary directory.
pub struct PgCluster {
    root: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    port: u16,
    user: PgUser,
    postmaster: Option<Child>,
}

/// `pg_dump` of the database at `url`, comparable between servers: without
/// the random `\restrict` / `\unrestrict` key lines pg_dump 15.14+ adds.
pub fn pg_dump(url: &str) -> anyhow::Result<String> {
    let out = Command::new(pg_bin("pg_dump")).args(["-d", url]).output().context("run pg_dump")?;
    let text = check_output("pg_dump", out)?;
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")).collect();
    Ok(kept.join("\n"))
}

/// Path of a PostgreSQL binary (`initdb`, `postgres`, `pg_waldump`, …).
pub fn pg_bin(name: &str) -> PathBuf {
    pg_bin_dir().join(name)
}

/// A free TCP port on 127.0.0.1 (free when this returns; callers retry on a
/// bind failure since another process may take it first).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A temporary directory owned by the Postgres user, under
/// `STRATA_TEST_TMPDIR` or the system temp dir.
pub fn pg_owned_tempdir(user: &PgUser, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let base = std::env::var_os("STRATA_TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // Postgres processes run in `/`: hand them absolute paths only.
    let base = std::path::absolute(&base).with_context(|| format!("resolve {}", base.display()))?;
    fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .with_context(|| format!("create temp dir in {}", base.display()))?;
    user.chown(dir.path())?;
    Ok(dir)
}

fn check_output(what: &str, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

impl PgCluster {
    /// `initdb` a new cluster and start it with `settings` appended to
    /// `postgresql.conf` (e.g. `("wal_level", "replica")`).
    pub fn start(settings: &[(&str, &str)]) -> anyhow::Result<PgCluster> {
        let mut cluster = PgCluster::init()?;
        cluster.configure(settings)?;
        cluster.start_postmaster()?;
        Ok(cluster)
    }

    /// `initdb` a new cluster without starting it.
    pub fn init() -> anyhow::Result<PgCluster> {
        let user = PgUser::from_env()?;
        let root = pg_owned_tempdir(&user, "strata-pg-")?;
        let data_dir = root.path().join("data");
        let out = user
            .command(pg_bin("initdb"))
            .args(["-D"])
            .arg(&data_dir)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N"])
            .output()
            .context("run initdb")?;
        check_output("initdb", out)?;
        Ok(PgCluster {
            root: Some(root),
            data_dir,
            port: 0,
            user,
            postmaster: None,
        })
    }

    /// A cluster whose data directory (`data_dir()`, not yet created) the
    /// caller fills, e.g. from a basebackup; then [`PgCluster::finish_data_dir`]
    /// and [`PgCluster::start_postmaster`].
    pub fn empty() -> anyhow::Result<PgCluster> {
        let user = PgUser::from_env()?;
        let root = pg_owned_tempdir(&user, "strata-pg-")?;
        let data_dir = root.path().join("data");
        Ok(PgCluster { root: Some(root), data_dir, port: 0, user, postmaster: None })
    }

    /// Write the configuration files a basebackup does not carry (trust
    /// authentication on loopback, `settings` in `postgresql.conf`) and hand
    /// the directory to the unprivileged user with mode 0700.
    pub fn finish_data_dir(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        let hba = "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n";
        fs::write(self.data_dir.join("pg_hba.conf"), hba)?;
        fs::write(self.data_dir.join("pg_ident.conf"), "")?;
        fs::write(self.data_dir.join("postgresql.conf"), "")?;
        self.configure(settings)?;
        fs::set_permissions(&self.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(self.user.chown(&self.data_dir)?)
    }

    /// Append settings to `postgresql.conf` (takes effect at the next start).
    pub fn configure(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        let conf_path = self.data_dir.join("postgresql.conf");
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .with_context(|| format!("open {}", conf_path.display()))?;
        for (name, value) in settings {
            writeln!(conf, "{name} = '{}'", value.replace('\'', "''"))?;
        }
        Ok(())
    }

    /// Start the postmaster and wait until it accepts connections.
    pub fn start_postmaster(&mut self) -> anyhow::Result<()> {
        assert!(self.postmaster.is_none(), "postmaster already running");
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            self.port = free_port()?;
            match self.try_start() {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn try_start(&mut self) -> anyhow::Result<()> {
        let log = fs::File::create(self.log_path())?;
        self.user.chown(&self.log_path())?;
        let socket_dir = self.root_dir().to_path_buf();
        let child = self
            .user
            .command(pg_bin("postgres"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-c", &format!("port={}", self.port)])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn postgres")?;
        self.postmaster = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child_mut()?.try_wait()? {
                self.postmaster = None;
                bail!("postgres exited at start ({status}):\n{}", self.log_tail());
            }
            let probe = Command::new(pg_bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()?;
            if probe.success() {
                return Ok(());
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                bail!("postgres did not become ready:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn child_mut(&mut self) -> anyhow::Result<&mut Child> {
        self.postmaster.as_mut().context("postgres is not running")
    }

    /// Run SQL (one or more statements, each in its own transaction unless
    /// grouped by the caller) in database `postgres`; returns `psql -At` output.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        self.sql_db("postgres", sql)
    }

    /// Like [`PgCluster::sql`] in database `db`.
    pub fn sql_db(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let mut child = Command::new(pg_bin("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn psql")?;
        let mut stdin = child.stdin.take().context("psql stdin")?;
        let text = sql.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let out = child.wait_with_output()?;
        writer.join().expect("psql stdin writer")?;
        check_output(&format!("psql on port {}", self.port), out)
    }

    /// `CHECKPOINT`.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        self.sql("CHECKPOINT").map(|_| ())
    }

    /// `pg_current_wal_insert_lsn()` (where the next record will go).
    pub fn current_wal_insert_lsn(&self) -> anyhow::Result<Lsn> {
        let text = self.sql("SELECT pg_current_wal_insert_lsn()")?;
        text.parse().with_context(|| format!("parse LSN {text:?}"))
    }

    /// Make every WAL record inserted so far durable; returns the flush LSN.
    ///
    /// PostgreSQL flushes WAL at commit only for a transaction that wrote WAL
    /// of its own: one that only assigned an xid (`SELECT txid_current()`) or
    /// emitted a non-transactional message commits asynchronously, and its
    /// WAL reaches disk whenever the WAL writer wakes. This runs a transaction
    /// that writes WAL (a temporary table, gone with the session), whose
    /// synchronous commit flushes everything before it.
    pub fn flush_wal(&self) -> anyhow::Result<Lsn> {
        let text = self.sql(
            "CREATE TEMP TABLE pg_harness_flush(x int); SELECT pg_current_wal_flush_lsn();",
        )?;
        text.parse().with_context(|| format!("parse LSN {text:?}"))
    }

    /// Connection string for clients (libpq URI).
    pub fn connstr(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("pg_wal")
    }

    pub fn user(&self) -> &PgUser {
        &self.user
    }

    fn root_dir(&self) -> &Path {
        self.root.as_ref().expect("root dir present until drop").path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.root_dir().join("postgres.log")
    }

    /// Last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Fast shutdown (SIGINT: abort sessions, write a shutdown checkpoint).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.stop_with(Signal::SIGINT)
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint; the next start recovers).
    pub fn stop_immediate(&mut self) -> anyhow::Result<()> {
        self.stop_with(Signal::SIGQUIT)
    }

    fn stop_with(&mut self, signal: Signal) -> anyhow::Result<()> {
        let Some(mut child) = self.postmaster.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, signal).context("signal postgres")?;
        let started = Instant::now();
        while child.try_wait()?.is_none() {
            if started.elapsed() > SHUTDOWN_TIMEOUT {
                let _ = child.kill();
                child.wait()?;
                bail!("postgres did not stop within {SHUTDOWN_TIMEOUT:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop_immediate() {
            eprintln!("pg_harness: stopping postgres: {e:#}");
        }
        if std::env::var("STRATA_KEEP_TEST_DIRS").as_deref() == Ok("1") {
            if let Some(root) = self.root.take() {
                eprintln!("pg_harness: kept {}", root.keep().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_query_checkpoint_stop() {
        let mut pg = PgCluster::start(&[("shared_buffers", "16MB")]).unwrap();
        assert_eq!(pg.sql("SHOW shared_buffers").unwrap(), "16MB");
        pg.sql("CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 100);")
            .unwrap();
        assert_eq!(pg.sql("SELECT sum(x) FROM t").unwrap(), "5050");
        let before = pg.current_wal_insert_lsn().unwrap();
        pg.checkpoint().unwrap();
        assert!(pg.current_wal_insert_lsn().unwrap() > before);
        let err = pg.sql("SELECT * FROM missing_table").unwrap_err();
        assert!(format!("{err:#}").contains("missing_table"), "{err:#}");
        pg.stop().unwrap();
        assert!(pg.sql("SELECT 1").is_err(), "stopped server still answers");
        // A clean shutdown leaves a data directory that starts again.
        pg.start_postmaster().unwrap();
        assert_eq!(pg.sql("SELECT count(*) FROM t").unwrap(), "100");
    }

    #[test]
    fn directory_removed_on_drop() {
        let pg = PgCluster::start(&[]).unwrap();
        let dir = pg.data_dir().to_path_buf();
        assert!(dir.join("PG_VERSION").exists());
        drop(pg);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn bad_setting_reports_log() {
        let err = match PgCluster::start(&[("no_such_setting_xyz", "1")]) {
            Ok(_) => panic!("postgres started with an unknown setting"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("no_such_setting_xyz"), "{err}");
    }
}
