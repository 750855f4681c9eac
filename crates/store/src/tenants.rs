//! Tenants, the per-tenant version and outbox, and config snapshots.

use crate::{
    NewTenant, OutboxEvent, Result, Store, StoreError, Tenant, TenantChanges, TenantConfig, in_tx,
    new_id, on_pool,
};

fn check_domain(domain: &str) -> Result<String> {
    // No trimming: the API's schema states the exact form, and white space is a defect.
    let d = domain.to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(d)
    } else {
        Err(StoreError::invalid(
            "domain",
            "must be a DNS name such as acme.example.com",
        ))
    }
}

fn check_limit(field: &'static str, value: Option<i64>, default: i64, max: i64) -> Result<i64> {
    let v = value.unwrap_or(default);
    if (0..=max).contains(&v) {
        Ok(v)
    } else {
        Err(StoreError::invalid(
            field,
            format!("must be between 0 and {max}"),
        ))
    }
}

/// Bumps the tenant's version (taking its row lock on PostgreSQL, which serialises every
/// writer of one tenant) and writes the outbox row for the change.
macro_rules! bump_version {
    ($tx:ident, $tenant_id:expr, $kind:expr, $now:expr) => {{
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE tenants SET config_version = config_version + 1 WHERE id = $1 RETURNING config_version",
        )
        .bind($tenant_id)
        .fetch_optional(&mut *$tx)
        .await?;
        let version = version.ok_or(StoreError::NotFound { what: "tenant" })?;
        sqlx::query("INSERT INTO outbox (tenant_id, config_version, kind, created_at) VALUES ($1, $2, $3, $4)")
            .bind($tenant_id)
            .bind(version)
            .bind($kind)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
        version
    }};
}
pub(crate) use bump_version;

/// Fails with `422` on `caller_id` unless `$number` is assigned to the tenant (inside the
/// write's transaction, so a number released meanwhile is not taken).
macro_rules! check_caller_id {
    ($tx:ident, $tenant_id:expr, $number:expr) => {{
        let held: Option<String> = sqlx::query_scalar(
            "SELECT number FROM dids WHERE number = $1 AND tenant_id = $2 AND state = 'assigned'",
        )
        .bind($number)
        .bind($tenant_id)
        .fetch_optional(&mut *$tx)
        .await?;
        if held.is_none() {
            return Err(StoreError::invalid(
                "caller_id",
                "must be one of the tenant's numbers",
            ));
        }
    }};
}
pub(crate) use check_caller_id;

impl Store {
    pub async fn create_tenant(&self, new: &NewTenant) -> Result<Tenant> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(StoreError::invalid("name", "must be 1 to 200 characters"));
        }
        let tenant = Tenant {
            id: new_id(),
            name: name.to_owned(),
            domain: check_domain(&new.domain)?,
            state: "active".into(),
            placement: "shared".into(),
            max_calls: check_limit("max_calls", new.max_calls, 20, 100_000)?,
            calls_per_second: check_limit("calls_per_second", new.calls_per_second, 5, 10_000)?,
            max_registrations: check_limit(
                "max_registrations",
                new.max_registrations,
                100,
                1_000_000,
            )?,
            max_extensions: check_limit("max_extensions", new.max_extensions, 100, 1_000_000)?,
            reg_expiry_min: 60,
            reg_expiry_max: 3600,
            reg_expiry_default: 600,
            config_version: 1,
            created_at: self.now(),
            caller_id: None,
        };
        let t = &tenant;
        in_tx!(self, |tx, _pg| {
            sqlx::query(
                "INSERT INTO tenants (id, name, domain, state, placement, max_calls, calls_per_second, \
                 max_registrations, max_extensions, reg_expiry_min, reg_expiry_max, reg_expiry_default, \
                 config_version, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
            )
            .bind(&t.id)
            .bind(&t.name)
            .bind(&t.domain)
            .bind(&t.state)
            .bind(&t.placement)
            .bind(t.max_calls)
            .bind(t.calls_per_second)
            .bind(t.max_registrations)
            .bind(t.max_extensions)
            .bind(t.reg_expiry_min)
            .bind(t.reg_expiry_max)
            .bind(t.reg_expiry_default)
            .bind(t.config_version)
            .bind(t.created_at)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_write)?;
            sqlx::query("INSERT INTO outbox (tenant_id, config_version, kind, created_at) VALUES ($1, 1, 'tenant.created', $2)")
                .bind(&t.id)
                .bind(t.created_at)
                .execute(&mut *tx)
                .await?;
        });
        Ok(tenant)
    }

    pub async fn tenant(&self, id: &str) -> Result<Tenant> {
        let t: Option<Tenant> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM tenants WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        t.ok_or(StoreError::NotFound { what: "tenant" })
    }

    /// The tenant whose SIP domain this is (case-insensitive).
    pub async fn tenant_by_domain(&self, domain: &str) -> Result<Tenant> {
        let d = domain.to_ascii_lowercase();
        let t: Option<Tenant> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM tenants WHERE domain = $1")
                .bind(&d)
                .fetch_optional(pool)
                .await?
        });
        t.ok_or(StoreError::NotFound { what: "tenant" })
    }

    /// Tenants ordered by id, after the cursor `after`, at most `limit`.
    pub async fn list_tenants(&self, after: Option<&str>, limit: i64) -> Result<Vec<Tenant>> {
        let after = after.unwrap_or("");
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM tenants WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit.clamp(1, 1000))
                .fetch_all(pool)
                .await?
        }))
    }

    /// Applies `changes` if the tenant is still at `expected_version` (when given): the
    /// check and the write are one transaction under the tenant's lock.
    pub async fn update_tenant(
        &self,
        id: &str,
        changes: &TenantChanges,
        expected_version: Option<i64>,
    ) -> Result<Tenant> {
        if let Some(name) = &changes.name
            && (name.trim().is_empty() || name.chars().count() > 200)
        {
            return Err(StoreError::invalid("name", "must be 1 to 200 characters"));
        }
        if let Some(state) = &changes.state
            && !matches!(state.as_str(), "active" | "suspended")
        {
            return Err(StoreError::invalid("state", "must be active or suspended"));
        }
        let max_calls = changes
            .max_calls
            .map(|v| check_limit("max_calls", Some(v), 0, 100_000))
            .transpose()?;
        let cps = changes
            .calls_per_second
            .map(|v| check_limit("calls_per_second", Some(v), 0, 10_000))
            .transpose()?;
        let max_regs = changes
            .max_registrations
            .map(|v| check_limit("max_registrations", Some(v), 0, 1_000_000))
            .transpose()?;
        let max_exts = changes
            .max_extensions
            .map(|v| check_limit("max_extensions", Some(v), 0, 1_000_000))
            .transpose()?;
        for (field, v) in [
            ("reg_expiry_min", changes.reg_expiry_min),
            ("reg_expiry_max", changes.reg_expiry_max),
            ("reg_expiry_default", changes.reg_expiry_default),
        ] {
            if v.is_some_and(|s| !(30..=86_400).contains(&s)) {
                return Err(StoreError::invalid(field, "must be 30 to 86400 seconds"));
            }
        }
        let now = self.now();
        Ok(in_tx!(self, |tx, _pg| {
            let version = bump_version!(tx, id, "tenant.updated", now);
            if let Some(p) = changes.placement.as_deref()
                && p != "shared"
            {
                let pool: Option<Option<String>> = sqlx::query_scalar(
                    "SELECT dedicated_tenant_id FROM media_pools WHERE name = $1",
                )
                .bind(p)
                .fetch_optional(&mut *tx)
                .await?;
                match pool {
                    None => {
                        return Err(StoreError::invalid(
                            "placement",
                            format!("no media pool named {p}"),
                        ));
                    }
                    Some(Some(owner)) if owner != id => {
                        return Err(StoreError::invalid(
                            "placement",
                            format!("media pool {p} is dedicated to another tenant"),
                        ));
                    }
                    Some(_) => {}
                }
            }
            crate::check_version(version, expected_version)?;
            if let Some(number) = changes.caller_id.as_deref().filter(|n| !n.is_empty()) {
                check_caller_id!(tx, id, number);
                sqlx::query("UPDATE tenants SET caller_id = $1 WHERE id = $2")
                    .bind(number)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            } else if changes.caller_id.as_deref() == Some("") {
                sqlx::query("UPDATE tenants SET caller_id = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "UPDATE tenants SET name = COALESCE($1, name), state = COALESCE($2, state), max_calls = COALESCE($3, max_calls), calls_per_second = COALESCE($4, calls_per_second), max_registrations = COALESCE($5, max_registrations), max_extensions = COALESCE($6, max_extensions), placement = COALESCE($7, placement), reg_expiry_min = COALESCE($8, reg_expiry_min), reg_expiry_max = COALESCE($9, reg_expiry_max), reg_expiry_default = COALESCE($10, reg_expiry_default) WHERE id = $11",
            )
            .bind(changes.name.as_deref().map(str::trim))
            .bind(changes.state.as_deref())
            .bind(max_calls)
            .bind(cps)
            .bind(max_regs)
            .bind(max_exts)
            .bind(changes.placement.as_deref())
            .bind(changes.reg_expiry_min)
            .bind(changes.reg_expiry_max)
            .bind(changes.reg_expiry_default)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let t: Tenant = sqlx::query_as("SELECT * FROM tenants WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            if !(t.reg_expiry_min <= t.reg_expiry_default
                && t.reg_expiry_default <= t.reg_expiry_max)
            {
                return Err(StoreError::invalid(
                    "reg_expiry_default",
                    "must lie between reg_expiry_min and reg_expiry_max",
                ));
            }
            t
        }))
    }

    /// Suspends or reactivates a tenant.
    pub async fn set_tenant_state(&self, id: &str, state: &str) -> Result<i64> {
        if !matches!(state, "active" | "suspended") {
            return Err(StoreError::invalid("state", "must be active or suspended"));
        }
        let now = self.now();
        Ok(in_tx!(self, |tx, _pg| {
            let version = bump_version!(tx, id, "tenant.updated", now);
            sqlx::query("UPDATE tenants SET state = $1 WHERE id = $2")
                .bind(state)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            version
        }))
    }

    /// Deletes a tenant and everything it owns; its DIDs go to quarantine.
    /// `expected_version`: apply only if the tenant is still at it (If-Match).
    pub async fn delete_tenant(
        &self,
        id: &str,
        quarantine_until: i64,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let now = self.now();
        in_tx!(self, |tx, _pg| {
            let version = bump_version!(tx, id, "tenant.deleted", now);
            crate::check_version(version, expected_version)?;
            sqlx::query(
                "UPDATE dids SET state = 'quarantined', tenant_id = NULL, target = NULL, \
                 quarantined_until = $1, updated_at = $2 WHERE tenant_id = $3",
            )
            .bind(quarantine_until)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM tenants WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }

    /// The tenant's change events in order.
    pub async fn outbox_events(&self, tenant_id: &str) -> Result<Vec<OutboxEvent>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM outbox WHERE tenant_id = $1 ORDER BY config_version")
                .bind(tenant_id)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Everything a call needs about a tenant, at one version, in one read transaction.
    pub async fn tenant_config(&self, tenant_id: &str) -> Result<TenantConfig> {
        macro_rules! read {
            ($tx:ident) => {{
                let tenant: Tenant = sqlx::query_as("SELECT * FROM tenants WHERE id = $1")
                    .bind(tenant_id)
                    .fetch_optional(&mut *$tx)
                    .await?
                    .ok_or(StoreError::NotFound { what: "tenant" })?;
                let ranges = sqlx::query_as(
                    "SELECT * FROM extension_ranges WHERE tenant_id = $1 ORDER BY first_number",
                )
                .bind(tenant_id)
                .fetch_all(&mut *$tx)
                .await?;
                let extensions =
                    sqlx::query_as("SELECT * FROM extensions WHERE tenant_id = $1 ORDER BY number")
                        .bind(tenant_id)
                        .fetch_all(&mut *$tx)
                        .await?;
                let dids =
                    sqlx::query_as("SELECT * FROM dids WHERE tenant_id = $1 ORDER BY number")
                        .bind(tenant_id)
                        .fetch_all(&mut *$tx)
                        .await?;
                let resources = sqlx::query_as(
                    "SELECT * FROM tenant_resources WHERE tenant_id = $1 ORDER BY kind, name",
                )
                .bind(tenant_id)
                .fetch_all(&mut *$tx)
                .await?;
                TenantConfig {
                    version: tenant.config_version,
                    tenant,
                    ranges,
                    extensions,
                    dids,
                    resources,
                }
            }};
        }
        // A read transaction: one consistent version (REPEATABLE READ on PostgreSQL; a
        // SQLite transaction reads one snapshot).
        let config = match &self.backend {
            crate::Backend::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let c = read!(tx);
                tx.commit().await?;
                c
            }
            crate::Backend::Postgres(pool) => {
                let mut tx = pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                let c = read!(tx);
                tx.commit().await?;
                c
            }
        };
        Ok(config)
    }
}
