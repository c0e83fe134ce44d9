//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData`).
//!
//! Every 8 KiB WAL page starts with a short header; the first page of each
//! segment has the long one, which also names the cluster (system id) and
//! the segment and page sizes. All fields are little-endian.

use crate::pg_constants::*;

/// A decoded WAL page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XLogPageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: u32,
    /// LSN of the first byte of this page.
    pub pageaddr: u64,
    /// Bytes of a record continued from the previous page (0 if none).
    pub rem_len: u32,
    pub long: Option<XLogLongHeaderFields>,
}

/// Fields only the long header (segment start) carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XLogLongHeaderFields {
    pub sysid: u64,
    pub seg_size: u32,
    pub xlog_blcksz: u32,
}

fn u16_at(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([buf[off], buf[off + 1]])
}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"))
}

impl XLogPageHeader {
    /// Size in bytes of this header on the page (24 or 40).
    pub fn size(&self) -> usize {
        if self.long.is_some() {
            XLOG_SIZE_OF_XLOG_LONG_PHD
        } else {
            XLOG_SIZE_OF_XLOG_SHORT_PHD
        }
    }

    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// Parse the header at the start of `buf`. `buf` must hold at least the
    /// short header, and the long one when `XLP_LONG_HEADER` is set: use
    /// [`XLogPageHeader::needed_len`] first. Does not validate values.
    pub fn parse(buf: &[u8]) -> XLogPageHeader {
        assert!(buf.len() >= XLOG_SIZE_OF_XLOG_SHORT_PHD, "short WAL page header");
        let info = u16_at(buf, 2);
        let long = (info & XLP_LONG_HEADER != 0).then(|| {
            assert!(buf.len() >= XLOG_SIZE_OF_XLOG_LONG_PHD, "long WAL page header");
            XLogLongHeaderFields {
                sysid: u64_at(buf, 24),
                seg_size: u32_at(buf, 32),
                xlog_blcksz: u32_at(buf, 36),
            }
        });
        XLogPageHeader {
            magic: u16_at(buf, 0),
            info,
            tli: u32_at(buf, 4),
            pageaddr: u64_at(buf, 8),
            rem_len: u32_at(buf, 16),
            long,
        }
    }

    /// How many bytes [`XLogPageHeader::parse`] needs, given at least the
    /// first 4 bytes of the page.
    pub fn needed_len(first_bytes: &[u8]) -> usize {
        if u16_at(first_bytes, 2) & XLP_LONG_HEADER != 0 {
            XLOG_SIZE_OF_XLOG_LONG_PHD
        } else {
            XLOG_SIZE_OF_XLOG_SHORT_PHD
        }
    }

    /// Encode to the on-disk bytes (padding zeroed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size());
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.info.to_le_bytes());
        out.extend_from_slice(&self.tli.to_le_bytes());
        out.extend_from_slice(&self.pageaddr.to_le_bytes());
        out.extend_from_slice(&self.rem_len.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        if let Some(long) = &self.long {
            out.extend_from_slice(&long.sysid.to_le_bytes());
            out.extend_from_slice(&long.seg_size.to_le_bytes());
            out.extend_from_slice(&long.xlog_blcksz.to_le_bytes());
        }
        debug_assert_eq!(out.len(), self.size());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        for long in [
            None,
            Some(XLogLongHeaderFields {
                sysid: 0x0123_4567_89ab_cdef,
                seg_size: 16 << 20,
                xlog_blcksz: 8192,
            }),
        ] {
            let hdr = XLogPageHeader {
                magic: XLOG_PAGE_MAGIC,
                info: XLP_FIRST_IS_CONTRECORD | if long.is_some() { XLP_LONG_HEADER } else { 0 },
                tli: 1,
                pageaddr: 0x1_0000_2000,
                rem_len: 77,
                long,
            };
            let bytes = hdr.encode();
            assert_eq!(bytes.len(), hdr.size());
            assert_eq!(XLogPageHeader::needed_len(&bytes), hdr.size());
            assert_eq!(XLogPageHeader::parse(&bytes), hdr);
        }
    }
}
