//! The page service: GetPage@LSN and relation metadata over the PostgreSQL
//! wire protocol (trust authentication, simple queries only), for tools
//! and tests (`psql -h 127.0.0.1 -p <pg port> -c '...'`).
//!
//! Commands (whitespace-separated; `<lsn>` is `X/Y` or `latest`):
//! * `getpage <tenant> <timeline> <lsn> <spc> <db> <rel> <fork> <blk>` →
//!   one row, column `page` (text: the 8192-byte page as 16384 hex digits)
//! * `rel_size <tenant> <timeline> <lsn> <spc> <db> <rel> <fork>` → `nblocks`
//! * `rel_exists <tenant> <timeline> <lsn> <spc> <db> <rel> <fork>` → `exists` (`t`/`f`)
//! * `db_size <tenant> <timeline> <lsn> <spc> <db>` → `bytes`
//!
//! Errors are ErrorResponses (SQLSTATE XX000, or 42P01 for an unknown
//! relation); the connection stays usable.
//!
//! Cancellation: one task per connection; dropping it (client gone or
//! server shutdown) drops the request in flight, which is cancel-safe.
use std::sync::Arc;

use pq_proto::messages::oid;
use pq_proto::{ColumnDesc, FeMessage, PostgresBackend};
use postgres_ffi::RelFileNode;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::tenant::repository::Repository;
use crate::tenant::timeline::PageReconstructError;

/// Accept connections until the listener fails.
pub async fn serve(listener: TcpListener, repo: Arc<Repository>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let repo = Arc::clone(&repo);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, repo).await {
                warn!(%peer, "page service connection: {e}");
            }
        });
    }
}

async fn handle(stream: TcpStream, repo: Arc<Repository>) -> Result<(), pq_proto::ProtocolError> {
    stream.set_nodelay(true)?;
    let mut pgb = PostgresBackend::new(stream);
    match pgb.read_startup().await? {
        Some(FeMessage::StartupMessage(_)) => {}
        _ => return Ok(()),
    }
    pgb.authenticate_trust(&[("server_version", "15"), ("client_encoding", "UTF8")], 0, 0).await?;
    while let Some(msg) = pgb.read_message().await? {
        match msg {
            FeMessage::Query(q) => {
                match run_command(&repo, q.trim().trim_end_matches(';')).await {
                    Ok((col, value)) => {
                        let cols = [ColumnDesc { name: col, type_oid: oid::TEXT }];
                        pgb.send_row_set(&cols, &[vec![Some(value)]])?;
                    }
                    Err((state, msg)) => pgb.send_error(state, &msg)?,
                }
                pgb.ready_for_query().await?;
            }
            FeMessage::Terminate => break,
            _ => {
                pgb.send_error("0A000", "only simple queries are supported")?;
                pgb.ready_for_query().await?;
            }
        }
    }
    info!("page service connection closed");
    Ok(())
}

type CmdError = (&'static str, String);

fn arg<T: std::str::FromStr>(args: &[&str], i: usize, what: &str) -> Result<T, CmdError>
where
    T::Err: std::fmt::Display,
{
    let s = args.get(i).ok_or(("42601", format!("missing {what}")))?;
    s.parse().map_err(|e| ("42601", format!("invalid {what} {s:?}: {e}")))
}

async fn run_command(repo: &Repository, q: &str) -> Result<(&'static str, String), CmdError> {
    let args: Vec<&str> = q.split_whitespace().collect();
    let cmd = args.first().copied().unwrap_or("");
    let tenant: TenantId = arg(&args, 1, "tenant id")?;
    let timeline: TimelineId = arg(&args, 2, "timeline id")?;
    let tl = repo.get_timeline(tenant, timeline).map_err(|e| ("XX000", e.to_string()))?;
    let lsn = match args.get(3) {
        Some(&"latest") => tl.last_record_lsn(),
        _ => arg::<Lsn>(&args, 3, "lsn")?,
    };
    let page_err = |e: PageReconstructError| match e {
        PageReconstructError::RelationNotFound { .. } => ("42P01", e.to_string()),
        e => ("XX000", e.to_string()),
    };
    let rel = || -> Result<RelFileNode, CmdError> {
        Ok(RelFileNode { spc_node: arg(&args, 4, "spc")?, db_node: arg(&args, 5, "db")?, rel_node: arg(&args, 6, "rel")? })
    };
    match cmd {
        "getpage" => {
            let page =
                tl.get_rel_page_at_lsn(rel()?, arg(&args, 7, "fork")?, arg(&args, 8, "blk")?, lsn).await.map_err(page_err)?;
            Ok(("page", hex::encode(page)))
        }
        "rel_size" => {
            let n = tl.get_rel_size_at_lsn(rel()?, arg(&args, 7, "fork")?, lsn).await.map_err(page_err)?;
            Ok(("nblocks", n.to_string()))
        }
        "rel_exists" => {
            let e = tl.get_rel_exists_at_lsn(rel()?, arg(&args, 7, "fork")?, lsn).await.map_err(page_err)?;
            Ok(("exists", if e { "t" } else { "f" }.to_string()))
        }
        "db_size" => {
            let n =
                tl.get_db_size_at_lsn(arg(&args, 4, "spc")?, arg(&args, 5, "db")?, lsn).await.map_err(page_err)?;
            Ok(("bytes", n.to_string()))
        }
        other => Err(("42601", format!("unknown command {other:?}"))),
    }
}
