//! [`Lsn`]: a position in the write-ahead log, a byte offset into the infinite
//! WAL stream of one cluster.
//!
//! Text form is PostgreSQL's `%X/%X` (high and low 32 bits in hex, e.g.
//! `0/16A9388`). Arithmetic that would overflow or underflow is checked where
//! the result comes from input; the `+`/`-` operators are for offsets that the
//! caller already knows to be in range and panic on overflow like integers do.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Size of a WAL page (`XLOG_BLCKSZ`) in PostgreSQL 15 builds from Debian.
pub const WAL_PAGE_SIZE_BYTES: u64 = 8192;

/// A log sequence number.
#[derive(Clone, Copy, Default, Eq, Ord, PartialEq, PartialOrd, Hash)]
pub struct Lsn(pub u64);

/// `Lsn` text that is not of the form `X/Y` with hex halves.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {text:?}: expected two hexadecimal halves like 0/16A9388")]
pub struct LsnParseError {
    pub text: String,
}

impl Lsn {
    /// The invalid LSN, `InvalidXLogRecPtr` in PostgreSQL.
    pub const INVALID: Lsn = Lsn(0);
    pub const MAX: Lsn = Lsn(u64::MAX);

    pub fn is_valid(self) -> bool {
        self != Lsn::INVALID
    }

    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    pub fn checked_sub(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_sub(bytes).map(Lsn)
    }

    /// Distance in bytes from `earlier` to `self`, `None` if `earlier` is later.
    pub fn bytes_since(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }

    /// Round up to the next multiple of 8 (PostgreSQL's `MAXALIGN` on x86-64),
    /// where every WAL record starts. Panics above `FFFFFFFF/FFFFFFF8`; use
    /// [`Lsn::checked_align`] on LSNs from input.
    pub fn align(self) -> Lsn {
        self.checked_align().expect("Lsn overflow")
    }

    /// [`Lsn::align`], `None` where the next multiple of 8 is past `u64::MAX`.
    pub fn checked_align(self) -> Option<Lsn> {
        self.0.checked_add(7).map(|v| Lsn(v & !7))
    }

    /// First LSN of the next segment, `None` past the end of the LSN space.
    pub fn checked_next_segment_start(self, seg_size_bytes: u64) -> Option<Lsn> {
        self.segment_start(seg_size_bytes).checked_add(seg_size_bytes)
    }

    pub fn is_aligned(self) -> bool {
        self.0.is_multiple_of(8)
    }

    /// Number of the WAL segment that holds this LSN.
    pub fn segment_number(self, seg_size_bytes: u64) -> u64 {
        debug_assert!(seg_size_bytes.is_power_of_two());
        self.0 / seg_size_bytes
    }

    /// Offset of this LSN inside its WAL segment.
    pub fn segment_offset(self, seg_size_bytes: u64) -> u64 {
        debug_assert!(seg_size_bytes.is_power_of_two());
        self.0 % seg_size_bytes
    }

    /// First LSN of the segment that holds this LSN.
    pub fn segment_start(self, seg_size_bytes: u64) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg_size_bytes))
    }

    /// Offset of this LSN inside its WAL page.
    pub fn page_offset(self) -> u64 {
        self.0 % WAL_PAGE_SIZE_BYTES
    }

    /// First LSN of the WAL page that holds this LSN.
    pub fn page_start(self) -> Lsn {
        Lsn(self.0 - self.page_offset())
    }

    /// Bytes from `self` up to the next multiple of `boundary_bytes` (0 when
    /// already on one). Used to skip the padding after an XLOG_SWITCH record.
    pub fn calc_padding(self, boundary_bytes: u64) -> u64 {
        debug_assert!(boundary_bytes.is_power_of_two());
        (boundary_bytes - self.0 % boundary_bytes) % boundary_bytes
    }

    /// Name of the WAL segment file holding this LSN on timeline `tli`, as in
    /// `pg_wal/` (`000000010000000000000001`).
    pub fn segment_file_name(self, tli: u32, seg_size_bytes: u64) -> String {
        let segno = self.segment_number(seg_size_bytes);
        let segs_per_xlogid = 0x1_0000_0000 / seg_size_bytes;
        format!(
            "{:08X}{:08X}{:08X}",
            tli,
            segno / segs_per_xlogid,
            segno % segs_per_xlogid
        )
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError {
            text: text.to_string(),
        };
        let (hi, lo) = text.split_once('/').ok_or_else(err)?;
        let parse_half = |half: &str| {
            if half.is_empty() || half.len() > 8 {
                return Err(err());
            }
            u32::from_str_radix(half, 16).map_err(|_| err())
        };
        Ok(Lsn(((parse_half(hi)? as u64) << 32) | parse_half(lo)? as u64))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl Add<u64> for Lsn {
    type Output = Lsn;
    fn add(self, bytes: u64) -> Lsn {
        Lsn(self.0.checked_add(bytes).expect("Lsn overflow"))
    }
}

impl AddAssign<u64> for Lsn {
    fn add_assign(&mut self, bytes: u64) {
        *self = *self + bytes;
    }
}

impl Sub<u64> for Lsn {
    type Output = Lsn;
    fn sub(self, bytes: u64) -> Lsn {
        Lsn(self.0.checked_sub(bytes).expect("Lsn underflow"))
    }
}

impl Sub<Lsn> for Lsn {
    type Output = u64;
    fn sub(self, other: Lsn) -> u64 {
        self.0.checked_sub(other.0).expect("Lsn underflow")
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        let lsn: Lsn = "0/16A9388".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16A9388));
        assert_eq!(lsn.to_string(), "0/16A9388");
        let high: Lsn = "1F/FFFFFFFF".parse().unwrap();
        assert_eq!(high.0, 0x1F_FFFF_FFFF);
        assert_eq!(high.to_string(), "1F/FFFFFFFF");
        assert_eq!("a/b".parse::<Lsn>().unwrap(), Lsn(0xA_0000_000B));
    }

    #[test]
    fn parse_rejects_malformed_text() {
        for bad in ["", "0", "/1", "1/", "0/1/2", "g/1", "0/123456789", "-1/0", " 0/1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn alignment_and_padding() {
        assert_eq!(Lsn(0x1001).align(), Lsn(0x1008));
        assert_eq!(Lsn(0x1008).align(), Lsn(0x1008));
        assert_eq!(Lsn(0x1001).checked_align(), Some(Lsn(0x1008)));
        assert_eq!(Lsn(u64::MAX - 7).checked_align(), Some(Lsn(u64::MAX - 7)));
        assert_eq!(Lsn(u64::MAX - 6).checked_align(), None);
        assert_eq!(Lsn::MAX.checked_next_segment_start(1 << 24), None);
        assert_eq!(Lsn(1).checked_next_segment_start(1 << 24), Some(Lsn(1 << 24)));
        assert!(Lsn(0x10).is_aligned());
        assert!(!Lsn(0x11).is_aligned());
        assert_eq!(Lsn(0x1001).calc_padding(8), 7);
        assert_eq!(Lsn(0x2000).calc_padding(8192), 0);
        assert_eq!(Lsn(0x2001).calc_padding(8192), 8191);
    }

    #[test]
    fn segment_and_page_positions() {
        let seg = 16 * 1024 * 1024;
        let lsn: Lsn = "1/3002028".parse().unwrap();
        assert_eq!(lsn.segment_number(seg), 0x103);
        assert_eq!(lsn.segment_offset(seg), 0x2028);
        assert_eq!(lsn.segment_start(seg), "1/3000000".parse().unwrap());
        assert_eq!(lsn.page_offset(), 0x28);
        assert_eq!(lsn.page_start(), "1/3002000".parse().unwrap());
        assert_eq!(lsn.segment_file_name(1, seg), "000000010000000100000003");
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Lsn(10) + 5, Lsn(15));
        assert_eq!(Lsn(10) - Lsn(4), 6);
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(3).checked_sub(4), None);
        assert_eq!(Lsn(3).bytes_since(Lsn(4)), None);
        assert_eq!(Lsn(9).bytes_since(Lsn(4)), Some(5));
    }

    #[test]
    fn serde_uses_text_form() {
        let json = serde_json::to_string(&Lsn(0x16A9388)).unwrap();
        assert_eq!(json, "\"0/16A9388\"");
        let back: Lsn = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Lsn(0x16A9388));
        assert!(serde_json::from_str::<Lsn>("\"zz\"").is_err());
    }
}
