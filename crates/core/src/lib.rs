//! The call engine: a back-to-back user agent.
//!
//! Each call is two dialogs with their own Call-IDs, tags and CSeqs: leg A towards the
//! caller (we are its UAS) and leg B towards the callee (we are its UAC, forking to every
//! registered contact; the first 2xx wins and the others are CANCELled). Requests reach
//! the core from an edge, which vouches for the tenant and the authenticated caller with
//! `X-Sy-Tenant`/`X-Sy-Caller`; the tenant's configuration is read at call time through
//! [`cache::ConfigCache`], which change events invalidate. Media is anchored through the
//! media-control protocol; the CDR is written when the call ends.
//!
//! The engine ([`engine::Engine`]) is a state machine with no I/O and no clock of its
//! own; [`spawn_core`] is its shell: it feeds the engine the transaction driver's events,
//! the answers of lookups and media requests it ran in tasks, and the time, and runs what
//! the engine asks for.

#![forbid(unsafe_code)]

pub mod cache;
pub mod cdr;
pub mod dialog;
pub mod dialplan;
pub mod engine;
pub mod handoff;
pub mod media_client;
pub mod metrics;
pub mod routing;
mod shell;

pub use shell::spawn_core;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::metrics::CallMetrics;

/// Headers an edge sets (and strips from anything a phone sends).
pub const TENANT_HEADER: &str = "X-Sy-Tenant";
pub const CALLER_HEADER: &str = "X-Sy-Caller";
/// Set by an edge on a call from a carrier: the caller is a PSTN number.
pub const CARRIER_HEADER: &str = "X-Sy-Carrier";

pub(crate) const T1: Duration = Duration::from_millis(500);
pub(crate) const T2: Duration = Duration::from_secs(4);
/// What the core takes (REFER for transfers, RFC 3515; NOTIFY answered `200`).
pub(crate) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY";
/// RFC 4028 §4: the smallest session interval we accept (and the protocol's minimum).
pub(crate) const MIN_SE: u32 = 90;
/// How long a stopping engine waits for the answers to its BYEs and CANCELs.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// A trunk that has said nothing (not even `100 Trying`) this long after an INVITE is
/// given up for the next route (its late answers are ACKed and hung up).
pub(crate) const TRUNK_SILENCE: Duration = Duration::from_secs(5);
/// How long a call out through a trunk may ring (the PSTN callee has no no-answer time
/// of ours; the caller usually gives up first).
pub(crate) const OUTBOUND_RING_LIMIT: Duration = Duration::from_secs(180);
/// How often the leases of held trunk channels are renewed (Redis).
pub(crate) const CHANNEL_RENEW_EVERY: Duration = Duration::from_secs(30);
/// The Route parameter that tells an edge to send a request out to a trunk's address.
pub const TRUNK_ROUTE_PARAM: &str = "sy-trunk";

/// Where the engine listens and what it may read.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Our SIP socket (Contact, Via).
    pub local: SocketAddr,
    /// Hang up an answered call when a leg sends no RTP for this long (not while on hold).
    pub rtp_timeout: Option<Duration>,
    /// Per-tenant call series (registered in the node's registry by the caller).
    pub metrics: Arc<CallMetrics>,
    /// Trunks' channels in use, shared with the other cores on Redis.
    pub channels: Arc<switchyard_state::calls::LiveCalls>,
    /// Checks the edges' `X-Sy-Seal` (the cluster secret).
    pub seal: switchyard_sip::seal::SealKey,
    /// Answered calls' records for takeover (Redis): written as calls change, looked up
    /// when a request of an unknown dialog arrives. None: calls die with their core.
    pub dialogs: Option<Arc<switchyard_state::dialogs::DialogStore>>,
    /// Which media node holds a session, and taking over another core's sessions.
    pub placement: Option<Arc<dyn media_client::SessionPlacement>>,
    /// Asking other cores for calls (an attended transfer replacing a call another core
    /// holds) and answering their asks. None: a core alone with its tenants' calls.
    pub handoffs: Option<Arc<handoff::Handoffs>>,
    /// Round-robin groups' counters, shared with every core that may take their calls.
    pub turns: Arc<switchyard_state::turns::Turns>,
}

/// What the outside may watch of a running engine.
#[derive(Debug, Clone)]
pub struct CoreHandle {
    active: Arc<AtomicUsize>,
    /// New calls are taken (false while an operator drains the core).
    accepting: Arc<AtomicBool>,
    /// CDRs in the writer's queue.
    cdrs_pending: Arc<AtomicUsize>,
    /// Ended calls whose CDR waits for the media session's counters.
    cdrs_waiting: Arc<AtomicUsize>,
    /// Dialog records written to Redis, and calls taken over from other cores.
    dialog_writes: Arc<std::sync::atomic::AtomicU64>,
    taken_over: Arc<std::sync::atomic::AtomicU64>,
    /// Calls handed to another core that asked, and calls taken from one on asking.
    handed_over: Arc<std::sync::atomic::AtomicU64>,
    claimed: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for CoreHandle {
    fn default() -> Self {
        CoreHandle {
            active: Arc::default(),
            accepting: Arc::new(AtomicBool::new(true)),
            cdrs_pending: Arc::default(),
            cdrs_waiting: Arc::default(),
            dialog_writes: Arc::default(),
            taken_over: Arc::default(),
            handed_over: Arc::default(),
            claimed: Arc::default(),
        }
    }
}

impl CoreHandle {
    /// Stops (false) or resumes (true) taking new calls; calls in progress go on. New
    /// INVITEs meanwhile get `503` with `Retry-After` (edges stop sending them once the
    /// core's record says it drains).
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::Relaxed);
    }

    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    /// Dialog records written for takeover so far.
    pub fn dialog_writes(&self) -> u64 {
        self.dialog_writes.load(Ordering::Relaxed)
    }

    /// Calls taken over from other cores so far.
    pub fn taken_over(&self) -> u64 {
        self.taken_over.load(Ordering::Relaxed)
    }

    /// Calls handed to other cores that asked for them (attended transfers).
    pub fn handed_over(&self) -> u64 {
        self.handed_over.load(Ordering::Relaxed)
    }

    /// Calls taken from other cores on asking (attended transfers).
    pub fn claimed(&self) -> u64 {
        self.claimed.load(Ordering::Relaxed)
    }

    /// Calls in progress (ringing or answered).
    pub fn active_calls(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// CDRs of ended calls not yet in the store.
    pub fn cdrs_pending(&self) -> usize {
        self.cdrs_pending.load(Ordering::Relaxed) + self.cdrs_waiting.load(Ordering::Relaxed)
    }
}

/// The reason phrase of a `488`: what the media node found wrong with the offer.
pub(crate) fn refusal(
    outcome: Result<switchyard_media_control::Reply, switchyard_media_control::MediaError>,
) -> String {
    match outcome {
        Err(e) => format!("Not Acceptable Here: {e}"),
        Ok(_) => "Not Acceptable Here".to_owned(),
    }
}
