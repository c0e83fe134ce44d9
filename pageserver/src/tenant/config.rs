//! Per-tenant settings: what an operator may override for one tenant
//! ([`TenantConfOverrides`]), how the overrides are parsed and checked, kept
//! durably in `<tenant dir>/config.json`, and merged over the pageserver's
//! defaults (its command-line flags) into the effective [`TimelineConf`]
//! that the tenant's timelines read.
//!
//! Keys and values (sizes: plain bytes or `512KiB`, `64MiB`, `1GiB`, `1TiB`;
//! durations: humantime, e.g. `0s`, `10m`, `1h 30m`, `7d`):
//!
//! | key | kind | meaning |
//! | --- | --- | --- |
//! | `checkpoint_distance` | size | freeze the in-memory layer at this size |
//! | `checkpoint_timeout` | duration | ... or at this age |
//! | `compaction_threshold` | count ≥ 2 | merge L0 files into L1 files once there are this many |
//! | `compaction_target_size` | size | cut L1 files at this size |
//! | `compaction_period` | duration | background compaction check (0s: only after flushes) |
//! | `image_creation_threshold` | count ≥ 1 | image layer for a key partition once this many deltas lie above its image |
//! | `image_creation_delta_percent` | count ≥ 0 | ... or once the deltas' values above its image weigh this % of the image (0: never) |
//! | `gc_horizon` | size | GC keeps this much WAL history below the last record |
//! | `pitr_interval` | duration | ... and this much time |
//! | `gc_period` | duration | background GC (0s: never) |
//!
//! Invariants:
//! * A set of overrides is checked whole before anything changes: an
//!   unknown key or a bad value is a [`ConfigError`] naming the key and the
//!   value, and the tenant keeps its previous settings (file and memory).
//! * Durable first: [`TenantConf::replace`] writes `config.json` atomically
//!   (`utils::fs::write_atomic`) and only then publishes the new effective
//!   settings, so a restart never comes back with settings older than what
//!   a client was told. With remote storage, the repository then uploads
//!   the same bytes (`tenants/<tenant>/config.json`, see
//!   [`crate::remote::tenant_config`]), and an attach restores them.
//! * Live update: the effective settings are published through a
//!   `tokio::sync::watch` channel; every timeline of the tenant holds a
//!   receiver ([`crate::tenant::timeline::SharedConf`]) and reads the
//!   current value at each decision (freeze, flush, compaction, GC), so a
//!   change applies without a restart; the tenant's background loop
//!   ([`crate::tenant::tasks`]) wakes on a change to re-plan its periods.
//!
//! Cancellation: [`TenantConf::replace`] does its file I/O in
//! `spawn_blocking`; dropped before the write finished, the file holds the
//! old or the new overrides (the new ones are then published at the next
//! start, as the write completed); dropped after, the new ones are already
//! published.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tenant::timeline::{SharedConf, TimelineConf};

/// The tenant's settings file, in its directory.
pub const CONFIG_FILE: &str = "config.json";
/// The format version of `config.json` written (and the only one read).
pub const CONFIG_VERSION: u32 = 1;

/// The keys a tenant may override, sorted.
pub const KEYS: &[&str] = &[
    "checkpoint_distance",
    "checkpoint_timeout",
    "compaction_period",
    "compaction_target_size",
    "compaction_threshold",
    "gc_horizon",
    "gc_period",
    "image_creation_delta_percent",
    "image_creation_threshold",
    "pitr_interval",
];

/// Why a setting, a set of overrides or the settings file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown setting '{key}' (known: {known})", known = KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("{key}: '{value}' is not a size (e.g. 64MiB)")]
    NotASize { key: String, value: String },
    #[error("{key}: '{value}' is not a duration (e.g. 10m)")]
    NotADuration { key: String, value: String },
    #[error("{key}: '{value}' is not a whole number")]
    NotANumber { key: String, value: String },
    #[error("{key}: {value} is out of range ({rule})")]
    OutOfRange { key: String, value: String, rule: &'static str },
    #[error("settings must be a JSON object of KEY: VALUE, got {0}")]
    NotAnObject(String),
    #[error("tenant settings file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Settings a tenant overrides; `None` means the pageserver's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantConfOverrides {
    pub checkpoint_distance_bytes: Option<u64>,
    pub checkpoint_timeout: Option<Duration>,
    pub compaction_threshold: Option<usize>,
    pub compaction_target_size_bytes: Option<u64>,
    pub compaction_period: Option<Duration>,
    pub image_creation_threshold: Option<usize>,
    pub image_creation_delta_percent: Option<usize>,
    pub gc_horizon_bytes: Option<u64>,
    pub pitr_interval: Option<Duration>,
    pub gc_period: Option<Duration>,
}

const KIB: u64 = 1 << 10;
const SIZE_UNITS: &[(&str, u64)] = &[("TiB", KIB.pow(4)), ("GiB", KIB.pow(3)), ("MiB", KIB.pow(2)), ("KiB", KIB), ("B", 1)];

/// `64MiB`, `1GiB`, `512KiB`, `1024B` or `1024` (units are binary and
/// case-insensitive; whole numbers only).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let unit = unit.trim();
    if unit.is_empty() {
        return Some(n);
    }
    let (_, mult) = SIZE_UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit))?;
    n.checked_mul(*mult)
}

/// The largest unit that divides `n` exactly: `64MiB`; plain bytes otherwise.
#[allow(clippy::manual_is_multiple_of)] // u64::is_multiple_of is newer than rust-version 1.85
pub fn format_size(n: u64) -> String {
    for (unit, mult) in SIZE_UNITS.iter().filter(|(u, _)| *u != "B") {
        if n != 0 && n % mult == 0 {
            return format!("{}{unit}", n / mult);
        }
    }
    n.to_string()
}

/// humantime's form: `10m`, `1h 30m`, `0s`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A JSON value as the text the user wrote (strings bare, numbers as is).
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn size(key: &str, v: &Value) -> Result<u64, ConfigError> {
    let bad = || ConfigError::NotASize { key: key.into(), value: value_text(v) };
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad),
        Value::String(s) => parse_size(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn duration(key: &str, v: &Value) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::NotADuration { key: key.into(), value: value_text(v) };
    match v {
        Value::String(s) => humantime::parse_duration(s.trim()).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

fn count(key: &str, v: &Value, min: usize, rule: &'static str) -> Result<usize, ConfigError> {
    let bad = || ConfigError::NotANumber { key: key.into(), value: value_text(v) };
    let n = match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad)?,
        Value::String(s) => s.trim().parse::<u64>().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    let n = usize::try_from(n).map_err(|_| bad())?;
    if n < min {
        return Err(ConfigError::OutOfRange { key: key.into(), value: n.to_string(), rule });
    }
    Ok(n)
}

fn nonzero_size(key: &str, v: &Value) -> Result<u64, ConfigError> {
    match size(key, v)? {
        0 => Err(ConfigError::OutOfRange { key: key.into(), value: "0".into(), rule: "must be above 0" }),
        n => Ok(n),
    }
}

fn nonzero_duration(key: &str, v: &Value) -> Result<Duration, ConfigError> {
    match duration(key, v)? {
        d if d.is_zero() => Err(ConfigError::OutOfRange { key: key.into(), value: value_text(v), rule: "must be above 0s" }),
        d => Ok(d),
    }
}

impl TenantConfOverrides {
    /// Set one key from its JSON value (`null` removes the override).
    pub fn set(&mut self, key: &str, v: &Value) -> Result<(), ConfigError> {
        let null = v.is_null();
        macro_rules! set {
            ($field:ident, $parse:expr) => {
                self.$field = if null { None } else { Some($parse?) }
            };
        }
        match key {
            "checkpoint_distance" => set!(checkpoint_distance_bytes, nonzero_size(key, v)),
            "checkpoint_timeout" => set!(checkpoint_timeout, nonzero_duration(key, v)),
            "compaction_threshold" => set!(compaction_threshold, count(key, v, 2, "at least 2")),
            "compaction_target_size" => set!(compaction_target_size_bytes, nonzero_size(key, v)),
            "compaction_period" => set!(compaction_period, duration(key, v)),
            "image_creation_threshold" => set!(image_creation_threshold, count(key, v, 1, "at least 1")),
            "image_creation_delta_percent" => set!(image_creation_delta_percent, count(key, v, 0, "at least 0")),
            "gc_horizon" => set!(gc_horizon_bytes, size(key, v)),
            "pitr_interval" => set!(pitr_interval, duration(key, v)),
            "gc_period" => set!(gc_period, duration(key, v)),
            _ => return Err(ConfigError::UnknownKey { key: key.into() }),
        }
        Ok(())
    }

    /// Set one key from text, as given on a command line (`KEY=VALUE`).
    pub fn set_str(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        self.set(key, &Value::String(value.into()))
    }

    /// Overrides from a JSON object of `key: value`; the first bad entry
    /// (in key order) is the error.
    pub fn from_json(v: &Value) -> Result<TenantConfOverrides, ConfigError> {
        let Value::Object(map) = v else { return Err(ConfigError::NotAnObject(v.to_string())) };
        let mut out = TenantConfOverrides::default();
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        // Unknown keys first: "unknown setting" is the more useful message.
        if let Some(unknown) = keys.iter().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey { key: unknown.to_string() });
        }
        for k in keys {
            out.set(k, &map[k])?;
        }
        Ok(out)
    }

    /// The overrides that are set, by key, in canonical text.
    pub fn to_map(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k, v);
            }
        };
        put("checkpoint_distance", self.checkpoint_distance_bytes.map(format_size));
        put("checkpoint_timeout", self.checkpoint_timeout.map(format_duration));
        put("compaction_threshold", self.compaction_threshold.map(|n| n.to_string()));
        put("compaction_target_size", self.compaction_target_size_bytes.map(format_size));
        put("compaction_period", self.compaction_period.map(format_duration));
        put("image_creation_threshold", self.image_creation_threshold.map(|n| n.to_string()));
        put("image_creation_delta_percent", self.image_creation_delta_percent.map(|n| n.to_string()));
        put("gc_horizon", self.gc_horizon_bytes.map(format_size));
        put("pitr_interval", self.pitr_interval.map(format_duration));
        put("gc_period", self.gc_period.map(format_duration));
        m
    }

    pub fn is_empty(&self) -> bool {
        self == &TenantConfOverrides::default()
    }

    /// `defaults` with these overrides applied.
    pub fn apply(&self, defaults: &TimelineConf) -> TimelineConf {
        let mut c = defaults.clone();
        if let Some(v) = self.checkpoint_distance_bytes {
            c.checkpoint_distance = usize::try_from(v).unwrap_or(usize::MAX);
        }
        c.checkpoint_timeout = self.checkpoint_timeout.unwrap_or(c.checkpoint_timeout);
        c.compaction_threshold = self.compaction_threshold.unwrap_or(c.compaction_threshold);
        c.compaction_target_size_bytes = self.compaction_target_size_bytes.unwrap_or(c.compaction_target_size_bytes);
        c.compaction_period = self.compaction_period.unwrap_or(c.compaction_period);
        c.image_creation_threshold = self.image_creation_threshold.unwrap_or(c.image_creation_threshold);
        c.image_creation_delta_percent = self.image_creation_delta_percent.unwrap_or(c.image_creation_delta_percent);
        c.gc_horizon_bytes = self.gc_horizon_bytes.unwrap_or(c.gc_horizon_bytes);
        c.pitr_interval = self.pitr_interval.unwrap_or(c.pitr_interval);
        c.gc_period = self.gc_period.unwrap_or(c.gc_period);
        c
    }
}

/// The tenant-settable keys of an effective configuration, in canonical text.
pub fn effective_map(c: &TimelineConf) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("checkpoint_distance", format_size(c.checkpoint_distance as u64)),
        ("checkpoint_timeout", format_duration(c.checkpoint_timeout)),
        ("compaction_threshold", c.compaction_threshold.to_string()),
        ("compaction_target_size", format_size(c.compaction_target_size_bytes)),
        ("compaction_period", format_duration(c.compaction_period)),
        ("image_creation_threshold", c.image_creation_threshold.to_string()),
        ("image_creation_delta_percent", c.image_creation_delta_percent.to_string()),
        ("gc_horizon", format_size(c.gc_horizon_bytes)),
        ("pitr_interval", format_duration(c.pitr_interval)),
        ("gc_period", format_duration(c.gc_period)),
    ])
}

impl Serialize for TenantConfOverrides {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TenantConfOverrides {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        TenantConfOverrides::from_json(&v).map_err(serde::de::Error::custom)
    }
}

/// The content of `config.json`.
#[derive(Serialize, Deserialize)]
struct ConfigFile {
    version: u32,
    overrides: Value,
}

/// The content of a `config.json` (the local file and the remote object).
pub fn encode(overrides: &TenantConfOverrides) -> Vec<u8> {
    let overrides = serde_json::to_value(overrides).unwrap_or_default();
    serde_json::to_vec_pretty(&ConfigFile { version: CONFIG_VERSION, overrides }).unwrap_or_default()
}

/// Parse a `config.json` read from `origin` (named in errors).
pub fn decode(bytes: &[u8], origin: &Path) -> Result<TenantConfOverrides, ConfigError> {
    let bad = |reason: String| ConfigError::File { path: origin.to_path_buf(), reason };
    let file: ConfigFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if file.version != CONFIG_VERSION {
        return Err(bad(format!("version {} (this pageserver reads {CONFIG_VERSION})", file.version)));
    }
    TenantConfOverrides::from_json(&file.overrides).map_err(|e| bad(e.to_string()))
}

/// Read `<tenant_dir>/config.json`; no file means no overrides. Blocking.
pub fn load(tenant_dir: &Path) -> Result<TenantConfOverrides, ConfigError> {
    let path = tenant_dir.join(CONFIG_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TenantConfOverrides::default()),
        Err(e) => Err(ConfigError::File { path, reason: e.to_string() }),
    }
}

/// Replace `<tenant_dir>/config.json` atomically. Blocking.
pub fn save(tenant_dir: &Path, overrides: &TenantConfOverrides) -> std::io::Result<()> {
    utils::fs::write_atomic(&tenant_dir.join(CONFIG_FILE), &encode(overrides))
}

/// A tenant's live settings: the overrides, the pageserver defaults they
/// are merged over, and the channel the effective result is published on.
pub struct TenantConf {
    tenant_dir: PathBuf,
    defaults: TimelineConf,
    overrides: Mutex<TenantConfOverrides>,
    effective: tokio::sync::watch::Sender<Arc<TimelineConf>>,
    /// Serialises [`TenantConf::replace`] calls (file write + publish).
    update_lock: tokio::sync::Mutex<()>,
}

impl TenantConf {
    pub fn new(tenant_dir: PathBuf, defaults: TimelineConf, overrides: TenantConfOverrides) -> TenantConf {
        let effective = Arc::new(overrides.apply(&defaults));
        let (effective, _) = tokio::sync::watch::channel(effective);
        TenantConf { tenant_dir, defaults, overrides: Mutex::new(overrides), effective, update_lock: tokio::sync::Mutex::new(()) }
    }

    pub fn overrides(&self) -> TenantConfOverrides {
        self.overrides.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The effective settings now.
    pub fn effective(&self) -> Arc<TimelineConf> {
        self.effective.borrow().clone()
    }

    /// What a timeline of this tenant reads its settings from.
    pub fn subscribe(&self) -> SharedConf {
        self.effective.subscribe()
    }

    /// Replace the overrides: write `config.json`, then publish.
    pub async fn replace(&self, overrides: TenantConfOverrides) -> Result<Arc<TimelineConf>, ConfigError> {
        let _u = self.update_lock.lock().await;
        let (dir, o) = (self.tenant_dir.clone(), overrides.clone());
        let path = self.tenant_dir.join(CONFIG_FILE);
        tokio::task::spawn_blocking(move || save(&dir, &o))
            .await
            .map_err(|e| ConfigError::File { path: path.clone(), reason: e.to_string() })?
            .map_err(|e| ConfigError::File { path, reason: e.to_string() })?;
        let effective = Arc::new(overrides.apply(&self.defaults));
        *self.overrides.lock().unwrap_or_else(|e| e.into_inner()) = overrides;
        self.effective.send_replace(Arc::clone(&effective));
        Ok(effective)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("512 kib"), Some(512 << 10));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("100B"), Some(100));
        for bad in ["", "MiB", "12XB", "1.5GiB", "-1", "64 MB", "99999999999TiB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        for n in [0, 1, 1000, 512 << 10, 64 << 20, 3 << 30, (1 << 20) + 1] {
            assert_eq!(parse_size(&format_size(n)), Some(n), "{n}");
        }
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(3 << 30), "3GiB");
    }

    #[test]
    fn values_parse_and_errors_name_the_key_and_value() {
        let o = TenantConfOverrides::from_json(&json!({
            "checkpoint_distance": "1MiB", "gc_horizon": 4096, "pitr_interval": "0s", "gc_period": "10m",
            "compaction_threshold": "3", "image_creation_threshold": 1, "checkpoint_timeout": "1h",
            "compaction_target_size": "1GiB", "compaction_period": "20s",
        }))
        .unwrap();
        assert_eq!(o.checkpoint_distance_bytes, Some(1 << 20));
        assert_eq!(o.gc_horizon_bytes, Some(4096));
        assert_eq!(o.pitr_interval, Some(Duration::ZERO));
        assert_eq!(o.gc_period, Some(Duration::from_secs(600)));
        assert_eq!(o.compaction_threshold, Some(3));
        assert_eq!(o.checkpoint_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(o.compaction_period, Some(Duration::from_secs(20)));
        // Canonical text round-trips.
        let again = TenantConfOverrides::from_json(&serde_json::to_value(&o).unwrap()).unwrap();
        assert_eq!(again, o);
        assert_eq!(o.to_map()["gc_period"], "10m");

        let err = |v: Value| TenantConfOverrides::from_json(&v).unwrap_err().to_string();
        let e = err(json!({ "foo": 1, "gc_horizon": "1MiB" }));
        assert!(e.starts_with("unknown setting 'foo' (known: checkpoint_distance, "), "{e}");
        assert_eq!(err(json!({ "gc_horizon": "12XB" })), "gc_horizon: '12XB' is not a size (e.g. 64MiB)");
        assert_eq!(err(json!({ "pitr_interval": "soon" })), "pitr_interval: 'soon' is not a duration (e.g. 10m)");
        assert_eq!(err(json!({ "gc_period": 5 })), "gc_period: '5' is not a duration (e.g. 10m)");
        assert_eq!(err(json!({ "compaction_threshold": "x" })), "compaction_threshold: 'x' is not a whole number");
        assert_eq!(err(json!({ "compaction_threshold": 1 })), "compaction_threshold: 1 is out of range (at least 2)");
        assert_eq!(err(json!({ "checkpoint_distance": "0" })), "checkpoint_distance: 0 is out of range (must be above 0)");
        assert_eq!(err(json!([1])), "settings must be a JSON object of KEY: VALUE, got [1]");
        for e in [err(json!({ "foo": 1 })), err(json!({ "gc_horizon": "12XB" }))] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        // null: back to the default.
        let mut o = o;
        o.set("gc_horizon", &Value::Null).unwrap();
        assert_eq!(o.gc_horizon_bytes, None);
    }

    #[test]
    fn overrides_merge_over_the_defaults() {
        let defaults = TimelineConf::default();
        let mut o = TenantConfOverrides::default();
        assert_eq!(effective_map(&o.apply(&defaults)), effective_map(&defaults));
        o.set_str("gc_horizon", "1MiB").unwrap();
        o.set_str("checkpoint_distance", "2MiB").unwrap();
        let c = o.apply(&defaults);
        assert_eq!(c.gc_horizon_bytes, 1 << 20);
        assert_eq!(c.checkpoint_distance, 2 << 20);
        assert_eq!(c.pitr_interval, defaults.pitr_interval);
        assert_eq!(c.wait_lsn_timeout, defaults.wait_lsn_timeout, "not tenant-settable: kept");
        assert_eq!(effective_map(&c).len(), KEYS.len());
        assert!(effective_map(&c).keys().all(|k| KEYS.contains(k)));
    }

    #[test]
    fn file_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), TenantConfOverrides::default(), "no file: no overrides");
        let mut o = TenantConfOverrides::default();
        o.set_str("pitr_interval", "0s").unwrap();
        o.set_str("gc_horizon", "1MiB").unwrap();
        save(dir.path(), &o).unwrap();
        assert_eq!(load(dir.path()).unwrap(), o);
        std::fs::write(dir.path().join(CONFIG_FILE), br#"{"version":1,"overrides":{"bogus":"1"}}"#).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("unknown setting 'bogus'"), "{e}");
        std::fs::write(dir.path().join(CONFIG_FILE), b"{").unwrap();
        assert!(matches!(load(dir.path()), Err(ConfigError::File { .. })));
    }

    #[tokio::test]
    async fn replace_persists_then_publishes() {
        let dir = tempfile::tempdir().unwrap();
        let conf = TenantConf::new(dir.path().into(), TimelineConf::default(), TenantConfOverrides::default());
        let mut rx = conf.subscribe();
        let mut o = TenantConfOverrides::default();
        o.set_str("compaction_threshold", "2").unwrap();
        conf.replace(o.clone()).await.unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().compaction_threshold, 2);
        assert_eq!(load(dir.path()).unwrap(), o);
        assert_eq!(conf.overrides(), o);
    }
}
