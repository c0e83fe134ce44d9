//! Remote storage benchmark (prints, no harness), against a local
//! directory and against moto (S3), with real PostgreSQL 15 data (pgbench
//! at `STRATA_BENCH_SCALE`, default 2):
//!
//! 1. Upload throughput (MB/s): a pageserver that wrote its layers without
//!    remote storage restarts with it; its upload queue uploads every layer
//!    (4 at a time) and the index.
//! 2. Download throughput (MB/s): a second pageserver attaches the tenant
//!    (no layer downloaded) and makes every layer resident, all at once.
//! 3. First-read latency: GetPage@LSN of a pgbench_accounts block with
//!    every layer evicted (the read downloads the layers on its path),
//!    then the same read again with them resident; p50 / p90 / max and the
//!    layers each first read downloaded.
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ps::*;
use pageserver::remote::generation;
use pageserver::tenant::repository::Repository;
use pageserver::tenant::timeline::Timeline;
use postgres_ffi::RelFileNode;
use remote_storage::testing::MotoServer;
use remote_storage::{GenericRemoteStorage, RemoteStorageConfig};
use tokio_util::sync::CancellationToken;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    format!("p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms", p(0.5), p(0.9), p(1.0))
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

async fn open(dir: &Path, storage: Option<&GenericRemoteStorage>) -> anyhow::Result<Arc<Repository>> {
    let mut c = conf(dir, |t| {
        t.checkpoint_distance = 8 << 20;
        t.gc_period = Duration::ZERO;
        t.compaction_period = Duration::ZERO;
    });
    c.remote_storage = storage.cloned();
    Ok(Repository::open(c).await?)
}

/// What the writer left: tenant, timeline, pgbench_accounts and the end LSN.
struct Data {
    tenant: TenantId,
    timeline: TimelineId,
    accounts: RelFileNode,
    end: Lsn,
}

/// pgbench data ingested, flushed and imaged by a pageserver without remote storage.
async fn write_data(dir: &Path, scale: u32) -> anyhow::Result<Data> {
    let repo = open(dir, None).await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    pgbench(&pg, scale, 200)?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('pgbench_accounts')")?.parse()?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let end = stop_and_catch_up(&tl, &mut pg).await?;
    pageserver::ingest::walreceiver::remove(&tl).await;
    tl.freeze_and_flush().await?;
    tl.create_image_layers(tl.disk_consistent_lsn()).await?;
    let data = Data { tenant: tl.tenant_id, timeline: tl.timeline_id, accounts: RelFileNode { spc_node: 1663, db_node: db, rel_node: node }, end };
    drop(tl);
    repo.shutdown(true).await;
    Ok(data)
}

async fn bench(name: &str, storage: GenericRemoteStorage, writer_dir: &Path, data: &Data) -> anyhow::Result<()> {
    // 1. Upload: the writer restarts with remote storage.
    let copy = workdir();
    let status = std::process::Command::new("cp").arg("-a").arg(writer_dir.join("tenants")).arg(copy.path()).status()?;
    anyhow::ensure!(status.success(), "copy the writer's directory");
    generation::write_generation(&storage, data.tenant, 1, &CancellationToken::new()).await?;
    let started = Instant::now();
    let repo_a = open(copy.path(), Some(&storage)).await?;
    let tl_a = repo_a.get_timeline(data.tenant, data.timeline)?;
    tl_a.remote().expect("remote client").wait_uploaded().await;
    let upload = started.elapsed();
    let bytes = tl_a.physical_size_bytes();
    let layers = tl_a.historic_layers().len();
    println!("{name}: upload of {layers} layers, {:.1} MiB: {:.1} MB/s ({:.2} s)", bytes as f64 / (1 << 20) as f64, mb_per_s(bytes, upload), upload.as_secs_f64());
    repo_a.shutdown(false).await;

    // 2. Download: attach elsewhere, then every layer at once.
    let dir_b = workdir();
    let repo_b = open(dir_b.path(), Some(&storage)).await?;
    let started = Instant::now();
    repo_b.attach_tenant(data.tenant, 2).await?;
    let attach = started.elapsed();
    let tl = repo_b.get_timeline(data.tenant, data.timeline)?;
    tl.remote().expect("remote client").wait_uploaded().await;
    let all = tl.historic_layers();
    let started = Instant::now();
    let pins = futures::future::try_join_all(all.iter().map(|l| tl.ensure_resident(l))).await?;
    let download = started.elapsed();
    drop(pins);
    println!(
        "{name}: attach (indexes only) {:.0} ms; download of every layer: {:.1} MB/s ({:.2} s)",
        attach.as_secs_f64() * 1e3,
        mb_per_s(bytes, download),
        download.as_secs_f64()
    );

    // 3. First read with everything evicted, then the same read resident.
    let (first, again, downloaded) = first_reads(&repo_b, &tl, data).await?;
    println!(
        "{name}: GetPage@LSN needing downloads ({:.1} layers, {:.2} MiB per read): {}",
        downloaded.0,
        downloaded.1 / (1 << 20) as f64,
        percentiles(first)
    );
    println!("{name}: the same GetPage@LSN resident: {}", percentiles(again));
    repo_b.shutdown(false).await;
    Ok(())
}

/// (first-read latencies, resident-read latencies, (layers, bytes) downloaded per first read).
async fn first_reads(repo: &Repository, tl: &Arc<Timeline>, data: &Data) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, (f64, f64))> {
    let nblocks = tl.get_rel_size_at_lsn(data.accounts, 0, data.end).await?;
    let samples = 20u32;
    let (mut first, mut again) = (Vec::new(), Vec::new());
    let (mut layers, mut bytes) = (0u64, 0u64);
    for i in 0..samples {
        let blk = (nblocks / samples) * i;
        repo.evict_to(0).await?;
        let before = tl.residency();
        let t = Instant::now();
        tl.get_rel_page_at_lsn(data.accounts, 0, blk, data.end).await?;
        first.push(t.elapsed());
        let after = tl.residency();
        layers += after.downloads - before.downloads;
        bytes += after.resident_bytes;
        let t = Instant::now();
        tl.get_rel_page_at_lsn(data.accounts, 0, blk, data.end).await?;
        again.push(t.elapsed());
    }
    Ok((first, again, (layers as f64 / samples as f64, bytes as f64 / samples as f64)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let scale: u32 = std::env::var("STRATA_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let writer = workdir();
    let data = write_data(writer.path(), scale).await?;
    let root = tempfile::tempdir()?;
    let local = GenericRemoteStorage::new(&RemoteStorageConfig::parse_location(root.path().to_str().unwrap_or("/tmp"))?)?;
    bench("local dir", local, writer.path(), &data).await?;
    let moto = MotoServer::start();
    let s3 = GenericRemoteStorage::new(&moto.config("bench"))?;
    bench("moto (S3)", s3, writer.path(), &data).await?;
    Ok(())
}
