//! The PostgreSQL wire protocol (v3), both sides, with the physical
//! streaming-replication sub-protocol, for Strata's services.
//!
//! - [`messages`]: frontend message parsers and backend message writers.
//! - [`replication`]: XLogData, keepalives, status updates, hot-standby and
//!   Strata feedback carried in CopyData.
//! - [`server`]: [`server::PostgresBackend`] and the replication command
//!   parser.
//! - [`client`]: [`client::ReplicationClient`] and
//!   [`client::ReplicationStream`] for streaming WAL from a server.
//! - [`conninfo`]: libpq `key=value` and URI connection strings.
//! - [`pagestream`]: the binary GetPage@LSN sub-protocol of the page
//!   service (requests and responses in CopyData).
//!
//! Invariants: no input from a peer can make this crate panic; malformed
//! bytes are [`ProtocolError::Malformed`]. Messages are limited to
//! [`messages::MAX_MESSAGE_LEN`] bytes.
//!
//! Cancellation: every read loop keeps a persistent buffer and consumes
//! only complete messages, so the documented read methods can be dropped
//! (e.g. in `tokio::select!`) without losing data.

pub mod client;
mod command;
pub mod conninfo;
pub mod error;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod messages;
pub mod pagestream;
pub mod replication;
pub mod server;
mod wire;

pub use client::{IdentifySystem, ReplicationClient, ReplicationStream};
pub use conninfo::ConnConfig;
pub use error::ProtocolError;
pub use messages::{BeMessage, ColumnDesc, FeMessage, ReplicationMode, StartupMessage};
pub use replication::{
    pg_now_us, HotStandbyFeedback, PrimaryKeepalive, ReplicationFeedback, ReplicationMessage,
    StandbyStatusUpdate, StrataFeedback, XLogData,
};
pub use server::{PostgresBackend, ReplicationCommand, StartReplication};
