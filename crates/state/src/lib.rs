//! Runtime state: what the edge and core share that is not configuration, in memory for
//! `serve` and in Redis for a cluster, behind one interface with the same rules on both:
//!
//! - the location service (registrations): bindings per tenant and address of record,
//!   replaced by contact URI, bounded per AoR and per tenant, expiring at their own time;
//! - [`calls`]: each tenant's calls in progress and its call rate, which the edge admits
//!   new calls against.
//!
//! Time is an argument (`now_ms`); keys always carry the tenant.

#![forbid(unsafe_code)]

pub mod calls;
pub mod cluster;
pub mod dialogs;
pub mod handoffs;
pub mod turns;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use serde::{Deserialize, Serialize};
use switchyard_types::TenantId;

/// One registered contact of an address of record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The Contact URI as registered (calls go to it exactly).
    pub contact: String,
    /// Unix milliseconds when it lapses.
    pub expires_at_ms: i64,
    /// The route to the contact through the edge that holds its flow (connection or NAT
    /// binding), as a Route header value: calls to the contact go through it (like Path).
    pub flow: Option<String>,
    /// Where the REGISTER came from (`received`/`rport`).
    pub source: String,
    pub call_id: String,
    pub cseq: u32,
    /// Path header values (RFC 3327) the REGISTER carried: proxies between the edge and
    /// the phone, which calls to the contact must traverse, in order.
    #[serde(default)]
    pub path: Vec<String>,
    /// RFC 5626 `+sip.instance` and `reg-id` of the contact (`instance|reg-id`): a new
    /// registration of the same pair replaces the old flow's binding.
    #[serde(default)]
    pub instance: Option<String>,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("the address of record already has {0} contacts")]
    TooManyContacts(usize),
    /// The tenant's `max_registrations`: its live bindings, all AoRs together.
    #[error("the tenant already has {0} registered contacts")]
    TenantFull(usize),
    /// A REGISTER older than the one that set this binding (RFC 3261 §10.3 step 7).
    #[error("out-of-order REGISTER for this Call-ID")]
    OutOfOrder,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("corrupt state: {0}")]
    Corrupt(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, StateError>;

/// The address of record of an extension, as the registrar stores it and the core looks it
/// up: `user@domain`, lower case.
pub fn aor(username: &str, domain: &str) -> String {
    format!("{username}@{domain}").to_ascii_lowercase()
}

/// How many contacts a registration may add to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingLimits {
    /// Contacts of one address of record (the extension's `max_registrations`).
    pub per_aor: usize,
    /// Contacts of the whole tenant (the tenant's `max_registrations`).
    pub per_tenant: usize,
}

impl BindingLimits {
    /// A limit per AoR only.
    pub fn per_aor(n: usize) -> BindingLimits {
        BindingLimits {
            per_aor: n,
            per_tenant: usize::MAX,
        }
    }
}

/// The location service: in memory or in Redis.
#[derive(Debug)]
pub enum Locations {
    Memory(Mutex<MemoryLocations>),
    Redis(RedisLocations),
}

/// Bindings by AoR key, and each tenant's contacts (`aor\ncontact` → expiry) for its cap.
#[derive(Debug, Default)]
pub struct MemoryLocations {
    aors: HashMap<String, Vec<Binding>>,
    tenants: HashMap<TenantId, HashMap<String, i64>>,
}

impl MemoryLocations {
    fn register(
        &mut self,
        tenant: &TenantId,
        aor: &str,
        b: Binding,
        limits: BindingLimits,
        now_ms: i64,
    ) -> Result<Vec<Binding>> {
        let list = self.aors.entry(key("", tenant, aor)).or_default();
        let members = self.tenants.entry(tenant.clone()).or_default();
        for lapsed in list.iter().filter(|x| x.expires_at_ms <= now_ms) {
            members.remove(&member(aor, &lapsed.contact));
        }
        let known = list
            .iter()
            .any(|x| x.contact == b.contact && x.expires_at_ms > now_ms);
        if !known && members.len() >= limits.per_tenant {
            // Lapsed contacts of other AoRs leave only when the cap is near.
            members.retain(|_, expires| *expires > now_ms);
            if members.len() >= limits.per_tenant {
                return Err(StateError::TenantFull(limits.per_tenant));
            }
        }
        let (name, expires) = (member(aor, &b.contact), b.expires_at_ms);
        apply(list, b, limits.per_aor, now_ms)?;
        members.insert(name, expires);
        Ok(list.clone())
    }
}

/// A contact's entry in its tenant's set.
fn member(aor: &str, contact: &str) -> String {
    format!("{}\n{contact}", aor.to_ascii_lowercase())
}

/// Redis-backed bindings: one hash per AoR, field = contact, value = JSON binding; and a
/// sorted set per tenant of its contacts (`aor\ncontact`, scored by expiry) for its cap.
///
/// Registrations are written in batches: concurrent `register` calls queue their writes,
/// and one task sends everything queued as one pipeline (one round trip for a storm's
/// worth of REGISTERs, none waiting when Redis is idle).
pub struct RedisLocations {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    writes: mpsc::Sender<RegisterJob>,
    stats: Arc<BatchStats>,
    unregister_all: redis::Script,
}

/// How the batched writes went: round trips and registrations sent.
#[derive(Debug, Default)]
pub struct BatchStats {
    batches: AtomicU64,
    writes: AtomicU64,
}

impl BatchStats {
    /// Pipelines sent to Redis so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Registrations those pipelines carried.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// The most registrations one pipeline carries.
const MAX_BATCH: usize = 256;

/// One registration waiting for its batch.
struct RegisterJob {
    keys: [String; 2],
    args: RegisterArgs,
    reply: oneshot::Sender<Result<Vec<Binding>>>,
}

/// ARGV of [`REGISTER_LUA`], in order.
struct RegisterArgs {
    now_ms: i64,
    per_aor: usize,
    contact: String,
    json: String,
    call_id: String,
    cseq: u32,
    ttl: i64,
    per_tenant: usize,
    aor: String,
    expires_at_ms: i64,
}

/// Sends queued registrations as pipelines until every sender is gone. Each pipeline
/// starts with `SCRIPT LOAD` (cheap when cached), so a Redis that restarted or flushed
/// its scripts never answers `NOSCRIPT` to a batch.
async fn write_batches(
    mut conn: redis::aio::ConnectionManager,
    mut jobs: mpsc::Receiver<RegisterJob>,
    stats: Arc<BatchStats>,
) {
    let script = redis::Script::new(REGISTER_LUA);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().load_script(&script).ignore();
        let invocations: Vec<redis::ScriptInvocation<'_>> = batch
            .iter()
            .map(|job| {
                let a = &job.args;
                let mut inv = script.prepare_invoke();
                inv.key(&job.keys[0])
                    .key(&job.keys[1])
                    .arg(a.now_ms)
                    .arg(a.per_aor)
                    .arg(&a.contact)
                    .arg(&a.json)
                    .arg(&a.call_id)
                    .arg(a.cseq)
                    .arg(a.ttl)
                    .arg(a.per_tenant.min(i64::MAX as usize))
                    .arg(&a.aor)
                    .arg(a.expires_at_ms);
                inv
            })
            .collect();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let answers: std::result::Result<Vec<redis::Value>, _> = pipe.query_async(&mut conn).await;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        drop(invocations);
        match answers {
            Ok(values) if values.len() == batch.len() => {
                for (job, value) in batch.drain(..).zip(values) {
                    let _ = job.reply.send(register_outcome(value, &job.args));
                }
            }
            Ok(values) => {
                let e = redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "pipeline answered the wrong number of replies",
                    format!("{} for {}", values.len(), batch.len()),
                ));
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(StateError::Redis(e.clone())));
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(StateError::Redis(e.clone())));
                }
            }
        }
    }
}

fn parsed<T: redis::FromRedisValue>(value: redis::Value) -> Result<T> {
    redis::from_redis_value(value).map_err(|e| StateError::Redis(e.into()))
}

/// One reply of [`REGISTER_LUA`]: `{1, binding JSON...}` or a negative refusal.
fn register_outcome(value: redis::Value, args: &RegisterArgs) -> Result<Vec<Binding>> {
    let (outcome, bindings): (i64, Vec<String>) = match value {
        redis::Value::Array(mut items) if !items.is_empty() => {
            let rest = items.split_off(1);
            let outcome = parsed(items.remove(0))?;
            let bindings = rest.into_iter().map(parsed).collect::<Result<_>>()?;
            (outcome, bindings)
        }
        redis::Value::ServerError(e) => return Err(StateError::Redis(e.into())),
        other => (parsed(other)?, Vec::new()),
    };
    match outcome {
        1 => {
            let mut list = bindings
                .iter()
                .map(|v| serde_json::from_str(v))
                .collect::<std::result::Result<Vec<Binding>, _>>()?;
            list.retain(|b| b.expires_at_ms > args.now_ms);
            Ok(list)
        }
        -2 => Err(StateError::OutOfOrder),
        -3 => Err(StateError::TenantFull(args.per_tenant)),
        _ => Err(StateError::TooManyContacts(args.per_aor)),
    }
}

impl std::fmt::Debug for RedisLocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLocations")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn key(prefix: &str, tenant: &TenantId, aor: &str) -> String {
    format!(
        "{prefix}loc:{{{}}}:{}",
        tenant.as_str(),
        aor.to_ascii_lowercase()
    )
}

fn tenant_key(prefix: &str, tenant: &TenantId) -> String {
    format!("{prefix}regs:{{{}}}", tenant.as_str())
}

/// Drops lapsed bindings, then replaces or adds `b`, refusing when the AoR would exceed
/// `max` contacts or when `b` is older (same Call-ID, lower or equal CSeq).
fn apply(list: &mut Vec<Binding>, b: Binding, max: usize, now_ms: i64) -> Result<()> {
    list.retain(|x| x.expires_at_ms > now_ms);
    if let Some(existing) = list.iter_mut().find(|x| x.contact == b.contact) {
        if existing.call_id == b.call_id && b.cseq <= existing.cseq {
            return Err(StateError::OutOfOrder);
        }
        *existing = b;
        return Ok(());
    }
    if list.len() >= max {
        return Err(StateError::TooManyContacts(list.len()));
    }
    list.push(b);
    Ok(())
}

/// The same rules as [`MemoryLocations::register`], atomically in Redis: KEYS[1] the AoR
/// hash, KEYS[2] the tenant's set; ARGV: now, max per AoR, contact, binding JSON, call-id,
/// cseq, ttl seconds, max per tenant, AoR, expiry. Returns `{1, live binding JSON...}`
/// (the answer's Contact list, so no second round trip), or -1 too many for the AoR, -2
/// out of order, -3 too many for the tenant.
const REGISTER_LUA: &str = r#"
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local prefix = ARGV[9] .. "\n"
local all = redis.call('HGETALL', KEYS[1])
local live = 0
local mine = nil
for i = 1, #all, 2 do
  local b = cjson.decode(all[i + 1])
  if b.expires_at_ms <= now then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call('ZREM', KEYS[2], prefix .. all[i])
  else
    live = live + 1
    if all[i] == ARGV[3] then mine = b end
  end
end
if mine then
  if mine.call_id == ARGV[5] and tonumber(ARGV[6]) <= mine.cseq then return -2 end
elseif live >= max then
  return -1
else
  local tenant_max = tonumber(ARGV[8])
  if redis.call('ZCARD', KEYS[2]) >= tenant_max then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    if redis.call('ZCARD', KEYS[2]) >= tenant_max then return -3 end
  end
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[10], prefix .. ARGV[3])
local ttl = redis.call('TTL', KEYS[1])
if ttl < tonumber(ARGV[7]) then redis.call('EXPIRE', KEYS[1], ARGV[7]) end
local live = redis.call('HVALS', KEYS[1])
table.insert(live, 1, 1)
return live
"#;

/// Removes every contact of an AoR: KEYS[1] its hash, KEYS[2] the tenant's set; ARGV[1]
/// the AoR.
const UNREGISTER_ALL_LUA: &str = r#"
local prefix = ARGV[1] .. "\n"
for _, contact in ipairs(redis.call('HKEYS', KEYS[1])) do
  redis.call('ZREM', KEYS[2], prefix .. contact)
end
return redis.call('DEL', KEYS[1])
"#;

impl Locations {
    pub fn memory() -> Locations {
        Locations::Memory(Mutex::new(MemoryLocations::default()))
    }

    /// Connects to Redis at `url`; every key starts with `prefix` (tests use their own).
    pub async fn redis(url: &str, prefix: &str) -> Result<Locations> {
        let client = redis::Client::open(url)?;
        let conn = redis::aio::ConnectionManager::new(client).await?;
        let (writes, jobs) = mpsc::channel(MAX_BATCH * 32);
        let stats = Arc::new(BatchStats::default());
        tokio::spawn(write_batches(conn.clone(), jobs, stats.clone()));
        Ok(Locations::Redis(RedisLocations {
            conn,
            prefix: prefix.to_owned(),
            writes,
            stats,
            unregister_all: redis::Script::new(UNREGISTER_ALL_LUA),
        }))
    }

    /// How the batched Redis writes went (`None` in memory).
    pub fn batch_stats(&self) -> Option<&BatchStats> {
        match self {
            Locations::Memory(_) => None,
            Locations::Redis(r) => Some(&r.stats),
        }
    }

    /// Adds or refreshes a binding of `aor` in `tenant`, within `limits` (a refresh of a
    /// live contact always passes the tenant's). Returns the AoR's live bindings after the
    /// write, in no particular order.
    pub async fn register(
        &self,
        tenant: &TenantId,
        aor: &str,
        b: Binding,
        limits: BindingLimits,
        now_ms: i64,
    ) -> Result<Vec<Binding>> {
        match self {
            Locations::Memory(m) => m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .register(tenant, aor, b, limits, now_ms),
            Locations::Redis(r) => {
                let (reply, answer) = oneshot::channel();
                let job = RegisterJob {
                    keys: [key(&r.prefix, tenant, aor), tenant_key(&r.prefix, tenant)],
                    args: RegisterArgs {
                        now_ms,
                        per_aor: limits.per_aor,
                        json: serde_json::to_string(&b)?,
                        ttl: ((b.expires_at_ms - now_ms) / 1000).max(1) + 1,
                        per_tenant: limits.per_tenant,
                        aor: aor.to_ascii_lowercase(),
                        expires_at_ms: b.expires_at_ms,
                        cseq: b.cseq,
                        contact: b.contact,
                        call_id: b.call_id,
                    },
                    reply,
                };
                let stopped = || {
                    StateError::Redis(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the Redis writer has stopped",
                    )))
                };
                r.writes.send(job).await.map_err(|_| stopped())?;
                answer.await.map_err(|_| stopped())?
            }
        }
    }

    /// The tenant's live contacts, all AoRs together (what its cap counts).
    pub async fn tenant_contacts(&self, tenant: &TenantId, now_ms: i64) -> Result<usize> {
        match self {
            Locations::Memory(m) => Ok(m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .tenants
                .get(tenant)
                .map_or(0, |set| set.values().filter(|e| **e > now_ms).count())),
            Locations::Redis(r) => {
                let mut conn = r.conn.clone();
                Ok(redis::cmd("ZCOUNT")
                    .arg(tenant_key(&r.prefix, tenant))
                    .arg(format!("({now_ms}"))
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await?)
            }
        }
    }

    /// Removes one contact (Expires: 0 on it).
    pub async fn unregister(&self, tenant: &TenantId, aor: &str, contact: &str) -> Result<()> {
        match self {
            Locations::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(list) = m.aors.get_mut(&key("", tenant, aor)) {
                    list.retain(|b| b.contact != contact);
                }
                if let Some(set) = m.tenants.get_mut(tenant) {
                    set.remove(&member(aor, contact));
                }
                Ok(())
            }
            Locations::Redis(r) => {
                let mut conn = r.conn.clone();
                let _: () = redis::pipe()
                    .atomic()
                    .cmd("HDEL")
                    .arg(key(&r.prefix, tenant, aor))
                    .arg(contact)
                    .ignore()
                    .cmd("ZREM")
                    .arg(tenant_key(&r.prefix, tenant))
                    .arg(member(aor, contact))
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok(())
            }
        }
    }

    /// Removes every contact of the AoR (`Contact: *`).
    pub async fn unregister_all(&self, tenant: &TenantId, aor: &str) -> Result<()> {
        match self {
            Locations::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                let removed = m.aors.remove(&key("", tenant, aor)).unwrap_or_default();
                if let Some(set) = m.tenants.get_mut(tenant) {
                    for b in removed {
                        set.remove(&member(aor, &b.contact));
                    }
                }
                Ok(())
            }
            Locations::Redis(r) => {
                let mut conn = r.conn.clone();
                let _: i64 = r
                    .unregister_all
                    .key(key(&r.prefix, tenant, aor))
                    .key(tenant_key(&r.prefix, tenant))
                    .arg(aor.to_ascii_lowercase())
                    .invoke_async(&mut conn)
                    .await?;
                Ok(())
            }
        }
    }

    /// The AoR's live bindings, in no particular order.
    pub async fn lookup(&self, tenant: &TenantId, aor: &str, now_ms: i64) -> Result<Vec<Binding>> {
        let mut list = match self {
            Locations::Memory(m) => m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .aors
                .get(&key("", tenant, aor))
                .cloned()
                .unwrap_or_default(),
            Locations::Redis(r) => {
                let mut conn = r.conn.clone();
                let values: Vec<String> = redis::cmd("HVALS")
                    .arg(key(&r.prefix, tenant, aor))
                    .query_async(&mut conn)
                    .await?;
                values
                    .iter()
                    .map(|v| serde_json::from_str(v))
                    .collect::<std::result::Result<_, _>>()?
            }
        };
        list.retain(|b| b.expires_at_ms > now_ms);
        list.sort_by(|a, b| a.contact.cmp(&b.contact));
        Ok(list)
    }
}
