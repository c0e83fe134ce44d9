//! `pg_control` (`ControlFileData`) and the checkpoint it embeds
//! (`CheckPoint`), in PostgreSQL 15's x86-64 layout.
//!
//! A [`ControlFile`] keeps the file's raw bytes and reads and patches fields
//! in place, so fields Strata does not model survive a round trip unchanged.
//! [`ControlFile::parse`] checks the size, version and CRC; [`ControlFile::encode`]
//! recomputes the CRC. Offsets below were checked against `pg_controldata`
//! (see the tests).

use utils::lsn::Lsn;

/// `PG_CONTROL_FILE_SIZE`: pg_control is always written as 8 KiB.
pub const PG_CONTROL_FILE_SIZE: usize = 8192;
/// `PG_CONTROL_VERSION` of PostgreSQL 15.
pub const PG_CONTROL_VERSION: u32 = 1300;
/// `offsetof(ControlFileData, crc)`.
const CRC_OFFSET: usize = 288;
/// `sizeof(CheckPoint)`.
pub const SIZE_OF_CHECKPOINT: usize = 88;

const OFF_SYSTEM_ID: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_CATALOG_VERSION: usize = 12;
const OFF_STATE: usize = 16;
const OFF_TIME: usize = 24;
const OFF_CHECKPOINT_LSN: usize = 32;
const OFF_CHECKPOINT_COPY: usize = 40;
const OFF_UNLOGGED_LSN: usize = 128;
const OFF_MIN_RECOVERY_POINT: usize = 136;
const OFF_MIN_RECOVERY_TLI: usize = 144;
const OFF_BACKUP_START: usize = 152;
const OFF_BACKUP_END: usize = 160;
const OFF_BACKUP_END_REQUIRED: usize = 168;
const OFF_XLOG_SEG_SIZE: usize = 228;
const OFF_DATA_CHECKSUM_VERSION: usize = 252;

/// `DBState` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DbState {
    Startup = 0,
    Shutdowned = 1,
    ShutdownedInRecovery = 2,
    Shutdowning = 3,
    InCrashRecovery = 4,
    InArchiveRecovery = 5,
    InProduction = 6,
}

impl DbState {
    fn from_u32(v: u32) -> Option<DbState> {
        use DbState::*;
        [Startup, Shutdowned, ShutdownedInRecovery, Shutdowning, InCrashRecovery, InArchiveRecovery, InProduction]
            .into_iter()
            .find(|s| *s as u32 == v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlFileError {
    #[error("pg_control is {0} bytes, expected at least {CRC_OFFSET} + 4")]
    TooShort(usize),
    #[error("pg_control version {0}, expected {PG_CONTROL_VERSION} (PostgreSQL 15)")]
    WrongVersion(u32),
    #[error("pg_control CRC mismatch: stored {stored:08x}, computed {computed:08x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("pg_control has unknown state {0}")]
    BadState(u32),
}

/// The checkpoint record's payload (`CheckPoint`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckPoint {
    pub redo: Lsn,
    pub this_timeline_id: u32,
    pub prev_timeline_id: u32,
    pub full_page_writes: bool,
    /// `FullTransactionId`: epoch in the high 32 bits.
    pub next_xid: u64,
    pub next_oid: u32,
    pub next_multi: u32,
    pub next_multi_offset: u32,
    pub oldest_xid: u32,
    pub oldest_xid_db: u32,
    pub oldest_multi: u32,
    pub oldest_multi_db: u32,
    /// Seconds since the Unix epoch.
    pub time: i64,
    pub oldest_commit_ts_xid: u32,
    pub newest_commit_ts_xid: u32,
    pub oldest_active_xid: u32,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl CheckPoint {
    /// Decode the 88-byte struct (as in a checkpoint record's main data).
    pub fn decode(b: &[u8]) -> Option<CheckPoint> {
        if b.len() < SIZE_OF_CHECKPOINT {
            return None;
        }
        Some(CheckPoint {
            redo: Lsn(u64_at(b, 0)),
            this_timeline_id: u32_at(b, 8),
            prev_timeline_id: u32_at(b, 12),
            full_page_writes: b[16] != 0,
            next_xid: u64_at(b, 24),
            next_oid: u32_at(b, 32),
            next_multi: u32_at(b, 36),
            next_multi_offset: u32_at(b, 40),
            oldest_xid: u32_at(b, 44),
            oldest_xid_db: u32_at(b, 48),
            oldest_multi: u32_at(b, 52),
            oldest_multi_db: u32_at(b, 56),
            time: u64_at(b, 64) as i64,
            oldest_commit_ts_xid: u32_at(b, 72),
            newest_commit_ts_xid: u32_at(b, 76),
            oldest_active_xid: u32_at(b, 80),
        })
    }

    pub fn encode(&self) -> [u8; SIZE_OF_CHECKPOINT] {
        let mut b = [0u8; SIZE_OF_CHECKPOINT];
        let put32 = |b: &mut [u8; SIZE_OF_CHECKPOINT], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        b[0..8].copy_from_slice(&self.redo.0.to_le_bytes());
        put32(&mut b, 8, self.this_timeline_id);
        put32(&mut b, 12, self.prev_timeline_id);
        b[16] = self.full_page_writes as u8;
        b[24..32].copy_from_slice(&self.next_xid.to_le_bytes());
        put32(&mut b, 32, self.next_oid);
        put32(&mut b, 36, self.next_multi);
        put32(&mut b, 40, self.next_multi_offset);
        put32(&mut b, 44, self.oldest_xid);
        put32(&mut b, 48, self.oldest_xid_db);
        put32(&mut b, 52, self.oldest_multi);
        put32(&mut b, 56, self.oldest_multi_db);
        b[64..72].copy_from_slice(&self.time.to_le_bytes());
        put32(&mut b, 72, self.oldest_commit_ts_xid);
        put32(&mut b, 76, self.newest_commit_ts_xid);
        put32(&mut b, 80, self.oldest_active_xid);
        b
    }
}

/// `pg_control`, as raw bytes with typed access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFile {
    bytes: Vec<u8>,
}

impl ControlFile {
    /// Parse and validate the contents of a `pg_control` file.
    pub fn parse(buf: &[u8]) -> Result<ControlFile, ControlFileError> {
        if buf.len() < CRC_OFFSET + 4 {
            return Err(ControlFileError::TooShort(buf.len()));
        }
        let version = u32_at(buf, OFF_VERSION);
        if version != PG_CONTROL_VERSION {
            return Err(ControlFileError::WrongVersion(version));
        }
        let stored = u32_at(buf, CRC_OFFSET);
        let computed = crc32c::crc32c(&buf[..CRC_OFFSET]);
        if stored != computed {
            return Err(ControlFileError::BadCrc { stored, computed });
        }
        let state = u32_at(buf, OFF_STATE);
        DbState::from_u32(state).ok_or(ControlFileError::BadState(state))?;
        let mut bytes = buf.to_vec();
        bytes.resize(PG_CONTROL_FILE_SIZE, 0);
        Ok(ControlFile { bytes })
    }

    /// The file contents (8 KiB) with a fresh CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        let crc = crc32c::crc32c(&out[..CRC_OFFSET]);
        out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn put_u32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    pub fn system_identifier(&self) -> u64 {
        u64_at(&self.bytes, OFF_SYSTEM_ID)
    }
    pub fn catalog_version(&self) -> u32 {
        u32_at(&self.bytes, OFF_CATALOG_VERSION)
    }
    pub fn state(&self) -> DbState {
        DbState::from_u32(u32_at(&self.bytes, OFF_STATE)).unwrap_or(DbState::Startup)
    }
    pub fn set_state(&mut self, state: DbState) {
        self.put_u32(OFF_STATE, state as u32);
    }
    pub fn set_time(&mut self, unix_secs: i64) {
        self.put_u64(OFF_TIME, unix_secs as u64);
    }
    /// Location of the latest checkpoint record.
    pub fn checkpoint_lsn(&self) -> Lsn {
        Lsn(u64_at(&self.bytes, OFF_CHECKPOINT_LSN))
    }
    pub fn checkpoint(&self) -> CheckPoint {
        CheckPoint::decode(&self.bytes[OFF_CHECKPOINT_COPY..]).unwrap_or_default()
    }
    /// Point pg_control at a checkpoint record at `lsn` holding `checkpoint`.
    pub fn set_checkpoint(&mut self, lsn: Lsn, checkpoint: &CheckPoint) {
        self.put_u64(OFF_CHECKPOINT_LSN, lsn.0);
        self.bytes[OFF_CHECKPOINT_COPY..OFF_CHECKPOINT_COPY + SIZE_OF_CHECKPOINT].copy_from_slice(&checkpoint.encode());
    }
    pub fn unlogged_lsn(&self) -> Lsn {
        Lsn(u64_at(&self.bytes, OFF_UNLOGGED_LSN))
    }
    pub fn set_unlogged_lsn(&mut self, lsn: Lsn) {
        self.put_u64(OFF_UNLOGGED_LSN, lsn.0);
    }
    pub fn min_recovery_point(&self) -> Lsn {
        Lsn(u64_at(&self.bytes, OFF_MIN_RECOVERY_POINT))
    }
    /// Clear minimum recovery point and backup fields (a clean shutdown state).
    pub fn clear_recovery_fields(&mut self) {
        self.put_u64(OFF_MIN_RECOVERY_POINT, 0);
        self.put_u32(OFF_MIN_RECOVERY_TLI, 0);
        self.put_u64(OFF_BACKUP_START, 0);
        self.put_u64(OFF_BACKUP_END, 0);
        self.bytes[OFF_BACKUP_END_REQUIRED] = 0;
    }
    pub fn wal_seg_size(&self) -> u32 {
        u32_at(&self.bytes, OFF_XLOG_SEG_SIZE)
    }
    pub fn data_checksum_version(&self) -> u32 {
        u32_at(&self.bytes, OFF_DATA_CHECKSUM_VERSION)
    }
}
