//! The transaction driver: owns the sans-I/O [`TransactionLayer`], feeds it what the
//! listeners receive, runs its timers on the tokio clock, transmits what it outputs through
//! the [`Hub`], and hands transaction events to the transaction user (TU) over a channel.
//!
//! ```text
//!  listeners ──Incoming──▶ driver ──TuEvent──▶ TU (the core; the edge runs its own)
//!                            ▲  │
//!        DriverHandle ───────┘  └──▶ Hub (sockets)
//!   (respond, send_request)
//! ```
//!
//! Verdicts that are not transactional (rejections of malformed requests, drops) go to the
//! TU as [`TuEvent::Stateless`]: it answers them without a transaction (RFC 3261 §8.2.7).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use switchyard_sip::Message;
use switchyard_sip::inspect::Inbound;
use switchyard_sip::transaction::{Event, Output, TimerConfig, TransactionLayer, TxError, TxId};

use crate::hub::Hub;
use crate::transport::{Incoming, Target, Transport, response_target};

/// Who a transaction talks to: where its messages go and where they came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub target: Target,
    pub source: SocketAddr,
    pub transport: Transport,
    /// Our socket (or listener, for connections) the peer talks to.
    pub local: SocketAddr,
}

impl Peer {
    /// The peer of a request that arrived as `item`: answers go where RFC 3261 §18.2.2
    /// says (the request's connection, or its top Via with `rport`).
    pub fn of_request(item: &Incoming, msg: &Message) -> Peer {
        let via = msg.top_via().ok();
        Peer {
            target: response_target(
                item.transport,
                item.source,
                item.local,
                item.flow,
                via.as_ref(),
            ),
            source: item.source,
            transport: item.transport,
            local: item.local,
        }
    }

    /// The peer of a response that arrived as `item`: back over its connection, or to
    /// the address it came from.
    pub fn of_response(item: &Incoming) -> Peer {
        Peer {
            target: match item.flow {
                Some(f) => Target::Flow(f),
                None => Target::Datagram {
                    local: item.local,
                    dest: item.source,
                },
            },
            source: item.source,
            transport: item.transport,
            local: item.local,
        }
    }
}

/// What the driver hands the TU.
#[derive(Debug)]
pub enum TuEvent {
    Transaction(Event<Peer>),
    Stateless(Incoming),
}

#[derive(Debug)]
enum Command {
    Respond {
        tx: TxId,
        status: u16,
        bytes: Bytes,
        /// Retransmit a final failure to an INVITE (timer G), or send it once.
        retransmit: bool,
        reply: oneshot::Sender<Result<(), TxError>>,
    },
    SendRequest {
        request: Box<Message>,
        peer: Peer,
        reply: oneshot::Sender<Result<TxId, TxError>>,
    },
}

/// The TU's side: answer server transactions, start client transactions.
#[derive(Debug, Clone)]
pub struct DriverHandle {
    commands: mpsc::Sender<Command>,
}

/// Why a command did not reach the driver or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error("the transaction driver has stopped")]
    Stopped,
    #[error(transparent)]
    Transaction(#[from] TxError),
}

impl DriverHandle {
    /// Sends a response on server transaction `tx`.
    pub async fn respond(&self, tx: TxId, status: u16, bytes: Bytes) -> Result<(), DriverError> {
        self.respond_with(tx, status, bytes, true).await
    }

    /// Sends a response that is never retransmitted on a timer
    /// ([`TransactionLayer::respond_once`]).
    pub async fn respond_once(
        &self,
        tx: TxId,
        status: u16,
        bytes: Bytes,
    ) -> Result<(), DriverError> {
        self.respond_with(tx, status, bytes, false).await
    }

    async fn respond_with(
        &self,
        tx: TxId,
        status: u16,
        bytes: Bytes,
        retransmit: bool,
    ) -> Result<(), DriverError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Respond {
                tx,
                status,
                bytes,
                retransmit,
                reply,
            })
            .await
            .map_err(|_| DriverError::Stopped)?;
        Ok(rx.await.map_err(|_| DriverError::Stopped)??)
    }

    /// Starts a client transaction.
    pub async fn send_request(&self, request: Message, peer: Peer) -> Result<TxId, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::SendRequest {
                request: Box::new(request),
                peer,
                reply,
            })
            .await
            .map_err(|_| DriverError::Stopped)?;
        Ok(rx.await.map_err(|_| DriverError::Stopped)??)
    }
}

/// Starts the driver task; every request opens a server transaction.
pub fn spawn_driver(
    hub: Hub,
    timers: TimerConfig,
    mut incoming: mpsc::Receiver<Incoming>,
    tu: mpsc::Sender<TuEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> DriverHandle {
    let (commands, mut command_rx) = mpsc::channel::<Command>(4096);
    tokio::spawn(async move {
        let mut layer: TransactionLayer<Peer> = TransactionLayer::new(timers);
        let tu_ready = tu.clone();
        let mut to_tu = TuQueue {
            tu,
            backlog: VecDeque::new(),
        };
        loop {
            let deadline = layer.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                // While the TU is behind, nothing new is read: the listeners' queue and
                // then the kernel's buffer hold the rest. Commands and timers are served
                // regardless, so a TU that waits on the driver always gets its answer.
                item = incoming.recv(), if to_tu.backlog.is_empty() => {
                    let Some(item) = item else { break };
                    receive(&mut layer, item, &mut to_tu);
                }
                permit = tu_ready.reserve(), if !to_tu.backlog.is_empty() => {
                    let Ok(permit) = permit else {
                        warn!("transaction user gone");
                        break;
                    };
                    if let Some(event) = to_tu.backlog.pop_front() {
                        permit.send(event);
                    }
                    to_tu.drain();
                }
                cmd = command_rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    let now = Instant::now();
                    match cmd {
                        Command::Respond { tx, status, bytes, retransmit, reply } => {
                            let sent = if retransmit {
                                layer.respond(tx, status, bytes, now)
                            } else {
                                layer.respond_once(tx, status, bytes, now)
                            };
                            let _ = reply.send(sent);
                        }
                        Command::SendRequest { request, peer, reply } => {
                            let reliable = peer.transport.is_stream();
                            let _ = reply.send(layer.send_request(*request, peer, reliable, now));
                        }
                    }
                }
                _ = sleep_until(deadline) => layer.handle_timeout(Instant::now()),
                _ = shutdown.changed() => break,
            }
            flush(&mut layer, &hub, &mut to_tu).await;
        }
        debug!(left = layer.len(), "transaction driver stopped");
    });
    DriverHandle { commands }
}

/// Events on their way to the TU. The driver never waits for the TU to take one: the TU
/// may itself be waiting for the driver (a `respond` or `send_request` reply), and a
/// driver blocked on a full TU channel then never answers it. That cycle wedged the edge
/// for good under a registration storm. Events the channel cannot take yet wait here, in
/// order, and the driver stops reading new input until they are delivered.
struct TuQueue {
    tu: mpsc::Sender<TuEvent>,
    backlog: VecDeque<TuEvent>,
}

impl TuQueue {
    fn push(&mut self, event: TuEvent) {
        if self.backlog.is_empty() {
            match self.tu.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => self.backlog.push_back(event),
                Err(mpsc::error::TrySendError::Closed(_)) => warn!("transaction user gone"),
            }
        } else {
            self.backlog.push_back(event);
        }
    }

    /// Moves what the channel takes now from the backlog into it.
    fn drain(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            match self.tu.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn receive(layer: &mut TransactionLayer<Peer>, item: Incoming, to_tu: &mut TuQueue) {
    let reliable = item.transport.is_stream();
    let peer = match &item.inbound {
        Inbound::Request(msg) => Peer::of_request(&item, msg),
        Inbound::Response(_) => Peer::of_response(&item),
        _ => return to_tu.push(TuEvent::Stateless(item)),
    };
    if let Inbound::Request(msg) | Inbound::Response(msg) = item.inbound {
        layer.receive(msg, peer, reliable, Instant::now());
    }
}

async fn flush(layer: &mut TransactionLayer<Peer>, hub: &Hub, to_tu: &mut TuQueue) {
    while let Some(out) = layer.poll_output() {
        match out {
            Output::Transmit { tx, peer, bytes } => {
                if let Err(e) = hub.send(peer.target, bytes).await {
                    debug!(target = ?peer.target, error = %e, "transmit failed");
                    layer.transport_error(tx);
                }
            }
            Output::Event(e) => to_tu.push(TuEvent::Transaction(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sip::inspect::{Capabilities, inspect_datagram};

    fn register(i: usize) -> Incoming {
        let text = format!(
            "REGISTER sip:t.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKd{i}\r\nMax-Forwards: 70\r\nTo: <sip:{i}@t.test>\r\nFrom: <sip:{i}@t.test>;tag=f{i}\r\nCall-ID: c{i}\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
        );
        Incoming {
            inbound: inspect_datagram(Bytes::from(text), &Capabilities::SWITCHYARD),
            transport: Transport::Udp,
            source: "127.0.0.1:5999".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            flow: None,
            received: std::time::Instant::now(),
        }
    }

    /// The shape that wedged the edge: a TU that answers each request and waits for the
    /// driver's reply, with a TU channel far smaller than the burst. The driver must keep
    /// serving the TU's commands while the TU is behind.
    #[tokio::test]
    async fn a_tu_waiting_on_the_driver_under_a_burst_never_deadlocks_it() {
        const BURST: usize = 500;
        let (in_tx, in_rx) = mpsc::channel(BURST);
        let (tu_tx, mut tu_rx) = mpsc::channel(2);
        let (_stop_tx, stop) = watch::channel(false);
        let driver = spawn_driver(Hub::new(), TimerConfig::default(), in_rx, tu_tx, stop);
        for i in 0..BURST {
            in_tx.send(register(i)).await.unwrap();
        }
        let mut answered = 0;
        let tu = async {
            while answered < BURST {
                match tu_rx.recv().await {
                    Some(TuEvent::Transaction(Event::Request { tx, .. })) => {
                        driver
                            .respond(tx, 200, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"))
                            .await
                            .expect("the driver answers its TU");
                        answered += 1;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), tu)
            .await
            .expect("every request of the burst reaches the TU and is answered");
        assert_eq!(answered, BURST);
    }
}
