//! Per-tenant queue of long operations. A job's place in its tenant's queue (`seq`) is
//! taken under the tenant's row lock, so jobs of one tenant have a total order.

use crate::{Result, Store, StoreError, in_tx, lock, new_id, on_pool};

/// A queued, running or finished job.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Job {
    pub id: String,
    pub tenant_id: String,
    pub seq: i64,
    pub kind: String,
    pub state: String,
    pub payload: String,
    pub result: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// Queues a job for the tenant.
    pub async fn enqueue_job(&self, tenant_id: &str, kind: &str, payload: &str) -> Result<Job> {
        let now = self.now();
        let id = new_id();
        Ok(in_tx!(self, |tx, pg| {
            let exists: Option<String> =
                sqlx::query_scalar(lock!(pg, "SELECT id FROM tenants WHERE id = $1"))
                    .bind(tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound { what: "tenant" });
            }
            let seq: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs WHERE tenant_id = $1",
            )
            .bind(tenant_id)
            .fetch_one(&mut *tx)
            .await?;
            let job: Job = sqlx::query_as(
                "INSERT INTO jobs (id, tenant_id, seq, kind, state, payload, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'queued', $5, $6, $6) RETURNING *",
            )
            .bind(&id)
            .bind(tenant_id)
            .bind(seq)
            .bind(kind)
            .bind(payload)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            job
        }))
    }

    /// The tenant's next job to run (a `running` one left by a restart comes first).
    pub async fn next_job(&self, tenant_id: &str) -> Result<Option<Job>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND state IN ('queued', 'running') ORDER BY seq LIMIT 1")
                .bind(tenant_id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Tenants with jobs to run.
    pub async fn tenants_with_jobs(&self) -> Result<Vec<String>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar(
                "SELECT DISTINCT tenant_id FROM jobs WHERE state IN ('queued', 'running')",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn set_job_state(&self, id: &str, state: &str, result: Option<&str>) -> Result<()> {
        let now = self.now();
        in_tx!(self, |tx, _pg| {
            sqlx::query("UPDATE jobs SET state = $1, result = COALESCE($2, result), updated_at = $3 WHERE id = $4")
                .bind(state)
                .bind(result)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    pub async fn job(&self, tenant_id: &str, id: &str) -> Result<Job> {
        let j: Option<Job> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM jobs WHERE tenant_id = $1 AND id = $2")
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        j.ok_or(StoreError::NotFound { what: "job" })
    }

    /// A page of the tenant's jobs in queue order, after the one with `seq` `after`.
    pub async fn jobs_page(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Job>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM jobs WHERE tenant_id = $1 AND ($2 IS NULL OR seq > $2) ORDER BY seq LIMIT $3",
            )
            .bind(tenant_id)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }
}
