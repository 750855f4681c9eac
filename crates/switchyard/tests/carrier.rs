//! Calls to and from the phone network through a real carrier: Kamailio (Debian package)
//! plays the carrier on 127.0.0.7, with a baresip "PSTN phone" registered to it. The
//! operator adds Kamailio as a carrier (by source address) and the tenant two trunks to
//! it with outbound routes: the first to a gateway of the carrier that answers `503`, the
//! second to the working one. A PSTN call to the tenant's number rings the ring group it
//! points at (two baresip office phones; one answers) and each side hears the other's
//! tone; an office phone's call to an external number fails over from the first trunk to
//! the second, shows the tenant's number as the caller and rings the PSTN phone; the
//! office phone then transfers the PSTN party to the desk phone. Runs in its own network
//! namespace (`common::netns`).
//!
//! A second carrier (Kamailio on 127.0.0.9) wants its customers to register: the operator
//! adds it with digest credentials and no networks; the edge registers, answering the
//! challenge, and the carrier's call to a number, sent to the Contact we registered with
//! the number in To, rings the extension the number points at.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Server;
use common::baresip::{Baresip, account, free_port_pair, goertzel, read_wav};

const CARRIER_IP: &str = "127.0.0.7";
/// The carrier we register to.
const REGISTRAR_IP: &str = "127.0.0.9";
const DID: &str = "+15550100001";
const PSTN_PHONE: &str = "+4930555";

struct Kamailio {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// A socket of the carrier that answers every INVITE `503`.
    failing_port: u16,
}

impl Kamailio {
    fn start(edge: std::net::SocketAddr) -> Kamailio {
        let port = free_port_pair();
        let failing_port = loop {
            let p = free_port_pair();
            if p != port && p != port + 1 && p + 1 != port {
                break p;
            }
        };
        let cfg = include_str!("carrier/kamailio.cfg")
            .replace("@LISTEN@", &format!("{CARRIER_IP}:{port}"))
            .replace("@FAILING_PORT@", &failing_port.to_string())
            .replace("@FAILING@", &format!("{CARRIER_IP}:{failing_port}"))
            .replace("@EDGE_PORT@", &edge.port().to_string())
            .replace("@EDGE@", &edge.to_string());
        Kamailio::run(&cfg, CARRIER_IP, port, failing_port)
    }

    /// The carrier that wants us to register as `user` with `password`.
    fn registrar(user: &str, password: &str) -> Kamailio {
        let port = free_port_pair();
        let cfg = include_str!("carrier/registrar.cfg")
            .replace("@LISTEN@", &format!("{REGISTRAR_IP}:{port}"))
            .replace("@HOST@", REGISTRAR_IP)
            .replace("@USER@", user)
            .replace("@PASSWORD@", password);
        Kamailio::run(&cfg, REGISTRAR_IP, port, 0)
    }

    fn run(cfg: &str, ip: &str, port: u16, failing_port: u16) -> Kamailio {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kamailio.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
        let child = Command::new("kamailio")
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("kamailio is installed (.ci/run installs it)");
        // Ready once it answers an OPTIONS... it answers 405 to it, which is an answer.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let local = probe.local_addr().unwrap();
        for i in 0..50 {
            let options = common::options("UDP", local, &format!("probe-{i}"));
            probe.send_to(options.as_bytes(), (ip, port)).unwrap();
            let mut buf = [0u8; 2048];
            if probe.recv_from(&mut buf).is_ok() {
                return Kamailio {
                    child,
                    dir,
                    port,
                    failing_port,
                };
            }
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "kamailio did not start; its log:\n{}",
            std::fs::read_to_string(dir.path().join("kamailio.log")).unwrap_or_default()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn demo_credentials(server: &Server) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(server.data_dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap()
}

/// The id of the tenant's extension whose username `ext` (from the demo credentials) has.
fn extension_id(server: &Server, tenant: &str, ext: &serde_json::Value) -> String {
    let (_, exts) = server.api("GET", &format!("/v1/tenants/{tenant}/extensions"), None);
    exts["items"]
        .as_array()
        .or(exts.as_array())
        .unwrap()
        .iter()
        .find(|e| e["username"] == ext["username"])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn created(server: &Server, path: &str, body: &str) -> serde_json::Value {
    let (status, reply) = server.api("POST", path, Some(body));
    assert!(status == 201 || status == 200, "{path}: {status} {reply}");
    reply
}

/// Each phone heard the other's tone and not its own.
fn heard_each_other(a: &Baresip, a_tone: f64, b: &Baresip, b_tone: f64) {
    for (phone, own, other) in [(a, a_tone, b_tone), (b, b_tone, a_tone)] {
        let (rate, samples) = read_wav(&phone.heard());
        assert!(
            samples.len() as u32 > rate,
            "{} heard too little",
            phone.name
        );
        let (heard_other, heard_own) = (
            goertzel(&samples, rate, other),
            goertzel(&samples, rate, own),
        );
        assert!(
            heard_other > 1000.0 * heard_own.max(1.0),
            "{} should hear {other} Hz, not {own} Hz: {heard_other:.0} vs {heard_own:.0}",
            phone.name
        );
    }
}

#[test]
fn calls_to_and_from_the_phone_network_pass_through_a_real_carrier() {
    if common::netns::run_isolated(
        "calls_to_and_from_the_phone_network_pass_through_a_real_carrier",
    ) {
        return;
    }
    // Two call engines: the carrier's requests for a number reach its tenant's engine.
    let server = Server::start(&["--core-shards", "2"]);
    let creds = demo_credentials(&server);
    let domain = creds["domain"].as_str().unwrap();
    let tenant = creds["tenant_id"].as_str().unwrap();
    let office_ext = &creds["extensions"][0];
    let edge = server.addr("UDP");
    let carrier = Kamailio::start(edge);

    // The operator's carrier, the tenant's number pointing at extension 1001, and the
    // tenant's trunk to the carrier with a route for numbers dialled with 00.
    created(
        &server,
        "/v1/carriers",
        &format!(r#"{{"name":"kamailio","addresses":["{CARRIER_IP}"]}}"#),
    );
    created(
        &server,
        "/v1/numbers",
        &format!(r#"{{"numbers":["{DID}"]}}"#),
    );
    let number = created(&server, &format!("/v1/tenants/{tenant}/numbers"), "");
    assert_eq!(number["number"], DID);
    let id_of = |ext: &serde_json::Value| extension_id(&server, tenant, ext);
    let desk_ext = &creds["extensions"][1];
    let group = created(
        &server,
        &format!("/v1/tenants/{tenant}/resources/ring_group"),
        &format!(
            r#"{{"name":"front-desk","spec":{{"strategy":"simultaneous","members":["{}","{}"],"ring_seconds":20}}}}"#,
            id_of(office_ext),
            id_of(desk_ext)
        ),
    );
    let (s, r) = server.api(
        "PUT",
        &format!(
            "/v1/tenants/{tenant}/numbers/{}/target",
            DID.replace('+', "%2B")
        ),
        Some(&format!(
            r#"{{"target":{{"kind":"ring_group","id":"{}"}}}}"#,
            group["id"].as_str().unwrap()
        )),
    );
    assert!(s < 300, "{s} {r}");
    for (name, port, priority) in [
        ("failing-gateway", carrier.failing_port, 1),
        ("carrier", carrier.port, 2),
    ] {
        let trunk = created(
            &server,
            &format!("/v1/tenants/{tenant}/resources/trunk"),
            &format!(
                r#"{{"name":"{name}","spec":{{"host":"{CARRIER_IP}","port":{port},"transport":"udp","codecs":["PCMU","PCMA"],"max_channels":10,"username":null,"password":null}}}}"#
            ),
        );
        created(
            &server,
            &format!("/v1/tenants/{tenant}/resources/outbound_route"),
            &format!(
                r#"{{"name":"international-{priority}","spec":{{"pattern":"00.","trunk_id":"{}","strip_digits":2,"prefix":"+","priority":{priority}}}}}"#,
                trunk["id"].as_str().unwrap()
            ),
        );
    }
    // The change events reach the edge's carrier table and the core's cache.
    std::thread::sleep(Duration::from_secs(1));

    let mut pstn = Baresip::start("pstn", 1000.0, 30.0);
    pstn.register(&format!(
        "<sip:{PSTN_PHONE}@{CARRIER_IP}:{}>;regint=600;answermode=auto",
        carrier.port
    ));
    let mut office = Baresip::start("office", 440.0, 30.0);
    office.register(&account(domain, office_ext, edge, ";answermode=auto"));
    // The desk phone rings but does not answer.
    let mut desk = Baresip::start("desk", 700.0, 30.0);
    desk.register(&account(domain, desk_ext, edge, ";answermode=manual"));

    // In: the PSTN phone dials the tenant's number at its carrier.
    pstn.command("dial", &format!("sip:{DID}@{CARRIER_IP}:{}", carrier.port));
    let established = |phone: &Baresip, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let n = phone
                .events()
                .iter()
                .filter(|e| e["type"] == "CALL_ESTABLISHED")
                .count();
            if n > 0 {
                return n;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{what}: {} never established; serve:\n{}\nkamailio:\n{}",
            phone.name,
            server.log(),
            carrier.log()
        );
    };
    established(&pstn, "PSTN call in");
    established(&office, "PSTN call in");
    desk.wait_event("CALL_INCOMING", Duration::from_secs(5));
    desk.wait_event("CALL_CLOSED", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    pstn.command("hangup", "");
    pstn.wait_event("CALL_CLOSED", Duration::from_secs(10));
    office.wait_event("CALL_CLOSED", Duration::from_secs(10));
    heard_each_other(&pstn, 1000.0, &office, 440.0);

    // Out: the office phone dials an international number; it leaves through the trunk
    // and rings the PSTN phone registered at the carrier.
    let closed_before = |phone: &Baresip| {
        phone
            .events()
            .iter()
            .filter(|e| e["type"] == "CALL_CLOSED")
            .count()
    };
    let (pstn_closed, office_closed) = (closed_before(&pstn), closed_before(&office));
    office.command("dial", &format!("00{}", PSTN_PHONE.trim_start_matches('+')));
    let wait_n = |phone: &Baresip, kind: &str, n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if phone.events().iter().filter(|e| e["type"] == kind).count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{}: no {kind} #{n}; serve:\n{}\nkamailio:\n{}",
            phone.name,
            server.log(),
            carrier.log()
        );
    };
    wait_n(&office, "CALL_ESTABLISHED", 2);
    wait_n(&pstn, "CALL_ESTABLISHED", 2);
    std::thread::sleep(Duration::from_secs(1));
    // The office phone hands the PSTN party to the desk phone: a blind transfer on a call
    // whose other leg is the trunk. The desk answers, the office leaves, the PSTN phone
    // stays up with the desk.
    let desk_closed = closed_before(&desk);
    office.command(
        "transfer",
        &format!("sip:{}@{domain}", desk_ext["number"].as_str().unwrap()),
    );
    wait_n(&desk, "CALL_INCOMING", 2);
    desk.command("accept", "");
    wait_n(&desk, "CALL_ESTABLISHED", 1);
    wait_n(&office, "CALL_CLOSED", office_closed + 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        closed_before(&pstn),
        pstn_closed,
        "the PSTN phone stays up through the transfer; serve:\n{}",
        server.log()
    );
    pstn.command("hangup", "");
    wait_n(&pstn, "CALL_CLOSED", pstn_closed + 1);
    wait_n(&desk, "CALL_CLOSED", desk_closed + 1);

    // Two CDRs: in from the PSTN number, out to the dialled number.
    let mut cdrs = Vec::new();
    for _ in 0..100 {
        let (_, page) = server.api("GET", &format!("/v1/tenants/{tenant}/cdrs"), None);
        cdrs = page.as_array().cloned().unwrap_or_default();
        if cdrs.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cdrs.len(), 2, "{cdrs:?}");
    let inbound = cdrs
        .iter()
        .find(|c| c["from_uri"].as_str().unwrap_or("").contains(PSTN_PHONE))
        .unwrap_or_else(|| panic!("the call in: {cdrs:?}"));
    assert_eq!(inbound["disposition"], "answered", "{inbound}");
    assert_eq!(inbound["hangup_side"], "caller", "{inbound}");
    let outbound = cdrs
        .iter()
        .find(|c| c["to_uri"].as_str().unwrap_or("").contains("004930555"))
        .unwrap_or_else(|| panic!("the call out: {cdrs:?}"));
    assert_eq!(outbound["disposition"], "answered", "{outbound}");
    // It followed the transfer: the desk on leg A after it, RTP both ways through the
    // trunk leg, hung up by the PSTN side.
    assert_eq!(outbound["hangup_side"], "callee", "{outbound}");
    let legs = outbound["legs"].as_array().cloned().unwrap_or_default();
    assert!(
        legs.iter()
            .any(|l| l["reason"] == "transfer" && l["result"] == 200),
        "{outbound}"
    );
    for leg in ["a", "b"] {
        let counters = legs.iter().find(|l| l["leg"] == leg).unwrap();
        assert!(
            counters["packets_received"].as_u64().unwrap_or(0) > 100
                && counters["packets_sent"].as_u64().unwrap_or(0) > 100,
            "leg {leg}: {outbound}"
        );
    }
    let log = carrier.log();
    assert!(
        log.contains(&format!(
            "carrier: {PSTN_PHONE} refused by the failing gateway"
        )),
        "the first route's trunk was tried: {log}"
    );
    assert!(
        log.contains(&format!("carrier: {PSTN_PHONE} to a PSTN phone from {DID}")),
        "the call out failed over and showed the tenant's number: {log}"
    );
}

#[test]
fn a_carrier_we_register_to_sends_its_calls_to_our_registration() {
    if common::netns::run_isolated("a_carrier_we_register_to_sends_its_calls_to_our_registration") {
        return;
    }
    const NUMBER: &str = "+15550100002";
    let server = Server::start(&[]);
    let creds = demo_credentials(&server);
    let domain = creds["domain"].as_str().unwrap();
    let tenant = creds["tenant_id"].as_str().unwrap();
    let office_ext = &creds["extensions"][0];
    let edge = server.addr("UDP");
    let carrier = Kamailio::registrar("pbx-7", "s3cret-7");

    created(
        &server,
        "/v1/carriers",
        &format!(
            r#"{{"name":"registering","registration":{{"registrar":"{REGISTRAR_IP}:{}","username":"pbx-7","password":"s3cret-7","expires":120}}}}"#,
            carrier.port
        ),
    );
    created(
        &server,
        "/v1/numbers",
        &format!(r#"{{"numbers":["{NUMBER}"]}}"#),
    );
    let number = created(&server, &format!("/v1/tenants/{tenant}/numbers"), "");
    assert_eq!(number["number"], NUMBER);
    let office_id = extension_id(&server, tenant, office_ext);
    let (s, r) = server.api(
        "PUT",
        &format!(
            "/v1/tenants/{tenant}/numbers/{}/target",
            NUMBER.replace('+', "%2B")
        ),
        Some(&format!(
            r#"{{"target":{{"kind":"extension","id":"{office_id}"}}}}"#
        )),
    );
    assert!(s < 300, "{s} {r}");

    // The edge registers within seconds (the carrier table is read every 5 s, sooner
    // after a change), answering the carrier's challenge.
    let registered = |server: &Server| {
        server
            .metrics()
            .get("switchyard_carrier_registered{carrier=\"registering\"}")
            .copied()
            == Some(1.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !registered(&server) {
        assert!(
            std::time::Instant::now() < deadline,
            "not registered; serve:\n{}\nkamailio:\n{}",
            server.log(),
            carrier.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = carrier.log();
    assert!(
        log.contains("carrier: challenging the PBX's REGISTER"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "carrier: the PBX registered as pbx-7 with contact <sip:pbx-7@{edge}>"
        )),
        "{log}"
    );

    // Someone who is not the carrier cannot use our registered name to reach the number.
    let spoof = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    spoof
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let local = spoof.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:pbx-7@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKspoof1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:+4930666@{local}>;tag=s\r\nTo: <sip:{NUMBER}@{edge}>\r\nCall-ID: spoof-1\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{local}>\r\nContent-Length: 0\r\n\r\n"
    );
    spoof.send_to(invite.as_bytes(), edge).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = spoof
        .recv_from(&mut buf)
        .expect("an answer to the spoofed INVITE");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status: u16 = answer[8..11].parse().unwrap();
    assert!(
        matches!(status, 403 | 404),
        "a non-carrier source is refused: {answer}"
    );

    // The PSTN phone (registered at the carrier) calls the number: the carrier sends it
    // to our registration, and extension 1001 answers.
    let mut pstn = Baresip::start("pstn", 1000.0, 30.0);
    pstn.register(&format!(
        "<sip:{PSTN_PHONE}@{REGISTRAR_IP}:{}>;regint=600;answermode=auto",
        carrier.port
    ));
    let mut office = Baresip::start("office", 440.0, 30.0);
    office.register(&account(domain, office_ext, edge, ";answermode=auto"));
    pstn.command(
        "dial",
        &format!("sip:{NUMBER}@{REGISTRAR_IP}:{}", carrier.port),
    );
    for phone in [&pstn, &office] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !phone
            .events()
            .iter()
            .any(|e| e["type"] == "CALL_ESTABLISHED")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never established; serve:\n{}\nkamailio:\n{}",
                phone.name,
                server.log(),
                carrier.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    pstn.command("hangup", "");
    pstn.wait_event("CALL_CLOSED", Duration::from_secs(10));
    office.wait_event("CALL_CLOSED", Duration::from_secs(10));
    heard_each_other(&pstn, 1000.0, &office, 440.0);
    assert!(
        carrier
            .log()
            .contains(&format!("carrier: {NUMBER} to the PBX at sip:pbx-7@{edge}")),
        "{}",
        carrier.log()
    );

    let mut cdrs = Vec::new();
    for _ in 0..100 {
        let (_, page) = server.api("GET", &format!("/v1/tenants/{tenant}/cdrs"), None);
        cdrs = page.as_array().cloned().unwrap_or_default();
        if !cdrs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(cdrs[0]["disposition"], "answered", "{}", cdrs[0]);
    assert!(
        cdrs[0]["from_uri"]
            .as_str()
            .unwrap_or("")
            .contains(PSTN_PHONE),
        "{}",
        cdrs[0]
    );
}
