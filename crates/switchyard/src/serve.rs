//! `switchyard serve`: binds every listener, then answers until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use switchyard_sip::inspect::Inbound;
use switchyard_sip::transaction::{Event, TimerConfig};
use switchyard_sip_net::{
    DriverHandle, Hub, Incoming, LimitsConfig, ListenConfig, TuEvent, spawn_driver,
    spawn_listeners, tls,
};

use crate::config::Config;
use crate::responder::{Decision, Responder};

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
    std::fs::create_dir_all(&config.node.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            config.node.data_dir.display()
        )
    })?;
    let sip = &config.sip;
    let tls_config = match (&sip.tls_cert, &sip.tls_key) {
        (Some(cert), Some(key)) => Some(tls::from_pem_files(cert, key)?),
        _ if options.demo => Some(demo_certificate(&config.node.data_dir)?),
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
        limits: LimitsConfig {
            per_source: sip.connections_per_source,
            total: sip.max_connections,
            idle_timeout: Duration::from_secs(sip.idle_timeout_secs),
            message_timeout: Duration::from_secs(sip.message_timeout_secs),
            max_message: sip.max_message_bytes,
        },
    };
    let secret = match &sip.nonce_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => rand::random::<[u8; 32]>().to_vec(),
    };
    let responder = Responder::new(&secret, sip.nonce_lifetime_secs);
    let hub = Hub::new();
    let (tx, rx) = mpsc::channel::<Incoming>(8192);
    let (tu_tx, mut tu_rx) = mpsc::channel::<TuEvent>(8192);
    let (stop_tx, stop_rx) = watch::channel(false);
    let store = switchyard_store::Store::connect(&config.store_url())
        .await
        .with_context(|| format!("cannot open the store at {}", config.store_url()))?;
    store.migrate().await.context("cannot migrate the store")?;
    // Change events: every committed change reaches in-process subscribers, in order per
    // tenant (the call engine's config cache subscribes in the next issue).
    let changes = switchyard_store::spawn_dispatcher(
        store.clone(),
        Duration::from_millis(200),
        stop_rx.clone(),
    );
    let mut change_log = changes.subscribe();
    tokio::spawn(async move {
        while let Ok(e) = change_log.recv().await {
            tracing::debug!(tenant = %e.tenant_id, version = e.config_version, kind = %e.kind, "config changed");
        }
    });
    let api_listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot bind the API on {}", config.api.listen))?;
    let api_addr = api_listener.local_addr()?;
    let api_state =
        switchyard_api::AppState::with_rate(store.clone(), config.api.requests_per_second_per_key);
    let api_task = tokio::spawn(switchyard_api::serve(
        api_listener,
        api_state,
        stop_rx.clone(),
    ));
    let bound = spawn_listeners(listen, hub.clone(), tx, stop_rx.clone()).await?;
    let driver = spawn_driver(hub.clone(), TimerConfig::default(), rx, tu_tx, stop_rx);
    for (transport, addr) in bound.all() {
        println!("listening {transport} {addr}");
    }
    println!("listening API http://{api_addr}");
    if options.demo {
        let key = switchyard_api::issue_key(&store, "operator", false)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the demo API key: {e}"))?;
        println!("demo operator API key: {key}");
    }
    println!("ready");
    info!("ready");

    loop {
        tokio::select! {
            event = tu_rx.recv() => {
                let Some(event) = event else { break };
                match event {
                    TuEvent::Stateless(incoming) => handle_stateless(&responder, &hub, incoming).await,
                    TuEvent::Transaction(event) => handle_transaction(&responder, &driver, event).await,
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    store.close().await;
    // Give connection tasks a moment to flush queued answers and close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while hub.flow_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!("stopped");
    Ok(())
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The responder as transaction user: every request that opened a server transaction is
/// answered through it, so retransmissions are absorbed or re-answered by the transaction.
async fn handle_transaction(
    responder: &Responder,
    driver: &DriverHandle,
    event: Event<switchyard_sip_net::Peer>,
) {
    match event {
        Event::Request { tx, msg, peer } => {
            let method = msg.method().map(|m| m.to_string()).unwrap_or_default();
            let call_id = msg.call_id().unwrap_or_default().to_owned();
            match responder.decide(&Inbound::Request(msg), peer.source, unix_now()) {
                Decision::Answer {
                    status,
                    reason,
                    bytes,
                } => match driver.respond(tx, status, bytes).await {
                    Ok(()) => {
                        info!(source = %peer.source, transport = %peer.transport, method, call_id, status, reason, "answered")
                    }
                    Err(e) => warn!(source = %peer.source, status, error = %e, "answer not sent"),
                },
                Decision::Silent(why) => {
                    warn!(source = %peer.source, method, reason = why, "request left unanswered")
                }
            }
        }
        Event::Ack { peer, .. } => info!(source = %peer.source, "ACK absorbed"),
        Event::StrayResponse { msg, peer } => info!(
            source = %peer.source,
            status = msg.status().unwrap_or(0),
            "no answer: response with no matching client transaction"
        ),
        Event::Timeout { tx } => info!(?tx, "transaction timed out"),
        Event::TransportError { tx } => warn!(?tx, "transport error"),
        Event::Response { .. } | Event::Terminated { .. } => {}
    }
}

async fn handle_stateless(responder: &Responder, hub: &Hub, incoming: Incoming) {
    let source: SocketAddr = incoming.source;
    let (method, call_id) = match &incoming.inbound {
        Inbound::Request(m) => (
            m.method().map(|m| m.to_string()).unwrap_or_default(),
            m.call_id().unwrap_or_default().to_owned(),
        ),
        _ => (String::new(), String::new()),
    };
    match responder.decide(&incoming.inbound, source, unix_now()) {
        Decision::Answer {
            status,
            reason,
            bytes,
        } => {
            let via_text = match &incoming.inbound {
                Inbound::Request(m) => m.header(switchyard_sip::HeaderName::Via).map(str::to_owned),
                Inbound::Reject { rows, .. } => rows
                    .iter()
                    .find(|(n, _)| *n == switchyard_sip::HeaderName::Via)
                    .map(|(_, v)| v.clone()),
                _ => None,
            };
            let via = via_text
                .as_deref()
                .and_then(switchyard_sip::headers::Via::parse_lenient);
            match hub.respond(&incoming, via.as_ref(), bytes).await {
                Ok(target) => {
                    info!(%source, transport = %incoming.transport, method, call_id, status, reason, ?target, "answered")
                }
                Err(e) => warn!(%source, status, error = %e, "answer not sent"),
            }
        }
        Decision::Silent(why) => {
            info!(%source, transport = %incoming.transport, method, reason = why, "no answer")
        }
    }
}
