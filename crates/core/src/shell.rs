//! The engine's shell: the one place the core does I/O. It feeds the engine the
//! transaction driver's events (client transactions renamed to the engine's own
//! [`ReqId`]s), the answers of the lookups and media requests it runs in tasks, and the
//! time; and it runs what the engine asks for. Lookups and media requests run
//! concurrently, each in its own task, so one call's slow read delays no other call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use switchyard_media_control::MediaControl;
use switchyard_sip::HeaderName;
use switchyard_sip::build::ResponseBuilder;
use switchyard_sip::inspect::Inbound;
use switchyard_sip::transaction::{Event, TxId};
use switchyard_sip_net::{DriverHandle, Hub, TuEvent};
use switchyard_state::Locations;
use switchyard_store::{ChangeEvent, Store};

use crate::cache::ConfigCache;
use crate::cdr::{self, CdrSender};
use crate::dialog::random_token;
use crate::engine::{Clock, Engine, EngineSettings, Lookup, MediaAnswer, Output, ReqId, SipInput};
use crate::routing::{self, RouteDeps};
use crate::{CoreHandle, CoreSettings};

/// How long a dialog record lives unless written again (longer than nearly every call).
const DIALOG_RECORD_TTL_SECS: u64 = 12 * 3600;

type Adopted = (
    crate::engine::recovery::DialogRecord,
    Arc<switchyard_store::TenantConfig>,
);

/// Another core's record of the call `call_id` belongs to.
async fn record_of(
    store: &switchyard_state::dialogs::DialogStore,
    call_id: &str,
) -> Option<crate::engine::recovery::DialogRecord> {
    let text = match store.get(call_id).await {
        Ok(Some(text)) => text,
        Ok(None) => return None,
        Err(e) => {
            warn!(call_id, error = %e, "cannot look for a dialog record");
            return None;
        }
    };
    serde_json::from_str(&text)
        .inspect_err(|e| warn!(call_id, error = %e, "unreadable dialog record"))
        .ok()
}

/// A call another core held, with its media session taken on here and its tenant's
/// configuration.
async fn take_on(
    record: crate::engine::recovery::DialogRecord,
    placement: Option<&dyn crate::media_client::SessionPlacement>,
    cache: &ConfigCache,
) -> Option<Adopted> {
    let call_id = record.a.call_id.clone();
    if let (Some(p), Some(node)) = (
        placement,
        record.media_node.as_deref().and_then(|n| n.parse().ok()),
    ) && !p.adopt(&record.session, node)
    {
        warn!(call_id, node = %node, "the call's media node is not known here");
    }
    let config = match cache.get(&record.tenant_id).await {
        Ok(c) => c,
        Err(e) => {
            warn!(call_id, error = %e, "no configuration for a call to take over");
            return None;
        }
    };
    Some((record, config))
}

/// How long a stopped engine waits for the media node's last counters (the CDRs of the
/// calls it hung up) before it writes them without.
const LAST_COUNTERS_LIMIT: Duration = Duration::from_secs(2);

/// Starts the engine on the events of a transaction driver. When `shutdown` fires the
/// engine drains: it refuses new calls (`503`), hangs up every call (BYE on both legs of
/// answered calls, CANCEL to ringing forks and `503` to their callers), waits up to
/// [`crate::DRAIN_LIMIT`] for those requests' answers, and ends once every CDR is
/// written. The task it returns ends then; keep the driver and the edge running until it
/// does.
#[allow(clippy::too_many_arguments)]
pub fn spawn_core(
    settings: CoreSettings,
    store: Store,
    locations: Arc<Locations>,
    media: Arc<dyn MediaControl>,
    driver: DriverHandle,
    hub: Hub,
    mut events: mpsc::Receiver<TuEvent>,
    mut changes: broadcast::Receiver<ChangeEvent>,
    mut shutdown: watch::Receiver<bool>,
) -> (CoreHandle, tokio::task::JoinHandle<()>) {
    let (cdrs, cdr_writer) = cdr::spawn_writer(store.clone());
    let handle = CoreHandle {
        cdrs_pending: cdrs.pending(),
        ..CoreHandle::default()
    };
    let cache = ConfigCache::new(store.clone());
    let (lookups_tx, mut lookups) = mpsc::unbounded_channel();
    let (media_tx, mut media_answers) = mpsc::unbounded_channel();
    let mut shell = Shell {
        engine: Engine::new(
            EngineSettings {
                local: settings.local,
                rtp_timeout: settings.rtp_timeout,
                metrics: settings.metrics.clone(),
                seal: settings.seal.clone(),
                accepting: handle.accepting.clone(),
                recover: settings.dialogs.is_some(),
                handoff: settings.handoffs.is_some(),
            },
            Clock::now(),
        ),
        deps: RouteDeps {
            cache,
            locations,
            media: media.clone(),
            channels: settings.channels.clone(),
            turns: settings.turns.clone(),
        },
        store,
        media,
        driver,
        hub,
        txs: HashMap::new(),
        lookups: lookups_tx,
        media_answers: media_tx,
        cdrs,
        handle: handle.clone(),
        dialogs: settings.dialogs.clone(),
        placement: settings.placement.clone(),
        handoffs: settings.handoffs.clone(),
    };
    let mut asks = match &settings.handoffs {
        Some(h) => h.register(settings.local),
        None => mpsc::unbounded_channel().1,
    };
    let task = tokio::spawn(async move {
        loop {
            shell.run_outputs().await;
            if shell.engine.drained() {
                break;
            }
            let next = shell.engine.poll_timeout();
            // The signal and configuration changes first, then work already under way
            // (media answers, lookups, timers), then what the network brings: under
            // overload calls in progress finish instead of every call slowing down
            // together.
            tokio::select! {
                biased;
                _ = shutdown.changed(), if !shell.engine.draining() => {
                    shell.engine.shutdown(Clock::now());
                }
                change = changes.recv() => match change {
                    Ok(e) => {
                        debug!(tenant = e.tenant_id, version = e.config_version, "configuration changed");
                        shell.deps.cache.apply(&e)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        shell.deps.cache = ConfigCache::new(shell.store.clone());
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                Some(answer) = media_answers.recv() => shell.engine.handle_media(answer, Clock::now()),
                Some(lookup) = lookups.recv() => shell.engine.handle_lookup(lookup, Clock::now()),
                Some(delivery) = asks.recv() => shell.hand_over(delivery),
                _ = sleep_until(next) => shell.engine.handle_timeout(Clock::now()),
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    shell.on_event(ev).await;
                }
            }
        }
        // Whatever is still up when the events stop is hung up as well (its requests may
        // no longer leave, but its CDR is written once the media node has said its last).
        shell.engine.abandon(Clock::now());
        let limit = tokio::time::Instant::now() + LAST_COUNTERS_LIMIT;
        loop {
            shell.run_outputs().await;
            if shell.engine.cdrs_waiting() == 0 {
                break;
            }
            tokio::select! {
                Some(answer) = media_answers.recv() => shell.engine.handle_media(answer, Clock::now()),
                _ = tokio::time::sleep_until(limit) => {
                    warn!(cdrs = shell.engine.cdrs_waiting(), "media node silent: CDRs lost");
                    break;
                }
            }
        }
        drop(shell);
        let _ = cdr_writer.await;
        info!("core stopped: every CDR written");
    });
    (handle, task)
}

struct Shell {
    engine: Engine,
    deps: RouteDeps,
    store: Store,
    media: Arc<dyn MediaControl>,
    driver: DriverHandle,
    hub: Hub,
    /// The driver's client transactions, by the engine's names for them.
    txs: HashMap<TxId, ReqId>,
    lookups: mpsc::UnboundedSender<Lookup>,
    media_answers: mpsc::UnboundedSender<MediaAnswer>,
    cdrs: CdrSender,
    handle: CoreHandle,
    dialogs: Option<Arc<switchyard_state::dialogs::DialogStore>>,
    placement: Option<Arc<dyn crate::media_client::SessionPlacement>>,
    handoffs: Option<Arc<crate::handoff::Handoffs>>,
}

impl Shell {
    /// Another core asks for a call: the engine decides; a call given leaves with its
    /// media node named, and its record (now naming this core as one that handed it on)
    /// is written before the asker hears, so a request of the call that still reaches
    /// this core finds it handed on and never takes it back.
    fn hand_over(&mut self, delivery: crate::handoff::Delivery) {
        use crate::handoff::HandoffAnswer;
        let crate::handoff::Delivery { ask, answer } = delivery;
        let mut record = match self.engine.hand_over(&ask, Clock::now()) {
            Ok(record) => record,
            Err(kept) => {
                let _ = answer.send(HandoffAnswer::Kept(kept.reason().to_owned()));
                return;
            }
        };
        if let Some(p) = &self.placement {
            record.media_node = p.holder(&record.session).map(|a| a.to_string());
            p.forget(&record.session);
        }
        self.handle.handed_over.fetch_add(1, Ordering::Relaxed);
        let store = self.dialogs.clone();
        tokio::spawn(async move {
            if let Some(store) = store {
                let json = serde_json::to_string(&record).unwrap_or_default();
                if let Err(e) = store
                    .put(
                        &record.a.call_id,
                        &record.b.call_id,
                        &json,
                        DIALOG_RECORD_TTL_SECS,
                    )
                    .await
                {
                    warn!(call_id = record.a.call_id, error = %e, "a handed-on call's record not written");
                }
            }
            let _ = answer.send(HandoffAnswer::Given(Box::new(record)));
        });
    }

    async fn on_event(&mut self, ev: TuEvent) {
        let input = match ev {
            TuEvent::Transaction(Event::Request { tx, msg, peer }) => {
                SipInput::Request { tx, msg, peer }
            }
            TuEvent::Transaction(Event::Ack { msg, .. }) => SipInput::Ack { msg },
            TuEvent::Transaction(Event::Response { tx, msg }) => {
                let Some(&req) = self.txs.get(&tx) else {
                    return;
                };
                SipInput::Response { req, msg }
            }
            TuEvent::Transaction(Event::Timeout { tx } | Event::TransportError { tx }) => {
                let Some(&req) = self.txs.get(&tx) else {
                    return;
                };
                SipInput::Failed { req }
            }
            TuEvent::Transaction(Event::Terminated { tx }) => {
                let Some(req) = self.txs.remove(&tx) else {
                    return;
                };
                SipInput::Ended { req }
            }
            TuEvent::Transaction(Event::StrayResponse { msg, .. }) => {
                // A 2xx retransmission for a fork we already ACKed, or for a dialog that
                // ended: nothing to do.
                debug!(status = msg.status(), "stray response");
                return;
            }
            TuEvent::Stateless(incoming) => {
                if let Inbound::Reject { rejection, rows } = &incoming.inbound {
                    let bytes = ResponseBuilder::from_rows(
                        rejection.status,
                        &rejection.reason,
                        rows.clone(),
                        &random_token(),
                    )
                    .build();
                    let via_text = rows
                        .iter()
                        .find(|(n, _)| *n == HeaderName::Via)
                        .map(|(_, v)| v.clone());
                    let via = via_text
                        .as_deref()
                        .and_then(switchyard_sip::headers::Via::parse_lenient);
                    let _ = self.hub.respond(&incoming, via.as_ref(), bytes).await;
                }
                return;
            }
        };
        self.engine.handle_sip(input, Clock::now());
    }

    /// Runs everything the engine asked for; SIP goes out in order, lookups and media
    /// requests start in tasks.
    async fn run_outputs(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            self.run(output).await;
        }
        self.handle
            .active
            .store(self.engine.active_calls(), Ordering::Relaxed);
        self.handle
            .cdrs_waiting
            .store(self.engine.cdrs_waiting(), Ordering::Relaxed);
    }

    async fn run(&mut self, output: Output) {
        match output {
            Output::Respond {
                tx,
                status,
                bytes,
                retransmit,
            } => {
                let sent = if retransmit {
                    self.driver.respond(tx, status, bytes).await
                } else {
                    self.driver.respond_once(tx, status, bytes).await
                };
                if let Err(e) = sent {
                    debug!(error = %e, status, "response not sent");
                }
            }
            Output::Send { req, request, peer } => {
                let method = request.method().cloned();
                match self.driver.send_request(request, peer).await {
                    Ok(tx) => {
                        self.txs.insert(tx, req);
                    }
                    Err(e) => {
                        warn!(error = %e, ?method, "request not sent");
                        self.engine
                            .handle_sip(SipInput::Failed { req }, Clock::now());
                    }
                }
            }
            Output::Transmit { target, bytes } => {
                if let Err(e) = self.hub.send(target, bytes).await {
                    debug!(error = %e, "datagram not sent");
                }
            }
            Output::Route {
                call_id,
                request,
                at_ms,
            } => {
                let (deps, done) = (self.deps.clone(), self.lookups.clone());
                let work = async move {
                    let outcome = routing::route_call(deps, request.clone(), at_ms).await;
                    Lookup::Routed {
                        call_id,
                        request,
                        outcome: Box::new(outcome),
                    }
                };
                if let Some(lookup) = now_or_in_task(work, move |l| {
                    let _ = done.send(l);
                }) {
                    self.engine.handle_lookup(lookup, Clock::now());
                }
            }
            Output::Forward {
                key,
                purpose,
                config,
                tenant,
                leg_b,
                target,
                release,
                at_ms,
            } => {
                let (deps, done) = (self.deps.clone(), self.lookups.clone());
                let work = async move {
                    if let Some(held) = release
                        && let Err(e) = deps.channels.release(&[held]).await
                    {
                        warn!(error = %e, "trunk channel not released");
                    }
                    let outcome =
                        routing::forward_to(&deps, &config, &tenant, &leg_b, &target, at_ms).await;
                    Lookup::Forwarded {
                        key,
                        purpose,
                        outcome,
                    }
                };
                if let Some(lookup) = now_or_in_task(work, move |l| {
                    let _ = done.send(l);
                }) {
                    self.engine.handle_lookup(lookup, Clock::now());
                }
            }
            Output::Media { job, request } => {
                let (media, done) = (self.media.clone(), self.media_answers.clone());
                let work = async move { media.call(request).await };
                let deliver = move |reply| {
                    if let Some(job) = job {
                        let _ = done.send(MediaAnswer { job, reply });
                    }
                };
                if let (Some(reply), Some(job)) = (now_or_in_task(work, deliver), job) {
                    self.engine
                        .handle_media(MediaAnswer { job, reply }, Clock::now());
                }
            }
            Output::Persist(mut record) => {
                let Some(store) = self.dialogs.clone() else {
                    return;
                };
                record.media_node = self
                    .placement
                    .as_ref()
                    .and_then(|p| p.holder(&record.session))
                    .map(|a| a.to_string());
                let (a, b) = (record.a.call_id.clone(), record.b.call_id.clone());
                let json = serde_json::to_string(&*record).unwrap_or_default();
                self.handle.dialog_writes.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Err(e) = store.put(&a, &b, &json, DIALOG_RECORD_TTL_SECS).await {
                        warn!(call_id = a, error = %e, "dialog record not written: the call dies with this core");
                    }
                });
            }
            Output::Forget { a, b } => {
                if let Some(store) = self.dialogs.clone() {
                    tokio::spawn(async move {
                        if let Err(e) = store.delete(&a, &b).await {
                            debug!(call_id = a, error = %e, "dialog record not deleted (it expires)");
                        }
                    });
                }
            }
            Output::Recover { tx, msg, .. } => {
                let (dialogs, placement, cache, done, taken) = (
                    self.dialogs.clone(),
                    self.placement.clone(),
                    self.deps.cache.clone(),
                    self.lookups.clone(),
                    self.handle.taken_over.clone(),
                );
                tokio::spawn(async move {
                    let call_id = msg.call_id().unwrap_or_default().to_owned();
                    let record = match dialogs {
                        Some(store) => match record_of(&store, &call_id).await {
                            Some(r) => take_on(r, placement.as_deref(), &cache).await,
                            None => None,
                        },
                        None => None,
                    };
                    if record.is_some() {
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = done.send(Lookup::Recovered {
                        tx,
                        msg,
                        record: record.map(Box::new),
                    });
                });
            }
            Output::Claim { tx, msg, ask } => {
                let (dialogs, placement, cache, done, handoffs, claimed) = (
                    self.dialogs.clone(),
                    self.placement.clone(),
                    self.deps.cache.clone(),
                    self.lookups.clone(),
                    self.handoffs.clone(),
                    self.handle.claimed.clone(),
                );
                tokio::spawn(async move {
                    // The record names the holder; without one, this process's engines
                    // are asked.
                    let owner = match &dialogs {
                        Some(store) => record_of(store, &ask.call_id).await.map(|r| r.owner),
                        None => None,
                    };
                    let given = match handoffs {
                        Some(h) => h.claim(owner, ask).await,
                        None => None,
                    };
                    let record = match given {
                        Some(r) => take_on(r, placement.as_deref(), &cache).await,
                        None => None,
                    };
                    if record.is_some() {
                        claimed.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = done.send(Lookup::Claimed {
                        tx,
                        msg,
                        record: record.map(Box::new),
                    });
                });
            }
            Output::ReleaseChannels(held) => {
                let channels = self.deps.channels.clone();
                tokio::spawn(async move {
                    if let Err(e) = channels.release(&held).await {
                        warn!(error = %e, "trunk channel not released");
                    }
                });
            }
            Output::RenewChannels { held, until_ms } => {
                let channels = self.deps.channels.clone();
                tokio::spawn(async move {
                    if let Err(e) = channels.renew(&held, until_ms).await {
                        warn!(error = %e, "trunk channel leases not renewed");
                    }
                });
            }
            Output::Cdr(cdr) => self.cdrs.send(cdr),
        }
    }
}

/// Runs `work` at once when it finishes without waiting (the in-process media node, a
/// configuration and contacts already in memory): its result is returned and handled in
/// line, as cheap as a function call. Otherwise it goes on in a task that hands its
/// result to `deliver`, so it holds up no other call.
fn now_or_in_task<T, F, D>(work: F, deliver: D) -> Option<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
    D: FnOnce(T) + Send + 'static,
{
    let mut work = Box::pin(work);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match work.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(done) => Some(done),
        std::task::Poll::Pending => {
            tokio::spawn(async move { deliver(work.await) });
            None
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
