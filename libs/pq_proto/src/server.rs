//! The server side of a connection: [`PostgresBackend`] speaks protocol v3
//! to a client such as `psql`, a compute node's walreceiver, or a
//! pageserver; [`ReplicationCommand`] parses the replication commands that
//! arrive as simple queries.
//!
//! Invariants: a backend first reads the startup packet
//! ([`PostgresBackend::read_startup`]), then authenticates, then reads
//! tagged messages. Outgoing messages are only buffered by
//! [`PostgresBackend::write_message`] and the `send_*` helpers; nothing
//! reaches the client until [`PostgresBackend::flush`] (or
//! [`PostgresBackend::ready_for_query`], which flushes).
//!
//! Cancellation: [`PostgresBackend::read_message`] and
//! [`PostgresBackend::read_startup`] may be dropped at any await point
//! without losing bytes (the read buffer persists and only whole messages
//! are consumed); a dropped [`PostgresBackend::flush`] leaves the unsent
//! tail buffered for the next flush. The SSL/GSS refusal in `read_startup`
//! is buffered before the next read, so it is never lost either.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{ProtocolError, Result};
use crate::messages::{BeMessage, ColumnDesc, FeMessage, MAX_MESSAGE_LEN};
use crate::wire::Framed;

pub use crate::command::{ReplicationCommand, StartReplication};

/// Protocol v3, server side, over any byte stream.
pub struct PostgresBackend<S> {
    conn: Framed<S>,
    max_message_len: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> PostgresBackend<S> {
    pub fn new(stream: S) -> Self {
        PostgresBackend {
            conn: Framed::new(stream),
            max_message_len: MAX_MESSAGE_LEN,
        }
    }

    /// Bound the time a client may take to complete a message it began
    /// (the startup packet included); see
    /// [`crate::ProtocolError::PartialMessageTimeout`].
    pub fn with_partial_message_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.conn.partial_message_timeout = Some(timeout);
        self
    }

    /// Set the largest message body accepted from the client.
    pub fn with_max_message_len(mut self, max_len: usize) -> Self {
        self.max_message_len = max_len;
        self
    }

    /// Read the startup packet, refusing SSL and GSS encryption with `N` as
    /// often as asked. Returns a `StartupMessage` or a `CancelRequest`;
    /// `None` if the client closed before sending one.
    pub async fn read_startup(&mut self) -> Result<Option<FeMessage>> {
        loop {
            self.flush().await?;
            let msg = self.conn.read_with(FeMessage::parse_startup).await?;
            match msg {
                Some(FeMessage::SslRequest | FeMessage::GssEncRequest) => {
                    self.conn.write_buf.extend_from_slice(b"N");
                }
                other => return Ok(other),
            }
        }
    }

    /// Ask for a cleartext password (AuthenticationCleartextPassword) and
    /// read the PasswordMessage: its text without the terminating NUL;
    /// `None` if the client closed instead. Any other message is an error.
    /// (Tokens travel this way to the page service and the walsender.)
    pub async fn read_cleartext_password(&mut self) -> Result<Option<String>> {
        self.write_message(&BeMessage::AuthenticationCleartextPassword)?;
        self.flush().await?;
        match self.read_message().await? {
            None => Ok(None),
            Some(FeMessage::PasswordMessage(body)) => {
                let body = body.strip_suffix(&[0]).unwrap_or(&body);
                let text = std::str::from_utf8(body).map_err(|_| ProtocolError::malformed("password message", "not UTF-8"))?;
                Ok(Some(text.to_string()))
            }
            Some(other) => Err(ProtocolError::malformed("password message", format!("expected a password, got {other:?}"))),
        }
    }

    /// Send a FATAL ErrorResponse and flush it (the caller then closes).
    pub async fn send_fatal(&mut self, sqlstate: &str, message: &str) -> Result<()> {
        self.write_message(&BeMessage::ErrorResponse { severity: "FATAL", sqlstate, message })?;
        self.flush().await
    }

    /// Accept the client without a password: AuthenticationOk, the given
    /// ParameterStatus pairs (include `server_version`), BackendKeyData and
    /// ReadyForQuery, flushed.
    pub async fn authenticate_trust(
        &mut self,
        params: &[(&str, &str)],
        process_id: i32,
        secret_key: i32,
    ) -> Result<()> {
        self.write_message(&BeMessage::AuthenticationOk)?;
        for &(name, value) in params {
            self.write_message(&BeMessage::ParameterStatus { name, value })?;
        }
        self.write_message(&BeMessage::BackendKeyData {
            process_id,
            secret_key,
        })?;
        self.ready_for_query().await
    }

    /// Read the next message; `None` when the client closed the connection
    /// cleanly between messages. Cancellation-safe.
    pub async fn read_message(&mut self) -> Result<Option<FeMessage>> {
        let max = self.max_message_len;
        self.conn
            .read_with(|buf| FeMessage::parse_with_limit(buf, max))
            .await
    }

    /// Buffer a message (sent by the next flush).
    pub fn write_message(&mut self, msg: &BeMessage<'_>) -> Result<()> {
        msg.write(&mut self.conn.write_buf)
    }

    /// Send everything buffered.
    pub async fn flush(&mut self) -> Result<()> {
        self.conn.flush().await
    }

    /// Buffer ReadyForQuery (idle) and flush.
    pub async fn ready_for_query(&mut self) -> Result<()> {
        self.write_message(&BeMessage::ReadyForQuery)?;
        self.flush().await
    }

    /// Buffer a text result set: RowDescription, one DataRow per row and
    /// CommandComplete `SELECT n`. Rows must have one value per column.
    pub fn send_row_set(
        &mut self,
        columns: &[ColumnDesc<'_>],
        rows: &[Vec<Option<String>>],
    ) -> Result<()> {
        self.write_message(&BeMessage::RowDescription(columns))?;
        for row in rows {
            if row.len() != columns.len() {
                return Err(ProtocolError::malformed(
                    "outgoing row",
                    format!("{} values for {} columns", row.len(), columns.len()),
                ));
            }
            let values: Vec<Option<&[u8]>> = row
                .iter()
                .map(|v| v.as_deref().map(str::as_bytes))
                .collect();
            self.write_message(&BeMessage::DataRow(&values))?;
        }
        let tag = format!("SELECT {}", rows.len());
        self.write_message(&BeMessage::CommandComplete(&tag))
    }

    /// Buffer an ErrorResponse with severity `ERROR`.
    pub fn send_error(&mut self, sqlstate: &str, message: &str) -> Result<()> {
        self.write_message(&BeMessage::ErrorResponse {
            severity: "ERROR",
            sqlstate,
            message,
        })
    }

    /// Hand the connection over (e.g. after CopyBothResponse, to speak a
    /// sub-protocol directly): the stream and the bytes received but not
    /// parsed yet. Flush first: unsent output is dropped.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.conn.stream, self.conn.read_buf)
    }

    /// Take a connection back after [`PostgresBackend::into_parts`].
    pub fn from_parts(stream: S, unparsed: BytesMut) -> Self {
        let mut conn = Framed::new(stream);
        conn.read_buf = unparsed;
        PostgresBackend { conn, max_message_len: MAX_MESSAGE_LEN }
    }

    /// The underlying stream (e.g. for peer addresses).
    pub fn get_ref(&self) -> &S {
        &self.conn.stream
    }

    /// Bytes received but not yet parsed (for handing the connection on).
    pub fn unparsed(&self) -> &BytesMut {
        &self.conn.read_buf
    }
}
