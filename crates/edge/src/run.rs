//! The edge's shell: one task that takes what the listeners receive, runs the server
//! transactions of REGISTER and OPTIONS itself (no driver task, no channel hop per
//! message), decides with the registrar, proxy and responder, and sends through the hub.
//!
//! ```text
//!  listeners ──Incoming──▶ run: urgent │ new ──▶ transactions ──▶ registrar / proxy /
//!                            ▲  (responses, in-dialog first;        responder ──▶ Hub
//!                            │   new requests shed past a delay)
//!                            └── replays: lookups and remote binding writes finished
//! ```
//!
//! Nothing here waits for the store or Redis: a message that needs a tenant or user
//! memory lacks is looked up in a task of its own and comes back as a replay; with bindings
//! in Redis, each REGISTER's writes run in a task and the answer comes back the same way.
//!
//! Overload: every message carries the time it was received. Responses and in-dialog
//! requests are served before new REGISTERs and INVITEs; a new one that waited longer
//! than `shed_after` is answered `503` with a jittered `Retry-After`, so phones come back
//! spread out instead of retransmitting into the queue. In-dialog traffic is never shed.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use switchyard_sip::build::ResponseBuilder;
use switchyard_sip::inspect::Inbound;
use switchyard_sip::transaction::{Event, Output, TimerConfig, TransactionLayer, TxId};
use switchyard_sip::{HeaderName, Message, Method};
use switchyard_sip_net::{Hub, Incoming, Peer, Target};
use switchyard_state::Locations;
use switchyard_state::calls::{Admission, LiveCalls};
use switchyard_types::TenantId;

use crate::auth::credential_usernames;
use crate::calls::{CallTracker, Ending, NewCall};
use crate::directory::{Cached, CachedUser, TenantEntry};
use crate::limits::{MethodClass, SourceLimits};
use crate::metrics::{Rejection, TenantMetrics};
use crate::proxy::{Proxy, Verdict};
use crate::registrar::{Ingress, Registrar};
use crate::responder::{Decision, Responder};
use crate::ringing::{Fate, Ringing};
use crate::uplinks::Uplinks;

/// Settings of the shell.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub timers: TimerConfig,
    /// A new REGISTER or INVITE that waited longer than this is answered `503`.
    pub shed_after: Duration,
    /// `Retry-After` of a shed request: a random whole number of seconds in this range.
    pub retry_after_secs: (u32, u32),
    /// Directory lookups in flight at once; beyond, a request needing one gets `503`.
    pub max_lookups: usize,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            timers: TimerConfig::default(),
            shed_after: Duration::from_secs(1),
            retry_after_secs: (2, 10),
            max_lookups: 64,
        }
    }
}

/// What the edge decides with.
#[derive(Debug)]
pub struct EdgeDeps {
    pub registrar: Registrar,
    pub proxy: Proxy,
    pub responder: Responder,
    pub hub: Hub,
    pub counters: Arc<EdgeCounters>,
    /// Each tenant's calls in progress and call rate (shared by the edges of a cluster).
    pub live_calls: Arc<LiveCalls>,
    /// Rate limits per source address and network.
    pub limits: SourceLimits,
    /// Cores write answered calls for takeover: a lost core's answered calls go on
    /// elsewhere and keep their slots.
    pub takeover: bool,
}

/// Running totals of the edge, for `/metrics`.
#[derive(Debug, Default)]
pub struct EdgeCounters {
    pub received: AtomicU64,
    /// New requests answered `503` because they waited too long.
    pub shed: AtomicU64,
    /// Requests answered `503` because too many lookups were in flight.
    pub lookups_refused: AtomicU64,
    pub lookups: AtomicU64,
    /// The longest queueing delay seen since the last read, microseconds.
    pub max_delay_us: AtomicU64,
    pub calls_admitted: AtomicU64,
    /// New calls refused at the tenant's `max_calls`.
    pub calls_refused_limit: AtomicU64,
    /// New calls refused above the tenant's `calls_per_second`.
    pub calls_refused_rate: AtomicU64,
    /// Slots released, by [`Ending`] (in [`Ending::ALL`]'s order).
    pub calls_released: [AtomicU64; 4],
    /// Calls this edge holds slots for now.
    pub calls_in_progress: AtomicU64,
    /// Callers answered `503` because the core setting up their call died.
    pub core_lost_callers_answered: AtomicU64,
    /// Cores' INVITEs to phones CANCELled because their core died.
    pub core_lost_invites_cancelled: AtomicU64,
    /// Cores' INVITEs to phones waiting for their final answer (kept for that case).
    pub invites_ringing: AtomicU64,
    /// Admissions decided without the shared counters (Redis unreachable: admitted).
    pub caps_unavailable: AtomicU64,
    /// New requests dropped over a source's rate limit, by [`MethodClass`].
    pub rate_limited: [AtomicU64; 3],
    /// Messages dropped because their source is banned for a scan or a flood.
    pub dropped_banned: AtomicU64,
    /// Server and client transactions alive in the edge (each holds its messages until
    /// its timers end: 32 s for a non-INVITE over UDP).
    pub transactions: AtomicU64,
    /// Each carrier we register to and whether its registration is current.
    pub uplinks: std::sync::Mutex<Vec<(String, bool)>>,
}

impl EdgeCounters {
    /// Metric names and values; the queueing-delay maximum restarts at each read.
    pub fn snapshot(&self) -> Vec<(String, f64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        vec![
            (
                "switchyard_edge_messages_received_total".into(),
                get(&self.received),
            ),
            ("switchyard_edge_shed_total".into(), get(&self.shed)),
            ("switchyard_edge_lookups_total".into(), get(&self.lookups)),
            (
                "switchyard_edge_lookups_refused_total".into(),
                get(&self.lookups_refused),
            ),
            (
                "switchyard_edge_queue_delay_max_seconds".into(),
                self.max_delay_us.swap(0, Ordering::Relaxed) as f64 / 1e6,
            ),
            (
                "switchyard_edge_calls_admitted_total".into(),
                get(&self.calls_admitted),
            ),
            (
                "switchyard_edge_calls_refused_total{limit=\"max_calls\"}".into(),
                get(&self.calls_refused_limit),
            ),
            (
                "switchyard_edge_calls_refused_total{limit=\"calls_per_second\"}".into(),
                get(&self.calls_refused_rate),
            ),
            (
                "switchyard_edge_calls_in_progress".into(),
                get(&self.calls_in_progress),
            ),
            (
                "switchyard_edge_caps_unavailable_total".into(),
                get(&self.caps_unavailable),
            ),
            (
                "switchyard_edge_core_lost_callers_answered_total".into(),
                get(&self.core_lost_callers_answered),
            ),
            (
                "switchyard_edge_core_lost_invites_cancelled_total".into(),
                get(&self.core_lost_invites_cancelled),
            ),
            (
                "switchyard_edge_invites_ringing".into(),
                get(&self.invites_ringing),
            ),
            (
                "switchyard_edge_dropped_banned_total".into(),
                get(&self.dropped_banned),
            ),
            (
                "switchyard_edge_transactions".into(),
                get(&self.transactions),
            ),
        ]
        .into_iter()
        .chain(
            MethodClass::ALL
                .iter()
                .zip(&self.rate_limited)
                .map(|(c, n)| {
                    (
                        format!(
                            "switchyard_edge_rate_limited_total{{class=\"{}\"}}",
                            c.as_str()
                        ),
                        get(n),
                    )
                }),
        )
        .chain(Ending::ALL.iter().zip(&self.calls_released).map(|(e, c)| {
            (
                format!(
                    "switchyard_edge_calls_released_total{{ending=\"{}\"}}",
                    e.as_str()
                ),
                get(c),
            )
        }))
        .chain(
            self.uplinks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(carrier, up)| {
                    (
                        format!("switchyard_carrier_registered{{carrier=\"{carrier}\"}}"),
                        f64::from(u8::from(*up)),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .collect()
    }
}

/// Runs the edge until `shutdown` fires or the listeners are gone.
pub async fn run(
    settings: EdgeSettings,
    deps: EdgeDeps,
    mut incoming: mpsc::Receiver<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (replay_tx, mut replays) = mpsc::unbounded_channel();
    let mut shell = Shell {
        lookups: Arc::new(Semaphore::new(settings.max_lookups)),
        layer: TransactionLayer::new(settings.timers),
        settings,
        deps: Arc::new(deps),
        replay_tx,
        urgent: VecDeque::new(),
        fresh: VecDeque::new(),
        calls: CallTracker::new(),
        ringing: Ringing::default(),
        cores_up: HashSet::new(),
        next_renewal: Instant::now() + LEASE_RENEW_EVERY,
        uplinks: Uplinks::new(),
    };
    let mut purge = tokio::time::interval(Duration::from_secs(60));
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
    loop {
        shell
            .deps
            .counters
            .transactions
            .store(shell.layer.len() as u64, Ordering::Relaxed);
        // Take everything that has arrived, sorted by priority, before deciding.
        while shell.fresh.len() < MAX_BACKLOG {
            match incoming.try_recv() {
                Ok(item) => shell.enqueue(item),
                Err(_) => break,
            }
        }
        if let Some(item) = shell.urgent.pop_front().or_else(|| shell.fresh.pop_front()) {
            shell.on_incoming(item).await;
            shell.flush().await;
            // Let timers, replays and the signal in between, without a full wake-up.
            if shell.due() {
                shell.layer.handle_timeout(Instant::now());
                shell.flush().await;
            }
            while let Ok(r) = replays.try_recv() {
                shell.on_replay(r).await;
                shell.flush().await;
            }
            if shutdown.has_changed().unwrap_or(true) {
                break;
            }
            continue;
        }
        let deadline = shell
            .layer
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = replays.recv() => {
                if let Some(r) = r {
                    shell.on_replay(r).await;
                }
            }
            item = incoming.recv() => {
                let Some(item) = item else { break };
                shell.enqueue(item);
            }
            _ = sleep_until(deadline) => shell.layer.handle_timeout(Instant::now()),
            _ = purge.tick() => {
                shell.deps.registrar.auth.purge(unix_now());
                shell.deps.limits.purge();
            }
            _ = housekeeping.tick() => shell.housekeeping().await,
        }
        shell.flush().await;
    }
    debug!(transactions = shell.layer.len(), "edge stopped");
}

/// How often the call slots are swept (setups that timed out, lost cores, lease renewal).
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);

/// How long a call's slot in the shared counters lives unless renewed: an edge that dies
/// frees its calls' slots after this.
const LEASE: Duration = Duration::from_secs(90);
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(30);

/// New requests held in memory at most; beyond, the listeners' queue and then the
/// kernel's buffer hold the rest.
const MAX_BACKLOG: usize = 50_000;

/// Work that comes back to the loop from a task.
#[derive(Debug)]
enum Replay {
    /// A lookup finished: handle the message with what memory has now.
    Request {
        tx: TxId,
        msg: Message,
        peer: Peer,
    },
    Stateless(Incoming),
    /// A REGISTER's answer, computed in a task (bindings in Redis).
    Answer {
        tx: TxId,
        status: u16,
        bytes: Bytes,
    },
    /// The shared counters' answer to a new call (Redis).
    Admission {
        incoming: Incoming,
        call: NewCall,
        target: Target,
        bytes: Bytes,
        outcome: Admission,
    },
}

/// What the edge must read from the store before it can handle a message.
#[derive(Debug)]
enum Lookup {
    Domain(String),
    User(Arc<TenantEntry>, String),
}

struct Shell {
    settings: EdgeSettings,
    deps: Arc<EdgeDeps>,
    layer: TransactionLayer<Peer>,
    lookups: Arc<Semaphore>,
    replay_tx: mpsc::UnboundedSender<Replay>,
    /// Responses and in-dialog requests.
    urgent: VecDeque<Incoming>,
    /// New requests (and what cannot be told apart cheaply).
    fresh: VecDeque<Incoming>,
    /// The calls this edge holds slots for, each with its caller's INVITE until answered.
    calls: CallTracker<Incoming>,
    /// The INVITEs cores sent to phones through this edge, until their final answer.
    ringing: Ringing<Target>,
    /// Cores seen answering pings at the last sweep: one that stops has lost its calls.
    cores_up: HashSet<SocketAddr>,
    next_renewal: Instant,
    /// The registrations we keep with carriers.
    uplinks: Uplinks,
}

impl Shell {
    fn enqueue(&mut self, item: Incoming) {
        self.deps.counters.received.fetch_add(1, Ordering::Relaxed);
        if is_urgent(&item.inbound) {
            self.urgent.push_back(item);
        } else {
            self.fresh.push_back(item);
        }
    }

    fn due(&self) -> bool {
        self.layer
            .poll_timeout()
            .is_some_and(|t| t <= Instant::now())
    }

    /// Bans and rate limits, before any other work: whether `item` goes on.
    fn admissible(&self, item: &Incoming) -> bool {
        if item.local == self.deps.proxy.internal {
            return true;
        }
        let source = item.source.ip();
        let bans = self.deps.registrar.auth.bans();
        if bans.is_allowed(source) {
            return true;
        }
        let counters = &self.deps.counters;
        let now_secs = unix_now();
        if bans
            .banned_for(source, now_secs)
            .is_some_and(|r| r.silences())
        {
            counters.dropped_banned.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match &item.inbound {
            Inbound::Request(msg) => {
                if let Some(class) = MethodClass::of(msg)
                    && let Err(limited) = self.deps.limits.check(source, class)
                {
                    let i = MethodClass::ALL
                        .iter()
                        .position(|c| *c == class)
                        .unwrap_or(0);
                    counters.rate_limited[i].fetch_add(1, Ordering::Relaxed);
                    debug!(%source, ?class, ?limited, "over the source's rate limit: dropped");
                    return false;
                }
            }
            Inbound::Reject { .. } | Inbound::Drop(_) => {
                if let Some(ban) = bans.malformed(source, now_secs) {
                    warn!(%source, until = ban.until, strikes = ban.strikes,
                        "malformed flood: source banned");
                    return false;
                }
            }
            _ => {}
        }
        true
    }

    async fn on_incoming(&mut self, item: Incoming) {
        if !self.admissible(&item) {
            return;
        }
        let now = Instant::now();
        let waited = now.saturating_duration_since(item.received);
        self.deps
            .counters
            .max_delay_us
            .fetch_max(waited.as_micros() as u64, Ordering::Relaxed);
        let late = waited > self.settings.shed_after;
        let reliable = item.transport.is_stream();
        match item.inbound {
            Inbound::Request(ref msg)
                if !late
                    && msg.method() == Some(&Method::Register)
                    && msg.header(HeaderName::Authorization).is_none()
                    && self.lookup_needed(msg, true).is_none() =>
            {
                // RFC 3261 §8.2.7: a challenge to a request without credentials is
                // answered statelessly. It writes nothing, so a retransmission may as
                // well get a fresh challenge, and half of every registration's
                // transactions (kept 32 s each over UDP) are never created.
                let ingress = ingress_of(&item);
                let answer = self
                    .deps
                    .registrar
                    .handle(msg, &ingress, unix_now_ms())
                    .await;
                self.send_answer(&item, msg, answer.status(), answer.build())
                    .await;
            }
            Inbound::Request(ref msg)
                if matches!(msg.method(), Some(Method::Register | Method::Options)) =>
            {
                let peer = Peer::of_request(&item, msg);
                if let Inbound::Request(msg) = item.inbound {
                    self.layer.receive(msg, peer, reliable, now);
                }
                // A REGISTER that waited too long is shed once its transaction exists,
                // so its retransmissions are absorbed by the same 503.
                self.flush_with(late).await;
            }
            Inbound::Response(_) => {
                let peer = Peer::of_response(&item);
                if let Inbound::Response(msg) = item.inbound {
                    self.layer.receive(msg, peer, reliable, now);
                }
            }
            Inbound::Request(ref msg)
                if late && item.local != self.deps.proxy.internal && is_new_call(msg) =>
            {
                self.deps.counters.shed.fetch_add(1, Ordering::Relaxed);
                self.count_shed(msg);
                let bytes = self.shed_answer(msg, item.source);
                self.send_answer(&item, msg, 503, bytes).await;
            }
            Inbound::Request(_) => self.stateless(item).await,
            _ => self.answer_stateless(item).await,
        }
    }

    async fn flush(&mut self) {
        self.flush_with(false).await;
    }

    /// Sends what the transaction layer has to send and handles its events; `shed`
    /// answers a new REGISTER among them with `503`.
    async fn flush_with(&mut self, shed: bool) {
        while let Some(out) = self.layer.poll_output() {
            match out {
                Output::Transmit { tx, peer, bytes } => {
                    if let Err(e) = self.deps.hub.send(peer.target, bytes).await {
                        debug!(target = ?peer.target, error = %e, "transmit failed");
                        self.layer.transport_error(tx);
                    }
                }
                Output::Event(Event::Request { tx, msg, peer })
                    if shed && msg.method() == Some(&Method::Register) =>
                {
                    self.deps.counters.shed.fetch_add(1, Ordering::Relaxed);
                    self.count_shed(&msg);
                    let bytes = self.shed_answer(&msg, peer.source);
                    self.respond(tx, 503, bytes, peer.source);
                }
                Output::Event(event) => self.on_event(event).await,
            }
        }
    }

    async fn on_event(&mut self, event: Event<Peer>) {
        match event {
            Event::Request { tx, msg, peer } if msg.method() == Some(&Method::Register) => {
                self.register(tx, msg, peer).await
            }
            Event::Request { tx, msg, peer } => {
                match self
                    .deps
                    .responder
                    .decide(&Inbound::Request(msg), peer.source, unix_now())
                {
                    Decision::Answer {
                        status,
                        reason,
                        bytes,
                    } => {
                        info!(source = %peer.source, transport = %peer.transport, status, reason, "answered");
                        self.respond(tx, status, bytes, peer.source)
                    }
                    Decision::Silent(why) => {
                        debug!(source = %peer.source, reason = why, "request left unanswered")
                    }
                }
            }
            Event::StrayResponse { msg, peer } => {
                if peer.local == self.deps.proxy.internal
                    && self.deps.proxy.cores.snapshot().contains(peer.source)
                {
                    self.calls.on_core_response(&msg, Instant::now());
                    self.release_ended().await;
                } else if let Fate::Absorb(answers) = self.ringing.on_response(&msg) {
                    // Its core is gone: the edge acknowledges it in the core's place.
                    for (bytes, target) in answers {
                        if let Err(e) = self.deps.hub.send(target, bytes).await {
                            debug!(?target, error = %e, "answer for a lost core not sent");
                        }
                    }
                    return;
                }
                let verdict = self.deps.proxy.response(&msg);
                self.forward(verdict, peer.source).await
            }
            Event::Response { tx, msg } if self.uplinks.owns(tx) => {
                if let Some(again) = self.uplinks.on_response(tx, &msg, Instant::now()) {
                    self.send_uplink(again);
                }
                self.publish_uplinks();
            }
            Event::Timeout { tx } | Event::TransportError { tx } if self.uplinks.owns(tx) => {
                self.uplinks.on_failure(tx, Instant::now());
                self.publish_uplinks();
            }
            Event::Ack { .. } | Event::Response { .. } | Event::Terminated { .. } => {}
            Event::Timeout { tx } => debug!(?tx, "transaction timed out"),
            Event::TransportError { tx } => debug!(?tx, "transport error"),
        }
    }

    /// A REGISTER: answered now when memory has its tenant and user and bindings are in
    /// memory; otherwise in a task that replays the answer.
    async fn register(&mut self, tx: TxId, msg: Message, peer: Peer) {
        if let Some(lookup) = self.lookup_needed(&msg, true) {
            return self.look_up(lookup, Replay::Request { tx, msg, peer });
        }
        self.register_now(tx, msg, peer).await;
    }

    /// Answers a REGISTER with what memory has now (after a lookup: the tenant, the
    /// user, or their absence; never looked up twice).
    async fn register_now(&mut self, tx: TxId, msg: Message, peer: Peer) {
        let ingress = ingress_of_peer(&peer);
        if matches!(*self.deps.registrar.locations, Locations::Memory(_)) {
            let b = self
                .deps
                .registrar
                .handle(&msg, &ingress, unix_now_ms())
                .await;
            self.respond(tx, b.status(), b.build(), peer.source);
            return;
        }
        let (deps, replay) = (self.deps.clone(), self.replay_tx.clone());
        tokio::spawn(async move {
            let b = deps.registrar.handle(&msg, &ingress, unix_now_ms()).await;
            let _ = replay.send(Replay::Answer {
                tx,
                status: b.status(),
                bytes: b.build(),
            });
        });
    }

    fn respond(&mut self, tx: TxId, status: u16, bytes: Bytes, source: SocketAddr) {
        if let Err(e) = self.layer.respond(tx, status, bytes, Instant::now()) {
            debug!(%source, status, error = %e, "answer not sent");
        }
    }

    /// A request without a server transaction here: forwarded statelessly, or answered.
    async fn stateless(&mut self, incoming: Incoming) {
        let Inbound::Request(msg) = &incoming.inbound else {
            return self.answer_stateless(incoming).await;
        };
        if incoming.local != self.deps.proxy.internal
            && needs_tenant(msg)
            && let Some(lookup) = self.lookup_needed(msg, false)
        {
            return self.look_up(lookup, Replay::Stateless(incoming));
        }
        self.route(incoming).await;
    }

    /// The proxy's verdict on a request, carried out: an answer, a forward, or a new
    /// call admitted against its tenant's caps first.
    async fn route(&mut self, incoming: Incoming) {
        let Inbound::Request(msg) = &incoming.inbound else {
            return;
        };
        let ingress = ingress_of(&incoming);
        match self.deps.proxy.request(msg, &ingress, unix_now()).await {
            Verdict::Answer { status, bytes } => {
                self.send_answer(&incoming, msg, status, bytes).await
            }
            Verdict::Admit {
                call,
                target,
                bytes,
            } => self.admit(incoming, call, target, bytes).await,
            verdict => {
                if let Verdict::Forward { target, bytes } = &verdict {
                    let from_core = self.deps.proxy.is_from_core(&ingress);
                    self.calls.on_request(msg, from_core, Instant::now());
                    self.release_ended().await;
                    // A core's new INVITE to a phone: kept until its final answer, to be
                    // CANCELled should that core die first.
                    if from_core && msg.method() == Some(&Method::Invite) && !has_to_tag(msg) {
                        self.ringing.sent(
                            incoming.source,
                            crate::proxy::branch(msg),
                            bytes.clone(),
                            *target,
                            Instant::now(),
                        );
                    }
                }
                self.forward(verdict, incoming.source).await
            }
        }
    }

    /// A new call: its slot is taken in the tenant's counters before it is forwarded.
    /// In memory that is immediate; in Redis it runs in a task and comes back as a replay.
    async fn admit(&mut self, incoming: Incoming, call: NewCall, target: Target, bytes: Bytes) {
        if self.calls.is_retransmission(&call, Instant::now()) {
            // A retransmission (of a call held, or just ended): the core's transaction
            // absorbs it.
            return self
                .forward(Verdict::Forward { target, bytes }, incoming.source)
                .await;
        }
        let now_ms = unix_now_ms();
        if let Some(outcome) =
            self.deps
                .live_calls
                .admit_now(&call.tenant, &call.member(), call.limits, now_ms)
        {
            return self.admitted(incoming, call, target, bytes, outcome).await;
        }
        let (live, replay, counters) = (
            self.deps.live_calls.clone(),
            self.replay_tx.clone(),
            self.deps.counters.clone(),
        );
        tokio::spawn(async move {
            let lease_until = now_ms + LEASE.as_millis() as i64;
            let outcome = match live
                .admit(
                    &call.tenant,
                    &call.member(),
                    call.limits,
                    now_ms,
                    lease_until,
                )
                .await
            {
                Ok(outcome) => outcome,
                Err(e) => {
                    // Caps protect; they must not stop every call when Redis blinks.
                    counters.caps_unavailable.fetch_add(1, Ordering::Relaxed);
                    warn!(tenant = %call.tenant, error = %e, "call counters unavailable: call admitted uncounted");
                    Admission::Admitted
                }
            };
            let _ = replay.send(Replay::Admission {
                incoming,
                call,
                target,
                bytes,
                outcome,
            });
        });
    }

    async fn admitted(
        &mut self,
        incoming: Incoming,
        call: NewCall,
        target: Target,
        bytes: Bytes,
        outcome: Admission,
    ) {
        let counters = &self.deps.counters;
        match outcome {
            Admission::Admitted | Admission::AlreadyAdmitted => {
                if !self.calls.holds(&call) {
                    counters.calls_admitted.fetch_add(1, Ordering::Relaxed);
                    self.metrics().call_started(call.tenant.as_str());
                }
                let source = incoming.source;
                self.calls.begin(&call, incoming, Instant::now());
                counters
                    .calls_in_progress
                    .store(self.calls.len() as u64, Ordering::Relaxed);
                self.forward(Verdict::Forward { target, bytes }, source)
                    .await
            }
            refused => {
                let (counter, why) = match refused {
                    Admission::CallLimit(_) => (&counters.calls_refused_limit, Rejection::MaxCalls),
                    _ => (&counters.calls_refused_rate, Rejection::CallsPerSecond),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.metrics().rejected(call.tenant.as_str(), why);
                info!(tenant = %call.tenant, call_id = call.call_id, ?refused, "call refused by the tenant's caps");
                let Inbound::Request(msg) = &incoming.inbound else {
                    return;
                };
                if let Verdict::Answer { status, bytes } =
                    self.deps.proxy.refuse(msg, &ingress_of(&incoming), refused)
                {
                    self.send_answer(&incoming, msg, status, bytes).await;
                }
            }
        }
    }

    /// Gives ended calls' slots back: at once in memory, in a task for Redis.
    async fn release_ended(&mut self) {
        let ended = self.calls.take_released();
        if ended.is_empty() {
            return;
        }
        let counters = &self.deps.counters;
        for (tenant, _, why) in &ended {
            let i = Ending::ALL.iter().position(|e| e == why).unwrap_or(0);
            counters.calls_released[i].fetch_add(1, Ordering::Relaxed);
            self.metrics().call_ended(tenant.as_str());
        }
        counters
            .calls_in_progress
            .store(self.calls.len() as u64, Ordering::Relaxed);
        let slots: Vec<(TenantId, String)> = ended.into_iter().map(|(t, m, _)| (t, m)).collect();
        let live = self.deps.live_calls.clone();
        let release = async move {
            if let Err(e) = live.release(&slots).await {
                // Their leases lapse instead.
                warn!(calls = slots.len(), error = %e, "call slots not released");
            }
        };
        match *self.deps.live_calls {
            LiveCalls::Memory(_) => release.await,
            LiveCalls::Redis(_) => {
                tokio::spawn(release);
            }
        }
    }

    /// A core stopped answering: the slots of its calls that die with it are released,
    /// their callers answered `503`, and the phones it was ringing CANCELled.
    async fn core_lost(&mut self, core: SocketAddr, now: Instant) {
        let callers = self.calls.on_core_lost(core, self.deps.takeover, now);
        let cancels = self.ringing.on_core_lost(core, now);
        warn!(%core, takeover = self.deps.takeover, callers = callers.len(), cancelled = cancels.len(), "core stopped answering: the calls it was setting up are ended");
        let counters = &self.deps.counters;
        counters
            .core_lost_callers_answered
            .fetch_add(callers.len() as u64, Ordering::Relaxed);
        counters
            .core_lost_invites_cancelled
            .fetch_add(cancels.len() as u64, Ordering::Relaxed);
        for incoming in callers {
            let Inbound::Request(msg) = &incoming.inbound else {
                continue;
            };
            if let Verdict::Answer { status, bytes } =
                self.deps.proxy.core_lost(msg, &ingress_of(&incoming))
            {
                self.send_answer(&incoming, msg, status, bytes).await;
            }
        }
        for (bytes, target) in cancels {
            if let Err(e) = self.deps.hub.send(target, bytes).await {
                debug!(?target, error = %e, "CANCEL for a lost core not sent");
            }
        }
    }

    /// Setups that timed out, calls of cores that stopped answering, lease renewal.
    async fn housekeeping(&mut self) {
        let now = Instant::now();
        self.calls.handle_timeout(now);
        self.ringing.handle_timeout(now);
        self.deps
            .counters
            .invites_ringing
            .store(self.ringing.len() as u64, Ordering::Relaxed);
        self.keep_uplinks(now);
        let mut lost = Vec::new();
        if let Some(health) = &self.deps.proxy.health {
            for core in &self.deps.proxy.cores.snapshot().nodes {
                if health.is_healthy(core.addr, now) {
                    self.cores_up.insert(core.addr);
                } else if self.cores_up.remove(&core.addr) {
                    lost.push(core.addr);
                }
            }
        }
        for core in lost {
            self.core_lost(core, now).await;
        }
        self.release_ended().await;
        if now >= self.next_renewal {
            self.next_renewal = now + LEASE_RENEW_EVERY;
            if matches!(*self.deps.live_calls, LiveCalls::Redis(_)) && !self.calls.is_empty() {
                let (live, held) = (self.deps.live_calls.clone(), self.calls.held());
                let until = unix_now_ms() + LEASE.as_millis() as i64;
                tokio::spawn(async move {
                    if let Err(e) = live.renew(&held, until).await {
                        warn!(calls = held.len(), error = %e, "call leases not renewed");
                    }
                });
            }
        }
    }

    /// Registrations to carriers: the configured ones followed, the due REGISTERs sent
    /// from the public socket of the registrar's family.
    fn keep_uplinks(&mut self, now: Instant) {
        let specs = self.deps.proxy.carriers.uplinks();
        self.uplinks.update(&specs, now);
        let public = self.deps.proxy.public_udp.clone();
        let due = self.uplinks.due(now, |registrar| {
            public
                .iter()
                .find(|l| l.is_ipv4() == registrar.is_ipv4())
                .copied()
        });
        for out in due {
            self.send_uplink(out);
        }
        self.publish_uplinks();
    }

    fn send_uplink(&mut self, out: crate::uplinks::Outgoing) {
        let peer = Peer {
            target: switchyard_sip_net::Target::Datagram {
                local: out.local,
                dest: out.registrar,
            },
            source: out.registrar,
            transport: switchyard_sip_net::Transport::Udp,
            local: out.local,
        };
        match self
            .layer
            .send_request(out.request, peer, false, Instant::now())
        {
            Ok(tx) => self.uplinks.sent(&out.carrier, tx),
            Err(e) => warn!(carrier = out.carrier, error = %e, "REGISTER to the carrier not sent"),
        }
    }

    fn publish_uplinks(&self) {
        *self
            .deps
            .counters
            .uplinks
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.uplinks.status(Instant::now());
    }

    async fn send_answer(&self, incoming: &Incoming, msg: &Message, status: u16, bytes: Bytes) {
        let via = msg.top_via().ok();
        match self.deps.hub.respond(incoming, via.as_ref(), bytes).await {
            Ok(_) => {
                debug!(source = %incoming.source, method = %msg.method().map(|m| m.to_string()).unwrap_or_default(), status, "answered by the edge")
            }
            Err(e) => debug!(source = %incoming.source, status, error = %e, "answer not sent"),
        }
    }

    /// Rejections and what is neither request nor response: the stateless responder.
    async fn answer_stateless(&self, incoming: Incoming) {
        let source = incoming.source;
        match self
            .deps
            .responder
            .decide(&incoming.inbound, source, unix_now())
        {
            Decision::Answer {
                status,
                reason,
                bytes,
            } => {
                let via_text = match &incoming.inbound {
                    Inbound::Request(m) => m.header(HeaderName::Via).map(str::to_owned),
                    Inbound::Reject { rows, .. } => rows
                        .iter()
                        .find(|(n, _)| *n == HeaderName::Via)
                        .map(|(_, v)| v.clone()),
                    _ => None,
                };
                let via = via_text
                    .as_deref()
                    .and_then(switchyard_sip::headers::Via::parse_lenient);
                match self.deps.hub.respond(&incoming, via.as_ref(), bytes).await {
                    Ok(target) => {
                        info!(%source, transport = %incoming.transport, status, reason, ?target, "answered")
                    }
                    Err(e) => debug!(%source, status, error = %e, "answer not sent"),
                }
            }
            Decision::Silent(why) => {
                debug!(%source, transport = %incoming.transport, reason = why, "no answer")
            }
        }
    }

    async fn forward(&self, verdict: Verdict, source: SocketAddr) {
        match verdict {
            Verdict::Forward { target, bytes } => {
                if let Err(e) = self.deps.hub.send(target, bytes).await {
                    debug!(%source, ?target, error = %e, "not forwarded");
                }
            }
            Verdict::Drop(why) => debug!(%source, why, "dropped"),
            Verdict::Answer { .. } | Verdict::Admit { .. } => {}
        }
    }

    async fn on_replay(&mut self, replay: Replay) {
        match replay {
            Replay::Request { tx, msg, peer } => self.register_now(tx, msg, peer).await,
            Replay::Stateless(incoming) => self.route(incoming).await,
            Replay::Admission {
                incoming,
                call,
                target,
                bytes,
                outcome,
            } => self.admitted(incoming, call, target, bytes, outcome).await,
            Replay::Answer { tx, status, bytes } => {
                if let Err(e) = self.layer.respond(tx, status, bytes, Instant::now()) {
                    debug!(status, error = %e, "answer not sent");
                }
            }
        }
    }

    /// What to look up first, when `msg` needs a tenant or user memory does not have.
    fn lookup_needed(&self, msg: &Message, register: bool) -> Option<Lookup> {
        let domain = tenant_domain(msg)?;
        let header = if register {
            HeaderName::Authorization
        } else {
            HeaderName::ProxyAuthorization
        };
        let now = Instant::now();
        let entry = match self.deps.registrar.directory.cached(&domain, now) {
            Cached::Miss => return Some(Lookup::Domain(domain)),
            Cached::Unknown => return None,
            Cached::Tenant(entry) => entry,
        };
        credential_usernames(msg, header, &entry.tenant.domain)
            .into_iter()
            .find(|u| matches!(entry.cached_user(u, now), CachedUser::Miss))
            .map(|u| Lookup::User(entry, u))
    }

    /// Looks `lookup` up in a task and replays `then` when it is done; `503` when too
    /// many lookups are in flight already.
    fn look_up(&mut self, lookup: Lookup, then: Replay) {
        let Ok(permit) = self.lookups.clone().try_acquire_owned() else {
            self.deps
                .counters
                .lookups_refused
                .fetch_add(1, Ordering::Relaxed);
            return self.refuse_busy(then);
        };
        self.deps.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let (directory, replay) = (
            self.deps.registrar.directory.clone(),
            self.replay_tx.clone(),
        );
        tokio::spawn(async move {
            let now = Instant::now();
            let looked_up = match &lookup {
                Lookup::Domain(domain) => directory.load(domain, now).await.map(|_| ()),
                Lookup::User(entry, user) => directory.load_user(entry, user, now).await,
            };
            if let Err(e) = looked_up {
                warn!(?lookup, error = %e, "directory lookup failed");
            }
            drop(permit);
            let _ = replay.send(then);
        });
    }

    fn refuse_busy(&mut self, then: Replay) {
        match then {
            Replay::Request { tx, msg, peer } => {
                let bytes = self.shed_answer(&msg, peer.source);
                self.respond(tx, 503, bytes, peer.source);
            }
            Replay::Stateless(incoming) => {
                if let Inbound::Request(msg) = &incoming.inbound {
                    let bytes = self.shed_answer(msg, incoming.source);
                    let target = Peer::of_request(&incoming, msg).target;
                    let hub = self.deps.hub.clone();
                    tokio::spawn(async move {
                        let _ = hub.send(target, bytes).await;
                    });
                }
            }
            Replay::Answer { .. } | Replay::Admission { .. } => {}
        }
    }

    /// A shed request in its tenant's series, when memory knows the tenant (never a
    /// label from the message itself).
    fn count_shed(&self, msg: &Message) {
        let Some(domain) = tenant_domain(msg) else {
            return;
        };
        if let Cached::Tenant(entry) = self
            .deps
            .registrar
            .directory
            .cached(&domain, Instant::now())
        {
            self.metrics()
                .rejected(&entry.tenant.id, Rejection::Overload);
        }
    }

    fn metrics(&self) -> &TenantMetrics {
        self.deps.registrar.auth.metrics()
    }

    /// `503` with a `Retry-After` spread over the configured range.
    fn shed_answer(&self, msg: &Message, source: SocketAddr) -> Bytes {
        let (lo, hi) = self.settings.retry_after_secs;
        let after = lo + rand::random::<u32>() % (hi.saturating_sub(lo) + 1);
        let tag = switchyard_sip::digest::hex(&rand::random::<u64>().to_be_bytes());
        ResponseBuilder::for_request(msg, 503, "Overloaded, retry later", &tag)
            .stamp_top_via(source)
            .header("Retry-After", after.to_string())
            .build()
    }
}

/// The domain that names a request's tenant: the To host of a REGISTER (the AoR's), the
/// Request-URI host of anything else; lower case.
fn tenant_domain(msg: &Message) -> Option<String> {
    let host = if msg.method() == Some(&Method::Register) {
        msg.to_header()
            .ok()?
            .uri()
            .ok()?
            .as_sip()?
            .host
            .to_ascii_lowercase()
    } else {
        msg.request_uri()?.ok()?.as_sip()?.host.to_ascii_lowercase()
    };
    Some(host)
}

/// Where a request of a server transaction came in.
fn ingress_of_peer(peer: &Peer) -> Ingress {
    Ingress {
        transport: peer.transport,
        source: peer.source,
        local: peer.local,
        flow: match peer.target {
            Target::Flow(f) => Some(f),
            Target::Datagram { .. } => None,
        },
    }
}

/// Where a request without a transaction here came in.
fn ingress_of(incoming: &Incoming) -> Ingress {
    Ingress {
        transport: incoming.transport,
        source: incoming.source,
        local: incoming.local,
        flow: incoming.flow,
    }
}

/// Responses and requests inside a dialog (a To tag, or ACK/CANCEL/BYE) go first, and
/// OPTIONS: health checks and keep-alives cost next to nothing and must not starve
/// behind a registration storm.
fn is_urgent(inbound: &Inbound) -> bool {
    match inbound {
        Inbound::Response(_) => true,
        Inbound::Request(m) => {
            matches!(
                m.method(),
                Some(Method::Ack | Method::Cancel | Method::Bye | Method::Options)
            ) || m.to_header().is_ok_and(|t| t.tag().is_some())
        }
        _ => false,
    }
}

/// A request that starts something new: REGISTER, or an initial INVITE.
fn is_new_call(msg: &Message) -> bool {
    match msg.method() {
        Some(Method::Register) => true,
        Some(Method::Invite) => msg.to_header().is_ok_and(|t| t.tag().is_none()),
        _ => false,
    }
}

/// Initial requests from phones other than ACK and CANCEL are authenticated against
/// their tenant; everything else is routed without one.
fn needs_tenant(msg: &Message) -> bool {
    !matches!(msg.method(), Some(Method::Ack | Method::Cancel))
        && msg.to_header().is_ok_and(|t| t.tag().is_none())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn unix_now() -> u64 {
    (unix_now_ms() / 1000) as u64
}

/// Whether a request names a To tag: one inside a dialog.
fn has_to_tag(msg: &Message) -> bool {
    msg.to_header().ok().is_some_and(|t| t.tag().is_some())
}
