//! The check that a server's OpenAPI document and its axum router agree,
//! shared by the pageserver and safekeeper tests (the safekeeper includes
//! this file by path).
//!
//! * the (method, path) pairs of the document equal the router's `ROUTES`
//!   table (which the router is built from), with no duplicates;
//! * every route, requested on a live server with made-up ids, is answered
//!   by its handler (not the "no route" 404 nor a 405), with a status the
//!   document lists for that operation, and every error body is the
//!   documented `{"error": "..."}`;
//! * unknown paths and methods get the JSON 404 and 405;
//! * `GET /v1/openapi.json` serves the document itself.
#![allow(dead_code)]

use std::collections::BTreeSet;

use serde_json::Value;

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// (method, path) of every operation in the document.
pub fn spec_routes(spec: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.contains(&method.as_str()) {
                out.insert((method.clone(), path.clone()));
            }
        }
    }
    out
}

/// Runs all the checks against `router` served on a loopback port.
/// `body_for(method, path)` gives the JSON body to send, if any.
pub async fn check(
    spec_text: &str,
    routes: &[(&str, &str)],
    router: axum::Router,
    body_for: impl Fn(&str, &str) -> Option<Value>,
) -> anyhow::Result<()> {
    let spec: Value = serde_json::from_str(spec_text)?;
    assert!(spec["openapi"].as_str().unwrap_or("").starts_with("3."), "not OpenAPI 3");
    let table: BTreeSet<(String, String)> = routes.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(table.len(), routes.len(), "duplicate entries in ROUTES");
    let documented = spec_routes(&spec);
    let missing: Vec<_> = table.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&table).collect();
    assert!(missing.is_empty() && extra.is_empty(), "routes not in the spec: {missing:?}; spec paths without a route: {extra:?}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let tenant = utils::id::TenantId::generate().to_string();
    let timeline = utils::id::TimelineId::generate().to_string();
    for (method, path) in routes {
        let url = format!("{base}{}", path.replace("{tenant_id}", &tenant).replace("{timeline_id}", &timeline));
        let mut req = http.request(method.to_uppercase().parse()?, &url);
        if let Some(body) = body_for(method, path) {
            req = req.json(&body);
        }
        let r = req.send().await?;
        let status = r.status();
        let ctype = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let text = r.text().await?;
        let what = format!("{method} {path} -> {status} {text:.200}");
        assert_ne!(status.as_u16(), 405, "{what}");
        assert!(!(status.as_u16() == 404 && text.contains("no route")), "router has no handler: {what}");
        let op = &spec["paths"][*path][*method];
        assert!(op["responses"].get(status.as_str()).is_some(), "status not documented: {what}");
        if !status.is_success() {
            assert!(ctype.starts_with("application/json"), "{what}: {ctype}");
            let v: Value = serde_json::from_str(&text)?;
            assert!(v["error"].is_string() && v.as_object().map(|o| o.len()) == Some(1), "{what}");
        }
    }

    let r = http.get(format!("{base}/v1/no/such/route")).send().await?;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await?;
    assert!(v["error"].as_str().unwrap_or("").contains("no route GET /v1/no/such/route"), "{v}");
    let r = http.patch(format!("{base}/v1/status")).send().await?;
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await?["error"].as_str().unwrap_or("").contains("not allowed"));
    let served: Value = http.get(format!("{base}/v1/openapi.json")).send().await?.json().await?;
    assert_eq!(served, spec, "served document differs from the file");
    Ok(())
}
