//! API keys. A key is shown once as `sy_<id>_<secret>`; the store keeps the id, a SHA-256
//! of the secret, its scope (`operator` or one tenant id) and whether it may write.

use crate::{Result, Store, StoreError, in_tx, new_id, on_pool};

/// A stored key (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiKey {
    pub id: String,
    pub secret_sha256: String,
    pub scope: String,
    pub read_only: bool,
    pub created_at: i64,
}

impl Store {
    /// Records a key whose secret hashes to `secret_sha256`. `scope` is `operator` or an
    /// existing tenant id.
    pub async fn create_api_key(
        &self,
        secret_sha256: &str,
        scope: &str,
        read_only: bool,
    ) -> Result<ApiKey> {
        if scope != "operator" {
            self.tenant(scope).await?;
        }
        let key = ApiKey {
            id: new_id(),
            secret_sha256: secret_sha256.to_owned(),
            scope: scope.to_owned(),
            read_only,
            created_at: self.now(),
        };
        let k = &key;
        in_tx!(self, |tx, _pg| {
            sqlx::query("INSERT INTO api_keys (id, secret_sha256, scope, read_only, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&k.id)
                .bind(&k.secret_sha256)
                .bind(&k.scope)
                .bind(k.read_only)
                .bind(k.created_at)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_write)?;
        });
        Ok(key)
    }

    pub async fn api_key(&self, id: &str) -> Result<ApiKey> {
        let k: Option<ApiKey> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        k.ok_or(StoreError::NotFound { what: "API key" })
    }
}

impl Store {
    /// Revokes a key.
    pub async fn delete_api_key(&self, id: &str) -> Result<()> {
        let gone = in_tx!(self, |tx, _pg| {
            sqlx::query("DELETE FROM api_keys WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        if gone == 0 {
            return Err(StoreError::NotFound { what: "API key" });
        }
        Ok(())
    }

    /// Every key (without secrets), oldest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM api_keys ORDER BY created_at, id")
                .fetch_all(pool)
                .await?
        }))
    }
}
