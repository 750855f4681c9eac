//! Where each round-robin group starts its next call: one counter per group for every
//! core that may take the group's calls (calls spread over cores by Call-ID), in memory
//! for one process and in Redis for a cluster.
//!
//! Key: `{prefix}turn:{group}`, the group named by its tenant and id (an `INCR` per
//! call; it expires a day after the group's last call).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::Result;

/// How long a group's counter outlives its last call.
const TURN_TTL_SECS: u64 = 24 * 3600;

/// Round-robin counters.
pub enum Turns {
    Memory(Mutex<HashMap<String, u64>>),
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
    },
}

impl std::fmt::Debug for Turns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Turns::Memory(_) => f.write_str("Turns::Memory"),
            Turns::Redis { prefix, .. } => write!(f, "Turns::Redis({prefix})"),
        }
    }
}

impl Default for Turns {
    fn default() -> Self {
        Turns::memory()
    }
}

impl Turns {
    pub fn memory() -> Turns {
        Turns::Memory(Mutex::default())
    }

    pub async fn redis(url: &str, prefix: &str) -> Result<Turns> {
        let client = redis::Client::open(url)?;
        Ok(Turns::Redis {
            conn: redis::aio::ConnectionManager::new(client).await?,
            prefix: prefix.to_owned(),
        })
    }

    /// This call's turn of `group`: 0, 1, 2, ... across every core counting here.
    pub async fn take(&self, group: &str) -> Result<u64> {
        match self {
            Turns::Memory(turns) => {
                let mut turns = turns.lock().unwrap_or_else(|e| e.into_inner());
                let turn = turns.entry(group.to_owned()).or_insert(0);
                let this = *turn;
                *turn += 1;
                Ok(this)
            }
            Turns::Redis { conn, prefix } => {
                let key = format!("{prefix}turn:{group}");
                let mut conn = conn.clone();
                let (count,): (u64,) = redis::pipe()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(TURN_TTL_SECS)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok(count.saturating_sub(1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_core_sharing_the_counters_takes_the_next_turn() {
        let memory = Turns::memory();
        for expected in 0..3 {
            assert_eq!(memory.take("g1").await.unwrap(), expected);
        }
        assert_eq!(memory.take("g2").await.unwrap(), 0, "per group");
        // Two cores of a cluster: one sequence between them.
        let prefix = format!(
            "sytest-turns-{}:",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let url = "redis://127.0.0.1:6379";
        let (a, b) = (
            Turns::redis(url, &prefix).await.expect("redis"),
            Turns::redis(url, &prefix).await.expect("redis"),
        );
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(a.take("g1").await.unwrap());
            seen.push(b.take("g1").await.unwrap());
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
    }
}
