//! The media node on real loopback sockets: anchoring, latching, transcoding, DTMF,
//! counters, and that every port comes back.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_media::{KernelForwarding, MediaConfig, MediaNode};
use switchyard_media_control::{Leg, MediaControl, MediaError, Reply, Request};
use switchyard_rtp::g711;
use switchyard_rtp::packet::RtpHeader;
use tokio::net::UdpSocket;

fn node(min: u16) -> MediaNode {
    MediaNode::new(MediaConfig {
        port_min: min,
        port_max: min + 199,
        ..MediaConfig::default()
    })
}

fn offer(port: u16, codec: u8) -> String {
    offer_at("127.0.0.1", port, codec)
}

fn offer_at(ip: &str, port: u16, codec: u8) -> String {
    let name = if codec == 0 { "PCMU" } else { "PCMA" };
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {codec} 101\r\na=rtpmap:{codec} {name}/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
    )
}

fn sdp_port(sdp: &str) -> u16 {
    let m = sdp.lines().find(|l| l.starts_with("m=audio")).unwrap();
    m.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn sdp(node: &MediaNode, r: Request) -> String {
    match node.call(r).await.unwrap() {
        Reply::Sdp { sdp } => sdp,
        other => panic!("{other:?}"),
    }
}

fn rtp(pt: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend(seq.to_be_bytes());
    p.extend((u32::from(seq) * 160).to_be_bytes());
    p.extend(0x1234u32.to_be_bytes());
    p.extend(payload);
    p
}

async fn recv(s: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf))
        .await
        .expect("a relayed packet")
        .unwrap();
    buf[..n].to_vec()
}

#[tokio::test]
async fn pcmu_caller_and_pcma_callee_hear_each_other_through_the_relay() {
    let node = node(40000);
    let phone_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let phone_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pa = phone_a.local_addr().unwrap().port();
    let pb = phone_b.local_addr().unwrap().port();
    node.call(Request::Create {
        session: "c1".into(),
        tenant: "t1".into(),
        pool: None,
    })
    .await
    .unwrap();
    let to_b = sdp(
        &node,
        Request::Offer {
            session: "c1".into(),
            from: Leg::A,
            sdp: offer(pa, 0),
        },
    )
    .await;
    assert!(to_b.contains("RTP/AVP 0 101 8"), "{to_b}");
    let relay_b: SocketAddr = format!("127.0.0.1:{}", sdp_port(&to_b)).parse().unwrap();
    let to_a = sdp(
        &node,
        Request::Answer {
            session: "c1".into(),
            from: Leg::B,
            sdp: offer(pb, 8),
        },
    )
    .await;
    assert!(to_a.contains("RTP/AVP 0 101"), "{to_a}");
    let relay_a: SocketAddr = format!("127.0.0.1:{}", sdp_port(&to_a)).parse().unwrap();
    assert_ne!(relay_a.port(), pa);

    // A speaks μ-law: B gets A-law with its payload number, sample for sample.
    let ulaw: Vec<u8> = (0..160)
        .map(|i| g711::linear_to_ulaw((i * 100) as i16))
        .collect();
    for seq in 0..5u16 {
        phone_a.send_to(&rtp(0, seq, &ulaw), relay_a).await.unwrap();
        let got = recv(&phone_b).await;
        let h = RtpHeader::parse(&got).unwrap();
        assert_eq!(h.payload_type, 8);
        assert_eq!(h.sequence, seq);
        let expected: Vec<u8> = ulaw.iter().map(|&c| g711::ulaw_to_alaw(c)).collect();
        assert_eq!(&got[h.payload_offset..], &expected[..]);
    }
    // B answers from another port than its SDP said (behind NAT): the relay latches to it.
    let natted_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let alaw: Vec<u8> = vec![g711::linear_to_alaw(1000); 160];
    natted_b.send_to(&rtp(8, 1, &alaw), relay_b).await.unwrap();
    let got = recv(&phone_a).await;
    assert_eq!(RtpHeader::parse(&got).unwrap().payload_type, 0);
    phone_a.send_to(&rtp(0, 5, &ulaw), relay_a).await.unwrap();
    let got = recv(&natted_b).await;
    assert_eq!(
        RtpHeader::parse(&got).unwrap().sequence,
        5,
        "sent to the latched address"
    );
    // A telephone-event passes with the payload number B negotiated.
    phone_a
        .send_to(&rtp(101, 6, &[1, 0x0a, 0, 160]), relay_a)
        .await
        .unwrap();
    let got = recv(&natted_b).await;
    let h = RtpHeader::parse(&got).unwrap();
    assert_eq!(
        (h.payload_type, &got[h.payload_offset..]),
        (101, &[1u8, 0x0a, 0, 160][..])
    );
    // RTCP goes the same way on the odd ports, latched on its own.
    let rtcp_of = |a: SocketAddr| SocketAddr::new(a.ip(), a.port() + 1);
    let sender_report = [
        0x80u8, 200, 0, 6, 0, 0, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        17, 18, 19, 20,
    ];
    let a_rtcp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b_rtcp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    b_rtcp
        .send_to(&sender_report, rtcp_of(relay_b))
        .await
        .unwrap(); // latches B's RTCP
    tokio::time::sleep(Duration::from_millis(50)).await;
    a_rtcp
        .send_to(&sender_report, rtcp_of(relay_a))
        .await
        .unwrap();
    assert_eq!(
        recv(&b_rtcp).await,
        sender_report,
        "A's RTCP reaches B unchanged"
    );
    b_rtcp
        .send_to(&sender_report, rtcp_of(relay_b))
        .await
        .unwrap();
    assert_eq!(
        recv(&a_rtcp).await,
        sender_report,
        "B's RTCP reaches A unchanged"
    );

    let Reply::Stats { stats } = node
        .call(Request::Destroy {
            session: "c1".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(stats.a.packets_received, 7);
    assert_eq!(stats.a.transcoded, 6);
    assert_eq!(stats.a.telephone_events, 1);
    assert_eq!(stats.b.packets_received, 1);
    assert_eq!(stats.b.packets_sent, 7);
    assert_eq!(stats.a.packets_lost, 0);
    assert_eq!(
        stats.b.latched.as_deref(),
        Some(natted_b.local_addr().unwrap().to_string().as_str())
    );
    assert_eq!(node.session_count(), 0);
}

#[tokio::test]
async fn bad_sdp_and_unknown_sessions_are_refused_without_leaking() {
    let node = node(40400);
    let before = node.free_pairs();
    node.call(Request::Create {
        session: "x".into(),
        tenant: "t".into(),
        pool: None,
    })
    .await
    .unwrap();
    assert_eq!(node.free_pairs(), before - 2);
    let bad = node
        .call(Request::Offer {
            session: "x".into(),
            from: Leg::A,
            sdp: "v=0\r\nbroken".into(),
        })
        .await;
    assert!(matches!(bad, Err(MediaError::NotAcceptable(_))), "{bad:?}");
    let answer_first = node
        .call(Request::Answer {
            session: "x".into(),
            from: Leg::B,
            sdp: offer(5000, 0),
        })
        .await;
    assert!(matches!(answer_first, Err(MediaError::NotAcceptable(_))));
    assert_eq!(
        node.call(Request::Create {
            session: "x".into(),
            tenant: "t".into(),
            pool: None,
        })
        .await,
        Err(MediaError::Exists)
    );
    assert_eq!(
        node.call(Request::Stats {
            session: "nope".into()
        })
        .await,
        Err(MediaError::NoSession)
    );
    node.call(Request::Destroy {
        session: "x".into(),
    })
    .await
    .unwrap();
    assert_eq!(node.free_pairs(), before);
}

#[tokio::test]
async fn a_thousand_short_sessions_give_every_port_back() {
    let node = node(40800);
    let before = node.free_pairs();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = phone.local_addr().unwrap().port();
    for i in 0..1000 {
        let id = format!("s{i}");
        let (_, relay_b) = answered_session(&node, &id, port, port).await;
        if i % 100 == 0 {
            speak(&phone, 1, relay_b).await;
        }
        node.call(Request::Destroy { session: id }).await.unwrap();
    }
    assert_eq!(node.session_count(), 0);
    assert_eq!(node.running_relays(), 0);
    assert_eq!(node.free_pairs(), before, "every port pair is back");
    // The sockets of this process on the range are exactly the free pairs it keeps
    // bound, and none once the node is gone. (Binding each port again would also trip
    // over other tests' sockets: the kernel hands out ephemeral ports from this range
    // to any process.)
    let in_range = || {
        udp_ports_of_this_process()
            .into_iter()
            .filter(|p| (40800..=40999).contains(p))
            .count()
    };
    assert!(node.bound_free_pairs() > 0, "pairs are kept bound");
    assert_eq!(in_range(), 2 * node.bound_free_pairs());
    drop(node);
    assert_eq!(in_range(), 0, "sockets left open once the node is gone");
}

/// A pair kept bound is reused only after every other free pair, and what reached it
/// after its session ended is dropped: a late packet of the last call neither reaches
/// the next call's parties nor latches its legs.
#[tokio::test]
async fn a_reused_pair_drops_the_last_calls_late_packets() {
    // One session's worth of ports: the second session gets the first one's pairs.
    let node = MediaNode::new(MediaConfig {
        port_min: 41400,
        port_max: 41403,
        ..MediaConfig::default()
    });
    let phone_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let phone_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let mut relay_ports = Vec::new();
    for session in ["first", "second"] {
        let (relay_a, relay_b) =
            answered_session(&node, session, port(&phone_a), port(&phone_b)).await;
        relay_ports.push((relay_a.port(), relay_b.port()));
        if session == "first" {
            node.call(Request::Destroy {
                session: session.into(),
            })
            .await
            .unwrap();
            assert_eq!(node.bound_free_pairs(), 2);
            // The first call's far end keeps sending for a moment after the hang-up.
            speak(&stranger, 1, relay_a).await;
            speak(&stranger, 2, relay_b).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (mut first, mut second) = (relay_ports[0], relay_ports[1]);
    for pair in [&mut first, &mut second] {
        if pair.0 > pair.1 {
            *pair = (pair.1, pair.0);
        }
    }
    assert_eq!(first, second, "the second session reuses the kept pairs");

    // A speaks: B hears it at the address B signalled, not the stranger.
    let relay_a: SocketAddr = format!("127.0.0.1:{}", relay_ports[1].0).parse().unwrap();
    speak(&phone_a, 7, relay_a).await;
    assert_eq!(heard(&phone_b).await, 7);
    assert!(nothing_for(&phone_a).await, "A heard the last call");
    assert!(
        nothing_for(&stranger).await,
        "A's audio went to the last call's party"
    );
}

/// The local ports of this process's UDP sockets (Linux: its socket inodes matched
/// against `/proc/self/net/udp`).
fn udp_ports_of_this_process() -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/self/net/udp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            inodes.contains(*cols.get(9)?).then_some(port)
        })
        .collect()
}

/// A leg signalled at a new address (a transfer's new party on leg B): the relay sends
/// A's audio to the new party, not to the source it had latched to, and the old party's
/// packets, still arriving, reach nobody.
#[tokio::test]
async fn a_leg_signalled_elsewhere_latches_to_its_new_party() {
    let node = node(41200);
    let phone_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let old_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let new_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let session = || "x1".to_owned();
    node.call(Request::Create {
        session: session(),
        tenant: "t1".into(),
        pool: None,
    })
    .await
    .unwrap();
    let to_b = sdp(
        &node,
        Request::Offer {
            session: session(),
            from: Leg::A,
            sdp: offer(port(&phone_a), 0),
        },
    )
    .await;
    let to_a = sdp(
        &node,
        Request::Answer {
            session: session(),
            from: Leg::B,
            sdp: offer(port(&old_b), 0),
        },
    )
    .await;
    let relay_a = SocketAddr::from(([127, 0, 0, 1], sdp_port(&to_a)));
    let relay_b = SocketAddr::from(([127, 0, 0, 1], sdp_port(&to_b)));
    // Both talk: the relay latches to each.
    talk(&old_b, 1, relay_b).await;
    recv(&phone_a).await;
    talk(&phone_a, 1, relay_a).await;
    recv(&old_b).await;

    // Leg B is now the new party: offered again from A, answered from its address.
    sdp(
        &node,
        Request::Offer {
            session: session(),
            from: Leg::A,
            sdp: offer(port(&phone_a), 0),
        },
    )
    .await;
    sdp(
        &node,
        Request::Answer {
            session: session(),
            from: Leg::B,
            sdp: offer(port(&new_b), 0),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The old party still sends: nobody hears it.
    talk(&old_b, 2, relay_b).await;
    assert!(
        silent(&phone_a, 300).await,
        "the replaced party is not relayed"
    );
    // A's audio goes to the new party, whose own audio reaches A.
    talk(&phone_a, 2, relay_a).await;
    recv(&new_b).await;
    talk(&new_b, 3, relay_b).await;
    recv(&phone_a).await;
    assert!(
        silent(&old_b, 200).await,
        "the old party hears nothing more"
    );
}

/// One 20 ms μ-law packet from `phone` to the relay at `to`.
async fn talk(phone: &UdpSocket, seq: u16, to: SocketAddr) {
    phone.send_to(&rtp(0, seq, &[0xd5; 160]), to).await.unwrap();
}

/// Nothing arrives at `phone` within `ms`.
async fn silent(phone: &UdpSocket, ms: u64) -> bool {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_millis(ms), phone.recv_from(&mut buf))
        .await
        .is_err()
}

/// No more pairs stay bound than `keep_bound` allows; the rest are closed when freed.
#[tokio::test]
async fn pairs_beyond_keep_bound_are_closed_when_freed() {
    let node = MediaNode::new(MediaConfig {
        port_min: 41600,
        port_max: 41639,
        keep_bound: 3,
        ..MediaConfig::default()
    });
    for i in 0..4 {
        node.call(Request::Create {
            session: format!("k{i}"),
            tenant: "t1".into(),
            pool: None,
        })
        .await
        .unwrap();
    }
    let in_range = || {
        udp_ports_of_this_process()
            .into_iter()
            .filter(|p| (41600..=41639).contains(p))
            .count()
    };
    assert_eq!(in_range(), 16, "four sessions, two legs each, RTP and RTCP");
    for i in 0..4 {
        node.call(Request::Destroy {
            session: format!("k{i}"),
        })
        .await
        .unwrap();
    }
    assert_eq!(node.bound_free_pairs(), 3);
    assert_eq!(in_range(), 6, "three pairs kept, five closed");
}

async fn answered_session(
    node: &MediaNode,
    id: &str,
    pa: u16,
    pb: u16,
) -> (SocketAddr, SocketAddr) {
    answered_session_at(node, id, "127.0.0.1", (pa, 0), (pb, 0)).await
}

/// A session answered between phones at `ip`: A at (port, codec), B likewise; the
/// relay's addresses for A and for B.
async fn answered_session_at(
    node: &MediaNode,
    id: &str,
    ip: &str,
    (pa, codec_a): (u16, u8),
    (pb, codec_b): (u16, u8),
) -> (SocketAddr, SocketAddr) {
    node.call(Request::Create {
        session: id.into(),
        tenant: "t1".into(),
        pool: None,
    })
    .await
    .unwrap();
    let to_b = sdp(
        node,
        Request::Offer {
            session: id.into(),
            from: Leg::A,
            sdp: offer_at(ip, pa, codec_a),
        },
    )
    .await;
    let to_a = sdp(
        node,
        Request::Answer {
            session: id.into(),
            from: Leg::B,
            sdp: offer_at(ip, pb, codec_b),
        },
    )
    .await;
    let relay = node_address(&to_a);
    (
        SocketAddr::new(relay, sdp_port(&to_a)),
        SocketAddr::new(relay, sdp_port(&to_b)),
    )
}

/// The address an SDP from the node names.
fn node_address(sdp: &str) -> std::net::IpAddr {
    let c = sdp.lines().find(|l| l.starts_with("c=IN IP4 ")).unwrap();
    c["c=IN IP4 ".len()..].trim().parse().unwrap()
}

/// Waits up to a second for `done` (the relay thread acts just after it sent a packet
/// a phone may already have).
async fn until(done: impl Fn() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn leg_stats(node: &MediaNode, id: &str) -> switchyard_media_control::SessionStats {
    match node
        .call(Request::Stats { session: id.into() })
        .await
        .unwrap()
    {
        Reply::Stats { stats } => stats,
        other => panic!("{other:?}"),
    }
}

async fn nothing_for(socket: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf))
        .await
        .is_err()
}

/// Sends one PCMU packet numbered `seq` from `from` to `to`.
async fn speak(from: &UdpSocket, seq: u16, to: SocketAddr) {
    from.send_to(&rtp(0, seq, &[0x55; 160]), to).await.unwrap();
}

/// The sequence number of the next packet `by` hears.
async fn heard(by: &UdpSocket) -> u16 {
    RtpHeader::parse(&recv(by).await).unwrap().sequence
}

/// Two phones in an answered session and a stranger; the relay's A and B addresses.
async fn two_phones_and_a_stranger(
    node: &MediaNode,
    id: &str,
) -> ([UdpSocket; 3], SocketAddr, SocketAddr) {
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let (relay_a, relay_b) = answered_session(node, id, port(&sockets[0]), port(&sockets[1])).await;
    let sockets: [UdpSocket; 3] = sockets.try_into().unwrap();
    (sockets, relay_a, relay_b)
}

/// Once a leg has latched, packets for it from anywhere else are dropped and counted: a
/// stranger who learns the relay's port cannot speak into the call.
#[tokio::test]
async fn a_second_source_after_latching_is_dropped_and_counted() {
    let node = node(41800);
    let ([phone_a, phone_b, stranger], relay_a, relay_b) =
        two_phones_and_a_stranger(&node, "s1").await;
    speak(&phone_b, 1, relay_b).await;
    assert_eq!(heard(&phone_a).await, 1);
    // The stranger pretends to be B, and to be A.
    speak(&stranger, 2, relay_b).await;
    assert!(nothing_for(&phone_a).await, "the stranger reached A");
    speak(&phone_a, 3, relay_a).await;
    assert_eq!(heard(&phone_b).await, 3);
    speak(&stranger, 4, relay_a).await;
    assert!(nothing_for(&phone_b).await, "the stranger reached B");
    // B is still heard.
    speak(&phone_b, 5, relay_b).await;
    assert_eq!(heard(&phone_a).await, 5);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = leg_stats(&node, "s1").await;
    assert_eq!((stats.a.foreign_dropped, stats.b.foreign_dropped), (1, 1));
    let b = phone_b.local_addr().unwrap().to_string();
    assert_eq!(stats.b.latched, Some(b));
}

/// A stranger whose packet arrives before the phone's gets the leg only until the address
/// the SDP signalled speaks: then the leg is the phone's, and the stranger hears nothing.
#[tokio::test]
async fn the_signalled_address_wins_over_a_stranger_who_spoke_first() {
    let node = node(42000);
    let ([phone_a, phone_b, stranger], relay_a, relay_b) =
        two_phones_and_a_stranger(&node, "s2").await;
    speak(&stranger, 1, relay_b).await;
    assert_eq!(heard(&phone_a).await, 1);
    speak(&phone_b, 2, relay_b).await;
    assert_eq!(heard(&phone_a).await, 2);
    speak(&phone_a, 3, relay_a).await;
    assert_eq!(heard(&phone_b).await, 3);
    assert!(
        nothing_for(&stranger).await,
        "A's audio went to the stranger"
    );
    speak(&stranger, 4, relay_b).await;
    assert!(nothing_for(&phone_a).await, "the stranger is still heard");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = leg_stats(&node, "s2").await;
    assert_eq!(stats.b.foreign_dropped, 1);
    let b = phone_b.local_addr().unwrap().to_string();
    assert_eq!(stats.b.latched, Some(b));
}

/// An RTP socket on an even port and its RTCP socket on the next one.
async fn rtp_and_rtcp() -> (UdpSocket, UdpSocket) {
    loop {
        let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = rtp.local_addr().unwrap().port();
        if port % 2 == 0
            && let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)).await
        {
            return (rtp, rtcp);
        }
    }
}

/// A receiver report from `ssrc`.
fn receiver_report(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend(ssrc.to_be_bytes());
    p
}

/// RTCP is relayed only when it is RTCP and speaks for the leg's own RTP stream: junk on
/// the RTCP port, or a report under another SSRC, is dropped and counted.
#[tokio::test]
async fn rtcp_is_relayed_only_when_well_formed_and_from_the_legs_own_stream() {
    let node = node(42200);
    let (a_rtp, a_rtcp) = rtp_and_rtcp().await;
    let (b_rtp, b_rtcp) = rtp_and_rtcp().await;
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let (relay_a, _) = answered_session(&node, "s3", port(&a_rtp), port(&b_rtp)).await;
    let relay_a_rtcp = SocketAddr::new(relay_a.ip(), relay_a.port() + 1);
    // A's RTP (SSRC 0x1234, as `rtp` writes) reaches B: the leg's stream is known.
    speak(&a_rtp, 1, relay_a).await;
    assert_eq!(heard(&b_rtp).await, 1);
    a_rtcp
        .send_to(&receiver_report(0x1234), relay_a_rtcp)
        .await
        .unwrap();
    assert_eq!(
        recv(&b_rtcp).await,
        receiver_report(0x1234),
        "A's report reaches B"
    );
    a_rtcp
        .send_to(b"not rtcp at all", relay_a_rtcp)
        .await
        .unwrap();
    a_rtcp
        .send_to(&receiver_report(0x9999), relay_a_rtcp)
        .await
        .unwrap();
    assert!(
        nothing_for(&b_rtcp).await,
        "junk or a stranger's SSRC reached B"
    );
    // The counters as the session ends (drops are published at once only now and then).
    let ended = node
        .call(Request::Destroy {
            session: "s3".into(),
        })
        .await
        .unwrap();
    let Reply::Stats { stats } = ended else {
        panic!("{ended:?}")
    };
    assert_eq!(stats.a.rtcp_dropped, 2);
}

/// On a node that may not send to loopback (one serving phones elsewhere), an SDP naming
/// 127.0.0.1, a core's SIP port say, turns the relay towards nothing: packets for it are
/// never sent, and packets from such an address are dropped and counted, never latched.
#[tokio::test]
async fn an_sdp_naming_loopback_or_a_cores_port_gets_nothing_from_the_relay() {
    use switchyard_media::DestinationPolicy;
    let node = MediaNode::new(MediaConfig {
        port_min: 42400,
        port_max: 42599,
        // Built-in denials only: loopback is internal for this node.
        destinations: DestinationPolicy::default(),
        ..MediaConfig::default()
    });
    // "The core": a SIP socket on loopback the attacker's SDP names as leg A's media.
    let core = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let phone_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let (relay_a, relay_b) = answered_session(&node, "s", port(&core), port(&phone_b)).await;
    // B speaks towards A: nothing reaches the core's port.
    for seq in 0..5 {
        speak(&phone_b, seq, relay_b).await;
    }
    assert!(
        nothing_for(&core).await,
        "the relay sent RTP to a loopback port"
    );
    // And A's side is not latched to a loopback source either.
    speak(&core, 1, relay_a).await;
    assert!(nothing_for(&phone_b).await, "a loopback source was relayed");
    let stats = leg_stats(&node, "s").await;
    assert_eq!(stats.a.packets_sent, 0, "{stats:?}");
    assert_eq!(stats.b.foreign_dropped, 5, "{stats:?}");
    assert_eq!(stats.a.foreign_dropped, 1, "{stats:?}");
    assert_eq!(stats.a.latched, None);
}

/// Ports come in no guessable order: two nodes on the same range hand out different
/// sequences, and a pair just freed waits behind the older free ones.
#[tokio::test]
async fn ports_are_drawn_at_random_and_a_freed_pair_is_not_reused_at_once() {
    async fn ports_of(node: &MediaNode, prefix: &str, n: usize) -> Vec<u16> {
        let mut ports = Vec::new();
        for i in 0..n {
            let (a, b) = answered_session(node, &format!("{prefix}{i}"), 9, 9).await;
            ports.extend([a.port(), b.port()]);
        }
        ports
    }
    let config = || MediaConfig {
        port_min: 42600,
        port_max: 42799,
        keep_bound: 0,
        ..MediaConfig::default()
    };
    let (one, two) = (MediaNode::new(config()), MediaNode::new(config()));
    let first = ports_of(&one, "x", 10).await;
    for s in 0..10 {
        one.call(Request::Destroy {
            session: format!("x{s}"),
        })
        .await
        .unwrap();
    }
    let second = ports_of(&two, "y", 10).await;
    assert_ne!(first, second, "two nodes drew the same ports");
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_ne!(first, sorted, "ports handed out in order");
    // The ten pairs `one` just freed are behind 80 older ones: none comes back yet.
    let again = ports_of(&one, "z", 10).await;
    assert!(
        again.iter().all(|p| !first.contains(p)),
        "freed ports reused at once: {first:?} then {again:?}"
    );
}

/// Every relayed packet is timed in the node, from the kernel's receive stamp on the
/// leg's socket to its send: the histogram counts each one, and no dropped one.
#[tokio::test]
async fn every_relayed_packet_is_timed_and_no_dropped_one() {
    let node = node(42800);
    let ([phone_a, phone_b, stranger], relay_a, relay_b) =
        two_phones_and_a_stranger(&node, "s4").await;
    assert_eq!(node.relay_delay().count, 0);
    for seq in 1..=5 {
        speak(&phone_a, seq, relay_a).await;
        assert_eq!(heard(&phone_b).await, seq);
        speak(&phone_b, seq, relay_b).await;
        assert_eq!(heard(&phone_a).await, seq);
    }
    // A stranger's packet after latching is dropped, and not timed.
    speak(&stranger, 6, relay_b).await;
    assert!(nothing_for(&phone_a).await);
    let delay = node.relay_delay();
    assert_eq!(delay.count, 10);
    assert_eq!(delay.buckets.iter().sum::<u64>(), 10);
}

/// Runs the test `name` again inside a network namespace of its own (`unshare -n`, its
/// loopback up), so the kernel path attaches to that loopback, not the host's; true
/// when this is the outer run, which has then checked that the inner one passed.
fn run_in_netns(name: &str) -> bool {
    if std::env::var_os("SWITCHYARD_TEST_IN_NETNS").is_some() {
        return false;
    }
    // A mount namespace too, for `ip netns` of its own (a tmpfs on /run/netns).
    let out = std::process::Command::new("unshare")
        .args(["-n", "-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "ip link set lo up && mkdir -p /run/netns && mount -t tmpfs kernel-path /run/netns \
             && exec \"$0\" --exact \"$1\" --nocapture",
        )
        .arg(std::env::current_exe().unwrap())
        .arg(name)
        .env("SWITCHYARD_TEST_IN_NETNS", "1")
        .output()
        .expect("unshare (util-linux) runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} failed inside its network namespace:\n{text}"
    );
    true
}

fn kernel_node(min: u16) -> MediaNode {
    MediaNode::start(MediaConfig {
        port_min: min,
        port_max: min + 199,
        kernel_forwarding: KernelForwarding::On,
        ..MediaConfig::default()
    })
    .expect("the kernel path attaches (root, clang at build time)")
}

/// A packet `by` hears: its header, its payload and where it came from.
async fn heard_from(by: &UdpSocket) -> (RtpHeader, Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), by.recv_from(&mut buf))
        .await
        .expect("a relayed packet")
        .unwrap();
    let h = RtpHeader::parse(&buf[..n]).unwrap();
    (h, buf[h.payload_offset..n].to_vec(), from)
}

fn rtp_from(pt: u8, seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = rtp(pt, seq, payload);
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// Once a leg's RTP has come from its latched source for a second's worth of packets,
/// the kernel forwards it: out of the other leg's port, payload and payload number as
/// userspace would send them, every packet counted (loss included), a stranger still
/// dropped and counted, a new SSRC taken back to userspace, nothing forwarded once the
/// session is gone.
#[tokio::test]
async fn a_latched_stream_is_forwarded_in_the_kernel_and_counted_whole() {
    if run_in_netns("a_latched_stream_is_forwarded_in_the_kernel_and_counted_whole") {
        return;
    }
    let node = kernel_node(43000);
    let kernel = node.kernel_path().unwrap();
    assert_eq!(kernel.interface(), "lo");
    let ([phone_a, phone_b, stranger], relay_a, relay_b) =
        two_phones_and_a_stranger(&node, "k1").await;
    let voice: Vec<u8> = (0..160).map(|i| i as u8).collect();
    // 50 each way through userspace, then the kernel takes both streams.
    for seq in 0..50u16 {
        phone_a
            .send_to(&rtp(0, seq, &voice), relay_a)
            .await
            .unwrap();
        assert_eq!(heard_from(&phone_b).await.0.sequence, seq);
        phone_b
            .send_to(&rtp(0, seq, &voice), relay_b)
            .await
            .unwrap();
        assert_eq!(heard_from(&phone_a).await.0.sequence, seq);
    }
    // (The relay writes the entry just after it sent the 50th packet.)
    until(|| kernel.entries() == 2).await;
    assert_eq!(kernel.entries(), 2, "both streams handed to the kernel");
    assert_eq!(kernel.entries_in_map(), 2);
    let timed = node.relay_delay().count;
    assert_eq!(timed, 100, "every packet so far relayed in userspace");
    // 150 more each way, 70 and 71 from A lost on the way; an event from A.
    for seq in 50..200u16 {
        if seq != 70 && seq != 71 {
            phone_a
                .send_to(&rtp(0, seq, &voice), relay_a)
                .await
                .unwrap();
            let (h, payload, from) = heard_from(&phone_b).await;
            assert_eq!((h.sequence, h.payload_type, from), (seq, 0, relay_b));
            assert_eq!(payload, voice);
        }
        phone_b
            .send_to(&rtp(0, seq, &voice), relay_b)
            .await
            .unwrap();
        let (h, _, from) = heard_from(&phone_a).await;
        assert_eq!((h.sequence, from), (seq, relay_a));
    }
    phone_a
        .send_to(&rtp(101, 200, &[1, 0x0a, 0, 160]), relay_a)
        .await
        .unwrap();
    let (h, payload, _) = heard_from(&phone_b).await;
    assert_eq!((h.payload_type, payload), (101, vec![1, 0x0a, 0, 160]));
    assert_eq!(
        node.relay_delay().count,
        timed,
        "none of the later packets went through userspace"
    );
    // A stranger is still userspace's: dropped and counted, never forwarded.
    speak(&stranger, 201, relay_a).await;
    assert!(nothing_for(&phone_b).await);
    // Counters read back from the kernel (at most half a second old).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stats = leg_stats(&node, "k1").await;
    // 148 audio and 1 event from A, 150 from B, through the kernel.
    assert_eq!(kernel.forwarded_packets(), 299);
    assert_eq!(stats.a.packets_received, 199, "{stats:?}");
    assert_eq!(stats.a.packets_lost, 2, "{stats:?}");
    assert_eq!(stats.a.telephone_events, 1, "{stats:?}");
    assert_eq!(stats.a.foreign_dropped, 1, "{stats:?}");
    assert_eq!(stats.b.packets_received, 200, "{stats:?}");
    assert_eq!(stats.b.packets_sent, 199, "{stats:?}");
    assert_eq!(stats.a.packets_sent, 200, "{stats:?}");
    assert_eq!(stats.b.packets_lost, 0, "{stats:?}");
    // A new SSRC from A comes up to userspace, which takes A's stream back.
    phone_a
        .send_to(&rtp_from(0, 9000, 0x9999, &voice), relay_a)
        .await
        .unwrap();
    assert_eq!(heard_from(&phone_b).await.0.sequence, 9000);
    assert_eq!(kernel.entries(), 1, "B's stream still in the kernel");
    // (The histogram is published once the relay thread is done with its batch.)
    until(|| node.relay_delay().count > timed).await;
    assert_eq!(node.relay_delay().count, timed + 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stats = leg_stats(&node, "k1").await;
    assert_eq!(stats.a.packets_received, 200, "{stats:?}");
    // Gone: nothing is forwarded from its ports.
    node.call(Request::Destroy {
        session: "k1".into(),
    })
    .await
    .unwrap();
    assert_eq!((kernel.entries(), kernel.entries_in_map()), (0, 0));
    phone_b
        .send_to(&rtp(0, 300, &voice), relay_b)
        .await
        .unwrap();
    assert!(nothing_for(&phone_a).await);
}

/// A call whose legs chose different G.711 laws is transcoded, so it stays in userspace.
#[tokio::test]
async fn a_transcoded_stream_stays_in_userspace() {
    if run_in_netns("a_transcoded_stream_stays_in_userspace") {
        return;
    }
    let node = kernel_node(43200);
    let phone_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let phone_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let (relay_a, _) = answered_session_at(
        &node,
        "k2",
        "127.0.0.1",
        (port(&phone_a), 0),
        (port(&phone_b), 8),
    )
    .await;
    let ulaw = vec![g711::linear_to_ulaw(1000); 160];
    for seq in 0..80u16 {
        phone_a.send_to(&rtp(0, seq, &ulaw), relay_a).await.unwrap();
        let (h, payload, _) = heard_from(&phone_b).await;
        assert_eq!((h.sequence, h.payload_type), (seq, 8));
        assert_eq!(payload, vec![g711::ulaw_to_alaw(ulaw[0]); 160]);
    }
    assert_eq!(node.kernel_path().unwrap().entries(), 0);
    until(|| node.relay_delay().count >= 80).await;
    assert_eq!(node.relay_delay().count, 80, "all 80 relayed in userspace");
}

/// Runs `ip` with `args`, which must succeed.
fn ip(args: &str) {
    let status = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("ip (iproute2) runs");
    assert!(status.success(), "ip {args}");
}

/// Two UDP sockets bound in the network namespace `netns` (a thread enters it to bind
/// them; a socket stays in the namespace it was made in).
fn sockets_in(netns: &str, ip: &str) -> [UdpSocket; 2] {
    let path = format!("/run/netns/{netns}");
    let ip = ip.to_owned();
    let std_sockets = std::thread::spawn(move || {
        let ns = std::fs::File::open(path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        [0, 1].map(|_| {
            let s = std::net::UdpSocket::bind((ip.as_str(), 0)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
    })
    .join()
    .unwrap();
    std_sockets.map(|s| UdpSocket::from_std(s).unwrap())
}

/// Phones on another host (a namespace behind a veth pair): the kernel forwards their
/// streams out of the interface they came in on, with the neighbour's Ethernet address,
/// and they hear every packet from the relay's own ports.
#[tokio::test]
async fn streams_from_another_host_are_forwarded_back_out_of_its_interface() {
    if run_in_netns("streams_from_another_host_are_forwarded_back_out_of_its_interface") {
        return;
    }
    ip("netns add phones");
    ip("link add sy0 type veth peer name sy1 netns phones");
    ip("addr add 10.99.0.1/24 dev sy0");
    ip("link set sy0 up");
    ip("-n phones addr add 10.99.0.2/24 dev sy1");
    ip("-n phones link set sy1 up");
    ip("-n phones link set lo up");
    let media_ip: std::net::IpAddr = "10.99.0.1".parse().unwrap();
    let node = MediaNode::start(MediaConfig {
        bind: media_ip,
        advertise: media_ip,
        port_min: 43400,
        port_max: 43599,
        kernel_forwarding: KernelForwarding::On,
        destinations: switchyard_media::DestinationPolicy::for_bind(
            media_ip,
            Vec::new(),
            Vec::new(),
        ),
        ..MediaConfig::default()
    })
    .expect("the kernel path attaches");
    assert_eq!(node.kernel_path().unwrap().interface(), "sy0");
    let [phone_a, phone_b] = sockets_in("phones", "10.99.0.2");
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let (relay_a, relay_b) = answered_session_at(
        &node,
        "k3",
        "10.99.0.2",
        (port(&phone_a), 0),
        (port(&phone_b), 0),
    )
    .await;
    let voice: Vec<u8> = (0..160).map(|i| (i * 3) as u8).collect();
    for seq in 0..120u16 {
        if seq == 60 {
            until(|| node.kernel_path().unwrap().entries() == 2).await;
            assert_eq!(node.kernel_path().unwrap().entries_in_map(), 2);
        }
        phone_a
            .send_to(&rtp(0, seq, &voice), relay_a)
            .await
            .unwrap();
        let (h, payload, from) = heard_from(&phone_b).await;
        assert_eq!((h.sequence, from), (seq, relay_b), "B hears A's {seq}");
        assert_eq!(payload, voice);
        phone_b
            .send_to(&rtp(0, seq, &voice), relay_b)
            .await
            .unwrap();
        let (h, _, from) = heard_from(&phone_a).await;
        assert_eq!((h.sequence, from), (seq, relay_a), "A hears B's {seq}");
    }
    assert!(
        node.relay_delay().count <= 120,
        "the last 60 each way went through the kernel: {}",
        node.relay_delay().count
    );
}

/// A leg signalled elsewhere while the kernel forwards both streams (a transfer's new
/// party): both come back to userspace at once, not at the next counter read, so the
/// other party's very next packet goes to the new address and the old party is no
/// longer heard.
#[tokio::test]
async fn a_leg_signalled_elsewhere_leaves_the_kernel_at_once() {
    if run_in_netns("a_leg_signalled_elsewhere_leaves_the_kernel_at_once") {
        return;
    }
    let node = kernel_node(43600);
    let kernel = node.kernel_path().unwrap();
    let ([phone_a, old_b, new_b], relay_a, relay_b) = two_phones_and_a_stranger(&node, "k4").await;
    for seq in 0..60u16 {
        talk(&phone_a, seq, relay_a).await;
        recv(&old_b).await;
        talk(&old_b, seq, relay_b).await;
        recv(&phone_a).await;
    }
    until(|| kernel.entries() == 2).await;
    assert_eq!(kernel.entries(), 2, "both streams in the kernel");
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    sdp(
        &node,
        Request::Offer {
            session: "k4".into(),
            from: Leg::A,
            sdp: offer(port(&phone_a), 0),
        },
    )
    .await;
    sdp(
        &node,
        Request::Answer {
            session: "k4".into(),
            from: Leg::B,
            sdp: offer(port(&new_b), 0),
        },
    )
    .await;
    for _ in 0..10 {
        if kernel.entries() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        kernel.entries(),
        0,
        "both streams back in userspace within 100 ms, well before the 500 ms read"
    );
    talk(&phone_a, 60, relay_a).await;
    recv(&new_b).await;
    assert!(
        silent(&old_b, 200).await,
        "the old party hears nothing more"
    );
    talk(&old_b, 61, relay_b).await;
    assert!(
        silent(&phone_a, 300).await,
        "the replaced party is not relayed"
    );
    talk(&new_b, 1, relay_b).await;
    recv(&phone_a).await;
}
