//! L0 → L1 compaction: merge the level-0 delta files (one per flush, each
//! spanning the whole key space) into level-1 delta files that each cover
//! a key range and, together, the LSN range of the merged L0s.
//!
//! Owns: the L0 definition and the merge. The timeline owns when it runs,
//! the locking and the durable order (new files, then the index naming
//! them and not the L0s, then the map, then deleting the L0 files).
//!
//! Invariants: L0 files are delta files with key range `Key::MIN..Key::MAX`
//! (what flushes write; delta files flushed before compaction existed have
//! narrower ranges and are left alone). The L0s merged are contiguous in
//! LSN, so the L1s (`[first start, last end)`) overlap no other delta file
//! in LSN for any key. A key's versions are never split across two L1
//! files; a file is cut at the first key boundary after it reaches the
//! target size. Values are streamed (k-way merge), not held in memory.
//!
//! Cancellation: blocking file I/O only (callers use `spawn_blocking`); an
//! interrupted merge leaves `.tmp` files or unnamed layer files, removed at
//! the next start.
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Arc;

use utils::lsn::Lsn;

use super::file::{LayerFile, LayerFileError, LayerFileWriter};
use super::LayerDesc;
use crate::storage::key::Key;
use crate::storage::value::Value;

/// Why a merge failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    #[error(transparent)]
    LayerFile(#[from] LayerFileError),
    #[error("writing an L1 file: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether a layer is a level-0 delta (see the module documentation).
pub fn is_level0(desc: &LayerDesc) -> bool {
    !desc.is_image && desc.key_range.start == Key::MIN && desc.key_range.end == Key::MAX
}

type Item = Result<(Key, Lsn, Value), LayerFileError>;

/// Merge `l0` (sorted by LSN) into L1 files of about `target_bytes` in
/// `dir`. Blocking.
pub fn merge_into_l1(
    dir: &Path,
    l0: &[Arc<LayerFile>],
    target_bytes: u64,
    generation: u32,
) -> Result<Vec<LayerFile>, CompactionError> {
    let (Some(first), Some(last)) = (l0.first(), l0.last()) else { return Ok(Vec::new()) };
    let lsn_range = first.desc.lsn_range.start..last.desc.lsn_range.end;
    let mut sources: Vec<Box<dyn Iterator<Item = Item> + '_>> = Vec::with_capacity(l0.len());
    for l in l0 {
        sources.push(Box::new(l.values()?));
    }
    let mut heap = BinaryHeap::new();
    let mut pending: Vec<Option<Value>> = (0..sources.len()).map(|_| None).collect();
    for (i, src) in sources.iter_mut().enumerate() {
        push_next(&mut heap, &mut pending, i, src)?;
    }
    let mut out = Vec::new();
    let mut writer: Option<LayerFileWriter> = None;
    while let Some(Reverse((key, lsn, i))) = heap.pop() {
        let value = pending[i].take().ok_or_else(|| std::io::Error::other("merge lost a value"))?;
        writer = Some(match writer.take() {
            Some(mut w) if w.bytes_written() >= target_bytes && w.last_key() != Some(key) => {
                w.set_key_end(key);
                out.push(w.finish()?);
                new_writer(dir, key, &lsn_range, generation)?
            }
            Some(w) => w,
            None => new_writer(dir, key, &lsn_range, generation)?,
        });
        if let Some(w) = writer.as_mut() {
            w.put(key, lsn, &value)?;
        }
        push_next(&mut heap, &mut pending, i, &mut sources[i])?;
    }
    if let Some(mut w) = writer {
        if let Some(k) = w.last_key() {
            w.set_key_end(k.next());
        }
        out.push(w.finish()?);
    }
    Ok(out)
}

fn new_writer(dir: &Path, start: Key, lsn_range: &std::ops::Range<Lsn>, generation: u32) -> std::io::Result<LayerFileWriter> {
    let desc = LayerDesc { key_range: start..Key::MAX, lsn_range: lsn_range.clone(), is_image: false, generation };
    LayerFileWriter::new(dir, desc)
}

/// Pull source `i`'s next value into the heap.
fn push_next(
    heap: &mut BinaryHeap<Reverse<(Key, Lsn, usize)>>,
    pending: &mut [Option<Value>],
    i: usize,
    src: &mut Box<dyn Iterator<Item = Item> + '_>,
) -> Result<(), CompactionError> {
    if let Some(item) = src.next() {
        let (key, lsn, value) = item?;
        pending[i] = Some(value);
        heap.push(Reverse((key, lsn, i)));
    }
    Ok(())
}
