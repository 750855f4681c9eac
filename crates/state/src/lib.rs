//! Runtime state: what the edge and core share that is not configuration. So far the
//! location service (registrations), in memory for `serve` and in Redis for a cluster,
//! behind one interface with the same rules: bindings per tenant and address of record,
//! replaced by contact URI, bounded per AoR, expiring at their own time.
//!
//! Time is an argument (`now_ms`); keys always carry the tenant.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;

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

/// The location service: in memory or in Redis.
#[derive(Debug)]
pub enum Locations {
    Memory(Mutex<HashMap<String, Vec<Binding>>>),
    Redis(RedisLocations),
}

/// Redis-backed bindings: one hash per AoR, field = contact, value = JSON binding.
pub struct RedisLocations {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    register: redis::Script,
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

/// The same rules as [`apply`], atomically in Redis: KEYS[1] the AoR hash; ARGV: now,
/// max, contact, binding JSON, call-id, cseq, ttl seconds. Returns 1, or -1 too many,
/// -2 out of order.
const REGISTER_LUA: &str = r#"
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local live = 0
local mine = nil
for i = 1, #all, 2 do
  local b = cjson.decode(all[i + 1])
  if b.expires_at_ms <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live = live + 1
    if all[i] == ARGV[3] then mine = b end
  end
end
if mine then
  if mine.call_id == ARGV[5] and tonumber(ARGV[6]) <= mine.cseq then return -2 end
elseif live >= max then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
local ttl = redis.call('TTL', KEYS[1])
if ttl < tonumber(ARGV[7]) then redis.call('EXPIRE', KEYS[1], ARGV[7]) end
return 1
"#;

impl Locations {
    pub fn memory() -> Locations {
        Locations::Memory(Mutex::new(HashMap::new()))
    }

    /// Connects to Redis at `url`; every key starts with `prefix` (tests use their own).
    pub async fn redis(url: &str, prefix: &str) -> Result<Locations> {
        let client = redis::Client::open(url)?;
        let conn = redis::aio::ConnectionManager::new(client).await?;
        Ok(Locations::Redis(RedisLocations {
            conn,
            prefix: prefix.to_owned(),
            register: redis::Script::new(REGISTER_LUA),
        }))
    }

    /// Adds or refreshes a binding of `aor` in `tenant`, at most `max` per AoR.
    pub async fn register(
        &self,
        tenant: &TenantId,
        aor: &str,
        b: Binding,
        max: usize,
        now_ms: i64,
    ) -> Result<()> {
        match self {
            Locations::Memory(m) => {
                let mut map = m.lock().unwrap_or_else(|e| e.into_inner());
                apply(map.entry(key("", tenant, aor)).or_default(), b, max, now_ms)
            }
            Locations::Redis(r) => {
                let ttl = ((b.expires_at_ms - now_ms) / 1000).max(1) + 1;
                let json = serde_json::to_string(&b)?;
                let mut conn = r.conn.clone();
                let outcome: i64 = r
                    .register
                    .key(key(&r.prefix, tenant, aor))
                    .arg(now_ms)
                    .arg(max)
                    .arg(&b.contact)
                    .arg(json)
                    .arg(&b.call_id)
                    .arg(b.cseq)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await?;
                match outcome {
                    1 => Ok(()),
                    -2 => Err(StateError::OutOfOrder),
                    _ => Err(StateError::TooManyContacts(max)),
                }
            }
        }
    }

    /// Removes one contact (Expires: 0 on it).
    pub async fn unregister(&self, tenant: &TenantId, aor: &str, contact: &str) -> Result<()> {
        match self {
            Locations::Memory(m) => {
                let mut map = m.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(list) = map.get_mut(&key("", tenant, aor)) {
                    list.retain(|b| b.contact != contact);
                }
                Ok(())
            }
            Locations::Redis(r) => {
                let mut conn = r.conn.clone();
                let _: i64 = redis::cmd("HDEL")
                    .arg(key(&r.prefix, tenant, aor))
                    .arg(contact)
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
                m.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key("", tenant, aor));
                Ok(())
            }
            Locations::Redis(r) => {
                let mut conn = r.conn.clone();
                let _: i64 = redis::cmd("DEL")
                    .arg(key(&r.prefix, tenant, aor))
                    .query_async(&mut conn)
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
