//! The safekeeper: the durability point of Strata.
//!
//! Data flow: a stock PostgreSQL compute streams WAL to each safekeeper, which
//! connects to it as a synchronous physical standby ([`acceptor`]), writes
//! and fsyncs it ([`wal_storage`]) and only then reports it flushed, so the
//! compute's `synchronous_standby_names = 'ANY q (...)'` acknowledges a commit
//! once q safekeepers hold it. Safekeepers share their flush positions
//! through the broker ([`broker_sync`]) to agree on `commit_lsn`, and serve
//! WAL up to it to pageservers and any replication client ([`walsender`]).
//! A safekeeper that is behind catches up from a peer ([`recovery`]).
//! With remote storage, one safekeeper per timeline offloads whole WAL
//! segments there ([`wal_backup`]); WAL is then removed from local disks
//! once both offloaded and in the pageserver's remote storage, and the
//! walsender serves older WAL from remote storage.
//! Per-timeline state survives restarts in a control file ([`control_file`]);
//! the control plane drives timelines through the HTTP API ([`http`]).

pub mod acceptor;
pub mod broker_sync;
pub mod control_file;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod http;
pub mod metrics;
pub mod recovery;
pub mod timeline;
pub mod timelines;
pub mod wal_backup;
pub mod wal_storage;
pub mod walsender;

use std::path::PathBuf;

/// Configuration of one safekeeper process.
#[derive(Clone, Debug)]
pub struct SafekeeperConf {
    pub id: u64,
    pub data_dir: PathBuf,
    /// `host:port` this safekeeper's replication service is reachable at.
    pub advertise_pg: String,
    /// `host:port` of its HTTP API.
    pub advertise_http: String,
    /// Broker `host:port`; without one, only single-safekeeper timelines commit.
    pub broker_endpoint: Option<String>,
    /// Send a keepalive to idle replicas this often.
    pub keepalive_interval_ms: u64,
    /// A client must send its startup packet, and complete every message
    /// it begins, within this long; else its connection is closed.
    pub partial_message_timeout_ms: u64,
    /// Object storage WAL is offloaded to (the same as the pageservers'
    /// and every other safekeeper's of the cluster); `None`: WAL stays on
    /// local disks only.
    pub remote_storage: Option<remote_storage::GenericRemoteStorage>,
    /// Offload the last, incomplete segment of a timeline once its
    /// committed WAL has not moved for this long (zero: never).
    pub wal_partial_offload_after_idle: std::time::Duration,
    /// Look for offloaded WAL to delete this often.
    pub remote_wal_gc_interval: std::time::Duration,
    /// Keep offloaded WAL that nobody needs any more this long.
    pub remote_wal_retention: std::time::Duration,
    /// Password for connections to computes whose conninfo has none (the
    /// file is read at each connection; absent file: no password).
    pub compute_password_file: Option<PathBuf>,
    /// Public keys tokens are checked against on the HTTP API and the
    /// walsender (`None`: every caller is accepted).
    pub auth_keys: Option<std::sync::Arc<auth::KeySet>>,
    /// The token this safekeeper presents to peers (recovery: HTTP and
    /// walsender) and to the broker; read at every use.
    pub auth_token_file: Option<PathBuf>,
}

impl SafekeeperConf {
    /// The token to present to peers and the broker, if a token file is
    /// set (a blocking read of a small file, off the runtime's threads).
    pub async fn auth_token(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = self.auth_token_file.clone() else { return Ok(None) };
        Ok(Some(tokio::task::spawn_blocking(move || auth::read_token_file(&path)).await??))
    }

    /// Name under which this safekeeper connects to computes
    /// (`application_name`, used in `synchronous_standby_names`) and the
    /// name of its replication slot there.
    pub fn standby_name(&self) -> String {
        format!("sk_{}", self.id)
    }
}
