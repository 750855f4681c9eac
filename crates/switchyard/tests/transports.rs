//! The real binary over every transport: sipsak, raw UDP/TCP, TLS, WS and WSS clients,
//! stream keep-alives, framing errors, connection limits, oversized input and SIGTERM.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use switchyard_sip::{HeaderName, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::{Server, options};

const WAIT: Duration = Duration::from_secs(5);

fn parse(bytes: &[u8]) -> Message {
    Message::parse_datagram(Bytes::copy_from_slice(bytes)).expect("the answer parses")
}

fn assert_options_answer(m: &Message, call_id: &str) {
    assert_eq!(m.status(), Some(200), "{m:?}");
    assert_eq!(m.call_id().unwrap(), call_id);
    assert!(m.header(HeaderName::Allow).unwrap().contains("OPTIONS"));
    assert!(
        m.header(HeaderName::Accept)
            .unwrap()
            .contains("application/sdp")
    );
    assert!(m.header(HeaderName::Supported).is_some());
}

/// Reads messages framed by Content-Length from a stream, keeping what it read ahead.
#[derive(Default)]
struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    async fn next<S: tokio::io::AsyncRead + Unpin>(&mut self, s: &mut S) -> Message {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = parse(&self.buf[..end + 4]);
                let total = end + 4 + head.content_length().unwrap_or(0);
                if self.buf.len() >= total {
                    let msg = parse(&self.buf[..total]);
                    self.buf.drain(..total);
                    return msg;
                }
            }
            let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(n > 0, "connection closed before an answer");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn read_message<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Message {
    Reader::default().next(s).await
}

fn sipsak(args: &[&str]) -> std::process::Output {
    std::process::Command::new("sipsak")
        .args(args)
        .output()
        .expect("sipsak is installed (.ci/run installs it)")
}

#[test]
fn sipsak_options_gets_200_over_udp_and_tcp() {
    let server = Server::start(&[]);
    let udp = format!("sip:ping@{}", server.addr("UDP"));
    let out = sipsak(&["-vv", "-s", &udp]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sipsak over UDP: {text}");
    assert!(text.contains("SIP/2.0 200 OK"), "{text}");
    assert!(text.contains("Allow: OPTIONS"), "{text}");

    let tcp = format!("sip:ping@{}", server.addr("TCP"));
    let out = sipsak(&["-vv", "-E", "tcp", "-s", &tcp]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sipsak over TCP: {text}");
    assert!(text.contains("SIP/2.0 200 OK"), "{text}");
    assert!(server.log().contains("answered"), "decisions are logged");
}

#[tokio::test]
async fn options_over_udp_and_tcp_with_keepalive() {
    let server = Server::start(&[]);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    sock.send_to(options("UDP", local, "udp1").as_bytes(), server.addr("UDP"))
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, server.addr("UDP"));
    let answer = parse(&buf[..n]);
    assert_options_answer(&answer, "udp1");
    assert_eq!(answer.top_via().unwrap().rport(), Some(Some(local.port())));

    let mut tcp = TcpStream::connect(server.addr("TCP")).await.unwrap();
    let local = tcp.local_addr().unwrap();
    // RFC 5626 §3.5.1: a double-CRLF ping gets a single-CRLF pong.
    tcp.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    // Two requests back to back in one write, the second split across writes.
    let (a, b) = (options("TCP", local, "tcp1"), options("TCP", local, "tcp2"));
    let (b1, b2) = b.split_at(30);
    tcp.write_all(format!("{a}{b1}").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tcp.write_all(b2.as_bytes()).await.unwrap();
    let mut reader = Reader::default();
    assert_options_answer(&reader.next(&mut tcp).await, "tcp1");
    assert_options_answer(&reader.next(&mut tcp).await, "tcp2");
}

fn demo_tls_connector(server: &Server) -> tokio_rustls::TlsConnector {
    let cert = CertificateDer::from_pem_file(server.data_dir.path().join("demo-cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn options_over_tls_with_the_demo_certificate() {
    let server = Server::start(&[]);
    let tcp = TcpStream::connect(server.addr("TLS")).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = demo_tls_connector(&server)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(options("TLS", local, "tls1").as_bytes())
        .await
        .unwrap();
    assert_options_answer(&read_message(&mut tls).await, "tls1");
}

fn ws_request(
    addr: std::net::SocketAddr,
    scheme: &str,
    subprotocol: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("{scheme}://{addr}/").into_client_request().unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn options_over_ws_and_wss_with_the_sip_subprotocol() {
    let server = Server::start(&[]);
    let tcp = TcpStream::connect(server.addr("WS")).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(ws_request(server.addr("WS"), "ws", Some("sip")), tcp)
            .await
            .expect("WS handshake");
    assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").unwrap(), "sip");
    ws.send(WsMessage::Text(options("WS", local, "ws1").into()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_options_answer(&parse(&reply.into_data()), "ws1");

    let tcp = TcpStream::connect(server.addr("WSS")).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let tls = demo_tls_connector(&server)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut wss, _) =
        tokio_tungstenite::client_async(ws_request(server.addr("WSS"), "wss", Some("sip")), tls)
            .await
            .expect("WSS handshake");
    wss.send(WsMessage::Text(options("WSS", local, "wss1").into()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, wss.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_options_answer(&parse(&reply.into_data()), "wss1");
}

#[tokio::test]
async fn websocket_without_the_sip_subprotocol_is_refused() {
    let server = Server::start(&[]);
    let tcp = TcpStream::connect(server.addr("WS")).await.unwrap();
    let result =
        tokio_tungstenite::client_async(ws_request(server.addr("WS"), "ws", None), tcp).await;
    assert!(
        result.is_err(),
        "handshake without Sec-WebSocket-Protocol: sip must fail"
    );
}

#[tokio::test]
async fn stream_message_without_content_length_gets_400_and_the_connection_closes() {
    let server = Server::start(&[]);
    let mut tcp = TcpStream::connect(server.addr("TCP")).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let msg = options("TCP", local, "ncl").replace("Content-Length: 0\r\n", "");
    tcp.write_all(msg.as_bytes()).await.unwrap();
    let answer = read_message(&mut tcp).await;
    assert_eq!(answer.status(), Some(400));
    assert_eq!(
        answer.reason(),
        Some("message without Content-Length on a stream transport")
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed after a framing error");
}

#[tokio::test]
async fn a_10_mb_header_is_cut_off_and_the_server_keeps_answering() {
    let server = Server::start(&[]);
    let mut tcp = TcpStream::connect(server.addr("TCP")).await.unwrap();
    tcp.write_all(b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nX-Huge: ")
        .await
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    let mut cut_off = false;
    while sent < 10 * 1024 * 1024 {
        match tokio::time::timeout(WAIT, tcp.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Err(_) => panic!("write stalled without the server closing"),
        }
    }
    if !cut_off {
        // All of it fit in socket buffers: the server must still have closed on us.
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(WAIT, tcp.read(&mut b)).await.unwrap();
        cut_off = matches!(r, Ok(0) | Err(_));
    }
    assert!(cut_off, "server accepted {sent} bytes of one header");
    assert!(sent < 10 * 1024 * 1024, "the server read the whole 10 MB");
    // Still healthy for others.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    sock.send_to(
        options("UDP", local, "after").as_bytes(),
        server.addr("UDP"),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_options_answer(&parse(&buf[..n]), "after");
}

#[tokio::test]
async fn slowloris_connections_are_closed_and_per_source_limits_hold() {
    let server = Server::start(&[
        "--connections-per-source",
        "3",
        "--message-timeout-secs",
        "1",
    ]);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(server.addr("TCP")).await.unwrap();
        // A message that never completes: one byte, then nothing.
        c.write_all(b"O").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = TcpStream::connect(server.addr("TCP")).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(WAIT, fourth.read(&mut b))
        .await
        .expect("the fourth connection is closed at once");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert!(server.log().contains("per-source connection limit reached"));
    // Each half-sent message is given 1 s; then its connection is closed.
    for mut c in held {
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
            .await
            .expect("slowloris connection closed");
        assert!(matches!(r, Ok(0) | Err(_)));
    }
    assert!(server.log().contains("message not completed in time"));
    // The slots are free again.
    let mut again = TcpStream::connect(server.addr("TCP")).await.unwrap();
    let local = again.local_addr().unwrap();
    again
        .write_all(options("TCP", local, "again").as_bytes())
        .await
        .unwrap();
    assert_options_answer(&read_message(&mut again).await, "again");
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start(&[]);
    let status = server
        .terminate(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(server.log().contains("stopped"));
}

#[test]
fn a_final_answer_to_invite_is_retransmitted_over_udp_until_acked() {
    // The core answers through its server transaction; the edge relays the answer and
    // its retransmissions (timer G) until the phone's ACK reaches the core.
    let server = Server::start(&[]);
    let creds: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(server.data_dir.path().join("demo-credentials.json")).unwrap(),
    )
    .unwrap();
    let mut phone = common::phone::Phone::new(
        server.addr("UDP"),
        creds["domain"].as_str().unwrap(),
        "1001",
        creds["extensions"][0]["password"].as_str().unwrap(),
    );
    let (invite, first) = phone.invite_unacknowledged("1999");
    assert_eq!(
        first.status(),
        Some(404),
        "no extension 1999 in the demo tenant"
    );
    // No ACK yet: timer G retransmits the same answer.
    let (again, _) = phone
        .recv(Duration::from_secs(3))
        .expect("a retransmission (timer G)");
    assert_eq!(again.as_bytes(), first.as_bytes());
    phone.ack_for(&invite, &first);
    // Drain anything already in flight, then expect silence.
    while phone.recv(Duration::from_millis(100)).is_some() {}
    assert!(
        phone.recv(Duration::from_millis(2500)).is_none(),
        "retransmissions stop after the ACK"
    );
}

#[tokio::test]
async fn options_over_ipv6_udp_and_tcp() {
    let server = Server::start(&["--udp", "[::1]:0", "--tcp", "[::1]:0"]);
    let udp = server.addr("UDP");
    assert!(udp.is_ipv6(), "{udp}");
    let sock = UdpSocket::bind("[::1]:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    sock.send_to(options("UDP", local, "udp6").as_bytes(), udp)
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, udp);
    assert_options_answer(&parse(&buf[..n]), "udp6");

    let mut tcp = TcpStream::connect(server.addr("TCP")).await.unwrap();
    let local = tcp.local_addr().unwrap();
    tcp.write_all(options("TCP", local, "tcp6").as_bytes())
        .await
        .unwrap();
    let answer = read_message(&mut tcp).await;
    assert_options_answer(&answer, "tcp6");
}
