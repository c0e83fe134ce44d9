//! The binary page stream against real PostgreSQL 15 WAL, through
//! `libs/pageclient` and a raw socket: refused streams (unknown tenant or
//! timeline), per-request errors (unknown relation, block beyond the end,
//! LSN before the timeline start, below the GC cutoff or in the future
//! with no WAL source, a garbage tag, a
//! truncated request) answered with Error responses while the stream goes
//! on; broken framing (a foreign message, an oversized length, a message
//! left incomplete) answered with an ErrorResponse and a close; CopyDone
//! handing the session back to simple queries; a client
//! that sends 1000 pipelined requests and disconnects mid-batch leaves no
//! connection behind; and reads are never stale (a page updated by SQL
//! reads new at the new LSN and old at the old one).
//!
//! One test function: the connection gauge is process-wide, so nothing
//! else in this binary may open page service connections.
mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::ps::*;
use pageclient::{ErrorCode, PageClient, PageClientError, RelTag, SlruKind};
use pageserver::metrics::PAGE_SERVICE_CONNECTIONS;
use pageserver::read::page_service::{serve_with, PageServiceConf};
use pageserver::tenant::repository::Repository;
use pq_proto::pagestream::{Request, RequestKind, Response, ResponseKind};
use pq_proto::{ConnConfig, ReplicationClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

const PARTIAL_TIMEOUT_MS: u64 = 300;

/// A page stream spoken by hand, to send what a real client would not.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(port: u16, tenant: TenantId, timeline: TimelineId) -> anyhow::Result<Raw> {
        let config = ConnConfig { host: "127.0.0.1".into(), port, ..ConnConfig::default() };
        let session = ReplicationClient::connect_plain(&config).await?;
        let (stream, buf) = session.start_copy_both(&format!("pagestream {tenant} {timeline}")).await?;
        Ok(Raw { stream, buf })
    }

    async fn send_payload(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let mut m = BytesMut::new();
        m.put_u8(b'd');
        m.put_u32(payload.len() as u32 + 4);
        m.put_slice(payload);
        self.stream.write_all(&m).await?;
        Ok(())
    }

    async fn send(&mut self, req: Request) -> anyhow::Result<()> {
        let mut m = BytesMut::new();
        req.encode_copy_data(&mut m);
        self.stream.write_all(&m).await?;
        Ok(())
    }

    /// The next message (tag, body); `None` at end of file.
    async fn message(&mut self) -> anyhow::Result<Option<(u8, Bytes)>> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into()?) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let mut frame = self.buf.split_to(len + 1);
                    frame.advance(5);
                    return Ok(Some((tag, frame.freeze())));
                }
            }
            let read = tokio::time::timeout(Duration::from_secs(60), self.stream.read_buf(&mut self.buf)).await;
            if read.context("no message from the server within 60 s")?? == 0 {
                return Ok(None);
            }
        }
    }

    async fn messages(&mut self, n: usize) -> anyhow::Result<Vec<(u8, Bytes)>> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(self.message().await?.context("closed early")?);
        }
        Ok(v)
    }

    async fn response(&mut self) -> anyhow::Result<Response> {
        match self.message().await? {
            Some((b'd', body)) => Ok(Response::parse(body)?),
            other => bail!("expected CopyData, got {other:?}"),
        }
    }

    /// An ErrorResponse (its SQLSTATE and message), then end of file.
    async fn error_then_close(&mut self) -> anyhow::Result<(String, String)> {
        let Some((b'E', body)) = self.message().await? else { bail!("expected an ErrorResponse") };
        let text = String::from_utf8_lossy(&body).into_owned();
        let field = |t: char| {
            text.split('\0').find_map(|f| f.strip_prefix(t)).map(str::to_string).unwrap_or_default()
        };
        let (code, msg) = (field('C'), field('M'));
        anyhow::ensure!(self.message().await?.is_none(), "connection still open after the ErrorResponse");
        Ok((code, msg))
    }
}

fn get_page(id: u64, rel: RelTag, blkno: u32, lsn: Lsn) -> Request {
    Request { id, lsn: lsn.0, kind: RequestKind::GetPage { rel, blkno } }
}

fn server_code(r: Result<impl std::fmt::Debug, PageClientError>) -> Option<ErrorCode> {
    match r {
        Err(e) => {
            eprintln!("error as expected: {e}");
            e.code()
        }
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn contains(page: &[u8], needle: &[u8]) -> bool {
    page.windows(needle.len()).any(|w| w == needle)
}

async fn wait_for_connections(n: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    while PAGE_SERVICE_CONNECTIONS.get() != n {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{} page service connections open, expected {n}", PAGE_SERVICE_CONNECTIONS.get());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagestream_errors_disconnects_and_freshness() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |t| {
        t.pitr_interval = Duration::ZERO;
        t.gc_horizon_bytes = 64 << 10;
        t.gc_period = Duration::ZERO;
    }))
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let service_conf = PageServiceConf { partial_message_timeout_ms: PARTIAL_TIMEOUT_MS, ..PageServiceConf::default() };
    tokio::spawn(serve_with(listener, repo.clone(), service_conf));
    let (pg, tl) = imported_primary(&repo).await?;
    let (tenant, timeline) = (tl.tenant_id, tl.timeline_id);
    pg.sql(
        "CREATE TABLE fresh (id int PRIMARY KEY, v text) WITH (fillfactor = 50); \
         INSERT INTO fresh SELECT g, 'original-' || g FROM generate_series(1, 40) g;",
    )?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('fresh')")?.parse()?;
    let rel = RelTag { spc: 1663, db, rel: node, fork: 0 };
    let lsn1 = catch_up(&tl, &pg).await?;
    assert_eq!(PAGE_SERVICE_CONNECTIONS.get(), 0);

    // Refused: unknown tenant, unknown timeline of a known tenant.
    for (t, l) in [(TenantId::generate(), timeline), (tenant, TimelineId::generate())] {
        match PageClient::connect("127.0.0.1", port, t, l).await {
            Err(PageClientError::Refused { sqlstate, message }) => {
                assert_eq!(sqlstate, "42704", "{message}");
                assert!(message.contains(&l.to_string()) || message.contains(&t.to_string()), "{message}");
            }
            Err(e) => bail!("expected a refusal, got {e}"),
            Ok(_) => bail!("pagestream on an unknown tenant/timeline was accepted"),
        }
    }

    let client = PageClient::connect("127.0.0.1", port, tenant, timeline).await?;
    let page_v1 = client.get_page(rel, 0, lsn1).await?;
    assert!(contains(&page_v1, b"original-1"), "page 0 holds the inserted rows");
    let nblocks = client.nblocks(rel, lsn1).await?;
    assert!(nblocks >= 1);
    assert!(client.exists(rel, lsn1).await?);
    assert!(client.db_size(1663, db, lsn1).await? >= 8192 * u64::from(nblocks));
    let clog = client.get_slru_segment(SlruKind::Clog, 0, lsn1).await?;
    assert!(!clog.is_empty() && clog.len() % 8192 == 0, "clog segment of {} bytes", clog.len());

    // Per-request errors; after each, the stream serves a valid request.
    let missing = RelTag { rel: 999_999, ..rel };
    assert_eq!(server_code(client.nblocks(missing, lsn1).await), Some(ErrorCode::NotFound));
    assert!(!client.exists(missing, lsn1).await?);
    assert_eq!(server_code(client.get_page(missing, 0, lsn1).await), Some(ErrorCode::NotFound));
    assert_eq!(server_code(client.get_page(rel, nblocks + 5, lsn1).await), Some(ErrorCode::BeyondEnd));
    assert_eq!(server_code(client.get_slru_segment(SlruKind::Clog, 0xFFF, lsn1).await), Some(ErrorCode::NotFound));
    let before_start = Lsn(tl.initdb_lsn.0 - 8);
    assert_eq!(server_code(client.get_page(rel, 0, before_start).await), Some(ErrorCode::LsnOutOfRange));
    assert_eq!(client.get_page(rel, 0, lsn1).await?, page_v1);

    // Garbage and truncated requests on a raw stream: Error responses in
    // order, with the ids they carried, and the stream goes on.
    let mut raw = Raw::open(port, tenant, timeline).await?;
    let mut garbage = BytesMut::new();
    get_page(77, rel, 0, lsn1).encode(&mut garbage);
    garbage[0] = b'Z';
    raw.send_payload(&garbage).await?;
    raw.send(get_page(78, rel, 0, lsn1)).await?;
    let mut truncated = BytesMut::new();
    get_page(80, rel, 0, lsn1).encode(&mut truncated);
    raw.send_payload(&truncated[..20]).await?; // a truncated request
    raw.send_payload(&[]).await?; // an empty one
    raw.send(get_page(79, rel, 0, lsn1)).await?;
    let expect_error = |r: Response, id: u64| match r.kind {
        ResponseKind::Error { code: ErrorCode::BadRequest, message } => {
            assert_eq!(r.id, id, "{message}");
            message
        }
        other => panic!("expected BadRequest for {id}, got {other:?}"),
    };
    assert!(expect_error(raw.response().await?, 77).contains("unknown request tag 0x5a"));
    assert_eq!(raw.response().await?.kind, ResponseKind::Page(page_v1.clone()));
    let msg = expect_error(raw.response().await?, 80);
    assert!(msg.contains("20 bytes for tag 0x47"), "{msg}");
    expect_error(raw.response().await?, 0);
    let r = raw.response().await?;
    assert_eq!((r.id, r.kind), (79, ResponseKind::Page(page_v1.clone())));

    // CopyDone hands the session back: a text command, then a new stream
    // on the same connection.
    let mut back = Raw::open(port, tenant, timeline).await?;
    back.send(get_page(90, rel, 0, lsn1)).await?;
    back.stream.write_all(&[b'c', 0, 0, 0, 4]).await?;
    assert_eq!(back.response().await?.id, 90, "requests before CopyDone are answered");
    let end: Vec<u8> = back.messages(3).await?.into_iter().map(|(t, _)| t).collect();
    assert_eq!(end, b"cCZ", "CopyDone, CommandComplete, ReadyForQuery");
    let query = |sql: String| {
        let mut q = BytesMut::new();
        q.put_u8(b'Q');
        q.put_u32(4 + sql.len() as u32 + 1);
        q.put_slice(sql.as_bytes());
        q.put_u8(0);
        q
    };
    back.stream.write_all(&query(format!("rel_size {tenant} {timeline} {lsn1} 1663 {db} {node} 0"))).await?;
    let rows = back.messages(4).await?;
    assert_eq!(rows.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"TDCZ");
    assert!(rows[1].1.ends_with(nblocks.to_string().as_bytes()), "{:?}", rows[1]);
    back.stream.write_all(&query(format!("pagestream {tenant} {timeline}"))).await?;
    assert_eq!(back.message().await?.map(|(t, _)| t), Some(b'W'), "CopyBothResponse");
    back.send(get_page(91, rel, 0, lsn1)).await?;
    let r = back.response().await?;
    assert_eq!((r.id, r.kind), (91, ResponseKind::Page(page_v1.clone())));
    drop(back);

    // Broken framing: a simple query in the middle of the stream.
    let mut query = BytesMut::new();
    query.put_u8(b'Q');
    query.put_u32(4 + 9);
    query.put_slice(b"SELECT 1\0");
    raw.stream.write_all(&query).await?;
    let (code, msg) = raw.error_then_close().await?;
    assert_eq!(code, "08P01", "{msg}");
    assert!(msg.contains("unexpected message tag 'Q'"), "{msg}");
    // An oversized length.
    let mut raw = Raw::open(port, tenant, timeline).await?;
    raw.stream.write_all(&[b'd', 0, 1, 0, 0]).await?;
    let (code, msg) = raw.error_then_close().await?;
    assert!(code == "08P01" && msg.contains("limit"), "{code}: {msg}");
    // A request left incomplete: closed after the partial-message timeout.
    let mut raw = Raw::open(port, tenant, timeline).await?;
    let mut whole = BytesMut::new();
    get_page(5, rel, 0, lsn1).encode_copy_data(&mut whole);
    raw.stream.write_all(&whole[..10]).await?;
    let (code, msg) = raw.error_then_close().await?;
    assert!(code == "08P01" && msg.contains(&format!("{PARTIAL_TIMEOUT_MS} ms")), "{code}: {msg}");
    drop(raw);
    wait_for_connections(1).await?;

    // 1000 pipelined requests, a few answers read, then the client goes
    // away while the server is busy writing: no connection stays behind.
    let mut raw = Raw::open(port, tenant, timeline).await?;
    let mut burst = BytesMut::new();
    for id in 0..1000 {
        get_page(1000 + id, rel, id as u32 % nblocks, lsn1).encode_copy_data(&mut burst);
    }
    raw.stream.write_all(&burst).await?;
    for id in 0..3 {
        assert_eq!(raw.response().await?.id, 1000 + id);
    }
    assert_eq!(PAGE_SERVICE_CONNECTIONS.get(), 2);
    drop(raw);
    wait_for_connections(1).await?;
    let again = PageClient::connect("127.0.0.1", port, tenant, timeline).await?;
    assert_eq!(again.get_page(rel, 0, lsn1).await?, page_v1);
    drop(again);
    wait_for_connections(1).await?;

    // Never stale: update the rows of page 0, read at the new LSN (and at
    // "latest") → new content; at the old LSN → old content.
    pg.sql("UPDATE fresh SET v = 'updated-' || id WHERE id <= 5;")?;
    let lsn2 = catch_up(&tl, &pg).await?;
    let page_v2 = client.get_page(rel, 0, lsn2).await?;
    assert!(contains(&page_v2, b"updated-1"), "the update is visible at {lsn2}");
    assert!(!contains(&page_v1, b"updated-1"));
    assert_eq!(client.get_page(rel, 0, lsn1).await?, page_v1, "the old LSN still reads the old page");
    let latest = client.request(RequestKind::GetPage { rel, blkno: 0 }, Lsn::MAX).await?;
    assert!(latest.lsn >= lsn2.0, "latest resolved to {} below {lsn2}", Lsn(latest.lsn));
    assert_eq!(latest.kind, ResponseKind::Page(page_v2.clone()));

    // Below the GC cutoff: more WAL, GC, then the old LSN is refused.
    pg.sql("CREATE TABLE filler AS SELECT g, repeat('f', 200) AS pad FROM generate_series(1, 5000) g;")?;
    catch_up(&tl, &pg).await?;
    tl.freeze_and_flush().await?;
    tl.gc_now().await?;
    assert!(tl.gc_cutoff_lsn() > lsn1, "GC cutoff {} not past {lsn1}", tl.gc_cutoff_lsn());
    assert_eq!(server_code(client.get_page(rel, 0, lsn1).await), Some(ErrorCode::LsnOutOfRange));
    assert_eq!(client.get_page(rel, 0, Lsn::MAX).await?, page_v2);

    // A future LSN with no WAL source connected: refused at once.
    pageserver::ingest::walreceiver::stop(&tl).await;
    let future = Lsn(tl.last_record_lsn().0 + 0x10000);
    assert_eq!(server_code(client.get_page(rel, 0, future).await), Some(ErrorCode::LsnOutOfRange));
    assert_eq!(client.get_page(rel, 0, Lsn::MAX).await?, page_v2);

    drop(client);
    wait_for_connections(0).await?;
    repo.shutdown(false).await;
    Ok(())
}
