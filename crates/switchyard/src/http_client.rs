//! A minimal HTTP/1.1 client with keep-alive, enough to load our own API without pulling a
//! client stack into the binary. One request at a time per connection.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A connection to the API.
#[derive(Debug)]
pub struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

/// A response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub replayed: bool,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn { addr, stream: None }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request; reconnects once if the kept-alive connection was closed.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        idem: Option<&str>,
        body: Option<&str>,
    ) -> std::io::Result<Reply> {
        match self.try_request(method, path, key, idem, body).await {
            Ok(r) => Ok(r),
            Err(_) => {
                self.stream = None;
                self.try_request(method, path, key, idem, body).await
            }
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        idem: Option<&str>,
        body: Option<&str>,
    ) -> std::io::Result<Reply> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::new(s));
        }
        let stream = self.stream.as_mut().expect("connected above");
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(i) = idem {
            req.push_str(&format!("Idempotency-Key: {i}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        let mut replayed = false;
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("idempotent-replayed") {
                    replayed = true;
                }
            }
        }
        let mut buf = vec![0u8; length];
        stream.read_exact(&mut buf).await?;
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&buf).into_owned(),
            replayed,
        })
    }
}
