//! Protocol v3 messages as a server sees them: [`FeMessage`] parsers for
//! what a client sends, and [`BeMessage`] writers for what a server sends.
//!
//! Invariants: parsers consume bytes from the buffer only when a whole
//! message is present, and never panic on any input; a length above the
//! limit ([`MAX_MESSAGE_LEN`], [`MAX_STARTUP_LEN`] for startup packets) is
//! [`ProtocolError::Malformed`] before anything is buffered for it. Writers
//! append a whole message or nothing.
//!
//! Cancellation: everything here is synchronous; see [`crate::server`] for
//! the async side.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ProtocolError, Result};
pub use crate::wire::MAX_MESSAGE_LEN;
use crate::wire::{patch_len, put_cstr, split_frame, write_frame, Reader};

/// Largest startup packet accepted (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_VERSION_3: i32 = 196_608;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;

/// The `replication` startup parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicationMode {
    /// Absent or false: a normal session.
    #[default]
    Off,
    /// `replication=true`: physical replication, replication commands only.
    Physical,
    /// `replication=database`: logical replication walsender with a database.
    Database,
}

impl ReplicationMode {
    /// Parse the parameter's value the way PostgreSQL's boolean GUCs do.
    pub fn parse(value: &str) -> Result<Self> {
        match value.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Ok(ReplicationMode::Physical),
            "false" | "off" | "no" | "0" => Ok(ReplicationMode::Off),
            "database" => Ok(ReplicationMode::Database),
            other => Err(ProtocolError::malformed(
                "replication parameter",
                format!("invalid value {other:?}"),
            )),
        }
    }
}

/// A StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Always [`PROTOCOL_VERSION_3`]'s major (3); the minor is kept.
    pub protocol_version: i32,
    pub params: HashMap<String, String>,
    pub replication: ReplicationMode,
}

impl StartupMessage {
    pub fn user(&self) -> Option<&str> {
        self.params.get("user").map(String::as_str)
    }

    /// `database`, defaulting to the user name as PostgreSQL does.
    pub fn database(&self) -> Option<&str> {
        self.params
            .get("database")
            .map(String::as_str)
            .or(self.user())
    }

    pub fn application_name(&self) -> Option<&str> {
        self.params.get("application_name").map(String::as_str)
    }
}

/// A message from a client (frontend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeMessage {
    StartupMessage(StartupMessage),
    SslRequest,
    GssEncRequest,
    CancelRequest {
        process_id: i32,
        secret_key: i32,
    },
    Query(String),
    CopyData(Bytes),
    CopyDone,
    CopyFail(String),
    Terminate,
    Sync,
    Flush,
    /// Password, SASLInitialResponse and SASLResponse share tag `p`; the
    /// body is kept raw because only the auth state knows which it is.
    PasswordMessage(Bytes),
}

impl FeMessage {
    /// Parse one untagged startup-phase packet (StartupMessage, SSLRequest,
    /// GSSENCRequest or CancelRequest) off the front of `buf`.
    pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<FeMessage>> {
        let Some(&[a, b, c, d]) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if !(8..=MAX_STARTUP_LEN).contains(&len) {
            return Err(ProtocolError::malformed(
                "startup packet",
                format!("length {len} outside 8..={MAX_STARTUP_LEN}"),
            ));
        }
        if buf.len() < len {
            return Ok(None);
        }
        let packet = buf.split_to(len).freeze();
        parse_startup_body(packet.get(4..).unwrap_or_default()).map(Some)
    }

    /// Parse one tagged message off the front of `buf`, with the default
    /// length limit.
    pub fn parse(buf: &mut BytesMut) -> Result<Option<FeMessage>> {
        Self::parse_with_limit(buf, MAX_MESSAGE_LEN)
    }

    /// Like [`FeMessage::parse`] with a body length limit of `max_len`.
    pub fn parse_with_limit(buf: &mut BytesMut, max_len: usize) -> Result<Option<FeMessage>> {
        match split_frame(buf, max_len)? {
            None => Ok(None),
            Some((tag, body)) => parse_tagged(tag, body).map(Some),
        }
    }
}

fn parse_startup_body(body: &[u8]) -> Result<FeMessage> {
    let mut r = Reader::new(body, "startup packet");
    let code = r.i32()?;
    let msg = match code {
        SSL_REQUEST_CODE => FeMessage::SslRequest,
        GSSENC_REQUEST_CODE => FeMessage::GssEncRequest,
        CANCEL_REQUEST_CODE => FeMessage::CancelRequest {
            process_id: r.i32()?,
            secret_key: r.i32()?,
        },
        v if v >> 16 == 3 => return parse_startup_params(v, &mut r),
        v => {
            return Err(ProtocolError::malformed(
                "startup packet",
                format!("unsupported protocol version {}.{}", v >> 16, v & 0xffff),
            ))
        }
    };
    r.finish()?;
    Ok(msg)
}

fn parse_startup_params(version: i32, r: &mut Reader<'_>) -> Result<FeMessage> {
    let mut params = HashMap::new();
    loop {
        let name = r.cstr()?;
        if name.is_empty() {
            break;
        }
        let value = r.cstr()?;
        params.insert(name.to_string(), value.to_string());
    }
    r.finish()?;
    let replication = match params.get("replication") {
        Some(v) => ReplicationMode::parse(v)?,
        None => ReplicationMode::Off,
    };
    Ok(FeMessage::StartupMessage(StartupMessage {
        protocol_version: version,
        params,
        replication,
    }))
}

fn parse_tagged(tag: u8, body: Bytes) -> Result<FeMessage> {
    let mut r = Reader::new(&body, "frontend message");
    let msg = match tag {
        b'Q' => FeMessage::Query(r.cstr()?.to_string()),
        b'd' => return Ok(FeMessage::CopyData(body)),
        b'p' => return Ok(FeMessage::PasswordMessage(body)),
        b'c' => FeMessage::CopyDone,
        b'f' => FeMessage::CopyFail(r.cstr()?.to_string()),
        b'X' => FeMessage::Terminate,
        b'S' => FeMessage::Sync,
        b'H' => FeMessage::Flush,
        b'P' | b'B' | b'E' | b'D' | b'C' | b'F' => {
            return Err(ProtocolError::UnexpectedMessage(format!(
                "extended-protocol or function-call message '{}' is not supported",
                tag as char
            )))
        }
        other => {
            return Err(ProtocolError::malformed(
                "frontend message",
                format!("unknown tag 0x{other:02x}"),
            ))
        }
    };
    r.finish()?;
    Ok(msg)
}

/// One column of a RowDescription (text format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnDesc<'a> {
    pub name: &'a str,
    pub type_oid: u32,
}

/// Common type OIDs for [`ColumnDesc::type_oid`].
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
}

impl<'a> ColumnDesc<'a> {
    pub fn text(name: &'a str) -> Self {
        ColumnDesc {
            name,
            type_oid: oid::TEXT,
        }
    }

    pub fn int4(name: &'a str) -> Self {
        ColumnDesc {
            name,
            type_oid: oid::INT4,
        }
    }

    fn type_len(&self) -> i16 {
        match self.type_oid {
            oid::BOOL => 1,
            oid::INT2 => 2,
            oid::INT4 | oid::OID => 4,
            oid::INT8 => 8,
            _ => -1,
        }
    }
}

/// A message from a server (backend), borrowed for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeMessage<'a> {
    AuthenticationOk,
    AuthenticationCleartextPassword,
    AuthenticationMd5Password {
        salt: [u8; 4],
    },
    ParameterStatus {
        name: &'a str,
        value: &'a str,
    },
    BackendKeyData {
        process_id: i32,
        secret_key: i32,
    },
    /// ReadyForQuery with transaction status idle (`I`).
    ReadyForQuery,
    RowDescription(&'a [ColumnDesc<'a>]),
    DataRow(&'a [Option<&'a [u8]>]),
    CommandComplete(&'a str),
    EmptyQueryResponse,
    ErrorResponse {
        severity: &'a str,
        sqlstate: &'a str,
        message: &'a str,
    },
    NoticeResponse {
        severity: &'a str,
        sqlstate: &'a str,
        message: &'a str,
    },
    /// CopyBothResponse, text format, no columns (as START_REPLICATION sends).
    CopyBothResponse,
    CopyOutResponse,
    CopyInResponse,
    CopyData(&'a [u8]),
    CopyDone,
}

impl BeMessage<'_> {
    /// Append this message to `buf`.
    pub fn write(&self, buf: &mut BytesMut) -> Result<()> {
        match *self {
            BeMessage::AuthenticationOk => write_auth(buf, 0, &[]),
            BeMessage::AuthenticationCleartextPassword => write_auth(buf, 3, &[]),
            BeMessage::AuthenticationMd5Password { salt } => write_auth(buf, 5, &salt),
            BeMessage::ParameterStatus { name, value } => write_frame(buf, b'S', |b| {
                put_cstr(b, name)?;
                put_cstr(b, value)
            }),
            BeMessage::BackendKeyData {
                process_id,
                secret_key,
            } => write_frame(buf, b'K', |b| {
                b.put_i32(process_id);
                b.put_i32(secret_key);
                Ok(())
            }),
            BeMessage::ReadyForQuery => write_frame(buf, b'Z', |b| {
                b.put_u8(b'I');
                Ok(())
            }),
            BeMessage::RowDescription(cols) => write_row_description(buf, cols),
            BeMessage::DataRow(values) => write_data_row(buf, values),
            BeMessage::CommandComplete(tag) => write_frame(buf, b'C', |b| put_cstr(b, tag)),
            BeMessage::EmptyQueryResponse => write_frame(buf, b'I', |_| Ok(())),
            BeMessage::ErrorResponse {
                severity,
                sqlstate,
                message,
            } => write_error_like(buf, b'E', severity, sqlstate, message),
            BeMessage::NoticeResponse {
                severity,
                sqlstate,
                message,
            } => write_error_like(buf, b'N', severity, sqlstate, message),
            BeMessage::CopyBothResponse => write_copy_response(buf, b'W'),
            BeMessage::CopyOutResponse => write_copy_response(buf, b'H'),
            BeMessage::CopyInResponse => write_copy_response(buf, b'G'),
            BeMessage::CopyData(data) => write_frame(buf, b'd', |b| {
                b.put_slice(data);
                Ok(())
            }),
            BeMessage::CopyDone => write_frame(buf, b'c', |_| Ok(())),
        }
    }
}

fn write_auth(buf: &mut BytesMut, code: i32, extra: &[u8]) -> Result<()> {
    write_frame(buf, b'R', |b| {
        b.put_i32(code);
        b.put_slice(extra);
        Ok(())
    })
}

fn count_i16(n: usize, what: &'static str) -> Result<i16> {
    i16::try_from(n).map_err(|_| ProtocolError::malformed(what, format!("{n} fields is too many")))
}

fn write_row_description(buf: &mut BytesMut, cols: &[ColumnDesc<'_>]) -> Result<()> {
    write_frame(buf, b'T', |b| {
        b.put_i16(count_i16(cols.len(), "RowDescription")?);
        for col in cols {
            put_cstr(b, col.name)?;
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(col.type_oid);
            b.put_i16(col.type_len());
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
        Ok(())
    })
}

fn write_data_row(buf: &mut BytesMut, values: &[Option<&[u8]>]) -> Result<()> {
    write_frame(buf, b'D', |b| {
        b.put_i16(count_i16(values.len(), "DataRow")?);
        for value in values {
            match value {
                None => b.put_i32(-1),
                Some(v) => {
                    let len = i32::try_from(v.len())
                        .map_err(|_| ProtocolError::malformed("DataRow", "value too long"))?;
                    b.put_i32(len);
                    b.put_slice(v);
                }
            }
        }
        Ok(())
    })
}

fn write_error_like(
    buf: &mut BytesMut,
    tag: u8,
    severity: &str,
    sqlstate: &str,
    message: &str,
) -> Result<()> {
    write_frame(buf, tag, |b| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', sqlstate),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value)?;
        }
        b.put_u8(0);
        Ok(())
    })
}

fn write_copy_response(buf: &mut BytesMut, tag: u8) -> Result<()> {
    write_frame(buf, tag, |b| {
        b.put_u8(0); // overall format: text
        b.put_i16(0); // no columns
        Ok(())
    })
}

/// Write an untagged startup-phase packet body (for clients and tests):
/// Int32 length, then `body`.
pub fn write_startup_packet(buf: &mut BytesMut, body: &[u8]) -> Result<()> {
    let start = buf.len();
    buf.put_i32(0);
    buf.put_slice(body);
    patch_len(buf, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fallible_iterator::FallibleIterator;
    use postgres_protocol::message::backend::Message;
    use postgres_protocol::message::frontend;

    fn parse_all(buf: &mut BytesMut) -> Vec<FeMessage> {
        let mut out = Vec::new();
        while let Some(m) = FeMessage::parse(buf).unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn frontend_messages_round_trip() {
        let mut buf = BytesMut::new();
        frontend::query("IDENTIFY_SYSTEM", &mut buf).unwrap();
        frontend::CopyData::new(&b"abc"[..])
            .unwrap()
            .write(&mut buf);
        frontend::copy_done(&mut buf);
        frontend::copy_fail("oops", &mut buf).unwrap();
        frontend::sync(&mut buf);
        frontend::flush(&mut buf);
        frontend::password_message(b"secret", &mut buf).unwrap();
        frontend::terminate(&mut buf);
        let got = parse_all(&mut buf);
        assert_eq!(
            got,
            vec![
                FeMessage::Query("IDENTIFY_SYSTEM".into()),
                FeMessage::CopyData(Bytes::from_static(b"abc")),
                FeMessage::CopyDone,
                FeMessage::CopyFail("oops".into()),
                FeMessage::Sync,
                FeMessage::Flush,
                FeMessage::PasswordMessage(Bytes::from_static(b"secret\0")),
                FeMessage::Terminate,
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_message_consumes_nothing() {
        let mut full = BytesMut::new();
        frontend::query("SELECT 1", &mut full).unwrap();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(FeMessage::parse(&mut part).unwrap(), None);
            assert_eq!(part.len(), cut);
        }
    }

    #[test]
    fn startup_packets_round_trip() {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        frontend::cancel_request(7, 9, &mut buf);
        let params = [
            ("user", "bob"),
            ("replication", "true"),
            ("application_name", "ps"),
        ];
        frontend::startup_message(params.iter().copied(), &mut buf).unwrap();
        write_startup_packet(&mut buf, &GSSENC_REQUEST_CODE.to_be_bytes()).unwrap();
        let mut got = Vec::new();
        while let Some(m) = FeMessage::parse_startup(&mut buf).unwrap() {
            got.push(m);
        }
        assert_eq!(got[0], FeMessage::SslRequest);
        assert_eq!(
            got[1],
            FeMessage::CancelRequest {
                process_id: 7,
                secret_key: 9
            }
        );
        let FeMessage::StartupMessage(s) = &got[2] else {
            panic!("{got:?}")
        };
        assert_eq!(s.replication, ReplicationMode::Physical);
        assert_eq!(
            (s.user(), s.database(), s.application_name()),
            (Some("bob"), Some("bob"), Some("ps"))
        );
        assert_eq!(got[3], FeMessage::GssEncRequest);
    }

    #[test]
    fn replication_mode_values() {
        assert_eq!(
            ReplicationMode::parse("database").unwrap(),
            ReplicationMode::Database
        );
        assert_eq!(
            ReplicationMode::parse("ON").unwrap(),
            ReplicationMode::Physical
        );
        assert_eq!(ReplicationMode::parse("off").unwrap(), ReplicationMode::Off);
        assert!(ReplicationMode::parse("maybe").is_err());
    }

    #[test]
    fn too_long_is_malformed() {
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_u32((MAX_MESSAGE_LEN + 5) as u32);
        let err = FeMessage::parse(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed { .. }), "{err}");
        let mut small = BytesMut::new();
        frontend::query("SELECT 1", &mut small).unwrap();
        assert!(FeMessage::parse_with_limit(&mut small, 4).is_err());
        let mut startup = BytesMut::from(&20_000u32.to_be_bytes()[..]);
        assert!(FeMessage::parse_startup(&mut startup).is_err());
    }

    fn parse_be(buf: &mut BytesMut) -> Message {
        Message::parse(buf).unwrap().expect("complete message")
    }

    #[test]
    fn backend_messages_parse_with_postgres_protocol() {
        let mut buf = BytesMut::new();
        let cols = [ColumnDesc::text("systemid"), ColumnDesc::int4("timeline")];
        BeMessage::AuthenticationOk.write(&mut buf).unwrap();
        BeMessage::ParameterStatus {
            name: "server_version",
            value: "15.0",
        }
        .write(&mut buf)
        .unwrap();
        BeMessage::BackendKeyData {
            process_id: 1,
            secret_key: 2,
        }
        .write(&mut buf)
        .unwrap();
        BeMessage::RowDescription(&cols).write(&mut buf).unwrap();
        BeMessage::DataRow(&[Some(b"42"), None])
            .write(&mut buf)
            .unwrap();
        BeMessage::CommandComplete("SELECT 1")
            .write(&mut buf)
            .unwrap();
        BeMessage::ReadyForQuery.write(&mut buf).unwrap();
        assert!(matches!(parse_be(&mut buf), Message::AuthenticationOk));
        let Message::ParameterStatus(p) = parse_be(&mut buf) else {
            panic!()
        };
        assert_eq!(
            (p.name().unwrap(), p.value().unwrap()),
            ("server_version", "15.0")
        );
        let Message::BackendKeyData(k) = parse_be(&mut buf) else {
            panic!()
        };
        assert_eq!((k.process_id(), k.secret_key()), (1, 2));
        let Message::RowDescription(rd) = parse_be(&mut buf) else {
            panic!()
        };
        let fields: Vec<_> = rd
            .fields()
            .map(|f| Ok((f.name().to_string(), f.type_oid())))
            .collect()
            .unwrap();
        assert_eq!(
            fields,
            vec![("systemid".to_string(), 25), ("timeline".to_string(), 23)]
        );
        let Message::DataRow(row) = parse_be(&mut buf) else {
            panic!()
        };
        let ranges: Vec<_> = row.ranges().collect().unwrap();
        assert_eq!(ranges, vec![Some(4..6), None]);
        assert_eq!(&row.buffer()[4..6], b"42");
        let Message::CommandComplete(c) = parse_be(&mut buf) else {
            panic!()
        };
        assert_eq!(c.tag().unwrap(), "SELECT 1");
        let Message::ReadyForQuery(z) = parse_be(&mut buf) else {
            panic!()
        };
        assert_eq!(z.status(), b'I');
        assert!(buf.is_empty());
    }

    #[test]
    fn error_and_copy_messages_parse_with_postgres_protocol() {
        let mut buf = BytesMut::new();
        BeMessage::ErrorResponse {
            severity: "ERROR",
            sqlstate: "42601",
            message: "bad",
        }
        .write(&mut buf)
        .unwrap();
        BeMessage::NoticeResponse {
            severity: "NOTICE",
            sqlstate: "00000",
            message: "hi",
        }
        .write(&mut buf)
        .unwrap();
        BeMessage::CopyOutResponse.write(&mut buf).unwrap();
        BeMessage::CopyData(b"xyz").write(&mut buf).unwrap();
        BeMessage::CopyDone.write(&mut buf).unwrap();
        BeMessage::EmptyQueryResponse.write(&mut buf).unwrap();
        BeMessage::AuthenticationMd5Password { salt: [1, 2, 3, 4] }
            .write(&mut buf)
            .unwrap();
        BeMessage::AuthenticationCleartextPassword
            .write(&mut buf)
            .unwrap();
        let Message::ErrorResponse(e) = parse_be(&mut buf) else {
            panic!()
        };
        let fields: Vec<_> = e
            .fields()
            .map(|f| Ok((f.type_(), f.value_bytes().to_vec())))
            .collect()
            .unwrap();
        assert!(fields.contains(&(b'C', b"42601".to_vec())));
        assert!(fields.contains(&(b'M', b"bad".to_vec())));
        assert!(matches!(parse_be(&mut buf), Message::NoticeResponse(_)));
        assert!(matches!(parse_be(&mut buf), Message::CopyOutResponse(_)));
        let Message::CopyData(d) = parse_be(&mut buf) else {
            panic!()
        };
        assert_eq!(d.data(), b"xyz");
        assert!(matches!(parse_be(&mut buf), Message::CopyDone));
        assert!(matches!(parse_be(&mut buf), Message::EmptyQueryResponse));
        let Message::AuthenticationMd5Password(m) = parse_be(&mut buf) else {
            panic!()
        };
        assert_eq!(m.salt(), [1, 2, 3, 4]);
        assert!(matches!(
            parse_be(&mut buf),
            Message::AuthenticationCleartextPassword
        ));
    }

    #[test]
    fn copy_both_response_layout() {
        let mut buf = BytesMut::new();
        BeMessage::CopyBothResponse.write(&mut buf).unwrap();
        assert_eq!(&buf[..], b"W\0\0\0\x07\0\0\0");
    }

    #[test]
    fn interior_nul_is_rejected_and_nothing_written() {
        let mut buf = BytesMut::new();
        BeMessage::ReadyForQuery.write(&mut buf).unwrap();
        let before = buf.clone();
        assert!(BeMessage::CommandComplete("a\0b").write(&mut buf).is_err());
        assert_eq!(buf, before);
    }
}
