//! A stock PostgreSQL 15 starts, without recovery, from a data directory
//! whose WAL is only a generated shutdown checkpoint record (what Strata's
//! basebackup produces), at a record boundary in several page positions.

use std::fs;

use postgres_ffi::controlfile::{ControlFile, DbState};
use postgres_ffi::pg_constants::{XLOG_BLCKSZ, XLOG_SIZE_OF_XLOG_SHORT_PHD};
use postgres_ffi::wal_files::{scan_wal_dir, segment_path};
use postgres_ffi::walgen::{encode_checkpoint_record, segment_with_record};
use pg_harness::{pg_bin, PgCluster};
use utils::lsn::Lsn;

#[test]
fn pg_control_fields_match_pg_controldata() -> anyhow::Result<()> {
    let mut pg = PgCluster::start(&[])?;
    pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")?;
    pg.stop()?;
    let control = ControlFile::parse(&fs::read(pg.data_dir().join("global/pg_control"))?)?;
    let out = std::process::Command::new(pg_bin("pg_controldata")).arg(pg.data_dir()).output()?;
    let text = String::from_utf8(out.stdout)?;
    let field = |name: &str| -> String {
        text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string())).unwrap_or_default()
    };
    let cp = control.checkpoint();
    assert_eq!(field("Database system identifier:"), control.system_identifier().to_string());
    assert_eq!(field("Database cluster state:"), "shut down");
    assert_eq!(control.state(), DbState::Shutdowned);
    assert_eq!(field("Latest checkpoint location:"), control.checkpoint_lsn().to_string());
    assert_eq!(field("Latest checkpoint's REDO location:"), cp.redo.to_string());
    assert_eq!(field("Latest checkpoint's NextXID:"), format!("{}:{}", cp.next_xid >> 32, cp.next_xid as u32));
    assert_eq!(field("Latest checkpoint's NextOID:"), cp.next_oid.to_string());
    assert_eq!(field("Latest checkpoint's NextMultiXactId:"), cp.next_multi.to_string());
    assert_eq!(field("Latest checkpoint's oldestXID:"), cp.oldest_xid.to_string());
    assert_eq!(field("Latest checkpoint's oldestActiveXID:"), cp.oldest_active_xid.to_string());
    assert_eq!(field("Bytes per WAL segment:"), control.wal_seg_size().to_string());
    assert_eq!(field("Catalog version number:"), control.catalog_version().to_string());
    // Round trip keeps every byte.
    assert_eq!(ControlFile::parse(&control.encode())?, control);
    let mut damaged = control.encode();
    damaged[40] ^= 1;
    assert!(ControlFile::parse(&damaged).is_err());
    Ok(())
}

#[test]
fn postgres_starts_from_a_generated_checkpoint_at_any_page_position() -> anyhow::Result<()> {
    let mut pg = PgCluster::start(&[])?;
    pg.sql("CREATE TABLE t(id int primary key, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g")?;
    pg.stop()?;
    let control = ControlFile::parse(&fs::read(pg.data_dir().join("global/pg_control"))?)?;
    let seg = control.wal_seg_size() as u64;
    let ckpt_lsn = control.checkpoint_lsn();
    let mut end = ckpt_lsn;
    scan_wal_dir(&pg.wal_dir(), 1, ckpt_lsn, seg, |r| end = r.end_lsn)?;
    assert!(end > ckpt_lsn, "no shutdown checkpoint record found");

    let next_page = end.page_start() + XLOG_BLCKSZ as u64;
    let positions = [
        ("right after the last record", end),
        ("crossing into the next page", next_page - 48),
        ("at a page boundary", next_page + XLOG_BLCKSZ as u64),
        ("right after a page header", next_page + 2 * XLOG_BLCKSZ as u64 + XLOG_SIZE_OF_XLOG_SHORT_PHD as u64),
    ];
    let mut expected_rows = 5000;
    for (what, lsn) in positions {
        let start = install_checkpoint_wal(&mut pg, &control, lsn, ckpt_lsn)?;
        pg.start_postmaster()?;
        let log = pg.log_tail();
        assert!(!log.contains("redo starts"), "{what}: PostgreSQL ran recovery:\n{log}");
        assert_eq!(pg.sql("SELECT count(*) FROM t")?, expected_rows.to_string(), "{what}");
        let insert_lsn = pg.current_wal_insert_lsn()?;
        assert!(insert_lsn > start, "{what}: next WAL at {insert_lsn}, before the checkpoint at {start}");
        expected_rows += 1;
        pg.sql(&format!("INSERT INTO t VALUES ({expected_rows}, 'after {what}')"))?;
        pg.stop()?;
        // The WAL the server wrote continues from our record: decode it all.
        let mut records = Vec::new();
        scan_wal_dir(&pg.wal_dir(), 1, start, seg, |r| records.push(r))?;
        assert!(records.len() >= 3, "{what}: only {} records after the checkpoint", records.len());
        assert_eq!(records[0].start_lsn, start, "{what}");
    }
    Ok(())
}

/// Replace pg_wal with one generated segment holding a shutdown checkpoint
/// at `lsn` and point pg_control at it. Returns the record's LSN.
fn install_checkpoint_wal(pg: &mut PgCluster, base: &ControlFile, lsn: Lsn, prev: Lsn) -> anyhow::Result<Lsn> {
    let current = ControlFile::parse(&fs::read(pg.data_dir().join("global/pg_control"))?)?;
    let seg = base.wal_seg_size() as u64;
    let mut record_lsn = lsn;
    if record_lsn.page_offset() == 0 {
        record_lsn += XLOG_SIZE_OF_XLOG_SHORT_PHD as u64;
    }
    let mut cp = current.checkpoint();
    cp.redo = record_lsn;
    let record = encode_checkpoint_record(&cp, prev.min(current.checkpoint_lsn()), true);
    let (segment, _end) = segment_with_record(lsn, &record, base.system_identifier(), seg)?;
    for entry in fs::read_dir(pg.wal_dir())? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
        }
    }
    let path = segment_path(&pg.wal_dir(), 1, lsn, seg);
    fs::write(&path, segment)?;
    let mut control = current.clone();
    control.set_checkpoint(record_lsn, &cp);
    control.set_state(DbState::Shutdowned);
    control.clear_recovery_fields();
    fs::write(pg.data_dir().join("global/pg_control"), control.encode())?;
    pg.user().chown(pg.data_dir())?;
    Ok(record_lsn)
}
