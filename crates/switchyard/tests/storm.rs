//! A registration storm against the real binary, from the project's own generator
//! (`switchyard bench register-storm`): 10,000 phones in 500 tenants send their first
//! REGISTER at once and complete the digest handshake. Before the transaction driver
//! stopped waiting on its transaction user, this wedged `serve` for good: every phone
//! timed out, OPTIONS went unanswered and SIGTERM was ignored.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use common::{Server, options};

fn storm(server: &Server, phones: usize, tenants: usize) -> serde_json::Value {
    let store = format!(
        "sqlite://{}",
        server.data_dir.path().join("switchyard.db").display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["bench", "register-storm", "--json", "--quiet"])
        .args(["--target", &server.addr("UDP").to_string()])
        .args(["--phones", &phones.to_string()])
        .args(["--tenants", &tenants.to_string()])
        .args(["--provision-store", &store])
        .args(["--deadline-secs", "60"])
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{}\nserver log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&server.log())
        )
    })
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn ten_thousand_phones_at_once_all_register_and_the_server_still_answers_and_stops() {
    let (_config_dir, config) = common::load_generator_config();
    let mut server = Server::start(&["--config", &config]);
    let report = storm(&server, 10_000, 500);
    assert_eq!(
        report["registered"],
        10_000,
        "every phone registers: {report:#}\nserver log tail:\n{}",
        tail(&server.log())
    );
    assert_eq!(report["failed"], 0, "{report:#}");
    assert!(
        report["probes_answered"].as_u64() > Some(0),
        "OPTIONS answered during the storm: {report:#}"
    );

    // After the storm the server answers at once (a wedged one never does).
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let local = udp.local_addr().unwrap();
    udp.send_to(
        options("UDP", local, "after-storm").as_bytes(),
        server.addr("UDP"),
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("OPTIONS answered after the storm");
    assert!(buf[..n].starts_with(b"SIP/2.0 200"));

    // A second storm of the same phones (refreshes) while SIGTERM arrives mid-way: the
    // process stops within seconds, under load.
    let target = server.addr("UDP").to_string();
    let mut load = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["bench", "register-storm", "--quiet", "--target", &target])
        .args(["--deadline-secs", "10"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let status = server.terminate(Duration::from_secs(5));
    let _ = load.kill();
    let _ = load.wait();
    assert!(
        status.is_some(),
        "serve stops within 5 s of SIGTERM under load; log tail:\n{}",
        tail(&server.log())
    );

    // Overload control: the same phones against a server told to shed anything that
    // waited 20 ms. New REGISTERs are answered 503 with a Retry-After of 1-10 s, the
    // phones come back spread out, and every one of them registers in the end.
    let config = server.data_dir.path().join("shed.toml");
    std::fs::write(
        &config,
        "[edge]\nallow = [\"127.0.0.1\"]\nshed_after_ms = 20\nretry_after_min_secs = 1\nretry_after_max_secs = 10\n",
    )
    .unwrap();
    let data_dir = server.data_dir.path().to_str().unwrap().to_owned();
    let shedding = Server::start(&[
        "--data-dir",
        &data_dir,
        "--config",
        config.to_str().unwrap(),
    ]);
    let report = storm(&shedding, 10_000, 500);
    assert_eq!(
        report["registered"], 10_000,
        "every phone registers after being told to come back: {report:#}"
    );
    assert!(
        report["responses"]["503"].as_u64() > Some(0),
        "the overloaded edge sheds with 503: {report:#}"
    );
    let metrics = shedding_metrics(&shedding);
    let shed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_edge_shed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no shed counter on /metrics:\n{metrics}"));
    assert!(shed > 0.0, "sheds are counted on /metrics:\n{metrics}");
}

fn shedding_metrics(server: &Server) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.addr("API")).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}
