//! The outbox dispatcher: publishes committed change events in order per tenant, at least
//! once, to the config caches of every role. A row is marked published only after it went
//! out, so a crash re-sends rather than loses; receivers ignore versions already seen.
//!
//! Embedded (SQLite): the dispatcher broadcasts in-process. Cluster (PostgreSQL): one
//! dispatcher at a time (an advisory lock) sends each event with `pg_notify` in the
//! transaction that marks it published, and every node LISTENs and re-broadcasts locally,
//! so each node's caches see every tenant's events in order.

use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::{OutboxEvent, Result, Store, in_tx, on_pool};

/// A committed change: the tenant and its new configuration version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub tenant_id: String,
    pub config_version: i64,
    pub kind: String,
}

const MARK_PUBLISHED: &str =
    "UPDATE outbox SET published = TRUE WHERE tenant_id = $1 AND config_version = $2";

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

    /// Marks events published, in one write transaction.
    pub async fn mark_published(&self, events: &[OutboxEvent]) -> Result<()> {
        in_tx!(self, |tx, _pg| {
            for e in events {
                sqlx::query(MARK_PUBLISHED)
                    .bind(&e.tenant_id)
                    .bind(e.config_version)
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(())
    }

    /// Publishes what is pending once; returns how many events went out.
    pub async fn dispatch_once(&self, tx: &broadcast::Sender<ChangeEvent>) -> Result<usize> {
        if let crate::Backend::Postgres(pool) = &self.backend {
            return notify_pending(pool).await;
        }
        let events = self.unpublished_events(500).await?;
        for e in &events {
            // No receiver is not an error: nobody caches that tenant yet.
            let _ = tx.send(ChangeEvent {
                tenant_id: e.tenant_id.clone(),
                config_version: e.config_version,
                kind: e.kind.clone(),
            });
        }
        // Marked only after every one went out: a crash in between re-sends them.
        self.mark_published(&events).await?;
        Ok(events.len())
    }
}

/// The NOTIFY channel for change events; payload `tenant_id version kind`.
pub const CHANNEL: &str = "switchyard_changes";
/// Advisory lock key held by the one dispatcher of a cluster round.
const DISPATCH_LOCK: i64 = 0x5357_4954_4348; // "SWITCH"

async fn notify_pending(pool: &sqlx::PgPool) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(DISPATCH_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    let events: Vec<OutboxEvent> = sqlx::query_as(
        "SELECT * FROM outbox WHERE published = FALSE ORDER BY tenant_id, config_version LIMIT 500",
    )
    .fetch_all(&mut *tx)
    .await?;
    for e in &events {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("{} {} {}", e.tenant_id, e.config_version, e.kind))
            .execute(&mut *tx)
            .await?;
        sqlx::query(MARK_PUBLISHED)
            .bind(&e.tenant_id)
            .bind(e.config_version)
            .execute(&mut *tx)
            .await?;
    }
    // Notifications are delivered when this commits, in the order they were sent.
    tx.commit().await?;
    Ok(events.len())
}

/// Forwards the cluster's notifications to this node's subscribers.
fn spawn_listener(
    pool: sqlx::PgPool,
    tx: broadcast::Sender<ChangeEvent>,
    listening: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for change events; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            listening.send_replace(true);
            loop {
                tokio::select! {
                    n = listener.recv() => match n {
                        Ok(n) => {
                            let mut parts = n.payload().splitn(3, ' ');
                            let (Some(t), Some(v), Some(k)) = (parts.next(), parts.next(), parts.next()) else { continue };
                            let Ok(v) = v.parse() else { continue };
                            let _ = tx.send(ChangeEvent { tenant_id: t.to_owned(), config_version: v, kind: k.to_owned() });
                        }
                        // The connection dropped: reconnect (events sent meanwhile are
                        // lost to this node; its cache re-reads on the next version it sees).
                        Err(_) => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    });
}

/// Runs the dispatcher until `shutdown` turns true, polling every `interval` when idle.
pub fn spawn_dispatcher(
    store: Store,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> broadcast::Sender<ChangeEvent> {
    let (tx, _) = broadcast::channel(4096);
    let sender = tx.clone();
    let postgres = match &store.backend {
        crate::Backend::Postgres(pool) => Some(pool.clone()),
        _ => None,
    };
    let (listening_tx, mut listening) = watch::channel(postgres.is_none());
    if let Some(pool) = postgres {
        spawn_listener(pool, tx.clone(), listening_tx, shutdown.clone());
    }
    tokio::spawn(async move {
        // This node's events reach its own subscribers through LISTEN: notify nothing
        // before it listens, or the first events are marked published and never heard.
        tokio::select! {
            _ = listening.wait_for(|l| *l) => {}
            _ = shutdown.changed() => return,
        }
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
