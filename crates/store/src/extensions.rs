//! Extension ranges and extensions. Allocation of "the next free number of range R" is
//! safe under any concurrency: the tenant's row is locked (PostgreSQL) or the write
//! transaction is exclusive (SQLite) while the gap is found, and a unique constraint on
//! (tenant, number) backs it.

use switchyard_sip::digest::{Algorithm, ha1};

use crate::tenants::bump_version;
use crate::{
    Extension, ExtensionChanges, ExtensionRange, NewExtension, Result, Store, StoreError, Tenant,
    in_tx, new_id, on_pool,
};

const MAX_NUMBER: i64 = 99_999_999;

/// An extension number: 1 to 99,999,999.
pub fn check_number(field: &'static str, n: i64) -> Result<()> {
    if (1..=MAX_NUMBER).contains(&n) {
        Ok(())
    } else {
        Err(StoreError::invalid(
            field,
            format!("numbers must be between 1 and {MAX_NUMBER}"),
        ))
    }
}

/// Numbers that always reach an emergency route when dialled, ahead of extensions: 112
/// (EU and GSM), 911 (North America), 999 (UK), 000 (Australia), 110 (police in DE, CN,
/// JP). No extension may have one as its number or username, and allocation skips them.
pub const EMERGENCY_NUMBERS: &[&str] = &["112", "911", "999", "000", "110"];

/// Whether `dialled` is one of [`EMERGENCY_NUMBERS`].
pub fn is_emergency_number(dialled: &str) -> bool {
    EMERGENCY_NUMBERS.contains(&dialled)
}

/// A range of extension numbers: both ends valid numbers, the first not above the last.
pub fn check_range(first: i64, last: i64) -> Result<()> {
    check_number("first_number", first)?;
    check_number("first_number", last)?;
    if first > last {
        return Err(StoreError::invalid(
            "last_number",
            "must not be below first_number",
        ));
    }
    Ok(())
}

/// An extension's password (kept only as HA1 digests): 8 to 128 bytes.
pub fn check_password(password: &str) -> Result<()> {
    if (8..=128).contains(&password.len()) {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "password",
            "must be 8 to 128 characters",
        ))
    }
}

fn check_username(u: &str) -> Result<()> {
    let ok = (1..=64).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "username",
            "1 to 64 of A-Z a-z 0-9 . _ - +",
        ))
    }
}

/// The smallest number of `first..=last` not in `used` (sorted ascending).
fn first_gap(first: i64, last: i64, used: &[i64]) -> Option<i64> {
    let mut candidate = first;
    for &n in used {
        if n < candidate {
            continue;
        }
        if n > candidate {
            break;
        }
        candidate += 1;
    }
    (candidate <= last).then_some(candidate)
}

impl Store {
    /// Adds a range of extension numbers; ranges of one tenant never overlap.
    pub async fn add_extension_range(
        &self,
        tenant_id: &str,
        first: i64,
        last: i64,
    ) -> Result<ExtensionRange> {
        check_range(first, last)?;
        let range = ExtensionRange {
            id: new_id(),
            tenant_id: tenant_id.to_owned(),
            first_number: first,
            last_number: last,
        };
        let now = self.now();
        let r = &range;
        in_tx!(self, |tx, _pg| {
            bump_version!(tx, tenant_id, "extension_range.created", now);
            let overlapping: Option<String> = sqlx::query_scalar(
                "SELECT id FROM extension_ranges WHERE tenant_id = $1 AND first_number <= $2 AND last_number >= $3 LIMIT 1",
            )
            .bind(tenant_id)
            .bind(last)
            .bind(first)
            .fetch_optional(&mut *tx)
            .await?;
            if overlapping.is_some() {
                return Err(StoreError::Conflict {
                    what: format!("range {first}-{last} overlaps an existing range of this tenant"),
                });
            }
            sqlx::query("INSERT INTO extension_ranges (id, tenant_id, first_number, last_number) VALUES ($1, $2, $3, $4)")
                .bind(&r.id)
                .bind(&r.tenant_id)
                .bind(r.first_number)
                .bind(r.last_number)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_write)?;
        });
        Ok(range)
    }

    /// Deletes an empty range (one that still holds extensions is refused, never emptied).
    /// `expected_version`: apply only if the tenant is still at it (If-Match).
    pub async fn delete_extension_range(
        &self,
        tenant_id: &str,
        range_id: &str,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let now = self.now();
        in_tx!(self, |tx, _pg| {
            let version = bump_version!(tx, tenant_id, "extension_range.deleted", now);
            crate::check_version(version, expected_version)?;
            let used: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM extensions WHERE tenant_id = $1 AND range_id = $2",
            )
            .bind(tenant_id)
            .bind(range_id)
            .fetch_one(&mut *tx)
            .await?;
            if used > 0 {
                return Err(StoreError::Conflict {
                    what: format!("the range still holds {used} extensions"),
                });
            }
            let done = sqlx::query("DELETE FROM extension_ranges WHERE id = $1 AND tenant_id = $2")
                .bind(range_id)
                .bind(tenant_id)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound {
                    what: "extension range",
                });
            }
        });
        Ok(())
    }

    /// A page of the tenant's ranges in order, starting after the one beginning at `after`.
    pub async fn extension_ranges_page(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ExtensionRange>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM extension_ranges WHERE tenant_id = $1 AND ($2 IS NULL OR first_number > $2) \
                 ORDER BY first_number LIMIT $3",
            )
            .bind(tenant_id)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn extension_ranges(&self, tenant_id: &str) -> Result<Vec<ExtensionRange>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM extension_ranges WHERE tenant_id = $1 ORDER BY first_number",
            )
            .bind(tenant_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Creates an extension with the given number, or the next free one of the range.
    /// The password is kept only as HA1 digests for the tenant's realm (its domain).
    pub async fn create_extension(&self, tenant_id: &str, new: &NewExtension) -> Result<Extension> {
        check_password(&new.password)?;
        if new.display_name.chars().count() > 100 {
            return Err(StoreError::invalid(
                "display_name",
                "at most 100 characters",
            ));
        }
        if let Some(u) = &new.username {
            check_username(u)?;
            if is_emergency_number(u) {
                return Err(StoreError::invalid(
                    "username",
                    format!(
                        "{u} is an emergency number: dialling it must reach the emergency route"
                    ),
                ));
            }
        }
        if let Some(n) = new.number
            && is_emergency_number(&n.to_string())
        {
            return Err(StoreError::invalid(
                "number",
                format!("{n} is an emergency number: dialling it must reach the emergency route"),
            ));
        }
        let now = self.now();
        let id = new_id();
        Ok(in_tx!(self, |tx, _pg| {
            bump_version!(tx, tenant_id, "extension.created", now);
            let tenant: Tenant = sqlx::query_as("SELECT * FROM tenants WHERE id = $1")
                .bind(tenant_id)
                .fetch_one(&mut *tx)
                .await?;
            let count: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM extensions WHERE tenant_id = $1")
                    .bind(tenant_id)
                    .fetch_one(&mut *tx)
                    .await?;
            if count >= tenant.max_extensions {
                return Err(StoreError::Conflict {
                    what: format!(
                        "the tenant has its maximum of {} extensions",
                        tenant.max_extensions
                    ),
                });
            }
            let range: ExtensionRange =
                sqlx::query_as("SELECT * FROM extension_ranges WHERE id = $1 AND tenant_id = $2")
                    .bind(&new.range_id)
                    .bind(tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound {
                        what: "extension range",
                    })?;
            let number = match new.number {
                Some(n) if (range.first_number..=range.last_number).contains(&n) => n,
                Some(_) => {
                    return Err(StoreError::invalid(
                        "number",
                        format!(
                            "must lie in the range {}-{}",
                            range.first_number, range.last_number
                        ),
                    ));
                }
                None => {
                    let used: Vec<i64> = sqlx::query_scalar(
                        "SELECT number FROM extensions WHERE tenant_id = $1 AND number BETWEEN $2 AND $3 ORDER BY number",
                    )
                    .bind(tenant_id)
                    .bind(range.first_number)
                    .bind(range.last_number)
                    .fetch_all(&mut *tx)
                    .await?;
                    // Emergency numbers inside the range count as taken.
                    let mut used = used;
                    used.extend(
                        EMERGENCY_NUMBERS
                            .iter()
                            .filter_map(|n| n.parse::<i64>().ok())
                            .filter(|n| (range.first_number..=range.last_number).contains(n)),
                    );
                    used.sort_unstable();
                    first_gap(range.first_number, range.last_number, &used).ok_or_else(|| {
                        StoreError::Exhausted {
                            what: format!(
                                "no free number in range {}-{}",
                                range.first_number, range.last_number
                            ),
                        }
                    })?
                }
            };
            let username = new.username.clone().unwrap_or_else(|| number.to_string());
            let ext = Extension {
                id: id.clone(),
                tenant_id: tenant_id.to_owned(),
                range_id: range.id.clone(),
                number,
                display_name: new.display_name.clone(),
                ha1_md5: ha1(Algorithm::Md5, &username, &tenant.domain, &new.password),
                ha1_sha256: ha1(Algorithm::Sha256, &username, &tenant.domain, &new.password),
                username,
                voicemail: new.voicemail,
                max_registrations: 3,
                created_at: now,
                forward_always: None,
                forward_busy: None,
                forward_no_answer: None,
                no_answer_seconds: 25,
                caller_id: None,
            };
            sqlx::query(
                "INSERT INTO extensions (id, tenant_id, range_id, number, display_name, username, ha1_md5, \
                 ha1_sha256, voicemail, max_registrations, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
            )
            .bind(&ext.id)
            .bind(&ext.tenant_id)
            .bind(&ext.range_id)
            .bind(ext.number)
            .bind(&ext.display_name)
            .bind(&ext.username)
            .bind(&ext.ha1_md5)
            .bind(&ext.ha1_sha256)
            .bind(ext.voicemail)
            .bind(ext.max_registrations)
            .bind(ext.created_at)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_write)?;
            ext
        }))
    }

    /// A page of the tenant's extensions in number order, after number `after`.
    pub async fn extensions_page(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Extension>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM extensions WHERE tenant_id = $1 AND number > $2 ORDER BY number LIMIT $3")
                .bind(tenant_id)
                .bind(after.unwrap_or(i64::MIN))
                .bind(limit.clamp(1, 1000))
                .fetch_all(pool)
                .await?
        }))
    }

    pub async fn extensions(&self, tenant_id: &str) -> Result<Vec<Extension>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM extensions WHERE tenant_id = $1 ORDER BY number")
                .bind(tenant_id)
                .fetch_all(pool)
                .await?
        }))
    }

    /// The extension a SIP username names in a tenant (what the registrar looks up).
    pub async fn extension_by_username(
        &self,
        tenant_id: &str,
        username: &str,
    ) -> Result<Extension> {
        let e: Option<Extension> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM extensions WHERE tenant_id = $1 AND username = $2")
                .bind(tenant_id)
                .bind(username)
                .fetch_optional(pool)
                .await?
        });
        e.ok_or(StoreError::NotFound { what: "extension" })
    }

    /// Changes an extension's settings (display name, voicemail, registrations, forwarding).
    pub async fn update_extension(
        &self,
        tenant_id: &str,
        extension_id: &str,
        c: &ExtensionChanges,
    ) -> Result<Extension> {
        fn forward(field: &'static str, v: &Option<String>) -> Result<Option<Option<String>>> {
            match v.as_deref() {
                None => Ok(None),
                Some("") => Ok(Some(None)),
                Some(n) => {
                    let digits = n.strip_prefix('+').unwrap_or(n);
                    if (2..=15).contains(&digits.len())
                        && digits.bytes().all(|b| b.is_ascii_digit())
                    {
                        Ok(Some(Some(n.to_owned())))
                    } else {
                        Err(StoreError::invalid(
                            field,
                            "an extension number or E.164 number",
                        ))
                    }
                }
            }
        }
        let always = forward("forward_always", &c.forward_always)?;
        let busy = forward("forward_busy", &c.forward_busy)?;
        let no_answer = forward("forward_no_answer", &c.forward_no_answer)?;
        if c.display_name
            .as_ref()
            .is_some_and(|d| d.chars().count() > 100)
        {
            return Err(StoreError::invalid(
                "display_name",
                "at most 100 characters",
            ));
        }
        if c.max_registrations.is_some_and(|m| !(1..=20).contains(&m)) {
            return Err(StoreError::invalid("max_registrations", "must be 1 to 20"));
        }
        if c.no_answer_seconds.is_some_and(|s| !(5..=300).contains(&s)) {
            return Err(StoreError::invalid("no_answer_seconds", "must be 5 to 300"));
        }
        let now = self.now();
        Ok(in_tx!(self, |tx, _pg| {
            let version = bump_version!(tx, tenant_id, "extension.updated", now);
            crate::check_version(version, c.expected_version)?;
            let current: Extension =
                sqlx::query_as("SELECT * FROM extensions WHERE id = $1 AND tenant_id = $2")
                    .bind(extension_id)
                    .bind(tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound { what: "extension" })?;
            let pick = |change: Option<Option<String>>, old: Option<String>| change.unwrap_or(old);
            let caller_id = match c.caller_id.as_deref() {
                None => current.caller_id.clone(),
                Some("") => None,
                Some(number) => {
                    crate::tenants::check_caller_id!(tx, tenant_id, number);
                    Some(number.to_owned())
                }
            };
            let updated = Extension {
                display_name: c
                    .display_name
                    .clone()
                    .unwrap_or(current.display_name.clone()),
                voicemail: c.voicemail.unwrap_or(current.voicemail),
                max_registrations: c.max_registrations.unwrap_or(current.max_registrations),
                forward_always: pick(always, current.forward_always.clone()),
                forward_busy: pick(busy, current.forward_busy.clone()),
                forward_no_answer: pick(no_answer, current.forward_no_answer.clone()),
                no_answer_seconds: c.no_answer_seconds.unwrap_or(current.no_answer_seconds),
                caller_id,
                ..current
            };
            sqlx::query(
                "UPDATE extensions SET display_name = $1, voicemail = $2, max_registrations = $3, forward_always = $4, \
                 forward_busy = $5, forward_no_answer = $6, no_answer_seconds = $7, caller_id = $10 WHERE id = $8 AND tenant_id = $9",
            )
            .bind(&updated.display_name)
            .bind(updated.voicemail)
            .bind(updated.max_registrations)
            .bind(&updated.forward_always)
            .bind(&updated.forward_busy)
            .bind(&updated.forward_no_answer)
            .bind(updated.no_answer_seconds)
            .bind(extension_id)
            .bind(tenant_id)
            .bind(&updated.caller_id)
            .execute(&mut *tx)
            .await?;
            updated
        }))
    }

    /// One extension of the tenant.
    pub async fn extension(&self, tenant_id: &str, extension_id: &str) -> Result<Extension> {
        let e: Option<Extension> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT * FROM extensions WHERE id = $1 AND tenant_id = $2")
                .bind(extension_id)
                .bind(tenant_id)
                .fetch_optional(pool)
                .await?
        });
        e.ok_or(StoreError::NotFound { what: "extension" })
    }

    /// `expected_version`: apply only if the tenant is still at it (If-Match).
    pub async fn delete_extension(
        &self,
        tenant_id: &str,
        extension_id: &str,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let now = self.now();
        in_tx!(self, |tx, _pg| {
            let version = bump_version!(tx, tenant_id, "extension.deleted", now);
            crate::check_version(version, expected_version)?;
            let users: Vec<(String, String)> = sqlx::query_as(
                "SELECT kind, name FROM tenant_resources WHERE tenant_id = $1 AND spec LIKE $2",
            )
            .bind(tenant_id)
            .bind(format!("%\"{extension_id}\"%"))
            .fetch_all(&mut *tx)
            .await?;
            if let Some((kind, name)) = users.first() {
                return Err(StoreError::Conflict {
                    what: format!("extension still used by {kind} {name:?}"),
                });
            }
            let done = sqlx::query("DELETE FROM extensions WHERE id = $1 AND tenant_id = $2")
                .bind(extension_id)
                .bind(tenant_id)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "extension" });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::first_gap;

    #[test]
    fn first_gap_finds_the_smallest_free_number() {
        assert_eq!(first_gap(100, 105, &[]), Some(100));
        assert_eq!(first_gap(100, 105, &[100, 101, 103]), Some(102));
        assert_eq!(first_gap(100, 102, &[100, 101, 102]), None);
        assert_eq!(first_gap(100, 105, &[50, 100]), Some(101));
    }
}
