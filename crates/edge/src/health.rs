//! Which core nodes are alive: each answers the edge's OPTIONS pings; a core that has not
//! answered within the window is left out of rendezvous hashing, so new dialogs go to the
//! live ones (the dialogs of a dead core then hash to their new owner as well). A core
//! whose host answers a ping "port unreachable" is out at once: its process is gone.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::proxy::{CoreNode, Cores};

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

    /// The host of the core at `addr` answered a datagram with "port unreachable":
    /// nothing listens there, the core is dead until it answers a ping again. Faster
    /// than the ping window, and never a false alarm of a slow core.
    pub fn refused(&self, addr: SocketAddr) -> bool {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr)
            .is_some()
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

/// Pings every core of `cores` every `every`, each from its own UDP socket bound on
/// `local_ip` and connected to the core: the kernel then reports the core's host
/// answering "port unreachable" on that socket alone (a connected socket's error names
/// its peer), where the edge's shared internal socket would hear nothing of it. An
/// answer marks the core healthy; a closed port marks it refused at once.
pub async fn probe_cores(
    cores: Cores,
    health: Arc<CoreHealth>,
    local_ip: IpAddr,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut probes: HashMap<SocketAddr, Probe> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let list = cores.snapshot();
        probes.retain(|addr, _| list.contains(*addr));
        for core in list.nodes.iter().map(|c| c.addr) {
            let probe = match probes.entry(core) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(slot) => match Probe::open(local_ip, core, health.clone()).await {
                    Ok(p) => slot.insert(p),
                    Err(e) => {
                        warn!(%core, error = %e, "cannot open a socket to ping the core");
                        continue;
                    }
                },
            };
            seq += 1;
            let text = ping(probe.local, core, seq);
            match probe.socket.send(text.as_bytes()).await {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused(&health, core),
                Err(e) => debug!(%core, error = %e, "health ping not sent"),
            }
        }
    }
}

fn refused(health: &CoreHealth, core: SocketAddr) {
    if health.refused(core) {
        warn!(%core, "the core's port is closed: left out until it answers again");
    }
}

/// One core's ping socket and the task reading its answers.
struct Probe {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    reader: tokio::task::JoinHandle<()>,
}

impl Probe {
    async fn open(
        local_ip: IpAddr,
        core: SocketAddr,
        health: Arc<CoreHealth>,
    ) -> std::io::Result<Probe> {
        let socket = Arc::new(UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?);
        socket.connect(core).await?;
        let local = socket.local_addr()?;
        let reader = tokio::spawn({
            let socket = socket.clone();
            async move {
                let mut buf = [0u8; 4096];
                loop {
                    match socket.recv(&mut buf).await {
                        // Only the core can reach a connected socket: any answer to a
                        // ping says it is alive.
                        Ok(n) => {
                            if switchyard_sip::Message::parse_datagram(
                                bytes::Bytes::copy_from_slice(&buf[..n]),
                            )
                            .is_ok_and(|m| {
                                !m.is_request()
                                    && m.call_id()
                                        .is_ok_and(|c| c.starts_with(PING_CALL_ID_PREFIX))
                            }) {
                                health.answered(core, Instant::now());
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                            refused(&health, core)
                        }
                        Err(e) => {
                            debug!(%core, error = %e, "health ping socket");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        });
        Ok(Probe {
            socket,
            local,
            reader,
        })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.reader.abort();
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
    fn a_refused_core_drops_out_at_once_and_comes_back_when_it_answers() {
        let c1: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let c2: SocketAddr = "127.0.0.1:7102".parse().unwrap();
        let cores = vec![CoreNode::new("c1", c1), CoreNode::new("c2", c2)];
        let h = CoreHealth::new(Duration::from_secs(6));
        let t0 = Instant::now();
        h.answered(c1, t0);
        h.answered(c2, t0);
        assert!(h.refused(c1));
        assert!(!h.refused(c1), "already out");
        let chosen: Vec<SocketAddr> = h.choose(&cores, t0).iter().map(|c| c.addr).collect();
        assert_eq!(chosen, [c2]);
        h.answered(c1, t0 + Duration::from_secs(1));
        assert_eq!(h.choose(&cores, t0 + Duration::from_secs(1)).len(), 2);
    }

    /// A core that answers stays chosen; one whose port closes is out at the next ping,
    /// long before the silence window (an hour here) would say so; it is back once a
    /// core answers on its address again.
    #[tokio::test]
    async fn a_core_whose_port_closes_is_out_at_the_next_ping() {
        async fn answering_core(socket: UdpSocket) {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let m = switchyard_sip::Message::parse_datagram(bytes::Bytes::copy_from_slice(
                    &buf[..n],
                ))
                .unwrap();
                let answer =
                    switchyard_sip::build::ResponseBuilder::for_request(&m, 200, "OK", "t").build();
                socket.send_to(&answer, from).await.unwrap();
            }
        }
        let live = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let doomed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (live_addr, doomed_addr) = (live.local_addr().unwrap(), doomed.local_addr().unwrap());
        tokio::spawn(answering_core(live));
        let doomed_task = tokio::spawn(answering_core(doomed));
        let cores = Cores::fixed(vec![
            CoreNode::new("live", live_addr),
            CoreNode::new("doomed", doomed_addr),
        ]);
        let health = Arc::new(CoreHealth::new(Duration::from_secs(3600)));
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(probe_cores(
            cores,
            health.clone(),
            "127.0.0.1".parse().unwrap(),
            Duration::from_millis(20),
            stop,
        ));
        async fn until(what: &str, f: impl Fn() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !f() {
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let healthy = |addr| health.is_healthy(addr, Instant::now());
        until("both answer", || healthy(live_addr) && healthy(doomed_addr)).await;
        doomed_task.abort();
        let _ = doomed_task.await; // the socket is closed with the task
        until("the closed port is out", || !healthy(doomed_addr)).await;
        assert!(healthy(live_addr));
        let back = UdpSocket::bind(doomed_addr).await.unwrap();
        tokio::spawn(answering_core(back));
        until("back once it answers", || healthy(doomed_addr)).await;
        stop_tx.send(true).unwrap();
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
