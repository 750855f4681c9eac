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
    key: [u8; 32],
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
        TokenKey {
            key: Sha256::digest([b"flow-token:".as_slice(), secret].concat()).into(),
        }
    }

    fn mac(&self, payload: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        let bytes = mac.finalize().into_bytes();
        hex(&bytes[..MAC_HEX / 2])
    }

    /// The token as URI-user-safe text (hex digits and `-`).
    pub fn encode(&self, t: &FlowToken) -> String {
        let payload = format!("{}|{}|{}|{}", t.transport, t.flow, t.local, t.remote);
        let h = hex(payload.as_bytes());
        let mac = self.mac(&h);
        format!("{h}-{mac}")
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
