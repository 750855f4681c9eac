//! Cluster membership in Redis: each core and media node writes its record (address,
//! pool, capacity, load, state) every heartbeat with a short expiry; edges and cores read
//! the live records to know where to send calls and sessions. A node that stops writing
//! (killed, partitioned) disappears when its record expires. An operator asks a core to
//! drain through a flag the core reads at its next heartbeat; the core's record then says
//! `draining`, and `drained` once its last call has ended.
//!
//! Keys: `{prefix}member:{role}:{id}` (the record, JSON, with a TTL) and
//! `{prefix}members:{role}` (a sorted set of ids by last heartbeat, so readers find the
//! records without SCAN); `{prefix}drain:{id}` (a drain request).

use serde::{Deserialize, Serialize};

use crate::Result;

/// What a member does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Edge,
    Core,
    Media,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Core => "core",
            Role::Media => "media",
        }
    }
}

/// Whether a member takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Active,
    /// No new calls or sessions; what it holds goes on.
    Draining,
    /// Draining, and nothing is left on it: it may be stopped.
    Drained,
}

/// One node's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Stable for the node's address (`core@10.0.0.5:5070`).
    pub id: String,
    pub role: Role,
    /// Where other roles reach it (a core's SIP socket, a media node's control socket).
    pub addr: String,
    /// A media node's pool; empty for others.
    #[serde(default)]
    pub pool: String,
    /// Calls or sessions it takes at most (0: not limited).
    #[serde(default)]
    pub capacity: u64,
    /// Calls or sessions it holds.
    #[serde(default)]
    pub load: u64,
    #[serde(default)]
    pub state: NodeState,
    /// When it wrote this, Unix ms.
    pub seen_ms: i64,
}

/// The cluster's members in Redis.
pub struct Membership {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Membership {
    pub async fn redis(url: &str, prefix: &str) -> Result<Membership> {
        let client = redis::Client::open(url)?;
        let conn = redis::aio::ConnectionManager::new(client).await?;
        Ok(Membership {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn record_key(&self, role: Role, id: &str) -> String {
        format!("{}member:{}:{id}", self.prefix, role.as_str())
    }

    fn index_key(&self, role: Role) -> String {
        format!("{}members:{}", self.prefix, role.as_str())
    }

    fn drain_key(&self, id: &str) -> String {
        format!("{}drain:{id}", self.prefix)
    }

    /// Writes `member`'s record, alive for `ttl_ms` unless written again.
    pub async fn heartbeat(&self, member: &Member, ttl_ms: u64) -> Result<()> {
        let json = serde_json::to_string(member)?;
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("SET")
            .arg(self.record_key(member.role, &member.id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms.max(1))
            .ignore()
            .cmd("ZADD")
            .arg(self.index_key(member.role))
            .arg(member.seen_ms)
            .arg(&member.id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The live members of `role`, by id (records that expired are left out, and
    /// their ids pruned from the index).
    pub async fn members(&self, role: Role) -> Result<Vec<Member>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.index_key(role))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(role, id)).collect();
        let records: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut members = Vec::new();
        let mut gone = Vec::new();
        for (id, record) in ids.into_iter().zip(records) {
            match record.map(|r| serde_json::from_str::<Member>(&r)) {
                Some(Ok(m)) => members.push(m),
                Some(Err(e)) => return Err(e.into()),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            redis::cmd("ZREM")
                .arg(self.index_key(role))
                .arg(&gone)
                .query_async::<()>(&mut conn)
                .await?;
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    /// Removes a member at once (a clean stop).
    pub async fn leave(&self, role: Role, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("DEL")
            .arg(self.record_key(role, id))
            .ignore()
            .cmd("ZREM")
            .arg(self.index_key(role))
            .arg(id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Asks node `id` to drain (true) or to take work again (false).
    pub async fn set_drain(&self, id: &str, drain: bool) -> Result<()> {
        let mut conn = self.conn.clone();
        if drain {
            redis::cmd("SET")
                .arg(self.drain_key(id))
                .arg(1)
                .query_async::<()>(&mut conn)
                .await?;
        } else {
            redis::cmd("DEL")
                .arg(self.drain_key(id))
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Whether node `id` was asked to drain.
    pub async fn drain_requested(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("EXISTS")
            .arg(self.drain_key(id))
            .query_async::<i64>(&mut conn)
            .await?
            > 0)
    }
}
