//! Issue 14, ingest backpressure: with a tiny `checkpoint_distance` and the
//! flushes held back (test hook), the walreceiver stops taking WAL once
//! `MAX_FROZEN_LAYERS` frozen layers wait, instead of piling them up in
//! memory (the in-memory layers' bytes stay within a few
//! `checkpoint_distance`s); the wait is counted in the backpressure metric; once flushes
//! run again ingest catches up and every block matches the primary.
mod common;

use common::ps::*;
use pageserver::metrics::{IN_MEMORY_LAYERS, IN_MEMORY_LAYER_BYTES, INGEST_BACKPRESSURE_SECONDS, INGEST_BACKPRESSURE_WAITS, LAYER_FLUSH_TIME};
use pageserver::tenant::repository::Repository;
use pageserver::tenant::timeline::MAX_FROZEN_LAYERS;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_layers_stay_bounded_while_flushes_are_held_back() -> anyhow::Result<()> {
    let dir = workdir();
    const CHECKPOINT_DISTANCE_BYTES: usize = 128 << 10;
    let repo = Repository::open(conf(dir.path(), |t| t.checkpoint_distance = CHECKPOINT_DISTANCE_BYTES)).await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    catch_up(&tl, &pg).await?;
    tl.pause_flushes_for_tests(true);
    let waits_before = INGEST_BACKPRESSURE_WAITS.get();
    let flushes_before = LAYER_FLUSH_TIME.get_sample_count();
    // About 20 MB of WAL: more than a hundred layers' worth.
    pg.sql("CREATE TABLE bp AS SELECT g, repeat(md5(g::text), 16) AS pad FROM generate_series(1, 30000) g;")?;
    let target = pg.current_wal_insert_lsn()?;

    // Wait (bounded) until the walreceiver is held back.
    let started = Instant::now();
    while INGEST_BACKPRESSURE_WAITS.get() == waits_before {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "ingest never waited; at {}", tl.last_record_lsn());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stalled = tl.last_record_lsn();
    assert!(stalled < target, "ingest is held back at {stalled}, below {target}");
    assert!(tl.flush_backlog_full());
    let (_, _, in_memory, _) = tl.layer_stats();
    assert!(in_memory <= MAX_FROZEN_LAYERS + 1, "{in_memory} in-memory layers");
    assert_eq!(tl.frozen_layers_high_water(), MAX_FROZEN_LAYERS);
    // The memory they hold (all the process's in-memory layers: this is the
    // only timeline) is bounded by the setting: each layer is frozen at
    // `checkpoint_distance` bytes, overshooting by at most one batch of WAL.
    let in_memory_bytes = IN_MEMORY_LAYER_BYTES.get() as usize;
    let bound_bytes = (MAX_FROZEN_LAYERS + 1) * (CHECKPOINT_DISTANCE_BYTES + (256 << 10));
    assert!(in_memory_bytes > 0 && in_memory_bytes <= bound_bytes, "{in_memory_bytes} bytes in memory, bound {bound_bytes}");
    assert!(IN_MEMORY_LAYERS.get() as usize <= MAX_FROZEN_LAYERS + 1, "{} in-memory layers alive", IN_MEMORY_LAYERS.get());

    tl.pause_flushes_for_tests(false);
    pg.sql("INSERT INTO bp SELECT g, 'after' FROM generate_series(1, 1000) g;")?;
    let ams = relation_ams(&pg)?;
    pg.checkpoint()?;
    let lsn = stop_and_catch_up(&tl, &mut pg).await?;
    assert!(lsn > target);
    assert!(
        tl.frozen_layers_high_water() <= MAX_FROZEN_LAYERS,
        "{} frozen layers at once",
        tl.frozen_layers_high_water()
    );
    assert!(INGEST_BACKPRESSURE_SECONDS.get() > 0.0);
    // Each small layer was flushed on its own (compaction, running beside
    // the flushes, may have merged any number of them since).
    let flushes = LAYER_FLUSH_TIME.get_sample_count() - flushes_before;
    assert!(flushes > 20, "{flushes} flushes: the small layers were not flushed one by one");
    let cmp = compare_all_blocks(&tl, pg.data_dir(), lsn, &ams).await?;
    assert!(cmp.mismatches.is_empty(), "{} mismatches:\n{}", cmp.mismatches.len(), cmp.mismatches.join("\n"));
    repo.shutdown(false).await;
    Ok(())
}
