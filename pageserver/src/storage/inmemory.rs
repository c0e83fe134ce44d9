//! The in-memory layer: all values written to a timeline since the last
//! freeze, by key, each key's versions in LSN order.
//!
//! Owns: its values. Invariants: values are appended in non-decreasing LSN
//! order per key, all at LSN >= `start_lsn`; once [`InMemoryLayer::freeze`]
//! has set `end_lsn`, no more values are added (writes to a frozen layer are
//! refused), so a frozen layer can be flushed while readers use it.
//! Nothing here blocks for long or awaits.
//!
//! Memory: [`InMemoryLayer::size_bytes`] is what the layer really holds —
//! the values' bytes (WAL records are their own allocations, see
//! `postgres_ffi::waldecoder`), the capacity of each key's version vector
//! and a per-key share of the map — so `checkpoint_distance`, which
//! freezes a layer at that size, bounds its memory. Every layer's bytes
//! and the number of layers alive are in the process-wide gauges
//! `strata_pageserver_in_memory_layer_bytes` and
//! `strata_pageserver_in_memory_layers` (a layer leaves them when it is
//! dropped, i.e. flushed and no longer read).
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use utils::lsn::Lsn;

use super::{ReconstructResult, ValueReconstructState};
use crate::metrics;
use crate::storage::key::Key;
use crate::storage::value::Value;

/// Bytes of one version in a key's vector.
const VERSION_BYTES: usize = std::mem::size_of::<(Lsn, Value)>();
/// Bytes a key costs in the map besides its versions: the key and the
/// vector header in a B-tree node (nodes are about 2/3 full, plus their
/// child pointers).
const KEY_BYTES: usize = (std::mem::size_of::<Key>() + std::mem::size_of::<Vec<(Lsn, Value)>>()) * 3 / 2 + 8;

pub struct InMemoryLayer {
    pub start_lsn: Lsn,
    end_lsn: OnceLock<Lsn>,
    created: Instant,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    map: BTreeMap<Key, Vec<(Lsn, Value)>>,
    size_bytes: usize,
    max_lsn: Lsn,
}

impl InMemoryLayer {
    pub fn new(start_lsn: Lsn) -> InMemoryLayer {
        metrics::IN_MEMORY_LAYERS.inc();
        InMemoryLayer {
            start_lsn,
            end_lsn: OnceLock::new(),
            created: Instant::now(),
            inner: RwLock::new(Inner::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Add values; `false` if the layer is frozen or an LSN is out of range.
    pub fn put_batch(&self, items: Vec<(Key, Lsn, Value)>) -> bool {
        if self.end_lsn.get().is_some() {
            return false;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if items.iter().any(|(_, lsn, _)| *lsn < self.start_lsn) {
            return false;
        }
        let before = inner.size_bytes;
        for (key, lsn, value) in items {
            let mut added = value.size_bytes();
            inner.max_lsn = inner.max_lsn.max(lsn);
            let versions = match inner.map.entry(key) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    added += KEY_BYTES;
                    e.insert(Vec::new())
                }
            };
            let capacity = versions.capacity();
            // Versions stay sorted even if a caller interleaves LSNs.
            let at = versions.partition_point(|(l, _)| *l <= lsn);
            versions.insert(at, (lsn, value));
            added += (versions.capacity() - capacity) * VERSION_BYTES;
            inner.size_bytes += added;
        }
        metrics::IN_MEMORY_LAYER_BYTES.add((inner.size_bytes - before) as i64);
        true
    }

    /// Stop accepting writes; the layer covers `[start_lsn, end_lsn)`.
    pub fn freeze(&self, end_lsn: Lsn) {
        let _ = self.end_lsn.set(end_lsn);
    }

    pub fn end_lsn(&self) -> Option<Lsn> {
        self.end_lsn.get().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.read().map.is_empty()
    }

    pub fn size_bytes(&self) -> usize {
        self.read().size_bytes
    }

    pub fn age(&self) -> std::time::Duration {
        self.created.elapsed()
    }

    /// Smallest and largest key held.
    pub fn key_bounds(&self) -> Option<(Key, Key)> {
        let inner = self.read();
        Some((*inner.map.keys().next()?, *inner.map.keys().next_back()?))
    }

    /// Collect `key`'s versions in `lsn_range`, newest first, until an
    /// image or initialising record.
    pub fn get_value_reconstruct_data(
        &self,
        key: Key,
        lsn_range: Range<Lsn>,
        state: &mut ValueReconstructState,
    ) -> ReconstructResult {
        let inner = self.read();
        let Some(versions) = inner.map.get(&key) else {
            return ReconstructResult::Continue;
        };
        for (lsn, value) in versions.iter().rev() {
            if !lsn_range.contains(lsn) {
                continue;
            }
            match value {
                Value::Image(img) => {
                    state.img = Some((*lsn, img.clone()));
                    return ReconstructResult::Complete;
                }
                Value::WalRecord(rec) => {
                    state.records.push((*lsn, rec.clone()));
                    if rec.will_init() {
                        return ReconstructResult::Complete;
                    }
                }
            }
        }
        ReconstructResult::Continue
    }

    /// Visit every (key, lsn, value) in key, then LSN, order.
    pub fn for_each(&self, mut f: impl FnMut(Key, Lsn, &Value) -> std::io::Result<()>) -> std::io::Result<()> {
        let inner = self.read();
        for (key, versions) in inner.map.iter() {
            for (lsn, value) in versions {
                f(*key, *lsn, value)?;
            }
        }
        Ok(())
    }
}

impl Drop for InMemoryLayer {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        metrics::IN_MEMORY_LAYER_BYTES.sub(inner.size_bytes as i64);
        metrics::IN_MEMORY_LAYERS.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walredo::WalRecord;
    use bytes::Bytes;

    /// The layer's size counts the map's overhead, not only the values'
    /// bytes: small records cost far more than their length.
    #[test]
    fn size_counts_the_overhead_of_each_version_and_key() {
        let layer = InMemoryLayer::new(Lsn(100));
        let (keys, versions) = (500u32, 8u64);
        for v in 0..versions {
            let items = (0..keys)
                .map(|k| {
                    let key = Key { field6: k, ..Key::MIN };
                    let rec = WalRecord::Postgres { will_init: false, rec: Bytes::from_static(b"0123456789") };
                    (key, Lsn(100 + v), Value::WalRecord(rec))
                })
                .collect();
            assert!(layer.put_batch(items));
        }
        let n = (keys as u64 * versions) as usize;
        assert!(layer.size_bytes() >= n * (10 + VERSION_BYTES) + keys as usize * KEY_BYTES, "{} bytes", layer.size_bytes());
        // Vector growth is counted by capacity: never more than twice the versions.
        assert!(layer.size_bytes() <= n * (10 + 2 * VERSION_BYTES) + keys as usize * KEY_BYTES);
    }
}
