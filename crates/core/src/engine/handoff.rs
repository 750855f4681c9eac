//! Handing an answered call from one core to another, while both live.
//!
//! Calls are spread over a tenant's cores by their Call-ID, so an attended transfer's
//! REFER (in the first call) may reach a core that does not hold the consultation call
//! it replaces. That core asks the holder for it ([`Output::Claim`]); the holder gives
//! it up if it is quiet (answered, nothing in flight), without a word to either phone
//! and keeping its media session ([`Engine::hand_over`]); the asker adopts it as a
//! takeover would ([`Lookup::Claimed`](super::Lookup::Claimed)) and goes on with the
//! transfer, whose re-INVITE gives the new party this core's Contact.
//!
//! The record the holder hands over names it in `handed_from`: a request of the call
//! that still reaches it (the transferor's, sent to its Contact) gets `481` and never
//! takes the call back from Redis.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchyard_sip::Message;
use switchyard_sip::transaction::TxId;
use switchyard_store::TenantConfig;
use tracing::{info, warn};

use super::call::*;
use super::recovery::{DialogRecord, RECORD_VERSION};
use super::{Clock, Engine, MediaJob, Output};
use switchyard_media_control::Leg;

/// One core asks another for a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffAsk {
    /// The Call-ID of the dialog the asker was told of (either leg's).
    pub call_id: String,
    /// That dialog's two tags, as the asker was told them (in either order).
    pub tags: [String; 2],
    /// The tenant of the call the asker holds: another tenant's call is never given.
    pub tenant_id: String,
    pub claimant: SocketAddr,
    /// Wall-clock milliseconds after which the asker has given up: later, the call stays.
    pub deadline_ms: i64,
}

/// Why a core keeps a call it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// No such call here (or not of that tenant, or other tags: the asker is not told).
    NotHere,
    /// It is not quiet: ringing, a re-INVITE, a transfer or a media request in flight.
    Busy,
    /// The asker's deadline passed.
    TooLate,
}

impl Kept {
    pub fn reason(self) -> &'static str {
        match self {
            Kept::NotHere => "no such call",
            Kept::Busy => "the call is busy",
            Kept::TooLate => "asked too late",
        }
    }
}

/// The leg of `call` whose dialog has `call_id` and the tags `named` (in either order).
pub(super) fn leg_named(call: &Call, call_id: &str, named: [&str; 2]) -> Option<Leg> {
    let (leg, dialog) = call.leg_of(call_id);
    let dialog = dialog.filter(|d| d.call_id == call_id)?;
    let tags = [
        switchyard_sip::headers::tag_of(&dialog.local)?,
        switchyard_sip::headers::tag_of(&dialog.remote)?,
    ];
    (tags == named || tags == [named[1], named[0]]).then_some(leg)
}

impl Engine {
    /// Another core asks for a call: if it is here, of the asker's tenant, with those
    /// tags, and quiet, it leaves this engine without a word to either phone (its media
    /// session, trunk channel and record stay; no CDR here) and its record is returned
    /// for the asker to adopt.
    pub fn hand_over(&mut self, ask: &HandoffAsk, now: Clock) -> Result<DialogRecord, Kept> {
        self.now = now;
        if now.unix_ms > ask.deadline_ms {
            return Err(Kept::TooLate);
        }
        let key = *self.by_call_id.get(&ask.call_id).ok_or(Kept::NotHere)?;
        let call = self.calls.get(&key).ok_or(Kept::NotHere)?;
        let named = [ask.tags[0].as_str(), ask.tags[1].as_str()];
        if call.tenant_id != ask.tenant_id || leg_named(call, &ask.call_id, named).is_none() {
            return Err(Kept::NotHere);
        }
        // Requests still in `by_req` are answered ones whose transactions linger (an
        // INVITE's for 32 s after its 2xx): what is still open shows in the call.
        let media_out = self
            .jobs
            .values()
            .any(|(k, j)| *k == key && !matches!(j, MediaJob::Stats));
        if call.phase != Phase::Answered
            || call.reinvite.is_some()
            || call.unacked.is_some()
            || media_out
        {
            return Err(Kept::Busy);
        }
        // No record while a transfer runs (the call is not quiet either).
        let mut record = self.record_of(key).ok_or(Kept::Busy)?;
        record.owner = ask.claimant;
        if !record.handed_from.contains(&self.local) {
            record.handed_from.push(self.local);
        }
        let call = self.calls.remove(&key).expect("call");
        self.by_call_id.remove(&call.a.call_id);
        self.by_call_id.remove(&call.b_call_id);
        self.by_req.retain(|_, (k, _)| *k != key);
        self.jobs.retain(|_, (k, _)| *k != key);
        self.disarm_all(key);
        info!(
            tenant = call.tenant_id,
            call_id = call.a.call_id,
            to_core = %ask.claimant,
            "call handed to another core"
        );
        Ok(record)
    }

    /// The attended transfer on call `key` replaces a dialog not here: ask the core that
    /// holds it (the answer is a [`super::Lookup::Claimed`]). False when it was asked
    /// already for this REFER (the answer came and the dialog is still not here).
    pub(super) fn claim(
        &mut self,
        key: super::CallKey,
        tx: TxId,
        msg: &Message,
        call_id: &str,
        tags: [&str; 2],
    ) -> bool {
        if !self.handoff || !self.claims.insert(tx) {
            return false;
        }
        let Some(call) = self.calls.get(&key) else {
            self.claims.remove(&tx);
            return false;
        };
        let ask = HandoffAsk {
            call_id: call_id.to_owned(),
            tags: [tags[0].to_owned(), tags[1].to_owned()],
            tenant_id: call.tenant_id.clone(),
            claimant: self.local,
            deadline_ms: self.now.unix_ms + CLAIM_PATIENCE_MS,
        };
        self.push(Output::Claim {
            tx,
            msg: msg.clone(),
            ask,
        });
        true
    }

    /// The answer to [`Output::Claim`]: the call, adopted here if it came, then the
    /// REFER handled again (it finds the call, or answers `481`).
    pub(crate) fn on_claimed(
        &mut self,
        tx: TxId,
        msg: Message,
        record: Option<Box<(DialogRecord, Arc<TenantConfig>)>>,
    ) {
        if let Some((record, config)) = record.map(|r| *r) {
            let call_id = record.a.call_id.clone();
            if record.version != RECORD_VERSION {
                warn!(call_id, "a handed-over call's record of another version");
            } else if self.by_call_id.contains_key(&call_id) {
                warn!(call_id, "a handed-over call is here already");
            } else if let Err(why) = self.adopt(record, config, "handed over by another core") {
                warn!(call_id, why, "a handed-over call could not be adopted");
            } else if self.draining
                && let Some(&key) = self.by_call_id.get(&call_id)
            {
                // It came while this core stops: it ends here, both legs hung up and its
                // CDR written, rather than left with no core at all.
                self.hang_up_both(key, "shutdown");
            }
        }
        self.in_dialog(tx, msg);
        self.claims.remove(&tx);
    }
}

/// How long a claim may take before the holder must keep the call (the asker waits a
/// little longer, so a call is never given to an asker that stopped waiting).
pub const CLAIM_PATIENCE_MS: i64 = 1_500;
