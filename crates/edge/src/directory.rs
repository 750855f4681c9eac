//! The edge's view of tenants and their credentials: every tenant (by domain) with its
//! extensions (by username and by number), held in memory so a REGISTER or an initial
//! INVITE reads no database.
//!
//! - Warmed at start with every tenant ([`Directory::warm`]).
//! - Kept true by the store's change events: an event newer than the entry reloads that
//!   tenant alone ([`Directory::apply`] says which; the shell reloads it off the hot path).
//! - A domain not in memory is a miss ([`Cached::Miss`]): the shell looks it up
//!   concurrently ([`Directory::load`]) and replays the message, so a miss never holds up
//!   other messages. Unknown domains are remembered for a while ([`ABSENT_FOR`]), within a
//!   bounded table, so a flood of them does not become a flood of database reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use switchyard_store::{ChangeEvent, Extension, Store, StoreError, Tenant};

/// How long an unknown domain is answered from memory before the store is asked again.
pub const ABSENT_FOR: Duration = Duration::from_secs(10);
/// Unknown domains remembered at most (oldest dropped first beyond it).
const ABSENT_MAX: usize = 10_000;

/// One tenant and the credentials of its extensions.
#[derive(Debug)]
pub struct TenantEntry {
    pub tenant: Tenant,
    /// By lower-case username and by number (as text).
    users: RwLock<HashMap<String, Arc<Extension>>>,
    /// Usernames the store did not know when last asked, and when.
    absent_users: Mutex<HashMap<String, Instant>>,
}

/// What memory says about a username of a tenant.
#[derive(Debug, Clone)]
pub enum CachedUser {
    Found(Arc<Extension>),
    /// The store did not know it less than [`ABSENT_FOR`] ago.
    Unknown,
    /// Not in memory: look it up (an extension created a moment ago, before its change
    /// event arrived, is found this way).
    Miss,
}

/// Unknown usernames remembered per tenant at most.
const ABSENT_USERS_MAX: usize = 1_000;

impl TenantEntry {
    pub fn new(tenant: Tenant, extensions: Vec<Extension>) -> TenantEntry {
        let mut users = HashMap::with_capacity(extensions.len() * 2);
        for e in extensions {
            let e = Arc::new(e);
            users.insert(e.number.to_string(), e.clone());
            users.insert(e.username.to_ascii_lowercase(), e);
        }
        TenantEntry {
            tenant,
            users: RwLock::new(users),
            absent_users: Mutex::default(),
        }
    }

    /// The extension whose username (any case) or number is `name`.
    pub fn user(&self, name: &str) -> Option<Arc<Extension>> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        match users.get(name) {
            Some(e) => Some(e.clone()),
            None if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                users.get(&name.to_ascii_lowercase()).cloned()
            }
            None => None,
        }
    }

    /// What memory knows of the extension with username `name`.
    pub fn cached_user(&self, name: &str, now: Instant) -> CachedUser {
        if let Some(e) = self.user(name) {
            return CachedUser::Found(e);
        }
        let absent = self.absent_users.lock().unwrap_or_else(|e| e.into_inner());
        match absent.get(&name.to_ascii_lowercase()) {
            Some(at) if now.duration_since(*at) < ABSENT_FOR => CachedUser::Unknown,
            _ => CachedUser::Miss,
        }
    }

    fn add_user(&self, e: Extension) {
        let e = Arc::new(e);
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        users.insert(e.number.to_string(), e.clone());
        users.insert(e.username.to_ascii_lowercase(), e);
    }

    fn mark_absent(&self, name: &str, now: Instant) {
        let mut absent = self.absent_users.lock().unwrap_or_else(|e| e.into_inner());
        if absent.len() >= ABSENT_USERS_MAX {
            absent.retain(|_, at| now.duration_since(*at) < ABSENT_FOR);
            if absent.len() >= ABSENT_USERS_MAX {
                absent.clear();
            }
        }
        absent.insert(name.to_ascii_lowercase(), now);
    }
}

/// What memory says about a domain.
#[derive(Debug, Clone)]
pub enum Cached {
    Tenant(Arc<TenantEntry>),
    /// No such tenant (asked the store less than [`ABSENT_FOR`] ago).
    Unknown,
    /// Not in memory: look it up.
    Miss,
}

#[derive(Debug, Default)]
struct Inner {
    by_domain: HashMap<String, Arc<TenantEntry>>,
    /// Tenant id to domain.
    domain_of: HashMap<String, String>,
    absent: HashMap<String, Instant>,
}

/// Tenants and credentials in memory, shared by the edge's registrar and proxy.
#[derive(Debug, Clone)]
pub struct Directory {
    store: Store,
    inner: Arc<Mutex<Inner>>,
}

impl Directory {
    pub fn new(store: Store) -> Directory {
        Directory {
            store,
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every tenant and its extensions; returns how many tenants.
    pub async fn warm(&self) -> Result<usize, StoreError> {
        let mut after: Option<String> = None;
        let mut count = 0;
        loop {
            let page = self.store.list_tenants(after.as_deref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for tenant in page {
                let extensions = self.store.extensions(&tenant.id).await?;
                self.insert(TenantEntry::new(tenant, extensions));
                count += 1;
            }
        }
        Ok(count)
    }

    /// What memory knows of `domain` (lower case).
    pub fn cached(&self, domain: &str, now: Instant) -> Cached {
        let inner = self.lock();
        if let Some(e) = inner.by_domain.get(domain) {
            return Cached::Tenant(e.clone());
        }
        match inner.absent.get(domain) {
            Some(since) if now.duration_since(*since) < ABSENT_FOR => Cached::Unknown,
            _ => Cached::Miss,
        }
    }

    /// Reads `domain`'s tenant from the store into memory (the miss path).
    pub async fn load(
        &self,
        domain: &str,
        now: Instant,
    ) -> Result<Option<Arc<TenantEntry>>, StoreError> {
        let tenant = match self.store.tenant_by_domain(domain).await {
            Ok(t) => t,
            Err(StoreError::NotFound { .. }) => {
                let mut inner = self.lock();
                if inner.absent.len() >= ABSENT_MAX {
                    let oldest = inner
                        .absent
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(d, _)| d.clone());
                    if let Some(d) = oldest {
                        inner.absent.remove(&d);
                    }
                }
                inner.absent.insert(domain.to_owned(), now);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let extensions = self.store.extensions(&tenant.id).await?;
        Ok(Some(self.insert(TenantEntry::new(tenant, extensions))))
    }

    /// The active tenant `domain` names, from memory or (on a miss) the store. `Err` is
    /// the SIP answer: `404` unknown, `403` suspended.
    pub async fn active_tenant(
        &self,
        domain: Option<&str>,
    ) -> Result<Arc<TenantEntry>, (u16, &'static str)> {
        let Some(domain) = domain.filter(|d| !d.is_empty()) else {
            return Err((400, "No domain in the request"));
        };
        let domain = domain.to_ascii_lowercase();
        let now = Instant::now();
        let entry = match self.cached(&domain, now) {
            Cached::Tenant(e) => Some(e),
            Cached::Unknown => None,
            Cached::Miss => self.load(&domain, now).await.map_err(|e| {
                tracing::warn!(error = %e, "store unavailable");
                (500, "Store unavailable")
            })?,
        };
        match entry {
            Some(e) if e.tenant.state == "active" => Ok(e),
            Some(_) => Err((403, "Tenant suspended")),
            None => Err((404, "Unknown domain")),
        }
    }

    /// Reads the extension `username` of `entry`'s tenant from the store into memory.
    pub async fn load_user(
        &self,
        entry: &TenantEntry,
        username: &str,
        now: Instant,
    ) -> Result<(), StoreError> {
        match self
            .store
            .extension_by_username(&entry.tenant.id, username)
            .await
        {
            Ok(e) => entry.add_user(e),
            Err(StoreError::NotFound { .. }) => entry.mark_absent(username, now),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Reads tenant `id` again (after a change event); gone from memory when deleted.
    pub async fn reload(&self, tenant_id: &str) -> Result<(), StoreError> {
        match self.store.tenant(tenant_id).await {
            Ok(tenant) => {
                let extensions = self.store.extensions(&tenant.id).await?;
                self.insert(TenantEntry::new(tenant, extensions));
                Ok(())
            }
            Err(StoreError::NotFound { .. }) => {
                let mut inner = self.lock();
                if let Some(domain) = inner.domain_of.remove(tenant_id) {
                    inner.by_domain.remove(&domain);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `event` makes memory stale for its tenant: then the shell calls
    /// [`Directory::reload`] for it. A tenant not in memory may be a new one: unknown
    /// domains are forgotten so it is found at once.
    pub fn apply(&self, event: &ChangeEvent) -> bool {
        let mut inner = self.lock();
        match inner.domain_of.get(&event.tenant_id) {
            Some(domain) => inner
                .by_domain
                .get(domain)
                .is_none_or(|e| e.tenant.config_version < event.config_version),
            None => {
                inner.absent.clear();
                true
            }
        }
    }

    /// Forgets everything (after missed events); the shell warms it again.
    pub fn clear(&self) {
        *self.lock() = Inner::default();
    }

    /// Tenants in memory.
    pub fn len(&self) -> usize {
        self.lock().by_domain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the newer of what memory has and `entry`.
    pub(crate) fn insert(&self, entry: TenantEntry) -> Arc<TenantEntry> {
        let mut inner = self.lock();
        let domain = entry.tenant.domain.clone();
        if let Some(old) = inner.by_domain.get(&domain)
            && old.tenant.config_version > entry.tenant.config_version
        {
            return old.clone();
        }
        let entry = Arc::new(entry);
        inner
            .domain_of
            .insert(entry.tenant.id.clone(), domain.clone());
        inner.absent.remove(&domain);
        inner.by_domain.insert(domain, entry.clone());
        entry
    }
}

/// An active tenant with small caps, for the crate's tests.
#[cfg(test)]
pub(crate) fn test_tenant(id: &str, domain: &str, placement: &str) -> Tenant {
    Tenant {
        id: id.into(),
        name: domain.into(),
        domain: domain.into(),
        state: "active".into(),
        placement: placement.into(),
        max_calls: 10,
        calls_per_second: 5,
        max_registrations: 10,
        max_extensions: 10,
        reg_expiry_min: 60,
        reg_expiry_max: 3600,
        reg_expiry_default: 600,
        config_version: 1,
        created_at: 0,
        caller_id: None,
    }
}
