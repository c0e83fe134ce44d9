//! `openapi.json` describes exactly the routes of the safekeeper's router:
//! the shared check of `pageserver/tests/common/openapi.rs`, on an
//! in-process router over a scratch data directory.
#[path = "../../pageserver/tests/common/openapi.rs"]
mod openapi;

use std::sync::Arc;

use serde_json::json;
use safekeeper::timelines::Timelines;
use safekeeper::SafekeeperConf;

/// A safekeeper's timelines in `dir`, with no broker and no peers.
fn timelines_in(dir: &std::path::Path) -> anyhow::Result<Arc<Timelines>> {
    let conf = Arc::new(SafekeeperConf {
        id: 1,
        data_dir: dir.to_path_buf(),
        advertise_pg: "127.0.0.1:1".into(),
        advertise_http: "127.0.0.1:1".into(),
        broker_endpoint: None,
        keepalive_interval_ms: 1000,
        partial_message_timeout_ms: 10_000,
        remote_storage: None,
        wal_partial_offload_after_idle: std::time::Duration::from_secs(10),
        remote_wal_gc_interval: std::time::Duration::from_secs(60),
        remote_wal_retention: std::time::Duration::from_secs(7 * 86_400),
        compute_password_file: None,
        auth_keys: None,
        auth_token_file: None,
    });
    Ok(Timelines::load_all(conf)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_spec_matches_the_router() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let timelines = timelines_in(dir.path())?;
    let router = safekeeper::http::router(timelines.clone());
    openapi::check(safekeeper::http::OPENAPI_JSON, safekeeper::http::ROUTES, router, |method, path| match (method, path) {
        ("post", _) => Some(json!({ "timeline_id": utils::id::TimelineId::generate(), "start_lsn": "0/1000000" })),
        ("put", _) => Some(json!({ "conninfo": "host=127.0.0.1", "term": 1, "start_lsn": "0/1000000" })),
        _ => None,
    })
    .await?;
    timelines.shutdown().await;
    Ok(())
}

/// Input the fuzzer found to crash or 500 is a clear 4xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let timelines = timelines_in(dir.path())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let router = safekeeper::http::router(timelines.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let tenant = utils::id::TenantId::generate();
    let timeline = utils::id::TimelineId::generate();
    let url = format!("{base}/v1/tenant/{tenant}/timeline");
    // 2^63 is a power of two: it used to panic (division by zero).
    for size in [1u64 << 63, 1 << 31, 1 << 19, 3 << 20] {
        let body = json!({ "timeline_id": timeline, "start_lsn": "0/1000000", "wal_seg_size_bytes": size });
        let r = http.post(&url).json(&body).send().await?;
        assert_eq!(r.status(), 400, "{size}");
        assert!(r.text().await?.contains("wal_seg_size_bytes"));
    }
    let r = http.post(&url).json(&json!({ "timeline_id": timeline, "start_lsn": "0/2000000" })).send().await?;
    assert_eq!(r.status(), 201);
    // A compute starting before the timeline's first WAL used to be a 500.
    let compute = format!("{url}/{timeline}/compute");
    let r = http.put(&compute).json(&json!({ "conninfo": "host=127.0.0.1 port=1", "term": 1, "start_lsn": "0/1000000" })).send().await?;
    assert_eq!(r.status(), 409);
    assert!(r.text().await?.contains("before this timeline's first WAL"));
    let r = http.put(&compute).body("{}").header("content-type", "application/json").send().await?;
    assert_eq!(r.status(), 422);
    assert!(r.json::<serde_json::Value>().await?["error"].is_string());
    timelines.shutdown().await;
    Ok(())
}
