//! Fidelity of WAL redo against real PostgreSQL 15: run a workload, stop the
//! cluster, then rebuild a sample of blocks from their last full-page image
//! (or initialising record) plus every later record touching them, and
//! compare with the pages in the data files under the masks that
//! `wal_consistency_checking` uses (see `common/mask.rs`).
mod common;

use std::collections::{BTreeMap, HashMap};

use common::mask::{diff_ranges, mask_page, Am};
use common::{block_histories, read_data_page, read_wal, BlockKey, History};
use pg_harness::workload::KEEP_ALL_WAL;
use pg_harness::PgCluster;
use utils::lsn::Lsn;

const PER_GROUP: usize = 60;

const WORKLOAD: &str = r#"
CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric, note text) WITH (fillfactor = 70);
INSERT INTO acct SELECT g, 'owner' || (g % 97), g * 1.5, repeat('n', g % 50) FROM generate_series(1, 6000) g;
CREATE INDEX acct_owner ON acct (owner);
UPDATE acct SET balance = balance + 1 WHERE id % 4 = 0;
UPDATE acct SET owner = owner || '*' WHERE id % 9 = 0;
DELETE FROM acct WHERE id % 13 = 0;
CREATE SEQUENCE ev_seq;
CREATE TABLE events (id bigint, kind int, payload text, tags int[], at point);
INSERT INTO events SELECT nextval('ev_seq'), g % 10, md5(g::text), ARRAY[g % 5, g % 17, g % 31],
       point(g % 200, g / 200) FROM generate_series(1, 8000) g;
CREATE INDEX events_kind_hash ON events USING hash (kind);
CREATE INDEX events_tags_gin ON events USING gin (tags);
CREATE INDEX events_at_gist ON events USING gist (at);
CREATE INDEX events_id ON events (id);
INSERT INTO events SELECT nextval('ev_seq'), g % 10, md5(g::text), ARRAY[g % 7, g % 3],
       point(g % 50, g % 60) FROM generate_series(1, 4000) g;
BEGIN;
UPDATE events SET payload = upper(payload) WHERE id % 3 = 0;
SAVEPOINT a;
DELETE FROM events WHERE id % 11 = 0;
INSERT INTO acct VALUES (100001, 'in txn', 1, 'multi-command transaction');
COMMIT;
BEGIN;
DELETE FROM acct WHERE id % 17 = 0;
ROLLBACK;
VACUUM acct;
VACUUM events;
INSERT INTO acct SELECT g, 'late', 0, 'x' FROM generate_series(7000, 7500) g;
UPDATE acct SET note = 'after vacuum' WHERE id % 50 = 1;
DELETE FROM events WHERE kind = 3;
VACUUM events;
SELECT setval('ev_seq', 100000);
CREATE SEQUENCE other_seq;
SELECT nextval('other_seq');
SELECT setval('other_seq', 77, false);
"#;

/// relfilenode -> access method, for database `postgres` and shared catalogs.
fn relation_ams(pg: &PgCluster) -> anyhow::Result<(u32, HashMap<u32, Am>)> {
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let rows = pg.sql(
        "SELECT pg_relation_filenode(c.oid), c.relkind, coalesce(a.amname, '') \
         FROM pg_class c LEFT JOIN pg_am a ON a.oid = c.relam \
         WHERE pg_relation_filenode(c.oid) IS NOT NULL",
    )?;
    let mut map = HashMap::new();
    for line in rows.lines() {
        let f: Vec<&str> = line.split('|').collect();
        if let (Some(Ok(node)), Some(kind), Some(am)) = (f.first().map(|s| s.parse()), f.get(1), f.get(2)) {
            if let Some(am) = Am::from_catalog(am, kind) {
                map.insert(node, am);
            }
        }
    }
    Ok((db, map))
}

/// An evenly spread sample of at most `PER_GROUP` blocks per (AM, created
/// by the workload?) group.
fn sample(candidates: Vec<(BlockKey, Am)>) -> Vec<(BlockKey, Am)> {
    let mut groups: BTreeMap<(Am, bool), Vec<(BlockKey, Am)>> = BTreeMap::new();
    for (key, am) in candidates {
        groups.entry((am, key.0.rel_node >= 16384)).or_default().push((key, am));
    }
    let mut out = Vec::new();
    for ((am, workload), mut blocks) in groups {
        blocks.sort_by_key(|(k, _)| (k.0, k.2));
        let step = blocks.len().div_ceil(PER_GROUP).max(1);
        let picked: Vec<_> = blocks.into_iter().step_by(step).collect();
        eprintln!("sample: {am:?} (workload relation: {workload}): {} blocks", picked.len());
        out.extend(picked);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_pages_match_the_data_files() -> anyhow::Result<()> {
    let (manager, _work) = common::manager(2, |_| {});
    let mut settings = KEEP_ALL_WAL.to_vec();
    settings.extend([("full_page_writes", "on"), ("autovacuum", "off"), ("wal_level", "replica")]);
    let mut pg = PgCluster::start(&settings)?;
    pg.checkpoint()?;
    let start: Lsn = pg.sql("SELECT redo_lsn FROM pg_control_checkpoint()")?.parse()?;
    pg.sql(WORKLOAD)?;
    pg.checkpoint()?;
    let (db, ams) = relation_ams(&pg)?;
    pg.stop()?;

    let records = read_wal(&pg.wal_dir(), start)?;
    let histories = block_histories(&records);
    let mut candidates = Vec::new();
    for (key, _) in histories.iter() {
        let am = ams.get(&key.0.rel_node).copied();
        if key.1 == 0 && (key.0.db_node == db || key.0.db_node == 0) {
            if let Some(am) = am {
                candidates.push((*key, am));
            }
        }
    }
    let chosen = sample(candidates);
    let mut checked = 0;
    let mut mismatches = Vec::new();
    let mut total_records = 0;
    for (key, am) in &chosen {
        let Some(on_disk) = read_data_page(pg.data_dir(), key)? else {
            continue; // truncated away after its last record
        };
        let History { base, records, rmgrs } = histories[key].clone();
        if records.is_empty() {
            continue; // nothing to replay: the image alone is the page
        }
        total_records += records.len();
        let last = records.last().map(|r| r.0).unwrap_or_default();
        let rebuilt = match manager.request_redo(*key, last, base, records).await {
            Ok(page) => page,
            Err(e) => {
                mismatches.push(format!("{key:?} {am:?} rmgrs {rmgrs:?}: redo failed: {e}"));
                continue;
            }
        };
        let (mut a, mut b) = (rebuilt.to_vec(), on_disk);
        mask_page(*am, &mut a);
        mask_page(*am, &mut b);
        if a != b {
            let hdr = |p: &[u8]| (u16::from_le_bytes([p[12], p[13]]), u16::from_le_bytes([p[14], p[15]]));
            mismatches.push(format!(
                "{key:?} {am:?} rmgrs {rmgrs:?}: (lower, upper) rebuilt {:?} on disk {:?}; differs at {:?}",
                hdr(&a),
                hdr(&b),
                diff_ranges(&a, &b)
            ));
        }
        checked += 1;
    }
    eprintln!("checked {checked} blocks rebuilt from {total_records} records; {} mismatches", mismatches.len());
    manager.shutdown().await;
    assert!(checked >= 200, "only {checked} blocks checked");
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
    Ok(())
}
