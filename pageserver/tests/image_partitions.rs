//! Image layers per key partition, only where needed: flushes that touch
//! one table create image layers for that table's partitions (and touched
//! metadata partitions: SLRUs, control file, last commit) only, and every
//! page reads back the same at several LSNs before and after.
//! A table loaded in one flush gets its images at once, by weight.
mod common;

use std::collections::BTreeSet;

use common::ps::*;
use pageserver::storage::LayerDesc;
use pageserver::tenant::repository::Repository;
use pageserver::tenant::timeline::Timeline;
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

fn image_layers(tl: &Timeline) -> BTreeSet<String> {
    tl.layer_files().into_iter().filter(|(d, _)| d.is_image).map(|(d, _)| d.file_name()).collect()
}

/// The image layers of `tl` not in `before`.
fn new_image_layers(tl: &Timeline, before: &BTreeSet<String>) -> Vec<LayerDesc> {
    tl.layer_files().into_iter().map(|(d, _)| d).filter(|d| d.is_image && !before.contains(&d.file_name())).collect()
}

/// The relation of `table` and pg_class in database `postgres` of `pg`.
fn table_and_pg_class(pg: &pg_harness::PgCluster, table: &str) -> anyhow::Result<(RelFileNode, RelFileNode)> {
    let node: u32 = pg.sql(&format!("SELECT pg_relation_filenode('{table}')"))?.parse()?;
    let class_node: u32 = pg.sql("SELECT pg_relation_filenode('pg_class')")?.parse()?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let rel = RelFileNode { spc_node: 1663, db_node: db, rel_node: node };
    Ok((rel, RelFileNode { rel_node: class_node, ..rel }))
}

/// Every page of `rel` (main fork) and the first pages of pg_class at `lsn`.
async fn pages_at(tl: &Timeline, rel: RelFileNode, pg_class: RelFileNode, lsn: Lsn) -> anyhow::Result<Vec<bytes::Bytes>> {
    let mut pages = Vec::new();
    for blk in 0..tl.get_rel_size_at_lsn(rel, 0, lsn).await? {
        pages.push(tl.get_rel_page_at_lsn(rel, 0, blk, lsn).await?);
    }
    for blk in 0..tl.get_rel_size_at_lsn(pg_class, 0, lsn).await?.min(4) {
        pages.push(tl.get_rel_page_at_lsn(pg_class, 0, blk, lsn).await?);
    }
    Ok(pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_only_for_the_partitions_that_changed() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |t| t.image_creation_threshold = 3)).await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    pg.sql("CREATE TABLE only_me (id int, v int); INSERT INTO only_me SELECT g, 0 FROM generate_series(1, 3000) g;")?;
    let (rel, pg_class) = table_and_pg_class(&pg, "only_me")?;
    catch_up(&tl, &pg).await?;
    tl.freeze_and_flush().await?;
    let before = image_layers(&tl);

    let mut lsns = Vec::new();
    let mut expected = Vec::new();
    for i in 1..=4 {
        pg.sql(&format!("UPDATE only_me SET v = {i} WHERE id % 4 = {};", i % 4))?;
        let lsn = catch_up(&tl, &pg).await?;
        expected.push(pages_at(&tl, rel, pg_class, lsn).await?);
        lsns.push(lsn);
        tl.freeze_and_flush().await?;
    }
    let new = new_image_layers(&tl, &before);
    eprintln!("{} new image layers: {new:#?}", new.len());
    assert!(!new.is_empty(), "four flushes touching the table made images");
    // The table's partition holds its blocks (small relations share one).
    let table_key = pageserver::storage::key::rel_block_key(rel, 0, 0);
    let table_images = new.iter().filter(|d| d.key_range.contains(&table_key)).count();
    assert!(table_images >= 1, "an image of the table's partition");
    for d in &new {
        let allowed = d.key_range.start.field1 != 0 || d.key_range.contains(&table_key);
        assert!(allowed, "image layer {d} is for a partition the workload did not touch");
    }
    for (lsn, want) in lsns.iter().zip(&expected) {
        assert_eq!(&pages_at(&tl, rel, pg_class, *lsn).await?, want, "pages at {lsn} changed by image creation");
    }

    // Nothing changed: flushes create no images.
    let all = image_layers(&tl);
    tl.freeze_and_flush().await?;
    assert_eq!(image_layers(&tl), all, "an idle database gets no new images");
    stop_and_catch_up(&tl, &mut pg).await?;
    repo.shutdown(false).await;
    Ok(())
}

/// A table loaded in one flush (far fewer deltas than
/// `image_creation_threshold`) gets images for all its blocks at that
/// flush's image pass, because its delta values weigh more than
/// `image_creation_delta_percent` of its pages; with the percentage at 0 it
/// gets none. Its pages read the same either way, and a flush with nothing
/// new makes no further image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_loaded_in_one_flush_gets_images_by_weight() -> anyhow::Result<()> {
    for percent in [0, 50] {
        let dir = workdir();
        let repo = Repository::open(conf(dir.path(), |t| {
            t.image_creation_threshold = 3;
            t.image_creation_delta_percent = percent;
            t.image_layer_keys = 64;
        }))
        .await?;
        let (mut pg, tl) = imported_primary(&repo).await?;
        pg.sql("CREATE TABLE loaded (id int, v text); INSERT INTO loaded SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;")?;
        let (rel, pg_class) = table_and_pg_class(&pg, "loaded")?;
        let lsn = catch_up(&tl, &pg).await?;
        let want = pages_at(&tl, rel, pg_class, lsn).await?;
        let before = image_layers(&tl);
        tl.freeze_and_flush().await?;
        let new = new_image_layers(&tl, &before);
        let blocks = tl.get_rel_size_at_lsn(rel, 0, lsn).await?;
        assert!(blocks > 300, "the load made {blocks} blocks");
        let imaged = (0..blocks)
            .filter(|&b| {
                let key = pageserver::storage::key::rel_block_key(rel, 0, b);
                new.iter().any(|d| d.key_range.contains(&key) && d.lsn_range.start >= lsn)
            })
            .count() as u32;
        match percent {
            0 => assert_eq!(imaged, 0, "no image by weight with the percentage at 0: {new:#?}"),
            _ => assert_eq!(imaged, blocks, "every block of the loaded table is in a new image: {new:#?}"),
        }
        assert_eq!(pages_at(&tl, rel, pg_class, lsn).await?, want, "pages at {lsn} changed by the flush (percent {percent})");
        let all = image_layers(&tl);
        tl.freeze_and_flush().await?;
        assert_eq!(image_layers(&tl), all, "a flush with nothing new made images (percent {percent})");
        stop_and_catch_up(&tl, &mut pg).await?;
        repo.shutdown(false).await;
    }
    Ok(())
}
