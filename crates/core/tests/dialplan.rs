//! The dial plan read from a real store (SQLite): what the API provisions is what the
//! plan decides on, and one tenant's numbers and routes never appear in another's plan.

use switchyard_core::dialplan::{Destination, DialPlan, caller_id};
use switchyard_store::{NewExtension, NewTenant, ResourceKind, Store, Target};

async fn tenant(store: &Store, domain: &str) -> (String, String) {
    let t = store
        .create_tenant(&NewTenant {
            name: domain.into(),
            domain: domain.into(),
            ..NewTenant::default()
        })
        .await
        .unwrap();
    let range = store.add_extension_range(&t.id, 1000, 1099).await.unwrap();
    let ext = store
        .create_extension(
            &t.id,
            &NewExtension {
                range_id: range.id,
                number: Some(1000),
                display_name: "Reception".into(),
                username: None,
                password: "a-long-password".into(),
                voicemail: false,
            },
        )
        .await
        .unwrap();
    (t.id, ext.id)
}

#[tokio::test]
async fn the_plan_is_what_was_provisioned_and_only_the_tenants_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("sy.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let (a, a_ext) = tenant(&store, "a.example.com").await;
    let (b, _) = tenant(&store, "b.example.com").await;
    store
        .add_dids(&["+493000000001".into(), "+493000000002".into()])
        .await
        .unwrap();
    let a_number = store.assign_next_did(&a).await.unwrap().number;
    let b_number = store.assign_next_did(&b).await.unwrap().number;
    store
        .set_did_target(&a, &a_number, &Target::Extension(a_ext.clone()))
        .await
        .unwrap();
    let trunk = store
        .create_resource(
            &b,
            ResourceKind::Trunk,
            "carrier",
            serde_json::json!({"host": "sip.carrier.example", "port": 5060, "transport": "udp",
                "username": null, "password": null, "codecs": ["PCMU"], "max_channels": 10}),
        )
        .await
        .unwrap();
    store
        .create_resource(
            &b,
            ResourceKind::OutboundRoute,
            "national",
            serde_json::json!({"pattern": "0Z.", "trunk_id": trunk.id, "strip_digits": 1,
                "prefix": "+49", "priority": 10}),
        )
        .await
        .unwrap();

    let plan_a = DialPlan::of(&store.tenant_config(&a).await.unwrap());
    let plan_b = DialPlan::of(&store.tenant_config(&b).await.unwrap());
    assert_eq!(
        plan_a.decide(&a_number),
        Destination::OwnNumber {
            number: a_number.clone(),
            target: Some(Target::Extension(a_ext))
        }
    );
    // B's number is not A's: without an outbound route A cannot reach it at all.
    assert_eq!(plan_a.decide(&b_number), Destination::NoRoute);
    assert_eq!(plan_a.decide("030123456"), Destination::NoRoute);
    // B calls out through its own route and trunk.
    let Destination::External(attempts) = plan_b.decide("030123456") else {
        panic!("B has a national route");
    };
    assert_eq!(
        (attempts[0].trunk_id.as_str(), attempts[0].number.as_str()),
        (trunk.id.as_str(), "+4930123456")
    );
    // Each presents only its own number, whatever it asks for.
    assert_eq!(caller_id(&plan_a, Some(&b_number)), Some(a_number.as_str()));
    assert_eq!(caller_id(&plan_b, Some(&a_number)), Some(b_number.as_str()));
}
