//! `switchyard serve`: binds every listener, then answers until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use switchyard_core::media_client::{MediaCluster, MediaMember, RemoteMedia, Retry};
use switchyard_core::{CoreSettings, spawn_core};
use switchyard_edge::auth::{Authenticator, FailurePolicy};
use switchyard_edge::bans::{BanReason, Bans, Prefix, SuspicionPolicy};
use switchyard_edge::carriers::Carriers;
use switchyard_edge::directory::Directory;
use switchyard_edge::health::{CoreHealth, probe_cores};
use switchyard_edge::limits::{LimitSettings, SourceLimits};
use switchyard_edge::metrics::TenantMetrics;
use switchyard_edge::proxy::{CoreNode, Cores, Proxy};
use switchyard_edge::registrar::Registrar;
use switchyard_edge::responder::Responder;
use switchyard_edge::token::TokenKey;
use switchyard_edge::{EdgeDeps, EdgeSettings};
use switchyard_media::{MediaConfig, MediaNode};
use switchyard_media_control::MediaControl;
use switchyard_media_control::wire::ControlKey;
use switchyard_sip::digest::{Algorithm, Nonces};
use switchyard_sip::seal::SealKey;
use switchyard_sip::transaction::TimerConfig;
use switchyard_sip_net::{
    Hub, Incoming, LimitsConfig, ListenConfig, TuEvent, spawn_driver, spawn_listeners, tls,
};
use switchyard_state::Locations;
use switchyard_state::calls::LiveCalls;

use crate::config::Config;

/// Options of `serve` that are not process configuration.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Generate a self-signed TLS certificate when none is configured.
    pub demo: bool,
}

/// Runs until `shutdown` fires. Prints one `listening TRANSPORT ADDR` line per listener
/// and then `ready` on stdout, for scripts and tests.
pub async fn serve(
    config: Config,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    config.validate()?;
    create_data_dir(&config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared::open(&config, stop_rx.clone()).await?;
    // Media: one node in this process, or the media nodes named in `core.media_nodes`
    // over the network.
    let media = MediaTier::start(&config, stop_rx.clone()).await?;

    // Cores: each its own SIP socket, transaction layer and call engine; the edge
    // reaches them over SIP and gives each tenant's calls to one of them.
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    // The cores drain on their own signal, before the rest stops: their BYEs still need
    // the drivers, the listeners and the edge.
    let (drain_tx, drain_rx) = watch::channel(false);
    let call_metrics = Arc::new(switchyard_core::metrics::CallMetrics::default());
    let cores = start_cores(
        &config,
        &shared,
        &media,
        &vec![loopback; config.core.shards],
        call_metrics.clone(),
        &stop_rx,
        &drain_rx,
    )
    .await?;
    let api_listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot bind the API on {}", config.api.listen))?;
    let api_addr = api_listener.local_addr()?;
    let core_nodes = Cores::fixed(
        cores
            .iter()
            .map(|c| CoreNode::new(&c.name, c.addr))
            .collect(),
    );
    let edge = start_edge(
        &config,
        &shared,
        core_nodes,
        loopback,
        options.demo,
        &stop_rx,
    )
    .await?;
    let tenant_metrics = edge.tenant_metrics.clone();
    let registry = {
        let mut r = prometheus_client::registry::Registry::default();
        tenant_metrics.register(&mut r);
        call_metrics.register(&mut r);
        Arc::new(r)
    };
    let gauges = {
        let (media, edge_gauges) = (media.clone(), edge.gauges());
        let core_gauges = core_gauges(&cores);
        let runtime = tokio::runtime::Handle::current();
        switchyard_api::Metrics(Arc::new(move || {
            let mut all = core_gauges();
            all.extend(media.gauges());
            all.push((
                "switchyard_runtime_tasks_alive".into(),
                runtime.metrics().num_alive_tasks() as f64,
            ));
            all.extend(edge_gauges());
            all
        }))
    };
    let media_text = media.clone();
    let mut api_state = switchyard_api::AppState::with_rate(
        shared.store.clone(),
        config.api.requests_per_second_per_key,
    );
    if let Some(cluster) = crate::roles::cluster_api(&config).await? {
        api_state = api_state.with_cluster(cluster);
    }
    let api_state = api_state
        .with_metrics(gauges)
        .with_bans(Arc::new(EdgeBans(edge.bans.clone())))
        .with_metrics_text(switchyard_api::MetricsText(Arc::new(move || {
            let mut text = switchyard_edge::metrics::encode(&registry);
            text.push_str(&media_text.relay_delay_text());
            text
        })));
    let api_task = tokio::spawn(switchyard_api::serve(
        api_listener,
        api_state,
        stop_rx.clone(),
    ));
    for (transport, addr) in edge.bound.all() {
        println!("listening {transport} {addr}");
    }
    println!("listening API http://{api_addr}");
    if options.demo {
        let key = switchyard_api::issue_key(&shared.store, "operator", false)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the demo API key: {e}"))?;
        println!("demo operator API key: {key}");
        let creds =
            crate::demo::ensure_demo(&shared.store, &config.node.data_dir, &edge.visible_udp)
                .await?;
        for line in
            crate::demo::describe(&creds, &config.node.data_dir.join("demo-credentials.json"))
        {
            println!("{line}");
        }
    }
    println!("ready");
    info!(cores = ?cores.iter().map(|c| c.addr).collect::<Vec<_>>(), edge_internal = %edge.internal, "ready");
    let edge_hub = edge.hub.clone();
    let edge_task = edge.run(&config, stop_rx.clone());
    let _ = shutdown.changed().await;
    let active_calls: usize = cores.iter().map(|c| c.handle.active_calls()).sum();
    info!(active_calls, "shutting down");
    shared.log_batch_stats();
    // First the calls: BYEs out and answered, every CDR written (bounded: the core gives
    // up on unanswered BYEs after 5 s, a CDR retries for about 6 s).
    drain_cores(drain_tx, cores).await;
    let _ = stop_tx.send(true);
    let _ = edge_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    shared.store.close().await;
    wait_for_flows(&edge_hub).await;
    info!("stopped");
    Ok(())
}

pub(crate) fn create_data_dir(config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.node.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            config.node.data_dir.display()
        )
    })
}

/// Gives connection tasks a moment to flush queued answers and close.
pub(crate) async fn wait_for_flows(hub: &Hub) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while hub.flow_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the roles of a process share: the store with its change events, and the
/// runtime state (registrations, live calls).
#[derive(Clone)]
pub(crate) struct Shared {
    pub store: switchyard_store::Store,
    pub changes: tokio::sync::broadcast::Sender<switchyard_store::ChangeEvent>,
    pub locations: Arc<Locations>,
    pub live_calls: Arc<LiveCalls>,
    /// Seals what edges tell cores (`X-Sy-Seal`): the cluster secret, or a random one
    /// for a `serve` without one (its edge and cores are one process).
    pub seal: SealKey,
    /// Answered calls' records for takeover, with Redis.
    pub dialogs: Option<Arc<switchyard_state::dialogs::DialogStore>>,
    /// Cores asking each other for calls: in this process, and through Redis.
    pub handoffs: Arc<switchyard_core::handoff::Handoffs>,
    /// Round-robin groups' counters: in this process, or in Redis for the cluster.
    pub turns: Arc<switchyard_state::turns::Turns>,
}

impl Shared {
    pub async fn open(config: &Config, stop: watch::Receiver<bool>) -> anyhow::Result<Shared> {
        let store = switchyard_store::Store::connect(&config.store_url())
            .await
            .with_context(|| format!("cannot open the store at {}", config.store_url()))?;
        store.migrate().await.context("cannot migrate the store")?;
        // Change events: every committed change reaches in-process subscribers (the core's
        // configuration cache, the edge's directory), in order per tenant; on PostgreSQL
        // every process of the cluster hears them.
        let changes =
            switchyard_store::spawn_dispatcher(store.clone(), Duration::from_millis(100), stop);
        let locations = Arc::new(match &config.state.redis_url {
            Some(url) => Locations::redis(url, &config.state.prefix)
                .await
                .with_context(|| format!("cannot reach Redis at {url}"))?,
            None => Locations::memory(),
        });
        let live_calls = Arc::new(match &config.state.redis_url {
            Some(url) => LiveCalls::redis(url, &config.state.prefix)
                .await
                .with_context(|| format!("cannot reach Redis at {url}"))?,
            None => LiveCalls::memory(),
        });
        let dialogs = match &config.state.redis_url {
            Some(url) if config.core.takeover => Some(Arc::new(
                switchyard_state::dialogs::DialogStore::redis(url, &config.state.prefix)
                    .await
                    .with_context(|| format!("cannot reach Redis at {url}"))?,
            )),
            _ => None,
        };
        let mailboxes = match &config.state.redis_url {
            Some(url) => Some(Arc::new(
                switchyard_state::handoffs::Mailboxes::redis(url, &config.state.prefix)
                    .await
                    .with_context(|| format!("cannot reach Redis at {url}"))?,
            )),
            None => None,
        };
        let turns = Arc::new(match &config.state.redis_url {
            Some(url) => switchyard_state::turns::Turns::redis(url, &config.state.prefix)
                .await
                .with_context(|| format!("cannot reach Redis at {url}"))?,
            None => switchyard_state::turns::Turns::memory(),
        });
        let seal = match config.cluster_secret() {
            Some(secret) => SealKey::new(secret),
            None => SealKey::new(&rand::random::<[u8; 32]>()),
        };
        Ok(Shared {
            store,
            changes,
            locations,
            live_calls,
            seal,
            dialogs,
            handoffs: switchyard_core::handoff::Handoffs::new(mailboxes),
            turns,
        })
    }

    pub fn log_batch_stats(&self) {
        if let Some(writes) = self.locations.batch_stats() {
            info!(
                registrations = writes.writes(),
                round_trips = writes.batches(),
                "binding writes to Redis"
            );
        }
    }
}

/// One call engine with its socket.
pub(crate) struct CoreShard {
    pub name: String,
    pub addr: SocketAddr,
    pub handle: switchyard_core::CoreHandle,
    pub task: tokio::task::JoinHandle<()>,
}

/// An internal SIP socket (edge to core, core to edge): UDP only.
fn internal_listen(config: &Config, addr: SocketAddr) -> ListenConfig {
    ListenConfig {
        udp: vec![addr],
        tcp: Vec::new(),
        tls: Vec::new(),
        ws: Vec::new(),
        wss: Vec::new(),
        tls_config: None,
        limits: limits(config),
        udp_buffer: config.sip.udp_buffer_bytes,
    }
}

fn limits(config: &Config) -> LimitsConfig {
    let sip = &config.sip;
    LimitsConfig {
        per_source: sip.connections_per_source,
        total: sip.max_connections,
        idle_timeout: Duration::from_secs(sip.idle_timeout_secs),
        message_timeout: Duration::from_secs(sip.message_timeout_secs),
        max_message: sip.max_message_bytes,
    }
}

/// Starts one call engine per address, each its own socket, driver and shell.
pub(crate) async fn start_cores(
    config: &Config,
    shared: &Shared,
    media: &MediaTier,
    addrs: &[SocketAddr],
    call_metrics: Arc<switchyard_core::metrics::CallMetrics>,
    stop_rx: &watch::Receiver<bool>,
    drain_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<CoreShard>> {
    let mut cores = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let core_hub = Hub::new();
        let (core_in_tx, core_in_rx) = mpsc::channel::<Incoming>(8192);
        let (core_tu_tx, core_tu_rx) = mpsc::channel::<TuEvent>(8192);
        let core_bound = spawn_listeners(
            internal_listen(config, *addr),
            core_hub.clone(),
            core_in_tx,
            stop_rx.clone(),
        )
        .await
        .with_context(|| format!("cannot bind the core's SIP socket on {addr}"))?;
        let core_addr = core_bound.udp[0];
        let core_driver = spawn_driver(
            core_hub.clone(),
            TimerConfig::default(),
            core_in_rx,
            core_tu_tx,
            stop_rx.clone(),
        );
        let (handle, task) = spawn_core(
            CoreSettings {
                local: core_addr,
                rtp_timeout: (config.core.rtp_timeout_secs > 0)
                    .then(|| Duration::from_secs(config.core.rtp_timeout_secs)),
                metrics: call_metrics.clone(),
                channels: shared.live_calls.clone(),
                seal: shared.seal.clone(),
                dialogs: shared.dialogs.clone(),
                placement: media.placement(),
                handoffs: Some(shared.handoffs.clone()),
                turns: shared.turns.clone(),
            },
            shared.store.clone(),
            shared.locations.clone(),
            media.control(),
            core_driver,
            core_hub,
            core_tu_rx,
            shared.changes.subscribe(),
            drain_rx.clone(),
        );
        cores.push(CoreShard {
            name: format!("core-{}", i + 1),
            addr: core_addr,
            handle,
            task,
        });
    }
    Ok(cores)
}

/// The cores' series for `/metrics`.
pub(crate) fn core_gauges(
    cores: &[CoreShard],
) -> impl Fn() -> Vec<(String, f64)> + Send + Sync + 'static {
    let shards: Vec<_> = cores
        .iter()
        .map(|c| (c.name.clone(), c.handle.clone()))
        .collect();
    move || {
        let mut out = vec![
            (
                "switchyard_calls_active".into(),
                shards.iter().map(|(_, h)| h.active_calls()).sum::<usize>() as f64,
            ),
            (
                "switchyard_core_cdrs_pending".into(),
                shards.iter().map(|(_, h)| h.cdrs_pending()).sum::<usize>() as f64,
            ),
            (
                "switchyard_core_dialog_writes_total".into(),
                shards.iter().map(|(_, h)| h.dialog_writes()).sum::<u64>() as f64,
            ),
            (
                "switchyard_core_calls_taken_over_total".into(),
                shards.iter().map(|(_, h)| h.taken_over()).sum::<u64>() as f64,
            ),
            (
                "switchyard_core_calls_handed_over_total".into(),
                shards.iter().map(|(_, h)| h.handed_over()).sum::<u64>() as f64,
            ),
            (
                "switchyard_core_calls_claimed_total".into(),
                shards.iter().map(|(_, h)| h.claimed()).sum::<u64>() as f64,
            ),
        ];
        out.extend(shards.iter().map(|(name, h)| {
            (
                format!("switchyard_core_calls_active{{core=\"{name}\"}}"),
                h.active_calls() as f64,
            )
        }));
        out
    }
}

/// Ends every call of the cores (BYEs out and answered, CDRs written), at most 15 s.
pub(crate) async fn drain_cores(drain_tx: watch::Sender<bool>, cores: Vec<CoreShard>) {
    let _ = drain_tx.send(true);
    let drained = join_every(cores.into_iter().map(|c| c.task));
    if tokio::time::timeout(Duration::from_secs(15), drained)
        .await
        .is_err()
    {
        warn!("the cores did not finish draining in 15 s");
    }
}

/// A started edge, not yet taking messages (`run`).
pub(crate) struct Edge {
    pub hub: Hub,
    pub bound: switchyard_sip_net::BoundListeners,
    pub internal: SocketAddr,
    pub visible_udp: String,
    pub bans: Arc<Bans>,
    pub counters: Arc<switchyard_edge::EdgeCounters>,
    pub tenant_metrics: Arc<TenantMetrics>,
    pub core_health: Arc<CoreHealth>,
    pub cores: Cores,
    deps: EdgeDeps,
    rx: mpsc::Receiver<Incoming>,
}

/// The edge pings each core every PING_EVERY. A core whose host answers "port
/// unreachable" to a ping is out at once: a dead process is known within
/// one ping. One silent for SILENT_FOR (a dead host, a cut link) is out then: long
/// enough that a core slowed by a storm is not taken for dead.
const PING_EVERY: Duration = Duration::from_millis(500);
const SILENT_FOR: Duration = Duration::from_secs(6);

/// Binds the edge's public listeners and its internal socket (on `internal_addr`),
/// warms its directory and carriers, and starts pinging `cores`.
pub(crate) async fn start_edge(
    config: &Config,
    shared: &Shared,
    cores: Cores,
    internal_addr: SocketAddr,
    demo: bool,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Edge> {
    let sip = &config.sip;
    let tls_config = match (&sip.tls_cert, &sip.tls_key) {
        (Some(cert), Some(key)) => Some(tls::from_pem_files(cert, key)?),
        _ if demo => Some(demo_certificate(&config.node.data_dir)?),
        _ => None,
    };
    let (tls_addrs, wss_addrs) = if tls_config.is_some() {
        (sip.tls.clone(), sip.wss.clone())
    } else {
        if !sip.tls.is_empty() || !sip.wss.is_empty() {
            warn!(
                "no TLS certificate configured (sip.tls_cert/sip.tls_key, or --demo): TLS and WSS listeners are off"
            );
        }
        (Vec::new(), Vec::new())
    };
    let listen = ListenConfig {
        udp: sip.udp.clone(),
        tcp: sip.tcp.clone(),
        tls: tls_addrs,
        ws: sip.ws.clone(),
        wss: wss_addrs,
        tls_config,
        limits: limits(config),
        udp_buffer: sip.udp_buffer_bytes,
    };
    let secret = match &sip.nonce_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => rand::random::<[u8; 32]>().to_vec(),
    };
    let responder = Responder::new(&secret, sip.nonce_lifetime_secs);
    let core_health = Arc::new(CoreHealth::new(SILENT_FOR));
    let bans = Arc::new(
        Bans::new(
            config.edge.auth_failure_window_secs,
            config.edge.max_ban_secs,
            config
                .edge
                .allow
                .iter()
                .filter_map(|a| Prefix::parse(a).ok())
                .collect(),
        )
        .with_policy(SuspicionPolicy {
            unknown_names: config.edge.scan_unknown_names.max(1),
            malformed: config.edge.malformed_flood.max(1),
            window_secs: 60,
        }),
    );
    let counters = Arc::new(switchyard_edge::EdgeCounters::default());
    // Per-tenant series (prometheus-client), appended to /metrics.
    let tenant_metrics = Arc::new(TenantMetrics::default());

    // Public listeners plus an internal socket towards the cores.
    let hub = Hub::new();
    let (tx, rx) = mpsc::channel::<Incoming>(8192);
    let internal_bound = spawn_listeners(
        internal_listen(config, internal_addr),
        hub.clone(),
        tx.clone(),
        stop_rx.clone(),
    )
    .await
    .with_context(|| format!("cannot bind the edge's internal socket on {internal_addr}"))?;
    let internal = internal_bound.udp[0];
    let bound = spawn_listeners(listen, hub.clone(), tx, stop_rx.clone()).await?;
    let auth = Arc::new(
        Authenticator::new(
            Nonces::new(&secret, sip.nonce_lifetime_secs),
            FailurePolicy {
                max_failures: config.edge.max_auth_failures,
                window_secs: config.edge.auth_failure_window_secs,
            },
            bans.clone(),
        )
        .with_algorithms(
            config
                .edge
                .digest_algorithms
                .iter()
                .filter_map(|a| Algorithm::from_token(Some(a)))
                .collect(),
        )
        .with_metrics(tenant_metrics.clone()),
    );
    let tokens = TokenKey::new(&secret);
    // Tenants and credentials in memory before the first message; change events keep
    // them true from then on.
    let directory = Directory::new(shared.store.clone());
    let warmed = directory
        .warm()
        .await
        .context("cannot read tenants for the edge")?;
    info!(tenants = warmed, "edge directory warmed");
    tokio::spawn(follow_changes(
        directory.clone(),
        shared.changes.subscribe(),
        stop_rx.clone(),
    ));
    // The cores the edge routes to are the ones it pings.
    tokio::spawn(probe_cores(
        cores.clone(),
        core_health.clone(),
        internal.ip(),
        PING_EVERY,
        stop_rx.clone(),
    ));
    // Carriers and the pool's numbers in memory, refreshed off the hot path.
    let carriers = Carriers::new();
    carriers
        .refresh(&shared.store)
        .await
        .context("cannot read carriers for the edge")?;
    carriers.spawn_refresher(
        shared.store.clone(),
        shared.changes.subscribe(),
        stop_rx.clone(),
    );
    let proxy = Proxy {
        carriers,
        directory: directory.clone(),
        auth: auth.clone(),
        tokens: tokens.clone(),
        internal,
        cores: cores.clone(),
        advertise: config.edge.advertise,
        health: Some(core_health.clone()),
        public_udp: bound.udp.clone(),
        seal: shared.seal.clone(),
    };
    let visible_udp = bound
        .udp
        .first()
        .or(bound.tcp.first())
        .map(|a| proxy.visible_addr(*a).to_string())
        .unwrap_or_default();
    let deps = EdgeDeps {
        registrar: Registrar {
            directory: directory.clone(),
            locations: shared.locations.clone(),
            auth: auth.clone(),
            tokens,
            internal,
        },
        proxy,
        responder,
        hub: hub.clone(),
        live_calls: shared.live_calls.clone(),
        limits: SourceLimits::new(LimitSettings {
            per_address: config.edge.source_rate_per_sec,
            per_network: config.edge.network_rate_per_sec,
            v4_network_bits: config.edge.network_bits_v4,
            v6_network_bits: config.edge.network_bits_v6,
        }),
        counters: counters.clone(),
        // Cores write answered calls to Redis when `core.takeover` is on and there is a
        // Redis (every role of a cluster reads the same configuration).
        takeover: config.core.takeover
            && matches!(
                *shared.live_calls,
                switchyard_state::calls::LiveCalls::Redis(_)
            ),
    };
    Ok(Edge {
        hub,
        bound,
        internal,
        visible_udp,
        bans,
        counters,
        tenant_metrics,
        core_health,
        cores,
        deps,
        rx,
    })
}

impl Edge {
    /// The edge's series for `/metrics`.
    pub fn gauges(&self) -> impl Fn() -> Vec<(String, f64)> + Send + Sync + 'static {
        let (health, cores) = (self.core_health.clone(), self.cores.clone());
        let (edge, bans) = (self.counters.clone(), self.bans.clone());
        move || {
            let now = std::time::Instant::now();
            let mut out = vec![(
                "switchyard_core_nodes_healthy".into(),
                cores
                    .snapshot()
                    .nodes
                    .iter()
                    .filter(|c| health.is_healthy(c.addr, now))
                    .count() as f64,
            )];
            out.extend(edge.snapshot());
            out.extend(BanReason::ALL.iter().zip(&bans.issued_by).map(|(r, n)| {
                (
                    format!(
                        "switchyard_edge_bans_issued_total{{reason=\"{}\"}}",
                        r.as_str()
                    ),
                    n.load(std::sync::atomic::Ordering::Relaxed) as f64,
                )
            }));
            out.push((
                "switchyard_edge_bans_active".into(),
                bans.list(unix_now()).len() as f64,
            ));
            out
        }
    }

    /// Starts taking messages.
    pub fn run(self, config: &Config, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(switchyard_edge::run(
            EdgeSettings {
                shed_after: Duration::from_millis(config.edge.shed_after_ms),
                retry_after_secs: (
                    config.edge.retry_after_min_secs,
                    config.edge.retry_after_max_secs,
                ),
                ..EdgeSettings::default()
            },
            self.deps,
            self.rx,
            stop,
        ))
    }
}

/// The media tier as a core sees it.
#[derive(Debug, Clone)]
pub enum MediaTier {
    /// The media node of this process (`serve` on its own).
    Local(MediaNode),
    /// Media nodes running apart, over the network.
    Remote(MediaCluster),
}

impl MediaTier {
    pub async fn start(config: &Config, stop: watch::Receiver<bool>) -> anyhow::Result<MediaTier> {
        if config.core.media_nodes.is_empty() {
            return Ok(MediaTier::Local(media_node(config, None)?));
        }
        Self::start_remote(config, stop).await
    }

    /// The media nodes of `core.media_nodes` over the network (more may join later).
    pub async fn start_remote(
        config: &Config,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<MediaTier> {
        let key = ControlKey::new(
            config
                .cluster_secret()
                .context("core.media_nodes needs cluster.secret")?,
        );
        let mut members = Vec::new();
        for (i, node) in config.core.media_nodes.iter().enumerate() {
            let local = if node.addr.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
            };
            let remote = RemoteMedia::connect(node.addr, local, key.clone(), Retry::default())
                .await
                .with_context(|| {
                    format!("cannot open a socket towards media node {}", node.addr)
                })?;
            members.push(MediaMember {
                name: format!("media-{}", i + 1),
                pool: node.pool.clone(),
                control: Arc::new(remote),
                addr: node.addr,
            });
        }
        let cluster = MediaCluster::new(members);
        cluster.spawn_health_checks(MEDIA_PING_EVERY, stop);
        Ok(MediaTier::Remote(cluster))
    }

    /// Where sessions are, for takeover (media nodes apart only).
    pub fn placement(&self) -> Option<Arc<dyn switchyard_core::media_client::SessionPlacement>> {
        match self {
            MediaTier::Local(_) => None,
            MediaTier::Remote(cluster) => Some(Arc::new(cluster.clone())),
        }
    }

    pub fn control(&self) -> Arc<dyn MediaControl> {
        match self {
            MediaTier::Local(node) => Arc::new(node.clone()),
            MediaTier::Remote(cluster) => Arc::new(cluster.clone()),
        }
    }

    /// The in-process media node's relay-delay histogram, as `/metrics` text (nodes
    /// apart serve their own).
    pub fn relay_delay_text(&self) -> String {
        match self {
            // It serves every pool: no pool label, as its other series.
            MediaTier::Local(node) => crate::roles::relay_delay_text(node, ""),
            MediaTier::Remote(_) => String::new(),
        }
    }

    /// What `/metrics` shows of the media tier.
    pub fn gauges(&self) -> Vec<(String, f64)> {
        match self {
            MediaTier::Local(node) => vec![
                (
                    "switchyard_media_sessions".into(),
                    node.session_count() as f64,
                ),
                (
                    "switchyard_media_free_port_pairs".into(),
                    node.free_pairs() as f64,
                ),
            ],
            MediaTier::Remote(cluster) => {
                let mut out = vec![(
                    "switchyard_media_sessions".into(),
                    cluster.session_count() as f64,
                )];
                for view in cluster.members() {
                    let held = view.placed;
                    let labels = format!(
                        "{{node=\"{}\",pool=\"{}\",addr=\"{}\"}}",
                        view.name, view.pool, view.addr
                    );
                    out.push((
                        format!("switchyard_media_node_up{labels}"),
                        f64::from(u8::from(view.up)),
                    ));
                    out.push((
                        format!("switchyard_media_node_sessions_placed{labels}"),
                        held as f64,
                    ));
                    if let Some(load) = view.load {
                        out.push((
                            format!("switchyard_media_node_sessions{labels}"),
                            load.sessions as f64,
                        ));
                        out.push((
                            format!("switchyard_media_node_capacity{labels}"),
                            load.max_sessions as f64,
                        ));
                    }
                }
                out
            }
        }
    }
}

/// A media-control client for the node at `addr`.
pub(crate) async fn remote_media(
    addr: SocketAddr,
    key: ControlKey,
) -> std::io::Result<RemoteMedia> {
    let local = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    RemoteMedia::connect(addr, local, key, Retry::default()).await
}

/// How often a core pings each media node (two missed pings take it out of its pool).
const MEDIA_PING_EVERY: Duration = Duration::from_secs(1);

/// The media node this process runs (`serve`, `switchyard media`), sized by the config
/// and the open-files limit; `pool`: the pool it serves (None: any). An error only when
/// `media.kernel_forwarding` is "on" and the kernel path cannot be attached.
pub fn media_node(config: &Config, pool: Option<String>) -> anyhow::Result<MediaNode> {
    let pairs = usize::from(config.media.port_max.saturating_sub(config.media.port_min) / 2);
    let keep_bound = config.media.keep_bound.unwrap_or_else(|| {
        let room = raise_open_files_limit().saturating_sub(FILES_FOR_EVERYTHING_ELSE);
        usize::try_from(room / 2).unwrap_or(usize::MAX).min(pairs)
    });
    let node = MediaNode::start(MediaConfig {
        bind: config.media.bind,
        advertise: config.media.advertise.unwrap_or(config.media.bind),
        port_min: config.media.port_min,
        port_max: config.media.port_max,
        keep_bound,
        max_sessions: config.media.max_sessions,
        pool,
        relay_threads: config.media.relay_threads,
        // Checked by `Config::validate` before anything starts.
        destinations: config.media.destinations().unwrap_or_default(),
        kernel_forwarding: config.media.kernel_forwarding()?,
    })
    .context("media.kernel_forwarding is \"on\"")?;
    Ok(node)
}

/// Keeps the edge's directory true: a change event newer than what memory holds reloads
/// that tenant, off the message path; missed events (a lagging receiver) reload all.
async fn follow_changes(
    directory: Directory,
    mut changes: tokio::sync::broadcast::Receiver<switchyard_store::ChangeEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let event = tokio::select! {
            e = changes.recv() => e,
            _ = stop.changed() => return,
        };
        match event {
            Ok(e) => {
                if directory.apply(&e) {
                    let d = directory.clone();
                    tokio::spawn(async move {
                        if let Err(err) = d.reload(&e.tenant_id).await {
                            warn!(tenant = %e.tenant_id, error = %err, "edge directory not reloaded");
                        }
                    });
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "edge directory missed change events: reloading every tenant"
                );
                directory.clear();
                if let Err(err) = directory.warm().await {
                    warn!(error = %err, "edge directory not reloaded");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn demo_certificate(data_dir: &Path) -> anyhow::Result<std::sync::Arc<tls::ServerConfig>> {
    let (config, pem) = tls::self_signed(&[
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    let path = data_dir.join("demo-cert.pem");
    std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    info!(path = %path.display(), "generated a self-signed TLS certificate for the demo");
    Ok(config)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The edge's bans as the API lists and lifts them.
#[derive(Debug)]
struct EdgeBans(Arc<Bans>);

impl switchyard_api::BanList for EdgeBans {
    fn list(&self) -> Vec<switchyard_api::BanView> {
        self.0
            .list(unix_now())
            .into_iter()
            .map(|b| switchyard_api::BanView {
                source: b.source.to_string(),
                reason: b.reason.as_str().to_owned(),
                since: b.since,
                until: b.until,
                strikes: b.strikes,
            })
            .collect()
    }

    fn lift(&self, source: std::net::IpAddr) -> bool {
        let lifted = self.0.lift(source, unix_now());
        if lifted {
            info!(%source, "ban lifted by an operator");
        }
        lifted
    }
}

/// Descriptors left for listeners, connections, the database and logs when the media
/// node sizes the port pairs it keeps bound.
const FILES_FOR_EVERYTHING_ELSE: u64 = 4096;

/// Raises this process's soft open-files limit to its hard limit (a server holds a
/// socket per connection and two per media leg); returns the limit now in force.
fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else {
        return u64::MAX; // unlimited
    };
    match limit.maximum {
        Some(hard) if hard > soft => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    info!(from = soft, to = hard, "open files limit raised");
                    hard
                }
                Err(e) => {
                    warn!(soft, hard, error = %e, "cannot raise the open files limit");
                    soft
                }
            }
        }
        None => {
            let raised = Rlimit {
                current: None,
                maximum: None,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                u64::MAX
            } else {
                soft
            }
        }
        Some(_) => soft,
    }
}

/// Waits for every task (the cores' drains run side by side).
async fn join_every(tasks: impl Iterator<Item = tokio::task::JoinHandle<()>>) {
    let mut set = tokio::task::JoinSet::new();
    for task in tasks {
        set.spawn(async move {
            let _ = task.await;
        });
    }
    while set.join_next().await.is_some() {}
}
