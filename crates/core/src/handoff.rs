//! How a core's ask for a call ([`crate::engine::handoff`]) reaches the core that holds
//! it: straight to its shell when both engines run in this process (`core.shards`),
//! through the holder's mailbox in Redis otherwise. The holder is the owner its dialog
//! record names; with no record (no Redis), every engine of this process is asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use switchyard_state::handoffs::Mailboxes;

use crate::engine::handoff::{CLAIM_PATIENCE_MS, HandoffAsk};
use crate::engine::recovery::DialogRecord;

/// How long an asker waits for the holder's answer: past the ask's deadline, so a
/// holder that gives the call in time is always heard.
const CLAIM_WAIT: Duration = Duration::from_millis(CLAIM_PATIENCE_MS as u64 + 1_000);

/// The holder's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HandoffAnswer {
    Given(Box<DialogRecord>),
    Kept(String),
}

/// An ask delivered to an engine's shell, with where its answer goes.
#[derive(Debug)]
pub struct Delivery {
    pub ask: HandoffAsk,
    pub answer: oneshot::Sender<HandoffAnswer>,
}

/// The engines of this process, and the cluster's mailboxes.
#[derive(Debug, Default)]
pub struct Handoffs {
    local: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Delivery>>>,
    mailboxes: Option<Arc<Mailboxes>>,
}

impl Handoffs {
    pub fn new(mailboxes: Option<Arc<Mailboxes>>) -> Arc<Handoffs> {
        Arc::new(Handoffs {
            local: Mutex::default(),
            mailboxes,
        })
    }

    fn local(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::UnboundedSender<Delivery>>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the engine at `core`: asks for its calls arrive on the receiver (from
    /// this process, and from Redis while the receiver lives).
    pub fn register(self: &Arc<Self>, core: SocketAddr) -> mpsc::UnboundedReceiver<Delivery> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.local().insert(core, tx.clone());
        if let Some(boxes) = self.mailboxes.clone() {
            tokio::spawn(read_mailbox(boxes, core, tx));
        }
        rx
    }

    /// Asks for the call `ask` names: the holder `owner` if known, else every other
    /// engine of this process. The record of the call, if it was given.
    pub async fn claim(&self, owner: Option<SocketAddr>, ask: HandoffAsk) -> Option<DialogRecord> {
        let targets: Vec<(SocketAddr, Option<mpsc::UnboundedSender<Delivery>>)> = {
            let local = self.local();
            match owner {
                Some(owner) => vec![(owner, local.get(&owner).cloned())],
                None => local
                    .iter()
                    .filter(|(core, _)| **core != ask.claimant)
                    .map(|(core, tx)| (*core, Some(tx.clone())))
                    .collect(),
            }
        };
        for (core, here) in targets {
            let answer = match here {
                Some(tx) => ask_here(&tx, ask.clone()).await,
                None => self.ask_by_mail(core, &ask).await,
            };
            match answer {
                Some(HandoffAnswer::Given(record)) => return Some(*record),
                Some(HandoffAnswer::Kept(why)) => {
                    debug!(call_id = ask.call_id, core = %core, why, "a core kept the call asked for")
                }
                None => {
                    debug!(call_id = ask.call_id, core = %core, "no answer to an ask for a call")
                }
            }
        }
        None
    }

    async fn ask_by_mail(&self, core: SocketAddr, ask: &HandoffAsk) -> Option<HandoffAnswer> {
        let boxes = self.mailboxes.as_ref()?;
        let body = serde_json::to_string(ask).ok()?;
        match boxes.ask(&core.to_string(), &body, CLAIM_WAIT).await {
            Ok(Some(text)) => serde_json::from_str(&text)
                .inspect_err(|e| warn!(error = %e, "unreadable answer to an ask for a call"))
                .ok(),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "cannot ask another core for a call");
                None
            }
        }
    }
}

async fn ask_here(tx: &mpsc::UnboundedSender<Delivery>, ask: HandoffAsk) -> Option<HandoffAnswer> {
    let (answer, heard) = oneshot::channel();
    tx.send(Delivery { ask, answer }).ok()?;
    tokio::time::timeout(CLAIM_WAIT, heard).await.ok()?.ok()
}

/// Hands the asks in `core`'s Redis mailbox to its shell and mails back the answers,
/// until the shell stops.
async fn read_mailbox(
    boxes: Arc<Mailboxes>,
    core: SocketAddr,
    shell: mpsc::UnboundedSender<Delivery>,
) {
    let mut reader = None;
    while !shell.is_closed() {
        let r = match &mut reader {
            Some(r) => r,
            None => match boxes
                .reader(&core.to_string(), Duration::from_secs(1))
                .await
            {
                Ok(r) => reader.insert(r),
                Err(e) => {
                    warn!(error = %e, "cannot read this core's mailbox; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let letter = match r.next().await {
            Ok(Some(letter)) => letter,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "cannot read this core's mailbox");
                reader = None;
                continue;
            }
        };
        let Ok(ask) = serde_json::from_str::<HandoffAsk>(&letter.body) else {
            warn!("an unreadable ask for a call in this core's mailbox");
            continue;
        };
        let answer = ask_here(&shell, ask)
            .await
            .unwrap_or_else(|| HandoffAnswer::Kept("the core stops".into()));
        let body = serde_json::to_string(&answer).unwrap_or_default();
        if let Err(e) = r.answer(&letter, &body).await {
            warn!(error = %e, "cannot answer an ask for a call");
        }
    }
}
