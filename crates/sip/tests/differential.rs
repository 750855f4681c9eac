//! Differential test against `sipx-sip` (an independent sans-I/O SIP parser) on the
//! RFC 4475 corpus and on generated messages: both must read the same Call-ID, CSeq,
//! top-Via branch, From/To tags and URIs.

mod support;

use bytes::Bytes;
use proptest::prelude::*;
use sipx_sip::headers::address::{From as XFrom, To as XTo};
use sipx_sip::{CSeq as XCSeq, CallId as XCallId, Limits, Via as XVia};
use switchyard_sip::{Message, Uri};

use support::generate::request;
use support::rfc4475::entries;

/// The routing and dialog keys, as text, from one parser.
#[derive(Debug, PartialEq, Default)]
struct Keys {
    call_id: Option<String>,
    cseq: Option<(u32, String)>,
    branch: Option<String>,
    from_tag: Option<String>,
    to_tag: Option<String>,
    request_uri: Option<String>,
    from_uri: Option<String>,
    to_uri: Option<String>,
}

fn ours(raw: &[u8]) -> Option<Keys> {
    let m = Message::parse_datagram(Bytes::copy_from_slice(raw)).ok()?;
    let from = m.from_header().ok();
    let to = m.to_header().ok();
    Some(Keys {
        call_id: m.call_id().ok().map(str::to_owned),
        cseq: m.cseq().ok().map(|c| (c.seq, c.method.to_string())),
        branch: m.top_via().ok().and_then(|v| v.branch().map(str::to_owned)),
        from_tag: from.and_then(|f| f.tag().map(str::to_owned)),
        to_tag: to.and_then(|t| t.tag().map(str::to_owned)),
        request_uri: m.request_uri_str().map(str::to_owned),
        from_uri: from.map(|f| f.uri_str.to_owned()),
        to_uri: to.map(|t| t.uri_str.to_owned()),
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn theirs(raw: &[u8]) -> Option<Keys> {
    let m = sipx_sip::parse_datagram(Bytes::copy_from_slice(raw), &Limits::datagram()).ok()?;
    let h = m.headers();
    let from = h.typed::<XFrom>().and_then(Result::ok);
    let to = h.typed::<XTo>().and_then(Result::ok);
    Some(Keys {
        call_id: h
            .typed::<XCallId>()
            .and_then(Result::ok)
            .map(|c| text(&c.0)),
        cseq: h
            .typed::<XCSeq>()
            .and_then(Result::ok)
            .map(|c| (c.sequence, text(c.method.as_bytes()))),
        branch: h
            .typed_all::<XVia>()
            .next()
            .and_then(Result::ok)
            .and_then(|v| v.branch().map(text)),
        from_tag: from.as_ref().and_then(|f| f.tag().map(text)),
        to_tag: to.as_ref().and_then(|t| t.tag().map(text)),
        request_uri: m.as_request().map(|r| r.uri.to_string()),
        from_uri: from.map(|f| f.uri.to_string()),
        to_uri: to.map(|t| t.uri.to_string()),
    })
}

/// Compares field by field where both parsers decoded the field. URIs are compared by
/// RFC 3261 §19.1.4 equivalence, since sipx re-renders them.
fn disagreements(a: &Keys, b: &Keys) -> Vec<String> {
    let mut out = Vec::new();
    let mut same = |name: &str, x: &Option<String>, y: &Option<String>| {
        if let (Some(x), Some(y)) = (x, y)
            && x != y
        {
            out.push(format!("{name}: ours {x:?} theirs {y:?}"));
        }
    };
    same("Call-ID", &a.call_id, &b.call_id);
    same("branch", &a.branch, &b.branch);
    same("From tag", &a.from_tag, &b.from_tag);
    same("To tag", &a.to_tag, &b.to_tag);
    if let (Some(x), Some(y)) = (&a.cseq, &b.cseq)
        && x != y
    {
        out.push(format!("CSeq: ours {x:?} theirs {y:?}"));
    }
    for (name, x, y) in [
        ("Request-URI", &a.request_uri, &b.request_uri),
        ("From URI", &a.from_uri, &b.from_uri),
        ("To URI", &a.to_uri, &b.to_uri),
    ] {
        if let (Some(x), Some(y)) = (x, y) {
            let equal = match (Uri::parse(x), Uri::parse(y)) {
                (Ok(ux), Ok(uy)) => ux.equivalent(&uy),
                _ => x == y,
            };
            if !equal {
                out.push(format!("{name}: ours {x:?} theirs {y:?}"));
            }
        }
    }
    out
}

#[test]
fn rfc4475_corpus_reads_the_same_keys_as_sipx() {
    let mut compared = 0;
    let mut failures = Vec::new();
    for e in entries() {
        let (Some(a), Some(b)) = (ours(&e.bytes), theirs(&e.bytes)) else {
            continue;
        };
        compared += 1;
        for d in disagreements(&a, &b) {
            failures.push(format!("{}: {d}", e.file));
        }
    }
    eprintln!("compared {compared} of 49 messages with sipx-sip");
    // Every message both parsers accept at the message level is compared; most of the
    // corpus is (invalid ones are rejected by one or both before any field is read).
    assert!(compared >= 30, "only {compared} messages compared");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_messages_read_the_same_keys_as_sipx(g in request()) {
        let a = ours(g.text.as_bytes()).expect("we parse what we generate");
        let b = theirs(g.text.as_bytes()).expect("sipx parses what we generate");
        let d = disagreements(&a, &b);
        prop_assert!(d.is_empty(), "{}\n{}", d.join("\n"), g.text);
        // Both read every key (none silently missing on either side).
        prop_assert!(a.call_id.is_some() && b.call_id.is_some());
        prop_assert!(a.branch.is_some() && b.branch.is_some());
        prop_assert!(a.from_tag.is_some() && b.from_tag.is_some());
    }
}
