//! `serve` runs the provisioning API on the embedded store; keys come from `serve --demo`
//! or from `switchyard api-key create` working on the store directly.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::Server;

/// Starts the binary with `args` and the data directory; returns it and its API address.
fn start_with_api(
    args: &[&str],
    data: &std::path::Path,
) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .arg(data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut api = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("listening API http://") {
            api = Some(a.parse().unwrap());
        }
        if line == "ready" {
            break;
        }
    }
    (child, api.expect("API address printed"))
}

/// A minimal HTTP/1.1 exchange (one request per connection).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn demo_serves_the_api_with_a_printed_operator_key() {
    let server = Server::start(&[]);
    let api = server.addr("API");
    let key = server
        .api_key
        .clone()
        .expect("serve --demo prints an operator key");
    let (status, body) = http(
        api,
        "POST",
        "/v1/tenants",
        &key,
        Some(r#"{"name":"Acme","domain":"acme.example.com"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(api, "GET", "/v1/tenants", &key, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("acme.example.com"));
    let (status, _) = http(api, "GET", "/v1/tenants", "sy_bad_key", None).await;
    assert_eq!(status, 401);
    let (status, body) = http(api, "GET", "/openapi.json", "", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"openapi\":\"3.1"));
}

#[tokio::test]
async fn api_key_create_works_on_the_store_directly() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["api-key", "create", "--operator", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("sy_"), "{key}");
    // A server on the same data directory accepts it.
    let (mut child, api) = start_with_api(
        &[
            "serve",
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
            "--api-listen",
            "127.0.0.1:0",
            "--data-dir",
        ],
        data.path(),
    );
    let (status, _) = http(api, "GET", "/v1/tenants", &key, None).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_api_subcommand_serves_the_api_alone() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["api-key", "create", "--operator", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (mut child, api) = start_with_api(
        &["api", "--api-listen", "127.0.0.1:0", "--data-dir"],
        data.path(),
    );
    let (status, _) = http(
        api,
        "POST",
        "/v1/tenants",
        &key,
        Some(r#"{"name":"A","domain":"a.example.com"}"#),
    )
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = child.wait().unwrap();
    assert_eq!(status, 201);
    assert!(exit.success(), "stops cleanly on SIGTERM: {exit:?}");
}
