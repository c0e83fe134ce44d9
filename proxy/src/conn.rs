//! One client connection: read its startup packet (accepting an SSL
//! request with a TLS handshake when the proxy has a certificate, refusing
//! it with `N` otherwise; GSS encryption always `N`), pick the endpoint
//! (from the startup packet or the TLS SNI name), wake it if suspended,
//! connect to its compute, hand the startup packet on without the routing
//! option, then relay bytes both ways until either side closes.
//! Authentication is between the client and the compute (SCRAM-SHA-256,
//! relayed): the proxy never sees a password — except from a client that
//! names its endpoint by the `endpoint=NAME;PASSWORD` password form, which
//! the proxy asks for in cleartext and logs in to the compute with itself
//! ([`crate::auth`]).
//!
//! Every refusal is a FATAL ErrorResponse with a SQLSTATE and a message
//! that says what to do, never a silently dropped connection.
//!
//! Cancellation: a connection task may be dropped at any point (shutdown);
//! it owns only its two sockets and its connection-count guard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pq_proto::{BeMessage, FeMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn, Instrument};

use crate::endpoints::Endpoints;
use crate::metrics::METRICS;
use crate::route;

pub struct ProxyContext {
    pub endpoints: Arc<Endpoints>,
    /// Time a client has to send its startup packet.
    pub startup_timeout: Duration,
    /// Time to open the TCP connection to a running compute (and, for a
    /// password-form client, to log in to it).
    pub connect_timeout: Duration,
    pub connections: Arc<tokio::sync::Semaphore>,
    pub max_connections: usize,
    /// Accepts SSL requests when set.
    pub tls: Option<TlsAcceptor>,
    pub cancel: Arc<crate::cancel::CancelMap>,
}

/// A client's stream, plain or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}
type Client = Box<dyn ClientIo>;

/// The client's startup packet, what it sent after it, and its SNI name.
struct Startup {
    message: FeMessage,
    rest: BytesMut,
    sni: Option<String>,
}

/// A client refused with a PostgreSQL error.
struct Refusal {
    sqlstate: &'static str,
    message: String,
    reason: &'static str,
}

impl Refusal {
    fn new(sqlstate: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal { sqlstate, message: message.into(), reason }
    }
}

/// Accept clients until `shutdown` turns true; each runs in its own task.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<ProxyContext>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let session = format!("{:016x}", rand::random::<u64>());
        let span = tracing::info_span!("session", id = %session, %peer);
        tokio::spawn(handle(Arc::clone(&ctx), stream, peer).instrument(span));
    }
}

async fn handle(ctx: Arc<ProxyContext>, tcp: TcpStream, peer: SocketAddr) {
    METRICS.connections.inc();
    let _ = tcp.set_nodelay(true);
    let mut client: Client = Box::new(tcp);
    let Ok(_permit) = Arc::clone(&ctx.connections).try_acquire_owned() else {
        let msg = format!("too many connections to the proxy (limit {})", ctx.max_connections);
        return refuse(&mut client, Refusal::new("53300", "too_many_connections", msg)).await;
    };
    METRICS.active_connections.inc();
    let _active = scopeguard(|| METRICS.active_connections.dec());
    match connect(&ctx, &mut client).await {
        Ok((mut compute, target, _guard, from_compute)) => {
            let span = tracing::info_span!("relay", endpoint = %target.endpoint);
            async {
                info!(%peer, "connected to the compute");
                let _key = match relay_until_ready(&mut client, &mut compute, from_compute).await {
                    Ok(key) => key.map(|(pid, secret)| ctx.cancel.register(pid, secret, target.host.clone(), target.port)),
                    Err(e) => return info!("session ended during authentication: {e}"),
                };
                match tokio::io::copy_bidirectional(&mut client, &mut compute).await {
                    Ok((up, down)) => {
                        METRICS.bytes.with_label_values(&["client_to_compute"]).inc_by(up);
                        METRICS.bytes.with_label_values(&["compute_to_client"]).inc_by(down);
                        info!(bytes_up = up, bytes_down = down, "session ended");
                    }
                    Err(e) => info!("session ended: {e}"),
                }
            }
            .instrument(span)
            .await
        }
        Err(Some(refusal)) => refuse(&mut client, refusal).await,
        Err(None) => {}
    }
}

/// Up to a connected compute that has been sent the startup packet (and any
/// bytes the client sent after it). `Err(None)`: the client left.
/// Where a session was connected.
struct Target {
    endpoint: String,
    host: String,
    port: u16,
}

/// With it, what the compute sent after the login the proxy did for a
/// password-form client (else empty).
async fn connect(
    ctx: &ProxyContext,
    client: &mut Client,
) -> Result<(TcpStream, Target, crate::endpoints::ConnectionGuard, BytesMut), Option<Refusal>> {
    let startup = match tokio::time::timeout(ctx.startup_timeout, read_startup(client, ctx.tls.as_ref())).await {
        Err(_) => return Err(Some(Refusal::new("08P01", "startup_timeout", "no startup packet received in time"))),
        Ok(Err(e)) => return Err(Some(Refusal::new("08P01", "bad_startup", format!("invalid startup packet: {e}")))),
        Ok(Ok(None)) => return Err(None),
        Ok(Ok(Some(s))) => s,
    };
    let Startup { message, mut rest, sni } = startup;
    let params = match message {
        FeMessage::StartupMessage(m) => m.params,
        FeMessage::CancelRequest { process_id, secret_key } => {
            ctx.cancel.cancel(process_id, secret_key).await;
            return Err(None);
        }
        other => return Err(Some(Refusal::new("08P01", "bad_startup", format!("unexpected {other:?} before startup")))),
    };
    route::refuse_replication(&params).map_err(|e| Some(Refusal::new("28000", "replication", e.to_string())))?;
    let (route, password) = match route::route(&params, sni.as_deref()) {
        Ok(route) => (route, None),
        Err(route::RouteError::Missing) => {
            let (route, password) = password_form(ctx, client, &params, &mut rest).await?;
            (route, Some(password))
        }
        Err(e) => return Err(Some(Refusal::new("08004", "no_route", e.to_string()))),
    };
    let refusal = |e: crate::endpoints::EndpointError| Some(Refusal::new(e.sqlstate(), e.reason(), e.to_string()));
    let guard = ctx.endpoints.open(&route.endpoint).map_err(refusal)?;
    let (host, port) = ctx.endpoints.connect_target(&route.endpoint).await.map_err(refusal)?;
    let connected = tokio::time::timeout(ctx.connect_timeout, TcpStream::connect((host.as_str(), port))).await;
    let mut compute = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Some(Refusal::new("08006", "compute_unreachable", format!("endpoint {} at {host}:{port}: {e}", route.endpoint)))),
        Err(_) => return Err(Some(Refusal::new("08006", "compute_unreachable", format!("endpoint {} at {host}:{port}: connect timed out", route.endpoint)))),
    };
    let _ = compute.set_nodelay(true);
    let mut packet = BytesMut::new();
    let pairs = route.params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    postgres_protocol::message::frontend::startup_message(pairs, &mut packet)
        .map_err(|e| Some(Refusal::new("08P01", "bad_startup", format!("startup parameters: {e}"))))?;
    if password.is_none() {
        packet.extend_from_slice(&rest);
    }
    let unreachable = |e: std::io::Error| Some(Refusal::new("08006", "compute_unreachable", format!("endpoint {}: {e}", route.endpoint)));
    compute.write_all(&packet).await.map_err(unreachable)?;
    let mut from_compute = BytesMut::new();
    if let Some(password) = password {
        log_in_for(ctx, client, &mut compute, &route, &password, &mut from_compute).await?;
        compute.write_all(&rest).await.map_err(unreachable)?;
    }
    Ok((compute, Target { endpoint: route.endpoint, host, port }, guard, from_compute))
}

/// Log in to the compute for a password-form client (within the connect
/// timeout); a refusal by the compute goes to the client as it is.
async fn log_in_for(
    ctx: &ProxyContext,
    client: &mut Client,
    compute: &mut TcpStream,
    route: &route::Route,
    password: &str,
    from_compute: &mut BytesMut,
) -> Result<(), Option<Refusal>> {
    let user = route.params.iter().find(|(k, _)| k == "user").map(|(_, v)| v.as_str()).unwrap_or_default();
    let failed = |detail: String| Some(Refusal::new("08006", "compute_unreachable", format!("endpoint {}: login: {detail}", route.endpoint)));
    match tokio::time::timeout(ctx.connect_timeout, crate::auth::login(compute, user, password, from_compute)).await {
        Err(_) => Err(failed("timed out".into())),
        Ok(Ok(())) => Ok(()),
        Ok(Err(crate::auth::AuthError::Refused(error))) => {
            METRICS.refused.with_label_values(&["auth_failed"]).inc();
            info!(endpoint = route.endpoint, "password-form login refused by the compute");
            let _ = client.write_all(&error).await;
            Err(None)
        }
        Ok(Err(e)) => Err(failed(e.to_string())),
    }
}

/// A startup packet that names no endpoint: ask for the password, which
/// must be `endpoint=NAME;PASSWORD`; returns the route and the password.
async fn password_form(
    ctx: &ProxyContext,
    client: &mut Client,
    params: &std::collections::HashMap<String, String>,
    rest: &mut BytesMut,
) -> Result<(route::Route, String), Option<Refusal>> {
    let text = match tokio::time::timeout(ctx.startup_timeout, crate::auth::ask_password(client, rest)).await {
        Err(_) => return Err(Some(Refusal::new("08P01", "startup_timeout", "no password received in time"))),
        Ok(Err(crate::auth::AuthError::Io(_))) => return Err(None),
        Ok(Err(e)) => return Err(Some(Refusal::new("08P01", "bad_startup", e.to_string()))),
        Ok(Ok(text)) => text,
    };
    let no_route = |e: route::RouteError| Some(Refusal::new("08004", "no_route", e.to_string()));
    let (name, password) = route::split_password_form(&text).ok_or_else(|| no_route(route::RouteError::Missing))?;
    let route = route::route_named(params, name).map_err(no_route)?;
    Ok((route, password.to_string()))
}

/// Relay both ways until the compute's first ReadyForQuery (authentication
/// and start-up), reading the compute's messages whole (starting with those
/// already in `from_compute`) to find its BackendKeyData. Returns that key
/// (process id, secret).
async fn relay_until_ready(client: &mut Client, compute: &mut TcpStream, mut from_compute: BytesMut) -> std::io::Result<Option<(i32, i32)>> {
    let mut from_client = vec![0u8; 8192];
    let mut key = None;
    loop {
        while let Some((tag, body)) = split_message(&mut from_compute) {
            if tag == b'K' && body.len() == 13 {
                let field = |at: usize| i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
                key = Some((field(5), field(9)));
            }
            client.write_all(&body).await?;
            if tag == b'Z' {
                client.write_all(&from_compute).await?;
                return Ok(key);
            }
        }
        tokio::select! {
            n = client.read(&mut from_client) => {
                let n = n?;
                if n == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "client closed"));
                }
                compute.write_all(&from_client[..n]).await?;
            }
            n = compute.read_buf(&mut from_compute) => {
                if n? == 0 {
                    client.write_all(&from_compute).await?;
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "compute closed"));
                }
            }
        }
    }
}

/// One whole backend message (tag and bytes, header included) off `buf`.
fn split_message(buf: &mut BytesMut) -> Option<(u8, BytesMut)> {
    let header = buf.get(..5)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if buf.len() < 1 + len {
        return None;
    }
    let tag = header[0];
    Some((tag, buf.split_to(1 + len)))
}

/// The client's first packet that is not an encryption request, what it
/// sent after it, and the SNI name if it switched to TLS (then `client` is
/// the TLS stream). `None` if it closed first.
async fn read_startup(client: &mut Client, tls: Option<&TlsAcceptor>) -> Result<Option<Startup>, pq_proto::ProtocolError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut sni = None;
    loop {
        while let Some(msg) = FeMessage::parse_startup(&mut buf)? {
            match (msg, tls) {
                (FeMessage::SslRequest, Some(acceptor)) if sni.is_none() && buf.is_empty() => {
                    client.write_all(b"S").await?;
                    let plain = std::mem::replace(client, Box::new(tokio::io::duplex(1).0));
                    let stream = acceptor.accept(plain).await?;
                    sni = Some(stream.get_ref().1.server_name().unwrap_or_default().to_string());
                    *client = Box::new(stream);
                }
                (FeMessage::SslRequest | FeMessage::GssEncRequest, _) => client.write_all(b"N").await?,
                (message, _) => return Ok(Some(Startup { message, rest: buf, sni: sni.filter(|s| !s.is_empty()) })),
            }
        }
        if client.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn refuse(client: &mut Client, refusal: Refusal) {
    METRICS.refused.with_label_values(&[refusal.reason]).inc();
    info!(reason = refusal.reason, "refused: {}", refusal.message);
    let mut buf = BytesMut::new();
    let msg = BeMessage::ErrorResponse { severity: "FATAL", sqlstate: refusal.sqlstate, message: &refusal.message };
    if msg.write(&mut buf).is_ok() {
        let _ = client.write_all(&buf).await;
    }
    let _ = client.shutdown().await;
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}
