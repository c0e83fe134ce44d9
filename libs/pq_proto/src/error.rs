//! The one error type of this crate.
//!
//! Owns [`ProtocolError`] and the small constructors the parsers use.
//!
//! Invariants: every failure to understand bytes that came from a peer is a
//! [`ProtocolError::Malformed`] (never a panic); an `ErrorResponse` sent by a
//! server is surfaced as [`ProtocolError::ServerError`] with its SQLSTATE.
//!
//! Cancellation: plain data, nothing to cancel.

use std::io;

/// Errors of the wire protocol, on either side of a connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// The peer sent bytes that do not form a valid message.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },

    /// A well-formed message arrived where the protocol does not allow it.
    #[error("unexpected message: {0}")]
    UnexpectedMessage(String),

    /// The server answered with an `ErrorResponse`.
    #[error("server error {code}: {message}")]
    ServerError {
        /// SQLSTATE, e.g. `42710`.
        code: String,
        message: String,
    },

    /// Authentication failed or asked for an unsupported method.
    #[error("authentication: {0}")]
    Auth(String),

    /// A connection string could not be understood.
    #[error("invalid connection string: {0}")]
    Config(String),

    /// The peer closed the connection in the middle of an exchange.
    #[error("connection closed unexpectedly")]
    ConnectionClosed,

    /// The peer sent the first bytes of a message and not the rest in time
    /// (a stalled or malicious client must not hold the connection).
    #[error("incomplete message: {have_bytes} bytes, the rest not sent within {timeout_ms} ms")]
    PartialMessageTimeout { have_bytes: usize, timeout_ms: u64 },
}

impl ProtocolError {
    /// A [`ProtocolError::Malformed`] about `what`.
    pub fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        ProtocolError::Malformed {
            what,
            detail: detail.into(),
        }
    }

    /// The SQLSTATE when this is a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ProtocolError::ServerError { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Result with [`ProtocolError`].
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
