//! Search semantics of [`LayerMap`], by hand and against the linear oracle
//! on random layer sets (which keep the invariants: per key, deltas do not
//! overlap in LSN; at most one image per (key, LSN)).
use std::collections::BTreeSet;
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::linear::LinearLayerMap;
use super::*;

fn k(i: u32) -> Key {
    Key { field4: i, ..Key::MIN }
}

fn file(keys: Range<u32>, lsns: Range<u64>, is_image: bool) -> Arc<LayerFile> {
    let desc = LayerDesc { key_range: k(keys.start)..k(keys.end), lsn_range: Lsn(lsns.start)..Lsn(lsns.end), is_image, generation: 1 };
    Arc::new(LayerFile::new(PathBuf::from(desc.file_name()), desc, 0))
}

fn image(keys: Range<u32>, lsn: u64) -> Arc<LayerFile> {
    file(keys, lsn..lsn + 1, true)
}

/// (what was found, lsn_floor) in a comparable form.
fn found(r: Option<SearchResult>) -> Option<(String, Lsn)> {
    r.map(|r| {
        let what = match r.layer {
            SearchLayer::File(f) => f.desc.file_name(),
            SearchLayer::InMemory(m) => format!("mem@{}", m.start_lsn),
        };
        (what, r.lsn_floor)
    })
}

fn map_of(layers: &[Arc<LayerFile>]) -> LayerMap {
    let mut map = LayerMap::default();
    for l in layers {
        map.insert(Arc::clone(l));
    }
    map
}

#[test]
fn newest_delta_or_image_wins() {
    let (d1, i, d2) = (file(0..10, 10..20, false), image(0..5, 19), file(0..10, 20..30, false));
    let map = map_of(&[Arc::clone(&d1), Arc::clone(&i), Arc::clone(&d2)]);
    let name = |l: &Arc<LayerFile>| l.desc.file_name();
    assert_eq!(found(map.search(k(1), Lsn(30))), Some((name(&d2), Lsn(20))));
    assert_eq!(found(map.search(k(1), Lsn(20))), Some((name(&i), Lsn(19))), "image at the top of the range");
    assert_eq!(found(map.search(k(1), Lsn(19))), Some((name(&d1), Lsn(10))));
    assert_eq!(found(map.search(k(7), Lsn(20))), Some((name(&d1), Lsn(10))), "image does not cover key 7");
    assert_eq!(found(map.search(k(1), Lsn(10))), None);
    assert_eq!(found(map.search(k(10), Lsn(30))), None, "key ranges are half-open");
}

#[test]
fn delta_above_image_reads_down_to_the_image() {
    let (d, i) = (file(0..10, 10..30, false), image(0..10, 15));
    let map = map_of(&[Arc::clone(&d), Arc::clone(&i)]);
    assert_eq!(found(map.search(k(3), Lsn(30))), Some((d.desc.file_name(), Lsn(16))));
    assert_eq!(found(map.search(k(3), Lsn(16))), Some((i.desc.file_name(), Lsn(15))));
}

#[test]
fn in_memory_layers_are_newest() {
    let mut map = map_of(&[file(0..10, 10..20, false)]);
    let frozen = Arc::new(InMemoryLayer::new(Lsn(20)));
    frozen.freeze(Lsn(30));
    map.frozen.push(frozen);
    map.open = Some(Arc::new(InMemoryLayer::new(Lsn(30))));
    assert_eq!(found(map.search(k(50), Lsn(100))), Some(("mem@0/1E".into(), Lsn(30))));
    assert_eq!(found(map.search(k(50), Lsn(30))), Some(("mem@0/14".into(), Lsn(20))));
    assert_eq!(found(map.search(k(50), Lsn(20))), None);
    assert_eq!(map.next_open_start(Lsn(1)), Lsn(30));
}

#[test]
fn remove_restores_and_merges_segments() {
    let (d, i) = (file(0..100, 10..20, false), image(20..30, 25));
    let mut map = map_of(&[Arc::clone(&d), Arc::clone(&i)]);
    assert_eq!(map.deltas_since_last_image(), 0);
    assert_eq!(found(map.search(k(25), Lsn(40))).map(|f| f.1), Some(Lsn(25)));
    assert!(map.remove(&i.desc.clone().with_generation(2)).is_none(), "other generation");
    assert!(map.remove(&i.desc).is_some());
    assert!(map.remove(&i.desc).is_none());
    assert_eq!(found(map.search(k(25), Lsn(40))).map(|f| f.1), Some(Lsn(10)));
    assert_eq!(map.deltas_since_last_image(), 1);
    assert!(map.remove(&d.desc).is_some());
    assert_eq!(map.segments.len(), 1, "boundaries merged away");
    assert_eq!(map.historic_len(), 0);
    assert_eq!(map.next_open_start(Lsn(5)), Lsn(5));
}

#[test]
fn insert_replaces_the_same_layer_of_another_generation() {
    let d = file(0..10, 10..20, false);
    let newer = Arc::new(LayerFile::new(PathBuf::from("g2"), d.desc.clone().with_generation(2), 0));
    let mut map = map_of(&[d]);
    map.insert(Arc::clone(&newer));
    assert_eq!(map.historic_len(), 1);
    assert!(matches!(map.search(k(1), Lsn(20)).map(|r| r.layer), Some(SearchLayer::File(f)) if Arc::ptr_eq(&f, &newer)));
}

/// Random layers keeping the invariants: rounds of L0 deltas, L1 sets
/// (one LSN range cut by key) and image sets at fresh LSNs.
fn random_layers(rng: &mut StdRng, rounds: usize) -> (Vec<Arc<LayerFile>>, u64) {
    let mut out = Vec::new();
    let mut lsn = 0x10;
    let mut image_lsns = BTreeSet::new();
    for _ in 0..rounds {
        let len = rng.gen_range(1..20);
        match rng.gen_range(0..3) {
            0 => {
                let a = rng.gen_range(0..100);
                let b = rng.gen_range(a + 1..=100);
                out.push(file(a..b, lsn..lsn + len, false));
                lsn += len;
            }
            1 => {
                for keys in random_partition(rng) {
                    out.push(file(keys, lsn..lsn + len, false));
                }
                lsn += len;
            }
            _ => {
                let at = rng.gen_range(0x10..=lsn);
                if image_lsns.insert(at) {
                    out.extend(random_partition(rng).into_iter().map(|keys| image(keys, at)));
                }
            }
        }
    }
    (out, lsn)
}

/// Disjoint key ranges inside 0..100, some gaps.
fn random_partition(rng: &mut StdRng) -> Vec<Range<u32>> {
    let mut cuts: Vec<u32> = (0..rng.gen_range(2..6)).map(|_| rng.gen_range(0..=100)).collect();
    cuts.sort();
    cuts.dedup();
    cuts.windows(2).filter(|_| rng.gen_bool(0.8)).map(|w| w[0]..w[1]).collect()
}

fn compare(map: &LayerMap, oracle: &LinearLayerMap, rng: &mut StdRng, top_lsn: u64) {
    for _ in 0..300 {
        let (key, end) = (k(rng.gen_range(0..105)), Lsn(rng.gen_range(0..top_lsn + 5)));
        assert_eq!(found(map.search(key, end)), found(oracle.search(key, end)), "search({key:?}, {end})");
        let a = rng.gen_range(0..105);
        let keys = k(a)..k(rng.gen_range(a..106));
        let got: Vec<String> = map.overlapping(keys.clone(), end).iter().map(|l| l.desc.file_name()).collect();
        let mut want: Vec<&Arc<LayerFile>> = oracle
            .historic
            .iter()
            .filter(|l| keys.start < keys.end && l.desc.key_range.start < keys.end && keys.start < l.desc.key_range.end)
            .filter(|l| l.desc.lsn_range.start < end)
            .collect();
        want.sort_by_key(|l| layer_id(&l.desc));
        let want: Vec<String> = want.iter().map(|l| l.desc.file_name()).collect();
        assert_eq!(got, want, "overlapping({keys:?}, {end})");
    }
    let default = Lsn(rng.gen_range(0..top_lsn + 5));
    assert_eq!(map.next_open_start(default), oracle.next_open_start(default));
    assert_eq!(map.deltas_since_last_image(), oracle.deltas_since_last_image());
}

#[test]
fn random_layer_sets_match_the_linear_oracle() {
    for seed in 0..200 {
        let mut rng = StdRng::seed_from_u64(seed);
        let rounds = rng.gen_range(0..40);
        let (layers, top_lsn) = random_layers(&mut rng, rounds);
        let mut map = map_of(&layers);
        let mut oracle = LinearLayerMap { historic: layers.clone(), ..Default::default() };
        if rng.gen_bool(0.5) {
            let frozen = Arc::new(InMemoryLayer::new(Lsn(top_lsn)));
            frozen.freeze(Lsn(top_lsn + 2));
            let open = Arc::new(InMemoryLayer::new(Lsn(top_lsn + 2)));
            (map.frozen, oracle.frozen) = (vec![Arc::clone(&frozen)], vec![frozen]);
            (map.open, oracle.open) = (Some(Arc::clone(&open)), Some(open));
        }
        compare(&map, &oracle, &mut rng, top_lsn);
        // Remove a random half (as GC and compaction will) and compare again.
        let mut kept = Vec::new();
        for l in layers {
            if rng.gen_bool(0.5) {
                assert!(map.remove(&l.desc).is_some());
            } else {
                kept.push(l);
            }
        }
        oracle.historic = kept;
        compare(&map, &oracle, &mut rng, top_lsn);
        assert_eq!(map.historic_len(), oracle.historic.len(), "seed {seed}");
    }
}
