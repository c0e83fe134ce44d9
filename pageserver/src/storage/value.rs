//! What is stored under a key at an LSN ([`Value`]: a page image or a WAL
//! record), its binary encoding in layer files, and the encodings of the
//! small metadata values (directories, sizes) stored as images.
//!
//! Invariants: [`Value::decode`] never panics on any input; encode/decode
//! round-trip exactly. Metadata images are whole values (a directory change
//! writes the complete new directory), so their history never needs redo.
use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

use crate::walredo::{MultiXactMember, WalRecord};

/// A value: a complete image, or a record to apply to an older version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Image(Bytes),
    WalRecord(WalRecord),
}

impl Value {
    /// Whether this value needs no older version (an image or an
    /// initialising record).
    pub fn will_init(&self) -> bool {
        match self {
            Value::Image(_) => true,
            Value::WalRecord(rec) => rec.will_init(),
        }
    }

    /// Approximate memory footprint.
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Image(img) => img.len(),
            Value::WalRecord(WalRecord::Postgres { rec, .. }) => rec.len(),
            Value::WalRecord(_) => 64,
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Value::Image(img) => {
                out.put_u8(0);
                out.extend_from_slice(img);
            }
            Value::WalRecord(rec) => {
                out.put_u8(1);
                encode_record(rec, out);
            }
        }
    }

    pub fn decode(buf: Bytes) -> Result<Value, String> {
        match buf.first() {
            Some(0) => Ok(Value::Image(buf.slice(1..))),
            Some(1) => decode_record(buf.slice(1..)).map(Value::WalRecord),
            Some(t) => Err(format!("unknown value tag {t}")),
            None => Err("empty value".into()),
        }
    }
}

fn put_opt_u32(out: &mut BytesMut, v: Option<u32>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u32_le(v);
        }
        None => {
            out.put_u8(0);
            out.put_u32_le(0);
        }
    }
}

fn encode_record(rec: &WalRecord, out: &mut BytesMut) {
    match rec {
        WalRecord::Postgres { will_init, rec } => {
            out.put_u8(0);
            out.put_u8(*will_init as u8);
            out.extend_from_slice(rec);
        }
        WalRecord::ClearVisibilityMapFlags { new_heap_blkno, old_heap_blkno, flags } => {
            out.put_u8(1);
            put_opt_u32(out, *new_heap_blkno);
            put_opt_u32(out, *old_heap_blkno);
            out.put_u8(*flags);
        }
        WalRecord::TruncateVisibilityMap { first_heap_blkno } => {
            out.put_u8(6);
            out.put_u32_le(*first_heap_blkno);
        }
        WalRecord::ClogSetCommitted { xids, timestamp } => {
            out.put_u8(2);
            out.put_i64_le(*timestamp);
            out.put_u32_le(xids.len() as u32);
            xids.iter().for_each(|x| out.put_u32_le(*x));
        }
        WalRecord::ClogSetAborted { xids } => {
            out.put_u8(3);
            out.put_u32_le(xids.len() as u32);
            xids.iter().for_each(|x| out.put_u32_le(*x));
        }
        WalRecord::MultixactOffsetCreate { mid, moff, nmembers } => {
            out.put_u8(4);
            out.put_u32_le(*mid);
            out.put_u32_le(*moff);
            out.put_u32_le(*nmembers);
        }
        WalRecord::MultixactMembersCreate { moff, members } => {
            out.put_u8(5);
            out.put_u32_le(*moff);
            out.put_u32_le(members.len() as u32);
            for m in members {
                out.put_u32_le(m.xid);
                out.put_u32_le(m.status);
            }
        }
    }
}

/// A bounds-checked little-endian reader.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("truncated value: need {n} bytes at offset {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().map_err(|_| "u32")?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().map_err(|_| "u64")?))
    }
    pub(crate) fn rest(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, String> {
        let present = self.u8()?;
        let v = self.u32()?;
        Ok((present != 0).then_some(v))
    }
    /// A count of `each`-byte items that must fit in the rest of the input.
    fn count(&mut self, each: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(each) > self.rest() {
            return Err(format!("count {n} exceeds the value"));
        }
        Ok(n)
    }
}

fn decode_record(buf: Bytes) -> Result<WalRecord, String> {
    let mut r = Reader::new(&buf);
    let rec = match r.u8()? {
        0 => {
            let will_init = r.u8()? != 0;
            WalRecord::Postgres { will_init, rec: buf.slice(2..) }
        }
        1 => WalRecord::ClearVisibilityMapFlags {
            new_heap_blkno: r.opt_u32()?,
            old_heap_blkno: r.opt_u32()?,
            flags: r.u8()?,
        },
        2 => {
            let timestamp = r.u64()? as i64;
            let n = r.count(4)?;
            let xids = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            WalRecord::ClogSetCommitted { xids, timestamp }
        }
        3 => {
            let n = r.count(4)?;
            WalRecord::ClogSetAborted { xids: (0..n).map(|_| r.u32()).collect::<Result<_, _>>()? }
        }
        4 => WalRecord::MultixactOffsetCreate { mid: r.u32()?, moff: r.u32()?, nmembers: r.u32()? },
        5 => {
            let moff = r.u32()?;
            let n = r.count(8)?;
            let members = (0..n)
                .map(|_| Ok(MultiXactMember { xid: r.u32()?, status: r.u32()? }))
                .collect::<Result<_, String>>()?;
            WalRecord::MultixactMembersCreate { moff, members }
        }
        6 => WalRecord::TruncateVisibilityMap { first_heap_blkno: r.u32()? },
        t => return Err(format!("unknown WAL record kind {t}")),
    };
    Ok(rec)
}

/// Encode a set of fixed-size items (directories).
pub fn encode_set<T: Ord>(set: &BTreeSet<T>, each: impl Fn(&T, &mut BytesMut)) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u32_le(set.len() as u32);
    for item in set {
        each(item, &mut out);
    }
    out.freeze()
}

/// Database directory: (tablespace, database) pairs.
pub fn encode_dbdir(set: &BTreeSet<(u32, u32)>) -> Bytes {
    encode_set(set, |(s, d), o| {
        o.put_u32_le(*s);
        o.put_u32_le(*d);
    })
}

pub fn decode_dbdir(buf: &[u8]) -> Result<BTreeSet<(u32, u32)>, String> {
    let mut r = Reader::new(buf);
    let n = r.count(8)?;
    (0..n).map(|_| Ok((r.u32()?, r.u32()?))).collect()
}

/// Relation directory of one database: (relation number, fork).
pub fn encode_reldir(set: &BTreeSet<(u32, u8)>) -> Bytes {
    encode_set(set, |(rel, fork), o| {
        o.put_u32_le(*rel);
        o.put_u8(*fork);
    })
}

pub fn decode_reldir(buf: &[u8]) -> Result<BTreeSet<(u32, u8)>, String> {
    let mut r = Reader::new(buf);
    let n = r.count(5)?;
    (0..n).map(|_| Ok((r.u32()?, r.u8()?))).collect()
}

/// A set of u32 (SLRU segment numbers, two-phase xids).
pub fn encode_u32_set(set: &BTreeSet<u32>) -> Bytes {
    encode_set(set, |v, o| o.put_u32_le(*v))
}

pub fn decode_u32_set(buf: &[u8]) -> Result<BTreeSet<u32>, String> {
    let mut r = Reader::new(buf);
    let n = r.count(4)?;
    (0..n).map(|_| r.u32()).collect()
}

/// A size in blocks or pages.
pub fn encode_u32(v: u32) -> Bytes {
    Bytes::copy_from_slice(&v.to_le_bytes())
}

pub fn decode_u32(buf: &[u8]) -> Result<u32, String> {
    Reader::new(buf).u32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_rejected() {
        let values = vec![
            Value::Image(Bytes::from_static(&[1, 2, 3])),
            Value::WalRecord(WalRecord::Postgres { will_init: true, rec: Bytes::from_static(b"abcd") }),
            Value::WalRecord(WalRecord::ClearVisibilityMapFlags { new_heap_blkno: Some(3), old_heap_blkno: None, flags: 3 }),
            Value::WalRecord(WalRecord::ClogSetCommitted { xids: vec![5, 6], timestamp: -7 }),
            Value::WalRecord(WalRecord::ClogSetAborted { xids: vec![9] }),
            Value::WalRecord(WalRecord::MultixactOffsetCreate { mid: 1, moff: 2, nmembers: 3 }),
            Value::WalRecord(WalRecord::MultixactMembersCreate {
                moff: 4,
                members: vec![MultiXactMember { xid: 7, status: 1 }],
            }),
        ];
        for v in values {
            let mut b = BytesMut::new();
            v.encode(&mut b);
            let bytes = b.freeze();
            assert_eq!(Value::decode(bytes.clone()).unwrap(), v);
            for cut in 0..bytes.len() {
                let _ = Value::decode(bytes.slice(..cut)); // must not panic
            }
        }
        assert!(Value::decode(Bytes::from_static(&[1, 2, 0xFF, 0xFF, 0xFF, 0xFF])).is_err());
        let dir: BTreeSet<(u32, u8)> = [(5, 0), (5, 2)].into();
        assert_eq!(decode_reldir(&encode_reldir(&dir)).unwrap(), dir);
    }
}
