//! The broker: a small publish/subscribe service through which the
//! safekeepers of a timeline learn each other's flush positions (to compute
//! `commit_lsn`) and pageservers learn which safekeepers hold a timeline.
//!
//! State is in memory only: safekeepers republish periodically, so a restarted
//! broker is whole again after one publish interval. Subscribers long-poll a
//! timeline with the last version they saw and are answered as soon as any
//! safekeeper publishes something newer (or at their timeout).

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

/// What one safekeeper says about one timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafekeeperTimelineInfo {
    pub safekeeper_id: u64,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    /// Term of the compute this safekeeper follows.
    pub term: u64,
    /// WAL durable on this safekeeper's disk.
    pub flush_lsn: Lsn,
    /// WAL durable on a quorum, as far as this safekeeper knows.
    pub commit_lsn: Lsn,
    /// WAL the pageservers have made durable in remote storage.
    pub remote_consistent_lsn: Lsn,
    /// Replication address (`host:port`) pageservers stream from.
    pub pg_addr: String,
    /// HTTP management address (`host:port`).
    pub http_addr: String,
    /// WAL offloaded to remote storage: every whole segment of the timeline
    /// below it is there. `None` from a safekeeper without remote storage
    /// (or one older than WAL offload); such a safekeeper never offloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_lsn: Option<Lsn>,
}

/// A timeline's view: every safekeeper that has published for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineView {
    /// Grows with every publish for this timeline.
    pub version: u64,
    pub safekeepers: Vec<PublishedInfo>,
}

/// One safekeeper's latest publish and how old it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedInfo {
    pub info: SafekeeperTimelineInfo,
    pub age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infos_without_backup_lsn_still_parse() {
        let (t, tl) = (TenantId::generate(), TimelineId::generate());
        let old = serde_json::json!({
            "safekeeper_id": 1, "tenant_id": t, "timeline_id": tl, "term": 2, "flush_lsn": "0/100",
            "commit_lsn": "0/80", "remote_consistent_lsn": "0/0", "pg_addr": "a:1", "http_addr": "a:2",
        });
        let info: SafekeeperTimelineInfo = serde_json::from_value(old).unwrap();
        assert_eq!(info.backup_lsn, None);
        let new = SafekeeperTimelineInfo { backup_lsn: Some(Lsn(0x1000000)), ..info };
        let back: SafekeeperTimelineInfo = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back, new);
    }
}
