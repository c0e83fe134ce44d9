//! The page-stream sub-protocol: binary GetPage@LSN and relation metadata
//! requests carried in CopyData messages after the page service answered
//! `pagestream <tenant> <timeline>` with CopyBothResponse.
//!
//! Owns the encoding of [`Request`] and [`Response`] (one CopyData
//! payload each, without the CopyData framing) for both the pageserver
//! and its client (`libs/pageclient`).
//!
//! # Wire format
//!
//! Every integer is big-endian. A request is
//!
//! ```text
//! tag u8 | request_id u64 | lsn u64 | body
//! 'G' GetPage         body: spc u32 | db u32 | rel u32 | fork u8 | blkno u32   (34 bytes in all)
//! 'N' Nblocks         body: spc u32 | db u32 | rel u32 | fork u8               (30)
//! 'E' Exists          body: spc u32 | db u32 | rel u32 | fork u8               (30)
//! 'D' DbSize          body: spc u32 | db u32                                   (25)
//! 'S' GetSlruSegment  body: kind u8 (0 clog, 1 multixact offsets,
//!                           2 multixact members) | segno u32                  (22)
//! ```
//!
//! `request_id` is chosen by the client and echoed in the response. `lsn`
//! is the LSN to read at; [`LATEST_LSN`] (`u64::MAX`) means "the
//! timeline's last record LSN when the request is served" (a compute at a
//! fixed start LSN always sends that LSN explicitly). An explicit LSN the
//! timeline has not ingested yet is waited for (up to the timeline's
//! `wait_lsn_timeout`) while a WAL source is connected, else refused.
//!
//! A response is
//!
//! ```text
//! tag u8 | request_id u64 | lsn u64 | body
//! 'g' Page         body: 8192 bytes
//! 'n' Nblocks      body: nblocks u32
//! 'e' Exists       body: exists u8 (0 or 1)
//! 'd' DbSize       body: size_bytes u64
//! 's' SlruSegment  body: the segment's pages (a multiple of 8192 bytes)
//! 'x' Error        body: code u16 (see [`ErrorCode`]) | message (UTF-8, the rest)
//! ```
//!
//! `lsn` in a response is the LSN the request was served at (the resolved
//! value for [`LATEST_LSN`]). Responses come in request order. An Error
//! response answers one request and does not end the stream; for a
//! request too short to hold an id, `request_id` is 0.
//!
//! Invariants: parsing never panics; any byte string either parses into
//! exactly one value or is a [`ParseError`] that says what is wrong.
//! `parse(encode(x)) == x` for every value.
//!
//! Cancellation: plain data, nothing to cancel.

use bytes::{BufMut, Bytes, BytesMut};

use crate::wire::Reader;

/// Size of a page in bytes.
pub const PAGE_SIZE: usize = 8192;
/// The `lsn` value meaning "the latest ingested LSN".
pub const LATEST_LSN: u64 = u64::MAX;
/// tag + request id + LSN.
pub const HEADER_BYTES: usize = 17;
/// Largest request payload (GetPage).
pub const MAX_REQUEST_BYTES: usize = HEADER_BYTES + 17;

/// A relation fork: tablespace, database, relfilenode, fork number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelTag {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: u8,
}

/// An SLRU, as numbered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlruKind {
    Clog = 0,
    MultiXactOffsets = 1,
    MultiXactMembers = 2,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    GetPage { rel: RelTag, blkno: u32 },
    Nblocks { rel: RelTag },
    Exists { rel: RelTag },
    DbSize { spc: u32, db: u32 },
    GetSlruSegment { kind: SlruKind, segno: u32 },
}

impl RequestKind {
    /// A short name for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            RequestKind::GetPage { .. } => "get_page",
            RequestKind::Nblocks { .. } => "nblocks",
            RequestKind::Exists { .. } => "exists",
            RequestKind::DbSize { .. } => "db_size",
            RequestKind::GetSlruSegment { .. } => "get_slru_segment",
        }
    }
}

/// One request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    /// The LSN to read at, or [`LATEST_LSN`].
    pub lsn: u64,
    pub kind: RequestKind,
}

/// Error codes of Error responses. Unknown codes (from a newer server)
/// parse as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed (unknown tag, wrong length, bad field).
    BadRequest,
    /// The relation fork or SLRU segment does not exist at the LSN.
    NotFound,
    /// The block is at or beyond the relation's size at the LSN.
    BeyondEnd,
    /// The LSN is below the GC cutoff or before the timeline's start.
    LsnOutOfRange,
    /// The LSN was not ingested within the wait timeout.
    LsnTimeout,
    /// The timeline is shutting down.
    ShuttingDown,
    /// The server failed (corrupt data, WAL redo, I/O, download).
    Internal,
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 1,
            ErrorCode::NotFound => 2,
            ErrorCode::BeyondEnd => 3,
            ErrorCode::LsnOutOfRange => 4,
            ErrorCode::LsnTimeout => 5,
            ErrorCode::ShuttingDown => 6,
            ErrorCode::Internal => 7,
            ErrorCode::Other(c) => c,
        }
    }

    pub fn from_u16(code: u16) -> Self {
        match code {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::NotFound,
            3 => ErrorCode::BeyondEnd,
            4 => ErrorCode::LsnOutOfRange,
            5 => ErrorCode::LsnTimeout,
            6 => ErrorCode::ShuttingDown,
            7 => ErrorCode::Internal,
            c => ErrorCode::Other(c),
        }
    }

    /// A short name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::BeyondEnd => "beyond_end",
            ErrorCode::LsnOutOfRange => "lsn_out_of_range",
            ErrorCode::LsnTimeout => "lsn_timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::Other(_) => "other",
        }
    }
}

/// What a response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseKind {
    /// Exactly [`PAGE_SIZE`] bytes.
    Page(Bytes),
    Nblocks(u32),
    Exists(bool),
    DbSize(u64),
    /// A multiple of [`PAGE_SIZE`] bytes.
    SlruSegment(Bytes),
    Error { code: ErrorCode, message: String },
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u64,
    /// The LSN the request was served at.
    pub lsn: u64,
    pub kind: ResponseKind,
}

/// A payload that is not a valid request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed page-stream {what} (request id {id}): {detail}")]
pub struct ParseError {
    /// "request" or "response".
    pub what: &'static str,
    /// The request id if the payload was long enough to hold one, else 0.
    pub id: u64,
    /// The LSN if the payload held one, else 0.
    pub lsn: u64,
    pub detail: String,
}

fn rel_tag(r: &mut Reader<'_>) -> crate::error::Result<RelTag> {
    Ok(RelTag { spc: r.u32()?, db: r.u32()?, rel: r.u32()?, fork: r.u8()? })
}

fn put_rel_tag(buf: &mut BytesMut, rel: &RelTag) {
    buf.put_u32(rel.spc);
    buf.put_u32(rel.db);
    buf.put_u32(rel.rel);
    buf.put_u8(rel.fork);
}

/// The id and LSN of a payload, as far as it holds them.
fn header_of(payload: &[u8]) -> (u64, u64) {
    let field = |range: std::ops::Range<usize>| {
        payload.get(range).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
    };
    (field(1..9), field(9..17))
}

/// Append a CopyData message (tag, length) whose payload `payload` writes.
fn put_copy_data(buf: &mut BytesMut, payload: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u8(b'd');
    buf.put_u32(0);
    payload(buf);
    let len = (buf.len() - start - 1) as u32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

impl Request {
    /// Append the whole CopyData message (framing and payload).
    pub fn encode_copy_data(&self, buf: &mut BytesMut) {
        put_copy_data(buf, |b| self.encode(b));
    }

    /// Append the CopyData payload.
    pub fn encode(&self, buf: &mut BytesMut) {
        let tag = match self.kind {
            RequestKind::GetPage { .. } => b'G',
            RequestKind::Nblocks { .. } => b'N',
            RequestKind::Exists { .. } => b'E',
            RequestKind::DbSize { .. } => b'D',
            RequestKind::GetSlruSegment { .. } => b'S',
        };
        buf.put_u8(tag);
        buf.put_u64(self.id);
        buf.put_u64(self.lsn);
        match &self.kind {
            RequestKind::GetPage { rel, blkno } => {
                put_rel_tag(buf, rel);
                buf.put_u32(*blkno);
            }
            RequestKind::Nblocks { rel } | RequestKind::Exists { rel } => put_rel_tag(buf, rel),
            RequestKind::DbSize { spc, db } => {
                buf.put_u32(*spc);
                buf.put_u32(*db);
            }
            RequestKind::GetSlruSegment { kind, segno } => {
                buf.put_u8(*kind as u8);
                buf.put_u32(*segno);
            }
        }
    }

    /// Parse one CopyData payload sent by a client.
    pub fn parse(payload: &[u8]) -> Result<Request, ParseError> {
        let (id, lsn) = header_of(payload);
        let fail = |detail: String| ParseError { what: "request", id, lsn, detail };
        let mut r = Reader::new(payload, "page-stream request");
        let tag = r.u8().map_err(|_| fail("empty message".into()))?;
        let parsed = (|| {
            let (id, lsn) = (r.u64()?, r.u64()?);
            let kind = match tag {
                b'G' => RequestKind::GetPage { rel: rel_tag(&mut r)?, blkno: r.u32()? },
                b'N' => RequestKind::Nblocks { rel: rel_tag(&mut r)? },
                b'E' => RequestKind::Exists { rel: rel_tag(&mut r)? },
                b'D' => RequestKind::DbSize { spc: r.u32()?, db: r.u32()? },
                b'S' => {
                    let kind = match r.u8()? {
                        0 => SlruKind::Clog,
                        1 => SlruKind::MultiXactOffsets,
                        2 => SlruKind::MultiXactMembers,
                        k => return Ok(Err(format!("unknown SLRU kind {k}"))),
                    };
                    RequestKind::GetSlruSegment { kind, segno: r.u32()? }
                }
                t => return Ok(Err(format!("unknown request tag 0x{t:02x}"))),
            };
            r.finish()?;
            Ok::<_, crate::ProtocolError>(Ok(Request { id, lsn, kind }))
        })();
        match parsed {
            Ok(Ok(req)) => Ok(req),
            Ok(Err(detail)) => Err(fail(detail)),
            Err(e) => Err(fail(format!("{} bytes for tag 0x{tag:02x}: {e}", payload.len()))),
        }
    }
}

impl Response {
    /// Append the whole CopyData message (framing and payload).
    pub fn encode_copy_data(&self, buf: &mut BytesMut) {
        put_copy_data(buf, |b| self.encode(b));
    }

    /// Append the CopyData payload.
    pub fn encode(&self, buf: &mut BytesMut) {
        let tag = match self.kind {
            ResponseKind::Page(_) => b'g',
            ResponseKind::Nblocks(_) => b'n',
            ResponseKind::Exists(_) => b'e',
            ResponseKind::DbSize(_) => b'd',
            ResponseKind::SlruSegment(_) => b's',
            ResponseKind::Error { .. } => b'x',
        };
        buf.put_u8(tag);
        buf.put_u64(self.id);
        buf.put_u64(self.lsn);
        match &self.kind {
            ResponseKind::Page(p) | ResponseKind::SlruSegment(p) => buf.put_slice(p),
            ResponseKind::Nblocks(n) => buf.put_u32(*n),
            ResponseKind::Exists(e) => buf.put_u8(u8::from(*e)),
            ResponseKind::DbSize(n) => buf.put_u64(*n),
            ResponseKind::Error { code, message } => {
                buf.put_u16(code.to_u16());
                buf.put_slice(message.as_bytes());
            }
        }
    }

    /// Parse one CopyData payload sent by the server (sliced, not copied).
    pub fn parse(payload: Bytes) -> Result<Response, ParseError> {
        let (id, lsn) = header_of(&payload);
        let fail = |detail: String| ParseError { what: "response", id, lsn, detail };
        if payload.len() < HEADER_BYTES {
            return Err(fail(format!("{} bytes, shorter than the {HEADER_BYTES}-byte header", payload.len())));
        }
        let body = payload.slice(HEADER_BYTES..);
        let fixed = |n: usize| -> Result<&[u8], ParseError> {
            if body.len() == n {
                Ok(&body[..])
            } else {
                Err(fail(format!("body of {} bytes, expected {n}", body.len())))
            }
        };
        let kind = match payload[0] {
            b'g' => {
                fixed(PAGE_SIZE)?;
                ResponseKind::Page(body.clone())
            }
            b'n' => ResponseKind::Nblocks(u32::from_be_bytes(fixed(4)?.try_into().unwrap_or_default())),
            b'e' => match fixed(1)? {
                [0] => ResponseKind::Exists(false),
                [1] => ResponseKind::Exists(true),
                other => return Err(fail(format!("exists flag {other:?}"))),
            },
            b'd' => ResponseKind::DbSize(u64::from_be_bytes(fixed(8)?.try_into().unwrap_or_default())),
            b's' if body.len() % PAGE_SIZE == 0 => ResponseKind::SlruSegment(body.clone()),
            b's' => return Err(fail(format!("SLRU segment of {} bytes, not whole pages", body.len()))),
            b'x' => {
                let Some((code, msg)) = body.split_first_chunk::<2>() else {
                    return Err(fail("error response without a code".into()));
                };
                let message = String::from_utf8_lossy(msg).into_owned();
                ResponseKind::Error { code: ErrorCode::from_u16(u16::from_be_bytes(*code)), message }
            }
            t => return Err(fail(format!("unknown response tag 0x{t:02x}"))),
        };
        Ok(Response { id, lsn, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rel() -> impl Strategy<Value = RelTag> {
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u8>()).prop_map(|(spc, db, rel, fork)| RelTag { spc, db, rel, fork })
    }

    fn kind() -> impl Strategy<Value = RequestKind> {
        prop_oneof![
            (rel(), any::<u32>()).prop_map(|(rel, blkno)| RequestKind::GetPage { rel, blkno }),
            rel().prop_map(|rel| RequestKind::Nblocks { rel }),
            rel().prop_map(|rel| RequestKind::Exists { rel }),
            (any::<u32>(), any::<u32>()).prop_map(|(spc, db)| RequestKind::DbSize { spc, db }),
            (0..3u8, any::<u32>()).prop_map(|(k, segno)| RequestKind::GetSlruSegment {
                kind: [SlruKind::Clog, SlruKind::MultiXactOffsets, SlruKind::MultiXactMembers][k as usize],
                segno
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(id: u64, lsn: u64, kind in kind()) {
            let req = Request { id, lsn, kind };
            let mut buf = BytesMut::new();
            req.encode(&mut buf);
            prop_assert!(buf.len() <= MAX_REQUEST_BYTES);
            prop_assert_eq!(Request::parse(&buf), Ok(req));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::parse(&bytes);
            let _ = Response::parse(Bytes::from(bytes));
        }

        #[test]
        fn every_truncation_of_a_request_is_an_error(kind in kind(), id: u64) {
            let mut buf = BytesMut::new();
            Request { id, lsn: 7, kind }.encode(&mut buf);
            for cut in 0..buf.len() {
                let err = Request::parse(&buf[..cut]).unwrap_err();
                if cut >= 9 {
                    prop_assert_eq!(err.id, id);
                }
            }
        }
    }

    #[test]
    fn responses_round_trip() {
        let kinds = [
            ResponseKind::Page(Bytes::from(vec![7u8; PAGE_SIZE])),
            ResponseKind::Nblocks(12),
            ResponseKind::Exists(true),
            ResponseKind::Exists(false),
            ResponseKind::DbSize(1 << 40),
            ResponseKind::SlruSegment(Bytes::from(vec![1u8; 2 * PAGE_SIZE])),
            ResponseKind::SlruSegment(Bytes::new()),
            ResponseKind::Error { code: ErrorCode::NotFound, message: "no such relation".into() },
            ResponseKind::Error { code: ErrorCode::Other(999), message: String::new() },
        ];
        for kind in kinds {
            let resp = Response { id: 42, lsn: 0x1_0000_0028, kind };
            let mut buf = BytesMut::new();
            resp.encode(&mut buf);
            assert_eq!(Response::parse(buf.freeze()), Ok(resp));
        }
    }

    #[test]
    fn copy_data_framing() {
        let req = Request { id: 3, lsn: 4, kind: RequestKind::Nblocks { rel: RelTag { spc: 1, db: 2, rel: 3, fork: 0 } } };
        let mut framed = BytesMut::new();
        req.encode_copy_data(&mut framed);
        let mut payload = BytesMut::new();
        req.encode(&mut payload);
        assert_eq!(framed[0], b'd');
        assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, payload.len() + 4);
        assert_eq!(&framed[5..], &payload[..]);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let mut buf = BytesMut::new();
        Request { id: 5, lsn: 9, kind: RequestKind::DbSize { spc: 1, db: 2 } }.encode(&mut buf);
        buf[0] = b'Z';
        let e = Request::parse(&buf).unwrap_err();
        assert_eq!((e.id, e.lsn), (5, 9));
        assert!(e.detail.contains("unknown request tag 0x5a"), "{e}");
        buf[0] = b'D';
        buf.put_u8(0);
        assert!(Request::parse(&buf).unwrap_err().detail.contains("trailing"));
        assert!(Request::parse(&[]).unwrap_err().detail.contains("empty"));
        let mut slru = BytesMut::new();
        Request { id: 1, lsn: 1, kind: RequestKind::GetSlruSegment { kind: SlruKind::Clog, segno: 0 } }.encode(&mut slru);
        slru[HEADER_BYTES] = 9;
        assert!(Request::parse(&slru).unwrap_err().detail.contains("unknown SLRU kind 9"));
    }
}
