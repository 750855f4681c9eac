//! The SIP edge: the front door for phones.
//!
//! - [`registrar`]: REGISTER answered here (digest against the store's HA1, bindings in
//!   the location service with the phone's flow).
//! - [`proxy`]: every other request forwarded statelessly to a core node chosen by
//!   rendezvous hashing of the Call-ID ([`hrw`]), and requests from cores to phones over
//!   the flow a [`token`] names.
//! - [`auth`]: digest checks shared by both, with failure counting.
//! - [`bans`]: sources refused for a while (growing bans, an allow-list).
//! - [`carriers`]: the operator's carriers by source network and the tenant holding each
//!   assigned number, for calls in from the PSTN.
//! - [`calls`]: the one entry per admitted call that releases its tenant's slot when the
//!   call ends (caps on calls in progress and calls per second).
//! - [`directory`]: tenants and credentials in memory, kept true by change events.
//! - [`limits`]: GCRA rate limits per source address and network, per class of request.
//! - [`metrics`]: per-tenant series (prometheus-client).
//! - [`health`]: which core nodes answer the edge's pings.
//! - [`responder`]: stateless answers (OPTIONS, rejections of malformed requests).
//! - [`run`]: the shell, one task that runs all of the above over the listeners' input.

#![forbid(unsafe_code)]

pub mod auth;
pub mod bans;
pub mod calls;
pub mod carriers;
pub mod directory;
pub mod health;
pub mod hrw;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod registrar;
pub mod responder;
pub mod ringing;
pub mod run;
pub mod token;
pub mod uplinks;

pub use run::{EdgeCounters, EdgeDeps, EdgeSettings, run};
