//! Peer recovery: a safekeeper that is behind streams the WAL it misses from
//! a peer's walsender instead of from the compute.
//!
//! When: the control plane asks (`POST .../recover`, during an election), or
//! the acceptor finds, before connecting to its compute, that the broker
//! shows a peer of a newer term (this safekeeper is fenced and must take the
//! peer's history) or of the same term but ahead by more than
//! [`AUTO_RECOVERY_MIN_BYTES`], or that its WAL ends before the compute's
//! start LSN (the compute does not have that WAL).
//!
//! How: for a newer term, fetch the donor's term history over HTTP and
//! [`Timeline::adopt`] it (WAL past the common prefix is cut first); then
//! `START_REPLICATION` on the donor with `-c strata_recovery=on`, which makes
//! its walsender serve up to its flush LSN (not only commit_lsn), from our
//! last record boundary (WAL the donor no longer holds on disk comes from
//! remote storage through its walsender, once offloaded). Received WAL is
//! decoded (damaged WAL is refused), written and fsynced through
//! [`Timeline::append_and_flush`], exactly like WAL from the compute. Recovery ends at the target LSN, at the end of the
//! donor's WAL, or on error; the acceptor then follows the compute again.
//!
//! Invariants: recovery runs inside the acceptor task, so at most one writer
//! appends to a timeline; it never reports anything to a compute.
//!
//! Cancellation: the recovery future may be dropped at any await; its only
//! side effects go through `append_and_flush`/`adopt`, which complete on the
//! blocking pool.

use std::time::Duration;

use anyhow::{bail, Context};
use broker::SafekeeperTimelineInfo;
use bytes::BytesMut;
use futures::FutureExt;
use postgres_ffi::WalStreamDecoder;
use pq_proto::client::ReplicationClient;
use pq_proto::replication::ReplicationMessage;
use pq_proto::ConnConfig;
use serde::{Deserialize, Serialize};
use utils::lsn::Lsn;

use crate::control_file::{ComputeSpec, TermHistory};
use crate::metrics::METRICS;
use crate::timeline::{StorageIo, Timeline};
use crate::SafekeeperConf;

/// A same-term peer this far ahead is worth recovering from before the compute.
pub const AUTO_RECOVERY_MIN_BYTES: u64 = 64 * 1024;
/// Write at most this much per batch.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// A donor sending nothing for this long ends the recovery. Long enough
/// for a donor to download an offloaded segment it serves from remote
/// storage (see `wal_backup`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to recover from and up to where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryTarget {
    pub peer_id: u64,
    /// `host:port` of the donor's replication service.
    pub pg_addr: String,
    /// `host:port` of the donor's HTTP API.
    pub http_addr: String,
    /// Stop once flushed up to here (None: the donor's flush LSN at start).
    #[serde(default)]
    pub up_to: Option<Lsn>,
}

impl RecoveryTarget {
    fn from_info(info: &SafekeeperTimelineInfo) -> RecoveryTarget {
        RecoveryTarget { peer_id: info.safekeeper_id, pg_addr: info.pg_addr.clone(), http_addr: info.http_addr.clone(), up_to: Some(info.flush_lsn) }
    }
}

/// The peer to recover from now, judging by the broker view, if any.
pub fn auto_target(tl: &Timeline, view: &[SafekeeperTimelineInfo]) -> Option<RecoveryTarget> {
    let (term, flush) = (tl.term(), tl.flush_lsn());
    let behind_start = tl.persistent().compute.is_some_and(|c| tl.last_record_lsn() < c.start_lsn);
    let best = view.iter().filter(|i| i.term >= term).max_by_key(|i| (i.term, i.flush_lsn))?;
    let ahead = best.flush_lsn > flush + AUTO_RECOVERY_MIN_BYTES || (behind_start && best.flush_lsn > flush);
    (best.term > term || ahead).then(|| RecoveryTarget::from_info(best))
}

#[derive(Deserialize)]
struct DonorStatus {
    term: u64,
    term_history: TermHistory,
    compute: Option<ComputeSpec>,
    flush_lsn: Lsn,
}

async fn donor_status(tl: &Timeline, conf: &SafekeeperConf, target: &RecoveryTarget) -> anyhow::Result<DonorStatus> {
    let url = format!("http://{}/v1/tenant/{}/timeline/{}", target.http_addr, tl.tenant_id, tl.timeline_id);
    let mut request = reqwest::Client::new().get(&url).timeout(Duration::from_secs(10));
    if let Some(token) = conf.auth_token().await? {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    Ok(resp.json().await?)
}

/// Recover from `target`; returns the flush LSN reached.
pub async fn recover(tl: &Timeline, sk_conf: &SafekeeperConf, target: &RecoveryTarget) -> anyhow::Result<Lsn> {
    METRICS.recoveries.inc();
    let donor = donor_status(tl, sk_conf, target).await?;
    if donor.term < tl.term() {
        bail!("donor safekeeper {} is on term {}, older than ours {}", target.peer_id, donor.term, tl.term());
    }
    let ours = tl.persistent().term_history;
    if donor.term > tl.term() || ours.common_prefix_end(&donor.term_history, tl.last_record_lsn()) < tl.last_record_lsn() {
        tl.adopt(donor.term, donor.term_history, donor.compute).await?;
    }
    let up_to = target.up_to.unwrap_or(donor.flush_lsn).min(donor.flush_lsn);
    let start = tl.resume_position(tl.term()).await?;
    if start >= up_to {
        return Ok(tl.flush_lsn());
    }
    tracing::info!(peer = target.peer_id, %start, %up_to, "recovering WAL from peer");
    stream_from(tl, sk_conf, target, start, up_to).await
}

async fn stream_from(tl: &Timeline, sk_conf: &SafekeeperConf, target: &RecoveryTarget, start: Lsn, up_to: Lsn) -> anyhow::Result<Lsn> {
    let mut conf: ConnConfig = format!("postgresql://safekeeper@{}/postgres", target.pg_addr).parse()?;
    conf.options = Some(format!("-c tenant_id={} -c timeline_id={} -c strata_recovery=on", tl.tenant_id, tl.timeline_id));
    conf.application_name = Some(format!("sk_{}_recovery", sk_conf.id));
    conf.password = sk_conf.auth_token().await?;
    let mut client = ReplicationClient::connect_config(&conf).await.with_context(|| format!("connect to peer {}", target.pg_addr))?;
    client.identify_system().await?;
    let mut stream = client.start_replication(None, start, 1).await?;
    let term = tl.term();
    let mut decoder = WalStreamDecoder::new(start, tl.seg_size_bytes());
    let (mut pos, mut record_end) = (start, start);
    let mut last_data = std::time::Instant::now();
    while pos < up_to && last_data.elapsed() < IDLE_TIMEOUT {
        let first = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            Err(_) => break,
            Ok(msg) => msg?,
        };
        let Some(first) = first else { break };
        let mut batch = BytesMut::new();
        let batch_start = pos;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            if let ReplicationMessage::XLogData(x) = msg {
                if x.wal_start != pos {
                    bail!("peer sent WAL at {}, expected {pos}", x.wal_start);
                }
                decoder.feed_bytes(&x.data);
                while let Some(rec) = decoder.poll_decode().context("WAL from peer")? {
                    record_end = rec.end_lsn;
                }
                pos = x.end_lsn();
                batch.extend_from_slice(&x.data);
            }
            if batch.len() < MAX_BATCH_BYTES {
                next = stream.next().now_or_never().transpose()?.flatten();
            }
        }
        if !batch.is_empty() {
            last_data = std::time::Instant::now();
            METRICS.recovery_bytes.inc_by(batch.len() as u64);
            tl.append_and_flush(term, batch_start, batch.freeze(), record_end, StorageIo::BlockingPool).await?;
        }
    }
    tracing::info!(peer = target.peer_id, flush = %tl.flush_lsn(), "peer recovery done");
    Ok(tl.flush_lsn())
}
