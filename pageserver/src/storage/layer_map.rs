//! The layers of one timeline and the search that GetPage@LSN uses.
//!
//! Owns: the open in-memory layer (if any), the frozen in-memory layers
//! waiting to be flushed (oldest first) and the historic (file) layers,
//! indexed for search.
//!
//! Structure: the key space is cut into *segments* at every historic
//! layer's key-range bounds (a `BTreeMap` from segment start to segment);
//! each segment holds the delta and the image layers covering all of it, in
//! `BTreeMap`s keyed by LSN-range start. "Newest layer covering key K
//! starting below LSN L" is then two `BTreeMap` lookups: O(log n). In-memory
//! layers are few and cover every key; they are scanned linearly. Inserting
//! or removing a layer touches the segments of its key range.
//!
//! Invariants: the open layer starts where the newest frozen or delta layer
//! ends; for any key, in-memory and delta layers never overlap in LSN; at
//! most one historic layer per (key range, LSN range, kind) — inserting
//! another replaces it (the newer generation wins); the segment map always
//! has a segment starting at `Key::MIN`. A frozen layer is replaced by its
//! delta file under the map's lock, so readers see each LSN range exactly
//! once. Callers hold the lock only for quick lookups, never across I/O or
//! `.await`; nothing here blocks or awaits (no cancellation concerns).
//!
//! [`linear`] keeps the former linear-scan search as a test oracle and
//! benchmark baseline.
pub mod linear;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use utils::lsn::Lsn;

use super::file::LayerFile;
use super::inmemory::InMemoryLayer;
use super::LayerDesc;
use crate::storage::key::Key;

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

/// A candidate delta-like layer: (LSN start, LSN end, layer).
type DeltaCandidate = (Lsn, Lsn, SearchLayer);

/// Combine the newest delta-like layer and the newest image layer found
/// below `end_lsn` into the next layer to visit (shared with [`linear`]).
fn choose(delta: Option<DeltaCandidate>, image: Option<&Arc<LayerFile>>, end_lsn: Lsn) -> Option<SearchResult> {
    let image_result =
        |img: &Arc<LayerFile>| SearchResult { layer: SearchLayer::File(Arc::clone(img)), lsn_floor: img.desc.lsn_range.start };
    match (delta, image) {
        (None, None) => None,
        (None, Some(img)) => Some(image_result(img)),
        (Some((start, _, layer)), None) => Some(SearchResult { layer, lsn_floor: start }),
        (Some((start, end, layer)), Some(img)) => {
            let img_lsn = img.desc.lsn_range.start;
            // The highest LSN the delta can hold below end_lsn.
            let top = Lsn(end.0.min(end_lsn.0).saturating_sub(1));
            if top > img_lsn {
                Some(SearchResult { layer, lsn_floor: start.max(img_lsn + 1) })
            } else {
                Some(image_result(img))
            }
        }
    }
}

/// The layers covering one key segment, by LSN-range start.
#[derive(Clone, Default)]
struct Segment {
    deltas: BTreeMap<Lsn, Arc<LayerFile>>,
    images: BTreeMap<Lsn, Arc<LayerFile>>,
}

impl Segment {
    fn of_kind(&mut self, is_image: bool) -> &mut BTreeMap<Lsn, Arc<LayerFile>> {
        if is_image {
            &mut self.images
        } else {
            &mut self.deltas
        }
    }

    fn same_as(&self, other: &Segment) -> bool {
        let eq = |a: &BTreeMap<Lsn, Arc<LayerFile>>, b: &BTreeMap<Lsn, Arc<LayerFile>>| {
            a.len() == b.len() && a.iter().zip(b).all(|((la, a), (lb, b))| la == lb && Arc::ptr_eq(a, b))
        };
        eq(&self.deltas, &other.deltas) && eq(&self.images, &other.images)
    }
}

/// Sort key and identity of a historic layer (generation left out).
type LayerId = (Lsn, Lsn, Key, Key, bool);

fn layer_id(desc: &LayerDesc) -> LayerId {
    (desc.lsn_range.start, desc.lsn_range.end, desc.key_range.start, desc.key_range.end, desc.is_image)
}

/// A multiset of LSNs.
#[derive(Default)]
struct LsnCounts(BTreeMap<Lsn, usize>);

impl LsnCounts {
    fn add(&mut self, lsn: Lsn) {
        *self.0.entry(lsn).or_default() += 1;
    }

    fn remove(&mut self, lsn: Lsn) {
        if let Some(n) = self.0.get_mut(&lsn) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&lsn);
            }
        }
    }

    fn max(&self) -> Option<Lsn> {
        self.0.keys().next_back().copied()
    }

    fn count_above(&self, lsn: Lsn) -> usize {
        self.0.range(lsn + 1..).map(|(_, n)| n).sum()
    }
}

pub struct LayerMap {
    pub open: Option<Arc<InMemoryLayer>>,
    pub frozen: Vec<Arc<InMemoryLayer>>,
    historic: BTreeMap<LayerId, Arc<LayerFile>>,
    segments: BTreeMap<Key, Segment>,
    delta_starts: LsnCounts,
    delta_ends: LsnCounts,
    image_lsns: LsnCounts,
}

impl Default for LayerMap {
    fn default() -> Self {
        LayerMap {
            open: None,
            frozen: Vec::new(),
            historic: BTreeMap::new(),
            segments: BTreeMap::from([(Key::MIN, Segment::default())]),
            delta_starts: LsnCounts::default(),
            delta_ends: LsnCounts::default(),
            image_lsns: LsnCounts::default(),
        }
    }
}

impl LayerMap {
    /// The historic layers, by LSN start, then LSN end, then key range.
    pub fn historic(&self) -> impl Iterator<Item = &Arc<LayerFile>> + '_ {
        self.historic.values()
    }

    pub fn historic_len(&self) -> usize {
        self.historic.len()
    }

    /// The historic layer with exactly this description (any generation).
    pub fn get(&self, desc: &LayerDesc) -> Option<&Arc<LayerFile>> {
        self.historic.get(&layer_id(desc))
    }

    /// Add a historic layer, replacing one with the same ranges and kind.
    pub fn insert(&mut self, layer: Arc<LayerFile>) {
        if let Some(old) = self.historic.get(&layer_id(&layer.desc)).cloned() {
            self.remove(&old.desc);
        }
        let desc = &layer.desc;
        self.count(desc, true);
        let keys = desc.key_range.clone();
        if keys.start < keys.end {
            self.split_at(keys.start);
            self.split_at(keys.end);
            for (_, seg) in self.segments.range_mut(keys) {
                seg.of_kind(desc.is_image).insert(desc.lsn_range.start, Arc::clone(&layer));
            }
        }
        self.historic.insert(layer_id(desc), layer);
    }

    /// Remove the historic layer described by `desc` (same generation);
    /// returns it if it was there.
    pub fn remove(&mut self, desc: &LayerDesc) -> Option<Arc<LayerFile>> {
        let id = layer_id(desc);
        if self.historic.get(&id)?.desc.generation != desc.generation {
            return None;
        }
        let layer = self.historic.remove(&id)?;
        self.count(desc, false);
        let keys = desc.key_range.clone();
        if keys.start < keys.end {
            for (_, seg) in self.segments.range_mut(keys.clone()) {
                let map = seg.of_kind(desc.is_image);
                if map.get(&desc.lsn_range.start).is_some_and(|l| Arc::ptr_eq(l, &layer)) {
                    map.remove(&desc.lsn_range.start);
                }
            }
            self.merge_at(keys.start);
            self.merge_at(keys.end);
        }
        Some(layer)
    }

    fn count(&mut self, desc: &LayerDesc, add: bool) {
        let op = |c: &mut LsnCounts, lsn: Lsn| if add { c.add(lsn) } else { c.remove(lsn) };
        if desc.is_image {
            op(&mut self.image_lsns, desc.lsn_range.start);
        } else {
            op(&mut self.delta_starts, desc.lsn_range.start);
            op(&mut self.delta_ends, desc.lsn_range.end);
        }
    }

    /// Make `at` a segment boundary (no-op if it is one).
    fn split_at(&mut self, at: Key) {
        if self.segments.contains_key(&at) {
            return;
        }
        if let Some((_, seg)) = self.segments.range(..at).next_back() {
            let copy = seg.clone();
            self.segments.insert(at, copy);
        }
    }

    /// Drop the boundary at `at` if the segments on both sides are equal.
    fn merge_at(&mut self, at: Key) {
        if at == Key::MIN {
            return;
        }
        let (Some(this), Some((_, prev))) = (self.segments.get(&at), self.segments.range(..at).next_back()) else {
            return;
        };
        if this.same_as(prev) {
            self.segments.remove(&at);
        }
    }

    fn segment(&self, key: Key) -> Option<&Segment> {
        self.segments.range(..=key).next_back().map(|(_, s)| s)
    }

    /// The newest in-memory layer starting below `end_lsn`.
    fn in_memory_candidate(&self, end_lsn: Lsn) -> Option<DeltaCandidate> {
        let mut best: Option<DeltaCandidate> = None;
        let frozen = self.frozen.iter().map(|f| (f, f.end_lsn().unwrap_or(Lsn::MAX)));
        for (layer, end) in self.open.iter().map(|o| (o, Lsn::MAX)).chain(frozen) {
            if layer.start_lsn < end_lsn && best.as_ref().is_none_or(|(s, _, _)| layer.start_lsn > *s) {
                best = Some((layer.start_lsn, end, SearchLayer::InMemory(Arc::clone(layer))));
            }
        }
        best
    }

    /// The next layer holding data for `key` below `end_lsn` (exclusive):
    /// the newest delta-like layer (in-memory or delta file) unless an image
    /// layer at or above everything that delta holds below `end_lsn`.
    pub fn search(&self, key: Key, end_lsn: Lsn) -> Option<SearchResult> {
        let seg = self.segment(key);
        let image = seg.and_then(|s| s.images.range(..end_lsn).next_back()).map(|(_, l)| l);
        let file_delta = seg.and_then(|s| s.deltas.range(..end_lsn).next_back()).map(|(_, l)| l);
        let file_delta =
            file_delta.map(|l| (l.desc.lsn_range.start, l.desc.lsn_range.end, SearchLayer::File(Arc::clone(l))));
        let delta = match (self.in_memory_candidate(end_lsn), file_delta) {
            (Some(m), Some(f)) => Some(if f.0 > m.0 { f } else { m }),
            (m, f) => m.or(f),
        };
        choose(delta, image, end_lsn)
    }

    /// Every historic layer overlapping `key_range` with LSN start below
    /// `end_lsn`, in [`LayerMap::historic`] order (for vectored reads).
    pub fn overlapping(&self, key_range: Range<Key>, end_lsn: Lsn) -> Vec<Arc<LayerFile>> {
        if key_range.start >= key_range.end {
            return Vec::new();
        }
        let first = self.segments.range(..=key_range.start).next_back().map_or(Key::MIN, |(k, _)| *k);
        let mut found = BTreeMap::new();
        for (_, seg) in self.segments.range(first..key_range.end) {
            for (_, l) in seg.deltas.range(..end_lsn).chain(seg.images.range(..end_lsn)) {
                found.entry(layer_id(&l.desc)).or_insert_with(|| Arc::clone(l));
            }
        }
        found.into_values().collect()
    }

    /// Where the next open layer starts.
    pub fn next_open_start(&self, default: Lsn) -> Lsn {
        let frozen_end = self.frozen.last().and_then(|f| f.end_lsn());
        frozen_end.or(self.delta_ends.max()).map_or(default, |e| e.max(default))
    }

    /// The LSN up to which images cover all of `key_range`: the minimum,
    /// over the key segments in the range, of the newest image LSN at or
    /// below `upto_lsn`; `None` if some segment has no such image. Every
    /// key in the range then has an image at an LSN in `[result, upto_lsn]`.
    pub fn image_coverage(&self, key_range: Range<Key>, upto_lsn: Lsn) -> Option<Lsn> {
        if key_range.start >= key_range.end {
            return None;
        }
        let first = self.segments.range(..=key_range.start).next_back().map_or(Key::MIN, |(k, _)| *k);
        let mut coverage = Lsn::MAX;
        for (_, seg) in self.segments.range(first..key_range.end) {
            let (newest, _) = seg.images.range(..=upto_lsn).next_back()?;
            coverage = coverage.min(*newest);
        }
        Some(coverage)
    }

    /// Delta files newer than the newest image layer (image creation trigger).
    pub fn deltas_since_last_image(&self) -> usize {
        match self.image_lsns.max() {
            Some(last_image) => self.delta_starts.count_above(last_image),
            None => self.delta_starts.0.values().sum(),
        }
    }
}

#[cfg(test)]
mod tests;
