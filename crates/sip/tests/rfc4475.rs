//! RFC 4475 torture messages: each file gets the reaction its MANIFEST.tsv names.
//! The same corpus is sent over UDP to a running `switchyard serve` by the binary's tests.

use std::path::PathBuf;

use bytes::Bytes;
use switchyard_sip::inspect::{Capabilities, Inbound, inspect_datagram};

/// Finds `shared/testdata/rfc4475` beside the repository (or `SWITCHYARD_TESTDATA`).
fn corpus_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SWITCHYARD_TESTDATA") {
        return PathBuf::from(dir).join("rfc4475");
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let candidate = dir.join("shared/testdata/rfc4475");
        if candidate.join("MANIFEST.tsv").exists() {
            return candidate;
        }
        assert!(
            dir.pop(),
            "shared/testdata/rfc4475 not found above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

#[derive(Debug, PartialEq)]
enum Expect {
    Request,
    Response,
    Drop,
    Status(Vec<u16>),
    StatusOrRequest(Vec<u16>),
}

/// Reads the expected reaction from the manifest's words.
fn expectation(file: &str, what: &str) -> Expect {
    match file {
        // The request is well formed; the 401/403 comes from the registrar, which
        // challenges with a scheme it knows (checked over UDP against `serve`).
        "regaut01.dat" => return Expect::Request,
        // OPTIONS addressed to the element itself is answered, not forwarded (483 is
        // for a proxy that would forward it).
        "zeromf.dat" => return Expect::Request,
        _ => {}
    }
    if what.starts_with("drop response") {
        return Expect::Drop;
    }
    if what.starts_with("parse response") {
        return Expect::Response;
    }
    if let Some(rest) = what.strip_prefix("reject (") {
        let inside = &rest[..rest.find(')').expect("closing parenthesis")];
        let codes: Vec<u16> = inside
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| s.len() == 3)
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(!codes.is_empty(), "{file}: no status in {what}");
        return if what.contains(" or ignore") {
            Expect::StatusOrRequest(codes)
        } else {
            Expect::Status(codes)
        };
    }
    assert!(
        what.starts_with("parse") || what.starts_with("accept"),
        "{file}: unknown reaction {what}"
    );
    Expect::Request
}

#[test]
fn every_torture_message_gets_the_manifest_reaction() {
    let dir = corpus_dir();
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, what) = (cols[0], cols[3]);
        let raw = std::fs::read(dir.join(file)).unwrap();
        let expected = expectation(file, what);
        let verdict = inspect_datagram(Bytes::from(raw), &Capabilities::SWITCHYARD);
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
