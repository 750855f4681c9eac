//! How calls end: both legs hung up, the media session destroyed, and the CDR written
//! once the session's counters are in.

use std::time::Duration;

use switchyard_media_control::{Leg, Reply, Request, SessionStats};
use switchyard_sip::Method;
use switchyard_store::Cdr;

use super::call::*;
use super::setup::held_by_leg;
use super::{CallKey, Engine, ForwardFor, MediaError, Output, Purpose};
use crate::dialog::random_token;
use crate::metrics::Disposition;

impl Engine {
    /// Hangs up call `key` from our side: BYE on both legs of an answered call; a
    /// ringing call's forks are CANCELled and its caller hears `503`.
    pub(super) fn hang_up_both(&mut self, key: CallKey, why: &str) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        match call.phase {
            Phase::Answered => {
                self.send_in_dialog(key, Leg::A, Method::Bye, None);
                self.send_in_dialog(key, Leg::B, Method::Bye, None);
                self.finish(key, Disposition::Answered, Some(why));
            }
            Phase::Answering => {
                // Leg B is up, the caller has not heard of it.
                self.send_in_dialog(key, Leg::B, Method::Bye, None);
                self.fail_a(key, 503, "Service Unavailable");
                self.finish(key, Disposition::Failed, Some(why));
            }
            Phase::Ringing => {
                // The callee's phones stop ringing, the caller hears why.
                let forks = call.take_ringing_forks();
                for f in forks {
                    self.cancel_fork(key, &f);
                }
                self.fail_a(key, 503, "Service Unavailable");
                self.finish(key, Disposition::Failed, Some(why));
            }
        }
    }

    /// Ends the call: indexes cleared, trunk channels given back, the media session
    /// destroyed; its counters complete the CDR ([`Engine::on_destroyed`]).
    pub(super) fn finish(&mut self, key: CallKey, disposition: Disposition, side: Option<&str>) {
        let Some(call) = self.calls.remove(&key) else {
            return;
        };
        self.by_call_id.remove(&call.a.call_id);
        self.by_call_id.remove(&call.b_call_id);
        if self.recover && call.answered_ms.is_some() {
            let b = call.b.as_ref().map_or(&call.b_call_id, |d| &d.call_id);
            self.push(Output::Forget {
                a: call.a.call_id.clone(),
                b: b.clone(),
            });
        }
        // A transfer's new party still ringing stops ringing.
        let ringing: Vec<_> = call
            .transfer
            .iter()
            .flat_map(|t| &t.forks)
            .filter(|f| !f.done)
            .map(|f| f.request.clone())
            .collect();
        for invite in &ringing {
            self.cancel_fork(key, invite);
        }
        let mut held = Vec::new();
        if let Some(t) = &call.trunk {
            held.extend(held_by_leg(&t.leg, &t.member));
        }
        if let Some(t) = &call.transfer {
            if let Some(trunk) = &t.trunk {
                held.extend(held_by_leg(trunk, &t.call_id));
            } else if t.replacing.is_none() && t.leg.is_none() && !t.call_id.is_empty() {
                // Its target is still being looked up: a channel it seizes goes back.
                self.orphaned
                    .insert((key, ForwardFor::Transfer), t.call_id.clone());
            }
        }
        if call.rerouting {
            self.orphaned
                .insert((key, ForwardFor::Reroute), call.b_call_id.clone());
        }
        self.release(held);
        self.by_req
            .retain(|_, (k, p)| *k != key || matches!(p, Purpose::Cancel | Purpose::Bye));
        self.disarm_all(key);
        if !call.a_final_sent && call.phase != Phase::Answered {
            // Every path answers the caller before it ends the call; this one did not.
            let tx = call.a_tx;
            let b = self.a_response(&call, 500, "Call Ended");
            self.respond(tx, b);
        }
        let session = call.session.clone();
        let ended = Ended {
            call,
            disposition,
            hangup_side: side.map(str::to_owned),
            ended_ms: self.now.unix_ms,
        };
        self.media(
            Some((key, MediaJob::Destroyed(Box::new(ended)))),
            Request::Destroy { session },
        );
    }

    /// The ended call's media session is gone: its counters go into the CDR.
    pub(super) fn on_destroyed(&mut self, ended: Ended, reply: Result<Reply, MediaError>) {
        let stats = match reply {
            Ok(Reply::Stats { stats }) => stats,
            _ => SessionStats::default(),
        };
        let Ended {
            call,
            disposition,
            hangup_side,
            ended_ms,
        } = ended;
        let cdr = Cdr {
            id: format!("cdr-{}", random_token()),
            tenant_id: call.tenant_id.clone(),
            call_id: call.a.call_id.clone(),
            from_uri: call.from_uri.clone(),
            to_uri: call.to_uri.clone(),
            started_at: call.started_ms,
            answered_at: call.answered_ms,
            ended_at: ended_ms,
            duration_ms: call.answered_ms.map_or(0, |a| ended_ms - a),
            disposition: disposition.as_str().to_owned(),
            hangup_side,
            legs: legs_json(&stats, &call.attempts),
        };
        let talked = call
            .answered_ms
            .map(|a| Duration::from_millis(u64::try_from(ended_ms - a).unwrap_or(0)));
        self.metrics.ended(&call.tenant_id, disposition, talked);
        self.push(Output::Cdr(cdr));
    }
}

/// The CDR's legs: A's and B's media counters (B is whoever held leg B last), then each
/// destination the call rang, in order (`"leg": "attempt"`).
pub(super) fn legs_json(stats: &SessionStats, attempts: &[Attempt]) -> String {
    let leg = |name: &str, l: &switchyard_media_control::LegStats| {
        let mut v = serde_json::to_value(l).unwrap_or_default();
        v["leg"] = serde_json::Value::from(name);
        v
    };
    let mut legs = vec![leg("a", &stats.a), leg("b", &stats.b)];
    legs.extend(attempts.iter().map(|a| {
        serde_json::json!({
            "leg": "attempt",
            "to": a.to,
            "via": a.via,
            "reason": a.reason,
            "at_ms": a.at_ms,
            "result": a.result,
        })
    }));
    serde_json::Value::Array(legs).to_string()
}
