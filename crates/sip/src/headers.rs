//! Typed header decoders, run on demand over a row's text. They borrow from the message
//! and treat folded line breaks as white space, so no unfolded copy is made.

use std::borrow::Cow;

use crate::error::HeaderError;
use crate::method::{Method, is_token, is_token_byte};
use crate::scan::{Params, SimpleParams, find_byte, is_lws, quoted_end, trim_lws, unquote};
use crate::uri::{Uri, split_host_port};

/// Parses a decimal scalar that must fit in 32 bits. Leading zeros are allowed
/// (RFC 4475 `wsinv`); overflow is an error (RFC 4475 `scalar02`).
pub fn parse_u32(v: &str, header: &'static str) -> Result<u32, HeaderError> {
    let t = trim_lws(v);
    // Up to nine digits cannot overflow: the common case, without the checks below.
    if (1..=9).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(t.bytes().fold(0, |n, b| n * 10 + u32::from(b - b'0')));
    }
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::malformed(
            header,
            format!("{t:?} is not a number"),
        ));
    }
    let digits = t.trim_start_matches('0');
    if digits.len() > 10 {
        return Err(HeaderError::Overflow {
            header,
            value: t.to_owned(),
        });
    }
    if digits.is_empty() {
        return Ok(0);
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| HeaderError::Overflow {
            header,
            value: t.to_owned(),
        })
}

/// One Via value: `SIP/2.0/UDP host:port;params`.
#[derive(Debug, Clone, Copy)]
pub struct Via<'a> {
    /// Protocol name and version, e.g. `SIP` and `2.0`.
    pub protocol: &'a str,
    pub version: &'a str,
    /// Transport token as written (`UDP`, `TCP`, `TLS`, `WS`, `WSS`, `SCTP` or any other).
    pub transport: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    pub params: Params<'a>,
    branch: Option<&'a str>,
    received: Option<&'a str>,
    rport: Option<Option<u16>>,
    maddr: Option<&'a str>,
}

fn skip_lws(s: &str) -> &str {
    let n = s.bytes().take_while(|&b| is_lws(b)).count();
    &s[n..]
}

#[inline]
fn take_token(s: &str) -> (&str, &str) {
    let s = skip_lws(s);
    let n = s.bytes().take_while(|&b| is_token_byte(b)).count();
    (&s[..n], &s[n..])
}

fn expect_char(s: &str, c: u8) -> Option<&str> {
    let s = skip_lws(s);
    (s.as_bytes().first() == Some(&c)).then(|| &s[1..])
}

/// `SIP/2.0/TRANSPORT` as almost every sender writes it, or the general form with LWS
/// around the slashes: (protocol, version, transport, rest).
fn sent_protocol(v: &str) -> Option<(&str, &str, &str, &str)> {
    if let Some(rest) = v.strip_prefix("SIP/2.0/") {
        let (transport, after) = take_token(rest);
        return Some((&v[..3], &v[4..7], transport, after));
    }
    let (protocol, rest) = take_token(v);
    let rest = expect_char(rest, b'/')?;
    let (version, rest) = take_token(rest);
    let rest = expect_char(rest, b'/')?;
    let (transport, rest) = take_token(rest);
    Some((protocol, version, transport, rest))
}

impl<'a> Via<'a> {
    pub fn parse(v: &'a str) -> Result<Via<'a>, HeaderError> {
        match Via::parse_plain(v) {
            Some(via) => Ok(via),
            None => Via::parse_general(v),
        }
    }

    /// The form nearly every Via value has, `SIP/2.0/TRANSPORT host[:port][;params]`
    /// with one space, no LWS elsewhere, no quotes and no IPv6 reference, decoded and
    /// validated in one pass. `None` sends the value to [`Via::parse_general`], which
    /// accepts every other valid form and names the defect of an invalid one; on the
    /// values this accepts, both give the same result (tested).
    fn parse_plain(v: &'a str) -> Option<Via<'a>> {
        let b = v.as_bytes();
        if !b.starts_with(b"SIP/2.0/") {
            return None;
        }
        let mut i = 8;
        while i < b.len() && is_token_byte(b[i]) {
            i += 1;
        }
        if i == 8 || b.get(i) != Some(&b' ') {
            return None;
        }
        let transport = &v[8..i];
        i += 1;
        let host_start = i;
        while i < b.len() && crate::uri::HOSTCHAR[usize::from(b[i])] {
            i += 1;
        }
        if i == host_start || matches!(b[host_start], b'.' | b'-') {
            return None;
        }
        let host = &v[host_start..i];
        let mut port = None;
        if b.get(i) == Some(&b':') {
            i += 1;
            let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if !(1..=5).contains(&digits) {
                return None;
            }
            let n = b[i..i + digits]
                .iter()
                .fold(0u32, |n, c| n * 10 + u32::from(c - b'0'));
            port = Some(u16::try_from(n).ok()?);
            i += digits;
        }
        let params_text = match b.get(i) {
            None => "",
            Some(b';') => &v[i + 1..],
            Some(_) => return None,
        };
        let (mut branch, mut received, mut rport, mut maddr) = (None, None, None, None);
        if !params_text.is_empty() || i < b.len() {
            i += 1;
            loop {
                let name_start = i;
                while i < b.len() && is_token_byte(b[i]) {
                    i += 1;
                }
                if i == name_start {
                    return None;
                }
                let name = &v[name_start..i];
                let mut value = None;
                if b.get(i) == Some(&b'=') {
                    i += 1;
                    let value_start = i;
                    while i < b.len() && crate::scan::PARAM_VALUE[usize::from(b[i])] {
                        i += 1;
                    }
                    if i == value_start {
                        return None;
                    }
                    value = Some(&v[value_start..i]);
                }
                match name.len() {
                    6 if name.eq_ignore_ascii_case("branch") => {
                        let value = value.filter(|x| is_token(x))?;
                        branch = branch.or(Some(value));
                    }
                    5 if name.eq_ignore_ascii_case("rport") => {
                        let port = match value {
                            None => None,
                            Some(x) => Some(x.parse::<u16>().ok()?),
                        };
                        rport = rport.or(Some(port));
                    }
                    8 if name.eq_ignore_ascii_case("received") => received = received.or(value),
                    5 if name.eq_ignore_ascii_case("maddr") => maddr = maddr.or(value),
                    _ => {}
                }
                match b.get(i) {
                    None => break,
                    Some(b';') => i += 1,
                    Some(_) => return None,
                }
            }
        }
        Some(Via {
            protocol: &v[..3],
            version: &v[4..7],
            transport,
            host,
            port,
            params: Params::new(params_text),
            branch,
            received,
            rport,
            maddr,
        })
    }

    /// Every valid form: LWS around the slashes, the colon and the parameters, quoted
    /// values, IPv6 references.
    fn parse_general(v: &'a str) -> Result<Via<'a>, HeaderError> {
        let bad = |what: &str| HeaderError::malformed("Via", what.to_owned());
        let (protocol, version, transport, rest) =
            sent_protocol(v).ok_or_else(|| bad("sent-protocol lacks '/'"))?;
        if protocol.is_empty() || version.is_empty() || transport.is_empty() {
            return Err(bad("incomplete sent-protocol"));
        }
        let rest = trim_lws(rest);
        let (sent_by, params) = match find_byte(rest, b';') {
            Some(i) => (trim_lws(&rest[..i]), &rest[i + 1..]),
            None => (rest, ""),
        };
        // `host : port` may carry LWS around the colon.
        let compact: Cow<'_, str> = if sent_by.bytes().any(is_lws) {
            Cow::Owned(sent_by.split(|c: char| c.is_ascii_whitespace()).collect())
        } else {
            Cow::Borrowed(sent_by)
        };
        if compact.is_empty() {
            return Err(bad("missing sent-by"));
        }
        let (host, port) = split_host_port(&compact)
            .map_err(|e| HeaderError::malformed("Via", format!("sent-by: {e}")))?;
        let host = if matches!(compact, Cow::Borrowed(_)) {
            &sent_by[..host.len()]
        } else {
            // Only reachable with LWS inside sent-by; the host itself has none.
            sent_by
                .split(|c: char| c.is_ascii_whitespace() || c == ':')
                .next()
                .unwrap_or("")
        };
        // One pass over the parameters: validate each and keep the ones routing reads.
        let params = Params::new(params);
        let (mut branch, mut received, mut rport, mut maddr) = (None, None, None, None);
        let mut keep = |name: &'a str, value: Option<&'a str>| -> Result<(), HeaderError> {
            // Dispatch on the length first: most parameters are compared once.
            let len = name.len();
            if len == 6 && name.eq_ignore_ascii_case("branch") {
                match value {
                    Some(b) if is_token(b) => branch = branch.or(Some(b)),
                    _ => return Err(bad("branch must be a token")),
                }
            } else if len == 5 && name.eq_ignore_ascii_case("rport") {
                let port = match value {
                    None => None,
                    Some(v) => Some(
                        v.parse::<u16>()
                            .map_err(|_| bad("rport is not a port number"))?,
                    ),
                };
                rport = rport.or(Some(port));
            } else if len == 8 && name.eq_ignore_ascii_case("received") {
                received = received.or(value);
            } else if len == 5 && name.eq_ignore_ascii_case("maddr") {
                maddr = maddr.or(value);
            }
            Ok(())
        };
        if let Some(simple) = SimpleParams::parse(params.as_str()) {
            for (name, value) in simple.iter() {
                keep(name, value)?;
            }
        } else if !params.as_str().is_empty() || rest.ends_with(';') {
            for p in params.iter() {
                p.validate().map_err(|e| bad(&e))?;
                keep(p.name, p.value)?;
            }
        }
        Ok(Via {
            protocol,
            version,
            transport,
            host,
            port,
            params,
            branch,
            received,
            rport,
            maddr,
        })
    }

    /// The first value of a Via row, leniently: when its parameters are malformed, the
    /// sent-protocol and sent-by alone (enough to address a `400`).
    pub fn parse_lenient(row: &'a str) -> Option<Via<'a>> {
        let first = crate::scan::ListItems::new(row).next()?;
        Via::parse(first)
            .or_else(|_| Via::parse(first.split(';').next().unwrap_or("")))
            .ok()
    }

    pub fn branch(&self) -> Option<&'a str> {
        self.branch
    }

    /// Whether the branch carries the RFC 3261 magic cookie (else RFC 2543 matching).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with("z9hG4bK"))
    }

    pub fn received(&self) -> Option<&'a str> {
        self.received
    }

    /// `Some(None)` when `rport` is present without a value (a request asking for it).
    pub fn rport(&self) -> Option<Option<u16>> {
        self.rport
    }

    pub fn maddr(&self) -> Option<&'a str> {
        self.maddr
    }

    pub fn ttl(&self) -> Option<&'a str> {
        self.params.get("ttl").flatten()
    }

    /// `host[:port]` as one string, for transaction matching.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{}", self.host, p),
            None => self.host.to_owned(),
        }
    }
}

/// A name-addr or addr-spec with header parameters: From, To, Contact, Route,
/// Record-Route, Reply-To, Refer-To... Contact `*` is represented with `is_star`.
#[derive(Debug, Clone, Copy)]
pub struct NameAddr<'a> {
    /// Display name as written (quotes kept); see [`NameAddr::display_name`].
    pub display_raw: Option<&'a str>,
    pub uri_str: &'a str,
    pub params: Params<'a>,
    /// The URI was written inside `<>`.
    pub bracketed: bool,
    pub is_star: bool,
    tag: Option<&'a str>,
}

impl<'a> NameAddr<'a> {
    /// Parses the value of a header that holds one name-addr; `header` names it in errors.
    pub fn parse_header(v: &'a str, header: &'static str) -> Result<NameAddr<'a>, HeaderError> {
        let bad = |what: String| HeaderError::malformed(header, what);
        let s = trim_lws(v);
        if s == "*" {
            return Ok(NameAddr {
                display_raw: None,
                uri_str: "*",
                params: Params::default(),
                bracketed: false,
                is_star: true,
                tag: None,
            });
        }
        let b = s.as_bytes();
        let (display_raw, bracket_from) = if b.first() == Some(&b'"') {
            let end = quoted_end(b)
                .ok_or_else(|| bad("unterminated quoted string in display name".into()))?;
            let after = trim_lws(&s[end..]);
            if !after.starts_with('<') {
                return Err(bad("quoted display name not followed by <URI>".into()));
            }
            (Some(&s[..end]), s.len() - after.len())
        } else {
            // An unquoted display name runs up to '<' and must be tokens separated by LWS.
            match find_byte(s, b'<') {
                Some(lt) if find_byte(&s[..lt], b';').is_none() => {
                    let name = trim_lws(&s[..lt]);
                    let ok = name
                        .split(|c: char| c.is_ascii() && is_lws(c as u8))
                        .all(|w| w.is_empty() || is_token(w));
                    if !ok {
                        return Err(bad(format!(
                            "display name {name:?} has characters that need quotes"
                        )));
                    }
                    (if name.is_empty() { None } else { Some(name) }, lt)
                }
                _ => (None, usize::MAX),
            }
        };
        let (uri_str, params, bracketed) = if bracket_from != usize::MAX {
            let inner = &s[bracket_from + 1..];
            let gt =
                find_byte(inner, b'>').ok_or_else(|| bad("'<' without a closing '>'".into()))?;
            let uri = &inner[..gt];
            let rest = trim_lws(&inner[gt + 1..]);
            let params = match rest.strip_prefix(';') {
                Some(p) => p,
                None if rest.is_empty() => "",
                None => return Err(bad(format!("unexpected {rest:?} after '>'"))),
            };
            (uri, params, true)
        } else {
            let (uri, params) = match find_byte(s, b';') {
                Some(i) => (trim_lws(&s[..i]), &s[i + 1..]),
                None => (s, ""),
            };
            if uri.contains('?') || uri.contains(',') {
                return Err(bad(format!(
                    "URI {uri:?} contains '?' or ',' and must be enclosed in <>"
                )));
            }
            (uri, params, false)
        };
        Uri::parse(uri_str).map_err(|e| bad(e.to_string()))?;
        let params = Params::new(params);
        let mut tag = None;
        if let Some(simple) = SimpleParams::parse(params.as_str()) {
            tag = simple
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("tag"))
                .and_then(|(_, v)| v);
        } else if !params.as_str().is_empty() || s.ends_with(';') {
            for p in params.iter() {
                p.validate().map_err(bad)?;
                if tag.is_none() && p.name.eq_ignore_ascii_case("tag") {
                    tag = p.value;
                }
            }
        }
        Ok(NameAddr {
            display_raw,
            uri_str,
            params,
            bracketed,
            is_star: false,
            tag,
        })
    }

    /// The URI (already validated by `parse_header`).
    pub fn uri(&self) -> Result<Uri<'a>, HeaderError> {
        Uri::parse(self.uri_str)
    }

    /// Display name with quotes and escapes removed.
    pub fn display_name(&self) -> Option<Cow<'a, str>> {
        self.display_raw.map(unquote)
    }

    pub fn tag(&self) -> Option<&'a str> {
        self.tag
    }

    /// The Contact `expires` parameter, if any.
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        self.params
            .get("expires")
            .flatten()
            .map(|v| parse_u32(v, "Contact expires"))
            .transpose()
    }
}

/// The `tag` parameter of a From or To value, found without validating the rest: the
/// display name and the URI are skipped by structure (quotes, angle brackets).
pub fn tag_of(value: &str) -> Option<&str> {
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() && is_lws(b[i]) {
        i += 1;
    }
    if b.get(i) == Some(&b'"') {
        i += quoted_end(&b[i..])?;
    }
    let params_from = match b[i..].iter().position(|&c| c == b'<') {
        Some(lt) => i + lt + b[i + lt..].iter().position(|&c| c == b'>')?,
        None => i,
    };
    let semi = params_from + b[params_from..].iter().position(|&c| c == b';')?;
    let params = &value[semi + 1..];
    // While no quote or white space shows up, the parameters split on `;` and `=` exactly
    // as the general scanner below splits them: walk them directly until the tag.
    let p = params.as_bytes();
    let ends_param = |c: u8| c == b';' || c == b'"' || is_lws(c);
    let mut i = 0;
    loop {
        let rest = &p[i..];
        if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"tag") {
            match rest.get(3) {
                None | Some(b';') => return None,
                Some(b'=') => {
                    let start = i + 4;
                    let end = p[start..]
                        .iter()
                        .position(|&c| ends_param(c))
                        .map_or(p.len(), |k| start + k);
                    if end == p.len() || p[end] == b';' {
                        return Some(&params[start..end]);
                    }
                    break;
                }
                Some(_) => {}
            }
        }
        match rest.iter().position(|&c| ends_param(c)) {
            Some(k) if rest[k] == b';' => i += k + 1,
            Some(_) => break,
            None => return None,
        }
    }
    Params::new(params)
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case("tag"))
        .and_then(|p| p.value)
}

/// `CSeq: 4711 INVITE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(v: &str) -> Result<CSeq, HeaderError> {
        // Fast path: `digits SP token`, as nearly every sender writes it.
        let b = v.as_bytes();
        let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        if (1..=10).contains(&digits)
            && b.get(digits) == Some(&b' ')
            && b.len() > digits + 1
            && b[digits + 1..].iter().all(|&c| is_token_byte(c))
        {
            let seq = b[..digits]
                .iter()
                .fold(0u64, |n, c| n * 10 + u64::from(c - b'0'));
            if seq < 1 << 31 {
                return Ok(CSeq {
                    seq: seq as u32,
                    method: Method::from_token(&v[digits + 1..]),
                });
            }
        }
        Self::parse_general(v)
    }

    fn parse_general(v: &str) -> Result<CSeq, HeaderError> {
        let t = trim_lws(v);
        let split = t
            .find(|c: char| c.is_ascii() && is_lws(c as u8))
            .ok_or_else(|| HeaderError::malformed("CSeq", "needs a number and a method"))?;
        let seq = parse_u32(&t[..split], "CSeq")?;
        if seq >= 1 << 31 {
            return Err(HeaderError::Overflow {
                header: "CSeq",
                value: seq.to_string(),
            });
        }
        let method = trim_lws(&t[split..]);
        if !is_token(method) {
            return Err(HeaderError::malformed(
                "CSeq",
                format!("method {method:?} is not a token"),
            ));
        }
        Ok(CSeq {
            seq,
            method: Method::from_token(method),
        })
    }
}

/// A delta-seconds value with optional `;params` (Session-Expires, Min-SE, Retry-After).
#[derive(Debug, Clone, Copy)]
pub struct DeltaWithParams<'a> {
    pub seconds: u32,
    pub params: Params<'a>,
}

impl<'a> DeltaWithParams<'a> {
    pub fn parse(v: &'a str, header: &'static str) -> Result<DeltaWithParams<'a>, HeaderError> {
        let (head, params) = match v.find(';') {
            Some(i) => (&v[..i], &v[i + 1..]),
            None => (v, ""),
        };
        // Retry-After may carry a comment: `120 (I'm in a meeting)`.
        let head = match head.find('(') {
            Some(i) if header == "Retry-After" => &head[..i],
            _ => head,
        };
        let seconds = parse_u32(head, header)?;
        let params = Params::new(params);
        if !params.as_str().is_empty() {
            params
                .validate()
                .map_err(|e| HeaderError::malformed(header, e))?;
        }
        Ok(DeltaWithParams { seconds, params })
    }

    /// Session-Expires `refresher` parameter (`uac` or `uas`).
    pub fn refresher(&self) -> Option<&'a str> {
        self.params.get("refresher").flatten()
    }
}

/// Items of a comma-separated token list (Allow, Supported, Require, Unsupported).
pub fn token_list<'a>(
    values: impl Iterator<Item = &'a str>,
    header: &'static str,
) -> Result<Vec<&'a str>, HeaderError> {
    values
        .filter(|v| !v.is_empty())
        .map(|v| {
            if is_token(v) {
                Ok(v)
            } else {
                Err(HeaderError::malformed(
                    header,
                    format!("{v:?} is not a token"),
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass Via decoder never disagrees with the general one: whatever it
    /// accepts, the general decoder accepts with the same fields.
    fn plain_agrees(v: &str) -> bool {
        let Some(plain) = Via::parse_plain(v) else {
            return false;
        };
        let general = Via::parse_general(v)
            .unwrap_or_else(|e| panic!("{v:?}: plain accepted, general refused: {e}"));
        assert_eq!(format!("{plain:?}"), format!("{general:?}"), "{v:?}");
        true
    }

    #[test]
    fn tag_of_agrees_with_the_full_decoder() {
        for v in [
            "\"Alice\" <sip:1001@acme.example.com>;tag=8d3f2a7b",
            "<sip:a@b>;x=1;TAG=abc;tag=def",
            "<sip:a@b;tag=inside>;tag=outside",
            "sip:a@b;tag=t1",
            "<sip:a@b>;tag",
            "<sip:a@b>;tag;tag=late",
            "<sip:a@b> ; tag = spaced",
            "<sip:a@b>;x=\"q;tag=no\";tag=yes",
            "\"a;tag=no>\" <sip:a@b>;tag=yes",
            "<sip:a@b>",
            "<sip:a@b>;tagx=1;xtag=2",
        ] {
            let full = NameAddr::parse_header(v, "From").unwrap();
            assert_eq!(tag_of(v), full.tag(), "{v:?}");
        }
    }

    #[test]
    fn the_one_pass_via_decoder_agrees_with_the_general_one() {
        for v in [
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1a2b;rport",
            "SIP/2.0/TCP host.example.com;branch=z9hG4bKx;received=192.0.2.1;rport=5062",
            "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKy;maddr=239.1.1.1;ttl=1",
            "SIP/2.0/UDP h;BRANCH=a;branch=b;Rport;rport=9",
            "SIP/2.0/UDP h:0",
        ] {
            assert!(plain_agrees(v), "{v:?} should take the one-pass path");
        }
        // Each of these needs the general decoder (which accepts or names the defect).
        for v in [
            "SIP/2.0/UDP h;",
            "SIP/2.0/UDP h:65536",
            "SIP/2.0/UDP h:123456",
            "SIP/2.0/UDP [2001:db8::1]:5060",
            "SIP/2.0/UDP h ;branch=x",
            "SIP/2.0/UDP h;branch=\"x\"",
            "SIP/2.0/UDP h;branch=a:b",
            "SIP/2.0/UDP h;rport=x",
            "SIP/2.0/UDP .h",
            "SIP/2.0/UDP h;=x",
            "SIP/2.0/UDP h;x=",
            "SIP/2.0/UDP  h",
            "SIP/2.0/ UDP h",
            "SIP/2.0/UDP",
            "SIP/2.0/UDP h:",
        ] {
            assert!(!plain_agrees(v), "{v:?} should take the general path");
        }
    }

    proptest::proptest! {
        #[test]
        fn generated_vias_decode_alike_on_both_paths(
            v in "SIP/2\\.0/(UDP|TCP|tls|X-1| UDP)( |  )([a-z0-9._-]{0,10}|192\\.0\\.2\\.1|\\[::1\\])(:[0-9]{0,6})?(;(branch|rport|received|maddr|BRANCH|x)(=[a-zA-Z0-9.:+\\[\\]-]{0,6})?){0,4};?"
        ) {
            plain_agrees(&v);
        }
    }

    #[test]
    fn via_with_folding_and_lws_around_slashes() {
        let v = Via::parse("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!((v.protocol, v.version, v.transport), ("SIP", "2.0", "UDP"));
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert!(!v.has_rfc3261_branch());
        let v = Via::parse(
            "SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(v.host, "spindle.example.com");
        assert_eq!(v.branch(), Some("z9hG4bK9ikj8"));
    }

    #[test]
    fn via_parameters_and_ipv6() {
        let v = Via::parse("SIP/2.0/UDP [2001:db8::9]:5080;rport;received=192.0.2.1;maddr=224.2.0.1;ttl=16;branch=z9hG4bKx").unwrap();
        assert_eq!(v.host, "[2001:db8::9]");
        assert_eq!(v.port, Some(5080));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some("192.0.2.1"));
        assert_eq!(v.maddr(), Some("224.2.0.1"));
        assert_eq!(v.ttl(), Some("16"));
        assert_eq!(v.sent_by(), "[2001:db8::9]:5080");
        for bad in [
            "SIP/2.0/UDP 192.0.2.15;;",
            "SIP/2.0/UDP",
            "SIP/2.0 192.0.2.1",
            "SIP/2.0/UDP 192.0.2.1:99999",
            "SIP/2.0/UDP h;branch",
            "SIP/2.0/UDP h;rport=abc",
        ] {
            assert!(Via::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse_header(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8"#,
            "From",
        )
        .unwrap();
        assert_eq!(n.display_name().unwrap(), r#"J Rosenberg \""#);
        assert_eq!(n.uri_str, "sip:jdrosen@example.com");
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse_header("caller<sip:caller@example.com>;tag=323", "From").unwrap();
        assert_eq!(n.display_raw, Some("caller"));
        let n = NameAddr::parse_header("sip:+19725552222@gw1.example.net;unknownparam", "Contact")
            .unwrap();
        assert!(!n.bracketed);
        assert_eq!(n.params.get("unknownparam"), Some(None));
        assert!(NameAddr::parse_header("*", "Contact").unwrap().is_star);
        let n = NameAddr::parse_header(
            "<sip:user@host129.example.com>\r\n  ;expires=280297596632815",
            "Contact",
        )
        .unwrap();
        assert!(n.expires().is_err());
    }

    #[test]
    fn name_addr_defects_are_named() {
        let cases = [
            (
                r#""Mr. J. User <sip:j.user@example.com>"#,
                "unterminated quoted string",
            ),
            (
                "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
                "need quotes",
            ),
            (
                r#""Watson, Thomas" < sip:t.watson@example.org >"#,
                "not allowed in URI",
            ),
            (
                "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
                "enclosed in <>",
            ),
            (r#""Joe" <sip:joe@example.org>;;;;"#, "parameter"),
            ("<sip:a@b", "closing '>'"),
        ];
        for (value, expected) in cases {
            let e = NameAddr::parse_header(value, "To").unwrap_err().to_string();
            assert!(e.contains(expected), "{value}: {e}");
        }
    }

    #[test]
    fn tags_are_found_by_structure() {
        for (value, tag) in [
            ("<sip:a@b;tag=uri-param>;tag=real", Some("real")),
            ("\"x;tag=no\" <sip:a@b>;tag=t1", Some("t1")),
            ("sip:a@b;tag=t2", Some("t2")),
            ("sip:a@b", None),
            ("<sip:a@b;tag=x>", None),
            ("Alice <sip:a@b> ; TAG = t3", Some("t3")),
        ] {
            assert_eq!(tag_of(value), tag, "{value}");
            if let Ok(n) = NameAddr::parse_header(value, "From") {
                assert_eq!(n.tag(), tag, "the full decoder agrees on {value}");
            }
        }
    }

    #[test]
    fn cseq_and_scalars() {
        assert_eq!(
            CSeq::parse("0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: Method::Invite
            }
        );
        assert!(matches!(
            CSeq::parse("36893488147419103232 REGISTER"),
            Err(HeaderError::Overflow { .. })
        ));
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("INVITE").is_err());
        assert_eq!(parse_u32("0068", "Max-Forwards").unwrap(), 68);
        assert_eq!(parse_u32("4294967295", "Expires").unwrap(), u32::MAX);
        assert!(parse_u32("4294967296", "Expires").is_err());
        assert!(parse_u32("-1", "Expires").is_err());
        let se = DeltaWithParams::parse("1800;refresher=uac", "Session-Expires").unwrap();
        assert_eq!((se.seconds, se.refresher()), (1800, Some("uac")));
        let ra = DeltaWithParams::parse("120 (meeting);duration=60", "Retry-After").unwrap();
        assert_eq!(ra.seconds, 120);
        assert!(DeltaWithParams::parse("949302838503028349304023988", "Retry-After").is_err());
    }
}
