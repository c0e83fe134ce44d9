//! The local cluster with object storage: `strata stop; rm -rf
//! <repo>/pageserver; strata start` brings every tenant back from remote
//! storage (attached at a new generation), and an endpoint serves every
//! committed row — those in uploaded layers and those only in safekeeper
//! WAL above the remote-consistent LSN, with an identical `pg_dump`.
//! Against the default backend
//! (`<repo>/remote`) and against S3 (moto).
mod common;

use common::{http_post, psql, url_of, Repo};
use remote_storage::testing::MotoServer;

fn checkpoint_and_upload(repo: &Repo) -> serde_json::Value {
    let conf = control_plane::config::Config::load(&repo.path).unwrap();
    let state = control_plane::state::State::load(&repo.path).unwrap();
    let main = state.branches.iter().find(|b| b.name == "main").unwrap();
    let path = format!("/v1/tenant/{}/timeline/{}/checkpoint", main.tenant_id, main.timeline_id);
    let body = http_post(conf.pageserver.http_port, &path);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("checkpoint answered {body:?}: {e}"))
}

/// A plain-text dump; the `\restrict` key is fixed so two dumps compare.
fn pg_dump(url: &str) -> String {
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_dump")
        .args(["--restrict-key", "strata", url])
        .output()
        .expect("run pg_dump");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("pg_dump prints UTF-8")
}

fn lose_pageserver_and_recover(repo: Repo) {
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&url, "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    let detail = checkpoint_and_upload(&repo);
    let remote_lsn = detail["remote_consistent_lsn"].as_str().unwrap().to_string();
    assert_ne!(remote_lsn, "0/0", "nothing uploaded: {detail}");
    // Committed after the upload: only in the safekeepers' WAL.
    psql(&url, "INSERT INTO t SELECT g, 'late' FROM generate_series(20001, 20500) g");
    let sum = psql(&url, "SELECT count(*), sum(id) FROM t");
    let dump = pg_dump(&url);
    repo.ok(&["stop"]);

    std::fs::remove_dir_all(repo.path.join("pageserver")).unwrap();
    let started = repo.ok(&["start"]);
    assert!(started.contains("attached from remote storage (generation 2)"), "{started}");
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(psql(&url, "SELECT count(*), sum(id) FROM t"), sum, "rows lost with the pageserver's directory");
    assert!(pg_dump(&url) == dump, "pg_dump of the recovered endpoint differs from the one before");
    psql(&url, "INSERT INTO t VALUES (0, 'after recovery')");
    assert_eq!(psql(&url, "SELECT count(*) FROM t WHERE v = 'after recovery'"), "1");
}

#[test]
fn pageserver_directory_lost_default_backend() {
    let repo = common::start_cluster(Repo::new(), 1);
    let conf = control_plane::config::Config::load(&repo.path).unwrap();
    let expected = repo.path.join("remote").display().to_string();
    assert_eq!(conf.pageserver.remote_storage.as_deref(), Some(expected.as_str()));
    lose_pageserver_and_recover(repo);
}

#[test]
fn pageserver_directory_lost_s3_backend() {
    let moto = MotoServer::start();
    let mut repo = Repo::new();
    repo.envs.extend([
        ("AWS_ACCESS_KEY_ID".to_string(), "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "testing".to_string()),
    ]);
    let (base, ps, endpoints) = common::free_ports();
    let location = format!("s3://{}/cli", moto.bucket());
    repo.ok(&[
        "init", "--base-port", &base.to_string(), "--pageserver-port", &ps.to_string(), "--endpoint-base-port",
        &endpoints.to_string(), "--remote-storage", &location, "--s3-endpoint", &moto.endpoint(), "--s3-region", "us-east-1",
    ]);
    repo.ok(&["start"]);
    repo.ok(&["tenant", "create", "--set-default"]);
    lose_pageserver_and_recover(repo);
}

/// `strata init --pageserver-resident-limit`: stored in the config, passed
/// to the pageserver, which evicts uploaded layers to stay under it and
/// downloads them again when a compute starts (its basebackup reads every
/// page); `strata status` shows the resident and remote sizes per branch.
#[test]
fn pageserver_resident_limit_evicts_and_serves() {
    let repo = Repo::new();
    let (base, ps, endpoints) = common::free_ports();
    let ports = ["--base-port", &base.to_string(), "--pageserver-port", &ps.to_string(), "--endpoint-base-port", &endpoints.to_string()].map(String::from);
    let init = |extra: &[&str]| {
        let mut args: Vec<&str> = vec!["init"];
        args.extend(ports.iter().map(String::as_str));
        args.extend(extra);
        repo.run(&args)
    };
    let bad = init(&["--pageserver-resident-limit", "12XB"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("is not a size"), "{bad:?}");
    let no_remote = init(&["--pageserver-resident-limit", "1MiB", "--remote-storage", "none"]);
    assert!(!no_remote.status.success() && String::from_utf8_lossy(&no_remote.stderr).contains("needs object storage"), "{no_remote:?}");
    assert!(init(&["--pageserver-resident-limit", "1MiB"]).status.success());
    let conf = control_plane::config::Config::load(&repo.path).unwrap();
    assert_eq!(conf.pageserver.resident_limit.as_deref(), Some("1MiB"));
    repo.ok(&["start"]);
    repo.ok(&["tenant", "create", "--set-default"]);

    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&url, "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g");
    let detail = checkpoint_and_upload(&repo);
    let physical = detail["current_physical_size"].as_u64().unwrap();
    assert!(physical > 2 << 20, "the data must exceed the budget: {detail}");
    let sum = psql(&url, "SELECT count(*), sum(id) FROM t");

    let state = control_plane::state::State::load(&repo.path).unwrap();
    let main = state.branches.iter().find(|b| b.name == "main").unwrap();
    let tl_path = format!("/v1/tenant/{}/timeline/{}", main.tenant_id, main.timeline_id);
    let port = conf.pageserver.http_port;
    // The eviction task runs every few seconds: wait for it to get under the budget.
    let started = std::time::Instant::now();
    let resident = loop {
        let detail: serde_json::Value = serde_json::from_str(&common::http_get(port, &tl_path)).unwrap();
        let resident = detail["resident_physical_size"].as_u64().unwrap();
        if resident <= 1 << 20 {
            break resident;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "resident size stays over the budget: {detail}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(resident < physical);
    let metrics = common::http_get(port, "/metrics");
    assert!(common::metric(&metrics, "strata_pageserver_layer_evictions_total").unwrap_or(0.0) > 0.0, "no eviction counted");
    let status = repo.ok(&["status"]);
    assert!(status.contains("RESIDENT") && status.contains("REMOTE") && status.contains("PHYSICAL"), "{status}");

    // A new compute's basebackup reads every page: evicted layers come back.
    let downloads_before = common::metric(&metrics, "strata_pageserver_remote_layer_downloads_total").unwrap_or(0.0);
    repo.ok(&["endpoint", "stop", "main"]);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(psql(&url, "SELECT count(*), sum(id) FROM t"), sum);
    let metrics = common::http_get(port, "/metrics");
    let downloads = common::metric(&metrics, "strata_pageserver_remote_layer_downloads_total").unwrap_or(0.0);
    assert!(downloads > downloads_before, "the basebackup downloaded evicted layers ({downloads_before} → {downloads})");
}
