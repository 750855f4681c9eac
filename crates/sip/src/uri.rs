//! URIs: `sip`, `sips`, `tel` (RFC 3966) and any other absolute URI kept opaque.
//! Parsed without allocation over the text they came in; equality follows RFC 3261
//! §19.1.4 for SIP URIs and RFC 3966 §4 for tel URIs.

use crate::error::HeaderError;
use crate::scan::{Params, find_byte};

/// A parsed URI borrowing from its source text.
#[derive(Debug, Clone, Copy)]
pub enum Uri<'a> {
    Sip(SipUri<'a>),
    Tel(TelUri<'a>),
    /// An absolute URI of another scheme (`im:`, `http:`, `urn:`...), kept as text.
    Other {
        scheme: &'a str,
        rest: &'a str,
    },
}

/// `sip:` or `sips:` URI.
#[derive(Debug, Clone, Copy)]
pub struct SipUri<'a> {
    pub raw: &'a str,
    pub secure: bool,
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    /// Host as written; an IPv6 reference keeps its brackets.
    pub host: &'a str,
    pub port: Option<u16>,
    pub params: Params<'a>,
    /// The text after `?`, if any.
    pub headers: Option<&'a str>,
}

/// `tel:` URI (RFC 3966).
#[derive(Debug, Clone, Copy)]
pub struct TelUri<'a> {
    pub raw: &'a str,
    /// The number with its visual separators, e.g. `+1-201-555-0123`.
    pub number: &'a str,
    pub params: Params<'a>,
}

fn err(what: impl Into<String>) -> HeaderError {
    HeaderError::Uri(what.into())
}

impl<'a> Uri<'a> {
    /// Parses an absolute URI. Fails on whitespace, `<`/`>`, bad escapes, a bad host or
    /// port, or a scheme that is not `ALPHA *(ALPHA / DIGIT / "+" / "-" / ".")`.
    pub fn parse(s: &'a str) -> Result<Uri<'a>, HeaderError> {
        // One pass: refuse white space, controls and delimiters, and find the scheme colon.
        let mut colon = None;
        for (i, &b) in s.as_bytes().iter().enumerate() {
            if FORBIDDEN[b as usize] {
                return Err(err(format!("character {:?} not allowed in URI", b as char)));
            }
            if b == b':' && colon.is_none() {
                colon = Some(i);
            }
        }
        let colon = colon.ok_or_else(|| err("no scheme"))?;
        let scheme = &s[..colon];
        let rest = &s[colon + 1..];
        let sb = scheme.as_bytes();
        if sb.is_empty()
            || !sb[0].is_ascii_alphabetic()
            || !sb
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(err(format!("bad scheme {scheme:?}")));
        }
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            parse_sip(s, scheme.len() == 4, rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            parse_tel(s, rest).map(Uri::Tel)
        } else if rest.is_empty() {
            Err(err("empty URI after scheme"))
        } else {
            Ok(Uri::Other { scheme, rest })
        }
    }

    /// The scheme as written.
    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(u) => &u.raw[..if u.secure { 4 } else { 3 }],
            Uri::Tel(t) => &t.raw[..3],
            Uri::Other { scheme, .. } => scheme,
        }
    }

    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// The host of a SIP URI.
    pub fn host(&self) -> Option<&'a str> {
        self.as_sip().map(|u| u.host)
    }

    /// URI equivalence: RFC 3261 §19.1.4 for sip/sips, RFC 3966 §4 for tel, and an exact
    /// match (scheme case-insensitive) for other schemes.
    pub fn equivalent(&self, other: &Uri<'_>) -> bool {
        match (self, other) {
            (Uri::Sip(a), Uri::Sip(b)) => a.equivalent(b),
            (Uri::Tel(a), Uri::Tel(b)) => a.equivalent(b),
            (
                Uri::Other {
                    scheme: s1,
                    rest: r1,
                },
                Uri::Other {
                    scheme: s2,
                    rest: r2,
                },
            ) => s1.eq_ignore_ascii_case(s2) && r1 == r2,
            _ => false,
        }
    }
}

const fn class_table(kind: u8) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let unreserved = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            );
        t[i] = match kind {
            // Bytes no URI may contain: white space, controls, <, >, ".
            0 => b <= 0x20 || b == 0x7f || matches!(b, b'<' | b'>' | b'"'),
            // user = 1*( unreserved / escaped / user-unreserved )
            1 => {
                unreserved
                    || matches!(
                        b,
                        b'%' | b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/'
                    )
            }
            // password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
            2 => unreserved || matches!(b, b'%' | b'&' | b'=' | b'+' | b'$' | b','),
            // paramchar = param-unreserved / unreserved / escaped
            3 => unreserved || matches!(b, b'%' | b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$'),
            // hostname characters (IPv4 and names)
            _ => b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'),
        };
        i += 1;
    }
    t
}

static FORBIDDEN: [bool; 256] = class_table(0);
static USER: [bool; 256] = class_table(1);
static PASSWORD: [bool; 256] = class_table(2);
static PARAMCHAR: [bool; 256] = class_table(3);
pub(crate) static HOSTCHAR: [bool; 256] = class_table(4);

fn all_in(s: &str, table: &[bool; 256]) -> bool {
    s.bytes().all(|b| table[b as usize])
}

/// The host of a `sip:`/`sips:` URI, found by structure only (no validation).
pub fn sip_host(uri: &str) -> Option<&str> {
    let b = uri.as_bytes();
    let rest = if b.len() > 4 && b[..4].eq_ignore_ascii_case(b"sip:") {
        &uri[4..]
    } else if b.len() > 5 && b[..5].eq_ignore_ascii_case(b"sips:") {
        &uri[5..]
    } else {
        return None;
    };
    let rest = match memchr::memchr(b'@', rest.as_bytes()) {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let end = if rest.starts_with('[') {
        find_byte(rest, b']')? + 1
    } else {
        memchr::memchr3(b':', b';', b'?', rest.as_bytes()).unwrap_or(rest.len())
    };
    Some(&rest[..end]).filter(|h| !h.is_empty())
}

fn valid_escapes(s: &str) -> bool {
    if find_byte(s, b'%').is_none() {
        return true;
    }
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

fn parse_sip<'a>(raw: &'a str, secure: bool, rest: &'a str) -> Result<SipUri<'a>, HeaderError> {
    let (userinfo, hostpart) = match find_byte(rest, b'@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(ui) => {
            let (u, p) = match find_byte(ui, b':') {
                Some(c) => (&ui[..c], Some(&ui[c + 1..])),
                None => (ui, None),
            };
            if u.is_empty() {
                return Err(err("empty user part before @"));
            }
            if !all_in(u, &USER) || !valid_escapes(u) {
                return Err(err(format!("bad character or escape in user part {u:?}")));
            }
            if let Some(p) = p
                && (!all_in(p, &PASSWORD) || !valid_escapes(p))
            {
                return Err(err("bad character or escape in password"));
            }
            (Some(u), p)
        }
    };
    let (hostport_params, headers) = match find_byte(hostpart, b'?') {
        Some(q) => (&hostpart[..q], Some(&hostpart[q + 1..])),
        None => (hostpart, None),
    };
    let (hostport, params) = match find_byte(hostport_params, b';') {
        Some(sc) => (&hostport_params[..sc], &hostport_params[sc + 1..]),
        None => (hostport_params, ""),
    };
    let (host, port) = split_host_port(hostport)?;
    let params = Params::new(params);
    for p in params.iter() {
        let name_ok = !p.name.is_empty() && all_in(p.name, &PARAMCHAR);
        let value_ok = p
            .value
            .is_none_or(|v| !v.is_empty() && all_in(v, &PARAMCHAR));
        if !name_ok || !value_ok {
            return Err(err(format!("bad URI parameter {:?}", p.name)));
        }
    }
    if !valid_escapes(params.as_str()) {
        return Err(err("bad escape in URI parameters"));
    }
    if let Some(h) = headers {
        if h.is_empty() || !valid_escapes(h) {
            return Err(err("bad URI headers"));
        }
        for pair in h.split('&') {
            if !pair.contains('=') || pair.starts_with('=') {
                return Err(err(format!("bad URI header {pair:?}")));
            }
        }
    }
    Ok(SipUri {
        raw,
        secure,
        user,
        password,
        host,
        port,
        params,
        headers,
    })
}

/// Splits `host[:port]`, validating both. IPv6 references keep their brackets.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<u16>), HeaderError> {
    let (host, port) = if s.starts_with('[') {
        let close = find_byte(s, b']').ok_or_else(|| err("unterminated IPv6 reference"))?;
        let inner = &s[1..close];
        if inner.is_empty() || inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err(format!("bad IPv6 address {inner:?}")));
        }
        let after = &s[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(err("junk after IPv6 reference")),
        };
        (&s[..=close], port)
    } else {
        match s.as_bytes().iter().rposition(|&b| b == b':') {
            Some(c) => (&s[..c], Some(&s[c + 1..])),
            None => (s, None),
        }
    };
    if !s.starts_with('[') {
        let hb = host.as_bytes();
        if hb.is_empty()
            || !hb.iter().all(|&b| HOSTCHAR[b as usize])
            || hb[0] == b'.'
            || hb[0] == b'-'
        {
            return Err(err(format!("bad host {host:?}")));
        }
    }
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(format!("bad port {p:?}")));
            }
            let n = p.bytes().fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
            Some(u16::try_from(n).map_err(|_| err(format!("port {n} out of range")))?)
        }
    };
    Ok((host, port))
}

fn parse_tel<'a>(raw: &'a str, rest: &'a str) -> Result<TelUri<'a>, HeaderError> {
    let (number, params) = match find_byte(rest, b';') {
        Some(sc) => (&rest[..sc], &rest[sc + 1..]),
        None => (rest, ""),
    };
    let digits = number.strip_prefix('+').unwrap_or(number);
    let ok = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'-' | b'.' | b'(' | b')' | b'*' | b'#'))
        && digits
            .bytes()
            .any(|b| b.is_ascii_hexdigit() || matches!(b, b'*' | b'#'));
    if !ok {
        return Err(err(format!("bad telephone number {number:?}")));
    }
    let params = Params::new(params);
    if !params.as_str().is_empty() && params.iter().any(|p| p.name.is_empty()) {
        return Err(err("empty tel URI parameter"));
    }
    Ok(TelUri {
        raw,
        number,
        params,
    })
}

/// One comparable unit of URI text: an octet, or an escape that must stay escaped
/// because it encodes a reserved character.
#[derive(PartialEq, Eq)]
enum Unit {
    Octet(u8),
    Reserved(u8),
}

fn units(s: &str, fold_case: bool) -> impl Iterator<Item = Unit> + '_ {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let c = *b.get(i)?;
        if c == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                i += 3;
                if b";/?:@&=+$,".contains(&v) {
                    return Some(Unit::Reserved(v));
                }
                return Some(Unit::Octet(if fold_case {
                    v.to_ascii_lowercase()
                } else {
                    v
                }));
            }
        }
        i += 1;
        Some(Unit::Octet(if fold_case {
            c.to_ascii_lowercase()
        } else {
            c
        }))
    })
}

fn escaped_eq(a: &str, b: &str, fold_case: bool) -> bool {
    units(a, fold_case).eq(units(b, fold_case))
}

fn opt_escaped_eq(a: Option<&str>, b: Option<&str>, fold_case: bool) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => escaped_eq(a, b, fold_case),
        _ => false,
    }
}

impl SipUri<'_> {
    /// RFC 3261 §19.1.4 equivalence.
    pub fn equivalent(&self, other: &SipUri<'_>) -> bool {
        if self.secure != other.secure
            || !opt_escaped_eq(self.user, other.user, false)
            || !opt_escaped_eq(self.password, other.password, false)
            || !escaped_eq(self.host, other.host, true)
            || self.port != other.port
        {
            return false;
        }
        // These parameters must match when either side has them.
        for name in ["user", "ttl", "method", "maddr", "transport"] {
            match (self.params.get(name), other.params.get(name)) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    if !opt_escaped_eq(a, b, true) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        // Any other parameter present on both sides must match. A name given twice is
        // judged by its first occurrence, as `get` reads it (found by the URI fuzzer).
        for (i, p) in self.params.iter().enumerate() {
            if self
                .params
                .iter()
                .take(i)
                .any(|q| q.name.eq_ignore_ascii_case(p.name))
            {
                continue;
            }
            if let Some(v) = other.params.get(p.name)
                && !opt_escaped_eq(p.value, v, true)
            {
                return false;
            }
        }
        // Header components are never ignored: same set on both sides.
        let mine: Vec<&str> = self
            .headers
            .map(|h| h.split('&').collect())
            .unwrap_or_default();
        let theirs: Vec<&str> = other
            .headers
            .map(|h| h.split('&').collect())
            .unwrap_or_default();
        mine.len() == theirs.len()
            && mine
                .iter()
                .all(|h| theirs.iter().any(|t| header_component_eq(h, t)))
            && theirs
                .iter()
                .all(|t| mine.iter().any(|h| header_component_eq(h, t)))
    }
}

fn header_component_eq(a: &str, b: &str) -> bool {
    let (an, av) = a.split_once('=').unwrap_or((a, ""));
    let (bn, bv) = b.split_once('=').unwrap_or((b, ""));
    escaped_eq(an, bn, true) && escaped_eq(av, bv, false)
}

impl TelUri<'_> {
    /// RFC 3966 §4: numbers compared without visual separators, parameters as a set.
    pub fn equivalent(&self, other: &TelUri<'_>) -> bool {
        let digits = |s: &str| -> Vec<u8> {
            s.bytes()
                .filter(|b| !matches!(b, b'-' | b'.' | b'(' | b')'))
                .map(|b| b.to_ascii_lowercase())
                .collect()
        };
        if digits(self.number) != digits(other.number) {
            return false;
        }
        // Parameters as a set, each name judged by its first occurrence (a name given
        // twice must not break reflexivity; found by the URI fuzzer).
        fn firsts<'p>(params: &Params<'p>) -> Vec<crate::scan::Param<'p>> {
            let mut out: Vec<crate::scan::Param<'p>> = Vec::new();
            for p in params.iter().filter(|p| !p.name.is_empty()) {
                if !out.iter().any(|q| q.name.eq_ignore_ascii_case(p.name)) {
                    out.push(p);
                }
            }
            out
        }
        let (mine, theirs) = (firsts(&self.params), firsts(&other.params));
        mine.len() == theirs.len()
            && mine.iter().all(|p| {
                theirs
                    .iter()
                    .find(|q| q.name.eq_ignore_ascii_case(p.name))
                    .is_some_and(|q| opt_escaped_eq(p.value, q.value, true))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(a: &str, b: &str) -> bool {
        let a = Uri::parse(a).unwrap();
        let b = Uri::parse(b).unwrap();
        let forward = a.equivalent(&b);
        assert_eq!(forward, b.equivalent(&a), "equivalence must be symmetric");
        forward
    }

    #[test]
    fn rfc3261_19_1_4_equivalent_pairs() {
        assert!(eq(
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp"
        ));
        assert!(eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;security=on"
        ));
        assert!(eq(
            "sip:carol@chicago.com;newparam=5",
            "sip:carol@chicago.com;security=on"
        ));
        assert!(eq(
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"
        ));
        assert!(eq(
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x"
        ));
    }

    #[test]
    fn rfc3261_19_1_4_non_equivalent_pairs() {
        assert!(!eq(
            "SIP:ALICE@AtLanTa.CoM;Transport=udp",
            "sip:alice@AtLanTa.CoM;Transport=UDP"
        ));
        assert!(!eq("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"));
        assert!(!eq(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com;transport=udp"
        ));
        assert!(!eq(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com:6000;transport=tcp"
        ));
        assert!(!eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com?Subject=next%20meeting"
        ));
        assert!(!eq("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"));
        assert!(!eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;security=off"
        ));
        assert!(!eq("sip:alice@atlanta.com", "sips:alice@atlanta.com"));
        assert!(!eq(
            "sip:alice@atlanta.com;maddr=10.0.0.1",
            "sip:alice@atlanta.com"
        ));
    }

    #[test]
    fn duplicate_tel_parameters_keep_equivalence_reflexive() {
        let dup = "tel:+1555;a=1;a=2";
        assert!(eq(dup, dup));
        assert!(eq(dup, "tel:+1555;a=1"));
    }

    #[test]
    fn duplicate_parameters_keep_equivalence_reflexive_and_symmetric() {
        let dup = "sip:u@example.com:6000;p=a;x=1;p=b";
        assert!(eq(dup, dup));
        assert!(eq(dup, "sip:u@example.com:6000;p=a"));
        assert!(!eq(dup, "sip:u@example.com:6000;p=b"));
    }

    #[test]
    fn reserved_escapes_are_not_equal_to_their_characters() {
        // '@' is reserved: an escaped %40 in the user part is not the same as a literal one
        // (which could not appear there anyway); ';' likewise.
        assert!(!eq("sip:a%3Bb@example.com", "sip:a;b@example.com"));
        assert!(eq("sip:a%3bb@example.com", "sip:a%3Bb@example.com"));
    }

    #[test]
    fn tel_uris_compare_without_visual_separators() {
        assert!(eq("tel:+1-201-555-0123", "tel:+1.201.555.0123"));
        assert!(eq(
            "tel:7042;phone-context=example.com",
            "tel:7042;PHONE-CONTEXT=EXAMPLE.COM"
        ));
        assert!(!eq("tel:+12015550123", "tel:+12015550124"));
        assert!(!eq("tel:7042;phone-context=example.com", "tel:7042"));
    }

    #[test]
    fn sip_host_by_structure_agrees_with_the_parser() {
        for u in [
            "sip:alice@atlanta.com",
            "sips:[2001:db8::1]:5061;transport=tcp",
            "sip:biloxi.com;transport=tcp?to=sip:bob%40biloxi.com",
            "sip:user;par=u%40example.net@example.com",
            "SIP:ALICE@AtLanTa.CoM:5060",
        ] {
            assert_eq!(sip_host(u), Uri::parse(u).unwrap().host(), "{u}");
        }
        assert_eq!(sip_host("tel:+1555"), None);
        assert_eq!(sip_host("sip:"), None);
    }

    #[test]
    fn sip_uri_parts() {
        let u =
            Uri::parse("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi").unwrap();
        let s = u.as_sip().unwrap();
        assert!(s.secure);
        assert_eq!(s.user, Some("alice"));
        assert_eq!(s.password, Some("secret"));
        assert_eq!(s.host, "[2001:db8::1]");
        assert_eq!(s.port, Some(5061));
        assert_eq!(s.params.get("lr"), Some(None));
        assert_eq!(s.headers, Some("subject=hi"));
        assert_eq!(u.scheme(), "sips");
    }

    #[test]
    fn rfc4475_unusual_uris_parse() {
        let weird = "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com";
        let u = Uri::parse(weird).unwrap();
        let s = u.as_sip().unwrap();
        assert_eq!(
            s.user,
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(s.host, "example.com");
        let semi = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(
            semi.as_sip().unwrap().user,
            Some("user;par=u%40example.net")
        );
        assert!(Uri::parse("sip:%00@host5.example.com").is_ok());
        assert!(matches!(
            Uri::parse("soap.beep://192.0.2.103:3002"),
            Ok(Uri::Other { .. })
        ));
        assert!(matches!(
            Uri::parse("isbn:2983792873"),
            Ok(Uri::Other { .. })
        ));
    }

    #[test]
    fn bad_uris_are_rejected_with_a_reason() {
        for bad in [
            "sip:user@example.com:99999",
            "sip:user@exa mple.com",
            "sip:user@",
            "sip:@example.com",
            "sip:user@[::1",
            "sip:user@[zz::1]",
            "<sip:user@example.com>",
            "sip:us%zzer@example.com",
            "sip:user@example.com;=x",
            "sip:user@example.com?",
            "tel:",
            "1sip:x",
            "nocolon",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad} should fail");
        }
        let e = Uri::parse("sip:user@example.com:99999").unwrap_err();
        assert!(e.to_string().contains("99999"), "{e}");
    }
}
