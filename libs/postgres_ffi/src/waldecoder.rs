//! Streaming WAL decoder: bytes of the WAL stream in, whole records out.
//!
//! [`WalStreamDecoder`] is fed raw WAL as it arrives (from segment files or
//! a replication connection, in chunks of any size) starting at a record
//! boundary, and yields [`RawRecord`]s: the record bytes exactly as
//! PostgreSQL wrote them, reassembled across page and segment boundaries.
//!
//! It validates what PostgreSQL's `xlogreader.c` validates: page magic, info
//! bits and address, long headers at segment starts (segment and page size,
//! system id), continuation flags and lengths, record length, resource
//! manager id, prev-link (from the second record on) and the CRC-32C.
//!
//! Invariants:
//! * `lsn` is the LSN of the next input byte; bytes before it were consumed.
//! * The decoder never consumes bytes it has not validated: when input runs
//!   out, `poll_decode` returns `Ok(None)` ("need more data") and resumes
//!   exactly where it stopped once more bytes are fed.
//! * After an error the decoder is poisoned and repeats that error; start a
//!   new decoder at a known record boundary to go on.
//! * An XLOG_SWITCH record ends the segment: the rest of it is skipped and
//!   the record's `end_lsn` is the next segment's start, as in PostgreSQL.
//! * Input never reaches the last segment of the LSN space: bytes that would
//!   go past [`WalStreamDecoder::lsn_limit`] poison the decoder
//!   (`EndOfLsnSpace`) instead of being taken, so every position the decoder
//!   computes (`lsn + n`, the aligned record end, the next segment start
//!   after an XLOG_SWITCH) fits in a `u64`.
//! * A record's bytes are its own allocation, never a slice of the input
//!   buffer: a record kept for long (the pageserver's in-memory layer keeps
//!   records until they are flushed) holds only its own bytes, not the
//!   whole chunk of WAL it arrived in (which the records dropped from it
//!   would otherwise keep alive, unaccounted).

use bytes::{Buf, Bytes, BytesMut};
use utils::lsn::Lsn;

use crate::pg_constants::*;
use crate::record::XLogRecordHeader;
use crate::rmgr::is_valid_rmgr_id;
use crate::xlog_page::XLogPageHeader;

/// One WAL record as it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// LSN of the record's first byte (what `pg_waldump` calls `lsn`).
    pub start_lsn: Lsn,
    /// Where the next record starts (PostgreSQL's `EndRecPtr`): the aligned
    /// end of this one, or the next segment start after an XLOG_SWITCH.
    pub end_lsn: Lsn,
    /// The record: 24-byte `XLogRecord` header and its payload.
    pub bytes: Bytes,
}

/// Why a WAL stream could not be decoded at `lsn`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("WAL decode error at {lsn}: {reason}")]
pub struct WalDecodeError {
    pub lsn: Lsn,
    pub reason: DecodeErrorReason,
}

impl WalDecodeError {
    /// Whether this looks like the normal end of written WAL (zeroes where
    /// the next record would start) rather than damage.
    pub fn is_end_of_wal(&self) -> bool {
        self.reason == DecodeErrorReason::RecordTooShort(0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorReason {
    #[error("start LSN is not 8-byte aligned")]
    UnalignedStart,
    #[error("invalid magic number {0:#06X} in WAL page header")]
    BadPageMagic(u16),
    #[error("invalid info bits {0:#06X} in WAL page header")]
    BadPageInfo(u16),
    #[error("unexpected page address {found} in WAL page header")]
    BadPageAddr { found: Lsn },
    #[error("WAL segment size {found} in long page header, expected {expected}")]
    BadSegmentSize { found: u32, expected: u64 },
    #[error("WAL block size {0} in long page header, expected 8192")]
    BadWalBlockSize(u32),
    #[error("system identifier {found} in long page header, expected {expected}")]
    BadSystemId { found: u64, expected: u64 },
    #[error("contrecord is requested by the previous record, page has none (rem_len {rem_len})")]
    MissingContrecord { rem_len: u32 },
    #[error("invalid contrecord length {found} (expected {expected})")]
    BadContrecordLength { found: u32, expected: u32 },
    #[error("page continues a record (rem_len {0}) where a new record was expected")]
    UnexpectedContrecord(u32),
    #[error("invalid record length {0}: wanted at least 24")]
    RecordTooShort(u32),
    #[error("record length {0} exceeds the 1 GiB maximum")]
    RecordTooLong(u32),
    #[error("invalid resource manager id {0}")]
    BadRmgrId(u8),
    #[error("record with incorrect prev-link {found} (expected {expected})")]
    BadPrevLink { found: Lsn, expected: Lsn },
    #[error("incorrect record checksum: stored {stored:#010X}, computed {computed:#010X}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("{len} more bytes of WAL would run into the last segment of the LSN space (from {limit})")]
    EndOfLsnSpace { len: u64, limit: Lsn },
}

enum State {
    /// At (or in the padding before) a record start.
    WaitingForRecord,
    /// Collecting the bytes of the record that starts at `start_lsn`.
    Reassembling {
        start_lsn: Lsn,
        tot_len: u32,
        buf: BytesMut,
        header_checked: bool,
    },
    /// After an XLOG_SWITCH: ignore everything up to the segment end.
    SkippingTo(Lsn),
}

/// Incremental WAL decoder; see the module documentation.
pub struct WalStreamDecoder {
    lsn: Lsn,
    seg_size_bytes: u64,
    input: BytesMut,
    state: State,
    prev_record: Option<Lsn>,
    system_id: Option<u64>,
    poisoned: Option<WalDecodeError>,
}

impl WalStreamDecoder {
    /// A decoder whose first input byte is at `start_lsn`, a record boundary
    /// (possibly a page or segment start, or right after a page header).
    pub fn new(start_lsn: Lsn, seg_size_bytes: u64) -> WalStreamDecoder {
        assert!(
            seg_size_bytes.is_power_of_two() && seg_size_bytes >= XLOG_BLCKSZ as u64,
            "WAL segment size must be a power of two of at least one page"
        );
        let poisoned = (!start_lsn.is_aligned()).then_some(WalDecodeError {
            lsn: start_lsn,
            reason: DecodeErrorReason::UnalignedStart,
        });
        WalStreamDecoder {
            lsn: start_lsn,
            seg_size_bytes,
            input: BytesMut::new(),
            state: State::WaitingForRecord,
            prev_record: None,
            system_id: None,
            poisoned,
        }
    }

    /// Require long page headers to carry this system identifier.
    pub fn expect_system_id(mut self, system_id: u64) -> Self {
        self.system_id = Some(system_id);
        self
    }

    /// LSN of the next byte the decoder expects.
    pub fn available_lsn(&self) -> Lsn {
        // Never overflows: input stops at `lsn_limit` (see `feed_bytes`).
        self.lsn + self.input.len() as u64
    }

    /// The start of the last segment of the LSN space: input stops there.
    pub fn lsn_limit(&self) -> Lsn {
        Lsn(u64::MAX - self.seg_size_bytes + 1)
    }

    /// LSN up to which input has been consumed.
    pub fn consumed_lsn(&self) -> Lsn {
        self.lsn
    }

    /// System identifier seen in (or required of) long page headers.
    pub fn system_id(&self) -> Option<u64> {
        self.system_id
    }

    /// Append the next bytes of the stream. Bytes that would reach past
    /// [`WalStreamDecoder::lsn_limit`] are not taken: they poison the decoder
    /// with `EndOfLsnSpace`, which `poll_decode` then returns.
    pub fn feed_bytes(&mut self, bytes: &[u8]) {
        let limit = self.lsn_limit();
        let available = self.available_lsn();
        let len = bytes.len() as u64;
        if available > limit || limit.0 - available.0 < len {
            if self.poisoned.is_none() {
                self.poisoned = Some(WalDecodeError { lsn: available, reason: DecodeErrorReason::EndOfLsnSpace { len, limit } });
            }
            return;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The next whole record, `Ok(None)` if more input is needed first.
    pub fn poll_decode(&mut self) -> Result<Option<RawRecord>, WalDecodeError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let result = self.decode_next();
        if let Err(err) = &result {
            self.poisoned = Some(err.clone());
        }
        result
    }

    fn error(&self, reason: DecodeErrorReason) -> WalDecodeError {
        WalDecodeError { lsn: self.lsn, reason }
    }

    fn decode_next(&mut self) -> Result<Option<RawRecord>, WalDecodeError> {
        loop {
            if let State::SkippingTo(until) = self.state {
                if !self.skip_to(until) {
                    return Ok(None);
                }
                continue;
            }
            if self.lsn.page_offset() == 0 {
                if !self.consume_page_header()? {
                    return Ok(None);
                }
                continue;
            }
            let progressed = match self.state {
                State::WaitingForRecord => self.start_record()?,
                State::Reassembling { .. } => {
                    if let Some(record) = self.continue_record()? {
                        return Ok(Some(record));
                    }
                    !self.input.is_empty()
                }
                State::SkippingTo(_) => unreachable!("handled above"),
            };
            if !progressed {
                return Ok(None);
            }
        }
    }

    /// Consume input up to `until`; true once there.
    fn skip_to(&mut self, until: Lsn) -> bool {
        let n = (until - self.lsn).min(self.input.len() as u64);
        self.input.advance(n as usize);
        self.lsn += n;
        if self.lsn == until {
            self.state = State::WaitingForRecord;
            true
        } else {
            false
        }
    }

    /// Validate and consume the page header at `self.lsn`; false if more
    /// input is needed.
    fn consume_page_header(&mut self) -> Result<bool, WalDecodeError> {
        let at_segment_start = self.lsn.segment_offset(self.seg_size_bytes) == 0;
        let size = if at_segment_start {
            XLOG_SIZE_OF_XLOG_LONG_PHD
        } else {
            XLOG_SIZE_OF_XLOG_SHORT_PHD
        };
        if self.input.len() < XLOG_SIZE_OF_XLOG_SHORT_PHD {
            return Ok(false);
        }
        let info = u16::from_le_bytes([self.input[2], self.input[3]]);
        if (info & XLP_LONG_HEADER != 0) != at_segment_start {
            return Err(self.error(DecodeErrorReason::BadPageInfo(info)));
        }
        if self.input.len() < size {
            return Ok(false);
        }
        let hdr = XLogPageHeader::parse(&self.input[..size]);
        self.validate_page_header(&hdr)?;
        self.validate_continuation(&hdr)?;
        self.input.advance(size);
        self.lsn += size as u64;
        Ok(true)
    }

    fn validate_page_header(&mut self, hdr: &XLogPageHeader) -> Result<(), WalDecodeError> {
        use DecodeErrorReason::*;
        if hdr.magic != XLOG_PAGE_MAGIC {
            return Err(self.error(BadPageMagic(hdr.magic)));
        }
        if hdr.info & !XLP_ALL_FLAGS != 0 {
            return Err(self.error(BadPageInfo(hdr.info)));
        }
        if hdr.pageaddr != self.lsn.0 {
            return Err(self.error(BadPageAddr { found: Lsn(hdr.pageaddr) }));
        }
        if let Some(long) = hdr.long {
            if long.seg_size as u64 != self.seg_size_bytes {
                let expected = self.seg_size_bytes;
                return Err(self.error(BadSegmentSize { found: long.seg_size, expected }));
            }
            if long.xlog_blcksz as usize != XLOG_BLCKSZ {
                return Err(self.error(BadWalBlockSize(long.xlog_blcksz)));
            }
            match self.system_id {
                Some(expected) if expected != long.sysid => {
                    return Err(self.error(BadSystemId { found: long.sysid, expected }));
                }
                _ => self.system_id = Some(long.sysid),
            }
        }
        Ok(())
    }

    /// Check the page's continuation data against the decoder's state.
    fn validate_continuation(&mut self, hdr: &XLogPageHeader) -> Result<(), WalDecodeError> {
        use DecodeErrorReason::*;
        match &self.state {
            State::Reassembling { tot_len, buf, .. } => {
                let expected = tot_len - buf.len() as u32;
                if hdr.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 && !hdr.is_contrecord() {
                    // The writer crashed mid-record and started over here:
                    // the partial record is abandoned (see xlog.c).
                    self.state = State::WaitingForRecord;
                } else if !hdr.is_contrecord() {
                    return Err(self.error(MissingContrecord { rem_len: hdr.rem_len }));
                } else if hdr.rem_len != expected {
                    return Err(self.error(BadContrecordLength { found: hdr.rem_len, expected }));
                }
            }
            State::WaitingForRecord if hdr.is_contrecord() => {
                return Err(self.error(UnexpectedContrecord(hdr.rem_len)));
            }
            _ => {}
        }
        Ok(())
    }

    /// Skip alignment padding and read the length of the next record.
    /// Returns whether any progress was made.
    fn start_record(&mut self) -> Result<bool, WalDecodeError> {
        let padding = self.lsn.calc_padding(MAXALIGN as u64) as usize;
        if padding > 0 {
            if self.input.len() < padding {
                return Ok(false);
            }
            self.input.advance(padding);
            self.lsn += padding as u64;
            return Ok(true);
        }
        if self.input.len() < 4 {
            return Ok(false);
        }
        // An aligned record start leaves at least 8 bytes on the page, so the
        // length field never straddles a page boundary.
        let tot_len = u32::from_le_bytes(self.input[..4].try_into().expect("4 bytes"));
        if (tot_len as usize) < XLOG_SIZE_OF_XLOG_RECORD {
            return Err(self.error(DecodeErrorReason::RecordTooShort(tot_len)));
        }
        if tot_len > MAX_RECORD_SIZE_BYTES {
            return Err(self.error(DecodeErrorReason::RecordTooLong(tot_len)));
        }
        self.state = State::Reassembling {
            start_lsn: self.lsn,
            tot_len,
            buf: BytesMut::new(),
            header_checked: false,
        };
        Ok(true)
    }

    /// Take as much of the current record as this page and the input hold.
    fn continue_record(&mut self) -> Result<Option<RawRecord>, WalDecodeError> {
        let State::Reassembling { start_lsn, tot_len, buf, header_checked } = &mut self.state
        else {
            unreachable!("continue_record outside Reassembling");
        };
        let remaining = *tot_len as usize - buf.len();
        let page_left = XLOG_BLCKSZ - self.lsn.page_offset() as usize;
        let n = remaining.min(page_left).min(self.input.len());
        let chunk = self.input.split_to(n);
        if buf.is_empty() && n == remaining {
            // Whole record in one piece: copied out (see the module
            // invariants), so that the input's allocation is not shared.
            *buf = BytesMut::from(&chunk[..]);
        } else {
            buf.reserve(remaining.min(64 * 1024));
            buf.extend_from_slice(&chunk);
        }
        self.lsn += n as u64;
        let start_lsn = *start_lsn;
        if !*header_checked && buf.len() >= XLOG_SIZE_OF_XLOG_RECORD {
            *header_checked = true;
            let hdr = XLogRecordHeader::parse(buf);
            check_record_header(&hdr, start_lsn, self.prev_record)?;
        }
        if buf.len() < *tot_len as usize {
            return Ok(None);
        }
        let bytes = std::mem::take(buf).freeze();
        self.finish_record(start_lsn, bytes).map(Some)
    }

    fn finish_record(&mut self, start_lsn: Lsn, bytes: Bytes) -> Result<RawRecord, WalDecodeError> {
        let hdr = XLogRecordHeader::parse(&bytes);
        let computed = crate::record::record_crc(&bytes);
        if computed != hdr.xl_crc {
            return Err(WalDecodeError {
                lsn: start_lsn,
                reason: DecodeErrorReason::BadCrc { stored: hdr.xl_crc, computed },
            });
        }
        self.prev_record = Some(start_lsn);
        // Neither overflows: `self.lsn` is at most `lsn_limit`, a segment start.
        let mut end_lsn = self.lsn.align();
        self.state = State::WaitingForRecord;
        if hdr.is_xlog_switch() {
            end_lsn = self.lsn + self.lsn.calc_padding(self.seg_size_bytes);
            self.state = State::SkippingTo(end_lsn);
        }
        Ok(RawRecord { start_lsn, end_lsn, bytes })
    }
}

fn check_record_header(
    hdr: &XLogRecordHeader,
    start_lsn: Lsn,
    prev_record: Option<Lsn>,
) -> Result<(), WalDecodeError> {
    let fail = |reason| Err(WalDecodeError { lsn: start_lsn, reason });
    if !is_valid_rmgr_id(hdr.xl_rmid) {
        return fail(DecodeErrorReason::BadRmgrId(hdr.xl_rmid));
    }
    if let Some(expected) = prev_record {
        if hdr.xl_prev != expected {
            return fail(DecodeErrorReason::BadPrevLink { found: hdr.xl_prev, expected });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlfile::CheckPoint;
    use crate::walgen::{encode_checkpoint_record, segment_with_record};

    const SEG: u64 = 1 << 20;

    #[test]
    fn records_decode_up_to_the_last_segment_of_the_lsn_space() {
        // A record on the last page of the second-to-last segment; the
        // input runs exactly up to the decoder's limit.
        let limit = Lsn(u64::MAX - SEG + 1);
        let rec = encode_checkpoint_record(&CheckPoint::default(), Lsn(0), true);
        let at = Lsn((limit.0 - 64 - rec.len() as u64) & !7);
        let (seg, end) = segment_with_record(at, &rec, 7, SEG).unwrap();
        let from = (at.0 - at.segment_start(SEG).0) as usize;
        let mut decoder = WalStreamDecoder::new(at, SEG);
        decoder.feed_bytes(&seg[from..]);
        assert_eq!((decoder.lsn_limit(), decoder.available_lsn()), (limit, limit));
        let first = decoder.poll_decode().unwrap().expect("the record");
        assert_eq!((first.start_lsn, first.end_lsn), (at, end.align()));
        assert!(decoder.poll_decode().unwrap_err().is_end_of_wal());
        // One byte more would run into the last segment: a clean error.
        let mut decoder = WalStreamDecoder::new(at, SEG);
        decoder.feed_bytes(&seg[from..]);
        decoder.feed_bytes(&[0]);
        let err = decoder.poll_decode().unwrap_err();
        assert!(matches!(err.reason, DecodeErrorReason::EndOfLsnSpace { len: 1, .. }), "{err}");
        assert_eq!(err.lsn, limit);
    }

    #[test]
    fn a_start_in_the_last_segment_is_refused_not_wrapped() {
        for start in [Lsn(u64::MAX - 7), Lsn(u64::MAX - SEG + 1), Lsn(u64::MAX - 8191)] {
            let mut decoder = WalStreamDecoder::new(start, SEG);
            decoder.feed_bytes(&[0u8; 64]);
            let err = decoder.poll_decode().unwrap_err();
            assert!(matches!(err.reason, DecodeErrorReason::EndOfLsnSpace { .. }), "{start}: {err}");
            assert_eq!(decoder.available_lsn(), start);
        }
        // A chunk that straddles the limit.
        let mut decoder = WalStreamDecoder::new(Lsn(u64::MAX - SEG - 15), SEG);
        decoder.feed_bytes(&vec![0u8; 32]);
        assert!(matches!(decoder.poll_decode().unwrap_err().reason, DecodeErrorReason::EndOfLsnSpace { len: 32, .. }));
    }

    const SEG_16_MIB: u64 = 16 << 20;

    /// A record decoded from a larger chunk of input owns its bytes: it does
    /// not keep the input's allocation (and the records around it) alive.
    #[test]
    fn a_decoded_record_does_not_share_the_input_buffer() {
        let lsn = Lsn(SEG_16_MIB + 8192 + 40);
        let record = encode_checkpoint_record(&CheckPoint::default(), Lsn(0), true);
        let (seg, end) = segment_with_record(lsn, &record, 7, SEG_16_MIB).expect("segment");
        let mut decoder = WalStreamDecoder::new(lsn, SEG_16_MIB);
        // The record and the 32 KiB of WAL after it, in one chunk.
        let from = (lsn.0 - SEG_16_MIB) as usize;
        decoder.feed_bytes(&seg[from..from + 32 * 1024]);
        let raw = decoder.poll_decode().expect("valid").expect("a whole record");
        assert_eq!(raw.end_lsn, end.align());
        assert_eq!(&raw.bytes[..], &record[..]);
        assert!(raw.bytes.is_unique(), "the record shares its allocation with the input buffer");
    }
}
