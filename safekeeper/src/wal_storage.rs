//! A timeline's WAL on a safekeeper's disk.
//!
//! Owns the segment files of one timeline directory, named and laid out
//! exactly as in PostgreSQL's `pg_wal` (timeline 1, `wal_seg_size` bytes each,
//! created whole: zero-filled under `<name>.alloc`, then renamed, so a full
//! disk leaves no short segment and holds no space), so the bytes of an LSN
//! range are byte-identical to the compute's. Invariants:
//! * WAL is appended contiguously at `write_lsn`; `flush_lsn <= write_lsn`
//!   and every byte below `flush_lsn` has been fsynced (file data, and the
//!   directory entry of every segment created);
//! * after [`WalStorage::open`], WAL ends at the end of the last complete,
//!   CRC-valid record found by scanning from the control file's hint; bytes
//!   past it (a record cut by a crash, WAL of an abandoned term) are zeroed
//!   and later segment files removed, so nothing stale is ever served.
//!
//! All methods block on file I/O: call them from `spawn_blocking` or a
//! dedicated thread, never directly on the async runtime.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use postgres_ffi::wal_files::{scan_wal_dir, segment_path, ScanEnd};
use utils::lsn::Lsn;

use utils::fs::fsync_dir;

/// PostgreSQL timeline id of every segment file (Strata branches are
/// separate timelines with their own directories, not PG timelines).
pub const PG_TLI: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum WalStorageError {
    /// (The I/O error is part of the message, not a `source`, so that a
    /// printed chain names it once.)
    #[error("WAL file {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("WAL write at {got} is not contiguous with the end of WAL {expected}")]
    NotContiguous { expected: Lsn, got: Lsn },
    #[error("WAL at {lsn} is not available: this timeline holds {start}..{end}")]
    NotAvailable { lsn: Lsn, start: Lsn, end: Lsn },
    #[error("WAL of term {got} refused: the current term is {current}")]
    WrongTerm { current: u64, got: u64 },
    #[error("WAL scan of {dir} from {from}: {reason}")]
    Scan { dir: PathBuf, from: Lsn, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalStorageError + '_ {
    move |error| WalStorageError::Io { path: path.to_path_buf(), error }
}

pub struct WalStorage {
    dir: PathBuf,
    seg_size_bytes: u64,
    start_lsn: Lsn,
    write_lsn: Lsn,
    flush_lsn: Lsn,
    /// Open segment files by segment number; those with unsynced writes are
    /// flagged `true`.
    open_files: BTreeMap<u64, (File, bool)>,
    dir_dirty: bool,
    /// Term whose compute may append; checked on every write under the same
    /// lock that a term change holds while it cuts the WAL.
    pub term: u64,
}

impl WalStorage {
    /// Open the WAL of `dir` that begins at `start_lsn`, finding its end by
    /// scanning from `flush_hint` (a record boundary known to be durable).
    pub fn open(dir: &Path, seg_size_bytes: u64, start_lsn: Lsn, flush_hint: Lsn) -> Result<WalStorage, WalStorageError> {
        remove_unfinished_allocations(dir)?;
        let from = flush_hint.max(start_lsn);
        let end = find_end_of_wal(dir, seg_size_bytes, from)?;
        let mut storage = WalStorage {
            dir: dir.to_path_buf(),
            seg_size_bytes,
            start_lsn,
            write_lsn: end,
            flush_lsn: end,
            open_files: BTreeMap::new(),
            dir_dirty: false,
            term: 0,
        };
        storage.truncate(end)?;
        Ok(storage)
    }

    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }
    pub fn write_lsn(&self) -> Lsn {
        self.write_lsn
    }
    pub fn flush_lsn(&self) -> Lsn {
        self.flush_lsn
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append `data` of the compute of `term`, which must start at the
    /// current end of WAL.
    pub fn write(&mut self, term: u64, lsn: Lsn, mut data: &[u8]) -> Result<(), WalStorageError> {
        if term != self.term {
            return Err(WalStorageError::WrongTerm { current: self.term, got: term });
        }
        if lsn != self.write_lsn {
            return Err(WalStorageError::NotContiguous { expected: self.write_lsn, got: lsn });
        }
        while !data.is_empty() {
            let offset = self.write_lsn.segment_offset(self.seg_size_bytes);
            let chunk_len = data.len().min((self.seg_size_bytes - offset) as usize);
            let segno = self.write_lsn.segment_number(self.seg_size_bytes);
            let (file, dirty) = self.segment_file(segno)?;
            if let Err(e) = file.write_all_at(&data[..chunk_len], offset) {
                // The path is formatted only here: this loop runs for every message.
                return Err(io_err(&segment_path(&self.dir, PG_TLI, self.write_lsn, self.seg_size_bytes))(e));
            }
            *dirty = true;
            self.write_lsn += chunk_len as u64;
            data = &data[chunk_len..];
        }
        Ok(())
    }

    /// Make everything written durable; returns the new `flush_lsn`.
    pub fn flush(&mut self) -> Result<Lsn, WalStorageError> {
        for (segno, (file, dirty)) in self.open_files.iter_mut() {
            if *dirty {
                if let Err(e) = file.sync_data() {
                    return Err(io_err(&segment_path(&self.dir, PG_TLI, Lsn(segno * self.seg_size_bytes), self.seg_size_bytes))(e));
                }
                *dirty = false;
            }
        }
        if self.dir_dirty {
            fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
            self.dir_dirty = false;
        }
        // Keep only the segment being written open.
        let current = self.write_lsn.segment_number(self.seg_size_bytes);
        self.open_files.retain(|&segno, _| segno >= current);
        self.flush_lsn = self.write_lsn;
        Ok(self.flush_lsn)
    }

    /// Cut WAL at `lsn`: zero the rest of its segment, remove later segments,
    /// and make that durable. `lsn` may not be below the timeline start.
    pub fn truncate(&mut self, lsn: Lsn) -> Result<(), WalStorageError> {
        if lsn < self.start_lsn {
            return Err(WalStorageError::NotAvailable { lsn, start: self.start_lsn, end: self.write_lsn });
        }
        self.open_files.clear();
        let segno = lsn.segment_number(self.seg_size_bytes);
        let path = segment_path(&self.dir, PG_TLI, lsn, self.seg_size_bytes);
        if path.exists() {
            let offset = lsn.segment_offset(self.seg_size_bytes);
            let file = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
            let zeros = vec![0u8; (self.seg_size_bytes - offset) as usize];
            file.write_all_at(&zeros, offset).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
        }
        for (later, later_path) in segment_files(&self.dir, self.seg_size_bytes)? {
            if later > segno {
                fs::remove_file(&later_path).map_err(io_err(&later_path))?;
            }
        }
        fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.write_lsn = lsn;
        self.flush_lsn = lsn;
        Ok(())
    }

    /// Restart an empty timeline at `lsn` (its first compute starts there).
    pub fn reset_start(&mut self, lsn: Lsn) -> Result<(), WalStorageError> {
        if self.write_lsn != self.start_lsn {
            return Err(WalStorageError::NotContiguous { expected: self.write_lsn, got: lsn });
        }
        self.open_files.clear();
        for (_, path) in segment_files(&self.dir, self.seg_size_bytes)? {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        self.start_lsn = lsn;
        self.write_lsn = lsn;
        self.flush_lsn = lsn;
        Ok(())
    }

    /// Remove whole segments that end at or below `lsn` (WAL nobody needs).
    /// Returns how many were removed.
    pub fn remove_segments_below(&mut self, lsn: Lsn) -> Result<usize, WalStorageError> {
        let keep_from = lsn.segment_number(self.seg_size_bytes);
        let mut removed = 0;
        for (segno, path) in segment_files(&self.dir, self.seg_size_bytes)? {
            if segno < keep_from {
                fs::remove_file(&path).map_err(io_err(&path))?;
                self.open_files.remove(&segno);
                removed += 1;
            }
        }
        if removed > 0 {
            let new_start = Lsn(keep_from * self.seg_size_bytes);
            self.start_lsn = self.start_lsn.max(new_start);
        }
        Ok(removed)
    }

    fn segment_file(&mut self, segno: u64) -> Result<(&File, &mut bool), WalStorageError> {
        if !self.open_files.contains_key(&segno) {
            let path = segment_path(&self.dir, PG_TLI, Lsn(segno * self.seg_size_bytes), self.seg_size_bytes);
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let file = allocate_segment(&path, self.seg_size_bytes)?;
                    self.dir_dirty = true;
                    file
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            let len = file.metadata().map_err(io_err(&path))?.len();
            if len < self.seg_size_bytes {
                // Short (written by an older version): fill the rest with
                // zeros too, never leave it sparse.
                zero_fill(&file, len, self.seg_size_bytes).map_err(io_err(&path))?;
                file.sync_data().map_err(io_err(&path))?;
            }
            self.open_files.insert(segno, (file, false));
        }
        let (file, dirty) = self.open_files.get_mut(&segno).expect("inserted above");
        Ok((file, dirty))
    }
}

/// Suffix of a segment file being allocated.
const ALLOC_SUFFIX: &str = ".alloc";

/// A new segment file at `path`, whole or not at all: written with zeros
/// under a temporary name, fsynced, then renamed (the caller fsyncs the
/// directory). Zeros, not a sparse file: a later fdatasync of WAL then
/// flushes data only, with no block allocation to journal on every commit
/// (what PostgreSQL's `wal_init_zero` does). On a full disk the temporary
/// is removed and the error names the segment.
fn allocate_segment(path: &Path, seg_size_bytes: u64) -> Result<File, WalStorageError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(ALLOC_SUFFIX);
    let tmp = PathBuf::from(tmp_name);
    let made = (|| {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        zero_fill(&file, 0, seg_size_bytes)?;
        file.sync_data()?;
        fs::rename(&tmp, path)?;
        Ok(file)
    })();
    made.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

/// Write zeros over `[from, to)` of `file`, 8 KiB at a time, as PostgreSQL
/// 15 pads its WAL segments. Not in bigger writes: the page cache would
/// hold the segment in large folios (up to the write's size), and every
/// later small WAL write and its fdatasync then walk all the buffers of a
/// folio — a third more CPU per commit, measured with the commit bench.
fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 8 << 10;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let (mut off, len) = (from, to);
    while off < len {
        let n = CHUNK.min(len - off) as usize;
        file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Remove segment allocations a crash cut short (they hold no WAL).
fn remove_unfinished_allocations(dir: &Path) -> Result<(), WalStorageError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.to_string_lossy().ends_with(ALLOC_SUFFIX) {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// The segment files of `dir`, by segment number.
fn segment_files(dir: &Path, seg_size_bytes: u64) -> Result<Vec<(u64, PathBuf)>, WalStorageError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(segno) = parse_segment_name(&name, seg_size_bytes) {
            out.push((segno, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Segment number of a file named like `000000010000000A000000FF`.
fn parse_segment_name(name: &str, seg_size_bytes: u64) -> Option<u64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let segs_per_log = 0x1_0000_0000u64 / seg_size_bytes;
    Some(log * segs_per_log + seg)
}

/// End of the last complete valid record at or after `from` (itself if none).
fn find_end_of_wal(dir: &Path, seg_size_bytes: u64, from: Lsn) -> Result<Lsn, WalStorageError> {
    let mut end = from;
    let scan = scan_wal_dir(dir, PG_TLI, from, seg_size_bytes, |rec| end = rec.end_lsn);
    let scan_err = |reason: String| WalStorageError::Scan { dir: dir.to_path_buf(), from, reason };
    match scan.map_err(|e| scan_err(e.to_string()))? {
        ScanEnd::NoMoreFiles(_) => {}
        ScanEnd::DecodeError(e) if e.is_end_of_wal() => {}
        ScanEnd::DecodeError(e) => tracing::info!("WAL ends at {end}: {e}"),
    }
    Ok(end)
}

/// Read WAL `[lsn, lsn + buf.len())` into `buf` from the segment files of
/// `dir`. The caller guarantees the range is below the flush LSN.
pub fn read_wal(dir: &Path, seg_size_bytes: u64, lsn: Lsn, buf: &mut [u8]) -> Result<(), WalStorageError> {
    let mut pos = lsn;
    let mut done = 0;
    while done < buf.len() {
        let offset = pos.segment_offset(seg_size_bytes);
        let len = (buf.len() - done).min((seg_size_bytes - offset) as usize);
        let path = segment_path(dir, PG_TLI, pos, seg_size_bytes);
        let file = File::open(&path).map_err(io_err(&path))?;
        file.read_exact_at(&mut buf[done..done + len], offset).map_err(io_err(&path))?;
        done += len;
        pos += len as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    #[test]
    fn a_new_segment_is_allocated_not_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let start = Lsn(SEG);
        let mut s = WalStorage::open(dir.path(), SEG, start, start).unwrap();
        s.term = 1;
        s.write(1, start, b"record").unwrap();
        s.flush().unwrap();
        let meta = std::fs::metadata(segment_path(dir.path(), PG_TLI, start, SEG)).unwrap();
        assert_eq!(meta.len(), SEG);
        assert!(meta.blocks() * 512 >= SEG, "segment is sparse: {} blocks", meta.blocks());
    }

    #[test]
    fn write_flush_truncate_remove_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let start = Lsn(SEG);
        let mut s = WalStorage::open(dir.path(), SEG, start, start).unwrap();
        s.term = 1;
        let data: Vec<u8> = (0..(2 * SEG + 100)).map(|i| (i % 251) as u8).collect();
        assert!(matches!(s.write(2, start, &data), Err(WalStorageError::WrongTerm { .. })));
        assert!(matches!(s.write(1, start + 8, &data), Err(WalStorageError::NotContiguous { .. })));
        s.write(1, start, &data).unwrap();
        assert_eq!(s.flush().unwrap(), start + data.len() as u64);
        let mut back = vec![0u8; data.len()];
        read_wal(dir.path(), SEG, start, &mut back).unwrap();
        assert_eq!(back, data);
        // Cut inside the second segment: the rest of it is zeroed, the third is gone.
        let cut = start + SEG + 500;
        s.truncate(cut).unwrap();
        assert_eq!(s.write_lsn(), cut);
        assert!(!segment_path(dir.path(), PG_TLI, start + 2 * SEG, SEG).exists());
        let mut tail = vec![1u8; 100];
        read_wal(dir.path(), SEG, cut, &mut tail).unwrap();
        assert!(tail.iter().all(|&b| b == 0));
        assert_eq!(s.remove_segments_below(cut).unwrap(), 1);
        assert_eq!(s.start_lsn(), start + SEG);
        // These bytes are not WAL records: reopening finds no record past the hint.
        let s = WalStorage::open(dir.path(), SEG, start + SEG, start + SEG).unwrap();
        assert_eq!(s.flush_lsn(), start + SEG);
    }
}
