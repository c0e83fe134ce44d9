//! Import benchmark against real PostgreSQL 15 (prints, no harness, asserts
//! nothing): a stock cluster is filled with `pgbench -i -s
//! $STRATA_BENCH_IMPORT_SCALE` (default 150, about 2.2 GB of relation
//! files), stopped cleanly and imported into a pageserver repository in
//! this process. Printed: the data directory's size, the baseline of
//! reading every file of it once (`cat` to nowhere, MB/s), the import's
//! MB/s, its layer files, and the peak RSS of this process during the
//! import (VmHWM from /proc/self/status, reset just before the import via
//! /proc/self/clear_refs). The goal: peak RSS below 400 MB for a
//! 2 GB directory, whatever its size.
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use common::ps::*;
use pageserver::tenant::repository::Repository;
use pg_harness::PgCluster;

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let scale: u32 = std::env::var("STRATA_BENCH_IMPORT_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    // STRATA_BENCH_IMPORT_PGDATA: a cleanly stopped PG15 data directory to
    // import instead (to compare builds on the same data).
    let given = std::env::var_os("STRATA_BENCH_IMPORT_PGDATA").map(std::path::PathBuf::from);
    let mut cluster = None;
    let pgdata = match &given {
        Some(dir) => dir.clone(),
        None => {
            let mut pg = PgCluster::start(&primary_settings())?;
            let port = pg.port().to_string();
            let out = std::process::Command::new(pg_harness::pg_bin("pgbench"))
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-i", "-q", "-s", &scale.to_string(), "postgres"])
                .output()?;
            anyhow::ensure!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
            pg.stop()?;
            let dir = pg.data_dir().to_path_buf();
            cluster = Some(pg);
            dir
        }
    };
    let bytes = dir_bytes(&pgdata);
    let mb = bytes as f64 / (1 << 20) as f64;
    match &given {
        Some(dir) => println!("data directory: {}, {mb:.0} MB", dir.display()),
        None => println!("data directory: pgbench -i -s {scale}, {mb:.0} MB"),
    }

    // Baseline: read every file once (page cache is warm for both runs).
    let t0 = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("find '{}' -type f -exec cat {{}} + > /dev/null", pgdata.display()))
        .status()?;
    anyhow::ensure!(status.success(), "reading the data directory");
    let read_secs = t0.elapsed().as_secs_f64();
    println!("baseline: reading every file: {read_secs:.2} s = {:.0} MB/s", mb / read_secs);

    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |_| {})).await?;
    let tenant = repo.create_tenant(None)?;
    let rss_before_kb = status_kb("VmRSS:");
    // Reset the peak to the current RSS, so VmHWM is the import's peak.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let t0 = Instant::now();
    let tl = repo.import_timeline(tenant, None, &pgdata).await?;
    let secs = t0.elapsed().as_secs_f64();
    let hwm_kb = status_kb("VmHWM:");
    let (deltas, images, in_memory, layer_bytes) = tl.layer_stats();
    println!(
        "import: {secs:.2} s = {:.0} MB/s; {images} image + {deltas} delta files, {in_memory} in-memory layers, {:.0} MB of layers",
        mb / secs,
        layer_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "peak RSS of the import (VmHWM{}): {:.0} MB (RSS before: {:.0} MB); goal < 400 MB",
        if reset { ", reset before" } else { ", NOT reset: process peak" },
        hwm_kb as f64 / 1024.0,
        rss_before_kb as f64 / 1024.0
    );
    drop(tl);
    repo.shutdown(false).await;
    drop(cluster);
    Ok(())
}
