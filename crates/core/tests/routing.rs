//! The routing step of a new call against real parts: a SQLite store, the in-process
//! media node and the memory location service. What the dial plan decides is what the
//! caller gets, a number of the tenant reaches the extension it points at, and a refused
//! call leaves no media session behind.

use std::sync::Arc;

use switchyard_core::cache::ConfigCache;
use switchyard_core::routing::{RouteDeps, RouteRequest, route_call};
use switchyard_media::{MediaConfig, MediaNode};
use switchyard_state::calls::LiveCalls;
use switchyard_state::{Binding, BindingLimits, Locations};
use switchyard_store::{ExtensionChanges, NewExtension, NewTenant, ResourceKind, Store, Target};
use switchyard_types::TenantId;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
const NOW_MS: i64 = 1_800_000_000_000;

struct Tenant {
    id: String,
    reception: String,
    second: String,
    number: String,
}

async fn tenant(store: &Store, domain: &str, did: &str) -> Tenant {
    let t = store
        .create_tenant(&NewTenant {
            name: domain.into(),
            domain: domain.into(),
            ..NewTenant::default()
        })
        .await
        .unwrap();
    let range = store.add_extension_range(&t.id, 1000, 1099).await.unwrap();
    let mut ids = Vec::new();
    for number in [1000, 1001] {
        let ext = store
            .create_extension(
                &t.id,
                &NewExtension {
                    range_id: range.id.clone(),
                    number: Some(number),
                    display_name: format!("Ext {number}"),
                    username: None,
                    password: "a-long-password".into(),
                    voicemail: false,
                },
            )
            .await
            .unwrap();
        ids.push(ext.id);
    }
    store.add_dids(&[did.into()]).await.unwrap();
    let number = store.assign_next_did(&t.id).await.unwrap().number;
    store
        .set_did_target(&t.id, &number, &Target::Extension(ids[0].clone()))
        .await
        .unwrap();
    Tenant {
        id: t.id,
        reception: ids[0].clone(),
        second: ids[1].clone(),
        number,
    }
}

fn binding(contact: &str) -> Binding {
    Binding {
        contact: contact.into(),
        expires_at_ms: NOW_MS + 3_600_000,
        flow: Some("<sip:token@127.0.0.1:5070;lr>".into()),
        source: "UDP 127.0.0.1:40000".into(),
        call_id: "reg".into(),
        cseq: 1,
        path: Vec::new(),
        instance: None,
    }
}

#[tokio::test]
async fn calls_route_by_the_dial_plan_and_refusals_leave_no_media_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("sy.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let a = tenant(&store, "a.example.com", "+493000000001").await;
    let b = tenant(&store, "b.example.com", "+493000000002").await;
    let locations = Arc::new(Locations::memory());
    let limits = BindingLimits {
        per_aor: 5,
        per_tenant: 100,
    };
    for (t, domain) in [(&a, "a.example.com"), (&b, "b.example.com")] {
        locations
            .register(
                &TenantId::new(t.id.clone()),
                &switchyard_state::aor("1000", domain),
                binding(&format!("sip:1000@{domain}-phone")),
                limits,
                NOW_MS,
            )
            .await
            .unwrap();
    }
    // More numbers of A, each pointing at another kind of target.
    let resource = |kind, name: &str, spec: serde_json::Value| {
        let (store, a) = (store.clone(), a.id.clone());
        let name = name.to_owned();
        async move {
            store
                .create_resource(&a, kind, &name, spec)
                .await
                .unwrap()
                .id
        }
    };
    let everyone = resource(
        ResourceKind::RingGroup,
        "everyone",
        serde_json::json!({"strategy": "simultaneous", "members": [a.reception, a.second], "ring_seconds": 20}),
    )
    .await;
    let hunt = resource(
        ResourceKind::RingGroup,
        "hunt",
        serde_json::json!({"strategy": "sequential", "members": [a.second, a.reception], "ring_seconds": 15}),
    )
    .await;
    let rotating = resource(
        ResourceKind::RingGroup,
        "rotating",
        serde_json::json!({"strategy": "round_robin", "members": [a.reception, a.second], "ring_seconds": 15}),
    )
    .await;
    // Open Monday to Friday 09:00-17:00 in Berlin: the reception; closed: declined.
    let office = resource(
        ResourceKind::TimeCondition,
        "office-hours",
        serde_json::json!({"timezone": "Europe/Berlin",
            "rules": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}],
            "open_target": {"kind": "extension", "id": a.reception},
            "closed_target": {"kind": "hangup"}}),
    )
    .await;
    let mailbox = resource(
        ResourceKind::VoicemailBox,
        "reception-box",
        serde_json::json!({"extension_id": a.reception, "pin": "4711", "greeting": null, "max_messages": 50}),
    )
    .await;
    let mut numbers = Vec::new();
    for (i, target) in [
        Target::RingGroup(everyone),
        Target::RingGroup(hunt),
        Target::TimeCondition(office),
        Target::VoicemailBox(mailbox),
        Target::RingGroup(rotating),
    ]
    .into_iter()
    .enumerate()
    {
        let n = format!("+49300000001{i}");
        store.add_dids(std::slice::from_ref(&n)).await.unwrap();
        let n = store.assign_next_did(&a.id).await.unwrap().number;
        store.set_did_target(&a.id, &n, &target).await.unwrap();
        numbers.push(n);
    }
    let [
        group_number,
        hunt_number,
        office_number,
        mailbox_number,
        rotating_number,
    ] = <[String; 5]>::try_from(numbers).unwrap();

    let media = MediaNode::new(MediaConfig {
        bind: "127.0.0.1".parse().unwrap(),
        advertise: "127.0.0.1".parse().unwrap(),
        port_min: 42000,
        port_max: 42100,
        ..MediaConfig::default()
    });
    let deps = RouteDeps {
        cache: ConfigCache::new(store.clone()),
        locations,
        media: Arc::new(media.clone()),
        channels: Arc::new(LiveCalls::memory()),
        turns: Default::default(),
    };
    let call = |tenant: &Tenant, dialled: &str, session: &str| RouteRequest {
        tenant_id: tenant.id.clone(),
        caller: "1001".into(),
        carrier: None,
        dialled: dialled.into(),
        sdp: SDP.into(),
        session: session.into(),
        leg_b: format!("{session}-b"),
    };

    // The tenant's own number, dialled with or without +, reaches the extension it
    // points at, with that extension's contacts.
    for (i, dialled) in [
        a.number.clone(),
        a.number.trim_start_matches('+').to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let routed = route_call(deps.clone(), call(&a, dialled, &format!("did-{i}")), NOW_MS)
            .await
            .unwrap();
        assert_eq!(routed.callee().unwrap().id, a.reception);
        assert_eq!(routed.bindings()[0].contact, "sip:1000@a.example.com-phone");
        assert_eq!(routed.caller_ext.unwrap().number, 1001);
        assert!(routed.offer_b.contains("m=audio"));
    }
    assert_eq!(
        media.session_count(),
        2,
        "each routed call holds its session"
    );

    // Refusals, each with its answer; none keeps a media session.
    let refused = [
        ("2001", 404),                  // short, no such extension
        (b.number.as_str(), 403),       // another tenant's number: no route out
        ("004930123456", 403),          // external, the tenant has no outbound route
        ("112", 503),                   // emergency without a trunk: said loudly
        (mailbox_number.as_str(), 480), // voicemail: not there yet
        ("1001", 480),                  // an extension with no contact
    ];
    for (dialled, status) in refused {
        let refusal = route_call(deps.clone(), call(&a, dialled, dialled), NOW_MS)
            .await
            .unwrap_err();
        assert_eq!(refusal.status, status, "{dialled}: {refusal:?}");
        assert!(refusal.attempted);
    }
    assert_eq!(media.session_count(), 2, "refused calls leave no session");

    // A simultaneous group rings every member's contacts (1001 has none) for its time.
    let routed = route_call(deps.clone(), call(&a, &group_number, "group"), NOW_MS)
        .await
        .unwrap();
    assert_eq!(routed.ring_seconds, Some(20));
    let contacts: Vec<&str> = routed
        .bindings()
        .iter()
        .map(|b| b.contact.as_str())
        .collect();
    assert_eq!(contacts, ["sip:1000@a.example.com-phone"]);

    // A sequential group starts with its first member that has a contact (1001 has
    // none): 1000, for the group's time, with nobody left to hunt.
    let routed = route_call(deps.clone(), call(&a, &hunt_number, "hunt"), NOW_MS)
        .await
        .unwrap();
    assert_eq!(routed.callee().unwrap().id, a.reception);
    assert_eq!(routed.ring_seconds, Some(15));
    assert!(routed.hunt.is_empty(), "{:?}", routed.hunt);

    // A round-robin group starts each call one member further: 1000 then 1001 next, then
    // 1001 (no contact, so 1000 with nobody after it), then 1000 again.
    let mut hunts = Vec::new();
    for i in 0..3 {
        let routed = route_call(
            deps.clone(),
            call(&a, &rotating_number, &format!("rr-{i}")),
            NOW_MS,
        )
        .await
        .unwrap();
        assert_eq!(routed.callee().unwrap().id, a.reception);
        hunts.push(routed.hunt.clone());
    }
    assert_eq!(
        hunts,
        [vec!["1001".to_owned()], vec![], vec!["1001".to_owned()]]
    );

    // The time condition follows the engine's clock, in Berlin: Monday 2026-12-07 at
    // 10:00 local (09:00 UTC) is open, 18:00 local is closed.
    let at = |text: &str| text.parse::<jiff::Timestamp>().unwrap().as_millisecond();
    let open = route_call(
        deps.clone(),
        call(&a, &office_number, "open"),
        at("2026-12-07T09:00:00Z"),
    )
    .await
    .unwrap();
    assert_eq!(open.callee().unwrap().id, a.reception);
    let closed = route_call(
        deps.clone(),
        call(&a, &office_number, "closed"),
        at("2026-12-07T17:00:00Z"),
    )
    .await
    .unwrap_err();
    assert_eq!((closed.status, closed.reason.as_str()), (603, "Declined"));
    assert_eq!(media.session_count(), 8);

    // Forward always: 1001 (no contact) to 1000 rings 1000; a loop and a forward to a
    // number outside the tenant are refused. Each change is read fresh (a new cache, as
    // a change event would make it).
    let forward = |ext: String, to: &str| {
        let (store, a) = (store.clone(), a.id.clone());
        let to = to.to_owned();
        async move {
            store
                .update_extension(
                    &a,
                    &ext,
                    &ExtensionChanges {
                        forward_always: Some(to),
                        ..ExtensionChanges::default()
                    },
                )
                .await
                .unwrap();
        }
    };
    let fresh = || RouteDeps {
        cache: ConfigCache::new(store.clone()),
        ..deps.clone()
    };
    forward(a.second.clone(), "1000").await;
    let routed = route_call(fresh(), call(&a, "1001", "forwarded"), NOW_MS)
        .await
        .unwrap();
    assert_eq!(
        routed.callee().unwrap().id,
        a.reception,
        "1001 forwards to 1000"
    );
    assert_eq!(routed.bindings()[0].contact, "sip:1000@a.example.com-phone");
    forward(a.reception.clone(), "1001").await;
    let looped = route_call(fresh(), call(&a, "1001", "loop"), NOW_MS)
        .await
        .unwrap_err();
    assert_eq!(looped.status, 482);
    forward(a.reception.clone(), "").await;
    forward(a.second.clone(), "+4930999888").await;
    let out = route_call(fresh(), call(&a, "1001", "out"), NOW_MS)
        .await
        .unwrap_err();
    assert_eq!(out.status, 480);
    assert_eq!(media.session_count(), 9, "refusals leave no session");

    // B's extension 1000 is B's: A's caller never reaches B's phone by its number.
    let routed = route_call(deps.clone(), call(&b, "1000", "b-call"), NOW_MS)
        .await
        .unwrap();
    assert_eq!(routed.bindings()[0].contact, "sip:1000@b.example.com-phone");
    assert_eq!(routed.callee().unwrap().id, b.reception);

    let unknown = route_call(
        deps.clone(),
        RouteRequest {
            tenant_id: "no-such-tenant".into(),
            ..call(&a, "1000", "x")
        },
        NOW_MS,
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.status, 500);
    assert!(!unknown.attempted);
}

/// External and emergency numbers go out through the tenant's routes: the first route
/// whose trunk has a channel free carries the call (the rest stay for failover), the
/// caller ID is the tenant's own number, a full trunk passes the call to the next route,
/// an emergency call holds no channel and goes out on a full trunk, and a tenant without
/// a number to present cannot call out. A refusal leaves no channel and no session.
#[tokio::test]
async fn external_numbers_go_out_through_the_first_trunk_with_a_channel_free() {
    use switchyard_core::routing::{Reroute, Ring, forward_to, trunk_channels};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("sy.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let a = tenant(&store, "a.example.com", "+493000000001").await;
    let trunk = |name: &'static str, host: &'static str, channels: u32| {
        let (store, a) = (store.clone(), a.id.clone());
        async move {
            store
                .create_resource(
                    &a,
                    ResourceKind::Trunk,
                    name,
                    serde_json::json!({"host": host, "port": 5080, "transport": "udp",
                        "codecs": ["PCMU"], "max_channels": channels,
                        "username": null, "password": null}),
                )
                .await
                .unwrap()
                .id
        }
    };
    let small = trunk("small", "127.0.0.4", 1).await;
    let big = trunk("big", "127.0.0.5", 10).await;
    for (name, pattern, trunk, priority) in [
        ("first", "00.", &small, 1),
        ("second", "00.", &big, 2),
        ("emergency", "112", &small, 1),
    ] {
        store
            .create_resource(
                &a.id,
                ResourceKind::OutboundRoute,
                name,
                serde_json::json!({"pattern": pattern, "trunk_id": trunk,
                    "strip_digits": if pattern == "112" { 0 } else { 2 },
                    "prefix": if pattern == "112" { "" } else { "+" },
                    "priority": priority}),
            )
            .await
            .unwrap();
    }
    let media = MediaNode::new(MediaConfig {
        bind: "127.0.0.1".parse().unwrap(),
        advertise: "127.0.0.1".parse().unwrap(),
        port_min: 42200,
        port_max: 42300,
        ..MediaConfig::default()
    });
    let channels = Arc::new(LiveCalls::memory());
    let deps = RouteDeps {
        cache: ConfigCache::new(store.clone()),
        locations: Arc::new(Locations::memory()),
        media: Arc::new(media.clone()),
        channels: channels.clone(),
        turns: Default::default(),
    };
    let call = |dialled: &str, session: &str| RouteRequest {
        tenant_id: a.id.clone(),
        caller: "1001".into(),
        carrier: None,
        dialled: dialled.into(),
        sdp: SDP.into(),
        session: session.into(),
        leg_b: format!("{session}-b"),
    };
    let held = |trunk: &str| {
        let channels = channels.clone();
        let trunk = trunk_channels(trunk);
        async move { channels.active(&trunk, NOW_MS).await.unwrap() }
    };

    let first = route_call(deps.clone(), call("004930123456", "out-1"), NOW_MS)
        .await
        .unwrap();
    assert_eq!(first.presented.as_deref(), Some(a.number.as_str()));
    let Ring::Trunk { leg, rest, .. } = &first.ring else {
        panic!("{:?}", first.ring)
    };
    assert_eq!(leg.trunk_id, small);
    assert_eq!(leg.request_uri(), "sip:+4930123456@127.0.0.4:5080");
    assert_eq!(leg.dest, "127.0.0.4:5080".parse().unwrap());
    assert!(leg.holds_channel);
    assert_eq!(rest.len(), 1, "the second route stays for failover");
    assert_eq!(held(&small).await, 1);

    // The small trunk is full: the next call goes out on the big one.
    let second = route_call(deps.clone(), call("004930123457", "out-2"), NOW_MS)
        .await
        .unwrap();
    let Ring::Trunk { leg, rest, .. } = &second.ring else {
        panic!()
    };
    assert_eq!((leg.trunk_id.as_str(), rest.len()), (big.as_str(), 0));

    // Emergency: out on the full trunk, holding no channel.
    let emergency = route_call(deps.clone(), call("112", "sos"), NOW_MS)
        .await
        .unwrap();
    let Ring::Trunk { leg, emergency, .. } = &emergency.ring else {
        panic!()
    };
    assert!(*emergency && !leg.holds_channel);
    assert_eq!(leg.trunk_id, small);
    assert_eq!(held(&small).await, 1);

    // Failover from the small trunk: the big one, once the small one's channel is back.
    let next = forward_to(
        &deps,
        &first.config,
        &a.id,
        "out-1-b",
        &Reroute::Failover {
            rest: match &first.ring {
                Ring::Trunk { rest, .. } => rest.clone(),
                _ => unreachable!(),
            },
            dialled: "004930123456".into(),
            emergency: false,
        },
        NOW_MS,
    )
    .await
    .unwrap();
    let Ring::Trunk { leg, .. } = next else {
        panic!()
    };
    assert_eq!(leg.trunk_id, big);
    assert_eq!(held(&big).await, 2);

    // The caller's own choice of number, else the tenant's: each must be the tenant's.
    store.add_dids(&["+493000000009".into()]).await.unwrap();
    let second_number = store.assign_next_did(&a.id).await.unwrap().number;
    let presented = |deps: RouteDeps, session: &'static str| {
        let request = call("004930123459", session);
        async move {
            let routed = route_call(deps, request, NOW_MS).await.unwrap();
            routed.presented.clone().unwrap()
        }
    };
    let fresh = || RouteDeps {
        cache: ConfigCache::new(store.clone()),
        ..deps.clone()
    };
    store
        .update_tenant(
            &a.id,
            &switchyard_store::TenantChanges {
                caller_id: Some(second_number.clone()),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(presented(fresh(), "cid-tenant").await, second_number);
    store
        .update_extension(
            &a.id,
            &a.second,
            &ExtensionChanges {
                caller_id: Some(a.number.clone()),
                ..ExtensionChanges::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        presented(fresh(), "cid-extension").await,
        a.number,
        "1001's own choice"
    );
    let foreign = store
        .update_extension(
            &a.id,
            &a.second,
            &ExtensionChanges {
                caller_id: Some("+493000000077".into()),
                ..ExtensionChanges::default()
            },
        )
        .await
        .unwrap_err();
    assert!(foreign.to_string().contains("caller_id"), "{foreign}");
    store
        .release_did(&a.id, &second_number, NOW_MS + 86_400_000, None)
        .await
        .unwrap();

    // A tenant with no number of its own cannot call out (emergency calls still can).
    store
        .release_did(&a.id, &a.number, NOW_MS + 86_400_000, None)
        .await
        .unwrap();
    let bare = RouteDeps {
        cache: ConfigCache::new(store.clone()),
        ..deps.clone()
    };
    let sessions = media.session_count();
    let refused = route_call(bare.clone(), call("004930123458", "bare"), NOW_MS)
        .await
        .unwrap_err();
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(media.session_count(), sessions, "no session left");
    assert!(route_call(bare, call("112", "sos-2"), NOW_MS).await.is_ok());
}
