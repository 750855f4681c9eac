//! Requests between cores through Redis: each core reads its own mailbox, a list that
//! other cores push requests onto, and answers each on a list the request names, which
//! the asker waits on. A core asks another for a call this way (an attended transfer
//! whose consultation call the other core holds).
//!
//! Keys: `{prefix}handoff:{core}` (the mailbox) and `{prefix}handoff-reply:{random}`
//! (one answer), both short-lived: a request nobody reads and an answer nobody waits for
//! expire.

use std::time::Duration;

use crate::Result;

/// How long an answer waits for its asker.
const REPLY_TTL_SECS: u64 = 10;

/// The mailboxes of the cluster's cores.
pub struct Mailboxes {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Mailboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailboxes")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// One request read from a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// Where the answer goes.
    pub reply_to: String,
    pub body: String,
}

impl Mailboxes {
    pub async fn redis(url: &str, prefix: &str) -> Result<Mailboxes> {
        let client = redis::Client::open(url)?;
        let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
        Ok(Mailboxes {
            client,
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn mailbox(&self, core: &str) -> String {
        format!("{}handoff:{core}", self.prefix)
    }

    /// A connection of its own for a blocking read of up to `wait` (the shared one must
    /// not be held up, and its response timeout is shorter).
    async fn blocking_connection(
        &self,
        wait: Duration,
    ) -> Result<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(wait + Duration::from_secs(1)));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Puts `body` in `core`'s mailbox and waits up to `wait` for its answer: `None` when
    /// none came (the core is gone, or too busy to read its mail in time).
    pub async fn ask(&self, core: &str, body: &str, wait: Duration) -> Result<Option<String>> {
        let reply_to = format!("{}handoff-reply:{:016x}", self.prefix, rand_token());
        let letter = format!("{reply_to}\n{body}");
        let mailbox = self.mailbox(core);
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("RPUSH")
            .arg(&mailbox)
            .arg(letter)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&mailbox)
            .arg((wait.as_millis() as u64).max(1) * 2)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        let mut blocking = self.blocking_connection(wait).await?;
        let answer: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(&reply_to)
            .arg(wait.as_secs_f64())
            .query_async(&mut blocking)
            .await?;
        Ok(answer.map(|(_, body)| body))
    }

    /// A reader of `core`'s mailbox, on a connection of its own.
    pub async fn reader(&self, core: &str, wait: Duration) -> Result<MailboxReader> {
        Ok(MailboxReader {
            blocking: self.blocking_connection(wait).await?,
            conn: self.conn.clone(),
            mailbox: self.mailbox(core),
            wait,
        })
    }
}

/// Reads one core's mailbox.
pub struct MailboxReader {
    blocking: redis::aio::MultiplexedConnection,
    conn: redis::aio::ConnectionManager,
    mailbox: String,
    wait: Duration,
}

impl std::fmt::Debug for MailboxReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxReader")
            .field("mailbox", &self.mailbox)
            .finish_non_exhaustive()
    }
}

impl MailboxReader {
    /// The next request, waiting up to the reader's wait for one.
    pub async fn next(&mut self) -> Result<Option<Letter>> {
        let read: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(&self.mailbox)
            .arg(self.wait.as_secs_f64())
            .query_async(&mut self.blocking)
            .await?;
        Ok(read.and_then(|(_, letter)| {
            let (reply_to, body) = letter.split_once('\n')?;
            Some(Letter {
                reply_to: reply_to.to_owned(),
                body: body.to_owned(),
            })
        }))
    }

    /// Answers `letter`.
    pub async fn answer(&self, letter: &Letter, body: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("RPUSH")
            .arg(&letter.reply_to)
            .arg(body)
            .ignore()
            .cmd("EXPIRE")
            .arg(&letter.reply_to)
            .arg(REPLY_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

/// 64 random-enough bits for a reply's key (unique per request, not secret).
fn rand_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS: &str = "redis://127.0.0.1:6379";

    #[tokio::test]
    async fn a_request_reaches_the_named_core_and_its_answer_comes_back() {
        let prefix = format!("sytest-{:x}:", rand_token());
        let boxes = Mailboxes::redis(REDIS, &prefix).await.expect("redis");
        let mut reader = boxes
            .reader("10.0.0.2:5070", Duration::from_secs(2))
            .await
            .expect("reader");
        let owner = tokio::spawn(async move {
            let letter = reader.next().await.expect("read").expect("a letter");
            reader
                .answer(&letter, &format!("got {}", letter.body))
                .await
                .expect("answer");
            letter.body
        });
        let answer = boxes
            .ask("10.0.0.2:5070", "give call-1", Duration::from_secs(2))
            .await
            .expect("ask");
        assert_eq!(answer.as_deref(), Some("got give call-1"));
        assert_eq!(owner.await.unwrap(), "give call-1");
        // Nobody reads another core's mailbox: the asker hears nothing, in time.
        let silent = boxes
            .ask("10.0.0.3:5070", "give call-2", Duration::from_millis(300))
            .await
            .expect("ask");
        assert_eq!(silent, None);
    }
}
