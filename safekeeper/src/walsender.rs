//! Serving WAL over the PostgreSQL replication protocol: to pageservers, and
//! to any standard physical replication client (`pg_receivewal`, a standby).
//!
//! A client names the timeline in its startup `options`:
//! `-c tenant_id=<hex> -c timeline_id=<hex>`. Supported commands:
//! `IDENTIFY_SYSTEM` (xlogpos = commit_lsn), `SHOW wal_segment_size`,
//! `SHOW data_directory_mode`, and `START_REPLICATION [SLOT s] [PHYSICAL] X/Y
//! [TIMELINE 1]`. Slots are accepted and ignored.
//!
//! Invariants: only WAL below the timeline's `commit_lsn` is ever sent (what
//! a quorum holds), except to a recovering peer safekeeper (startup option
//! `-c strata_recovery=on`), which gets WAL up to `flush_lsn`; XLogData chunks are contiguous from the requested start.
//!
//! WAL below the local WAL start (removed after it was offloaded) is served
//! from remote storage when the safekeeper has it configured: a start
//! position is accepted when its segment is there, and each such segment is
//! downloaded once per connection (see [`crate::wal_backup::RemoteSegment`]);
//! a local segment removed while a replica reads it is fetched the same way.
//! Idle replicas get a keepalive with reply requested every
//! `keepalive_interval_ms`. A malformed message or an unknown command in
//! streaming mode closes that connection with a logged error; other
//! connections are unaffected. So does a client that sends no startup
//! packet, or only part of a message, within `partial_message_timeout_ms`.
//!
//! Authentication: trust without `--auth-public-key-dir`; with it, the
//! password is a JWT (a bad one: FATAL 28P01) that must allow the tenant
//! of the startup options (scope `safekeeperdata`, `pageserverapi`,
//! `admin`, or that tenant's `tenant` token; else FATAL 42501), checked
//! before the timeline is looked up.
//!
//! Cancellation: each connection is its own task; all reads go through the
//! cancellation-safe `PostgresBackend::read_message`, so the select loop can
//! drop a pending read at any time without losing bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use pq_proto::messages::{BeMessage, ColumnDesc, FeMessage, StartupMessage};
use pq_proto::replication::{pg_now_us, PrimaryKeepalive, ReplicationFeedback, ReplicationMessage, XLogData};
use pq_proto::server::{PostgresBackend, ReplicationCommand, StartReplication};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::metrics::METRICS;
use crate::timeline::Timeline;
use crate::timelines::Timelines;
use crate::wal_backup::{self, RemoteSegment};
use crate::wal_storage::{read_wal, WalStorageError};

/// Largest WAL chunk in one XLogData message.
const MAX_SEND_SIZE_BYTES: u64 = 128 * 1024;
/// Scopes that open the walsender (besides `admin`): peers, pageservers,
/// and the tenant's own token for its timelines.
const WALSENDER_SCOPES: &[auth::Scope] = &[auth::Scope::SafekeeperData, auth::Scope::PageServerApi, auth::Scope::Tenant];
/// What a safekeeper reports as `server_version`.
const SERVER_VERSION: &str = "15.0";

/// What the status API shows of one connected replica.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaStatus {
    pub connection_id: u64,
    pub application_name: String,
    pub peer_addr: String,
    /// `pageserver` once it sent Strata feedback, else `standby`.
    pub kind: String,
    pub start_lsn: Lsn,
    pub sent_lsn: Lsn,
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub apply_lsn: Lsn,
    pub disk_consistent_lsn: Lsn,
    pub remote_consistent_lsn: Lsn,
    pub timeline_size_bytes: u64,
    pub last_feedback_ms_ago: Option<u64>,
    #[serde(skip)]
    last_feedback: Option<Instant>,
}

type ReplicaMap = HashMap<u64, (TenantId, TimelineId, ReplicaStatus)>;
static REPLICAS: LazyLock<Mutex<ReplicaMap>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

fn replicas() -> std::sync::MutexGuard<'static, ReplicaMap> {
    REPLICAS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The replicas currently streaming a timeline.
pub fn replicas_of(tenant_id: TenantId, timeline_id: TimelineId) -> Vec<ReplicaStatus> {
    let mut out: Vec<ReplicaStatus> = replicas()
        .values()
        .filter(|(t, tl, _)| *t == tenant_id && *tl == timeline_id)
        .map(|(_, _, r)| {
            let mut r = r.clone();
            r.last_feedback_ms_ago = r.last_feedback.map(|t| t.elapsed().as_millis() as u64);
            r
        })
        .collect();
    out.sort_by_key(|r| r.connection_id);
    out
}

/// Registration of a streaming replica; removed on drop.
struct ReplicaGuard(u64);

impl ReplicaGuard {
    fn new(tl: &Timeline, status: ReplicaStatus) -> ReplicaGuard {
        let id = status.connection_id;
        replicas().insert(id, (tl.tenant_id, tl.timeline_id, status));
        METRICS.replica_connections.inc();
        ReplicaGuard(id)
    }
    fn update(&self, f: impl FnOnce(&mut ReplicaStatus)) {
        if let Some((_, _, status)) = replicas().get_mut(&self.0) {
            f(status);
        }
    }
}

impl Drop for ReplicaGuard {
    fn drop(&mut self) {
        replicas().remove(&self.0);
        METRICS.replica_connections.dec();
    }
}

/// Accept replication connections until the listener fails.
pub async fn serve(listener: TcpListener, timelines: Arc<Timelines>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await.context("accept replication connection")?;
        let timelines = timelines.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_connection(stream, peer, timelines).await {
                METRICS.protocol_errors.inc();
                tracing::warn!(%peer, "replication connection closed: {e:#}");
            }
        });
    }
}

struct Connection {
    pgb: PostgresBackend<TcpStream>,
    tl: Arc<Timeline>,
    id: u64,
    peer: SocketAddr,
    application_name: String,
    keepalive_interval: Duration,
    /// The replica asked for a reply in its last status update.
    pending_reply: bool,
    /// A peer safekeeper recovering: serve up to flush_lsn, not commit_lsn.
    recovery: bool,
    /// Where offloaded WAL is, when configured.
    remote: Option<remote_storage::GenericRemoteStorage>,
    /// The offloaded segment being served, if any.
    remote_segment: Option<RemoteSegment>,
}

async fn handle_connection(stream: TcpStream, peer: SocketAddr, timelines: Arc<Timelines>) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let timeout = Duration::from_millis(timelines.conf.partial_message_timeout_ms);
    let mut pgb = PostgresBackend::new(stream).with_partial_message_timeout(timeout);
    let startup = match tokio::time::timeout(timeout, pgb.read_startup()).await {
        Ok(read) => read?,
        Err(_) => bail!("no startup packet within {} ms", timeout.as_millis()),
    };
    let startup = match startup {
        Some(FeMessage::StartupMessage(startup)) => startup,
        _ => return Ok(()), // closed, or a cancel request: nothing to cancel here
    };
    let recovery = parse_options(startup.params.get("options").map(String::as_str).unwrap_or(""))
        .get("strata_recovery")
        .is_some_and(|v| v == "on" || v == "true");
    if let Some(keys) = &timelines.conf.auth_keys {
        let Some(claims) = auth::pg::login(&mut pgb, keys, "walsender").await? else {
            return Ok(()); // refused (FATAL sent) or closed
        };
        let tenant = parse_options(startup.params.get("options").map(String::as_str).unwrap_or(""))
            .get("tenant_id")
            .and_then(|t| t.parse::<TenantId>().ok());
        if let Err((state, msg)) = auth::pg::check_command(&claims, auth::Access { scopes: WALSENDER_SCOPES, tenant }, "walsender") {
            pgb.send_fatal(state, &msg).await?;
            return Ok(());
        }
    }
    let tl = match timeline_of(&startup, &timelines) {
        Ok(tl) => tl,
        Err(e) => {
            let msg = format!("{e:#}");
            pgb.write_message(&BeMessage::ErrorResponse { severity: "FATAL", sqlstate: "3D000", message: &msg })?;
            pgb.flush().await?;
            bail!(msg);
        }
    };
    let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
    let params = [
        ("server_version", SERVER_VERSION),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ];
    pgb.authenticate_trust(&params, id as i32, 0).await?;
    let application_name = startup.application_name().unwrap_or("").to_string();
    let keepalive_interval = Duration::from_millis(timelines.conf.keepalive_interval_ms);
    let span = tracing::info_span!("walsender", tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id, %peer, app = %application_name, recovery);
    let remote = timelines.conf.remote_storage.clone();
    let mut conn = Connection { pgb, tl, id, peer, application_name, keepalive_interval, pending_reply: false, recovery, remote, remote_segment: None };
    tracing::Instrument::instrument(conn.query_loop(), span).await
}

/// The timeline named in the startup packet's `options`.
fn timeline_of(startup: &StartupMessage, timelines: &Timelines) -> anyhow::Result<Arc<Timeline>> {
    let options = startup.params.get("options").map(String::as_str).unwrap_or("");
    let settings = parse_options(options);
    let get = |name: &str| settings.get(name).with_context(|| format!("startup options must set {name} (-c {name}=<hex>)"));
    let tenant_id: TenantId = get("tenant_id")?.parse()?;
    let timeline_id: TimelineId = get("timeline_id")?.parse()?;
    Ok(timelines.get(tenant_id, timeline_id)?)
}

/// `-c a=b -cc=d --e=f` → {a: b, c: d, e: f}.
pub fn parse_options(options: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next()
        } else {
            word.strip_prefix("-c").or_else(|| word.strip_prefix("--"))
        };
        if let Some((name, value)) = setting.and_then(|s| s.split_once('=')) {
            out.insert(name.replace('-', "_"), value.to_string());
        }
    }
    out
}

impl Connection {
    async fn query_loop(&mut self) -> anyhow::Result<()> {
        loop {
            let msg = tokio::select! {
                msg = self.pgb.read_message() => msg?,
                _ = self.tl.cancel.cancelled() => bail!("timeline deleted or safekeeper shutting down"),
            };
            match msg {
                None | Some(FeMessage::Terminate) => return Ok(()),
                Some(FeMessage::Query(query)) => {
                    self.handle_query(&query).await?;
                    self.pgb.ready_for_query().await?;
                }
                Some(FeMessage::Sync | FeMessage::Flush) => {}
                Some(other) => bail!("unexpected message {other:?}"),
            }
        }
    }

    async fn handle_query(&mut self, query: &str) -> anyhow::Result<()> {
        tracing::debug!(query, "replication command");
        if query.trim().trim_end_matches(';').trim().is_empty() {
            return Ok(self.pgb.write_message(&BeMessage::EmptyQueryResponse)?);
        }
        match ReplicationCommand::parse(query) {
            Ok(ReplicationCommand::IdentifySystem) => self.identify_system(),
            Ok(ReplicationCommand::Show(name)) => self.show(&name),
            Ok(ReplicationCommand::StartReplication(start)) => self.start_replication(start).await,
            Ok(_) => Ok(self.pgb.send_error("0A000", &format!("command not supported by a safekeeper: {query}"))?),
            Err(e) => Ok(self.pgb.send_error("42601", &e.to_string())?),
        }
    }

    /// How far this connection may be served.
    fn end_lsn(&self) -> Lsn {
        if self.recovery {
            self.tl.flush_lsn()
        } else {
            self.tl.commit_lsn()
        }
    }

    fn subscribe_end(&self) -> tokio::sync::watch::Receiver<Lsn> {
        if self.recovery {
            self.tl.subscribe_flush()
        } else {
            self.tl.subscribe_commit()
        }
    }

    fn identify_system(&mut self) -> anyhow::Result<()> {
        let columns = [
            ColumnDesc::text("systemid"),
            ColumnDesc::int4("timeline"),
            ColumnDesc::text("xlogpos"),
            ColumnDesc::text("dbname"),
        ];
        let state = self.tl.persistent();
        let row = vec![
            Some(state.system_id.to_string()),
            Some("1".to_string()),
            Some(self.end_lsn().to_string()),
            None,
        ];
        Ok(self.pgb.send_row_set(&columns, &[row])?)
    }

    fn show(&mut self, name: &str) -> anyhow::Result<()> {
        let value = match name.to_ascii_lowercase().as_str() {
            "wal_segment_size" => format!("{}MB", self.tl.seg_size_bytes() >> 20),
            "data_directory_mode" => "0700".to_string(),
            "server_version" => SERVER_VERSION.to_string(),
            _ => {
                self.pgb.send_error("42704", &format!("unrecognized configuration parameter \"{name}\""))?;
                return Ok(());
            }
        };
        let columns = [ColumnDesc::text(name)];
        Ok(self.pgb.send_row_set(&columns, &[vec![Some(value)]])?)
    }

    async fn start_replication(&mut self, cmd: StartReplication) -> anyhow::Result<()> {
        let start = cmd.start;
        let (first, flush) = (self.tl.start_lsn(), self.tl.flush_lsn());
        if cmd.timeline.is_some_and(|t| t != 1) {
            self.pgb.send_error("58P01", "only timeline 1 exists on a safekeeper")?;
            return Ok(());
        }
        let offloaded = match &self.remote {
            Some(storage) if start < first && start < self.tl.backup_lsn() => match wal_backup::segment_exists(storage, &self.tl, start).await {
                Ok(exists) => exists,
                Err(e) => {
                    let msg = format!("requested starting point {start} is below the WAL on this safekeeper ({first}), and remote storage does not answer: {e}");
                    self.pgb.send_error("58030", &msg)?;
                    return Ok(());
                }
            },
            _ => false,
        };
        if (start < first && !offloaded) || start > flush {
            let remote = if self.remote.is_some() { " nor offloaded to remote storage" } else { "" };
            let msg = format!("requested starting point {start} is outside the WAL on this safekeeper ({first}..{flush}){remote}");
            self.pgb.send_error("58P01", &msg)?;
            return Ok(());
        }
        if offloaded {
            tracing::info!(%start, local_start = %first, "start below the local WAL: serving offloaded WAL from remote storage");
        }
        self.pgb.write_message(&BeMessage::CopyBothResponse)?;
        self.pgb.flush().await?;
        tracing::info!(%start, "streaming started");
        let replica = ReplicaGuard::new(
            &self.tl,
            ReplicaStatus {
                connection_id: self.id,
                application_name: self.application_name.clone(),
                peer_addr: self.peer.to_string(),
                kind: if self.recovery { "recovery".into() } else { "standby".into() },
                start_lsn: start,
                sent_lsn: start,
                ..Default::default()
            },
        );
        if self.stream(start, &replica).await? {
            // The client ended the copy: end ours and go back to commands.
            self.pgb.write_message(&BeMessage::CopyDone)?;
            self.pgb.write_message(&BeMessage::CommandComplete("START_STREAMING"))?;
        }
        Ok(())
    }

    /// Send WAL from `start` until the client ends the copy (true) or goes away.
    async fn stream(&mut self, start: Lsn, replica: &ReplicaGuard) -> anyhow::Result<bool> {
        let mut sent = start;
        let mut commit_rx = self.subscribe_end();
        let mut compute_rx = self.tl.subscribe_compute();
        compute_rx.borrow_and_update();
        let mut last_send = Instant::now();
        loop {
            if self.pending_reply {
                self.pending_reply = false;
                self.send_keepalive(self.end_lsn(), false).await?;
            }
            let commit = *commit_rx.borrow_and_update();
            if sent < commit {
                sent = self.send_wal(sent, commit).await?;
                replica.update(|r| r.sent_lsn = sent);
                last_send = Instant::now();
                // Take any feedback that already arrived, without waiting.
                if let Some(msg) = self.pgb.read_message().now_or_never() {
                    if self.handle_copy_message(msg?, replica)? {
                        return Ok(true);
                    }
                }
                continue;
            }
            let keepalive_at = last_send + self.keepalive_interval;
            tokio::select! {
                changed = commit_rx.changed() => if changed.is_err() { bail!("timeline dropped") },
                msg = self.pgb.read_message() => if self.handle_copy_message(msg?, replica)? { return Ok(true) },
                _ = tokio::time::sleep_until(keepalive_at.into()) => {
                    self.send_keepalive(commit, true).await?;
                    last_send = Instant::now();
                }
                _ = self.tl.cancel.cancelled() => bail!("timeline deleted or safekeeper shutting down"),
                _ = compute_rx.changed() => {
                    // A new term may have cut WAL this replica already has.
                    let flush = self.tl.flush_lsn();
                    if sent > flush {
                        bail!("new compute term cut WAL at {flush}, below what was sent ({sent}); reconnect");
                    }
                }
            }
        }
    }

    /// Send WAL `[from, min(to, from + MAX_SEND_SIZE))` (from remote storage
    /// up to the end of the segment, when `from` is no longer on local disk);
    /// returns the new position.
    async fn send_wal(&mut self, from: Lsn, to: Lsn) -> anyhow::Result<Lsn> {
        let len = (to.0 - from.0).min(MAX_SEND_SIZE_BYTES) as usize;
        let data = if self.remote.is_some() && from < self.tl.start_lsn() {
            self.read_remote(from, len).await?
        } else {
            let (dir, seg) = (self.tl.dir().to_path_buf(), self.tl.seg_size_bytes());
            let local = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                read_wal(&dir, seg, from, &mut buf).map(|_| buf)
            })
            .await?;
            match local {
                Ok(data) => {
                    self.remote_segment = None;
                    data
                }
                // Removed meanwhile (it was offloaded): fetch it.
                Err(WalStorageError::Io { error: source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && self.remote.is_some() && from < self.tl.backup_lsn() =>
                {
                    self.read_remote(from, len).await?
                }
                Err(e) => return Err(e.into()),
            }
        };
        let len = data.len();
        let msg = ReplicationMessage::XLogData(XLogData { wal_start: from, wal_end: to, send_time_us: pg_now_us(), data: Bytes::from(data) });
        self.send_copy_data(&msg).await?;
        METRICS.wal_bytes_sent.inc_by(len as u64);
        Ok(from + len as u64)
    }

    /// Up to `len` bytes from `from`, within its segment, from remote storage.
    async fn read_remote(&mut self, from: Lsn, len: usize) -> anyhow::Result<Vec<u8>> {
        let storage = self.remote.as_ref().context("no remote storage")?;
        if !self.remote_segment.as_ref().is_some_and(|s| s.holds(from)) {
            // Drop (and remove) the previous one before fetching the next.
            self.remote_segment = None;
            let segment = RemoteSegment::fetch(storage, &self.tl, from, self.id)
                .await
                .with_context(|| format!("WAL at {from} is neither on this safekeeper nor readable from remote storage"))?;
            self.remote_segment = Some(segment);
        }
        let segment = self.remote_segment.as_ref().expect("fetched above");
        Ok(segment.read(from, len).await?)
    }

    async fn send_keepalive(&mut self, wal_end: Lsn, reply_requested: bool) -> anyhow::Result<()> {
        let msg = ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive { wal_end, send_time_us: pg_now_us(), reply_requested });
        self.send_copy_data(&msg).await
    }

    async fn send_copy_data(&mut self, msg: &ReplicationMessage) -> anyhow::Result<()> {
        let mut payload = BytesMut::new();
        msg.encode(&mut payload);
        self.pgb.write_message(&BeMessage::CopyData(&payload))?;
        Ok(self.pgb.flush().await?)
    }

    /// Handle a message received while streaming; true when the copy ended.
    fn handle_copy_message(&mut self, msg: Option<FeMessage>, replica: &ReplicaGuard) -> anyhow::Result<bool> {
        match msg {
            None | Some(FeMessage::Terminate) => bail!("client closed the connection while streaming"),
            Some(FeMessage::CopyDone) => Ok(true),
            Some(FeMessage::CopyData(payload)) => {
                let feedback = ReplicationFeedback::parse(&payload).context("feedback from replica")?;
                self.apply_feedback(feedback, replica);
                Ok(false)
            }
            Some(FeMessage::CopyFail(reason)) => bail!("client failed the copy: {reason}"),
            Some(other) => bail!("unexpected message while streaming: {other:?}"),
        }
    }

    fn apply_feedback(&mut self, feedback: ReplicationFeedback, replica: &ReplicaGuard) {
        let now = Some(Instant::now());
        match feedback {
            ReplicationFeedback::StandbyStatusUpdate(s) => {
                replica.update(|r| {
                    (r.write_lsn, r.flush_lsn, r.apply_lsn, r.last_feedback) = (s.write_lsn, s.flush_lsn, s.apply_lsn, now);
                });
                self.pending_reply |= s.reply_requested;
            }
            ReplicationFeedback::HotStandbyFeedback(_) => replica.update(|r| r.last_feedback = now),
            ReplicationFeedback::StrataFeedback(f) => {
                replica.update(|r| {
                    r.kind = "pageserver".into();
                    (r.write_lsn, r.disk_consistent_lsn, r.remote_consistent_lsn) = (f.write_lsn, f.disk_consistent_lsn, f.remote_consistent_lsn);
                    r.timeline_size_bytes = f.timeline_size_bytes;
                    r.last_feedback = now;
                });
                self.tl.update_remote_consistent_lsn(f.remote_consistent_lsn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_forms() {
        let o = parse_options("-c tenant_id=ab -ctimeline_id=cd --other-thing=x junk");
        assert_eq!(o.get("tenant_id").map(String::as_str), Some("ab"));
        assert_eq!(o.get("timeline_id").map(String::as_str), Some("cd"));
        assert_eq!(o.get("other_thing").map(String::as_str), Some("x"));
        assert_eq!(o.len(), 3);
        assert!(parse_options("").is_empty());
        assert!(parse_options("-c").is_empty());
    }
}
