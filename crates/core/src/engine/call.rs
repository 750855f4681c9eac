//! What the engine keeps per call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_media_control::Leg;
use switchyard_sip::Message;
use switchyard_sip::transaction::TxId;
use switchyard_sip_net::Peer;
use switchyard_state::Binding;
use switchyard_store::{Target, TenantConfig};

use crate::TRUNK_ROUTE_PARAM;
use crate::dialog::{Dialog, uri_addr};
use crate::dialplan;
use crate::metrics::Disposition;
use crate::routing::{Reroute, Ring, TrunkLeg};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Leg B rings (or its next destination is being looked up).
    Ringing,
    /// Leg B answered; the media node is taking its answer before the caller hears `200`.
    Answering,
    /// Both legs are up.
    Answered,
}

#[derive(Debug)]
pub(crate) struct Fork {
    pub(crate) request: Message,
    pub(crate) done: bool,
    /// A provisional or final answer came.
    pub(crate) heard: bool,
}

#[derive(Debug)]
pub(crate) struct PendingReinvite {
    pub(crate) from: Leg,
    pub(crate) tx: TxId,
    pub(crate) request: Message,
    /// The re-INVITE we sent to the other leg (none while the media node takes the offer).
    pub(crate) out: Option<Message>,
}

/// A 2xx we sent and retransmit until its ACK (RFC 3261 §13.3.1.4).
#[derive(Debug)]
pub(crate) struct Unacked {
    pub(crate) bytes: Bytes,
    pub(crate) peer: Peer,
    pub(crate) cseq: u32,
    pub(crate) interval: Duration,
    pub(crate) since: Instant,
}

#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) tenant_id: String,
    pub(crate) session: String,
    pub(crate) a_tx: TxId,
    pub(crate) a_invite: Message,
    pub(crate) a_tag: String,
    pub(crate) a: Dialog,
    pub(crate) b: Option<Dialog>,
    pub(crate) b_call_id: String,
    pub(crate) forks: Vec<Fork>,
    pub(crate) phase: Phase,
    pub(crate) ringing_sent: bool,
    /// The caller's INVITE has its final answer.
    pub(crate) a_final_sent: bool,
    pub(crate) best_failure: Option<(u16, String)>,
    pub(crate) started_ms: i64,
    /// When the caller's INVITE arrived (post-dial delay).
    pub(crate) invited_at: Instant,
    pub(crate) answered_ms: Option<i64>,
    pub(crate) from_uri: String,
    pub(crate) to_uri: String,
    pub(crate) reinvite: Option<PendingReinvite>,
    pub(crate) unacked: Option<Unacked>,
    /// RFC 4028 on leg A: the interval, who refreshes, and when the session lapses.
    pub(crate) session_timer: Option<SessionTimer>,
    /// Leg B's identity and offer (every fork, a forward's included, sends these).
    pub(crate) leg: BLeg,
    /// The configuration the call was routed with (a forward is decided in it).
    pub(crate) config: Arc<TenantConfig>,
    /// The callee's forwards, each taken at most once (one forward per call).
    pub(crate) forward_busy: Option<String>,
    pub(crate) forward_no_answer: Option<String>,
    /// A forward's contacts are being looked up: fork failures meanwhile end nothing.
    pub(crate) rerouting: bool,
    /// When the current ringing gives up.
    pub(crate) ring_deadline: Instant,
    /// A sequential group's members still to ring (extension numbers), in order, and
    /// how long each rings.
    pub(crate) hunt: std::collections::VecDeque<String>,
    pub(crate) hunt_ring: Option<u32>,
    /// A group's target once nobody answered (taken once).
    pub(crate) fallback: Option<Target>,
    /// The edge that brought the call: calls out through trunks leave through it.
    pub(crate) edge: SocketAddr,
    /// The number presented to trunks.
    pub(crate) presented: Option<String>,
    /// The trunk leg ringing or answered, and the routes left for failover.
    pub(crate) trunk: Option<TrunkState>,
    /// Each leg's last SDP (A's offer, B's answer, then re-INVITEs): a transfer offers
    /// the new party what the party staying in the call last said.
    pub(crate) remote_sdp: [String; 2],
    /// A blind transfer in progress.
    pub(crate) transfer: Option<Transfer>,
    /// Every destination the call rang, in order (the CDR's legs after A and B).
    pub(crate) attempts: Vec<Attempt>,
    /// Why the re-route being looked up happens.
    pub(crate) reroute_reason: &'static str,
    /// Cores that handed this call on (never to take it back from its record).
    pub(crate) handed_from: Vec<SocketAddr>,
}

/// One destination a call rang: for the CDR.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// An extension number, or the number as a trunk got it.
    pub(crate) to: String,
    /// `extension`, `trunk:ID`.
    pub(crate) via: String,
    /// `dialled`, `hunt`, `fallback`, `forward-busy`, `forward-no-answer`, `failover`,
    /// `transfer`.
    pub(crate) reason: &'static str,
    pub(crate) at_ms: i64,
    /// The final status it gave (`200` answered), none if the call moved on or ended
    /// while it rang.
    pub(crate) result: Option<u16>,
}

impl Call {
    /// The leg a request with `call_id` belongs to (leg A's Call-ID, else leg B), and
    /// that leg's dialog if it has one.
    pub(crate) fn leg_of(&self, call_id: &str) -> (Leg, Option<&Dialog>) {
        if self.a.call_id == call_id {
            (Leg::A, Some(&self.a))
        } else {
            (Leg::B, self.b.as_ref())
        }
    }

    pub(crate) fn begin_attempt(
        &mut self,
        to: String,
        via: String,
        reason: &'static str,
        at_ms: i64,
    ) {
        self.attempts.push(Attempt {
            to,
            via,
            reason,
            at_ms,
            result: None,
        });
    }

    /// The current destination's outcome (kept if it already has one).
    pub(crate) fn conclude_attempt(&mut self, status: u16) {
        if let Some(a) = self.attempts.last_mut() {
            a.result.get_or_insert(status);
        }
    }
}

/// A blind transfer (REFER): the referrer's leg is replaced by a new party once it
/// answers; until then the call stays as it was.
#[derive(Debug)]
pub(crate) struct Transfer {
    pub(crate) referrer: Leg,
    /// The number the Refer-To named.
    pub(crate) target: String,
    /// The new party's INVITEs (empty while its contacts are looked up).
    pub(crate) forks: Vec<Fork>,
    pub(crate) leg: Option<BLeg>,
    /// The new party's Call-ID, under which a trunk channel it seized is held.
    pub(crate) call_id: String,
    /// The trunk the new party is reached through, if it is outside.
    pub(crate) trunk: Option<TrunkLeg>,
    /// Attended transfer: the consultation call whose other party takes the referrer's
    /// place (re-INVITEd with this call's media).
    pub(crate) replacing: Option<Replacing>,
    /// The referrer of a blind transfer hung up before the new party answered (as most
    /// desk phones do at once): it is told nothing more and not hung up again.
    pub(crate) referrer_gone: bool,
}

impl Transfer {
    /// A transfer by `referrer` to `target`: blind (the new party's Call-ID `call_id`),
    /// or attended (`replacing` the consultation call; no Call-ID of its own).
    pub(crate) fn new(
        referrer: Leg,
        target: String,
        call_id: String,
        replacing: Option<Replacing>,
    ) -> Transfer {
        Transfer {
            referrer,
            target,
            forks: Vec::new(),
            leg: None,
            call_id,
            trunk: None,
            replacing,
            referrer_gone: false,
        }
    }
}

/// The consultation call of an attended transfer (RFC 3891 Replaces).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replacing {
    pub(crate) call: u64,
    /// The consultation call's leg towards the new party.
    pub(crate) party: Leg,
    /// Its leg towards the referrer.
    pub(crate) referrer: Leg,
    /// The re-INVITE's CSeq (its ACK carries it).
    pub(crate) cseq: u32,
}

/// A call's current trunk leg.
#[derive(Debug, Clone)]
pub(crate) struct TrunkState {
    pub(crate) leg: TrunkLeg,
    pub(crate) rest: Vec<dialplan::OutboundAttempt>,
    pub(crate) dialled: String,
    pub(crate) emergency: bool,
    /// The fork that carries it.
    pub(crate) fork: usize,
    /// The carrier's challenge was answered once (a second one fails the route).
    pub(crate) authenticated: bool,
    /// The Call-ID its channel is held under.
    pub(crate) member: String,
}

impl Call {
    /// The number a trunk is shown as the caller (`anonymous` only for an emergency
    /// call of a tenant that holds no number).
    pub(crate) fn presenting(&self) -> String {
        self.presented
            .clone()
            .unwrap_or_else(|| "anonymous".to_owned())
    }

    /// The next outbound route when fork `i`, the trunk leg, failed with `status`
    /// (`5xx`, `408` or silence; a busy or unknown number is the same on every trunk).
    pub(crate) fn failover_after(&mut self, i: usize, status: u16) -> Option<Reroute> {
        let trunk = self.trunk.as_mut()?;
        let worth_it = (500..600).contains(&status) || status == 408;
        if trunk.fork != i || !worth_it || trunk.rest.is_empty() || self.phase != Phase::Ringing {
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
    pub(crate) fn next_reroute(&mut self, busy: bool, unanswered: bool) -> Option<Reroute> {
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
pub(crate) struct BLeg {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) call_id: String,
    pub(crate) offer: String,
}

/// Where one fork's INVITE goes: a phone's contact through the edge that holds its flow,
/// or a trunk through the edge that brought the call.
#[derive(Debug, Clone)]
pub(crate) struct ForkTarget {
    pub(crate) uri: String,
    pub(crate) routes: Vec<String>,
    pub(crate) next_hop: SocketAddr,
    pub(crate) cseq: u32,
    /// An answer to a trunk's challenge: (header name, value).
    pub(crate) credentials: Option<(&'static str, String)>,
}

impl ForkTarget {
    pub(crate) fn of_binding(binding: &Binding) -> Option<ForkTarget> {
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

    pub(crate) fn of_trunk(leg: &TrunkLeg, edge: SocketAddr) -> ForkTarget {
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
pub(crate) struct SessionTimer {
    pub(crate) interval: u32,
    pub(crate) caller_refreshes: bool,
    /// The caller listed `timer` in Supported (then our 2xx carries `Require: timer`).
    pub(crate) caller_supports: bool,
    pub(crate) deadline: Instant,
}

impl SessionTimer {
    pub(crate) fn header(&self) -> String {
        let who = if self.caller_refreshes { "uac" } else { "uas" };
        format!("{};refresher={who}", self.interval)
    }

    /// When the side that does not refresh gives up: before the interval ends, by
    /// min(32 s, interval / 3) (RFC 4028 §10).
    pub(crate) fn expiry_from(&self, now: Instant) -> Instant {
        let lead = (self.interval / 3).min(32);
        now + Duration::from_secs(u64::from(self.interval - lead))
    }
}

impl Call {
    /// The INVITEs of forks still ringing, marked done (they are about to be CANCELled).
    pub(crate) fn take_ringing_forks(&mut self) -> Vec<Message> {
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

/// A caller's INVITE whose routing step is being looked up.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) tx: TxId,
    pub(crate) invite: Message,
    pub(crate) edge: SocketAddr,
    pub(crate) invited_at: Instant,
    /// The same instant on the wall clock (a CDR's start).
    pub(crate) invited_ms: i64,
    /// The caller CANCELled meanwhile (and was answered `487`).
    pub(crate) cancelled: bool,
}

/// What to do with a media answer.
#[derive(Debug)]
pub(crate) enum MediaJob {
    /// Leg B's answer taken: the caller gets `200` with the relay's SDP.
    Answer,
    /// A re-INVITE's offer taken: it goes on to the other leg.
    ReinviteOffer,
    /// The other leg's answer to a relayed re-INVITE taken: the offerer gets `200`.
    ReinviteAnswer(Box<(PendingReinvite, String)>),
    /// The offer for a blind transfer's new party.
    TransferOffer(Box<TransferOffer>),
    /// A blind transfer's new party answered.
    TransferAnswer(Box<TransferAnswer>),
    /// The offer for an attended transfer's new party.
    AttendedOffer(Box<AttendedOffer>),
    /// An attended transfer's new party accepted our re-INVITE.
    ReplaceAnswer(Box<ReplaceAnswer>),
    /// The relay's offer to take the staying party of a transfer off hold.
    ResumeOffer(Leg),
    /// An answered call's media counters (RTP timeout).
    Stats,
    /// The session is gone; its counters complete the ended call's CDR.
    Destroyed(Box<Ended>),
}

#[derive(Debug)]
pub(crate) struct TransferOffer {
    pub(crate) ring: Ring,
    pub(crate) leg: BLeg,
    pub(crate) targets: Vec<ForkTarget>,
}

#[derive(Debug)]
pub(crate) struct TransferAnswer {
    pub(crate) dialog: Dialog,
    pub(crate) transfer: Transfer,
    pub(crate) body: String,
}

#[derive(Debug)]
pub(crate) struct AttendedOffer {
    pub(crate) tx: TxId,
    pub(crate) msg: Message,
    pub(crate) leg: Leg,
    /// The consultation call and its leg towards the referrer.
    pub(crate) other: u64,
    pub(crate) other_referrer: Leg,
    pub(crate) call_id: String,
}

#[derive(Debug)]
pub(crate) struct ReplaceAnswer {
    pub(crate) dialog: Dialog,
    pub(crate) replacing: Replacing,
    pub(crate) transfer: Transfer,
    pub(crate) body: String,
}

/// An ended call waiting for its media counters to write its CDR.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) call: Call,
    pub(crate) disposition: Disposition,
    pub(crate) hangup_side: Option<String>,
    pub(crate) ended_ms: i64,
}
