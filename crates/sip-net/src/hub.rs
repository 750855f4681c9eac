//! The send side of every transport: UDP sockets by local address and open connections
//! by flow id. Roles send through a `Hub`; they never touch a socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use switchyard_sip::headers::Via;

use crate::transport::{FlowId, Incoming, Target, Transport, response_target};

/// Why a message could not be sent.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("connection {0:?} is closed")]
    FlowClosed(FlowId),
    #[error("no UDP socket bound at {0}")]
    NoSocket(SocketAddr),
    #[error("connection {0:?} is not draining its send queue")]
    FlowCongested(FlowId),
    #[error("UDP send to {dest} failed: {source}")]
    Udp {
        dest: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Flow {
    tx: mpsc::Sender<Bytes>,
    transport: Transport,
    peer: SocketAddr,
}

#[derive(Debug, Default)]
struct Inner {
    udp: RwLock<HashMap<SocketAddr, Arc<UdpSocket>>>,
    flows: Mutex<HashMap<FlowId, Flow>>,
    next_flow: AtomicU64,
}

/// Send handle shared by listeners and roles.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Messages queued per connection before sends fail with `FlowCongested`.
const FLOW_QUEUE: usize = 512;

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    pub(crate) fn add_udp(&self, socket: Arc<UdpSocket>, local: SocketAddr) {
        self.inner
            .udp
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(local, socket);
    }

    pub(crate) fn open_flow(
        &self,
        transport: Transport,
        peer: SocketAddr,
    ) -> (FlowId, mpsc::Receiver<Bytes>) {
        let id = FlowId(self.inner.next_flow.fetch_add(1, Ordering::Relaxed) + 1);
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        self.inner
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Flow {
                    tx,
                    transport,
                    peer,
                },
            );
        (id, rx)
    }

    pub(crate) fn close_flow(&self, id: FlowId) {
        self.inner
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Connections open now.
    pub fn flow_count(&self) -> usize {
        self.inner
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The transport and peer of an open connection.
    pub fn flow_peer(&self, id: FlowId) -> Option<(Transport, SocketAddr)> {
        self.inner
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(|f| (f.transport, f.peer))
    }

    /// Sends one message.
    pub async fn send(&self, target: Target, data: Bytes) -> Result<(), SendError> {
        match target {
            Target::Flow(id) => {
                let tx = self
                    .inner
                    .flows
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)
                    .map(|f| f.tx.clone())
                    .ok_or(SendError::FlowClosed(id))?;
                tx.try_send(data).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => SendError::FlowCongested(id),
                    mpsc::error::TrySendError::Closed(_) => SendError::FlowClosed(id),
                })
            }
            Target::Datagram { local, dest } => {
                let socket = self
                    .inner
                    .udp
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&local)
                    .cloned()
                    .ok_or(SendError::NoSocket(local))?;
                socket
                    .send_to(&data, dest)
                    .await
                    .map(|_| ())
                    .map_err(|source| SendError::Udp { dest, source })
            }
        }
    }

    /// Sends a response to the request `incoming` carried, where RFC 3261 §18.2.2 says.
    pub async fn respond(
        &self,
        incoming: &Incoming,
        top_via: Option<&Via<'_>>,
        data: Bytes,
    ) -> Result<Target, SendError> {
        let target = response_target(
            incoming.transport,
            incoming.source,
            incoming.local,
            incoming.flow,
            top_via,
        );
        self.send(target, data).await.map(|()| target)
    }
}
