//! An async client of the Strata page service's binary page stream
//! (`pagestream <tenant> <timeline>`, wire format in
//! [`pq_proto::pagestream`]): GetPage@LSN, relation size and existence,
//! database size and SLRU segments, pipelined over one connection.
//!
//! ```no_run
//! # async fn f() -> Result<(), pageclient::PageClientError> {
//! use pageclient::{PageClient, RelTag};
//! use utils::lsn::Lsn;
//! # let (tenant, timeline) = (utils::id::TenantId::generate(), utils::id::TimelineId::generate());
//! let client = PageClient::connect("127.0.0.1", 6400, tenant, timeline).await?;
//! let rel = RelTag { spc: 1663, db: 5, rel: 1259, fork: 0 };
//! let lsn: Lsn = "0/16B3748".parse().unwrap();
//! let nblocks = client.nblocks(rel, lsn).await?;
//! // Pipelined: all requests go out before the first answer is awaited.
//! let blocks: Vec<(RelTag, u32)> = (0..nblocks).map(|b| (rel, b)).collect();
//! for page in client.get_pages(&blocks, lsn).await? {
//!     let _page = page?;
//! }
//! # Ok(()) }
//! ```
//!
//! Owns one connection per [`PageClient`] (a cheap `Clone` handle that
//! many tasks can use at once): a writer task that sends queued requests,
//! coalescing whatever is waiting into one write, and a reader task that
//! matches each response to its request by request id and wakes the
//! caller. Requests from all handles are multiplexed; the server answers
//! in the order they reached it.
//!
//! Errors ([`PageClientError`]): a request the server could not serve is
//! [`PageClientError::Server`] with its [`ErrorCode`] and the stream goes
//! on; a refused `pagestream` (unknown tenant or timeline) is
//! [`PageClientError::Refused`]; once the connection fails, every request
//! in flight and every later one fails with
//! [`PageClientError::ConnectionLost`] (or [`PageClientError::Protocol`]
//! if the server sent something that is not the protocol). Reconnecting
//! is the caller's business: make a new client.
//!
//! Invariants: every request sent gets exactly one answer — its response
//! or the connection's failure; a response is never delivered to the
//! wrong request (ids are unique per connection). Memory: at most
//! [`QUEUE_DEPTH`] request messages wait for the writer; a response is
//! held only until its caller takes it.
//!
//! Cancellation: every method is cancel-safe. Dropping a call before its
//! request was queued sends nothing; dropping it (or a
//! [`PendingResponse`]) afterwards discards the response when it arrives.
//! Dropping the last handle shuts the connection down (the writer ends
//! the stream after sending what was queued; the reader is aborted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use pq_proto::pagestream::{Request, RequestKind, Response, ResponseKind};
use pq_proto::{ConnConfig, ProtocolError, ReplicationClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

pub use pq_proto::pagestream::{ErrorCode, RelTag, SlruKind, LATEST_LSN, PAGE_SIZE};

/// Request messages queued for the writer, at most.
pub const QUEUE_DEPTH: usize = 256;
/// Largest message accepted from the server (an SLRU segment is 256 KiB).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
const WRITE_COALESCE_BYTES: usize = 64 << 10;
const READ_BUFFER_BYTES: usize = 256 << 10;

/// Errors of the page-stream client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageClientError {
    /// The TCP connection or the PostgreSQL handshake failed.
    #[error("cannot connect to the page service at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server answered `pagestream` with an ErrorResponse (e.g.
    /// SQLSTATE 42704: unknown tenant or timeline).
    #[error("the page service refused the page stream (SQLSTATE {sqlstate}): {message}")]
    Refused { sqlstate: String, message: String },
    /// The server could not serve this request; the stream goes on.
    #[error("page service error {code:?} for request {id}: {message}")]
    Server { id: u64, code: ErrorCode, message: String },
    /// The connection is gone (closed, reset, or ended by the server with
    /// an ErrorResponse); nothing more will be answered on it.
    #[error("page service connection lost: {0}")]
    ConnectionLost(String),
    /// The server sent something that is not the page-stream protocol.
    #[error("page service protocol violation: {0}")]
    Protocol(String),
}

impl PageClientError {
    /// The server's error code for a request it could not serve.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            PageClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the connection is unusable after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, PageClientError::Server { .. })
    }
}

type Result<T, E = PageClientError> = std::result::Result<T, E>;
type Waiter = oneshot::Sender<Result<Response>>;

/// Requests sent and not answered yet, and why the connection ended.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    closed: Option<PageClientError>,
}

struct Shared {
    pending: Mutex<Pending>,
    next_id: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fail every waiter and every later request with `err` (the first
    /// failure wins).
    fn close(&self, err: PageClientError) {
        let waiters = {
            let mut p = self.lock();
            p.closed.get_or_insert(err.clone());
            std::mem::take(&mut p.waiters)
        };
        for (_, w) in waiters {
            let _ = w.send(Err(err.clone()));
        }
    }

    /// Hand a response to its waiter; an id nobody sent is a violation.
    fn deliver(&self, resp: Response) -> Result<()> {
        let waiter = self.lock().waiters.remove(&resp.id);
        match waiter {
            Some(w) => {
                let _ = w.send(Ok(resp));
                Ok(())
            }
            None => Err(PageClientError::Protocol(format!("response to request {} that is not in flight", resp.id))),
        }
    }
}

/// Removes registered waiters if the call is dropped before they were
/// queued for sending.
struct Registration<'a> {
    shared: &'a Shared,
    ids: Vec<u64>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let mut p = self.shared.lock();
            for id in &self.ids {
                p.waiters.remove(id);
            }
        }
    }
}

/// Aborts the reader when the last handle goes.
struct Tasks {
    reader: JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A response that will arrive (see [`PageClient::send`]).
pub struct PendingResponse {
    id: u64,
    rx: oneshot::Receiver<Result<Response>>,
}

impl PendingResponse {
    /// The request id it answers.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Wait for the response. An Error response is
    /// [`PageClientError::Server`].
    pub async fn wait(self) -> Result<Response> {
        let resp = self
            .rx
            .await
            .map_err(|_| PageClientError::ConnectionLost("the client's reader task ended".into()))??;
        match resp.kind {
            ResponseKind::Error { code, message } => Err(PageClientError::Server { id: resp.id, code, message }),
            _ => Ok(resp),
        }
    }
}

/// A page-stream connection to one timeline (cheap to clone; clones share
/// the connection).
#[derive(Clone)]
pub struct PageClient {
    shared: Arc<Shared>,
    tx: mpsc::Sender<BytesMut>,
    _tasks: Arc<Tasks>,
}

impl PageClient {
    /// Connect to the page service at `host:port` and open a page stream
    /// on `tenant`/`timeline`.
    pub async fn connect(host: &str, port: u16, tenant: TenantId, timeline: TimelineId) -> Result<Self> {
        Self::connect_with_token(host, port, tenant, timeline, None).await
    }

    /// [`PageClient::connect`] presenting `token` (a JWT, sent as the
    /// password) to a page service that checks tokens; a refused token is
    /// [`PageClientError::Refused`] with SQLSTATE 28P01 (bad token) or
    /// 42501 (the token does not allow this tenant).
    pub async fn connect_with_token(host: &str, port: u16, tenant: TenantId, timeline: TimelineId, token: Option<&str>) -> Result<Self> {
        let config = ConnConfig {
            host: host.to_string(),
            port,
            application_name: Some("pageclient".into()),
            password: token.map(str::to_string),
            ..ConnConfig::default()
        };
        let addr = format!("{host}:{port}");
        let connect_err = |e: ProtocolError| match e {
            ProtocolError::ServerError { code, message } => PageClientError::Refused { sqlstate: code, message },
            e => PageClientError::Connect { addr: addr.clone(), reason: e.to_string() },
        };
        let session = ReplicationClient::connect_plain(&config).await.map_err(connect_err)?;
        let (stream, unparsed) =
            session.start_copy_both(&format!("pagestream {tenant} {timeline}")).await.map_err(connect_err)?;
        let (rd, wr) = stream.into_split();
        let shared = Arc::new(Shared { pending: Mutex::new(Pending::default()), next_id: AtomicU64::new(1) });
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(write_loop(wr, rx, Arc::clone(&shared)));
        let reader = tokio::spawn(read_loop(rd, unparsed, Arc::clone(&shared)));
        debug!(%addr, %tenant, %timeline, "page stream open");
        Ok(PageClient { shared, tx, _tasks: Arc::new(Tasks { reader }) })
    }

    /// Queue requests (one write for all of them) and return their
    /// pending responses, in order. Waits while the send queue is full.
    pub async fn send_many(&self, requests: impl IntoIterator<Item = (RequestKind, Lsn)>) -> Result<Vec<PendingResponse>> {
        let mut buf = BytesMut::new();
        let mut pending = Vec::new();
        let mut reg = Registration { shared: &self.shared, ids: Vec::new() };
        {
            let mut p = self.shared.lock();
            if let Some(e) = &p.closed {
                return Err(e.clone());
            }
            for (kind, lsn) in requests {
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                let (otx, rx) = oneshot::channel();
                p.waiters.insert(id, otx);
                reg.ids.push(id);
                Request { id, lsn: lsn.0, kind }.encode_copy_data(&mut buf);
                pending.push(PendingResponse { id, rx });
            }
        }
        if pending.is_empty() {
            return Ok(pending);
        }
        if self.tx.send(buf).await.is_err() {
            let err = self.shared.lock().closed.clone();
            return Err(err.unwrap_or_else(|| PageClientError::ConnectionLost("the client's writer task ended".into())));
        }
        reg.ids.clear();
        Ok(pending)
    }

    /// Queue one request; its response arrives through the returned
    /// [`PendingResponse`]. Many can be outstanding (pipelining).
    pub async fn send(&self, kind: RequestKind, lsn: Lsn) -> Result<PendingResponse> {
        let mut v = self.send_many([(kind, lsn)]).await?;
        v.pop().ok_or_else(|| PageClientError::Protocol("no pending response for a queued request".into()))
    }

    /// Send one request and wait for its response.
    pub async fn request(&self, kind: RequestKind, lsn: Lsn) -> Result<Response> {
        self.send(kind, lsn).await?.wait().await
    }

    /// GetPage@LSN ([`Lsn::MAX`]: the latest LSN).
    pub async fn get_page(&self, rel: RelTag, blkno: u32, lsn: Lsn) -> Result<Bytes> {
        page_of(self.request(RequestKind::GetPage { rel, blkno }, lsn).await?)
    }

    /// Many GetPage@LSN at one LSN, all sent before the first is awaited;
    /// one result per block, in order. The outer error is the connection's.
    pub async fn get_pages(&self, blocks: &[(RelTag, u32)], lsn: Lsn) -> Result<Vec<Result<Bytes>>> {
        let pending =
            self.send_many(blocks.iter().map(|&(rel, blkno)| (RequestKind::GetPage { rel, blkno }, lsn))).await?;
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(p.wait().await.and_then(page_of));
        }
        Ok(out)
    }

    /// The relation fork's size in blocks.
    pub async fn nblocks(&self, rel: RelTag, lsn: Lsn) -> Result<u32> {
        match self.request(RequestKind::Nblocks { rel }, lsn).await?.kind {
            ResponseKind::Nblocks(n) => Ok(n),
            other => Err(mismatch("Nblocks", &other)),
        }
    }

    /// Whether the relation fork exists.
    pub async fn exists(&self, rel: RelTag, lsn: Lsn) -> Result<bool> {
        match self.request(RequestKind::Exists { rel }, lsn).await?.kind {
            ResponseKind::Exists(e) => Ok(e),
            other => Err(mismatch("Exists", &other)),
        }
    }

    /// The database's size in bytes (all its relation forks).
    pub async fn db_size(&self, spc: u32, db: u32, lsn: Lsn) -> Result<u64> {
        match self.request(RequestKind::DbSize { spc, db }, lsn).await?.kind {
            ResponseKind::DbSize(n) => Ok(n),
            other => Err(mismatch("DbSize", &other)),
        }
    }

    /// A whole SLRU segment (its pages concatenated).
    pub async fn get_slru_segment(&self, kind: SlruKind, segno: u32, lsn: Lsn) -> Result<Bytes> {
        match self.request(RequestKind::GetSlruSegment { kind, segno }, lsn).await?.kind {
            ResponseKind::SlruSegment(b) => Ok(b),
            other => Err(mismatch("SlruSegment", &other)),
        }
    }

    /// Why the connection ended, once it has.
    pub fn closed(&self) -> Option<PageClientError> {
        self.shared.lock().closed.clone()
    }
}

fn page_of(resp: Response) -> Result<Bytes> {
    match resp.kind {
        ResponseKind::Page(p) => Ok(p),
        other => Err(mismatch("Page", &other)),
    }
}

fn mismatch(expected: &str, got: &ResponseKind) -> PageClientError {
    let got = match got {
        ResponseKind::Page(_) => "Page",
        ResponseKind::Nblocks(_) => "Nblocks",
        ResponseKind::Exists(_) => "Exists",
        ResponseKind::DbSize(_) => "DbSize",
        ResponseKind::SlruSegment(_) => "SlruSegment",
        ResponseKind::Error { .. } => "Error",
    };
    PageClientError::Protocol(format!("expected a {expected} response, got {got}"))
}

/// Send queued requests, coalescing what is waiting into one write; end
/// the stream (CopyDone, then FIN) when every handle is gone.
async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<BytesMut>, shared: Arc<Shared>) {
    let mut buf = BytesMut::new();
    while let Some(first) = rx.recv().await {
        buf.unsplit(first);
        while buf.len() < WRITE_COALESCE_BYTES {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            shared.close(PageClientError::ConnectionLost(format!("write: {e}")));
            return;
        }
        buf.clear();
    }
    // CopyDone: the server answers the rest, then leaves copy mode.
    let _ = wr.write_all(&[b'c', 0, 0, 0, 4]).await;
    let _ = wr.shutdown().await;
}

/// Read responses and hand them to their callers until the connection
/// ends; then fail whatever is still in flight.
async fn read_loop(mut rd: OwnedReadHalf, mut buf: BytesMut, shared: Arc<Shared>) {
    let err = loop {
        match next_message(&mut buf) {
            Ok(Some((tag, body))) => match handle_message(tag, body, &shared) {
                Ok(()) => continue,
                Err(e) => break e,
            },
            Ok(None) => {}
            Err(e) => break e,
        }
        buf.reserve(READ_BUFFER_BYTES);
        match rd.read_buf(&mut buf).await {
            Ok(0) => break PageClientError::ConnectionLost("closed by the server".into()),
            Ok(_) => {}
            Err(e) => break PageClientError::ConnectionLost(format!("read: {e}")),
        }
    };
    debug!("page stream ended: {err}");
    shared.close(err);
}

/// Split one complete message `(tag, body)` off `buf`.
fn next_message(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>> {
    let Some(&[tag, a, b, c, d]) = buf.get(..5) else { return Ok(None) };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if !(4..=MAX_RESPONSE_BYTES + 4).contains(&len) {
        return Err(PageClientError::Protocol(format!("message length {len} outside 4..={}", MAX_RESPONSE_BYTES + 4)));
    }
    if buf.len() < len + 1 {
        return Ok(None);
    }
    let mut frame = buf.split_to(len + 1);
    frame.advance(5);
    Ok(Some((tag, frame.freeze())))
}

fn handle_message(tag: u8, body: Bytes, shared: &Shared) -> Result<()> {
    match tag {
        b'd' => {
            let resp = Response::parse(body).map_err(|e| PageClientError::Protocol(e.to_string()))?;
            shared.deliver(resp)
        }
        b'E' => {
            let (sqlstate, message) = error_fields(&body);
            Err(PageClientError::ConnectionLost(format!("server ended the stream: {message} (SQLSTATE {sqlstate})")))
        }
        b'c' => Err(PageClientError::ConnectionLost("server ended the stream (CopyDone)".into())),
        // Notices, parameter changes and what follows CopyDone.
        b'N' | b'S' | b'C' | b'Z' => Ok(()),
        t => Err(PageClientError::Protocol(format!("unexpected message tag 0x{t:02x} in a page stream"))),
    }
}

/// SQLSTATE and message of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let [field, tail @ ..] = rest {
        if *field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_are_read() {
        let body = b"SFATAL\0C08P01\0Mbad framing\0\0";
        assert_eq!(error_fields(body), ("08P01".into(), "bad framing".into()));
        assert_eq!(error_fields(b"Mtruncated"), (String::new(), "truncated".into()));
    }

    #[test]
    fn frames_split_only_when_complete() {
        let mut buf = BytesMut::from(&b"d\0\0\0\x06ab"[..]);
        let mut partial = buf.split_to(6);
        assert_eq!(next_message(&mut partial).unwrap(), None);
        partial.unsplit(buf);
        assert_eq!(next_message(&mut partial).unwrap(), Some((b'd', Bytes::from_static(b"ab"))));
        let mut huge = BytesMut::from(&b"d\x7f\0\0\0"[..]);
        assert!(matches!(next_message(&mut huge), Err(PageClientError::Protocol(_))));
    }
}
