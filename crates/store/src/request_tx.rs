//! One transaction per API request. The API's idempotency layer opens a [`RequestTx`]
//! and runs the handler inside it: the key's claim, every write and read the handler makes
//! through this store, and the stored answer then commit together, once. A crash or a
//! failed commit leaves neither the change nor the record, so a retry runs the request
//! afresh; a committed change always has its answer stored, so a retry replays it.
//! On SQLite this is also one fsync per request instead of three.
//!
//! Store methods find the open transaction through a task-local: [`crate::in_tx`] runs its
//! body in a savepoint of it (a refused write rolls back alone and the request can still
//! answer and commit), and [`crate::on_pool`] reads through it (read-your-writes, and one
//! connection per request, so requests in flight can never hold every pooled connection
//! while each waits for a second one).
//!
//! SQLite has one writer at a time. Writers queue on an in-process FIFO lock before they
//! take a connection, so the other pooled connections stay free for readers (the call
//! engine reading tenant config) and nobody sleeps in SQLite's busy handler.

use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};

use sqlx::{Postgres, Sqlite, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{Backend, Result, Store};

/// The open transaction of a request, on the store's backend.
pub(crate) enum OpenTx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

type Hook = Box<dyn FnOnce() + Send>;

/// Shared between the request's future and the store methods it calls.
pub(crate) struct Scope {
    pub(crate) tx: Mutex<Option<OpenTx>>,
    after_commit: StdMutex<Vec<Hook>>,
}

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// The request transaction the current task runs in, if any.
pub(crate) fn current() -> Option<Arc<Scope>> {
    SCOPE.try_with(Arc::clone).ok()
}

/// Runs `hook` once the current request's transaction commits (dropped if it rolls back),
/// or now when there is none: for work that must see the change, such as waking a job
/// worker that reads the queue on another connection.
pub fn after_commit(hook: impl FnOnce() + Send + 'static) {
    match current() {
        Some(scope) => scope
            .after_commit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook)),
        None => hook(),
    }
}

/// A request transaction; dropped without [`RequestTx::commit`], it rolls back.
pub struct RequestTx {
    scope: Arc<Scope>,
    /// SQLite's writer lock, held until commit or rollback.
    writer: Option<OwnedMutexGuard<()>>,
}

impl std::fmt::Debug for RequestTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTx").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens a request transaction (on SQLite, after queueing for the writer lock).
    pub async fn begin_request(&self) -> Result<RequestTx> {
        let (tx, writer) = match &self.backend {
            Backend::Sqlite(pool) => {
                let writer = self.writer.clone().lock_owned().await;
                let tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                (OpenTx::Sqlite(tx), Some(writer))
            }
            Backend::Postgres(pool) => (OpenTx::Postgres(pool.begin().await?), None),
        };
        Ok(RequestTx {
            scope: Arc::new(Scope {
                tx: Mutex::new(Some(tx)),
                after_commit: StdMutex::new(Vec::new()),
            }),
            writer,
        })
    }
}

impl RequestTx {
    /// Runs `fut` inside this transaction: the store calls it makes use it.
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        SCOPE.scope(self.scope.clone(), fut).await
    }

    /// Commits, then runs the hooks registered with [`after_commit`].
    pub async fn commit(self) -> Result<()> {
        let tx = self.scope.tx.lock().await.take();
        match tx {
            Some(OpenTx::Sqlite(tx)) => tx.commit().await?,
            Some(OpenTx::Postgres(tx)) => tx.commit().await?,
            None => {}
        }
        drop(self.writer);
        let hooks = std::mem::take(
            &mut *self
                .scope
                .after_commit
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        hooks.into_iter().for_each(|hook| hook());
        Ok(())
    }

    /// Rolls back everything the request did.
    pub async fn rollback(self) -> Result<()> {
        let tx = self.scope.tx.lock().await.take();
        match tx {
            Some(OpenTx::Sqlite(tx)) => tx.rollback().await?,
            Some(OpenTx::Postgres(tx)) => tx.rollback().await?,
            None => {}
        }
        Ok(())
    }
}
