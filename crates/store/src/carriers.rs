//! Carriers: the operator's PSTN interconnects, recognised by their source networks. The
//! edge holds them in memory (with the pool's assigned numbers) and refreshes them from
//! here; a call from a carrier is routed by the number it is for, never by a tenant
//! domain it names.

use serde::Serialize;
use switchyard_types::Prefix;

use crate::{Result, Store, StoreError, in_tx, on_pool};

/// A carrier and the networks its calls come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Carrier {
    pub name: String,
    /// Networks in their canonical text (`192.0.2.10/32`, `2001:db8::/48`).
    pub addresses: Vec<String>,
    pub created_at: i64,
}

impl Carrier {
    /// The source networks, parsed (the store only keeps ones that parse).
    pub fn networks(&self) -> Vec<Prefix> {
        self.addresses
            .iter()
            .filter_map(|a| Prefix::parse(a).ok())
            .collect()
    }
}

#[derive(sqlx::FromRow)]
struct CarrierRow {
    name: String,
    addresses: String,
    created_at: i64,
}

impl From<CarrierRow> for Carrier {
    fn from(r: CarrierRow) -> Carrier {
        Carrier {
            name: r.name,
            addresses: serde_json::from_str(&r.addresses).unwrap_or_default(),
            created_at: r.created_at,
        }
    }
}

/// A name as media pools have them: 1 to 64 of `A-Z a-z 0-9 - _`.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid("name", "1 to 64 of A-Z a-z 0-9 - _"))
    }
}

/// 1 to 64 networks, each an address or `address/length`, written back canonically.
fn canonical_networks(addresses: &[String]) -> Result<Vec<String>> {
    if addresses.is_empty() || addresses.len() > 64 {
        return Err(StoreError::invalid("addresses", "1 to 64 networks"));
    }
    addresses
        .iter()
        .map(|a| {
            let p = Prefix::parse(a).map_err(|e| StoreError::invalid("addresses", e))?;
            if p.len == 0 {
                return Err(StoreError::invalid(
                    "addresses",
                    format!("{a:?}: a carrier is never the whole Internet"),
                ));
            }
            Ok(format!("{}/{}", p.addr, p.len))
        })
        .collect()
}

impl Store {
    /// Adds a carrier (operator).
    pub async fn create_carrier(&self, name: &str, addresses: &[String]) -> Result<Carrier> {
        check_name(name)?;
        let carrier = Carrier {
            name: name.to_owned(),
            addresses: canonical_networks(addresses)?,
            created_at: self.now(),
        };
        let text = serde_json::to_string(&carrier.addresses).expect("strings serialise");
        let c = &carrier;
        in_tx!(self, |tx, _pg| {
            sqlx::query("INSERT INTO carriers (name, addresses, created_at) VALUES ($1, $2, $3)")
                .bind(&c.name)
                .bind(&text)
                .bind(c.created_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| match StoreError::from_write(e) {
                    StoreError::Conflict { .. } => StoreError::Conflict {
                        what: format!("carrier {} exists", c.name),
                    },
                    other => other,
                })?;
        });
        Ok(carrier)
    }

    /// Every carrier, by name.
    pub async fn carriers(&self) -> Result<Vec<Carrier>> {
        let rows: Vec<CarrierRow> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT name, addresses, created_at FROM carriers ORDER BY name")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Removes a carrier: its calls are no longer recognised.
    pub async fn delete_carrier(&self, name: &str) -> Result<()> {
        let gone = in_tx!(self, |tx, _pg| {
            sqlx::query("DELETE FROM carriers WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        });
        if gone == 0 {
            return Err(StoreError::NotFound { what: "carrier" });
        }
        Ok(())
    }

    /// Every assigned number of the pool with its tenant: (number, tenant id, domain).
    pub async fn assigned_numbers(&self) -> Result<Vec<(String, String, String)>> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT d.number, d.tenant_id, t.domain FROM dids d JOIN tenants t ON t.id = d.tenant_id \
                 WHERE d.state = 'assigned' ORDER BY d.number",
            )
            .fetch_all(pool)
            .await?
        }))
    }
}
