//! Starts the real `switchyard` binary on loopback ports chosen by the OS and stops it.
#![allow(dead_code)]

pub mod baresip;
pub mod linphone;
pub mod netns;
pub mod phone;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub data_dir: tempfile::TempDir,
    pub stderr_path: PathBuf,
    /// The operator key `serve --demo` printed.
    pub api_key: Option<String>,
}

/// A config file that allow-lists 127.0.0.1: a load generator sends for thousands of
/// phones from that one address, as a large NAT would (exempt from per-source limits
/// and bans). Kept alive by the returned directory.
pub fn load_generator_config() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, "[edge]\nallow = [\"127.0.0.1\"]\n").unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

impl Server {
    /// Starts `switchyard serve --demo` with every transport on 127.0.0.1 port 0.
    pub fn start(extra: &[&str]) -> Server {
        let data_dir = tempfile::tempdir().unwrap();
        let stderr_path = data_dir.path().join("serve.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--demo", "--data-dir"])
            .arg(data_dir.path())
            .args([
                "--udp",
                "127.0.0.1:0",
                "--tcp",
                "127.0.0.1:0",
                "--tls",
                "127.0.0.1:0",
                "--ws",
                "127.0.0.1:0",
                "--wss",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("SWITCHYARD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the switchyard binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut addrs = HashMap::new();
        let mut api_key = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line == "ready" {
                break;
            }
            if let Some(key) = line.strip_prefix("demo operator API key: ") {
                api_key = Some(key.to_owned());
            }
            if let Some(url) = line.strip_prefix("listening API http://") {
                addrs.insert("API".to_owned(), url.parse().unwrap());
                continue;
            }
            if let Some(rest) = line.strip_prefix("listening ") {
                let (transport, addr) = rest.split_once(' ').unwrap();
                addrs.insert(transport.to_owned(), addr.parse().unwrap());
            }
            assert!(Instant::now() < deadline, "serve did not become ready");
        }
        if !addrs.contains_key("UDP") {
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("serve printed no UDP listener; its log:\n{log}");
        }
        Server {
            child,
            addrs,
            data_dir,
            stderr_path,
            api_key,
        }
    }

    /// One API request with the demo operator key: (status, JSON body or null).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let key = self.api_key.clone().expect("serve --demo prints a key");
        let reply = rt
            .block_on(async {
                switchyard::http_client::Conn::new(self.addr("API"))
                    .request(method, path, &key, None, body)
                    .await
            })
            .unwrap();
        let json = serde_json::from_str(&reply.body).unwrap_or(serde_json::Value::Null);
        (reply.status, json)
    }

    pub fn addr(&self, transport: &str) -> SocketAddr {
        self.addrs[transport]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The series `/metrics` serves, by name with labels.
    pub fn metrics(&self) -> HashMap<String, f64> {
        fetch_metrics(self.addr("API"))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OPTIONS request over `transport` (its Via names `local`).
pub fn options(transport: &str, local: SocketAddr, call_id: &str) -> String {
    format!(
        "OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/{transport} {local};rport;branch=z9hG4bK{call_id}\r\n\
Max-Forwards: 70\r\n\
To: <sip:ping@127.0.0.1>\r\n\
From: <sip:test@127.0.0.1>;tag=t{call_id}\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// A role run as a process of its own (`switchyard media`, ...): what it printed as
/// `listening NAME ADDR` before `ready`.
pub struct RoleProcess {
    pub child: Child,
    pub listening: HashMap<String, String>,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
}

impl RoleProcess {
    pub fn start(args: &[&str]) -> RoleProcess {
        Self::start_command(Command::new(env!("CARGO_BIN_EXE_switchyard")), args)
    }

    /// The same inside the named network namespace `netns` (`ip netns exec`).
    pub fn start_in(netns: &str, args: &[&str]) -> RoleProcess {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(env!("CARGO_BIN_EXE_switchyard"));
        Self::start_command(command, args)
    }

    fn start_command(mut command: Command, args: &[&str]) -> RoleProcess {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("role.log");
        let stderr = std::fs::File::create(&log_path).unwrap();
        let mut child = command
            .args(args)
            .env("SWITCHYARD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the switchyard binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut listening = HashMap::new();
        let mut ready = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line == "ready" {
                ready = true;
                break;
            }
            if let Some((name, addr)) = line
                .strip_prefix("listening ")
                .and_then(|r| r.split_once(' '))
            {
                listening.insert(
                    name.to_owned(),
                    addr.trim_start_matches("http://").to_owned(),
                );
            }
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            ready,
            "switchyard {args:?} did not become ready; its log:\n{log}"
        );
        RoleProcess {
            child,
            listening,
            dir,
            log_path,
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listening[name].parse().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The series its `/metrics` serves (`listening metrics`), by name with labels.
    pub fn metrics(&self) -> HashMap<String, f64> {
        fetch_metrics(self.addr("metrics"))
    }

    /// SIGTERM, and its exit status once it stopped (None: still running after `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: the process dies with whatever it held.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The series `/metrics` at `addr` serves, by name with labels.
pub fn fetch_metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = rt
        .block_on(async {
            switchyard::http_client::Conn::new(addr)
                .request("GET", "/metrics", "", None, None)
                .await
        })
        .unwrap();
    assert_eq!(reply.status, 200);
    reply
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// A tenant with the extensions `numbers`, each with password `pw-NUMBER-DOMAIN`; its id.
pub async fn provision_tenant(
    store: &switchyard_store::Store,
    domain: &str,
    numbers: &[i64],
) -> String {
    let t = store
        .create_tenant(&switchyard_store::NewTenant {
            name: domain.into(),
            domain: domain.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let range = store.add_extension_range(&t.id, 2000, 2099).await.unwrap();
    for n in numbers {
        store
            .create_extension(
                &t.id,
                &switchyard_store::NewExtension {
                    range_id: range.id.clone(),
                    number: Some(*n),
                    display_name: format!("x{n}"),
                    username: None,
                    password: extension_password(*n, domain),
                    voicemail: false,
                },
            )
            .await
            .unwrap();
    }
    t.id
}

/// The password [`provision_tenant`] gives extension `n` of `domain`.
pub fn extension_password(n: i64, domain: &str) -> String {
    format!("pw-{n}-{domain}")
}

/// Waits (up to `within`) until every edge pings every core and every core knows every
/// media node with its capacity; panics with the processes' logs otherwise.
pub fn wait_assembled(
    edges: &[RoleProcess],
    cores: &[RoleProcess],
    media: &[RoleProcess],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let edges_ready = edges.iter().all(|e| {
            e.metrics().get("switchyard_core_nodes_healthy") == Some(&(cores.len() as f64))
        });
        let cores_ready = cores.iter().all(|c| {
            c.metrics()
                .iter()
                .filter(|(k, v)| k.starts_with("switchyard_media_node_capacity") && **v > 0.0)
                .count()
                == media.len()
        });
        if edges_ready && cores_ready {
            return;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = edges
                .iter()
                .chain(cores)
                .chain(media)
                .map(|p| p.log())
                .collect();
            panic!(
                "the cluster did not assemble (edges {edges_ready}, cores {cores_ready}); logs:\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
