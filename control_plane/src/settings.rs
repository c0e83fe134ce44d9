//! PostgreSQL settings of an endpoint: what the user chose, what Strata
//! requires, and defaults sized to the machine.
//!
//! Owns the parsing of `-c KEY=VALUE`, the list of settings Strata manages
//! (the compute's port and socket, and everything that makes the safekeepers
//! its synchronous standbys), and rendering of `postgresql.conf`.
//!
//! Invariants: a managed setting can never come from the user (refused when
//! given, with the reason); user settings are written after the defaults, so
//! they win over them; names are plain GUC names, values are quoted, so no
//! input can inject another line into the file.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

/// Settings Strata writes itself, with why a user cannot change them.
const MANAGED: &[(&str, &str)] = &[
    ("listen_addresses", "the endpoint listens on the cluster's compute host ([compute] in config.toml) at the port in endpoint.toml"),
    ("port", "the endpoint's port is chosen by strata and kept in endpoint.toml"),
    ("unix_socket_directories", "the socket lives beside the data directory"),
    ("wal_level", "the safekeepers stream physical WAL (replica)"),
    ("max_wal_senders", "each safekeeper is a WAL sender client"),
    ("max_replication_slots", "each safekeeper keeps a slot"),
    ("synchronous_standby_names", "commits wait for a quorum of safekeepers"),
    ("synchronous_commit", "an acknowledged commit must be on a quorum of safekeepers"),
    ("full_page_writes", "the pageserver needs full-page images after checkpoints"),
    ("wal_compression", "the pageserver does not decode compressed full-page images"),
    ("wal_log_hints", "hint-bit WAL is managed with the pageserver's page model"),
    ("data_directory", "the data directory is built from a basebackup at every start"),
    ("hba_file", "authentication is written by strata"),
    ("logging_collector", "the log goes to the endpoint's postgres.log"),
];

/// Parse `KEY=VALUE`; refuses managed settings and malformed names.
pub fn parse_setting(text: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = text.split_once('=').with_context(|| format!("setting {text:?} is not KEY=VALUE"))?;
    let key = key.trim().to_ascii_lowercase();
    let valid = key.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid {
        bail!("setting name {key:?} is not a PostgreSQL parameter name");
    }
    if let Some((_, why)) = MANAGED.iter().find(|(name, _)| *name == key) {
        bail!("setting {key} is managed by strata and cannot be overridden: {why}");
    }
    if value.contains('\n') || value.contains('\0') {
        bail!("the value of {key} contains a newline or NUL");
    }
    Ok((key, value.trim().to_string()))
}

/// Defaults for one compute on this machine (a local cluster may run several
/// computes beside its storage, so they take a modest share of memory).
pub fn machine_defaults() -> BTreeMap<String, String> {
    let total_mb = total_memory_mb().unwrap_or(4096);
    let mb = |v: u64| format!("{v}MB");
    BTreeMap::from([
        ("shared_buffers".to_string(), mb((total_mb / 16).clamp(128, 2048))),
        ("effective_cache_size".to_string(), mb((total_mb / 4).max(256))),
        ("maintenance_work_mem".to_string(), mb((total_mb / 64).clamp(64, 1024))),
        ("work_mem".to_string(), mb((total_mb / 1024).clamp(4, 64))),
        ("max_connections".to_string(), "100".to_string()),
        ("max_prepared_transactions".to_string(), "10".to_string()),
        ("wal_sender_timeout".to_string(), "10s".to_string()),
        ("max_slot_wal_keep_size".to_string(), crate::endpoint::MAX_SLOT_WAL_KEEP_SIZE.to_string()),
    ])
}

fn total_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// A change asked on the command line: set (`-c KEY=VALUE`) or reset to the
/// default (`--reset KEY`), and the endpoint's suspend timeout
/// (`--suspend-after`; not a PostgreSQL setting, kept beside them).
#[derive(Clone, Debug, Default)]
pub struct SettingsChange {
    pub set: Vec<(String, String)>,
    pub reset: Vec<String>,
    /// `Some(0)` disables suspension; `None` keeps what the endpoint had.
    pub suspend_after_s: Option<u64>,
    /// `--lazy` / `--full`; `None` keeps the endpoint's mode (or the
    /// cluster's default for a new endpoint).
    pub mode: Option<crate::endpoint::ComputeMode>,
}

impl SettingsChange {
    /// `current` with this change applied.
    pub fn apply(&self, current: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = current.clone();
        for key in &self.reset {
            out.remove(&key.to_ascii_lowercase());
        }
        out.extend(self.set.iter().cloned());
        out
    }
}

/// `postgresql.conf` lines for `settings` (`name = 'value'`).
pub fn render(settings: &BTreeMap<String, String>) -> String {
    settings.iter().map(|(k, v)| format!("{k} = '{}'\n", v.replace('\\', "\\\\").replace('\'', "''"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(parse_setting("work_mem=16MB").unwrap(), ("work_mem".into(), "16MB".into()));
        assert_eq!(parse_setting("Shared_Buffers = 1GB").unwrap().0, "shared_buffers");
        assert_eq!(parse_setting("app.flag=").unwrap(), ("app.flag".into(), String::new()));
        let err = parse_setting("synchronous_commit=off").unwrap_err().to_string();
        assert!(err.contains("managed by strata") && err.contains("quorum"), "{err}");
        assert!(parse_setting("work_mem").is_err());
        assert!(parse_setting("x y=1").is_err());
        assert!(parse_setting("1abc=1").is_err());
        assert!(parse_setting("a=1\nport=5").is_err());
    }

    #[test]
    fn render_quotes_values() {
        let s = BTreeMap::from([("search_path".to_string(), "a, 'b'".to_string())]);
        assert_eq!(render(&s), "search_path = 'a, ''b'''\n");
    }

    #[test]
    fn defaults_are_sized_and_sane() {
        let d = machine_defaults();
        let sb: u64 = d["shared_buffers"].trim_end_matches("MB").parse().unwrap();
        assert!((128..=2048).contains(&sb), "{sb}");
        for (k, _) in &d {
            assert!(parse_setting(&format!("{k}=1")).is_ok(), "default {k} is managed");
        }
    }
}
