//! End to end against real PostgreSQL 15: import a freshly initdb'd
//! cluster, stream its WAL as a primary through the walreceiver while a
//! workload runs, CHECKPOINT, then compare EVERY block of every relation
//! file in its data directory with GetPage@LSN (masked as in the redo
//! tests). Also after a restart mid-ingest with small layers (many delta
//! files, image layers created).
mod common;

use common::ps::*;
use pageserver::tenant::repository::Repository;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_matches_after_streaming_a_workload() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |t| t.checkpoint_distance = 16 << 20)).await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    pg.sql(&pg_harness::workload::varied_wal_sql(1))?;
    pgbench(&pg, 2, 300)?;
    let ams = relation_ams(&pg)?;
    pg.checkpoint()?;
    let lsn = stop_and_catch_up(&tl, &mut pg).await?;
    let (deltas, images, mem, bytes) = tl.layer_stats();
    eprintln!("ingested to {lsn}: {deltas} delta files, {images} image files, {mem} in-memory layers, {bytes} bytes");
    let cmp = compare_all_blocks(&tl, pg.data_dir(), lsn, &ams).await?;
    eprintln!(
        "compared {} blocks of {} relation files ({} zero tail blocks beyond the WAL-known size, \
         {} VM pages with bits not in WAL, {} sequence pages with pre-logged values); {} mismatches",
        cmp.blocks,
        cmp.relations,
        cmp.zero_tail_blocks,
        cmp.vm_bits_missing,
        cmp.sequence_prelogged,
        cmp.mismatches.len()
    );
    assert!(cmp.blocks > 8_000, "only {} blocks", cmp.blocks);
    assert!(cmp.mismatches.is_empty(), "{} mismatches:\n{}", cmp.mismatches.len(), cmp.mismatches.join("\n"));
    repo.shutdown(false).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_matches_after_restart_and_image_layers() -> anyhow::Result<()> {
    let dir = workdir();
    let small = |t: &mut pageserver::tenant::timeline::TimelineConf| {
        t.checkpoint_distance = 2 << 20;
        t.image_creation_threshold = 3;
        t.compaction_threshold = usize::MAX; // keep the many L0 files across the restart
    };
    let repo = Repository::open(conf(dir.path(), small)).await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    let (tenant, timeline) = (tl.tenant_id, tl.timeline_id);
    pgbench(&pg, 1, 200)?;
    let mid = catch_up(&tl, &pg).await?;
    tl.freeze_and_flush().await?;
    // More WAL that stays in memory only, then a "crash": no flush.
    pg.sql("CREATE TABLE lost_in_memory AS SELECT g AS x FROM generate_series(1, 5000) g;")?;
    catch_up(&tl, &pg).await?;
    let dcl = tl.disk_consistent_lsn();
    assert!(dcl >= mid, "disk_consistent_lsn {dcl} below the flushed {mid}");
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);

    let repo = Repository::open(conf(dir.path(), small)).await?;
    let tl = repo.get_timeline(tenant, timeline)?;
    assert_eq!(tl.last_record_lsn(), dcl, "ingest resumes from disk_consistent_lsn");
    stream_from(&tl, &pg).await;
    pg.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 0;")?;
    pgbench(&pg, 2, 100)?;
    let ams = relation_ams(&pg)?;
    pg.checkpoint()?;
    let lsn = stop_and_catch_up(&tl, &mut pg).await?;
    tl.freeze_and_flush().await?;
    tl.create_image_layers(tl.disk_consistent_lsn()).await?;
    let (deltas, images, _, _) = tl.layer_stats();
    eprintln!("after restart: {deltas} delta files, {images} image files");
    assert!(deltas >= 3 && images >= 1, "{deltas} delta files, {images} image files");
    let cmp = compare_all_blocks(&tl, pg.data_dir(), lsn, &ams).await?;
    eprintln!("compared {} blocks; {} mismatches", cmp.blocks, cmp.mismatches.len());
    assert!(cmp.blocks > 5_000, "only {} blocks", cmp.blocks);
    assert!(cmp.mismatches.is_empty(), "{} mismatches:\n{}", cmp.mismatches.len(), cmp.mismatches.join("\n"));
    repo.shutdown(false).await;
    Ok(())
}
