//! The immutable layer file, used for both delta layers (key range × LSN
//! range, values are images or records) and image layers (key range at one
//! LSN, values are images).
//!
//! Format (little endian):
//! ```text
//! header (72 bytes): "STRATALY" | version u32 | is_image u8 | 3 pad
//!                    | key_start 18 | key_end 18 | lsn_start u64 | lsn_end u64 | crc32c u32
//! values:            encoded Values, back to back
//! index:             per value, in (key, lsn) order: key 18 | lsn u64 | offset u64 | len u32 | crc32c u32
//! footer (32 bytes): index_offset u64 | entries u64 | index crc32c u32 | 4 pad | "STRATEND"
//! ```
//! A lookup reads only the footer and the index (cached in memory after the
//! first use) and then the values of one key, each checked against its CRC.
//!
//! Invariants: a file is written under a temporary name, fsynced, renamed
//! and its directory fsynced, so a file with a layer name is complete. Any
//! damage (short file, bad magic, CRC mismatch, undecodable value) is a
//! [`LayerFileError`] naming the file; nothing here panics on file content.
//! All functions do blocking file I/O: async callers use `spawn_blocking`.
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use utils::lsn::Lsn;

use super::{LayerDesc, ReconstructResult, ValueReconstructState};
use crate::storage::key::{Key, KEY_SIZE};
use crate::storage::value::Value;

const MAGIC: &[u8; 8] = b"STRATALY";
const FOOTER_MAGIC: &[u8; 8] = b"STRATEND";
const VERSION: u32 = 1;
const HEADER_SIZE: usize = 72;
const FOOTER_SIZE: usize = 32;
const INDEX_ENTRY_SIZE: usize = KEY_SIZE + 8 + 8 + 4 + 4;

/// A damaged or unreadable layer file.
#[derive(Debug, thiserror::Error)]
#[error("layer file {path}: {reason}")]
pub struct LayerFileError {
    pub path: PathBuf,
    pub reason: String,
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

/// Writes one layer file; values must be added in (key, LSN) order.
pub struct LayerFileWriter {
    desc: LayerDesc,
    dir: PathBuf,
    tmp_path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    index: Vec<IndexEntry>,
    buf: BytesMut,
}

impl LayerFileWriter {
    pub fn new(dir: &Path, desc: LayerDesc) -> std::io::Result<LayerFileWriter> {
        let tmp_path = dir.join(format!("{}.tmp", desc.file_name()));
        let file = File::create(&tmp_path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&encode_header(&desc))?;
        Ok(LayerFileWriter {
            desc,
            dir: dir.to_path_buf(),
            tmp_path,
            out,
            offset: HEADER_SIZE as u64,
            index: Vec::new(),
            buf: BytesMut::new(),
        })
    }

    pub fn put(&mut self, key: Key, lsn: Lsn, value: &Value) -> std::io::Result<()> {
        if let Some(last) = self.index.last() {
            if (last.key, last.lsn) > (key, lsn) {
                return Err(std::io::Error::other(format!("values out of order at {key} {lsn}")));
            }
        }
        self.buf.clear();
        value.encode(&mut self.buf);
        self.out.write_all(&self.buf)?;
        let len = self.buf.len() as u32;
        self.index.push(IndexEntry { key, lsn, offset: self.offset, len, crc: crc32c::crc32c(&self.buf) });
        self.offset += len as u64;
        Ok(())
    }

    pub fn num_entries(&self) -> usize {
        self.index.len()
    }

    /// Bytes written so far (header and values).
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// The last key written, if any.
    pub fn last_key(&self) -> Option<Key> {
        self.index.last().map(|e| e.key)
    }

    /// Change the end of the key range (known only when a compaction cuts
    /// the file); the header is rewritten by [`LayerFileWriter::finish`].
    pub fn set_key_end(&mut self, end: Key) {
        self.desc.key_range.end = end;
    }

    /// Write index and footer, make the file durable under its final name.
    pub fn finish(mut self) -> std::io::Result<LayerFile> {
        let index_offset = self.offset;
        let mut idx = Vec::with_capacity(self.index.len() * INDEX_ENTRY_SIZE);
        for e in &self.index {
            idx.extend_from_slice(&e.key.to_bytes());
            idx.extend_from_slice(&e.lsn.0.to_le_bytes());
            idx.extend_from_slice(&e.offset.to_le_bytes());
            idx.extend_from_slice(&e.len.to_le_bytes());
            idx.extend_from_slice(&e.crc.to_le_bytes());
        }
        self.out.write_all(&idx)?;
        let mut footer = [0u8; FOOTER_SIZE];
        footer[0..8].copy_from_slice(&index_offset.to_le_bytes());
        footer[8..16].copy_from_slice(&(self.index.len() as u64).to_le_bytes());
        footer[16..20].copy_from_slice(&crc32c::crc32c(&idx).to_le_bytes());
        footer[24..32].copy_from_slice(FOOTER_MAGIC);
        self.out.write_all(&footer)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.write_all_at(&encode_header(&self.desc), 0)?;
        file.sync_all()?;
        drop(file);
        let final_path = self.dir.join(self.desc.file_name());
        fs::rename(&self.tmp_path, &final_path)?;
        utils::fs::fsync_dir(&self.dir)?;
        let size = index_offset + idx.len() as u64 + FOOTER_SIZE as u64;
        Ok(LayerFile::new(final_path, self.desc, size))
    }
}

/// An immutable layer file on local disk.
pub struct LayerFile {
    pub path: PathBuf,
    pub desc: LayerDesc,
    pub size_bytes: u64,
    opened: OnceLock<Result<Arc<Opened>, String>>,
}

struct Opened {
    file: File,
    index: Vec<IndexEntry>,
}

impl LayerFile {
    pub fn new(path: PathBuf, desc: LayerDesc, size_bytes: u64) -> LayerFile {
        LayerFile { path, desc, size_bytes, opened: OnceLock::new() }
    }

    fn err(&self, reason: impl Into<String>) -> LayerFileError {
        LayerFileError { path: self.path.clone(), reason: reason.into() }
    }

    /// Open the file and load its index (once; a failure is remembered).
    fn opened(&self) -> Result<Arc<Opened>, LayerFileError> {
        self.opened.get_or_init(|| self.open().map(Arc::new)).clone().map_err(|reason| self.err(reason))
    }

    fn open(&self) -> Result<Opened, String> {
        let file = File::open(&self.path).map_err(|e| format!("open: {e}"))?;
        let len = file.metadata().map_err(|e| format!("stat: {e}"))?.len();
        if len < (HEADER_SIZE + FOOTER_SIZE) as u64 {
            return Err(format!("file of {len} bytes is too short"));
        }
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0).map_err(|e| format!("read header: {e}"))?;
        if &header[0..8] != MAGIC || u32_at(&header, 8) != VERSION {
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
        let (index_offset, entries) = (u64_at(&footer, 0), u64_at(&footer, 8));
        let index_len = entries.checked_mul(INDEX_ENTRY_SIZE as u64);
        if index_len.and_then(|l| l.checked_add(index_offset)) != Some(len - FOOTER_SIZE as u64)
            || index_offset < HEADER_SIZE as u64
        {
            return Err(format!("index of {entries} entries at {index_offset} does not fit the file"));
        }
        let mut idx = vec![0u8; (len - FOOTER_SIZE as u64 - index_offset) as usize];
        file.read_exact_at(&mut idx, index_offset).map_err(|e| format!("read index: {e}"))?;
        if crc32c::crc32c(&idx) != u32_at(&footer, 16) {
            return Err("index checksum mismatch".into());
        }
        let mut index = Vec::with_capacity(entries as usize);
        for chunk in idx.chunks_exact(INDEX_ENTRY_SIZE) {
            let e = IndexEntry {
                key: key_at(chunk, 0),
                lsn: Lsn(u64_at(chunk, 18)),
                offset: u64_at(chunk, 26),
                len: u32_at(chunk, 34),
                crc: u32_at(chunk, 38),
            };
            if e.offset < HEADER_SIZE as u64 || e.offset + e.len as u64 > index_offset {
                return Err(format!("index entry for {} points outside the values", e.key));
            }
            if let Some(prev) = index.last() {
                let prev: &IndexEntry = prev;
                if (prev.key, prev.lsn) > (e.key, e.lsn) {
                    return Err("index is not sorted".into());
                }
            }
            index.push(e);
        }
        Ok(Opened { file, index })
    }

    /// Check header, footer and index (the values are checked as read).
    pub fn verify(&self) -> Result<usize, LayerFileError> {
        Ok(self.opened()?.index.len())
    }

    fn read_value(&self, opened: &Opened, e: &IndexEntry) -> Result<Value, LayerFileError> {
        let mut buf = vec![0u8; e.len as usize];
        opened.file.read_exact_at(&mut buf, e.offset).map_err(|err| self.err(format!("read value: {err}")))?;
        if crc32c::crc32c(&buf) != e.crc {
            return Err(self.err(format!("checksum mismatch in the value of {} at {}", e.key, e.lsn)));
        }
        Value::decode(Bytes::from(buf)).map_err(|r| self.err(format!("value of {} at {}: {r}", e.key, e.lsn)))
    }

    /// Collect `key`'s versions in `lsn_range`, newest first, until an
    /// image or an initialising record. Blocking.
    pub fn get_value_reconstruct_data(
        &self,
        key: Key,
        lsn_range: Range<Lsn>,
        state: &mut ValueReconstructState,
    ) -> Result<ReconstructResult, LayerFileError> {
        let opened = self.opened()?;
        let start = opened.index.partition_point(|e| e.key < key);
        let end = start + opened.index[start..].partition_point(|e| e.key == key);
        for e in opened.index[start..end].iter().rev() {
            if !lsn_range.contains(&e.lsn) {
                continue;
            }
            match self.read_value(&opened, e)? {
                Value::Image(img) => {
                    state.img = Some((e.lsn, img));
                    return Ok(ReconstructResult::Complete);
                }
                Value::WalRecord(rec) => {
                    let init = rec.will_init();
                    state.records.push((e.lsn, rec));
                    if init {
                        return Ok(ReconstructResult::Complete);
                    }
                }
            }
        }
        Ok(ReconstructResult::Continue)
    }

    /// Whether the file holds a value of some key in `key_range`. Blocking.
    pub fn has_key_in(&self, key_range: &Range<Key>) -> Result<bool, LayerFileError> {
        let opened = self.opened()?;
        let at = opened.index.partition_point(|e| e.key < key_range.start);
        Ok(opened.index.get(at).is_some_and(|e| e.key < key_range.end))
    }

    /// Every value in (key, LSN) order, read one at a time. Blocking.
    pub fn values(&self) -> Result<impl Iterator<Item = Result<(Key, Lsn, Value), LayerFileError>> + '_, LayerFileError> {
        let opened = self.opened()?;
        let entries = opened.index.clone();
        Ok(entries.into_iter().map(move |e| Ok((e.key, e.lsn, self.read_value(&opened, &e)?))))
    }

    /// Every key held (sorted, deduplicated). Blocking.
    pub fn keys(&self) -> Result<Vec<Key>, LayerFileError> {
        let opened = self.opened()?;
        let mut keys: Vec<Key> = opened.index.iter().map(|e| e.key).collect();
        keys.dedup();
        Ok(keys)
    }
}
