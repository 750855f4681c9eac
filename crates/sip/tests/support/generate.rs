//! Generated SIP requests for property and differential tests: random but valid values,
//! written with random header-name forms (long, compact, odd case), optional folding and
//! Via values joined in one row or spread over several.
#![allow(dead_code)]

use proptest::prelude::*;

/// The values a generated request carries, and its text.
#[derive(Debug, Clone)]
pub struct Generated {
    pub text: String,
    pub method: String,
    pub request_uri: String,
    pub call_id: String,
    pub cseq: u32,
    pub vias: Vec<(String, u16, String)>,
    pub from_uri: String,
    pub from_tag: String,
    pub to_uri: String,
    pub to_tag: Option<String>,
    pub display: Option<String>,
    pub max_forwards: u8,
    pub body: String,
}

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9.!%*_+`'~-]{0,15}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,3}".prop_map(|s| s),
        (1u8..255, 0u8..255, 0u8..255, 1u8..255)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        Just("[2001:db8::1]".to_owned()),
    ]
}

fn user() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_.!~*'()-]{1,12}",
        "\\+?[0-9]{3,12}",
        "[a-z]{1,5}%[0-9A-F]{2}[a-z]{0,4}",
    ]
}

fn sip_uri() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        proptest::option::of(user()),
        host(),
        proptest::option::of(1u16..65535),
        proptest::option::of(prop_oneof![
            Just(";transport=tcp"),
            Just(";lr"),
            Just(";user=phone"),
            Just(";x=y")
        ]),
    )
        .prop_map(|(secure, user, host, port, param)| {
            let mut s = String::from(if secure { "sips:" } else { "sip:" });
            if let Some(u) = user {
                s.push_str(&u);
                s.push('@');
            }
            s.push_str(&host);
            if let Some(p) = port {
                s.push_str(&format!(":{p}"));
            }
            if let Some(p) = param {
                s.push_str(p);
            }
            s
        })
}

fn display() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        "[A-Za-z]{1,8}( [A-Za-z]{1,8}){0,2}".prop_map(|s| s),
        "[A-Za-z ,;<>@]{1,12}".prop_map(|s| format!("\"{}\"", s)),
        "[A-Za-z]{1,6}".prop_map(|s| format!("\"{s} \\\"quoted\\\"\"")),
    ])
}

/// How a header name is written.
fn name_form(long: &'static str, compact: Option<&'static str>) -> impl Strategy<Value = String> {
    let forms: Vec<String> = [
        Some(long.to_owned()),
        Some(long.to_ascii_uppercase()),
        Some(long.to_ascii_lowercase()),
        compact.map(str::to_owned),
    ]
    .into_iter()
    .flatten()
    .collect();
    proptest::sample::select(forms)
}

/// Separator between name and value: `: `, `:`, ` : ` or `\t:  `.
fn colon() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec![": ", ":", " : ", "\t:  "])
}

pub fn request() -> impl Strategy<Value = Generated> {
    let methods = proptest::sample::select(vec![
        "INVITE",
        "REGISTER",
        "OPTIONS",
        "BYE",
        "MESSAGE",
        "SUBSCRIBE",
        "NEWMETHOD",
    ]);
    let vias = proptest::collection::vec((host(), 1u16..65535, "[a-zA-Z0-9]{4,16}"), 1..4);
    (
        (
            methods,
            sip_uri(),
            "[a-zA-Z0-9.@-]{4,24}",
            1u32..(1 << 31),
            vias,
        ),
        (
            sip_uri(),
            token(),
            sip_uri(),
            proptest::option::of(token()),
            display(),
            0u8..=255,
        ),
        (
            name_form("Via", Some("v")),
            name_form("From", Some("f")),
            name_form("To", Some("t")),
            name_form("Call-ID", Some("i")),
            name_form("CSeq", None),
            name_form("Max-Forwards", None),
            name_form("Content-Length", Some("l")),
        ),
        (colon(), any::<bool>(), any::<bool>(), "[ -~]{0,40}"),
    )
        .prop_map(
            |(
                (method, ruri, call_id, cseq, vias),
                (from_uri, from_tag, to_uri, to_tag, display, mf),
                names,
                (colon, join_vias, fold, body),
            )| {
                let (via_n, from_n, to_n, callid_n, cseq_n, mf_n, cl_n) = names;
                let vias: Vec<(String, u16, String)> = vias
                    .into_iter()
                    .map(|(h, p, b)| (h, p, format!("z9hG4bK{b}")))
                    .collect();
                let via_values: Vec<String> = vias
                    .iter()
                    .map(|(h, p, b)| format!("SIP/2.0/UDP {h}:{p};branch={b}"))
                    .collect();
                let mut text = format!("{method} {ruri} SIP/2.0\r\n");
                if join_vias {
                    let sep = if fold { ",\r\n " } else { ", " };
                    text.push_str(&format!("{via_n}{colon}{}\r\n", via_values.join(sep)));
                } else {
                    for v in &via_values {
                        text.push_str(&format!("{via_n}{colon}{v}\r\n"));
                    }
                }
                let disp = display.clone().map(|d| format!("{d} ")).unwrap_or_default();
                let from_sep = if fold { "\r\n ;" } else { ";" };
                text.push_str(&format!(
                    "{from_n}{colon}{disp}<{from_uri}>{from_sep}tag={from_tag}\r\n"
                ));
                match &to_tag {
                    Some(t) => text.push_str(&format!("{to_n}{colon}<{to_uri}>;tag={t}\r\n")),
                    None => text.push_str(&format!("{to_n}{colon}<{to_uri}>\r\n")),
                }
                text.push_str(&format!("{callid_n}{colon}{call_id}\r\n"));
                text.push_str(&format!("{cseq_n}{colon}{cseq} {method}\r\n"));
                text.push_str(&format!("{mf_n}{colon}{mf}\r\n"));
                text.push_str("X-Untouched:   spaces  kept \r\n");
                if !body.is_empty() {
                    text.push_str("Content-Type: text/plain\r\n");
                }
                text.push_str(&format!("{cl_n}{colon}{}\r\n\r\n{body}", body.len()));
                Generated {
                    text,
                    method: method.to_owned(),
                    request_uri: ruri,
                    call_id,
                    cseq,
                    vias,
                    from_uri,
                    from_tag,
                    to_uri,
                    to_tag,
                    display,
                    max_forwards: mf,
                    body,
                }
            },
        )
}
