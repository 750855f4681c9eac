//! Fresh stores on both backends: a SQLite file in a temporary directory, and a new
//! database on the PostgreSQL server at 127.0.0.1:5432 (or `SWITCHYARD_TEST_PG`). A test
//! never skips PostgreSQL: if the server is not there, it fails saying so.
#![allow(dead_code)]

use switchyard_store::Store;

pub struct TestStore {
    pub store: Store,
    /// The database URL (PostgreSQL only), for a second connection as another node.
    pub url: Option<String>,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database to drop afterwards.
    pg_database: Option<String>,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let Some(name) = self.pg_database.take() else {
            return;
        };
        // Drop is not async: clean up on a thread of its own with a small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let admin = sqlx::PgPool::connect(&admin_url()).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&admin)
                .await
                .ok()
            })
        })
        .join();
    }
}

fn admin_url() -> String {
    std::env::var("SWITCHYARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("switchyard.db").display());
    let store = Store::connect(&url).await.expect("SQLite opens");
    store.migrate().await.expect("migrations apply on SQLite");
    TestStore {
        store,
        url: None,
        _dir: Some(dir),
        pg_database: None,
    }
}

pub async fn postgres() -> TestStore {
    let admin_url = admin_url();
    let name = format!("sy_test_{}", uuid_like());
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required at {admin_url} (set SWITCHYARD_TEST_PG): {e}")
    });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("CREATE DATABASE");
    admin.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin_url);
    let url = format!("{base}/{name}");
    let store = Store::connect(&url).await.expect("PostgreSQL opens");
    store
        .migrate()
        .await
        .expect("migrations apply on PostgreSQL");
    TestStore {
        store,
        url: Some(url),
        _dir: None,
        pg_database: Some(name),
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

/// Runs the same test body on both backends.
#[macro_export]
macro_rules! on_both {
    ($name:ident, |$store:ident| $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let t = common::sqlite().await;
                let $store = t.store.clone();
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let t = common::postgres().await;
                let $store = t.store.clone();
                $body
            }
        }
    };
}
