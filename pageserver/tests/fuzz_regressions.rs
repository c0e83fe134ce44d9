//! Replays the saved inputs of the fuzz targets (`fuzz/regressions/<target>/`:
//! crashes found by fuzzing, fixed since, and seed inputs) through the same
//! entry functions the targets call; any panic fails the test. Runs on
//! stable, in CI, without cargo-fuzz.
use std::path::PathBuf;

/// Every file of `fuzz/regressions/<target>/` (there is at least one).
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files.into_iter().map(|p| {
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        (p, bytes)
    }).collect()
}

fn replay(target: &str, entry: fn(&[u8])) {
    for (path, data) in inputs(target) {
        let result = std::panic::catch_unwind(|| entry(&data));
        assert!(result.is_ok(), "{target}: {} panics", path.display());
    }
}

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
