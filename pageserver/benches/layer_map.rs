//! Layer map search: the segment-indexed `LayerMap` against the former
//! linear scan (`LinearLayerMap`), at 10 and 2,000 historic layers (no
//! files are touched). Prints lookups/s and ns/lookup for each.
//!
//! Layer set: L0 delta layers of 100 LSNs each over the whole key range
//! used, and after every 10 deltas an image set of 8 layers cutting the key
//! range; queries are random (key, LSN) pairs over the whole history.
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pageserver::storage::key::Key;
use pageserver::storage::file::LayerFile;
use pageserver::storage::layer_map::linear::LinearLayerMap;
use pageserver::storage::layer_map::LayerMap;
use pageserver::storage::LayerDesc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use utils::lsn::Lsn;

const KEYS: u32 = 100_000;
const IMAGE_PARTS: u32 = 8;

fn key(i: u32) -> Key {
    Key { field1: 0, field2: 1663, field3: 5, field4: 16384, field5: 0, field6: i }
}

fn layer(keys: std::ops::Range<u32>, lsns: std::ops::Range<u64>, is_image: bool) -> Arc<LayerFile> {
    let desc = LayerDesc { key_range: key(keys.start)..key(keys.end), lsn_range: Lsn(lsns.start)..Lsn(lsns.end), is_image, generation: 1 };
    Arc::new(LayerFile::new(PathBuf::from(desc.file_name()), desc, 0))
}

/// `n` layers and the LSN above all of them.
fn layers(n: usize) -> (Vec<Arc<LayerFile>>, u64) {
    let (mut out, mut lsn, mut deltas) = (Vec::with_capacity(n), 0x100u64, 0);
    while out.len() < n {
        if deltas > 0 && deltas % 10 == 0 && out.len() + IMAGE_PARTS as usize <= n {
            let part = KEYS / IMAGE_PARTS;
            out.extend((0..IMAGE_PARTS).map(|p| layer(p * part..(p + 1) * part, lsn - 1..lsn, true)));
        }
        if out.len() < n {
            out.push(layer(0..KEYS, lsn..lsn + 100, false));
            lsn += 100;
            deltas += 1;
        }
    }
    (out, lsn)
}

/// Run `lookup` over the queries for at least `min`; (lookups/s, ns/lookup).
fn measure(queries: &[(Key, Lsn)], min: Duration, mut lookup: impl FnMut(Key, Lsn) -> bool) -> (f64, f64) {
    let (started, mut done, mut hits) = (Instant::now(), 0u64, 0u64);
    while started.elapsed() < min {
        for &(k, l) in queries {
            hits += lookup(k, l) as u64;
        }
        done += queries.len() as u64;
    }
    black_box(hits);
    let secs = started.elapsed().as_secs_f64();
    (done as f64 / secs, secs * 1e9 / done as f64)
}

fn main() {
    let min = Duration::from_millis(std::env::var("BENCH_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000));
    println!("layer map search (GetPage@LSN's next-layer lookup), {} ms per case", min.as_millis());
    for n in [10, 2000] {
        let (set, top_lsn) = layers(n);
        let mut map = LayerMap::default();
        for l in &set {
            map.insert(Arc::clone(l));
        }
        let oracle = LinearLayerMap { historic: set.clone(), ..Default::default() };
        let mut rng = StdRng::seed_from_u64(n as u64);
        let queries: Vec<(Key, Lsn)> =
            (0..10_000).map(|_| (key(rng.gen_range(0..KEYS)), Lsn(rng.gen_range(0x100..top_lsn + 1)))).collect();
        let (new_rate, new_ns) = measure(&queries, min, |k, l| black_box(map.search(k, l)).is_some());
        let (old_rate, old_ns) = measure(&queries, min, |k, l| black_box(oracle.search(k, l)).is_some());
        println!(
            "{n:>5} layers: new {new_rate:>12.0} lookups/s {new_ns:>9.1} ns/lookup | old (linear) {old_rate:>12.0} lookups/s {old_ns:>9.1} ns/lookup | speed-up {:.1}x",
            old_ns / new_ns
        );
    }
}
