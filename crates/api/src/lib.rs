//! The provisioning REST API: tenants, extension ranges, extensions and numbers under
//! `/v1`, API keys in `Authorization: Bearer`, errors as `application/problem+json`, and an
//! OpenAPI 3.1 document generated from the handlers at `/openapi.json`.
//!
//! ```text
//!  client ──HTTP──▶ axum router ──▶ Principal (key → scope) ──▶ handler ──▶ Store
//!                                                     problem+json ◀── ApiError
//! ```

#![forbid(unsafe_code)]

mod auth;
mod error;
mod idempotency;
mod jobs;
mod routes;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use auth::{Principal, hash_secret, issue_key};
pub use error::{ApiError, Problem};
pub use jobs::JobRunner;
use switchyard_store::Store;

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    /// Requests per second allowed per API key (with a burst of twice that).
    pub limiter: std::sync::Arc<KeyLimiter>,
    /// Long operations, one after another per tenant.
    pub jobs: std::sync::Arc<JobRunner>,
    /// Gauges of the roles in this process, served at `/metrics`.
    pub metrics: Option<Metrics>,
    /// The edge's banned sources, listed and lifted under `/v1/bans`.
    pub bans: Option<std::sync::Arc<dyn BanList>>,
    /// The cluster's cores and media nodes, listed and drained under `/v1/cluster/nodes`.
    pub cluster: Option<std::sync::Arc<dyn ClusterNodes>>,
    /// Series already in the Prometheus text format (per-tenant families), appended to
    /// `/metrics`.
    pub metrics_text: Option<MetricsText>,
}

/// A source of Prometheus text, read when `/metrics` is scraped.
#[derive(Clone)]
pub struct MetricsText(pub std::sync::Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for MetricsText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsText(..)")
    }
}

/// One banned source, as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct BanView {
    pub source: String,
    /// `auth-failures`, `scan` or `malformed-flood`.
    pub reason: String,
    /// Unix seconds.
    pub since: u64,
    pub until: u64,
    /// Bans of this source within the last day, this one included.
    pub strikes: u32,
}

/// A node of the cluster, as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// `core@ADDR` or `media@ADDR`.
    pub id: String,
    /// `core` or `media`.
    pub role: String,
    pub addr: String,
    /// A media node's pool.
    pub pool: String,
    /// Calls (core) or sessions (media) it takes at most; 0: not limited.
    pub capacity: u64,
    /// Calls or sessions it holds.
    pub load: u64,
    /// `active`, `draining` (no new calls; its calls go on) or `drained` (draining and
    /// empty: it may be stopped).
    pub state: String,
    /// An operator asked it to drain.
    pub drain_requested: bool,
    /// Its last heartbeat, Unix ms.
    pub seen_ms: i64,
}

/// A boxed future (the cluster's state is remote).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The cluster's membership (the API does not depend on the state crate's Redis types).
pub trait ClusterNodes: Send + Sync + std::fmt::Debug {
    fn list(&self) -> BoxFuture<'_, Result<Vec<NodeView>, String>>;
    /// Asks node `id` to drain, or to take calls again; false when no such node is live.
    fn set_drain(&self, id: String, drain: bool) -> BoxFuture<'_, Result<bool, String>>;
}

/// The bans of the edge in this process (the API does not depend on the edge crate).
pub trait BanList: Send + Sync + std::fmt::Debug {
    fn list(&self) -> Vec<BanView>;
    /// Lifts the ban of `source`; whether one was in force.
    fn lift(&self, source: std::net::IpAddr) -> bool;
}

/// Gauges in the Prometheus text format: one TYPE line per family (`counter` for names
/// ending `_total`), each family's series together (the order given otherwise).
pub fn render_gauges(mut gauges: Vec<(String, f64)>) -> String {
    use std::fmt::Write;
    let family = |name: &str| name.split('{').next().unwrap_or(name).to_owned();
    // First appearance decides a family's place; a stable sort keeps its series' order.
    let mut first_seen = std::collections::HashMap::new();
    for (i, (name, _)) in gauges.iter().enumerate() {
        first_seen.entry(family(name)).or_insert(i);
    }
    gauges.sort_by_key(|(name, _)| first_seen[&family(name)]);
    let mut out = String::new();
    let mut last = String::new();
    for (name, value) in gauges {
        let f = family(&name);
        if f != last {
            let kind = if f.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# TYPE {f} {kind}");
            last = f;
        }
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// A source of gauges: `(name, value)` pairs read when `/metrics` is scraped.
#[derive(Clone)]
pub struct Metrics(pub std::sync::Arc<dyn Fn() -> Vec<(String, f64)> + Send + Sync>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

impl AppState {
    /// State with the default per-key limit (100 requests/s, bursts of 200).
    pub fn new(store: Store) -> AppState {
        AppState::with_rate(store, 100)
    }

    pub fn with_rate(store: Store, per_second: u32) -> AppState {
        AppState {
            jobs: JobRunner::new(store.clone()),
            store,
            limiter: std::sync::Arc::new(KeyLimiter::new(per_second)),
            metrics: None,
            bans: None,
            cluster: None,
            metrics_text: None,
        }
    }

    /// Appends this text to `/metrics`.
    pub fn with_metrics_text(mut self, text: MetricsText) -> AppState {
        self.metrics_text = Some(text);
        self
    }

    /// Lists and lifts these bans under `/v1/bans`.
    pub fn with_bans(mut self, bans: std::sync::Arc<dyn BanList>) -> AppState {
        self.bans = Some(bans);
        self
    }

    /// Lists and drains the cluster's nodes under `/v1/cluster/nodes`.
    pub fn with_cluster(mut self, cluster: std::sync::Arc<dyn ClusterNodes>) -> AppState {
        self.cluster = Some(cluster);
        self
    }

    /// Serves these gauges at `/metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> AppState {
        self.metrics = Some(metrics);
        self
    }
}

/// A keyed GCRA limiter (governor): one bucket per API key id.
pub struct KeyLimiter {
    inner: governor::DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for KeyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLimiter").finish_non_exhaustive()
    }
}

impl KeyLimiter {
    fn new(per_second: u32) -> KeyLimiter {
        let rate =
            std::num::NonZeroU32::new(per_second.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let burst =
            rate.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN));
        let quota = governor::Quota::per_second(rate).allow_burst(burst);
        KeyLimiter {
            inner: governor::RateLimiter::keyed(quota),
        }
    }

    /// Ok, or the seconds to wait.
    pub fn check(&self, key_id: &str) -> Result<(), u64> {
        use governor::clock::Clock;
        self.inner
            .check_key(&key_id.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                wait.as_secs() + 1
            })?;
        // Idle keys are dropped now and then so the table stays bounded.
        if self.inner.len() > 10_000 {
            self.inner.retain_recent();
        }
        Ok(())
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchyard provisioning API", version = "1"),
    components(schemas(Problem)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Problem answers in the document as they are on the wire: `application/problem+json`,
/// and on every operation the ones any request can get (bad syntax, failed validation;
/// with a key: 401 and 429; with a body: 409 for a busy Idempotency-Key, 413, 415).
fn document_problems(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    const PROBLEM: &str = "application/problem+json";
    let problem_ref = "#/components/schemas/Problem";
    let problem = |why: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(why)
                .content(
                    PROBLEM,
                    ContentBuilder::new()
                        .schema(Some(Ref::new(problem_ref)))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in api.paths.paths.iter_mut() {
        let names_something = path.contains('{');
        let ops = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, false),
            (&mut item.patch, true),
        ];
        for (op, writes_body) in ops {
            let Some(op) = op.as_mut() else { continue };
            for resp in op.responses.responses.values_mut() {
                let RefOr::T(r) = resp else { continue };
                let is_problem = r.content.get("application/json").is_some_and(
                    |c| matches!(&c.schema, Some(RefOr::Ref(x)) if x.ref_location == problem_ref),
                );
                if is_problem && let Some(c) = r.content.shift_remove("application/json") {
                    r.content.insert(PROBLEM.to_owned(), c);
                }
            }
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut add = |code: &str, why: &str| {
                op.responses
                    .responses
                    .entry(code.to_owned())
                    .or_insert_with(|| problem(why));
            };
            add("400", "the request cannot be read (syntax, encoding)");
            if names_something {
                add(
                    "404",
                    "nothing by that id here (or not visible to this key)",
                );
            }
            add("422", "a field breaks a rule; the problem names it");
            if secured {
                add("401", "no or an unknown API key");
                add("429", "the key is over its rate; see Retry-After");
            }
            if writes_body || op.request_body.is_some() {
                add(
                    "409",
                    "a request with the same Idempotency-Key is still running",
                );
                add("413", "the body is larger than the limit");
                add("415", "the body is not application/json");
            }
        }
    }
}

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The router with every route and `/openapi.json`.
pub fn router(state: AppState) -> Router {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::routes())
        .split_for_parts();
    document_problems(&mut api);
    let api = std::sync::Arc::new(api);
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let api = api.clone();
                async move { axum::Json(api.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotency,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Jobs queued before this start (or left running by a crash) run now.
    state.jobs.resume().await;
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

#[cfg(test)]
mod render_tests {
    #[test]
    fn each_familys_series_come_together_under_one_type_line() {
        let text = super::render_gauges(vec![
            ("up{node=\"a\"}".into(), 1.0),
            ("sessions{node=\"a\"}".into(), 3.0),
            ("up{node=\"b\"}".into(), 0.0),
            ("refused_total".into(), 7.0),
            ("sessions{node=\"b\"}".into(), 4.0),
        ]);
        assert_eq!(
            text,
            "# TYPE up gauge\nup{node=\"a\"} 1\nup{node=\"b\"} 0\n\
             # TYPE sessions gauge\nsessions{node=\"a\"} 3\nsessions{node=\"b\"} 4\n\
             # TYPE refused_total counter\nrefused_total 7\n"
        );
    }
}
