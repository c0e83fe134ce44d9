//! `strata tenant config` and the `-c KEY=VALUE` of `strata tenant create`:
//! a tenant's storage settings on the pageserver (checkpoint distance,
//! compaction, image creation, GC horizon, PITR window, periods).
//!
//! Not to be confused with [`crate::settings`], the PostgreSQL settings of
//! an endpoint: these live on the pageserver, per tenant, in its
//! `config.json`, and the pageserver is the one that checks them (keys and
//! values), so this module only splits `KEY=VALUE` and shows the result.
//!
//! Invariant: a change is one `PUT` of the whole set of overrides (the
//! current ones with the changes applied); the pageserver refuses it whole
//! on an unknown key or a bad value, so nothing changes then.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};
use utils::id::TenantId;

use crate::api::Api;
use crate::cluster::Cluster;

/// Split `KEY=VALUE` (for `-c`); the pageserver checks key and value.
pub fn parse_kv(text: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = text.split_once('=').with_context(|| format!("tenant setting {text:?} is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("tenant setting {text:?} has no key");
    }
    Ok((key.to_string(), value.trim().to_string()))
}

/// The `config` object of a tenant creation request.
pub fn config_object(settings: &[(String, String)]) -> Value {
    Value::Object(settings.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

/// A tenant's settings as the pageserver reports them.
#[derive(Debug, Clone, Deserialize)]
pub struct TenantSettings {
    pub tenant_id: TenantId,
    pub overrides: BTreeMap<String, String>,
    pub effective: BTreeMap<String, String>,
}

impl TenantSettings {
    /// One line per setting: key, value, and whether the tenant sets it.
    pub fn render(&self) -> String {
        let mut out = format!("tenant {}\n{:<26} {:<14} SOURCE\n", self.tenant_id, "SETTING", "VALUE");
        for (k, v) in &self.effective {
            let source = if self.overrides.contains_key(k) { "tenant" } else { "default" };
            out.push_str(&format!("{k:<26} {v:<14} {source}\n"));
        }
        out
    }
}

impl Cluster {
    fn tenant_config_url(&self, t: TenantId) -> String {
        format!("{}/v1/tenant/{t}/config", self.pageserver_http())
    }

    /// `strata tenant config` without `-c`.
    pub async fn tenant_config(&self, t: TenantId) -> anyhow::Result<TenantSettings> {
        let v = Api::default().get(&self.tenant_config_url(t)).await?;
        serde_json::from_value(v).context("the pageserver's tenant settings")
    }

    /// `strata tenant config -c KEY=VALUE… --reset KEY…`: the current
    /// overrides with `set` applied and `reset` removed, as one change.
    pub async fn tenant_config_change(&self, t: TenantId, set: &[(String, String)], reset: &[String]) -> anyhow::Result<TenantSettings> {
        let current = self.tenant_config(t).await?;
        let mut overrides: serde_json::Map<String, Value> =
            current.overrides.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        for key in reset {
            overrides.remove(key);
        }
        for (k, v) in set {
            overrides.insert(k.clone(), Value::String(v.clone()));
        }
        let v = Api::default().put(&self.tenant_config_url(t), &json!(overrides)).await?;
        serde_json::from_value(v).context("the pageserver's tenant settings")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_split() {
        assert_eq!(parse_kv("gc_horizon=1MiB").unwrap(), ("gc_horizon".into(), "1MiB".into()));
        assert_eq!(parse_kv(" pitr_interval = 0s ").unwrap(), ("pitr_interval".into(), "0s".into()));
        assert!(parse_kv("gc_horizon").unwrap_err().to_string().contains("is not KEY=VALUE"));
        assert!(parse_kv("=1").unwrap_err().to_string().contains("has no key"));
        let obj = config_object(&[("a".into(), "1".into())]);
        assert_eq!(obj, json!({ "a": "1" }));
    }

    #[test]
    fn render_marks_overrides() {
        let s = TenantSettings {
            tenant_id: TenantId::generate(),
            overrides: BTreeMap::from([("gc_horizon".into(), "1MiB".into())]),
            effective: BTreeMap::from([("gc_horizon".into(), "1MiB".into()), ("gc_period".into(), "1h".into())]),
        };
        let text = s.render();
        let line = |k: &str| text.lines().find(|l| l.starts_with(k)).unwrap().to_string();
        assert!(line("gc_horizon").ends_with("tenant"), "{text}");
        assert!(line("gc_period").ends_with("default"), "{text}");
    }
}
