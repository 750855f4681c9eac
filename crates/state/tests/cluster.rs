//! Cluster membership on the real Redis: records appear with their heartbeat, vanish when
//! they stop, and carry drain requests.

mod common;

use switchyard_state::cluster::{Member, Membership, NodeState, Role};

async fn membership(prefix: &str) -> Membership {
    let url = common::redis_url();
    Membership::redis(&url, prefix)
        .await
        .unwrap_or_else(|e| panic!("{}", common::required(&url, e)))
}

fn core(id: &str, seen_ms: i64) -> Member {
    Member {
        id: id.into(),
        role: Role::Core,
        addr: "10.0.0.5:5070".into(),
        pool: String::new(),
        capacity: 0,
        load: 3,
        state: NodeState::Active,
        seen_ms,
    }
}

#[tokio::test]
async fn members_live_while_they_beat_and_leave_when_they_stop() {
    let prefix = common::unique_prefix();
    let m = membership(&prefix).await;
    m.heartbeat(&core("core-b", 1), 60_000).await.unwrap();
    m.heartbeat(&core("core-a", 1), 300).await.unwrap();
    let media = Member {
        role: Role::Media,
        pool: "gold".into(),
        ..core("media-1", 1)
    };
    m.heartbeat(&media, 60_000).await.unwrap();
    let cores = m.members(Role::Core).await.unwrap();
    assert_eq!(
        cores.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["core-a", "core-b"]
    );
    assert_eq!(cores[1], core("core-b", 1));
    assert_eq!(m.members(Role::Media).await.unwrap(), vec![media]);
    // core-a stops beating: gone once its record expires (and pruned from the index).
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let cores = m.members(Role::Core).await.unwrap();
    assert_eq!(
        cores.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["core-b"]
    );
    // A clean stop leaves at once.
    m.leave(Role::Core, "core-b").await.unwrap();
    assert!(m.members(Role::Core).await.unwrap().is_empty());
    m.leave(Role::Media, "media-1").await.unwrap();
}

#[tokio::test]
async fn a_drain_request_is_seen_by_its_node_only_until_lifted() {
    let prefix = common::unique_prefix();
    let m = membership(&prefix).await;
    assert!(!m.drain_requested("core-a").await.unwrap());
    m.set_drain("core-a", true).await.unwrap();
    assert!(m.drain_requested("core-a").await.unwrap());
    assert!(!m.drain_requested("core-b").await.unwrap());
    m.set_drain("core-a", false).await.unwrap();
    assert!(!m.drain_requested("core-a").await.unwrap());
}

#[tokio::test]
async fn a_dialog_record_is_found_by_either_legs_call_id_until_deleted() {
    use switchyard_state::dialogs::DialogStore;
    let url = common::redis_url();
    let d = DialogStore::redis(&url, &common::unique_prefix())
        .await
        .unwrap_or_else(|e| panic!("{}", common::required(&url, e)));
    assert_eq!(d.get("a-leg").await.unwrap(), None);
    d.put("a-leg", "b-leg", "{\"v\":1}", 60).await.unwrap();
    assert_eq!(d.get("a-leg").await.unwrap().as_deref(), Some("{\"v\":1}"));
    assert_eq!(d.get("b-leg").await.unwrap().as_deref(), Some("{\"v\":1}"));
    // A later write replaces it.
    d.put("a-leg", "b-leg", "{\"v\":2}", 60).await.unwrap();
    assert_eq!(d.get("b-leg").await.unwrap().as_deref(), Some("{\"v\":2}"));
    d.delete("a-leg", "b-leg").await.unwrap();
    assert_eq!(d.get("a-leg").await.unwrap(), None);
    assert_eq!(d.get("b-leg").await.unwrap(), None);
}
