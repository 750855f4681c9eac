//! What an element does with what arrives: the checks of RFC 3261 §8.2 and §16.3 that
//! every request passes before any logic sees it, as a pure function.
//!
//! [`inspect_datagram`] turns received bytes into one of: a request to handle, a response
//! to match, a rejection to send (with the rows needed to address it), or a drop (with the
//! reason, for the log). The server and the RFC 4475 tests use the same function.

use bytes::Bytes;

use crate::error::{HeaderError, ParseError};
use crate::header_name::HeaderName;
use crate::headers::{DeltaWithParams, token_list};
use crate::message::Message;
use crate::method::Method;
use crate::uri::Uri;

/// A request refused before any logic runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// Names the defect, e.g. "Content-Length 300 exceeds body of 120 bytes".
    pub reason: String,
    /// Extra rows the answer must carry (Unsupported, Accept...).
    pub headers: Vec<(&'static str, String)>,
}

impl Rejection {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Rejection {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl From<HeaderError> for Rejection {
    fn from(e: HeaderError) -> Self {
        Rejection::new(400, e.to_string())
    }
}

/// What this element can handle: extension option tags, body types it consumes and body
/// types its answers carry.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities<'a> {
    pub supported: &'a [&'a str],
    pub accept: &'a [&'a str],
    pub produce: &'a [&'a str],
}

impl Capabilities<'static> {
    /// What Switchyard handles today.
    pub const SWITCHYARD: Capabilities<'static> = Capabilities {
        supported: &["path", "outbound", "timer", "replaces", "gruu"],
        accept: &[
            "application/sdp",
            "multipart/mixed",
            "text/plain",
            "message/sipfrag",
            "application/dtmf-relay",
        ],
        produce: &["application/sdp"],
    };
}

/// The verdict on one received datagram.
#[derive(Debug)]
pub enum Inbound {
    /// A request that passed every check.
    Request(Message),
    /// A well-formed response.
    Response(Message),
    /// Answer with this status; `rows` are Via, From, To, Call-ID and CSeq to copy.
    Reject {
        rejection: Rejection,
        rows: Vec<(HeaderName, String)>,
    },
    /// Nothing to answer; the reason is for the log.
    Drop(String),
    /// A CRLF keep-alive.
    KeepAlive,
}

/// Inspects one datagram.
pub fn inspect_datagram(raw: Bytes, caps: &Capabilities<'_>) -> Inbound {
    if raw.iter().all(|b| matches!(b, b'\r' | b'\n')) {
        return Inbound::KeepAlive;
    }
    match Message::parse_datagram(raw.clone()) {
        Ok(msg) => inspect_message(msg, caps),
        Err(e) => reject_unparsed(&raw, &e),
    }
}

/// The verdict for bytes that did not parse: a `400` (or `505`) when a response can be
/// addressed, a drop otherwise (and always for responses).
pub fn reject_unparsed(raw: &[u8], e: &ParseError) -> Inbound {
    let status = match e {
        ParseError::Version(_) => 505,
        ParseError::TooLarge { .. } => 513,
        _ => 400,
    };
    match crate::build::salvage_response_rows(raw) {
        Some(rows) => Inbound::Reject {
            rejection: Rejection::new(status, e.to_string()),
            rows,
        },
        None => Inbound::Drop(format!("unparseable, no response possible: {e}")),
    }
}

/// The verdict for a parsed message (from a datagram or a stream).
pub fn inspect_message(msg: Message, caps: &Capabilities<'_>) -> Inbound {
    if !msg.is_request() {
        return match check_response(&msg) {
            Ok(()) => Inbound::Response(msg),
            Err(e) => Inbound::Drop(format!("malformed response: {e}")),
        };
    }
    match check_request(&msg, caps) {
        Ok(()) => Inbound::Request(msg),
        Err(rejection) => {
            let rows = dialog_rows(&msg);
            if rows.iter().any(|(n, _)| *n == HeaderName::Via) {
                Inbound::Reject { rejection, rows }
            } else {
                Inbound::Drop(format!("no Via to answer: {}", rejection.reason))
            }
        }
    }
}

/// The rows a response copies, as received.
pub fn dialog_rows(msg: &Message) -> Vec<(HeaderName, String)> {
    [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ]
    .iter()
    .flat_map(|&n| msg.header_rows(n).map(move |v| (n, v.to_owned())))
    .collect()
}

/// Responses are matched to transactions by Via branch, Call-ID and CSeq: those must
/// decode, or the response is dropped (RFC 4475 `scalarlg`).
pub fn check_response(msg: &Message) -> Result<(), HeaderError> {
    for via in msg.vias() {
        // A response is forwarded to the next Via; never to the limited broadcast address
        // (RFC 4475 `bcast`).
        if via?.host == "255.255.255.255" {
            return Err(HeaderError::malformed("Via", "names the broadcast address"));
        }
    }
    msg.top_via()?;
    msg.cseq()?;
    msg.call_id()?;
    msg.from_header()?;
    msg.to_header()?;
    Ok(())
}

/// Every check a request passes before logic sees it, in the order the first failure is
/// reported. Errors name the defect.
pub fn check_request(msg: &Message, caps: &Capabilities<'_>) -> Result<(), Rejection> {
    let method = msg
        .method()
        .ok_or_else(|| Rejection::new(400, "not a request"))?;
    if msg.header(HeaderName::Via).is_none() {
        return Err(HeaderError::Missing("Via").into());
    }
    for via in msg.vias() {
        via?;
    }
    let cseq = msg.cseq()?;
    msg.call_id()?;
    msg.from_header()?;
    msg.to_header()?;
    msg.max_forwards()?;
    if cseq.method != *method {
        return Err(Rejection::new(
            400,
            format!(
                "CSeq method {} does not match request method {method}",
                cseq.method
            ),
        ));
    }
    for contact in msg.contacts() {
        contact?;
    }
    msg.expires()?;
    for (name, label) in [
        (HeaderName::SessionExpires, "Session-Expires"),
        (HeaderName::MinSe, "Min-SE"),
    ] {
        if let Some(v) = msg.single(name)? {
            DeltaWithParams::parse(v, label)?;
        }
    }
    let require = token_list(msg.values(HeaderName::Require), "Require")?;
    let proxy_require = token_list(msg.values(HeaderName::ProxyRequire), "Proxy-Require")?;

    let uri_text = msg.request_uri_str().unwrap_or_default();
    let uri = Uri::parse(uri_text).map_err(|e| Rejection::new(400, format!("Request-URI: {e}")))?;
    match uri {
        Uri::Sip(sip) if sip.headers.is_some() => {
            return Err(Rejection::new(400, "Request-URI must not contain headers"));
        }
        Uri::Sip(_) | Uri::Tel(_) => {}
        Uri::Other { scheme, .. } => {
            return Err(Rejection::new(
                416,
                format!("Unsupported URI scheme {scheme}"),
            ));
        }
    }

    let unsupported: Vec<&str> = require
        .iter()
        .chain(&proxy_require)
        .filter(|t| !caps.supported.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .copied()
        .collect();
    if !unsupported.is_empty() && *method != Method::Cancel && *method != Method::Ack {
        return Err(
            Rejection::new(420, "Bad Extension").with("Unsupported", unsupported.join(", "))
        );
    }

    if !msg.body().is_empty() {
        let ctype = msg
            .content_type()
            .ok_or_else(|| Rejection::new(400, "body without Content-Type"))?;
        if !caps.accept.iter().any(|a| *a == ctype) {
            return Err(
                Rejection::new(415, format!("Unsupported Media Type {ctype}"))
                    .with("Accept", caps.accept.join(", ")),
            );
        }
        let encodings: Vec<&str> = msg.values(HeaderName::ContentEncoding).collect();
        if encodings
            .iter()
            .any(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"))
        {
            return Err(Rejection::new(415, "Unsupported Content-Encoding")
                .with("Accept-Encoding", "identity".to_owned()));
        }
    }

    if *method == Method::Invite && msg.header(HeaderName::Accept).is_some() {
        let acceptable = msg.values(HeaderName::Accept).any(|range| {
            let range = range
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            caps.produce.iter().any(|p| media_range_matches(&range, p))
        });
        if !acceptable {
            return Err(
                Rejection::new(406, "Not Acceptable: no producible body type in Accept")
                    .with("Accept", caps.produce.join(", ")),
            );
        }
    }
    Ok(())
}

fn media_range_matches(range: &str, media_type: &str) -> bool {
    if range == "*/*" || range == media_type {
        return true;
    }
    match (range.split_once('/'), media_type.split_once('/')) {
        (Some((rt, "*")), Some((mt, _))) => rt == mt,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(s: &str) -> Inbound {
        inspect_datagram(
            Bytes::copy_from_slice(s.as_bytes()),
            &Capabilities::SWITCHYARD,
        )
    }

    const OPTIONS: &str = "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nTo: <sip:a@example.com>\r\nFrom: <sip:b@example.com>;tag=1\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    fn status(v: &Inbound) -> Option<u16> {
        match v {
            Inbound::Reject { rejection, .. } => Some(rejection.status),
            _ => None,
        }
    }

    #[test]
    fn a_good_request_passes() {
        assert!(matches!(verdict(OPTIONS), Inbound::Request(_)));
    }

    #[test]
    fn tel_and_sips_request_uris_pass_other_schemes_get_416() {
        assert!(matches!(
            verdict(&OPTIONS.replace("sip:a@example.com SIP", "tel:+15551234 SIP")),
            Inbound::Request(_)
        ));
        assert_eq!(
            status(&verdict(
                &OPTIONS.replace("sip:a@example.com SIP", "im:a@example.com SIP")
            )),
            Some(416)
        );
    }

    #[test]
    fn require_lists_the_unsupported_tags() {
        let v = verdict(&OPTIONS.replace("Max-Forwards", "Require: timer, foo\r\nMax-Forwards"));
        let Inbound::Reject { rejection, .. } = v else {
            panic!("expected rejection")
        };
        assert_eq!(rejection.status, 420);
        assert_eq!(rejection.headers, [("Unsupported", "foo".to_owned())]);
    }

    #[test]
    fn missing_headers_and_method_mismatch_are_named() {
        let Inbound::Reject { rejection, .. } = verdict(&OPTIONS.replace("Call-ID: c1\r\n", ""))
        else {
            panic!()
        };
        assert_eq!(rejection.reason, "missing Call-ID header");
        let Inbound::Reject { rejection, .. } =
            verdict(&OPTIONS.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"))
        else {
            panic!()
        };
        assert_eq!(
            rejection.reason,
            "CSeq method INVITE does not match request method OPTIONS"
        );
        assert!(matches!(
            verdict(&OPTIONS.replace("Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n", "")),
            Inbound::Drop(_)
        ));
    }

    #[test]
    fn keepalives_and_bad_responses() {
        assert!(matches!(verdict("\r\n\r\n"), Inbound::KeepAlive));
        assert!(matches!(
            verdict("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n"),
            Inbound::Drop(_)
        ));
    }

    #[test]
    fn media_ranges() {
        assert!(media_range_matches("application/*", "application/sdp"));
        assert!(media_range_matches("*/*", "application/sdp"));
        assert!(!media_range_matches(
            "text/nobodyknowsthis",
            "application/sdp"
        ));
    }
}
