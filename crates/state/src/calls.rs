//! Each tenant's calls in progress and its call rate: what the edge admits a new call
//! against (the tenant's `max_calls` and `calls_per_second`), in memory for one process or
//! in Redis, where every edge of a cluster shares them.
//!
//! A call is a member (`Call-ID\ntag`, unique per call) of its tenant's set. The edge
//! that admitted a call releases it when the call ends; in Redis each member also carries
//! a lease the edge renews while it holds the call, so the calls of an edge that died
//! free their slots when their leases lapse instead of never. The rate is a GCRA (the
//! generic cell rate algorithm: one "theoretical arrival time" per tenant), the same
//! arithmetic in Rust and in the Lua script.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use switchyard_types::TenantId;

use crate::Result;

/// The caps a new call is admitted against. A limit of 0 admits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Calls in progress at once.
    pub max_calls: u32,
    /// New calls per second, sustained; a second's worth may come at once.
    pub calls_per_second: u32,
}

/// The answer to a new call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The call holds a slot already (a retransmission of its INVITE).
    AlreadyAdmitted,
    /// The tenant has `max_calls` calls in progress.
    CallLimit(u32),
    /// Faster than `calls_per_second`; a slot frees in `retry_after_ms`.
    RateLimit {
        limit: u32,
        retry_after_ms: u64,
    },
}

impl Admission {
    pub fn admitted(self) -> bool {
        matches!(self, Admission::Admitted | Admission::AlreadyAdmitted)
    }
}

/// One step of GCRA on microseconds: the new theoretical arrival time, or how long until
/// a call would conform. `rate` calls per second, `rate` of them at once.
pub fn gcra(tat_us: i64, now_us: i64, rate: u32) -> std::result::Result<i64, i64> {
    if rate == 0 {
        return Err(i64::MAX);
    }
    let interval = 1_000_000 / i64::from(rate);
    let tolerance = interval * (i64::from(rate) - 1);
    let tat = tat_us.max(now_us);
    if tat - now_us > tolerance {
        return Err(tat - tolerance - now_us);
    }
    Ok(tat + interval)
}

/// Calls in progress and rates, per tenant.
#[derive(Debug)]
pub enum LiveCalls {
    Memory(Mutex<HashMap<TenantId, TenantCalls>>),
    Redis(RedisCalls),
}

/// One tenant's calls in memory.
#[derive(Debug, Default)]
pub struct TenantCalls {
    active: HashSet<String>,
    tat_us: i64,
}

impl TenantCalls {
    fn admit(&mut self, call: &str, limits: CallLimits, now_ms: i64) -> Admission {
        if self.active.contains(call) {
            return Admission::AlreadyAdmitted;
        }
        if self.active.len() >= limits.max_calls as usize {
            return Admission::CallLimit(limits.max_calls);
        }
        match gcra(self.tat_us, now_ms * 1000, limits.calls_per_second) {
            Ok(tat) => {
                self.tat_us = tat;
                self.active.insert(call.to_owned());
                Admission::Admitted
            }
            Err(wait_us) => Admission::RateLimit {
                limit: limits.calls_per_second,
                retry_after_ms: (wait_us as u64).div_ceil(1000),
            },
        }
    }
}

/// Redis: a sorted set per tenant (member = call, score = lease end, ms) and a key holding
/// the tenant's GCRA time; both carry the tenant as hash tag, so one script sees both.
pub struct RedisCalls {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    admit: redis::Script,
}

impl std::fmt::Debug for RedisCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCalls")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// [`TenantCalls::admit`] in Lua: KEYS[1] the tenant's set, KEYS[2] its GCRA time;
/// ARGV: now ms, call, lease end ms, max calls, calls per second. Returns 1 admitted,
/// 2 already, -1 call limit, or -(1000 + ms to wait) rate limit.
const ADMIT_LUA: &str = r#"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  return 2
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
local rate = tonumber(ARGV[5])
if rate == 0 then return -1000 end
local now_us = now * 1000
local interval = math.floor(1000000 / rate)
local tolerance = interval * (rate - 1)
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if tat < now_us then tat = now_us end
if tat - now_us > tolerance then
  return -(1000 + math.ceil((tat - tolerance - now_us) / 1000))
end
redis.call('SET', KEYS[2], string.format('%d', tat + interval), 'PX', math.ceil((tat + interval - now_us) / 1000) + 1000)
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
local keep = tonumber(ARGV[3]) - now
if ttl < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
"#;

fn admit_in(
    m: &Mutex<HashMap<TenantId, TenantCalls>>,
    tenant: &TenantId,
    call: &str,
    limits: CallLimits,
    now_ms: i64,
) -> Admission {
    m.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(tenant.clone())
        .or_default()
        .admit(call, limits, now_ms)
}

fn calls_key(prefix: &str, tenant: &TenantId) -> String {
    format!("{prefix}calls:{{{}}}", tenant.as_str())
}

fn rate_key(prefix: &str, tenant: &TenantId) -> String {
    format!("{prefix}cps:{{{}}}", tenant.as_str())
}

impl LiveCalls {
    pub fn memory() -> LiveCalls {
        LiveCalls::Memory(Mutex::new(HashMap::new()))
    }

    /// Connects to Redis at `url`; every key starts with `prefix`.
    pub async fn redis(url: &str, prefix: &str) -> Result<LiveCalls> {
        let client = redis::Client::open(url)?;
        let conn = redis::aio::ConnectionManager::new(client).await?;
        Ok(LiveCalls::Redis(RedisCalls {
            conn,
            prefix: prefix.to_owned(),
            admit: redis::Script::new(ADMIT_LUA),
        }))
    }

    /// In memory, the answer without waiting (`None` for Redis: use [`Self::admit`]).
    pub fn admit_now(
        &self,
        tenant: &TenantId,
        call: &str,
        limits: CallLimits,
        now_ms: i64,
    ) -> Option<Admission> {
        match self {
            LiveCalls::Memory(m) => Some(admit_in(m, tenant, call, limits, now_ms)),
            LiveCalls::Redis(_) => None,
        }
    }

    /// Admits `call` into `tenant` within `limits`, its lease (Redis) running to
    /// `lease_until_ms`.
    pub async fn admit(
        &self,
        tenant: &TenantId,
        call: &str,
        limits: CallLimits,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Admission> {
        let r = match self {
            LiveCalls::Memory(m) => return Ok(admit_in(m, tenant, call, limits, now_ms)),
            LiveCalls::Redis(r) => r,
        };
        let mut conn = r.conn.clone();
        let outcome: i64 = r
            .admit
            .key(calls_key(&r.prefix, tenant))
            .key(rate_key(&r.prefix, tenant))
            .arg(now_ms)
            .arg(call)
            .arg(lease_until_ms)
            .arg(limits.max_calls)
            .arg(limits.calls_per_second)
            .invoke_async(&mut conn)
            .await?;
        Ok(match outcome {
            1 => Admission::Admitted,
            2 => Admission::AlreadyAdmitted,
            -1 => Admission::CallLimit(limits.max_calls),
            wait => Admission::RateLimit {
                limit: limits.calls_per_second,
                retry_after_ms: (-wait - 1000).max(0) as u64,
            },
        })
    }

    /// Frees the slots of ended calls.
    pub async fn release(&self, calls: &[(TenantId, String)]) -> Result<()> {
        match self {
            LiveCalls::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                for (tenant, call) in calls {
                    if let Some(t) = m.get_mut(tenant) {
                        t.active.remove(call);
                    }
                }
                Ok(())
            }
            LiveCalls::Redis(r) => {
                if calls.is_empty() {
                    return Ok(());
                }
                let mut pipe = redis::pipe();
                for (tenant, call) in calls {
                    pipe.cmd("ZREM")
                        .arg(calls_key(&r.prefix, tenant))
                        .arg(call)
                        .ignore();
                }
                let mut conn = r.conn.clone();
                pipe.query_async::<()>(&mut conn).await?;
                Ok(())
            }
        }
    }

    /// Extends the leases of calls still in progress (Redis; nothing to do in memory,
    /// where the calls die with the process that holds them).
    pub async fn renew(&self, calls: &[(TenantId, String)], lease_until_ms: i64) -> Result<()> {
        let LiveCalls::Redis(r) = self else {
            return Ok(());
        };
        if calls.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (tenant, call) in calls {
            let key = calls_key(&r.prefix, tenant);
            pipe.cmd("ZADD")
                .arg(&key)
                .arg("XX")
                .arg(lease_until_ms)
                .arg(call)
                .ignore();
            pipe.cmd("PEXPIREAT")
                .arg(&key)
                .arg(lease_until_ms)
                .arg("GT")
                .ignore();
        }
        let mut conn = r.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The tenant's calls in progress (with a live lease).
    pub async fn active(&self, tenant: &TenantId, now_ms: i64) -> Result<u64> {
        match self {
            LiveCalls::Memory(m) => Ok(m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(tenant)
                .map_or(0, |t| t.active.len() as u64)),
            LiveCalls::Redis(r) => {
                let mut conn = r.conn.clone();
                Ok(redis::cmd("ZCOUNT")
                    .arg(calls_key(&r.prefix, tenant))
                    .arg(format!("({now_ms}"))
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_lets_a_second_s_worth_through_then_paces() {
        let mut tat = 0;
        let now = 10_000_000;
        for _ in 0..5 {
            tat = gcra(tat, now, 5).unwrap();
        }
        // The sixth in the same instant waits one interval (200 ms).
        assert_eq!(gcra(tat, now, 5), Err(200_000));
        assert!(gcra(tat, now + 199_999, 5).is_err());
        let tat = gcra(tat, now + 200_000, 5).unwrap();
        assert!(gcra(tat, now + 200_000, 5).is_err());
        // After a quiet second the burst is back.
        let mut tat = tat;
        for _ in 0..5 {
            tat = gcra(tat, now + 2_000_000, 5).unwrap();
        }
        assert!(gcra(tat, now + 2_000_000, 5).is_err());
        assert_eq!(gcra(0, now, 0), Err(i64::MAX));
    }

    #[test]
    fn memory_admission_counts_each_call_once() {
        let calls = LiveCalls::memory();
        let t = TenantId::from("t");
        let limits = CallLimits {
            max_calls: 2,
            calls_per_second: 100,
        };
        let admit = |c: &str| calls.admit_now(&t, c, limits, 1_000).unwrap();
        assert_eq!(admit("a"), Admission::Admitted);
        assert_eq!(admit("a"), Admission::AlreadyAdmitted);
        assert_eq!(admit("b"), Admission::Admitted);
        assert_eq!(admit("c"), Admission::CallLimit(2));
        // Another tenant has its own slots.
        let other = TenantId::from("u");
        assert_eq!(
            calls.admit_now(&other, "c", limits, 1_000),
            Some(Admission::Admitted)
        );
    }
}
