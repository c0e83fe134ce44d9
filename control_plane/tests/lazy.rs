//! Lazy computes (`strata endpoint start --lazy`): stock PostgreSQL 15 on a
//! lazyfs FUSE data directory whose relation blocks come from the
//! pageserver on first read. Real cluster, real PostgreSQL, real FUSE mount
//! (needs /dev/fuse and fusermount3: scripts/setup.sh installs fuse3, and
//! the `lazyfs` binary: cargo build --workspace --bins).

mod common;

use std::time::{Duration, Instant};

use common::{metric, pgbench, psql, started_cluster, url_of, Repo};
use control_plane::endpoint::Endpoint;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn start(repo: &Repo, args: &[&str]) -> (String, String) {
    let mut all = vec!["endpoint", "start"];
    all.extend_from_slice(args);
    let out = repo.ok(&all);
    (url_of(repo, &out), out)
}

fn endpoint(repo: &Repo, name: &str) -> Endpoint {
    Endpoint::load(&repo.path, name).unwrap().expect("endpoint exists")
}

fn lazyfs_metrics(repo: &Repo, name: &str) -> String {
    let port = endpoint(repo, name).lazyfs_port.expect("a lazy endpoint has a lazyfs port");
    common::http_get(port, "/metrics")
}

fn pg_amcheck(url: &str) {
    let out = std::process::Command::new(format!("{PG_BIN}/pg_amcheck"))
        .args(["--install-missing", "--heapallindexed", "--rootdescend", url])
        .output()
        .expect("run pg_amcheck");
    assert!(out.status.success(), "pg_amcheck: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn is_mounted(repo: &Repo, name: &str) -> bool {
    control_plane::lazy::is_mounted(&endpoint(repo, name).pgdata)
}

/// pgbench initialises and runs on a lazy compute, blocks are fetched and
/// then served locally, amcheck is clean, `endpoint compare` finds no
/// difference, and a lazy and a full compute on branches at the same LSN
/// dump identically.
#[test]
fn pgbench_on_a_lazy_compute_then_compare_and_dump_against_full() {
    let repo = started_cluster(1);
    // Data written by a full compute first, so the lazy one has remote blocks to fetch.
    let (full_url, _) = start(&repo, &["seed"]);
    pgbench(&full_url, &["-i", "-s", "2", "-q"]);
    repo.ok(&["endpoint", "stop", "seed"]);

    let (url, out) = start(&repo, &["lz", "--lazy"]);
    assert!(out.contains("(lazy)"), "{out}");
    assert!(is_mounted(&repo, "lz"));
    let list = repo.ok(&["endpoint", "list"]);
    let line = list.lines().find(|l| l.starts_with("lz ")).expect("lz listed");
    assert!(line.contains(" lazy ") && line.contains("running"), "{list}");
    assert!(list.lines().next().unwrap().contains("MODE"), "{list}");

    assert_eq!(psql(&url, "SELECT count(*) FROM pgbench_accounts"), "200000");
    let metrics = lazyfs_metrics(&repo, "lz");
    let fetched = metric(&metrics, "lazyfs_blocks_fetched_total").unwrap();
    assert!(fetched > 100.0, "the scan fetched the table's blocks: {metrics}");
    assert_eq!(metric(&metrics, "lazyfs_fetch_errors_total"), Some(0.0));
    // The same scan again is served by the kernel's page cache or lazyfs's
    // local copy: no second fetch of the table.
    assert_eq!(psql(&url, "SELECT count(*) FROM pgbench_accounts"), "200000");
    let again = metric(&lazyfs_metrics(&repo, "lz"), "lazyfs_blocks_fetched_total").unwrap();
    assert!(again < fetched + 50.0, "second scan fetched {} more blocks", again - fetched);

    pgbench(&url, &["-c", "2", "-t", "200"]);
    // Bulk load and DDL on the lazy compute itself (extension, truncation, drop).
    psql(&url, "CREATE TABLE big AS SELECT g, md5(g::text) AS v FROM generate_series(1, 50000) g; CREATE INDEX ON big(v)");
    psql(&url, "DELETE FROM big WHERE g > 25000");
    // VACUUM truncates the table's tail; DROP truncates and unlinks at checkpoint.
    psql(&url, "VACUUM big");
    psql(&url, "CREATE TABLE gone AS SELECT 1 AS x; DROP TABLE gone");
    psql(&url, "CHECKPOINT");
    assert_eq!(psql(&url, "SELECT count(*), sum(g) FROM big"), "25000|312512500");
    pg_amcheck(&common::superuser_conninfo(&repo, "lz"));
    let sum = psql(&url, "SELECT sum(abalance) FROM pgbench_accounts");

    let report = repo.ok(&["endpoint", "compare", "lz"]);
    assert!(report.contains(" 0 differences"), "{report}");
    assert!(!is_mounted(&repo, "lz"), "compare stops the compute and its lazyfs");

    // Two branches at the same LSN: one lazy, one full; identical dumps.
    repo.ok(&["timeline", "branch", "--branch-name", "b_lazy"]);
    let detail = repo.ok(&["timeline", "list"]);
    let lsn = detail.lines().find_map(|l| l.split("@").nth(1)?.split(':').next().map(str::to_string)).expect("branch point listed");
    repo.ok(&["timeline", "branch", "--branch-name", "b_full", "--ancestor-start-lsn", &lsn]);
    let (lazy_url, _) = start(&repo, &["e_lazy", "--branch-name", "b_lazy", "--lazy"]);
    let (full_url, _) = start(&repo, &["e_full", "--branch-name", "b_full", "--full"]);
    assert_eq!(psql(&lazy_url, "SELECT sum(abalance) FROM pgbench_accounts"), sum);
    let (a, b) = (pg_harness::pg_dump(&lazy_url).unwrap(), pg_harness::pg_dump(&full_url).unwrap());
    assert!(a.contains("pgbench_accounts") && a.lines().count() > 200_000, "dump has the data");
    assert!(a == b, "pg_dump of the lazy and the full compute at {lsn} differ");
    repo.ok(&["endpoint", "stop", "e_lazy"]);
    assert!(!is_mounted(&repo, "e_lazy"), "stop unmounts");
    assert!(!control_plane::lazy::lazyfs_dir(&repo.path, "e_lazy").join("backing").exists(), "stop removes the overlay");
}

/// A lazy endpoint on a branch at an old LSN shows exactly that state while
/// main keeps changing under a full compute.
#[test]
fn lazy_branch_at_an_old_lsn_shows_that_state_while_main_changes() {
    let repo = started_cluster(1);
    let (main_url, _) = start(&repo, &["main_ep"]);
    psql(&main_url, "CREATE TABLE t(id int primary key, v text); INSERT INTO t SELECT g, 'old' FROM generate_series(1, 20000) g");
    repo.ok(&["timeline", "branch", "--branch-name", "old"]);
    psql(&main_url, "UPDATE t SET v = 'new' WHERE id % 2 = 0; INSERT INTO t SELECT g, 'new' FROM generate_series(20001, 30000) g");
    let (old_url, _) = start(&repo, &["old_ep", "--branch-name", "old", "--lazy"]);
    for round in 0..3 {
        psql(&main_url, &format!("UPDATE t SET v = 'round{round}' WHERE id % 3 = 0; DELETE FROM t WHERE id > 29000 - {round} * 100"));
        assert_eq!(psql(&old_url, "SELECT count(*), count(*) FILTER (WHERE v = 'old') FROM t"), "20000|20000");
    }
    assert_eq!(psql(&old_url, "SELECT count(*) FROM t WHERE id > 20000"), "0");
    // The lazy branch is writable, and its writes stay its own.
    psql(&old_url, "UPDATE t SET v = 'branch' WHERE id <= 10");
    assert_eq!(psql(&old_url, "SELECT count(*) FROM t WHERE v = 'branch'"), "10");
    assert_eq!(psql(&main_url, "SELECT count(*) FROM t WHERE v = 'branch'"), "0");
    assert!(psql(&main_url, "SELECT count(*) FROM t").parse::<u64>().unwrap() > 28000);
}

/// kill -9 of lazyfs: the compute fails (I/O errors, never wrong answers),
/// and `strata endpoint start` brings it back with every committed row.
#[test]
fn kill9_of_lazyfs_fails_the_compute_cleanly_and_start_recovers() {
    let repo = started_cluster(1);
    let (url, _) = start(&repo, &["lz", "--lazy"]);
    psql(&url, "CREATE TABLE t(id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g");
    psql(&url, "CREATE TABLE log(x int)");
    let expected = psql(&url, "SELECT count(*), sum(id) FROM t");
    let pid_file = control_plane::lazy::lazyfs_dir(&repo.path, "lz").join("pid");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();

    // Every answer after the kill is either an error or the right one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failed = false;
    while Instant::now() < deadline && !failed {
        let out = std::process::Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", &url, "-c", "INSERT INTO log VALUES (1); SELECT count(*), sum(id) FROM t"])
            .output()
            .unwrap();
        if out.status.success() {
            let got = String::from_utf8_lossy(&out.stdout);
            assert!(got.trim().ends_with(&expected), "wrong answer after lazyfs died: {got}");
        } else {
            failed = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(failed, "the compute kept working without its filesystem");
    let list = repo.ok(&["endpoint", "list"]);
    assert!(list.lines().any(|l| l.starts_with("lz ")), "{list}");

    let (url, out) = start(&repo, &["lz"]);
    assert!(out.contains("(lazy)"), "the mode is kept: {out}");
    assert_eq!(psql(&url, "SELECT count(*), sum(id) FROM t WHERE id <= 50000"), expected);
    psql(&url, "INSERT INTO t VALUES (200001, 'after')");
    assert_eq!(psql(&url, "SELECT v FROM t WHERE id = 200001"), "after");
}

/// PostgreSQL's regression suite fails on a lazy endpoint exactly where it
/// fails on stock PostgreSQL (run in two halves with a lazy restart — a
/// fresh overlay at the latest LSN — between them), and `endpoint compare`
/// afterwards finds no difference.
#[test]
fn regression_suite_on_a_lazy_endpoint_as_on_stock() {
    use regress::{RunOptions, Suite};
    let suite = Suite::setup().expect("set up the regression suite");
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = suite.split_schedule(dir.path()).unwrap();
    let port_of = |url: &str| -> u16 { url.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse().ok()).unwrap() };
    // `host`: an address, or (for Strata, whose TCP port wants passwords
    // the roles the suite creates do not have) the compute's socket dir.
    let run = |host: &str, port: u16, schedule: &std::path::Path, use_existing: bool| {
        let opts = RunOptions { schedule: Some(schedule.to_path_buf()), use_existing, ..Default::default() };
        let r = suite.run(host, port, &opts).expect("suite runs");
        println!("{}: {} ({:?})", schedule.display(), r.summary, r.elapsed);
        r.failed
    };

    let mut stock = pg_harness::PgCluster::start(&[("max_prepared_transactions", "10")]).unwrap();
    let mut stock_failed = run("127.0.0.1", stock.port(), &first, false);
    stock.stop().unwrap();
    stock.start_postmaster().unwrap();
    stock_failed.extend(run("127.0.0.1", stock.port(), &second, true));
    drop(stock);

    let repo = started_cluster(1);
    let (url, _) = start(&repo, &["main", "--lazy"]);
    let socket_dir = endpoint(&repo, "main").runtime_dir().display().to_string();
    let mut lazy_failed = run(&socket_dir, port_of(&url), &first, false);
    repo.ok(&["endpoint", "stop", "main"]);
    let (url, out) = start(&repo, &["main"]);
    assert!(out.contains("(lazy)"), "{out}");
    lazy_failed.extend(run(&socket_dir, port_of(&url), &second, true));
    stock_failed.sort();
    lazy_failed.sort();
    assert_eq!(lazy_failed, stock_failed, "the suite fails differently on a lazy endpoint");
    let report = repo.ok(&["endpoint", "compare", "main"]);
    assert!(report.contains(" 0 differences"), "{report}");
}

/// The background prefetcher makes every relation block local (the
/// pending-blocks gauge reaches 0 and the prefetched and fetched blocks
/// cover the table), the data stays identical (`endpoint compare`), and
/// `[compute] lazy_prefetch = false` turns it off.
#[test]
fn prefetcher_makes_every_block_local_and_can_be_turned_off() {
    let repo = started_cluster(1);
    let (full_url, _) = start(&repo, &["seed"]);
    pgbench(&full_url, &["-i", "-s", "2", "-q"]);
    repo.ok(&["endpoint", "stop", "seed"]);
    // With FUSE passthrough (and so without the writeback cache).
    let config = repo.path.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("[compute]", "[compute]\nlazy_passthrough = true", 1)).unwrap();

    let (url, _) = start(&repo, &["lz", "--lazy"]);
    let table_blocks: f64 = psql(&url, "SELECT pg_relation_size('pgbench_accounts') / 8192").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let metrics = loop {
        let m = lazyfs_metrics(&repo, "lz");
        if metric(&m, "lazyfs_pending_blocks") == Some(0.0) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(metric(&metrics, "lazyfs_pending_blocks"), Some(0.0), "every block local: {metrics}");
    let prefetched = metric(&metrics, "lazyfs_blocks_prefetched_total").unwrap();
    let fetched = metric(&metrics, "lazyfs_blocks_fetched_total").unwrap();
    assert!(prefetched > 0.0 && fetched + prefetched >= table_blocks, "{table_blocks} blocks of pgbench_accounts: {metrics}");
    assert_eq!(metric(&metrics, "lazyfs_fetch_errors_total"), Some(0.0));
    // Wholly local now: a new connection's scan opens the table with
    // passthrough (the kernel reads the overlay file itself) and sees the data.
    let before = metric(&metrics, "lazyfs_passthrough_opens_total").unwrap();
    assert_eq!(psql(&url, "SELECT count(*), sum(aid) FROM pgbench_accounts"), "200000|20000100000");
    let after = metric(&lazyfs_metrics(&repo, "lz"), "lazyfs_passthrough_opens_total").unwrap();
    assert!(after > before, "passthrough opens {before} -> {after}");
    let report = repo.ok(&["endpoint", "compare", "lz"]);
    assert!(report.contains(" 0 differences"), "{report}");

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("[compute]", "[compute]\nlazy_prefetch = false", 1)).unwrap();
    assert!(std::fs::read_to_string(&config).unwrap().contains("lazy_prefetch = false"), "config has a [compute] table");
    let (url, _) = start(&repo, &["lz2", "--lazy"]);
    assert_eq!(psql(&url, "SELECT count(*) FROM pgbench_branches"), "2");
    std::thread::sleep(Duration::from_secs(2));
    let metrics = lazyfs_metrics(&repo, "lz2");
    assert_eq!(metric(&metrics, "lazyfs_blocks_prefetched_total"), Some(0.0), "{metrics}");
    assert!(metric(&metrics, "lazyfs_pending_blocks").unwrap() > table_blocks / 2.0, "{metrics}");
    // Relation files are created in the overlay only when first used: the
    // mount lists the table's file (never read here) with its exact size,
    // the backing directory does not hold it until something names it.
    let rel_path = psql(&url, "SELECT pg_relation_filepath('pgbench_accounts')");
    let db_dir = std::path::Path::new(&rel_path).parent().unwrap().to_path_buf();
    let (mount, backing) = (endpoint(&repo, "lz2").pgdata, control_plane::lazy::lazyfs_dir(&repo.path, "lz2").join("backing"));
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let (shown, held) = (names(&mount.join(&db_dir)), names(&backing.join(&db_dir)));
    let file_name = std::path::Path::new(&rel_path).file_name().unwrap().to_string_lossy().into_owned();
    assert!(shown.contains(&file_name) && !held.contains(&file_name), "{rel_path}: shown {shown:?}, held {held:?}");
    assert!(held.len() < shown.len(), "the overlay holds {} of the {} files shown", held.len(), shown.len());
    eprintln!("{db_dir:?}: the overlay holds {} of the {} files shown", held.len(), shown.len());
    let size = std::fs::metadata(mount.join(&rel_path)).unwrap().len();
    assert_eq!(size as f64, table_blocks * 8192.0, "{rel_path} has its size at the start LSN");
    assert_eq!(std::fs::metadata(backing.join(&rel_path)).unwrap().len(), size, "made in the overlay once named");
    assert_eq!(psql(&url, "SELECT count(*) FROM pgbench_accounts"), "200000");
    repo.ok(&["endpoint", "stop", "lz2"]);
}
