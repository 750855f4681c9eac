//! Calls between real softphones (baresip, Debian package) through `switchyard serve
//! --demo`: registration, a call where each side plays its own tone and must hear only
//! the other's, hang-up, and the CDR with both legs' counters. Also with transcoding
//! (a PCMU-only phone calls a PCMA-only one) and with one phone over TCP. Each test runs
//! in its own network namespace (`common::netns`), so the phones can reach nothing but
//! loopback.

mod common;

use std::time::Duration;

use common::Server;
use common::baresip::{Baresip, account, goertzel, read_wav};
use common::linphone::Linphone;

fn demo_credentials(server: &Server) -> serde_json::Value {
    let text = std::fs::read_to_string(server.data_dir.path().join("demo-credentials.json"))
        .expect("serve --demo writes demo-credentials.json");
    serde_json::from_str(&text).unwrap()
}

fn api_get(server: &Server, path: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = server.api_key.clone().unwrap();
    let reply = rt
        .block_on(async {
            switchyard::http_client::Conn::new(server.addr("API"))
                .request("GET", path, &key, None, None)
                .await
        })
        .unwrap();
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// POSTs `body` with the demo operator key and expects `201`.
fn api_post(server: &Server, path: &str, body: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = server.api_key.clone().unwrap();
    let reply = rt
        .block_on(async {
            switchyard::http_client::Conn::new(server.addr("API"))
                .request("POST", path, &key, None, Some(body))
                .await
        })
        .unwrap();
    assert_eq!(reply.status, 201, "{path}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// Adds extension 1003 to the demo tenant; its credentials as the demo's are written.
fn third_extension(server: &Server, tenant: &str, password: &str) -> serde_json::Value {
    let ranges = api_get(server, &format!("/v1/tenants/{tenant}/extension-ranges"));
    api_post(
        server,
        &format!("/v1/tenants/{tenant}/extensions"),
        &format!(
            r#"{{"range_id":"{}","number":1003,"password":"{password}"}}"#,
            ranges[0]["id"].as_str().unwrap()
        ),
    );
    serde_json::json!({"username": "1003", "password": password})
}

/// Waits for the CDR of the softphones' call: the newest of a call that was answered
/// (calls refused along the way, bad input included, have CDRs of their own).
fn wait_cdr(server: &Server, tenant: &str) -> serde_json::Value {
    for _ in 0..100 {
        let page = api_get(server, &format!("/v1/tenants/{tenant}/cdrs"));
        let items = page.as_array().cloned().unwrap_or_default();
        if let Some(cdr) = items.iter().find(|c| !c["answered_at"].is_null()) {
            return cdr.clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no CDR written; server log:\n{}", server.log());
}

struct CallOutcome {
    cdr: serde_json::Value,
    legs: serde_json::Value,
}

/// A (440 Hz) calls B (1000 Hz, auto-answer); after 3 s A hangs up. Checks what each heard.
fn call_and_check(a_extra: &str, b_extra: &str, a_transport: &str) -> CallOutcome {
    let server = Server::start(&[]);
    let creds = demo_credentials(&server);
    let domain = creds["domain"].as_str().unwrap();
    let tenant = creds["tenant_id"].as_str().unwrap();
    let exts = creds["extensions"].as_array().unwrap();
    let mut a = Baresip::start("a", 440.0, 20.0);
    let mut b = Baresip::start("b", 1000.0, 20.0);
    let a_extra = if a_transport == "TCP" {
        format!("{a_extra};transport=tcp")
    } else {
        a_extra.to_owned()
    };
    a.register(&account(
        domain,
        &exts[0],
        server.addr(a_transport),
        &a_extra,
    ));
    b.register(&account(
        domain,
        &exts[1],
        server.addr("UDP"),
        &format!("{b_extra};answermode=auto"),
    ));
    if a_transport == "TCP" {
        assert!(
            server
                .log()
                .lines()
                .any(|l| l.contains("registered") && l.contains("1001@") && l.contains("TCP")),
            "1001 registered over TCP"
        );
    }
    a.command("dial", exts[1]["number"].as_str().unwrap());
    a.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    b.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    a.command("hangup", "");
    a.wait_event("CALL_CLOSED", Duration::from_secs(10));
    b.wait_event("CALL_CLOSED", Duration::from_secs(10));
    for (phone, own, other) in [(&a, 440.0, 1000.0), (&b, 1000.0, 440.0)] {
        let (rate, samples) = read_wav(&phone.heard());
        assert!(
            samples.len() as u32 > 2 * rate,
            "{} recorded only {} samples",
            phone.name,
            samples.len()
        );
        let heard_other = goertzel(&samples, rate, other);
        let heard_own = goertzel(&samples, rate, own);
        assert!(
            heard_other > 1000.0 * heard_own.max(1.0),
            "{} should hear {other} Hz and not its own {own} Hz: {heard_other:.0} vs {heard_own:.0}",
            phone.name
        );
    }
    let cdr = wait_cdr(&server, tenant);
    assert_eq!(cdr["disposition"], "answered", "{cdr}");
    assert_eq!(cdr["hangup_side"], "caller", "{cdr}");
    let duration = cdr["duration_ms"].as_i64().unwrap();
    assert!((2500..15000).contains(&duration), "{cdr}");
    let legs = cdr["legs"].clone();
    for leg in [0, 1] {
        let received = legs[leg]["packets_received"].as_u64().unwrap();
        // 50 packets per second of 20 ms G.711 for about 3 s.
        assert!(received > 100, "leg {leg}: {legs}");
        assert!(
            legs[leg]["packets_sent"].as_u64().unwrap() > 100,
            "leg {leg}: {legs}"
        );
    }
    CallOutcome { cdr, legs }
}

#[test]
fn two_baresip_phones_call_hear_each_other_and_leave_a_cdr() {
    if common::netns::run_isolated("two_baresip_phones_call_hear_each_other_and_leave_a_cdr") {
        return;
    }
    let out = call_and_check("", "", "UDP");
    assert_eq!(out.legs[0]["transcoded"], 0, "{}", out.legs);
    assert!(out.cdr["from_uri"].as_str().unwrap().contains("1001"));
    assert!(out.cdr["to_uri"].as_str().unwrap().contains("1002"));
}

#[test]
fn a_pcmu_only_phone_and_a_pcma_only_phone_are_transcoded() {
    if common::netns::run_isolated("a_pcmu_only_phone_and_a_pcma_only_phone_are_transcoded") {
        return;
    }
    let out = call_and_check(
        ";audio_codecs=PCMU/8000/1",
        ";audio_codecs=PCMA/8000/1",
        "UDP",
    );
    assert!(
        out.legs[0]["transcoded"].as_u64().unwrap() > 100,
        "{}",
        out.legs
    );
    assert!(
        out.legs[1]["transcoded"].as_u64().unwrap() > 100,
        "{}",
        out.legs
    );
}

#[test]
fn a_phone_registered_over_tcp_calls_and_is_reached_over_its_connection() {
    if common::netns::run_isolated(
        "a_phone_registered_over_tcp_calls_and_is_reached_over_its_connection",
    ) {
        return;
    }
    let out = call_and_check("", "", "TCP");
    assert_eq!(out.cdr["disposition"], "answered");
}

/// Runs `sipsak` in usrloc mode: one REGISTER (answering a challenge with `password`).
fn sipsak_register(server: &Server, user: &str, domain: &str, password: &str) -> (bool, String) {
    let port = server.addr("UDP").port().to_string();
    let out = std::process::Command::new("sipsak")
        .args(["-U", "-C", &format!("sip:{user}@127.0.0.1:9"), "-s"])
        .arg(format!("sip:{user}@{domain}"))
        .args([
            "-p",
            "127.0.0.1",
            "-r",
            &port,
            "-H",
            "127.0.0.1",
            "-u",
            user,
            "-a",
            password,
        ])
        .args(["-x", "600", "-vvv"])
        .output()
        .expect("sipsak is installed (.ci/run)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The status lines of the responses sipsak printed.
fn statuses(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|l| l.strip_prefix("SIP/2.0 "))
        .filter_map(|l| l.get(..3)?.parse().ok())
        .collect()
}

#[test]
fn real_clients_are_refused_for_bad_passwords_unknown_users_domains_and_other_tenants() {
    if common::netns::run_isolated(
        "real_clients_are_refused_for_bad_passwords_unknown_users_domains_and_other_tenants",
    ) {
        return;
    }
    let server = Server::start(&[]);
    let creds = demo_credentials(&server);
    let domain = creds["domain"].as_str().unwrap();
    let exts = creds["extensions"].as_array().unwrap();
    let good = exts[0]["password"].as_str().unwrap();

    let (ok, text) = sipsak_register(&server, "1001", domain, good);
    assert!(ok, "the right password registers:\n{text}");
    assert_eq!(statuses(&text).last(), Some(&200));
    // An unknown user sees exactly what a wrong password sees (two failures counted
    // against this source).
    let (ok, unknown) = sipsak_register(&server, "7777", domain, "not-the-password");
    assert!(!ok);
    let (_, wrong) = sipsak_register(&server, "1002", domain, "not-the-password");
    assert_eq!(statuses(&unknown), statuses(&wrong));
    assert_eq!(statuses(&unknown).last(), Some(&401));
    // An unknown domain is refused.
    let (ok, text) = sipsak_register(&server, "1001", "nowhere.example", good);
    assert!(!ok);
    assert_eq!(statuses(&text).last(), Some(&404), "{text}");

    // A baresip of the demo tenant dials a number that exists only in another tenant.
    let post = |path: &str, body: String| api_post(&server, path, &body);
    let t2 = post(
        "/v1/tenants",
        r#"{"name":"T2","domain":"t2.example"}"#.into(),
    );
    let t2 = t2["id"].as_str().unwrap();
    let range = post(
        &format!("/v1/tenants/{t2}/extension-ranges"),
        r#"{"first_number":2000,"last_number":2099}"#.into(),
    );
    post(
        &format!("/v1/tenants/{t2}/extensions"),
        format!(
            r#"{{"range_id":"{}","number":2001,"password":"password-2001"}}"#,
            range["id"].as_str().unwrap()
        ),
    );
    let mut other = Baresip::start("t2", 1000.0, 20.0);
    other.register(&format!(
        "<sip:2001@t2.example>;auth_pass=password-2001;outbound=\"sip:{}\";answermode=auto",
        server.addr("UDP")
    ));
    let mut b = Baresip::start("b", 440.0, 20.0);
    b.register(&account(domain, &exts[1], server.addr("UDP"), ""));
    b.command("dial", "2001");
    let closed = b.wait_event("CALL_CLOSED", Duration::from_secs(10));
    assert!(
        closed["param"]
            .as_str()
            .unwrap_or_default()
            .starts_with("404"),
        "{closed}"
    );
    assert!(
        !other
            .events()
            .iter()
            .any(|e| e["type"] == "CALL_INCOMING" || e["type"] == "CALL_ESTABLISHED"),
        "nothing reached the other tenant's phone"
    );

    // Wrong passwords from this source: the fifth failure in the window (two above)
    // bans it, and then even the right password is refused from here.
    let mut finals = Vec::new();
    for _ in 0..3 {
        let (ok, text) = sipsak_register(&server, "1001", domain, "not-the-password");
        assert!(!ok);
        finals.push(*statuses(&text).last().unwrap());
    }
    assert_eq!(finals, [401, 401, 403]);
    let (ok, text) = sipsak_register(&server, "1001", domain, good);
    assert!(!ok);
    assert_eq!(statuses(&text).last(), Some(&403), "{text}");
}

#[test]
fn provisioning_and_bad_input_during_a_softphone_call_leave_it_untouched() {
    if common::netns::run_isolated(
        "provisioning_and_bad_input_during_a_softphone_call_leave_it_untouched",
    ) {
        return;
    }
    let server = Server::start(&[]);
    let creds = demo_credentials(&server);
    let domain = creds["domain"].as_str().unwrap();
    let tenant = creds["tenant_id"].as_str().unwrap();
    let exts = creds["extensions"].as_array().unwrap();
    let post = |path: &str, body: String| api_post(&server, path, &body);
    // Tenant 2 with one extension, registered before the call.
    let t2 = post(
        "/v1/tenants",
        r#"{"name":"T2","domain":"t2.example"}"#.into(),
    );
    let t2 = t2["id"].as_str().unwrap().to_owned();
    let range = post(
        &format!("/v1/tenants/{t2}/extension-ranges"),
        r#"{"first_number":2000,"last_number":2099}"#.into(),
    );
    let range = range["id"].as_str().unwrap().to_owned();
    let extension = |n: u32| {
        post(
            &format!("/v1/tenants/{t2}/extensions"),
            format!(r#"{{"range_id":"{range}","number":{n},"password":"password-{n}"}}"#),
        )
    };
    extension(2001);
    let t2_account = |n: u32, extra: &str| {
        format!(
            "<sip:{n}@t2.example>;auth_pass=password-{n};outbound=\"sip:{}\";regint=600{extra}",
            server.addr("UDP")
        )
    };
    let mut c = Baresip::start("c", 700.0, 30.0);
    c.register(&t2_account(2001, ""));
    let mut d = Baresip::start("d", 900.0, 30.0);

    // The call that must not notice anything: demo 1001 -> 1002.
    let mut a = Baresip::start("a", 440.0, 30.0);
    let mut b = Baresip::start("b", 1000.0, 30.0);
    a.register(&account(domain, &exts[0], server.addr("UDP"), ""));
    b.register(&account(
        domain,
        &exts[1],
        server.addr("UDP"),
        ";answermode=auto",
    ));
    a.command("dial", "1002");
    a.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    b.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));

    // 2002 is created now; it registers and is called by 2001 within a second.
    extension(2002);
    let created = std::time::Instant::now();
    d.register(&t2_account(2002, ";answermode=auto"));
    c.command("dial", "2002");
    d.wait_event("CALL_ESTABLISHED", Duration::from_secs(5));
    let reached = created.elapsed();
    eprintln!("2002 registered and was called {reached:?} after its 201");
    assert!(reached < Duration::from_secs(1), "{reached:?}");

    // Bad input at the edge meanwhile: garbage, a malformed INVITE, an INVITE with
    // broken SDP (from a scripted phone of the demo tenant).
    let mut intruder = common::phone::Phone::new(
        server.addr("UDP"),
        domain,
        "1001",
        exts[0]["password"].as_str().unwrap(),
    );
    intruder.send_raw(b"\x00\xffnot sip at all");
    intruder.send_raw(
        format!(
            "INVITE sip:1002@{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKbad\r\nMax-Forwards: 70\r\nTo: <sip:1002@{domain}>\r\nFrom: <sip:1001@{domain}>;tag=x\r\nCall-ID: bad\r\nCSeq: x INVITE\r\nContent-Length: 0\r\n\r\n",
            intruder.local()
        )
        .as_bytes(),
    );
    let (r, _) = intruder.recv(Duration::from_secs(2)).expect("a 400");
    assert_eq!(r.status(), Some(400));
    let (r, _) = intruder.call_with_body("1002", "v=0\r\nbroken\r\n");
    assert_eq!(r.status(), Some(488));
    // The refused attempt has a CDR of its own, with the status it got.
    let refused_cdr = || {
        let cdrs = api_get(&server, &format!("/v1/tenants/{tenant}/cdrs"));
        cdrs.as_array().unwrap().iter().any(|c| {
            c["disposition"] == "failed" && c["legs"].to_string().contains(r#""result":488"#)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !refused_cdr() {
        assert!(
            std::time::Instant::now() < deadline,
            "no CDR for the refused call"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    std::thread::sleep(Duration::from_secs(1));
    a.command("hangup", "");
    a.wait_event("CALL_CLOSED", Duration::from_secs(10));
    let cdr = wait_cdr(&server, tenant);
    assert_eq!(cdr["disposition"], "answered", "{cdr}");
    for leg in [0, 1] {
        let l = &cdr["legs"][leg];
        assert!(l["packets_received"].as_u64().unwrap() > 50, "{l}");
        assert_eq!(l["packets_lost"], 0, "no gap in the call's RTP: {l}");
    }
}

/// Blind transfer between real phones: baresip A (440 Hz) calls B (1000 Hz), B transfers
/// the call to C (700 Hz) with its own `transfer` command (REFER); C answers, B leaves,
/// and A and C hear each other's tones.
#[test]
fn a_baresip_transfers_its_caller_to_a_third_baresip() {
    if common::netns::run_isolated("a_baresip_transfers_its_caller_to_a_third_baresip") {
        return;
    }
    let server = Server::start(&[]);
    let creds = demo_credentials(&server);
    let domain = creds["domain"].as_str().unwrap();
    let tenant = creds["tenant_id"].as_str().unwrap();
    let exts = creds["extensions"].as_array().unwrap();
    let third = third_extension(&server, tenant, "transfer-target-1003");
    let udp = server.addr("UDP");
    let mut a = Baresip::start("a", 440.0, 30.0);
    let mut b = Baresip::start("b", 1000.0, 30.0);
    let mut c = Baresip::start("c", 700.0, 30.0);
    a.register(&account(domain, &exts[0], udp, ""));
    b.register(&account(domain, &exts[1], udp, ";answermode=auto"));
    c.register(&account(domain, &third, udp, ";answermode=auto"));
    a.command("dial", exts[1]["number"].as_str().unwrap());
    a.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    b.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    b.command("transfer", &format!("sip:1003@{domain}"));
    c.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    b.wait_event("CALL_CLOSED", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    a.command("hangup", "");
    a.wait_event("CALL_CLOSED", Duration::from_secs(10));
    c.wait_event("CALL_CLOSED", Duration::from_secs(10));
    let (rate, heard_by_a) = read_wav(&a.heard());
    let (c_rate, heard_by_c) = read_wav(&c.heard());
    let (c_tone, a_own) = (
        goertzel(&heard_by_a, rate, 700.0),
        goertzel(&heard_by_a, rate, 440.0),
    );
    assert!(
        c_tone > 1000.0 * a_own.max(1.0),
        "A hears C after the transfer: {c_tone:.0} vs own {a_own:.0}; serve:\n{}",
        server.log()
    );
    let (a_tone, c_own) = (
        goertzel(&heard_by_c, c_rate, 440.0),
        goertzel(&heard_by_c, c_rate, 700.0),
    );
    assert!(
        a_tone > 1000.0 * c_own.max(1.0),
        "C hears A: {a_tone:.0} vs own {c_own:.0}"
    );
    let cdr = wait_cdr(&server, tenant);
    assert_eq!(cdr["disposition"], "answered", "{cdr}");
}

/// Attended transfer by a real client: baresip A calls linphone B, B holds A and calls
/// baresip C, then joins them (`transfer 1 --to-call N`: REFER with Replaces). The engine
/// re-INVITEs C onto A's call and A off hold; A and C stay up with each other, B is hung
/// up on both calls, each call has its CDR, and C's RTP reaches A through the relay.
///
/// Two call engines, calls spread by Call-ID: B consults C again until the consultation
/// call lands on the other engine than A's call (the engine the REFER reaches asks the
/// other for it).
#[test]
fn linphone_joins_its_caller_to_the_party_it_consulted() {
    if common::netns::run_isolated("linphone_joins_its_caller_to_the_party_it_consulted") {
        return;
    }
    let server = Server::start(&["--core-shards", "2"]);
    let creds = demo_credentials(&server);
    let domain = creds["domain"].as_str().unwrap();
    let tenant = creds["tenant_id"].as_str().unwrap();
    let exts = creds["extensions"].as_array().unwrap();
    let third = third_extension(&server, tenant, "consulted-1003");
    let udp = server.addr("UDP");
    let mut a = Baresip::start("a", 440.0, 40.0);
    let mut c = Baresip::start("c", 700.0, 40.0);
    a.register(&account(domain, &exts[0], udp, ""));
    c.register(&account(domain, &third, udp, ";answermode=auto"));
    let mut b = Linphone::start(
        domain,
        exts[1]["username"].as_str().unwrap(),
        exts[1]["password"].as_str().unwrap(),
        udp,
    );
    b.wait_for("to [LinphoneRegistrationOk]", Duration::from_secs(10));

    a.command("dial", exts[1]["number"].as_str().unwrap());
    a.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    b.wait_for("connected", Duration::from_secs(10));
    // B holds A (a re-INVITE through the engine), then consults C.
    b.command("pause 1");
    b.wait_for("paused", Duration::from_secs(10));
    let of_c = |kind: &str| c.events().iter().filter(|e| e["type"] == kind).count();
    let until = |what: &str, done: &dyn Fn() -> bool, b: &Linphone| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}:\n{}\nserve:\n{}",
                b.output(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let active =
        |core: &str| server.metrics()[&format!("switchyard_core_calls_active{{core=\"{core}\"}}")];
    let mut consultation = 1;
    loop {
        consultation += 1;
        let tries = consultation - 1;
        b.command(&format!("call sip:1003@{domain}"));
        until(
            "C never answered B's call",
            &|| of_c("CALL_ESTABLISHED") == tries,
            &b,
        );
        until(
            "B's consultation call never connected",
            &|| b.count("connected") > tries,
            &b,
        );
        if active("core-1") == 1.0 && active("core-2") == 1.0 {
            break;
        }
        assert!(tries < 12, "every consultation call on A's engine");
        b.command(&format!("terminate {consultation}"));
        until("C still has B's call", &|| of_c("CALL_CLOSED") == tries, &b);
    }
    let tries = consultation - 1;
    eprintln!("consultation calls until one landed on the other engine: {tries}");
    std::thread::sleep(Duration::from_secs(1));
    b.command(&format!("transfer 1 --to-call {consultation}"));
    // B is hung up on both of its calls; A and C stay up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.count("ended") < 2 + (tries - 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "B still has its calls:\n{}\nserve:\n{}",
            b.output(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !a.events().iter().any(|e| e["type"] == "CALL_CLOSED") && of_c("CALL_CLOSED") == tries - 1,
        "A and C are still up after the transfer; serve:\n{}",
        server.log()
    );
    let m = server.metrics();
    assert_eq!(
        (
            m["switchyard_core_calls_handed_over_total"],
            m["switchyard_core_calls_claimed_total"]
        ),
        (1.0, 1.0),
        "the consultation call handed from its engine to the REFER's"
    );
    a.command("hangup", "");
    a.wait_event("CALL_CLOSED", Duration::from_secs(10));
    until(
        "C never closed the joined call",
        &|| of_c("CALL_CLOSED") == tries,
        &b,
    );
    // Two CDRs: the consultation call ended by the transfer, the joined call by A.
    let mut cdrs = Vec::new();
    for _ in 0..100 {
        cdrs = api_get(&server, &format!("/v1/tenants/{tenant}/cdrs"))
            .as_array()
            .cloned()
            .unwrap_or_default();
        if cdrs.len() > tries {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // One per consultation call B hung up itself, besides these two.
    assert_eq!(cdrs.len(), tries + 1, "{cdrs:?}");
    assert!(
        cdrs.iter().any(|c| c["hangup_side"] == "transferred"),
        "the consultation call: {cdrs:?}"
    );
    let joined = cdrs
        .iter()
        .find(|c| c["legs"].to_string().contains("attended-transfer"))
        .unwrap_or_else(|| panic!("the joined call: {cdrs:?}"));
    assert_eq!(joined["hangup_side"], "caller", "{joined}");
    let legs = joined["legs"].clone();
    assert!(legs.to_string().contains("attended-transfer"), "{joined}");
    // Media after the join, from the relay's counters: C's RTP arrives on leg B (B,
    // linphone, sent none: it has no sound card here) and reaches A on leg A, which was
    // taken off hold by the engine's re-INVITE. (baresip 1.0 stops its own audio when
    // held and does not start it again on resume, so A's recording and sending cannot
    // show it; the relay can.)
    let counter = |leg: &str, what: &str| {
        legs.as_array()
            .unwrap()
            .iter()
            .find(|l| l["leg"] == leg)
            .and_then(|l| l[what].as_u64())
            .unwrap_or(0)
    };
    assert!(
        counter("b", "packets_received") > 100,
        "C's packets reached the relay: {legs}"
    );
    assert!(
        counter("a", "packets_sent") > 100,
        "and went on to A: {legs}"
    );
    assert!(
        counter("a", "packets_received") > 100 && counter("b", "packets_sent") > 100,
        "A's RTP went to C: {legs}"
    );
    // C, never held, heard A's tone once joined (and never its own).
    let (rate, heard_by_c) = read_wav(&c.heard());
    let (a_tone, c_own) = (
        goertzel(&heard_by_c, rate, 440.0),
        goertzel(&heard_by_c, rate, 700.0),
    );
    assert!(
        a_tone > 1000.0 * c_own.max(1.0),
        "C hears A: {a_tone:.0} vs own {c_own:.0}"
    );
    let resumed = a.log();
    assert!(
        resumed.contains("receiving from 127.0.0.1:"),
        "A receives the relay's RTP after the transfer: {resumed}"
    );
}
