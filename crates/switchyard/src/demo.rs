//! `serve --demo`: a demo tenant with two extensions, ready for two softphones.
//!
//! The passwords exist only in `demo-credentials.json` (the store keeps HA1 digests), so a
//! restart reuses them from there; if the file is gone, the demo extensions are recreated
//! with new passwords.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use switchyard_store::{NewExtension, NewTenant, Store, StoreError};

pub const DEMO_DOMAIN: &str = "demo.switchyard.test";
const NUMBERS: [(i64, &str); 2] = [(1001, "Alice"), (1002, "Bob")];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DemoExtension {
    pub number: String,
    pub username: String,
    pub password: String,
    pub display_name: String,
}

/// What `demo-credentials.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DemoCredentials {
    pub tenant_id: String,
    pub domain: String,
    /// Where phones send SIP (the outbound proxy), e.g. `127.0.0.1:5060`.
    pub proxy: String,
    pub extensions: Vec<DemoExtension>,
}

fn password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Creates (or finds) the demo tenant and its extensions; writes the credentials file.
pub async fn ensure_demo(
    store: &Store,
    data_dir: &Path,
    proxy: &str,
) -> anyhow::Result<DemoCredentials> {
    let path = data_dir.join("demo-credentials.json");
    let tenant = match store.tenant_by_domain(DEMO_DOMAIN).await {
        Ok(t) => t,
        Err(StoreError::NotFound { .. }) => store
            .create_tenant(&NewTenant {
                name: "Demo".into(),
                domain: DEMO_DOMAIN.into(),
                ..NewTenant::default()
            })
            .await
            .context("cannot create the demo tenant")?,
        Err(e) => return Err(e).context("cannot read the store"),
    };
    let saved: Option<DemoCredentials> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|c: &DemoCredentials| c.tenant_id == tenant.id);
    let range_id = match store.extension_ranges(&tenant.id).await?.first() {
        Some(r) => r.id.clone(),
        None => store.add_extension_range(&tenant.id, 1000, 1099).await?.id,
    };
    let mut extensions = Vec::new();
    for (number, name) in NUMBERS {
        let existing = store
            .extension_by_username(&tenant.id, &number.to_string())
            .await;
        let known = saved
            .as_ref()
            .and_then(|c| c.extensions.iter().find(|e| e.number == number.to_string()));
        match (existing, known) {
            (Ok(_), Some(k)) => extensions.push(k.clone()),
            (existing, _) => {
                if let Ok(e) = existing {
                    store.delete_extension(&tenant.id, &e.id, None).await?;
                }
                let pw = password();
                store
                    .create_extension(
                        &tenant.id,
                        &NewExtension {
                            range_id: range_id.clone(),
                            number: Some(number),
                            display_name: name.into(),
                            username: None,
                            password: pw.clone(),
                            voicemail: false,
                        },
                    )
                    .await
                    .with_context(|| format!("cannot create demo extension {number}"))?;
                extensions.push(DemoExtension {
                    number: number.to_string(),
                    username: number.to_string(),
                    password: pw,
                    display_name: name.into(),
                });
            }
        }
    }
    let creds = DemoCredentials {
        tenant_id: tenant.id.clone(),
        domain: tenant.domain.clone(),
        proxy: proxy.to_owned(),
        extensions,
    };
    std::fs::write(&path, serde_json::to_vec_pretty(&creds)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(creds)
}

/// Lines printed for a person at the terminal.
pub fn describe(creds: &DemoCredentials, path: &Path) -> Vec<String> {
    let mut lines = vec![format!(
        "demo tenant {} (SIP domain {}, send SIP to {})",
        creds.tenant_id, creds.domain, creds.proxy
    )];
    for e in &creds.extensions {
        lines.push(format!(
            "demo extension {} ({}): username {} password {}",
            e.number, e.display_name, e.username, e.password
        ));
        lines.push(format!(
            "demo baresip account: <sip:{}@{}>;auth_pass={};outbound=\"sip:{}\";regint=600",
            e.username, creds.domain, e.password, creds.proxy
        ));
    }
    lines.push(format!("demo credentials written to {}", path.display()));
    lines
}
