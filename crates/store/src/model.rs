//! The typed records the store reads and writes.

use switchyard_types::TenantId;

/// A hosted business.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// SIP domain; also the digest realm of its extensions.
    pub domain: String,
    pub state: String,
    pub placement: String,
    pub max_calls: i64,
    pub calls_per_second: i64,
    pub max_registrations: i64,
    pub max_extensions: i64,
    pub reg_expiry_min: i64,
    pub reg_expiry_max: i64,
    pub reg_expiry_default: i64,
    pub config_version: i64,
    pub created_at: i64,
    /// The number presented on calls out when the extension names none.
    pub caller_id: Option<String>,
}

impl Tenant {
    pub fn tenant_id(&self) -> TenantId {
        TenantId::new(self.id.clone())
    }
}

/// What a new tenant needs; limits default when absent.
#[derive(Debug, Clone, Default)]
pub struct NewTenant {
    pub name: String,
    pub domain: String,
    pub max_calls: Option<i64>,
    pub calls_per_second: Option<i64>,
    pub max_registrations: Option<i64>,
    pub max_extensions: Option<i64>,
}

/// Changes to a tenant; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct TenantChanges {
    pub name: Option<String>,
    pub state: Option<String>,
    pub max_calls: Option<i64>,
    pub calls_per_second: Option<i64>,
    pub max_registrations: Option<i64>,
    pub max_extensions: Option<i64>,
    /// `shared` or the name of a media pool.
    pub placement: Option<String>,
    /// Registration expiry policy (seconds): min <= default <= max.
    pub reg_expiry_min: Option<i64>,
    pub reg_expiry_max: Option<i64>,
    pub reg_expiry_default: Option<i64>,
    /// One of the tenant's numbers; `""` clears it.
    pub caller_id: Option<String>,
}

/// A block of extension numbers a tenant may use.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ExtensionRange {
    pub id: String,
    pub tenant_id: String,
    pub first_number: i64,
    pub last_number: i64,
}

/// A phone account. Only the HA1 digests of its password are kept.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Extension {
    pub id: String,
    pub tenant_id: String,
    pub range_id: String,
    pub number: i64,
    pub display_name: String,
    pub username: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
    pub voicemail: bool,
    pub max_registrations: i64,
    pub created_at: i64,
    /// Forward every call here (an extension number of the tenant or an E.164 number).
    pub forward_always: Option<String>,
    pub forward_busy: Option<String>,
    pub forward_no_answer: Option<String>,
    pub no_answer_seconds: i64,
    /// The number this extension presents on calls out (one of the tenant's).
    pub caller_id: Option<String>,
}

/// Changes to an extension; absent fields stay. `Some("")` clears a forward.
#[derive(Debug, Clone, Default)]
pub struct ExtensionChanges {
    pub display_name: Option<String>,
    pub voicemail: Option<bool>,
    pub max_registrations: Option<i64>,
    pub forward_always: Option<String>,
    pub forward_busy: Option<String>,
    pub forward_no_answer: Option<String>,
    pub no_answer_seconds: Option<i64>,
    /// One of the tenant's numbers; `""` clears it.
    pub caller_id: Option<String>,
    /// Apply only if the tenant is still at this config version (If-Match).
    pub expected_version: Option<i64>,
}

/// A new extension: a fixed number, or the next free one of the range.
#[derive(Debug, Clone, Default)]
pub struct NewExtension {
    pub range_id: String,
    pub number: Option<i64>,
    pub display_name: String,
    /// Defaults to the number.
    pub username: Option<String>,
    pub password: String,
    pub voicemail: bool,
}

/// A number of the shared pool.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Did {
    pub number: String,
    pub state: String,
    pub tenant_id: Option<String>,
    pub target: Option<String>,
    pub quarantined_until: Option<i64>,
    pub updated_at: i64,
}

/// One change event from the outbox.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxEvent {
    pub tenant_id: String,
    pub config_version: i64,
    pub kind: String,
    pub created_at: i64,
    pub published: bool,
}

/// Everything a call needs to know about a tenant, read in one transaction, at one
/// version. The call engine caches it and drops it when an event with a newer version
/// arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    pub version: i64,
    pub tenant: Tenant,
    pub ranges: Vec<ExtensionRange>,
    pub extensions: Vec<Extension>,
    pub dids: Vec<Did>,
    /// Ring groups, IVR menus, voicemail boxes, time conditions, routes, trunks.
    pub resources: Vec<crate::Resource>,
}
