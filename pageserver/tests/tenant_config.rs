//! Per-tenant settings through the HTTP API against a real primary's WAL:
//! creation with settings (bad ones create nothing), `PUT` changing what a
//! running timeline does (freezing at a lower `checkpoint_distance`,
//! compacting at a lower `compaction_threshold`, GC on a shorter
//! `gc_period`), the compact / gc / layers routes and the detail's sizes,
//! and persistence across a restart (a damaged `config.json` breaks the
//! tenant's timelines until a `PUT` replaces it).
mod common;

use std::time::{Duration, Instant};

use common::ps::*;
use pageserver::tenant::config::CONFIG_FILE;
use pageserver::tenant::repository::{RepoError, Repository};
use pageserver::metrics;
use pg_harness::PgCluster;
use serde_json::{json, Value};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn serve(repo: &std::sync::Arc<Repository>) -> anyhow::Result<Api> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let app = pageserver::http::router(repo.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Api { base, http: reqwest::Client::new() })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, v) = self.call(method.clone(), path, body).await?;
        anyhow::ensure!((200..300).contains(&status), "{method} {path}: {status} {v}");
        Ok(v)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.ok(reqwest::Method::GET, path, None).await
    }
}

/// Levels of the layers listed by `GET .../layers`.
fn count(layers: &Value, level: &str) -> usize {
    layers["layers"].as_array().map_or(0, |a| a.iter().filter(|l| l["level"] == level).count())
}

/// Write about `mib` MiB of WAL on the primary.
fn write_wal(pg: &PgCluster, mib: u32) -> anyhow::Result<()> {
    pg.sql(&format!(
        "CREATE TABLE IF NOT EXISTS w (id int, v text); \
         INSERT INTO w SELECT g, repeat('x', 200) FROM generate_series(1, {}) g;",
        mib * 4000
    ))?;
    Ok(())
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let started = Instant::now();
    while !f().await? {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(180), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_settings_apply_live_persist_and_refuse_bad_input() -> anyhow::Result<()> {
    let dir = workdir();
    // Defaults: no background GC, compaction only after flushes.
    let defaults = |t: &mut pageserver::tenant::timeline::TimelineConf| {
        t.gc_period = Duration::ZERO;
        t.compaction_period = Duration::ZERO;
    };
    let repo = Repository::open(conf(dir.path(), defaults)).await?;
    let api = Api::serve(&repo).await?;
    use reqwest::Method as M;

    // Creation: bad settings create nothing; good ones are reported back.
    let tenants_before = api.get("/v1/tenant").await?;
    for (config, message) in [
        (json!({ "foo": "1" }), "unknown setting 'foo' (known: checkpoint_distance, "),
        (json!({ "gc_horizon": "12XB" }), "gc_horizon: '12XB' is not a size (e.g. 64MiB)"),
        (json!({ "pitr_interval": "soon" }), "pitr_interval: 'soon' is not a duration (e.g. 10m)"),
    ] {
        let (status, v) = api.call(M::POST, "/v1/tenant", Some(json!({ "config": config }))).await?;
        assert_eq!(status, 400, "{v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.starts_with(message) && !e.contains('\n'), "{e}");
    }
    assert_eq!(api.get("/v1/tenant").await?, tenants_before, "a refused creation created nothing");
    let created = api
        .ok(M::POST, "/v1/tenant", Some(json!({ "config": { "gc_horizon": "1MiB", "pitr_interval": "0s" } })))
        .await?;
    let other = created["tenant_id"].as_str().unwrap().to_string();
    let c = api.get(&format!("/v1/tenant/{other}/config")).await?;
    assert_eq!(c["overrides"], json!({ "gc_horizon": "1MiB", "pitr_interval": "0s" }), "{c}");
    assert_eq!(c["effective"]["gc_horizon"], "1MiB");
    assert_eq!(c["effective"]["checkpoint_distance"], "64MiB", "the default");
    assert!(dir.path().join(format!("tenants/{other}/{CONFIG_FILE}")).exists());

    // A timeline on defaults: 64 MiB checkpoint distance, so 2 MiB of WAL
    // stays in memory.
    let (mut pg, tl) = imported_primary(&repo).await?;
    let (t, id) = (tl.tenant_id, tl.timeline_id);
    let tl_path = format!("/v1/tenant/{t}/timeline/{id}");
    let cfg_path = format!("/v1/tenant/{t}/config");
    write_wal(&pg, 2)?;
    catch_up(&tl, &pg).await?;
    let layers = api.get(&format!("{tl_path}/layers")).await?;
    assert!(layers["in_memory_layers"].as_u64().unwrap() >= 1, "{layers}");
    assert!(!tl.should_freeze(), "2 MiB in memory is below 64 MiB");
    assert_eq!(count(&layers, "L1"), 0);

    // Bad PUTs change nothing.
    let before = api.get(&cfg_path).await?;
    for body in [json!({ "checkpoint_distance": "256KiB", "bogus": 1 }), json!({ "compaction_threshold": "1" })] {
        let (status, v) = api.call(M::PUT, &cfg_path, Some(body)).await?;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"].as_str().unwrap_or_default().lines().count(), 1, "{v}");
    }
    assert_eq!(api.get(&cfg_path).await?, before);
    assert_eq!(tl.conf().checkpoint_distance, 64 << 20);

    // PUT: a small checkpoint distance and compaction threshold; the running
    // timeline freezes, flushes and compacts on them.
    let compactions = metrics::COMPACTION_RUNS.get();
    let put = api
        .ok(M::PUT, &cfg_path, Some(json!({ "checkpoint_distance": "256KiB", "compaction_threshold": 2 })))
        .await?;
    assert_eq!(put["overrides"], json!({ "checkpoint_distance": "256KiB", "compaction_threshold": "2" }), "{put}");
    assert_eq!(tl.conf().checkpoint_distance, 256 << 10, "the timeline sees the change");
    write_wal(&pg, 3)?;
    catch_up(&tl, &pg).await?;
    wait_for("L1 files from compaction", async || Ok(count(&api.get(&format!("{tl_path}/layers")).await?, "L1") > 0))
        .await?;
    assert!(metrics::COMPACTION_RUNS.get() > compactions, "compaction ran");

    // The on-demand pass: nothing below the threshold unless forced.
    api.ok(M::PUT, &cfg_path, Some(json!({ "checkpoint_distance": "256KiB", "compaction_threshold": 1000 }))).await?;
    write_wal(&pg, 2)?;
    catch_up(&tl, &pg).await?;
    api.ok(M::POST, &format!("{tl_path}/checkpoint"), None).await?;
    let r = api.ok(M::POST, &format!("{tl_path}/compact"), None).await?;
    assert_eq!(r["l0_compacted"], 0, "{r}");
    assert!(r["layers_before"]["l0_deltas"].as_u64().unwrap() >= 2, "{r}");
    let r = api.ok(M::POST, &format!("{tl_path}/compact?force=true"), None).await?;
    let l0_before = r["layers_before"]["l0_deltas"].as_u64().unwrap();
    assert!(l0_before >= 2 && r["l0_compacted"].as_u64() == Some(l0_before), "{r}");
    assert!(r["l1_created"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["layers_after"]["l0_deltas"], 0, "{r}");

    // GC with everything below the last record collectable: images first,
    // then the older layers go (the primary stopped: LSNs stay put).
    stop_and_catch_up(&tl, &mut pg).await?;
    api.ok(M::PUT, &cfg_path, Some(json!({ "gc_horizon": "0", "pitr_interval": "0s", "image_creation_threshold": 1 }))).await?;
    api.ok(M::POST, &format!("{tl_path}/checkpoint?image_layers=true"), None).await?;
    let reclaimed = metrics::GC_BYTES_REMOVED.get();
    let before = api.get(&tl_path).await?;
    let g = api.ok(M::POST, &format!("{tl_path}/gc"), None).await?;
    assert!(g["layers_removed"].as_u64().unwrap() > 0, "{g}");
    assert!(g["bytes_reclaimed"].as_u64().unwrap() > 0, "{g}");
    assert_eq!(g["gc_cutoff_lsn"], before["last_record_lsn"], "horizon 0 and no PITR window: {g}");
    assert_eq!(g["pitr_cutoff_lsn"], before["last_record_lsn"], "{g}");
    assert!(metrics::GC_BYTES_REMOVED.get() > reclaimed);
    let after = api.get(&tl_path).await?;
    assert_eq!(after["gc_cutoff_lsn"], g["gc_cutoff_lsn"]);
    assert_eq!(after["pitr_cutoff_lsn"], g["pitr_cutoff_lsn"]);
    let (b, a) = (before["current_physical_size"].as_u64().unwrap(), after["current_physical_size"].as_u64().unwrap());
    assert_eq!(b - a, g["bytes_reclaimed"].as_u64().unwrap(), "{before} {after}");

    // The listing names exactly the files on disk, with their sizes.
    let layers = api.get(&format!("{tl_path}/layers")).await?;
    let mut listed = 0;
    for l in layers["layers"].as_array().unwrap() {
        let path = tl.path.join(l["file_name"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&path)?.len(), l["size_bytes"].as_u64().unwrap(), "{}", path.display());
        listed += l["size_bytes"].as_u64().unwrap();
    }
    assert_eq!(listed, layers["current_physical_size"].as_u64().unwrap());
    assert_eq!(listed, after["current_physical_size"].as_u64().unwrap());
    let on_disk = std::fs::read_dir(&tl.path)?
        .filter_map(|e| e.ok())
        .filter(|e| pageserver::storage::LayerDesc::parse_file_name(&e.file_name().to_string_lossy()).is_some())
        .count();
    assert_eq!(on_disk, layers["layers"].as_array().unwrap().len());

    // A shorter gc_period wakes the tenant's background loop.
    let runs = metrics::GC_RUNS.get();
    api.ok(M::PUT, &format!("/v1/tenant/{t}/config"), Some(json!({ "gc_period": "1s", "pitr_interval": "0s" }))).await?;
    wait_for("a background GC pass", async || Ok(metrics::GC_RUNS.get() > runs)).await?;

    // Restart: the settings are back; a damaged file breaks only that
    // tenant's timelines until a PUT replaces it.
    let overrides = api.get(&cfg_path).await?["overrides"].clone();
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);
    let repo = Repository::open(conf(dir.path(), defaults)).await?;
    let api = Api::serve(&repo).await?;
    assert_eq!(api.get(&cfg_path).await?["overrides"], overrides);
    assert_eq!(repo.get_timeline(t, id)?.conf().gc_period, Duration::from_secs(1));
    repo.shutdown(false).await;
    drop(repo);
    std::fs::write(dir.path().join(format!("tenants/{t}/{CONFIG_FILE}")), b"{ not json")?;
    let repo = Repository::open(conf(dir.path(), defaults)).await?;
    let err = repo.get_timeline(t, id).unwrap_err();
    assert!(matches!(err, RepoError::TimelineBroken(..)) && err.to_string().contains(CONFIG_FILE), "{err}");
    assert_eq!(api_put_and_reopen(repo, &dir, t, defaults).await?.get_timeline(t, id)?.timeline_id, id);
    Ok(())
}

/// PUT settings on a tenant whose file was damaged, then reopen.
async fn api_put_and_reopen(
    repo: std::sync::Arc<Repository>,
    dir: &tempfile::TempDir,
    t: utils::id::TenantId,
    defaults: impl Fn(&mut pageserver::tenant::timeline::TimelineConf),
) -> anyhow::Result<std::sync::Arc<Repository>> {
    let api = Api::serve(&repo).await?;
    api.ok(reqwest::Method::PUT, &format!("/v1/tenant/{t}/config"), Some(json!({ "gc_horizon": "2MiB" }))).await?;
    repo.shutdown(false).await;
    drop(repo);
    let repo = Repository::open(conf(dir.path(), defaults)).await?;
    assert_eq!(repo.get_tenant(t)?.conf.overrides().gc_horizon_bytes, Some(2 << 20));
    Ok(repo)
}
