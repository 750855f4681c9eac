//! `switchyard bench calls` and `noisy-neighbour`: simulated phones place and answer
//! calls over UDP through any SIP server that knows the same users (the storm's
//! [`Population`]), each call ending one of the ways a call ends.
//!
//! In each tenant the first extensions are callees with a fixed behaviour (see
//! [`Ending::callee`]): 1000 answers and waits for the caller's BYE, 1001 answers and
//! hangs up itself, 1002 rings until cancelled, 1003 is busy, 1004 is never registered.
//! The others are callers. A call is INVITE, `407`, ACK, INVITE with credentials, then
//! what its ending asks; requests are retransmitted (timer A/E from 500 ms) and the
//! callee retransmits its final answer until the ACK.
//!
//! The report counts outcomes by final status and the setup time (first INVITE to final
//! answer) of answered calls in percentiles.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use switchyard_sip::digest::{Algorithm, expected_response, ha1};
use switchyard_sip::headers::tag_of;
use switchyard_sip::{HeaderName, Message, Method};

use super::storm::{Population, quoted_param};

const T1: Duration = Duration::from_millis(500);
/// A transaction gives up after 64 × T1, as RFC 3261's timers B and F.
const GIVE_UP: Duration = Duration::from_secs(32);
/// The start of every From tag our callers choose: through a proxy that keeps the
/// Call-ID (Kamailio in `bench/kamailio/calls.py`), the caller and the callee of one
/// call are both in this process, and the tags tell which side a message is for.
const CALLER_TAG: &str = "sybc";
/// How long the phones try to remove their registrations when the calls are done.
const UNREGISTER_FOR: Duration = Duration::from_secs(5);

/// How a call ends; the callee's behaviour follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// Answered; the caller hangs up after the hold time.
    CallerBye,
    /// Answered; the callee hangs up after the hold time.
    CalleeBye,
    /// Ringing; the caller cancels (`487`).
    Cancel,
    /// The callee answers `486`.
    Busy,
    /// The callee is not registered (`480`).
    Unavailable,
}

impl Ending {
    pub const ALL: [Ending; 5] = [
        Ending::CallerBye,
        Ending::CalleeBye,
        Ending::Cancel,
        Ending::Busy,
        Ending::Unavailable,
    ];

    /// The extension that behaves as this ending needs.
    pub fn callee(self) -> u32 {
        1000 + Ending::ALL.iter().position(|e| *e == self).unwrap_or(0) as u32
    }

    /// The final status the caller expects.
    fn expected(self) -> u16 {
        match self {
            Ending::CallerBye | Ending::CalleeBye => 200,
            Ending::Cancel => 487,
            Ending::Busy => 486,
            Ending::Unavailable => 480,
        }
    }
}

/// First extension that places calls.
pub const FIRST_CALLER: u32 = 1005;

/// What to run.
#[derive(Debug, Clone)]
pub struct CallsOptions {
    pub target: SocketAddr,
    pub population: Population,
    /// The tenants (indices in the population) that place calls.
    pub tenants: Vec<usize>,
    pub calls: usize,
    /// New calls per second, all tenants together.
    pub rate: f64,
    pub hold: Duration,
    /// Cycled over the calls.
    pub endings: Vec<Ending>,
    pub sockets: usize,
    /// Register the callees first (skip when another run already did).
    pub register: bool,
}

/// What happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallsReport {
    pub attempted: usize,
    /// Calls whose final answer and ending went as their ending asks.
    pub completed: usize,
    /// Calls that ended otherwise (by final status; 0 = no final answer).
    pub failed: usize,
    pub by_status: BTreeMap<u16, usize>,
    pub elapsed_secs: f64,
    pub setup_p50_ms: f64,
    pub setup_p95_ms: f64,
    pub setup_p99_ms: f64,
    pub setup_max_ms: f64,
    /// Requests and answers the phones resent during the run (all phones of the
    /// [`Phones`]: two runs at once share the figure).
    pub retransmissions: u64,
    /// Answered calls that the far end (the server) hung up during the hold, where the
    /// phone meant to hang up itself: a server stopping or timing calls out. They count
    /// as failed.
    pub hung_up_by_far_end: u64,
}

impl CallsReport {
    pub fn success_rate(&self) -> f64 {
        if self.attempted == 0 {
            return 1.0;
        }
        self.completed as f64 / self.attempted as f64
    }
}

impl std::fmt::Display for CallsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "calls: {} attempted, {} completed as intended ({:.2} %), {} failed, in {:.2} s",
            self.attempted,
            self.completed,
            100.0 * self.success_rate(),
            self.failed,
            self.elapsed_secs
        )?;
        writeln!(f, "final answers: {:?}", self.by_status)?;
        writeln!(
            f,
            "setup (first INVITE to final answer): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.setup_p50_ms, self.setup_p95_ms, self.setup_p99_ms, self.setup_max_ms
        )?;
        writeln!(f, "hung up by the far end: {}", self.hung_up_by_far_end)?;
        write!(f, "retransmissions: {}", self.retransmissions)
    }
}

type Inbox = mpsc::UnboundedSender<(Message, SocketAddr)>;

/// The sockets all simulated phones share, and who gets what arrives.
#[derive(Debug)]
struct Net {
    sockets: Vec<Arc<UdpSocket>>,
    target: SocketAddr,
    /// By Call-ID: the caller or callee task of that call.
    calls: Mutex<HashMap<String, Inbox>>,
    retransmissions: std::sync::atomic::AtomicU64,
    far_end_byes: std::sync::atomic::AtomicU64,
    run: String,
    hold: Duration,
}

impl Net {
    fn local(&self, socket: usize) -> SocketAddr {
        self.sockets[socket]
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    async fn send(&self, socket: usize, to: SocketAddr, text: &str) {
        let _ = self.sockets[socket].send_to(text.as_bytes(), to).await;
    }

    fn route(&self, call_id: &str) -> mpsc::UnboundedReceiver<(Message, SocketAddr)> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call_id.to_owned(), tx);
        rx
    }

    fn forget(&self, call_id: &str) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(call_id);
    }

    fn retransmitted(&self) {
        self.retransmissions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs the calls and returns the report.
pub async fn run(options: &CallsOptions) -> anyhow::Result<CallsReport> {
    let phones = Phones::open(options.target, options.sockets, options.hold)?;
    let report = phones.calls(options).await;
    if options.register {
        phones
            .unregister(&options.population, &options.tenants)
            .await;
    }
    report
}

/// Simulated phones on their sockets, answering while they exist: register callees once,
/// then run several sets of calls on them.
#[derive(Debug)]
pub struct Phones {
    net: Arc<Net>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Phones {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

impl Phones {
    pub fn open(target: SocketAddr, sockets: usize, hold: Duration) -> anyhow::Result<Phones> {
        let net = Net::open(target, sockets, hold)?;
        let readers = (0..net.sockets.len())
            .map(|i| tokio::spawn(read_loop(net.clone(), i)))
            .collect();
        Ok(Phones { net, readers })
    }

    /// Places `options.calls` (its target, sockets and hold are the phones' own).
    pub async fn calls(&self, options: &CallsOptions) -> anyhow::Result<CallsReport> {
        place_calls(&self.net, options).await
    }

    /// Removes the callees' registrations of `tenants` (they would count against the
    /// tenants' registration caps for an hour), for a few seconds at most: a server that
    /// has stopped (a drain run) answers none of them, and each would wait out a
    /// transaction timeout.
    pub async fn unregister(&self, population: &Population, tenants: &[usize]) {
        let all = async {
            for &t in tenants {
                for ending in Ending::ALL {
                    if ending != Ending::Unavailable {
                        let user = ending.callee().to_string();
                        let _ = register(&self.net, population, t, &user, 0).await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(UNREGISTER_FOR, all).await;
    }
}

impl Net {
    fn open(target: SocketAddr, sockets: usize, hold: Duration) -> anyhow::Result<Arc<Net>> {
        let mut bound = Vec::new();
        for _ in 0..sockets.max(1) {
            let std = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            std.set_nonblocking(true)?;
            let s = UdpSocket::from_std(std)?;
            crate::bench::grow_buffers(&s);
            bound.push(Arc::new(s));
        }
        Ok(Arc::new(Net {
            sockets: bound,
            target,
            calls: Mutex::new(HashMap::new()),
            retransmissions: Default::default(),
            far_end_byes: Default::default(),
            run: format!("{:08x}", rand::random::<u32>()),
            hold,
        }))
    }
}

async fn place_calls(net: &Arc<Net>, options: &CallsOptions) -> anyhow::Result<CallsReport> {
    let population = &options.population;
    anyhow::ensure!(
        population.per_tenant as u32 > FIRST_CALLER - 1000,
        "each tenant needs more than {} extensions (callees 1000-1004, callers from 1005)",
        FIRST_CALLER - 1000
    );
    if options.register {
        for &t in &options.tenants {
            for ending in Ending::ALL {
                if ending == Ending::Unavailable {
                    continue;
                }
                let user = ending.callee().to_string();
                register(net, population, t, &user, 3600).await?;
            }
        }
    }
    let callers = population.per_tenant as u32 - (FIRST_CALLER - 1000);
    // Every set of calls has Call-IDs of its own (several run on the same phones).
    let batch = rand::random::<u32>();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(0.001));
    let mut tasks = Vec::with_capacity(options.calls);
    for i in 0..options.calls {
        let at = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        let tenant = options.tenants[i % options.tenants.len()];
        let ending = options.endings[i % options.endings.len().max(1)];
        let caller = FIRST_CALLER + (i / options.tenants.len()) as u32 % callers;
        let net = net.clone();
        let population = population.clone();
        tasks.push(tokio::spawn(async move {
            caller_call(&net, &population, (tenant, batch), caller, ending, i).await
        }));
    }
    let mut report = CallsReport {
        attempted: options.calls,
        ..CallsReport::default()
    };
    let mut setups = Vec::new();
    for t in tasks {
        let (status, ok, setup) = t.await?;
        *report.by_status.entry(status).or_default() += 1;
        if ok {
            report.completed += 1;
        } else {
            report.failed += 1;
        }
        if let Some(s) = setup {
            setups.push(s.as_secs_f64() * 1000.0);
        }
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    setups.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if setups.is_empty() {
            return 0.0;
        }
        setups[((setups.len() - 1) as f64 * p).round() as usize]
    };
    report.setup_p50_ms = pct(0.5);
    report.setup_p95_ms = pct(0.95);
    report.setup_p99_ms = pct(0.99);
    report.setup_max_ms = setups.last().copied().unwrap_or(0.0);
    report.retransmissions = net
        .retransmissions
        .swap(0, std::sync::atomic::Ordering::Relaxed);
    report.hung_up_by_far_end = net
        .far_end_byes
        .swap(0, std::sync::atomic::Ordering::Relaxed);
    Ok(report)
}

/// Delivers what arrives to the call it belongs to; a new INVITE starts a callee.
async fn read_loop(net: Arc<Net>, socket: usize) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = net.sockets[socket].recv_from(&mut buf).await else {
            continue;
        };
        let Ok(msg) = Message::parse_datagram(Bytes::copy_from_slice(&buf[..n])) else {
            continue;
        };
        let Ok(call_id) = msg.call_id().map(str::to_owned) else {
            continue;
        };
        // Sent by one of our callers (a request) or answering one of our callees (a
        // response whose To tag is a caller's): for the callee side of the call.
        let ours = |name| {
            msg.header(name)
                .and_then(tag_of)
                .is_some_and(|t| t.starts_with(CALLER_TAG))
        };
        let for_callee = if msg.is_request() {
            ours(HeaderName::From)
        } else {
            ours(HeaderName::To)
        };
        let key = if for_callee {
            format!("{call_id}/callee")
        } else {
            call_id
        };
        let inbox = net
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        match inbox {
            Some(inbox) => {
                let _ = inbox.send((msg, from));
            }
            None if msg.method() == Some(&Method::Invite) => {
                let rx = net.route(&key);
                tokio::spawn(callee_call(net.clone(), socket, key, msg, from, rx));
            }
            None => {}
        }
    }
}

/// Waits for a message on `rx` that `accept` takes, resending `resend` on timer A/E.
async fn exchange<T>(
    net: &Net,
    socket: usize,
    to: SocketAddr,
    resend: Option<&str>,
    rx: &mut mpsc::UnboundedReceiver<(Message, SocketAddr)>,
    mut accept: impl FnMut(&Message, SocketAddr) -> Option<T>,
) -> Option<T> {
    let give_up = Instant::now() + GIVE_UP;
    let mut interval = T1;
    let mut next = Instant::now() + interval;
    loop {
        let wait = next.min(give_up);
        match tokio::time::timeout_at(wait.into(), rx.recv()).await {
            Ok(Some((msg, from))) => {
                if let Some(t) = accept(&msg, from) {
                    return Some(t);
                }
            }
            Ok(None) => return None,
            Err(_) if Instant::now() >= give_up => return None,
            Err(_) => {
                if let Some(text) = resend {
                    net.retransmitted();
                    net.send(socket, to, text).await;
                }
                interval = (interval * 2).min(Duration::from_secs(4));
                next = Instant::now() + interval;
            }
        }
    }
}

fn sdp(local: SocketAddr) -> String {
    let ip = local.ip();
    let port = 20000 + (rand::random::<u16>() % 10000) * 2;
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

/// Registers `user` of tenant `t` from socket 0, digest and all.
async fn register(
    net: &Net,
    population: &Population,
    t: usize,
    user: &str,
    expires: u32,
) -> anyhow::Result<()> {
    let domain = population.domain(t);
    let password = format!("storm-{t}-{user}-secret");
    let call_id = format!("reg-{}-{t}-{user}-{expires}", net.run);
    let mut rx = net.route(&call_id);
    let local = net.local(0);
    let uri = format!("sip:{domain}");
    let mut auth = String::new();
    for cseq in 1..=2 {
        let text = format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{call_id}-{cseq}\r\nMax-Forwards: 70\r\nTo: <sip:{user}@{domain}>\r\nFrom: <sip:{user}@{domain}>;tag={cseq}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{local}>\r\nExpires: {expires}\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        net.send(0, net.target, &text).await;
        let answer = exchange(net, 0, net.target, Some(&text), &mut rx, |m, _| {
            m.status().filter(|s| *s >= 200).map(|s| (s, m.clone()))
        })
        .await;
        match answer {
            Some((200, _)) => {
                net.forget(&call_id);
                return Ok(());
            }
            Some((401, m)) => {
                let c = m.header(HeaderName::WwwAuthenticate).unwrap_or_default();
                let (realm, nonce) = (
                    quoted_param(c, "realm").unwrap_or_default(),
                    quoted_param(c, "nonce").unwrap_or_default(),
                );
                auth = format!(
                    "Authorization: {}\r\n",
                    credentials(user, &password, &realm, &nonce, "REGISTER", &uri)
                );
            }
            other => {
                net.forget(&call_id);
                anyhow::bail!(
                    "{user}@{domain} did not register: {:?}",
                    other.map(|(s, _)| s)
                )
            }
        }
    }
    net.forget(&call_id);
    anyhow::bail!("{user}@{domain} was challenged twice")
}

fn credentials(
    user: &str,
    password: &str,
    realm: &str,
    nonce: &str,
    method: &str,
    uri: &str,
) -> String {
    let h = ha1(Algorithm::Md5, user, realm, password);
    let cnonce = format!("{:08x}", rand::random::<u32>());
    let response = expected_response(
        Algorithm::Md5,
        &h,
        nonce,
        method,
        uri,
        Some(("00000001", &cnonce, "auth")),
    );
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, nc=00000001"
    )
}

/// The dialog's view for in-dialog requests as the caller (UAC): route set reversed.
struct Dialog {
    call_id: String,
    local_uri: String,
    remote_uri: String,
    remote_target: String,
    routes: Vec<String>,
}

impl Dialog {
    fn request(&self, method: &str, cseq: u32, local: SocketAddr, branch: &str) -> String {
        let routes: String = self
            .routes
            .iter()
            .map(|r| format!("Route: {r}\r\n"))
            .collect();
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n{routes}From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            target = self.remote_target,
            from = self.local_uri,
            to = self.remote_uri,
            call_id = self.call_id,
        )
    }
}

fn contact_uri(msg: &Message) -> Option<String> {
    let c = msg.header(HeaderName::Contact)?;
    let start = c.find('<')? + 1;
    let end = c[start..].find('>')? + start;
    Some(c[start..end].to_owned())
}

/// One call from the caller's side: (final status, went as intended, setup time).
async fn caller_call(
    net: &Net,
    population: &Population,
    (t, batch): (usize, u32),
    caller: u32,
    ending: Ending,
    i: usize,
) -> (u16, bool, Option<Duration>) {
    let socket = i % net.sockets.len();
    let local = net.local(socket);
    let domain = population.domain(t);
    let user = caller.to_string();
    let password = format!("storm-{t}-{user}-secret");
    let call_id = format!("bc-{}-{batch:08x}-{t}-{i}", net.run);
    let tag = format!("{CALLER_TAG}{t}x{i}");
    let callee = ending.callee();
    let uri = format!("sip:{callee}@{domain}");
    let mut rx = net.route(&call_id);
    let body = sdp(local);
    let from = format!("<sip:{user}@{domain}>;tag={tag}");
    let invite = |cseq: u32, auth: &str| {
        format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{call_id}-{cseq}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:{user}@{local}>\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let ack_failure = |cseq: u32, r: &Message| {
        format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{call_id}-{cseq}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            r.header(HeaderName::To).unwrap_or_default()
        )
    };
    let started = Instant::now();
    let outcome = async {
        // The challenge.
        let first = invite(1, "");
        net.send(socket, net.target, &first).await;
        let challenge = exchange(net, socket, net.target, Some(&first), &mut rx, |m, _| {
            (m.status()? >= 200 && m.cseq().is_ok_and(|c| c.seq == 1)).then(|| m.clone())
        })
        .await?;
        net.send(socket, net.target, &ack_failure(1, &challenge))
            .await;
        if challenge.status() != Some(407) {
            return Some((challenge.status().unwrap_or(0), false, None));
        }
        let c = challenge
            .header(HeaderName::ProxyAuthenticate)
            .unwrap_or_default();
        let auth = format!(
            "Proxy-Authorization: {}\r\n",
            credentials(
                &user,
                &password,
                &quoted_param(c, "realm").unwrap_or_default(),
                &quoted_param(c, "nonce").unwrap_or_default(),
                "INVITE",
                &uri
            )
        );
        let second = invite(2, &auth);
        net.send(socket, net.target, &second).await;
        // Until a provisional answer stops the retransmissions; CANCEL after ringing.
        let mut resend = Some(second.clone());
        let mut cancelled = false;
        let last = loop {
            // Only answers to this INVITE: a late 407 to a retransmission of the first
            // one is not its final answer.
            let r = exchange(net, socket, net.target, resend.as_deref(), &mut rx, |m, _| {
                (m.status().is_some()
                    && m.cseq()
                        .is_ok_and(|c| c.method == Method::Invite && c.seq == 2))
                .then(|| m.clone())
            })
            .await?;
            let status = r.status().unwrap_or(0);
            if status < 200 {
                resend = None;
                if ending == Ending::Cancel && status >= 180 && !cancelled {
                    cancelled = true;
                    let cancel = format!(
                        "CANCEL {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{call_id}-2\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n"
                    );
                    net.send(socket, net.target, &cancel).await;
                }
                continue;
            }
            break r;
        };
        let status = last.status().unwrap_or(0);
        let setup = Some(started.elapsed());
        if status >= 300 {
            net.send(socket, net.target, &ack_failure(2, &last)).await;
            return Some((status, status == ending.expected(), setup));
        }
        // Answered: ACK through the route set, then hang up or be hung up on.
        let dialog = Dialog {
            call_id: call_id.clone(),
            local_uri: from.clone(),
            remote_uri: last.header(HeaderName::To).unwrap_or_default().to_owned(),
            remote_target: contact_uri(&last).unwrap_or_else(|| uri.clone()),
            routes: last
                .values(HeaderName::RecordRoute)
                .map(str::to_owned)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect(),
        };
        let ack = dialog.request("ACK", 2, local, &format!("{call_id}-ack"));
        net.send(socket, net.target, &ack).await;
        match ending {
            Ending::CallerBye => {
                // Hold, answering a BYE from the far end meanwhile (as a phone does).
                let hold_ends = tokio::time::Instant::now() + net.hold;
                let far_end = exchange(net, socket, net.target, None, &mut rx, |m, from| {
                    (m.method() == Some(&Method::Bye)).then(|| (m.clone(), from))
                });
                if let Ok(Some((m, from))) = tokio::time::timeout(net.hold, far_end).await {
                    net.send(socket, from, &response_to(&m, 200, "OK", None, ""))
                        .await;
                    net.far_end_byes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Some((200, false, setup));
                }
                tokio::time::sleep_until(hold_ends).await;
                let bye = dialog.request("BYE", 3, local, &format!("{call_id}-bye"));
                net.send(socket, net.target, &bye).await;
                // Until the answer to our BYE; a BYE of the far end that crossed ours
                // (the server hanging up as it stops) is answered, as a phone does.
                let answered = loop {
                    let got = exchange(net, socket, net.target, Some(&bye), &mut rx, |m, from| {
                        if m.method() == Some(&Method::Bye) {
                            return Some(Err(Box::new((m.clone(), from))));
                        }
                        (m.status().is_some() && m.cseq().is_ok_and(|c| c.method == Method::Bye))
                            .then(|| Ok(m.status() == Some(200)))
                    })
                    .await;
                    match got {
                        Some(Err(crossed)) => {
                            let (theirs, from) = *crossed;
                            net.send(socket, from, &response_to(&theirs, 200, "OK", None, ""))
                                .await;
                            net.far_end_byes
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Some(Ok(ok)) => break ok,
                        None => break false,
                    }
                };
                Some((200, answered && ending.expected() == 200, setup))
            }
            _ => {
                // Wait for the callee's BYE (a 200 retransmitted meanwhile gets its ACK).
                let bye = exchange(net, socket, net.target, None, &mut rx, |m, from| {
                    if m.method() == Some(&Method::Bye) {
                        return Some((m.clone(), from));
                    }
                    None
                });
                let bye = tokio::time::timeout(net.hold + GIVE_UP, bye).await.ok()??;
                let (m, from) = bye;
                net.send(socket, from, &response_to(&m, 200, "OK", None, ""))
                    .await;
                Some((200, ending == Ending::CalleeBye, setup))
            }
        }
    }
    .await;
    net.forget(&call_id);
    outcome.unwrap_or((0, false, None))
}

/// A response to `req`, with `to_tag` added to To when given.
fn response_to(
    req: &Message,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &str,
) -> String {
    let mut text = format!("SIP/2.0 {status} {reason}\r\n");
    for v in req.values(HeaderName::Via) {
        text.push_str(&format!("Via: {v}\r\n"));
    }
    for v in req.values(HeaderName::RecordRoute) {
        text.push_str(&format!("Record-Route: {v}\r\n"));
    }
    let to = req.header(HeaderName::To).unwrap_or_default();
    let to = match to_tag {
        Some(tag) if !to.contains("tag=") => format!("{to};tag={tag}"),
        _ => to.to_owned(),
    };
    text.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}",
        req.header(HeaderName::From).unwrap_or_default(),
        req.call_id().unwrap_or_default(),
        req.header(HeaderName::CSeq).unwrap_or_default(),
    ));
    if !extra.contains("Content-Length") {
        text.push_str("Content-Length: 0\r\n\r\n");
    }
    text
}

/// One call from the callee's side, as its extension behaves.
async fn callee_call(
    net: Arc<Net>,
    socket: usize,
    key: String,
    invite: Message,
    from: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<(Message, SocketAddr)>,
) {
    let call_id = invite.call_id().unwrap_or_default().to_owned();
    let user: u32 = invite
        .request_uri_str()
        .and_then(|u| u.strip_prefix("sip:"))
        .and_then(|u| u.split('@').next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    let behaviour = Ending::ALL
        .into_iter()
        .find(|e| e.callee() == user)
        .unwrap_or(Ending::CallerBye);
    let local = net.local(socket);
    let tag = format!("e{}", rand::random::<u32>());
    let final_answer = match behaviour {
        Ending::Busy => response_to(&invite, 486, "Busy Here", Some(&tag), ""),
        Ending::Cancel | Ending::Unavailable => {
            let ringing = response_to(&invite, 180, "Ringing", Some(&tag), "");
            net.send(socket, from, &ringing).await;
            // Until CANCEL (answered 200, then 487 to the INVITE); retransmitted INVITEs
            // get the 180 again.
            let cancel = exchange(&net, socket, from, None, &mut rx, |m, _| match m.method() {
                Some(Method::Cancel) => Some(m.clone()),
                _ => None,
            });
            let Ok(Some(cancel)) = tokio::time::timeout(Duration::from_secs(700), cancel).await
            else {
                net.forget(&key);
                return;
            };
            net.send(
                socket,
                from,
                &response_to(&cancel, 200, "OK", Some(&tag), ""),
            )
            .await;
            response_to(&invite, 487, "Request Terminated", Some(&tag), "")
        }
        Ending::CallerBye | Ending::CalleeBye => {
            let body = sdp(local);
            response_to(
                &invite,
                200,
                "OK",
                Some(&tag),
                &format!(
                    "Contact: <sip:{user}@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
            )
        }
    };
    net.send(socket, from, &final_answer).await;
    // Retransmitted until the ACK (and a retransmitted INVITE gets it again). A CANCEL
    // that crossed the answer is answered `200` and changes nothing (RFC 3261 9.2).
    let acked = loop {
        let got = exchange(
            &net,
            socket,
            from,
            Some(&final_answer),
            &mut rx,
            |m, at| match m.method() {
                Some(Method::Ack) => Some(None),
                Some(Method::Cancel) => Some(Some((m.clone(), at))),
                _ => None,
            },
        )
        .await;
        match got {
            Some(Some((cancel, at))) => {
                net.send(socket, at, &response_to(&cancel, 200, "OK", Some(&tag), ""))
                    .await;
            }
            Some(None) => break Some(()),
            None => break None,
        }
    };
    if acked.is_none() || behaviour != Ending::CalleeBye {
        if behaviour == Ending::CallerBye && acked.is_some() {
            let bye = exchange(&net, socket, from, None, &mut rx, |m, from| {
                (m.method() == Some(&Method::Bye)).then(|| (m.clone(), from))
            });
            if let Ok(Some((m, at))) = tokio::time::timeout(net.hold + GIVE_UP, bye).await {
                net.send(socket, at, &response_to(&m, 200, "OK", None, ""))
                    .await;
            }
        }
        // Linger briefly for retransmissions, then forget the call.
        tokio::time::sleep(Duration::from_millis(200)).await;
        net.forget(&key);
        return;
    }
    tokio::time::sleep(net.hold).await;
    // As UAS: the route set in Record-Route order, the caller's side is the core's Contact.
    let dialog = Dialog {
        call_id: call_id.clone(),
        local_uri: format!(
            "{};tag={tag}",
            invite.header(HeaderName::To).unwrap_or_default()
        ),
        remote_uri: invite
            .header(HeaderName::From)
            .unwrap_or_default()
            .to_owned(),
        remote_target: contact_uri(&invite).unwrap_or_default(),
        routes: invite
            .values(HeaderName::RecordRoute)
            .map(str::to_owned)
            .collect(),
    };
    // The core's Call-ID may hold characters a branch may not.
    let bye = dialog.request(
        "BYE",
        1,
        local,
        &format!("cbye{:016x}", rand::random::<u64>()),
    );
    net.send(socket, from, &bye).await;
    let _ = exchange(&net, socket, from, Some(&bye), &mut rx, |m, _| {
        (m.status().is_some_and(|s| s >= 200) && m.cseq().is_ok_and(|c| c.method == Method::Bye))
            .then_some(())
    })
    .await;
    net.forget(&key);
}

/// Sets the call caps of tenant `t` of the population (provisioned already).
pub async fn set_call_limits(
    store: &switchyard_store::Store,
    population: &Population,
    t: usize,
    max_calls: i64,
    calls_per_second: i64,
) -> anyhow::Result<()> {
    let tenant = store.tenant_by_domain(&population.domain(t)).await?;
    store
        .update_tenant(
            &tenant.id,
            &switchyard_store::TenantChanges {
                max_calls: Some(max_calls),
                calls_per_second: Some(calls_per_second),
                ..Default::default()
            },
            None,
        )
        .await?;
    Ok(())
}

/// What `noisy-neighbour` runs: tenant 0 (A) floods at `flood_factor` × its call-rate
/// cap while tenant 1 (B) places calls at a steady rate, after a baseline of B alone.
#[derive(Debug, Clone)]
pub struct NoisyOptions {
    pub target: SocketAddr,
    pub population: Population,
    /// A's `calls_per_second`.
    pub a_cap: u32,
    pub flood_factor: f64,
    pub b_rate: f64,
    pub duration: Duration,
    pub hold: Duration,
    pub sockets: usize,
}

/// B alone, then B beside A's flood, and A's own outcome.
#[derive(Debug, Clone, Serialize)]
pub struct NoisyReport {
    pub b_alone: CallsReport,
    pub b_with_flood: CallsReport,
    pub a_flood: CallsReport,
    /// B's setup p99 beside the flood over B's p99 alone.
    pub b_p99_ratio: f64,
}

impl std::fmt::Display for NoisyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "tenant B alone:\n{}\n", self.b_alone)?;
        writeln!(f, "tenant B beside A's flood:\n{}\n", self.b_with_flood)?;
        writeln!(f, "tenant A flooding:\n{}\n", self.a_flood)?;
        write!(
            f,
            "B success {:.2} % (alone {:.2} %), B setup p99 {:.1} ms vs {:.1} ms alone: ratio {:.2}",
            100.0 * self.b_with_flood.success_rate(),
            100.0 * self.b_alone.success_rate(),
            self.b_with_flood.setup_p99_ms,
            self.b_alone.setup_p99_ms,
            self.b_p99_ratio
        )
    }
}

pub async fn noisy_neighbour(options: &NoisyOptions) -> anyhow::Result<NoisyReport> {
    let calls = |tenant: usize, rate: f64, register: bool| CallsOptions {
        target: options.target,
        population: options.population.clone(),
        tenants: vec![tenant],
        calls: (rate * options.duration.as_secs_f64()).ceil() as usize,
        rate,
        hold: options.hold,
        endings: vec![Ending::CallerBye],
        sockets: options.sockets,
        register,
    };
    // Both tenants' callees registered once, on the phones every phase uses.
    let phones = Phones::open(options.target, options.sockets, options.hold)?;
    for t in [0, 1] {
        phones
            .calls(&CallsOptions {
                calls: 0,
                ..calls(t, 1.0, true)
            })
            .await?;
    }
    let b_alone = phones.calls(&calls(1, options.b_rate, false)).await?;
    let flood = calls(0, f64::from(options.a_cap) * options.flood_factor, false);
    let steady = calls(1, options.b_rate, false);
    let (a_flood, b_with_flood) = tokio::join!(phones.calls(&flood), phones.calls(&steady));
    phones.unregister(&options.population, &[0, 1]).await;
    let (a_flood, b_with_flood) = (a_flood?, b_with_flood?);
    let b_p99_ratio = if b_alone.setup_p99_ms > 0.0 {
        b_with_flood.setup_p99_ms / b_alone.setup_p99_ms
    } else {
        0.0
    };
    Ok(NoisyReport {
        b_alone,
        b_with_flood,
        a_flood,
        b_p99_ratio,
    })
}
