//! The client side: [`ReplicationClient`] opens a physical replication
//! connection (`replication=true`) to a PostgreSQL server or a safekeeper,
//! runs replication commands, and turns into a [`ReplicationStream`] with
//! `START_REPLICATION`, or hands over its raw stream after another
//! copy-both command ([`ReplicationClient::start_copy_both`], used by the
//! page-stream client). [`ReplicationClient::connect_plain`] opens a
//! session without `replication=true`.
//!
//! Invariants: plain TCP, no TLS; authentication trust, cleartext, MD5 or
//! SCRAM-SHA-256 (without channel binding). A client is always between
//! commands (the server has sent ReadyForQuery) when its methods return
//! `Ok`. An `ErrorResponse` becomes [`ProtocolError::ServerError`]; after
//! one from a command the client stays usable (the rest of the response,
//! up to ReadyForQuery, is read before returning).
//!
//! Cancellation: [`ReplicationStream::next`] is cancellation-safe: it keeps
//! received bytes in a persistent buffer and consumes only whole messages,
//! so it can sit in `tokio::select!` next to a timer. A dropped
//! [`ReplicationStream::send`] leaves the unsent tail buffered; the next
//! send flushes it first. Other methods (connect, queries) are not meant to
//! be cancelled: dropping one leaves the connection mid-exchange, and it
//! should then be dropped too.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{
    AuthenticationSaslBody, DataRowBody, ErrorResponseBody, Message,
};
use postgres_protocol::message::frontend;
use tokio::net::TcpStream;
use utils::lsn::Lsn;

use crate::conninfo::ConnConfig;
use crate::error::{ProtocolError, Result};
use crate::replication::{ReplicationFeedback, ReplicationMessage};
use crate::wire::{check_body_len, write_frame, Framed, MAX_MESSAGE_LEN};

/// SQLSTATE `duplicate_object`.
const DUPLICATE_OBJECT: &str = "42710";

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_id: u64,
    pub timeline: u32,
    /// The server's current flush position.
    pub xlogpos: Lsn,
    /// `None` on a physical replication connection.
    pub dbname: Option<String>,
}

/// One message from the server: postgres-protocol's, plus the
/// CopyBothResponse it does not know.
enum BackendMsg {
    Pg(Message),
    CopyBothResponse,
}

fn malformed(detail: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::malformed("backend message", detail.to_string())
}

fn parse_backend(buf: &mut BytesMut) -> Result<Option<BackendMsg>> {
    let Some(&[tag, a, b, c, d]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    check_body_len(len, MAX_MESSAGE_LEN)?;
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    if tag == b'W' {
        drop(buf.split_to(len + 1));
        return Ok(Some(BackendMsg::CopyBothResponse));
    }
    match Message::parse(buf).map_err(malformed)? {
        Some(msg) => Ok(Some(BackendMsg::Pg(msg))),
        None => Err(malformed("incomplete after a complete length")),
    }
}

fn describe(msg: &BackendMsg) -> String {
    let name = match msg {
        BackendMsg::CopyBothResponse => "CopyBothResponse",
        BackendMsg::Pg(m) => match m {
            Message::CopyData(_) => "CopyData",
            Message::CopyDone => "CopyDone",
            Message::CopyInResponse(_) => "CopyInResponse",
            Message::CopyOutResponse(_) => "CopyOutResponse",
            Message::DataRow(_) => "DataRow",
            Message::RowDescription(_) => "RowDescription",
            Message::CommandComplete(_) => "CommandComplete",
            Message::ReadyForQuery(_) => "ReadyForQuery",
            Message::BackendKeyData(_) => "BackendKeyData",
            Message::AuthenticationOk => "AuthenticationOk",
            _ => "another message",
        },
    };
    name.to_string()
}

/// Turn an ErrorResponse into [`ProtocolError::ServerError`].
fn server_error(body: &ErrorResponseBody) -> ProtocolError {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    loop {
        match fields.next() {
            Ok(Some(f)) => {
                let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
                match f.type_() {
                    b'C' => code = value,
                    b'M' => message = value,
                    _ => {}
                }
            }
            Ok(None) => return ProtocolError::ServerError { code, message },
            Err(e) => return malformed(format!("ErrorResponse: {e}")),
        }
    }
}

fn decode_row(row: &DataRowBody) -> Result<Vec<Option<String>>> {
    let buffer = row.buffer();
    row.ranges()
        .map_err(malformed)
        .map(|range| match range {
            None => Ok(None),
            Some(r) => {
                let bytes = buffer
                    .get(r)
                    .ok_or_else(|| malformed("DataRow value out of range"))?;
                let text =
                    std::str::from_utf8(bytes).map_err(|e| malformed(format!("DataRow: {e}")))?;
                Ok(Some(text.to_string()))
            }
        })
        .collect()
}

fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A physical replication connection between commands.
pub struct ReplicationClient {
    conn: Framed<TcpStream>,
    params: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
}

impl ReplicationClient {
    /// Connect with a libpq `key=value` string or a `postgresql://` URI.
    /// A non-empty `application_name` overrides one in `conninfo`.
    pub async fn connect(conninfo: &str, application_name: &str) -> Result<Self> {
        let mut config: ConnConfig = conninfo.parse()?;
        if !application_name.is_empty() {
            config.application_name = Some(application_name.to_string());
        }
        Self::connect_config(&config).await
    }

    /// Connect with an already parsed configuration.
    pub async fn connect_config(config: &ConnConfig) -> Result<Self> {
        Self::connect_mode(config, true).await
    }

    /// Connect without `replication=true` in the startup packet (a plain
    /// session, e.g. to the pageserver's page service).
    pub async fn connect_plain(config: &ConnConfig) -> Result<Self> {
        Self::connect_mode(config, false).await
    }

    async fn connect_mode(config: &ConnConfig, replication: bool) -> Result<Self> {
        let stream = TcpStream::connect((config.host.as_str(), config.port)).await?;
        stream.set_nodelay(true)?;
        let mut client = ReplicationClient {
            conn: Framed::new(stream),
            params: HashMap::new(),
            backend_key: None,
        };
        client.send_startup(config, replication)?;
        client.conn.flush().await?;
        client.authenticate(config).await?;
        client.read_until_ready().await?;
        Ok(client)
    }

    fn send_startup(&mut self, config: &ConnConfig, replication: bool) -> Result<()> {
        let mut params = vec![("user", config.user.as_str()), ("database", config.database())];
        if replication {
            params.push(("replication", "true"));
        }
        if let Some(name) = &config.application_name {
            params.push(("application_name", name));
        }
        if let Some(options) = &config.options {
            params.push(("options", options));
        }
        frontend::startup_message(params, &mut self.conn.write_buf)?;
        Ok(())
    }

    async fn read_backend(&mut self) -> Result<BackendMsg> {
        self.conn
            .read_with(parse_backend)
            .await?
            .ok_or(ProtocolError::ConnectionClosed)
    }

    async fn authenticate(&mut self, config: &ConnConfig) -> Result<()> {
        let mut scram = None;
        loop {
            match self.read_backend().await? {
                BackendMsg::Pg(Message::AuthenticationOk) => return Ok(()),
                BackendMsg::Pg(msg) => self.auth_step(msg, config, &mut scram)?,
                other => {
                    return Err(ProtocolError::Auth(format!(
                        "unexpected {}",
                        describe(&other)
                    )))
                }
            }
            self.conn.flush().await?;
        }
    }

    /// Answer one authentication request (buffered, not flushed).
    fn auth_step(
        &mut self,
        msg: Message,
        config: &ConnConfig,
        scram: &mut Option<ScramSha256>,
    ) -> Result<()> {
        let out = &mut self.conn.write_buf;
        match msg {
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password(config)?.as_bytes(), out)?
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(
                    config.user.as_bytes(),
                    password(config)?.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), out)?
            }
            Message::AuthenticationSasl(body) => {
                let client = start_scram(&body, config)?;
                frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), out)?;
                *scram = Some(client);
            }
            Message::AuthenticationSaslContinue(body) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| auth_err("SASL continue before start"))?;
                client
                    .update(body.data())
                    .map_err(|e| auth_err(format!("SCRAM: {e}")))?;
                frontend::sasl_response(client.message(), out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| auth_err("SASL final before start"))?;
                client
                    .finish(body.data())
                    .map_err(|e| auth_err(format!("SCRAM server proof: {e}")))?;
            }
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            Message::NoticeResponse(_) => {}
            other => {
                let name = describe(&BackendMsg::Pg(other));
                return Err(auth_err(format!(
                    "unsupported authentication request ({name})"
                )));
            }
        }
        Ok(())
    }

    /// After AuthenticationOk: collect ParameterStatus and BackendKeyData
    /// until ReadyForQuery.
    async fn read_until_ready(&mut self) -> Result<()> {
        loop {
            match self.read_backend().await? {
                BackendMsg::Pg(Message::ReadyForQuery(_)) => return Ok(()),
                BackendMsg::Pg(Message::BackendKeyData(k)) => {
                    self.backend_key = Some((k.process_id(), k.secret_key()))
                }
                BackendMsg::Pg(Message::ErrorResponse(body)) => return Err(server_error(&body)),
                other => self.absorb(other)?,
            }
        }
    }

    /// Handle a message that may arrive at any time (ParameterStatus,
    /// NoticeResponse); anything else is unexpected.
    fn absorb(&mut self, msg: BackendMsg) -> Result<()> {
        match msg {
            BackendMsg::Pg(Message::ParameterStatus(p)) => {
                let name = p.name().map_err(malformed)?.to_string();
                let value = p.value().map_err(malformed)?.to_string();
                self.params.insert(name, value);
                Ok(())
            }
            BackendMsg::Pg(Message::NoticeResponse(_)) => Ok(()),
            other => Err(ProtocolError::UnexpectedMessage(describe(&other))),
        }
    }

    /// A ParameterStatus value reported by the server (`server_version`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The server's BackendKeyData `(process_id, secret_key)`, if sent.
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        self.backend_key
    }

    /// Run a simple query; all rows of all result sets, as text. Commands
    /// that enter copy mode fail with [`ProtocolError::UnexpectedMessage`]
    /// and leave the connection unusable: use
    /// [`ReplicationClient::start_replication`] for `START_REPLICATION`.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.conn.write_buf)?;
        self.conn.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_backend().await? {
                BackendMsg::Pg(Message::DataRow(row)) => rows.push(decode_row(&row)?),
                BackendMsg::Pg(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse,
                ) => {}
                BackendMsg::Pg(Message::ErrorResponse(body)) => error = Some(server_error(&body)),
                BackendMsg::Pg(Message::ReadyForQuery(_)) => return error.map_or(Ok(rows), Err),
                other => self.absorb(other)?,
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let [row] = rows.as_slice() else {
            return Err(malformed(format!(
                "IDENTIFY_SYSTEM returned {} rows",
                rows.len()
            )));
        };
        let [Some(sysid), Some(tli), Some(pos), dbname] = row.as_slice() else {
            return Err(malformed(
                "IDENTIFY_SYSTEM row is not (systemid, timeline, xlogpos, dbname)",
            ));
        };
        Ok(IdentifySystem {
            system_id: sysid
                .parse()
                .map_err(|_| malformed(format!("systemid {sysid:?}")))?,
            timeline: tli
                .parse()
                .map_err(|_| malformed(format!("timeline {tli:?}")))?,
            xlogpos: pos
                .parse()
                .map_err(|_| malformed(format!("xlogpos {pos:?}")))?,
            dbname: dbname.clone(),
        })
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL RESERVE_WAL`; an existing slot
    /// of that name is fine.
    pub async fn create_physical_slot_if_missing(&mut self, name: &str) -> Result<()> {
        if !valid_slot_name(name) {
            return Err(ProtocolError::Config(format!(
                "invalid replication slot name {name:?}"
            )));
        }
        let sql = format!("CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL");
        match self.simple_query(&sql).await {
            Ok(_) => Ok(()),
            Err(e) if e.sqlstate() == Some(DUPLICATE_OBJECT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `START_REPLICATION [SLOT slot] PHYSICAL start TIMELINE timeline`.
    /// On an error the connection is consumed (drop and reconnect).
    pub async fn start_replication(
        mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: u32,
    ) -> Result<ReplicationStream> {
        let slot_clause = match slot {
            Some(s) if valid_slot_name(s) => format!("SLOT {s} "),
            Some(s) => {
                return Err(ProtocolError::Config(format!(
                    "invalid replication slot name {s:?}"
                )))
            }
            None => String::new(),
        };
        let sql = format!("START_REPLICATION {slot_clause}PHYSICAL {start} TIMELINE {timeline}");
        frontend::query(&sql, &mut self.conn.write_buf)?;
        self.conn.flush().await?;
        let mut error = None;
        loop {
            match self.read_backend().await? {
                BackendMsg::CopyBothResponse => break,
                BackendMsg::Pg(Message::ErrorResponse(body)) => error = Some(server_error(&body)),
                BackendMsg::Pg(Message::ReadyForQuery(_)) => {
                    return Err(error.unwrap_or_else(|| {
                        ProtocolError::UnexpectedMessage(
                            "START_REPLICATION ended without streaming".into(),
                        )
                    }))
                }
                other => self.absorb(other)?,
            }
        }
        Ok(ReplicationStream {
            client: self,
            server_done: false,
        })
    }

    /// Run `command` (a simple query the server answers with
    /// CopyBothResponse, such as the page service's `pagestream`) and hand
    /// over the raw connection: the stream and the bytes already received
    /// after the CopyBothResponse. From then on the caller speaks CopyData
    /// itself. An ErrorResponse instead is [`ProtocolError::ServerError`]
    /// (the connection is consumed).
    pub async fn start_copy_both(mut self, command: &str) -> Result<(TcpStream, BytesMut)> {
        frontend::query(command, &mut self.conn.write_buf)?;
        self.conn.flush().await?;
        let mut error = None;
        loop {
            match self.read_backend().await? {
                BackendMsg::CopyBothResponse => return Ok((self.conn.stream, self.conn.read_buf)),
                BackendMsg::Pg(Message::ErrorResponse(body)) => error = Some(server_error(&body)),
                BackendMsg::Pg(Message::ReadyForQuery(_)) => {
                    return Err(error.unwrap_or_else(|| {
                        ProtocolError::UnexpectedMessage(format!("{command:?} ended without CopyBothResponse"))
                    }))
                }
                other => self.absorb(other)?,
            }
        }
    }

    /// Send Terminate and close.
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(&mut self.conn.write_buf);
        self.conn.flush().await
    }
}

fn auth_err(detail: impl Into<String>) -> ProtocolError {
    ProtocolError::Auth(detail.into())
}

fn password(config: &ConnConfig) -> Result<&str> {
    config
        .password
        .as_deref()
        .ok_or_else(|| auth_err("the server asked for a password, and none was given"))
}

fn start_scram(body: &AuthenticationSaslBody, config: &ConnConfig) -> Result<ScramSha256> {
    let mut mechanisms = body.mechanisms();
    let mut offered = Vec::new();
    while let Some(m) = mechanisms.next().map_err(malformed)? {
        offered.push(m.to_string());
    }
    if !offered.iter().any(|m| m == SCRAM_SHA_256) {
        return Err(auth_err(format!(
            "no supported SASL mechanism in {offered:?}"
        )));
    }
    let pw = password(config)?;
    Ok(ScramSha256::new(
        pw.as_bytes(),
        ChannelBinding::unsupported(),
    ))
}

/// A connection in copy-both mode after `START_REPLICATION`.
pub struct ReplicationStream {
    client: ReplicationClient,
    server_done: bool,
}

impl ReplicationStream {
    /// The next XLogData or keepalive; `None` once the server has ended the
    /// stream (CopyDone or CommandComplete). Cancellation-safe.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>> {
        while !self.server_done {
            match self.client.read_backend().await? {
                BackendMsg::Pg(Message::CopyData(body)) => {
                    return ReplicationMessage::parse_bytes(body.into_bytes()).map(Some)
                }
                BackendMsg::Pg(Message::CopyDone | Message::CommandComplete(_)) => {
                    self.server_done = true
                }
                BackendMsg::Pg(Message::ErrorResponse(body)) => return Err(server_error(&body)),
                other => self.client.absorb(other)?,
            }
        }
        Ok(None)
    }

    /// Send a status update, hot-standby feedback or Strata feedback.
    pub async fn send(&mut self, msg: impl Into<ReplicationFeedback>) -> Result<()> {
        let mut payload = BytesMut::new();
        msg.into().encode(&mut payload);
        self.send_raw(payload.freeze()).await
    }

    async fn send_raw(&mut self, payload: Bytes) -> Result<()> {
        write_frame(&mut self.client.conn.write_buf, b'd', |b| {
            b.extend_from_slice(&payload);
            Ok(())
        })?;
        self.client.conn.flush().await
    }

    /// End streaming: send CopyDone, skip what the server still sends up to
    /// ReadyForQuery, and return the connection for further commands.
    pub async fn finish(mut self) -> Result<ReplicationClient> {
        frontend::copy_done(&mut self.client.conn.write_buf);
        self.client.conn.flush().await?;
        let mut error = None;
        loop {
            match self.client.read_backend().await? {
                BackendMsg::Pg(Message::ReadyForQuery(_)) => {
                    return error.map_or(Ok(self.client), Err)
                }
                BackendMsg::Pg(Message::ErrorResponse(body)) => error = Some(server_error(&body)),
                _ => {}
            }
        }
    }

    /// A ParameterStatus value reported by the server.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.client.parameter(name)
    }
}

/// Fuzz entry (see [`crate::fuzz_targets`]): every backend message the
/// client can parse out of `data`, decoded the way the client uses it.
pub(crate) fn fuzz_backend_messages(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = parse_backend(&mut buf) {
        let _ = describe(&msg);
        let BackendMsg::Pg(msg) = msg else { continue };
        match msg {
            Message::DataRow(row) => drop(decode_row(&row)),
            Message::ErrorResponse(body) => drop(server_error(&body)),
            Message::ParameterStatus(p) => drop((p.name(), p.value())),
            Message::CopyData(body) => drop(ReplicationMessage::parse_bytes(body.into_bytes())),
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                while let Ok(Some(_)) = mechanisms.next() {}
            }
            Message::BackendKeyData(k) => drop((k.process_id(), k.secret_key())),
            _ => {}
        }
    }
}
