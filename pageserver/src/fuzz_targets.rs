//! Entry points of the fuzz targets (`fuzz/`) and of their regression tests
//! (`tests/fuzz_regressions.rs`): each takes arbitrary bytes and must never
//! panic, overflow or loop for ever. Not an API for anything else.
//!
//! [`layer_file`] writes the bytes to a fresh file under the system temp
//! directory (removed afterwards) and reads it as a layer; the others are
//! pure. None is async.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use utils::lsn::Lsn;

use crate::http::{AttachRequest, CreateTenantRequest, CreateTimelineRequest};
use crate::ingest::walreceiver::WalSource;
use crate::storage::file::LayerFile;
use crate::storage::index::IndexPart;
use crate::storage::key::Key;
use crate::storage::{LayerDesc, ValueReconstructState};
use crate::tenant::config::TenantConfOverrides;

/// A layer file made of `data[1..]` (`data[0] & 1`: an image layer),
/// through every reader: verify, keys, values, point lookups.
pub fn layer_file(data: &[u8]) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let Some((&flags, body)) = data.split_first() else { return };
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("strata-fuzz-layer-{}-{seq}", std::process::id()));
    if std::fs::write(&path, body).is_err() {
        return;
    }
    read_layer(path.clone(), flags & 1 == 1, body.len() as u64);
    let _ = std::fs::remove_file(&path);
}

fn read_layer(path: PathBuf, is_image: bool, size_bytes: u64) {
    let lsn_range = if is_image { Lsn(0x100)..Lsn(0x101) } else { Lsn(0)..Lsn(u64::MAX) };
    let desc = LayerDesc { key_range: Key::MIN..Key::MAX, lsn_range, is_image, generation: 1 };
    let layer = LayerFile::new(path, desc, size_bytes);
    let _ = layer.format_version();
    let _ = layer.verify();
    let _ = layer.has_key_in(&(Key::MIN..Key::MAX));
    let keys = layer.keys().unwrap_or_default();
    if let Ok(values) = layer.values() {
        for value in values.take(10_000) {
            if value.is_err() {
                break;
            }
        }
    }
    for key in keys.iter().take(64).copied().chain([Key::MIN]) {
        let mut state = ValueReconstructState::default();
        let _ = layer.get_value_reconstruct_data(key, Lsn(0)..Lsn(u64::MAX), &mut state);
    }
}

/// A timeline's `index.json`.
pub fn index_part(data: &[u8]) {
    let path = std::path::Path::new("fuzz/index.json");
    if let Ok(index) = IndexPart::from_json_bytes(path, data) {
        let _ = index.layer_descs();
        let _ = index.to_json_bytes();
    }
}

/// The request bodies of the HTTP API (`data[0]` picks the type).
pub fn http_bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 5 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<CreateTenantRequest>(body) {
                let _ = req.config.as_ref().map(TenantConfOverrides::from_json);
            }
        }
        1 => drop(serde_json::from_slice::<CreateTimelineRequest>(body)),
        2 => drop(serde_json::from_slice::<AttachRequest>(body)),
        3 => drop(serde_json::from_slice::<WalSource>(body)),
        _ => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                let _ = TenantConfOverrides::from_json(&v);
            }
        }
    }
}
