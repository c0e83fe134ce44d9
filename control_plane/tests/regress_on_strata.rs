//! PostgreSQL's own regression suite on a Strata endpoint, with a restart
//! from a basebackup in the middle, then the data directory the pageserver
//! rebuilds compared page by page with the compute's own — with aggressive
//! storage settings (1 MiB in-memory layers, compaction at 2 L0 files, an
//! image layer wherever one delta lies above the image, GC every 2 s with
//! no PITR window and a 1 MiB horizon), so that the pages compared went
//! through compaction, image creation and GC; the pageserver's metrics
//! must show that they ran and that GC removed layers.

mod common;

use std::time::Instant;

use common::{http_get, metric, psql, start_cluster_with_tenant_settings, url_of, Repo};
use pg_harness::PgCluster;
use regress::{RunOptions, Suite};

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse().ok()).expect("port in URL")
}

/// Run the two halves against the server at `host` (an address or a socket
/// directory); returns the failed tests of both.
fn run_halves(suite: &Suite, host: &str, port: u16, halves: &(std::path::PathBuf, std::path::PathBuf), between: impl FnOnce() -> u16) -> Vec<String> {
    let first = RunOptions { schedule: Some(halves.0.clone()), ..Default::default() };
    let run1 = suite.run(host, port, &first).expect("first half runs");
    println!("first half: {} ({:?})", run1.summary, run1.elapsed);
    let port = between();
    let second = RunOptions { schedule: Some(halves.1.clone()), use_existing: true, ..Default::default() };
    let run2 = suite.run(host, port, &second).expect("second half runs");
    println!("second half: {} ({:?})", run2.summary, run2.elapsed);
    let mut failed = run1.failed;
    failed.extend(run2.failed);
    failed.sort();
    failed
}

/// The tenant's storage settings: every storage pass runs often.
const AGGRESSIVE: &[&str] = &[
    "checkpoint_distance=1MiB",
    "compaction_threshold=2",
    "image_creation_threshold=1",
    "gc_period=2s",
    "pitr_interval=0s",
    "gc_horizon=1MiB",
];

/// Wait until the pageserver's `main` timeline has ingested the compute's
/// WAL up to its current flush LSN.
fn wait_for_ingest(repo: &Repo, url: &str) {
    let flush: utils::lsn::Lsn = psql(url, "SELECT pg_current_wal_flush_lsn()").parse().expect("flush LSN");
    let conf = control_plane::config::Config::load(&repo.path).expect("repository config");
    let state = control_plane::state::State::load(&repo.path).expect("repository state");
    let main = state.branches.iter().find(|b| b.name == "main").expect("main branch");
    let path = format!("/v1/tenant/{}/timeline/{}", main.tenant_id, main.timeline_id);
    let started = Instant::now();
    loop {
        let detail: serde_json::Value = serde_json::from_str(&http_get(conf.pageserver.http_port, &path)).unwrap_or_default();
        let last: Option<utils::lsn::Lsn> = detail["last_record_lsn"].as_str().and_then(|s| s.parse().ok());
        if last.is_some_and(|l| l >= flush) {
            println!("pageserver caught up with {flush} after {:?}", started.elapsed());
            return;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(900), "pageserver stuck at {last:?}, compute at {flush}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Compaction and GC really ran during the suite, and GC removed layers.
fn assert_storage_passes_ran(repo: &Repo) {
    let conf = control_plane::config::Config::load(&repo.path).expect("repository config");
    let metrics = http_get(conf.pageserver.http_port, "/metrics");
    let value = |name: &str| metric(&metrics, name).unwrap_or(0.0);
    let (compactions, merged) = (value("strata_pageserver_compaction_runs_total"), value("strata_pageserver_compaction_l0_merged_total"));
    let (gc_runs, removed) = (value("strata_pageserver_gc_runs_total"), value("strata_pageserver_gc_layers_removed_total"));
    let reclaimed = value("strata_pageserver_gc_reclaimed_bytes_total");
    println!("storage passes: {compactions} compactions ({merged} L0 files merged), {gc_runs} GC passes ({removed} layers, {reclaimed} bytes removed)");
    assert!(compactions > 0.0 && merged >= 2.0, "compaction did not run: {compactions} runs, {merged} L0 files merged");
    assert!(gc_runs > 0.0, "GC did not run");
    assert!(removed > 0.0 && reclaimed > 0.0, "GC removed no layer ({gc_runs} passes)");
    let images = metrics
        .lines()
        .filter(|l| l.starts_with("strata_pageserver_layers{") && l.contains("kind=\"image\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(images > 0.0, "no image layer");
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
    let stock_failed = run_halves(&suite, "127.0.0.1", stock_port, &halves, || {
        stock.stop().unwrap();
        stock.start_postmaster().unwrap();
        stock.port()
    });
    drop(stock);

    let repo = start_cluster_with_tenant_settings(Repo::new(), 1, AGGRESSIVE);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    // Over the compute's Unix socket (trusted, as stock's loopback is):
    // the suite logs in as the roles it creates, which have no passwords.
    let socket_dir = common::endpoint(&repo, "main").runtime_dir().display().to_string();
    let strata_failed = run_halves(&suite, &socket_dir, port_of(&url), &halves, || {
        // Restart the compute from a fresh basebackup between the halves,
        // once the pageserver has ingested what the first half wrote: with
        // 1 MiB layers ingest does more work per MiB than the compute, and
        // `endpoint start` waits only 60 s for it.
        wait_for_ingest(&repo, &url);
        repo.ok(&["endpoint", "stop", "main"]);
        port_of(&url_of(&repo, &repo.ok(&["endpoint", "start", "main"])))
    });
    assert_eq!(strata_failed, stock_failed, "the suite fails differently on Strata than on stock PostgreSQL {}", suite.installed_version());
    assert_storage_passes_ran(&repo);

    let compare = repo.run(&["endpoint", "compare", "main"]);
    let report = String::from_utf8_lossy(&compare.stdout);
    assert!(compare.status.success(), "rebuilt data directory differs:\n{report}{}", String::from_utf8_lossy(&compare.stderr));
    assert!(report.contains(" 0 differences"), "{report}");
    println!("{}", report.lines().last().unwrap_or_default());
    println!("whole check (suite twice, restart, comparison): {:?}", started.elapsed());
}
