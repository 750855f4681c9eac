//! Takeover: an answered call's state as a record another core can carry on from.
//!
//! The engine asks its shell to persist a call's record ([`Output::Persist`]) once the
//! call is answered and again whenever what another core would need changes (a re-INVITE
//! relayed, a transfer completed), and to forget it when the call ends. A request inside
//! a dialog this engine does not know ([`Output::Recover`]) makes the shell look the
//! record up; the answer ([`Lookup::Recovered`]) adopts the call, and the request is then
//! handled as if the call had always been here: its BYE ends both legs and writes the
//! CDR, its re-INVITE goes through the media node that still holds the session.
//!
//! A call out through a trunk is carried over with its trunk (the new owner renews its
//! channel's lease and gives it back at the end; the trunk's credentials are not in the
//! record, nothing after the answer needs them). Not carried over: calls still ringing
//! and a transfer in progress; those end with the core that held them.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use switchyard_sip::Message;
use switchyard_sip::transaction::TxId;
use switchyard_sip_net::Peer;
use switchyard_store::TenantConfig;

use super::call::*;
use super::{CallKey, Engine, Output};
use crate::dialog::Dialog;

/// The version of [`DialogRecord`]; a core reads only its own.
pub const RECORD_VERSION: u32 = 1;

/// How much a new owner raises each leg's CSeq: it may not know of requests the old
/// owner sent after its last write (a refresh, a re-INVITE), and a CSeq may skip.
const CSEQ_MARGIN: u32 = 1000;

/// What another core needs to carry an answered call on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialogRecord {
    pub version: u32,
    pub tenant_id: String,
    /// The media session (the caller's Call-ID) and the media node that holds it.
    pub session: String,
    pub media_node: Option<String>,
    /// The core that wrote it.
    pub owner: SocketAddr,
    pub written_ms: i64,
    /// The caller's INVITE, as received (the answers to the caller are built from it).
    pub a_invite: String,
    pub a_tag: String,
    pub a: Dialog,
    pub b: Dialog,
    pub leg: LegRecord,
    pub started_ms: i64,
    pub answered_ms: Option<i64>,
    pub from_uri: String,
    pub to_uri: String,
    /// The edge that brought the call.
    pub edge: SocketAddr,
    pub presented: Option<String>,
    pub remote_sdp: [String; 2],
    /// RFC 4028 on leg A: interval, the caller refreshes, the caller supports it.
    pub session_timer: Option<(u32, bool, bool)>,
    pub attempts: Vec<AttemptRecord>,
    /// Leg B went out through this trunk.
    #[serde(default)]
    pub trunk: Option<TrunkRecord>,
    /// Cores that handed the call to another while they lived: a request that still
    /// reaches one of them is not a takeover, and it never adopts the call back.
    #[serde(default)]
    pub handed_from: Vec<SocketAddr>,
}

/// The trunk a call went out through (its credentials are never written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrunkRecord {
    pub leg: crate::routing::TrunkLeg,
    pub dialled: String,
    pub emergency: bool,
    /// The Call-ID its channel is held under.
    pub member: String,
}

/// Leg B's identity and offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegRecord {
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub offer: String,
}

/// One destination the call rang (the CDR's legs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub to: String,
    pub via: String,
    pub reason: String,
    pub at_ms: i64,
    pub result: Option<u16>,
}

/// The reasons an attempt may give, as the CDR spells them.
const REASONS: [&str; 7] = [
    "dialled",
    "hunt",
    "fallback",
    "forward-busy",
    "forward-no-answer",
    "failover",
    "transfer",
];

impl Engine {
    /// Asks the shell to write call `key`'s record (when it can be carried over).
    pub(crate) fn persist(&mut self, key: CallKey) {
        if !self.recover {
            return;
        }
        if let Some(record) = self.record_of(key) {
            self.push(Output::Persist(Box::new(record)));
        }
    }

    pub(super) fn record_of(&self, key: CallKey) -> Option<DialogRecord> {
        let call = self.calls.get(&key)?;
        if call.phase != Phase::Answered || call.transfer.is_some() {
            return None;
        }
        let b = call.b.clone()?;
        Some(DialogRecord {
            version: RECORD_VERSION,
            tenant_id: call.tenant_id.clone(),
            session: call.session.clone(),
            media_node: None,
            owner: self.local,
            written_ms: self.now.unix_ms,
            a_invite: String::from_utf8_lossy(&call.a_invite.to_bytes()).into_owned(),
            a_tag: call.a_tag.clone(),
            a: call.a.clone(),
            b,
            leg: LegRecord {
                from: call.leg.from.clone(),
                to: call.leg.to.clone(),
                call_id: call.leg.call_id.clone(),
                offer: call.leg.offer.clone(),
            },
            started_ms: call.started_ms,
            answered_ms: call.answered_ms,
            from_uri: call.from_uri.clone(),
            to_uri: call.to_uri.clone(),
            edge: call.edge,
            presented: call.presented.clone(),
            remote_sdp: call.remote_sdp.clone(),
            session_timer: call
                .session_timer
                .map(|t| (t.interval, t.caller_refreshes, t.caller_supports)),
            attempts: call
                .attempts
                .iter()
                .map(|a| AttemptRecord {
                    to: a.to.clone(),
                    via: a.via.clone(),
                    reason: a.reason.to_owned(),
                    at_ms: a.at_ms,
                    result: a.result,
                })
                .collect(),
            trunk: call.trunk.as_ref().map(|t| TrunkRecord {
                leg: t.leg.clone(),
                dialled: t.dialled.clone(),
                emergency: t.emergency,
                member: t.member.clone(),
            }),
            handed_from: call.handed_from.clone(),
        })
    }

    /// The shell's answer to [`Output::Recover`]: the record of the request's call (and
    /// its tenant's configuration), if another core left one. The call is adopted, then
    /// the request handled; without a record, `481` as always.
    pub(crate) fn on_recovered(
        &mut self,
        tx: TxId,
        msg: Message,
        record: Option<Box<(DialogRecord, Arc<TenantConfig>)>>,
    ) {
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        if !self.by_call_id.contains_key(&call_id)
            && let Some((record, config)) = record.map(|r| *r)
        {
            if record.version != RECORD_VERSION {
                warn!(
                    call_id,
                    version = record.version,
                    "a dialog record of another version"
                );
            } else if record.handed_from.contains(&self.local) {
                // Handed to another core, which lives: its requests reach it there.
                info!(call_id, to_core = %record.owner, "a request of a call handed on");
            } else if let Err(why) = self.adopt(record, config, "taken over from another core") {
                warn!(call_id, why, "a dialog record could not be adopted");
            }
        }
        self.in_dialog(tx, msg);
    }

    pub(super) fn adopt(
        &mut self,
        r: DialogRecord,
        config: Arc<TenantConfig>,
        how: &'static str,
    ) -> Result<(), &'static str> {
        let a_invite = Message::parse_datagram(bytes::Bytes::from(r.a_invite.into_bytes()))
            .map_err(|_| "unreadable INVITE")?;
        let key = self.next_key;
        self.next_key += 1;
        let (mut a, mut b) = (r.a, r.b);
        a.cseq = a.cseq.saturating_add(CSEQ_MARGIN);
        b.cseq = b.cseq.saturating_add(CSEQ_MARGIN);
        info!(
            tenant = r.tenant_id,
            call_id = a.call_id,
            from_core = ?r.handed_from.last().unwrap_or(&r.owner),
            how
        );
        self.by_call_id.insert(a.call_id.clone(), key);
        self.by_call_id.insert(b.call_id.clone(), key);
        let now = self.now.at;
        let attempts = r
            .attempts
            .into_iter()
            .map(|a| Attempt {
                reason: REASONS
                    .iter()
                    .find(|known| **known == a.reason)
                    .copied()
                    .unwrap_or("dialled"),
                to: a.to,
                via: a.via,
                at_ms: a.at_ms,
                result: a.result,
            })
            .collect();
        self.calls.insert(
            key,
            Call {
                tenant_id: r.tenant_id,
                session: r.session,
                // The caller's INVITE transaction ended long ago on the old core.
                a_tx: TxId(u64::MAX),
                a_invite,
                a_tag: r.a_tag,
                b_call_id: b.call_id.clone(),
                a,
                b: Some(b),
                forks: Vec::new(),
                phase: Phase::Answered,
                ringing_sent: true,
                a_final_sent: true,
                best_failure: None,
                started_ms: r.started_ms,
                invited_at: now,
                answered_ms: r.answered_ms,
                from_uri: r.from_uri,
                to_uri: r.to_uri,
                reinvite: None,
                unacked: None,
                session_timer: r.session_timer.map(
                    |(interval, caller_refreshes, caller_supports)| SessionTimer {
                        interval,
                        caller_refreshes,
                        caller_supports,
                        deadline: now,
                    },
                ),
                leg: BLeg {
                    from: r.leg.from,
                    to: r.leg.to,
                    call_id: r.leg.call_id,
                    offer: r.leg.offer,
                },
                config,
                forward_busy: None,
                forward_no_answer: None,
                rerouting: false,
                ring_deadline: now,
                hunt: Default::default(),
                hunt_ring: None,
                fallback: None,
                edge: r.edge,
                presented: r.presented,
                // Answered: no failover left, no challenge to answer again.
                trunk: r.trunk.map(|t| TrunkState {
                    leg: t.leg,
                    rest: Vec::new(),
                    dialled: t.dialled,
                    emergency: t.emergency,
                    fork: 0,
                    authenticated: true,
                    member: t.member,
                }),
                remote_sdp: r.remote_sdp,
                transfer: None,
                attempts,
                reroute_reason: "",
                handed_from: r
                    .handed_from
                    .into_iter()
                    .filter(|c| *c != self.local)
                    .collect(),
            },
        );
        // A refresh is due an interval from now at the latest: the old owner's timer
        // died with it.
        self.restart_session_timer(key);
        // The trunk channel's lease, last renewed by the old owner, is this core's now.
        let held: Vec<_> = self
            .calls
            .get(&key)
            .and_then(|c| c.trunk.as_ref())
            .map(|t| super::setup::held_by_leg(&t.leg, &t.member))
            .unwrap_or_default();
        if !held.is_empty() {
            let until_ms = self.now.unix_ms + crate::routing::CHANNEL_LEASE.as_millis() as i64;
            self.push(Output::RenewChannels { held, until_ms });
        }
        // The new owner writes the record as its own.
        self.persist(key);
        Ok(())
    }

    /// A request in a dialog of no call here: the shell looks for another core's record.
    pub(crate) fn recover(&mut self, tx: TxId, msg: Message, peer: Peer) {
        self.push(Output::Recover { tx, msg, peer });
    }
}
