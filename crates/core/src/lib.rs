//! The call engine: a back-to-back user agent.
//!
//! Each call is two dialogs with their own Call-IDs, tags and CSeqs: leg A towards the
//! caller (we are its UAS) and leg B towards the callee (we are its UAC, forking to every
//! registered contact; the first 2xx wins and the others are CANCELled). Requests reach
//! the core from an edge, which vouches for the tenant and the authenticated caller with
//! `X-Sy-Tenant`/`X-Sy-Caller`; the tenant's configuration is read at call time through
//! [`cache::ConfigCache`], which change events invalidate. Media is anchored through the
//! media-control protocol; the CDR is written when the call ends.
//!
//! The engine is one task fed by the transaction driver; it never blocks on the network
//! (its awaits are the in-process media node, the location service and cached store reads).

#![forbid(unsafe_code)]

pub mod cache;
pub mod cdr;
pub mod dialog;
pub mod dialplan;
pub mod metrics;
pub mod routing;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use switchyard_media_control::{Leg, MediaControl, MediaError, Reply, Request, SessionStats};
use switchyard_sip::HeaderName;
use switchyard_sip::Message;
use switchyard_sip::Method;
use switchyard_sip::build::{RequestBuilder, ResponseBuilder};
use switchyard_sip::inspect::Inbound;
use switchyard_sip::transaction::{Event, TxId};
use switchyard_sip_net::{DriverHandle, Hub, Peer, TuEvent};
use switchyard_state::Binding;
use switchyard_state::Locations;
use switchyard_store::{Cdr, ChangeEvent, Store, Target, TenantConfig};

use crate::cache::ConfigCache;
use crate::cdr::CdrSender;
use crate::dialog::{Dialog, random_token, uri_addr};
use crate::metrics::{CallMetrics, Disposition, TrunkOutcome};
use crate::routing::{Refusal, Reroute, Ring, RouteDeps, RouteRequest, Routed, TrunkLeg};

/// Headers an edge sets (and strips from anything a phone sends).
pub const TENANT_HEADER: &str = "X-Sy-Tenant";
pub const CALLER_HEADER: &str = "X-Sy-Caller";
/// Set by an edge on a call from a carrier: the caller is a PSTN number.
pub const CARRIER_HEADER: &str = "X-Sy-Carrier";

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";
/// RFC 4028 §4: the smallest session interval we accept (and the protocol's minimum).
const MIN_SE: u32 = 90;
/// How long a stopping engine waits for the answers to its BYEs and CANCELs.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// A trunk that has said nothing (not even `100 Trying`) this long after an INVITE is
/// given up for the next route (its late answers are ACKed and hung up).
const TRUNK_SILENCE: Duration = Duration::from_secs(5);
/// How long a call out through a trunk may ring (the PSTN callee has no no-answer time
/// of ours; the caller usually gives up first).
const OUTBOUND_RING_LIMIT: Duration = Duration::from_secs(180);
/// How often the leases of held trunk channels are renewed (Redis).
const CHANNEL_RENEW_EVERY: Duration = Duration::from_secs(30);
/// The Route parameter that tells an edge to send a request out to a trunk's address.
pub const TRUNK_ROUTE_PARAM: &str = "sy-trunk";

/// Where the engine listens and what it may read.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Our SIP socket (Contact, Via).
    pub local: SocketAddr,
    /// Hang up an answered call when a leg sends no RTP for this long (not while on hold).
    pub rtp_timeout: Option<Duration>,
    /// Per-tenant call series (registered in the node's registry by the caller).
    pub metrics: Arc<CallMetrics>,
    /// Trunks' channels in use, shared with the other cores on Redis.
    pub channels: Arc<switchyard_state::calls::LiveCalls>,
}

/// What the outside may watch of a running engine.
#[derive(Debug, Clone, Default)]
pub struct CoreHandle {
    active: Arc<AtomicUsize>,
    cdrs_pending: Arc<AtomicUsize>,
}

impl CoreHandle {
    /// Calls in progress (ringing or answered).
    pub fn active_calls(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// CDRs of ended calls not yet in the store.
    pub fn cdrs_pending(&self) -> usize {
        self.cdrs_pending.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Routing,
    Answered,
}

#[derive(Debug)]
struct Fork {
    request: Message,
    done: bool,
    /// A provisional or final answer came.
    heard: bool,
}

#[derive(Debug)]
struct PendingReinvite {
    from: Leg,
    tx: TxId,
    request: Message,
    /// The re-INVITE we sent to the other leg.
    out: Message,
}

/// A 2xx we sent and retransmit until its ACK (RFC 3261 §13.3.1.4).
#[derive(Debug)]
struct Unacked {
    bytes: Bytes,
    peer: Peer,
    cseq: u32,
    interval: Duration,
    since: Instant,
}

#[derive(Debug)]
struct Call {
    tenant_id: String,
    session: String,
    a_tx: TxId,
    a_invite: Message,
    a_tag: String,
    a: Dialog,
    b: Option<Dialog>,
    b_call_id: String,
    forks: Vec<Fork>,
    phase: Phase,
    ringing_sent: bool,
    best_failure: Option<(u16, String)>,
    started_ms: i64,
    /// When the caller's INVITE arrived (post-dial delay).
    invited_at: Instant,
    answered_ms: Option<i64>,
    from_uri: String,
    to_uri: String,
    reinvite: Option<PendingReinvite>,
    unacked: Option<Unacked>,
    /// RFC 4028 on leg A: the interval, who refreshes, and when the session lapses.
    session_timer: Option<SessionTimer>,
    /// Leg B's identity and offer (every fork, a forward's included, sends these).
    leg: BLeg,
    /// The configuration the call was routed with (a forward is decided in it).
    config: Arc<TenantConfig>,
    /// The callee's forwards, each taken at most once (one forward per call).
    forward_busy: Option<String>,
    forward_no_answer: Option<String>,
    /// A forward's contacts are being looked up: fork failures meanwhile end nothing.
    rerouting: bool,
    /// When the current ringing gives up.
    ring_deadline: Instant,
    /// A sequential group's members still to ring (extension numbers), in order, and
    /// how long each rings.
    hunt: std::collections::VecDeque<String>,
    hunt_ring: Option<u32>,
    /// A group's target once nobody answered (taken once).
    fallback: Option<Target>,
    /// The edge that brought the call: calls out through trunks leave through it.
    edge: SocketAddr,
    /// The number presented to trunks.
    presented: Option<String>,
    /// The trunk leg ringing or answered, and the routes left for failover.
    trunk: Option<TrunkState>,
    /// Each leg's last SDP (A's offer, B's answer, then re-INVITEs): a transfer offers
    /// the new party what the party staying in the call last said.
    remote_sdp: [String; 2],
    /// A blind transfer in progress.
    transfer: Option<Transfer>,
    /// Every destination the call rang, in order (the CDR's legs after A and B).
    attempts: Vec<Attempt>,
    /// Why the re-route being looked up happens.
    reroute_reason: &'static str,
}

/// One destination a call rang: for the CDR.
#[derive(Debug, Clone)]
struct Attempt {
    /// An extension number, or the number as a trunk got it.
    to: String,
    /// `extension`, `trunk:ID`.
    via: String,
    /// `dialled`, `hunt`, `fallback`, `forward-busy`, `forward-no-answer`, `failover`,
    /// `transfer`.
    reason: &'static str,
    at_ms: i64,
    /// The final status it gave (`200` answered), none if the call moved on or ended
    /// while it rang.
    result: Option<u16>,
}

impl Call {
    fn begin_attempt(&mut self, to: String, via: String, reason: &'static str) {
        self.attempts.push(Attempt {
            to,
            via,
            reason,
            at_ms: now_ms(),
            result: None,
        });
    }

    /// The current destination's outcome (kept if it already has one).
    fn conclude_attempt(&mut self, status: u16) {
        if let Some(a) = self.attempts.last_mut() {
            a.result.get_or_insert(status);
        }
    }
}

/// A blind transfer (REFER): the referrer's leg is replaced by a new party once it
/// answers; until then the call stays as it was.
#[derive(Debug)]
struct Transfer {
    referrer: Leg,
    /// The number the Refer-To named.
    target: String,
    /// The new party's INVITEs (empty while its contacts are looked up).
    forks: Vec<Fork>,
    leg: Option<BLeg>,
    /// The new party's Call-ID, under which a trunk channel it seized is held.
    call_id: String,
    /// The trunk the new party is reached through, if it is outside.
    trunk: Option<TrunkLeg>,
    /// Attended transfer: the consultation call whose other party takes the referrer's
    /// place (re-INVITEd with this call's media).
    replacing: Option<Replacing>,
}

/// The consultation call of an attended transfer (RFC 3891 Replaces).
#[derive(Debug, Clone, Copy)]
struct Replacing {
    call: u64,
    /// The consultation call's leg towards the new party.
    party: Leg,
    /// Its leg towards the referrer.
    referrer: Leg,
    /// The re-INVITE's CSeq (its ACK carries it).
    cseq: u32,
}

/// A call's current trunk leg.
#[derive(Debug, Clone)]
struct TrunkState {
    leg: TrunkLeg,
    rest: Vec<dialplan::OutboundAttempt>,
    dialled: String,
    emergency: bool,
    /// The fork that carries it.
    fork: usize,
    /// The carrier's challenge was answered once (a second one fails the route).
    authenticated: bool,
    /// The Call-ID its channel is held under.
    member: String,
}

impl Call {
    /// The number a trunk is shown as the caller (`anonymous` only for an emergency
    /// call of a tenant that holds no number).
    fn presenting(&self) -> String {
        self.presented
            .clone()
            .unwrap_or_else(|| "anonymous".to_owned())
    }

    /// The next outbound route when fork `i`, the trunk leg, failed with `status`
    /// (`5xx`, `408` or silence; a busy or unknown number is the same on every trunk).
    fn failover_after(&mut self, i: usize, status: u16) -> Option<Reroute> {
        let trunk = self.trunk.as_mut()?;
        let worth_it = (500..600).contains(&status) || status == 408;
        if trunk.fork != i || !worth_it || trunk.rest.is_empty() || self.phase != Phase::Routing {
            return None;
        }
        self.reroute_reason = "failover";
        Some(Reroute::Failover {
            rest: std::mem::take(&mut trunk.rest),
            dialled: trunk.dialled.clone(),
            emergency: trunk.emergency,
        })
    }

    /// Where the call rings next when its forks failed (`busy`: all of them busy) or its
    /// ringing time passed (`unanswered`): a sequential group's next member, then the
    /// group's fallback, then the callee's forward for that case. Each taken once; one
    /// forward per call.
    fn next_reroute(&mut self, busy: bool, unanswered: bool) -> Option<Reroute> {
        if let Some(next) = self.hunt.pop_front() {
            self.reroute_reason = "hunt";
            return Some(Reroute::Dialled(next));
        }
        if let Some(fallback) = self.fallback.take() {
            self.reroute_reason = "fallback";
            return Some(Reroute::Target(fallback));
        }
        self.reroute_reason = if busy {
            "forward-busy"
        } else {
            "forward-no-answer"
        };
        let forward = if busy {
            self.forward_busy.take()
        } else if unanswered {
            self.forward_no_answer.take()
        } else {
            None
        }?;
        self.forward_busy = None;
        self.forward_no_answer = None;
        Some(Reroute::Dialled(forward))
    }
}

/// What every fork of leg B carries.
#[derive(Debug, Clone)]
struct BLeg {
    from: String,
    to: String,
    call_id: String,
    offer: String,
}

/// Where one fork's INVITE goes: a phone's contact through the edge that holds its flow,
/// or a trunk through the edge that brought the call.
#[derive(Debug, Clone)]
struct ForkTarget {
    uri: String,
    routes: Vec<String>,
    next_hop: SocketAddr,
    cseq: u32,
    /// An answer to a trunk's challenge: (header name, value).
    credentials: Option<(&'static str, String)>,
}

impl ForkTarget {
    fn of_binding(binding: &Binding) -> Option<ForkTarget> {
        let route = binding.flow.clone()?;
        let next_hop = uri_addr(&route)?;
        let mut routes = vec![route];
        // Then the proxies the phone registered through (RFC 3327 Path).
        routes.extend(binding.path.iter().cloned());
        Some(ForkTarget {
            uri: binding.contact.clone(),
            routes,
            next_hop,
            cseq: 1,
            credentials: None,
        })
    }

    fn of_trunk(leg: &TrunkLeg, edge: SocketAddr) -> ForkTarget {
        ForkTarget {
            uri: leg.request_uri(),
            routes: vec![format!("<sip:{edge};lr;{TRUNK_ROUTE_PARAM}={}>", leg.dest)],
            next_hop: edge,
            cseq: 1,
            credentials: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct SessionTimer {
    interval: u32,
    caller_refreshes: bool,
    /// The caller listed `timer` in Supported (then our 2xx carries `Require: timer`).
    caller_supports: bool,
    deadline: Instant,
}

impl SessionTimer {
    fn header(&self) -> String {
        let who = if self.caller_refreshes { "uac" } else { "uas" };
        format!("{};refresher={who}", self.interval)
    }

    /// When the side that does not refresh gives up: before the interval ends, by
    /// min(32 s, interval / 3) (RFC 4028 §10).
    fn expiry_from(&self, now: Instant) -> Instant {
        let lead = (self.interval / 3).min(32);
        now + Duration::from_secs(u64::from(self.interval - lead))
    }
}

impl Call {
    /// The INVITEs of forks still ringing, marked done (they are about to be CANCELled).
    fn take_ringing_forks(&mut self) -> Vec<Message> {
        self.forks
            .iter_mut()
            .filter(|f| !f.done)
            .map(|f| {
                f.done = true;
                f.request.clone()
            })
            .collect()
    }
}

/// A caller's INVITE whose routing step runs in a task.
#[derive(Debug)]
struct Setup {
    tx: TxId,
    invite: Message,
    edge: SocketAddr,
    invited_at: Instant,
    /// The caller CANCELled meanwhile (and was answered `487`).
    cancelled: bool,
}

/// A routing step's result, back in the engine.
#[derive(Debug)]
struct RouteDone {
    call_id: String,
    request: RouteRequest,
    outcome: Result<Routed, Refusal>,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
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
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    NoAnswer,
    /// A trunk fork has had this long to say anything.
    TrunkSilence(usize),
    Retransmit2xx,
    /// The session timer: hang up if no refresh came (caller refreshes) or refresh now.
    SessionRefresh,
}

/// The engine's state; driven by [`spawn_core`].
struct Engine {
    local: SocketAddr,
    rtp_timeout: Option<Duration>,
    store: Store,
    cache: ConfigCache,
    media: Arc<dyn MediaControl>,
    driver: DriverHandle,
    hub: Hub,
    calls: HashMap<u64, Call>,
    /// Calls being routed, by the caller's Call-ID.
    setups: HashMap<String, Setup>,
    route_deps: RouteDeps,
    routed_tx: mpsc::UnboundedSender<RouteDone>,
    /// Forwards' lookups come back here: (call key, the target and its contacts).
    rerouted_tx: mpsc::UnboundedSender<(u64, routing::Forwarded)>,
    /// Transfer targets' lookups come back here.
    transfer_tx: mpsc::UnboundedSender<(u64, routing::Forwarded)>,
    by_call_id: HashMap<String, u64>,
    by_tx: HashMap<TxId, (u64, Purpose)>,
    timers: BTreeMap<(Instant, u64), (u64, Timer)>,
    next_key: u64,
    handle: CoreHandle,
    cdrs: CdrSender,
    metrics: Arc<CallMetrics>,
    /// Stopping: new calls are refused, the calls up are being hung up.
    draining: bool,
}

/// Starts the engine on the events of a transaction driver. When `shutdown` fires the
/// engine drains: it refuses new calls (`503`), hangs up every call (BYE on both legs of
/// answered calls, CANCEL to ringing forks and `503` to their callers), waits up to
/// [`DRAIN_LIMIT`] for those requests' answers, and ends once every CDR is written. The
/// task it returns ends then; keep the driver and the edge running until it does.
#[allow(clippy::too_many_arguments)]
pub fn spawn_core(
    settings: CoreSettings,
    store: Store,
    locations: Arc<Locations>,
    media: Arc<dyn MediaControl>,
    driver: DriverHandle,
    hub: Hub,
    mut events: mpsc::Receiver<TuEvent>,
    mut changes: broadcast::Receiver<ChangeEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> (CoreHandle, tokio::task::JoinHandle<()>) {
    let (cdrs, cdr_writer) = cdr::spawn_writer(store.clone());
    let handle = CoreHandle {
        active: Arc::default(),
        cdrs_pending: cdrs.pending(),
    };
    let cache = ConfigCache::new(store.clone());
    let (routed_tx, mut routed) = mpsc::unbounded_channel();
    let (rerouted_tx, mut rerouted) = mpsc::unbounded_channel();
    let (transfer_tx, mut transferred) = mpsc::unbounded_channel();
    let mut engine = Engine {
        route_deps: RouteDeps {
            cache: cache.clone(),
            locations: locations.clone(),
            media: media.clone(),
            channels: settings.channels.clone(),
            turns: Default::default(),
        },
        routed_tx,
        rerouted_tx,
        transfer_tx,
        setups: HashMap::new(),
        local: settings.local,
        rtp_timeout: settings.rtp_timeout,
        cache,
        store,

        media,
        driver,
        hub,
        calls: HashMap::new(),
        by_call_id: HashMap::new(),
        by_tx: HashMap::new(),
        timers: BTreeMap::new(),
        next_key: 1,
        handle: handle.clone(),
        cdrs,
        metrics: settings.metrics.clone(),
        draining: false,
    };
    let task = tokio::spawn(async move {
        // Media silence is checked a few times per timeout period.
        let check_every = settings.rtp_timeout.map_or(Duration::from_secs(3600), |t| {
            (t / 4).max(Duration::from_millis(250))
        });
        let mut media_check = tokio::time::interval(check_every);
        let mut channel_renewal = tokio::time::interval(CHANNEL_RENEW_EVERY);
        let mut drain_deadline = None;
        loop {
            let next = engine.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    engine.on_event(ev).await;
                }
                done = routed.recv() => {
                    if let Some(done) = done {
                        engine.on_routed(done).await;
                    }
                }
                done = rerouted.recv() => {
                    if let Some((key, outcome)) = done {
                        engine.on_rerouted(key, outcome).await;
                    }
                }
                done = transferred.recv() => {
                    if let Some((key, outcome)) = done {
                        engine.on_transfer_routed(key, outcome).await;
                    }
                }
                change = changes.recv() => match change {
                    Ok(e) => engine.cache.apply(&e),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        engine.cache = ConfigCache::new(engine.store.clone());
                        engine.route_deps.cache = engine.cache.clone();
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                _ = sleep_until(next) => engine.on_timers().await,
                _ = media_check.tick(), if engine.rtp_timeout.is_some() => engine.check_media().await,
                _ = channel_renewal.tick() => engine.renew_channels(),
                _ = shutdown.changed(), if !engine.draining => {
                    info!(calls = engine.calls.len(), "draining: hanging up every call");
                    engine.draining = true;
                    drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                    let keys: Vec<u64> = engine.calls.keys().copied().collect();
                    for key in keys {
                        engine.hang_up_both(key, "shutdown").await;
                    }
                }
                _ = sleep_until(drain_deadline) => {
                    warn!(unanswered = engine.hang_ups_in_flight(), "drain limit reached");
                    break;
                }
            }
            engine
                .handle
                .active
                .store(engine.calls.len(), Ordering::Relaxed);
            if engine.draining
                && engine.calls.is_empty()
                && engine.setups.is_empty()
                && engine.hang_ups_in_flight() == 0
            {
                break;
            }
        }
        // Whatever is still up when the events stop is hung up as well (its requests may
        // no longer leave, but its CDR is written).
        let keys: Vec<u64> = engine.calls.keys().copied().collect();
        for key in keys {
            engine.hang_up_both(key, "shutdown").await;
        }
        for (call_id, setup) in std::mem::take(&mut engine.setups) {
            let _ = engine
                .media
                .call(Request::Destroy { session: call_id })
                .await;
            if !setup.cancelled {
                engine
                    .reply(setup.tx, &setup.invite, 503, "Shutting Down")
                    .await;
            }
        }
        drop(engine);
        let _ = cdr_writer.await;
        info!("core stopped: every CDR written");
    });
    (handle, task)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Engine {
    /// BYEs and CANCELs sent and not yet answered.
    fn hang_ups_in_flight(&self) -> usize {
        self.by_tx
            .values()
            .filter(|(_, p)| matches!(p, Purpose::Cancel | Purpose::Bye))
            .count()
    }

    async fn on_event(&mut self, ev: TuEvent) {
        match ev {
            TuEvent::Transaction(Event::Request { tx, msg, peer }) => {
                self.on_request(tx, msg, peer).await
            }
            TuEvent::Transaction(Event::Ack { msg, .. }) => self.on_ack(&msg),
            TuEvent::Transaction(Event::Response { tx, msg }) => self.on_response(tx, msg).await,
            TuEvent::Transaction(Event::Timeout { tx } | Event::TransportError { tx }) => {
                self.on_tx_failure(tx).await
            }
            TuEvent::Transaction(Event::Terminated { tx }) => {
                if matches!(
                    self.by_tx.get(&tx),
                    Some((_, Purpose::Cancel | Purpose::Bye | Purpose::Notify))
                ) {
                    self.by_tx.remove(&tx);
                }
            }
            TuEvent::Transaction(Event::StrayResponse { msg, .. }) => {
                // A 2xx retransmission for a fork we already ACKed, or for a dialog that
                // ended: nothing to do.
                debug!(status = msg.status(), "stray response");
            }
            TuEvent::Stateless(incoming) => {
                if let Inbound::Reject { rejection, rows } = &incoming.inbound {
                    let bytes = ResponseBuilder::from_rows(
                        rejection.status,
                        &rejection.reason,
                        rows.clone(),
                        &random_token(),
                    )
                    .build();
                    let via_text = rows
                        .iter()
                        .find(|(n, _)| *n == HeaderName::Via)
                        .map(|(_, v)| v.clone());
                    let via = via_text
                        .as_deref()
                        .and_then(switchyard_sip::headers::Via::parse_lenient);
                    let _ = self.hub.respond(&incoming, via.as_ref(), bytes).await;
                }
            }
        }
    }

    fn arm(&mut self, at: Instant, key: u64, timer: Timer) {
        let mut seq = 0u64;
        while self.timers.contains_key(&(at, seq)) {
            seq += 1;
        }
        self.timers.insert((at, seq), (key, timer));
    }

    async fn respond(&self, tx: TxId, b: ResponseBuilder) {
        let status = b.status();
        if let Err(e) = self.driver.respond(tx, status, b.build()).await {
            debug!(error = %e, status, "response not sent");
        }
    }

    /// `481` for a request of no dialog of ours: sent once, never retransmitted, so a
    /// forged source cannot draw a stream of answers (the sender retransmits if it cares).
    async fn no_such_dialog(&self, tx: TxId, msg: &Message) {
        let b = ResponseBuilder::for_request(
            msg,
            481,
            "Call/Transaction Does Not Exist",
            &random_token(),
        );
        if let Err(e) = self.driver.respond_once(tx, 481, b.build()).await {
            debug!(error = %e, "response not sent");
        }
    }

    async fn reply(&self, tx: TxId, msg: &Message, status: u16, reason: &str) {
        let b = ResponseBuilder::for_request(msg, status, reason, &random_token());
        let b = if status == 405 || status == 501 {
            b.header("Allow", ALLOW)
        } else {
            b
        };
        self.respond(tx, b).await;
    }

    /// A response to the caller on leg A (copies Record-Route, adds our Contact).
    fn a_response(&self, call: &Call, status: u16, reason: &str) -> ResponseBuilder {
        self.dialog_response(&call.a_invite, &call.a_tag, status, reason)
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

    async fn on_request(&mut self, tx: TxId, msg: Message, peer: Peer) {
        let method = msg.method().cloned().unwrap_or(Method::Ack);
        let in_dialog = msg.to_header().ok().and_then(|t| t.tag()).is_some();
        match method {
            Method::Invite if !in_dialog => self.new_call(tx, msg, peer.source).await,
            Method::Cancel => self.on_cancel(tx, &msg).await,
            _ if in_dialog => self.in_dialog(tx, msg).await,
            Method::Options => {
                let b = ResponseBuilder::for_request(&msg, 200, "OK", &random_token())
                    .header("Allow", ALLOW);
                self.respond(tx, b).await
            }
            Method::Extension(_) => self.reply(tx, &msg, 501, "Not Implemented").await,
            _ => self.reply(tx, &msg, 405, "Method Not Allowed").await,
        }
    }

    async fn new_call(&mut self, tx: TxId, msg: Message, edge: SocketAddr) {
        if self.draining {
            let b = ResponseBuilder::for_request(&msg, 503, "Shutting Down", &random_token())
                .header("Retry-After", "5");
            return self.respond(tx, b).await;
        }
        let (Some(tenant_id), Some(caller)) = (
            msg.extension_rows(TENANT_HEADER).next().map(str::to_owned),
            msg.extension_rows(CALLER_HEADER).next().map(str::to_owned),
        ) else {
            return self
                .reply(tx, &msg, 403, "Calls must come through an edge")
                .await;
        };
        if msg.body().is_empty() {
            return self
                .reply(tx, &msg, 488, "An SDP offer is required in the INVITE")
                .await;
        }
        if session_timer_of(&msg).is_err() {
            let b = ResponseBuilder::for_request(
                &msg,
                422,
                "Session Interval Too Small",
                &random_token(),
            )
            .header("Min-SE", MIN_SE.to_string());
            return self.respond(tx, b).await;
        }
        let Ok(call_id) = msg.call_id().map(str::to_owned) else {
            return self.reply(tx, &msg, 400, "Missing Call-ID").await;
        };
        if self.by_call_id.contains_key(&call_id) || self.setups.contains_key(&call_id) {
            return self.reply(tx, &msg, 482, "Loop Detected").await;
        }
        if Dialog::as_uas(&msg, "probe").is_none() {
            return self
                .reply(tx, &msg, 400, "INVITE without a usable Contact")
                .await;
        }
        let dialled = msg
            .request_uri()
            .and_then(|u| u.ok())
            .and_then(|u| u.as_sip().and_then(|s| s.user.map(str::to_owned)))
            .unwrap_or_default();
        let request = RouteRequest {
            tenant_id,
            caller,
            carrier: msg.extension_rows(CARRIER_HEADER).next().map(str::to_owned),
            dialled,
            sdp: String::from_utf8_lossy(msg.body()).into_owned(),
            session: call_id.clone(),
            leg_b: format!("{}@sy", random_token()),
        };
        self.setups.insert(
            call_id.clone(),
            Setup {
                tx,
                invite: msg,
                edge,
                invited_at: Instant::now(),
                cancelled: false,
            },
        );
        let (deps, done) = (self.route_deps.clone(), self.routed_tx.clone());
        tokio::spawn(async move {
            let outcome = routing::route_call(deps, request.clone(), now_ms()).await;
            let _ = done.send(RouteDone {
                call_id,
                request,
                outcome,
            });
        });
    }

    /// A routing step came back: the call rings its callee's contacts, or its caller
    /// gets the refusal. A call cancelled or a node draining meanwhile is let go (its
    /// caller was answered already; the media session goes).
    async fn on_routed(&mut self, done: RouteDone) {
        let RouteDone {
            call_id,
            request,
            outcome,
        } = done;
        let Some(setup) = self.setups.remove(&call_id) else {
            return;
        };
        let Setup {
            tx,
            invite: msg,
            edge,
            invited_at,
            cancelled,
        } = setup;
        let tenant_id = request.tenant_id;
        let routed = match outcome {
            Ok(r) => r,
            Err(refusal) => {
                if refusal.attempted {
                    self.metrics.attempted(&tenant_id);
                }
                if !cancelled {
                    self.reply(tx, &msg, refusal.status, &refusal.reason).await;
                }
                return;
            }
        };
        self.metrics.attempted(&tenant_id);
        let session = request.session;
        if cancelled || self.draining {
            let _ = self.media.call(Request::Destroy { session }).await;
            release_channel(&self.route_deps.channels, &routed.ring, &request.leg_b);
            if !cancelled {
                let b = ResponseBuilder::for_request(&msg, 503, "Shutting Down", &random_token())
                    .header("Retry-After", "5");
                self.respond(tx, b).await;
            }
            return;
        }
        let Routed {
            config,
            caller_ext,
            offer_b,
            ring,
            ring_seconds,
            hunt,
            fallback,
            presented,
        } = routed;
        let caller = request.caller;
        let domain = config.tenant.domain.clone();
        let session_timer = session_timer_of(&msg).ok().flatten();
        let a_tag = random_token();
        let b_call_id = request.leg_b;
        let Some(a) = Dialog::as_uas(&msg, &a_tag) else {
            let _ = self.media.call(Request::Destroy { session }).await;
            release_channel(&self.route_deps.channels, &ring, &b_call_id);
            return self
                .reply(tx, &msg, 400, "INVITE without a usable Contact")
                .await;
        };
        let key = self.next_key;
        self.next_key += 1;
        let (caller_name, caller_number) = match &caller_ext {
            Some(e) => (e.display_name.clone(), e.number.to_string()),
            None => (String::new(), caller.clone()),
        };
        let from_b = format!(
            "\"{}\" <sip:{}@{}>;tag={}",
            caller_name.replace('"', ""),
            caller_number,
            domain,
            random_token()
        );
        let mut legs = BLeg {
            from: from_b,
            to: String::new(),
            call_id: b_call_id.clone(),
            offer: offer_b,
        };
        let (targets, to_uri, ring_for, callee_name, trunk, forwards) = match ring {
            Ring::Phones { callee, bindings } => {
                legs.to = format!("<sip:{}@{}>", callee.number, domain);
                let targets: Vec<ForkTarget> =
                    bindings.iter().filter_map(ForkTarget::of_binding).collect();
                let ring_for = ring_seconds.map_or(callee.no_answer_seconds, i64::from);
                // An extension's own forwards; a ring group's members ring where they are.
                let forwards = |f: &Option<String>| {
                    f.clone()
                        .filter(|f| !f.is_empty() && ring_seconds.is_none())
                };
                (
                    targets,
                    format!("sip:{}@{}", callee.number, domain),
                    Duration::from_secs(ring_for.clamp(1, 600) as u64),
                    callee.username.clone(),
                    None,
                    (
                        forwards(&callee.forward_busy),
                        forwards(&callee.forward_no_answer),
                    ),
                )
            }
            Ring::Trunk {
                leg,
                rest,
                dialled,
                emergency,
            } => {
                let presenting = presented.clone().unwrap_or_else(|| caller_number.clone());
                legs = trunk_leg_identity(&legs, &leg, &presenting);
                let target = ForkTarget::of_trunk(&leg, edge);
                (
                    vec![target],
                    format!("sip:{dialled}@{domain}"),
                    OUTBOUND_RING_LIMIT,
                    dialled.clone(),
                    Some(TrunkState {
                        leg,
                        rest,
                        dialled,
                        emergency,
                        fork: 0,
                        authenticated: false,
                        member: b_call_id.clone(),
                    }),
                    (None, None),
                )
            }
        };
        let forks = self.fork(key, 0, &legs, &targets).await;
        if forks.is_empty() {
            let _ = self.media.call(Request::Destroy { session }).await;
            if let Some(t) = &trunk {
                release_leg(&self.route_deps.channels, &t.leg, &b_call_id);
            }
            return self.reply(tx, &msg, 480, "Temporarily Unavailable").await;
        }
        info!(
            tenant = tenant_id,
            caller,
            callee = callee_name,
            trunk = trunk.as_ref().map(|t| t.leg.trunk_id.as_str()),
            forks = forks.len(),
            call_id,
            "call routed"
        );
        if let Some(t) = &trunk {
            self.metrics.trunk_attempted(&tenant_id, &t.leg.trunk_id);
            self.arm(Instant::now() + TRUNK_SILENCE, key, Timer::TrunkSilence(0));
        }
        let from_uri = msg
            .from_header()
            .ok()
            .map(|f| f.uri_str.to_owned())
            .unwrap_or_default();
        self.by_call_id.insert(call_id.clone(), key);
        self.by_call_id.insert(b_call_id.clone(), key);
        let ring_deadline = Instant::now() + ring_for;
        self.arm(ring_deadline, key, Timer::NoAnswer);
        let hunt_is_empty = hunt.is_empty();
        let (forward_busy, forward_no_answer) = forwards;
        let (first_to, first_via) = match &trunk {
            Some(t) => (t.leg.number.clone(), format!("trunk:{}", t.leg.trunk_id)),
            None => (
                to_uri
                    .strip_prefix("sip:")
                    .and_then(|u| u.split('@').next())
                    .unwrap_or_default()
                    .to_owned(),
                "extension".to_owned(),
            ),
        };
        self.calls.insert(
            key,
            Call {
                tenant_id,
                session,
                a_tx: tx,
                a_invite: msg,
                a_tag,
                a,
                b: None,
                b_call_id,
                forks,
                phase: Phase::Routing,
                ringing_sent: false,
                best_failure: None,
                started_ms: now_ms(),
                invited_at,
                answered_ms: None,
                from_uri,
                to_uri,
                reinvite: None,
                unacked: None,
                session_timer,
                leg: legs,
                config,
                forward_busy,
                forward_no_answer,
                rerouting: false,
                ring_deadline,
                hunt: hunt.into(),
                fallback,
                hunt_ring: ring_seconds.filter(|_| !hunt_is_empty),
                edge,
                presented,
                trunk,
                remote_sdp: [request.sdp, String::new()],
                transfer: None,
                attempts: vec![Attempt {
                    to: first_to,
                    via: first_via,
                    reason: "dialled",
                    at_ms: now_ms(),
                    result: None,
                }],
                reroute_reason: "",
            },
        );
    }

    async fn on_response(&mut self, tx: TxId, msg: Message) {
        let Some(&(key, purpose)) = self.by_tx.get(&tx) else {
            return;
        };
        let status = msg.status().unwrap_or(0);
        match purpose {
            Purpose::Fork(i) => self.on_fork_response(key, i, msg).await,
            Purpose::Transfer(i) => self.on_transfer_response(key, i, msg).await,
            Purpose::Replace => self.on_replace_response(key, msg).await,
            Purpose::Reinvite => self.on_reinvite_response(key, msg).await,
            Purpose::Cancel | Purpose::Bye | Purpose::Notify => {
                if status >= 200 {
                    self.by_tx.remove(&tx);
                }
            }
        }
    }

    async fn send_ack(&self, dialog: &Dialog, cseq: u32) {
        let mut d = dialog.clone();
        let ack = d.request(Method::Ack, self.local, None, Some(cseq));
        let peer = dialog.peer(self.local);
        if let Err(e) = self.hub.send(peer.target, ack.to_bytes()).await {
            debug!(error = %e, "ACK not sent");
        }
    }

    async fn send_in_dialog(
        &mut self,
        key: u64,
        leg: Leg,
        method: Method,
        body: Option<&str>,
    ) -> Option<Message> {
        let local = self.local;
        let call = self.calls.get_mut(&key)?;
        let dialog = match leg {
            Leg::A => &mut call.a,
            Leg::B => call.b.as_mut()?,
        };
        let request = dialog.request(method.clone(), local, body, None);
        let peer = dialog.peer(local);
        match self.driver.send_request(request.clone(), peer).await {
            Ok(tx) => {
                let purpose = if method == Method::Invite {
                    Purpose::Reinvite
                } else {
                    Purpose::Bye
                };
                self.by_tx.insert(tx, (key, purpose));
                Some(request)
            }
            Err(e) => {
                warn!(error = %e, %method, "in-dialog request not sent");
                None
            }
        }
    }

    async fn on_fork_response(&mut self, key: u64, i: usize, msg: Message) {
        let status = msg.status().unwrap_or(0);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.forks[i].heard = true;
        if status < 200 {
            if status > 100 && !call.ringing_sent && call.phase == Phase::Routing {
                call.ringing_sent = true;
                self.metrics
                    .post_dial_delay(&call.tenant_id, call.invited_at.elapsed());
                let b = self.a_response(&self.calls[&key], 180, "Ringing");
                let tx = self.calls[&key].a_tx;
                self.respond(tx, b).await;
            }
            return;
        }
        let fork_request = call.forks[i].request.clone();
        let already_done = call.forks[i].done;
        call.forks[i].done = true;
        if !already_done && !matches!(status, 401 | 407) {
            self.note_trunk_outcome(key, i, status);
        }
        if (200..300).contains(&status) {
            let Some(dialog) = Dialog::as_uac(&fork_request, &msg, 1) else {
                warn!("2xx without Contact from the callee");
                return;
            };
            self.send_ack(&dialog, 1).await;
            let call = self.calls.get_mut(&key).expect("call present");
            if call.phase != Phase::Routing || already_done {
                // A second fork answered, or a retransmitted 2xx: it has its ACK; a
                // second answer is hung up at once.
                let same = call.b.as_ref().is_some_and(|b| b.remote == dialog.remote);
                if !same {
                    self.hang_up_dialog(dialog).await;
                }
                return;
            }
            call.phase = Phase::Answered;
            call.answered_ms = Some(now_ms());
            if !call.ringing_sent {
                self.metrics
                    .post_dial_delay(&call.tenant_id, call.invited_at.elapsed());
            }
            self.metrics.answered(&call.tenant_id);
            call.conclude_attempt(200);
            call.b = Some(dialog);
            call.remote_sdp[1] = String::from_utf8_lossy(msg.body()).into_owned();
            let session = call.session.clone();
            let others: Vec<Message> = call.take_ringing_forks();
            for other in others {
                self.cancel_fork(key, &other).await;
            }
            let answer = self
                .media
                .call(Request::Answer {
                    session,
                    from: Leg::B,
                    sdp: String::from_utf8_lossy(msg.body()).into_owned(),
                })
                .await;
            let call = &self.calls[&key];
            match answer {
                Ok(Reply::Sdp { sdp }) => {
                    let mut ok = self.a_response(call, 200, "OK");
                    if let Some(t) = call.session_timer {
                        ok = ok.header("Session-Expires", t.header());
                        if t.caller_supports {
                            ok = ok.header("Require", "timer");
                        }
                    }
                    let bytes = ok.body("application/sdp", Bytes::from(sdp)).build();
                    let tx = call.a_tx;
                    let peer = call.a.peer(self.local);
                    let cseq = call.a_invite.cseq().map(|c| c.seq).unwrap_or(0);
                    if let Err(e) = self.driver.respond(tx, 200, bytes.clone()).await {
                        debug!(error = %e, "200 not sent");
                    }
                    info!(
                        tenant = call.tenant_id,
                        call_id = call.a.call_id,
                        "call answered"
                    );
                    self.calls.get_mut(&key).expect("call").unacked = Some(Unacked {
                        bytes,
                        peer,
                        cseq,
                        interval: T1,
                        since: Instant::now(),
                    });
                    self.arm(Instant::now() + T1, key, Timer::Retransmit2xx);
                    self.restart_session_timer(key);
                }
                _ => {
                    warn!("the callee's answer cannot be relayed");
                    let b = self.a_response(call, 488, "Not Acceptable Here");
                    let tx = call.a_tx;
                    self.respond(tx, b).await;
                    self.send_in_dialog(key, Leg::B, Method::Bye, None).await;
                    self.finish(key, Disposition::Failed, None).await;
                }
            }
            return;
        }
        // A final failure of one fork; one we had CANCELled already (its 487) says
        // nothing new.
        if already_done {
            return;
        }
        if matches!(status, 401 | 407) {
            if self.answer_trunk_challenge(key, i, &msg).await {
                return;
            }
            self.note_trunk_outcome(key, i, status);
        }
        let reason = msg.reason().unwrap_or("").to_owned();
        let call = self.calls.get_mut(&key).expect("call present");
        let better = match &call.best_failure {
            None => true,
            Some((s, _)) => rank(status) > rank(*s),
        };
        if better {
            call.best_failure = Some((status, reason));
        }
        if !call.rerouting
            && let Some(next) = call.failover_after(i, status)
        {
            call.conclude_attempt(status);
            return self.reroute(key, next);
        }
        if call.phase == Phase::Routing && !call.rerouting && call.forks.iter().all(|f| f.done) {
            let busy = matches!(call.best_failure, Some((486 | 600, _)));
            if let Some((worst, _)) = call.best_failure {
                call.conclude_attempt(worst);
            }
            if let Some(next) = call.next_reroute(busy, false) {
                return self.reroute(key, next);
            }
            self.conclude_unanswered(key).await;
        }
    }

    /// Sends leg B's INVITE to each target (forks numbered from `first`); the forks sent.
    async fn fork(
        &mut self,
        key: u64,
        first: usize,
        leg: &BLeg,
        targets: &[ForkTarget],
    ) -> Vec<Fork> {
        self.fork_as(key, first, leg, targets, Purpose::Fork).await
    }

    /// [`Self::fork`] with the purpose its transactions answer to.
    async fn fork_as(
        &mut self,
        key: u64,
        first: usize,
        leg: &BLeg,
        targets: &[ForkTarget],
        purpose: fn(usize) -> Purpose,
    ) -> Vec<Fork> {
        let mut forks = Vec::new();
        for target in targets {
            let mut request = RequestBuilder::new(Method::Invite, target.uri.clone())
                .header(
                    "Via",
                    format!(
                        "SIP/2.0/UDP {};branch=z9hG4bK{};rport",
                        self.local,
                        random_token()
                    ),
                )
                .header("Max-Forwards", "70");
            for route in &target.routes {
                request = request.header("Route", route.clone());
            }
            if let Some((name, value)) = &target.credentials {
                request = request.header(name, value.clone());
            }
            let request = request
                .header("From", leg.from.clone())
                .header("To", leg.to.clone())
                .header("Call-ID", leg.call_id.clone())
                .header("CSeq", format!("{} INVITE", target.cseq))
                .header("Contact", format!("<sip:sy@{}>", self.local))
                .header("Allow", ALLOW)
                .body("application/sdp", Bytes::from(leg.offer.clone()))
                .build();
            let Ok(request) = Message::parse_datagram(request) else {
                continue;
            };
            let peer = Dialog {
                call_id: String::new(),
                local: String::new(),
                remote: String::new(),
                remote_target: String::new(),
                route: Vec::new(),
                cseq: 0,
                next_hop: target.next_hop,
            }
            .peer(self.local);
            match self.driver.send_request(request.clone(), peer).await {
                Ok(ftx) => {
                    self.by_tx.insert(ftx, (key, purpose(first + forks.len())));
                    forks.push(Fork {
                        request,
                        done: false,
                        heard: false,
                    });
                }
                Err(e) => warn!(error = %e, target = target.uri, "fork not sent"),
            }
        }
        forks
    }

    /// A BYE in a dialog no call keeps (a second answer, a new party we cannot relay).
    async fn hang_up_dialog(&self, mut dialog: Dialog) {
        let bye = dialog.request(Method::Bye, self.local, None, None);
        let _ = self.driver.send_request(bye, dialog.peer(self.local)).await;
    }

    /// Counts a final answer (or none) of fork `i` if it is the call's trunk leg.
    fn note_trunk_outcome(&self, key: u64, i: usize, status: u16) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if let Some(t) = call.trunk.as_ref().filter(|t| t.fork == i) {
            self.metrics.trunk_outcome(
                &call.tenant_id,
                &t.leg.trunk_id,
                TrunkOutcome::of_status(status),
            );
        }
    }

    /// A trunk fork's `401`/`407`: the INVITE goes again with the trunk's credentials
    /// (once per route; CSeq 2, a new branch). False when it cannot (no credentials, a
    /// second challenge, a challenge we cannot answer): the failure then counts as such.
    async fn answer_trunk_challenge(&mut self, key: u64, i: usize, msg: &Message) -> bool {
        let Some(call) = self.calls.get_mut(&key) else {
            return false;
        };
        let presenting = call.presenting();
        let Some(trunk) = call
            .trunk
            .as_mut()
            .filter(|t| t.fork == i && !t.authenticated)
        else {
            return false;
        };
        let Some(creds) = trunk.leg.credentials.clone() else {
            warn!(
                trunk = trunk.leg.trunk_id,
                "trunk asks for credentials it has none of"
            );
            return false;
        };
        let (challenge, answer) = if msg.status() == Some(401) {
            (HeaderName::WwwAuthenticate, "Authorization")
        } else {
            (HeaderName::ProxyAuthenticate, "Proxy-Authorization")
        };
        let mut target = ForkTarget::of_trunk(&trunk.leg, call.edge);
        let Some(value) = msg.header_rows(challenge).find_map(|c| {
            switchyard_sip::digest::answer_challenge(
                c,
                "INVITE",
                &target.uri,
                &creds.username,
                &creds.password,
                &random_token(),
            )
        }) else {
            warn!(
                trunk = trunk.leg.trunk_id,
                "trunk's challenge cannot be answered"
            );
            return false;
        };
        trunk.authenticated = true;
        target.cseq = 2;
        target.credentials = Some((answer, value));
        let leg = trunk_leg_identity(&call.leg, &trunk.leg, &presenting);
        let first = call.forks.len();
        let forks = self.fork(key, first, &leg, &[target]).await;
        let Some(call) = self.calls.get_mut(&key) else {
            return false;
        };
        if forks.is_empty() {
            return false;
        }
        call.forks.extend(forks);
        if let Some(t) = call.trunk.as_mut() {
            t.fork = first;
        }
        self.arm(
            Instant::now() + TRUNK_SILENCE,
            key,
            Timer::TrunkSilence(first),
        );
        true
    }

    /// The callee was busy or did not answer and forwards there: its target's contacts
    /// are looked up in a task (the call rings nowhere meanwhile; failures of the forks
    /// it had do not end it).
    fn reroute(&mut self, key: u64, target: Reroute) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.rerouting = true;
        info!(call_id = call.a.call_id, ?target, "forwarding");
        // A trunk leg that failed gives its channel back before the next route seizes
        // one (the same trunk may carry the next route too).
        if let (Reroute::Failover { .. }, Some(t)) = (&target, &call.trunk) {
            self.metrics
                .trunk_failed_over(&call.tenant_id, &t.leg.trunk_id);
        }
        let held = call
            .trunk
            .take()
            .filter(|t| t.leg.holds_channel)
            .map(|t| (routing::trunk_channels(&t.leg.trunk_id), t.member));
        let (deps, done, config, tenant, leg_b) = (
            self.route_deps.clone(),
            self.rerouted_tx.clone(),
            call.config.clone(),
            call.tenant_id.clone(),
            call.b_call_id.clone(),
        );
        tokio::spawn(async move {
            if let Some(held) = held
                && let Err(e) = deps.channels.release(&[held]).await
            {
                warn!(error = %e, "trunk channel not released");
            }
            let outcome =
                routing::forward_to(&deps, &config, &tenant, &leg_b, &target, now_ms()).await;
            let _ = done.send((key, outcome));
        });
    }

    /// A forward's contacts came back: they ring, or the call ends as it would have.
    async fn on_rerouted(&mut self, key: u64, outcome: routing::Forwarded) {
        let Some(call) = self.calls.get_mut(&key) else {
            return; // cancelled or hung up meanwhile
        };
        if call.phase != Phase::Routing || !call.rerouting {
            return;
        }
        call.rerouting = false;
        let first = call.forks.len();
        let ringing = match outcome {
            Ok(Ring::Phones {
                callee: target,
                bindings,
            }) => {
                let leg = BLeg {
                    to: format!("<sip:{}@{}>", target.number, call.config.tenant.domain),
                    ..call.leg.clone()
                };
                let targets: Vec<ForkTarget> =
                    bindings.iter().filter_map(ForkTarget::of_binding).collect();
                let forks = self.fork(key, first, &leg, &targets).await;
                let call = self.calls.get_mut(&key).expect("call present");
                let sent = !forks.is_empty();
                call.forks.extend(forks);
                let reason = call.reroute_reason;
                call.begin_attempt(target.number.to_string(), "extension".into(), reason);
                if !sent {
                    call.conclude_attempt(480);
                }
                if sent {
                    let ring_for = call.hunt_ring.map_or(target.no_answer_seconds, i64::from);
                    let timeout = Duration::from_secs(ring_for.clamp(1, 600) as u64);
                    let deadline = Instant::now() + timeout;
                    call.ring_deadline = deadline;
                    self.arm(deadline, key, Timer::NoAnswer);
                }
                sent
            }
            Ok(Ring::Trunk {
                leg: trunk_leg,
                rest,
                dialled,
                emergency,
            }) => {
                let presenting = call.presenting();
                let leg = trunk_leg_identity(&call.leg, &trunk_leg, &presenting);
                let target = ForkTarget::of_trunk(&trunk_leg, call.edge);
                let forks = self.fork(key, first, &leg, &[target]).await;
                let call = self.calls.get_mut(&key).expect("call present");
                let sent = !forks.is_empty();
                call.forks.extend(forks);
                let reason = call.reroute_reason;
                call.begin_attempt(
                    trunk_leg.number.clone(),
                    format!("trunk:{}", trunk_leg.trunk_id),
                    reason,
                );
                if sent {
                    info!(
                        call_id = call.a.call_id,
                        trunk = trunk_leg.trunk_id,
                        "out through the next route"
                    );
                    self.metrics
                        .trunk_attempted(&call.tenant_id, &trunk_leg.trunk_id);
                    call.trunk = Some(TrunkState {
                        leg: trunk_leg,
                        rest,
                        dialled,
                        emergency,
                        fork: first,
                        authenticated: false,
                        member: call.b_call_id.clone(),
                    });
                    let deadline = Instant::now() + OUTBOUND_RING_LIMIT;
                    call.ring_deadline = deadline;
                    self.arm(deadline, key, Timer::NoAnswer);
                    self.arm(
                        Instant::now() + TRUNK_SILENCE,
                        key,
                        Timer::TrunkSilence(first),
                    );
                } else if trunk_leg.holds_channel {
                    release_leg(&self.route_deps.channels, &trunk_leg, &call.b_call_id);
                }
                sent
            }
            Err(refusal) => {
                info!(
                    status = refusal.status,
                    reason = refusal.reason,
                    "forward not possible"
                );
                false
            }
        };
        if !ringing {
            // A sequential group's member that cannot ring: the next one does.
            match self
                .calls
                .get_mut(&key)
                .and_then(|c| c.next_reroute(false, false))
            {
                Some(next) => self.reroute(key, next),
                None => self.conclude_unanswered(key).await,
            }
        }
    }

    /// Ends a call no fork answered: the caller gets the worst failure seen (`408` when
    /// the ringing timed out), and the CDR its disposition.
    async fn conclude_unanswered(&mut self, key: u64) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let (status, reason) = call.best_failure.clone().unwrap_or((480, String::new()));
        if let Some(call) = self.calls.get_mut(&key) {
            call.conclude_attempt(status);
        }
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let disposition = match status {
            486 | 600 => Disposition::Busy,
            487 => Disposition::Cancelled,
            408 => Disposition::NoAnswer,
            _ => Disposition::Failed,
        };
        let b = self.a_response(call, status, &reason);
        let tx = call.a_tx;
        self.respond(tx, b).await;
        self.finish(key, disposition, None).await;
    }

    async fn cancel_fork(&mut self, key: u64, invite: &Message) {
        let mut b = RequestBuilder::new(
            Method::Cancel,
            invite.request_uri_str().unwrap_or_default().to_owned(),
        );
        for name in [HeaderName::Via, HeaderName::Route] {
            for v in invite.header_rows(name) {
                b = b.header(name.canonical().unwrap_or("X"), v.to_owned());
            }
        }
        b = b.header("Max-Forwards", "70");
        for name in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
            if let Some(v) = invite.header(name) {
                b = b.header(name.canonical().unwrap_or("X"), v.to_owned());
            }
        }
        let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
        b = b.header("CSeq", format!("{seq} CANCEL"));
        let Ok(cancel) = Message::parse_datagram(b.build()) else {
            return;
        };
        let Some(next_hop) = invite.header(HeaderName::Route).and_then(uri_addr) else {
            return;
        };
        let peer = Peer {
            target: switchyard_sip_net::Target::Datagram {
                local: self.local,
                dest: next_hop,
            },
            source: next_hop,
            transport: switchyard_sip_net::Transport::Udp,
            local: self.local,
        };
        if let Ok(tx) = self.driver.send_request(cancel, peer).await {
            self.by_tx.insert(tx, (key, Purpose::Cancel));
        }
    }

    fn on_ack(&mut self, msg: &Message) {
        let Ok(call_id) = msg.call_id() else {
            return;
        };
        let Some(&key) = self.by_call_id.get(call_id) else {
            return;
        };
        let seq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        if let Some(call) = self.calls.get_mut(&key)
            && call.unacked.as_ref().is_some_and(|u| u.cseq == seq)
            && if call.a.call_id == call_id {
                call.a.matches_request(msg)
            } else {
                call.b.as_ref().is_some_and(|b| b.matches_request(msg))
            }
        {
            call.unacked = None;
        }
    }

    async fn on_cancel(&mut self, tx: TxId, msg: &Message) {
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        if let Some(setup) = self.setups.get_mut(&call_id) {
            if setup.cancelled || !cancels(msg, &setup.invite) {
                return self.no_such_dialog(tx, msg).await;
            }
            setup.cancelled = true;
            let (a_tx, invite) = (setup.tx, setup.invite.clone());
            self.reply(tx, msg, 200, "OK").await;
            self.reply(a_tx, &invite, 487, "Request Terminated").await;
            info!(call_id, "call cancelled by the caller while being routed");
            return;
        }
        let Some(&key) = self.by_call_id.get(&call_id) else {
            return self.no_such_dialog(tx, msg).await;
        };
        // RFC 3261 §9.2: a CANCEL matches the INVITE transaction with its branch and
        // CSeq number; a CANCEL that merely names the Call-ID cancels nothing.
        let matches_invite = self
            .calls
            .get(&key)
            .is_some_and(|call| call.a.call_id == call_id && cancels(msg, &call.a_invite));
        if !matches_invite {
            return self.no_such_dialog(tx, msg).await;
        }
        self.reply(tx, msg, 200, "OK").await;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.phase != Phase::Routing {
            return;
        }
        let forks: Vec<Message> = call.take_ringing_forks();
        let b = self.a_response(&self.calls[&key], 487, "Request Terminated");
        let a_tx = self.calls[&key].a_tx;
        self.respond(a_tx, b).await;
        for f in forks {
            self.cancel_fork(key, &f).await;
        }
        info!(call_id, "call cancelled by the caller");
        self.finish(key, Disposition::Cancelled, Some("caller"))
            .await;
    }

    async fn in_dialog(&mut self, tx: TxId, msg: Message) {
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        let Some(&key) = self.by_call_id.get(&call_id) else {
            return self.no_such_dialog(tx, &msg).await;
        };
        let Some(call) = self.calls.get(&key) else {
            return self.no_such_dialog(tx, &msg).await;
        };
        let leg = if call.a.call_id == call_id {
            Leg::A
        } else {
            Leg::B
        };
        let dialog = match leg {
            Leg::A => Some(&call.a),
            Leg::B => call.b.as_ref(),
        };
        if !dialog.is_some_and(|d| d.matches_request(&msg)) {
            debug!(call_id, "in-dialog request with tags of no dialog of ours");
            return self.no_such_dialog(tx, &msg).await;
        }
        let method = msg.method().cloned().unwrap_or(Method::Ack);
        match method {
            Method::Bye => {
                self.reply(tx, &msg, 200, "OK").await;
                let side = if leg == Leg::A { "caller" } else { "callee" };
                if self.calls[&key].phase == Phase::Answered {
                    self.send_in_dialog(key, leg.other(), Method::Bye, None)
                        .await;
                }
                info!(call_id, side, "call hung up");
                self.finish(key, Disposition::Answered, Some(side)).await;
            }
            Method::Invite => {
                if call.phase != Phase::Answered || call.reinvite.is_some() {
                    return self.reply(tx, &msg, 491, "Request Pending").await;
                }
                if msg.body().is_empty() {
                    return self
                        .reply(tx, &msg, 488, "A re-INVITE needs an SDP offer")
                        .await;
                }
                let offer = self
                    .media
                    .call(Request::Offer {
                        session: call.session.clone(),
                        from: leg,
                        sdp: String::from_utf8_lossy(msg.body()).into_owned(),
                    })
                    .await;
                let sdp = match offer {
                    Ok(Reply::Sdp { sdp }) => sdp,
                    other => return self.reply(tx, &msg, 488, &refusal(other)).await,
                };
                if let Some(call) = self.calls.get_mut(&key) {
                    call.remote_sdp[leg_index(leg)] =
                        String::from_utf8_lossy(msg.body()).into_owned();
                }
                if let Some(out) = self
                    .send_in_dialog(key, leg.other(), Method::Invite, Some(&sdp))
                    .await
                {
                    self.calls.get_mut(&key).expect("call").reinvite = Some(PendingReinvite {
                        from: leg,
                        tx,
                        request: msg,
                        out,
                    });
                } else {
                    self.reply(tx, &msg, 500, "Cannot reach the other party")
                        .await;
                }
            }
            Method::Update if leg == Leg::A && call.session_timer.is_some() => {
                // A refresh without SDP (RFC 4028 §7.4): answered here, not relayed.
                let timer = call.session_timer.expect("checked");
                let b = ResponseBuilder::for_request(&msg, 200, "OK", &call.a_tag)
                    .header("Session-Expires", timer.header())
                    .header("Contact", format!("<sip:sy@{}>", self.local));
                self.respond(tx, b).await;
                self.restart_session_timer(key);
            }
            Method::Refer => self.on_refer(key, leg, tx, msg).await,
            Method::Options | Method::Info | Method::Update | Method::Notify => {
                self.reply(tx, &msg, 200, "OK").await
            }
            _ => self.reply(tx, &msg, 501, "Not Implemented").await,
        }
    }

    /// A REFER on `leg` of an answered call (blind transfer, RFC 3515): `202`, a NOTIFY
    /// of `100 Trying`, and the Refer-To's number is looked up in the tenant's dial plan
    /// in a task. Attended transfer (Refer-To with Replaces) is refused for now.
    async fn on_refer(&mut self, key: u64, leg: Leg, tx: TxId, msg: Message) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.phase != Phase::Answered || call.transfer.is_some() || call.reinvite.is_some() {
            return self.reply(tx, &msg, 491, "Request Pending").await;
        }
        let Some(refer_to) = msg.header(HeaderName::ReferTo).map(str::to_owned) else {
            return self.reply(tx, &msg, 400, "Missing Refer-To").await;
        };
        let Ok(target) = switchyard_sip::headers::NameAddr::parse_header(&refer_to, "Refer-To")
        else {
            return self.reply(tx, &msg, 400, "Malformed Refer-To").await;
        };
        let uri = target.uri().ok();
        let sip = uri.as_ref().and_then(|u| u.as_sip());
        if let Some(replaces) = sip.and_then(|s| s.headers).and_then(replaces_of) {
            return self.on_attended_refer(key, leg, tx, msg, replaces).await;
        }
        let Some(number) = sip.and_then(|s| s.user).map(str::to_owned) else {
            return self.reply(tx, &msg, 400, "Refer-To names no number").await;
        };
        self.reply(tx, &msg, 202, "Accepted").await;
        info!(call_id = call.a.call_id, ?leg, number, "blind transfer");
        let (deps, done, config, tenant, leg_b) = (
            self.route_deps.clone(),
            self.transfer_tx.clone(),
            call.config.clone(),
            call.tenant_id.clone(),
            format!("{}@sy", random_token()),
        );
        let call = self.calls.get_mut(&key).expect("call");
        call.begin_attempt(
            number.clone(),
            format!("transfer:{}", leg_name(leg)),
            "transfer",
        );
        call.transfer = Some(Transfer {
            referrer: leg,
            target: number.clone(),
            forks: Vec::new(),
            leg: None,
            call_id: leg_b.clone(),
            trunk: None,
            replacing: None,
        });
        self.notify_transfer(key, leg, "SIP/2.0 100 Trying", false)
            .await;
        tokio::spawn(async move {
            let outcome = routing::forward_to(
                &deps,
                &config,
                &tenant,
                &leg_b,
                &Reroute::Dialled(number),
                now_ms(),
            )
            .await;
            let _ = done.send((key, outcome));
        });
    }

    /// The relay's side towards a transfer's referrer, offered to the new party: the
    /// staying party's last SDP offered again (`None` when the media node refuses it).
    async fn offer_for_new_party(&self, key: u64, stays: Leg) -> Option<String> {
        let call = self.calls.get(&key)?;
        let offer = self
            .media
            .call(Request::Offer {
                session: call.session.clone(),
                from: stays,
                sdp: call.remote_sdp[leg_index(stays)].clone(),
            })
            .await;
        match offer {
            Ok(Reply::Sdp { sdp }) => Some(sdp),
            _ => None,
        }
    }

    /// A NOTIFY of a transfer's progress to the referrer (`message/sipfrag`).
    async fn notify_transfer(&mut self, key: u64, leg: Leg, frag: &str, done: bool) {
        let local = self.local;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let dialog = match leg {
            Leg::A => &mut call.a,
            Leg::B => match call.b.as_mut() {
                Some(b) => b,
                None => return,
            },
        };
        let state = if done {
            "terminated;reason=noresource".to_owned()
        } else {
            "active;expires=60".to_owned()
        };
        let request = dialog.request_with(
            Method::Notify,
            local,
            &[("Event", "refer".to_owned()), ("Subscription-State", state)],
            Some(("message/sipfrag;version=2.0", &format!("{frag}\r\n"))),
            None,
        );
        let peer = dialog.peer(local);
        match self.driver.send_request(request, peer).await {
            Ok(tx) => {
                self.by_tx.insert(tx, (key, Purpose::Notify));
            }
            Err(e) => debug!(error = %e, "NOTIFY not sent"),
        }
    }

    /// The transfer target's contacts (or trunk) came back: it rings with an offer of
    /// what the party staying in the call last said.
    async fn on_transfer_routed(&mut self, key: u64, outcome: routing::Forwarded) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(transfer) = call.transfer.as_ref() else {
            return;
        };
        let referrer = transfer.referrer;
        let member = transfer.call_id.clone();
        let stays = referrer.other();
        let ring = match outcome {
            Ok(ring) => ring,
            Err(refusal) => {
                let reason = refusal.reason.clone();
                return self
                    .transfer_failed(key, None, refusal.status, &reason)
                    .await;
            }
        };
        // The staying party's identity towards the new one.
        let domain = call.config.tenant.domain.clone();
        let from = match stays {
            Leg::A => call.from_uri.clone(),
            Leg::B => call.to_uri.clone(),
        };
        let leg = BLeg {
            from: format!("<{from}>;tag={}", random_token()),
            to: String::new(),
            call_id: member,
            offer: String::new(),
        };
        let (leg, targets) = match &ring {
            Ring::Phones { callee, bindings } => (
                BLeg {
                    to: format!("<sip:{}@{domain}>", callee.number),
                    ..leg
                },
                bindings
                    .iter()
                    .filter_map(ForkTarget::of_binding)
                    .collect::<Vec<_>>(),
            ),
            Ring::Trunk { leg: trunk, .. } => {
                let presenting = call.presenting();
                (
                    trunk_leg_identity(&leg, trunk, &presenting),
                    vec![ForkTarget::of_trunk(trunk, call.edge)],
                )
            }
        };
        let Some(sdp) = self.offer_for_new_party(key, stays).await else {
            release_channel(&self.route_deps.channels, &ring, &leg.call_id);
            return self
                .transfer_failed(key, None, 488, "Not Acceptable Here")
                .await;
        };
        let leg = BLeg { offer: sdp, ..leg };
        let forks = self
            .fork_as(key, 0, &leg, &targets, Purpose::Transfer)
            .await;
        if forks.is_empty() {
            release_channel(&self.route_deps.channels, &ring, &leg.call_id);
            return self
                .transfer_failed(key, None, 480, "Temporarily Unavailable")
                .await;
        }
        if let Some(t) = self.calls.get_mut(&key).and_then(|c| c.transfer.as_mut()) {
            t.forks = forks;
            t.leg = Some(leg);
            // The channel the new party's trunk leg holds stays held while it rings.
            t.trunk = match ring {
                Ring::Trunk { leg, .. } => Some(leg),
                Ring::Phones { .. } => None,
            };
        }
    }

    /// An answer from a transfer's new party: on `2xx` it takes the referrer's place
    /// (media re-pointed, the referrer told `200 OK` and hung up); a failure of every
    /// fork leaves the call as it was and tells the referrer why.
    async fn on_transfer_response(&mut self, key: u64, i: usize, msg: Message) {
        let status = msg.status().unwrap_or(0);
        if status < 200 {
            return;
        }
        let Some(transfer) = self.calls.get_mut(&key).and_then(|c| c.transfer.as_mut()) else {
            return;
        };
        let Some(fork) = transfer.forks.get_mut(i) else {
            return;
        };
        let already_done = fork.done;
        fork.done = true;
        let request = fork.request.clone();
        if !(200..300).contains(&status) {
            if already_done {
                return;
            }
            let reason = msg.reason().unwrap_or("").to_owned();
            return self.transfer_failed(key, Some(i), status, &reason).await;
        }
        let Some(dialog) = Dialog::as_uac(&request, &msg, 1) else {
            return;
        };
        self.send_ack(&dialog, 1).await;
        if already_done {
            // A second answer: hung up at once.
            return self.hang_up_dialog(dialog).await;
        }
        let call = self.calls.get_mut(&key).expect("call present");
        let transfer = call.transfer.take().expect("transfer present");
        let referrer = transfer.referrer;
        let answer = self
            .media
            .call(Request::Answer {
                session: call.session.clone(),
                from: referrer,
                sdp: String::from_utf8_lossy(msg.body()).into_owned(),
            })
            .await;
        for other in transfer.forks.iter().filter(|f| !f.done) {
            self.cancel_fork(key, &other.request).await;
        }
        if answer.is_err() {
            self.hang_up_dialog(dialog).await;
            self.notify_transfer(key, referrer, "SIP/2.0 488 Not Acceptable Here", true)
                .await;
            return;
        }
        if let Some(call) = self.calls.get_mut(&key) {
            call.conclude_attempt(200);
        }
        self.notify_transfer(key, referrer, "SIP/2.0 200 OK", true)
            .await;
        self.send_in_dialog(key, referrer, Method::Bye, None).await;
        let body = String::from_utf8_lossy(msg.body()).into_owned();
        self.replace_leg(key, referrer, dialog, body);
        if let Some(trunk) = transfer.trunk {
            self.keep_transferred_trunk(key, referrer, trunk, transfer.call_id);
        }
        info!(target = transfer.target, "transferred");
    }

    /// A transfer's new party reached through a trunk takes over the call's trunk
    /// accounting when it replaced leg B (the old B's channel, if any, is freed). The
    /// call tracks one trunk leg: a new party on leg A beside a trunk on leg B gives its
    /// channel back now (it goes uncounted; logged).
    fn keep_transferred_trunk(&mut self, key: u64, referrer: Leg, trunk: TrunkLeg, member: String) {
        let channels = self.route_deps.channels.clone();
        let Some(call) = self.calls.get_mut(&key) else {
            return release_leg(&channels, &trunk, &member);
        };
        match (referrer, call.trunk.take()) {
            (Leg::B, old) => {
                if let Some(old) = old {
                    release_leg(&channels, &old.leg, &old.member);
                }
                call.trunk = Some(TrunkState {
                    leg: trunk,
                    rest: Vec::new(),
                    dialled: String::new(),
                    emergency: false,
                    fork: usize::MAX,
                    authenticated: true,
                    member,
                });
            }
            (Leg::A, None) => {
                call.trunk = Some(TrunkState {
                    leg: trunk,
                    rest: Vec::new(),
                    dialled: String::new(),
                    emergency: false,
                    fork: usize::MAX,
                    authenticated: true,
                    member,
                });
            }
            (Leg::A, Some(kept)) => {
                warn!(
                    trunk = trunk.trunk_id,
                    "second trunk leg on one call: its channel goes uncounted"
                );
                release_leg(&channels, &trunk, &member);
                call.trunk = Some(kept);
            }
        }
    }

    /// Puts a new party's dialog on `leg` of the call (the referrer's, already hung up):
    /// its Call-ID now leads to this call, the old one to nothing.
    fn replace_leg(&mut self, key: u64, leg: Leg, dialog: Dialog, sdp: String) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.remote_sdp[leg_index(leg)] = sdp;
        let new_call_id = dialog.call_id.clone();
        let old = match leg {
            Leg::A => {
                // The caller's transaction is long over; its session timer was its own.
                call.session_timer = None;
                call.unacked = None;
                std::mem::replace(&mut call.a, dialog)
            }
            Leg::B => {
                call.b_call_id = new_call_id.clone();
                match call.b.replace(dialog) {
                    Some(old) => old,
                    None => return,
                }
            }
        };
        info!(old = old.call_id, new = new_call_id, "leg replaced");
        self.by_call_id.remove(&old.call_id);
        self.by_call_id.insert(new_call_id, key);
    }

    /// Attended transfer: a REFER whose Refer-To replaces the referrer's consultation
    /// call (RFC 3891). That call's other party is re-INVITEd with this call's media and,
    /// once it accepts, takes the referrer's place here; the referrer is hung up on both
    /// calls. The consultation call must be the same tenant's, and the Replaces must name
    /// both of its tags (knowing a Call-ID is not enough to take a call over).
    async fn on_attended_refer(
        &mut self,
        key: u64,
        leg: Leg,
        tx: TxId,
        msg: Message,
        replaces: (String, String, String),
    ) {
        let (call_id, to_tag, from_tag) = replaces;
        let found = self.by_call_id.get(&call_id).copied().filter(|k| *k != key);
        let consultation = found.and_then(|k| {
            let other = self.calls.get(&k)?;
            let this = self.calls.get(&key)?;
            if other.tenant_id != this.tenant_id || other.phase != Phase::Answered {
                return None;
            }
            let referrer = if other.a.call_id == call_id {
                Leg::A
            } else {
                Leg::B
            };
            let dialog = match referrer {
                Leg::A => Some(&other.a),
                Leg::B => other.b.as_ref(),
            }?;
            let tags = [
                switchyard_sip::headers::tag_of(&dialog.local)?,
                switchyard_sip::headers::tag_of(&dialog.remote)?,
            ];
            let named = [to_tag.as_str(), from_tag.as_str()];
            (tags == named || tags == [named[1], named[0]]).then_some((k, referrer))
        });
        let Some((other, other_referrer)) = consultation else {
            return self.reply(tx, &msg, 481, "No such call to replace").await;
        };
        let Some(sdp) = self.offer_for_new_party(key, leg.other()).await else {
            return self.reply(tx, &msg, 488, "Not Acceptable Here").await;
        };
        self.reply(tx, &msg, 202, "Accepted").await;
        let call = self.calls.get_mut(&key).expect("call");
        call.begin_attempt(
            call_id.clone(),
            format!("transfer:{}", leg_name(leg)),
            "attended-transfer",
        );
        let party = other_referrer.other();
        let local = self.local;
        let Some(dialog) = self.calls.get_mut(&other).and_then(|c| match party {
            Leg::A => Some(&mut c.a),
            Leg::B => c.b.as_mut(),
        }) else {
            return;
        };
        let request = dialog.request(Method::Invite, local, Some(&sdp), None);
        let cseq = dialog.cseq;
        let peer = dialog.peer(local);
        let sent = self.driver.send_request(request, peer).await;
        let call = self.calls.get_mut(&key).expect("call");
        call.transfer = Some(Transfer {
            referrer: leg,
            target: call_id,
            forks: Vec::new(),
            leg: None,
            call_id: String::new(),
            trunk: None,
            replacing: Some(Replacing {
                call: other,
                party,
                referrer: other_referrer,
                cseq,
            }),
        });
        match sent {
            Ok(out) => {
                self.by_tx.insert(out, (key, Purpose::Replace));
                self.notify_transfer(key, leg, "SIP/2.0 100 Trying", false)
                    .await;
            }
            Err(_) => {
                self.transfer_failed(key, None, 500, "Cannot reach the other party")
                    .await
            }
        }
    }

    /// The attended transfer's new party answered our re-INVITE: on `2xx` it takes the
    /// referrer's place (media re-pointed), the consultation call ends without it, and
    /// the referrer is told `200 OK` and hung up.
    async fn on_replace_response(&mut self, key: u64, msg: Message) {
        let status = msg.status().unwrap_or(0);
        if status < 200 {
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(replacing) = call.transfer.as_ref().and_then(|t| t.replacing) else {
            return;
        };
        let Some(mut dialog) =
            self.calls
                .get(&replacing.call)
                .and_then(|c| match replacing.party {
                    Leg::A => Some(c.a.clone()),
                    Leg::B => c.b.clone(),
                })
        else {
            return self.transfer_failed(key, None, 481, "Call Gone").await;
        };
        if !(200..300).contains(&status) {
            let reason = msg.reason().unwrap_or("").to_owned();
            return self.transfer_failed(key, None, status, &reason).await;
        }
        // The re-INVITE's CSeq is the dialog's from now on.
        dialog.cseq = replacing.cseq;
        self.send_ack(&dialog, replacing.cseq).await;
        let call = self.calls.get_mut(&key).expect("call");
        let transfer = call.transfer.take().expect("transfer");
        let referrer = transfer.referrer;
        let body = String::from_utf8_lossy(msg.body()).into_owned();
        let answer = self
            .media
            .call(Request::Answer {
                session: call.session.clone(),
                from: referrer,
                sdp: body.clone(),
            })
            .await;
        if answer.is_err() {
            self.notify_transfer(key, referrer, "SIP/2.0 488 Not Acceptable Here", true)
                .await;
            return;
        }
        if let Some(call) = self.calls.get_mut(&key) {
            call.conclude_attempt(200);
        }
        // The consultation call ends: its referrer's leg hung up, the party kept.
        let party_call_id = dialog.call_id.clone();
        self.send_in_dialog(replacing.call, replacing.referrer, Method::Bye, None)
            .await;
        self.finish(replacing.call, Disposition::Answered, Some("transferred"))
            .await;
        self.notify_transfer(key, referrer, "SIP/2.0 200 OK", true)
            .await;
        self.send_in_dialog(key, referrer, Method::Bye, None).await;
        self.replace_leg(key, referrer, dialog, body);
        self.by_call_id.insert(party_call_id, key);
        info!("attended transfer done");
    }

    /// A transfer did not reach its target (fork `i` failed, or the lookup did): once
    /// every fork failed, the referrer hears why and the call goes on as it was.
    async fn transfer_failed(&mut self, key: u64, i: Option<usize>, status: u16, reason: &str) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(transfer) = call.transfer.as_mut() else {
            return;
        };
        if let Some(fork) = i.and_then(|i| transfer.forks.get_mut(i)) {
            fork.done = true;
        }
        if transfer.forks.iter().any(|f| !f.done) {
            return;
        }
        let referrer = transfer.referrer;
        if let Some(trunk) = &transfer.trunk {
            release_leg(&self.route_deps.channels, trunk, &transfer.call_id);
        }
        call.transfer = None;
        call.conclude_attempt(status);
        info!(status, reason, "transfer failed");
        self.notify_transfer(key, referrer, &format!("SIP/2.0 {status} {reason}"), true)
            .await;
    }

    async fn on_reinvite_response(&mut self, key: u64, msg: Message) {
        let status = msg.status().unwrap_or(0);
        if status < 200 {
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(pending) = call.reinvite.take() else {
            return;
        };
        let to = pending.from.other();
        if (200..300).contains(&status) {
            let cseq = pending.out.cseq().map(|c| c.seq).unwrap_or(0);
            let dialog = match to {
                Leg::A => call.a.clone(),
                Leg::B => call.b.clone().expect("answered call has leg B"),
            };
            self.send_ack(&dialog, cseq).await;
            let body = String::from_utf8_lossy(msg.body()).into_owned();
            let answer = self
                .media
                .call(Request::Answer {
                    session: self.calls[&key].session.clone(),
                    from: to,
                    sdp: body.clone(),
                })
                .await;
            if answer.is_ok()
                && let Some(call) = self.calls.get_mut(&key)
            {
                call.remote_sdp[leg_index(to)] = body;
            }
            let call = &self.calls[&key];
            // Our tag is in the local side of the dialog (a transfer may have replaced
            // the party on either leg).
            let tag = match pending.from {
                Leg::A => Some(&call.a),
                Leg::B => call.b.as_ref(),
            }
            .and_then(|d| switchyard_sip::headers::tag_of(&d.local).map(str::to_owned))
            .unwrap_or_default();
            match answer {
                Ok(Reply::Sdp { sdp }) => {
                    let mut ok = self.dialog_response(&pending.request, &tag, 200, "OK");
                    if let (Leg::A, Some(t)) = (pending.from, call.session_timer) {
                        ok = ok.header("Session-Expires", t.header());
                    }
                    let bytes = ok.body("application/sdp", Bytes::from(sdp)).build();
                    let peer = match pending.from {
                        Leg::A => call.a.peer(self.local),
                        Leg::B => call.b.as_ref().expect("leg B").peer(self.local),
                    };
                    let seq = pending.request.cseq().map(|c| c.seq).unwrap_or(0);
                    let _ = self.driver.respond(pending.tx, 200, bytes.clone()).await;
                    self.calls.get_mut(&key).expect("call").unacked = Some(Unacked {
                        bytes,
                        peer,
                        cseq: seq,
                        interval: T1,
                        since: Instant::now(),
                    });
                    self.arm(Instant::now() + T1, key, Timer::Retransmit2xx);
                    if pending.from == Leg::A {
                        self.restart_session_timer(key);
                    }
                }
                _ => {
                    let b =
                        self.dialog_response(&pending.request, &tag, 488, "Not Acceptable Here");
                    self.respond(pending.tx, b).await;
                }
            }
        } else {
            let reason = msg.reason().unwrap_or("").to_owned();
            let b = ResponseBuilder::for_request(&pending.request, status, &reason, "");
            self.respond(pending.tx, b).await;
        }
    }

    async fn on_tx_failure(&mut self, tx: TxId) {
        let Some((key, purpose)) = self.by_tx.remove(&tx) else {
            return;
        };
        match purpose {
            Purpose::Fork(i) => {
                // No answer at all from this contact: count it as a 408 of that fork.
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                if call.forks[i].done {
                    return;
                }
                call.forks[i].done = true;
                if call.best_failure.is_none() {
                    call.best_failure = Some((408, "Request Timeout".into()));
                }
                self.note_trunk_outcome(key, i, 408);
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                if call.forks.iter().all(|f| f.done) {
                    call.conclude_attempt(408);
                }
                if !call.rerouting
                    && let Some(next) = call.failover_after(i, 408)
                {
                    return self.reroute(key, next);
                }
                if call.phase == Phase::Routing
                    && !call.rerouting
                    && call.forks.iter().all(|f| f.done)
                {
                    let (status, reason) = call.best_failure.clone().unwrap_or_default();
                    let b = self.a_response(&self.calls[&key], status, &reason);
                    let a_tx = self.calls[&key].a_tx;
                    self.respond(a_tx, b).await;
                    self.finish(key, Disposition::Failed, None).await;
                }
            }
            Purpose::Reinvite => {
                if let Some(pending) = self.calls.get_mut(&key).and_then(|c| c.reinvite.take()) {
                    let b =
                        ResponseBuilder::for_request(&pending.request, 408, "Request Timeout", "");
                    self.respond(pending.tx, b).await;
                }
            }
            Purpose::Transfer(i) => {
                self.transfer_failed(key, Some(i), 408, "Request Timeout")
                    .await
            }
            Purpose::Replace => {
                self.transfer_failed(key, None, 408, "Request Timeout")
                    .await
            }
            Purpose::Cancel | Purpose::Bye | Purpose::Notify => {}
        }
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some((&(at, seq), &(key, timer))) = self.timers.iter().next() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, seq));
            match timer {
                Timer::TrunkSilence(i) => {
                    let Some(call) = self.calls.get_mut(&key) else {
                        continue;
                    };
                    let silent = call.forks.get(i).is_some_and(|f| !f.done && !f.heard);
                    if !silent || call.phase != Phase::Routing || call.rerouting {
                        continue;
                    }
                    // Given up: a late answer from it is ACKed and hung up.
                    call.forks[i].done = true;
                    warn!(
                        call_id = call.a.call_id,
                        trunk = call.trunk.as_ref().map(|t| t.leg.trunk_id.clone()),
                        "trunk silent: trying the next route"
                    );
                    if call.best_failure.is_none() {
                        call.best_failure = Some((408, "Trunk Not Answering".into()));
                    }
                    self.note_trunk_outcome(key, i, 408);
                    let Some(call) = self.calls.get_mut(&key) else {
                        continue;
                    };
                    call.conclude_attempt(408);
                    if let Some(next) = call.failover_after(i, 408) {
                        self.reroute(key, next);
                    } else if call.forks.iter().all(|f| f.done) {
                        self.conclude_unanswered(key).await;
                    }
                }
                Timer::NoAnswer => {
                    let Some(call) = self.calls.get_mut(&key) else {
                        continue;
                    };
                    // A forward rings anew: an earlier ringing's timer is not its.
                    if call.phase != Phase::Routing || call.rerouting || call.ring_deadline > now {
                        continue;
                    }
                    call.conclude_attempt(408);
                    let forward = call.next_reroute(false, true);
                    if forward.is_some() {
                        call.rerouting = true; // the CANCELled forks' 487s end nothing
                    }
                    let forks: Vec<Message> = call.take_ringing_forks();
                    for f in forks {
                        self.cancel_fork(key, &f).await;
                    }
                    if let Some(target) = forward {
                        self.reroute(key, target);
                        continue;
                    }
                    info!(call_id = self.calls[&key].a.call_id, "no answer");
                    self.calls.get_mut(&key).expect("call present").best_failure =
                        Some((408, "No Answer".into()));
                    self.conclude_unanswered(key).await;
                }
                Timer::SessionRefresh => {
                    let Some(t) = self.calls.get(&key).and_then(|c| c.session_timer) else {
                        continue;
                    };
                    if t.deadline > now {
                        continue; // refreshed meanwhile: a newer timer is armed
                    }
                    if t.caller_refreshes {
                        warn!(
                            call_id = self.calls[&key].a.call_id,
                            "session timer expired: hanging up"
                        );
                        self.hang_up_both(key, "session-timer").await;
                    } else {
                        // We refresh: an UPDATE without SDP.
                        self.send_in_dialog(key, Leg::A, Method::Update, None).await;
                        self.restart_session_timer(key);
                    }
                }
                Timer::Retransmit2xx => {
                    let Some(call) = self.calls.get_mut(&key) else {
                        continue;
                    };
                    let Some(u) = call.unacked.as_mut() else {
                        continue;
                    };
                    if u.since.elapsed() >= 64 * T1 {
                        // RFC 3261 §13.3.1.4: no ACK: the session is over.
                        call.unacked = None;
                        warn!(
                            call_id = call.a.call_id,
                            "2xx never acknowledged: hanging up"
                        );
                        self.hang_up_both(key, "no-ack").await;
                        continue;
                    }
                    u.interval = (u.interval * 2).min(T2);
                    let (bytes, target, next) = (u.bytes.clone(), u.peer.target, u.interval);
                    let _ = self.hub.send(target, bytes).await;
                    self.arm(now + next, key, Timer::Retransmit2xx);
                }
            }
        }
    }

    /// Renews the leases of the trunk channels this node's calls hold (Redis), in a task.
    fn renew_channels(&self) {
        let held: Vec<(switchyard_types::TenantId, String)> = self
            .calls
            .values()
            .filter_map(|c| {
                let t = c.trunk.as_ref().filter(|t| t.leg.holds_channel)?;
                Some((routing::trunk_channels(&t.leg.trunk_id), t.member.clone()))
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let channels = self.route_deps.channels.clone();
        let until = now_ms() + routing::CHANNEL_LEASE.as_millis() as i64;
        tokio::spawn(async move {
            if let Err(e) = channels.renew(&held, until).await {
                warn!(error = %e, "trunk channel leases not renewed");
            }
        });
    }

    /// Hangs up answered calls whose media stopped (RTP timeout), unless on hold.
    async fn check_media(&mut self) {
        let Some(limit) = self.rtp_timeout else {
            return;
        };
        let limit_ms = limit.as_millis() as u64;
        let answered: Vec<(u64, String)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.phase == Phase::Answered)
            .map(|(k, c)| (*k, c.session.clone()))
            .collect();
        for (key, session) in answered {
            let Ok(Reply::Stats { stats }) = self.media.call(Request::Stats { session }).await
            else {
                continue;
            };
            let held = stats.a.held || stats.b.held;
            let silent = [("caller", &stats.a), ("callee", &stats.b)]
                .into_iter()
                .find(|(_, l)| l.silent_ms > limit_ms);
            if let (false, Some((side, leg))) = (held, silent) {
                warn!(
                    call_id = self.calls[&key].a.call_id,
                    side,
                    silent_ms = leg.silent_ms,
                    "no RTP from the {side}: hanging up"
                );
                self.hang_up_both(key, "rtp-timeout").await;
            }
        }
    }

    fn restart_session_timer(&mut self, key: u64) {
        let now = Instant::now();
        let Some(t) = self
            .calls
            .get_mut(&key)
            .and_then(|c| c.session_timer.as_mut())
        else {
            return;
        };
        t.deadline = if t.caller_refreshes {
            t.expiry_from(now)
        } else {
            now + Duration::from_secs(u64::from(t.interval / 2))
        };
        let at = t.deadline;
        self.arm(at, key, Timer::SessionRefresh);
    }

    async fn hang_up_both(&mut self, key: u64, why: &str) {
        if self
            .calls
            .get(&key)
            .is_some_and(|c| c.phase == Phase::Answered)
        {
            self.send_in_dialog(key, Leg::A, Method::Bye, None).await;
            self.send_in_dialog(key, Leg::B, Method::Bye, None).await;
            self.finish(key, Disposition::Answered, Some(why)).await;
        } else if let Some(call) = self.calls.get_mut(&key) {
            // Ringing: the callee's phones stop ringing, the caller hears why.
            let forks = call.take_ringing_forks();
            for f in forks {
                self.cancel_fork(key, &f).await;
            }
            let b = self.a_response(&self.calls[&key], 503, "Service Unavailable");
            let tx = self.calls[&key].a_tx;
            self.respond(tx, b).await;
            self.finish(key, Disposition::Failed, Some(why)).await;
        }
    }

    /// Ends the call: media released, CDR written, indexes cleared.
    async fn finish(&mut self, key: u64, disposition: Disposition, hangup_side: Option<&str>) {
        let Some(call) = self.calls.remove(&key) else {
            return;
        };
        self.by_call_id.remove(&call.a.call_id);
        self.by_call_id.remove(&call.b_call_id);
        // A transfer's new party still ringing stops ringing.
        for fork in call
            .transfer
            .iter()
            .flat_map(|t| &t.forks)
            .filter(|f| !f.done)
        {
            self.cancel_fork(key, &fork.request).await;
        }
        if let Some(t) = &call.trunk {
            release_leg(&self.route_deps.channels, &t.leg, &t.member);
        }
        if let Some(t) = &call.transfer
            && let Some(trunk) = &t.trunk
        {
            release_leg(&self.route_deps.channels, trunk, &t.call_id);
        }
        self.by_tx
            .retain(|_, (k, p)| *k != key || matches!(p, Purpose::Cancel | Purpose::Bye));
        let stats = match self
            .media
            .call(Request::Destroy {
                session: call.session.clone(),
            })
            .await
        {
            Ok(Reply::Stats { stats }) => stats,
            _ => SessionStats::default(),
        };
        let ended = now_ms();
        let cdr = Cdr {
            id: format!("cdr-{}", random_token()),
            tenant_id: call.tenant_id.clone(),
            call_id: call.a.call_id.clone(),
            from_uri: call.from_uri.clone(),
            to_uri: call.to_uri.clone(),
            started_at: call.started_ms,
            answered_at: call.answered_ms,
            ended_at: ended,
            duration_ms: call.answered_ms.map_or(0, |a| ended - a),
            disposition: disposition.as_str().to_owned(),
            hangup_side: hangup_side.map(str::to_owned),
            legs: legs_json(&stats, &call.attempts),
        };
        let talked = call
            .answered_ms
            .map(|a| Duration::from_millis(u64::try_from(ended - a).unwrap_or(0)));
        self.metrics.ended(&call.tenant_id, disposition, talked);
        self.cdrs.send(cdr);
        self.handle
            .active
            .store(self.calls.len(), Ordering::Relaxed);
    }
}

/// The Replaces of a Refer-To URI's headers (`Replaces=CALLID%3Bto-tag%3DX%3Bfrom-tag%3DY`),
/// decoded: (Call-ID, to-tag, from-tag).
fn replaces_of(headers: &str) -> Option<(String, String, String)> {
    let value = headers.split('&').find_map(|h| {
        let (name, value) = h.split_once('=')?;
        name.eq_ignore_ascii_case("replaces").then_some(value)
    })?;
    let decoded = percent_decode(value)?;
    let mut parts = decoded.split(';');
    let call_id = parts.next()?.trim().to_owned();
    let (mut to_tag, mut from_tag) = (None, None);
    for p in parts {
        match p.trim().split_once('=') {
            Some((n, v)) if n.eq_ignore_ascii_case("to-tag") => to_tag = Some(v.to_owned()),
            Some((n, v)) if n.eq_ignore_ascii_case("from-tag") => from_tag = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((call_id, to_tag?, from_tag?))
}

/// `%XX` escapes decoded (`None` for a broken escape or a result that is not UTF-8).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

/// Frees the trunk channel a routed call holds, if any.
fn release_channel(channels: &Arc<switchyard_state::calls::LiveCalls>, ring: &Ring, leg_b: &str) {
    if let Ring::Trunk { leg, .. } = ring {
        release_leg(channels, leg, leg_b);
    }
}

/// Frees a trunk leg's channel (in a task: on Redis it is a round trip).
fn release_leg(channels: &Arc<switchyard_state::calls::LiveCalls>, leg: &TrunkLeg, leg_b: &str) {
    if !leg.holds_channel {
        return;
    }
    let (channels, held) = (
        channels.clone(),
        (routing::trunk_channels(&leg.trunk_id), leg_b.to_owned()),
    );
    tokio::spawn(async move {
        if let Err(e) = channels.release(&[held]).await {
            warn!(error = %e, "trunk channel not released");
        }
    });
}

/// Leg B's identity towards a trunk: the presented number (one of the tenant's own) as
/// the caller and the number as the trunk gets it, both at the trunk's host; the From tag
/// stays the call's.
fn trunk_leg_identity(leg: &BLeg, trunk: &TrunkLeg, presenting: &str) -> BLeg {
    let tag = leg.from.rsplit_once(";tag=").map_or("", |(_, t)| t);
    let host = trunk.uri_host();
    BLeg {
        from: format!("<sip:{presenting}@{host}>;tag={tag}"),
        to: format!("<sip:{}@{host}>", trunk.number),
        ..leg.clone()
    }
}

/// The session timer a new INVITE asks for (RFC 4028): none without Session-Expires,
/// `Err` when the interval is unreadable or below our Min-SE (the answer is `422`).
/// RFC 3261 §9.2: a CANCEL matches the INVITE transaction with its branch and CSeq
/// number; a CANCEL that merely names the Call-ID cancels nothing.
fn cancels(cancel: &Message, invite: &Message) -> bool {
    let branch = |m: &Message| m.top_via().ok().and_then(|v| v.branch().map(str::to_owned));
    branch(cancel).is_some()
        && branch(cancel) == branch(invite)
        && cancel.cseq().ok().map(|c| c.seq) == invite.cseq().ok().map(|c| c.seq)
}

fn session_timer_of(msg: &Message) -> Result<Option<SessionTimer>, ()> {
    let Some(value) = msg.header(HeaderName::SessionExpires) else {
        return Ok(None);
    };
    let se = switchyard_sip::headers::DeltaWithParams::parse(value, "Session-Expires")
        .map_err(|_| ())?;
    if se.seconds < MIN_SE {
        return Err(());
    }
    let caller_supports = msg.supports("timer");
    Ok(Some(SessionTimer {
        interval: se.seconds.min(7200),
        // The caller refreshes unless it asked us to.
        caller_refreshes: !se
            .refresher()
            .is_some_and(|r| r.eq_ignore_ascii_case("uas")),
        caller_supports,
        deadline: Instant::now(),
    }))
}

/// The reason phrase of a `488`: what the media node found wrong with the offer.
fn refusal(outcome: Result<Reply, MediaError>) -> String {
    match outcome {
        Err(e) => format!("Not Acceptable Here: {e}"),
        Ok(_) => "Not Acceptable Here".to_owned(),
    }
}

/// The CDR's legs: an array of per-leg counters, the caller's leg first.
/// The CDR's legs: A's and B's media counters (B is whoever held leg B last), then each
/// destination the call rang, in order (`"leg": "attempt"`).
fn legs_json(stats: &SessionStats, attempts: &[Attempt]) -> String {
    let leg = |name: &str, l: &switchyard_media_control::LegStats| {
        let mut v = serde_json::to_value(l).unwrap_or_default();
        v["leg"] = serde_json::Value::from(name);
        v
    };
    let mut legs = vec![leg("a", &stats.a), leg("b", &stats.b)];
    legs.extend(attempts.iter().map(|a| {
        serde_json::json!({
            "leg": "attempt",
            "to": a.to,
            "via": a.via,
            "reason": a.reason,
            "at_ms": a.at_ms,
            "result": a.result,
        })
    }));
    serde_json::Value::Array(legs).to_string()
}

fn leg_name(leg: Leg) -> &'static str {
    match leg {
        Leg::A => "caller",
        Leg::B => "callee",
    }
}

/// Which failure to pass on when every fork failed (RFC 3261 §16.7 in spirit): a busy or
/// decline beats a timeout, a timeout beats other errors.
fn rank(status: u16) -> u8 {
    match status {
        600 | 603 => 5,
        486 => 4,
        487 => 3,
        408 | 480 => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(extra: &str) -> Message {
        let text = format!(
            "INVITE sip:1002@d.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:1001@d.example>;tag=a\r\nTo: <sip:1002@d.example>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse_datagram(Bytes::from(text)).unwrap()
    }

    #[test]
    fn session_intervals_below_min_se_are_refused_and_the_refresher_is_honoured() {
        assert!(session_timer_of(&invite("")).unwrap().is_none());
        assert!(session_timer_of(&invite("Session-Expires: 89\r\n")).is_err());
        assert!(session_timer_of(&invite("Session-Expires: soon\r\n")).is_err());
        let t = session_timer_of(&invite("Session-Expires: 1800\r\nSupported: timer\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(t.header(), "1800;refresher=uac");
        assert!(t.caller_supports);
        let uas = session_timer_of(&invite("Session-Expires: 90;refresher=uas\r\n"))
            .unwrap()
            .unwrap();
        assert!(!uas.caller_refreshes);
        assert_eq!(uas.header(), "90;refresher=uas");
        let long = session_timer_of(&invite("Session-Expires: 86400\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(long.interval, 7200, "capped at two hours");
    }

    #[test]
    fn the_non_refresher_gives_up_before_the_interval_ends() {
        let now = Instant::now();
        let t = |interval| SessionTimer {
            interval,
            caller_refreshes: true,
            caller_supports: true,
            deadline: now,
        };
        // RFC 4028 §10: interval - min(32, interval / 3).
        assert_eq!(t(90).expiry_from(now) - now, Duration::from_secs(60));
        assert_eq!(t(1800).expiry_from(now) - now, Duration::from_secs(1768));
    }

    #[test]
    fn the_worst_failure_is_passed_on() {
        assert!(rank(486) > rank(408));
        assert!(rank(603) > rank(486));
        assert!(rank(408) > rank(500));
    }
}
