//! Drives real `baresip` processes (Debian package) through their `ctrl_tcp` module:
//! netstring-framed JSON commands in, events out. Audio comes from a WAV file we write
//! (a pure tone), and `sndfile` records what the phone hears.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Baresip {
    pub name: String,
    pub dir: tempfile::TempDir,
    child: Child,
    ctrl: TcpStream,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    pub sip_port: u16,
    /// The address it binds (loopback unless started with `start_at`).
    pub ip: String,
}

/// A port that is free now for UDP and TCP, and so is the next one (baresip also binds
/// SIP over TLS on port + 1).
pub fn free_port_pair() -> u16 {
    free_port_pair_at("127.0.0.1")
}

fn free_port_pair_at(ip: &str) -> u16 {
    loop {
        let u = std::net::UdpSocket::bind((ip, 0)).unwrap();
        let p = u.local_addr().unwrap().port();
        if p >= 65000 {
            continue;
        }
        let ok = std::net::TcpListener::bind((ip, p)).is_ok()
            && std::net::TcpListener::bind((ip, p + 1)).is_ok()
            && std::net::UdpSocket::bind((ip, p + 1)).is_ok();
        if ok {
            return p;
        }
    }
}

fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes an 8 kHz mono 16-bit WAV of a sine at `freq` Hz.
pub fn write_tone(path: &Path, freq: f64, secs: f64) {
    let n = (8000.0 * secs) as usize;
    let mut data = Vec::with_capacity(n * 2);
    for i in 0..n {
        let v = (f64::sin(2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0) * 12000.0) as i16;
        data.extend(v.to_le_bytes());
    }
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend(b"RIFF");
    out.extend((36 + data.len() as u32).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes()); // PCM
    out.extend(1u16.to_le_bytes()); // mono
    out.extend(8000u32.to_le_bytes());
    out.extend(16000u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// Reads the samples of a 16-bit PCM WAV (first channel).
pub fn read_wav(path: &Path) -> (u32, Vec<f64>) {
    let b = std::fs::read(path).unwrap();
    let mut i = 12;
    let (mut rate, mut channels, mut samples) = (8000u32, 1usize, Vec::new());
    while i + 8 <= b.len() {
        let id = &b[i..i + 4];
        let len = u32::from_le_bytes(b[i + 4..i + 8].try_into().unwrap()) as usize;
        let body = &b[i + 8..(i + 8 + len).min(b.len())];
        if id == b"fmt " {
            channels = u16::from_le_bytes([body[2], body[3]]) as usize;
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
        } else if id == b"data" {
            samples = body
                .chunks_exact(2 * channels)
                .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]])))
                .collect();
        }
        i += 8 + len + (len % 2);
    }
    (rate, samples)
}

/// Power of `freq` in `samples` (Goertzel), normalised by length.
pub fn goertzel(samples: &[f64], rate: u32, freq: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * freq / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = x + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - k * s1 * s2) / samples.len().max(1) as f64
}

impl Baresip {
    /// Starts a baresip that plays a tone of `freq` Hz for `secs` seconds. A baresip that
    /// exits at start (a port picked as free was taken before it bound it) is started
    /// again on other ports; its log is shown if it never comes up.
    pub fn start(name: &str, freq: f64, secs: f64) -> Baresip {
        Self::start_at("127.0.0.1", name, freq, secs)
    }

    /// The same, bound to `ip` (an address of this network namespace).
    pub fn start_at(ip: &str, name: &str, freq: f64, secs: f64) -> Baresip {
        let dir = tempfile::tempdir().unwrap();
        write_tone(&dir.path().join("tone.wav"), freq, secs);
        let mut attempt = 0;
        let (child, ctrl, sip_port) = loop {
            attempt += 1;
            match Self::spawn(dir.path(), ip) {
                Ok(started) => break started,
                Err(why) if attempt < 3 => {
                    eprintln!("baresip {name} did not start ({why}); trying other ports")
                }
                Err(why) => {
                    let log =
                        std::fs::read_to_string(dir.path().join("baresip.log")).unwrap_or_default();
                    panic!("baresip {name} ctrl_tcp: {why}\n{log}")
                }
            }
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut reader = ctrl.try_clone().unwrap();
        let sink = events.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(colon) = buf.iter().position(|&b| b == b':') {
                    let Ok(len) = std::str::from_utf8(&buf[..colon])
                        .unwrap_or("x")
                        .parse::<usize>()
                    else {
                        buf.clear();
                        break;
                    };
                    if buf.len() < colon + 1 + len + 1 {
                        break;
                    }
                    if let Ok(v) = serde_json::from_slice(&buf[colon + 1..colon + 1 + len]) {
                        sink.lock().unwrap().push(v);
                    }
                    buf.drain(..colon + 1 + len + 1);
                }
            }
        });
        Baresip {
            name: name.to_owned(),
            dir,
            child,
            ctrl,
            events,
            sip_port,
            ip: ip.to_owned(),
        }
    }

    /// One try at starting baresip in `dir`: its process, control connection and SIP port.
    fn spawn(dir: &Path, ip: &str) -> Result<(Child, TcpStream, u16), String> {
        let sip_port = free_port_pair_at(ip);
        let ctrl_port = free_tcp_port(ip);
        let config = format!(
            "poll_method epoll\n\
sip_listen {ip}:{sip_port}\n\
sip_trans_def udp\n\
audio_source aufile,tone.wav\n\
audio_alert aufile,tone.wav\n\
audio_player aufile,/dev/null\n\
module_path /usr/lib/baresip/modules\n\
module g711.so\n\
module aufile.so\n\
module sndfile.so\n\
module_app menu.so\n\
module_app ctrl_tcp.so\n\
ctrl_tcp_listen {ip}:{ctrl_port}\n\
net_interface {ip}\n\
snd_path .\n"
        );
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("accounts"), "").unwrap();
        let log = std::fs::File::create(dir.join("baresip.log")).unwrap();
        let mut child = Command::new("baresip")
            .args(["-4", "-s", "-f"])
            .arg(dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("baresip is installed (.ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match TcpStream::connect((ip, ctrl_port)) {
                Ok(s) => return Ok((child, s, sip_port)),
                Err(e) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("exited with {status} ({e})"));
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(e.to_string());
                    }
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
        }
    }

    pub fn command(&mut self, command: &str, params: &str) {
        let body =
            serde_json::json!({"command": command, "params": params, "token": command}).to_string();
        let frame = format!("{}:{},", body.len(), body);
        self.ctrl.write_all(frame.as_bytes()).unwrap();
    }

    /// Waits for an event of `kind` (e.g. `REGISTER_OK`); returns it.
    pub fn wait_event(&self, kind: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["type"] == kind)
                .cloned()
            {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "baresip {}: no {kind} within {within:?}; events: {:?}\nlog:\n{}",
                    self.name,
                    self.events.lock().unwrap(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// The recording of what this phone heard in its last call (`sndfile`'s
    /// decoder-side dump, one per call).
    pub fn heard(&self) -> PathBuf {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.created()).ok())
            .unwrap_or_else(|| panic!("baresip {} recorded nothing", self.name))
    }

    /// Adds the account and waits until it is registered.
    pub fn register(&mut self, account: &str) {
        self.command("uanew", account);
        self.wait_event("REGISTER_OK", Duration::from_secs(10));
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An account line for the demo credentials: `ext` is one entry of the JSON file.
pub fn account(domain: &str, ext: &serde_json::Value, outbound: SocketAddr, extra: &str) -> String {
    format!(
        "<sip:{}@{}>;auth_pass={};outbound=\"sip:{}{}\";regint=600{}",
        ext["username"].as_str().unwrap(),
        domain,
        ext["password"].as_str().unwrap(),
        outbound,
        if extra.contains("transport=tcp") {
            ";transport=tcp"
        } else {
            ""
        },
        extra.replace(";transport=tcp", "")
    )
}
