//! Per-tenant call series of the core (prometheus-client): attempts, how calls ended,
//! the answer-seizure ratio, post-dial delay and call duration. Labels are tenant ids the
//! core found in its configuration (never a value a phone chose) and a disposition from
//! a fixed list.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DispositionLabels {
    pub tenant: String,
    pub disposition: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkLabels {
    pub tenant: String,
    pub trunk: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkOutcomeLabels {
    pub tenant: String,
    pub trunk: String,
    pub outcome: &'static str,
}

/// What a trunk made of one INVITE sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrunkOutcome {
    Answered,
    /// `486`/`600`: the number is busy.
    Busy,
    /// Another `4xx` or `6xx`: the number or the call refused.
    Refused,
    /// `5xx`: the trunk failed.
    Failed,
    /// `408`, no answer to the transaction, or silence past the limit.
    NoResponse,
}

impl TrunkOutcome {
    pub fn of_status(status: u16) -> TrunkOutcome {
        match status {
            200..=299 => TrunkOutcome::Answered,
            486 | 600 => TrunkOutcome::Busy,
            408 => TrunkOutcome::NoResponse,
            500..=599 => TrunkOutcome::Failed,
            _ => TrunkOutcome::Refused,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrunkOutcome::Answered => "answered",
            TrunkOutcome::Busy => "busy",
            TrunkOutcome::Refused => "refused",
            TrunkOutcome::Failed => "failed",
            TrunkOutcome::NoResponse => "no-response",
        }
    }
}

/// How a call ended, as its CDR says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Answered,
    Busy,
    NoAnswer,
    Cancelled,
    Failed,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "answered",
            Disposition::Busy => "busy",
            Disposition::NoAnswer => "no-answer",
            Disposition::Cancelled => "cancelled",
            Disposition::Failed => "failed",
        }
    }
}

/// Post-dial delay buckets, seconds: a phone ringing within 50 ms up to a slow carrier.
const PDD_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Call duration buckets, seconds: from a misdial to a long meeting.
const DURATION_BUCKETS: [f64; 10] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

fn pdd_histogram() -> Histogram {
    Histogram::new(PDD_BUCKETS)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

type HistogramFamily = Family<TenantLabel, Histogram, fn() -> Histogram>;

/// The core's per-tenant families.
#[derive(Debug)]
pub struct CallMetrics {
    attempts: Family<TenantLabel, Counter>,
    answered: Family<TenantLabel, Counter>,
    dispositions: Family<DispositionLabels, Counter>,
    asr: Family<TenantLabel, Gauge<f64, AtomicU64>>,
    post_dial_delay: HistogramFamily,
    duration: HistogramFamily,
    trunk_attempts: Family<TrunkLabels, Counter>,
    trunk_outcomes: Family<TrunkOutcomeLabels, Counter>,
    trunk_failovers: Family<TrunkLabels, Counter>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            attempts: Family::default(),
            answered: Family::default(),
            dispositions: Family::default(),
            asr: Family::default(),
            post_dial_delay: Family::new_with_constructor(pdd_histogram),
            duration: Family::new_with_constructor(duration_histogram),
            trunk_attempts: Family::default(),
            trunk_outcomes: Family::default(),
            trunk_failovers: Family::default(),
        }
    }
}

fn trunk_label(tenant: &str, trunk: &str) -> TrunkLabels {
    TrunkLabels {
        tenant: tenant.to_owned(),
        trunk: trunk.to_owned(),
    }
}

fn label(tenant: &str) -> TenantLabel {
    TenantLabel {
        tenant: tenant.to_owned(),
    }
}

impl CallMetrics {
    /// Registers every family in `registry` (prefixes `switchyard_tenant` and
    /// `switchyard_trunk`; trunk series carry the tenant and the trunk's id).
    pub fn register(&self, registry: &mut Registry) {
        let trunks = registry.sub_registry_with_prefix("switchyard_trunk");
        trunks.register(
            "attempts",
            "INVITEs sent out through the trunk (an answered challenge is the same attempt)",
            self.trunk_attempts.clone(),
        );
        trunks.register(
            "outcomes",
            "What the trunk made of the INVITEs sent to it",
            self.trunk_outcomes.clone(),
        );
        trunks.register(
            "failovers",
            "Calls the trunk failed that went on to the next route",
            self.trunk_failovers.clone(),
        );
        let sub = registry.sub_registry_with_prefix("switchyard_tenant");
        sub.register(
            "call_attempts",
            "Initial INVITEs the core took for the tenant (seizures)",
            self.attempts.clone(),
        );
        sub.register(
            "calls_answered",
            "Calls of the tenant that were answered",
            self.answered.clone(),
        );
        sub.register(
            "call_dispositions",
            "Calls of the tenant that ended, by disposition (as in the CDR)",
            self.dispositions.clone(),
        );
        sub.register(
            "answer_seizure_ratio",
            "Answered calls over attempts since the node started",
            self.asr.clone(),
        );
        sub.register(
            "post_dial_delay_seconds",
            "From the INVITE to the first ringing or answer sent back to the caller",
            self.post_dial_delay.clone(),
        );
        sub.register(
            "call_duration_seconds",
            "From answer to hang-up, answered calls",
            self.duration.clone(),
        );
    }

    /// A new call of `tenant` reached the core with a configuration.
    pub fn attempted(&self, tenant: &str) {
        self.attempts.get_or_create(&label(tenant)).inc();
        self.update_asr(tenant);
    }

    /// The caller heard ringing or the answer, `delay` after its INVITE.
    pub fn post_dial_delay(&self, tenant: &str, delay: Duration) {
        self.post_dial_delay
            .get_or_create(&label(tenant))
            .observe(delay.as_secs_f64());
    }

    pub fn answered(&self, tenant: &str) {
        self.answered.get_or_create(&label(tenant)).inc();
        self.update_asr(tenant);
    }

    /// A call ended; `talked` is its answered time (answered calls only).
    pub fn ended(&self, tenant: &str, disposition: Disposition, talked: Option<Duration>) {
        self.dispositions
            .get_or_create(&DispositionLabels {
                tenant: tenant.to_owned(),
                disposition: disposition.as_str(),
            })
            .inc();
        if let Some(t) = talked {
            self.duration
                .get_or_create(&label(tenant))
                .observe(t.as_secs_f64());
        }
    }

    /// An INVITE went out through `trunk`.
    pub fn trunk_attempted(&self, tenant: &str, trunk: &str) {
        self.trunk_attempts
            .get_or_create(&trunk_label(tenant, trunk))
            .inc();
    }

    pub fn trunk_outcome(&self, tenant: &str, trunk: &str, outcome: TrunkOutcome) {
        self.trunk_outcomes
            .get_or_create(&TrunkOutcomeLabels {
                tenant: tenant.to_owned(),
                trunk: trunk.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The call left `trunk` for the next route.
    pub fn trunk_failed_over(&self, tenant: &str, trunk: &str) {
        self.trunk_failovers
            .get_or_create(&trunk_label(tenant, trunk))
            .inc();
    }

    fn update_asr(&self, tenant: &str) {
        let key = label(tenant);
        let attempts = self.attempts.get_or_create(&key).get();
        let answered = self.answered.get_or_create(&key).get();
        if attempts > 0 {
            self.asr
                .get_or_create(&key)
                .set(answered as f64 / attempts as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn a_tenants_calls_make_its_ratio_delays_and_durations() {
        let m = CallMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        for _ in 0..4 {
            m.attempted("t1");
        }
        m.post_dial_delay("t1", Duration::from_millis(30));
        m.answered("t1");
        m.ended("t1", Disposition::Answered, Some(Duration::from_secs(42)));
        m.ended("t1", Disposition::Busy, None);
        m.attempted("t2");
        m.trunk_attempted("t1", "k1");
        m.trunk_attempted("t1", "k1");
        m.trunk_outcome("t1", "k1", TrunkOutcome::of_status(503));
        m.trunk_failed_over("t1", "k1");
        m.trunk_outcome("t1", "k1", TrunkOutcome::of_status(200));
        let text = text(&registry);
        for line in [
            "switchyard_tenant_call_attempts_total{tenant=\"t1\"} 4",
            "switchyard_tenant_calls_answered_total{tenant=\"t1\"} 1",
            "switchyard_tenant_answer_seizure_ratio{tenant=\"t1\"} 0.25",
            "switchyard_tenant_answer_seizure_ratio{tenant=\"t2\"} 0.0",
            "switchyard_tenant_call_dispositions_total{tenant=\"t1\",disposition=\"answered\"} 1",
            "switchyard_tenant_call_dispositions_total{tenant=\"t1\",disposition=\"busy\"} 1",
            "switchyard_tenant_post_dial_delay_seconds_bucket{le=\"0.025\",tenant=\"t1\"} 0",
            "switchyard_tenant_post_dial_delay_seconds_bucket{le=\"0.05\",tenant=\"t1\"} 1",
            "switchyard_tenant_call_duration_seconds_sum{tenant=\"t1\"} 42.0",
            "switchyard_tenant_call_duration_seconds_count{tenant=\"t1\"} 1",
            "switchyard_trunk_attempts_total{tenant=\"t1\",trunk=\"k1\"} 2",
            "switchyard_trunk_outcomes_total{tenant=\"t1\",trunk=\"k1\",outcome=\"failed\"} 1",
            "switchyard_trunk_outcomes_total{tenant=\"t1\",trunk=\"k1\",outcome=\"answered\"} 1",
            "switchyard_trunk_failovers_total{tenant=\"t1\",trunk=\"k1\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
