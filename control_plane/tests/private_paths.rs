//! Strata wherever a user puts it: a repository and a `walredo.so` under
//! directories that the unprivileged Postgres user cannot enter (a clone in
//! `/root`, mode 0700), and the README's commands run verbatim from a
//! directory with the default relative `--repo-dir`.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{metric, pgbench, psql, start_cluster, url_of, Repo};
use control_plane::config::Config;
use control_plane::endpoint::Endpoint;

fn sums(url: &str) -> String {
    psql(url, "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_history)")
}

#[test]
fn repo_and_walredo_lib_under_0700_dirs_serve_pgbench_and_a_restart_that_needs_redo() {
    // walredo.so only inside a private directory, as in a checkout under /root.
    let private = common::private_tempdir();
    let built = Repo::new(); // builds walredo.so
    drop(built);
    let lib = private.path().join("walredo.so");
    std::fs::copy(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/walredo-build/walredo.so"), &lib).unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut repo = Repo::new();
    repo.envs.push(("STRATA_WALREDO_LIB".into(), lib.display().to_string()));
    repo.envs.push(("STRATA_STATE_DIR".into(), state.path().display().to_string()));
    let repo = start_cluster(repo, 1);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    pgbench(&main, &["-i", "-s", "2", "-q"]);
    psql(&main, "CHECKPOINT");
    pgbench(&main, &["-c", "2", "-t", "300", "-n"]);
    let before = sums(&main);

    // The compute's files went where the Postgres user can reach them.
    let ep = Endpoint::load(&repo.path, "main").unwrap().unwrap();
    assert!(ep.pgdata.starts_with(state.path().join("by-path")), "{}", ep.pgdata.display());
    assert!(ep.log_path().is_file());
    assert!(state.path().join("walredo/walredo.so").is_file(), "walredo.so was not copied to the state dir");

    // A restart from a basebackup needs WAL redo of the pages pgbench changed.
    repo.ok(&["endpoint", "stop", "main"]);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(sums(&main), before, "data differs after the restart");
    let port = Config::load(&repo.path).unwrap().pageserver.http_port;
    let metrics = common::http_get(port, "/metrics");
    let redone = metric(&metrics, "strata_pageserver_wal_redo_seconds_count").unwrap_or(0.0);
    assert!(redone > 0.0, "no page needed redo:\n{metrics}");
    assert_eq!(metric(&metrics, "strata_pageserver_wal_redo_failures_total").unwrap_or(0.0), 0.0, "redo failed");
}

#[test]
fn readme_commands_verbatim_with_the_default_relative_repo_dir() {
    let repo = start_cluster(Repo::in_cwd(), 1);
    assert!(repo.path.join("config.toml").is_file(), "the repo is not ./.strata");
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "CREATE TABLE t AS SELECT 1 AS x");
    repo.ok(&["timeline", "branch", "--branch-name", "dev"]);
    let dev = url_of(&repo, &repo.ok(&["endpoint", "start", "dev", "--branch-name", "dev"]));
    assert_eq!(psql(&dev, "SELECT x FROM t"), "1");
    let tree = repo.ok(&["timeline", "list"]);
    assert!(tree.contains(": dev ["), "{tree}");
    let status = repo.ok(&["status"]);
    assert!(status.contains("dev"), "{status}");
    // Paths recorded for other processes are absolute.
    let ep = Endpoint::load(&repo.path, "dev").unwrap().unwrap();
    assert!(ep.pgdata.is_absolute(), "{}", ep.pgdata.display());
    repo.ok(&["stop"]);
}
