//! The relation-size cache of a timeline (issue 16, item 2): what makes a
//! GetPage@LSN one layer walk instead of three (relation directory, size,
//! block). It answers "does fork F of relation R exist at LSN X, and how
//! many blocks has it" without reading the relation directory or the size
//! key, for the LSNs where it knows the answer exactly; ingest uses it for
//! the latest sizes too.
//!
//! Owns: per relation fork, `(since, size)`: the fork has had `size` blocks
//! (`None`: it does not exist) from LSN `since` up to the last ingested
//! record; and `horizon`, the LSN below which it knows nothing.
//!
//! Invariants (what keeps it exact, never stale):
//! * Ingest records every change of a fork's existence or size
//!   ([`RelSizeCache::ingested`]: creation, extension, truncation, drop)
//!   *before* `last_record_lsn` passes the change's LSN, so no reader at or
//!   above that LSN can run before the cache knows the change. Changes it
//!   cannot record per fork (a database dropped, an import) forget
//!   everything and raise `horizon` to their LSN ([`RelSizeCache::invalidate`]).
//! * Hence an entry `(since, size)` answers every read at an LSN `>= since`.
//! * A reader that computed a size at LSN `L` from storage adds it
//!   ([`RelSizeCache::observed`]) only if `L >= horizon` and the fork has no
//!   entry: then every change above `L` was ingested after the cache
//!   started and is in the cache (an absent entry means there was none).
//!   Eviction (the cache is bounded by `capacity` entries) empties the
//!   cache and raises `horizon` to the newest LSN it held, which keeps that
//!   argument true.
//! * A timeline starts with `horizon` = its last record LSN at load (a new
//!   branch: its branch point), so a branch never uses its ancestor's
//!   entries, nor the ancestor the branch's.
//!
//! Cancellation: nothing awaits; locks are held for map operations only.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

use crate::metrics;

/// Default [`RelSizeCache`] capacity (forks per timeline), about 2 MiB.
pub const DEFAULT_REL_SIZE_CACHE_ENTRIES: usize = 32_768;

type Fork = (RelFileNode, u8);

static CAPACITY: AtomicUsize = AtomicUsize::new(DEFAULT_REL_SIZE_CACHE_ENTRIES);

/// Set the capacity of the relation-size caches of timelines loaded from
/// now on (the pageserver's `--rel-size-cache-entries`).
pub fn set_capacity(entries: usize) {
    CAPACITY.store(entries.max(1), Ordering::Relaxed);
}

/// The capacity new timelines get.
pub(crate) fn capacity() -> usize {
    CAPACITY.load(Ordering::Relaxed)
}

pub(crate) struct RelSizeCache {
    capacity: usize,
    inner: RwLock<Inner>,
}

struct Inner {
    sizes: HashMap<Fork, (Lsn, Option<u32>)>,
    horizon: Lsn,
}

impl RelSizeCache {
    /// An empty cache knowing nothing below `horizon`, holding at most
    /// `capacity` (≥ 1) forks.
    pub(crate) fn new(horizon: Lsn, capacity: usize) -> RelSizeCache {
        RelSizeCache { capacity: capacity.max(1), inner: RwLock::new(Inner { sizes: HashMap::new(), horizon }) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The fork's size at `lsn` if the cache knows it: `Some(Some(n))` it
    /// exists with `n` blocks, `Some(None)` it does not exist.
    pub(crate) fn get(&self, rel: RelFileNode, forknum: u8, lsn: Lsn) -> Option<Option<u32>> {
        let found = self.read().sizes.get(&(rel, forknum)).filter(|(since, _)| *since <= lsn).map(|(_, s)| *s);
        match found {
            Some(_) => metrics::REL_SIZE_CACHE_HITS.inc(),
            None => metrics::REL_SIZE_CACHE_MISSES.inc(),
        }
        found
    }

    /// The latest size of the fork as far as the cache knows (for ingest,
    /// which reads at the last record LSN); `None` also for a dropped fork.
    pub(crate) fn latest(&self, rel: RelFileNode, forknum: u8) -> Option<u32> {
        self.read().sizes.get(&(rel, forknum)).and_then(|(_, s)| *s)
    }

    /// Ingest changed the fork at `lsn`: it now has `size` blocks (`None`:
    /// dropped). Called before `last_record_lsn` reaches `lsn`.
    pub(crate) fn ingested(&self, rel: RelFileNode, forknum: u8, lsn: Lsn, size: Option<u32>) {
        let mut inner = self.write();
        inner.sizes.insert((rel, forknum), (lsn, size));
        self.bound(&mut inner);
    }

    /// A change at `lsn` the cache cannot track per fork: forget everything.
    pub(crate) fn invalidate(&self, lsn: Lsn) {
        let mut inner = self.write();
        inner.sizes.clear();
        inner.horizon = inner.horizon.max(lsn);
    }

    /// A reader found the fork's size (`None`: absent) at `lsn` in storage;
    /// kept if that is safe (see the module doc).
    pub(crate) fn observed(&self, rel: RelFileNode, forknum: u8, lsn: Lsn, size: Option<u32>) {
        let mut inner = self.write();
        if lsn < inner.horizon || inner.sizes.contains_key(&(rel, forknum)) {
            return;
        }
        inner.sizes.insert((rel, forknum), (lsn, size));
        self.bound(&mut inner);
    }

    /// Keep at most `capacity` entries: when over, forget all of them and
    /// know nothing below the newest LSN they held.
    fn bound(&self, inner: &mut Inner) {
        if inner.sizes.len() > self.capacity {
            let newest = inner.sizes.values().map(|(since, _)| *since).max().unwrap_or(Lsn(0));
            inner.sizes.clear();
            inner.horizon = inner.horizon.max(newest);
            metrics::REL_SIZE_CACHE_EVICTIONS.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(n: u32) -> RelFileNode {
        RelFileNode { spc_node: 1663, db_node: 5, rel_node: n }
    }

    #[test]
    fn entries_answer_at_or_above_their_lsn_only() {
        let c = RelSizeCache::new(Lsn(0x100), 10);
        c.ingested(rel(1), 0, Lsn(0x200), Some(3));
        assert_eq!(c.get(rel(1), 0, Lsn(0x1FF)), None, "below the change: unknown");
        assert_eq!(c.get(rel(1), 0, Lsn(0x200)), Some(Some(3)));
        c.ingested(rel(1), 0, Lsn(0x300), None);
        assert_eq!(c.get(rel(1), 0, Lsn(0x2FF)), None);
        assert_eq!(c.get(rel(1), 0, Lsn(0x300)), Some(None), "dropped");
        assert_eq!(c.latest(rel(1), 0), None);
    }

    #[test]
    fn readers_add_only_above_the_horizon_and_never_over_ingest() {
        let c = RelSizeCache::new(Lsn(0x100), 10);
        c.observed(rel(1), 0, Lsn(0x80), Some(1));
        assert_eq!(c.get(rel(1), 0, Lsn(0x500)), None, "read below the horizon is not kept");
        c.ingested(rel(2), 0, Lsn(0x300), Some(9));
        c.observed(rel(2), 0, Lsn(0x200), Some(4));
        assert_eq!(c.get(rel(2), 0, Lsn(0x300)), Some(Some(9)), "ingest's entry wins");
        c.observed(rel(3), 0, Lsn(0x200), Some(4));
        assert_eq!(c.get(rel(3), 0, Lsn(0x250)), Some(Some(4)));
        c.invalidate(Lsn(0x400));
        assert_eq!(c.get(rel(3), 0, Lsn(0x450)), None);
        c.observed(rel(3), 0, Lsn(0x300), Some(4));
        assert_eq!(c.get(rel(3), 0, Lsn(0x450)), None, "a read from before the invalidation is not kept");
    }

    #[test]
    fn eviction_raises_the_horizon() {
        let c = RelSizeCache::new(Lsn(0), 2);
        for i in 0..3 {
            c.ingested(rel(i), 0, Lsn(0x100 + i as u64), Some(i));
        }
        assert_eq!(c.get(rel(0), 0, Lsn(0x1000)), None, "evicted");
        c.observed(rel(0), 0, Lsn(0x101), Some(0));
        assert_eq!(c.get(rel(0), 0, Lsn(0x1000)), None, "a read older than the evicted entries is not kept");
        c.observed(rel(0), 0, Lsn(0x102), Some(0));
        assert_eq!(c.get(rel(0), 0, Lsn(0x1000)), Some(Some(0)));
    }
}
