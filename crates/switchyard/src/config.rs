//! Process configuration: a TOML file, overridden by `SWITCHYARD_*` environment variables
//! and flags (clap reads both), validated before any socket opens. Tenant configuration
//! never lives here: it is in the store.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The whole file. Unknown keys are errors, so a typo never silently does nothing.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub store: StoreConfig,
    pub media: MediaSection,
    pub edge: EdgeSection,
    pub state: StateSection,
    pub core: CoreSection,
    pub cluster: ClusterSection,
}

/// `[cluster]`: what the processes of one cluster share.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Signs internal traffic between tiers (media control today): a media node obeys
    /// only messages signed with it. Every process of the cluster has the same one; long
    /// and random (32 bytes of `openssl rand -hex 32`). Required once roles run apart.
    pub secret: Option<String>,
}

/// A media node a core reaches over the network: `ADDR` (pool `shared`) or `POOL@ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaNodeAddr {
    pub pool: String,
    pub addr: SocketAddr,
}

impl std::str::FromStr for MediaNodeAddr {
    type Err = String;

    fn from_str(v: &str) -> Result<Self, String> {
        let (pool, addr) = match v.split_once('@') {
            Some((pool, addr)) => (pool.trim(), addr.trim()),
            None => (switchyard_core::media_client::SHARED_POOL, v.trim()),
        };
        if pool.is_empty()
            || !pool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("{v:?}: a pool name is letters, digits, - and _"));
        }
        let addr = addr.parse().map_err(|e| {
            format!("{v:?} is not ADDR or POOL@ADDR (like shared@10.0.0.5:7070): {e}")
        })?;
        Ok(MediaNodeAddr {
            pool: pool.to_owned(),
            addr,
        })
    }
}

impl<'de> Deserialize<'de> for MediaNodeAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `[core]`: the call engine.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CoreSection {
    /// Hang up an answered call when a leg sends no RTP for this many seconds (never while
    /// the call is on hold); 0 turns it off.
    pub rtp_timeout_secs: u64,
    /// Call engines in this process (each with its own internal socket and transaction
    /// layer); the edge gives each tenant's calls to one of them, so a tenant's calls and
    /// transfers stay together.
    pub shards: usize,
    /// Media nodes running apart (`switchyard media`), `ADDR` or `POOL@ADDR`; empty: the
    /// media node in this process (`serve` only).
    pub media_nodes: Vec<MediaNodeAddr>,
    /// `switchyard core`: its SIP sockets towards the edges, one call engine each
    /// (`shards` is for `serve`).
    pub listen: Vec<SocketAddr>,
    /// `switchyard core`: where it serves `/metrics` (off when absent).
    pub metrics: Option<SocketAddr>,
    /// With Redis: answered calls' records are written there so that another core can
    /// take a call over when its core dies (one write per answered call, off the call's
    /// path). Off: calls die with their core.
    pub takeover: bool,
    /// `switchyard core`: the pool its engines serve. Edges send a tenant's new calls to
    /// the live cores of the pool its placement names, or of the shared pool when that
    /// pool has none; a shared tenant's calls never reach another pool's cores.
    pub pool: String,
}

impl Default for CoreSection {
    fn default() -> Self {
        CoreSection {
            rtp_timeout_secs: 60,
            shards: 1,
            media_nodes: Vec::new(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5070))],
            metrics: None,
            takeover: true,
            pool: switchyard_core::media_client::SHARED_POOL.to_owned(),
        }
    }
}

/// `[media]`: the media node of this process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    /// Address RTP sockets bind to. The default serves phones on this machine; set the
    /// host's address (or 0.0.0.0 with `advertise`) for phones elsewhere.
    pub bind: IpAddr,
    /// Address written into SDP; defaults to `bind`.
    pub advertise: Option<IpAddr>,
    /// RTP port range (inclusive); two even/odd pairs per call.
    pub port_min: u16,
    pub port_max: u16,
    /// Port pairs kept bound between calls (two descriptors each). Default: as many as
    /// the open-files limit leaves room for after 4,096 for everything else, at most
    /// the whole range.
    pub keep_bound: Option<usize>,
    /// Sessions (calls) this node takes at most: its capacity when cores place calls.
    /// 0: as many as the port range holds.
    pub max_sessions: usize,
    /// Threads relaying RTP; 0: one per CPU the process may use, at most 16.
    pub relay_threads: usize,
    /// Latched RTP streams forwarded in the kernel (an eBPF program at the bind
    /// address's interface): "auto" (when it loads; not under `cgroup`, whose CPU limit
    /// the kernel's forwarding would escape), "on" (or the node does not start), "off".
    pub kernel_forwarding: String,
    /// `switchyard media`: where it takes media-control requests from cores.
    pub control: SocketAddr,
    /// `switchyard media`: the pool it serves (tenants are placed on pools).
    pub pool: String,
    /// `switchyard media`: where it serves `/metrics` (off when absent).
    pub metrics: Option<SocketAddr>,
    /// Networks the node never sends RTP to nor hears from, beyond loopback, link-local,
    /// multicast and broadcast: the cluster's internal ranges (`10.20.0.0/16`).
    pub deny_destinations: Vec<String>,
    /// Networks allowed even so (loopback is allowed when `bind` is loopback).
    pub allow_destinations: Vec<String>,
    /// `switchyard media`: confine the node to a cgroup of this name (under its own) with
    /// `cpu_percent` of one CPU and `memory_mb` (0: no limit), and report its CPU
    /// pressure.
    pub cgroup: Option<String>,
    pub cpu_percent: u32,
    pub memory_mb: u64,
    /// CPU pressure (PSI `some avg10`, percent) at which the node says it is saturated:
    /// cores place no new calls on it until it falls back under.
    pub saturated_pressure: f64,
}

impl MediaSection {
    /// `kernel_forwarding` as the media crate takes it: "auto" under a cgroup is off.
    pub fn kernel_forwarding(&self) -> anyhow::Result<switchyard_media::KernelForwarding> {
        let mode: switchyard_media::KernelForwarding = self
            .kernel_forwarding
            .parse()
            .map_err(|e| anyhow::anyhow!("media.{e}"))?;
        Ok(match mode {
            switchyard_media::KernelForwarding::Auto if self.cgroup.is_some() => {
                switchyard_media::KernelForwarding::Off
            }
            other => other,
        })
    }

    /// Where the node may send, as the media crate applies it.
    pub fn destinations(&self) -> anyhow::Result<switchyard_media::DestinationPolicy> {
        let parse =
            |list: &[String], key: &str| -> anyhow::Result<Vec<switchyard_media::Network>> {
                list.iter()
                    .map(|n| n.parse().map_err(|e| anyhow::anyhow!("media.{key}: {e}")))
                    .collect()
            };
        Ok(switchyard_media::DestinationPolicy::for_bind(
            self.bind,
            parse(&self.allow_destinations, "allow_destinations")?,
            parse(&self.deny_destinations, "deny_destinations")?,
        ))
    }
}

impl Default for MediaSection {
    fn default() -> Self {
        MediaSection {
            bind: IpAddr::from([127, 0, 0, 1]),
            advertise: None,
            port_min: 20000,
            port_max: 29999,
            keep_bound: None,
            max_sessions: 0,
            relay_threads: 0,
            kernel_forwarding: "auto".to_owned(),
            control: SocketAddr::from(([127, 0, 0, 1], 7070)),
            pool: switchyard_core::media_client::SHARED_POOL.to_owned(),
            metrics: None,
            deny_destinations: Vec::new(),
            allow_destinations: Vec::new(),
            cgroup: None,
            cpu_percent: 0,
            memory_mb: 0,
            saturated_pressure: 40.0,
        }
    }
}

/// `[edge]`: the SIP edge.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeSection {
    /// Address phones reach the SIP listeners at, when they are bound to 0.0.0.0 or [::]
    /// (written into Via and Record-Route); default: loopback.
    pub advertise: Option<IpAddr>,
    /// Failed digest attempts from one source address within the window before the
    /// source is banned (`403`).
    pub max_auth_failures: u32,
    /// How long failures are counted, seconds; also the length of a first ban.
    pub auth_failure_window_secs: u64,
    /// The longest ban, seconds: each new ban of a source doubles the last one up to it.
    pub max_ban_secs: u64,
    /// Sources never banned: trunks and large NATs (`203.0.113.0/24`, `2001:db8::/32`,
    /// single addresses).
    pub allow: Vec<String>,
    /// Digest challenges offered, in order: `MD5`, `SHA-256`. Only MD5 by default: phones
    /// built on libre (baresip 1.0) abort on any challenge with an algorithm they do not
    /// know, even when an MD5 one is also present. Add `SHA-256` when every phone takes it.
    pub digest_algorithms: Vec<String>,
    /// A new REGISTER or INVITE that waited longer than this in the edge's queue is
    /// answered `503` with a jittered `Retry-After` (milliseconds). A phone has sent its
    /// request twice by 1.5 s (RFC 3261 timer E); past that the queue only grows.
    pub shed_after_ms: u64,
    /// Range of the `Retry-After` (seconds) given with such a `503`.
    pub retry_after_min_secs: u32,
    pub retry_after_max_secs: u32,
    /// New requests per second from one address, per class (REGISTER, dialog-creating,
    /// other), a burst of twice that; more are dropped. Allow-listed sources are exempt.
    pub source_rate_per_sec: u32,
    /// The same for one network (`network_bits_v4`, `network_bits_v6`).
    pub network_rate_per_sec: u32,
    pub network_bits_v4: u8,
    pub network_bits_v6: u8,
    /// Distinct unknown users or domains from one source within a minute before it is
    /// banned as a scanner (silently ignored while banned).
    pub scan_unknown_names: usize,
    /// Malformed messages from one source within a minute before it is banned (silently
    /// ignored while banned).
    pub malformed_flood: u32,
    /// `switchyard edge`: the cores it sends calls to (their `core.listen` addresses).
    pub cores: Vec<SocketAddr>,
    /// `switchyard edge`: its SIP socket towards the cores (on the internal network).
    pub internal: SocketAddr,
    /// `switchyard edge`: where it serves `/metrics` (off when absent).
    pub metrics: Option<SocketAddr>,
}

impl Default for EdgeSection {
    fn default() -> Self {
        EdgeSection {
            advertise: None,
            max_auth_failures: 5,
            auth_failure_window_secs: 300,
            max_ban_secs: 86_400,
            allow: Vec::new(),
            digest_algorithms: vec!["MD5".into()],
            shed_after_ms: 1000,
            retry_after_min_secs: 2,
            retry_after_max_secs: 10,
            source_rate_per_sec: 50,
            network_rate_per_sec: 500,
            network_bits_v4: 24,
            network_bits_v6: 64,
            scan_unknown_names: 10,
            malformed_flood: 50,
            cores: Vec::new(),
            internal: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
        }
    }
}

/// `[state]`: runtime state (registrations).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateSection {
    /// `redis://...` for a cluster; in memory when absent.
    pub redis_url: Option<String>,
    /// What every key of this cluster starts with, so several clusters can share one
    /// Redis.
    pub prefix: String,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            redis_url: None,
            prefix: "sy".into(),
        }
    }
}

/// `[api]`: the provisioning API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address; `off` is not offered: the API is how tenants are provisioned.
    pub listen: SocketAddr,
    /// Requests per second one API key may make (bursts of twice that); beyond: 429.
    pub requests_per_second_per_key: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            requests_per_second_per_key: 100,
        }
    }
}

/// `[store]`: where tenant configuration lives.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...`; default: `switchyard.db` in the data directory.
    pub url: Option<String>,
}

impl Config {
    /// The cluster secret, when one is set and not empty.
    pub fn cluster_secret(&self) -> Option<&[u8]> {
        self.cluster
            .secret
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::as_bytes)
    }

    /// What a role running apart from the others needs: the cluster secret, a PostgreSQL
    /// store (change events reach other processes through its NOTIFY) and Redis (the
    /// registrations and live calls every edge and core shares).
    pub fn require_cluster(&self, role: &str) -> anyhow::Result<()> {
        if self.cluster_secret().is_none() {
            bail!(
                "switchyard {role} needs cluster.secret (SWITCHYARD_CLUSTER_SECRET): internal traffic is signed with it"
            );
        }
        if !self.store_url().starts_with("postgres") {
            bail!(
                "switchyard {role} needs a PostgreSQL store (store.url = postgres://...): other processes hear its changes through PostgreSQL's NOTIFY; SQLite is for serve on one machine"
            );
        }
        if self.state.redis_url.is_none() {
            bail!(
                "switchyard {role} needs state.redis_url: registrations and calls in progress are shared through Redis"
            );
        }
        Ok(())
    }

    /// The store URL in effect.
    pub fn store_url(&self) -> String {
        self.store.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.node.data_dir.join("switchyard.db").display()
            )
        })
    }
}

/// `[sip]`: listeners and transport limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub ws: Vec<SocketAddr>,
    pub wss: Vec<SocketAddr>,
    /// PEM certificate chain and key for TLS and WSS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_message_bytes: usize,
    pub connections_per_source: usize,
    pub max_connections: usize,
    pub idle_timeout_secs: u64,
    pub message_timeout_secs: u64,
    /// Secret for stateless digest nonces; all edge nodes of a cluster share it.
    /// Generated per start when absent (nonces then do not survive a restart).
    pub nonce_secret: Option<String>,
    pub nonce_lifetime_secs: u64,
    /// Receive buffer asked of the kernel for each UDP socket, bytes (Linux caps it at
    /// `net.core.rmem_max`; the log says so). A registration storm arrives faster than
    /// any process reads: what does not fit here is lost and costs a phone a 500 ms
    /// retransmission.
    pub udp_buffer_bytes: usize,
}

impl Default for SipConfig {
    fn default() -> Self {
        // Every interface, IPv4 and IPv6 (each its own socket).
        let any = |port: u16| {
            vec![
                SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            ]
        };
        SipConfig {
            udp: any(5060),
            tcp: any(5060),
            tls: any(5061),
            ws: any(5066),
            wss: any(7443),
            tls_cert: None,
            tls_key: None,
            max_message_bytes: 64 * 1024,
            connections_per_source: 64,
            max_connections: 10_000,
            idle_timeout_secs: 600,
            message_timeout_secs: 20,
            nonce_secret: None,
            nonce_lifetime_secs: 300,
            udp_buffer_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `[node]`: where this process keeps its data.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./switchyard-data"),
        }
    }
}

impl Config {
    /// Reads a TOML file; no file means the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let s = &self.sip;
        if s.max_message_bytes < 1024 || s.max_message_bytes > 16 * 1024 * 1024 {
            bail!("sip.max_message_bytes must be between 1024 and 16777216");
        }
        if s.connections_per_source == 0 || s.max_connections == 0 {
            bail!("sip.connections_per_source and sip.max_connections must be at least 1");
        }
        if s.idle_timeout_secs == 0 || s.message_timeout_secs == 0 {
            bail!("sip.idle_timeout_secs and sip.message_timeout_secs must be at least 1");
        }
        if self.core.shards == 0 || self.core.shards > 256 {
            bail!("core.shards must be between 1 and 256");
        }
        if s.udp_buffer_bytes > 1 << 30 {
            bail!("sip.udp_buffer_bytes must be at most 1073741824");
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            bail!("sip.tls_cert and sip.tls_key go together");
        }
        if !self.core.media_nodes.is_empty() && self.cluster_secret().is_none() {
            bail!("core.media_nodes needs cluster.secret (media nodes obey only signed requests)");
        }
        let m = &self.media;
        m.destinations()?;
        m.kernel_forwarding()?;
        if m.port_min < 1024 || m.port_max < m.port_min.saturating_add(3) {
            bail!("media.port_min must be at least 1024 and media.port_max at least port_min + 3");
        }
        if self.edge.digest_algorithms.is_empty()
            || self
                .edge
                .digest_algorithms
                .iter()
                .any(|a| switchyard_sip::digest::Algorithm::from_token(Some(a)).is_none())
        {
            bail!("edge.digest_algorithms must list MD5 and/or SHA-256");
        }
        if self.edge.retry_after_min_secs == 0
            || self.edge.retry_after_max_secs < self.edge.retry_after_min_secs
        {
            bail!("edge.retry_after_min_secs must be at least 1 and at most retry_after_max_secs");
        }
        if self.edge.network_bits_v4 > 32 || self.edge.network_bits_v6 > 128 {
            bail!("edge.network_bits_v4 must be at most 32 and edge.network_bits_v6 at most 128");
        }
        if self.edge.source_rate_per_sec == 0 || self.edge.network_rate_per_sec == 0 {
            bail!("edge.source_rate_per_sec and edge.network_rate_per_sec must be at least 1");
        }
        if self.edge.shed_after_ms == 0 {
            bail!("edge.shed_after_ms must be at least 1");
        }
        for a in &self.edge.allow {
            switchyard_edge::bans::Prefix::parse(a)
                .map_err(|e| anyhow::anyhow!("edge.allow: {e}"))?;
        }
        if self.edge.max_auth_failures == 0 {
            bail!("edge.max_auth_failures must be at least 1");
        }
        if s.udp.is_empty()
            && s.tcp.is_empty()
            && s.tls.is_empty()
            && s.ws.is_empty()
            && s.wss.is_empty()
        {
            bail!("no SIP listener configured");
        }
        Ok(())
    }
}

/// Parses a listener flag value: a comma-separated list of addresses, or `off`.
pub fn parse_listen_list(value: &str) -> Result<Vec<SocketAddr>, String> {
    if value.eq_ignore_ascii_case("off") || value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|a| {
            a.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("{a:?} is not an address like 0.0.0.0:5060 or [::]:5060: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_the_standard_ports() {
        let c = Config::default();
        assert_eq!(c.sip.udp[0].port(), 5060);
        assert_eq!(c.sip.tcp[0].port(), 5060);
        assert_eq!(c.sip.tls[0].port(), 5061);
        assert_eq!(c.sip.ws[0].port(), 5066);
        assert_eq!(c.sip.wss[0].port(), 7443);
        assert!(
            c.sip.udp.iter().any(|a| a.is_ipv6()) && c.sip.udp.iter().any(|a| a.is_ipv4()),
            "IPv4 and IPv6 by default"
        );
        c.validate().unwrap();
    }

    #[test]
    fn toml_overrides_and_unknown_keys_fail() {
        let c: Config = toml::from_str("[sip]\nudp = [\"127.0.0.1:5070\"]\ntls = []\n").unwrap();
        assert_eq!(c.sip.udp, vec!["127.0.0.1:5070".parse().unwrap()]);
        assert!(c.sip.tls.is_empty());
        assert_eq!(c.sip.tcp[0].port(), 5060, "untouched keys keep defaults");
        let err = toml::from_str::<Config>("[sip]\nupd = []\n").unwrap_err();
        assert!(err.to_string().contains("upd"), "{err}");
    }

    #[test]
    fn media_nodes_name_their_pool_or_join_the_shared_one() {
        let c: Config = toml::from_str(
            "[core]\nmedia_nodes = [\"127.0.0.1:7070\", \"gold@[::1]:7071\"]\n[cluster]\nsecret = \"s\"\n",
        )
        .unwrap();
        assert_eq!(
            c.core.media_nodes,
            vec![
                MediaNodeAddr {
                    pool: "shared".into(),
                    addr: "127.0.0.1:7070".parse().unwrap()
                },
                MediaNodeAddr {
                    pool: "gold".into(),
                    addr: "[::1]:7071".parse().unwrap()
                },
            ]
        );
        c.validate().unwrap();
        let err =
            toml::from_str::<Config>("[core]\nmedia_nodes = [\"gold@nowhere\"]\n").unwrap_err();
        assert!(err.to_string().contains("POOL@ADDR"), "{err}");
        let err =
            toml::from_str::<Config>("[core]\nmedia_nodes = [\"a b@127.0.0.1:1\"]\n").unwrap_err();
        assert!(err.to_string().contains("pool name"), "{err}");
        // Remote media without a secret would be an open relay for anyone who can reach it.
        let c: Config = toml::from_str("[core]\nmedia_nodes = [\"127.0.0.1:7070\"]\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("cluster.secret"), "{err}");
    }

    #[test]
    fn listen_flags() {
        assert_eq!(parse_listen_list("off").unwrap(), vec![]);
        assert_eq!(parse_listen_list("127.0.0.1:1,[::1]:2").unwrap().len(), 2);
        assert!(parse_listen_list("localhost").is_err());
    }
}
