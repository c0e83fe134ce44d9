//! Replays the saved inputs of this crate's fuzz targets through the entry
//! functions the targets call (see `pg_harness::fuzz_replay`); any panic
//! fails the test.
use pg_harness::fuzz_replay::replay;

#[test]
fn pq_frontend() {
    replay("pq_frontend", pq_proto::fuzz_targets::frontend_messages);
}

#[test]
fn pq_backend() {
    replay("pq_backend", pq_proto::fuzz_targets::backend_messages);
}

#[test]
fn pq_replication() {
    replay("pq_replication", pq_proto::fuzz_targets::replication);
}
