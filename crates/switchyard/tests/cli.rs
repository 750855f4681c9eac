//! Resource commands on the local store: create, list (table and JSON), errors as one line.

use std::process::Command;

fn sy(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tenants_ranges_extensions_and_numbers_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, table, _) = sy(
        d,
        &[
            "tenant",
            "create",
            "--name",
            "Acme",
            "--domain",
            "acme.example.com",
        ],
    );
    assert!(ok);
    assert!(
        table.starts_with("ID") && table.contains("acme.example.com"),
        "{table}"
    );
    let (_, json, _) = sy(d, &["tenant", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let tenant = v["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, json, _) = sy(
        d,
        &[
            "range", "create", "--tenant", &tenant, "--first", "1000", "--last", "1999", "--json",
        ],
    );
    let range = serde_json::from_str::<serde_json::Value>(&json).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out, _) = sy(
        d,
        &[
            "extension",
            "create",
            "--tenant",
            &tenant,
            "--range",
            &range,
            "--password",
            "secret-123",
            "--display-name",
            "Alice",
        ],
    );
    assert!(ok && out.contains("1000") && out.contains("Alice"), "{out}");
    assert!(sy(d, &["did", "add", "+14155550100"]).0);
    let (ok, out, _) = sy(d, &["did", "assign", "--tenant", &tenant]);
    assert!(ok && out.contains("+14155550100"), "{out}");
    let (ok, _, err) = sy(
        d,
        &["tenant", "create", "--name", "X", "--domain", "bad domain"],
    );
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "error: 422 invalid domain: must be a DNS name such as acme.example.com"
    );
    let (ok, _, err) = sy(d, &["tenant", "show", "nope"]);
    assert!(!ok && err.contains("404"), "{err}");
}
