//! Driving the real `strata` binary in tests: a repository in a temp dir,
//! free ports, psql.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Repo {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Repo {
    pub fn new() -> Repo {
        // The pageserver's redo processes load the walredo extension.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-walredo.sh");
        let built = Command::new(script).output().expect("run build-walredo.sh");
        assert!(built.status.success(), "build-walredo.sh: {}", String::from_utf8_lossy(&built.stderr));
        let dir = tempfile::tempdir().unwrap();
        // Computes' data directories live in the repo: the Postgres user must reach it.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = dir.path().join("repo");
        Repo { _dir: dir, path }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let bin = Path::new(env!("CARGO_BIN_EXE_strata"));
        Command::new(bin)
            .arg("--repo-dir")
            .arg(&self.path)
            .args(args)
            .env("STRATA_BIN_DIR", bin.parent().unwrap())
            .output()
            .expect("run strata")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "strata {args:?} failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
        stdout
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
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

pub fn url_of(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.strip_prefix("connect with: psql ")).expect("URL printed").to_string()
}

/// Ports for one cluster: a base with its +10/+11 free, a pageserver pair,
/// and a start for computes (ranges differ between test processes and tests).
pub fn free_ports() -> (u16, u16, u16) {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = (std::process::id() % 2000) as u16;
    let first = 20000 + (seed * 7 + slot * 613) % 30000;
    let base = (first..60000).step_by(97).find(|&b| free(b) && free(b + 10) && free(b + 11)).unwrap();
    let ps = (base + 50..60000).find(|&p| free(p) && free(p + 1)).unwrap();
    let endpoints = 61000 + (seed % 100) * 40 + slot * 10;
    (base, ps, endpoints)
}

/// A started cluster with `safekeepers` safekeepers and a default tenant.
pub fn started_cluster(safekeepers: u64) -> Repo {
    let repo = Repo::new();
    let (base, ps, endpoints) = free_ports();
    let n = safekeepers.to_string();
    repo.ok(&[
        "init", "--safekeepers", &n, "--base-port", &base.to_string(), "--pageserver-port", &ps.to_string(),
        "--endpoint-base-port", &endpoints.to_string(),
    ]);
    repo.ok(&["start"]);
    repo.ok(&["tenant", "create", "--set-default"]);
    repo
}

/// Base URL of the repository's pageserver HTTP API.
pub fn pageserver_http(repo: &Repo) -> String {
    let conf = control_plane::config::Config::load(&repo.path).expect("repository config");
    format!("http://127.0.0.1:{}", conf.pageserver.http_port)
}
