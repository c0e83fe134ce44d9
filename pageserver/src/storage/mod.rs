//! Layered storage of one timeline: an open in-memory layer takes writes;
//! it is frozen at a size/age threshold and flushed to an immutable delta
//! layer file; image layer files hold materialised values for a key range
//! at one LSN. The [`layer_map::LayerMap`] finds, for a (key, LSN), the next
//! layer to visit; the [`index`] file records durably which layer files make
//! up the timeline.
//!
//! * [`inmemory`]: the in-memory layer.
//! * [`file`]: the on-disk format shared by delta and image layers.
//! * [`block_cache`]: the bounded, process-wide cache of layer index blocks.
//! * [`layer_map`]: the set of layers of a timeline and the search.
//! * [`index`]: `index.json`, the timeline's durable layer set and metadata.
//! * [`partition`]: the key partitions image layers are made for.
//! * [`gc`]: which layers garbage collection removes.
//! * [`compaction`]: merging L0 delta files into L1 files by key range.
//! * [`key`] and [`value`]: the key space and what is stored under a key.
//!
//! Layer identity: a [`LayerDesc`] (key range, LSN range, kind, generation)
//! and its file name `<keystart>-<keyend>__<lsnstart>-<lsnend>-g<generation>`
//! (image layers: `__<lsn>-g<generation>`). Names written before
//! generations existed (no `-g` suffix) load as generation 1.
//!
//! Invariants: LSN ranges are half-open `[start, end)`; a value's LSN is the
//! *end* LSN of the WAL record that produced it. Delta layers of a timeline
//! never overlap in LSN for the same key (each flush covers every key it
//! holds for its LSN range); an image layer at LSN `L` is described as
//! `[L, L+1)` and holds every value as of `L` inclusive. A layer file is
//! part of the timeline only once an index naming it is durable.
//!
//! Cancellation: nothing here awaits; file I/O is blocking and callers run
//! it in `spawn_blocking`.
pub mod block_cache;
pub mod compaction;
pub mod file;
pub mod gc;
pub mod index;
pub mod inmemory;
pub mod key;
pub mod layer_map;
pub mod partition;
pub mod value;

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use utils::lsn::Lsn;

use crate::storage::key::Key;
use crate::walredo::WalRecord;

/// The generation of the first attachment of a timeline; a later attach
/// (another pageserver, or object storage) bumps it.
pub const FIRST_GENERATION: u32 = 1;

/// What a layer describes: a key range, an LSN range, its kind and the
/// generation of the attachment that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerDesc {
    pub key_range: Range<Key>,
    pub lsn_range: Range<Lsn>,
    pub is_image: bool,
    pub generation: u32,
}

impl LayerDesc {
    /// The file name: `<keystart>-<keyend>__<lsnstart>-<lsnend>-g<generation>`
    /// for delta layers, `<keystart>-<keyend>__<lsn>-g<generation>` for
    /// image layers (keys 36 hex digits, LSNs 16, generation 8).
    pub fn file_name(&self) -> String {
        format!("{}-g{:08x}", self.legacy_file_name(), self.generation)
    }

    /// The name without generation, as files were named before
    /// generations (they load as generation 1).
    fn legacy_file_name(&self) -> String {
        let (ks, ke) = (self.key_range.start, self.key_range.end);
        if self.is_image {
            format!("{ks}-{ke}__{:016X}", self.lsn_range.start.0)
        } else {
            format!("{ks}-{ke}__{:016X}-{:016X}", self.lsn_range.start.0, self.lsn_range.end.0)
        }
    }

    /// Parse a layer file name, with or without the generation suffix
    /// (without: generation 1); `None` for other files.
    pub fn parse_file_name(name: &str) -> Option<LayerDesc> {
        let (rest, generation) = split_generation(name);
        let (keys, lsns) = rest.split_once("__")?;
        let (ks, ke) = keys.split_once('-')?;
        let key_range = ks.parse().ok()?..ke.parse().ok()?;
        let hex = |s: &str| (s.len() == 16).then(|| u64::from_str_radix(s, 16).ok()).flatten();
        let (lsn_range, is_image) = match lsns.split_once('-') {
            Some((ls, le)) => (Lsn(hex(ls)?)..Lsn(hex(le)?), false),
            None => {
                let l = hex(lsns)?;
                (Lsn(l)..Lsn(l.checked_add(1)?), true)
            }
        };
        Some(LayerDesc { key_range, lsn_range, is_image, generation })
    }

    /// The same layer description with another generation.
    pub fn with_generation(mut self, generation: u32) -> LayerDesc {
        self.generation = generation;
        self
    }
}

/// Split `-g<8 hex digits>` off a name; no suffix means generation 1.
fn split_generation(name: &str) -> (&str, u32) {
    let suffix_len = 10;
    if name.len() > suffix_len && name.is_char_boundary(name.len() - suffix_len) {
        let (rest, suffix) = name.split_at(name.len() - suffix_len);
        if let Some(hex) = suffix.strip_prefix("-g") {
            if hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                if let Ok(g) = u32::from_str_radix(hex, 16) {
                    return (rest, g);
                }
            }
        }
    }
    (name, FIRST_GENERATION)
}

impl fmt::Display for LayerDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// How many layer files of each kind a timeline has, and their bytes: L0
/// deltas (whole key space, one per flush), L1 deltas (key ranges, from
/// compaction; also delta files from before compaction existed) and images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LayerKindCounts {
    pub l0_deltas: usize,
    pub l1_deltas: usize,
    pub images: usize,
    pub size_bytes: u64,
}

impl LayerKindCounts {
    /// Count `(desc, size)` pairs.
    pub fn of<'a>(layers: impl IntoIterator<Item = (&'a LayerDesc, u64)>) -> LayerKindCounts {
        let mut c = LayerKindCounts::default();
        for (desc, size) in layers {
            match (desc.is_image, compaction::is_level0(desc)) {
                (true, _) => c.images += 1,
                (false, true) => c.l0_deltas += 1,
                (false, false) => c.l1_deltas += 1,
            }
            c.size_bytes += size;
        }
        c
    }

    pub fn total(&self) -> usize {
        self.l0_deltas + self.l1_deltas + self.images
    }
}

/// What GetPage@LSN has collected so far while walking down the layers.
#[derive(Default, Debug)]
pub struct ValueReconstructState {
    /// Records newer than `img`, newest first.
    pub records: Vec<(Lsn, WalRecord)>,
    /// The base image, once found.
    pub img: Option<(Lsn, Bytes)>,
}

/// Whether the walk can stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconstructResult {
    /// An image or an initialising record was found.
    Complete,
    /// Older versions are needed.
    Continue,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(is_image: bool, lsns: Range<Lsn>, generation: u32) -> LayerDesc {
        LayerDesc { key_range: Key::MIN..Key::MAX, lsn_range: lsns, is_image, generation }
    }

    #[test]
    fn file_names_round_trip() {
        let d = desc(false, Lsn(0x10)..Lsn(0x2000), 1);
        assert_eq!(LayerDesc::parse_file_name(&d.file_name()), Some(d.clone()));
        assert!(d.file_name().ends_with("0000000000002000-g00000001"), "{}", d.file_name());
        let i = desc(true, Lsn(0x10)..Lsn(0x11), 0xABCD);
        assert!(i.file_name().ends_with("__0000000000000010-g0000abcd"), "{}", i.file_name());
        assert_eq!(LayerDesc::parse_file_name(&i.file_name()), Some(i));
        assert_eq!(LayerDesc::parse_file_name("metadata"), None);
        assert_eq!(LayerDesc::parse_file_name("index.json"), None);
        assert_eq!(LayerDesc::parse_file_name("x-y__z"), None);
        assert_eq!(LayerDesc::parse_file_name("x-y__z-g00000001"), None);
    }

    #[test]
    fn legacy_names_load_as_generation_one() {
        let d = desc(false, Lsn(0x10)..Lsn(0x2000), 1);
        assert_eq!(LayerDesc::parse_file_name(&d.legacy_file_name()), Some(d));
        let i = desc(true, Lsn(0x10)..Lsn(0x11), 1);
        assert_eq!(LayerDesc::parse_file_name(&i.legacy_file_name()), Some(i));
        let max = desc(true, Lsn(u64::MAX)..Lsn(u64::MAX), 1);
        assert_eq!(LayerDesc::parse_file_name(&max.legacy_file_name()), None, "no overflow panic");
    }
}
