//! The comparator on real PostgreSQL 15 data directories: a one-byte change
//! in a tuple is reported with its relation file and block (also by the
//! `strata-compare-datadirs` binary), while a difference in hint bits only —
//! made by PostgreSQL itself, by reading the table after a restart — is
//! masked.

use std::path::{Path, PathBuf};
use std::process::Command;

use datadir_compare::{compare_datadirs, DiffKind, Options};
use pg_harness::{pg_owned_tempdir, PgCluster};
use postgres_ffi::page_mask::{item_id, PageHeader};

const BLCKSZ: usize = 8192;

/// `cp -a` a stopped cluster's data directory into a new temporary
/// directory; returns (guard, copy).
fn copy_datadir(pg: &PgCluster) -> (tempfile::TempDir, PathBuf) {
    let root = pg_owned_tempdir(pg.user(), "strata-datadir-copy-").unwrap();
    let copy = root.path().join("data");
    let status = Command::new("cp")
        .arg("-a")
        .arg(pg.data_dir())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a failed");
    (root, copy)
}

fn read_block(file: &Path, block: usize) -> Vec<u8> {
    let bytes = std::fs::read(file).unwrap();
    bytes[block * BLCKSZ..(block + 1) * BLCKSZ].to_vec()
}

fn write_block(file: &Path, block: usize, page: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[block * BLCKSZ..(block + 1) * BLCKSZ].copy_from_slice(page);
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn one_changed_tuple_byte_is_reported_with_file_and_block() {
    let mut pg = PgCluster::start(&[("autovacuum", "off")]).unwrap();
    pg.sql(
        "CREATE TABLE t (id int, v text);
         INSERT INTO t SELECT g, 'value number ' || g FROM generate_series(1, 1000) g;
         CREATE INDEX t_id ON t (id);",
    )
    .unwrap();
    let relpath = pg.sql("SELECT pg_relation_filepath('t')").unwrap();
    pg.stop().unwrap();
    let (_guard, copy) = copy_datadir(&pg);

    let same = compare_datadirs(pg.data_dir(), &copy, &Options::default()).unwrap();
    assert!(
        same.is_equal(),
        "a copy differs: {:?}",
        same.differences.first().map(|d| d.to_string())
    );

    // Change one byte of the data of the third tuple of block 2.
    let (block, lp) = (2usize, 3usize);
    let file = copy.join(&relpath);
    let mut page = read_block(&file, block);
    let item = item_id(&page, lp).expect("line pointer 3");
    let t_hoff = page[item.off as usize + 22] as usize;
    page[item.off as usize + t_hoff + 6] ^= 0x20;
    write_block(&file, block, &page);

    let report = compare_datadirs(pg.data_dir(), &copy, &Options::default()).unwrap();
    assert_eq!(report.differences_total, 1, "{}", report.summary());
    let d = &report.differences[0];
    assert_eq!(d.path, relpath);
    let DiffKind::Page {
        first,
        blocks_differing,
    } = &d.what
    else {
        panic!("not a page difference: {d}")
    };
    assert_eq!(first.block, block as u64);
    assert_eq!(*blocks_differing, 1);
    assert_eq!(first.line_pointers.len(), 1, "{d}");
    assert_eq!(first.line_pointers[0].offset, lp);
    assert!(first.line_pointers[0].item_bytes_differ && !first.line_pointers[0].item_id_differs);
    assert!(first.header_fields_differing.is_empty(), "{d}");
    let text = d.to_string();
    assert!(
        text.contains(&format!("{relpath} (rel ")) && text.contains(&format!("block {block} differs")),
        "{text}"
    );
    assert!(text.contains("pd_lsn") && text.contains("lp   3"), "{text}");
    eprintln!("{text}");

    // The binary says the same, and fails.
    let out = Command::new(env!("CARGO_BIN_EXE_strata-compare-datadirs"))
        .arg(pg.data_dir())
        .arg(&copy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("block {block} differs")), "{stdout}");
    assert!(stdout.trim_end().ends_with("pages compared, 1 differences"), "{stdout}");
}

#[test]
fn hint_bit_only_differences_are_masked() {
    let mut pg = PgCluster::start(&[("autovacuum", "off")]).unwrap();
    // VACUUM first so that the catalogs carry their hint bits and have
    // nothing to prune; the rows of t are then inserted and never read.
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, v text); VACUUM;").unwrap();
    pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 3000) g;")
        .unwrap();
    let relpath = pg.sql("SELECT pg_relation_filepath('t')").unwrap();
    let index_path = pg.sql("SELECT pg_relation_filepath('t_pkey')").unwrap();
    pg.stop().unwrap();
    let (_guard, before) = copy_datadir(&pg);

    // Reading the rows sets HEAP_XMIN_COMMITTED without WAL (no checksums,
    // wal_log_hints off); the checkpoint at shutdown writes the pages.
    pg.start_postmaster().unwrap();
    assert_eq!(pg.sql("SELECT count(*) FROM t").unwrap(), "3000");
    pg.stop().unwrap();

    let heap_before = read_block(&before.join(&relpath), 0);
    let heap_after = read_block(&pg.data_dir().join(&relpath), 0);
    assert_ne!(heap_before, heap_after, "reading did not set hint bits");
    assert_eq!(PageHeader::parse(&heap_before).lsn, PageHeader::parse(&heap_after).lsn);

    let report = compare_datadirs(&before, pg.data_dir(), &Options::default()).unwrap();
    let diffs: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
    assert!(report.is_equal(), "{}\n{}", report.summary(), diffs.join("\n"));
    let heap_pages = std::fs::metadata(pg.data_dir().join(&relpath)).unwrap().len() / BLCKSZ as u64;
    assert!(
        report.pages_equal_after_masking >= heap_pages,
        "only {} pages needed masks, t has {heap_pages}",
        report.pages_equal_after_masking
    );

    // Hints PostgreSQL sets elsewhere without WAL, made by hand: LP_DEAD and
    // BTP_HAS_GARBAGE on a btree leaf, PD_ALL_VISIBLE and pd_prune_xid on a
    // heap page. Masked as well; a flipped HEAP_HASNULL bit is not.
    let (_guard2, copy) = copy_datadir(&pg);
    let leaf = 1usize; // block 0 is the metapage
    let mut page = read_block(&copy.join(&index_path), leaf);
    let at = 24 + 4 * 4; // line pointer 5
    let raw = u32::from_le_bytes(page[at..at + 4].try_into().unwrap()) | (3 << 15); // LP_DEAD
    page[at..at + 4].copy_from_slice(&raw.to_le_bytes());
    let sp = PageHeader::parse(&page).special as usize;
    page[sp + 12] |= 1 << 6; // BTP_HAS_GARBAGE
    write_block(&copy.join(&index_path), leaf, &page);
    let mut page = read_block(&copy.join(&relpath), 1);
    page[10] |= 0x4; // PD_ALL_VISIBLE
    page[20..24].copy_from_slice(&1234u32.to_le_bytes()); // pd_prune_xid
    write_block(&copy.join(&relpath), 1, &page);
    let report = compare_datadirs(pg.data_dir(), &copy, &Options::default()).unwrap();
    assert!(
        report.is_equal(),
        "{:?}",
        report.differences.first().map(|d| d.to_string())
    );

    let mut page = read_block(&copy.join(&relpath), 1);
    let item = item_id(&page, 1).unwrap();
    page[item.off as usize + 20] ^= 0x01; // HEAP_HASNULL: data, not a hint
    write_block(&copy.join(&relpath), 1, &page);
    let report = compare_datadirs(pg.data_dir(), &copy, &Options::default()).unwrap();
    assert_eq!(report.differences_total, 1, "{}", report.summary());
    assert_eq!(report.differences[0].path, relpath);
}
