//! One client connection: read its startup packet (refusing SSL and GSS
//! encryption with `N` until TLS is configured), pick the endpoint, wake it
//! if suspended, connect to its compute, hand the startup packet on without
//! the routing option, then relay bytes both ways until either side closes.
//! Authentication is between the client and the compute: the proxy never
//! sees a password.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn, Instrument};

use crate::endpoints::Endpoints;
use crate::metrics::METRICS;
use crate::route;

pub struct ProxyContext {
    pub endpoints: Arc<Endpoints>,
    /// Time a client has to send its startup packet.
    pub startup_timeout: Duration,
    /// Time to open the TCP connection to a running compute.
    pub connect_timeout: Duration,
    pub connections: Arc<tokio::sync::Semaphore>,
    pub max_connections: usize,
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

async fn handle(ctx: Arc<ProxyContext>, mut client: TcpStream, peer: SocketAddr) {
    METRICS.connections.inc();
    let Ok(_permit) = Arc::clone(&ctx.connections).try_acquire_owned() else {
        let msg = format!("too many connections to the proxy (limit {})", ctx.max_connections);
        return refuse(&mut client, Refusal::new("53300", "too_many_connections", msg)).await;
    };
    METRICS.active_connections.inc();
    let _active = scopeguard(|| METRICS.active_connections.dec());
    let _ = client.set_nodelay(true);
    match connect(&ctx, &mut client).await {
        Ok((mut compute, endpoint, _guard)) => {
            let span = tracing::info_span!("relay", %endpoint);
            async {
                info!(%peer, "connected to the compute");
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
async fn connect(
    ctx: &ProxyContext,
    client: &mut TcpStream,
) -> Result<(TcpStream, String, crate::endpoints::ConnectionGuard), Option<Refusal>> {
    let (startup, rest) = match tokio::time::timeout(ctx.startup_timeout, read_startup(client)).await {
        Err(_) => return Err(Some(Refusal::new("08P01", "startup_timeout", "no startup packet received in time"))),
        Ok(Err(e)) => return Err(Some(Refusal::new("08P01", "bad_startup", format!("invalid startup packet: {e}")))),
        Ok(Ok(None)) => return Err(None),
        Ok(Ok(Some(s))) => s,
    };
    let params = match startup {
        FeMessage::StartupMessage(m) => m.params,
        FeMessage::CancelRequest { .. } => {
            // The proxy does not track backend keys yet: nothing to cancel.
            info!("cancel request ignored");
            return Err(None);
        }
        other => return Err(Some(Refusal::new("08P01", "bad_startup", format!("unexpected {other:?} before startup")))),
    };
    let route = route::route(&params, None).map_err(|e| Some(Refusal::new("08004", "no_route", e.to_string())))?;
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
    packet.extend_from_slice(&rest);
    if let Err(e) = compute.write_all(&packet).await {
        return Err(Some(Refusal::new("08006", "compute_unreachable", format!("endpoint {}: {e}", route.endpoint))));
    }
    Ok((compute, route.endpoint, guard))
}

/// The client's first packet that is not an encryption request, and what it
/// sent after it. `None` if it closed first.
async fn read_startup(client: &mut TcpStream) -> Result<Option<(FeMessage, BytesMut)>, pq_proto::ProtocolError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        while let Some(msg) = FeMessage::parse_startup(&mut buf)? {
            match msg {
                FeMessage::SslRequest | FeMessage::GssEncRequest => client.write_all(b"N").await?,
                other => return Ok(Some((other, buf))),
            }
        }
        if client.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn refuse(client: &mut TcpStream, refusal: Refusal) {
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
