//! Digest authentication of phones against the HA1 digests in the edge's directory,
//! shared by the registrar (`Authorization`, 401) and the proxy (`Proxy-Authorization`,
//! 407).
//!
//! - The realm is the tenant's domain; credentials for any other realm are ignored, so a
//!   password of one tenant never authenticates in another.
//! - An unknown username, a wrong password and the right password of another extension
//!   than the one the request claims all get the same fresh challenge (no oracle).
//! - Nonces are bound to the source address they were issued to, `qop=auth` is required
//!   and the digest `uri` must be the Request-URI (`400` otherwise).
//! - A byte-identical retransmission (same nonce, nonce count and Via branch) is accepted
//!   again, so it reaches the transaction that absorbs it instead of a second challenge;
//!   any other reuse of a nonce count is a replay and is challenged.
//! - Failures are counted by source address and by the credentials' username, never by a
//!   user the request merely claims. Too many from one source within the window ban that
//!   source ([`crate::bans`]); the right password from any other source still works.
//!   Every table is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use switchyard_sip::HeaderName;
use switchyard_sip::Message;
use switchyard_sip::digest::{Algorithm, Challenge, Credentials, NonceCheck, NonceCounts, Nonces};
use switchyard_store::Extension;

use crate::bans::{BanReason, Bans};
use crate::directory::TenantEntry;
use crate::metrics::{Rejection, TenantMetrics};
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
    /// `400` with this reason: credentials that break the digest rules we require.
    BadRequest(&'static str),
}

/// Failure-limit settings.
#[derive(Debug, Clone, Copy)]
pub struct FailurePolicy {
    /// Failures from one source address within the window before it is banned.
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

/// Entries a failure table holds at most; beyond, the oldest windows are forgotten.
const MAX_TABLE: usize = 100_000;

/// Failures within a window: (count, window start in Unix seconds).
#[derive(Debug, Default)]
struct FailureTable {
    entries: HashMap<String, (u32, u64)>,
}

impl FailureTable {
    /// Counts one failure for `key`; returns the count in the current window.
    fn add(&mut self, key: &str, now_secs: u64, window: u64) -> u32 {
        if self.entries.len() >= MAX_TABLE && !self.entries.contains_key(key) {
            self.entries
                .retain(|_, (_, since)| now_secs.saturating_sub(*since) < window);
            if self.entries.len() >= MAX_TABLE {
                self.entries.clear();
            }
        }
        let entry = self.entries.entry(key.to_owned()).or_insert((0, now_secs));
        if now_secs.saturating_sub(entry.1) >= window {
            *entry = (0, now_secs);
        }
        entry.0 += 1;
        entry.0
    }

    fn purge(&mut self, now_secs: u64, window: u64) {
        self.entries
            .retain(|_, (_, since)| now_secs.saturating_sub(*since) < window);
    }
}

/// Checks digest credentials; keeps nonce counts and failure counters of this node.
#[derive(Debug)]
pub struct Authenticator {
    nonces: Nonces,
    counts: Mutex<NonceCounts>,
    by_source: Mutex<FailureTable>,
    by_username: Mutex<FailureTable>,
    policy: FailurePolicy,
    bans: Arc<Bans>,
    /// Challenge order. Many deployed phones (baresip 1.0's libre among them) take the
    /// first challenge and fail on SHA-256, so MD5 comes first unless configured.
    algorithms: Vec<Algorithm>,
    metrics: Arc<TenantMetrics>,
}

/// The nonce of a challenge is bound to the address it was sent to: a response from
/// elsewhere is not ours (a fresh challenge, not a failure).
fn bound_realm(realm: &str, source: IpAddr) -> String {
    let ip = switchyard_sip::build::ip_text(source);
    let mut bound = String::with_capacity(realm.len() + 1 + ip.len());
    for part in [realm, "|", &ip] {
        bound.push_str(part);
    }
    bound
}

impl Authenticator {
    pub fn new(nonces: Nonces, policy: FailurePolicy, bans: Arc<Bans>) -> Authenticator {
        Authenticator {
            nonces,
            counts: Mutex::new(NonceCounts::default()),
            by_source: Mutex::default(),
            by_username: Mutex::default(),
            policy,
            bans,
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            metrics: Arc::default(),
        }
    }

    /// Counts into these per-tenant series (the edge's shell and registrar share them).
    pub fn with_metrics(mut self, metrics: Arc<TenantMetrics>) -> Authenticator {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<TenantMetrics> {
        &self.metrics
    }

    /// Sets which algorithms are offered, in order (at least one).
    pub fn with_algorithms(mut self, algorithms: Vec<Algorithm>) -> Authenticator {
        if !algorithms.is_empty() {
            self.algorithms = algorithms;
        }
        self
    }

    pub fn bans(&self) -> &Arc<Bans> {
        &self.bans
    }

    /// Challenge header values for `realm` to a phone at `source`, one per algorithm.
    pub fn challenges(
        &self,
        realm: &str,
        source: IpAddr,
        stale: bool,
        now_secs: u64,
    ) -> Vec<String> {
        let nonce = self.nonces.issue(&bound_realm(realm, source), now_secs);
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

    /// Checks the credentials in `header` rows of `msg` for `entry`'s tenant. `aor_user`
    /// is the user the request claims to be (To of a REGISTER, From of an INVITE): the
    /// credentials must belong to that extension.
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
        if self.bans.is_banned(source, now_secs) {
            return AuthOutcome::Forbidden("Too many failed authentications");
        }
        if entry.user(aor_user).is_none() {
            self.unknown_name(source, &format!("{aor_user}@{}", tenant.domain), now_secs);
        }
        let method = msg.method().map(|m| m.to_string()).unwrap_or_default();
        let bound = bound_realm(&tenant.domain, source);
        let mut stale = false;
        for row in msg.header_rows(header) {
            let Ok(creds) = Credentials::parse(row) else {
                continue;
            };
            if !creds.realm.eq_ignore_ascii_case(&tenant.domain) {
                continue;
            }
            match self.nonces.check(&creds.nonce, &bound, now_secs) {
                NonceCheck::Invalid => continue,
                NonceCheck::Stale => {
                    stale = true;
                    continue;
                }
                NonceCheck::Valid => {}
            }
            let Some(nc) = creds.nonce_count().filter(|_| creds.qop.is_some()) else {
                return AuthOutcome::BadRequest("Digest credentials need qop=auth");
            };
            if !msg
                .request_uri_str()
                .is_some_and(|r| same_uri(r, &creds.uri))
            {
                return AuthOutcome::BadRequest("Digest uri is not the Request-URI");
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
            // The right password of another extension than the one claimed is a failure
            // like any other: the same challenge, counted the same way.
            let Some(ext) = ext.filter(|e| {
                verified
                    && (aor_user.eq_ignore_ascii_case(&e.username)
                        || aor_user == e.number.to_string())
            }) else {
                return self.fail(&tenant.id, &creds.username, source, now_secs);
            };
            let retransmission_key = retransmission_key(msg);
            let fresh = self
                .counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .accept_request(&creds.nonce, nc, retransmission_key, now_secs);
            if !fresh {
                // A replayed response: never accepted, but no attack either, so it is
                // challenged without counting a failure.
                return AuthOutcome::Challenge { stale: false };
            }
            return AuthOutcome::Authenticated(ext);
        }
        AuthOutcome::Challenge { stale }
    }

    fn fail(&self, tenant_id: &str, username: &str, source: IpAddr, now_secs: u64) -> AuthOutcome {
        let window = self.policy.window_secs;
        let from_source = self
            .by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&source.to_string(), now_secs, window);
        let for_user = self
            .by_username
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(
                &format!("{tenant_id}|{}", username.to_ascii_lowercase()),
                now_secs,
                window,
            );
        if for_user == self.policy.max_failures * 4 {
            warn!(tenant = %tenant_id, username, failures = for_user,
                "many failed authentications for one username (from any source)");
        }
        self.metrics.rejected(tenant_id, Rejection::Auth);
        if from_source >= self.policy.max_failures
            && self
                .bans
                .ban(source, BanReason::AuthFailures, now_secs)
                .is_some()
        {
            self.metrics.banned(tenant_id);
            warn!(tenant = %tenant_id, %source, failures = from_source,
                "too many failed authentications: source banned");
            return AuthOutcome::Forbidden("Too many failed authentications");
        }
        AuthOutcome::Challenge { stale: false }
    }

    /// `source` asked for a user or domain nobody has: one more sign of a scan.
    pub fn unknown_name(&self, source: IpAddr, name: &str, now_secs: u64) {
        if let Some(ban) = self.bans.unknown_name(source, name, now_secs) {
            warn!(%source, until = ban.until, strikes = ban.strikes,
                "scan (many unknown users or domains): source banned");
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
        for table in [&self.by_source, &self.by_username] {
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .purge(now_secs, window);
        }
        self.bans.purge(now_secs);
    }
}

/// What makes a retransmission of the same request: its method and top Via branch.
fn retransmission_key(msg: &Message) -> u64 {
    let via = msg.top_via().ok();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(msg.method().map_or("", |m| m.as_str()).as_bytes());
    h.update(&[0]);
    h.update(
        via.as_ref()
            .and_then(|v| v.branch())
            .unwrap_or("")
            .as_bytes(),
    );
    h.digest()
}

/// The digest `uri` names the Request-URI: the same text, or the same URI once case of
/// scheme and host and the order of parameters are set aside.
fn same_uri(request_uri: &str, digest_uri: &str) -> bool {
    if request_uri == digest_uri {
        return true;
    }
    let norm = |u: &str| {
        let mut parts: Vec<String> = u.split(';').map(str::to_ascii_lowercase).collect();
        if parts.len() > 1 {
            parts[1..].sort();
        }
        parts
    };
    norm(request_uri) == norm(digest_uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchyard_sip::digest::{expected_response, ha1};

    const DOMAIN: &str = "acme.test";

    fn entry() -> TenantEntry {
        let tenant = crate::directory::test_tenant("t1", DOMAIN, "shared");
        let ext = Extension {
            id: "e1".into(),
            tenant_id: "t1".into(),
            range_id: "r1".into(),
            number: 1001,
            display_name: String::new(),
            username: "1001".into(),
            ha1_md5: ha1(Algorithm::Md5, "1001", DOMAIN, "secret-1001"),
            ha1_sha256: ha1(Algorithm::Sha256, "1001", DOMAIN, "secret-1001"),
            voicemail: false,
            max_registrations: 2,
            created_at: 0,
            forward_always: None,
            forward_busy: None,
            forward_no_answer: None,
            no_answer_seconds: 20,
            caller_id: None,
        };
        TenantEntry::new(tenant, vec![ext])
    }

    fn auth() -> Authenticator {
        Authenticator::new(
            Nonces::new(b"secret", 300),
            FailurePolicy::default(),
            Arc::new(Bans::new(300, 3600, Vec::new())),
        )
        .with_algorithms(vec![Algorithm::Md5])
    }

    fn nonce_of(challenge: &str) -> String {
        let start = challenge.find("nonce=\"").unwrap() + 7;
        challenge[start..start + challenge[start..].find('"').unwrap()].to_owned()
    }

    /// An INVITE with Proxy-Authorization answering `nonce`.
    fn invite(branch: &str, nonce: &str, nc: &str, uri: &str, qop: bool) -> Message {
        let h = ha1(Algorithm::Md5, "1001", DOMAIN, "secret-1001");
        let cnonce = "abc";
        let qop_part = qop.then_some((nc, cnonce, "auth"));
        let response = expected_response(Algorithm::Md5, &h, nonce, "INVITE", uri, qop_part);
        let qop_text = if qop {
            format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\"")
        } else {
            String::new()
        };
        let text = format!(
            "INVITE sip:1002@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\nMax-Forwards: 70\r\nTo: <sip:1002@{DOMAIN}>\r\nFrom: <sip:1001@{DOMAIN}>;tag=f\r\nCall-ID: c1\r\nCSeq: 2 INVITE\r\nProxy-Authorization: Digest username=\"1001\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5{qop_text}\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse_datagram(Bytes::from(text)).unwrap()
    }

    const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 99));

    fn check(a: &Authenticator, e: &TenantEntry, m: &Message, source: IpAddr) -> AuthOutcome {
        a.check(e, m, HeaderName::ProxyAuthorization, "1001", source, 1000)
    }

    #[test]
    fn a_retransmission_passes_again_but_a_replay_is_challenged() {
        let (a, e) = (auth(), entry());
        let nonce = nonce_of(&a.challenges(DOMAIN, SOURCE, false, 1000)[0]);
        let uri = format!("sip:1002@{DOMAIN}");
        let first = invite("z9hG4bK1", &nonce, "00000001", &uri, true);
        assert!(matches!(
            check(&a, &e, &first, SOURCE),
            AuthOutcome::Authenticated(_)
        ));
        assert!(
            matches!(check(&a, &e, &first, SOURCE), AuthOutcome::Authenticated(_)),
            "the same request again (a retransmission) reaches its transaction"
        );
        let replay = invite("z9hG4bK2", &nonce, "00000001", &uri, true);
        assert!(matches!(
            check(&a, &e, &replay, SOURCE),
            AuthOutcome::Challenge { stale: false }
        ));
        let next = invite("z9hG4bK3", &nonce, "00000002", &uri, true);
        assert!(matches!(
            check(&a, &e, &next, SOURCE),
            AuthOutcome::Authenticated(_)
        ));
    }

    #[test]
    fn nonces_are_bound_to_their_source_and_the_digest_rules_are_enforced() {
        let (a, e) = (auth(), entry());
        let nonce = nonce_of(&a.challenges(DOMAIN, SOURCE, false, 1000)[0]);
        let uri = format!("sip:1002@{DOMAIN}");
        // From another address, the nonce is not ours: a fresh challenge, no failure.
        let m = invite("z9hG4bK1", &nonce, "00000001", &uri, true);
        assert!(matches!(
            check(&a, &e, &m, ELSEWHERE),
            AuthOutcome::Challenge { stale: false }
        ));
        // RFC 2069 responses (no qop) are refused.
        let m = invite("z9hG4bK2", &nonce, "00000001", &uri, false);
        assert!(matches!(
            check(&a, &e, &m, SOURCE),
            AuthOutcome::BadRequest(_)
        ));
        // The digest uri must be the Request-URI.
        let m = invite("z9hG4bK3", &nonce, "00000001", "sip:9999@acme.test", true);
        assert!(matches!(
            check(&a, &e, &m, SOURCE),
            AuthOutcome::BadRequest(_)
        ));
        assert!(same_uri(
            "sip:1002@acme.test;transport=udp;user=phone",
            "SIP:1002@ACME.test;user=phone;transport=udp"
        ));
    }
}
