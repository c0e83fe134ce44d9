//! The WAL decoder against `pg_waldump` on real PostgreSQL 15 WAL, and its
//! behaviour on damaged, truncated and arbitrary input.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use common::{summarize, RecordSummary, WalFixture};
use pg_harness::workload::{varied_wal_sql, KEEP_ALL_WAL};
use postgres_ffi::pg_constants::XLOG_BLCKSZ;
use postgres_ffi::waldecoder::DecodeErrorReason;
use postgres_ffi::wal_files::{scan_wal_dir, ScanEnd};
use postgres_ffi::{DecodedRecord, RawRecord, WalDecodeError, WalStreamDecoder};
use proptest::prelude::*;
use utils::lsn::Lsn;

/// Shared by the tests of this binary. A `static` is never dropped, so its
/// WAL copy (about 100 MB) lives in the target directory, replaced by the
/// next run, not in a temporary directory that would outlive every run.
fn fixture() -> &'static WalFixture {
    static FIXTURE: OnceLock<WalFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("waldump_compare_fixture");
        WalFixture::generate_in(dir, KEEP_ALL_WAL, &varied_wal_sql(1)).expect("generate WAL fixture")
    })
}

/// Every record of the fixture, decoded from its files.
fn all_records() -> &'static Vec<RawRecord> {
    static RECORDS: OnceLock<Vec<RawRecord>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let fx = fixture();
        let mut records = Vec::new();
        let end = scan_wal_dir(fx.path(), 1, fx.start, fx.seg_size, |r| records.push(r)).unwrap();
        match end {
            ScanEnd::DecodeError(e) => {
                assert!(e.is_end_of_wal(), "scan ended with {e}");
                assert_eq!(e.lsn, fx.waldump_end, "pg_waldump and the decoder end at different LSNs");
            }
            ScanEnd::NoMoreFiles(lsn) => panic!("scan ran out of files at {lsn} before the end of WAL"),
        }
        records
    })
}

/// Feed `bytes` (starting at `start`) in chunks of the sizes `chunk_sizes`
/// yields (cycled), collecting records until the first error.
fn decode_chunked(
    start: Lsn,
    seg_size: u64,
    bytes: &[u8],
    mut chunk_size: impl FnMut() -> usize,
) -> (Vec<RawRecord>, Option<WalDecodeError>) {
    let mut decoder = WalStreamDecoder::new(start, seg_size);
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let n = chunk_size().clamp(1, bytes.len() - pos);
        decoder.feed_bytes(&bytes[pos..pos + n]);
        pos += n;
        loop {
            match decoder.poll_decode() {
                Ok(Some(r)) => records.push(r),
                Ok(None) => break,
                Err(e) => return (records, Some(e)),
            }
        }
    }
    (records, None)
}

fn summaries(records: &[RawRecord]) -> Vec<RecordSummary> {
    records
        .iter()
        .map(|r| summarize(&DecodedRecord::decode(r.start_lsn, r.bytes.clone()).expect("decode record")))
        .collect()
}

fn assert_same_as_waldump(ours: &[RecordSummary], theirs: &[RecordSummary]) {
    let mismatches: Vec<String> = ours
        .iter()
        .zip(theirs)
        .filter(|(a, b)| a != b)
        .take(5)
        .map(|(a, b)| format!("ours:       {a:?}\npg_waldump: {b:?}"))
        .collect();
    assert!(mismatches.is_empty(), "records differ:\n{}", mismatches.join("\n"));
    assert_eq!(ours.len(), theirs.len(), "record counts differ");
}

/// Where a record following one that ends at `end` begins: like PostgreSQL,
/// `end_lsn` of a record that fills its page exactly is the page boundary.
fn next_record_start(end: Lsn, seg_size: u64) -> Lsn {
    if end.segment_offset(seg_size) == 0 {
        end + postgres_ffi::pg_constants::XLOG_SIZE_OF_XLOG_LONG_PHD as u64
    } else if end.page_offset() == 0 {
        end + postgres_ffi::pg_constants::XLOG_SIZE_OF_XLOG_SHORT_PHD as u64
    } else {
        end
    }
}

#[test]
fn every_record_matches_pg_waldump() {
    let fx = fixture();
    let records = all_records();
    assert_same_as_waldump(&summaries(records), &fx.waldump);
    for pair in records.windows(2) {
        assert_eq!(
            next_record_start(pair[0].end_lsn, fx.seg_size),
            pair[1].start_lsn,
            "the next record must start at end_lsn (past a page header when end_lsn is on a page boundary)"
        );
    }
    println!("{} records, {} bytes of WAL files, all equal to pg_waldump", records.len(), fx.total_bytes());
}

#[test]
fn workload_covers_the_hard_cases() {
    let fx = fixture();
    let records = all_records();
    let rmgrs: BTreeSet<&str> = fx.waldump.iter().map(|r| r.rmgr.as_str()).collect();
    for needed in [
        "XLOG", "Transaction", "Storage", "CLOG", "Database", "Standby", "Heap2", "Heap", "Btree",
        "Hash", "Gin", "Gist", "Sequence", "BRIN", "LogicalMessage", "RelMap",
    ] {
        assert!(rmgrs.contains(needed), "workload wrote no {needed} record (has {rmgrs:?})");
    }
    let seg = fx.seg_size;
    let spans_pages = records.iter().filter(|r| r.start_lsn.page_start() != (r.end_lsn - 1).page_start());
    assert!(spans_pages.count() > 100, "few records cross a page boundary");
    assert!(records.iter().any(|r| r.bytes.len() > 2 * XLOG_BLCKSZ), "no record larger than a page");
    assert!(
        records.iter().any(|r| r.bytes.len() as u64 > seg),
        "no record larger than a segment"
    );
    assert!(
        records.iter().any(|r| r.end_lsn.segment_offset(seg) == 0 && r.bytes.len() < 100),
        "no XLOG_SWITCH record"
    );
    let first = records.first().unwrap().start_lsn;
    let last = records.last().unwrap().start_lsn;
    assert!((last - first) / seg >= 3, "WAL spans fewer than 4 segments");
    let fpi_with_same_rel = fx.waldump.iter().any(|r| r.blocks.len() > 1);
    assert!(fpi_with_same_rel, "no record with several block references");
}

/// Start positions of other kinds than the first record of the WAL.
fn interesting_starts(records: &[RawRecord], seg: u64) -> Vec<(usize, Lsn, &'static str)> {
    let mut starts = Vec::new();
    let find = |pred: &dyn Fn(Lsn) -> bool| records.iter().position(|r| pred(r.start_lsn));
    if let Some(i) = find(&|l| l.segment_offset(seg) == 40 && l.0 > records[0].start_lsn.0) {
        starts.push((i, records[i].start_lsn, "right after a long page header"));
        starts.push((i, records[i].start_lsn.segment_start(seg), "at a segment start"));
    }
    if let Some(i) = find(&|l| l.page_offset() == 24) {
        starts.push((i, records[i].start_lsn, "right after a short page header"));
        starts.push((i, records[i].start_lsn.page_start(), "at a page start"));
    }
    let mid = records.len() / 2 + (0..records.len() / 2).find(|k| records[records.len() / 2 + k].start_lsn.page_offset() > 1000).unwrap();
    starts.push((mid, records[mid].start_lsn, "mid-page"));
    starts
}

#[test]
fn decoding_starts_at_any_record_boundary() {
    let fx = fixture();
    let records = all_records();
    let starts = interesting_starts(records, fx.seg_size);
    assert_eq!(starts.len(), 5, "fixture lacks a kind of start position: {starts:?}");
    for (index, start, what) in starts {
        let bytes = fx.bytes_from(start);
        let window = &bytes[..bytes.len().min(4 << 20)];
        let (got, _) = decode_chunked(start, fx.seg_size, window, || 8192);
        assert!(got.len() > 10, "{what}: only {} records decoded from {start}", got.len());
        assert_eq!(got[..], records[index..index + got.len()], "{what} ({start})");
        assert_same_as_waldump(&summaries(&got), &fx.waldump[index..index + got.len()]);
    }
}

/// A small deterministic generator for chunk sizes (xorshift).
fn chunk_sizes(mut seed: u64, max: usize) -> impl FnMut() -> usize {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        1 + (seed as usize % max)
    }
}

#[test]
fn any_chunking_gives_the_same_records() {
    let fx = fixture();
    let bytes = fx.bytes_from(fx.start);
    for (seed, max_chunk) in [(1, 100), (2, 9000), (3, 70_000)] {
        let limit = if max_chunk == 100 { 2 << 20 } else { bytes.len() };
        let (got, err) = decode_chunked(fx.start, fx.seg_size, &bytes[..limit], chunk_sizes(seed, max_chunk));
        let expected = &all_records()[..got.len()];
        assert_eq!(got[..], expected[..], "chunks up to {max_chunk} bytes");
        if limit == bytes.len() {
            assert_eq!(got.len(), all_records().len());
            assert!(err.is_some_and(|e| e.is_end_of_wal()));
        }
    }
}

#[test]
fn truncated_stream_needs_more_data_then_resumes() {
    let fx = fixture();
    let records = all_records();
    let big = records.iter().position(|r| r.bytes.len() > 90_000 && r.bytes.len() < 200_000).unwrap();
    let start = records[big - 1].start_lsn;
    let bytes = fx.bytes_from(start);
    let end = (records[big].end_lsn - start) as usize;
    let mut decoder = WalStreamDecoder::new(start, fx.seg_size);
    let mut got = Vec::new();
    for (i, byte) in bytes[..end].iter().enumerate() {
        decoder.feed_bytes(std::slice::from_ref(byte));
        while let Some(r) = decoder.poll_decode().expect("valid WAL") {
            got.push((i, r));
        }
    }
    assert_eq!(got.len(), 2, "expected the two records, byte by byte");
    assert_eq!(got[0].1, records[big - 1]);
    assert_eq!(got[1].1, records[big]);
    let last_byte_of_big = (records[big].start_lsn - start) as usize;
    assert!(got[1].0 >= last_byte_of_big + records[big].bytes.len() - 1, "record released before all its bytes arrived");
}

/// Decode `bytes` from `start` after applying `damage`; returns the records
/// before the error and the error.
fn decode_damaged(start: Lsn, damage: impl FnOnce(&mut Vec<u8>)) -> (Vec<RawRecord>, WalDecodeError) {
    let fx = fixture();
    let mut bytes = fx.bytes_from(start);
    bytes.truncate(1 << 20);
    damage(&mut bytes);
    let (records, err) = decode_chunked(start, fx.seg_size, &bytes, || 4096);
    (records, err.expect("damaged WAL decoded without error"))
}

/// A record that is neither first nor last and lies within one page.
fn ordinary_record() -> (&'static RawRecord, &'static RawRecord) {
    let records = all_records();
    let i = records
        .iter()
        .enumerate()
        .skip(100)
        .position(|(_, r)| r.bytes.len() > 60 && r.start_lsn.page_offset() + (r.bytes.len() as u64) < 8000)
        .unwrap()
        + 100;
    (&records[i - 1], &records[i])
}

#[test]
fn flipped_payload_byte_is_a_crc_error_naming_the_record() {
    let (prev, target) = ordinary_record();
    let offset = (target.start_lsn - prev.start_lsn) as usize + target.bytes.len() - 1;
    let (records, err) = decode_damaged(prev.start_lsn, |b| b[offset] ^= 0x40);
    assert_eq!(records, vec![prev.clone()]);
    assert_eq!(err.lsn, target.start_lsn);
    assert!(matches!(err.reason, DecodeErrorReason::BadCrc { .. }), "{err}");
    assert!(err.to_string().contains(&target.start_lsn.to_string()), "{err}");
}

#[test]
fn damaged_record_header_is_an_error() {
    let (prev, target) = ordinary_record();
    let at = (target.start_lsn - prev.start_lsn) as usize;
    let (_, err) = decode_damaged(prev.start_lsn, |b| b[at + 17] = 99);
    assert_eq!((err.lsn, err.reason), (target.start_lsn, DecodeErrorReason::BadRmgrId(99)));
    let (_, err) = decode_damaged(prev.start_lsn, |b| b[at + 8] ^= 0x08);
    assert!(matches!(err.reason, DecodeErrorReason::BadPrevLink { .. }), "{err}");
    let (_, err) = decode_damaged(prev.start_lsn, |b| b[at..at + 4].copy_from_slice(&5u32.to_le_bytes()));
    assert_eq!(err.reason, DecodeErrorReason::RecordTooShort(5));
}

#[test]
fn garbage_in_a_page_header_is_an_error() {
    let records = all_records();
    let spanning = records
        .iter()
        .skip(10)
        .find(|r| r.start_lsn.page_start() != (r.end_lsn - 1).page_start() && r.end_lsn.segment_offset(fixture().seg_size) > 8192)
        .unwrap();
    let start = spanning.start_lsn;
    let page = (start.page_start() + XLOG_BLCKSZ as u64 - start) as usize;
    let page_lsn = start.page_start() + XLOG_BLCKSZ as u64;
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    type Expected = fn(&DecodeErrorReason) -> bool;
    let cases: Vec<(&str, Damage, Expected)> = vec![
        ("magic", Box::new(move |b| b[page] ^= 0xFF), |r| matches!(r, DecodeErrorReason::BadPageMagic(_))),
        ("info", Box::new(move |b| b[page + 2] |= 0x30), |r| matches!(r, DecodeErrorReason::BadPageInfo(_))),
        ("address", Box::new(move |b| b[page + 9] ^= 0x01), |r| matches!(r, DecodeErrorReason::BadPageAddr { .. })),
        ("rem_len", Box::new(move |b| b[page + 16] ^= 0x01), |r| matches!(r, DecodeErrorReason::BadContrecordLength { .. })),
        ("contrecord flag", Box::new(move |b| b[page + 2] &= !0x01), |r| matches!(r, DecodeErrorReason::MissingContrecord { .. })),
    ];
    for (what, damage, expected) in cases {
        let (records, err) = decode_damaged(start, damage);
        assert!(records.is_empty(), "{what}: record spanning the damaged page was returned");
        assert_eq!(err.lsn, page_lsn, "{what}: {err}");
        assert!(expected(&err.reason), "{what}: {err}");
    }
}

#[test]
fn compressed_full_page_images_match_pg_waldump() {
    let mut settings = KEEP_ALL_WAL.to_vec();
    settings.push(("wal_compression", "pglz"));
    let sql = "CREATE TABLE c (id int PRIMARY KEY, v text);
        INSERT INTO c SELECT g, repeat('v', 40) FROM generate_series(1, 20000) g;
        CHECKPOINT;
        UPDATE c SET v = 'w' WHERE id % 50 = 0;";
    let fx = WalFixture::generate(&settings, sql).unwrap();
    let mut records = Vec::new();
    scan_wal_dir(fx.path(), 1, fx.start, fx.seg_size, |r| records.push(r)).unwrap();
    let ours = summaries(&records);
    assert_same_as_waldump(&ours, &fx.waldump);
    let compressed = ours.iter().flat_map(|r| &r.blocks).filter(|b| b.contains("method: pglz")).count();
    assert!(compressed > 10, "only {compressed} compressed images");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Real WAL with a few bytes changed: errors, never panics; records
    /// returned before the error are records of the original WAL.
    #[test]
    fn mutated_wal_never_panics(
        start_pick in 0usize..10_000,
        len in 1usize..70_000,
        edits in proptest::collection::vec((0usize..70_000, any::<u8>()), 1..8),
        chunk in 1usize..9000,
    ) {
        let records = all_records();
        let first = &records[start_pick % records.len()];
        let mut bytes = fixture().bytes_from(first.start_lsn);
        bytes.truncate(len);
        for (pos, value) in edits {
            if pos < bytes.len() { bytes[pos] = value; }
        }
        let (got, _) = decode_chunked(first.start_lsn, fixture().seg_size, &bytes, || chunk);
        for r in &got {
            let original = records.binary_search_by_key(&r.start_lsn, |o| o.start_lsn);
            prop_assert!(original.is_ok(), "record at {} is not in the original WAL", r.start_lsn);
            let _ = DecodedRecord::decode(r.start_lsn, r.bytes.clone());
        }
    }

    /// The record decoder on arbitrarily damaged records: never panics.
    #[test]
    fn damaged_records_never_panic(
        pick in 0usize..100_000,
        edits in proptest::collection::vec((0usize..400, any::<u8>()), 1..6),
        cut in 0usize..400,
    ) {
        let records = all_records();
        let mut bytes = records[pick % records.len()].bytes.to_vec();
        for (pos, value) in edits {
            if pos < bytes.len() { bytes[pos] = value; }
        }
        if cut < bytes.len() && cut % 3 == 0 { bytes.truncate(bytes.len() - cut); }
        let _ = DecodedRecord::decode(Lsn(0x1000028), bytes.into());
    }

    /// Arbitrary bytes at an arbitrary aligned start: never panics.
    #[test]
    fn random_bytes_never_panic(start in 0u64..(1 << 40), bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        let (_, _) = decode_chunked(Lsn(start & !7), 16 << 20, &bytes, || 777);
    }
}
