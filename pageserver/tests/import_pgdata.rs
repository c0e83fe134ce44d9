//! Issue 6, import of a user's existing data directory and compute start
//! from a basebackup: a stock PostgreSQL 15 cluster with pgbench tables is
//! stopped cleanly and imported through the HTTP API (`import_pgdata`); a
//! compute started from the HTTP basebackup has the same counts and sums;
//! it continues the WAL at the basebackup LSN and the pageserver ingests it
//! seamlessly: after a workload, CHECKPOINT and a clean stop, every block of
//! every relation file of the compute equals GetPage@LSN (masked).
mod common;

use anyhow::{ensure, Context};
use common::ps::*;
use pageserver::tenant::repository::Repository;
use pg_harness::{pg_bin, PgCluster};
use serde_json::{json, Value};
use utils::lsn::Lsn;

/// Counts and sums of the four pgbench tables.
fn pgbench_sums(pg: &PgCluster) -> anyhow::Result<String> {
    pg.sql(
        "SELECT (SELECT count(*) || '/' || sum(abalance) || '/' || sum(aid) FROM pgbench_accounts) || ' ' || \
         (SELECT count(*) || '/' || sum(bbalance) FROM pgbench_branches) || ' ' || \
         (SELECT count(*) || '/' || sum(tbalance) FROM pgbench_tellers) || ' ' || \
         (SELECT count(*) || '/' || sum(delta) || '/' || sum(aid) FROM pgbench_history)",
    )
}

fn pgbench_run(pg: &PgCluster, transactions: u32) -> anyhow::Result<()> {
    let port = pg.port().to_string();
    let out = std::process::Command::new(pg_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-c", "2", "-t", &transactions.to_string(), "postgres"])
        .output()?;
    ensure!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

async fn start_from_basebackup(http: &reqwest::Client, tl_url: &str) -> anyhow::Result<PgCluster> {
    let r = http.get(format!("{tl_url}/basebackup")).send().await?;
    ensure!(r.status() == 200, "basebackup: {}", r.text().await?);
    let archive = r.bytes().await?;
    let mut compute = PgCluster::empty()?;
    std::fs::create_dir_all(compute.data_dir())?;
    tar::Archive::new(&archive[..]).unpack(compute.data_dir())?;
    compute.finish_data_dir(&primary_settings())?;
    tokio::task::block_in_place(|| compute.start_postmaster())?;
    let log = compute.log_tail();
    ensure!(!log.contains("redo starts"), "recovery ran:\n{log}");
    Ok(compute)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_pgbench_datadir_then_compute_continues_wal() -> anyhow::Result<()> {
    // The user's cluster: pgbench -i -s 5 plus some transactions, stopped cleanly.
    let mut user = PgCluster::start(&primary_settings())?;
    tokio::task::block_in_place(|| pgbench(&user, 5, 200))?;
    let sums = pgbench_sums(&user)?;
    tokio::task::block_in_place(|| user.stop())?;

    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |_| {})).await?;
    let app_repo = repo.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, pageserver::http::router(app_repo)).await });
    let http = reqwest::Client::new();
    let r = http.post(format!("{base}/v1/tenant")).json(&json!({})).send().await?;
    let tenant = r.json::<Value>().await?["tenant_id"].as_str().context("tenant_id")?.to_string();
    let r = http
        .post(format!("{base}/v1/tenant/{tenant}/timeline"))
        .json(&json!({ "import_pgdata": user.data_dir() }))
        .send()
        .await?;
    ensure!(r.status() == 201, "import: {}", r.text().await?);
    let detail: Value = r.json().await?;
    let timeline = detail["timeline_id"].as_str().context("timeline_id")?.to_string();
    let import_lsn: Lsn = detail["last_record_lsn"].as_str().context("lsn")?.parse()?;
    let tl_url = format!("{base}/v1/tenant/{tenant}/timeline/{timeline}");

    // A compute from the basebackup sees the same data.
    let mut compute = start_from_basebackup(&http, &tl_url).await?;
    assert_eq!(pgbench_sums(&compute)?, sums);
    let compute_start = compute.current_wal_insert_lsn()?;
    assert!(compute_start > import_lsn && compute_start.0 - import_lsn.0 < 8192, "{import_lsn} → {compute_start}");

    // It continues the WAL where the timeline ends: stream it into the timeline.
    let r = http
        .put(format!("{tl_url}/wal_source"))
        .json(&json!({ "kind": "primary", "conninfo": compute.connstr("postgres") }))
        .send()
        .await?;
    ensure!(r.status() == 200, "wal_source: {}", r.text().await?);
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        pgbench_run(&compute, 300)?;
        compute.sql(
            "CREATE INDEX acc_bal ON pgbench_accounts(abalance);
             UPDATE pgbench_accounts SET filler = md5(aid::text) WHERE aid % 50 = 0;
             DELETE FROM pgbench_history WHERE tid = 1;
             CREATE TABLE big AS SELECT g, repeat(md5(g::text), 200) AS t FROM generate_series(1, 50) g;",
        )?;
        compute.sql("VACUUM pgbench_history")?;
        Ok(())
    })?;
    let after = pgbench_sums(&compute)?;
    assert_ne!(after, sums);
    let ams = relation_ams(&compute)?;
    compute.checkpoint()?;
    let tl = repo.get_timeline(tenant.parse()?, timeline.parse()?)?;
    let end = stop_and_catch_up(&tl, &mut compute).await?;
    let cmp = compare_all_blocks(&tl, compute.data_dir(), end, &ams).await?;
    assert!(cmp.mismatches.is_empty(), "{} mismatches: {:#?}", cmp.mismatches.len(), &cmp.mismatches[..cmp.mismatches.len().min(10)]);
    assert!(cmp.blocks > 10_000 && cmp.relations > 200, "{cmp:?}");
    assert_eq!(last_record_lsn(&http, &tl_url).await?, end, "the shutdown checkpoint is the last record");

    // A compute from a new basebackup at that LSN has everything.
    let again = start_from_basebackup(&http, &tl_url).await?;
    assert_eq!(pgbench_sums(&again)?, after);
    assert_eq!(again.sql("SELECT count(*), sum(length(t)) FROM big")?, "50|320000");
    Ok(())
}

async fn last_record_lsn(http: &reqwest::Client, tl_url: &str) -> anyhow::Result<Lsn> {
    let d: Value = http.get(tl_url).send().await?.json().await?;
    Ok(d["last_record_lsn"].as_str().context("last_record_lsn")?.parse()?)
}

