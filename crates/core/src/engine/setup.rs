//! A new call, from the caller's INVITE until it is answered or fails: routing, forks,
//! trunk challenges, failover and forwards, CANCEL.

use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use switchyard_media_control::{Leg, Reply, Request};
use switchyard_sip::build::{RequestBuilder, ResponseBuilder};
use switchyard_sip::seal::{SEAL_HEADER, Sealed};
use switchyard_sip::transaction::TxId;
use switchyard_sip::{HeaderName, Message, Method};
use switchyard_sip_net::Peer;

use super::call::*;
use super::{CallKey, Engine, ForwardFor, MediaError, Output, Purpose, Timer};
use crate::dialog::{Dialog, random_token, uri_addr};
use crate::metrics::{Disposition, TrunkOutcome};
use crate::routing::{self, Refusal, Reroute, Ring, RouteRequest, Routed};
use crate::{
    ALLOW, CALLER_HEADER, CARRIER_HEADER, MIN_SE, OUTBOUND_RING_LIMIT, TENANT_HEADER, TRUNK_SILENCE,
};

impl Engine {
    pub(super) fn new_call(&mut self, tx: TxId, msg: Message, edge: std::net::SocketAddr) {
        if self.draining {
            let b = ResponseBuilder::for_request(&msg, 503, "Shutting Down", &random_token())
                .header("Retry-After", "5");
            return self.respond(tx, b);
        }
        if !self.accepting.load(std::sync::atomic::Ordering::Relaxed) {
            let b = ResponseBuilder::for_request(&msg, 503, "Draining", &random_token())
                .header("Retry-After", "5");
            return self.respond(tx, b);
        }
        let (Some(tenant_id), Some(caller)) = (
            msg.extension_rows(TENANT_HEADER).next().map(str::to_owned),
            msg.extension_rows(CALLER_HEADER).next().map(str::to_owned),
        ) else {
            return self.reply(tx, &msg, 403, "Calls must come through an edge");
        };
        // Only an edge of the cluster may say who calls: the seal covers this request's
        // Call-ID and CSeq and the three values, with the cluster secret.
        let carrier = msg.extension_rows(CARRIER_HEADER).next().map(str::to_owned);
        let sealed = Sealed {
            call_id: msg.call_id().unwrap_or_default(),
            cseq: msg.header(HeaderName::CSeq).unwrap_or_default().trim(),
            tenant: &tenant_id,
            caller: &caller,
            carrier: carrier.as_deref().unwrap_or_default(),
        };
        let seal = msg.extension_rows(SEAL_HEADER).next();
        if let Err(why) = self
            .seal
            .verify(seal, &sealed, self.now.unix_ms.max(0) as u64 / 1000)
        {
            warn!(%edge, error = %why, "INVITE with edge headers refused");
            return self.reply(tx, &msg, 403, "Calls must come through an edge");
        }
        if msg.body().is_empty() {
            return self.reply(tx, &msg, 488, "An SDP offer is required in the INVITE");
        }
        if session_timer_of(&msg, self.now.at).is_err() {
            let b = ResponseBuilder::for_request(
                &msg,
                422,
                "Session Interval Too Small",
                &random_token(),
            )
            .header("Min-SE", MIN_SE.to_string());
            return self.respond(tx, b);
        }
        let Ok(call_id) = msg.call_id().map(str::to_owned) else {
            return self.reply(tx, &msg, 400, "Missing Call-ID");
        };
        if self.by_call_id.contains_key(&call_id) || self.setups.contains_key(&call_id) {
            return self.reply(tx, &msg, 482, "Loop Detected");
        }
        if Dialog::as_uas(&msg, "probe").is_none() {
            return self.reply(tx, &msg, 400, "INVITE without a usable Contact");
        }
        let dialled = msg
            .request_uri()
            .and_then(|u| u.ok())
            .and_then(|u| u.as_sip().and_then(|s| s.user.map(str::to_owned)))
            .unwrap_or_default();
        let request = RouteRequest {
            tenant_id,
            caller,
            carrier,
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
                invited_at: self.now.at,
                invited_ms: self.now.unix_ms,
                cancelled: false,
            },
        );
        let at_ms = self.now.unix_ms;
        self.push(Output::Route {
            call_id,
            request,
            at_ms,
        });
    }

    /// A routing step came back: the call rings its callee's contacts, or its caller
    /// gets the refusal. A call cancelled or a node draining meanwhile is let go (its
    /// caller was answered already; the media session goes).
    pub(super) fn on_routed(
        &mut self,
        call_id: String,
        request: RouteRequest,
        outcome: Result<Routed, Refusal>,
    ) {
        let Some(setup) = self.setups.remove(&call_id) else {
            return;
        };
        let Setup {
            tx,
            invite: msg,
            edge,
            invited_at,
            invited_ms,
            cancelled,
        } = setup;
        let tenant_id = request.tenant_id;
        let routed = match outcome {
            Ok(r) => r,
            Err(refusal) => {
                if refusal.attempted {
                    self.metrics.attempted(&tenant_id);
                    let disposition = match (cancelled, refusal.status) {
                        (true, _) => Disposition::Cancelled,
                        (false, 486 | 600) => Disposition::Busy,
                        _ => Disposition::Failed,
                    };
                    let side = cancelled.then_some("caller");
                    self.refused_cdr(
                        &tenant_id,
                        &msg,
                        &request.dialled,
                        refusal.status,
                        disposition,
                        side,
                        invited_ms,
                    );
                }
                if !cancelled {
                    self.reply(tx, &msg, refusal.status, &refusal.reason);
                }
                return;
            }
        };
        self.metrics.attempted(&tenant_id);
        let session = request.session;
        if cancelled || self.draining {
            self.media(None, Request::Destroy { session });
            self.release(held_by_ring(&routed.ring, &request.leg_b));
            let (status, disposition, side) = if cancelled {
                (487, Disposition::Cancelled, "caller")
            } else {
                (503, Disposition::Failed, "shutdown")
            };
            self.refused_cdr(
                &tenant_id,
                &msg,
                &request.dialled,
                status,
                disposition,
                Some(side),
                invited_ms,
            );
            if !cancelled {
                let b = ResponseBuilder::for_request(&msg, 503, "Shutting Down", &random_token())
                    .header("Retry-After", "5");
                self.respond(tx, b);
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
        let session_timer = session_timer_of(&msg, self.now.at).ok().flatten();
        let a_tag = random_token();
        let b_call_id = request.leg_b;
        let Some(a) = Dialog::as_uas(&msg, &a_tag) else {
            self.media(None, Request::Destroy { session });
            self.release(held_by_ring(&ring, &b_call_id));
            return self.reply(tx, &msg, 400, "INVITE without a usable Contact");
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
        if targets.is_empty() {
            self.media(None, Request::Destroy { session });
            if let Some(t) = &trunk {
                self.release(held_by_leg(&t.leg, &b_call_id));
            }
            return self.reply(tx, &msg, 480, "Temporarily Unavailable");
        }
        info!(
            tenant = tenant_id,
            caller,
            callee = callee_name,
            trunk = trunk.as_ref().map(|t| t.leg.trunk_id.as_str()),
            forks = targets.len(),
            call_id,
            "call routed"
        );
        if let Some(t) = &trunk {
            self.metrics.trunk_attempted(&tenant_id, &t.leg.trunk_id);
            self.arm(self.now.at + TRUNK_SILENCE, key, Timer::TrunkSilence(0));
        }
        let from_uri = msg
            .from_header()
            .ok()
            .map(|f| f.uri_str.to_owned())
            .unwrap_or_default();
        self.by_call_id.insert(call_id.clone(), key);
        self.by_call_id.insert(b_call_id.clone(), key);
        let ring_deadline = self.now.at + ring_for;
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
        let started_ms = self.now.unix_ms;
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
                forks: Vec::new(),
                phase: Phase::Ringing,
                ringing_sent: false,
                a_final_sent: false,
                best_failure: None,
                started_ms,
                invited_at,
                answered_ms: None,
                from_uri,
                to_uri,
                reinvite: None,
                unacked: None,
                session_timer,
                leg: legs.clone(),
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
                    at_ms: started_ms,
                    result: None,
                }],
                reroute_reason: "",
                handed_from: Vec::new(),
            },
        );
        let forks = self.fork(key, 0, &legs, &targets);
        if let Some(call) = self.calls.get_mut(&key) {
            call.forks = forks;
        }
    }

    /// The CDR of a call that never rang: refused by the dial plan, cancelled while it
    /// was being routed, or let go by a drain. One attempt leg says what was dialled and
    /// the status the caller got.
    #[allow(clippy::too_many_arguments)]
    fn refused_cdr(
        &mut self,
        tenant_id: &str,
        invite: &Message,
        dialled: &str,
        status: u16,
        disposition: Disposition,
        hangup_side: Option<&str>,
        started_ms: i64,
    ) {
        let uri = |h: HeaderName| {
            invite
                .header(h)
                .and_then(|v| switchyard_sip::headers::NameAddr::parse_header(v, "name-addr").ok())
                .map(|n| n.uri_str.to_owned())
                .unwrap_or_default()
        };
        let attempt = Attempt {
            to: dialled.to_owned(),
            via: "refused".to_owned(),
            reason: "dialled",
            at_ms: started_ms,
            result: Some(status),
        };
        let ended_ms = self.now.unix_ms;
        self.metrics.ended(tenant_id, disposition, None);
        self.push(Output::Cdr(switchyard_store::Cdr {
            id: format!("cdr-{}", random_token()),
            tenant_id: tenant_id.to_owned(),
            call_id: invite.call_id().unwrap_or_default().to_owned(),
            from_uri: uri(HeaderName::From),
            to_uri: uri(HeaderName::To),
            started_at: started_ms,
            answered_at: None,
            ended_at: ended_ms,
            duration_ms: 0,
            disposition: disposition.as_str().to_owned(),
            hangup_side: hangup_side.map(str::to_owned),
            legs: super::ending::legs_json(&Default::default(), &[attempt]),
        }));
    }

    /// Leg B's INVITE to each target (forks numbered from `first`); the forks sent.
    pub(super) fn fork(
        &mut self,
        key: CallKey,
        first: usize,
        leg: &BLeg,
        targets: &[ForkTarget],
    ) -> Vec<Fork> {
        self.fork_as(key, first, leg, targets, Purpose::Fork)
    }

    /// [`Self::fork`] with the purpose its transactions answer to.
    pub(super) fn fork_as(
        &mut self,
        key: CallKey,
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
            let peer = hop_peer(self.local, target.next_hop);
            self.send(key, purpose(first + forks.len()), request.clone(), peer);
            forks.push(Fork {
                request,
                done: false,
                heard: false,
            });
        }
        forks
    }

    pub(super) fn on_fork_response(&mut self, key: CallKey, i: usize, msg: Message) {
        let status = msg.status().unwrap_or(0);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(fork) = call.forks.get_mut(i) else {
            return;
        };
        fork.heard = true;
        if status < 200 {
            if status > 100 && !call.ringing_sent && call.phase == Phase::Ringing {
                call.ringing_sent = true;
                let pdd = self.now.at.saturating_duration_since(call.invited_at);
                self.metrics.post_dial_delay(&call.tenant_id, pdd);
                let b = self.a_response(&self.calls[&key], 180, "Ringing");
                let tx = self.calls[&key].a_tx;
                self.respond(tx, b);
            }
            return;
        }
        let fork_request = fork.request.clone();
        let already_done = std::mem::replace(&mut fork.done, true);
        if !already_done && !matches!(status, 401 | 407) {
            self.note_trunk_outcome(key, i, status);
        }
        if (200..300).contains(&status) {
            let Some(dialog) = Dialog::as_uac(&fork_request, &msg, 1) else {
                warn!("2xx without Contact from the callee");
                return;
            };
            self.send_ack(&dialog, 1);
            let call = self.calls.get_mut(&key).expect("call present");
            if call.phase != Phase::Ringing || already_done {
                // A second fork answered, or a retransmitted 2xx: it has its ACK; a
                // second answer is hung up at once.
                let same = call.b.as_ref().is_some_and(|b| b.remote == dialog.remote);
                if !same {
                    self.hang_up_dialog(dialog);
                }
                return;
            }
            call.phase = Phase::Answering;
            call.answered_ms = Some(self.now.unix_ms);
            if !call.ringing_sent {
                let pdd = self.now.at.saturating_duration_since(call.invited_at);
                self.metrics.post_dial_delay(&call.tenant_id, pdd);
            }
            self.metrics.answered(&call.tenant_id);
            call.conclude_attempt(200);
            call.b = Some(dialog);
            let sdp = String::from_utf8_lossy(msg.body()).into_owned();
            call.remote_sdp[1] = sdp.clone();
            let session = call.session.clone();
            let others: Vec<Message> = call.take_ringing_forks();
            for other in others {
                self.cancel_fork(key, &other);
            }
            self.media(
                Some((key, MediaJob::Answer)),
                Request::Answer {
                    session,
                    from: Leg::B,
                    sdp,
                },
            );
            return;
        }
        // A final failure of one fork; one we had CANCELled already (its 487) says
        // nothing new.
        if already_done {
            return;
        }
        if matches!(status, 401 | 407) {
            if self.answer_trunk_challenge(key, i, &msg) {
                return;
            }
            self.note_trunk_outcome(key, i, status);
        }
        let reason = msg.reason().unwrap_or("").to_owned();
        self.fork_failed(key, i, status, reason);
    }

    /// Fork `i` failed with `status` (a final answer, or none: `408`): the worst failure
    /// is kept; a trunk fails over; once every fork failed the call rings its next
    /// destination or ends.
    fn fork_failed(&mut self, key: CallKey, i: usize, status: u16, reason: String) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
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
        if call.phase == Phase::Ringing && !call.rerouting && call.forks.iter().all(|f| f.done) {
            let busy = matches!(call.best_failure, Some((486 | 600, _)));
            if let Some((worst, _)) = call.best_failure {
                call.conclude_attempt(worst);
            }
            if let Some(next) = call.next_reroute(busy, false) {
                return self.reroute(key, next);
            }
            self.conclude_unanswered(key);
        }
    }

    /// No answer at all from fork `i`'s contact: a `408` of that fork.
    pub(super) fn on_fork_failed(&mut self, key: CallKey, i: usize) {
        let Some(fork) = self.calls.get_mut(&key).and_then(|c| c.forks.get_mut(i)) else {
            return;
        };
        if std::mem::replace(&mut fork.done, true) {
            return;
        }
        self.note_trunk_outcome(key, i, 408);
        self.fork_failed(key, i, 408, "Request Timeout".into());
    }

    /// The media node took leg B's answer: the caller gets `200` with the relay's SDP
    /// (retransmitted until its ACK), or `488` and the callee a BYE.
    pub(super) fn on_answer_relayed(&mut self, key: CallKey, answer: Result<Reply, MediaError>) {
        let Some(call) = self.calls.get_mut(&key) else {
            return; // hung up meanwhile
        };
        if call.phase != Phase::Answering {
            return;
        }
        match answer {
            Ok(Reply::Sdp { sdp }) => {
                call.phase = Phase::Answered;
                call.a_final_sent = true;
                let call = &self.calls[&key];
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
                info!(
                    tenant = call.tenant_id,
                    call_id = call.a.call_id,
                    "call answered"
                );
                self.answer_until_acked(key, tx, bytes, peer, cseq);
                self.restart_session_timer(key);
                self.persist(key);
            }
            _ => {
                warn!("the callee's answer cannot be relayed");
                self.fail_a(key, 488, "Not Acceptable Here");
                self.send_in_dialog(key, Leg::B, Method::Bye, None);
                self.finish(key, Disposition::Failed, None);
            }
        }
    }

    /// Counts a final answer (or none) of fork `i` if it is the call's trunk leg.
    pub(super) fn note_trunk_outcome(&self, key: CallKey, i: usize, status: u16) {
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
    fn answer_trunk_challenge(&mut self, key: CallKey, i: usize, msg: &Message) -> bool {
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
        let forks = self.fork(key, first, &leg, &[target]);
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
        self.arm(self.now.at + TRUNK_SILENCE, key, Timer::TrunkSilence(first));
        true
    }

    /// The callee was busy or did not answer and forwards there: its target's contacts
    /// are looked up by the shell (the call rings nowhere meanwhile; failures of the
    /// forks it had do not end it).
    pub(super) fn reroute(&mut self, key: CallKey, target: Reroute) {
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
        let release = call
            .trunk
            .take()
            .filter(|t| t.leg.holds_channel)
            .map(|t| (routing::trunk_channels(&t.leg.trunk_id), t.member));
        let output = Output::Forward {
            key,
            purpose: ForwardFor::Reroute,
            config: call.config.clone(),
            tenant: call.tenant_id.clone(),
            leg_b: call.b_call_id.clone(),
            target,
            release,
            at_ms: self.now.unix_ms,
        };
        self.push(output);
    }

    /// A forward's contacts came back: they ring, or the call ends as it would have.
    pub(super) fn on_rerouted(&mut self, key: CallKey, outcome: routing::Forwarded) {
        let Some(call) = self.calls.get_mut(&key) else {
            // Ended meanwhile: a channel the lookup seized goes back.
            let member = self.orphaned.remove(&(key, ForwardFor::Reroute));
            if let (Ok(ring), Some(member)) = (&outcome, member) {
                self.release(held_by_ring(ring, &member));
            }
            return;
        };
        if call.phase != Phase::Ringing || !call.rerouting {
            if let Ok(ring) = &outcome {
                let held = held_by_ring(ring, &call.b_call_id);
                self.release(held);
            }
            return;
        }
        call.rerouting = false;
        let first = call.forks.len();
        let now = self.now;
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
                let forks = self.fork(key, first, &leg, &targets);
                let call = self.calls.get_mut(&key).expect("call present");
                let sent = !forks.is_empty();
                call.forks.extend(forks);
                let reason = call.reroute_reason;
                call.begin_attempt(
                    target.number.to_string(),
                    "extension".into(),
                    reason,
                    now.unix_ms,
                );
                if !sent {
                    call.conclude_attempt(480);
                }
                if sent {
                    let ring_for = call.hunt_ring.map_or(target.no_answer_seconds, i64::from);
                    let timeout = Duration::from_secs(ring_for.clamp(1, 600) as u64);
                    let deadline = now.at + timeout;
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
                let forks = self.fork(key, first, &leg, &[target]);
                let call = self.calls.get_mut(&key).expect("call present");
                let sent = !forks.is_empty();
                call.forks.extend(forks);
                let reason = call.reroute_reason;
                call.begin_attempt(
                    trunk_leg.number.clone(),
                    format!("trunk:{}", trunk_leg.trunk_id),
                    reason,
                    now.unix_ms,
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
                    let deadline = now.at + OUTBOUND_RING_LIMIT;
                    call.ring_deadline = deadline;
                    self.arm(deadline, key, Timer::NoAnswer);
                    self.arm(now.at + TRUNK_SILENCE, key, Timer::TrunkSilence(first));
                } else {
                    let held = held_by_leg(&trunk_leg, &call.b_call_id);
                    self.release(held);
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
                None => self.conclude_unanswered(key),
            }
        }
    }

    /// Ends a call no fork answered: the caller gets the worst failure seen (`408` when
    /// the ringing timed out), and the CDR its disposition.
    pub(super) fn conclude_unanswered(&mut self, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let (status, reason) = call.best_failure.clone().unwrap_or((480, String::new()));
        call.conclude_attempt(status);
        let disposition = match status {
            486 | 600 => Disposition::Busy,
            487 => Disposition::Cancelled,
            408 => Disposition::NoAnswer,
            _ => Disposition::Failed,
        };
        self.fail_a(key, status, &reason);
        self.finish(key, disposition, None);
    }

    pub(super) fn cancel_fork(&mut self, key: CallKey, invite: &Message) {
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
        let peer = hop_peer(self.local, next_hop);
        self.send(key, Purpose::Cancel, cancel, peer);
    }

    pub(super) fn on_ack(&mut self, msg: &Message) {
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

    pub(super) fn on_cancel(&mut self, tx: TxId, msg: &Message) {
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        if let Some(setup) = self.setups.get_mut(&call_id) {
            if setup.cancelled || !cancels(msg, &setup.invite) {
                return self.no_such_dialog(tx, msg);
            }
            setup.cancelled = true;
            let (a_tx, invite) = (setup.tx, setup.invite.clone());
            self.reply(tx, msg, 200, "OK");
            self.reply(a_tx, &invite, 487, "Request Terminated");
            info!(call_id, "call cancelled by the caller while being routed");
            return;
        }
        let Some(&key) = self.by_call_id.get(&call_id) else {
            return self.no_such_dialog(tx, msg);
        };
        // RFC 3261 §9.2: a CANCEL matches the INVITE transaction with its branch and
        // CSeq number; a CANCEL that merely names the Call-ID cancels nothing.
        let matches_invite = self
            .calls
            .get(&key)
            .is_some_and(|call| call.a.call_id == call_id && cancels(msg, &call.a_invite));
        if !matches_invite {
            return self.no_such_dialog(tx, msg);
        }
        self.reply(tx, msg, 200, "OK");
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.phase != Phase::Ringing {
            return;
        }
        let forks: Vec<Message> = call.take_ringing_forks();
        self.fail_a(key, 487, "Request Terminated");
        for f in forks {
            self.cancel_fork(key, &f);
        }
        info!(call_id, "call cancelled by the caller");
        self.finish(key, Disposition::Cancelled, Some("caller"));
    }

    /// The ACK of a 2xx (outside any transaction).
    pub(super) fn send_ack(&mut self, dialog: &Dialog, cseq: u32) {
        let mut d = dialog.clone();
        let ack = d.request(Method::Ack, self.local, None, Some(cseq));
        let peer = dialog.peer(self.local);
        self.push(Output::Transmit {
            target: peer.target,
            bytes: ack.to_bytes(),
        });
    }
}

/// Where a request to `next_hop` goes from our socket (UDP).
pub(super) fn hop_peer(local: std::net::SocketAddr, next_hop: std::net::SocketAddr) -> Peer {
    Peer {
        target: switchyard_sip_net::Target::Datagram {
            local,
            dest: next_hop,
        },
        source: next_hop,
        transport: switchyard_sip_net::Transport::Udp,
        local,
    }
}

/// The channel a routed call's trunk leg holds, if any.
pub(super) fn held_by_ring(ring: &Ring, leg_b: &str) -> Vec<(switchyard_types::TenantId, String)> {
    match ring {
        Ring::Trunk { leg, .. } => held_by_leg(leg, leg_b),
        Ring::Phones { .. } => Vec::new(),
    }
}

/// The channel a trunk leg holds under Call-ID `member`, if it holds one.
pub(super) fn held_by_leg(
    leg: &crate::routing::TrunkLeg,
    member: &str,
) -> Vec<(switchyard_types::TenantId, String)> {
    if leg.holds_channel {
        vec![(routing::trunk_channels(&leg.trunk_id), member.to_owned())]
    } else {
        Vec::new()
    }
}

/// Leg B's identity towards a trunk: the presented number (one of the tenant's own) as
/// the caller and the number as the trunk gets it, both at the trunk's host; the From tag
/// stays the call's.
pub(super) fn trunk_leg_identity(
    leg: &BLeg,
    trunk: &crate::routing::TrunkLeg,
    presenting: &str,
) -> BLeg {
    let tag = leg.from.rsplit_once(";tag=").map_or("", |(_, t)| t);
    let host = trunk.uri_host();
    BLeg {
        from: format!("<sip:{presenting}@{host}>;tag={tag}"),
        to: format!("<sip:{}@{host}>", trunk.number),
        ..leg.clone()
    }
}

/// RFC 3261 §9.2: a CANCEL matches the INVITE transaction with its branch and CSeq
/// number; a CANCEL that merely names the Call-ID cancels nothing.
fn cancels(cancel: &Message, invite: &Message) -> bool {
    let branch = |m: &Message| m.top_via().ok().and_then(|v| v.branch().map(str::to_owned));
    branch(cancel).is_some()
        && branch(cancel) == branch(invite)
        && cancel.cseq().ok().map(|c| c.seq) == invite.cseq().ok().map(|c| c.seq)
}

/// The session timer a new INVITE asks for (RFC 4028): none without Session-Expires,
/// `Err` when the interval is unreadable or below our Min-SE (the answer is `422`).
pub(super) fn session_timer_of(
    msg: &Message,
    now: std::time::Instant,
) -> Result<Option<SessionTimer>, ()> {
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
        deadline: now,
    }))
}

/// Which failure to pass on when every fork failed (RFC 3261 §16.7 in spirit): a busy or
/// decline beats a timeout, a timeout beats other errors.
pub(super) fn rank(status: u16) -> u8 {
    match status {
        600 | 603 => 5,
        486 => 4,
        487 => 3,
        408 | 480 => 2,
        _ => 1,
    }
}
