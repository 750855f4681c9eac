//! Per-tenant series of the edge (prometheus-client): what a provider watches per
//! customer. Labels are tenant ids the directory knows (never a domain or user from a
//! message, so an attacker cannot grow the label set), and a rejection's reason from a
//! fixed list.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub tenant: String,
    pub reason: &'static str,
}

/// Why the edge refused a tenant's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Wrong or missing credentials past the challenge, or a banned source.
    Auth,
    /// The tenant's `max_registrations`.
    MaxRegistrations,
    /// The extension's `max_registrations`.
    ExtensionRegistrations,
    MaxCalls,
    CallsPerSecond,
    /// Shed: the edge's queue was too old.
    Overload,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Auth => "auth",
            Rejection::MaxRegistrations => "max_registrations",
            Rejection::ExtensionRegistrations => "extension_registrations",
            Rejection::MaxCalls => "max_calls",
            Rejection::CallsPerSecond => "calls_per_second",
            Rejection::Overload => "overload",
        }
    }
}

/// The edge's per-tenant families.
#[derive(Debug, Default)]
pub struct TenantMetrics {
    pub registrations: Family<TenantLabel, Counter>,
    pub rejections: Family<RejectionLabels, Counter>,
    pub calls: Family<TenantLabel, Counter>,
    pub calls_in_progress: Family<TenantLabel, Gauge>,
    pub bans: Family<TenantLabel, Counter>,
}

fn label(tenant: &str) -> TenantLabel {
    TenantLabel {
        tenant: tenant.to_owned(),
    }
}

impl TenantMetrics {
    /// Registers every family in `registry` (prefix `switchyard_tenant`).
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("switchyard_tenant");
        sub.register(
            "registrations",
            "Successful REGISTERs per tenant",
            self.registrations.clone(),
        );
        sub.register(
            "rejections",
            "Requests the edge refused per tenant, by reason",
            self.rejections.clone(),
        );
        sub.register("calls", "New calls admitted per tenant", self.calls.clone());
        sub.register(
            "calls_in_progress",
            "Calls holding a slot of the tenant's cap at this edge",
            self.calls_in_progress.clone(),
        );
        sub.register(
            "bans",
            "Sources banned after failing to authenticate as one of the tenant's extensions",
            self.bans.clone(),
        );
    }

    pub fn registered(&self, tenant: &str) {
        self.registrations.get_or_create(&label(tenant)).inc();
    }

    pub fn rejected(&self, tenant: &str, why: Rejection) {
        self.rejections
            .get_or_create(&RejectionLabels {
                tenant: tenant.to_owned(),
                reason: why.as_str(),
            })
            .inc();
    }

    pub fn call_started(&self, tenant: &str) {
        self.calls.get_or_create(&label(tenant)).inc();
        self.calls_in_progress.get_or_create(&label(tenant)).inc();
    }

    pub fn call_ended(&self, tenant: &str) {
        self.calls_in_progress.get_or_create(&label(tenant)).dec();
    }

    pub fn banned(&self, tenant: &str) {
        self.bans.get_or_create(&label(tenant)).inc();
    }
}

/// The registry as Prometheus text (without OpenMetrics' closing `# EOF`, so it can
/// follow other series in one scrape).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        return String::new();
    }
    out.lines()
        .filter(|l| *l != "# EOF")
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_the_tenant_and_the_reason() {
        let m = TenantMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.registered("t1");
        m.rejected("t1", Rejection::MaxCalls);
        m.call_started("t2");
        m.call_started("t2");
        m.call_ended("t2");
        let text = encode(&registry);
        assert!(
            text.contains("switchyard_tenant_registrations_total{tenant=\"t1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "switchyard_tenant_rejections_total{tenant=\"t1\",reason=\"max_calls\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("switchyard_tenant_calls_total{tenant=\"t2\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_tenant_calls_in_progress{tenant=\"t2\"} 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
