//! Basebackup benchmark (prints, no harness): MB/s of the pageserver's
//! basebackup HTTP route beside stock `pg_basebackup -Ft` of the same
//! database, in the same run.
//!
//! A stock PostgreSQL 15 cluster gets `pgbench -i -s $BENCH_SCALE` (default
//! 20); `pg_basebackup -Ft -Xnone -D -` streams it to a byte counter (3
//! runs); the cluster is stopped and imported into an in-process pageserver
//! (import MB/s), whose `GET .../basebackup` is streamed to a byte counter
//! (3 runs) over loopback HTTP. Both archives hold the same relation files;
//! the pageserver materialises every page with GetPage@LSN from its layers.
#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::ps::*;
use pageserver::tenant::repository::Repository;
use pg_harness::PgCluster;
use serde_json::{json, Value};

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn report(what: &str, runs: &[(u64, Duration)]) {
    let best = runs.iter().map(|(b, d)| mb_s(*b, *d)).fold(0.0, f64::max);
    let all: Vec<String> = runs.iter().map(|(b, d)| format!("{:.0}", mb_s(*b, *d))).collect();
    println!(
        "{what:<34} {:>8.1} MB archive, best {best:>7.1} MB/s (runs: {} MB/s; {:.2} s best)",
        runs[0].0 as f64 / (1 << 20) as f64,
        all.join(", "),
        runs.iter().map(|r| r.1).min().unwrap_or_default().as_secs_f64()
    );
}

/// `pg_basebackup -Ft -Xnone -D -` into a byte counter.
fn pg_basebackup(pg: &PgCluster) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut child = std::process::Command::new(pg_harness::pg_bin("pg_basebackup"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "postgres"])
        .args(["-Ft", "-Xnone", "-c", "fast", "-D", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut out = child.stdout.take().expect("stdout");
    let (mut total, mut buf) = (0u64, vec![0u8; 1 << 20]);
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    anyhow::ensure!(child.wait()?.success(), "pg_basebackup failed");
    Ok((total, started.elapsed()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let scale: u32 = std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    println!("basebackup benchmark: pgbench -i -s {scale} on stock PostgreSQL 15");
    let mut pg = PgCluster::start(&primary_settings())?;
    tokio::task::block_in_place(|| pgbench(&pg, scale, 100))?;
    let db_size: u64 = pg.sql("SELECT sum(pg_database_size(oid)) FROM pg_database")?.parse()?;
    println!("database size (all databases): {:.1} MB", db_size as f64 / (1 << 20) as f64);
    let mut stock = Vec::new();
    for _ in 0..3 {
        stock.push(tokio::task::block_in_place(|| pg_basebackup(&pg))?);
    }
    tokio::task::block_in_place(|| pg.stop())?;

    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |_| {})).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, pageserver::http::router(repo)).await });
    let http = reqwest::Client::new();
    let r = http.post(format!("{base}/v1/tenant")).json(&json!({})).send().await?;
    let tenant = r.json::<Value>().await?["tenant_id"].as_str().unwrap_or_default().to_string();
    let started = Instant::now();
    let r = http
        .post(format!("{base}/v1/tenant/{tenant}/timeline"))
        .json(&json!({ "import_pgdata": pg.data_dir() }))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "import: {}", r.text().await?);
    let import_time = started.elapsed();
    let timeline = r.json::<Value>().await?["timeline_id"].as_str().unwrap_or_default().to_string();
    println!("import_pgdata (HTTP, page images into a layer file): {:.1} MB/s of database, {:.2} s", mb_s(db_size, import_time), import_time.as_secs_f64());

    let url = format!("{base}/v1/tenant/{tenant}/timeline/{timeline}/basebackup");
    let mut ours = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut resp = http.get(&url).send().await?;
        anyhow::ensure!(resp.status() == 200, "basebackup: {}", resp.status());
        let mut total = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            total += chunk.len() as u64;
        }
        ours.push((total, started.elapsed()));
    }
    report("pg_basebackup -Ft -Xnone (stock)", &stock);
    report("pageserver GET .../basebackup", &ours);
    Ok(())
}
