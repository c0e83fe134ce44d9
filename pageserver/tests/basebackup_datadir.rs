//! The basebackup archive, fed from a real stopped PostgreSQL 15 data
//! directory instead of a timeline: stock PostgreSQL starts from it without
//! recovery, with identical contents, at a generated checkpoint.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pageserver::read::basebackup::{
    send_basebackup, send_basebackup_with, BasebackupSource, BasebackupTarget, RelationContents, DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID,
    LAZY_MANIFEST,
};
use pageserver::walredo::SlruKind;
use pg_harness::PgCluster;
use postgres_ffi::controlfile::{CheckPoint, ControlFile};
use postgres_ffi::pg_constants::BLCKSZ;
use postgres_ffi::wal_files::scan_wal_dir;
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

/// Serves a stopped data directory's files as a timeline would serve keys.
struct DataDirSource {
    dir: PathBuf,
}

fn fork_of(suffix: &str) -> Option<u8> {
    match suffix {
        "" => Some(0),
        "_fsm" => Some(1),
        "_vm" => Some(2),
        "_init" => Some(3),
        _ => None,
    }
}

impl DataDirSource {
    fn db_dir(&self, spc: u32, db: u32) -> PathBuf {
        if spc == GLOBALTABLESPACE_OID { self.dir.join("global") } else { self.dir.join("base").join(db.to_string()) }
    }
    fn fork_path(&self, rel: RelFileNode, fork: u8, segno: u32) -> PathBuf {
        let path = pageserver::read::basebackup::rel_file_path(rel, fork, segno).unwrap();
        self.dir.join(path)
    }
    fn slru_dir(&self, kind: SlruKind) -> PathBuf {
        self.dir.join(match kind {
            SlruKind::Clog => "pg_xact",
            SlruKind::MultiXactOffsets => "pg_multixact/offsets",
            SlruKind::MultiXactMembers => "pg_multixact/members",
        })
    }
}

impl BasebackupSource for DataDirSource {
    async fn databases(&self, _lsn: Lsn) -> Result<Vec<(u32, u32)>, String> {
        let mut out = vec![(GLOBALTABLESPACE_OID, 0)];
        for e in fs::read_dir(self.dir.join("base")).map_err(|e| e.to_string())? {
            let name = e.map_err(|e| e.to_string())?.file_name().to_string_lossy().into_owned();
            out.push((DEFAULTTABLESPACE_OID, name.parse().map_err(|_| format!("bad db dir {name}"))?));
        }
        Ok(out)
    }
    async fn relations(&self, spc: u32, db: u32, _lsn: Lsn) -> Result<Vec<(RelFileNode, u8)>, String> {
        let mut out = BTreeSet::new();
        for e in fs::read_dir(self.db_dir(spc, db)).map_err(|e| e.to_string())? {
            let name = e.map_err(|e| e.to_string())?.file_name().to_string_lossy().into_owned();
            let base = name.split('.').next().unwrap_or("");
            let digits: String = base.chars().take_while(|c| c.is_ascii_digit()).collect();
            let (Ok(rel_node), Some(fork)) = (digits.parse::<u32>(), fork_of(&base[digits.len()..])) else { continue };
            out.insert((rel_node, fork));
        }
        Ok(out.into_iter().map(|(rel_node, fork)| (RelFileNode { spc_node: spc, db_node: db, rel_node }, fork)).collect())
    }
    async fn rel_size(&self, rel: RelFileNode, fork: u8, _lsn: Lsn) -> Result<u32, String> {
        let mut blocks = 0;
        for segno in 0.. {
            match fs::metadata(self.fork_path(rel, fork, segno)) {
                Ok(m) => blocks += (m.len() / BLCKSZ as u64) as u32,
                Err(_) => break,
            }
        }
        Ok(blocks)
    }
    async fn page(&self, rel: RelFileNode, fork: u8, blkno: u32, _lsn: Lsn) -> Result<Bytes, String> {
        let data = fs::read(self.fork_path(rel, fork, blkno / 131072)).map_err(|e| e.to_string())?;
        let off = (blkno % 131072) as usize * BLCKSZ;
        Ok(Bytes::copy_from_slice(data.get(off..off + BLCKSZ).ok_or("short file")?))
    }
    async fn relmap_file(&self, spc: u32, db: u32, _lsn: Lsn) -> Result<Option<Bytes>, String> {
        Ok(fs::read(self.db_dir(spc, db).join("pg_filenode.map")).ok().map(Bytes::from))
    }
    async fn slru_segments(&self, kind: SlruKind, _lsn: Lsn) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.slru_dir(kind)).map_err(|e| e.to_string())? {
            let name = e.map_err(|e| e.to_string())?.file_name().to_string_lossy().into_owned();
            out.push(u32::from_str_radix(&name, 16).map_err(|_| format!("bad SLRU file {name}"))?);
        }
        Ok(out)
    }
    async fn slru_segment(&self, kind: SlruKind, segno: u32, _lsn: Lsn) -> Result<Bytes, String> {
        fs::read(self.slru_dir(kind).join(format!("{segno:04X}"))).map(Bytes::from).map_err(|e| e.to_string())
    }
    async fn twophase_files(&self, _lsn: Lsn) -> Result<Vec<(u32, Bytes)>, String> {
        Ok(Vec::new())
    }
    async fn control_file(&self, _lsn: Lsn) -> Result<Bytes, String> {
        fs::read(self.dir.join("global/pg_control")).map(Bytes::from).map_err(|e| e.to_string())
    }
    async fn checkpoint(&self, lsn: Lsn) -> Result<CheckPoint, String> {
        let raw = self.control_file(lsn).await?;
        Ok(ControlFile::parse(&raw).map_err(|e| e.to_string())?.checkpoint())
    }
}

fn dump(pg: &PgCluster) -> anyhow::Result<String> {
    pg_harness::pg_dump(&pg.connstr("postgres"))
}

fn assert_same_dump(a: &str, b: &str) {
    if let Some((i, (x, y))) = a.lines().zip(b.lines()).enumerate().find(|(_, (x, y))| x != y) {
        panic!("pg_dump differs at line {}: {x:?} vs {y:?}", i + 1);
    }
    assert_eq!(a.lines().count(), b.lines().count(), "pg_dump lengths differ");
}

fn extract(archive: &[u8], into: &Path) -> anyhow::Result<()> {
    tar::Archive::new(archive).unpack(into)?;
    Ok(())
}

/// Stop `pg`; its data directory as a basebackup source, and the target:
/// the end of its WAL (the shutdown checkpoint record) as the LSN.
fn stopped_source(pg: &mut PgCluster) -> anyhow::Result<(DataDirSource, BasebackupTarget)> {
    pg.stop()?;
    let control = ControlFile::parse(&fs::read(pg.data_dir().join("global/pg_control"))?)?;
    let mut end = control.checkpoint_lsn();
    scan_wal_dir(&pg.wal_dir(), 1, control.checkpoint_lsn(), control.wal_seg_size() as u64, |r| end = r.end_lsn)?;
    let src = DataDirSource { dir: pg.data_dir().to_path_buf() };
    Ok((src, BasebackupTarget { lsn: end, prev_record_lsn: control.checkpoint_lsn() }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_starts_from_the_archive_without_recovery() -> anyhow::Result<()> {
    let mut pg = PgCluster::start(&[])?;
    pg.sql(
        "CREATE TABLE t(id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CREATE UNLOGGED TABLE u(id int primary key); INSERT INTO u SELECT generate_series(1, 100);
         CREATE DATABASE other; VACUUM t;",
    )?;
    pg.sql_db("other", "CREATE TABLE o AS SELECT g FROM generate_series(1, 100) g")?;
    let (src, target) = stopped_source(&mut pg)?;
    let mut archive = Vec::new();
    let stats = send_basebackup(&mut archive, &src, target).await?;
    assert!(stats.pages > 100 && stats.relation_files > 50, "{stats:?}");

    let mut copy = PgCluster::empty()?;
    fs::create_dir_all(copy.data_dir())?;
    extract(&archive, copy.data_dir())?;
    copy.finish_data_dir(&[])?;
    copy.start_postmaster()?;
    let log = copy.log_tail();
    assert!(!log.contains("redo starts"), "recovery ran:\n{log}");
    assert_eq!(copy.sql("SELECT count(*), sum(id) FROM t")?, "20000|200010000");
    assert_eq!(copy.sql("SELECT count(*) FROM u")?, "0", "unlogged table must start empty");
    assert_eq!(copy.sql_db("other", "SELECT count(*) FROM o")?, "100");
    assert!(copy.current_wal_insert_lsn()? > target.lsn);
    copy.sql("INSERT INTO t VALUES (20001, 'new'); INSERT INTO u VALUES (1); CHECKPOINT")?;

    pg.start_postmaster()?;
    pg.sql("INSERT INTO t VALUES (20001, 'new'); TRUNCATE u; INSERT INTO u VALUES (1)")?;
    assert_same_dump(&dump(&copy)?, &dump(&pg)?);
    Ok(())
}

/// (path, size) of every regular file of an archive, and the contents of one.
fn archive_files(archive: &[u8]) -> anyhow::Result<(std::collections::BTreeMap<String, u64>, Option<String>)> {
    let mut files = std::collections::BTreeMap::new();
    let mut manifest = None;
    for entry in tar::Archive::new(archive).entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == LAZY_MANIFEST {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)?;
            manifest = Some(text);
            continue;
        }
        files.insert(path, entry.header().size()?);
    }
    Ok((files, manifest))
}

/// The sizes-only archive (lazy computes) has the files of the full one
/// but the relation files, which only the manifest lists, with each one's
/// full size and where its blocks come from; everything else is
/// byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_only_archive_lists_every_relation_file_with_its_size() -> anyhow::Result<()> {
    let mut pg = PgCluster::start(&[])?;
    pg.sql(
        "CREATE TABLE t(id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         CREATE UNLOGGED TABLE u(id int primary key); INSERT INTO u SELECT generate_series(1, 100); VACUUM t;",
    )?;
    let t_path = pg.sql("SELECT pg_relation_filepath('t')")?;
    let (src, target) = stopped_source(&mut pg)?;
    let (mut full, mut lazy) = (Vec::new(), Vec::new());
    send_basebackup(&mut full, &src, target).await?;
    let stats = send_basebackup_with(&mut lazy, &src, target, RelationContents::SizesOnly).await?;
    assert!(lazy.len() < full.len(), "sizes-only archive is {} bytes, full {}", lazy.len(), full.len());
    assert!(stats.relation_files > 50, "{stats:?}");
    let (full_files, none) = archive_files(&full)?;
    assert!(none.is_none(), "a full archive has no manifest");
    let (lazy_files, manifest) = archive_files(&lazy)?;
    let manifest = manifest.expect("manifest in the sizes-only archive");
    let mut listed = std::collections::BTreeMap::new();
    for line in manifest.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 7, "{line}");
        assert_ne!(f[4], "3", "init forks are sent whole: {line}");
        listed.insert(f[0].to_string(), f[6].parse::<u64>()? * BLCKSZ as u64);
    }
    assert!(listed.get(&t_path).is_some_and(|&size| size > 100 * BLCKSZ as u64), "{t_path} listed with its size");
    for (path, &size) in &full_files {
        match listed.get(path) {
            Some(&listed_size) => {
                assert_eq!(listed_size, size, "{path}: manifest size");
                assert!(!lazy_files.contains_key(path), "{path} is not in the sizes-only archive");
            }
            None => assert_eq!(lazy_files.get(path), Some(&size), "{path} is sent whole"),
        }
    }
    let extra: Vec<_> = lazy_files.keys().filter(|p| !full_files.contains_key(*p)).collect();
    assert!(extra.is_empty(), "only in the sizes-only archive: {extra:?}");
    Ok(())
}
