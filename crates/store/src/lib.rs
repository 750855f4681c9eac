//! The tenant configuration store: schema and migrations, typed repositories, race-safe
//! allocation of extension numbers and DIDs, config snapshots, and the outbox of change
//! events, on SQLite (embedded default) or PostgreSQL (cluster).
//!
//! Every write runs in one transaction that also bumps the tenant's `config_version` and
//! writes an outbox row, so a change and its event commit together or not at all. Writers
//! are serialised where they must be: SQLite by `BEGIN IMMEDIATE`, PostgreSQL by row locks
//! (`FOR UPDATE`, `FOR UPDATE SKIP LOCKED` for the DID pool) and unique constraints.
//!
//! ```text
//!  api ──write──▶ Store ──tx──▶ tables + outbox row (same commit)
//!  core ◀─snapshot── Store::tenant_config (one read, one version)
//! ```

#![forbid(unsafe_code)]

mod api_keys;
mod carriers;
mod dids;
mod error;
mod events;
mod extensions;
mod idempotency;
mod jobs;
mod model;
mod request_tx;
mod resources;
mod tenants;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// For If-Match: `version` is the tenant's version after this change's bump, so the
/// change applies only if the tenant was at `expected` before it.
pub(crate) fn check_version(version: i64, expected: Option<i64>) -> Result<()> {
    match expected {
        Some(expected) if expected != version - 1 => Err(StoreError::Stale {
            expected,
            current: version - 1,
        }),
        _ => Ok(()),
    }
}

pub use api_keys::ApiKey;
pub use carriers::{Carrier, CarrierRegistration};
pub use dids::check_e164;
pub use error::StoreError;
pub use events::{ChangeEvent, spawn_dispatcher};
pub use extensions::{
    EMERGENCY_NUMBERS, check_number, check_password, check_range, is_emergency_number,
};
pub use idempotency::{ABANDONED_MS, Claim, RETENTION_MS};
pub use jobs::Job;
pub use model::{
    Did, Extension, ExtensionChanges, ExtensionRange, NewExtension, NewTenant, OutboxEvent, Tenant,
    TenantChanges, TenantConfig,
};
pub use request_tx::{RequestTx, after_commit};
pub use resources::{
    Cdr, IvrMenuSpec, MediaPool, OutboundRouteSpec, Resource, ResourceKind, RingGroupSpec, Target,
    TimeConditionSpec, TimeRule, TrunkSpec, VoicemailBoxSpec,
};

pub type Result<T> = std::result::Result<T, StoreError>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Milliseconds since the Unix epoch; injected so tests control time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    clock: Clock,
    /// SQLite's one writer at a time, queued in process (FIFO) rather than in SQLite's
    /// busy handler; unused on PostgreSQL.
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .finish()
    }
}

/// Runs `$body` in a write transaction of the store's backend. Inside, `$tx` is the
/// transaction and `$pg` is true on PostgreSQL (for `lock!`). Inside a request transaction
/// (see [`request_tx`]) the body runs in a savepoint of it; otherwise in a transaction of
/// its own, which on SQLite starts with `BEGIN IMMEDIATE` after queueing for the writer lock.
macro_rules! in_tx {
    ($store:expr, |$tx:ident, $pg:ident| $body:expr) => {
        match $crate::request_tx::current() {
            Some(scope) => {
                let mut open = scope.tx.lock().await;
                match open.as_mut() {
                    Some($crate::request_tx::OpenTx::Sqlite(outer)) => {
                        let mut $tx = sqlx::Acquire::begin(&mut *outer).await?;
                        let $pg = false;
                        let out = $body;
                        $tx.commit().await?;
                        out
                    }
                    Some($crate::request_tx::OpenTx::Postgres(outer)) => {
                        let mut $tx = sqlx::Acquire::begin(&mut *outer).await?;
                        let $pg = true;
                        let out = $body;
                        $tx.commit().await?;
                        out
                    }
                    None => return Err($crate::StoreError::RequestEnded),
                }
            }
            None => match &$store.backend {
                $crate::Backend::Sqlite(pool) => {
                    let _writer = $store.writer.lock().await;
                    let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let $pg = false;
                    let out = $body;
                    $tx.commit().await?;
                    out
                }
                $crate::Backend::Postgres(pool) => {
                    let mut $tx = pool.begin().await?;
                    let $pg = true;
                    let out = $body;
                    $tx.commit().await?;
                    out
                }
            },
        }
    };
}

/// A read on the request transaction when there is one (read-your-writes), else on
/// whichever pool the store has. `$pool` is an executor used once.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $crate::request_tx::current() {
            Some(scope) => {
                let mut open = scope.tx.lock().await;
                match open.as_mut() {
                    Some($crate::request_tx::OpenTx::Sqlite(t)) => {
                        let $pool = &mut **t;
                        $body
                    }
                    Some($crate::request_tx::OpenTx::Postgres(t)) => {
                        let $pool = &mut **t;
                        $body
                    }
                    None => return Err($crate::StoreError::RequestEnded),
                }
            }
            None => $crate::pool_only!($store, |$pool| $body),
        }
    };
}

/// Work on the pool itself (migrations, closing, the dispatcher's own transactions).
macro_rules! pool_only {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            $crate::Backend::Sqlite($pool) => $body,
            $crate::Backend::Postgres($pool) => $body,
        }
    };
}

/// The statement with ` FOR UPDATE` on PostgreSQL (SQLite has no row locks; its writers
/// are already serialised by `BEGIN IMMEDIATE`).
macro_rules! lock {
    ($pg:expr, $sql:literal) => {
        if $pg {
            concat!($sql, " FOR UPDATE")
        } else {
            $sql
        }
    };
    ($pg:expr, $sql:literal, skip_locked) => {
        if $pg {
            concat!($sql, " FOR UPDATE SKIP LOCKED")
        } else {
            $sql
        }
    };
}

pub(crate) use {in_tx, lock, on_pool, pool_only};

impl Store {
    /// Opens `sqlite://PATH` (created if missing) or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Store> {
        let backend = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await?;
            Backend::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await?;
            Backend::Postgres(pool)
        } else {
            return Err(StoreError::invalid(
                "database url",
                "must start with sqlite: or postgres:",
            ));
        };
        Ok(Store {
            backend,
            clock: system_clock(),
            writer: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    pub(crate) fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        pool_only!(self, |pool| MIGRATOR.run(pool).await?);
        Ok(())
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        pool_only!(self, |pool| pool.close().await);
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
