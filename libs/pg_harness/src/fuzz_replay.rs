//! Replaying the saved inputs of the fuzz targets (`fuzz/regressions/<target>/`:
//! crashes found by fuzzing, fixed since, and seed inputs) through the same
//! entry functions the targets call, on stable and in CI, without
//! cargo-fuzz. Each crate's `tests/fuzz_regressions.rs` calls [`replay`].

use std::path::{Path, PathBuf};

/// `fuzz/regressions` of this checkout.
pub fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions")
}

/// Every file of `fuzz/regressions/<target>/` (there must be at least one).
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = regressions_dir().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Run `entry` on every saved input of `target`; a panic fails with the
/// input's path.
pub fn replay(target: &str, entry: fn(&[u8])) {
    for (path, data) in inputs(target) {
        let result = std::panic::catch_unwind(|| entry(&data));
        assert!(result.is_ok(), "{target}: {} panics", path.display());
    }
}
