//! Operator commands for tenants, ranges, extensions and numbers. They call the API: a
//! running one (`--api HOST:PORT --key KEY`) or, when none is given, an in-process API over
//! the local store with a key that lives for the one command. Same rules either way.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::bail;
use serde_json::Value;

use crate::config::Config;
use crate::http_client::Conn;

/// A way to reach the API for one command.
pub struct ApiSession {
    pub conn: Conn,
    pub key: String,
    local: Option<Local>,
}

struct Local {
    store: switchyard_store::Store,
    /// The session opened the store itself (and closes it).
    owns_store: bool,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    key_id: String,
}

impl std::fmt::Debug for ApiSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSession")
            .field("local", &self.local.is_some())
            .finish()
    }
}

impl ApiSession {
    /// Connects to `api` with `key`, or serves the local store in-process.
    pub async fn open(
        api: Option<(SocketAddr, String)>,
        config: Option<&Path>,
        data_dir: Option<&Path>,
    ) -> anyhow::Result<ApiSession> {
        if let Some((addr, key)) = api {
            return Ok(ApiSession {
                conn: Conn::new(addr),
                key,
                local: None,
            });
        }
        let mut cfg = Config::load(config)?;
        if let Some(d) = data_dir {
            cfg.node.data_dir = d.to_owned();
        }
        std::fs::create_dir_all(&cfg.node.data_dir)?;
        let store = switchyard_store::Store::connect(&cfg.store_url()).await?;
        store.migrate().await?;
        let mut session = ApiSession::local(store).await?;
        if let Some(l) = session.local.as_mut() {
            l.owns_store = true;
        }
        Ok(session)
    }

    /// Serves `store` through an in-process API (unthrottled: this is the operator's own
    /// tool) with an operator key that is revoked by [`ApiSession::close`].
    pub async fn local(store: switchyard_store::Store) -> anyhow::Result<ApiSession> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(switchyard_api::serve(
            listener,
            switchyard_api::AppState::with_rate(store.clone(), 1_000_000),
            rx,
        ));
        let key = switchyard_api::issue_key(&store, "operator", false)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key_id = key
            .trim_start_matches("sy_")
            .split('_')
            .next()
            .unwrap_or_default()
            .to_owned();
        Ok(ApiSession {
            conn: Conn::new(addr),
            key,
            local: Some(Local {
                store,
                owns_store: false,
                stop,
                server,
                key_id,
            }),
        })
    }

    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        self.conn.addr()
    }

    /// Sends a request; a 2xx gives the body as JSON, anything else is an error naming
    /// the API's problem detail.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let text = body.map(|b| b.to_string());
        let reply = self
            .conn
            .request(method, path, &self.key, None, text.as_deref())
            .await?;
        let value: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        if !(200..300).contains(&reply.status) {
            let detail = value["detail"].as_str().unwrap_or(&reply.body);
            bail!("{} {}", reply.status, detail);
        }
        Ok(value)
    }

    /// Stops the in-process API and revokes its key.
    pub async fn close(self) -> anyhow::Result<()> {
        if let Some(local) = self.local {
            local.store.delete_api_key(&local.key_id).await?;
            let _ = local.stop.send(true);
            let _ = local.server.await;
            if local.owns_store {
                local.store.close().await;
            }
        }
        Ok(())
    }
}

/// Prints `value` (an object or an array of objects) as a table of `columns`, or as JSON.
pub fn print(value: &Value, columns: &[&str], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    let rows: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(o) if o.contains_key("items") => value["items"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Value::Null => return,
        other => vec![other],
    };
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for r in table {
        println!("{}", line(r));
    }
}
