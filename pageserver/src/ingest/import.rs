//! Import of a cleanly shut down PostgreSQL 15 data directory as the first
//! state of a root timeline: every block of every relation file (all forks,
//! all segments) as a page image, the SLRUs (pg_xact, pg_multixact offsets
//! and members), two-phase state files, relmapper files, `pg_control` and
//! the last checkpoint, all at the LSN where the shutdown checkpoint record
//! ends (the first byte of WAL written after it). Blocks written by
//! initdb's bootstrap have no WAL, so this is how they get in.
//!
//! Invariants: the directory must be shut down cleanly (`pg_control` state
//! "shut down", CRC valid) and its checkpoint record readable from its
//! `pg_wal`; otherwise the import fails and nothing is kept. User
//! tablespaces (`pg_tblspc`) are not imported.
//!
//! Streaming: the directory is read in key order (files listed first,
//! relation files read in 1 MiB chunks) straight into image layer files at
//! the import LSN, each cut at a key boundary once it holds about
//! `checkpoint_distance` bytes; their key ranges together cover the key
//! space. Memory is a read buffer, one file writer's buffers and the list
//! of finished files — independent of the directory's size. The index
//! naming the files is written last, so a failed or interrupted import
//! leaves a directory without an index, which does not load as a timeline
//! (the repository removes it on error; a restart skips it).
//!
//! Cancellation: reading and writing run in one `spawn_blocking` task;
//! dropping the import lets that task finish on its own thread and leaves
//! an unfinished timeline directory without an index.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use postgres_ffi::pg_constants::*;
use postgres_ffi::{DecodedRecord, RelFileNode, WalStreamDecoder};
use tracing::{info, instrument};
use utils::lsn::Lsn;

use crate::storage::file::{LayerFile, LayerFileWriter};
use crate::storage::key::*;
use crate::storage::value::*;
use crate::storage::LayerDesc;
use crate::tenant::timeline::{PageReconstructError, Timeline};
use postgres_ffi::controlfile::{ControlFile, DbState};

/// Blocks per relation segment file (`RELSEG_SIZE`).
const RELSEG_SIZE: u32 = 131072;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    Timeline(#[from] PageReconstructError),
    #[error("initdb: {0}")]
    Initdb(String),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> ImportError {
    ImportError::File { path: path.display().to_string(), reason: reason.to_string() }
}

/// What the import needs from `pg_control` (and the WAL it points at).
#[derive(Clone, Debug)]
pub struct ControlInfo {
    pub system_id: u64,
    pub checkpoint_loc: Lsn,
    /// End of the checkpoint record: the import LSN.
    pub checkpoint_end: Lsn,
    pub checkpoint: Bytes,
    pub wal_seg_size: u64,
    pub timeline: u32,
    pub raw: Bytes,
}

/// Read and check `global/pg_control` and find the end of its checkpoint
/// record in `pg_wal`.
pub fn read_control_info(pgdata: &Path) -> Result<ControlInfo, ImportError> {
    let path = pgdata.join("global/pg_control");
    let raw = fs::read(&path).map_err(|e| file_err(&path, e))?;
    let control = ControlFile::parse(&raw).map_err(|e| file_err(&path, e))?;
    if control.state() != DbState::Shutdowned {
        return Err(file_err(&path, format!("cluster state is {:?}, not \"shut down\"", control.state())));
    }
    let seg = control.wal_seg_size() as u64;
    if !(seg.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg)) {
        return Err(file_err(&path, format!("implausible WAL segment size {seg}")));
    }
    let (system_id, checkpoint_loc, checkpoint) = (control.system_identifier(), control.checkpoint_lsn(), control.checkpoint());
    let timeline = checkpoint.this_timeline_id;
    let checkpoint_end = checkpoint_record_end(pgdata, checkpoint_loc, timeline, seg, system_id)?;
    Ok(ControlInfo {
        system_id,
        checkpoint_loc,
        checkpoint_end,
        checkpoint: Bytes::copy_from_slice(&checkpoint.encode()),
        wal_seg_size: seg,
        timeline,
        raw: Bytes::from(raw),
    })
}

fn checkpoint_record_end(pgdata: &Path, loc: Lsn, tli: u32, seg_size: u64, system_id: u64) -> Result<Lsn, ImportError> {
    let path = pgdata.join("pg_wal").join(loc.segment_file_name(tli, seg_size));
    let mut file = fs::File::open(&path).map_err(|e| file_err(&path, e))?;
    let mut buf = vec![0u8; seg_size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(file_err(&path, e)),
        }
    }
    let offset = loc.segment_offset(seg_size) as usize;
    let mut decoder = WalStreamDecoder::new(loc, seg_size).expect_system_id(system_id);
    let tail = buf.get(offset..filled).ok_or_else(|| file_err(&path, format!("file ends before the checkpoint record at {loc}")))?;
    decoder.feed_bytes(tail);
    let rec = match decoder.poll_decode() {
        Ok(Some(rec)) => rec,
        Ok(None) => return Err(file_err(&path, format!("checkpoint record at {loc} is incomplete"))),
        Err(e) => return Err(file_err(&path, e)),
    };
    let decoded = DecodedRecord::decode(rec.start_lsn, rec.bytes).map_err(|e| file_err(&path, e))?;
    if decoded.header.xl_rmid != 0 || decoded.header.rmgr_info() != XLOG_CHECKPOINT_SHUTDOWN {
        return Err(file_err(&path, format!("record at {loc} is not a shutdown checkpoint")));
    }
    Ok(rec.end_lsn)
}

/// Where [`scan_datadir`] sends the values, in key order.
pub type Sink<'a> = dyn FnMut(Key, Bytes) -> Result<(), ImportError> + 'a;

/// Send every key/value of the data directory to `sink`, in key order
/// (see [`crate::storage::key`]): the database directory; per database
/// its relmapper file, relation directory, then per relation fork its
/// blocks and size; the SLRUs; two-phase state; `pg_control` and the
/// checkpoint. Files are listed first (names only) and read in chunks of
/// [`READ_CHUNK_BYTES`], so memory does not depend on their sizes.
/// Blocking.
pub fn scan_datadir(pgdata: &Path, control: &ControlInfo, sink: &mut Sink<'_>) -> Result<(), ImportError> {
    let mut dirs = vec![(GLOBALTABLESPACE_OID, 0u32, pgdata.join("global"))];
    let base = pgdata.join("base");
    for entry in fs::read_dir(&base).map_err(|e| file_err(&base, e))? {
        let entry = entry.map_err(|e| file_err(&base, e))?;
        if let Some(db) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
            dirs.push((DEFAULTTABLESPACE_OID, db, entry.path()));
        }
    }
    dirs.sort();
    let dbdir: BTreeSet<(u32, u32)> = dirs.iter().map(|(spc, db, _)| (*spc, *db)).collect();
    sink(DBDIR_KEY, encode_dbdir(&dbdir))?;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    for (spc, db, dir) in dirs {
        import_rel_dir(sink, &mut buf, spc, db, &dir)?;
    }
    for kind in ALL_SLRU_KINDS {
        import_slru(sink, kind, &pgdata.join(slru_dir_name(kind)))?;
    }
    let twophase = pgdata.join("pg_twophase");
    let mut files = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(&twophase) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let (8, Ok(xid)) = (name.len(), u32::from_str_radix(&name, 16)) {
                files.insert(xid, entry.path());
            }
        }
    }
    let xids: BTreeSet<u32> = files.keys().copied().collect();
    sink(TWOPHASEDIR_KEY, encode_u32_set(&xids))?;
    for (xid, path) in files {
        let data = fs::read(&path).map_err(|e| file_err(&path, e))?;
        sink(twophase_file_key(xid), Bytes::from(data))?;
    }
    sink(CONTROLFILE_KEY, control.raw.clone())?;
    sink(CHECKPOINT_KEY, control.checkpoint.clone())?;
    Ok(())
}

/// Bytes read from a relation file at a time.
pub const READ_CHUNK_BYTES: usize = 1 << 20;

/// Relation files `<relnode>[_fsm|_vm|_init][.segno]` and `pg_filenode.map`.
fn import_rel_dir(sink: &mut Sink<'_>, buf: &mut [u8], spc: u32, db: u32, dir: &Path) -> Result<(), ImportError> {
    let mut relmap = None;
    // (rel, fork) → segno → file.
    let mut forks: BTreeMap<(u32, u8), BTreeMap<u32, std::path::PathBuf>> = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| file_err(dir, e))? {
        let entry = entry.map_err(|e| file_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name == "pg_filenode.map" {
            relmap = Some(entry.path());
            continue;
        }
        let Some((rel_node, fork, segno)) = parse_rel_file_name(&name) else { continue };
        forks.entry((rel_node, fork)).or_default().insert(segno, entry.path());
    }
    if let Some(path) = relmap {
        let data = fs::read(&path).map_err(|e| file_err(&path, e))?;
        sink(relmap_file_key(spc, db), Bytes::from(data))?;
    }
    let dir_set: BTreeSet<(u32, u8)> = forks.keys().copied().collect();
    sink(rel_dir_key(spc, db), encode_reldir(&dir_set))?;
    for ((rel_node, fork), segments) in forks {
        let rel = RelFileNode { spc_node: spc, db_node: db, rel_node };
        let mut size = 0u32;
        for (segno, path) in segments {
            let first = segno.checked_mul(RELSEG_SIZE).ok_or_else(|| file_err(&path, "segment number too large"))?;
            let end = stream_blocks(&path, first, buf, |blkno, page| sink(rel_block_key(rel, fork, blkno), page))?;
            size = size.max(end);
        }
        sink(rel_size_key(rel, fork), encode_u32(size))?;
    }
    Ok(())
}

/// Read the relation segment file `path`, whose first block is the
/// relation's block `first`, in chunks, calling `f` with each (relation)
/// block number and page; returns the block number after its last. A file
/// larger than a segment (`RELSEG_SIZE` blocks), or one reaching past
/// PostgreSQL's last block number, is refused: no block number wraps.
fn stream_blocks(
    path: &Path,
    first: u32,
    buf: &mut [u8],
    mut f: impl FnMut(u32, Bytes) -> Result<(), ImportError>,
) -> Result<u32, ImportError> {
    let mut file = fs::File::open(path).map_err(|e| file_err(path, e))?;
    let len = file.metadata().map_err(|e| file_err(path, e))?.len();
    if len % BLCKSZ as u64 != 0 {
        return Err(file_err(path, format!("size {len} is not a multiple of {BLCKSZ}")));
    }
    let end = segment_end(first, len / BLCKSZ as u64).map_err(|reason| file_err(path, reason))?;
    let mut blkno = first;
    while blkno < end {
        let n = ((end - blkno) as usize).min(buf.len() / BLCKSZ);
        let chunk = &mut buf[..n * BLCKSZ];
        file.read_exact(chunk).map_err(|e| file_err(path, format!("read block {}: {e}", blkno - first)))?;
        for (i, page) in chunk.chunks_exact(BLCKSZ).enumerate() {
            f(blkno + i as u32, Bytes::copy_from_slice(page))?;
        }
        blkno += n as u32;
    }
    Ok(end)
}

/// The relation block number after a segment of `nblocks` blocks starting
/// at `first`, if the segment is a valid one.
fn segment_end(first: u32, nblocks: u64) -> Result<u32, String> {
    if nblocks > RELSEG_SIZE as u64 {
        return Err(format!("{nblocks} blocks, more than a relation segment ({RELSEG_SIZE})"));
    }
    // The last block is then at most u32::MAX - 1, PostgreSQL's MaxBlockNumber.
    first
        .checked_add(nblocks as u32)
        .ok_or_else(|| format!("blocks {first}.. (+{nblocks}) pass the last block number"))
}

/// `16384`, `16384_vm`, `16384.1`, `16384_fsm.2` → (rel, fork, segno).
pub fn parse_rel_file_name(name: &str) -> Option<(u32, u8, u32)> {
    let (stem, segno) = match name.split_once('.') {
        Some((s, n)) => (s, n.parse().ok()?),
        None => (name, 0),
    };
    let (rel, fork) = match stem.split_once('_') {
        Some((r, f)) => (r, postgres_ffi::relfile::fork_number(f)?),
        None => (stem, MAIN_FORKNUM),
    };
    if rel.is_empty() || !rel.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((rel.parse().ok()?, fork, segno))
}

fn import_slru(sink: &mut Sink<'_>, kind: crate::walredo::SlruKind, dir: &Path) -> Result<(), ImportError> {
    let mut segs = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| file_err(dir, e))? {
        let entry = entry.map_err(|e| file_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(segno) = u32::from_str_radix(&name, 16) else { continue };
        segs.insert(segno, entry.path());
    }
    let segnos: BTreeSet<u32> = segs.keys().copied().collect();
    sink(slru_dir_key(kind), encode_u32_set(&segnos))?;
    for (segno, path) in segs {
        // An SLRU segment is at most 32 pages.
        let data = Bytes::from(fs::read(&path).map_err(|e| file_err(&path, e))?);
        let npages = (data.len() / BLCKSZ) as u32;
        for i in 0..npages {
            let page = data.slice(i as usize * BLCKSZ..(i as usize + 1) * BLCKSZ);
            sink(slru_block_key(kind, segno, i), page)?;
        }
        sink(slru_segment_size_key(kind, segno), encode_u32(npages))?;
    }
    Ok(())
}

/// Writes the values of an import, in key order, to image layer files at
/// one LSN, cut at a key boundary once a file holds `target_bytes`; the
/// files' key ranges are contiguous and cover the whole key space.
struct ImageLayerSink {
    dir: std::path::PathBuf,
    lsn: Lsn,
    generation: u32,
    target_bytes: u64,
    writer: Option<LayerFileWriter>,
    files: Vec<LayerFile>,
    stats: ImportStats,
}

/// What an import wrote.
#[derive(Clone, Debug, Default)]
pub struct ImportStats {
    /// Values (pages and metadata) imported.
    pub values: u64,
    /// Bytes of values read from the data directory.
    pub value_bytes: u64,
    /// Image layer files written.
    pub layer_files: usize,
    /// Bytes of the largest layer file.
    pub max_layer_file_bytes: u64,
}

impl ImageLayerSink {
    fn writer_from(&self, start: Key) -> Result<LayerFileWriter, ImportError> {
        let desc = LayerDesc { key_range: start..Key::MAX, lsn_range: self.lsn..self.lsn + 1, is_image: true, generation: self.generation };
        LayerFileWriter::new(&self.dir, desc).map_err(|e| file_err(&self.dir, format!("creating an image layer: {e}")))
    }

    fn put(&mut self, key: Key, value: Bytes) -> Result<(), ImportError> {
        let mut w = match self.writer.take() {
            Some(mut w) if w.bytes_written() >= self.target_bytes && w.last_key() != Some(key) => {
                w.set_key_end(key);
                self.finish_file(w)?;
                self.writer_from(key)?
            }
            Some(w) => w,
            None => self.writer_from(Key::MIN)?,
        };
        self.stats.values += 1;
        self.stats.value_bytes += value.len() as u64;
        w.put(key, self.lsn, &Value::Image(value)).map_err(|e| file_err(&self.dir, format!("writing an image layer: {e}")))?;
        self.writer = Some(w);
        Ok(())
    }

    fn finish_file(&mut self, w: LayerFileWriter) -> Result<(), ImportError> {
        let file = w.finish().map_err(|e| file_err(&self.dir, format!("writing an image layer: {e}")))?;
        self.stats.layer_files += 1;
        self.stats.max_layer_file_bytes = self.stats.max_layer_file_bytes.max(file.size_bytes);
        self.files.push(file);
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<LayerFile>, ImportStats), ImportError> {
        let w = match self.writer.take() {
            Some(w) => w,
            None => self.writer_from(Key::MIN)?,
        };
        self.finish_file(w)?;
        Ok((self.files, self.stats))
    }
}

/// Import `pgdata` into the empty timeline `tl` at `control.checkpoint_end`:
/// image layer files of about `checkpoint_distance` bytes each, written
/// while the directory is read (one blocking task), then the index naming
/// them. Until the index is written the directory does not load as a
/// timeline; on error the caller removes it.
pub async fn import_datadir(tl: &Timeline, pgdata: &Path, control: &ControlInfo) -> Result<Lsn, ImportError> {
    Ok(import_datadir_stats(tl, pgdata, control).await?.0)
}

/// [`import_datadir`], with what it wrote.
#[instrument(skip_all, fields(tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id))]
pub async fn import_datadir_stats(tl: &Timeline, pgdata: &Path, control: &ControlInfo) -> Result<(Lsn, ImportStats), ImportError> {
    let lsn = control.checkpoint_end;
    let sink = ImageLayerSink {
        dir: tl.path.clone(),
        lsn,
        generation: tl.generation,
        target_bytes: tl.conf().checkpoint_distance.max(1) as u64,
        writer: None,
        files: Vec::new(),
        stats: ImportStats::default(),
    };
    let (dir, c) = (pgdata.to_path_buf(), control.clone());
    let (files, stats) = tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        scan_datadir(&dir, &c, &mut |k, v| sink.put(k, v))?;
        sink.finish()
    })
    .await
    .map_err(|e| file_err(pgdata, e))??;
    tl.commit_import(files.into_iter().map(Arc::new).collect(), lsn, control.checkpoint_loc).await?;
    info!(%lsn, values = stats.values, bytes = stats.value_bytes, layer_files = stats.layer_files, "imported data directory");
    Ok((lsn, stats))
}

/// A fresh cluster made by stock `initdb` (as the unprivileged user) in a
/// temporary directory, cleanly shut down and ready for [`import_datadir`].
/// The directory is removed when the returned guard drops.
pub fn run_initdb() -> Result<(tempfile::TempDir, std::path::PathBuf), ImportError> {
    let fail = |what: &str, e: String| ImportError::Initdb(format!("{what}: {e}"));
    let user = utils::pg_user::PgUser::from_env().map_err(|e| fail("unprivileged user", e.to_string()))?;
    let root = tempfile::Builder::new().prefix("strata-initdb-").tempdir().map_err(|e| fail("temp dir", e.to_string()))?;
    user.chown(root.path()).map_err(|e| fail("chown", e.to_string()))?;
    let pgdata = root.path().join("pgdata");
    let out = user
        .command(utils::pg_user::pg_bin_dir().join("initdb"))
        .arg("-D")
        .arg(&pgdata)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N", "--no-instructions"])
        .output()
        .map_err(|e| fail("run initdb", e.to_string()))?;
    if !out.status.success() {
        return Err(fail("initdb", String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok((root, pgdata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_block_numbers_never_wrap() {
        assert_eq!(segment_end(0, 0), Ok(0));
        assert_eq!(segment_end(RELSEG_SIZE, RELSEG_SIZE as u64), Ok(2 * RELSEG_SIZE));
        assert!(segment_end(0, RELSEG_SIZE as u64 + 1).is_err(), "larger than a segment");
        let last_first = 32767 * RELSEG_SIZE; // the last segment number that fits
        assert_eq!(segment_end(last_first, RELSEG_SIZE as u64 - 1), Ok(u32::MAX));
        assert!(segment_end(last_first, RELSEG_SIZE as u64).is_err(), "wraps past u32::MAX");
    }

    #[test]
    fn relation_file_names() {
        assert_eq!(parse_rel_file_name("16384"), Some((16384, 0, 0)));
        assert_eq!(parse_rel_file_name("16384_vm"), Some((16384, 2, 0)));
        assert_eq!(parse_rel_file_name("16384_fsm.3"), Some((16384, 1, 3)));
        assert_eq!(parse_rel_file_name("16384_init"), Some((16384, 3, 0)));
        assert_eq!(parse_rel_file_name("pg_internal.init"), None);
        assert_eq!(parse_rel_file_name("PG_VERSION"), None);
        assert_eq!(parse_rel_file_name("t3_16384"), None);
        assert_eq!(parse_rel_file_name("16384_bogus"), None);
    }
}

