//! Lexical helpers shared by the typed decoders: LWS (which includes folded line breaks, so
//! decoders never need an unfolded copy), quoted strings, comma lists and `;` parameters.

use crate::method::is_token_byte;

/// Linear white space as it can appear inside a (possibly folded) header value.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[inline]
pub(crate) fn trim_lws(s: &str) -> &str {
    let b = s.as_bytes();
    // Almost every value arrives trimmed already.
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) if !is_lws(f) && !is_lws(l) => return s,
        _ => {}
    }
    let mut start = 0;
    let mut end = b.len();
    while start < end && is_lws(b[start]) {
        start += 1;
    }
    while end > start && is_lws(b[end - 1]) {
        end -= 1;
    }
    // LWS bytes are ASCII, so both ends are character boundaries.
    &s[start..end]
}

/// Index of the first `byte` in `s`; a plain loop, faster than a SIMD search on the short
/// strings header values are made of.
#[inline]
pub(crate) fn find_byte(s: &str, byte: u8) -> Option<usize> {
    s.as_bytes().iter().position(|&b| b == byte)
}

/// Given `s` starting with `"`, the index just past the closing quote.
/// Backslash escapes the next octet (RFC 3261 `quoted-pair`).
pub(crate) fn quoted_end(s: &[u8]) -> Option<usize> {
    debug_assert_eq!(s.first(), Some(&b'"'));
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Splits a header value on the commas that separate values: not inside a quoted string
/// and not inside `<...>`. Items are trimmed of LWS; empty items are kept so that a
/// decoder can reject them. An unterminated quote ends the split with the rest as one item.
#[derive(Debug, Clone)]
pub struct ListItems<'a> {
    rest: Option<&'a str>,
}

impl<'a> ListItems<'a> {
    pub(crate) fn new(value: &'a str) -> Self {
        ListItems { rest: Some(value) }
    }
}

const fn special_table(set: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < set.len() {
        t[set[i] as usize] = true;
        i += 1;
    }
    t
}

/// Bytes that end or complicate a list item.
static LIST_SPECIAL: [bool; 256] = special_table(b",\"<>");
/// Bytes that end or complicate a parameter.
static PARAM_SPECIAL: [bool; 256] = special_table(b";\"");

impl<'a> Iterator for ListItems<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        let b = s.as_bytes();
        let mut i = 0;
        let mut angle = false;
        while i < b.len() {
            // Skip plain bytes quickly; only the specials need the state machine.
            if !LIST_SPECIAL[b[i] as usize] {
                i += 1;
                continue;
            }
            match b[i] {
                b'"' if !angle => match quoted_end(&b[i..]) {
                    Some(n) => i += n,
                    None => {
                        i = b.len();
                        break;
                    }
                },
                b'<' => {
                    angle = true;
                    i += 1;
                }
                b'>' => {
                    angle = false;
                    i += 1;
                }
                b',' if !angle => {
                    self.rest = Some(&s[i + 1..]);
                    return Some(trim_lws(&s[..i]));
                }
                _ => i += 1,
            }
        }
        self.rest = None;
        Some(trim_lws(&s[..i]))
    }
}

/// `;name[=value]` parameters, scanned on demand without allocation.
/// Built over the text that follows the first `;`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params<'a> {
    raw: &'a str,
}

/// One parameter; the value keeps its quotes if it had them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
}

impl<'a> Params<'a> {
    pub(crate) fn new(raw: &'a str) -> Self {
        Params { raw }
    }

    /// The raw text of the parameters (after the first `;`), as received.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// Iterates the parameters; malformed ones come out with an empty name.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter {
            rest: self.raw,
            done: self.raw.is_empty(),
        }
    }

    /// The first parameter named `name` (case-insensitive). `Some(None)` for a flag.
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Checks every parameter is `token [= token / quoted-string / host]`.
    pub fn validate(&self) -> Result<(), String> {
        self.iter().try_for_each(|p| p.validate())
    }
}

impl Param<'_> {
    /// Checks the parameter is `token [= token / quoted-string / host]`.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || !self.name.bytes().all(is_token_byte) {
            return Err(format!("bad parameter name {:?}", self.name));
        }
        if let Some(v) = self.value {
            let ok = if v.starts_with('"') {
                quoted_end(v.as_bytes()) == Some(v.len())
            } else {
                !v.is_empty()
                    && v.bytes()
                        .all(|b| is_token_byte(b) || matches!(b, b':' | b'[' | b']'))
            };
            if !ok {
                return Err(format!("bad value for parameter {}", self.name));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ParamIter<'a> {
    rest: &'a str,
    done: bool,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        if self.done {
            return None;
        }
        let b = self.rest.as_bytes();
        let mut i = 0;
        while i < b.len() && b[i] != b';' {
            if !PARAM_SPECIAL[b[i] as usize] {
                i += 1;
                continue;
            }
            if b[i] == b'"' {
                i += quoted_end(&b[i..]).unwrap_or(b.len() - i);
            } else {
                i += 1;
            }
        }
        let item = &self.rest[..i];
        if i < b.len() {
            self.rest = &self.rest[i + 1..];
        } else {
            self.done = true;
        }
        Some(match find_byte(item, b'=') {
            Some(eq) => Param {
                name: trim_lws(&item[..eq]),
                value: Some(trim_lws(&item[eq + 1..])),
            },
            None => Param {
                name: trim_lws(item),
                value: None,
            },
        })
    }
}

const fn param_value_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = crate::method::is_token_byte_const(b) || matches!(b, b':' | b'[' | b']');
        i += 1;
    }
    t
}

/// Bytes of an unquoted parameter value: token characters plus `:`, `[`, `]` (hosts).
pub(crate) static PARAM_VALUE: [bool; 256] = param_value_table();

/// Parameters in the plain form almost every sender uses (`name[=value]` joined by `;`,
/// no white space, no quotes), validated in one pass and split on demand. `None` when the text
/// needs the general scanner ([`Params::iter`]), which also names any defect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SimpleParams<'a>(&'a str);

impl<'a> SimpleParams<'a> {
    /// Checks `s` is in the plain form; then [`SimpleParams::iter`] only splits it.
    pub(crate) fn parse(s: &'a str) -> Option<SimpleParams<'a>> {
        let b = s.as_bytes();
        let mut i = 0;
        loop {
            let start = i;
            while i < b.len() && is_token_byte(b[i]) {
                i += 1;
            }
            if i == start {
                return None;
            }
            if i < b.len() && b[i] == b'=' {
                i += 1;
                let vstart = i;
                while i < b.len() && PARAM_VALUE[b[i] as usize] {
                    i += 1;
                }
                if i == vstart {
                    return None;
                }
            }
            if i == b.len() {
                return Some(SimpleParams(s));
            }
            if b[i] != b';' {
                return None;
            }
            i += 1;
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        let s = self.0;
        let b = s.as_bytes();
        let mut pos = 0;
        std::iter::from_fn(move || {
            if pos > b.len() {
                return None;
            }
            let start = pos;
            let mut eq = None;
            while pos < b.len() && b[pos] != b';' {
                if b[pos] == b'=' && eq.is_none() {
                    eq = Some(pos);
                }
                pos += 1;
            }
            let end = pos;
            pos += 1;
            Some(match eq {
                Some(e) => (&s[start..e], Some(&s[e + 1..end])),
                None => (&s[start..end], None),
            })
        })
    }
}

/// Removes the surrounding quotes and backslash escapes of a quoted string.
pub fn unquote(s: &str) -> std::borrow::Cow<'_, str> {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    if !inner.contains('\\') {
        return std::borrow::Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_outside_quotes_and_angle_brackets_only() {
        let v = r#""Doe, John" <sip:a@b;x=1,2>;q=0.5, <sip:c@d>,sip:e@f"#;
        let items: Vec<_> = ListItems::new(v).collect();
        assert_eq!(
            items,
            [
                r#""Doe, John" <sip:a@b;x=1,2>;q=0.5"#,
                "<sip:c@d>",
                "sip:e@f"
            ]
        );
        let escaped = r#""a \", b" <sip:x@y>, <sip:z@w>"#;
        assert_eq!(ListItems::new(escaped).count(), 2);
        let empties: Vec<_> = ListItems::new("a;;,;,,").collect();
        assert_eq!(empties, ["a;;", ";", "", ""]);
    }

    #[test]
    fn params_tolerate_lws_and_quotes_and_flag_bad_ones() {
        let p = Params::new(" branch  =   z9hG4bK9ikj8 ;rport; x=\"a;b\"");
        assert_eq!(p.get("BRANCH"), Some(Some("z9hG4bK9ikj8")));
        assert_eq!(p.get("rport"), Some(None));
        assert_eq!(p.get("x"), Some(Some("\"a;b\"")));
        assert_eq!(p.get("y"), None);
        assert!(p.validate().is_ok());
        assert!(Params::new(";").validate().is_err());
        assert!(Params::new("a=").validate().is_err());
    }

    #[test]
    fn simple_params_take_the_plain_form_and_leave_the_rest() {
        let p = SimpleParams::parse("branch=z9hG4bK1;rport;received=[2001:db8::1]").unwrap();
        let items: Vec<_> = p.iter().collect();
        assert_eq!(
            items,
            [
                ("branch", Some("z9hG4bK1")),
                ("rport", None),
                ("received", Some("[2001:db8::1]"))
            ]
        );
        for general in ["a = b", "x=\"q\"", ";", "a=", "a;;b", "a;"] {
            assert!(SimpleParams::parse(general).is_none(), "{general}");
        }
    }

    #[test]
    fn unquote_removes_escapes() {
        assert_eq!(unquote(r#""J Rosenberg \\\"""#), r#"J Rosenberg \""#);
        assert_eq!(unquote("plain"), "plain");
    }
}
