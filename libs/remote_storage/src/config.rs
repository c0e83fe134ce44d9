//! [`RemoteStorageConfig`]: where the objects live and how hard to try.
//!
//! It serializes flat, so that it can sit in a TOML table:
//!
//! ```toml
//! [remote_storage]
//! kind = "s3"                      # or "local_fs" with root = "/dir"
//! bucket = "strata"
//! prefix = "prod/eu-1"
//! endpoint = "http://127.0.0.1:5000"   # optional: S3-compatible servers
//! region = "eu-central-1"              # optional
//! timeout_ms = 120000                  # optional, per attempt
//! max_retries = 5                      # optional
//! concurrency_limit = 32               # optional
//! ```
//!
//! S3 credentials come from the usual `AWS_*` environment variables unless
//! `access_key_id` and `secret_access_key` are given here (tests do that, so
//! parallel tests need no process environment).
//!
//! Invariants: a `LocalFs` root built by [`RemoteStorageConfig::parse_location`]
//! is absolute; an S3 prefix has no leading or trailing `/`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Where the objects are, and the tuning of every operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteStorageConfig {
    /// The backend and its location.
    #[serde(flatten)]
    pub location: RemoteLocation,
    /// Time allowed to one attempt of an operation (a whole download or
    /// upload, body included), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first one, for transient failures only.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Attempts in flight at once across all clones of one
    /// [`crate::GenericRemoteStorage`].
    #[serde(default = "default_concurrency_limit")]
    pub concurrency_limit: usize,
    /// The first retry waits up to this long; each further one doubles the
    /// bound (full jitter: the wait is uniform in `0..=bound`).
    #[serde(default = "default_base_backoff_ms")]
    pub base_backoff_ms: u64,
    /// The bound of the retry wait never exceeds this.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

/// Default [`RemoteStorageConfig::timeout_ms`]: two minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 120_000;
/// Default [`RemoteStorageConfig::max_retries`].
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default [`RemoteStorageConfig::concurrency_limit`].
pub const DEFAULT_CONCURRENCY_LIMIT: usize = 32;
/// Default [`RemoteStorageConfig::base_backoff_ms`].
pub const DEFAULT_BASE_BACKOFF_MS: u64 = 100;
/// Default [`RemoteStorageConfig::max_backoff_ms`].
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 10_000;

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}
fn default_concurrency_limit() -> usize {
    DEFAULT_CONCURRENCY_LIMIT
}
fn default_base_backoff_ms() -> u64 {
    DEFAULT_BASE_BACKOFF_MS
}
fn default_max_backoff_ms() -> u64 {
    DEFAULT_MAX_BACKOFF_MS
}

/// The backend: a local directory or an S3 bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RemoteLocation {
    /// Objects are files under `root` (created if missing); keys are paths
    /// relative to it. Writes are fsynced, files and directories.
    LocalFs { root: PathBuf },
    /// Objects are keys `PREFIX/KEY` in `bucket`.
    S3(S3Location),
}

/// An S3 (or S3-compatible) bucket and prefix.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the whole bucket.
    #[serde(default)]
    pub prefix: String,
    /// For S3-compatible servers (moto, minio): requests go to
    /// `ENDPOINT/BUCKET/KEY` (path style); `http://` is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Defaults to `AWS_REGION` / `AWS_DEFAULT_REGION`, then `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Static credentials; when absent, the `AWS_*` environment (and the
    /// other sources `object_store` knows: web identity, instance metadata)
    /// provide them. With an `endpoint`, keys are required (here or in
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
}

impl fmt::Debug for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Location")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl fmt::Display for RemoteLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteLocation::LocalFs { root } => write!(f, "{}", root.display()),
            RemoteLocation::S3(s3) => {
                write!(f, "s3://{}/{}", s3.bucket, s3.prefix)?;
                if let Some(e) = &s3.endpoint {
                    write!(f, " at {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl RemoteStorageConfig {
    /// `location` with the default tuning.
    pub fn new(location: RemoteLocation) -> Self {
        RemoteStorageConfig {
            location,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_retries: DEFAULT_MAX_RETRIES,
            concurrency_limit: DEFAULT_CONCURRENCY_LIMIT,
            base_backoff_ms: DEFAULT_BASE_BACKOFF_MS,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
        }
    }

    /// Parses a command-line location with the default tuning:
    /// `s3://BUCKET[/PREFIX]`, or a directory (made absolute against the
    /// current directory; it need not exist yet). Other `scheme://` forms
    /// are refused.
    pub fn parse_location(location: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| ConfigError::Location { location: location.to_string(), reason: reason.to_string() };
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
                return Err(bad("the prefix has an empty, '.' or '..' segment"));
            }
            return Ok(Self::new(RemoteLocation::S3(S3Location {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                endpoint: None,
                region: None,
                access_key_id: None,
                secret_access_key: None,
            })));
        }
        if location.contains("://") {
            return Err(bad("unsupported scheme (expected s3:// or a directory)"));
        }
        if location.is_empty() {
            return Err(bad("empty"));
        }
        let root = std::path::absolute(location).map_err(|e| bad(&e.to_string()))?;
        Ok(Self::new(RemoteLocation::LocalFs { root }))
    }

    /// Applies the `--s3-endpoint` / `--s3-region` command-line options;
    /// either given for a local directory is an error.
    pub fn set_s3_options(&mut self, endpoint: Option<String>, region: Option<String>) -> Result<(), ConfigError> {
        match &mut self.location {
            RemoteLocation::S3(s3) => {
                if endpoint.is_some() {
                    s3.endpoint = endpoint;
                }
                if region.is_some() {
                    s3.region = region;
                }
                Ok(())
            }
            RemoteLocation::LocalFs { .. } if endpoint.is_none() && region.is_none() => Ok(()),
            RemoteLocation::LocalFs { .. } => {
                Err(ConfigError::Option("an S3 endpoint or region was given for a local directory".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_locations() {
        let c = RemoteStorageConfig::parse_location("s3://bkt/a/b/").unwrap();
        let RemoteLocation::S3(s3) = &c.location else { panic!() };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("bkt", "a/b"));
        let c = RemoteStorageConfig::parse_location("s3://bkt").unwrap();
        let RemoteLocation::S3(s3) = &c.location else { panic!() };
        assert_eq!(s3.prefix, "");
        assert!(RemoteStorageConfig::parse_location("s3:///x").is_err());
        assert!(RemoteStorageConfig::parse_location("s3://b/../x").is_err());
        assert!(RemoteStorageConfig::parse_location("gs://b").is_err());
        assert!(RemoteStorageConfig::parse_location("").is_err());
        let c = RemoteStorageConfig::parse_location("rel/dir").unwrap();
        let RemoteLocation::LocalFs { root } = &c.location else { panic!() };
        assert!(root.is_absolute() && root.ends_with("rel/dir"), "{}", root.display());
        assert_eq!(c.timeout_ms, DEFAULT_TIMEOUT_MS);
    }

    #[test]
    fn s3_options() {
        let mut c = RemoteStorageConfig::parse_location("s3://bkt/p").unwrap();
        c.set_s3_options(Some("http://127.0.0.1:9".into()), Some("r1".into())).unwrap();
        let RemoteLocation::S3(s3) = &c.location else { panic!() };
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(s3.region.as_deref(), Some("r1"));
        let mut l = RemoteStorageConfig::parse_location("/tmp/x").unwrap();
        l.set_s3_options(None, None).unwrap();
        assert!(l.set_s3_options(None, Some("r".into())).is_err());
    }

    #[test]
    fn toml_round_trip_with_defaults() {
        let text = "kind = \"s3\"\nbucket = \"b\"\nprefix = \"p\"\nendpoint = \"http://e\"\ntimeout_ms = 1000\n";
        let c: RemoteStorageConfig = toml::from_str(text).unwrap();
        assert_eq!(c.timeout_ms, 1000);
        assert_eq!(c.max_retries, DEFAULT_MAX_RETRIES);
        assert_eq!(c.concurrency_limit, DEFAULT_CONCURRENCY_LIMIT);
        let back: RemoteStorageConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);

        let local: RemoteStorageConfig = toml::from_str("kind = \"local_fs\"\nroot = \"/var/strata\"\n").unwrap();
        assert_eq!(local.location, RemoteLocation::LocalFs { root: "/var/strata".into() });
        let back: RemoteStorageConfig = toml::from_str(&toml::to_string(&local).unwrap()).unwrap();
        assert_eq!(back, local);

        let secret = RemoteStorageConfig::new(RemoteLocation::S3(S3Location {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            access_key_id: Some("id".into()),
            secret_access_key: Some("hunter2".into()),
        }));
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
