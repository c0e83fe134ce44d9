//! The page stream: the binary GetPage@LSN sub-protocol after
//! `pagestream <tenant> <timeline>` (wire format in
//! [`pq_proto::pagestream`]; the operator's view in `docs/operators.md`).
//!
//! Owns, per stream, two tasks and a bounded queue between them:
//!
//! * the **reader** reads CopyData messages with a size limit
//!   ([`PageServiceConf::max_request_bytes`]) and a deadline for a message
//!   whose first byte has arrived
//!   ([`PageServiceConf::partial_message_timeout_ms`]), parses each into a
//!   request (or an invalid-request marker, answered with an Error
//!   response), and queues what one socket read brought as one chunk (every
//!   complete message already buffered, at most
//!   [`PageServiceConf::pipeline_depth`]); it reads ahead while earlier
//!   requests are served, up to two chunks queued;
//! * the **server** (the connection's task) takes everything queued as one
//!   batch (whole chunks, until it holds `pipeline_depth` requests or
//!   nothing more waits), resolves "latest" once per batch, serves consecutive GetPage
//!   requests at one LSN together ([`Timeline::get_rel_pages_at_lsn`]: one
//!   LSN check and wait, one size lookup per relation, one vectored read
//!   of all the blocks, split into up to
//!   [`PageServiceConf::read_parallelism`] parts read at once), writes the responses in request order and
//!   flushes once per batch (or every [`FLUSH_BYTES`]).
//!
//! Invariants: responses go out in request order, one per request; an
//! Error response never ends the stream. The stream ends after the
//! responses to everything read before the end: CopyDone (answered with
//! CopyDone, CommandComplete, ReadyForQuery; the connection goes back to
//! simple queries), Terminate or end of file (closed), or broken framing —
//! a message other than CopyData/CopyDone/Terminate, a length over the
//! limit, a message left incomplete past the deadline — answered with an
//! ErrorResponse (SQLSTATE 08P01) before closing. Memory per stream is
//! bounded: four chunks of at most `pipeline_depth` requests of at most
//! `max_request_bytes` (two queued, one being read, one being served),
//! one batch's results, and the output buffer.
//!
//! Cancellation: dropping the stream's future (connection aborted) aborts
//! the reader task ([`AbortOnDrop`]); on every normal end the reader is
//! stopped and awaited before returning, so a connection counted in
//! `strata_pageserver_page_service_connections` has no task left when it
//! stops being counted. Reads in flight are cancel-safe.
use std::io::Cursor;
use std::sync::Arc;

use bytes::BytesMut;
use pq_proto::messages::BeMessage;
use pq_proto::pagestream::{self as ps, ErrorCode, ParseError, Request, RequestKind, Response, ResponseKind};
use pq_proto::{PostgresBackend, ProtocolError};
use postgres_ffi::RelFileNode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};
use utils::lsn::Lsn;

use super::{repo_error_state, Conn, PageServiceConf, ReadHalf};
use crate::ingest::walreceiver;
use crate::metrics;
use crate::tenant::repository::Repository;
use crate::tenant::timeline::{BlockRef, PageReconstructError, Timeline};
use crate::walredo::SlruKind;

/// Flush the output buffer when it holds this many bytes.
pub const FLUSH_BYTES: usize = 256 << 10;
const READ_BUFFER_BYTES: usize = 64 << 10;

/// What the reader hands to the server, in arrival order.
enum Incoming {
    Request(Request),
    Invalid(ParseError),
    End(StreamEnd),
}

/// Why a stream ends.
enum StreamEnd {
    /// End of file between messages, or the client sent Terminate.
    Closed,
    CopyDone,
    /// Broken framing: answered with an ErrorResponse, then closed.
    Broken(String),
    Io(std::io::Error),
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(Option<JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    /// Stop the task (if it is still running) and wait until it has ended;
    /// its result if it finished on its own.
    async fn stop(mut self) -> Option<T> {
        let handle = self.0.take()?;
        handle.abort();
        handle.await.ok()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Handle `pagestream <tenant> <timeline>`: answer CopyBothResponse and
/// serve the stream. Returns the connection for further simple queries
/// (after an unknown timeline or a CopyDone), or `None` once it is closed.
pub(crate) async fn start(
    mut pgb: PostgresBackend<Conn>,
    repo: &Repository,
    query: &str,
    conf: &Arc<PageServiceConf>,
) -> Result<Option<PostgresBackend<Conn>>, ProtocolError> {
    let tl = match resolve_timeline(repo, query) {
        Ok(tl) => tl,
        Err((state, msg)) => {
            pgb.send_error(state, &msg)?;
            pgb.ready_for_query().await?;
            return Ok(Some(pgb));
        }
    };
    pgb.write_message(&BeMessage::CopyBothResponse)?;
    pgb.flush().await?;
    let (conn, unparsed) = pgb.into_parts();
    let (rd, wr) = conn.into_inner();
    let rd: ReadHalf = if unparsed.is_empty() { rd } else { Box::new(Cursor::new(unparsed).chain(rd)) };
    let span = info_span!("pagestream", tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id);
    run(rd, wr, tl, Arc::clone(conf)).instrument(span).await
}

fn resolve_timeline(repo: &Repository, query: &str) -> Result<Arc<Timeline>, (&'static str, String)> {
    let args: Vec<&str> = query.split_whitespace().collect();
    let [_, tenant, timeline] = args.as_slice() else {
        return Err(("42601", format!("usage: pagestream <tenant> <timeline> (got {query:?})")));
    };
    let tenant = tenant.parse().map_err(|e| ("42601", format!("invalid tenant id {tenant:?}: {e}")))?;
    let timeline = timeline.parse().map_err(|e| ("42601", format!("invalid timeline id {timeline:?}: {e}")))?;
    repo.get_timeline(tenant, timeline).map_err(|e| (repo_error_state(&e), e.to_string()))
}

async fn run(
    rd: ReadHalf,
    mut wr: OwnedWriteHalf,
    tl: Arc<Timeline>,
    conf: Arc<PageServiceConf>,
) -> Result<Option<PostgresBackend<Conn>>, ProtocolError> {
    info!("page stream started");
    // Chunks of up to pipeline_depth requests each: the reader reads ahead
    // one chunk while the server serves the previous ones.
    let (tx, mut rx) = mpsc::channel(2);
    let rd = BufReader::with_capacity(READ_BUFFER_BYTES, rd);
    let reader = AbortOnDrop(Some(tokio::spawn(read_requests(rd, tx, Arc::clone(&conf)).in_current_span())));
    let mut out = BytesMut::with_capacity(FLUSH_BYTES);
    let end = serve_requests(&mut rx, &mut wr, &mut out, &tl, &conf).await;
    drop(rx);
    let rd = reader.stop().await;
    match end {
        Ok(StreamEnd::CopyDone) => {
            let Some(rd) = rd else {
                return Err(ProtocolError::malformed("page stream", "reader task ended without its stream"));
            };
            let mut pgb = PostgresBackend::from_parts(tokio::io::join(Box::new(rd) as ReadHalf, wr), BytesMut::new());
            pgb.write_message(&BeMessage::CopyDone)?;
            pgb.write_message(&BeMessage::CommandComplete("PAGESTREAM"))?;
            pgb.ready_for_query().await?;
            info!("page stream ended by CopyDone");
            Ok(Some(pgb))
        }
        Ok(StreamEnd::Broken(msg)) => {
            warn!("closing page stream: {msg}");
            out.clear();
            BeMessage::ErrorResponse { severity: "FATAL", sqlstate: "08P01", message: &msg }.write(&mut out)?;
            // The client may be gone already; nothing more to do then.
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
            Ok(None)
        }
        Ok(StreamEnd::Closed) => {
            info!("page stream closed by the client");
            Ok(None)
        }
        Ok(StreamEnd::Io(e)) | Err(e) => Err(e.into()),
    }
}

/// Read, parse and queue requests until the stream ends; returns the
/// read side (with anything buffered) for a CopyDone hand-back. Every
/// complete message already buffered is parsed with the one awaited, and
/// they go to the server as one chunk (at most `pipeline_depth`): one
/// hand-off per socket read, not per request, so the server sees the
/// client's pipelined requests together and batches them.
async fn read_requests(
    mut rd: BufReader<ReadHalf>,
    tx: mpsc::Sender<Vec<Incoming>>,
    conf: Arc<PageServiceConf>,
) -> BufReader<ReadHalf> {
    let mut body = Vec::with_capacity(ps::MAX_REQUEST_BYTES);
    let depth = conf.pipeline_depth.max(1);
    loop {
        let mut chunk = Vec::with_capacity(depth.min(64));
        let mut ended = false;
        loop {
            let item = match read_message(&mut rd, &mut body, &conf).await {
                Ok(()) => match Request::parse(&body) {
                    Ok(req) => Incoming::Request(req),
                    Err(e) => Incoming::Invalid(e),
                },
                Err(end) => {
                    ended = true;
                    Incoming::End(end)
                }
            };
            chunk.push(item);
            if ended || chunk.len() >= depth || !message_buffered(rd.buffer()) {
                break;
            }
        }
        if tx.send(chunk).await.is_err() || ended {
            return rd;
        }
    }
}

/// Whether `buf` starts with a whole message (tag, length, body), so
/// reading it does not wait for the socket.
fn message_buffered(buf: &[u8]) -> bool {
    match buf.get(..5) {
        Some(&[_, a, b, c, d]) => buf.len() > u32::from_be_bytes([a, b, c, d]) as usize,
        _ => false,
    }
}

/// Read one message into `body`: `Ok` for a CopyData payload, `Err` for
/// whatever ends the stream.
async fn read_message<R: AsyncRead + Unpin>(
    rd: &mut R,
    body: &mut Vec<u8>,
    conf: &PageServiceConf,
) -> Result<(), StreamEnd> {
    let tag = match rd.read_u8().await {
        Ok(tag) => tag,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(StreamEnd::Closed),
        Err(e) => return Err(StreamEnd::Io(e)),
    };
    let max = conf.max_request_bytes;
    let rest = async {
        let len = rd.read_u32().await? as usize;
        if len < 4 || len - 4 > max {
            return Ok(Err(format!("message length {len} outside 4..={} (limit {max} bytes)", max + 4)));
        }
        body.resize(len - 4, 0);
        rd.read_exact(body).await?;
        Ok::<_, std::io::Error>(Ok(()))
    };
    let timeout = conf.partial_message_timeout();
    match tokio::time::timeout(timeout, rest).await {
        Err(_) => Err(StreamEnd::Broken(format!(
            "incomplete message: not complete {} ms after its first byte",
            conf.partial_message_timeout_ms
        ))),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(StreamEnd::Broken("connection closed in the middle of a message".into()))
        }
        Ok(Err(e)) => Err(StreamEnd::Io(e)),
        Ok(Ok(Err(msg))) => Err(StreamEnd::Broken(msg)),
        Ok(Ok(Ok(()))) => match tag {
            b'd' => Ok(()),
            b'c' => Err(StreamEnd::CopyDone),
            b'X' => Err(StreamEnd::Closed),
            t => Err(StreamEnd::Broken(format!(
                "unexpected message tag {:?} (0x{t:02x}) in a page stream: only CopyData, CopyDone and Terminate are allowed",
                t as char
            ))),
        },
    }
}

/// Serve batches until the stream ends.
async fn serve_requests(
    rx: &mut mpsc::Receiver<Vec<Incoming>>,
    wr: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    tl: &Timeline,
    conf: &PageServiceConf,
) -> std::io::Result<StreamEnd> {
    let mut batch = Vec::with_capacity(conf.pipeline_depth);
    loop {
        // A reader that is gone without an End can only have been aborted.
        let Some(first) = rx.recv().await else { return Ok(StreamEnd::Closed) };
        batch.extend(first);
        while batch.len() < conf.pipeline_depth.max(1) && !matches!(batch.last(), Some(Incoming::End(_))) {
            match rx.try_recv() {
                Ok(chunk) => batch.extend(chunk),
                Err(_) => break,
            }
        }
        let end = match batch.last() {
            Some(Incoming::End(_)) => match batch.pop() {
                Some(Incoming::End(end)) => Some(end),
                _ => None,
            },
            _ => None,
        };
        metrics::PAGESTREAM_BATCH_REQUESTS.observe(batch.len() as f64);
        serve_batch(tl, &mut batch, conf, out, wr).await?;
        wr.write_all(out).await?;
        out.clear();
        if let Some(end) = end {
            return Ok(end);
        }
    }
}

/// Serve one batch (emptying it), appending the responses to `out` in
/// order; `out` is written to `wr` whenever it exceeds [`FLUSH_BYTES`].
async fn serve_batch(
    tl: &Timeline,
    batch: &mut Vec<Incoming>,
    conf: &PageServiceConf,
    out: &mut BytesMut,
    wr: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    let latest = tl.last_record_lsn();
    let mut items = batch.drain(..).peekable();
    while let Some(item) = items.next() {
        match item {
            Incoming::Request(req) => {
                metrics::PAGESTREAM_REQUESTS.with_label_values(&[req.kind.name()]).inc();
                let lsn = match resolve_lsn(tl, req.lsn, latest) {
                    Ok(lsn) => lsn,
                    Err((code, message)) => {
                        push_error(out, req.id, req.lsn, code, message);
                        continue;
                    }
                };
                if let RequestKind::GetPage { rel, blkno } = req.kind {
                    // This and every following GetPage at the same LSN.
                    let mut run = vec![(req.id, block_ref(rel, blkno))];
                    while let Some(Incoming::Request(next)) = items.peek() {
                        let RequestKind::GetPage { rel, blkno } = next.kind else { break };
                        if resolve_lsn(tl, next.lsn, latest) != Ok(lsn) {
                            break;
                        }
                        run.push((next.id, block_ref(rel, blkno)));
                        items.next();
                    }
                    // One label lookup for the run, not one per request.
                    metrics::PAGESTREAM_REQUESTS.with_label_values(&[req.kind.name()]).inc_by(run.len() as u64 - 1);
                    serve_pages(tl, &run, lsn, conf, out).await;
                } else {
                    let kind = serve_one(tl, req.kind, lsn, conf).await.unwrap_or_else(|e| error_kind(&e));
                    push(out, Response { id: req.id, lsn: lsn.0, kind });
                }
            }
            Incoming::Invalid(e) => {
                debug!("invalid request: {e}");
                push_error(out, e.id, e.lsn, ErrorCode::BadRequest, e.to_string());
            }
            Incoming::End(_) => {}
        }
        if out.len() >= FLUSH_BYTES {
            wr.write_all(out).await?;
            out.clear();
        }
    }
    Ok(())
}

fn block_ref(rel: ps::RelTag, blkno: u32) -> BlockRef {
    (RelFileNode { spc_node: rel.spc, db_node: rel.db, rel_node: rel.rel }, rel.fork, blkno)
}

fn rel_node(rel: ps::RelTag) -> (RelFileNode, u8) {
    (RelFileNode { spc_node: rel.spc, db_node: rel.db, rel_node: rel.rel }, rel.fork)
}

/// The LSN a request reads at: [`ps::LATEST_LSN`] is `latest`; an LSN
/// before the timeline's start, or after `latest` while no WAL source is
/// connected, is refused here (the timeline refuses those below its GC
/// cutoff or branch point, and waits for a future one).
fn resolve_lsn(tl: &Timeline, raw: u64, latest: Lsn) -> Result<Lsn, (ErrorCode, String)> {
    if raw == ps::LATEST_LSN {
        return Ok(latest);
    }
    let lsn = Lsn(raw);
    // A future LSN is waited for only while WAL can arrive.
    if lsn > latest && !walreceiver::status(tl).connected {
        return Err((
            ErrorCode::LsnOutOfRange,
            format!("LSN {lsn} is in the future: the timeline has WAL up to {latest} and no connected WAL source"),
        ));
    }
    if lsn < tl.initdb_lsn {
        return Err((
            ErrorCode::LsnOutOfRange,
            format!("LSN {lsn} is before the start {} of timeline {}", tl.initdb_lsn, tl.timeline_id),
        ));
    }
    Ok(lsn)
}

/// Serve a run of GetPage requests at one LSN.
async fn serve_pages(tl: &Timeline, run: &[(u64, BlockRef)], lsn: Lsn, conf: &PageServiceConf, out: &mut BytesMut) {
    let blocks: Vec<BlockRef> = run.iter().map(|(_, b)| *b).collect();
    let pages = tl.get_rel_pages_at_lsn(&blocks, lsn, conf.read_parallelism).await;
    for ((id, _), page) in run.iter().zip(pages) {
        let kind = match page {
            Ok(p) => ResponseKind::Page(p),
            Err(e) => error_kind(&e),
        };
        push(out, Response { id: *id, lsn: lsn.0, kind });
    }
}

async fn serve_one(
    tl: &Timeline,
    kind: RequestKind,
    lsn: Lsn,
    conf: &PageServiceConf,
) -> Result<ResponseKind, PageReconstructError> {
    Ok(match kind {
        RequestKind::GetPage { rel, blkno } => {
            let (rel, fork) = rel_node(rel);
            ResponseKind::Page(tl.get_rel_page_at_lsn(rel, fork, blkno, lsn).await?)
        }
        RequestKind::Nblocks { rel } => {
            let (rel, fork) = rel_node(rel);
            ResponseKind::Nblocks(tl.get_rel_size_at_lsn(rel, fork, lsn).await?)
        }
        RequestKind::Exists { rel } => {
            let (rel, fork) = rel_node(rel);
            ResponseKind::Exists(tl.get_rel_exists_at_lsn(rel, fork, lsn).await?)
        }
        RequestKind::DbSize { spc, db } => ResponseKind::DbSize(tl.get_db_size_at_lsn(spc, db, lsn).await?),
        RequestKind::GetSlruSegment { kind, segno } => {
            let kind = match kind {
                ps::SlruKind::Clog => SlruKind::Clog,
                ps::SlruKind::MultiXactOffsets => SlruKind::MultiXactOffsets,
                ps::SlruKind::MultiXactMembers => SlruKind::MultiXactMembers,
            };
            ResponseKind::SlruSegment(tl.get_slru_segment_at_lsn(kind, segno, lsn, conf.read_parallelism).await?)
        }
    })
}

/// The Error response for a failed read.
fn error_kind(e: &PageReconstructError) -> ResponseKind {
    use PageReconstructError as E;
    let code = match e {
        E::RelationNotFound { .. } | E::SlruSegmentNotFound { .. } => ErrorCode::NotFound,
        E::BlockBeyondEnd { .. } => ErrorCode::BeyondEnd,
        E::BelowGcCutoff { .. } | E::BelowBranchPoint { .. } | E::LsnOutOfRange { .. } => ErrorCode::LsnOutOfRange,
        E::WaitLsnTimeout { .. } => ErrorCode::LsnTimeout,
        E::Cancelled => ErrorCode::ShuttingDown,
        E::MissingKey { .. }
        | E::LayerFile(_)
        | E::WalRedo { .. }
        | E::Corrupt { .. }
        | E::LayerDownload { .. }
        | E::Other(_) => {
            warn!("page stream read failed: {e}");
            ErrorCode::Internal
        }
    };
    ResponseKind::Error { code, message: e.to_string() }
}

fn push_error(out: &mut BytesMut, id: u64, lsn: u64, code: ErrorCode, message: String) {
    push(out, Response { id, lsn, kind: ResponseKind::Error { code, message } });
}

fn push(out: &mut BytesMut, resp: Response) {
    if let ResponseKind::Error { code, .. } = &resp.kind {
        metrics::PAGESTREAM_ERRORS.with_label_values(&[code.name()]).inc();
    }
    resp.encode_copy_data(out);
}

#[cfg(test)]
mod tests {
    use super::message_buffered;

    #[test]
    fn a_message_is_buffered_only_when_complete() {
        // CopyData of length 8 (4 length bytes + 4 body bytes): 9 bytes.
        let msg = [b'd', 0, 0, 0, 8, 1, 2, 3, 4];
        assert!(message_buffered(&msg));
        assert!(message_buffered(&[&msg[..], &msg[..3]].concat()));
        for cut in 0..msg.len() {
            assert!(!message_buffered(&msg[..cut]), "{cut} bytes are not a whole message");
        }
        // A huge declared length never counts as buffered.
        assert!(!message_buffered(&[b'd', 0xff, 0xff, 0xff, 0xff, 0]));
    }
}
