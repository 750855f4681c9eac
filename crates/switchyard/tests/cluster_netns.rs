//! The cluster as separate hosts: 2 edges, 2 cores and 2 media nodes, each process in a
//! network namespace of its own, joined by a bridge (10.77.0.0/24) inside a lab namespace
//! the test creates (`unshare -n -m`), on PostgreSQL and Redis as they run on this
//! machine (reached through Unix sockets, the one path between namespaces). Scripted
//! phones of six tenants spread calls over both cores and both media hosts; then two
//! baresips registered through different edges call each other, the core holding their
//! call is killed (`kill -9`) mid-call, and the audio goes on (Goertzel on the seconds
//! after the kill) until the hang-up, which the other core carries out from the call's
//! record. Nothing leaves the lab: its only network is the bridge.

mod common;
#[path = "../../store/tests/common/mod.rs"]
mod store_common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::RoleProcess;
use common::baresip::{Baresip, goertzel, read_wav};
use common::phone::Phone;
use switchyard_store::Store;

const SECRET: &str = "netns cluster secret";
const NONCES: &str = "netns cluster nonce secret";
/// Lab addresses: edges .11/.12, cores .21/.22, media .31/.32; phones on the lab's own
/// bridge address .41/.42.
const HOSTS: [(&str, u8); 6] = [
    ("e1", 11),
    ("e2", 12),
    ("c1", 21),
    ("c2", 22),
    ("m1", 31),
    ("m2", 32),
];

fn lab_ip(last: u8) -> String {
    format!("10.77.0.{last}")
}

/// The outer half: a database, a Unix socket in front of Redis, and this test again
/// inside the lab namespace.
fn run_in_lab(name: &str) -> bool {
    if std::env::var_os("SY_LAB").is_some() {
        return false;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = rt.block_on(store_common::postgres());
    let url = pg.url.clone().unwrap();
    let database = url.rsplit('/').next().unwrap().to_owned();
    std::mem::forget(pg);
    // PostgreSQL listens on a Unix socket as well; Redis gets one in front of it here.
    let dir = tempfile::tempdir().unwrap();
    let redis_socket = dir.path().join("redis.sock");
    let listener = std::os::unix::net::UnixListener::bind(&redis_socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let Ok(upstream) = std::net::TcpStream::connect("127.0.0.1:6379") else {
                continue;
            };
            let (mut c1, mut u1) = (conn.try_clone().unwrap(), upstream.try_clone().unwrap());
            let (mut c2, mut u2) = (conn, upstream);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut u1);
                let _ = u1.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    let out = Command::new("unshare")
        .args(["-n", "-m", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env("SY_LAB", "1")
        .env(
            "SY_LAB_PG",
            format!("postgres://postgres@localhost/{database}?host=/var/run/postgresql"),
        )
        .env(
            "SY_LAB_REDIS",
            format!("redis+unix://{}", redis_socket.display()),
        )
        .output()
        .expect("unshare (util-linux) runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} failed in its lab namespace:\n{text}"
    );
    true
}

/// Inside the lab: the bridge, and a namespace per host joined to it.
fn build_lab() {
    let mut script = String::from(
        "set -e\n\
         ip link set lo up\n\
         ip link add br0 type bridge\n\
         ip addr add 10.77.0.1/24 dev br0\n\
         ip addr add 10.77.0.41/24 dev br0\n\
         ip addr add 10.77.0.42/24 dev br0\n\
         ip link set br0 up\n\
         mkdir -p /run/netns\n\
         mount -t tmpfs lab-netns /run/netns\n",
    );
    for (n, a) in HOSTS {
        script.push_str(&format!(
            "ip netns add {n}\n\
             ip link add v{n} type veth peer name b{n}\n\
             ip link set v{n} netns {n}\n\
             ip link set b{n} master br0\n\
             ip link set b{n} up\n\
             ip netns exec {n} ip link set lo up\n\
             ip netns exec {n} ip addr add 10.77.0.{a}/24 dev v{n}\n\
             ip netns exec {n} ip link set v{n} up\n"
        ));
    }
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "lab set-up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Lab {
    rt: tokio::runtime::Runtime,
    store: Store,
    media: Vec<RoleProcess>,
    cores: Vec<RoleProcess>,
    edges: Vec<RoleProcess>,
}

impl Lab {
    fn start() -> Lab {
        build_lab();
        let pg = std::env::var("SY_LAB_PG").unwrap();
        let redis = std::env::var("SY_LAB_REDIS").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt.block_on(Store::connect(&pg)).unwrap();
        let cluster = |role: &str| -> Vec<String> {
            let mut args: Vec<String> = [role, "--redis-url", &redis, "--cluster-secret", SECRET]
                .map(String::from)
                .to_vec();
            if role != "media" {
                args.extend(["--store-url".to_owned(), pg.clone()]);
            }
            args
        };
        let start = |ns: &str, args: Vec<String>| {
            RoleProcess::start_in(ns, &args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let media = [("m1", 31u8, "40000-40999"), ("m2", 32, "41000-41999")]
            .map(|(ns, a, ports)| {
                let ip = lab_ip(a);
                let mut args = cluster("media");
                args.extend(
                    [
                        "--control",
                        &format!("{ip}:7070"),
                        "--bind",
                        &ip,
                        "--media-ports",
                        ports,
                        "--metrics",
                        &format!("{ip}:9470"),
                    ]
                    .map(String::from),
                );
                start(ns, args)
            })
            .into();
        let cores = [("c1", 21u8), ("c2", 22)]
            .map(|(ns, a)| {
                let ip = lab_ip(a);
                let mut args = cluster("core");
                args.extend(
                    [
                        "--listen",
                        &format!("{ip}:5070"),
                        "--metrics",
                        &format!("{ip}:9470"),
                    ]
                    .map(String::from),
                );
                start(ns, args)
            })
            .into();
        let edges = [("e1", 11u8), ("e2", 12)]
            .map(|(ns, a)| {
                let ip = lab_ip(a);
                let mut args = cluster("edge");
                args.extend(
                    [
                        "--udp",
                        &format!("{ip}:5060"),
                        "--internal",
                        &format!("{ip}:5070"),
                        "--tcp",
                        "off",
                        "--tls",
                        "off",
                        "--ws",
                        "off",
                        "--wss",
                        "off",
                        "--nonce-secret",
                        NONCES,
                        "--metrics",
                        &format!("{ip}:9470"),
                    ]
                    .map(String::from),
                );
                start(ns, args)
            })
            .into();
        let lab = Lab {
            rt,
            store,
            media,
            cores,
            edges,
        };
        common::wait_assembled(&lab.edges, &lab.cores, &lab.media, Duration::from_secs(15));
        lab
    }

    fn tenant(&self, domain: &str) -> String {
        self.rt
            .block_on(common::provision_tenant(&self.store, domain, &[2001, 2002]))
    }

    fn edge(&self, i: usize) -> SocketAddr {
        self.edges[i].addr("UDP")
    }
}

fn password(n: i64, domain: &str) -> String {
    common::extension_password(n, domain)
}

#[test]
fn a_cluster_of_namespaced_hosts_carries_calls_over_both_cores_and_media_nodes_and_survives_a_dead_core()
 {
    if run_in_lab(
        "a_cluster_of_namespaced_hosts_carries_calls_over_both_cores_and_media_nodes_and_survives_a_dead_core",
    ) {
        return;
    }
    let mut lab = Lab::start();

    // Scripted phones of six more tenants: calls on both cores and both media nodes, the
    // media anchored at the media hosts' own addresses.
    let (mut cores, mut media_hosts) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..6 {
        let domain = format!("t{i}.lab.example");
        lab.tenant(&domain);
        std::thread::sleep(Duration::from_millis(300));
        let mut a = Phone::new_at(
            "10.77.0.41",
            lab.edge(i % 2),
            &domain,
            "2001",
            &password(2001, &domain),
        );
        let mut b = Phone::new_at(
            "10.77.0.42",
            lab.edge((i + 1) % 2),
            &domain,
            "2002",
            &password(2002, &domain),
        );
        assert_eq!(a.register(), 200, "{domain}");
        assert_eq!(b.register(), 200, "{domain}");
        let caller = std::thread::spawn(move || {
            let (r, leg) = a.call("2002", &[0]);
            assert_eq!(r.status(), Some(200), "{r:?}");
            (a, leg.unwrap())
        });
        let (inv, from) = b
            .wait_request("INVITE", Duration::from_secs(5))
            .expect("INVITE at the callee");
        let b_leg = b.answer(&inv, from, 200, &[0]);
        let (mut a, mut a_leg) = caller.join().unwrap();
        let _ = b.wait_request("ACK", Duration::from_secs(2));
        // The first packets to a new neighbour wait for ARP (a few may be dropped, as on
        // any LAN): warm the path up, then count, 20 ms apart like a phone's.
        for seq in 0..3 {
            a.send_rtp(&a_leg, 0, seq);
            b.send_rtp(&b_leg, 0, seq);
        }
        a.count_rtp(Duration::from_millis(200));
        b.count_rtp(Duration::from_millis(10));
        for seq in 3..13 {
            a.send_rtp(&a_leg, 0, seq);
            b.send_rtp(&b_leg, 0, seq);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            b.count_rtp(Duration::from_millis(300)),
            10,
            "{domain}: RTP a→b"
        );
        assert_eq!(
            a.count_rtp(Duration::from_millis(100)),
            10,
            "{domain}: RTP b→a"
        );
        cores.insert(
            a_leg
                .target
                .split('@')
                .nth(1)
                .unwrap_or_default()
                .to_owned(),
        );
        media_hosts.insert(a_leg.remote_rtp.unwrap().ip());
        let callee = std::thread::spawn(move || {
            b.answer_next("BYE", Duration::from_secs(5), &[]);
        });
        assert_eq!(a.request(&mut a_leg, "BYE", "").status(), Some(200));
        callee.join().unwrap();
    }
    assert_eq!(
        cores,
        BTreeSet::from(["10.77.0.21:5070".to_owned(), "10.77.0.22:5070".to_owned()]),
        "calls on both cores"
    );
    assert_eq!(
        media_hosts,
        BTreeSet::from(["10.77.0.31".parse().unwrap(), "10.77.0.32".parse().unwrap()]),
        "media anchored on both media hosts"
    );
    // Two baresips of one tenant, each registered through another edge, hear each other;
    // the core holding their call is killed (`kill -9`) mid-call: the audio goes on, and
    // the hang-up reaches the other core, which takes the call over.
    let domain = "lab.example";
    let tenant = lab.tenant(domain);
    let mut a = Baresip::start_at("10.77.0.41", "a", 440.0, 30.0);
    let mut b = Baresip::start_at("10.77.0.42", "b", 1000.0, 30.0);
    let account = |n: i64, edge: SocketAddr, extra: &str| {
        format!(
            "<sip:{n}@{domain}>;auth_pass={};outbound=\"sip:{edge}\";regint=600{extra}",
            password(n, domain)
        )
    };
    // The edges hear of the new tenant through PostgreSQL's NOTIFY: a moment.
    std::thread::sleep(Duration::from_millis(500));
    a.register(&account(2001, lab.edge(0), ""));
    b.register(&account(2002, lab.edge(1), ";answermode=auto"));
    a.command("dial", "2002");
    a.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    b.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let holder = (0..2)
        .find(|i| lab.cores[*i].metrics().get("switchyard_calls_active") == Some(&1.0))
        .expect("one core holds the call");
    lab.cores[holder].kill();
    let killed = Instant::now();
    while lab
        .edges
        .iter()
        .any(|e| e.metrics()["switchyard_core_nodes_healthy"] != 1.0)
    {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "edges still count the dead core"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "edges left the dead core out {:?} after the kill",
        killed.elapsed()
    );
    // Three seconds of audio after that, all with the core dead.
    std::thread::sleep(Duration::from_secs(3));
    a.command("hangup", "");
    a.wait_event("CALL_CLOSED", Duration::from_secs(10));
    b.wait_event("CALL_CLOSED", Duration::from_secs(10));
    for (phone, own, other) in [(&a, 440.0, 1000.0), (&b, 1000.0, 440.0)] {
        let (rate, samples) = read_wav(&phone.heard());
        let secs = samples.len() as f64 / f64::from(rate);
        assert!(secs > 5.0, "{} recorded {secs:.1} s", phone.name);
        // The last two seconds, all after the kill: still the other phone's tone.
        let tail = &samples[samples.len() - 2 * rate as usize..];
        let (heard_other, heard_own) = (goertzel(tail, rate, other), goertzel(tail, rate, own));
        assert!(
            heard_other > 1000.0 * heard_own.max(1.0),
            "{} should still hear {other} Hz after the kill: {heard_other:.0} vs its own {heard_own:.0}",
            phone.name
        );
    }
    let survivor = 1 - holder;
    assert_eq!(
        lab.cores[survivor].metrics()["switchyard_core_calls_taken_over_total"],
        1.0
    );
    // The call's audio went through a media node's kernel path past its first second
    // (each node forwards latched streams in the kernel of its own host).
    let forwarded: f64 = lab
        .media
        .iter()
        .map(|m| {
            let metrics = m.metrics();
            let series = |name: &str| {
                metrics
                    .iter()
                    .find(|(k, _)| k.starts_with(name))
                    .map(|(_, v)| *v)
            };
            assert_eq!(series("switchyard_media_kernel_forwarding{"), Some(1.0));
            series("switchyard_media_kernel_forwarded_packets_total{").unwrap_or(0.0)
        })
        .sum();
    assert!(
        forwarded > 200.0,
        "packets forwarded in the kernel: {forwarded}"
    );
    // Its CDR, written by the core that took it over, with both legs' RTP.
    let cdr = lab.rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let cdrs = lab.store.cdrs(&tenant, None, 10).await.unwrap();
            if let Some(c) = cdrs.into_iter().next() {
                break c;
            }
            assert!(Instant::now() < deadline, "no CDR");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(cdr.disposition, "answered");
    assert_eq!(cdr.hangup_side.as_deref(), Some("caller"));
    let legs: serde_json::Value = serde_json::from_str(&cdr.legs).unwrap();
    for leg in [0, 1] {
        assert!(
            legs[leg]["packets_received"].as_u64().unwrap() > 200,
            "{legs}"
        );
    }
}
