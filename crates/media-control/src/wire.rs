//! The network envelope of media-control messages (version 1).
//!
//! One message per UDP datagram: a header line, then the JSON body of `encode_request` /
//! `encode_reply`:
//!
//! ```text
//! SYMC/1 <id> <sent_ms> <mac>\n<json>
//! ```
//!
//! `id` matches a reply to its request (a retransmitted request keeps its id, so the
//! media node answers it from its reply cache instead of running it twice); `sent_ms` is
//! the sender's Unix time in milliseconds (messages outside [`FRESH_FOR_MS`] of the
//! receiver's clock are refused, so a captured message cannot be replayed later); `mac`
//! is HMAC-SHA256 of everything but itself under a key derived from the cluster secret,
//! truncated to 128 bits, hex. No I/O here: the core's client and the media node's server
//! are the shells.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The version this code speaks. A receiver drops other versions (and says so in its
/// log), so a mixed cluster fails loudly instead of misreading bodies.
pub const VERSION: u32 = 1;
const MAGIC: &str = "SYMC/";
/// Hex digits of the truncated MAC.
const MAC_HEX: usize = 32;
/// How far a message's clock may be from the receiver's.
pub const FRESH_FOR_MS: u64 = 30_000;
/// The largest message either side sends or takes (an SDP with many codecs fits easily).
pub const MAX_DATAGRAM: usize = 16 * 1024;

/// The cluster secret, keyed for media control (the same secret signs other internal
/// traffic under other labels, so a MAC from one use is never valid in another).
#[derive(Clone)]
pub struct ControlKey {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlKey(..)")
    }
}

impl ControlKey {
    pub fn new(cluster_secret: &[u8]) -> ControlKey {
        let key: [u8; 32] =
            Sha256::digest([b"media-control:".as_slice(), cluster_secret].concat()).into();
        ControlKey {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length"),
        }
    }

    fn mac(&self, signed: &[u8]) -> [u8; MAC_HEX] {
        let mut mac = self.keyed.clone();
        mac.update(signed);
        let bytes = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_HEX];
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in bytes[..MAC_HEX / 2].iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        out
    }
}

/// A message as read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub id: u64,
    pub sent_ms: u64,
    pub body: &'a str,
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a media-control message")]
    NotControl,
    #[error("media-control version {0} (this node speaks {VERSION})")]
    Version(String),
    #[error("malformed media-control header")]
    Header,
    #[error("bad signature (another cluster secret?)")]
    Signature,
    #[error("stale message: {0} ms from this node's clock")]
    Stale(u64),
    #[error("message over {MAX_DATAGRAM} bytes")]
    TooLarge,
}

/// Builds a signed datagram.
pub fn seal(key: &ControlKey, id: u64, sent_ms: u64, body: &str) -> Vec<u8> {
    let head = format!("{MAGIC}{VERSION} {id} {sent_ms} ");
    let mut signed = Vec::with_capacity(head.len() + body.len() + 1);
    signed.extend_from_slice(head.as_bytes());
    signed.push(b'\n');
    signed.extend_from_slice(body.as_bytes());
    let mac = key.mac(&signed);
    let mut out = Vec::with_capacity(signed.len() + MAC_HEX);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&mac);
    out.push(b'\n');
    out.extend_from_slice(body.as_bytes());
    out
}

/// Checks and splits a datagram; `now_ms` is the receiver's Unix time in milliseconds.
pub fn open<'a>(key: &ControlKey, datagram: &'a [u8], now_ms: u64) -> Result<Frame<'a>, WireError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge);
    }
    let text = std::str::from_utf8(datagram).map_err(|_| WireError::NotControl)?;
    let rest = text.strip_prefix(MAGIC).ok_or(WireError::NotControl)?;
    let (head, body) = rest.split_once('\n').ok_or(WireError::Header)?;
    let mut fields = head.split(' ');
    let version = fields.next().unwrap_or_default();
    if version != VERSION.to_string() {
        return Err(WireError::Version(version.chars().take(16).collect()));
    }
    let id = fields.next().and_then(|f| f.parse().ok());
    let sent_ms = fields.next().and_then(|f| f.parse().ok());
    let mac = fields.next();
    let (Some(id), Some(sent_ms), Some(mac), None) = (id, sent_ms, mac, fields.next()) else {
        return Err(WireError::Header);
    };
    if mac.len() != MAC_HEX {
        return Err(WireError::Header);
    }
    // What was signed: the header without its MAC, the newline, the body.
    let unsigned_head = &text[..MAGIC.len() + head.len() - MAC_HEX];
    let mut signed = Vec::with_capacity(unsigned_head.len() + 1 + body.len());
    signed.extend_from_slice(unsigned_head.as_bytes());
    signed.push(b'\n');
    signed.extend_from_slice(body.as_bytes());
    if !constant_time_eq(&key.mac(&signed), mac.as_bytes()) {
        return Err(WireError::Signature);
    }
    let skew = now_ms.abs_diff(sent_ms);
    if skew > FRESH_FOR_MS {
        return Err(WireError::Stale(skew));
    }
    Ok(Frame { id, sent_ms, body })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Unix time in milliseconds, as both ends stamp and check it.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_sealed_message_opens_with_the_same_secret_only() {
        let key = ControlKey::new(b"cluster secret");
        let body = r#"{"op":"stats","session":"c1"}"#;
        let datagram = seal(&key, 42, NOW, body);
        let text = std::str::from_utf8(&datagram).unwrap();
        assert!(text.starts_with("SYMC/1 42 1800000000000 "), "{text}");
        assert!(text.ends_with(&format!("\n{body}")));
        assert_eq!(
            open(&key, &datagram, NOW + 10).unwrap(),
            Frame {
                id: 42,
                sent_ms: NOW,
                body
            }
        );
        let other = ControlKey::new(b"another cluster");
        assert_eq!(open(&other, &datagram, NOW), Err(WireError::Signature));
    }

    #[test]
    fn any_change_to_a_sealed_message_is_refused() {
        let key = ControlKey::new(b"s");
        let datagram = seal(&key, 7, NOW, r#"{"op":"destroy","session":"c1"}"#);
        // Flip each byte in turn: nothing opens but the original.
        for i in 0..datagram.len() {
            let mut forged = datagram.clone();
            forged[i] ^= 0x01;
            assert!(
                open(&key, &forged, NOW).is_err(),
                "byte {i} changed, still opened"
            );
        }
        // Another id, time or body under the old MAC.
        let text = String::from_utf8(datagram).unwrap();
        for forged in [
            text.replacen(" 7 ", " 8 ", 1),
            text.replace("c1", "c2"),
            text.replacen(&NOW.to_string(), &(NOW + 1).to_string(), 1),
        ] {
            assert_eq!(
                open(&key, forged.as_bytes(), NOW),
                Err(WireError::Signature)
            );
        }
    }

    #[test]
    fn stale_foreign_and_other_version_messages_are_told_apart() {
        let key = ControlKey::new(b"s");
        let datagram = seal(&key, 1, NOW, "{}");
        assert_eq!(
            open(&key, &datagram, NOW + FRESH_FOR_MS + 1),
            Err(WireError::Stale(FRESH_FOR_MS + 1))
        );
        assert_eq!(
            open(&key, &datagram, NOW - FRESH_FOR_MS - 5),
            Err(WireError::Stale(FRESH_FOR_MS + 5))
        );
        assert_eq!(
            open(&key, b"INVITE sip:x SIP/2.0\r\n", NOW),
            Err(WireError::NotControl)
        );
        assert_eq!(
            open(&key, b"SYMC/2 1 2 abc\n{}", NOW),
            Err(WireError::Version("2".into()))
        );
        assert_eq!(open(&key, b"SYMC/1 1 2\n{}", NOW), Err(WireError::Header));
        assert_eq!(open(&key, b"SYMC/1 x 2 y\n{}", NOW), Err(WireError::Header));
        assert_eq!(open(&key, &[0xff; 10], NOW), Err(WireError::NotControl));
        assert_eq!(
            open(&key, &vec![b'S'; MAX_DATAGRAM + 1], NOW),
            Err(WireError::TooLarge)
        );
    }
}
