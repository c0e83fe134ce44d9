//! The safekeeper's HTTP management API (JSON), used by the control plane.
//!
//! * `POST   /v1/tenant/{tenant_id}/timeline` — create ([`CreateTimelineRequest`])
//! * `PUT    /v1/tenant/{tenant_id}/timeline/{timeline_id}/compute` — follow a
//!   compute ([`ComputeSpec`]: conninfo, term, start LSN); the current spec
//!   again makes the acceptor connect now instead of after its backoff
//! * `GET    /v1/tenant/{tenant_id}/timeline/{timeline_id}` — status (term,
//!   term history, last log term, flush/commit/last record LSNs, the
//!   offloaded `backup_lsn` and who offloads, …)
//! * `POST   /v1/tenant/{tenant_id}/timeline/{timeline_id}/recover` — catch up
//!   from a peer ([`RecoveryTarget`]); answers once flushed up to `up_to`
//!   (504 after [`RECOVER_WAIT`] otherwise)
//! * `DELETE /v1/tenant/{tenant_id}/timeline/{timeline_id}`
//! * `GET    /v1/status` — this safekeeper and its timelines
//! * `GET    /metrics` — Prometheus
//! * `GET    /v1/openapi.json` — the OpenAPI 3 description of all of this
//!   (`safekeeper/openapi.json`, embedded at build time)
//!
//! With `--auth-public-key-dir`, every route but `/metrics` and
//! `/v1/openapi.json` needs `Authorization: Bearer <JWT>` (401 without a
//! valid one, 403 for another scope or tenant): see [`scopes_for`].
//!
//! Errors are `{"error": "..."}` with 400 (malformed path or body, bad
//! value), 404 (unknown timeline or route), 405 (method not allowed), 409
//! (exists, old term, lagging, other system), 415/422 (body not JSON / not of
//! the expected shape) or 500. The extractors [`ApiPath`] and [`ApiJson`] turn
//! malformed input into that same JSON body. (They and the route table are the
//! same as the pageserver's `http` module; the two crates share no HTTP crate.)
//!
//! Routes are declared once, in the `routes!` table of [`router`]: it builds
//! the router and defines [`ROUTES`], which the tests compare with
//! `openapi.json` and probe against the router.

use std::sync::Arc;

use axum::extract::State;
use http_api::{method_not_allowed, no_route, ApiError, ApiJson, ApiPath};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Json, Router};
use serde::Serialize;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::control_file::{ComputeSpec, TermHistory};
use crate::recovery::RecoveryTarget;
use crate::timeline::{AcceptorStatus, BackupStatus, CreateTimelineRequest, Timeline, TimelineError};
use crate::timelines::{Timelines, TimelinesError};
use crate::walsender::ReplicaStatus;



/// The OpenAPI 3 description served at `GET /v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    http_api::openapi_response(OPENAPI_JSON)
}


impl From<TimelinesError> for ApiError {
    fn from(e: TimelinesError) -> Self {
        let code = match &e {
            TimelinesError::AlreadyExists(..) => StatusCode::CONFLICT,
            TimelinesError::NotFound(..) => StatusCode::NOT_FOUND,
            TimelinesError::Timeline(inner) => return ApiError::from(TimelineErrorRef(inner)),
            TimelinesError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

struct TimelineErrorRef<'a>(&'a TimelineError);

impl From<TimelineErrorRef<'_>> for ApiError {
    fn from(e: TimelineErrorRef<'_>) -> Self {
        let code = match e.0 {
            TimelineError::OldTerm { .. }
            | TimelineError::BeforeStart { .. }
            | TimelineError::SystemIdMismatch { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.0.to_string())
    }
}

impl From<TimelineError> for ApiError {
    fn from(e: TimelineError) -> Self {
        ApiError::from(TimelineErrorRef(&e))
    }
}

#[derive(Serialize)]
pub struct TimelineStatus {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub safekeeper_id: u64,
    pub system_id: u64,
    pub term: u64,
    /// Term of the last WAL held.
    pub last_log_term: u64,
    pub term_history: TermHistory,
    pub timeline_start_lsn: Lsn,
    pub flush_lsn: Lsn,
    /// End of the last complete record held (a record boundary <= flush_lsn).
    pub last_record_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub remote_consistent_lsn: Lsn,
    /// WAL offloaded to remote storage (whole segments below it).
    pub backup_lsn: Lsn,
    /// The WAL offload: who offloads, the last error (absent without remote storage).
    pub backup: Option<BackupStatus>,
    pub peers: Vec<u64>,
    pub quorum: usize,
    pub compute: Option<ComputeSpec>,
    pub acceptor: AcceptorStatus,
    pub replicas: Vec<ReplicaStatus>,
}

fn status_of(tl: &Timeline, offload: bool) -> TimelineStatus {
    let p = tl.persistent();
    TimelineStatus {
        tenant_id: tl.tenant_id,
        timeline_id: tl.timeline_id,
        safekeeper_id: tl.safekeeper_id,
        system_id: p.system_id,
        term: p.term,
        last_log_term: tl.last_log_term(),
        term_history: p.term_history,
        timeline_start_lsn: p.timeline_start_lsn,
        flush_lsn: tl.flush_lsn(),
        last_record_lsn: tl.last_record_lsn(),
        commit_lsn: tl.commit_lsn(),
        remote_consistent_lsn: p.remote_consistent_lsn,
        backup_lsn: p.backup_lsn,
        backup: offload.then(|| tl.backup_status()),
        peers: p.peers,
        quorum: p.quorum,
        // Passwords never leave in a status (peers adopting this spec use
        // their own --compute-password-file).
        compute: p.compute.map(|c| ComputeSpec { conninfo: pq_proto::conninfo::redact_password(&c.conninfo), ..c }),
        acceptor: tl.acceptor_status(),
        replicas: crate::walsender::replicas_of(tl.tenant_id, tl.timeline_id),
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A start LSN in the last segment of the LSN space leaves no room for WAL
/// (positions past it would overflow): refused with 400.
fn check_room_for_wal(start_lsn: Lsn, seg_size_bytes: u64) -> ApiResult<()> {
    match start_lsn.checked_next_segment_start(seg_size_bytes) {
        Some(_) => Ok(()),
        None => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("start_lsn {start_lsn} is in the last WAL segment of the LSN space: no room for WAL"),
        )),
    }
}

async fn create(
    State(tls): State<Arc<Timelines>>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(req): ApiJson<CreateTimelineRequest>,
) -> ApiResult<(StatusCode, Json<TimelineStatus>)> {
    // PostgreSQL's own range (`initdb --wal-segsize`: 1 MiB to 1 GiB).
    if !req.wal_seg_size_bytes.is_power_of_two() || !(1 << 20..=1 << 30).contains(&req.wal_seg_size_bytes) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("bad wal_seg_size_bytes {}: must be a power of two from 1 MiB to 1 GiB", req.wal_seg_size_bytes),
        ));
    }
    if !req.start_lsn.is_aligned() {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("start_lsn {} is not 8-byte aligned", req.start_lsn)));
    }
    check_room_for_wal(req.start_lsn, req.wal_seg_size_bytes)?;
    let tl = tls.create(tenant_id, &req)?;
    Ok((StatusCode::CREATED, Json(status_of(&tl, tls.conf.remote_storage.is_some()))))
}

async fn set_compute(
    State(tls): State<Arc<Timelines>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiJson(spec): ApiJson<ComputeSpec>,
) -> ApiResult<Json<TimelineStatus>> {
    let tl = tls.get(tenant_id, timeline_id)?;
    if !spec.start_lsn.is_valid() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "start_lsn 0/0 is not a WAL position".to_string()));
    }
    check_room_for_wal(spec.start_lsn, tl.seg_size_bytes())?;
    tl.set_compute(spec).await?;
    Ok(Json(status_of(&tl, tls.conf.remote_storage.is_some())))
}

/// How long `POST .../recover` waits for the WAL to arrive.
pub const RECOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

async fn recover(
    State(tls): State<Arc<Timelines>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiJson(target): ApiJson<RecoveryTarget>,
) -> ApiResult<Json<TimelineStatus>> {
    let tl = tls.get(tenant_id, timeline_id)?;
    let up_to = target.up_to;
    tl.request_recovery(target);
    let Some(up_to) = up_to else { return Ok(Json(status_of(&tl, tls.conf.remote_storage.is_some()))) };
    let mut flush = tl.subscribe_flush();
    let reached = tokio::time::timeout(RECOVER_WAIT, flush.wait_for(|f| *f >= up_to)).await;
    match reached {
        Ok(Ok(_)) => Ok(Json(status_of(&tl, tls.conf.remote_storage.is_some()))),
        _ => {
            let error = tl.acceptor_status().last_error.unwrap_or_default();
            Err(ApiError(StatusCode::GATEWAY_TIMEOUT, format!("WAL not recovered up to {up_to} (at {}): {error}", tl.flush_lsn())))
        }
    }
}

async fn timeline_status(
    State(tls): State<Arc<Timelines>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
) -> ApiResult<Json<TimelineStatus>> {
    let tl = tls.get(tenant_id, timeline_id)?;
    Ok(Json(status_of(&tl, tls.conf.remote_storage.is_some())))
}

async fn delete(
    State(tls): State<Arc<Timelines>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
) -> ApiResult<StatusCode> {
    tls.delete(tenant_id, timeline_id).await?;
    Ok(StatusCode::OK)
}

async fn status(State(tls): State<Arc<Timelines>>) -> Json<serde_json::Value> {
    let timelines: Vec<TimelineStatus> = tls.list().iter().map(|tl| status_of(tl, tls.conf.remote_storage.is_some())).collect();
    Json(serde_json::json!({ "id": tls.conf.id, "timelines": timelines }))
}

async fn metrics() -> String {
    crate::metrics::gather_text()
}


http_api::routes! {
    Arc<Timelines>;
    post "/v1/tenant/{tenant_id}/timeline" => create,
    get "/v1/tenant/{tenant_id}/timeline/{timeline_id}" => timeline_status,
    delete "/v1/tenant/{tenant_id}/timeline/{timeline_id}" => delete,
    put "/v1/tenant/{tenant_id}/timeline/{timeline_id}/compute" => set_compute,
    post "/v1/tenant/{tenant_id}/timeline/{timeline_id}/recover" => recover,
    get "/v1/status" => status,
    get "/v1/openapi.json" => openapi,
    get "/metrics" => metrics,
}

/// The HTTP API on `timelines`; unknown paths and methods get a JSON 404/405.
/// Which tokens each route takes when the safekeeper checks them (see
/// [`http_api::auth`]): `/metrics` and `/v1/openapi.json` are open; every
/// other route takes `safekeeperdata` (or `admin`), and the routes under
/// `/v1/tenant/{tenant_id}` also that tenant's `tenant` token.
pub fn scopes_for(_: &axum::http::Method, path: &str) -> Option<&'static [auth::Scope]> {
    if http_api::auth::is_open_path(path) {
        return None;
    }
    Some(&[auth::Scope::SafekeeperData, auth::Scope::Tenant])
}

pub fn router(timelines: Arc<Timelines>) -> Router {
    add_routes(Router::new()).fallback(no_route).method_not_allowed_fallback(method_not_allowed).with_state(timelines)
}
