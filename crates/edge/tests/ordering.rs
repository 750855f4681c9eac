//! `edge::run` serves what is urgent first: with hundreds of new REGISTERs queued ahead
//! of it, an OPTIONS (a health check) is answered before any of them. Without the two
//! queues it would be answered last. And a challenge is answered statelessly (RFC 3261
//! §8.2.7): the 300 REGISTERs without credentials leave no transaction behind.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use switchyard_edge::auth::{Authenticator, FailurePolicy};
use switchyard_edge::bans::Bans;
use switchyard_edge::directory::Directory;
use switchyard_edge::limits::{LimitSettings, SourceLimits};
use switchyard_edge::proxy::Proxy;
use switchyard_edge::registrar::Registrar;
use switchyard_edge::responder::Responder;
use switchyard_edge::token::TokenKey;
use switchyard_edge::{EdgeDeps, EdgeSettings};
use switchyard_sip::digest::Nonces;
use switchyard_sip::inspect::{Capabilities, inspect_datagram};
use switchyard_sip_net::{Hub, Incoming, ListenConfig, Transport, spawn_listeners};
use switchyard_state::Locations;
use switchyard_state::calls::LiveCalls;
use switchyard_store::{NewTenant, Store};

const DOMAIN: &str = "order.example";

fn request(method: &str, client: SocketAddr, i: usize) -> String {
    format!(
        "{method} sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {client};branch=z9hG4bKo{i}\r\nMax-Forwards: 70\r\nTo: <sip:1000@{DOMAIN}>\r\nFrom: <sip:1000@{DOMAIN}>;tag=t{i}\r\nCall-ID: order-{i}\r\nCSeq: 1 {method}\r\nContact: <sip:1000@{client}>\r\nContent-Length: 0\r\n\r\n"
    )
}

#[tokio::test]
async fn an_options_queued_behind_a_burst_of_registers_is_answered_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
        .create_tenant(&NewTenant {
            name: "Order".into(),
            domain: DOMAIN.into(),
            ..NewTenant::default()
        })
        .await
        .unwrap();
    let directory = Directory::new(store);
    directory.load(DOMAIN, Instant::now()).await.unwrap();

    // A real UDP socket for the edge to answer from; the test feeds the edge itself.
    let hub = Hub::new();
    let (listener_tx, _listener_rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let bound = spawn_listeners(
        ListenConfig {
            udp: vec!["127.0.0.1:0".parse().unwrap()],
            tcp: Vec::new(),
            tls: Vec::new(),
            ws: Vec::new(),
            wss: Vec::new(),
            tls_config: None,
            limits: Default::default(),
            udp_buffer: 0,
        },
        hub.clone(),
        listener_tx,
        stop_rx.clone(),
    )
    .await
    .unwrap();
    let local = bound.udp[0];
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let client_addr = client.local_addr().unwrap();

    const BURST: usize = 300;
    let (input_tx, input_rx) = mpsc::channel(BURST + 1);
    let incoming = |text: String| Incoming {
        inbound: inspect_datagram(Bytes::from(text), &Capabilities::SWITCHYARD),
        transport: Transport::Udp,
        source: client_addr,
        local,
        flow: None,
        received: Instant::now(),
    };
    for i in 0..BURST {
        input_tx
            .send(incoming(request("REGISTER", client_addr, i)))
            .await
            .unwrap();
    }
    input_tx
        .send(incoming(request("OPTIONS", client_addr, BURST)))
        .await
        .unwrap();

    let bans = Arc::new(Bans::new(300, 3600, Vec::new()));
    let auth = Arc::new(Authenticator::new(
        Nonces::new(b"s", 300),
        FailurePolicy::default(),
        bans,
    ));
    let internal: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let counters: Arc<switchyard_edge::EdgeCounters> = Default::default();
    let deps = EdgeDeps {
        registrar: Registrar {
            directory: directory.clone(),
            locations: Arc::new(Locations::memory()),
            auth: auth.clone(),
            tokens: TokenKey::new(b"s"),
            internal,
        },
        proxy: Proxy {
            directory,
            auth,
            tokens: TokenKey::new(b"s"),
            internal,
            cores: Default::default(),
            advertise: None,
            health: None,
            carriers: Default::default(),
            public_udp: Vec::new(),
            seal: switchyard_sip::seal::SealKey::new(b"s"),
        },
        responder: Responder::new(b"s", 300),
        hub,
        counters: counters.clone(),
        takeover: false,
        live_calls: Arc::new(LiveCalls::memory()),
        limits: SourceLimits::new(LimitSettings {
            per_address: 100_000,
            per_network: 100_000,
            ..LimitSettings::default()
        }),
    };
    let edge = tokio::spawn(switchyard_edge::run(
        EdgeSettings::default(),
        deps,
        input_rx,
        stop_rx,
    ));

    let answers = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 65536];
        let mut firsts = Vec::new();
        while firsts.len() < BURST + 1 {
            let Ok((n, _)) = client.recv_from(&mut buf) else {
                break;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let cseq = text
                .lines()
                .find(|l| l.starts_with("CSeq:"))
                .unwrap_or_default()
                .to_owned();
            firsts.push((text.lines().next().unwrap_or_default().to_owned(), cseq));
        }
        firsts
    })
    .await
    .unwrap();
    // The edge publishes its transaction count each time round its loop.
    let mut transactions = u64::MAX;
    for _ in 0..100 {
        transactions = counters
            .transactions
            .load(std::sync::atomic::Ordering::Relaxed);
        if transactions <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let _ = edge.await;
    assert_eq!(answers.len(), BURST + 1, "every request answered");
    assert_eq!(
        transactions, 1,
        "only the OPTIONS keeps a transaction; the challenges keep none"
    );
    assert_eq!(
        answers[0],
        ("SIP/2.0 200 OK".to_owned(), "CSeq: 1 OPTIONS".to_owned()),
        "the OPTIONS first, ahead of {BURST} REGISTERs queued before it"
    );
    assert!(
        answers[1..].iter().all(|(status, cseq)| {
            status.starts_with("SIP/2.0 401") && cseq == "CSeq: 1 REGISTER"
        }),
        "{answers:?}"
    );
}
