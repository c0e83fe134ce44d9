//! WAL decoding throughput on real PostgreSQL 15 WAL, beside `pg_waldump`
//! over the same files in the same run.
//!
//! `cargo bench -p postgres_ffi --bench decode` (set `STRATA_BENCH_SCALE` to
//! make the workload larger; default 1 ≈ 100 MB of segment files).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::WalFixture;
use pg_harness::pg_bin;
use pg_harness::workload::{varied_wal_sql, KEEP_ALL_WAL};
use postgres_ffi::{DecodedRecord, WalStreamDecoder};

/// Bytes fed to the decoder per call, like one network read of streamed WAL.
const CHUNK_SIZE_BYTES: usize = 128 * 1024;
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let scale: u32 = std::env::var("STRATA_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    println!("generating WAL (scale {scale}) ...");
    let fx = WalFixture::generate(KEEP_ALL_WAL, &varied_wal_sql(scale))?;
    let wal = Bytes::from(fx.bytes_from(fx.start));
    let end = fx.waldump_end;
    let wal_bytes = (end.0 - fx.start.0) as f64;
    println!(
        "{} records, {:.1} MB of WAL from {} to {end}; best of {ROUNDS} rounds\n",
        fx.waldump.len(),
        wal_bytes / 1e6,
        fx.start
    );
    println!("{:<44} {:>10} {:>14}", "decoder", "MB/s", "records/s");
    let (n, t) = best_of(|| stream_decode(&fx, &wal, false));
    report("strata WalStreamDecoder (framing + CRC)", wal_bytes, n, t);
    let (n, t) = best_of(|| stream_decode(&fx, &wal, true));
    report("strata + DecodedRecord::decode (blocks)", wal_bytes, n, t);
    let (n, t) = best_of(|| waldump(&fx, &["--quiet"]));
    report("pg_waldump --quiet (baseline)", wal_bytes, n, t);
    let (n, t) = best_of(|| waldump(&fx, &["--bkp-details"]));
    report("pg_waldump --bkp-details > /dev/null", wal_bytes, n, t);
    Ok(())
}

fn best_of(mut run: impl FnMut() -> usize) -> (usize, Duration) {
    let mut best = Duration::MAX;
    let mut count = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        count = run();
        best = best.min(start.elapsed());
    }
    (count, best)
}

fn report(what: &str, wal_bytes: f64, records: usize, took: Duration) {
    let secs = took.as_secs_f64();
    println!("{what:<44} {:>10.1} {:>14.0}", wal_bytes / 1e6 / secs, records as f64 / secs);
}

/// Decode the whole stream in network-sized chunks; returns the record count.
fn stream_decode(fx: &WalFixture, wal: &Bytes, decode_blocks: bool) -> usize {
    let mut decoder = WalStreamDecoder::new(fx.start, fx.seg_size);
    let mut count = 0;
    for chunk in wal.chunks(CHUNK_SIZE_BYTES) {
        decoder.feed_bytes(chunk);
        loop {
            match decoder.poll_decode() {
                Ok(Some(rec)) => {
                    if decode_blocks {
                        let decoded = DecodedRecord::decode(rec.start_lsn, rec.bytes).expect("decode record");
                        std::hint::black_box(decoded.blocks.len());
                    }
                    count += 1;
                }
                Ok(None) => break,
                Err(e) if e.is_end_of_wal() => return count,
                Err(e) => panic!("WAL decode failed: {e}"),
            }
        }
    }
    count
}

/// Run `pg_waldump` over the fixture's files; returns the records it saw.
fn waldump(fx: &WalFixture, args: &[&str]) -> usize {
    let status = Command::new(pg_bin("pg_waldump"))
        .args(args)
        .arg("-p")
        .arg(fx.path())
        .arg("-s")
        .arg(fx.start.to_string())
        .arg("-e")
        .arg(fx.waldump_end.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run pg_waldump");
    assert!(status.success(), "pg_waldump failed: {status}");
    fx.waldump.len()
}
