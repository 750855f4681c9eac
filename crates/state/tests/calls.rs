//! Calls in progress and call rates per tenant, in memory and on the real Redis at
//! 127.0.0.1:6379 (`SWITCHYARD_TEST_REDIS` overrides): the same answers on both, and two
//! clients of one Redis (two edges) share the counts exactly.

mod common;

use std::sync::Arc;

use switchyard_state::calls::{Admission, CallLimits, LiveCalls};
use switchyard_types::TenantId;

async fn redis(prefix: &str) -> LiveCalls {
    let url = common::redis_url();
    LiveCalls::redis(&url, prefix)
        .await
        .unwrap_or_else(|e| panic!("{}", common::required(&url, e)))
}

const LEASE: i64 = 90_000;

async fn rules_hold(calls: LiveCalls) {
    let t = TenantId::from("acme");
    let limits = CallLimits {
        max_calls: 3,
        calls_per_second: 2,
    };
    let now = 1_700_000_000_000;
    let admit = |c: &'static str, at: i64| {
        let (calls, t) = (&calls, &t);
        async move { calls.admit(t, c, limits, at, at + LEASE).await.unwrap() }
    };
    assert_eq!(admit("a", now).await, Admission::Admitted);
    assert_eq!(admit("a", now).await, Admission::AlreadyAdmitted);
    assert_eq!(admit("b", now).await, Admission::Admitted);
    // Two per second: the third in the same instant waits 500 ms.
    assert_eq!(
        admit("c", now).await,
        Admission::RateLimit {
            limit: 2,
            retry_after_ms: 500
        }
    );
    assert_eq!(admit("c", now + 500).await, Admission::Admitted);
    assert_eq!(admit("d", now + 5_000).await, Admission::CallLimit(3));
    assert_eq!(calls.active(&t, now + 5_000).await.unwrap(), 3);
    calls
        .release(&[(t.clone(), "b".into()), (t.clone(), "unknown".into())])
        .await
        .unwrap();
    assert_eq!(calls.active(&t, now + 5_000).await.unwrap(), 2);
    assert_eq!(admit("d", now + 5_000).await, Admission::Admitted);
    // A limit of 0 admits nothing.
    let closed = CallLimits {
        max_calls: 0,
        calls_per_second: 10,
    };
    assert_eq!(
        calls
            .admit(&TenantId::from("closed"), "x", closed, now, now + LEASE)
            .await
            .unwrap(),
        Admission::CallLimit(0)
    );
}

#[tokio::test]
async fn memory_calls_follow_the_rules() {
    rules_hold(LiveCalls::memory()).await;
}

#[tokio::test]
async fn redis_calls_follow_the_same_rules() {
    rules_hold(redis(&common::unique_prefix()).await).await;
}

#[tokio::test]
async fn two_edges_sharing_redis_never_exceed_the_cap_and_leases_lapse() {
    let prefix = common::unique_prefix();
    let (one, two) = (
        Arc::new(redis(&prefix).await),
        Arc::new(redis(&prefix).await),
    );
    let t = TenantId::from("acme");
    let limits = CallLimits {
        max_calls: 25,
        calls_per_second: 10_000,
    };
    let now = 1_700_000_000_000;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (edge, t) = (if i % 2 == 0 { &one } else { &two }.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            edge.admit(&t, &format!("call-{i}"), limits, now, now + LEASE)
                .await
                .unwrap()
        }));
    }
    let mut admitted = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if task.await.unwrap() == Admission::Admitted {
            admitted.push(i);
        }
    }
    assert_eq!(admitted.len(), 25);
    // Edge two releases what edge one admitted: the count is shared.
    let held: Vec<(TenantId, String)> = admitted
        .iter()
        .map(|i| (t.clone(), format!("call-{i}")))
        .collect();
    two.release(&held[..5]).await.unwrap();
    assert_eq!(one.active(&t, now).await.unwrap(), 20);
    // Renewed leases survive; the others lapse (an edge that died frees its calls).
    one.renew(&held[5..10], now + 10 * LEASE).await.unwrap();
    assert_eq!(one.active(&t, now + 2 * LEASE).await.unwrap(), 5);
    assert_eq!(
        two.admit(&t, "late", limits, now + 2 * LEASE, now + 3 * LEASE)
            .await
            .unwrap(),
        Admission::Admitted
    );
}
