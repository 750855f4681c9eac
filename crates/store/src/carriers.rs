//! Carriers: the operator's PSTN interconnects, recognised by their source networks or by
//! the registration we keep with them (we REGISTER to the carrier with digest credentials
//! and take calls from its registrar's address). The edge holds them in memory (with the
//! pool's assigned numbers) and refreshes them from here; a call from a carrier is routed
//! by the number it is for, never by a tenant domain it names.

use serde::{Deserialize, Serialize};
use switchyard_types::Prefix;

use crate::{Result, Store, StoreError, in_tx, on_pool};

/// A carrier and the networks its calls come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Carrier {
    pub name: String,
    /// Networks in their canonical text (`192.0.2.10/32`, `2001:db8::/48`).
    pub addresses: Vec<String>,
    /// The registration we keep with the carrier, if it wants one.
    pub registration: Option<CarrierRegistration>,
    pub created_at: i64,
}

/// How we register to a carrier: REGISTER to `registrar` (`host` or `host:port`, UDP)
/// as `username`, answering its digest challenge with `password`, for `expires` seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierRegistration {
    pub registrar: String,
    pub username: String,
    /// Never returned by the API.
    pub password: String,
    #[serde(default = "default_expires")]
    pub expires: u32,
}

fn default_expires() -> u32 {
    600
}

impl CarrierRegistration {
    /// The registrar's host and port (5060 when none is given).
    pub fn host_port(&self) -> (String, u16) {
        split_host_port(&self.registrar).unwrap_or_else(|| (self.registrar.clone(), 5060))
    }

    fn check(&self) -> Result<()> {
        let bad = |rule: &str| Err(StoreError::invalid("registration", rule));
        if split_host_port(&self.registrar).is_none() {
            return bad("registrar: a host name or address, optionally with :port");
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()+&=$,".contains(&b))
        };
        if !token(&self.username) {
            return bad("username: 1 to 64 of A-Z a-z 0-9 - _ . ! ~ * ' ( ) + & = $ ,");
        }
        if self.password.is_empty()
            || self.password.len() > 128
            || self
                .password
                .bytes()
                .any(|b| !(0x21..0x7f).contains(&b) || b == b'"')
        {
            return bad("password: 1 to 128 printable characters, no quote or space");
        }
        if !(60..=86_400).contains(&self.expires) {
            return bad("expires: 60 to 86400 seconds");
        }
        Ok(())
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`: the host (without brackets) and port.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => 5060,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (host.to_owned(), port)
    } else {
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (text, 5060),
        };
        (host.to_owned(), port)
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    (name_ok && port != 0).then_some((host, port))
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
    registration: Option<String>,
    created_at: i64,
}

impl From<CarrierRow> for Carrier {
    fn from(r: CarrierRow) -> Carrier {
        Carrier {
            name: r.name,
            addresses: serde_json::from_str(&r.addresses).unwrap_or_default(),
            registration: r
                .registration
                .and_then(|text| serde_json::from_str(&text).ok()),
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

/// Up to 64 networks (at least one for a carrier we do not register to), each an
/// address or `address/length`, written back canonically.
fn canonical_networks(addresses: &[String], registered: bool) -> Result<Vec<String>> {
    if (addresses.is_empty() && !registered) || addresses.len() > 64 {
        return Err(StoreError::invalid(
            "addresses",
            "1 to 64 networks (none only for a carrier we register to)",
        ));
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
    /// Adds a carrier recognised by its networks (operator).
    pub async fn create_carrier(&self, name: &str, addresses: &[String]) -> Result<Carrier> {
        self.create_carrier_with(name, addresses, None).await
    }

    /// Adds a carrier, recognised by its networks and/or by the registration we keep
    /// with it (operator).
    pub async fn create_carrier_with(
        &self,
        name: &str,
        addresses: &[String],
        registration: Option<CarrierRegistration>,
    ) -> Result<Carrier> {
        check_name(name)?;
        if let Some(r) = &registration {
            r.check()?;
        }
        let carrier = Carrier {
            name: name.to_owned(),
            addresses: canonical_networks(addresses, registration.is_some())?,
            registration,
            created_at: self.now(),
        };
        let text = serde_json::to_string(&carrier.addresses).expect("strings serialise");
        let registration = carrier
            .registration
            .as_ref()
            .map(|r| serde_json::to_string(r).expect("strings serialise"));
        let c = &carrier;
        in_tx!(self, |tx, _pg| {
            sqlx::query(
                "INSERT INTO carriers (name, addresses, registration, created_at) VALUES ($1, $2, $3, $4)",
            )
                .bind(&c.name)
                .bind(&text)
                .bind(&registration)
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
            sqlx::query_as(
                "SELECT name, addresses, registration, created_at FROM carriers ORDER BY name",
            )
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
