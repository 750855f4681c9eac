//! The attacker's tools against the edge: sipvicious (Debian package) `svwar` looks for
//! extensions and `svcrack` guesses a password. Both run in a network namespace of
//! their own (they probe for their own address), against the real binary.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;

/// Runs a sipvicious tool for at most `secs` (svcrack keeps waiting once it is banned),
/// and returns what it printed.
fn sipvicious(tool: &str, args: &[&str], secs: u64) -> String {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(tool)
        .args(args)
        .stdout(Stdio::from(out.reopen().unwrap()))
        .stderr(Stdio::from(out.reopen().unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} is installed (.ci/run installs sipvicious): {e}"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(out.path()).unwrap_or_default()
}

fn demo_credentials(server: &Server) -> serde_json::Value {
    let text = std::fs::read_to_string(server.data_dir.path().join("demo-credentials.json"))
        .expect("serve --demo writes demo-credentials.json");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn svwar_finds_no_extension_and_svcrack_is_banned_before_it_guesses() {
    if common::netns::run_isolated(
        "svwar_finds_no_extension_and_svcrack_is_banned_before_it_guesses",
    ) {
        return;
    }
    let server = Server::start(&[]);
    let creds = demo_credentials(&server);
    let domain = creds["domain"].as_str().unwrap();
    let password = creds["extensions"][0]["password"].as_str().unwrap();
    let port = server.addr("UDP").port().to_string();

    // svwar over the range holding the demo's 1001 and 1002: unknown and known users
    // get the same answer, so it gives up (and, forced, tells them apart no better).
    for force in [false, true] {
        let mut args = vec!["-e", "995-1010", "--domain", domain, "-p", &port];
        if force {
            args.push("--force");
        }
        args.push("127.0.0.1");
        let text = sipvicious("svwar", &args, 30);
        assert!(text.contains("found nothing"), "svwar {args:?}:\n{text}");
        assert!(!text.contains("| 1001"), "svwar {args:?}:\n{text}");
    }

    // svcrack with a dictionary whose 25th word is the right password: the source is
    // banned after 5 failures, long before it gets there.
    let dict = tempfile::NamedTempFile::new().unwrap();
    let mut words: Vec<String> = (0..24).map(|i| format!("guess-{i:02}")).collect();
    words.push(password.to_owned());
    std::fs::write(dict.path(), words.join("\n") + "\n").unwrap();
    let text = sipvicious(
        "svcrack",
        &[
            "-u",
            "1001",
            "-d",
            dict.path().to_str().unwrap(),
            "--domain",
            domain,
            "-p",
            &port,
            "127.0.0.1",
        ],
        10,
    );
    assert!(
        !text.contains(password),
        "svcrack found the password:\n{text}"
    );
    // The log is coloured: drop the escape sequences before reading fields.
    let log = regex::Regex::new("\x1b\\[[0-9;]*m")
        .unwrap()
        .replace_all(&server.log(), "")
        .into_owned();
    let ban = log
        .lines()
        .find(|l| l.contains("source banned"))
        .unwrap_or_else(|| panic!("no ban in the log:\n{log}"));
    let failures: u32 = ban
        .split("failures=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ban}"));
    assert!(failures <= 20, "banned after {failures} tries: {ban}");
}
