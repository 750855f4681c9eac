//! Runs long operations (jobs) one after another per tenant, in the order they were
//! queued: each tenant has one worker, so two jobs of one tenant never interleave, while
//! jobs of different tenants run side by side. Jobs left queued or running by a restart
//! run again when the API starts (their steps are idempotent).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use switchyard_store::{NewExtension, Store, StoreError};

/// What an `import` job applies to its tenant.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportJob {
    #[serde(default)]
    pub ranges: Vec<JobRange>,
    #[serde(default)]
    pub extensions: Vec<JobExtension>,
    /// How many numbers of the pool the tenant should hold.
    #[serde(default)]
    pub dids: usize,
}

impl ImportJob {
    /// The rules the store applies step by step (its own checks), run before the job is
    /// queued so a job that cannot succeed is refused with 422 instead of failing later:
    /// `(field, rule)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let rule = |field: &'static str| {
            move |e: StoreError| match e {
                StoreError::Invalid { rule, .. } => (field, rule),
                other => (field, other.to_string()),
            }
        };
        for r in &self.ranges {
            switchyard_store::check_range(r.first_number, r.last_number).map_err(rule("ranges"))?;
        }
        for e in &self.extensions {
            switchyard_store::check_number("number", e.number).map_err(rule("extensions"))?;
            switchyard_store::check_password(&e.password).map_err(rule("extensions"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRange {
    #[schema(minimum = 1, maximum = 99999999)]
    pub first_number: i64,
    #[schema(minimum = 1, maximum = 99999999)]
    pub last_number: i64,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobExtension {
    #[schema(minimum = 1, maximum = 99999999)]
    pub number: i64,
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    #[serde(default)]
    pub display_name: String,
    /// Defaults to the number.
    #[serde(default)]
    pub username: Option<String>,
}

/// One worker per tenant, started on demand.
pub struct JobRunner {
    store: Store,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<()>>>,
}

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRunner").finish_non_exhaustive()
    }
}

impl JobRunner {
    pub fn new(store: Store) -> Arc<JobRunner> {
        Arc::new(JobRunner {
            store,
            workers: Mutex::new(HashMap::new()),
        })
    }

    /// Wakes the tenant's worker (starting it if needed).
    pub fn kick(self: &Arc<Self>, tenant_id: &str) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = workers.get(tenant_id)
            && tx.send(()).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(());
        workers.insert(tenant_id.to_owned(), tx);
        tokio::spawn(self.clone().worker(tenant_id.to_owned(), rx));
    }

    /// Starts the workers of every tenant with jobs left from before a restart.
    pub async fn resume(self: &Arc<Self>) {
        match self.store.tenants_with_jobs().await {
            Ok(tenants) => tenants.iter().for_each(|t| self.kick(t)),
            Err(e) => tracing::warn!(error = %e, "cannot resume jobs"),
        }
    }

    async fn worker(self: Arc<Self>, tenant_id: String, mut wake: mpsc::UnboundedReceiver<()>) {
        while wake.recv().await.is_some() {
            loop {
                let job = match self.store.next_job(&tenant_id).await {
                    Ok(Some(job)) => job,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(tenant = %tenant_id, error = %e, "job queue unreadable");
                        break;
                    }
                };
                let _ = self.store.set_job_state(&job.id, "running", None).await;
                let started = now_ms();
                let outcome = match job.kind.as_str() {
                    "import" => self.run_import(&tenant_id, &job.payload).await,
                    other => Err(format!("unknown job kind {other}")),
                };
                let (state, mut result) = match outcome {
                    Ok(r) => ("done", r),
                    Err(e) => ("failed", json!({ "error": e })),
                };
                result["started_at"] = json!(started);
                result["finished_at"] = json!(now_ms());
                let _ = self
                    .store
                    .set_job_state(&job.id, state, Some(&result.to_string()))
                    .await;
            }
        }
    }

    async fn run_import(
        &self,
        tenant_id: &str,
        payload: &str,
    ) -> Result<serde_json::Value, String> {
        let job: ImportJob = serde_json::from_str(payload).map_err(|e| e.to_string())?;
        let (mut created, mut existing) = (0usize, 0usize);
        let mut ranges = Vec::new();
        for r in &job.ranges {
            match self
                .store
                .add_extension_range(tenant_id, r.first_number, r.last_number)
                .await
            {
                Ok(range) => {
                    created += 1;
                    ranges.push(range);
                }
                Err(StoreError::Conflict { .. }) => {
                    let found = self
                        .store
                        .extension_ranges(tenant_id)
                        .await
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .find(|x| {
                            x.first_number == r.first_number && x.last_number == r.last_number
                        })
                        .ok_or(format!(
                            "range {}-{} overlaps another",
                            r.first_number, r.last_number
                        ))?;
                    existing += 1;
                    ranges.push(found);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        for e in &job.extensions {
            let range = ranges
                .iter()
                .find(|r| (r.first_number..=r.last_number).contains(&e.number))
                .ok_or(format!(
                    "extension {} lies in no range of the job",
                    e.number
                ))?;
            let new = NewExtension {
                range_id: range.id.clone(),
                number: Some(e.number),
                display_name: e.display_name.clone(),
                username: e.username.clone(),
                password: e.password.clone(),
                voicemail: false,
            };
            match self.store.create_extension(tenant_id, &new).await {
                Ok(_) => created += 1,
                Err(StoreError::Conflict { .. }) => existing += 1,
                Err(err) => return Err(format!("extension {}: {err}", e.number)),
            }
        }
        let have = self
            .store
            .dids_of(tenant_id)
            .await
            .map_err(|e| e.to_string())?
            .len();
        for _ in have..job.dids {
            self.store
                .assign_next_did(tenant_id)
                .await
                .map_err(|e| e.to_string())?;
            created += 1;
        }
        existing += have.min(job.dids);
        Ok(json!({ "created": created, "existing": existing }))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
