//! `switchyard bench register-storm`: N phones in T tenants register at once (or at a
//! paced rate) over UDP with the full digest handshake (REGISTER, `401`, REGISTER with
//! Authorization), retransmitting as RFC 3261 §17.1.2 asks (timer E from 500 ms doubling
//! to 4 s, timer F at 32 s), and honouring `503` with `Retry-After`. Works against any
//! registrar that knows the same users (`Population` names them deterministically, so a
//! Kamailio baseline can load the same HA1s).
//!
//! While the storm runs, an OPTIONS probe every 100 ms checks that the server still
//! answers; the report carries the storm's completion time, request counts and the
//! refresh histogram the granted expiries imply.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use switchyard_sip::digest::{Algorithm, expected_response, ha1};
use switchyard_sip::{HeaderName, Message};
use switchyard_store::{NewExtension, NewTenant, Store, StoreError};

/// The phones of a storm: `tenants` domains `tNNNN.<suffix>`, each with `per_tenant`
/// extensions numbered from 1000, passwords derived from the tenant and number.
#[derive(Debug, Clone)]
pub struct Population {
    pub tenants: usize,
    pub per_tenant: usize,
    pub domain_suffix: String,
}

/// One phone's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneAccount {
    pub domain: String,
    pub user: String,
    pub password: String,
}

impl Population {
    pub fn new(phones: usize, tenants: usize) -> Population {
        let tenants = tenants.max(1);
        Population {
            tenants,
            per_tenant: phones.div_ceil(tenants).max(1),
            domain_suffix: "storm.test".into(),
        }
    }

    pub fn domain(&self, tenant: usize) -> String {
        format!("t{tenant:04}.{}", self.domain_suffix)
    }

    /// Every phone, tenant by tenant.
    pub fn accounts(&self) -> Vec<PhoneAccount> {
        let mut v = Vec::with_capacity(self.tenants * self.per_tenant);
        for t in 0..self.tenants {
            let domain = self.domain(t);
            for e in 0..self.per_tenant {
                let user = (1000 + e).to_string();
                v.push(PhoneAccount {
                    password: format!("storm-{t}-{user}-secret"),
                    domain: domain.clone(),
                    user,
                });
            }
        }
        v
    }

    /// Kamailio `htable` lines (`user@domain=>HA1`, MD5) for the same phones.
    pub fn kamailio_htable(&self) -> String {
        self.accounts()
            .iter()
            .map(|a| {
                format!(
                    "{}@{}=>{}\n",
                    a.user,
                    a.domain,
                    ha1(Algorithm::Md5, &a.user, &a.domain, &a.password)
                )
            })
            .collect()
    }
}

/// Creates the population's tenants and extensions in `store` where they are missing
/// (so a second run reuses them). Returns how many extensions were created.
pub async fn provision(store: &Store, population: &Population) -> anyhow::Result<usize> {
    let mut created = 0;
    for t in 0..population.tenants {
        let domain = population.domain(t);
        let tenant = match store.tenant_by_domain(&domain).await {
            Ok(t) => t,
            Err(StoreError::NotFound { .. }) => {
                store
                    .create_tenant(&NewTenant {
                        name: format!("Storm tenant {t}"),
                        domain: domain.clone(),
                        max_calls: None,
                        calls_per_second: None,
                        max_registrations: Some(population.per_tenant as i64 * 2),
                        max_extensions: Some(population.per_tenant as i64),
                    })
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        let existing = store.extensions(&tenant.id).await?;
        if existing.len() >= population.per_tenant {
            continue;
        }
        let range = match store.extension_ranges(&tenant.id).await?.into_iter().next() {
            Some(r) => r,
            None => {
                store
                    .add_extension_range(&tenant.id, 1000, 1000 + population.per_tenant as i64 - 1)
                    .await?
            }
        };
        for e in 0..population.per_tenant {
            let number = 1000 + e as i64;
            if existing.iter().any(|x| x.number == number) {
                continue;
            }
            store
                .create_extension(
                    &tenant.id,
                    &NewExtension {
                        range_id: range.id.clone(),
                        number: Some(number),
                        display_name: String::new(),
                        username: None,
                        password: format!("storm-{t}-{number}-secret"),
                        voicemail: false,
                    },
                )
                .await?;
            created += 1;
        }
    }
    Ok(created)
}

/// How to run a storm.
#[derive(Debug, Clone)]
pub struct StormOptions {
    pub target: SocketAddr,
    pub population: Population,
    /// New phones per second; `None` sends every first REGISTER at once.
    pub rate: Option<f64>,
    /// Expiry the phones ask for.
    pub expires: u32,
    /// Local UDP sockets the phones share (responses come back by Via).
    pub sockets: usize,
    /// Give up on phones still unregistered after this long.
    pub deadline: Duration,
    pub progress: bool,
}

/// What a storm measured.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub phones: usize,
    pub tenants: usize,
    pub registered: usize,
    pub failed: usize,
    /// Failures by final status (`timeout` for timer F or the deadline).
    pub failures: BTreeMap<String, usize>,
    /// From the first REGISTER sent to the last phone registered.
    pub completion_secs: f64,
    pub requests_sent: u64,
    pub retransmissions: u64,
    pub responses: BTreeMap<u16, u64>,
    /// Registrations completed per second of `completion_secs`.
    pub registrations_per_sec: f64,
    /// Median and worst time from a phone's first REGISTER to its `200`.
    pub register_p50_ms: f64,
    pub register_p99_ms: f64,
    pub register_max_ms: f64,
    /// OPTIONS sent every 100 ms during the storm, and how many got an answer.
    pub probes_sent: u64,
    pub probes_answered: u64,
    pub probe_max_ms: f64,
    /// Refreshes per second the granted expiries imply, over the window from the first
    /// to the last refresh (a phone refreshes when its granted expiry runs out).
    pub refresh: RefreshSpread,
}

/// How flat the refreshes after the storm are.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RefreshSpread {
    pub granted_min: u32,
    pub granted_max: u32,
    pub window_secs: u64,
    pub per_sec_max: u64,
    pub per_sec_mean: f64,
    /// `per_sec_max / per_sec_mean`: 1.0 is perfectly flat.
    pub max_over_mean: f64,
}

impl RefreshSpread {
    /// From the second offsets (since the storm started) at which phones refresh.
    pub fn from_offsets(offsets: &[u64], granted: &[u32]) -> RefreshSpread {
        let (Some(&first), Some(&last)) = (offsets.iter().min(), offsets.iter().max()) else {
            return RefreshSpread::default();
        };
        let window = last - first + 1;
        let mut counts = vec![0u64; window as usize];
        for o in offsets {
            counts[(o - first) as usize] += 1;
        }
        let max = counts.iter().copied().max().unwrap_or(0);
        let mean = offsets.len() as f64 / window as f64;
        RefreshSpread {
            granted_min: granted.iter().copied().min().unwrap_or(0),
            granted_max: granted.iter().copied().max().unwrap_or(0),
            window_secs: window,
            per_sec_max: max,
            per_sec_mean: mean,
            max_over_mean: if mean > 0.0 { max as f64 / mean } else { 0.0 },
        }
    }
}

impl std::fmt::Display for StormReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "register-storm: {} phones in {} tenants: {} registered, {} failed {:?}",
            self.phones, self.tenants, self.registered, self.failed, self.failures
        )?;
        writeln!(
            f,
            "  completion {:.3} s ({:.0} registrations/s), per phone p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
            self.completion_secs,
            self.registrations_per_sec,
            self.register_p50_ms,
            self.register_p99_ms,
            self.register_max_ms
        )?;
        writeln!(
            f,
            "  {} requests, {} retransmissions, responses {:?}",
            self.requests_sent, self.retransmissions, self.responses
        )?;
        writeln!(
            f,
            "  OPTIONS probes: {} of {} answered, slowest {:.1} ms",
            self.probes_answered, self.probes_sent, self.probe_max_ms
        )?;
        write!(
            f,
            "  refreshes: granted {}..{} s, over {} s, max {}/s, mean {:.1}/s, max/mean {:.2}",
            self.refresh.granted_min,
            self.refresh.granted_max,
            self.refresh.window_secs,
            self.refresh.per_sec_max,
            self.refresh.per_sec_mean,
            self.refresh.max_over_mean
        )
    }
}

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TIMER_F: Duration = Duration::from_secs(32);
const PROBE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not started yet.
    Idle,
    /// A REGISTER is out; `authorized` tells which of the two.
    Sent {
        authorized: bool,
    },
    /// Told to come back later (`503` + Retry-After); `authorized` is the next request.
    Backoff {
        authorized: bool,
    },
    Done,
    Failed,
}

#[derive(Debug)]
struct PhoneState {
    stage: Stage,
    cseq: u32,
    /// Bumped with every new transaction, so stale timer entries are ignored.
    generation: u32,
    started: Option<Instant>,
    tx_started: Instant,
    interval: Duration,
    last: Bytes,
    socket: usize,
    /// The challenge of the last `401`: (realm, nonce).
    challenge: Option<(String, String)>,
}

/// A response, reduced to what the phones need.
#[derive(Debug)]
struct Answer {
    phone: Option<usize>,
    probe: Option<u64>,
    cseq: u32,
    status: u16,
    challenge: Option<(String, String)>,
    retry_after: Option<u64>,
    granted: Option<u32>,
}

/// Runs the storm and reports.
pub async fn run(options: &StormOptions) -> anyhow::Result<StormReport> {
    let accounts = options.population.accounts();
    let n = accounts.len();
    let bind: SocketAddr = if options.target.is_ipv6() {
        "[::1]:0".parse()?
    } else {
        "127.0.0.1:0".parse()?
    };
    let mut sockets = Vec::new();
    for _ in 0..options.sockets.max(1) {
        let s = socket2_bind(bind)?;
        sockets.push(Arc::new(s));
    }
    let probe_socket = Arc::new(UdpSocket::bind(bind).await?);
    let run_id = format!("{:08x}", rand::random::<u32>());
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
    let mut readers = Vec::new();
    for s in sockets.iter().chain(std::iter::once(&probe_socket)) {
        let (s, tx, run_id) = (s.clone(), answers_tx.clone(), run_id.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, _)) = s.recv_from(&mut buf).await {
                if let Some(a) = reduce(&buf[..len], &run_id)
                    && tx.send(a).is_err()
                {
                    return;
                }
            }
        }));
    }
    drop(answers_tx);
    let locals: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?;
    let bar = options.progress.then(|| {
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} registered {msg}",
            )
            .expect("a fixed template")
            .progress_chars("=> "),
        );
        bar
    });

    let start = Instant::now();
    let mut phones: Vec<PhoneState> = (0..n)
        .map(|i| PhoneState {
            stage: Stage::Idle,
            cseq: 0,
            generation: 0,
            started: None,
            tx_started: start,
            interval: T1,
            last: Bytes::new(),
            socket: i % locals.len(),
            challenge: None,
        })
        .collect();
    // (when, phone, generation)
    let mut timers: BinaryHeap<Reverse<(Instant, usize, u32)>> = BinaryHeap::new();
    for i in 0..n {
        let at = match options.rate {
            Some(r) if r > 0.0 => start + Duration::from_secs_f64(i as f64 / r),
            _ => start,
        };
        timers.push(Reverse((at, i, 0)));
    }
    let mut report = StormReport {
        phones: n,
        tenants: options.population.tenants,
        registered: 0,
        failed: 0,
        failures: BTreeMap::new(),
        completion_secs: 0.0,
        requests_sent: 0,
        retransmissions: 0,
        responses: BTreeMap::new(),
        registrations_per_sec: 0.0,
        register_p50_ms: 0.0,
        register_p99_ms: 0.0,
        register_max_ms: 0.0,
        probes_sent: 0,
        probes_answered: 0,
        probe_max_ms: 0.0,
        refresh: RefreshSpread::default(),
    };
    let mut setup_ms = Vec::with_capacity(n);
    let mut refresh_offsets = Vec::with_capacity(n);
    let mut granted_all = Vec::with_capacity(n);
    let mut last_done = start;
    let mut probes: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut next_probe = start;
    let mut probe_seq = 0u64;
    let deadline = start + options.deadline;
    let mut finished = 0usize;

    let ctx = Ctx {
        expires: options.expires,
        run_id: &run_id,
        locals: &locals,
    };
    while finished < n {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Everything due, in order.
        while let Some(Reverse((at, i, generation))) = timers.peek().copied() {
            if at > now {
                break;
            }
            timers.pop();
            let p = &mut phones[i];
            if generation != p.generation {
                continue;
            }
            match p.stage {
                Stage::Idle => {
                    p.started = Some(now);
                    new_transaction(p, i, false, &accounts[i], &ctx, now);
                    send(&sockets, p, options.target, &mut report).await;
                    timers.push(Reverse((now + p.interval, i, p.generation)));
                }
                Stage::Backoff { authorized } => {
                    new_transaction(p, i, authorized, &accounts[i], &ctx, now);
                    send(&sockets, p, options.target, &mut report).await;
                    timers.push(Reverse((now + p.interval, i, p.generation)));
                }
                Stage::Sent { .. } => {
                    if now.duration_since(p.tx_started) >= TIMER_F {
                        p.stage = Stage::Failed;
                        p.generation += 1;
                        finished += 1;
                        report.failed += 1;
                        *report.failures.entry("timeout".into()).or_default() += 1;
                        continue;
                    }
                    report.retransmissions += 1;
                    send(&sockets, p, options.target, &mut report).await;
                    p.interval = (p.interval * 2).min(T2);
                    timers.push(Reverse((now + p.interval, i, p.generation)));
                }
                Stage::Done | Stage::Failed => {}
            }
        }
        if now >= next_probe {
            probe_seq += 1;
            let text = format!(
                "OPTIONS sip:probe@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {l};rport;branch=z9hG4bKp{run_id}-{probe_seq}\r\nMax-Forwards: 70\r\nTo: <sip:probe@{t}>\r\nFrom: <sip:probe@storm.invalid>;tag=p{run_id}\r\nCall-ID: probe-{run_id}-{probe_seq}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                t = options.target,
                l = probe_socket.local_addr()?,
            );
            if probe_socket
                .send_to(text.as_bytes(), options.target)
                .await
                .is_ok()
            {
                report.probes_sent += 1;
                probes.insert(probe_seq, now);
            }
            next_probe = now + PROBE_EVERY;
        }
        let wake = timers
            .peek()
            .map_or(next_probe, |Reverse((at, _, _))| (*at).min(next_probe))
            .min(deadline);
        let answer = tokio::select! {
            a = answers.recv() => a,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => continue,
        };
        let Some(answer) = answer else { break };
        let now = Instant::now();
        if let Some(seq) = answer.probe {
            if let Some(sent) = probes.remove(&seq) {
                report.probes_answered += 1;
                report.probe_max_ms = report
                    .probe_max_ms
                    .max(now.duration_since(sent).as_secs_f64() * 1000.0);
            }
            continue;
        }
        let Some(i) = answer.phone.filter(|i| *i < n) else {
            continue;
        };
        *report.responses.entry(answer.status).or_default() += 1;
        let p = &mut phones[i];
        let Stage::Sent { authorized } = p.stage else {
            continue;
        };
        if answer.cseq != p.cseq || answer.status < 200 {
            continue;
        }
        p.generation += 1;
        match answer.status {
            200..=299 => {
                p.stage = Stage::Done;
                finished += 1;
                report.registered += 1;
                last_done = now;
                let began = p.started.unwrap_or(start);
                setup_ms.push(now.duration_since(began).as_secs_f64() * 1000.0);
                let granted = answer.granted.unwrap_or(options.expires);
                granted_all.push(granted);
                refresh_offsets.push(now.duration_since(start).as_secs() + u64::from(granted));
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
            401 | 407
                if answer.challenge.is_some()
                    && !(authorized && p.challenge == answer.challenge) =>
            {
                p.challenge = answer.challenge;
                new_transaction(p, i, true, &accounts[i], &ctx, now);
                send(&sockets, p, options.target, &mut report).await;
                timers.push(Reverse((now + p.interval, i, p.generation)));
            }
            503 if answer.retry_after.is_some() => {
                p.stage = Stage::Backoff { authorized };
                let wait = Duration::from_secs(answer.retry_after.unwrap_or(1));
                timers.push(Reverse((now + wait, i, p.generation)));
            }
            status => {
                p.stage = Stage::Failed;
                finished += 1;
                report.failed += 1;
                *report.failures.entry(status.to_string()).or_default() += 1;
            }
        }
    }
    let unfinished = n - finished;
    if unfinished > 0 {
        report.failed += unfinished;
        *report.failures.entry("timeout".into()).or_default() += unfinished;
    }
    // Answers to the last probes may still be on their way.
    let settle = Instant::now() + Duration::from_millis(300);
    while !probes.is_empty() {
        let left = settle.saturating_duration_since(Instant::now());
        let Ok(Some(a)) = tokio::time::timeout(left, answers.recv()).await else {
            break;
        };
        if let Some(seq) = a.probe
            && let Some(sent) = probes.remove(&seq)
        {
            report.probes_answered += 1;
            report.probe_max_ms = report
                .probe_max_ms
                .max(sent.elapsed().as_secs_f64() * 1000.0);
        }
    }
    for r in readers {
        r.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report.completion_secs = last_done.duration_since(start).as_secs_f64();
    if report.completion_secs > 0.0 {
        report.registrations_per_sec = report.registered as f64 / report.completion_secs;
    }
    setup_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| -> f64 {
        if setup_ms.is_empty() {
            return 0.0;
        }
        setup_ms[((setup_ms.len() - 1) as f64 * q).round() as usize]
    };
    report.register_p50_ms = pct(0.5);
    report.register_p99_ms = pct(0.99);
    report.register_max_ms = setup_ms.last().copied().unwrap_or(0.0);
    report.refresh = RefreshSpread::from_offsets(&refresh_offsets, &granted_all);
    Ok(report)
}

struct Ctx<'a> {
    expires: u32,
    run_id: &'a str,
    locals: &'a [SocketAddr],
}

/// Starts a new REGISTER transaction of phone `i`: CSeq up, new branch, first interval.
fn new_transaction(
    p: &mut PhoneState,
    i: usize,
    authorized: bool,
    account: &PhoneAccount,
    ctx: &Ctx<'_>,
    now: Instant,
) {
    p.cseq += 1;
    p.generation += 1;
    p.interval = T1;
    p.tx_started = now;
    p.stage = Stage::Sent { authorized };
    let local = ctx.locals[p.socket];
    let uri = format!("sip:{}", account.domain);
    let auth = match (&p.challenge, authorized) {
        (Some((realm, nonce)), true) => {
            let h = ha1(Algorithm::Md5, &account.user, realm, &account.password);
            let cnonce = format!("{:08x}", rand::random::<u32>());
            let response = expected_response(
                Algorithm::Md5,
                &h,
                nonce,
                "REGISTER",
                &uri,
                Some(("00000001", &cnonce, "auth")),
            );
            format!(
                "Authorization: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, nc=00000001\r\n",
                account.user
            )
        }
        _ => String::new(),
    };
    let text = format!(
        "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{run}-{i}-{c}\r\nMax-Forwards: 70\r\nTo: <sip:{u}@{d}>\r\nFrom: <sip:{u}@{d}>;tag={run}-{i}\r\nCall-ID: storm-{run}-{i}\r\nCSeq: {c} REGISTER\r\nContact: <sip:{u}@{local};line={i}>\r\nExpires: {e}\r\nUser-Agent: switchyard-bench\r\n{auth}Content-Length: 0\r\n\r\n",
        run = ctx.run_id,
        c = p.cseq,
        u = account.user,
        d = account.domain,
        e = ctx.expires,
    );
    p.last = Bytes::from(text);
}

async fn send(
    sockets: &[Arc<UdpSocket>],
    p: &PhoneState,
    target: SocketAddr,
    report: &mut StormReport,
) {
    let s = &sockets[p.socket];
    // A full send buffer is waited out rather than counted as a loss of the server's.
    let sent = match s.try_send_to(&p.last, target) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            s.send_to(&p.last, target).await.is_ok()
        }
        Err(_) => false,
    };
    if sent {
        report.requests_sent += 1;
    }
}

/// Reads what a phone needs from a response; `None` for anything else.
fn reduce(datagram: &[u8], run_id: &str) -> Option<Answer> {
    let msg = Message::parse_datagram(Bytes::copy_from_slice(datagram)).ok()?;
    let status = msg.status()?;
    let call_id = msg.call_id().ok()?;
    let cseq = msg.cseq().ok()?.seq;
    if let Some(rest) = call_id.strip_prefix("probe-") {
        let seq = rest.strip_prefix(run_id)?.strip_prefix('-')?.parse().ok()?;
        return Some(Answer {
            phone: None,
            probe: Some(seq),
            cseq,
            status,
            challenge: None,
            retry_after: None,
            granted: None,
        });
    }
    let phone = call_id
        .strip_prefix("storm-")?
        .strip_prefix(run_id)?
        .strip_prefix('-')?
        .parse()
        .ok()?;
    let challenge = msg
        .header(HeaderName::WwwAuthenticate)
        .or_else(|| msg.header(HeaderName::ProxyAuthenticate))
        .and_then(|c| Some((quoted_param(c, "realm")?, quoted_param(c, "nonce")?)));
    let retry_after = msg
        .header(HeaderName::RetryAfter)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
    // Our own contact's expiry (the `line` parameter names the phone).
    let line = format!("line={phone}");
    let granted = msg
        .values(HeaderName::Contact)
        .find(|c| c.contains(&line))
        .and_then(|c| {
            let at = c.find("expires=")? + "expires=".len();
            c[at..]
                .split(|ch: char| !ch.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .or_else(|| msg.expires().ok().flatten());
    Some(Answer {
        phone: Some(phone),
        probe: None,
        cseq,
        status,
        challenge,
        retry_after,
        granted,
    })
}

pub(crate) fn quoted_param(header: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = header.find(&key)? + key.len();
    let len = header[start..].find('"')?;
    Some(header[start..start + len].to_owned())
}

/// A UDP socket with large buffers, so the generator's own kernel queues do not lose
/// the server's answers in a burst.
fn socket2_bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let std = std::net::UdpSocket::bind(addr)?;
    std.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(std)?;
    crate::bench::grow_buffers(&socket);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populations_are_deterministic_and_match_the_htable() {
        let p = Population::new(10, 3);
        assert_eq!(p.per_tenant, 4);
        let a = p.accounts();
        assert_eq!(a.len(), 12);
        assert_eq!(a[5].domain, "t0001.storm.test");
        assert_eq!(a[5].user, "1001");
        assert_eq!(a, Population::new(10, 3).accounts());
        let table = p.kamailio_htable();
        let line = table.lines().nth(5).unwrap();
        assert_eq!(
            line,
            format!(
                "1001@t0001.storm.test=>{}",
                ha1(Algorithm::Md5, "1001", "t0001.storm.test", &a[5].password)
            )
        );
    }

    #[test]
    fn refresh_spread_is_flat_for_a_uniform_spread_and_peaked_for_lockstep() {
        let flat: Vec<u64> = (0..1000).map(|i| 100 + i % 100).collect();
        let s = RefreshSpread::from_offsets(&flat, &[3600]);
        assert_eq!(s.window_secs, 100);
        assert!((s.max_over_mean - 1.0).abs() < 1e-9);
        let mut lockstep = vec![3600u64; 990];
        lockstep.extend(3601..3611);
        let s = RefreshSpread::from_offsets(&lockstep, &[3600]);
        assert!(s.max_over_mean > 5.0, "{}", s.max_over_mean);
    }

    #[test]
    fn answers_are_matched_to_phones_and_probes() {
        let r = b"SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx\r\nTo: <sip:1000@t.test>;tag=a\r\nFrom: <sip:1000@t.test>;tag=b\r\nCall-ID: storm-abc-17\r\nCSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"t.test\", nonce=\"n1\", qop=\"auth\"\r\nContent-Length: 0\r\n\r\n";
        let a = reduce(r, "abc").unwrap();
        assert_eq!(a.phone, Some(17));
        assert_eq!(a.status, 401);
        assert_eq!(a.challenge, Some(("t.test".into(), "n1".into())));
        assert!(reduce(r, "other").is_none());
        let ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx\r\nTo: <sip:1000@t.test>;tag=a\r\nFrom: <sip:1000@t.test>;tag=b\r\nCall-ID: storm-abc-17\r\nCSeq: 2 REGISTER\r\nContact: <sip:1000@127.0.0.1:5;line=17>;expires=3333\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(reduce(ok, "abc").unwrap().granted, Some(3333));
        let shed = b"SIP/2.0 503 Overloaded\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx\r\nTo: <sip:1000@t.test>;tag=a\r\nFrom: <sip:1000@t.test>;tag=b\r\nCall-ID: storm-abc-3\r\nCSeq: 2 REGISTER\r\nRetry-After: 7 (overloaded)\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(reduce(shed, "abc").unwrap().retry_after, Some(7));
    }
}
