//! The roles as processes of their own: `switchyard edge`, `switchyard core` and
//! `switchyard media` (`switchyard api` is in `main.rs`). Each prints `listening NAME
//! ADDR` lines, then `ready`, and stops cleanly on SIGTERM; `serve` wires the same pieces
//! in one process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::sync::watch;
use tracing::info;

use switchyard_media::MediaNode;
use switchyard_media::control::{ControlCounters, serve_control};
use switchyard_media_control::wire::ControlKey;

use crate::config::Config;
use crate::serve::{
    MediaTier, Shared, core_gauges, create_data_dir, drain_cores, media_node, start_cores,
    start_edge, wait_for_flows,
};
use switchyard_edge::proxy::{CoreNode, Cores};

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
    let media = MediaTier::start(&config, stop_rx.clone()).await?;
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
    for core in &cores {
        println!("listening core {}", core.addr);
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
    shared.store.close().await;
    info!("stopped");
    Ok(())
}

/// `switchyard edge`: the public SIP listeners, the registrar and the proxy, sending
/// calls to the cores of `edge.cores`.
pub async fn run_edge(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    config.validate()?;
    config.require_cluster("edge")?;
    if config.edge.cores.is_empty() {
        anyhow::bail!("switchyard edge needs edge.cores (the cores' core.listen addresses)");
    }
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
    let node = media_node(&config, Some(config.media.pool.clone()));
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
        let (node, pool, counters) = (node.clone(), config.media.pool.clone(), counters.clone());
        let render = move || media_metrics(&node, &pool, &counters);
        let bound = serve_metrics(addr, render, stop.clone()).await?;
        println!("listening metrics http://{bound}");
    }
    println!("ready");
    info!(control = %control_addr, pool = config.media.pool, capacity = node.capacity(), "media node ready");
    let _ = shutdown.changed().await;
    info!(sessions = node.session_count(), "media node stopping");
    let _ = stop_tx.send(true);
    let _ = server.await;
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

/// `/metrics` of a media node: sessions against capacity, per tenant, and what its
/// media-control server refused.
fn media_metrics(node: &MediaNode, pool: &str, counters: &ControlCounters) -> String {
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
    let _ = writeln!(
        out,
        "# HELP switchyard_media_tenant_sessions Sessions on this node per tenant.\n# TYPE switchyard_media_tenant_sessions gauge"
    );
    for (tenant, n) in node.sessions_by_tenant() {
        let _ = writeln!(
            out,
            "switchyard_media_tenant_sessions{{{pool_label},tenant=\"{tenant}\"}} {n}"
        );
    }
    out
}
