//! Kernel forwarding of latched RTP streams: the shell around `bpf/forward.bpf.c`.
//!
//! Once a leg's RTP has come from its latched source for a while and needs nothing only
//! userspace does (transcoding, a transfer's hold-off), the relay writes an entry to the
//! program's map: packets from that source to that leg's socket are rewritten and sent
//! on in the receiving CPU's softirq, never waiting for a relay thread. Everything else
//! (RTCP, strangers, a new SSRC, packets with extensions) still reaches the socket, and
//! a packet from the latched source that reaches it takes the stream back to userspace.
//! The relay reads each entry's counters back (`RelayState` merges them).

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tracing::info;

/// Whether a media node forwards latched streams in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KernelForwarding {
    /// Userspace only.
    Off,
    /// In the kernel when the program loads (root, or `CAP_BPF`, `CAP_NET_ADMIN` and
    /// `CAP_PERFMON`; a specific IPv4 bind address), otherwise in userspace with a
    /// warning.
    #[default]
    Auto,
    /// In the kernel, or the node does not start.
    On,
}

impl std::str::FromStr for KernelForwarding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(KernelForwarding::Off),
            "auto" => Ok(KernelForwarding::Auto),
            "on" => Ok(KernelForwarding::On),
            other => Err(format!(
                "kernel_forwarding is \"off\", \"auto\" or \"on\", not {other:?}"
            )),
        }
    }
}

/// Why the kernel path is not there.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this build has no kernel fast path (clang was missing when it was built)")]
    NotBuilt,
    #[error("kernel forwarding needs a specific IPv4 bind address, not {0}")]
    BindAddress(IpAddr),
    #[error("no network interface holds {0}")]
    NoInterface(IpAddr),
    #[error("the eBPF program cannot be loaded or attached: {0}")]
    Load(String),
    #[error("the forwarding map refused an entry: {0}")]
    Map(String),
}

/// The map key: a packet to `local` from `peer`. Encoded as `struct forward_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ForwardKey {
    local: SocketAddrV4,
    peer: SocketAddrV4,
}

impl ForwardKey {
    pub(crate) fn new(local: SocketAddrV4, peer: SocketAddrV4) -> ForwardKey {
        ForwardKey { local, peer }
    }

    /// Addresses and ports in network order, as the packet carries them.
    fn encode(&self) -> [u8; KEY_SIZE] {
        let mut b = [0u8; KEY_SIZE];
        b[0..4].copy_from_slice(&self.local.ip().octets());
        b[4..8].copy_from_slice(&self.peer.ip().octets());
        b[8..10].copy_from_slice(&self.local.port().to_be_bytes());
        b[10..12].copy_from_slice(&self.peer.port().to_be_bytes());
        b
    }
}

const KEY_SIZE: usize = 12;
const ENTRY_SIZE: usize = 80;

/// No payload type: `audio_in`/`event_in` match nothing, `event_out` drops events.
pub(crate) const NO_PAYLOAD_TYPE: u8 = 0xff;

/// The map value: where the stream goes, and what the program counted of it. Encoded as
/// `struct forward_entry` (addresses and ports in network order, the rest native).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ForwardEntry {
    pub(crate) out_local: SocketAddrV4,
    pub(crate) out_peer: SocketAddrV4,
    pub(crate) audio_in: u8,
    pub(crate) audio_out: u8,
    pub(crate) event_in: u8,
    pub(crate) event_out: u8,
    pub(crate) ssrc: u32,
    /// RFC 3550 sequence state, continued from userspace's and back.
    pub(crate) cycles: u32,
    pub(crate) max_seq: u16,
    pub(crate) jitter16: i64,
    /// Counted since the entry was written.
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) events: u64,
    /// `CLOCK_MONOTONIC` of the last packet, in nanoseconds.
    pub(crate) last_ns: u64,
    /// The interface it leaves by: loopback for a local address, else the attached one.
    pub(crate) out_ifindex: u32,
}

impl ForwardEntry {
    pub(crate) fn new(out_local: SocketAddrV4, out_peer: SocketAddrV4) -> ForwardEntry {
        ForwardEntry {
            out_local,
            out_peer,
            audio_in: NO_PAYLOAD_TYPE,
            audio_out: NO_PAYLOAD_TYPE,
            event_in: NO_PAYLOAD_TYPE,
            event_out: NO_PAYLOAD_TYPE,
            ssrc: 0,
            cycles: 0,
            max_seq: 0,
            jitter16: 0,
            packets: 0,
            bytes: 0,
            events: 0,
            last_ns: 0,
            out_ifindex: 0,
        }
    }

    /// As written: the transit (jitter's previous sample) starts unset.
    fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..4].copy_from_slice(&self.out_local.ip().octets());
        b[4..8].copy_from_slice(&self.out_peer.ip().octets());
        b[8..10].copy_from_slice(&self.out_local.port().to_be_bytes());
        b[10..12].copy_from_slice(&self.out_peer.port().to_be_bytes());
        b[12..16].copy_from_slice(&[self.audio_in, self.audio_out, self.event_in, self.event_out]);
        b[16..20].copy_from_slice(&self.ssrc.to_ne_bytes());
        b[20..24].copy_from_slice(&self.cycles.to_ne_bytes());
        b[24..26].copy_from_slice(&self.max_seq.to_ne_bytes());
        // 26..28 transit_valid and 28..32 transit: zero.
        b[32..40].copy_from_slice(&self.jitter16.to_ne_bytes());
        b[40..48].copy_from_slice(&self.packets.to_ne_bytes());
        b[48..56].copy_from_slice(&self.bytes.to_ne_bytes());
        b[56..64].copy_from_slice(&self.events.to_ne_bytes());
        b[64..72].copy_from_slice(&self.last_ns.to_ne_bytes());
        b[72..76].copy_from_slice(&self.out_ifindex.to_ne_bytes());
        b
    }

    fn decode(b: &[u8; ENTRY_SIZE]) -> ForwardEntry {
        let u16n = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let u32n = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64n = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_ne_bytes(w)
        };
        let addr = |ip: usize, port: usize| {
            SocketAddrV4::new(
                [b[ip], b[ip + 1], b[ip + 2], b[ip + 3]].into(),
                u16::from_be_bytes([b[port], b[port + 1]]),
            )
        };
        ForwardEntry {
            out_local: addr(0, 8),
            out_peer: addr(4, 10),
            audio_in: b[12],
            audio_out: b[13],
            event_in: b[14],
            event_out: b[15],
            ssrc: u32n(16),
            cycles: u32n(20),
            max_seq: u16n(24),
            jitter16: u64n(32) as i64,
            packets: u64n(40),
            bytes: u64n(48),
            events: u64n(56),
            last_ns: u64n(64),
            out_ifindex: u32n(72),
        }
    }
}

type ForwardMap = aya::maps::HashMap<aya::maps::MapData, [u8; KEY_SIZE], [u8; ENTRY_SIZE]>;

/// The loaded program, attached at ingress of the bind address's interface, and its map.
/// Dropping it detaches the program (its TCX link is closed with it).
pub struct KernelPath {
    forwards: Mutex<ForwardMap>,
    /// Entries in the map (kept here: counting the map's keys is a syscall each).
    streams: AtomicUsize,
    /// RTP packets the kernel forwarded, as the relay threads have read them.
    forwarded: AtomicU64,
    interface: String,
    ifindex: u32,
    /// This host's IPv4 addresses when it attached: packets to them leave by loopback.
    local: Vec<Ipv4Addr>,
    /// Holds the program and its link.
    _ebpf: aya::Ebpf,
}

impl std::fmt::Debug for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPath")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

impl KernelPath {
    /// Loads the program and attaches it to the interface holding `bind`, for packets to
    /// `ports` (the node's RTP port range).
    pub fn attach(
        bind: IpAddr,
        ports: std::ops::RangeInclusive<u16>,
    ) -> Result<KernelPath, KernelError> {
        let IpAddr::V4(v4) = bind else {
            return Err(KernelError::BindAddress(bind));
        };
        if v4.is_unspecified() {
            return Err(KernelError::BindAddress(bind));
        }
        let interface = interface_of(v4)?;
        Self::load(&interface, ports)
    }

    #[cfg(not(switchyard_bpf))]
    fn load(
        _interface: &str,
        _ports: std::ops::RangeInclusive<u16>,
    ) -> Result<KernelPath, KernelError> {
        Err(KernelError::NotBuilt)
    }

    #[cfg(switchyard_bpf)]
    fn load(
        interface: &str,
        ports: std::ops::RangeInclusive<u16>,
    ) -> Result<KernelPath, KernelError> {
        use aya::programs::{SchedClassifier, TcAttachType};
        let load = |e: &dyn std::fmt::Display| KernelError::Load(e.to_string());
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forward.bpf.o"));
        let mut ebpf = aya::Ebpf::load(object).map_err(|e| load(&e))?;
        // The port range before the program sees a packet (its maps exist once loaded).
        let mut range = aya::maps::Array::<_, [u8; 4]>::try_from(
            ebpf.map_mut("PORTS")
                .ok_or_else(|| KernelError::Load("no map PORTS in the object".into()))?,
        )
        .map_err(|e| load(&e))?;
        let mut value = [0u8; 4];
        value[0..2].copy_from_slice(&ports.start().to_ne_bytes());
        value[2..4].copy_from_slice(&ports.end().to_ne_bytes());
        range.set(0, value, 0).map_err(|e| load(&e))?;
        let program: &mut SchedClassifier = ebpf
            .program_mut("switchyard_forward")
            .ok_or_else(|| KernelError::Load("no program switchyard_forward in the object".into()))?
            .try_into()
            .map_err(|e| load(&e))?;
        program.load().map_err(|e| load(&e))?;
        program
            .attach(interface, TcAttachType::Ingress)
            .map_err(|e| load(&e))?;
        let map = ebpf
            .take_map("FORWARDS")
            .ok_or_else(|| KernelError::Load("no map FORWARDS in the object".into()))?;
        let forwards = ForwardMap::try_from(map).map_err(|e| load(&e))?;
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| load(&e))?;
        info!(
            interface,
            "RTP of latched streams is forwarded in the kernel"
        );
        Ok(KernelPath {
            forwards: Mutex::new(forwards),
            streams: AtomicUsize::new(0),
            forwarded: AtomicU64::new(0),
            interface: interface.to_owned(),
            ifindex,
            local: local_addresses(),
            _ebpf: ebpf,
        })
    }

    /// The interface the program is attached to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface a packet to `dest` leaves by: loopback for this host's own
    /// addresses, otherwise the one the program is attached to (the bind address's).
    pub(crate) fn out_ifindex(&self, dest: Ipv4Addr) -> u32 {
        if dest.is_loopback() || self.local.contains(&dest) {
            LOOPBACK_IFINDEX
        } else {
            self.ifindex
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, ForwardMap> {
        self.forwards.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn install(
        &self,
        key: &ForwardKey,
        entry: &ForwardEntry,
    ) -> Result<(), KernelError> {
        // Only a new entry: the relay removes a stream's entry before it writes another,
        // so an existing one would be another session's, left alone.
        self.map()
            .insert(key.encode(), entry.encode(), BPF_NOEXIST)
            .map_err(|e| KernelError::Map(e.to_string()))?;
        self.streams.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The entry as the program left it, if it is there.
    pub(crate) fn read(&self, key: &ForwardKey) -> Option<ForwardEntry> {
        self.map()
            .get(&key.encode(), 0)
            .ok()
            .map(|b| ForwardEntry::decode(&b))
    }

    /// Removes the entry and returns it as last read (a packet forwarded between the
    /// read and the removal is relayed but not counted).
    pub(crate) fn remove(&self, key: &ForwardKey) -> Option<ForwardEntry> {
        let mut map = self.map();
        let key = key.encode();
        let last = map.get(&key, 0).ok().map(|b| ForwardEntry::decode(&b));
        if map.remove(&key).is_ok() {
            self.streams.fetch_sub(1, Ordering::Relaxed);
        }
        last
    }

    pub(crate) fn count_forwarded(&self, packets: u64) {
        self.forwarded.fetch_add(packets, Ordering::Relaxed);
    }

    /// RTP packets the kernel has forwarded, as last read (every 500 ms, and when a
    /// stream comes back to userspace).
    pub fn forwarded_packets(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Streams the kernel forwards now (entries in its map).
    pub fn entries(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Entries in the map as the kernel holds them (a syscall per entry): for tests.
    pub fn entries_in_map(&self) -> usize {
        self.map().keys().filter(Result::is_ok).count()
    }
}

/// `BPF_NOEXIST` (linux/bpf.h): a map update that only creates.
const BPF_NOEXIST: u64 = 1;

/// The loopback interface's index (in every network namespace).
const LOOPBACK_IFINDEX: u32 = 1;

/// This host's IPv4 addresses.
fn local_addresses() -> Vec<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|all| {
            all.filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
                .collect()
        })
        .unwrap_or_default()
}

/// The interface holding `ip`: loopback for 127.0.0.0/8.
fn interface_of(ip: std::net::Ipv4Addr) -> Result<String, KernelError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|_| KernelError::NoInterface(ip.into()))?;
    for a in addrs {
        let loopback = a
            .flags
            .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK);
        let holds = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .is_some_and(|s| s.ip() == ip);
        if holds || (loopback && ip.is_loopback()) {
            return Ok(a.interface_name);
        }
    }
    Err(KernelError::NoInterface(ip.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_as_written() {
        let mut e = ForwardEntry::new(
            "127.0.0.1:20002".parse().unwrap(),
            "10.0.0.9:4002".parse().unwrap(),
        );
        (e.audio_in, e.audio_out, e.event_in, e.event_out) = (0, 8, 101, 96);
        (e.ssrc, e.cycles, e.max_seq, e.jitter16) = (0xdead_beef, 1 << 16, 65000, -3);
        (e.packets, e.bytes, e.events, e.last_ns) = (1, 2, 3, 4);
        e.out_ifindex = 7;
        assert_eq!(ForwardEntry::decode(&e.encode()), e);
        // The C struct's offsets: the out port in network order at 8, the SSRC at 16, the
        // interface at 72.
        let b = e.encode();
        assert_eq!(&b[8..10], &20002u16.to_be_bytes());
        assert_eq!(&b[16..20], &0xdead_beefu32.to_ne_bytes());
        assert_eq!(&b[72..76], &7u32.to_ne_bytes());
    }

    #[test]
    fn keys_hold_addresses_and_ports_in_network_order() {
        let key = ForwardKey::new(
            "127.0.0.1:20000".parse().unwrap(),
            "10.1.2.3:4000".parse().unwrap(),
        );
        let b = key.encode();
        assert_eq!(&b[0..4], &[127, 0, 0, 1]);
        assert_eq!(&b[4..8], &[10, 1, 2, 3]);
        assert_eq!(&b[8..10], &20000u16.to_be_bytes());
        assert_eq!(&b[10..12], &4000u16.to_be_bytes());
    }
}
