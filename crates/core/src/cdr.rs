//! CDRs leave the engine through one writer task: each is written with retries (a store
//! that blinks loses nothing), and when the engine stops the writer finishes its queue
//! before it returns, so a shutdown never drops the last calls' records. The writer
//! gathers the CDRs that arrive within [`LINGER`] of the first one (up to [`BATCH`]) and
//! writes them in one transaction: under load one commit serves a hundred calls instead
//! of one each (a commit, not a row, is what costs: SQLite writes whole pages to its WAL).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_store::{Cdr, Store, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, warn};

/// Attempts per CDR, the first included; the waits between them double from
/// [`FIRST_RETRY`] (0.1 + 0.2 + ... + 3.2 s: a store away for about 6 s loses nothing).
const ATTEMPTS: u32 = 7;
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// CDRs written in one transaction at most.
pub const BATCH: usize = 256;
/// How long the first CDR of a batch waits for others: the delay before a CDR can be
/// read back, paid only when calls end one by one.
pub const LINGER: Duration = Duration::from_millis(50);

/// Where the engine hands its CDRs. Dropping every sender lets the writer finish.
#[derive(Debug, Clone)]
pub struct CdrSender {
    queue: mpsc::UnboundedSender<Cdr>,
    pending: Arc<AtomicUsize>,
}

impl CdrSender {
    /// Queues `cdr` for writing (never blocks the engine).
    pub fn send(&self, cdr: Cdr) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        if let Err(lost) = self.queue.send(cdr) {
            // Only when the writer panicked: the record goes to the log instead.
            self.pending.fetch_sub(1, Ordering::Relaxed);
            error!(cdr = ?lost.0, "CDR writer gone: CDR not written");
        }
    }

    /// CDRs handed over and not yet written or given up on (a backlog means the
    /// database is slow or away).
    pub fn pending(&self) -> Arc<AtomicUsize> {
        self.pending.clone()
    }
}

/// Starts the writer; the handle ends once every sender is dropped and the queue is written.
pub fn spawn_writer(store: Store) -> (CdrSender, JoinHandle<()>) {
    let (queue, mut rx) = mpsc::unbounded_channel::<Cdr>();
    let pending = Arc::new(AtomicUsize::new(0));
    let left = pending.clone();
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(cdr) = rx.recv().await {
            batch.push(cdr);
            let until = tokio::time::Instant::now() + LINGER;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(cdr)) => batch.push(cdr),
                    // The engine stopped (write what is here, then end) or time is up.
                    Ok(None) | Err(_) => break,
                }
            }
            let written = write_with_retries(&batch, || store.insert_cdrs(&batch)).await;
            if written == Written::Refused && batch.len() > 1 {
                // One record the store refuses must not take the others with it.
                for cdr in &batch {
                    let one = std::slice::from_ref(cdr);
                    write_with_retries(one, || store.insert_cdrs(one)).await;
                }
            }
            left.fetch_sub(batch.len(), Ordering::Relaxed);
            batch.clear();
        }
    });
    (CdrSender { queue, pending }, task)
}

/// What became of one CDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Written at this attempt (1 = the first).
    At(u32),
    /// The store refused it for good (logged with the record).
    Refused,
    /// Every attempt failed (logged with the record).
    GaveUp,
}

async fn write_with_retries<F, Fut>(cdrs: &[Cdr], mut insert: F) -> Written
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        // The insert ignores an id already written, so a retry after a commit whose
        // answer was lost writes nothing twice.
        match insert().await {
            Ok(()) => return Written::At(attempt),
            Err(e) if !transient(&e) => {
                error!(error = %e, cdrs = ?cdrs, "CDR refused by the store");
                return Written::Refused;
            }
            Err(e) if attempt == ATTEMPTS => {
                error!(error = %e, attempts = ATTEMPTS, cdrs = ?cdrs, "CDR not written");
                return Written::GaveUp;
            }
            Err(e) => {
                warn!(error = %e, attempt, cdrs = cdrs.len(), "CDR write failed: retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    Written::GaveUp
}

/// Whether trying again may succeed: a database that is busy, restarting or unreachable,
/// as opposed to a record it refuses (its tenant deleted meanwhile).
fn transient(e: &StoreError) -> bool {
    e.is_transient() || e.is_unreachable()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn cdr() -> Cdr {
        Cdr {
            id: "cdr-1".into(),
            tenant_id: "t1".into(),
            call_id: "c1".into(),
            from_uri: "sip:1001@d".into(),
            to_uri: "sip:1002@d".into(),
            started_at: 0,
            answered_at: None,
            ended_at: 1,
            duration_ms: 0,
            disposition: "failed".into(),
            hangup_side: None,
            legs: "[]".into(),
        }
    }

    fn unreachable() -> StoreError {
        StoreError::Database(sqlx::Error::PoolTimedOut)
    }

    /// A store away for a few seconds loses nothing: the writer waits it out.
    #[tokio::test(start_paused = true)]
    async fn a_cdr_is_retried_until_the_store_is_back() {
        let calls = Cell::new(0);
        let started = tokio::time::Instant::now();
        let outcome = write_with_retries(std::slice::from_ref(&cdr()), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 5 { Err(unreachable()) } else { Ok(()) } }
        })
        .await;
        assert_eq!(outcome, Written::At(5));
        // 0.1 + 0.2 + 0.4 + 0.8 s of virtual time between the five attempts.
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_stays_away_is_given_up_on_after_every_attempt() {
        let calls = Cell::new(0);
        let outcome = write_with_retries(std::slice::from_ref(&cdr()), || {
            calls.set(calls.get() + 1);
            async { Err(unreachable()) }
        })
        .await;
        assert_eq!((outcome, calls.get()), (Written::GaveUp, ATTEMPTS));
    }

    /// A record the store refuses (its tenant deleted meanwhile) is not retried.
    #[tokio::test(start_paused = true)]
    async fn a_refused_record_is_not_retried() {
        let calls = Cell::new(0);
        let outcome = write_with_retries(std::slice::from_ref(&cdr()), || {
            calls.set(calls.get() + 1);
            async { Err(StoreError::NotFound { what: "tenant" }) }
        })
        .await;
        assert_eq!((outcome, calls.get()), (Written::Refused, 1));
    }

    /// CDRs queued together share a transaction; one the store refuses (its tenant gone)
    /// is written alone and the others of its batch are kept.
    #[tokio::test]
    async fn queued_cdrs_are_written_together_and_a_refused_one_loses_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("sy.db").display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let tenant = store
            .create_tenant(&switchyard_store::NewTenant {
                name: "t".into(),
                domain: "cdr.example.com".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let (sender, writer) = spawn_writer(store.clone());
        for i in 0..100 {
            sender.send(Cdr {
                id: format!("cdr-{i}"),
                tenant_id: if i == 50 {
                    "gone".into()
                } else {
                    tenant.id.clone()
                },
                call_id: format!("c{i}"),
                ..cdr()
            });
        }
        let pending = sender.pending();
        drop(sender);
        writer.await.unwrap();
        assert_eq!(pending.load(Ordering::Relaxed), 0);
        let written = store.cdrs(&tenant.id, None, 1000).await.unwrap();
        assert_eq!(written.len(), 99, "all but the refused one");
    }
}
