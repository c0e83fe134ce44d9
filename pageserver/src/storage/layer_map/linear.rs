//! The former layer map: historic layers in a `Vec`, every query a linear
//! scan. Kept as the oracle the randomized tests compare [`super::LayerMap`]
//! with, and as the baseline of the `layer_map` benchmark. Not used by the
//! pageserver. Owns nothing beyond its vectors; nothing blocks or awaits.
use std::sync::Arc;

use utils::lsn::Lsn;

use super::{choose, DeltaCandidate, SearchLayer, SearchResult};
use crate::storage::key::Key;
use crate::storage::file::LayerFile;
use crate::storage::inmemory::InMemoryLayer;

#[derive(Default)]
pub struct LinearLayerMap {
    pub open: Option<Arc<InMemoryLayer>>,
    pub frozen: Vec<Arc<InMemoryLayer>>,
    pub historic: Vec<Arc<LayerFile>>,
}

impl LinearLayerMap {
    /// Same contract as [`super::LayerMap::search`].
    pub fn search(&self, key: Key, end_lsn: Lsn) -> Option<SearchResult> {
        let image = self
            .historic
            .iter()
            .filter(|l| l.desc.is_image && l.desc.key_range.contains(&key) && l.desc.lsn_range.start < end_lsn)
            .max_by_key(|l| l.desc.lsn_range.start);
        let mut delta: Option<DeltaCandidate> = None;
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
        choose(delta, image, end_lsn)
    }

    /// Same contract as [`super::LayerMap::next_open_start`].
    pub fn next_open_start(&self, default: Lsn) -> Lsn {
        let frozen_end = self.frozen.last().and_then(|f| f.end_lsn());
        let delta_end = self.historic.iter().filter(|l| !l.desc.is_image).map(|l| l.desc.lsn_range.end).max();
        frozen_end.or(delta_end).map_or(default, |e| e.max(default))
    }

    /// Same contract as [`super::LayerMap::deltas_since_last_image`].
    pub fn deltas_since_last_image(&self) -> usize {
        let last_image = self.historic.iter().filter(|l| l.desc.is_image).map(|l| l.desc.lsn_range.start).max();
        self.historic
            .iter()
            .filter(|l| !l.desc.is_image && last_image.is_none_or(|i| l.desc.lsn_range.start > i))
            .count()
    }
}
