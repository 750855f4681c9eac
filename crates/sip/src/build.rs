//! Building messages and editing received ones.
//!
//! - [`ResponseBuilder`] answers a request as RFC 3261 §8.2.6 says: Via rows, From, To,
//!   Call-ID and CSeq copied, a To tag added when the request had none.
//! - [`RequestBuilder`] writes a request from scratch (the B2BUA's own legs).
//! - [`Editor`] makes proxy edits (Via insert/remove, Route/Record-Route, Max-Forwards,
//!   Request-URI) while every untouched header row is copied byte for byte.
//! - [`salvage_response_rows`] finds the rows needed to answer a request that failed to
//!   parse, so a `400` can still be routed.

use bytes::{BufMut, Bytes, BytesMut};

use crate::header_name::HeaderName;
use crate::message::Message;
use crate::method::Method;
use crate::scan::ListItems;

/// Canonical reason phrases for the codes Switchyard sends.
pub fn default_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// Makes a reason phrase safe for a status line: printable, one line, bounded.
pub fn sanitize_reason(reason: &str) -> String {
    let mut out: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 200 {
        let mut cut = 200;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[derive(Debug, Clone)]
struct Row {
    name: String,
    value: String,
}

/// Builds a response to a request.
#[derive(Debug, Clone)]
pub struct ResponseBuilder {
    status: u16,
    reason: String,
    rows: Vec<Row>,
    body: Option<(String, Bytes)>,
}

impl ResponseBuilder {
    /// Starts a response copying Via, From, To, Call-ID and CSeq from `request`.
    /// `to_tag` is added to To if the request's To had no tag and `status` is not 100.
    pub fn for_request(request: &Message, status: u16, reason: &str, to_tag: &str) -> Self {
        let copied = request.rows_slice().iter().filter(|r| {
            matches!(
                r.name,
                HeaderName::Via
                    | HeaderName::From
                    | HeaderName::To
                    | HeaderName::CallId
                    | HeaderName::CSeq
            )
        });
        let rows = copied
            .map(|r| (r.name, request.text(r.value_span).to_owned()))
            .collect();
        Self::from_rows(status, reason, rows, to_tag)
    }

    /// Starts a response from rows found by [`salvage_response_rows`] (or any rows with
    /// the names above), in the same way as [`ResponseBuilder::for_request`].
    pub fn from_rows(
        status: u16,
        reason: &str,
        rows: Vec<(HeaderName, String)>,
        to_tag: &str,
    ) -> Self {
        let mut out = Vec::with_capacity(rows.len() + 4);
        for (name, mut value) in rows {
            if name == HeaderName::To && status != 100 && !to_tag.is_empty() && !has_tag(&value) {
                value.push_str(";tag=");
                value.push_str(to_tag);
            }
            out.push(Row {
                name: name.canonical().unwrap_or("X").to_owned(),
                value,
            });
        }
        ResponseBuilder {
            status,
            reason: sanitize_reason(reason),
            rows: out,
            body: None,
        }
    }

    /// Adds a header row.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.rows.push(Row {
            name: name.to_owned(),
            value: value.into(),
        });
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.body = Some((content_type.to_owned(), body.into()));
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// RFC 3581 / RFC 3261 §18.2.1: records where the request really came from in the top
    /// Via value: `received` when the sent-by host differs from the source address, and
    /// the source port in `rport` when the client asked for it.
    pub fn stamp_top_via(mut self, source: std::net::SocketAddr) -> Self {
        let source_ip = ip_text(source.ip());
        let source_ip = source_ip.as_str();
        let Some(row) = self.rows.iter_mut().find(|r| r.name == "Via") else {
            return self;
        };
        let mut items = ListItems::new(&row.value);
        let top = items.next().unwrap_or_default().to_owned();
        let rest: Vec<String> = items.map(str::to_owned).collect();
        let Ok(via) = crate::headers::Via::parse(&top) else {
            return self;
        };
        let host = via.host.trim_start_matches('[').trim_end_matches(']');
        let mut stamped = String::with_capacity(top.len() + 40);
        let (head, params) = match top.find(';') {
            Some(i) => (&top[..i], &top[i + 1..]),
            None => (top.as_str(), ""),
        };
        stamped.push_str(head.trim_end());
        for p in crate::scan::Params::new(params)
            .iter()
            .filter(|p| !p.name.is_empty())
        {
            if p.name.eq_ignore_ascii_case("received") {
                continue;
            }
            stamped.push(';');
            if p.name.eq_ignore_ascii_case("rport") {
                stamped.push_str("rport=");
                push_decimal(&mut stamped, u64::from(source.port()));
                continue;
            }
            stamped.push_str(p.name);
            if let Some(v) = p.value {
                stamped.push('=');
                stamped.push_str(v);
            }
        }
        if host != source_ip || via.rport().is_some() {
            stamped.push_str(";received=");
            stamped.push_str(source_ip);
        }
        row.value = std::iter::once(stamped)
            .chain(rest)
            .collect::<Vec<_>>()
            .join(", ");
        self
    }

    /// Serialises the response with a Content-Length.
    pub fn build(self) -> Bytes {
        let mut start = String::with_capacity(12 + self.reason.len());
        start.push_str("SIP/2.0 ");
        push_decimal(&mut start, u64::from(self.status));
        start.push(' ');
        start.push_str(&self.reason);
        write_message(&start, &self.rows, self.body.as_ref())
    }
}

/// `n` in decimal, appended to `out` (without `format!`, on every message's path).
pub fn push_decimal(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).expect("decimal digits are ASCII"));
}

/// An address as text: dotted quad for IPv4 (by hand: `Display` for `Ipv4Addr` costs
/// a few thousand instructions, and every answer writes one), RFC 5952 for IPv6.
pub fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                push_decimal(&mut s, u64::from(octet));
            }
            s
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

fn has_tag(to_value: &str) -> bool {
    crate::headers::NameAddr::parse_header(to_value, "To")
        .map(|n| n.tag().is_some())
        .unwrap_or_else(|_| to_value.to_ascii_lowercase().contains(";tag="))
}

fn write_message(start: &str, rows: &[Row], body: Option<&(String, Bytes)>) -> Bytes {
    let size = start.len()
        + rows
            .iter()
            .map(|r| r.name.len() + r.value.len() + 4)
            .sum::<usize>()
        + body.map_or(0, |(t, b)| t.len() + b.len() + 16)
        + 32;
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(start.as_bytes());
    out.put_slice(b"\r\n");
    for r in rows {
        out.put_slice(r.name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(r.value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if let Some((ctype, _)) = body {
        out.put_slice(b"Content-Type: ");
        out.put_slice(ctype.as_bytes());
        out.put_slice(b"\r\n");
    }
    let len = body.map_or(0, |(_, b)| b.len());
    out.put_slice(format!("Content-Length: {len}\r\n\r\n").as_bytes());
    if let Some((_, b)) = body {
        out.put_slice(b);
    }
    out.freeze()
}

/// Builds a request from scratch.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: Method,
    uri: String,
    rows: Vec<Row>,
    body: Option<(String, Bytes)>,
}

impl RequestBuilder {
    pub fn new(method: Method, uri: impl Into<String>) -> Self {
        RequestBuilder {
            method,
            uri: uri.into(),
            rows: Vec::with_capacity(10),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.rows.push(Row {
            name: name.to_owned(),
            value: value.into(),
        });
        self
    }

    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.body = Some((content_type.to_owned(), body.into()));
        self
    }

    pub fn build(self) -> Bytes {
        let start = format!("{} {} SIP/2.0", self.method, self.uri);
        write_message(&start, &self.rows, self.body.as_ref())
    }
}

/// Rows needed to answer a request whose parse failed: found leniently, line by line.
/// `None` when there is no Via to send the answer to (then the request is dropped) or
/// the message is a response.
pub fn salvage_response_rows(raw: &[u8]) -> Option<Vec<(HeaderName, String)>> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.find(|l| !l.is_empty())?;
    if first.starts_with("SIP/") {
        return None;
    }
    let mut rows: Vec<(HeaderName, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = rows.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = HeaderName::from_bytes(name.trim_end().as_bytes());
        if matches!(
            name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) {
            rows.push((name, value.trim().to_owned()));
        }
    }
    rows.iter()
        .any(|(n, _)| *n == HeaderName::Via)
        .then_some(rows)
}

/// Proxy edits on a received message. Rows not named by an edit are copied byte for byte.
/// Edits address the message as received: `pop_via` removes the received top Via even if
/// `push_via` added one above it.
#[derive(Debug)]
pub struct Editor<'m> {
    msg: &'m Message,
    request_uri: Option<String>,
    /// `(row index, line)` to insert before that row; `usize::MAX` appends.
    inserts: Vec<(usize, String)>,
    /// `(row index, new value or None to remove the row)`.
    replaced: Vec<(usize, Option<String>)>,
}

impl<'m> Editor<'m> {
    pub fn new(msg: &'m Message) -> Self {
        Editor {
            msg,
            request_uri: None,
            inserts: Vec::with_capacity(4),
            replaced: Vec::with_capacity(4),
        }
    }

    fn first_row(&self, name: HeaderName) -> Option<usize> {
        self.msg.rows_slice().iter().position(|r| r.name == name)
    }

    fn current_value(&self, idx: usize) -> Option<String> {
        match self.replaced.iter().rev().find(|(i, _)| *i == idx) {
            Some((_, v)) => v.clone(),
            None => Some(
                self.msg
                    .text(self.msg.rows_slice()[idx].value_span)
                    .to_owned(),
            ),
        }
    }

    /// Inserts a Via value above all others (a new top row).
    pub fn push_via(mut self, value: &str) -> Self {
        let at = self.first_row(HeaderName::Via).unwrap_or(0);
        self.inserts.push((at, format!("Via: {value}\r\n")));
        self
    }

    /// Removes the top value of the first row of `name` (the whole row if it held one).
    fn pop_first_value(mut self, name: HeaderName) -> Self {
        let Some(idx) = self
            .msg
            .rows_slice()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.name == name)
            .map(|(i, _)| i)
            .find(|i| self.current_value(*i).is_some())
        else {
            return self;
        };
        let value = self.current_value(idx).unwrap_or_default();
        let mut items = ListItems::new(&value);
        items.next();
        let rest: Vec<&str> = items.collect();
        let new = if rest.is_empty() {
            None
        } else {
            Some(rest.join(", "))
        };
        self.replaced.push((idx, new));
        self
    }

    /// Removes the top Via value (a proxy forwarding a response).
    pub fn pop_via(self) -> Self {
        self.pop_first_value(HeaderName::Via)
    }

    /// Removes the top Route value (loose routing, RFC 3261 §16.4).
    pub fn pop_route(self) -> Self {
        self.pop_first_value(HeaderName::Route)
    }

    /// Adds a Record-Route value above the others.
    pub fn push_record_route(mut self, value: &str) -> Self {
        let at = self
            .first_row(HeaderName::RecordRoute)
            .unwrap_or(usize::MAX);
        self.inserts
            .push((at, format!("Record-Route: {value}\r\n")));
        self
    }

    /// Decrements Max-Forwards (adding `Max-Forwards: 70` minus one when absent).
    /// Returns `None` if the value is already 0 or unreadable: the caller answers 483/400.
    pub fn decrement_max_forwards(mut self) -> Option<Self> {
        match self.first_row(HeaderName::MaxForwards) {
            Some(idx) => {
                let v =
                    crate::headers::parse_u32(&self.current_value(idx)?, "Max-Forwards").ok()?;
                if v == 0 || v > 255 {
                    return None;
                }
                self.replaced.push((idx, Some((v - 1).to_string())));
            }
            None => self
                .inserts
                .push((usize::MAX, "Max-Forwards: 69\r\n".to_owned())),
        }
        Some(self)
    }

    /// Replaces the Request-URI.
    pub fn set_request_uri(mut self, uri: &str) -> Self {
        self.request_uri = Some(uri.to_owned());
        self
    }

    /// Appends a header row.
    pub fn add_header(mut self, name: &str, value: &str) -> Self {
        self.inserts
            .push((usize::MAX, format!("{name}: {value}\r\n")));
        self
    }

    /// Removes every row of `name`.
    pub fn remove(mut self, name: HeaderName) -> Self {
        for (i, r) in self.msg.rows_slice().iter().enumerate() {
            if r.name == name {
                self.replaced.push((i, None));
            }
        }
        self
    }

    /// Removes every row of a header this crate has no name for (case-insensitive), such
    /// as an internal header a phone must not be able to set.
    pub fn remove_other(mut self, name: &str) -> Self {
        for (i, r) in self.msg.rows_slice().iter().enumerate() {
            if r.name == HeaderName::Other && self.msg.text(r.name_span).eq_ignore_ascii_case(name)
            {
                self.replaced.push((i, None));
            }
        }
        self
    }

    /// Writes the edited message.
    pub fn write(&self) -> Bytes {
        let m = self.msg;
        let raw = m.raw();
        let extra: usize = self.inserts.iter().map(|(_, l)| l.len()).sum::<usize>()
            + self
                .replaced
                .iter()
                .map(|(_, v)| v.as_ref().map_or(0, |v| v.len() + 32))
                .sum::<usize>()
            + self.request_uri.as_ref().map_or(0, |u| u.len());
        let mut out = BytesMut::with_capacity(m.as_bytes().len() + extra);
        let sl = m.start_line_span();
        match (&self.request_uri, m.method()) {
            (Some(uri), Some(method)) => {
                out.put_slice(method.as_str().as_bytes());
                out.put_u8(b' ');
                out.put_slice(uri.as_bytes());
                out.put_slice(b" SIP/2.0\r\n");
            }
            // The start line with its own terminator, as received.
            _ => out.put_slice(&raw[sl.start as usize..m.rows_start()]),
        }
        for (i, row) in m.rows_slice().iter().enumerate() {
            for (_, line) in self.inserts.iter().filter(|(at, _)| *at == i) {
                out.put_slice(line.as_bytes());
            }
            match self.replaced.iter().rev().find(|(at, _)| *at == i) {
                None => out.put_slice(&raw[row.line_span.range()]),
                Some((_, None)) => {}
                Some((_, Some(v))) => {
                    out.put_slice(&raw[row.name_span.range()]);
                    out.put_slice(b": ");
                    out.put_slice(v.as_bytes());
                    out.put_slice(b"\r\n");
                }
            }
        }
        for (_, line) in self.inserts.iter().filter(|(at, _)| *at == usize::MAX) {
            out.put_slice(line.as_bytes());
        }
        // The empty line as received (CRLF, or a bare LF from a lenient sender).
        out.put_slice(&raw[m.head_end()..m.body_span().start as usize]);
        out.put_slice(&raw[m.body_span().range()]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8,\r\n SIP/2.0/UDP h2;branch=z9hG4bK2\r\n\
max-forwards:   70\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
X-Odd:   keep   me  exactly \r\n\
Content-Length: 4\r\n\r\nbody";

    fn msg(s: &str) -> Message {
        Message::parse_datagram(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn response_copies_the_dialog_headers_and_adds_a_to_tag() {
        let req = msg(INVITE);
        let resp = ResponseBuilder::for_request(&req, 486, "Busy Here", "as83kd9bs")
            .header("Retry-After", "30")
            .build();
        let r = Message::parse_datagram(resp).unwrap();
        assert_eq!(r.status(), Some(486));
        assert_eq!(r.reason(), Some("Busy Here"));
        assert_eq!(r.vias().count(), 2);
        assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bKnashds8"));
        assert_eq!(r.call_id().unwrap(), "a84b4c76e66710");
        assert_eq!(r.cseq().unwrap().seq, 314159);
        assert_eq!(r.to_header().unwrap().tag(), Some("as83kd9bs"));
        assert_eq!(r.from_header().unwrap().tag(), Some("1928301774"));
        assert_eq!(r.header(HeaderName::RetryAfter), Some("30"));
        assert_eq!(r.header(HeaderName::Route), None);
        let trying =
            Message::parse_datagram(ResponseBuilder::for_request(&req, 100, "Trying", "x").build())
                .unwrap();
        assert_eq!(trying.to_header().unwrap().tag(), None, "no To tag on 100");
    }

    #[test]
    fn proxy_edits_keep_untouched_rows_byte_for_byte() {
        let req = msg(INVITE);
        let out = Editor::new(&req)
            .push_via("SIP/2.0/UDP edge.example.net;branch=z9hG4bKedge")
            .pop_route()
            .push_record_route("<sip:edge.example.net;lr>")
            .decrement_max_forwards()
            .unwrap()
            .write();
        let text = std::str::from_utf8(&out).unwrap();
        let edited = msg(text);
        assert_eq!(edited.top_via().unwrap().host, "edge.example.net");
        assert_eq!(edited.vias().count(), 3);
        assert_eq!(edited.max_forwards().unwrap(), Some(69));
        let routes: Vec<_> = edited.values(HeaderName::Route).collect();
        assert_eq!(routes, ["<sip:p2.example.com;lr>"]);
        assert_eq!(
            edited.header(HeaderName::RecordRoute),
            Some("<sip:edge.example.net;lr>")
        );
        assert_eq!(edited.body(), b"body");
        for untouched in [
            "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8,\r\n SIP/2.0/UDP h2;branch=z9hG4bK2\r\n",
            "X-Odd:   keep   me  exactly \r\n",
            "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n",
        ] {
            assert!(text.contains(untouched), "{untouched:?} changed in {text}");
        }
        let popped = Editor::new(&req).pop_via().write();
        let popped = msg(std::str::from_utf8(&popped).unwrap());
        assert_eq!(popped.top_via().unwrap().host, "h2");
        assert_eq!(popped.vias().count(), 1);
    }

    #[test]
    fn max_forwards_zero_cannot_be_decremented() {
        let req = msg(&INVITE.replace("max-forwards:   70", "Max-Forwards: 0"));
        assert!(Editor::new(&req).decrement_max_forwards().is_none());
    }

    #[test]
    fn an_editor_with_no_edits_reproduces_the_message() {
        let req = msg(INVITE);
        assert_eq!(&Editor::new(&req).write()[..], INVITE.as_bytes());
        // Found by the datagram fuzzer: bare-LF line ends are kept as received.
        let lf = "SIP/2.0 200 OK\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\nbody";
        assert_eq!(&Editor::new(&msg(lf)).write()[..], lf.as_bytes());
    }

    #[test]
    fn control_characters_in_the_start_line_are_refused() {
        let bad = "SIP/2.0 200 OK\r\u{1b}\u{1b}\nVia: SIP/2.0/UDP h\r\n\r\n";
        assert!(Message::parse_datagram(Bytes::copy_from_slice(bad.as_bytes())).is_err());
    }

    #[test]
    fn salvage_finds_rows_of_a_broken_request_and_drops_without_via() {
        let broken = b"INVITE  sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: c\r\nTo: <sip:a@b>\r\n\r\n";
        let rows = salvage_response_rows(broken).unwrap();
        assert_eq!(rows.len(), 3);
        let resp = ResponseBuilder::from_rows(400, "Bad Request-Line", rows, "t1").build();
        let r = Message::parse_datagram(resp).unwrap();
        assert_eq!(r.to_header().unwrap().tag(), Some("t1"));
        assert!(
            salvage_response_rows(b"INVITE sip:a@b SIP/2.0\r\nTo: <sip:a@b>\r\n\r\n").is_none()
        );
        assert!(salvage_response_rows(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n").is_none());
    }

    #[test]
    fn top_via_is_stamped_with_received_and_rport() {
        let req = msg(&INVITE.replace(
            "pc33.atlanta.example.com;branch=z9hG4bKnashds8",
            "pc33.atlanta.example.com;rport;branch=z9hG4bKnashds8",
        ));
        let resp = ResponseBuilder::for_request(&req, 200, "OK", "t")
            .stamp_top_via("192.0.2.4:40000".parse().unwrap())
            .build();
        let r = Message::parse_datagram(resp).unwrap();
        let top = r.top_via().unwrap();
        assert_eq!(top.received(), Some("192.0.2.4"));
        assert_eq!(top.rport(), Some(Some(40000)));
        assert_eq!(top.branch(), Some("z9hG4bKnashds8"));
        assert_eq!(r.vias().count(), 2);
        let plain = ResponseBuilder::for_request(&msg(INVITE), 200, "OK", "t")
            .stamp_top_via("192.0.2.4:40000".parse().unwrap())
            .build();
        let r = Message::parse_datagram(plain).unwrap();
        assert_eq!(r.top_via().unwrap().rport(), None);
        assert_eq!(r.top_via().unwrap().received(), Some("192.0.2.4"));
    }

    #[test]
    fn hand_written_numbers_and_addresses_agree_with_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.20.3",
            "192.0.2.4",
            "::1",
            "2001:db8::7",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for n in [0, 9, 10, 65535, u64::MAX] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    #[test]
    fn reasons_are_sanitised() {
        assert_eq!(sanitize_reason("a\r\nInjected: x"), "a  Injected: x");
        assert!(sanitize_reason(&"é".repeat(300)).len() <= 200);
    }
}
