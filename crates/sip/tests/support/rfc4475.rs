//! The RFC 4475 corpus in the repository's `testdata/rfc4475` and the reaction its
//! manifest names. Shared by the parser tests here and the over-UDP tests of the
//! `switchyard` binary.
#![allow(dead_code)]

use std::path::PathBuf;

/// The corpus directory: `testdata/rfc4475` at the top of this repository (or under
/// `SWITCHYARD_TESTDATA`). Fails loudly: the corpus is part of the test suite, never
/// skipped.
pub fn corpus_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SWITCHYARD_TESTDATA") {
        return PathBuf::from(dir).join("rfc4475");
    }
    // Both users of this file live two levels below the workspace root (crates/NAME).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/rfc4475");
    assert!(
        dir.join("MANIFEST.tsv").exists(),
        "the RFC 4475 corpus is missing: {} has no MANIFEST.tsv",
        dir.display()
    );
    dir
}

/// One manifest row with the file's bytes.
#[derive(Debug)]
pub struct Entry {
    pub file: String,
    pub what: String,
    pub bytes: Vec<u8>,
}

pub fn entries() -> Vec<Entry> {
    let dir = corpus_dir();
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            Entry {
                file: cols[0].to_owned(),
                what: cols[3].to_owned(),
                bytes: std::fs::read(dir.join(cols[0])).unwrap(),
            }
        })
        .collect()
}

/// What an element does with a message, as the parser-level checks see it.
#[derive(Debug, PartialEq)]
pub enum Expect {
    /// A request that passes every check (what it is answered with is the element's logic).
    Request,
    /// A well-formed response.
    Response,
    /// Dropped without an answer.
    Drop,
    /// Rejected with one of these statuses.
    Status(Vec<u16>),
    /// Rejected with one of these, or accepted.
    StatusOrRequest(Vec<u16>),
}

/// Reads the expected reaction from the manifest's words.
pub fn expectation(file: &str, what: &str) -> Expect {
    match file {
        // Well formed; the 401/403 comes from the registrar, which challenges with a
        // scheme it knows (checked over UDP against `serve`).
        "regaut01.dat" => return Expect::Request,
        // OPTIONS addressed to the element itself is answered, not forwarded (483 is for
        // a proxy that would forward it).
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
