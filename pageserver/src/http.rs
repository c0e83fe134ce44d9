//! The pageserver's HTTP management API (JSON), in Neon's `/v1/tenant` style.
//!
//! * `GET    /v1/status`
//! * `GET    /v1/tenant` — list; `POST /v1/tenant` `{"tenant_id"?, "config"?}` — create,
//!   `config` being tenant settings `{"KEY": "VALUE", ...}` (see [`crate::tenant::config`])
//! * `GET    /v1/tenant/{tenant_id}/config` — the tenant's overrides and effective settings;
//!   `PUT` replaces the overrides with the body `{"KEY": "VALUE", ...}` (400 naming the
//!   key and value on an unknown key or a bad value; nothing changes then)
//! * `GET    /v1/tenant/{tenant_id}/timeline` — list
//! * `POST   /v1/tenant/{tenant_id}/timeline` — create ([`CreateTimelineRequest`]):
//!   a branch (`ancestor_timeline_id`, optional `ancestor_start_lsn`) or an
//!   import (`import_pgdata`: path of a shut-down PostgreSQL 15 data directory)
//! * `GET    /v1/tenant/{tenant_id}/timeline/{timeline_id}[?include_size=true]` — detail
//!   (LSNs, layer counts, `current_physical_size` (all layers, local or remote),
//!   `resident_physical_size` (on local disk), `remote_consistent_lsn`, `gc_cutoff_lsn`,
//!   `pitr_cutoff_lsn`)
//! * `GET    /v1/tenant/{tenant_id}/timeline/{timeline_id}/layers` — the layer files
//!   (each `resident` or only in remote storage)
//! * `POST   /v1/tenant/{tenant_id}/timeline/{timeline_id}/compact[?force=true]` — a
//!   compaction pass now (L0 → L1 when `compaction_threshold` L0 files exist, or any
//!   with `force`; then image layers where needed); what it did
//! * `POST   /v1/tenant/{tenant_id}/timeline/{timeline_id}/gc` — a GC pass now; what it did
//! * `DELETE /v1/tenant/{tenant_id}/timeline/{timeline_id}`
//! * `PUT    /v1/tenant/{tenant_id}/timeline/{timeline_id}/wal_source` — [`WalSource`]
//!   (`conninfo`, or `conninfos`: several sources, the most advanced is used)
//!   `{"kind": "safekeeper"|"primary", "conninfo": "..."}`; `DELETE` stops it
//! * `POST   /v1/tenant/{tenant_id}/timeline/{timeline_id}/checkpoint[?image_layers=true]`
//!   — freeze and flush the in-memory layer (and create image layers)
//! * `GET    /v1/tenant/{tenant_id}/timeline/{timeline_id}/page?spc=&db=&rel=&fork=&blk=&lsn=`
//!   — debug: one page at an LSN (`application/octet-stream`, 8192 bytes)
//! * `GET    /v1/tenant/{tenant_id}/timeline/{timeline_id}/rel_size?spc=&db=&rel=&fork=&lsn=`
//! * `GET    /v1/tenant/{tenant_id}/timeline/{timeline_id}/basebackup?lsn=&prev_lsn=&relations=full|sizes`
//!   — a tar of the data directory at `lsn` (default: the last record LSN);
//!   `prev_lsn` is the start of the record ending at `lsn` (known to the
//!   pageserver for its last record)
//! * `GET    /v1/tenant/{tenant_id}/timeline/{timeline_id}/lsn_by_timestamp?timestamp=<RFC3339>`
//!   — `{"lsn": "X/Y", "kind": "present"|"past"|"future", "commit_time": "..."|null}`:
//!   the END LSN of the last commit at or before the timestamp (`present`),
//!   the timeline's start LSN when the timestamp is before it (`past`), or
//!   the last record LSN when no commit is later (`future`); every answer is
//!   a valid branch point of this timeline (see [`crate::tenant::commit_ts`])
//! * `GET    /metrics` — Prometheus text format
//!
//! With `--auth-public-key-dir`, every route but `/metrics`,
//! `/v1/openapi.json` and `/v1/status` needs `Authorization: Bearer <JWT>`
//! (401 without a valid one, 403 for another scope or tenant): see
//! [`scopes_for`].
//! * `GET    /v1/openapi.json` — the OpenAPI 3 description of all of this
//!   (`pageserver/openapi.json`, embedded at build time)
//!
//! `lsn` parameters are `X/Y` hex; omitted means the last record LSN.
//! Errors are `{"error": "..."}` with 400 (bad request / below the branch
//! point), 404 (unknown tenant, timeline, relation or block, or no such
//! route), 405 (method not allowed), 409 (conflict), 415/422 (request body
//! not JSON / not of the expected shape), 503 (remote storage unavailable,
//! e.g. a layer a read needs could not be downloaded: the message names
//! it), 504 (LSN not ingested in time) or 500. Malformed path, query and body input is rejected by the extractors
//! [`ApiPath`], [`ApiQuery`] and [`ApiJson`] with the same JSON body.
//!
//! Routes are declared once, in the `routes!` table of [`router`]: it both
//! builds the router and defines [`ROUTES`], which the tests compare with
//! `openapi.json` (and probe against the router), so a route cannot be added
//! without the spec noticing.
//!
//! Cancellation: handlers are dropped when the client goes away; every
//! operation they call is cancel-safe (see the modules they use).
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use http_api::{method_not_allowed, no_route, ApiError, ApiJson, ApiPath, ApiQuery};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use postgres_ffi::RelFileNode;
use serde::{Deserialize, Serialize};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::storage::compaction::is_level0;
use crate::storage::index::LayerKind;
use crate::tenant::config::{effective_map, ConfigError, TenantConfOverrides};
use crate::tenant::repository::{RepoError, Repository};
use crate::tenant::timeline::{CompactResult, GcResult, PageReconstructError, Timeline};
use crate::ingest::walreceiver::{self, WalReceiverStatus, WalSource};
use crate::remote::upload_queue::RemoteStatus;

/// The OpenAPI 3 description served at `GET /v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    http_api::openapi_response(OPENAPI_JSON)
}


impl From<PageReconstructError> for ApiError {
    fn from(e: PageReconstructError) -> Self {
        use PageReconstructError::*;
        let code = match &e {
            MissingKey { .. } | RelationNotFound { .. } | BlockBeyondEnd { .. } => StatusCode::NOT_FOUND,
            BelowBranchPoint { .. } | BelowGcCutoff { .. } | LsnOutOfRange { .. } => StatusCode::BAD_REQUEST,
            WaitLsnTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            LayerDownload { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        let code = match &e {
            RepoError::Config(ConfigError::File { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            RepoError::Config(_) => StatusCode::BAD_REQUEST,
            RepoError::TenantNotFound(_) | RepoError::TimelineNotFound(..) => StatusCode::NOT_FOUND,
            RepoError::AlreadyExists(_) | RepoError::HasChildren(..) => StatusCode::CONFLICT,
            RepoError::InvalidBranchLsn(_) | RepoError::Import(_) | RepoError::BelowGcCutoff { .. } => StatusCode::BAD_REQUEST,
            RepoError::NoRemoteStorage => StatusCode::BAD_REQUEST,
            RepoError::Remote(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let RepoError::Page(p) = e {
            return ApiError::from(p);
        }
        ApiError(code, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CreateTenantRequest {
    pub tenant_id: Option<TenantId>,
    /// Tenant settings `{"KEY": "VALUE"}`; checked before anything is created.
    pub config: Option<serde_json::Value>,
}

/// `GET`/`PUT /v1/tenant/{tenant_id}/config`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TenantConfigResponse {
    pub tenant_id: TenantId,
    /// What the tenant sets, canonical text by key.
    pub overrides: std::collections::BTreeMap<String, String>,
    /// Every tenant setting as in force (overrides over the pageserver's defaults).
    pub effective: std::collections::BTreeMap<String, String>,
}

/// One layer file of `GET .../layers`.
#[derive(Debug, Serialize)]
pub struct LayerInfo {
    pub file_name: String,
    /// `delta` or `image`.
    pub kind: LayerKind,
    /// `L0` or `L1` for delta layers, absent for images.
    pub level: Option<&'static str>,
    pub key_start: String,
    pub key_end: String,
    pub lsn_start: Lsn,
    /// Exclusive (an image layer at L is `[L, L+1)`).
    pub lsn_end: Lsn,
    pub size_bytes: u64,
    pub generation: u32,
    /// Whether the file is on local disk (else only in remote storage,
    /// downloaded when a read needs it).
    pub resident: bool,
}

/// `GET .../layers`.
#[derive(Debug, Serialize)]
pub struct LayersResponse {
    pub layers: Vec<LayerInfo>,
    /// Open and frozen in-memory layers (not files yet).
    pub in_memory_layers: usize,
    pub current_physical_size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CreateTimelineRequest {
    pub new_timeline_id: Option<TimelineId>,
    pub ancestor_timeline_id: Option<TimelineId>,
    pub ancestor_start_lsn: Option<Lsn>,
    pub import_pgdata: Option<PathBuf>,
    /// Run stock `initdb` and import the result (a new tenant's first timeline).
    #[serde(default)]
    pub initdb: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LayerCounts {
    pub delta_files: usize,
    pub image_files: usize,
    pub in_memory: usize,
    /// Bytes of the layer files on local disk (`resident_physical_size`).
    pub bytes_on_disk: u64,
}

/// `GET .../timeline/{timeline_id}`.
#[derive(Debug, Serialize)]
pub struct TimelineDetail {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub ancestor_timeline_id: Option<TimelineId>,
    pub ancestor_lsn: Option<Lsn>,
    pub last_record_lsn: Lsn,
    /// Start of the record ending at `last_record_lsn`, when known.
    pub prev_record_lsn: Option<Lsn>,
    pub disk_consistent_lsn: Lsn,
    pub initdb_lsn: Lsn,
    pub pg_version: u32,
    pub system_id: u64,
    pub layers: LayerCounts,
    /// Bytes of the timeline's layer files, on local disk or only in
    /// remote storage.
    pub current_physical_size: u64,
    /// Bytes of the layer files on local disk.
    pub resident_physical_size: u64,
    /// Reads, branches and basebackups below it are refused (GC may have removed their layers).
    pub gc_cutoff_lsn: Lsn,
    /// The LSN at `now - pitr_interval` as the last GC pass found it (null before one).
    pub pitr_cutoff_lsn: Option<Lsn>,
    /// Bytes of all relations at `last_record_lsn` (only with `include_size=true`).
    pub logical_size: Option<u64>,
    pub walreceiver: WalReceiverStatus,
    /// What safekeepers may remove WAL below (0 without remote storage).
    pub remote_consistent_lsn: Lsn,
    /// The upload queue's state (absent without remote storage).
    pub remote: Option<RemoteStatus>,
}

async fn detail(tl: &Timeline, include_size: bool) -> ApiResult<TimelineDetail> {
    let (delta_files, image_files, in_memory, all_layer_bytes) = tl.layer_stats();
    let resident = tl.resident_physical_size_bytes();
    let logical_size = if include_size { Some(tl.logical_size(tl.last_record_lsn()).await?) } else { None };
    Ok(TimelineDetail {
        tenant_id: tl.tenant_id,
        timeline_id: tl.timeline_id,
        ancestor_timeline_id: tl.ancestor.as_ref().map(|a| a.timeline_id),
        ancestor_lsn: tl.ancestor.as_ref().map(|_| tl.ancestor_lsn),
        last_record_lsn: tl.last_record_lsn(),
        prev_record_lsn: tl.prev_record_lsn(),
        disk_consistent_lsn: tl.disk_consistent_lsn(),
        initdb_lsn: tl.initdb_lsn,
        pg_version: tl.pg_version,
        system_id: tl.system_id,
        layers: LayerCounts { delta_files, image_files, in_memory, bytes_on_disk: resident },
        current_physical_size: all_layer_bytes,
        resident_physical_size: resident,
        gc_cutoff_lsn: tl.gc_cutoff_lsn(),
        pitr_cutoff_lsn: tl.last_pitr_cutoff_lsn(),
        logical_size,
        walreceiver: walreceiver::status(tl),
        remote_consistent_lsn: tl.remote_consistent_lsn(),
        remote: tl.remote().map(|r| r.status()),
    })
}

async fn status(State(repo): State<Arc<Repository>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "tenants": repo.list_tenants().len(),
        "timelines": repo.all_timelines().len(),
    }))
}

async fn list_tenants(State(repo): State<Arc<Repository>>) -> Json<Vec<TenantId>> {
    Json(repo.list_tenants())
}

async fn create_tenant(
    State(repo): State<Arc<Repository>>,
    body: Option<ApiJson<CreateTenantRequest>>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let req = body.map(|b| b.0).unwrap_or_default();
    let overrides = match &req.config {
        Some(v) => TenantConfOverrides::from_json(v).map_err(RepoError::from)?,
        None => TenantConfOverrides::default(),
    };
    let id = repo.create_tenant_with_conf(req.tenant_id, overrides).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "tenant_id": id }))))
}

fn tenant_config_response(repo: &Repository, tenant_id: TenantId) -> ApiResult<TenantConfigResponse> {
    let tenant = repo.get_tenant(tenant_id)?;
    let text = |m: std::collections::BTreeMap<&'static str, String>| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Ok(TenantConfigResponse {
        tenant_id,
        overrides: text(tenant.conf.overrides().to_map()),
        effective: text(effective_map(&tenant.conf.effective())),
    })
}

async fn get_tenant_config(
    State(repo): State<Arc<Repository>>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<TenantConfigResponse>> {
    Ok(Json(tenant_config_response(&repo, tenant_id)?))
}

async fn put_tenant_config(
    State(repo): State<Arc<Repository>>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<Json<TenantConfigResponse>> {
    repo.get_tenant(tenant_id)?;
    let overrides = TenantConfOverrides::from_json(&body).map_err(RepoError::from)?;
    repo.set_tenant_config(tenant_id, overrides).await?;
    Ok(Json(tenant_config_response(&repo, tenant_id)?))
}

async fn list_layers(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
) -> ApiResult<Json<LayersResponse>> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    let (_, _, in_memory_layers, current_physical_size) = tl.layer_stats();
    let layers = tl
        .historic_layers()
        .into_iter()
        .map(|file| {
            let l = crate::storage::index::IndexLayer::new(file.file_name(), &file.desc, file.size_bytes);
            let level = match l.desc() {
                Ok(d) if !d.is_image => Some(if is_level0(&d) { "L0" } else { "L1" }),
                _ => None,
            };
            LayerInfo {
                file_name: l.name,
                kind: l.kind,
                level,
                key_start: l.key_start,
                key_end: l.key_end,
                lsn_start: l.lsn_start,
                lsn_end: l.lsn_end,
                size_bytes: l.size_bytes,
                generation: l.generation,
                resident: file.is_resident(),
            }
        })
        .collect();
    Ok(Json(LayersResponse { layers, in_memory_layers, current_physical_size }))
}

#[derive(Debug, Deserialize)]
struct CompactQuery {
    force: Option<bool>,
}

async fn compact(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiQuery(q): ApiQuery<CompactQuery>,
) -> ApiResult<Json<CompactResult>> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    Ok(Json(tl.compact(q.force.unwrap_or(false)).await?))
}

async fn gc(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
) -> ApiResult<Json<GcResult>> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    Ok(Json(tl.gc_now().await?))
}

/// `POST /v1/tenant/{tenant_id}/attach`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The generation the control plane recorded for this attach.
    pub generation: u32,
}

async fn attach_tenant(
    State(repo): State<Arc<Repository>>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(req): ApiJson<AttachRequest>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    if req.generation == 0 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "generation must be at least 1".into()));
    }
    let tenant = repo.attach_tenant(tenant_id, req.generation).await?;
    let timelines: Vec<TimelineId> = tenant.timelines().iter().map(|t| t.timeline_id).collect();
    let body = serde_json::json!({ "tenant_id": tenant_id, "generation": req.generation, "timelines": timelines });
    Ok((StatusCode::CREATED, Json(body)))
}

async fn detach_tenant(
    State(repo): State<Arc<Repository>>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<serde_json::Value>> {
    repo.detach_tenant(tenant_id).await?;
    Ok(Json(serde_json::json!({ "tenant_id": tenant_id, "detached": true })))
}

async fn list_timelines(
    State(repo): State<Arc<Repository>>,
    ApiPath(tenant_id): ApiPath<TenantId>,
) -> ApiResult<Json<Vec<TimelineDetail>>> {
    let mut out = Vec::new();
    for tl in repo.get_tenant(tenant_id)?.timelines() {
        out.push(detail(&tl, false).await?);
    }
    Ok(Json(out))
}

async fn create_timeline(
    State(repo): State<Arc<Repository>>,
    ApiPath(tenant_id): ApiPath<TenantId>,
    ApiJson(req): ApiJson<CreateTimelineRequest>,
) -> ApiResult<(StatusCode, Json<TimelineDetail>)> {
    let tl = match (req.ancestor_timeline_id, &req.import_pgdata, req.initdb) {
        (Some(ancestor), None, false) => {
            repo.branch_timeline(tenant_id, ancestor, req.new_timeline_id, req.ancestor_start_lsn).await?
        }
        (None, Some(pgdata), false) => repo.import_timeline(tenant_id, req.new_timeline_id, pgdata).await?,
        (None, None, true) => {
            // Before the (seconds long) initdb: an unknown tenant is a 404.
            repo.get_tenant(tenant_id)?;
            let (_guard, pgdata) = tokio::task::spawn_blocking(crate::ingest::import::run_initdb)
                .await
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            repo.import_timeline(tenant_id, req.new_timeline_id, &pgdata).await?
        }
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give exactly one of ancestor_timeline_id, import_pgdata and initdb".into(),
            ))
        }
    };
    Ok((StatusCode::CREATED, Json(detail(&tl, false).await?)))
}

#[derive(Debug, Deserialize)]
struct DetailQuery {
    include_size: Option<bool>,
}

async fn get_timeline(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiQuery(q): ApiQuery<DetailQuery>,
) -> ApiResult<Json<TimelineDetail>> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    Ok(Json(detail(&tl, q.include_size.unwrap_or(false)).await?))
}

async fn delete_timeline(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
) -> ApiResult<StatusCode> {
    repo.delete_timeline(tenant_id, timeline_id).await?;
    Ok(StatusCode::OK)
}

async fn set_wal_source(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiJson(source): ApiJson<WalSource>,
) -> ApiResult<Json<WalReceiverStatus>> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    if source.all().is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "give conninfo or conninfos".into()));
    }
    for conninfo in source.all() {
        if let Err(e) = conninfo.parse::<pq_proto::ConnConfig>() {
            return Err(ApiError(StatusCode::BAD_REQUEST, format!("conninfo {conninfo:?}: {e}")));
        }
    }
    let persisted = tokio::task::spawn_blocking({
        let (tl, source) = (Arc::clone(&tl), source.clone());
        move || walreceiver::persist_source(&tl, Some(&source))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    persisted.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("persist WAL source: {e}")))?;
    walreceiver::start(&tl, source).await;
    Ok(Json(walreceiver::status(&tl)))
}

async fn stop_wal_source(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
) -> ApiResult<StatusCode> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    walreceiver::stop(&tl).await;
    walreceiver::persist_source(&tl, None)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("forget WAL source: {e}")))?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
struct CheckpointQuery {
    image_layers: Option<bool>,
    /// How long to wait for the flushed layers to be uploaded (default 60).
    upload_timeout_s: Option<u64>,
}

async fn checkpoint(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiQuery(q): ApiQuery<CheckpointQuery>,
) -> ApiResult<Json<TimelineDetail>> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    tl.freeze_and_flush().await?;
    if q.image_layers.unwrap_or(false) {
        tl.create_image_layers(tl.disk_consistent_lsn()).await?;
    }
    if let Some(remote) = tl.remote() {
        let wait = std::time::Duration::from_secs(q.upload_timeout_s.unwrap_or(60));
        if tokio::time::timeout(wait, remote.wait_uploaded()).await.is_err() {
            let reason = remote.status().last_error.unwrap_or_else(|| "still uploading".into());
            return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("flushed, but not uploaded within {}s: {reason}", wait.as_secs())));
        }
    }
    Ok(Json(detail(&tl, false).await?))
}

#[derive(Debug, Deserialize)]
struct RelQuery {
    spc: u32,
    db: u32,
    rel: u32,
    #[serde(default)]
    fork: u8,
    blk: Option<u32>,
    lsn: Option<Lsn>,
}

impl RelQuery {
    fn rel(&self) -> RelFileNode {
        RelFileNode { spc_node: self.spc, db_node: self.db, rel_node: self.rel }
    }
}

/// The LSN a debug read is at: `lsn`, default the last record LSN. A future
/// LSN is waited for (up to the timeout, then 504) only while WAL can arrive,
/// i.e. the walreceiver is connected; otherwise it is a 400 at once. An LSN
/// before the timeline's first WAL (`0/0`, say) is a 400 too.
fn read_lsn(tl: &Timeline, lsn: Option<Lsn>) -> ApiResult<Lsn> {
    let last = tl.last_record_lsn();
    let lsn = lsn.unwrap_or(last);
    if lsn < tl.initdb_lsn {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("LSN {lsn} is before the start {} of timeline {}", tl.initdb_lsn, tl.timeline_id)));
    }
    if lsn > last && !walreceiver::status(tl).connected {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("LSN {lsn} is in the future: the timeline has WAL up to {last} and no connected WAL source"),
        ));
    }
    Ok(lsn)
}

async fn get_page(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiQuery(q): ApiQuery<RelQuery>,
) -> ApiResult<Response> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    let lsn = read_lsn(&tl, q.lsn)?;
    let blk = q.blk.ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "missing blk".into()))?;
    let page = tl.get_rel_page_at_lsn(q.rel(), q.fork, blk, lsn).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], page).into_response())
}

async fn get_rel_size(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiQuery(q): ApiQuery<RelQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    let lsn = read_lsn(&tl, q.lsn)?;
    let nblocks = tl.get_rel_size_at_lsn(q.rel(), q.fork, lsn).await?;
    Ok(Json(serde_json::json!({ "nblocks": nblocks, "lsn": lsn })))
}

#[derive(Debug, Deserialize)]
struct LsnByTimestampQuery {
    timestamp: String,
}

async fn lsn_by_timestamp(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiQuery(q): ApiQuery<LsnByTimestampQuery>,
) -> ApiResult<Json<crate::tenant::commit_ts::LsnForTimestamp>> {
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    let t = crate::tenant::commit_ts::parse_rfc3339(&q.timestamp).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(crate::tenant::commit_ts::find_lsn_for_timestamp(&tl, t).await?))
}

async fn metrics() -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder.encode_to_string(&prometheus::gather()).unwrap_or_default()
}


http_api::routes! {
    Arc<Repository>;
    get "/v1/status" => status,
    get "/v1/openapi.json" => openapi,
    get "/v1/tenant" => list_tenants,
    post "/v1/tenant" => create_tenant,
    get "/v1/tenant/{tenant_id}/config" => get_tenant_config,
    put "/v1/tenant/{tenant_id}/config" => put_tenant_config,
    post "/v1/tenant/{tenant_id}/attach" => attach_tenant,
    post "/v1/tenant/{tenant_id}/detach" => detach_tenant,
    get "/v1/tenant/{tenant_id}/timeline" => list_timelines,
    post "/v1/tenant/{tenant_id}/timeline" => create_timeline,
    get "/v1/tenant/{tenant_id}/timeline/{timeline_id}" => get_timeline,
    delete "/v1/tenant/{tenant_id}/timeline/{timeline_id}" => delete_timeline,
    put "/v1/tenant/{tenant_id}/timeline/{timeline_id}/wal_source" => set_wal_source,
    delete "/v1/tenant/{tenant_id}/timeline/{timeline_id}/wal_source" => stop_wal_source,
    post "/v1/tenant/{tenant_id}/timeline/{timeline_id}/checkpoint" => checkpoint,
    post "/v1/tenant/{tenant_id}/timeline/{timeline_id}/compact" => compact,
    post "/v1/tenant/{tenant_id}/timeline/{timeline_id}/gc" => gc,
    get "/v1/tenant/{tenant_id}/timeline/{timeline_id}/layers" => list_layers,
    get "/v1/tenant/{tenant_id}/timeline/{timeline_id}/page" => get_page,
    get "/v1/tenant/{tenant_id}/timeline/{timeline_id}/basebackup" => basebackup,
    get "/v1/tenant/{tenant_id}/timeline/{timeline_id}/rel_size" => get_rel_size,
    get "/v1/tenant/{tenant_id}/timeline/{timeline_id}/lsn_by_timestamp" => lsn_by_timestamp,
    get "/metrics" => metrics,
}

/// The HTTP API on `repo`; unknown paths and methods get a JSON 404/405.
/// Which tokens each route takes when the pageserver checks them (see
/// [`http_api::auth`]): `/metrics`, `/v1/openapi.json` and `/v1/status`
/// (counts only) are open; every other route takes `pageserverapi` (or
/// `admin`), and the routes under `/v1/tenant/{tenant_id}` also that
/// tenant's `tenant` token.
pub fn scopes_for(_: &axum::http::Method, path: &str) -> Option<&'static [auth::Scope]> {
    if http_api::auth::is_open_path(path) || path == "/v1/status" {
        return None;
    }
    Some(&[auth::Scope::PageServerApi, auth::Scope::Tenant])
}

/// [`router`] checking tokens against `keys` when given ([`scopes_for`]).
pub fn router_with_auth(repo: Arc<Repository>, keys: Option<Arc<auth::KeySet>>) -> Router {
    http_api::auth::with_auth(router(repo), keys, scopes_for)
}

pub fn router(repo: Arc<Repository>) -> Router {
    add_routes(Router::new()).fallback(no_route).method_not_allowed_fallback(method_not_allowed).with_state(repo)
}

#[derive(Debug, Deserialize)]
struct BasebackupQuery {
    lsn: Option<Lsn>,
    prev_lsn: Option<Lsn>,
    /// `sizes`: relation files empty, their sizes in a manifest (lazy computes).
    relations: Option<String>,
}

fn relation_contents(q: &BasebackupQuery) -> ApiResult<crate::read::basebackup::RelationContents> {
    use crate::read::basebackup::RelationContents;
    match q.relations.as_deref() {
        None | Some("full") => Ok(RelationContents::Full),
        Some("sizes") => Ok(RelationContents::SizesOnly),
        Some(other) => Err(ApiError(StatusCode::BAD_REQUEST, format!("relations={other:?}: expected \"full\" or \"sizes\""))),
    }
}

/// The LSN pair a basebackup of `tl` may be taken at, or why not.
fn basebackup_target(tl: &Timeline, q: &BasebackupQuery) -> ApiResult<crate::read::basebackup::BasebackupTarget> {
    let bad = |msg: String| ApiError(StatusCode::BAD_REQUEST, msg);
    let last = tl.last_record_lsn();
    let lsn = q.lsn.unwrap_or(last);
    if lsn > last {
        return Err(bad(format!("LSN {lsn} is in the future: the timeline has WAL up to {last}")));
    }
    if !lsn.is_aligned() {
        return Err(bad(format!("LSN {lsn} is not a record boundary (not 8-byte aligned)")));
    }
    tl.check_lsn_in_scope(lsn)?;
    // Below the start of a root timeline there is nothing to send; finding
    // that out after the headers went out would break the response instead.
    let start = tl.branchable_range().start;
    if lsn < start {
        return Err(bad(format!("LSN {lsn} is before the start of the timeline at {start}")));
    }
    let known_prev = if lsn == last { tl.prev_record_lsn() } else { None };
    let prev_record_lsn = q.prev_lsn.or(known_prev).unwrap_or(Lsn(0));
    if prev_record_lsn >= lsn {
        return Err(bad(format!("prev_lsn {prev_record_lsn} is not below {lsn}")));
    }
    Ok(crate::read::basebackup::BasebackupTarget { lsn, prev_record_lsn })
}

async fn basebackup(
    State(repo): State<Arc<Repository>>,
    ApiPath((tenant_id, timeline_id)): ApiPath<(TenantId, TimelineId)>,
    ApiQuery(q): ApiQuery<BasebackupQuery>,
) -> ApiResult<Response> {
    use futures::StreamExt;
    let tl = repo.get_timeline(tenant_id, timeline_id)?;
    let target = basebackup_target(&tl, &q)?;
    let relations = relation_contents(&q)?;
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let span = tracing::info_span!("basebackup", %tenant_id, %timeline_id, lsn = %target.lsn);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let result = crate::read::basebackup::send_basebackup_with(writer, &*tl, target, relations).await;
            match &result {
                Ok(stats) => tracing::info!(pages = stats.pages, bytes = stats.bytes, "basebackup sent"),
                Err(e) => tracing::warn!("basebackup failed: {e}"),
            }
            let _ = done_tx.send(result.map(|_| ()).map_err(|e| e.to_string()));
        },
        span,
    ));
    // A failure after the headers went out must break the response, not end
    // it cleanly: append an error item to the body stream.
    let failure = futures::stream::once(async move {
        match done_rx.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(std::io::Error::other(e))),
            Err(_) => Some(Err(std::io::Error::other("basebackup task ended without a result"))),
        }
    })
    .filter_map(std::future::ready);
    let body = tokio_util::io::ReaderStream::new(reader).chain(failure);
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], axum::body::Body::from_stream(body)).into_response())
}
