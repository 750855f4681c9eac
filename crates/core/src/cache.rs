//! Tenant configuration at call time: read from the store on first use, kept until a
//! change event with a newer version arrives for that tenant. Nothing is ever reloaded;
//! other tenants' entries are untouched by one tenant's change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchyard_store::{ChangeEvent, Store, StoreError, TenantConfig};

#[derive(Debug, Clone)]
pub struct ConfigCache {
    store: Store,
    entries: Arc<Mutex<Entries>>,
}

#[derive(Debug, Default)]
struct Entries {
    configs: HashMap<String, Arc<TenantConfig>>,
    /// The newest version a change event announced per tenant: a read that started
    /// before that change and lands after it is older and is not kept.
    announced: HashMap<String, i64>,
}

impl ConfigCache {
    pub fn new(store: Store) -> ConfigCache {
        ConfigCache {
            store,
            entries: Arc::default(),
        }
    }

    /// The tenant's configuration snapshot (one read of the store on a miss).
    pub async fn get(&self, tenant_id: &str) -> Result<Arc<TenantConfig>, StoreError> {
        if let Some(c) = self.lock().configs.get(tenant_id) {
            return Ok(c.clone());
        }
        let config = Arc::new(self.store.tenant_config(tenant_id).await?);
        let mut entries = self.lock();
        if entries
            .announced
            .get(tenant_id)
            .is_some_and(|v| config.version < *v)
        {
            // Read before a change this cache has heard of: used once, not kept.
            return Ok(config);
        }
        // A newer snapshot may have landed meanwhile; keep the newest.
        let entry = entries
            .configs
            .entry(tenant_id.to_owned())
            .or_insert_with(|| config.clone());
        if entry.version < config.version {
            *entry = config.clone();
        }
        Ok(entry.clone())
    }

    /// Drops the tenant's entry if the event is newer than it.
    pub fn apply(&self, event: &ChangeEvent) {
        let mut entries = self.lock();
        let announced = entries
            .announced
            .entry(event.tenant_id.clone())
            .or_insert(event.config_version);
        *announced = (*announced).max(event.config_version);
        if entries
            .configs
            .get(&event.tenant_id)
            .is_some_and(|c| c.version < event.config_version)
        {
            entries.configs.remove(&event.tenant_id);
        }
    }

    /// Tenants cached now.
    pub fn len(&self) -> usize {
        self.lock().configs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
