//! The store on SQLite and on the real PostgreSQL: tenants, ranges, extensions, DIDs,
//! versions and the outbox, tenant isolation, and allocation under contention.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use switchyard_sip::digest::{Algorithm, ha1};
use switchyard_store::{NewExtension, NewTenant, Store, StoreError};

async fn tenant(store: &Store, domain: &str) -> switchyard_store::Tenant {
    store
        .create_tenant(&NewTenant {
            name: format!("Tenant {domain}"),
            domain: domain.to_owned(),
            max_extensions: Some(1000),
            ..NewTenant::default()
        })
        .await
        .unwrap()
}

fn ext(range_id: &str, number: Option<i64>) -> NewExtension {
    NewExtension {
        range_id: range_id.to_owned(),
        number,
        display_name: "Someone".into(),
        username: None,
        password: "correct horse battery".into(),
        voicemail: false,
    }
}

on_both!(
    tenants_are_created_found_listed_and_unique_by_domain,
    |store| {
        let a = tenant(&store, "Acme.Example.com").await;
        assert_eq!(
            a.domain, "acme.example.com",
            "domains are stored lower-case"
        );
        assert_eq!(store.tenant(&a.id).await.unwrap(), a);
        assert_eq!(
            store.tenant_by_domain("ACME.example.COM").await.unwrap().id,
            a.id
        );
        let dup = store
            .create_tenant(&NewTenant {
                name: "Other".into(),
                domain: "acme.example.com".into(),
                ..NewTenant::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(dup, StoreError::Conflict { ref what } if what.contains("domain")),
            "{dup}"
        );
        for bad in ["", "no spaces.com", "-lead.example.com", "a..b"] {
            let e = store
                .create_tenant(&NewTenant {
                    name: "X".into(),
                    domain: bad.into(),
                    ..NewTenant::default()
                })
                .await
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    StoreError::Invalid {
                        field: "domain",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
        let e = store
            .create_tenant(&NewTenant {
                name: "X".into(),
                domain: "x.example.com".into(),
                max_calls: Some(-1),
                ..NewTenant::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            StoreError::Invalid {
                field: "max_calls",
                ..
            }
        ));
        for i in 0..5 {
            tenant(&store, &format!("t{i}.example.com")).await;
        }
        let first = store.list_tenants(None, 4).await.unwrap();
        let rest = store
            .list_tenants(Some(&first.last().unwrap().id), 4)
            .await
            .unwrap();
        assert_eq!(
            first.len() + rest.len(),
            6,
            "cursor pagination sees every tenant once"
        );
        let ids: HashSet<_> = first.iter().chain(&rest).map(|t| t.id.clone()).collect();
        assert_eq!(ids.len(), 6);
    }
);

on_both!(extensions_allocate_in_ranges_and_keep_only_ha1, |store| {
    let t = tenant(&store, "acme.example.com").await;
    let r = store.add_extension_range(&t.id, 1000, 1002).await.unwrap();
    let overlap = store
        .add_extension_range(&t.id, 1002, 1010)
        .await
        .unwrap_err();
    assert!(matches!(overlap, StoreError::Conflict { .. }), "{overlap}");
    let backwards = store
        .add_extension_range(&t.id, 2000, 1999)
        .await
        .unwrap_err();
    assert!(matches!(
        backwards,
        StoreError::Invalid {
            field: "last_number",
            ..
        }
    ));

    let e1 = store
        .create_extension(&t.id, &ext(&r.id, None))
        .await
        .unwrap();
    let e3 = store
        .create_extension(&t.id, &ext(&r.id, Some(1002)))
        .await
        .unwrap();
    let e2 = store
        .create_extension(&t.id, &ext(&r.id, None))
        .await
        .unwrap();
    assert_eq!(
        (e1.number, e2.number, e3.number),
        (1000, 1001, 1002),
        "next free fills the gap"
    );
    let full = store
        .create_extension(&t.id, &ext(&r.id, None))
        .await
        .unwrap_err();
    assert!(matches!(full, StoreError::Exhausted { .. }), "{full}");
    let outside = store
        .create_extension(&t.id, &ext(&r.id, Some(5000)))
        .await
        .unwrap_err();
    assert!(matches!(
        outside,
        StoreError::Invalid {
            field: "number",
            ..
        }
    ));

    assert_eq!(e1.username, "1000");
    assert_eq!(
        e1.ha1_md5,
        ha1(
            Algorithm::Md5,
            "1000",
            "acme.example.com",
            "correct horse battery"
        )
    );
    assert_eq!(
        e1.ha1_sha256,
        ha1(
            Algorithm::Sha256,
            "1000",
            "acme.example.com",
            "correct horse battery"
        )
    );
    assert!(
        !format!("{e1:?}").contains("correct horse"),
        "the password is never stored"
    );
    let short = store
        .create_extension(
            &t.id,
            &NewExtension {
                password: "short".into(),
                ..ext(&r.id, None)
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(
        short,
        StoreError::Invalid {
            field: "password",
            ..
        }
    ));
    assert_eq!(
        store.extension_by_username(&t.id, "1001").await.unwrap().id,
        e2.id
    );
});

on_both!(
    every_change_bumps_the_version_and_writes_an_ordered_event,
    |store| {
        let t = tenant(&store, "acme.example.com").await;
        let r = store.add_extension_range(&t.id, 100, 199).await.unwrap();
        let e = store
            .create_extension(&t.id, &ext(&r.id, None))
            .await
            .unwrap();
        store.delete_extension(&t.id, &e.id, None).await.unwrap();
        // A refused change leaves nothing behind: no version, no event.
        store
            .add_extension_range(&t.id, 150, 160)
            .await
            .unwrap_err();
        let events = store.outbox_events(&t.id).await.unwrap();
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.config_version, e.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (1, "tenant.created"),
                (2, "extension_range.created"),
                (3, "extension.created"),
                (4, "extension.deleted")
            ]
        );
        let spare = store.add_extension_range(&t.id, 300, 399).await.unwrap();
        let r2 = store.add_extension_range(&t.id, 400, 499).await.unwrap();
        store
            .create_extension(&t.id, &ext(&r2.id, None))
            .await
            .unwrap();
        assert!(
            matches!(
                store.delete_extension_range(&t.id, &r2.id, None).await,
                Err(StoreError::Conflict { .. })
            ),
            "a range is never emptied by a cascade"
        );
        store
            .delete_extension_range(&t.id, &spare.id, None)
            .await
            .unwrap();
        assert_eq!(store.extensions(&t.id).await.unwrap().len(), 1);
        let config = store.tenant_config(&t.id).await.unwrap();
        assert_eq!(config.version, 8);
        assert_eq!(config.extensions.len(), 1);
        assert_eq!(config.ranges.len(), 2);
    }
);

on_both!(
    one_tenant_never_reaches_another_tenants_resources,
    |store| {
        let a = tenant(&store, "a.example.com").await;
        let b = tenant(&store, "b.example.com").await;
        let ra = store.add_extension_range(&a.id, 1000, 1999).await.unwrap();
        store.add_extension_range(&b.id, 1000, 1999).await.unwrap();
        let ea = store
            .create_extension(&a.id, &ext(&ra.id, Some(1000)))
            .await
            .unwrap();
        // B cannot use A's range, see A's extension, or delete it.
        let e = store
            .create_extension(&b.id, &ext(&ra.id, None))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
        assert!(matches!(
            store.extension_by_username(&b.id, "1000").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.delete_extension(&b.id, &ea.id, None).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(
            store
                .tenant_config(&b.id)
                .await
                .unwrap()
                .extensions
                .is_empty()
        );
        // The same number in B is B's own.
        let rb = store.extension_ranges(&b.id).await.unwrap().remove(0);
        let eb = store
            .create_extension(&b.id, &ext(&rb.id, Some(1000)))
            .await
            .unwrap();
        assert_ne!(eb.ha1_md5, ea.ha1_md5, "the realm is the tenant's domain");
    }
);

#[tokio::test]
async fn dids_assign_release_to_quarantine_and_come_back_after_it() {
    let t = common::sqlite().await;
    let now = Arc::new(AtomicI64::new(1_000_000));
    let clock = now.clone();
    let store = t
        .store
        .clone()
        .with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
    let acme = tenant(&store, "acme.example.com").await;
    store
        .add_dids(&["+14155550101".into(), "+14155550100".into()])
        .await
        .unwrap();
    let bad = store
        .add_dids(&["+14155550102".into(), "0800".into()])
        .await
        .unwrap_err();
    assert!(matches!(
        bad,
        StoreError::Invalid {
            field: "number",
            ..
        }
    ));
    assert!(
        store.did("+14155550102").await.is_err(),
        "a failed batch writes nothing"
    );
    let dup = store.add_dids(&["+14155550100".into()]).await.unwrap_err();
    assert!(matches!(dup, StoreError::Conflict { .. }), "{dup}");

    let d1 = store.assign_next_did(&acme.id).await.unwrap();
    assert_eq!(d1.number, "+14155550100");
    store
        .release_did(&acme.id, &d1.number, 2_000_000, None)
        .await
        .unwrap();
    let d2 = store.assign_next_did(&acme.id).await.unwrap();
    assert_eq!(
        d2.number, "+14155550101",
        "a quarantined number is not reused"
    );
    assert!(matches!(
        store.assign_next_did(&acme.id).await,
        Err(StoreError::Exhausted { .. })
    ));
    now.store(2_000_000, Ordering::SeqCst);
    let d3 = store.assign_next_did(&acme.id).await.unwrap();
    assert_eq!(
        d3.number, "+14155550100",
        "back in the pool after its quarantine"
    );
}

on_both!(
    concurrent_callers_never_get_one_did_or_extension_twice,
    |store| {
        let tenants: Vec<_> = futures_join((0..8).map(|i| {
            let s = store.clone();
            async move { tenant(&s, &format!("race{i}.example.com")).await }
        }))
        .await;
        let pool: Vec<String> = (0..200).map(|i| format!("+1415555{i:04}")).collect();
        store.add_dids(&pool).await.unwrap();
        let ranges: Vec<_> = futures_join(tenants.iter().map(|t| {
            let s = store.clone();
            let id = t.id.clone();
            async move { s.add_extension_range(&id, 100, 999).await.unwrap() }
        }))
        .await;
        // 32 workers, 240 DID requests for 200 numbers, and 32 extensions per tenant.
        let mut handles = Vec::new();
        for w in 0..32usize {
            let s = store.clone();
            let t = tenants[w % 8].clone();
            let r = ranges[w % 8].clone();
            handles.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..7 {
                    match s.assign_next_did(&t.id).await {
                        Ok(d) => got.push((d.number, t.id.clone())),
                        Err(StoreError::Exhausted { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                for _ in 0..4 {
                    s.create_extension(&t.id, &ext(&r.id, None)).await.unwrap();
                }
                got
            }));
        }
        let mut assigned = Vec::new();
        for h in handles {
            assigned.extend(h.await.unwrap());
        }
        let numbers: HashSet<_> = assigned.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(assigned.len(), 200, "every number handed out, none twice");
        assert_eq!(numbers.len(), 200);
        for t in &tenants {
            let mine: HashSet<_> = store
                .dids_of(&t.id)
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.number)
                .collect();
            let granted: HashSet<_> = assigned
                .iter()
                .filter(|(_, id)| *id == t.id)
                .map(|(n, _)| n.clone())
                .collect();
            assert_eq!(
                mine, granted,
                "the store agrees with what callers were told"
            );
            let exts = store.extensions(&t.id).await.unwrap();
            let nums: HashSet<_> = exts.iter().map(|e| e.number).collect();
            assert_eq!(exts.len(), 16);
            assert_eq!(nums.len(), 16, "no extension number twice");
            let events = store.outbox_events(&t.id).await.unwrap();
            let versions: Vec<i64> = events.iter().map(|e| e.config_version).collect();
            assert_eq!(
                versions,
                (1..=versions.len() as i64).collect::<Vec<_>>(),
                "events ordered without gaps"
            );
        }
    }
);

on_both!(
    the_dispatcher_publishes_every_event_in_order_per_tenant,
    |store| {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let events = switchyard_store::spawn_dispatcher(
            store.clone(),
            std::time::Duration::from_millis(20),
            stop,
        );
        let mut rx = events.subscribe();
        let a = tenant(&store, "a.example.com").await;
        let b = tenant(&store, "b.example.com").await;
        let ra = store.add_extension_range(&a.id, 100, 199).await.unwrap();
        store.add_extension_range(&b.id, 100, 199).await.unwrap();
        for _ in 0..3 {
            store
                .create_extension(&a.id, &ext(&ra.id, None))
                .await
                .unwrap();
        }
        let mut seen: std::collections::HashMap<String, Vec<i64>> = Default::default();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen.values().map(Vec::len).sum::<usize>() < 7 {
            let e = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("events arrive")
                .unwrap();
            seen.entry(e.tenant_id).or_default().push(e.config_version);
        }
        assert_eq!(seen[&a.id], vec![1, 2, 3, 4, 5], "A's events in order");
        assert_eq!(seen[&b.id], vec![1, 2], "B's events in order");
        // Rows are marked after they are broadcast (at least once), so give the last a moment.
        while !store.unpublished_events(10).await.unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "all marked published"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = stop_tx.send(true);
    }
);

on_both!(
    resources_validate_their_references_within_the_tenant,
    |store| {
        use serde_json::json;
        use switchyard_store::ResourceKind;
        let a = tenant(&store, "a.example.com").await;
        let b = tenant(&store, "b.example.com").await;
        let ra = store.add_extension_range(&a.id, 100, 199).await.unwrap();
        let rb = store.add_extension_range(&b.id, 100, 199).await.unwrap();
        let e1 = store
            .create_extension(&a.id, &ext(&ra.id, None))
            .await
            .unwrap();
        let e2 = store
            .create_extension(&a.id, &ext(&ra.id, None))
            .await
            .unwrap();
        let eb = store
            .create_extension(&b.id, &ext(&rb.id, None))
            .await
            .unwrap();
        let group = json!({"strategy": "simultaneous", "members": [e1.id, e2.id], "ring_seconds": 20, "fallback": {"kind": "hangup"}});
        let rg = store
            .create_resource(&a.id, ResourceKind::RingGroup, "Sales", group.clone())
            .await
            .unwrap();
        // Another tenant's extension is not a valid member.
        let foreign = json!({"strategy": "sequential", "members": [eb.id], "ring_seconds": 20, "fallback": null});
        let e = store
            .create_resource(&a.id, ResourceKind::RingGroup, "Bad", foreign)
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Invalid { field: "spec", .. }),
            "{e}"
        );
        let dup = store
            .create_resource(&a.id, ResourceKind::RingGroup, "Sales", group)
            .await
            .unwrap_err();
        assert!(matches!(dup, StoreError::Conflict { .. }), "{dup}");
        let ivr = json!({"prompt": "welcome.wav", "digits": {"1": {"kind": "ring_group", "id": rg.id}, "2": {"kind": "extension", "id": e2.id}},
                     "timeout_seconds": 5, "timeout_target": null, "invalid_target": {"kind": "hangup"}});
        store
            .create_resource(&a.id, ResourceKind::IvrMenu, "Main", ivr)
            .await
            .unwrap();
        let bad_ivr = json!({"prompt": "../etc/passwd", "digits": {}, "timeout_seconds": 5, "timeout_target": null, "invalid_target": null});
        assert!(
            store
                .create_resource(&a.id, ResourceKind::IvrMenu, "X", bad_ivr)
                .await
                .is_err()
        );
        // Still referenced: neither the ring group nor its member can go.
        let e = store
            .delete_resource(&a.id, &rg.id, None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict { ref what } if what.contains("Main")),
            "{e}"
        );
        let e = store
            .delete_extension(&a.id, &e1.id, None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict { ref what } if what.contains("Sales")),
            "{e}"
        );
        // B sees none of it.
        assert!(
            store
                .resources(&b.id, ResourceKind::RingGroup)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            store.resource(&b.id, &rg.id).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.delete_resource(&b.id, &rg.id, None).await,
            Err(StoreError::NotFound { .. })
        ));
        // A replaced spec is validated like a new one.
        let moved = json!({"strategy": "sequential", "members": [e2.id], "ring_seconds": 30, "fallback": null});
        let updated = store
            .update_resource(&a.id, &rg.id, "Sales", moved)
            .await
            .unwrap();
        assert!(updated.spec.contains("sequential"));
        let foreign = json!({"strategy": "sequential", "members": [eb.id], "ring_seconds": 30, "fallback": null});
        assert!(matches!(
            store.update_resource(&a.id, &rg.id, "Sales", foreign).await,
            Err(StoreError::Invalid { .. })
        ));
        assert!(matches!(
            store.update_resource(&b.id, &rg.id, "x", json!({})).await,
            Err(StoreError::NotFound { .. })
        ));
        // A voicemail PIN is stored only as a salted hash.
        let vm = store
            .create_resource(
                &a.id,
                ResourceKind::VoicemailBox,
                "Alice",
                json!({"extension_id": e1.id, "pin": "4321", "greeting": null, "max_messages": 50}),
            )
            .await
            .unwrap();
        assert!(
            !vm.spec.contains("4321") && vm.spec.contains("pin_sha256"),
            "{}",
            vm.spec
        );
        let config = store.tenant_config(&a.id).await.unwrap();
        assert_eq!(config.resources.len(), 3);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_of_a_postgres_cluster_hears_every_change_in_order() {
    let t = common::postgres().await;
    // A second node: its own pool on the same database.
    let url = t.url.clone().expect("postgres test store has a URL");
    let node_b = Store::connect(&url).await.unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let events_a = switchyard_store::spawn_dispatcher(
        t.store.clone(),
        std::time::Duration::from_millis(20),
        stop.clone(),
    );
    let events_b = switchyard_store::spawn_dispatcher(
        node_b.clone(),
        std::time::Duration::from_millis(20),
        stop,
    );
    let (mut rx_a, mut rx_b) = (events_a.subscribe(), events_b.subscribe());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // listeners up
    let acme = tenant(&t.store, "acme.example.com").await;
    let r = node_b
        .add_extension_range(&acme.id, 100, 199)
        .await
        .unwrap();
    for _ in 0..3 {
        t.store
            .create_extension(&acme.id, &ext(&r.id, None))
            .await
            .unwrap();
    }
    for rx in [&mut rx_a, &mut rx_b] {
        let mut versions = Vec::new();
        while versions.len() < 5 {
            let e = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .expect("event")
                .unwrap();
            if e.tenant_id == acme.id {
                versions.push(e.config_version);
            }
        }
        assert_eq!(
            versions,
            vec![1, 2, 3, 4, 5],
            "each node sees every change, in order"
        );
    }
    let _ = stop_tx.send(true);
    node_b.close().await;
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

on_both!(
    a_request_transaction_keeps_the_change_and_its_answer_together_or_neither,
    |store| {
        use std::sync::atomic::AtomicUsize;
        use switchyard_store::Claim;
        let hooks = Arc::new(AtomicUsize::new(0));

        // A request that dies before its commit (a crash, a dropped connection): neither
        // the tenant it created nor its idempotency claim survives, and no hook ran.
        let tx = store.begin_request().await.unwrap();
        let claim = tx
            .run(store.claim_idempotent("key1", "idem-1", "sha-a"))
            .await
            .unwrap();
        assert_eq!(claim, Claim::Run);
        let created = tx
            .run(async {
                let t = tenant(&store, "crash.example.com").await;
                // Inside the request its own write is visible (read-your-writes).
                assert_eq!(store.tenant(&t.id).await.unwrap().id, t.id);
                let counter = hooks.clone();
                switchyard_store::after_commit(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                });
                t
            })
            .await;
        drop(tx);
        assert!(
            matches!(
                store.tenant(&created.id).await,
                Err(StoreError::NotFound { .. })
            ),
            "an uncommitted request leaves no tenant"
        );
        assert_eq!(hooks.load(Ordering::SeqCst), 0, "no hook after a rollback");

        // The retry runs afresh (the claim is gone), and this time commits: the tenant and
        // the stored answer are there together, and the hook runs after the commit.
        let tx = store.begin_request().await.unwrap();
        let claim = tx
            .run(store.claim_idempotent("key1", "idem-1", "sha-a"))
            .await
            .unwrap();
        assert_eq!(
            claim,
            Claim::Run,
            "a rolled-back claim does not block the retry"
        );
        let created = tx
            .run(async {
                let t = tenant(&store, "crash.example.com").await;
                let counter = hooks.clone();
                switchyard_store::after_commit(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                });
                store
                    .finish_idempotent("key1", "idem-1", 201, &t.id)
                    .await
                    .unwrap();
                t
            })
            .await;
        assert_eq!(hooks.load(Ordering::SeqCst), 0, "hooks wait for the commit");
        tx.commit().await.unwrap();
        assert_eq!(hooks.load(Ordering::SeqCst), 1);
        assert_eq!(store.tenant(&created.id).await.unwrap().id, created.id);
        assert_eq!(
            store
                .claim_idempotent("key1", "idem-1", "sha-a")
                .await
                .unwrap(),
            Claim::Replay {
                status: 201,
                body: created.id.clone()
            }
        );

        // A refused write inside a request rolls back alone (its savepoint): the request
        // can still store its answer and commit.
        let tx = store.begin_request().await.unwrap();
        tx.run(async {
            assert_eq!(
                store
                    .claim_idempotent("key1", "idem-2", "sha-b")
                    .await
                    .unwrap(),
                Claim::Run
            );
            let dup = store
                .create_tenant(&NewTenant {
                    name: "Again".into(),
                    domain: "crash.example.com".into(),
                    ..NewTenant::default()
                })
                .await
                .unwrap_err();
            assert!(matches!(dup, StoreError::Conflict { .. }), "{dup}");
            store
                .finish_idempotent("key1", "idem-2", 409, "taken")
                .await
                .unwrap();
        })
        .await;
        tx.commit().await.unwrap();
        assert_eq!(
            store
                .claim_idempotent("key1", "idem-2", "sha-b")
                .await
                .unwrap(),
            Claim::Replay {
                status: 409,
                body: "taken".into()
            }
        );
    }
);

on_both!(
    concurrent_request_transactions_with_one_key_run_it_once,
    |store| {
        use switchyard_store::Claim;
        // More requests than pooled connections, all with one key: each holds a request
        // transaction while it claims, so this also shows they never starve each other of
        // connections. Exactly one runs; every other one replays its answer.
        let runs = Arc::new(AtomicI64::new(0));
        let outcomes = futures_join((0..40).map(|i| {
            let store = store.clone();
            let runs = runs.clone();
            async move {
                let tx = store.begin_request().await.unwrap();
                let claim = tx
                    .run(store.claim_idempotent("key1", "same", "sha"))
                    .await
                    .unwrap();
                if claim == Claim::Run {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tx.run(async {
                        tenant(&store, &format!("once{i}.example.com")).await;
                        store
                            .finish_idempotent("key1", "same", 201, "first")
                            .await
                            .unwrap();
                    })
                    .await;
                    tx.commit().await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                claim
            }
        }))
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{outcomes:?}");
        for o in outcomes {
            assert!(
                matches!(o, Claim::Run)
                    || o == Claim::Replay {
                        status: 201,
                        body: "first".into()
                    },
                "{o:?}"
            );
        }
        assert_eq!(store.list_tenants(None, 100).await.unwrap().len(), 1);
    }
);

on_both!(a_domain_must_be_exactly_a_dns_name, |store| {
    for bad in [
        " acme.example.com",
        "acme.example.com\n",
        "acme..example.com",
        "-acme.example.com",
        "acme-.example.com",
        "ac me.example.com",
        "",
    ] {
        let err = store
            .create_tenant(&NewTenant {
                name: "Bad".into(),
                domain: bad.into(),
                ..NewTenant::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Invalid {
                    field: "domain",
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(
        store.list_tenants(None, 10).await.unwrap().len(),
        0,
        "nothing written"
    );
    let ok = tenant(&store, "A-1.Example.COM").await;
    assert_eq!(ok.domain, "a-1.example.com");
});

on_both!(no_extension_takes_an_emergency_number, |store| {
    let t = tenant(&store, "emergency.example.com").await;
    let r = store.add_extension_range(&t.id, 108, 114).await.unwrap();
    // Allocation skips 110 and 112: dialling them must reach the emergency route.
    let mut numbers = Vec::new();
    while let Ok(e) = store.create_extension(&t.id, &ext(&r.id, None)).await {
        numbers.push(e.number);
    }
    assert_eq!(numbers, [108, 109, 111, 113, 114]);
    let other = store.add_extension_range(&t.id, 900, 999).await.unwrap();
    for (number, username) in [(Some(911), None), (Some(999), None), (None, Some("112"))] {
        let e = store
            .create_extension(
                &t.id,
                &NewExtension {
                    username: username.map(str::to_owned),
                    ..ext(&other.id, number)
                },
            )
            .await
            .unwrap_err();
        let expected = if number.is_some() {
            "number"
        } else {
            "username"
        };
        assert!(
            matches!(&e, StoreError::Invalid { field, rule } if *field == expected && rule.contains("emergency")),
            "{e:?}"
        );
    }
    assert_eq!(
        store.extensions(&t.id).await.unwrap().len(),
        5,
        "nothing written"
    );
});

on_both!(
    carriers_keep_canonical_networks_and_refuse_bad_ones,
    |store| {
        let c = store
            .create_carrier("pstn-a", &["192.0.2.10".into(), "2001:DB8::/48".into()])
            .await
            .unwrap();
        assert_eq!(c.addresses, ["192.0.2.10/32", "2001:db8::/48"]);
        assert_eq!(store.carriers().await.unwrap(), std::slice::from_ref(&c));
        assert!(c.networks()[0].contains("192.0.2.10".parse().unwrap()));
        assert!(!c.networks()[0].contains("192.0.2.11".parse().unwrap()));
        for (name, addresses, field) in [
            ("pstn b", vec!["192.0.2.1".to_owned()], "name"),
            ("pstn-b", vec![], "addresses"),
            ("pstn-b", vec!["192.0.2.1/33".to_owned()], "addresses"),
            ("pstn-b", vec!["0.0.0.0/0".to_owned()], "addresses"),
            ("pstn-b", vec!["carrier.example".to_owned()], "addresses"),
        ] {
            match store.create_carrier(name, &addresses).await {
                Err(StoreError::Invalid { field: f, .. }) => {
                    assert_eq!(f, field, "{name} {addresses:?}")
                }
                other => panic!("{name} {addresses:?}: {other:?}"),
            }
        }
        assert!(matches!(
            store
                .create_carrier("pstn-a", &["198.51.100.0/24".into()])
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(
            store.carriers().await.unwrap().len(),
            1,
            "refusals wrote nothing"
        );

        // The numbers the edge routes carrier calls by.
        let t = tenant(&store, "carrier-calls.example.com").await;
        store
            .add_dids(&["+15550001001".into(), "+15550001002".into()])
            .await
            .unwrap();
        let n = store.assign_next_did(&t.id).await.unwrap().number;
        assert_eq!(
            store.assigned_numbers().await.unwrap(),
            [(n, t.id.clone(), t.domain.clone())]
        );

        store.delete_carrier("pstn-a").await.unwrap();
        assert!(store.carriers().await.unwrap().is_empty());
        assert!(matches!(
            store.delete_carrier("pstn-a").await,
            Err(StoreError::NotFound { .. })
        ));
    }
);

on_both!(
    carriers_we_register_to_keep_their_credentials_and_refuse_bad_ones,
    |store| {
        use switchyard_store::CarrierRegistration;
        let registration =
            |registrar: &str, username: &str, password: &str, expires| CarrierRegistration {
                registrar: registrar.into(),
                username: username.into(),
                password: password.into(),
                expires,
            };
        let c = store
            .create_carrier_with(
                "pstn-reg",
                &[],
                Some(registration(
                    "sip.carrier.example:5070",
                    "pbx-1",
                    "s3cret!",
                    300,
                )),
            )
            .await
            .unwrap();
        assert!(c.addresses.is_empty(), "no networks needed");
        let stored = store.carriers().await.unwrap();
        assert_eq!(stored, std::slice::from_ref(&c));
        let r = stored[0].registration.as_ref().unwrap();
        assert_eq!(r.host_port(), ("sip.carrier.example".to_owned(), 5070));
        assert_eq!(r.password, "s3cret!");
        assert_eq!(
            registration("[2001:db8::1]", "u", "p", 600).host_port(),
            ("2001:db8::1".to_owned(), 5060)
        );
        for (registration, why) in [
            (registration("", "u", "p", 600), "registrar"),
            (
                registration("carrier.example:0", "u", "p", 600),
                "registrar",
            ),
            (registration("carrier example", "u", "p", 600), "registrar"),
            (registration("carrier.example", "u@x", "p", 600), "username"),
            (registration("carrier.example", "u", "", 600), "password"),
            (registration("carrier.example", "u", "a b", 600), "password"),
            (registration("carrier.example", "u", "p", 10), "expires"),
        ] {
            match store
                .create_carrier_with("pstn-bad", &[], Some(registration.clone()))
                .await
            {
                Err(StoreError::Invalid { field, rule }) => {
                    assert_eq!(field, "registration");
                    assert!(rule.contains(why), "{registration:?}: {rule}");
                }
                other => panic!("{registration:?}: {other:?}"),
            }
        }
        // A carrier with neither networks nor a registration cannot be recognised.
        assert!(matches!(
            store.create_carrier_with("pstn-bad", &[], None).await,
            Err(StoreError::Invalid { .. })
        ));
        assert_eq!(
            store.carriers().await.unwrap().len(),
            1,
            "refusals wrote nothing"
        );
    }
);

on_both!(
    cdrs_written_in_one_batch_all_read_back_and_a_retried_batch_writes_nothing_twice,
    |store| {
        let t = tenant(&store, "cdrs.example.com").await;
        let cdr = |i: i64| switchyard_store::Cdr {
            id: format!("cdr-{i}"),
            tenant_id: t.id.clone(),
            call_id: format!("call-{i}"),
            from_uri: "sip:100@cdrs.example.com".into(),
            to_uri: "sip:101@cdrs.example.com".into(),
            started_at: 1_000 + i,
            answered_at: (i % 2 == 0).then_some(2_000 + i),
            ended_at: 3_000 + i,
            duration_ms: i,
            disposition: if i % 2 == 0 { "answered" } else { "busy" }.into(),
            hangup_side: Some("caller".into()),
            legs: format!("[{{\"n\": {i}}}]"),
        };
        // More than one statement's worth, and one record written before (a batch
        // retried after a commit whose answer was lost).
        store.insert_cdr(&cdr(7)).await.unwrap();
        let batch: Vec<_> = (0..300).map(cdr).collect();
        store.insert_cdrs(&batch).await.unwrap();
        store.insert_cdrs(&batch).await.unwrap();
        let mut read = store.cdrs(&t.id, None, 1000).await.unwrap();
        read.sort_by_key(|c| c.started_at);
        assert_eq!(read, batch, "every record once, every field as written");
    }
);
