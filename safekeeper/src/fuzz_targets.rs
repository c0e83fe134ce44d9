//! Entry points of the fuzz targets (`fuzz/`) and of their regression tests
//! (`tests/fuzz_regressions.rs`): each takes arbitrary bytes and must never
//! panic, overflow or loop for ever. Not an API for anything else. Pure
//! functions: no I/O, nothing async.
use crate::control_file::ComputeSpec;
use crate::recovery::RecoveryTarget;
use crate::timeline::CreateTimelineRequest;

/// The control-file reader.
pub fn control_file(data: &[u8]) {
    crate::control_file::fuzz_decode(data);
}

/// The request bodies of the HTTP API (`data[0]` picks the type).
pub fn http_bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 3 {
        0 => drop(serde_json::from_slice::<CreateTimelineRequest>(body)),
        1 => drop(serde_json::from_slice::<ComputeSpec>(body)),
        _ => drop(serde_json::from_slice::<RecoveryTarget>(body)),
    }
}
