//! Basebackup: a PostgreSQL 15 data directory for (timeline, LSN), streamed
//! as a tar archive, from which stock PostgreSQL starts without recovery.
//!
//! Owns the layout of the archive, not the data: everything comes from a
//! [`BasebackupSource`] (the timeline's key space at the LSN). The archive
//! holds the directory skeleton PostgreSQL expects, `PG_VERSION` files,
//! relation files (sizes of a database's forks from one vectored read,
//! [`BasebackupSource::rel_sizes`]; contents from range reads of up to 256 blocks,
//! [`BasebackupSource::pages`], split into 1 GiB segments),
//! SLRU segments (`pg_xact`, `pg_multixact`, each read as one range), relmapper files, two-phase
//! state files, a `pg_control` pointing at a shutdown checkpoint at the LSN,
//! and a WAL segment holding that checkpoint record (see
//! `postgres_ffi::walgen`), written as a GNU sparse entry: only its pages up
//! to the end of the record are sent, the zero rest is a hole the reader
//! recreates (a 16 MiB segment costs ~16 KiB of archive). Configuration files are not included: whoever
//! starts the compute writes them.
//!
//! With [`RelationContents::SizesOnly`] (the `relations=sizes` query of the
//! HTTP API, for lazy computes) relation segment files are not in the
//! archive at all: each is listed, with its exact size in blocks, in a text
//! manifest [`LAZY_MANIFEST`] at the end of the archive, and the compute's
//! filesystem shows it and fetches its blocks on demand (creating a file
//! per relation costs ~0.3 ms each on this machine's disks, a third of a
//! lazy start). Init forks (and the main forks unlogged
//! relations get from them) are written in full either way: they are tiny.
//!
//! Invariants: unlogged relations get their init fork copied as their main
//! fork (their main fork is never WAL-logged); temporary relations never
//! reach the key space. Every entry is written completely or the whole
//! backup fails with an error naming the file.
//!
//! Cancellation: dropping the future abandons a partially written archive;
//! nothing outside the writer is changed.

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use postgres_ffi::controlfile::{CheckPoint, ControlFile, DbState};
use postgres_ffi::pg_constants::{BLCKSZ, XLOG_BLCKSZ};
use postgres_ffi::walgen::{encode_checkpoint_record, record_position, segment_with_record};
use postgres_ffi::RelFileNode;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use utils::lsn::Lsn;

use crate::walredo::SlruKind;

/// Blocks per relation segment file (`RELSEG_SIZE`, 1 GiB).
pub const RELSEG_SIZE_BLOCKS: u32 = 131072;
pub const DEFAULTTABLESPACE_OID: u32 = 1663;
pub const GLOBALTABLESPACE_OID: u32 = 1664;
const MAIN_FORK: u8 = 0;
/// Blocks of a relation read as one range ([`BasebackupSource::pages`]).
const RANGE_BLOCKS: u32 = 256;
/// Range reads a basebackup keeps in flight (the next one is read while
/// the current one is written).
const RANGES_IN_FLIGHT: usize = 2;
/// Log progress every this many bytes of archive.
const PROGRESS_STEP_BYTES: u64 = 256 << 20;
const INIT_FORK: u8 = 3;
/// Name of the manifest of a sizes-only basebackup, at the archive's root.
/// One line per relation segment file written empty:
/// `<path> <spcnode> <dbnode> <relnode> <fork> <first block> <blocks>`.
pub const LAZY_MANIFEST: &str = "strata_lazy_manifest";

/// What a basebackup writes into relation files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RelationContents {
    /// Every page.
    #[default]
    Full,
    /// Nothing: only [`LAZY_MANIFEST`] with their sizes.
    SizesOnly,
}

const SKELETON_DIRS: &[&str] = &[
    "global", "base", "pg_wal", "pg_wal/archive_status", "pg_commit_ts", "pg_dynshmem", "pg_notify",
    "pg_serial", "pg_snapshots", "pg_subtrans", "pg_twophase", "pg_multixact", "pg_multixact/members",
    "pg_multixact/offsets", "pg_replslot", "pg_tblspc", "pg_stat", "pg_stat_tmp", "pg_xact", "pg_logical",
    "pg_logical/snapshots", "pg_logical/mappings",
];

#[derive(Debug, thiserror::Error)]
pub enum BasebackupError {
    #[error("reading {what} at {lsn}: {reason}")]
    Source { what: String, lsn: Lsn, reason: String },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// What a basebackup reads: the key space of a timeline at an LSN.
#[allow(async_fn_in_trait)]
pub trait BasebackupSource {
    /// (tablespace, database) pairs with a relation directory.
    async fn databases(&self, lsn: Lsn) -> Result<Vec<(u32, u32)>, String>;
    /// Relations and forks of a database.
    async fn relations(&self, spc: u32, db: u32, lsn: Lsn) -> Result<Vec<(RelFileNode, u8)>, String>;
    async fn rel_size(&self, rel: RelFileNode, fork: u8, lsn: Lsn) -> Result<u32, String>;
    /// Sizes of forks `rels` (all listed by [`Self::relations`]), in order.
    /// A source that can read many keys at once (a vectored read) overrides this.
    async fn rel_sizes(&self, rels: &[(RelFileNode, u8)], lsn: Lsn) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(rels.len());
        for &(rel, fork) in rels {
            out.push(self.rel_size(rel, fork, lsn).await?);
        }
        Ok(out)
    }
    async fn page(&self, rel: RelFileNode, fork: u8, blkno: u32, lsn: Lsn) -> Result<Bytes, String>;
    /// Blocks `blocks` of a fork (all inside it), in order. A source that
    /// can read a range at once (a vectored read) overrides this.
    async fn pages(&self, rel: RelFileNode, fork: u8, blocks: std::ops::Range<u32>, lsn: Lsn) -> Result<Vec<Bytes>, String> {
        let mut out = Vec::with_capacity(blocks.len());
        for blkno in blocks {
            out.push(self.page(rel, fork, blkno, lsn).await?);
        }
        Ok(out)
    }
    async fn relmap_file(&self, spc: u32, db: u32, lsn: Lsn) -> Result<Option<Bytes>, String>;
    async fn slru_segments(&self, kind: SlruKind, lsn: Lsn) -> Result<Vec<u32>, String>;
    /// The whole segment file.
    async fn slru_segment(&self, kind: SlruKind, segno: u32, lsn: Lsn) -> Result<Bytes, String>;
    /// (xid, file contents) of prepared transactions.
    async fn twophase_files(&self, lsn: Lsn) -> Result<Vec<(u32, Bytes)>, String>;
    /// `pg_control` as imported (patched by the basebackup).
    async fn control_file(&self, lsn: Lsn) -> Result<Bytes, String>;
    /// The checkpoint state at `lsn` (next xid/oid/multixact...), as a `CheckPoint`.
    async fn checkpoint(&self, lsn: Lsn) -> Result<CheckPoint, String>;
}

/// Figures of a finished basebackup.
#[derive(Clone, Debug, Default)]
pub struct BasebackupStats {
    pub relation_files: u64,
    pub pages: u64,
    pub bytes: u64,
}

/// Where the compute will start, and what to tell it.
#[derive(Clone, Copy, Debug)]
pub struct BasebackupTarget {
    /// A record boundary: the end of the last record the compute sees.
    pub lsn: Lsn,
    /// Start LSN of that last record (`xl_prev` of the checkpoint record).
    pub prev_record_lsn: Lsn,
}

async fn source<T>(what: impl FnOnce() -> String, lsn: Lsn, fut: impl Future<Output = Result<T, String>>) -> Result<T, BasebackupError> {
    fut.await.map_err(|reason| BasebackupError::Source { what: what(), lsn, reason })
}

struct TarWriter<W> {
    out: W,
    mtime: u64,
    stats: BasebackupStats,
    /// Manifest lines of a sizes-only backup (`None`: full).
    manifest: Option<String>,
}

impl<W: AsyncWrite + Unpin> TarWriter<W> {
    async fn write_raw(&mut self, path: &str, bytes: &[u8]) -> Result<(), BasebackupError> {
        self.out.write_all(bytes).await.map_err(|source| BasebackupError::Write { path: path.to_string(), source })?;
        let before = self.stats.bytes / PROGRESS_STEP_BYTES;
        self.stats.bytes += bytes.len() as u64;
        if self.stats.bytes / PROGRESS_STEP_BYTES > before {
            tracing::info!(mb = self.stats.bytes >> 20, pages = self.stats.pages, "basebackup progress");
        }
        Ok(())
    }

    fn header(&self, path: &str, size: u64, dir: bool) -> Result<tar::Header, BasebackupError> {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).map_err(|e| BasebackupError::Invalid(format!("tar path {path}: {e}")))?;
        h.set_size(size);
        h.set_mode(if dir { 0o700 } else { 0o600 });
        h.set_mtime(self.mtime);
        h.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.set_cksum();
        Ok(h)
    }

    async fn dir(&mut self, path: &str) -> Result<(), BasebackupError> {
        let h = self.header(path, 0, true)?;
        self.write_raw(path, h.as_bytes()).await
    }

    /// Start a file of `size` bytes; its content follows via `write_raw`, then `end_file`.
    async fn begin_file(&mut self, path: &str, size: u64) -> Result<(), BasebackupError> {
        let h = self.header(path, size, false)?;
        self.write_raw(path, h.as_bytes()).await
    }

    async fn end_file(&mut self, path: &str, size: u64) -> Result<(), BasebackupError> {
        let pad = (512 - (size % 512) as usize) % 512;
        self.write_raw(path, &[0u8; 512][..pad]).await
    }

    async fn file(&mut self, path: &str, data: &[u8]) -> Result<(), BasebackupError> {
        self.begin_file(path, data.len() as u64).await?;
        self.write_raw(path, data).await?;
        self.end_file(path, data.len() as u64).await
    }

    /// A GNU sparse entry of `real_size` bytes whose first `data.len()`
    /// bytes are `data` and the rest a hole (zeros): only `data` crosses
    /// the wire, and tar readers (GNU tar, the `tar` crate) recreate the
    /// whole file, the hole as a sparse region.
    async fn sparse_file(&mut self, path: &str, data: &[u8], real_size: u64) -> Result<(), BasebackupError> {
        let invalid = |what: &str| BasebackupError::Invalid(format!("sparse tar entry {path}: {what}"));
        if data.len() as u64 > real_size {
            return Err(invalid("data longer than the file"));
        }
        let mut h = self.header(path, data.len() as u64, false)?;
        h.set_entry_type(tar::EntryType::GNUSparse);
        let gnu = h.as_gnu_mut().ok_or_else(|| invalid("not a GNU header"))?;
        gnu.set_real_size(real_size);
        // The data at 0, then an empty block at the end that sets the size.
        gnu.sparse[0].set_offset(0);
        gnu.sparse[0].set_length(data.len() as u64);
        gnu.sparse[1].set_offset(real_size);
        gnu.sparse[1].set_length(0);
        h.set_cksum();
        self.write_raw(path, h.as_bytes()).await?;
        self.write_raw(path, data).await?;
        self.end_file(path, data.len() as u64).await
    }

    async fn finish(mut self) -> Result<BasebackupStats, BasebackupError> {
        self.write_raw("end of archive", &[0u8; 1024]).await?;
        self.out.flush().await.map_err(|source| BasebackupError::Write { path: "end of archive".into(), source })?;
        Ok(self.stats)
    }
}

/// Path of a relation fork's segment file, relative to the data directory.
pub fn rel_file_path(rel: RelFileNode, fork: u8, segno: u32) -> Result<String, BasebackupError> {
    let suffix = match fork {
        0 => "",
        1 => "_fsm",
        2 => "_vm",
        3 => "_init",
        f => return Err(BasebackupError::Invalid(format!("relation {rel} has unknown fork {f}"))),
    };
    let dir = match rel.spc_node {
        GLOBALTABLESPACE_OID => "global".to_string(),
        DEFAULTTABLESPACE_OID => format!("base/{}", rel.db_node),
        spc => return Err(BasebackupError::Invalid(format!("tablespace {spc} of {rel} is not supported yet"))),
    };
    let seg = if segno == 0 { String::new() } else { format!(".{segno}") };
    Ok(format!("{dir}/{}{suffix}{seg}", rel.rel_node))
}

/// Write the basebackup of `src` at `target` to `out` as a tar archive.
pub async fn send_basebackup<W, S>(out: W, src: &S, target: BasebackupTarget) -> Result<BasebackupStats, BasebackupError>
where
    W: AsyncWrite + Unpin,
    S: BasebackupSource,
{
    send_basebackup_with(out, src, target, RelationContents::Full).await
}

/// [`send_basebackup`], with relation files full or sizes-only.
pub async fn send_basebackup_with<W, S>(
    out: W,
    src: &S,
    target: BasebackupTarget,
    relations: RelationContents,
) -> Result<BasebackupStats, BasebackupError>
where
    W: AsyncWrite + Unpin,
    S: BasebackupSource,
{
    let lsn = target.lsn;
    if !lsn.is_aligned() {
        return Err(BasebackupError::Invalid(format!("basebackup LSN {lsn} is not a record boundary")));
    }
    let mtime = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let manifest = (relations == RelationContents::SizesOnly).then(String::new);
    let mut tar = TarWriter { out, mtime, stats: BasebackupStats::default(), manifest };
    for dir in SKELETON_DIRS {
        tar.dir(dir).await?;
    }
    tar.file("PG_VERSION", b"15\n").await?;
    for (spc, db) in source(|| "databases".into(), lsn, src.databases(lsn)).await? {
        write_database(&mut tar, src, spc, db, lsn).await?;
    }
    write_slrus(&mut tar, src, lsn).await?;
    for (xid, data) in source(|| "two-phase files".into(), lsn, src.twophase_files(lsn)).await? {
        tar.file(&format!("pg_twophase/{xid:08X}"), &data).await?;
    }
    write_control_and_wal(&mut tar, src, target).await?;
    if let Some(manifest) = tar.manifest.take() {
        tar.file(LAZY_MANIFEST, manifest.as_bytes()).await?;
    }
    tar.finish().await
}

async fn write_database<W: AsyncWrite + Unpin, S: BasebackupSource>(
    tar: &mut TarWriter<W>,
    src: &S,
    spc: u32,
    db: u32,
    lsn: Lsn,
) -> Result<(), BasebackupError> {
    let dir = if spc == GLOBALTABLESPACE_OID { "global".to_string() } else { format!("base/{db}") };
    if spc == DEFAULTTABLESPACE_OID {
        tar.dir(&dir).await?;
        tar.file(&format!("{dir}/PG_VERSION"), b"15\n").await?;
    }
    if let Some(map) = source(|| format!("relmapper of {spc}/{db}"), lsn, src.relmap_file(spc, db, lsn)).await? {
        tar.file(&format!("{dir}/pg_filenode.map"), &map).await?;
    }
    let rels = source(|| format!("relations of {spc}/{db}"), lsn, src.relations(spc, db, lsn)).await?;
    // Every size in one read: one walk down the layers, not one per fork.
    let sizes = source(|| format!("relation sizes of {spc}/{db}"), lsn, src.rel_sizes(&rels, lsn)).await?;
    if sizes.len() != rels.len() {
        return Err(BasebackupError::Invalid(format!("{} sizes for {} relation forks of {spc}/{db}", sizes.len(), rels.len())));
    }
    let unlogged: std::collections::HashSet<RelFileNode> =
        rels.iter().filter(|(_, f)| *f == INIT_FORK).map(|(r, _)| *r).collect();
    for (&(rel, fork), &nblocks) in rels.iter().zip(&sizes) {
        if unlogged.contains(&rel) {
            if fork == INIT_FORK {
                // The init fork, and the same contents as the (empty) main fork.
                write_relation(tar, src, rel, INIT_FORK, INIT_FORK, nblocks, lsn).await?;
                write_relation(tar, src, rel, INIT_FORK, MAIN_FORK, nblocks, lsn).await?;
            }
            continue;
        }
        write_relation(tar, src, rel, fork, fork, nblocks, lsn).await?;
    }
    Ok(())
}

/// Write fork `from_fork` of `rel` (`nblocks` long) under the file name of `as_fork`.
async fn write_relation<W: AsyncWrite + Unpin, S: BasebackupSource>(
    tar: &mut TarWriter<W>,
    src: &S,
    rel: RelFileNode,
    from_fork: u8,
    as_fork: u8,
    nblocks: u32,
    lsn: Lsn,
) -> Result<(), BasebackupError> {
    let segments = nblocks.div_ceil(RELSEG_SIZE_BLOCKS).max(1);
    for segno in 0..segments {
        let path = rel_file_path(rel, as_fork, segno)?;
        let first = segno * RELSEG_SIZE_BLOCKS;
        let count = nblocks.saturating_sub(first).min(RELSEG_SIZE_BLOCKS);
        let size = count as u64 * BLCKSZ as u64;
        if from_fork != INIT_FORK {
            if let Some(manifest) = tar.manifest.as_mut() {
                let RelFileNode { spc_node, db_node, rel_node } = rel;
                manifest.push_str(&format!("{path} {spc_node} {db_node} {rel_node} {from_fork} {first} {count}\n"));
                tar.stats.relation_files += 1;
                continue;
            }
        }
        tar.begin_file(&path, size).await?;
        // The segment as range reads (one vectored read each), the next
        // one in flight while the current one is written, in block order.
        let end = first + count;
        let ranges = (first..end).step_by(RANGE_BLOCKS as usize).map(|s| s..(s + RANGE_BLOCKS).min(end));
        let mut ranges = futures::stream::iter(ranges)
            .map(|r| async move {
                let what = || format!("{rel} fork {from_fork} blocks {}..{}", r.start, r.end);
                (r.start, source(what, lsn, src.pages(rel, from_fork, r.clone(), lsn)).await)
            })
            .buffered(RANGES_IN_FLIGHT);
        while let Some((start, pages)) = ranges.next().await {
            for (blkno, page) in (start..).zip(pages?) {
                if page.len() != BLCKSZ {
                    return Err(BasebackupError::Invalid(format!("page {blkno} of {rel} is {} bytes", page.len())));
                }
                tar.write_raw(&path, &page).await?;
                tar.stats.pages += 1;
            }
        }
        tar.end_file(&path, size).await?;
        tar.stats.relation_files += 1;
    }
    Ok(())
}

async fn write_slrus<W: AsyncWrite + Unpin, S: BasebackupSource>(tar: &mut TarWriter<W>, src: &S, lsn: Lsn) -> Result<(), BasebackupError> {
    let kinds = [
        (SlruKind::Clog, "pg_xact"),
        (SlruKind::MultiXactOffsets, "pg_multixact/offsets"),
        (SlruKind::MultiXactMembers, "pg_multixact/members"),
    ];
    for (kind, dir) in kinds {
        for segno in source(|| format!("{dir} segments"), lsn, src.slru_segments(kind, lsn)).await? {
            let data = source(|| format!("{dir} segment {segno:04X}"), lsn, src.slru_segment(kind, segno, lsn)).await?;
            tar.file(&format!("{dir}/{segno:04X}"), &data).await?;
        }
    }
    Ok(())
}

/// `pg_control` pointing at a shutdown checkpoint at the target LSN, and the
/// WAL segment holding that record.
async fn write_control_and_wal<W: AsyncWrite + Unpin, S: BasebackupSource>(
    tar: &mut TarWriter<W>,
    src: &S,
    target: BasebackupTarget,
) -> Result<(), BasebackupError> {
    let lsn = target.lsn;
    let raw = source(|| "pg_control".into(), lsn, src.control_file(lsn)).await?;
    let mut control = ControlFile::parse(&raw).map_err(|e| BasebackupError::Invalid(format!("stored pg_control: {e}")))?;
    let seg_size = control.wal_seg_size() as u64;
    let record_lsn = record_position(lsn, seg_size);
    let mut checkpoint = source(|| "checkpoint".into(), lsn, src.checkpoint(lsn)).await?;
    checkpoint.redo = record_lsn;
    checkpoint.this_timeline_id = 1;
    checkpoint.prev_timeline_id = 1;
    checkpoint.oldest_active_xid = 0;
    checkpoint.time = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let record = encode_checkpoint_record(&checkpoint, target.prev_record_lsn, true);
    let (segment, end) = segment_with_record(lsn, &record, control.system_identifier(), seg_size)
        .map_err(|e| BasebackupError::Invalid(format!("checkpoint WAL at {lsn}: {e}")))?;
    // Only the pages up to the end of the record hold anything; the rest
    // of the segment is zeros, sent as a sparse hole.
    let used = end.0.saturating_sub(lsn.segment_start(seg_size).0).next_multiple_of(XLOG_BLCKSZ as u64).min(seg_size) as usize;
    let used_bytes = segment.get(..used).ok_or_else(|| BasebackupError::Invalid(format!("checkpoint WAL at {lsn}: record ends past its segment")))?;
    control.set_checkpoint(record_lsn, &checkpoint);
    control.set_state(DbState::Shutdowned);
    control.set_time(checkpoint.time);
    control.clear_recovery_fields();
    tar.file("global/pg_control", &control.encode()).await?;
    tar.sparse_file(&format!("pg_wal/{}", lsn.segment_file_name(1, seg_size)), used_bytes, seg_size).await
}

/// A timeline's key space as a basebackup source.
impl BasebackupSource for crate::tenant::timeline::Timeline {
    async fn databases(&self, lsn: Lsn) -> Result<Vec<(u32, u32)>, String> {
        Ok(self.list_dbs(lsn).await.map_err(|e| e.to_string())?.into_iter().collect())
    }
    async fn relations(&self, spc: u32, db: u32, lsn: Lsn) -> Result<Vec<(RelFileNode, u8)>, String> {
        let rels = self.list_rels(spc, db, lsn).await.map_err(|e| e.to_string())?;
        Ok(rels.into_iter().map(|(rel_node, fork)| (RelFileNode { spc_node: spc, db_node: db, rel_node }, fork)).collect())
    }
    async fn rel_size(&self, rel: RelFileNode, fork: u8, lsn: Lsn) -> Result<u32, String> {
        crate::tenant::timeline::Timeline::rel_size(self, rel, fork, lsn).await.map_err(|e| e.to_string())
    }
    async fn rel_sizes(&self, rels: &[(RelFileNode, u8)], lsn: Lsn) -> Result<Vec<u32>, String> {
        use crate::storage::key::rel_size_key;
        // The forks are listed in the relation directory, so a missing size
        // key means an empty fork (as `Timeline::rel_size` has it).
        let keys: Vec<_> = rels.iter().map(|&(rel, fork)| rel_size_key(rel, fork)).collect();
        let values = self.get_vectored(&keys, lsn).await;
        rels.iter()
            .zip(values)
            .map(|(&(rel, fork), value)| match value.map_err(|e| format!("size of {rel} fork {fork}: {e}"))? {
                Some(raw) => crate::storage::value::decode_u32(&raw).map_err(|e| format!("size of {rel} fork {fork}: {e}")),
                None => Ok(0),
            })
            .collect()
    }
    async fn page(&self, rel: RelFileNode, fork: u8, blkno: u32, lsn: Lsn) -> Result<Bytes, String> {
        self.rel_page(rel, fork, blkno, lsn).await.map_err(|e| e.to_string())
    }
    async fn pages(&self, rel: RelFileNode, fork: u8, blocks: std::ops::Range<u32>, lsn: Lsn) -> Result<Vec<Bytes>, String> {
        self.rel_page_range(rel, fork, blocks, lsn).await.map_err(|e| e.to_string())
    }
    async fn relmap_file(&self, spc: u32, db: u32, lsn: Lsn) -> Result<Option<Bytes>, String> {
        crate::tenant::timeline::Timeline::relmap_file(self, spc, db, lsn).await.map_err(|e| e.to_string())
    }
    async fn slru_segments(&self, kind: SlruKind, lsn: Lsn) -> Result<Vec<u32>, String> {
        Ok(self.list_slru_segments(kind, lsn).await.map_err(|e| e.to_string())?.into_iter().collect())
    }
    async fn slru_segment(&self, kind: SlruKind, segno: u32, lsn: Lsn) -> Result<Bytes, String> {
        self.read_slru_segment(kind, segno, lsn).await.map_err(|e| e.to_string())
    }
    async fn twophase_files(&self, lsn: Lsn) -> Result<Vec<(u32, Bytes)>, String> {
        let mut out = Vec::new();
        for xid in self.list_twophase(lsn).await.map_err(|e| e.to_string())? {
            let data = self.get(crate::storage::key::twophase_file_key(xid), lsn).await.map_err(|e| e.to_string())?;
            out.push((xid, data));
        }
        Ok(out)
    }
    async fn control_file(&self, lsn: Lsn) -> Result<Bytes, String> {
        crate::tenant::timeline::Timeline::control_file(self, lsn).await.map_err(|e| e.to_string())
    }
    async fn checkpoint(&self, lsn: Lsn) -> Result<CheckPoint, String> {
        let raw = crate::tenant::timeline::Timeline::checkpoint(self, lsn).await.map_err(|e| e.to_string())?;
        CheckPoint::decode(&raw).ok_or_else(|| format!("stored checkpoint is {} bytes", raw.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn sparse_entry_unpacks_to_the_whole_file_but_sends_only_its_data() {
        let data: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8 + 1).collect();
        let real_size: u64 = 16 << 20;
        // Written: header, data, the next entry and the end; not 16 MiB.
        let mut out = Vec::new();
        let mut tar = TarWriter { out: &mut out, mtime: 0, stats: BasebackupStats::default(), manifest: None };
        tar.sparse_file("seg", &data, real_size).await.unwrap();
        tar.file("after", b"next entry").await.unwrap();
        let bytes_sent = tar.finish().await.unwrap().bytes;
        assert!(bytes_sent < 20 << 10, "{bytes_sent} bytes for a 16 KiB sparse entry");

        let mut entries = Vec::new();
        for entry in tar::Archive::new(&out[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            entries.push((entry.path().unwrap().display().to_string(), content));
        }
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, "seg");
        assert_eq!(entries[0].1.len() as u64, real_size);
        assert_eq!(&entries[0].1[..data.len()], &data[..]);
        assert!(entries[0].1[data.len()..].iter().all(|&b| b == 0), "the hole reads as zeros");
        assert_eq!(entries[1], ("after".to_string(), b"next entry".to_vec()));

        let dir = tempfile::tempdir().unwrap();
        tar::Archive::new(&out[..]).unpack(dir.path()).unwrap();
        let unpacked = std::fs::read(dir.path().join("seg")).unwrap();
        assert_eq!(unpacked.len() as u64, real_size);
        assert_eq!(&unpacked[..data.len()], &data[..]);
    }

    #[tokio::test]
    async fn sparse_entry_longer_than_its_file_is_refused() {
        let mut tar = TarWriter { out: Vec::new(), mtime: 0, stats: BasebackupStats::default(), manifest: None };
        let err = tar.sparse_file("seg", &[1u8; 1024], 512).await.unwrap_err();
        assert!(err.to_string().contains("seg"), "{err}");
    }
}
