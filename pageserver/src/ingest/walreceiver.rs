//! The walreceiver: one task per timeline that streams WAL from a
//! safekeeper (or directly from a PostgreSQL primary), decodes it and
//! ingests it, replies to keepalives and sends feedback, and reconnects
//! with exponential backoff.
//!
//! Protocol: connect (for a safekeeper the timeline is selected with the
//! startup options `-c tenant_id=<hex> -c timeline_id=<hex>`, added when
//! the conninfo has no `options`; the token of `--auth-token-file` is the
//! password when the conninfo has none), IDENTIFY_SYSTEM (the system id must be
//! the timeline's), `START_REPLICATION PHYSICAL <last_record_lsn>`. Feedback:
//! `StrataFeedback` to safekeepers, `StandbyStatusUpdate` to a PostgreSQL
//! primary (a stock walsender exits on Strata's 'z' message), reporting the
//! last ingested LSN as written, flushed and applied (the primary keeps the
//! WAL; disk_consistent_lsn is reported to safekeepers, which may trim).
//!
//! Several sources: a [`WalSource`] may list several conninfos (the
//! timeline's safekeepers). Each connection goes to the most advanced one
//! that answers `IDENTIFY_SYSTEM` (its xlogpos is its commit LSN); while
//! streaming, when nothing has arrived for [`SOURCE_IDLE_PROBE`], the others
//! are asked too, and the walreceiver reconnects to one that is ahead. Every
//! connection resumes at `last_record_lsn`, so a switch leaves no gap and
//! ingests no record twice.
//!
//! Backpressure: before a message of WAL is ingested, the task waits while
//! [`crate::tenant::timeline::MAX_FROZEN_LAYERS`] frozen in-memory layers
//! are not flushed yet (still sending feedback every second, and starting
//! a flush again if none runs), so memory does not pile up when flushes
//! are slower than the WAL; the time waited is counted in
//! `strata_pageserver_ingest_backpressure_seconds_total`.
//!
//! Owns: the task and its [`WalReceiverStatus`] (kept in the timeline).
//! Invariants: WAL is ingested strictly in order from `last_record_lsn`;
//! a gap or decode error ends the connection and the next one restarts
//! from `last_record_lsn`, a record boundary.
//!
//! Cancellation: [`stop`] cancels the task's token and waits for it; the
//! task only observes cancellation between records (never in the middle of
//! ingesting one), so a stop never leaves a half-ingested record.
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pq_proto::{ConnConfig, ReplicationClient, ReplicationMessage, ReplicationStream, StandbyStatusUpdate, StrataFeedback};
use postgres_ffi::{DecodedRecord, WalStreamDecoder};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::tenant::timeline::Timeline;
use crate::ingest::walingest::WalIngest;

/// Where a timeline's WAL comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalSourceKind {
    Safekeeper,
    Primary,
}

/// Probe the other sources when the current one sent no WAL for this long.
const SOURCE_IDLE_PROBE: Duration = Duration::from_secs(2);
/// Bound on connecting to and identifying one source.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalSource {
    pub kind: WalSourceKind,
    /// libpq `key=value` string or `postgresql://` URI (the single form; in
    /// the status: the source currently streamed from).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub conninfo: String,
    /// All sources to choose from (e.g. every safekeeper of the timeline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conninfos: Vec<String>,
}

impl WalSource {
    /// Every conninfo given, in order, without duplicates.
    pub fn all(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in std::iter::once(&self.conninfo).chain(&self.conninfos) {
            if !c.is_empty() && !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }

    fn single(&self, conninfo: &str) -> WalSource {
        WalSource { kind: self.kind, conninfo: conninfo.to_string(), conninfos: Vec::new() }
    }
}

/// What the HTTP API shows of a walreceiver.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WalReceiverStatus {
    /// The source streamed from (or last tried).
    pub source: Option<WalSource>,
    /// Every configured source.
    pub sources: Vec<String>,
    pub source_switches: u64,
    pub connected: bool,
    pub last_update_unix_ms: Option<u64>,
    /// The sender's end of WAL (commit LSN for a safekeeper).
    pub commit_lsn: Option<Lsn>,
    pub last_received_lsn: Option<Lsn>,
    pub last_error: Option<String>,
    pub connection_attempts: u64,
}

/// A timeline's walreceiver: what it reports and the task, if running.
#[derive(Default)]
struct WalReceiverState {
    status: WalReceiverStatus,
    task: Option<(CancellationToken, JoinHandle<()>)>,
}

type TimelineKey = (TenantId, TimelineId);

/// Every timeline's walreceiver, by (tenant, timeline). Kept here rather
/// than in [`Timeline`], so the tenant layer does not depend on ingest's
/// types (timeline ids are unique, so one registry serves every repository
/// in a process).
static RECEIVERS: LazyLock<Mutex<HashMap<TimelineKey, WalReceiverState>>> = LazyLock::new(Default::default);

fn with_state<R>(tl: &Timeline, f: impl FnOnce(&mut WalReceiverState) -> R) -> R {
    let mut all = RECEIVERS.lock().unwrap_or_else(|e| e.into_inner());
    f(all.entry((tl.tenant_id, tl.timeline_id)).or_default())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn update(tl: &Timeline, f: impl FnOnce(&mut WalReceiverStatus)) {
    with_state(tl, |st| f(&mut st.status));
}

/// The walreceiver status of a timeline.
pub fn status(tl: &Timeline) -> WalReceiverStatus {
    with_state(tl, |st| st.status.clone())
}

/// File in a timeline directory naming its WAL source, so that a restarted
/// pageserver resumes streaming by itself.
pub const WAL_SOURCE_FILE: &str = "wal_source.json";

/// Durably record (or, with `None`, forget) the WAL source of `tl`.
pub fn persist_source(tl: &Timeline, source: Option<&WalSource>) -> std::io::Result<()> {
    let path = tl.path.join(WAL_SOURCE_FILE);
    match source {
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Some(source) => {
            let text = serde_json::to_vec(source).map_err(std::io::Error::other)?;
            utils::fs::write_atomic(&path, &text)
        }
    }
}

/// The WAL source recorded for `tl`, if any.
pub fn persisted_source(tl: &Timeline) -> Option<WalSource> {
    let text = std::fs::read(tl.path.join(WAL_SOURCE_FILE)).ok()?;
    match serde_json::from_slice(&text) {
        Ok(source) => Some(source),
        Err(e) => {
            warn!("ignoring unreadable {WAL_SOURCE_FILE}: {e}");
            None
        }
    }
}

/// (Re)start streaming into `tl` from `source`.
pub async fn start(tl: &Arc<Timeline>, source: WalSource) {
    stop(tl).await;
    let cancel = CancellationToken::new();
    let span = info_span!("walreceiver", tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id);
    let handle = tokio::spawn(run(Arc::clone(tl), source.clone(), cancel.clone()).instrument(span));
    let all = source.all();
    with_state(tl, |st| {
        st.status = WalReceiverStatus { source: all.first().map(|c| source.single(c)), sources: all, ..Default::default() };
        st.task = Some((cancel, handle));
    });
}

/// Stop the walreceiver of `tl` (if any) and wait for it.
pub async fn stop(tl: &Timeline) {
    let task = with_state(tl, |st| st.task.take());
    if let Some((cancel, handle)) = task {
        cancel.cancel();
        let _ = handle.await;
    }
    update(tl, |s| s.connected = false);
}

/// Stop the walreceiver of `tl` and forget its status (the timeline is
/// going away).
pub async fn remove(tl: &Timeline) {
    stop(tl).await;
    RECEIVERS.lock().unwrap_or_else(|e| e.into_inner()).remove(&(tl.tenant_id, tl.timeline_id));
}

async fn run(tl: Arc<Timeline>, source: WalSource, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut previous: Option<String> = None;
    loop {
        update(&tl, |s| s.connection_attempts += 1);
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            picked = pick_source(&tl, &source) => match picked {
                Ok((conninfo, client, ident)) => {
                    note_source(&tl, &source, &conninfo, &mut previous);
                    stream_once(&tl, &source, &conninfo, client, ident, &cancel).await
                }
                Err(e) => Err(e),
            },
        };
        update(&tl, |s| {
            s.connected = false;
            if let Err(e) = &result {
                s.last_error = Some(e.clone());
            }
        });
        match result {
            Ok(true) => return, // cancelled
            Ok(false) => backoff = Duration::from_millis(100),
            Err(e) => {
                warn!(lsn = %tl.last_record_lsn(), "walreceiver connection ended: {e}");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn note_source(tl: &Timeline, source: &WalSource, conninfo: &str, previous: &mut Option<String>) {
    let switched = previous.as_deref().is_some_and(|p| p != conninfo);
    if switched {
        crate::metrics::WALRECEIVER_SOURCE_SWITCHES.inc();
        info!(from = previous.as_deref().unwrap_or(""), to = conninfo, "switching WAL source");
    }
    *previous = Some(conninfo.to_string());
    update(tl, |s| {
        s.source = Some(source.single(conninfo));
        s.source_switches += u64::from(switched);
    });
}

/// The token file given by `--auth-token-file` (set once at start-up).
static AUTH_TOKEN_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Present the token in `path` (read at every connection) to safekeeper
/// sources whose conninfo has no password. Only the first call counts.
pub fn set_auth_token_file(path: std::path::PathBuf) {
    let _ = AUTH_TOKEN_FILE.set(path);
}

/// The token to present, if a token file is set (blocking read of a small
/// file, off the runtime's threads).
async fn auth_token() -> Result<Option<String>, String> {
    let Some(path) = AUTH_TOKEN_FILE.get() else { return Ok(None) };
    let path = path.clone();
    let read = tokio::task::spawn_blocking(move || auth::read_token_file(&path)).await.map_err(|e| format!("token file: {e}"))?;
    read.map(Some).map_err(|e| format!("token file: {e}"))
}

/// Connect to `conninfo` and identify it, within [`PROBE_TIMEOUT`].
async fn connect_source(tl: &Timeline, kind: WalSourceKind, conninfo: &str) -> Result<(ReplicationClient, pq_proto::IdentifySystem), String> {
    let mut conf: ConnConfig = conninfo.parse().map_err(|e| format!("conninfo: {e}"))?;
    if kind == WalSourceKind::Safekeeper && conf.options.is_none() {
        conf.options = Some(format!("-c tenant_id={} -c timeline_id={}", tl.tenant_id, tl.timeline_id));
    }
    if kind == WalSourceKind::Safekeeper && conf.password.is_none() {
        conf.password = auth_token().await?;
    }
    conf.application_name = Some("pageserver".into());
    let attempt = async {
        let mut client = ReplicationClient::connect_config(&conf).await.map_err(|e| format!("connect: {e}"))?;
        let ident = client.identify_system().await.map_err(|e| format!("IDENTIFY_SYSTEM: {e}"))?;
        if ident.system_id != 0 && ident.system_id != tl.system_id {
            return Err(format!("system id {} of the source is not the timeline's {}", ident.system_id, tl.system_id));
        }
        Ok((client, ident))
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt).await.map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))?
}

/// The most advanced source that answers (first listed on ties).
async fn pick_source(tl: &Timeline, source: &WalSource) -> Result<(String, ReplicationClient, pq_proto::IdentifySystem), String> {
    let all = source.all();
    let probes = futures::future::join_all(all.iter().map(|c| connect_source(tl, source.kind, c))).await;
    let mut best: Option<(String, ReplicationClient, pq_proto::IdentifySystem)> = None;
    let mut errors = Vec::new();
    for (conninfo, probe) in all.iter().zip(probes) {
        match probe {
            Ok((client, ident)) if best.as_ref().is_none_or(|b| ident.xlogpos > b.2.xlogpos) => best = Some((conninfo.clone(), client, ident)),
            Ok(_) => {}
            Err(e) => errors.push(format!("{conninfo}: {e}")),
        }
    }
    best.ok_or_else(|| format!("no WAL source answers: {}", errors.join("; ")))
}

/// Whether another source is ahead of `current_end` (what the current one has).
async fn other_source_ahead(tl: &Timeline, source: &WalSource, current: &str, current_end: Lsn) -> Option<String> {
    let others: Vec<String> = source.all().into_iter().filter(|c| c != current).collect();
    let probes = futures::future::join_all(others.iter().map(|c| connect_source(tl, source.kind, c))).await;
    others.into_iter().zip(probes).find_map(|(c, p)| p.ok().filter(|(_, ident)| ident.xlogpos > current_end).map(|_| c))
}

async fn send_feedback(tl: &Timeline, kind: WalSourceKind, stream: &mut ReplicationStream) -> Result<(), String> {
    let (last, disk) = (tl.last_record_lsn(), tl.disk_consistent_lsn());
    let now = pq_proto::pg_now_us();
    let r = match kind {
        WalSourceKind::Primary => {
            stream
                .send(StandbyStatusUpdate {
                    // The primary keeps its WAL; reporting what is ingested
                    // as flushed lets it shut down cleanly (it waits for
                    // standbys to confirm the shutdown checkpoint).
                    write_lsn: last,
                    flush_lsn: last,
                    apply_lsn: last,
                    send_time_us: now,
                    reply_requested: false,
                })
                .await
        }
        WalSourceKind::Safekeeper => {
            stream
                .send(StrataFeedback {
                    write_lsn: last,
                    disk_consistent_lsn: disk,
                    remote_consistent_lsn: tl.remote_consistent_lsn(),
                    timeline_size_bytes: 0,
                    send_time_us: now,
                })
                .await
        }
    };
    r.map_err(|e| format!("sending feedback: {e}"))
}

/// Start a flush of frozen layers in the background (flushes serialize).
fn spawn_flush(tl: &Arc<Timeline>) {
    let tl = Arc::clone(tl);
    tokio::spawn(async move {
        if let Err(e) = tl.flush_frozen_layers_in_background().await {
            warn!(tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id, "layer flush failed: {e}");
        }
    });
}

/// One connection. `Ok(true)` when cancelled, `Ok(false)` when the server
/// ended the stream.
async fn stream_once(
    tl: &Arc<Timeline>,
    source: &WalSource,
    conninfo: &str,
    client: ReplicationClient,
    ident: pq_proto::IdentifySystem,
    cancel: &CancellationToken,
) -> Result<bool, String> {
    let start = tl.last_record_lsn();
    let mut stream = client
        .start_replication(None, start, ident.timeline.max(1))
        .await
        .map_err(|e| format!("START_REPLICATION at {start}: {e}"))?;
    info!(%start, kind = ?source.kind, conninfo, "streaming WAL");
    let (mut source_end, mut last_data) = (ident.xlogpos, std::time::Instant::now());
    update(tl, |s| {
        s.connected = true;
        s.last_error = None;
        s.last_update_unix_ms = Some(now_ms());
    });
    let mut decoder = WalStreamDecoder::new(start, tl.wal_seg_size).expect_system_id(tl.system_id);
    let mut walingest = WalIngest::new(tl).await.map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(true),
            _ = tick.tick() => {
                if tl.should_freeze() && !tl.flush_backlog_full() {
                    let _w = tl.write_lock.lock().await;
                    tl.freeze_locked();
                    spawn_flush(tl);
                }
                send_feedback(tl, source.kind, &mut stream).await?;
                if last_data.elapsed() >= SOURCE_IDLE_PROBE {
                    last_data = std::time::Instant::now();
                    if let Some(other) = other_source_ahead(tl, source, conninfo, source_end.max(tl.last_record_lsn())).await {
                        return Err(format!("source is behind {other}; reconnecting to the most advanced"));
                    }
                }
                continue;
            }
            msg = stream.next() => msg.map_err(|e| format!("reading the stream: {e}"))?,
        };
        match msg {
            None => return Ok(false),
            Some(ReplicationMessage::XLogData(d)) => {
                // Backpressure: no more WAL into memory while the frozen
                // layers wait for their flush; keep answering the source.
                while tl.flush_backlog_full() {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(true),
                        _ = tl.wait_for_flush_backlog() => {}
                        _ = tick.tick() => {
                            if !tl.flush_in_progress() {
                                spawn_flush(tl); // the last one failed: retry
                            }
                            send_feedback(tl, source.kind, &mut stream).await?;
                        }
                    }
                }
                if d.wal_start != decoder.available_lsn() {
                    return Err(format!("WAL gap: got data at {}, expected {}", d.wal_start, decoder.available_lsn()));
                }
                crate::metrics::WAL_RECEIVED_BYTES.inc_by(d.data.len() as u64);
                decoder.feed_bytes(&d.data);
                let mut freeze = false;
                {
                    let _w = tl.write_lock.lock().await;
                    loop {
                        let rec = match decoder.poll_decode() {
                            Ok(Some(rec)) => rec,
                            Ok(None) => break,
                            Err(e) => return Err(format!("decoding WAL: {e}")),
                        };
                        let decoded = DecodedRecord::decode(rec.start_lsn, rec.bytes).map_err(|e| e.to_string())?;
                        walingest
                            .ingest_record(tl, &decoded, rec.end_lsn)
                            .await
                            .map_err(|e| format!("ingesting record at {}: {e}", rec.start_lsn))?;
                    }
                    if tl.should_freeze() {
                        tl.freeze_locked();
                        freeze = true;
                    }
                }
                if freeze {
                    spawn_flush(tl);
                }
                let end = d.end_lsn();
                (source_end, last_data) = (d.wal_end.max(end), std::time::Instant::now());
                update(tl, |s| {
                    s.last_received_lsn = Some(end);
                    s.commit_lsn = Some(d.wal_end.max(end));
                    s.last_update_unix_ms = Some(now_ms());
                });
            }
            Some(ReplicationMessage::PrimaryKeepalive(k)) => {
                source_end = source_end.max(k.wal_end);
                update(tl, |s| {
                    s.commit_lsn = Some(k.wal_end);
                    s.last_update_unix_ms = Some(now_ms());
                });
                if k.reply_requested {
                    send_feedback(tl, source.kind, &mut stream).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_list_forms_of_a_wal_source() {
        let old: WalSource = serde_json::from_str(r#"{"kind":"safekeeper","conninfo":"host=a port=1"}"#).unwrap();
        assert_eq!(old.all(), vec!["host=a port=1".to_string()]);
        let list: WalSource = serde_json::from_str(r#"{"kind":"safekeeper","conninfos":["host=a port=1","host=b port=2","host=a port=1"]}"#).unwrap();
        assert_eq!(list.all(), vec!["host=a port=1".to_string(), "host=b port=2".to_string()]);
        // What is persisted reads back the same.
        let back: WalSource = serde_json::from_slice(&serde_json::to_vec(&list).unwrap()).unwrap();
        assert_eq!(back, list);
        let empty: WalSource = serde_json::from_str(r#"{"kind":"primary"}"#).unwrap();
        assert!(empty.all().is_empty());
    }
}
