//! HTTP client of the broker, used by safekeepers (publish) and by anyone who
//! wants a timeline's safekeeper view (subscribe by long-polling).
//!
//! With a token file ([`BrokerClient::with_token_file`]), each request
//! carries `Authorization: Bearer <token>`, the file read at each request.
//!
//! Cancellation: every call is a single HTTP request; dropping the future
//! abandons it with no effect on the broker beyond a finished long-poll.

use std::time::Duration;

use utils::id::{TenantId, TimelineId};

use crate::{SafekeeperTimelineInfo, TimelineView};

#[derive(Debug, thiserror::Error)]
pub enum BrokerClientError {
    #[error("broker request to {url} failed: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("broker token: {0}")]
    Token(String),
}

#[derive(Clone)]
pub struct BrokerClient {
    base_url: String,
    http: reqwest::Client,
    token_file: Option<std::path::PathBuf>,
}

impl BrokerClient {
    /// `endpoint` is `host:port` or `http://host:port`.
    pub fn new(endpoint: &str) -> BrokerClient {
        let base_url = if endpoint.starts_with("http://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        BrokerClient { base_url: base_url.trim_end_matches('/').to_string(), http: reqwest::Client::new(), token_file: None }
    }

    /// Present the token in `path` (read at each request).
    pub fn with_token_file(mut self, path: Option<std::path::PathBuf>) -> BrokerClient {
        self.token_file = path;
        self
    }

    /// `request` with the token, if there is a token file.
    async fn authorized(&self, request: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, BrokerClientError> {
        let Some(path) = self.token_file.clone() else { return Ok(request) };
        let read = tokio::task::spawn_blocking(move || auth::read_token_file(&path)).await;
        let token = read.map_err(|e| BrokerClientError::Token(e.to_string()))?.map_err(|e| BrokerClientError::Token(e.to_string()))?;
        Ok(request.bearer_auth(token))
    }

    pub async fn publish(&self, info: &SafekeeperTimelineInfo) -> Result<(), BrokerClientError> {
        let url = format!("{}/v1/publish", self.base_url);
        let wrap = |source| BrokerClientError::Request { url: url.clone(), source };
        let request = self.authorized(self.http.post(&url).json(info).timeout(Duration::from_secs(5))).await?;
        let resp = request.send().await.map_err(wrap)?;
        resp.error_for_status().map_err(wrap)?;
        Ok(())
    }

    /// The timeline's view once its version exceeds `after_version` (at most
    /// `timeout` later); with `None`, at once.
    pub async fn poll(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        after_version: Option<u64>,
        timeout: Duration,
    ) -> Result<TimelineView, BrokerClientError> {
        let mut url = format!("{}/v1/tenant/{tenant_id}/timeline/{timeline_id}?timeout_ms={}", self.base_url, timeout.as_millis());
        if let Some(v) = after_version {
            url.push_str(&format!("&after_version={v}"));
        }
        let wrap = |source| BrokerClientError::Request { url: url.clone(), source };
        let request = self.authorized(self.http.get(&url).timeout(timeout + Duration::from_secs(5))).await?;
        let resp = request.send().await.map_err(wrap)?.error_for_status().map_err(wrap)?;
        resp.json().await.map_err(wrap)
    }
}
