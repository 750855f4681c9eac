//! Seals on the headers an edge adds for a core.
//!
//! An edge tells a core who is calling (`X-Sy-Tenant`, `X-Sy-Caller`, `X-Sy-Carrier`); a
//! core believes it only when `X-Sy-Seal` proves that an edge of the same cluster wrote
//! it, for this request: an HMAC-SHA256, under a key derived from the cluster secret, of
//! the Call-ID, the CSeq, the three values and the time. Anyone else who reaches a core's
//! socket gets `403`, whatever headers they write; a seal copied onto another request
//! (another Call-ID or CSeq) or replayed after [`FRESH_FOR_SECS`] does not verify.
//!
//! Form: `X-Sy-Seal: <unix seconds>.<32 hex digits>`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::digest::{constant_time_eq, hex};

/// The header carrying the seal.
pub const SEAL_HEADER: &str = "X-Sy-Seal";
/// How far the seal's time may be from the core's clock (clocks in NTP sync, and a
/// phone's INVITE retransmissions are each sealed again as the edge forwards them).
pub const FRESH_FOR_SECS: u64 = 60;

/// What a seal vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed<'a> {
    pub call_id: &'a str,
    /// The CSeq header's value as sent (`1 INVITE`).
    pub cseq: &'a str,
    pub tenant: &'a str,
    pub caller: &'a str,
    /// Empty unless the call came from a carrier.
    pub carrier: &'a str,
}

/// The cluster secret, keyed for seals.
#[derive(Clone)]
pub struct SealKey {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Why a seal was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no X-Sy-Seal")]
    Missing,
    #[error("malformed X-Sy-Seal")]
    Malformed,
    #[error("X-Sy-Seal does not verify")]
    Forged,
    #[error("X-Sy-Seal is {0} s from this node's clock")]
    Stale(u64),
}

impl SealKey {
    pub fn new(cluster_secret: &[u8]) -> SealKey {
        let key: [u8; 32] =
            Sha256::digest([b"edge-seal:".as_slice(), cluster_secret].concat()).into();
        SealKey {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length"),
        }
    }

    fn mac(&self, what: &Sealed<'_>, at_secs: u64) -> String {
        let mut mac = self.keyed.clone();
        // Each field ends with a newline, which none may contain (header values are one
        // line), so no two field lists sign alike.
        for field in [
            what.call_id,
            what.cseq,
            what.tenant,
            what.caller,
            what.carrier,
        ] {
            mac.update(field.as_bytes());
            mac.update(b"\n");
        }
        mac.update(at_secs.to_string().as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }

    /// The header value for `what`, at `now_secs` (Unix seconds).
    pub fn seal(&self, what: &Sealed<'_>, now_secs: u64) -> String {
        format!("{now_secs}.{}", self.mac(what, now_secs))
    }

    /// Checks a header value (None: the request had none).
    pub fn verify(
        &self,
        value: Option<&str>,
        what: &Sealed<'_>,
        now_secs: u64,
    ) -> Result<(), SealError> {
        let value = value.ok_or(SealError::Missing)?.trim();
        let (at, mac) = value.split_once('.').ok_or(SealError::Malformed)?;
        let at: u64 = at.parse().map_err(|_| SealError::Malformed)?;
        if mac.len() != 32 {
            return Err(SealError::Malformed);
        }
        if !constant_time_eq(self.mac(what, at).as_bytes(), mac.as_bytes()) {
            return Err(SealError::Forged);
        }
        let skew = now_secs.abs_diff(at);
        if skew > FRESH_FOR_SECS {
            return Err(SealError::Stale(skew));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn call() -> Sealed<'static> {
        Sealed {
            call_id: "abc@host",
            cseq: "1 INVITE",
            tenant: "t1",
            caller: "1001",
            carrier: "",
        }
    }

    #[test]
    fn a_seal_verifies_for_its_request_only() {
        let key = SealKey::new(b"cluster");
        let seal = key.seal(&call(), NOW);
        assert_eq!(key.verify(Some(&seal), &call(), NOW + 5), Ok(()));
        // Another cluster, another field, another request: forged.
        assert_eq!(
            SealKey::new(b"other").verify(Some(&seal), &call(), NOW),
            Err(SealError::Forged)
        );
        for other in [
            Sealed {
                tenant: "t2",
                ..call()
            },
            Sealed {
                caller: "1002",
                ..call()
            },
            Sealed {
                carrier: "c1",
                ..call()
            },
            Sealed {
                call_id: "xyz@host",
                ..call()
            },
            Sealed {
                cseq: "2 INVITE",
                ..call()
            },
            // Field boundaries count: "1001" + "" is not "100" + "1".
            Sealed {
                caller: "100",
                carrier: "1",
                ..call()
            },
        ] {
            assert_eq!(
                key.verify(Some(&seal), &other, NOW),
                Err(SealError::Forged),
                "{other:?}"
            );
        }
        // Another time under the same MAC.
        let moved = seal.replacen(&NOW.to_string(), &(NOW + 1).to_string(), 1);
        assert_eq!(
            key.verify(Some(&moved), &call(), NOW),
            Err(SealError::Forged)
        );
    }

    #[test]
    fn old_missing_and_malformed_seals_are_refused() {
        let key = SealKey::new(b"cluster");
        let seal = key.seal(&call(), NOW);
        assert_eq!(
            key.verify(Some(&seal), &call(), NOW + FRESH_FOR_SECS + 1),
            Err(SealError::Stale(FRESH_FOR_SECS + 1))
        );
        assert_eq!(key.verify(None, &call(), NOW), Err(SealError::Missing));
        for bad in [
            "",
            "123",
            "x.y",
            "123.abc",
            &format!("{NOW}.{}", "0".repeat(31)),
        ] {
            assert_eq!(
                key.verify(Some(bad), &call(), NOW),
                Err(SealError::Malformed),
                "{bad:?}"
            );
        }
    }
}
