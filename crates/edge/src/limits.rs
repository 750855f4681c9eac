//! Rate limits per source before any other work: GCRA (governor) per address (IPv4 /32,
//! IPv6 /128) and per network (IPv4 /24, IPv6 /64 by default) for each class of new
//! request. A request over either limit is dropped without an answer (an answer would
//! feed the flood); a phone's retransmission gets through once the bucket refills.
//! Requests inside a dialog, responses and allow-listed sources are never limited.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use switchyard_sip::{Message, Method};

/// What a new request is, for its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    Register,
    /// INVITE and the other requests that open a dialog.
    Call,
    /// OPTIONS, MESSAGE and everything else outside a dialog.
    Other,
}

impl MethodClass {
    pub const ALL: [MethodClass; 3] =
        [MethodClass::Register, MethodClass::Call, MethodClass::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Register => "register",
            MethodClass::Call => "call",
            MethodClass::Other => "other",
        }
    }

    /// The class of a request from a phone; `None` inside a dialog (never limited).
    pub fn of(msg: &Message) -> Option<MethodClass> {
        let method = msg.method()?;
        if matches!(method, Method::Ack | Method::Cancel | Method::Bye)
            || msg.to_header().is_ok_and(|t| t.tag().is_some())
        {
            return None;
        }
        Some(match method {
            Method::Register => MethodClass::Register,
            Method::Invite | Method::Subscribe | Method::Refer => MethodClass::Call,
            _ => MethodClass::Other,
        })
    }
}

/// The limits, per class (requests per second; a burst of twice that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub per_address: u32,
    pub per_network: u32,
    pub v4_network_bits: u8,
    pub v6_network_bits: u8,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            per_address: 50,
            per_network: 500,
            v4_network_bits: 24,
            v6_network_bits: 64,
        }
    }
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Address,
    Network,
}

type Key = (MethodClass, u128, bool);

/// Keyed GCRA buckets for one edge (its loop is the only user).
#[derive(Debug)]
pub struct SourceLimits {
    settings: LimitSettings,
    address: DefaultKeyedRateLimiter<Key>,
    network: DefaultKeyedRateLimiter<Key>,
}

fn quota(per_second: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(per_second.max(1).saturating_mul(2)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// The address as a number with its family, masked to `bits`.
fn masked(ip: IpAddr, bits: u8) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(bits.min(32)))
                .unwrap_or(0);
            (u128::from(u32::from(v4) & mask), false)
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(bits.min(128)))
                .unwrap_or(0);
            (u128::from(v6) & mask, true)
        }
    }
}

impl SourceLimits {
    pub fn new(settings: LimitSettings) -> SourceLimits {
        SourceLimits {
            settings,
            address: RateLimiter::keyed(quota(settings.per_address)),
            network: RateLimiter::keyed(quota(settings.per_network)),
        }
    }

    /// Takes one request of `class` from `ip` out of both buckets, or says which is empty.
    pub fn check(&self, ip: IpAddr, class: MethodClass) -> Result<(), Limited> {
        let (addr, v6) = masked(ip, if ip.is_ipv4() { 32 } else { 128 });
        if self.address.check_key(&(class, addr, v6)).is_err() {
            return Err(Limited::Address);
        }
        let bits = if ip.is_ipv4() {
            self.settings.v4_network_bits
        } else {
            self.settings.v6_network_bits
        };
        let (net, v6) = masked(ip, bits);
        if self.network.check_key(&(class, net, v6)).is_err() {
            return Err(Limited::Network);
        }
        Ok(())
    }

    /// Forgets buckets that are full again (call every minute or so): memory follows the
    /// sources active lately.
    pub fn purge(&self) {
        self.address.retain_recent();
        self.network.retain_recent();
        self.address.shrink_to_fit();
        self.network.shrink_to_fit();
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.address.len() + self.network.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_passes_then_the_address_then_its_network_is_limited() {
        let limits = SourceLimits::new(LimitSettings {
            per_address: 5,
            per_network: 12,
            ..LimitSettings::default()
        });
        let a = ip("192.0.2.1");
        for _ in 0..10 {
            assert_eq!(limits.check(a, MethodClass::Register), Ok(()));
        }
        assert_eq!(
            limits.check(a, MethodClass::Register),
            Err(Limited::Address)
        );
        // Another class of the same address has its own bucket.
        assert_eq!(limits.check(a, MethodClass::Call), Ok(()));
        // Neighbours in the /24 share the network's bucket (24 at once here).
        let mut passed = 0;
        for host in 2..40 {
            let neighbour = ip(&format!("192.0.2.{host}"));
            if limits.check(neighbour, MethodClass::Register).is_ok() {
                passed += 1;
            } else {
                assert_eq!(
                    limits.check(neighbour, MethodClass::Register),
                    Err(Limited::Network)
                );
            }
        }
        assert_eq!(passed, 24 - 10);
        // Another /24 is untouched.
        assert_eq!(limits.check(ip("192.0.3.1"), MethodClass::Register), Ok(()));
        // IPv6: one /64 shares a bucket.
        for i in 0..24 {
            let addr = ip(&format!("2001:db8::{:x}", i + 1));
            assert!(limits.check(addr, MethodClass::Other).is_ok());
        }
        assert_eq!(
            limits.check(ip("2001:db8::ffff"), MethodClass::Other),
            Err(Limited::Network)
        );
        assert!(
            limits
                .check(ip("2001:db8:0:1::1"), MethodClass::Other)
                .is_ok()
        );
    }

    #[test]
    fn only_requests_outside_a_dialog_have_a_class() {
        let parse = |start: &str, to_tag: &str| {
            Message::parse_datagram(Bytes::from(format!(
                "{start}\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>{to_tag}\r\nCall-ID: c\r\nCSeq: 1 {}\r\nContent-Length: 0\r\n\r\n",
                start.split(' ').next().unwrap()
            )))
            .unwrap()
        };
        assert_eq!(
            MethodClass::of(&parse("REGISTER sip:x SIP/2.0", "")),
            Some(MethodClass::Register)
        );
        assert_eq!(
            MethodClass::of(&parse("INVITE sip:b@x SIP/2.0", "")),
            Some(MethodClass::Call)
        );
        assert_eq!(
            MethodClass::of(&parse("OPTIONS sip:x SIP/2.0", "")),
            Some(MethodClass::Other)
        );
        assert_eq!(
            MethodClass::of(&parse("INVITE sip:b@x SIP/2.0", ";tag=2")),
            None
        );
        assert_eq!(
            MethodClass::of(&parse("BYE sip:b@x SIP/2.0", ";tag=2")),
            None
        );
        assert_eq!(MethodClass::of(&parse("ACK sip:b@x SIP/2.0", "")), None);
    }
}
