//! `switchyard serve`: binds every listener, then answers until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use switchyard_core::{CoreSettings, spawn_core};
use switchyard_edge::auth::credential_usernames;
use switchyard_edge::auth::{Authenticator, FailurePolicy};
use switchyard_edge::directory::{Cached, CachedUser, Directory, TenantEntry};
use switchyard_edge::health::{CoreHealth, PING_CALL_ID_PREFIX, ping};
use switchyard_edge::proxy::{CoreNode, Proxy, Verdict};
use switchyard_edge::registrar::{Ingress, Registrar};
use switchyard_edge::token::TokenKey;
use switchyard_media::{MediaConfig, MediaNode};
use switchyard_sip::HeaderName;
use switchyard_sip::Method;
use switchyard_sip::digest::{Algorithm, Nonces};
use switchyard_sip::inspect::Inbound;
use switchyard_sip::transaction::{Event, TimerConfig};
use switchyard_sip_net::{
    DriverHandle, Hub, Incoming, LimitsConfig, ListenConfig, Target, TuEvent, spawn_driver,
    spawn_driver_filtered, spawn_listeners, tls,
};
use switchyard_state::Locations;

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
        udp_buffer: sip.udp_buffer_bytes,
    };
    let secret = match &sip.nonce_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => rand::random::<[u8; 32]>().to_vec(),
    };
    let responder = Responder::new(&secret, sip.nonce_lifetime_secs);
    let (stop_tx, stop_rx) = watch::channel(false);
    let store = switchyard_store::Store::connect(&config.store_url())
        .await
        .with_context(|| format!("cannot open the store at {}", config.store_url()))?;
    store.migrate().await.context("cannot migrate the store")?;
    // Change events: every committed change reaches in-process subscribers (the core's
    // configuration cache), in order per tenant.
    let changes = switchyard_store::spawn_dispatcher(
        store.clone(),
        Duration::from_millis(100),
        stop_rx.clone(),
    );
    let locations = Arc::new(match &config.state.redis_url {
        Some(url) => Locations::redis(url, "sy")
            .await
            .with_context(|| format!("cannot reach Redis at {url}"))?,
        None => Locations::memory(),
    });
    // Media: one node in this process, reached through the media-control trait.
    let media = MediaNode::new(MediaConfig {
        bind: config.media.bind,
        advertise: config.media.advertise.unwrap_or(config.media.bind),
        port_min: config.media.port_min,
        port_max: config.media.port_max,
    });

    // Core: its own SIP socket and transaction layer; the edge reaches it over SIP.
    let core_hub = Hub::new();
    let (core_in_tx, core_in_rx) = mpsc::channel::<Incoming>(8192);
    let (core_tu_tx, core_tu_rx) = mpsc::channel::<TuEvent>(8192);
    let internal_listen = |addr: SocketAddr| ListenConfig {
        udp: vec![addr],
        tcp: Vec::new(),
        tls: Vec::new(),
        ws: Vec::new(),
        wss: Vec::new(),
        tls_config: None,
        limits: listen.limits.clone(),
        udp_buffer: listen.udp_buffer,
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let core_bound = spawn_listeners(
        internal_listen(loopback),
        core_hub.clone(),
        core_in_tx,
        stop_rx.clone(),
    )
    .await?;
    let core_addr = core_bound.udp[0];
    let core_driver = spawn_driver(
        core_hub.clone(),
        TimerConfig::default(),
        core_in_rx,
        core_tu_tx,
        stop_rx.clone(),
    );
    let core = spawn_core(
        CoreSettings {
            local: core_addr,
            rtp_timeout: (config.core.rtp_timeout_secs > 0)
                .then(|| Duration::from_secs(config.core.rtp_timeout_secs)),
        },
        store.clone(),
        locations.clone(),
        Arc::new(media.clone()),
        core_driver,
        core_hub,
        core_tu_rx,
        changes.subscribe(),
        stop_rx.clone(),
    );

    let api_listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot bind the API on {}", config.api.listen))?;
    let api_addr = api_listener.local_addr()?;
    // Cores answer the edge's OPTIONS pings every PING_EVERY; three missed make one
    // unhealthy.
    const PING_EVERY: Duration = Duration::from_secs(2);
    let core_health = Arc::new(CoreHealth::new(PING_EVERY * 3));
    let gauges = {
        let (core, media, health) = (core.clone(), media.clone(), core_health.clone());
        let runtime = tokio::runtime::Handle::current();
        switchyard_api::Metrics(Arc::new(move || {
            vec![
                ("switchyard_calls_active".into(), core.active_calls() as f64),
                (
                    "switchyard_media_sessions".into(),
                    media.session_count() as f64,
                ),
                (
                    "switchyard_media_free_port_pairs".into(),
                    media.free_pairs() as f64,
                ),
                (
                    "switchyard_runtime_tasks_alive".into(),
                    runtime.metrics().num_alive_tasks() as f64,
                ),
                (
                    "switchyard_core_nodes_healthy".into(),
                    f64::from(u8::from(
                        health.is_healthy(core_addr, std::time::Instant::now()),
                    )),
                ),
            ]
        }))
    };
    let api_state =
        switchyard_api::AppState::with_rate(store.clone(), config.api.requests_per_second_per_key)
            .with_metrics(gauges);
    let api_task = tokio::spawn(switchyard_api::serve(
        api_listener,
        api_state,
        stop_rx.clone(),
    ));

    // Edge: public listeners plus an internal socket towards the core.
    let hub = Hub::new();
    let (tx, rx) = mpsc::channel::<Incoming>(8192);
    let (tu_tx, mut tu_rx) = mpsc::channel::<TuEvent>(8192);
    let internal_bound = spawn_listeners(
        internal_listen(loopback),
        hub.clone(),
        tx.clone(),
        stop_rx.clone(),
    )
    .await?;
    let internal = internal_bound.udp[0];
    let bound = spawn_listeners(listen, hub.clone(), tx, stop_rx.clone()).await?;
    let driver = spawn_driver_filtered(
        hub.clone(),
        TimerConfig::default(),
        rx,
        tu_tx,
        stop_rx.clone(),
        |m| matches!(m.method(), Some(Method::Register | Method::Options)),
    );
    let auth = Arc::new(
        Authenticator::new(
            Nonces::new(&secret, sip.nonce_lifetime_secs),
            FailurePolicy {
                max_failures: config.edge.max_auth_failures,
                window_secs: config.edge.auth_failure_window_secs,
            },
        )
        .with_algorithms(
            config
                .edge
                .digest_algorithms
                .iter()
                .filter_map(|a| Algorithm::from_token(Some(a)))
                .collect(),
        ),
    );
    let tokens = TokenKey::new(&secret);
    // Tenants and credentials in memory before the first message; change events keep
    // them true from then on.
    let directory = Directory::new(store.clone());
    let warmed = directory
        .warm()
        .await
        .context("cannot read tenants for the edge")?;
    info!(tenants = warmed, "edge directory warmed");
    tokio::spawn(follow_changes(
        directory.clone(),
        changes.subscribe(),
        stop_rx.clone(),
    ));
    // The cores the edge routes to are the ones it pings.
    let core_nodes = vec![CoreNode::new("core-1", core_addr)];
    {
        let cores = core_nodes.iter().map(|c| c.addr).collect();
        let (hub, stop) = (hub.clone(), stop_rx.clone());
        tokio::spawn(ping_cores(hub, internal, cores, PING_EVERY, stop));
    }
    let edge = Arc::new(Edge {
        registrar: Registrar {
            directory: directory.clone(),
            locations: locations.clone(),
            auth: auth.clone(),
            tokens: tokens.clone(),
            internal,
        },
        proxy: Proxy {
            directory: directory.clone(),
            auth: auth.clone(),
            tokens,
            internal,
            cores: core_nodes,
            advertise: config.edge.advertise,
            health: Some(core_health.clone()),
        },
        responder,
        hub: hub.clone(),
        driver,
        directory,
        lookups: Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)),
    });
    for (transport, addr) in bound.all() {
        println!("listening {transport} {addr}");
    }
    println!("listening API http://{api_addr}");
    if options.demo {
        let key = switchyard_api::issue_key(&store, "operator", false)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the demo API key: {e}"))?;
        println!("demo operator API key: {key}");
        let proxy = bound
            .udp
            .first()
            .or(bound.tcp.first())
            .map(|a| edge.proxy.visible_addr(*a).to_string())
            .unwrap_or_default();
        let creds = crate::demo::ensure_demo(&store, &config.node.data_dir, &proxy).await?;
        for line in
            crate::demo::describe(&creds, &config.node.data_dir.join("demo-credentials.json"))
        {
            println!("{line}");
        }
    }
    println!("ready");
    info!(core = %core_addr, edge_internal = %internal, "ready");

    let mut purge = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            event = tu_rx.recv() => {
                let Some(event) = event else { break };
                Edge::handle(&edge, event).await;
            }
            _ = purge.tick() => auth.purge(unix_now()),
            _ = shutdown.changed() => break,
        }
    }
    info!(active_calls = core.active_calls(), "shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    // Let the core send its BYEs and write CDRs before the store closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.close().await;
    // Give connection tasks a moment to flush queued answers and close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while hub.flow_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!("stopped");
    Ok(())
}

/// Tenant lookups (directory misses) in flight at once; beyond, new requests that need
/// one are answered `503` at once rather than queued.
const MAX_LOOKUPS: usize = 64;

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

/// The edge of this process: registrar, proxy, and the stateless responder for the rest.
struct Edge {
    registrar: Registrar,
    proxy: Proxy,
    responder: Responder,
    hub: Hub,
    driver: DriverHandle,
    directory: Directory,
    lookups: Arc<tokio::sync::Semaphore>,
}

impl Edge {
    /// Handles `event` here when memory has what it needs; otherwise looks the tenant or
    /// the user up in a task of its own and handles it there, so a miss holds up no
    /// other message.
    async fn handle(edge: &Arc<Edge>, event: TuEvent) {
        let Some(lookup) = edge.lookup_needed(&event) else {
            return edge.handle_now(event).await;
        };
        let Ok(permit) = edge.lookups.clone().try_acquire_owned() else {
            return edge.busy(event).await;
        };
        let edge = edge.clone();
        tokio::spawn(async move {
            let now = std::time::Instant::now();
            let looked_up = match &lookup {
                Lookup::Domain(domain) => edge.directory.load(domain, now).await.map(|_| ()),
                Lookup::User(entry, user) => edge.directory.load_user(entry, user, now).await,
            };
            if let Err(e) = looked_up {
                warn!(?lookup, error = %e, "directory lookup failed");
            }
            drop(permit);
            // Handled with what memory has now: the tenant or user, or its absence.
            edge.handle_now(event).await;
        });
    }

    /// What to look up first, when `event` needs a tenant or user memory does not have.
    fn lookup_needed(&self, event: &TuEvent) -> Option<Lookup> {
        let (msg, domain, header): (&switchyard_sip::Message, String, HeaderName) = match event {
            TuEvent::Transaction(Event::Request { msg, .. })
                if msg.method() == Some(&Method::Register) =>
            {
                let to = msg.to_header().ok()?;
                let uri = to.uri().ok()?;
                let domain = uri.as_sip()?.host.to_ascii_lowercase();
                (msg, domain, HeaderName::Authorization)
            }
            TuEvent::Stateless(Incoming {
                inbound: Inbound::Request(msg),
                local,
                ..
            }) if *local != self.proxy.internal && needs_tenant(msg) => {
                let uri = msg.request_uri()?.ok()?;
                let domain = uri.as_sip()?.host.to_ascii_lowercase();
                (msg, domain, HeaderName::ProxyAuthorization)
            }
            _ => return None,
        };
        let now = std::time::Instant::now();
        let entry = match self.directory.cached(&domain, now) {
            Cached::Miss => return Some(Lookup::Domain(domain)),
            Cached::Unknown => return None,
            Cached::Tenant(entry) => entry,
        };
        credential_usernames(msg, header, &entry.tenant.domain)
            .into_iter()
            .find(|u| matches!(entry.cached_user(u, now), CachedUser::Miss))
            .map(|u| Lookup::User(entry, u))
    }

    /// Too many lookups in flight: `503`, so the phone comes back later.
    async fn busy(&self, event: TuEvent) {
        match event {
            TuEvent::Transaction(Event::Request { tx, msg, peer }) => {
                let b = busy_answer(&msg, peer.source);
                if let Err(e) = self.driver.respond(tx, 503, b).await {
                    warn!(source = %peer.source, error = %e, "answer not sent");
                }
            }
            TuEvent::Stateless(incoming) => {
                if let Inbound::Request(msg) = &incoming.inbound {
                    let b = busy_answer(msg, incoming.source);
                    let via = msg.top_via().ok();
                    let _ = self.hub.respond(&incoming, via.as_ref(), b).await;
                }
            }
            TuEvent::Transaction(_) => {}
        }
    }

    async fn handle_now(&self, event: TuEvent) {
        match event {
            TuEvent::Transaction(Event::Request { tx, msg, peer })
                if msg.method() == Some(&Method::Register) =>
            {
                let ingress = Ingress {
                    transport: peer.transport,
                    source: peer.source,
                    local: peer.local,
                    flow: match peer.target {
                        Target::Flow(f) => Some(f),
                        Target::Datagram { .. } => None,
                    },
                };
                let b = self.registrar.handle(&msg, &ingress, unix_now_ms()).await;
                let status = b.status();
                if let Err(e) = self.driver.respond(tx, status, b.build()).await {
                    warn!(source = %peer.source, status, error = %e, "answer not sent");
                }
            }
            TuEvent::Transaction(Event::StrayResponse { msg, peer })
                if msg
                    .call_id()
                    .is_ok_and(|c| c.starts_with(PING_CALL_ID_PREFIX)) =>
            {
                if let Some(h) = &self.proxy.health {
                    h.answered(peer.source, std::time::Instant::now());
                }
            }
            TuEvent::Transaction(Event::StrayResponse { msg, peer }) => {
                self.forward(self.proxy.response(&msg), peer.source).await
            }
            TuEvent::Transaction(event) => {
                handle_transaction(&self.responder, &self.driver, event).await
            }
            TuEvent::Stateless(incoming) => match &incoming.inbound {
                Inbound::Request(msg) => {
                    let ingress = Ingress {
                        transport: incoming.transport,
                        source: incoming.source,
                        local: incoming.local,
                        flow: incoming.flow,
                    };
                    match self.proxy.request(msg, &ingress, unix_now()).await {
                        Verdict::Answer { status, bytes } => {
                            let via = msg.top_via().ok();
                            match self.hub.respond(&incoming, via.as_ref(), bytes).await {
                                Ok(_) => {
                                    info!(source = %incoming.source, method = %msg.method().map(|m| m.to_string()).unwrap_or_default(), status, "answered by the edge")
                                }
                                Err(e) => {
                                    warn!(source = %incoming.source, status, error = %e, "answer not sent")
                                }
                            }
                        }
                        other => self.forward(other, incoming.source).await,
                    }
                }
                _ => handle_stateless(&self.responder, &self.hub, incoming).await,
            },
        }
    }

    async fn forward(&self, verdict: Verdict, source: SocketAddr) {
        match verdict {
            Verdict::Forward { target, bytes } => {
                if let Err(e) = self.hub.send(target, bytes).await {
                    info!(%source, ?target, error = %e, "not forwarded");
                }
            }
            Verdict::Drop(why) => debug!(%source, why, "dropped"),
            Verdict::Answer { .. } => {}
        }
    }
}

/// What the edge must read from the store before it can handle a message.
#[derive(Debug)]
enum Lookup {
    Domain(String),
    User(Arc<TenantEntry>, String),
}

/// Initial requests from phones other than ACK and CANCEL are authenticated against
/// their tenant; everything else is routed without one.
fn needs_tenant(msg: &switchyard_sip::Message) -> bool {
    !matches!(msg.method(), Some(Method::Ack | Method::Cancel))
        && msg.to_header().is_ok_and(|t| t.tag().is_none())
}

fn busy_answer(msg: &switchyard_sip::Message, source: SocketAddr) -> bytes::Bytes {
    let tag = format!("{:016x}", rand::random::<u64>());
    switchyard_sip::build::ResponseBuilder::for_request(msg, 503, "Busy looking up tenants", &tag)
        .stamp_top_via(&source.ip().to_string(), source.port())
        .header("Retry-After", (2 + rand::random::<u8>() % 4).to_string())
        .build()
}

/// Sends an OPTIONS ping to every core from the edge's internal socket, until shutdown.
async fn ping_cores(
    hub: Hub,
    internal: SocketAddr,
    cores: Vec<SocketAddr>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        for core in &cores {
            seq += 1;
            let target = Target::Datagram {
                local: internal,
                dest: *core,
            };
            if let Err(e) = hub.send(target, ping(internal, *core, seq).into()).await {
                debug!(%core, error = %e, "health ping not sent");
            }
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

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
