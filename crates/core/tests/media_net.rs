//! Media control over the network: a core's `RemoteMedia` and `MediaCluster` against real
//! media nodes serving `serve_control` on loopback sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchyard_core::media_client::{MediaCluster, MediaMember, RemoteMedia, Retry};
use switchyard_media::control::{ControlCounters, serve_control};
use switchyard_media::{MediaConfig, MediaNode};
use switchyard_media_control::wire::ControlKey;
use switchyard_media_control::{Leg, MediaControl, MediaError, Reply, Request};
use tokio::net::UdpSocket;
use tokio::sync::watch;

const SECRET: &[u8] = b"test cluster secret";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn offer(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

struct Node {
    media: MediaNode,
    addr: SocketAddr,
    counters: Arc<ControlCounters>,
    stop: watch::Sender<bool>,
}

async fn start_node(port_min: u16, max_sessions: usize) -> Node {
    let media = MediaNode::new(MediaConfig {
        port_min,
        port_max: port_min + 99,
        max_sessions,
        ..MediaConfig::default()
    });
    let socket = UdpSocket::bind(loopback()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let counters = Arc::new(ControlCounters::default());
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(serve_control(
        media.clone(),
        socket,
        ControlKey::new(SECRET),
        counters.clone(),
        stopped,
    ));
    Node {
        media,
        addr,
        counters,
        stop,
    }
}

async fn remote(node: SocketAddr, secret: &[u8]) -> RemoteMedia {
    RemoteMedia::connect(node, loopback(), ControlKey::new(secret), Retry::default())
        .await
        .unwrap()
}

fn create(session: &str) -> Request {
    Request::Create {
        session: session.into(),
        tenant: "t1".into(),
        pool: None,
    }
}

#[tokio::test]
async fn a_call_is_anchored_on_a_media_node_in_another_socket() {
    let node = start_node(44000, 0).await;
    let media = remote(node.addr, SECRET).await;
    assert_eq!(media.call(create("c1")).await, Ok(Reply::Created));
    let Ok(Reply::Sdp { sdp }) = media
        .call(Request::Offer {
            session: "c1".into(),
            from: Leg::A,
            sdp: offer(5000),
        })
        .await
    else {
        panic!("no offer back");
    };
    assert!(
        sdp.contains("m=audio 44"),
        "anchored on the node's ports: {sdp}"
    );
    assert_eq!(node.media.session_count(), 1);
    // Errors travel typed.
    assert_eq!(media.call(create("c1")).await, Err(MediaError::Exists));
    assert!(matches!(
        media
            .call(Request::Destroy {
                session: "c1".into()
            })
            .await,
        Ok(Reply::Stats { .. })
    ));
    assert_eq!(node.media.session_count(), 0);
    let Ok(Reply::Load(load)) = media.call(Request::Ping).await else {
        panic!("no load");
    };
    assert_eq!(load.sessions, 0);
    assert_eq!(load.max_sessions, 25, "100 ports: 50 pairs, 25 sessions");
}

#[tokio::test]
async fn a_lost_request_is_sent_again_and_runs_once() {
    let node = start_node(44100, 0).await;
    // A forwarder that loses the first two datagrams each way.
    let lossy = UdpSocket::bind(loopback()).await.unwrap();
    let lossy_addr = lossy.local_addr().unwrap();
    let upstream = UdpSocket::bind(loopback()).await.unwrap();
    let node_addr = node.addr;
    tokio::spawn(async move {
        let (mut buf, mut back) = (vec![0u8; 20000], vec![0u8; 20000]);
        let mut client = None;
        let (mut up_seen, mut down_seen) = (0, 0);
        loop {
            tokio::select! {
                Ok((n, from)) = lossy.recv_from(&mut buf) => {
                    client = Some(from);
                    up_seen += 1;
                    if up_seen > 1 {
                        let _ = upstream.send_to(&buf[..n], node_addr).await;
                    }
                }
                Ok((n, _)) = upstream.recv_from(&mut back) => {
                    down_seen += 1;
                    if down_seen > 1 && let Some(c) = client {
                        let _ = lossy.send_to(&back[..n], c).await;
                    }
                }
            }
        }
    });
    let media = remote(lossy_addr, SECRET).await;
    // First send lost, second runs it but its answer is lost, the third gets the
    // cached answer: `created`, not `exists`, and one session.
    let started = Instant::now();
    assert_eq!(media.call(create("c1")).await, Ok(Reply::Created));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(node.media.session_count(), 1);
    assert_eq!(node.counters.requests.load(Ordering::Relaxed), 1);
    assert_eq!(node.counters.retransmissions.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_node_with_another_secret_is_never_obeyed() {
    let node = start_node(44200, 0).await;
    let media = remote(node.addr, b"the wrong secret").await;
    let started = Instant::now();
    let answer = media.call(create("c1")).await;
    assert!(
        matches!(answer, Err(MediaError::Unreachable(_))),
        "{answer:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(node.media.session_count(), 0);
    assert_eq!(
        node.counters.refused.load(Ordering::Relaxed),
        4,
        "each send refused"
    );
    // Raw garbage too.
    let s = UdpSocket::bind(loopback()).await.unwrap();
    s.send_to(b"SYMC/1 1 1 00\n{\"op\":\"ping\"}", node.addr)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(node.counters.refused.load(Ordering::Relaxed), 5);
}

async fn cluster_of(nodes: &[&Node]) -> MediaCluster {
    let mut members = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        members.push(MediaMember {
            name: format!("media-{}", i + 1),
            pool: "shared".into(),
            addr: n.addr,
            control: Arc::new(remote(n.addr, SECRET).await),
        });
    }
    MediaCluster::new(members)
}

#[tokio::test]
async fn sessions_spread_by_room_and_stay_on_their_node() {
    let (small, large) = (start_node(44300, 2).await, start_node(44400, 6).await);
    let cluster = cluster_of(&[&small, &large]).await;
    let (_stop, stopped) = watch::channel(false);
    cluster.spawn_health_checks(Duration::from_millis(100), stopped);
    tokio::time::sleep(Duration::from_millis(250)).await;
    for i in 0..8 {
        assert_eq!(
            cluster.call(create(&format!("c{i}"))).await,
            Ok(Reply::Created),
            "c{i}"
        );
    }
    // Room decides: both full now.
    assert_eq!(
        (small.media.session_count(), large.media.session_count()),
        (2, 6)
    );
    assert!(matches!(
        cluster.call(create("c8")).await,
        Err(MediaError::Exhausted(_))
    ));
    // Later requests reach the holder.
    for i in 0..8 {
        let answer = cluster
            .call(Request::Offer {
                session: format!("c{i}"),
                from: Leg::A,
                sdp: offer(6000),
            })
            .await;
        assert!(matches!(answer, Ok(Reply::Sdp { .. })), "c{i}: {answer:?}");
        let answer = cluster
            .call(Request::Destroy {
                session: format!("c{i}"),
            })
            .await;
        assert!(
            matches!(answer, Ok(Reply::Stats { .. })),
            "c{i}: {answer:?}"
        );
    }
    assert_eq!(
        (small.media.session_count(), large.media.session_count()),
        (0, 0)
    );
    assert_eq!(
        cluster
            .call(Request::Stats {
                session: "c1".into()
            })
            .await,
        Err(MediaError::NoSession)
    );
}

#[tokio::test]
async fn a_silent_node_leaves_the_pool_and_new_sessions_go_elsewhere() {
    let (first, second) = (start_node(44500, 0).await, start_node(44600, 0).await);
    let cluster = cluster_of(&[&first, &second]).await;
    let (_stop, stopped) = watch::channel(false);
    cluster.spawn_health_checks(Duration::from_millis(200), stopped);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The first node stops answering.
    first.stop.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A create that hits it moves on to the other node at once.
    for i in 0..4 {
        assert_eq!(
            cluster.call(create(&format!("c{i}"))).await,
            Ok(Reply::Created)
        );
    }
    assert_eq!(first.media.session_count(), 0);
    assert_eq!(second.media.session_count(), 4);
    let views = cluster.members();
    assert!(!views[0].up && views[1].up, "{views:?}");
}
