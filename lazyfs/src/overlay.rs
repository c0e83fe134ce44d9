//! The copy-on-write overlay of one lazy data directory: a local directory
//! tree (the *backing* directory) mirroring the data directory, plus, for
//! each relation segment file of the start LSN, the map of blocks still only
//! on the pageserver ([`RemoteBlocks`]).
//!
//! Owns the block-level semantics; the FUSE layer ([`crate::fs`]) owns
//! names and handles. Invariants:
//!
//! * every backing file has the exact size of the file the compute sees
//!   (relation files are sparse at start: `blocks × 8 KiB` of holes);
//! * a byte is served from the backing file only once its block is local;
//!   a pending block is fetched (GetPage@start_lsn), written into the
//!   backing file and marked local, under the file's lock and only if it is
//!   still pending then, so a fetch never overwrites a newer write;
//! * a write makes every block it touches local; a block it covers only in
//!   part is fetched first (read-modify-write), so the rest of it is right;
//! * a truncation first fetches a pending block the new end cuts through,
//!   then shortens the backing file and drops every remote block at or past
//!   the new end for good (re-extended space reads as zeros);
//! * blocks past the start LSN's size were never remote: extension needs no
//!   fetch;
//! * on a fetch failure the operation fails with EIO and nothing is marked
//!   local: never zeros, never partial data.
//!
//! Nothing here needs durability: an endpoint start builds a new overlay,
//! so `fsync` is not forwarded to the backing files.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use pageclient::RelTag;

use crate::blockmap::{blocks_of, covers, RemoteBlocks, BLOCK_BYTES};
use crate::metrics::Metrics;

/// Where pending blocks come from (the pageserver; a fake in tests).
pub trait BlockSource: Send + Sync {
    /// Fork blocks `blknos` of `rel` at the start LSN, in order, each 8 KiB.
    fn fetch(&self, rel: RelTag, blknos: &[u32]) -> Result<Vec<Bytes>, String>;
}

impl BlockSource for crate::fetch::Fetcher {
    fn fetch(&self, rel: RelTag, blknos: &[u32]) -> Result<Vec<Bytes>, String> {
        crate::fetch::Fetcher::fetch(self, rel, blknos).map_err(|e| e.to_string())
    }
}

/// Remote state of one file (directories and files created by the compute
/// have none).
pub struct FileState {
    remote: Mutex<Option<RemoteBlocks>>,
    metrics: Metrics,
}

impl FileState {
    pub fn new(remote: Option<RemoteBlocks>, metrics: Metrics) -> Arc<FileState> {
        if let Some(r) = &remote {
            metrics.pending_blocks.add(r.pending_count() as i64);
        }
        Arc::new(FileState { remote: Mutex::new(remote), metrics })
    }

    fn lock(&self) -> MutexGuard<'_, Option<RemoteBlocks>> {
        self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pending_count(&self) -> u32 {
        self.lock().as_ref().map_or(0, |r| r.pending_count())
    }

    /// The first block still pending, if any.
    pub fn first_pending(&self) -> Option<u32> {
        self.lock().as_ref().and_then(|r| r.first_pending())
    }

    /// Run `f` on the remote map under the lock, keeping the gauge of
    /// pending blocks right.
    fn with_remote<T>(&self, f: impl FnOnce(&mut Option<RemoteBlocks>) -> T) -> T {
        let mut guard = self.lock();
        let before = guard.as_ref().map_or(0, |r| r.pending_count());
        let out = f(&mut guard);
        let after = guard.as_ref().map_or(0, |r| r.pending_count());
        self.metrics.pending_blocks.sub(before as i64 - after as i64);
        out
    }
}

impl Drop for FileState {
    fn drop(&mut self) {
        let pending = self.lock().as_ref().map_or(0, |r| r.pending_count());
        self.metrics.pending_blocks.sub(pending as i64);
    }
}

/// Block-level operations on backing files.
pub struct Overlay {
    source: Arc<dyn BlockSource>,
    metrics: Metrics,
    /// Extra pending blocks fetched after a multi-block read that missed.
    readahead_blocks: u32,
    /// Foreground fetches (reads, partial writes, truncations) in flight;
    /// shared with the prefetcher's overlay, which yields to them.
    foreground: Arc<Foreground>,
}

/// Foreground fetch activity, which the prefetcher yields to.
#[derive(Default)]
struct Foreground {
    in_flight: AtomicUsize,
    /// When the last one ended, in ms since `epoch`.
    last_end_ms: AtomicU64,
    epoch: OnceInstant,
}

/// An `Instant` fixed at first use.
#[derive(Default)]
struct OnceInstant(std::sync::OnceLock<Instant>);

impl OnceInstant {
    fn ms(&self) -> u64 {
        self.0.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
}

/// Counts one foreground fetch while alive.
struct Busy<'a>(&'a Foreground);

impl<'a> Busy<'a> {
    fn new(f: &'a Foreground) -> Busy<'a> {
        f.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(f)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.last_end_ms.store(self.0.epoch.ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn eio(what: String) -> io::Error {
    io::Error::other(what)
}

impl Overlay {
    pub fn new(source: Arc<dyn BlockSource>, metrics: Metrics, readahead_blocks: u32) -> Overlay {
        Overlay { source, metrics, readahead_blocks, foreground: Arc::default() }
    }

    /// An overlay for the prefetcher: blocks from `source` (its own
    /// connection), same metrics, and it sees this one's foreground fetches.
    pub fn for_prefetch(&self, source: Arc<dyn BlockSource>) -> Overlay {
        Overlay { source, metrics: self.metrics.clone(), readahead_blocks: 0, foreground: self.foreground.clone() }
    }

    /// Whether a foreground fetch is in flight or ended less than
    /// `quiet_ms` ago (reads come in bursts: a compute's start, a scan).
    pub fn foreground_busy(&self, quiet_ms: u64) -> bool {
        let f = &self.foreground;
        let last = f.last_end_ms.load(Ordering::SeqCst);
        f.in_flight.load(Ordering::SeqCst) > 0 || (last > 0 && f.epoch.ms().saturating_sub(last) < quiet_ms)
    }

    /// Make the pending blocks among the `max_blocks` from the first pending
    /// one local; the number made local (by this call or, meanwhile, by the
    /// compute's writes and truncations).
    pub fn prefetch(&self, state: &FileState, file: &File, max_blocks: u32) -> io::Result<u32> {
        let Some(first) = state.first_pending() else { return Ok(0) };
        let before = state.pending_count();
        self.make_local(state, file, first..first.saturating_add(max_blocks))?;
        let made = before.saturating_sub(state.pending_count());
        self.metrics.blocks_prefetched.inc_by(made as u64);
        Ok(made)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Make the pending blocks among `blocks` local.
    fn make_local(&self, state: &FileState, file: &File, blocks: std::ops::Range<u32>) -> io::Result<()> {
        let (tag, wanted) = {
            let guard = state.lock();
            let Some(r) = guard.as_ref() else { return Ok(()) };
            let pending = r.pending_in(blocks);
            if pending.is_empty() {
                return Ok(());
            }
            let mut fork_blocks = Vec::with_capacity(pending.len());
            for &b in &pending {
                let blkno = r.first_block.checked_add(b).ok_or_else(|| eio(format!("block {b} of {:?} overflows", r.tag)))?;
                fork_blocks.push(blkno);
            }
            (r.tag, (pending, fork_blocks))
        };
        let (pending, fork_blocks) = wanted;
        let pages = self.source.fetch(tag, &fork_blocks).map_err(eio)?;
        if pages.len() != pending.len() || pages.iter().any(|p| p.len() as u64 != BLOCK_BYTES) {
            return Err(eio(format!("fetch of {} blocks of {tag:?} returned {} pages or a short one", pending.len(), pages.len())));
        }
        state.with_remote(|remote| -> io::Result<()> {
            let Some(r) = remote.as_mut() else { return Ok(()) };
            for (b, page) in pending.into_iter().zip(pages) {
                // Written or truncated away meanwhile: the newer state wins.
                if r.is_pending(b) {
                    file.write_all_at(&page, b as u64 * BLOCK_BYTES)?;
                    r.mark_local(b);
                }
            }
            Ok(())
        })
    }

    /// Read up to `size` bytes at `offset` (short at end of file).
    pub fn read(&self, state: &FileState, file: &File, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let len = file.metadata()?.len();
        let end = offset.saturating_add(size as u64).min(len);
        if offset >= end {
            return Ok(Vec::new());
        }
        let blocks = blocks_of(offset, end - offset);
        let pending = state.lock().as_ref().map_or(0, |r| r.pending_in(blocks.clone()).len() as u32);
        self.metrics.cache_hits.inc_by((blocks.len() as u32 - pending) as u64);
        if pending > 0 {
            let _busy = Busy::new(&self.foreground);
            let ahead = if blocks.len() >= 4 { self.readahead_blocks } else { 0 };
            self.make_local(state, file, blocks.start..blocks.end.saturating_add(ahead))?;
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Write `data` at `offset`.
    pub fn write(&self, state: &FileState, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let blocks = blocks_of(offset, data.len() as u64);
        let len = data.len() as u64;
        // Blocks written only in part keep the rest of their contents.
        let _busy = Busy::new(&self.foreground);
        for edge in [blocks.start, blocks.end.saturating_sub(1)] {
            if !blocks.is_empty() && !covers(offset, len, edge) {
                self.make_local(state, file, edge..edge + 1)?;
            }
        }
        self.metrics.blocks_written.inc_by(blocks.len() as u64);
        state.with_remote(|remote| {
            file.write_all_at(data, offset)?;
            if let Some(r) = remote.as_mut() {
                for b in blocks {
                    r.mark_local(b);
                }
            }
            Ok(())
        })
    }

    /// Set the file's size to `size_bytes`.
    pub fn truncate(&self, state: &FileState, file: &File, size_bytes: u64) -> io::Result<()> {
        let cut = state.lock().as_ref().and_then(|r| r.cut_block(size_bytes));
        if let Some(b) = cut {
            let _busy = Busy::new(&self.foreground);
            self.make_local(state, file, b..b + 1)?;
        }
        state.with_remote(|remote| {
            file.set_len(size_bytes)?;
            if let Some(r) = remote.as_mut() {
                r.truncate(size_bytes);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Block n of every relation is 8 KiB of byte (n % 251 + 1); counts calls.
    #[derive(Default)]
    struct Fake {
        fetched: AtomicU64,
        fail: std::sync::atomic::AtomicBool,
    }

    fn page_of(blkno: u32) -> Vec<u8> {
        vec![(blkno % 251 + 1) as u8; BLOCK_BYTES as usize]
    }

    impl BlockSource for Fake {
        fn fetch(&self, _rel: RelTag, blknos: &[u32]) -> Result<Vec<Bytes>, String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("pageserver unreachable".into());
            }
            self.fetched.fetch_add(blknos.len() as u64, Ordering::SeqCst);
            Ok(blknos.iter().map(|&b| Bytes::from(page_of(b))).collect())
        }
    }

    const TAG: RelTag = RelTag { spc: 1663, db: 5, rel: 16384, fork: 0 };

    fn setup(first_block: u32, blocks: u32) -> (tempfile::TempDir, Arc<Fake>, Overlay, Arc<FileState>, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(blocks as u64 * BLOCK_BYTES).unwrap();
        let fake = Arc::new(Fake::default());
        let metrics = Metrics::new();
        let overlay = Overlay::new(fake.clone(), metrics.clone(), 8);
        let state = FileState::new(Some(RemoteBlocks::new(TAG, first_block, blocks)), metrics);
        (dir, fake, overlay, state, file)
    }

    #[test]
    fn reads_fetch_once_then_hit_the_cache() {
        let (_dir, fake, ov, st, file) = setup(0, 10);
        assert_eq!(ov.read(&st, &file, 3 * BLOCK_BYTES, 8192).unwrap(), page_of(3));
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 1);
        assert_eq!(ov.read(&st, &file, 3 * BLOCK_BYTES + 100, 50).unwrap(), page_of(3)[..50].to_vec());
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 1, "second read is local");
        assert_eq!(ov.metrics.cache_hits.get(), 1);
        assert_eq!(st.pending_count(), 9);
        assert_eq!(ov.metrics.pending_blocks.get(), 9);
    }

    #[test]
    fn second_segment_fetches_fork_block_numbers() {
        let (_dir, _fake, ov, st, file) = setup(131072, 3);
        assert_eq!(ov.read(&st, &file, BLOCK_BYTES, 8192).unwrap(), page_of(131073));
    }

    #[test]
    fn writes_win_over_remote_contents() {
        let (_dir, fake, ov, st, file) = setup(0, 4);
        let mine = vec![0xAB; 8192];
        ov.write(&st, &file, 2 * BLOCK_BYTES, &mine).unwrap();
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 0, "a whole-block write fetches nothing");
        assert_eq!(ov.read(&st, &file, 2 * BLOCK_BYTES, 8192).unwrap(), mine);
        // A half-block write keeps the other half of the remote block.
        ov.write(&st, &file, BLOCK_BYTES + 4096, &[7u8; 4096]).unwrap();
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 1);
        let got = ov.read(&st, &file, BLOCK_BYTES, 8192).unwrap();
        assert_eq!(&got[..4096], &page_of(1)[..4096]);
        assert_eq!(&got[4096..], &[7u8; 4096][..]);
    }

    #[test]
    fn truncate_then_extend_reads_zeros_not_old_blocks() {
        let (_dir, fake, ov, st, file) = setup(0, 8);
        ov.truncate(&st, &file, 2 * BLOCK_BYTES).unwrap();
        assert_eq!(st.pending_count(), 2);
        assert_eq!(ov.read(&st, &file, 5 * BLOCK_BYTES, 8192).unwrap(), Vec::<u8>::new(), "past the end");
        // Extension (as PostgreSQL does: write a new block at the end).
        ov.write(&st, &file, 3 * BLOCK_BYTES, &[9u8; 8192]).unwrap();
        assert_eq!(ov.read(&st, &file, 2 * BLOCK_BYTES, 8192).unwrap(), vec![0u8; 8192], "hole, not block 2 of the start LSN");
        assert_eq!(ov.read(&st, &file, 0, 8192).unwrap(), page_of(0), "kept blocks still come from remote");
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 1);
        assert_eq!(file.metadata().unwrap().len(), 4 * BLOCK_BYTES);
    }

    #[test]
    fn truncate_inside_a_block_keeps_its_head() {
        let (_dir, _fake, ov, st, file) = setup(0, 3);
        ov.truncate(&st, &file, BLOCK_BYTES + 100).unwrap();
        assert_eq!(ov.read(&st, &file, BLOCK_BYTES, 8192).unwrap(), page_of(1)[..100].to_vec());
    }

    #[test]
    fn fetch_failure_is_an_error_and_leaves_the_block_pending() {
        let (_dir, fake, ov, st, file) = setup(0, 3);
        fake.fail.store(true, Ordering::SeqCst);
        assert!(ov.read(&st, &file, 0, 8192).is_err());
        assert!(ov.write(&st, &file, 100, &[1, 2, 3]).is_err(), "partial write needs the block");
        assert_eq!(st.pending_count(), 3);
        fake.fail.store(false, Ordering::SeqCst);
        assert_eq!(ov.read(&st, &file, 0, 8192).unwrap(), page_of(0));
    }

    #[test]
    fn sequential_reads_prefetch_ahead() {
        let (_dir, fake, ov, st, file) = setup(0, 64);
        ov.read(&st, &file, 0, 4 * 8192).unwrap();
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 12, "4 asked + 8 ahead");
        assert_eq!(ov.read(&st, &file, 11 * BLOCK_BYTES, 8192).unwrap(), page_of(11));
        assert_eq!(fake.fetched.load(Ordering::SeqCst), 12);
    }
}
