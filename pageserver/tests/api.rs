//! The HTTP API and the `pageserver` binary: tenant and timeline creation
//! (import and branch), detail, the debug page route, the WAL source,
//! errors, metrics; the page service; `--help`; the OpenAPI document
//! against the router.
mod common;

use std::time::Duration;

use common::ps::*;
use pageserver::tenant::repository::Repository;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_end_to_end() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |_| {})).await?;
    let (base, pg_port) = serve_api_and_pages(&repo).await?;
    let http = reqwest::Client::new();

    let mut pg = pg_harness::PgCluster::init()?;
    pg.configure(&primary_settings())?;
    let r = http.post(format!("{base}/v1/tenant")).json(&json!({})).send().await?;
    assert_eq!(r.status(), 201);
    let tenant = r.json::<Value>().await?["tenant_id"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{base}/v1/tenant/{tenant}/timeline"))
        .json(&json!({ "import_pgdata": pg.data_dir() }))
        .send()
        .await?;
    assert_eq!(r.status(), 201, "{}", r.text().await?);
    let detail: Value = r.json().await?;
    let timeline = detail["timeline_id"].as_str().unwrap().to_string();
    let tl_url = format!("{base}/v1/tenant/{tenant}/timeline/{timeline}");
    assert_eq!(detail["last_record_lsn"], detail["disk_consistent_lsn"]);

    // Stream from the primary, then read a page of a new table.
    pg.start_postmaster()?;
    let r = http
        .put(format!("{tl_url}/wal_source"))
        .json(&json!({ "kind": "primary", "conninfo": pg.connstr("postgres") }))
        .send()
        .await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    pg.sql("CREATE TABLE h (x int); INSERT INTO h SELECT generate_series(1, 1000);")?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('h')")?.parse()?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let tl = repo.get_timeline(tenant.parse()?, timeline.parse()?)?;
    let lsn = catch_up(&tl, &pg).await?;
    let d: Value = http.get(format!("{tl_url}?include_size=true")).send().await?.json().await?;
    assert_eq!(d["walreceiver"]["connected"], true, "{d}");
    assert!(d["logical_size"].as_u64().unwrap() > 1 << 20, "{d}");
    let q = format!("spc=1663&db={db}&rel={node}&fork=0&lsn={lsn}");
    let r = http.get(format!("{tl_url}/rel_size?{q}")).send().await?;
    let nblocks = r.json::<Value>().await?["nblocks"].as_u64().unwrap();
    assert!(nblocks >= 4, "{nblocks}");
    let r = http.get(format!("{tl_url}/page?{q}&blk=1")).send().await?;
    assert_eq!(r.status(), 200);
    let page = r.bytes().await?;
    assert_eq!(page.len(), 8192);
    let rel = postgres_ffi::RelFileNode { spc_node: 1663, db_node: db, rel_node: node };
    assert_eq!(page, tl.get_rel_page_at_lsn(rel, 0, 1, lsn).await?);

    // Page service over the PostgreSQL protocol (psql as the client).
    let psql = |cmd: String| {
        std::process::Command::new(pg_harness::pg_bin("psql"))
            .args(["-X", "-At", "-h", "127.0.0.1", "-p", &pg_port.to_string(), "-U", "x", "-d", "x", "-c", &cmd])
            .output()
    };
    let out = psql(format!("rel_size {tenant} {timeline} {lsn} 1663 {db} {node} 0"))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), nblocks.to_string(), "{out:?}");
    let out = psql(format!("getpage {tenant} {timeline} latest 1663 {db} {node} 0 1"))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex::encode(&page));
    let out = psql(format!("rel_size {tenant} {timeline} latest 1663 {db} 4242 0"))?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{out:?}");

    // Branch through the API.
    let r = http
        .post(format!("{base}/v1/tenant/{tenant}/timeline"))
        .json(&json!({ "ancestor_timeline_id": timeline, "ancestor_start_lsn": lsn.to_string() }))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let branch: Value = r.json().await?;
    assert_eq!(branch["ancestor_timeline_id"], timeline.as_str());
    let list: Value = http.get(format!("{base}/v1/tenant/{tenant}/timeline")).send().await?.json().await?;
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Errors.
    let unknown = utils::id::TenantId::generate();
    let r = http.get(format!("{base}/v1/tenant/{unknown}/timeline/{timeline}")).send().await?;
    assert_eq!(r.status(), 404);
    assert!(r.text().await?.contains("not found"));
    let r = http.get(format!("{tl_url}/page?spc=1663&db={db}&rel=4242&fork=0&blk=0")).send().await?;
    assert_eq!(r.status(), 404);
    let r = http.get(format!("{base}/v1/tenant/{tenant}/timeline/{}/page?{q}&blk=0&lsn=0/10", branch["timeline_id"].as_str().unwrap())).send().await?;
    assert_eq!(r.status(), 400, "below the branch point");
    let r = http.post(format!("{base}/v1/tenant/{tenant}/timeline")).json(&json!({})).send().await?;
    assert_eq!(r.status(), 400);
    let r = http.put(format!("{tl_url}/wal_source")).json(&json!({ "kind": "primary", "conninfo": "bogus=1" })).send().await?;
    assert_eq!(r.status(), 400);
    let r = http.delete(tl_url.to_string()).send().await?;
    assert_eq!(r.status(), 409, "has a branch");

    // Checkpoint and metrics.
    let r = http.post(format!("{tl_url}/checkpoint?image_layers=true")).send().await?;
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await?;
    assert!(d["layers"]["image_files"].as_u64().unwrap() >= 1, "{d}");
    let m = http.get(format!("{base}/metrics")).send().await?.text().await?;
    assert!(m.contains("strata_pageserver_wal_ingest_records_total"), "{m}");
    let r = http.delete(format!("{tl_url}/wal_source")).send().await?;
    assert_eq!(r.status(), 200);
    // No WAL source connected: a future LSN is refused at once, not waited for.
    let r = http.get(format!("{tl_url}/page?{}&blk=0&lsn=FFFFFFFF/FFFFFFF8", q.split("&lsn=").next().unwrap())).send().await?;
    assert_eq!(r.status(), 400);
    assert!(r.text().await?.contains("in the future"));
    repo.shutdown(false).await;
    pg.stop()?;
    Ok(())
}

#[test]
fn binary_help_and_startup() -> anyhow::Result<()> {
    let bin = env!("CARGO_BIN_EXE_pageserver");
    let out = std::process::Command::new(bin).arg("--help").output()?;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in ["--workdir", "--listen-http", "--listen-pg"] {
        assert!(help.contains(flag), "{help}");
    }
    // Start it for real, ask for status, stop it with SIGTERM.
    let dir = workdir();
    let (http_port, pg_port) = (pg_harness::free_port()?, pg_harness::free_port()?);
    let mut child = std::process::Command::new(bin)
        .args(["--workdir", &dir.path().display().to_string()])
        .args(["--listen-http", &format!("127.0.0.1:{http_port}")])
        .args(["--listen-pg", &format!("127.0.0.1:{pg_port}")])
        .args(["--walredo-lib", &common::walredo_lib().display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let rt = tokio::runtime::Runtime::new()?;
    let body = rt.block_on(async {
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{http_port}/v1/status")).await {
                return r.text().await.ok();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
    let status = child.wait()?;
    assert!(body.unwrap_or_default().contains("tenants"));
    assert!(status.success(), "{status}");
    Ok(())
}

/// `openapi.json` describes exactly the routes of the router (see
/// `common::openapi`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_spec_matches_the_router() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |_| {})).await?;
    let router = pageserver::http::router(repo.clone());
    common::openapi::check(pageserver::http::OPENAPI_JSON, pageserver::http::ROUTES, router, |method, path| {
        match (method, path) {
            ("post", "/v1/tenant") | ("post", "/v1/tenant/{tenant_id}/timeline") => Some(json!({})),
            ("put", p) if p.ends_with("/wal_source") => Some(json!({ "kind": "primary", "conninfo": "host=127.0.0.1" })),
            ("put", p) if p.ends_with("/config") => Some(json!({ "gc_horizon": "1MiB" })),
            _ => None,
        }
    })
    .await?;
    // Malformed input is a 4xx with a JSON error, never a 5xx; initdb is not
    // run for an unknown tenant.
    let app = pageserver::http::router(repo.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let unknown = utils::id::TenantId::generate();
    let started = std::time::Instant::now();
    let r = http.post(format!("{base}/v1/tenant/{unknown}/timeline")).json(&json!({ "initdb": true })).send().await?;
    assert_eq!(r.status(), 404);
    assert!(started.elapsed() < Duration::from_secs(1), "ran initdb first");
    for (url, code) in [
        (format!("{base}/v1/tenant/nothex/timeline"), 400),
        (format!("{base}/v1/tenant/{unknown}/timeline/{unknown}/page?spc=x&db=1&rel=1&blk=0"), 400),
        (format!("{base}/v1/tenant/{unknown}/timeline/{unknown}/page?spc=1&db=1&rel=1&blk=0&lsn=zz"), 400),
    ] {
        let r = http.get(&url).send().await?;
        assert_eq!(r.status(), code, "{url}");
        assert!(r.json::<Value>().await?["error"].is_string(), "{url}");
    }
    let r = http.post(format!("{base}/v1/tenant/{unknown}/timeline")).body("{").header("content-type", "application/json").send().await?;
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await?["error"].is_string());
    repo.shutdown(false).await;
    Ok(())
}
