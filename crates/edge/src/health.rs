//! Which core nodes are alive: each answers the edge's OPTIONS pings; a core that has not
//! answered within the window is left out of rendezvous hashing, so new dialogs go to the
//! live ones (the dialogs of a dead core then hash to their new owner as well).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proxy::CoreNode;

/// The Call-ID prefix of health pings, so their answers are recognised.
pub const PING_CALL_ID_PREFIX: &str = "sy-health-";

#[derive(Debug)]
pub struct CoreHealth {
    window: Duration,
    last_ok: Mutex<HashMap<SocketAddr, Instant>>,
}

impl CoreHealth {
    /// A core is healthy while its last answer is younger than `window`.
    pub fn new(window: Duration) -> CoreHealth {
        CoreHealth {
            window,
            last_ok: Mutex::new(HashMap::new()),
        }
    }

    /// A core at `addr` answered a ping at `now`.
    pub fn answered(&self, addr: SocketAddr, now: Instant) {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, now);
    }

    pub fn is_healthy(&self, addr: SocketAddr, now: Instant) -> bool {
        let last_ok = self.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        self.fresh(&last_ok, addr, now)
    }

    fn fresh(
        &self,
        last_ok: &HashMap<SocketAddr, Instant>,
        addr: SocketAddr,
        now: Instant,
    ) -> bool {
        last_ok
            .get(&addr)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.window)
    }

    /// The healthy cores; all of them when none is known healthy (at start-up, or when
    /// pings are lost), so calls are tried rather than refused.
    pub fn choose<'a>(&self, cores: &'a [CoreNode], now: Instant) -> Vec<&'a CoreNode> {
        let last_ok = self.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        let healthy: Vec<&CoreNode> = cores
            .iter()
            .filter(|c| self.fresh(&last_ok, c.addr, now))
            .collect();
        if healthy.is_empty() {
            cores.iter().collect()
        } else {
            healthy
        }
    }
}

/// An OPTIONS ping from the edge's internal socket `from` to the core at `to`.
pub fn ping(from: SocketAddr, to: SocketAddr, seq: u64) -> String {
    format!(
        "OPTIONS sip:sy@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-sy-ping-{seq}\r\nMax-Forwards: 70\r\nTo: <sip:sy@{to}>\r\nFrom: <sip:edge@{from}>;tag=ping\r\nCall-ID: {PING_CALL_ID_PREFIX}{seq}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_cores_drop_out_until_none_is_left() {
        let c1: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let c2: SocketAddr = "127.0.0.1:7102".parse().unwrap();
        let cores = vec![CoreNode::new("c1", c1), CoreNode::new("c2", c2)];
        let h = CoreHealth::new(Duration::from_secs(6));
        let t0 = Instant::now();
        assert_eq!(h.choose(&cores, t0).len(), 2, "nothing known yet: try all");
        h.answered(c1, t0);
        h.answered(c2, t0);
        assert_eq!(h.choose(&cores, t0 + Duration::from_secs(1)).len(), 2);
        h.answered(c2, t0 + Duration::from_secs(5));
        let later = t0 + Duration::from_secs(7);
        let chosen: Vec<SocketAddr> = h.choose(&cores, later).iter().map(|c| c.addr).collect();
        assert_eq!(chosen, [c2], "c1 stopped answering");
        assert_eq!(h.choose(&cores, t0 + Duration::from_secs(60)).len(), 2);
    }

    #[test]
    fn pings_parse_and_name_themselves() {
        let text = ping(
            "127.0.0.1:7000".parse().unwrap(),
            "127.0.0.1:7101".parse().unwrap(),
            3,
        );
        let m = switchyard_sip::Message::parse_datagram(bytes::Bytes::from(text)).unwrap();
        assert!(m.call_id().unwrap().starts_with(PING_CALL_ID_PREFIX));
    }
}
