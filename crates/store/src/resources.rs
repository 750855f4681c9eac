//! Call-flow resources of a tenant: ring groups, IVR menus, voicemail boxes, time
//! conditions, outbound routes and trunks. Each kind has a typed spec, validated on write;
//! every reference (an extension, another resource) must belong to the same tenant, and a
//! resource or extension still referenced cannot be deleted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tenants::bump_version;
use crate::{Result, Store, StoreError, in_tx, new_id, on_pool};

/// Rows per CDR insert statement: 12 parameters each, far below SQLite's 32,766 and
/// PostgreSQL's 65,535 bound parameters.
const CDRS_PER_STATEMENT: usize = 256;

/// Fails with `Invalid { field: $field }` unless `$id` names an extension (`$kind ==
/// "extension"`) or a resource of kind `$kind` of the tenant. Runs inside a transaction
/// of either backend.
macro_rules! ensure_in_tenant {
    ($tx:ident, $tenant_id:expr, $kind:expr, $id:expr, $field:literal) => {{
        let found: Option<String> = if $kind == "extension" {
            sqlx::query_scalar("SELECT id FROM extensions WHERE id = $1 AND tenant_id = $2")
                .bind($id)
                .bind($tenant_id)
                .fetch_optional(&mut *$tx)
                .await?
        } else {
            sqlx::query_scalar(
                "SELECT id FROM tenant_resources WHERE id = $1 AND tenant_id = $2 AND kind = $3",
            )
            .bind($id)
            .bind($tenant_id)
            .bind($kind)
            .fetch_optional(&mut *$tx)
            .await?
        };
        if found.is_none() {
            return Err(StoreError::invalid(
                $field,
                format!("{} {} does not exist in this tenant", $kind, $id),
            ));
        }
    }};
}
pub(crate) use ensure_in_tenant;

/// The kinds of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    RingGroup,
    IvrMenu,
    VoicemailBox,
    TimeCondition,
    OutboundRoute,
    Trunk,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 6] = [
        ResourceKind::RingGroup,
        ResourceKind::IvrMenu,
        ResourceKind::VoicemailBox,
        ResourceKind::TimeCondition,
        ResourceKind::OutboundRoute,
        ResourceKind::Trunk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::RingGroup => "ring_group",
            ResourceKind::IvrMenu => "ivr_menu",
            ResourceKind::VoicemailBox => "voicemail_box",
            ResourceKind::TimeCondition => "time_condition",
            ResourceKind::OutboundRoute => "outbound_route",
            ResourceKind::Trunk => "trunk",
        }
    }

    pub fn parse(s: &str) -> Option<ResourceKind> {
        ResourceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a call goes next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    content = "id",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Target {
    Extension(String),
    RingGroup(String),
    IvrMenu(String),
    VoicemailBox(String),
    TimeCondition(String),
    Hangup,
}

impl Target {
    /// The kind as stored and as a reference's kind (`extension`, `ring_group`, ...), and
    /// the id (empty for `hangup`).
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            Target::Extension(id) => ("extension", id),
            Target::RingGroup(id) => ("ring_group", id),
            Target::IvrMenu(id) => ("ivr_menu", id),
            Target::VoicemailBox(id) => ("voicemail_box", id),
            Target::TimeCondition(id) => ("time_condition", id),
            Target::Hangup => ("hangup", ""),
        }
    }

    /// The form a DID's target is stored in: `kind:id`, or `hangup`.
    pub fn encode(&self) -> String {
        match self.parts() {
            ("hangup", _) => "hangup".to_owned(),
            (kind, id) => format!("{kind}:{id}"),
        }
    }

    /// The target [`Target::encode`] wrote (`None` for anything else).
    pub fn decode(stored: &str) -> Option<Target> {
        if stored == "hangup" {
            return Some(Target::Hangup);
        }
        let (kind, id) = stored.split_once(':')?;
        let id = id.to_owned();
        Some(match kind {
            "extension" => Target::Extension(id),
            "ring_group" => Target::RingGroup(id),
            "ivr_menu" => Target::IvrMenu(id),
            "voicemail_box" => Target::VoicemailBox(id),
            "time_condition" => Target::TimeCondition(id),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingGroupSpec {
    /// `simultaneous`, `sequential`, or `round_robin` (sequential, each call starting
    /// with the member after the one the previous call started with).
    pub strategy: String,
    /// Extension ids, in ringing order for `sequential`.
    pub members: Vec<String>,
    pub ring_seconds: u32,
    pub fallback: Option<Target>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrMenuSpec {
    /// Prompt file name in the tenant's prompt directory.
    pub prompt: String,
    /// Digit (0-9, *, #) to target.
    pub digits: BTreeMap<String, Target>,
    pub timeout_seconds: u32,
    pub timeout_target: Option<Target>,
    pub invalid_target: Option<Target>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoicemailBoxSpec {
    pub extension_id: Option<String>,
    /// Accepted on write only; stored as `pin_sha256` (salted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    #[serde(default)]
    pub pin_sha256: Option<String>,
    pub greeting: Option<String>,
    pub max_messages: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRule {
    /// `mon`..`sun`.
    pub days: Vec<String>,
    /// `HH:MM`, 24-hour.
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeConditionSpec {
    /// IANA zone name, e.g. Europe/Berlin.
    pub timezone: String,
    pub rules: Vec<TimeRule>,
    pub open_target: Target,
    pub closed_target: Target,
}

impl TimeConditionSpec {
    /// The spec's zone from the bundled IANA database (`None`: no such zone).
    pub fn zone(&self) -> Option<jiff::tz::TimeZone> {
        // Only real names: jiff would also read a POSIX TZ string or a fixed offset.
        if self.timezone.is_empty() || !self.timezone.contains('/') && self.timezone != "UTC" {
            return None;
        }
        jiff::tz::db().get(&self.timezone).ok()
    }

    /// Whether the condition is open at `at`: some rule names the weekday and holds the
    /// wall-clock time of the zone then (`start` included, `end` excluded). Daylight
    /// saving moves the hours with the clock on the wall, as an office's hours do.
    pub fn is_open(&self, at: jiff::Timestamp) -> bool {
        let Some(zone) = self.zone() else {
            return false;
        };
        let local = at.to_zoned(zone);
        let day = match local.weekday() {
            jiff::civil::Weekday::Monday => "mon",
            jiff::civil::Weekday::Tuesday => "tue",
            jiff::civil::Weekday::Wednesday => "wed",
            jiff::civil::Weekday::Thursday => "thu",
            jiff::civil::Weekday::Friday => "fri",
            jiff::civil::Weekday::Saturday => "sat",
            jiff::civil::Weekday::Sunday => "sun",
        };
        let now = format!("{:02}:{:02}", local.hour(), local.minute());
        // HH:MM strings order as the times do.
        self.rules.iter().any(|r| {
            r.days.iter().any(|d| d == day) && r.start.as_str() <= now.as_str() && now < r.end
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundRouteSpec {
    /// Dial pattern: digits and `X` (any digit), `N` (2-9), `Z` (1-9), `.` (one or more).
    pub pattern: String,
    pub trunk_id: String,
    pub strip_digits: u8,
    pub prefix: String,
    pub priority: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkSpec {
    pub host: String,
    pub port: Option<u16>,
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    pub username: Option<String>,
    /// Needed to authenticate to the carrier; never returned by the API.
    pub password: Option<String>,
    pub codecs: Vec<String>,
    pub max_channels: u32,
}

/// A stored resource; `spec` is the kind's spec as JSON.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Resource {
    pub id: String,
    pub tenant_id: String,
    pub kind: String,
    pub name: String,
    pub spec: String,
    pub created_at: i64,
}

fn invalid(rule: impl Into<String>) -> StoreError {
    StoreError::invalid("spec", rule)
}

fn hhmm(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 5
        && b[2] == b':'
        && s[..2].parse::<u8>().is_ok_and(|h| h < 24)
        && s[3..].parse::<u8>().is_ok_and(|m| m < 60)
}

/// References a spec makes: (kind, id); kind `extension` for extensions.
fn references(kind: ResourceKind, spec: &serde_json::Value) -> Result<Vec<(&'static str, String)>> {
    fn target(t: &Target, out: &mut Vec<(&'static str, String)>) {
        match t {
            Target::Extension(id) => out.push(("extension", id.clone())),
            Target::RingGroup(id) => out.push(("ring_group", id.clone())),
            Target::IvrMenu(id) => out.push(("ivr_menu", id.clone())),
            Target::VoicemailBox(id) => out.push(("voicemail_box", id.clone())),
            Target::TimeCondition(id) => out.push(("time_condition", id.clone())),
            Target::Hangup => {}
        }
    }
    let parse_err = |e: serde_json::Error| invalid(e.to_string());
    let mut out = Vec::new();
    match kind {
        ResourceKind::RingGroup => {
            let s: RingGroupSpec = serde_json::from_value(spec.clone()).map_err(parse_err)?;
            if !matches!(
                s.strategy.as_str(),
                "simultaneous" | "sequential" | "round_robin"
            ) {
                return Err(invalid(
                    "strategy must be simultaneous, sequential or round_robin",
                ));
            }
            if s.members.is_empty() || s.members.len() > 100 {
                return Err(invalid("1 to 100 members"));
            }
            if !(5..=300).contains(&s.ring_seconds) {
                return Err(invalid("ring_seconds must be 5 to 300"));
            }
            out.extend(s.members.iter().map(|m| ("extension", m.clone())));
            if let Some(f) = &s.fallback {
                target(f, &mut out);
            }
        }
        ResourceKind::IvrMenu => {
            let s: IvrMenuSpec = serde_json::from_value(spec.clone()).map_err(parse_err)?;
            if s.prompt.is_empty() || s.prompt.contains('/') || s.prompt.contains("..") {
                return Err(invalid("prompt must be a file name"));
            }
            for (digit, t) in &s.digits {
                if !matches!(
                    digit.as_str(),
                    "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "*" | "#"
                ) {
                    return Err(invalid(format!("digit {digit:?} is not 0-9, * or #")));
                }
                target(t, &mut out);
            }
            if !(1..=60).contains(&s.timeout_seconds) {
                return Err(invalid("timeout_seconds must be 1 to 60"));
            }
            for t in [&s.timeout_target, &s.invalid_target].into_iter().flatten() {
                target(t, &mut out);
            }
        }
        ResourceKind::VoicemailBox => {
            let s: VoicemailBoxSpec = serde_json::from_value(spec.clone()).map_err(parse_err)?;
            if let Some(e) = &s.extension_id {
                out.push(("extension", e.clone()));
            }
            if !(1..=10_000).contains(&s.max_messages) {
                return Err(invalid("max_messages must be 1 to 10000"));
            }
        }
        ResourceKind::TimeCondition => {
            let s: TimeConditionSpec = serde_json::from_value(spec.clone()).map_err(parse_err)?;
            if s.zone().is_none() {
                return Err(invalid(
                    "timezone must be an IANA zone name (such as Europe/Berlin)",
                ));
            }
            for r in &s.rules {
                let days_ok = !r.days.is_empty()
                    && r.days.iter().all(|d| {
                        matches!(
                            d.as_str(),
                            "mon" | "tue" | "wed" | "thu" | "fri" | "sat" | "sun"
                        )
                    });
                if !days_ok || !hhmm(&r.start) || !hhmm(&r.end) || r.start >= r.end {
                    return Err(invalid("rules need days mon..sun and start < end as HH:MM"));
                }
            }
            target(&s.open_target, &mut out);
            target(&s.closed_target, &mut out);
        }
        ResourceKind::OutboundRoute => {
            let s: OutboundRouteSpec = serde_json::from_value(spec.clone()).map_err(parse_err)?;
            let ok = !s.pattern.is_empty()
                && s.pattern.len() <= 32
                && s.pattern
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"XNZ.+*#".contains(&b));
            if !ok {
                return Err(invalid("pattern: digits and X N Z . only"));
            }
            if !s.prefix.bytes().all(|b| b.is_ascii_digit() || b == b'+') {
                return Err(invalid("prefix: digits and + only"));
            }
            out.push(("trunk", s.trunk_id.clone()));
        }
        ResourceKind::Trunk => {
            let s: TrunkSpec = serde_json::from_value(spec.clone()).map_err(parse_err)?;
            if s.host.is_empty()
                || !s
                    .host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                return Err(invalid("host must be a host name or address"));
            }
            if !matches!(s.transport.as_str(), "udp" | "tcp" | "tls") {
                return Err(invalid("transport must be udp, tcp or tls"));
            }
            if s.codecs.is_empty() || !(1..=10_000).contains(&s.max_channels) {
                return Err(invalid("at least one codec and 1 to 10000 channels"));
            }
        }
    }
    Ok(out)
}

/// Replaces a voicemail PIN by its salted hash before anything is stored.
fn seal(kind: ResourceKind, mut spec: serde_json::Value) -> Result<serde_json::Value> {
    if kind == ResourceKind::VoicemailBox
        && let Some(pin) = spec.get("pin").and_then(|p| p.as_str()).map(str::to_owned)
    {
        if !(4..=12).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("pin must be 4 to 12 digits"));
        }
        let salt = new_id();
        let hash: String = Sha256::digest(format!("{salt}:{pin}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        spec["pin"] = serde_json::Value::Null;
        spec.as_object_mut().map(|o| o.remove("pin"));
        spec["pin_sha256"] = serde_json::Value::String(format!("{salt}${hash}"));
    }
    Ok(spec)
}

impl Store {
    /// Creates a resource after validating its spec and every reference it makes.
    pub async fn create_resource(
        &self,
        tenant_id: &str,
        kind: ResourceKind,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<Resource> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(StoreError::invalid("name", "must be 1 to 100 characters"));
        }
        let refs = references(kind, &spec)?;
        let spec = seal(kind, spec)?;
        let now = self.now();
        let res = Resource {
            id: new_id(),
            tenant_id: tenant_id.to_owned(),
            kind: kind.as_str().to_owned(),
            name: name.to_owned(),
            spec: spec.to_string(),
            created_at: now,
        };
        let r = &res;
        in_tx!(self, |tx, _pg| {
            bump_version!(tx, tenant_id, "resource.created", now);
            for (ref_kind, id) in &refs {
                ensure_in_tenant!(tx, tenant_id, *ref_kind, id, "spec");
            }
            sqlx::query("INSERT INTO tenant_resources (id, tenant_id, kind, name, spec, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&r.id)
                .bind(&r.tenant_id)
                .bind(&r.kind)
                .bind(&r.name)
                .bind(&r.spec)
                .bind(r.created_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| match StoreError::from_write(e) {
                    StoreError::Conflict { .. } => StoreError::Conflict { what: format!("a {} named {name:?} exists", kind.as_str()) },
                    other => other,
                })?;
        });
        Ok(res)
    }

    /// Replaces a resource's name and spec, validated as on creation.
    pub async fn update_resource(
        &self,
        tenant_id: &str,
        id: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<Resource> {
        self.update_resource_if(tenant_id, id, name, spec, None)
            .await
    }

    /// As [`Store::update_resource`], only if the tenant is still at `expected_version`.
    pub async fn update_resource_if(
        &self,
        tenant_id: &str,
        id: &str,
        name: &str,
        spec: serde_json::Value,
        expected_version: Option<i64>,
    ) -> Result<Resource> {
        let current = self.resource(tenant_id, id).await?;
        let kind =
            ResourceKind::parse(&current.kind).ok_or(StoreError::NotFound { what: "resource" })?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(StoreError::invalid("name", "must be 1 to 100 characters"));
        }
        let refs = references(kind, &spec)?;
        let spec = seal(kind, spec)?;
        let now = self.now();
        let text = spec.to_string();
        Ok(in_tx!(self, |tx, _pg| {
            let version = bump_version!(tx, tenant_id, "resource.updated", now);
            crate::check_version(version, expected_version)?;
            for (ref_kind, rid) in &refs {
                ensure_in_tenant!(tx, tenant_id, *ref_kind, rid, "spec");
            }
            let updated: Option<Resource> = sqlx::query_as(
                "UPDATE tenant_resources SET name = $1, spec = $2 WHERE id = $3 AND tenant_id = $4 RETURNING *",
            )
            .bind(name)
            .bind(&text)
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| match StoreError::from_write(e) {
                StoreError::Conflict { .. } => StoreError::Conflict { what: format!("a {} named {name:?} exists", kind.as_str()) },
                other => other,
            })?;
            updated.ok_or(StoreError::NotFound { what: "resource" })?
        }))
    }

    /// A page of the tenant's resources of one kind by name, after the name `after`.
    pub async fn resources_page(
        &self,
        tenant_id: &str,
        kind: ResourceKind,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Resource>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM tenant_resources WHERE tenant_id = $1 AND kind = $2 \
                 AND ($3 IS NULL OR name > $3) ORDER BY name LIMIT $4",
            )
            .bind(tenant_id)
            .bind(kind.as_str())
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn resources(&self, tenant_id: &str, kind: ResourceKind) -> Result<Vec<Resource>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM tenant_resources WHERE tenant_id = $1 AND kind = $2 ORDER BY name",
            )
            .bind(tenant_id)
            .bind(kind.as_str())
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn resource(&self, tenant_id: &str, id: &str) -> Result<Resource> {
        let r: Option<Resource> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM tenant_resources WHERE tenant_id = $1 AND id = $2")
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        r.ok_or(StoreError::NotFound { what: "resource" })
    }

    /// Deletes a resource unless another resource still refers to it.
    /// `expected_version`: apply only if the tenant is still at it (If-Match).
    pub async fn delete_resource(
        &self,
        tenant_id: &str,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let now = self.now();
        in_tx!(self, |tx, _pg| {
            let version = bump_version!(tx, tenant_id, "resource.deleted", now);
            crate::check_version(version, expected_version)?;
            let users: Vec<(String, String)> = sqlx::query_as(
                "SELECT kind, name FROM tenant_resources WHERE tenant_id = $1 AND id <> $2 AND spec LIKE $3",
            )
            .bind(tenant_id)
            .bind(id)
            .bind(format!("%\"{id}\"%"))
            .fetch_all(&mut *tx)
            .await?;
            if let Some((kind, name)) = users.first() {
                return Err(StoreError::Conflict {
                    what: format!("still used by {kind} {name:?}"),
                });
            }
            let done = sqlx::query("DELETE FROM tenant_resources WHERE tenant_id = $1 AND id = $2")
                .bind(tenant_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "resource" });
            }
        });
        Ok(())
    }
}

/// A media pool: shared, or dedicated to one tenant.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct MediaPool {
    pub name: String,
    pub dedicated_tenant_id: Option<String>,
    pub max_sessions: i64,
    pub cpu_percent: i64,
    pub memory_mb: i64,
    pub created_at: i64,
}

/// A call detail record.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct Cdr {
    pub id: String,
    pub tenant_id: String,
    pub call_id: String,
    pub from_uri: String,
    pub to_uri: String,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: i64,
    pub duration_ms: i64,
    pub disposition: String,
    pub hangup_side: Option<String>,
    /// Per-leg counters as JSON.
    pub legs: String,
}

impl Store {
    /// Creates a media pool (operator).
    pub async fn create_media_pool(&self, pool: &MediaPool) -> Result<MediaPool> {
        let ok_name = !pool.name.is_empty()
            && pool.name.len() <= 64
            && pool
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok_name {
            return Err(StoreError::invalid("name", "1 to 64 of A-Z a-z 0-9 - _"));
        }
        if !(1..=100_000).contains(&pool.max_sessions)
            || !(1..=100_000).contains(&pool.cpu_percent)
            || !(64..=1_048_576).contains(&pool.memory_mb)
        {
            return Err(StoreError::invalid(
                "limits",
                "max_sessions 1-100000, cpu_percent 1-100000, memory_mb 64-1048576",
            ));
        }
        if let Some(t) = &pool.dedicated_tenant_id {
            self.tenant(t).await?;
        }
        let mut p = pool.clone();
        p.created_at = self.now();
        let r = &p;
        in_tx!(self, |tx, _pg| {
            sqlx::query("INSERT INTO media_pools (name, dedicated_tenant_id, max_sessions, cpu_percent, memory_mb, created_at) VALUES ($1,$2,$3,$4,$5,$6)")
                .bind(&r.name)
                .bind(&r.dedicated_tenant_id)
                .bind(r.max_sessions)
                .bind(r.cpu_percent)
                .bind(r.memory_mb)
                .bind(r.created_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| match StoreError::from_write(e) {
                    StoreError::Conflict { .. } => StoreError::Conflict { what: format!("media pool {} exists", r.name) },
                    other => other,
                })?;
        });
        Ok(p)
    }

    pub async fn media_pools(&self) -> Result<Vec<MediaPool>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM media_pools ORDER BY name")
                .fetch_all(pool)
                .await?
        }))
    }

    /// Records a finished call (the core calls this).
    pub async fn insert_cdr(&self, cdr: &Cdr) -> Result<()> {
        self.insert_cdrs(std::slice::from_ref(cdr)).await
    }

    /// Writes `cdrs` in one transaction (all or none); an id already written is skipped,
    /// so a batch retried after a commit whose answer was lost writes nothing twice.
    pub async fn insert_cdrs(&self, cdrs: &[Cdr]) -> Result<()> {
        in_tx!(self, |tx, _pg| {
            // One statement per chunk: a round trip per record to SQLite's worker thread
            // cost more than the insert itself under a call load.
            for chunk in cdrs.chunks(CDRS_PER_STATEMENT) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO cdrs (id, tenant_id, call_id, from_uri, to_uri, started_at, answered_at, \
                     ended_at, duration_ms, disposition, hangup_side, legs) ",
                );
                insert.push_values(chunk, |mut row, cdr| {
                    row.push_bind(&cdr.id)
                        .push_bind(&cdr.tenant_id)
                        .push_bind(&cdr.call_id)
                        .push_bind(&cdr.from_uri)
                        .push_bind(&cdr.to_uri)
                        .push_bind(cdr.started_at)
                        .push_bind(cdr.answered_at)
                        .push_bind(cdr.ended_at)
                        .push_bind(cdr.duration_ms)
                        .push_bind(&cdr.disposition)
                        .push_bind(&cdr.hangup_side)
                        .push_bind(&cdr.legs);
                });
                insert.push(" ON CONFLICT (id) DO NOTHING");
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_write)?;
            }
        });
        Ok(())
    }

    /// A tenant's CDRs, newest first, started before `before` (epoch ms), at most `limit`.
    pub async fn cdrs(&self, tenant_id: &str, before: Option<i64>, limit: i64) -> Result<Vec<Cdr>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM cdrs WHERE tenant_id = $1 AND started_at < $2 ORDER BY started_at DESC LIMIT $3")
                .bind(tenant_id)
                .bind(before.unwrap_or(i64::MAX))
                .bind(limit.clamp(1, 1000))
                .fetch_all(pool)
                .await?
        }))
    }
}

#[cfg(test)]
mod time_condition_tests {
    use super::*;

    fn office(zone: &str) -> TimeConditionSpec {
        TimeConditionSpec {
            timezone: zone.into(),
            rules: vec![
                TimeRule {
                    days: ["mon", "tue", "wed", "thu", "fri"]
                        .map(String::from)
                        .to_vec(),
                    start: "09:00".into(),
                    end: "17:00".into(),
                },
                TimeRule {
                    days: vec!["sat".into()],
                    start: "10:00".into(),
                    end: "12:30".into(),
                },
            ],
            open_target: Target::Extension("reception".into()),
            closed_target: Target::VoicemailBox("night".into()),
        }
    }

    fn at(utc: &str) -> jiff::Timestamp {
        utc.parse().unwrap()
    }

    #[test]
    fn office_hours_follow_the_tenants_zone() {
        let berlin = office("Europe/Berlin");
        // Thursday 3 December 2026; Berlin is UTC+1 in winter.
        assert!(!berlin.is_open(at("2026-12-03T07:59:00Z")), "08:59 local");
        assert!(
            berlin.is_open(at("2026-12-03T08:00:00Z")),
            "09:00 local: start included"
        );
        assert!(berlin.is_open(at("2026-12-03T15:59:00Z")), "16:59 local");
        assert!(
            !berlin.is_open(at("2026-12-03T16:00:00Z")),
            "17:00 local: end excluded"
        );
        // The same instant is still night in New York (UTC-5).
        let new_york = office("America/New_York");
        assert!(!new_york.is_open(at("2026-12-03T08:00:00Z")), "03:00 local");
        assert!(new_york.is_open(at("2026-12-03T14:00:00Z")), "09:00 local");
        // Saturday morning rule; Sunday closed all day.
        assert!(berlin.is_open(at("2026-12-05T09:30:00Z")), "Saturday 10:30");
        assert!(
            !berlin.is_open(at("2026-12-05T11:30:00Z")),
            "Saturday 12:30"
        );
        assert!(!berlin.is_open(at("2026-12-06T10:00:00Z")), "Sunday");
        // The weekday is the zone's: Friday 23:30 in New York is Saturday 04:30 UTC.
        let late = TimeConditionSpec {
            rules: vec![TimeRule {
                days: vec!["fri".into()],
                start: "23:00".into(),
                end: "23:59".into(),
            }],
            ..office("America/New_York")
        };
        assert!(late.is_open(at("2026-12-05T04:30:00Z")));
    }

    #[test]
    fn daylight_saving_moves_the_hours_with_the_wall_clock() {
        let berlin = office("Europe/Berlin");
        // Monday 30 March 2026, the day after clocks went forward: UTC+2.
        assert!(berlin.is_open(at("2026-03-30T07:00:00Z")), "09:00 CEST");
        assert!(!berlin.is_open(at("2026-03-30T06:30:00Z")), "08:30 CEST");
        // Friday 27 March, still winter time: 07:00 UTC is 08:00.
        assert!(!berlin.is_open(at("2026-03-27T07:00:00Z")));
    }

    #[test]
    fn only_real_zone_names_are_zones() {
        for good in [
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "UTC",
            "Asia/Kolkata",
        ] {
            assert!(office(good).zone().is_some(), "{good}");
        }
        for bad in [
            "",
            "Mars/Olympus",
            "Europe/Berlinn",
            "CET-1CEST,M3.5.0,M10.5.0/3",
            "+01:00",
            "../etc/passwd",
        ] {
            assert!(office(bad).zone().is_none(), "{bad}");
            assert!(!office(bad).is_open(at("2026-12-03T10:00:00Z")), "{bad}");
        }
    }
}

#[cfg(test)]
mod target_tests {
    use super::Target;

    #[test]
    fn a_stored_target_reads_back_as_written() {
        for t in [
            Target::Extension("e1".into()),
            Target::RingGroup("rg".into()),
            Target::IvrMenu("ivr".into()),
            Target::VoicemailBox("vm".into()),
            Target::TimeCondition("tc".into()),
            Target::Hangup,
        ] {
            assert_eq!(Target::decode(&t.encode()), Some(t.clone()), "{t:?}");
        }
        assert_eq!(
            Target::encode(&Target::RingGroup("rg".into())),
            "ring_group:rg"
        );
        for junk in ["", "trunk:t1", "extension", "hangup:x"] {
            assert_eq!(Target::decode(junk), None, "{junk}");
        }
    }
}
