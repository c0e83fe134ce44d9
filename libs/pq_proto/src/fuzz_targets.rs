//! Entry points of the fuzz targets (`fuzz/`) and of their regression tests
//! (`tests/fuzz_regressions.rs`): each takes arbitrary bytes and must never
//! panic, overflow or loop for ever. Not an API for anything else. No
//! state, no I/O, no cancellation concerns.
use bytes::BytesMut;

use crate::command::ReplicationCommand;
use crate::messages::FeMessage;
use crate::replication::{ReplicationFeedback, ReplicationMessage};

/// The server side: a startup packet, then tagged frontend messages.
pub fn frontend_messages(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    match FeMessage::parse_startup(&mut buf) {
        Ok(Some(_)) => {}
        _ => return,
    }
    while let Ok(Some(msg)) = FeMessage::parse_with_limit(&mut buf, 1 << 20) {
        if let FeMessage::Query(sql) = &msg {
            let _ = ReplicationCommand::parse(sql);
        }
    }
}

/// The client side: backend messages as the replication client reads them.
pub fn backend_messages(data: &[u8]) {
    crate::client::fuzz_backend_messages(data);
}

/// The replication sub-protocol payloads (both directions) and the
/// replication commands.
pub fn replication(data: &[u8]) {
    let _ = ReplicationMessage::parse(data);
    let _ = ReplicationFeedback::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ReplicationCommand::parse(text);
    }
}
