//! Canonical header names: every long form and compact form RFC 3261 and its extensions
//! define, matched case-insensitively without allocating.

use std::fmt;

macro_rules! header_names {
    ($( $variant:ident => $canonical:literal, [$($alias:literal),*], $list:literal; )*) => {
        /// A header name. Known names map to one variant whatever their case or form
        /// (`v`, `VIA` and `Via` are all [`HeaderName::Via`]); others are [`HeaderName::Other`]
        /// and are compared case-insensitively by the raw text kept in the message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum HeaderName {
            $( $variant, )*
            /// A header this crate has no name for; the message keeps its text.
            Other,
        }

        impl HeaderName {
            /// The canonical (long) spelling, or `None` for [`HeaderName::Other`].
            pub fn canonical(self) -> Option<&'static str> {
                match self {
                    $( HeaderName::$variant => Some($canonical), )*
                    HeaderName::Other => None,
                }
            }

            /// Whether RFC 3261 §7.3.1 allows several values of this header to be joined
            /// by commas in one row (so a row may be split into values).
            pub fn is_list(self) -> bool {
                match self {
                    $( HeaderName::$variant => $list, )*
                    HeaderName::Other => false,
                }
            }

            /// Looks a raw name up; case-insensitive, compact forms included.
            pub fn from_bytes(name: &[u8]) -> HeaderName {
                let mut buf = [0u8; 24];
                if name.is_empty() || name.len() > buf.len() {
                    return HeaderName::Other;
                }
                for (dst, src) in buf.iter_mut().zip(name) {
                    *dst = src.to_ascii_lowercase();
                }
                match &buf[..name.len()] {
                    $( $( $alias )|* => HeaderName::$variant, )*
                    _ => HeaderName::Other,
                }
            }
        }
    };
}

header_names! {
    Accept => "Accept", [b"accept"], true;
    AcceptContact => "Accept-Contact", [b"accept-contact", b"a"], true;
    AcceptEncoding => "Accept-Encoding", [b"accept-encoding"], true;
    AcceptLanguage => "Accept-Language", [b"accept-language"], true;
    AlertInfo => "Alert-Info", [b"alert-info"], true;
    Allow => "Allow", [b"allow"], true;
    AllowEvents => "Allow-Events", [b"allow-events", b"u"], true;
    AuthenticationInfo => "Authentication-Info", [b"authentication-info"], false;
    Authorization => "Authorization", [b"authorization"], false;
    CallId => "Call-ID", [b"call-id", b"i"], false;
    CallInfo => "Call-Info", [b"call-info"], true;
    Contact => "Contact", [b"contact", b"m"], true;
    ContentDisposition => "Content-Disposition", [b"content-disposition"], false;
    ContentEncoding => "Content-Encoding", [b"content-encoding", b"e"], true;
    ContentLanguage => "Content-Language", [b"content-language"], true;
    ContentLength => "Content-Length", [b"content-length", b"l"], false;
    ContentType => "Content-Type", [b"content-type", b"c"], false;
    CSeq => "CSeq", [b"cseq"], false;
    Date => "Date", [b"date"], false;
    ErrorInfo => "Error-Info", [b"error-info"], true;
    Event => "Event", [b"event", b"o"], false;
    Expires => "Expires", [b"expires"], false;
    From => "From", [b"from", b"f"], false;
    Identity => "Identity", [b"identity", b"y"], false;
    InReplyTo => "In-Reply-To", [b"in-reply-to"], true;
    MaxForwards => "Max-Forwards", [b"max-forwards"], false;
    MimeVersion => "MIME-Version", [b"mime-version"], false;
    MinExpires => "Min-Expires", [b"min-expires"], false;
    MinSe => "Min-SE", [b"min-se"], false;
    Organization => "Organization", [b"organization"], false;
    PAssertedIdentity => "P-Asserted-Identity", [b"p-asserted-identity"], true;
    Path => "Path", [b"path"], true;
    Priority => "Priority", [b"priority"], false;
    Privacy => "Privacy", [b"privacy"], false;
    ProxyAuthenticate => "Proxy-Authenticate", [b"proxy-authenticate"], false;
    ProxyAuthorization => "Proxy-Authorization", [b"proxy-authorization"], false;
    ProxyRequire => "Proxy-Require", [b"proxy-require"], true;
    RAck => "RAck", [b"rack"], false;
    Reason => "Reason", [b"reason"], true;
    RecordRoute => "Record-Route", [b"record-route"], true;
    ReferTo => "Refer-To", [b"refer-to", b"r"], false;
    ReferredBy => "Referred-By", [b"referred-by", b"b"], false;
    RejectContact => "Reject-Contact", [b"reject-contact", b"j"], true;
    Replaces => "Replaces", [b"replaces"], false;
    ReplyTo => "Reply-To", [b"reply-to"], false;
    RequestDisposition => "Request-Disposition", [b"request-disposition", b"d"], true;
    Require => "Require", [b"require"], true;
    RetryAfter => "Retry-After", [b"retry-after"], false;
    Route => "Route", [b"route"], true;
    RSeq => "RSeq", [b"rseq"], false;
    Server => "Server", [b"server"], false;
    ServiceRoute => "Service-Route", [b"service-route"], true;
    SessionExpires => "Session-Expires", [b"session-expires", b"x"], false;
    Subject => "Subject", [b"subject", b"s"], false;
    SubscriptionState => "Subscription-State", [b"subscription-state"], false;
    Supported => "Supported", [b"supported", b"k"], true;
    Timestamp => "Timestamp", [b"timestamp"], false;
    To => "To", [b"to", b"t"], false;
    Unsupported => "Unsupported", [b"unsupported"], true;
    UserAgent => "User-Agent", [b"user-agent"], false;
    Via => "Via", [b"via", b"v"], true;
    Warning => "Warning", [b"warning"], true;
    WwwAuthenticate => "WWW-Authenticate", [b"www-authenticate"], false;
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.canonical().unwrap_or("(extension header)"))
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName;

    #[test]
    fn every_compact_form_maps_to_its_long_form() {
        let pairs = [
            ("v", HeaderName::Via),
            ("i", HeaderName::CallId),
            ("f", HeaderName::From),
            ("t", HeaderName::To),
            ("m", HeaderName::Contact),
            ("l", HeaderName::ContentLength),
            ("c", HeaderName::ContentType),
            ("k", HeaderName::Supported),
            ("s", HeaderName::Subject),
            ("e", HeaderName::ContentEncoding),
            ("o", HeaderName::Event),
            ("u", HeaderName::AllowEvents),
            ("r", HeaderName::ReferTo),
            ("x", HeaderName::SessionExpires),
            ("y", HeaderName::Identity),
            ("b", HeaderName::ReferredBy),
        ];
        for (compact, long) in pairs {
            assert_eq!(
                HeaderName::from_bytes(compact.as_bytes()),
                long,
                "{compact}"
            );
            let upper = compact.to_ascii_uppercase();
            assert_eq!(HeaderName::from_bytes(upper.as_bytes()), long, "{upper}");
        }
    }

    #[test]
    fn names_match_in_any_case_and_unknown_names_are_other() {
        assert_eq!(
            HeaderName::from_bytes(b"MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_bytes(b"CALL-ID"), HeaderName::CallId);
        assert_eq!(
            HeaderName::from_bytes(b"NewFangledHeader"),
            HeaderName::Other
        );
        assert_eq!(HeaderName::from_bytes(b"C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b""), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(&[b'x'; 100]), HeaderName::Other);
    }

    #[test]
    fn list_headers_are_the_ones_rfc3261_lets_join() {
        assert!(HeaderName::Via.is_list());
        assert!(HeaderName::Contact.is_list());
        assert!(HeaderName::Allow.is_list());
        assert!(!HeaderName::Authorization.is_list());
        assert!(!HeaderName::WwwAuthenticate.is_list());
        assert!(!HeaderName::CallId.is_list());
    }
}
