//! SIP transports for Switchyard: UDP, TCP, TLS, WebSocket and secure WebSocket (RFC 7118).
//!
//! This crate owns sockets, connections and timers; the protocol logic it feeds lives in
//! `switchyard-sip` and never sees a socket.
//!
//! ```text
//!  sockets ──▶ listeners (framing, limits, timeouts) ──▶ Incoming ──▶ role (edge/core)
//!                                                                        │
//!  sockets ◀── Hub::send / Hub::respond (RFC 3261 §18.2.2, RFC 3581) ◀───┘
//! ```
//!
//! Responses go back where RFC 3261 §18.2.2 and RFC 3581 say: over the connection the
//! request came on for streams; for UDP to the source address, at the `rport` source port
//! when asked for, else at the sent-by port. `maddr` is not honoured for responses: it
//! would let a request reflect answers at a third address.

#![forbid(unsafe_code)]

mod driver;
mod hub;
mod limits;
mod listeners;
mod stream;
pub mod tls;
pub use rustls;
mod transport;
pub mod udp;
mod ws;

pub use driver::{DriverError, DriverHandle, Peer, TuEvent, spawn_driver};
pub use hub::{Hub, SendError};
pub use limits::{ConnectionLimits, LimitsConfig};
pub use listeners::{BoundListeners, ListenConfig, spawn_listeners};
pub use transport::{FlowId, Incoming, Target, Transport, response_target};
