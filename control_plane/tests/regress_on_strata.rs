//! PostgreSQL's own regression suite on a Strata endpoint, with a restart
//! from a basebackup in the middle, then the data directory the pageserver
//! rebuilds compared page by page with the compute's own.

mod common;

use std::time::Instant;

use common::{started_cluster, url_of};
use pg_harness::PgCluster;
use regress::{RunOptions, Suite};

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse().ok()).expect("port in URL")
}

/// Run the two halves; returns the failed tests of both.
fn run_halves(suite: &Suite, port: u16, halves: &(std::path::PathBuf, std::path::PathBuf), between: impl FnOnce() -> u16) -> Vec<String> {
    let first = RunOptions { schedule: Some(halves.0.clone()), ..Default::default() };
    let run1 = suite.run("127.0.0.1", port, &first).expect("first half runs");
    println!("first half: {} ({:?})", run1.summary, run1.elapsed);
    let port = between();
    let second = RunOptions { schedule: Some(halves.1.clone()), use_existing: true, ..Default::default() };
    let run2 = suite.run("127.0.0.1", port, &second).expect("second half runs");
    println!("second half: {} ({:?})", run2.summary, run2.elapsed);
    let mut failed = run1.failed;
    failed.extend(run2.failed);
    failed.sort();
    failed
}

#[test]
fn regression_suite_passes_on_strata_as_on_stock_and_the_rebuild_is_identical() {
    let started = Instant::now();
    let suite = Suite::setup().expect("set up the regression suite");
    let dir = tempfile::tempdir().unwrap();
    let halves = suite.split_schedule(dir.path()).unwrap();

    // Stock PostgreSQL, same binaries, same settings as an endpoint.
    let mut stock = PgCluster::start(&[("max_prepared_transactions", "10")]).unwrap();
    let stock_port = stock.port();
    let stock_failed = run_halves(&suite, stock_port, &halves, || {
        stock.stop().unwrap();
        stock.start_postmaster().unwrap();
        stock.port()
    });
    drop(stock);

    let repo = started_cluster(1);
    let url = url_of(&repo.ok(&["endpoint", "start", "main"]));
    let strata_failed = run_halves(&suite, port_of(&url), &halves, || {
        // Restart the compute from a fresh basebackup between the halves.
        repo.ok(&["endpoint", "stop", "main"]);
        port_of(&url_of(&repo.ok(&["endpoint", "start", "main"])))
    });
    assert_eq!(strata_failed, stock_failed, "the suite fails differently on Strata than on stock PostgreSQL {}", suite.installed_version());

    let compare = repo.run(&["endpoint", "compare", "main"]);
    let report = String::from_utf8_lossy(&compare.stdout);
    assert!(compare.status.success(), "rebuilt data directory differs:\n{report}{}", String::from_utf8_lossy(&compare.stderr));
    assert!(report.contains(" 0 differences"), "{report}");
    println!("{}", report.lines().last().unwrap_or_default());
    println!("whole check (suite twice, restart, comparison): {:?}", started.elapsed());
}
