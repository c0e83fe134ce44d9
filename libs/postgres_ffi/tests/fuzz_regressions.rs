//! Replays the saved inputs of this crate's fuzz targets through the entry
//! functions the targets call (see `pg_harness::fuzz_replay`); any panic
//! fails the test.
use pg_harness::fuzz_replay::replay;

#[test]
fn wal_stream() {
    replay("wal_stream", postgres_ffi::fuzz_targets::wal_stream);
}

#[test]
fn wal_record() {
    replay("wal_record", postgres_ffi::fuzz_targets::wal_record);
}

#[test]
fn pg_control() {
    replay("pg_control", postgres_ffi::fuzz_targets::pg_control);
}
