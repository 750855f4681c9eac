//! Store errors: what the API needs to answer precisely (404, 409 naming the constraint,
//! 422 naming the field and rule) without leaking database detail.

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// A unique constraint or an allocation rule refused the write.
    #[error("conflict: {what}")]
    Conflict { what: String },
    /// Input breaks a rule; `field` names it.
    #[error("invalid {field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    /// The caller's version (If-Match) is not the current one.
    #[error("version {expected} is not current (now {current})")]
    Stale { expected: i64, current: i64 },
    /// No free number left to allocate.
    #[error("exhausted: {what}")]
    Exhausted { what: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A store call made after its request's transaction was committed or rolled back.
    #[error("the request's transaction has ended")]
    RequestEnded,
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    pub(crate) fn invalid(field: &'static str, rule: impl Into<String>) -> Self {
        StoreError::Invalid {
            field,
            rule: rule.into(),
        }
    }

    /// Maps a unique-constraint violation to a conflict naming it; other errors pass.
    pub(crate) fn from_write(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            let msg = db.message().to_owned();
            let constraint = db.constraint().map(str::to_owned);
            if db.is_unique_violation() {
                let what = match constraint.as_deref() {
                    Some("tenants_domain_unique") => "a tenant with this domain exists".to_owned(),
                    Some("extensions_number_unique") => "this extension number is taken".to_owned(),
                    Some("extensions_username_unique") => "this SIP username is taken".to_owned(),
                    Some(other) => format!("unique constraint {other}"),
                    // SQLite names columns instead of constraints.
                    None if msg.contains("tenants.domain") => {
                        "a tenant with this domain exists".to_owned()
                    }
                    None if msg.contains("extensions.tenant_id, extensions.number") => {
                        "this extension number is taken".to_owned()
                    }
                    None if msg.contains("extensions.tenant_id, extensions.username") => {
                        "this SIP username is taken".to_owned()
                    }
                    None if msg.contains("dids.number") => {
                        "this number is already in the pool".to_owned()
                    }
                    None => "a unique value is taken".to_owned(),
                };
                return StoreError::Conflict { what };
            }
        }
        StoreError::Database(e)
    }

    /// Whether a retry may succeed (serialization failure, busy database, deadlock).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                matches!(
                    db.code().as_deref(),
                    Some("40001" | "40P01" | "5" | "6" | "517")
                )
            }
            StoreError::Database(sqlx::Error::PoolTimedOut) => true,
            _ => false,
        }
    }

    /// Whether the database could not be reached or answer (connection lost, server
    /// restarting): a retry a moment later may find it back.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}
