//! `switchyard bench`: system load tools. `provision` drives the provisioning API over
//! real HTTP with many concurrent clients, then checks every invariant in the store;
//! `register-storm` registers thousands of phones at once over UDP; `calls` places calls
//! that end every way a call ends, and `noisy-neighbour` sets one tenant's flood against
//! another's steady calls.

pub mod calls;
pub mod provision;
pub mod rtp;
pub mod stalls;
pub mod storm;

/// Large socket buffers for a load generator, so its own kernel queues lose nothing.
pub(crate) fn grow_buffers(socket: &tokio::net::UdpSocket) {
    switchyard_sip_net::udp::size_buffers(socket, 8 * 1024 * 1024);
}
