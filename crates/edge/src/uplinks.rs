//! Registrations we keep with carriers that want one (RFC 3261 §10, as a UAC): a
//! REGISTER from the edge's public UDP socket to the carrier's registrar, the digest
//! challenge answered with the carrier's credentials, refreshed at half the granted
//! time, retried with a growing pause after a failure. Calls then come from the
//! registrar's address to the Contact we registered (`sip:USERNAME@our-public-socket`),
//! with the number they are for in `To`.
//!
//! Sans-I/O like the transactions it rides on: the edge's loop hands it the carriers'
//! specs ([`Uplinks::update`]), asks what is due ([`Uplinks::due`]), starts each
//! REGISTER as a client transaction of its own layer and reports the answers back
//! ([`Uplinks::on_response`], [`Uplinks::on_failure`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_sip::build::RequestBuilder;
use switchyard_sip::transaction::TxId;
use switchyard_sip::{HeaderName, Message, Method};
use tracing::{info, warn};

/// The first pause after a failed registration; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(5);
const MAX_PAUSE: Duration = Duration::from_secs(300);
/// Refreshes never come sooner than this after a success (a registrar granting a few
/// seconds would otherwise be asked again at once).
const MIN_REFRESH: Duration = Duration::from_secs(5);

/// One carrier's registration, as configured (its registrar resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSpec {
    pub carrier: String,
    /// The registrar's host as configured (the Request-URI's and the AoR's host).
    pub domain: String,
    pub registrar: SocketAddr,
    pub username: String,
    pub password: String,
    pub expires: u32,
}

/// A REGISTER to start as a client transaction: from `local` to `registrar`.
#[derive(Debug)]
pub struct Outgoing {
    pub carrier: String,
    pub request: Message,
    pub local: SocketAddr,
    pub registrar: SocketAddr,
}

#[derive(Debug)]
struct Uplink {
    spec: UplinkSpec,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// The public socket the registration is kept from (its Contact).
    local: Option<SocketAddr>,
    in_flight: Option<TxId>,
    /// The challenge of the current attempt was answered (a second one fails it).
    answered_challenge: bool,
    /// Seconds to ask for (a `423` raises it).
    asking: u32,
    next_at: Instant,
    registered_until: Option<Instant>,
    failures: u32,
}

/// Every carrier registration of one edge.
#[derive(Debug, Default)]
pub struct Uplinks {
    by_carrier: BTreeMap<String, Uplink>,
    by_tx: HashMap<TxId, String>,
}

impl Uplinks {
    pub fn new() -> Uplinks {
        Uplinks::default()
    }

    /// The carriers' registrations as configured now: new ones start at once, changed
    /// ones start again, removed ones are forgotten.
    pub fn update(&mut self, specs: &[UplinkSpec], now: Instant) {
        self.by_carrier
            .retain(|carrier, u| specs.iter().any(|s| &s.carrier == carrier && *s == u.spec));
        self.by_tx
            .retain(|_, carrier| self.by_carrier.contains_key(carrier));
        for spec in specs {
            self.by_carrier
                .entry(spec.carrier.clone())
                .or_insert_with(|| Uplink {
                    spec: spec.clone(),
                    call_id: format!("{}@sy-uplink", random_hex(12)),
                    from_tag: random_hex(8),
                    cseq: 0,
                    local: None,
                    in_flight: None,
                    answered_challenge: false,
                    asking: spec.expires,
                    next_at: now,
                    registered_until: None,
                    failures: 0,
                });
        }
    }

    /// REGISTERs due now, each from the public socket `local_for` gives for the
    /// registrar's address family (none: that carrier waits).
    pub fn due(
        &mut self,
        now: Instant,
        local_for: impl Fn(SocketAddr) -> Option<SocketAddr>,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for uplink in self.by_carrier.values_mut() {
            if uplink.in_flight.is_some() || uplink.next_at > now {
                continue;
            }
            let Some(local) = local_for(uplink.spec.registrar) else {
                uplink.next_at = now + MAX_PAUSE;
                warn!(
                    carrier = uplink.spec.carrier,
                    "no public UDP socket of the registrar's address family"
                );
                continue;
            };
            uplink.local = Some(local);
            uplink.answered_challenge = false;
            out.push(uplink.register(None));
        }
        out
    }

    /// The REGISTER of `carrier` left as transaction `tx`.
    pub fn sent(&mut self, carrier: &str, tx: TxId) {
        if let Some(u) = self.by_carrier.get_mut(carrier) {
            u.in_flight = Some(tx);
            self.by_tx.insert(tx, carrier.to_owned());
        }
    }

    /// Whether `tx` is one of ours.
    pub fn owns(&self, tx: TxId) -> bool {
        self.by_tx.contains_key(&tx)
    }

    /// An answer to one of our REGISTERs: a REGISTER with credentials to send after a
    /// challenge, or nothing.
    pub fn on_response(&mut self, tx: TxId, msg: &Message, now: Instant) -> Option<Outgoing> {
        let status = msg.status()?;
        if status < 200 {
            return None;
        }
        let carrier = self.by_tx.remove(&tx)?;
        let uplink = self.by_carrier.get_mut(&carrier)?;
        uplink.in_flight = None;
        match status {
            200..=299 => {
                let granted = uplink.granted(msg).max(1);
                let refresh = Duration::from_secs(u64::from(granted / 2)).max(MIN_REFRESH);
                if uplink.registered_until.is_none() || uplink.failures > 0 {
                    info!(carrier, granted, "registered to the carrier");
                }
                uplink.registered_until = Some(now + Duration::from_secs(u64::from(granted)));
                uplink.next_at = now + refresh;
                uplink.failures = 0;
                None
            }
            401 | 407 if !uplink.answered_challenge => {
                let challenge = if status == 401 {
                    HeaderName::WwwAuthenticate
                } else {
                    HeaderName::ProxyAuthenticate
                };
                let uri = uplink.request_uri();
                let answer = msg.header_rows(challenge).find_map(|c| {
                    switchyard_sip::digest::answer_challenge(
                        c,
                        "REGISTER",
                        &uri,
                        &uplink.spec.username,
                        &uplink.spec.password,
                        &random_hex(8),
                    )
                });
                let Some(value) = answer else {
                    uplink.failed(now, status, "challenge cannot be answered");
                    return None;
                };
                uplink.answered_challenge = true;
                let name = if status == 401 {
                    "Authorization"
                } else {
                    "Proxy-Authorization"
                };
                Some(uplink.register(Some((name, value))))
            }
            423 => {
                // RFC 3261 §10.2.8: ask again for at least the registrar's minimum.
                let min = msg
                    .header(HeaderName::MinExpires)
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min.filter(|m| *m > uplink.asking && *m <= 86_400) {
                    Some(min) => {
                        uplink.asking = min;
                        uplink.answered_challenge = false;
                        uplink.next_at = now;
                    }
                    None => uplink.failed(now, status, "interval too brief"),
                }
                None
            }
            _ => {
                uplink.failed(now, status, msg.reason().unwrap_or(""));
                None
            }
        }
    }

    /// One of our REGISTERs got no answer (timeout or transport error).
    pub fn on_failure(&mut self, tx: TxId, now: Instant) {
        let Some(carrier) = self.by_tx.remove(&tx) else {
            return;
        };
        if let Some(u) = self.by_carrier.get_mut(&carrier) {
            u.in_flight = None;
            u.failed(now, 408, "no answer from the registrar");
        }
    }

    /// Each carrier and whether its registration is current at `now`.
    pub fn status(&self, now: Instant) -> Vec<(String, bool)> {
        self.by_carrier
            .iter()
            .map(|(c, u)| (c.clone(), u.registered_until.is_some_and(|t| t > now)))
            .collect()
    }

    /// When the next REGISTER is due (none in flight).
    pub fn next_due(&self) -> Option<Instant> {
        self.by_carrier
            .values()
            .filter(|u| u.in_flight.is_none())
            .map(|u| u.next_at)
            .min()
    }
}

impl Uplink {
    fn request_uri(&self) -> String {
        let host = bracketed(&self.spec.domain);
        match self.spec.registrar.port() {
            5060 => format!("sip:{host}"),
            port => format!("sip:{host}:{port}"),
        }
    }

    /// Our next REGISTER (a new CSeq and branch), with credentials if given.
    fn register(&mut self, credentials: Option<(&str, String)>) -> Outgoing {
        self.cseq += 1;
        let local = self.local.expect("a socket was chosen");
        let aor = format!(
            "<sip:{}@{}>",
            self.spec.username,
            bracketed(&self.spec.domain)
        );
        let mut b = RequestBuilder::new(Method::Register, self.request_uri())
            .header(
                "Via",
                format!("SIP/2.0/UDP {local};branch=z9hG4bK{};rport", random_hex(10)),
            )
            .header("Max-Forwards", "70")
            .header("From", format!("{aor};tag={}", self.from_tag))
            .header("To", aor)
            .header("Call-ID", self.call_id.clone())
            .header("CSeq", format!("{} REGISTER", self.cseq))
            .header("Contact", format!("<sip:{}@{local}>", self.spec.username))
            .header("Expires", self.asking.to_string())
            .header("User-Agent", "switchyard");
        if let Some((name, value)) = credentials {
            b = b.header(name, value);
        }
        let request = Message::parse_datagram(b.body("", Bytes::new()).build())
            .expect("REGISTERs we build parse");
        Outgoing {
            carrier: self.spec.carrier.clone(),
            request,
            local,
            registrar: self.spec.registrar,
        }
    }

    /// The time a 2xx granted our Contact: its `expires` parameter, else the Expires
    /// header, else what we asked for.
    fn granted(&self, msg: &Message) -> u32 {
        let ours = format!("@{}", self.local.map(|l| l.to_string()).unwrap_or_default());
        let from_contact = msg.contacts().flatten().find_map(|c| {
            if !c.uri_str.contains(&ours) {
                return None;
            }
            c.params
                .get("expires")
                .flatten()
                .and_then(|v| v.parse::<u32>().ok())
        });
        from_contact
            .or_else(|| {
                msg.header(HeaderName::Expires)
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(self.asking)
    }

    fn failed(&mut self, now: Instant, status: u16, reason: &str) {
        self.failures += 1;
        let pause = FIRST_PAUSE
            .saturating_mul(1 << self.failures.min(8).saturating_sub(1))
            .min(MAX_PAUSE);
        warn!(
            carrier = self.spec.carrier,
            status,
            reason,
            retry_in_secs = pause.as_secs(),
            "registration to the carrier failed"
        );
        self.next_at = now + pause;
        self.answered_challenge = false;
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `2 * n` random hex digits.
fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    switchyard_sip::digest::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sip::build::ResponseBuilder;
    use switchyard_sip::digest::{Algorithm, Credentials, ha1};

    fn spec() -> UplinkSpec {
        UplinkSpec {
            carrier: "pstn".into(),
            domain: "carrier.example".into(),
            registrar: "127.0.0.9:5070".parse().unwrap(),
            username: "pbx-1".into(),
            password: "s3cret".into(),
            expires: 600,
        }
    }

    fn public() -> SocketAddr {
        "127.0.0.1:5060".parse().unwrap()
    }

    fn answer(to: &Outgoing, status: u16, extra: &[(&str, &str)]) -> Message {
        let mut b = ResponseBuilder::for_request(&to.request, status, "Answer", "r");
        for (name, value) in extra {
            b = b.header(name, *value);
        }
        Message::parse_datagram(b.build()).unwrap()
    }

    /// Sends what is due and names each REGISTER with a new transaction id.
    fn due(u: &mut Uplinks, now: Instant, next_tx: &mut u64) -> Vec<(TxId, Outgoing)> {
        u.due(now, |_| Some(public()))
            .into_iter()
            .map(|out| {
                *next_tx += 1;
                let tx = TxId(*next_tx);
                u.sent(&out.carrier, tx);
                (tx, out)
            })
            .collect()
    }

    #[test]
    fn a_registration_answers_the_challenge_and_refreshes_at_half_the_granted_time() {
        let (mut u, mut n, t0) = (Uplinks::new(), 0, Instant::now());
        u.update(&[spec()], t0);
        let mut sent = due(&mut u, t0, &mut n);
        assert_eq!(sent.len(), 1);
        let (tx, first) = sent.pop().unwrap();
        assert_eq!(
            first.request.request_uri_str().unwrap(),
            "sip:carrier.example:5070"
        );
        assert_eq!(first.registrar, spec().registrar);
        assert_eq!(
            first.request.header(HeaderName::Contact),
            Some("<sip:pbx-1@127.0.0.1:5060>")
        );
        assert!(due(&mut u, t0, &mut n).is_empty(), "one REGISTER in flight");

        let challenge = answer(
            &first,
            401,
            &[(
                "WWW-Authenticate",
                "Digest realm=\"carrier.example\", nonce=\"n0nce\", qop=\"auth\", algorithm=MD5",
            )],
        );
        let again = u
            .on_response(tx, &challenge, t0)
            .expect("answered with credentials");
        let creds =
            Credentials::parse(again.request.header(HeaderName::Authorization).unwrap()).unwrap();
        let key = ha1(Algorithm::Md5, "pbx-1", "carrier.example", "s3cret");
        assert!(
            creds.verify("REGISTER", &key),
            "the registrar accepts the answer"
        );
        assert_eq!(creds.uri, "sip:carrier.example:5070");
        assert_eq!(again.request.cseq().unwrap().seq, 2);
        assert_eq!(again.request.call_id().ok(), first.request.call_id().ok());
        n += 1;
        u.sent("pstn", TxId(n));
        // A second challenge to the answered REGISTER fails the attempt.
        let ok = answer(
            &again,
            200,
            &[("Contact", "<sip:pbx-1@127.0.0.1:5060>;expires=120")],
        );
        assert!(u.on_response(TxId(n), &ok, t0).is_none());
        assert_eq!(u.status(t0), vec![("pstn".to_owned(), true)]);
        assert_eq!(
            u.status(t0 + Duration::from_secs(121)),
            vec![("pstn".to_owned(), false)]
        );

        // Refreshed at half of the 120 s granted.
        assert!(due(&mut u, t0 + Duration::from_secs(59), &mut n).is_empty());
        let refresh = due(&mut u, t0 + Duration::from_secs(60), &mut n);
        assert_eq!(refresh.len(), 1);
        assert_eq!(refresh[0].1.request.cseq().unwrap().seq, 3);
        assert!(
            refresh[0]
                .1
                .request
                .header(HeaderName::Authorization)
                .is_none()
        );
    }

    #[test]
    fn failures_pause_longer_each_time_and_a_brief_interval_is_raised() {
        let (mut u, mut n, t0) = (Uplinks::new(), 0, Instant::now());
        u.update(&[spec()], t0);
        let (tx, out) = due(&mut u, t0, &mut n).pop().unwrap();
        assert!(u.on_response(tx, &answer(&out, 403, &[]), t0).is_none());
        assert!(due(&mut u, t0 + Duration::from_millis(4_999), &mut n).is_empty());
        let (tx, _) = due(&mut u, t0 + Duration::from_secs(5), &mut n)
            .pop()
            .unwrap();
        u.on_failure(tx, t0 + Duration::from_secs(5));
        assert!(due(&mut u, t0 + Duration::from_secs(14), &mut n).is_empty());
        let (tx, out) = due(&mut u, t0 + Duration::from_secs(15), &mut n)
            .pop()
            .unwrap();
        // 423: asked again at once for the registrar's minimum.
        let t = t0 + Duration::from_secs(15);
        assert!(
            u.on_response(tx, &answer(&out, 423, &[("Min-Expires", "1200")]), t)
                .is_none()
        );
        let (_, out) = due(&mut u, t, &mut n).pop().unwrap();
        assert_eq!(out.request.header(HeaderName::Expires), Some("1200"));
        assert_eq!(u.status(t), vec![("pstn".to_owned(), false)]);
    }

    #[test]
    fn a_changed_or_removed_carrier_is_followed() {
        let (mut u, mut n, t0) = (Uplinks::new(), 0, Instant::now());
        u.update(&[spec()], t0);
        let (tx, _) = due(&mut u, t0, &mut n).pop().unwrap();
        let changed = UplinkSpec {
            password: "new".into(),
            ..spec()
        };
        u.update(std::slice::from_ref(&changed), t0);
        assert!(!u.owns(tx), "the old attempt is forgotten");
        assert_eq!(due(&mut u, t0, &mut n).len(), 1, "registered again at once");
        u.update(&[], t0);
        assert!(u.status(t0).is_empty());
        assert!(due(&mut u, t0, &mut n).is_empty());
    }
}
