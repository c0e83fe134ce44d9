//! Remote storage end to end, against a local directory and against a real
//! S3-compatible server (moto): layers and indexes uploaded as WAL is
//! ingested; a second pageserver with an empty directory attaches the
//! tenant at a higher generation and reads the same pages; the first one,
//! now stale, can no longer delete objects or advance its
//! remote-consistent LSN; an outage of the S3 server delays uploads
//! without stopping ingest or reads, and they catch up when it is back.
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::ps::*;
use pageserver::remote::{download, generation, layout};
use pageserver::tenant::repository::Repository;
use pageserver::tenant::timeline::{Timeline, TimelineConf};
use pg_harness::PgCluster;
use postgres_ffi::RelFileNode;
use remote_storage::testing::MotoServer;
use remote_storage::{GenericRemoteStorage, RemoteStorageConfig};
use tokio_util::sync::CancellationToken;
use utils::lsn::Lsn;

fn small_layers(t: &mut TimelineConf) {
    t.checkpoint_distance = 256 << 10;
    t.image_creation_threshold = 1;
    t.compaction_threshold = 3;
    t.pitr_interval = Duration::ZERO;
    t.gc_horizon_bytes = 64 << 10;
    t.gc_period = Duration::ZERO;
}

async fn open(dir: &std::path::Path, storage: &GenericRemoteStorage) -> anyhow::Result<Arc<Repository>> {
    let mut c = conf(dir, small_layers);
    c.remote_storage = Some(storage.clone());
    Ok(Repository::open(c).await?)
}

async fn table(pg: &PgCluster) -> anyhow::Result<RelFileNode> {
    pg.sql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g;")?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('t')")?.parse()?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    Ok(RelFileNode { spc_node: 1663, db_node: db, rel_node: node })
}

async fn pages(tl: &Timeline, rel: RelFileNode, lsn: Lsn) -> anyhow::Result<Vec<Bytes>> {
    let mut out = Vec::new();
    for blk in 0..tl.get_rel_size_at_lsn(rel, 0, lsn).await? {
        out.push(tl.get_rel_page_at_lsn(rel, 0, blk, lsn).await?);
    }
    Ok(out)
}

/// Rewrite the table a few times, flushing after each round.
async fn churn(tl: &Timeline, pg: &PgCluster, rounds: std::ops::Range<u32>) -> anyhow::Result<Lsn> {
    for i in rounds {
        pg.sql(&format!("UPDATE t SET v = repeat('{}', 200); VACUUM t;", i % 10))?;
        catch_up(tl, pg).await?;
        tl.freeze_and_flush().await?;
    }
    Ok(tl.disk_consistent_lsn())
}

async fn remote_keys(storage: &GenericRemoteStorage) -> anyhow::Result<BTreeSet<String>> {
    let listed = storage.list(None, &CancellationToken::new()).await?;
    Ok(listed.into_iter().map(|(p, _)| p.to_string()).collect())
}

/// Every layer the newest index (at or below `generation`) names exists.
async fn assert_remote_consistent(storage: &GenericRemoteStorage, tl: &Timeline, generation: u32) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let (_, index) = download::newest_index(storage, tl.tenant_id, tl.timeline_id, generation, &cancel)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no remote index"))?;
    let keys = remote_keys(storage).await?;
    for layer in &index.layers {
        let key = layout::layer_path(tl.tenant_id, tl.timeline_id, &layer.name).to_string();
        assert!(keys.contains(&key), "remote index names {key}, which is not in remote storage");
    }
    Ok(())
}

async fn upload_attach_and_split_brain(config: RemoteStorageConfig) -> anyhow::Result<()> {
    let storage = GenericRemoteStorage::new(&config)?;
    let cancel = CancellationToken::new();
    let (dir_a, dir_b) = (workdir(), workdir());
    let repo_a = open(dir_a.path(), &storage).await?;
    let (mut pg, tl_a) = imported_primary(&repo_a).await?;
    generation::write_generation(&storage, tl_a.tenant_id, 1, &cancel).await?;
    let rel = table(&pg).await?;
    let lsn = churn(&tl_a, &pg, 0..6).await?;
    let remote_a = tl_a.remote().expect("remote client").clone();
    remote_a.wait_uploaded().await;
    assert_eq!(tl_a.remote_consistent_lsn(), lsn, "remote_consistent_lsn follows the uploaded index");
    assert_remote_consistent(&storage, &tl_a, 1).await?;
    let expected = pages(&tl_a, rel, lsn).await?;
    assert!(expected.len() > 10);

    // A second pageserver attaches at generation 2 (a lower one is refused).
    let downloads_before = pageserver::metrics::LAYER_DOWNLOADS.get();
    let repo_b = open(dir_b.path(), &storage).await?;
    repo_b.attach_tenant(tl_a.tenant_id, 2).await?;
    let tl_b = repo_b.get_timeline(tl_a.tenant_id, tl_a.timeline_id)?;
    let dir_c = workdir();
    let repo_c = open(dir_c.path(), &storage).await?;
    let refused = match repo_c.attach_tenant(tl_a.tenant_id, 1).await {
        Ok(_) => panic!("an attach below the recorded generation was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("generation 2"), "{refused}");
    repo_c.shutdown(false).await;
    assert!(pageserver::metrics::LAYER_DOWNLOADS.get() > downloads_before, "attach downloaded layers");
    assert_eq!(tl_b.disk_consistent_lsn(), lsn);
    assert_eq!(pages(&tl_b, rel, lsn).await?, expected, "the attached pageserver reads the same pages");
    let remote_b = tl_b.remote().expect("remote client").clone();
    remote_b.wait_uploaded().await;
    assert_eq!(tl_b.remote_consistent_lsn(), lsn);

    // The stale pageserver goes on ingesting and compacting: it may upload
    // its own index object, but it deletes nothing and reports nothing new.
    let keys_before = remote_keys(&storage).await?;
    let stale_lsn = tl_a.remote_consistent_lsn();
    let newer = churn(&tl_a, &pg, 6..12).await?;
    tl_a.gc_now().await?;
    remote_a.wait_uploaded().await;
    assert!(newer > stale_lsn);
    assert_eq!(tl_a.remote_consistent_lsn(), stale_lsn, "a stale generation must not advance remote_consistent_lsn");
    assert!(remote_a.status().stale_generation);
    let local_now: BTreeSet<String> = tl_a
        .layers()
        .into_iter()
        .map(|l| layout::layer_path(tl_a.tenant_id, tl_a.timeline_id, &l.name).to_string())
        .collect();
    let dropped_locally = keys_before.iter().filter(|k| k.contains("__") && !local_now.contains(*k)).count();
    assert!(dropped_locally > 0, "compaction/GC on the stale pageserver removed no layer, so nothing was at stake");
    let keys_after = remote_keys(&storage).await?;
    let lost: Vec<_> = keys_before.difference(&keys_after).collect();
    assert!(lost.is_empty(), "a stale generation deleted {lost:?}");
    assert_remote_consistent(&storage, &tl_b, 2).await?;
    assert_eq!(pages(&tl_b, rel, lsn).await?, expected);

    tokio::task::block_in_place(|| pg.stop())?;
    repo_a.shutdown(false).await;
    repo_b.shutdown(false).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_directory_upload_attach_and_stale_generation() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    upload_attach_and_split_brain(RemoteStorageConfig::parse_location(root.path().to_str().unwrap())?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_upload_attach_and_stale_generation() -> anyhow::Result<()> {
    let moto = MotoServer::start();
    upload_attach_and_split_brain(moto.config("ps-test")).await
}

/// With the S3 server down, ingest and reads go on and uploads wait; when
/// it is back they complete, and a restart with a queue cut short
/// re-uploads what is missing (reconcile).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_outage_delays_uploads_but_not_ingest() -> anyhow::Result<()> {
    let mut moto = MotoServer::start();
    let mut config = moto.config("outage");
    (config.timeout_ms, config.max_retries, config.base_backoff_ms, config.max_backoff_ms) = (2000, 1, 50, 200);
    let storage = GenericRemoteStorage::new(&config)?;
    let dir = workdir();
    let repo = open(dir.path(), &storage).await?;
    moto.stop();
    let (mut pg, tl) = imported_primary(&repo).await?;
    let rel = table(&pg).await?;
    let lsn = churn(&tl, &pg, 0..3).await?;
    assert!(!pages(&tl, rel, lsn).await?.is_empty(), "reads go on while remote storage is down");
    let remote = tl.remote().expect("remote client").clone();
    assert!(tokio::time::timeout(Duration::from_secs(3), remote.wait_uploaded()).await.is_err(), "uploads cannot finish");
    assert_eq!(tl.remote_consistent_lsn(), Lsn(0));
    assert!(remote.status().last_error.is_some(), "the failure is reported");

    // A restart while the queue is stuck: the new queue reconciles.
    tokio::task::block_in_place(|| pg.stop())?;
    let (tenant, timeline) = (tl.tenant_id, tl.timeline_id);
    repo.shutdown(false).await;
    drop((tl, remote));
    moto.restart();
    let repo = open(dir.path(), &storage).await?;
    let tl = repo.get_timeline(tenant, timeline)?;
    tokio::time::timeout(Duration::from_secs(60), tl.remote().expect("remote client").wait_uploaded()).await?;
    assert_eq!(tl.remote_consistent_lsn(), tl.disk_consistent_lsn());
    assert_remote_consistent(&storage, &tl, 1).await?;
    repo.shutdown(false).await;
    Ok(())
}

/// A tenant's settings follow it to a pageserver that attaches it: they are
/// uploaded at creation and at every change, and restored by the attach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_settings_are_restored_by_attach() -> anyhow::Result<()> {
    use pageserver::tenant::config::TenantConfOverrides;
    let root = tempfile::tempdir()?;
    let storage = GenericRemoteStorage::new(&RemoteStorageConfig::parse_location(root.path().to_str().unwrap())?)?;
    let (dir_a, dir_b) = (workdir(), workdir());
    let repo_a = open(dir_a.path(), &storage).await?;
    let mut o = TenantConfOverrides::default();
    o.set_str("gc_horizon", "1MiB")?;
    let t = repo_a.create_tenant_with_conf(None, o.clone()).await?;
    let cancel = CancellationToken::new();
    let uploaded = pageserver::remote::tenant_config::download_tenant_config(&storage, t, &cancel).await?;
    assert_eq!(uploaded, Some(o.clone()), "uploaded at creation");
    o.set_str("compaction_threshold", "4")?;
    o.set_str("pitr_interval", "0s")?;
    repo_a.set_tenant_config(t, o.clone()).await?;
    repo_a.shutdown(false).await;

    let repo_b = open(dir_b.path(), &storage).await?;
    let tenant = repo_b.attach_tenant(t, 2).await?;
    assert_eq!(tenant.conf.overrides(), o, "the latest settings came with the attach");
    assert_eq!(tenant.conf.effective().compaction_threshold, 4);
    assert_eq!(pageserver::tenant::config::load(&dir_b.path().join(format!("tenants/{t}")))?, o, "and are durable locally");
    repo_b.shutdown(false).await;
    Ok(())
}
