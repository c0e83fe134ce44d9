//! WAL acquisition: following the timeline's compute as a synchronous
//! physical standby.
//!
//! Per timeline, one task connects to the compute named by the control plane
//! (`application_name` = `sk_<id>`, physical slot `sk_<id>` created if
//! missing so the compute keeps WAL while this safekeeper is away), starts
//! replication at the end of the last complete record it holds, writes and
//! fsyncs what arrives, and only then reports it written/flushed/applied.
//! A stream decoder runs over the received WAL: it rejects damaged WAL and
//! tells where records end, which is where a later connection resumes.
//!
//! Before each connection the acceptor checks whether it must first catch
//! up from a peer ([`recovery`]); it never follows a compute whose start LSN
//! is beyond its own WAL, nor one of an older term than a peer shows.
//!
//! Authentication: the conninfo's password, else the one in
//! `--compute-password-file` (the cluster's replication role); passwords
//! never appear in logs, errors or the acceptor status (see
//! [`pq_proto::conninfo::redact_password`]).
//!
//! Reconnects with exponential backoff when the compute goes away, and at
//! once when the control plane repeats the compute's spec (the compute is
//! up and its replication role exists). A new
//! compute (higher term) cancels the current connection at once; the term
//! is re-checked under the storage lock on every write, so a cancelled
//! connection can never append after the new term's cut.
//!
//! Each connection to the compute runs on a thread of its own, with a
//! single-threaded runtime that holds nothing else ([`FollowThread`]): its
//! write and fsync run in line ([`StorageIo::InLine`]), so a commit's WAL is
//! received, made durable and acknowledged by one thread, as
//! `pg_receivewal` does, without hand-offs between runtime workers and the
//! blocking pool (which cost three safekeepers on two cores a third of
//! their commit rate).
//!
//! Cancellation: a connection is stopped by cancelling its thread's token
//! and waiting for the thread to end ([`FollowThread::stop`]), so the next
//! connection never overlaps the last one's slot. The connection's only
//! side effects are in `Timeline::append_and_flush`, which a cancellation
//! never interrupts halfway.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use futures::FutureExt;
use postgres_ffi::WalStreamDecoder;
use pq_proto::client::{ReplicationClient, ReplicationStream};
use pq_proto::conninfo::{redact_password, ConnConfig};
use pq_proto::replication::{pg_now_us, ReplicationMessage, StandbyStatusUpdate};
use utils::lsn::Lsn;

use crate::control_file::ComputeSpec;
use crate::metrics::METRICS;
use crate::recovery::{self, RecoveryTarget};
use crate::timeline::{StorageIo, Timeline};
use crate::SafekeeperConf;

/// Write and fsync at most this much WAL per batch.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why the acceptor does not follow its compute for now.
#[derive(Debug, thiserror::Error)]
#[error("WAL ends at {wal_end}, the compute starts at {start_lsn}, or a peer holds a newer term: waiting for peer recovery")]
struct WaitingForRecovery {
    wal_end: Lsn,
    start_lsn: Lsn,
}

/// How often a safekeeper waiting for its first broker view says so.
const FIRST_VIEW_WARN_INTERVAL: Duration = Duration::from_secs(3);

/// Acquire WAL for the timeline until it is cancelled: from peers when
/// behind (see [`recovery`]), otherwise from the compute.
pub async fn run(tl: Arc<Timeline>, conf: Arc<SafekeeperConf>) {
    let mut compute_rx = tl.subscribe_compute();
    let mut recovery_rx = tl.subscribe_recovery();
    let mut backoff = MIN_BACKOFF;
    wait_first_view(&tl, &conf).await;
    loop {
        if let Some(target) = next_recovery(&tl) {
            tokio::select! {
                _ = run_recovery(&tl, &conf, &target) => {}
                _ = tl.cancel.cancelled() => return,
            }
        }
        let spec = compute_rx.borrow_and_update().clone();
        let result = match spec {
            None => Ok(()),
            Some(spec) if !can_follow(&tl, &spec) => Err(anyhow::Error::new(WaitingForRecovery { wal_end: tl.last_record_lsn(), start_lsn: spec.start_lsn })),
            Some(spec) => {
                let mut thread = match FollowThread::spawn(&tl, &conf, spec.clone()) {
                    Ok(thread) => thread,
                    Err(e) => {
                        tracing::error!("cannot start the compute connection's thread: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(MAX_BACKOFF) => continue,
                            _ = tl.cancel.cancelled() => return,
                        }
                    }
                };
                // None: stop this connection and look again.
                let ended = tokio::select! {
                    r = thread.result() => Some(r),
                    _ = compute_rx.changed() => None,
                    _ = recovery_rx.wait_for(Option::is_some) => None,
                    _ = newer_term_seen(&tl, spec.term) => None,
                    _ = tl.cancel.cancelled() => None,
                };
                match ended {
                    Some(result) => result,
                    None => {
                        thread.stop().await;
                        if tl.cancel.is_cancelled() {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let connected = tl.acceptor_status().connected;
        tl.set_acceptor_status(|s| s.connected = false);
        match result {
            Ok(()) if compute_rx.borrow().is_none() => backoff = Duration::from_secs(1),
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => {
                if !e.is::<WaitingForRecovery>() {
                    METRICS.compute_connection_errors.inc();
                }
                tracing::warn!("compute connection: {e:#}");
                tl.set_acceptor_status(|s| s.last_error = Some(format!("{e:#}")));
                backoff = if connected { MIN_BACKOFF } else { (backoff * 2).min(MAX_BACKOFF) };
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tl.connect_now() => backoff = MIN_BACKOFF,
            _ = compute_rx.changed() => {}
            _ = recovery_rx.wait_for(Option::is_some) => {}
            _ = tl.cancel.cancelled() => return,
        }
        if compute_rx.borrow().is_none() && tl.persistent().peers.len() <= 1 {
            // Nothing to follow yet: wait for the control plane.
            tokio::select! {
                _ = compute_rx.changed() => {}
                _ = recovery_rx.wait_for(Option::is_some) => {}
                _ = tl.cancel.cancelled() => return,
            }
        }
    }
}

/// A safekeeper of a multi-safekeeper timeline follows no compute before it
/// has seen its peers once: one of them may hold a newer term, whose compute
/// may even listen at the same address as the old one. Safety over
/// availability: without a broker it waits (the other safekeepers still
/// serve the compute).
async fn wait_first_view(tl: &Timeline, conf: &SafekeeperConf) {
    if tl.persistent().peers.len() <= 1 || conf.broker_endpoint.is_none() {
        return;
    }
    let mut view = tl.subscribe_peer_view();
    loop {
        tokio::select! {
            got = tokio::time::timeout(FIRST_VIEW_WARN_INTERVAL, view.wait_for(|v| v.is_some())) => match got {
                Ok(_) => return,
                Err(_) => tracing::warn!("no broker view yet: not following the compute until the peers' terms are known"),
            },
            _ = tl.cancel.cancelled() => return,
        }
    }
}

/// A recovery the control plane asked for, else one the broker view calls for.
fn next_recovery(tl: &Timeline) -> Option<RecoveryTarget> {
    if let Some(requested) = tl.take_recovery_request() {
        return Some(requested);
    }
    let view = tl.subscribe_peer_view().borrow().clone()?;
    recovery::auto_target(tl, &view)
}

async fn run_recovery(tl: &Timeline, conf: &SafekeeperConf, target: &RecoveryTarget) {
    if let Err(e) = recovery::recover(tl, conf, target).await {
        METRICS.recovery_errors.inc();
        tracing::warn!(peer = target.peer_id, "peer recovery: {e:#}");
        tl.set_acceptor_status(|s| s.last_error = Some(format!("peer recovery from safekeeper {}: {e:#}", target.peer_id)));
    }
}

/// Resolves once the broker shows a peer on a term newer than `term`: this
/// safekeeper is fenced from its compute and must take the peer's history.
async fn newer_term_seen(tl: &Timeline, term: u64) {
    let mut view = tl.subscribe_peer_view();
    let _ = view.wait_for(|v| v.as_ref().is_some_and(|v| v.iter().any(|i| i.term > term))).await;
    if view.has_changed().is_err() {
        std::future::pending::<()>().await;
    }
}

/// The compute's WAL continues ours, and no peer shows a newer term.
fn can_follow(tl: &Timeline, spec: &ComputeSpec) -> bool {
    let fenced = tl.subscribe_peer_view().borrow().as_ref().is_some_and(|v| v.iter().any(|i| i.term > spec.term));
    spec.term == tl.term() && tl.last_record_lsn() >= spec.start_lsn && !fenced
}

/// How to connect to the compute: its conninfo as this safekeeper's
/// standby, with the password from `--compute-password-file` when the
/// conninfo has none.
async fn compute_config(conf: &SafekeeperConf, spec: &ComputeSpec) -> anyhow::Result<ConnConfig> {
    let mut config: ConnConfig = spec.conninfo.parse()?;
    config.application_name = Some(conf.standby_name());
    if let (None, Some(file)) = (&config.password, &conf.compute_password_file) {
        match tokio::fs::read_to_string(file).await {
            Ok(text) => config.password = Some(text.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("read {}", file.display())),
        }
    }
    Ok(config)
}

/// One connection to the compute ([`follow`]) on a thread of its own.
struct FollowThread {
    cancel: tokio_util::sync::CancellationToken,
    done: tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
}

impl FollowThread {
    fn spawn(tl: &Arc<Timeline>, conf: &Arc<SafekeeperConf>, spec: ComputeSpec) -> std::io::Result<FollowThread> {
        let cancel = tl.cancel.child_token();
        let (tx, done) = tokio::sync::oneshot::channel();
        let (tl, conf, token) = (tl.clone(), conf.clone(), cancel.clone());
        let span = tracing::Span::current();
        std::thread::Builder::new().name("sk-wal-receive".into()).spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(tracing::Instrument::instrument(
                    async {
                        tokio::select! {
                            r = follow(&tl, &conf, &spec) => r,
                            _ = token.cancelled() => Ok(()),
                        }
                    },
                    span,
                ))
            });
            let _ = tx.send(result);
        })?;
        Ok(FollowThread { cancel, done })
    }

    /// How the connection ended. Cancellation-safe: may be polled again.
    async fn result(&mut self) -> anyhow::Result<()> {
        (&mut self.done).await.unwrap_or_else(|_| Err(anyhow::anyhow!("the compute connection's thread died")))
    }

    /// End the connection and wait until its thread is done with it.
    async fn stop(mut self) {
        self.cancel.cancel();
        let _ = self.result().await;
    }
}

impl Drop for FollowThread {
    /// A dropped handle (the acceptor itself cancelled) still ends the
    /// connection; only the wait for it is lost.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One connection to the compute, streaming until it ends or fails.
async fn follow(tl: &Timeline, conf: &SafekeeperConf, spec: &ComputeSpec) -> anyhow::Result<()> {
    let name = conf.standby_name();
    let shown = redact_password(&spec.conninfo);
    let config = compute_config(conf, spec).await.with_context(|| format!("compute {shown}"))?;
    let mut client = ReplicationClient::connect_config(&config)
        .await
        .with_context(|| format!("connect to compute {shown}"))?;
    METRICS.compute_connections.inc();
    let system = client.identify_system().await?;
    tl.check_system_id(system.system_id).await?;
    client.create_physical_slot_if_missing(&name).await?;
    let start = tl.resume_position(spec.term).await?;
    let stream = client.start_replication(Some(&name), start, 1).await?;
    tl.set_acceptor_status(|s| {
        s.connected = true;
        s.conninfo = Some(shown.clone());
        s.last_error = None;
    });
    tracing::info!(%start, term = spec.term, "streaming from compute");
    Receiver { tl, term: spec.term, stream, decoder: WalStreamDecoder::new(start, tl.seg_size_bytes()), pos: start, record_end: start }
        .run()
        .await
}

struct Receiver<'a> {
    tl: &'a Timeline,
    term: u64,
    stream: ReplicationStream,
    decoder: WalStreamDecoder,
    /// End of WAL received so far.
    pos: Lsn,
    /// End of the last complete record received.
    record_end: Lsn,
}

impl Receiver<'_> {
    async fn run(mut self) -> anyhow::Result<()> {
        loop {
            let Some(first) = self.stream.next().await? else { return Ok(()) };
            let mut batch = BytesMut::new();
            let batch_start = self.pos;
            let mut reply = self.take(first, &mut batch)?;
            while batch.len() < MAX_BATCH_BYTES {
                match self.stream.next().now_or_never() {
                    Some(Ok(Some(msg))) => reply |= self.take(msg, &mut batch)?,
                    Some(Ok(None)) | None => break,
                    Some(Err(e)) => return Err(e.into()),
                }
            }
            if !batch.is_empty() {
                let flush = self.tl.append_and_flush(self.term, batch_start, batch.freeze(), self.record_end, StorageIo::InLine).await?;
                self.report(flush).await?;
            } else if reply {
                self.report(self.tl.flush_lsn()).await?;
            }
        }
    }

    /// Add a message to the batch; returns whether a reply was requested.
    fn take(&mut self, msg: ReplicationMessage, batch: &mut BytesMut) -> anyhow::Result<bool> {
        match msg {
            ReplicationMessage::XLogData(x) => {
                if x.wal_start != self.pos {
                    bail!("compute sent WAL at {}, expected {}", x.wal_start, self.pos);
                }
                self.decoder.feed_bytes(&x.data);
                while let Some(record) = self.decoder.poll_decode().context("WAL from compute")? {
                    self.record_end = record.end_lsn;
                }
                self.pos = x.end_lsn();
                batch.extend_from_slice(&x.data);
                Ok(false)
            }
            ReplicationMessage::PrimaryKeepalive(k) => Ok(k.reply_requested),
        }
    }

    async fn report(&mut self, flush: Lsn) -> anyhow::Result<()> {
        let update = StandbyStatusUpdate {
            write_lsn: flush,
            flush_lsn: flush,
            apply_lsn: flush,
            send_time_us: pg_now_us(),
            reply_requested: false,
        };
        Ok(self.stream.send(update).await?)
    }
}
