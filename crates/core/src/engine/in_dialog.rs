//! Requests inside an established call: BYE, re-INVITE (relayed through the media
//! node), session refreshes, the rest answered here.

use bytes::Bytes;
use tracing::{debug, info, warn};

use switchyard_media_control::{Leg, Reply, Request};
use switchyard_sip::build::ResponseBuilder;
use switchyard_sip::transaction::TxId;
use switchyard_sip::{Message, Method};

use super::call::*;
use super::{CallKey, Engine, MediaError, Purpose};
use crate::dialog::Dialog;
use crate::metrics::Disposition;

impl Engine {
    pub(super) fn in_dialog(&mut self, tx: TxId, msg: Message) {
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        let Some(&key) = self.by_call_id.get(&call_id) else {
            return self.no_such_dialog(tx, &msg);
        };
        let Some(call) = self.calls.get(&key) else {
            return self.no_such_dialog(tx, &msg);
        };
        let (leg, dialog) = call.leg_of(&call_id);
        if !dialog.is_some_and(|d| d.matches_request(&msg)) {
            debug!(call_id, "in-dialog request with tags of no dialog of ours");
            return self.no_such_dialog(tx, &msg);
        }
        let method = msg.method().cloned().unwrap_or(Method::Ack);
        let blind_transfer = call
            .transfer
            .as_ref()
            .filter(|t| t.replacing.is_none())
            .map(|t| (t.referrer, t.referrer_gone));
        match method {
            // The referrer of a blind transfer leaves while the new party rings: the
            // transfer goes on without it (RFC 5589 §6.1: a transferor may hang up once
            // the transfer is accepted).
            Method::Bye if blind_transfer.is_some_and(|(referrer, _)| referrer == leg) => {
                self.reply(tx, &msg, 200, "OK");
                info!(call_id, "the referrer hung up; its transfer goes on");
                if let Some(t) = self.calls.get_mut(&key).and_then(|c| c.transfer.as_mut()) {
                    t.referrer_gone = true;
                }
            }
            Method::Bye => {
                self.reply(tx, &msg, 200, "OK");
                let side = if leg == Leg::A { "caller" } else { "callee" };
                // A referrer that already left is not hung up again; a transfer's new
                // party still ringing stops (`finish`).
                let referrer_gone = blind_transfer.is_some_and(|(_, gone)| gone);
                match self.calls[&key].phase {
                    Phase::Answered if referrer_gone => {}
                    Phase::Answered => {
                        self.send_in_dialog(key, leg.other(), Method::Bye, None);
                    }
                    // The callee hung up before the caller heard its answer.
                    _ => self.fail_a(key, 480, "Callee Hung Up"),
                }
                info!(call_id, side, "call hung up");
                self.finish(key, Disposition::Answered, Some(side));
            }
            Method::Invite => {
                if call.phase != Phase::Answered || call.reinvite.is_some() {
                    return self.reply(tx, &msg, 491, "Request Pending");
                }
                if msg.body().is_empty() {
                    return self.reply(tx, &msg, 488, "A re-INVITE needs an SDP offer");
                }
                let request = Request::Offer {
                    session: call.session.clone(),
                    from: leg,
                    sdp: String::from_utf8_lossy(msg.body()).into_owned(),
                };
                self.calls.get_mut(&key).expect("call").reinvite = Some(PendingReinvite {
                    from: leg,
                    tx,
                    request: msg,
                    out: None,
                });
                self.media(Some((key, MediaJob::ReinviteOffer)), request);
            }
            Method::Update if leg == Leg::A && call.session_timer.is_some() => {
                // A refresh without SDP (RFC 4028 §7.4): answered here, not relayed.
                let timer = call.session_timer.expect("checked");
                let b = ResponseBuilder::for_request(&msg, 200, "OK", &call.a_tag)
                    .header("Session-Expires", timer.header())
                    .header("Contact", format!("<sip:sy@{}>", self.local));
                self.respond(tx, b);
                self.restart_session_timer(key);
            }
            Method::Refer => self.on_refer(key, leg, tx, msg),
            Method::Options | Method::Info | Method::Update | Method::Notify => {
                self.reply(tx, &msg, 200, "OK")
            }
            _ => self.reply(tx, &msg, 501, "Not Implemented"),
        }
    }

    /// A request of our own on `leg` of call `key` (BYE, re-INVITE, UPDATE); the request
    /// sent, `None` when that leg has no dialog.
    pub(super) fn send_in_dialog(
        &mut self,
        key: CallKey,
        leg: Leg,
        method: Method,
        body: Option<&str>,
    ) -> Option<Message> {
        let local = self.local;
        let call = self.calls.get_mut(&key)?;
        let dialog = match leg {
            Leg::A => &mut call.a,
            Leg::B => call.b.as_mut()?,
        };
        let request = dialog.request(method.clone(), local, body, None);
        let peer = dialog.peer(local);
        let purpose = match method {
            Method::Invite => Purpose::Reinvite,
            Method::Bye => Purpose::Bye,
            _ => Purpose::Refresh,
        };
        self.send(key, purpose, request.clone(), peer);
        Some(request)
    }

    /// A BYE in a dialog no call keeps (a second answer, a new party we cannot relay).
    pub(super) fn hang_up_dialog(&mut self, mut dialog: Dialog) {
        let bye = dialog.request(Method::Bye, self.local, None, None);
        let peer = dialog.peer(self.local);
        self.send(super::NODE, Purpose::Bye, bye, peer);
    }

    /// The media node took a re-INVITE's offer: it goes on to the other leg.
    pub(super) fn on_reinvite_offer(&mut self, key: CallKey, offer: Result<Reply, MediaError>) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(pending) = call.reinvite.as_ref() else {
            return;
        };
        let (from, tx, request) = (pending.from, pending.tx, pending.request.clone());
        let sdp = match offer {
            Ok(Reply::Sdp { sdp }) => sdp,
            other => {
                call.reinvite = None;
                return self.reply(tx, &request, 488, &crate::refusal(other));
            }
        };
        call.remote_sdp[leg_index(from)] = String::from_utf8_lossy(request.body()).into_owned();
        match self.send_in_dialog(key, from.other(), Method::Invite, Some(&sdp)) {
            Some(out) => {
                if let Some(p) = self.calls.get_mut(&key).and_then(|c| c.reinvite.as_mut()) {
                    p.out = Some(out);
                }
            }
            None => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.reinvite = None;
                }
                self.reply(tx, &request, 500, "Cannot reach the other party");
            }
        }
    }

    pub(super) fn on_reinvite_response(&mut self, key: CallKey, msg: Message) {
        let status = msg.status().unwrap_or(0);
        if status < 200 {
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(pending) = call.reinvite.take() else {
            return;
        };
        let to = pending.from.other();
        if !(200..300).contains(&status) {
            let reason = msg.reason().unwrap_or("").to_owned();
            let b = ResponseBuilder::for_request(&pending.request, status, &reason, "");
            return self.respond(pending.tx, b);
        }
        let cseq = pending
            .out
            .as_ref()
            .and_then(|o| o.cseq().ok())
            .map(|c| c.seq)
            .unwrap_or(0);
        let dialog = match to {
            Leg::A => Some(call.a.clone()),
            Leg::B => call.b.clone(),
        };
        if let Some(dialog) = dialog {
            self.send_ack(&dialog, cseq);
        }
        let body = String::from_utf8_lossy(msg.body()).into_owned();
        let request = Request::Answer {
            session: self.calls[&key].session.clone(),
            from: to,
            sdp: body.clone(),
        };
        self.media(
            Some((key, MediaJob::ReinviteAnswer(Box::new((pending, body))))),
            request,
        );
    }

    /// The other leg's answer to a relayed re-INVITE reached the media node: the offerer
    /// gets `200` with the relay's SDP (retransmitted until its ACK), or `488`.
    pub(super) fn on_reinvite_answer(
        &mut self,
        key: CallKey,
        pending: PendingReinvite,
        body: String,
        answer: Result<Reply, MediaError>,
    ) {
        let to = pending.from.other();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if answer.is_ok() {
            call.remote_sdp[leg_index(to)] = body;
        }
        let call = &self.calls[&key];
        // Our tag is in the local side of the dialog (a transfer may have replaced the
        // party on either leg).
        let dialog = match pending.from {
            Leg::A => Some(&call.a),
            Leg::B => call.b.as_ref(),
        };
        let tag = dialog
            .and_then(|d| switchyard_sip::headers::tag_of(&d.local).map(str::to_owned))
            .unwrap_or_default();
        let peer = dialog.map(|d| d.peer(self.local));
        match (answer, peer) {
            (Ok(Reply::Sdp { sdp }), Some(peer)) => {
                let mut ok = self.dialog_response(&pending.request, &tag, 200, "OK");
                if let (Leg::A, Some(t)) = (pending.from, call.session_timer) {
                    ok = ok.header("Session-Expires", t.header());
                }
                let bytes = ok.body("application/sdp", Bytes::from(sdp)).build();
                let seq = pending.request.cseq().map(|c| c.seq).unwrap_or(0);
                self.answer_until_acked(key, pending.tx, bytes, peer, seq);
                if pending.from == Leg::A {
                    self.restart_session_timer(key);
                }
                // The legs' SDPs and CSeqs moved on: a core taking over needs them.
                self.persist(key);
            }
            _ => {
                let b = self.dialog_response(&pending.request, &tag, 488, "Not Acceptable Here");
                self.respond(pending.tx, b);
            }
        }
    }

    /// A relayed re-INVITE got no answer: the offerer gets `408`.
    pub(super) fn on_reinvite_failed(&mut self, key: CallKey) {
        if let Some(pending) = self.calls.get_mut(&key).and_then(|c| c.reinvite.take()) {
            warn!("re-INVITE not answered by the other party");
            let b = ResponseBuilder::for_request(&pending.request, 408, "Request Timeout", "");
            self.respond(pending.tx, b);
        }
    }
}

pub(super) fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}
