//! UDP listener: one datagram is one message (RFC 3261 §18.3).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use switchyard_sip::inspect::{Capabilities, Inbound, inspect_datagram};

use crate::transport::{Incoming, Transport};

/// Receive and send buffer sizes a socket asked for and got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSizes {
    pub wanted: usize,
    pub receive: usize,
    pub send: usize,
}

impl BufferSizes {
    /// The kernel granted less than asked (raise `net.core.rmem_max` to get more).
    pub fn capped(&self) -> bool {
        self.receive < self.wanted
    }
}

/// Asks the kernel for `wanted` bytes of receive and send buffer on `socket` and reads
/// back what it granted. Linux caps the request at `net.core.rmem_max`/`wmem_max` and
/// reports double the usable size; the figures here are the usable halves.
pub fn size_buffers(socket: &UdpSocket, wanted: usize) -> BufferSizes {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_recv_buffer_size(wanted);
    let _ = s.set_send_buffer_size(wanted);
    let usable =
        |n: std::io::Result<usize>| n.map(|n| if cfg!(target_os = "linux") { n / 2 } else { n });
    BufferSizes {
        wanted,
        receive: usable(s.recv_buffer_size()).unwrap_or(0),
        send: usable(s.send_buffer_size()).unwrap_or(0),
    }
}

pub(crate) async fn run_udp(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    tx: mpsc::Sender<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, source) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    // ICMP port unreachable from an earlier send surfaces here on Linux.
                    debug!(%local, error = %e, "udp receive error");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let received = std::time::Instant::now();
        let inbound =
            inspect_datagram(Bytes::copy_from_slice(&buf[..n]), &Capabilities::SWITCHYARD);
        if matches!(inbound, Inbound::KeepAlive) {
            continue;
        }
        let incoming = Incoming {
            inbound,
            transport: Transport::Udp,
            source,
            local,
            flow: None,
            received,
        };
        if let Err(e) = tx.try_send(incoming) {
            // Shedding here keeps a burst from queueing without bound; the client retransmits.
            warn!(%source, "dropping datagram, dispatcher queue full: {}", e);
        }
    }
}
