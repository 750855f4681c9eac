//! CDRs leave the engine through one writer task: each is written with retries (a store
//! that blinks loses nothing), and when the engine stops the writer finishes its queue
//! before it returns, so a shutdown never drops the last calls' records.

use std::time::Duration;

use switchyard_store::{Cdr, Store, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, warn};

/// Attempts per CDR, the first included; the waits between them double from
/// [`FIRST_RETRY`] (0.1 + 0.2 + ... + 3.2 s: a store away for about 6 s loses nothing).
const ATTEMPTS: u32 = 7;
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Where the engine hands its CDRs. Dropping every sender lets the writer finish.
#[derive(Debug, Clone)]
pub struct CdrSender(mpsc::UnboundedSender<Cdr>);

impl CdrSender {
    /// Queues `cdr` for writing (never blocks the engine).
    pub fn send(&self, cdr: Cdr) {
        if let Err(lost) = self.0.send(cdr) {
            // Only when the writer panicked: the record goes to the log instead.
            error!(cdr = ?lost.0, "CDR writer gone: CDR not written");
        }
    }
}

/// Starts the writer; the handle ends once every sender is dropped and the queue is written.
pub fn spawn_writer(store: Store) -> (CdrSender, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Cdr>();
    let task = tokio::spawn(async move {
        while let Some(cdr) = rx.recv().await {
            write_with_retries(&store, &cdr).await;
        }
    });
    (CdrSender(tx), task)
}

async fn write_with_retries(store: &Store, cdr: &Cdr) {
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        // The insert ignores an id already written, so a retry after a commit whose
        // answer was lost writes nothing twice.
        match store.insert_cdr(cdr).await {
            Ok(()) => return,
            Err(e) if !transient(&e) => {
                error!(error = %e, cdr = ?cdr, "CDR refused by the store");
                return;
            }
            Err(e) if attempt == ATTEMPTS => {
                error!(error = %e, attempts = ATTEMPTS, cdr = ?cdr, "CDR not written");
                return;
            }
            Err(e) => {
                warn!(error = %e, attempt, call_id = cdr.call_id, "CDR write failed: retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

/// Whether trying again may succeed: a database that is busy, restarting or unreachable,
/// as opposed to a record it refuses (its tenant deleted meanwhile).
fn transient(e: &StoreError) -> bool {
    e.is_transient() || e.is_unreachable()
}
