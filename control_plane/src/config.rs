//! The local cluster's configuration, `<repo>/config.toml`: which components
//! exist, on which hosts (or network namespaces) and ports, and names the
//! user gave to tenants and branches.
//!
//! Invariants: `strata init` writes it once and refuses to overwrite it;
//! every other command requires it, so a directory without it is reported as
//! "not a Strata repository" before anything is touched.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "config.toml";

/// Where a component runs: the address every other component and the
/// control plane reach it by (`host`, default `127.0.0.1`; advertised to
/// peers), the address it binds (`listen`, default: `host`; e.g. `0.0.0.0`),
/// and the network namespace it is started in (`netns`, a name under
/// `/run/netns` as `ip netns add` makes them; absent: the control plane's
/// own). Together they let each component live on its own host, or in its
/// own namespace on one machine as the tests do.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Placement {
    #[serde(default = "loopback")]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn loopback() -> String {
    "127.0.0.1".to_string()
}

impl Default for Placement {
    fn default() -> Self {
        Placement { host: loopback(), listen: None, netns: None }
    }
}

impl Placement {
    /// `host:port` (an IPv6 host in brackets): where others connect.
    pub fn addr(&self, port: u16) -> String {
        join_host_port(&self.host, port)
    }

    /// The address to bind: `listen` (or `host`) with `port`.
    pub fn listen_addr(&self, port: u16) -> String {
        join_host_port(self.listen_host(), port)
    }

    pub fn listen_host(&self) -> &str {
        self.listen.as_deref().unwrap_or(&self.host)
    }

    /// `http://host:port`.
    pub fn http(&self, port: u16) -> String {
        format!("http://{}", self.addr(port))
    }

    /// Whether others reach it over loopback only.
    pub fn is_loopback(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || self.host == "localhost"
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrokerConf {
    pub http_port: u16,
    #[serde(flatten)]
    pub at: Placement,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SafekeeperConf {
    pub id: u64,
    pub pg_port: u16,
    pub http_port: u16,
    #[serde(flatten)]
    pub at: Placement,
}

/// The proxy: one PostgreSQL port in front of every endpoint, which routes
/// each connection to its endpoint and wakes suspended ones; its metrics on
/// `http_port`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxyConf {
    pub pg_port: u16,
    pub http_port: u16,
    #[serde(flatten)]
    pub at: Placement,
    /// TLS certificate and key (PEM) the proxy accepts `sslmode=require`
    /// with; absent: SSL requests are refused and clients fall back to
    /// plain text (`sslmode=prefer`) or fail (`require`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
}

/// Where computes run (every endpoint of the cluster).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComputeConf {
    #[serde(flatten)]
    pub at: Placement,
    /// Mode of endpoints started without `--lazy`/`--full` for the first
    /// time (`default_mode = "lazy"` makes lazy computes the default).
    #[serde(default, skip_serializing_if = "is_full")]
    pub default_mode: crate::endpoint::ComputeMode,
    /// Whether a lazy compute's lazyfs fetches every remaining relation
    /// block in the background after the start (absent: yes;
    /// `lazy_prefetch = false`: blocks come only on demand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy_prefetch: Option<bool>,
    /// Whether lazyfs opens wholly local files with FUSE passthrough
    /// (absent: no). The kernel grants passthrough only to a mount without
    /// the writeback cache, so `lazy_passthrough = true` trades the
    /// writeback cache of files with remote blocks for direct I/O on the
    /// others (lazyfs `--passthrough`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy_passthrough: Option<bool>,
}

fn is_full(mode: &crate::endpoint::ComputeMode) -> bool {
    *mode == crate::endpoint::ComputeMode::Full
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageserverConf {
    pub pg_port: u16,
    pub http_port: u16,
    #[serde(flatten)]
    pub at: Placement,
    /// Object storage for layers and indexes, and for the WAL the
    /// safekeepers offload (they get the same location): a directory or
    /// `s3://BUCKET/PREFIX` (absent in repositories made before it existed:
    /// then the pageserver's and safekeepers' disks are the only copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_storage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    /// Budget of layer files on the pageserver's disk (`64MiB`, `10GiB`;
    /// absent: unlimited), passed as `--resident-limit`: least recently
    /// used layers that are in object storage are evicted to stay under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_limit: Option<String>,
}

/// Bytes of a size written `1024`, `512KiB`, `64MiB`, `10GiB` or `1TiB`
/// (binary units, case-insensitive, whole numbers), as the pageserver reads
/// it; `None` for anything else.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    /// First port tried for computes.
    #[serde(default = "default_endpoint_base_port")]
    pub endpoint_base_port: u16,
    pub broker: BrokerConf,
    pub pageserver: PageserverConf,
    pub safekeepers: Vec<SafekeeperConf>,
    #[serde(default)]
    pub compute: ComputeConf,
    /// Absent in repositories made before the proxy existed: no proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConf>,
    /// Tokens on every component (keys under `<repo>/auth/`). `strata
    /// init` sets it (unless `--no-auth`); absent in repositories made
    /// before tokens existed: off.
    #[serde(default)]
    pub auth: bool,
}

fn default_endpoint_base_port() -> u16 {
    55432
}

impl Config {
    /// Ports for `n` safekeepers and the other components, from `base`.
    pub fn with_ports(safekeepers: u64, pageserver_pg_port: u16, base_port: u16) -> Config {
        Config {
            endpoint_base_port: default_endpoint_base_port(),
            broker: BrokerConf { http_port: base_port, at: Placement::default() },
            pageserver: PageserverConf {
                pg_port: pageserver_pg_port,
                http_port: pageserver_pg_port + 1,
                at: Placement::default(),
                remote_storage: None,
                s3_endpoint: None,
                s3_region: None,
                resident_limit: None,
            },
            safekeepers: (1..=safekeepers)
                .map(|id| SafekeeperConf {
                    id,
                    pg_port: base_port + 10 * id as u16,
                    http_port: base_port + 10 * id as u16 + 1,
                    at: Placement::default(),
                })
                .collect(),
            compute: ComputeConf::default(),
            proxy: Some(ProxyConf {
                pg_port: base_port + 3,
                http_port: base_port + 4,
                at: Placement::default(),
                tls_cert: None,
                tls_key: None,
            }),
            auth: true,
        }
    }

    pub fn load(repo: &Path) -> anyhow::Result<Config> {
        let path = repo.join(CONFIG_FILE);
        if !path.exists() {
            bail!("{} is not a Strata repository (no {CONFIG_FILE}); run `strata init` first", repo.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    pub fn save_new(&self, repo: &Path) -> anyhow::Result<PathBuf> {
        let path = repo.join(CONFIG_FILE);
        if path.exists() {
            bail!("{} already holds a Strata repository; remove it or use another --repo-dir", repo.display());
        }
        std::fs::create_dir_all(repo).with_context(|| format!("create {}", repo.display()))?;
        let text = toml::to_string_pretty(self)?;
        let tmp = repo.join(format!("{CONFIG_FILE}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Every port the cluster listens on, with its owner.
    pub fn ports(&self) -> Vec<(String, u16)> {
        let mut out = vec![
            ("broker".to_string(), self.broker.http_port),
            ("pageserver pg".to_string(), self.pageserver.pg_port),
            ("pageserver http".to_string(), self.pageserver.http_port),
        ];
        for sk in &self.safekeepers {
            out.push((format!("safekeeper {} pg", sk.id), sk.pg_port));
            out.push((format!("safekeeper {} http", sk.id), sk.http_port));
        }
        if let Some(proxy) = &self.proxy {
            out.push(("proxy pg".to_string(), proxy.pg_port));
            out.push(("proxy http".to_string(), proxy.http_port));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let conf = Config::with_ports(3, 64000, 50051);
        conf.save_new(dir.path()).unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), conf);
        let err = conf.save_new(dir.path()).unwrap_err().to_string();
        assert!(err.contains("already holds"), "{err}");
        let other = tempfile::tempdir().unwrap();
        let err = Config::load(other.path()).unwrap_err().to_string();
        assert!(err.contains("not a Strata repository"), "{err}");
        let ports: Vec<u16> = conf.ports().into_iter().map(|(_, p)| p).collect();
        let unique: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "ports collide: {ports:?}");
    }

    #[test]
    fn placements_default_to_loopback_and_round_trip() {
        // A config.toml from before placements existed.
        let old = "endpoint_base_port = 55432\n[broker]\nhttp_port = 50051\n[pageserver]\npg_port = 64000\nhttp_port = 64001\n\
                   [[safekeepers]]\nid = 1\npg_port = 50061\nhttp_port = 50062\n";
        let conf: Config = toml::from_str(old).unwrap();
        assert_eq!(conf.safekeepers[0].at, Placement::default());
        assert_eq!(conf.compute.at.addr(5432), "127.0.0.1:5432");
        let mut conf = conf;
        conf.safekeepers[0].at = Placement { host: "10.0.0.3".into(), listen: Some("0.0.0.0".into()), netns: Some("sk1".into()) };
        conf.compute.at.host = "::1".into();
        let text = toml::to_string_pretty(&conf).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, conf);
        assert_eq!(back.safekeepers[0].at.addr(7), "10.0.0.3:7");
        assert_eq!(back.safekeepers[0].at.listen_addr(7), "0.0.0.0:7");
        assert_eq!(back.compute.at.addr(5432), "[::1]:5432");
        assert!(back.compute.at.is_loopback() && !back.safekeepers[0].at.is_loopback());
    }
}
