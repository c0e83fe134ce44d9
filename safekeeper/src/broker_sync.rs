//! Learning `commit_lsn` from the timeline's peers through the broker, and
//! publishing this safekeeper's own status there.
//!
//! commit_lsn is the `quorum`-th highest flush LSN among the timeline's peers
//! that are on the current term (this safekeeper's own flush LSN included,
//! read locally, never from the broker). With a single peer it is simply the
//! local flush LSN and no broker is needed.
//!
//! The fresh part of every view is also kept in the timeline
//! ([`Timeline::set_peer_view`]): the acceptor decides on peer recovery and
//! fencing from it, the WAL offload on who offloads.
//!
//! Positions that only say what is durable elsewhere are adopted from every
//! peer's last publish (fresh or not), taking the maximum: the pageservers'
//! `remote_consistent_lsn` (only the safekeeper a pageserver streams from
//! hears it directly) and, with remote storage, `backup_lsn` (only the
//! offloading safekeeper uploads). Both only grow, and both govern WAL
//! removal, which runs here every [`WAL_REMOVAL_INTERVAL`].
//!
//! Cancellation: the task ends when the timeline's cancellation token fires;
//! every await in it is a broker request or a timer, safe to drop.

use std::sync::Arc;
use std::time::Duration;

use broker::client::BrokerClient;
use broker::{SafekeeperTimelineInfo, TimelineView};
use utils::lsn::Lsn;

use crate::metrics::METRICS;
use crate::timeline::Timeline;
use crate::SafekeeperConf;

/// Publish at least this often even when nothing changes (liveness).
const PUBLISH_INTERVAL: Duration = Duration::from_millis(1000);
/// And at most this often under load. Each publish wakes every peer's
/// subscription, so the broker traffic of a timeline grows with the
/// square of its safekeepers times this rate; at one publish per commit
/// (the gap at 5 ms) three safekeepers spent more CPU on it than the
/// compute on its commits. What waits on a publish is the peers'
/// commit_lsn, i.e. how soon the pageservers get the WAL — never the
/// compute's commit, which its synchronous standbys acknowledge directly.
const MIN_PUBLISH_GAP: Duration = Duration::from_millis(50);
/// Long-poll timeout of a subscription request.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);
/// Look for removable WAL this often.
const WAL_REMOVAL_INTERVAL: Duration = Duration::from_secs(10);
/// Ignore peers that have not published for this long.
const PEER_STALE_MS: u64 = 10_000;

/// The `quorum`-th highest of `flushes` (None when fewer are known).
pub fn quorum_lsn(mut flushes: Vec<Lsn>, quorum: usize) -> Option<Lsn> {
    if quorum == 0 || flushes.len() < quorum {
        return None;
    }
    flushes.sort_unstable_by(|a, b| b.cmp(a));
    Some(flushes[quorum - 1])
}

/// commit_lsn candidate from a broker view plus our own flush position.
fn commit_from_view(tl: &Timeline, view: &TimelineView) -> Option<Lsn> {
    let state = tl.persistent();
    let mut flushes = vec![tl.flush_lsn()];
    for published in &view.safekeepers {
        let info = &published.info;
        let is_peer = state.peers.contains(&info.safekeeper_id) && info.safekeeper_id != tl.safekeeper_id;
        if is_peer && info.term == state.term && published.age_ms < PEER_STALE_MS {
            flushes.push(info.flush_lsn);
        }
    }
    quorum_lsn(flushes, state.quorum)
}

/// The lowest flush LSN any other peer last published, however long ago;
/// 0 while some peer has never been seen.
fn peer_horizon(tl: &Timeline, view: &TimelineView) -> Lsn {
    peer_horizon_of(tl.safekeeper_id, &tl.persistent().peers, view)
}

fn peer_horizon_of(own_id: u64, peers: &[u64], view: &TimelineView) -> Lsn {
    let mut horizon = Lsn(u64::MAX);
    for id in peers.iter().filter(|id| **id != own_id) {
        match view.safekeepers.iter().find(|p| p.info.safekeeper_id == *id) {
            Some(p) => horizon = horizon.min(p.info.flush_lsn),
            None => return Lsn(0),
        }
    }
    horizon
}

/// Infos of the other peers of the timeline that published recently.
fn fresh_peers(tl: &Timeline, view: &TimelineView) -> Vec<SafekeeperTimelineInfo> {
    let peers = tl.persistent().peers;
    view.safekeepers
        .iter()
        .filter(|p| p.age_ms < PEER_STALE_MS && p.info.safekeeper_id != tl.safekeeper_id && peers.contains(&p.info.safekeeper_id))
        .map(|p| p.info.clone())
        .collect()
}

fn own_info(tl: &Timeline, conf: &SafekeeperConf) -> SafekeeperTimelineInfo {
    let state = tl.persistent();
    SafekeeperTimelineInfo {
        safekeeper_id: tl.safekeeper_id,
        tenant_id: tl.tenant_id,
        timeline_id: tl.timeline_id,
        term: state.term,
        flush_lsn: tl.flush_lsn(),
        commit_lsn: tl.commit_lsn(),
        remote_consistent_lsn: state.remote_consistent_lsn,
        pg_addr: conf.advertise_pg.clone(),
        http_addr: conf.advertise_http.clone(),
        backup_lsn: conf.remote_storage.is_some().then_some(state.backup_lsn),
    }
}

/// The highest remote-consistent and backup LSNs other peers published.
fn peers_durable_positions(tl: &Timeline, view: &TimelineView) -> (Lsn, Option<Lsn>) {
    let peers = tl.persistent().peers;
    let published = view.safekeepers.iter().map(|p| &p.info).filter(|i| i.safekeeper_id != tl.safekeeper_id && peers.contains(&i.safekeeper_id));
    let (mut remote, mut backup) = (Lsn(0), None::<Lsn>);
    for info in published {
        remote = remote.max(info.remote_consistent_lsn);
        backup = backup.max(info.backup_lsn);
    }
    (remote, backup)
}

/// Run commit_lsn tracking for `tl` until it is cancelled.
pub async fn run(tl: Arc<Timeline>, conf: Arc<SafekeeperConf>) {
    let Some(endpoint) = conf.broker_endpoint.clone() else {
        return local_only(tl, conf).await;
    };
    let client = BrokerClient::new(&endpoint).with_token_file(conf.auth_token_file.clone());
    let cancel = tl.cancel.clone();
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = publish_loop(tl.clone(), conf.clone(), client.clone()) => {}
        _ = subscribe_loop(tl.clone(), conf.clone(), client) => {}
    }
}

/// Without a broker only single-safekeeper timelines can commit.
async fn local_only(tl: Arc<Timeline>, conf: Arc<SafekeeperConf>) {
    let mut flush = tl.subscribe_flush();
    let mut cleanup = tokio::time::interval(WAL_REMOVAL_INTERVAL);
    loop {
        if tl.persistent().quorum <= 1 {
            tl.advance_commit_lsn(*flush.borrow_and_update());
        }
        tokio::select! {
            _ = tl.cancel.cancelled() => return,
            changed = flush.changed() => if changed.is_err() { return },
            _ = cleanup.tick() => remove_old_wal(&tl, &conf).await,
        }
    }
}

async fn publish_loop(tl: Arc<Timeline>, conf: Arc<SafekeeperConf>, client: BrokerClient) {
    let mut flush = tl.subscribe_flush();
    let mut commit = tl.subscribe_commit();
    let mut last_cleanup = std::time::Instant::now();
    loop {
        if last_cleanup.elapsed() >= WAL_REMOVAL_INTERVAL {
            last_cleanup = std::time::Instant::now();
            remove_old_wal(&tl, &conf).await;
        }
        if tl.persistent().quorum <= 1 {
            tl.advance_commit_lsn(tl.flush_lsn());
        }
        if let Err(e) = client.publish(&own_info(&tl, &conf)).await {
            METRICS.broker_publish_errors.inc();
            tracing::warn!("{e}");
        }
        tokio::time::sleep(MIN_PUBLISH_GAP).await;
        let _ = tokio::time::timeout(PUBLISH_INTERVAL, async {
            tokio::select! {
                _ = flush.changed() => {}
                _ = commit.changed() => {}
            }
        })
        .await;
    }
}

async fn remove_old_wal(tl: &Timeline, conf: &SafekeeperConf) {
    let replicas = crate::walsender::replicas_of(tl.tenant_id, tl.timeline_id);
    let replica_min = replicas.iter().map(|r| r.flush_lsn.max(r.write_lsn)).min();
    if let Err(e) = tl.remove_old_wal(replica_min, conf.remote_storage.is_some()).await {
        tracing::warn!("WAL removal: {e}");
    }
}

async fn subscribe_loop(tl: Arc<Timeline>, conf: Arc<SafekeeperConf>, client: BrokerClient) {
    let mut version = None;
    loop {
        match client.poll(tl.tenant_id, tl.timeline_id, version, POLL_TIMEOUT).await {
            Ok(view) => {
                version = Some(view.version);
                let (remote, backup) = peers_durable_positions(&tl, &view);
                tl.update_remote_consistent_lsn(remote);
                if let (Some(backup), true) = (backup, conf.remote_storage.is_some()) {
                    if let Err(e) = tl.advance_backup_lsn(backup, false).await {
                        tracing::warn!("adopt a peer's backup_lsn {backup}: {e}");
                    }
                }
                tl.set_peer_view(fresh_peers(&tl, &view));
                tl.set_peer_horizon(peer_horizon(&tl, &view));
                if let Some(candidate) = commit_from_view(&tl, &view) {
                    tl.advance_commit_lsn(candidate);
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(published: &[(u64, u64, u64)]) -> TimelineView {
        let safekeepers: Vec<serde_json::Value> = published
            .iter()
            .map(|&(id, flush, age_ms)| {
                serde_json::json!({ "info": {
                    "safekeeper_id": id, "tenant_id": "00000000000000000000000000000001",
                    "timeline_id": "00000000000000000000000000000002", "term": 1,
                    "flush_lsn": Lsn(flush), "commit_lsn": Lsn(flush), "remote_consistent_lsn": Lsn(0),
                    "pg_addr": "", "http_addr": "" }, "age_ms": age_ms })
            })
            .collect();
        serde_json::from_value(serde_json::json!({ "version": 1, "safekeepers": safekeepers })).unwrap()
    }

    #[test]
    fn peer_horizon_waits_for_every_peer_and_keeps_stale_ones() {
        let peers = [1, 2, 3];
        assert_eq!(peer_horizon_of(1, &peers, &view(&[(1, 900, 0), (2, 500, 0)])), Lsn(0), "peer 3 never seen");
        // A peer that stopped publishing long ago still holds the horizon.
        let v = view(&[(1, 900, 0), (2, 500, 0), (3, 300, 3_600_000)]);
        assert_eq!(peer_horizon_of(1, &peers, &v), Lsn(300));
        assert_eq!(peer_horizon_of(3, &peers, &v), Lsn(500), "its own position does not count");
        assert_eq!(peer_horizon_of(1, &[1], &view(&[(1, 900, 0)])), Lsn(u64::MAX), "no peers: no limit");
    }

    #[test]
    fn quorum_lsn_is_the_qth_highest() {
        let l = |v: &[u64]| v.iter().map(|&x| Lsn(x)).collect::<Vec<_>>();
        assert_eq!(quorum_lsn(l(&[10]), 1), Some(Lsn(10)));
        assert_eq!(quorum_lsn(l(&[10, 30, 20]), 2), Some(Lsn(20)));
        assert_eq!(quorum_lsn(l(&[10, 30, 20]), 3), Some(Lsn(10)));
        assert_eq!(quorum_lsn(l(&[10, 30, 20]), 1), Some(Lsn(30)));
        assert_eq!(quorum_lsn(l(&[30]), 2), None);
        assert_eq!(quorum_lsn(l(&[]), 0), None);
    }
}
