//! Rust-applied records on real pages: visibility-map clears derived from
//! real heap records (mixed with Postgres-applied VM records, so requests
//! are split into runs), CLOG status bits and multixact offsets/members,
//! all compared with the pages PostgreSQL 15 wrote.
mod common;

use bytes::Bytes;
use common::{block_histories, read_data_page, read_wal};
use pageserver::walredo::{
    clog_status, vm_clear_for_heap_record, MultiXactMember, RedoKey, SlruKind, WalRecord,
};
use pg_harness::workload::KEEP_ALL_WAL;
use pg_harness::PgCluster;
use postgres_ffi::pg_constants::*;
use postgres_ffi::rmgr::RM_MULTIXACT_ID;
use utils::lsn::Lsn;

fn cluster() -> anyhow::Result<(PgCluster, Lsn)> {
    let mut settings = KEEP_ALL_WAL.to_vec();
    settings.push(("autovacuum", "off"));
    let pg = PgCluster::start(&settings)?;
    pg.checkpoint()?;
    let start: Lsn = pg.sql("SELECT redo_lsn FROM pg_control_checkpoint()")?.parse()?;
    Ok((pg, start))
}

fn slru_page(pg: &PgCluster, dir: &str, pageno: usize) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::read(pg.data_dir().join(dir).join("0000"))?;
    Ok(file[pageno * BLCKSZ..(pageno + 1) * BLCKSZ].to_vec())
}

#[tokio::test]
async fn visibility_map_page_rebuilt_from_postgres_and_rust_records() -> anyhow::Result<()> {
    let (manager, _dir) = common::manager(1, |_| {});
    let (mut pg, start) = cluster()?;
    pg.sql(
        "CREATE TABLE v (id int, pad text);
         INSERT INTO v SELECT g, repeat('p', 200) FROM generate_series(1, 3000) g;
         VACUUM FREEZE v;
         UPDATE v SET pad = 'u' WHERE id % 500 = 1;
         DELETE FROM v WHERE id % 700 = 3;
         VACUUM v;
         SELECT id FROM v WHERE id % 900 = 5 FOR UPDATE;
         INSERT INTO v VALUES (0, 'tail');",
    )?;
    pg.checkpoint()?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('v')")?.parse()?;
    pg.stop()?;
    let records = read_wal(&pg.wal_dir(), start)?;
    let vm_key = block_histories(&records)
        .into_keys()
        .find(|k| k.0.rel_node == node && k.1 == VISIBILITYMAP_FORKNUM && k.2 == 0)
        .expect("VM page 0 is in the WAL");
    let history = &block_histories(&records)[&vm_key];
    // Interleave the Rust-applied clears with the Postgres VM records by LSN.
    let mut all = history.records.clone();
    let first = all.first().map(|r| r.0).unwrap_or_default();
    for rec in &records {
        if let Some((rel, clear)) = vm_clear_for_heap_record(&rec.decoded) {
            if rel.rel_node == node && rec.end_lsn > first {
                all.push((rec.end_lsn, clear));
            }
        }
    }
    all.sort_by_key(|r| r.0);
    let rust = all.iter().filter(|r| r.1.is_rust_applied()).count();
    let runs = pageserver::walredo::split_runs(&all).len();
    assert!(rust > 0 && runs >= 3, "workload should mix kinds: {rust} Rust records, {runs} runs");
    let last = all.last().map(|r| r.0).unwrap_or_default();
    let page = manager.request_redo(vm_key, last, history.base.clone(), all).await?;
    let on_disk = read_data_page(pg.data_dir(), &vm_key)?.expect("VM page on disk");
    assert_eq!(&page[..8], &on_disk[..8], "pd_lsn");
    assert!(page[10..] == on_disk[10..], "VM page differs");
    manager.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn clog_bits_match_a_real_clog_page() -> anyhow::Result<()> {
    let (manager, _dir) = common::manager(1, |_| {});
    let (mut pg, _) = cluster()?;
    pg.sql("CREATE TABLE c (x int)")?;
    let (mut committed, mut aborted) = (Vec::new(), Vec::new());
    for i in 0..40 {
        let xid: u32 = pg.sql("BEGIN; INSERT INTO c VALUES (1); SELECT txid_current(); COMMIT;")?.parse()?;
        committed.push(xid);
        if i % 3 == 0 {
            let xid: u32 = pg.sql("BEGIN; INSERT INTO c VALUES (2); SELECT txid_current(); ROLLBACK;")?.parse()?;
            aborted.push(xid);
        }
    }
    pg.checkpoint()?;
    pg.stop()?;
    let real = slru_page(&pg, "pg_xact", 0)?;
    let mut cleared = real.clone();
    for &xid in committed.iter().chain(&aborted) {
        assert_ne!(clog_status(&real, xid), TRANSACTION_STATUS_IN_PROGRESS, "xid {xid}");
        let (byte, shift) = ((xid % CLOG_XACTS_PER_PAGE / 4) as usize, (xid % 4) * 2);
        cleared[byte] &= !(3 << shift);
    }
    let key = RedoKey::Slru { kind: SlruKind::Clog, segno: 0, blkno: 0 };
    let records = vec![
        (Lsn(1), WalRecord::ClogSetCommitted { xids: committed, timestamp: 0 }),
        (Lsn(2), WalRecord::ClogSetAborted { xids: aborted }),
    ];
    let page = manager.request_redo(key, Lsn(2), Some(Bytes::from(cleared)), records).await?;
    assert!(page[..] == real[..], "rebuilt CLOG page differs");
    Ok(())
}

type Records = Vec<(Lsn, WalRecord)>;

/// (offset records, member records) from `xl_multixact_create` records.
fn multixact_records(records: &[common::Rec]) -> (Records, Records) {
    let (mut offsets, mut members) = (Vec::new(), Vec::new());
    for rec in records {
        let h = rec.decoded.header;
        if h.xl_rmid != RM_MULTIXACT_ID || h.rmgr_info() != XLOG_MULTIXACT_CREATE_ID {
            continue;
        }
        let d = &rec.decoded.main_data;
        let u32_at = |at: usize| u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
        let (mid, moff, n) = (u32_at(0), u32_at(4), u32_at(8) as usize);
        let list = (0..n).map(|i| MultiXactMember { xid: u32_at(12 + 8 * i), status: u32_at(16 + 8 * i) });
        offsets.push((rec.end_lsn, WalRecord::MultixactOffsetCreate { mid, moff, nmembers: n as u32 }));
        members.push((rec.end_lsn, WalRecord::MultixactMembersCreate { moff, members: list.collect() }));
    }
    (offsets, members)
}

#[tokio::test]
async fn multixact_pages_match_real_ones() -> anyhow::Result<()> {
    let (manager, _dir) = common::manager(1, |_| {});
    let (mut pg, start) = cluster()?;
    pg.sql("CREATE TABLE m (id int, v int); INSERT INTO m SELECT g, 0 FROM generate_series(1, 20) g;")?;
    for i in 1..=20 {
        pg.sql(&format!(
            "BEGIN; SELECT * FROM m WHERE id = {i} FOR SHARE; SAVEPOINT s;
             UPDATE m SET v = v + 1 WHERE id = {i}; COMMIT;
             BEGIN; SELECT * FROM m WHERE id <= {i} FOR KEY SHARE; SAVEPOINT a;
             SELECT * FROM m WHERE id <= {i} FOR UPDATE; SAVEPOINT b;
             SELECT * FROM m WHERE id <= {i} FOR NO KEY UPDATE; COMMIT;"
        ))?;
    }
    pg.checkpoint()?;
    pg.stop()?;
    let records = read_wal(&pg.wal_dir(), start)?;
    let (offsets, members) = multixact_records(&records);
    assert!(offsets.len() >= 20, "workload created {} multixacts", offsets.len());
    let zero = Bytes::from(vec![0u8; BLCKSZ]);
    for (kind, dir, recs) in [
        (SlruKind::MultiXactOffsets, "pg_multixact/offsets", offsets),
        (SlruKind::MultiXactMembers, "pg_multixact/members", members),
    ] {
        let key = RedoKey::Slru { kind, segno: 0, blkno: 0 };
        let last = recs.last().map(|r| r.0).unwrap_or_default();
        let page = manager.request_redo(key, last, Some(zero.clone()), recs).await?;
        let real = slru_page(&pg, dir, 0)?;
        let diff = common::mask::diff_ranges(&page, &real);
        assert!(diff.is_empty(), "{kind:?} page differs at {diff:?}: {:?} vs {:?}", &page[..96], &real[..96]);
    }
    Ok(())
}
