//! The in-memory layer: all values written to a timeline since the last
//! freeze, by key, each key's versions in LSN order.
//!
//! Owns: its values. Invariants: values are appended in non-decreasing LSN
//! order per key, all at LSN >= `start_lsn`; once [`InMemoryLayer::freeze`]
//! has set `end_lsn`, no more values are added (writes to a frozen layer are
//! refused), so a frozen layer can be flushed while readers use it.
//! Nothing here blocks for long or awaits.
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use utils::lsn::Lsn;

use super::{ReconstructResult, ValueReconstructState};
use crate::storage::key::Key;
use crate::storage::value::Value;

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
        for (key, lsn, value) in items {
            inner.size_bytes += value.size_bytes() + 40;
            inner.max_lsn = inner.max_lsn.max(lsn);
            let versions = inner.map.entry(key).or_default();
            // Versions stay sorted even if a caller interleaves LSNs.
            let at = versions.partition_point(|(l, _)| *l <= lsn);
            versions.insert(at, (lsn, value));
        }
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
