//! Tenant configuration at call time: read from the store on first use, kept until a
//! change event with a newer version arrives for that tenant. Nothing is ever reloaded;
//! other tenants' entries are untouched by one tenant's change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchyard_store::{ChangeEvent, Store, StoreError, TenantConfig};

#[derive(Debug, Clone)]
pub struct ConfigCache {
    store: Store,
    entries: Arc<Mutex<HashMap<String, Arc<TenantConfig>>>>,
}

impl ConfigCache {
    pub fn new(store: Store) -> ConfigCache {
        ConfigCache {
            store,
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The tenant's configuration snapshot (one read of the store on a miss).
    pub async fn get(&self, tenant_id: &str) -> Result<Arc<TenantConfig>, StoreError> {
        if let Some(c) = self.lock().get(tenant_id) {
            return Ok(c.clone());
        }
        let config = Arc::new(self.store.tenant_config(tenant_id).await?);
        let mut map = self.lock();
        // A newer snapshot may have landed meanwhile; keep the newest.
        let entry = map
            .entry(tenant_id.to_owned())
            .or_insert_with(|| config.clone());
        if entry.version < config.version {
            *entry = config.clone();
        }
        Ok(entry.clone())
    }

    /// Drops the tenant's entry if the event is newer than it.
    pub fn apply(&self, event: &ChangeEvent) {
        let mut map = self.lock();
        if map
            .get(&event.tenant_id)
            .is_some_and(|c| c.version < event.config_version)
        {
            map.remove(&event.tenant_id);
        }
    }

    /// Tenants cached now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TenantConfig>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
