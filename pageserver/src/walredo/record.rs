//! What a redo request is made of: the key of the page to rebuild
//! ([`RedoKey`]) and the records to apply ([`WalRecord`]).
//!
//! Invariants: a [`WalRecord::Postgres`] holds one complete raw record
//! (`XLogRecord` header first, `xl_tot_len` bytes); the LSN paired with a
//! record in a request is the record's *end* LSN (PostgreSQL's `EndRecPtr`),
//! which redo stamps into `pd_lsn`. The Rust-applied kinds are synthesised
//! by WAL ingestion from records whose effect on a page Postgres redo cannot
//! produce for a single page (VM bits) or that live outside relations (SLRUs).
use bytes::Bytes;
use postgres_ffi::RelFileNode;
use std::fmt;

/// Which SLRU a page belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlruKind {
    Clog,
    MultiXactOffsets,
    MultiXactMembers,
}

/// The page a request rebuilds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RedoKey {
    /// Block `blkno` of fork `forknum` of relation `rel`.
    Rel { rel: RelFileNode, forknum: u8, blkno: u32 },
    /// Page `blkno` (0..32) of segment `segno` of an SLRU.
    Slru { kind: SlruKind, segno: u32, blkno: u32 },
}

impl From<(RelFileNode, u8, u32)> for RedoKey {
    fn from((rel, forknum, blkno): (RelFileNode, u8, u32)) -> RedoKey {
        RedoKey::Rel { rel, forknum, blkno }
    }
}

impl fmt::Display for RedoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedoKey::Rel { rel, forknum, blkno } => write!(f, "rel {rel} fork {forknum} blk {blkno}"),
            RedoKey::Slru { kind, segno, blkno } => write!(f, "{kind:?} segment {segno} page {blkno}"),
        }
    }
}

/// One member of a multixact: a transaction and its lock mode
/// (`MultiXactStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiXactMember {
    pub xid: u32,
    pub status: u32,
}

/// A record applied to a page during redo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalRecord {
    /// A raw PostgreSQL record, replayed by a redo process.
    Postgres {
        /// The record initialises the page (no base image needed).
        will_init: bool,
        rec: Bytes,
    },
    /// Clear visibility-map bits of one or two heap blocks (heap insert,
    /// update, delete and lock records clear them without referencing the
    /// VM page). Applied to the VM page(s) covering those heap blocks.
    ClearVisibilityMapFlags {
        new_heap_blkno: Option<u32>,
        old_heap_blkno: Option<u32>,
        flags: u8,
    },
    /// Clear the bits of heap blocks `first_heap_blkno` and later in a VM
    /// page, as `visibilitymap_prepare_truncate` does (without WAL) when a
    /// relation is truncated inside the range this page covers.
    TruncateVisibilityMap { first_heap_blkno: u32 },
    /// Mark transactions committed in a CLOG page.
    ClogSetCommitted { xids: Vec<u32>, timestamp: i64 },
    /// Mark transactions aborted in a CLOG page.
    ClogSetAborted { xids: Vec<u32> },
    /// Store the members offset of multixact `mid` (and, as PostgreSQL
    /// 15.15+ does, `moff + nmembers` as the offset of the next multixact)
    /// in an offsets page.
    MultixactOffsetCreate { mid: u32, moff: u32, nmembers: u32 },
    /// Store members starting at offset `moff` in a members page.
    MultixactMembersCreate { moff: u32, members: Vec<MultiXactMember> },
}

impl WalRecord {
    /// Whether the record initialises the page, so no base image is needed.
    pub fn will_init(&self) -> bool {
        matches!(self, WalRecord::Postgres { will_init: true, .. })
    }

    /// Whether Strata applies this record itself (rather than Postgres).
    pub fn is_rust_applied(&self) -> bool {
        !matches!(self, WalRecord::Postgres { .. })
    }
}

/// The visibility-map bits that a heap record clears without referencing
/// the VM page, as a Rust-applied record for the VM page(s) of its relation
/// (what WAL ingestion stores next to the heap record). `None` if the
/// record clears no VM bit.
pub fn vm_clear_for_heap_record(decoded: &postgres_ffi::DecodedRecord) -> Option<(RelFileNode, WalRecord)> {
    use postgres_ffi::pg_constants::*;
    use postgres_ffi::rmgr::{RM_HEAP2_ID, RM_HEAP_ID};
    let data = &decoded.main_data;
    let info = decoded.header.xl_info;
    let block = |id: u8| decoded.block(id).map(|b| (b.rel, b.blkno));
    let flag_at = |at: usize| data.get(at).copied().unwrap_or(0);
    let (rel, new, old, flags) = match (decoded.header.xl_rmid, info & XLOG_HEAP_OPMASK) {
        (RM_HEAP_ID, XLOG_HEAP_INSERT) if flag_at(2) & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 => {
            let (rel, blk) = block(0)?;
            (rel, Some(blk), None, VISIBILITYMAP_VALID_BITS)
        }
        (RM_HEAP_ID, XLOG_HEAP_DELETE) if flag_at(7) & XLH_DELETE_ALL_VISIBLE_CLEARED != 0 => {
            let (rel, blk) = block(0)?;
            (rel, Some(blk), None, VISIBILITYMAP_VALID_BITS)
        }
        (RM_HEAP_ID, XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE) => {
            let f = flag_at(7);
            let (rel, new_blk) = block(0)?;
            let old_blk = block(1).map_or(new_blk, |b| b.1);
            let new = (f & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED != 0).then_some(new_blk);
            let old = (f & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED != 0).then_some(old_blk);
            if new.is_none() && old.is_none() {
                return None;
            }
            (rel, new, old, VISIBILITYMAP_VALID_BITS)
        }
        (RM_HEAP_ID, XLOG_HEAP_LOCK) | (RM_HEAP2_ID, XLOG_HEAP2_LOCK_UPDATED)
            if flag_at(7) & XLH_LOCK_ALL_FROZEN_CLEARED != 0 =>
        {
            let (rel, blk) = block(0)?;
            (rel, Some(blk), None, VISIBILITYMAP_ALL_FROZEN)
        }
        (RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT) if flag_at(0) & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 => {
            let (rel, blk) = block(0)?;
            (rel, Some(blk), None, VISIBILITYMAP_VALID_BITS)
        }
        _ => return None,
    };
    let record = WalRecord::ClearVisibilityMapFlags { new_heap_blkno: new, old_heap_blkno: old, flags };
    Some((rel, record))
}
