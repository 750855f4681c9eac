//! The location service, in memory and on the real Redis at 127.0.0.1:6379
//! (`SWITCHYARD_TEST_REDIS` overrides): the same rules on both. Redis is never skipped.

mod common;

use switchyard_state::{Binding, BindingLimits, Locations, StateError};
use switchyard_types::TenantId;

fn binding(contact: &str, expires_at_ms: i64, call_id: &str, cseq: u32) -> Binding {
    Binding {
        contact: contact.to_owned(),
        expires_at_ms,
        flow: Some("tcp:7".into()),
        source: "127.0.0.1:5062".into(),
        call_id: call_id.to_owned(),
        cseq,
        path: Vec::new(),
        instance: None,
    }
}

async fn redis() -> Locations {
    let url = common::redis_url();
    Locations::redis(&url, &common::unique_prefix())
        .await
        .unwrap_or_else(|e| panic!("{}", common::required(&url, e)))
}

async fn rules_hold(l: Locations) {
    let acme = TenantId::from("acme");
    let other = TenantId::from("other");
    let now = 1_000_000;
    l.register(
        &acme,
        "sip:1000@acme.example.com",
        binding("sip:1000@10.0.0.1", now + 60_000, "c1", 1),
        BindingLimits::per_aor(2),
        now,
    )
    .await
    .unwrap();
    l.register(
        &acme,
        "sip:1000@acme.example.com",
        binding("sip:1000@10.0.0.2", now + 30_000, "c2", 1),
        BindingLimits::per_aor(2),
        now,
    )
    .await
    .unwrap();
    // A third contact is refused: the extension allows two.
    let e = l
        .register(
            &acme,
            "sip:1000@acme.example.com",
            binding("sip:1000@10.0.0.3", now + 60_000, "c3", 1),
            BindingLimits::per_aor(2),
            now,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::TooManyContacts(2)), "{e}");
    // A refresh replaces by contact; an old CSeq of the same Call-ID is refused.
    l.register(
        &acme,
        "sip:1000@acme.example.com",
        binding("sip:1000@10.0.0.1", now + 90_000, "c1", 2),
        BindingLimits::per_aor(2),
        now,
    )
    .await
    .unwrap();
    let e = l
        .register(
            &acme,
            "sip:1000@acme.example.com",
            binding("sip:1000@10.0.0.1", now + 99_000, "c1", 2),
            BindingLimits::per_aor(2),
            now,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::OutOfOrder), "{e}");
    let live = l
        .lookup(&acme, "SIP:1000@acme.example.com", now)
        .await
        .unwrap();
    assert_eq!(live.len(), 2);
    assert_eq!(live[0].expires_at_ms, now + 90_000);
    assert_eq!(live[0].flow.as_deref(), Some("tcp:7"));
    // Another tenant never sees them, even for the same AoR text.
    assert!(
        l.lookup(&other, "sip:1000@acme.example.com", now)
            .await
            .unwrap()
            .is_empty()
    );
    // Lapsed bindings are gone, and free their slot.
    let later = now + 40_000;
    assert_eq!(
        l.lookup(&acme, "sip:1000@acme.example.com", later)
            .await
            .unwrap()
            .len(),
        1
    );
    l.register(
        &acme,
        "sip:1000@acme.example.com",
        binding("sip:1000@10.0.0.3", later + 60_000, "c3", 1),
        BindingLimits::per_aor(2),
        later,
    )
    .await
    .unwrap();
    l.unregister(&acme, "sip:1000@acme.example.com", "sip:1000@10.0.0.3")
        .await
        .unwrap();
    assert_eq!(
        l.lookup(&acme, "sip:1000@acme.example.com", later)
            .await
            .unwrap()
            .len(),
        1
    );
    l.unregister_all(&acme, "sip:1000@acme.example.com")
        .await
        .unwrap();
    assert!(
        l.lookup(&acme, "sip:1000@acme.example.com", later)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn memory_locations_follow_the_rules() {
    rules_hold(Locations::memory()).await;
}

#[tokio::test]
async fn redis_locations_follow_the_same_rules() {
    rules_hold(redis().await).await;
}

#[tokio::test]
async fn concurrent_registrations_never_exceed_the_limit_in_redis() {
    let l = std::sync::Arc::new(redis().await);
    let tenant = TenantId::from("acme");
    let now = 5_000_000;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (l, tenant) = (l.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            l.register(
                &tenant,
                "sip:2000@acme.example.com",
                binding(
                    &format!("sip:2000@10.0.1.{i}"),
                    now + 60_000,
                    &format!("c{i}"),
                    1,
                ),
                BindingLimits::per_aor(3),
                now,
            )
            .await
            .is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 3);
    assert_eq!(
        l.lookup(&tenant, "sip:2000@acme.example.com", now)
            .await
            .unwrap()
            .len(),
        3
    );
}

/// The tenant's cap counts live contacts of every AoR: refreshes always pass, a new
/// contact is refused at the cap, and removal or expiry frees a slot.
async fn tenant_cap_holds(l: Locations) {
    let acme = TenantId::from("acme");
    let limits = BindingLimits {
        per_aor: 5,
        per_tenant: 3,
    };
    let now = 1_000_000;
    for (i, expires) in [(1, 60_000), (2, 60_000), (3, 10_000)] {
        l.register(
            &acme,
            &format!("sip:{i}@acme.example.com"),
            binding(&format!("sip:{i}@10.0.0.{i}"), now + expires, "c", 1),
            limits,
            now,
        )
        .await
        .unwrap();
    }
    let fourth = |at: i64| binding("sip:4@10.0.0.4", at + 60_000, "c", 1);
    let e = l
        .register(&acme, "sip:4@acme.example.com", fourth(now), limits, now)
        .await
        .unwrap_err();
    assert!(matches!(e, StateError::TenantFull(3)), "{e}");
    assert_eq!(l.tenant_contacts(&acme, now).await.unwrap(), 3);
    // A refresh of a live contact passes at the cap.
    l.register(
        &acme,
        "sip:1@acme.example.com",
        binding("sip:1@10.0.0.1", now + 90_000, "c", 2),
        limits,
        now,
    )
    .await
    .unwrap();
    // Other tenants are not counted.
    l.register(
        &TenantId::from("other"),
        "sip:4@other.example.com",
        fourth(now),
        limits,
        now,
    )
    .await
    .unwrap();
    // Contact 3 lapses: its slot is free.
    let later = now + 20_000;
    l.register(
        &acme,
        "sip:4@acme.example.com",
        fourth(later),
        limits,
        later,
    )
    .await
    .unwrap();
    // Removing one frees a slot, one contact or all of an AoR.
    l.unregister(&acme, "sip:4@acme.example.com", "sip:4@10.0.0.4")
        .await
        .unwrap();
    l.unregister_all(&acme, "sip:2@acme.example.com")
        .await
        .unwrap();
    assert_eq!(l.tenant_contacts(&acme, later).await.unwrap(), 1);
    for i in 5..7 {
        l.register(
            &acme,
            &format!("sip:{i}@acme.example.com"),
            binding(&format!("sip:{i}@10.0.0.{i}"), later + 60_000, "c", 1),
            limits,
            later,
        )
        .await
        .unwrap();
    }
    assert!(
        l.register(
            &acme,
            "sip:4@acme.example.com",
            fourth(later),
            limits,
            later
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn memory_tenant_cap_counts_every_aor() {
    tenant_cap_holds(Locations::memory()).await;
}

#[tokio::test]
async fn redis_tenant_cap_counts_every_aor() {
    tenant_cap_holds(redis().await).await;
}

/// Registrations made at the same moment reach Redis in one pipeline (one round trip), and
/// each still gets its own answer, in the order they were made: within one batch the
/// AoR's limit refuses exactly the contact that came after the limit was reached, and
/// every answer lists the AoR's live contacts as its write left them.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_registrations_share_one_round_trip() {
    let l = std::sync::Arc::new(redis().await);
    let acme = TenantId::from("acme");
    let now = 1_000_000;
    // On one thread the writes are spawned in order, and each queues its registration
    // before the writer task (woken by the first) gets its turn.
    let writes: Vec<_> = (0..200)
        .map(|i| {
            let (l, acme) = (l.clone(), acme.clone());
            tokio::spawn(async move {
                // AoRs 0..100 get one contact each; AoR "shared" gets contacts until its limit of 3.
                let (aor, limit) = if i < 100 {
                    (format!("sip:{i}@acme.example.com"), 1)
                } else {
                    ("sip:shared@acme.example.com".to_owned(), 3)
                };
                let contact = format!("sip:{i}@10.0.0.1");
                l.register(
                    &acme,
                    &aor,
                    binding(&contact, now + 60_000, &format!("c{i}"), 1),
                    BindingLimits::per_aor(limit),
                    now,
                )
                .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for w in writes {
        answers.push(w.await.unwrap());
    }
    let stats = l.batch_stats().expect("Redis keeps batch stats");
    assert_eq!((stats.batches(), stats.writes()), (1, 200));
    for (i, answer) in answers.iter().enumerate().take(100) {
        let live = answer
            .as_ref()
            .expect("one contact per AoR is within the limit");
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].contact, format!("sip:{i}@10.0.0.1"));
    }
    for (i, answer) in answers.iter().enumerate().skip(100) {
        match (i, answer) {
            (100..=102, Ok(live)) => assert_eq!(live.len(), i - 99, "contact {i}"),
            (103.., Err(StateError::TooManyContacts(3))) => {}
            (i, other) => panic!("contact {i}: unexpected {other:?}"),
        }
    }
    let shared = l
        .lookup(&acme, "sip:shared@acme.example.com", now)
        .await
        .unwrap();
    let contacts: Vec<&str> = shared.iter().map(|b| b.contact.as_str()).collect();
    assert_eq!(
        contacts,
        ["sip:100@10.0.0.1", "sip:101@10.0.0.1", "sip:102@10.0.0.1"]
    );
}

/// A Redis that lost its script cache (restart, `SCRIPT FLUSH`) still takes writes: each
/// batch loads the script before it runs.
#[tokio::test]
async fn registrations_survive_a_script_flush() {
    let l = redis().await;
    let acme = TenantId::from("acme");
    let now = 1_000_000;
    let aor = "sip:1000@acme.example.com";
    l.register(
        &acme,
        aor,
        binding("sip:1000@10.0.0.1", now + 60_000, "c1", 1),
        BindingLimits::per_aor(2),
        now,
    )
    .await
    .unwrap();
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let live = l
        .register(
            &acme,
            aor,
            binding("sip:1000@10.0.0.2", now + 60_000, "c2", 1),
            BindingLimits::per_aor(2),
            now,
        )
        .await
        .unwrap();
    assert_eq!(live.len(), 2);
}
