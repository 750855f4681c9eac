//! The timer table: no-answer, trunk silence, 2xx retransmission, session timers, and
//! the node-wide media check, channel lease renewal and drain limit.

use std::time::Duration;

use tracing::{info, warn};

use switchyard_media_control::{Leg, Reply, Request};
use switchyard_sip::{Message, Method};

use super::call::*;
use super::{CallKey, Clock, Engine, MediaError, NODE, Output, Timer};
use crate::routing;
use crate::{CHANNEL_RENEW_EVERY, T1, T2};

impl Engine {
    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Clock) {
        self.now = now;
        while let Some((&(at, seq), &(key, timer))) = self.timers.iter().next() {
            if at > now.at {
                break;
            }
            self.timers.remove(&(at, seq));
            self.forget_timer(key, (at, seq));
            self.on_timer(key, timer);
        }
    }

    fn on_timer(&mut self, key: CallKey, timer: Timer) {
        let now = self.now.at;
        match timer {
            Timer::TrunkSilence(i) => {
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                let silent = call.forks.get(i).is_some_and(|f| !f.done && !f.heard);
                if !silent || call.phase != Phase::Ringing || call.rerouting {
                    return;
                }
                // Given up: a late answer from it is ACKed and hung up.
                call.forks[i].done = true;
                warn!(
                    call_id = call.a.call_id,
                    trunk = call.trunk.as_ref().map(|t| t.leg.trunk_id.clone()),
                    "trunk silent: trying the next route"
                );
                if call.best_failure.is_none() {
                    call.best_failure = Some((408, "Trunk Not Answering".into()));
                }
                self.note_trunk_outcome(key, i, 408);
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                call.conclude_attempt(408);
                if let Some(next) = call.failover_after(i, 408) {
                    self.reroute(key, next);
                } else if call.forks.iter().all(|f| f.done) {
                    self.conclude_unanswered(key);
                }
            }
            Timer::NoAnswer => {
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                // A forward rings anew: an earlier ringing's timer is not its.
                if call.phase != Phase::Ringing || call.rerouting || call.ring_deadline > now {
                    return;
                }
                call.conclude_attempt(408);
                let forward = call.next_reroute(false, true);
                if forward.is_some() {
                    call.rerouting = true; // the CANCELled forks' 487s end nothing
                }
                let forks: Vec<Message> = call.take_ringing_forks();
                for f in forks {
                    self.cancel_fork(key, &f);
                }
                if let Some(target) = forward {
                    return self.reroute(key, target);
                }
                info!(call_id = self.calls[&key].a.call_id, "no answer");
                self.calls.get_mut(&key).expect("call present").best_failure =
                    Some((408, "No Answer".into()));
                self.conclude_unanswered(key);
            }
            Timer::SessionRefresh => {
                let Some(t) = self.calls.get(&key).and_then(|c| c.session_timer) else {
                    return;
                };
                if t.deadline > now {
                    return; // refreshed meanwhile: a newer timer is armed
                }
                if t.caller_refreshes {
                    warn!(
                        call_id = self.calls[&key].a.call_id,
                        "session timer expired: hanging up"
                    );
                    self.hang_up_both(key, "session-timer");
                } else {
                    // We refresh: an UPDATE without SDP.
                    self.send_in_dialog(key, Leg::A, Method::Update, None);
                    self.restart_session_timer(key);
                }
            }
            Timer::Retransmit2xx => {
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                let Some(u) = call.unacked.as_mut() else {
                    return;
                };
                if now.saturating_duration_since(u.since) >= 64 * T1 {
                    // RFC 3261 §13.3.1.4: no ACK: the session is over.
                    call.unacked = None;
                    warn!(
                        call_id = call.a.call_id,
                        "2xx never acknowledged: hanging up"
                    );
                    return self.hang_up_both(key, "no-ack");
                }
                u.interval = (u.interval * 2).min(T2);
                let (bytes, target, next) = (u.bytes.clone(), u.peer.target, u.interval);
                self.push(Output::Transmit { target, bytes });
                self.arm(now + next, key, Timer::Retransmit2xx);
            }
            Timer::MediaCheck => {
                self.check_media();
                if let Some(every) = self.media_check_every() {
                    self.arm(now + every, NODE, Timer::MediaCheck);
                }
            }
            Timer::RenewChannels => {
                self.renew_channels();
                self.arm(now + CHANNEL_RENEW_EVERY, NODE, Timer::RenewChannels);
            }
            Timer::DrainLimit => {
                warn!(
                    unanswered = self.hang_ups_in_flight(),
                    "drain limit reached"
                );
                self.drain_expired = true;
            }
        }
    }

    /// Media silence is checked a few times per timeout period.
    pub(super) fn media_check_every(&self) -> Option<Duration> {
        self.rtp_timeout
            .map(|t| (t / 4).max(Duration::from_millis(250)))
    }

    /// Extends the leases of the trunk channels this node's calls hold (Redis).
    fn renew_channels(&mut self) {
        let held: Vec<(switchyard_types::TenantId, String)> = self
            .calls
            .values()
            .filter_map(|c| {
                let t = c.trunk.as_ref().filter(|t| t.leg.holds_channel)?;
                Some((routing::trunk_channels(&t.leg.trunk_id), t.member.clone()))
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let until_ms = self.now.unix_ms + routing::CHANNEL_LEASE.as_millis() as i64;
        self.push(Output::RenewChannels { held, until_ms });
    }

    /// Asks for the counters of every answered call (RTP timeout).
    fn check_media(&mut self) {
        let answered: Vec<(CallKey, String)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.phase == Phase::Answered)
            .map(|(k, c)| (*k, c.session.clone()))
            .collect();
        for (key, session) in answered {
            self.media(Some((key, MediaJob::Stats)), Request::Stats { session });
        }
    }

    /// An answered call whose media stopped is hung up, unless on hold.
    pub(super) fn on_media_stats(&mut self, key: CallKey, reply: Result<Reply, MediaError>) {
        let (Some(limit), Ok(Reply::Stats { stats })) = (self.rtp_timeout, reply) else {
            return;
        };
        let Some(call) = self.calls.get(&key).filter(|c| c.phase == Phase::Answered) else {
            return;
        };
        let limit_ms = limit.as_millis() as u64;
        let held = stats.a.held || stats.b.held;
        let silent = [("caller", &stats.a), ("callee", &stats.b)]
            .into_iter()
            .find(|(_, l)| l.silent_ms > limit_ms);
        if let (false, Some((side, leg))) = (held, silent) {
            warn!(
                call_id = call.a.call_id,
                side,
                silent_ms = leg.silent_ms,
                "no RTP from the {side}: hanging up"
            );
            self.hang_up_both(key, "rtp-timeout");
        }
    }

    pub(super) fn restart_session_timer(&mut self, key: CallKey) {
        let now = self.now.at;
        let Some(t) = self
            .calls
            .get_mut(&key)
            .and_then(|c| c.session_timer.as_mut())
        else {
            return;
        };
        t.deadline = if t.caller_refreshes {
            t.expiry_from(now)
        } else {
            now + Duration::from_secs(u64::from(t.interval / 2))
        };
        let at = t.deadline;
        self.arm(at, key, Timer::SessionRefresh);
    }
}
