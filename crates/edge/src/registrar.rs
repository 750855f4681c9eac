//! The registrar (RFC 3261 §10.3) at the edge: REGISTER is answered here, never by a
//! core node, so a registration storm stops at the edge.
//!
//! The tenant comes from the To domain (an unknown domain gets `404`, never another
//! tenant's default); credentials are checked against the store's HA1 with realm = the
//! tenant's domain; bindings go to the location service keyed by tenant and address of
//! record, with the flow token the phone registered on, so calls reach it through the
//! same connection or NAT binding.

use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_sip::HeaderName;
use switchyard_sip::Message;
use switchyard_sip::build::ResponseBuilder;
use switchyard_sip::headers::NameAddr;
use switchyard_sip_net::{FlowId, Transport};
use switchyard_state::{Binding, BindingLimits, Locations, StateError};
use tracing::{info, warn};

use crate::auth::{AuthOutcome, Authenticator};
use crate::directory::Directory;
use crate::metrics::Rejection;
use crate::token::{FlowToken, TRANSPORTS, TokenKey};

/// Where a request came in.
#[derive(Debug, Clone, Copy)]
pub struct Ingress {
    pub transport: Transport,
    pub source: SocketAddr,
    pub local: SocketAddr,
    pub flow: Option<FlowId>,
}

impl Ingress {
    /// The token that leads back to the sender.
    pub fn token(&self) -> FlowToken {
        FlowToken {
            transport: transport_index(self.transport),
            flow: self.flow.map_or(0, |f| f.0),
            local: self.local,
            remote: self.source,
        }
    }
}

pub fn transport_index(t: Transport) -> u8 {
    TRANSPORTS
        .iter()
        .position(|n| *n == t.via_token())
        .unwrap_or(0) as u8
}

/// Answers REGISTER requests.
#[derive(Debug, Clone)]
pub struct Registrar {
    pub directory: Directory,
    pub locations: Arc<Locations>,
    pub auth: Arc<Authenticator>,
    pub tokens: TokenKey,
    /// The edge's socket towards cores: bindings carry a route through it (like Path).
    pub internal: SocketAddr,
}

impl Registrar {
    /// The response to `msg`; `now_ms` is Unix milliseconds.
    pub async fn handle(&self, msg: &Message, ingress: &Ingress, now_ms: i64) -> ResponseBuilder {
        let tag = switchyard_sip::digest::hex(&rand::random::<u64>().to_be_bytes());
        let respond = |status: u16, reason: &str| {
            ResponseBuilder::for_request(msg, status, reason, &tag).stamp_top_via(ingress.source)
        };
        let to = match msg.to_header() {
            Ok(t) => t,
            Err(e) => return respond(400, &e.to_string()),
        };
        let Ok(to_uri) = to.uri() else {
            return respond(400, "Bad To URI");
        };
        let Some(sip) = to_uri.as_sip() else {
            return respond(416, "Unsupported URI Scheme");
        };
        let entry = match self.directory.active_tenant(Some(sip.host)).await {
            Ok(t) => t,
            Err((status, reason)) => {
                info!(source = %ingress.source, domain = sip.host, status, "REGISTER refused");
                if status == 404 {
                    self.auth.unknown_name(
                        ingress.source.ip(),
                        &format!("@{}", sip.host),
                        (now_ms / 1000) as u64,
                    );
                }
                return respond(status, reason);
            }
        };
        let Some(aor_user) = sip.user.filter(|u| !u.is_empty()) else {
            return respond(400, "To URI has no user part");
        };
        let now_secs = (now_ms / 1000) as u64;
        let tenant = &entry.tenant;
        let ext = match self.auth.check(
            &entry,
            msg,
            HeaderName::Authorization,
            aor_user,
            ingress.source.ip(),
            now_secs,
        ) {
            AuthOutcome::Authenticated(ext) => ext,
            AuthOutcome::Challenge { stale } => {
                let mut b = respond(401, "Unauthorized");
                for c in self
                    .auth
                    .challenges(&tenant.domain, ingress.source.ip(), stale, now_secs)
                {
                    b = b.header("WWW-Authenticate", c);
                }
                return b;
            }
            AuthOutcome::Forbidden(reason) => return respond(403, reason),
            AuthOutcome::BadRequest(reason) => return respond(400, reason),
        };
        let tenant_id = tenant.tenant_id();
        let aor = switchyard_state::aor(&ext.username, &tenant.domain);
        let contacts: Vec<NameAddr<'_>> = match msg.contacts().collect() {
            Ok(c) => c,
            Err(e) => return respond(400, &e.to_string()),
        };
        let header_expires = match msg.expires() {
            Ok(e) => e,
            Err(e) => return respond(400, &e.to_string()),
        };
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let state_error = |e: StateError| match e {
            StateError::TooManyContacts(n) => {
                self.auth
                    .metrics()
                    .rejected(&tenant.id, Rejection::ExtensionRegistrations);
                info!(tenant = %tenant.id, aor, limit = n, "registration limit reached");
                respond(403, "Too many registrations for this extension")
            }
            StateError::TenantFull(n) => {
                self.auth
                    .metrics()
                    .rejected(&tenant.id, Rejection::MaxRegistrations);
                info!(tenant = %tenant.id, aor, limit = n, "tenant registration limit reached");
                respond(
                    403,
                    &format!("Tenant registration limit reached (max_registrations {n})"),
                )
            }
            StateError::OutOfOrder => respond(500, "Out-of-order REGISTER"),
            other => {
                warn!(error = %other, "location service unavailable");
                respond(500, "Location service unavailable").header("Retry-After", "5")
            }
        };
        if contacts.iter().any(|c| c.is_star) {
            if contacts.len() != 1 || header_expires != Some(0) {
                return respond(400, "Contact * needs Expires: 0 and no other contact");
            }
            if let Err(e) = self.locations.unregister_all(&tenant_id, &aor).await {
                return state_error(e);
            }
            info!(tenant = %tenant.id, aor, source = %ingress.source, "unregistered every contact");
            return respond(200, "OK");
        }
        let route = format!(
            "<sip:{}@{};lr>",
            self.tokens.encode(&ingress.token()),
            self.internal
        );
        // RFC 3327: proxies between us and the phone that asked to stay on the path.
        let phone_path: Vec<String> = msg.values(HeaderName::Path).map(str::to_owned).collect();
        let mut outbound_used = false;
        // The AoR's bindings as the last write left them (the answer's Contact list).
        let mut written: Option<Vec<Binding>> = None;
        for contact in &contacts {
            let requested = match contact.expires() {
                Ok(Some(e)) => i64::from(e),
                Ok(None) => header_expires.map_or(tenant.reg_expiry_default, i64::from),
                Err(e) => return respond(400, &e.to_string()),
            };
            if requested == 0 {
                if let Err(e) = self
                    .locations
                    .unregister(&tenant_id, &aor, contact.uri_str)
                    .await
                {
                    return state_error(e);
                }
                written = None;
                continue;
            }
            if requested < tenant.reg_expiry_min {
                return respond(423, "Interval Too Brief")
                    .header("Min-Expires", tenant.reg_expiry_min.to_string());
            }
            // RFC 5626 §6: a contact with +sip.instance and reg-id from a client that
            // supports outbound is one flow; its new registration replaces the old one.
            let instance = match (
                contact.params.get("+sip.instance").flatten(),
                contact.params.get("reg-id").flatten(),
            ) {
                (Some(i), Some(r)) if msg.supports("outbound") => Some(format!("{i}|{r}")),
                _ => None,
            };
            let granted = stagger(
                requested.min(tenant.reg_expiry_max),
                tenant.reg_expiry_min,
                &tenant.id,
                &aor,
                instance.as_deref().unwrap_or(contact.uri_str),
            );
            if let Some(key) = &instance {
                outbound_used = true;
                let old = match self.locations.lookup(&tenant_id, &aor, now_ms).await {
                    Ok(list) => list,
                    Err(e) => return state_error(e),
                };
                for stale in old
                    .iter()
                    .filter(|b| b.instance.as_ref() == Some(key) && b.contact != contact.uri_str)
                {
                    if let Err(e) = self
                        .locations
                        .unregister(&tenant_id, &aor, &stale.contact)
                        .await
                    {
                        return state_error(e);
                    }
                }
            }
            let binding = Binding {
                contact: contact.uri_str.to_owned(),
                expires_at_ms: now_ms + granted * 1000,
                flow: Some(route.clone()),
                source: format!("{} {}", ingress.transport, ingress.source),
                call_id: call_id.clone(),
                cseq,
                path: phone_path.clone(),
                instance,
            };
            let limits = BindingLimits {
                per_aor: usize::try_from(ext.max_registrations).unwrap_or(1),
                per_tenant: usize::try_from(tenant.max_registrations).unwrap_or(0),
            };
            match self
                .locations
                .register(&tenant_id, &aor, binding, limits, now_ms)
                .await
            {
                Ok(live) => written = Some(live),
                Err(e) => return state_error(e),
            }
            self.auth.metrics().registered(&tenant.id);
            info!(tenant = %tenant.id, aor, contact = contact.uri_str, expires = granted,
                source = %ingress.source, transport = %ingress.transport, "registered");
        }
        let mut bindings = match written {
            Some(live) => live,
            None => match self.locations.lookup(&tenant_id, &aor, now_ms).await {
                Ok(b) => b,
                Err(e) => return state_error(e),
            },
        };
        bindings.sort_by(|a, b| a.contact.cmp(&b.contact));
        let mut b = respond(200, "OK");
        for binding in bindings {
            let left = ((binding.expires_at_ms - now_ms) / 1000).max(1);
            b = b.header("Contact", format!("<{}>;expires={left}", binding.contact));
        }
        if !phone_path.is_empty() && msg.supports("path") {
            for p in &phone_path {
                b = b.header("Path", p.clone());
            }
        }
        if outbound_used {
            b = b.header("Require", "outbound");
        }
        b
    }
}

/// The stagger window is this fraction of the granted expiry (120 s of 3600).
pub const STAGGER_DIVISOR: i64 = 30;

/// Moves a grant into the window just below it, by a hash of tenant, address of record
/// and instance (the outbound instance, else the contact), never below `min`. Phones that
/// registered together (after an outage) then refresh spread over the window rather than
/// in the same second, and each phone keeps the same offset on every refresh. The window
/// is narrow enough that 10,000 phones refresh evenly (max/mean of the per-second counts
/// about 1.3), wide enough that no second carries more than a few dozen of them.
pub fn stagger(expires: i64, min: i64, tenant_id: &str, aor: &str, instance: &str) -> i64 {
    let window = expires / STAGGER_DIVISOR;
    if window < 1 {
        return expires;
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [tenant_id, aor, instance] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    (expires - (h.digest() % (window as u64 + 1)) as i64).max(min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_spread_evenly_over_a_window_below_the_maximum() {
        let mut per_second = std::collections::BTreeMap::<i64, u32>::new();
        for t in 0..500 {
            for e in 0..20 {
                let aor = format!("{}@t{t}.test", 1000 + e);
                let g = stagger(3600, 60, &format!("tenant-{t}"), &aor, "sip:x@192.0.2.1");
                assert!((3480..=3600).contains(&g), "{g}");
                assert_eq!(
                    g,
                    stagger(3600, 60, &format!("tenant-{t}"), &aor, "sip:x@192.0.2.1"),
                    "the same phone keeps its offset"
                );
                *per_second.entry(g).or_default() += 1;
            }
        }
        assert_eq!(per_second.len(), 121, "every second of the window is used");
        let max = *per_second.values().max().unwrap() as f64;
        let mean = 10_000.0 / 121.0;
        assert!(max / mean < 1.5, "max/mean {}", max / mean);
        // Another instance of the same AoR lands elsewhere (most of the time).
        let distinct: std::collections::HashSet<i64> = (0..50)
            .map(|i| stagger(3600, 60, "t", "a@t", &format!("sip:a@192.0.2.{i}")))
            .collect();
        assert!(distinct.len() > 30);
        // Short grants are left alone; the minimum is never undercut.
        assert_eq!(stagger(29, 10, "t", "a", "c"), 29);
        assert!(stagger(90, 89, "t", "a", "c") >= 89);
    }
}
