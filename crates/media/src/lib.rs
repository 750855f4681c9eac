//! The media node: anchors both legs of a call, relays RTP and RTCP between them, and
//! counts what passes.
//!
//! - Ports come in even/odd pairs (RTP, RTCP) from a configured range; a session holds two
//!   pairs and gives them back when destroyed (or dropped), so nothing leaks.
//! - Latching (symmetric RTP): a leg's media is sent to where its SDP says until the first
//!   packet arrives from it, then to the address that packet came from, which is what
//!   works for phones behind NAT.
//! - Relay threads (`relay`), each an epoll loop over its sessions' sockets with one
//!   reusable buffer: no allocation per packet, one `recvfrom` and one `sendto` each.
//!   PCMU↔PCMA is converted in place when the legs chose different G.711 laws; RFC 4733
//!   events get the other leg's payload number; anything else passes unchanged.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub mod control;
pub mod kernel;
pub mod policy;
mod relay;

pub use kernel::{KernelError, KernelForwarding, KernelPath};
pub use policy::{DestinationPolicy, Network};
pub use relay::{DELAY_BOUNDS_US, RelayDelay, receive_stamped};

use std::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use switchyard_media_control::{
    BoxFuture, Leg, Load, MediaControl, MediaError, Reply, Request, SessionStats,
};
use switchyard_sdp::{Direction, Sdp, relay_answer, relay_offer};

use relay::{Published, RelayHandle, RelayState, RelayThreads};

/// Where and how a media node binds.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Address the RTP sockets bind to.
    pub bind: IpAddr,
    /// Address written into SDP (the one phones send to).
    pub advertise: IpAddr,
    /// Port range, inclusive; pairs start on even ports.
    pub port_min: u16,
    pub port_max: u16,
    /// Port pairs kept bound once their session ends (two descriptors each), so the next
    /// session skips the bind and close (a tenth of a core at 3,500 calls/s); beyond
    /// this many, a released pair is closed. 0 closes every pair at once.
    pub keep_bound: usize,
    /// Sessions this node takes at most (its capacity in placement); 0: as many as the
    /// port range holds.
    pub max_sessions: usize,
    /// The pool this node serves: sessions placed on another pool are refused. None: any
    /// (the one node of `serve`).
    pub pool: Option<String>,
    /// Where it may send and whom it hears (see [`DestinationPolicy`]).
    pub destinations: DestinationPolicy,
    /// Threads relaying RTP; 0: one per CPU this process may use (its affinity and
    /// cgroup quota), at most 16.
    pub relay_threads: usize,
    /// Whether latched streams are forwarded in the kernel (`kernel`).
    pub kernel_forwarding: KernelForwarding,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            advertise: IpAddr::from([127, 0, 0, 1]),
            port_min: 20000,
            port_max: 29999,
            keep_bound: 1024,
            max_sessions: 0,
            pool: None,
            destinations: DestinationPolicy::for_bind(
                IpAddr::from([127, 0, 0, 1]),
                Vec::new(),
                Vec::new(),
            ),
            relay_threads: 0,
            kernel_forwarding: KernelForwarding::Auto,
        }
    }
}

/// What a leg's endpoint sends and expects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LegPlan {
    /// Where its SDP says it receives RTP / RTCP.
    rtp_dest: Option<SocketAddr>,
    rtcp_dest: Option<SocketAddr>,
    /// Its audio payload type and law (`Some(true)` μ-law, `Some(false)` A-law, None other).
    audio_pt: Option<u8>,
    ulaw: Option<bool>,
    telephone_event: Option<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    a: LegPlan,
    b: LegPlan,
}

impl Plan {
    fn leg(&mut self, leg: Leg) -> &mut LegPlan {
        match leg {
            Leg::A => &mut self.a,
            Leg::B => &mut self.b,
        }
    }
}

/// Sockets of one leg.
#[derive(Debug)]
struct LegSockets {
    rtp: Arc<UdpSocket>,
    rtcp: Arc<UdpSocket>,
    port: u16,
}

#[derive(Debug)]
struct Session {
    tenant: String,
    a: LegSockets,
    b: LegSockets,
    plan: watch::Sender<Plan>,
    /// The last offer and who made it, waiting for its answer.
    pending_offer: Option<(Leg, Sdp)>,
    /// What the relay last published.
    published: Arc<Mutex<Published>>,
    relay_started: Option<Instant>,
    /// Each leg's SDP direction is not sendrecv.
    held: [bool; 2],
    relay: Option<RelayHandle>,
}

/// A port pair no session holds, still bound or closed.
#[derive(Debug)]
struct FreePair {
    port: u16,
    bound: Option<LegSockets>,
}

/// Free pairs in the order they were given back: a pair is reused only once every pair
/// freed before it was, which gives the last call's late packets the same time to stop
/// whether the pair stayed bound or was closed.
#[derive(Debug, Default)]
struct FreePairs {
    queue: VecDeque<FreePair>,
    bound: usize,
}

#[derive(Debug)]
struct Inner {
    config: MediaConfig,
    /// Its calls wait for CPU: it says so to pings (no room).
    saturated: std::sync::atomic::AtomicBool,
    free_pairs: Mutex<FreePairs>,
    sessions: Mutex<HashMap<String, Session>>,
    relays: RelayThreads,
    /// Also held by each relay thread: detached once the last of them has stopped.
    kernel: Option<Arc<KernelPath>>,
}

/// A media node in this process.
#[derive(Debug, Clone)]
pub struct MediaNode {
    inner: Arc<Inner>,
}

impl MediaNode {
    /// A node with its relay threads started.
    ///
    /// # Panics
    /// When the threads cannot be started (no epoll, no threads left): a media node
    /// without them could relay nothing; and when `kernel_forwarding` is `On` and the
    /// kernel path cannot be had ([`MediaNode::start`] returns that as an error).
    pub fn new(config: MediaConfig) -> MediaNode {
        MediaNode::start(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A node with its relay threads started and, as configured, the kernel path
    /// attached; an error only when `kernel_forwarding` is `On` and it cannot be.
    ///
    /// # Panics
    /// When the relay threads cannot be started.
    pub fn start(config: MediaConfig) -> Result<MediaNode, KernelError> {
        let threads = match config.relay_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(16)),
            n => n,
        };
        let ports = config.port_min..=config.port_max;
        let kernel = match config.kernel_forwarding {
            KernelForwarding::Off => None,
            KernelForwarding::On => Some(Arc::new(KernelPath::attach(config.bind, ports)?)),
            KernelForwarding::Auto => match KernelPath::attach(config.bind, ports) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    warn!(error = %e, "RTP is relayed in userspace only");
                    None
                }
            },
        };
        let relays = RelayThreads::start(threads, kernel.clone())
            .expect("cannot start the RTP relay threads");
        let first = config.port_min + config.port_min % 2;
        // In random order from the start: the ports a call gets say nothing about the
        // ports of the calls before or after it.
        let mut ports: Vec<u16> = (first..config.port_max).step_by(2).collect();
        rand::seq::SliceRandom::shuffle(ports.as_mut_slice(), &mut rand::rng());
        let queue = ports
            .into_iter()
            .map(|port| FreePair { port, bound: None })
            .collect();
        Ok(MediaNode {
            inner: Arc::new(Inner {
                saturated: Default::default(),
                config,
                free_pairs: Mutex::new(FreePairs { queue, bound: 0 }),
                sessions: Mutex::new(HashMap::new()),
                relays,
                kernel,
            }),
        })
    }

    /// The kernel path, when latched streams are forwarded there.
    pub fn kernel_path(&self) -> Option<&KernelPath> {
        self.inner.kernel.as_deref()
    }

    /// Port pairs not in use.
    pub fn free_pairs(&self) -> usize {
        self.free().queue.len()
    }

    /// Free port pairs still bound (at most `keep_bound`).
    pub fn bound_free_pairs(&self) -> usize {
        self.free().bound
    }

    fn free(&self) -> std::sync::MutexGuard<'_, FreePairs> {
        self.inner
            .free_pairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions alive.
    pub fn session_count(&self) -> usize {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Sessions alive per tenant, for `/metrics`.
    pub fn sessions_by_tenant(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for s in self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            *counts.entry(s.tenant.clone()).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort();
        counts
    }

    /// How full the node is (the answer to `ping`).
    pub fn load(&self) -> Load {
        Load {
            sessions: self.session_count() as u64,
            max_sessions: self.capacity() as u64,
            free_port_pairs: self.free_pairs() as u64,
            saturated: self.saturated(),
        }
    }

    /// Says whether the node's calls wait for CPU (its cgroup's pressure); a saturated
    /// node has no room for new sessions.
    pub fn set_saturated(&self, saturated: bool) {
        self.inner
            .saturated
            .store(saturated, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn saturated(&self) -> bool {
        self.inner
            .saturated
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Port pairs in the range.
    fn pair_count(&self) -> usize {
        let c = &self.inner.config;
        usize::from(c.port_max.saturating_sub(c.port_min + c.port_min % 2)).div_ceil(2)
    }

    /// Sessions the node takes at most.
    pub fn capacity(&self) -> usize {
        let by_ports = self.pair_count() / 2;
        match self.inner.config.max_sessions {
            0 => by_ports,
            n => n.min(by_ports),
        }
    }

    /// How long the packets relayed so far waited in this node, from the kernel's
    /// receive stamp to their send.
    pub fn relay_delay(&self) -> RelayDelay {
        self.inner.relays.delay()
    }

    /// Sessions being relayed (each has at most one relay).
    pub fn running_relays(&self) -> usize {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.relay.is_some())
            .count()
    }

    fn bind_pair(&self) -> Result<LegSockets, MediaError> {
        // Try free pairs until one binds (another process may hold some ports).
        for _ in 0..64 {
            let FreePair { port, bound } = {
                let mut free = self.free();
                // A random one of the longest-free pairs: unpredictable, and still never a
                // pair freed moments ago while older ones wait.
                let among = free.queue.len().min(RANDOM_AMONG);
                let pick = if among > 1 {
                    rand::random_range(0..among)
                } else {
                    0
                };
                let pair = free
                    .queue
                    .remove(pick)
                    .ok_or_else(|| MediaError::Exhausted("no free RTP port pair".into()))?;
                if pair.bound.is_some() {
                    free.bound -= 1;
                }
                pair
            };
            if let Some(sockets) = bound {
                discard_queued(&sockets, port);
                return Ok(sockets);
            }
            let ip = self.inner.config.bind;
            let bind = |port| {
                let socket = UdpSocket::bind(SocketAddr::new(ip, port))?;
                socket.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(socket)
            };
            match (bind(port), bind(port + 1)) {
                (Ok(rtp), Ok(rtcp)) => {
                    return Ok(LegSockets {
                        rtp: Arc::new(rtp),
                        rtcp: Arc::new(rtcp),
                        port,
                    });
                }
                _ => {
                    debug!(port, "port pair busy, trying the next");
                    self.free().queue.push_back(FreePair { port, bound: None });
                }
            }
        }
        Err(MediaError::Exhausted("no bindable RTP port pair".into()))
    }

    /// Gives a pair back: kept bound while fewer than `keep_bound` are, else closed.
    fn release(&self, sockets: LegSockets) {
        let port = sockets.port;
        let unshared =
            Arc::strong_count(&sockets.rtp) == 1 && Arc::strong_count(&sockets.rtcp) == 1;
        let mut free = self.free();
        if unshared && free.bound < self.inner.config.keep_bound {
            free.bound += 1;
            free.queue.push_back(FreePair {
                port,
                bound: Some(sockets),
            });
        } else {
            free.queue.push_back(FreePair { port, bound: None });
            drop(free);
            drop(sockets);
        }
    }

    async fn create(&self, session: String, tenant: String) -> Result<Reply, MediaError> {
        if self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&session)
        {
            return Err(MediaError::Exists);
        }
        let a = self.bind_pair()?;
        let b = match self.bind_pair() {
            Ok(b) => b,
            Err(e) => {
                self.release(a);
                return Err(e);
            }
        };
        let (plan, _) = watch::channel(Plan::default());
        let capacity = self.capacity();
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Checked where the session goes in, so concurrent creates cannot overshoot.
        if sessions.len() >= capacity || sessions.contains_key(&session) {
            let full = sessions.len() >= capacity;
            drop(sessions);
            self.release(a);
            self.release(b);
            return Err(if full {
                MediaError::Exhausted(format!("the node holds its maximum of {capacity} sessions"))
            } else {
                MediaError::Exists
            });
        }
        info!(
            session,
            tenant,
            a = a.port,
            b = b.port,
            "media session created"
        );
        sessions.insert(
            session,
            Session {
                tenant,
                a,
                b,
                plan,
                pending_offer: None,
                published: Arc::new(Mutex::new(Published::default())),
                relay_started: None,
                held: [false, false],
                relay: None,
            },
        );
        Ok(Reply::Created)
    }

    fn with_session<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Session) -> Result<T, MediaError>,
    ) -> Result<T, MediaError> {
        let mut map = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id).ok_or(MediaError::NoSession)?;
        f(s)
    }

    /// Tells the session's relay its plan changed. Userspace takes a new plan with the
    /// next packet; a stream the kernel forwards sends none up, so its relay thread is
    /// woken to take it now (a new payload number, a leg signalled elsewhere).
    fn plan_changed(&self, s: &Session) {
        let Some(relay) = s.relay else {
            return;
        };
        let in_kernel = s
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_kernel;
        if in_kernel {
            self.inner.relays.plan_changed(relay);
        }
    }

    fn offer(&self, id: &str, from: Leg, sdp: &str) -> Result<Reply, MediaError> {
        let parsed =
            Sdp::parse(sdp.as_bytes()).map_err(|e| MediaError::NotAcceptable(e.to_string()))?;
        let advertise = self.inner.config.advertise;
        let policy = &self.inner.config.destinations;
        self.with_session(id, |s| {
            let audio = parsed
                .audio()
                .map_err(|e| MediaError::NotAcceptable(e.to_string()))?;
            let to_port = match from.other() {
                Leg::A => s.a.port,
                Leg::B => s.b.port,
            };
            let relayed = relay_offer(&parsed, advertise, to_port)
                .map_err(|e| MediaError::NotAcceptable(e.to_string()))?;
            let signalled = permitted(policy, audio.addr, id, from);
            s.plan.send_modify(|p| {
                let leg = p.leg(from);
                leg.rtp_dest = signalled.map(|ip| SocketAddr::new(ip, audio.port));
                leg.rtcp_dest = signalled.map(|ip| SocketAddr::new(ip, audio.rtcp_port));
            });
            s.held[leg_index(from)] = audio.direction != Direction::SendRecv;
            s.pending_offer = Some((from, parsed));
            self.plan_changed(s);
            Ok(Reply::Sdp {
                sdp: relayed.to_text(),
            })
        })
    }

    fn answer(&self, id: &str, from: Leg, sdp: &str) -> Result<Reply, MediaError> {
        let parsed =
            Sdp::parse(sdp.as_bytes()).map_err(|e| MediaError::NotAcceptable(e.to_string()))?;
        let advertise = self.inner.config.advertise;
        let policy = &self.inner.config.destinations;
        let reply = self.with_session(id, |s| {
            let Some((offerer, offer)) = s.pending_offer.take() else {
                return Err(MediaError::NotAcceptable(
                    "an answer without an offer".into(),
                ));
            };
            if offerer != from.other() {
                s.pending_offer = Some((offerer, offer));
                return Err(MediaError::NotAcceptable(
                    "the answer comes from the leg that offered".into(),
                ));
            }
            let offerer_port = match offerer {
                Leg::A => s.a.port,
                Leg::B => s.b.port,
            };
            let n = relay_answer(&offer, &parsed, advertise, offerer_port)
                .map_err(|e| MediaError::NotAcceptable(e.to_string()))?;
            let audio = parsed
                .audio()
                .map_err(|e| MediaError::NotAcceptable(e.to_string()))?;
            let law = |name: &str| match name {
                "PCMU" => Some(true),
                "PCMA" => Some(false),
                _ => None,
            };
            let signalled = permitted(policy, audio.addr, id, from);
            s.plan.send_modify(|p| {
                let ans = p.leg(from);
                ans.rtp_dest = signalled.map(|ip| SocketAddr::new(ip, audio.port));
                ans.rtcp_dest = signalled.map(|ip| SocketAddr::new(ip, audio.rtcp_port));
                ans.audio_pt = Some(n.answerer_codec.payload_type);
                ans.ulaw = law(&n.answerer_codec.name);
                ans.telephone_event = n.answerer_telephone_event;
                let off = p.leg(offerer);
                off.audio_pt = Some(n.offerer_codec.payload_type);
                off.ulaw = law(&n.offerer_codec.name);
                off.telephone_event = n.offerer_telephone_event;
            });
            s.held[leg_index(from)] = audio.direction != Direction::SendRecv;
            self.plan_changed(s);
            if s.relay.is_none() {
                s.relay_started = Some(Instant::now());
                s.relay = Some(self.inner.relays.add(
                    [
                        s.a.rtp.clone(),
                        s.a.rtcp.clone(),
                        s.b.rtp.clone(),
                        s.b.rtcp.clone(),
                    ],
                    RelayState::new(
                        s.plan.subscribe(),
                        s.published.clone(),
                        self.inner.config.destinations.clone(),
                    ),
                ));
            }
            Ok(Reply::Sdp {
                sdp: n.answer.to_text(),
            })
        })?;
        Ok(reply)
    }

    fn stats(&self, id: &str) -> Result<Reply, MediaError> {
        self.with_session(id, |s| {
            Ok(Reply::Stats {
                stats: s.snapshot(),
            })
        })
    }

    async fn destroy(&self, id: &str) -> Result<Reply, MediaError> {
        let mut session = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .ok_or(MediaError::NoSession)?;
        if let Some(relay) = session.relay.take() {
            self.inner.relays.remove(relay).await;
        }
        let stats = session.snapshot();
        // The relay has let go of them, so these are the sockets' only owners again.
        self.release(session.a);
        self.release(session.b);
        info!(
            session = id,
            tenant = session.tenant,
            a_packets = stats.a.packets_received,
            b_packets = stats.b.packets_received,
            "media session destroyed"
        );
        Ok(Reply::Stats { stats })
    }
}

impl Session {
    /// The counters with silence and hold filled in as of now.
    fn snapshot(&self) -> SessionStats {
        let (mut stats, last_rtp) = {
            let p = self.published.lock().unwrap_or_else(|e| e.into_inner());
            (p.stats.clone(), p.last_rtp)
        };
        for (i, leg) in [&mut stats.a, &mut stats.b].into_iter().enumerate() {
            leg.held = self.held[i];
            leg.silent_ms = last_rtp[i]
                .or(self.relay_started)
                .map_or(0, |t| t.elapsed().as_millis() as u64);
        }
        stats
    }
}

/// Reads and drops what reached a kept pair since its last session: packets of that
/// call must never reach, or latch, the next one.
fn discard_queued(sockets: &LegSockets, port: u16) {
    // The sockets are non-blocking: this stops at the first empty read.
    let mut buf = [0u8; 2048];
    let mut stale = 0usize;
    for socket in [&sockets.rtp, &sockets.rtcp] {
        while socket.recv_from(&mut buf).is_ok() {
            stale += 1;
        }
    }
    if stale > 0 {
        debug!(port, stale, "late packets of the previous session dropped");
    }
}

/// The signalled address if the policy lets the node send there; a refused one leaves
/// the leg waiting for its first packet from a permitted source (a phone behind NAT).
fn permitted(
    policy: &DestinationPolicy,
    addr: Option<IpAddr>,
    session: &str,
    leg: Leg,
) -> Option<IpAddr> {
    let addr = addr?;
    if policy.permits(addr) {
        return Some(addr);
    }
    warn!(session, ?leg, %addr, "SDP names an address the media node never sends to");
    None
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

impl MediaControl for MediaNode {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Reply, MediaError>> {
        Box::pin(async move {
            match request {
                Request::Create {
                    session,
                    tenant,
                    pool,
                } => {
                    if let (Some(mine), Some(wanted)) = (&self.inner.config.pool, &pool)
                        && mine != wanted
                    {
                        return Err(MediaError::Exhausted(format!(
                            "this node serves pool {mine}, not {wanted}"
                        )));
                    }
                    self.create(session, tenant).await
                }
                Request::Offer { session, from, sdp } => self.offer(&session, from, &sdp),
                Request::Answer { session, from, sdp } => self.answer(&session, from, &sdp),
                Request::Stats { session } => self.stats(&session),
                Request::Destroy { session } => self.destroy(&session).await,
                Request::Ping => Ok(Reply::Load(self.load())),
            }
        })
    }
}

/// A new session's pairs are drawn at random from this many of the longest-free pairs.
const RANDOM_AMONG: usize = 16;
