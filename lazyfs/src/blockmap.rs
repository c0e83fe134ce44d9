//! Which blocks of one relation segment file still live only on the
//! pageserver.
//!
//! Owns the per-file bookkeeping of the overlay, nothing else: a segment
//! file of a lazy data directory starts with `remote_blocks` blocks whose
//! contents are GetPage@start_lsn of `(tag, first_block + i)`, and none of
//! them local. Invariants:
//!
//! * block `i` is *pending* (must be fetched before it is read or partly
//!   written) iff `i < remote_blocks` and it was neither fetched nor written
//!   since the start; once local it stays local until a truncation drops it;
//! * a truncation to `size_bytes` keeps block `i` pending only if the block
//!   lies wholly below the new size: everything at or past the new end is
//!   gone for good (a later extension reads zeros, as on any file), so
//!   `remote_blocks` only ever shrinks. A block the new end cuts through must
//!   be fetched first by the caller ([`RemoteBlocks::cut_block`]);
//! * the map never makes a block pending again.

use pageclient::RelTag;

/// Bytes per PostgreSQL block.
pub const BLOCK_BYTES: u64 = 8192;

/// The remote identity and the pending blocks of one segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteBlocks {
    /// Relation fork the blocks come from.
    pub tag: RelTag,
    /// Block number (in the fork) of the file's block 0.
    pub first_block: u32,
    /// Blocks `0..remote_blocks` may still be pending.
    remote_blocks: u32,
    /// One bit per block below `remote_blocks`: set once local.
    local: Vec<u64>,
    /// Blocks still pending.
    pending: u32,
}

impl RemoteBlocks {
    pub fn new(tag: RelTag, first_block: u32, remote_blocks: u32) -> RemoteBlocks {
        let words = remote_blocks.div_ceil(64) as usize;
        RemoteBlocks { tag, first_block, remote_blocks, local: vec![0; words], pending: remote_blocks }
    }

    /// Blocks whose contents are still only on the pageserver.
    pub fn pending_count(&self) -> u32 {
        self.pending
    }

    pub fn remote_blocks(&self) -> u32 {
        self.remote_blocks
    }

    pub fn is_pending(&self, block: u32) -> bool {
        block < self.remote_blocks && self.local[(block / 64) as usize] & (1 << (block % 64)) == 0
    }

    /// The block is local from now on (fetched, or overwritten in full).
    pub fn mark_local(&mut self, block: u32) {
        if self.is_pending(block) {
            self.local[(block / 64) as usize] |= 1 << (block % 64);
            self.pending -= 1;
        }
    }

    /// The lowest pending block, if any.
    pub fn first_pending(&self) -> Option<u32> {
        if self.pending == 0 {
            return None;
        }
        let (word, bits) = self.local.iter().enumerate().find(|(_, w)| **w != u64::MAX)?;
        let block = word as u32 * 64 + bits.trailing_ones();
        (block < self.remote_blocks).then_some(block)
    }

    /// Pending blocks among `blocks` (file-relative block numbers).
    pub fn pending_in(&self, blocks: std::ops::Range<u32>) -> Vec<u32> {
        let end = blocks.end.min(self.remote_blocks);
        (blocks.start..end).filter(|&b| self.is_pending(b)).collect()
    }

    /// The pending block a truncation to `size_bytes` cuts through (keeps in
    /// part), which the caller must fetch before truncating.
    pub fn cut_block(&self, size_bytes: u64) -> Option<u32> {
        if size_bytes % BLOCK_BYTES == 0 {
            return None;
        }
        let block = u32::try_from(size_bytes / BLOCK_BYTES).ok()?;
        self.is_pending(block).then_some(block)
    }

    /// The file is now `size_bytes` long: blocks not wholly below it are no
    /// longer remote (never pending again).
    pub fn truncate(&mut self, size_bytes: u64) {
        let kept = u32::try_from(size_bytes / BLOCK_BYTES).unwrap_or(u32::MAX);
        // A block the new end cuts through was made local by the caller (or
        // was local already); treat it as not remote either way.
        let kept = kept.min(self.remote_blocks);
        let dropped = (kept..self.remote_blocks).filter(|&b| self.is_pending(b)).count() as u32;
        self.pending -= dropped;
        self.remote_blocks = kept;
        self.local.truncate(kept.div_ceil(64) as usize);
        // Clear bits past the new end in the last word, so the map stays
        // canonical (bits beyond `remote_blocks` are never read anyway).
        if kept % 64 != 0 {
            if let Some(last) = self.local.last_mut() {
                *last &= (1u64 << (kept % 64)) - 1;
            }
        }
    }
}

/// Blocks `[offset, offset + len)` touches, as file-relative block numbers.
pub fn blocks_of(offset: u64, len: u64) -> std::ops::Range<u32> {
    if len == 0 {
        return 0..0;
    }
    let first = offset / BLOCK_BYTES;
    let last = offset.saturating_add(len - 1) / BLOCK_BYTES;
    let clamp = |b: u64| u32::try_from(b).unwrap_or(u32::MAX);
    clamp(first)..clamp(last).saturating_add(1)
}

/// Whether `[offset, offset + len)` covers all of `block`.
pub fn covers(offset: u64, len: u64, block: u32) -> bool {
    let start = block as u64 * BLOCK_BYTES;
    offset <= start && offset.saturating_add(len) >= start + BLOCK_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> RelTag {
        RelTag { spc: 1663, db: 5, rel: 16384, fork: 0 }
    }

    #[test]
    fn fresh_map_has_every_block_pending() {
        let map = RemoteBlocks::new(tag(), 0, 130);
        assert_eq!(map.pending_count(), 130);
        assert!(map.is_pending(0) && map.is_pending(129));
        assert!(!map.is_pending(130), "past the remote end nothing is pending");
        assert_eq!(map.pending_in(128..200), vec![128, 129]);
    }

    #[test]
    fn first_pending_skips_local_blocks() {
        let mut map = RemoteBlocks::new(tag(), 0, 130);
        assert_eq!(map.first_pending(), Some(0));
        for b in 0..65 {
            map.mark_local(b);
        }
        assert_eq!(map.first_pending(), Some(65));
        for b in 65..130 {
            map.mark_local(b);
        }
        assert_eq!(map.first_pending(), None);
        let mut cut = RemoteBlocks::new(tag(), 0, 70);
        cut.mark_local(0);
        cut.truncate(BLOCK_BYTES);
        assert_eq!(cut.first_pending(), None, "truncated away");
    }

    #[test]
    fn local_blocks_stay_local() {
        let mut map = RemoteBlocks::new(tag(), 0, 10);
        map.mark_local(3);
        map.mark_local(3);
        map.mark_local(42); // beyond the remote end: no effect
        assert_eq!(map.pending_count(), 9);
        assert!(!map.is_pending(3));
        assert_eq!(map.pending_in(2..5), vec![2, 4]);
    }

    #[test]
    fn truncate_drops_remote_blocks_for_good() {
        let mut map = RemoteBlocks::new(tag(), 0, 100);
        map.mark_local(1);
        map.mark_local(70);
        map.truncate(65 * BLOCK_BYTES);
        assert_eq!(map.remote_blocks(), 65);
        assert_eq!(map.pending_count(), 64, "65 kept, block 1 local");
        // Extending again never makes the dropped blocks pending.
        assert!(!map.is_pending(70) && !map.is_pending(65) && !map.is_pending(99));
        map.truncate(200 * BLOCK_BYTES);
        assert_eq!(map.remote_blocks(), 65);
        map.truncate(0);
        assert_eq!(map.pending_count(), 0);
        assert!(map.pending_in(0..100).is_empty());
    }

    #[test]
    fn truncate_inside_a_block_asks_for_that_block_first() {
        let mut map = RemoteBlocks::new(tag(), 0, 4);
        assert_eq!(map.cut_block(2 * BLOCK_BYTES), None, "aligned: nothing is cut");
        assert_eq!(map.cut_block(2 * BLOCK_BYTES + 100), Some(2));
        map.mark_local(2);
        assert_eq!(map.cut_block(2 * BLOCK_BYTES + 100), None, "already local");
        map.truncate(2 * BLOCK_BYTES + 100);
        assert_eq!(map.remote_blocks(), 2);
        assert_eq!(map.pending_count(), 2);
    }

    #[test]
    fn segment_offsets_are_kept() {
        // The second 1 GiB segment of a fork: file block 0 is fork block 131072.
        let map = RemoteBlocks::new(tag(), 131072, 5);
        assert_eq!(map.first_block + 4, 131076);
    }

    #[test]
    fn block_ranges() {
        assert_eq!(blocks_of(0, 8192), 0..1);
        assert_eq!(blocks_of(4096, 8192), 0..2);
        assert_eq!(blocks_of(8192 * 3, 1), 3..4);
        assert_eq!(blocks_of(10, 0), 0..0);
        assert!(covers(0, 8192, 0));
        assert!(!covers(4096, 4096, 0), "half a block");
        assert!(covers(0, 3 * 8192, 1));
        assert!(!covers(8192, 8191, 1));
    }
}
