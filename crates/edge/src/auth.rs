//! Digest authentication of phones against the store's HA1 digests, shared by the
//! registrar (`Authorization`, 401) and the proxy (`Proxy-Authorization`, 407).
//!
//! - The realm is the tenant's domain; credentials for any other realm are ignored, so a
//!   password of one tenant never authenticates in another.
//! - An unknown username gets exactly the challenge a wrong password gets (no user
//!   enumeration).
//! - After `max_failures` failed attempts for one source address and user within
//!   `window_secs`, the answer is `403` until the window passes, with a log line naming
//!   the source and the address of record.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use switchyard_sip::HeaderName;
use switchyard_sip::Message;
use switchyard_sip::digest::{Algorithm, Challenge, Credentials, NonceCheck, NonceCounts, Nonces};
use switchyard_store::Extension;

use crate::directory::TenantEntry;
use tracing::warn;

/// The usernames of the digest credentials in `header` rows of `msg` for `realm`.
pub fn credential_usernames(msg: &Message, header: HeaderName, realm: &str) -> Vec<String> {
    msg.header_rows(header)
        .filter_map(|row| Credentials::parse(row).ok())
        .filter(|c| c.realm.eq_ignore_ascii_case(realm))
        .map(|c| c.username)
        .collect()
}

/// What to answer.
#[derive(Debug)]
pub enum AuthOutcome {
    Authenticated(std::sync::Arc<Extension>),
    /// Send a fresh challenge (`stale` when the client's nonce had only expired).
    Challenge {
        stale: bool,
    },
    /// `403` with this reason.
    Forbidden(&'static str),
}

/// Failure-limit settings.
#[derive(Debug, Clone, Copy)]
pub struct FailurePolicy {
    pub max_failures: u32,
    pub window_secs: u64,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            max_failures: 5,
            window_secs: 300,
        }
    }
}

/// Checks digest credentials; keeps nonce counts and failure counters of this node.
#[derive(Debug)]
pub struct Authenticator {
    nonces: Nonces,
    counts: Mutex<NonceCounts>,
    failures: Mutex<HashMap<String, (u32, u64)>>,
    policy: FailurePolicy,
    /// Challenge order. Many deployed phones (baresip 1.0's libre among them) take the
    /// first challenge and fail on SHA-256, so MD5 comes first unless configured.
    algorithms: Vec<Algorithm>,
}

impl Authenticator {
    pub fn new(nonces: Nonces, policy: FailurePolicy) -> Authenticator {
        Authenticator {
            nonces,
            counts: Mutex::new(NonceCounts::default()),
            failures: Mutex::new(HashMap::new()),
            policy,
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
        }
    }

    /// Sets which algorithms are offered, in order (at least one).
    pub fn with_algorithms(mut self, algorithms: Vec<Algorithm>) -> Authenticator {
        if !algorithms.is_empty() {
            self.algorithms = algorithms;
        }
        self
    }

    /// Challenge header values for `realm`, one per configured algorithm.
    pub fn challenges(&self, realm: &str, stale: bool, now_secs: u64) -> Vec<String> {
        let nonce = self.nonces.issue(realm, now_secs);
        self.algorithms
            .iter()
            .copied()
            .map(|algorithm| {
                Challenge {
                    realm: realm.to_owned(),
                    nonce: nonce.clone(),
                    algorithm,
                    stale,
                    opaque: None,
                }
                .header_value()
            })
            .collect()
    }

    /// Checks the credentials in `header` rows of `msg` for `tenant`. `aor_user` is the
    /// user the request claims to be (To of a REGISTER, From of an INVITE): the credentials
    /// must belong to that extension.
    pub fn check(
        &self,
        entry: &TenantEntry,
        msg: &Message,
        header: HeaderName,
        aor_user: &str,
        source: IpAddr,
        now_secs: u64,
    ) -> AuthOutcome {
        let tenant = &entry.tenant;
        let method = msg.method().map(|m| m.to_string()).unwrap_or_default();
        let failure_key = format!("{}|{}|{}", tenant.id, source, aor_user.to_ascii_lowercase());
        if self.blocked(&failure_key, now_secs) {
            return AuthOutcome::Forbidden("Too many failed authentications");
        }
        let mut stale = false;
        for row in msg.header_rows(header) {
            let Ok(creds) = Credentials::parse(row) else {
                continue;
            };
            if !creds.realm.eq_ignore_ascii_case(&tenant.domain) {
                continue;
            }
            match self.nonces.check(&creds.nonce, &tenant.domain, now_secs) {
                NonceCheck::Invalid => continue,
                NonceCheck::Stale => {
                    stale = true;
                    continue;
                }
                NonceCheck::Valid => {}
            }
            let ext = entry
                .user(&creds.username)
                .filter(|e| e.username.eq_ignore_ascii_case(&creds.username));
            let verified = ext.as_ref().is_some_and(|e| {
                let ha1 = match creds.algorithm {
                    Algorithm::Md5 => &e.ha1_md5,
                    Algorithm::Sha256 => &e.ha1_sha256,
                };
                creds.verify(&method, ha1)
            });
            let Some(ext) = ext.filter(|_| verified) else {
                return self.fail(&failure_key, &tenant.id, aor_user, source, now_secs);
            };
            if let Some(nc) = creds.nonce_count() {
                let fresh = self
                    .counts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .accept(&creds.nonce, nc, now_secs);
                if !fresh {
                    // A replayed response: never accepted, but a retransmission is no
                    // attack either, so it is challenged without counting a failure.
                    return AuthOutcome::Challenge { stale: false };
                }
            }
            if !aor_user.eq_ignore_ascii_case(&ext.username) && aor_user != ext.number.to_string() {
                warn!(tenant = %tenant.id, %source, aor = aor_user, username = %ext.username,
                    "credentials of one extension used for another");
                return AuthOutcome::Forbidden("Credentials do not match the address of record");
            }
            self.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&failure_key);
            return AuthOutcome::Authenticated(ext);
        }
        AuthOutcome::Challenge { stale }
    }

    fn blocked(&self, key: &str, now_secs: u64) -> bool {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).is_some_and(|(n, since)| {
            *n >= self.policy.max_failures
                && now_secs.saturating_sub(*since) < self.policy.window_secs
        })
    }

    fn fail(
        &self,
        key: &str,
        tenant_id: &str,
        aor: &str,
        source: IpAddr,
        now_secs: u64,
    ) -> AuthOutcome {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(key.to_owned()).or_insert((0, now_secs));
        if now_secs.saturating_sub(entry.1) >= self.policy.window_secs {
            *entry = (0, now_secs);
        }
        entry.0 += 1;
        if entry.0 >= self.policy.max_failures {
            warn!(tenant = %tenant_id, %source, aor, failures = entry.0,
                "too many failed authentications: refusing with 403");
            AuthOutcome::Forbidden("Too many failed authentications")
        } else {
            AuthOutcome::Challenge { stale: false }
        }
    }

    /// Forgets old nonce counts and failure windows (call every minute or so).
    pub fn purge(&self, now_secs: u64) {
        let lifetime = self.nonces.lifetime_secs();
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .purge(now_secs, lifetime * 2);
        let window = self.policy.window_secs;
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, since)| now_secs.saturating_sub(*since) < window);
    }
}
