//! Helpers for the pageserver tests: a repository on a scratch directory,
//! a primary to stream from, waiting for ingest, and the every-block
//! comparison of a data directory with GetPage@LSN.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pageserver::ingest::import::parse_rel_file_name;
use pageserver::tenant::repository::{PageServerConf, Repository};
use pageserver::tenant::timeline::{PageReconstructError, Timeline, TimelineConf};
use pageserver::ingest::walreceiver::{self, WalSource, WalSourceKind};
use pg_harness::PgCluster;
use postgres_ffi::pg_constants::*;
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;
use utils::pg_user::PgUser;

use super::mask::{diff_ranges, mask_page, Am};

/// A pageserver work directory owned by the Postgres user (redo processes
/// run there).
pub fn workdir() -> tempfile::TempDir {
    let user = PgUser::from_env().expect("postgres user");
    pg_harness::pg_owned_tempdir(&user, "strata-ps-").expect("work dir")
}

pub fn conf(workdir: &Path, tweak: impl FnOnce(&mut TimelineConf)) -> PageServerConf {
    let mut conf = PageServerConf::new(workdir);
    conf.walredo.lib_path = Some(super::walredo_lib());
    conf.walredo.template_dir = Some(super::template_dir());
    tweak(&mut conf.timeline);
    conf
}

/// Settings of the primaries the tests stream from.
/// Serve `repo`'s HTTP API and page service on free loopback ports;
/// returns the API's base URL and the page service's port.
pub async fn serve_api_and_pages(repo: &Arc<Repository>) -> anyhow::Result<(String, u16)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = pageserver::http::router(repo.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let pg_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let pg_port = pg_listener.local_addr()?.port();
    tokio::spawn(pageserver::read::page_service::serve(pg_listener, repo.clone()));
    Ok((base, pg_port))
}

pub fn primary_settings() -> Vec<(&'static str, &'static str)> {
    let mut s = pg_harness::workload::KEEP_ALL_WAL.to_vec();
    s.extend([("autovacuum", "off"), ("wal_level", "replica"), ("max_wal_senders", "4")]);
    s
}

/// initdb a cluster, import it (shut down) into a new tenant, start it and
/// stream its WAL into the timeline.
pub async fn imported_primary(repo: &Arc<Repository>) -> anyhow::Result<(PgCluster, Arc<Timeline>)> {
    let mut pg = PgCluster::init()?;
    pg.configure(&primary_settings())?;
    let tenant = repo.create_tenant(None)?;
    let tl = repo.import_timeline(tenant, None, pg.data_dir()).await?;
    pg.start_postmaster()?;
    stream_from(&tl, &pg).await;
    Ok((pg, tl))
}

pub async fn stream_from(tl: &Arc<Timeline>, pg: &PgCluster) {
    let source = WalSource { kind: WalSourceKind::Primary, conninfo: pg.connstr("postgres"), conninfos: Vec::new() };
    walreceiver::start(tl, source).await;
}

/// Wait until `tl` has ingested the primary's WAL up to its current insert
/// position (allowing for a page header the insert position may point past).
pub async fn catch_up(tl: &Timeline, pg: &PgCluster) -> anyhow::Result<Lsn> {
    let target = pg.current_wal_insert_lsn()?;
    let started = Instant::now();
    loop {
        let last = tl.last_record_lsn();
        if last >= target || (target.0 - last.0 <= XLOG_SIZE_OF_XLOG_LONG_PHD as u64 && started.elapsed() > Duration::from_secs(3)) {
            return Ok(last);
        }
        if started.elapsed() > Duration::from_secs(240) {
            bail!("ingest stuck at {last}, target {target}; walreceiver: {:?}", walreceiver::status(tl));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stop the primary (fast shutdown: its walsender sends everything up to
/// the shutdown checkpoint first), wait until `tl` has ingested the
/// checkpoint record, stop the walreceiver. Returns the end of WAL: every
/// data file page then reflects all WAL below it.
pub async fn stop_and_catch_up(tl: &Timeline, pg: &mut PgCluster) -> anyhow::Result<Lsn> {
    tokio::task::block_in_place(|| pg.stop())?;
    let control = pageserver::ingest::import::read_control_info(pg.data_dir())?;
    let target = control.checkpoint_end;
    let started = Instant::now();
    while tl.last_record_lsn() < target {
        if started.elapsed() > Duration::from_secs(240) {
            bail!("ingest stuck at {}, target {target}; walreceiver: {:?}", tl.last_record_lsn(), walreceiver::status(tl));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    walreceiver::stop(tl).await;
    Ok(target)
}

/// Run pgbench (init at `scale`, then `transactions` per client, 2 clients).
pub fn pgbench(pg: &PgCluster, scale: u32, transactions: u32) -> anyhow::Result<()> {
    let port = pg.port().to_string();
    let common = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "postgres"];
    let out = std::process::Command::new(pg_harness::pg_bin("pgbench"))
        .args(common)
        .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
        .output()?;
    if !out.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = std::process::Command::new(pg_harness::pg_bin("pgbench"))
        .args(common)
        .args(["-c", "2", "-t", &transactions.to_string(), "postgres"])
        .output()?;
    if !out.status.success() {
        bail!("pgbench: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// (db oid or 0 for shared, relfilenode) → access method, from every
/// database that accepts connections (template0 borrows template1's).
pub fn relation_ams(pg: &PgCluster) -> anyhow::Result<HashMap<(u32, u32), Am>> {
    let dbs = pg.sql("SELECT oid, datname, datallowconn FROM pg_database")?;
    let mut map = HashMap::new();
    let mut template1 = None;
    let mut no_conn = Vec::new();
    for line in dbs.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let (oid, name, allow): (u32, &str, bool) = (f[0].parse()?, f[1], f[2] == "t");
        if !allow {
            no_conn.push(oid);
            continue;
        }
        if name == "template1" {
            template1 = Some(oid);
        }
        let rows = pg.sql_db(
            name,
            "SELECT pg_relation_filenode(c.oid), c.relkind, coalesce(a.amname, ''), c.relisshared \
             FROM pg_class c LEFT JOIN pg_am a ON a.oid = c.relam WHERE pg_relation_filenode(c.oid) IS NOT NULL",
        )?;
        for row in rows.lines() {
            let f: Vec<&str> = row.split('|').collect();
            let node: u32 = f[0].parse()?;
            if let Some(am) = Am::from_catalog(f[2], f[1]) {
                let db = if f[3] == "t" { 0 } else { oid };
                map.insert((db, node), am);
            }
        }
    }
    let t1 = template1.context("template1")?;
    let borrowed: Vec<((u32, u32), Am)> =
        map.iter().filter(|((db, _), _)| *db == t1).map(|((_, n), am)| ((0, *n), *am)).collect();
    for db in no_conn {
        for ((_, n), am) in &borrowed {
            map.insert((db, *n), *am);
        }
    }
    Ok(map)
}

fn hdr(p: &[u8]) -> (Lsn, u16, u16) {
    let hi = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as u64;
    let lo = u32::from_le_bytes([p[4], p[5], p[6], p[7]]) as u64;
    (Lsn(hi << 32 | lo), u16::from_le_bytes([p[12], p[13]]), u16::from_le_bytes([p[14], p[15]]))
}

#[derive(Default, Debug)]
pub struct Comparison {
    pub blocks: usize,
    pub relations: usize,
    pub zero_tail_blocks: usize,
    /// VM pages whose bits are a subset of the file's (see below).
    pub vm_bits_missing: usize,
    /// Sequence pages whose only difference is last_value/log_cnt.
    pub sequence_prelogged: usize,
    pub mismatches: Vec<String>,
}

/// Why a page source did not return a page.
#[derive(Debug)]
pub enum PageFetchError {
    /// The block is at or beyond the relation's size at the LSN.
    BeyondEnd,
    Other(String),
}

/// Where [`compare_all_blocks_from`] gets its pages.
#[allow(async_fn_in_trait)]
pub trait PageSource {
    /// Blocks `blocks` of `rel`/`fork` at `lsn`, one result per block.
    async fn pages(&self, rel: RelFileNode, fork: u8, blocks: std::ops::Range<u32>, lsn: Lsn)
        -> Vec<Result<bytes::Bytes, PageFetchError>>;
}

impl PageSource for Timeline {
    async fn pages(&self, rel: RelFileNode, fork: u8, blocks: std::ops::Range<u32>, lsn: Lsn)
        -> Vec<Result<bytes::Bytes, PageFetchError>> {
        let mut out = Vec::new();
        for blk in blocks {
            out.push(self.get_rel_page_at_lsn(rel, fork, blk, lsn).await.map_err(|e| match e {
                PageReconstructError::BlockBeyondEnd { .. } => PageFetchError::BeyondEnd,
                e => PageFetchError::Other(e.to_string()),
            }));
        }
        out
    }
}

/// Compare every block of every relation file of `pgdata` (main, vm and
/// init forks; FSM is not WAL-logged; unlogged relations only by their
/// init fork) with GetPage@`lsn`, masked as wal_consistency_checking does.
pub async fn compare_all_blocks(
    tl: &Timeline,
    pgdata: &Path,
    lsn: Lsn,
    ams: &HashMap<(u32, u32), Am>,
) -> anyhow::Result<Comparison> {
    compare_all_blocks_from(tl, pgdata, lsn, ams).await
}

/// [`compare_all_blocks`] with the pages from `src` (a whole relation
/// file is asked for at once).
pub async fn compare_all_blocks_from(
    src: &impl PageSource,
    pgdata: &Path,
    lsn: Lsn,
    ams: &HashMap<(u32, u32), Am>,
) -> anyhow::Result<Comparison> {
    let mut out = Comparison::default();
    let mut dirs = vec![(GLOBALTABLESPACE_OID, 0u32, pgdata.join("global"))];
    for e in std::fs::read_dir(pgdata.join("base"))? {
        let e = e?;
        if let Ok(db) = e.file_name().to_string_lossy().parse::<u32>() {
            dirs.push((DEFAULTTABLESPACE_OID, db, e.path()));
        }
    }
    for (spc, db, dir) in dirs {
        let mut files: Vec<(u32, u8, u32, std::path::PathBuf)> = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if let Some((rel, fork, seg)) = parse_rel_file_name(&e.file_name().to_string_lossy()) {
                files.push((rel, fork, seg, e.path()));
            }
        }
        let unlogged: std::collections::HashSet<u32> =
            files.iter().filter(|f| f.1 == INIT_FORKNUM).map(|f| f.0).collect();
        files.sort();
        for (rel_node, fork, seg, path) in files {
            if fork == FSM_FORKNUM || (unlogged.contains(&rel_node) && fork != INIT_FORKNUM) {
                continue;
            }
            let rel = RelFileNode { spc_node: spc, db_node: db, rel_node };
            let data = std::fs::read(&path)?;
            out.relations += 1;
            let am = ams.get(&(db, rel_node)).or_else(|| ams.get(&(0, rel_node))).copied();
            let first = seg * 131072;
            let fetched = src.pages(rel, fork, first..first + (data.len() / BLCKSZ) as u32, lsn).await;
            anyhow::ensure!(fetched.len() == data.len() / BLCKSZ, "{rel} fork {fork}: {} results", fetched.len());
            for ((i, file_page), fetched) in data.chunks_exact(BLCKSZ).enumerate().zip(fetched) {
                let blk = first + i as u32;
                out.blocks += 1;
                let page = match fetched {
                    Ok(p) => p,
                    Err(PageFetchError::BeyondEnd) if file_page.iter().all(|b| *b == 0) => {
                        out.zero_tail_blocks += 1;
                        continue;
                    }
                    Err(e) => {
                        out.mismatches.push(format!("{rel} fork {fork} blk {blk}: {e:?}"));
                        continue;
                    }
                };
                let (mut a, mut b) = (page.to_vec(), file_page.to_vec());
                if fork == VISIBILITYMAP_FORKNUM {
                    a[8..10].fill(0);
                    b[8..10].fill(0);
                    // CREATE DATABASE (wal_log) logs copied VM pages as
                    // standard pages, so the bitmap (in the "hole" between
                    // pd_lower and pd_upper) is not in the WAL: a replica
                    // (and the pageserver) has fewer all-visible bits than
                    // the primary's file. Fewer bits is safe; more is not.
                    let subset = a[24..].iter().zip(&b[24..]).all(|(x, y)| x & !y == 0);
                    if a != b && subset && a[..24] == b[..24] {
                        out.vm_bits_missing += 1;
                        continue;
                    }
                } else {
                    let am = am.unwrap_or(Am::Sequence);
                    mask_page(am, &mut a);
                    mask_page(am, &mut b);
                }
                if a != b && am == Some(Am::Sequence) && fork == MAIN_FORKNUM {
                    // nextval() WAL-logs values ahead (SEQ_LOG_VALS): the
                    // file holds the real last_value/log_cnt, WAL the
                    // pre-logged ones. Mask those 16 bytes of the tuple.
                    let item = u32::from_le_bytes([a[24], a[25], a[26], a[27]]);
                    let lp_off = (item & 0x7FFF) as usize;
                    if lp_off + 23 < BLCKSZ {
                        let data = lp_off + a[lp_off + 22] as usize;
                        if data + 16 <= BLCKSZ {
                            a[data..data + 16].fill(0);
                            b[data..data + 16].fill(0);
                        }
                    }
                    if a == b {
                        out.sequence_prelogged += 1;
                        continue;
                    }
                }
                if a != b {
                    out.mismatches.push(format!(
                        "{rel} fork {fork} blk {blk} ({am:?}): pd_lsn/lower/upper ours {:?} file {:?}; differs at {:?}",
                        hdr(&a),
                        hdr(&b),
                        diff_ranges(&a, &b).into_iter().take(8).collect::<Vec<_>>()
                    ));
                }
            }
        }
    }
    Ok(out)
}
