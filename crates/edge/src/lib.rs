//! The SIP edge. So far: the choice of core node for a dialog ([`hrw`]). The registrar,
//! limits and the dispatcher come with the first-call issue.

#![forbid(unsafe_code)]

pub mod hrw;
