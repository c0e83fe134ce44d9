//! The immutable layer file, used for both delta layers (key range × LSN
//! range, values are images or records) and image layers (key range at one
//! LSN, values are images).
//!
//! Format version 2 (little endian), written by [`LayerFileWriter`]:
//! ```text
//! header (72 bytes): "STRATALY" | version u32 | is_image u8 | 3 pad
//!                    | key_start 18 | key_end 18 | lsn_start u64 | lsn_end u64 | crc32c u32
//! body:              encoded Values and index blocks, interleaved, in the
//!                    order they were completed
//! footer (32 bytes): root_offset u64 | entries u64 | depth u32 | crc32c u32 (of the
//!                    first 20 bytes) | "STRATEND"
//! ```
//! The index is a B-tree built bottom-up while the values are written:
//! blocks of [`INDEX_BLOCK_SIZE`] bytes, `crc32c u32 (of bytes 4..) | kind
//! u8 (0 leaf, 1 inner) | 3 pad | count u32 | entries`. A leaf entry is
//! `key 18 | lsn u64 | offset u64 | len u32 | crc32c u32` (one per value, in
//! (key, LSN) order); an inner entry is `key 18 | lsn u64 | child offset
//! u64`, the first (key, LSN) of the child's subtree. `depth` is the number
//! of levels (0: no values). The writer holds one partial block per level,
//! so writing is bounded in memory too.
//!
//! Format version 1 (files written before the B-tree) is still read: its
//! index is a flat sorted array of leaf entries after the values, with
//! `index_offset u64 | entries u64 | crc32c u32 | 4 pad | "STRATEND"` as
//! the footer. It is checked once at open by streaming it (its CRC covers
//! the whole array) and then binary-searched in chunks read through the
//! same cache, so old files need no migration and are bounded in memory
//! as well; compaction and image creation replace them by version-2 files
//! over time.
//!
//! Memory: an opened file holds its descriptor and the footer's numbers,
//! nothing that grows with the file. Index blocks are read through the
//! process-wide [`block_cache`] (bounded by bytes), and so are value
//! reads when its value cache is on (aligned value blocks); whole-file scans
//! ([`LayerFile::values`], [`LayerFile::for_each_key`]) read blocks
//! directly, one at a time, without filling the cache.
//!
//! Invariants: a file is written under a temporary name, fsynced, renamed
//! and its directory fsynced, so a file with a layer name is complete. Any
//! damage (short file, bad magic, CRC mismatch, undecodable value, an
//! index entry pointing outside the file) is a [`LayerFileError`] naming
//! the file; nothing here panics on file content.
//!
//! Residence ([`residence`]): a [`LayerFile`] may be *remote* — named by
//! the timeline's index but only in remote storage, downloaded on demand.
//! Reading a remote layer is a [`LayerFileError`] (see
//! [`LayerFileError::is_not_resident`]); readers take a [`LayerPin`] and
//! make the layer resident first, and the pin keeps it from being evicted
//! until the read is done.
//!
//! Cancellation: all functions do blocking file I/O: async callers use
//! `spawn_blocking`. A writer dropped before `finish`, or whose `finish`
//! fails, removes its `.tmp` file (one a crash leaves is removed at the
//! next start).
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use utils::lsn::Lsn;

use super::block_cache::{self, Block, VALUE_BLOCK_BYTES};
use super::{LayerDesc, ReconstructResult, ValueReconstructState};
use crate::storage::key::{Key, KEY_SIZE};
use crate::storage::value::Value;

mod residence;
pub use residence::{EvictOutcome, LayerPin};

const MAGIC: &[u8; 8] = b"STRATALY";
const FOOTER_MAGIC: &[u8; 8] = b"STRATEND";
/// The version [`LayerFileWriter`] writes.
pub const VERSION: u32 = 2;
/// The flat-index version, still read.
pub const VERSION_FLAT_INDEX: u32 = 1;
const HEADER_SIZE: usize = 72;
const FOOTER_SIZE: usize = 32;
const LEAF_ENTRY_SIZE: usize = KEY_SIZE + 8 + 8 + 4 + 4;
const INNER_ENTRY_SIZE: usize = KEY_SIZE + 8 + 8;
/// Bytes of one index block.
pub const INDEX_BLOCK_SIZE: usize = 8192;
const BLOCK_HEADER_SIZE: usize = 12;
const LEAF_CAPACITY: usize = (INDEX_BLOCK_SIZE - BLOCK_HEADER_SIZE) / LEAF_ENTRY_SIZE;
const INNER_CAPACITY: usize = (INDEX_BLOCK_SIZE - BLOCK_HEADER_SIZE) / INNER_ENTRY_SIZE;
const KIND_LEAF: u8 = 0;
const KIND_INNER: u8 = 1;
/// Deepest B-tree accepted (2^64 entries need fewer levels).
const MAX_DEPTH: u32 = 12;
/// Entries of a version-1 index per chunk read through the cache.
const FLAT_CHUNK_ENTRIES: u64 = (INDEX_BLOCK_SIZE / LEAF_ENTRY_SIZE) as u64;
/// Longest run of adjacent values read with one `pread` by a vectored read.
const MAX_COALESCED_READ_BYTES: u64 = 1 << 20;

/// One key of a vectored read ([`LayerFile::visit_keys`]): its versions in
/// `lsn_range` are added to `state`, newest first, until an image or an
/// initialising record (`result` then says `Complete`).
#[derive(Debug)]
pub struct KeyVisit {
    pub key: Key,
    pub lsn_range: Range<Lsn>,
    pub state: ValueReconstructState,
    pub result: ReconstructResult,
}

/// A damaged or unreadable layer file, or one that is not on local disk.
#[derive(Debug, thiserror::Error)]
#[error("layer file {path}: {reason}")]
pub struct LayerFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// The reason of [`LayerFileError`] for a layer that is only in remote
/// storage.
pub const NOT_RESIDENT: &str = "not on local disk (remote only: download it first)";

impl LayerFileError {
    /// Whether the file was not read because it is not resident.
    pub fn is_not_resident(&self) -> bool {
        self.reason == NOT_RESIDENT
    }
}

#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    key: Key,
    lsn: Lsn,
    offset: u64,
    len: u32,
    crc: u32,
}

fn encode_header(desc: &LayerDesc) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12] = desc.is_image as u8;
    h[16..34].copy_from_slice(&desc.key_range.start.to_bytes());
    h[34..52].copy_from_slice(&desc.key_range.end.to_bytes());
    h[52..60].copy_from_slice(&desc.lsn_range.start.0.to_le_bytes());
    h[60..68].copy_from_slice(&desc.lsn_range.end.0.to_le_bytes());
    let crc = crc32c::crc32c(&h[..68]);
    h[68..72].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn key_at(b: &[u8], at: usize) -> Key {
    let mut a = [0u8; KEY_SIZE];
    a.copy_from_slice(&b[at..at + KEY_SIZE]);
    Key::from_bytes(&a)
}

fn encode_leaf_entry(out: &mut Vec<u8>, e: &IndexEntry) {
    out.extend_from_slice(&e.key.to_bytes());
    out.extend_from_slice(&e.lsn.0.to_le_bytes());
    out.extend_from_slice(&e.offset.to_le_bytes());
    out.extend_from_slice(&e.len.to_le_bytes());
    out.extend_from_slice(&e.crc.to_le_bytes());
}

fn decode_leaf_entry(b: &[u8]) -> IndexEntry {
    IndexEntry { key: key_at(b, 0), lsn: Lsn(u64_at(b, 18)), offset: u64_at(b, 26), len: u32_at(b, 34), crc: u32_at(b, 38) }
}

/// One level of the B-tree under construction: its partial block.
struct LevelBuilder {
    kind: u8,
    entries: Vec<u8>,
    count: usize,
    first: Option<(Key, Lsn)>,
    blocks_written: u64,
}

impl LevelBuilder {
    fn new(kind: u8) -> LevelBuilder {
        LevelBuilder { kind, entries: Vec::with_capacity(INDEX_BLOCK_SIZE), count: 0, first: None, blocks_written: 0 }
    }

    fn capacity(&self) -> usize {
        if self.kind == KIND_LEAF { LEAF_CAPACITY } else { INNER_CAPACITY }
    }

    /// The block image of the partial block; resets it.
    fn take_block(&mut self) -> ([u8; INDEX_BLOCK_SIZE], (Key, Lsn)) {
        let mut block = [0u8; INDEX_BLOCK_SIZE];
        block[4] = self.kind;
        block[8..12].copy_from_slice(&(self.count as u32).to_le_bytes());
        block[BLOCK_HEADER_SIZE..BLOCK_HEADER_SIZE + self.entries.len()].copy_from_slice(&self.entries);
        let crc = crc32c::crc32c(&block[4..]);
        block[0..4].copy_from_slice(&crc.to_le_bytes());
        let first = self.first.take().unwrap_or((Key::MIN, Lsn(0)));
        self.entries.clear();
        self.count = 0;
        self.blocks_written += 1;
        (block, first)
    }
}

/// Writes one layer file; values must be added in (key, LSN) order.
pub struct LayerFileWriter {
    desc: LayerDesc,
    dir: PathBuf,
    tmp: TmpFile,
    out: BufWriter<File>,
    offset: u64,
    entries: u64,
    last: Option<(Key, Lsn)>,
    /// Partial index blocks, leaves first.
    levels: Vec<LevelBuilder>,
    buf: BytesMut,
}

impl LayerFileWriter {
    pub fn new(dir: &Path, desc: LayerDesc) -> std::io::Result<LayerFileWriter> {
        let tmp = TmpFile(dir.join(format!("{}.tmp", desc.file_name())));
        let file = File::create(&tmp.0)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&encode_header(&desc))?;
        Ok(LayerFileWriter {
            desc,
            dir: dir.to_path_buf(),
            tmp,
            out,
            offset: HEADER_SIZE as u64,
            entries: 0,
            last: None,
            levels: vec![LevelBuilder::new(KIND_LEAF)],
            buf: BytesMut::new(),
        })
    }

    pub fn put(&mut self, key: Key, lsn: Lsn, value: &Value) -> std::io::Result<()> {
        if self.last.is_some_and(|last| last > (key, lsn)) {
            return Err(std::io::Error::other(format!("values out of order at {key} {lsn}")));
        }
        self.buf.clear();
        value.encode(&mut self.buf);
        self.out.write_all(&self.buf)?;
        let len = self.buf.len() as u32;
        let entry = IndexEntry { key, lsn, offset: self.offset, len, crc: crc32c::crc32c(&self.buf) };
        self.offset += len as u64;
        self.entries += 1;
        self.last = Some((key, lsn));
        let leaf = &mut self.levels[0];
        leaf.first.get_or_insert((key, lsn));
        encode_leaf_entry(&mut leaf.entries, &entry);
        leaf.count += 1;
        if leaf.count == leaf.capacity() {
            self.write_block(0)?;
        }
        Ok(())
    }

    /// Write level `level`'s partial block and enter it into its parent
    /// (writing the parent too when that fills up).
    fn write_block(&mut self, level: usize) -> std::io::Result<u64> {
        let (block, first) = self.levels[level].take_block();
        let at = self.offset;
        self.out.write_all(&block)?;
        self.offset += INDEX_BLOCK_SIZE as u64;
        if self.levels.len() == level + 1 {
            self.levels.push(LevelBuilder::new(KIND_INNER));
        }
        let parent = &mut self.levels[level + 1];
        parent.first.get_or_insert(first);
        parent.entries.extend_from_slice(&first.0.to_bytes());
        parent.entries.extend_from_slice(&first.1 .0.to_le_bytes());
        parent.entries.extend_from_slice(&at.to_le_bytes());
        parent.count += 1;
        if parent.count == parent.capacity() {
            self.write_block(level + 1)?;
        }
        Ok(at)
    }

    pub fn num_entries(&self) -> usize {
        self.entries as usize
    }

    /// Bytes written so far (header, values and index blocks).
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// The last key written, if any.
    pub fn last_key(&self) -> Option<Key> {
        self.last.map(|(k, _)| k)
    }

    /// Change the end of the key range (known only when a compaction cuts
    /// the file); the header is rewritten by [`LayerFileWriter::finish`].
    pub fn set_key_end(&mut self, end: Key) {
        self.desc.key_range.end = end;
    }

    /// Write the rest of the index and the footer, make the file durable
    /// under its final name.
    pub fn finish(mut self) -> std::io::Result<LayerFile> {
        let (mut root, mut depth) = (0u64, 0u32);
        if self.entries > 0 {
            let mut level = 0;
            loop {
                let top = level + 1 == self.levels.len();
                if top && self.levels[level].blocks_written == 0 {
                    // The only block of the highest level: the root. It
                    // is not entered into a parent.
                    let (block, _) = self.levels[level].take_block();
                    root = self.offset;
                    self.out.write_all(&block)?;
                    self.offset += INDEX_BLOCK_SIZE as u64;
                    depth = level as u32 + 1;
                    break;
                }
                if self.levels[level].count > 0 {
                    self.write_block(level)?;
                }
                level += 1;
            }
        }
        let mut footer = [0u8; FOOTER_SIZE];
        footer[0..8].copy_from_slice(&root.to_le_bytes());
        footer[8..16].copy_from_slice(&self.entries.to_le_bytes());
        footer[16..20].copy_from_slice(&depth.to_le_bytes());
        let crc = crc32c::crc32c(&footer[..20]);
        footer[20..24].copy_from_slice(&crc.to_le_bytes());
        footer[24..32].copy_from_slice(FOOTER_MAGIC);
        self.out.write_all(&footer)?;
        let size = self.offset + FOOTER_SIZE as u64;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.write_all_at(&encode_header(&self.desc), 0)?;
        file.sync_all()?;
        drop(file);
        let final_path = self.dir.join(self.desc.file_name());
        fs::rename(&self.tmp.0, &final_path)?;
        std::mem::forget(self.tmp);
        utils::fs::fsync_dir(&self.dir)?;
        Ok(LayerFile::new(final_path, self.desc, size))
    }
}

/// The temporary file of an unfinished [`LayerFileWriter`]: removed when
/// the writer is dropped or fails (a full disk, an I/O error), so a failed
/// write holds no space; forgotten once renamed to its final name.
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// An immutable layer file: on local disk (resident), or only in remote
/// storage (see [`residence`]).
pub struct LayerFile {
    pub path: PathBuf,
    pub desc: LayerDesc,
    pub size_bytes: u64,
    /// The opened file (a failure to open is remembered until eviction).
    /// Taken only in blocking code; `residence.resident` changes only while
    /// it is held (see [`residence`]).
    opened: Mutex<Option<Result<Arc<Opened>, String>>>,
    residence: residence::Residence,
    /// What GC must see covered before removing this layer, once computed
    /// (kept across eviction: GC needs no download for it).
    pub(crate) gc_key_runs: OnceLock<Vec<Range<Key>>>,
}

/// Where the index is.
#[derive(Clone, Copy, Debug)]
enum IndexShape {
    /// Version 2.
    BTree { root: u64, depth: u32 },
    /// Version 1: `entries` leaf entries at `offset`.
    Flat { offset: u64 },
}

struct Opened {
    file: File,
    /// This opening's id in the block cache.
    file_id: u64,
    len: u64,
    entries: u64,
    shape: IndexShape,
}

impl Drop for Opened {
    fn drop(&mut self) {
        block_cache::global().forget_file(self.file_id);
        block_cache::values().forget_file(self.file_id);
    }
}

/// A position in the index: the first entry at or after a (key, LSN).
enum Cursor {
    /// Root to leaf: a block and the entry index in it (at the leaf, may be
    /// the block's count: past the leaf's last entry).
    BTree(Vec<(Block, usize)>),
    /// Ordinal of the entry (may be `entries`: past the end).
    Flat(u64),
}

fn block_count(b: &[u8]) -> usize {
    u32_at(b, 8) as usize
}

fn inner_child(b: &[u8], i: usize) -> u64 {
    u64_at(b, BLOCK_HEADER_SIZE + i * INNER_ENTRY_SIZE + KEY_SIZE + 8)
}

fn inner_first(b: &[u8], i: usize) -> (Key, Lsn) {
    let at = BLOCK_HEADER_SIZE + i * INNER_ENTRY_SIZE;
    (key_at(b, at), Lsn(u64_at(b, at + KEY_SIZE)))
}

fn leaf_entry(b: &[u8], i: usize) -> IndexEntry {
    decode_leaf_entry(&b[BLOCK_HEADER_SIZE + i * LEAF_ENTRY_SIZE..])
}

impl LayerFile {
    /// A layer whose complete file is on local disk.
    pub fn new(path: PathBuf, desc: LayerDesc, size_bytes: u64) -> LayerFile {
        LayerFile::with_residence(path, desc, size_bytes, true)
    }

    /// A layer that is only in remote storage (its file is downloaded on
    /// demand to `path`).
    pub fn new_remote(path: PathBuf, desc: LayerDesc, size_bytes: u64) -> LayerFile {
        LayerFile::with_residence(path, desc, size_bytes, false)
    }

    fn with_residence(path: PathBuf, desc: LayerDesc, size_bytes: u64, resident: bool) -> LayerFile {
        LayerFile {
            path,
            desc,
            size_bytes,
            opened: Mutex::new(None),
            residence: residence::Residence::new(resident),
            gc_key_runs: OnceLock::new(),
        }
    }

    /// The file name (the index's name for the layer, which may be a name
    /// from before generations).
    pub fn file_name(&self) -> String {
        self.path.file_name().map_or_else(|| self.desc.file_name(), |n| n.to_string_lossy().into_owned())
    }

    fn err(&self, reason: impl Into<String>) -> LayerFileError {
        LayerFileError { path: self.path.clone(), reason: reason.into() }
    }

    fn not_resident(&self) -> LayerFileError {
        self.err(NOT_RESIDENT)
    }

    /// Open the file and check header and footer (once while resident; a
    /// failure is remembered). A layer that is not resident is an error
    /// ([`LayerFileError::not_resident`]): callers pin it resident first
    /// (see [`residence`]). Blocking.
    fn opened(&self) -> Result<Arc<Opened>, LayerFileError> {
        let mut slot = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if !self.residence.is_resident() {
            return Err(self.not_resident());
        }
        let opened = slot.get_or_insert_with(|| self.open().map(Arc::new));
        opened.clone().map_err(|reason| self.err(reason))
    }

    fn open(&self) -> Result<Opened, String> {
        let file = File::open(&self.path).map_err(|e| format!("open: {e}"))?;
        let len = file.metadata().map_err(|e| format!("stat: {e}"))?.len();
        if len < (HEADER_SIZE + FOOTER_SIZE) as u64 {
            return Err(format!("file of {len} bytes is too short"));
        }
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0).map_err(|e| format!("read header: {e}"))?;
        let version = u32_at(&header, 8);
        if &header[0..8] != MAGIC || !(version == VERSION || version == VERSION_FLAT_INDEX) {
            return Err("bad magic or version in header".into());
        }
        if crc32c::crc32c(&header[..68]) != u32_at(&header, 68) {
            return Err("header checksum mismatch".into());
        }
        let desc = LayerDesc {
            key_range: key_at(&header, 16)..key_at(&header, 34),
            lsn_range: Lsn(u64_at(&header, 52))..Lsn(u64_at(&header, 60)),
            is_image: header[12] != 0,
            generation: self.desc.generation,
        };
        if desc != self.desc {
            return Err(format!("header describes {desc}, the name says {}", self.desc));
        }
        let mut footer = [0u8; FOOTER_SIZE];
        file.read_exact_at(&mut footer, len - FOOTER_SIZE as u64).map_err(|e| format!("read footer: {e}"))?;
        if &footer[24..32] != FOOTER_MAGIC {
            return Err("bad footer magic".into());
        }
        let file_id = block_cache::next_file_id();
        let body_end = len - FOOTER_SIZE as u64;
        if version == VERSION {
            if crc32c::crc32c(&footer[..20]) != u32_at(&footer, 20) {
                return Err("footer checksum mismatch".into());
            }
            let (root, entries, depth) = (u64_at(&footer, 0), u64_at(&footer, 8), u32_at(&footer, 16));
            let fits = root >= HEADER_SIZE as u64 && root.checked_add(INDEX_BLOCK_SIZE as u64).is_some_and(|e| e <= body_end);
            if depth > MAX_DEPTH || (depth == 0) != (entries == 0) || (depth > 0 && !fits) {
                return Err(format!("index root at {root} of depth {depth} for {entries} entries does not fit the file"));
            }
            return Ok(Opened { file, file_id, len, entries, shape: IndexShape::BTree { root, depth } });
        }
        let (index_offset, entries) = (u64_at(&footer, 0), u64_at(&footer, 8));
        let index_len = entries.checked_mul(LEAF_ENTRY_SIZE as u64);
        if index_len.and_then(|l| l.checked_add(index_offset)) != Some(body_end) || index_offset < HEADER_SIZE as u64 {
            return Err(format!("index of {entries} entries at {index_offset} does not fit the file"));
        }
        let opened = Opened { file, file_id, len, entries, shape: IndexShape::Flat { offset: index_offset } };
        self.check_flat_index(&opened, u32_at(&footer, 16))?;
        Ok(opened)
    }

    /// Version 1: the CRC of the whole index, sortedness and value bounds,
    /// streamed chunk by chunk.
    fn check_flat_index(&self, opened: &Opened, want_crc: u32) -> Result<(), String> {
        let IndexShape::Flat { offset } = opened.shape else { return Ok(()) };
        let mut crc = 0u32;
        let mut prev: Option<(Key, Lsn)> = None;
        let mut chunk = 0;
        while chunk * FLAT_CHUNK_ENTRIES < opened.entries {
            let buf = self.read_flat_chunk(opened, offset, chunk).map_err(|e| e.reason)?;
            crc = crc32c::crc32c_append(crc, &buf);
            for raw in buf.chunks_exact(LEAF_ENTRY_SIZE) {
                let e = decode_leaf_entry(raw);
                if !within(e.offset, e.len as u64, offset) {
                    return Err(format!("index entry for {} points outside the values", e.key));
                }
                if prev.is_some_and(|p| p > (e.key, e.lsn)) {
                    return Err("index is not sorted".into());
                }
                prev = Some((e.key, e.lsn));
            }
            chunk += 1;
        }
        if crc != want_crc {
            return Err("index checksum mismatch".into());
        }
        Ok(())
    }

    fn read_flat_chunk(&self, opened: &Opened, index_offset: u64, chunk: u64) -> Result<Block, LayerFileError> {
        let first = chunk * FLAT_CHUNK_ENTRIES;
        let n = (opened.entries - first).min(FLAT_CHUNK_ENTRIES);
        let mut buf = vec![0u8; n as usize * LEAF_ENTRY_SIZE];
        let at = index_offset + first * LEAF_ENTRY_SIZE as u64;
        opened.file.read_exact_at(&mut buf, at).map_err(|e| self.err(format!("read index at {at}: {e}")))?;
        Ok(buf.into())
    }

    /// Read and check the index block at `offset` (through the cache if
    /// `cached`).
    fn block(&self, opened: &Opened, offset: u64, cached: bool) -> Result<Block, LayerFileError> {
        let load = || -> Result<Block, LayerFileError> {
            if !within(offset, INDEX_BLOCK_SIZE as u64, opened.len - FOOTER_SIZE as u64) {
                return Err(self.err(format!("index block at {offset} is outside the file")));
            }
            let mut buf = vec![0u8; INDEX_BLOCK_SIZE];
            opened.file.read_exact_at(&mut buf, offset).map_err(|e| self.err(format!("read index block at {offset}: {e}")))?;
            if crc32c::crc32c(&buf[4..]) != u32_at(&buf, 0) {
                return Err(self.err(format!("checksum mismatch in the index block at {offset}")));
            }
            let cap = match buf[4] {
                KIND_LEAF => LEAF_CAPACITY,
                KIND_INNER => INNER_CAPACITY,
                k => return Err(self.err(format!("index block at {offset} has kind {k}"))),
            };
            let count = block_count(&buf);
            if count == 0 || count > cap {
                return Err(self.err(format!("index block at {offset} has {count} entries")));
            }
            Ok(buf.into())
        };
        if cached {
            block_cache::global().get_or_load(opened.file_id, offset, load)
        } else {
            load()
        }
    }

    /// The block at `offset` on a path where level `level` (0 = root) of
    /// `depth` is expected: inner blocks above the leaves, leaves at the
    /// bottom.
    fn block_at_level(&self, opened: &Opened, offset: u64, level: u32, depth: u32, cached: bool) -> Result<Block, LayerFileError> {
        let b = self.block(opened, offset, cached)?;
        let want = if level + 1 == depth { KIND_LEAF } else { KIND_INNER };
        if b[4] != want {
            return Err(self.err(format!("index block at {offset} is not a {} block", if want == KIND_LEAF { "leaf" } else { "inner" })));
        }
        Ok(b)
    }

    /// Entry `i` of a version-1 index. Always through the cache (also for
    /// scans: a chunk holds 195 consecutive entries, read once).
    fn flat_entry(&self, opened: &Opened, i: u64) -> Result<IndexEntry, LayerFileError> {
        let IndexShape::Flat { offset } = opened.shape else { return Err(self.err("not a flat index")) };
        let chunk = i / FLAT_CHUNK_ENTRIES;
        let load = || self.read_flat_chunk(opened, offset, chunk);
        let buf = block_cache::global().get_or_load(opened.file_id, chunk, load)?;
        let at = (i % FLAT_CHUNK_ENTRIES) as usize * LEAF_ENTRY_SIZE;
        Ok(decode_leaf_entry(&buf[at..]))
    }

    /// A cursor at the first entry `>= (key, lsn)`.
    fn seek(&self, opened: &Opened, key: Key, lsn: Lsn, cached: bool) -> Result<Cursor, LayerFileError> {
        let target = (key, lsn);
        match opened.shape {
            IndexShape::Flat { .. } => {
                let (mut lo, mut hi) = (0, opened.entries);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    let e = self.flat_entry(opened, mid)?;
                    if (e.key, e.lsn) < target {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                Ok(Cursor::Flat(lo))
            }
            IndexShape::BTree { depth: 0, .. } => Ok(Cursor::BTree(Vec::new())),
            IndexShape::BTree { root, depth } => {
                let mut path = Vec::with_capacity(depth as usize);
                let mut offset = root;
                for level in 0..depth {
                    let b = self.block_at_level(opened, offset, level, depth, cached)?;
                    let n = block_count(&b);
                    if level + 1 < depth {
                        // The last child whose first entry is <= target.
                        let i = partition_point(n, |i| inner_first(&b, i) <= target).saturating_sub(1);
                        offset = inner_child(&b, i);
                        path.push((b, i));
                    } else {
                        let i = partition_point(n, |i| {
                            let e = leaf_entry(&b, i);
                            (e.key, e.lsn) < target
                        });
                        path.push((b, i));
                    }
                }
                // Past the leaf's last entry: the next entry starts the next leaf.
                let past_leaf = path.last_mut().is_some_and(|(leaf, i)| {
                    let past = *i == block_count(leaf);
                    if past {
                        *i -= 1;
                    }
                    past
                });
                let mut cursor = Cursor::BTree(path);
                if past_leaf {
                    self.advance(opened, &mut cursor, cached)?;
                }
                Ok(cursor)
            }
        }
    }

    /// The entry at the cursor, if it is not past the end.
    fn current(&self, opened: &Opened, cursor: &Cursor, _cached: bool) -> Result<Option<IndexEntry>, LayerFileError> {
        let e = match cursor {
            Cursor::Flat(i) if *i < opened.entries => self.flat_entry(opened, *i)?,
            Cursor::Flat(_) => return Ok(None),
            Cursor::BTree(path) => match path.last() {
                Some((leaf, i)) if *i < block_count(leaf) => leaf_entry(leaf, *i),
                _ => return Ok(None),
            },
        };
        if !within(e.offset, e.len as u64, opened.len - FOOTER_SIZE as u64) {
            return Err(self.err(format!("index entry for {} points outside the file", e.key)));
        }
        Ok(Some(e))
    }

    /// Move to the next entry; false (and past the end) when there is none.
    fn advance(&self, opened: &Opened, cursor: &mut Cursor, cached: bool) -> Result<bool, LayerFileError> {
        let path = match cursor {
            Cursor::Flat(i) => {
                *i = (*i + 1).min(opened.entries);
                return Ok(*i < opened.entries);
            }
            Cursor::BTree(path) => path,
        };
        let depth = path.len();
        let Some((leaf, i)) = path.last_mut() else { return Ok(false) };
        let n = block_count(leaf);
        if *i + 1 < n {
            *i += 1;
            return Ok(true);
        }
        // The nearest ancestor with a next child, then leftmost down.
        let Some(level) = (0..depth - 1).rev().find(|&l| path[l].1 + 1 < block_count(&path[l].0)) else {
            if let Some((_, i)) = path.last_mut() {
                *i = n;
            }
            return Ok(false);
        };
        path[level].1 += 1;
        for l in level + 1..depth {
            let child = inner_child(&path[l - 1].0, path[l - 1].1);
            path[l] = (self.block_at_level(opened, child, l as u32, depth as u32, cached)?, 0);
        }
        Ok(true)
    }

    /// Move to the previous entry; false when there is none.
    fn retreat(&self, opened: &Opened, cursor: &mut Cursor, cached: bool) -> Result<bool, LayerFileError> {
        let path = match cursor {
            Cursor::Flat(i) if *i > 0 => {
                *i -= 1;
                return Ok(true);
            }
            Cursor::Flat(_) => return Ok(false),
            Cursor::BTree(path) => path,
        };
        let depth = path.len();
        let Some((_, i)) = path.last_mut() else { return Ok(false) };
        if *i > 0 {
            *i -= 1;
            return Ok(true);
        }
        let Some(level) = (0..depth - 1).rev().find(|&l| path[l].1 > 0) else { return Ok(false) };
        path[level].1 -= 1;
        for l in level + 1..depth {
            let child = inner_child(&path[l - 1].0, path[l - 1].1);
            let b = self.block_at_level(opened, child, l as u32, depth as u32, cached)?;
            let last = block_count(&b) - 1;
            path[l] = (b, last);
        }
        Ok(true)
    }

    /// Check header, footer and every index block (values are checked as
    /// read); the number of values.
    pub fn verify(&self) -> Result<usize, LayerFileError> {
        let opened = self.opened()?;
        let mut cursor = self.seek(&opened, Key::MIN, Lsn(0), false)?;
        let (mut n, mut prev) = (0u64, None);
        while let Some(e) = self.current(&opened, &cursor, false)? {
            if prev.is_some_and(|p| p > (e.key, e.lsn)) {
                return Err(self.err("index is not sorted"));
            }
            prev = Some((e.key, e.lsn));
            n += 1;
            self.advance(&opened, &mut cursor, false)?;
        }
        if n != opened.entries {
            return Err(self.err(format!("index holds {n} entries, the footer says {}", opened.entries)));
        }
        Ok(n as usize)
    }

    fn read_value(&self, opened: &Opened, e: &IndexEntry) -> Result<Value, LayerFileError> {
        let mut buf = vec![0u8; e.len as usize];
        opened.file.read_exact_at(&mut buf, e.offset).map_err(|err| self.err(format!("read value: {err}")))?;
        self.check_value(e, Bytes::from(buf))
    }

    /// Collect `key`'s versions in `lsn_range`, newest first, until an
    /// image or an initialising record (a [`LayerFile::visit_keys`] of one
    /// key). Blocking.
    pub fn get_value_reconstruct_data(
        &self,
        key: Key,
        lsn_range: Range<Lsn>,
        state: &mut ValueReconstructState,
    ) -> Result<ReconstructResult, LayerFileError> {
        let visit = KeyVisit { key, lsn_range, state: std::mem::take(state), result: ReconstructResult::Continue };
        let mut visits = [visit];
        let r = self.visit_keys(&mut visits);
        let [visit] = visits;
        *state = visit.state;
        r.map(|()| visit.result)
    }

    /// [`LayerFile::get_value_reconstruct_data`] for many keys at once (a
    /// vectored read): every key's index entries are found first (index
    /// blocks through the block cache), then the values are read with one
    /// `pread` per run of adjacent values (values of consecutive keys are
    /// adjacent in the file), and decoded in place: each value is a slice
    /// of its run's buffer, no allocation per value. Each visit's `result`
    /// says whether its walk is complete. Blocking.
    pub fn visit_keys(&self, visits: &mut [KeyVisit]) -> Result<(), LayerFileError> {
        let opened = self.opened()?;
        // (visit index, entry), newest first per visit.
        let mut wanted: Vec<(usize, IndexEntry)> = Vec::with_capacity(visits.len());
        for (i, v) in visits.iter().enumerate() {
            let mut cursor = self.seek(&opened, v.key, v.lsn_range.end, true)?;
            while self.retreat(&opened, &mut cursor, true)? {
                let Some(e) = self.current(&opened, &cursor, true)? else { break };
                if e.key != v.key || e.lsn < v.lsn_range.start {
                    break;
                }
                wanted.push((i, e));
                if self.desc.is_image {
                    break; // every value of an image layer is an image
                }
            }
        }
        let values = self.read_values_coalesced(&opened, &wanted)?;
        let mut stopped = vec![false; visits.len()];
        for ((i, e), value) in wanted.iter().zip(values) {
            if stopped[*i] {
                continue;
            }
            let st = &mut visits[*i].state;
            match value {
                Value::Image(img) => {
                    st.img = Some((e.lsn, img));
                    stopped[*i] = true;
                }
                Value::WalRecord(rec) => {
                    stopped[*i] = rec.will_init();
                    st.records.push((e.lsn, rec));
                }
            }
        }
        for (v, stop) in visits.iter_mut().zip(stopped) {
            v.result = if stop { ReconstructResult::Complete } else { ReconstructResult::Continue };
        }
        Ok(())
    }

    /// The values of `entries` (in their order), read in runs of adjacent
    /// values: one read and one buffer per run, each value a slice of it.
    fn read_values_coalesced(&self, opened: &Opened, entries: &[(usize, IndexEntry)]) -> Result<Vec<Value>, LayerFileError> {
        let mut by_offset: Vec<usize> = (0..entries.len()).collect();
        by_offset.sort_unstable_by_key(|&i| entries[i].1.offset);
        let mut values: Vec<Option<Value>> = (0..entries.len()).map(|_| None).collect();
        let mut run_start = 0;
        while run_start < by_offset.len() {
            let first = &entries[by_offset[run_start]].1;
            let (start, mut end) = (first.offset, first.offset + first.len as u64);
            let mut run_end = run_start + 1;
            while run_end < by_offset.len() {
                let e = &entries[by_offset[run_end]].1;
                if e.offset > end || e.offset + (e.len as u64) - start > MAX_COALESCED_READ_BYTES {
                    break;
                }
                end = end.max(e.offset + e.len as u64);
                run_end += 1;
            }
            let len = usize::try_from(end - start).map_err(|_| self.err(format!("value run of {} bytes", end - start)))?;
            let buf = self.read_run(opened, start, len)?;
            for &i in &by_offset[run_start..run_end] {
                let e = &entries[i].1;
                let at = (e.offset - start) as usize;
                let raw = buf.slice(at..at + e.len as usize);
                values[i] = Some(self.check_value(e, raw)?);
            }
            run_start = run_end;
        }
        Ok(values.into_iter().flatten().collect())
    }

    /// Bytes `start..start + len` of the file: through the value block
    /// cache when it is on (a slice of one cached block, or assembled from
    /// the blocks it spans), else with one `pread`.
    fn read_run(&self, opened: &Opened, start: u64, len: usize) -> Result<Bytes, LayerFileError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let Some(end) = start.checked_add(len as u64).filter(|&e| e <= opened.len) else {
            return Err(self.err(format!("value run of {len} bytes at {start} outside the file ({} bytes)", opened.len)));
        };
        if !block_cache::values().is_enabled() {
            let mut buf = BytesMut::zeroed(len);
            opened.file.read_exact_at(&mut buf, start).map_err(|err| self.err(format!("read values at {start}: {err}")))?;
            return Ok(buf.freeze());
        }
        let (first, last) = (start / VALUE_BLOCK_BYTES, (end - 1) / VALUE_BLOCK_BYTES);
        if first == last {
            let at = (start - first * VALUE_BLOCK_BYTES) as usize;
            return Ok(Bytes::from_owner(self.value_block(opened, first)?).slice(at..at + len));
        }
        let mut buf = BytesMut::with_capacity(len);
        for b in first..=last {
            let block = self.value_block(opened, b)?;
            let block_start = b * VALUE_BLOCK_BYTES;
            let from = (start.max(block_start) - block_start) as usize;
            let to = (end.min(block_start + block.len() as u64) - block_start) as usize;
            buf.extend_from_slice(&block[from..to]);
        }
        Ok(buf.freeze())
    }

    /// Value block `block` (the file's bytes from `block *
    /// VALUE_BLOCK_BYTES`, the last block shorter), from the value cache.
    fn value_block(&self, opened: &Opened, block: u64) -> Result<Block, LayerFileError> {
        let offset = block * VALUE_BLOCK_BYTES;
        let load = || {
            let n = opened.len.saturating_sub(offset).min(VALUE_BLOCK_BYTES) as usize;
            let mut buf = vec![0u8; n];
            opened.file.read_exact_at(&mut buf, offset).map_err(|err| self.err(format!("read value block at {offset}: {err}")))?;
            Ok::<Block, LayerFileError>(buf.into())
        };
        block_cache::values().get_or_load(opened.file_id, block, load)
    }

    /// Check a value's CRC and decode it (in place: images are slices of `raw`).
    fn check_value(&self, e: &IndexEntry, raw: Bytes) -> Result<Value, LayerFileError> {
        if crc32c::crc32c(&raw) != e.crc {
            return Err(self.err(format!("checksum mismatch in the value of {} at {}", e.key, e.lsn)));
        }
        Value::decode(raw).map_err(|r| self.err(format!("value of {} at {}: {r}", e.key, e.lsn)))
    }

    /// Whether the file holds a value of some key in `key_range`. Blocking.
    pub fn has_key_in(&self, key_range: &Range<Key>) -> Result<bool, LayerFileError> {
        let opened = self.opened()?;
        let cursor = self.seek(&opened, key_range.start, Lsn(0), true)?;
        Ok(self.current(&opened, &cursor, true)?.is_some_and(|e| e.key < key_range.end))
    }

    /// Bytes of the values of keys in `key_range` at LSNs above
    /// `above_lsn`, summed from the index alone (no value is read); the
    /// walk stops once the sum reaches `limit_bytes`. Blocking.
    pub fn value_bytes_in(&self, key_range: &Range<Key>, above_lsn: Lsn, limit_bytes: u64) -> Result<u64, LayerFileError> {
        let opened = self.opened()?;
        let mut cursor = self.seek(&opened, key_range.start, Lsn(0), true)?;
        let mut sum = 0u64;
        while sum < limit_bytes {
            let Some(e) = self.current(&opened, &cursor, true)? else { break };
            if e.key >= key_range.end {
                break;
            }
            if e.lsn > above_lsn {
                sum += e.len as u64;
            }
            self.advance(&opened, &mut cursor, true)?;
        }
        Ok(sum)
    }

    /// Every value in (key, LSN) order, read one at a time (index blocks
    /// too: memory does not grow with the file). Blocking.
    pub fn values(&self) -> Result<impl Iterator<Item = Result<(Key, Lsn, Value), LayerFileError>> + '_, LayerFileError> {
        let opened = self.opened()?;
        let cursor = self.seek(&opened, Key::MIN, Lsn(0), false)?;
        Ok(ValueIter { file: self, opened, cursor, failed: false })
    }

    /// Call `f` with every key held, in order, once each. Blocking.
    pub fn for_each_key(&self, mut f: impl FnMut(Key)) -> Result<(), LayerFileError> {
        let opened = self.opened()?;
        let mut cursor = self.seek(&opened, Key::MIN, Lsn(0), false)?;
        let mut last = None;
        while let Some(e) = self.current(&opened, &cursor, false)? {
            if last != Some(e.key) {
                f(e.key);
                last = Some(e.key);
            }
            self.advance(&opened, &mut cursor, false)?;
        }
        Ok(())
    }

    /// Every key held (sorted, deduplicated). Blocking; memory grows with
    /// the number of keys (for tests; see [`LayerFile::for_each_key`]).
    pub fn keys(&self) -> Result<Vec<Key>, LayerFileError> {
        let mut keys = Vec::new();
        self.for_each_key(|k| keys.push(k))?;
        Ok(keys)
    }

    /// The format version of the file (opens it).
    pub fn format_version(&self) -> Result<u32, LayerFileError> {
        Ok(match self.opened()?.shape {
            IndexShape::BTree { .. } => VERSION,
            IndexShape::Flat { .. } => VERSION_FLAT_INDEX,
        })
    }
}

struct ValueIter<'a> {
    file: &'a LayerFile,
    opened: Arc<Opened>,
    cursor: Cursor,
    failed: bool,
}

impl Iterator for ValueIter<'_> {
    type Item = Result<(Key, Lsn, Value), LayerFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut step = || -> Result<Option<(Key, Lsn, Value)>, LayerFileError> {
            let Some(e) = self.file.current(&self.opened, &self.cursor, false)? else { return Ok(None) };
            let value = self.file.read_value(&self.opened, &e)?;
            self.file.advance(&self.opened, &mut self.cursor, false)?;
            Ok(Some((e.key, e.lsn, value)))
        };
        let r = step();
        match r {
            Ok(Some(v)) => Some(Ok(v)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// The number of leading `i` in `0..n` for which `pred` holds (it must be
/// true then false).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Write a layer file in the version-1 format (flat index), as files were
/// written before version 2: for tests of reading old files.
#[doc(hidden)]
pub fn write_version1_for_tests(dir: &Path, desc: &LayerDesc, values: &[(Key, Lsn, Value)]) -> std::io::Result<LayerFile> {
    let path = dir.join(desc.file_name());
    let mut header = encode_header(desc);
    header[8..12].copy_from_slice(&VERSION_FLAT_INDEX.to_le_bytes());
    let crc = crc32c::crc32c(&header[..68]);
    header[68..72].copy_from_slice(&crc.to_le_bytes());
    let mut out = header.to_vec();
    let mut idx = Vec::new();
    for (key, lsn, value) in values {
        let mut buf = BytesMut::new();
        value.encode(&mut buf);
        let e = IndexEntry { key: *key, lsn: *lsn, offset: out.len() as u64, len: buf.len() as u32, crc: crc32c::crc32c(&buf) };
        out.extend_from_slice(&buf);
        encode_leaf_entry(&mut idx, &e);
    }
    let index_offset = out.len() as u64;
    out.extend_from_slice(&idx);
    let mut footer = [0u8; FOOTER_SIZE];
    footer[0..8].copy_from_slice(&index_offset.to_le_bytes());
    footer[8..16].copy_from_slice(&(values.len() as u64).to_le_bytes());
    footer[16..20].copy_from_slice(&crc32c::crc32c(&idx).to_le_bytes());
    footer[24..32].copy_from_slice(FOOTER_MAGIC);
    out.extend_from_slice(&footer);
    fs::write(&path, &out)?;
    Ok(LayerFile::new(path, desc.clone(), out.len() as u64))
}

/// Whether `len` bytes at `offset` (both read from the file) lie between
/// the header and `end`, without overflow whatever the values.
fn within(offset: u64, len: u64, end: u64) -> bool {
    offset >= HEADER_SIZE as u64 && offset.checked_add(len).is_some_and(|e| e <= end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::value::Value;

    #[test]
    fn offsets_from_the_file_never_overflow() {
        let h = HEADER_SIZE as u64;
        assert!(within(h, 10, h + 10));
        assert!(!within(h, 11, h + 10));
        assert!(!within(h - 1, 1, h + 10), "inside the header");
        assert!(!within(u64::MAX - 5, 10, u64::MAX), "offset + len wraps");
    }

    mod round_trip {
        //! Property: whatever is written to a layer file reads back, and
        //! every lookup answers what a walk over the written entries
        //! (the model) answers.
        use super::*;
        use crate::walredo::WalRecord;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| Value::Image(Bytes::from(b))),
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300))
                    .prop_map(|(will_init, b)| Value::WalRecord(WalRecord::Postgres { will_init, rec: Bytes::from(b) })),
            ]
        }

        /// (key number, LSN) → value: keys sparse in 0..400, LSNs 8-aligned.
        fn entries() -> impl Strategy<Value = BTreeMap<(u32, u64), Value>> {
            proptest::collection::btree_map((0u32..400, (4u64..600).prop_map(|l| l * 8)), value(), 1..600)
        }

        /// The model's answer for `key` below `lsn`: newest first, until an
        /// image or an initialising record.
        fn model(entries: &BTreeMap<(u32, u64), Value>, k: u32, below: u64) -> ValueReconstructState {
            let mut st = ValueReconstructState::default();
            for ((_, lsn), v) in entries.range((k, 0)..(k, below)).rev() {
                match v {
                    Value::Image(img) => {
                        st.img = Some((Lsn(*lsn), img.clone()));
                        break;
                    }
                    Value::WalRecord(rec) => {
                        st.records.push((Lsn(*lsn), rec.clone()));
                        if rec.will_init() {
                            break;
                        }
                    }
                }
            }
            st
        }

        fn same(a: &ValueReconstructState, b: &ValueReconstructState) -> bool {
            a.records == b.records && a.img == b.img
        }

        fn write(dir: &Path, entries: &BTreeMap<(u32, u64), Value>) -> LayerFile {
            let mut w = LayerFileWriter::new(dir, desc()).unwrap();
            for ((k, lsn), v) in entries {
                w.put(key(*k), Lsn(*lsn), v).unwrap();
            }
            w.finish().unwrap()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            #[test]
            fn written_entries_read_back_and_lookups_match_the_model(entries in entries(), picks in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4), 1..40)) {
                // Probes at written entries: below one (exclusive), just
                // above it, above all, and a key never written.
                let written: Vec<(u32, u64)> = entries.keys().copied().collect();
                let probes: Vec<(u32, u64)> = picks
                    .iter()
                    .map(|(i, mode)| {
                        let (k, lsn) = *i.get(&written);
                        match mode { 0 => (k, lsn), 1 => (k, lsn + 1), 2 => (k, u64::MAX), _ => (400, u64::MAX) }
                    })
                    .collect();
                let dir = tempfile::tempdir().unwrap();
                let file = write(dir.path(), &entries);
                prop_assert_eq!(file.verify().unwrap(), entries.len());
                let back: Vec<(Key, Lsn, Value)> = file.values().unwrap().map(|v| v.unwrap()).collect();
                let want: Vec<(Key, Lsn, Value)> = entries.iter().map(|((k, l), v)| (key(*k), Lsn(*l), v.clone())).collect();
                prop_assert_eq!(back, want);
                // One key at a time, then all probes in one vectored visit.
                let mut visits = Vec::new();
                for &(k, below) in &probes {
                    let mut st = ValueReconstructState::default();
                    file.get_value_reconstruct_data(key(k), Lsn(0)..Lsn(below), &mut st).unwrap();
                    prop_assert!(same(&st, &model(&entries, k, below)), "key {} below {:#x}", k, below);
                    visits.push(KeyVisit { key: key(k), lsn_range: Lsn(0)..Lsn(below), state: ValueReconstructState::default(), result: ReconstructResult::Continue });
                }
                file.visit_keys(&mut visits).unwrap();
                for (v, &(k, below)) in visits.iter().zip(&probes) {
                    let want = model(&entries, k, below);
                    prop_assert!(same(&v.state, &want), "vectored: key {} below {:#x}", k, below);
                    let complete = want.img.is_some() || want.records.last().is_some_and(|(_, r)| r.will_init());
                    prop_assert_eq!(v.result == ReconstructResult::Complete, complete);
                }
            }
        }
    }

    fn desc() -> LayerDesc {
        LayerDesc { key_range: Key::MIN..Key::MAX, lsn_range: Lsn(0x10)..Lsn(0x100000), is_image: false, generation: 1 }
    }

    fn key(i: u32) -> Key {
        Key { field1: 0, field2: 1663, field3: 5, field4: 16384, field5: 0, field6: i }
    }

    /// Keys 0..n, key i with (i % 5) + 1 versions at LSNs 0x20, 0x30, ...
    fn values(n: u32) -> Vec<(Key, Lsn, Value)> {
        let mut v = Vec::new();
        for i in 0..n {
            for j in 0..(i % 5) + 1 {
                let img = Bytes::from(format!("{i}/{j}").into_bytes());
                v.push((key(i * 2), Lsn(0x20 + 0x10 * j as u64), Value::Image(img)));
            }
        }
        v
    }

    fn newest(file: &LayerFile, k: Key, below: Lsn) -> Option<String> {
        let mut st = ValueReconstructState::default();
        file.get_value_reconstruct_data(k, Lsn(0)..below, &mut st).unwrap();
        st.img.map(|(_, b)| String::from_utf8(b.to_vec()).unwrap())
    }

    fn check_lookups(file: &LayerFile, n: u32) {
        for i in (0..n).step_by(7).chain([0, n - 1]) {
            let versions = (i % 5) + 1;
            let top = versions - 1;
            assert_eq!(newest(file, key(i * 2), Lsn(u64::MAX)), Some(format!("{i}/{top}")), "key {i}");
            // Below the second version: the first one.
            assert_eq!(newest(file, key(i * 2), Lsn(0x21)), Some(format!("{i}/0")), "key {i}");
            assert_eq!(newest(file, key(i * 2), Lsn(0x20)), None, "key {i} below its first version");
            assert_eq!(newest(file, key(i * 2 + 1), Lsn(u64::MAX)), None, "absent key {}", i * 2 + 1);
        }
        assert!(file.has_key_in(&(key(1)..key(3))).unwrap());
        assert!(!file.has_key_in(&(key(2 * n)..Key::MAX)).unwrap());
        assert!(!file.has_key_in(&(key(3)..key(4))).unwrap());
        let all: Vec<_> = file.values().unwrap().map(|v| v.unwrap()).collect();
        let want = values(n);
        assert_eq!(all.len(), want.len());
        for (a, b) in all.iter().zip(&want) {
            assert_eq!((a.0, a.1), (b.0, b.1));
        }
        assert_eq!(file.keys().unwrap().len(), n as usize);
    }

    #[test]
    fn btree_index_of_several_levels_reads_back() {
        // 50,000 keys, ~150,000 entries: three levels.
        let dir = tempfile::tempdir().unwrap();
        let n = 50_000;
        let mut w = LayerFileWriter::new(dir.path(), desc()).unwrap();
        for (k, l, v) in values(n) {
            w.put(k, l, &v).unwrap();
        }
        let file = w.finish().unwrap();
        assert_eq!(file.format_version().unwrap(), VERSION);
        assert_eq!(file.verify().unwrap(), values(n).len());
        match file.opened().unwrap().shape {
            IndexShape::BTree { depth, .. } => assert_eq!(depth, 3),
            other => panic!("{other:?}"),
        }
        check_lookups(&file, n);
        // A small file: one leaf, which is the root.
        let dir2 = tempfile::tempdir().unwrap();
        let mut w = LayerFileWriter::new(dir2.path(), desc()).unwrap();
        for (k, l, v) in values(3) {
            w.put(k, l, &v).unwrap();
        }
        let small = w.finish().unwrap();
        check_lookups(&small, 3);
        // Exactly one full leaf (the root is then an inner block of one entry).
        let dir3 = tempfile::tempdir().unwrap();
        let mut w = LayerFileWriter::new(dir3.path(), desc()).unwrap();
        for i in 0..LEAF_CAPACITY as u32 {
            w.put(key(i), Lsn(0x20), &Value::Image(Bytes::from_static(b"x"))).unwrap();
        }
        let full = w.finish().unwrap();
        assert_eq!(full.verify().unwrap(), LEAF_CAPACITY);
        assert!(full.has_key_in(&(key(LEAF_CAPACITY as u32 - 1)..Key::MAX)).unwrap());
    }

    #[test]
    fn eviction_waits_for_pins_and_open_handles_and_download_restores() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LayerFileWriter::new(dir.path(), desc()).unwrap();
        for (k, l, v) in values(500) {
            w.put(k, l, &v).unwrap();
        }
        let file = Arc::new(w.finish().unwrap());
        let copy = std::fs::read(&file.path).unwrap();
        check_lookups(&file, 500);
        let pin = file.pin();
        assert_eq!(file.try_evict().unwrap(), EvictOutcome::Pinned);
        drop(pin);
        let scan = file.values().unwrap();
        assert_eq!(file.try_evict().unwrap(), EvictOutcome::InUse, "a scan holds the opened handle");
        drop(scan);
        let used_before = file.last_use();
        assert_eq!(file.try_evict().unwrap(), EvictOutcome::Evicted);
        assert!(!file.path.exists(), "eviction deletes the local file");
        assert!(!file.is_resident());
        assert_eq!(file.try_evict().unwrap(), EvictOutcome::NotResident);
        let mut st = ValueReconstructState::default();
        let err = file.get_value_reconstruct_data(key(0), Lsn(0)..Lsn(u64::MAX), &mut st).unwrap_err();
        assert!(err.is_not_resident(), "{err}");
        assert!(err.to_string().contains(&file.desc.file_name()), "the error names the layer: {err}");
        // What a download does: the complete file under its name, then mark it.
        std::fs::write(&file.path, &copy).unwrap();
        file.mark_resident();
        assert!(file.last_use() > used_before);
        check_lookups(&file, 500);
    }

    #[test]
    fn version_1_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2_000;
        let file = write_version1_for_tests(dir.path(), &desc(), &values(n)).unwrap();
        assert_eq!(file.format_version().unwrap(), VERSION_FLAT_INDEX);
        assert_eq!(file.verify().unwrap(), values(n).len());
        check_lookups(&file, n);
    }

    #[test]
    fn damaged_index_blocks_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LayerFileWriter::new(dir.path(), desc()).unwrap();
        for (k, l, v) in values(2_000) {
            w.put(k, l, &v).unwrap();
        }
        let file = w.finish().unwrap();
        let path = file.path.clone();
        let mut bytes = fs::read(&path).unwrap();
        let len = bytes.len();
        // Flip a byte of the root block (just before the footer).
        bytes[len - FOOTER_SIZE - 100] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();
        let damaged = LayerFile::new(path, desc(), len as u64);
        let mut st = ValueReconstructState::default();
        let err = damaged.get_value_reconstruct_data(key(0), Lsn(0)..Lsn(u64::MAX), &mut st).unwrap_err();
        assert!(err.reason.contains("checksum"), "{err}");
        assert!(damaged.verify().is_err());
    }
}
