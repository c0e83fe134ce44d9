//! `strata tenant import --pgdata DIR`: a data directory made by stock
//! initdb + pgbench becomes a tenant whose endpoint dumps equal to the
//! original; refusals (running server, other major version, missing
//! directory, unclean shutdown) are one clear line and create nothing.

mod common;

use common::{pgbench, psql, started_cluster, url_of};
use pg_harness::PgCluster;

#[test]
fn pgbench_datadir_imports_with_an_equal_dump() {
    let repo = started_cluster(1);
    let mut pg = PgCluster::start(&[]).unwrap();
    let src = pg.connstr("postgres");
    pgbench(&src, &["-i", "-s", "2", "-q"]);
    pgbench(&src, &["-c", "2", "-t", "200", "-n"]);
    pg.sql("CREATE TABLE extra AS SELECT g, md5(g::text) FROM generate_series(1, 5000) g; CREATE INDEX ON extra(md5);").unwrap();
    let before = pg_harness::pg_dump(&src).unwrap();
    pg.stop().unwrap();

    let out = repo.ok(&["tenant", "import", "--pgdata", pg.data_dir().to_str().unwrap(), "--set-default"]);
    assert!(out.starts_with("imported tenant "), "{out}");
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "imported"]));
    assert_eq!(pg_harness::pg_dump(&url).unwrap(), before, "dump differs after import");
    // The imported database takes writes, which survive a restart.
    psql(&url, "INSERT INTO extra VALUES (0, 'after import')");
    repo.ok(&["endpoint", "stop", "imported"]);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "imported"]));
    assert_eq!(psql(&url, "SELECT count(*) FROM extra"), "5001");
    assert_eq!(psql(&url, "SELECT count(*) FROM pgbench_history"), "400");
}

#[test]
fn refusals_are_one_line_and_create_nothing() {
    let repo = started_cluster(1);
    let tenants = repo.ok(&["tenant", "list"]);
    let refuse = |dir: &str, expect: &str| {
        let out = repo.run(&["tenant", "import", "--pgdata", dir]);
        assert_eq!(out.status.code(), Some(1), "import of {dir} accepted");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{dir}: {err}");
    };
    let running = PgCluster::start(&[]).unwrap();
    refuse(running.data_dir().to_str().unwrap(), "in use by a running PostgreSQL");
    let old = tempfile::tempdir().unwrap();
    std::fs::write(old.path().join("PG_VERSION"), "14\n").unwrap();
    refuse(old.path().to_str().unwrap(), "is a PostgreSQL 14 data directory");
    refuse("/nonexistent/pgdata", "is not a directory");
    let mut crashed = PgCluster::start(&[]).unwrap();
    crashed.stop_immediate().unwrap();
    refuse(crashed.data_dir().to_str().unwrap(), "was not shut down cleanly");
    assert_eq!(repo.ok(&["tenant", "list"]), tenants, "a refused import created a tenant");
    assert_eq!(repo.ok(&["timeline", "list"]).lines().count(), 1);
}
