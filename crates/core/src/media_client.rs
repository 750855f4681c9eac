//! The core's side of media control over the network: [`RemoteMedia`] speaks to one media
//! node, [`MediaCluster`] spreads sessions over several and keeps each session on the node
//! that holds it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use switchyard_media_control::wire::{self, ControlKey, MAX_DATAGRAM};
use switchyard_media_control::{
    BoxFuture, Load, MediaControl, MediaError, Reply, Request, decode_reply, encode_request,
};

/// When a request is sent again: after `first`, then twice as long each time, `sends`
/// times in all; then the node is unreachable.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub first: Duration,
    pub sends: u32,
}

impl Default for Retry {
    /// 100, 200, 400, 800 ms: a lost datagram costs 100 ms, a dead node 1.5 s.
    fn default() -> Self {
        Retry {
            first: Duration::from_millis(100),
            sends: 4,
        }
    }
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Reply, MediaError>>>>>;

/// One media node over UDP.
#[derive(Debug)]
pub struct RemoteMedia {
    node: SocketAddr,
    socket: Arc<UdpSocket>,
    key: ControlKey,
    retry: Retry,
    next_id: AtomicU64,
    waiting: Waiting,
    receiver: tokio::task::JoinHandle<()>,
}

impl Drop for RemoteMedia {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

impl RemoteMedia {
    /// Opens a socket towards `node` (from `local`, port 0 for any) and starts reading
    /// its answers.
    pub async fn connect(
        node: SocketAddr,
        local: SocketAddr,
        key: ControlKey,
        retry: Retry,
    ) -> std::io::Result<RemoteMedia> {
        let socket = Arc::new(UdpSocket::bind(local).await?);
        let waiting: Waiting = Arc::default();
        let receiver = tokio::spawn(read_answers(
            socket.clone(),
            node,
            key.clone(),
            waiting.clone(),
        ));
        Ok(RemoteMedia {
            node,
            socket,
            key,
            retry,
            // Ids start at random, so a restarted core reusing its port is never answered
            // from the node's cache of its predecessor's requests.
            next_id: AtomicU64::new(rand::random::<u64>() >> 1),
            waiting,
            receiver,
        })
    }

    pub fn node(&self) -> SocketAddr {
        self.node
    }

    async fn request(&self, request: Request) -> Result<Reply, MediaError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        self.lock().insert(id, tx);
        let body = encode_request(&request);
        let mut wait = self.retry.first;
        let mut waited = Duration::ZERO;
        for _ in 0..self.retry.sends.max(1) {
            // Sealed again each time: the clock in the header moves on, the id does not.
            let datagram = wire::seal(&self.key, id, wire::unix_ms(), &body);
            if let Err(e) = self.socket.send_to(&datagram, self.node).await {
                debug!(node = %self.node, error = %e, "media-control request not sent");
            }
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(reply)) => return reply,
                Ok(Err(_)) => break,
                Err(_) => {
                    waited += wait;
                    wait *= 2;
                }
            }
        }
        self.lock().remove(&id);
        Err(MediaError::Unreachable(format!(
            "media node {} did not answer in {} ms",
            self.node,
            waited.as_millis()
        )))
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Reply, MediaError>>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MediaControl for RemoteMedia {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Reply, MediaError>> {
        Box::pin(self.request(request))
    }
}

/// Hands each signed answer from the node to the request waiting for it.
async fn read_answers(socket: Arc<UdpSocket>, node: SocketAddr, key: ControlKey, waiting: Waiting) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // An ICMP port unreachable from a stopped node: the request's timer tells.
                debug!(%node, error = %e, "media-control receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if from != node {
            debug!(%from, %node, "media-control answer from an unexpected address dropped");
            continue;
        }
        let frame = match wire::open(&key, &buf[..len], wire::unix_ms()) {
            Ok(f) => f,
            Err(e) => {
                warn!(%node, error = %e, "media-control answer refused");
                continue;
            }
        };
        let reply = decode_reply(frame.body).unwrap_or_else(|why| {
            Err(MediaError::Unreachable(format!(
                "unreadable answer from {node}: {why}"
            )))
        });
        let waiter = waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&frame.id);
        if let Some(tx) = waiter {
            let _ = tx.send(reply);
        }
    }
}

/// A media node as the cluster sees it.
#[derive(Debug)]
pub struct MediaMember {
    pub name: String,
    pub pool: String,
    /// Where it takes media control (for logs and metrics).
    pub addr: SocketAddr,
    pub control: Arc<dyn MediaControl>,
}

/// What the cluster last learnt of a node.
#[derive(Debug, Clone, Copy, Default)]
struct Health {
    /// Answering: new sessions may go there.
    up: bool,
    /// Its last answer to `ping`.
    load: Option<Load>,
    /// Sessions placed on it since that answer.
    placed_since: u64,
    /// Pings in a row without an answer.
    missed: u32,
}

impl Health {
    /// Sessions it can still take, as far as this core knows.
    fn room(&self) -> u64 {
        match self.load {
            Some(load) => load.room().saturating_sub(self.placed_since),
            // Not heard from yet: assume room, so a starting cluster takes calls.
            None => u64::MAX / 2 - self.placed_since,
        }
    }
}

/// Pings missed in a row before a node leaves its pool.
const MISSED_PINGS: u32 = 2;

/// Several media nodes behind one [`MediaControl`]: a new session goes to the node of its
/// pool with the most room (sessions against `max_sessions`, not CPU); every later
/// request of the session goes to the node that holds it. A node that stops answering
/// leaves the pool until it answers a ping again.
#[derive(Debug, Clone)]
pub struct MediaCluster {
    inner: Arc<ClusterInner>,
}

#[derive(Debug)]
struct ClusterInner {
    members: Vec<MediaMember>,
    health: Mutex<Vec<Health>>,
    /// Which member holds each session.
    sessions: Mutex<HashMap<String, usize>>,
}

/// A node's state, for `/metrics`.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub name: String,
    pub pool: String,
    pub addr: SocketAddr,
    pub up: bool,
    pub load: Option<Load>,
}

impl MediaCluster {
    pub fn new(members: Vec<MediaMember>) -> MediaCluster {
        let health = members
            .iter()
            .map(|_| Health {
                up: true,
                ..Health::default()
            })
            .collect();
        MediaCluster {
            inner: Arc::new(ClusterInner {
                members,
                health: Mutex::new(health),
                sessions: Mutex::default(),
            }),
        }
    }

    /// Pings every node every `every` until `stop`.
    pub fn spawn_health_checks(
        &self,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let pings = (0..cluster.inner.members.len()).map(|i| {
                    let cluster = cluster.clone();
                    async move {
                        let reply = cluster.inner.members[i].control.call(Request::Ping).await;
                        cluster.heard(i, reply);
                    }
                });
                futures_join_all(pings).await;
            }
        })
    }

    fn heard(&self, i: usize, reply: Result<Reply, MediaError>) {
        let member = &self.inner.members[i];
        let mut health = self.health();
        let h = &mut health[i];
        match reply {
            Ok(Reply::Load(load)) => {
                if !h.up {
                    info!(
                        node = member.name,
                        pool = member.pool,
                        "media node answers again: back in its pool"
                    );
                }
                *h = Health {
                    up: true,
                    load: Some(load),
                    placed_since: 0,
                    missed: 0,
                };
            }
            other => {
                h.missed += 1;
                if h.up && h.missed >= MISSED_PINGS {
                    h.up = false;
                    warn!(node = member.name, pool = member.pool, answer = ?other.err(), "media node silent: out of its pool");
                }
            }
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Vec<Health>> {
        self.inner.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Every node and what is known of it.
    pub fn members(&self) -> Vec<MemberView> {
        let health = self.health();
        self.inner
            .members
            .iter()
            .zip(health.iter())
            .map(|(m, h)| MemberView {
                name: m.name.clone(),
                pool: m.pool.clone(),
                addr: m.addr,
                up: h.up,
                load: h.load,
            })
            .collect()
    }

    /// Sessions this core holds on each node (by index).
    pub fn sessions_by_member(&self) -> Vec<usize> {
        let mut counts = vec![0; self.inner.members.len()];
        for i in self.sessions().values() {
            counts[*i] += 1;
        }
        counts
    }

    /// The live members of `pool` with room, most room first.
    fn candidates(&self, pool: &str) -> Vec<usize> {
        let health = self.health();
        let mut found: Vec<(u64, usize)> = self
            .inner
            .members
            .iter()
            .enumerate()
            .filter(|(i, m)| m.pool == pool && health[*i].up && health[*i].room() > 0)
            .map(|(i, _)| (health[i].room(), i))
            .collect();
        found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        found.into_iter().map(|(_, i)| i).collect()
    }

    async fn create(
        &self,
        session: String,
        tenant: String,
        pool: &str,
    ) -> Result<Reply, MediaError> {
        let mut last = MediaError::Exhausted(format!("no media node of pool {pool} has room"));
        for i in self.candidates(pool) {
            self.health()[i].placed_since += 1;
            let member = &self.inner.members[i];
            let request = Request::Create {
                session: session.clone(),
                tenant: tenant.clone(),
            };
            match member.control.call(request).await {
                Ok(reply) => {
                    self.sessions().insert(session, i);
                    return Ok(reply);
                }
                Err(MediaError::Unreachable(why)) => {
                    warn!(
                        node = member.name,
                        why, "media node unreachable: out of its pool, trying another"
                    );
                    let mut health = self.health();
                    health[i].up = false;
                    health[i].missed = MISSED_PINGS;
                    last = MediaError::Exhausted(format!("media node {} unreachable", member.name));
                }
                Err(MediaError::Exhausted(why)) => {
                    debug!(node = member.name, why, "media node full, trying another");
                    last = MediaError::Exhausted(why);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn on_holder(
        &self,
        session: &str,
        request: Request,
        forget: bool,
    ) -> Result<Reply, MediaError> {
        let holder = if forget {
            self.sessions().remove(session)
        } else {
            self.sessions().get(session).copied()
        };
        let Some(i) = holder else {
            return Err(MediaError::NoSession);
        };
        self.inner.members[i].control.call(request).await
    }
}

/// The pool every node and tenant is in unless placed elsewhere.
pub const SHARED_POOL: &str = "shared";

impl MediaControl for MediaCluster {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Reply, MediaError>> {
        Box::pin(async move {
            match request {
                Request::Create { session, tenant } => {
                    self.create(session, tenant, SHARED_POOL).await
                }
                Request::Offer { ref session, .. }
                | Request::Answer { ref session, .. }
                | Request::Stats { ref session } => {
                    let session = session.clone();
                    self.on_holder(&session, request, false).await
                }
                Request::Destroy { ref session } => {
                    let session = session.clone();
                    self.on_holder(&session, request, true).await
                }
                Request::Ping => Ok(Reply::Load(Load {
                    sessions: self.sessions().len() as u64,
                    max_sessions: self
                        .members()
                        .iter()
                        .filter_map(|m| m.load.map(|l| l.max_sessions))
                        .sum(),
                    free_port_pairs: self
                        .members()
                        .iter()
                        .filter_map(|m| m.load.map(|l| l.free_port_pairs))
                        .sum(),
                })),
            }
        })
    }
}

/// Runs futures side by side and waits for all (tokio has no `join_all`).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
