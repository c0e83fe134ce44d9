//! Replays the saved inputs of this crate's fuzz targets through the entry
//! functions the targets call (see `pg_harness::fuzz_replay`); any panic
//! fails the test.
use pg_harness::fuzz_replay::replay;

#[test]
fn safekeeper_control_file() {
    replay("safekeeper_control_file", safekeeper::fuzz_targets::control_file);
}

#[test]
fn safekeeper_http() {
    replay("safekeeper_http", safekeeper::fuzz_targets::http_bodies);
}
