//! Records that Strata applies to pages itself, without a redo process:
//! visibility-map bit clearing, CLOG transaction status, multixact offsets
//! and members. The layouts follow PostgreSQL 15's `visibilitymap.c`,
//! `clog.c` and `multixact.c`.
//!
//! Invariants: every function checks that the record belongs to the page
//! named by the key and reports a mismatch as an error (never a panic); a
//! page is exactly `BLCKSZ` bytes. Nothing here blocks or awaits, so there
//! is no cancellation concern.
use bytes::{Bytes, BytesMut};
use postgres_ffi::pg_constants::*;
use utils::lsn::Lsn;

use super::record::{MultiXactMember, RedoKey, SlruKind, WalRecord};

/// Size of the page header that precedes the VM bitmap (`MAXALIGN(SizeOfPageHeaderData)`).
const VM_HEADER_BYTES: usize = 24;
const VM_MAPSIZE: u32 = (BLCKSZ - VM_HEADER_BYTES) as u32;
const VM_BITS_PER_HEAPBLOCK: u32 = 2;
const VM_HEAPBLOCKS_PER_BYTE: u32 = 8 / VM_BITS_PER_HEAPBLOCK;
/// Heap blocks covered by one VM page (`HEAPBLOCKS_PER_PAGE`).
pub const VM_HEAPBLOCKS_PER_PAGE: u32 = VM_MAPSIZE * VM_HEAPBLOCKS_PER_BYTE;

/// `MULTIXACT_OFFSETS_PER_PAGE`.
pub const MULTIXACT_OFFSETS_PER_PAGE: u32 = (BLCKSZ / 4) as u32;
const MXACT_MEMBER_BITS_PER_XACT: u32 = 8;
const MULTIXACT_MEMBERS_PER_MEMBERGROUP: u32 = 4;
const MULTIXACT_FLAGBYTES_PER_GROUP: u32 = 4;
const MULTIXACT_MEMBERGROUP_SIZE: u32 = 4 * MULTIXACT_MEMBERS_PER_MEMBERGROUP + MULTIXACT_FLAGBYTES_PER_GROUP;
const MULTIXACT_MEMBERGROUPS_PER_PAGE: u32 = BLCKSZ as u32 / MULTIXACT_MEMBERGROUP_SIZE;
/// `MULTIXACT_MEMBERS_PER_PAGE`.
pub const MULTIXACT_MEMBERS_PER_PAGE: u32 = MULTIXACT_MEMBERGROUPS_PER_PAGE * MULTIXACT_MEMBERS_PER_MEMBERGROUP;

/// Apply a run of Rust-applied records to `base`, returning the new page.
pub(crate) fn apply_run(key: &RedoKey, base: Option<Bytes>, records: &[(Lsn, WalRecord)]) -> Result<Bytes, String> {
    // A visibility-map page nobody wrote yet reads as new (no bits set).
    let is_vm = matches!(key, RedoKey::Rel { forknum: VISIBILITYMAP_FORKNUM, .. });
    let base = match base {
        Some(base) => base,
        None if is_vm => Bytes::from(vec![0u8; BLCKSZ]),
        None => return Err("Rust-applied records need a base image".into()),
    };
    if base.len() != BLCKSZ {
        return Err(format!("base image has {} bytes, expected {BLCKSZ}", base.len()));
    }
    let mut page = BytesMut::from(&base[..]);
    for (lsn, record) in records {
        apply_record(key, &mut page, record).map_err(|e| format!("record at {lsn}: {e}"))?;
    }
    Ok(page.freeze())
}

/// Apply one Rust-applied record to `page` (which is `BLCKSZ` bytes).
pub fn apply_record(key: &RedoKey, page: &mut [u8], record: &WalRecord) -> Result<(), String> {
    if page.len() != BLCKSZ {
        return Err(format!("page has {} bytes, expected {BLCKSZ}", page.len()));
    }
    match record {
        WalRecord::Postgres { .. } => Err("a Postgres record cannot be applied in Rust".into()),
        WalRecord::ClearVisibilityMapFlags { new_heap_blkno, old_heap_blkno, flags } => {
            clear_vm_flags(key, page, [*new_heap_blkno, *old_heap_blkno], *flags)
        }
        WalRecord::TruncateVisibilityMap { first_heap_blkno } => truncate_vm(key, page, *first_heap_blkno),
        WalRecord::ClogSetCommitted { xids, .. } => set_clog_status(key, page, xids, TRANSACTION_STATUS_COMMITTED),
        WalRecord::ClogSetAborted { xids } => set_clog_status(key, page, xids, TRANSACTION_STATUS_ABORTED),
        WalRecord::MultixactOffsetCreate { mid, moff, nmembers } => {
            set_multixact_offsets(key, page, *mid, *moff, *nmembers)
        }
        WalRecord::MultixactMembersCreate { moff, members } => set_multixact_members(key, page, *moff, members),
    }
}

fn clear_vm_flags(key: &RedoKey, page: &mut [u8], heap_blknos: [Option<u32>; 2], flags: u8) -> Result<(), String> {
    let RedoKey::Rel { forknum: VISIBILITYMAP_FORKNUM, blkno: map_block, .. } = *key else {
        return Err(format!("visibility-map record applied to {key}"));
    };
    let mut matched = false;
    for heap_blkno in heap_blknos.into_iter().flatten() {
        if heap_blkno / VM_HEAPBLOCKS_PER_PAGE != map_block {
            continue; // the other heap block's bits live on another VM page
        }
        let in_page = heap_blkno % VM_HEAPBLOCKS_PER_PAGE;
        let byte = VM_HEADER_BYTES + (in_page / VM_HEAPBLOCKS_PER_BYTE) as usize;
        let shift = (in_page % VM_HEAPBLOCKS_PER_BYTE) * VM_BITS_PER_HEAPBLOCK;
        page[byte] &= !((flags & VISIBILITYMAP_VALID_BITS) << shift);
        matched = true;
    }
    if !matched {
        return Err(format!("no heap block of the record is covered by VM page {map_block}"));
    }
    Ok(())
}

/// `visibilitymap_prepare_truncate`: keep the bits of heap blocks below
/// `first_heap_blkno` on this page, clear the rest. A new (all-zero) page has
/// no bits and stays as it is.
fn truncate_vm(key: &RedoKey, page: &mut [u8], first_heap_blkno: u32) -> Result<(), String> {
    let RedoKey::Rel { forknum: VISIBILITYMAP_FORKNUM, blkno: map_block, .. } = *key else {
        return Err(format!("visibility-map truncation applied to {key}"));
    };
    if first_heap_blkno / VM_HEAPBLOCKS_PER_PAGE != map_block {
        return Err(format!("truncation at heap block {first_heap_blkno} is not inside VM page {map_block}"));
    }
    let in_page = first_heap_blkno % VM_HEAPBLOCKS_PER_PAGE;
    let byte = VM_HEADER_BYTES + (in_page / VM_HEAPBLOCKS_PER_BYTE) as usize;
    let shift = (in_page % VM_HEAPBLOCKS_PER_BYTE) * VM_BITS_PER_HEAPBLOCK;
    page[byte] &= ((1u16 << shift) - 1) as u8;
    page[byte + 1..].fill(0);
    Ok(())
}

/// Check that SLRU page number `pageno` is the page named by `key`.
fn check_slru_page(key: &RedoKey, kind: SlruKind, pageno: u32, what: &str) -> Result<(), String> {
    let expected = RedoKey::Slru {
        kind,
        segno: pageno / SLRU_PAGES_PER_SEGMENT,
        blkno: pageno % SLRU_PAGES_PER_SEGMENT,
    };
    if *key != expected {
        return Err(format!("{what} belongs to {expected}, not to {key}"));
    }
    Ok(())
}

fn set_clog_status(key: &RedoKey, page: &mut [u8], xids: &[u32], status: u8) -> Result<(), String> {
    for &xid in xids {
        check_slru_page(key, SlruKind::Clog, xid / CLOG_XACTS_PER_PAGE, &format!("xid {xid}"))?;
        let byte = ((xid % CLOG_XACTS_PER_PAGE) / CLOG_XACTS_PER_BYTE) as usize;
        let shift = (xid % CLOG_XACTS_PER_BYTE) as u8 * CLOG_BITS_PER_XACT;
        page[byte] = (page[byte] & !(0b11 << shift)) | (status << shift);
    }
    Ok(())
}

/// The status bits of `xid` in a CLOG page.
pub fn clog_status(page: &[u8], xid: u32) -> u8 {
    let byte = ((xid % CLOG_XACTS_PER_PAGE) / CLOG_XACTS_PER_BYTE) as usize;
    let shift = (xid % CLOG_XACTS_PER_BYTE) as u8 * CLOG_BITS_PER_XACT;
    (page[byte] >> shift) & 0b11
}

/// Write the offset of `mid` and the offset following its members as the
/// next multixact's offset (`RecordNewMultiXact`), each if it is on this page.
fn set_multixact_offsets(key: &RedoKey, page: &mut [u8], mid: u32, moff: u32, nmembers: u32) -> Result<(), String> {
    let next = match mid.wrapping_add(1) {
        0 => 1, // FirstMultiXactId after wraparound
        n => n,
    };
    let mut matched = false;
    for (id, offset) in [(mid, moff), (next, moff.wrapping_add(nmembers))] {
        let pageno = id / MULTIXACT_OFFSETS_PER_PAGE;
        if check_slru_page(key, SlruKind::MultiXactOffsets, pageno, "").is_ok() {
            let at = (id % MULTIXACT_OFFSETS_PER_PAGE) as usize * 4;
            page[at..at + 4].copy_from_slice(&offset.to_le_bytes());
            matched = true;
        }
    }
    if !matched {
        return Err(format!("multixact {mid} belongs to no entry of {key}"));
    }
    Ok(())
}

fn set_multixact_members(key: &RedoKey, page: &mut [u8], moff: u32, members: &[MultiXactMember]) -> Result<(), String> {
    let RedoKey::Slru { kind: SlruKind::MultiXactMembers, .. } = key else {
        return Err(format!("multixact members record applied to {key}"));
    };
    let mut matched = false;
    for (i, member) in members.iter().enumerate() {
        let offset = moff.wrapping_add(i as u32);
        let pageno = offset / MULTIXACT_MEMBERS_PER_PAGE;
        if check_slru_page(key, SlruKind::MultiXactMembers, pageno, "").is_err() {
            continue; // members of one multixact may span two pages
        }
        let group = (offset / MULTIXACT_MEMBERS_PER_MEMBERGROUP) % MULTIXACT_MEMBERGROUPS_PER_PAGE;
        let flags_at = (group * MULTIXACT_MEMBERGROUP_SIZE) as usize;
        let in_group = offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP;
        let member_at = flags_at + (MULTIXACT_FLAGBYTES_PER_GROUP + in_group * 4) as usize;
        page[member_at..member_at + 4].copy_from_slice(&member.xid.to_le_bytes());
        let shift = in_group * MXACT_MEMBER_BITS_PER_XACT;
        let mut flags = u32::from_le_bytes(page[flags_at..flags_at + 4].try_into().expect("4 bytes"));
        flags &= !(((1u32 << MXACT_MEMBER_BITS_PER_XACT) - 1) << shift);
        flags |= member.status << shift;
        page[flags_at..flags_at + 4].copy_from_slice(&flags.to_le_bytes());
        matched = true;
    }
    if !matched {
        return Err(format!("no member at offset {moff}.. belongs to {key}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clog_key(pageno: u32) -> RedoKey {
        RedoKey::Slru { kind: SlruKind::Clog, segno: pageno / 32, blkno: pageno % 32 }
    }

    #[test]
    fn clog_bits_are_set_and_checked() {
        let mut page = vec![0u8; BLCKSZ];
        let key = clog_key(1);
        let xids = vec![CLOG_XACTS_PER_PAGE, CLOG_XACTS_PER_PAGE + 5];
        apply_record(&key, &mut page, &WalRecord::ClogSetCommitted { xids: xids.clone(), timestamp: 0 }).unwrap();
        apply_record(&key, &mut page, &WalRecord::ClogSetAborted { xids: vec![CLOG_XACTS_PER_PAGE + 6] }).unwrap();
        assert_eq!(clog_status(&page, xids[0]), TRANSACTION_STATUS_COMMITTED);
        assert_eq!(clog_status(&page, xids[1]), TRANSACTION_STATUS_COMMITTED);
        assert_eq!(clog_status(&page, CLOG_XACTS_PER_PAGE + 6), TRANSACTION_STATUS_ABORTED);
        assert_eq!(clog_status(&page, CLOG_XACTS_PER_PAGE + 7), TRANSACTION_STATUS_IN_PROGRESS);
        let wrong = WalRecord::ClogSetAborted { xids: vec![3] };
        assert!(apply_record(&key, &mut page, &wrong).is_err());
    }

    #[test]
    fn vm_record_for_another_page_is_an_error() {
        let mut page = vec![0xFFu8; BLCKSZ];
        let rel = postgres_ffi::RelFileNode { spc_node: 1663, db_node: 5, rel_node: 16384 };
        let key = RedoKey::Rel { rel, forknum: VISIBILITYMAP_FORKNUM, blkno: 0 };
        let rec = |blk| WalRecord::ClearVisibilityMapFlags { new_heap_blkno: Some(blk), old_heap_blkno: None, flags: 3 };
        assert!(apply_record(&key, &mut page, &rec(VM_HEAPBLOCKS_PER_PAGE)).is_err());
        apply_record(&key, &mut page, &rec(5)).unwrap();
        assert_eq!(page[VM_HEADER_BYTES + 1], 0b1111_0011);
        let main = RedoKey::Rel { rel, forknum: MAIN_FORKNUM, blkno: 0 };
        assert!(apply_record(&main, &mut page, &rec(5)).is_err());
    }

    #[test]
    fn vm_truncation_keeps_only_the_bits_below_the_new_end() {
        let rel = postgres_ffi::RelFileNode { spc_node: 1663, db_node: 5, rel_node: 16384 };
        let key = RedoKey::Rel { rel, forknum: VISIBILITYMAP_FORKNUM, blkno: 0 };
        let mut page = vec![0u8; BLCKSZ];
        page[VM_HEADER_BYTES..].fill(0xFF);
        // Heap blocks 0..6 stay: byte 0 whole, byte 1 keeps blocks 4 and 5 (bits 0..4).
        apply_record(&key, &mut page, &WalRecord::TruncateVisibilityMap { first_heap_blkno: 6 }).unwrap();
        assert_eq!(page[VM_HEADER_BYTES], 0xFF);
        assert_eq!(page[VM_HEADER_BYTES + 1], 0b0000_1111);
        assert!(page[VM_HEADER_BYTES + 2..].iter().all(|&b| b == 0));
        // On a byte boundary nothing of the last byte survives.
        page[VM_HEADER_BYTES..].fill(0xFF);
        apply_record(&key, &mut page, &WalRecord::TruncateVisibilityMap { first_heap_blkno: 8 }).unwrap();
        assert_eq!(page[VM_HEADER_BYTES + 1], 0xFF);
        assert_eq!(page[VM_HEADER_BYTES + 2], 0);
        // The truncation point must lie on this page.
        let rec = WalRecord::TruncateVisibilityMap { first_heap_blkno: VM_HEAPBLOCKS_PER_PAGE };
        assert!(apply_record(&key, &mut page, &rec).is_err());
    }

    #[test]
    fn multixact_next_offset_lands_on_the_next_page() {
        let key = |blkno| RedoKey::Slru { kind: SlruKind::MultiXactOffsets, segno: 0, blkno };
        let rec = WalRecord::MultixactOffsetCreate { mid: MULTIXACT_OFFSETS_PER_PAGE - 1, moff: 10, nmembers: 3 };
        let (mut p0, mut p1) = (vec![0u8; BLCKSZ], vec![0u8; BLCKSZ]);
        apply_record(&key(0), &mut p0, &rec).unwrap();
        apply_record(&key(1), &mut p1, &rec).unwrap();
        assert_eq!(&p0[BLCKSZ - 4..], &10u32.to_le_bytes());
        assert_eq!(&p1[..4], &13u32.to_le_bytes());
        assert!(apply_record(&key(2), &mut p1, &rec).is_err());
    }

    #[test]
    fn multixact_members_go_to_their_group() {
        let key = RedoKey::Slru { kind: SlruKind::MultiXactMembers, segno: 0, blkno: 0 };
        let members = vec![MultiXactMember { xid: 700, status: 2 }, MultiXactMember { xid: 701, status: 5 }];
        let mut page = vec![0u8; BLCKSZ];
        apply_record(&key, &mut page, &WalRecord::MultixactMembersCreate { moff: 3, members }).unwrap();
        // offset 3: group 0, member 3; offset 4: group 1, member 0
        assert_eq!(&page[16..20], &700u32.to_le_bytes());
        assert_eq!(page[3], 2);
        assert_eq!(&page[24..28], &701u32.to_le_bytes());
        assert_eq!(page[20], 5);
    }

    #[test]
    fn short_page_is_an_error() {
        let key = clog_key(0);
        assert!(apply_run(&key, Some(Bytes::from_static(b"short")), &[]).is_err());
        assert!(apply_run(&key, None, &[]).is_err());
    }
}
