//! What the HTTP management APIs of the pageserver and the safekeeper share.
//!
//! Owns the error answer ([`ApiError`]: a status with the body
//! `{"error": message}`), extractors whose rejections are such answers
//! ([`ApiJson`], [`ApiPath`], [`ApiQuery`]) so that malformed input never gets
//! axum's plain-text replies, the fallbacks for unknown routes and methods,
//! serving an OpenAPI document, and the [`routes!`] table that builds a router
//! and its `ROUTES` list from one declaration (the servers' tests hold
//! `ROUTES` equal to their `openapi.json`), and [`serve`], which serves a
//! router with a header timeout and a connection limit. [`auth`] checks
//! tokens (401/403) in front of a router.
//!
//! Invariant: every answer these produce is JSON. Cancellation: extractors
//! hold no state across awaits; dropping a request is harmless.

pub mod auth;
mod serve;

pub use serve::{serve, serve_with, HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answer: `status` with the body `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

/// `axum::Json` whose rejection is an [`ApiError`] (JSON body).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(ApiError(r.status(), r.body_text())),
        }
    }
}

/// No `Content-Type` header: `None` (an empty body is allowed).
impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        match <Json<T> as axum::extract::OptionalFromRequest<S>>::from_request(req, state).await {
            Ok(v) => Ok(v.map(|Json(v)| ApiJson(v))),
            Err(r) => Err(ApiError(r.status(), r.body_text())),
        }
    }
}

/// `axum::extract::Path` whose rejection is an [`ApiError`].
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(ApiError(r.status(), r.body_text())),
        }
    }
}

/// `axum::extract::Query` whose rejection is an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(ApiError(r.status(), r.body_text())),
        }
    }
}

pub async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no route {method} {}", uri.path()))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} not allowed on {}", uri.path()))
}

/// `GET /v1/openapi.json`: `spec` as `application/json`.
pub fn openapi_response(spec: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], spec).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// Declares a server's routes once: `routes!(State; get "/path" => handler, …)`
/// defines `pub const ROUTES: &[(&str, &str)]` (lowercase method, path) and
/// `fn add_routes(Router<State>) -> Router<State>` from the same list.
#[macro_export]
macro_rules! routes {
    ($state:ty; $( $method:ident $path:literal => $handler:path ),* $(,)?) => {
        /// Every (method, path) the router serves; the tests hold it equal to
        /// the paths and methods of `openapi.json`.
        pub const ROUTES: &[(&str, &str)] = &[ $( (stringify!($method), $path) ),* ];
        fn add_routes(r: axum::Router<$state>) -> axum::Router<$state> {
            r $( .route($path, axum::routing::$method($handler)) )*
        }
    };
}
