//! Byte-level helpers shared by every message type: a bounds-checked reader
//! over peer bytes, framed writers, and [`Framed`], the buffered connection
//! both the client and the server are built on.
//!
//! Invariants: [`Reader`] never indexes past its slice; every read is
//! checked and fails with [`ProtocolError::Malformed`]. Writers build a whole
//! frame or nothing: on error the output buffer is truncated back to where
//! the frame started.
//!
//! Cancellation: [`Framed::read_with`] keeps all received bytes in a
//! persistent `BytesMut` and only consumes complete messages, so dropping
//! the future loses nothing (nor resets the partial-message deadline); [`Framed::flush`] advances its write buffer as
//! bytes are accepted, so a dropped flush resumes where it stopped.

use std::time::Duration;

use tokio::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{ProtocolError, Result};

/// Largest message body this crate reads or writes by default (64 MiB).
pub const MAX_MESSAGE_LEN: usize = 64 << 20;

const READ_CHUNK: usize = 8192;

/// Checked big-endian reader over bytes that came from a peer.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(ProtocolError::malformed(
                self.what,
                format!("need {n} more bytes, have {}", self.buf.len()),
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated UTF-8 string (the NUL is consumed, not returned).
    pub(crate) fn cstr(&mut self) -> Result<&'a str> {
        let Some(pos) = self.buf.iter().position(|&b| b == 0) else {
            return Err(ProtocolError::malformed(
                self.what,
                "missing string terminator",
            ));
        };
        let bytes = self.take(pos + 1)?;
        let text = bytes.get(..pos).unwrap_or_default();
        std::str::from_utf8(text)
            .map_err(|e| ProtocolError::malformed(self.what, format!("invalid UTF-8: {e}")))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::malformed(
                self.what,
                format!("{} trailing bytes", self.buf.len()),
            ))
        }
    }
}

/// Append `s` and a NUL; a string with an interior NUL cannot be sent.
pub(crate) fn put_cstr(buf: &mut BytesMut, s: &str) -> Result<()> {
    if s.as_bytes().contains(&0) {
        return Err(ProtocolError::malformed(
            "outgoing string",
            "contains a NUL byte",
        ));
    }
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
    Ok(())
}

/// Write one tagged frame: `tag`, Int32 length (including itself), body.
pub(crate) fn write_frame(
    buf: &mut BytesMut,
    tag: u8,
    body: impl FnOnce(&mut BytesMut) -> Result<()>,
) -> Result<()> {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    let result = body(buf).and_then(|()| patch_len(buf, start + 1));
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

/// Store the length of everything from `len_at` on as an Int32 at `len_at`.
pub(crate) fn patch_len(buf: &mut BytesMut, len_at: usize) -> Result<()> {
    let len = buf.len() - len_at;
    if len - 4 > MAX_MESSAGE_LEN {
        return Err(ProtocolError::malformed(
            "outgoing message",
            format!("body of {} bytes exceeds {MAX_MESSAGE_LEN}", len - 4),
        ));
    }
    let len =
        i32::try_from(len).map_err(|_| ProtocolError::malformed("outgoing message", "too long"))?;
    if let Some(slot) = buf.get_mut(len_at..len_at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Split one complete tagged frame `(tag, body)` off the front of `buf`, or
/// `None` (consuming nothing) while it is incomplete.
pub(crate) fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<(u8, Bytes)>> {
    let Some(&[tag, a, b, c, d]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    check_body_len(len, max_len)?;
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(len + 1).freeze();
    let body = frame.split_off(5);
    Ok(Some((tag, body)))
}

/// Validate a frame's Int32 length (which counts itself).
pub(crate) fn check_body_len(len: usize, max_len: usize) -> Result<()> {
    if len < 4 {
        return Err(ProtocolError::malformed(
            "message length",
            format!("{len} < 4"),
        ));
    }
    if len - 4 > max_len {
        return Err(ProtocolError::malformed(
            "message length",
            format!("body of {} bytes exceeds the limit of {max_len}", len - 4),
        ));
    }
    Ok(())
}

/// A byte stream with persistent read and write buffers.
pub(crate) struct Framed<S> {
    pub(crate) stream: S,
    pub(crate) read_buf: BytesMut,
    pub(crate) write_buf: BytesMut,
    /// Once the first bytes of a message arrived, the rest must within
    /// this long; `None`: no bound.
    pub(crate) partial_message_timeout: Option<Duration>,
    /// Since when the head of `read_buf` has been an incomplete message.
    /// Kept across dropped reads, so a caller that polls in a `select!`
    /// cannot extend the bound.
    partial_since: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    pub(crate) fn new(stream: S) -> Self {
        Framed {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(READ_CHUNK),
            partial_message_timeout: None,
            partial_since: None,
        }
    }

    /// Run `parse` over the read buffer until it yields a message, reading
    /// more bytes as needed. `Ok(None)`: the peer closed cleanly between
    /// messages. With a `partial_message_timeout`, a message begun but not
    /// completed within it is [`ProtocolError::PartialMessageTimeout`].
    /// Cancellation-safe (see the module docs).
    pub(crate) async fn read_with<T>(
        &mut self,
        mut parse: impl FnMut(&mut BytesMut) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        loop {
            if let Some(msg) = parse(&mut self.read_buf)? {
                self.partial_since = None;
                return Ok(Some(msg));
            }
            self.read_buf.reserve(READ_CHUNK);
            let deadline = match self.partial_message_timeout {
                Some(limit) if !self.read_buf.is_empty() => {
                    Some((*self.partial_since.get_or_insert_with(Instant::now) + limit, limit))
                }
                _ => None,
            };
            let read = self.stream.read_buf(&mut self.read_buf);
            let n = match deadline {
                None => read.await?,
                Some((at, limit)) => match tokio::time::timeout_at(at, read).await {
                    Ok(n) => n?,
                    Err(_) => {
                        return Err(ProtocolError::PartialMessageTimeout {
                            have_bytes: self.read_buf.len(),
                            timeout_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                        })
                    }
                },
            };
            if n == 0 {
                return if self.read_buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::ConnectionClosed)
                };
            }
        }
    }

    /// Write out the whole write buffer and flush the stream.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        while !self.write_buf.is_empty() {
            if self.stream.write_buf(&mut self.write_buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
        }
        self.stream.flush().await?;
        Ok(())
    }
}
