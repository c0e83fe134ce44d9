//! Driving the real `strata` binary in tests: a repository in a temp dir,
//! free ports, psql.
#![allow(dead_code)]

pub mod failover;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Repo {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    /// Extra environment of every `strata` run (and so of the components).
    pub envs: Vec<(String, String)>,
    /// Run `strata` in this directory without `--repo-dir` (the default
    /// relative repo dir `.strata`), as the README's commands do.
    pub cwd: Option<PathBuf>,
}

/// A temporary directory of mode 0700 (only root may enter it).
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

impl Repo {
    /// A repository in a fresh temporary directory of mode 0700, which the
    /// unprivileged Postgres user cannot enter (like a clone under /root).
    pub fn new() -> Repo {
        // The pageserver's redo processes load the walredo extension.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-walredo.sh");
        let built = Command::new(script).output().expect("run build-walredo.sh");
        assert!(built.status.success(), "build-walredo.sh: {}", String::from_utf8_lossy(&built.stderr));
        let dir = private_tempdir();
        let path = dir.path().join("repo");
        Repo { _dir: dir, path, envs: Vec::new(), cwd: None }
    }

    /// A repository at `<dir>/.strata`, driven from `<dir>` with no
    /// `--repo-dir` and no `STRATA_REPO_DIR`.
    pub fn in_cwd() -> Repo {
        let mut repo = Repo::new();
        let cwd = repo._dir.path().to_path_buf();
        repo.path = cwd.join(".strata");
        repo.cwd = Some(cwd);
        repo
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let bin = Path::new(env!("CARGO_BIN_EXE_strata"));
        let mut cmd = Command::new(bin);
        match &self.cwd {
            Some(cwd) => cmd.current_dir(cwd).env_remove("STRATA_REPO_DIR"),
            None => cmd.arg("--repo-dir").arg(&self.path),
        };
        cmd.args(args)
            .env("STRATA_BIN_DIR", bin.parent().unwrap())
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run strata")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "strata {args:?} failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
        if args.first().is_some_and(|a| *a == "init" || *a == "start") {
            self.register_token();
        }
        stdout
    }

    /// The control plane's token of this repository (auth on), else `None`.
    pub fn admin_token(&self) -> Option<String> {
        let conf = control_plane::config::Config::load(&self.path).ok()?;
        conf.auth.then(|| control_plane::auth::admin_token(&self.path).expect("admin token"))
    }

    /// Let [`http_request`] present this repository's admin token to its
    /// components' ports (tests address components by port alone).
    pub fn register_token(&self) {
        let (Some(token), Ok(conf)) = (self.admin_token(), control_plane::config::Config::load(&self.path)) else { return };
        let mut tokens = TOKENS.lock().unwrap_or_else(|p| p.into_inner());
        for (_, port) in conf.ports() {
            tokens.insert(port, token.clone());
        }
    }
}

/// Admin tokens by component port, of the repositories of this test binary.
static TOKENS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<u16, String>>> = std::sync::LazyLock::new(Default::default);

/// The admin token registered for `port` ([`Repo::register_token`]).
pub fn token_for_port(port: u16) -> Option<String> {
    TOKENS.lock().unwrap_or_else(|p| p.into_inner()).get(&port).cloned()
}

/// curl's arguments presenting the token of `url`'s port, if any.
pub fn curl_auth(url: &str) -> Vec<String> {
    token_for_url(url).map(|t| vec!["-H".to_string(), format!("Authorization: Bearer {t}")]).unwrap_or_default()
}

/// The admin token for the port of `url` (`http://host:port/...`).
pub fn token_for_url(url: &str) -> Option<String> {
    let authority = url.split("://").nth(1)?.split('/').next()?;
    token_for_port(authority.rsplit(':').next()?.parse().ok()?)
}

impl Repo {
    /// Print what each component and endpoint logged (warnings and errors,
    /// then the last lines: `STRATA_TEST_LOG_LINES`, default 40), so a failure in CI, where the repository is
    /// gone afterwards, can be understood from the test output alone.
    pub fn dump_logs(&self) {
        let mut logs: Vec<(String, PathBuf)> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                let log = entry.path().join("log");
                if log.is_file() {
                    logs.push((entry.file_name().to_string_lossy().into_owned(), log));
                }
            }
        }
        for ep in control_plane::endpoint::Endpoint::list(&self.path).unwrap_or_default() {
            logs.push((format!("endpoint {}", ep.name), ep.log_path()));
            logs.push((format!("lazyfs of {}", ep.name), self.path.join("endpoints").join(&ep.name).join("lazyfs/log")));
        }
        logs.sort();
        for (name, path) in logs {
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let lines: Vec<&str> = text.lines().collect();
            let notable: Vec<&str> = lines.iter().copied().filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("FATAL") || l.contains("PANIC")).collect();
            eprintln!("===== {name} ({}): {} warnings/errors, last of them:", path.display(), notable.len());
            for l in &notable[notable.len().saturating_sub(30)..] {
                eprintln!("  {l}");
            }
            eprintln!("===== {name}: last lines:");
            let tail: usize = std::env::var("STRATA_TEST_LOG_LINES").ok().and_then(|n| n.parse().ok()).unwrap_or(40);
            for l in &lines[lines.len().saturating_sub(tail)..] {
                eprintln!("  {l}");
            }
        }
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = self.run(&["stop"]);
        // What PostgreSQL processes needed outside the private repository
        // (endpoint directories, the redo scratch clusters) lives under the
        // state root; it goes with the repository, or every run leaves it.
        let mut dirs: Vec<PathBuf> = control_plane::endpoint::Endpoint::list(&self.path)
            .unwrap_or_default()
            .iter()
            .map(|e| e.runtime_dir())
            .collect();
        let walredo = self.path.join("pageserver/data/walredo");
        let hash = crc32c::crc32c(walredo.to_string_lossy().as_bytes());
        dirs.push(utils::pg_user::state_root().join("by-path").join(format!("{hash:08x}-walredo")));
        for dir in dirs.into_iter().filter(|d| !d.starts_with(&self.path)) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The direct URL, with its password, of the endpoint whose `strata
/// endpoint start` printed `stdout` (its first line names it).
pub fn url_of(repo: &Repo, stdout: &str) -> String {
    let name = stdout.lines().find_map(|l| l.strip_prefix("endpoint ")?.split_whitespace().next()).expect("endpoint named in the output");
    endpoint_url(repo, name)
}

/// The URL of endpoint `name`'s compute with its password, from its
/// `endpoint.toml` (bypassing the proxy).
pub fn endpoint_url(repo: &Repo, name: &str) -> String {
    endpoint(repo, name).url_with_password()
}

/// A conninfo for endpoint `name` as the superuser, over its Unix socket
/// (the superuser is refused on TCP): for what clients may not do, such as
/// `CREATE EXTENSION amcheck` or `pg_switch_wal()`.
pub fn superuser_conninfo(repo: &Repo, name: &str) -> String {
    let ep = endpoint(repo, name);
    format!("host={} port={} user={} dbname=postgres", ep.runtime_dir().display(), ep.port, control_plane::secrets::SUPERUSER_ROLE)
}

/// The URL of endpoint `name` through the proxy, with its password.
pub fn proxy_url(repo: &Repo, name: &str) -> String {
    let cluster = control_plane::cluster::Cluster::load(&repo.path).expect("repository config");
    cluster.proxy_url(&endpoint(repo, name), true).expect("a proxy configured")
}

/// The endpoint's password (as `strata endpoint show-password` prints it).
pub fn password_of(repo: &Repo, name: &str) -> String {
    endpoint(repo, name).credential.expect("the endpoint has a password").password.expose().to_string()
}

pub fn endpoint(repo: &Repo, name: &str) -> control_plane::endpoint::Endpoint {
    control_plane::endpoint::Endpoint::load(&repo.path, name).expect("endpoint.toml readable").expect("endpoint exists")
}

/// Ports for one cluster: a base with its +3/+4 and the ports of up to
/// three safekeepers (+10/+11, +20/+21, +30/+31) free, a pageserver pair,
/// and a start for computes (ranges differ between test processes and
/// tests). All below the kernel's ephemeral range (32768 and up), where
/// any outgoing connection of a parallel test could take a port between
/// this check and the component's bind.
pub fn free_ports() -> (u16, u16, u16) {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    const LOW: u16 = 10000;
    const HIGH: u16 = 32600;
    let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = (std::process::id() % 2000) as u16;
    let first = LOW + (seed * 7 + slot * 613) % (HIGH - LOW - 100);
    // The broker at base, the proxy at +3/+4, safekeeper N at +10N/+10N+1.
    let base = (first..HIGH - 100)
        .step_by(97)
        .chain((LOW..first).step_by(97))
        .find(|&b| [0, 3, 4, 10, 11, 20, 21, 30, 31].iter().all(|&d| free(b + d)))
        .unwrap();
    let ps = (base + 50..HIGH).find(|&p| free(p) && free(p + 1)).unwrap();
    let endpoints = 61000 + (seed % 100) * 40 + slot * 10;
    (base, ps, endpoints)
}

/// A started cluster with `safekeepers` safekeepers and a default tenant.
pub fn started_cluster(safekeepers: u64) -> Repo {
    start_cluster(Repo::new(), safekeepers)
}

/// `strata init` with free ports, `start`, and a default tenant, in `repo`.
pub fn start_cluster(repo: Repo, safekeepers: u64) -> Repo {
    start_cluster_with_tenant_settings(repo, safekeepers, &[])
}

/// [`start_cluster`] with the default tenant created with these storage
/// settings (`KEY=VALUE`, as `strata tenant create -c`).
pub fn start_cluster_with_tenant_settings(repo: Repo, safekeepers: u64, settings: &[&str]) -> Repo {
    let (base, ps, endpoints) = free_ports();
    let n = safekeepers.to_string();
    repo.ok(&[
        "init", "--safekeepers", &n, "--base-port", &base.to_string(), "--pageserver-port", &ps.to_string(),
        "--endpoint-base-port", &endpoints.to_string(),
    ]);
    repo.ok(&["start"]);
    let mut create = vec!["tenant", "create", "--set-default"];
    for s in settings {
        create.extend(["-c", s]);
    }
    repo.ok(&create);
    repo
}

/// Base URL of the repository's pageserver HTTP API.
pub fn pageserver_http(repo: &Repo) -> String {
    let conf = control_plane::config::Config::load(&repo.path).expect("repository config");
    conf.pageserver.at.http(conf.pageserver.http_port)
}

/// `GET http://127.0.0.1:{port}{path}` (HTTP/1.0, whole body).
pub fn http_get(port: u16, path: &str) -> String {
    http_request("GET", port, path).1
}

/// `POST http://127.0.0.1:{port}{path}` without a body (HTTP/1.0, whole body).
pub fn http_post(port: u16, path: &str) -> String {
    http_request("POST", port, path).1
}

/// The value of an unlabelled Prometheus sample `name` in `metrics`; `None`
/// when absent (a lazily registered metric that was never touched).
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `pgbench` with `args` against `url`; panics with its output on failure.
pub fn pgbench(url: &str, args: &[&str]) {
    let out = Command::new("/usr/lib/postgresql/15/bin/pgbench").args(args).arg(url).output().expect("run pgbench");
    assert!(out.status.success(), "pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `METHOD http://127.0.0.1:{port}{path}` with an empty body (HTTP/1.0):
/// the status code and the whole body.
pub fn http_request(method: &str, port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = token_for_port(port).map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(conn, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}
