//! The outbox dispatcher: publishes committed change events in order per tenant, at least
//! once, to in-process subscribers (the config caches of every role). A row is marked
//! published only after it was broadcast, so a crash re-sends rather than loses; receivers
//! ignore versions they have already seen.

use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::{OutboxEvent, Result, Store, on_pool};

/// A committed change: the tenant and its new configuration version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub tenant_id: String,
    pub config_version: i64,
    pub kind: String,
}

impl Store {
    /// Unpublished events, each tenant's in version order.
    pub async fn unpublished_events(&self, limit: i64) -> Result<Vec<OutboxEvent>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM outbox WHERE published = FALSE ORDER BY tenant_id, config_version LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn mark_published(&self, tenant_id: &str, config_version: i64) -> Result<()> {
        on_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET published = TRUE WHERE tenant_id = $1 AND config_version = $2",
            )
            .bind(tenant_id)
            .bind(config_version)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Publishes what is pending once; returns how many events went out.
    pub async fn dispatch_once(&self, tx: &broadcast::Sender<ChangeEvent>) -> Result<usize> {
        let events = self.unpublished_events(500).await?;
        for e in &events {
            // No receiver is not an error: nobody caches that tenant yet.
            let _ = tx.send(ChangeEvent {
                tenant_id: e.tenant_id.clone(),
                config_version: e.config_version,
                kind: e.kind.clone(),
            });
            self.mark_published(&e.tenant_id, e.config_version).await?;
        }
        Ok(events.len())
    }
}

/// Runs the dispatcher until `shutdown` turns true, polling every `interval` when idle.
pub fn spawn_dispatcher(
    store: Store,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> broadcast::Sender<ChangeEvent> {
    let (tx, _) = broadcast::channel(4096);
    let sender = tx.clone();
    tokio::spawn(async move {
        loop {
            match store.dispatch_once(&tx).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox dispatch failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => break,
            }
        }
    });
    sender
}
