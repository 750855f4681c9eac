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

/// A lower-case name prepared at compile time for a case-insensitive compare a word
/// (8 bytes) at a time: `(word | mask) == lower`, where `mask` has 0x20 on the letters
/// only, so exactly A-Z fold to a-z and every other byte must match as it is (a bare CR
/// never passes for a `-`, 0x0D | 0x20 being 0x2D).
#[derive(Clone, Copy)]
struct Key {
    len: usize,
    /// Word offsets: 0, then every 8 bytes, the last one ending at `len` (words may
    /// overlap); a name shorter than 8 bytes is one zero-padded word.
    words: usize,
    lower: [u64; 3],
    mask: [u64; 3],
}

const fn word_offset(len: usize, k: usize) -> usize {
    if len > 8 && (k + 1) * 8 >= len {
        len - 8
    } else {
        k * 8
    }
}

impl Key {
    const fn new(lower: &[u8]) -> Key {
        let len = lower.len();
        let words = if len <= 8 { 1 } else { len.div_ceil(8) };
        let mut key = Key {
            len,
            words,
            lower: [0; 3],
            mask: [0; 3],
        };
        let mut k = 0;
        while k < words {
            let at = word_offset(len, k);
            let mut i = 0;
            while i < 8 && at + i < len {
                let b = lower[at + i];
                key.lower[k] |= (b as u64) << (8 * i);
                if b.is_ascii_lowercase() {
                    key.mask[k] |= 0x20 << (8 * i);
                }
                i += 1;
            }
            k += 1;
        }
        key
    }

    #[inline(always)]
    fn matches(&self, name: &[u8]) -> bool {
        if name.len() != self.len {
            return false;
        }
        let mut k = 0;
        while k < self.words {
            let at = word_offset(self.len, k);
            let end = (at + 8).min(self.len);
            let mut w = [0u8; 8];
            w[..end - at].copy_from_slice(&name[at..end]);
            if u64::from_le_bytes(w) | self.mask[k] != self.lower[k] {
                return false;
            }
            k += 1;
        }
        true
    }
}

/// Looks a name up: dispatch on length, then compare the few names of that length
/// case-insensitively (exactly: only A-Z fold). A name that matches is therefore a valid
/// token. Kept in step with the table above by a test over every alias.
fn lookup(name: &[u8]) -> HeaderName {
    let is = |key: Key| key.matches(name);
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
            if is(const { Key::new(b"to") }) {
                return HeaderName::To;
            }
            HeaderName::Other
        }
        3 => {
            if is(const { Key::new(b"via") }) {
                return HeaderName::Via;
            }
            HeaderName::Other
        }
        4 => {
            if is(const { Key::new(b"cseq") }) {
                return HeaderName::CSeq;
            }
            if is(const { Key::new(b"date") }) {
                return HeaderName::Date;
            }
            if is(const { Key::new(b"from") }) {
                return HeaderName::From;
            }
            if is(const { Key::new(b"path") }) {
                return HeaderName::Path;
            }
            if is(const { Key::new(b"rack") }) {
                return HeaderName::RAck;
            }
            if is(const { Key::new(b"rseq") }) {
                return HeaderName::RSeq;
            }
            HeaderName::Other
        }
        5 => {
            if is(const { Key::new(b"allow") }) {
                return HeaderName::Allow;
            }
            if is(const { Key::new(b"event") }) {
                return HeaderName::Event;
            }
            if is(const { Key::new(b"route") }) {
                return HeaderName::Route;
            }
            HeaderName::Other
        }
        6 => {
            if is(const { Key::new(b"accept") }) {
                return HeaderName::Accept;
            }
            if is(const { Key::new(b"min-se") }) {
                return HeaderName::MinSe;
            }
            if is(const { Key::new(b"reason") }) {
                return HeaderName::Reason;
            }
            if is(const { Key::new(b"server") }) {
                return HeaderName::Server;
            }
            HeaderName::Other
        }
        7 => {
            if is(const { Key::new(b"call-id") }) {
                return HeaderName::CallId;
            }
            if is(const { Key::new(b"contact") }) {
                return HeaderName::Contact;
            }
            if is(const { Key::new(b"expires") }) {
                return HeaderName::Expires;
            }
            if is(const { Key::new(b"privacy") }) {
                return HeaderName::Privacy;
            }
            if is(const { Key::new(b"require") }) {
                return HeaderName::Require;
            }
            if is(const { Key::new(b"subject") }) {
                return HeaderName::Subject;
            }
            if is(const { Key::new(b"warning") }) {
                return HeaderName::Warning;
            }
            HeaderName::Other
        }
        8 => {
            if is(const { Key::new(b"identity") }) {
                return HeaderName::Identity;
            }
            if is(const { Key::new(b"priority") }) {
                return HeaderName::Priority;
            }
            if is(const { Key::new(b"refer-to") }) {
                return HeaderName::ReferTo;
            }
            if is(const { Key::new(b"replaces") }) {
                return HeaderName::Replaces;
            }
            if is(const { Key::new(b"reply-to") }) {
                return HeaderName::ReplyTo;
            }
            HeaderName::Other
        }
        9 => {
            if is(const { Key::new(b"call-info") }) {
                return HeaderName::CallInfo;
            }
            if is(const { Key::new(b"supported") }) {
                return HeaderName::Supported;
            }
            if is(const { Key::new(b"timestamp") }) {
                return HeaderName::Timestamp;
            }
            HeaderName::Other
        }
        10 => {
            if is(const { Key::new(b"alert-info") }) {
                return HeaderName::AlertInfo;
            }
            if is(const { Key::new(b"error-info") }) {
                return HeaderName::ErrorInfo;
            }
            if is(const { Key::new(b"user-agent") }) {
                return HeaderName::UserAgent;
            }
            HeaderName::Other
        }
        11 => {
            if is(const { Key::new(b"in-reply-to") }) {
                return HeaderName::InReplyTo;
            }
            if is(const { Key::new(b"min-expires") }) {
                return HeaderName::MinExpires;
            }
            if is(const { Key::new(b"referred-by") }) {
                return HeaderName::ReferredBy;
            }
            if is(const { Key::new(b"retry-after") }) {
                return HeaderName::RetryAfter;
            }
            if is(const { Key::new(b"unsupported") }) {
                return HeaderName::Unsupported;
            }
            HeaderName::Other
        }
        12 => {
            if is(const { Key::new(b"allow-events") }) {
                return HeaderName::AllowEvents;
            }
            if is(const { Key::new(b"content-type") }) {
                return HeaderName::ContentType;
            }
            if is(const { Key::new(b"max-forwards") }) {
                return HeaderName::MaxForwards;
            }
            if is(const { Key::new(b"mime-version") }) {
                return HeaderName::MimeVersion;
            }
            if is(const { Key::new(b"organization") }) {
                return HeaderName::Organization;
            }
            if is(const { Key::new(b"record-route") }) {
                return HeaderName::RecordRoute;
            }
            HeaderName::Other
        }
        13 => {
            if is(const { Key::new(b"authorization") }) {
                return HeaderName::Authorization;
            }
            if is(const { Key::new(b"proxy-require") }) {
                return HeaderName::ProxyRequire;
            }
            if is(const { Key::new(b"service-route") }) {
                return HeaderName::ServiceRoute;
            }
            HeaderName::Other
        }
        14 => {
            if is(const { Key::new(b"accept-contact") }) {
                return HeaderName::AcceptContact;
            }
            if is(const { Key::new(b"content-length") }) {
                return HeaderName::ContentLength;
            }
            if is(const { Key::new(b"reject-contact") }) {
                return HeaderName::RejectContact;
            }
            HeaderName::Other
        }
        15 => {
            if is(const { Key::new(b"accept-encoding") }) {
                return HeaderName::AcceptEncoding;
            }
            if is(const { Key::new(b"accept-language") }) {
                return HeaderName::AcceptLanguage;
            }
            if is(const { Key::new(b"session-expires") }) {
                return HeaderName::SessionExpires;
            }
            HeaderName::Other
        }
        16 => {
            if is(const { Key::new(b"content-encoding") }) {
                return HeaderName::ContentEncoding;
            }
            if is(const { Key::new(b"content-language") }) {
                return HeaderName::ContentLanguage;
            }
            if is(const { Key::new(b"www-authenticate") }) {
                return HeaderName::WwwAuthenticate;
            }
            HeaderName::Other
        }
        18 => {
            if is(const { Key::new(b"proxy-authenticate") }) {
                return HeaderName::ProxyAuthenticate;
            }
            if is(const { Key::new(b"subscription-state") }) {
                return HeaderName::SubscriptionState;
            }
            HeaderName::Other
        }
        19 => {
            if is(const { Key::new(b"authentication-info") }) {
                return HeaderName::AuthenticationInfo;
            }
            if is(const { Key::new(b"content-disposition") }) {
                return HeaderName::ContentDisposition;
            }
            if is(const { Key::new(b"p-asserted-identity") }) {
                return HeaderName::PAssertedIdentity;
            }
            if is(const { Key::new(b"proxy-authorization") }) {
                return HeaderName::ProxyAuthorization;
            }
            if is(const { Key::new(b"request-disposition") }) {
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
    fn only_ascii_letters_fold_at_any_position() {
        // Every alias, every position, every byte value: the name still matches exactly
        // when the byte is the original or (for a letter) its upper case.
        for (alias, name) in super::ALIASES {
            for at in 0..alias.len() {
                for b in 0..=255u8 {
                    let mut spelled = alias.to_vec();
                    spelled[at] = b;
                    let same = b == alias[at]
                        || (alias[at].is_ascii_lowercase() && b == alias[at].to_ascii_uppercase());
                    let found = HeaderName::from_bytes(&spelled);
                    assert_eq!(
                        found == *name,
                        same,
                        "{:?} with byte {b:#04x} at {at}",
                        String::from_utf8_lossy(alias)
                    );
                }
            }
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
