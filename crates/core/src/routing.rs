//! A new call's routing step: the tenant's configuration, the dial plan's decision, the
//! media session and the callee's bindings. It runs in a task of its own and comes back
//! to the engine as an event, so a slow store read, media request or location lookup
//! delays only the call that asked for it; every other call of the node goes on.
//!
//! A call to an external or emergency number goes out through the tenant's outbound
//! routes: the first route whose trunk resolves and has a free channel carries it, and the
//! routes after it are kept for failover. A trunk's channels (`max_channels`) are counted
//! in [`LiveCalls`] under `trunk:ID`, shared by every core of a cluster on Redis; an
//! emergency call holds none and is never refused for want of one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use switchyard_media_control::{Leg, MediaControl, MediaError, Reply, Request};
use switchyard_state::calls::{Admission, CallLimits, LiveCalls};
use switchyard_state::{Binding, Locations};
use switchyard_store::{Extension, Target, TenantConfig, TrunkSpec};
use switchyard_types::TenantId;

use crate::cache::ConfigCache;
use crate::dialplan::{
    Destination, DialPlan, OutboundAttempt, Resolution, caller_id, resolve_target,
};

/// What the routing step reads and asks.
#[derive(Clone)]
pub struct RouteDeps {
    pub cache: ConfigCache,
    pub locations: Arc<Locations>,
    pub media: Arc<dyn MediaControl>,
    /// Trunks' channels in use (`max_channels`).
    pub channels: Arc<LiveCalls>,
    /// Where round-robin groups start their next call (shared by every core that may
    /// take a group's calls).
    pub turns: Arc<switchyard_state::turns::Turns>,
}

impl std::fmt::Debug for RouteDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteDeps").finish_non_exhaustive()
    }
}

/// A caller's INVITE, as far as routing needs it.
#[derive(Debug, Clone)]
pub struct RouteRequest {
    pub tenant_id: String,
    /// The authenticated caller (the edge's `X-Sy-Caller`): an extension, or the PSTN
    /// number of a carrier's call.
    pub caller: String,
    /// The carrier the call came from (the edge's `X-Sy-Carrier`).
    pub carrier: Option<String>,
    /// The Request-URI's user part.
    pub dialled: String,
    /// The caller's SDP offer.
    pub sdp: String,
    /// The media session to create (the caller's Call-ID).
    pub session: String,
    /// Leg B's Call-ID: what a trunk channel the call seizes is held under.
    pub leg_b: String,
}

/// Where leg B rings: phones, or a trunk.
#[derive(Debug)]
pub enum Ring {
    /// Extensions' phones: the (first) extension rung, the CDR's callee, and every
    /// contact to ring (the callee's, or every ring group member's).
    Phones {
        callee: Extension,
        bindings: Vec<Binding>,
    },
    /// Out through a trunk; `rest` are the later routes, tried in order if this one
    /// fails (`5xx`, `408`, or no answer from the trunk at all).
    Trunk {
        leg: TrunkLeg,
        rest: Vec<OutboundAttempt>,
        /// The number as dialled (the CDR's callee).
        dialled: String,
        emergency: bool,
    },
}

/// One outbound attempt made concrete: its trunk's address resolved and, unless the call
/// is an emergency call, one of its channels held under leg B's Call-ID. Serialized into
/// a takeover record without its credentials.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrunkLeg {
    pub trunk_id: String,
    pub route_id: String,
    /// The number as the trunk gets it (the route's strip and prefix applied).
    pub number: String,
    /// The trunk's host as configured (the Request-URI's and From's host).
    pub host: String,
    pub port: Option<u16>,
    /// Where the edge sends the INVITE.
    pub dest: SocketAddr,
    /// A channel is held (release it when the leg ends).
    pub holds_channel: bool,
    /// What the carrier's digest challenge is answered with, if the trunk has them.
    #[serde(skip)]
    pub credentials: Option<TrunkCredentials>,
}

/// A trunk's username and password (the password never shows in a log line).
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for TrunkCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl TrunkLeg {
    /// The trunk's host as a URI writes it (an IPv6 address in brackets).
    pub fn uri_host(&self) -> String {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("[{bare}]")
        } else {
            bare.to_owned()
        }
    }

    /// The Request-URI the trunk gets.
    pub fn request_uri(&self) -> String {
        match self.port {
            Some(port) => format!("sip:{}@{}:{port}", self.number, self.uri_host()),
            None => format!("sip:{}@{}", self.number, self.uri_host()),
        }
    }
}

/// A call that can ring: where, the offer for leg B, and what the engine does when
/// nobody answers. The media session exists; whoever drops a `Routed` destroys it.
#[derive(Debug)]
pub struct Routed {
    pub config: Arc<TenantConfig>,
    pub caller_ext: Option<Extension>,
    pub offer_b: String,
    pub ring: Ring,
    /// A ring group's ring time (else the callee's no-answer time applies).
    pub ring_seconds: Option<u32>,
    /// A sequential group's next members (extension numbers), rung one at a time.
    pub hunt: Vec<String>,
    /// A group's target once nobody answered.
    pub fallback: Option<Target>,
    /// The number presented to trunks as the caller (one of the tenant's own numbers;
    /// `None` when the tenant holds none).
    pub presented: Option<String>,
}

impl Routed {
    /// The extension rung first, when phones ring.
    pub fn callee(&self) -> Option<&Extension> {
        match &self.ring {
            Ring::Phones { callee, .. } => Some(callee),
            Ring::Trunk { .. } => None,
        }
    }

    /// The contacts that ring (none for a trunk).
    pub fn bindings(&self) -> &[Binding] {
        match &self.ring {
            Ring::Phones { bindings, .. } => bindings,
            Ring::Trunk { .. } => &[],
        }
    }
}

/// Where a ringing call goes next: a dialled string (an extension number, a number of
/// the tenant, an external number), a target of the configuration (a group's fallback),
/// or the next outbound routes after a trunk failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reroute {
    Dialled(String),
    Target(Target),
    Failover {
        rest: Vec<OutboundAttempt>,
        dialled: String,
        emergency: bool,
    },
}

/// Why a call cannot be routed: the answer to the caller. No media session is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
    /// The tenant's configuration was read: the call counts as an attempt.
    pub attempted: bool,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>, attempted: bool) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            attempted,
        }
    }
}

/// What a dialled string comes to before any contact is looked up or channel taken.
enum Plan {
    Phones {
        extensions: Vec<Extension>,
        ring_seconds: Option<u32>,
        hunt: Vec<String>,
        fallback: Option<Target>,
    },
    Out {
        attempts: Vec<OutboundAttempt>,
        dialled: String,
        emergency: bool,
    },
}

/// [`resolve_target`] with the turn of the round-robin group it reaches, if any, taken
/// from the counters every core shares (a counter is moved only by a call it rings).
async fn resolve(
    config: &TenantConfig,
    target: &Target,
    at: jiff::Timestamp,
    turns: &switchyard_state::turns::Turns,
) -> Resolution {
    let group = std::cell::Cell::new(None);
    let first = resolve_target(config, target, at, &|g| {
        group.set(Some(g.to_owned()));
        0
    });
    let Some(group) = group.into_inner() else {
        return first;
    };
    // Keyed by tenant too: one tenant's groups never move another's counters.
    let turn = match turns.take(&format!("{}:{group}", config.tenant.id)).await {
        Ok(turn) => turn,
        Err(e) => {
            // The group still rings, from its first member.
            warn!(group, error = %e, "round-robin turn unavailable");
            0
        }
    };
    resolve_target(config, target, at, &|_| turn)
}

/// The dial plan's decision for `dialled`, following an extension's "forward always"
/// (to an extension, a number of the tenant, or out through the routes).
async fn plan_of(
    config: &TenantConfig,
    tenant_id: &str,
    dialled: &str,
    at: jiff::Timestamp,
    turns: &switchyard_state::turns::Turns,
) -> Result<Plan, Refusal> {
    let refuse = |status, reason: &str| Err(Refusal::new(status, reason, true));
    let plan = DialPlan::of(config);
    let find = |id: &str| config.extensions.iter().find(|e| e.id == id).cloned();
    let (members, ring_seconds, hunt, fallback) = match plan.decide(dialled) {
        Destination::Extension(id) => (vec![id], None, Vec::new(), None),
        Destination::OwnNumber {
            number,
            target: Some(target),
        } => match resolve(config, &target, at, turns).await {
            Resolution::Ring {
                extensions,
                ring_seconds,
                then,
                fallback,
            } => (extensions, ring_seconds, then, fallback),
            Resolution::Refuse(status, reason) => {
                info!(
                    tenant = tenant_id,
                    number, status, reason, "number's call refused by its target"
                );
                return refuse(status, reason);
            }
        },
        Destination::OwnNumber {
            number,
            target: None,
        } => {
            info!(tenant = tenant_id, number, "number points nowhere");
            return refuse(480, "The number has no target");
        }
        Destination::NotFound => {
            info!(tenant = tenant_id, dialled, "no such extension");
            return refuse(404, "No such extension");
        }
        Destination::NoRoute => {
            info!(tenant = tenant_id, dialled, "no outbound route");
            return refuse(403, "No outbound route for this number");
        }
        Destination::Emergency(attempts) => {
            return Ok(Plan::Out {
                attempts,
                dialled: dialled.to_owned(),
                emergency: true,
            });
        }
        Destination::External(attempts) => {
            return Ok(Plan::Out {
                attempts,
                dialled: dialled.to_owned(),
                emergency: false,
            });
        }
    };
    let mut extensions: Vec<Extension> = members.iter().filter_map(|id| find(id)).collect();
    // An extension called on its own follows its "forward always"; a group's members
    // ring where they are.
    let mut seen: Vec<String> = extensions.iter().map(|e| e.id.clone()).collect();
    while let [only] = extensions.as_slice()
        && let Some(forward) = only.forward_always.clone().filter(|f| !f.is_empty())
    {
        let next = match plan.decide(&forward) {
            Destination::Extension(id)
            | Destination::OwnNumber {
                target: Some(Target::Extension(id)),
                ..
            } => id,
            Destination::External(attempts) => {
                info!(tenant = tenant_id, forward, "forwarded out");
                return Ok(Plan::Out {
                    attempts,
                    dialled: forward,
                    emergency: false,
                });
            }
            _ => {
                info!(
                    tenant = tenant_id,
                    forward, "forwarded where calls cannot go"
                );
                return refuse(480, "Forwarded to a number that cannot take calls");
            }
        };
        if seen.contains(&next) {
            warn!(tenant = tenant_id, forward, "forwarding loop");
            return refuse(482, "Forwarding loop");
        }
        seen.push(next.clone());
        extensions = find(&next).into_iter().collect();
    }
    if extensions.is_empty() {
        return refuse(404, "No such extension");
    }
    Ok(Plan::Phones {
        extensions,
        ring_seconds,
        hunt,
        fallback,
    })
}

/// Routes one call (see the module docs).
pub async fn route_call(
    deps: RouteDeps,
    req: RouteRequest,
    now_ms: i64,
) -> Result<Routed, Refusal> {
    let config = match deps.cache.get(&req.tenant_id).await {
        Ok(c) => c,
        Err(e) => {
            warn!(tenant = req.tenant_id, error = %e, "tenant configuration unavailable");
            return Err(Refusal::new(500, "Configuration unavailable", false));
        }
    };
    let refuse = |status, reason: &str| Err(Refusal::new(status, reason, true));
    // Only this tenant's plan is searched: a number of another tenant is never found.
    let at = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let plan = plan_of(&config, &req.tenant_id, &req.dialled, at, &deps.turns).await?;
    let dial_plan = DialPlan::of(&config);
    // A carrier's call presents the number it came in on when it goes out again; a
    // phone's call its extension's chosen number, else the tenant's, else the tenant's
    // first. Never a number the tenant does not hold (one released since is skipped).
    let find =
        |pred: &dyn Fn(&Extension) -> bool| config.extensions.iter().find(|e| pred(e)).cloned();
    // A carrier's caller is a PSTN number, whatever it looks like.
    let caller_ext = req
        .carrier
        .is_none()
        .then(|| {
            find(&|e| {
                e.number.to_string() == req.caller || e.username.eq_ignore_ascii_case(&req.caller)
            })
        })
        .flatten();
    let wanted = match &req.carrier {
        Some(_) => crate::dialplan::e164(&req.dialled),
        None => caller_ext
            .as_ref()
            .and_then(|e| e.caller_id.clone())
            .or_else(|| config.tenant.caller_id.clone()),
    };
    let presented = caller_id(&dial_plan, wanted.as_deref()).map(str::to_owned);
    if let Plan::Out {
        emergency: false, ..
    } = &plan
        && presented.is_none()
    {
        info!(
            tenant = req.tenant_id,
            "outbound call without a number to present"
        );
        return refuse(403, "The tenant has no number to present as caller ID");
    }
    let session = req.session.clone();
    match deps
        .media
        .call(Request::Create {
            session: session.clone(),
            tenant: req.tenant_id.clone(),
            // The tenant's placement: its calls only ever use that pool's media nodes.
            pool: Some(config.tenant.placement.clone()),
        })
        .await
    {
        Ok(_) => {}
        Err(MediaError::Exhausted(why)) => {
            warn!(tenant = req.tenant_id, why, "no media capacity");
            return refuse(503, "No media capacity");
        }
        Err(e) => return refuse(500, &e.to_string()),
    }
    let destroy = || async {
        let _ = deps
            .media
            .call(Request::Destroy {
                session: session.clone(),
            })
            .await;
    };
    let offer_b = match deps
        .media
        .call(Request::Offer {
            session: session.clone(),
            from: Leg::A,
            sdp: req.sdp.clone(),
        })
        .await
    {
        Ok(Reply::Sdp { sdp }) => sdp,
        other => {
            destroy().await;
            return refuse(488, &crate::refusal(other));
        }
    };
    let (extensions, ring_seconds, hunt, fallback) = match plan {
        Plan::Out {
            attempts,
            dialled,
            emergency,
        } => {
            let ring = match seize_trunk(&deps, &config, attempts, &dialled, emergency, &req).await
            {
                Ok(ring) => ring,
                Err(refusal) => {
                    destroy().await;
                    return Err(refusal);
                }
            };
            return Ok(Routed {
                config,
                caller_ext,
                offer_b,
                ring,
                ring_seconds: None,
                hunt: Vec::new(),
                fallback: None,
                presented,
            });
        }
        Plan::Phones {
            extensions,
            ring_seconds,
            hunt,
            fallback,
        } => (extensions, ring_seconds, hunt, fallback),
    };
    let mut callee = extensions[0].clone();
    let mut bindings = contacts_of(&deps, &config, &req.tenant_id, &extensions, now_ms).await;
    // A sequential group whose member has no contact starts with the next one.
    let mut hunt = std::collections::VecDeque::from(hunt);
    while bindings.is_empty()
        && let Some(next) = hunt.pop_front()
    {
        let Some(member) = find(&|e| e.id == next) else {
            continue;
        };
        bindings = contacts_of(
            &deps,
            &config,
            &req.tenant_id,
            std::slice::from_ref(&member),
            now_ms,
        )
        .await;
        callee = member;
    }
    if bindings.is_empty() {
        destroy().await;
        info!(
            tenant = req.tenant_id,
            callee = callee.username,
            "callee not registered"
        );
        return refuse(480, "Temporarily Unavailable");
    }
    let hunt = hunt
        .iter()
        .filter_map(|id| config.extensions.iter().find(|e| &e.id == id))
        .map(|e| e.number.to_string())
        .collect();
    Ok(Routed {
        config,
        caller_ext,
        offer_b,
        ring: Ring::Phones { callee, bindings },
        ring_seconds,
        hunt,
        fallback,
        presented,
    })
}

/// The channel set of a trunk in [`LiveCalls`].
pub fn trunk_channels(trunk_id: &str) -> TenantId {
    TenantId::new(format!("trunk:{trunk_id}"))
}

/// How long a trunk's host name may take to resolve before the route is skipped.
const RESOLVE_LIMIT: Duration = Duration::from_secs(2);
/// Channels are counted, not rated: a trunk takes as many new calls per second as it
/// has channels free.
const TRUNK_CALLS_PER_SECOND: u32 = 10_000;
/// A held channel's lease on Redis; the engine renews the leases of its calls well
/// before this, so only a dead core's channels lapse.
pub const CHANNEL_LEASE: Duration = Duration::from_secs(90);

/// The first of `attempts` whose trunk exists, speaks UDP, resolves and (unless the call
/// is an emergency call) has a channel free; the ones after it stay for failover.
async fn seize_trunk(
    deps: &RouteDeps,
    config: &TenantConfig,
    attempts: Vec<OutboundAttempt>,
    dialled: &str,
    emergency: bool,
    req: &RouteRequest,
) -> Result<Ring, Refusal> {
    let mut attempts = std::collections::VecDeque::from(attempts);
    let mut full = false;
    while let Some(attempt) = attempts.pop_front() {
        let Some(spec) = config
            .resources
            .iter()
            .find(|r| r.id == attempt.trunk_id && r.kind == "trunk")
            .and_then(|r| serde_json::from_str::<TrunkSpec>(&r.spec).ok())
        else {
            warn!(
                tenant = req.tenant_id,
                trunk = attempt.trunk_id,
                "route's trunk is gone"
            );
            continue;
        };
        if spec.transport != "udp" {
            warn!(
                tenant = req.tenant_id,
                trunk = attempt.trunk_id,
                transport = spec.transport,
                "trunk skipped: only UDP trunks are carried so far"
            );
            continue;
        }
        let port = spec.port.unwrap_or(5060);
        let host = spec.host.trim_start_matches('[').trim_end_matches(']');
        let lookup = tokio::time::timeout(
            RESOLVE_LIMIT,
            tokio::net::lookup_host((host.to_owned(), port)),
        )
        .await;
        let Some(dest) = lookup.ok().and_then(|r| r.ok()).and_then(|mut a| a.next()) else {
            warn!(
                tenant = req.tenant_id,
                trunk = attempt.trunk_id,
                host,
                "trunk host does not resolve"
            );
            continue;
        };
        let holds_channel = !emergency;
        if holds_channel {
            let now = crate::engine::Clock::now().unix_ms;
            let admitted = deps
                .channels
                .admit(
                    &trunk_channels(&attempt.trunk_id),
                    &req.leg_b,
                    CallLimits {
                        max_calls: spec.max_channels,
                        calls_per_second: TRUNK_CALLS_PER_SECOND,
                    },
                    now,
                    now + CHANNEL_LEASE.as_millis() as i64,
                )
                .await;
            match admitted {
                Ok(a) if a.admitted() => {}
                Ok(Admission::CallLimit(n)) => {
                    info!(
                        tenant = req.tenant_id,
                        trunk = attempt.trunk_id,
                        max_channels = n,
                        "trunk full"
                    );
                    full = true;
                    continue;
                }
                Ok(other) => {
                    info!(
                        tenant = req.tenant_id,
                        trunk = attempt.trunk_id,
                        ?other,
                        "trunk refused the call"
                    );
                    full = true;
                    continue;
                }
                Err(e) => {
                    warn!(tenant = req.tenant_id, trunk = attempt.trunk_id, error = %e, "trunk channels unavailable");
                    continue;
                }
            }
        }
        return Ok(Ring::Trunk {
            leg: TrunkLeg {
                trunk_id: attempt.trunk_id,
                route_id: attempt.route_id,
                number: attempt.number,
                host: spec.host.clone(),
                port: spec.port,
                dest,
                holds_channel,
                credentials: spec
                    .username
                    .clone()
                    .zip(spec.password.clone())
                    .map(|(username, password)| TrunkCredentials { username, password }),
            },
            rest: attempts.into(),
            dialled: dialled.to_owned(),
            emergency,
        });
    }
    if emergency {
        warn!(
            tenant = req.tenant_id,
            dialled, "emergency call could not be placed: no trunk carries it"
        );
        return Err(Refusal::new(503, "No emergency route available", true));
    }
    if full {
        return Err(Refusal::new(503, "All trunks busy (max_channels)", true));
    }
    Err(Refusal::new(
        503,
        "No trunk available for this number",
        true,
    ))
}

/// A re-route's target: where it rings, or why it cannot.
pub type Forwarded = Result<Ring, Refusal>;

/// Where a ringing call of `tenant_id` goes next (a forward, a group's next member or
/// its fallback, an external number, the next outbound route): the first extension rung
/// and the contacts of every extension the target comes to, or a trunk. The media session
/// is the call's own; `leg_b` holds a trunk's channel.
pub async fn forward_to(
    deps: &RouteDeps,
    config: &TenantConfig,
    tenant_id: &str,
    leg_b: &str,
    next: &Reroute,
    now_ms: i64,
) -> Forwarded {
    let at = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let request = RouteRequest {
        tenant_id: tenant_id.to_owned(),
        caller: String::new(),
        carrier: None,
        dialled: String::new(),
        sdp: String::new(),
        session: String::new(),
        leg_b: leg_b.to_owned(),
    };
    let target = match next {
        Reroute::Target(t) => t.clone(),
        Reroute::Failover {
            rest,
            dialled,
            emergency,
        } => {
            return seize_trunk(deps, config, rest.clone(), dialled, *emergency, &request).await;
        }
        Reroute::Dialled(dialled) => match DialPlan::of(config).decide(dialled) {
            Destination::Extension(id) => Target::Extension(id),
            Destination::OwnNumber {
                target: Some(t), ..
            } => t,
            Destination::External(attempts) => {
                return seize_trunk(deps, config, attempts, dialled, false, &request).await;
            }
            _ => {
                return Err(Refusal::new(
                    480,
                    "Forwarded to a number that cannot take calls",
                    true,
                ));
            }
        },
    };
    let extensions: Vec<Extension> = match resolve(config, &target, at, &deps.turns).await {
        Resolution::Ring { extensions, .. } => extensions
            .iter()
            .filter_map(|id| config.extensions.iter().find(|e| &e.id == id).cloned())
            .collect(),
        Resolution::Refuse(status, reason) => return Err(Refusal::new(status, reason, true)),
    };
    let Some(first) = extensions.first().cloned() else {
        return Err(Refusal::new(404, "No such extension", true));
    };
    let bindings = contacts_of(deps, config, tenant_id, &extensions, now_ms).await;
    if bindings.is_empty() {
        return Err(Refusal::new(480, "Temporarily Unavailable", true));
    }
    Ok(Ring::Phones {
        callee: first,
        bindings,
    })
}

/// Every live contact of `extensions`, in their order (a failed lookup counts as none).
async fn contacts_of(
    deps: &RouteDeps,
    config: &TenantConfig,
    tenant_id: &str,
    extensions: &[Extension],
    now_ms: i64,
) -> Vec<Binding> {
    let tenant = TenantId::new(tenant_id.to_owned());
    let mut bindings = Vec::new();
    for extension in extensions {
        let aor = switchyard_state::aor(&extension.username, &config.tenant.domain);
        bindings.extend(
            deps.locations
                .lookup(&tenant, &aor, now_ms)
                .await
                .unwrap_or_default(),
        );
    }
    bindings
}
