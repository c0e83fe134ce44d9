//! GetPage@LSN latency with about 10 layers against about 2,000 (prints,
//! no harness): the same reads of the same timeline, through
//! `Timeline::get_rel_page_at_lsn` (layer map search, layer file index
//! reads through the block cache, value reads, WAL redo where needed).
//!
//! 1. A stock PostgreSQL 15 primary is imported, a table of 20,000 rows is
//!    written and rewritten in a few flushed rounds, with image layers at
//!    the start: about 10 layer files — the baseline, measured first.
//! 2. The repository is closed, its work directory copied, and some 2,000
//!    more layer files are written into the copy's timeline and named by
//!    its index: half are older history of
//!    the same table (delta files below the import LSN, which every lookup
//!    of the table's keys has under it in its key segment), half are delta
//!    and image files of other key ranges interleaved in LSN with the real
//!    history (which cut the key space into many segments). Both work
//!    directories are opened; the same reads are timed on both, pass by
//!    pass alternately (the load of the machine weighs on both alike), and
//!    must return the same pages.
//!
//! Two read sets, each timed in several passes over every block: pages
//! read at the image LSN (no redo) and pages read at the end (the image
//! plus a few WAL records, redone). Prints p50/p99 for each with both
//! layer counts and the ratio (the goal is 2,000 layers within 1.5× of 10).
//! `STRATA_BENCH_PASSES` (default 5) sets the passes.
#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ps::*;
use pageserver::storage::index::{self, IndexLayer};
use pageserver::storage::key::{rel_block_key, Key};
use pageserver::storage::file::LayerFileWriter;
use pageserver::storage::value::Value;
use pageserver::storage::LayerDesc;
use pageserver::tenant::repository::Repository;
use pageserver::tenant::timeline::{Timeline, TimelineConf};
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

const EXTRA_LAYERS: usize = 1990;

fn quiet(t: &mut TimelineConf) {
    t.checkpoint_distance = 64 << 20;
    t.compaction_threshold = 100_000;
    t.compaction_period = Duration::ZERO;
    t.image_creation_threshold = 100_000;
    t.image_creation_delta_percent = 0;
    t.gc_period = Duration::ZERO;
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Every block of `rel` at `lsn`.
async fn read_all(tl: &Timeline, rel: RelFileNode, lsn: Lsn) -> anyhow::Result<Vec<Bytes>> {
    let mut pages = Vec::new();
    for blk in 0..tl.get_rel_size_at_lsn(rel, 0, lsn).await? {
        pages.push(tl.get_rel_page_at_lsn(rel, 0, blk, lsn).await?);
    }
    Ok(pages)
}

/// One timed pass over every block at `lsn`, checked against `expected`.
async fn timed_pass(tl: &Timeline, rel: RelFileNode, lsn: Lsn, expected: &[Bytes], lat: &mut Vec<Duration>) -> anyhow::Result<()> {
    for (blk, want) in expected.iter().enumerate() {
        let s = Instant::now();
        let page = tl.get_rel_page_at_lsn(rel, 0, blk as u32, lsn).await?;
        lat.push(s.elapsed());
        anyhow::ensure!(page == *want, "block {blk} at {lsn} differs with {} layers", tl.layers().len());
    }
    Ok(())
}

/// (p50, p99) in µs.
fn p50_p99(mut lat: Vec<Duration>) -> (f64, f64) {
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

struct Figures {
    layers: usize,
    image: (f64, f64),
    redo: (f64, f64),
}

/// Time `passes` passes over both read sets on both timelines, alternating
/// between them so that the machine's load weighs on both alike.
async fn measure_both(
    tls: [&Timeline; 2],
    rel: RelFileNode,
    lsns: (Lsn, Lsn),
    expected: (&[Bytes], &[Bytes]),
    passes: usize,
) -> anyhow::Result<[Figures; 2]> {
    let mut lat: [[Vec<Duration>; 2]; 2] = Default::default();
    for _ in 0..passes {
        for (i, tl) in tls.iter().enumerate() {
            timed_pass(tl, rel, lsns.0, expected.0, &mut lat[i][0]).await?;
            timed_pass(tl, rel, lsns.1, expected.1, &mut lat[i][1]).await?;
        }
    }
    let [[a_img, a_redo], [b_img, b_redo]] = lat;
    Ok([
        Figures { layers: tls[0].layers().len(), image: p50_p99(a_img), redo: p50_p99(a_redo) },
        Figures { layers: tls[1].layers().len(), image: p50_p99(b_img), redo: p50_p99(b_redo) },
    ])
}

/// Write one synthetic layer file into `dir` holding `values` (sorted).
fn write_layer(dir: &std::path::Path, desc: LayerDesc, values: &[(Key, Lsn, Value)]) -> anyhow::Result<IndexLayer> {
    let mut w = LayerFileWriter::new(dir, desc.clone())?;
    for (k, l, v) in values {
        w.put(*k, *l, v)?;
    }
    let file = w.finish()?;
    Ok(IndexLayer::new(desc.file_name(), &desc, file.size_bytes))
}

/// Add [`EXTRA_LAYERS`] layer files to the (closed) timeline in `dir` (see
/// the module documentation). `page`: a real page used as content.
fn add_layers(dir: &std::path::Path, rel: RelFileNode, history: (Lsn, Lsn), import_lsn: Lsn, page: Bytes) -> anyhow::Result<()> {
    let mut idx = index::load(dir)?;
    let generation = idx.generation;
    let table = rel_block_key(rel, 0, 0)..rel_block_key(rel, 0, u32::MAX - 1);
    let old_count = EXTRA_LAYERS / 2;
    // Older history of the table, below the import LSN: 0x100 LSNs each.
    let step = (import_lsn.0 - 0x1000) / old_count as u64;
    anyhow::ensure!(step >= 4, "no room below the import LSN {import_lsn}");
    for i in 0..old_count as u64 {
        let lsns = Lsn(0x1000 + i * step)..Lsn(0x1000 + (i + 1) * step);
        let desc = LayerDesc { key_range: table.clone(), lsn_range: lsns.clone(), is_image: false, generation };
        let values: Vec<_> = (0..4u32).map(|b| (rel_block_key(rel, 0, b * 7), lsns.start, Value::Image(page.clone()))).collect();
        idx.layers.push(write_layer(dir, desc, &values)?);
    }
    // Other key ranges, interleaved with the real history.
    let other = EXTRA_LAYERS - old_count;
    let span = (history.1 .0 - history.0 .0).max(other as u64 * 2);
    for i in 0..other as u64 {
        let fake = RelFileNode { rel_node: 3_000_000_000 + i as u32, ..rel };
        let keys = rel_block_key(fake, 0, 0)..rel_block_key(fake, 0, 8);
        let at = Lsn(history.0 .0 + i * span / other as u64);
        let is_image = i % 4 == 0;
        let lsns = if is_image { at..at + 1 } else { at..at + (span / other as u64).max(1) };
        let desc = LayerDesc { key_range: keys, lsn_range: lsns, is_image, generation };
        let values: Vec<_> = (0..8u32).map(|b| (rel_block_key(fake, 0, b), at, Value::Image(page.clone()))).collect();
        idx.layers.push(write_layer(dir, desc, &values)?);
    }
    index::save(dir, &idx)?;
    Ok(())
}

fn print(f: &Figures) {
    println!(
        "{:>7} layers: GetPage@LSN from images p50 {:>6.1} us p99 {:>7.1} us; with redo p50 {:>7.1} us p99 {:>7.1} us",
        f.layers, f.image.0, f.image.1, f.redo.0, f.redo.1
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let passes: usize = std::env::var("STRATA_BENCH_PASSES").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), quiet)).await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    let import_lsn = tl.disk_consistent_lsn();
    pg.sql("CREATE TABLE t (id int, v int, pad text) WITH (fillfactor = 50); \
            INSERT INTO t SELECT g, 0, repeat('x', 100) FROM generate_series(1, 20000) g;")?;
    catch_up(&tl, &pg).await?;
    tl.freeze_and_flush().await?;
    let image_lsn = tl.disk_consistent_lsn();
    tl.create_image_layers(image_lsn).await?;
    let rows_per_page: u32 = pg.sql("SELECT count(*) FROM t WHERE (ctid::text::point)[0] = 0")?.parse()?;
    for round in 0..4 {
        // One row per page per round: a few records per page to redo.
        pg.sql(&format!("UPDATE t SET v = v + 1 WHERE id % {rows_per_page} = {round};"))?;
        catch_up(&tl, &pg).await?;
        tl.freeze_and_flush().await?;
    }
    let end_lsn = tl.disk_consistent_lsn();
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('t')")?.parse()?;
    let rel = RelFileNode { spc_node: 1663, db_node: db, rel_node: node };
    stop_and_catch_up(&tl, &mut pg).await?;
    let (tenant, timeline, tl_dir) = (tl.tenant_id, tl.timeline_id, tl.path.clone());

    let expected_image = read_all(&tl, rel, image_lsn).await?;
    let expected_redo = read_all(&tl, rel, end_lsn).await?;
    let page = expected_image[0].clone();
    drop(tl);
    repo.shutdown(false).await;

    // A copy of the work directory gets the extra layers; both are opened.
    let many_dir = workdir();
    let copied = std::process::Command::new("cp").arg("-a").arg(dir.path().join("tenants")).arg(many_dir.path()).status()?;
    anyhow::ensure!(copied.success(), "copy the work directory");
    let many_tl_dir = many_dir.path().join(tl_dir.strip_prefix(dir.path())?);
    let t0 = Instant::now();
    add_layers(&many_tl_dir, rel, (image_lsn, end_lsn), import_lsn, page)?;
    println!("(wrote {EXTRA_LAYERS} more layer files in {:.1} s)", t0.elapsed().as_secs_f64());
    let repo = Repository::open(conf(dir.path(), quiet)).await?;
    let repo_many = Repository::open(conf(many_dir.path(), quiet)).await?;
    let (tl, tl_many): (Arc<Timeline>, Arc<Timeline>) = (repo.get_timeline(tenant, timeline)?, repo_many.get_timeline(tenant, timeline)?);
    println!("GetPage@LSN by layer count: {passes} timed passes over every block of a 20,000-row table at two LSNs, after a warm-up pass, alternating between the timelines");
    for t in [&tl, &tl_many] {
        anyhow::ensure!(read_all(t, rel, image_lsn).await? == expected_image && read_all(t, rel, end_lsn).await? == expected_redo, "pages differ");
    }
    let [few, many] = measure_both([&tl, &tl_many], rel, (image_lsn, end_lsn), (&expected_image, &expected_redo), passes).await?;
    print(&few);
    print(&many);
    println!(
        "getpage_layers figures: {} vs {} layers: p50 x{:.2} / p99 x{:.2} from images, p50 x{:.2} / p99 x{:.2} with redo (goal <= 1.5x)",
        many.layers,
        few.layers,
        many.image.0 / few.image.0,
        many.image.1 / few.image.1,
        many.redo.0 / few.redo.0,
        many.redo.1 / few.redo.1
    );
    drop((tl, tl_many));
    repo.shutdown(false).await;
    repo_many.shutdown(false).await;
    pg.stop()?;
    Ok(())
}
