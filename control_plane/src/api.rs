//! JSON over HTTP to the cluster's components, with errors that carry the
//! component's own message on one line; large bodies (basebackups) are
//! streamed to a file, never held in memory.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
}

/// The token every [`Api`] made afterwards presents (set by
/// [`crate::cluster::Cluster::load`] from the repository it loads).
static TOKEN: std::sync::RwLock<Option<String>> = std::sync::RwLock::new(None);

/// Present `token` (`Authorization: Bearer`) on every request of the
/// [`Api`]s made from now on.
pub fn set_token(token: Option<String>) {
    *TOKEN.write().unwrap_or_else(|p| p.into_inner()) = token;
}

impl Default for Api {
    fn default() -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        let token = TOKEN.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(value) = token.and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder().default_headers(headers).build().unwrap_or_else(|_| reqwest::Client::new());
        Api { http }
    }
}

async fn check(url: &str, resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let msg = body["error"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
    bail!("{url}: {status}: {msg}")
}

impl Api {
    pub async fn get(&self, url: &str) -> anyhow::Result<Value> {
        let resp = self.http.get(url).timeout(Duration::from_secs(30)).send().await.with_context(|| format!("GET {url}"))?;
        Ok(check(url, resp).await?.json().await?)
    }

    pub async fn send(&self, method: reqwest::Method, url: &str, body: &Value) -> anyhow::Result<Value> {
        let request = self.http.request(method.clone(), url).json(body).timeout(Duration::from_secs(600));
        let resp = request.send().await.with_context(|| format!("{method} {url}"))?;
        let resp = check(url, resp).await?;
        Ok(resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, url: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, url, body).await
    }

    pub async fn put(&self, url: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::PUT, url, body).await
    }

    /// Stream the body of `GET url` into a new file at `path` (chunk by
    /// chunk: memory does not grow with the body); the bytes written. A
    /// body that breaks off is an error, and the partial file is removed.
    pub async fn download_to(&self, url: &str, path: &Path) -> anyhow::Result<u64> {
        use tokio::io::AsyncWriteExt;
        let resp = self.http.get(url).timeout(Duration::from_secs(3600)).send().await.with_context(|| format!("GET {url}"))?;
        let mut resp = check(url, resp).await?;
        let mut file = tokio::fs::File::create(path).await.with_context(|| format!("create {}", path.display()))?;
        let copied = async {
            let mut written = 0u64;
            while let Some(chunk) = resp.chunk().await.with_context(|| format!("GET {url}: reading the body"))? {
                file.write_all(&chunk).await.with_context(|| format!("write {}", path.display()))?;
                written += chunk.len() as u64;
            }
            file.flush().await?;
            anyhow::Ok(written)
        }
        .await;
        if copied.is_err() {
            let _ = tokio::fs::remove_file(path).await;
        }
        copied
    }
}

/// Field `name` of a JSON object as `T` (for LSNs, ids, numbers).
pub fn field<T: std::str::FromStr>(v: &Value, name: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    let text = match &v[name] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => bail!("field {name} missing in {other}"),
    };
    text.parse::<T>().map_err(|e| anyhow::anyhow!("field {name}: {e}"))
}
