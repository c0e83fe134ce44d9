//! Garbage collection of layer files: which historic layers of a timeline
//! no read will ever visit again.
//!
//! Owns: the removal rule and the result type. The timeline owns the
//! cutoff, the locking and the order of durable steps (see
//! [`crate::tenant::timeline::Timeline::gc_now`]).
//!
//! Rule: a layer with LSN range `[s, e)` may be removed when
//! * it lies entirely below the cutoff (`e <= cutoff`), and every key it
//!   holds has an image at an LSN in `[e, cutoff]` — so reads at or above
//!   the cutoff find that image first; and
//! * for every retain LSN `r` (a child branch point) with `s <= r`, every
//!   key it holds has an image at an LSN in `[e, r]` — so the child's reads
//!   at `r` do not need it either.
//!
//! "Every key it holds": for an image layer, its whole key range (a key
//! missing from an image means "absent at that LSN", so the range shadows
//! older layers and must stay covered); for a delta layer, the runs of the
//! keys it actually holds, grouped by key class (a delta holding no value
//! of a key contributes nothing to that key's reads). Coverage is
//! [`LayerMap::image_coverage`] of the layer map before removal; the
//! images that provide it are the newest at or below the cutoff (or `r`)
//! for their segment, which the rule itself never removes, so removing all
//! chosen layers at once is safe.
//!
//! Remote layers: GC never downloads. A remote delta layer's keys are the
//! runs remembered from when it was resident, or else its whole key range
//! (see [`held_key_runs`]); deleting a removed remote layer's local file
//! finds none.
//!
//! Cancellation: nothing here awaits; [`held_key_runs`] reads a layer's
//! index (blocking file I/O, callers use `spawn_blocking`).
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;
use utils::lsn::Lsn;

use super::file::{LayerFile, LayerFileError};
use super::layer_map::LayerMap;
use super::partition::class_start;
use super::LayerKindCounts;
use crate::storage::key::Key;

/// What one GC pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcResult {
    pub layers_removed: usize,
    /// Bytes of the removed layer files.
    #[serde(rename = "bytes_reclaimed")]
    pub bytes_removed: u64,
    /// The timeline's GC cutoff after the pass.
    #[serde(rename = "gc_cutoff_lsn")]
    pub cutoff: Lsn,
    /// `last_record_lsn - gc_horizon` at the pass.
    #[serde(rename = "horizon_cutoff_lsn")]
    pub horizon_cutoff: Lsn,
    /// The LSN at `now - pitr_interval`; `None` when no commit time is known.
    #[serde(rename = "pitr_cutoff_lsn")]
    pub pitr_cutoff: Option<Lsn>,
    /// Child branch points the pass kept readable.
    pub retain_lsns: Vec<Lsn>,
    pub layers_before: LayerKindCounts,
    pub layers_after: LayerKindCounts,
    pub elapsed_ms: u64,
}

/// A layer considered for removal with the key ranges it must keep covered.
pub struct GcCandidate {
    pub layer: Arc<LayerFile>,
    pub key_runs: Vec<Range<Key>>,
}

/// The key ranges that must be covered by newer images before `layer` can
/// go: the whole range of an image layer; per key class, the span of the
/// keys a delta layer holds. Blocking (reads a resident delta layer's
/// index once; the runs are kept with the layer, also after eviction).
///
/// GC downloads nothing: a remote delta layer whose runs are not known
/// (not read since an attach or a restart) counts as holding its whole key
/// range — conservative, it may be kept longer, never removed early.
pub fn held_key_runs(layer: &Arc<LayerFile>) -> Result<Vec<Range<Key>>, LayerFileError> {
    if layer.desc.is_image {
        return Ok(vec![layer.desc.key_range.clone()]);
    }
    if let Some(runs) = layer.gc_key_runs.get() {
        return Ok(runs.clone());
    }
    let pin = layer.pin_untouched();
    if !pin.is_resident() {
        return Ok(vec![layer.desc.key_range.clone()]);
    }
    let mut runs: Vec<(Key, Range<Key>)> = Vec::new();
    layer.for_each_key(|key| match runs.last_mut() {
        Some((class, run)) if *class == class_start(key) => run.end = key.next(),
        _ => runs.push((class_start(key), key..key.next())),
    })?;
    let runs: Vec<Range<Key>> = runs.into_iter().map(|(_, r)| r).collect();
    let _ = layer.gc_key_runs.set(runs.clone());
    Ok(runs)
}

/// Whether images in `[lsn_end, upto]` cover every run.
fn covered(map: &LayerMap, runs: &[Range<Key>], lsn_end: Lsn, upto: Lsn) -> bool {
    runs.iter().all(|r| map.image_coverage(r.clone(), upto).is_some_and(|c| c >= lsn_end))
}

/// Whether the rule (module documentation) allows removing `c`.
pub fn removable(map: &LayerMap, c: &GcCandidate, cutoff: Lsn, retain_lsns: &[Lsn]) -> bool {
    let lsns = &c.layer.desc.lsn_range;
    lsns.end <= cutoff
        && covered(map, &c.key_runs, lsns.end, cutoff)
        && retain_lsns.iter().all(|r| lsns.start > *r || covered(map, &c.key_runs, lsns.end, *r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LayerDesc;

    fn layer(is_image: bool, keys: Range<u32>, lsns: Range<u64>) -> Arc<LayerFile> {
        let key = |f6| Key { field1: 3, field6: f6, ..Key::MIN };
        let desc = LayerDesc {
            key_range: key(keys.start)..key(keys.end),
            lsn_range: Lsn(lsns.start)..Lsn(lsns.end),
            is_image,
            generation: 1,
        };
        Arc::new(LayerFile::new(desc.file_name().into(), desc, 1))
    }

    fn candidate(l: &Arc<LayerFile>) -> GcCandidate {
        GcCandidate { layer: Arc::clone(l), key_runs: vec![l.desc.key_range.clone()] }
    }

    #[test]
    fn a_remote_delta_counts_its_whole_key_range_until_its_keys_are_known() {
        let d = layer(false, 0..10, 0x11..0x20);
        let remote = Arc::new(LayerFile::new_remote("/nonexistent/layer".into(), d.desc.clone(), 1));
        // No file to read: the conservative answer, without an error.
        assert_eq!(held_key_runs(&remote).unwrap(), vec![remote.desc.key_range.clone()]);
        let key = |f6| Key { field1: 3, field6: f6, ..Key::MIN };
        let _ = remote.gc_key_runs.set(vec![key(2)..key(3)]);
        assert_eq!(held_key_runs(&remote).unwrap(), vec![key(2)..key(3)], "runs seen while resident are kept");
        // The conservative range keeps a delta that the known runs would let go.
        let mut map = LayerMap::default();
        for l in [layer(true, 0..5, 0x20..0x21), layer(true, 0..10, 0x05..0x06)] {
            map.insert(l);
        }
        let known = GcCandidate { layer: Arc::clone(&remote), key_runs: vec![key(2)..key(3)] };
        let unknown = GcCandidate { layer: Arc::clone(&remote), key_runs: vec![remote.desc.key_range.clone()] };
        assert!(removable(&map, &known, Lsn(0x40), &[]));
        assert!(!removable(&map, &unknown, Lsn(0x40), &[]));
    }

    #[test]
    fn covered_below_cutoff_is_removed_unless_a_branch_point_needs_it() {
        let old_image = layer(true, 0..10, 0x10..0x11);
        let delta = layer(false, 0..10, 0x11..0x20);
        let new_image = layer(true, 0..10, 0x20..0x21);
        let partial_image = layer(true, 0..5, 0x30..0x31);
        let mut map = LayerMap::default();
        for l in [&old_image, &delta, &new_image, &partial_image] {
            map.insert(Arc::clone(l));
        }
        let cutoff = Lsn(0x40);
        assert!(removable(&map, &candidate(&old_image), cutoff, &[]));
        assert!(removable(&map, &candidate(&delta), cutoff, &[]));
        assert!(!removable(&map, &candidate(&new_image), cutoff, &[]), "0x20 is the newest image of keys 5..10");
        assert!(!removable(&map, &candidate(&partial_image), cutoff, &[]), "newest");
        assert!(!removable(&map, &candidate(&delta), Lsn(0x1f), &[]), "not below the cutoff");
        assert!(!removable(&map, &candidate(&delta), cutoff, &[Lsn(0x18)]), "branch point inside the delta");
        assert!(!removable(&map, &candidate(&old_image), cutoff, &[Lsn(0x18)]), "the branch reads the image");
        assert!(removable(&map, &candidate(&delta), cutoff, &[Lsn(0x25)]), "the branch reads the 0x20 image");
        assert!(removable(&map, &candidate(&delta), cutoff, &[Lsn(0x5)]), "branch point below the layer");
    }
}
