//! Datagram parse, every typed decoder, the element checks, and the round trip:
//! parse, write (no edits), parse again, same message; proxy edits never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard_sip::build::{Editor, ResponseBuilder, salvage_response_rows};
use switchyard_sip::inspect::{Capabilities, inspect_datagram};
use switchyard_sip::{HeaderName, Message};

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);
    let _ = inspect_datagram(raw.clone(), &Capabilities::SWITCHYARD);
    let _ = salvage_response_rows(data);
    let Ok(m) = Message::parse_datagram(raw) else {
        return;
    };
    let _ = m.routing_keys();
    let _ = m.request_uri();
    for via in m.vias() {
        let _ = via.map(|v| (v.branch(), v.rport(), v.sent_by()));
    }
    let _ = m
        .from_header()
        .map(|f| (f.tag(), f.display_name(), f.uri()));
    let _ = m.to_header();
    let _ = m.cseq();
    let _ = m.max_forwards();
    let _ = m.expires();
    for c in m.contacts() {
        let _ = c.map(|c| c.expires());
    }
    for v in m.values(HeaderName::Allow) {
        let _ = v;
    }
    // Round trip: an editor with no edits reproduces the message byte for byte.
    let same = Editor::new(&m).write();
    assert_eq!(&same[..], m.as_bytes());
    let again = Message::parse_datagram(same).expect("a written message parses again");
    assert_eq!(again.row_count(), m.row_count());
    assert_eq!(again.body(), m.body());
    if m.is_request() {
        let _ = Editor::new(&m)
            .push_via("SIP/2.0/UDP fuzz.invalid;branch=z9hG4bKfuzz")
            .pop_route()
            .push_record_route("<sip:fuzz.invalid;lr>")
            .decrement_max_forwards()
            .map(|e| e.write());
        let _ = ResponseBuilder::for_request(&m, 400, "Bad", "t")
            .stamp_top_via("127.0.0.1", 5060)
            .build();
    }
});
