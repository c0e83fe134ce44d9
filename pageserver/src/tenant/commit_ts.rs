//! LSN for a timestamp (point-in-time branches).
//!
//! Design: walingest writes, at the end LSN of every commit record (COMMIT
//! and COMMIT PREPARED), a small image under [`COMMIT_TS_KEY`] holding
//! [`CommitTs`]: that end LSN, the record's `xact_time` and the running
//! maximum of `xact_time` over the whole history so far. Reading the key at
//! LSN L therefore answers "the last commit at or before L, and the newest
//! commit time up to L" — a function of L that is monotone in its
//! `max_time`. Because it is an ordinary key:
//! * it is durable (in-memory layer → delta files → image layers) and
//!   survives pageserver restarts like every other value;
//! * it is branch-aware for free: below a branch point the layer walk
//!   continues in the ancestor.
//!
//! [`find_lsn_for_timestamp`] binary-searches L over the timeline's
//! branchable range `[start, last_record_lsn]` for the largest L with
//! `max_time(L) <= T` (start = branch point, or the import LSN of a root
//! timeline). Each probe is one image read; a probe that lands on commit C
//! moves the upper bound straight to C's LSN. Using the running maximum
//! makes the predicate monotone even though PostgreSQL's commit times are
//! not strictly ordered by LSN.
//!
//! Semantics of the answer ([`LsnForTimestamp`]):
//! * `present`: the timeline has commits both at/before and after T; `lsn`
//!   is the END LSN of the last commit record with time <= T (a record
//!   boundary: a valid branch point), raised to `start` if that commit lies
//!   below the timeline's start (then no commit happened on it between start
//!   and T).
//! * `future`: no commit in the timeline's history is later than T; `lsn` is
//!   `last_record_lsn` (everything ingested so far).
//! * `past`: T is before the first recorded commit, or before the
//!   timeline's start (the state at `start` already holds a commit later
//!   than T: on a branch, in the ancestor below the branch point), or no
//!   commit was recorded at all up to
//!   `last_record_lsn` (nothing to compare with; e.g. an imported cluster
//!   whose earlier WAL the pageserver never saw). `lsn` is `start`, the
//!   earliest LSN one can branch at; callers wanting an error treat `past`
//!   as one.
//!
//! Timestamps are PostgreSQL `TimestampTz`: microseconds since
//! 2000-01-01 00:00:00 UTC.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use utils::lsn::Lsn;

use crate::storage::key::COMMIT_TS_KEY;
use crate::tenant::timeline::{PageReconstructError, Result, Timeline};
use crate::storage::value::Reader;

/// Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// The value stored under [`COMMIT_TS_KEY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitTs {
    /// End LSN of the commit record.
    pub lsn: Lsn,
    /// Its `xact_time`.
    pub time: i64,
    /// Maximum `xact_time` of all commits up to and including this one.
    pub max_time: i64,
}

impl CommitTs {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(24);
        b.put_u64_le(self.lsn.0);
        b.put_i64_le(self.time);
        b.put_i64_le(self.max_time);
        b.freeze()
    }

    pub fn decode(buf: &[u8]) -> std::result::Result<CommitTs, String> {
        let mut r = Reader::new(buf);
        Ok(CommitTs { lsn: Lsn(r.u64()?), time: r.u64()? as i64, max_time: r.u64()? as i64 })
    }
}

/// The last commit at or before `lsn` (None: no commit recorded).
pub async fn commit_ts_at(tl: &Timeline, lsn: Lsn) -> Result<Option<CommitTs>> {
    match tl.get(COMMIT_TS_KEY, lsn).await {
        Ok(b) => CommitTs::decode(&b)
            .map(Some)
            .map_err(|reason| PageReconstructError::Corrupt { key: COMMIT_TS_KEY, reason }),
        Err(PageReconstructError::MissingKey { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LsnKind {
    Present,
    Past,
    Future,
}

/// The answer of `GET .../lsn_by_timestamp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LsnForTimestamp {
    pub lsn: Lsn,
    pub kind: LsnKind,
    /// `xact_time` (RFC 3339, UTC) of the commit the answer is based on, if any.
    pub commit_time: Option<String>,
}

/// See the module documentation.
pub async fn find_lsn_for_timestamp(tl: &Timeline, t: i64) -> Result<LsnForTimestamp> {
    let start = tl.branchable_range().start;
    let last = tl.last_record_lsn();
    let fmt = |c: &Option<CommitTs>| c.map(|c| format_pg_timestamp(c.time));
    let at_last = commit_ts_at(tl, last).await?;
    let Some(newest) = at_last else {
        return Ok(LsnForTimestamp { lsn: start, kind: LsnKind::Past, commit_time: None });
    };
    if newest.max_time <= t {
        return Ok(LsnForTimestamp { lsn: last, kind: LsnKind::Future, commit_time: fmt(&at_last) });
    }
    let at_start = commit_ts_at(tl, start).await?;
    if at_start.is_some_and(|c| c.max_time > t) {
        return Ok(LsnForTimestamp { lsn: start, kind: LsnKind::Past, commit_time: None });
    }
    // Invariant: P(lo) holds, P(hi) does not, P(L) = max_time(L) <= t.
    let (mut lo, mut lo_val, mut hi) = (start, at_start, newest.lsn);
    while hi.0 - lo.0 > 1 {
        let mid = Lsn(lo.0 + (hi.0 - lo.0) / 2);
        let v = commit_ts_at(tl, mid).await?;
        match v {
            Some(c) if c.max_time > t => hi = c.lsn.min(mid),
            _ => {
                // The value is the same from its commit LSN up to the next
                // commit, so P holds from `mid` on until then.
                lo = mid;
                lo_val = v;
            }
        }
    }
    match lo_val {
        // T is before the first commit ever recorded.
        None => Ok(LsnForTimestamp { lsn: start, kind: LsnKind::Past, commit_time: None }),
        Some(c) => Ok(LsnForTimestamp { lsn: c.lsn.max(start), kind: LsnKind::Present, commit_time: fmt(&lo_val) }),
    }
}

/// PostgreSQL `TimestampTz` → `SystemTime`.
pub fn pg_timestamp_to_system_time(ts: i64) -> SystemTime {
    let unix_us = ts as i128 + PG_EPOCH_UNIX_SECS as i128 * 1_000_000;
    if unix_us >= 0 {
        UNIX_EPOCH + Duration::from_micros(unix_us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros((-unix_us) as u64)
    }
}

/// `SystemTime` → PostgreSQL `TimestampTz`.
pub fn system_time_to_pg_timestamp(t: SystemTime) -> i64 {
    let unix_us: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i128,
        Err(e) => -(e.duration().as_micros() as i128),
    };
    (unix_us - PG_EPOCH_UNIX_SECS as i128 * 1_000_000) as i64
}

/// RFC 3339 text of a `TimestampTz`. humantime formats only 1970..=9999
/// (it panics before 1970 and errors after 9999); a commit time from WAL
/// outside that range is shown as the raw number instead.
pub fn format_pg_timestamp(ts: i64) -> String {
    const UNIX_EPOCH_PG_US: i64 = -PG_EPOCH_UNIX_SECS * 1_000_000;
    const YEAR_10000_PG_US: i64 = (253_402_300_800 - PG_EPOCH_UNIX_SECS) * 1_000_000;
    if (UNIX_EPOCH_PG_US..YEAR_10000_PG_US).contains(&ts) {
        humantime::format_rfc3339_micros(pg_timestamp_to_system_time(ts)).to_string()
    } else {
        format!("TimestampTz {ts} (outside 1970..9999)")
    }
}

/// Parse an RFC 3339 timestamp into a PostgreSQL `TimestampTz`. Accepts
/// `Z` or a numeric offset (`+02:00`, `-0530`, `+00`), `T` or a space
/// between date and time, and up to 9 fractional digits.
pub fn parse_rfc3339(s: &str) -> std::result::Result<i64, String> {
    let s = s.trim();
    let err = |e: &dyn std::fmt::Display| format!("invalid RFC 3339 timestamp {s:?}: {e}");
    // Split off a numeric offset after the time part (position > 10 skips the date's dashes).
    let (base, offset_secs) = match s.rfind(['+', '-']).filter(|&i| i > 10) {
        Some(i) => {
            let (sign, digits) = (if &s[i..i + 1] == "-" { -1 } else { 1 }, s[i + 1..].replace(':', ""));
            if !digits.chars().all(|c| c.is_ascii_digit()) || !matches!(digits.len(), 2 | 4) {
                return Err(err(&"bad UTC offset"));
            }
            let h: i64 = digits[..2].parse().map_err(|e| err(&e))?;
            let m: i64 = if digits.len() == 4 { digits[2..].parse().map_err(|e| err(&e))? } else { 0 };
            (&s[..i], sign * (h * 3600 + m * 60))
        }
        None => (s.strip_suffix('Z').or_else(|| s.strip_suffix('z')).unwrap_or(s), 0),
    };
    let t = humantime::parse_rfc3339_weak(base).map_err(|e| err(&e))?;
    Ok(system_time_to_pg_timestamp(t) - offset_secs * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339("2000-01-01T00:00:01.5Z").unwrap(), 1_500_000);
        assert_eq!(parse_rfc3339("2000-01-01 02:00:00+02:00").unwrap(), 0);
        assert_eq!(parse_rfc3339("1999-12-31T19:00:00-05").unwrap(), 0);
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00.000001").unwrap(), 1);
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("2000-01-01T00:00:00+2").is_err());
        assert_eq!(format_pg_timestamp(1_500_000), "2000-01-01T00:00:01.500000Z");
        // Times a corrupt or odd commit record may carry never panic.
        for ts in [i64::MIN, -946_684_800_000_001, i64::MAX] {
            assert!(format_pg_timestamp(ts).contains("outside 1970..9999"), "{ts}");
        }
        assert_eq!(parse_rfc3339(&format_pg_timestamp(-123_456_789)).unwrap(), -123_456_789);
        let c = CommitTs { lsn: Lsn(0x1_0000_0028), time: -5, max_time: 7 };
        assert_eq!(CommitTs::decode(&c.encode()).unwrap(), c);
        assert!(CommitTs::decode(&c.encode()[..20]).is_err());
    }
}
