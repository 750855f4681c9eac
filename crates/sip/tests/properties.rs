//! Properties over generated messages: every field we put in comes back out; serialising
//! a parsed message gives the same message; proxy edits leave untouched rows byte for byte.

mod support;

use bytes::Bytes;
use proptest::prelude::*;
use switchyard_sip::build::{Editor, RequestBuilder};
use switchyard_sip::{HeaderName, Message, Method, Uri};

use support::generate::{Generated, request};

fn parse(text: &str) -> Message {
    Message::parse_datagram(Bytes::copy_from_slice(text.as_bytes()))
        .expect("generated messages parse")
}

fn check_fields(m: &Message, g: &Generated) -> Result<(), TestCaseError> {
    prop_assert_eq!(m.method().unwrap().as_str(), g.method.as_str());
    prop_assert_eq!(m.request_uri_str().unwrap(), g.request_uri.as_str());
    prop_assert_eq!(m.call_id().unwrap(), g.call_id.as_str());
    let cseq = m.cseq().unwrap();
    prop_assert_eq!(cseq.seq, g.cseq);
    prop_assert_eq!(cseq.method.as_str(), g.method.as_str());
    let vias: Vec<_> = m.vias().map(|v| v.unwrap()).collect();
    prop_assert_eq!(vias.len(), g.vias.len());
    for (v, (host, port, branch)) in vias.iter().zip(&g.vias) {
        prop_assert_eq!(v.host, host.as_str());
        prop_assert_eq!(v.port, Some(*port));
        prop_assert_eq!(v.branch(), Some(branch.as_str()));
    }
    let from = m.from_header().unwrap();
    prop_assert_eq!(from.tag(), Some(g.from_tag.as_str()));
    prop_assert_eq!(from.uri_str, g.from_uri.as_str());
    prop_assert_eq!(from.display_raw, g.display.as_deref());
    let to = m.to_header().unwrap();
    prop_assert_eq!(to.tag(), g.to_tag.as_deref());
    prop_assert!(
        to.uri()
            .unwrap()
            .equivalent(&Uri::parse(&g.to_uri).unwrap())
    );
    prop_assert_eq!(m.max_forwards().unwrap(), Some(g.max_forwards));
    prop_assert_eq!(m.body(), g.body.as_bytes());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_requests_parse_to_what_was_written(g in request()) {
        check_fields(&parse(&g.text), &g)?;
    }

    /// parse(serialise(m)) == m, with serialise both as the identity re-write and as a
    /// rebuild from the parsed rows.
    #[test]
    fn parse_of_serialise_is_identity(g in request()) {
        let m = parse(&g.text);
        let rewritten = Editor::new(&m).write();
        prop_assert_eq!(&rewritten[..], g.text.as_bytes());
        let mut b = RequestBuilder::new(m.method().unwrap().clone(), m.request_uri_str().unwrap());
        for (name, value) in m.rows() {
            if HeaderName::from_bytes(name.as_bytes()) != HeaderName::ContentLength
                && HeaderName::from_bytes(name.as_bytes()) != HeaderName::ContentType
            {
                b = b.header(name, value);
            }
        }
        if !m.body().is_empty() {
            b = b.body("text/plain", Bytes::copy_from_slice(m.body()));
        }
        let rebuilt = parse(std::str::from_utf8(&b.build()).unwrap());
        check_fields(&rebuilt, &g)?;
    }

    #[test]
    fn proxy_edits_keep_untouched_rows_byte_for_byte(g in request(), push in any::<bool>(), pop in any::<bool>(), rr in any::<bool>()) {
        let m = parse(&g.text);
        let mut e = Editor::new(&m);
        if push { e = e.push_via("SIP/2.0/TCP edge.example.net:5060;branch=z9hG4bKedge1"); }
        if pop { e = e.pop_via(); }
        if rr { e = e.push_record_route("<sip:edge.example.net;lr>"); }
        let decremented = g.max_forwards > 0;
        if let Some(d) = e.decrement_max_forwards() { e = d; } else { prop_assert!(!decremented); return Ok(()); }
        let out = e.write();
        let text = std::str::from_utf8(&out).unwrap();
        let edited = parse(text);
        // Rows we did not touch: every line of From, To, Call-ID, CSeq and the extension row.
        let head = &g.text[..g.text.find("\r\n\r\n").unwrap()];
        for line in head.split("\r\n").skip(1) {
            let name = line.split(':').next().unwrap_or("").trim();
            let hn = HeaderName::from_bytes(name.as_bytes());
            if matches!(hn, HeaderName::CallId | HeaderName::CSeq) || name == "X-Untouched" {
                prop_assert!(text.contains(&format!("{line}\r\n")), "row {:?} changed", line);
            }
        }
        prop_assert_eq!(edited.max_forwards().unwrap(), Some(g.max_forwards - 1));
        let expect_vias = g.vias.len() + usize::from(push) - usize::from(pop);
        prop_assert_eq!(edited.vias().count(), expect_vias);
        if push {
            // Edits apply to the received message: the pushed Via stays on top even when
            // the received top Via is popped.
            prop_assert_eq!(edited.top_via().unwrap().host, "edge.example.net");
        } else if pop && g.vias.len() > 1 {
            prop_assert_eq!(edited.top_via().unwrap().host, g.vias[1].0.as_str());
        }
        prop_assert_eq!(edited.body(), g.body.as_bytes());
        prop_assert_eq!(edited.method(), Some(&Method::from_token(&g.method)));
    }
}
