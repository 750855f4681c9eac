//! Shared newtypes spoken by every Switchyard crate.
//!
//! This crate owns names, not behaviour: identifiers that cross crate boundaries
//! (a tenant, a call, a node) get one type here so that a `TenantId` can never be
//! passed where a `NodeId` is meant. It has no dependencies and no logic.

use std::fmt;

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
