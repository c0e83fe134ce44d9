//! The every-block comparison over the binary page stream: a real cluster
//! (pgbench-initialized, then updates, more pgbench and VACUUM) is
//! checkpointed and stopped at three LSNs; the relation files at each are
//! kept, and every block of each is read through `libs/pageclient` from
//! four connections, a whole relation file pipelined at a time, at its
//! LSN, after all the later WAL was ingested. Each must equal the file's
//! page, masked as the in-process comparison masks (`common/ps.rs`).
mod common;

use std::path::Path;

use bytes::Bytes;
use common::ps::*;
use pageclient::{ErrorCode, PageClient, PageClientError, RelTag};
use pageserver::read::page_service::serve;
use pageserver::tenant::repository::Repository;
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

/// Blocks asked for in one pipelined batch per connection.
const CHUNK_BLOCKS: u32 = 512;

/// Pages over the page stream, spread over several connections.
struct OverPageStream {
    clients: Vec<PageClient>,
}

impl PageSource for OverPageStream {
    async fn pages(&self, rel: RelFileNode, fork: u8, blocks: std::ops::Range<u32>, lsn: Lsn)
        -> Vec<Result<Bytes, PageFetchError>> {
        let tag = RelTag { spc: rel.spc_node, db: rel.db_node, rel: rel.rel_node, fork };
        let all: Vec<(RelTag, u32)> = blocks.map(|b| (tag, b)).collect();
        let chunks: Vec<&[(RelTag, u32)]> = all.chunks(CHUNK_BLOCKS as usize).collect();
        let fetches = chunks.iter().enumerate().map(|(i, chunk)| self.clients[i % self.clients.len()].get_pages(chunk, lsn));
        let mut out = Vec::with_capacity(all.len());
        for (chunk, result) in chunks.iter().zip(futures::future::join_all(fetches).await) {
            match result {
                Ok(pages) => out.extend(pages.into_iter().map(|p| {
                    p.map_err(|e| match e {
                        PageClientError::Server { code: ErrorCode::BeyondEnd, .. } => PageFetchError::BeyondEnd,
                        e => PageFetchError::Other(e.to_string()),
                    })
                })),
                Err(e) => out.extend(chunk.iter().map(|_| Err(PageFetchError::Other(e.to_string())))),
            }
        }
        out
    }
}

/// `transactions` pgbench transactions on each of 2 clients (no init).
fn pgbench_run(pg: &pg_harness::PgCluster, transactions: u32) -> anyhow::Result<()> {
    let out = std::process::Command::new(pg_harness::pg_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "postgres", "-c", "2"])
        .args(["-t", &transactions.to_string(), "postgres"])
        .output()?;
    anyhow::ensure!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A copy of the relation files (`global`, `base`) of a stopped cluster.
fn snapshot(pgdata: &Path, to: &Path) -> anyhow::Result<()> {
    for sub in ["global", "base"] {
        let status = std::process::Command::new("cp").arg("-r").arg(pgdata.join(sub)).arg(to.join(sub)).status()?;
        anyhow::ensure!(status.success(), "copy {sub}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_block_matches_over_the_page_stream_at_three_lsns() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |t| t.checkpoint_distance = 8 << 20)).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(serve(listener, repo.clone()));
    let (mut pg, tl) = imported_primary(&repo).await?;

    let phases = [
        "",
        "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 7 = 0; \
         DELETE FROM pgbench_history WHERE mtime IS NULL OR tid % 3 = 0;",
        "VACUUM pgbench_accounts; CREATE INDEX accounts_balance ON pgbench_accounts (abalance); \
         UPDATE pgbench_branches SET bbalance = 0;",
    ];
    let mut points = Vec::new();
    for (i, sql) in phases.iter().enumerate() {
        if i == 0 {
            pgbench(&pg, 2, 100)?;
        } else {
            pg.start_postmaster()?;
            stream_from(&tl, &pg).await;
            pg.sql(sql)?;
            pgbench_run(&pg, 100)?;
        }
        let ams = relation_ams(&pg)?;
        pg.checkpoint()?;
        let lsn = stop_and_catch_up(&tl, &mut pg).await?;
        let copy = tempfile::tempdir()?;
        snapshot(pg.data_dir(), copy.path())?;
        points.push((lsn, copy, ams));
    }

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(PageClient::connect("127.0.0.1", port, tl.tenant_id, tl.timeline_id).await?);
    }
    let src = OverPageStream { clients };
    for (lsn, copy, ams) in &points {
        let cmp = compare_all_blocks_from(&src, copy.path(), *lsn, ams).await?;
        eprintln!(
            "at {lsn}: compared {} blocks of {} relation files over the page stream ({} zero tail blocks, \
             {} VM pages with bits not in WAL, {} sequence pages with pre-logged values); {} mismatches",
            cmp.blocks,
            cmp.relations,
            cmp.zero_tail_blocks,
            cmp.vm_bits_missing,
            cmp.sequence_prelogged,
            cmp.mismatches.len()
        );
        assert!(cmp.blocks > 5_000, "only {} blocks", cmp.blocks);
        assert!(cmp.mismatches.is_empty(), "{} mismatches at {lsn}:\n{}", cmp.mismatches.len(), cmp.mismatches.join("\n"));
    }
    assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "three distinct LSNs");
    drop(src);
    repo.shutdown(false).await;
    Ok(())
}
