use std::path::PathBuf;

use anyhow::Context;

use clap::{Args, Parser, Subcommand};
use switchyard::config::{Config, parse_listen_list};
use switchyard::serve::{ServeOptions, serve};
use tokio::sync::watch;

// glibc's malloc grew and trimmed a worker arena about once per registration under load
// (an mprotect and fresh page faults each time); mimalloc keeps its pages. Built without
// transparent huge pages (`no_thp`): each first touch zeroed 2 MiB, which the heap's
// growth in a registration storm paid for (RSS after start 44 -> 26 MB, grown by 4,000
// registrations 26.7 -> 18.4 MB; docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Switchyard: a multi-tenant hosted PBX.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every role in one process.
    #[command(args_override_self = true)]
    Serve(Box<ServeArgs>),
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Extension ranges of a tenant.
    #[command(subcommand)]
    Range(RangeCommand),
    /// Extensions of a tenant.
    #[command(subcommand)]
    Extension(ExtensionCommand),
    /// Numbers: the shared pool and a tenant's numbers.
    #[command(subcommand)]
    Did(DidCommand),
    /// Sources the running edge has banned (needs --api and an operator --key).
    #[command(subcommand)]
    Ban(BanCommand),
    /// The cluster's cores and media nodes: list, drain, resume (needs --api and an
    /// operator --key, an API with the cluster's Redis).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Bulk provisioning from a JSON or CSV file; idempotent and resumable.
    Import(ImportArgs),
    /// Load tools (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run only the provisioning API (on the configured store).
    Api(ApiArgs),
    /// Run a media node that cores drive over the network (`core.media_nodes`).
    Media(MediaArgs),
    /// Run a core: call engines that edges send calls to (needs PostgreSQL and Redis).
    Core(CoreArgs),
    /// Run an edge: SIP listeners, registrar and proxy in front of cores (needs
    /// PostgreSQL and Redis).
    Edge(EdgeArgs),
    /// Manage API keys directly on the store (no server needed).
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

/// Where the commands reach the API, and how they print.
#[derive(Debug, Args)]
struct Reach {
    /// A running API (host:port); default: the local store, through an in-process API.
    #[arg(long, global = true, env = "SWITCHYARD_API", requires = "key")]
    api: Option<std::net::SocketAddr>,
    /// API key for `--api`.
    #[arg(long, global = true, env = "SWITCHYARD_API_KEY")]
    key: Option<String>,
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, global = true, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        max_extensions: Option<i64>,
        #[command(flatten)]
        reach: Reach,
    },
    List {
        #[command(flatten)]
        reach: Reach,
    },
    Show {
        id: String,
        #[command(flatten)]
        reach: Reach,
    },
    Delete {
        id: String,
        #[command(flatten)]
        reach: Reach,
    },
}

#[derive(Debug, Subcommand)]
enum RangeCommand {
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        first: i64,
        #[arg(long)]
        last: i64,
        #[command(flatten)]
        reach: Reach,
    },
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        reach: Reach,
    },
}

#[derive(Debug, Subcommand)]
enum ExtensionCommand {
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        range: String,
        /// Default: the next free number of the range.
        #[arg(long)]
        number: Option<i64>,
        #[arg(long, env = "SWITCHYARD_EXTENSION_PASSWORD")]
        password: String,
        #[arg(long, default_value = "")]
        display_name: String,
        #[command(flatten)]
        reach: Reach,
    },
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        reach: Reach,
    },
    Delete {
        #[arg(long)]
        tenant: String,
        id: String,
        #[command(flatten)]
        reach: Reach,
    },
}

#[derive(Debug, Subcommand)]
enum DidCommand {
    /// Add numbers (E.164) to the free pool.
    Add {
        numbers: Vec<String>,
        #[command(flatten)]
        reach: Reach,
    },
    /// Give the tenant the next free number.
    Assign {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        reach: Reach,
    },
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        reach: Reach,
    },
    /// Release a tenant's number into quarantine.
    Release {
        #[arg(long)]
        tenant: String,
        number: String,
        #[command(flatten)]
        reach: Reach,
    },
}

#[derive(Debug, Subcommand)]
enum BanCommand {
    /// Bans in force: source, reason, since, until, strikes.
    List {
        #[command(flatten)]
        reach: Reach,
    },
    /// Lift the ban of a source address (its strikes are forgotten too).
    Lift {
        source: std::net::IpAddr,
        #[command(flatten)]
        reach: Reach,
    },
}

impl From<BanCommand> for Call {
    fn from(c: BanCommand) -> Call {
        let call = |method, path: String, reach| Call {
            method,
            path,
            body: None,
            columns: &["source", "reason", "since", "until", "strikes"],
            reach,
        };
        match c {
            BanCommand::List { reach } => call("GET", "/v1/bans".into(), reach),
            BanCommand::Lift { source, reach } => {
                call("DELETE", format!("/v1/bans/{source}"), reach)
            }
        }
    }
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Nodes with a live heartbeat: id, role, address, pool, load, capacity, state.
    List {
        #[command(flatten)]
        reach: Reach,
    },
    /// Drain a node: no new calls; its calls go on; `drained` once empty.
    Drain {
        /// The node's id (`core@ADDR`, `media@ADDR`).
        id: String,
        #[command(flatten)]
        reach: Reach,
    },
    /// Let a draining or drained node take calls again.
    Resume {
        id: String,
        #[command(flatten)]
        reach: Reach,
    },
}

impl From<NodeCommand> for Call {
    fn from(c: NodeCommand) -> Call {
        let call = |method, path: String, reach| Call {
            method,
            path,
            body: None,
            columns: &["id", "role", "addr", "pool", "load", "capacity", "state"],
            reach,
        };
        // IPv6 addresses in ids carry brackets, which a path must escape.
        let escaped = |id: &str| id.replace('[', "%5B").replace(']', "%5D");
        match c {
            NodeCommand::List { reach } => call("GET", "/v1/cluster/nodes".into(), reach),
            NodeCommand::Drain { id, reach } => call(
                "POST",
                format!("/v1/cluster/nodes/{}/drain", escaped(&id)),
                reach,
            ),
            NodeCommand::Resume { id, reach } => call(
                "DELETE",
                format!("/v1/cluster/nodes/{}/drain", escaped(&id)),
                reach,
            ),
        }
    }
}

#[derive(Debug, Args)]
struct ApiArgs {
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "SWITCHYARD_API_LISTEN")]
    api_listen: Option<std::net::SocketAddr>,
    #[arg(long, env = "SWITCHYARD_STORE_URL")]
    store_url: Option<String>,
    /// The cluster's Redis: `/v1/cluster/nodes` lists and drains its nodes.
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    redis_url: Option<String>,
    /// What the cluster's Redis keys start with (`state.prefix`).
    #[arg(long, env = "SWITCHYARD_STATE_PREFIX")]
    state_prefix: Option<String>,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The file: `.json`, or CSV with columns domain,name,range_first,range_last,number,password,display_name.
    file: PathBuf,
    /// A running API (host:port); default: the local store, through an in-process API.
    #[arg(long, env = "SWITCHYARD_API", requires = "key")]
    api: Option<std::net::SocketAddr>,
    /// Operator API key for `--api`.
    #[arg(long, env = "SWITCHYARD_API_KEY")]
    key: Option<String>,
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Concurrent provisioning through the HTTP API, then every invariant checked.
    Provision(ProvisionArgs),
    /// N phones in T tenants register at once (full digest handshake over UDP).
    RegisterStorm(StormArgs),
    /// Calls placed at a rate, each ending one of the ways a call ends.
    Calls(CallsArgs),
    /// Tenant A floods at 10x its call-rate cap while tenant B calls steadily; B's
    /// success and setup time, against a baseline of B alone.
    NoisyNeighbour(NoisyArgs),
    /// G.711 calls through a media node run apart (`switchyard media`): relayed packets
    /// a second and the delay; `--direct` for the same phones without the relay.
    Rtp(RtpArgs),
}

#[derive(Debug, Args)]
struct RtpArgs {
    /// The media node's control address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    media: std::net::SocketAddr,
    /// Its cluster secret.
    #[arg(
        long,
        env = "SWITCHYARD_CLUSTER_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    cluster_secret: String,
    /// Calls up at once.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// No relay: the phones send to each other (the baseline).
    #[arg(long)]
    direct: bool,
    /// Relay through an rtpengine instead, at its ng control address (the comparison).
    #[arg(long, conflicts_with = "direct")]
    rtpengine: Option<std::net::SocketAddr>,
    /// The generator's tick in microseconds: each sends the packets of the calls whose
    /// phase it is (100: 10 packets every 100 µs at 1,000 calls, spread as phones are).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=20_000))]
    tick_us: u64,
    /// CPUs whose stalls to measure during the run, at real-time priority when allowed
    /// (comma-separated: the relay's and the generator's); the report then gives the
    /// delays of the packets no stall overlapped beside all of them.
    #[arg(long, value_delimiter = ',')]
    probe_cpus: Vec<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CallsArgs {
    /// The SIP server to call through (any that knows the storm population's users).
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: std::net::SocketAddr,
    /// Tenants of the population that place calls.
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Extensions per tenant (1000-1004 are callees, the rest callers).
    #[arg(long, default_value_t = 20)]
    per_tenant: usize,
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// New calls per second, all tenants together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long answered calls last, milliseconds.
    #[arg(long, default_value_t = 1000)]
    hold_ms: u64,
    /// How calls end, cycled over the calls.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "caller-bye,callee-bye,cancel,busy,unavailable"
    )]
    endings: Vec<switchyard::bench::calls::Ending>,
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// Create the tenants and extensions in this store first (where missing) and set
    /// their caps to --max-calls and --cps.
    #[arg(long)]
    provision_store: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    max_calls: i64,
    #[arg(long, default_value_t = 10_000)]
    cps: i64,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct NoisyArgs {
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: std::net::SocketAddr,
    /// Tenant A's calls_per_second cap; A offers --flood-factor times it.
    #[arg(long, default_value_t = 50)]
    a_cps: u32,
    #[arg(long, default_value_t = 10.0)]
    flood_factor: f64,
    /// Tenant B's steady calls per second.
    #[arg(long, default_value_t = 10.0)]
    b_rate: f64,
    /// Length of each phase, seconds.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    #[arg(long, default_value_t = 1000)]
    hold_ms: u64,
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// Create tenants A and B in this store first and set their caps (A: --a-cps, B:
    /// twice its rate).
    #[arg(long)]
    provision_store: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StormArgs {
    /// The registrar to storm (any SIP server that knows the same users).
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: std::net::SocketAddr,
    #[arg(long, default_value_t = 10_000)]
    phones: usize,
    #[arg(long, default_value_t = 500)]
    tenants: usize,
    /// New phones per second; all at once when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Expiry the phones ask for, seconds.
    #[arg(long, default_value_t = 3600)]
    expires: u32,
    /// Local UDP sockets the phones share.
    #[arg(long, default_value_t = 16)]
    sockets: usize,
    /// Give up on phones not registered after this many seconds.
    #[arg(long, default_value_t = 60)]
    deadline_secs: u64,
    /// Create the phones' tenants and extensions in this store first (where missing),
    /// e.g. the data directory's `sqlite://.../switchyard.db` of the server under test.
    #[arg(long)]
    provision_store: Option<String>,
    /// Only provision (with --provision-store) or write --kamailio-htable; no storm.
    #[arg(long)]
    no_storm: bool,
    /// Write the phones' MD5 HA1s as Kamailio htable lines (user@domain=>ha1) here.
    #[arg(long)]
    kamailio_htable: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct ProvisionArgs {
    /// Store to run on; default a fresh SQLite file in a temporary directory. For
    /// PostgreSQL give an empty database.
    #[arg(long)]
    store_url: Option<String>,
    #[arg(long, default_value_t = 500)]
    tenants: usize,
    #[arg(long, default_value_t = 20)]
    extensions: usize,
    #[arg(long, default_value_t = 5)]
    dids: usize,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Every n-th request is repeated with the same Idempotency-Key (0: never).
    #[arg(long, default_value_t = 10)]
    duplicate_every: usize,
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print it once.
    Create(ApiKeyCreate),
}

#[derive(Debug, Args)]
struct ApiKeyCreate {
    /// A key for the whole platform.
    #[arg(long, conflicts_with = "tenant", required_unless_present = "tenant")]
    operator: bool,
    /// A key for one tenant (its id).
    #[arg(long)]
    tenant: Option<String>,
    /// The key may read but not write.
    #[arg(long)]
    read_only: bool,
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

type Addrs = Vec<std::net::SocketAddr>;

/// The SIP listeners of `serve` and `edge`.
#[derive(Debug, Args)]
struct ListenerArgs {
    /// UDP listen addresses, comma-separated, or `off`.
    #[arg(long, env = "SWITCHYARD_SIP_UDP", value_parser = parse_listen_list)]
    udp: Option<Addrs>,
    /// TCP listen addresses, or `off`.
    #[arg(long, env = "SWITCHYARD_SIP_TCP", value_parser = parse_listen_list)]
    tcp: Option<Addrs>,
    /// TLS listen addresses, or `off`.
    #[arg(long, env = "SWITCHYARD_SIP_TLS", value_parser = parse_listen_list)]
    tls: Option<Addrs>,
    /// WebSocket listen addresses, or `off`.
    #[arg(long, env = "SWITCHYARD_SIP_WS", value_parser = parse_listen_list)]
    ws: Option<Addrs>,
    /// Secure WebSocket listen addresses, or `off`.
    #[arg(long, env = "SWITCHYARD_SIP_WSS", value_parser = parse_listen_list)]
    wss: Option<Addrs>,
}

impl ListenerArgs {
    /// Replaces the configured listeners a flag names.
    fn apply(self, sip: &mut switchyard::config::SipConfig) {
        for (flag, slot) in [
            (self.udp, &mut sip.udp),
            (self.tcp, &mut sip.tcp),
            (self.tls, &mut sip.tls),
            (self.ws, &mut sip.ws),
            (self.wss, &mut sip.wss),
        ] {
            if let Some(v) = flag {
                *slot = v;
            }
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (SQLite file, demo credentials, certificates).
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    listeners: ListenerArgs,
    /// PEM certificate chain for TLS/WSS.
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS/WSS.
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections one source address may hold.
    #[arg(long, env = "SWITCHYARD_CONNECTIONS_PER_SOURCE")]
    connections_per_source: Option<usize>,
    /// Seconds a started message may take to arrive whole on a stream (slowloris guard).
    #[arg(long, env = "SWITCHYARD_MESSAGE_TIMEOUT_SECS")]
    message_timeout_secs: Option<u64>,
    /// Provisioning API listen address.
    #[arg(long, env = "SWITCHYARD_API_LISTEN")]
    api_listen: Option<std::net::SocketAddr>,
    /// Store URL (`sqlite://PATH` or `postgres://...`).
    #[arg(long, env = "SWITCHYARD_STORE_URL")]
    store_url: Option<String>,
    /// Seconds without RTP from a leg before an answered call is hung up (0: never).
    #[arg(long, env = "SWITCHYARD_RTP_TIMEOUT_SECS")]
    rtp_timeout_secs: Option<u64>,
    /// RTP port range, `MIN-MAX`.
    #[arg(long, env = "SWITCHYARD_MEDIA_PORTS", value_parser = parse_port_range)]
    media_ports: Option<(u16, u16)>,
    /// Call engines in this process (`core.shards`).
    #[arg(long, env = "SWITCHYARD_CORE_SHARDS")]
    core_shards: Option<usize>,
    /// Media nodes running apart, comma-separated `ADDR` or `POOL@ADDR`
    /// (`core.media_nodes`); needs the cluster secret.
    #[arg(long, env = "SWITCHYARD_MEDIA_NODES", value_delimiter = ',')]
    media_nodes: Option<Vec<switchyard::config::MediaNodeAddr>>,
    /// The cluster's shared secret (`cluster.secret`).
    #[arg(long, env = "SWITCHYARD_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Demo mode: a demo tenant with two extensions (credentials printed and written to
    /// `demo-credentials.json` in the data directory), a demo API key, a self-signed TLS
    /// certificate.
    #[arg(long)]
    demo: bool,
}

#[derive(Debug, Args)]
struct MediaArgs {
    /// TOML configuration file (its `[media]` and `[cluster]` sections).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Where cores send media-control requests (`media.control`).
    #[arg(long, env = "SWITCHYARD_MEDIA_CONTROL")]
    control: Option<std::net::SocketAddr>,
    /// Address RTP sockets bind to (`media.bind`).
    #[arg(long, env = "SWITCHYARD_MEDIA_BIND")]
    bind: Option<std::net::IpAddr>,
    /// Address written into SDP (`media.advertise`).
    #[arg(long, env = "SWITCHYARD_MEDIA_ADVERTISE")]
    advertise: Option<std::net::IpAddr>,
    /// RTP port range, `MIN-MAX`.
    #[arg(long, env = "SWITCHYARD_MEDIA_PORTS", value_parser = parse_port_range)]
    media_ports: Option<(u16, u16)>,
    /// Sessions this node takes at most (`media.max_sessions`).
    #[arg(long, env = "SWITCHYARD_MEDIA_MAX_SESSIONS")]
    max_sessions: Option<usize>,
    /// The pool this node serves (`media.pool`).
    #[arg(long, env = "SWITCHYARD_MEDIA_POOL")]
    pool: Option<String>,
    /// Where `/metrics` is served (`media.metrics`).
    #[arg(long, env = "SWITCHYARD_MEDIA_METRICS")]
    metrics: Option<std::net::SocketAddr>,
    /// The cluster's shared secret (`cluster.secret`).
    #[arg(long, env = "SWITCHYARD_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Latched streams forwarded in the kernel: auto, on or off
    /// (`media.kernel_forwarding`).
    #[arg(long, env = "SWITCHYARD_MEDIA_KERNEL_FORWARDING")]
    kernel_forwarding: Option<String>,
    /// Confine the node to a cgroup of this name with `--cpu-percent` and `--memory-mb`
    /// (`media.cgroup`), and report its CPU pressure.
    #[arg(long, env = "SWITCHYARD_MEDIA_CGROUP")]
    cgroup: Option<String>,
    /// Percent of one CPU the cgroup may use (`media.cpu_percent`; 0: no limit).
    #[arg(long, env = "SWITCHYARD_MEDIA_CPU_PERCENT")]
    cpu_percent: Option<u32>,
    /// The cgroup's memory limit, MB (`media.memory_mb`; 0: no limit).
    #[arg(long, env = "SWITCHYARD_MEDIA_MEMORY_MB")]
    memory_mb: Option<u64>,
    /// CPU pressure (percent, over 10 s) at which the node says it is saturated
    /// (`media.saturated_pressure`).
    #[arg(long, env = "SWITCHYARD_MEDIA_SATURATED_PRESSURE")]
    saturated_pressure: Option<f64>,
    /// Redis URL: the node then writes its membership record there for cores to find.
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    redis_url: Option<String>,
    /// What the cluster's Redis keys start with (`state.prefix`).
    #[arg(long, env = "SWITCHYARD_STATE_PREFIX")]
    state_prefix: Option<String>,
}

/// What every role running apart from the others is told.
#[derive(Debug, Args)]
struct ClusterArgs {
    /// TOML configuration file.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Store URL (`postgres://...`).
    #[arg(long, env = "SWITCHYARD_STORE_URL")]
    store_url: Option<String>,
    /// Redis URL (`state.redis_url`).
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    redis_url: Option<String>,
    /// What the cluster's Redis keys start with (`state.prefix`).
    #[arg(long, env = "SWITCHYARD_STATE_PREFIX")]
    state_prefix: Option<String>,
    /// The cluster's shared secret (`cluster.secret`).
    #[arg(long, env = "SWITCHYARD_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Where `/metrics` is served.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
}

impl ClusterArgs {
    fn load(self) -> anyhow::Result<(Config, Option<std::net::SocketAddr>)> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(d) = self.data_dir {
            config.node.data_dir = d;
        }
        if let Some(u) = self.store_url {
            config.store.url = Some(u);
        }
        if let Some(u) = self.redis_url {
            config.state.redis_url = Some(u);
        }
        if let Some(p) = self.state_prefix {
            config.state.prefix = p;
        }
        if let Some(s) = self.cluster_secret {
            config.cluster.secret = Some(s);
        }
        Ok((config, self.metrics))
    }
}

#[derive(Debug, Args)]
struct CoreArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// SIP sockets towards the edges, one call engine each (`core.listen`).
    #[arg(long, env = "SWITCHYARD_CORE_LISTEN", value_parser = parse_listen_list)]
    listen: Option<Addrs>,
    /// Media nodes, comma-separated `ADDR` or `POOL@ADDR` (`core.media_nodes`).
    #[arg(long, env = "SWITCHYARD_MEDIA_NODES", value_delimiter = ',')]
    media_nodes: Option<Vec<switchyard::config::MediaNodeAddr>>,
    /// RTP port range of the core's own media node, when it has no media nodes apart.
    #[arg(long, env = "SWITCHYARD_MEDIA_PORTS", value_parser = parse_port_range)]
    media_ports: Option<(u16, u16)>,
    /// Seconds without RTP from a leg before an answered call is hung up (0: never).
    #[arg(long, env = "SWITCHYARD_RTP_TIMEOUT_SECS")]
    rtp_timeout_secs: Option<u64>,
    /// The pool this core serves (`core.pool`).
    #[arg(long, env = "SWITCHYARD_CORE_POOL")]
    pool: Option<String>,
}

fn run_core(args: CoreArgs) -> anyhow::Result<()> {
    let (mut config, metrics) = args.cluster.load()?;
    if let Some(l) = args.listen {
        config.core.listen = l;
    }
    if let Some(n) = args.media_nodes {
        config.core.media_nodes = n;
    }
    if let Some(p) = args.pool {
        config.core.pool = p;
    }
    if let Some((min, max)) = args.media_ports {
        config.media.port_min = min;
        config.media.port_max = max;
    }
    if let Some(t) = args.rtp_timeout_secs {
        config.core.rtp_timeout_secs = t;
    }
    if metrics.is_some() {
        config.core.metrics = metrics;
    }
    run_until_signal(|stop| switchyard::roles::run_core(config, stop))
}

#[derive(Debug, Args)]
struct EdgeArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The cores, comma-separated (`edge.cores`).
    #[arg(long, env = "SWITCHYARD_EDGE_CORES", value_parser = parse_listen_list)]
    cores: Option<Addrs>,
    /// The edge's SIP socket towards the cores (`edge.internal`).
    #[arg(long, env = "SWITCHYARD_EDGE_INTERNAL")]
    internal: Option<std::net::SocketAddr>,
    #[command(flatten)]
    listeners: ListenerArgs,
    /// Address phones reach the listeners at (`edge.advertise`).
    #[arg(long, env = "SWITCHYARD_EDGE_ADVERTISE")]
    advertise: Option<std::net::IpAddr>,
    /// Secret for digest nonces and flow tokens, the same on every edge (`sip.nonce_secret`).
    #[arg(long, env = "SWITCHYARD_NONCE_SECRET", hide_env_values = true)]
    nonce_secret: Option<String>,
}

fn run_edge(args: EdgeArgs) -> anyhow::Result<()> {
    let (mut config, metrics) = args.cluster.load()?;
    args.listeners.apply(&mut config.sip);
    let sip = &mut config.sip;
    if let Some(s) = args.nonce_secret {
        sip.nonce_secret = Some(s);
    }
    if let Some(c) = args.cores {
        config.edge.cores = c;
    }
    if let Some(a) = args.internal {
        config.edge.internal = a;
    }
    if let Some(a) = args.advertise {
        config.edge.advertise = Some(a);
    }
    if metrics.is_some() {
        config.edge.metrics = metrics;
    }
    run_until_signal(|stop| switchyard::roles::run_edge(config, stop))
}

fn run_media(args: MediaArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    let m = &mut config.media;
    if let Some(a) = args.control {
        m.control = a;
    }
    if let Some(a) = args.bind {
        m.bind = a;
    }
    if let Some(a) = args.advertise {
        m.advertise = Some(a);
    }
    if let Some((min, max)) = args.media_ports {
        m.port_min = min;
        m.port_max = max;
    }
    if let Some(n) = args.max_sessions {
        m.max_sessions = n;
    }
    if let Some(p) = args.pool {
        m.pool = p;
    }
    if let Some(a) = args.metrics {
        m.metrics = Some(a);
    }
    if let Some(s) = args.cluster_secret {
        config.cluster.secret = Some(s);
    }
    if let Some(u) = args.redis_url {
        config.state.redis_url = Some(u);
    }
    if let Some(p) = args.state_prefix {
        config.state.prefix = p;
    }
    if let Some(c) = args.cgroup {
        config.media.cgroup = Some(c);
    }
    if let Some(k) = args.kernel_forwarding {
        config.media.kernel_forwarding = k;
    }
    if let Some(c) = args.cpu_percent {
        config.media.cpu_percent = c;
    }
    if let Some(m) = args.memory_mb {
        config.media.memory_mb = m;
    }
    if let Some(p) = args.saturated_pressure {
        config.media.saturated_pressure = p;
    }
    run_until_signal(|stop| switchyard::roles::run_media(config, stop))
}

/// Runs a role on a runtime until SIGTERM or Ctrl-C (then, at the latest
/// `SHUTDOWN_DEADLINE` later, the process exits).
fn run_until_signal<F, Fut>(role: F) -> anyhow::Result<()>
where
    F: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(true);
            // The last resort: whatever state the process is in, it is gone within
            // seconds of SIGTERM. A thread of its own, so a stuck runtime cannot hold it.
            std::thread::spawn(|| {
                std::thread::sleep(SHUTDOWN_DEADLINE);
                tracing::error!(
                    "not stopped {} s after the signal: exiting without a clean shutdown",
                    SHUTDOWN_DEADLINE.as_secs()
                );
                std::process::exit(3);
            });
        });
        role(rx).await
    })
}

fn parse_port_range(v: &str) -> Result<(u16, u16), String> {
    let (a, b) = v
        .split_once('-')
        .ok_or_else(|| format!("{v:?} is not a range like 20000-29999"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    Ok((a, b))
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the cause chain; no backtrace for operators.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => run_serve(*args),
        Command::ApiKey(ApiKeyCommand::Create(args)) => create_api_key(args),
        Command::Bench(BenchCommand::Provision(args)) => bench_provision(args),
        Command::Bench(BenchCommand::RegisterStorm(args)) => bench_storm(args),
        Command::Bench(BenchCommand::Calls(args)) => bench_calls(args),
        Command::Bench(BenchCommand::NoisyNeighbour(args)) => bench_noisy(args),
        Command::Bench(BenchCommand::Rtp(args)) => bench_rtp(args),
        Command::Import(args) => import(args),
        Command::Api(args) => api_only(args),
        Command::Media(args) => run_media(args),
        Command::Core(args) => run_core(args),
        Command::Edge(args) => run_edge(args),
        Command::Tenant(c) => resource(c.into()),
        Command::Range(c) => resource(c.into()),
        Command::Extension(c) => resource(c.into()),
        Command::Did(c) => resource(c.into()),
        Command::Ban(c) => {
            let call = Call::from(c);
            if call.reach.api.is_none() {
                anyhow::bail!(
                    "bans live in the running edge: give its API with --api HOST:PORT and an operator --key"
                );
            }
            resource(call)
        }
        Command::Node(c) => {
            let call = Call::from(c);
            if call.reach.api.is_none() {
                anyhow::bail!(
                    "nodes live in the cluster's Redis: give an API that has it (switchyard api --redis-url) with --api HOST:PORT and an operator --key"
                );
            }
            resource(call)
        }
    }
}

/// One API call a resource command makes, and how to print its answer.
struct Call {
    method: &'static str,
    path: String,
    body: Option<serde_json::Value>,
    columns: &'static [&'static str],
    reach: Reach,
}

const TENANT_COLUMNS: &[&str] = &[
    "id",
    "domain",
    "name",
    "state",
    "max_extensions",
    "config_version",
];
const RANGE_COLUMNS: &[&str] = &["id", "first_number", "last_number"];
const EXTENSION_COLUMNS: &[&str] = &["id", "number", "username", "display_name", "voicemail"];
const NUMBER_COLUMNS: &[&str] = &["number", "state"];

impl From<TenantCommand> for Call {
    fn from(c: TenantCommand) -> Call {
        let call = |method, path: String, body, reach| Call {
            method,
            path,
            body,
            columns: TENANT_COLUMNS,
            reach,
        };
        match c {
            TenantCommand::Create {
                name,
                domain,
                max_extensions,
                reach,
            } => {
                let mut body = serde_json::json!({"name": name, "domain": domain});
                if let Some(m) = max_extensions {
                    body["max_extensions"] = m.into();
                }
                call("POST", "/v1/tenants".into(), Some(body), reach)
            }
            TenantCommand::List { reach } => {
                call("GET", "/v1/tenants?limit=1000".into(), None, reach)
            }
            TenantCommand::Show { id, reach } => {
                call("GET", format!("/v1/tenants/{id}"), None, reach)
            }
            TenantCommand::Delete { id, reach } => {
                call("DELETE", format!("/v1/tenants/{id}"), None, reach)
            }
        }
    }
}

impl From<RangeCommand> for Call {
    fn from(c: RangeCommand) -> Call {
        match c {
            RangeCommand::Create {
                tenant,
                first,
                last,
                reach,
            } => Call {
                method: "POST",
                path: format!("/v1/tenants/{tenant}/extension-ranges"),
                body: Some(serde_json::json!({"first_number": first, "last_number": last})),
                columns: RANGE_COLUMNS,
                reach,
            },
            RangeCommand::List { tenant, reach } => Call {
                method: "GET",
                path: format!("/v1/tenants/{tenant}/extension-ranges?limit=1000"),
                body: None,
                columns: RANGE_COLUMNS,
                reach,
            },
        }
    }
}

impl From<ExtensionCommand> for Call {
    fn from(c: ExtensionCommand) -> Call {
        match c {
            ExtensionCommand::Create {
                tenant,
                range,
                number,
                password,
                display_name,
                reach,
            } => Call {
                method: "POST",
                path: format!("/v1/tenants/{tenant}/extensions"),
                body: Some(
                    serde_json::json!({"range_id": range, "number": number, "password": password, "display_name": display_name}),
                ),
                columns: EXTENSION_COLUMNS,
                reach,
            },
            ExtensionCommand::List { tenant, reach } => Call {
                method: "GET",
                path: format!("/v1/tenants/{tenant}/extensions"),
                body: None,
                columns: EXTENSION_COLUMNS,
                reach,
            },
            ExtensionCommand::Delete { tenant, id, reach } => Call {
                method: "DELETE",
                path: format!("/v1/tenants/{tenant}/extensions/{id}"),
                body: None,
                columns: EXTENSION_COLUMNS,
                reach,
            },
        }
    }
}

impl From<DidCommand> for Call {
    fn from(c: DidCommand) -> Call {
        let call = |method, path: String, body, reach| Call {
            method,
            path,
            body,
            columns: NUMBER_COLUMNS,
            reach,
        };
        match c {
            DidCommand::Add { numbers, reach } => call(
                "POST",
                "/v1/numbers".into(),
                Some(serde_json::json!({"numbers": numbers})),
                reach,
            ),
            DidCommand::Assign { tenant, reach } => {
                call("POST", format!("/v1/tenants/{tenant}/numbers"), None, reach)
            }
            DidCommand::List { tenant, reach } => call(
                "GET",
                format!("/v1/tenants/{tenant}/numbers?limit=1000"),
                None,
                reach,
            ),
            DidCommand::Release {
                tenant,
                number,
                reach,
            } => call(
                "DELETE",
                format!(
                    "/v1/tenants/{tenant}/numbers/{}",
                    number.replace('+', "%2B")
                ),
                None,
                reach,
            ),
        }
    }
}

fn resource(call: Call) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let reach = &call.reach;
        let api = reach.api.zip(reach.key.clone());
        let mut session = switchyard::cli::ApiSession::open(
            api,
            reach.config.as_deref(),
            reach.data_dir.as_deref(),
        )
        .await?;
        let result = session
            .call(call.method, &call.path, call.body.clone())
            .await;
        session.close().await?;
        let value = result?;
        switchyard::cli::print(&value, call.columns, reach.json);
        anyhow::Ok(())
    })
}

fn api_only(args: ApiArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        config.node.data_dir = d;
    }
    if let Some(a) = args.api_listen {
        config.api.listen = a;
    }
    if let Some(u) = args.store_url {
        config.store.url = Some(u);
    }
    if let Some(u) = args.redis_url {
        config.state.redis_url = Some(u);
    }
    if let Some(p) = args.state_prefix {
        config.state.prefix = p;
    }
    std::fs::create_dir_all(&config.node.data_dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let store = switchyard_store::Store::connect(&config.store_url()).await?;
        store.migrate().await?;
        let (stop_tx, stop) = watch::channel(false);
        switchyard_store::spawn_dispatcher(
            store.clone(),
            std::time::Duration::from_millis(200),
            stop.clone(),
        );
        let listener = tokio::net::TcpListener::bind(config.api.listen).await?;
        let mut state = switchyard_api::AppState::with_rate(
            store.clone(),
            config.api.requests_per_second_per_key,
        );
        if let Some(cluster) = switchyard::roles::cluster_api(&config).await? {
            state = state.with_cluster(cluster);
        }
        println!("listening API http://{}", listener.local_addr()?);
        println!("ready");
        let server = tokio::spawn(switchyard_api::serve(listener, state, stop));
        wait_for_signal().await;
        let _ = stop_tx.send(true);
        let _ = server.await;
        store.close().await;
        anyhow::Ok(())
    })
}

fn import(args: ImportArgs) -> anyhow::Result<()> {
    let file = switchyard::import::read(&args.file)?;
    let progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let api = args.api.zip(args.key);
        let session = switchyard::cli::ApiSession::open(
            api,
            args.config.as_deref(),
            args.data_dir.as_deref(),
        )
        .await?;
        let result = switchyard::import::run(&file, session.addr(), &session.key, progress).await;
        session.close().await?;
        let summary = result?;
        println!(
            "import done: {} created, {} already in place",
            summary.created, summary.existing
        );
        anyhow::Ok(())
    })
}

fn bench_provision(args: ProvisionArgs) -> anyhow::Result<()> {
    let options = switchyard::bench::provision::Options {
        tenants: args.tenants,
        extensions: args.extensions,
        dids: args.dids,
        clients: args.clients,
        duplicate_every: args.duplicate_every,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let dir = tempfile::tempdir()?;
        let url = args
            .store_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
        let store = switchyard_store::Store::connect(&url).await?;
        store.migrate().await?;
        let report = switchyard::bench::provision::run(store.clone(), &options).await?;
        store.close().await;
        println!("{report}");
        for e in report.errors.iter().take(20) {
            println!("error: {e}");
        }
        if report.errors.is_empty() {
            anyhow::Ok(())
        } else {
            anyhow::bail!("{} errors", report.errors.len())
        }
    })
}

fn bench_storm(args: StormArgs) -> anyhow::Result<()> {
    use switchyard::bench::storm;
    let population = storm::Population::new(args.phones, args.tenants);
    if let Some(path) = &args.kamailio_htable {
        std::fs::write(path, population.kamailio_htable())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        if let Some(url) = &args.provision_store {
            let store = switchyard_store::Store::connect(url).await?;
            store.migrate().await?;
            let created = storm::provision(&store, &population).await?;
            store.close().await;
            eprintln!("provisioned: {created} extensions created");
        }
        if args.no_storm {
            return anyhow::Ok(());
        }
        let options = storm::StormOptions {
            target: args.target,
            population,
            rate: args.rate,
            expires: args.expires,
            sockets: args.sockets,
            deadline: std::time::Duration::from_secs(args.deadline_secs),
            progress: !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        let report = storm::run(&options).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{report}");
        }
        if report.failed > 0 {
            anyhow::bail!("{} phones did not register", report.failed);
        }
        anyhow::Ok(())
    })
}

/// Provisions `population` in the store at `url`, then sets each listed tenant's caps.
async fn provision_for_calls(
    url: &str,
    population: &switchyard::bench::storm::Population,
    caps: &[(usize, i64, i64)],
) -> anyhow::Result<()> {
    use switchyard::bench::{calls, storm};
    let store = switchyard_store::Store::connect(url).await?;
    store.migrate().await?;
    let created = storm::provision(&store, population).await?;
    for &(t, max_calls, cps) in caps {
        calls::set_call_limits(&store, population, t, max_calls, cps).await?;
    }
    store.close().await;
    eprintln!("provisioned: {created} extensions created");
    Ok(())
}

fn bench_rtp(args: RtpArgs) -> anyhow::Result<()> {
    // One thread: the generator is pinned to a core of its own by the script.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let report = switchyard::bench::rtp::run(&switchyard::bench::rtp::RtpOptions {
            relay: match (args.direct, args.rtpengine) {
                (true, _) => switchyard::bench::rtp::Relay::Direct,
                (false, Some(ng)) => switchyard::bench::rtp::Relay::Rtpengine(ng),
                (false, None) => switchyard::bench::rtp::Relay::Switchyard(args.media),
            },
            secret: args.cluster_secret,
            calls: args.calls,
            duration: std::time::Duration::from_secs(args.seconds),
            tick: std::time::Duration::from_micros(args.tick_us),
            probe_cpus: args.probe_cpus,
        })
        .await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{report}");
        }
        anyhow::Ok(())
    })
}

fn bench_calls(args: CallsArgs) -> anyhow::Result<()> {
    use switchyard::bench::{calls, storm};
    let population = storm::Population::new(args.tenants * args.per_tenant, args.tenants);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        if let Some(url) = &args.provision_store {
            let caps: Vec<_> = (0..args.tenants)
                .map(|t| (t, args.max_calls, args.cps))
                .collect();
            provision_for_calls(url, &population, &caps).await?;
            // The server hears of the change through its change events.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let report = calls::run(&calls::CallsOptions {
            target: args.target,
            population,
            tenants: (0..args.tenants).collect(),
            calls: args.calls,
            rate: args.rate,
            hold: std::time::Duration::from_millis(args.hold_ms),
            endings: args.endings,
            sockets: args.sockets,
            register: true,
        })
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{report}");
        }
        if report.failed > 0 {
            anyhow::bail!("{} calls did not end as intended", report.failed);
        }
        anyhow::Ok(())
    })
}

fn bench_noisy(args: NoisyArgs) -> anyhow::Result<()> {
    use switchyard::bench::{calls, storm};
    let population = storm::Population::new(40, 2);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        if let Some(url) = &args.provision_store {
            let b_cps = (args.b_rate * 2.0).ceil() as i64;
            provision_for_calls(
                url,
                &population,
                &[(0, 100_000, i64::from(args.a_cps)), (1, 100_000, b_cps)],
            )
            .await?;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let report = calls::noisy_neighbour(&calls::NoisyOptions {
            target: args.target,
            population,
            a_cap: args.a_cps,
            flood_factor: args.flood_factor,
            b_rate: args.b_rate,
            duration: std::time::Duration::from_secs(args.duration_secs),
            hold: std::time::Duration::from_millis(args.hold_ms),
            sockets: args.sockets,
        })
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{report}");
        }
        anyhow::Ok(())
    })
}

fn create_api_key(args: ApiKeyCreate) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        config.node.data_dir = d;
    }
    std::fs::create_dir_all(&config.node.data_dir)?;
    let scope = args.tenant.unwrap_or_else(|| "operator".to_owned());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let store = switchyard_store::Store::connect(&config.store_url()).await?;
        store.migrate().await?;
        let key = switchyard_api::issue_key(&store, &scope, args.read_only)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{key}");
        store.close().await;
        anyhow::Ok(())
    })
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    args.listeners.apply(&mut config.sip);
    let sip = &mut config.sip;
    if args.tls_cert.is_some() {
        sip.tls_cert = args.tls_cert;
        sip.tls_key = args.tls_key;
    }
    if let Some(n) = args.connections_per_source {
        sip.connections_per_source = n;
    }
    if let Some(n) = args.message_timeout_secs {
        sip.message_timeout_secs = n;
    }
    if let Some(d) = args.data_dir {
        config.node.data_dir = d;
    }
    if let Some(a) = args.api_listen {
        config.api.listen = a;
    }
    if let Some(u) = args.store_url {
        config.store.url = Some(u);
    }
    if let Some(t) = args.rtp_timeout_secs {
        config.core.rtp_timeout_secs = t;
    }
    if let Some((min, max)) = args.media_ports {
        config.media.port_min = min;
        config.media.port_max = max;
    }
    if let Some(n) = args.core_shards {
        config.core.shards = n;
    }
    if let Some(nodes) = args.media_nodes {
        config.core.media_nodes = nodes;
    }
    if let Some(s) = args.cluster_secret {
        config.cluster.secret = Some(s);
    }
    config.validate()?;
    let demo = args.demo;
    run_until_signal(|stop| serve(config, ServeOptions { demo }, stop))
}

/// How long a clean shutdown may take before the process exits regardless.
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler only fails outside a runtime");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
