//! `switchyard bench rtp`: G.711 calls (20 ms packets both ways) through a media node
//! run apart (`switchyard media`), driven over media control as a core would; or, with
//! `direct`, the same phones sending to each other with no relay, the baseline the
//! relay's added delay is measured against. Each packet carries its send time; the
//! receiver reads it back, so the delay is one process's clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::net::UdpSocket;

use switchyard_core::media_client::{RemoteMedia, Retry};
use switchyard_media_control::wire::ControlKey;
use switchyard_media_control::{Leg, MediaControl, Reply, Request};

/// What relays the calls.
#[derive(Debug, Clone, Copy)]
pub enum Relay {
    /// A Switchyard media node, driven over media control.
    Switchyard(SocketAddr),
    /// An rtpengine, driven over its ng protocol (the baseline).
    Rtpengine(SocketAddr),
    /// No relay: the phones send to each other.
    Direct,
}

#[derive(Debug, Clone)]
pub struct RtpOptions {
    pub relay: Relay,
    pub secret: String,
    /// Calls up at once (two legs each, 50 packets a second per leg).
    pub calls: usize,
    pub duration: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct RtpReport {
    pub mode: String,
    pub calls: usize,
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// Packets a second through the relay (or between phones), received.
    pub packets_per_second: f64,
    pub delay_p50_us: u64,
    pub delay_p99_us: u64,
    pub delay_p999_us: u64,
    pub delay_max_us: u64,
}

impl std::fmt::Display for RtpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} calls, {:.1} s: sent {} received {} lost {} ({:.0} pkt/s); delay p50 {} µs p99 {} µs p99.9 {} µs max {} µs",
            self.mode,
            self.calls,
            self.seconds,
            self.sent,
            self.received,
            self.lost,
            self.packets_per_second,
            self.delay_p50_us,
            self.delay_p99_us,
            self.delay_p999_us,
            self.delay_max_us
        )
    }
}

/// One phone of a call: its socket and where it sends.
struct Phone {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    ssrc: u32,
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

fn sdp_port(sdp: &str) -> Option<u16> {
    sdp.lines()
        .find(|l| l.starts_with("m=audio"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn anchored(
    media: &RemoteMedia,
    session: &str,
    a: u16,
    b: u16,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    media
        .call(Request::Create {
            session: session.into(),
            tenant: "bench".into(),
            pool: None,
        })
        .await
        .map_err(|e| anyhow::anyhow!("create: {e}"))?;
    let sdp_of = |r: Result<Reply, _>| match r {
        Ok(Reply::Sdp { sdp }) => Ok(sdp),
        other => Err(anyhow::anyhow!("{other:?}")),
    };
    let to_b = sdp_of(
        media
            .call(Request::Offer {
                session: session.into(),
                from: Leg::A,
                sdp: sdp(a),
            })
            .await,
    )?;
    let to_a = sdp_of(
        media
            .call(Request::Answer {
                session: session.into(),
                from: Leg::B,
                sdp: sdp(b),
            })
            .await,
    )?;
    let at = |s: &str| -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::from((
            [127, 0, 0, 1],
            sdp_port(s).context("no m=audio port")?,
        )))
    };
    // A sends to the port offered to it (in the answer), B to the one offered to B.
    Ok((at(&to_a)?, at(&to_b)?))
}

/// rtpengine's ng protocol: a cookie, then a bencoded dictionary.
struct Ng {
    socket: UdpSocket,
    addr: SocketAddr,
    next: u64,
}

fn bencode_dict(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("d");
    for (k, v) in pairs {
        out.push_str(&format!("{}:{k}{}:{v}", k.len(), v.len()));
    }
    out.push('e');
    out
}

/// The string value of `key` in a bencoded dictionary of strings and integers (the
/// nested values an answer may hold are skipped over).
fn bencode_get(text: &[u8], key: &str) -> Option<String> {
    fn string(t: &[u8], i: &mut usize) -> Option<Vec<u8>> {
        let colon = t[*i..].iter().position(|&b| b == b':')? + *i;
        let len: usize = std::str::from_utf8(&t[*i..colon]).ok()?.parse().ok()?;
        let s = t.get(colon + 1..colon + 1 + len)?.to_vec();
        *i = colon + 1 + len;
        Some(s)
    }
    fn skip(t: &[u8], i: &mut usize) -> Option<()> {
        match *t.get(*i)? {
            b'i' => *i += t[*i..].iter().position(|&b| b == b'e')? + 1,
            b'l' | b'd' => {
                *i += 1;
                while *t.get(*i)? != b'e' {
                    skip(t, i)?;
                }
                *i += 1;
            }
            _ => {
                string(t, i)?;
            }
        }
        Some(())
    }
    let mut i = 1; // past the `d`
    while *text.get(i)? != b'e' {
        let k = string(text, &mut i)?;
        if k == key.as_bytes() && text.get(i)?.is_ascii_digit() {
            return String::from_utf8(string(text, &mut i)?).ok();
        }
        skip(text, &mut i)?;
    }
    None
}

impl Ng {
    async fn call(&mut self, pairs: &[(&str, &str)]) -> anyhow::Result<String> {
        self.next += 1;
        let cookie = format!("sybench{}", self.next);
        let msg = format!("{cookie} {}", bencode_dict(pairs));
        self.socket.send_to(msg.as_bytes(), self.addr).await?;
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(2), self.socket.recv(&mut buf))
            .await
            .context("rtpengine did not answer")??;
        let reply = &buf[..n];
        let body = &reply[reply.iter().position(|&b| b == b' ').context("no cookie")? + 1..];
        let result = bencode_get(body, "result").unwrap_or_default();
        if result != "ok" {
            anyhow::bail!(
                "rtpengine: {result} {}",
                bencode_get(body, "error-reason").unwrap_or_default()
            );
        }
        bencode_get(body, "sdp").context("no sdp in rtpengine's answer")
    }

    async fn anchored(
        &mut self,
        call_id: &str,
        a: u16,
        b: u16,
    ) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let to_b = self
            .call(&[
                ("command", "offer"),
                ("call-id", call_id),
                ("from-tag", "a"),
                ("sdp", &sdp(a)),
            ])
            .await?;
        let to_a = self
            .call(&[
                ("command", "answer"),
                ("call-id", call_id),
                ("from-tag", "a"),
                ("to-tag", "b"),
                ("sdp", &sdp(b)),
            ])
            .await?;
        let at = |s: &str| -> anyhow::Result<SocketAddr> {
            Ok(SocketAddr::from((
                [127, 0, 0, 1],
                sdp_port(s).context("no m=audio port")?,
            )))
        };
        Ok((at(&to_a)?, at(&to_b)?))
    }
}

pub async fn run(options: &RtpOptions) -> anyhow::Result<RtpReport> {
    let media = match options.relay {
        Relay::Switchyard(addr) => Some(
            RemoteMedia::connect(
                addr,
                SocketAddr::from(([127, 0, 0, 1], 0)),
                ControlKey::new(options.secret.as_bytes()),
                Retry::default(),
            )
            .await?,
        ),
        _ => None,
    };
    let mut ng = match options.relay {
        Relay::Rtpengine(addr) => Some(Ng {
            socket: UdpSocket::bind("127.0.0.1:0").await?,
            addr,
            next: 0,
        }),
        _ => None,
    };
    let mut phones = Vec::with_capacity(options.calls * 2);
    for i in 0..options.calls {
        let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        super::grow_buffers(&a);
        super::grow_buffers(&b);
        let (pa, pb) = (a.local_addr()?.port(), b.local_addr()?.port());
        let (to_from_a, to_from_b) = match (&media, &mut ng) {
            (Some(m), _) => anchored(m, &format!("rtp-bench-{i}"), pa, pb).await?,
            (_, Some(ng)) => ng.anchored(&format!("rtp-bench-{i}"), pa, pb).await?,
            _ => (b.local_addr()?, a.local_addr()?),
        };
        phones.push(Phone {
            socket: a,
            peer: to_from_a,
            ssrc: 2 * i as u32 + 1,
        });
        phones.push(Phone {
            socket: b,
            peer: to_from_b,
            ssrc: 2 * i as u32 + 2,
        });
    }
    let start = Instant::now();
    let until = start + options.duration;
    // Receivers: each phone reads what reaches it and keeps the delays.
    let mut readers = tokio::task::JoinSet::new();
    for p in &phones {
        let socket = p.socket.clone();
        readers.spawn(async move {
            let mut delays = Vec::new();
            let mut buf = [0u8; 2048];
            let drain_until = until + Duration::from_millis(500);
            while let Ok(Ok((n, _))) =
                tokio::time::timeout_at(drain_until.into(), socket.recv_from(&mut buf)).await
            {
                if n >= 12 + 8 {
                    let sent_ns = u64::from_be_bytes(buf[12..20].try_into().unwrap_or_default());
                    let now_ns = start.elapsed().as_nanos() as u64;
                    delays.push(((now_ns.saturating_sub(sent_ns)) / 1000) as u32);
                }
            }
            delays
        });
    }
    // Senders: every millisecond, the calls whose phase it is send one packet per leg,
    // so the 20 ms of every call are spread like real phones'.
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut ms = 0u64;
    let mut packet = [0u8; 172];
    packet[0] = 0x80;
    let mut seq = vec![0u16; phones.len()];
    while Instant::now() < until {
        tick.tick().await;
        let phase = (ms % 20) as usize;
        ms += 1;
        for (i, p) in phones.iter().enumerate() {
            if (i / 2) % 20 != phase {
                continue;
            }
            seq[i] = seq[i].wrapping_add(1);
            packet[2..4].copy_from_slice(&seq[i].to_be_bytes());
            packet[4..8].copy_from_slice(&(u32::from(seq[i]) * 160).to_be_bytes());
            packet[8..12].copy_from_slice(&p.ssrc.to_be_bytes());
            let now_ns = start.elapsed().as_nanos() as u64;
            packet[12..20].copy_from_slice(&now_ns.to_be_bytes());
            if p.socket.try_send_to(&packet, p.peer).is_ok() {
                sent += 1;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut delays = Vec::new();
    while let Some(d) = readers.join_next().await {
        delays.extend(d.unwrap_or_default());
    }
    if let Some(m) = &media {
        for i in 0..options.calls {
            let _ = m
                .call(Request::Destroy {
                    session: format!("rtp-bench-{i}"),
                })
                .await;
        }
    }
    if let Some(ng) = &mut ng {
        for i in 0..options.calls {
            let _ = ng
                .call(&[
                    ("command", "delete"),
                    ("call-id", &format!("rtp-bench-{i}")),
                ])
                .await;
        }
    }
    delays.sort_unstable();
    let pick = |q: f64| -> u64 {
        if delays.is_empty() {
            return 0;
        }
        let i = ((delays.len() as f64 - 1.0) * q).round() as usize;
        u64::from(delays[i])
    };
    let received = delays.len() as u64;
    Ok(RtpReport {
        mode: match options.relay {
            Relay::Switchyard(_) => "relayed",
            Relay::Rtpengine(_) => "rtpengine",
            Relay::Direct => "direct",
        }
        .into(),
        calls: options.calls,
        seconds,
        sent,
        received,
        lost: sent.saturating_sub(received),
        packets_per_second: received as f64 / seconds,
        delay_p50_us: pick(0.50),
        delay_p99_us: pick(0.99),
        delay_p999_us: pick(0.999),
        delay_max_us: delays.last().copied().map(u64::from).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencoded_answers_are_read() {
        let answer = b"d3:sdp12:v=0\r\nm=audio6:result2:ok8:warningsl3:onee5:timei12ee";
        assert_eq!(bencode_get(answer, "result").as_deref(), Some("ok"));
        assert_eq!(
            bencode_get(answer, "sdp").as_deref(),
            Some("v=0\r\nm=audio")
        );
        assert_eq!(
            bencode_get(answer, "time"),
            None,
            "an integer is not a string"
        );
        assert_eq!(bencode_get(answer, "nope"), None);
        assert_eq!(bencode_dict(&[("command", "ping")]), "d7:command4:pinge");
    }
}
