//! The media-control protocol between a core node and a media node.
//!
//! A session is one call: two legs, `a` (the caller's side) and `b` (the callee's side),
//! each with its own port pair on the media node. The core hands the media node each SDP
//! it receives and sends on the SDP the media node gives back, so every stream is anchored
//! at the media node. The wire form is one JSON object per message (see
//! `docs/media-control.md`); in `serve` the same messages go through an in-process
//! implementation of [`MediaControl`].

#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub mod wire;

/// A side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    A,
    B,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }
}

/// What the core asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Reserve port pairs for both legs. `pool`: the tenant's placement; a node of
    /// another pool refuses the session (absent: any).
    Create {
        session: String,
        tenant: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    /// `from` sent an offer: the reply is the offer to send to the other leg.
    Offer {
        session: String,
        from: Leg,
        sdp: String,
    },
    /// `from` answered the offer relayed to it: the reply is the answer for the offerer.
    Answer {
        session: String,
        from: Leg,
        sdp: String,
    },
    /// Counters so far.
    Stats { session: String },
    /// Release the ports; the reply carries the final counters.
    Destroy { session: String },
    /// Is the node alive, and how full is it? (The core's health check and placement.)
    Ping,
}

/// Counters of one leg, as seen from the media node (received = from that leg's endpoint).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LegStats {
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// Expected minus received, from RTP sequence numbers (RFC 3550 A.3).
    pub packets_lost: u64,
    /// Interarrival jitter in milliseconds (RFC 3550 A.8).
    pub jitter_ms: f64,
    /// RFC 4733 events relayed from this leg.
    pub telephone_events: u64,
    /// Packets converted between PCMU and PCMA on their way from this leg.
    pub transcoded: u64,
    /// Where this leg's RTP actually comes from (after latching), if any arrived.
    pub latched: Option<String>,
    /// Milliseconds since this leg last sent RTP (since relaying began if it never did).
    #[serde(default)]
    pub silent_ms: u64,
    /// The leg's SDP says it does not both send and receive (hold): silence is expected.
    #[serde(default)]
    pub held: bool,
    /// Packets that came for this leg from a source other than the one it latched to
    /// (injection attempts, a previous call's party), dropped.
    #[serde(default)]
    pub foreign_dropped: u64,
    /// RTCP from this leg dropped: not well-formed RTCP (RFC 3550 §6.1), or a sender SSRC
    /// other than that of the leg's RTP.
    #[serde(default)]
    pub rtcp_dropped: u64,
}

/// Counters of a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    pub a: LegStats,
    pub b: LegStats,
}

/// What the media node answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
// One reply per request, moved once and dropped: a box would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Created,
    Sdp {
        sdp: String,
    },
    Stats {
        stats: SessionStats,
    },
    /// The answer to `ping`.
    Load(Load),
}

/// How full a media node is: placement compares sessions against `max_sessions`
/// (concurrent calls, not CPU, are what a media node runs out of).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub sessions: u64,
    pub max_sessions: u64,
    pub free_port_pairs: u64,
    /// Its calls wait for CPU (the cgroup's pressure is over the node's threshold): no
    /// room, whatever its sessions say. Absent from older nodes: false.
    #[serde(default)]
    pub saturated: bool,
}

impl Load {
    /// Sessions the node can still take.
    pub fn room(&self) -> u64 {
        if self.saturated {
            return 0;
        }
        self.max_sessions
            .saturating_sub(self.sessions)
            .min(self.free_port_pairs / 2)
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MediaError {
    /// The SDP cannot be relayed (the SIP answer is `488`).
    #[error("unacceptable SDP: {0}")]
    NotAcceptable(String),
    #[error("no such session")]
    NoSession,
    #[error("a session with this id exists")]
    Exists,
    /// No free ports or the pool is at its limit (the SIP answer is `503`).
    #[error("media capacity exhausted: {0}")]
    Exhausted(String),
    #[error("media node unreachable: {0}")]
    Unreachable(String),
    /// The media node could not read the request (another version's body, say).
    #[error("unreadable media-control request: {0}")]
    BadRequest(String),
}

/// A boxed future, so the trait is object safe (the core holds `Arc<dyn MediaControl>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A media node, as the core sees it.
pub trait MediaControl: Send + Sync + std::fmt::Debug {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Reply, MediaError>>;
}

/// The wire form of a request (one JSON object).
pub fn encode_request(r: &Request) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

pub fn decode_request(text: &str) -> Result<Request, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// The wire form of a reply or error.
pub fn encode_reply(r: &Result<Reply, MediaError>) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

pub fn decode_reply(text: &str) -> Result<Result<Reply, MediaError>, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips_and_reads_as_documented() {
        let r = Request::Offer {
            session: "c1".into(),
            from: Leg::A,
            sdp: "v=0\r\n".into(),
        };
        let text = encode_request(&r);
        assert_eq!(
            text,
            r#"{"op":"offer","session":"c1","from":"a","sdp":"v=0\r\n"}"#
        );
        assert_eq!(decode_request(&text).unwrap(), r);
        let err: Result<Reply, MediaError> = Err(MediaError::NotAcceptable("no codec".into()));
        let text = encode_reply(&err);
        assert_eq!(
            text,
            r#"{"Err":{"error":"not_acceptable","detail":"no codec"}}"#
        );
        assert_eq!(decode_reply(&text).unwrap(), err);
        assert!(decode_request(r#"{"op":"explode"}"#).is_err());
    }
}
