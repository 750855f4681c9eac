//! A second softphone family: linphone (Debian `linphone-cli`, driven by `linphonecsh`)
//! calls a baresip through `switchyard serve --demo`: registration, call, hold and
//! unhold (re-INVITEs with `sendonly` then `sendrecv`), hang-up, CDR.
//!
//! liblinphone looks up DNS and other services on its own, and tests may send nothing
//! beyond loopback, so the test runs itself again inside a new network namespace that has
//! only `lo` (`common::netns`), with the server and both phones in it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use common::baresip::{Baresip, account, free_port_pair};

const TEST: &str = "linphone_registers_calls_holds_resumes_and_hangs_up";

fn linphonecsh(home: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("linphonecsh")
        .args(args)
        .env("HOME", home)
        .output()
        .expect("linphonecsh is installed (.ci/run installs linphone-cli)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn linphone_registers_calls_holds_resumes_and_hangs_up() {
    if common::netns::run_isolated(TEST) {
        return;
    }
    let server = Server::start(&[]);
    let creds: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(server.data_dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap();
    let domain = creds["domain"].as_str().unwrap();
    let tenant = creds["tenant_id"].as_str().unwrap();
    let exts = creds["extensions"].as_array().unwrap();

    let mut b = Baresip::start("b", 1000.0, 30.0);
    b.register(&account(
        domain,
        &exts[1],
        server.addr("UDP"),
        ";answermode=auto",
    ));

    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".local/share/linphone")).unwrap();
    let rc = home.path().join("linphonerc");
    let proxy = server.addr("UDP");
    std::fs::write(
        &rc,
        format!(
            "[sip]\nsip_port={sip}\nsip_tcp_port=-1\nsip_tls_port=-1\ndefault_proxy=0\n\
[rtp]\naudio_rtp_port={rtp}\n\
[video]\nenabled=0\ncapture=0\ndisplay=0\nautomatically_initiate=0\nautomatically_accept=0\n\
[proxy_0]\nreg_proxy=<sip:{proxy}>\nreg_route=<sip:{proxy};lr>\nreg_identity=sip:{user}@{domain}\nreg_expires=600\nreg_sendregister=1\n\
[auth_info_0]\nusername={user}\npasswd={pw}\nrealm={domain}\ndomain={domain}\n",
            sip = free_port_pair(),
            rtp = free_port_pair(),
            user = exts[0]["username"].as_str().unwrap(),
            pw = exts[0]["password"].as_str().unwrap(),
        ),
    )
    .unwrap();
    let log = home.path().join("linphone.log");
    linphonecsh(home.path(), &["exit"]); // a daemon left by an earlier run
    let rc_s = rc.to_string_lossy().into_owned();
    let log_s = log.to_string_lossy().into_owned();
    linphonecsh(home.path(), &["init", "-c", &rc_s, "-d", "6", "-l", &log_s]);
    struct Daemon<'a>(&'a std::path::Path);
    impl Drop for Daemon<'_> {
        fn drop(&mut self) {
            linphonecsh(self.0, &["exit"]);
        }
    }
    let _daemon = Daemon(home.path());

    wait_for("linphone to register", Duration::from_secs(10), || {
        linphonecsh(home.path(), &["status", "register"]).starts_with("registered,")
    });
    linphonecsh(home.path(), &["dial", &format!("sip:1002@{domain}")]);
    b.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    wait_for(
        "linphone to see the call up",
        Duration::from_secs(10),
        || linphonecsh(home.path(), &["status", "hook"]).contains("Call out"),
    );
    // Hold: linphone sends a re-INVITE with sendonly; it reaches baresip through the core.
    let invites = |b: &Baresip| b.log().matches("INVITE sip:").count();
    let before = invites(&b);
    linphonecsh(home.path(), &["generic", "pause"]);
    wait_for(
        "the hold re-INVITE at baresip",
        Duration::from_secs(10),
        || invites(&b) > before && b.log().contains("a=sendonly"),
    );
    let held = invites(&b);
    // linphone ignores a resume that arrives before its hold transaction has completed
    // (the 200 and ACK may still be on their way when baresip logs the re-INVITE), so
    // the command is repeated until the unhold re-INVITE shows up.
    let mut last_try = Instant::now();
    linphonecsh(home.path(), &["generic", "resume"]);
    wait_for(
        "the unhold re-INVITE at baresip",
        Duration::from_secs(10),
        || {
            if last_try.elapsed() > Duration::from_secs(1) {
                linphonecsh(home.path(), &["generic", "resume"]);
                last_try = Instant::now();
            }
            invites(&b) > held
        },
    );
    wait_for(
        "linphone back to a running call",
        Duration::from_secs(10),
        || linphonecsh(home.path(), &["status", "hook"]).contains("Call out"),
    );
    linphonecsh(home.path(), &["hangup"]);
    b.wait_event("CALL_CLOSED", Duration::from_secs(10));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = server.api_key.clone().unwrap();
    let mut cdr = serde_json::Value::Null;
    wait_for("the CDR", Duration::from_secs(5), || {
        let reply = rt
            .block_on(async {
                switchyard::http_client::Conn::new(server.addr("API"))
                    .request(
                        "GET",
                        &format!("/v1/tenants/{tenant}/cdrs"),
                        &key,
                        None,
                        None,
                    )
                    .await
            })
            .unwrap();
        let list: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        cdr = list[0].clone();
        !cdr.is_null()
    });
    assert_eq!(cdr["disposition"], "answered", "{cdr}");
    assert_eq!(cdr["hangup_side"], "caller", "{cdr}");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    for state in [
        "LinphoneCallPaused",
        "LinphoneCallResuming",
        "LinphoneCallEnd",
    ] {
        assert!(log_text.contains(state), "linphone went through {state}");
    }
}
