//! The message: a lazy, zero-copy view over one SIP message in a [`Bytes`] buffer.
//!
//! Parsing does the least the edge needs: the start line, a table of header rows (name
//! and value offsets, canonical name) and the body's bounds. Typed values are decoded
//! only when asked for (see [`crate::headers`]), so a proxy never pays for headers it
//! does not read, and an untouched header is re-sent byte for byte.

use bytes::Bytes;
use bytestring::ByteString;

use crate::error::{HeaderError, ParseError};
use crate::header_name::HeaderName;
use crate::headers::{CSeq, NameAddr, Via};
use crate::method::{Method, is_token_byte};
use crate::scan::ListItems;
use crate::uri::Uri;

/// Byte range inside the message buffer. `u32` keeps the header table small; messages are
/// bounded far below 4 GiB by every transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: SpanText },
    Response { code: u16, reason: SpanText },
}

/// Text of the start line kept as an offset into the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanText(pub(crate) Span);

/// One header row as received: its canonical name and where its name, value and whole
/// line (folded continuation lines and the line end included) sit in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRow {
    pub name: HeaderName,
    pub(crate) name_span: Span,
    pub(crate) value_span: Span,
    pub(crate) line_span: Span,
    /// The value runs over several lines (RFC 3261 §7.3.1 folding).
    pub folded: bool,
}

/// A parsed SIP message.
#[derive(Debug, Clone)]
pub struct Message {
    raw: Bytes,
    /// `raw[..head_end]` checked as UTF-8 once, so reading a header is a slice, not a
    /// second validation. Shares `raw`'s buffer.
    head: ByteString,
    start: StartLine,
    start_line_span: Span,
    /// Index just past the start line's terminator (where the first row begins).
    rows_start: u32,
    rows: Vec<HeaderRow>,
    /// First row index of each hot header (`NO_ROW` when absent).
    hot_first: [u16; HOT],
    /// Bit `i` set: hot header `i` has more than one row.
    hot_repeated: u8,
    /// Where the empty line that ends the head starts.
    head_end: u32,
    body: Span,
}

/// Result of parsing the head (start line and header rows) of a message.
pub(crate) struct Head {
    start: StartLine,
    start_line_span: Span,
    rows_start: usize,
    rows: Vec<HeaderRow>,
    hot_first: [u16; HOT],
    hot_repeated: u8,
    head_end: usize,
    /// Index just past the empty line.
    body_start: usize,
    content_length: Option<usize>,
}

/// Headers every message is asked for: their first row and whether they repeat are
/// recorded while parsing, so reading them does not scan the row table.
const HOT: usize = 8;
const NO_ROW: u16 = u16::MAX;

fn hot_slot(name: HeaderName) -> Option<usize> {
    Some(match name {
        HeaderName::Via => 0,
        HeaderName::From => 1,
        HeaderName::To => 2,
        HeaderName::CallId => 3,
        HeaderName::CSeq => 4,
        HeaderName::MaxForwards => 5,
        HeaderName::Contact => 6,
        HeaderName::ContentLength => 7,
        _ => return None,
    })
}

/// Longest Content-Length we accept; larger is a framing error on any transport.
const MAX_CONTENT_LENGTH: usize = 16 * 1024 * 1024;

/// Finds the end of one line starting at `pos`: (index of the line end, index after it).
fn line_end(buf: &[u8], pos: usize) -> Option<(usize, usize)> {
    let nl = pos + memchr::memchr(b'\n', &buf[pos..])?;
    let end = if nl > pos && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((end, nl + 1))
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Index of the first `byte` in `s`, eight bytes per step (SWAR): for the short runs a
/// header name is, cheaper than a call into a vectorised search. The lowest flagged byte
/// of `(v - ONES) & !v & HIGHS` is exactly the first zero byte of `v`.
#[inline(always)]
fn find_byte_swar(s: &[u8], byte: u8) -> Option<usize> {
    let pattern = ONES * u64::from(byte);
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word) ^ pattern;
        let found = v.wrapping_sub(ONES) & !v & HIGHS;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..].iter().position(|&b| b == byte).map(|k| i + k)
}

fn skip_leading_crlf(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
}

pub(crate) fn parse_head(buf: &[u8]) -> Result<Head, ParseError> {
    let begin = skip_leading_crlf(buf);
    if begin == buf.len() {
        return Err(ParseError::Empty);
    }
    let (sl_end, mut pos) = line_end(buf, begin).ok_or(ParseError::Incomplete)?;
    let rows_start = pos;
    // Find the empty line first so the whole head is validated as UTF-8 in one pass.
    let mut rows: Vec<HeaderRow> = Vec::with_capacity(16);
    let mut hot_first = [NO_ROW; HOT];
    let mut hot_repeated = 0u8;
    let head_end;
    loop {
        let (end, next) = line_end(buf, pos).ok_or(ParseError::Incomplete)?;
        if end == pos {
            head_end = pos;
            pos = next;
            break;
        }
        let line = &buf[pos..end];
        if matches!(line[0], b' ' | b'\t') {
            let Some(prev) = rows.last_mut() else {
                return Err(ParseError::HeaderRow {
                    row: 1,
                    what: "continuation line before the first header",
                });
            };
            prev.folded = true;
            prev.line_span.end = next as u32;
            let trimmed = end - trailing_ws(line);
            if trimmed > pos + leading_ws(line) {
                prev.value_span.end = trimmed as u32;
            }
        } else {
            // Find the colon, then let the name lookup validate known names (they are
            // tokens by construction); only unknown names are checked byte by byte.
            let Some(colon) = find_byte_swar(line, b':') else {
                return Err(ParseError::HeaderRow {
                    row: rows.len() + 1,
                    what: "no colon after header name",
                });
            };
            let name_len = colon - trailing_ws(&line[..colon]);
            let name = HeaderName::from_bytes(&line[..name_len]);
            if name_len == 0
                || (name == HeaderName::Other
                    && !line[..name_len].iter().all(|&b| is_token_byte(b)))
            {
                return Err(ParseError::HeaderRow {
                    row: rows.len() + 1,
                    what: "header name is not a token",
                });
            }
            let i = colon;
            if let Some(h) = hot_slot(name) {
                if hot_first[h] == NO_ROW {
                    hot_first[h] = u16::try_from(rows.len()).unwrap_or(NO_ROW - 1);
                } else {
                    hot_repeated |= 1 << h;
                }
            }
            let rest = &line[i + 1..];
            let vstart = pos + i + 1 + leading_ws(rest);
            let vend = (end - trailing_ws(rest)).max(vstart);
            rows.push(HeaderRow {
                name,
                name_span: Span::new(pos, pos + name_len),
                value_span: Span::new(vstart, vend),
                line_span: Span::new(pos, next),
                folded: false,
            });
        }
        pos = next;
    }
    let start = parse_start_line(buf, begin, sl_end)?;
    let mut content_length = None;
    // The hot-header record says where the one Content-Length row is, or that it repeats.
    let content_length_slot = 7;
    debug_assert_eq!(
        hot_slot(HeaderName::ContentLength),
        Some(content_length_slot)
    );
    if hot_repeated & (1 << content_length_slot) != 0 {
        return Err(ParseError::MultipleContentLength);
    }
    if let Some(row) = rows.get(usize::from(hot_first[content_length_slot])) {
        let v = &buf[row.value_span.range()];
        let digits = v
            .iter()
            .skip_while(|b| b.is_ascii_whitespace())
            .take_while(|b| !b.is_ascii_whitespace());
        let mut n: usize = 0;
        let mut count = 0;
        let mut bad = false;
        for &b in digits {
            count += 1;
            if !b.is_ascii_digit() {
                bad = true;
                break;
            }
            n = n.saturating_mul(10).saturating_add(usize::from(b - b'0'));
        }
        let text = || String::from_utf8_lossy(v).trim().to_owned();
        if bad || count == 0 || count != v.iter().filter(|b| !b.is_ascii_whitespace()).count() {
            return Err(ParseError::ContentLength(format!(
                "{:?} is not a number",
                text()
            )));
        }
        if n > MAX_CONTENT_LENGTH {
            return Err(ParseError::ContentLength(format!(
                "{} is too large",
                text()
            )));
        }
        content_length = Some(n);
    }
    Ok(Head {
        start,
        start_line_span: Span::new(begin, sl_end),
        rows_start,
        rows,
        hot_first,
        hot_repeated,
        head_end,
        body_start: pos,
        content_length,
    })
}

fn leading_ws(s: &[u8]) -> usize {
    s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()
}

fn trailing_ws(s: &[u8]) -> usize {
    s.iter()
        .rev()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()
}

fn parse_start_line(buf: &[u8], begin: usize, end: usize) -> Result<StartLine, ParseError> {
    let line = &buf[begin..end];
    // One branch-free pass (it vectorises) tells whether any control octet, tab
    // included, is there; only then are the exact checks below worth their cost.
    let controls = line
        .iter()
        .fold(false, |any, &b| any | (b < 0x20) | (b == 0x7f));
    if controls && line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ParseError::StartLine("control character in start line"));
    }
    if let Some(rest) = line.strip_prefix(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = memchr::memchr(b' ', rest)
            .ok_or(ParseError::StartLine("status line without a code"))?;
        let version = &rest[..sp];
        if version != b"2.0" {
            return Err(version_error(&line[..4 + sp]));
        }
        let after = &rest[sp + 1..];
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(ParseError::StartLine("status code is not a number"));
        }
        if digits != 3 {
            let value = String::from_utf8_lossy(&after[..digits.min(12)]);
            return Err(ParseError::StatusCode(value.parse().unwrap_or(u32::MAX)));
        }
        let code: u32 = std::str::from_utf8(&after[..3])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ParseError::StartLine("status code is not a number"))?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StatusCode(code));
        }
        let reason_start = match after.get(3) {
            None => begin + 4 + sp + 1 + 3,
            Some(b' ') => begin + 4 + sp + 1 + 4,
            Some(_) => return Err(ParseError::StartLine("no space after status code")),
        };
        return Ok(StartLine::Response {
            code: code as u16,
            reason: SpanText(Span::new(reason_start, end)),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version: exactly two single spaces.
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(uri), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::StartLine(
            "Request-Line needs method, Request-URI and version separated by single spaces",
        ));
    };
    if parts.next().is_some() || method.is_empty() || uri.is_empty() || version.is_empty() {
        return Err(ParseError::StartLine(
            "Request-Line has extra whitespace (elements must be separated by one SP)",
        ));
    }
    if controls && line.contains(&b'\t') {
        return Err(ParseError::StartLine("tab in Request-Line"));
    }
    if !method.iter().all(|&b| is_token_byte(b)) {
        return Err(ParseError::StartLine("method is not a token"));
    }

    if version != b"SIP/2.0" {
        return Err(version_error(version));
    }
    let uri_start = begin + method.len() + 1;
    Ok(StartLine::Request {
        method: Method::from_token_bytes(method),
        uri: SpanText(Span::new(uri_start, uri_start + uri.len())),
    })
}

fn version_error(version: &[u8]) -> ParseError {
    let text = String::from_utf8_lossy(version).into_owned();
    let looks_like_sip = text.strip_prefix("SIP/").is_some_and(|v| {
        v.split('.').count() == 2
            && v.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    if looks_like_sip {
        ParseError::Version(text)
    } else {
        ParseError::StartLine("malformed SIP version")
    }
}

impl Message {
    /// Parses one datagram (UDP) per RFC 3261 §18.3: with Content-Length, a shorter body is
    /// an error and trailing octets are discarded; without it, the body runs to the end.
    pub fn parse_datagram(raw: Bytes) -> Result<Message, ParseError> {
        let head = parse_head(&raw)?;
        let available = raw.len() - head.body_start;
        let body_len = match head.content_length {
            Some(declared) if declared > available => {
                return Err(ParseError::BodyTooShort {
                    declared,
                    available,
                });
            }
            Some(declared) => declared,
            None => available,
        };
        Message::from_head(raw, head, body_len)
    }

    pub(crate) fn from_head(
        raw: Bytes,
        head: Head,
        body_len: usize,
    ) -> Result<Message, ParseError> {
        let body = Span::new(head.body_start, head.body_start + body_len);
        let text = ByteString::try_from(raw.slice(..head.head_end))
            .map_err(|e| ParseError::NotUtf8(e.valid_up_to()))?;
        Ok(Message {
            head: text,
            raw,
            start: head.start,
            start_line_span: head.start_line_span,
            rows_start: head.rows_start as u32,
            rows: head.rows,
            hot_first: head.hot_first,
            hot_repeated: head.hot_repeated,
            head_end: head.head_end as u32,
            body,
        })
    }

    pub(crate) fn head_content_length(head: &Head) -> Option<usize> {
        head.content_length
    }

    pub(crate) fn head_body_start(head: &Head) -> usize {
        head.body_start
    }

    /// The whole buffer the message was parsed from (trailing datagram octets included).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The message as a cheap `Bytes` handle (start line through the end of the body).
    pub fn to_bytes(&self) -> Bytes {
        self.raw
            .slice(self.start_line_span.start as usize..self.body.end as usize)
    }

    /// The message bytes: start line through the end of the body.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw[self.start_line_span.start as usize..self.body.end as usize]
    }

    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI as written, for requests.
    pub fn request_uri_str(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(self.text(uri.0)),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI decoded, for requests.
    pub fn request_uri(&self) -> Option<Result<Uri<'_>, HeaderError>> {
        self.request_uri_str().map(Uri::parse)
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(self.text(reason.0)),
            StartLine::Request { .. } => None,
        }
    }

    pub(crate) fn text(&self, span: Span) -> &str {
        // Spans lie in the head and start and end at ASCII delimiters, so they are
        // character boundaries; `get` keeps that an invariant checked, not assumed.
        self.head.get(span.range()).unwrap_or_default()
    }

    pub(crate) fn rows_slice(&self) -> &[HeaderRow] {
        &self.rows
    }

    pub(crate) fn start_line_span(&self) -> Span {
        self.start_line_span
    }

    pub(crate) fn rows_start(&self) -> usize {
        self.rows_start as usize
    }

    pub(crate) fn head_end(&self) -> usize {
        self.head_end as usize
    }

    pub(crate) fn body_span(&self) -> Span {
        self.body
    }

    /// Every header row in order.
    pub fn rows(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.rows
            .iter()
            .map(|r| (self.text(r.name_span), self.text(r.value_span)))
    }

    /// Number of header rows.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// The raw values of every row with this name, in order. Folded values keep their
    /// line breaks; decoders treat them as white space.
    pub fn header_rows(&self, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
        let from = match hot_slot(name) {
            Some(h) if self.hot_first[h] == NO_ROW => self.rows.len(),
            Some(h) => usize::from(self.hot_first[h]),
            None => 0,
        };
        self.rows[from.min(self.rows.len())..]
            .iter()
            .filter(move |r| r.name == name)
            .map(|r| self.text(r.value_span))
    }

    /// The rows of a header this crate has no name for, matched case-insensitively.
    pub fn extension_rows<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.rows
            .iter()
            .filter(move |r| {
                r.name == HeaderName::Other && self.text(r.name_span).eq_ignore_ascii_case(name)
            })
            .map(|r| self.text(r.value_span))
    }

    /// The first row's value.
    pub fn header(&self, name: HeaderName) -> Option<&str> {
        match hot_slot(name) {
            Some(h) => self
                .rows
                .get(usize::from(self.hot_first[h]))
                .map(|r| self.text(r.value_span)),
            None => self.header_rows(name).next(),
        }
    }

    /// The single value of a header that may appear once; an error if it appears more.
    #[inline]
    pub fn single(&self, name: HeaderName) -> Result<Option<&str>, HeaderError> {
        if let Some(h) = hot_slot(name)
            && usize::from(self.hot_first[h]) < self.rows.len()
        {
            if self.hot_repeated & (1 << h) != 0 {
                return Err(HeaderError::Multiple(
                    name.canonical().unwrap_or("extension"),
                ));
            }
            return Ok(Some(
                self.text(self.rows[usize::from(self.hot_first[h])].value_span),
            ));
        }
        let mut rows = self.header_rows(name);
        let first = rows.next();
        if rows.next().is_some() {
            return Err(HeaderError::Multiple(
                name.canonical().unwrap_or("extension"),
            ));
        }
        Ok(first)
    }

    /// Every value of a header: rows of list headers are split on the commas that separate
    /// values (not inside quotes or `<>`); other headers yield one value per row.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
        let split = name.is_list();
        self.header_rows(name).flat_map(move |row| {
            let mut items = ListItems::new(row);
            let mut whole = Some(row);
            std::iter::from_fn(move || if split { items.next() } else { whole.take() })
        })
    }

    pub fn body(&self) -> &[u8] {
        &self.raw[self.body.range()]
    }

    /// The Call-ID (exactly one row).
    pub fn call_id(&self) -> Result<&str, HeaderError> {
        let v = self
            .single(HeaderName::CallId)?
            .ok_or(HeaderError::Missing("Call-ID"))?;
        if v.is_empty()
            || v.bytes()
                .fold(false, |any, b| any | b.is_ascii_whitespace())
        {
            return Err(HeaderError::malformed(
                "Call-ID",
                "empty or contains white space",
            ));
        }
        Ok(v)
    }

    pub fn cseq(&self) -> Result<CSeq, HeaderError> {
        CSeq::parse(
            self.single(HeaderName::CSeq)?
                .ok_or(HeaderError::Missing("CSeq"))?,
        )
    }

    /// The first Via value (of the first Via row).
    pub fn top_via(&self) -> Result<Via<'_>, HeaderError> {
        let row = self
            .header(HeaderName::Via)
            .ok_or(HeaderError::Missing("Via"))?;
        // Most rows hold one value: no comma or quote means no splitting to do.
        let top = if memchr::memchr2(b',', b'"', row.as_bytes()).is_some() {
            ListItems::new(row).next().unwrap_or_default()
        } else {
            row
        };
        Via::parse(top)
    }

    /// Whether the sender listed `option` in Supported (option tags are case-insensitive).
    pub fn supports(&self, option: &str) -> bool {
        self.values(HeaderName::Supported)
            .any(|t| t.trim().eq_ignore_ascii_case(option))
    }

    /// Every Via value, top first.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, HeaderError>> + '_ {
        self.values(HeaderName::Via).map(Via::parse)
    }

    pub fn from_header(&self) -> Result<NameAddr<'_>, HeaderError> {
        NameAddr::parse_header(
            self.single(HeaderName::From)?
                .ok_or(HeaderError::Missing("From"))?,
            "From",
        )
    }

    pub fn to_header(&self) -> Result<NameAddr<'_>, HeaderError> {
        NameAddr::parse_header(
            self.single(HeaderName::To)?
                .ok_or(HeaderError::Missing("To"))?,
            "To",
        )
    }

    /// Max-Forwards (0-255), if present.
    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        self.single(HeaderName::MaxForwards)?
            .map(|v| {
                let n = crate::headers::parse_u32(v, "Max-Forwards")?;
                u8::try_from(n).map_err(|_| HeaderError::Overflow {
                    header: "Max-Forwards",
                    value: n.to_string(),
                })
            })
            .transpose()
    }

    /// Expires in seconds, if present.
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        self.single(HeaderName::Expires)?
            .map(|v| crate::headers::parse_u32(v, "Expires"))
            .transpose()
    }

    /// Contact values; `*` comes out as [`NameAddr::is_star`].
    pub fn contacts(&self) -> impl Iterator<Item = Result<NameAddr<'_>, HeaderError>> + '_ {
        self.values(HeaderName::Contact)
            .map(|v| NameAddr::parse_header(v, "Contact"))
    }

    /// The declared Content-Length, if the message had one.
    pub fn content_length(&self) -> Option<usize> {
        self.header(HeaderName::ContentLength)
            .and_then(|v| v.trim().parse().ok())
    }

    /// The media type of the body, lower-cased `type/subtype` without parameters.
    pub fn content_type(&self) -> Option<String> {
        self.header(HeaderName::ContentType).map(|v| {
            let t = v.split(';').next().unwrap_or("");
            crate::scan::trim_lws(t)
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect::<String>()
                .to_ascii_lowercase()
        })
    }
}

/// The keys an edge reads from every message to route it: top Via, Call-ID, CSeq, From
/// tag, Request-URI host, Max-Forwards. Extracted without validating the rest of the
/// message (that is [`crate::inspect::check_request`]'s job, once per new request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingKeys<'a> {
    pub branch: Option<&'a str>,
    pub sent_by_host: &'a str,
    pub sent_by_port: Option<u16>,
    pub call_id: &'a str,
    pub cseq: u32,
    pub cseq_method: Method,
    pub from_tag: Option<&'a str>,
    /// Host of a sip/sips Request-URI (requests only).
    pub request_uri_host: Option<&'a str>,
    pub max_forwards: Option<u8>,
}

impl Message {
    /// Reads the routing keys; fails if any of them is missing or malformed.
    pub fn routing_keys(&self) -> Result<RoutingKeys<'_>, HeaderError> {
        let via = self.top_via()?;
        let cseq = self.cseq()?;
        let from = self
            .single(HeaderName::From)?
            .ok_or(HeaderError::Missing("From"))?;
        Ok(RoutingKeys {
            branch: via.branch(),
            sent_by_host: via.host,
            sent_by_port: via.port,
            call_id: self.call_id()?,
            cseq: cseq.seq,
            cseq_method: cseq.method,
            from_tag: crate::headers::tag_of(from),
            request_uri_host: self.request_uri_str().and_then(crate::uri::sip_host),
            max_forwards: self.max_forwards()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Bob <sip:bob@example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@192.0.2.10>\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\r\n";

    fn parse(s: &str) -> Result<Message, ParseError> {
        Message::parse_datagram(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn a_register_exposes_its_routing_keys() {
        let m = parse(REGISTER).unwrap();
        assert_eq!(m.method(), Some(&Method::Register));
        assert_eq!(m.request_uri_str(), Some("sip:example.com"));
        let via = m.top_via().unwrap();
        assert_eq!(via.branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(via.host, "192.0.2.10");
        assert_eq!(via.port, Some(5060));
        assert_eq!(m.call_id().unwrap(), "843817637684230@998sdasdh09");
        assert_eq!(m.cseq().unwrap().seq, 1826);
        assert_eq!(m.from_header().unwrap().tag(), Some("456248"));
        assert_eq!(m.max_forwards().unwrap(), Some(70));
        assert_eq!(m.expires().unwrap(), Some(7200));
        assert_eq!(m.body(), b"");
        assert_eq!(m.row_count(), 9);
        let keys = m.routing_keys().unwrap();
        assert_eq!(keys.branch, Some("z9hG4bK776asdhds"));
        assert_eq!(
            (keys.sent_by_host, keys.sent_by_port),
            ("192.0.2.10", Some(5060))
        );
        assert_eq!(keys.call_id, "843817637684230@998sdasdh09");
        assert_eq!((keys.cseq, keys.cseq_method), (1826, Method::Register));
        assert_eq!(keys.from_tag, Some("456248"));
        assert_eq!(keys.request_uri_host, Some("example.com"));
        assert_eq!(keys.max_forwards, Some(70));
    }

    #[test]
    fn datagram_framing_follows_rfc3261_18_3() {
        let short = REGISTER.replace("Content-Length: 0", "Content-Length: 300");
        let short = format!("{short}{}", "x".repeat(120));
        assert_eq!(
            parse(&short).unwrap_err().to_string(),
            "Content-Length 300 exceeds body of 120 bytes"
        );
        let extra = REGISTER.replace("Content-Length: 0", "Content-Length: 4");
        let m = parse(&format!("{extra}bodyTRAILING")).unwrap();
        assert_eq!(m.body(), b"body");
        let none = REGISTER.replace("Content-Length: 0\r\n", "");
        let m = parse(&format!("{none}rest of datagram")).unwrap();
        assert_eq!(m.body(), b"rest of datagram");
    }

    #[test]
    fn request_line_whitespace_is_strict() {
        for bad in [
            "OPTIONS  sip:a@b SIP/2.0\r\n\r\n",
            "OPTIONS sip:a@b SIP/2.0 \r\n\r\n",
            "OPTIONS sip:a@b  SIP/2.0\r\n\r\n",
            "OPTIONS sip:a @b SIP/2.0\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::StartLine(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse("OPTIONS sip:a@b SIP/7.0\r\n\r\n"),
            Err(ParseError::Version(v)) if v == "SIP/7.0"
        ));
    }

    #[test]
    fn heads_must_be_utf8_and_repeated_single_headers_are_caught() {
        let bad = REGISTER.replace(
            "Bob <sip:bob@example.com>;tag",
            "B\u{fffd}b <sip:bob@example.com>;tag",
        );
        let mut bytes = bad.into_bytes();
        let at = bytes
            .windows(3)
            .position(|w| w == "\u{fffd}".as_bytes())
            .unwrap();
        bytes[at] = 0xff;
        assert!(matches!(
            Message::parse_datagram(Bytes::from(bytes)),
            Err(ParseError::NotUtf8(_))
        ));
        let twice = parse(&REGISTER.replace(
            "CSeq: 1826 REGISTER",
            "CSeq: 1826 REGISTER\r\nCSeq: 1827 REGISTER",
        ))
        .unwrap();
        assert_eq!(twice.cseq().unwrap_err(), HeaderError::Multiple("CSeq"));
        assert_eq!(twice.header_rows(HeaderName::CSeq).count(), 2);
    }

    #[test]
    fn status_lines_reject_codes_outside_100_699() {
        assert!(parse("SIP/2.0 200 OK\r\n\r\n").is_ok());
        assert_eq!(parse("SIP/2.0 180 \r\n\r\n").unwrap().reason(), Some(""));
        assert!(matches!(
            parse("SIP/2.0 700 X\r\n\r\n"),
            Err(ParseError::StatusCode(700))
        ));
        assert!(matches!(
            parse("SIP/2.0 4294967301 X\r\n\r\n"),
            Err(ParseError::StatusCode(_))
        ));
        assert!(matches!(
            parse("SIP/2.0 099 X\r\n\r\n"),
            Err(ParseError::StatusCode(99))
        ));
    }

    #[test]
    fn folded_rows_and_list_values() {
        let m = parse(
            "OPTIONS sip:a@b SIP/2.0\r\nAccept: application/sdp, a/b,\r\n  c/d\r\nv: SIP/2.0/UDP h1;branch=z9hG4bK1,SIP/2.0/UDP h2;branch=z9hG4bK2\r\nVia: SIP/2.0/TCP h3;branch=z9hG4bK3\r\n\r\n",
        )
        .unwrap();
        let accept: Vec<_> = m.values(HeaderName::Accept).collect();
        assert_eq!(accept, ["application/sdp", "a/b", "c/d"]);
        let hosts: Vec<_> = m.vias().map(|v| v.unwrap().host).collect();
        assert_eq!(hosts, ["h1", "h2", "h3"]);
    }

    #[test]
    fn content_length_defects_are_named() {
        let neg = REGISTER.replace("Content-Length: 0", "Content-Length: -999");
        assert!(matches!(parse(&neg), Err(ParseError::ContentLength(_))));
        let two = REGISTER.replace("Content-Length: 0", "Content-Length: 0\r\nl: 0");
        assert_eq!(parse(&two).unwrap_err(), ParseError::MultipleContentLength);
        let huge = REGISTER.replace(
            "Content-Length: 0",
            "Content-Length: 99999999999999999999999",
        );
        assert!(matches!(parse(&huge), Err(ParseError::ContentLength(_))));
    }

    #[test]
    fn header_rows_without_colon_or_with_bad_names_fail() {
        assert!(matches!(
            parse("OPTIONS sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n"),
            Err(ParseError::HeaderRow { row: 1, .. })
        ));
        assert!(matches!(
            parse("OPTIONS sip:a@b SIP/2.0\r\n continued\r\n\r\n"),
            Err(ParseError::HeaderRow { .. })
        ));
        assert!(matches!(
            parse("OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n"),
            Err(ParseError::Incomplete)
        ));
        assert!(matches!(parse("\r\n\r\n"), Err(ParseError::Empty)));
    }
}
