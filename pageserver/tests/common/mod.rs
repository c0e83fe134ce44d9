//! Shared by the WAL redo tests and benchmark: the built extension, a
//! manager on a scratch directory, WAL reading and per-block histories.
#![allow(dead_code)]
pub mod mask;
pub mod openapi;
pub mod ps;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use bytes::Bytes;
use pageserver::walredo::{scratch, PostgresRedoManager, WalRecord, WalRedoConfig};
use postgres_ffi::wal_files::{scan_wal_dir, segment_size_of};
use postgres_ffi::{DecodedRecord, RelFileNode};
use utils::lsn::Lsn;
use utils::pg_user::PgUser;

/// Build (once per test binary) and return the path of `walredo.so`.
pub fn walredo_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
        scratch::build_walredo_lib().expect("build the walredo extension")
    })
    .clone()
}

/// Build (once per test binary) the test variant of `walredo.so`
/// (`build-walredo.sh --test`: it serves [`pageserver::walredo::TestCommand`]s).
pub fn walredo_test_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        walredo_lib(); // logging, and the production build the template uses
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-walredo.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("--test")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run build-walredo.sh --test");
        assert!(out.status.success(), "build-walredo.sh --test: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().expect("a path").trim())
    })
    .clone()
}

/// A template directory shared by the managers of one test binary,
/// removed when the binary exits (a static is never dropped, so a
/// `TempDir` here would leave one directory per run behind).
pub fn template_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_template_dir() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    DIR.get_or_init(|| {
        let user = PgUser::from_env().expect("postgres user");
        let dir = pg_harness::pg_owned_tempdir(&user, "strata-walredo-template-").expect("template dir").keep();
        // SAFETY: registers a plain function without arguments, run once at exit.
        unsafe { libc::atexit(remove_template_dir) };
        dir
    })
    .join("template")
}

/// A manager with its own work directory (kept alive by the returned guard).
pub fn manager(pool_size: usize, tweak: impl FnOnce(&mut WalRedoConfig)) -> (PostgresRedoManager, tempfile::TempDir) {
    let lib = walredo_lib();
    let user = PgUser::from_env().expect("postgres user");
    let work = pg_harness::pg_owned_tempdir(&user, "strata-walredo-work-").expect("work dir");
    let mut conf = WalRedoConfig::new(work.path());
    conf.lib_path = Some(lib);
    conf.template_dir = Some(template_dir());
    conf.pool_size = pool_size;
    tweak(&mut conf);
    (PostgresRedoManager::new(conf).expect("manager"), work)
}

/// One decoded record with its end LSN.
pub struct Rec {
    pub end_lsn: Lsn,
    pub decoded: DecodedRecord,
}

/// Every record in `wal_dir` (timeline 1) from the record boundary `start`.
pub fn read_wal(wal_dir: &Path, start: Lsn) -> anyhow::Result<Vec<Rec>> {
    let first = std::fs::read_dir(wal_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 24))
        .min()
        .context("no WAL segment")?;
    let seg_size = segment_size_of(&first)?;
    let mut out = Vec::new();
    let mut err = None;
    scan_wal_dir(wal_dir, 1, start, seg_size, |raw| {
        match DecodedRecord::decode(raw.start_lsn, raw.bytes.clone()) {
            Ok(decoded) => out.push(Rec { end_lsn: raw.end_lsn, decoded }),
            Err(e) => err = Some(e),
        }
    })?;
    if let Some(e) = err {
        bail!("decode: {e}");
    }
    Ok(out)
}

/// (relation, fork, block).
pub type BlockKey = (RelFileNode, u8, u32);

/// How to rebuild one block as of the end of the WAL read.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The last full-page image (hole restored, pd_lsn set), if the chain
    /// starts from one; otherwise the first record initialises the page.
    pub base: Option<Bytes>,
    pub records: Vec<(Lsn, WalRecord)>,
    pub rmgrs: std::collections::BTreeSet<u8>,
}

/// Restore a full-page image as redo would: hole filled, pd_lsn = `lsn`
/// unless the page is new.
pub fn image_as_page(image: &postgres_ffi::BlockImage, lsn: Lsn) -> Option<Bytes> {
    let mut page = image.restore_page()?;
    let pd_upper = u16::from_le_bytes([page[14], page[15]]);
    if pd_upper != 0 {
        page[0..4].copy_from_slice(&((lsn.0 >> 32) as u32).to_le_bytes());
        page[4..8].copy_from_slice(&(lsn.0 as u32).to_le_bytes());
    }
    Some(Bytes::from(page))
}

/// Per-block histories: each starts at the block's last applied image or
/// initialising record. Blocks with no such start are left out.
pub fn block_histories(records: &[Rec]) -> HashMap<BlockKey, History> {
    let mut out: HashMap<BlockKey, History> = HashMap::new();
    let mut no_start: BTreeMap<BlockKey, ()> = BTreeMap::new();
    for rec in records {
        for blk in &rec.decoded.blocks {
            let key = (blk.rel, blk.forknum, blk.blkno);
            let raw = WalRecord::Postgres { will_init: blk.will_init(), rec: rec.decoded.raw.clone() };
            let image = blk.image.as_ref().filter(|i| i.apply()).and_then(|i| image_as_page(i, rec.end_lsn));
            if let Some(page) = image {
                no_start.remove(&key);
                out.insert(key, History { base: Some(page), records: Vec::new(), rmgrs: Default::default() });
            } else if blk.will_init() || (blk.apply_image() && blk.image.is_some()) {
                no_start.remove(&key);
                let rmgrs = [rec.decoded.header.xl_rmid].into();
                out.insert(key, History { base: None, records: vec![(rec.end_lsn, raw)], rmgrs });
            } else if let Some(h) = out.get_mut(&key) {
                h.records.push((rec.end_lsn, raw));
                h.rmgrs.insert(rec.decoded.header.xl_rmid);
            } else {
                no_start.insert(key, ());
            }
        }
    }
    out
}

/// The page `blkno` of a relation fork in a stopped cluster's data files,
/// or `None` if the file is shorter.
pub fn read_data_page(data_dir: &Path, key: &BlockKey) -> anyhow::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let (rel, fork, blkno) = *key;
    let dir = match rel.spc_node {
        postgres_ffi::pg_constants::GLOBALTABLESPACE_OID => data_dir.join("global"),
        postgres_ffi::pg_constants::DEFAULTTABLESPACE_OID => data_dir.join("base").join(rel.db_node.to_string()),
        spc => bail!("tablespace {spc} not supported"),
    };
    let seg = blkno / 131072;
    let mut name = rel.rel_node.to_string();
    if fork != 0 {
        name.push('_');
        name.push_str(postgres_ffi::relfile::fork_name(fork).context("fork")?);
    }
    if seg > 0 {
        name.push_str(&format!(".{seg}"));
    }
    let Ok(mut file) = std::fs::File::open(dir.join(name)) else {
        return Ok(None);
    };
    let mut page = vec![0u8; 8192];
    file.seek(SeekFrom::Start((blkno % 131072) as u64 * 8192))?;
    match file.read_exact(&mut page) {
        Ok(()) => Ok(Some(page)),
        Err(_) => Ok(None),
    }
}

/// A real chain of records for one heap block, and the page in the data
/// file after the cluster stopped.
pub struct HeapChain {
    pub key: BlockKey,
    pub base: Option<Bytes>,
    pub records: Vec<(Lsn, WalRecord)>,
    pub on_disk: Vec<u8>,
}

impl HeapChain {
    pub fn last_lsn(&self) -> Lsn {
        self.records.last().map(|r| r.0).unwrap_or_default()
    }
}

/// Run `sql` after a checkpoint on a fresh cluster and return the chain of
/// block `blkno` of table `table` (database `postgres`).
pub fn heap_chain(sql: &str, table: &str, blkno: u32) -> anyhow::Result<HeapChain> {
    heap_chain_in(None, sql, table, blkno)
}

/// Like [`heap_chain`], in database `db` (created first) if given.
pub fn heap_chain_in(db: Option<&str>, sql: &str, table: &str, blkno: u32) -> anyhow::Result<HeapChain> {
    let mut settings = pg_harness::workload::KEEP_ALL_WAL.to_vec();
    settings.push(("autovacuum", "off"));
    let mut pg = pg_harness::PgCluster::start(&settings)?;
    if let Some(db) = db {
        pg.sql(&format!("CREATE DATABASE {db}"))?;
    }
    let db = db.unwrap_or("postgres");
    pg.checkpoint()?;
    let start: Lsn = pg.sql("SELECT redo_lsn FROM pg_control_checkpoint()")?.parse()?;
    pg.sql_db(db, sql)?;
    pg.checkpoint()?;
    let node: u32 = pg.sql_db(db, &format!("SELECT pg_relation_filenode('{table}')"))?.parse()?;
    let db_oid: u32 = pg.sql(&format!("SELECT oid FROM pg_database WHERE datname = '{db}'"))?.parse()?;
    pg.stop()?;
    let records = read_wal(&pg.wal_dir(), start)?;
    let histories = block_histories(&records);
    let (key, history) = histories
        .into_iter()
        .find(|(k, _)| k.0.rel_node == node && k.0.db_node == db_oid && k.1 == 0 && k.2 == blkno)
        .context("no history for the block")?;
    let on_disk = read_data_page(pg.data_dir(), &key)?.context("page not in the data file")?;
    Ok(HeapChain { key, base: history.base, records: history.records, on_disk })
}
