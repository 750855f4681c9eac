//! The roles as processes of their own: `switchyard media` today (the edge and the core
//! still run inside `serve`; `docs/status.md` says what remains).

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
use crate::serve::media_node;

/// `switchyard media`: a media node that cores drive over the network. Prints
/// `listening media-control ADDR` (and `listening metrics http://ADDR`), then `ready`.
pub async fn run_media(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    config.validate()?;
    let secret = config.cluster_secret().context(
        "switchyard media needs cluster.secret (SWITCHYARD_CLUSTER_SECRET): it obeys only signed requests",
    )?;
    let node = media_node(&config);
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
        let bound = serve_metrics(
            addr,
            node.clone(),
            config.media.pool.clone(),
            counters.clone(),
            stop.clone(),
        )
        .await?;
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

/// `/metrics` of a media node: sessions against capacity, per tenant, and what its
/// media-control server refused.
async fn serve_metrics(
    addr: SocketAddr,
    node: MediaNode,
    pool: String,
    counters: Arc<ControlCounters>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let render = move || media_metrics(&node, &pool, &counters);
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
