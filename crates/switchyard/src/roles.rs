//! The roles as processes of their own: `switchyard edge`, `switchyard core` and
//! `switchyard media` (`switchyard api` is in `main.rs`). Each prints `listening NAME
//! ADDR` lines, then `ready`, and stops cleanly on SIGTERM; `serve` wires the same pieces
//! in one process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};

use switchyard_core::media_client::{MediaCluster, MediaMember, SHARED_POOL};
use switchyard_state::cluster::{Member, Membership, NodeState, Role};

use switchyard_media::MediaNode;
use switchyard_media::control::{ControlCounters, serve_control};
use switchyard_media_control::wire::ControlKey;

use crate::config::Config;
use crate::serve::{
    MediaTier, Shared, core_gauges, create_data_dir, drain_cores, media_node, start_cores,
    start_edge, wait_for_flows,
};
use switchyard_edge::proxy::{CoreList, CoreNode, Cores};

/// `switchyard core`: call engines (one per `core.listen` address) that edges send calls
/// to, driving the media nodes of `core.media_nodes` (or one of their own).
pub async fn run_core(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    config.validate()?;
    config.require_cluster("core")?;
    if config.core.listen.is_empty() {
        anyhow::bail!("switchyard core needs core.listen (its SIP sockets towards the edges)");
    }
    create_data_dir(&config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared::open(&config, stop_rx.clone()).await?;
    let membership = membership(&config).await?;
    // Media nodes: the configured ones, and every one with a live record in the cluster.
    let media = MediaTier::start_remote(&config, stop_rx.clone()).await?;
    if let MediaTier::Remote(cluster) = &media {
        let secret = config.cluster_secret().context("cluster.secret")?;
        spawn_media_discovery(
            membership.clone(),
            cluster.clone(),
            ControlKey::new(secret),
            stop_rx.clone(),
        );
    }
    let (drain_tx, drain_rx) = watch::channel(false);
    let call_metrics = Arc::new(switchyard_core::metrics::CallMetrics::default());
    let cores = start_cores(
        &config,
        &shared,
        &media,
        &config.core.listen,
        call_metrics.clone(),
        &stop_rx,
        &drain_rx,
    )
    .await?;
    let mut heartbeats = Vec::new();
    for core in &cores {
        println!("listening core {}", core.addr);
        heartbeats.push(spawn_core_heartbeat(
            membership.clone(),
            core.addr,
            config.core.pool.clone(),
            core.handle.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(addr) = config.core.metrics {
        let gauges = core_gauges(&cores);
        let media = media.clone();
        let mut registry = prometheus_client::registry::Registry::default();
        call_metrics.register(&mut registry);
        let render = move || {
            let mut all = gauges();
            all.extend(media.gauges());
            let mut text = switchyard_api::render_gauges(all);
            text.push_str(&switchyard_edge::metrics::encode(&registry));
            text
        };
        let bound = serve_metrics(addr, render, stop_rx.clone()).await?;
        println!("listening metrics http://{bound}");
    }
    println!("ready");
    info!(cores = ?cores.iter().map(|c| c.addr).collect::<Vec<_>>(), "core ready");
    let _ = shutdown.changed().await;
    info!(
        active_calls = cores.iter().map(|c| c.handle.active_calls()).sum::<usize>(),
        "core stopping: ending its calls"
    );
    drain_cores(drain_tx, cores).await;
    let _ = stop_tx.send(true);
    for h in heartbeats {
        let _ = h.await;
    }
    shared.store.close().await;
    info!("stopped");
    Ok(())
}

/// `switchyard edge`: the public SIP listeners, the registrar and the proxy, sending
/// calls to the cores of `edge.cores`.
pub async fn run_edge(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    config.validate()?;
    config.require_cluster("edge")?;
    create_data_dir(&config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared::open(&config, stop_rx.clone()).await?;
    let cores = Cores::fixed(
        config
            .edge
            .cores
            .iter()
            .map(|addr| CoreNode::new(&format!("core@{addr}"), *addr))
            .collect(),
    );
    // The configured cores, and every core with a live record in the cluster.
    spawn_core_discovery(
        membership(&config).await?,
        config.edge.cores.clone(),
        cores.clone(),
        stop_rx.clone(),
    );
    let edge = start_edge(
        &config,
        &shared,
        cores,
        config.edge.internal,
        false,
        &stop_rx,
    )
    .await?;
    for (transport, addr) in edge.bound.all() {
        println!("listening {transport} {addr}");
    }
    println!("listening internal {}", edge.internal);
    if let Some(addr) = config.edge.metrics {
        let gauges = edge.gauges();
        let mut registry = prometheus_client::registry::Registry::default();
        edge.tenant_metrics.register(&mut registry);
        let render = move || {
            let mut text = switchyard_api::render_gauges(gauges());
            text.push_str(&switchyard_edge::metrics::encode(&registry));
            text
        };
        let bound = serve_metrics(addr, render, stop_rx.clone()).await?;
        println!("listening metrics http://{bound}");
    }
    println!("ready");
    info!(internal = %edge.internal, cores = ?config.edge.cores, "edge ready");
    let hub = edge.hub.clone();
    let task = edge.run(&config, stop_rx.clone());
    let _ = shutdown.changed().await;
    info!("edge stopping");
    // The cores end their calls through the edges: an edge stopping alone takes its
    // phones' in-dialog traffic with it, which is why cores drain first in a cluster.
    let _ = stop_tx.send(true);
    let _ = task.await;
    shared.store.close().await;
    wait_for_flows(&hub).await;
    info!("stopped");
    Ok(())
}

/// `switchyard media`: a media node that cores drive over the network. Prints
/// `listening media-control ADDR` (and `listening metrics http://ADDR`), then `ready`.
pub async fn run_media(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    config.validate()?;
    let secret = config.cluster_secret().context(
        "switchyard media needs cluster.secret (SWITCHYARD_CLUSTER_SECRET): it obeys only signed requests",
    )?;
    // Into its cgroup first, so that every thread it starts is confined.
    let confinement = match &config.media.cgroup {
        Some(name) => {
            let c = crate::cgroup::Confinement::enter(
                name,
                config.media.cpu_percent,
                config.media.memory_mb,
            )
            .with_context(|| format!("cannot confine the media node to cgroup {name}"))?;
            info!(
                cgroup = name,
                cpu_percent = c.cpu_percent,
                memory_mb = c.memory_mb,
                "media node confined"
            );
            Some(Arc::new(c))
        }
        None => None,
    };
    let node = media_node(&config, Some(config.media.pool.clone()))?;
    let pressure = Arc::new(std::sync::Mutex::new(None));
    let mut pressure_task = None;
    if let Some(c) = &confinement {
        // The pressure read every second: in /metrics, and over the threshold the node
        // says it is saturated (cores place no new call on it).
        let (c, node, pressure, threshold, mut stop) = (
            c.clone(),
            node.clone(),
            pressure.clone(),
            config.media.saturated_pressure,
            shutdown.clone(),
        );
        pressure_task = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let now = c.cpu_pressure();
                let saturated = now.is_some_and(|p| p.some_avg10 >= threshold);
                if saturated != node.saturated() {
                    warn!(pressure = ?now, saturated, "media node CPU pressure crossed its threshold");
                }
                node.set_saturated(saturated);
                *pressure.lock().unwrap_or_else(|e| e.into_inner()) = now;
            }
        }));
    }
    let socket = tokio::net::UdpSocket::bind(config.media.control)
        .await
        .with_context(|| format!("cannot bind media control on {}", config.media.control))?;
    let control_addr = socket.local_addr()?;
    let counters = Arc::new(ControlCounters::default());
    let (stop_tx, stop) = watch::channel(false);
    let server = tokio::spawn(serve_control(
        node.clone(),
        socket,
        ControlKey::new(secret),
        counters.clone(),
        stop.clone(),
    ));
    println!("listening media-control {control_addr}");
    if let Some(addr) = config.media.metrics {
        let (node, pool, counters, pressure) = (
            node.clone(),
            config.media.pool.clone(),
            counters.clone(),
            pressure.clone(),
        );
        let render = move || {
            let now = *pressure.lock().unwrap_or_else(|e| e.into_inner());
            media_metrics(&node, &pool, &counters, now)
        };
        let bound = serve_metrics(addr, render, stop.clone()).await?;
        println!("listening metrics http://{bound}");
    }
    let heartbeat = match config.state.redis_url {
        Some(_) => {
            let (node, pool) = (node.clone(), config.media.pool.clone());
            Some(spawn_heartbeat(
                membership(&config).await?,
                format!("media@{control_addr}"),
                move |drain| {
                    let load = node.load();
                    // Draining: cores place no new session here; those on it go on.
                    let state = match (drain, load.sessions) {
                        (false, _) => NodeState::Active,
                        (true, 0) => NodeState::Drained,
                        (true, _) => NodeState::Draining,
                    };
                    Member {
                        id: format!("media@{control_addr}"),
                        role: Role::Media,
                        addr: control_addr.to_string(),
                        pool: pool.clone(),
                        capacity: load.max_sessions,
                        load: load.sessions,
                        state,
                        seen_ms: unix_ms(),
                    }
                },
                stop.clone(),
            ))
        }
        None => None,
    };
    println!("ready");
    info!(control = %control_addr, pool = config.media.pool, capacity = node.capacity(), "media node ready");
    let _ = shutdown.changed().await;
    info!(sessions = node.session_count(), "media node stopping");
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let Some(h) = heartbeat {
        let _ = h.await;
    }
    if let Some(t) = pressure_task {
        let _ = t.await;
    }
    if let Some(c) = confinement.and_then(|c| Arc::try_unwrap(c).ok()) {
        c.leave();
    }
    Ok(())
}

/// Serves `GET /metrics` with what `render` says, until `stop`.
async fn serve_metrics(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + Sync + 'static,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let render = Arc::new(render);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = render();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await;
    });
    Ok(bound)
}

/// The relay-delay histogram of a media node and its kernel path, as `/metrics` text with
/// `labels`.
pub(crate) fn relay_delay_text(node: &switchyard_media::MediaNode, labels: &str) -> String {
    use std::fmt::Write;
    let delay = &node.relay_delay();
    let mut out = String::from(
        "# HELP switchyard_media_relay_delay_seconds How long relayed packets waited in the node, from the kernel's receive stamp to their send.\n# TYPE switchyard_media_relay_delay_seconds histogram\n",
    );
    // Each bucket's labels are `labels` and its bound; the sum's and count's, `labels`.
    let bucket = |le: &str| match labels {
        "" => format!("{{le=\"{le}\"}}"),
        _ => format!("{{{labels},le=\"{le}\"}}"),
    };
    let own = match labels {
        "" => String::new(),
        _ => format!("{{{labels}}}"),
    };
    let mut cumulative = 0;
    for (bound, n) in switchyard_media::DELAY_BOUNDS_US.iter().zip(&delay.buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "switchyard_media_relay_delay_seconds_bucket{} {cumulative}",
            bucket(&(*bound as f64 / 1e6).to_string())
        );
    }
    let _ = writeln!(
        out,
        "switchyard_media_relay_delay_seconds_bucket{} {}\nswitchyard_media_relay_delay_seconds_sum{own} {}\nswitchyard_media_relay_delay_seconds_count{own} {}",
        bucket("+Inf"),
        delay.count,
        delay.sum_us as f64 / 1e6,
        delay.count
    );
    let kernel = node.kernel_path();
    let _ = writeln!(
        out,
        "# HELP switchyard_media_kernel_forwarding 1 when latched RTP streams are forwarded in the kernel.\n# TYPE switchyard_media_kernel_forwarding gauge\nswitchyard_media_kernel_forwarding{own} {}\n# HELP switchyard_media_kernel_streams RTP streams the kernel forwards now (their packets are not in the relay-delay histogram).\n# TYPE switchyard_media_kernel_streams gauge\nswitchyard_media_kernel_streams{own} {}\n# HELP switchyard_media_kernel_forwarded_packets_total RTP packets the kernel forwarded (read every 500 ms).\n# TYPE switchyard_media_kernel_forwarded_packets_total counter\nswitchyard_media_kernel_forwarded_packets_total{own} {}",
        u8::from(kernel.is_some()),
        kernel.map_or(0, |k| k.entries()),
        kernel.map_or(0, |k| k.forwarded_packets())
    );
    out
}

/// `/metrics` of a media node: sessions against capacity, per tenant, and what its
/// media-control server refused.
fn media_metrics(
    node: &MediaNode,
    pool: &str,
    counters: &ControlCounters,
    pressure: Option<crate::cgroup::Pressure>,
) -> String {
    use std::fmt::Write;
    let load = node.load();
    let mut out = String::new();
    let pool_label = format!("pool=\"{pool}\"");
    for (name, help, value) in [
        (
            "switchyard_media_sessions",
            "Sessions (calls) on this node.",
            load.sessions,
        ),
        (
            "switchyard_media_capacity",
            "Sessions this node takes at most.",
            load.max_sessions,
        ),
        (
            "switchyard_media_free_port_pairs",
            "RTP/RTCP port pairs not in use.",
            load.free_port_pairs,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{pool_label}}} {value}"
        );
    }
    for (name, help, value) in [
        (
            "switchyard_media_control_requests_total",
            "Media-control requests run.",
            counters.requests.load(Ordering::Relaxed),
        ),
        (
            "switchyard_media_control_retransmissions_total",
            "Retransmitted requests answered from the reply cache.",
            counters.retransmissions.load(Ordering::Relaxed),
        ),
        (
            "switchyard_media_control_refused_total",
            "Datagrams refused: unsigned, wrongly signed, stale, another version.",
            counters.refused.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{pool_label}}} {value}"
        );
    }
    out.push_str(&relay_delay_text(node, &pool_label));
    let _ = writeln!(
        out,
        "# HELP switchyard_media_saturated 1 while the node's CPU pressure is over its threshold (no new sessions).\n# TYPE switchyard_media_saturated gauge\nswitchyard_media_saturated{{{pool_label}}} {}",
        u8::from(node.saturated())
    );
    if let Some(p) = pressure {
        let _ = writeln!(
            out,
            "# HELP switchyard_media_cpu_pressure_percent Share of time the node's calls waited for CPU (PSI some), over 10 and 60 s.\n# TYPE switchyard_media_cpu_pressure_percent gauge\nswitchyard_media_cpu_pressure_percent{{{pool_label},window=\"10s\"}} {}\nswitchyard_media_cpu_pressure_percent{{{pool_label},window=\"60s\"}} {}\n# HELP switchyard_media_cpu_pressure_seconds_total Time the node's calls waited for CPU.\n# TYPE switchyard_media_cpu_pressure_seconds_total counter\nswitchyard_media_cpu_pressure_seconds_total{{{pool_label}}} {}",
            p.some_avg10,
            p.some_avg60,
            p.some_total_us as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "# HELP switchyard_media_tenant_sessions Sessions on this node per tenant.\n# TYPE switchyard_media_tenant_sessions gauge"
    );
    let by_tenant = node.sessions_by_tenant();
    for (tenant, n) in &by_tenant {
        let _ = writeln!(
            out,
            "switchyard_media_tenant_sessions{{{pool_label},tenant=\"{tenant}\"}} {n}"
        );
    }
    // Every call of a node shares its cgroup, so the pressure a tenant's calls see here
    // is the node's: one series per tenant with calls on it (summed over its pool's
    // nodes, weighted by sessions, it is the tenant's).
    if let Some(p) = pressure {
        let _ = writeln!(
            out,
            "# HELP switchyard_media_tenant_cpu_pressure_percent The CPU pressure (PSI some) this tenant's calls see on this node, over 10 s.\n# TYPE switchyard_media_tenant_cpu_pressure_percent gauge"
        );
        for (tenant, _) in &by_tenant {
            let _ = writeln!(
                out,
                "switchyard_media_tenant_cpu_pressure_percent{{{pool_label},tenant=\"{tenant}\",window=\"10s\"}} {}",
                p.some_avg10
            );
        }
    }
    out
}

/// How often members write their record, and how long a record outlives its last write.
const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const RECORD_TTL_MS: u64 = 3_000;

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Opens the cluster's membership in Redis.
async fn membership(config: &Config) -> anyhow::Result<Arc<Membership>> {
    let url = config
        .state
        .redis_url
        .as_deref()
        .context("cluster membership needs state.redis_url")?;
    Ok(Arc::new(
        Membership::redis(url, &config.state.prefix)
            .await
            .with_context(|| format!("cannot reach Redis at {url}"))?,
    ))
}

/// Writes `record(drain requested)` every heartbeat until `stop`, then leaves the
/// cluster.
fn spawn_heartbeat(
    membership: Arc<Membership>,
    id: String,
    record: impl Fn(bool) -> Member + Send + 'static,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        let (mut failing, mut requested) = (false, false);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if let Ok(r) = membership.drain_requested(&id).await {
                requested = r;
            }
            let member = record(requested);
            match membership.heartbeat(&member, RECORD_TTL_MS).await {
                Ok(()) if failing => {
                    failing = false;
                    info!(id = member.id, "heartbeat written again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    warn!(id = member.id, error = %e, "heartbeat not written");
                }
                Err(_) => {}
            }
        }
        let member = record(requested);
        let _ = membership.leave(member.role, &member.id).await;
    })
}

/// The cluster's nodes for the API (`/v1/cluster/nodes`), from the membership in Redis.
#[derive(Debug)]
pub struct ClusterApi(pub Arc<Membership>);

impl ClusterApi {
    async fn nodes(&self) -> switchyard_state::Result<Vec<switchyard_api::NodeView>> {
        let mut out = Vec::new();
        for role in [Role::Core, Role::Media] {
            for m in self.0.members(role).await? {
                let drain_requested = self.0.drain_requested(&m.id).await?;
                out.push(switchyard_api::NodeView {
                    id: m.id,
                    role: role.as_str().into(),
                    addr: m.addr,
                    pool: m.pool,
                    capacity: m.capacity,
                    load: m.load,
                    state: match m.state {
                        NodeState::Active => "active",
                        NodeState::Draining => "draining",
                        NodeState::Drained => "drained",
                    }
                    .into(),
                    drain_requested,
                    seen_ms: m.seen_ms,
                });
            }
        }
        Ok(out)
    }
}

impl switchyard_api::ClusterNodes for ClusterApi {
    fn list(&self) -> switchyard_api::BoxFuture<'_, Result<Vec<switchyard_api::NodeView>, String>> {
        Box::pin(async move { self.nodes().await.map_err(|e| e.to_string()) })
    }

    fn set_drain(
        &self,
        id: String,
        drain: bool,
    ) -> switchyard_api::BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move {
            let nodes = self.nodes().await.map_err(|e| e.to_string())?;
            if !nodes.iter().any(|n| n.id == id) {
                return Ok(false);
            }
            self.0
                .set_drain(&id, drain)
                .await
                .map_err(|e| e.to_string())?;
            info!(id, drain, "an operator set a node's drain");
            Ok(true)
        })
    }
}

/// The API's view of the cluster, when this process has Redis.
pub async fn cluster_api(
    config: &Config,
) -> anyhow::Result<Option<Arc<dyn switchyard_api::ClusterNodes>>> {
    if config.state.redis_url.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(ClusterApi(membership(config).await?))))
}

/// How long a core asked to drain still takes new calls: long enough for every edge to
/// read its `draining` record (records are written and read every second), so phones
/// never see the `503` of a core that refuses.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A core's answer to an operator's drain request, step by step: `draining` at once,
/// refusing new calls after [`DRAIN_GRACE`], `drained` once refusing and empty.
#[derive(Debug, Default)]
pub struct Drain {
    since: Option<std::time::Instant>,
}

impl Drain {
    /// The state to report and whether new calls are taken.
    pub fn step(
        &mut self,
        requested: bool,
        active_calls: usize,
        now: std::time::Instant,
    ) -> (NodeState, bool) {
        if !requested {
            self.since = None;
            return (NodeState::Active, true);
        }
        let since = *self.since.get_or_insert(now);
        let refusing = now.duration_since(since) >= DRAIN_GRACE;
        let state = if refusing && active_calls == 0 {
            NodeState::Drained
        } else {
            NodeState::Draining
        };
        (state, !refusing)
    }
}

/// A core engine's heartbeat: its record, and the operator's drain request applied.
fn spawn_core_heartbeat(
    membership: Arc<Membership>,
    addr: SocketAddr,
    pool: String,
    handle: switchyard_core::CoreHandle,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let id = format!("core@{addr}");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        let (mut drain, mut requested, mut last_state) =
            (Drain::default(), false, NodeState::Active);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            match membership.drain_requested(&id).await {
                Ok(r) => requested = r,
                Err(e) => warn!(id, error = %e, "cannot read the drain request; keeping the last"),
            }
            let active = handle.active_calls();
            let (state, accepting) = drain.step(requested, active, std::time::Instant::now());
            handle.set_accepting(accepting);
            if state != last_state {
                info!(id, ?state, active_calls = active, "core state");
                last_state = state;
            }
            let member = Member {
                id: id.clone(),
                role: Role::Core,
                addr: addr.to_string(),
                pool: pool.clone(),
                capacity: 0,
                load: active as u64,
                state,
                seen_ms: unix_ms(),
            };
            if let Err(e) = membership.heartbeat(&member, RECORD_TTL_MS).await {
                warn!(id, error = %e, "heartbeat not written");
            }
        }
        let _ = membership.leave(Role::Core, &id).await;
    })
}

/// Reads the live members of `role` every heartbeat until `stop` and hands them to
/// `seen` (a failed read is logged and skipped: the last view stands).
fn spawn_member_watch<F, Fut>(
    membership: Arc<Membership>,
    role: Role,
    mut stop: watch::Receiver<bool>,
    mut seen: F,
) where
    F: FnMut(Vec<Member>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match membership.members(role).await {
                Ok(members) => seen(members).await,
                Err(e) => {
                    warn!(role = role.as_str(), error = %e, "cannot read the cluster's members; keeping the last view")
                }
            }
        }
    });
}

/// Keeps an edge's cores as the membership says: the configured ones plus every core
/// with a live record, draining ones marked.
fn spawn_core_discovery(
    membership: Arc<Membership>,
    configured: Vec<SocketAddr>,
    cores: Cores,
    stop: watch::Receiver<bool>,
) {
    spawn_member_watch(membership, Role::Core, stop, move |members| {
        let mut list = CoreList::default();
        for addr in &configured {
            list.nodes
                .push(CoreNode::new(&format!("core@{addr}"), *addr));
        }
        for m in members {
            let Ok(addr) = m.addr.parse::<SocketAddr>() else {
                continue;
            };
            if !list.contains(addr) {
                // Records of cores from before pools had none: the shared pool.
                let pool = if m.pool.is_empty() {
                    SHARED_POOL
                } else {
                    &m.pool
                };
                list.nodes.push(CoreNode::in_pool(&m.id, addr, pool));
            }
            if m.state != NodeState::Active {
                list.draining.insert(addr);
            }
        }
        list.nodes.sort_by_key(|c| c.addr);
        if cores.replace(list.clone()) {
            info!(
                cores = ?list.nodes.iter().map(|c| c.addr).collect::<Vec<_>>(),
                draining = ?list.draining,
                "the edge's cores changed"
            );
        }
        std::future::ready(())
    });
}

/// Adds the media nodes with live records to a core's cluster, and marks draining ones.
fn spawn_media_discovery(
    membership: Arc<Membership>,
    cluster: MediaCluster,
    key: ControlKey,
    stop: watch::Receiver<bool>,
) {
    spawn_member_watch(membership, Role::Media, stop, move |members| {
        let (cluster, key) = (cluster.clone(), key.clone());
        async move {
            for m in members {
                let Ok(addr) = m.addr.parse::<SocketAddr>() else {
                    continue;
                };
                if !cluster.knows(addr) {
                    match crate::serve::remote_media(addr, key.clone()).await {
                        Ok(remote) => {
                            cluster.add(MediaMember {
                                name: m.id.clone(),
                                pool: m.pool.clone(),
                                addr,
                                control: Arc::new(remote),
                            });
                        }
                        Err(e) => warn!(%addr, error = %e, "cannot reach a media node"),
                    }
                }
                cluster.set_draining(addr, m.state != NodeState::Active);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_drained_core_takes_calls_through_the_grace_then_refuses_then_reports_empty() {
        let t0 = Instant::now();
        let mut d = Drain::default();
        assert_eq!(d.step(false, 5, t0), (NodeState::Active, true));
        // Asked: draining at once, still taking calls while edges learn of it.
        assert_eq!(d.step(true, 5, t0), (NodeState::Draining, true));
        assert_eq!(
            d.step(true, 0, t0 + Duration::from_secs(2)),
            (NodeState::Draining, true)
        );
        // Past the grace: refusing; drained only once empty.
        assert_eq!(
            d.step(true, 2, t0 + DRAIN_GRACE),
            (NodeState::Draining, false)
        );
        assert_eq!(
            d.step(true, 0, t0 + DRAIN_GRACE),
            (NodeState::Drained, false)
        );
        // Lifted: active again, and a later drain waits its own grace.
        assert_eq!(
            d.step(false, 0, t0 + Duration::from_secs(10)),
            (NodeState::Active, true)
        );
        assert_eq!(
            d.step(true, 0, t0 + Duration::from_secs(11)),
            (NodeState::Draining, true)
        );
    }
}
