//! `openapi.json` describes exactly the routes of the safekeeper's router:
//! the shared check of `pageserver/tests/common/openapi.rs`, on an
//! in-process router over a scratch data directory.
#[path = "../../pageserver/tests/common/openapi.rs"]
mod openapi;

use std::sync::Arc;

use serde_json::json;
use safekeeper::timelines::Timelines;
use safekeeper::SafekeeperConf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_spec_matches_the_router() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = Arc::new(SafekeeperConf {
        id: 1,
        data_dir: dir.path().to_path_buf(),
        advertise_pg: "127.0.0.1:1".into(),
        advertise_http: "127.0.0.1:1".into(),
        broker_endpoint: None,
        keepalive_interval_ms: 1000,
    });
    let timelines = Timelines::load_all(conf)?;
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
