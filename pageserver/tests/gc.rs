//! GC against real PostgreSQL WAL: a table rewritten many times with small
//! layers and an image per flush; GC shrinks the physical size and every
//! page reads the same at `last_record_lsn`; a branch point survives GC far
//! past it; reads and branches below the cutoff are refused naming it; a
//! crash between the index write and the file deletion leaves leftovers
//! that the next start removes; under a steady workload that also writes
//! tables that are then left alone, the delta files kept stay bounded.
mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::ps::*;
use pageserver::storage::index;
use pageserver::tenant::repository::{RepoError, Repository};
use pageserver::tenant::timeline::{PageReconstructError, Timeline, TimelineConf};
use pg_harness::PgCluster;
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

fn small_gc(t: &mut TimelineConf) {
    t.checkpoint_distance = 256 << 10;
    t.image_creation_threshold = 1;
    t.pitr_interval = Duration::ZERO;
    t.gc_horizon_bytes = 64 << 10;
    t.gc_period = Duration::ZERO;
}

/// Create the table that the rounds rewrite; its relation.
async fn setup_table(pg: &PgCluster) -> anyhow::Result<RelFileNode> {
    pg.sql("CREATE TABLE churn (id int, v int); INSERT INTO churn SELECT g, 0 FROM generate_series(1, 4000) g;")?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('churn')")?.parse()?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    Ok(RelFileNode { spc_node: 1663, db_node: db, rel_node: node })
}

/// Rewrite the table `rounds` times, flushing after each; the last LSN.
async fn rewrite_rounds(tl: &Timeline, pg: &PgCluster, rounds: std::ops::Range<u32>) -> anyhow::Result<Lsn> {
    let mut lsn = tl.last_record_lsn();
    for i in rounds {
        pg.sql(&format!("UPDATE churn SET v = {i}; VACUUM churn;"))?;
        lsn = catch_up(tl, pg).await?;
        tl.freeze_and_flush().await?;
    }
    Ok(lsn)
}

async fn pages(tl: &Timeline, rel: RelFileNode, lsn: Lsn) -> anyhow::Result<Vec<Bytes>> {
    let mut out = Vec::new();
    for fork in [0u8, 2] {
        if !tl.get_rel_exists_at_lsn(rel, fork, lsn).await? {
            continue;
        }
        for blk in 0..tl.get_rel_size_at_lsn(rel, fork, lsn).await? {
            out.push(tl.get_rel_page_at_lsn(rel, fork, blk, lsn).await?);
        }
    }
    Ok(out)
}

fn files_in(tl: &Timeline) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&tl.path)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != index::INDEX_FILE)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_reclaims_space_keeps_branch_points_and_refuses_reads_below_the_cutoff() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), small_gc)).await?;
    let (mut pg, main) = imported_primary(&repo).await?;
    let rel = setup_table(&pg).await?;
    let x = rewrite_rounds(&main, &pg, 1..3).await?;
    let at_x = pages(&main, rel, x).await?;
    let branch = repo.branch_timeline(main.tenant_id, main.timeline_id, None, Some(x)).await?;
    assert_eq!(main.retain_lsns(), vec![x]);
    rewrite_rounds(&main, &pg, 3..12).await?;
    let ams = relation_ams(&pg)?;
    pg.checkpoint()?;
    let last = stop_and_catch_up(&main, &mut pg).await?;
    main.freeze_and_flush().await?;
    let before_bytes = main.physical_size_bytes();
    let before_layers = main.layers().len();
    let at_last = pages(&main, rel, last).await?;

    let gc = main.gc_now().await?;
    let after_bytes = main.physical_size_bytes();
    eprintln!(
        "GC: cutoff {} (last {last}, branch point {x}); {} of {before_layers} layers removed, {} bytes; \
         physical size {before_bytes} -> {after_bytes} bytes",
        gc.cutoff, gc.layers_removed, gc.bytes_removed
    );
    assert!(gc.layers_removed > 0, "{gc:?}");
    assert!(after_bytes < before_bytes, "physical size {before_bytes} -> {after_bytes}");
    assert_eq!(before_bytes - after_bytes, gc.bytes_removed);
    assert!(gc.cutoff > x, "GC went far past the branch point");
    assert_eq!(index::load(&main.path)?.gc_cutoff_lsn, gc.cutoff, "the index records the cutoff");
    assert_eq!(pages(&main, rel, last).await?, at_last, "pages at last_record_lsn are unchanged by GC");
    let cmp = compare_all_blocks(&main, pg.data_dir(), last, &ams).await?;
    assert!(cmp.mismatches.is_empty(), "{} mismatches:\n{}", cmp.mismatches.len(), cmp.mismatches.join("\n"));
    assert_eq!(pages(&branch, rel, x).await?, at_x, "the branch reads exactly the state at X after GC");

    // Below the cutoff: reads and new branches are refused, naming it.
    let err = main.get_rel_page_at_lsn(rel, 0, 0, x).await.unwrap_err();
    assert!(matches!(err, PageReconstructError::BelowGcCutoff { .. }), "{err}");
    assert!(err.to_string().contains(&gc.cutoff.to_string()), "{err}");
    let err = repo.branch_timeline(main.tenant_id, main.timeline_id, None, Some(x)).await.unwrap_err();
    assert!(matches!(err, RepoError::BelowGcCutoff { .. }), "{err}");
    assert!(err.to_string().contains(&gc.cutoff.to_string()), "{err}");

    // A second pass finds nothing more; a restart keeps cutoff and reads.
    assert_eq!(main.gc_now().await?.layers_removed, 0);
    let ids = (main.tenant_id, main.timeline_id, branch.timeline_id);
    drop((main, branch));
    repo.shutdown(false).await;
    drop(repo);
    let repo = Repository::open(conf(dir.path(), small_gc)).await?;
    let (main, branch) = (repo.get_timeline(ids.0, ids.1)?, repo.get_timeline(ids.0, ids.2)?);
    assert_eq!(main.gc_cutoff_lsn(), gc.cutoff);
    assert_eq!(main.retain_lsns(), vec![x], "branch points are known again after a restart");
    assert_eq!(pages(&main, rel, last).await?, at_last);
    assert_eq!(pages(&branch, rel, x).await?, at_x);
    repo.shutdown(false).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_gc_index_write_leaves_leftovers_removed_at_start() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), small_gc)).await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    let rel = setup_table(&pg).await?;
    rewrite_rounds(&tl, &pg, 1..8).await?;
    let last = stop_and_catch_up(&tl, &mut pg).await?;
    tl.freeze_and_flush().await?;
    let at_last = pages(&tl, rel, last).await?;
    let files_before = files_in(&tl);

    let gc = tl.gc_crash_before_deleting_files().await?;
    assert!(gc.layers_removed > 0, "{gc:?}");
    let named: Vec<String> = index::load(&tl.path)?.layers.into_iter().map(|l| l.name).collect();
    let leftovers: Vec<&String> = files_before.iter().filter(|f| !named.contains(f)).collect();
    assert_eq!(leftovers.len(), gc.layers_removed, "the index no longer names the removed layers");
    assert_eq!(files_in(&tl), files_before, "the 'crash' left the files on disk");
    assert!(named.iter().all(|n| tl.path.join(n).exists()), "the index names only existing files");

    let (ids, path) = ((tl.tenant_id, tl.timeline_id), tl.path.clone());
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);
    let repo: Arc<Repository> = Repository::open(conf(dir.path(), small_gc)).await?;
    let tl = repo.get_timeline(ids.0, ids.1)?;
    for f in &leftovers {
        assert!(!path.join(f).exists(), "leftover {f} removed at start");
    }
    assert_eq!(tl.gc_cutoff_lsn(), gc.cutoff);
    assert_eq!(pages(&tl, rel, last).await?, at_last, "all reads fine after the restart");
    repo.shutdown(false).await;
    Ok(())
}

/// A steady workload (one table updated every round) that now and then
/// also writes a table it then leaves alone (`rare_N`, and the catalogs
/// its creation touches). Those partitions never reach
/// `image_creation_threshold` deltas, so without more they would keep
/// every delta holding a few of their keys (an L0 spans the whole key
/// space) for ever: the deltas would grow by one every few rounds. With
/// the images GC asks for (`storage::gc::partitions_freeing_deltas`), a
/// round (flush, GC, image pass, GC, with `gc_horizon` 0) keeps at most
/// `image_creation_threshold - 1` delta files: those above the busy
/// table's newest image, which its next image frees. Every page still
/// reads back as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_kept_stay_bounded_when_some_partitions_stop_changing() -> anyhow::Result<()> {
    const THRESHOLD: usize = 3;
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |t| {
        small_gc(t);
        t.checkpoint_distance = 256 << 20; // flushes only when the test freezes
        t.image_creation_threshold = THRESHOLD;
        t.gc_horizon_bytes = 0;
        t.compaction_threshold = 1000; // L0 files only: the mechanism under test
        t.image_layer_keys = 8; // rare_N (9 blocks) is not packed with other tables
    }))
    .await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    let churn = setup_table(&pg).await?;
    catch_up(&tl, &pg).await?;
    tl.freeze_and_flush().await?;
    let mut rare = Vec::new();
    let mut kept = Vec::new();
    for round in 1..=9u32 {
        if round % 3 == 1 {
            pg.sql(&format!("CREATE TABLE rare_{round} AS SELECT g AS id, {round} AS v FROM generate_series(1, 2000) g;"))?;
            let node: u32 = pg.sql(&format!("SELECT pg_relation_filenode('rare_{round}')"))?.parse()?;
            rare.push(RelFileNode { rel_node: node, ..churn });
        }
        pg.sql(&format!("UPDATE churn SET v = {round}; VACUUM churn;"))?;
        catch_up(&tl, &pg).await?;
        tl.freeze_and_flush().await?;
        tl.gc_now().await?;
        tl.compact(false).await?;
        let gc = tl.gc_now().await?;
        let counts = tl.layer_kind_counts();
        eprintln!("round {round}: {counts:?}, GC removed {} layers", gc.layers_removed);
        kept.push(counts.l0_deltas + counts.l1_deltas);
    }
    eprintln!("delta files kept after each round: {kept:?}");
    for (round, &deltas) in kept.iter().enumerate().skip(THRESHOLD) {
        assert!(deltas < THRESHOLD, "round {}: {deltas} delta files kept (bound {}): {kept:?}", round + 1, THRESHOLD - 1);
    }
    // Nothing was lost: every table reads as PostgreSQL has it.
    let lsn = tl.last_record_lsn();
    for (i, rel) in rare.iter().enumerate() {
        let round = 3 * i + 1;
        let sum: u64 = pg.sql(&format!("SELECT sum(v) FROM rare_{round}"))?.parse()?;
        assert_eq!(sum, 2000 * round as u64);
        assert!(!pages(&tl, *rel, lsn).await?.is_empty(), "rare_{round} reads at {lsn}");
    }
    let ams = relation_ams(&pg)?;
    let last = stop_and_catch_up(&tl, &mut pg).await?;
    let cmp = compare_all_blocks(&tl, pg.data_dir(), last, &ams).await?;
    assert!(cmp.mismatches.is_empty() && cmp.blocks > 0, "{} blocks, mismatches: {:?}", cmp.blocks, cmp.mismatches);
    repo.shutdown(false).await;
    Ok(())
}
