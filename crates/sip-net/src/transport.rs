//! Names for transports, flows and where a message came from or goes to.

use std::fmt;
use std::net::SocketAddr;

use switchyard_sip::headers::Via;
use switchyard_sip::inspect::Inbound;

/// A SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    /// The token used in Via and `;transport=`.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.via_token())
    }
}

/// One connection (TCP, TLS or WebSocket); a registration keeps it to reach the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// A received message (or verdict on received bytes) with where it came from.
#[derive(Debug)]
pub struct Incoming {
    pub inbound: Inbound,
    pub transport: Transport,
    pub source: SocketAddr,
    pub local: SocketAddr,
    /// The connection it came on, for stream transports.
    pub flow: Option<FlowId>,
    /// When the listener read it: the queueing delay behind it is measured from here.
    pub received: std::time::Instant,
}

/// Where to send a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Over an existing connection.
    Flow(FlowId),
    /// A UDP datagram from the socket bound at `local` to `dest`.
    Datagram { local: SocketAddr, dest: SocketAddr },
}

/// Where the response to a request goes (RFC 3261 §18.2.2 and RFC 3581): the connection
/// it came on; for UDP, the source address, at the source port if the top Via asked for
/// `rport`, else at the sent-by port (5060 when absent).
pub fn response_target(
    transport: Transport,
    source: SocketAddr,
    local: SocketAddr,
    flow: Option<FlowId>,
    top_via: Option<&Via<'_>>,
) -> Target {
    if let (true, Some(flow)) = (transport.is_stream(), flow) {
        return Target::Flow(flow);
    }
    let port = match top_via {
        Some(via) if via.rport().is_some() => source.port(),
        Some(via) => via.port.unwrap_or(5060),
        None => source.port(),
    };
    Target::Datagram {
        local,
        dest: SocketAddr::new(source.ip(), port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via(s: &str) -> Via<'_> {
        Via::parse(s).unwrap()
    }

    #[test]
    fn udp_responses_go_to_the_source_ip_and_the_right_port() {
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let rport = via("SIP/2.0/UDP 192.0.2.1:5070;rport;branch=z9hG4bK1");
        assert_eq!(
            response_target(Transport::Udp, src, local, None, Some(&rport)),
            Target::Datagram { local, dest: src }
        );
        let sent_by = via("SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1");
        assert_eq!(
            response_target(Transport::Udp, src, local, None, Some(&sent_by)),
            Target::Datagram {
                local,
                dest: "127.0.0.1:5070".parse().unwrap()
            }
        );
        let no_port = via("SIP/2.0/UDP 192.0.2.1;maddr=224.0.1.75;branch=z9hG4bK1");
        assert_eq!(
            response_target(Transport::Udp, src, local, None, Some(&no_port)),
            Target::Datagram {
                local,
                dest: "127.0.0.1:5060".parse().unwrap()
            },
            "maddr is never honoured; the source address is"
        );
    }

    #[test]
    fn stream_responses_reuse_the_connection() {
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        assert_eq!(
            response_target(Transport::Tcp, src, local, Some(FlowId(7)), None),
            Target::Flow(FlowId(7))
        );
    }
}
