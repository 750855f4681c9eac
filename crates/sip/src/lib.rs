//! SIP protocol core for Switchyard: messages, URIs, typed headers, framing, building and
//! editing, element checks, digest authentication and transaction state machines.
//!
//! This crate does no I/O and never reads a clock. Bytes and the current instant go in;
//! bytes to send, events and the next deadline come out. Sockets, timers and tasks live in
//! `switchyard-sip-net`.
//!
//! ```text
//!  bytes ──▶ Message::parse_datagram / StreamFramer ──▶ Message (lazy: start line + row table)
//!                                                          │ typed decoders on demand
//!                                                          ▼ (Via, NameAddr, CSeq, Uri…)
//!            inspect::check_request ──▶ Rejection (400/416/420/…) or Ok
//!            build::ResponseBuilder / build::Editor ──▶ bytes
//! ```

#![forbid(unsafe_code)]

pub mod build;
pub mod digest;
pub mod error;
pub mod framing;
pub mod header_name;
pub mod headers;
pub mod inspect;
pub mod message;
pub mod method;
pub mod scan;
pub mod seal;
pub mod transaction;
pub mod uri;

pub use error::{HeaderError, ParseError};
pub use header_name::HeaderName;
pub use message::{Message, RoutingKeys};
pub use method::Method;
pub use uri::Uri;
