//! WAL ingestion: interpret each decoded PostgreSQL 15 record and store its
//! effects under the keys it touches.
//!
//! * Every block reference: a full-page image to apply becomes a page image
//!   (hole restored, `pd_lsn` = the record's end LSN unless the page is
//!   new); otherwise the raw record is stored under the block's key (a
//!   record touching N blocks is stored N times). The relation grows to
//!   cover the block.
//! * XLOG: checkpoint records and NEXTOID update the stored checkpoint.
//! * XACT: commit/abort (also prepared) set CLOG bits of the xid and its
//!   subtransactions (Rust-applied records, one per CLOG page) and drop the
//!   relations the record lists; PREPARE stores the two-phase state; a
//!   commit also writes its end LSN and time under `COMMIT_TS_KEY`
//!   (see [`crate::tenant::commit_ts`]).
//! * CLOG zero-page/truncate, MULTIXACT zero-page/create, SMGR
//!   create/truncate, DBASE create (wal_log and file_copy: file_copy copies
//!   the template's relations as of this LSN) and drop, RELMAP update.
//! * HEAP/HEAP2 records that clear visibility-map bits get a Rust-applied
//!   record on the VM page(s).
//!
//! Invariants: one record = one [`DatadirModification`] committed at the
//! record's end LSN; records are ingested in LSN order by one writer (the
//! caller holds the timeline's `write_lock`). Malformed record contents are
//! errors, never panics.
//!
//! Cancellation: `ingest_record` is not cancel-safe in the sense that a
//! dropped call loses the record (nothing of it is committed); the caller
//! (walreceiver) then restarts from `last_record_lsn`, which is consistent.
use std::collections::BTreeMap;

use bytes::Bytes;
use postgres_ffi::pg_constants::*;
use postgres_ffi::rmgr::*;
use postgres_ffi::{DecodedRecord, RelFileNode};
use utils::lsn::Lsn;

use crate::ingest::datadir::DatadirModification;
use crate::storage::key::*;
use crate::tenant::timeline::{PageReconstructError, Result, Timeline, ZERO_PAGE};
use crate::storage::value::{Reader, Value};
use crate::walredo::{
    vm_clear_for_heap_record, MultiXactMember, SlruKind, WalRecord, MULTIXACT_MEMBERS_PER_PAGE,
    MULTIXACT_OFFSETS_PER_PAGE, VM_HEAPBLOCKS_PER_PAGE,
};

use postgres_ffi::controlfile::CheckPoint;

/// `RELSEG_SIZE` is not needed here; FSM geometry for truncation:
const SLOTS_PER_FSM_PAGE: u32 = 4069;
const FSM_TREE_DEPTH: u32 = 3;

fn bad(lsn: Lsn, what: &str, e: String) -> PageReconstructError {
    PageReconstructError::Other(format!("malformed {what} record at {lsn}: {e}"))
}

/// Ingest state kept across records: the checkpoint being maintained.
pub struct WalIngest {
    checkpoint: CheckPoint,
    checkpoint_modified: bool,
    /// Running maximum of commit times (for [`crate::tenant::commit_ts`]).
    max_commit_time: Option<i64>,
}

impl WalIngest {
    /// Start ingesting into `tline` (loads its current checkpoint).
    pub async fn new(tline: &Timeline) -> Result<WalIngest> {
        let lsn = tline.last_record_lsn();
        let checkpoint = match tline.checkpoint(lsn).await {
            Ok(b) => CheckPoint::decode(&b).unwrap_or_default(),
            Err(PageReconstructError::MissingKey { .. }) => CheckPoint::default(),
            Err(e) => return Err(e),
        };
        let max_commit_time = crate::tenant::commit_ts::commit_ts_at(tline, lsn).await?.map(|c| c.max_time);
        Ok(WalIngest { checkpoint, checkpoint_modified: false, max_commit_time })
    }

    /// Change the maintained checkpoint (stored with the next record).
    fn update_checkpoint(&mut self, f: impl FnOnce(&mut CheckPoint)) {
        f(&mut self.checkpoint);
        self.checkpoint_modified = true;
    }
    fn next_xid(&self) -> u64 {
        self.checkpoint.next_xid
    }
    fn set_next_xid(&mut self, v: u64) {
        self.update_checkpoint(|c| c.next_xid = v);
    }

    /// Track `nextXid` past every xid seen.
    fn observe_xid(&mut self, xid: u32) {
        if xid < 3 {
            return; // invalid, bootstrap or frozen
        }
        let next = self.next_xid();
        let (epoch, next32) = ((next >> 32) as u32, next as u32);
        if (xid.wrapping_sub(next32) as i32) >= 0 {
            let new32 = xid.wrapping_add(1).max(3);
            let epoch = if new32 < next32 { epoch.wrapping_add(1) } else { epoch };
            self.set_next_xid(((epoch as u64) << 32) | new32 as u64);
        }
    }

    /// Ingest one record ending at `lsn` into `tline` and commit it.
    pub async fn ingest_record(&mut self, tline: &Timeline, decoded: &DecodedRecord, lsn: Lsn) -> Result<()> {
        let mut m = DatadirModification::new(tline, lsn);
        self.observe_xid(decoded.header.xl_xid);
        let info = decoded.header.xl_info & XLR_RMGR_INFO_MASK;
        match decoded.header.xl_rmid {
            RM_XLOG_ID => self.ingest_xlog(decoded, info, lsn)?,
            RM_XACT_ID => self.ingest_xact(&mut m, decoded, info, lsn).await?,
            RM_CLOG_ID => self.ingest_clog(&mut m, decoded, info, lsn).await?,
            RM_MULTIXACT_ID => self.ingest_multixact(&mut m, decoded, info, lsn).await?,
            RM_SMGR_ID => ingest_smgr(&mut m, decoded, info, lsn).await?,
            RM_DBASE_ID => ingest_dbase(&mut m, decoded, info, lsn).await?,
            RM_RELMAP_ID if info == XLOG_RELMAP_UPDATE => {
                let mut r = Reader::new(&decoded.main_data);
                let parse = |r: &mut Reader| -> std::result::Result<_, String> { Ok((r.u32()?, r.u32()?, r.u32()?)) };
                let (db, spc, n) = parse(&mut r).map_err(|e| bad(lsn, "relmap", e))?;
                let data = decoded.main_data.get(12..12 + n as usize).ok_or_else(|| bad(lsn, "relmap", "short".into()))?;
                m.put_relmap_file(spc, db, Bytes::copy_from_slice(data)).await?;
            }
            RM_HEAP_ID | RM_HEAP2_ID => {
                if let Some((rel, rec)) = vm_clear_for_heap_record(decoded) {
                    put_vm_clear(&mut m, rel, rec).await?;
                }
            }
            _ => {}
        }
        for blk in &decoded.blocks {
            let key = rel_block_key(blk.rel, blk.forknum, blk.blkno);
            let value = match blk.image.as_ref().filter(|i| i.apply()) {
                Some(image) => {
                    let mut page = image.restore_page().ok_or_else(|| {
                        bad(lsn, "block image", format!("compressed ({:?}) or malformed", image.compression()))
                    })?;
                    let pd_upper = u16::from_le_bytes([page[14], page[15]]);
                    if pd_upper != 0 {
                        page[0..4].copy_from_slice(&((lsn.0 >> 32) as u32).to_le_bytes());
                        page[4..8].copy_from_slice(&(lsn.0 as u32).to_le_bytes());
                    }
                    Value::Image(Bytes::from(page))
                }
                None => Value::WalRecord(WalRecord::Postgres { will_init: blk.will_init(), rec: decoded.raw.clone() }),
            };
            m.put(key, value);
            m.put_rel_extend(blk.rel, blk.forknum, blk.blkno + 1).await?;
        }
        if self.checkpoint_modified {
            m.put_image(CHECKPOINT_KEY, Bytes::copy_from_slice(&self.checkpoint.encode()));
            self.checkpoint_modified = false;
        }
        m.commit()?;
        tline.set_prev_record_lsn(decoded.lsn);
        crate::metrics::WAL_INGEST_RECORDS.inc();
        Ok(())
    }

    fn ingest_xlog(&mut self, decoded: &DecodedRecord, info: u8, lsn: Lsn) -> Result<()> {
        match info {
            XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => {
                let ours = self.next_xid();
                self.checkpoint =
                    CheckPoint::decode(&decoded.main_data).ok_or_else(|| bad(lsn, "checkpoint", "short".into()))?;
                if ours > self.next_xid() {
                    self.set_next_xid(ours);
                }
                self.checkpoint_modified = true;
            }
            XLOG_NEXTOID => {
                let oid = Reader::new(&decoded.main_data).u32().map_err(|e| bad(lsn, "nextoid", e))?;
                self.update_checkpoint(|c| c.next_oid = oid);
            }
            _ => {}
        }
        Ok(())
    }

    async fn ingest_xact(
        &mut self,
        m: &mut DatadirModification<'_>,
        decoded: &DecodedRecord,
        info: u8,
        lsn: Lsn,
    ) -> Result<()> {
        let op = info & XLOG_XACT_OPMASK;
        match op {
            XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED => {
                let commit = matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
                let parsed = parse_xact(&decoded.main_data, info, commit).map_err(|e| bad(lsn, "xact", e))?;
                let xid = parsed.twophase_xid.unwrap_or(decoded.header.xl_xid);
                let mut by_page: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
                for x in std::iter::once(xid).chain(parsed.subxacts.iter().copied()) {
                    self.observe_xid(x);
                    by_page.entry(x / CLOG_XACTS_PER_PAGE).or_default().push(x);
                }
                for (pageno, xids) in by_page {
                    let key = slru_block_key(SlruKind::Clog, pageno / SLRU_PAGES_PER_SEGMENT, pageno % SLRU_PAGES_PER_SEGMENT);
                    let rec = if commit {
                        WalRecord::ClogSetCommitted { xids, timestamp: parsed.xact_time }
                    } else {
                        WalRecord::ClogSetAborted { xids }
                    };
                    m.put_record(key, rec);
                }
                if commit {
                    let max_time = self.max_commit_time.map_or(parsed.xact_time, |m| m.max(parsed.xact_time));
                    self.max_commit_time = Some(max_time);
                    let value = crate::tenant::commit_ts::CommitTs { lsn, time: parsed.xact_time, max_time };
                    m.put_image(COMMIT_TS_KEY, value.encode());
                }
                for rel in parsed.dropped {
                    m.put_rel_drop(rel).await?;
                }
                if matches!(op, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED) {
                    m.drop_twophase_file(xid).await?;
                }
            }
            XLOG_XACT_PREPARE => {
                m.put_twophase_file(decoded.header.xl_xid, decoded.main_data.clone()).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn ingest_clog(
        &mut self,
        m: &mut DatadirModification<'_>,
        decoded: &DecodedRecord,
        info: u8,
        lsn: Lsn,
    ) -> Result<()> {
        let mut r = Reader::new(&decoded.main_data);
        match info {
            CLOG_ZEROPAGE => {
                let pageno = r.u32().map_err(|e| bad(lsn, "clog", e))?;
                zero_slru_page(m, SlruKind::Clog, pageno).await?;
            }
            CLOG_TRUNCATE => {
                let parse = |r: &mut Reader| -> std::result::Result<_, String> { Ok((r.u32()?, r.u32()?, r.u32()?)) };
                let (pageno, oldest_xid, oldest_db) = parse(&mut r).map_err(|e| bad(lsn, "clog truncate", e))?;
                let cutoff = pageno / SLRU_PAGES_PER_SEGMENT;
                m.put_slru_truncate(SlruKind::Clog, |seg| seg < cutoff).await?;
                self.update_checkpoint(|c| (c.oldest_xid, c.oldest_xid_db) = (oldest_xid, oldest_db));
            }
            _ => {}
        }
        Ok(())
    }

    async fn ingest_multixact(
        &mut self,
        m: &mut DatadirModification<'_>,
        decoded: &DecodedRecord,
        info: u8,
        lsn: Lsn,
    ) -> Result<()> {
        let mut r = Reader::new(&decoded.main_data);
        match info {
            XLOG_MULTIXACT_ZERO_OFF_PAGE | XLOG_MULTIXACT_ZERO_MEM_PAGE => {
                let pageno = r.u32().map_err(|e| bad(lsn, "multixact", e))?;
                let kind = if info == XLOG_MULTIXACT_ZERO_OFF_PAGE {
                    SlruKind::MultiXactOffsets
                } else {
                    SlruKind::MultiXactMembers
                };
                zero_slru_page(m, kind, pageno).await?;
            }
            XLOG_MULTIXACT_CREATE_ID => {
                let parse = |r: &mut Reader| -> std::result::Result<_, String> {
                    let (mid, moff, n) = (r.u32()?, r.u32()?, r.u32()?);
                    let members = (0..n.min(1 << 20))
                        .map(|_| Ok(MultiXactMember { xid: r.u32()?, status: r.u32()? }))
                        .collect::<std::result::Result<Vec<_>, String>>()?;
                    Ok((mid, moff, n, members))
                };
                let (mid, moff, nmembers, members) = parse(&mut r).map_err(|e| bad(lsn, "multixact create", e))?;
                // Offsets: the page of `mid`, and the page of `mid + 1` if
                // different (its offset is written too) and present.
                let pages: Vec<u32> = {
                    let next = mid.wrapping_add(1).max(1);
                    let (a, b) = (mid / MULTIXACT_OFFSETS_PER_PAGE, next / MULTIXACT_OFFSETS_PER_PAGE);
                    if a == b { vec![a] } else { vec![a, b] }
                };
                for (i, pageno) in pages.into_iter().enumerate() {
                    let (seg, blk) = (pageno / SLRU_PAGES_PER_SEGMENT, pageno % SLRU_PAGES_PER_SEGMENT);
                    let exists = m.slru_segment_size(SlruKind::MultiXactOffsets, seg).await?.is_some_and(|n| blk < n);
                    if i == 0 || exists {
                        let rec = WalRecord::MultixactOffsetCreate { mid, moff, nmembers };
                        m.put_record(slru_block_key(SlruKind::MultiXactOffsets, seg, blk), rec);
                    }
                }
                // Members: each page the members land on.
                let mut pages: Vec<u32> = (0..members.len() as u32)
                    .map(|i| moff.wrapping_add(i) / MULTIXACT_MEMBERS_PER_PAGE)
                    .collect();
                pages.dedup();
                for pageno in pages {
                    let rec = WalRecord::MultixactMembersCreate { moff, members: members.clone() };
                    let key = slru_block_key(
                        SlruKind::MultiXactMembers,
                        pageno / SLRU_PAGES_PER_SEGMENT,
                        pageno % SLRU_PAGES_PER_SEGMENT,
                    );
                    m.put_record(key, rec);
                }
                for x in members.iter().map(|m| m.xid) {
                    self.observe_xid(x);
                }
                let next_multi = mid.wrapping_add(1);
                if (next_multi.wrapping_sub(self.checkpoint.next_multi) as i32) > 0 {
                    self.update_checkpoint(|c| c.next_multi = next_multi);
                }
                let next_off = moff.wrapping_add(nmembers);
                if (next_off.wrapping_sub(self.checkpoint.next_multi_offset) as i32) > 0 {
                    self.update_checkpoint(|c| c.next_multi_offset = next_off);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

async fn zero_slru_page(m: &mut DatadirModification<'_>, kind: SlruKind, pageno: u32) -> Result<()> {
    let (seg, blk) = (pageno / SLRU_PAGES_PER_SEGMENT, pageno % SLRU_PAGES_PER_SEGMENT);
    m.put_image(slru_block_key(kind, seg, blk), ZERO_PAGE.clone());
    m.put_slru_extend(kind, seg, blk).await
}

/// Put a visibility-map clear on each existing VM page it touches.
async fn put_vm_clear(m: &mut DatadirModification<'_>, rel: RelFileNode, rec: WalRecord) -> Result<()> {
    let WalRecord::ClearVisibilityMapFlags { new_heap_blkno, old_heap_blkno, .. } = &rec else {
        return Ok(());
    };
    let mut pages: Vec<u32> =
        [*new_heap_blkno, *old_heap_blkno].into_iter().flatten().map(|b| b / VM_HEAPBLOCKS_PER_PAGE).collect();
    pages.sort();
    pages.dedup();
    let vm_size = m.rel_size(rel, VISIBILITYMAP_FORKNUM).await?.unwrap_or(0);
    for page in pages.into_iter().filter(|p| *p < vm_size) {
        m.put_record(rel_block_key(rel, VISIBILITYMAP_FORKNUM, page), rec.clone());
    }
    Ok(())
}

fn read_rel(r: &mut Reader) -> std::result::Result<RelFileNode, String> {
    Ok(RelFileNode { spc_node: r.u32()?, db_node: r.u32()?, rel_node: r.u32()? })
}

/// `fsm_logical_to_physical` for a bottom-level FSM page.
fn fsm_logical_to_physical(logpageno: u32) -> u32 {
    let mut leafno = logpageno as u64;
    let mut pages = 0u64;
    for _ in 0..FSM_TREE_DEPTH {
        pages += leafno + 1;
        leafno /= SLOTS_PER_FSM_PAGE as u64;
    }
    (pages - 1) as u32
}

async fn ingest_smgr(m: &mut DatadirModification<'_>, decoded: &DecodedRecord, info: u8, lsn: Lsn) -> Result<()> {
    let mut r = Reader::new(&decoded.main_data);
    match info {
        XLOG_SMGR_CREATE => {
            let parse = |r: &mut Reader| -> std::result::Result<_, String> { Ok((read_rel(r)?, r.u32()?)) };
            let (rel, fork) = parse(&mut r).map_err(|e| bad(lsn, "smgr create", e))?;
            m.put_rel_creation(rel, fork as u8, 0).await?;
        }
        XLOG_SMGR_TRUNCATE => {
            let parse = |r: &mut Reader| -> std::result::Result<_, String> { Ok((r.u32()?, read_rel(r)?, r.u32()?)) };
            let (blkno, rel, flags) = parse(&mut r).map_err(|e| bad(lsn, "smgr truncate", e))?;
            if flags & SMGR_TRUNCATE_HEAP != 0 {
                m.put_rel_truncation(rel, MAIN_FORKNUM, blkno).await?;
            }
            if flags & SMGR_TRUNCATE_FSM != 0 {
                let logpage = blkno / SLOTS_PER_FSM_PAGE;
                let mut nblocks = fsm_logical_to_physical(logpage);
                if blkno % SLOTS_PER_FSM_PAGE != 0 {
                    // The partial page is rewritten by PostgreSQL without WAL;
                    // an empty FSM page is always safe.
                    if m.rel_size(rel, FSM_FORKNUM).await?.is_some_and(|n| nblocks < n) {
                        m.put_image(rel_block_key(rel, FSM_FORKNUM, nblocks), ZERO_PAGE.clone());
                    }
                    nblocks += 1;
                }
                if m.rel_size(rel, FSM_FORKNUM).await?.is_some_and(|n| nblocks < n) {
                    m.put_rel_truncation(rel, FSM_FORKNUM, nblocks).await?;
                }
            }
            if flags & SMGR_TRUNCATE_VM != 0 {
                let mut nblocks = blkno / VM_HEAPBLOCKS_PER_PAGE;
                if blkno % VM_HEAPBLOCKS_PER_PAGE != 0 {
                    // Bits of the truncated heap blocks are cleared without
                    // WAL (visibilitymap_prepare_truncate): do the same.
                    if m.rel_size(rel, VISIBILITYMAP_FORKNUM).await?.is_some_and(|n| nblocks < n) {
                        let rec = WalRecord::TruncateVisibilityMap { first_heap_blkno: blkno };
                        m.put(rel_block_key(rel, VISIBILITYMAP_FORKNUM, nblocks), Value::WalRecord(rec));
                    }
                    nblocks += 1;
                }
                if m.rel_size(rel, VISIBILITYMAP_FORKNUM).await?.is_some_and(|n| nblocks < n) {
                    m.put_rel_truncation(rel, VISIBILITYMAP_FORKNUM, nblocks).await?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

async fn ingest_dbase(m: &mut DatadirModification<'_>, decoded: &DecodedRecord, info: u8, lsn: Lsn) -> Result<()> {
    let mut r = Reader::new(&decoded.main_data);
    match info {
        XLOG_DBASE_CREATE_WAL_LOG => {
            let parse = |r: &mut Reader| -> std::result::Result<_, String> { Ok((r.u32()?, r.u32()?)) };
            let (db, spc) = parse(&mut r).map_err(|e| bad(lsn, "dbase create", e))?;
            m.put_db_creation(spc, db).await?;
        }
        XLOG_DBASE_CREATE_FILE_COPY => {
            let parse =
                |r: &mut Reader| -> std::result::Result<_, String> { Ok((r.u32()?, r.u32()?, r.u32()?, r.u32()?)) };
            let (db, spc, src_db, src_spc) = parse(&mut r).map_err(|e| bad(lsn, "dbase create", e))?;
            copy_database(m, (src_spc, src_db), (spc, db)).await?;
        }
        XLOG_DBASE_DROP => {
            let parse = |r: &mut Reader| -> std::result::Result<_, String> {
                let db = r.u32()?;
                let n = r.u32()?;
                let spcs = (0..n.min(1024)).map(|_| r.u32()).collect::<std::result::Result<Vec<_>, _>>()?;
                Ok((db, spcs))
            };
            let (db, spcs) = parse(&mut r).map_err(|e| bad(lsn, "dbase drop", e))?;
            for spc in spcs {
                m.put_db_drop(spc, db).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// CREATE DATABASE ... STRATEGY file_copy: copy every relation (all forks,
/// block by block, as of the previous record) and the relmapper file.
async fn copy_database(m: &mut DatadirModification<'_>, src: (u32, u32), dst: (u32, u32)) -> Result<()> {
    let tline = m.tline;
    let read_lsn = tline.last_record_lsn();
    m.put_db_creation(dst.0, dst.1).await?;
    if let Some(map) = tline.relmap_file(src.0, src.1, read_lsn).await? {
        m.put_relmap_file(dst.0, dst.1, map).await?;
    }
    for (rel_node, fork) in m.reldir(src.0, src.1).await? {
        let src_rel = RelFileNode { spc_node: src.0, db_node: src.1, rel_node };
        let dst_rel = RelFileNode { spc_node: dst.0, db_node: dst.1, rel_node };
        let nblocks = m.rel_size(src_rel, fork).await?.unwrap_or(0);
        m.put_rel_creation(dst_rel, fork, nblocks).await?;
        for blk in 0..nblocks {
            let page = tline.rel_page(src_rel, fork, blk, read_lsn).await?;
            m.put_image(rel_block_key(dst_rel, fork, blk), page);
        }
    }
    Ok(())
}

/// The parts of a commit/abort record ingestion needs.
#[derive(Debug, Default)]
struct ParsedXact {
    xact_time: i64,
    subxacts: Vec<u32>,
    dropped: Vec<RelFileNode>,
    twophase_xid: Option<u32>,
}

/// `ParseCommitRecord` / `ParseAbortRecord` of PostgreSQL 15.
fn parse_xact(data: &[u8], info: u8, commit: bool) -> std::result::Result<ParsedXact, String> {
    let mut r = Reader::new(data);
    let mut p = ParsedXact { xact_time: r.u64()? as i64, ..Default::default() };
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 { r.u32()? } else { 0 };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        r.bytes(8)?;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = r.u32()? as usize;
        if n * 4 > r.rest() {
            return Err(format!("{n} subxacts"));
        }
        p.subxacts = (0..n).map(|_| r.u32()).collect::<std::result::Result<_, _>>()?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let n = r.u32()? as usize;
        if n * 12 > r.rest() {
            return Err(format!("{n} relfilenodes"));
        }
        p.dropped = (0..n).map(|_| read_rel(&mut r)).collect::<std::result::Result<_, _>>()?;
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let n = r.u32()? as usize;
        r.bytes(n.saturating_mul(12))?;
    }
    if commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        let n = r.u32()? as usize;
        r.bytes(n.saturating_mul(16))?;
    }
    if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        p.twophase_xid = Some(r.u32()?);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsm_geometry() {
        // Bottom-level page 0 is physical block 2 (root, level 1, leaf).
        assert_eq!(fsm_logical_to_physical(0), 2);
        assert_eq!(fsm_logical_to_physical(1), 3);
        assert_eq!(fsm_logical_to_physical(SLOTS_PER_FSM_PAGE), SLOTS_PER_FSM_PAGE + 3);
    }

    #[test]
    fn xact_parse_rejects_garbage() {
        assert!(parse_xact(&[1, 2, 3], XLOG_XACT_HAS_INFO, true).is_err());
        let mut d = vec![0u8; 8];
        d.extend_from_slice(&XACT_XINFO_HAS_SUBXACTS.to_le_bytes());
        d.extend_from_slice(&1000u32.to_le_bytes());
        assert!(parse_xact(&d, XLOG_XACT_HAS_INFO, true).is_err());
        let mut ok = vec![0u8; 8];
        ok.extend_from_slice(&XACT_XINFO_HAS_SUBXACTS.to_le_bytes());
        ok.extend_from_slice(&2u32.to_le_bytes());
        ok.extend_from_slice(&7u32.to_le_bytes());
        ok.extend_from_slice(&8u32.to_le_bytes());
        assert_eq!(parse_xact(&ok, XLOG_XACT_HAS_INFO, true).unwrap().subxacts, vec![7, 8]);
    }
}
