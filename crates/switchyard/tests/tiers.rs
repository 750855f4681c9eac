//! The tiers as processes of their own: media nodes run by `switchyard media`, driven
//! over the network by the core of a `serve`.

mod common;

use std::time::{Duration, Instant};

use common::phone::Phone;
use common::{RoleProcess, Server};

const SECRET: &str = "tiers test cluster secret";

fn media_node(ports: &str, extra: &[&str]) -> RoleProcess {
    let mut args = vec![
        "media",
        "--control",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--media-ports",
        ports,
        "--cluster-secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    RoleProcess::start(&args)
}

fn demo_phones(server: &Server) -> (Phone, Phone) {
    let text =
        std::fs::read_to_string(server.data_dir.path().join("demo-credentials.json")).unwrap();
    let creds: serde_json::Value = serde_json::from_str(&text).unwrap();
    let domain = creds["domain"].as_str().unwrap();
    let pw = |i: usize| {
        creds["extensions"][i]["password"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut a = Phone::new(server.addr("UDP"), domain, "1001", &pw(0));
    let mut b = Phone::new(server.addr("UDP"), domain, "1002", &pw(1));
    assert_eq!(a.register(), 200);
    assert_eq!(b.register(), 200);
    (a, b)
}

/// One answered call from `a` to 1002 with RTP both ways; returns the media port both
/// phones were given and the phones, the call still up.
fn answered_call(
    mut a: Phone,
    mut b: Phone,
) -> (Phone, Phone, common::phone::CallLeg, common::phone::CallLeg) {
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call("1002", &[0]);
        assert_eq!(r.status(), Some(200), "{r:?}");
        (a, leg.unwrap())
    });
    let (inv, from) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("INVITE at 1002");
    let b_leg = b.answer(&inv, from, 200, &[0]);
    let (a, a_leg) = caller.join().unwrap();
    let _ = b.wait_request("ACK", Duration::from_secs(2));
    (a, b, a_leg, b_leg)
}

fn hang_up(a: &mut Phone, b: Phone, a_leg: &mut common::phone::CallLeg) -> Phone {
    let callee = std::thread::spawn(move || {
        let mut b = b;
        b.answer_next("BYE", Duration::from_secs(5), &[]);
        b
    });
    assert_eq!(a.request(a_leg, "BYE", "").status(), Some(200));
    callee.join().unwrap()
}

fn media_port(leg: &common::phone::CallLeg) -> u16 {
    leg.remote_rtp.expect("an anchored SDP").port()
}

/// Calls are anchored on media nodes in other processes, spread by free capacity; a node
/// killed with `kill -9` is out of the pool at once and new calls go to the other one.
#[test]
fn calls_are_anchored_on_media_nodes_apart_and_a_dead_node_is_left_out() {
    let mut first = media_node("46000-46099", &["--max-sessions", "10"]);
    let second = media_node("46200-46299", &["--max-sessions", "10"]);
    let nodes = format!(
        "{},{}",
        first.addr("media-control"),
        second.addr("media-control")
    );
    let server = Server::start(&["--media-nodes", &nodes, "--cluster-secret", SECRET]);
    let (mut a, mut b) = demo_phones(&server);
    let on_first = |port: u16| (46000..46100).contains(&port);
    let on_second = |port: u16| (46200..46300).contains(&port);

    // Four calls one after another, each up while the next starts: room decides, so they
    // alternate between the two nodes.
    let mut legs = Vec::new();
    for _ in 0..4 {
        let (na, nb, a_leg, b_leg) = answered_call(a, b);
        (a, b) = (na, nb);
        legs.push((a_leg, b_leg));
    }
    let ports: Vec<u16> = legs.iter().map(|(l, _)| media_port(l)).collect();
    assert_eq!(
        ports.iter().filter(|p| on_first(**p)).count(),
        2,
        "two calls on each node: {ports:?}"
    );
    assert_eq!(
        ports.iter().filter(|p| on_second(**p)).count(),
        2,
        "{ports:?}"
    );
    // Media flows through the node of the last call, both ways.
    let (a_leg, b_leg) = legs.last().unwrap();
    for seq in 0..10 {
        a.send_rtp(a_leg, 0, seq);
        b.send_rtp(b_leg, 0, seq);
    }
    assert_eq!(b.count_rtp(Duration::from_millis(500)), 10);
    assert_eq!(a.count_rtp(Duration::from_millis(300)), 10);
    // Each node reports its sessions and capacity; the core reports both nodes.
    for node in [&first, &second] {
        let m = node.metrics();
        assert_eq!(
            m.get("switchyard_media_sessions{pool=\"shared\"}"),
            Some(&2.0),
            "{m:?}"
        );
        assert_eq!(
            m.get("switchyard_media_capacity{pool=\"shared\"}"),
            Some(&10.0)
        );
    }
    let core = server.metrics();
    assert_eq!(
        core.get("switchyard_media_sessions"),
        Some(&4.0),
        "{core:?}"
    );
    for (mut a_leg, _) in legs {
        b = hang_up(&mut a, b, &mut a_leg);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while first.metrics()["switchyard_media_sessions{pool=\"shared\"}"] > 0.0 {
        assert!(
            Instant::now() < deadline,
            "sessions not destroyed on the first node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The first node dies: the next call waits for it at most one request timeout, then
    // lands on the second; the calls after that go there at once.
    first.kill();
    for i in 0..3 {
        let started = Instant::now();
        let (na, nb, mut a_leg, _) = answered_call(a, b);
        let took = started.elapsed();
        (a, b) = (na, nb);
        let port = media_port(&a_leg);
        assert!(on_second(port), "call {i} after the kill on port {port}");
        b = hang_up(&mut a, b, &mut a_leg);
        if i > 0 {
            assert!(
                took < Duration::from_millis(1000),
                "call {i} waited {took:?}"
            );
        }
    }
    let up: Vec<_> = server
        .metrics()
        .into_iter()
        .filter(|(k, _)| k.starts_with("switchyard_media_node_up"))
        .collect();
    assert!(
        up.iter().any(|(k, v)| k.contains("media-1") && *v == 0.0)
            && up.iter().any(|(k, v)| k.contains("media-2") && *v == 1.0),
        "{up:?}"
    );
}

/// A media node started without the cluster secret refuses to start; one with another
/// secret obeys nothing, so the core answers calls `503` rather than anchor them there.
#[test]
fn a_media_node_obeys_only_the_cluster_secret() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["media", "--control", "127.0.0.1:0"])
        .env_remove("SWITCHYARD_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.secret"), "{err}");

    let node = media_node("46400-46499", &[]);
    let server = Server::start(&[
        "--media-nodes",
        &node.addr("media-control").to_string(),
        "--cluster-secret",
        "another secret",
    ]);
    let (mut a, _b) = demo_phones(&server);
    let (r, _) = a.call("1002", &[0]);
    assert_eq!(r.status(), Some(503), "{r:?}");
    let m = node.metrics();
    assert_eq!(m["switchyard_media_sessions{pool=\"shared\"}"], 0.0);
    assert!(
        m["switchyard_media_control_refused_total{pool=\"shared\"}"] >= 1.0,
        "{m:?}"
    );
}
