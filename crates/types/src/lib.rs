//! Shared newtypes spoken by every Switchyard crate.
//!
//! This crate owns names, not behaviour: identifiers that cross crate boundaries
//! (a tenant, a call, a node) get one type here so that a `TenantId` can never be
//! passed where a `NodeId` is meant. It has no dependencies and no logic.

use std::fmt;

/// The pool every node (core, media node) and tenant is in unless placed elsewhere.
pub const SHARED_POOL: &str = "shared";

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Wraps an identifier as it is stored or received.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

string_id!(
    /// A tenant (one business hosted on the platform).
    TenantId
);
string_id!(
    /// A SIP Call-ID as received or generated; opaque text.
    CallId
);
string_id!(
    /// A node of the cluster (edge, core or media process).
    NodeId
);

/// A network: address and prefix length (allow-lists, carriers' source networks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: std::net::IpAddr,
    pub len: u8,
}

impl Prefix {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
    pub fn parse(text: &str) -> Result<Prefix, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr.trim().parse().map_err(|e| format!("{text:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Prefix { addr, len })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        match (self.addr, ip) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_different_kinds_keep_their_text_and_name() {
        let t = TenantId::new("acme");
        assert_eq!(t.as_str(), "acme");
        assert_eq!(t.to_string(), "acme");
        assert_eq!(format!("{t:?}"), "TenantId(\"acme\")");
        assert_eq!(
            format!("{:?}", NodeId::from("core-1")),
            "NodeId(\"core-1\")"
        );
        assert_ne!(CallId::new("a"), CallId::new("b"));
    }
}
