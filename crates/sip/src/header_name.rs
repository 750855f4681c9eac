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
                lookup(name)
            }
        }

        /// Every spelling (lower-case) with its name, for tests of the fast lookup.
        #[cfg(test)]
        const ALIASES: &[(&[u8], HeaderName)] = &[
            $( $( ($alias, HeaderName::$variant), )* )*
        ];
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

/// Looks a name up: dispatch on length, then compare the few names of that length
/// case-insensitively (exactly: only A-Z fold). A name that matches is therefore a valid
/// token. Kept in step with the table above by a test over every alias.
fn lookup(name: &[u8]) -> HeaderName {
    let is = |lower: &[u8]| {
        name.iter()
            .zip(lower)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
    };
    match name.len() {
        1 => match name[0].to_ascii_lowercase() {
            b'a' => HeaderName::AcceptContact,
            b'u' => HeaderName::AllowEvents,
            b'i' => HeaderName::CallId,
            b'm' => HeaderName::Contact,
            b'e' => HeaderName::ContentEncoding,
            b'l' => HeaderName::ContentLength,
            b'c' => HeaderName::ContentType,
            b'o' => HeaderName::Event,
            b'f' => HeaderName::From,
            b'y' => HeaderName::Identity,
            b'r' => HeaderName::ReferTo,
            b'b' => HeaderName::ReferredBy,
            b'j' => HeaderName::RejectContact,
            b'd' => HeaderName::RequestDisposition,
            b'x' => HeaderName::SessionExpires,
            b's' => HeaderName::Subject,
            b'k' => HeaderName::Supported,
            b't' => HeaderName::To,
            b'v' => HeaderName::Via,
            _ => HeaderName::Other,
        },
        2 => {
            if is(b"to") {
                return HeaderName::To;
            }
            HeaderName::Other
        }
        3 => {
            if is(b"via") {
                return HeaderName::Via;
            }
            HeaderName::Other
        }
        4 => {
            if is(b"cseq") {
                return HeaderName::CSeq;
            }
            if is(b"date") {
                return HeaderName::Date;
            }
            if is(b"from") {
                return HeaderName::From;
            }
            if is(b"path") {
                return HeaderName::Path;
            }
            if is(b"rack") {
                return HeaderName::RAck;
            }
            if is(b"rseq") {
                return HeaderName::RSeq;
            }
            HeaderName::Other
        }
        5 => {
            if is(b"allow") {
                return HeaderName::Allow;
            }
            if is(b"event") {
                return HeaderName::Event;
            }
            if is(b"route") {
                return HeaderName::Route;
            }
            HeaderName::Other
        }
        6 => {
            if is(b"accept") {
                return HeaderName::Accept;
            }
            if is(b"min-se") {
                return HeaderName::MinSe;
            }
            if is(b"reason") {
                return HeaderName::Reason;
            }
            if is(b"server") {
                return HeaderName::Server;
            }
            HeaderName::Other
        }
        7 => {
            if is(b"call-id") {
                return HeaderName::CallId;
            }
            if is(b"contact") {
                return HeaderName::Contact;
            }
            if is(b"expires") {
                return HeaderName::Expires;
            }
            if is(b"privacy") {
                return HeaderName::Privacy;
            }
            if is(b"require") {
                return HeaderName::Require;
            }
            if is(b"subject") {
                return HeaderName::Subject;
            }
            if is(b"warning") {
                return HeaderName::Warning;
            }
            HeaderName::Other
        }
        8 => {
            if is(b"identity") {
                return HeaderName::Identity;
            }
            if is(b"priority") {
                return HeaderName::Priority;
            }
            if is(b"refer-to") {
                return HeaderName::ReferTo;
            }
            if is(b"replaces") {
                return HeaderName::Replaces;
            }
            if is(b"reply-to") {
                return HeaderName::ReplyTo;
            }
            HeaderName::Other
        }
        9 => {
            if is(b"call-info") {
                return HeaderName::CallInfo;
            }
            if is(b"supported") {
                return HeaderName::Supported;
            }
            if is(b"timestamp") {
                return HeaderName::Timestamp;
            }
            HeaderName::Other
        }
        10 => {
            if is(b"alert-info") {
                return HeaderName::AlertInfo;
            }
            if is(b"error-info") {
                return HeaderName::ErrorInfo;
            }
            if is(b"user-agent") {
                return HeaderName::UserAgent;
            }
            HeaderName::Other
        }
        11 => {
            if is(b"in-reply-to") {
                return HeaderName::InReplyTo;
            }
            if is(b"min-expires") {
                return HeaderName::MinExpires;
            }
            if is(b"referred-by") {
                return HeaderName::ReferredBy;
            }
            if is(b"retry-after") {
                return HeaderName::RetryAfter;
            }
            if is(b"unsupported") {
                return HeaderName::Unsupported;
            }
            HeaderName::Other
        }
        12 => {
            if is(b"allow-events") {
                return HeaderName::AllowEvents;
            }
            if is(b"content-type") {
                return HeaderName::ContentType;
            }
            if is(b"max-forwards") {
                return HeaderName::MaxForwards;
            }
            if is(b"mime-version") {
                return HeaderName::MimeVersion;
            }
            if is(b"organization") {
                return HeaderName::Organization;
            }
            if is(b"record-route") {
                return HeaderName::RecordRoute;
            }
            HeaderName::Other
        }
        13 => {
            if is(b"authorization") {
                return HeaderName::Authorization;
            }
            if is(b"proxy-require") {
                return HeaderName::ProxyRequire;
            }
            if is(b"service-route") {
                return HeaderName::ServiceRoute;
            }
            HeaderName::Other
        }
        14 => {
            if is(b"accept-contact") {
                return HeaderName::AcceptContact;
            }
            if is(b"content-length") {
                return HeaderName::ContentLength;
            }
            if is(b"reject-contact") {
                return HeaderName::RejectContact;
            }
            HeaderName::Other
        }
        15 => {
            if is(b"accept-encoding") {
                return HeaderName::AcceptEncoding;
            }
            if is(b"accept-language") {
                return HeaderName::AcceptLanguage;
            }
            if is(b"session-expires") {
                return HeaderName::SessionExpires;
            }
            HeaderName::Other
        }
        16 => {
            if is(b"content-encoding") {
                return HeaderName::ContentEncoding;
            }
            if is(b"content-language") {
                return HeaderName::ContentLanguage;
            }
            if is(b"www-authenticate") {
                return HeaderName::WwwAuthenticate;
            }
            HeaderName::Other
        }
        18 => {
            if is(b"proxy-authenticate") {
                return HeaderName::ProxyAuthenticate;
            }
            if is(b"subscription-state") {
                return HeaderName::SubscriptionState;
            }
            HeaderName::Other
        }
        19 => {
            if is(b"authentication-info") {
                return HeaderName::AuthenticationInfo;
            }
            if is(b"content-disposition") {
                return HeaderName::ContentDisposition;
            }
            if is(b"p-asserted-identity") {
                return HeaderName::PAssertedIdentity;
            }
            if is(b"proxy-authorization") {
                return HeaderName::ProxyAuthorization;
            }
            if is(b"request-disposition") {
                return HeaderName::RequestDisposition;
            }
            HeaderName::Other
        }
        _ => HeaderName::Other,
    }
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
    fn the_fast_lookup_knows_every_spelling() {
        for (alias, name) in super::ALIASES {
            assert_eq!(
                HeaderName::from_bytes(alias),
                *name,
                "{}",
                String::from_utf8_lossy(alias)
            );
        }
    }

    #[test]
    fn a_bare_cr_never_passes_for_a_dash() {
        assert_eq!(
            HeaderName::from_bytes(b"Content\rLength"),
            HeaderName::Other
        );
        assert_eq!(HeaderName::from_bytes(b"V\xc3\xa1"), HeaderName::Other);
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
