//! The README scenario through the real `strata` binary: a cluster, a
//! tenant, computes on `main` and on a branch, isolation between them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Repo {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Repo {
    fn new() -> Repo {
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

    fn run(&self, args: &[&str]) -> Output {
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
    fn ok(&self, args: &[&str]) -> String {
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

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn url_of(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.strip_prefix("connect with: psql ")).expect("URL printed").to_string()
}

/// Ports for one cluster: a base with its +10/+11 free, and a pageserver pair.
fn free_ports() -> (u16, u16) {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = std::process::id() as u16 % 2000;
    let base = (20000 + seed * 7..60000).step_by(97).find(|&b| free(b) && free(b + 10) && free(b + 11)).unwrap();
    let ps = (base + 500..60000).find(|&p| free(p) && free(p + 1)).unwrap();
    (base, ps)
}

#[test]
fn readme_scenario_branch_isolation() {
    let repo = Repo::new();
    let (base, ps) = free_ports();
    repo.ok(&["init", "--safekeepers", "1", "--base-port", &base.to_string(), "--pageserver-port", &ps.to_string()]);
    repo.ok(&["start"]);
    repo.ok(&["tenant", "create", "--set-default"]);
    let main = url_of(&repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "CREATE TABLE t(key int primary key, value text)");
    psql(&main, "INSERT INTO t VALUES (1, '1')");

    repo.ok(&["timeline", "branch", "--branch-name", "migration_check"]);
    let branch = url_of(&repo.ok(&["endpoint", "start", "migration_check", "--branch-name", "migration_check"]));
    assert_eq!(psql(&branch, "SELECT key, value FROM t"), "1|1");
    psql(&branch, "INSERT INTO t VALUES (2, '2')");
    assert_eq!(psql(&branch, "SELECT count(*) FROM t"), "2");
    assert_eq!(psql(&main, "SELECT count(*) FROM t"), "1", "main sees the branch's row");
    psql(&main, "INSERT INTO t VALUES (3, '3')");
    assert_eq!(psql(&branch, "SELECT string_agg(key::text, ',' ORDER BY key) FROM t"), "1,2");

    let tree = repo.ok(&["timeline", "list"]);
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[0].starts_with("main ["), "{tree}");
    assert!(lines[1].starts_with("┗━ @") && lines[1].contains(": migration_check ["), "{tree}");

    // A second endpoint on the same branch is refused.
    let out = repo.run(&["endpoint", "start", "other", "--branch-name", "main"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has a running endpoint"));
    let list = repo.ok(&["endpoint", "list"]);
    assert_eq!(list.lines().filter(|l| l.contains("running")).count(), 2, "{list}");

    // Everything committed survives a full stop and start.
    repo.ok(&["stop"]);
    repo.ok(&["start"]);
    let main = url_of(&repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(psql(&main, "SELECT string_agg(key::text, ',' ORDER BY key) FROM t"), "1,3");
    let branch = url_of(&repo.ok(&["endpoint", "start", "migration_check"]));
    assert_eq!(psql(&branch, "SELECT string_agg(key::text, ',' ORDER BY key) FROM t"), "1,2");
    let status = repo.ok(&["status"]);
    assert!(status.contains("migration_check"), "{status}");
}
