//! Reading WAL from segment files in a directory (a `pg_wal/` or a
//! safekeeper's timeline directory).
//!
//! Segment files are named `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, then the
//! segment number split in two, as PostgreSQL names them). A scan stops at
//! the first missing segment file or at the first decode error, which it
//! returns so that the caller can tell the normal end of WAL
//! ([`WalDecodeError::is_end_of_wal`]) from damage.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use utils::lsn::Lsn;

use crate::pg_constants::XLOG_SIZE_OF_XLOG_LONG_PHD;
use crate::waldecoder::{RawRecord, WalDecodeError, WalStreamDecoder};
use crate::xlog_page::XLogPageHeader;

const READ_CHUNK_BYTES: usize = 1 << 20;

/// Errors of a directory scan.
#[derive(Debug, thiserror::Error)]
pub enum WalFilesError {
    #[error("reading WAL file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("WAL file {path} does not start with a valid long page header")]
    BadSegmentHeader { path: PathBuf },
}

/// How a scan ended.
#[derive(Debug)]
pub enum ScanEnd {
    /// The next segment file does not exist; WAL is consumed up to this LSN.
    NoMoreFiles(Lsn),
    /// Decoding stopped (usually the end of written WAL).
    DecodeError(WalDecodeError),
}

/// Path of the segment file holding `lsn`.
pub fn segment_path(dir: &Path, tli: u32, lsn: Lsn, seg_size_bytes: u64) -> PathBuf {
    dir.join(lsn.segment_file_name(tli, seg_size_bytes))
}

/// Segment size recorded in the long header of a segment file.
pub fn segment_size_of(path: &Path) -> Result<u64, WalFilesError> {
    let io_err = |source| WalFilesError::Io { path: path.to_path_buf(), source };
    let mut buf = [0u8; XLOG_SIZE_OF_XLOG_LONG_PHD];
    File::open(path).and_then(|mut f| f.read_exact(&mut buf)).map_err(io_err)?;
    match XLogPageHeader::parse(&buf).long {
        Some(long) if long.seg_size.is_power_of_two() => Ok(long.seg_size as u64),
        _ => Err(WalFilesError::BadSegmentHeader { path: path.to_path_buf() }),
    }
}

/// Decode records from the segment files of timeline `tli` in `dir`,
/// starting at the record boundary `start`, calling `on_record` for each.
pub fn scan_wal_dir(
    dir: &Path,
    tli: u32,
    start: Lsn,
    seg_size_bytes: u64,
    mut on_record: impl FnMut(RawRecord),
) -> Result<ScanEnd, WalFilesError> {
    let mut decoder = WalStreamDecoder::new(start, seg_size_bytes);
    let mut pos = start;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let path = segment_path(dir, tli, pos, seg_size_bytes);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ScanEnd::NoMoreFiles(pos)),
            Err(source) => return Err(WalFilesError::Io { path, source }),
        };
        let io_err = |source| WalFilesError::Io { path: path.clone(), source };
        let offset = pos.segment_offset(seg_size_bytes);
        io::copy(&mut (&mut file).take(offset), &mut io::sink()).map_err(io_err)?;
        let mut left = seg_size_bytes - offset;
        while left > 0 {
            let want = (left as usize).min(buf.len());
            let n = file.read(&mut buf[..want]).map_err(io_err)?;
            if n == 0 {
                break; // a short (partially written) segment: decode what is there
            }
            decoder.feed_bytes(&buf[..n]);
            left -= n as u64;
            pos += n as u64;
            loop {
                match decoder.poll_decode() {
                    Ok(Some(record)) => on_record(record),
                    Ok(None) => break,
                    Err(e) => return Ok(ScanEnd::DecodeError(e)),
                }
            }
        }
        if left > 0 {
            return Ok(ScanEnd::NoMoreFiles(pos));
        }
    }
}
