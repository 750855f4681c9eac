//! `switchyard import FILE`: bulk provisioning from JSON or CSV through the API.
//!
//! Every step carries an `Idempotency-Key` derived from what it does (its method, target
//! and body), so running an import twice changes nothing, and an import stopped anywhere
//! (even `kill -9`) finishes where it stopped when run again. Past the API's 24-hour
//! replay window, steps that already took effect answer 409 and are recognised as done.
//!
//! JSON:
//! ```json
//! {"numbers": ["+14155550100"],
//!  "tenants": [{"name": "Acme", "domain": "acme.example.com",
//!               "ranges": [{"first_number": 1000, "last_number": 1999}],
//!               "extensions": [{"number": 1000, "password": "...", "display_name": "Alice"}],
//!               "dids": 1}]}
//! ```
//! CSV, one extension a row (tenant and range created when first seen):
//! `domain,name,range_first,range_last,number,password,display_name`

use std::path::Path;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::http_client::{Conn, Reply};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportFile {
    #[serde(default)]
    pub numbers: Vec<String>,
    #[serde(default)]
    pub tenants: Vec<TenantSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub name: String,
    pub domain: String,
    #[serde(default)]
    pub max_extensions: Option<i64>,
    #[serde(default)]
    pub ranges: Vec<RangeSpec>,
    #[serde(default)]
    pub extensions: Vec<ExtensionSpec>,
    /// How many numbers of the pool the tenant should hold.
    #[serde(default)]
    pub dids: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    pub first_number: i64,
    pub last_number: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionSpec {
    pub number: i64,
    pub password: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub username: Option<String>,
}

/// Reads JSON (`.json`) or CSV (anything else).
pub fn read(path: &Path) -> anyhow::Result<ImportFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid import file", path.display()));
    }
    let mut file = ImportFile::default();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("CSV row {}", i + 2))?;
        let field = |n: usize| row.get(n).unwrap_or("").to_owned();
        let number = |n: usize| -> anyhow::Result<i64> {
            field(n)
                .parse()
                .with_context(|| format!("CSV row {}: column {} is not a number", i + 2, n + 1))
        };
        let domain = field(0);
        let range = RangeSpec {
            first_number: number(2)?,
            last_number: number(3)?,
        };
        let idx = match file.tenants.iter().position(|t| t.domain == domain) {
            Some(idx) => idx,
            None => {
                file.tenants.push(TenantSpec {
                    name: field(1),
                    domain: domain.clone(),
                    max_extensions: None,
                    ranges: Vec::new(),
                    extensions: Vec::new(),
                    dids: 0,
                });
                file.tenants.len() - 1
            }
        };
        let t = &mut file.tenants[idx];
        if !t.ranges.contains(&range) {
            t.ranges.push(range);
        }
        t.extensions.push(ExtensionSpec {
            number: number(4)?,
            password: field(5),
            display_name: field(6),
            username: None,
        });
    }
    Ok(file)
}

/// Counts of what an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub created: usize,
    /// Steps that had already taken effect (replayed or found in place).
    pub existing: usize,
}

struct Runner {
    conn: Conn,
    key: String,
    summary: Summary,
}

fn idem_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    format!(
        "import-{}",
        d[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

impl Runner {
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        idem: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let text = body.map(Value::to_string);
        let mut attempts = 0;
        let reply = loop {
            let reply = self
                .conn
                .request(method, path, &self.key, Some(idem), text.as_deref())
                .await
                .with_context(|| format!("{method} {path}"))?;
            // A rate-limited step is retried: its Idempotency-Key makes that safe.
            if reply.status == 429 && attempts < 60 {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            break reply;
        };
        if reply.status >= 500 || reply.status == 401 || reply.status == 403 {
            bail!("{method} {path}: {} {}", reply.status, reply.body);
        }
        Ok(reply)
    }

    fn count(&mut self, reply: &Reply) {
        if reply.replayed || reply.status == 409 {
            self.summary.existing += 1;
        } else {
            self.summary.created += 1;
        }
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<Value> {
        let reply = self
            .conn
            .request("GET", path, &self.key, None, None)
            .await?;
        if reply.status != 200 {
            bail!("GET {path}: {} {}", reply.status, reply.body);
        }
        Ok(serde_json::from_str(&reply.body)?)
    }

    async fn tenant(&mut self, t: &TenantSpec) -> anyhow::Result<String> {
        let mut body = json!({"name": t.name, "domain": t.domain});
        if let Some(m) = t.max_extensions {
            body["max_extensions"] = json!(m);
        }
        let reply = self
            .send(
                "POST",
                "/v1/tenants",
                &idem_key(&["tenant", &body.to_string()]),
                Some(&body),
            )
            .await?;
        self.count(&reply);
        match reply.status {
            201 => Ok(serde_json::from_str::<Value>(&reply.body)?["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()),
            409 => {
                let page = self
                    .get(&format!("/v1/tenants?domain={}", t.domain))
                    .await?;
                page["items"][0]["id"]
                    .as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("tenant {} conflicts but cannot be found", t.domain))
            }
            s => bail!("tenant {}: {s} {}", t.domain, reply.body),
        }
    }
}

/// Runs the import against the API at `addr` with `key`, drawing progress when `progress`.
pub async fn run(
    file: &ImportFile,
    addr: std::net::SocketAddr,
    key: &str,
    progress: bool,
) -> anyhow::Result<Summary> {
    let steps = file.numbers.len().div_ceil(500)
        + file
            .tenants
            .iter()
            .map(|t| 1 + t.ranges.len() + t.extensions.len() + t.dids)
            .sum::<usize>();
    let bar = if progress {
        ProgressBar::new(steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut r = Runner {
        conn: Conn::new(addr),
        key: key.to_owned(),
        summary: Summary::default(),
    };
    for chunk in file.numbers.chunks(500) {
        let body = json!({ "numbers": chunk });
        let reply = r
            .send(
                "POST",
                "/v1/numbers",
                &idem_key(&["numbers", &body.to_string()]),
                Some(&body),
            )
            .await?;
        if reply.status == 409 {
            // Some are in the pool already: add the rest one by one.
            for n in chunk {
                let one = json!({ "numbers": [n] });
                let reply = r
                    .send(
                        "POST",
                        "/v1/numbers",
                        &idem_key(&["numbers", &one.to_string()]),
                        Some(&one),
                    )
                    .await?;
                if reply.status != 201 && reply.status != 409 {
                    bail!("number {n}: {} {}", reply.status, reply.body);
                }
                r.count(&reply);
            }
        } else if reply.status != 201 {
            bail!("numbers: {} {}", reply.status, reply.body);
        } else {
            r.count(&reply);
        }
        bar.inc(1);
    }
    for t in &file.tenants {
        bar.set_message(t.domain.clone());
        let id = r.tenant(t).await?;
        bar.inc(1);
        for e in &t.extensions {
            if !t
                .ranges
                .iter()
                .any(|s| (s.first_number..=s.last_number).contains(&e.number))
            {
                bail!(
                    "{}: extension {} lies in no range of the file",
                    t.domain,
                    e.number
                );
            }
        }
        // The tenant's ranges, extensions and numbers go through its job queue, so this
        // import never interleaves with another long operation of the same tenant (an
        // API import, a tenant delete). Every step of a job is idempotent: a re-run, or a
        // job left by a killed run and resumed when the API starts, ends in the same state.
        let job = json!({
            "ranges": t.ranges.iter()
                .map(|x| json!({"first_number": x.first_number, "last_number": x.last_number}))
                .collect::<Vec<_>>(),
            "extensions": t.extensions.iter().map(|e| {
                let mut v = json!({"number": e.number, "password": e.password, "display_name": e.display_name});
                if let Some(u) = &e.username {
                    v["username"] = json!(u);
                }
                v
            }).collect::<Vec<_>>(),
            "dids": t.dids,
        });
        let reply = r
            .conn
            .request(
                "POST",
                &format!("/v1/tenants/{id}/jobs/import"),
                &r.key,
                None,
                Some(&job.to_string()),
            )
            .await?;
        if reply.status != 202 {
            bail!("{}: import job: {} {}", t.domain, reply.status, reply.body);
        }
        let job_id = serde_json::from_str::<Value>(&reply.body)?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        loop {
            let j = r.get(&format!("/v1/tenants/{id}/jobs/{job_id}")).await?;
            match j["state"].as_str() {
                Some("done") => {
                    let count = |k: &str| j["result"][k].as_u64().unwrap_or(0) as usize;
                    r.summary.created += count("created");
                    r.summary.existing += count("existing");
                    break;
                }
                Some("failed") => bail!("{}: {}", t.domain, j["result"]["error"]),
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        bar.inc((t.ranges.len() + t.extensions.len() + t.dids) as u64);
    }
    bar.finish_and_clear();
    Ok(r.summary)
}
