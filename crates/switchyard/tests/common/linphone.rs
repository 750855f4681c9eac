//! linphonec (Debian's linphone-cli) as a softphone under test: its own HOME (its core
//! needs a writable `~/.local/share/linphone`), an account that registers through the
//! edge (`reg_route`, so it never resolves the domain itself), audio to and from files
//! (there is no sound card here), commands on stdin, its console lines collected.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::baresip::free_port_pair;

pub struct Linphone {
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
    _home: tempfile::TempDir,
}

impl Linphone {
    /// Starts linphonec registered as `username` of `domain` through `edge`, answering
    /// calls by itself.
    pub fn start(domain: &str, username: &str, password: &str, edge: SocketAddr) -> Linphone {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".local/share/linphone")).unwrap();
        let sip_port = free_port_pair();
        let rtp_port = free_port_pair();
        let rc = home.path().join("linphonerc");
        std::fs::write(
            &rc,
            format!(
                "[sip]\nsip_port={sip_port}\nsip_tcp_port=0\nsip_tls_port=0\ndefault_proxy=0\nregister_only_when_network_is_up=0\nauto_net_state_mon=0\n\n\
                 [proxy_0]\nreg_proxy=<sip:{edge};transport=udp>\nreg_route=<sip:{edge};transport=udp;lr>\n\
                 reg_identity=sip:{username}@{domain}\nreg_expires=600\nreg_sendregister=1\npublish=0\ndial_escape_plus=0\n\n\
                 [auth_info_0]\nusername={username}\nuserid={username}\npasswd={password}\nrealm={domain}\ndomain={domain}\n\n\
                 [rtp]\naudio_rtp_port={rtp_port}\n\n[video]\nenabled=0\n"
            ),
        )
        .unwrap();
        let mut child = Command::new("linphonec")
            .arg("-c")
            .arg(&rc)
            .args(["-a", "-S", "-d", "4", "-l"])
            .arg(home.path().join("linphone.log"))
            .env("HOME", home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("linphonec is installed (.ci/run installs linphone-cli)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let stdin = child.stdin.take().unwrap();
        let mut phone = Linphone {
            child,
            stdin,
            lines,
            _home: home,
        };
        phone.command("soundcard use files");
        phone
    }

    pub fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Its console so far, then the end of its own log.
    pub fn output(&self) -> String {
        let log =
            std::fs::read_to_string(self._home.path().join("linphone.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{}\n--- log ---\n{}",
            self.lines.lock().unwrap().join("\n"),
            tail.join("\n")
        )
    }

    /// Its own log (`-l`), whole.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._home.path().join("linphone.log")).unwrap_or_default()
    }

    /// Waits for a console or log line containing `text`; its text.
    pub fn wait_for(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let console = self.lines.lock().unwrap().clone();
            if let Some(l) = console
                .iter()
                .map(String::as_str)
                .chain(self.log().lines())
                .find(|l| l.contains(text))
            {
                return l.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "linphonec never said {text:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many console lines contain `text`.
    pub fn count(&self, text: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
