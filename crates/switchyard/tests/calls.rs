//! Call flows through `switchyard serve --demo` with scripted SIP phones: who may
//! register, who may call whom (tenant isolation), busy, no answer, hold, hang-up from
//! either side, runtime provisioning during a call, and bad input during a call.

mod common;
#[path = "../../store/tests/common/mod.rs"]
mod store_common;

use std::time::{Duration, Instant};

use common::Server;
use common::phone::{CallLeg, Phone, sdp};

struct Demo {
    server: Server,
    domain: String,
    tenant: String,
    passwords: Vec<String>,
}

fn demo() -> Demo {
    demo_with(&[])
}

fn demo_with(args: &[&str]) -> Demo {
    let server = Server::start(args);
    let text =
        std::fs::read_to_string(server.data_dir.path().join("demo-credentials.json")).unwrap();
    let creds: serde_json::Value = serde_json::from_str(&text).unwrap();
    Demo {
        domain: creds["domain"].as_str().unwrap().to_owned(),
        tenant: creds["tenant_id"].as_str().unwrap().to_owned(),
        passwords: creds["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["password"].as_str().unwrap().to_owned())
            .collect(),
        server,
    }
}

impl Demo {
    fn phone(&self, user: &str) -> Phone {
        let pw = match user {
            "1001" => &self.passwords[0],
            "1002" => &self.passwords[1],
            _ => "wrong-password",
        };
        Phone::new(self.server.addr("UDP"), &self.domain, user, pw)
    }

    /// 1001 and 1002, both registered.
    fn registered_pair(&self) -> (Phone, Phone) {
        let mut a = self.phone("1001");
        let mut b = self.phone("1002");
        assert_eq!(a.register(), 200);
        assert_eq!(b.register(), 200);
        (a, b)
    }

    fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let key = self.server.api_key.clone().unwrap();
        let reply = rt
            .block_on(async {
                switchyard::http_client::Conn::new(self.server.addr("API"))
                    .request(method, path, &key, None, body)
                    .await
            })
            .unwrap();
        let json = serde_json::from_str(&reply.body).unwrap_or(serde_json::Value::Null);
        (reply.status, json)
    }

    /// Sets a tenant's limits (`max_calls`, `calls_per_second`, `max_registrations`) and
    /// gives the change event time to reach the edge (the store's dispatcher polls every
    /// 100 ms; the edge then reloads the tenant), so the next request meets the new limits.
    fn set_limits(&self, tenant: &str, limits: &str) {
        let (s, t) = self.api("PATCH", &format!("/v1/tenants/{tenant}"), Some(limits));
        assert_eq!(s, 200, "{t}");
        std::thread::sleep(Duration::from_secs(1));
    }

    /// 1001 in an answered call with 1002, and 1003 (created now) registered: the
    /// parties of a transfer. Returns (1001, its leg, 1002, its leg, 1003).
    fn answered_call_and_a_third_phone(&self) -> (Phone, CallLeg, Phone, CallLeg, Phone) {
        self.extension(
            &self.tenant,
            &self.demo_range(),
            1003,
            "transfer-password-1003",
        );
        let (mut a, mut b) = self.registered_pair();
        let mut c = Phone::new(
            self.server.addr("UDP"),
            &self.domain,
            "1003",
            "transfer-password-1003",
        );
        assert_eq!(c.register(), 200);
        let caller = std::thread::spawn(move || {
            let (r, leg) = a.call("1002", &[0]);
            (a, r.status(), leg)
        });
        let (invite, from) = b.wait_request("INVITE", Duration::from_secs(5)).unwrap();
        let b_leg = b.answer(&invite, from, 200, &[0]);
        let (a, status, a_leg) = caller.join().unwrap();
        assert_eq!(status, Some(200));
        (a, a_leg.unwrap(), b, b_leg, c)
    }

    /// A second tenant with one range; returns (tenant id, range id).
    fn tenant(&self, domain: &str, first: i64) -> (String, String) {
        let (s, t) = self.api(
            "POST",
            "/v1/tenants",
            Some(&format!(r#"{{"name":"{domain}","domain":"{domain}"}}"#)),
        );
        assert_eq!(s, 201, "{t}");
        let id = t["id"].as_str().unwrap().to_owned();
        let (s, r) = self.api(
            "POST",
            &format!("/v1/tenants/{id}/extension-ranges"),
            Some(&format!(
                r#"{{"first_number":{first},"last_number":{}}}"#,
                first + 99
            )),
        );
        assert_eq!(s, 201, "{r}");
        (id, r["id"].as_str().unwrap().to_owned())
    }

    /// The demo tenant's extension range.
    fn demo_range(&self) -> String {
        let (_, ranges) = self.api(
            "GET",
            &format!("/v1/tenants/{}/extension-ranges", self.tenant),
            None,
        );
        ranges[0]["id"].as_str().unwrap().to_owned()
    }

    /// The id of the demo tenant's extension `number`.
    fn extension_id(&self, number: i64) -> String {
        let (_, exts) = self.api(
            "GET",
            &format!("/v1/tenants/{}/extensions", self.tenant),
            None,
        );
        let items = exts["items"]
            .as_array()
            .or(exts.as_array())
            .unwrap()
            .clone();
        items
            .iter()
            .find(|e| e["number"] == number)
            .expect("the extension")["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Adds `number` to the pool, assigns it to the demo tenant and points it at `target`
    /// (`{"kind": ..., "id": ...}`); returns the number as assigned.
    fn number_to(&self, number: &str, target: &str) -> String {
        let (s, r) = self.api(
            "POST",
            "/v1/numbers",
            Some(&format!(r#"{{"numbers":["{number}"]}}"#)),
        );
        assert!(s < 300, "{s} {r}");
        let (s, n) = self.api(
            "POST",
            &format!("/v1/tenants/{}/numbers", self.tenant),
            None,
        );
        assert_eq!(s, 201, "{n}");
        let assigned = n["number"].as_str().unwrap().to_owned();
        let (s, t) = self.api(
            "PUT",
            &format!(
                "/v1/tenants/{}/numbers/{}/target",
                self.tenant,
                assigned.replace('+', "%2B")
            ),
            Some(&format!(r#"{{"target":{target}}}"#)),
        );
        assert_eq!(s, 200, "{t}");
        assigned
    }

    fn extension(&self, tenant: &str, range: &str, number: i64, password: &str) -> String {
        let (s, e) = self.api(
            "POST",
            &format!("/v1/tenants/{tenant}/extensions"),
            Some(&format!(
                r#"{{"range_id":"{range}","number":{number},"password":"{password}"}}"#
            )),
        );
        assert_eq!(s, 201, "{e}");
        e["id"].as_str().unwrap().to_owned()
    }

    /// The demo tenant's CDRs, newest first, read from the store (at most `limit`).
    fn stored_cdrs(&self, limit: i64) -> Vec<switchyard_store::Cdr> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let url = format!(
                "sqlite://{}",
                self.server.data_dir.path().join("switchyard.db").display()
            );
            let store = switchyard_store::Store::connect(&url).await.unwrap();
            store.cdrs(&self.tenant, None, limit).await.unwrap()
        })
    }

    /// The series `/metrics` serves.
    fn metrics(&self) -> std::collections::HashMap<String, f64> {
        self.server.metrics()
    }

    fn cdrs(&self, tenant: &str, want: usize) -> Vec<serde_json::Value> {
        for _ in 0..100 {
            let (_, page) = self.api("GET", &format!("/v1/tenants/{tenant}/cdrs"), None);
            let items = page.as_array().cloned().unwrap_or_default();
            if items.len() >= want {
                return items;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fewer than {want} CDRs; log:\n{}", self.server.log());
    }
}

/// 1001 (`a`) and 1003 (`c`) each send ten packets; each hears at least five of the
/// other's through the relay.
fn hear_each_other(a: &Phone, a_leg: &CallLeg, c: &Phone, c_leg: &CallLeg) {
    for seq in 10..20 {
        a.send_rtp(a_leg, 0, seq);
        c.send_rtp(c_leg, 0, seq);
    }
    assert!(
        c.count_rtp(Duration::from_millis(800)) >= 5,
        "1003 hears 1001"
    );
    assert!(
        a.count_rtp(Duration::from_millis(400)) >= 5,
        "1001 hears 1003"
    );
}

/// The destinations a CDR says its call rang: (reason, to, result).
fn attempts(cdr: &serde_json::Value) -> Vec<(String, String, Option<u64>)> {
    cdr["legs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["leg"] == "attempt")
        .map(|l| {
            (
                l["reason"].as_str().unwrap().to_owned(),
                l["to"].as_str().unwrap().to_owned(),
                l["result"].as_u64(),
            )
        })
        .collect()
}

fn header_names(m: &switchyard_sip::Message) -> Vec<String> {
    m.rows().map(|(n, _)| n.to_ascii_lowercase()).collect()
}

#[test]
fn registration_needs_the_right_password_for_the_right_extension() {
    let d = demo();
    let server = d.server.addr("UDP");
    // Wrong password from one source: 401 each time, then 403 once the limit (5) is
    // reached, and the source is banned.
    let mut attacker = Phone::new_at("127.0.0.2", server, &d.domain, "1001", "not-the-password");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            attacker
                .register_as("1001", "not-the-password", 600)
                .status()
                .unwrap(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 403]);
    assert!(
        d.server.log().contains("source banned"),
        "the ban is logged with its source"
    );
    // The ban is the attacking source's: even the right password is refused there...
    let right = d.passwords[0].clone();
    assert_eq!(
        attacker.register_as("1001", &right, 600).status(),
        Some(403)
    );
    // ...but never the right password from another source.
    let mut real = Phone::new_at("127.0.0.3", server, &d.domain, "1001", &right);
    assert_eq!(real.register_as("1001", &right, 600).status(), Some(200));

    // A guesser that rotates the user it claims is counted all the same (by source).
    let mut rotating = Phone::new_at("127.0.0.4", server, &d.domain, "x", "guess-guess");
    let statuses: Vec<u16> = ["1001", "1002", "1003", "7777", "1001"]
        .iter()
        .map(|u| {
            rotating.user = (*u).to_owned();
            rotating
                .register_as(u, "guess-guess", 600)
                .status()
                .unwrap()
        })
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 403]);

    // An unknown user gets the same challenge as a known one, and the same 401 after
    // answering it: nothing tells the two apart.
    let mut unknown = Phone::new_at("127.0.0.5", server, &d.domain, "7777", "whatever-pass");
    let mut known = Phone::new_at("127.0.0.5", server, &d.domain, "1002", "wrong-password-x");
    let first_unknown = unknown.register_as("7777", "whatever-pass", 600);
    let first_known = known.register_as("1002", "wrong-password-x", 600);
    assert_eq!(first_unknown.status(), Some(401));
    assert_eq!(first_known.status(), Some(401));
    assert_eq!(header_names(&first_unknown), header_names(&first_known));
    let chal = |m: &switchyard_sip::Message| {
        let c = m
            .header(switchyard_sip::HeaderName::WwwAuthenticate)
            .unwrap()
            .to_owned();
        let start = c.find("nonce=\"").unwrap();
        let end = start + 7 + c[start + 7..].find('"').unwrap();
        format!("{}{}", &c[..start], &c[end..])
    };
    assert_eq!(chal(&first_unknown), chal(&first_known));
    assert!(chal(&first_known).contains(&format!("realm=\"{}\"", d.domain)));
    // An unknown domain is refused, never given another tenant's realm.
    let mut elsewhere = Phone::new_at("127.0.0.6", server, "nobody.example", "1001", "x");
    assert_eq!(elsewhere.register(), 404);
    // 1001's credentials cannot register 1002, and the answer is the one a wrong
    // password gets (a distinct 403 would confirm the password).
    let mut a = Phone::new_at("127.0.0.7", server, &d.domain, "1001", &right);
    assert_eq!(a.register_as("1002", &right, 600).status(), Some(401));
    // The right password works.
    let mut b = Phone::new_at("127.0.0.8", server, &d.domain, "1002", &d.passwords[1]);
    let ok = b.register_as("1002", &d.passwords[1].clone(), 600);
    assert_eq!(ok.status(), Some(200));
    let contact = ok.header(switchyard_sip::HeaderName::Contact).unwrap();
    assert!(
        contact.contains(&b.local().to_string()) && contact.contains("expires="),
        "{contact}"
    );
}

#[test]
fn calls_stay_inside_the_callers_tenant() {
    let d = demo();
    let (t2, r2) = d.tenant("t2.example", 2000);
    d.extension(&t2, &r2, 2001, "password-2001");
    let mut other = Phone::new(d.server.addr("UDP"), "t2.example", "2001", "password-2001");
    assert_eq!(other.register(), 200);
    let mut a = d.phone("1001");
    assert_eq!(a.register(), 200);
    // 2001 is registered, but in another tenant: 404 for 1001, and nothing reaches 2001.
    let (r, _) = a.call("2001", &[0]);
    assert_eq!(r.status(), Some(404));
    assert!(
        other
            .wait_request("INVITE", Duration::from_millis(500))
            .is_none()
    );
    // And the other way round.
    let (r, _) = other.call("1001", &[0]);
    assert_eq!(r.status(), Some(404));
    assert!(
        a.wait_request("INVITE", Duration::from_millis(500))
            .is_none()
    );
    // A number of the tenant that is not registered: 480.
    let (r, _) = a.call("1002", &[0]);
    assert_eq!(r.status(), Some(480));
    // A phone of tenant 2 cannot call into the demo tenant by naming its domain: it has
    // no credentials there (407 until the failure limit).
    let mut spoof = Phone::new(d.server.addr("UDP"), &d.domain, "2001", "password-2001");
    let (r, _) = spoof.call("1001", &[0]);
    assert_eq!(r.status(), Some(407));
}

#[test]
fn busy_no_answer_hold_and_hang_up() {
    let d = demo();
    let (mut a, mut b) = d.registered_pair();

    // Busy: the callee's 486 reaches the caller.
    let caller = std::thread::spawn(move || {
        let (r, _) = a.call("1002", &[0]);
        (a, r.status())
    });
    let (inv, from) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("INVITE at 1002");
    b.answer(&inv, from, 486, &[0]);
    let (mut a, status) = caller.join().unwrap();
    assert_eq!(status, Some(486));

    // No answer: with the shortest timeout (5 s) the caller gets 408 and the callee a
    // CANCEL.
    let ext = d
        .api("GET", &format!("/v1/tenants/{}/extensions", d.tenant), None)
        .1["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["number"] == 1002)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = d.api(
        "PATCH",
        &format!("/v1/tenants/{}/extensions/{ext}", d.tenant),
        Some(r#"{"no_answer_seconds":5}"#),
    );
    assert_eq!(s, 200);
    std::thread::sleep(Duration::from_millis(400)); // the change event reaches the core
    let caller = std::thread::spawn(move || {
        let (r, _) = a.call("1002", &[0]);
        (a, r.status())
    });
    let (inv, from) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("INVITE at 1002");
    b.answer(&inv, from, 180, &[0]);
    let (cancel, cfrom) = b
        .wait_request("CANCEL", Duration::from_secs(8))
        .expect("a CANCEL");
    b.answer(&cancel, cfrom, 200, &[]);
    b.answer(&inv, from, 487, &[]);
    let (mut a, status) = caller.join().unwrap();
    assert_eq!(status, Some(408));

    // Answered, media both ways, hold and unhold by re-INVITE, hang-up by the callee.
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call("1002", &[0]);
        (a, r.status(), leg)
    });
    let (inv, from) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("INVITE at 1002");
    let mut b_leg = b.answer(&inv, from, 200, &[0]);
    let (mut a, status, a_leg) = caller.join().unwrap();
    assert_eq!(status, Some(200));
    let mut a_leg = a_leg.unwrap();
    let _ = b
        .wait_request("ACK", Duration::from_secs(2))
        .expect("the core ACKs the callee");
    for seq in 0..10 {
        a.send_rtp(&a_leg, 0, seq);
        b.send_rtp(&b_leg, 0, seq);
    }
    assert_eq!(b.count_rtp(Duration::from_millis(300)), 10);
    assert_eq!(a.count_rtp(Duration::from_millis(300)), 10);
    // The node timed each of those 20 packets (`/metrics`: its relay-delay histogram).
    let m = d.metrics();
    assert_eq!(m["switchyard_media_relay_delay_seconds_count"], 20.0);
    assert_eq!(
        m["switchyard_media_relay_delay_seconds_bucket{le=\"+Inf\"}"],
        20.0
    );
    let hold = sdp(a.rtp_port(), &[0]).replace("a=sendrecv", "a=sendonly");
    let b_thread = std::thread::spawn(move || {
        let (re, from) = b
            .wait_request("INVITE", Duration::from_secs(5))
            .expect("re-INVITE");
        let offer = String::from_utf8_lossy(re.body()).into_owned();
        b.answer(&re, from, 200, &[0]);
        let _ = b.wait_request("ACK", Duration::from_secs(2));
        (b, offer)
    });
    let r = a.request(&mut a_leg, "INVITE", &hold);
    assert_eq!(r.status(), Some(200));
    let (mut b, offer) = b_thread.join().unwrap();
    assert!(
        offer.contains("a=sendonly"),
        "hold reaches the callee: {offer}"
    );
    assert!(
        !offer.contains(&a.rtp_port().to_string()),
        "media stays anchored: {offer}"
    );
    let unhold = sdp(a.rtp_port(), &[0]);
    let b_thread = std::thread::spawn(move || {
        b.answer_next("INVITE", Duration::from_secs(5), &[0]);
        let _ = b.wait_request("ACK", Duration::from_secs(2));
        b
    });
    assert_eq!(a.request(&mut a_leg, "INVITE", &unhold).status(), Some(200));
    let mut b = b_thread.join().unwrap();
    // The callee hangs up: the caller gets the BYE.
    let a_thread = std::thread::spawn(move || {
        a.answer_next("BYE", Duration::from_secs(5), &[]);
    });
    assert_eq!(b.request(&mut b_leg, "BYE", "").status(), Some(200));
    a_thread.join().unwrap();
    let cdrs = d.cdrs(&d.tenant, 3);
    let last = &cdrs[0];
    assert_eq!(last["disposition"], "answered", "{last}");
    assert_eq!(last["hangup_side"], "callee", "{last}");
    let legs = &last["legs"];
    assert_eq!(legs[0]["leg"], "a", "{legs}");
    assert_eq!(legs[0]["packets_received"], 10, "{legs}");
    assert_eq!(legs[1]["packets_received"], 10, "{legs}");
    let dispositions: Vec<&str> = cdrs
        .iter()
        .map(|c| c["disposition"].as_str().unwrap())
        .collect();
    assert_eq!(dispositions, ["answered", "no-answer", "busy"]);
}

/// Sets up an answered call between 1001 and 1002 with RTP flowing both ways in the
/// background; returns a stop flag and the join handles with sent/received counts.
struct LiveCall {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<std::thread::JoinHandle<(Phone, usize, usize)>>,
}

fn live_call(d: &Demo) -> LiveCall {
    let (mut a, mut b) = d.registered_pair();
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call("1002", &[0]);
        (a, r.status(), leg)
    });
    let (inv, from) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("INVITE at 1002");
    let b_leg = b.answer(&inv, from, 200, &[0]);
    let (a, status, a_leg) = caller.join().unwrap();
    assert_eq!(status, Some(200));
    let a_leg = a_leg.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for (phone, leg) in [(a, a_leg), (b, b_leg)] {
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            phone
                .rtp
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            let (mut sent, mut received) = (0usize, 0usize);
            let mut buf = [0u8; 2048];
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if Instant::now() >= next {
                    phone.send_rtp(&leg, 0, sent as u16);
                    sent += 1;
                    next += Duration::from_millis(20);
                }
                if phone.rtp.recv_from(&mut buf).is_ok() {
                    received += 1;
                }
            }
            // Drain what is still in flight.
            let until = Instant::now() + Duration::from_millis(200);
            while Instant::now() < until {
                if phone.rtp.recv_from(&mut buf).is_ok() {
                    received += 1;
                }
            }
            (phone, sent, received)
        }));
    }
    LiveCall { stop, workers }
}

impl LiveCall {
    fn finish(self) -> Vec<(Phone, usize, usize)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect()
    }
}

#[test]
fn an_extension_created_during_a_call_is_callable_within_a_second_and_the_call_goes_on() {
    let d = demo();
    let (t3, r3) = d.tenant("t3.example", 3000);
    // The retries below dial as fast as they can.
    d.set_limits(&t3, r#"{"calls_per_second": 1000}"#);
    d.extension(&t3, &r3, 3001, "password-3001");
    let mut caller = Phone::new(d.server.addr("UDP"), "t3.example", "3001", "password-3001");
    assert_eq!(caller.register(), 200);
    // 3002 does not exist yet: 404, and the core has tenant 3's configuration cached now.
    assert_eq!(caller.call("3002", &[0]).0.status(), Some(404));

    let call = live_call(&d);
    std::thread::sleep(Duration::from_millis(500));
    d.extension(&t3, &r3, 3002, "password-3002");
    let created = Instant::now();
    let mut callee = Phone::new(d.server.addr("UDP"), "t3.example", "3002", "password-3002");
    assert_eq!(callee.register(), 200);
    let dial = std::thread::spawn(move || {
        // The change event invalidates the cached configuration: retry until the core
        // knows 3002 (each attempt is a real call attempt).
        loop {
            let (r, _) = caller.call("3002", &[0]);
            match r.status() {
                // Paced below the edge's per-source limit on calls (50/s, two INVITEs
                // each with the challenge).
                Some(404) if created.elapsed() < Duration::from_secs(3) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => return other,
            }
        }
    });
    let (inv, from) = callee
        .wait_request("INVITE", Duration::from_secs(3))
        .expect("3002 is called");
    let reached = created.elapsed();
    callee.answer(&inv, from, 486, &[0]);
    assert_eq!(dial.join().unwrap(), Some(486));
    assert!(
        reached < Duration::from_secs(1),
        "3002 was reached {reached:?} after its 201"
    );
    eprintln!("3002 was registered and reached {reached:?} after its 201");

    std::thread::sleep(Duration::from_millis(500));
    let results = call.finish();
    for (_, sent, _) in &results {
        assert!(*sent > 50, "the call ran: {sent} packets sent");
    }
    // Every packet one side sent reached the other: no gap while tenant 3 changed.
    assert_eq!(results[0].1, results[1].2, "caller → callee");
    assert_eq!(results[1].1, results[0].2, "callee → caller");
}

#[test]
fn bad_input_during_a_call_is_answered_and_the_call_goes_on() {
    let d = demo();
    let call = live_call(&d);
    let mut intruder = d.phone("1001");
    // Garbage datagrams: dropped.
    for junk in [
        &b"\x00\x01garbage"[..],
        b"NOT SIP AT ALL\r\n\r\n",
        &[0xffu8; 1200],
    ] {
        intruder.send_raw(junk);
    }
    // A malformed INVITE: 400 naming the defect.
    intruder.send_raw(
        format!(
            "INVITE sip:1002@{d} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKbad1\r\nMax-Forwards: 70\r\nTo: <sip:1002@{d}>\r\nFrom: <sip:1001@{d}>;tag=x\r\nCall-ID: bad-1\r\nCSeq: notanumber INVITE\r\nContent-Length: 0\r\n\r\n",
            d = d.domain,
            l = intruder.local()
        )
        .as_bytes(),
    );
    let (r, _) = intruder
        .recv(Duration::from_secs(2))
        .expect("an answer to the malformed INVITE");
    assert_eq!(r.status(), Some(400));
    assert!(
        r.reason().unwrap().to_ascii_lowercase().contains("cseq"),
        "{:?}",
        r.reason()
    );
    // An INVITE with broken SDP: 488 from the core, nothing reaches the callee.
    let (r, _) = intruder.call_with_body("1002", "v=0\r\nthis is not sdp\r\n");
    assert_eq!(r.status(), Some(488));
    assert!(
        r.reason().unwrap().contains("SDP"),
        "the reason names the defect: {:?}",
        r.reason()
    );
    std::thread::sleep(Duration::from_millis(300));
    let results = call.finish();
    assert_eq!(
        results[0].1, results[1].2,
        "caller → callee, no packet lost"
    );
    assert_eq!(
        results[1].1, results[0].2,
        "callee → caller, no packet lost"
    );
}

#[test]
fn every_contact_rings_the_first_answer_wins_and_the_caller_can_cancel() {
    // Two call engines: the CANCEL (and the carrier's requests) must reach the engine
    // its INVITE did.
    let d = demo_with(&["--core-shards", "2"]);
    let mut a = d.phone("1001");
    let mut desk = d.phone("1002");
    let mut mobile = d.phone("1002");
    assert_eq!(a.register(), 200);
    assert_eq!(desk.register(), 200);
    assert_eq!(
        mobile.register(),
        200,
        "a second contact of the same extension"
    );

    // Both contacts ring; the mobile answers; the desk phone gets a CANCEL.
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call("1002", &[0]);
        (a, r.status(), leg)
    });
    let (inv_desk, from_desk) = desk
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("desk rings");
    let (inv_mobile, from_mobile) = mobile
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("mobile rings");
    desk.answer(&inv_desk, from_desk, 180, &[0]);
    let _mobile_leg = mobile.answer(&inv_mobile, from_mobile, 200, &[0]);
    desk.answer_next("CANCEL", Duration::from_secs(5), &[]);
    desk.answer(&inv_desk, from_desk, 487, &[]);
    let (mut a, status, leg) = caller.join().unwrap();
    assert_eq!(status, Some(200));
    let mut leg = leg.unwrap();
    let mobile_thread = std::thread::spawn(move || {
        mobile.answer_next("BYE", Duration::from_secs(5), &[]);
        mobile
    });
    assert_eq!(a.request(&mut leg, "BYE", "").status(), Some(200));
    let mut mobile = mobile_thread.join().unwrap();

    // The caller gives up while both ring: 487 for the caller, CANCEL for both contacts.
    let (invite, call_id, seq) = a.start_call("1002");
    let (inv_desk, from_desk) = desk
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("desk rings");
    let (inv_mobile, from_mobile) = mobile
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("mobile rings");
    desk.answer(&inv_desk, from_desk, 180, &[0]);
    mobile.answer(&inv_mobile, from_mobile, 180, &[0]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.cancel(&invite), Some(200));
    let r = a
        .final_response(&call_id, seq, Duration::from_secs(5))
        .expect("a final answer");
    assert_eq!(r.status(), Some(487));
    for (phone, inv, from) in [
        (&mut desk, &inv_desk, from_desk),
        (&mut mobile, &inv_mobile, from_mobile),
    ] {
        let (cancel, cfrom) = phone
            .wait_request("CANCEL", Duration::from_secs(5))
            .expect("CANCEL reaches every contact");
        phone.answer(&cancel, cfrom, 200, &[]);
        phone.answer(inv, from, 487, &[]);
    }
    let cdrs = d.cdrs(&d.tenant, 2);
    assert_eq!(cdrs[0]["disposition"], "cancelled", "{}", cdrs[0]);
    assert_eq!(cdrs[0]["hangup_side"], "caller");
    assert_eq!(cdrs[1]["disposition"], "answered");
    assert_eq!(cdrs[1]["hangup_side"], "caller");
}

#[test]
fn session_timers_are_negotiated_refreshed_and_too_short_ones_refused() {
    let d = demo();
    let (mut a, mut b) = d.registered_pair();
    a.invite_extra = "Session-Expires: 60\r\nSupported: timer\r\n".into();
    let (r, _) = a.call("1002", &[0]);
    assert_eq!(r.status(), Some(422));
    assert_eq!(r.header(switchyard_sip::HeaderName::MinSe), Some("90"));

    a.invite_extra = "Session-Expires: 1800\r\nSupported: timer\r\n".into();
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call("1002", &[0]);
        (a, r, leg)
    });
    b.answer_next("INVITE", Duration::from_secs(5), &[0]);
    let (mut a, ok, leg) = caller.join().unwrap();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.header(switchyard_sip::HeaderName::SessionExpires),
        Some("1800;refresher=uac")
    );
    assert_eq!(
        ok.header(switchyard_sip::HeaderName::Require),
        Some("timer")
    );
    // The caller refreshes with an UPDATE: answered by the core with the interval.
    let mut leg = leg.unwrap();
    let refreshed = a.request(&mut leg, "UPDATE", "");
    assert_eq!(refreshed.status(), Some(200));
    assert_eq!(
        refreshed.header(switchyard_sip::HeaderName::SessionExpires),
        Some("1800;refresher=uac")
    );
}

#[test]
fn a_call_whose_media_stops_is_hung_up_but_not_while_on_hold() {
    let d = demo_with(&["--rtp-timeout-secs", "1"]);
    let (mut a, mut b) = d.registered_pair();
    // Silent call: both legs get a BYE once a second passes without RTP.
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call("1002", &[0]);
        (a, r.status(), leg)
    });
    b.answer_next("INVITE", Duration::from_secs(5), &[0]);
    let (mut a, status, _) = caller.join().unwrap();
    assert_eq!(status, Some(200));
    a.answer_next("BYE", Duration::from_secs(4), &[]);
    b.answer_next("BYE", Duration::from_secs(4), &[]);
    let cdr = &d.cdrs(&d.tenant, 1)[0];
    assert_eq!(cdr["hangup_side"], "rtp-timeout", "{cdr}");

    // On hold, silence is expected: no BYE for three timeout periods.
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call("1002", &[0]);
        (a, r.status(), leg)
    });
    b.answer_next("INVITE", Duration::from_secs(5), &[0]);
    let (mut a, status, leg) = caller.join().unwrap();
    assert_eq!(status, Some(200));
    let mut leg = leg.unwrap();
    let hold = sdp(a.rtp_port(), &[0]).replace("a=sendrecv", "a=inactive");
    let b_thread = std::thread::spawn(move || {
        b.answer_next("INVITE", Duration::from_secs(5), &[0]);
        let _ = b.wait_request("ACK", Duration::from_secs(2));
        b
    });
    assert_eq!(a.request(&mut leg, "INVITE", &hold).status(), Some(200));
    let mut b = b_thread.join().unwrap();
    assert!(
        a.wait_request("BYE", Duration::from_secs(3)).is_none(),
        "a held call is not timed out"
    );
    let b_thread = std::thread::spawn(move || {
        b.answer_next("BYE", Duration::from_secs(5), &[]);
    });
    assert_eq!(a.request(&mut leg, "BYE", "").status(), Some(200));
    b_thread.join().unwrap();
}

#[test]
fn a_thousand_short_calls_leave_no_call_port_or_task_behind() {
    // As fast as one phone can: a load generator, allow-listed past per-source limits.
    let (_config_dir, config) = common::load_generator_config();
    let d = demo_with(&["--config", &config]);
    // As fast as one phone can: far above the demo tenant's 5 calls per second.
    d.set_limits(&d.tenant, r#"{"calls_per_second": 10000}"#);
    let (mut a, mut b) = d.registered_pair();
    let before = d.metrics();
    assert_eq!(before["switchyard_calls_active"], 0.0);
    assert_eq!(
        before["switchyard_core_nodes_healthy"], 1.0,
        "the core answers the edge's pings"
    );
    assert!(before["switchyard_media_free_port_pairs"] > 2000.0);
    const CALLS: usize = 1000;
    let callee = std::thread::spawn(move || {
        for _ in 0..CALLS {
            b.answer_next("INVITE", Duration::from_secs(10), &[0]);
            b.answer_next("BYE", Duration::from_secs(10), &[]);
            b.inbox.clear(); // the core's ACKs
        }
    });
    for i in 0..CALLS {
        let (r, leg) = a.call("1002", &[0]);
        assert_eq!(r.status(), Some(200), "call {i}");
        let mut leg = leg.unwrap();
        assert_eq!(
            a.request(&mut leg, "BYE", "").status(),
            Some(200),
            "call {i}"
        );
    }
    callee.join().unwrap();
    // Every call, media session, port pair and task is gone again, and every CDR is
    // written (a moment after the BYE).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = d.metrics();
        let settled = now["switchyard_calls_active"] == 0.0
            && now["switchyard_core_cdrs_pending"] == 0.0
            && now["switchyard_edge_calls_in_progress"] == 0.0
            && now["switchyard_media_sessions"] == 0.0
            && now["switchyard_media_free_port_pairs"]
                == before["switchyard_media_free_port_pairs"]
            && now["switchyard_runtime_tasks_alive"] <= before["switchyard_runtime_tasks_alive"];
        if settled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not back to where it started: {before:?} -> {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every call wrote its CDR (read from the store: an API page holds at most 100).
    assert_eq!(d.stored_cdrs(5000).len(), CALLS);
    // The tenant's call series count the same calls.
    let now = d.metrics();
    let series = |name: &str, labels: &str| {
        let key = format!("{name}{{tenant=\"{}\"{labels}}}", d.tenant);
        *now.get(&key).unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(
        series("switchyard_tenant_call_attempts_total", ""),
        CALLS as f64
    );
    assert_eq!(
        series(
            "switchyard_tenant_call_dispositions_total",
            ",disposition=\"answered\""
        ),
        CALLS as f64
    );
    assert_eq!(series("switchyard_tenant_answer_seizure_ratio", ""), 1.0);
    assert_eq!(
        series("switchyard_tenant_post_dial_delay_seconds_count", ""),
        CALLS as f64
    );
    assert_eq!(
        series("switchyard_tenant_call_duration_seconds_count", ""),
        CALLS as f64
    );
}

#[test]
fn path_and_outbound_registrations_are_honoured() {
    let d = demo();
    let (mut a, mut b) = d.registered_pair();
    // RFC 3327: a proxy between the phone and us asked to stay on the path.
    let proxy = format!("<sip:p1@{};lr>", b.local());
    b.register_extra = format!("Path: {proxy}\r\nSupported: path\r\n");
    let ok = b.register_as("1002", &d.passwords[1].clone(), 600);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        ok.header(switchyard_sip::HeaderName::Path),
        Some(proxy.as_str())
    );
    let caller = std::thread::spawn(move || {
        let (r, _) = a.call("1002", &[0]);
        (a, r.status())
    });
    let (inv, from) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("INVITE");
    let routes: Vec<&str> = inv.values(switchyard_sip::HeaderName::Route).collect();
    assert_eq!(
        routes,
        [proxy.as_str()],
        "the call follows the registered path"
    );
    b.answer(&inv, from, 486, &[0]);
    let (_a, status) = caller.join().unwrap();
    assert_eq!(status, Some(486));

    // RFC 5626: the same instance and reg-id from a new flow replaces the old binding.
    let instance = ";+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>\";reg-id=1";
    let mut first = d.phone("1002");
    let mut second = d.phone("1002");
    for p in [&mut first, &mut second] {
        p.contact_params = instance.into();
        p.register_extra = "Supported: outbound, path\r\n".into();
    }
    let r1 = first.register_as("1002", &d.passwords[1].clone(), 600);
    assert_eq!(
        r1.header(switchyard_sip::HeaderName::Require),
        Some("outbound")
    );
    let r2 = second.register_as("1002", &d.passwords[1].clone(), 600);
    assert_eq!(r2.status(), Some(200));
    let contacts: Vec<&str> = r2.values(switchyard_sip::HeaderName::Contact).collect();
    assert!(
        contacts
            .iter()
            .any(|c| c.contains(&second.local().to_string())),
        "{contacts:?}"
    );
    assert!(
        !contacts
            .iter()
            .any(|c| c.contains(&first.local().to_string())),
        "the first flow's binding is gone: {contacts:?}"
    );
}

#[test]
fn on_postgresql_and_redis_registrations_live_in_redis_and_calls_use_them() {
    // The cluster back ends: configuration in a fresh PostgreSQL database, registrations
    // in Redis (both services of every test machine; never skipped).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = rt.block_on(store_common::postgres());
    let url =
        std::env::var("SWITCHYARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, format!("[state]\nredis_url = \"{url}\"\n")).unwrap();
    let d = demo_with(&[
        "--config",
        config.to_str().unwrap(),
        "--store-url",
        pg.url.as_deref().unwrap(),
    ]);
    let (mut a, mut b) = d.registered_pair();
    // The binding is in Redis, under the tenant's key (never skipped: Redis is a service
    // of every test machine, started before the tests).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client
        .get_connection()
        .expect("Redis at SWITCHYARD_TEST_REDIS");
    let key = format!("syloc:{{{}}}:1002@{}", d.tenant, d.domain);
    let contacts: Vec<String> = redis::cmd("HKEYS").arg(&key).query(&mut conn).unwrap();
    assert_eq!(contacts, [format!("sip:1002@{}", b.local())]);
    // And a call finds the callee there.
    let caller = std::thread::spawn(move || {
        let (r, _) = a.call("1002", &[0]);
        r.status()
    });
    let (inv, from) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("INVITE");
    // The ringing call holds its tenant's slot in Redis, where every edge sees it.
    let calls_key = format!("sycalls:{{{}}}", d.tenant);
    let held: usize = redis::cmd("ZCARD")
        .arg(&calls_key)
        .query(&mut conn)
        .unwrap();
    assert_eq!(held, 1);
    b.answer(&inv, from, 486, &[0]);
    assert_eq!(caller.join().unwrap(), Some(486));
    // Busy: the slot is given back (in a task, a moment after the answer).
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis::cmd("ZCARD")
        .arg(&calls_key)
        .query::<usize>(&mut conn)
        .unwrap()
        != 0
    {
        assert!(Instant::now() < deadline, "the slot was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.metrics()["switchyard_edge_calls_admitted_total"], 1.0);
    // The CDR went to PostgreSQL.
    let cdr = &d.cdrs(&d.tenant, 1)[0];
    assert_eq!(cdr["disposition"], "busy", "{cdr}");
    let in_pg = rt.block_on(pg.store.cdrs(&d.tenant, None, 10)).unwrap();
    assert_eq!(in_pg.len(), 1);
    drop(d);
}

#[test]
fn registration_intervals_follow_the_tenant_policy_and_star_removes_every_contact() {
    let d = demo();
    let mut b = d.phone("1002");
    let pw = d.passwords[1].clone();
    // Below the tenant's minimum (60 s by default): 423 with Min-Expires.
    let r = b.register_as("1002", &pw, 10);
    assert_eq!(r.status(), Some(423));
    assert_eq!(r.header(switchyard_sip::HeaderName::MinExpires), Some("60"));
    // Above the maximum (3600 s): granted at most the maximum, staggered down by <= 10 %.
    let r = b.register_as("1002", &pw, 86_400);
    assert_eq!(r.status(), Some(200));
    let contact = r
        .header(switchyard_sip::HeaderName::Contact)
        .unwrap()
        .to_owned();
    let granted: u32 = contact.rsplit("expires=").next().unwrap().parse().unwrap();
    assert!((3240..=3600).contains(&granted), "{contact}");
    // A second contact, then `*` removes both; a call then finds nobody.
    let mut desk = d.phone("1002");
    assert_eq!(desk.register(), 200);
    b.contact_star = true;
    let r = b.register_as("1002", &pw, 0);
    assert_eq!(r.status(), Some(200));
    assert_eq!(r.header(switchyard_sip::HeaderName::Contact), None);
    let mut a = d.phone("1001");
    assert_eq!(a.register(), 200);
    assert_eq!(a.call("1002", &[0]).0.status(), Some(480));
    // `*` with a non-zero expiry is malformed.
    let r = b.register_as("1002", &pw, 600);
    assert_eq!(r.status(), Some(400));
}

#[test]
fn knowing_a_call_id_is_not_enough_to_end_someone_elses_call() {
    let d = demo();
    let (mut a, mut b) = d.registered_pair();
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call("1002", &[0]);
        (a, r.status(), leg)
    });
    let (inv, from) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("INVITE at 1002");
    b.answer(&inv, from, 200, &[0]);
    let (mut a, status, leg) = caller.join().unwrap();
    assert_eq!(status, Some(200));
    let mut leg = leg.expect("an answered call");

    // Someone who knows the Call-ID but not the dialog's route: refused at the edge.
    let mut outsider = leg.clone();
    outsider.route.clear();
    assert_eq!(a.request(&mut outsider, "BYE", "").status(), Some(481));
    // Through the edge's route (any dialog's route would do) but with a From tag of no
    // dialog: refused by the core, which matches Call-ID and both tags.
    let mut forged = leg.clone();
    forged.cseq += 10;
    forged.from = forged.from.replace("tag=", "tag=x");
    assert_eq!(a.request(&mut forged, "BYE", "").status(), Some(481));
    assert!(
        b.wait_request("BYE", Duration::from_millis(500)).is_none(),
        "the call is still up: 1002 got no BYE"
    );
    // A re-INVITE with a forged tag (its 481 never ACKed, as from a forged source): one
    // answer, not a retransmission every T1 until timer H.
    let mut reinvite = leg.clone();
    reinvite.cseq += 20;
    reinvite.from = reinvite.from.replace("tag=", "tag=y");
    assert_eq!(a.request(&mut reinvite, "INVITE", "").status(), Some(481));
    let mut copies = 0;
    let until = Instant::now() + Duration::from_millis(2600);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Some((m, _)) = a.recv(left)
            && m.status() == Some(481)
        {
            copies += 1;
        }
    }
    assert_eq!(
        copies, 0,
        "the 481 was retransmitted (timer G fires at 0.5 and 1.5 s)"
    );

    // The real caller hangs up: 1002 gets the BYE.
    leg.cseq += 20;
    let bye = std::thread::spawn(move || a.request(&mut leg, "BYE", "").status());
    let (req, from) = b
        .wait_request("BYE", Duration::from_secs(5))
        .expect("BYE at 1002");
    b.answer(&req, from, 200, &[]);
    assert_eq!(bye.join().unwrap(), Some(200));
}

#[test]
fn a_tenant_over_its_caps_is_refused_with_the_limit_named_and_other_tenants_are_not() {
    let d = demo();
    d.set_limits(
        &d.tenant,
        r#"{"max_calls": 1, "calls_per_second": 1000, "max_registrations": 2}"#,
    );
    let (mut a, mut b) = d.registered_pair();
    // Registrations: a third contact of the tenant (1001 from another phone) is one too
    // many, although the extension allows three.
    let mut third = d.phone("1001");
    let refused = third.register_as("1001", &d.passwords[0].clone(), 600);
    assert_eq!(refused.status(), Some(403));
    assert_eq!(
        refused.reason(),
        Some("Tenant registration limit reached (max_registrations 2)")
    );
    // A refresh of a registered contact still passes at the cap.
    assert_eq!(a.register(), 200);

    // Calls in progress: with one call up, the next is refused with 486.
    let callee = std::thread::spawn(move || {
        let leg = b.answer_next("INVITE", Duration::from_secs(5), &[0]);
        let (second, _) = b.call("1001", &[0]);
        (b, leg, second)
    });
    let (r, leg) = a.call("1002", &[0]);
    assert_eq!(r.status(), Some(200));
    let (mut b, _, second) = callee.join().unwrap();
    assert_eq!(second.status(), Some(486));
    assert_eq!(
        second.reason(),
        Some("Tenant call limit reached (max_calls 1)")
    );
    let m = d.metrics();
    assert_eq!(m["switchyard_edge_calls_in_progress"], 1.0);
    assert_eq!(
        m["switchyard_edge_calls_refused_total{limit=\"max_calls\"}"],
        1.0
    );
    // The BYE gives the slot back: the next call goes through.
    let bye = std::thread::spawn(move || {
        b.answer_next("BYE", Duration::from_secs(5), &[]);
        b
    });
    assert_eq!(a.request(&mut leg.unwrap(), "BYE", "").status(), Some(200));
    let mut b = bye.join().unwrap();
    assert_eq!(d.metrics()["switchyard_edge_calls_in_progress"], 0.0);
    let callee = std::thread::spawn(move || {
        b.answer_next("INVITE", Duration::from_secs(5), &[0]);
    });
    let (r, leg) = a.call("1002", &[0]);
    assert_eq!(r.status(), Some(200));
    callee.join().unwrap();
    drop(leg);

    // Calls per second: the tenant may start one call a second; a failed call counts.
    d.set_limits(&d.tenant, r#"{"max_calls": 100, "calls_per_second": 1}"#);
    std::thread::sleep(Duration::from_millis(1100));
    let mut c = d.phone("1001");
    assert_eq!(c.call("1999", &[0]).0.status(), Some(404));
    let (fast, _) = c.call("1999", &[0]);
    assert_eq!(fast.status(), Some(503));
    assert_eq!(
        fast.reason(),
        Some("Tenant call rate limit reached (calls_per_second 1)")
    );
    assert_eq!(
        fast.header(switchyard_sip::HeaderName::RetryAfter),
        Some("1")
    );
    // Another tenant is not touched by this one's caps.
    let (t3, r3) = d.tenant("t3.example", 3000);
    d.extension(&t3, &r3, 3001, "password-3001");
    let mut other = Phone::new(d.server.addr("UDP"), "t3.example", "3001", "password-3001");
    assert_eq!(other.register(), 200);
    assert_eq!(other.call("3999", &[0]).0.status(), Some(404));
    let m = d.metrics();
    assert_eq!(
        m["switchyard_edge_calls_refused_total{limit=\"calls_per_second\"}"],
        1.0
    );
    // The one call still up holds the only slot.
    assert_eq!(m["switchyard_edge_calls_in_progress"], 1.0);
    // The same, per tenant: each provider's customer on its own series.
    let series = |name: &str, labels: &str| {
        m.get(&format!(
            "switchyard_tenant_{name}{{tenant=\"{}\"{labels}}}",
            d.tenant
        ))
        .copied()
        .unwrap_or_else(|| panic!("{name}{labels} missing: {m:?}"))
    };
    assert_eq!(series("calls_in_progress", ""), 1.0);
    assert_eq!(series("calls_total", ""), 3.0);
    assert_eq!(series("rejections_total", ",reason=\"max_calls\""), 1.0);
    assert_eq!(
        series("rejections_total", ",reason=\"calls_per_second\""),
        1.0
    );
    assert_eq!(
        series("rejections_total", ",reason=\"max_registrations\""),
        1.0
    );
    assert!(series("registrations_total", "") >= 3.0);
    let other = format!("switchyard_tenant_calls_total{{tenant=\"{t3}\"}}");
    assert_eq!(m[&other], 1.0, "the other tenant's call is its own");
}

/// The first REGISTER (no credentials) as `user` from `phone`; its final status, if any
/// arrives within a second.
fn probe(phone: &mut Phone, user: &str) -> Option<u16> {
    let call_id = format!("probe-{user}-{}", rand::random::<u32>());
    let (text, seq) = phone.register_request(&call_id, user, 600, None);
    phone.send_raw(text.as_bytes());
    phone
        .final_response(&call_id, seq, Duration::from_secs(1))
        .and_then(|m| m.status())
}

#[test]
fn scans_floods_and_bursts_are_stopped_at_their_source_and_operators_lift_bans() {
    let d = demo();
    let server = d.server.addr("UDP");
    // A scan: ten distinct unknown users from one address within a minute. Each is
    // challenged like a real one (no oracle); then the source is banned and ignored.
    let mut scanner = Phone::new_at("127.0.0.20", server, &d.domain, "x", "x");
    for user in 2000..2010 {
        assert_eq!(probe(&mut scanner, &user.to_string()), Some(401), "{user}");
    }
    assert_eq!(
        probe(&mut scanner, "1001"),
        None,
        "a banned scanner gets silence"
    );
    // Nobody else is touched.
    let mut phone = Phone::new_at("127.0.0.21", server, &d.domain, "1001", &d.passwords[0]);
    assert_eq!(phone.register(), 200);
    // The operator sees the ban, through the API and the CLI, and lifts it.
    let (status, bans) = d.api("GET", "/v1/bans", None);
    assert_eq!(status, 200);
    assert_eq!(bans[0]["source"], "127.0.0.20", "{bans}");
    assert_eq!(bans[0]["reason"], "scan", "{bans}");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .args(["--api", &d.server.addr("API").to_string()])
            .args(["--key", d.server.api_key.as_deref().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&["ban", "list", "--json"]);
    assert!(
        listed.contains("127.0.0.20") && listed.contains("scan"),
        "{listed}"
    );
    cli(&["ban", "lift", "127.0.0.20"]);
    assert_eq!(probe(&mut scanner, "1001"), Some(401), "lifted");
    let (status, _) = d.api("DELETE", "/v1/bans/127.0.0.20", None);
    assert_eq!(status, 404, "nothing left to lift");
    let (status, problem) = d.api("DELETE", "/v1/bans/not-an-address", None);
    assert_eq!(status, 400, "{problem}");

    // A flood of malformed requests: each answered 400 until the 50th, then silence.
    let flooder = Phone::new_at("127.0.0.22", server, &d.domain, "x", "x");
    let garbage = |i: u32| {
        format!(
            "OPTIONS sip:x@{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKg{i}\r\nCall-ID: g{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            d.domain,
            flooder.local()
        )
    };
    let mut answered = 0;
    for i in 0..60 {
        flooder.send_raw(garbage(i).as_bytes());
        if flooder.recv(Duration::from_millis(200)).is_some() {
            answered += 1;
        }
    }
    assert_eq!(answered, 49, "answered until the ban, then silence");

    // A burst of OPTIONS from one address: a second's worth twice over (100) passes,
    // the rest of the burst is dropped.
    let burst = Phone::new_at("127.0.0.23", server, &d.domain, "x", "x");
    for i in 0..150 {
        burst.send_raw(common::options("UDP", burst.local(), &format!("burst-{i}")).as_bytes());
    }
    let mut ok = 0;
    while burst.recv(Duration::from_millis(500)).is_some() {
        ok += 1;
    }
    assert!((100..=110).contains(&ok), "{ok} of 150 answered");
    let m = d.metrics();
    assert_eq!(m["switchyard_edge_bans_issued_total{reason=\"scan\"}"], 1.0);
    assert_eq!(
        m["switchyard_edge_bans_issued_total{reason=\"malformed-flood\"}"],
        1.0
    );
    assert!(m["switchyard_edge_rate_limited_total{class=\"other\"}"] >= 40.0);
    assert!(m["switchyard_edge_dropped_banned_total"] >= 11.0);
}

/// SIGTERM with calls up drains before it stops: both phones of every answered call get
/// their BYE, a ringing call's callee gets a CANCEL and its caller a `503`, every call
/// has its CDR (hung up by "shutdown"), and the process exits cleanly. Before the engine
/// drained, the driver stopped with the core and these BYEs and CDRs were lost.
#[test]
fn sigterm_with_calls_up_hangs_every_call_up_and_writes_every_cdr() {
    let (_config_dir, config) = common::load_generator_config();
    let mut d = demo_with(&["--config", &config]);
    d.set_limits(
        &d.tenant,
        r#"{"calls_per_second": 10000, "max_calls": 1000}"#,
    );
    let (mut a, mut b) = d.registered_pair();
    const ANSWERED: usize = 20;
    let callee = std::thread::spawn(move || {
        for _ in 0..ANSWERED {
            b.answer_next("INVITE", Duration::from_secs(10), &[0]);
        }
        b
    });
    let mut answered = std::collections::HashSet::new();
    for i in 0..ANSWERED {
        let (r, leg) = a.call("1002", &[0]);
        assert_eq!(r.status(), Some(200), "call {i}");
        answered.insert(leg.unwrap().call_id);
    }
    let mut b = callee.join().unwrap();
    // One more call, left ringing.
    let (_, ringing, _) = a.start_call("1002");
    let (ringing_invite, _) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the ringing call reaches 1002");
    assert_eq!(
        d.metrics()["switchyard_calls_active"],
        (ANSWERED + 1) as f64
    );

    // Each phone answers what the stopping server sends it and notes the final answer to
    // the ringing call.
    let hang_ups = |mut phone: Phone, ringing: Option<String>| {
        std::thread::spawn(move || {
            let (mut byes, mut cancels, mut ringing_final) = (Vec::new(), Vec::new(), None);
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut pending = std::mem::take(&mut phone.inbox);
            while Instant::now() < deadline {
                let Some((m, from)) = pending
                    .pop()
                    .or_else(|| phone.recv(Duration::from_millis(200)))
                else {
                    if byes.len() == ANSWERED && (ringing.is_none() || ringing_final.is_some()) {
                        break;
                    }
                    continue;
                };
                let call_id = m.call_id().unwrap().to_owned();
                match m.method().map(|x| x.as_str()) {
                    Some("BYE") => {
                        phone.answer(&m, from, 200, &[]);
                        byes.push(call_id);
                    }
                    Some("CANCEL") => {
                        phone.answer(&m, from, 200, &[]);
                        cancels.push(call_id);
                    }
                    Some(_) => {}
                    None if Some(&call_id) == ringing.as_ref() && m.status() >= Some(200) => {
                        ringing_final = m.status();
                    }
                    None => {}
                }
            }
            (byes, cancels, ringing_final)
        })
    };
    let caller = hang_ups(a, Some(ringing.clone()));
    let callee = hang_ups(b, None);
    let status = d
        .server
        .terminate(Duration::from_secs(20))
        .expect("the server stops");
    assert!(status.success(), "{status:?}\n{}", d.server.log());

    let (caller_byes, _, ringing_final) = caller.join().unwrap();
    let (callee_byes, callee_cancels, _) = callee.join().unwrap();
    let caller_byes: std::collections::HashSet<String> = caller_byes.into_iter().collect();
    assert_eq!(
        caller_byes, answered,
        "the caller's leg of every answered call"
    );
    assert_eq!(
        callee_byes.len(),
        ANSWERED,
        "the callee's leg of every answered call"
    );
    assert_eq!(
        callee_cancels,
        [ringing_invite.call_id().unwrap().to_owned()],
        "the ringing call's callee stops ringing"
    );
    assert_eq!(
        ringing_final,
        Some(503),
        "the ringing call's caller hears why"
    );

    let cdrs = d.stored_cdrs(100);
    assert_eq!(cdrs.len(), ANSWERED + 1, "one CDR per call");
    for cdr in &cdrs {
        assert_eq!(cdr.hangup_side.as_deref(), Some("shutdown"), "{cdr:?}");
        let expected = if cdr.call_id == ringing {
            "failed"
        } else {
            "answered"
        };
        assert_eq!(cdr.disposition, expected, "{cdr:?}");
    }
}

/// A carrier (its network added through the API) calls one of the tenant's numbers: the
/// number's extension rings with the PSTN caller's number, the call is answered and hung
/// up, and a CDR is written; the tenant's call cap counts carrier calls. A number not in
/// service is `404`; the same call from a source that is no carrier is `403`.
#[test]
fn a_carrier_call_to_a_tenants_number_rings_the_extension_it_points_at() {
    // Two call engines: the CANCEL (and the carrier's requests) must reach the engine
    // its INVITE did.
    let d = demo_with(&["--core-shards", "2"]);
    let (s, c) = d.api(
        "POST",
        "/v1/carriers",
        Some(r#"{"name":"pstn","addresses":["127.0.0.2"]}"#),
    );
    assert_eq!(s, 201, "{c}");
    let ext_1001 = d.extension_id(1001);
    let number = d.number_to(
        "+15550100001",
        &format!(r#"{{"kind":"extension","id":"{ext_1001}"}}"#),
    );
    // A number of the pool that no tenant holds.
    let (s, r) = d.api(
        "POST",
        "/v1/numbers",
        Some(r#"{"numbers":["+15550100002"]}"#),
    );
    assert!(s < 300, "{s} {r}");
    // The change event refreshes the edge's numbers (and carriers) within a moment.
    std::thread::sleep(Duration::from_secs(1));

    let mut callee = d.phone("1001");
    assert_eq!(callee.register(), 200);
    let edge = d.server.addr("UDP");
    let edge_host = edge.to_string();
    let mut pstn = Phone::new_at("127.0.0.2", edge, &edge_host, "+4930111222", "unused");
    let caller = std::thread::spawn(move || {
        let (r, leg) = pstn.call(&number, &[0]);
        (pstn, number, r.status(), leg)
    });
    let invite = callee.answer_next("INVITE", Duration::from_secs(5), &[0]);
    let from = invite.header(switchyard_sip::HeaderName::From).unwrap();
    assert!(
        from.contains("+4930111222"),
        "the PSTN caller's number: {from}"
    );
    for internal in ["X-Sy-Tenant", "X-Sy-Caller", "X-Sy-Carrier"] {
        assert!(
            invite.extension_rows(internal).next().is_none(),
            "{internal} never reaches a phone"
        );
    }
    let (mut pstn, number, status, leg) = caller.join().unwrap();
    assert_eq!(status, Some(200), "log:\n{}", d.server.log());
    let mut leg = leg.unwrap();
    // Carrier calls count against the number's tenant's caps like its phones' calls.
    d.set_limits(&d.tenant, r#"{"max_calls":1}"#);
    let mut second = Phone::new_at("127.0.0.2", edge, &edge_host, "+4930111333", "unused");
    let (r, _) = second.call(&number, &[0]);
    assert_eq!(r.status(), Some(486), "{r:?}");
    assert!(
        r.reason().unwrap_or_default().contains("max_calls 1"),
        "{r:?}"
    );
    let callee_thread = std::thread::spawn(move || {
        callee.answer_next("BYE", Duration::from_secs(5), &[]);
    });
    assert_eq!(pstn.request(&mut leg, "BYE", "").status(), Some(200));
    callee_thread.join().unwrap();
    let cdrs = d.cdrs(&d.tenant, 1);
    assert_eq!(cdrs[0]["disposition"], "answered", "{}", cdrs[0]);
    assert_eq!(cdrs[0]["hangup_side"], "caller", "{}", cdrs[0]);

    // A number of the pool that no tenant holds: not in service.
    let (r, _) = pstn.call("+15550100002", &[0]);
    assert_eq!(r.status(), Some(404), "{r:?}");
    // The tenant's number called from a source that is no carrier.
    let mut stranger = Phone::new_at("127.0.0.3", edge, &edge_host, "+4930999888", "unused");
    let (r, _) = stranger.call(&number, &[0]);
    assert_eq!(r.status(), Some(403), "{r:?}");
    assert!(
        r.reason().unwrap_or_default().contains("not a carrier"),
        "{r:?}"
    );
}

/// A call whose routing step is stuck on the database (tenant B's configuration, read on
/// its first call, waits on a lock held on PostgreSQL) holds up no other call: tenant A's
/// call is set up and answered while B's still waits, and B's goes on once the lock goes.
#[test]
fn a_call_stuck_on_a_database_read_holds_up_no_other_call() {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = rt.block_on(store_common::postgres());
    let url = pg.url.clone().unwrap();
    let d = demo_with(&["--store-url", &url]);
    let (b_tenant, b_range) = d.tenant("slow.example.com", 2000);
    d.extension(&b_tenant, &b_range, 2001, "b-password-2001");
    d.extension(&b_tenant, &b_range, 2002, "b-password-2002");
    let edge = d.server.addr("UDP");
    let mut b_caller = Phone::new(edge, "slow.example.com", "2001", "b-password-2001");
    let mut b_callee = Phone::new(edge, "slow.example.com", "2002", "b-password-2002");
    assert_eq!(b_caller.register(), 200);
    assert_eq!(b_callee.register(), 200);
    // A's configuration is in the core's cache after one call; B's is not.
    let (mut a, mut a_callee) = d.registered_pair();
    let warm = std::thread::spawn(move || (a.call("1002", &[0]).0.status(), a));
    a_callee.answer_next("INVITE", Duration::from_secs(5), &[0]);
    let (status, mut a) = warm.join().unwrap();
    assert_eq!(status, Some(200));

    // Every read of extensions now waits on this transaction's lock.
    let mut lock = rt.block_on(sqlx::PgConnection::connect(&url)).unwrap();
    rt.block_on(async {
        sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
        sqlx::query("LOCK TABLE extensions IN ACCESS EXCLUSIVE MODE")
            .execute(&mut lock)
            .await
            .unwrap();
    });
    let b_call = std::thread::spawn(move || b_caller.call("2002", &[0]).0.status());
    // B's INVITE is at the core, its configuration read stuck.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!b_call.is_finished(), "B's call waits on the lock");
    let a_call = std::thread::spawn(move || a.call("1002", &[0]).0.status());
    a_callee.answer_next("INVITE", Duration::from_secs(5), &[0]);
    assert_eq!(a_call.join().unwrap(), Some(200), "A's call is answered");
    assert!(
        !b_call.is_finished(),
        "A's call went through while B's was still stuck"
    );

    rt.block_on(async {
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    });
    b_callee.answer_next("INVITE", Duration::from_secs(10), &[0]);
    assert_eq!(b_call.join().unwrap(), Some(200), "B's call goes on");
}

/// Forwarding on busy and on no answer: 1002 forwards to 1003. Busy at 1002 rings 1003
/// (which answers); unanswered at 1002 (after its 5 s) CANCELs 1002 and rings 1003. One
/// forward per call: 1003 busy after a forward ends the call busy. Each call one CDR.
#[test]
fn busy_and_unanswered_calls_follow_the_callees_forwards() {
    let d = demo();
    d.extension(&d.tenant, &d.demo_range(), 1003, "forward-password-1003");
    let id_1002 = d.extension_id(1002);
    let (s, e) = d.api(
        "PATCH",
        &format!("/v1/tenants/{}/extensions/{id_1002}", d.tenant),
        Some(r#"{"forward_busy":"1003","forward_no_answer":"1003","no_answer_seconds":5}"#),
    );
    assert_eq!(s, 200, "{e}");
    std::thread::sleep(Duration::from_secs(1));
    let (mut a, mut b) = d.registered_pair();
    let mut c = Phone::new(
        d.server.addr("UDP"),
        &d.domain,
        "1003",
        "forward-password-1003",
    );
    assert_eq!(c.register(), 200);

    // Busy: 1002 says 486, 1003 rings and answers.
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call("1002", &[0]);
        (a, r.status(), leg)
    });
    let (inv, from) = b.wait_request("INVITE", Duration::from_secs(5)).unwrap();
    b.answer(&inv, from, 486, &[]);
    let forwarded = c.answer_next("INVITE", Duration::from_secs(5), &[0]);
    assert!(
        forwarded.request_uri_str().unwrap().contains("1003"),
        "{forwarded:?}"
    );
    let (mut a, status, leg) = caller.join().unwrap();
    assert_eq!(status, Some(200), "log:\n{}", d.server.log());
    let mut leg = leg.unwrap();
    let c_thread = std::thread::spawn(move || {
        c.answer_next("BYE", Duration::from_secs(5), &[]);
        c
    });
    assert_eq!(a.request(&mut leg, "BYE", "").status(), Some(200));
    let mut c = c_thread.join().unwrap();

    // No answer: 1002 rings 5 s, is CANCELled, 1003 rings; 1003 is busy: the call ends
    // busy (one forward per call: 1003's own forwards are not followed).
    let caller = std::thread::spawn(move || a.call("1002", &[0]).0.status());
    let (inv, from) = b.wait_request("INVITE", Duration::from_secs(5)).unwrap();
    b.answer(&inv, from, 180, &[]);
    let rung = Instant::now();
    b.answer_next("CANCEL", Duration::from_secs(10), &[]);
    assert!(
        rung.elapsed() >= Duration::from_secs(4),
        "1002 rang its time"
    );
    b.answer(&inv, from, 487, &[]);
    let (inv, from) = c.wait_request("INVITE", Duration::from_secs(5)).unwrap();
    c.answer(&inv, from, 486, &[]);
    assert_eq!(caller.join().unwrap(), Some(486));

    let cdrs = d.cdrs(&d.tenant, 2);
    let dispositions: Vec<&str> = cdrs
        .iter()
        .take(2)
        .map(|c| c["disposition"].as_str().unwrap())
        .collect();
    assert_eq!(dispositions, ["busy", "answered"], "newest first: {cdrs:?}");
    // Each CDR follows its call through the forward.
    let step =
        |reason: &str, to: &str, result: u64| (reason.to_owned(), to.to_owned(), Some(result));
    assert_eq!(
        attempts(&cdrs[0]),
        [
            step("dialled", "1002", 408),
            step("forward-no-answer", "1003", 486)
        ]
    );
    assert_eq!(
        attempts(&cdrs[1]),
        [
            step("dialled", "1002", 486),
            step("forward-busy", "1003", 200)
        ]
    );
}

/// A number pointing at a sequential ring group: its members ring one at a time, the
/// next when one is busy (or its ring time passes), until one answers; when none does,
/// the group's fallback (here extension 1004) rings.
#[test]
fn a_sequential_group_rings_its_members_one_at_a_time() {
    let d = demo();
    let id_1003 = d.extension(&d.tenant, &d.demo_range(), 1003, "hunt-password-1003");
    let id_1004 = d.extension(&d.tenant, &d.demo_range(), 1004, "hunt-password-1004");
    let id_1002 = d.extension_id(1002);
    let (s, group) = d.api(
        "POST",
        &format!("/v1/tenants/{}/resources/ring_group", d.tenant),
        Some(&format!(
            r#"{{"name":"support","spec":{{"strategy":"sequential","members":["{id_1002}","{id_1003}"],"ring_seconds":10,"fallback":{{"kind":"extension","id":"{id_1004}"}}}}}}"#
        )),
    );
    assert_eq!(s, 201, "{group}");
    let number = d.number_to(
        "+15550100077",
        &format!(
            r#"{{"kind":"ring_group","id":"{}"}}"#,
            group["id"].as_str().unwrap()
        ),
    );
    std::thread::sleep(Duration::from_secs(1));
    let (mut a, mut b) = d.registered_pair();
    let mut c = Phone::new(
        d.server.addr("UDP"),
        &d.domain,
        "1003",
        "hunt-password-1003",
    );
    assert_eq!(c.register(), 200);
    let mut fallback = Phone::new(
        d.server.addr("UDP"),
        &d.domain,
        "1004",
        "hunt-password-1004",
    );
    assert_eq!(fallback.register(), 200);

    // 1001 dials the number: 1002 rings first and is busy; then 1003 rings and answers.
    let dialled = number.clone();
    let caller = std::thread::spawn(move || (a.call(&dialled, &[0]).0.status(), a));
    let (inv, from) = b.wait_request("INVITE", Duration::from_secs(5)).unwrap();
    assert!(
        c.wait_request("INVITE", Duration::from_millis(300))
            .is_none(),
        "one member at a time"
    );
    b.answer(&inv, from, 486, &[]);
    c.answer_next("INVITE", Duration::from_secs(5), &[0]);
    let (status, mut a) = caller.join().unwrap();
    assert_eq!(status, Some(200), "log:\n{}", d.server.log());

    // Both members busy: the fallback rings and answers.
    let caller = std::thread::spawn(move || a.call(&number, &[0]).0.status());
    let (inv, from) = b.wait_request("INVITE", Duration::from_secs(5)).unwrap();
    b.answer(&inv, from, 486, &[]);
    let (inv, from) = c.wait_request("INVITE", Duration::from_secs(5)).unwrap();
    c.answer(&inv, from, 486, &[]);
    fallback.answer_next("INVITE", Duration::from_secs(5), &[0]);
    assert_eq!(
        caller.join().unwrap(),
        Some(200),
        "log:\n{}",
        d.server.log()
    );
}

/// Calls out through the tenant's outbound routes, to two "carriers" (UDP sockets on
/// 127.0.0.4 and 127.0.0.5 speaking SIP): the first route's trunk answers `503`, the
/// second carries the call; the carrier sees the tenant's own number as the caller and
/// none of our internal headers, and the call comes from the edge. With its one channel
/// taken the second trunk takes no second call; an emergency call goes out on it anyway,
/// past the tenant's call cap too. A trunk that stays silent is left after 5 s for the
/// next route; a busy answer is passed on without failover. The carrier's BYE reaches the
/// caller through the edge.
#[test]
fn outbound_calls_fail_over_between_trunks_and_respect_their_channels() {
    let d = demo();
    let ext_1002 = d.extension_id(1002);
    let presented = d.number_to(
        "+15550100050",
        &format!(r#"{{"kind":"extension","id":"{ext_1002}"}}"#),
    );
    let edge = d.server.addr("UDP");
    let mut first = Phone::new_at("127.0.0.4", edge, "carrier-a", "carrier", "unused");
    let mut second = Phone::new_at("127.0.0.5", edge, "carrier-b", "carrier", "unused");
    let resource = |kind: &str, name: &str, spec: String| -> String {
        let (s, r) = d.api(
            "POST",
            &format!("/v1/tenants/{}/resources/{kind}", d.tenant),
            Some(&format!(r#"{{"name":"{name}","spec":{spec}}}"#)),
        );
        assert_eq!(s, 201, "{r}");
        r["id"].as_str().unwrap().to_owned()
    };
    let trunk = |name: &str, carrier: &Phone, channels: u32| {
        let at = carrier.local();
        resource(
            "trunk",
            name,
            format!(
                r#"{{"host":"{}","port":{},"transport":"udp","codecs":["PCMU"],"max_channels":{channels},"username":null,"password":null}}"#,
                at.ip(),
                at.port()
            ),
        )
    };
    let route = |name: &str, pattern: &str, trunk: &str, strip: u8, priority: u32| {
        resource(
            "outbound_route",
            name,
            format!(
                r#"{{"pattern":"{pattern}","trunk_id":"{trunk}","strip_digits":{strip},"prefix":"{}","priority":{priority}}}"#,
                if strip > 0 { "+" } else { "" }
            ),
        )
    };
    let first_trunk = trunk("first", &first, 10);
    let second_trunk = trunk("second", &second, 1);
    route("out-first", "00.", &first_trunk, 2, 1);
    route("out-second", "00.", &second_trunk, 2, 2);
    route("emergency", "112", &second_trunk, 0, 1);
    std::thread::sleep(Duration::from_secs(1));
    let (mut caller, mut other) = d.registered_pair();

    // The first route's trunk refuses: the second carries the call.
    let call = std::thread::spawn(move || {
        let (r, leg) = caller.call("004930123456", &[0]);
        (caller, r.status(), leg)
    });
    let (invite, from) = first
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the first trunk gets the call");
    assert_eq!(from, edge, "calls out leave from the edge's public socket");
    assert_eq!(
        invite.request_uri_str().unwrap(),
        format!("sip:+4930123456@{}", first.local()),
        "strip 2, prefix +"
    );
    let caller_id = invite.header(switchyard_sip::HeaderName::From).unwrap();
    assert!(
        caller_id.contains(&format!("<sip:{presented}@")),
        "the tenant's own number as the caller: {caller_id}"
    );
    for internal in ["X-Sy-Tenant", "X-Sy-Caller", "X-Sy-Carrier"] {
        assert!(
            invite.extension_rows(internal).next().is_none(),
            "{internal}"
        );
    }
    assert!(
        !invite.to_bytes().windows(8).any(|w| w == b"sy-trunk"),
        "the core's Route to the edge never leaves it"
    );
    first.answer(&invite, from, 503, &[]);
    first
        .wait_request("ACK", Duration::from_secs(5))
        .expect("the 503 is acknowledged through the edge");
    let (invite, from) = second
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the second route's trunk gets the call");
    let mut out_leg = second.answer(&invite, from, 200, &[0]);
    let (mut caller, status, leg) = call.join().unwrap();
    assert_eq!(status, Some(200), "log:\n{}", d.server.log());
    assert!(leg.is_some());
    second
        .wait_request("ACK", Duration::from_secs(5))
        .expect("the carrier's 200 is acknowledged");

    // Its one channel taken, the second trunk takes no other call: the first fails
    // again and the caller hears the first trunk's answer.
    let call = std::thread::spawn(move || {
        let status = other.call("004930999999", &[0]).0.status();
        (other, status)
    });
    let (invite, from) = first
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the first trunk gets the second call");
    first.answer(&invite, from, 503, &[]);
    let (mut other, status) = call.join().unwrap();
    assert_eq!(status, Some(503), "log:\n{}", d.server.log());
    assert!(
        second
            .wait_request("INVITE", Duration::from_millis(500))
            .is_none(),
        "a full trunk gets no INVITE"
    );

    // An emergency call goes out on the full trunk, past the tenant's call cap.
    d.set_limits(&d.tenant, r#"{"max_calls":1}"#);
    let call = std::thread::spawn(move || {
        let status = other.call("112", &[0]).0.status();
        (other, status)
    });
    let (invite, from) = second
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the emergency call reaches its trunk");
    assert_eq!(
        invite.request_uri_str().unwrap(),
        format!("sip:112@{}", second.local())
    );
    let mut emergency_leg = second.answer(&invite, from, 200, &[0]);
    let (mut other, status) = call.join().unwrap();
    assert_eq!(status, Some(200), "log:\n{}", d.server.log());

    // The carrier hangs up both: its BYEs reach the callers through the edge.
    let hang_up = std::thread::spawn(move || {
        caller.answer_next("BYE", Duration::from_secs(5), &[]);
        other.answer_next("BYE", Duration::from_secs(5), &[]);
        (caller, other)
    });
    assert_eq!(second.request(&mut out_leg, "BYE", "").status(), Some(200));
    assert_eq!(
        second.request(&mut emergency_leg, "BYE", "").status(),
        Some(200)
    );
    let (mut caller, _) = hang_up.join().unwrap();
    let cdrs = d.cdrs(&d.tenant, 3);
    let out = cdrs
        .iter()
        .find(|c| c["to_uri"].as_str().unwrap_or("").contains("004930123456"))
        .expect("the first call's CDR");
    assert_eq!(out["disposition"], "answered", "{out}");
    assert_eq!(out["hangup_side"], "callee", "{out}");
    assert_eq!(
        attempts(out),
        [
            ("dialled".to_owned(), "+4930123456".to_owned(), Some(503)),
            ("failover".to_owned(), "+4930123456".to_owned(), Some(200)),
        ],
        "{out}"
    );

    // A trunk that says nothing is left after 5 s; the next one's busy is the answer.
    d.set_limits(&d.tenant, r#"{"max_calls":10}"#);
    let started = std::time::Instant::now();
    let call = std::thread::spawn(move || {
        let status = caller.call("004930777777", &[0]).0.status();
        (caller, status)
    });
    first
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the first trunk gets the call");
    let (invite, from) = second
        .wait_request("INVITE", Duration::from_secs(10))
        .expect("the next route after the silence");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "not before the silence limit: {:?}",
        started.elapsed()
    );
    second.answer(&invite, from, 486, &[]);
    let (mut caller, status) = call.join().unwrap();
    assert_eq!(status, Some(486));
    // Per trunk: what each made of its INVITEs, and the calls that left it.
    let metrics = d.server.metrics();
    let series = |name: &str, trunk: &str, outcome: Option<&str>| {
        let labels = match outcome {
            Some(o) => format!(
                "{{tenant=\"{}\",trunk=\"{trunk}\",outcome=\"{o}\"}}",
                d.tenant
            ),
            None => format!("{{tenant=\"{}\",trunk=\"{trunk}\"}}", d.tenant),
        };
        metrics
            .get(&format!("switchyard_trunk_{name}{labels}"))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(series("attempts_total", &first_trunk, None), 3.0);
    assert_eq!(series("outcomes_total", &first_trunk, Some("failed")), 2.0);
    assert_eq!(
        series("outcomes_total", &first_trunk, Some("no-response")),
        1.0
    );
    assert_eq!(series("failovers_total", &first_trunk, None), 3.0);
    assert_eq!(series("attempts_total", &second_trunk, None), 3.0);
    assert_eq!(
        series("outcomes_total", &second_trunk, Some("answered")),
        2.0
    );
    assert_eq!(series("outcomes_total", &second_trunk, Some("busy")), 1.0);

    // A trunk with credentials: the carrier's challenge is answered once, CSeq 2.
    let mut third = Phone::new_at("127.0.0.6", edge, "carrier-c", "carrier", "unused");
    let at = third.local();
    let secured = resource(
        "trunk",
        "secured",
        format!(
            r#"{{"host":"{}","port":{},"transport":"udp","codecs":["PCMU"],"max_channels":5,"username":"tenant-a","password":"carrier-secret"}}"#,
            at.ip(),
            at.port()
        ),
    );
    route("secured", "01.", &secured, 1, 1);
    std::thread::sleep(Duration::from_secs(1));
    let call = std::thread::spawn(move || {
        let (r, leg) = caller.call("0130123", &[0]);
        (caller, r.status(), leg)
    });
    let (invite, from) = third
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the secured trunk gets the call");
    assert_eq!(from, edge, "the challenge goes back to the edge");
    assert!(
        invite
            .header(switchyard_sip::HeaderName::ProxyAuthorization)
            .is_none()
    );
    let mut challenge = String::from("SIP/2.0 407 Proxy Authentication Required\r\n");
    for v in invite.header_rows(switchyard_sip::HeaderName::Via) {
        challenge += &format!("Via: {v}\r\n");
    }
    challenge += &format!(
        "From: {}\r\nTo: {};tag=c407\r\nCall-ID: {}\r\nCSeq: {}\r\nProxy-Authenticate: Digest realm=\"carrier.example\", nonce=\"abc123\", algorithm=MD5, qop=\"auth\"\r\nContent-Length: 0\r\n\r\n",
        invite.header(switchyard_sip::HeaderName::From).unwrap(),
        invite.header(switchyard_sip::HeaderName::To).unwrap(),
        invite.call_id().unwrap(),
        invite.header(switchyard_sip::HeaderName::CSeq).unwrap(),
    );
    third.send_raw(challenge.as_bytes());
    let (again, from) = third
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the INVITE again, with credentials");
    assert_eq!(again.cseq().unwrap().seq, 2);
    let creds = switchyard_sip::digest::Credentials::parse(
        again
            .header(switchyard_sip::HeaderName::ProxyAuthorization)
            .expect("credentials"),
    )
    .unwrap();
    assert_eq!(creds.username, "tenant-a");
    assert_eq!(creds.uri, again.request_uri_str().unwrap());
    let ha1 = switchyard_sip::digest::ha1(
        switchyard_sip::digest::Algorithm::Md5,
        "tenant-a",
        "carrier.example",
        "carrier-secret",
    );
    assert!(creds.verify("INVITE", &ha1), "the right password");
    third.answer(&again, from, 200, &[0]);
    let (mut caller, status, leg) = call.join().unwrap();
    assert_eq!(status, Some(200), "log:\n{}", d.server.log());
    // The caller hangs up; the carrier gets the BYE through the edge.
    let carrier = std::thread::spawn(move || {
        third.answer_next("BYE", Duration::from_secs(5), &[]);
        third
    });
    assert_eq!(
        caller.request(&mut leg.unwrap(), "BYE", "").status(),
        Some(200)
    );
    carrier.join().unwrap();
}

/// Blind transfer (REFER): 1002, in a call with 1001, refers it to 1003. 1002 gets
/// `202`, a NOTIFY of `100 Trying`; 1003 rings with 1001 as the caller and answers; 1002
/// is told `200 OK` (the subscription ends) and hung up; 1001 and 1003 hear each other
/// (the relay re-latches to 1003) and 1002 hears nothing more. A Replaces naming no call
/// of ours is refused with `481` and leaves the call as it was.
#[test]
fn a_blind_transfer_hands_the_caller_to_the_new_party() {
    let d = demo();
    let (mut a, mut a_leg, mut b, mut b_leg, mut c) = d.answered_call_and_a_third_phone();
    // Both talk, so the relay latches to each.
    for seq in 0..5 {
        a.send_rtp(&a_leg, 0, seq);
        b.send_rtp(&b_leg, 0, seq);
    }
    assert!(
        b.count_rtp(Duration::from_millis(400)) > 0,
        "1002 hears 1001"
    );
    assert!(
        a.count_rtp(Duration::from_millis(400)) > 0,
        "1001 hears 1002"
    );

    let domain = d.domain.clone();
    let attended = b.request_with(
        &mut b_leg,
        "REFER",
        &format!("Refer-To: <sip:1003@{domain}?Replaces=abc%3Bto-tag%3Dx%3Bfrom-tag%3Dy>\r\n"),
        "",
    );
    assert_eq!(attended.status(), Some(481), "{attended:?}");
    let accepted = b.request_with(
        &mut b_leg,
        "REFER",
        &format!("Refer-To: <sip:1003@{domain}>\r\nReferred-By: <sip:1002@{domain}>\r\n"),
        "",
    );
    assert_eq!(accepted.status(), Some(202), "{accepted:?}");
    let (notify, from) = b
        .wait_request("NOTIFY", Duration::from_secs(5))
        .expect("NOTIFY 100 Trying");
    assert!(String::from_utf8_lossy(notify.body()).starts_with("SIP/2.0 100"));
    assert_eq!(
        notify.header(switchyard_sip::HeaderName::Event),
        Some("refer")
    );
    b.answer(&notify, from, 200, &[]);
    let (invite, from) = c
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the transfer's target rings");
    let shown = invite.header(switchyard_sip::HeaderName::From).unwrap();
    assert!(shown.contains("1001"), "1001 as the caller: {shown}");
    let c_leg = c.answer(&invite, from, 200, &[0]);
    let (notify, from) = b
        .wait_request("NOTIFY", Duration::from_secs(5))
        .expect("NOTIFY 200 OK");
    assert!(
        String::from_utf8_lossy(notify.body()).starts_with("SIP/2.0 200"),
        "{notify:?}"
    );
    assert!(
        notify
            .header(switchyard_sip::HeaderName::SubscriptionState)
            .unwrap()
            .starts_with("terminated")
    );
    b.answer(&notify, from, 200, &[]);
    let (bye, from) = b
        .wait_request("BYE", Duration::from_secs(5))
        .expect("the transferor is hung up");
    b.answer(&bye, from, 200, &[]);

    // 1001 and 1003 hear each other; 1002 hears nothing more.
    hear_each_other(&a, &a_leg, &c, &c_leg);
    assert_eq!(
        b.count_rtp(Duration::from_millis(200)),
        0,
        "1002 hears nothing"
    );

    let callee = std::thread::spawn(move || {
        c.answer_next("BYE", Duration::from_secs(5), &[]);
    });
    assert_eq!(a.request(&mut a_leg, "BYE", "").status(), Some(200));
    callee.join().unwrap();
    let cdrs = d.cdrs(&d.tenant, 1);
    assert_eq!(cdrs[0]["disposition"], "answered", "{}", cdrs[0]);
    assert_eq!(cdrs[0]["hangup_side"], "caller", "{}", cdrs[0]);
    assert_eq!(
        attempts(&cdrs[0]),
        [
            ("dialled".to_owned(), "1002".to_owned(), Some(200)),
            ("transfer".to_owned(), "1003".to_owned(), Some(200)),
        ],
        "one CDR with the transferred leg: {}",
        cdrs[0]
    );
}

/// Blind transfer by a desk phone that hangs up as soon as its REFER is accepted (RFC
/// 5589 §6.1 allows it; most desk phones do it): 1002 refers 1001 to 1003 and sends BYE
/// at once. 1001 is not hung up: 1003 rings, answers and talks with 1001; 1002 is told
/// nothing more. Then 1003 is referred on to 1002, which refuses (`486`) after 1003 left:
/// with nobody to take the call back, 1001 is hung up and the CDR says why.
#[test]
fn a_blind_transferor_that_hangs_up_at_once_leaves_its_caller_with_the_new_party() {
    let d = demo();
    let (mut a, a_leg, mut b, mut b_leg, mut c) = d.answered_call_and_a_third_phone();
    for seq in 0..5 {
        a.send_rtp(&a_leg, 0, seq);
        b.send_rtp(&b_leg, 0, seq);
    }
    let domain = d.domain.clone();
    let accepted = b.request_with(
        &mut b_leg,
        "REFER",
        &format!("Refer-To: <sip:1003@{domain}>\r\n"),
        "",
    );
    assert_eq!(accepted.status(), Some(202), "{accepted:?}");
    assert_eq!(
        b.request(&mut b_leg, "BYE", "").status(),
        Some(200),
        "the referrer leaves at once"
    );
    let (invite, from) = c
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("the transfer's target still rings");
    assert!(
        a.wait_request("BYE", Duration::from_millis(300)).is_none(),
        "1001 is not hung up while 1003 rings"
    );
    let mut c_leg = c.answer(&invite, from, 200, &[0]);
    // 1001 is taken off hold with 1003's media.
    a.answer_next("INVITE", Duration::from_secs(5), &[0]);
    hear_each_other(&a, &a_leg, &c, &c_leg);
    // 1002 got at most the NOTIFY of 100 Trying sent before its BYE; nothing after.
    while let Some((notify, _)) = b.wait_request("NOTIFY", Duration::from_millis(300)) {
        assert!(
            String::from_utf8_lossy(notify.body()).starts_with("SIP/2.0 100"),
            "{notify:?}"
        );
    }
    assert!(b.wait_request("BYE", Duration::from_millis(200)).is_none());

    // 1003 refers 1001 back to 1002 and leaves; 1002 refuses.
    let accepted = c.request_with(
        &mut c_leg,
        "REFER",
        &format!("Refer-To: <sip:1002@{domain}>\r\n"),
        "",
    );
    assert_eq!(accepted.status(), Some(202), "{accepted:?}");
    assert_eq!(c.request(&mut c_leg, "BYE", "").status(), Some(200));
    let (invite, from) = b
        .wait_request("INVITE", Duration::from_secs(5))
        .expect("1002 rings");
    b.answer(&invite, from, 486, &[]);
    let (bye, from) = a
        .wait_request("BYE", Duration::from_secs(5))
        .expect("1001 is hung up: nobody to take the call back");
    a.answer(&bye, from, 200, &[]);
    let cdrs = d.cdrs(&d.tenant, 1);
    assert_eq!(cdrs[0]["disposition"], "answered", "{}", cdrs[0]);
    assert_eq!(cdrs[0]["hangup_side"], "transfer-failed", "{}", cdrs[0]);
    assert_eq!(
        attempts(&cdrs[0]),
        [
            ("dialled".to_owned(), "1002".to_owned(), Some(200)),
            ("transfer".to_owned(), "1003".to_owned(), Some(200)),
            ("transfer".to_owned(), "1002".to_owned(), Some(486)),
        ],
        "{}",
        cdrs[0]
    );
}

/// The engine (`core-1` or `core-2` of a `serve` with two) the edge hashes `call_id` to.
fn engine_of(call_id: &str) -> &'static str {
    use switchyard_edge::hrw::pick;
    let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let engines =
        ["core-1", "core-2"].map(|id| switchyard_edge::proxy::CoreNode::new(id, nowhere).node);
    match pick(call_id, &engines).unwrap().id.as_str() {
        "core-1" => "core-1",
        _ => "core-2",
    }
}

/// A Call-ID the edge hashes to `engine`.
fn call_id_on(engine: &str) -> String {
    (0..)
        .map(|i| format!("call-{i}-{}", std::process::id()))
        .find(|c| engine_of(c) == engine)
        .unwrap()
}

/// Attended transfer (REFER with Replaces, RFC 3891): 1001 calls 1002; 1002 calls 1003
/// to consult, then refers 1001 to 1003 replacing that consultation call. 1003 is
/// re-INVITEd onto 1001's call (one relay: they hear each other), 1002 is told `200 OK`
/// and hung up on both calls, the consultation call's CDR says it was transferred, and a
/// Replaces that names the Call-ID without its tags is refused (`481`).
///
/// Calls spread over engines by Call-ID: the consultation call is made to land on the
/// other engine than the call the REFER comes in on, which asks for it and takes it on.
#[test]
fn an_attended_transfer_joins_the_caller_and_the_consulted_party() {
    let d = demo_with(&["--core-shards", "2"]);
    let (mut a, mut a_leg, mut b, mut b_first, mut c) = d.answered_call_and_a_third_phone();
    let other = if engine_of(&a_leg.call_id) == "core-1" {
        "core-2"
    } else {
        "core-1"
    };
    b.call_ids.push(call_id_on(other));
    // 1002 consults 1003.
    let consult = std::thread::spawn(move || {
        let (r, leg) = b.call("1003", &[0]);
        (b, r.status(), leg)
    });
    let (invite, from) = c.wait_request("INVITE", Duration::from_secs(5)).unwrap();
    c.answer(&invite, from, 200, &[0]);
    let (mut b, status, b_second) = consult.join().unwrap();
    assert_eq!(status, Some(200));
    let b_second = b_second.unwrap();
    assert_ne!(
        b_second.target, b_first.target,
        "the two calls on different engines"
    );
    let refer = b_second.refer_to_replacing(&format!("sip:1003@{}", d.domain));
    // The right Call-ID with a guessed to-tag: no such dialog, on either engine.
    let mut guessed_leg = b_second.clone();
    guessed_leg.to = format!(
        "{};tag=guessed",
        guessed_leg.to.split(";tag=").next().unwrap()
    );
    let guessed = b.request_with(
        &mut b_first,
        "REFER",
        &guessed_leg.refer_to_replacing(&format!("sip:1003@{}", d.domain)),
        "",
    );
    assert_eq!(guessed.status(), Some(481), "{guessed:?}");
    let asked = std::time::Instant::now();
    let accepted = b.request_with(&mut b_first, "REFER", &refer, "");
    assert_eq!(accepted.status(), Some(202), "{accepted:?}");
    // A figure for the notes, not a check: the ask to the other engine is on this path.
    eprintln!("REFER to 202 across engines: {:?}", asked.elapsed());
    let (notify, from) = b.wait_request("NOTIFY", Duration::from_secs(5)).unwrap();
    assert!(String::from_utf8_lossy(notify.body()).starts_with("SIP/2.0 100"));
    b.answer(&notify, from, 200, &[]);
    // 1003 is moved onto 1001's call: a re-INVITE in its existing dialog.
    let (reinvite, from) = c.wait_reinvite(Duration::from_secs(5));
    let c_leg = c.answer(&reinvite, from, 200, &[0]);
    let (notify, from) = b.wait_request("NOTIFY", Duration::from_secs(5)).unwrap();
    assert!(String::from_utf8_lossy(notify.body()).starts_with("SIP/2.0 200"));
    b.answer(&notify, from, 200, &[]);
    for _ in 0..2 {
        let (bye, from) = b
            .wait_request("BYE", Duration::from_secs(5))
            .expect("1002 hung up on both calls");
        b.answer(&bye, from, 200, &[]);
    }
    hear_each_other(&a, &a_leg, &c, &c_leg);

    let callee = std::thread::spawn(move || {
        c.answer_next("BYE", Duration::from_secs(5), &[]);
    });
    assert_eq!(a.request(&mut a_leg, "BYE", "").status(), Some(200));
    callee.join().unwrap();
    let cdrs = d.cdrs(&d.tenant, 2);
    let consultation = cdrs
        .iter()
        .find(|c| c["hangup_side"] == "transferred")
        .unwrap_or_else(|| panic!("the consultation call's CDR: {cdrs:?}"));
    assert_eq!(consultation["disposition"], "answered");
    let main = cdrs
        .iter()
        .find(|c| c["hangup_side"] == "caller")
        .unwrap_or_else(|| panic!("the main call's CDR: {cdrs:?}"));
    assert_eq!(
        attempts(main)
            .last()
            .map(|(reason, _, result)| (reason.as_str(), *result)),
        Some(("attended-transfer", Some(200))),
        "{main}"
    );
}

/// `a` calls `dialled` on `b` with the next Call-ID hashing to `engine`; both answered.
fn answered_on(engine: &str, mut a: Phone, mut b: Phone, dialled: &str) -> (Phone, CallLeg, Phone) {
    a.call_ids.push(call_id_on(engine));
    let dialled = dialled.to_owned();
    let caller = std::thread::spawn(move || {
        let (r, leg) = a.call(&dialled, &[0]);
        assert_eq!(r.status(), Some(200), "{r:?}");
        (a, leg.unwrap())
    });
    let (invite, from) = b.wait_request("INVITE", Duration::from_secs(5)).unwrap();
    b.answer(&invite, from, 200, &[0]);
    let (a, leg) = caller.join().unwrap();
    let _ = b.wait_request("ACK", Duration::from_secs(2));
    (a, leg, b)
}

/// Tenant isolation across engines: a phone that names another tenant's call, its
/// Call-ID and both tags, in a REFER's Replaces gets `481`. The engine holding that call
/// never hands it over, and the call goes on.
#[test]
fn a_replaces_naming_another_tenants_call_on_another_engine_is_refused() {
    let d = demo_with(&["--core-shards", "2"]);
    let (a, b) = d.registered_pair();
    let (mut a, mut victim, mut b) = answered_on("core-1", a, b, "1002");
    let (t, r) = d.tenant("intruder.example", 4000);
    d.extension(&t, &r, 4000, "intruder-4000");
    d.extension(&t, &r, 4001, "intruder-4001");
    let addr = d.server.addr("UDP");
    let mut x = Phone::new(addr, "intruder.example", "4000", "intruder-4000");
    let mut y = Phone::new(addr, "intruder.example", "4001", "intruder-4001");
    assert_eq!((x.register(), y.register()), (200, 200));
    let (mut x, mut own, _y) = answered_on("core-2", x, y, "4001");
    assert_ne!(
        own.target, victim.target,
        "the two calls on different engines"
    );
    let refer = victim.refer_to_replacing("sip:4001@intruder.example");
    let refused = x.request_with(&mut own, "REFER", &refer, "");
    assert_eq!(refused.status(), Some(481), "{refused:?}");
    assert_eq!(
        d.metrics().get("switchyard_core_calls_handed_over_total"),
        Some(&0.0),
        "nothing handed over"
    );
    // The other tenant's call is untouched: its BYE is answered and reaches 1002.
    let callee = std::thread::spawn(move || {
        b.answer_next("BYE", Duration::from_secs(5), &[]);
    });
    assert_eq!(a.request(&mut victim, "BYE", "").status(), Some(200));
    callee.join().unwrap();
}

/// With two call engines in the process (`--core-shards 2`), the edge hashes each call's
/// Call-ID over them: one tenant's calls spread over both (the dialog's requests follow
/// the Contact each caller gets, which names the engine's own socket).
#[test]
fn with_two_shards_a_tenants_calls_spread_over_both_engines() {
    let d = demo_with(&["--core-shards", "2"]);
    let mut engines_of_tenants = Vec::new();
    for i in 0..2i64 {
        let domain = format!("shard{i}.example");
        let first = 3000 + 100 * i;
        let (t, r) = d.tenant(&domain, first);
        let (pa, pb) = (format!("password-a-{i}"), format!("password-b-{i}"));
        d.extension(&t, &r, first, &pa);
        d.extension(&t, &r, first + 1, &pb);
        let addr = d.server.addr("UDP");
        let mut a = Phone::new(addr, &domain, &first.to_string(), &pa);
        let mut b = Phone::new(addr, &domain, &(first + 1).to_string(), &pb);
        assert_eq!(a.register(), 200);
        assert_eq!(b.register(), 200);
        let mut engines = std::collections::BTreeMap::new();
        for engine in ["core-1", "core-2", "core-1", "core-2"] {
            a.call_ids.push(call_id_on(engine));
            let callee = std::thread::spawn(move || {
                b.answer_next("INVITE", Duration::from_secs(5), &[0]);
                let _ = b.wait_request("ACK", Duration::from_secs(2));
                b.answer_next("BYE", Duration::from_secs(5), &[]);
                b
            });
            let (r, leg) = a.call(&(first + 1).to_string(), &[0]);
            assert_eq!(r.status(), Some(200), "{r:?}");
            let mut leg = leg.unwrap();
            let socket = leg.target.split('@').nth(1).unwrap_or_default().to_owned();
            assert_eq!(
                engines
                    .insert(engine, socket.clone())
                    .unwrap_or(socket.clone()),
                socket,
                "{engine}'s calls on one socket"
            );
            assert_eq!(a.request(&mut leg, "BYE", "").status(), Some(200));
            b = callee.join().unwrap();
        }
        let sockets: std::collections::BTreeSet<_> = engines.values().collect();
        assert_eq!(
            sockets.len(),
            2,
            "{domain}'s calls on both engines: {engines:?}"
        );
        engines_of_tenants.push(engines);
    }
    assert_eq!(
        engines_of_tenants[0], engines_of_tenants[1],
        "the Call-ID decides, not the tenant"
    );
    let metrics = d.metrics();
    for core in ["core-1", "core-2"] {
        let name = format!("switchyard_core_calls_active{{core=\"{core}\"}}");
        assert_eq!(metrics.get(&name), Some(&0.0), "{name} in {metrics:?}");
    }
    assert_eq!(metrics.get("switchyard_core_nodes_healthy"), Some(&2.0));
}
