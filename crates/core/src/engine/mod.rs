//! The call engine as a state machine: no I/O, no clock of its own.
//!
//! Inputs come in through [`Engine::handle_sip`] (requests, ACKs, the answers to the
//! requests it sent), [`Engine::handle_lookup`] (routing steps), [`Engine::handle_media`]
//! (the media node's answers) and [`Engine::handle_timeout`], each with the [`Clock`] of
//! that moment; what to do comes out of [`Engine::poll_output`], and when to call again
//! out of [`Engine::poll_timeout`]. The shell ([`crate::spawn_core`]) runs the outputs
//! concurrently: a lookup or media request of one call never holds up another call.
//! Tests drive it on a virtual clock (`tests` below).
//!
//! Every request the engine sends carries a [`ReqId`] it chose; every media request
//! whose answer matters a [`JobId`]; every lookup the call's key. An answer for a call
//! that ended meanwhile finds nothing and is dropped (a dialog it would open is hung up).
//!
//! The flows live in their own modules: `setup` (a new call until it is answered or
//! fails), `in_dialog` (requests of an established call, re-INVITEs), `transfer` (REFER,
//! blind and attended), `timers`, `ending` (hang-ups, media teardown, the CDR).

mod call;
mod ending;
pub mod handoff;
mod in_dialog;
pub mod recovery;
mod setup;
mod timers;
mod transfer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::{debug, info};

use switchyard_media_control::{Leg, MediaError, Reply, Request};
use switchyard_sip::HeaderName;
use switchyard_sip::Message;
use switchyard_sip::Method;
use switchyard_sip::build::ResponseBuilder;
use switchyard_sip::seal::SealKey;
use switchyard_sip::transaction::TxId;
use switchyard_sip_net::{Peer, Target as SendTarget};
use switchyard_store::{Cdr, TenantConfig};
use switchyard_types::TenantId;

use crate::dialog::random_token;
use crate::metrics::CallMetrics;
use crate::routing::{Forwarded, Refusal, Reroute, RouteRequest, Routed};

pub(crate) use call::*;

use crate::{ALLOW, DRAIN_LIMIT};

/// The engine's idea of now: a monotonic instant for timers and the wall time for CDRs
/// and time conditions. Tests advance both together.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub at: Instant,
    pub unix_ms: i64,
}

impl Clock {
    /// The machine's clock.
    pub fn now() -> Clock {
        Clock {
            at: Instant::now(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        }
    }

    /// `d` later.
    pub fn after(self, d: Duration) -> Clock {
        Clock {
            at: self.at + d,
            unix_ms: self.unix_ms + d.as_millis() as i64,
        }
    }
}

/// A call's key inside one engine.
pub type CallKey = u64;

/// A request the engine sent (a client transaction, named by the engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u64);

/// A media request whose answer the engine waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobId(pub u64);

/// SIP, as the transaction layer reports it.
#[derive(Debug)]
pub enum SipInput {
    /// A request: a server transaction `tx` was opened for it.
    Request { tx: TxId, msg: Message, peer: Peer },
    /// An ACK of a 2xx (no transaction absorbs those).
    Ack { msg: Message },
    /// A response to request `req`.
    Response { req: ReqId, msg: Message },
    /// Request `req` got no final answer (timeout, transport error, or it never left).
    Failed { req: ReqId },
    /// Request `req`'s transaction is over.
    Ended { req: ReqId },
}

/// Why a target is looked up while a call is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardFor {
    /// The call rings elsewhere: a forward, a group's next member, a failover.
    Reroute,
    /// A blind transfer's target.
    Transfer,
}

/// A lookup's answer.
#[derive(Debug)]
pub enum Lookup {
    /// A new call's routing step.
    Routed {
        call_id: String,
        request: RouteRequest,
        outcome: Box<Result<Routed, Refusal>>,
    },
    /// An [`Output::Forward`]'s answer.
    Forwarded {
        key: CallKey,
        purpose: ForwardFor,
        outcome: Forwarded,
    },
    /// An [`Output::Recover`]'s answer: the call's record and its tenant's configuration,
    /// if another core left one.
    Recovered {
        tx: TxId,
        msg: Message,
        record: Option<Box<(recovery::DialogRecord, Arc<TenantConfig>)>>,
    },
    /// An [`Output::Claim`]'s answer: the call the holder handed over (none: it kept it,
    /// or nobody answered).
    Claimed {
        tx: TxId,
        msg: Message,
        record: Option<Box<(recovery::DialogRecord, Arc<TenantConfig>)>>,
    },
}

/// The media node's answer to an [`Output::Media`] with a job.
#[derive(Debug)]
pub struct MediaAnswer {
    pub job: JobId,
    pub reply: Result<Reply, MediaError>,
}

/// Something for the shell to do.
#[derive(Debug)]
pub enum Output {
    /// Answer server transaction `tx` (`retransmit: false`: never on a timer).
    Respond {
        tx: TxId,
        status: u16,
        bytes: Bytes,
        retransmit: bool,
    },
    /// Start a client transaction; its answers come back as `req`.
    Send {
        req: ReqId,
        request: Message,
        peer: Peer,
    },
    /// Bytes outside any transaction (ACK of a 2xx, 2xx retransmissions).
    Transmit { target: SendTarget, bytes: Bytes },
    /// Route a new call (configuration, dial plan, media session, contacts); the answer
    /// is a [`Lookup::Routed`].
    Route {
        call_id: String,
        request: RouteRequest,
        at_ms: i64,
    },
    /// Look up where a call goes next; the answer is a [`Lookup::Forwarded`]. `release`
    /// is a trunk channel to give back first (the next route may need it).
    Forward {
        key: CallKey,
        purpose: ForwardFor,
        config: Arc<TenantConfig>,
        tenant: String,
        leg_b: String,
        target: Reroute,
        release: Option<(TenantId, String)>,
        at_ms: i64,
    },
    /// A media-control request; its answer comes back as `job` (none: not awaited).
    Media {
        job: Option<JobId>,
        request: Request,
    },
    /// Give trunk channels back.
    ReleaseChannels(Vec<(TenantId, String)>),
    /// Extend the leases of trunk channels held.
    RenewChannels {
        held: Vec<(TenantId, String)>,
        until_ms: i64,
    },
    /// Write a CDR (retried by the writer).
    Cdr(Cdr),
    /// Write an answered call's record for takeover (the shell adds its media node).
    Persist(Box<recovery::DialogRecord>),
    /// The call whose legs have these Call-IDs ended: delete its record.
    Forget { a: String, b: String },
    /// A request of a dialog not here: look for another core's record of it; the answer
    /// is a [`Lookup::Recovered`].
    Recover { tx: TxId, msg: Message, peer: Peer },
    /// The REFER `msg` (server transaction `tx`) replaces a dialog another core holds:
    /// ask it for the call; the answer is a [`Lookup::Claimed`].
    Claim {
        tx: TxId,
        msg: Message,
        ask: handoff::HandoffAsk,
    },
}

/// What a client transaction is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    Fork(usize),
    /// An INVITE to a transfer's new party.
    Transfer(usize),
    Cancel,
    Bye,
    Reinvite,
    /// A NOTIFY of a transfer's progress.
    Notify,
    /// The re-INVITE that moves an attended transfer's new party onto this call.
    Replace,
    /// A refresh UPDATE (session timer, we refresh).
    Refresh,
    /// Our re-INVITE that takes a transfer's staying party (this leg) off hold.
    Resume(Leg),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    NoAnswer,
    /// A trunk fork has had this long to say anything.
    TrunkSilence(usize),
    Retransmit2xx,
    /// The session timer: hang up if no refresh came (caller refreshes) or refresh now.
    SessionRefresh,
    /// Answered calls' media checked for silence (node-wide).
    MediaCheck,
    /// Held trunk channels' leases renewed (node-wide).
    RenewChannels,
    /// A drain gives up waiting for answers.
    DrainLimit,
}

/// Node-wide timers are armed under this key.
const NODE: CallKey = 0;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Our SIP socket (Contact, Via).
    pub local: SocketAddr,
    /// Hang up an answered call when a leg sends no RTP for this long (not while on hold).
    pub rtp_timeout: Option<Duration>,
    pub metrics: Arc<CallMetrics>,
    /// Checks the edges' `X-Sy-Seal` (the cluster secret).
    pub seal: SealKey,
    /// New calls are taken (an operator's drain turns it off; see `CoreHandle`).
    pub accepting: Arc<std::sync::atomic::AtomicBool>,
    /// Answered calls are persisted for takeover, and requests of unknown dialogs looked
    /// up (a cluster with dialog state in Redis).
    pub recover: bool,
    /// Other cores may hold calls of this one's tenants (calls spread by Call-ID): an
    /// attended transfer asks them for the call it replaces.
    pub handoff: bool,
}

/// The engine: every call of one core.
pub struct Engine {
    local: SocketAddr,
    seal: SealKey,
    accepting: Arc<std::sync::atomic::AtomicBool>,
    recover: bool,
    handoff: bool,
    /// REFERs waiting for another core to hand over the call they replace.
    claims: HashSet<TxId>,
    rtp_timeout: Option<Duration>,
    metrics: Arc<CallMetrics>,
    calls: HashMap<CallKey, Call>,
    /// Calls being routed, by the caller's Call-ID.
    setups: HashMap<String, Setup>,
    by_call_id: HashMap<String, CallKey>,
    by_req: HashMap<ReqId, (CallKey, Purpose)>,
    jobs: HashMap<JobId, (CallKey, MediaJob)>,
    /// Lookups still out for calls that ended: the Call-ID a trunk channel they seize
    /// is held under (given back when the answer comes).
    orphaned: HashMap<(CallKey, ForwardFor), String>,
    timers: BTreeMap<(Instant, u64), (CallKey, Timer)>,
    /// Each call's entries in `timers` (some may have fired): a call that ends takes
    /// its own timers out without a walk over every call's.
    timers_of: HashMap<CallKey, Vec<(Instant, u64)>>,
    next_key: CallKey,
    next_req: u64,
    next_job: u64,
    outputs: VecDeque<Output>,
    /// Stopping: new calls are refused, the calls up are being hung up.
    draining: bool,
    /// The drain's time is up: stop waiting for answers.
    drain_expired: bool,
    /// The clock of the input being handled.
    now: Clock,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("calls", &self.calls.len())
            .field("setups", &self.setups.len())
            .field("by_call_id", &self.by_call_id.keys().collect::<Vec<_>>())
            .field("requests", &self.by_req.values().collect::<Vec<_>>())
            .field("jobs", &self.jobs.len())
            .field("orphaned", &self.orphaned.len())
            .field(
                "call_timers",
                &self
                    .timers
                    .values()
                    .filter(|(k, _)| *k != NODE)
                    .collect::<Vec<_>>(),
            )
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(settings: EngineSettings, now: Clock) -> Engine {
        let mut engine = Engine {
            local: settings.local,
            seal: settings.seal,
            accepting: settings.accepting,
            recover: settings.recover,
            handoff: settings.handoff,
            claims: HashSet::new(),
            rtp_timeout: settings.rtp_timeout,
            metrics: settings.metrics,
            calls: HashMap::new(),
            setups: HashMap::new(),
            by_call_id: HashMap::new(),
            by_req: HashMap::new(),
            jobs: HashMap::new(),
            orphaned: HashMap::new(),
            timers: BTreeMap::new(),
            timers_of: HashMap::new(),
            next_key: NODE + 1,
            next_req: 1,
            next_job: 1,
            outputs: VecDeque::new(),
            draining: false,
            drain_expired: false,
            now,
        };
        if let Some(every) = engine.media_check_every() {
            engine.arm(now.at + every, NODE, Timer::MediaCheck);
        }
        engine.arm(
            now.at + crate::CHANNEL_RENEW_EVERY,
            NODE,
            Timer::RenewChannels,
        );
        engine
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Engine::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Calls in progress (ringing or answered).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Ended calls whose CDR waits for the media session's counters.
    pub fn cdrs_waiting(&self) -> usize {
        self.jobs
            .values()
            .filter(|(_, j)| matches!(j, MediaJob::Destroyed(_)))
            .count()
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    /// A drain is over: every call ended and its hang-ups answered (or the drain's
    /// time ran out), every CDR handed over.
    pub fn drained(&self) -> bool {
        self.draining
            && self.cdrs_waiting() == 0
            && (self.drain_expired
                || (self.calls.is_empty()
                    && self.setups.is_empty()
                    && self.hang_ups_in_flight() == 0))
    }

    /// Nothing of any call is left: no call, setup, pending answer, media job or call
    /// timer (BYEs and CANCELs in flight excepted: they belong to no call).
    pub fn idle(&self) -> bool {
        self.calls.is_empty()
            && self.setups.is_empty()
            && self.by_call_id.is_empty()
            && self.jobs.is_empty()
            && self.orphaned.is_empty()
            && self.claims.is_empty()
            && self
                .by_req
                .values()
                .all(|(_, p)| matches!(p, Purpose::Cancel | Purpose::Bye))
            && self.timers.values().all(|(key, _)| *key == NODE)
            && self.timers_of.keys().all(|key| *key == NODE)
    }

    /// BYEs and CANCELs sent and not yet answered.
    fn hang_ups_in_flight(&self) -> usize {
        self.by_req
            .values()
            .filter(|(_, p)| matches!(p, Purpose::Cancel | Purpose::Bye))
            .count()
    }

    pub fn handle_sip(&mut self, input: SipInput, now: Clock) {
        self.now = now;
        match input {
            SipInput::Request { tx, msg, peer } => self.on_request(tx, msg, peer),
            SipInput::Ack { msg } => self.on_ack(&msg),
            SipInput::Response { req, msg } => self.on_response(req, msg),
            SipInput::Failed { req } => self.on_request_failed(req),
            SipInput::Ended { req } => {
                if matches!(
                    self.by_req.get(&req),
                    Some((
                        _,
                        Purpose::Cancel | Purpose::Bye | Purpose::Notify | Purpose::Refresh
                    ))
                ) {
                    self.by_req.remove(&req);
                }
            }
        }
    }

    pub fn handle_lookup(&mut self, lookup: Lookup, now: Clock) {
        self.now = now;
        match lookup {
            Lookup::Routed {
                call_id,
                request,
                outcome,
            } => self.on_routed(call_id, request, *outcome),
            Lookup::Forwarded {
                key,
                purpose: ForwardFor::Reroute,
                outcome,
            } => self.on_rerouted(key, outcome),
            Lookup::Forwarded {
                key,
                purpose: ForwardFor::Transfer,
                outcome,
            } => self.on_transfer_routed(key, outcome),
            Lookup::Recovered { tx, msg, record } => self.on_recovered(tx, msg, record),
            Lookup::Claimed { tx, msg, record } => self.on_claimed(tx, msg, record),
        }
    }

    pub fn handle_media(&mut self, answer: MediaAnswer, now: Clock) {
        self.now = now;
        let Some((key, job)) = self.jobs.remove(&answer.job) else {
            return;
        };
        let reply = answer.reply;
        match job {
            MediaJob::Answer => self.on_answer_relayed(key, reply),
            MediaJob::ReinviteOffer => self.on_reinvite_offer(key, reply),
            MediaJob::ReinviteAnswer(answer) => {
                let (pending, body) = *answer;
                self.on_reinvite_answer(key, pending, body, reply)
            }
            MediaJob::TransferOffer(offer) => self.on_transfer_offer(key, *offer, reply),
            MediaJob::TransferAnswer(answer) => self.on_transfer_answer(key, *answer, reply),
            MediaJob::AttendedOffer(offer) => self.on_attended_offer(key, *offer, reply),
            MediaJob::ReplaceAnswer(answer) => self.on_replace_answer(key, *answer, reply),
            MediaJob::ResumeOffer(stays) => self.on_resume_offer(key, stays, reply),
            MediaJob::Stats => self.on_media_stats(key, reply),
            MediaJob::Destroyed(ended) => self.on_destroyed(*ended, reply),
        }
    }

    /// Stop: new calls are refused (`503`), every call is hung up (BYE on both legs of
    /// answered calls, CANCEL to ringing forks and `503` to their callers); the drain
    /// waits up to [`DRAIN_LIMIT`] for those requests' answers.
    pub fn shutdown(&mut self, now: Clock) {
        self.now = now;
        if self.draining {
            return;
        }
        info!(calls = self.calls.len(), "draining: hanging up every call");
        self.draining = true;
        self.arm(now.at + DRAIN_LIMIT, NODE, Timer::DrainLimit);
        let keys: Vec<CallKey> = self.calls.keys().copied().collect();
        for key in keys {
            self.hang_up_both(key, "shutdown");
        }
    }

    /// The shell stops for good: whatever is still up is hung up (its requests may no
    /// longer leave, but its CDR is written), calls being routed get `503`.
    pub fn abandon(&mut self, now: Clock) {
        self.now = now;
        self.draining = true;
        let keys: Vec<CallKey> = self.calls.keys().copied().collect();
        for key in keys {
            self.hang_up_both(key, "shutdown");
        }
        for (call_id, setup) in std::mem::take(&mut self.setups) {
            self.media(None, Request::Destroy { session: call_id });
            if !setup.cancelled {
                self.reply(setup.tx, &setup.invite, 503, "Shutting Down");
            }
        }
    }

    // --- building blocks the flows share -------------------------------------------

    pub(crate) fn arm(&mut self, at: Instant, key: CallKey, timer: Timer) {
        let mut seq = 0u64;
        while self.timers.contains_key(&(at, seq)) {
            seq += 1;
        }
        self.timers.insert((at, seq), (key, timer));
        self.timers_of.entry(key).or_default().push((at, seq));
    }

    /// Takes every timer of `key` out of the table.
    pub(crate) fn disarm_all(&mut self, key: CallKey) {
        for slot in self.timers_of.remove(&key).unwrap_or_default() {
            if self.timers.get(&slot).is_some_and(|(k, _)| *k == key) {
                self.timers.remove(&slot);
            }
        }
    }

    /// Forgets a fired timer in its call's list.
    fn forget_timer(&mut self, key: CallKey, slot: (Instant, u64)) {
        if let Some(slots) = self.timers_of.get_mut(&key) {
            slots.retain(|s| *s != slot);
            if slots.is_empty() {
                self.timers_of.remove(&key);
            }
        }
    }

    fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    fn respond(&mut self, tx: TxId, b: ResponseBuilder) {
        let status = b.status();
        self.push(Output::Respond {
            tx,
            status,
            bytes: b.build(),
            retransmit: true,
        });
    }

    /// `481` for a request of no dialog of ours: sent once, never retransmitted, so a
    /// forged source cannot draw a stream of answers (the sender retransmits if it cares).
    fn no_such_dialog(&mut self, tx: TxId, msg: &Message) {
        let b = ResponseBuilder::for_request(
            msg,
            481,
            "Call/Transaction Does Not Exist",
            &random_token(),
        );
        self.push(Output::Respond {
            tx,
            status: 481,
            bytes: b.build(),
            retransmit: false,
        });
    }

    fn reply(&mut self, tx: TxId, msg: &Message, status: u16, reason: &str) {
        let b = ResponseBuilder::for_request(msg, status, reason, &random_token());
        let b = if status == 405 || status == 501 {
            b.header("Allow", ALLOW)
        } else {
            b
        };
        self.respond(tx, b);
    }

    /// A response to the caller on leg A (copies Record-Route, adds our Contact).
    fn a_response(&self, call: &Call, status: u16, reason: &str) -> ResponseBuilder {
        self.dialog_response(&call.a_invite, &call.a_tag, status, reason)
    }

    /// Answers the caller's INVITE of call `key` with a final failure.
    fn fail_a(&mut self, key: CallKey, status: u16, reason: &str) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if std::mem::replace(&mut call.a_final_sent, true) {
            return;
        }
        let b = self.a_response(&self.calls[&key], status, reason);
        let tx = self.calls[&key].a_tx;
        self.respond(tx, b);
    }

    fn dialog_response(
        &self,
        req: &Message,
        tag: &str,
        status: u16,
        reason: &str,
    ) -> ResponseBuilder {
        let mut b = ResponseBuilder::for_request(req, status, reason, tag);
        if (101..300).contains(&status) {
            for rr in req.header_rows(HeaderName::RecordRoute) {
                b = b.header("Record-Route", rr.to_owned());
            }
            b = b.header("Contact", format!("<sip:sy@{}>", self.local));
        }
        b
    }

    /// Sends a `200` with SDP on server transaction `tx` and retransmits it from the core
    /// until its ACK comes (RFC 3261 §13.3.1.4: the transaction layer stops at the first
    /// 2xx).
    fn answer_until_acked(&mut self, key: CallKey, tx: TxId, bytes: Bytes, peer: Peer, cseq: u32) {
        self.push(Output::Respond {
            tx,
            status: 200,
            bytes: bytes.clone(),
            retransmit: true,
        });
        let now = self.now.at;
        if let Some(call) = self.calls.get_mut(&key) {
            call.unacked = Some(Unacked {
                bytes,
                peer,
                cseq,
                interval: crate::T1,
                since: now,
            });
        }
        self.arm(now + crate::T1, key, Timer::Retransmit2xx);
    }

    /// Starts a client transaction for call `key`.
    fn send(&mut self, key: CallKey, purpose: Purpose, request: Message, peer: Peer) -> ReqId {
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.by_req.insert(req, (key, purpose));
        self.push(Output::Send { req, request, peer });
        req
    }

    /// A media request; `job` names what to do with its answer.
    fn media(&mut self, job: Option<(CallKey, MediaJob)>, request: Request) {
        let job = job.map(|j| {
            let id = JobId(self.next_job);
            self.next_job += 1;
            self.jobs.insert(id, j);
            id
        });
        self.push(Output::Media { job, request });
    }

    fn release(&mut self, held: Vec<(TenantId, String)>) {
        if !held.is_empty() {
            self.push(Output::ReleaseChannels(held));
        }
    }

    fn on_request(&mut self, tx: TxId, msg: Message, peer: Peer) {
        let method = msg.method().cloned().unwrap_or(Method::Ack);
        let in_dialog = msg.to_header().ok().and_then(|t| t.tag()).is_some();
        match method {
            Method::Invite if !in_dialog => self.new_call(tx, msg, peer.source),
            Method::Cancel => self.on_cancel(tx, &msg),
            _ if in_dialog
                && self.recover
                && !self
                    .by_call_id
                    .contains_key(msg.call_id().unwrap_or_default()) =>
            {
                self.recover(tx, msg, peer)
            }
            _ if in_dialog => self.in_dialog(tx, msg),
            Method::Options => {
                let b = ResponseBuilder::for_request(&msg, 200, "OK", &random_token())
                    .header("Allow", ALLOW);
                self.respond(tx, b)
            }
            Method::Extension(_) => self.reply(tx, &msg, 501, "Not Implemented"),
            _ => self.reply(tx, &msg, 405, "Method Not Allowed"),
        }
    }

    fn on_response(&mut self, req: ReqId, msg: Message) {
        let Some(&(key, purpose)) = self.by_req.get(&req) else {
            return;
        };
        let status = msg.status().unwrap_or(0);
        match purpose {
            Purpose::Fork(i) => self.on_fork_response(key, i, msg),
            Purpose::Transfer(i) => self.on_transfer_response(key, i, msg),
            Purpose::Replace => self.on_replace_response(key, msg),
            Purpose::Reinvite => self.on_reinvite_response(key, msg),
            Purpose::Resume(stays) => {
                if status >= 200 {
                    self.on_resume_response(key, stays, msg);
                }
            }
            Purpose::Cancel | Purpose::Bye | Purpose::Notify | Purpose::Refresh => {
                if status >= 200 {
                    self.by_req.remove(&req);
                }
            }
        }
    }

    fn on_request_failed(&mut self, req: ReqId) {
        let Some((key, purpose)) = self.by_req.remove(&req) else {
            return;
        };
        debug!(?purpose, "request got no answer");
        match purpose {
            Purpose::Fork(i) => self.on_fork_failed(key, i),
            Purpose::Reinvite => self.on_reinvite_failed(key),
            Purpose::Transfer(i) => self.transfer_failed(key, Some(i), 408, "Request Timeout"),
            Purpose::Replace => self.transfer_failed(key, None, 408, "Request Timeout"),
            Purpose::Cancel
            | Purpose::Bye
            | Purpose::Notify
            | Purpose::Refresh
            | Purpose::Resume(_) => {}
        }
    }
}
