//! UDP listener: one datagram is one message (RFC 3261 §18.3).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use switchyard_sip::inspect::{Capabilities, Inbound, inspect_datagram};

use crate::transport::{Incoming, Transport};

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
        };
        if let Err(e) = tx.try_send(incoming) {
            // Shedding here keeps a burst from queueing without bound; the client retransmits.
            warn!(%source, "dropping datagram, dispatcher queue full: {}", e);
        }
    }
}
