//! The fast read path against real PostgreSQL 15 WAL (issue 16):
//!
//! * the relation-size cache is never stale: a page read, changed by WAL,
//!   read again; relation sizes after extension, truncation (VACUUM),
//!   DROP TABLE and DROP DATABASE, read before and after each change, at
//!   the old and the new LSN, on the timeline and on a branch;
//! * vectored reads equal per-key reads for every block of every relation
//!   at several LSNs (in-memory layers only; after a flush; after image
//!   layers; on a branch), with WAL redo in between.
mod common;

use common::ps::*;
use pageserver::metrics;
use pageserver::storage::key::rel_block_key;
use pageserver::tenant::repository::Repository;
use pageserver::tenant::timeline::Timeline;
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

fn rel_of(pg: &pg_harness::PgCluster, db: &str, table: &str) -> anyhow::Result<RelFileNode> {
    let db_node: u32 = pg.sql(&format!("SELECT oid FROM pg_database WHERE datname = '{db}'"))?.parse()?;
    let out = std::process::Command::new(pg_harness::pg_bin("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "postgres", "-d", db, "-c"])
        .arg(format!("SELECT pg_relation_filenode('{table}')"))
        .output()?;
    anyhow::ensure!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    let rel_node = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(RelFileNode { spc_node: 1663, db_node, rel_node })
}

fn psql_db(pg: &pg_harness::PgCluster, db: &str, sql: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new(pg_harness::pg_bin("psql"))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "postgres", "-d", db, "-c", sql])
        .output()?;
    anyhow::ensure!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

async fn size(tl: &Timeline, rel: RelFileNode, lsn: Lsn) -> anyhow::Result<Option<u32>> {
    if !tl.get_rel_exists_at_lsn(rel, 0, lsn).await? {
        return Ok(None);
    }
    Ok(Some(tl.get_rel_size_at_lsn(rel, 0, lsn).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relation_size_cache_is_never_stale() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |_| {})).await?;
    let (pg, tl) = imported_primary(&repo).await?;
    pg.sql("CREATE TABLE t (id int, v text) WITH (fillfactor = 50); INSERT INTO t SELECT g, 'a' FROM generate_series(1, 100) g;")?;
    let rel = rel_of(&pg, "postgres", "t")?;
    let l1 = catch_up(&tl, &pg).await?;
    let hits0 = metrics::REL_SIZE_CACHE_HITS.get();
    let n1 = size(&tl, rel, l1).await?.expect("t exists");
    let page1 = tl.get_rel_page_at_lsn(rel, 0, 0, l1).await?;
    assert_eq!(size(&tl, rel, l1).await?, Some(n1));
    assert!(metrics::REL_SIZE_CACHE_HITS.get() > hits0, "the cache answered the repeated lookups");

    // A page changed by WAL: the new LSN sees the change, the old one not.
    pg.sql("UPDATE t SET v = 'changed-by-wal' WHERE id = 1;")?;
    let l2 = catch_up(&tl, &pg).await?;
    let page2 = tl.get_rel_page_at_lsn(rel, 0, 0, l2).await?;
    assert_ne!(page1, page2, "page 0 at {l2} must show the update");
    assert!(page2.windows(14).any(|w| w == b"changed-by-wal"));
    assert_eq!(tl.get_rel_page_at_lsn(rel, 0, 0, l1).await?, page1, "page 0 at {l1} unchanged");

    // Extension.
    pg.sql("INSERT INTO t SELECT g, repeat('b', 500) FROM generate_series(1, 3000) g;")?;
    let l3 = catch_up(&tl, &pg).await?;
    let n3 = size(&tl, rel, l3).await?.expect("t exists");
    assert!(n3 > n1, "extended: {n3} blocks at {l3}, {n1} at {l1}");
    assert_eq!(size(&tl, rel, l1).await?, Some(n1), "the old LSN keeps the old size");
    let want: i64 = pg.sql("SELECT pg_relation_size('t') / 8192")?.parse()?;
    assert_eq!(n3 as i64, want, "size as the primary has it");

    // Truncation: VACUUM cuts the empty tail.
    pg.sql("DELETE FROM t WHERE id > 10; VACUUM t;")?;
    let l4 = catch_up(&tl, &pg).await?;
    let n4 = size(&tl, rel, l4).await?.expect("t exists");
    let want: i64 = pg.sql("SELECT pg_relation_size('t') / 8192")?.parse()?;
    assert!(n4 < n3, "truncated: {n4} blocks at {l4}, {n3} at {l3}");
    assert_eq!(n4 as i64, want);
    assert_eq!(size(&tl, rel, l3).await?, Some(n3));
    let beyond = tl.get_rel_page_at_lsn(rel, 0, n4, l4).await;
    assert!(beyond.is_err(), "block {n4} is beyond the end at {l4}");
    assert!(tl.get_rel_page_at_lsn(rel, 0, n4, l3).await.is_ok(), "but not at {l3}");

    // A branch at l4 sees l4's size; its own extension does not leak back.
    let branch = repo.branch_timeline(tl.tenant_id, tl.timeline_id, None, Some(l4)).await?;
    assert_eq!(size(&branch, rel, l4).await?, Some(n4));

    // DROP TABLE.
    pg.sql("DROP TABLE t;")?;
    let l5 = catch_up(&tl, &pg).await?;
    assert_eq!(size(&tl, rel, l5).await?, None, "dropped at {l5}");
    assert_eq!(size(&tl, rel, l4).await?, Some(n4), "still there at {l4}");
    assert_eq!(size(&branch, rel, l4).await?, Some(n4), "the branch keeps it");

    // DROP DATABASE (no per-relation records).
    pg.sql("CREATE DATABASE other;")?;
    psql_db(&pg, "other", "CREATE TABLE u AS SELECT g FROM generate_series(1, 10000) g;")?;
    let urel = rel_of(&pg, "other", "u")?;
    let l6 = catch_up(&tl, &pg).await?;
    let nu = size(&tl, urel, l6).await?.expect("u exists");
    assert!(nu > 0);
    pg.sql("DROP DATABASE other;")?;
    let l7 = catch_up(&tl, &pg).await?;
    assert_eq!(size(&tl, urel, l7).await?, None, "database dropped at {l7}");
    assert_eq!(size(&tl, urel, l6).await?, Some(nu));
    repo.shutdown(false).await;
    Ok(())
}

/// Every block of every main fork of the `postgres` database at `lsn`: one
/// vectored read per relation equals the per-key reads, and so does the
/// read split into parts read at once.
async fn vectored_equals_per_key(tl: &Timeline, db: u32, lsn: Lsn) -> anyhow::Result<usize> {
    let mut blocks = 0;
    for (rel_node, fork) in tl.list_rels(1663, db, lsn).await? {
        let rel = RelFileNode { spc_node: 1663, db_node: db, rel_node };
        let n = tl.rel_size(rel, fork, lsn).await?;
        let keys: Vec<_> = (0..n).map(|b| rel_block_key(rel, fork, b)).collect();
        let vectored = tl.get_vectored(&keys, lsn).await;
        assert_eq!(vectored.len(), keys.len());
        let vectored: Vec<Option<bytes::Bytes>> = vectored.into_iter().collect::<Result<_, _>>()?;
        // Split into parts read at once (uneven parts, and more parts
        // asked for than the minimum part size allows): the same values.
        for parallelism in [3, 64] {
            let split: Vec<Option<bytes::Bytes>> =
                tl.get_vectored_parallel(&keys, lsn, parallelism).await.into_iter().collect::<Result<_, _>>()?;
            assert!(split == vectored, "{rel} fork {fork} at {lsn}: the read split {parallelism} ways differs");
        }
        for (key, v) in keys.iter().zip(vectored) {
            let single = match tl.get(*key, lsn).await {
                Ok(p) => Some(p),
                Err(pageserver::tenant::timeline::PageReconstructError::MissingKey { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            assert_eq!(v, single, "{key} at {lsn}");
            blocks += 1;
        }
        // And as a batch of pages (the page service path), in a shuffled order.
        let mut refs: Vec<_> = (0..n).map(|b| (rel, fork, b)).collect();
        refs.reverse();
        for (r, page) in refs.iter().zip(tl.get_rel_pages_at_lsn(&refs, lsn, 8).await) {
            assert_eq!(page?, tl.get_rel_page_at_lsn(r.0, r.1, r.2, lsn).await?, "{r:?} at {lsn}");
        }
    }
    Ok(blocks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectored_reads_equal_per_key_reads() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |t| t.checkpoint_distance = 1 << 20)).await?;
    let (pg, tl) = imported_primary(&repo).await?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    pgbench(&pg, 1, 100)?;
    let mut lsns = vec![catch_up(&tl, &pg).await?];
    tl.freeze_and_flush().await?;
    pg.sql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 50 = 0;")?;
    lsns.push(catch_up(&tl, &pg).await?);
    tl.freeze_and_flush().await?;
    tl.create_image_layers(tl.disk_consistent_lsn()).await?;
    pg.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 30 = 0;")?;
    pgbench(&pg, 1, 100)?;
    lsns.push(catch_up(&tl, &pg).await?);
    let (deltas, images, mem, _) = tl.layer_stats();
    eprintln!("{deltas} delta files, {images} image files, {mem} in-memory layers; LSNs {lsns:?}");
    assert!(deltas >= 2 && images >= 1, "{deltas} deltas, {images} images");
    let redo_before = metrics::RECONSTRUCT_RECORDS.get_sample_count();
    for &lsn in &lsns {
        let blocks = vectored_equals_per_key(&tl, db, lsn).await?;
        eprintln!("{blocks} blocks equal at {lsn}");
        assert!(blocks > 1_000, "{blocks} blocks at {lsn}");
    }
    assert!(metrics::RECONSTRUCT_RECORDS.get_sample_count() > redo_before, "some pages needed WAL redo");
    // Every block was read several times (per key, vectored, split, as a
    // batch): the value block cache served most of it, within its budget.
    let cache = pageserver::storage::block_cache::values();
    let (hits, misses) = (metrics::VALUE_CACHE_HITS.get(), metrics::VALUE_CACHE_MISSES.get());
    eprintln!("value cache: {hits} hits, {misses} misses, {} bytes", cache.bytes());
    assert!(hits > misses && misses > 0, "value cache: {hits} hits, {misses} misses");
    assert!(cache.bytes() > 0 && cache.bytes() <= cache.budget_bytes());
    // A block just read is a hit the second time.
    let accounts = rel_of(&pg, "postgres", "pgbench_accounts")?;
    let refs: Vec<_> = (0..32).map(|b| (accounts, 0u8, b)).collect();
    let first: Vec<_> = tl.get_rel_pages_at_lsn(&refs, lsns[2], 1).await.into_iter().collect::<Result<_, _>>()?;
    let hits = metrics::VALUE_CACHE_HITS.get();
    let again: Vec<_> = tl.get_rel_pages_at_lsn(&refs, lsns[2], 1).await.into_iter().collect::<Result<_, _>>()?;
    assert_eq!(first, again);
    assert!(metrics::VALUE_CACHE_HITS.get() > hits, "the second read of the same blocks hit the cache");
    let branch = repo.branch_timeline(tl.tenant_id, tl.timeline_id, None, Some(lsns[1])).await?;
    let blocks = vectored_equals_per_key(&branch, db, lsns[1]).await?;
    assert!(blocks > 1_000, "{blocks} blocks on the branch");
    repo.shutdown(false).await;
    Ok(())
}
