//! The engine on a virtual clock: inputs in, outputs out, no sockets and no sleeps.

use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_sip::Message;

use super::call::SessionTimer;
use super::setup::{rank, session_timer_of};

fn invite(extra: &str) -> Message {
    let text = format!(
        "INVITE sip:1002@d.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:1001@d.example>;tag=a\r\nTo: <sip:1002@d.example>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    Message::parse_datagram(Bytes::from(text)).unwrap()
}

#[test]
fn session_intervals_below_min_se_are_refused_and_the_refresher_is_honoured() {
    let now = Instant::now();
    assert!(session_timer_of(&invite(""), now).unwrap().is_none());
    assert!(session_timer_of(&invite("Session-Expires: 89\r\n"), now).is_err());
    assert!(session_timer_of(&invite("Session-Expires: soon\r\n"), now).is_err());
    let t = session_timer_of(
        &invite("Session-Expires: 1800\r\nSupported: timer\r\n"),
        now,
    )
    .unwrap()
    .unwrap();
    assert_eq!(t.header(), "1800;refresher=uac");
    assert!(t.caller_supports);
    let uas = session_timer_of(&invite("Session-Expires: 90;refresher=uas\r\n"), now)
        .unwrap()
        .unwrap();
    assert!(!uas.caller_refreshes);
    assert_eq!(uas.header(), "90;refresher=uas");
    let long = session_timer_of(&invite("Session-Expires: 86400\r\n"), now)
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

// --- the engine in a world of its own -------------------------------------------------

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_media_control::{LegStats, Reply, Request, SessionStats};
use switchyard_sip::build::ResponseBuilder;
use switchyard_sip::transaction::TxId;
use switchyard_sip::{HeaderName, Method};
use switchyard_state::Binding;
use switchyard_store::{Cdr, Extension, Tenant, TenantConfig};

use switchyard_sip::seal::{SealKey, Sealed};

use super::setup::hop_peer;
use super::{
    Clock, Engine, EngineSettings, ForwardFor, Lookup, MediaAnswer, Output, ReqId, SipInput,
};
use crate::metrics::CallMetrics;
use crate::routing::{Reroute, Ring, RouteRequest, Routed};

const TENANT: &str = "t1";
const DOMAIN: &str = "t1.example";
const CLUSTER_SECRET: &[u8] = b"engine test cluster";

fn local() -> SocketAddr {
    "127.0.0.1:5080".parse().unwrap()
}

fn edge() -> SocketAddr {
    "127.0.0.1:5070".parse().unwrap()
}

fn extension(number: i64, no_answer_seconds: i64, forward_no_answer: Option<&str>) -> Extension {
    Extension {
        id: format!("ext-{number}"),
        tenant_id: TENANT.into(),
        range_id: "r".into(),
        number,
        display_name: format!("Ext {number}"),
        username: number.to_string(),
        ha1_md5: String::new(),
        ha1_sha256: String::new(),
        voicemail: false,
        max_registrations: 5,
        created_at: 0,
        forward_always: None,
        forward_busy: None,
        forward_no_answer: forward_no_answer.map(str::to_owned),
        no_answer_seconds,
        caller_id: None,
    }
}

fn config() -> Arc<TenantConfig> {
    Arc::new(TenantConfig {
        version: 1,
        tenant: Tenant {
            id: TENANT.into(),
            name: "T1".into(),
            domain: DOMAIN.into(),
            state: "active".into(),
            placement: "shared".into(),
            max_calls: 100,
            calls_per_second: 100,
            max_registrations: 100,
            max_extensions: 100,
            reg_expiry_min: 60,
            reg_expiry_max: 3600,
            reg_expiry_default: 600,
            config_version: 1,
            created_at: 0,
            caller_id: None,
        },
        ranges: Vec::new(),
        extensions: Vec::new(),
        dids: Vec::new(),
        resources: Vec::new(),
    })
}

fn binding(number: i64) -> Binding {
    Binding {
        contact: format!("sip:{number}@127.0.0.1:4{number}"),
        expires_at_ms: i64::MAX,
        flow: Some(format!("<sip:{};lr>", edge())),
        source: format!("127.0.0.1:4{number}"),
        call_id: format!("reg-{number}"),
        cseq: 1,
        path: Vec::new(),
        instance: None,
    }
}

fn phones(number: i64, no_answer_seconds: i64, forward_no_answer: Option<&str>) -> Ring {
    Ring::Phones {
        callee: extension(number, no_answer_seconds, forward_no_answer),
        bindings: vec![binding(number)],
    }
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";

fn parse(bytes: Bytes) -> Message {
    Message::parse_datagram(bytes).expect("the engine's messages parse")
}

fn to_tag(msg: &Message) -> Option<String> {
    msg.header(HeaderName::To)
        .and_then(switchyard_sip::headers::tag_of)
        .map(str::to_owned)
}

/// One caller's side of a call, as the world sees it.
#[derive(Debug, Clone)]
struct Caller {
    tx: TxId,
    invite: String,
    /// The engine's tag in its answers (from the first answer with one).
    tag: Option<String>,
    finals: Vec<u16>,
    /// Leg B's Call-ID (from the routing request).
    leg_b: Option<String>,
    cseq: u32,
    /// Its routing step came back (every such call has a CDR, rung or refused).
    routed: bool,
}

/// The engine with everything around it simulated: media answers at once, BYEs, CANCELs
/// and NOTIFYs are answered `200` (a CANCELled INVITE `487`), lookups wait for the test.
struct World {
    engine: Engine,
    now: Clock,
    next_tx: u64,
    callers: HashMap<String, Caller>,
    /// Requests the engine sent, in order, and whether the world answered them finally.
    sent: Vec<(ReqId, Message, bool)>,
    transmits: Vec<(Instant, Message)>,
    routes: Vec<(String, RouteRequest)>,
    forwards: Vec<(u64, ForwardFor, Reroute, String)>,
    /// Trunk channels the lookups seized: (trunk key, Call-ID).
    seized: Vec<(String, String)>,
    sessions: HashSet<String>,
    cdrs: Vec<Cdr>,
    /// What the media node says a call's legs have been silent for.
    silent_ms: u64,
    /// Every answer the engine gave: (transaction, status).
    answers: Vec<(TxId, u16)>,
    /// Trunk channels given back and leases renewed: (trunk key, Call-ID).
    released: Vec<(String, String)>,
    renewed: Vec<Vec<(String, String)>>,
    /// Takeover: records the engine asked to write, calls it asked to forget, requests
    /// of unknown dialogs it asked to look up.
    persisted: Vec<super::recovery::DialogRecord>,
    forgotten: Vec<(String, String)>,
    recovers: Vec<(TxId, Message)>,
    /// REFERs waiting for another core's call, with the ask.
    claims: Vec<(TxId, Message, super::handoff::HandoffAsk)>,
}

impl World {
    fn new(rtp_timeout: Option<Duration>) -> World {
        World::with(rtp_timeout, false)
    }

    fn with(rtp_timeout: Option<Duration>, recover: bool) -> World {
        World::with_handoff(rtp_timeout, recover, false)
    }

    /// A core of a cluster whose calls spread by Call-ID: records kept, other cores
    /// asked for calls.
    fn clustered() -> World {
        World::with_handoff(None, true, true)
    }

    fn with_handoff(rtp_timeout: Option<Duration>, recover: bool, handoff: bool) -> World {
        let now = Clock {
            at: Instant::now(),
            unix_ms: 1_800_000_000_000,
        };
        World {
            engine: Engine::new(
                EngineSettings {
                    local: local(),
                    rtp_timeout,
                    metrics: Arc::new(CallMetrics::default()),
                    seal: SealKey::new(CLUSTER_SECRET),
                    accepting: Arc::new(std::sync::atomic::AtomicBool::new(true)),
                    recover,
                    handoff,
                },
                now,
            ),
            now,
            next_tx: 1,
            callers: HashMap::new(),
            sent: Vec::new(),
            transmits: Vec::new(),
            routes: Vec::new(),
            forwards: Vec::new(),
            seized: Vec::new(),
            sessions: HashSet::new(),
            cdrs: Vec::new(),
            silent_ms: 0,
            answers: Vec::new(),
            released: Vec::new(),
            renewed: Vec::new(),
            persisted: Vec::new(),
            forgotten: Vec::new(),
            recovers: Vec::new(),
            claims: Vec::new(),
        }
    }

    fn tx(&mut self) -> TxId {
        self.next_tx += 1;
        TxId(self.next_tx)
    }

    fn request(&mut self, text: String) -> TxId {
        let tx = self.tx();
        self.deliver(tx, text);
        tx
    }

    /// A request through the edge as server transaction `tx`.
    fn deliver(&mut self, tx: TxId, text: String) {
        let msg = parse(Bytes::from(text));
        self.engine.handle_sip(
            SipInput::Request {
                tx,
                msg,
                peer: hop_peer(local(), edge()),
            },
            self.now,
        );
        self.settle();
    }

    /// A caller's INVITE (through the edge, which seals it) for `dialled`.
    fn invite(&mut self, call_id: &str, dialled: &str, extra: &str) -> TxId {
        let seal = SealKey::new(CLUSTER_SECRET).seal(
            &Sealed {
                call_id,
                cseq: "1 INVITE",
                tenant: TENANT,
                caller: "1001",
                carrier: "",
            },
            self.now.unix_ms as u64 / 1000,
        );
        self.invite_sealed(call_id, dialled, &format!("{extra}X-Sy-Seal: {seal}\r\n"))
    }

    /// An INVITE with the edge's headers and whatever seal `extra` brings (or none).
    fn invite_sealed(&mut self, call_id: &str, dialled: &str, extra: &str) -> TxId {
        let text = format!(
            "INVITE sip:{dialled}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {edge};branch=z9hG4bK-{call_id}\r\nRecord-Route: <sip:{edge};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{DOMAIN}>;tag=a-{call_id}\r\nTo: <sip:{dialled}@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@127.0.0.1:41001>\r\nX-Sy-Tenant: {TENANT}\r\nX-Sy-Caller: 1001\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
            SDP.len(),
            edge = edge(),
        );
        let tx = self.tx();
        self.callers.insert(
            call_id.to_owned(),
            Caller {
                tx,
                invite: text.clone(),
                tag: None,
                finals: Vec::new(),
                leg_b: None,
                cseq: 1,
                routed: false,
            },
        );
        self.deliver(tx, text);
        tx
    }

    /// Answers the routing step of `call_id` (its media session now exists).
    fn route(&mut self, call_id: &str, ring: Ring) {
        let i = self
            .routes
            .iter()
            .position(|(c, _)| c == call_id)
            .expect("a routing step asked for");
        let (call_id, request) = self.routes.remove(i);
        self.sessions.insert(request.session.clone());
        if let Ring::Trunk { leg, .. } = &ring {
            self.seized
                .push((format!("trunk:{}", leg.trunk_id), request.leg_b.clone()));
        }
        if let Some(c) = self.callers.get_mut(&call_id) {
            c.routed = true;
        }
        let routed = Routed {
            config: config(),
            caller_ext: Some(extension(1001, 20, None)),
            offer_b: SDP.into(),
            ring,
            ring_seconds: None,
            hunt: Vec::new(),
            fallback: None,
            presented: None,
        };
        self.engine.handle_lookup(
            Lookup::Routed {
                call_id,
                request,
                outcome: Box::new(Ok(routed)),
            },
            self.now,
        );
        self.settle();
    }

    /// Answers the oldest forward lookup.
    fn forward(&mut self, ring: Ring) {
        let (key, purpose, _, leg_b) = self.forwards.remove(0);
        if let Ring::Trunk { leg, .. } = &ring {
            self.seized.push((format!("trunk:{}", leg.trunk_id), leg_b));
        }
        self.engine.handle_lookup(
            Lookup::Forwarded {
                key,
                purpose,
                outcome: Ok(ring),
            },
            self.now,
        );
        self.settle();
    }

    /// The INVITEs the engine sent that no final answer reached, with their ids.
    fn ringing(&self) -> Vec<(ReqId, Message)> {
        self.sent
            .iter()
            .filter(|(_, m, done)| !done && m.method() == Some(&Method::Invite))
            .map(|(r, m, _)| (*r, m.clone()))
            .collect()
    }

    /// The engine's INVITE `req` answered with `status`.
    fn answer_fork(&mut self, req: ReqId, status: u16) {
        let request = self
            .sent
            .iter()
            .find(|(r, _, _)| *r == req)
            .map(|(_, m, _)| m.clone())
            .expect("a request of the engine");
        let mut b = ResponseBuilder::for_request(&request, status, "Answer", "b-tag");
        if (200..300).contains(&status) {
            b = b
                .header("Contact", "<sip:1002@127.0.0.1:41002>")
                .body("application/sdp", Bytes::from(SDP));
        }
        let msg = parse(b.build());
        if status >= 200 {
            for s in self.sent.iter_mut().filter(|(r, _, _)| *r == req) {
                s.2 = true;
            }
        }
        self.engine
            .handle_sip(SipInput::Response { req, msg }, self.now);
        self.settle();
    }

    /// An in-dialog request from the caller of `call_id` (after its `200`).
    fn caller_sends(&mut self, call_id: &str, method: &str, extra: &str) -> Option<TxId> {
        let text = self.caller_text(call_id, method, extra)?;
        if method == "ACK" {
            let msg = parse(Bytes::from(text));
            self.engine.handle_sip(SipInput::Ack { msg }, self.now);
            self.settle();
            return None;
        }
        Some(self.request(text))
    }

    /// The shell's answer to the last lookup of an unknown dialog: `record` (with the
    /// tenant's configuration) or none.
    fn recovered(&mut self, record: Option<super::recovery::DialogRecord>) {
        let (tx, msg) = self.recovers.pop().expect("a lookup of an unknown dialog");
        self.engine.handle_lookup(
            super::Lookup::Recovered {
                tx,
                msg,
                record: record.map(|r| Box::new((r, config()))),
            },
            self.now,
        );
        self.settle();
    }

    /// The shell's answer to the last ask for another core's call: the call `given`
    /// (with the tenant's configuration) or none.
    fn claimed(&mut self, given: Option<super::recovery::DialogRecord>) {
        let (tx, msg, _) = self.claims.pop().expect("an ask for another core's call");
        self.engine.handle_lookup(
            super::Lookup::Claimed {
                tx,
                msg,
                record: given.map(|r| Box::new((r, config()))),
            },
            self.now,
        );
        self.settle();
    }

    /// The text of the caller's next in-dialog request.
    fn caller_text(&mut self, call_id: &str, method: &str, extra: &str) -> Option<String> {
        let caller = self.callers.get_mut(call_id)?;
        let tag = caller.tag.clone()?;
        let seq = if method == "ACK" {
            1
        } else {
            caller.cseq += 1;
            caller.cseq
        };
        let text = format!(
            "{method} sip:sy@{local} SIP/2.0\r\nVia: SIP/2.0/UDP {edge};branch=z9hG4bK-{call_id}-{method}-{seq}\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{DOMAIN}>;tag=a-{call_id}\r\nTo: <sip:1002@{DOMAIN}>;tag={tag}\r\nCall-ID: {call_id}\r\nCSeq: {seq} {method}\r\n{extra}{body}",
            local = local(),
            edge = edge(),
            body = if method == "INVITE" {
                format!(
                    "Contact: <sip:1001@127.0.0.1:41001>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
                    SDP.len()
                )
            } else {
                "Content-Length: 0\r\n\r\n".to_owned()
            },
        );
        Some(text)
    }

    fn cancel(&mut self, call_id: &str) -> Option<TxId> {
        let caller = self.callers.get(call_id)?;
        let invite = parse(Bytes::from(caller.invite.clone()));
        let text = format!(
            "CANCEL {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
            invite.request_uri_str().unwrap(),
            invite.header(HeaderName::Via).unwrap(),
            invite.header(HeaderName::From).unwrap(),
            invite.header(HeaderName::To).unwrap(),
        );
        Some(self.request(text))
    }

    /// Moves the clock on by `d`, firing what falls due on the way (each timer at its
    /// own instant, as the shell would).
    fn advance(&mut self, d: Duration) {
        let until = self.now.at + d;
        while let Some(at) = self.engine.poll_timeout().filter(|at| *at <= until) {
            let step = at.saturating_duration_since(self.now.at);
            self.now = self.now.after(step);
            self.engine.handle_timeout(self.now);
            self.settle();
        }
        let rest = until.saturating_duration_since(self.now.at);
        self.now = self.now.after(rest);
    }

    /// Runs the engine's outputs until it has nothing more to say.
    fn settle(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Respond { tx, bytes, .. } => {
                    let msg = parse(bytes);
                    let status = msg.status().unwrap_or(0);
                    self.answers.push((tx, status));
                    let call_id = msg.call_id().unwrap_or_default().to_owned();
                    if let Some(c) = self.callers.get_mut(&call_id).filter(|c| c.tx == tx) {
                        if c.tag.is_none() && status > 100 {
                            c.tag = to_tag(&msg);
                        }
                        if status >= 200 {
                            c.finals.push(status);
                        }
                    }
                }
                Output::Send { req, request, .. } => {
                    let method = request.method().cloned();
                    self.sent.push((req, request.clone(), false));
                    match method {
                        Some(Method::Invite) => {}
                        Some(Method::Cancel) => {
                            // The CANCELled INVITE ends with 487, then the CANCEL's 200.
                            let invite = self.sent.iter().find(|(_, m, done)| {
                                !done
                                    && m.method() == Some(&Method::Invite)
                                    && m.call_id().ok() == request.call_id().ok()
                                    && m.top_via().ok().and_then(|v| v.branch().map(str::to_owned))
                                        == request
                                            .top_via()
                                            .ok()
                                            .and_then(|v| v.branch().map(str::to_owned))
                            });
                            if let Some((invite_req, _, _)) = invite {
                                let invite_req = *invite_req;
                                self.reply_final(req, &request, 200);
                                self.answer_fork(invite_req, 487);
                            } else {
                                self.reply_final(req, &request, 200);
                            }
                        }
                        _ => self.reply_final(req, &request, 200),
                    }
                }
                Output::Transmit { bytes, .. } => {
                    let msg = parse(bytes);
                    self.transmits.push((self.now.at, msg));
                }
                Output::Route {
                    call_id, request, ..
                } => {
                    if let Some(c) = self.callers.get_mut(&call_id) {
                        c.leg_b = Some(request.leg_b.clone());
                    }
                    self.routes.push((call_id, request));
                }
                Output::Forward {
                    key,
                    purpose,
                    target,
                    release,
                    leg_b,
                    ..
                } => {
                    // The shell gives the channel back before it looks the target up.
                    if let Some((k, m)) = release {
                        self.released.push((k.as_str().to_owned(), m));
                    }
                    self.forwards.push((key, purpose, target, leg_b))
                }
                Output::Media { job, request } => {
                    let reply = match request {
                        Request::Offer { .. } | Request::Answer { .. } => {
                            Ok(Reply::Sdp { sdp: SDP.into() })
                        }
                        Request::Stats { .. } => Ok(Reply::Stats {
                            stats: SessionStats {
                                a: LegStats {
                                    silent_ms: self.silent_ms,
                                    ..Default::default()
                                },
                                b: LegStats::default(),
                            },
                        }),
                        Request::Destroy { session } => {
                            self.sessions.remove(&session);
                            Ok(Reply::Stats {
                                stats: SessionStats::default(),
                            })
                        }
                        Request::Create { .. } => Ok(Reply::Created),
                        Request::Ping => panic!("the engine never pings media nodes"),
                    };
                    if let Some(job) = job {
                        self.engine
                            .handle_media(MediaAnswer { job, reply }, self.now);
                    }
                }
                Output::ReleaseChannels(held) => self
                    .released
                    .extend(held.into_iter().map(|(k, m)| (k.as_str().to_owned(), m))),
                Output::RenewChannels { held, .. } => self.renewed.push(
                    held.into_iter()
                        .map(|(k, m)| (k.as_str().to_owned(), m))
                        .collect(),
                ),
                Output::Cdr(cdr) => self.cdrs.push(cdr),
                Output::Persist(record) => self.persisted.push(*record),
                Output::Forget { a, b } => self.forgotten.push((a, b)),
                Output::Recover { tx, msg, .. } => self.recovers.push((tx, msg)),
                Output::Claim { tx, msg, ask } => self.claims.push((tx, msg, ask)),
            }
        }
    }

    /// A final `status` to the engine's request `req` (a non-INVITE), and its end.
    fn reply_final(&mut self, req: ReqId, request: &Message, status: u16) {
        for s in self.sent.iter_mut().filter(|(r, _, _)| *r == req) {
            s.2 = true;
        }
        let msg = parse(ResponseBuilder::for_request(request, status, "OK", "x").build());
        self.engine
            .handle_sip(SipInput::Response { req, msg }, self.now);
        self.engine.handle_sip(SipInput::Ended { req }, self.now);
    }

    fn sent_methods(&self, method: Method) -> Vec<Message> {
        self.sent
            .iter()
            .filter(|(_, m, _)| m.method() == Some(&method))
            .map(|(_, m, _)| m.clone())
            .collect()
    }

    /// A call from 1001 to 1002, answered; `ack`: the caller ACKs the `200`.
    fn answered_call(&mut self, call_id: &str, extra: &str, ack: bool) {
        self.invite(call_id, "1002", extra);
        self.route(call_id, phones(1002, 20, None));
        let (fork, _) = self.ringing().pop().expect("leg B rings");
        self.answer_fork(fork, 180);
        self.answer_fork(fork, 200);
        assert_eq!(
            self.callers[call_id].finals,
            vec![200],
            "the caller is answered"
        );
        if ack {
            self.caller_sends(call_id, "ACK", "");
        }
    }
}

#[test]
fn a_2xx_is_retransmitted_until_its_ack_and_a_call_never_acked_is_hung_up() {
    let mut w = World::new(None);
    w.answered_call("acked", "", false);
    let start = w.now.at;
    w.advance(Duration::from_millis(1600));
    let acked_resends = w
        .transmits
        .iter()
        .filter(|(_, m)| m.status() == Some(200))
        .count();
    assert_eq!(acked_resends, 2, "at 0.5 s and 1.5 s");
    w.caller_sends("acked", "ACK", "");
    w.advance(Duration::from_secs(60));
    let resends: Vec<Duration> = w
        .transmits
        .iter()
        .filter(|(_, m)| m.status() == Some(200))
        .map(|(at, _)| *at - start)
        .collect();
    assert_eq!(resends.len(), 2, "none after the ACK: {resends:?}");
    assert!(w.sent_methods(Method::Bye).is_empty(), "the call goes on");

    // RFC 3261 §13.3.1.4: T1 doubling to T2, for 64*T1; then the call is over.
    let mut w = World::new(None);
    w.answered_call("never-acked", "", false);
    let start = w.now.at;
    w.advance(Duration::from_secs(40));
    let resends: Vec<f64> = w
        .transmits
        .iter()
        .filter(|(_, m)| m.status() == Some(200))
        .map(|(at, _)| (*at - start).as_secs_f64())
        .collect();
    assert_eq!(
        resends,
        vec![0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    let byes = w.sent_methods(Method::Bye);
    assert_eq!(byes.len(), 2, "both legs hung up");
    assert_eq!(w.cdrs.len(), 1);
    assert_eq!(w.cdrs[0].hangup_side.as_deref(), Some("no-ack"));
    assert!(w.engine.idle() && w.sessions.is_empty());
}

#[test]
fn a_call_answered_on_one_engine_is_carried_on_by_another_from_its_record() {
    let mut first = World::with(None, true);
    first.answered_call("c1", "", true);
    let record = first
        .persisted
        .last()
        .cloned()
        .expect("a record once answered");
    assert_eq!(
        (record.a.call_id.as_str(), record.tenant_id.as_str()),
        ("c1", TENANT)
    );
    let (b_cseq, b_call_id) = (record.b.cseq, record.b.call_id.clone());
    // The first engine is gone; the caller's BYE reaches another one.
    let mut second = World::with(None, true);
    let bye = first.caller_text("c1", "BYE", "").unwrap();
    let tx = second.request(bye);
    let (recover_tx, msg) = second
        .recovers
        .pop()
        .expect("an unknown dialog is looked up");
    assert_eq!(recover_tx, tx);
    assert!(
        second.answers.is_empty(),
        "no 481 while the record is looked up"
    );
    second.recovers.push((recover_tx, msg));
    second.recovered(Some(record));
    assert_eq!(
        second.answers,
        vec![(tx, 200)],
        "the caller's BYE is answered"
    );
    let byes = second.sent_methods(Method::Bye);
    assert_eq!(byes.len(), 1, "the callee is hung up");
    assert!(
        byes[0].cseq().unwrap().seq > b_cseq,
        "its CSeq moves past the old owner's"
    );
    assert_eq!(second.cdrs.len(), 1);
    assert_eq!(second.cdrs[0].disposition, "answered");
    assert_eq!(second.forgotten, vec![("c1".to_owned(), b_call_id)]);
    // Without a record, the request of an unknown dialog gets 481 as before.
    let mut third = World::with(None, true);
    let tx = third.request(first.caller_text("c1", "BYE", "").unwrap());
    third.recovered(None);
    assert_eq!(third.answers, vec![(tx, 481)]);
}

/// A REFER from the caller of `call_id` that replaces the dialog `replaced` (Call-ID, the
/// transferor's tag, the other side's tag).
fn attended_refer(w: &mut World, call_id: &str, replaced: (&str, &str, &str)) -> TxId {
    let (replaced_id, from_tag, to_tag) = replaced;
    let refer_to = format!(
        "Refer-To: <sip:1002@{DOMAIN}?Replaces={replaced_id}%3Bto-tag%3D{to_tag}%3Bfrom-tag%3D{from_tag}>\r\n"
    );
    w.caller_sends(call_id, "REFER", &refer_to)
        .expect("the caller's REFER")
}

/// Two cores: `holder` with the answered call c1 (its record returned), `here` with the
/// answered call c2, whose caller refers it to replace c1 (the REFER's transaction).
fn consultation_on_another_core() -> (World, World, super::recovery::DialogRecord, TxId) {
    let mut holder = World::clustered();
    holder.answered_call("c1", "", true);
    let record = holder.persisted.last().cloned().expect("c1's record");
    let core_tag = switchyard_sip::headers::tag_of(&record.a.local)
        .unwrap()
        .to_owned();
    let mut here = World::clustered();
    here.answered_call("c2", "", true);
    let refer = attended_refer(&mut here, "c2", ("c1", "a-c1", &core_tag));
    (holder, here, record, refer)
}

#[test]
fn an_attended_transfer_takes_the_call_it_replaces_from_the_core_that_holds_it() {
    use super::handoff::Kept;
    // The consultation call c1 lives on one core, the call the REFER comes in on (c2)
    // on another.
    let (mut holder, mut here, record, refer) = consultation_on_another_core();
    assert!(
        here.answers.iter().all(|(tx, _)| *tx != refer),
        "no answer yet"
    );
    let ask = here
        .claims
        .last()
        .map(|(_, _, a)| a.clone())
        .expect("asked");
    assert_eq!(
        (ask.call_id.as_str(), ask.tenant_id.as_str()),
        ("c1", TENANT)
    );
    // The holder gives nothing to another tenant, to other tags, or once the asker's
    // patience is over.
    let mut stranger = ask.clone();
    stranger.tenant_id = "t2".into();
    assert_eq!(
        holder.engine.hand_over(&stranger, holder.now),
        Err(Kept::NotHere)
    );
    let mut forged = ask.clone();
    forged.tags[0] = "guessed".into();
    assert_eq!(
        holder.engine.hand_over(&forged, holder.now),
        Err(Kept::NotHere)
    );
    let mut late = ask.clone();
    late.deadline_ms = holder.now.unix_ms - 1;
    assert_eq!(
        holder.engine.hand_over(&late, holder.now),
        Err(Kept::TooLate)
    );
    // A call with a re-INVITE in flight is not quiet.
    holder.caller_sends("c1", "INVITE", "");
    assert_eq!(holder.engine.hand_over(&ask, holder.now), Err(Kept::Busy));
    let reinvite = holder.sent_methods(Method::Invite).pop().unwrap();
    let req = holder
        .sent
        .iter()
        .rev()
        .find(|(_, m, _)| m.cseq().ok() == reinvite.cseq().ok())
        .map(|(r, _, _)| *r)
        .unwrap();
    let ok = parse(
        ResponseBuilder::for_request(&reinvite, 200, "OK", "x")
            .body("application/sdp", SDP)
            .build(),
    );
    holder
        .engine
        .handle_sip(SipInput::Response { req, msg: ok }, holder.now);
    holder
        .engine
        .handle_sip(SipInput::Ended { req }, holder.now);
    holder.settle();
    assert_eq!(holder.answers.last().map(|a| a.1), Some(200));
    let ack = holder.caller_text("c1", "ACK", "").unwrap();
    let ack = parse(Bytes::from(ack.replace("CSeq: 1 ACK", "CSeq: 2 ACK")));
    holder
        .engine
        .handle_sip(SipInput::Ack { msg: ack }, holder.now);
    holder.settle();
    // Quiet again: handed over without a word to either phone.
    let (sent, cdrs) = (holder.sent.len(), holder.cdrs.len());
    let given = holder.engine.hand_over(&ask, holder.now).expect("given");
    holder.settle();
    assert_eq!(
        (given.owner, given.handed_from.clone()),
        (ask.claimant, vec![local()])
    );
    assert_eq!(holder.sent.len(), sent, "no BYE, no re-INVITE");
    assert_eq!(
        holder.cdrs.len(),
        cdrs,
        "no CDR: the call goes on elsewhere"
    );
    assert!(holder.sessions.contains("c1"), "its media session stays");
    assert!(holder.forgotten.is_empty(), "its record stays");
    assert!(holder.engine.idle());
    // The asker adopts it and the transfer goes on: 202, and the other party of c1 is
    // re-INVITEd onto c2.
    here.claimed(Some(given.clone()));
    assert!(here.answers.contains(&(refer, 202)), "{:?}", here.answers);
    let onto = here
        .sent_methods(Method::Invite)
        .pop()
        .expect("a re-INVITE");
    assert_eq!(onto.call_id().unwrap(), record.b.call_id);
    // A request of c1 that still reaches the holder finds the call handed on: 481, and
    // the call is not taken back from its record.
    let bye = holder.caller_text("c1", "BYE", "").unwrap();
    let tx = holder.request(bye);
    holder.recovered(Some(given));
    assert_eq!(holder.answers.last(), Some(&(tx, 481)));
    assert!(holder.engine.idle() && holder.cdrs.len() == cdrs);
}

#[test]
fn a_call_handed_to_a_core_that_stops_meanwhile_is_hung_up_there() {
    let (mut holder, mut here, _, _) = consultation_on_another_core();
    let ask = here
        .claims
        .last()
        .map(|(_, _, a)| a.clone())
        .expect("asked");
    let given = holder.engine.hand_over(&ask, holder.now).expect("given");
    here.engine.shutdown(here.now);
    here.settle();
    let byes = here.sent_methods(Method::Bye).len();
    here.claimed(Some(given.clone()));
    let after = here.sent_methods(Method::Bye);
    assert_eq!(
        after.len(),
        byes + 2,
        "both legs of the handed call hung up"
    );
    assert!(
        after
            .iter()
            .any(|b| b.call_id().unwrap() == given.b.call_id)
    );
    assert_eq!(here.cdrs.len(), 2, "a CDR for each call");
}

#[test]
fn an_attended_transfer_whose_call_no_core_gives_is_refused_once() {
    let mut here = World::clustered();
    here.answered_call("c2", "", true);
    let refer = attended_refer(&mut here, "c2", ("c9", "a-c9", "x"));
    assert_eq!(here.claims.len(), 1);
    here.claimed(None);
    assert_eq!(here.answers.last(), Some(&(refer, 481)));
    assert!(here.claims.is_empty(), "asked once");
    here.caller_sends("c2", "BYE", "");
    assert!(here.engine.idle(), "{:?}", here.engine);
}

#[test]
fn a_taken_over_call_keeps_its_session_timer_refreshes_are_answered_and_lapses_end_it() {
    let mut first = World::with(None, true);
    first.answered_call("c1", "Session-Expires: 90\r\nSupported: timer\r\n", true);
    let record = first.persisted.last().cloned().unwrap();
    assert_eq!(record.session_timer, Some((90, true, true)));
    let mut second = World::with(None, true);
    let update = first
        .caller_text("c1", "UPDATE", "Session-Expires: 90;refresher=uac\r\n")
        .unwrap();
    let tx = second.request(update);
    second.recovered(Some(record));
    // The refresh is answered by the new owner, and its timer runs from there.
    assert_eq!(second.answers, vec![(tx, 200)]);
    second.advance(Duration::from_secs(59));
    assert!(
        second.sent_methods(Method::Bye).is_empty(),
        "refreshed 59 s ago"
    );
    second.advance(Duration::from_secs(1));
    assert_eq!(
        second.sent_methods(Method::Bye).len(),
        2,
        "both legs hung up"
    );
    assert_eq!(second.cdrs[0].hangup_side.as_deref(), Some("session-timer"));
}

#[test]
fn a_draining_core_refuses_new_calls_while_its_calls_go_on_to_their_end() {
    use std::sync::atomic::Ordering;
    let mut w = World::new(None);
    w.answered_call("before", "", true);
    w.engine.accepting.store(false, Ordering::Relaxed);
    w.invite("during", "1002", "");
    assert_eq!(w.callers["during"].finals, vec![503]);
    assert!(w.routes.is_empty(), "not routed");
    // The call in progress is not touched, and ends when its caller hangs up.
    w.advance(Duration::from_secs(120));
    assert!(
        w.sent_methods(Method::Bye).is_empty(),
        "nobody hung up the call"
    );
    w.caller_sends("before", "BYE", "");
    assert_eq!(
        w.sent_methods(Method::Bye).len(),
        1,
        "the BYE goes on to leg B"
    );
    w.engine.accepting.store(true, Ordering::Relaxed);
    w.invite("after", "1002", "");
    assert!(w.callers["after"].finals.is_empty());
    assert_eq!(w.routes.len(), 1, "routed again once resumed");
}

#[test]
fn edge_headers_count_only_under_a_seal_of_this_cluster_for_this_request() {
    let mut w = World::new(None);
    let now_secs = w.now.unix_ms as u64 / 1000;
    let seal = |secret: &[u8], call_id: &str, caller: &str, at: u64| {
        SealKey::new(secret).seal(
            &Sealed {
                call_id,
                cseq: "1 INVITE",
                tenant: TENANT,
                caller,
                carrier: "",
            },
            at,
        )
    };
    for (call_id, extra) in [
        ("none", String::new()),
        ("garbage", "X-Sy-Seal: 123.abc\r\n".to_owned()),
        (
            "other-cluster",
            format!(
                "X-Sy-Seal: {}\r\n",
                seal(b"another cluster", "other-cluster", "1001", now_secs)
            ),
        ),
        (
            "other-call",
            format!(
                "X-Sy-Seal: {}\r\n",
                seal(CLUSTER_SECRET, "c9", "1001", now_secs)
            ),
        ),
        (
            "other-caller",
            format!(
                "X-Sy-Seal: {}\r\n",
                seal(CLUSTER_SECRET, "other-caller", "1002", now_secs)
            ),
        ),
        (
            "replayed",
            format!(
                "X-Sy-Seal: {}\r\n",
                seal(CLUSTER_SECRET, "replayed", "1001", now_secs - 120)
            ),
        ),
    ] {
        w.invite_sealed(call_id, "1002", &extra);
        assert_eq!(w.callers[call_id].finals, vec![403], "{call_id}");
    }
    assert!(
        w.routes.is_empty(),
        "nothing was routed: {:?}",
        w.routes.len()
    );
    // The edge's own seal: routed.
    w.invite("sealed", "1002", "");
    assert!(w.callers["sealed"].finals.is_empty());
    assert_eq!(w.routes.len(), 1);
}

#[test]
fn an_unanswered_call_times_out_on_the_callees_no_answer_time() {
    let mut w = World::new(None);
    w.invite("c1", "1002", "");
    w.route("c1", phones(1002, 15, None));
    let (fork, _) = w.ringing().pop().unwrap();
    w.answer_fork(fork, 180);
    w.advance(Duration::from_millis(14_999));
    assert!(w.sent_methods(Method::Cancel).is_empty(), "still ringing");
    assert!(w.callers["c1"].finals.is_empty());
    w.advance(Duration::from_millis(1));
    assert_eq!(
        w.sent_methods(Method::Cancel).len(),
        1,
        "the fork is CANCELled"
    );
    assert_eq!(w.callers["c1"].finals, vec![408]);
    assert_eq!(w.cdrs.len(), 1);
    assert_eq!(w.cdrs[0].disposition, "no-answer");
    assert!(w.engine.idle() && w.sessions.is_empty());
}

#[test]
fn an_unanswered_call_follows_the_forward_on_no_answer() {
    let mut w = World::new(None);
    w.invite("c1", "1002", "");
    w.route("c1", phones(1002, 5, Some("1003")));
    let (first, _) = w.ringing().pop().unwrap();
    w.advance(Duration::from_secs(5));
    assert_eq!(
        w.sent_methods(Method::Cancel).len(),
        1,
        "1002 stops ringing"
    );
    assert!(w.callers["c1"].finals.is_empty(), "the caller waits");
    let (_, _, target, _) = w
        .forwards
        .first()
        .cloned()
        .expect("the forward is looked up");
    assert_eq!(target, Reroute::Dialled("1003".into()));
    w.forward(phones(1003, 20, None));
    let ringing = w.ringing();
    assert_eq!(ringing.len(), 1, "1003 rings");
    assert_ne!(ringing[0].0, first);
    assert!(ringing[0].1.request_uri_str().unwrap().contains("1003"));
    // The first ringing's timer is not the forward's: 1003 rings its own 20 s.
    w.advance(Duration::from_secs(19));
    assert!(w.callers["c1"].finals.is_empty());
    w.answer_fork(ringing[0].0, 200);
    assert_eq!(w.callers["c1"].finals, vec![200]);
    w.caller_sends("c1", "BYE", "");
    let cdr = &w.cdrs[0];
    assert_eq!(cdr.disposition, "answered");
    assert!(cdr.legs.contains("forward-no-answer"), "{}", cdr.legs);
    assert!(w.engine.idle() && w.sessions.is_empty());
}

#[test]
fn a_session_the_caller_stops_refreshing_is_hung_up_before_its_interval_ends() {
    let mut w = World::new(None);
    w.answered_call("c1", "Session-Expires: 90\r\nSupported: timer\r\n", true);
    // Refreshed at 50 s: the timer starts again.
    w.advance(Duration::from_secs(50));
    let update = w.caller_sends("c1", "UPDATE", "Session-Expires: 90;refresher=uac\r\n");
    assert!(update.is_some());
    w.advance(Duration::from_secs(59));
    assert!(w.sent_methods(Method::Bye).is_empty(), "refreshed 59 s ago");
    // RFC 4028 §10: 90 - min(32, 30) = 60 s after the last refresh.
    w.advance(Duration::from_secs(1));
    assert_eq!(w.sent_methods(Method::Bye).len(), 2, "both legs hung up");
    assert_eq!(w.cdrs[0].hangup_side.as_deref(), Some("session-timer"));
    assert!(w.engine.idle() && w.sessions.is_empty());
}

#[test]
fn when_the_caller_asks_us_to_refresh_we_send_updates_at_half_the_interval() {
    let mut w = World::new(None);
    w.answered_call(
        "c1",
        "Session-Expires: 120;refresher=uas\r\nSupported: timer\r\n",
        true,
    );
    w.advance(Duration::from_secs(59));
    assert!(w.sent_methods(Method::Update).is_empty());
    w.advance(Duration::from_secs(1));
    assert_eq!(w.sent_methods(Method::Update).len(), 1, "at 60 s");
    w.advance(Duration::from_secs(60));
    assert_eq!(w.sent_methods(Method::Update).len(), 2, "and every 60 s");
    assert!(w.sent_methods(Method::Bye).is_empty());
}

#[test]
fn a_call_whose_media_stops_is_hung_up_on_the_next_check() {
    let mut w = World::new(Some(Duration::from_secs(10)));
    w.answered_call("c1", "", true);
    w.advance(Duration::from_secs(30));
    assert!(w.sent_methods(Method::Bye).is_empty(), "RTP flows");
    w.silent_ms = 10_001;
    w.advance(Duration::from_millis(2_500));
    assert_eq!(w.sent_methods(Method::Bye).len(), 2);
    assert_eq!(w.cdrs[0].hangup_side.as_deref(), Some("rtp-timeout"));
}

#[test]
fn a_drain_hangs_up_every_call_and_ends_once_they_are_answered() {
    let mut w = World::new(None);
    w.answered_call("up", "", true);
    w.invite("ringing", "1002", "");
    w.route("ringing", phones(1002, 20, None));
    w.invite("routing", "1002", "");
    w.engine.shutdown(w.now);
    w.settle();
    assert_eq!(w.sent_methods(Method::Bye).len(), 2);
    assert_eq!(w.sent_methods(Method::Cancel).len(), 1);
    assert_eq!(w.callers["ringing"].finals, vec![503]);
    assert!(!w.engine.drained(), "a call is still being routed");
    w.route("routing", phones(1002, 20, None));
    assert_eq!(w.callers["routing"].finals, vec![503]);
    assert!(w.engine.drained());
    assert_eq!(
        w.cdrs.len(),
        3,
        "every call has its CDR, the one let go while routed too"
    );
    assert_eq!(w.cdrs[2].hangup_side.as_deref(), Some("shutdown"));
    assert!(w.engine.idle() && w.sessions.is_empty());
    // A new call meanwhile is refused.
    w.invite("late", "1002", "");
    assert_eq!(w.callers["late"].finals, vec![503]);
}

// --- the property: nothing is left behind ----------------------------------------------

use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Call,
    Route(usize),
    Ring(usize),
    Answer(usize),
    Busy(usize),
    NoReply(usize),
    Cancel(usize),
    Ack(usize),
    CallerBye(usize),
    CalleeBye(usize),
    Reinvite(usize),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Call),
        3 => (0..8usize).prop_map(Step::Route),
        2 => (0..8usize).prop_map(Step::Ring),
        3 => (0..8usize).prop_map(Step::Answer),
        1 => (0..8usize).prop_map(Step::Busy),
        1 => (0..8usize).prop_map(Step::NoReply),
        1 => (0..8usize).prop_map(Step::Cancel),
        2 => (0..8usize).prop_map(Step::Ack),
        1 => (0..8usize).prop_map(Step::CallerBye),
        1 => (0..8usize).prop_map(Step::CalleeBye),
        1 => (0..8usize).prop_map(Step::Reinvite),
        2 => (0..40_000u64).prop_map(Step::Wait),
    ]
}

impl World {
    fn call_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.callers.keys().cloned().collect();
        ids.sort();
        ids
    }

    fn pick(&self, i: usize) -> Option<String> {
        let ids = self.call_ids();
        (!ids.is_empty()).then(|| ids[i % ids.len()].clone())
    }

    /// The INVITE forks of call `call_id` still open.
    fn forks_of(&self, call_id: &str) -> Vec<ReqId> {
        let Some(leg_b) = self.callers.get(call_id).and_then(|c| c.leg_b.clone()) else {
            return Vec::new();
        };
        self.ringing()
            .into_iter()
            .filter(|(_, m)| m.call_id().ok() == Some(leg_b.as_str()))
            .map(|(r, _)| r)
            .collect()
    }

    /// A request from the callee on leg B, once it answered.
    fn callee_sends(&mut self, call_id: &str, method: &str) {
        let Some(leg_b) = self.callers.get(call_id).and_then(|c| c.leg_b.clone()) else {
            return;
        };
        let Some(invite) = self
            .sent
            .iter()
            .find(|(_, m, _)| m.call_id().ok() == Some(leg_b.as_str()))
            .map(|(_, m, _)| m.clone())
        else {
            return;
        };
        let text = format!(
            "{method} sip:sy@{local} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:41002;branch=z9hG4bK-b-{leg_b}-{method}\r\nMax-Forwards: 70\r\nFrom: {to};tag=b-tag\r\nTo: {from}\r\nCall-ID: {leg_b}\r\nCSeq: 7 {method}\r\nContact: <sip:1002@127.0.0.1:41002>\r\nContent-Length: 0\r\n\r\n",
            local = local(),
            to = invite.header(HeaderName::To).unwrap(),
            from = invite.header(HeaderName::From).unwrap(),
        );
        self.request(text);
    }

    fn play(&mut self, step: Step, n: &mut usize) {
        match step {
            Step::Call => {
                *n += 1;
                self.invite(&format!("call-{n}"), "1002", "Session-Expires: 90\r\n");
            }
            Step::Route(i) => {
                if !self.routes.is_empty() {
                    let call_id = self.routes[i % self.routes.len()].0.clone();
                    let ring = if i % 2 == 0 {
                        phones(1002, 20, Some("1003"))
                    } else {
                        trunk("t-a", &["t-b"])
                    };
                    self.route(&call_id, ring);
                }
            }
            Step::Ring(i) | Step::Answer(i) | Step::Busy(i) | Step::NoReply(i) => {
                let Some(call_id) = self.pick(i) else { return };
                let Some(&fork) = self.forks_of(&call_id).first() else {
                    return;
                };
                match step {
                    Step::Ring(_) => self.answer_fork(fork, 180),
                    Step::Answer(_) => self.answer_fork(fork, 200),
                    Step::Busy(_) => self.answer_fork(fork, 486),
                    _ => {
                        for s in self.sent.iter_mut().filter(|(r, _, _)| *r == fork) {
                            s.2 = true;
                        }
                        self.engine
                            .handle_sip(SipInput::Failed { req: fork }, self.now);
                        self.settle();
                    }
                }
            }
            Step::Cancel(i) => {
                if let Some(call_id) = self.pick(i) {
                    self.cancel(&call_id);
                }
            }
            Step::Ack(i) => {
                if let Some(call_id) = self.pick(i) {
                    self.caller_sends(&call_id, "ACK", "");
                }
            }
            Step::CallerBye(i) => {
                if let Some(call_id) = self.pick(i) {
                    self.caller_sends(&call_id, "BYE", "");
                }
            }
            Step::CalleeBye(i) => {
                if let Some(call_id) = self.pick(i) {
                    self.callee_sends(&call_id, "BYE");
                }
            }
            Step::Reinvite(i) => {
                if let Some(call_id) = self.pick(i) {
                    self.caller_sends(&call_id, "INVITE", "");
                }
            }
            Step::Wait(ms) => self.advance(Duration::from_millis(ms)),
        }
    }

    /// Every party hangs up and every question is answered.
    fn end_everything(&mut self) {
        while let Some((call_id, _)) = self.routes.first().cloned() {
            self.route(&call_id, phones(1002, 20, None));
        }
        for call_id in self.call_ids() {
            self.caller_sends(&call_id, "ACK", "");
            self.caller_sends(&call_id, "BYE", "");
            self.cancel(&call_id);
        }
        for _ in 0..20 {
            while let Some((_, _, target, _)) = self.forwards.first() {
                let ring = match target {
                    Reroute::Failover { .. } => trunk("t-b", &[]),
                    _ => phones(1003, 20, None),
                };
                self.forward(ring);
            }
            self.advance(Duration::from_secs(60));
        }
        for (req, _) in self.ringing() {
            self.answer_fork(req, 487);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any sequence of SIP events, lookup answers and waits leaves no call, timer, pending
    /// answer, trunk channel or media session behind once every leg has ended; every
    /// caller gets exactly one final answer, and every call routed one CDR (one
    /// cancelled while it was routed included).
    #[test]
    fn nothing_is_left_behind_once_every_leg_has_ended(steps in proptest::collection::vec(step(), 1..60)) {
        let mut w = World::new(Some(Duration::from_secs(30)));
        let mut n = 0;
        for s in steps {
            w.play(s, &mut n);
        }
        w.end_everything();
        prop_assert!(w.engine.idle(), "left behind: {:?}", w.engine);
        prop_assert!(w.sessions.is_empty(), "media sessions left: {:?}", w.sessions);
        for (call_id, caller) in &w.callers {
            prop_assert_eq!(caller.finals.len(), 1, "{} got {:?}", call_id, caller.finals);
        }
        let routed = w.callers.values().filter(|c| c.routed).count();
        prop_assert_eq!(w.cdrs.len(), routed);
        for held in &w.seized {
            prop_assert!(w.released.contains(held), "channel {:?} never given back", held);
        }
    }
}

#[test]
fn a_reinvite_is_relayed_to_the_other_leg_and_its_answer_comes_back() {
    let mut w = World::new(None);
    w.answered_call("c1", "", true);
    let tx = w.caller_sends("c1", "INVITE", "").unwrap();
    let reinvites: Vec<(ReqId, Message)> = w
        .ringing()
        .into_iter()
        .filter(|(_, m)| m.cseq().unwrap().seq > 1)
        .collect();
    assert_eq!(reinvites.len(), 1, "the callee is re-INVITEd");
    assert_eq!(w.callers["c1"].finals, vec![200], "the offerer waits");
    assert!(
        !w.answers.iter().any(|(t, _)| *t == tx),
        "no answer before the callee's"
    );
    // A second offer meanwhile is told to wait.
    let second = w.caller_sends("c1", "INVITE", "").unwrap();
    assert!(w.answers.contains(&(second, 491)));
    w.answer_fork(reinvites[0].0, 200);
    assert!(
        w.answers.contains(&(tx, 200)),
        "the offerer gets the relay's answer"
    );
    assert!(
        w.transmits
            .iter()
            .any(|(_, m)| m.method() == Some(&Method::Ack) && m.cseq().unwrap().seq > 1),
        "the callee's 200 is ACKed"
    );
    // Refused by the callee: the offerer hears it, the call goes on.
    let third = w.caller_sends("c1", "INVITE", "").unwrap();
    let (req, _) = w
        .ringing()
        .into_iter()
        .find(|(_, m)| m.cseq().unwrap().seq > 2)
        .unwrap();
    w.answer_fork(req, 488);
    assert!(w.answers.contains(&(third, 488)));
    assert!(w.sent_methods(Method::Bye).is_empty());
}

fn trunk(id: &str, rest: &[&str]) -> Ring {
    Ring::Trunk {
        leg: crate::routing::TrunkLeg {
            trunk_id: id.into(),
            route_id: format!("route-{id}"),
            number: "+4930555".into(),
            host: "carrier.example".into(),
            port: None,
            dest: "192.0.2.7:5060".parse().unwrap(),
            holds_channel: true,
            credentials: None,
        },
        rest: rest
            .iter()
            .map(|t| crate::dialplan::OutboundAttempt {
                route_id: format!("route-{t}"),
                trunk_id: (*t).into(),
                number: "+4930555".into(),
            })
            .collect(),
        dialled: "004930555".into(),
        emergency: false,
    }
}

#[test]
fn a_silent_trunk_is_given_up_after_five_seconds_for_the_next_route() {
    let mut w = World::new(None);
    w.invite("c1", "004930555", "");
    w.route("c1", trunk("t-a", &["t-b"]));
    let (first, invite) = w.ringing().pop().unwrap();
    assert!(
        invite
            .header(HeaderName::Route)
            .unwrap()
            .contains("sy-trunk=192.0.2.7:5060"),
        "through the edge to the trunk"
    );
    let leg_b = w.callers["c1"].leg_b.clone().unwrap();
    w.advance(Duration::from_millis(4_999));
    assert!(w.forwards.is_empty(), "the trunk has 5 s to say anything");
    w.advance(Duration::from_millis(1));
    let (_, _, target, _) = w
        .forwards
        .first()
        .cloned()
        .expect("the next route is looked up");
    assert!(matches!(target, Reroute::Failover { ref rest, .. } if rest.len() == 1));
    assert_eq!(
        w.released,
        vec![("trunk:t-a".to_owned(), leg_b.clone())],
        "the silent trunk's channel goes back"
    );
    w.forward(trunk("t-b", &[]));
    let ringing = w.ringing();
    let second = ringing.iter().find(|(r, _)| *r != first).unwrap().0;
    // A trunk that answered something is not silent: no failover after 5 s.
    w.answer_fork(second, 100);
    w.advance(Duration::from_secs(10));
    assert_eq!(w.forwards.len(), 0);
    assert!(w.callers["c1"].finals.is_empty());
    w.answer_fork(second, 200);
    assert_eq!(w.callers["c1"].finals, vec![200]);
    // The held channel's lease is renewed every 30 s while the call lasts.
    w.caller_sends("c1", "ACK", "");
    w.advance(Duration::from_secs(30));
    assert!(
        w.renewed
            .iter()
            .any(|held| held.contains(&("trunk:t-b".to_owned(), leg_b.clone()))),
        "{:?}",
        w.renewed
    );
    w.caller_sends("c1", "BYE", "");
    assert!(w.released.contains(&("trunk:t-b".to_owned(), leg_b)));
    assert!(w.cdrs[0].legs.contains("failover"), "{}", w.cdrs[0].legs);
    assert!(w.engine.idle() && w.sessions.is_empty());
}

/// A call out through a trunk is taken over with its trunk: the new owner renews the
/// channel's lease at once and every 30 s, gives it back when the call ends, and its CDR
/// names the trunk.
#[test]
fn a_call_through_a_trunk_is_carried_on_by_another_engine_with_its_channel() {
    let mut first = World::with(None, true);
    first.invite("c1", "004930555", "");
    let mut ring = trunk("t-a", &[]);
    if let Ring::Trunk { leg, .. } = &mut ring {
        leg.credentials = Some(crate::routing::TrunkCredentials {
            username: "office".into(),
            password: "trunk-secret".into(),
        });
    }
    first.route("c1", ring);
    let (fork, _) = first.ringing().pop().unwrap();
    first.answer_fork(fork, 200);
    first.caller_sends("c1", "ACK", "");
    let record = first
        .persisted
        .last()
        .cloned()
        .expect("a record once answered");
    let trunk_record = record.trunk.clone().expect("the trunk is in the record");
    assert_eq!(trunk_record.leg.trunk_id, "t-a");
    let text = serde_json::to_string(&record).unwrap();
    assert!(
        !text.contains("trunk-secret"),
        "no credentials in Redis: {text}"
    );
    let leg_b = first.callers["c1"].leg_b.clone().unwrap();
    assert_eq!(trunk_record.member, leg_b);
    // The first engine is gone; the caller's INFO reaches another one, which adopts.
    let mut second = World::with(None, true);
    let info = first.caller_text("c1", "INFO", "").unwrap();
    second.request(info);
    second.recovered(Some(record));
    let channel = ("trunk:t-a".to_owned(), leg_b.clone());
    assert_eq!(
        second.renewed,
        vec![vec![channel.clone()]],
        "renewed on adoption"
    );
    second.advance(Duration::from_secs(30));
    assert_eq!(
        second.renewed.len(),
        2,
        "and every 30 s: {:?}",
        second.renewed
    );
    assert!(second.renewed[1].contains(&channel));
    let bye = first.caller_text("c1", "BYE", "").unwrap();
    second.request(bye);
    assert!(second.released.contains(&channel), "{:?}", second.released);
    assert_eq!(second.cdrs.len(), 1);
    assert_eq!(second.cdrs[0].disposition, "answered");
    assert!(
        second.cdrs[0].legs.contains("trunk:t-a"),
        "{}",
        second.cdrs[0].legs
    );
}

#[test]
fn a_drain_stops_waiting_for_answers_after_its_limit() {
    let mut w = World::new(None);
    w.answered_call("up", "", true);
    // The world answers nothing from now on: BYEs stay unanswered.
    let before = w.sent.len();
    w.engine.shutdown(w.now);
    // Take the BYEs out without answering them.
    while let Some(output) = w.engine.poll_output() {
        match output {
            Output::Send { req, request, .. } => w.sent.push((req, request, false)),
            Output::Media { job: Some(job), .. } => w.engine.handle_media(
                MediaAnswer {
                    job,
                    reply: Ok(Reply::Stats {
                        stats: SessionStats::default(),
                    }),
                },
                w.now,
            ),
            Output::Cdr(cdr) => w.cdrs.push(cdr),
            _ => {}
        }
    }
    assert_eq!(w.sent.len() - before, 2, "two BYEs sent");
    assert_eq!(w.cdrs.len(), 1, "the CDR is written at once");
    assert!(!w.engine.drained(), "waiting for the BYEs' answers");
    w.advance(Duration::from_millis(4_999));
    assert!(!w.engine.drained());
    w.advance(Duration::from_millis(1));
    assert!(w.engine.drained(), "5 s is the limit");
}

#[test]
fn a_call_refused_by_the_dial_plan_or_cancelled_while_routed_has_its_cdr() {
    let mut w = World::new(None);
    w.invite("unknown", "1999", "");
    let (call_id, request) = w.routes.remove(0);
    w.engine.handle_lookup(
        Lookup::Routed {
            call_id,
            request,
            outcome: Box::new(Err(crate::routing::Refusal {
                status: 404,
                reason: "No such extension".into(),
                attempted: true,
            })),
        },
        w.now,
    );
    w.settle();
    assert_eq!(w.callers["unknown"].finals, vec![404]);
    assert_eq!(w.cdrs.len(), 1);
    let cdr = &w.cdrs[0];
    assert_eq!(
        (
            cdr.disposition.as_str(),
            cdr.call_id.as_str(),
            cdr.answered_at
        ),
        ("failed", "unknown", None)
    );
    assert!(cdr.to_uri.contains("1999"), "{cdr:?}");
    assert!(
        cdr.legs.contains(r#""result":404"#) && cdr.legs.contains(r#""via":"refused""#),
        "{}",
        cdr.legs
    );

    // Cancelled while its routing step ran: `487` at once, a `cancelled` CDR once the
    // step comes back, no media session left.
    w.invite("changed-mind", "1002", "");
    w.cancel("changed-mind");
    assert_eq!(w.callers["changed-mind"].finals, vec![487]);
    w.route("changed-mind", phones(1002, 20, None));
    assert_eq!(w.cdrs.len(), 2);
    assert_eq!(w.cdrs[1].disposition, "cancelled");
    assert_eq!(w.cdrs[1].hangup_side.as_deref(), Some("caller"));
    assert!(w.ringing().is_empty(), "nothing rang");
    assert!(w.engine.idle() && w.sessions.is_empty());
}
