//! The page service: GetPage@LSN and relation metadata over the PostgreSQL
//! wire protocol (simple queries).
//!
//! Authentication: trust without [`PageServiceConf::auth`]; with it, the
//! client's password is a JWT ([`auth::pg::login`]: a bad one is a FATAL
//! 28P01), and every command names a tenant that the token must allow
//! (scope `pageserverapi`, `admin`, or `tenant` of that tenant): checked
//! before the tenant is looked up, so the refusal (42501, the connection
//! stays usable) is the same whether or not the tenant exists.
//!
//! Two ways to ask, on one listener:
//!
//! * **`pagestream <tenant> <timeline>`**: the binary page stream, for
//!   computes and tools that read many pages (`libs/pageclient`). The
//!   server answers CopyBothResponse and from then on requests and
//!   responses travel in CopyData messages, pipelined; see [`pagestream`]
//!   for the behaviour and [`pq_proto::pagestream`] for the wire format.
//!   An unknown tenant or timeline is an ErrorResponse (SQLSTATE 42704)
//!   instead of CopyBothResponse, and the connection stays usable.
//! * **Text commands**, kept for debugging with `psql -h 127.0.0.1 -p <pg
//!   port> -c '...'` (`<lsn>` is `X/Y` or `latest`):
//!   * `getpage <tenant> <timeline> <lsn> <spc> <db> <rel> <fork> <blk>` →
//!     one row, column `page` (text: the 8192-byte page as 16384 hex digits)
//!   * `rel_size <tenant> <timeline> <lsn> <spc> <db> <rel> <fork>` → `nblocks`
//!   * `rel_exists <tenant> <timeline> <lsn> <spc> <db> <rel> <fork>` → `exists` (`t`/`f`)
//!   * `db_size <tenant> <timeline> <lsn> <spc> <db>` → `bytes`
//!
//!   Errors are ErrorResponses (SQLSTATE XX000, or 42P01 for an unknown
//!   relation); the connection stays usable.
//!
//! Start-up: the startup packet, the token (with auth) and the greeting
//! must be done within [`PageServiceConf::startup_timeout_ms`], or the
//! connection is closed (counted in
//! `strata_pageserver_page_service_startup_timeouts_total`): a client that
//! sends half a startup packet, or never answers the password request,
//! holds no task for ever. After that, a message whose first byte has
//! arrived must be complete within `partial_message_timeout_ms`.
//!
//! Invariants: `strata_pageserver_page_service_connections` counts every
//! connection until all of its tasks have ended.
//!
//! Cancellation: one task per connection (plus a reader task while it is
//! in a page stream), all owned by the accept loop's [`JoinSet`]:
//! aborting [`serve`] aborts every connection. Dropping a connection's
//! task drops the requests in flight, which are cancel-safe.
pub mod pagestream;

use std::sync::Arc;
use std::time::Duration;

use pq_proto::messages::oid;
use pq_proto::{ColumnDesc, FeMessage, PostgresBackend};
use postgres_ffi::RelFileNode;
use tokio::io::AsyncRead;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::metrics;
use crate::tenant::repository::{RepoError, Repository};
use crate::tenant::timeline::PageReconstructError;

/// Settings of the page service (per connection).
#[derive(Clone, Debug)]
pub struct PageServiceConf {
    /// Largest CopyData payload accepted from a page-stream client; a
    /// larger message closes the connection (with an ErrorResponse).
    pub max_request_bytes: usize,
    /// A message whose first byte has arrived must be complete within this
    /// time, or the connection is closed (with an ErrorResponse).
    pub partial_message_timeout_ms: u64,
    /// Page-stream requests read ahead and served as one batch, at most.
    pub pipeline_depth: usize,
    /// A page-stream batch (or SLRU segment) of many blocks is read in up
    /// to this many parts at once, each in its own blocking section.
    pub read_parallelism: usize,
    /// The public keys tokens are checked against; `None`: trust.
    pub auth: Option<Arc<auth::KeySet>>,
    /// Startup packet, authentication and greeting must be done within
    /// this time, or the connection is closed.
    pub startup_timeout_ms: u64,
}

impl Default for PageServiceConf {
    fn default() -> Self {
        PageServiceConf {
            max_request_bytes: 1024,
            partial_message_timeout_ms: 10_000,
            pipeline_depth: 64,
            read_parallelism: 8,
            auth: None,
            startup_timeout_ms: 10_000,
        }
    }
}

impl PageServiceConf {
    pub fn partial_message_timeout(&self) -> Duration {
        Duration::from_millis(self.partial_message_timeout_ms)
    }

    pub fn startup_timeout(&self) -> Duration {
        Duration::from_millis(self.startup_timeout_ms)
    }
}

/// Accept connections until the listener fails, with default settings.
pub async fn serve(listener: TcpListener, repo: Arc<Repository>) -> std::io::Result<()> {
    serve_with(listener, repo, PageServiceConf::default()).await
}

/// Accept connections until the listener fails (or this future is
/// dropped, which aborts every connection).
pub async fn serve_with(listener: TcpListener, repo: Arc<Repository>, conf: PageServiceConf) -> std::io::Result<()> {
    let conf = Arc::new(conf);
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = listener.accept().await?;
        while connections.try_join_next().is_some() {}
        let (repo, conf) = (Arc::clone(&repo), Arc::clone(&conf));
        let guard = ConnectionGuard::new();
        connections.spawn(
            async move {
                if let Err(e) = handle(stream, repo, conf).await {
                    warn!("page service connection: {e}");
                }
                drop(guard);
            }
            .instrument(info_span!("page_service", %peer)),
        );
    }
}

/// Counts a connection in `strata_pageserver_page_service_connections`.
struct ConnectionGuard;

impl ConnectionGuard {
    fn new() -> Self {
        metrics::PAGE_SERVICE_CONNECTIONS.inc();
        ConnectionGuard
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        metrics::PAGE_SERVICE_CONNECTIONS.dec();
    }
}

/// The read side of a connection (boxed: it changes shape when a page
/// stream hands it back with bytes buffered).
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Conn = tokio::io::Join<ReadHalf, OwnedWriteHalf>;

async fn handle(stream: TcpStream, repo: Arc<Repository>, conf: Arc<PageServiceConf>) -> Result<(), pq_proto::ProtocolError> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut pgb = PostgresBackend::new(tokio::io::join(Box::new(rd) as ReadHalf, wr))
        .with_partial_message_timeout(conf.partial_message_timeout());
    let claims = match tokio::time::timeout(conf.startup_timeout(), start_up(&mut pgb, &conf)).await {
        Ok(Ok(Some(claims))) => claims,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            metrics::PAGE_SERVICE_STARTUP_TIMEOUTS.inc();
            warn!("startup and authentication not done within {} ms: closing the connection", conf.startup_timeout_ms);
            return Ok(());
        }
    };
    while let Some(msg) = pgb.read_message().await? {
        match msg {
            FeMessage::Query(q) => {
                let q = q.trim().trim_end_matches(';');
                if let Err((state, msg)) = allowed(claims.as_ref(), q) {
                    pgb.send_error(state, &msg)?;
                    pgb.ready_for_query().await?;
                    continue;
                }
                if q.split_whitespace().next() == Some("pagestream") {
                    match pagestream::start(pgb, &repo, q, &conf).await? {
                        Some(back) => pgb = back,
                        None => break,
                    }
                    continue;
                }
                match run_command(&repo, q).await {
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

/// Startup packet, token and greeting: `None` when the client went away,
/// sent a cancel request or was refused; else the token's claims (`None`
/// inside: trust). Bounded by the caller ([`PageServiceConf::startup_timeout`]).
async fn start_up(pgb: &mut PostgresBackend<Conn>, conf: &PageServiceConf) -> Result<Option<Option<auth::Claims>>, pq_proto::ProtocolError> {
    match pgb.read_startup().await? {
        Some(FeMessage::StartupMessage(_)) => {}
        _ => return Ok(None),
    }
    let claims = match &conf.auth {
        None => None,
        Some(keys) => match auth::pg::login(pgb, keys, "page_service").await? {
            Some(claims) => Some(claims),
            None => return Ok(None),
        },
    };
    pgb.authenticate_trust(&[("server_version", "15"), ("client_encoding", "UTF8")], 0, 0).await?;
    Ok(Some(claims))
}

/// Scopes that open the page service (besides `admin`).
const PAGE_SERVICE_SCOPES: &[auth::Scope] = &[auth::Scope::PageServerApi, auth::Scope::Tenant];

/// Whether the token of the connection (none: trust) allows command `q`,
/// whose second word is the tenant it reads.
fn allowed(claims: Option<&auth::Claims>, q: &str) -> Result<(), CmdError> {
    let Some(claims) = claims else { return Ok(()) };
    let tenant = q.split_whitespace().nth(1).and_then(|t| t.parse::<TenantId>().ok());
    auth::pg::check_command(claims, auth::Access { scopes: PAGE_SERVICE_SCOPES, tenant }, "page_service")
}

/// SQLSTATE for an unknown tenant or timeline (`undefined_object`), else
/// `XX000`.
pub(crate) fn repo_error_state(e: &RepoError) -> &'static str {
    match e {
        RepoError::TenantNotFound(_) | RepoError::TimelineNotFound(..) => "42704",
        _ => "XX000",
    }
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
