//! The per-timeline index file, `index.json`: the one durable description
//! of a timeline — its metadata (LSNs, ancestor, Postgres identity) and the
//! set of layer files that make it up, each with kind, key range, LSN
//! range, size and generation.
//!
//! Owns: the format (JSON, `version` 1, with a CRC-32C over its canonical
//! serialisation) and its atomic replacement.
//!
//! Invariants:
//! * The file is replaced atomically: written to `index.json.tmp`, fsynced,
//!   renamed over `index.json`, then the directory is fsynced. A reader sees
//!   the old or the new index, never a mix.
//! * It names only layer files that were complete and durable before it was
//!   written (writers finish the layer file first), so after a crash every
//!   named file exists with the recorded size — or, with remote storage, is
//!   in remote storage (evicted, or not downloaded since an attach: the
//!   repository checks the remote index names it); files it does not name
//!   are crash leftovers.
//! * Loading never panics on file content: damage is an [`IndexError`]
//!   naming the file and what is wrong.
//!
//! Cancellation: all functions do blocking file I/O; async callers use
//! `spawn_blocking`. A write cut short leaves at worst `index.json.tmp`,
//! which the next load removes.
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utils::id::TimelineId;
use utils::lsn::Lsn;

use super::LayerDesc;
use crate::storage::key::Key;

/// The index file's name in a timeline directory.
pub const INDEX_FILE: &str = "index.json";
/// The format version written (and the only one read).
pub const INDEX_VERSION: u32 = 1;

/// Durable description of a timeline (part of the index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineMetadata {
    pub disk_consistent_lsn: Lsn,
    pub ancestor_timeline: Option<TimelineId>,
    pub ancestor_lsn: Lsn,
    pub pg_version: u32,
    pub system_id: u64,
    pub initdb_lsn: Lsn,
    pub wal_seg_size: u64,
}

/// Delta or image layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Delta,
    Image,
}

/// One layer file named by the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexLayer {
    /// The file name in the timeline directory.
    pub name: String,
    pub kind: LayerKind,
    /// 36 hex digits each; the range is half-open.
    pub key_start: String,
    pub key_end: String,
    pub lsn_start: Lsn,
    pub lsn_end: Lsn,
    pub size_bytes: u64,
    pub generation: u32,
}

impl IndexLayer {
    /// The entry for a layer file named `name`.
    pub fn new(name: String, desc: &LayerDesc, size_bytes: u64) -> IndexLayer {
        IndexLayer {
            name,
            kind: if desc.is_image { LayerKind::Image } else { LayerKind::Delta },
            key_start: desc.key_range.start.to_string(),
            key_end: desc.key_range.end.to_string(),
            lsn_start: desc.lsn_range.start,
            lsn_end: desc.lsn_range.end,
            size_bytes,
            generation: desc.generation,
        }
    }

    /// The layer described by the fields, checked against the name.
    pub fn desc(&self) -> Result<LayerDesc, String> {
        let key = |s: &str| s.parse::<Key>().map_err(|e| format!("layer {}: {e}", self.name));
        let desc = LayerDesc {
            key_range: key(&self.key_start)?..key(&self.key_end)?,
            lsn_range: self.lsn_start..self.lsn_end,
            is_image: self.kind == LayerKind::Image,
            generation: self.generation,
        };
        match LayerDesc::parse_file_name(&self.name) {
            Some(named) if named == desc => Ok(desc),
            Some(named) => Err(format!("layer {}: the name says {named:?}, the fields say {desc:?}", self.name)),
            None => Err(format!("{:?} is not a layer file name", self.name)),
        }
    }
}

/// The content of `index.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPart {
    pub version: u32,
    /// Generation of the attachment that wrote this index; new layer files
    /// get it.
    pub generation: u32,
    #[serde(flatten)]
    pub metadata: TimelineMetadata,
    /// Reads below this LSN are refused: GC may have removed the layers
    /// they need (written before the removed layers' files are deleted).
    pub gc_cutoff_lsn: Lsn,
    pub layers: Vec<IndexLayer>,
    /// CRC-32C of the pretty JSON of this index with this field null.
    #[serde(default)]
    pub checksum_crc32c: Option<u32>,
}

/// A damaged index, or one that does not match the directory.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index file {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("index file {path} names layer file {name}, which is missing")]
    MissingLayer { path: PathBuf, name: String },
    #[error("index file {path} names layer file {name} of {expected_bytes} bytes, but it has {actual_bytes}")]
    LayerSize { path: PathBuf, name: String, expected_bytes: u64, actual_bytes: u64 },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl IndexPart {
    /// An index without layers.
    pub fn new(generation: u32, metadata: TimelineMetadata, layers: Vec<IndexLayer>) -> IndexPart {
        IndexPart {
            version: INDEX_VERSION,
            generation,
            metadata,
            gc_cutoff_lsn: Lsn(0),
            layers,
            checksum_crc32c: None,
        }
    }

    fn canonical_bytes(&self) -> Vec<u8> {
        let unsealed = IndexPart { checksum_crc32c: None, ..self.clone() };
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec_pretty(&unsealed).unwrap_or_default()
    }

    /// The JSON written to disk, with the checksum set.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let crc = crc32c::crc32c(&self.canonical_bytes());
        let sealed = IndexPart { checksum_crc32c: Some(crc), ..self.clone() };
        serde_json::to_vec_pretty(&sealed).unwrap_or_default()
    }

    /// Parse and check an index read from `path`.
    pub fn from_json_bytes(path: &Path, bytes: &[u8]) -> Result<IndexPart, IndexError> {
        let corrupt = |reason: String| IndexError::Corrupt { path: path.to_path_buf(), reason };
        let index: IndexPart = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if index.version != INDEX_VERSION {
            return Err(corrupt(format!("unsupported version {} (expected {INDEX_VERSION})", index.version)));
        }
        let crc = crc32c::crc32c(&index.canonical_bytes());
        match index.checksum_crc32c {
            Some(c) if c == crc => {}
            Some(c) => return Err(corrupt(format!("checksum mismatch: stored {c:08x}, computed {crc:08x}"))),
            None => return Err(corrupt("no checksum".into())),
        }
        index.layer_descs().map_err(corrupt)?;
        Ok(index)
    }

    /// Every layer's description; an error for a bad or duplicate entry.
    pub fn layer_descs(&self) -> Result<Vec<LayerDesc>, String> {
        let mut names = BTreeSet::new();
        let mut out = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            if !names.insert(layer.name.as_str()) {
                return Err(format!("layer {} is listed twice", layer.name));
            }
            out.push(layer.desc()?);
        }
        Ok(out)
    }
}

/// Whether `dir` has an index file.
pub fn exists(dir: &Path) -> bool {
    dir.join(INDEX_FILE).exists()
}

/// Replace `<dir>/index.json` atomically and durably.
pub fn save(dir: &Path, index: &IndexPart) -> std::io::Result<()> {
    utils::fs::write_atomic(&dir.join(INDEX_FILE), &index.to_json_bytes())
}

/// Read and check `<dir>/index.json`.
pub fn load(dir: &Path) -> Result<IndexPart, IndexError> {
    let path = dir.join(INDEX_FILE);
    let bytes = fs::read(&path).map_err(|source| IndexError::Io { path: path.clone(), source })?;
    IndexPart::from_json_bytes(&path, &bytes)
}

/// Check that every layer the index names is in `dir` with its size.
pub fn check_layer_files(dir: &Path, index: &IndexPart) -> Result<(), IndexError> {
    match missing_layer_files(dir, index)?.into_iter().next() {
        Some(layer) => Err(IndexError::MissingLayer { path: dir.join(INDEX_FILE), name: layer.name }),
        None => Ok(()),
    }
}

/// The layers the index names that are not in `dir` (with remote storage,
/// they may be remote-only: evicted, or never downloaded since an attach).
/// A file that is there must have its recorded size.
pub fn missing_layer_files(dir: &Path, index: &IndexPart) -> Result<Vec<IndexLayer>, IndexError> {
    let path = dir.join(INDEX_FILE);
    let mut missing = Vec::new();
    for layer in &index.layers {
        let actual_bytes = match fs::metadata(dir.join(&layer.name)) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(layer.clone());
                continue;
            }
            Err(source) => return Err(IndexError::Io { path: dir.join(&layer.name), source }),
        };
        if actual_bytes != layer.size_bytes {
            let (name, expected_bytes) = (layer.name.clone(), layer.size_bytes);
            return Err(IndexError::LayerSize { path: path.clone(), name, expected_bytes, actual_bytes });
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IndexPart {
        let md = TimelineMetadata {
            disk_consistent_lsn: Lsn(0x1000),
            ancestor_timeline: None,
            ancestor_lsn: Lsn(0),
            pg_version: 15,
            system_id: 42,
            initdb_lsn: Lsn(0x10),
            wal_seg_size: 16 << 20,
        };
        let desc = LayerDesc { key_range: Key::MIN..Key::MAX, lsn_range: Lsn(0x10)..Lsn(0x1001), is_image: false, generation: 1 };
        IndexPart::new(1, md, vec![IndexLayer::new(desc.file_name(), &desc, 123)])
    }

    #[test]
    fn round_trip_and_fields() {
        let index = sample();
        let bytes = index.to_json_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        for field in ["\"version\": 1", "\"disk_consistent_lsn\"", "\"gc_cutoff_lsn\"", "\"kind\": \"delta\"", "\"size_bytes\": 123"] {
            assert!(text.contains(field), "{field} missing in {text}");
        }
        let back = IndexPart::from_json_bytes(Path::new("index.json"), &bytes).unwrap();
        assert_eq!(IndexPart { checksum_crc32c: None, ..back }, index);
    }

    #[test]
    fn damage_is_an_error_naming_the_file() {
        let path = Path::new("/x/index.json");
        let text = String::from_utf8(sample().to_json_bytes()).unwrap();
        let cases = [
            (text.replace("\"size_bytes\": 123", "\"size_bytes\": 124"), "checksum"),
            (text.replace("\"version\": 1", "\"version\": 9"), "unsupported version"),
            (text[..text.len() / 2].to_string(), "EOF"),
            ("[]".to_string(), "invalid type"),
        ];
        for (bad, what) in cases {
            let err = IndexPart::from_json_bytes(path, bad.as_bytes()).unwrap_err().to_string();
            assert!(err.contains("/x/index.json") && err.contains(what), "{err}");
        }
    }

    #[test]
    fn name_must_match_fields() {
        let mut index = sample();
        index.layers[0].lsn_end = Lsn(0x2000);
        let err = IndexPart::from_json_bytes(Path::new("i"), &index.to_json_bytes()).unwrap_err();
        assert!(err.to_string().contains("the name says"), "{err}");
        let mut index = sample();
        index.layers.push(index.layers[0].clone());
        let err = IndexPart::from_json_bytes(Path::new("i"), &index.to_json_bytes()).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }
}
