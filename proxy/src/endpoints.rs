//! The proxy's view of the cluster's endpoints: where a named endpoint's
//! compute listens, starting it when it is suspended (one start however
//! many connections wait for it), counting the connections through the
//! proxy, and suspending endpoints idle for longer than their
//! `suspend_after_s`.
//!
//! Invariants:
//! * an endpoint is looked up, woken or suspended only under its lock, so a
//!   wake and a suspend never overlap, and a connection counted before the
//!   suspender's last check either keeps the endpoint up or wakes it again;
//! * only endpoints the proxy suspended (`suspended = true` in
//!   `endpoint.toml`) are woken: one the user stopped stays stopped;
//! * an endpoint with client backends that did not come through the proxy
//!   (a direct connection) is not idle.
//!
//! Cancellation: [`Endpoints::connect_target`] may be dropped while it
//! waits. A start runs in its own thread holding the endpoint's lock until
//! it ends, so a dropped or timed-out waiter never lets a second start in.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use control_plane::cluster::Cluster;
use control_plane::endpoint::Endpoint;
use control_plane::settings::SettingsChange;
use anyhow::Context;
use tokio::sync::OwnedMutexGuard;
use tracing::{info, warn};

use crate::metrics::METRICS;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {0:?} does not exist")]
    Unknown(String),
    #[error("endpoint {0:?} is stopped; start it with `strata endpoint start {0}`")]
    Stopped(String),
    #[error("endpoint {name:?} did not start within {timeout_s} s")]
    WakeTimeout { name: String, timeout_s: u64 },
    #[error("endpoint {name:?} failed to start: {detail}")]
    WakeFailed { name: String, detail: String },
    #[error("too many connections to endpoint {name:?} through the proxy (limit {limit})")]
    TooMany { name: String, limit: usize },
    #[error("endpoint {name:?}: {detail}")]
    Registry { name: String, detail: String },
}

impl EndpointError {
    /// The SQLSTATE the client sees.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            EndpointError::Unknown(_) => "3D000",
            EndpointError::Stopped(_) | EndpointError::WakeTimeout { .. } | EndpointError::WakeFailed { .. } => "57P03",
            EndpointError::TooMany { .. } => "53300",
            EndpointError::Registry { .. } => "XX000",
        }
    }

    /// Label of `proxy_refused_connections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            EndpointError::Unknown(_) => "unknown_endpoint",
            EndpointError::Stopped(_) => "stopped_endpoint",
            EndpointError::WakeTimeout { .. } | EndpointError::WakeFailed { .. } => "wake_failed",
            EndpointError::TooMany { .. } => "too_many_connections",
            EndpointError::Registry { .. } => "registry",
        }
    }
}

#[derive(Default)]
struct Entry {
    lock: Arc<tokio::sync::Mutex<()>>,
    connections: usize,
    /// Last time the count of connections through the proxy fell to zero
    /// (or a direct client was seen).
    idle_since: Option<Instant>,
}

pub struct Endpoints {
    repo: PathBuf,
    wake_timeout: Duration,
    max_per_endpoint: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

/// A connection through the proxy to an endpoint, counted while it lives.
pub struct ConnectionGuard {
    endpoints: Arc<Endpoints>,
    name: String,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut entries = self.endpoints.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get_mut(&self.name) {
            e.connections = e.connections.saturating_sub(1);
            if e.connections == 0 {
                e.idle_since = Some(Instant::now());
            }
        }
    }
}

impl Endpoints {
    pub fn new(repo: PathBuf, wake_timeout: Duration, max_per_endpoint: usize) -> Arc<Endpoints> {
        Arc::new(Endpoints { repo, wake_timeout, max_per_endpoint, entries: Mutex::new(HashMap::new()) })
    }

    /// Count a connection to `name` (refused beyond the per-endpoint limit).
    pub fn open(self: &Arc<Self>, name: &str) -> Result<ConnectionGuard, EndpointError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry(name.to_string()).or_default();
        if entry.connections >= self.max_per_endpoint {
            return Err(EndpointError::TooMany { name: name.to_string(), limit: self.max_per_endpoint });
        }
        entry.connections += 1;
        Ok(ConnectionGuard { endpoints: Arc::clone(self), name: name.to_string() })
    }

    fn lock_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&entries.entry(name.to_string()).or_default().lock)
    }

    async fn load(&self, name: &str) -> Result<(Endpoint, bool), EndpointError> {
        let (repo, owned) = (self.repo.clone(), name.to_string());
        let loaded = tokio::task::spawn_blocking(move || {
            Endpoint::load(&repo, &owned).map(|ep| ep.map(|ep| {
                let running = ep.running_pid().is_some();
                (ep, running)
            }))
        })
        .await;
        let registry = |detail: String| EndpointError::Registry { name: name.to_string(), detail };
        match loaded.map_err(|e| registry(e.to_string()))? {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(EndpointError::Unknown(name.to_string())),
            Err(e) => Err(registry(format!("{e:#}"))),
        }
    }

    /// Host and port of `name`'s compute, started first if it is suspended.
    pub async fn connect_target(&self, name: &str) -> Result<(String, u16), EndpointError> {
        let timeout = self.wake_timeout;
        let timed_out = || EndpointError::WakeTimeout { name: name.to_string(), timeout_s: timeout.as_secs() };
        let deadline = tokio::time::Instant::now() + timeout;
        let guard = tokio::time::timeout_at(deadline, self.lock_of(name).lock_owned()).await.map_err(|_| timed_out())?;
        let (ep, running) = self.load(name).await?;
        if running {
            return Ok((ep.at.host.clone(), ep.port));
        }
        if !ep.suspended {
            return Err(EndpointError::Stopped(name.to_string()));
        }
        let started = Instant::now();
        METRICS.wakeups.inc();
        info!(endpoint = name, "waking suspended endpoint");
        let start = tokio::task::spawn_blocking({
            let repo = self.repo.clone();
            move || start_endpoint(repo, ep, guard)
        });
        let result = match tokio::time::timeout_at(deadline, start).await {
            Err(_) => Err(timed_out()),
            Ok(Err(join)) => Err(EndpointError::WakeFailed { name: name.to_string(), detail: join.to_string() }),
            Ok(Ok(Err(e))) => Err(EndpointError::WakeFailed { name: name.to_string(), detail: format!("{e:#}") }),
            Ok(Ok(Ok(ep))) => Ok((ep.at.host.clone(), ep.port)),
        };
        match &result {
            Ok(_) => {
                METRICS.wake_seconds.observe(started.elapsed().as_secs_f64());
                info!(endpoint = name, wake_ms = started.elapsed().as_millis() as u64, "endpoint woken");
            }
            Err(e) => {
                METRICS.wake_failures.inc();
                warn!(endpoint = name, "wake failed: {e}");
            }
        }
        result
    }

    /// One pass of the suspender: stop every running endpoint with a
    /// suspend timeout that had no client for that long.
    pub async fn suspend_idle(&self) {
        let repo = self.repo.clone();
        let Ok(Ok(all)) = tokio::task::spawn_blocking(move || Endpoint::list(&repo)).await else { return };
        for ep in all.into_iter().filter(|e| e.suspend_after_s.is_some_and(|s| s > 0)) {
            if let Err(e) = self.suspend_if_idle(ep).await {
                warn!("suspend check: {e:#}");
            }
        }
    }

    async fn suspend_if_idle(&self, ep: Endpoint) -> anyhow::Result<()> {
        let limit = Duration::from_secs(ep.suspend_after_s.unwrap_or(0));
        let Some(idle) = self.idle_for(&ep) else { return Ok(()) };
        if idle < limit {
            return Ok(());
        }
        if direct_clients(&ep).await? > 0 {
            self.touch(&ep.name);
            return Ok(());
        }
        let Ok(_guard) = self.lock_of(&ep.name).try_lock_owned() else { return Ok(()) };
        if self.idle_for(&ep).is_none_or(|idle| idle < limit) {
            return Ok(());
        }
        let (repo, name) = (self.repo.clone(), ep.name.clone());
        let stopped = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Endpoint>> {
            let Some(ep) = Endpoint::load(&repo, &name)? else { return Ok(None) };
            ep.stop_postgres()?;
            // Counted before it shows: whoever sees `suspended` sees the count.
            METRICS.suspends.inc();
            Endpoint { suspended: true, ..ep.clone() }.save(&repo)?;
            Ok(Some(ep))
        })
        .await??;
        // A lazy compute's filesystem goes with it (the wake-up builds a new one).
        if let Some(ep) = stopped.filter(|e| e.lazy_active) {
            control_plane::lazy::stop(&self.repo, &ep).await?;
        }
        info!(endpoint = ep.name, idle_s = idle.as_secs(), "suspended idle endpoint");
        Ok(())
    }

    /// How long `ep` has been without a connection through the proxy, if it
    /// is running and has none now: since the later of its start and the
    /// last connection's end.
    fn idle_for(&self, ep: &Endpoint) -> Option<Duration> {
        let since_start = postmaster_age(ep)?;
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&ep.name) {
            Some(e) if e.connections > 0 => None,
            Some(Entry { idle_since: Some(t), .. }) => Some(t.elapsed().min(since_start)),
            _ => Some(since_start),
        }
    }

    fn touch(&self, name: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.entry(name.to_string()).or_default().idle_since = Some(Instant::now());
    }

    /// Run [`Endpoints::suspend_idle`] every `interval` for ever.
    pub async fn run_suspender(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.suspend_idle().await;
        }
    }
}

/// Blocking: `strata endpoint start NAME` for a suspended endpoint, on its
/// branch at the latest LSN, with its settings; `_lock` is held until done.
fn start_endpoint(repo: PathBuf, ep: Endpoint, _lock: OwnedMutexGuard<()>) -> anyhow::Result<Endpoint> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let cluster = Cluster::load(&repo)?;
        cluster.endpoint_start(ep.tenant_id, &ep.name, None, &SettingsChange::default()).await
    })
}

/// Time since the endpoint's postmaster started (its pid file's age);
/// `None` when it is not running.
fn postmaster_age(ep: &Endpoint) -> Option<Duration> {
    ep.running_pid()?;
    let modified = std::fs::metadata(ep.pgdata.join("postmaster.pid")).ok()?.modified().ok()?;
    Some(SystemTime::now().duration_since(modified).unwrap_or_default())
}

/// Client backends on the compute other than the asking one (connections
/// through the proxy included), counted over its Unix socket (no password
/// needed there; see `control_plane::endpoint`).
async fn direct_clients(ep: &Endpoint) -> anyhow::Result<u64> {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
    let out = ep.psql_local(sql).await?;
    out.trim().parse().with_context(|| format!("count of client backends on endpoint {}: {out:?}", ep.name))
}
