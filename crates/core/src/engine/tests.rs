//! The engine on a virtual clock: inputs in, outputs out, no sockets and no sleeps.

use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_sip::Message;

use super::call::SessionTimer;
use super::setup::{rank, session_timer_of};

fn invite(extra: &str) -> Message {
    let text = format!(
        "INVITE sip:1002@d.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:1001@d.example>;tag=a\r\nTo: <sip:1002@d.example>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    Message::parse_datagram(Bytes::from(text)).unwrap()
}

#[test]
fn session_intervals_below_min_se_are_refused_and_the_refresher_is_honoured() {
    let now = Instant::now();
    assert!(session_timer_of(&invite(""), now).unwrap().is_none());
    assert!(session_timer_of(&invite("Session-Expires: 89\r\n"), now).is_err());
    assert!(session_timer_of(&invite("Session-Expires: soon\r\n"), now).is_err());
    let t = session_timer_of(
        &invite("Session-Expires: 1800\r\nSupported: timer\r\n"),
        now,
    )
    .unwrap()
    .unwrap();
    assert_eq!(t.header(), "1800;refresher=uac");
    assert!(t.caller_supports);
    let uas = session_timer_of(&invite("Session-Expires: 90;refresher=uas\r\n"), now)
        .unwrap()
        .unwrap();
    assert!(!uas.caller_refreshes);
    assert_eq!(uas.header(), "90;refresher=uas");
    let long = session_timer_of(&invite("Session-Expires: 86400\r\n"), now)
        .unwrap()
        .unwrap();
    assert_eq!(long.interval, 7200, "capped at two hours");
}

#[test]
fn the_non_refresher_gives_up_before_the_interval_ends() {
    let now = Instant::now();
    let t = |interval| SessionTimer {
        interval,
        caller_refreshes: true,
        caller_supports: true,
        deadline: now,
    };
    // RFC 4028 §10: interval - min(32, interval / 3).
    assert_eq!(t(90).expiry_from(now) - now, Duration::from_secs(60));
    assert_eq!(t(1800).expiry_from(now) - now, Duration::from_secs(1768));
}

#[test]
fn the_worst_failure_is_passed_on() {
    assert!(rank(486) > rank(408));
    assert!(rank(603) > rank(486));
    assert!(rank(408) > rank(500));
}
