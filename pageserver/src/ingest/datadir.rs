//! [`DatadirModification`]: the changes one WAL record (or one import step)
//! makes to a timeline, expressed in PostgreSQL terms (relation created,
//! extended, truncated, dropped; database created or dropped; SLRU segment
//! created; relmapper file written) and turned into key/value writes.
//!
//! Invariants: every write of a modification is at the same LSN; nothing
//! is visible to readers until [`DatadirModification::commit`], which adds
//! all values to the open layer and only then advances `last_record_lsn`;
//! reads inside a modification see its own pending metadata writes.
//! Callers hold the timeline's `write_lock` from creation to commit.
//!
//! Cancellation: dropping a modification before `commit` discards it.
use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

use crate::storage::key::*;
use crate::tenant::timeline::{PageReconstructError, Result, Timeline};
use crate::storage::value::*;
use crate::walredo::{SlruKind, WalRecord};

pub struct DatadirModification<'a> {
    pub tline: &'a Timeline,
    pub lsn: Lsn,
    pending: Vec<(Key, Value)>,
    pending_images: HashMap<Key, Bytes>,
    size_updates: Vec<(RelFileNode, u8, Option<u32>)>,
    clear_size_cache: bool,
}

fn corrupt(key: Key) -> impl FnOnce(String) -> PageReconstructError {
    move |reason| PageReconstructError::Corrupt { key, reason }
}

impl<'a> DatadirModification<'a> {
    pub fn new(tline: &'a Timeline, lsn: Lsn) -> Self {
        DatadirModification {
            tline,
            lsn,
            pending: Vec::new(),
            pending_images: HashMap::new(),
            size_updates: Vec::new(),
            clear_size_cache: false,
        }
    }

    pub fn put(&mut self, key: Key, value: Value) {
        self.pending.push((key, value));
    }

    pub fn put_record(&mut self, key: Key, rec: WalRecord) {
        self.put(key, Value::WalRecord(rec));
    }

    pub fn put_image(&mut self, key: Key, img: Bytes) {
        self.pending_images.insert(key, img.clone());
        self.pending.push((key, Value::Image(img)));
    }

    /// The latest image of a metadata key (pending writes first).
    pub async fn get_image(&self, key: Key) -> Result<Option<Bytes>> {
        if let Some(img) = self.pending_images.get(&key) {
            return Ok(Some(img.clone()));
        }
        match self.tline.get(key, self.tline.last_record_lsn()).await {
            Ok(v) => Ok(Some(v)),
            Err(PageReconstructError::MissingKey { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Make the modification visible: values first, then the LSN.
    pub fn commit(self) -> Result<()> {
        let lsn = self.lsn;
        let items = self.pending.into_iter().map(|(k, v)| (k, lsn, v)).collect();
        self.tline.put_batch(items)?;
        // Before last_record_lsn passes `lsn` (see timeline::relcache).
        if self.clear_size_cache {
            self.tline.invalidate_rel_sizes(lsn);
        }
        for (rel, fork, size) in self.size_updates {
            self.tline.ingested_rel_size(rel, fork, lsn, size);
        }
        self.tline.finish_write(lsn);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    // --- databases -------------------------------------------------------

    pub async fn dbdir(&self) -> Result<BTreeSet<(u32, u32)>> {
        match self.get_image(DBDIR_KEY).await? {
            Some(b) => decode_dbdir(&b).map_err(corrupt(DBDIR_KEY)),
            None => Ok(BTreeSet::new()),
        }
    }

    pub async fn reldir(&self, spc: u32, db: u32) -> Result<BTreeSet<(u32, u8)>> {
        let key = rel_dir_key(spc, db);
        match self.get_image(key).await? {
            Some(b) => decode_reldir(&b).map_err(corrupt(key)),
            None => Ok(BTreeSet::new()),
        }
    }

    /// Add a database (and an empty relation directory) if missing.
    pub async fn put_db_creation(&mut self, spc: u32, db: u32) -> Result<()> {
        let mut dir = self.dbdir().await?;
        if dir.insert((spc, db)) {
            self.put_image(DBDIR_KEY, encode_dbdir(&dir));
            if self.get_image(rel_dir_key(spc, db)).await?.is_none() {
                self.put_image(rel_dir_key(spc, db), encode_reldir(&BTreeSet::new()));
            }
        }
        Ok(())
    }

    pub async fn put_db_drop(&mut self, spc: u32, db: u32) -> Result<()> {
        let mut dir = self.dbdir().await?;
        if dir.remove(&(spc, db)) {
            self.put_image(DBDIR_KEY, encode_dbdir(&dir));
        }
        self.put_image(rel_dir_key(spc, db), encode_reldir(&BTreeSet::new()));
        self.clear_size_cache = true;
        Ok(())
    }

    pub async fn put_relmap_file(&mut self, spc: u32, db: u32, data: Bytes) -> Result<()> {
        self.put_image(relmap_file_key(spc, db), data);
        self.put_db_creation(spc, db).await
    }

    // --- relations -------------------------------------------------------

    /// Latest size of a relation fork, `None` if it does not exist.
    pub async fn rel_size(&self, rel: RelFileNode, forknum: u8) -> Result<Option<u32>> {
        let key = rel_size_key(rel, forknum);
        if let Some(img) = self.pending_images.get(&key) {
            if !self.rel_in_dir(rel, forknum).await? {
                return Ok(None);
            }
            return decode_u32(img).map(Some).map_err(corrupt(key));
        }
        if !self.clear_size_cache {
            if let Some(n) = self.tline.cached_rel_size(rel, forknum) {
                if !self.size_updates.iter().any(|(r, f, _)| *r == rel && *f == forknum) {
                    return Ok(Some(n));
                }
            }
        }
        if !self.rel_in_dir(rel, forknum).await? {
            return Ok(None);
        }
        let n = match self.get_image(key).await? {
            Some(b) => decode_u32(&b).map_err(corrupt(key))?,
            None => 0,
        };
        if !self.pending_images.contains_key(&rel_dir_key(rel.spc_node, rel.db_node)) {
            self.tline.observed_rel_size(rel, forknum, n);
        }
        Ok(Some(n))
    }

    async fn rel_in_dir(&self, rel: RelFileNode, forknum: u8) -> Result<bool> {
        Ok(self.reldir(rel.spc_node, rel.db_node).await?.contains(&(rel.rel_node, forknum)))
    }

    fn set_size(&mut self, rel: RelFileNode, forknum: u8, n: u32) {
        self.put_image(rel_size_key(rel, forknum), encode_u32(n));
        self.size_updates.push((rel, forknum, Some(n)));
    }

    /// Create a relation fork of `nblocks` blocks (no-op if it exists).
    pub async fn put_rel_creation(&mut self, rel: RelFileNode, forknum: u8, nblocks: u32) -> Result<()> {
        let mut dir = self.reldir(rel.spc_node, rel.db_node).await?;
        if !dir.insert((rel.rel_node, forknum)) {
            return Ok(());
        }
        if !self.dbdir().await?.contains(&(rel.spc_node, rel.db_node)) {
            self.put_db_creation(rel.spc_node, rel.db_node).await?;
        }
        self.put_image(rel_dir_key(rel.spc_node, rel.db_node), encode_reldir(&dir));
        self.set_size(rel, forknum, nblocks);
        Ok(())
    }

    /// Grow the relation to at least `nblocks` (creating it if needed).
    pub async fn put_rel_extend(&mut self, rel: RelFileNode, forknum: u8, nblocks: u32) -> Result<()> {
        match self.rel_size(rel, forknum).await? {
            None => self.put_rel_creation(rel, forknum, nblocks).await,
            Some(n) if n < nblocks => {
                self.set_size(rel, forknum, nblocks);
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }

    /// Shrink the relation to `nblocks` (if it exists).
    pub async fn put_rel_truncation(&mut self, rel: RelFileNode, forknum: u8, nblocks: u32) -> Result<()> {
        if self.rel_size(rel, forknum).await?.is_some() {
            self.set_size(rel, forknum, nblocks);
        }
        Ok(())
    }

    /// Drop every fork of a relation.
    pub async fn put_rel_drop(&mut self, rel: RelFileNode) -> Result<()> {
        let mut dir = self.reldir(rel.spc_node, rel.db_node).await?;
        let before = dir.len();
        dir.retain(|(r, _)| *r != rel.rel_node);
        if dir.len() != before {
            self.put_image(rel_dir_key(rel.spc_node, rel.db_node), encode_reldir(&dir));
        }
        for fork in 0..=postgres_ffi::pg_constants::MAX_FORKNUM {
            self.size_updates.push((rel, fork, None));
        }
        Ok(())
    }

    // --- SLRUs -----------------------------------------------------------

    pub async fn slru_segments(&self, kind: SlruKind) -> Result<BTreeSet<u32>> {
        let key = slru_dir_key(kind);
        match self.get_image(key).await? {
            Some(b) => decode_u32_set(&b).map_err(corrupt(key)),
            None => Ok(BTreeSet::new()),
        }
    }

    pub async fn slru_segment_size(&self, kind: SlruKind, segno: u32) -> Result<Option<u32>> {
        if !self.slru_segments(kind).await?.contains(&segno) {
            return Ok(None);
        }
        let key = slru_segment_size_key(kind, segno);
        match self.get_image(key).await? {
            Some(b) => decode_u32(&b).map(Some).map_err(corrupt(key)),
            None => Ok(Some(0)),
        }
    }

    /// Make SLRU page (segno, blkno) exist (creating or growing the segment).
    pub async fn put_slru_extend(&mut self, kind: SlruKind, segno: u32, blkno: u32) -> Result<()> {
        match self.slru_segment_size(kind, segno).await? {
            None => {
                let mut segs = self.slru_segments(kind).await?;
                segs.insert(segno);
                self.put_image(slru_dir_key(kind), encode_u32_set(&segs));
                self.put_image(slru_segment_size_key(kind, segno), encode_u32(blkno + 1));
            }
            Some(n) if n <= blkno => {
                self.put_image(slru_segment_size_key(kind, segno), encode_u32(blkno + 1));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Remove SLRU segments for which `remove(segno)` holds.
    pub async fn put_slru_truncate(&mut self, kind: SlruKind, remove: impl Fn(u32) -> bool) -> Result<()> {
        let mut segs = self.slru_segments(kind).await?;
        let before = segs.len();
        segs.retain(|s| !remove(*s));
        if segs.len() != before {
            self.put_image(slru_dir_key(kind), encode_u32_set(&segs));
        }
        Ok(())
    }

    // --- two-phase -------------------------------------------------------

    pub async fn twophase_dir(&self) -> Result<BTreeSet<u32>> {
        match self.get_image(TWOPHASEDIR_KEY).await? {
            Some(b) => decode_u32_set(&b).map_err(corrupt(TWOPHASEDIR_KEY)),
            None => Ok(BTreeSet::new()),
        }
    }

    pub async fn put_twophase_file(&mut self, xid: u32, data: Bytes) -> Result<()> {
        let mut dir = self.twophase_dir().await?;
        dir.insert(xid);
        self.put_image(TWOPHASEDIR_KEY, encode_u32_set(&dir));
        self.put_image(twophase_file_key(xid), data);
        Ok(())
    }

    pub async fn drop_twophase_file(&mut self, xid: u32) -> Result<()> {
        let mut dir = self.twophase_dir().await?;
        if dir.remove(&xid) {
            self.put_image(TWOPHASEDIR_KEY, encode_u32_set(&dir));
        }
        Ok(())
    }
}
