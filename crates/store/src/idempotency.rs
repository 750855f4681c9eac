//! Idempotency records for the API. Claiming a key is one `INSERT ... ON CONFLICT DO
//! NOTHING`: of any number of concurrent requests with one key, exactly one claims it and
//! runs; the others see the claim and wait for its stored response.

use crate::{Result, Store, in_tx};

/// How long a record is kept (24 h).
pub const RETENTION_MS: i64 = 24 * 3600 * 1000;
/// A claim older than this with no response is taken to be abandoned (the process died).
pub const ABANDONED_MS: i64 = 60 * 1000;

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the key: run it, then `finish_idempotent`.
    Run,
    /// The same request already ran: answer with this.
    Replay { status: u16, body: String },
    /// The key was used with a different request.
    Mismatch,
    /// The same request is running elsewhere.
    InProgress,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    request_sha256: String,
    state: String,
    status: Option<i64>,
    body: Option<String>,
    created_at: i64,
}

impl Store {
    /// Claims `(key_id, idem_key)` for a request whose method, path and body hash to
    /// `request_sha256`.
    pub async fn claim_idempotent(
        &self,
        key_id: &str,
        idem_key: &str,
        request_sha256: &str,
    ) -> Result<Claim> {
        let now = self.now();
        Ok(in_tx!(self, |tx, _pg| {
            // Expired records and abandoned claims make way for a new claim.
            sqlx::query(
                "DELETE FROM idempotency WHERE key_id = $1 AND idem_key = $2 \
                 AND (created_at < $3 OR (state = 'pending' AND created_at < $4))",
            )
            .bind(key_id)
            .bind(idem_key)
            .bind(now - RETENTION_MS)
            .bind(now - ABANDONED_MS)
            .execute(&mut *tx)
            .await?;
            let inserted = sqlx::query(
                "INSERT INTO idempotency (key_id, idem_key, request_sha256, state, created_at) \
                 VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT (key_id, idem_key) DO NOTHING",
            )
            .bind(key_id)
            .bind(idem_key)
            .bind(request_sha256)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                Claim::Run
            } else {
                let row: Option<Row> = sqlx::query_as(
                    "SELECT request_sha256, state, status, body, created_at FROM idempotency WHERE key_id = $1 AND idem_key = $2",
                )
                .bind(key_id)
                .bind(idem_key)
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    None => Claim::InProgress,
                    Some(r) if r.request_sha256 != request_sha256 => Claim::Mismatch,
                    Some(r) if r.state == "done" => Claim::Replay {
                        status: r.status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500),
                        body: r.body.unwrap_or_default(),
                    },
                    Some(r) => {
                        let _ = r.created_at;
                        Claim::InProgress
                    }
                }
            }
        }))
    }

    /// Stores the response of a claimed request.
    pub async fn finish_idempotent(
        &self,
        key_id: &str,
        idem_key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        in_tx!(self, |tx, _pg| {
            sqlx::query("UPDATE idempotency SET state = 'done', status = $1, body = $2 WHERE key_id = $3 AND idem_key = $4")
                .bind(i64::from(status))
                .bind(body)
                .bind(key_id)
                .bind(idem_key)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Drops a claim whose request failed in a way a retry may fix (a 5xx).
    pub async fn abandon_idempotent(&self, key_id: &str, idem_key: &str) -> Result<()> {
        in_tx!(self, |tx, _pg| {
            sqlx::query(
                "DELETE FROM idempotency WHERE key_id = $1 AND idem_key = $2 AND state = 'pending'",
            )
            .bind(key_id)
            .bind(idem_key)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        });
        Ok(())
    }
}
