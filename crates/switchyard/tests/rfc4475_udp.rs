//! All 49 RFC 4475 messages sent over UDP to a running `switchyard serve`: each gets the
//! reaction MANIFEST.tsv names. The top Via sent-by of each message is rewritten to this
//! test's own loopback socket (nothing else changes), so every answer stays on loopback.

mod common;

#[path = "../../sip/tests/support/rfc4475.rs"]
mod rfc4475;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use regex::bytes::Regex;
use switchyard_sip::Message;
use tokio::net::UdpSocket;

use common::Server;
use rfc4475::{Expect, entries, expectation};

/// Rewrites the sent-by of the first Via value (the top Via) to `to`.
fn rewrite_top_via(msg: &[u8], to: SocketAddr) -> Vec<u8> {
    let head_end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(msg.len());
    // A Via row starts a line: `Via` or `v`, optional white space, then ':'.
    let row = Regex::new(r"(?mi)^(?:via|v)[ \t]*:").unwrap();
    let Some(start) = row.find(&msg[..head_end]) else {
        return msg.to_vec();
    };
    let sent_by = Regex::new(r"(?s)\A([ \t\r\n]*SIP[ \t\r\n]*/[ \t\r\n]*[0-9.]+[ \t\r\n]*/[ \t\r\n]*[A-Za-z]+[ \t\r\n]+)[^;,\s]+").unwrap();
    let value = &msg[start.end()..];
    let caps = sent_by.captures(value).expect("top Via has a sent-by");
    let mut out = msg[..start.end()].to_vec();
    out.extend_from_slice(caps.get(1).unwrap().as_bytes());
    out.extend_from_slice(to.to_string().as_bytes());
    out.extend_from_slice(&value[caps.get(0).unwrap().end()..]);
    out
}

async fn answers(sock: &UdpSocket, wait: Duration) -> Vec<Message> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut wait = wait;
    while let Ok(Ok((n, _))) = tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        out.push(
            Message::parse_datagram(Bytes::copy_from_slice(&buf[..n])).expect("our answers parse"),
        );
        // After the first answer, only look briefly for an unexpected second one.
        wait = Duration::from_millis(100);
    }
    out
}

#[tokio::test]
async fn every_torture_message_gets_the_manifest_reaction_over_udp() {
    let server = Server::start(&[]);
    let target = server.addr("UDP");
    let mut failures = Vec::new();
    let corpus = entries();
    assert_eq!(corpus.len(), 49);
    for entry in corpus {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = sock.local_addr().unwrap();
        let msg = rewrite_top_via(&entry.bytes, me);
        sock.send_to(&msg, target).await.unwrap();
        let expected = expectation(&entry.file, &entry.what);
        let wait = match expected {
            Expect::Drop | Expect::Response => Duration::from_millis(300),
            _ => Duration::from_secs(2),
        };
        let got = answers(&sock, wait).await;
        let statuses: Vec<u16> = got.iter().filter_map(|m| m.status()).collect();
        // What the edge answers a request that passed every check: 200 (OPTIONS), 401
        // (REGISTER challenge), 404 (no tenant has the corpus' domains, atlanta.com and
        // the like), 416 (a REGISTER for a non-SIP address of record), 405/501 (methods
        // it does not handle), 481 (an in-dialog request the core has no dialog for,
        // e.g. `wsinv`'s To tag).
        const ELEMENT_ANSWERS: [u16; 7] = [200, 401, 404, 405, 416, 481, 501];
        let ok = match (&expected, statuses.as_slice()) {
            (Expect::Drop | Expect::Response, []) => true,
            // Accepted requests get the element's answer, never a rejection.
            (Expect::Request, [s]) => match entry.file.as_str() {
                // Credentials for a domain no tenant has: refused as an unknown domain.
                "regaut01.dat" => [401, 403, 404].contains(s),
                "zeromf.dat" => *s == 200,
                _ => ELEMENT_ANSWERS.contains(s),
            },
            (Expect::Status(codes), [s]) => codes.contains(s),
            (Expect::StatusOrRequest(codes), [s]) => {
                codes.contains(s) || ELEMENT_ANSWERS.contains(s)
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{}: expected {expected:?}, got {statuses:?}",
                entry.file
            ));
        }
        if let Some(answer) = got.first() {
            // The answer copies the Call-ID of the (first) message it answers.
            let sent = Message::parse_datagram(Bytes::from(msg.clone())).ok();
            if let Some(sent) = sent.and_then(|m| m.call_id().ok().map(str::to_owned))
                && answer.call_id().ok() != Some(sent.as_str())
            {
                failures.push(format!("{}: answer has another Call-ID", entry.file));
            }
        }
    }
    // The server survived all of it.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    sock.send_to(common::options("UDP", me, "alive").as_bytes(), target)
        .await
        .unwrap();
    let alive = answers(&sock, Duration::from_secs(2)).await;
    assert_eq!(alive.first().and_then(|m| m.status()), Some(200));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rewriting_changes_only_the_top_via_sent_by() {
    let me: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let folded = b"INVITE sip:a@b SIP/2.0\r\nTo: x\r\nVia  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\nv: SIP/2.0/TCP 192.0.2.9;branch=z9hG4bK2\r\n\r\n";
    let out = String::from_utf8(rewrite_top_via(folded, me)).unwrap();
    assert!(
        out.contains("    127.0.0.1:40000;branch=390skdjuw"),
        "{out}"
    );
    assert!(out.contains("v: SIP/2.0/TCP 192.0.2.9;branch=z9hG4bK2"));
    assert_eq!(
        out.len(),
        folded.len() - "192.0.2.2".len() + "127.0.0.1:40000".len()
    );
}
