//! On-demand download and eviction, end to end with real PostgreSQL WAL,
//! against a local directory and against a real S3-compatible server
//! (moto):
//! * an attach on an empty pageserver downloads no layer; reads download
//!   only the layers they need (one relation's pages need fewer than the
//!   index names), each once, and then every block of the stopped
//!   primary's data directory matches GetPage@LSN;
//! * under a resident-size budget of a few layers, every block still
//!   matches while layers are downloaded and evicted, the resident size is
//!   within the budget after each pass, a restart loads evicted layers as
//!   remote ones (and refuses them when remote storage lacks them), and
//!   compaction and GC work with remote layers (GC downloading nothing);
//! * concurrent readers of a remote layer share one download, which goes
//!   on when its requesters go away;
//! * a download that fails is an error naming the layer (HTTP 503), and
//!   the read succeeds once the server is back.
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mask::Am;
use common::ps::*;
use pageserver::remote::generation;
use pageserver::tenant::repository::Repository;
use pageserver::tenant::timeline::{PageReconstructError, Timeline, TimelineConf};
use pg_harness::PgCluster;
use postgres_ffi::RelFileNode;
use remote_storage::testing::MotoServer;
use remote_storage::{GenericRemoteStorage, RemoteStorageConfig};
use tokio_util::sync::CancellationToken;
use utils::lsn::Lsn;

fn small_layers(t: &mut TimelineConf) {
    t.checkpoint_distance = 256 << 10;
    t.image_creation_threshold = 2;
    t.image_layer_keys = 256;
    t.compaction_threshold = 4;
    t.pitr_interval = Duration::ZERO;
    t.gc_horizon_bytes = 64 << 10;
    t.gc_period = Duration::ZERO;
    t.compaction_period = Duration::ZERO;
}

async fn open(dir: &Path, storage: &GenericRemoteStorage, resident_limit: Option<u64>) -> anyhow::Result<Arc<Repository>> {
    let mut c = conf(dir, small_layers);
    c.remote_storage = Some(storage.clone());
    c.resident_limit_bytes = resident_limit;
    Ok(Repository::open(c).await?)
}

async fn pages(tl: &Timeline, rel: RelFileNode, lsn: Lsn) -> anyhow::Result<Vec<Bytes>> {
    let mut out = Vec::new();
    for blk in 0..tl.get_rel_size_at_lsn(rel, 0, lsn).await? {
        out.push(tl.get_rel_page_at_lsn(rel, 0, blk, lsn).await?);
    }
    Ok(out)
}

/// What [`written_and_uploaded`] leaves: a stopped primary whose data
/// directory reflects all WAL below `end`, its relations' access methods,
/// table `t` and the end of WAL.
struct Written {
    pg: PgCluster,
    ams: HashMap<(u32, u32), Am>,
    rel: RelFileNode,
    end: Lsn,
}

/// A primary with tables `t` (rewritten a few times, a flush after each
/// round: several L0s, L1s and image layers) and `other`, stopped and fully
/// ingested; everything flushed and uploaded.
async fn written_and_uploaded(repo: &Arc<Repository>, storage: &GenericRemoteStorage) -> anyhow::Result<(Written, Arc<Timeline>)> {
    let (mut pg, tl) = imported_primary(repo).await?;
    generation::write_generation(storage, tl.tenant_id, 1, &CancellationToken::new()).await?;
    pg.sql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g;")?;
    pg.sql("CREATE TABLE other AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('t')")?.parse()?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let rel = RelFileNode { spc_node: 1663, db_node: db, rel_node: node };
    for i in 0..6 {
        pg.sql(&format!("UPDATE t SET v = repeat('{i}', 200) WHERE id % 3 = {}; VACUUM t;", i % 3))?;
        catch_up(&tl, &pg).await?;
        tl.freeze_and_flush().await?;
    }
    let ams = relation_ams(&pg)?;
    let end = stop_and_catch_up(&tl, &mut pg).await?;
    tl.freeze_and_flush().await?;
    tl.remote().expect("remote client").wait_uploaded().await;
    assert_eq!(tl.remote_consistent_lsn(), tl.disk_consistent_lsn());
    Ok((Written { pg, ams, rel, end }, tl))
}

/// Every block of the stopped primary's data directory, through `tl`.
async fn assert_every_block_matches(tl: &Timeline, w: &Written) -> anyhow::Result<()> {
    let cmp = compare_all_blocks(tl, w.pg.data_dir(), w.end, &w.ams).await?;
    let first: Vec<_> = cmp.mismatches.iter().take(5).collect();
    assert!(cmp.mismatches.is_empty(), "{} mismatches, first: {first:?}", cmp.mismatches.len());
    assert!(cmp.blocks > 100, "{cmp:?}");
    Ok(())
}

fn resident_gauge(tl: &Timeline) -> u64 {
    let labels = [tl.tenant_id.to_string(), tl.timeline_id.to_string()];
    let [ours, seeds] = pageserver::metrics::RESIDENT_PHYSICAL_SIZE.values(&labels[0], &labels[1]);
    assert_eq!(ours, seeds, "pageserver_resident_physical_size differs from strata_pageserver_resident_physical_size_bytes");
    ours as u64
}

async fn attach_reads_only_what_it_needs(config: RemoteStorageConfig) -> anyhow::Result<()> {
    let storage = GenericRemoteStorage::new(&config)?;
    let (dir_a, dir_b) = (workdir(), workdir());
    let repo_a = open(dir_a.path(), &storage, None).await?;
    let (w, tl_a) = written_and_uploaded(&repo_a, &storage).await?;
    let expected = pages(&tl_a, w.rel, w.end).await?;
    let index_layers = tl_a.layers().len();
    assert!(index_layers >= 8, "{index_layers} layers: the scenario needs several");

    let repo_b = open(dir_b.path(), &storage, None).await?;
    repo_b.attach_tenant(tl_a.tenant_id, 2).await?;
    let tl_b = repo_b.get_timeline(tl_a.tenant_id, tl_a.timeline_id)?;
    let r = tl_b.residency();
    assert_eq!((r.resident_layers, r.remote_only_layers, r.downloads), (0, index_layers, 0), "attach downloads no layer: {r:?}");
    assert_eq!(tl_b.physical_size_bytes(), tl_a.physical_size_bytes(), "current_physical_size counts remote layers");
    assert_eq!(tl_b.resident_physical_size_bytes(), 0);

    // One relation's pages need only the layers on their paths.
    assert_eq!(pages(&tl_b, w.rel, w.end).await?, expected, "the attached pageserver reads the same pages");
    let r = tl_b.residency();
    assert!(r.downloads > 0, "{r:?}");
    assert!(r.downloads < index_layers as u64, "reading one relation downloaded every layer: {r:?}");
    assert_eq!(r.downloads, r.resident_layers as u64, "a layer was downloaded twice: {r:?}");
    assert_eq!(resident_gauge(&tl_b), r.resident_bytes, "strata_pageserver_resident_physical_size_bytes");
    eprintln!("ondemand: {index_layers} layers in the index; one relation's pages downloaded {r:?}");

    // Then every block of the stopped primary's data directory.
    assert_every_block_matches(&tl_b, &w).await?;
    let r = tl_b.residency();
    assert_eq!(r.downloads, r.resident_layers as u64, "a layer was downloaded twice: {r:?}");
    eprintln!("ondemand: after every block: {r:?}");

    repo_a.shutdown(false).await;
    repo_b.shutdown(false).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_directory_attach_downloads_on_demand() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    attach_reads_only_what_it_needs(RemoteStorageConfig::parse_location(root.path().to_str().unwrap())?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_attach_downloads_on_demand() -> anyhow::Result<()> {
    let moto = MotoServer::start();
    attach_reads_only_what_it_needs(moto.config("ondemand")).await
}

/// A budget of a few layers on the pageserver that wrote them: evicted
/// layers are read again through downloads, every block matches, the
/// budget holds after each pass; a restart keeps evicted layers remote;
/// compaction and GC run with remote layers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_a_budget_keeps_serving_correct_pages() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let storage = GenericRemoteStorage::new(&RemoteStorageConfig::parse_location(root.path().to_str().unwrap())?)?;
    let dir = workdir();
    let repo = open(dir.path(), &storage, None).await?;
    let (w, tl) = written_and_uploaded(&repo, &storage).await?;
    let (tenant, timeline) = (tl.tenant_id, tl.timeline_id);
    let sizes: Vec<u64> = tl.historic_layers().iter().map(|l| l.size_bytes).collect();
    let total: u64 = sizes.iter().sum();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    // A few layers' worth, and at least the largest one.
    let limit = (total / 4).max(largest);
    assert!(limit < total / 2, "layers of {sizes:?} are too uneven for the scenario");

    // Restart with the budget: everything is resident, then a pass.
    repo.shutdown(true).await;
    drop((repo, tl));
    let repo = open(dir.path(), &storage, Some(limit)).await?;
    let tl = repo.get_timeline(tenant, timeline)?;
    assert_eq!(tl.resident_physical_size_bytes(), total);
    // Until the upload queue has compared with the remote index, no layer
    // counts as uploaded.
    tl.remote().expect("remote client").wait_uploaded().await;
    let pass = repo.evict_now().await?;
    assert!(pass.evicted_layers > 0 && pass.resident_bytes_after <= limit, "{pass:?}");
    assert_eq!(tl.resident_physical_size_bytes(), pass.resident_bytes_after);
    assert_eq!(resident_gauge(&tl), pass.resident_bytes_after);

    // A restart with evicted files: they load as remote layers...
    drop(tl);
    repo.shutdown(true).await;
    drop(repo);
    let empty = tempfile::tempdir()?;
    let other_storage = GenericRemoteStorage::new(&RemoteStorageConfig::parse_location(empty.path().to_str().unwrap())?)?;
    let wrong = open(dir.path(), &other_storage, Some(limit)).await?;
    let refused = match wrong.get_timeline(tenant, timeline) {
        Ok(_) => panic!("loaded with layer files missing locally and in remote storage"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("missing") && refused.contains("remote storage"), "{refused}");
    wrong.shutdown(false).await;
    drop(wrong);
    let repo = open(dir.path(), &storage, Some(limit)).await?;
    let tl = repo.get_timeline(tenant, timeline)?;
    let r = tl.residency();
    assert!(r.remote_only_layers > 0 && r.resident_bytes <= limit, "{r:?}");
    tl.remote().expect("remote client").wait_uploaded().await;

    // ... and reads download them while the eviction task (woken by each
    // download) evicts others.
    assert_every_block_matches(&tl, &w).await?;
    let pass = repo.evict_now().await?;
    assert!(pass.resident_bytes_after <= limit, "{pass:?}");
    assert!(tl.resident_physical_size_bytes() <= limit);
    let r = tl.residency();
    assert!(r.downloads > 0 && r.evictions > 0, "downloads and evictions both happened: {r:?}");
    assert!(r.downloads > r.resident_layers as u64, "evicted layers were downloaded again: {r:?}");
    eprintln!("ondemand: budget {limit} of {total} bytes ({} layers): every block read with {r:?}", sizes.len());

    // Compaction and GC with most layers remote: compaction downloads what
    // it merges; GC downloads nothing.
    repo.evict_to(0).await?;
    assert_eq!(tl.resident_physical_size_bytes(), 0, "every uploaded layer is evictable when nothing reads");
    let compacted = tl.compact(true).await?;
    assert_eq!(compacted.l0_compacted, compacted.layers_before.l0_deltas, "{compacted:?}");
    tl.remote().expect("remote client").wait_uploaded().await;
    repo.evict_to(0).await?;
    let downloads = tl.residency().downloads;
    let gc = tl.gc_now().await?;
    assert_eq!(tl.residency().downloads, downloads, "GC downloaded layers: {gc:?}");
    assert_every_block_matches(&tl, &w).await?;
    let pass = repo.evict_now().await?;
    assert!(pass.resident_bytes_after <= limit, "{pass:?}");
    repo.shutdown(false).await;
    Ok(())
}

/// Poll until `cond` (the waits here are for the system to reach a state,
/// never a timing assertion).
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(120), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_share_one_download_that_outlives_them() -> anyhow::Result<()> {
    let moto = MotoServer::start();
    let storage = GenericRemoteStorage::new(&moto.config("shared"))?;
    let (dir_a, dir_b) = (workdir(), workdir());
    let repo_a = open(dir_a.path(), &storage, None).await?;
    let (w, tl_a) = written_and_uploaded(&repo_a, &storage).await?;
    let expected = tl_a.get_rel_page_at_lsn(w.rel, 0, 0, w.end).await?;
    let repo_b = open(dir_b.path(), &storage, None).await?;
    repo_b.attach_tenant(tl_a.tenant_id, 2).await?;
    let tl = repo_b.get_timeline(tl_a.tenant_id, tl_a.timeline_id)?;
    let (rel, end) = (w.rel, w.end);
    let readers = |n: usize| -> Vec<tokio::task::JoinHandle<Result<Bytes, PageReconstructError>>> {
        (0..n)
            .map(|_| {
                let tl = Arc::clone(&tl);
                tokio::spawn(async move { tl.get_rel_page_at_lsn(rel, 0, 0, end).await })
            })
            .collect()
    };

    // Every requester goes away while the server is frozen: the download
    // still completes (and only one was made).
    moto.pause();
    let first = readers(8);
    wait_until("a download is in flight", || tl.residency().downloads_in_flight > 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tl.residency().downloads_in_flight, 1, "eight readers of one layer, one download");
    for r in &first {
        r.abort();
    }
    for r in first {
        assert!(r.await.is_err_and(|e| e.is_cancelled()));
    }
    moto.resume();
    wait_until("the abandoned download finished", || tl.residency().downloads_in_flight == 0).await;
    let r = tl.residency();
    assert_eq!((r.downloads, r.resident_layers), (1, 1), "the download outlived its requesters: {r:?}");

    // Half of the requesters go away: the others get the page.
    moto.pause();
    let mut second = readers(8);
    wait_until("a download is in flight", || tl.residency().downloads_in_flight > 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for r in second.drain(..4) {
        r.abort();
    }
    moto.resume();
    for r in second {
        assert_eq!(r.await??, expected);
    }
    wait_until("no download in flight", || tl.residency().downloads_in_flight == 0).await;
    let r = tl.residency();
    assert_eq!(r.downloads, r.resident_layers as u64, "a layer was downloaded twice: {r:?}");
    assert!(r.downloads > 1, "{r:?}");

    repo_a.shutdown(false).await;
    repo_b.shutdown(false).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_download_names_the_layer_and_the_read_succeeds_later() -> anyhow::Result<()> {
    let moto = MotoServer::start();
    let storage = GenericRemoteStorage::new(&moto.config("failing"))?;
    let dir_a = workdir();
    let repo_a = open(dir_a.path(), &storage, None).await?;
    let (w, tl_a) = written_and_uploaded(&repo_a, &storage).await?;
    let expected = pages(&tl_a, w.rel, w.end).await?;
    repo_a.shutdown(false).await;

    let mut config = moto.config("failing");
    (config.timeout_ms, config.max_retries, config.base_backoff_ms, config.max_backoff_ms) = (500, 1, 20, 50);
    let impatient = GenericRemoteStorage::new(&config)?;
    let dir_b = workdir();
    let repo_b = open(dir_b.path(), &impatient, None).await?;
    repo_b.attach_tenant(tl_a.tenant_id, 2).await?;
    let tl = repo_b.get_timeline(tl_a.tenant_id, tl_a.timeline_id)?;
    let remote_names: Vec<String> = tl.historic_layers().iter().map(|l| l.file_name()).collect();

    moto.pause();
    let err = tl.get_rel_page_at_lsn(w.rel, 0, 0, w.end).await.expect_err("a read with remote storage frozen");
    moto.resume();
    let PageReconstructError::LayerDownload { layer, timeline_id, .. } = &err else { panic!("not a download error: {err}") };
    assert!(remote_names.contains(layer), "{layer} is not one of the timeline's layers");
    assert_eq!(*timeline_id, tl.timeline_id);
    let message = err.to_string();
    assert!(message.contains(layer.as_str()) && message.contains("timed out"), "{message}");
    let api = http_api::ApiError::from(err);
    assert_eq!(api.0, axum::http::StatusCode::SERVICE_UNAVAILABLE, "{}", api.1);
    assert_eq!(tl.residency().downloads_in_flight, 0, "a failed download leaves the map");

    assert_eq!(pages(&tl, w.rel, w.end).await?, expected, "reads succeed once the server is back");
    let r = tl.residency();
    assert_eq!(r.downloads, r.resident_layers as u64, "{r:?}");
    repo_b.shutdown(false).await;
    Ok(())
}
