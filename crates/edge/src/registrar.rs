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
use switchyard_state::{Binding, Locations, StateError};
use switchyard_store::{Store, StoreError, Tenant};
use tracing::{info, warn};

use crate::auth::{AuthOutcome, Authenticator};
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

/// Finds the tenant a request is addressed to: its domain, exactly. `Err` is the answer.
pub async fn tenant_for_domain(
    store: &Store,
    domain: Option<&str>,
) -> Result<Tenant, (u16, &'static str)> {
    let Some(domain) = domain.filter(|d| !d.is_empty()) else {
        return Err((400, "No domain in the request"));
    };
    match store.tenant_by_domain(&domain.to_ascii_lowercase()).await {
        Ok(t) if t.state == "active" => Ok(t),
        Ok(_) => Err((403, "Tenant suspended")),
        Err(StoreError::NotFound { .. }) => Err((404, "Unknown domain")),
        Err(e) => {
            warn!(error = %e, "store unavailable");
            Err((500, "Store unavailable"))
        }
    }
}

/// Answers REGISTER requests.
#[derive(Debug, Clone)]
pub struct Registrar {
    pub store: Store,
    pub locations: Arc<Locations>,
    pub auth: Arc<Authenticator>,
    pub tokens: TokenKey,
    /// The edge's socket towards cores: bindings carry a route through it (like Path).
    pub internal: SocketAddr,
}

impl Registrar {
    /// The response to `msg`; `now_ms` is Unix milliseconds.
    pub async fn handle(&self, msg: &Message, ingress: &Ingress, now_ms: i64) -> ResponseBuilder {
        let tag = format!("{:016x}", rand::random::<u64>());
        let respond = |status: u16, reason: &str| {
            ResponseBuilder::for_request(msg, status, reason, &tag)
                .stamp_top_via(&ingress.source.ip().to_string(), ingress.source.port())
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
        let tenant = match tenant_for_domain(&self.store, Some(sip.host)).await {
            Ok(t) => t,
            Err((status, reason)) => {
                info!(source = %ingress.source, domain = sip.host, status, "REGISTER refused");
                return respond(status, reason);
            }
        };
        let Some(aor_user) = sip.user.filter(|u| !u.is_empty()) else {
            return respond(400, "To URI has no user part");
        };
        let now_secs = (now_ms / 1000) as u64;
        let ext = match self
            .auth
            .check(
                &tenant,
                msg,
                HeaderName::Authorization,
                aor_user,
                ingress.source.ip(),
                now_secs,
            )
            .await
        {
            Ok(AuthOutcome::Authenticated(ext)) => ext,
            Ok(AuthOutcome::Challenge { stale }) => {
                let mut b = respond(401, "Unauthorized");
                for c in self.auth.challenges(&tenant.domain, stale, now_secs) {
                    b = b.header("WWW-Authenticate", c);
                }
                return b;
            }
            Ok(AuthOutcome::Forbidden(reason)) => return respond(403, reason),
            Err(e) => {
                warn!(error = %e, "store unavailable");
                return respond(500, "Store unavailable").header("Retry-After", "5");
            }
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
                info!(tenant = %tenant.id, aor, limit = n, "registration limit reached");
                respond(403, "Too many registrations for this extension")
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
                continue;
            }
            if requested < tenant.reg_expiry_min {
                return respond(423, "Interval Too Brief")
                    .header("Min-Expires", tenant.reg_expiry_min.to_string());
            }
            let granted = stagger(requested.min(tenant.reg_expiry_max), &call_id);
            // RFC 5626 §6: a contact with +sip.instance and reg-id from a client that
            // supports outbound is one flow; its new registration replaces the old one.
            let instance = match (
                contact.params.get("+sip.instance").flatten(),
                contact.params.get("reg-id").flatten(),
            ) {
                (Some(i), Some(r)) if msg.supports("outbound") => Some(format!("{i}|{r}")),
                _ => None,
            };
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
            let max = usize::try_from(ext.max_registrations).unwrap_or(1);
            if let Err(e) = self
                .locations
                .register(&tenant_id, &aor, binding, max, now_ms)
                .await
            {
                return state_error(e);
            }
            info!(tenant = %tenant.id, aor, contact = contact.uri_str, expires = granted,
                source = %ingress.source, transport = %ingress.transport, "registered");
        }
        let bindings = match self.locations.lookup(&tenant_id, &aor, now_ms).await {
            Ok(b) => b,
            Err(e) => return state_error(e),
        };
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

/// Grants up to 10 % less than asked, spread by Call-ID, so phones that registered
/// together (after an outage) do not all refresh in the same second.
pub fn stagger(expires: i64, call_id: &str) -> i64 {
    if expires < 60 {
        return expires;
    }
    let spread = expires / 10;
    let h = xxhash_rust::xxh3::xxh3_64(call_id.as_bytes());
    expires - (h % (spread as u64 + 1)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staggering_stays_within_ten_percent_and_spreads() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let g = stagger(3600, &format!("call-{i}"));
            assert!((3240..=3600).contains(&g), "{g}");
            seen.insert(g);
        }
        assert!(seen.len() > 100, "only {} distinct expiries", seen.len());
        assert_eq!(stagger(30, "x"), 30);
        assert_eq!(stagger(3600, "same"), stagger(3600, "same"));
    }
}
