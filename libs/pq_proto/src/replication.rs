//! The physical streaming-replication sub-protocol: the payloads carried in
//! CopyData messages once `START_REPLICATION` has switched the connection
//! to copy-both mode.
//!
//! Owns [`ReplicationMessage`] (server → client: `w` XLogData, `k`
//! PrimaryKeepalive) and [`ReplicationFeedback`] (client → server: `r`
//! StandbyStatusUpdate, `h` HotStandbyFeedback, `z` Strata's
//! [`StrataFeedback`]), plus PostgreSQL-epoch time helpers.
//!
//! Invariants: `parse` takes exactly one CopyData payload (tag byte first)
//! and `encode` appends exactly one payload, without the CopyData framing;
//! integers are big-endian. Fixed-layout messages must have exactly their
//! length: trailing bytes are [`ProtocolError::Malformed`], as is any
//! unknown tag. Parsing never panics.
//!
//! Cancellation: synchronous code only.
//!
//! ## `z` StrataFeedback layout (41 bytes)
//!
//! | offset | type   | field                 |
//! |--------|--------|-----------------------|
//! | 0      | Byte1  | `'z'`                 |
//! | 1      | UInt64 | write_lsn (last WAL position received) |
//! | 9      | UInt64 | disk_consistent_lsn   |
//! | 17     | UInt64 | remote_consistent_lsn |
//! | 25     | UInt64 | timeline_size_bytes   |
//! | 33     | Int64  | send_time_us (µs since 2000-01-01 UTC) |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use utils::lsn::Lsn;

use crate::error::{ProtocolError, Result};
use crate::wire::Reader;

/// Seconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Now, in microseconds since 2000-01-01 UTC.
pub fn pg_now_us() -> i64 {
    system_time_to_pg_us(SystemTime::now())
}

/// A wall-clock time in microseconds since 2000-01-01 UTC (saturating).
pub fn system_time_to_pg_us(t: SystemTime) -> i64 {
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    match t.duration_since(pg_epoch) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |v| -v),
    }
}

/// Microseconds since 2000-01-01 UTC as a wall-clock time.
pub fn pg_us_to_system_time(us: i64) -> SystemTime {
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    let d = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        pg_epoch + d
    } else {
        pg_epoch - d
    }
}

/// `w`: a chunk of WAL starting at `wal_start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    pub wal_start: Lsn,
    /// The server's current end of WAL (may be 0 when unknown).
    pub wal_end: Lsn,
    pub send_time_us: i64,
    pub data: Bytes,
}

impl XLogData {
    /// The LSN just past this chunk (saturating; a parsed chunk never
    /// reaches past `u64::MAX`, [`ReplicationMessage::parse`] refuses it).
    pub fn end_lsn(&self) -> Lsn {
        Lsn(self.wal_start.0.saturating_add(self.data.len() as u64))
    }

    /// A chunk whose end is past the end of the LSN space is malformed.
    fn check_range(&self) -> Result<()> {
        match self.wal_start.checked_add(self.data.len() as u64) {
            Some(_) => Ok(()),
            None => Err(ProtocolError::malformed(
                WHAT,
                format!("{} bytes of WAL at {} run past the end of the LSN space", self.data.len(), self.wal_start),
            )),
        }
    }
}

/// `k`: the server's keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    pub wal_end: Lsn,
    pub send_time_us: i64,
    /// The client should answer with a status update at once.
    pub reply_requested: bool,
}

/// `r`: the standby's positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub apply_lsn: Lsn,
    pub send_time_us: i64,
    pub reply_requested: bool,
}

/// `h`: the standby's xmin horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    pub send_time_us: i64,
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

/// `z`: a pageserver's progress (Strata extension; layout in module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrataFeedback {
    pub write_lsn: Lsn,
    pub disk_consistent_lsn: Lsn,
    pub remote_consistent_lsn: Lsn,
    pub timeline_size_bytes: u64,
    pub send_time_us: i64,
}

/// Server → client replication payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData(XLogData),
    PrimaryKeepalive(PrimaryKeepalive),
}

/// Client → server replication payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationFeedback {
    StandbyStatusUpdate(StandbyStatusUpdate),
    HotStandbyFeedback(HotStandbyFeedback),
    StrataFeedback(StrataFeedback),
}

const WHAT: &str = "replication message";

fn unknown_tag(tag: u8) -> ProtocolError {
    ProtocolError::malformed(WHAT, format!("unknown tag 0x{tag:02x}"))
}

fn read_bool(r: &mut Reader<'_>) -> Result<bool> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(ProtocolError::malformed(WHAT, format!("boolean byte {v}"))),
    }
}

impl ReplicationMessage {
    /// Parse one CopyData payload sent by the server.
    pub fn parse(payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload, WHAT);
        let msg = match r.u8()? {
            b'w' => ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(r.u64()?),
                wal_end: Lsn(r.u64()?),
                send_time_us: r.i64()?,
                data: Bytes::copy_from_slice(r.rest()),
            }),
            b'k' => ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(r.u64()?),
                send_time_us: r.i64()?,
                reply_requested: read_bool(&mut r)?,
            }),
            tag => return Err(unknown_tag(tag)),
        };
        r.finish()?;
        if let ReplicationMessage::XLogData(x) = &msg {
            x.check_range()?;
        }
        Ok(msg)
    }

    /// Like [`ReplicationMessage::parse`] but shares `payload`'s storage for
    /// the WAL bytes instead of copying them.
    pub fn parse_bytes(payload: Bytes) -> Result<Self> {
        match payload.first() {
            Some(b'w') if payload.len() >= 25 => {
                let mut msg = Self::parse(payload.get(..25).unwrap_or_default())?;
                if let ReplicationMessage::XLogData(x) = &mut msg {
                    x.data = payload.slice(25..);
                    x.check_range()?;
                }
                Ok(msg)
            }
            _ => Self::parse(&payload),
        }
    }

    /// Append the CopyData payload.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            ReplicationMessage::XLogData(x) => {
                buf.put_u8(b'w');
                buf.put_u64(x.wal_start.0);
                buf.put_u64(x.wal_end.0);
                buf.put_i64(x.send_time_us);
                buf.put_slice(&x.data);
            }
            ReplicationMessage::PrimaryKeepalive(k) => {
                buf.put_u8(b'k');
                buf.put_u64(k.wal_end.0);
                buf.put_i64(k.send_time_us);
                buf.put_u8(u8::from(k.reply_requested));
            }
        }
    }
}

impl ReplicationFeedback {
    /// Parse one CopyData payload sent by the client.
    pub fn parse(payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload, WHAT);
        let msg = match r.u8()? {
            b'r' => ReplicationFeedback::StandbyStatusUpdate(StandbyStatusUpdate {
                write_lsn: Lsn(r.u64()?),
                flush_lsn: Lsn(r.u64()?),
                apply_lsn: Lsn(r.u64()?),
                send_time_us: r.i64()?,
                reply_requested: read_bool(&mut r)?,
            }),
            b'h' => ReplicationFeedback::HotStandbyFeedback(HotStandbyFeedback {
                send_time_us: r.i64()?,
                xmin: r.u32()?,
                xmin_epoch: r.u32()?,
                catalog_xmin: r.u32()?,
                catalog_xmin_epoch: r.u32()?,
            }),
            b'z' => ReplicationFeedback::StrataFeedback(StrataFeedback {
                write_lsn: Lsn(r.u64()?),
                disk_consistent_lsn: Lsn(r.u64()?),
                remote_consistent_lsn: Lsn(r.u64()?),
                timeline_size_bytes: r.u64()?,
                send_time_us: r.i64()?,
            }),
            tag => return Err(unknown_tag(tag)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Append the CopyData payload.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            ReplicationFeedback::StandbyStatusUpdate(s) => {
                buf.put_u8(b'r');
                buf.put_u64(s.write_lsn.0);
                buf.put_u64(s.flush_lsn.0);
                buf.put_u64(s.apply_lsn.0);
                buf.put_i64(s.send_time_us);
                buf.put_u8(u8::from(s.reply_requested));
            }
            ReplicationFeedback::HotStandbyFeedback(h) => {
                buf.put_u8(b'h');
                buf.put_i64(h.send_time_us);
                buf.put_u32(h.xmin);
                buf.put_u32(h.xmin_epoch);
                buf.put_u32(h.catalog_xmin);
                buf.put_u32(h.catalog_xmin_epoch);
            }
            ReplicationFeedback::StrataFeedback(z) => {
                buf.put_u8(b'z');
                buf.put_u64(z.write_lsn.0);
                buf.put_u64(z.disk_consistent_lsn.0);
                buf.put_u64(z.remote_consistent_lsn.0);
                buf.put_u64(z.timeline_size_bytes);
                buf.put_i64(z.send_time_us);
            }
        }
    }
}

impl From<StandbyStatusUpdate> for ReplicationFeedback {
    fn from(m: StandbyStatusUpdate) -> Self {
        ReplicationFeedback::StandbyStatusUpdate(m)
    }
}

impl From<HotStandbyFeedback> for ReplicationFeedback {
    fn from(m: HotStandbyFeedback) -> Self {
        ReplicationFeedback::HotStandbyFeedback(m)
    }
}

impl From<StrataFeedback> for ReplicationFeedback {
    fn from(m: StrataFeedback) -> Self {
        ReplicationFeedback::StrataFeedback(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_server(msg: ReplicationMessage, len: usize) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        assert_eq!(buf.len(), len);
        assert_eq!(ReplicationMessage::parse(&buf).unwrap(), msg);
        assert_eq!(
            ReplicationMessage::parse_bytes(buf.clone().freeze()).unwrap(),
            msg
        );
        let mut longer = buf.clone();
        longer.put_u8(0);
        if !matches!(msg, ReplicationMessage::XLogData(_)) {
            assert!(ReplicationMessage::parse(&longer).is_err());
        }
        for cut in 0..buf.len().min(25) {
            assert!(ReplicationMessage::parse(&buf[..cut]).is_err(), "cut {cut}");
        }
    }

    fn round_trip_client(msg: ReplicationFeedback, len: usize) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        assert_eq!(buf.len(), len);
        assert_eq!(ReplicationFeedback::parse(&buf).unwrap(), msg);
        for cut in 0..buf.len() {
            assert!(
                ReplicationFeedback::parse(&buf[..cut]).is_err(),
                "cut {cut}"
            );
        }
        buf.put_u8(0);
        assert!(ReplicationFeedback::parse(&buf).is_err());
    }

    #[test]
    fn xlogdata_and_keepalive_round_trip() {
        let data = Bytes::from_static(b"walbytes");
        let x = XLogData {
            wal_start: Lsn(0x1_0000_0028),
            wal_end: Lsn(0x2_0000_0000),
            send_time_us: -5,
            data,
        };
        assert_eq!(x.end_lsn(), Lsn(0x1_0000_0030));
        round_trip_server(ReplicationMessage::XLogData(x), 25 + 8);
        let k = PrimaryKeepalive {
            wal_end: Lsn(77),
            send_time_us: pg_now_us(),
            reply_requested: true,
        };
        round_trip_server(ReplicationMessage::PrimaryKeepalive(k), 18);
    }

    #[test]
    fn feedback_round_trips() {
        let now = pg_now_us();
        round_trip_client(
            StandbyStatusUpdate {
                write_lsn: Lsn(3),
                flush_lsn: Lsn(2),
                apply_lsn: Lsn(1),
                send_time_us: now,
                reply_requested: false,
            }
            .into(),
            34,
        );
        round_trip_client(
            HotStandbyFeedback {
                send_time_us: now,
                xmin: 10,
                xmin_epoch: 1,
                catalog_xmin: 9,
                catalog_xmin_epoch: 2,
            }
            .into(),
            25,
        );
        round_trip_client(
            StrataFeedback {
                write_lsn: Lsn(u64::MAX),
                disk_consistent_lsn: Lsn(5),
                remote_consistent_lsn: Lsn(4),
                timeline_size_bytes: 1 << 40,
                send_time_us: now,
            }
            .into(),
            41,
        );
    }

    #[test]
    fn strata_feedback_layout_is_fixed() {
        let mut buf = BytesMut::new();
        ReplicationFeedback::from(StrataFeedback {
            write_lsn: Lsn(0x0102030405060708),
            disk_consistent_lsn: Lsn(0),
            remote_consistent_lsn: Lsn(0),
            timeline_size_bytes: 0,
            send_time_us: 1,
        })
        .encode(&mut buf);
        assert_eq!(&buf[..9], b"z\x01\x02\x03\x04\x05\x06\x07\x08");
        assert_eq!(&buf[33..], &1i64.to_be_bytes());
    }

    #[test]
    fn bad_tags_and_booleans_are_malformed() {
        assert!(ReplicationMessage::parse(b"").is_err());
        assert!(ReplicationMessage::parse(b"r").is_err());
        assert!(ReplicationFeedback::parse(b"w").is_err());
        let mut k = BytesMut::new();
        ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
            wal_end: Lsn(1),
            send_time_us: 0,
            reply_requested: false,
        })
        .encode(&mut k);
        if let Some(last) = k.last_mut() {
            *last = 7;
        }
        assert!(matches!(
            ReplicationMessage::parse(&k),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn wal_past_the_end_of_the_lsn_space_is_malformed() {
        let chunk = |start: u64, len: usize| {
            let mut b = BytesMut::new();
            let data = Bytes::from(vec![0u8; len]);
            ReplicationMessage::XLogData(XLogData { wal_start: Lsn(start), wal_end: Lsn(0), send_time_us: 0, data }).encode(&mut b);
            b.freeze()
        };
        for (start, len, ok) in [(u64::MAX - 16, 16, true), (u64::MAX - 16, 17, false), (u64::MAX, 1, false), (u64::MAX, 0, true)] {
            let msg = chunk(start, len);
            assert_eq!(ReplicationMessage::parse(&msg).is_ok(), ok, "{start:X}+{len}");
            match ReplicationMessage::parse_bytes(msg) {
                Ok(ReplicationMessage::XLogData(x)) => assert!(ok && x.end_lsn() == Lsn(start + len as u64)),
                Err(ProtocolError::Malformed { .. }) => assert!(!ok),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn pg_epoch_conversions() {
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        assert_eq!(system_time_to_pg_us(epoch), 0);
        assert_eq!(system_time_to_pg_us(UNIX_EPOCH), -946_684_800_000_000);
        assert_eq!(pg_us_to_system_time(-946_684_800_000_000), UNIX_EPOCH);
        let now = pg_now_us();
        // 2020-01-01 is 631_152_000 s after the PG epoch.
        assert!(now > 631_152_000_000_000, "{now}");
        assert_eq!(system_time_to_pg_us(pg_us_to_system_time(now)), now);
    }
}
