//! The `strata` binary's handling of bad input: one-line errors, non-zero
//! exit, nothing half-created.

use std::path::Path;
use std::process::{Command, Output};

fn strata(repo: &Path, args: &[&str]) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_strata"));
    Command::new(bin)
        .arg("--repo-dir")
        .arg(repo)
        .args(args)
        .env("STRATA_BIN_DIR", bin.parent().unwrap())
        .output()
        .expect("run strata")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn commands_outside_a_repository_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["start", "stop", "status"] {
        let out = strata(dir.path(), &[cmd]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = stderr(&out);
        assert!(err.contains("is not a Strata repository"), "{cmd}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "something was created");
}

#[test]
fn init_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = strata(&repo, &["init", "--safekeepers", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = std::fs::read_to_string(repo.join("config.toml")).unwrap();
    assert_eq!(before.matches("[[safekeepers]]").count(), 3);
    let out = strata(&repo, &["init", "--safekeepers", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already holds a Strata repository"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(repo.join("config.toml")).unwrap(), before);
}

#[test]
fn start_with_a_port_in_use_fails_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    // The first safekeeper's HTTP port is taken.
    let base = port - 11;
    let free_ps = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = strata(&repo, &["init", "--base-port", &base.to_string(), "--pageserver-port", &free_ps.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = strata(&repo, &["start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("port {port} is in use")), "{err}");
    // The broker started first and was stopped again.
    assert!(!repo.join("broker/pid").exists(), "broker left running");
    let status = strata(&repo, &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.lines().skip(1).all(|l| l.contains("stopped")), "{text}");
}
