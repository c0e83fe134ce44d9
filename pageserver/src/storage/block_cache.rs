//! The process-wide caches of layer-file blocks: what keeps the memory of
//! opened layer files bounded and hot values off the disk path.
//!
//! * The **index** cache ([`global`]): a layer file's key index lives on
//!   disk in fixed-size blocks ([`crate::storage::file`]); every lookup
//!   reads the blocks it needs through this cache, which holds at most its
//!   budget (default [`INDEX_CACHE_BUDGET_BYTES`], the pageserver's
//!   `--layer-index-cache-size`).
//! * The **value** cache ([`values`]): the file's value area read in
//!   aligned blocks of [`VALUE_BLOCK_BYTES`]; a run of adjacent values
//!   inside one block is a slice of the cached block (no read, no copy), a
//!   run across blocks is assembled from them. Budget default
//!   [`VALUE_CACHE_BUDGET_BYTES`], the pageserver's
//!   `--layer-value-cache-size`; 0 turns it off (values are then read with
//!   one `pread` per run, served by the kernel's page cache).
//!
//! Both evict the least recently used block and count hits, misses and
//! bytes held (`strata_pageserver_layer_index_cache_*`,
//! `strata_pageserver_layer_value_cache_*`).
//!
//! Owns: the cached blocks, keyed by (file id, block offset or number). A
//! file id is handed out once per opened layer file ([`next_file_id`]) and
//! never reused, so a block of a removed file can never be served for
//! another file; an opened file forgets its blocks in both caches when it
//! is dropped.
//!
//! Invariants: the bytes held (sum of cached block lengths) never exceed the
//! budget after an insert returns; a block larger than the budget is
//! returned but not kept. Blocks are immutable (`Arc<[u8]>`), so a reader
//! keeps using a block that is evicted meanwhile.
//!
//! Cancellation: nothing awaits. Loads run on the caller's thread (blocking
//! file reads, so callers are in `spawn_blocking`) without the lock held;
//! two threads missing the same block both read it and one copy is kept.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::metrics;

/// Budget of the process-wide index block cache: 64 MiB, 8,192 blocks of
/// 8 KiB, about 1.6 million index entries.
pub const INDEX_CACHE_BUDGET_BYTES: usize = 64 << 20;

/// Budget of the process-wide value block cache: 128 MiB.
pub const VALUE_CACHE_BUDGET_BYTES: usize = 128 << 20;

/// Size of a value block (aligned in the file; the last may be shorter).
pub const VALUE_BLOCK_BYTES: u64 = 64 << 10;

/// The counters and gauge a cache reports to.
#[derive(Clone, Copy)]
pub struct CacheMetrics {
    pub hits: &'static prometheus::IntCounter,
    pub misses: &'static prometheus::IntCounter,
    pub bytes: &'static prometheus::IntGauge,
}

impl CacheMetrics {
    /// The index cache's metrics.
    pub fn index() -> CacheMetrics {
        CacheMetrics { hits: &metrics::INDEX_CACHE_HITS, misses: &metrics::INDEX_CACHE_MISSES, bytes: &metrics::INDEX_CACHE_BYTES }
    }

    /// The value cache's metrics.
    pub fn values() -> CacheMetrics {
        CacheMetrics { hits: &metrics::VALUE_CACHE_HITS, misses: &metrics::VALUE_CACHE_MISSES, bytes: &metrics::VALUE_CACHE_BYTES }
    }
}

/// (file id, block offset in the file).
type BlockKey = (u64, u64);

/// A block as cached.
pub type Block = Arc<[u8]>;

/// An LRU cache of blocks, bounded by bytes.
pub struct BlockCache {
    budget_bytes: usize,
    metrics: CacheMetrics,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    blocks: HashMap<BlockKey, (Block, u64)>,
    /// Last use (a logical clock) → block, oldest first.
    lru: BTreeMap<u64, BlockKey>,
    clock: u64,
    bytes: usize,
}

impl BlockCache {
    /// A cache reporting to the index cache's metrics.
    pub fn new(budget_bytes: usize) -> BlockCache {
        BlockCache::with_metrics(budget_bytes, CacheMetrics::index())
    }

    pub fn with_metrics(budget_bytes: usize, metrics: CacheMetrics) -> BlockCache {
        BlockCache { budget_bytes, metrics, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The block at `offset` of file `file_id`, from the cache or from
    /// `load` (called without the lock held; its block is then cached).
    pub fn get_or_load<E>(&self, file_id: u64, offset: u64, load: impl FnOnce() -> Result<Block, E>) -> Result<Block, E> {
        let key = (file_id, offset);
        {
            let mut inner = self.lock();
            let tick = inner.clock + 1;
            if let Some((block, used)) = inner.blocks.get_mut(&key) {
                let (block, old) = (Arc::clone(block), std::mem::replace(used, tick));
                inner.clock = tick;
                inner.lru.remove(&old);
                inner.lru.insert(tick, key);
                self.metrics.hits.inc();
                return Ok(block);
            }
        }
        self.metrics.misses.inc();
        let block = load()?;
        self.insert(key, Arc::clone(&block));
        Ok(block)
    }

    fn insert(&self, key: BlockKey, block: Block) {
        if block.len() > self.budget_bytes {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let tick = inner.clock;
        let len = block.len();
        if let Some((old, used)) = inner.blocks.insert(key, (block, tick)) {
            inner.bytes -= old.len();
            inner.lru.remove(&used);
        }
        inner.lru.insert(tick, key);
        inner.bytes += len;
        while inner.bytes > self.budget_bytes {
            let Some((_, victim)) = inner.lru.pop_first() else { break };
            if let Some((old, _)) = inner.blocks.remove(&victim) {
                inner.bytes -= old.len();
            }
        }
        self.metrics.bytes.set(inner.bytes as i64);
    }

    /// Drop every block of `file_id` (the file was closed).
    pub fn forget_file(&self, file_id: u64) {
        if self.budget_bytes == 0 {
            return;
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        let (blocks, lru) = (&mut inner.blocks, &mut inner.lru);
        let mut freed = 0;
        blocks.retain(|&(f, _), (block, used)| {
            let keep = f != file_id;
            if !keep {
                freed += block.len();
                lru.remove(used);
            }
            keep
        });
        inner.bytes -= freed;
        self.metrics.bytes.set(inner.bytes as i64);
    }

    /// Bytes of the blocks held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Whether the cache keeps anything (a budget of 0 turns it off).
    pub fn is_enabled(&self) -> bool {
        self.budget_bytes > 0
    }
}

static GLOBAL: OnceLock<BlockCache> = OnceLock::new();

/// The process-wide cache (budget [`INDEX_CACHE_BUDGET_BYTES`] unless
/// [`set_global_budget`] was called first).
pub fn global() -> &'static BlockCache {
    GLOBAL.get_or_init(|| BlockCache::new(INDEX_CACHE_BUDGET_BYTES))
}

/// Give the process-wide cache a budget of `budget_bytes` (the
/// pageserver's `--layer-index-cache-size`); false if the cache was
/// already in use (then its budget stays).
pub fn set_global_budget(budget_bytes: usize) -> bool {
    GLOBAL.set(BlockCache::new(budget_bytes)).is_ok()
}

static VALUES: OnceLock<BlockCache> = OnceLock::new();

/// The process-wide value block cache (budget [`VALUE_CACHE_BUDGET_BYTES`]
/// unless [`set_values_budget`] was called first; 0: off).
pub fn values() -> &'static BlockCache {
    VALUES.get_or_init(|| BlockCache::with_metrics(VALUE_CACHE_BUDGET_BYTES, CacheMetrics::values()))
}

/// Give the value cache a budget of `budget_bytes` (the pageserver's
/// `--layer-value-cache-size`; 0 turns it off); false if the cache was
/// already in use (then its budget stays).
pub fn set_values_budget(budget_bytes: usize) -> bool {
    VALUES.set(BlockCache::with_metrics(budget_bytes, CacheMetrics::values())).is_ok()
}

/// A new file id (never reused in this process).
pub fn next_file_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(fill: u8, len: usize) -> Result<Block, ()> {
        Ok(vec![fill; len].into())
    }

    #[test]
    fn bounded_by_bytes_and_evicts_least_recently_used() {
        let cache = BlockCache::new(3 * 100);
        for off in 0..3 {
            cache.get_or_load(1, off, || block(off as u8, 100)).unwrap();
        }
        assert_eq!(cache.bytes(), 300);
        // Touch block 0, then a fourth block evicts block 1 (the oldest use).
        cache.get_or_load(1, 0, || -> Result<Block, ()> { panic!("block 0 is cached") }).unwrap();
        cache.get_or_load(1, 3, || block(3, 100)).unwrap();
        assert_eq!(cache.bytes(), 300);
        let mut reloaded = false;
        cache.get_or_load(1, 1, || { reloaded = true; block(1, 100) }).unwrap();
        assert!(reloaded, "block 1 was evicted");
        let b = cache.get_or_load(1, 3, || -> Result<Block, ()> { panic!("block 3 is cached") }).unwrap();
        assert_eq!(b[0], 3);
        for off in 0..1000 {
            cache.get_or_load(2, off, || block(0, 100)).unwrap();
            assert!(cache.bytes() <= cache.budget_bytes());
        }
        // Too large to keep: returned, not cached.
        assert_eq!(cache.get_or_load(3, 0, || block(7, 1000)).unwrap().len(), 1000);
        assert!(cache.bytes() <= 300);
    }

    #[test]
    fn forgetting_a_file_frees_its_blocks_only() {
        let cache = BlockCache::new(1 << 20);
        cache.get_or_load(1, 0, || block(1, 100)).unwrap();
        cache.get_or_load(2, 0, || block(2, 100)).unwrap();
        cache.forget_file(1);
        assert_eq!(cache.bytes(), 100);
        let mut reloaded = false;
        cache.get_or_load(1, 0, || { reloaded = true; block(1, 100) }).unwrap();
        assert!(reloaded);
        cache.get_or_load(2, 0, || -> Result<Block, ()> { panic!("file 2 kept") }).unwrap();
    }
}
