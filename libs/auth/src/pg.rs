//! Tokens on the PostgreSQL-protocol interfaces (page service, walsender):
//! after the startup packet the server asks for a cleartext password and
//! the client sends its token as the password, as Neon does.
//!
//! Cancellation: [`login`] may be dropped at any await; the connection is
//! then abandoned by its caller.

use pq_proto::server::PostgresBackend;
use pq_proto::ProtocolError;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Access, AuthError, Claims, KeySet};

/// SQLSTATE of a refused token at login (`invalid_password`).
pub const BAD_TOKEN_STATE: &str = "28P01";
/// SQLSTATE of a valid token that does not allow a command
/// (`insufficient_privilege`).
pub const FORBIDDEN_STATE: &str = "42501";

/// Ask for the token and verify it: `Some(claims)` when it is valid;
/// `None` when the client closed, or was refused with a FATAL
/// ErrorResponse (28P01) naming the reason (the caller then closes).
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    pgb: &mut PostgresBackend<S>,
    keys: &KeySet,
    interface: &'static str,
) -> Result<Option<Claims>, ProtocolError> {
    let Some(password) = pgb.read_cleartext_password().await? else { return Ok(None) };
    match keys.verify(&password) {
        Ok(claims) => Ok(Some(claims)),
        Err(e) => {
            e.record(interface);
            pgb.send_fatal(BAD_TOKEN_STATE, &e.to_string()).await?;
            Ok(None)
        }
    }
}

/// [`Access::check`] for a command, counted when refused: the SQLSTATE
/// ([`FORBIDDEN_STATE`]) and message to answer with.
pub fn check_command(claims: &Claims, access: Access<'_>, interface: &'static str) -> Result<(), (&'static str, String)> {
    access.check(claims).map_err(|e: AuthError| {
        e.record(interface);
        (FORBIDDEN_STATE, e.to_string())
    })
}
