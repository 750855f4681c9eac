//! Flow tokens: how the edge remembers, inside SIP itself, where a phone is reachable.
//!
//! The edge is stateless for calls. When it needs to find a phone again later (a call to
//! a registered contact, an in-dialog request, a response to forward), it puts the way
//! back (transport, connection, local socket, remote address) into a token carried in
//! its own Record-Route, Via and registration path, signed with a node secret so nobody
//! can forge a token that makes the edge send to an address of their choosing
//! (RFC 5626 §5.2 works the same way).

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_sip::digest::{constant_time_eq, hex};

/// Where a message goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowToken {
    /// `UDP`, `TCP`, `TLS`, `WS` or `WSS` (an index into [`TRANSPORTS`]).
    pub transport: u8,
    /// The connection id for stream transports; 0 for UDP.
    pub flow: u64,
    /// Our socket the peer talks to.
    pub local: SocketAddr,
    /// The peer's address as seen on the wire.
    pub remote: SocketAddr,
}

/// Transport names in token order.
pub const TRANSPORTS: [&str; 5] = ["UDP", "TCP", "TLS", "WS", "WSS"];

/// Signs and checks tokens with the node secret.
#[derive(Clone)]
pub struct TokenKey {
    /// HMAC state with the key already absorbed (each MAC starts from a copy).
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

const MAC_HEX: usize = 16;

impl TokenKey {
    pub fn new(secret: &[u8]) -> TokenKey {
        use sha2::Digest;
        let key: [u8; 32] = Sha256::digest([b"flow-token:".as_slice(), secret].concat()).into();
        TokenKey {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length"),
        }
    }

    fn mac(&self, payload: &str) -> String {
        let mut mac = self.keyed.clone();
        mac.update(payload.as_bytes());
        let bytes = mac.finalize().into_bytes();
        hex(&bytes[..MAC_HEX / 2])
    }

    /// The token as URI-user-safe text (hex digits and `-`): the hex of
    /// `TRANSPORT|FLOW|LOCAL|REMOTE`, a `-`, and the MAC of that hex.
    pub fn encode(&self, t: &FlowToken) -> String {
        use switchyard_sip::build::push_decimal;
        let mut payload = String::with_capacity(64);
        push_decimal(&mut payload, u64::from(t.transport));
        payload.push('|');
        push_decimal(&mut payload, t.flow);
        for addr in [t.local, t.remote] {
            payload.push('|');
            push_socket_addr(&mut payload, addr);
        }
        let mut token = hex(payload.as_bytes());
        let mac = self.mac(&token);
        token.reserve(1 + mac.len());
        token.push('-');
        token.push_str(&mac);
        token
    }

    /// The token, if the text is one we signed.
    pub fn decode(&self, text: &str) -> Option<FlowToken> {
        let (h, mac) = text.split_once('-')?;
        if mac.len() != MAC_HEX || !constant_time_eq(self.mac(h).as_bytes(), mac.as_bytes()) {
            return None;
        }
        let raw = unhex(h)?;
        let payload = std::str::from_utf8(&raw).ok()?;
        let mut parts = payload.split('|');
        let transport: u8 = parts.next()?.parse().ok()?;
        if usize::from(transport) >= TRANSPORTS.len() {
            return None;
        }
        let flow = parts.next()?.parse().ok()?;
        let local = parts.next()?.parse().ok()?;
        let remote = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(FlowToken {
            transport,
            flow,
            local,
            remote,
        })
    }
}

/// `addr` as `Display` writes it (IPv4 by hand: it is written for every registration).
fn push_socket_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            out.push_str(&switchyard_sip::build::ip_text((*v4.ip()).into()));
            out.push(':');
            switchyard_sip::build::push_decimal(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => out.push_str(&addr.to_string()),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> FlowToken {
        FlowToken {
            transport: 1,
            flow: 42,
            local: "127.0.0.1:5060".parse().unwrap(),
            remote: "[::1]:40000".parse().unwrap(),
        }
    }

    #[test]
    fn tokens_round_trip_and_are_uri_user_safe() {
        let k = TokenKey::new(b"secret");
        let text = k.encode(&token());
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
        assert_eq!(k.decode(&text), Some(token()));
    }

    #[test]
    fn tokens_keep_their_documented_form() {
        // Bindings outlive a release: a token signed before a rolling upgrade must still
        // decode after it, so the form is pinned here.
        use sha2::Digest;
        let k = TokenKey::new(b"secret");
        let body = hex(b"1|42|127.0.0.1:5060|[::1]:40000");
        let key = Sha256::digest(b"flow-token:secret");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(body.as_bytes());
        let mac = hex(&mac.finalize().into_bytes()[..8]);
        assert_eq!(k.encode(&token()), format!("{body}-{mac}"));
    }

    #[test]
    fn ipv4_tokens_read_as_display_writes_them() {
        let k = TokenKey::new(b"secret");
        let t = FlowToken {
            transport: 0,
            flow: 0,
            local: "10.1.2.3:5060".parse().unwrap(),
            remote: "192.0.2.44:65535".parse().unwrap(),
        };
        let text = k.encode(&t);
        let (body, _) = text.split_once('-').unwrap();
        assert_eq!(body, hex(b"0|0|10.1.2.3:5060|192.0.2.44:65535"));
        assert_eq!(k.decode(&text), Some(t));
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let k = TokenKey::new(b"secret");
        let text = k.encode(&token());
        assert_eq!(TokenKey::new(b"other").decode(&text), None);
        // Change the address inside and keep the old signature.
        let mut forged = token();
        forged.remote = "127.0.0.9:40000".parse().unwrap();
        let body = k.encode(&forged);
        let (h, _) = body.split_once('-').unwrap();
        let (_, mac) = text.split_once('-').unwrap();
        assert_eq!(k.decode(&format!("{h}-{mac}")), None);
        for junk in ["", "-", "zz-0011223344556677", "00", &text[1..]] {
            assert_eq!(k.decode(junk), None, "{junk:?}");
        }
    }
}
