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
//! `pg_wal`; otherwise the import fails and nothing is kept. The values are
//! held in memory until the import is flushed to one layer file, so the
//! data directory must fit in memory (fine for initdb output and tests).
//! User tablespaces (`pg_tblspc`) are not imported.
//!
//! Cancellation: file reading runs in `spawn_blocking`; dropping the import
//! leaves an unfinished timeline directory without an index.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use postgres_ffi::pg_constants::*;
use postgres_ffi::{DecodedRecord, RelFileNode, WalStreamDecoder};
use utils::lsn::Lsn;

use crate::storage::key::*;
use crate::tenant::timeline::{PageReconstructError, Timeline};
use crate::storage::value::*;
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

/// Every key/value of the data directory (blocking).
pub fn scan_datadir(pgdata: &Path, control: &ControlInfo) -> Result<Vec<(Key, Bytes)>, ImportError> {
    let mut out: Vec<(Key, Bytes)> = Vec::new();
    let mut dbdir = BTreeSet::new();
    let mut dirs = vec![(GLOBALTABLESPACE_OID, 0u32, pgdata.join("global"))];
    let base = pgdata.join("base");
    for entry in fs::read_dir(&base).map_err(|e| file_err(&base, e))? {
        let entry = entry.map_err(|e| file_err(&base, e))?;
        if let Some(db) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
            dirs.push((DEFAULTTABLESPACE_OID, db, entry.path()));
        }
    }
    for (spc, db, dir) in dirs {
        dbdir.insert((spc, db));
        import_rel_dir(&mut out, spc, db, &dir)?;
    }
    out.push((DBDIR_KEY, encode_dbdir(&dbdir)));
    for kind in ALL_SLRU_KINDS {
        import_slru(&mut out, kind, &pgdata.join(slru_dir_name(kind)))?;
    }
    let twophase = pgdata.join("pg_twophase");
    let mut xids = BTreeSet::new();
    if let Ok(entries) = fs::read_dir(&twophase) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let (8, Ok(xid)) = (name.len(), u32::from_str_radix(&name, 16)) {
                let data = fs::read(entry.path()).map_err(|e| file_err(&entry.path(), e))?;
                out.push((twophase_file_key(xid), Bytes::from(data)));
                xids.insert(xid);
            }
        }
    }
    out.push((TWOPHASEDIR_KEY, encode_u32_set(&xids)));
    out.push((CONTROLFILE_KEY, control.raw.clone()));
    out.push((CHECKPOINT_KEY, control.checkpoint.clone()));
    Ok(out)
}

/// Relation files `<relnode>[_fsm|_vm|_init][.segno]` and `pg_filenode.map`.
fn import_rel_dir(out: &mut Vec<(Key, Bytes)>, spc: u32, db: u32, dir: &Path) -> Result<(), ImportError> {
    let mut sizes: BTreeMap<(u32, u8), u32> = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| file_err(dir, e))? {
        let entry = entry.map_err(|e| file_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if name == "pg_filenode.map" {
            let data = fs::read(&path).map_err(|e| file_err(&path, e))?;
            out.push((relmap_file_key(spc, db), Bytes::from(data)));
            continue;
        }
        let Some((rel_node, fork, segno)) = parse_rel_file_name(&name) else { continue };
        let data = fs::read(&path).map_err(|e| file_err(&path, e))?;
        if data.len() % BLCKSZ != 0 {
            return Err(file_err(&path, format!("size {} is not a multiple of {BLCKSZ}", data.len())));
        }
        let data = Bytes::from(data);
        let rel = RelFileNode { spc_node: spc, db_node: db, rel_node };
        let first = segno * RELSEG_SIZE;
        let nblocks = (data.len() / BLCKSZ) as u32;
        for i in 0..nblocks {
            let page = data.slice(i as usize * BLCKSZ..(i as usize + 1) * BLCKSZ);
            out.push((rel_block_key(rel, fork, first + i), page));
        }
        let size = sizes.entry((rel_node, fork)).or_default();
        *size = (*size).max(first + nblocks);
    }
    let dir_set: BTreeSet<(u32, u8)> = sizes.keys().copied().collect();
    for ((rel_node, fork), n) in sizes {
        let rel = RelFileNode { spc_node: spc, db_node: db, rel_node };
        out.push((rel_size_key(rel, fork), encode_u32(n)));
    }
    out.push((rel_dir_key(spc, db), encode_reldir(&dir_set)));
    Ok(())
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

fn import_slru(out: &mut Vec<(Key, Bytes)>, kind: crate::walredo::SlruKind, dir: &Path) -> Result<(), ImportError> {
    let mut segs = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(|e| file_err(dir, e))? {
        let entry = entry.map_err(|e| file_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(segno) = u32::from_str_radix(&name, 16) else { continue };
        let data = Bytes::from(fs::read(entry.path()).map_err(|e| file_err(&entry.path(), e))?);
        let npages = (data.len() / BLCKSZ) as u32;
        for i in 0..npages {
            let page = data.slice(i as usize * BLCKSZ..(i as usize + 1) * BLCKSZ);
            out.push((slru_block_key(kind, segno, i), page));
        }
        out.push((slru_segment_size_key(kind, segno), encode_u32(npages)));
        segs.insert(segno);
    }
    out.push((slru_dir_key(kind), encode_u32_set(&segs)));
    Ok(())
}

/// Import `pgdata` into the empty timeline `tl` at `control.checkpoint_end`
/// and flush it to a layer file (which also writes the index).
pub async fn import_datadir(tl: &Timeline, pgdata: &Path, control: &ControlInfo) -> Result<Lsn, ImportError> {
    let lsn = control.checkpoint_end;
    let (dir, c) = (pgdata.to_path_buf(), control.clone());
    let values = tokio::task::spawn_blocking(move || scan_datadir(&dir, &c))
        .await
        .map_err(|e| file_err(pgdata, e))??;
    {
        let _w = tl.write_lock.lock().await;
        let items = values.into_iter().map(|(k, v)| (k, lsn, Value::Image(v))).collect();
        tl.put_batch(items)?;
        tl.finish_write(lsn);
        tl.set_prev_record_lsn(control.checkpoint_loc);
        tl.freeze_locked();
    }
    tl.flush_frozen_layers().await?;
    Ok(lsn)
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

