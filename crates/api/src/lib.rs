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
        }
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

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The router with every route and `/openapi.json`.
pub fn router(state: AppState) -> Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::routes())
        .split_for_parts();
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
