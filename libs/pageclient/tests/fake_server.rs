//! The client against a scripted page service (no PostgreSQL needed):
//! many tasks multiplexed over one connection each get their own answer;
//! an Error response fails one request and the stream goes on; a refused
//! `pagestream` is `Refused`; a server that ends the stream with an
//! ErrorResponse fails every request in flight and every later one.
//!
//! The fake server answers GetPage of block `b` with a page filled with
//! `b as u8` (block 999: an Error response; block 666: an ErrorResponse
//! and a close), and refuses the stream for timeline id 0…0.
use bytes::{Bytes, BytesMut};
use pageclient::{ErrorCode, PageClient, PageClientError, RelTag, PAGE_SIZE};
use pq_proto::messages::BeMessage;
use pq_proto::pagestream::{Request, RequestKind, Response, ResponseKind};
use pq_proto::{FeMessage, PostgresBackend};
use tokio::net::{TcpListener, TcpStream};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

const REL: RelTag = RelTag { spc: 1663, db: 5, rel: 16384, fork: 0 };

async fn fake_server() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    Ok(port)
}

async fn serve(stream: TcpStream) -> anyhow::Result<()> {
    let mut pgb = PostgresBackend::new(stream);
    pgb.read_startup().await?;
    pgb.authenticate_trust(&[("server_version", "15")], 0, 0).await?;
    let Some(FeMessage::Query(q)) = pgb.read_message().await? else { anyhow::bail!("no query") };
    if q.ends_with(&TimelineId::from_bytes([0u8; 16]).to_string()) {
        pgb.send_error("42704", "timeline not found")?;
        return pgb.ready_for_query().await.map_err(Into::into);
    }
    pgb.write_message(&BeMessage::CopyBothResponse)?;
    pgb.flush().await?;
    while let Some(msg) = pgb.read_message().await? {
        let FeMessage::CopyData(payload) = msg else { break };
        let req = Request::parse(&payload)?;
        let RequestKind::GetPage { blkno, .. } = req.kind else { anyhow::bail!("only GetPage") };
        let kind = match blkno {
            999 => ResponseKind::Error { code: ErrorCode::NotFound, message: "no block 999".into() },
            666 => {
                pgb.send_error("XX000", "the fake server gives up")?;
                pgb.flush().await?;
                return Ok(());
            }
            b => ResponseKind::Page(Bytes::from(vec![b as u8; PAGE_SIZE])),
        };
        let mut out = BytesMut::new();
        Response { id: req.id, lsn: req.lsn, kind }.encode(&mut out);
        pgb.write_message(&BeMessage::CopyData(&out))?;
        pgb.flush().await?;
    }
    Ok(())
}

async fn connect(port: u16) -> Result<PageClient, PageClientError> {
    PageClient::connect("127.0.0.1", port, TenantId::generate(), TimelineId::generate()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_connection() -> anyhow::Result<()> {
    let client = connect(fake_server().await?).await?;
    let tasks: Vec<_> = (0..8u32)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..200u32 {
                    let blk = (t * 31 + i) % 250;
                    let page = client.get_page(REL, blk, Lsn(0x100)).await?;
                    anyhow::ensure!(page.len() == PAGE_SIZE && page.iter().all(|&b| b == blk as u8), "wrong page for {blk}");
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let blocks: Vec<(RelTag, u32)> = (0..300).map(|b| (REL, b % 200)).collect();
    let pages = client.get_pages(&blocks, Lsn::MAX).await?;
    for ((_, b), page) in blocks.iter().zip(pages) {
        assert_eq!(page?[0], *b as u8);
    }
    Ok(())
}

#[tokio::test]
async fn an_error_response_fails_one_request_only() -> anyhow::Result<()> {
    let client = connect(fake_server().await?).await?;
    let pages = client.get_pages(&[(REL, 1), (REL, 999), (REL, 2)], Lsn(1)).await?;
    assert_eq!(pages[0].as_ref().map(|p| p[0]), Ok(1));
    match &pages[1] {
        Err(e @ PageClientError::Server { code: ErrorCode::NotFound, message, .. }) => {
            assert_eq!(message, "no block 999");
            assert!(!e.is_fatal());
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(pages[2].as_ref().map(|p| p[0]), Ok(2));
    assert_eq!(client.get_page(REL, 3, Lsn(1)).await?[0], 3);
    Ok(())
}

#[tokio::test]
async fn a_refused_stream_says_why() -> anyhow::Result<()> {
    let port = fake_server().await?;
    match PageClient::connect("127.0.0.1", port, TenantId::generate(), TimelineId::from_bytes([0u8; 16])).await {
        Err(PageClientError::Refused { sqlstate, message }) => {
            assert_eq!((sqlstate.as_str(), message.as_str()), ("42704", "timeline not found"));
        }
        Err(e) => panic!("expected Refused, got {e}"),
        Ok(_) => panic!("the stream was not refused"),
    }
    let unused = TcpListener::bind("127.0.0.1:0").await?;
    let closed_port = unused.local_addr()?.port();
    drop(unused);
    assert!(matches!(connect(closed_port).await, Err(PageClientError::Connect { .. })));
    Ok(())
}

#[tokio::test]
async fn a_server_that_ends_the_stream_fails_everything_in_flight() -> anyhow::Result<()> {
    let client = connect(fake_server().await?).await?;
    let pages = client.get_pages(&[(REL, 5), (REL, 666), (REL, 6), (REL, 7)], Lsn(1)).await?;
    assert_eq!(pages[0].as_ref().map(|p| p[0]), Ok(5));
    for p in &pages[1..] {
        match p {
            Err(PageClientError::ConnectionLost(msg)) => assert!(msg.contains("the fake server gives up"), "{msg}"),
            other => panic!("expected ConnectionLost, got {other:?}"),
        }
    }
    assert!(client.closed().is_some_and(|e| e.is_fatal()));
    assert!(matches!(client.get_page(REL, 1, Lsn(1)).await, Err(PageClientError::ConnectionLost(_))));
    Ok(())
}
