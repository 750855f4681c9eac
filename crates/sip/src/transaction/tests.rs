//! Every timer path on a fake clock: loss, retransmission, transport error; a property
//! test that every transaction terminates; a client/server pair over a lossy link.

// The fake clock needs an origin; every later instant is that origin plus an offset.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

type Layer = TransactionLayer<u8>;

fn msg(s: &str) -> Message {
    Message::parse_datagram(Bytes::copy_from_slice(s.as_bytes())).unwrap()
}

fn request(method: &str, branch: &str) -> Message {
    msg(&format!(
        "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP pc.example.com:5060;branch={branch}\r\nMax-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:alice@example.com>;tag=a1\r\nCall-ID: call-{branch}\r\nCSeq: 7 {method}\r\nRoute: <sip:proxy.example.com;lr>\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn response_to(req: &Message, status: u16) -> Message {
    let bytes = ResponseBuilder::for_request(req, status, "X", "b2").build();
    msg(std::str::from_utf8(&bytes).unwrap())
}

#[derive(Default, Debug)]
struct Drained {
    sent: Vec<Bytes>,
    events: Vec<Event<u8>>,
}

fn drain(layer: &mut Layer) -> Drained {
    let mut d = Drained::default();
    while let Some(o) = layer.poll_output() {
        match o {
            Output::Transmit { bytes, .. } => d.sent.push(bytes),
            Output::Event(e) => d.events.push(e),
        }
    }
    d
}

/// Advances the clock to each deadline in turn up to `until`, recording when something
/// was transmitted.
fn run_until(
    layer: &mut Layer,
    start: Instant,
    until: Duration,
) -> (Vec<Duration>, Vec<Event<u8>>) {
    let mut sends = Vec::new();
    let mut events = Vec::new();
    while let Some(at) = layer.poll_timeout() {
        if at > start + until {
            break;
        }
        layer.handle_timeout(at);
        let d = drain(layer);
        sends.extend(d.sent.iter().map(|_| at - start));
        events.extend(d.events);
    }
    (sends, events)
}

fn ms(v: &[u64]) -> Vec<Duration> {
    v.iter().map(|m| Duration::from_millis(*m)).collect()
}

#[test]
fn client_invite_timer_a_doubles_until_timer_b() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let tx = l
        .send_request(request("INVITE", "z9hG4bK1"), 1, false, t0)
        .unwrap();
    assert_eq!(drain(&mut l).sent.len(), 1);
    let (sends, events) = run_until(&mut l, t0, Duration::from_secs(40));
    assert_eq!(sends, ms(&[500, 1500, 3500, 7500, 15500, 31500]));
    assert!(matches!(events[0], Event::Timeout { tx: t } if t == tx));
    assert!(matches!(events[1], Event::Terminated { tx: t } if t == tx));
    assert!(l.is_empty());
}

#[test]
fn client_invite_provisional_stops_timer_a_but_not_b() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK2");
    let tx = l.send_request(req.clone(), 1, false, t0).unwrap();
    drain(&mut l);
    l.receive(
        response_to(&req, 180),
        1,
        false,
        t0 + Duration::from_millis(100),
    );
    assert!(matches!(drain(&mut l).events[..], [Event::Response { .. }]));
    assert_eq!(l.state(tx), Some(State::Proceeding));
    let (sends, events) = run_until(&mut l, t0, Duration::from_secs(40));
    assert!(sends.is_empty(), "no retransmission after a provisional");
    assert!(
        matches!(events[0], Event::Timeout { .. }),
        "timer B still bounds the wait"
    );
}

#[test]
fn client_invite_non_2xx_is_acked_and_retransmissions_reacked() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK3");
    let tx = l.send_request(req.clone(), 1, false, t0).unwrap();
    drain(&mut l);
    let busy = response_to(&req, 486);
    l.receive(busy.clone(), 1, false, t0);
    let d = drain(&mut l);
    assert!(matches!(d.events[..], [Event::Response { .. }]));
    let ack = msg(std::str::from_utf8(&d.sent[0]).unwrap());
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.request_uri_str(), Some("sip:bob@example.com"));
    assert_eq!(
        ack.cseq().unwrap(),
        crate::headers::CSeq {
            seq: 7,
            method: Method::Ack
        }
    );
    assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bK3"));
    assert_eq!(ack.to_header().unwrap().tag(), Some("b2"));
    assert_eq!(
        ack.header(HeaderName::Route),
        Some("<sip:proxy.example.com;lr>")
    );
    l.receive(busy, 1, false, t0 + Duration::from_secs(1));
    let d = drain(&mut l);
    assert_eq!(d.sent.len(), 1, "the ACK is resent");
    assert!(d.events.is_empty(), "the TU is not told twice");
    assert_eq!(l.state(tx), Some(State::Completed));
    let (_, events) = run_until(&mut l, t0, Duration::from_secs(33));
    assert!(
        matches!(events[..], [Event::Terminated { .. }]),
        "timer D ends it at 32 s"
    );
}

#[test]
fn client_invite_2xx_goes_to_accepted_and_retransmissions_reach_the_tu() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK4");
    let tx = l.send_request(req.clone(), 1, false, t0).unwrap();
    drain(&mut l);
    let ok = response_to(&req, 200);
    l.receive(ok.clone(), 1, false, t0);
    l.receive(ok, 1, false, t0 + Duration::from_secs(1));
    let d = drain(&mut l);
    assert_eq!(d.events.len(), 2, "RFC 6026: each 2xx goes to the TU");
    assert!(d.sent.is_empty(), "the transaction does not ACK a 2xx");
    assert_eq!(l.state(tx), Some(State::Accepted));
    let (_, events) = run_until(&mut l, t0, Duration::from_secs(33));
    assert!(matches!(events[..], [Event::Terminated { .. }]), "timer M");
}

#[test]
fn reliable_transports_do_not_retransmit_and_do_not_wait() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK5");
    l.send_request(req.clone(), 1, true, t0).unwrap();
    drain(&mut l);
    l.receive(response_to(&req, 500), 1, true, t0);
    drain(&mut l);
    l.handle_timeout(t0);
    assert!(l.is_empty(), "timer D is zero over a reliable transport");

    let req = request("OPTIONS", "z9hG4bK6");
    l.send_request(req.clone(), 1, true, t0).unwrap();
    drain(&mut l);
    let (sends, events) = run_until(&mut l, t0, Duration::from_secs(40));
    assert!(sends.is_empty(), "no timer E over a reliable transport");
    assert!(
        matches!(events[0], Event::Timeout { .. }),
        "timer F still applies"
    );
}

#[test]
fn client_non_invite_timer_e_caps_at_t2_and_uses_t2_in_proceeding() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    l.send_request(request("OPTIONS", "z9hG4bK7"), 1, false, t0)
        .unwrap();
    drain(&mut l);
    let (sends, events) = run_until(&mut l, t0, Duration::from_secs(40));
    assert_eq!(
        sends,
        ms(&[
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ])
    );
    assert!(matches!(
        events[..],
        [Event::Timeout { .. }, Event::Terminated { .. }]
    ));

    let req = request("REGISTER", "z9hG4bK8");
    l.send_request(req.clone(), 1, false, t0).unwrap();
    drain(&mut l);
    l.handle_timeout(t0 + Duration::from_millis(500));
    drain(&mut l);
    l.receive(
        response_to(&req, 100),
        1,
        false,
        t0 + Duration::from_millis(600),
    );
    drain(&mut l);
    // Timer E was re-armed at 1500 ms (interval 1 s); once it fires in Proceeding the
    // interval becomes T2.
    let (sends, _) = run_until(&mut l, t0, Duration::from_millis(9600));
    assert_eq!(sends, ms(&[1500, 5500, 9500]));
    l.receive(
        response_to(&req, 200),
        1,
        false,
        t0 + Duration::from_secs(10),
    );
    assert!(matches!(drain(&mut l).events[..], [Event::Response { .. }]));
    let (_, events) = run_until(&mut l, t0, Duration::from_secs(16));
    assert!(
        matches!(events[..], [Event::Terminated { .. }]),
        "timer K = T4"
    );
}

#[test]
fn server_invite_sends_trying_after_200ms_retransmits_final_and_waits_for_ack() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK9");
    l.receive(req.clone(), 2, false, t0);
    let Event::Request { tx, .. } = drain(&mut l).events.remove(0) else {
        panic!()
    };
    l.handle_timeout(t0 + Duration::from_millis(200));
    let trying = drain(&mut l).sent;
    assert_eq!(
        msg(std::str::from_utf8(&trying[0]).unwrap()).status(),
        Some(100)
    );
    l.receive(req.clone(), 2, false, t0 + Duration::from_millis(500));
    assert_eq!(
        drain(&mut l).sent.len(),
        1,
        "retransmitted INVITE gets the 100 again"
    );

    let busy = ResponseBuilder::for_request(&req, 486, "Busy Here", "b2").build();
    l.respond(tx, 486, busy, t0 + Duration::from_secs(1))
        .unwrap();
    assert_eq!(drain(&mut l).sent.len(), 1);
    assert_eq!(
        l.respond(tx, 200, Bytes::new(), t0),
        Err(TxError::AlreadyFinal(tx))
    );
    let (sends, events) = run_until(
        &mut l,
        t0 + Duration::from_secs(1),
        Duration::from_millis(7600),
    );
    assert_eq!(sends, ms(&[500, 1500, 3500, 7500]), "timer G doubles to T2");
    assert!(events.is_empty());
    let ack = msg(&std::str::from_utf8(&req.to_bytes())
        .unwrap()
        .replace("INVITE", "ACK"));
    l.receive(ack.clone(), 2, false, t0 + Duration::from_secs(9));
    assert_eq!(l.state(tx), Some(State::Confirmed));
    l.receive(ack, 2, false, t0 + Duration::from_secs(10));
    let d = drain(&mut l);
    assert!(d.sent.is_empty() && d.events.is_empty(), "ACKs absorbed");
    let (_, events) = run_until(&mut l, t0 + Duration::from_secs(9), Duration::from_secs(6));
    assert!(
        matches!(events[..], [Event::Terminated { .. }]),
        "timer I = T4"
    );
}

#[test]
fn server_invite_without_ack_times_out_on_timer_h() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK10");
    l.receive(req.clone(), 2, false, t0);
    let Event::Request { tx, .. } = drain(&mut l).events.remove(0) else {
        panic!()
    };
    l.respond(
        tx,
        404,
        ResponseBuilder::for_request(&req, 404, "Not Found", "x").build(),
        t0,
    )
    .unwrap();
    drain(&mut l);
    let (_, events) = run_until(&mut l, t0, Duration::from_secs(33));
    assert!(matches!(
        events[..],
        [Event::Timeout { .. }, Event::Terminated { .. }]
    ));
}

#[test]
fn a_final_failure_sent_once_is_never_retransmitted_but_answers_each_retransmission() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK11");
    l.receive(req.clone(), 2, false, t0);
    let Event::Request { tx, .. } = drain(&mut l).events.remove(0) else {
        panic!()
    };
    let answer = ResponseBuilder::for_request(&req, 481, "Call/Transaction Does Not Exist", "x");
    l.respond_once(tx, 481, answer.build(), t0).unwrap();
    assert_eq!(drain(&mut l).sent.len(), 1);
    // No timer G: nothing more on the clock, whoever the source really was.
    let (sends, _) = run_until(&mut l, t0, Duration::from_secs(10));
    assert!(sends.is_empty(), "{sends:?}");
    // The sender's own retransmission gets the answer again, one for one.
    l.receive(req.clone(), 2, false, t0 + Duration::from_secs(11));
    assert_eq!(drain(&mut l).sent.len(), 1);
    let (sends, events) = run_until(&mut l, t0, Duration::from_secs(33));
    assert!(sends.is_empty(), "{sends:?}");
    assert!(matches!(
        events[..],
        [Event::Timeout { .. }, Event::Terminated { .. }]
    ));
}

#[test]
fn server_invite_2xx_is_accepted_absorbs_retransmissions_and_passes_acks_up() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("INVITE", "z9hG4bK11");
    l.receive(req.clone(), 2, false, t0);
    let Event::Request { tx, .. } = drain(&mut l).events.remove(0) else {
        panic!()
    };
    let ok = ResponseBuilder::for_request(&req, 200, "OK", "b2").build();
    l.respond(tx, 200, ok.clone(), t0).unwrap();
    assert_eq!(drain(&mut l).sent.len(), 1);
    assert_eq!(l.state(tx), Some(State::Accepted));
    l.receive(req.clone(), 2, false, t0 + Duration::from_millis(500));
    assert!(
        drain(&mut l).sent.is_empty(),
        "INVITE retransmission absorbed in Accepted"
    );
    l.respond(tx, 200, ok, t0 + Duration::from_millis(500))
        .unwrap();
    assert_eq!(
        drain(&mut l).sent.len(),
        1,
        "TU's 2xx retransmission passes through"
    );
    let ack = msg(&std::str::from_utf8(&req.to_bytes())
        .unwrap()
        .replace("INVITE", "ACK")
        .replace("z9hG4bK11", "z9hG4bKack"));
    l.receive(ack, 2, false, t0 + Duration::from_secs(1));
    assert!(matches!(drain(&mut l).events[..], [Event::Ack { .. }]));
    let (_, events) = run_until(&mut l, t0, Duration::from_secs(33));
    assert!(matches!(events[..], [Event::Terminated { .. }]), "timer L");
}

#[test]
fn server_non_invite_absorbs_then_resends_and_waits_timer_j() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("BYE", "z9hG4bK12");
    l.receive(req.clone(), 2, false, t0);
    let Event::Request { tx, .. } = drain(&mut l).events.remove(0) else {
        panic!()
    };
    l.receive(req.clone(), 2, false, t0);
    let d = drain(&mut l);
    assert!(d.sent.is_empty() && d.events.is_empty(), "Trying absorbs");
    l.respond(
        tx,
        100,
        ResponseBuilder::for_request(&req, 100, "Trying", "").build(),
        t0,
    )
    .unwrap();
    drain(&mut l);
    l.receive(req.clone(), 2, false, t0);
    assert_eq!(
        drain(&mut l).sent.len(),
        1,
        "Proceeding resends the provisional"
    );
    l.respond(
        tx,
        200,
        ResponseBuilder::for_request(&req, 200, "OK", "b").build(),
        t0,
    )
    .unwrap();
    drain(&mut l);
    l.receive(req, 2, false, t0 + Duration::from_secs(1));
    assert_eq!(drain(&mut l).sent.len(), 1, "Completed resends the final");
    let (_, events) = run_until(&mut l, t0, Duration::from_secs(31));
    assert!(events.is_empty());
    let (_, events) = run_until(&mut l, t0, Duration::from_secs(33));
    assert!(
        matches!(events[..], [Event::Terminated { .. }]),
        "timer J = 64*T1"
    );
}

#[test]
fn cancel_is_its_own_transaction_and_finds_its_invite() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let invite = request("INVITE", "z9hG4bK13");
    l.receive(invite.clone(), 2, false, t0);
    let Event::Request { tx: invite_tx, .. } = drain(&mut l).events.remove(0) else {
        panic!()
    };
    let cancel = msg(&std::str::from_utf8(&invite.to_bytes())
        .unwrap()
        .replace("INVITE", "CANCEL"));
    l.receive(cancel.clone(), 2, false, t0);
    let Event::Request { tx: cancel_tx, .. } = drain(&mut l).events.remove(0) else {
        panic!()
    };
    assert_ne!(cancel_tx, invite_tx);
    assert_eq!(l.invite_for_cancel(&cancel), Some(invite_tx));
    let other = msg(&std::str::from_utf8(&cancel.to_bytes())
        .unwrap()
        .replace("z9hG4bK13", "z9hG4bK99"));
    assert_eq!(l.invite_for_cancel(&other), None);
}

#[test]
fn rfc2543_requests_match_without_a_cookie() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let text = "INVITE sip:UserB@example.com SIP/2.0\r\nVia: SIP/2.0/UDP iftgw.example.com\r\nFrom: <sip:+13035551111@ift.client.example.net;user=phone>;tag=f\r\nTo: sip:+16505552222@ss1.example.net;user=phone\r\nCall-ID: inv2543.1717@ift.client.example.com\r\nCSeq: 56 INVITE\r\nContent-Length: 0\r\n\r\n";
    let invite = msg(text);
    l.receive(invite.clone(), 2, false, t0);
    let Event::Request { tx, .. } = drain(&mut l).events.remove(0) else {
        panic!()
    };
    l.respond(
        tx,
        486,
        ResponseBuilder::for_request(&invite, 486, "Busy", "t").build(),
        t0,
    )
    .unwrap();
    drain(&mut l);
    l.receive(invite, 2, false, t0);
    assert_eq!(
        drain(&mut l).sent.len(),
        1,
        "the retransmission matched and got the final again"
    );
    let ack = msg(&text
        .replace("INVITE sip", "ACK sip")
        .replace("56 INVITE", "56 ACK"));
    l.receive(ack, 2, false, t0);
    assert_eq!(l.state(tx), Some(State::Confirmed));
}

#[test]
fn transport_errors_end_the_transaction_and_stray_responses_go_up() {
    let mut l = Layer::new(TimerConfig::default());
    let t0 = Instant::now();
    let req = request("OPTIONS", "z9hG4bK14");
    let tx = l.send_request(req.clone(), 1, false, t0).unwrap();
    drain(&mut l);
    l.transport_error(tx);
    assert!(matches!(
        drain(&mut l).events[..],
        [Event::TransportError { .. }, Event::Terminated { .. }]
    ));
    assert!(l.is_empty() && l.poll_timeout().is_none());
    l.receive(response_to(&req, 200), 1, false, t0);
    assert!(matches!(
        drain(&mut l).events[..],
        [Event::StrayResponse { .. }]
    ));
    assert_eq!(
        l.send_request(request("ACK", "z9hG4bK15"), 1, false, t0)
            .unwrap_err(),
        TxError::Unkeyable("ACK is not a transaction".into())
    );
}

#[derive(Debug, Clone)]
enum Op {
    ClientSend {
        invite: bool,
        reliable: bool,
        branch: u8,
    },
    ServerReceive {
        invite: bool,
        reliable: bool,
        branch: u8,
    },
    AnswerServer {
        pick: u8,
        status: u16,
    },
    ResponseToClient {
        pick: u8,
        status: u16,
    },
    AckServer {
        pick: u8,
    },
    TransportError {
        pick: u8,
    },
    Advance {
        ms: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let status = prop_oneof![
        Just(100u16),
        Just(180),
        Just(200),
        Just(302),
        Just(486),
        Just(503)
    ];
    prop_oneof![
        (any::<bool>(), any::<bool>(), 0u8..6).prop_map(|(invite, reliable, branch)| {
            Op::ClientSend {
                invite,
                reliable,
                branch,
            }
        }),
        (any::<bool>(), any::<bool>(), 0u8..6).prop_map(|(invite, reliable, branch)| {
            Op::ServerReceive {
                invite,
                reliable,
                branch,
            }
        }),
        (any::<u8>(), status.clone()).prop_map(|(pick, status)| Op::AnswerServer { pick, status }),
        (any::<u8>(), status).prop_map(|(pick, status)| Op::ResponseToClient { pick, status }),
        any::<u8>().prop_map(|pick| Op::AckServer { pick }),
        any::<u8>().prop_map(|pick| Op::TransportError { pick }),
        (0u32..40_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

proptest! {
    /// Whatever happens, every transaction reaches Terminated (exactly once) and the table
    /// and timer wheel end empty once time runs on.
    #[test]
    fn every_transaction_terminates(ops in proptest::collection::vec(op(), 1..60)) {
        let mut l = Layer::new(TimerConfig::default());
        let t0 = Instant::now();
        let mut now = t0;
        let mut created = std::collections::BTreeSet::new();
        let mut terminated = Vec::new();
        let mut client_reqs: Vec<(TxId, Message)> = Vec::new();
        let mut server_reqs: Vec<(TxId, Message)> = Vec::new();
        let collect = |l: &mut Layer, created: &mut std::collections::BTreeSet<TxId>, server_reqs: &mut Vec<(TxId, Message)>, terminated: &mut Vec<TxId>| {
            while let Some(o) = l.poll_output() {
                match o {
                    Output::Event(Event::Request { tx, msg, .. }) => { created.insert(tx); server_reqs.push((tx, msg)); }
                    Output::Event(Event::Terminated { tx }) => terminated.push(tx),
                    _ => {}
                }
            }
        };
        for op in ops {
            match op {
                Op::ClientSend { invite, reliable, branch } => {
                    let m = request(if invite { "INVITE" } else { "OPTIONS" }, &format!("z9hG4bKc{branch}"));
                    if let Ok(tx) = l.send_request(m.clone(), 1, reliable, now) {
                        created.insert(tx);
                        client_reqs.push((tx, m));
                    }
                }
                Op::ServerReceive { invite, reliable, branch } => {
                    let m = request(if invite { "INVITE" } else { "BYE" }, &format!("z9hG4bKs{branch}"));
                    l.receive(m, 2, reliable, now);
                }
                Op::AnswerServer { pick, status } if !server_reqs.is_empty() => {
                    let (tx, req) = &server_reqs[pick as usize % server_reqs.len()];
                    let bytes = ResponseBuilder::for_request(req, status, "X", "t").build();
                    let _ = l.respond(*tx, status, bytes, now);
                }
                Op::ResponseToClient { pick, status } if !client_reqs.is_empty() => {
                    let (_, req) = &client_reqs[pick as usize % client_reqs.len()];
                    l.receive(response_to(req, status), 1, false, now);
                }
                Op::AckServer { pick } if !server_reqs.is_empty() => {
                    let (_, req) = &server_reqs[pick as usize % server_reqs.len()];
                    if req.method() == Some(&Method::Invite) {
                        let text = String::from_utf8_lossy(&req.to_bytes()).replace("INVITE sip", "ACK sip").replace("7 INVITE", "7 ACK");
                        l.receive(msg(&text), 2, false, now);
                    }
                }
                Op::TransportError { pick } if !created.is_empty() => {
                    let tx = *created.iter().nth(pick as usize % created.len()).unwrap();
                    l.transport_error(tx);
                }
                Op::Advance { ms } => {
                    now += Duration::from_millis(ms as u64);
                    l.handle_timeout(now);
                }
                _ => {}
            }
            collect(&mut l, &mut created, &mut server_reqs, &mut terminated);
        }
        // Let every timer run out; server transactions the TU never answered are answered
        // now (a TU must answer every request).
        for (tx, req) in server_reqs.clone() {
            let bytes = ResponseBuilder::for_request(&req, 500, "X", "t").build();
            let _ = l.respond(tx, 500, bytes, now);
        }
        for _ in 0..1000 {
            let Some(at) = l.poll_timeout() else { break };
            now = now.max(at);
            l.handle_timeout(now);
            collect(&mut l, &mut created, &mut server_reqs, &mut terminated);
        }
        prop_assert!(l.is_empty(), "left in the table: {}", l.len());
        prop_assert!(l.poll_timeout().is_none());
        let mut sorted = terminated.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(sorted.len(), terminated.len(), "terminated twice");
        prop_assert_eq!(sorted, created.into_iter().collect::<Vec<_>>());
    }

    /// A client and a server layer over a link that loses messages: the client TU gets
    /// the server's final answer or a timeout, never both and never nothing, and both
    /// tables end empty.
    #[test]
    fn client_and_server_over_a_lossy_link(invite in any::<bool>(), loss in proptest::collection::vec(any::<bool>(), 64), status in prop_oneof![Just(200u16), Just(486)]) {
        let mut client = Layer::new(TimerConfig::default());
        let mut server = Layer::new(TimerConfig::default());
        let t0 = Instant::now();
        let mut now = t0;
        let method = if invite { "INVITE" } else { "OPTIONS" };
        let req = request(method, "z9hG4bKpair");
        let ctx = client.send_request(req, 1, false, now).unwrap();
        let mut losses = loss.into_iter().cycle();
        let (mut finals, mut timeouts) = (0, 0);
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(o) = client.poll_output() {
                moved = true;
                match o {
                    Output::Transmit { bytes, .. } => if !losses.next().unwrap() {
                        server.receive(Message::parse_datagram(bytes).unwrap(), 2, false, now);
                    },
                    Output::Event(Event::Response { tx, msg }) if tx == ctx && msg.status().unwrap() >= 200 => finals += 1,
                    Output::Event(Event::Timeout { .. }) => timeouts += 1,
                    Output::Event(_) => {}
                }
            }
            while let Some(o) = server.poll_output() {
                moved = true;
                match o {
                    Output::Transmit { bytes, .. } => if !losses.next().unwrap() {
                        client.receive(Message::parse_datagram(bytes).unwrap(), 1, false, now);
                    },
                    Output::Event(Event::Request { tx, msg, .. }) => {
                        let bytes = ResponseBuilder::for_request(&msg, status, "X", "t").build();
                        server.respond(tx, status, bytes, now).unwrap();
                    }
                    Output::Event(_) => {}
                }
            }
            if moved { continue; }
            let next = [client.poll_timeout(), server.poll_timeout()].into_iter().flatten().min();
            let Some(at) = next else { break };
            now = now.max(at);
            client.handle_timeout(now);
            server.handle_timeout(now);
        }
        prop_assert!(client.is_empty() && server.is_empty());
        if invite && status == 200 {
            // 2xx retransmissions are the TU's job: at most the first 2xx arrives here,
            // or the client times out if every copy of the INVITE or the 2xx was lost.
            prop_assert!(finals <= 1 && finals + timeouts == 1, "finals {finals} timeouts {timeouts}");
        } else {
            prop_assert_eq!(finals.min(1) + timeouts, 1, "finals {} timeouts {}", finals, timeouts);
        }
    }
}
