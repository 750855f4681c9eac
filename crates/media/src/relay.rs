//! The RTP fast path. [`RelayState`] decides each packet of one session (latching, the
//! destination policy, RTCP checks, payload numbers, transcoding, counters) and does no
//! I/O; [`RelayThreads`] is the shell: a few threads, each a level-triggered epoll loop
//! over the sockets of the sessions it carries.
//!
//! Why not one tokio task per session: a task reads until the socket would block before
//! it waits again (tokio clears readiness only then), so every packet costs a second
//! `recvfrom` that fails, plus a wake-up and a `select!` over six futures; at 50 packets
//! a second per socket there is never a second packet to read. Here each packet is one
//! `recvfrom` and one `sendto`, and one `epoll_wait` serves every socket that is ready.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::{oneshot, watch};
use tracing::warn;

use switchyard_media_control::{LegStats, SessionStats};
use switchyard_rtp::g711;
use switchyard_rtp::packet::{RtpHeader, looks_like_rtcp, rtcp_sender_ssrc, set_payload_type};
use switchyard_rtp::stats::{Continuation, ReceiverStats};

use crate::kernel::{ForwardEntry, ForwardKey, KernelPath, NO_PAYLOAD_TYPE};
use crate::{DestinationPolicy, LegPlan, Plan};

/// How long a leg signalled at a new address ignores the source it was latched to.
const REPLACED_HOLD_OFF: Duration = Duration::from_secs(2);

/// How often (in packets) the relay publishes its counters.
const PUBLISH_EVERY: u64 = 25;

/// RTP packets a leg sends through userspace before its stream may go to the kernel
/// (a second of 20 ms packets): a stream that comes back (a new SSRC, an extension)
/// stays here that long before it goes again.
const KERNEL_AFTER: u32 = 50;

/// How often a relay thread reads the counters of the streams the kernel forwards, and
/// takes plan changes for them.
const KERNEL_SYNC: Duration = Duration::from_millis(500);

/// The plan of the leg a packet came from.
fn from_plan_of(plan: &Plan, from_a: bool) -> LegPlan {
    if from_a { plan.a } else { plan.b }
}

/// Per-leg counters kept by the relay.
#[derive(Debug, Default)]
struct LegCounters {
    received: ReceiverStats,
    sent_packets: u64,
    sent_bytes: u64,
    telephone_events: u64,
    transcoded: u64,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    /// The source this leg was latched to (RTP, RTCP) before it was signalled elsewhere
    /// (a transfer's old party), and until when its packets are dropped rather than
    /// latched to again: long enough for the new party's first packets, short enough
    /// that a phone whose SDP changed but whose source did not is heard again soon.
    replaced: [Option<SocketAddr>; 2],
    replaced_until: Option<Instant>,
    /// When this leg's RTP last arrived.
    last_rtp: Option<Instant>,
    /// Packets from a source other than the latched one, dropped.
    foreign_dropped: u64,
    /// RTCP not well-formed or not from the leg's RTP SSRC, dropped.
    rtcp_dropped: u64,
}

impl LegCounters {
    fn export(&self) -> LegStats {
        LegStats {
            packets_received: self.received.packets,
            bytes_received: self.received.bytes,
            packets_sent: self.sent_packets,
            bytes_sent: self.sent_bytes,
            packets_lost: self.received.lost(),
            jitter_ms: self.received.jitter_ms(8000),
            telephone_events: self.telephone_events,
            transcoded: self.transcoded,
            latched: self.latched_rtp.map(|a| a.to_string()),
            // Filled in by `Session::snapshot` at query time.
            silent_ms: 0,
            held: false,
            foreign_dropped: self.foreign_dropped,
            rtcp_dropped: self.rtcp_dropped,
        }
    }
}

/// Leg `from`'s RTP as the kernel forwards it: from `source`, to `dest`, payload types
/// mapped (in, out), only while the stream keeps its SSRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ForwardRule {
    source: SocketAddrV4,
    dest: SocketAddrV4,
    audio: (u8, u8),
    event: (u8, u8),
    ssrc: u32,
}

/// What the kernel does with one leg's RTP.
#[derive(Debug, Default)]
struct KernelLeg {
    rule: Option<ForwardRule>,
    /// When its entry was written (the clock of the receive stamps): a packet queued
    /// before that is still userspace's to relay.
    since: Duration,
    /// The entry as last read: what the kernel counted since it was written.
    last: Option<ForwardEntry>,
    /// RTP packets from the latched source relayed here since the stream last came back.
    userspace_run: u32,
}

fn continuation(e: &ForwardEntry) -> Continuation {
    Continuation {
        ssrc: e.ssrc,
        max_seq: e.max_seq,
        cycles: e.cycles,
        jitter16: e.jitter16,
    }
}

/// The relay's counters as last published, and when each leg's RTP last arrived.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub(crate) stats: SessionStats,
    pub(crate) last_rtp: [Option<Instant>; 2],
    /// The kernel forwards one of its streams: a plan change must wake the relay thread
    /// (a stream in userspace takes it with its next packet).
    pub(crate) in_kernel: bool,
}

/// Counts a dropped packet; true when the count should be published now: the first drop
/// at once, then every `PUBLISH_EVERY`th (a flood costs no publish per packet).
fn note_drop(count: &mut u64) -> bool {
    *count += 1;
    *count % PUBLISH_EVERY == 1
}

/// The session's sockets, in the order packets are told apart by.
pub(crate) const A_RTP: usize = 0;
pub(crate) const A_RTCP: usize = 1;
pub(crate) const B_RTP: usize = 2;
pub(crate) const B_RTCP: usize = 3;

/// Where a relayed packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Send {
    /// Out of which of the session's sockets.
    pub(crate) socket: usize,
    pub(crate) dest: SocketAddr,
    /// The leg whose RTP it is, counted once sent (None for RTCP).
    rtp_to: Option<usize>,
}

/// One session's relay: what it knows of both legs and what it counted.
#[derive(Debug)]
pub(crate) struct RelayState {
    plan_rx: watch::Receiver<Plan>,
    plan: Plan,
    counters: [LegCounters; 2],
    kernel: [KernelLeg; 2],
    shared: Arc<Mutex<Published>>,
    policy: DestinationPolicy,
    started: Instant,
    since_publish: u64,
}

impl RelayState {
    pub(crate) fn new(
        mut plan_rx: watch::Receiver<Plan>,
        shared: Arc<Mutex<Published>>,
        policy: DestinationPolicy,
    ) -> RelayState {
        let plan = *plan_rx.borrow_and_update();
        RelayState {
            plan_rx,
            plan,
            counters: Default::default(),
            kernel: Default::default(),
            shared,
            policy,
            started: Instant::now(),
            since_publish: 0,
        }
    }

    /// Takes a new plan if the control side changed it (an atomic load when it did not):
    /// with each packet, and for streams the kernel forwards (whose packets do not come
    /// here) when the relay thread is told or reads their counters.
    pub(crate) fn refresh_plan(&mut self, now: Instant) {
        if !self.plan_rx.has_changed().unwrap_or(false) {
            return;
        }
        let next = *self.plan_rx.borrow_and_update();
        // A leg signalled at a new address (a re-INVITE from a phone that moved, or a
        // transfer's new party): it latches again to what comes from there.
        for (i, (old, new)) in [(self.plan.a, next.a), (self.plan.b, next.b)]
            .into_iter()
            .enumerate()
        {
            if old.rtp_dest != new.rtp_dest {
                let c = &mut self.counters[i];
                c.replaced = [c.latched_rtp.take(), c.latched_rtcp.take()];
                c.replaced_until = Some(now + REPLACED_HOLD_OFF);
            }
        }
        self.plan = next;
    }

    /// Decides a packet that arrived on socket `which` from `src`, rewriting it in place
    /// (payload number, G.711 law); None drops it.
    pub(crate) fn on_packet(
        &mut self,
        which: usize,
        src: SocketAddr,
        packet: &mut [u8],
    ) -> Option<Send> {
        let now = Instant::now();
        self.refresh_plan(now);
        let n = packet.len();
        let from_a = which < B_RTP;
        let is_rtcp = which % 2 == 1;
        let (fi, ti) = if from_a { (0, 1) } else { (1, 0) };
        let latched_to = if is_rtcp {
            self.counters[fi].latched_rtcp
        } else {
            self.counters[fi].latched_rtp
        };
        // The latched source passed this check when it was latched: the steady stream
        // of a call skips it.
        if latched_to != Some(src) && !self.policy.permits(src.ip()) {
            // Never latched to, so never sent to: a forbidden source is only counted.
            if note_drop(&mut self.counters[fi].foreign_dropped) {
                self.publish();
            }
            return None;
        }
        let plan = self.plan;
        let signalled = if is_rtcp {
            from_plan_of(&plan, from_a).rtcp_dest
        } else {
            from_plan_of(&plan, from_a).rtp_dest
        };
        if self.counters[fi].replaced[usize::from(is_rtcp)] == Some(src)
            && Some(src) != signalled
            && self.counters[fi]
                .replaced_until
                .is_some_and(|until| now < until)
        {
            return None; // the party this leg had before it was signalled elsewhere
        }
        let (from_plan, to_plan) = if from_a {
            (plan.a, plan.b)
        } else {
            (plan.b, plan.a)
        };
        // Once latched, a leg hears only its source; the address its SDP signalled wins
        // over a first source that was not it (an attacker racing the phone).
        let latched = if is_rtcp {
            &mut self.counters[fi].latched_rtcp
        } else {
            &mut self.counters[fi].latched_rtp
        };
        match *latched {
            Some(l) if l != src && Some(src) == signalled => *latched = Some(src),
            Some(l) if l != src => {
                if note_drop(&mut self.counters[fi].foreign_dropped) {
                    self.publish();
                }
                return None;
            }
            _ => {}
        }
        if is_rtcp {
            // Only RTCP, and only about the leg's own stream once its RTP has been seen.
            let rtp_ssrc = self.counters[fi].received.ssrc();
            let valid =
                rtcp_sender_ssrc(packet).is_some_and(|ssrc| rtp_ssrc.is_none_or(|own| own == ssrc));
            if !valid {
                if note_drop(&mut self.counters[fi].rtcp_dropped) {
                    self.publish();
                }
                return None;
            }
            self.counters[fi].latched_rtcp.get_or_insert(src);
            let dest = self.counters[ti].latched_rtcp.or(to_plan.rtcp_dest)?;
            return Some(Send {
                socket: if from_a { B_RTCP } else { A_RTCP },
                dest,
                rtp_to: None,
            });
        }
        if looks_like_rtcp(packet) {
            return None; // RTCP on the RTP port without rtcp-mux agreed: not relayed.
        }
        let h = RtpHeader::parse(packet)?;
        let first = self.counters[fi].latched_rtp.is_none();
        self.counters[fi].latched_rtp.get_or_insert(src);
        self.counters[fi].last_rtp = Some(now);
        let k = &mut self.kernel[fi];
        k.userspace_run = k.userspace_run.saturating_add(1);
        if first {
            // Silence is measured from here on: publish the leg's first packet at once.
            self.publish();
        }
        self.counters[fi].received.record(
            h.sequence,
            h.timestamp,
            h.ssrc,
            n,
            now.duration_since(self.started).as_micros() as u64,
            8000,
        );
        if Some(h.payload_type) == from_plan.telephone_event {
            match to_plan.telephone_event {
                Some(pt) => set_payload_type(packet, pt),
                None => return None,
            }
            self.counters[fi].telephone_events += 1;
        } else if Some(h.payload_type) == from_plan.audio_pt {
            if let (Some(from_law), Some(to_law)) = (from_plan.ulaw, to_plan.ulaw)
                && from_law != to_law
            {
                let table = if from_law {
                    &g711::ULAW_TO_ALAW
                } else {
                    &g711::ALAW_TO_ULAW
                };
                g711::transcode(&mut packet[h.payload_offset..h.payload_end], table);
                self.counters[fi].transcoded += 1;
            }
            if let Some(pt) = to_plan.audio_pt {
                set_payload_type(packet, pt);
            }
        }
        let Some(dest) = self.counters[ti].latched_rtp.or(to_plan.rtp_dest) else {
            self.count_relayed();
            return None;
        };
        Some(Send {
            socket: if from_a { B_RTP } else { A_RTP },
            dest,
            rtp_to: Some(ti),
        })
    }

    /// What became of a packet `on_packet` sent: `bytes` long, out if `sent`.
    pub(crate) fn after_send(&mut self, send: Send, sent: bool, bytes: usize) {
        let Some(to) = send.rtp_to else {
            return;
        };
        if sent {
            self.counters[to].sent_packets += 1;
            self.counters[to].sent_bytes += bytes as u64;
        }
        self.count_relayed();
    }

    /// One more RTP packet through; every `PUBLISH_EVERY`th publishes the counters.
    fn count_relayed(&mut self) {
        self.since_publish += 1;
        if self.since_publish >= PUBLISH_EVERY {
            self.since_publish = 0;
            self.publish();
        }
    }

    pub(crate) fn publish(&self) {
        let mut p = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        p.stats.a = self.export_leg(0);
        p.stats.b = self.export_leg(1);
        p.last_rtp = [self.counters[0].last_rtp, self.counters[1].last_rtp];
    }

    /// Leg `i`'s counters, with what the kernel counted of both directions so far.
    fn export_leg(&self, i: usize) -> LegStats {
        let mut stats = self.counters[i].export();
        if let Some(e) = &self.kernel[i].last {
            let mut received = self.counters[i].received.clone();
            received.resume(continuation(e), e.packets, e.bytes);
            stats.packets_received = received.packets;
            stats.bytes_received = received.bytes;
            stats.packets_lost = received.lost();
            stats.jitter_ms = received.jitter_ms(8000);
            stats.telephone_events += e.events;
        }
        if let Some(e) = &self.kernel[1 - i].last {
            stats.packets_sent += e.packets;
            stats.bytes_sent += e.bytes;
        }
        stats
    }

    /// What the kernel should forward of leg `from`'s RTP now: once it came from its
    /// latched source for `KERNEL_AFTER` packets, and needs nothing only userspace does
    /// (transcoding, IPv6, a transfer's hold-off, events the other leg cannot take).
    pub(crate) fn forward_rule(&self, from: usize, now: Instant) -> Option<ForwardRule> {
        let k = &self.kernel[from];
        if k.rule.is_none() && k.userspace_run < KERNEL_AFTER {
            return None;
        }
        let to = 1 - from;
        let (fp, tp) = if from == 0 {
            (self.plan.a, self.plan.b)
        } else {
            (self.plan.b, self.plan.a)
        };
        let holding_off = |c: &LegCounters| c.replaced_until.is_some_and(|until| now < until);
        if holding_off(&self.counters[from]) || holding_off(&self.counters[to]) {
            return None;
        }
        let SocketAddr::V4(source) = self.counters[from].latched_rtp? else {
            return None;
        };
        let SocketAddr::V4(dest) = self.counters[to].latched_rtp.or(tp.rtp_dest)? else {
            return None;
        };
        if let (Some(from_law), Some(to_law)) = (fp.ulaw, tp.ulaw)
            && from_law != to_law
        {
            return None;
        }
        let audio = match fp.audio_pt {
            Some(pt) => (pt, tp.audio_pt.unwrap_or(pt)),
            None => (NO_PAYLOAD_TYPE, NO_PAYLOAD_TYPE),
        };
        let event = match (fp.telephone_event, tp.telephone_event) {
            (Some(pt_in), Some(pt_out)) => (pt_in, pt_out),
            (Some(_), None) => return None,
            (None, _) => (NO_PAYLOAD_TYPE, NO_PAYLOAD_TYPE),
        };
        Some(ForwardRule {
            source,
            dest,
            audio,
            event,
            ssrc: self.counters[from].received.ssrc()?,
        })
    }

    /// False while no stream can be in the kernel yet (the first `KERNEL_AFTER` packets
    /// of each): the relay then skips its per-packet kernel bookkeeping.
    pub(crate) fn kernel_may_change(&self) -> bool {
        self.kernel
            .iter()
            .any(|k| k.rule.is_some() || k.userspace_run >= KERNEL_AFTER)
    }

    /// The rule the kernel forwards leg `from`'s RTP by, if any.
    pub(crate) fn kernel_rule(&self, from: usize) -> Option<ForwardRule> {
        self.kernel[from].rule
    }

    /// The kernel entry for `rule`, leaving from `out_local` and counting on from here.
    pub(crate) fn entry_for(
        &self,
        from: usize,
        rule: &ForwardRule,
        out_local: SocketAddrV4,
    ) -> ForwardEntry {
        let mut e = ForwardEntry::new(out_local, rule.dest);
        (e.audio_in, e.audio_out) = rule.audio;
        (e.event_in, e.event_out) = rule.event;
        e.ssrc = rule.ssrc;
        if let Some(c) = self.counters[from].received.continuation() {
            (e.max_seq, e.cycles, e.jitter16) = (c.max_seq, c.cycles, c.jitter16);
        }
        e
    }

    /// Says whether the kernel forwards any of this session's streams.
    fn note_in_kernel(&self) {
        let any = self.kernel.iter().any(|k| k.rule.is_some());
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_kernel = any;
    }

    /// The kernel took leg `from`'s stream at `since` (the receive stamps' clock).
    pub(crate) fn forwarded(&mut self, from: usize, rule: ForwardRule, since: Duration) {
        self.kernel[from] = KernelLeg {
            rule: Some(rule),
            since,
            last: None,
            userspace_run: self.kernel[from].userspace_run,
        };
        self.note_in_kernel();
    }

    /// The kernel would not take the entry: try again `KERNEL_AFTER` packets later.
    pub(crate) fn forward_failed(&mut self, from: usize) {
        self.kernel[from].userspace_run = 0;
    }

    /// What the kernel counted of leg `from`'s stream so far, and when its last packet
    /// arrived; returns the packets it forwarded since the last read.
    pub(crate) fn kernel_counted(
        &mut self,
        from: usize,
        entry: ForwardEntry,
        last_rtp: Instant,
    ) -> u64 {
        if entry.packets > 0 {
            let c = &mut self.counters[from];
            c.last_rtp = Some(c.last_rtp.map_or(last_rtp, |t| t.max(last_rtp)));
        }
        let before = self.kernel[from].last.map_or(0, |e| e.packets);
        self.kernel[from].last = Some(entry);
        entry.packets.saturating_sub(before)
    }

    /// Leg `from`'s stream is back from the kernel: what it counted (`last`, as its entry
    /// was removed) joins the counters, and the stream stays here `KERNEL_AFTER` packets.
    /// Returns the packets it forwarded since the last read.
    pub(crate) fn recalled(&mut self, from: usize, last: Option<ForwardEntry>) -> u64 {
        let before = self.kernel[from].last.map_or(0, |e| e.packets);
        let mut forwarded = 0;
        if let Some(e) = last.or(self.kernel[from].last) {
            forwarded = e.packets.saturating_sub(before);
            self.counters[from]
                .received
                .resume(continuation(&e), e.packets, e.bytes);
            self.counters[from].telephone_events += e.events;
            let to = &mut self.counters[1 - from];
            to.sent_packets += e.packets;
            to.sent_bytes += e.bytes;
        }
        self.kernel[from] = KernelLeg::default();
        self.note_in_kernel();
        forwarded
    }

    /// A packet from `src` on leg `from`'s RTP socket, received at `stamp`: true when it
    /// is one the kernel, forwarding that leg, gave up (its latched source, arrived after
    /// the entry was written), so the stream must come back first.
    pub(crate) fn kernel_refused(
        &self,
        from: usize,
        src: SocketAddr,
        stamp: Option<Duration>,
    ) -> bool {
        let k = &self.kernel[from];
        k.rule
            .is_some_and(|r| SocketAddr::V4(r.source) == src && stamp.is_none_or(|t| t >= k.since))
    }
}

/// Where a session's relay runs, to stop it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayHandle {
    thread: usize,
    key: u64,
}

enum Command {
    Add {
        key: u64,
        sockets: [Arc<UdpSocket>; 4],
        state: Box<RelayState>,
    },
    /// Stops relaying the session, publishes its last counters and lets go of its
    /// sockets, then says so.
    Remove {
        key: u64,
        done: oneshot::Sender<()>,
    },
    /// The control side changed the session's plan.
    PlanChanged {
        key: u64,
    },
    Shutdown,
}

/// The upper bounds of the relay-delay histogram's buckets, in microseconds (the last
/// bucket, above them all, is `+Inf`).
pub const DELAY_BOUNDS_US: [u64; 12] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// How long relayed packets waited in the node: from the kernel's receive stamp on the
/// leg's socket to the relay's send, a histogram over [`DELAY_BOUNDS_US`]. This is the
/// delay the node adds, measured where it happens, whatever sends the packets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayDelay {
    /// Packets per bucket (not cumulative); the last is above every bound.
    pub buckets: [u64; DELAY_BOUNDS_US.len() + 1],
    pub sum_us: u64,
    pub count: u64,
}

impl RelayDelay {
    fn record(&mut self, delay_us: u64) {
        let i = DELAY_BOUNDS_US
            .iter()
            .position(|bound| delay_us <= *bound)
            .unwrap_or(DELAY_BOUNDS_US.len());
        self.buckets[i] += 1;
        self.sum_us += delay_us;
        self.count += 1;
    }

    fn add(&mut self, other: &RelayDelay) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
        self.count += other.count;
    }
}

/// The node's relay threads; sessions are spread over them.
#[derive(Debug)]
pub(crate) struct RelayThreads {
    threads: Vec<RelayThread>,
    next_key: AtomicU64,
}

#[derive(Debug)]
struct RelayThread {
    commands: mpsc::Sender<Command>,
    wake: Arc<EventFd>,
    /// Its delay histogram, as last published (after each batch of packets).
    delay: Arc<Mutex<RelayDelay>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Add { key, .. } => write!(f, "Add({key})"),
            Command::Remove { key, .. } => write!(f, "Remove({key})"),
            Command::PlanChanged { key } => write!(f, "PlanChanged({key})"),
            Command::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// The epoll data of the wake-up eventfd (sessions' sockets are `key << 2 | socket`).
const WAKE: u64 = u64::MAX;

impl RelayThreads {
    /// Starts `count` relay threads (at least one), handing latched streams to `kernel`
    /// when there is one.
    pub(crate) fn start(
        count: usize,
        kernel: Option<Arc<KernelPath>>,
    ) -> std::io::Result<RelayThreads> {
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
            let wake = Arc::new(EventFd::from_flags(
                EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
            )?);
            epoll.add(&*wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
            let (tx, rx) = mpsc::channel();
            let thread_wake = wake.clone();
            let delay = Arc::new(Mutex::new(RelayDelay::default()));
            let published = delay.clone();
            let kernel = kernel.clone();
            std::thread::Builder::new()
                .name(format!("rtp-relay-{i}"))
                .spawn(move || run(epoll, &thread_wake, rx, &published, kernel.as_deref()))?;
            threads.push(RelayThread {
                commands: tx,
                wake,
                delay,
            });
        }
        Ok(RelayThreads {
            threads,
            next_key: AtomicU64::new(0),
        })
    }

    fn send(&self, thread: usize, command: Command) {
        let t = &self.threads[thread];
        if t.commands.send(command).is_ok() {
            let _ = t.wake.write(1);
        } else {
            warn!(thread, "relay thread is gone");
        }
    }

    /// Starts relaying between `sockets` (A-RTP, A-RTCP, B-RTP, B-RTCP).
    pub(crate) fn add(&self, sockets: [Arc<UdpSocket>; 4], state: RelayState) -> RelayHandle {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let thread = (key % self.threads.len() as u64) as usize;
        self.send(
            thread,
            Command::Add {
                key,
                sockets,
                state: Box::new(state),
            },
        );
        RelayHandle { thread, key }
    }

    /// Has the session's thread take its changed plan now (for the streams the kernel
    /// forwards).
    pub(crate) fn plan_changed(&self, handle: RelayHandle) {
        self.send(handle.thread, Command::PlanChanged { key: handle.key });
    }

    /// Every thread's delay histogram, added up.
    pub(crate) fn delay(&self) -> RelayDelay {
        let mut total = RelayDelay::default();
        for t in &self.threads {
            total.add(&t.delay.lock().unwrap_or_else(|e| e.into_inner()));
        }
        total
    }

    /// Stops a session's relay; once this returns, its counters are final and the
    /// relay holds none of its sockets.
    pub(crate) async fn remove(&self, handle: RelayHandle) {
        let (done, finished) = oneshot::channel();
        self.send(
            handle.thread,
            Command::Remove {
                key: handle.key,
                done,
            },
        );
        // An error means the thread is gone, and with it everything it held.
        let _ = finished.await;
    }
}

impl Drop for RelayThreads {
    fn drop(&mut self) {
        for i in 0..self.threads.len() {
            self.send(i, Command::Shutdown);
        }
    }
}

/// A session a relay thread carries.
struct Carried {
    sockets: [Arc<UdpSocket>; 4],
    /// The local addresses of the legs' RTP sockets (IPv4 only: the kernel path's).
    rtp_local: [Option<SocketAddrV4>; 2],
    state: Box<RelayState>,
}

impl Carried {
    fn key(&self, from: usize, rule: &ForwardRule) -> Option<ForwardKey> {
        Some(ForwardKey::new(self.rtp_local[from]?, rule.source))
    }

    /// Brings leg `from`'s stream back from the kernel, if it is there.
    fn recall(&mut self, kernel: &KernelPath, from: usize) {
        if let Some(rule) = self.state.kernel_rule(from) {
            let last = self.key(from, &rule).and_then(|k| kernel.remove(&k));
            let forwarded = self.state.recalled(from, last);
            kernel.count_forwarded(forwarded);
        }
    }

    /// Makes the kernel forward what the state wants of each leg now.
    fn sync_kernel(&mut self, kernel: &KernelPath, now: Instant) {
        for from in 0..2 {
            let want = self.state.forward_rule(from, now);
            if want == self.state.kernel_rule(from) {
                continue;
            }
            self.recall(kernel, from);
            let Some(rule) = want else {
                continue;
            };
            let (Some(key), Some(out_local)) = (self.key(from, &rule), self.rtp_local[1 - from])
            else {
                self.state.forward_failed(from);
                continue;
            };
            let mut entry = self.state.entry_for(from, &rule, out_local);
            entry.out_ifindex = kernel.out_ifindex(*rule.dest.ip());
            match kernel.install(&key, &entry) {
                Ok(()) => self.state.forwarded(from, rule, wall_clock()),
                Err(e) => {
                    warn!(error = %e, "a stream stays in userspace");
                    self.state.forward_failed(from);
                }
            }
        }
    }

    /// Reads what the kernel counted of this session's streams.
    fn read_kernel(&mut self, kernel: &KernelPath, now: Instant, monotonic_ns: u64) {
        for from in 0..2 {
            let Some(rule) = self.state.kernel_rule(from) else {
                continue;
            };
            if let Some(entry) = self.key(from, &rule).and_then(|k| kernel.read(&k)) {
                let ago = Duration::from_nanos(monotonic_ns.saturating_sub(entry.last_ns));
                let last_rtp = now.checked_sub(ago).unwrap_or(now);
                let forwarded = self.state.kernel_counted(from, entry, last_rtp);
                kernel.count_forwarded(forwarded);
            }
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the kernel path's `last_ns`.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_nanos() as u64)
        .unwrap_or(0)
}

/// One relay thread: waits for sockets with packets, relays one packet from each, and
/// takes commands when woken.
fn run(
    epoll: Epoll,
    wake: &EventFd,
    commands: mpsc::Receiver<Command>,
    published: &Mutex<RelayDelay>,
    kernel: Option<&KernelPath>,
) {
    let mut sessions: HashMap<u64, Carried> = HashMap::new();
    let mut next_sync = Instant::now() + KERNEL_SYNC;
    // With the kernel path, wake up now and then to read its counters.
    let timeout = if kernel.is_some() {
        EpollTimeout::from(KERNEL_SYNC.as_millis() as u16)
    } else {
        EpollTimeout::NONE
    };
    let mut events = vec![EpollEvent::empty(); 512];
    let mut buf = [0u8; 2048];
    let mut control = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut delay = RelayDelay::default();
    loop {
        if delay.count > 0 {
            published
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(&delay);
            delay = RelayDelay::default();
        }
        if let Some(kernel) = kernel
            && Instant::now() >= next_sync
        {
            let now = Instant::now();
            next_sync = now + KERNEL_SYNC;
            let monotonic = monotonic_ns();
            for carried in sessions.values_mut() {
                if carried.state.kernel_rule(0).is_none() && carried.state.kernel_rule(1).is_none()
                {
                    continue;
                }
                carried.state.refresh_plan(now);
                carried.sync_kernel(kernel, now);
                carried.read_kernel(kernel, now, monotonic);
                carried.state.publish();
            }
        }
        let ready = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!(error = %e, "relay thread cannot wait for packets: it stops");
                return;
            }
        };
        for event in &events[..ready] {
            let data = event.data();
            if data == WAKE {
                let _ = wake.read();
                if !take_commands(&epoll, &commands, &mut sessions, kernel) {
                    return;
                }
                continue;
            }
            let (key, which) = (data >> 2, (data & 3) as usize);
            // A session removed earlier in this batch: its event is stale.
            let Some(carried) = sessions.get_mut(&key) else {
                continue;
            };
            // Level-triggered: a packet left queued is reported again by the next wait.
            // An error is an ICMP error for an earlier send, read and so cleared.
            let Ok((n, src, stamp)) =
                receive_stamped(&carried.sockets[which], &mut buf, &mut control)
            else {
                continue;
            };
            let packet = &mut buf[..n];
            let rtp_from = (which % 2 == 0).then_some(which / 2);
            if let (Some(kernel), Some(from)) = (kernel, rtp_from)
                && carried.state.kernel_refused(from, src, stamp)
            {
                carried.recall(kernel, from);
            }
            if let Some(send) = carried.state.on_packet(which, src, packet) {
                let sent = carried.sockets[send.socket]
                    .send_to(packet, send.dest)
                    .is_ok();
                carried.state.after_send(send, sent, n);
                if let (true, Some(stamp)) = (sent, stamp) {
                    delay.record(wall_clock().saturating_sub(stamp).as_micros() as u64);
                }
            }
            if let (Some(kernel), Some(_)) = (kernel, rtp_from)
                && carried.state.kernel_may_change()
            {
                carried.sync_kernel(kernel, Instant::now());
            }
        }
    }
}

/// One packet from `socket` (non-blocking): its length, its source and the kernel's
/// receive stamp (since the Unix epoch; none without `SO_TIMESTAMPNS` on the socket).
/// `control` holds the control message: `nix::cmsg_space!(nix::sys::time::TimeSpec)`,
/// made once and reused.
pub fn receive_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
    control: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<Duration>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    use std::os::fd::AsRawFd;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let stamp = msg.cmsgs().ok().and_then(|mut all| {
        all.find_map(|c| match c {
            ControlMessageOwned::ScmTimestampns(t) => Some(Duration::from(t)),
            _ => None,
        })
    });
    let source = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| std::io::Error::other("a datagram with no source address"))?;
    Ok((msg.bytes, source, stamp))
}

/// Now, since the Unix epoch (the clock of the kernel's receive stamps).
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Applies the queued commands; false when the thread is to stop.
fn take_commands(
    epoll: &Epoll,
    commands: &mpsc::Receiver<Command>,
    sessions: &mut HashMap<u64, Carried>,
    kernel: Option<&KernelPath>,
) -> bool {
    loop {
        match commands.try_recv() {
            Ok(Command::Add {
                key,
                sockets,
                state,
            }) => {
                let mut added = 0;
                for socket in &sockets {
                    // The receive stamp measures the delay the node adds.
                    let _ = nix::sys::socket::setsockopt(
                        &**socket,
                        nix::sys::socket::sockopt::ReceiveTimestampns,
                        &true,
                    );
                }
                for (i, socket) in sockets.iter().enumerate() {
                    let event = EpollEvent::new(EpollFlags::EPOLLIN, key << 2 | i as u64);
                    if let Err(e) = epoll.add(&**socket, event) {
                        warn!(error = %e, "a media socket cannot be watched: that session relays nothing");
                        break;
                    }
                    added += 1;
                }
                if added < sockets.len() {
                    for socket in &sockets[..added] {
                        let _ = epoll.delete(&**socket);
                    }
                    continue;
                }
                let v4 = |s: &UdpSocket| match s.local_addr() {
                    Ok(SocketAddr::V4(a)) => Some(a),
                    _ => None,
                };
                let rtp_local = [v4(&sockets[A_RTP]), v4(&sockets[B_RTP])];
                sessions.insert(
                    key,
                    Carried {
                        sockets,
                        rtp_local,
                        state,
                    },
                );
            }
            Ok(Command::Remove { key, done }) => {
                if let Some(mut carried) = sessions.remove(&key) {
                    // Nothing is forwarded to or from its ports once it is gone.
                    if let Some(kernel) = kernel {
                        carried.recall(kernel, 0);
                        carried.recall(kernel, 1);
                    }
                    for socket in &carried.sockets {
                        let _ = epoll.delete(&**socket);
                    }
                    carried.state.publish();
                }
                let _ = done.send(());
            }
            Ok(Command::PlanChanged { key }) => {
                if let (Some(kernel), Some(carried)) = (kernel, sessions.get_mut(&key)) {
                    let now = Instant::now();
                    carried.state.refresh_plan(now);
                    carried.sync_kernel(kernel, now);
                }
            }
            Ok(Command::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return false,
            Err(mpsc::TryRecvError::Empty) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_delays_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let mut d = RelayDelay::default();
        for us in [0, 25, 26, 1_000, 1_001, 100_000, 100_001] {
            d.record(us);
        }
        // 0 and 25 µs: up to 25; 26: up to 50; 1,000: up to 1 ms; 1,001: up to 2.5 ms;
        // 100,000: the last bound; 100,001: above them all.
        let expected = [2, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1];
        assert_eq!(d.buckets, expected);
        assert_eq!(d.count, 7);
        assert_eq!(d.sum_us, 202_053);
        let mut total = RelayDelay::default();
        total.add(&d);
        total.add(&d);
        assert_eq!(total.count, 14);
        assert_eq!(total.buckets[0], 4);
    }
}
