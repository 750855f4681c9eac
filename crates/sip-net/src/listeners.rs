//! Binds every configured listener up front (so a taken port fails start-up, before any
//! traffic), then runs the accept and receive loops until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::hub::Hub;
use crate::limits::{ConnectionLimits, LimitsConfig};
use crate::stream::{StreamCtx, run_stream};
use crate::transport::{Incoming, Transport};
use crate::udp::run_udp;
use crate::ws::run_ws;

/// Addresses to listen on, per transport, and the limits that apply.
#[derive(Debug, Clone, Default)]
pub struct ListenConfig {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub ws: Vec<SocketAddr>,
    pub wss: Vec<SocketAddr>,
    /// Needed when `tls` or `wss` is not empty.
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    pub limits: LimitsConfig,
    /// Receive (and send) buffer asked for on each UDP socket, in bytes; 0 keeps the
    /// kernel's default. A burst larger than the buffer is lost before anyone sees it.
    pub udp_buffer: usize,
}

/// The addresses actually bound (port 0 resolved).
#[derive(Debug, Clone, Default)]
pub struct BoundListeners {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub ws: Vec<SocketAddr>,
    pub wss: Vec<SocketAddr>,
}

impl BoundListeners {
    /// Every bound address with its transport.
    pub fn all(&self) -> Vec<(Transport, SocketAddr)> {
        let tag =
            |t: Transport, v: &Vec<SocketAddr>| v.iter().map(move |a| (t, *a)).collect::<Vec<_>>();
        [
            tag(Transport::Udp, &self.udp),
            tag(Transport::Tcp, &self.tcp),
            tag(Transport::Tls, &self.tls),
            tag(Transport::Ws, &self.ws),
            tag(Transport::Wss, &self.wss),
        ]
        .concat()
    }
}

/// Binds every listener, then spawns its loop. Received messages go to `tx`.
pub async fn spawn_listeners(
    config: ListenConfig,
    hub: Hub,
    tx: mpsc::Sender<Incoming>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<BoundListeners> {
    let needs_tls = !config.tls.is_empty() || !config.wss.is_empty();
    let acceptor = match (&config.tls_config, needs_tls) {
        (Some(c), _) => Some(TlsAcceptor::from(c.clone())),
        (None, true) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "TLS/WSS listeners need a certificate",
            ));
        }
        (None, false) => None,
    };
    let mut bound = BoundListeners::default();
    let mut udp_sockets = Vec::new();
    for addr in &config.udp {
        let socket = match bind_udp(*addr) {
            Ok(s) => Arc::new(s),
            Err(e) if no_ipv6_here(addr, &e) => {
                warn!(%addr, error = %e, "IPv6 is not available on this host: listener skipped");
                continue;
            }
            Err(e) => return Err(annotate(e, "udp", addr)),
        };
        let local = socket.local_addr()?;
        if config.udp_buffer > 0 {
            let sizes = crate::udp::size_buffers(&socket, config.udp_buffer);
            if sizes.capped() {
                warn!(%local, wanted = sizes.wanted, granted = sizes.receive,
                    "the kernel capped the UDP receive buffer (raise net.core.rmem_max to absorb larger bursts)");
            } else {
                info!(%local, receive = sizes.receive, send = sizes.send, "UDP buffers sized");
            }
        }
        bound.udp.push(local);
        udp_sockets.push((socket, local));
    }
    let mut tcp_like = Vec::new();
    for (transport, addrs) in [
        (Transport::Tcp, &config.tcp),
        (Transport::Tls, &config.tls),
        (Transport::Ws, &config.ws),
        (Transport::Wss, &config.wss),
    ] {
        for addr in addrs {
            let listener = match bind_tcp(*addr) {
                Ok(l) => l,
                Err(e) if no_ipv6_here(addr, &e) => {
                    warn!(%addr, error = %e, "IPv6 is not available on this host: listener skipped");
                    continue;
                }
                Err(e) => return Err(annotate(e, transport.via_token(), addr)),
            };
            let local = listener.local_addr()?;
            match transport {
                Transport::Tcp => bound.tcp.push(local),
                Transport::Tls => bound.tls.push(local),
                Transport::Ws => bound.ws.push(local),
                Transport::Wss => bound.wss.push(local),
                Transport::Udp => unreachable!("UDP is bound above"),
            }
            tcp_like.push((transport, listener, local));
        }
    }
    for (socket, local) in udp_sockets {
        hub.add_udp(socket.clone(), local);
        info!(transport = "UDP", %local, "listening");
        tokio::spawn(run_udp(socket, local, tx.clone(), shutdown.clone()));
    }
    let limits = ConnectionLimits::new(config.limits.clone());
    for (transport, listener, local) in tcp_like {
        info!(transport = %transport, %local, "listening");
        tokio::spawn(accept_loop(
            transport,
            listener,
            local,
            acceptor.clone(),
            limits.clone(),
            hub.clone(),
            tx.clone(),
            shutdown.clone(),
        ));
    }
    Ok(bound)
}

/// A UDP socket on `addr`. An IPv6 socket takes IPv6 only (`IPV6_V6ONLY`), so `[::]:5060`
/// and `0.0.0.0:5060` can both be bound, each with its own socket.
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A TCP listener on `addr` (IPv6 only for an IPv6 address, as for UDP).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The host has no IPv6 at all (a kernel without it, or a container with it off): the
/// default IPv6 listeners are skipped with a warning rather than failing the start.
fn no_ipv6_here(addr: &SocketAddr, e: &std::io::Error) -> bool {
    addr.is_ipv6()
        && addr.ip().is_unspecified()
        && matches!(
            e.raw_os_error(),
            Some(97 /* EAFNOSUPPORT */) | Some(99 /* EADDRNOTAVAIL */)
        )
}

fn annotate(e: std::io::Error, what: &str, addr: &SocketAddr) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("cannot bind {what} on {addr}: {e}"))
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    transport: Transport,
    listener: TcpListener,
    local: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    hub: Hub,
    tx: mpsc::Sender<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, source) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    warn!(%local, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let permit = match limits.admit(source.ip()) {
            Ok(p) => p,
            Err(why) => {
                warn!(%source, transport = %transport, reason = why, "connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = StreamCtx {
            hub: hub.clone(),
            tx: tx.clone(),
            limits: limits.config().clone(),
            transport,
            source,
            local,
            shutdown: shutdown.clone(),
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match transport {
                Transport::Tcp => run_stream(stream, ctx, permit).await,
                Transport::Ws => run_ws(stream, ctx, permit).await,
                Transport::Tls | Transport::Wss => {
                    let Some(tls) = tls_handshake(acceptor, stream, &ctx).await else {
                        return;
                    };
                    if transport == Transport::Tls {
                        run_stream(tls, ctx, permit).await;
                    } else {
                        run_ws(tls, ctx, permit).await;
                    }
                }
                Transport::Udp => unreachable!("UDP has no accept loop"),
            }
        });
    }
}

async fn tls_handshake(
    acceptor: Option<TlsAcceptor>,
    stream: TcpStream,
    ctx: &StreamCtx,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = acceptor?;
    match tokio::time::timeout(ctx.limits.message_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            debug!(source = %ctx.source, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(source = %ctx.source, "TLS handshake timed out");
            None
        }
    }
}
