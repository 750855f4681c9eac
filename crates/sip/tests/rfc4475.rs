//! RFC 4475 torture messages: each file gets the reaction its MANIFEST.tsv names.
//! The same corpus is sent over UDP to a running `switchyard serve` by the binary's tests.

use bytes::Bytes;
use switchyard_sip::inspect::{Capabilities, Inbound, inspect_datagram};

mod support;
use support::rfc4475::{Expect, corpus_dir, entries, expectation};

#[test]
fn every_torture_message_gets_the_manifest_reaction() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in entries() {
        let file = entry.file.as_str();
        let expected = expectation(file, &entry.what);
        let verdict = inspect_datagram(Bytes::from(entry.bytes), &Capabilities::SWITCHYARD);
        let ok = match (&expected, &verdict) {
            (Expect::Request, Inbound::Request(_)) => true,
            (Expect::Response, Inbound::Response(_)) => true,
            (Expect::Drop, Inbound::Drop(_)) => true,
            (Expect::Status(codes), Inbound::Reject { rejection, .. }) => {
                codes.contains(&rejection.status)
            }
            (Expect::StatusOrRequest(_), Inbound::Request(_)) => true,
            (Expect::StatusOrRequest(codes), Inbound::Reject { rejection, .. }) => {
                codes.contains(&rejection.status)
            }
            _ => false,
        };
        if !ok {
            failures.push(format!("{file}: expected {expected:?}, got {verdict:?}"));
        }
        checked += 1;
    }
    assert_eq!(checked, 49, "the manifest lists 49 messages");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rejections_name_the_defect() {
    let dir = corpus_dir();
    let reason = |file: &str| -> String {
        let raw = std::fs::read(dir.join(file)).unwrap();
        match inspect_datagram(Bytes::from(raw), &Capabilities::SWITCHYARD) {
            Inbound::Reject { rejection, .. } => rejection.reason,
            other => panic!("{file}: {other:?}"),
        }
    };
    assert_eq!(
        reason("clerr.dat"),
        "Content-Length 9999 exceeds body of 154 bytes"
    );
    assert!(reason("ncl.dat").contains("-999"));
    assert!(reason("scalar02.dat").contains("CSeq"));
    assert!(reason("mcl01.dat").contains("multiple Content-Length"));
    assert!(reason("multi01.dat").contains("multiple"));
    assert!(reason("quotbal.dat").contains("unterminated quoted string"));
    assert!(reason("mismatch01.dat").contains("does not match"));
    assert!(reason("escruri.dat").contains("must not contain headers"));
    assert!(reason("lwsstart.dat").contains("Request-Line"));
    assert!(reason("badinv01.dat").contains("Via"));
}

#[test]
fn valid_messages_decode_their_dialog_headers() {
    let dir = corpus_dir();
    let parse = |file: &str| {
        let raw = std::fs::read(dir.join(file)).unwrap();
        switchyard_sip::Message::parse_datagram(Bytes::from(raw)).unwrap()
    };
    let m = parse("wsinv.dat");
    assert_eq!(m.max_forwards().unwrap(), Some(68));
    assert_eq!(m.cseq().unwrap().seq, 9);
    assert_eq!(m.vias().count(), 3);
    assert_eq!(m.to_header().unwrap().tag(), Some("1918181833n"));
    assert_eq!(
        m.from_header().unwrap().display_name().unwrap(),
        "J Rosenberg \\\""
    );
    assert_eq!(m.body().len(), 150);
    let m = parse("dblreq.dat");
    assert_eq!(m.method().unwrap().as_str(), "REGISTER");
    assert!(m.body().is_empty());
    let m = parse("esc02.dat");
    assert_eq!(m.method().unwrap().as_str(), "RE%47IST%45R");
    assert_eq!(m.contacts().count(), 2, "C%6Fntact is not Contact");
    let m = parse("longreq.dat");
    assert!(m.vias().count() > 10);
    let m = parse("transports.dat");
    let transports: Vec<_> = m.vias().map(|v| v.unwrap().transport).collect();
    assert_eq!(transports, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
}
