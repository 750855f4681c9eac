//! A new call's routing step: the tenant's configuration, the dial plan's decision, the
//! media session and the callee's bindings. It runs in a task of its own and comes back
//! to the engine as an event, so a slow store read, media request or location lookup
//! delays only the call that asked for it; every other call of the node goes on.

use std::sync::Arc;

use tracing::{info, warn};

use switchyard_media_control::{Leg, MediaControl, MediaError, Reply, Request};
use switchyard_state::{Binding, Locations};
use switchyard_store::{Extension, Target, TenantConfig};
use switchyard_types::TenantId;

use crate::cache::ConfigCache;
use crate::dialplan::{Destination, DialPlan, Resolution, resolve_target};

/// What the routing step reads and asks.
#[derive(Clone)]
pub struct RouteDeps {
    pub cache: ConfigCache,
    pub locations: Arc<Locations>,
    pub media: Arc<dyn MediaControl>,
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
}

/// A call that can ring: its callee, the offer for leg B and where to send it. The media
/// session exists; whoever drops a `Routed` destroys it.
#[derive(Debug)]
pub struct Routed {
    pub config: Arc<TenantConfig>,
    /// The (first) extension rung: the CDR's callee.
    pub callee: Extension,
    pub caller_ext: Option<Extension>,
    pub offer_b: String,
    /// Every contact to ring: the callee's, or every ring group member's.
    pub bindings: Vec<Binding>,
    /// A ring group's ring time (else the callee's no-answer time applies).
    pub ring_seconds: Option<u32>,
    /// A sequential group's next members (extension numbers), rung one at a time.
    pub hunt: Vec<String>,
    /// A group's target once nobody answered.
    pub fallback: Option<Target>,
}

/// Where a ringing call goes next: a dialled string (an extension number, a number of
/// the tenant) or a target of the configuration (a group's fallback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reroute {
    Dialled(String),
    Target(Target),
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
    let (members, ring_seconds, hunt, fallback) = match DialPlan::of(&config).decide(&req.dialled) {
        Destination::Extension(id) => (vec![id], None, Vec::new(), None),
        Destination::OwnNumber {
            number,
            target: Some(target),
        } => match resolve_target(&config, &target, at) {
            Resolution::Ring {
                extensions,
                ring_seconds,
                then,
                fallback,
            } => (extensions, ring_seconds, then, fallback),
            Resolution::Refuse(status, reason) => {
                info!(
                    tenant = req.tenant_id,
                    number, status, reason, "number's call refused by its target"
                );
                return refuse(status, reason);
            }
        },
        Destination::OwnNumber {
            number,
            target: None,
        } => {
            info!(tenant = req.tenant_id, number, "number points nowhere");
            return refuse(480, "The number has no target");
        }
        Destination::NotFound => {
            info!(
                tenant = req.tenant_id,
                dialled = req.dialled,
                "no such extension"
            );
            return refuse(404, "No such extension");
        }
        Destination::NoRoute => {
            info!(
                tenant = req.tenant_id,
                dialled = req.dialled,
                "no outbound route"
            );
            return refuse(403, "No outbound route for this number");
        }
        Destination::Emergency(attempts) => {
            warn!(
                tenant = req.tenant_id,
                dialled = req.dialled,
                routes = attempts.len(),
                "emergency call could not be placed: no trunk carries it"
            );
            return refuse(503, "No emergency route available");
        }
        Destination::External(attempts) => {
            info!(
                tenant = req.tenant_id,
                dialled = req.dialled,
                routes = attempts.len(),
                "outbound call refused: trunks are not carried yet"
            );
            return refuse(480, "Outbound calls are not carried yet");
        }
    };
    let find =
        |pred: &dyn Fn(&Extension) -> bool| config.extensions.iter().find(|e| pred(e)).cloned();
    let mut extensions: Vec<Extension> = members
        .iter()
        .filter_map(|id| find(&|e| &e.id == id))
        .collect();
    // An extension called on its own follows its "forward always" (to another extension
    // of the tenant, or a number of the tenant pointing at one); a group's members ring
    // where they are.
    let mut seen: Vec<String> = extensions.iter().map(|e| e.id.clone()).collect();
    while let [only] = extensions.as_slice()
        && let Some(forward) = only.forward_always.clone().filter(|f| !f.is_empty())
    {
        let next = match DialPlan::of(&config).decide(&forward) {
            Destination::Extension(id)
            | Destination::OwnNumber {
                target: Some(Target::Extension(id)),
                ..
            } => id,
            _ => {
                info!(
                    tenant = req.tenant_id,
                    forward, "forwarded where calls cannot go yet"
                );
                return refuse(480, "Forwarded to a number that cannot take calls yet");
            }
        };
        if seen.contains(&next) {
            warn!(tenant = req.tenant_id, forward, "forwarding loop");
            return refuse(482, "Forwarding loop");
        }
        seen.push(next.clone());
        extensions = find(&|e| e.id == next).into_iter().collect();
    }
    let Some(mut callee) = extensions.first().cloned() else {
        return refuse(404, "No such extension");
    };
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
    let session = req.session.clone();
    match deps
        .media
        .call(Request::Create {
            session: session.clone(),
            tenant: req.tenant_id.clone(),
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
        callee,
        caller_ext,
        offer_b,
        bindings,
        ring_seconds,
        hunt,
        fallback,
    })
}

/// A forward's target and its contacts, or why there is none.
pub type Forwarded = Result<(Extension, Vec<Binding>), Refusal>;

/// Where a ringing call of `tenant_id` goes next (a forward, a group's next member or
/// its fallback): the first extension rung and the contacts of every extension the
/// target comes to. The media session is the call's own.
pub async fn forward_to(
    deps: &RouteDeps,
    config: &TenantConfig,
    tenant_id: &str,
    next: &Reroute,
    now_ms: i64,
) -> Forwarded {
    let cannot = || {
        Refusal::new(
            480,
            "Forwarded to a number that cannot take calls yet",
            true,
        )
    };
    let target = match next {
        Reroute::Target(t) => t.clone(),
        Reroute::Dialled(dialled) => match DialPlan::of(config).decide(dialled) {
            Destination::Extension(id) => Target::Extension(id),
            Destination::OwnNumber {
                target: Some(t), ..
            } => t,
            _ => return Err(cannot()),
        },
    };
    let at = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let extensions: Vec<Extension> = match resolve_target(config, &target, at) {
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
    Ok((first, bindings))
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
