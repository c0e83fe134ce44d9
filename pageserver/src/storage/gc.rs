//! Garbage collection of layer files: which historic layers of a timeline
//! no read will ever visit again.
//!
//! Owns: the removal rule and the result type. The timeline owns the
//! cutoff, the locking and the order of durable steps (see
//! [`crate::tenant::timeline::Timeline::gc_now`]).
//!
//! Rule: let `m` be the lowest LSN of an image that shadows a layer with
//! LSN range `[s, e)` ([`shadowing_image_lsn`]): `e - 1` for a delta (its
//! newest record; an image at LSN `i` holds every record at or below `i`),
//! `e` for an image layer (a strictly newer image). The layer may be
//! removed when
//! * every key it holds has an image at an LSN in `[m, cutoff]` — so reads
//!   at or above the cutoff find that image first (this implies `m <=
//!   cutoff`: nothing it holds is above the cutoff unshadowed); and
//! * for every retain LSN `r` (a child branch point) with `s <= r`, every
//!   key it holds has an image at an LSN in `[m, r]` — so the child's reads
//!   at `r` do not need it either.
//!
//! (Flushes end a delta at `e` with `disk_consistent_lsn = e - 1`, and
//! image layers are made at `disk_consistent_lsn`: the newest delta below
//! an image typically ends exactly one LSN above it. Requiring the image
//! at `e` instead of `e - 1` kept such a delta as long as its image was
//! the newest — for ever on a partition that stops changing.)
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
//! Images that free a delta ([`partitions_freeing_deltas`]): image
//! creation is driven by the number of deltas with data above a
//! partition's image (`image_creation_threshold`) and by their weight
//! (`image_creation_delta_percent`), so a partition written lightly by
//! fewer deltas than that (a catalog touched once by autovacuum, a few rows
//! of a table left alone since) would never get a newer image, and every
//! delta holding a few of its keys — an L0 spans the whole key space —
//! would be kept for ever: on a steady workload the L0s pile up. So a delta
//! below the cutoff that no branch point needs, and that only images of a
//! few partitions keep from being removed, gets those images: when their
//! keys' pages weigh at most half the delta's bytes (the pass writes less
//! than it frees, and a database that did not change is never copied
//! whole).
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
use super::partition::{class_start, Partition};
use super::{LayerDesc, LayerKindCounts};
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

/// Whether images in `[from, upto]` cover every run.
fn covered(map: &LayerMap, runs: &[Range<Key>], from: Lsn, upto: Lsn) -> bool {
    runs.iter().all(|r| map.image_coverage(r.clone(), upto).is_some_and(|c| c >= from))
}

/// The lowest LSN an image must have to make `desc` unnecessary for the
/// keys it covers. An image at LSN `i` holds every record at or below `i`
/// (the search reads a delta only for LSNs above the image). So a delta
/// `[s, e)`, whose newest record is at `e - 1`, is shadowed by an image at
/// `e - 1` or later; an image layer `[i, i + 1)` only by a strictly newer
/// image, at `i + 1 = e` or later (never by itself).
pub fn shadowing_image_lsn(desc: &LayerDesc) -> Lsn {
    let end = desc.lsn_range.end;
    if desc.is_image {
        end
    } else {
        Lsn(end.0.saturating_sub(1)).max(desc.lsn_range.start)
    }
}

/// The partitions (indexes into `parts`) whose images at `lsn` would let
/// GC remove a delta of `stale` (deltas below the cutoff that no branch
/// point needs, with their [`held_key_runs`]), by the rule of the module
/// documentation: the partitions overlapping the delta's runs whose images
/// (at or below `lsn`) do not shadow it, chosen when their pages weigh at
/// most half the delta's bytes. Sorted.
pub fn partitions_freeing_deltas(map: &LayerMap, parts: &[Partition], stale: &[GcCandidate], lsn: Lsn) -> Vec<usize> {
    let mut chosen = vec![false; parts.len()];
    for c in stale {
        let from = shadowing_image_lsn(&c.layer.desc);
        if from > lsn {
            continue;
        }
        let uncovered: Vec<usize> = (0..parts.len())
            .filter(|&i| !chosen[i])
            .filter(|&i| c.key_runs.iter().any(|r| overlaps(r, &parts[i].key_range)))
            .filter(|&i| map.image_coverage(parts[i].key_range.clone(), lsn).is_none_or(|cov| cov < from))
            .collect();
        let image_bytes: u64 = uncovered.iter().map(|&i| parts[i].keys.len() as u64 * IMAGE_BYTES_PER_KEY).sum();
        if !uncovered.is_empty() && image_bytes.saturating_mul(2) <= c.layer.size_bytes {
            for i in uncovered {
                chosen[i] = true;
            }
        }
    }
    (0..parts.len()).filter(|&i| chosen[i]).collect()
}

/// What one key weighs in an image layer (a page), for
/// [`partitions_freeing_deltas`].
const IMAGE_BYTES_PER_KEY: u64 = postgres_ffi::pg_constants::BLCKSZ as u64;

fn overlaps(a: &Range<Key>, b: &Range<Key>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Whether the rule (module documentation) allows removing `c`.
pub fn removable(map: &LayerMap, c: &GcCandidate, cutoff: Lsn, retain_lsns: &[Lsn]) -> bool {
    let lsns = &c.layer.desc.lsn_range;
    let from = shadowing_image_lsn(&c.layer.desc);
    from <= cutoff
        && covered(map, &c.key_runs, from, cutoff)
        && retain_lsns.iter().all(|r| lsns.start > *r || covered(map, &c.key_runs, from, *r))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn part(keys: Range<u32>, n_keys: usize) -> Partition {
        let key = |f6| Key { field1: 3, field6: f6, ..Key::MIN };
        Partition { key_range: key(keys.start)..key(keys.end), keys: (0..n_keys as u32).map(|i| key(keys.start + i)).collect() }
    }

    /// A big delta held back only by a small partition without a newer
    /// image gets that image; one held back by partitions as big as itself
    /// does not (that is the threshold's job), nor one above `lsn`.
    #[test]
    fn images_are_chosen_only_where_they_free_more_than_they_cost() {
        let key = |f6| Key { field1: 3, field6: f6, ..Key::MIN };
        let mut map = LayerMap::default();
        map.insert(layer(true, 0..30, 0x10..0x11)); // the load-time image
        map.insert(layer(true, 0..10, 0x30..0x31)); // the busy partition's newer image
        let mut stale = Arc::new(LayerFile::new("d".into(), layer(false, 0..30, 0x11..0x20).desc.clone(), 100 * 8192));
        let parts = [part(0..10, 100), part(10..20, 10), part(20..30, 1000)];
        let held = |l: &Arc<LayerFile>, runs: Vec<Range<Key>>| GcCandidate { layer: Arc::clone(l), key_runs: runs };
        // Keys in the busy partition (imaged at 0x30) and in the small one.
        let c = held(&stale, vec![key(1)..key(5), key(12)..key(13)]);
        assert_eq!(partitions_freeing_deltas(&map, &parts, std::slice::from_ref(&c), Lsn(0x40)), vec![1]);
        // ... and in the big one too: 1,010 pages for a delta of 100 pages.
        let c = held(&stale, vec![key(1)..key(5), key(12)..key(25)]);
        assert!(partitions_freeing_deltas(&map, &parts, &[c], Lsn(0x40)).is_empty());
        // An image at `lsn` must be able to shadow it.
        let c = held(&stale, vec![key(12)..key(13)]);
        assert!(partitions_freeing_deltas(&map, &parts, std::slice::from_ref(&c), Lsn(0x1e)).is_empty());
        // Once the small partition has its image, nothing more is chosen,
        // and GC removes the delta.
        map.insert(layer(true, 10..20, 0x40..0x41));
        map.insert(Arc::clone(&stale));
        assert!(partitions_freeing_deltas(&map, &parts, std::slice::from_ref(&c), Lsn(0x40)).is_empty());
        assert!(removable(&map, &c, Lsn(0x40), &[]));
        stale = Arc::new(LayerFile::new("e".into(), layer(false, 0..30, 0x41..0x50).desc.clone(), 8192));
        let c = held(&stale, vec![key(12)..key(13)]);
        assert!(partitions_freeing_deltas(&map, &parts, &[c], Lsn(0x60)).is_empty(), "10 pages to free 1 page");
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

    /// What a flush followed by image creation leaves: the delta ends one
    /// LSN above the image (`end` is exclusive; the image holds the delta's
    /// last record at `end - 1`).
    #[test]
    fn a_delta_ending_one_lsn_above_an_image_is_shadowed_by_it() {
        let old_image = layer(true, 0..10, 0x10..0x11);
        let delta = layer(false, 0..10, 0x11..0x20);
        let image = layer(true, 0..10, 0x1f..0x20);
        let map = {
            let mut m = LayerMap::default();
            for l in [&old_image, &delta, &image] {
                m.insert(Arc::clone(l));
            }
            m
        };
        assert!(removable(&map, &candidate(&delta), Lsn(0x40), &[]), "image at end - 1 holds everything the delta does");
        assert!(removable(&map, &candidate(&old_image), Lsn(0x40), &[]));
        assert!(!removable(&map, &candidate(&image), Lsn(0x40), &[]), "the newest image never shadows itself");
        // The cutoff at the image: reads at or above it find the image.
        assert!(removable(&map, &candidate(&delta), Lsn(0x1f), &[]));
        assert!(!removable(&map, &candidate(&delta), Lsn(0x1e), &[]), "a read at 0x1e needs the delta");
        // Branch points: one at the image reads the image; one below it
        // needs the delta's records up to the branch point.
        assert!(removable(&map, &candidate(&delta), Lsn(0x40), &[Lsn(0x1f)]));
        assert!(!removable(&map, &candidate(&delta), Lsn(0x40), &[Lsn(0x1e)]));
        assert!(!removable(&map, &candidate(&old_image), Lsn(0x40), &[Lsn(0x1e)]), "the branch reads the delta on top of it");
    }

    /// The symmetric case: a delta holding a record above the image (its
    /// end two or more LSNs above it) is still needed.
    #[test]
    fn a_delta_with_a_record_above_the_image_is_kept() {
        let delta = layer(false, 0..10, 0x11..0x21);
        let image = layer(true, 0..10, 0x1f..0x20);
        let mut map = LayerMap::default();
        for l in [&delta, &image] {
            map.insert(Arc::clone(l));
        }
        assert!(!removable(&map, &candidate(&delta), Lsn(0x40), &[]), "the record at 0x20 is not in the image");
        // An image at exactly the delta's last LSN, but of only part of its keys.
        let partial = layer(true, 0..5, 0x20..0x21);
        map.insert(Arc::clone(&partial));
        assert!(!removable(&map, &candidate(&delta), Lsn(0x40), &[]), "keys 5..10 have no image at 0x20");
        let rest = layer(true, 5..10, 0x20..0x21);
        map.insert(rest);
        assert!(removable(&map, &candidate(&delta), Lsn(0x40), &[]));
        assert!(!removable(&map, &candidate(&partial), Lsn(0x40), &[]), "newest image of keys 0..5");
        // A one-LSN delta [0x30, 0x31): shadowed by an image at 0x30 only.
        let short = layer(false, 0..10, 0x30..0x31);
        map.insert(Arc::clone(&short));
        assert!(!removable(&map, &candidate(&short), Lsn(0x40), &[]));
        map.insert(layer(true, 0..10, 0x30..0x31));
        assert!(removable(&map, &candidate(&short), Lsn(0x40), &[]));
    }
}
