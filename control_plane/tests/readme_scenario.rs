//! The README scenario through the real `strata` binary: a cluster, a
//! tenant, computes on `main` and on a branch, isolation between them.

mod common;

use common::{psql, started_cluster, url_of};

#[test]
fn readme_scenario_branch_isolation() {
    let repo = started_cluster(1);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "CREATE TABLE t(key int primary key, value text)");
    psql(&main, "INSERT INTO t VALUES (1, '1')");

    repo.ok(&["timeline", "branch", "--branch-name", "migration_check"]);
    let branch = url_of(&repo, &repo.ok(&["endpoint", "start", "migration_check", "--branch-name", "migration_check"]));
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
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(psql(&main, "SELECT string_agg(key::text, ',' ORDER BY key) FROM t"), "1,3");
    let branch = url_of(&repo, &repo.ok(&["endpoint", "start", "migration_check"]));
    assert_eq!(psql(&branch, "SELECT string_agg(key::text, ',' ORDER BY key) FROM t"), "1,2");
    let status = repo.ok(&["status"]);
    assert!(status.contains("migration_check"), "{status}");
}
