//! Carriers and the numbers they call, in memory: which source networks are a carrier's
//! (or, for a carrier we register to, its registrar's address), and which tenant holds
//! each assigned number of the DID pool. A call from a carrier is routed by the number it
//! is for (the Request-URI's user; `To`'s when the Request-URI is the Contact we
//! registered), never by a domain it names.
//!
//! Refreshed off the hot path ([`Carriers::spawn_refresher`]): at start, every few
//! seconds, and soon after a tenant's change event (a number assigned, released or
//! pointed elsewhere bumps its tenant's version).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use switchyard_store::{ChangeEvent, Store, StoreError};
use switchyard_types::Prefix;

use crate::uplinks::UplinkSpec;

/// How often carriers and numbers are read again without a change event.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// After a change event, how soon they are read again (events in a burst share it).
const AFTER_CHANGE: Duration = Duration::from_millis(200);
/// How long a registrar's name may take to resolve.
const RESOLVE_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Table {
    /// (network, carrier name)
    networks: Vec<(Prefix, String)>,
    /// E.164 number -> (tenant id, tenant domain)
    numbers: HashMap<String, (String, String)>,
    /// The registrations we keep, their registrars resolved.
    uplinks: Vec<UplinkSpec>,
}

/// The edge's carriers and the pool's assigned numbers.
#[derive(Debug, Default, Clone)]
pub struct Carriers {
    table: Arc<RwLock<Table>>,
}

impl Carriers {
    pub fn new() -> Carriers {
        Carriers::default()
    }

    /// The carrier whose networks hold `source`, or whose registrar it is.
    pub fn carrier_of(&self, source: IpAddr) -> Option<String> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.networks
            .iter()
            .find(|(net, _)| net.contains(source))
            .map(|(_, name)| name.clone())
            .or_else(|| {
                t.uplinks
                    .iter()
                    .find(|u| u.registrar.ip() == source)
                    .map(|u| u.carrier.clone())
            })
    }

    /// Whether `user` is the name `carrier` knows us by (the user of the Contact we
    /// registered): its calls then name the number in `To`.
    pub fn is_our_registered_user(&self, carrier: &str, user: &str) -> bool {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.uplinks
            .iter()
            .any(|u| u.carrier == carrier && u.username == user)
    }

    /// The registrations to keep, as last read.
    pub fn uplinks(&self) -> Vec<UplinkSpec> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.uplinks.clone()
    }

    /// The tenant (id, domain) holding `number`: E.164 with or without the `+`.
    pub fn holder_of(&self, number: &str) -> Option<(String, String)> {
        let e164 = e164_of(number)?;
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.numbers.get(&e164).cloned()
    }

    /// Reads carriers and numbers from the store (both or neither replace memory).
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let carriers = store.carriers().await?;
        let numbers = store.assigned_numbers().await?;
        let mut uplinks = Vec::new();
        for c in &carriers {
            let Some(r) = &c.registration else { continue };
            let (host, port) = r.host_port();
            let target = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let resolved =
                tokio::time::timeout(RESOLVE_LIMIT, tokio::net::lookup_host(target)).await;
            let registrar: Option<SocketAddr> = match resolved {
                Ok(Ok(mut addrs)) => addrs.next(),
                _ => None,
            };
            let Some(registrar) = registrar else {
                warn!(
                    carrier = c.name,
                    registrar = r.registrar,
                    "carrier registrar does not resolve"
                );
                continue;
            };
            uplinks.push(UplinkSpec {
                carrier: c.name.clone(),
                domain: host,
                registrar,
                username: r.username.clone(),
                password: r.password.clone(),
                expires: r.expires,
            });
        }
        let table = Table {
            uplinks,
            networks: carriers
                .iter()
                .flat_map(|c| c.networks().into_iter().map(|n| (n, c.name.clone())))
                .collect(),
            numbers: numbers
                .into_iter()
                .map(|(number, tenant, domain)| (number, (tenant, domain)))
                .collect(),
        };
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
        Ok(())
    }

    /// Keeps memory fresh until `shutdown` (see the module docs).
    pub fn spawn_refresher(
        &self,
        store: Store,
        mut changes: broadcast::Receiver<ChangeEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.refresh(&store).await {
                    warn!(error = %e, "carriers and numbers not refreshed");
                }
                let wait = tokio::time::sleep(REFRESH_EVERY);
                tokio::pin!(wait);
                tokio::select! {
                    _ = &mut wait => {}
                    event = changes.recv() => {
                        if matches!(event, Err(broadcast::error::RecvError::Closed)) {
                            // No more events: refresh on the clock alone.
                            changes = broadcast::channel(1).1;
                        }
                        tokio::time::sleep(AFTER_CHANGE).await;
                        while changes.try_recv().is_ok() {}
                        debug!("carriers and numbers refreshed after a change");
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

/// `+` and 7 to 15 digits from what a carrier puts in a Request-URI (`+4930...`,
/// `4930...`); `None` for anything else.
pub fn e164_of(user: &str) -> Option<String> {
    let digits = user.strip_prefix('+').unwrap_or(user);
    ((7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("+{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_as_e164() {
        assert_eq!(e164_of("+493012345678").as_deref(), Some("+493012345678"));
        assert_eq!(e164_of("493012345678").as_deref(), Some("+493012345678"));
        assert_eq!(e164_of("1000"), None);
        assert_eq!(e164_of("+49-30-1234"), None);
        assert_eq!(e164_of("alice"), None);
    }
}
