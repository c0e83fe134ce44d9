//! L0 → L1 compaction against real PostgreSQL WAL: with a low threshold
//! and a small target size, flushes' L0 files are merged into several L1
//! files by key range; every block matches the data directory, pages at an
//! earlier LSN read the same as before the merge, and after a restart.
mod common;

use common::ps::*;
use pageserver::storage::compaction::is_level0;
use pageserver::tenant::repository::Repository;
use pageserver::tenant::timeline::{Timeline, TimelineConf};
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

fn small(t: &mut TimelineConf) {
    t.checkpoint_distance = 512 << 10;
    t.compaction_threshold = 4;
    t.compaction_target_size_bytes = 256 << 10;
}

fn level_counts(tl: &Timeline) -> (usize, usize) {
    let files = tl.layer_files();
    let l0 = files.iter().filter(|(d, _)| is_level0(d)).count();
    let l1 = files.iter().filter(|(d, _)| !d.is_image && !is_level0(d)).count();
    (l0, l1)
}

async fn pages(tl: &Timeline, rel: RelFileNode, lsn: Lsn) -> anyhow::Result<Vec<bytes::Bytes>> {
    let mut out = Vec::new();
    for blk in 0..tl.get_rel_size_at_lsn(rel, 0, lsn).await? {
        out.push(tl.get_rel_page_at_lsn(rel, 0, blk, lsn).await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l0_files_merge_into_l1_files_and_every_block_matches() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), small)).await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    pg.sql("CREATE TABLE c (id int, v text); INSERT INTO c SELECT g, 'zero' FROM generate_series(1, 20000) g;")?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('c')")?.parse()?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let rel = RelFileNode { spc_node: 1663, db_node: db, rel_node: node };
    let early = catch_up(&tl, &pg).await?;
    let at_early = pages(&tl, rel, early).await?;
    for i in 0..4 {
        pg.sql(&format!("UPDATE c SET v = 'round {i}' WHERE id % 3 = {};", i % 3))?;
        catch_up(&tl, &pg).await?;
        tl.freeze_and_flush().await?;
    }
    pgbench(&pg, 1, 100)?;
    let ams = relation_ams(&pg)?;
    pg.checkpoint()?;
    let last = stop_and_catch_up(&tl, &mut pg).await?;
    tl.freeze_and_flush().await?;
    let (l0, l1) = level_counts(&tl);
    eprintln!("after the workload: {l0} L0 files, {l1} L1 files, {} bytes", tl.physical_size_bytes());
    assert!(l1 >= 2, "several L1 files by key range ({l1})");
    assert!(l0 < 4, "L0 files were merged ({l0} left)");
    assert_eq!(pages(&tl, rel, early).await?, at_early, "an earlier LSN reads the same after the merge");
    let cmp = compare_all_blocks(&tl, pg.data_dir(), last, &ams).await?;
    assert!(cmp.blocks > 1_000, "only {} blocks", cmp.blocks);
    assert!(cmp.mismatches.is_empty(), "{} mismatches:\n{}", cmp.mismatches.len(), cmp.mismatches.join("\n"));

    let ids = (tl.tenant_id, tl.timeline_id);
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);
    let repo = Repository::open(conf(dir.path(), small)).await?;
    let tl = repo.get_timeline(ids.0, ids.1)?;
    assert_eq!(pages(&tl, rel, early).await?, at_early, "after a restart");
    let cmp = compare_all_blocks(&tl, pg.data_dir(), last, &ams).await?;
    assert!(cmp.mismatches.is_empty(), "{} mismatches after restart", cmp.mismatches.len());
    repo.shutdown(false).await;
    Ok(())
}
