//! Tokens on *every* entry point of a running local cluster (auth is on by
//! default), driven by the OpenAPI documents the components serve
//! (`GET /v1/openapi.json` of the pageserver, the safekeeper and the
//! broker): every operation that takes a token (`bearerAuth`) answers 401
//! without one, with an expired one and with one signed by an unknown key,
//! and 403 for a token of another tenant and for one of a scope it does not
//! take (`x-strata-scopes`); an operation marked `security: []` answers 200
//! without a token; a GET with a scope it takes is let through. The same
//! four cases on the page service (every text command), the page stream and
//! the walsender. Requests that are refused never reach a handler, so the
//! DELETEs and POSTs here change nothing.
//!
//! Also: the proxy's metrics port (on `http_api::serve`) closes a
//! connection that sent half of its request headers and stalled.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use auth::{Claims, Scope, Signer};
use common::{started_cluster, Repo};
use control_plane::config::Config;
use control_plane::state::State;
use pq_proto::{ConnConfig, ReplicationClient};
use serde_json::Value;
use utils::id::{TenantId, TimelineId};

/// `METHOD path` on `port` with `token` (and `{}` as the body of a POST or
/// PUT): the status and the body.
fn request(method: &str, port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = if matches!(method, "POST" | "PUT") { "{}" } else { "" };
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("send");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).expect("answer");
    let text = String::from_utf8_lossy(&raw); // a basebackup is a tar
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn signer(repo: &Path) -> Signer {
    Signer::from_pem_file(&repo.join("auth/private/key-1.pem")).expect("the cluster's key")
}

/// The four refused tokens besides "none": an unknown key's, an expired one.
fn bad_tokens(repo: &Path) -> Vec<(&'static str, String)> {
    let dir = tempfile::tempdir().expect("temp dir");
    auth::generate_key_pair(&dir.path().join("k.pem"), &dir.path().join("k.pub.pem")).expect("key pair");
    let stranger = Signer::from_pem_file(&dir.path().join("k.pem")).expect("key").sign(&Claims::new(Scope::Admin)).expect("sign");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let expired = signer(repo).sign(&Claims { exp: Some(now - 3600), ..Claims::new(Scope::Admin) }).expect("sign");
    vec![("unknown key", stranger), ("expired", expired)]
}

fn scope_token(repo: &Path, scope: Scope) -> String {
    signer(repo).sign(&Claims::new(scope)).expect("sign")
}

fn tenant_token(repo: &Path, tenant: TenantId) -> String {
    signer(repo).sign(&Claims::tenant(tenant)).expect("sign")
}

/// The keys of a path item that are operations.
const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// What a component's routes are checked with.
struct Target<'a> {
    name: &'a str,
    port: u16,
    tenant: TenantId,
    timeline: TimelineId,
    other_tenant: TenantId,
}

/// Every operation of the document `target` serves, against the four cases.
/// Returns how many operations were checked.
fn check_component(repo: &Path, target: &Target<'_>) -> usize {
    let (status, text) = request("GET", target.port, "/v1/openapi.json", None);
    assert_eq!(status, 200, "{}: /v1/openapi.json is open", target.name);
    let spec: Value = serde_json::from_str(&text).expect("the served document is JSON");
    assert_eq!(spec["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer", "{}", target.name);
    let bad = bad_tokens(repo);
    let mut checked = 0;
    for (template, item) in spec["paths"].as_object().expect("paths") {
        let operations = item.as_object().expect("path item").iter().filter(|(m, _)| METHODS.contains(&m.as_str()));
        for (method, op) in operations {
            let method = method.to_uppercase();
            let path = |tenant: TenantId| {
                template.replace("{tenant_id}", &tenant.to_string()).replace("{timeline_id}", &target.timeline.to_string())
            };
            let what = format!("{} {method} {template}", target.name);
            let security = op["security"].as_array().unwrap_or_else(|| panic!("{what}: no `security`"));
            if security.is_empty() {
                assert_eq!(request(&method, target.port, &path(target.tenant), None).0, 200, "{what} is open");
                checked += 1;
                continue;
            }
            assert_eq!(security[0]["bearerAuth"], Value::Array(vec![]), "{what}");
            check_operation(repo, target, &what, &method, op, &bad, path);
            checked += 1;
        }
    }
    checked
}

fn check_operation(
    repo: &Path,
    target: &Target<'_>,
    what: &str,
    method: &str,
    op: &Value,
    bad: &[(&str, String)],
    path: impl Fn(TenantId) -> String,
) {
    let scopes: Vec<&str> = op["x-strata-scopes"].as_array().unwrap_or_else(|| panic!("{what}: no x-strata-scopes")).iter().filter_map(Value::as_str).collect();
    let own = path(target.tenant);
    let (status, body) = request(method, target.port, &own, None);
    assert_eq!(status, 401, "{what} without a token: {body}");
    for (kind, token) in bad {
        let (status, body) = request(method, target.port, &own, Some(token));
        assert_eq!(status, 401, "{what} with a token of an {kind}: {body}");
    }
    // Another tenant: on a tenant's path its neighbour's token, elsewhere
    // any tenant token.
    let tenant_path = own != path(target.other_tenant);
    let (status, body) = request(method, target.port, &own, Some(&tenant_token(repo, target.other_tenant)));
    assert_eq!(status, 403, "{what} with another tenant's token: {body}");
    if !tenant_path {
        assert_eq!(request(method, target.port, &own, Some(&tenant_token(repo, target.tenant))).0, 403, "{what}: a tenant token off a tenant path");
    }
    for (name, scope) in [("pageserverapi", Scope::PageServerApi), ("safekeeperdata", Scope::SafekeeperData)] {
        // A token the operation takes is sent to GETs only: a POST, PUT or
        // DELETE would run.
        if scopes.contains(&name) && method != "GET" {
            continue;
        }
        let token = scope_token(repo, scope);
        let (status, body) = request(method, target.port, &own, Some(&token));
        if !scopes.contains(&name) {
            assert_eq!(status, 403, "{what} with a {name} token: {body}");
        } else if method == "GET" {
            assert!(status != 401 && status != 403, "{what} refuses a {name} token: {status} {body}");
        }
    }
    if method == "GET" && tenant_path && scopes.contains(&"tenant") {
        let (status, body) = request(method, target.port, &own, Some(&tenant_token(repo, target.tenant)));
        assert!(status != 401 && status != 403, "{what} refuses its own tenant's token: {status} {body}");
    }
}

/// The SQLSTATE (or the client's error) of logging in to `port` with
/// `password` and running `command` (a simple query), `None` if it ran.
fn pg_command(port: u16, options: Option<String>, password: Option<&str>, command: &str) -> Option<String> {
    let conf = ConnConfig { host: "127.0.0.1".into(), port, user: "u".into(), password: password.map(str::to_string), options, ..ConnConfig::default() };
    let code = |e: pq_proto::ProtocolError| e.sqlstate().map(str::to_string).unwrap_or_else(|| e.to_string());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut client = match ReplicationClient::connect_config(&conf).await {
            Ok(c) => c,
            Err(e) => return Some(code(e)),
        };
        if command == "IDENTIFY_SYSTEM" {
            return client.identify_system().await.err().map(code);
        }
        client.simple_query(command).await.err().map(code)
    })
}

/// The four cases at the login of a PostgreSQL-protocol entry point.
fn check_login(repo: &Path, what: &str, port: u16, options: Option<String>, command: &str) {
    let none = pg_command(port, options.clone(), None, command).expect("refused");
    assert!(none.contains("asked for a password"), "{what} without a token: {none}");
    for (kind, token) in bad_tokens(repo) {
        assert_eq!(pg_command(port, options.clone(), Some(&token), command).as_deref(), Some("28P01"), "{what} with a token of an {kind}");
    }
}

fn page_stream_open(port: u16, tenant: TenantId, timeline: TimelineId, token: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        match pageclient::PageClient::connect_with_token("127.0.0.1", port, tenant, timeline, Some(token)).await {
            Ok(_) => None,
            Err(pageclient::PageClientError::Refused { sqlstate, .. }) => Some(sqlstate),
            Err(e) => Some(e.to_string()),
        }
    })
}

#[test]
fn every_route_and_protocol_entry_point_refuses_bad_tokens() {
    let repo: Repo = started_cluster(1);
    let conf = Config::load(&repo.path).expect("config");
    assert!(conf.auth, "auth is on by default");
    let proxy_http = conf.proxy.as_ref().expect("a proxy").http_port;
    // Half of a request's headers, then silence (checked at the end).
    let mut stalled = TcpStream::connect(("127.0.0.1", proxy_http)).expect("connect to the proxy's metrics port");
    stalled.write_all(b"GET /metrics HTTP/1.1\r\nHo").expect("send");

    repo.ok(&["tenant", "create"]);
    let state = State::load(&repo.path).expect("state");
    let a = state.default_tenant.expect("a default tenant");
    let b = state.tenants().into_iter().find(|t| *t != a).expect("a second tenant");
    let a_main = state.branch(a, "main").expect("main").timeline_id;
    let b_main = state.branch(b, "main").expect("main").timeline_id;
    let components = [
        ("pageserver", conf.pageserver.http_port),
        ("safekeeper", conf.safekeepers[0].http_port),
        ("broker", conf.broker.http_port),
    ];
    for (name, port) in components {
        let target = Target { name, port, tenant: a, timeline: a_main, other_tenant: b };
        let checked = check_component(&repo.path, &target);
        assert!(checked >= 4, "{name}: only {checked} operations documented");
    }

    // The page service: every text command and the page stream.
    let (ps_pg, sk_pg) = (conf.pageserver.pg_port, conf.safekeepers[0].pg_port);
    let commands = |t: TenantId, tl: TimelineId| {
        [
            format!("getpage {t} {tl} latest 1663 5 1259 0 0"),
            format!("rel_size {t} {tl} latest 1663 5 1259 0"),
            format!("rel_exists {t} {tl} latest 1663 5 1259 0"),
            format!("db_size {t} {tl} latest 1663 5"),
            format!("pagestream {t} {tl}"),
        ]
    };
    for command in commands(a, a_main) {
        check_login(&repo.path, &format!("page service {command}"), ps_pg, None, &command);
    }
    let tenant_a = tenant_token(&repo.path, a);
    let wrong_scope = scope_token(&repo.path, Scope::SafekeeperData);
    for (own, other) in commands(a, a_main).into_iter().zip(commands(b, b_main)).filter(|(c, _)| !c.starts_with("pagestream")) {
        assert_eq!(pg_command(ps_pg, None, Some(&tenant_a), &other).as_deref(), Some("42501"), "{other} with another tenant's token");
        assert_eq!(pg_command(ps_pg, None, Some(&wrong_scope), &own).as_deref(), Some("42501"), "{own} with a safekeeperdata token");
        let through = pg_command(ps_pg, None, Some(&tenant_a), &own);
        assert!(!matches!(through.as_deref(), Some("42501" | "28P01")), "{own} with its tenant's token: {through:?}");
    }
    assert_eq!(page_stream_open(ps_pg, b, b_main, &tenant_a).as_deref(), Some("42501"));
    assert_eq!(page_stream_open(ps_pg, a, a_main, &wrong_scope).as_deref(), Some("42501"));
    assert_eq!(page_stream_open(ps_pg, a, a_main, &tenant_a), None);

    // The walsender (it takes every component scope, so no wrong scope).
    let options = |t: TenantId, tl: TimelineId| Some(format!("-c tenant_id={t} -c timeline_id={tl}"));
    check_login(&repo.path, "walsender", sk_pg, options(a, a_main), "IDENTIFY_SYSTEM");
    assert_eq!(pg_command(sk_pg, options(b, b_main), Some(&tenant_a), "IDENTIFY_SYSTEM").as_deref(), Some("42501"));
    assert_eq!(pg_command(sk_pg, options(a, a_main), Some(&tenant_a), "IDENTIFY_SYSTEM"), None);

    // The stalled request on the proxy's metrics port has been closed (the
    // header timeout is 10 s; the checks above take longer), and the port
    // still serves.
    stalled.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut rest = Vec::new();
    let closed = stalled.read_to_end(&mut rest).is_ok();
    assert!(closed, "the proxy's metrics server still holds a connection with half its headers");
    let (status, body) = request("GET", proxy_http, "/metrics", None);
    assert_eq!(status, 200, "{body}");
}
