//! Stateless forwarding between phones and core nodes (RFC 3261 §16.11).
//!
//! ```text
//!  phone ──▶ public listener ─┐                    ┌─▶ core (chosen by HRW on Call-ID)
//!                              ├─ edge (this) ─────┤
//!  phone ◀── public listener ◀┘   internal socket ◀┘◀─ core (Route: <sip:TOKEN@internal;lr>)
//! ```
//!
//! - From a phone: internal headers are stripped, Max-Forwards decremented, our own Route
//!   entries popped; an initial request is authenticated (`407`, realm = tenant domain),
//!   tagged with the tenant and the caller (`X-Sy-Tenant`, `X-Sy-Caller`) and
//!   Record-Routed twice (RFC 5658: a core-facing entry over a phone-facing one, both
//!   carrying the phone's flow token); it goes to the core node that rendezvous hashing of
//!   its Call-ID picks, in dialog or not, so a dialog always reaches the same core.
//! - From a core: the flow token in the Route the core put there (from the registration,
//!   or from our Record-Route) says which phone, over which connection. A call out
//!   through a trunk names the trunk's address instead (`sy-trunk` in a Route to us); it
//!   leaves from our public UDP socket and we Record-Route it like a phone's call, so the
//!   carrier's in-dialog requests come back through us.
//! - Responses: our Via carries the token of the previous hop; it is popped and the
//!   response goes back there. Nothing is kept per call.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use switchyard_sip::HeaderName;
use switchyard_sip::Message;
use switchyard_sip::Method;
use switchyard_sip::build::{Editor, ResponseBuilder};
use switchyard_sip::headers::{NameAddr, Via};
use switchyard_sip::seal::{SEAL_HEADER, SealKey, Sealed};
use switchyard_sip_net::{FlowId, Target};
use switchyard_types::{NodeId, SHARED_POOL};
use tracing::info;

use switchyard_state::calls::{Admission, CallLimits};
use switchyard_types::TenantId;

use crate::auth::{AuthOutcome, Authenticator};
use crate::calls::NewCall;
use crate::carriers::Carriers;
use crate::directory::Directory;
use crate::hrw::{WeightedNode, pick_by};
use crate::registrar::Ingress;
use crate::token::{FlowToken, TRANSPORTS, TokenKey};

/// Internal headers the edge sets for the core; never accepted from outside.
pub const TENANT_HEADER: &str = "X-Sy-Tenant";
pub const CALLER_HEADER: &str = "X-Sy-Caller";
/// Set on a call from a carrier (its name): the caller is a PSTN number, not an extension.
pub const CARRIER_HEADER: &str = "X-Sy-Carrier";
/// The parameter of a core's Route to us that names a trunk's address (`IP:port`).
pub const TRUNK_ROUTE_PARAM: &str = "sy-trunk";

/// Prefix of the To tags of the edge's own stateless answers, to absorb their ACKs.
const OWN_TAG_PREFIX: &str = "syx";

/// A core node the edge may send dialogs to.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreNode {
    pub node: WeightedNode,
    pub addr: SocketAddr,
    /// The pool it serves: the tenants placed there (and, when it is the shared pool,
    /// every tenant whose own pool has no live core).
    pub pool: String,
}

impl CoreNode {
    /// A core of the shared pool.
    pub fn new(id: &str, addr: SocketAddr) -> CoreNode {
        CoreNode::in_pool(id, addr, SHARED_POOL)
    }

    pub fn in_pool(id: &str, addr: SocketAddr, pool: &str) -> CoreNode {
        CoreNode {
            node: WeightedNode {
                id: NodeId::new(id),
                weight: 1.0,
            },
            addr,
            pool: pool.to_owned(),
        }
    }
}

/// The cores a tenant placed on `pool` may get: its pool's, else the shared pool's when
/// its pool has none live; a shared tenant never gets a dedicated pool's cores.
fn cores_of_pool<'a>(candidates: &[&'a CoreNode], pool: &str) -> Vec<&'a CoreNode> {
    let of = |p: &str| -> Vec<&'a CoreNode> {
        candidates.iter().copied().filter(|c| c.pool == p).collect()
    };
    match of(pool) {
        own if !own.is_empty() || pool == SHARED_POOL => own,
        _ => of(SHARED_POOL),
    }
}

/// What to do with a message.
#[derive(Debug)]
pub enum Verdict {
    Forward {
        target: Target,
        bytes: Bytes,
    },
    /// A new call: forward it once the tenant's caps admit it.
    Admit {
        call: NewCall,
        target: Target,
        bytes: Bytes,
    },
    /// Answer the request statelessly where §18.2.2 says.
    Answer {
        status: u16,
        bytes: Bytes,
    },
    Drop(String),
}

/// The cores an edge knows, and which of them are draining (no new calls; their
/// dialogs still reach them). Fixed from the configuration, or replaced as the cluster's
/// membership in Redis changes; each message reads one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Cores {
    inner: Arc<std::sync::RwLock<Arc<CoreList>>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreList {
    pub nodes: Vec<CoreNode>,
    pub draining: std::collections::HashSet<SocketAddr>,
}

impl CoreList {
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.nodes.iter().any(|c| c.addr == addr)
    }
}

impl Cores {
    pub fn fixed(nodes: Vec<CoreNode>) -> Cores {
        Cores {
            inner: Arc::new(std::sync::RwLock::new(Arc::new(CoreList {
                nodes,
                draining: Default::default(),
            }))),
        }
    }

    pub fn snapshot(&self) -> Arc<CoreList> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the list; true when it changed.
    pub fn replace(&self, list: CoreList) -> bool {
        let mut current = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if **current == list {
            return false;
        }
        *current = Arc::new(list);
        true
    }
}

/// The address the Request-URI names, if it is an IP literal.
fn named_addr(msg: &Message) -> Option<SocketAddr> {
    let uri = msg.request_uri()?.ok()?;
    let sip = uri.as_sip()?;
    Some(SocketAddr::new(
        split_host(sip.host)?,
        sip.port.unwrap_or(5060),
    ))
}

/// The core node whose address the Request-URI names, if any.
fn core_named_by<'a>(msg: &Message, cores: &'a CoreList) -> Option<&'a CoreNode> {
    let addr = named_addr(msg)?;
    cores.nodes.iter().find(|c| c.addr == addr)
}

/// The forwarding logic of one edge node.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub directory: Directory,
    pub auth: Arc<Authenticator>,
    pub tokens: TokenKey,
    /// The socket cores talk to.
    pub internal: SocketAddr,
    pub cores: Cores,
    /// The address phones see when a listener is bound to the unspecified address.
    pub advertise: Option<IpAddr>,
    /// Which cores answer pings; without it every core counts as healthy.
    pub health: Option<Arc<crate::health::CoreHealth>>,
    /// The operator's carriers and the numbers their calls are for.
    pub carriers: Carriers,
    /// Our public UDP sockets: calls out through trunks leave from the first one of the
    /// trunk's address family.
    pub public_udp: Vec<SocketAddr>,
    /// Seals what we tell a core about a call (`X-Sy-Seal`), with the cluster secret.
    pub seal: SealKey,
}

impl Proxy {
    /// The `X-Sy-Seal` value for a request we vouch for.
    fn seal_for(
        &self,
        msg: &Message,
        tenant: &str,
        caller: &str,
        carrier: &str,
        now_secs: u64,
    ) -> String {
        self.seal.seal(
            &Sealed {
                call_id: msg.call_id().unwrap_or_default(),
                cseq: msg.header(HeaderName::CSeq).unwrap_or_default().trim(),
                tenant,
                caller,
                carrier,
            },
            now_secs,
        )
    }

    /// The address phones see for one of our sockets.
    pub fn visible_addr(&self, addr: SocketAddr) -> SocketAddr {
        if !addr.ip().is_unspecified() {
            return addr;
        }
        let ip = self.advertise.unwrap_or(match addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
        SocketAddr::new(ip, addr.port())
    }

    pub fn is_from_core(&self, ingress: &Ingress) -> bool {
        ingress.local == self.internal && self.cores.snapshot().contains(ingress.source)
    }

    fn stateless_answer(
        &self,
        msg: &Message,
        ingress: &Ingress,
        status: u16,
        reason: &str,
    ) -> ResponseBuilder {
        let key = format!(
            "{}|{}",
            msg.call_id().unwrap_or_default(),
            msg.header(HeaderName::Via).unwrap_or_default()
        );
        let d = Sha256::digest(key.as_bytes());
        let tag: String = std::iter::once(OWN_TAG_PREFIX.to_owned())
            .chain(d[..6].iter().map(|b| format!("{b:02x}")))
            .collect();
        ResponseBuilder::for_request(msg, status, reason, &tag).stamp_top_via(ingress.source)
    }

    fn answer(&self, msg: &Message, ingress: &Ingress, status: u16, reason: &str) -> Verdict {
        if msg.method() == Some(&Method::Ack) {
            return Verdict::Drop(format!("ACK not forwarded: {reason}"));
        }
        Verdict::Answer {
            status,
            bytes: self.stateless_answer(msg, ingress, status, reason).build(),
        }
    }

    /// The answer to a caller whose call was still being set up on a core that died:
    /// `503`, so the phone stops ringing back and a new attempt reaches a live core.
    pub fn core_lost(&self, msg: &Message, ingress: &Ingress) -> Verdict {
        self.answer(msg, ingress, 503, "Core Lost")
    }

    /// The answer to a new call its tenant's caps refused: `486` at the calls-in-progress
    /// cap, `503` with `Retry-After` above the call rate, the reason naming the limit.
    pub fn refuse(&self, msg: &Message, ingress: &Ingress, admission: Admission) -> Verdict {
        let (status, reason, retry_after) = match admission {
            Admission::CallLimit(n) => (
                486,
                format!("Tenant call limit reached (max_calls {n})"),
                None,
            ),
            Admission::RateLimit {
                limit,
                retry_after_ms,
            } => (
                503,
                format!("Tenant call rate limit reached (calls_per_second {limit})"),
                Some(retry_after_ms.div_ceil(1000).clamp(1, 3600)),
            ),
            Admission::Admitted | Admission::AlreadyAdmitted => {
                return Verdict::Drop("admitted calls are not refused".into());
            }
        };
        let mut b = self.stateless_answer(msg, ingress, status, &reason);
        if let Some(secs) = retry_after {
            b = b.header("Retry-After", secs.to_string());
        }
        Verdict::Answer {
            status,
            bytes: b.build(),
        }
    }

    /// Decides where a request goes.
    pub async fn request(&self, msg: &Message, ingress: &Ingress, now_secs: u64) -> Verdict {
        let method = msg.method().cloned().unwrap_or(Method::Ack);
        let to_tag = msg
            .to_header()
            .ok()
            .and_then(|t| t.tag().map(str::to_owned));
        if method == Method::Ack
            && to_tag
                .as_deref()
                .is_some_and(|t| t.starts_with(OWN_TAG_PREFIX))
        {
            return Verdict::Drop("ACK for our own answer absorbed".into());
        }
        let Some(mut edit) = Editor::new(msg)
            .remove_other(TENANT_HEADER)
            .remove_other(CALLER_HEADER)
            .remove_other(CARRIER_HEADER)
            .remove_other(SEAL_HEADER)
            .decrement_max_forwards()
        else {
            return self.answer(msg, ingress, 483, "Too Many Hops");
        };
        // Pop every Route entry that names us, keeping the flow token it carries (or the
        // trunk address a core named).
        let mut route_token = None;
        let mut trunk = None;
        for value in msg.values(HeaderName::Route) {
            let Ok(na) = NameAddr::parse_header(value, "Route") else {
                break;
            };
            let Some(uri) = na.uri().ok().and_then(|u| u.as_sip().copied()) else {
                break;
            };
            let token = uri.user.and_then(|u| self.tokens.decode(u));
            let addressed_to_us = token.is_some()
                || split_host(uri.host).is_some_and(|ip| {
                    ip == self.visible_addr(ingress.local).ip() || ip == self.internal.ip()
                }) && uri.port.unwrap_or(5060) == ingress.local.port();
            if !addressed_to_us {
                break;
            }
            route_token = route_token.or(token);
            trunk = trunk.or_else(|| {
                uri.params
                    .get(TRUNK_ROUTE_PARAM)
                    .flatten()
                    .and_then(|v| v.parse::<SocketAddr>().ok())
            });
            edit = edit.pop_route();
        }
        let initial = to_tag.is_none();
        if self.is_from_core(ingress) {
            let dest = match (route_token, trunk) {
                (Some(token), _) => token,
                (None, Some(addr)) => match self.trunk_token(addr) {
                    Ok(token) => token,
                    Err(reason) => return self.answer(msg, ingress, 403, reason),
                },
                (None, None) => return self.answer(msg, ingress, 404, "No route to the target"),
            };
            let via_local = self.visible_addr(dest.local);
            if initial && dialog_creating(&method) {
                let token = self.tokens.encode(&dest);
                // The phone-facing entry on top: the phone (UAS) uses the route set in
                // order, the core (UAC) reversed (RFC 3261 §12.1).
                edit = edit
                    .push_record_route(&route_uri(&token, via_local, dest.transport))
                    .push_record_route(&format!("<sip:{token}@{};lr>", self.internal));
            }
            let back = self.tokens.encode(&ingress.token());
            edit = edit.push_via(&format!(
                "SIP/2.0/{} {via_local};branch={};sy={back}",
                TRANSPORTS[usize::from(dest.transport)],
                branch(msg)
            ));
            return Verdict::Forward {
                target: token_target(&dest),
                bytes: edit.write(),
            };
        }
        // From a phone. A request inside a dialog must come back through the route we
        // set up: our signed Record-Route, now its Route. Without it, it reaches no core
        // (knowing a Call-ID is not enough to touch a call), and the one stateless answer
        // is no larger than what arrived.
        // ACK is the exception: the ACK of a failed INVITE carries no Route (there was no
        // dialog) and must reach the INVITE's transaction at the core; an ACK is never
        // answered, and the core matches it by transaction or by both dialog tags.
        if !initial && route_token.is_none() && method != Method::Ack {
            return self.answer(msg, ingress, 481, "Call/Transaction Does Not Exist");
        }
        // The token leading back to it goes in our Via and, for a new dialog, in our
        // Record-Route: signed once.
        let back_token = ingress.token();
        let back = self.tokens.encode(&back_token);
        let Ok(call_id) = msg.call_id() else {
            return self.answer(msg, ingress, 400, "Missing Call-ID");
        };
        // In a dialog, the Request-URI is the Contact of the core that owns the dialog
        // (its own Call-ID on leg B need not hash to it); otherwise rendezvous hashing.
        // A dead owner's dialogs go where hashing over the live cores sends them.
        let cores = self.cores.snapshot();
        let live: Vec<&CoreNode> = match &self.health {
            Some(h) => h.choose(&cores.nodes, std::time::Instant::now()),
            None => cores.nodes.iter().collect(),
        };
        let owner = if initial {
            None
        } else {
            core_named_by(msg, &cores).filter(|c| live.iter().any(|x| x.addr == c.addr))
        };
        // New dialogs avoid draining cores (unless every live core drains).
        let accepting: Vec<&CoreNode> = live
            .iter()
            .copied()
            .filter(|c| !cores.draining.contains(&c.addr))
            .collect();
        let candidates = if accepting.is_empty() {
            live
        } else {
            accepting
        };
        let carrier = self.carriers.carrier_of(ingress.source.ip());
        // Outside a dialog: the Call-ID hashed over the cores of the tenant's pool, so a
        // tenant's calls spread over them (a CANCEL, and the ACK of a failure, follow
        // their INVITE). Calls that meet later, an attended transfer's, are brought
        // together by the cores themselves (one asks the other for its call).
        let by_call_id = || {
            let pool = self
                .tenant_key(msg, carrier.as_deref())
                .map(|tenant| self.placement_of(&tenant))
                .unwrap_or_else(|| SHARED_POOL.to_owned());
            pick_by(call_id, cores_of_pool(&candidates, &pool), |c| &c.node)
        };
        // In a dialog whose core is gone (dead, or out of the membership): every request
        // of every dialog it held goes to one successor, picked by the dead core's
        // address, so both legs of a call meet on the core that takes it over.
        let successor = || {
            let gone = named_addr(msg).filter(|_| !initial && owner.is_none())?;
            pick_by(&gone.to_string(), candidates.iter().copied(), |c| &c.node)
        };
        let Some(core) = owner.or_else(successor).or_else(by_call_id) else {
            return self.answer(msg, ingress, 503, "No core node available");
        };
        let mut new_call = None;
        if let Some(carrier) = carrier.filter(|_| initial && method == Method::Invite) {
            // From the PSTN: the number decides the tenant, and the number's tenant's
            // caps apply, as for its own phones' calls.
            let (dialled, to_our_contact) = self.dialled_by_carrier(&carrier, msg);
            let Some((_, domain)) = self.carriers.holder_of(&dialled) else {
                info!(carrier, dialled, "carrier call to a number not in service");
                return self.answer(msg, ingress, 404, "Number not in service");
            };
            let entry = match self.directory.active_tenant(Some(&domain)).await {
                Ok(t) => t,
                Err((status, reason)) => return self.answer(msg, ingress, status, reason),
            };
            let tenant = &entry.tenant;
            let from = msg.from_header().ok();
            let caller = from
                .and_then(|f| f.uri().ok())
                .and_then(|u| u.as_sip().and_then(|s| s.user.map(str::to_owned)))
                .unwrap_or_default();
            info!(tenant = %tenant.id, carrier, dialled, caller, call_id, core = %core.node.id, "carrier call to core");
            new_call = Some(new_call_of(tenant, msg, core.addr));
            if to_our_contact {
                // The core routes by the Request-URI: it names the number.
                edit = edit.set_request_uri(&format!("sip:{dialled}@{domain}"));
            }
            let seal = self.seal_for(msg, &tenant.id, &caller, &carrier, now_secs);
            edit = edit
                .add_header(TENANT_HEADER, &tenant.id)
                .add_header(CALLER_HEADER, &caller)
                .add_header(CARRIER_HEADER, &carrier)
                .add_header(SEAL_HEADER, &seal)
                .push_record_route(&format!("<sip:{back}@{};lr>", self.internal))
                .push_record_route(&route_uri(
                    &back,
                    self.visible_addr(ingress.local),
                    back_token.transport,
                ));
        } else if initial && !matches!(method, Method::Ack | Method::Cancel) {
            let domain = msg
                .request_uri()
                .and_then(|u| u.ok())
                .and_then(|u| u.as_sip().map(|s| s.host.to_owned()));
            let entry = match self.directory.active_tenant(domain.as_deref()).await {
                Ok(t) => t,
                Err((status, reason)) => {
                    if status == 404 {
                        let name = format!("@{}", domain.as_deref().unwrap_or_default());
                        self.auth.unknown_name(ingress.source.ip(), &name, now_secs);
                        // A call for one of the pool's numbers from a source that is no
                        // carrier: refused as such (and counted like any unknown name).
                        let for_a_number = msg
                            .request_uri()
                            .and_then(|u| u.ok())
                            .and_then(|u| u.as_sip().and_then(|s| s.user))
                            .is_some_and(|user| self.carriers.holder_of(user).is_some());
                        if for_a_number {
                            return self.answer(msg, ingress, 403, "Source is not a carrier");
                        }
                    }
                    return self.answer(msg, ingress, status, reason);
                }
            };
            let tenant = &entry.tenant;
            let from = msg.from_header().ok();
            let from_uri = from.and_then(|f| f.uri().ok());
            let from_sip = from_uri.as_ref().and_then(|u| u.as_sip());
            let (Some(user), Some(host)) =
                (from_sip.and_then(|s| s.user), from_sip.map(|s| s.host))
            else {
                return self.answer(
                    msg,
                    ingress,
                    403,
                    "From must name an extension of the tenant",
                );
            };
            if !host.eq_ignore_ascii_case(&tenant.domain) {
                return self.answer(msg, ingress, 403, "From domain is not the tenant's domain");
            }
            let outcome = self.auth.check(
                &entry,
                msg,
                HeaderName::ProxyAuthorization,
                user,
                ingress.source.ip(),
                now_secs,
            );
            let ext = match outcome {
                AuthOutcome::Authenticated(ext) => ext,
                AuthOutcome::Challenge { stale } => {
                    let mut b =
                        self.stateless_answer(msg, ingress, 407, "Proxy Authentication Required");
                    for c in
                        self.auth
                            .challenges(&tenant.domain, ingress.source.ip(), stale, now_secs)
                    {
                        b = b.header("Proxy-Authenticate", c);
                    }
                    return Verdict::Answer {
                        status: 407,
                        bytes: b.build(),
                    };
                }
                AuthOutcome::Forbidden(reason) => {
                    return self.answer(msg, ingress, 403, reason);
                }
                AuthOutcome::BadRequest(reason) => {
                    return self.answer(msg, ingress, 400, reason);
                }
            };
            info!(tenant = %tenant.id, caller = %ext.username, method = %method, call_id, core = %core.node.id, "forwarding to core");
            // Emergency calls go through whatever the tenant's caps say.
            let emergency = msg
                .request_uri()
                .and_then(|u| u.ok())
                .and_then(|u| u.as_sip().and_then(|s| s.user))
                .is_some_and(switchyard_store::is_emergency_number);
            if method == Method::Invite && !emergency {
                new_call = Some(new_call_of(tenant, msg, core.addr));
            }
            let seal = self.seal_for(msg, &tenant.id, &ext.username, "", now_secs);
            edit = edit
                .remove(HeaderName::ProxyAuthorization)
                .add_header(TENANT_HEADER, &tenant.id)
                .add_header(CALLER_HEADER, &ext.username)
                .add_header(SEAL_HEADER, &seal);
            if dialog_creating(&method) {
                // The core-facing entry on top: the core (UAS) uses the route set in order.
                edit = edit
                    .push_record_route(&format!("<sip:{back}@{};lr>", self.internal))
                    .push_record_route(&route_uri(
                        &back,
                        self.visible_addr(ingress.local),
                        back_token.transport,
                    ));
            }
        }
        edit = edit.push_via(&format!(
            "SIP/2.0/UDP {};branch={};sy={back}",
            self.internal,
            branch(msg)
        ));
        let target = Target::Datagram {
            local: self.internal,
            dest: core.addr,
        };
        match new_call {
            Some(call) => Verdict::Admit {
                call,
                target,
                bytes: edit.write(),
            },
            None => Verdict::Forward {
                target,
                bytes: edit.write(),
            },
        }
    }

    /// Where a request a core sends out to a trunk at `addr` goes: from our public UDP
    /// socket of that family. Never to one of the cluster's own SIP sockets (a trunk
    /// provisioned at the edge or a core would loop calls through us or reach a core
    /// from outside the edge).
    fn trunk_token(&self, addr: SocketAddr) -> Result<FlowToken, &'static str> {
        let own = |a: &SocketAddr| self.visible_addr(*a) == addr || *a == addr;
        if own(&self.internal)
            || self.public_udp.iter().any(own)
            || self.cores.snapshot().contains(addr)
        {
            return Err("Trunk address is one of the cluster's own");
        }
        let local = self
            .public_udp
            .iter()
            .find(|l| l.is_ipv4() == addr.is_ipv4())
            .ok_or("No public UDP socket of the trunk's address family")?;
        Ok(FlowToken {
            transport: 0,
            flow: 0,
            local: *local,
            remote: addr,
        })
    }

    /// What a carrier's request dials, and whether it came to the Contact we registered
    /// with that carrier (then the number is in To, not in the Request-URI).
    fn dialled_by_carrier(&self, carrier: &str, msg: &Message) -> (String, bool) {
        let user_of = |uri: Option<switchyard_sip::Uri<'_>>| {
            uri.and_then(|u| u.as_sip().and_then(|s| s.user.map(str::to_owned)))
                .unwrap_or_default()
        };
        let dialled = user_of(msg.request_uri().and_then(|u| u.ok()));
        if self.carriers.is_our_registered_user(carrier, &dialled) {
            let to = msg.to_header().ok().and_then(|t| t.uri().ok());
            (user_of(to), true)
        } else {
            (dialled, false)
        }
    }

    /// The tenant a request outside a dialog is for, whose pool's cores it may reach:
    /// the Request-URI's domain from a phone, the holder of the dialled number from a
    /// carrier (a CANCEL, or the ACK of a failure, names it as its INVITE did).
    fn tenant_key(&self, msg: &Message, carrier: Option<&str>) -> Option<String> {
        if let Some(carrier) = carrier {
            let (dialled, _) = self.dialled_by_carrier(carrier, msg);
            return self.carriers.holder_of(&dialled).map(|(_, domain)| domain);
        }
        let uri = msg.request_uri()?.ok()?;
        Some(uri.as_sip()?.host.to_ascii_lowercase())
    }

    /// The pool the tenant of `domain` is placed on, as memory knows it (the shared pool
    /// for a tenant not in memory: the hot path reads no database).
    fn placement_of(&self, domain: &str) -> String {
        match self.directory.cached(domain, std::time::Instant::now()) {
            crate::directory::Cached::Tenant(entry) => entry.tenant.placement.clone(),
            _ => SHARED_POOL.to_owned(),
        }
    }

    /// Decides where a response goes: back to the hop our top Via names.
    pub fn response(&self, msg: &Message) -> Verdict {
        let Some(via) = msg.header(HeaderName::Via).and_then(Via::parse_lenient) else {
            return Verdict::Drop("response without a Via".into());
        };
        let Some(token) = via
            .params
            .get("sy")
            .flatten()
            .and_then(|t| self.tokens.decode(t))
        else {
            return Verdict::Drop("response whose top Via is not ours".into());
        };
        Verdict::Forward {
            target: token_target(&token),
            bytes: Editor::new(msg).pop_via().write(),
        }
    }
}

fn split_host(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Methods whose initial request creates a dialog we must stay in.
fn dialog_creating(m: &Method) -> bool {
    matches!(m, Method::Invite | Method::Subscribe | Method::Refer)
}

/// The phone-facing Record-Route entry.
fn route_uri(token: &str, addr: SocketAddr, transport: u8) -> String {
    match TRANSPORTS[usize::from(transport)] {
        "UDP" => format!("<sip:{token}@{addr};lr>"),
        other => format!(
            "<sip:{token}@{addr};transport={};lr>",
            other.to_ascii_lowercase()
        ),
    }
}

/// Where a token leads: the connection if it had one, else a datagram.
pub fn token_target(t: &FlowToken) -> Target {
    if t.flow != 0 {
        Target::Flow(FlowId(t.flow))
    } else {
        Target::Datagram {
            local: t.local,
            dest: t.remote,
        }
    }
}

/// A branch for the forwarded request that is the same for retransmissions and for the
/// CANCEL of an INVITE (they share the top Via) and differs between requests (§16.11).
/// The branch of the Via the edge adds to `msg` when it forwards it.
pub(crate) fn branch(msg: &Message) -> String {
    // An ACK for a non-2xx shares the INVITE's Via too, and must match the core's INVITE
    // transaction, so the method is not part of the key.
    let key = msg.header(HeaderName::Via).unwrap_or_default();
    let d = Sha256::digest(key.as_bytes());
    let mut s = String::from("z9hG4bK-sy");
    for b in &d[..10] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The slot a new call of `tenant` takes (its caps), known by Call-ID and From tag.
fn new_call_of(tenant: &switchyard_store::Tenant, msg: &Message, core: SocketAddr) -> NewCall {
    NewCall {
        tenant: TenantId::from(tenant.id.as_str()),
        call_id: msg.call_id().unwrap_or_default().to_owned(),
        tag: msg
            .from_header()
            .ok()
            .and_then(|f| f.tag().map(str::to_owned))
            .unwrap_or_default(),
        cseq: msg.cseq().map(|c| c.seq).unwrap_or(0),
        core,
        limits: CallLimits {
            max_calls: u32::try_from(tenant.max_calls).unwrap_or(0),
            calls_per_second: u32::try_from(tenant.calls_per_second).unwrap_or(0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::FailurePolicy;
    use crate::hrw::pick;
    use switchyard_sip::digest::Nonces;
    use switchyard_sip_net::Transport;
    use switchyard_store::Store;

    async fn proxy(cores: Vec<CoreNode>) -> (Proxy, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let auth = Arc::new(Authenticator::new(
            Nonces::new(b"s", 300),
            FailurePolicy::default(),
            Arc::new(crate::bans::Bans::new(300, 3600, Vec::new())),
        ));
        let p = Proxy {
            carriers: Default::default(),
            directory: Directory::new(store),
            auth,
            tokens: TokenKey::new(b"s"),
            internal: "127.0.0.1:7000".parse().unwrap(),
            cores: Cores::fixed(cores),
            advertise: None,
            health: None,
            public_udp: Vec::new(),
            seal: switchyard_sip::seal::SealKey::new(b"test cluster"),
        };
        (p, dir)
    }

    fn phone() -> Ingress {
        Ingress {
            transport: Transport::Udp,
            source: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            flow: None,
        }
    }

    /// A BYE from the phone, with the Route our Record-Route gave its dialog.
    fn bye(ruri: &str, call_id: &str) -> Message {
        let token = TokenKey::new(b"s").encode(&phone().token());
        bye_routed(
            ruri,
            call_id,
            &format!("Route: <sip:{token}@127.0.0.1:5060;lr>\r\n"),
        )
    }

    fn bye_routed(ruri: &str, call_id: &str, route: &str) -> Message {
        let text = format!(
            "BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKx1\r\nMax-Forwards: 70\r\n{route}From: <sip:1001@d.example>;tag=a\r\nTo: <sip:1002@d.example>;tag=b\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse_datagram(Bytes::from(text)).unwrap()
    }

    fn dest(v: Verdict) -> SocketAddr {
        match v {
            Verdict::Forward {
                target: Target::Datagram { dest, .. },
                ..
            } => dest,
            other => panic!("{other:?}"),
        }
    }

    /// A tenant placed on a pool gets that pool's cores, the shared pool's when its own
    /// has none left; a shared tenant never gets a dedicated pool's core, not even when
    /// it is the only one alive. (A CANCEL is picked like its INVITE, without the
    /// INVITE's authentication.)
    #[tokio::test]
    async fn a_tenants_new_dialogs_go_to_the_cores_of_its_pool() {
        let s1: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let s2: SocketAddr = "127.0.0.1:7102".parse().unwrap();
        let g1: SocketAddr = "127.0.0.1:7103".parse().unwrap();
        let all = vec![
            CoreNode::new("s1", s1),
            CoreNode::new("s2", s2),
            CoreNode::in_pool("g1", g1, "gold"),
        ];
        let (p, _dir) = proxy(all.clone()).await;
        let place = |domain: &str, placement: &str| {
            p.directory.insert(crate::directory::TenantEntry::new(
                crate::directory::test_tenant(&format!("id-{domain}"), domain, placement),
                Vec::new(),
            ));
        };
        let cancel_of = |domain: &str, call_id: &str| {
            Message::parse_datagram(Bytes::from(format!(
                "CANCEL sip:2002@{domain} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKc1\r\nMax-Forwards: 70\r\nFrom: <sip:2001@{domain}>;tag=a\r\nTo: <sip:2002@{domain}>\r\nCall-ID: {call_id}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
            )))
            .unwrap()
        };
        let cancel = |domain: &str| cancel_of(domain, &format!("c-{domain}"));
        place("gold.example", "gold");
        let mut shared_used = std::collections::HashSet::new();
        for i in 0..20 {
            let domain = format!("t{i}.example");
            place(&domain, "shared");
            let to = dest(p.request(&cancel(&domain), &phone(), 0).await);
            assert_ne!(to, g1, "{domain} is not gold's");
            shared_used.insert(to);
        }
        assert_eq!(
            shared_used.len(),
            2,
            "shared tenants spread over both shared cores"
        );
        // One tenant's calls spread too (the Call-ID decides), within its pool.
        let mut one_tenant = std::collections::HashSet::new();
        for i in 0..20 {
            let to = dest(
                p.request(&cancel_of("t1.example", &format!("c{i}")), &phone(), 0)
                    .await,
            );
            assert_ne!(to, g1);
            one_tenant.insert(to);
        }
        assert_eq!(
            one_tenant.len(),
            2,
            "one tenant's calls on both shared cores"
        );
        for i in 0..20 {
            assert_eq!(
                dest(
                    p.request(&cancel_of("gold.example", &format!("c{i}")), &phone(), 0)
                        .await
                ),
                g1
            );
        }
        // A tenant of a pool with no core at all: the shared cores.
        place("silver.example", "silver");
        assert_ne!(
            dest(p.request(&cancel("silver.example"), &phone(), 0).await),
            g1
        );
        // Gold's core gone: gold's calls go to a shared core.
        p.cores.replace(CoreList {
            nodes: all[..2].to_vec(),
            draining: Default::default(),
        });
        let to = dest(p.request(&cancel("gold.example"), &phone(), 0).await);
        assert!(to == s1 || to == s2, "{to}");
        // Only gold's core alive: a shared tenant gets none of it.
        p.cores.replace(CoreList {
            nodes: all[2..].to_vec(),
            draining: Default::default(),
        });
        match p.request(&cancel("t1.example"), &phone(), 0).await {
            Verdict::Answer { status, .. } => assert_eq!(status, 503),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            dest(p.request(&cancel("gold.example"), &phone(), 0).await),
            g1
        );
    }

    #[tokio::test]
    async fn in_dialog_requests_go_to_the_core_their_request_uri_names() {
        let c1: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let c2: SocketAddr = "127.0.0.1:7102".parse().unwrap();
        let (p, _dir) = proxy(vec![CoreNode::new("c1", c1), CoreNode::new("c2", c2)]).await;
        // Find Call-IDs that hash to each core, then name the other core in the URI.
        let nodes: Vec<WeightedNode> = p
            .cores
            .snapshot()
            .nodes
            .iter()
            .map(|c| c.node.clone())
            .collect();
        let to = |id: &str| {
            (0..)
                .map(|i| format!("call-{i}"))
                .find(|c| pick(c, &nodes).unwrap().id.as_str() == id)
                .unwrap()
        };
        let (on_c1, on_c2) = (to("c1"), to("c2"));
        let named = |addr: SocketAddr| format!("sip:sy@{addr}");
        assert_eq!(
            dest(p.request(&bye(&named(c2), &on_c1), &phone(), 0).await),
            c2
        );
        assert_eq!(
            dest(p.request(&bye(&named(c1), &on_c2), &phone(), 0).await),
            c1
        );
        // A URI that names no core: rendezvous hashing of the Call-ID decides, whatever
        // the domain, so a tenant's calls spread over its cores.
        let in_domain = |domain: &str| format!("sip:1002@{domain}");
        for domain in ["a.example", "b.example"] {
            for (call_id, core) in [(&on_c1, c1), (&on_c2, c2)] {
                assert_eq!(
                    dest(
                        p.request(&bye(&in_domain(domain), call_id), &phone(), 0)
                            .await
                    ),
                    core
                );
            }
        }
        let other = in_domain("a.example");
        let other = other.as_str();

        // c1 stops answering pings: its dialogs and new ones go to c2.
        let health = Arc::new(crate::health::CoreHealth::new(
            std::time::Duration::from_secs(6),
        ));
        health.answered(c2, std::time::Instant::now());
        let p = Proxy {
            carriers: Default::default(),
            health: Some(health),
            ..p
        };
        assert_eq!(
            dest(p.request(&bye(&named(c1), &on_c1), &phone(), 0).await),
            c2
        );
        assert_eq!(dest(p.request(&bye(other, &on_c1), &phone(), 0).await), c2);
    }

    #[tokio::test]
    async fn every_dialog_of_a_dead_core_goes_to_one_successor() {
        let addrs: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("127.0.0.1:720{i}").parse().unwrap())
            .collect();
        let (p, _dir) = proxy(
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| CoreNode::new(&format!("c{i}"), *a))
                .collect(),
        )
        .await;
        // c0 is dead: only c1 and c2 answer pings.
        let health = Arc::new(crate::health::CoreHealth::new(
            std::time::Duration::from_secs(6),
        ));
        for a in &addrs[1..] {
            health.answered(*a, std::time::Instant::now());
        }
        let p = Proxy {
            carriers: Default::default(),
            health: Some(health),
            ..p
        };
        let dead = format!("sip:sy@{}", addrs[0]);
        let successors: std::collections::BTreeSet<SocketAddr> = futures_all((0..20).map(|i| {
            let (p, dead) = (p.clone(), dead.clone());
            async move {
                dest(
                    p.request(&bye(&dead, &format!("call-{i}")), &phone(), 0)
                        .await,
                )
            }
        }))
        .await;
        assert_eq!(successors.len(), 1, "one successor for all: {successors:?}");
        assert!(!successors.contains(&addrs[0]));
    }

    async fn futures_all<F: std::future::Future<Output = SocketAddr>>(
        futures: impl Iterator<Item = F>,
    ) -> std::collections::BTreeSet<SocketAddr> {
        let mut out = std::collections::BTreeSet::new();
        for f in futures {
            out.insert(f.await);
        }
        out
    }

    #[tokio::test]
    async fn in_dialog_requests_without_our_signed_route_reach_no_core() {
        let c1: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let (p, _dir) = proxy(vec![CoreNode::new("c1", c1)]).await;
        let ruri = "sip:sy@127.0.0.1:7101";
        assert_eq!(dest(p.request(&bye(ruri, "c-1"), &phone(), 0).await), c1);
        let forged = TokenKey::new(b"another secret").encode(&phone().token());
        for route in [
            String::new(),
            format!("Route: <sip:{forged}@127.0.0.1:5060;lr>\r\n"),
            "Route: <sip:127.0.0.1:5060;lr>\r\n".to_owned(),
        ] {
            let m = bye_routed(ruri, "c-1", &route);
            match p.request(&m, &phone(), 0).await {
                Verdict::Answer { status: 481, bytes } => {
                    assert!(
                        bytes.len() <= m.as_bytes().len(),
                        "no amplification: {} > {}",
                        bytes.len(),
                        m.as_bytes().len()
                    )
                }
                other => panic!("{route}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn forwarded_requests_carry_our_via_and_lose_internal_headers() {
        let c1: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let (p, _dir) = proxy(vec![CoreNode::new("c1", c1)]).await;
        let text = String::from_utf8(bye("sip:sy@127.0.0.1:7101", "c-9").to_bytes().to_vec())
            .unwrap()
            .replace(
                "Content-Length",
                "X-Sy-Tenant: forged\r\nX-Sy-Seal: 1.00000000000000000000000000000000\r\nContent-Length",
            );
        let msg = Message::parse_datagram(Bytes::from(text)).unwrap();
        let Verdict::Forward { bytes, .. } = p.request(&msg, &phone(), 0).await else {
            panic!()
        };
        let out = Message::parse_datagram(bytes).unwrap();
        assert_eq!(
            out.extension_rows(TENANT_HEADER).count(),
            0,
            "a phone cannot set it"
        );
        assert_eq!(out.extension_rows(SEAL_HEADER).count(), 0, "nor a seal");
        let top = out.top_via().unwrap();
        assert_eq!(top.sent_by(), "127.0.0.1:7000");
        let back = p
            .tokens
            .decode(top.params.get("sy").flatten().unwrap())
            .unwrap();
        assert_eq!(back.remote, phone().source);
        assert_eq!(out.max_forwards().unwrap(), Some(69));
        // The response comes back through the token in our Via.
        let response = format!(
            "SIP/2.0 200 OK\r\nVia: {}\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKx1\r\nFrom: <sip:1001@d.example>;tag=a\r\nTo: <sip:1002@d.example>;tag=b\r\nCall-ID: c-9\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            out.header(HeaderName::Via).unwrap()
        );
        let r = Message::parse_datagram(Bytes::from(response)).unwrap();
        let Verdict::Forward { target, bytes } = p.response(&r) else {
            panic!()
        };
        assert_eq!(
            target,
            Target::Datagram {
                local: phone().local,
                dest: phone().source
            }
        );
        assert_eq!(Message::parse_datagram(bytes).unwrap().vias().count(), 1);
    }

    /// A core's INVITE out to a trunk: it leaves from our public UDP socket to the address
    /// the core named, Record-Routed through us; a core cannot aim it at the cluster's own
    /// sockets, and nobody but a core can use the parameter.
    #[tokio::test]
    async fn calls_out_to_trunks_leave_from_the_public_socket_and_never_loop_back() {
        let core: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        let (mut p, _dir) = proxy(vec![CoreNode::new("c1", core)]).await;
        p.public_udp = vec!["127.0.0.1:5060".parse().unwrap()];
        let from_core = Ingress {
            transport: Transport::Udp,
            source: core,
            local: p.internal,
            flow: None,
        };
        let invite = |trunk: &str| {
            let text = format!(
                "INVITE sip:+4930123456@carrier.example SIP/2.0\r\nVia: SIP/2.0/UDP {core};branch=z9hG4bKout1\r\nMax-Forwards: 70\r\nRoute: <sip:127.0.0.1:7000;lr;sy-trunk={trunk}>\r\nFrom: <sip:+15550100050@carrier.example>;tag=f\r\nTo: <sip:+4930123456@carrier.example>\r\nCall-ID: out-1\r\nCSeq: 1 INVITE\r\nContact: <sip:sy@{core}>\r\nContent-Length: 0\r\n\r\n"
            );
            Message::parse_datagram(Bytes::from(text)).unwrap()
        };
        let Verdict::Forward { target, bytes } =
            p.request(&invite("192.0.2.10:5080"), &from_core, 0).await
        else {
            panic!("forwarded")
        };
        assert_eq!(
            target,
            Target::Datagram {
                local: "127.0.0.1:5060".parse().unwrap(),
                dest: "192.0.2.10:5080".parse().unwrap(),
            }
        );
        let out = Message::parse_datagram(bytes).unwrap();
        assert_eq!(
            out.values(HeaderName::Route).count(),
            0,
            "our Route is popped"
        );
        assert_eq!(out.top_via().unwrap().sent_by(), "127.0.0.1:5060");
        let rr: Vec<&str> = out.values(HeaderName::RecordRoute).collect();
        assert_eq!(rr.len(), 2, "{rr:?}");
        assert!(
            rr[0].contains("@127.0.0.1:5060;lr"),
            "carrier-facing on top: {rr:?}"
        );
        // The cluster's own sockets are no trunk.
        for own in ["127.0.0.1:7101", "127.0.0.1:7000", "127.0.0.1:5060"] {
            let Verdict::Answer { status, .. } = p.request(&invite(own), &from_core, 0).await
            else {
                panic!("refused")
            };
            assert_eq!(status, 403, "{own}");
        }
        // From a phone the parameter means nothing: no tenant, no trunk.
        let Verdict::Answer { status, .. } =
            p.request(&invite("192.0.2.10:5080"), &phone(), 0).await
        else {
            panic!("answered")
        };
        assert_eq!(status, 404);
    }
}
