//! `switchyard bench`: system load tools. `provision` drives the provisioning API over
//! real HTTP with many concurrent clients, then checks every invariant in the store.

pub mod provision;
