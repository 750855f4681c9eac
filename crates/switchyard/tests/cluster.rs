//! A cluster of separate processes on PostgreSQL and Redis: `switchyard edge` ×2,
//! `switchyard core` ×2, `switchyard media` ×2, on loopback. Phones register through
//! either edge and call each other; calls spread over both cores and both media nodes.

mod common;
#[path = "../../store/tests/common/mod.rs"]
mod store_common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::RoleProcess;
use common::baresip::Baresip;
use common::phone::{CallLeg, Phone};
use switchyard_store::Store;

const SECRET: &str = "cluster test secret";
const NONCES: &str = "cluster test nonce secret";

struct Cluster {
    rt: tokio::runtime::Runtime,
    store: Store,
    /// `switchyard api` on the cluster's store and Redis.
    api: RoleProcess,
    /// An operator key for it.
    key: String,
    media: Vec<RoleProcess>,
    cores: Vec<RoleProcess>,
    edges: Vec<RoleProcess>,
}

fn redis_url() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

impl Cluster {
    /// Two media nodes of the shared pool (ports `media_ports[i]`), two cores, two edges.
    fn start(media_ports: [&str; 2]) -> Cluster {
        Cluster::with_media(&[
            (media_ports[0], "shared", &[]),
            (media_ports[1], "shared", &[]),
        ])
    }

    /// Media nodes (ports, pool), two cores of the shared pool driving them all, two
    /// edges.
    fn with_media(media_nodes: &[(&str, &str, &[&str])]) -> Cluster {
        Cluster::with_pools(media_nodes, &["shared", "shared"])
    }

    /// Media nodes (ports, pool), a core per entry of `core_pools` (its pool), two edges.
    fn with_pools(media_nodes: &[(&str, &str, &[&str])], core_pools: &[&str]) -> Cluster {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pg = rt.block_on(store_common::postgres());
        let pg_url = pg.url.clone().unwrap();
        let store = pg.store.clone();
        std::mem::forget(pg); // the database outlives the processes using it
        let redis = redis_url();
        // Keys of this cluster only: tests run side by side on one Redis.
        let prefix = format!("sytest-cluster-{}-{}:", std::process::id(), rand_suffix());
        let with = |role: &str, extra: &[&str]| -> RoleProcess {
            let mut args = vec![
                role,
                "--redis-url",
                &redis,
                "--state-prefix",
                &prefix,
                "--cluster-secret",
                SECRET,
                "--metrics",
                "127.0.0.1:0",
            ];
            if role != "media" {
                args.extend(["--store-url", &pg_url]);
            }
            args.extend_from_slice(extra);
            RoleProcess::start(&args)
        };
        let media: Vec<RoleProcess> = media_nodes
            .iter()
            .map(|(ports, pool, extra)| {
                let mut args = vec![
                    "--control",
                    "127.0.0.1:0",
                    "--media-ports",
                    ports,
                    "--pool",
                    pool,
                ];
                args.extend_from_slice(extra);
                with("media", &args)
            })
            .collect();
        // No lists: cores find the media nodes, edges the cores, in the membership.
        let cores: Vec<RoleProcess> = core_pools
            .iter()
            .map(|pool| with("core", &["--listen", "127.0.0.1:0", "--pool", pool]))
            .collect();
        let edges: Vec<RoleProcess> = (0..2)
            .map(|_| {
                with(
                    "edge",
                    &[
                        "--udp",
                        "127.0.0.1:0",
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
                    ],
                )
            })
            .collect();
        let api = RoleProcess::start(&[
            "api",
            "--api-listen",
            "127.0.0.1:0",
            "--store-url",
            &pg_url,
            "--redis-url",
            &redis,
            "--state-prefix",
            &prefix,
        ]);
        let key = rt
            .block_on(switchyard_api::issue_key(&store, "operator", false))
            .unwrap();
        // Within a few heartbeats every edge pings both cores and every core both nodes.
        common::wait_assembled(&edges, &cores, &media, Duration::from_secs(10));
        Cluster {
            rt,
            store,
            api,
            key,
            media,
            cores,
            edges,
        }
    }

    /// A tenant with extensions 2001 and 2002 (passwords `pw-2001-DOMAIN`...).
    fn tenant(&self, domain: &str) -> String {
        self.rt.block_on(common::provision_tenant(
            &self.store,
            domain,
            &[2001, 2002, 2003, 2004],
        ))
    }

    fn edge(&self, i: usize) -> SocketAddr {
        self.edges[i].addr("UDP")
    }

    /// Places tenant `id` on a pool dedicated to it.
    fn place(&self, id: &str, pool: &str) {
        self.rt.block_on(async {
            self.store
                .create_media_pool(&switchyard_store::MediaPool {
                    name: pool.into(),
                    dedicated_tenant_id: Some(id.to_owned()),
                    max_sessions: 100,
                    cpu_percent: 100,
                    memory_mb: 512,
                    created_at: 0,
                })
                .await
                .unwrap();
            self.store
                .update_tenant(
                    id,
                    &switchyard_store::TenantChanges {
                        placement: Some(pool.into()),
                        ..Default::default()
                    },
                    None,
                )
                .await
                .unwrap();
        });
    }

    /// The nodes `/v1/cluster/nodes` lists.
    fn nodes(&self) -> Vec<serde_json::Value> {
        let reply = self
            .rt
            .block_on(
                switchyard::http_client::Conn::new(self.api.addr("API")).request(
                    "GET",
                    "/v1/cluster/nodes",
                    &self.key,
                    None,
                    None,
                ),
            )
            .unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str::<Vec<serde_json::Value>>(&reply.body).unwrap()
    }

    fn state_of(&self, id: &str) -> String {
        self.nodes()
            .into_iter()
            .find(|n| n["id"] == id)
            .map(|n| n["state"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{id} not listed"))
    }

    /// `switchyard node ARGS --api ... --key ...`: its output.
    fn node_cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("node")
            .args(args)
            .args([
                "--api",
                &self.api.addr("API").to_string(),
                "--key",
                &self.key,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "switchyard node {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for_state(&self, id: &str, state: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.state_of(id) != state {
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never {state}: {:?}",
                self.nodes()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn password(n: i64, domain: &str) -> String {
    common::extension_password(n, domain)
}

/// A registered phone of `domain` through edge `via`; waits until the edges know the
/// tenant (a change event away).
fn phone(cluster: &Cluster, domain: &str, n: i64, via: usize) -> Phone {
    let mut p = Phone::new(
        cluster.edge(via),
        domain,
        &n.to_string(),
        &password(n, domain),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = p.register();
        if status == 200 {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{domain} {n} via edge {via}: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An answered call with RTP checked both ways: the phones and their legs.
struct UpCall {
    a: Phone,
    b: Phone,
    a_leg: CallLeg,
    b_leg: CallLeg,
}

impl UpCall {
    fn start(a: Phone, b: Phone, dialled: &str) -> UpCall {
        let dialled = dialled.to_owned();
        let caller = std::thread::spawn(move || {
            let mut a = a;
            let (r, leg) = a.call(&dialled, &[0]);
            assert_eq!(r.status(), Some(200), "{r:?}");
            (a, leg.unwrap())
        });
        let mut b = b;
        let (inv, from) = b
            .wait_request("INVITE", Duration::from_secs(5))
            .expect("INVITE at the callee");
        let b_leg = b.answer(&inv, from, 200, &[0]);
        let (a, a_leg) = caller.join().unwrap();
        let _ = b.wait_request("ACK", Duration::from_secs(2));
        let call = UpCall { a, b, a_leg, b_leg };
        call.media_flows();
        call
    }

    fn media_flows(&self) {
        self.speak();
        self.hear();
    }

    /// Ten packets each way.
    fn speak(&self) {
        for seq in 0..10 {
            self.a.send_rtp(&self.a_leg, 0, seq);
            self.b.send_rtp(&self.b_leg, 0, seq);
        }
    }

    /// Both phones heard the other's ten, and nothing more.
    fn hear(&self) {
        assert_eq!(
            self.b.count_rtp_up_to(10, Duration::from_millis(500)),
            10,
            "RTP a→b"
        );
        assert_eq!(
            self.a.count_rtp_up_to(10, Duration::from_millis(500)),
            10,
            "RTP b→a"
        );
        assert_eq!(
            self.b.count_rtp(Duration::from_millis(5)),
            0,
            "no more than sent"
        );
    }

    /// The core that holds the call (the Contact it gave the caller).
    fn core(&self) -> String {
        self.a_leg
            .target
            .split('@')
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }

    fn hang_up(self) -> (Phone, Phone) {
        let UpCall {
            mut a,
            b,
            mut a_leg,
            ..
        } = self;
        let callee = std::thread::spawn(move || {
            let mut b = b;
            b.answer_next("BYE", Duration::from_secs(5), &[]);
            b
        });
        assert_eq!(a.request(&mut a_leg, "BYE", "").status(), Some(200));
        (a, callee.join().unwrap())
    }
}

/// `a` calls `b`'s number; RTP flows both ways; `a` hangs up. Returns the core's address
/// (the Contact it gave the caller) and the media port the caller was given.
fn call_and_hang_up(a: Phone, b: Phone, dialled: &str) -> (Phone, Phone, String, u16) {
    let call = UpCall::start(a, b, dialled);
    let (core, port) = (call.core(), call.a_leg.remote_rtp.unwrap().port());
    let (a, b) = call.hang_up();
    (a, b, core, port)
}

#[test]
fn phones_on_either_edge_call_each_other_over_both_cores_and_both_media_nodes() {
    let cluster = Cluster::start(["47000-47099", "47200-47299"]);
    let (mut cores, mut ports) = (BTreeSet::new(), Vec::new());
    let mut tenants = Vec::new();
    // Six tenants at least; more while one core has every call so far (calls are
    // hashed over the cores by Call-ID: six on one core happens once in 32 clusters).
    for i in 0..16 {
        if i >= 6 && cores.len() == 2 {
            break;
        }
        let domain = format!("t{i}.cluster.example");
        let tenant = cluster.tenant(&domain);
        // The caller on one edge, the callee on the other.
        let a = phone(&cluster, &domain, 2001, i % 2);
        let b = phone(&cluster, &domain, 2002, (i + 1) % 2);
        let (_a, _b, core, port) = call_and_hang_up(a, b, "2002");
        cores.insert(core);
        ports.push(port);
        tenants.push(tenant);
    }
    let core_addrs: BTreeSet<String> = cluster
        .cores
        .iter()
        .map(|c| c.addr("core").to_string())
        .collect();
    assert!(
        cores
            .iter()
            .all(|c| core_addrs.iter().any(|a| c.contains(a.as_str()))),
        "{cores:?} vs {core_addrs:?}"
    );
    assert_eq!(cores.len(), 2, "calls on both cores: {cores:?}");
    let on_first = ports.iter().filter(|p| (47000..47100).contains(*p)).count();
    let on_second = ports.iter().filter(|p| (47200..47300).contains(*p)).count();
    assert!(
        on_first > 0 && on_second > 0 && on_first + on_second == ports.len(),
        "{ports:?}"
    );
    // Every call has its CDR in PostgreSQL, answered, with RTP counted on both legs.
    cluster.rt.block_on(async {
        for tenant in &tenants {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let cdrs = loop {
                let cdrs = cluster.store.cdrs(tenant, None, 10).await.unwrap();
                if !cdrs.is_empty() || std::time::Instant::now() > deadline {
                    break cdrs;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(cdrs.len(), 1, "one CDR for {tenant}");
            assert_eq!(cdrs[0].disposition, "answered");
            let legs: serde_json::Value = serde_json::from_str(&cdrs[0].legs).unwrap();
            for (i, leg) in ["a", "b"].iter().enumerate() {
                assert_eq!(legs[i]["leg"], *leg, "{legs}");
                assert_eq!(legs[i]["packets_received"], 10, "{legs}");
            }
        }
    });
    // Each role's /metrics.
    for core in &cluster.cores {
        let m = core.metrics();
        assert_eq!(m.get("switchyard_calls_active"), Some(&0.0), "{m:?}");
    }
    for edge in &cluster.edges {
        let m = edge.metrics();
        assert_eq!(m.get("switchyard_core_nodes_healthy"), Some(&2.0), "{m:?}");
    }
    // A core believes the edge's headers only under the cluster's seal: an INVITE sent
    // straight to a core, naming a tenant and caller, is refused and nothing rings.
    let tenant = &tenants[0];
    for core in &cluster.cores {
        for seal in [
            "",
            "X-Sy-Seal: 1800000000.0123456789abcdef0123456789abcdef\r\n",
        ] {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let local = socket.local_addr().unwrap();
            let body = common::phone::sdp(local.port() + 1, &[0]);
            let invite = format!(
                "INVITE sip:2002@t0.cluster.example SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-forged{}\r\nMax-Forwards: 70\r\nFrom: <sip:2001@t0.cluster.example>;tag=f\r\nTo: <sip:2002@t0.cluster.example>\r\nCall-ID: forged-{}@x\r\nCSeq: 1 INVITE\r\nContact: <sip:2001@{local}>\r\nX-Sy-Tenant: {tenant}\r\nX-Sy-Caller: 2001\r\n{seal}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                seal.len(),
                seal.len(),
                body.len()
            );
            socket
                .send_to(invite.as_bytes(), core.addr("core"))
                .unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let status = loop {
                let (n, _) = socket.recv_from(&mut buf).expect("an answer from the core");
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if !text.starts_with("SIP/2.0 100") {
                    break text;
                }
            };
            assert!(status.starts_with("SIP/2.0 403"), "{status}");
        }
    }
    for node in &cluster.media {
        let m = node.metrics();
        assert_eq!(
            m["switchyard_media_sessions{pool=\"shared\"}"], 0.0,
            "{m:?}"
        );
        assert!(m["switchyard_media_control_requests_total{pool=\"shared\"}"] > 0.0);
        // Two cores ping it every second: none refused.
        assert_eq!(
            m["switchyard_media_control_refused_total{pool=\"shared\"}"],
            0.0
        );
    }
}

/// An attended transfer whose two calls live on different cores (calls spread by
/// Call-ID): 2001 calls 2002, 2002 consults 2003 on the other core, then refers 2001 to
/// 2003. The core the REFER reaches asks the other, through its Redis mailbox, for the
/// consultation call, takes it on and completes the transfer: 2003 is re-INVITEd onto
/// the call, 2001 and 2003 hear each other, 2002 is hung up on both calls, and each call
/// has its CDR.
#[test]
fn an_attended_transfer_takes_the_consultation_call_from_the_other_core() {
    let cluster = Cluster::start(["46000-46099", "46200-46299"]);
    let domain = "attended.cluster.example";
    let tenant = cluster.tenant(domain);
    let a = phone(&cluster, domain, 2001, 0);
    let b = phone(&cluster, domain, 2002, 1);
    let mut c = phone(&cluster, domain, 2003, 0);
    let main = UpCall::start(a, b, "2002");
    let UpCall {
        a,
        mut b,
        a_leg,
        b_leg: mut b_first,
    } = main;
    let core_of = |leg: &CallLeg| leg.target.split('@').nth(1).unwrap_or_default().to_owned();
    // 2002 consults 2003 until the consultation call lands on the other core (each try
    // is one chance in two; a try on the same core is hung up).
    let mut consultation = None;
    for _ in 0..16 {
        let consult = std::thread::spawn(move || {
            let (r, leg) = b.call("2003", &[0]);
            assert_eq!(r.status(), Some(200), "{r:?}");
            (b, leg.unwrap())
        });
        let (invite, from) = c.wait_request("INVITE", Duration::from_secs(5)).unwrap();
        let c_leg = c.answer(&invite, from, 200, &[0]);
        let (b_back, mut b_second) = consult.join().unwrap();
        b = b_back;
        let _ = c.wait_request("ACK", Duration::from_secs(2));
        if core_of(&b_second) != core_of(&b_first) {
            consultation = Some((b_second, c_leg));
            break;
        }
        let callee = std::thread::spawn(move || {
            c.answer_next("BYE", Duration::from_secs(5), &[]);
            c
        });
        assert_eq!(b.request(&mut b_second, "BYE", "").status(), Some(200));
        c = callee.join().unwrap();
    }
    let (b_second, _) = consultation.expect("a consultation call on the other core");
    let refer = b_second.refer_to_replacing(&format!("sip:2003@{domain}"));
    let asked = Instant::now();
    let accepted = b.request_with(&mut b_first, "REFER", &refer, "");
    assert_eq!(accepted.status(), Some(202), "{accepted:?}");
    // A figure for the notes, not a check: the ask through Redis is on this path.
    eprintln!("REFER to 202 across cores: {:?}", asked.elapsed());
    // 2003 is moved onto 2001's call with a re-INVITE in its dialog; the NOTIFYs and the
    // two BYEs reach 2002 meanwhile, in any order.
    let (reinvite, from) = c.wait_reinvite(Duration::from_secs(5));
    let c_leg = c.answer(&reinvite, from, 200, &[0]);
    let mut byes = 0;
    let mut notified_ok = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (byes < 2 || !notified_ok) && std::time::Instant::now() < deadline {
        let Some((req, from)) = b.recv(Duration::from_millis(200)) else {
            continue;
        };
        match req.method().map(|m| m.as_str().to_owned()).as_deref() {
            Some("BYE") => byes += 1,
            Some("NOTIFY") => {
                notified_ok |= String::from_utf8_lossy(req.body()).starts_with("SIP/2.0 200")
            }
            _ => continue,
        }
        b.answer(&req, from, 200, &[]);
    }
    assert_eq!((byes, notified_ok), (2, true), "2002 told 200 and hung up");
    // 2001 and 2003 hear each other through the call's media session.
    let joined = UpCall {
        a,
        b: c,
        a_leg,
        b_leg: c_leg,
    };
    joined.media_flows();
    let (handed, claimed): (f64, f64) = cluster.cores.iter().fold((0.0, 0.0), |(h, c), core| {
        let m = core.metrics();
        (
            h + m["switchyard_core_calls_handed_over_total"],
            c + m["switchyard_core_calls_claimed_total"],
        )
    });
    assert_eq!(
        (handed, claimed),
        (1.0, 1.0),
        "one call handed between cores"
    );
    let (_a, _c) = joined.hang_up();
    // The consultation call's CDR says it was transferred; the joined call's, that
    // 2001 hung up (tries that landed on the same core have CDRs of their own).
    cluster.rt.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let cdrs = cluster.store.cdrs(&tenant, None, 40).await.unwrap();
            let of = |from: &str, side: &str| {
                cdrs.iter().any(|c| {
                    c.disposition == "answered"
                        && c.from_uri.starts_with(from)
                        && c.hangup_side.as_deref() == Some(side)
                })
            };
            if of("sip:2002@", "transferred") && of("sip:2001@", "caller") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{cdrs:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// An operator drains the core holding a call (`switchyard node drain`): the call goes on
/// to its end, the tenant's next call goes to the other core, and the drained core says
/// so once its last call has ended; `switchyard node resume` takes it back.
#[test]
fn a_drained_core_finishes_its_calls_takes_no_new_ones_and_says_drained() {
    let cluster = Cluster::start(["47400-47499", "47600-47699"]);
    let domain = "drain.cluster.example";
    cluster.tenant(domain);
    let call = UpCall::start(
        phone(&cluster, domain, 2001, 0),
        phone(&cluster, domain, 2002, 1),
        "2002",
    );
    let held_by = call.core();
    let id = format!("core@{held_by}");
    assert_eq!(cluster.state_of(&id), "active");
    let listed = cluster.node_cli(&["list"]);
    assert!(listed.contains(&id), "{listed}");
    cluster.node_cli(&["drain", &id]);
    cluster.wait_for_state(&id, "draining");
    // Edges read the records every second: give them one.
    std::thread::sleep(Duration::from_millis(1500));
    let other = UpCall::start(
        phone(&cluster, domain, 2003, 0),
        phone(&cluster, domain, 2004, 1),
        "2004",
    );
    assert_ne!(
        other.core(),
        held_by,
        "a new call of the tenant avoids the drained core"
    );
    other.hang_up();
    // The first call was never touched: media still flows, and it ends cleanly.
    call.media_flows();
    assert_eq!(cluster.state_of(&id), "draining", "a call is still up");
    call.hang_up();
    cluster.wait_for_state(&id, "drained");
    cluster.node_cli(&["resume", &id]);
    cluster.wait_for_state(&id, "active");
}

/// A tenant placed on a dedicated pool: its calls only ever use that pool's media node
/// and core, and another tenant's calls never do.
#[test]
fn a_tenant_on_a_dedicated_pool_uses_only_that_pools_media_nodes_and_core() {
    let cluster = Cluster::with_pools(
        &[
            ("48000-48099", "shared", &[]),
            ("48200-48299", "shared", &[]),
            ("48400-48499", "gold", &[]),
        ],
        &["shared", "shared", "gold"],
    );
    let gold_core = cluster.cores[2].addr("core").to_string();
    let gold = "gold.cluster.example";
    let plain = "plain.cluster.example";
    let gold_id = cluster.tenant(gold);
    cluster.tenant(plain);
    cluster.place(&gold_id, "gold");
    // Edges pick a tenant's cores by the placement their directory holds, which the
    // change event (PostgreSQL NOTIFY) updates a moment after the write.
    std::thread::sleep(Duration::from_secs(1));
    let in_gold = |port: u16| (48400..48500).contains(&port);
    for (domain, on_gold) in [(gold, true), (plain, false)] {
        let (mut a, mut b) = (
            phone(&cluster, domain, 2001, 0),
            phone(&cluster, domain, 2002, 1),
        );
        for i in 0..4 {
            let (na, nb, core, port) = call_and_hang_up(a, b, "2002");
            (a, b) = (na, nb);
            assert_eq!(in_gold(port), on_gold, "{domain} call {i} on port {port}");
            assert_eq!(
                core == gold_core,
                on_gold,
                "{domain} call {i} on core {core}"
            );
        }
    }
    let gold_node = cluster.media[2].metrics();
    assert_eq!(gold_node["switchyard_media_sessions{pool=\"gold\"}"], 0.0);
}

/// `kill -9` of a core with calls still ringing: they cannot be carried on (their
/// transactions lived in the dead core), so both sides are ended cleanly instead of
/// ringing on. The caller's edge answers its INVITE `503`; the callee's edge CANCELs the
/// dead core's INVITE and acknowledges the phone's `487`. Calls ringing on the live core
/// go on untouched.
#[test]
fn calls_still_ringing_on_a_killed_core_end_cleanly_on_both_sides() {
    let mut cluster = Cluster::start(["45000-45099", "45200-45299"]);
    let cores: Vec<String> = cluster
        .cores
        .iter()
        .map(|c| c.addr("core").to_string())
        .collect();
    // Ringing calls of six tenants at least, more until both cores hold some (calls
    // spread by Call-ID); each call's core is the Contact of the INVITE its callee got.
    let mut ringing = Vec::new();
    for t in 0..16 {
        let on = |core: &String| {
            ringing
                .iter()
                .filter(|r: &&(String, _, _, _, _, _, _)| r.0 == *core)
                .count()
        };
        if t >= 6 && cores.iter().all(|c| on(c) > 0) {
            break;
        }
        let domain = format!("r{t}.cluster.example");
        // 2005 and 2006 are for baresips.
        cluster.rt.block_on(common::provision_tenant(
            &cluster.store,
            &domain,
            &[2003, 2004, 2005, 2006],
        ));
        let mut a = phone(&cluster, &domain, 2003, t % 2);
        let mut b = phone(&cluster, &domain, 2004, (t + 1) % 2);
        let (_, call_id, seq) = a.start_call("2004");
        let (invite, from) = b
            .wait_request("INVITE", Duration::from_secs(5))
            .expect("INVITE at the callee");
        let contact = invite
            .header(switchyard_sip::HeaderName::Contact)
            .unwrap_or_default()
            .to_owned();
        let core = cores
            .iter()
            .find(|c| contact.contains(c.as_str()))
            .unwrap_or_else(|| panic!("{contact} names a core of {cores:?}"))
            .clone();
        b.answer(&invite, from, 180, &[]);
        ringing.push((core, a, call_id, seq, b, invite, from));
    }
    let ringing_on = |i: usize| ringing.iter().filter(|r| r.0 == cores[i]).count();
    assert!(
        ringing_on(0) > 0 && ringing_on(1) > 0,
        "ringing calls on both cores"
    );
    // Two baresips: one rings the other, which does not answer. The victim is the core
    // that holds their call (its count of calls in progress rose by one).
    let domain = "r0.cluster.example";
    let account = |n: i64, edge: SocketAddr| {
        format!(
            "<sip:{n}@{domain}>;auth_pass={};outbound=\"sip:{edge}\";regint=600",
            password(n, domain)
        )
    };
    let mut caller = Baresip::start("caller", 440.0, 30.0);
    let mut callee = Baresip::start("callee", 1000.0, 30.0);
    caller.register(&account(2005, cluster.edge(0)));
    callee.register(&account(2006, cluster.edge(1)));
    caller.command("dial", "2006");
    callee.wait_event("CALL_INCOMING", Duration::from_secs(10));
    caller.wait_event("CALL_RINGING", Duration::from_secs(10));
    let victim = (0..2)
        .find(|i| {
            cluster.cores[*i].metrics()["switchyard_calls_active"] == (ringing_on(*i) + 1) as f64
        })
        .expect("the core holding the baresips' call");
    let on_victim = ringing_on(victim);
    let ringing: Vec<_> = ringing
        .into_iter()
        .map(|(core, a, call_id, seq, b, invite, from)| {
            (core == cores[victim], a, call_id, seq, b, invite, from)
        })
        .collect();
    cluster.cores[victim].kill();
    // Both baresips close the call: the callee on the edge's CANCEL, the caller on its `503`.
    let closed = callee.wait_event("CALL_CLOSED", Duration::from_secs(5));
    eprintln!("callee: {closed}");
    let closed = caller.wait_event("CALL_CLOSED", Duration::from_secs(5));
    eprintln!("caller: {closed}");
    assert!(
        closed.to_string().contains("503"),
        "the caller is told why: {closed}"
    );
    // The edges count what they did for the dead core's ringing calls: a CANCEL and a
    // `503` for each (the baresips' call among them).
    let total = |name: &str| -> f64 { cluster.edges.iter().map(|e| e.metrics()[name]).sum() };
    assert_eq!(
        total("switchyard_edge_core_lost_invites_cancelled_total"),
        (on_victim + 1) as f64
    );
    assert_eq!(
        total("switchyard_edge_core_lost_callers_answered_total"),
        (on_victim + 1) as f64
    );
    for (lost, mut a, call_id, seq, mut b, invite, from) in ringing {
        if lost {
            let (cancel, cancel_from) = b
                .wait_request("CANCEL", Duration::from_secs(5))
                .expect("the callee of a dead core's call is CANCELled");
            assert_eq!(cancel.call_id().ok(), invite.call_id().ok());
            b.answer(&cancel, cancel_from, 200, &[]);
            b.answer(&invite, from, 487, &[]);
            assert!(
                b.wait_request("ACK", Duration::from_secs(3)).is_some(),
                "the edge acknowledges the 487 in the dead core's place"
            );
            let r = a
                .final_response(&call_id, seq, Duration::from_secs(5))
                .expect("the caller of a dead core's call is answered");
            assert_eq!(r.status(), Some(503), "{r:?}");
        } else {
            // Untouched: the callee answers and the caller gets its 200.
            assert!(
                b.wait_request("CANCEL", Duration::from_millis(100))
                    .is_none(),
                "a live core's call is not cancelled"
            );
            b.answer(&invite, from, 200, &[0]);
            let r = a
                .final_response(&call_id, seq, Duration::from_secs(5))
                .expect("the live core's call is answered");
            assert_eq!(r.status(), Some(200), "{r:?}");
        }
    }
}

/// `kill -9` of a core with calls up: each of its calls goes on (media never stopped:
/// it lives on the media nodes), the other core takes them over from their records in
/// Redis when their next request arrives (a re-INVITE to hold works, a BYE ends the call
/// on both legs with a CDR), and new calls go to the live core.
#[test]
fn calls_of_a_core_killed_with_sigkill_are_taken_over_by_the_other_core() {
    let mut cluster = Cluster::start(["48600-48699", "48800-48899"]);
    let mut calls = Vec::new();
    for t in 0..10 {
        let domain = format!("k{t}.cluster.example");
        cluster.tenant(&domain);
        for (caller, callee) in [(2001, 2002), (2003, 2004)] {
            calls.push(UpCall::start(
                phone(&cluster, &domain, caller, t % 2),
                phone(&cluster, &domain, callee, (t + 1) % 2),
                &callee.to_string(),
            ));
        }
    }
    assert_eq!(calls.len(), 20);
    let victim = cluster.cores[0].addr("core").to_string();
    let survivor = cluster.cores[1].addr("core").to_string();
    let on_victim = calls.iter().filter(|c| c.core() == victim).count();
    assert!(
        on_victim > 0 && on_victim < 20,
        "calls on both cores: {on_victim} on the victim"
    );
    let writes_before = cluster.cores[0].metrics()["switchyard_core_dialog_writes_total"];
    assert_eq!(
        writes_before, on_victim as f64,
        "one record per answered call"
    );
    cluster.cores[0].kill();
    let killed = Instant::now();
    // Media goes on at once: it never passed through the core.
    for call in &calls {
        call.speak();
    }
    for call in &calls {
        call.hear();
    }
    // The edges leave the dead core out within a ping (every 0.5 s): its host answers
    // the ping "port unreachable". Before its membership record expires (3 s), which
    // is how long a dead core used to take new calls of its tenants.
    loop {
        // Every edge, not just one: a BYE through an edge that still counts the dead
        // core would be sent there.
        let most_counted = cluster
            .edges
            .iter()
            .map(|e| e.metrics()["switchyard_core_nodes_healthy"])
            .fold(0.0, f64::max);
        if most_counted == 1.0 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "edges still count the dead core"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "edges left the dead core out {:?} after the kill",
        killed.elapsed()
    );
    // The dead core's calls go on, so they keep their tenants' slots (a tenant at its
    // max_calls cannot place more calls than it has) until their BYEs.
    let slots = |cluster: &Cluster| -> f64 {
        cluster
            .edges
            .iter()
            .map(|e| e.metrics()["switchyard_edge_calls_in_progress"])
            .sum()
    };
    assert_eq!(slots(&cluster), 20.0, "every call still holds its slot");
    // A new call goes to the live core.
    let domain = "after.cluster.example";
    cluster.tenant(domain);
    let fresh = UpCall::start(
        phone(&cluster, domain, 2001, 0),
        phone(&cluster, domain, 2002, 1),
        "2002",
    );
    assert_eq!(fresh.core(), survivor);
    fresh.hang_up();
    // Every call still works: one on the dead core holds (re-INVITE), then all end.
    let mut held = false;
    for mut call in calls {
        let was_on_victim = call.core() == victim;
        if was_on_victim && !held {
            held = true;
            let hold =
                common::phone::sdp(call.a.rtp_port(), &[0]).replace("a=sendrecv", "a=sendonly");
            let callee = std::thread::spawn(move || {
                let mut b = call.b;
                let (re, from) = b
                    .wait_request("INVITE", Duration::from_secs(5))
                    .expect("the re-INVITE reaches the callee through the new core");
                let offer = String::from_utf8_lossy(re.body()).into_owned();
                b.answer(&re, from, 200, &[0]);
                let _ = b.wait_request("ACK", Duration::from_secs(2));
                (b, offer)
            });
            let r = call.a.request(&mut call.a_leg, "INVITE", &hold);
            assert_eq!(r.status(), Some(200), "hold on a taken-over call: {r:?}");
            let (b, offer) = callee.join().unwrap();
            assert!(offer.contains("a=sendonly"), "{offer}");
            call.b = b;
        }
        call.hang_up();
    }
    assert!(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while slots(&cluster) != 0.0 {
        assert!(Instant::now() < deadline, "{} slots left", slots(&cluster));
        std::thread::sleep(Duration::from_millis(50));
    }
    let survivor_metrics = cluster.cores[1].metrics();
    assert_eq!(
        survivor_metrics["switchyard_core_calls_taken_over_total"], on_victim as f64,
        "{survivor_metrics:?}"
    );
    assert_eq!(survivor_metrics["switchyard_calls_active"], 0.0);
    // A CDR for every call, answered, in PostgreSQL.
    cluster.rt.block_on(async {
        for t in 0..10 {
            let tenant_id = cluster
                .store
                .tenant_by_domain(&format!("k{t}.cluster.example"))
                .await
                .unwrap()
                .id;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let cdrs = cluster.store.cdrs(&tenant_id, None, 10).await.unwrap();
                if cdrs.len() == 2 {
                    assert!(cdrs.iter().all(|c| c.disposition == "answered"), "{cdrs:?}");
                    break;
                }
                assert!(Instant::now() < deadline, "k{t}: {} CDRs", cdrs.len());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
}

/// A media node confined to a cgroup with little CPU (`--cgroup`, `--cpu-percent 3`),
/// the only node of a tenant's dedicated pool, is flooded: it reports its CPU pressure,
/// says it is saturated, and the tenant's next call is refused (`503`) rather than put
/// on it; meanwhile another tenant's call on the shared pool's node loses no packet.
#[test]
fn a_saturated_media_node_reports_its_pressure_and_takes_no_call_while_other_pools_stay_clean() {
    let cgroup = format!("sytest-{}", std::process::id());
    // Declared before the cluster, so dropped after its processes are gone: whatever
    // happens, no cgroup of this test is left behind.
    let _cleanup = CgroupCleanup(cgroup.clone());
    let mut cluster = Cluster::with_media(&[
        (
            "49000-49199",
            "small",
            &[
                "--cgroup",
                &cgroup,
                "--cpu-percent",
                "3",
                "--saturated-pressure",
                "10",
            ],
        ),
        ("49400-49599", "shared", &[]),
    ]);
    let (small, plain) = ("small.cluster.example", "plain2.cluster.example");
    let small_id = cluster.tenant(small);
    cluster.tenant(plain);
    cluster.place(&small_id, "small");
    let flooded = UpCall::start(
        phone(&cluster, small, 2001, 0),
        phone(&cluster, small, 2002, 1),
        "2002",
    );
    assert!((49000..49200).contains(&flooded.a_leg.remote_rtp.unwrap().port()));
    let clean = UpCall::start(
        phone(&cluster, plain, 2001, 0),
        phone(&cluster, plain, 2002, 1),
        "2002",
    );
    assert!((49400..49600).contains(&clean.a_leg.remote_rtp.unwrap().port()));
    // The flood: as fast as one thread sends, into the confined node.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, dest) = (stop.clone(), flooded.a_leg.remote_rtp.unwrap());
        std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut packet = vec![0x80u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            packet.extend([0xd5u8; 160]);
            let mut seq = 0u16;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq = seq.wrapping_add(1);
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                let _ = socket.send_to(&packet, dest);
            }
        })
    };
    // The clean call speaks throughout, 20 ms apart, while the confined node saturates.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0u16;
    let saturated = loop {
        for _ in 0..10 {
            clean.a.send_rtp(&clean.a_leg, 0, sent);
            clean.b.send_rtp(&clean.b_leg, 0, sent);
            sent += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let m = cluster.media[0].metrics();
        if m.get("switchyard_media_saturated{pool=\"small\"}") == Some(&1.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "never saturated: {m:?}");
    };
    assert!(
        saturated["switchyard_media_cpu_pressure_percent{pool=\"small\",window=\"10s\"}"] >= 10.0,
        "{saturated:?}"
    );
    // Per tenant: the small tenant's calls see it; the plain tenant has none there.
    assert!(
        saturated[&format!(
            "switchyard_media_tenant_cpu_pressure_percent{{pool=\"small\",tenant=\"{small_id}\",window=\"10s\"}}"
        )] >= 10.0,
        "{saturated:?}"
    );
    assert!(
        !saturated
            .keys()
            .any(|k| k.starts_with("switchyard_media_tenant_cpu") && !k.contains(&small_id)),
        "{saturated:?}"
    );
    // The cores hear it at their next ping: the small pool has no room.
    std::thread::sleep(Duration::from_millis(1500));
    let mut caller = phone(&cluster, small, 2003, 0);
    let (r, _) = caller.call("2004", &[0]);
    assert_eq!(r.status(), Some(503), "{r:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().unwrap();
    // Every packet of the clean call arrived, both ways: no gap.
    let (heard_b, heard_a) = (
        clean
            .b
            .count_rtp_up_to(usize::from(sent), Duration::from_secs(1)),
        clean
            .a
            .count_rtp_up_to(usize::from(sent), Duration::from_secs(1)),
    );
    assert_eq!((heard_b, heard_a), (usize::from(sent), usize::from(sent)));
    clean.hang_up();
    // A clean stop takes the node out of its cgroups and removes them.
    assert!(
        cluster.media[0]
            .terminate(Duration::from_secs(10))
            .is_some()
    );
    for tree in ["cpu", "unified"] {
        let dir = std::path::Path::new("/sys/fs/cgroup")
            .join(tree)
            .join(&cgroup);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// Removes a test's cgroups (empty once its processes died).
struct CgroupCleanup(String);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        for tree in ["cpu", "unified"] {
            let _ = std::fs::remove_dir(
                std::path::Path::new("/sys/fs/cgroup")
                    .join(tree)
                    .join(&self.0),
            );
        }
    }
}
