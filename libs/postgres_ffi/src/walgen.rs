//! Writing WAL: records Strata makes itself, laid out in a segment exactly
//! as PostgreSQL would write them.
//!
//! Used to start a stock PostgreSQL compute from a basebackup at any LSN: the
//! data directory gets a WAL segment holding a shutdown checkpoint record at
//! that LSN (page headers in place, `XLP_FIRST_IS_CONTRECORD` and `rem_len`
//! on a page the record continues onto, a correct `xl_prev` and CRC), and
//! `pg_control` points at it, so the server starts without recovery and
//! writes its next record right after it.

use utils::lsn::Lsn;

use crate::controlfile::{CheckPoint, SIZE_OF_CHECKPOINT};
use crate::pg_constants::*;
use crate::record::{record_crc, XLogRecordHeader};
use crate::rmgr::RM_XLOG_ID;
use crate::xlog_page::{XLogLongHeaderFields, XLogPageHeader};

/// PostgreSQL timeline id used for all generated WAL.
const PG_TLI: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalGenError {
    #[error("LSN {0} is not 8-byte aligned")]
    Unaligned(Lsn),
    #[error("LSN {lsn} is inside a page header")]
    InPageHeader { lsn: Lsn },
    #[error("record at {lsn} of {len} bytes does not fit in its segment")]
    CrossesSegment { lsn: Lsn, len: usize },
    #[error("bad segment size {0}")]
    BadSegmentSize(u64),
}

/// Where a record written at `lsn` actually starts: `lsn` itself, or past
/// the page header when `lsn` is on a page boundary.
pub fn record_position(lsn: Lsn, seg_size_bytes: u64) -> Lsn {
    if lsn.page_offset() != 0 {
        lsn
    } else if lsn.segment_offset(seg_size_bytes) == 0 {
        lsn + XLOG_SIZE_OF_XLOG_LONG_PHD as u64
    } else {
        lsn + XLOG_SIZE_OF_XLOG_SHORT_PHD as u64
    }
}

/// The bytes of a shutdown checkpoint record carrying `checkpoint`.
pub fn encode_checkpoint_record(checkpoint: &CheckPoint, xl_prev: Lsn, shutdown: bool) -> Vec<u8> {
    let payload = checkpoint.encode();
    let total = XLOG_SIZE_OF_XLOG_RECORD + 2 + SIZE_OF_CHECKPOINT;
    let header = XLogRecordHeader {
        xl_tot_len: total as u32,
        xl_xid: 0,
        xl_prev,
        xl_info: if shutdown { XLOG_CHECKPOINT_SHUTDOWN } else { XLOG_CHECKPOINT_ONLINE },
        xl_rmid: RM_XLOG_ID,
        xl_crc: 0,
    };
    let mut rec = Vec::with_capacity(total);
    rec.extend_from_slice(&header.encode());
    rec.push(XLR_BLOCK_ID_DATA_SHORT);
    rec.push(SIZE_OF_CHECKPOINT as u8);
    rec.extend_from_slice(&payload);
    let crc = record_crc(&rec);
    rec[XLOG_RECORD_CRC_OFFSET..XLOG_RECORD_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// A whole WAL segment (the one holding `lsn`) containing `record` at
/// `lsn` (or right after the page header when `lsn` is on a page boundary),
/// with valid page headers on the segment's first page and on every page the
/// record occupies, and zeros elsewhere. Returns the segment bytes and the LSN just past the
/// record (where PostgreSQL will write next).
pub fn segment_with_record(lsn: Lsn, record: &[u8], system_id: u64, seg_size_bytes: u64) -> Result<(Vec<u8>, Lsn), WalGenError> {
    if !seg_size_bytes.is_power_of_two() || seg_size_bytes < XLOG_BLCKSZ as u64 {
        return Err(WalGenError::BadSegmentSize(seg_size_bytes));
    }
    if !lsn.is_aligned() {
        return Err(WalGenError::Unaligned(lsn));
    }
    let seg_start = lsn.segment_start(seg_size_bytes);
    let mut seg = vec![0u8; seg_size_bytes as usize];
    let header_len = |page_lsn: Lsn| if page_lsn == seg_start { XLOG_SIZE_OF_XLOG_LONG_PHD } else { XLOG_SIZE_OF_XLOG_SHORT_PHD };
    let mut pos = lsn;
    if pos.page_offset() == 0 {
        pos += header_len(pos) as u64;
    } else if (pos.page_offset() as usize) < header_len(pos.page_start()) {
        return Err(WalGenError::InPageHeader { lsn });
    }
    let start = pos;
    // Readers validate the segment's first page before any other page of it.
    write_page_header(&mut seg, seg_start, seg_start, system_id, seg_size_bytes, 0);
    let mut left = record;
    let mut page = pos.page_start();
    loop {
        let is_first = page <= start;
        let rem_len = if is_first { 0 } else { left.len() as u32 };
        write_page_header(&mut seg, page, seg_start, system_id, seg_size_bytes, rem_len);
        let page_end = page + XLOG_BLCKSZ as u64;
        let offset = (pos.0 - seg_start.0) as usize;
        let n = left.len().min((page_end.0 - pos.0) as usize);
        seg[offset..offset + n].copy_from_slice(&left[..n]);
        left = &left[n..];
        pos += n as u64;
        if left.is_empty() {
            break;
        }
        page = page_end;
        if page.0 >= seg_start.0 + seg_size_bytes {
            return Err(WalGenError::CrossesSegment { lsn, len: record.len() });
        }
        pos = page + header_len(page) as u64;
    }
    let end = Lsn(pos.0.div_ceil(8) * 8);
    Ok((seg, end))
}

fn write_page_header(seg: &mut [u8], page: Lsn, seg_start: Lsn, system_id: u64, seg_size_bytes: u64, rem_len: u32) {
    let long = (page == seg_start).then_some(XLogLongHeaderFields {
        sysid: system_id,
        seg_size: seg_size_bytes as u32,
        xlog_blcksz: XLOG_BLCKSZ as u32,
    });
    let mut info = if long.is_some() { XLP_LONG_HEADER } else { 0 };
    if rem_len > 0 {
        info |= XLP_FIRST_IS_CONTRECORD;
    }
    let header = XLogPageHeader { magic: XLOG_PAGE_MAGIC, info, tli: PG_TLI, pageaddr: page.0, rem_len, long };
    let bytes = header.encode();
    let offset = (page.0 - seg_start.0) as usize;
    seg[offset..offset + bytes.len()].copy_from_slice(&bytes);
}
