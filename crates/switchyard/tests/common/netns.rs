//! Runs a test inside its own network namespace, where only `lo` exists, for real SIP
//! software that might look up DNS or reach other hosts on its own: nothing can leave
//! loopback there.
#![allow(dead_code)]

use std::process::Command;

/// Domains the tests use; inside a namespace they resolve to 127.0.0.1.
pub const TEST_DOMAINS: [&str; 3] = ["demo.switchyard.test", "t2.example", "nowhere.example"];

/// In the outer process: runs the test `name` of this binary again inside `unshare -n`,
/// asserts it passed, and returns true (the caller returns at once). Inside the
/// namespace: returns false, and the caller runs the test body.
pub fn run_isolated(name: &str) -> bool {
    if std::env::var_os("SWITCHYARD_TEST_IN_NETNS").is_some() {
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    // Inside, the test domains resolve to loopback (a private /etc/hosts bound over the
    // real one in a private mount namespace), for clients that insist on resolving the
    // domain of a URI even with an outbound proxy (sipsak).
    let hosts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        hosts.path(),
        format!(
            "127.0.0.1 localhost {}\n::1 localhost\n",
            TEST_DOMAINS.join(" ")
        ),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args([
            "-n",
            "-m",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "ip link set lo up && mount --bind \"$2\" /etc/hosts && exec \"$0\" --exact \"$1\" --nocapture",
        ])
        .arg(&exe)
        .arg(name)
        .arg(hosts.path())
        .env("SWITCHYARD_TEST_IN_NETNS", "1")
        .output()
        .expect("unshare (util-linux) runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // The inner run must have run this very test, not matched nothing.
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} failed inside its network namespace:\n{text}"
    );
    true
}
