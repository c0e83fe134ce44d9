//! Tokens on every component of a local cluster (auth is on by default),
//! against the running processes: the pageserver's, safekeeper's and
//! broker's HTTP APIs answer 401 without a token, with one signed by an
//! unknown key and with an expired one, 403 for another scope or another
//! tenant (the same answer whether or not that tenant exists) and 200 with
//! the right one; the page service and the walsender refuse a bad token
//! with a PostgreSQL error and accept the right one; a key rotation keeps
//! old tokens working until the old key is removed, and the cluster works
//! throughout.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use auth::{Claims, Scope, Signer};
use common::{psql, started_cluster, url_of, Repo};
use control_plane::config::Config;
use control_plane::state::State;
use pq_proto::{ConnConfig, ReplicationClient};
use utils::id::{TenantId, TimelineId};

/// `METHOD http://127.0.0.1:{port}{path}` with `token` and a JSON `body`:
/// status and body.
fn request(method: &str, port: u16, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body.as_bytes()).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    request("GET", port, path, token, "")
}

fn token(repo: &Repo, scope: &str, tenant: Option<TenantId>) -> String {
    let mut args = vec!["auth", "token", "--scope", scope];
    let tenant = tenant.map(|t| t.to_string());
    if let Some(t) = &tenant {
        args.extend(["--tenant", t]);
    }
    repo.ok(&args).trim().to_string()
}

/// A token signed by a key the cluster does not know.
fn stranger_token() -> String {
    let dir = tempfile::tempdir().unwrap();
    auth::generate_key_pair(&dir.path().join("k.pem"), &dir.path().join("k.pub.pem")).unwrap();
    Signer::from_pem_file(&dir.path().join("k.pem")).unwrap().sign(&Claims::new(Scope::Admin)).unwrap()
}

/// An admin token of the cluster's own key that expired an hour ago.
fn expired_token(repo: &Path) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let signer = Signer::from_pem_file(&repo.join("auth/private/key-1.pem")).unwrap();
    signer.sign(&Claims { exp: Some(now - 3600), ..Claims::new(Scope::Admin) }).unwrap()
}

/// 401 without a token, with a stranger's and an expired one, on `path`.
fn assert_unauthorized(what: &str, port: u16, path: &str, repo: &Path) {
    for (kind, token) in [("no token", None), ("unknown key", Some(stranger_token())), ("expired", Some(expired_token(repo)))] {
        let (status, body) = get(port, path, token.as_deref());
        assert_eq!(status, 401, "{what} {path} with {kind}: {body}");
    }
}

/// The SQLSTATE (or the client's error) a replication login to the
/// safekeeper fails with, or `None` when IDENTIFY_SYSTEM succeeds.
fn walsender_login(port: u16, tenant: TenantId, timeline: TimelineId, password: Option<String>) -> Option<String> {
    let conf = ConnConfig {
        host: "127.0.0.1".into(),
        port,
        user: "pageserver".into(),
        password,
        options: Some(format!("-c tenant_id={tenant} -c timeline_id={timeline}")),
        ..ConnConfig::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = match ReplicationClient::connect_config(&conf).await {
            Ok(c) => c,
            Err(e) => return Some(e.sqlstate().map(str::to_string).unwrap_or_else(|| e.to_string())),
        };
        client.identify_system().await.err().map(|e| e.sqlstate().map(str::to_string).unwrap_or_else(|| e.to_string()))
    })
}

/// The SQLSTATE (or the client's error) opening a page stream fails with,
/// or `None` when it opens.
fn page_stream_open(port: u16, tenant: TenantId, timeline: TimelineId, token: Option<&str>) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        match pageclient::PageClient::connect_with_token("127.0.0.1", port, tenant, timeline, token).await {
            Ok(_) => None,
            Err(pageclient::PageClientError::Refused { sqlstate, .. }) => Some(sqlstate),
            Err(e) => Some(e.to_string()),
        }
    })
}

#[test]
fn every_interface_checks_tokens_and_a_rotation_keeps_the_cluster_working() {
    let repo = started_cluster(1);
    let conf = Config::load(&repo.path).unwrap();
    assert!(conf.auth, "auth is on by default");
    repo.ok(&["tenant", "create"]);
    let state = State::load(&repo.path).unwrap();
    let a = state.default_tenant.unwrap();
    let b = state.tenants().into_iter().find(|t| *t != a).expect("a second tenant");
    let a_main = state.branch(a, "main").unwrap().timeline_id;
    let b_main = state.branch(b, "main").unwrap().timeline_id;
    let missing = TenantId::generate();
    let (ps, sk, broker) = (conf.pageserver.http_port, conf.safekeepers[0].http_port, conf.broker.http_port);
    let (ps_pg, sk_pg) = (conf.pageserver.pg_port, conf.safekeepers[0].pg_port);
    let tenant_a = token(&repo, "tenant", Some(a));

    // The pageserver's HTTP API.
    let a_timelines = format!("/v1/tenant/{a}/timeline");
    assert_unauthorized("pageserver", ps, &a_timelines, &repo.path);
    assert_eq!(get(ps, &a_timelines, Some(&token(&repo, "safekeeperdata", None))).0, 403);
    assert_eq!(get(ps, "/v1/tenant", Some(&tenant_a)).0, 403, "a tenant token lists tenants");
    let other = get(ps, &format!("/v1/tenant/{b}/timeline"), Some(&tenant_a));
    let absent = get(ps, &format!("/v1/tenant/{missing}/timeline"), Some(&tenant_a));
    assert_eq!(other.0, 403, "{other:?}");
    assert_eq!(other, absent, "the answer for another tenant tells whether it exists");
    let (status, body) = get(ps, &a_timelines, Some(&tenant_a));
    assert!(status == 200 && body.contains(&a_main.to_string()), "{status} {body}");
    assert_eq!(get(ps, "/v1/tenant", Some(&token(&repo, "pageserverapi", None))).0, 200);
    assert_eq!(get(ps, "/metrics", None).0, 200, "/metrics is open");
    assert_eq!(get(ps, "/v1/status", None).0, 200, "/v1/status is open");

    // A safekeeper's HTTP API.
    let a_sk = format!("/v1/tenant/{a}/timeline/{a_main}");
    assert_unauthorized("safekeeper", sk, &a_sk, &repo.path);
    assert_unauthorized("safekeeper", sk, "/v1/status", &repo.path);
    assert_eq!(get(sk, &a_sk, Some(&token(&repo, "pageserverapi", None))).0, 403);
    let other = get(sk, &format!("/v1/tenant/{b}/timeline/{b_main}"), Some(&tenant_a));
    let absent = get(sk, &format!("/v1/tenant/{missing}/timeline/{b_main}"), Some(&tenant_a));
    assert_eq!(other.0, 403, "{other:?}");
    assert_eq!(other, absent);
    assert_eq!(get(sk, &a_sk, Some(&tenant_a)).0, 200);
    assert_eq!(get(sk, &a_sk, Some(&token(&repo, "safekeeperdata", None))).0, 200);
    assert_eq!(get(sk, "/metrics", None).0, 200);

    // The broker: publishing is for safekeepers only.
    let (t, tl) = (TenantId::generate(), TimelineId::generate());
    let info = serde_json::json!({
        "safekeeper_id": 99, "tenant_id": t, "timeline_id": tl, "term": 1, "flush_lsn": "0/100",
        "commit_lsn": "0/100", "remote_consistent_lsn": "0/0", "pg_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2",
    })
    .to_string();
    assert_eq!(request("POST", broker, "/v1/publish", None, &info).0, 401);
    assert_eq!(request("POST", broker, "/v1/publish", Some(&stranger_token()), &info).0, 401);
    assert_eq!(request("POST", broker, "/v1/publish", Some(&token(&repo, "pageserverapi", None)), &info).0, 403);
    assert_eq!(request("POST", broker, "/v1/publish", Some(&tenant_a), &info).0, 403);
    assert_eq!(request("POST", broker, "/v1/publish", Some(&token(&repo, "safekeeperdata", None)), &info).0, 204);
    let view = format!("/v1/tenant/{a}/timeline/{a_main}");
    assert_unauthorized("broker", broker, &view, &repo.path);
    let other = get(broker, &format!("/v1/tenant/{b}/timeline/{b_main}"), Some(&tenant_a));
    assert_eq!(other.0, 403, "{other:?}");
    assert_eq!(other, get(broker, &format!("/v1/tenant/{missing}/timeline/{b_main}"), Some(&tenant_a)));
    let (status, body) = get(broker, &view, Some(&tenant_a));
    assert!(status == 200 && body.contains("safekeepers"), "{status} {body}");

    // The page service: the token is the password.
    let no_token = page_stream_open(ps_pg, a, a_main, None).unwrap();
    assert!(no_token.contains("asked for a password"), "{no_token}");
    assert_eq!(page_stream_open(ps_pg, a, a_main, Some("")).as_deref(), Some("28P01"));
    assert_eq!(page_stream_open(ps_pg, a, a_main, Some(&stranger_token())).as_deref(), Some("28P01"));
    assert_eq!(page_stream_open(ps_pg, b, b_main, Some(&tenant_a)).as_deref(), Some("42501"));
    assert_eq!(page_stream_open(ps_pg, missing, b_main, Some(&tenant_a)).as_deref(), Some("42501"));
    assert_eq!(page_stream_open(ps_pg, a, a_main, Some(&token(&repo, "safekeeperdata", None))).as_deref(), Some("42501"));
    assert_eq!(page_stream_open(ps_pg, a, a_main, Some(&tenant_a)), None);
    assert_eq!(page_stream_open(ps_pg, b, b_main, Some(&token(&repo, "pageserverapi", None))), None);

    // The walsender.
    let no_token = walsender_login(sk_pg, a, a_main, None).unwrap();
    assert!(no_token.contains("asked for a password"), "{no_token}");
    assert_eq!(walsender_login(sk_pg, a, a_main, Some("not-a-jwt".into())).as_deref(), Some("28P01"));
    assert_eq!(walsender_login(sk_pg, a, a_main, Some(stranger_token())).as_deref(), Some("28P01"));
    assert_eq!(walsender_login(sk_pg, b, b_main, Some(tenant_a.clone())).as_deref(), Some("42501"));
    assert_eq!(walsender_login(sk_pg, a, a_main, Some(tenant_a.clone())), None);
    assert_eq!(walsender_login(sk_pg, a, a_main, Some(token(&repo, "pageserverapi", None))), None);
    let metrics = get(sk, "/metrics", None).1;
    assert!(metrics.contains("strata_auth_refused_total{interface=\"walsender\",reason=\"bad_signature\"}"), "{metrics}");

    // The whole cluster with tokens: an endpoint writes, the WAL reaches
    // the pageserver through the safekeeper, a restart reads it back.
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&url, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)");

    // Rotation: old and new tokens both work, then only the new ones.
    let old_admin = repo.admin_token().unwrap();
    repo.ok(&["auth", "rotate"]);
    let new_admin = repo.admin_token().unwrap();
    assert_ne!(old_admin, new_admin, "tokens re-signed");
    std::thread::sleep(auth::KeySet::RECHECK_INTERVAL + Duration::from_millis(500));
    for port in [ps, sk] {
        assert_eq!(get(port, "/v1/status", Some(&old_admin)).0, 200, "old key during the rotation on port {port}");
        assert_eq!(get(port, "/v1/status", Some(&new_admin)).0, 200, "new key during the rotation on port {port}");
    }
    repo.ok(&["auth", "finish-rotation"]);
    assert!(!repo.path.join("auth/public/key-1.pem").exists());
    std::thread::sleep(auth::KeySet::RECHECK_INTERVAL + Duration::from_millis(500));
    assert_eq!(get(sk, "/v1/status", Some(&old_admin)).0, 401, "old key after the rotation");
    assert_eq!(get(ps, &a_timelines, Some(&old_admin)).0, 401);
    assert_eq!(get(broker, &view, Some(&old_admin)).0, 401);
    assert_eq!(get(ps, &a_timelines, Some(&new_admin)).0, 200);
    assert_eq!(walsender_login(sk_pg, a, a_main, Some(old_admin)).as_deref(), Some("28P01"));

    // Components present their re-signed tokens: new writes reach the
    // pageserver (walreceiver → safekeeper), and a restarted endpoint
    // (basebackup with the control plane's new token) reads them.
    psql(&url, "INSERT INTO t SELECT generate_series(1001, 2000)");
    repo.ok(&["endpoint", "stop", "main"]);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(psql(&url, "SELECT count(*), sum(x) FROM t").trim(), "2000|2001000");
}

#[test]
fn no_auth_leaves_every_interface_open() {
    let repo = Repo::new();
    let (base, ps, endpoints) = common::free_ports();
    repo.ok(&["init", "--no-auth", "--base-port", &base.to_string(), "--pageserver-port", &ps.to_string(), "--endpoint-base-port", &endpoints.to_string()]);
    assert!(!repo.path.join("auth").exists());
    repo.ok(&["start"]);
    let conf = Config::load(&repo.path).unwrap();
    assert!(!conf.auth);
    assert_eq!(get(conf.pageserver.http_port, "/v1/tenant", None).0, 200);
    assert_eq!(get(conf.safekeepers[0].http_port, "/v1/status", None).0, 200);
    assert!(!repo.run(&["auth", "rotate"]).status.success(), "rotate without auth");
}
