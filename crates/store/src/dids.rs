//! The DID pool. "Give tenant T the next free DID" is safe with any number of concurrent
//! callers: PostgreSQL picks a free row with `FOR UPDATE SKIP LOCKED` (concurrent callers
//! take different rows instead of waiting on one); SQLite serialises writers with
//! `BEGIN IMMEDIATE`. Released numbers go to quarantine before reuse.

use crate::tenants::bump_version;
use crate::{Did, Result, Store, StoreError, in_tx, lock, on_pool};

/// E.164: `+`, a non-zero country digit, 7 to 15 digits in all.
pub fn check_e164(number: &str) -> Result<()> {
    let digits = number.strip_prefix('+').unwrap_or("");
    let ok = (7..=15).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "number",
            format!("{number:?} is not E.164 (+ and 7 to 15 digits)"),
        ))
    }
}

impl Store {
    /// Adds numbers to the free pool (all or none).
    pub async fn add_dids(&self, numbers: &[String]) -> Result<()> {
        for n in numbers {
            check_e164(n)?;
        }
        let now = self.now();
        in_tx!(self, |tx, _pg| {
            for n in numbers {
                sqlx::query("INSERT INTO dids (number, state, updated_at) VALUES ($1, 'free', $2)")
                    .bind(n)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_write)?;
            }
        });
        Ok(())
    }

    /// Assigns the lowest free number to the tenant, first returning to the pool any
    /// quarantined number whose quarantine has ended.
    pub async fn assign_next_did(&self, tenant_id: &str) -> Result<Did> {
        let now = self.now();
        Ok(in_tx!(self, |tx, pg| {
            bump_version!(tx, tenant_id, "did.assigned", now);
            sqlx::query(
                "UPDATE dids SET state = 'free', quarantined_until = NULL, updated_at = $1 \
                 WHERE state = 'quarantined' AND quarantined_until <= $1",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let number: Option<String> = sqlx::query_scalar(lock!(
                pg,
                "SELECT number FROM dids WHERE state = 'free' ORDER BY number LIMIT 1",
                skip_locked
            ))
            .fetch_optional(&mut *tx)
            .await?;
            let number = number.ok_or_else(|| StoreError::Exhausted {
                what: "no free number in the DID pool".into(),
            })?;
            let did: Did = sqlx::query_as(
                "UPDATE dids SET state = 'assigned', tenant_id = $1, updated_at = $2 \
                 WHERE number = $3 AND state = 'free' RETURNING *",
            )
            .bind(tenant_id)
            .bind(now)
            .bind(&number)
            .fetch_one(&mut *tx)
            .await?;
            did
        }))
    }

    /// Releases a tenant's number into quarantine until `until` (epoch ms).
    /// `expected_version`: apply only if the tenant is still at it (If-Match).
    pub async fn release_did(
        &self,
        tenant_id: &str,
        number: &str,
        until: i64,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let now = self.now();
        in_tx!(self, |tx, _pg| {
            let version = bump_version!(tx, tenant_id, "did.released", now);
            crate::check_version(version, expected_version)?;
            let done = sqlx::query(
                "UPDATE dids SET state = 'quarantined', tenant_id = NULL, target = NULL, \
                 quarantined_until = $1, updated_at = $2 WHERE number = $3 AND tenant_id = $4",
            )
            .bind(until)
            .bind(now)
            .bind(number)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "DID" });
            }
        });
        Ok(())
    }

    /// Points a tenant's number at an extension or a call-flow resource of the same tenant.
    pub async fn set_did_target(
        &self,
        tenant_id: &str,
        number: &str,
        target: &crate::Target,
    ) -> Result<Did> {
        let (kind, id) = target.parts();
        let encoded = target.encode();
        let now = self.now();
        Ok(in_tx!(self, |tx, _pg| {
            bump_version!(tx, tenant_id, "did.target", now);
            if kind != "hangup" {
                crate::resources::ensure_in_tenant!(tx, tenant_id, kind, id, "target");
            }
            let did: Option<Did> = sqlx::query_as(
                "UPDATE dids SET target = $1, updated_at = $2 WHERE number = $3 AND tenant_id = $4 RETURNING *",
            )
            .bind(&encoded)
            .bind(now)
            .bind(number)
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
            did.ok_or(StoreError::NotFound { what: "DID" })?
        }))
    }

    /// A page of the tenant's numbers in order, after `after`.
    pub async fn dids_page(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Did>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM dids WHERE tenant_id = $1 AND ($2 IS NULL OR number > $2) ORDER BY number LIMIT $3",
            )
            .bind(tenant_id)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn dids_of(&self, tenant_id: &str) -> Result<Vec<Did>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM dids WHERE tenant_id = $1 ORDER BY number")
                .bind(tenant_id)
                .fetch_all(pool)
                .await?
        }))
    }

    pub async fn did(&self, number: &str) -> Result<Did> {
        let d: Option<Did> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM dids WHERE number = $1")
                .bind(number)
                .fetch_optional(pool)
                .await?
        });
        d.ok_or(StoreError::NotFound { what: "DID" })
    }
}

#[cfg(test)]
mod tests {
    use super::check_e164;

    #[test]
    fn e164_numbers() {
        assert!(check_e164("+14155550100").is_ok());
        assert!(check_e164("+4930123456").is_ok());
        for bad in [
            "14155550100",
            "+0123456789",
            "+1-415-555",
            "+123",
            "+1234567890123456",
            "",
        ] {
            assert!(check_e164(bad).is_err(), "{bad}");
        }
    }
}
