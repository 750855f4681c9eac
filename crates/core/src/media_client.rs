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
/// leaves the pool until it answers a ping again; a draining node takes no new session.
/// Nodes join while the core runs (from the cluster's membership in Redis).
#[derive(Debug, Clone, Default)]
pub struct MediaCluster {
    inner: Arc<ClusterInner>,
}

#[derive(Debug, Default)]
struct ClusterInner {
    members: std::sync::RwLock<Vec<Arc<Entry>>>,
    /// Which member holds each session.
    sessions: Mutex<HashMap<String, Arc<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    member: MediaMember,
    health: Mutex<Health>,
    /// Its membership record says draining: no new sessions.
    draining: std::sync::atomic::AtomicBool,
}

impl Entry {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A node's state, for `/metrics`.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub name: String,
    pub pool: String,
    pub addr: SocketAddr,
    pub up: bool,
    pub draining: bool,
    pub load: Option<Load>,
    /// Sessions this core holds on it.
    pub placed: usize,
}

impl MediaCluster {
    pub fn new(members: Vec<MediaMember>) -> MediaCluster {
        let cluster = MediaCluster::default();
        for m in members {
            cluster.add(m);
        }
        cluster
    }

    /// Adds a node unless one with its address is known; true when added.
    pub fn add(&self, member: MediaMember) -> bool {
        let mut members = self
            .inner
            .members
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if members.iter().any(|e| e.member.addr == member.addr) {
            return false;
        }
        info!(node = member.name, pool = member.pool, addr = %member.addr, "media node joins");
        members.push(Arc::new(Entry {
            member,
            health: Mutex::new(Health {
                up: true,
                ..Health::default()
            }),
            draining: Default::default(),
        }));
        true
    }

    /// Whether the node at `addr` is known.
    pub fn knows(&self, addr: SocketAddr) -> bool {
        self.entries().iter().any(|e| e.member.addr == addr)
    }

    /// Marks the node at `addr` draining (no new sessions) or not.
    pub fn set_draining(&self, addr: SocketAddr, draining: bool) {
        for e in self.entries() {
            if e.member.addr == addr {
                e.draining.store(draining, Ordering::Relaxed);
            }
        }
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.inner
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
                let pings = cluster.entries().into_iter().map(|entry| async move {
                    let reply = entry.member.control.call(Request::Ping).await;
                    heard(&entry, reply);
                });
                futures_join_all(pings).await;
            }
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Every node and what is known of it.
    pub fn members(&self) -> Vec<MemberView> {
        let sessions = self.sessions();
        self.entries()
            .iter()
            .map(|e| {
                let h = *e.health();
                MemberView {
                    name: e.member.name.clone(),
                    pool: e.member.pool.clone(),
                    addr: e.member.addr,
                    up: h.up,
                    draining: e.draining.load(Ordering::Relaxed),
                    load: h.load,
                    placed: sessions.values().filter(|s| Arc::ptr_eq(s, e)).count(),
                }
            })
            .collect()
    }

    /// Sessions this core holds, on every node.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// The live members of `pool` with room, most room first.
    fn candidates(&self, pool: &str) -> Vec<Arc<Entry>> {
        let mut found: Vec<(u64, Arc<Entry>)> = self
            .entries()
            .into_iter()
            .filter(|e| e.member.pool == pool && !e.draining.load(Ordering::Relaxed))
            .filter_map(|e| {
                let h = *e.health();
                (h.up && h.room() > 0).then(|| (h.room(), e))
            })
            .collect();
        // Most room first; the order nodes joined breaks ties.
        found.sort_by_key(|(room, _)| std::cmp::Reverse(*room));
        found.into_iter().map(|(_, e)| e).collect()
    }

    async fn create(
        &self,
        session: String,
        tenant: String,
        pool: Option<String>,
    ) -> Result<Reply, MediaError> {
        let pool = pool.as_deref().unwrap_or(SHARED_POOL);
        let mut last = MediaError::Exhausted(format!("no media node of pool {pool} has room"));
        for entry in self.candidates(pool) {
            entry.health().placed_since += 1;
            let member = &entry.member;
            let request = Request::Create {
                session: session.clone(),
                tenant: tenant.clone(),
                pool: Some(pool.to_owned()),
            };
            match member.control.call(request).await {
                Ok(reply) => {
                    self.sessions().insert(session, entry.clone());
                    return Ok(reply);
                }
                Err(MediaError::Unreachable(why)) => {
                    warn!(
                        node = member.name,
                        why, "media node unreachable: out of its pool, trying another"
                    );
                    let mut h = entry.health();
                    h.up = false;
                    h.missed = MISSED_PINGS;
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
            self.sessions().get(session).cloned()
        };
        let Some(entry) = holder else {
            return Err(MediaError::NoSession);
        };
        entry.member.control.call(request).await
    }
}

fn heard(entry: &Entry, reply: Result<Reply, MediaError>) {
    let member = &entry.member;
    let mut h = entry.health();
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

/// Which media node holds a session, for a core that hands its calls on (takeover).
pub trait SessionPlacement: Send + Sync + std::fmt::Debug {
    /// The control address of the node holding `session`.
    fn holder(&self, session: &str) -> Option<SocketAddr>;
    /// Takes on a session another core placed on the node at `node`; false when that
    /// node is not known here.
    fn adopt(&self, session: &str, node: SocketAddr) -> bool;
    /// Forgets `session` without a word to its node (another core took it on).
    fn forget(&self, session: &str);
}

impl SessionPlacement for MediaCluster {
    fn holder(&self, session: &str) -> Option<SocketAddr> {
        self.sessions().get(session).map(|e| e.member.addr)
    }

    fn adopt(&self, session: &str, node: SocketAddr) -> bool {
        let Some(entry) = self.entries().into_iter().find(|e| e.member.addr == node) else {
            return false;
        };
        self.sessions().insert(session.to_owned(), entry);
        true
    }

    fn forget(&self, session: &str) {
        self.sessions().remove(session);
    }
}

pub use switchyard_types::SHARED_POOL;

impl MediaControl for MediaCluster {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Reply, MediaError>> {
        Box::pin(async move {
            match request {
                Request::Create {
                    session,
                    tenant,
                    pool,
                } => self.create(session, tenant, pool).await,
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
                Request::Ping => {
                    let members = self.members();
                    Ok(Reply::Load(Load {
                        sessions: self.session_count() as u64,
                        max_sessions: members
                            .iter()
                            .filter_map(|m| m.load.map(|l| l.max_sessions))
                            .sum(),
                        free_port_pairs: members
                            .iter()
                            .filter_map(|m| m.load.map(|l| l.free_port_pairs))
                            .sum(),
                        saturated: members.iter().all(|m| m.load.is_some_and(|l| l.saturated)),
                    }))
                }
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
