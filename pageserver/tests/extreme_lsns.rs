//! LSNs and block numbers at the edges of their ranges from the network —
//! `FFFFFFFF/FFFFFFFF`, `FFFFFFFF/FFFFFFF8`, `FFFFFFFF/0`, `0/0`, block
//! `u32::MAX` — in HTTP query strings (`lsn`, `prev_lsn`, `blk`), in the
//! branch-creation body (`ancestor_start_lsn`) and in page stream requests:
//! each gets an error answer (400, or 504 for a future LSN waited for while
//! WAL can arrive; an Error response on the page stream), never a panic or
//! a wrapped position, and the same server answers a valid request after
//! each.
mod common;

use std::time::Duration;

use common::ps::*;
use pageclient::{ErrorCode, PageClient, PageClientError, RelTag};
use pageserver::tenant::repository::Repository;
use serde_json::json;
use utils::lsn::Lsn;

/// `FFFFFFFF/FFFFFFFF` is refused at once; the other far-future ones are
/// waited for (`wait_lsn_timeout`) since the walreceiver is connected.
const FUTURE: [&str; 2] = ["FFFFFFFF/FFFFFFF8", "FFFFFFFF/0"];

fn server_code<T: std::fmt::Debug>(r: Result<T, PageClientError>) -> Option<ErrorCode> {
    match r {
        Err(e) => e.code(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_lsns_get_errors_and_the_server_goes_on() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |c| c.wait_lsn_timeout = Duration::from_millis(300))).await?;
    let (base, pg_port) = serve_api_and_pages(&repo).await?;

    let (pg, tl) = imported_primary(&repo).await?;
    pg.sql("CREATE TABLE h (x int); INSERT INTO h SELECT generate_series(1, 1000)")?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('h')")?.parse()?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let lsn = catch_up(&tl, &pg).await?;
    let (tenant, timeline) = (tl.tenant_id, tl.timeline_id);
    let tl_url = format!("{base}/v1/tenant/{tenant}/timeline/{timeline}");
    let q = format!("spc=1663&db={db}&rel={node}&fork=0");
    let http = reqwest::Client::new();
    let status_of = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(&url).send().await.expect("the server answers");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default(), url)
        }
    };
    let still_serving = || async {
        let (status, body, _) = status_of(format!("{tl_url}/rel_size?{q}&lsn={lsn}")).await;
        assert_eq!(status, 200, "a valid read after the bad ones: {body}");
    };

    // HTTP query parameters.
    let mut cases: Vec<(String, u16)> = Vec::new();
    for bad in ["FFFFFFFF/FFFFFFFF", "0/0"] {
        cases.push((format!("{tl_url}/rel_size?{q}&lsn={bad}"), 400));
        cases.push((format!("{tl_url}/page?{q}&blk=0&lsn={bad}"), 400));
    }
    for bad in FUTURE {
        cases.push((format!("{tl_url}/rel_size?{q}&lsn={bad}"), 504));
        cases.push((format!("{tl_url}/page?{q}&blk=0&lsn={bad}"), 504));
    }
    for bad in ["FFFFFFFF/FFFFFFFF", "FFFFFFFF/FFFFFFF8", "FFFFFFFF/0", "0/0"] {
        cases.push((format!("{tl_url}/basebackup?lsn={bad}"), 400));
    }
    for bad in ["FFFFFFFF/FFFFFFFF", "FFFFFFFF/FFFFFFF8"] {
        cases.push((format!("{tl_url}/basebackup?lsn={lsn}&prev_lsn={bad}"), 400));
    }
    cases.push((format!("{tl_url}/page?{q}&blk=4294967295&lsn={lsn}"), 404));
    cases.push((format!("{tl_url}/rel_size?{q}&lsn=100000000/0"), 400));
    for (url, expected) in cases {
        let (status, body, url) = status_of(url).await;
        assert_eq!(status, expected, "{url}: {body}");
        still_serving().await;
    }

    // The branch-creation body.
    for bad in ["FFFFFFFF/FFFFFFFF", "FFFFFFFF/FFFFFFF8", "0/0", "0/1"] {
        let body = json!({ "ancestor_timeline_id": timeline, "ancestor_start_lsn": bad });
        let r = http.post(format!("{base}/v1/tenant/{tenant}/timeline")).json(&body).send().await?;
        let status = r.status().as_u16();
        assert_eq!(status, 400, "ancestor_start_lsn {bad}: {}", r.text().await?);
        still_serving().await;
    }

    // The page stream: per-request errors, and the stream goes on.
    let client = PageClient::connect("127.0.0.1", pg_port, tenant, timeline).await?;
    let rel = RelTag { spc: 1663, db, rel: node, fork: 0 };
    let page = client.get_page(rel, 0, lsn).await?;
    assert_eq!(server_code(client.get_page(rel, 0, Lsn(0)).await), Some(ErrorCode::LsnOutOfRange));
    assert_eq!(client.get_page(rel, 0, lsn).await?, page);
    for far in [Lsn(u64::MAX - 1), Lsn(u64::MAX - 7), Lsn(0xFFFF_FFFF_0000_0000)] {
        assert_eq!(server_code(client.get_page(rel, 0, far).await), Some(ErrorCode::LsnTimeout), "{far}");
        assert_eq!(client.get_page(rel, 0, lsn).await?, page);
    }
    assert_eq!(server_code(client.get_page(rel, u32::MAX, lsn).await), Some(ErrorCode::BeyondEnd));
    assert_eq!(server_code(client.nblocks(RelTag { rel: u32::MAX, ..rel }, lsn).await), Some(ErrorCode::NotFound));
    assert_eq!(client.get_page(rel, 0, lsn).await?, page);
    // Latest (`u64::MAX` on the wire) is not an overflow either.
    assert_eq!(client.get_page(rel, 0, Lsn(u64::MAX)).await?.len(), 8192);
    still_serving().await;
    Ok(())
}
