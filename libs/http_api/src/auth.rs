//! Tokens on the HTTP APIs: one middleware ([`with_auth`]) that the
//! pageserver, the safekeepers and the broker put in front of their routers.
//!
//! A request carries `Authorization: Bearer <JWT>`. For each request, the
//! server's [`ScopesFor`] says which component scopes the route allows
//! (`None`: the route is open, e.g. `/metrics`); the tenant of a route is
//! the `<tenant_id>` of a path `/v1/tenant/<tenant_id>/...`, and a
//! tenant-scoped token opens only such paths of its own tenant.
//!
//! Answers: 401 (`WWW-Authenticate: Bearer`) for a missing, malformed,
//! badly signed or expired token; 403 for a valid token of the wrong scope
//! or another tenant. Invariant: the check runs before routing reaches a
//! handler and compares ids only, so the 403 for another tenant is the
//! same whether or not that tenant exists. Without keys ([`with_auth`]
//! given `None`) every request passes, as before tokens existed.
//!
//! Cancellation: the check holds nothing across awaits; dropping a
//! request drops the inner handler as it would without the middleware.

use std::sync::Arc;

use auth::{Access, AuthError, KeySet, Scope};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use utils::id::TenantId;

use crate::ApiError;

/// The component scopes a route allows (besides `admin`, always allowed);
/// `None` for an open route. Include [`Scope::Tenant`] to let tenant tokens
/// in on the tenant's own paths.
pub type ScopesFor = fn(&Method, &str) -> Option<&'static [Scope]>;

struct HttpAuth {
    keys: Arc<KeySet>,
    scopes_for: ScopesFor,
}

/// `router` checking tokens against `keys` (when given) by `scopes_for`.
pub fn with_auth(router: Router, keys: Option<Arc<KeySet>>, scopes_for: ScopesFor) -> Router {
    match keys {
        None => router,
        Some(keys) => router.layer(axum::middleware::from_fn_with_state(Arc::new(HttpAuth { keys, scopes_for }), check)),
    }
}

/// The routes every server keeps open: Prometheus and the API description.
pub fn is_open_path(path: &str) -> bool {
    matches!(path, "/metrics" | "/v1/openapi.json")
}

/// The `<tenant_id>` of `/v1/tenant/<tenant_id>[/...]`, when it parses.
pub fn tenant_of_path(path: &str) -> Option<TenantId> {
    let rest = path.strip_prefix("/v1/tenant/")?;
    rest.split('/').next()?.parse().ok()
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Err(AuthError::Missing) };
    let value = value.to_str().map_err(|_| AuthError::Malformed("Authorization header is not ASCII".into()))?;
    match value.split_once(' ') {
        Some((kind, token)) if kind.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(AuthError::Malformed("Authorization header is not \"Bearer <token>\"".into())),
    }
}

async fn check(State(auth): State<Arc<HttpAuth>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let Some(scopes) = (auth.scopes_for)(req.method(), path) else {
        return next.run(req).await;
    };
    let access = Access { scopes, tenant: tenant_of_path(path) };
    let allowed = bearer_token(req.headers()).and_then(|token| auth.keys.verify(token)).and_then(|claims| access.check(&claims));
    match allowed {
        Ok(()) => next.run(req).await,
        Err(e) => refusal(e),
    }
}

/// The answer for a refused request (counted in `strata_auth_refused_total`).
pub fn refusal(e: AuthError) -> Response {
    e.record("http");
    if e.is_forbidden() {
        ApiError(StatusCode::FORBIDDEN, e.to_string()).into_response()
    } else {
        let mut resp = ApiError(StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auth::{generate_key_pair, Claims, Signer};

    fn scopes_for(_: &Method, path: &str) -> Option<&'static [Scope]> {
        if is_open_path(path) {
            None
        } else {
            Some(&[Scope::PageServerApi, Scope::Tenant])
        }
    }

    #[tokio::test]
    async fn statuses_for_each_kind_of_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("public")).unwrap();
        generate_key_pair(&dir.path().join("k.key"), &dir.path().join("public/k.pem")).unwrap();
        let signer = Signer::from_pem_file(&dir.path().join("k.key")).unwrap();
        let keys = Arc::new(KeySet::load(&dir.path().join("public")).unwrap());
        let router = Router::new()
            .route("/v1/tenant/{tenant_id}/x", axum::routing::get(|| async { "ok" }))
            .route("/v1/tenant", axum::routing::get(|| async { "ok" }))
            .route("/metrics", axum::routing::get(|| async { "m" }));
        let router = with_auth(router, Some(keys), scopes_for);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::serve(listener, router, std::future::pending()));
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let status = |path: String, token: Option<String>| async move {
            let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        };
        let sign = |c: Claims| Some(signer.sign(&c).unwrap());
        assert_eq!(status("/metrics".into(), None).await.0, 200);
        assert_eq!(status(format!("/v1/tenant/{a}/x"), None).await.0, 401);
        assert_eq!(status(format!("/v1/tenant/{a}/x"), Some("x.y.z".into())).await.0, 401);
        assert_eq!(status(format!("/v1/tenant/{a}/x"), sign(Claims::new(Scope::SafekeeperData))).await.0, 403);
        assert_eq!(status(format!("/v1/tenant/{a}/x"), sign(Claims::tenant(a))).await, (200, "ok".into()));
        assert_eq!(status(format!("/v1/tenant/{b}/x"), sign(Claims::tenant(a))).await.0, 403);
        assert_eq!(status("/v1/tenant".into(), sign(Claims::tenant(a))).await.0, 403);
        assert_eq!(status("/v1/tenant".into(), sign(Claims::new(Scope::PageServerApi))).await.0, 200);
        assert_eq!(status("/v1/tenant".into(), sign(Claims::new(Scope::Admin))).await.0, 200);
    }
}
