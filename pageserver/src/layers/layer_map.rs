//! The layers of one timeline and the search that GetPage@LSN uses.
//!
//! Owns: the open in-memory layer (if any), the frozen in-memory layers
//! waiting to be flushed (oldest first) and the historic (file) layers.
//! Invariants: the open layer starts where the newest frozen or delta layer
//! ends; in-memory and delta layers never overlap in LSN; a frozen layer is
//! replaced by its delta file atomically (under the map's lock), so readers
//! always see each LSN range exactly once. Callers hold the lock only for
//! quick lookups, never across I/O or `.await`.
use std::sync::Arc;

use utils::lsn::Lsn;

use super::file::LayerFile;
use super::inmemory::InMemoryLayer;
use crate::key::Key;

/// A layer to visit.
#[derive(Clone)]
pub enum SearchLayer {
    InMemory(Arc<InMemoryLayer>),
    File(Arc<LayerFile>),
}

/// The result of [`LayerMap::search`]: visit `layer` for LSNs in
/// `[lsn_floor, end_lsn)`, then continue below `lsn_floor`.
pub struct SearchResult {
    pub layer: SearchLayer,
    pub lsn_floor: Lsn,
}

#[derive(Default)]
pub struct LayerMap {
    pub open: Option<Arc<InMemoryLayer>>,
    pub frozen: Vec<Arc<InMemoryLayer>>,
    pub historic: Vec<Arc<LayerFile>>,
}

impl LayerMap {
    /// The next layer holding data for `key` below `end_lsn` (exclusive):
    /// the newest delta-like layer (in-memory or delta file) unless an image
    /// layer at or above everything that delta holds below `end_lsn`.
    pub fn search(&self, key: Key, end_lsn: Lsn) -> Option<SearchResult> {
        // Newest image layer covering the key below end_lsn.
        let image = self
            .historic
            .iter()
            .filter(|l| l.desc.is_image && l.desc.key_range.contains(&key) && l.desc.lsn_range.start < end_lsn)
            .max_by_key(|l| l.desc.lsn_range.start);
        // Newest delta-like layer starting below end_lsn.
        let mut delta: Option<(Lsn, Lsn, SearchLayer)> = None;
        let mut consider = |start: Lsn, end: Lsn, layer: SearchLayer| {
            if start < end_lsn && delta.as_ref().is_none_or(|(s, _, _)| start > *s) {
                delta = Some((start, end, layer));
            }
        };
        if let Some(open) = &self.open {
            consider(open.start_lsn, Lsn::MAX, SearchLayer::InMemory(Arc::clone(open)));
        }
        for f in &self.frozen {
            consider(f.start_lsn, f.end_lsn().unwrap_or(Lsn::MAX), SearchLayer::InMemory(Arc::clone(f)));
        }
        for l in self.historic.iter().filter(|l| !l.desc.is_image && l.desc.key_range.contains(&key)) {
            consider(l.desc.lsn_range.start, l.desc.lsn_range.end, SearchLayer::File(Arc::clone(l)));
        }
        match (delta, image) {
            (None, None) => None,
            (None, Some(img)) => {
                Some(SearchResult { layer: SearchLayer::File(Arc::clone(img)), lsn_floor: img.desc.lsn_range.start })
            }
            (Some((start, _, layer)), None) => Some(SearchResult { layer, lsn_floor: start }),
            (Some((start, end, layer)), Some(img)) => {
                let img_lsn = img.desc.lsn_range.start;
                // The highest LSN the delta can hold below end_lsn.
                let top = Lsn(end.0.min(end_lsn.0).saturating_sub(1));
                if top > img_lsn {
                    Some(SearchResult { layer, lsn_floor: start.max(img_lsn + 1) })
                } else {
                    Some(SearchResult { layer: SearchLayer::File(Arc::clone(img)), lsn_floor: img_lsn })
                }
            }
        }
    }

    /// Where the next open layer starts.
    pub fn next_open_start(&self, default: Lsn) -> Lsn {
        let frozen_end = self.frozen.last().and_then(|f| f.end_lsn());
        let delta_end = self.historic.iter().filter(|l| !l.desc.is_image).map(|l| l.desc.lsn_range.end).max();
        frozen_end.or(delta_end).map_or(default, |e| e.max(default))
    }

    /// Delta files newer than the newest image layer (image creation trigger).
    pub fn deltas_since_last_image(&self) -> usize {
        let last_image = self.historic.iter().filter(|l| l.desc.is_image).map(|l| l.desc.lsn_range.start).max();
        self.historic
            .iter()
            .filter(|l| !l.desc.is_image && last_image.is_none_or(|i| l.desc.lsn_range.start > i))
            .count()
    }
}
