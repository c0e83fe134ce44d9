//! The `endpoint=NAME;PASSWORD` password form, for clients that can set
//! neither `options` nor TLS SNI: the proxy asks such a client for a
//! cleartext password, takes the endpoint name from it, and then logs in
//! to the compute itself with the rest (SCRAM-SHA-256, as the compute
//! asks). Every other client authenticates with the compute directly: the
//! proxy relays the SCRAM exchange and never sees a password.
//!
//! Invariants: the password is never logged; the compute's verdict is the
//! only one (a wrong password gets the compute's own 28P01 error, relayed);
//! after [`login`] returns `Ok`, the compute's AuthenticationOk and what
//! followed it are left in the buffer for the relay.
//!
//! Cancellation: both functions may be dropped at any await (the session
//! ends); they own nothing beyond the sockets borrowed.

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a password-form login did not go through.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The compute refused: its ErrorResponse, whole, for the client.
    #[error("the compute refused the login")]
    Refused(BytesMut),
}

/// A client's answer to AuthenticationCleartextPassword: the password
/// message's text. `buf` holds what the client sent after its startup
/// packet; what follows the password message stays in it.
pub async fn ask_password<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S, buf: &mut BytesMut) -> Result<String, AuthError> {
    client.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    let body = loop {
        if let Some(header) = buf.get(..5) {
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if header[0] != b'p' {
                return Err(AuthError::Protocol(format!("expected a password message, got message type {:?}", header[0] as char)));
            }
            if !(5..=1024).contains(&len) {
                return Err(AuthError::Protocol(format!("password message of length {len}")));
            }
            if buf.len() > len {
                let mut message = buf.split_to(1 + len);
                message.advance(5);
                break message;
            }
        }
        if client.read_buf(buf).await? == 0 {
            return Err(AuthError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    };
    let text = body.strip_suffix(&[0]).ok_or_else(|| AuthError::Protocol("password is not NUL-terminated".into()))?;
    String::from_utf8(text.to_vec()).map_err(|_| AuthError::Protocol("password is not UTF-8".into()))
}

/// Log in to the compute as `user` with `password`, answering whatever it
/// asks (SCRAM-SHA-256, MD5, cleartext). On `Ok`, `buf` starts with the
/// compute's AuthenticationOk.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(compute: &mut S, user: &str, password: &str, buf: &mut BytesMut) -> Result<(), AuthError> {
    let mut scram: Option<ScramSha256> = None;
    loop {
        let Some(raw) = next_message(compute, buf).await? else {
            return Err(AuthError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        };
        if raw[0] == b'E' {
            return Err(AuthError::Refused(raw));
        }
        let mut parse = raw.clone();
        let message = backend::Message::parse(&mut parse)?.ok_or_else(|| AuthError::Protocol("short message".into()))?;
        let mut out = BytesMut::new();
        match message {
            backend::Message::AuthenticationOk => {
                let rest = std::mem::take(buf);
                buf.extend_from_slice(&raw);
                buf.extend_from_slice(&rest);
                return Ok(());
            }
            backend::Message::AuthenticationCleartextPassword => frontend::password_message(password.as_bytes(), &mut out)?,
            backend::Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut out)?
            }
            backend::Message::AuthenticationSasl(_) => {
                let client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", client.message(), &mut out)?;
                scram = Some(client);
            }
            backend::Message::AuthenticationSaslContinue(body) => {
                let client = scram.as_mut().ok_or_else(|| AuthError::Protocol("SASL continue before SASL start".into()))?;
                client.update(body.data())?;
                frontend::sasl_response(client.message(), &mut out)?;
            }
            backend::Message::AuthenticationSaslFinal(body) => {
                let client = scram.as_mut().ok_or_else(|| AuthError::Protocol("SASL final before SASL start".into()))?;
                client.finish(body.data())?;
                continue;
            }
            _ => return Err(AuthError::Protocol(format!("unexpected message type {:?} during authentication", raw[0] as char))),
        }
        compute.write_all(&out).await?;
    }
}

/// One whole backend message off `buf`, reading more from `stream` as
/// needed; `None` if the stream ended.
async fn next_message<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> std::io::Result<Option<BytesMut>> {
    loop {
        if let Some(header) = buf.get(..5) {
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len < 4 || len > 1 << 20 {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("backend message of length {len}")));
            }
            if buf.len() > len {
                return Ok(Some(buf.split_to(1 + len)));
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_password_message_is_read_whole_and_what_follows_is_kept() {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        let mut buf = BytesMut::new();
        let password = b"endpoint=dev;s3cret\0";
        let mut sent = vec![b'p'];
        sent.extend_from_slice(&(4 + password.len() as u32).to_be_bytes());
        sent.extend_from_slice(password);
        sent.extend_from_slice(b"Qnext");
        client.write_all(&sent).await.unwrap();
        assert_eq!(ask_password(&mut proxy, &mut buf).await.unwrap(), "endpoint=dev;s3cret");
        assert_eq!(&buf[..], b"Qnext");
        let mut asked = [0u8; 9];
        client.read_exact(&mut asked).await.unwrap();
        assert_eq!(asked, [b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
    }

    #[tokio::test]
    async fn a_query_instead_of_a_password_is_a_protocol_error() {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        client.write_all(b"Q\0\0\0\x05x").await.unwrap();
        let err = ask_password(&mut proxy, &mut BytesMut::new()).await.unwrap_err();
        assert!(matches!(err, AuthError::Protocol(_)), "{err}");
    }
}
