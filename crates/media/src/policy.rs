//! Where a media node may send (and whom it hears): never to loopback, link-local,
//! unspecified, multicast or broadcast addresses, nor to the networks the operator denies
//! (the cluster's internal ranges), unless a network is allowed explicitly. Without this
//! a phone could aim the relay at internal services, a core's SIP port among them, by
//! naming them in its SDP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address prefix: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    bits: u8,
}

impl Network {
    pub fn new(addr: IpAddr, bits: u8) -> Network {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        Network {
            addr,
            bits: bits.min(max),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or prefix like 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Network::new(addr, bits))
    }
}

/// The media node's rule for peers' addresses.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    /// Networks allowed even though they are denied (by default or by `deny`).
    pub allow: Vec<Network>,
    /// Networks denied beyond the built-in ones: the cluster's internal ranges.
    pub deny: Vec<Network>,
}

impl DestinationPolicy {
    /// The policy of a node bound to `bind`: one bound to loopback serves phones on this
    /// machine, so loopback is allowed there (and only there).
    pub fn for_bind(bind: IpAddr, allow: Vec<Network>, deny: Vec<Network>) -> DestinationPolicy {
        let mut allow = allow;
        if bind.is_loopback() {
            allow.push(Network::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8));
            allow.push(Network::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128));
        }
        DestinationPolicy { allow, deny }
    }

    /// Whether the node may send to (and take packets from) `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allow.iter().any(|n| n.contains(ip)) {
            return true;
        }
        let built_in = match ip {
            IpAddr::V4(v4) => {
                v4.is_loopback()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_multicast()
                    || v4.is_broadcast()
            }
            IpAddr::V6(v6) => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6
                        .to_ipv4_mapped()
                        .is_some_and(|v4| !self.permits(IpAddr::V4(v4)))
            }
        };
        !built_in && !self.deny.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_and_special_addresses_are_refused_unless_allowed() {
        let public = DestinationPolicy::for_bind(
            ip("203.0.113.5"),
            Vec::new(),
            vec!["10.20.0.0/16".parse().unwrap()],
        );
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "169.254.1.1",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "10.20.3.4",
            "::ffff:127.0.0.1",
            "::ffff:10.20.0.1",
        ] {
            assert!(!public.permits(ip(bad)), "{bad}");
        }
        for good in ["198.51.100.7", "10.21.0.1", "192.168.1.10", "2001:db8::5"] {
            assert!(public.permits(ip(good)), "{good}");
        }
        // A node on loopback serves phones on this machine.
        let local = DestinationPolicy::for_bind(ip("127.0.0.1"), Vec::new(), Vec::new());
        assert!(local.permits(ip("127.0.0.1")) && local.permits(ip("::1")));
        assert!(!local.permits(ip("169.254.1.1")));
        // An operator may allow a denied range.
        let lab = DestinationPolicy::for_bind(
            ip("203.0.113.5"),
            vec!["169.254.0.0/16".parse().unwrap()],
            Vec::new(),
        );
        assert!(lab.permits(ip("169.254.7.7")));
    }

    #[test]
    fn prefixes_parse_and_match_on_their_bits() {
        let n: Network = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.255.1.1")) && !n.contains(ip("11.0.0.1")));
        assert!(!n.contains(ip("::ffff:10.0.0.1")), "families never mix");
        let one: Network = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let all: Network = "::/0".parse().unwrap();
        assert!(all.contains(ip("2001:db8::1")));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("ten/8".parse::<Network>().is_err());
    }
}
