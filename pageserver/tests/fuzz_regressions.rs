//! Replays the saved inputs of this crate's fuzz targets through the entry
//! functions the targets call (see `pg_harness::fuzz_replay`); any panic
//! fails the test.
use pg_harness::fuzz_replay::replay;

#[test]
fn layer_file() {
    replay("layer_file", pageserver::fuzz_targets::layer_file);
}

#[test]
fn index_part() {
    replay("index_part", pageserver::fuzz_targets::index_part);
}

#[test]
fn pageserver_http() {
    replay("pageserver_http", pageserver::fuzz_targets::http_bodies);
}
