//! API keys in `Authorization: Bearer sy_<id>_<secret>`. An operator key reaches every
//! tenant; a tenant key reaches its own tenant only, and any other tenant's resources
//! answer 404 (not 403), so ids do not leak.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// Marks a request already counted against its key's rate.
#[derive(Debug, Clone, Copy)]
struct RateCounted;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's id (idempotency records are scoped by it).
    pub key_id: String,
    /// `None` for an operator key.
    pub tenant: Option<String>,
    pub read_only: bool,
}

impl Principal {
    pub fn is_operator(&self) -> bool {
        self.tenant.is_none()
    }

    /// Reading tenant `id`: an operator, or that tenant's own key. Others get 404.
    pub fn may_read(&self, id: &str) -> Result<(), ApiError> {
        match &self.tenant {
            None => Ok(()),
            Some(own) if own == id => Ok(()),
            Some(_) => Err(ApiError::NotFound("tenant".into())),
        }
    }

    /// Writing tenant `id`: as `may_read`, and the key must not be read-only.
    pub fn may_write(&self, id: &str) -> Result<(), ApiError> {
        self.may_read(id)?;
        if self.read_only {
            return Err(ApiError::Forbidden("read-only key"));
        }
        Ok(())
    }

    /// Operator-wide writes (tenants, the number pool).
    pub fn operator_write(&self) -> Result<(), ApiError> {
        if !self.is_operator() {
            return Err(ApiError::Forbidden("needs an operator key"));
        }
        if self.read_only {
            return Err(ApiError::Forbidden("read-only key"));
        }
        Ok(())
    }
}

pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a key and returns the token to show once.
pub async fn issue_key(
    store: &switchyard_store::Store,
    scope: &str,
    read_only: bool,
) -> Result<String, ApiError> {
    Ok(issue_key_record(store, scope, read_only).await?.0)
}

/// [`issue_key`], with the stored record (id, scope, creation time) beside the token.
pub async fn issue_key_record(
    store: &switchyard_store::Store,
    scope: &str,
    read_only: bool,
) -> Result<(String, switchyard_store::ApiKey), ApiError> {
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let key = store
        .create_api_key(&hash_secret(&secret), scope, read_only)
        .await?;
    Ok((format!("sy_{}_{}", key.id, secret), key))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let rest = token.strip_prefix("sy_").ok_or(ApiError::Unauthorized)?;
        let (id, secret) = rest.split_once('_').ok_or(ApiError::Unauthorized)?;
        let key = state
            .store
            .api_key(id)
            .await
            .map_err(|_| ApiError::Unauthorized)?;
        if !constant_time_eq(key.secret_sha256.as_bytes(), hash_secret(secret).as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
        // Counted once per request, though the idempotency layer and the handler both
        // identify the caller.
        if parts.extensions.get::<RateCounted>().is_none() {
            state
                .limiter
                .check(&key.id)
                .map_err(ApiError::TooManyRequests)?;
            parts.extensions.insert(RateCounted);
        }
        Ok(Principal {
            key_id: key.id.clone(),
            tenant: (key.scope != "operator").then_some(key.scope),
            read_only: key.read_only,
        })
    }
}
