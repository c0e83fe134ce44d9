//! Issue 8's two checks on stock PostgreSQL 15, ready to be pointed at a
//! Strata compute: PostgreSQL's whole regression suite (`parallel_schedule`,
//! installcheck mode) passes against a running server, and the data
//! directory rebuilt from that server's WAL — here a physical standby's,
//! later the pageserver's — equals the server's own, page by page with the
//! masks of `wal_consistency_checking`.
//!
//! The server is the installed one when the suite's source matches its
//! version; otherwise (a mirror without the security archive's sources) the
//! stock Debian server of the suite's version that setup unpacked: see
//! `regress::Suite::matched_server_bindir`.

use std::time::Instant;

use datadir_compare::{compare_datadirs, Options};
use pg_harness::PgCluster;
use regress::{RunOptions, Suite};

#[test]
fn parallel_schedule_passes_and_standby_equals_primary() {
    let started = Instant::now();
    let suite = Suite::setup().expect("scripts/setup-regress.sh");
    eprintln!(
        "regress: suite {} for installed server {} ({:.1} s to set up)",
        suite.suite_version(),
        suite.installed_version(),
        started.elapsed().as_secs_f64()
    );
    if suite.suite_version() != suite.installed_version() {
        let bindir = suite
            .matched_server_bindir()
            .expect("no stock server of the suite's version could be unpacked");
        eprintln!(
            "regress: version skew; running the stock server of the suite's version: {}",
            bindir.display()
        );
        // This test binary holds this one test: nothing else reads the
        // environment concurrently.
        std::env::set_var("STRATA_PG_BIN", &bindir);
    }

    // Defaults of a stock cluster (C locale, UTF8: pg_harness's initdb),
    // plus prepared transactions so that prepared_xacts runs its full path.
    let mut primary = PgCluster::start(&[("max_prepared_transactions", "2")]).unwrap();
    let mut standby = primary.start_standby("regress_standby", &[]).unwrap();

    let run = suite.run("127.0.0.1", primary.port(), &RunOptions::default()).unwrap();
    eprintln!("{}", run.summary);
    eprintln!("regress: pg_regress run took {:.1} s", run.elapsed.as_secs_f64());
    assert!(run.passed(), "failed tests: {:?}\n{}", run.failed, run.output_tail(300));
    assert!(run.tests_ok > 200, "only {} tests ran:\n{}", run.tests_ok, run.output_tail(50));

    let stopping = Instant::now();
    primary.stop_with_standby(&mut standby).unwrap();
    let comparing = Instant::now();
    let report = compare_datadirs(primary.data_dir(), standby.data_dir(), &Options::default()).unwrap();
    eprintln!(
        "compare: {} ({:.1} s to stop both, {:.1} s to compare)",
        report.summary(),
        (comparing - stopping).as_secs_f64(),
        comparing.elapsed().as_secs_f64()
    );
    eprintln!("compare: pages by kind {:?}", report.pages_by_kind);
    eprintln!("compare: {} pages equal only after masking", report.pages_equal_after_masking);
    for n in &report.notes {
        eprintln!("compare: note: {n}");
    }
    let diffs: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
    assert!(report.is_equal(), "{}\n{}", report.summary(), diffs.join("\n"));
    eprintln!("regress: whole test {:.1} s", started.elapsed().as_secs_f64());
}
