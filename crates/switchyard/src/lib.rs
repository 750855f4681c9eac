//! The Switchyard binary's library: process configuration, `serve` (every role in one
//! process) and the commands around it. `main.rs` only parses flags and calls in here, so
//! tests can drive the same code.

pub mod bench;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http_client;
pub mod import;
pub mod roles;
pub mod serve;
