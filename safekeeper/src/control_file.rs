//! The per-timeline control file: everything a safekeeper must remember
//! about a timeline across restarts, except the WAL itself.
//!
//! On disk: `b"SKCF"`, format version (u32 LE), body length (u32 LE), the body
//! (JSON of [`TimelinePersistentState`]), then CRC-32C (u32 LE) of all the
//! preceding bytes. It is replaced atomically: written to a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced. A torn or
//! damaged file is an error naming the file, never a silently default state.
//!
//! Format versions: 1 had no term history; 2 adds `term_history`; 3 adds
//! `backup_lsn` (WAL offload, see `wal_backup`). A version 1 file loads with
//! a history synthesized from its compute spec (or its timeline start); a
//! version 1 or 2 file loads with `backup_lsn` at its timeline start (WAL
//! removed before offload existed is not in remote storage, and nothing above
//! the start is). Either is rewritten as version 3 at the next persist.
//!
//! `flush_lsn` here is a lower bound: the true end of durable WAL is found at
//! start by scanning the WAL from it (see `wal_storage`), so the control
//! file needs no rewrite on every fsync.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

pub const CONTROL_FILE_NAME: &str = "safekeeper.control";
const MAGIC: &[u8; 4] = b"SKCF";
const FORMAT_VERSION: u32 = 3;
const OLDEST_FORMAT_VERSION: u32 = 1;
const HEADER_SIZE_BYTES: usize = 12;
const CRC_SIZE_BYTES: usize = 4;

/// The compute a timeline follows, as given by the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeSpec {
    /// libpq connection string of the compute (replication connections).
    pub conninfo: String,
    /// Grows with every new compute of the timeline.
    pub term: u64,
    /// The compute's first WAL position: WAL past it from older terms is gone.
    pub start_lsn: Lsn,
}

/// One entry of a term history: the compute of `term` wrote WAL from `start_lsn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermEntry {
    pub term: u64,
    pub start_lsn: Lsn,
}

/// The terms whose WAL a safekeeper's WAL is made of, oldest first; start
/// LSNs never decrease. WAL at LSN x belongs to the last entry starting at or
/// below x.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermHistory(pub Vec<TermEntry>);

impl TermHistory {
    /// Term of the WAL just below `flush_lsn` (0 when no term wrote any).
    pub fn last_log_term(&self, flush_lsn: Lsn) -> u64 {
        self.0.iter().rev().find(|e| e.start_lsn <= flush_lsn).map_or(0, |e| e.term)
    }

    /// Add a term starting at `start_lsn`, dropping entries it supersedes
    /// (those starting above it: their WAL was cut).
    pub fn push(&mut self, term: u64, start_lsn: Lsn) {
        self.0.retain(|e| e.start_lsn <= start_lsn && e.term < term);
        self.0.push(TermEntry { term, start_lsn });
    }

    /// Up to where WAL of ours (ending at `our_flush`) is also WAL of
    /// `theirs`: the end of the common prefix of the two histories.
    pub fn common_prefix_end(&self, theirs: &TermHistory, our_flush: Lsn) -> Lsn {
        let mut end = Lsn(0);
        for (i, (a, b)) in self.0.iter().zip(&theirs.0).enumerate() {
            if a != b {
                break;
            }
            let next = |h: &TermHistory| h.0.get(i + 1).map_or(Lsn(u64::MAX), |e| e.start_lsn);
            end = next(self).min(next(theirs));
        }
        end.min(our_flush)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelinePersistentState {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    /// `pg_control`'s system identifier; 0 until the first compute is seen.
    pub system_id: u64,
    pub pg_version: u32,
    pub wal_seg_size_bytes: u64,
    /// First LSN of WAL this timeline holds.
    pub timeline_start_lsn: Lsn,
    /// Current term; a compute of a lower term is never followed again.
    pub term: u64,
    pub compute: Option<ComputeSpec>,
    /// A record boundary up to which WAL is known durable (lower bound).
    pub flush_lsn: Lsn,
    /// WAL durable on a quorum of the timeline's safekeepers.
    pub commit_lsn: Lsn,
    /// WAL the pageservers hold durably in remote storage.
    pub remote_consistent_lsn: Lsn,
    /// Safekeeper ids of this timeline (this one included).
    pub peers: Vec<u64>,
    /// How many of `peers` must have WAL for it to be committed.
    pub quorum: usize,
    /// Terms of the WAL held (format version 2).
    #[serde(default)]
    pub term_history: TermHistory,
    /// WAL offloaded to remote storage (format version 3): every whole
    /// segment from the offload's first one up to here is in remote
    /// storage. Only grows; a segment boundary once anything was offloaded.
    #[serde(default)]
    pub backup_lsn: Lsn,
}

impl TimelinePersistentState {
    /// A version 1 state has no history: its WAL is of its current term.
    fn fill_history(&mut self) {
        if self.term_history.0.is_empty() && self.term > 0 {
            let start = self.compute.as_ref().map_or(self.timeline_start_lsn, |c| c.start_lsn.min(self.timeline_start_lsn));
            self.term_history.push(self.term, start);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlFileError {
    /// (The I/O error is part of the message, not a `source`, so that a
    /// printed chain names it once.)
    #[error("control file {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("control file {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ControlFileError + '_ {
    move |error| ControlFileError::Io { path: path.to_path_buf(), error }
}

/// Serialize `state` in the on-disk format.
pub fn encode(state: &TimelinePersistentState) -> Vec<u8> {
    // Serializing plain data (no maps with non-string keys) cannot fail.
    let body = serde_json::to_vec(state).expect("control file state serializes");
    let mut buf = Vec::with_capacity(HEADER_SIZE_BYTES + body.len() + CRC_SIZE_BYTES);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Parse the on-disk format; `path` only names the file in errors.
pub fn decode(path: &Path, buf: &[u8]) -> Result<TimelinePersistentState, ControlFileError> {
    let corrupt = |reason: String| ControlFileError::Corrupt { path: path.to_path_buf(), reason };
    if buf.len() < HEADER_SIZE_BYTES + CRC_SIZE_BYTES {
        return Err(corrupt(format!("{} bytes is too short", buf.len())));
    }
    if &buf[..4] != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    let version = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(corrupt(format!("format version {version}, expected {OLDEST_FORMAT_VERSION}..={FORMAT_VERSION}")));
    }
    let body_len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if buf.len() != HEADER_SIZE_BYTES + body_len + CRC_SIZE_BYTES {
        return Err(corrupt(format!("length {} does not match body length {body_len}", buf.len())));
    }
    let (content, crc_bytes) = buf.split_at(HEADER_SIZE_BYTES + body_len);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let actual = crc32c::crc32c(content);
    if stored != actual {
        return Err(corrupt(format!("CRC mismatch: stored {stored:08x}, computed {actual:08x}")));
    }
    let mut state: TimelinePersistentState =
        serde_json::from_slice(&content[HEADER_SIZE_BYTES..]).map_err(|e| corrupt(format!("body: {e}")))?;
    state.fill_history();
    if version < 3 {
        state.backup_lsn = state.timeline_start_lsn;
    }
    Ok(state)
}

/// Read the control file of the timeline directory `dir`.
pub fn load(dir: &Path) -> Result<TimelinePersistentState, ControlFileError> {
    let path = dir.join(CONTROL_FILE_NAME);
    let buf = fs::read(&path).map_err(io_err(&path))?;
    decode(&path, &buf)
}

/// Durably and atomically replace the control file of `dir` with `state`.
/// Blocking: call from a blocking context.
pub fn persist(dir: &Path, state: &TimelinePersistentState) -> Result<(), ControlFileError> {
    let path = dir.join(CONTROL_FILE_NAME);
    utils::fs::write_atomic(&path, &encode(state)).map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> TimelinePersistentState {
        TimelinePersistentState {
            tenant_id: TenantId::generate(),
            timeline_id: TimelineId::generate(),
            system_id: 7,
            pg_version: 15,
            wal_seg_size_bytes: 16 << 20,
            timeline_start_lsn: Lsn(0x1000000),
            term: 3,
            compute: Some(ComputeSpec { conninfo: "host=127.0.0.1".into(), term: 3, start_lsn: Lsn(0x1000028) }),
            flush_lsn: Lsn(0x1234560),
            commit_lsn: Lsn(0x1234000),
            remote_consistent_lsn: Lsn(0),
            peers: vec![1, 2, 3],
            quorum: 2,
            term_history: TermHistory(vec![TermEntry { term: 3, start_lsn: Lsn(0x1000000) }]),
            backup_lsn: Lsn(0x1000000),
        }
    }

    /// `state` in the format of `version`, without the fields it lacked.
    fn encode_old(state: &TimelinePersistentState, version: u32) -> Vec<u8> {
        let mut v = serde_json::to_value(state).unwrap();
        let fields = v.as_object_mut().unwrap();
        fields.remove("backup_lsn");
        if version < 2 {
            fields.remove("term_history");
        }
        let body = serde_json::to_vec(&v).unwrap();
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&version.to_le_bytes());
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&body);
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf
    }

    #[test]
    fn version_2_files_load_with_backup_lsn_at_the_timeline_start() {
        let mut state = sample();
        state.timeline_start_lsn = Lsn(0x3000000);
        state.backup_lsn = Lsn(0x7000000);
        let loaded = decode(Path::new("old"), &encode_old(&state, 2)).unwrap();
        assert_eq!(loaded.backup_lsn, Lsn(0x3000000));
        assert_eq!(loaded.term_history, state.term_history);
        // Rewritten as version 3, the value survives.
        let mut newer = loaded.clone();
        newer.backup_lsn = Lsn(0x5000000);
        let buf = encode(&newer);
        assert_eq!(u32::from_le_bytes(buf[4..8].try_into().unwrap()), 3);
        assert_eq!(decode(Path::new("new"), &buf).unwrap().backup_lsn, Lsn(0x5000000));
    }

    #[test]
    fn version_1_files_load_with_a_history() {
        let mut state = sample();
        state.term_history = TermHistory::default();
        let loaded = decode(Path::new("old"), &encode_old(&state, 1)).unwrap();
        assert_eq!(loaded.term_history, sample().term_history);
        assert_eq!(loaded.backup_lsn, state.timeline_start_lsn);
    }

    #[test]
    fn term_history_prefix_and_last_log_term() {
        let e = |term, lsn| TermEntry { term, start_lsn: Lsn(lsn) };
        let mut ours = TermHistory(vec![e(1, 100), e(2, 500)]);
        assert_eq!(ours.last_log_term(Lsn(400)), 1);
        assert_eq!(ours.last_log_term(Lsn(500)), 2);
        let theirs = TermHistory(vec![e(1, 100), e(3, 300)]);
        assert_eq!(ours.common_prefix_end(&theirs, Lsn(900)), Lsn(300));
        assert_eq!(ours.common_prefix_end(&ours.clone(), Lsn(900)), Lsn(900));
        ours.push(4, Lsn(300));
        assert_eq!(ours.0, vec![e(1, 100), e(4, 300)]);
    }

    #[test]
    fn persist_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = sample();
        persist(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), state);
        let mut newer = state.clone();
        newer.term = 4;
        persist(dir.path(), &newer).unwrap();
        assert_eq!(load(dir.path()).unwrap(), newer);
        assert!(!dir.path().join(format!("{CONTROL_FILE_NAME}.tmp")).exists());
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_detected() {
        let buf = encode(&sample());
        let path = Path::new("x/safekeeper.control");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(matches!(decode(path, &bad), Err(ControlFileError::Corrupt { .. })), "byte {i}");
        }
        for len in 0..buf.len() {
            let err = decode(path, &buf[..len]).unwrap_err();
            assert!(err.to_string().contains("x/safekeeper.control"), "{err}");
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(ControlFileError::Io { .. })));
    }
}

/// Fuzz entry (see `crate::fuzz_targets`): `data[0]` odd: decode
/// `data[1..]` as a whole file; even: frame `data[1..]` as the JSON body of
/// a file with a valid header and CRC (so that the body parser is reached),
/// then use the state as the safekeeper does.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let file = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        let mut buf = Vec::with_capacity(HEADER_SIZE_BYTES + rest.len() + CRC_SIZE_BYTES);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&u32::from(mode >> 1).min(FORMAT_VERSION).to_le_bytes());
        buf.extend_from_slice(&(rest.len() as u32).to_le_bytes());
        buf.extend_from_slice(rest);
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf
    };
    if let Ok(state) = decode(Path::new("fuzz/safekeeper.control"), &file) {
        let flush = state.commit_lsn;
        let _ = state.term_history.last_log_term(flush);
        let _ = state.term_history.common_prefix_end(&state.term_history, flush);
        let _ = encode(&state);
    }
}
