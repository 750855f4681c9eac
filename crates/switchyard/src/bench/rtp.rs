//! `switchyard bench rtp`: G.711 calls (20 ms packets both ways) through a media node
//! run apart (`switchyard media`), driven over media control as a core would; or, with
//! `direct`, the same phones sending to each other with no relay, the baseline the
//! relay's added delay is measured against. Each packet carries its send time; the
//! receiver reads it back, so the delay is one process's clock. Two delays per packet:
//! until the receiving phone read it (which includes this generator's own lag in reading,
//! large when it is saturated), and until the kernel queued it on the phone's socket
//! (`SO_TIMESTAMPNS`), which is what the relay adds and nothing of the reader.
//!
//! The phones are driven by one thread: every tick (100 µs by default) it sends the
//! packets of the calls whose phase it is, then reads whatever has arrived, then sleeps
//! to the next tick; it never wakes for a packet. The generator must cost less than the
//! relay it measures, or its own bursts (a late tick sends several ticks at once) become
//! the relay's queue. With `probe_cpus`, the report also gives each CPU's stalls during
//! the run ([`super::stalls`]): time in which nothing could have relayed a packet.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use tokio::net::UdpSocket;

use switchyard_core::media_client::{RemoteMedia, Retry};
use switchyard_media_control::wire::ControlKey;
use switchyard_media_control::{Leg, MediaControl, Reply, Request};

use super::stalls::StallProbe;

/// A G.711 phone's packet interval.
const PACKET_INTERVAL: Duration = Duration::from_millis(20);

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
    /// The generator's tick: each sends the packets of the calls whose phase it is, so a
    /// finer tick spreads them more evenly (real phones are not in step).
    pub tick: Duration,
    /// CPUs whose stalls to measure during the run (see [`super::stalls`]): the relay's
    /// and the generator's.
    pub probe_cpus: Vec<usize>,
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
    /// The same delays up to the kernel's receive time on the phone's socket.
    pub kernel_delay_p50_us: u64,
    pub kernel_delay_p99_us: u64,
    pub kernel_delay_p999_us: u64,
    pub kernel_delay_max_us: u64,
    /// How late the generator sent its millisecond ticks (a late tick sends its
    /// packets in one burst with the next ones, which a relay then queues).
    pub sender_lag_p99_us: u64,
    pub sender_lag_max_us: u64,
    /// The generator's sending thread's CPU over the run (sending, reading, and the
    /// softirq work its sends set off on its CPU, kernel forwarding included), as a share
    /// of one core.
    pub generator_cpu: f64,
    /// With `probe_cpus`: each probed CPU's stalls during the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<CpuReport>,
}

/// One probed CPU during the run.
#[derive(Debug, Serialize)]
pub struct CpuReport {
    pub cpu: usize,
    pub probe_realtime: bool,
    /// Wake-ups later than the stall threshold, and the time they lost in all.
    pub stalls: usize,
    pub stalled_ms: f64,
    pub longest_stall_us: u64,
    pub probe_lateness_p99_us: u64,
}

impl std::fmt::Display for RtpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} calls, {:.1} s: sent {} received {} lost {} ({:.0} pkt/s); delay to read p50 {} µs p99 {} µs p99.9 {} µs max {} µs; to the socket p50 {} µs p99 {} µs p99.9 {} µs max {} µs; sender lag p99 {} µs max {} µs",
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
            self.delay_max_us,
            self.kernel_delay_p50_us,
            self.kernel_delay_p99_us,
            self.kernel_delay_p999_us,
            self.kernel_delay_max_us,
            self.sender_lag_p99_us,
            self.sender_lag_max_us
        )?;
        for c in &self.cpus {
            write!(
                f,
                "; CPU {} ({}): {} stalls, {:.1} ms in all, longest {} µs",
                c.cpu,
                if c.probe_realtime {
                    "real-time probe"
                } else {
                    "probe at normal priority"
                },
                c.stalls,
                c.stalled_ms,
                c.longest_stall_us
            )?;
        }
        Ok(())
    }
}

/// One phone of a call: its socket and where it sends.
struct Phone {
    socket: std::net::UdpSocket,
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
        let a = UdpSocket::bind("127.0.0.1:0").await?;
        let b = UdpSocket::bind("127.0.0.1:0").await?;
        super::grow_buffers(&a);
        super::grow_buffers(&b);
        let (pa, pb) = (a.local_addr()?.port(), b.local_addr()?.port());
        let (to_from_a, to_from_b) = match (&media, &mut ng) {
            (Some(m), _) => anchored(m, &format!("rtp-bench-{i}"), pa, pb).await?,
            (_, Some(ng)) => ng.anchored(&format!("rtp-bench-{i}"), pa, pb).await?,
            _ => (b.local_addr()?, a.local_addr()?),
        };
        phones.push(Phone {
            socket: a.into_std()?,
            peer: to_from_a,
            ssrc: 2 * i as u32 + 1,
        });
        phones.push(Phone {
            socket: b.into_std()?,
            peer: to_from_b,
            ssrc: 2 * i as u32 + 2,
        });
    }
    for p in &phones {
        nix::sys::socket::setsockopt(
            &p.socket,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        )
        .context("SO_TIMESTAMPNS")?;
    }
    let (duration, tick) = (options.duration, options.tick);
    let probe = StallProbe::start(&options.probe_cpus)?;
    let driven = tokio::task::spawn_blocking(move || drive(&phones, duration, tick)).await??;
    let probed = probe.stop()?;
    let Driven {
        sent,
        seconds,
        mut delays,
        mut kernel_delays,
        mut lags,
        cpu,
        wall,
    } = driven;
    let cpus = probed
        .iter()
        .map(|c| {
            let mut late = c.lateness.clone();
            late.sort_unstable();
            CpuReport {
                cpu: c.cpu,
                probe_realtime: c.realtime,
                stalls: c.stalls(),
                stalled_ms: c.stalled().as_secs_f64() * 1000.0,
                longest_stall_us: late.last().copied().map(u64::from).unwrap_or(0),
                probe_lateness_p99_us: percentile(&late, 0.99),
            }
        })
        .collect();
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
    kernel_delays.sort_unstable();
    lags.sort_unstable();
    let pick = |q: f64| percentile(&delays, q);
    let kernel = |q: f64| percentile(&kernel_delays, q);
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
        kernel_delay_p50_us: kernel(0.50),
        kernel_delay_p99_us: kernel(0.99),
        kernel_delay_p999_us: kernel(0.999),
        kernel_delay_max_us: kernel_delays.last().copied().map(u64::from).unwrap_or(0),
        sender_lag_p99_us: percentile(&lags, 0.99),
        sender_lag_max_us: lags.last().copied().map(u64::from).unwrap_or(0),
        generator_cpu: cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        cpus,
    })
}

/// What the phones sent and the delays of what they received.
struct Driven {
    sent: u64,
    seconds: f64,
    delays: Vec<u32>,
    kernel_delays: Vec<u32>,
    /// Per tick, how late it was sent (µs).
    lags: Vec<u32>,
    /// The thread's CPU time over the whole drive, and the drive's wall time.
    cpu: Duration,
    wall: Duration,
}

/// This thread's CPU time (softirq work done in its context included: this kernel
/// charges it to the task that was running).
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Sends and receives for every phone for `duration` (then reads for 500 ms more):
/// every `tick`, the calls whose phase it is send one packet per leg, so the 20 ms of
/// every call are spread like real phones', then every packet that has arrived is read.
/// The delay to read therefore includes up to a tick of this wait.
fn drive(phones: &[Phone], duration: Duration, tick: Duration) -> anyhow::Result<Driven> {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, p) in phones.iter().enumerate() {
        epoll.add(&p.socket, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
    }
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut buf = [0u8; 2048];
    let mut control = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let (mut delays, mut kernel_delays) = (Vec::new(), Vec::new());
    let mut packet = [0u8; 172];
    packet[0] = 0x80;
    let mut seq = vec![0u16; phones.len()];
    let mut sent = 0u64;
    let cpu_at_start = thread_cpu();
    let start = Instant::now();
    let until = start + duration;
    let drain_until = until + Duration::from_millis(500);
    let mut next_tick = start;
    let mut ticks = 0usize;
    let mut lags = Vec::with_capacity((duration.as_micros() / tick.as_micros().max(1)) as usize);
    let phases = (PACKET_INTERVAL.as_micros() / tick.as_micros().max(1)).max(1) as usize;
    // Ticks finer than a millisecond need a sleep with no timer slack.
    let _ = nix::sys::prctl::set_timerslack(1);
    loop {
        let now = Instant::now();
        if now >= drain_until {
            break;
        }
        while next_tick <= now && next_tick < until {
            lags.push(now.duration_since(next_tick).as_micros() as u32);
            let phase = ticks % phases;
            ticks += 1;
            next_tick += tick;
            // The calls of this phase: `phase`, `phase + phases`, ..., two phones each.
            let calls = (phase..phones.len() / 2).step_by(phases);
            for i in calls.flat_map(|call| [2 * call, 2 * call + 1]) {
                let p = &phones[i];
                seq[i] = seq[i].wrapping_add(1);
                packet[2..4].copy_from_slice(&seq[i].to_be_bytes());
                packet[4..8].copy_from_slice(&(u32::from(seq[i]) * 160).to_be_bytes());
                packet[8..12].copy_from_slice(&p.ssrc.to_be_bytes());
                packet[12..20].copy_from_slice(&wall_clock_ns().to_be_bytes());
                if p.socket.send_to(&packet, p.peer).is_ok() {
                    sent += 1;
                }
            }
        }
        // Read what has arrived without waiting for it: the generator wakes once a
        // tick, not once a packet (the kernel's receive stamps keep the delays exact).
        loop {
            let ready = match epoll.wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for event in &events[..ready] {
                let Some(p) = phones.get(event.data() as usize) else {
                    continue;
                };
                let Ok((n, _, stamp)) =
                    switchyard_media::receive_stamped(&p.socket, &mut buf, &mut control)
                else {
                    continue;
                };
                let kernel_ns = stamp.map(|t| t.as_nanos() as u64);
                if n < 12 + 8 {
                    continue;
                }
                let sent_ns = u64::from_be_bytes(buf[12..20].try_into().unwrap_or_default());
                let micros = |ns: u64| (ns.saturating_sub(sent_ns) / 1000) as u32;
                delays.push(micros(wall_clock_ns()));
                // No stamp would be a kernel without SO_TIMESTAMPNS: the read time then.
                kernel_delays.push(micros(kernel_ns.unwrap_or_else(wall_clock_ns)));
            }
            if ready < events.len() {
                break;
            }
        }
        let now = Instant::now();
        let wake_at = if next_tick < until {
            next_tick
        } else {
            now + tick
        };
        std::thread::sleep(wake_at.saturating_duration_since(now));
    }
    Ok(Driven {
        sent,
        seconds: until.duration_since(start).as_secs_f64(),
        delays,
        kernel_delays,
        lags,
        cpu: thread_cpu().saturating_sub(cpu_at_start),
        wall: start.elapsed(),
    })
}

/// The value at quantile `q` of sorted `values` (0 when empty).
fn percentile(values: &[u32], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    u64::from(values[i])
}

/// The wall clock in nanoseconds: the clock the kernel's receive stamps are on.
fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
