//! Pageserver benchmark against real PostgreSQL 15 (prints, no harness):
//!
//! 1. WAL ingest throughput: a primary runs pgbench (-i -s 4 and a short
//!    run) with no consumer; then the pageserver's walreceiver streams and
//!    ingests all of it (MB/s of WAL), and a stock PG15 standby made from
//!    the same initial data directory replays the same WAL (MB/s).
//! 2. GetPage@LSN from an image layer (pages/s, latency percentiles).
//! 3. GetPage@LSN needing redo of ~10 records per page (full_page_writes
//!    off, so the chain is the image plus 10 update records), one page at
//!    a time and in batches of 64 (`get_rel_pages_at_lsn`, the page
//!    stream's path), the redo requests of a batch one by one over the
//!    processes and pipelined to them (alternated in one run).
//! 4. GetPage@LSN latency (p50/p99) at the latest LSN while `pgbench -c 2`
//!    writes to the primary, beside the same reads with no writer.
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::ps::*;
use pageserver::metrics::{WAL_REDO_FAILURES, WAL_REDO_PIPELINED_REQUESTS};
use pageserver::tenant::repository::Repository;
use pageserver::walredo::PIPELINE_DEPTH;
use pg_harness::PgCluster;
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    format!("p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us", p(0.5), p(0.9), p(0.99), p(1.0))
}

/// Start a stock standby on a copy of the initial data directory.
fn start_standby(pg: &PgCluster, copy: &std::path::Path) -> anyhow::Result<(std::process::Child, u16)> {
    let user = pg.user();
    let port = pg_harness::free_port()?;
    std::fs::write(copy.join("standby.signal"), "")?;
    let mut conf = std::fs::OpenOptions::new().append(true).open(copy.join("postgresql.conf"))?;
    use std::io::Write;
    writeln!(conf, "primary_conninfo = 'host=127.0.0.1 port={} user=postgres'", pg.port())?;
    writeln!(conf, "max_wal_senders = 10")?;
    user.chown(&copy.join("standby.signal"))?;
    let log = std::fs::File::create(copy.join("../standby.log"))?;
    let child = user
        .command(pg_harness::pg_bin("postgres"))
        .arg("-D")
        .arg(copy)
        .args(["-c", &format!("port={port}"), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", copy.parent().unwrap().display()))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok((child, port))
}

fn standby_replay_lsn(port: u16) -> Option<Lsn> {
    let out = std::process::Command::new(pg_harness::pg_bin("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-c"])
        .arg("SELECT pg_last_wal_replay_lsn()")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |t| t.checkpoint_distance = 64 << 20)).await?;
    let mut pg = PgCluster::init()?;
    let mut settings = primary_settings();
    settings.push(("full_page_writes", "off"));
    pg.configure(&settings)?;
    let tenant = repo.create_tenant(None)?;
    let tl = repo.import_timeline(tenant, None, pg.data_dir()).await?;
    let start = tl.last_record_lsn();
    // A copy of the initial data directory for the standby.
    let standby_root = pg_harness::pg_owned_tempdir(pg.user(), "strata-bench-standby-")?;
    let standby_dir = standby_root.path().join("data");
    let status = std::process::Command::new("cp").arg("-a").arg(pg.data_dir()).arg(&standby_dir).status()?;
    anyhow::ensure!(status.success(), "copy data dir");
    pg.start_postmaster()?;
    pgbench(&pg, 4, 2000)?;
    pg.sql("CREATE TABLE r (id int, v int, pad text) WITH (fillfactor = 30); \
            INSERT INTO r SELECT g, 0, repeat('x', 200) FROM generate_series(1, 3000) g;")?;
    let end = pg.current_wal_insert_lsn()?;
    let mb = (end.0 - start.0) as f64 / (1 << 20) as f64;

    // 1. Ingest.
    let t0 = Instant::now();
    stream_from(&tl, &pg).await;
    let ingested = catch_up(&tl, &pg).await?;
    let ingest_secs = t0.elapsed().as_secs_f64();
    println!("ingest: {mb:.1} MB of WAL ({start}..{ingested}) in {ingest_secs:.2} s = {:.1} MB/s", mb / ingest_secs);
    let t0 = Instant::now();
    let (mut standby, sport) = start_standby(&pg, &standby_dir)?;
    loop {
        if standby_replay_lsn(sport).is_some_and(|l| l >= ingested) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let log = std::fs::read_to_string(standby_dir.join("../standby.log")).unwrap_or_default();
            println!("standby did not catch up; its log:\n{log}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sb_secs = t0.elapsed().as_secs_f64();
    println!("PG15 standby (same WAL, incl. its startup): {sb_secs:.2} s = {:.1} MB/s", mb / sb_secs);
    let _ = standby.kill();
    let _ = standby.wait();

    // 2. GetPage@LSN from image layers.
    tl.freeze_and_flush().await?;
    let lsn = tl.disk_consistent_lsn();
    let t0 = Instant::now();
    let n = tl.create_image_layers(lsn).await?;
    println!("image layers: {n} files at {lsn} in {:.2} s", t0.elapsed().as_secs_f64());
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let accounts: u32 = pg.sql("SELECT pg_relation_filenode('pgbench_accounts')")?.parse()?;
    let rel = RelFileNode { spc_node: 1663, db_node: db, rel_node: accounts };
    let nblocks = tl.get_rel_size_at_lsn(rel, 0, lsn).await?;
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for i in 0..20_000u32 {
        let blk = (i.wrapping_mul(2654435761)) % nblocks;
        let s = Instant::now();
        tl.get_rel_page_at_lsn(rel, 0, blk, lsn).await?;
        lat.push(s.elapsed());
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("GetPage@LSN from image layer: {} pages in {secs:.2} s = {:.0} pages/s; {}", lat.len(), lat.len() as f64 / secs, percentiles(lat));

    // 3. GetPage@LSN with ~10 records of redo per page.
    let r: u32 = pg.sql("SELECT pg_relation_filenode('r')")?.parse()?;
    let rrel = RelFileNode { spc_node: 1663, db_node: db, rel_node: r };
    let rows_per_page: u32 = pg.sql("SELECT count(*) FROM r WHERE (ctid::text::point)[0] = 0")?.parse()?;
    for round in 0..10 {
        // One row per page per round: one heap record per page.
        pg.sql(&format!("UPDATE r SET v = v + 1 WHERE id % {rows_per_page} = {round};"))?;
    }
    let lsn2 = catch_up(&tl, &pg).await?;
    let rblocks = tl.get_rel_size_at_lsn(rrel, 0, lsn2).await?;
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for _ in 0..3 {
        for blk in 0..rblocks {
            let s = Instant::now();
            tl.get_rel_page_at_lsn(rrel, 0, blk, lsn2).await?;
            lat.push(s.elapsed());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let recs = pageserver::metrics::RECONSTRUCT_RECORDS.get_sample_sum() / pageserver::metrics::RECONSTRUCT_RECORDS.get_sample_count().max(1) as f64;
    println!(
        "GetPage@LSN with redo: {} pages ({rblocks} blocks x3, {rows_per_page} rows/page) in {secs:.2} s = {:.0} pages/s; \
         mean {recs:.1} records per reconstruction; {}",
        lat.len(),
        lat.len() as f64 / secs,
        percentiles(lat)
    );
    // 3b. The same pages in batches (what the page stream serves), their
    // redo requests one by one over the processes (pipeline depth 1) and
    // pipelined to them (the default), alternated in this run.
    let refs: Vec<_> = (0..rblocks).map(|b| (rrel, 0u8, b)).collect();
    for depth in [1, PIPELINE_DEPTH, 1, PIPELINE_DEPTH] {
        repo.walredo.set_pipeline_depth(depth);
        let (piped0, failed0) = (WAL_REDO_PIPELINED_REQUESTS.get_sample_sum(), WAL_REDO_FAILURES.get());
        let t0 = Instant::now();
        let mut pages = 0;
        for _ in 0..10 {
            for chunk in refs.chunks(64) {
                for page in tl.get_rel_pages_at_lsn(chunk, lsn2, 8).await {
                    page?;
                    pages += 1;
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "GetPage@LSN with redo, batches of 64, redo pipeline depth {depth:>2}: {pages} pages in {secs:.2} s = {:.0} pages/s \
             ({:.0} pipelined, {} redo failures)",
            pages as f64 / secs,
            WAL_REDO_PIPELINED_REQUESTS.get_sample_sum() - piped0,
            WAL_REDO_FAILURES.get() - failed0
        );
    }
    repo.walredo.set_pipeline_depth(PIPELINE_DEPTH);

    // 4. GetPage@LSN latency at the latest LSN while pgbench writes, beside
    // the same reads with no writer (same run, same blocks).
    let reads: Vec<u32> = (0..200_000u32).map(|i| i.wrapping_mul(2_654_435_761) % nblocks).collect();
    let idle = latest_reads(&tl, rel, &reads, LATENCY_WINDOW).await?;
    println!("GetPage@LSN at the latest LSN, no writer:         {:>6} reads, {}", idle.len(), percentiles(idle));
    let port = pg.port().to_string();
    let writer = std::process::Command::new(pg_harness::pg_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-c", "2", "-T", "600", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut writer = KillOnDrop(writer);
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some(status) = writer.0.try_wait()? {
        let mut err = String::new();
        if let Some(mut e) = writer.0.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err)?;
        }
        anyhow::bail!("pgbench ended early ({status}): {err}");
    }
    let before = pg.current_wal_insert_lsn()?;
    let t0 = Instant::now();
    let loaded = latest_reads(&tl, rel, &reads, LATENCY_WINDOW).await?;
    let secs = t0.elapsed().as_secs_f64();
    let written = pg.current_wal_insert_lsn()?.0.saturating_sub(before.0);
    drop(writer);
    println!(
        "GetPage@LSN at the latest LSN, pgbench -c 2 writing: {:>6} reads, {} ({:.1} MB/s of WAL written meanwhile)",
        loaded.len(),
        percentiles(loaded),
        written as f64 / (1 << 20) as f64 / secs
    );
    walreceiver_stop(&tl).await;
    repo.shutdown(false).await;
    pg.stop()?;
    Ok(())
}

/// Kills the child process when dropped (an early error return).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long each latency figure of part 4 reads.
const LATENCY_WINDOW: Duration = Duration::from_secs(3);

/// Read `blocks` of `rel` one at a time for up to `window`, each at the
/// timeline's latest LSN when it is asked; the latency of each.
async fn latest_reads(
    tl: &pageserver::tenant::timeline::Timeline,
    rel: RelFileNode,
    blocks: &[u32],
    window: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(blocks.len());
    let started = Instant::now();
    for &blk in blocks {
        if started.elapsed() >= window {
            break;
        }
        let s = Instant::now();
        tl.get_rel_page_at_lsn(rel, 0, blk, tl.last_record_lsn()).await?;
        lat.push(s.elapsed());
    }
    Ok(lat)
}

async fn walreceiver_stop(tl: &pageserver::tenant::timeline::Timeline) {
    pageserver::ingest::walreceiver::stop(tl).await;
}
