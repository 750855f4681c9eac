//! The edge's only per-call state: one entry per call it admitted against its tenant's
//! caps, kept until the call ends, so the tenant's slot is released exactly once.
//!
//! Sans-I/O: the shell tells it what passes the edge (the admitted INVITE, the core's
//! answers to it, BYEs either way, a core lost) and the time; it says which slots to
//! release. A call ends when
//! - the core answers its INVITE with a final failure (busy, rejected, no answer,
//!   cancelled: `487`),
//! - a BYE of its dialog passes, from either side, with both tags right (a BYE whose tags
//!   do not match the call does not end it: the core refuses it with `481`),
//! - its setup outlives [`SETUP_TIMEOUT`] with no answer at all (the core went silent),
//! - the core that holds it stops answering the edge's pings: its calls still being set
//!   up are gone with it (the tracker hands back what it kept of each one's INVITE, for
//!   the edge to answer the caller, who would otherwise hear ringing until it gave up);
//!   its answered calls too, unless cores write them for takeover (then another core
//!   carries them on, and their BYE ends them as any other's).
//!
//! A call is known by its Call-ID and the caller's tag (`Call-ID\ntag`, the member the
//! shared counters hold): the caller's tag is the From tag of what the phone sends and of
//! the core's answers to it, and the To tag of what the core sends to the phone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_sip::{Message, Method};
use switchyard_state::calls::CallLimits;
use switchyard_types::TenantId;

/// How long a call may stay unanswered before the edge gives its slot back: longer than
/// the longest no-answer time a core allows (600 s), restarted by every provisional
/// answer. Only a core that went silent reaches it.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(660);

/// How long an ended call's INVITE still counts as a retransmission rather than a new
/// call: 64*T1, the life of the core's INVITE server transaction (RFC 3261 §17.2.1,
/// timer H). A retransmission that crosses the final answer (it may even arrive after the
/// ACK: the edge serves ACKs first) reaches the core's transaction, which absorbs it;
/// admitting it again would hold a slot no answer ever releases.
pub const RETRANSMISSION_WINDOW: Duration = Duration::from_secs(32);

/// A call the edge is about to admit: its INVITE passed authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCall {
    pub tenant: TenantId,
    pub call_id: String,
    /// The caller's From tag.
    pub tag: String,
    /// The CSeq of the INVITE that was admitted (its answers end or confirm the call).
    pub cseq: u32,
    pub core: SocketAddr,
    pub limits: CallLimits,
}

impl NewCall {
    /// The call's name in its tenant's set.
    pub fn member(&self) -> String {
        member(&self.call_id, &self.tag)
    }
}

fn member(call_id: &str, tag: &str) -> String {
    format!("{call_id}\n{tag}")
}

/// Why a slot was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ending {
    /// A final failure to the INVITE (including `487` after CANCEL).
    Failed,
    Bye,
    /// No final answer within [`SETUP_TIMEOUT`].
    SetupTimeout,
    CoreLost,
}

impl Ending {
    pub const ALL: [Ending; 4] = [
        Ending::Failed,
        Ending::Bye,
        Ending::SetupTimeout,
        Ending::CoreLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Failed => "failed",
            Ending::Bye => "bye",
            Ending::SetupTimeout => "setup_timeout",
            Ending::CoreLost => "core_lost",
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Ringing or trying; released when `until` passes.
    Setup { until: Instant },
    /// Answered; the core's tag is the dialog's other half.
    Up { core_tag: String },
}

#[derive(Debug)]
struct Entry<C> {
    tenant: TenantId,
    cseq: u32,
    core: SocketAddr,
    phase: Phase,
    /// What the edge needs to answer the caller itself (its INVITE and where it came
    /// from), kept until the core's final answer.
    caller: Option<C>,
}

/// The calls this edge holds slots for; `C` is what it keeps of each caller's INVITE
/// until the call is answered.
#[derive(Debug)]
pub struct CallTracker<C> {
    calls: HashMap<String, Entry<C>>,
    released: Vec<(TenantId, String, Ending)>,
    /// Calls ended within [`RETRANSMISSION_WINDOW`], and when.
    ended: HashMap<String, Instant>,
}

impl<C> Default for CallTracker<C> {
    fn default() -> Self {
        CallTracker {
            calls: HashMap::new(),
            released: Vec::new(),
            ended: HashMap::new(),
        }
    }
}

impl<C> CallTracker<C> {
    pub fn new() -> CallTracker<C> {
        CallTracker::default()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn holds(&self, call: &NewCall) -> bool {
        self.calls.contains_key(&call.member())
    }

    /// `call`'s INVITE is a retransmission: of a call held now, or of one that ended
    /// less than [`RETRANSMISSION_WINDOW`] ago. It is forwarded, never admitted again.
    pub fn is_retransmission(&self, call: &NewCall, now: Instant) -> bool {
        let member = call.member();
        self.calls.contains_key(&member)
            || self
                .ended
                .get(&member)
                .is_some_and(|at| now.saturating_duration_since(*at) < RETRANSMISSION_WINDOW)
    }

    /// The call was admitted and its INVITE goes to `call.core`.
    pub fn begin(&mut self, call: &NewCall, caller: C, now: Instant) {
        self.calls.entry(call.member()).or_insert(Entry {
            tenant: call.tenant.clone(),
            cseq: call.cseq,
            core: call.core,
            phase: Phase::Setup {
                until: now + SETUP_TIMEOUT,
            },
            caller: Some(caller),
        });
    }

    /// A response from a core, on its way to a phone.
    pub fn on_core_response(&mut self, msg: &Message, now: Instant) {
        let (Some(status), Ok(cseq)) = (msg.status(), msg.cseq()) else {
            return;
        };
        if cseq.method != Method::Invite {
            return;
        }
        let Some(key) = key_of(msg, Tag::From) else {
            return;
        };
        let Some(entry) = self.calls.get_mut(&key) else {
            return;
        };
        // Answers to a re-INVITE change nothing.
        if cseq.seq != entry.cseq || !matches!(entry.phase, Phase::Setup { .. }) {
            return;
        }
        match status {
            100..=199 => {
                entry.phase = Phase::Setup {
                    until: now + SETUP_TIMEOUT,
                }
            }
            200..=299 => {
                let core_tag = msg
                    .to_header()
                    .ok()
                    .and_then(|t| t.tag().map(str::to_owned))
                    .unwrap_or_default();
                entry.phase = Phase::Up { core_tag };
                entry.caller = None;
            }
            _ => self.release(key, Ending::Failed, now),
        }
    }

    /// A request forwarded by the edge: a BYE with both tags of a call ends it.
    pub fn on_request(&mut self, msg: &Message, from_core: bool, now: Instant) {
        if msg.method() != Some(&Method::Bye) {
            return;
        }
        let (ours, theirs) = if from_core {
            (Tag::To, Tag::From)
        } else {
            (Tag::From, Tag::To)
        };
        let Some(key) = key_of(msg, ours) else {
            return;
        };
        let Some(entry) = self.calls.get(&key) else {
            return;
        };
        let other = tag_of(msg, theirs);
        let ends = match &entry.phase {
            Phase::Up { core_tag } => other.as_deref() == Some(core_tag.as_str()),
            // Before the answer only the core can end a call with a BYE (a phone cancels).
            Phase::Setup { .. } => from_core,
        };
        if ends {
            self.release(key, Ending::Bye, now);
        }
    }

    /// `core` stopped answering: the calls it held are gone, except the answered ones
    /// when `answered_survive` (another core takes them over). Returns what was kept of
    /// the INVITEs of the calls still being set up, whose callers wait for an answer.
    pub fn on_core_lost(
        &mut self,
        core: SocketAddr,
        answered_survive: bool,
        now: Instant,
    ) -> Vec<C> {
        let lost: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, e)| e.core == core)
            .filter(|(_, e)| !answered_survive || matches!(e.phase, Phase::Setup { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        let mut waiting = Vec::new();
        for key in lost {
            if let Some(caller) = self.calls.get_mut(&key).and_then(|e| e.caller.take()) {
                waiting.push(caller);
            }
            self.release(key, Ending::CoreLost, now);
        }
        waiting
    }

    /// Releases setups that outlived their time.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, e)| matches!(e.phase, Phase::Setup { until } if until <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in late {
            self.release(key, Ending::SetupTimeout, now);
        }
        self.ended
            .retain(|_, at| now.saturating_duration_since(*at) < RETRANSMISSION_WINDOW);
    }

    /// Slots to give back since the last call: tenant, member, why.
    pub fn take_released(&mut self) -> Vec<(TenantId, String, Ending)> {
        std::mem::take(&mut self.released)
    }

    /// Every call held (for lease renewal).
    pub fn held(&self) -> Vec<(TenantId, String)> {
        self.calls
            .iter()
            .map(|(k, e)| (e.tenant.clone(), k.clone()))
            .collect()
    }

    /// Calls held per tenant.
    pub fn per_tenant(&self) -> HashMap<TenantId, usize> {
        let mut counts = HashMap::new();
        for e in self.calls.values() {
            *counts.entry(e.tenant.clone()).or_default() += 1;
        }
        counts
    }

    fn release(&mut self, key: String, why: Ending, now: Instant) {
        if let Some(e) = self.calls.remove(&key) {
            self.ended.insert(key.clone(), now);
            self.released.push((e.tenant, key, why));
        }
    }
}

#[derive(Clone, Copy)]
enum Tag {
    From,
    To,
}

fn tag_of(msg: &Message, which: Tag) -> Option<String> {
    let header = match which {
        Tag::From => msg.from_header(),
        Tag::To => msg.to_header(),
    };
    header.ok().and_then(|h| h.tag().map(str::to_owned))
}

fn key_of(msg: &Message, which: Tag) -> Option<String> {
    Some(member(msg.call_id().ok()?, &tag_of(msg, which)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const CORE: &str = "127.0.0.1:7101";

    fn call(id: &str) -> NewCall {
        NewCall {
            tenant: TenantId::from("acme"),
            call_id: id.to_owned(),
            tag: "caller".into(),
            cseq: 2,
            core: CORE.parse().unwrap(),
            limits: CallLimits {
                max_calls: 10,
                calls_per_second: 10,
            },
        }
    }

    fn response(call_id: &str, status: u16, cseq: &str, to_tag: Option<&str>) -> Message {
        let to = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        Message::parse_datagram(Bytes::from(format!(
            "SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nFrom: <sip:1001@acme>;tag=caller\r\nTo: <sip:1002@acme>{to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
        )))
        .unwrap()
    }

    fn bye(call_id: &str, from_tag: &str, to_tag: &str) -> Message {
        Message::parse_datagram(Bytes::from(format!(
            "BYE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK2\r\nFrom: <sip:a@acme>;tag={from_tag}\r\nTo: <sip:b@acme>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: 9 BYE\r\nContent-Length: 0\r\n\r\n"
        )))
        .unwrap()
    }

    fn endings(t: &mut CallTracker<&str>) -> Vec<Ending> {
        t.take_released().into_iter().map(|(_, _, e)| e).collect()
    }

    #[test]
    fn an_invite_retransmitted_after_its_final_answer_is_not_a_new_call() {
        let (mut t, now) = (CallTracker::new(), Instant::now());
        let c = call("c1");
        assert!(!t.is_retransmission(&c, now));
        t.begin(&c, "", now);
        assert!(t.is_retransmission(&c, now), "held: a retransmission");
        t.on_core_response(&response("c1", 486, "2 INVITE", Some("core")), now);
        assert_eq!(endings(&mut t), [Ending::Failed]);
        // The copy that crossed the 486 (or arrived after the ACK) is not admitted again:
        // the core's transaction absorbs it and no answer would release a second slot.
        let later = now + RETRANSMISSION_WINDOW - Duration::from_secs(1);
        assert!(t.is_retransmission(&c, later));
        t.handle_timeout(later);
        assert!(t.is_retransmission(&c, later));
        // Past the core transaction's life the memory goes.
        let gone = now + RETRANSMISSION_WINDOW;
        t.handle_timeout(gone);
        assert!(!t.is_retransmission(&c, gone));
        assert!(t.ended.is_empty());
    }

    #[test]
    fn a_failed_or_cancelled_setup_releases_its_slot_once() {
        let (mut t, now) = (CallTracker::new(), Instant::now());
        t.begin(&call("c1"), "", now);
        t.begin(&call("c1"), "", now);
        assert_eq!(t.len(), 1, "a retransmitted INVITE holds one slot");
        t.on_core_response(&response("c1", 180, "2 INVITE", Some("core")), now);
        // The answer to the 407-challenged INVITE (CSeq 1) is not this call's.
        t.on_core_response(&response("c1", 486, "1 INVITE", Some("core")), now);
        assert_eq!(t.len(), 1);
        t.on_core_response(&response("c1", 487, "2 INVITE", Some("core")), now);
        t.on_core_response(&response("c1", 487, "2 INVITE", Some("core")), now);
        assert_eq!(endings(&mut t), [Ending::Failed]);
        assert!(t.is_empty());
    }

    #[test]
    fn only_a_bye_with_both_tags_ends_an_answered_call() {
        let (mut t, now) = (CallTracker::new(), Instant::now());
        t.begin(&call("c1"), "", now);
        t.on_core_response(&response("c1", 200, "2 INVITE", Some("core")), now);
        // A failure to a re-INVITE leaves it up.
        t.on_core_response(&response("c1", 491, "3 INVITE", Some("core")), now);
        // A BYE with the wrong tag (the core answers 481) does not release it.
        t.on_request(&bye("c1", "caller", "guess"), false, now);
        t.on_request(&bye("c1", "guess", "caller"), true, now);
        assert!(t.take_released().is_empty());
        t.on_request(&bye("c1", "caller", "core"), false, now);
        assert_eq!(endings(&mut t), [Ending::Bye]);
        // The core ends another one.
        t.begin(&call("c2"), "", now);
        t.on_core_response(&response("c2", 200, "2 INVITE", Some("core")), now);
        t.on_request(&bye("c2", "core", "caller"), true, now);
        assert_eq!(endings(&mut t), [Ending::Bye]);
        assert!(t.is_empty());
    }

    #[test]
    fn a_phone_cannot_end_a_ringing_call_with_a_bye() {
        let (mut t, now) = (CallTracker::new(), Instant::now());
        t.begin(&call("c1"), "", now);
        t.on_request(&bye("c1", "caller", "anything"), false, now);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn silent_setups_time_out_and_provisionals_restart_the_clock() {
        let (mut t, now) = (CallTracker::new(), Instant::now());
        t.begin(&call("c1"), "", now);
        t.begin(&call("c2"), "", now);
        let later = now + SETUP_TIMEOUT - Duration::from_secs(1);
        t.on_core_response(&response("c2", 180, "2 INVITE", Some("core")), later);
        t.handle_timeout(now + SETUP_TIMEOUT);
        assert_eq!(endings(&mut t), [Ending::SetupTimeout]);
        assert_eq!(t.len(), 1);
        // An answered call never times out here.
        t.on_core_response(&response("c2", 200, "2 INVITE", Some("core")), later);
        t.handle_timeout(later + SETUP_TIMEOUT * 10);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_lost_core_releases_only_its_own_calls() {
        let (mut t, now) = (CallTracker::new(), Instant::now());
        t.begin(&call("c1"), "invite of c1", now);
        let mut elsewhere = call("c2");
        elsewhere.core = "127.0.0.1:7102".parse().unwrap();
        t.begin(&elsewhere, "invite of c2", now);
        // The caller of the lost call is to be answered; the other's call goes on.
        assert_eq!(
            t.on_core_lost(CORE.parse().unwrap(), false, now),
            ["invite of c1"]
        );
        assert_eq!(endings(&mut t), [Ending::CoreLost]);
        assert_eq!(t.held(), [(TenantId::from("acme"), elsewhere.member())]);
    }

    /// With takeover, an answered call of a dead core goes on elsewhere: it keeps its
    /// slot until its BYE; one still ringing died with the core.
    #[test]
    fn with_takeover_a_lost_core_releases_only_calls_not_yet_answered() {
        let (mut t, now) = (CallTracker::new(), Instant::now());
        t.begin(&call("up"), "invite of up", now);
        t.begin(&call("ringing"), "invite of ringing", now);
        t.on_core_response(&response("up", 200, "2 INVITE", Some("core-tag")), now);
        t.on_core_response(&response("ringing", 180, "2 INVITE", Some("core-tag")), now);
        // Only the ringing call's caller still waits for an answer.
        assert_eq!(
            t.on_core_lost(CORE.parse().unwrap(), true, now),
            ["invite of ringing"]
        );
        assert_eq!(endings(&mut t), [Ending::CoreLost]);
        assert_eq!(t.held(), [(TenantId::from("acme"), call("up").member())]);
        // Its BYE, through whichever core took it over, ends it.
        t.on_request(&bye("up", "caller", "core-tag"), false, now);
        assert_eq!(endings(&mut t), [Ending::Bye]);
        assert!(t.is_empty());
    }
}
