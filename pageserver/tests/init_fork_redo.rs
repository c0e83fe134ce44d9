//! Init-fork pages of unlogged relations are rebuilt by WAL redo.
//!
//! Found by PostgreSQL's regression suite on a Strata endpoint: redo of a
//! block in INIT_FORKNUM flushes the buffer at once, which in a redo process
//! (that generates no WAL) failed with "xlog flush request ... is not
//! satisfied". The extension now redoes init-fork blocks in the main fork.

mod common;

use common::mask::{mask_page, Am};
use common::{block_histories, read_data_page, read_wal};
use pg_harness::workload::KEEP_ALL_WAL;
use pg_harness::PgCluster;
use utils::lsn::Lsn;

const INIT_FORK: u8 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlogged_index_init_fork_pages_are_rebuilt() -> anyhow::Result<()> {
    let (manager, _work) = common::manager(1, |_| {});
    let mut pg = PgCluster::start(KEEP_ALL_WAL)?;
    pg.checkpoint()?;
    let start: Lsn = pg.sql("SELECT redo_lsn FROM pg_control_checkpoint()")?.parse()?;
    // Hash indexes log their init fork with records that need redo
    // (XLOG_HASH_INIT_META_PAGE, XLOG_HASH_INIT_BITMAP_PAGE), not only images.
    pg.sql("CREATE UNLOGGED TABLE u(id int, v text); CREATE INDEX u_hash ON u USING hash (id); INSERT INTO u SELECT g, 'x' FROM generate_series(1, 100) g")?;
    pg.checkpoint()?;
    pg.stop()?;

    let histories = block_histories(&read_wal(&pg.wal_dir(), start)?);
    let mut rebuilt_blocks = 0;
    for (key, history) in histories.iter().filter(|(k, h)| k.1 == INIT_FORK && !h.records.is_empty()) {
        let last = history.records.last().map(|r| r.0).unwrap_or_default();
        let page = manager.request_redo(*key, last, history.base.clone(), history.records.clone()).await?;
        let mut on_disk = read_data_page(pg.data_dir(), key)?.expect("init fork page on disk");
        let mut ours = page.to_vec();
        mask_page(Am::Hash, &mut ours);
        mask_page(Am::Hash, &mut on_disk);
        assert!(ours == on_disk, "init fork block {key:?} differs from the data file");
        rebuilt_blocks += 1;
    }
    assert!(rebuilt_blocks >= 2, "only {rebuilt_blocks} init-fork blocks needed redo");
    manager.shutdown().await;
    Ok(())
}
