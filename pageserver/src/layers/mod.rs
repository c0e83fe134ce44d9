//! Layered storage of one timeline: an open in-memory layer takes writes;
//! it is frozen at a size/age threshold and flushed to an immutable delta
//! layer file; image layer files hold materialised values for a key range
//! at one LSN. The [`layer_map::LayerMap`] finds, for a (key, LSN), the next
//! layer to visit.
//!
//! * [`inmemory`]: the in-memory layer.
//! * [`file`]: the on-disk format shared by delta and image layers.
//! * [`layer_map`]: the set of layers of a timeline and the search.
//!
//! Invariants: LSN ranges are half-open `[start, end)`; a value's LSN is the
//! *end* LSN of the WAL record that produced it. Delta layers of a timeline
//! never overlap in LSN (each flush covers every key it holds for its LSN
//! range); an image layer at LSN `L` is described as `[L, L+1)` and holds
//! every value as of `L` inclusive.
pub mod file;
pub mod inmemory;
pub mod layer_map;

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use utils::lsn::Lsn;

use crate::key::Key;
use crate::walredo::WalRecord;

/// What a layer describes: a key range and an LSN range.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerDesc {
    pub key_range: Range<Key>,
    pub lsn_range: Range<Lsn>,
    pub is_image: bool,
}

impl LayerDesc {
    /// The file name: `<keystart>-<keyend>__<lsnstart>-<lsnend>` for delta
    /// layers, `<keystart>-<keyend>__<lsn>` for image layers (hex).
    pub fn file_name(&self) -> String {
        if self.is_image {
            format!("{}-{}__{:016X}", self.key_range.start, self.key_range.end, self.lsn_range.start.0)
        } else {
            format!(
                "{}-{}__{:016X}-{:016X}",
                self.key_range.start, self.key_range.end, self.lsn_range.start.0, self.lsn_range.end.0
            )
        }
    }

    /// Parse a layer file name; `None` for other files.
    pub fn parse_file_name(name: &str) -> Option<LayerDesc> {
        let (keys, lsns) = name.split_once("__")?;
        let (ks, ke) = keys.split_once('-')?;
        let key_range = ks.parse().ok()?..ke.parse().ok()?;
        let hex = |s: &str| (s.len() == 16).then(|| u64::from_str_radix(s, 16).ok()).flatten();
        match lsns.split_once('-') {
            Some((ls, le)) => {
                Some(LayerDesc { key_range, lsn_range: Lsn(hex(ls)?)..Lsn(hex(le)?), is_image: false })
            }
            None => {
                let l = hex(lsns)?;
                Some(LayerDesc { key_range, lsn_range: Lsn(l)..Lsn(l + 1), is_image: true })
            }
        }
    }
}

impl fmt::Display for LayerDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
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

    #[test]
    fn file_names_round_trip() {
        let d = LayerDesc { key_range: Key::MIN..Key::MAX, lsn_range: Lsn(0x10)..Lsn(0x2000), is_image: false };
        assert_eq!(LayerDesc::parse_file_name(&d.file_name()), Some(d));
        let i = LayerDesc { key_range: Key::MIN..Key::MAX, lsn_range: Lsn(0x10)..Lsn(0x11), is_image: true };
        assert_eq!(LayerDesc::parse_file_name(&i.file_name()), Some(i));
        assert_eq!(LayerDesc::parse_file_name("metadata"), None);
        assert_eq!(LayerDesc::parse_file_name("x-y__z"), None);
    }
}
