//! Answered calls' dialog state in Redis, so that another core can carry a call on when
//! the core that held it dies. The core writes a call's record (JSON, opaque here) when
//! it is answered and when it changes, under the caller's Call-ID, with the callee leg's
//! Call-ID as an alias (either leg's next request may be the first to reach the new
//! core), and deletes both when the call ends.
//!
//! Keys: `{prefix}dlg:{call-id}` (the record) and `{prefix}dlgalias:{call-id}` (the
//! caller's Call-ID), both expiring after the record's lifetime unless written again.

use crate::Result;

/// Dialog records in Redis.
pub struct DialogStore {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for DialogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialogStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl DialogStore {
    pub async fn redis(url: &str, prefix: &str) -> Result<DialogStore> {
        let client = redis::Client::open(url)?;
        let conn = redis::aio::ConnectionManager::new(client).await?;
        Ok(DialogStore {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn record_key(&self, call_id: &str) -> String {
        format!("{}dlg:{call_id}", self.prefix)
    }

    fn alias_key(&self, call_id: &str) -> String {
        format!("{}dlgalias:{call_id}", self.prefix)
    }

    /// Writes the record of the call whose legs are `a` (the key) and `b` (the alias),
    /// alive for `ttl_secs`: one round trip.
    pub async fn put(&self, a: &str, b: &str, record: &str, ttl_secs: u64) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("SET")
            .arg(self.record_key(a))
            .arg(record)
            .arg("EX")
            .arg(ttl_secs.max(1))
            .ignore()
            .cmd("SET")
            .arg(self.alias_key(b))
            .arg(a)
            .arg("EX")
            .arg(ttl_secs.max(1))
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The record of the call one of whose legs has `call_id`.
    pub async fn get(&self, call_id: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let (direct, alias): (Option<String>, Option<String>) = redis::pipe()
            .cmd("GET")
            .arg(self.record_key(call_id))
            .cmd("GET")
            .arg(self.alias_key(call_id))
            .query_async(&mut conn)
            .await?;
        if direct.is_some() {
            return Ok(direct);
        }
        let Some(a) = alias else {
            return Ok(None);
        };
        Ok(redis::cmd("GET")
            .arg(self.record_key(&a))
            .query_async(&mut conn)
            .await?)
    }

    /// Forgets a call (it ended).
    pub async fn delete(&self, a: &str, b: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.record_key(a))
            .arg(self.alias_key(b))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}
