//! The broker's HTTP service.
//!
//! Routes:
//! * `POST /v1/publish` — body [`SafekeeperTimelineInfo`]; replaces that
//!   safekeeper's entry for the timeline and wakes subscribers.
//! * `GET /v1/tenant/{tenant_id}/timeline/{timeline_id}?after_version=N&timeout_ms=T`
//!   — the [`TimelineView`] once its version exceeds `N` (or after `T` ms,
//!   whatever it is then). Without `after_version` it answers at once.
//! * `GET /metrics` — Prometheus text format.
//! * `GET /v1/openapi.json` — the OpenAPI document of these routes
//!   (`broker/openapi.json`, with the scopes each takes).
//!
//! With `--auth-public-key-dir`, publishing takes a `safekeeperdata` (or
//! `admin`) token, and reading a timeline's view also a `pageserverapi`
//! token or that tenant's `tenant` token; `/metrics` is open ([`scopes_for`]).
//!
//! Cancellation: a subscriber that disconnects drops its wait; publishing
//! never waits on subscribers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};
use serde::Deserialize;
use tokio::sync::watch;
use utils::id::{TenantId, TimelineId};

use crate::{PublishedInfo, SafekeeperTimelineInfo, TimelineView};

/// The OpenAPI document of the broker's routes.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Longest a subscriber may wait in one request.
const MAX_POLL_TIMEOUT_MS: u64 = 60_000;

type TimelineKey = (TenantId, TimelineId);

struct TimelineEntry {
    version: watch::Sender<u64>,
    safekeepers: BTreeMap<u64, (SafekeeperTimelineInfo, Instant)>,
}

/// In-memory state shared by the handlers.
pub struct Broker {
    timelines: Mutex<HashMap<TimelineKey, TimelineEntry>>,
    registry: Registry,
    publishes: IntCounter,
    timelines_gauge: IntGauge,
}

impl Broker {
    pub fn new() -> anyhow::Result<Arc<Broker>> {
        let registry = Registry::new();
        let publishes = IntCounter::new("broker_publishes_total", "Safekeeper status messages received")?;
        let timelines_gauge = IntGauge::new("broker_timelines", "Timelines with at least one publisher")?;
        registry.register(Box::new(publishes.clone()))?;
        registry.register(Box::new(timelines_gauge.clone()))?;
        Ok(Arc::new(Broker { timelines: Mutex::new(HashMap::new()), registry, publishes, timelines_gauge }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TimelineKey, TimelineEntry>> {
        self.timelines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record one safekeeper's status and wake the timeline's subscribers.
    pub fn publish(&self, info: SafekeeperTimelineInfo) {
        let mut timelines = self.lock();
        let entry = timelines.entry((info.tenant_id, info.timeline_id)).or_insert_with(|| TimelineEntry {
            version: watch::Sender::new(0),
            safekeepers: BTreeMap::new(),
        });
        entry.safekeepers.insert(info.safekeeper_id, (info, Instant::now()));
        entry.version.send_modify(|v| *v += 1);
        self.timelines_gauge.set(timelines.len() as i64);
        self.publishes.inc();
    }

    /// The current view of a timeline and a receiver that changes with it.
    fn view(&self, key: TimelineKey) -> (TimelineView, watch::Receiver<u64>) {
        let mut timelines = self.lock();
        let entry = timelines.entry(key).or_insert_with(|| TimelineEntry {
            version: watch::Sender::new(0),
            safekeepers: BTreeMap::new(),
        });
        let safekeepers = entry
            .safekeepers
            .values()
            .map(|(info, at)| PublishedInfo { info: info.clone(), age_ms: at.elapsed().as_millis() as u64 })
            .collect();
        let view = TimelineView { version: *entry.version.borrow(), safekeepers };
        (view, entry.version.subscribe())
    }

    /// Wait until the timeline's version exceeds `after_version`, at most `timeout`.
    pub async fn wait_view(&self, key: TimelineKey, after_version: Option<u64>, timeout: Duration) -> TimelineView {
        let (view, mut rx) = self.view(key);
        let Some(after) = after_version else { return view };
        if view.version > after {
            return view;
        }
        // Timing out or the sender going away both end in "answer what there is".
        let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > after)).await;
        self.view(key).0
    }

    fn metrics_text(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own registered metrics into a Vec cannot fail.
        let mut families = self.registry.gather();
        // strata_auth_refused_total lives in the default registry.
        families.extend(prometheus::gather());
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[derive(Deserialize)]
struct PollParams {
    after_version: Option<u64>,
    timeout_ms: Option<u64>,
}

async fn publish(State(broker): State<Arc<Broker>>, Json(info): Json<SafekeeperTimelineInfo>) -> StatusCode {
    broker.publish(info);
    StatusCode::NO_CONTENT
}

async fn timeline_view(
    State(broker): State<Arc<Broker>>,
    Path((tenant_id, timeline_id)): Path<(TenantId, TimelineId)>,
    Query(params): Query<PollParams>,
) -> Json<TimelineView> {
    let timeout_ms = params.timeout_ms.unwrap_or(10_000).min(MAX_POLL_TIMEOUT_MS);
    let key = (tenant_id, timeline_id);
    Json(broker.wait_view(key, params.after_version, Duration::from_millis(timeout_ms)).await)
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    broker.metrics_text()
}

/// Which tokens each route takes when the broker checks them.
pub fn scopes_for(method: &axum::http::Method, path: &str) -> Option<&'static [auth::Scope]> {
    use auth::Scope::*;
    if http_api::auth::is_open_path(path) {
        None
    } else if method == axum::http::Method::GET && path.starts_with("/v1/tenant/") {
        Some(&[SafekeeperData, PageServerApi, Tenant])
    } else {
        Some(&[SafekeeperData])
    }
}

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/tenant/{tenant_id}/timeline/{timeline_id}", get(timeline_view))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(|| async { http_api::openapi_response(OPENAPI_JSON) }))
        .with_state(broker)
}

/// Serve on `listener` until `shutdown` resolves, accepting every caller.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_auth(listener, None, shutdown).await
}

/// [`serve`], checking tokens against `keys` when given.
pub async fn serve_with_auth(
    listener: tokio::net::TcpListener,
    keys: Option<Arc<auth::KeySet>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let broker = Broker::new()?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, auth = keys.is_some(), "broker listening");
    http_api::serve(listener, http_api::auth::with_auth(router(broker), keys, scopes_for), shutdown).await?;
    Ok(())
}
