//! Transfers: blind (REFER, RFC 3515) and attended (REFER with Replaces, RFC 3891),
//! with the referrer kept informed by NOTIFYs of `message/sipfrag`.

use tracing::{info, warn};

use switchyard_media_control::{Leg, Reply, Request};
use switchyard_sip::transaction::TxId;
use switchyard_sip::{HeaderName, Message, Method};

use super::call::*;
use super::handoff::leg_named;
use super::in_dialog::leg_index;
use super::setup::{held_by_leg, held_by_ring, trunk_leg_identity};
use super::{CallKey, Engine, ForwardFor, MediaError, Output, Purpose};
use crate::dialog::{Dialog, random_token};
use crate::metrics::Disposition;
use crate::routing::{self, Reroute, Ring, TrunkLeg};

impl Engine {
    /// A REFER on `leg` of an answered call (blind transfer, RFC 3515): `202`, a NOTIFY
    /// of `100 Trying`, and the Refer-To's number is looked up in the tenant's dial plan
    /// by the shell. A Refer-To with Replaces is an attended transfer.
    pub(super) fn on_refer(&mut self, key: CallKey, leg: Leg, tx: TxId, msg: Message) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.phase != Phase::Answered || call.transfer.is_some() || call.reinvite.is_some() {
            return self.reply(tx, &msg, 491, "Request Pending");
        }
        let Some(refer_to) = msg.header(HeaderName::ReferTo).map(str::to_owned) else {
            return self.reply(tx, &msg, 400, "Missing Refer-To");
        };
        let Ok(target) = switchyard_sip::headers::NameAddr::parse_header(&refer_to, "Refer-To")
        else {
            return self.reply(tx, &msg, 400, "Malformed Refer-To");
        };
        let uri = target.uri().ok();
        let sip = uri.as_ref().and_then(|u| u.as_sip());
        if let Some(replaces) = sip.and_then(|s| s.headers).and_then(replaces_of) {
            return self.on_attended_refer(key, leg, tx, msg, replaces);
        }
        let Some(number) = sip.and_then(|s| s.user).map(str::to_owned) else {
            return self.reply(tx, &msg, 400, "Refer-To names no number");
        };
        self.reply(tx, &msg, 202, "Accepted");
        let leg_b = format!("{}@sy", random_token());
        let at_ms = self.now.unix_ms;
        let call = self.calls.get_mut(&key).expect("call");
        info!(call_id = call.a.call_id, ?leg, number, "blind transfer");
        let output = Output::Forward {
            key,
            purpose: ForwardFor::Transfer,
            config: call.config.clone(),
            tenant: call.tenant_id.clone(),
            leg_b: leg_b.clone(),
            target: Reroute::Dialled(number.clone()),
            release: None,
            at_ms,
        };
        call.begin_attempt(
            number.clone(),
            format!("transfer:{}", leg_name(leg)),
            "transfer",
            at_ms,
        );
        call.transfer = Some(Transfer::new(leg, number, leg_b, None));
        self.notify_transfer(key, leg, "SIP/2.0 100 Trying", false);
        self.push(output);
    }

    /// The relay's side towards a transfer's new party: the staying party's last SDP
    /// offered again; the answer comes back as `job`.
    fn offer_for_new_party(&mut self, key: CallKey, stays: Leg, job: MediaJob) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        // The staying party may be on hold (the referrer held it while it consulted):
        // the new party is offered a two-way stream, and the staying party is taken off
        // hold once the new party answers (`resume`).
        let request = Request::Offer {
            session: call.session.clone(),
            from: stays,
            sdp: two_way(&call.remote_sdp[leg_index(stays)]),
        };
        self.media(Some((key, job)), request);
    }

    /// After a transfer: the staying party is re-INVITEd with the relay's side of the
    /// new party's SDP, so it learns the new party's media and leaves a hold the referrer
    /// put it on.
    fn resume(&mut self, key: CallKey, stays: Leg, new_party_sdp: String) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let request = Request::Offer {
            session: call.session.clone(),
            from: stays.other(),
            sdp: new_party_sdp,
        };
        self.media(Some((key, MediaJob::ResumeOffer(stays))), request);
    }

    /// The relay's offer for the staying party is ready: the re-INVITE goes out.
    pub(super) fn on_resume_offer(
        &mut self,
        key: CallKey,
        stays: Leg,
        reply: Result<Reply, MediaError>,
    ) {
        let Ok(Reply::Sdp { sdp }) = reply else {
            return warn!("no offer to take the staying party off hold");
        };
        let local = self.local;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.reinvite.is_some() {
            // A re-INVITE of the parties' own is under way; it carries the media.
            return;
        }
        let dialog = match stays {
            Leg::A => Some(&mut call.a),
            Leg::B => call.b.as_mut(),
        };
        let Some(dialog) = dialog else { return };
        let request = dialog.request(Method::Invite, local, Some(&sdp), None);
        let peer = dialog.peer(local);
        self.send(key, Purpose::Resume(stays), request, peer);
    }

    /// The staying party's answer to our resuming re-INVITE: ACKed, and its SDP given
    /// to the media node.
    pub(super) fn on_resume_response(&mut self, key: CallKey, stays: Leg, msg: Message) {
        let status = msg.status().unwrap_or(0);
        if !(200..300).contains(&status) {
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let dialog = match stays {
            Leg::A => Some(call.a.clone()),
            Leg::B => call.b.clone(),
        };
        let body = String::from_utf8_lossy(msg.body()).into_owned();
        call.remote_sdp[leg_index(stays)] = body.clone();
        let session = call.session.clone();
        if let Some(dialog) = dialog {
            self.send_ack(&dialog, cseq);
        }
        self.media(
            None,
            Request::Answer {
                session,
                from: stays,
                sdp: body,
            },
        );
    }

    /// A NOTIFY of a transfer's progress to the referrer (`message/sipfrag`).
    pub(super) fn notify_transfer(&mut self, key: CallKey, leg: Leg, frag: &str, done: bool) {
        let local = self.local;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let dialog = match leg {
            Leg::A => &mut call.a,
            Leg::B => match call.b.as_mut() {
                Some(b) => b,
                None => return,
            },
        };
        let state = if done {
            "terminated;reason=noresource".to_owned()
        } else {
            "active;expires=60".to_owned()
        };
        let request = dialog.request_with(
            Method::Notify,
            local,
            &[("Event", "refer".to_owned()), ("Subscription-State", state)],
            Some(("message/sipfrag;version=2.0", &format!("{frag}\r\n"))),
            None,
        );
        let peer = dialog.peer(local);
        self.send(key, Purpose::Notify, request, peer);
    }

    /// The transfer target's contacts (or trunk) came back: an offer of what the party
    /// staying in the call last said is made for it.
    pub(super) fn on_transfer_routed(&mut self, key: CallKey, outcome: routing::Forwarded) {
        let Some(call) = self.calls.get_mut(&key) else {
            if let (Ok(ring), Some(member)) =
                (&outcome, self.orphaned.remove(&(key, ForwardFor::Transfer)))
            {
                self.release(held_by_ring(ring, &member));
            }
            return;
        };
        let Some(transfer) = call.transfer.as_ref() else {
            return;
        };
        let referrer = transfer.referrer;
        let member = transfer.call_id.clone();
        let stays = referrer.other();
        let ring = match outcome {
            Ok(ring) => ring,
            Err(refusal) => {
                let reason = refusal.reason.clone();
                return self.transfer_failed(key, None, refusal.status, &reason);
            }
        };
        // The staying party's identity towards the new one.
        let domain = call.config.tenant.domain.clone();
        let from = match stays {
            Leg::A => call.from_uri.clone(),
            Leg::B => call.to_uri.clone(),
        };
        let leg = BLeg {
            from: format!("<{from}>;tag={}", random_token()),
            to: String::new(),
            call_id: member,
            offer: String::new(),
        };
        let (leg, targets) = match &ring {
            Ring::Phones { callee, bindings } => (
                BLeg {
                    to: format!("<sip:{}@{domain}>", callee.number),
                    ..leg
                },
                bindings
                    .iter()
                    .filter_map(ForkTarget::of_binding)
                    .collect::<Vec<_>>(),
            ),
            Ring::Trunk { leg: trunk, .. } => {
                let presenting = call.presenting();
                (
                    trunk_leg_identity(&leg, trunk, &presenting),
                    vec![ForkTarget::of_trunk(trunk, call.edge)],
                )
            }
        };
        // The channel the new party's trunk leg holds stays held while it rings.
        if let (Some(t), Ring::Trunk { leg: trunk, .. }) = (call.transfer.as_mut(), &ring) {
            t.trunk = Some(trunk.clone());
        }
        self.offer_for_new_party(
            key,
            stays,
            MediaJob::TransferOffer(Box::new(TransferOffer { ring, leg, targets })),
        );
    }

    /// The offer for a blind transfer's new party is ready: it rings.
    pub(super) fn on_transfer_offer(
        &mut self,
        key: CallKey,
        offer: TransferOffer,
        reply: Result<Reply, MediaError>,
    ) {
        let TransferOffer { ring, leg, targets } = offer;
        let Some(call) = self.calls.get(&key) else {
            return self.release(held_by_ring(&ring, &leg.call_id));
        };
        if call.transfer.is_none() {
            return self.release(held_by_ring(&ring, &leg.call_id));
        }
        let Ok(Reply::Sdp { sdp }) = reply else {
            return self.transfer_failed(key, None, 488, "Not Acceptable Here");
        };
        let leg = BLeg { offer: sdp, ..leg };
        let forks = self.fork_as(key, 0, &leg, &targets, Purpose::Transfer);
        if forks.is_empty() {
            return self.transfer_failed(key, None, 480, "Temporarily Unavailable");
        }
        if let Some(t) = self.calls.get_mut(&key).and_then(|c| c.transfer.as_mut()) {
            t.forks = forks;
            t.leg = Some(leg);
        }
    }

    /// An answer from a transfer's new party: on `2xx` the media node takes its answer
    /// (then it takes the referrer's place); a failure of every fork leaves the call as
    /// it was and tells the referrer why.
    pub(super) fn on_transfer_response(&mut self, key: CallKey, i: usize, msg: Message) {
        let status = msg.status().unwrap_or(0);
        if status < 200 {
            return;
        }
        let Some(transfer) = self.calls.get_mut(&key).and_then(|c| c.transfer.as_mut()) else {
            return;
        };
        let Some(fork) = transfer.forks.get_mut(i) else {
            return;
        };
        let already_done = std::mem::replace(&mut fork.done, true);
        let request = fork.request.clone();
        if !(200..300).contains(&status) {
            if already_done {
                return;
            }
            let reason = msg.reason().unwrap_or("").to_owned();
            return self.transfer_failed(key, Some(i), status, &reason);
        }
        let Some(dialog) = Dialog::as_uac(&request, &msg, 1) else {
            return;
        };
        self.send_ack(&dialog, 1);
        if already_done {
            // A second answer: hung up at once.
            return self.hang_up_dialog(dialog);
        }
        let call = self.calls.get_mut(&key).expect("call present");
        let transfer = call.transfer.take().expect("transfer present");
        let body = String::from_utf8_lossy(msg.body()).into_owned();
        let request = Request::Answer {
            session: call.session.clone(),
            from: transfer.referrer,
            sdp: body.clone(),
        };
        for other in transfer.forks.iter().filter(|f| !f.done) {
            self.cancel_fork(key, &other.request);
        }
        self.media(
            Some((
                key,
                MediaJob::TransferAnswer(Box::new(TransferAnswer {
                    dialog,
                    transfer,
                    body,
                })),
            )),
            request,
        );
    }

    /// The media node took the new party's answer: it replaces the referrer, who is told
    /// `200 OK` and hung up.
    pub(super) fn on_transfer_answer(
        &mut self,
        key: CallKey,
        answer: TransferAnswer,
        reply: Result<Reply, MediaError>,
    ) {
        let TransferAnswer {
            dialog,
            transfer,
            body,
        } = answer;
        let referrer = transfer.referrer;
        if !self.calls.contains_key(&key) || reply.is_err() {
            // The call ended meanwhile, or its media cannot take the new party.
            self.hang_up_dialog(dialog);
            if let Some(trunk) = &transfer.trunk {
                self.release(held_by_leg(trunk, &transfer.call_id));
            }
            if transfer.referrer_gone {
                return self.abandon_transferred(key, referrer);
            }
            self.notify_transfer(key, referrer, "SIP/2.0 488 Not Acceptable Here", true);
            return;
        }
        if let Some(call) = self.calls.get_mut(&key) {
            call.conclude_attempt(200);
        }
        if !transfer.referrer_gone {
            self.notify_transfer(key, referrer, "SIP/2.0 200 OK", true);
            self.send_in_dialog(key, referrer, Method::Bye, None);
        }
        self.replace_leg(key, referrer, dialog, body.clone());
        self.resume(key, referrer.other(), body);
        if let Some(trunk) = transfer.trunk {
            self.keep_transferred_trunk(key, referrer, trunk, transfer.call_id);
        }
        info!(target = transfer.target, "transferred");
        self.persist(key);
    }

    /// A transfer's new party reached through a trunk takes over the call's trunk
    /// accounting when it replaced leg B (the old B's channel, if any, is freed). The
    /// call tracks one trunk leg: a new party on leg A beside a trunk on leg B gives its
    /// channel back now (it goes uncounted; logged).
    fn keep_transferred_trunk(
        &mut self,
        key: CallKey,
        referrer: Leg,
        trunk: TrunkLeg,
        member: String,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return self.release(held_by_leg(&trunk, &member));
        };
        let kept = |trunk, member| TrunkState {
            leg: trunk,
            rest: Vec::new(),
            dialled: String::new(),
            emergency: false,
            fork: usize::MAX,
            authenticated: true,
            member,
        };
        match (referrer, call.trunk.take()) {
            (Leg::B, old) => {
                call.trunk = Some(kept(trunk, member));
                if let Some(old) = old {
                    self.release(held_by_leg(&old.leg, &old.member));
                }
            }
            (Leg::A, None) => call.trunk = Some(kept(trunk, member)),
            (Leg::A, Some(other)) => {
                warn!(
                    trunk = trunk.trunk_id,
                    "second trunk leg on one call: its channel goes uncounted"
                );
                call.trunk = Some(other);
                self.release(held_by_leg(&trunk, &member));
            }
        }
    }

    /// Puts a new party's dialog on `leg` of the call (the referrer's, already hung up):
    /// its Call-ID now leads to this call, the old one to nothing.
    fn replace_leg(&mut self, key: CallKey, leg: Leg, dialog: Dialog, sdp: String) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.remote_sdp[leg_index(leg)] = sdp;
        let new_call_id = dialog.call_id.clone();
        let old = match leg {
            Leg::A => {
                // The caller's transaction is long over; its session timer was its own.
                call.session_timer = None;
                call.unacked = None;
                std::mem::replace(&mut call.a, dialog)
            }
            Leg::B => {
                call.b_call_id = new_call_id.clone();
                match call.b.replace(dialog) {
                    Some(old) => old,
                    None => return,
                }
            }
        };
        info!(old = old.call_id, new = new_call_id, "leg replaced");
        self.by_call_id.remove(&old.call_id);
        self.by_call_id.insert(new_call_id, key);
    }

    /// Attended transfer: a REFER whose Refer-To replaces the referrer's consultation
    /// call (RFC 3891). That call's other party is re-INVITEd with this call's media and,
    /// once it accepts, takes the referrer's place here; the referrer is hung up on both
    /// calls. The consultation call must be the same tenant's, and the Replaces must name
    /// both of its tags (knowing a Call-ID is not enough to take a call over).
    fn on_attended_refer(
        &mut self,
        key: CallKey,
        leg: Leg,
        tx: TxId,
        msg: Message,
        replaces: (String, String, String),
    ) {
        let (call_id, to_tag, from_tag) = replaces;
        let named = [to_tag.as_str(), from_tag.as_str()];
        let found = self.by_call_id.get(&call_id).copied();
        let consultation = found.filter(|k| *k != key).and_then(|k| {
            let other = self.calls.get(&k)?;
            let this = self.calls.get(&key)?;
            if other.tenant_id != this.tenant_id || other.phase != Phase::Answered {
                return None;
            }
            leg_named(other, &call_id, named).map(|referrer| (k, referrer))
        });
        let Some((other, other_referrer)) = consultation else {
            // Not here at all: another core may hold it (once per REFER).
            if found.is_none() && self.claim(key, tx, &msg, &call_id, named) {
                return;
            }
            return self.reply(tx, &msg, 481, "No such call to replace");
        };
        // Nothing else may start on this call while the offer is made.
        if let Some(call) = self.calls.get_mut(&key) {
            call.transfer = Some(Transfer::new(leg, call_id.clone(), String::new(), None));
        }
        let job = MediaJob::AttendedOffer(Box::new(AttendedOffer {
            tx,
            msg,
            leg,
            other,
            other_referrer,
            call_id,
        }));
        self.offer_for_new_party(key, leg.other(), job);
    }

    /// The offer for an attended transfer's new party is ready: the referrer gets `202`
    /// and the party our re-INVITE.
    pub(super) fn on_attended_offer(
        &mut self,
        key: CallKey,
        offer: AttendedOffer,
        reply: Result<Reply, MediaError>,
    ) {
        let AttendedOffer {
            tx,
            msg,
            leg,
            other,
            other_referrer,
            call_id,
        } = offer;
        let Some(call) = self.calls.get_mut(&key) else {
            return self.reply(tx, &msg, 481, "Call Gone");
        };
        let Ok(Reply::Sdp { sdp }) = reply else {
            call.transfer = None;
            return self.reply(tx, &msg, 488, "Not Acceptable Here");
        };
        let party = other_referrer.other();
        let local = self.local;
        let Some(dialog) = self.calls.get_mut(&other).and_then(|c| match party {
            Leg::A => Some(&mut c.a),
            Leg::B => c.b.as_mut(),
        }) else {
            if let Some(call) = self.calls.get_mut(&key) {
                call.transfer = None;
            }
            return self.reply(tx, &msg, 481, "No such call to replace");
        };
        let request = dialog.request(Method::Invite, local, Some(&sdp), None);
        let cseq = dialog.cseq;
        let peer = dialog.peer(local);
        self.reply(tx, &msg, 202, "Accepted");
        let at_ms = self.now.unix_ms;
        let call = self.calls.get_mut(&key).expect("call");
        call.begin_attempt(
            call_id.clone(),
            format!("transfer:{}", leg_name(leg)),
            "attended-transfer",
            at_ms,
        );
        let replacing = Replacing {
            call: other,
            party,
            referrer: other_referrer,
            cseq,
        };
        call.transfer = Some(Transfer::new(leg, call_id, String::new(), Some(replacing)));
        self.send(key, Purpose::Replace, request, peer);
        self.notify_transfer(key, leg, "SIP/2.0 100 Trying", false);
    }

    /// The attended transfer's new party answered our re-INVITE: on `2xx` the media
    /// node takes its answer (then it takes the referrer's place).
    pub(super) fn on_replace_response(&mut self, key: CallKey, msg: Message) {
        let status = msg.status().unwrap_or(0);
        if status < 200 {
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(replacing) = call.transfer.as_ref().and_then(|t| t.replacing) else {
            return;
        };
        let Some(mut dialog) =
            self.calls
                .get(&replacing.call)
                .and_then(|c| match replacing.party {
                    Leg::A => Some(c.a.clone()),
                    Leg::B => c.b.clone(),
                })
        else {
            return self.transfer_failed(key, None, 481, "Call Gone");
        };
        if !(200..300).contains(&status) {
            let reason = msg.reason().unwrap_or("").to_owned();
            return self.transfer_failed(key, None, status, &reason);
        }
        // The re-INVITE's CSeq is the dialog's from now on.
        dialog.cseq = replacing.cseq;
        self.send_ack(&dialog, replacing.cseq);
        let call = self.calls.get_mut(&key).expect("call");
        let transfer = call.transfer.take().expect("transfer");
        let body = String::from_utf8_lossy(msg.body()).into_owned();
        let request = Request::Answer {
            session: call.session.clone(),
            from: transfer.referrer,
            sdp: body.clone(),
        };
        self.media(
            Some((
                key,
                MediaJob::ReplaceAnswer(Box::new(ReplaceAnswer {
                    dialog,
                    replacing,
                    transfer,
                    body,
                })),
            )),
            request,
        );
    }

    /// The media node took the new party's answer: the consultation call ends without
    /// it, the party takes the referrer's place, the referrer is told `200 OK` and hung
    /// up.
    pub(super) fn on_replace_answer(
        &mut self,
        key: CallKey,
        answer: ReplaceAnswer,
        reply: Result<Reply, MediaError>,
    ) {
        let ReplaceAnswer {
            dialog,
            replacing,
            transfer,
            body,
        } = answer;
        let referrer = transfer.referrer;
        if !self.calls.contains_key(&key) {
            return;
        }
        if reply.is_err() {
            self.notify_transfer(key, referrer, "SIP/2.0 488 Not Acceptable Here", true);
            return;
        }
        if let Some(call) = self.calls.get_mut(&key) {
            call.conclude_attempt(200);
        }
        // The consultation call ends: its referrer's leg hung up, the party kept.
        let party_call_id = dialog.call_id.clone();
        self.send_in_dialog(replacing.call, replacing.referrer, Method::Bye, None);
        self.finish(replacing.call, Disposition::Answered, Some("transferred"));
        self.notify_transfer(key, referrer, "SIP/2.0 200 OK", true);
        self.send_in_dialog(key, referrer, Method::Bye, None);
        self.replace_leg(key, referrer, dialog, body.clone());
        self.by_call_id.insert(party_call_id, key);
        self.resume(key, referrer.other(), body);
        info!("attended transfer done");
        self.persist(key);
    }

    /// A transfer did not reach its target (fork `i` failed, or the lookup did): once
    /// every fork failed, the referrer hears why and the call goes on as it was.
    pub(super) fn transfer_failed(
        &mut self,
        key: CallKey,
        i: Option<usize>,
        status: u16,
        reason: &str,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(transfer) = call.transfer.as_mut() else {
            return;
        };
        if let Some(fork) = i.and_then(|i| transfer.forks.get_mut(i)) {
            fork.done = true;
        }
        if transfer.forks.iter().any(|f| !f.done) {
            return;
        }
        let (referrer, referrer_gone) = (transfer.referrer, transfer.referrer_gone);
        let held = transfer
            .trunk
            .as_ref()
            .map(|t| held_by_leg(t, &transfer.call_id))
            .unwrap_or_default();
        call.transfer = None;
        call.conclude_attempt(status);
        info!(status, reason, "transfer failed");
        self.release(held);
        if referrer_gone {
            return self.abandon_transferred(key, referrer);
        }
        self.notify_transfer(key, referrer, &format!("SIP/2.0 {status} {reason}"), true);
    }

    /// A blind transfer failed after its referrer left: nobody is left to take the call
    /// back, so the party being transferred is hung up.
    fn abandon_transferred(&mut self, key: CallKey, referrer: Leg) {
        if self.calls.contains_key(&key) {
            self.send_in_dialog(key, referrer.other(), Method::Bye, None);
            self.finish(key, Disposition::Answered, Some("transfer-failed"));
        }
    }
}

/// The Replaces of a Refer-To URI's headers (`Replaces=CALLID%3Bto-tag%3DX%3Bfrom-tag%3DY`),
/// decoded: (Call-ID, to-tag, from-tag).
pub(super) fn replaces_of(headers: &str) -> Option<(String, String, String)> {
    let value = headers.split('&').find_map(|h| {
        let (name, value) = h.split_once('=')?;
        name.eq_ignore_ascii_case("replaces").then_some(value)
    })?;
    let decoded = percent_decode(value)?;
    let mut parts = decoded.split(';');
    let call_id = parts.next()?.trim().to_owned();
    let (mut to_tag, mut from_tag) = (None, None);
    for p in parts {
        match p.trim().split_once('=') {
            Some((n, v)) if n.eq_ignore_ascii_case("to-tag") => to_tag = Some(v.to_owned()),
            Some((n, v)) if n.eq_ignore_ascii_case("from-tag") => from_tag = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((call_id, to_tag?, from_tag?))
}

/// `%XX` escapes decoded (`None` for a broken escape or a result that is not UTF-8).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(super) fn leg_name(leg: Leg) -> &'static str {
    match leg {
        Leg::A => "caller",
        Leg::B => "callee",
    }
}

/// `sdp` with its direction attributes made two-way (`a=sendonly`, `a=recvonly` and
/// `a=inactive` lines become `a=sendrecv`).
fn two_way(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .map(|line| {
            let bare = line.trim_end();
            if matches!(bare, "a=sendonly" | "a=recvonly" | "a=inactive") {
                line.replacen(bare, "a=sendrecv", 1)
            } else {
                line.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod sdp_tests {
    #[test]
    fn a_held_stream_is_offered_two_way() {
        let held = "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=recvonly\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(
            super::two_way(held),
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        assert_eq!(super::two_way("a=inactive\n"), "a=sendrecv\n");
    }
}
