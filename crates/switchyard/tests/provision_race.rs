//! The provisioning race workload (scaled down; the full size is `switchyard bench
//! provision`) on SQLite and on the real PostgreSQL: every invariant holds.

#[path = "../../store/tests/common/mod.rs"]
mod common;

use switchyard::bench::provision::{Options, run};

fn options() -> Options {
    Options {
        tenants: 40,
        extensions: 6,
        dids: 3,
        clients: 16,
        duplicate_every: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_on_sqlite_keeps_every_invariant() {
    let t = common::sqlite().await;
    let report = run(t.store.clone(), &options()).await.unwrap();
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(report.requests - report.duplicates, 40 * (2 + 6 + 3));
    assert!(
        report.duplicates > 0,
        "duplicated requests were sent and replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_on_postgres_keeps_every_invariant() {
    let t = common::postgres().await;
    let report = run(t.store.clone(), &options()).await.unwrap();
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(report.requests - report.duplicates, 40 * (2 + 6 + 3));
}
