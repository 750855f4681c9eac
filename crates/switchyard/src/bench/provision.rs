//! The provisioning race workload: `clients` concurrent HTTP clients provision `tenants`
//! tenants with `extensions` extensions and `dids` numbers each, all drawn from one pool,
//! every request carrying an `Idempotency-Key` and every `duplicate_every`-th request sent
//! twice. Afterwards the store is checked: no number assigned twice, no extension number
//! duplicated, no request applied twice, no partial tenant, events complete and ordered.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokio::sync::Mutex;

use switchyard_store::Store;

use crate::http_client::Conn;

/// Size of the workload.
#[derive(Debug, Clone)]
pub struct Options {
    pub tenants: usize,
    pub extensions: usize,
    pub dids: usize,
    pub clients: usize,
    /// Every n-th request is sent a second time with the same key (0: never).
    pub duplicate_every: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tenants: 500,
            extensions: 20,
            dids: 5,
            clients: 32,
            duplicate_every: 10,
        }
    }
}

/// What the run measured and found.
#[derive(Debug)]
pub struct Report {
    pub backend: &'static str,
    pub requests: usize,
    pub duplicates: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Requests that failed, and broken invariants. Empty on a good run.
    pub errors: Vec<String>,
}

impl Report {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backend={} requests={} (of which {} duplicates) elapsed={:.2}s rate={:.0} req/s p50={:.2}ms p99={:.2}ms errors={}",
            self.backend,
            self.requests,
            self.duplicates,
            self.elapsed.as_secs_f64(),
            self.requests_per_second(),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.errors.len()
        )
    }
}

struct Shared {
    latencies: Mutex<Vec<Duration>>,
    errors: Mutex<Vec<String>>,
    sent: AtomicUsize,
    duplicates: AtomicUsize,
    next_tenant: AtomicUsize,
}

struct Client {
    conn: Conn,
    key: String,
    shared: Arc<Shared>,
    duplicate_every: usize,
}

impl Client {
    /// Sends a request with an Idempotency-Key, sometimes twice; returns the body on the
    /// expected status.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        idem: &str,
        body: Option<&str>,
        expect: u16,
    ) -> Option<Value> {
        let started = Instant::now();
        let reply = self
            .conn
            .request(method, path, &self.key, Some(idem), body)
            .await;
        self.shared.latencies.lock().await.push(started.elapsed());
        let n = self.shared.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let reply = match reply {
            Ok(r) if r.status == expect => r,
            Ok(r) => {
                self.shared
                    .errors
                    .lock()
                    .await
                    .push(format!("{method} {path}: {} {}", r.status, r.body));
                return None;
            }
            Err(e) => {
                self.shared
                    .errors
                    .lock()
                    .await
                    .push(format!("{method} {path}: {e}"));
                return None;
            }
        };
        if self.duplicate_every > 0 && n.is_multiple_of(self.duplicate_every) {
            self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let again = self
                .conn
                .request(method, path, &self.key, Some(idem), body)
                .await;
            self.shared.latencies.lock().await.push(started.elapsed());
            self.shared.sent.fetch_add(1, Ordering::Relaxed);
            match again {
                Ok(a) if a.status == reply.status && a.body == reply.body && a.replayed => {}
                Ok(a) => self.shared.errors.lock().await.push(format!(
                    "replay of {method} {path} differs: {} {} (replayed: {})",
                    a.status, a.body, a.replayed
                )),
                Err(e) => self
                    .shared
                    .errors
                    .lock()
                    .await
                    .push(format!("replay of {method} {path}: {e}")),
            }
        }
        serde_json::from_str(&reply.body).ok().or(Some(Value::Null))
    }

    async fn provision(&mut self, i: usize, options: &Options) {
        let body = format!(
            r#"{{"name":"Bench tenant {i}","domain":"t{i}.bench.example.com","max_extensions":1000}}"#
        );
        let Some(t) = self
            .send("POST", "/v1/tenants", &format!("t{i}"), Some(&body), 201)
            .await
        else {
            return;
        };
        let Some(id) = t["id"].as_str().map(str::to_owned) else {
            return;
        };
        let range = r#"{"first_number":1000,"last_number":1999}"#;
        let Some(r) = self
            .send(
                "POST",
                &format!("/v1/tenants/{id}/extension-ranges"),
                &format!("r{i}"),
                Some(range),
                201,
            )
            .await
        else {
            return;
        };
        let range_id = r["id"].as_str().unwrap_or_default().to_owned();
        for j in 0..options.extensions {
            let body = format!(
                r#"{{"range_id":"{range_id}","password":"bench-password-{i}-{j}","display_name":"User {j}"}}"#
            );
            self.send(
                "POST",
                &format!("/v1/tenants/{id}/extensions"),
                &format!("e{i}-{j}"),
                Some(&body),
                201,
            )
            .await;
        }
        for k in 0..options.dids {
            self.send(
                "POST",
                &format!("/v1/tenants/{id}/numbers"),
                &format!("d{i}-{k}"),
                None,
                201,
            )
            .await;
        }
    }
}

/// Runs the workload against an API served in this process on `store`.
pub async fn run(store: Store, options: &Options) -> anyhow::Result<Report> {
    let session = crate::cli::ApiSession::local(store.clone()).await?;
    let (addr, key) = (session.addr(), session.key.clone());
    let pool: Vec<String> = (0..options.tenants * options.dids)
        .map(|n| format!("+1800{n:07}"))
        .collect();
    for chunk in pool.chunks(1000) {
        store
            .add_dids(chunk)
            .await
            .context("filling the number pool")?;
    }

    let shared = Arc::new(Shared {
        latencies: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        sent: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
        next_tenant: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.clients {
        let mut client = Client {
            conn: Conn::new(addr),
            key: key.clone(),
            shared: shared.clone(),
            duplicate_every: options.duplicate_every,
        };
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = client.shared.next_tenant.fetch_add(1, Ordering::Relaxed);
                if i >= options.tenants {
                    break;
                }
                client.provision(i, &options).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed();
    session.close().await?;

    let mut errors = std::mem::take(&mut *shared.errors.lock().await);
    errors.extend(check_invariants(&store, options).await?);
    let mut latencies = std::mem::take(&mut *shared.latencies.lock().await);
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Report {
        backend: store.backend_name(),
        requests: shared.sent.load(Ordering::Relaxed),
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    })
}

/// Everything that must hold after the workload, whatever the interleaving.
pub async fn check_invariants(store: &Store, options: &Options) -> anyhow::Result<Vec<String>> {
    let mut broken = Vec::new();
    let mut tenants = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.list_tenants(cursor.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.id.clone());
        tenants.extend(page);
    }
    if tenants.len() != options.tenants {
        broken.push(format!(
            "{} tenants, expected {}",
            tenants.len(),
            options.tenants
        ));
    }
    let mut all_numbers = HashSet::new();
    let mut assigned = 0;
    let expected_events = 2 + options.extensions + options.dids;
    for t in &tenants {
        let exts = store.extensions(&t.id).await?;
        let numbers: HashSet<i64> = exts.iter().map(|e| e.number).collect();
        if exts.len() != options.extensions || numbers.len() != exts.len() {
            broken.push(format!(
                "tenant {}: {} extensions, {} distinct numbers",
                t.domain,
                exts.len(),
                numbers.len()
            ));
        }
        let dids = store.dids_of(&t.id).await?;
        if dids.len() != options.dids {
            broken.push(format!(
                "tenant {}: {} numbers, expected {}",
                t.domain,
                dids.len(),
                options.dids
            ));
        }
        assigned += dids.len();
        all_numbers.extend(dids.into_iter().map(|d| d.number));
        let versions: Vec<i64> = store
            .outbox_events(&t.id)
            .await?
            .iter()
            .map(|e| e.config_version)
            .collect();
        if versions != (1..=expected_events as i64).collect::<Vec<_>>() {
            broken.push(format!("tenant {}: events {:?}, expected 1..={expected_events} (a request applied twice or lost)", t.domain, versions));
        }
    }
    if all_numbers.len() != assigned {
        broken.push(format!(
            "{assigned} numbers assigned but only {} distinct",
            all_numbers.len()
        ));
    }
    Ok(broken)
}
