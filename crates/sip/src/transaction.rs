//! RFC 3261 §17 transactions with the RFC 6026 corrections, as a sans-I/O state machine.
//!
//! Inputs are received messages, commands from the transaction user (TU: send a request,
//! answer a request), transport errors and the current instant. Outputs are messages to
//! transmit, events for the TU and the next deadline ([`TransactionLayer::poll_timeout`]).
//! Time is never read here: every call takes `now`.
//!
//! ```text
//!              receive(msg, peer, now) ─┐        ┌─ send_request / respond (TU)
//!                                        ▼        ▼
//!                                 ┌───────────────────────┐
//!   handle_timeout(now) ─────────▶│   TransactionLayer     │──▶ poll_output(): Transmit | Event
//!                                 └───────────────────────┘──▶ poll_timeout(): next deadline
//! ```
//!
//! States and timers: client INVITE (Calling, Proceeding, Accepted, Completed; timers A, B,
//! D, M), client non-INVITE (Trying, Proceeding, Completed; E, F, K), server INVITE
//! (Proceeding, Accepted, Completed, Confirmed; G, H, I, L, and the 200 ms `100 Trying`),
//! server non-INVITE (Trying, Proceeding, Completed; J). Retransmission timers run only
//! over unreliable transports; wait timers are zero over reliable ones.
//!
//! Matching follows §17.1.3 (responses: top Via branch and CSeq method) and §17.2.3
//! (requests: branch, sent-by and method, ACK matching INVITE), with the RFC 2543 fallback
//! for branches without the `z9hG4bK` cookie (Request-URI, Call-ID, From tag, CSeq and top
//! Via). A CANCEL is its own transaction; [`TransactionLayer::invite_for_cancel`] finds the
//! INVITE it cancels (§9.2).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use crate::build::{RequestBuilder, ResponseBuilder};
use crate::header_name::HeaderName;
use crate::message::Message;
use crate::method::Method;

/// Timer base values (RFC 3261 §17.1.1.1 and table 4).
#[derive(Debug, Clone, Copy)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// Delay before a server INVITE transaction sends `100 Trying` on its own.
    pub trying_delay: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            trying_delay: Duration::from_millis(200),
        }
    }
}

/// A transaction's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u64);

/// Transaction states (RFC 3261 figures 5-8, RFC 6026 `Accepted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Calling,
    Trying,
    Proceeding,
    Accepted,
    Completed,
    Confirmed,
    Terminated,
}

/// The four kinds of transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClientInvite,
    ClientNonInvite,
    ServerInvite,
    ServerNonInvite,
}

/// Named timers of RFC 3261 table 4 and RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    A,
    B,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
    L,
    M,
    /// Send `100 Trying` if the TU has not answered an INVITE yet.
    Trying,
}

/// What the layer tells the TU.
#[derive(Debug)]
pub enum Event<P> {
    /// A new request: a server transaction was created for it.
    Request { tx: TxId, msg: Message, peer: P },
    /// An ACK that no server transaction absorbed (the ACK for a 2xx).
    Ack { msg: Message, peer: P },
    /// A response for a client transaction (provisional, final, and 2xx retransmissions
    /// in the Accepted state).
    Response { tx: TxId, msg: Message },
    /// A response that matched no client transaction.
    StrayResponse { msg: Message, peer: P },
    /// Timer B, F (no final response) or H (no ACK) fired.
    Timeout { tx: TxId },
    /// The transport failed to send for this transaction.
    TransportError { tx: TxId },
    /// The transaction is gone from the table.
    Terminated { tx: TxId },
}

/// Something to do.
#[derive(Debug)]
pub enum Output<P> {
    /// Send `bytes` to `peer` for transaction `tx` (report a failure with
    /// [`TransactionLayer::transport_error`]).
    Transmit {
        tx: TxId,
        peer: P,
        bytes: Bytes,
    },
    Event(Event<P>),
}

/// A TU command that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TxError {
    #[error("no transaction {0:?}")]
    Unknown(TxId),
    #[error("transaction {0:?} is not a server transaction")]
    NotServer(TxId),
    #[error("transaction {0:?} already sent a final response")]
    AlreadyFinal(TxId),
    #[error("cannot key the request: {0}")]
    Unkeyable(String),
    #[error("status {0} is not a response status")]
    BadStatus(u16),
    #[error("a transaction with this key exists already")]
    Duplicate,
}

#[derive(Debug)]
struct Tx<P> {
    kind: Kind,
    state: State,
    key: String,
    reliable: bool,
    peer: P,
    request: Message,
    /// Server: the last response sent, resent on request retransmissions.
    last_response: Option<Bytes>,
    /// Client INVITE: the ACK sent for a non-2xx final, resent on its retransmissions.
    ack: Option<Bytes>,
    /// Current retransmission interval (A, E, G).
    interval: Duration,
    timers: Vec<(Timer, Instant)>,
}

/// The transaction table with its timers.
#[derive(Debug)]
pub struct TransactionLayer<P> {
    config: TimerConfig,
    txs: HashMap<TxId, Tx<P>>,
    by_key: HashMap<String, TxId>,
    timers: BTreeSet<(Instant, TxId, Timer)>,
    outputs: VecDeque<Output<P>>,
    next_id: u64,
}

fn is_invite(m: &Method) -> bool {
    *m == Method::Invite
}

/// The §17.2.3 key of a request (ACK keyed like the INVITE it acknowledges).
pub fn server_key(msg: &Message) -> Result<String, String> {
    let via = msg.top_via().map_err(|e| e.to_string())?;
    let cseq = msg.cseq().map_err(|e| e.to_string())?;
    let method = match msg.method() {
        Some(Method::Ack) => Method::Invite,
        Some(m) => m.clone(),
        None => return Err("not a request".into()),
    };
    let sent_by = via.sent_by();
    if via.has_rfc3261_branch() {
        // Built by hand: this runs for every request, and `format!` cost more than the
        // lookup the key serves.
        let branch = via.branch().unwrap_or_default();
        let method = method.as_str();
        let mut key = String::with_capacity(4 + branch.len() + sent_by.len() + method.len());
        key.push_str("s|");
        key.push_str(branch);
        key.push('|');
        key.extend(sent_by.chars().map(|c| c.to_ascii_lowercase()));
        key.push('|');
        key.push_str(method);
        Ok(key)
    } else {
        let sent_by = sent_by.to_ascii_lowercase();
        // RFC 2543: no reliable branch; key on the request's identity instead.
        let from_tag = msg
            .from_header()
            .ok()
            .and_then(|f| f.tag())
            .unwrap_or_default();
        Ok(format!(
            "s2543|{}|{}|{}|{}|{}|{}|{}",
            msg.request_uri_str().unwrap_or_default(),
            msg.call_id().unwrap_or_default(),
            from_tag,
            cseq.seq,
            method,
            sent_by,
            via.branch().unwrap_or_default()
        ))
    }
}

/// The §17.1.3 key of a response or of the request a client transaction sent.
pub fn client_key(msg: &Message) -> Result<String, String> {
    let via = msg.top_via().map_err(|e| e.to_string())?;
    let cseq = msg.cseq().map_err(|e| e.to_string())?;
    let branch = via.branch().ok_or("top Via has no branch")?;
    Ok(format!("c|{}|{}", branch, cseq.method))
}

impl<P: Clone + Debug> TransactionLayer<P> {
    pub fn new(config: TimerConfig) -> Self {
        TransactionLayer {
            config,
            txs: HashMap::new(),
            by_key: HashMap::new(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Transactions in the table.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn state(&self, tx: TxId) -> Option<State> {
        self.txs.get(&tx).map(|t| t.state)
    }

    pub fn kind(&self, tx: TxId) -> Option<Kind> {
        self.txs.get(&tx).map(|t| t.kind)
    }

    /// The request a transaction was created for.
    pub fn request(&self, tx: TxId) -> Option<&Message> {
        self.txs.get(&tx).map(|t| &t.request)
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.outputs.pop_front()
    }

    /// The earliest armed timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().next().map(|(at, _, _)| *at)
    }

    /// The INVITE server transaction a CANCEL request cancels (§9.2), if any.
    pub fn invite_for_cancel(&self, cancel: &Message) -> Option<TxId> {
        let key = server_key(cancel).ok()?;
        let invite_key = key.replacen("|CANCEL", "|INVITE", 1);
        let id = *self.by_key.get(&invite_key)?;
        (self.txs.get(&id)?.kind == Kind::ServerInvite).then_some(id)
    }

    fn new_id(&mut self) -> TxId {
        self.next_id += 1;
        TxId(self.next_id)
    }

    fn arm(&mut self, id: TxId, timer: Timer, at: Instant) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        if let Some(slot) = tx.timers.iter_mut().find(|(t, _)| *t == timer) {
            self.timers.remove(&(slot.1, id, timer));
            slot.1 = at;
        } else {
            tx.timers.push((timer, at));
        }
        self.timers.insert((at, id, timer));
    }

    fn disarm(&mut self, id: TxId, timer: Timer) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        if let Some(pos) = tx.timers.iter().position(|(t, _)| *t == timer) {
            let (_, at) = tx.timers.swap_remove(pos);
            self.timers.remove(&(at, id, timer));
        }
    }

    fn terminate(&mut self, id: TxId) {
        if let Some(tx) = self.txs.remove(&id) {
            for (timer, at) in tx.timers {
                self.timers.remove(&(at, id, timer));
            }
            if self.by_key.get(&tx.key) == Some(&id) {
                self.by_key.remove(&tx.key);
            }
            self.outputs
                .push_back(Output::Event(Event::Terminated { tx: id }));
        }
    }

    fn transmit(&mut self, tx: TxId, peer: P, bytes: Bytes) {
        self.outputs.push_back(Output::Transmit { tx, peer, bytes });
    }

    fn event(&mut self, e: Event<P>) {
        self.outputs.push_back(Output::Event(e));
    }

    /// Starts a client transaction for `request` (not ACK: an ACK for a 2xx is sent by the
    /// TU directly). `reliable` is true over TCP, TLS and WebSocket.
    pub fn send_request(
        &mut self,
        request: Message,
        peer: P,
        reliable: bool,
        now: Instant,
    ) -> Result<TxId, TxError> {
        let method = request
            .method()
            .cloned()
            .ok_or_else(|| TxError::Unkeyable("not a request".into()))?;
        if method == Method::Ack {
            return Err(TxError::Unkeyable("ACK is not a transaction".into()));
        }
        let key = client_key(&request).map_err(TxError::Unkeyable)?;
        if self.by_key.contains_key(&key) {
            return Err(TxError::Duplicate);
        }
        let id = self.new_id();
        let kind = if is_invite(&method) {
            Kind::ClientInvite
        } else {
            Kind::ClientNonInvite
        };
        let bytes = request.to_bytes();
        self.txs.insert(
            id,
            Tx {
                kind,
                state: if kind == Kind::ClientInvite {
                    State::Calling
                } else {
                    State::Trying
                },
                key: key.clone(),
                reliable,
                peer: peer.clone(),
                request,
                last_response: None,
                ack: None,
                interval: self.config.t1,
                timers: Vec::new(),
            },
        );
        self.by_key.insert(key, id);
        self.transmit(id, peer, bytes);
        let t1 = self.config.t1;
        match kind {
            Kind::ClientInvite => {
                if !reliable {
                    self.arm(id, Timer::A, now + t1);
                }
                self.arm(id, Timer::B, now + 64 * t1);
            }
            _ => {
                if !reliable {
                    self.arm(id, Timer::E, now + t1);
                }
                self.arm(id, Timer::F, now + 64 * t1);
            }
        }
        Ok(id)
    }

    /// Sends a response on a server transaction. `status` is the response's status code.
    pub fn respond(
        &mut self,
        id: TxId,
        status: u16,
        bytes: Bytes,
        now: Instant,
    ) -> Result<(), TxError> {
        self.respond_with(id, status, bytes, now, true)
    }

    /// As [`Self::respond`], but a final failure to an INVITE is sent once, never
    /// retransmitted on timer G: for answers to senders nobody vouches for (a `481` to an
    /// unknown dialog), so that no one can aim a stream of answers at an address by
    /// forging it as a source. Retransmissions of the request still get the answer again,
    /// one for one.
    pub fn respond_once(
        &mut self,
        id: TxId,
        status: u16,
        bytes: Bytes,
        now: Instant,
    ) -> Result<(), TxError> {
        self.respond_with(id, status, bytes, now, false)
    }

    fn respond_with(
        &mut self,
        id: TxId,
        status: u16,
        bytes: Bytes,
        now: Instant,
        retransmit: bool,
    ) -> Result<(), TxError> {
        if !(100..=699).contains(&status) {
            return Err(TxError::BadStatus(status));
        }
        let config = self.config;
        let tx = self.txs.get_mut(&id).ok_or(TxError::Unknown(id))?;
        let (kind, state, reliable, peer) = (tx.kind, tx.state, tx.reliable, tx.peer.clone());
        match (kind, state) {
            (Kind::ServerInvite, State::Proceeding) => {
                tx.last_response = Some(bytes.clone());
                self.transmit(id, peer, bytes);
                self.disarm(id, Timer::Trying);
                if status < 200 {
                    return Ok(());
                }
                if status < 300 {
                    // RFC 6026: Accepted absorbs INVITE retransmissions; the TU
                    // retransmits the 2xx itself until the ACK comes.
                    self.set_state(id, State::Accepted);
                    self.arm(id, Timer::L, now + 64 * config.t1);
                } else {
                    self.set_state(id, State::Completed);
                    if !reliable && retransmit {
                        self.arm(id, Timer::G, now + config.t1);
                    }
                    self.arm(id, Timer::H, now + 64 * config.t1);
                }
                Ok(())
            }
            (Kind::ServerInvite, State::Accepted) if (200..300).contains(&status) => {
                // 2xx retransmissions from the TU pass straight to the transport.
                self.transmit(id, peer, bytes);
                Ok(())
            }
            (Kind::ServerNonInvite, State::Trying | State::Proceeding) => {
                tx.last_response = Some(bytes.clone());
                self.transmit(id, peer, bytes);
                if status < 200 {
                    self.set_state(id, State::Proceeding);
                } else {
                    self.set_state(id, State::Completed);
                    let wait = if reliable {
                        Duration::ZERO
                    } else {
                        64 * config.t1
                    };
                    self.arm(id, Timer::J, now + wait);
                }
                Ok(())
            }
            (Kind::ServerInvite | Kind::ServerNonInvite, _) => Err(TxError::AlreadyFinal(id)),
            _ => Err(TxError::NotServer(id)),
        }
    }

    fn set_state(&mut self, id: TxId, state: State) {
        if let Some(tx) = self.txs.get_mut(&id) {
            tx.state = state;
        }
    }

    /// The transport could not send for `id` (connection refused, ICMP unreachable...).
    pub fn transport_error(&mut self, id: TxId) {
        if self.txs.contains_key(&id) {
            self.event(Event::TransportError { tx: id });
            self.terminate(id);
        }
    }

    /// A message arrived from `peer` over a transport that is `reliable` or not.
    pub fn receive(&mut self, msg: Message, peer: P, reliable: bool, now: Instant) {
        if msg.is_request() {
            self.receive_request(msg, peer, reliable, now);
        } else {
            self.receive_response(msg, peer, now);
        }
    }

    fn receive_request(&mut self, msg: Message, peer: P, reliable: bool, now: Instant) {
        let Ok(key) = server_key(&msg) else {
            // Not keyable: hand it up; the TU answers statelessly or drops it.
            let id = self.new_id();
            self.event(Event::Request { tx: id, msg, peer });
            return;
        };
        let is_ack = msg.method() == Some(&Method::Ack);
        if let Some(&id) = self.by_key.get(&key) {
            let tx = &self.txs[&id];
            let (kind, state, resend) = (tx.kind, tx.state, tx.last_response.clone());
            let tx_peer = tx.peer.clone();
            if is_ack {
                match (kind, state) {
                    (Kind::ServerInvite, State::Completed) => {
                        self.disarm(id, Timer::G);
                        self.disarm(id, Timer::H);
                        self.set_state(id, State::Confirmed);
                        let wait = if self.txs[&id].reliable {
                            Duration::ZERO
                        } else {
                            self.config.t4
                        };
                        self.arm(id, Timer::I, now + wait);
                    }
                    (Kind::ServerInvite, State::Confirmed) => {}
                    // An ACK with the INVITE's branch in Accepted (RFC 2543-style clients):
                    // it acknowledges the 2xx, so it belongs to the TU.
                    _ => self.event(Event::Ack { msg, peer }),
                }
                return;
            }
            // A retransmitted request.
            match state {
                State::Proceeding | State::Completed => {
                    if let Some(bytes) = resend {
                        self.transmit(id, tx_peer, bytes);
                    }
                }
                _ => {} // Trying (non-INVITE), Accepted, Confirmed: absorbed.
            }
            return;
        }
        if is_ack {
            self.event(Event::Ack { msg, peer });
            return;
        }
        let id = self.new_id();
        let invite = msg.method().is_some_and(is_invite);
        let kind = if invite {
            Kind::ServerInvite
        } else {
            Kind::ServerNonInvite
        };
        self.txs.insert(
            id,
            Tx {
                kind,
                state: if invite {
                    State::Proceeding
                } else {
                    State::Trying
                },
                key: key.clone(),
                reliable,
                peer: peer.clone(),
                request: msg.clone(),
                last_response: None,
                ack: None,
                interval: self.config.t1,
                timers: Vec::new(),
            },
        );
        self.by_key.insert(key, id);
        if invite {
            self.arm(id, Timer::Trying, now + self.config.trying_delay);
        }
        self.event(Event::Request { tx: id, msg, peer });
    }

    fn receive_response(&mut self, msg: Message, peer: P, now: Instant) {
        let Some(status) = msg.status() else { return };
        let id = client_key(&msg)
            .ok()
            .and_then(|k| self.by_key.get(&k).copied());
        let Some(id) = id else {
            self.event(Event::StrayResponse { msg, peer });
            return;
        };
        let config = self.config;
        let tx = &self.txs[&id];
        let (kind, state, reliable) = (tx.kind, tx.state, tx.reliable);
        match kind {
            Kind::ClientInvite => match (state, status) {
                (State::Calling | State::Proceeding, 100..=199) => {
                    self.disarm(id, Timer::A);
                    self.set_state(id, State::Proceeding);
                    self.event(Event::Response { tx: id, msg });
                }
                (State::Calling | State::Proceeding, 200..=299) => {
                    self.disarm(id, Timer::A);
                    self.disarm(id, Timer::B);
                    self.set_state(id, State::Accepted);
                    self.arm(id, Timer::M, now + 64 * config.t1);
                    self.event(Event::Response { tx: id, msg });
                }
                (State::Accepted, 200..=299) => self.event(Event::Response { tx: id, msg }),
                (State::Calling | State::Proceeding, _) if status >= 300 => {
                    self.disarm(id, Timer::A);
                    self.disarm(id, Timer::B);
                    let ack = self.build_ack(id, &msg);
                    let peer = self.txs[&id].peer.clone();
                    self.transmit(id, peer, ack.clone());
                    if let Some(tx) = self.txs.get_mut(&id) {
                        tx.ack = Some(ack);
                    }
                    self.set_state(id, State::Completed);
                    let wait = if reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32)
                    };
                    self.arm(id, Timer::D, now + wait);
                    self.event(Event::Response { tx: id, msg });
                }
                (State::Completed, _) if status >= 300 => {
                    // A retransmitted final: resend the ACK, do not bother the TU.
                    if let Some(ack) = self.txs[&id].ack.clone() {
                        let peer = self.txs[&id].peer.clone();
                        self.transmit(id, peer, ack);
                    }
                }
                _ => {}
            },
            Kind::ClientNonInvite => match (state, status) {
                (State::Trying | State::Proceeding, 100..=199) => {
                    self.set_state(id, State::Proceeding);
                    self.event(Event::Response { tx: id, msg });
                }
                (State::Trying | State::Proceeding, _) => {
                    self.disarm(id, Timer::E);
                    self.disarm(id, Timer::F);
                    self.set_state(id, State::Completed);
                    let wait = if reliable { Duration::ZERO } else { config.t4 };
                    self.arm(id, Timer::K, now + wait);
                    self.event(Event::Response { tx: id, msg });
                }
                _ => {} // Completed: retransmissions absorbed.
            },
            _ => self.event(Event::StrayResponse { msg, peer }),
        }
    }

    /// §17.1.1.3: the ACK for a non-2xx final response, built by the transaction.
    fn build_ack(&self, id: TxId, response: &Message) -> Bytes {
        let req = &self.txs[&id].request;
        let mut b = RequestBuilder::new(Method::Ack, req.request_uri_str().unwrap_or_default());
        if let Some(via) = req.values(HeaderName::Via).next() {
            b = b.header("Via", via);
        }
        for route in req.header_rows(HeaderName::Route) {
            b = b.header("Route", route);
        }
        b = b
            .header("Max-Forwards", "70")
            .header("From", req.header(HeaderName::From).unwrap_or_default())
            .header("To", response.header(HeaderName::To).unwrap_or_default())
            .header(
                "Call-ID",
                req.header(HeaderName::CallId).unwrap_or_default(),
            );
        let seq = req.cseq().map(|c| c.seq).unwrap_or_default();
        b.header("CSeq", format!("{seq} ACK")).build()
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id, timer)) = self.timers.iter().next() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id, timer));
            let armed = self
                .txs
                .get_mut(&id)
                .and_then(|tx| {
                    tx.timers
                        .iter()
                        .position(|(t, a)| *t == timer && *a == at)
                        .map(|p| tx.timers.swap_remove(p))
                })
                .is_some();
            if armed {
                self.fire(id, timer, now);
            }
        }
    }

    fn fire(&mut self, id: TxId, timer: Timer, now: Instant) {
        let config = self.config;
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        match timer {
            Timer::A | Timer::E => {
                let bytes = tx.request.to_bytes();
                let peer = tx.peer.clone();
                tx.interval = match (timer, tx.state) {
                    (Timer::E, State::Proceeding) => config.t2,
                    (Timer::E, _) => (tx.interval * 2).min(config.t2),
                    _ => tx.interval * 2,
                };
                let next = now + tx.interval;
                self.transmit(id, peer, bytes);
                self.arm(id, timer, next);
            }
            Timer::G => {
                tx.interval = (tx.interval * 2).min(config.t2);
                let next = now + tx.interval;
                if let Some(bytes) = tx.last_response.clone() {
                    let peer = tx.peer.clone();
                    self.transmit(id, peer, bytes);
                }
                self.arm(id, Timer::G, next);
            }
            Timer::B | Timer::F | Timer::H => {
                self.event(Event::Timeout { tx: id });
                self.terminate(id);
            }
            Timer::D | Timer::I | Timer::J | Timer::K | Timer::L | Timer::M => self.terminate(id),
            Timer::Trying => {
                if tx.state == State::Proceeding && tx.last_response.is_none() {
                    let trying =
                        ResponseBuilder::for_request(&tx.request, 100, "Trying", "").build();
                    tx.last_response = Some(trying.clone());
                    let peer = tx.peer.clone();
                    self.transmit(id, peer, trying);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
