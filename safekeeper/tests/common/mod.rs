//! Test environment: a broker (in process), safekeeper processes (the real
//! binary, so they can be killed with SIGKILL), and a real PostgreSQL 15
//! compute configured to use them as synchronous standbys.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pg_harness::{free_port, PgCluster};
use serde_json::{json, Value};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

pub const SEG_SIZE: u64 = 16 * 1024 * 1024;

pub struct Safekeeper {
    pub id: u64,
    pub data_dir: tempfile::TempDir,
    pub pg_port: u16,
    pub http_port: u16,
    broker: String,
    /// More command-line arguments, e.g. `--remote-storage LOCATION
    /// [--s3-endpoint URL --s3-region R]`.
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

impl Safekeeper {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn new(id: u64, broker: &str, extra_args: &[String]) -> anyhow::Result<Safekeeper> {
        let mut sk = Safekeeper {
            id,
            data_dir: tempfile::tempdir()?,
            pg_port: free_port()?,
            http_port: free_port()?,
            broker: broker.to_string(),
            extra_args: extra_args.to_vec(),
            child: None,
        };
        sk.start()?;
        Ok(sk)
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir.path().join("safekeeper.log"))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_safekeeper"));
        if !self.extra_args.is_empty() {
            // moto's dummy credentials (unused by a local directory).
            cmd.args(&self.extra_args).env("AWS_ACCESS_KEY_ID", "testing").env("AWS_SECRET_ACCESS_KEY", "testing");
        }
        let child = cmd
            .args(["--id", &self.id.to_string(), "-D"])
            .arg(self.data_dir.path())
            .args(["--listen-pg", &format!("127.0.0.1:{}", self.pg_port)])
            .args(["--listen-http", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--broker-endpoint", &self.broker, "--keepalive-interval-ms", "200"])
            .env_remove("STRATA_REMOTE_STORAGE")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("start safekeeper")?;
        self.child = Some(child);
        wait_until(Duration::from_secs(20), || Ok(http_get(&self.url("/v1/status")).is_ok()))
            .with_context(|| format!("safekeeper {} did not come up: {}", self.id, self.log_tail()))
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn timeline_url(&self, t: TenantId, tl: TimelineId) -> String {
        self.url(&format!("/v1/tenant/{t}/timeline/{tl}"))
    }

    pub fn timeline_dir(&self, t: TenantId, tl: TimelineId) -> PathBuf {
        self.data_dir.path().join(t.to_string()).join(tl.to_string())
    }

    pub fn status(&self, t: TenantId, tl: TimelineId) -> anyhow::Result<Value> {
        http_get(&self.timeline_url(t, tl))
    }

    pub fn lsn(&self, t: TenantId, tl: TimelineId, field: &str) -> anyhow::Result<Lsn> {
        let status = self.status(t, tl)?;
        let text = status[field].as_str().with_context(|| format!("no {field} in {status}"))?;
        Ok(text.parse()?)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data_dir.path().join("safekeeper.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Safekeeper {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A broker running on its own runtime thread.
pub struct Broker {
    pub addr: String,
    _rt: tokio::runtime::Runtime,
}

impl Broker {
    pub fn start() -> anyhow::Result<Broker> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?.to_string();
        rt.spawn(broker::server::serve(listener, std::future::pending()));
        Ok(Broker { addr, _rt: rt })
    }
}

/// Broker, `n` safekeepers, one timeline, and a compute that needs `quorum`
/// of them for every commit.
pub struct Env {
    pub broker: Broker,
    pub sks: Vec<Safekeeper>,
    pub pg: PgCluster,
    pub tenant: TenantId,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub term: u64,
}

impl Env {
    pub fn new(n: u64, quorum: usize, extra_settings: &[(&str, &str)]) -> anyhow::Result<Env> {
        Env::with_args(n, quorum, extra_settings, &[])
    }

    /// As [`Env::new`], the safekeepers offloading WAL to remote storage
    /// (`extra_args`: e.g. `--remote-storage LOCATION`, and S3 options).
    pub fn with_args(n: u64, quorum: usize, extra_settings: &[(&str, &str)], extra_args: &[String]) -> anyhow::Result<Env> {
        let broker = Broker::start()?;
        let sks = (1..=n).map(|id| Safekeeper::new(id, &broker.addr, extra_args)).collect::<anyhow::Result<Vec<_>>>()?;
        let names: Vec<String> = (1..=n).map(|id| format!("sk_{id}")).collect();
        let sync_names = format!("ANY {quorum} ({})", names.join(", "));
        let mut settings = vec![
            ("synchronous_standby_names", sync_names.as_str()),
            ("synchronous_commit", "on"),
            ("wal_sender_timeout", "10s"),
        ];
        settings.extend_from_slice(extra_settings);
        let pg = PgCluster::start(&settings)?;
        // Start the timeline at a fresh segment so it begins on a clean boundary.
        pg.sql("SELECT pg_switch_wal()")?;
        let start_lsn = pg.current_wal_insert_lsn()?.segment_start(SEG_SIZE);
        let (tenant, timeline) = (TenantId::generate(), TimelineId::generate());
        let mut env = Env { broker, sks, pg, tenant, timeline, start_lsn, term: 0 };
        let peers: Vec<u64> = (1..=n).collect();
        for sk in &env.sks {
            let body = json!({ "timeline_id": timeline, "start_lsn": start_lsn, "peers": peers, "quorum": quorum });
            http_send("POST", &sk.url(&format!("/v1/tenant/{tenant}/timeline")), &body)?;
        }
        env.set_compute(env.start_lsn)?;
        Ok(env)
    }

    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.pg.port())
    }

    /// Tell every running safekeeper to follow the compute with a new term.
    pub fn set_compute(&mut self, start_lsn: Lsn) -> anyhow::Result<()> {
        self.term += 1;
        let body = json!({ "conninfo": self.conninfo(), "term": self.term, "start_lsn": start_lsn });
        for sk in self.sks.iter().filter(|sk| sk.child.is_some()) {
            http_send("PUT", &format!("{}/compute", sk.timeline_url(self.tenant, self.timeline)), &body)?;
        }
        Ok(())
    }

    /// Wait until safekeeper `i` has flushed at least `lsn`.
    pub fn wait_flush(&self, i: usize, lsn: Lsn) -> anyhow::Result<()> {
        let sk = &self.sks[i];
        wait_until(Duration::from_secs(30), || Ok(sk.lsn(self.tenant, self.timeline, "flush_lsn")? >= lsn))
            .with_context(|| format!("safekeeper {} did not reach {lsn}: {}", sk.id, sk.log_tail()))
    }

    pub fn wait_commit(&self, i: usize, lsn: Lsn) -> anyhow::Result<()> {
        let sk = &self.sks[i];
        wait_until(Duration::from_secs(30), || Ok(sk.lsn(self.tenant, self.timeline, "commit_lsn")? >= lsn))
            .with_context(|| format!("safekeeper {} commit_lsn did not reach {lsn}: {}", sk.id, sk.log_tail()))
    }

    /// `pg_current_wal_flush_lsn()` of the compute.
    pub fn compute_flush_lsn(&self) -> anyhow::Result<Lsn> {
        Ok(self.pg.sql("SELECT pg_current_wal_flush_lsn()")?.parse()?)
    }

    /// Assert that safekeeper `i` holds exactly the compute's WAL bytes in `[from, to)`.
    pub fn assert_wal_equal(&self, i: usize, from: Lsn, to: Lsn) -> anyhow::Result<()> {
        let ours = read_range(&self.sks[i].timeline_dir(self.tenant, self.timeline), from, to)?;
        let theirs = read_range(&self.pg.wal_dir(), from, to)?;
        if let Some(pos) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            bail!("safekeeper {} WAL differs from pg_wal at {}", self.sks[i].id, from + pos as u64);
        }
        Ok(())
    }

    /// Start `psql -c sql` in the background against the compute.
    pub fn psql_background(&self, sql: &str) -> anyhow::Result<Child> {
        Ok(Command::new(pg_harness::pg_bin("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.pg.connstr("postgres"), "-c", sql])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?)
    }
}

/// WAL bytes `[from, to)` from the segment files in `dir`.
pub fn read_range(dir: &Path, from: Lsn, to: Lsn) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; (to.0 - from.0) as usize];
    let mut pos = from;
    let mut done = 0;
    while done < buf.len() {
        let offset = pos.segment_offset(SEG_SIZE) as usize;
        let len = (buf.len() - done).min(SEG_SIZE as usize - offset);
        let path = dir.join(pos.segment_file_name(1, SEG_SIZE));
        let data = std::fs::read(&path).or_else(|_| std::fs::read(path.with_extension("partial")))
            .with_context(|| format!("read {}", path.display()))?;
        buf[done..done + len].copy_from_slice(data.get(offset..offset + len).context("short segment file")?);
        done += len;
        pos += len as u64;
    }
    Ok(buf)
}

pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    while Instant::now() < deadline {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => last_err = None,
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match last_err {
        Some(e) => Err(e.context(format!("condition not met within {timeout:?}"))),
        None => bail!("condition not met within {timeout:?}"),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

pub fn http_get(url: &str) -> anyhow::Result<Value> {
    runtime().block_on(async {
        let resp = reqwest::Client::new().get(url).timeout(Duration::from_secs(10)).send().await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {body}");
        }
        Ok(body)
    })
}

pub fn http_get_text(url: &str) -> anyhow::Result<String> {
    runtime().block_on(async { Ok(reqwest::Client::new().get(url).send().await?.text().await?) })
}

/// POST/PUT `body`; returns (status code, body).
pub fn http_call(method: &str, url: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    runtime().block_on(async {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let resp = reqwest::Client::new().request(method, url).json(body).timeout(Duration::from_secs(30)).send().await?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    })
}

pub fn http_send(method: &str, url: &str, body: &Value) -> anyhow::Result<Value> {
    let (status, resp) = http_call(method, url, body)?;
    if !(200..300).contains(&status) {
        bail!("{method} {url}: {status}: {resp}");
    }
    Ok(resp)
}
