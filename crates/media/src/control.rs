//! The media-control server: the media node's shell towards the cores.
//!
//! One UDP socket; each datagram is one signed request (`switchyard_media_control::wire`).
//! A request runs in its own task, so a slow `create` (it may bind sockets) never holds up
//! another call's `answer`. A core retransmits a request it got no answer to under the
//! same id: the [`ReplyCache`] answers a retransmission with the first answer (or ignores
//! it while the first is still running), so nothing runs twice: a retried `create` never
//! reads as `exists`, a retried `offer` never replaces the pending one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};

use switchyard_media_control::wire::{self, ControlKey, MAX_DATAGRAM, WireError};
use switchyard_media_control::{MediaControl, MediaError, decode_request, encode_reply};

use crate::MediaNode;

/// How long an answer is kept for retransmissions: longer than a core retries.
const KEEP_ANSWERS: Duration = Duration::from_secs(40);

/// What the server knows of a request id from one core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: run it.
    New,
    /// Still running: drop the retransmission (the answer goes out when it is done).
    Running,
    /// Answered: send this again.
    Answered(Arc<[u8]>),
}

/// When a request arrived or was answered, and its answer once there is one.
type Entry = (Instant, Option<Arc<[u8]>>);

/// Answers by (core address, request id), for as long as a core may retransmit.
#[derive(Debug, Default)]
pub struct ReplyCache {
    entries: HashMap<(SocketAddr, u64), Entry>,
    last_sweep: Option<Instant>,
}

impl ReplyCache {
    /// Looks a request up, marking a new one as running.
    pub fn seen(&mut self, from: SocketAddr, id: u64, now: Instant) -> Seen {
        self.sweep(now);
        match self.entries.get(&(from, id)) {
            Some((_, Some(answer))) => Seen::Answered(answer.clone()),
            Some((_, None)) => Seen::Running,
            None => {
                self.entries.insert((from, id), (now, None));
                Seen::New
            }
        }
    }

    /// Keeps the answer to a request.
    pub fn answered(&mut self, from: SocketAddr, id: u64, answer: Arc<[u8]>, now: Instant) {
        self.entries.insert((from, id), (now, Some(answer)));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets old answers, at most once a second (a sweep walks every entry).
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.entries
            .retain(|_, (at, _)| now.duration_since(*at) < KEEP_ANSWERS);
    }
}

/// What the server refused, for `/metrics`.
#[derive(Debug, Default)]
pub struct ControlCounters {
    pub requests: AtomicU64,
    pub retransmissions: AtomicU64,
    /// Datagrams dropped: unsigned, wrongly signed, stale, another version, malformed.
    pub refused: AtomicU64,
}

/// Answers media-control requests on `socket` until `stop` fires.
pub async fn serve_control(
    node: MediaNode,
    socket: UdpSocket,
    key: ControlKey,
    counters: Arc<ControlCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let cache = Arc::new(Mutex::new(ReplyCache::default()));
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (len, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from a core that went away surface here on some systems.
                    debug!(error = %e, "media-control receive error");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let frame = match wire::open(&key, &buf[..len], wire::unix_ms()) {
            Ok(frame) => frame,
            Err(e) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                match e {
                    WireError::Signature | WireError::Version(_) | WireError::Stale(_) => {
                        warn!(%from, error = %e, "media-control message refused")
                    }
                    _ => debug!(%from, error = %e, "media-control datagram dropped"),
                }
                continue;
            }
        };
        let id = frame.id;
        let seen = cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen(from, id, Instant::now());
        match seen {
            Seen::Running => {
                counters.retransmissions.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Seen::Answered(answer) => {
                counters.retransmissions.fetch_add(1, Ordering::Relaxed);
                let _ = socket.send_to(&answer, from).await;
                continue;
            }
            Seen::New => {}
        }
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let request = decode_request(frame.body);
        let (node, socket, key, cache) = (node.clone(), socket.clone(), key.clone(), cache.clone());
        tokio::spawn(async move {
            let reply = match request {
                Ok(request) => node.call(request).await,
                Err(why) => Err(MediaError::BadRequest(why)),
            };
            let answer: Arc<[u8]> =
                wire::seal(&key, id, wire::unix_ms(), &encode_reply(&reply)).into();
            cache.lock().unwrap_or_else(|e| e.into_inner()).answered(
                from,
                id,
                answer.clone(),
                Instant::now(),
            );
            if let Err(e) = socket.send_to(&answer, from).await {
                debug!(%from, error = %e, "media-control answer not sent");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retransmission_is_answered_from_the_cache_and_never_runs_twice() {
        let core: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let other: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let t0 = Instant::now();
        let mut cache = ReplyCache::default();
        assert_eq!(cache.seen(core, 1, t0), Seen::New);
        assert_eq!(cache.seen(core, 1, t0), Seen::Running);
        // The same id from another core is another request.
        assert_eq!(cache.seen(other, 1, t0), Seen::New);
        let answer: Arc<[u8]> = Arc::from(&b"answer"[..]);
        cache.answered(core, 1, answer.clone(), t0);
        assert_eq!(cache.seen(core, 1, t0), Seen::Answered(answer));
        // Long after any retry, the entry is gone.
        let later = t0 + KEEP_ANSWERS + Duration::from_secs(1);
        assert_eq!(cache.seen(core, 2, later), Seen::New);
        assert_eq!(cache.len(), 1, "only the new entry is left");
    }
}
