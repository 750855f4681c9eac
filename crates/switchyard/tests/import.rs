//! `switchyard import`: running it twice changes nothing, CSV and JSON give the same state,
//! and an import killed half-way (SIGKILL) then run again ends exactly like one that ran
//! without interruption.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_store::Store;

fn write_json(dir: &Path, tenants: usize, extensions: usize, dids: usize) -> std::path::PathBuf {
    let numbers: Vec<String> = (0..tenants * dids + 3)
        .map(|n| format!("+1800555{n:04}"))
        .collect();
    let tenants: Vec<_> = (0..tenants)
        .map(|i| {
            json!({
                "name": format!("Tenant {i}"),
                "domain": format!("t{i}.import.example.com"),
                "ranges": [{"first_number": 100, "last_number": 199}, {"first_number": 500, "last_number": 599}],
                "extensions": (0..extensions).map(|j| json!({
                    "number": if j % 2 == 0 { 100 + j } else { 500 + j },
                    "password": format!("password-{i}-{j}"),
                    "display_name": format!("User {j}")
                })).collect::<Vec<_>>(),
                "dids": dids
            })
        })
        .collect();
    let path = dir.join("import.json");
    std::fs::write(
        &path,
        json!({"numbers": numbers, "tenants": tenants}).to_string(),
    )
    .unwrap();
    path
}

fn import(data: &Path, file: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["import", "--quiet", "--data-dir"])
        .arg(data)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Tenants in the store so far; 0 while the schema does not exist yet.
async fn tenant_count(data: &Path) -> usize {
    let Ok(store) = Store::connect(&format!(
        "sqlite://{}",
        data.join("switchyard.db").display()
    ))
    .await
    else {
        return 0;
    };
    store.list_tenants(None, 1000).await.map_or(0, |t| t.len())
}

/// Everything an import decides, by tenant domain, without generated ids.
async fn state(data: &Path) -> BTreeMap<String, String> {
    let store = Store::connect(&format!(
        "sqlite://{}",
        data.join("switchyard.db").display()
    ))
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for t in store.list_tenants(None, 1000).await.unwrap() {
        let ranges: Vec<_> = store
            .extension_ranges(&t.id)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.first_number, r.last_number))
            .collect();
        let exts: Vec<_> = store
            .extensions(&t.id)
            .await
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e.number,
                    e.username.clone(),
                    e.display_name.clone(),
                    e.ha1_md5.clone(),
                )
            })
            .collect();
        let dids = store.dids_of(&t.id).await.unwrap().len();
        out.insert(
            t.domain.clone(),
            format!("{} {ranges:?} {exts:?} dids={dids}", t.name),
        );
    }
    store.close().await;
    out
}

#[tokio::test]
async fn importing_twice_changes_nothing_and_csv_matches_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(dir.path(), 4, 4, 2);
    let data = dir.path().join("data");
    let first = import(&data, &file);
    assert!(first.contains("created"), "{first}");
    let before = state(&data).await;
    assert_eq!(before.len(), 4);
    let second = import(&data, &file);
    assert!(second.starts_with("import done: 0 created"), "{second}");
    assert_eq!(state(&data).await, before);

    let csv = dir.path().join("import.csv");
    let mut text =
        String::from("domain,name,range_first,range_last,number,password,display_name\n");
    for i in 0..2 {
        for j in 0..3 {
            text.push_str(&format!(
                "c{i}.example.com,CSV {i},100,199,{},pw-{i}-{j}-long,User {j}\n",
                100 + j
            ));
        }
    }
    std::fs::write(&csv, text).unwrap();
    let csv_data = dir.path().join("csv");
    import(&csv_data, &csv);
    let s = state(&csv_data).await;
    assert_eq!(s.len(), 2);
    assert!(s["c0.example.com"].contains("(100, 199)") && s["c0.example.com"].contains("User 2"));
}

#[tokio::test]
async fn a_killed_import_resumes_to_the_same_end_state() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(dir.path(), 60, 10, 2);
    // Reference: an import that runs to the end.
    let clean = dir.path().join("clean");
    import(&clean, &file);
    let expected = state(&clean).await;

    let data = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["import", "--quiet", "--data-dir"])
        .arg(&data)
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it has provisioned some tenants, then SIGKILL it mid-way.
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        // The file exists before the import's migrations have made the tables: count
        // nothing until they are there.
        let partial = if data.join("switchyard.db").exists() {
            tenant_count(&data).await
        } else {
            0
        };
        if partial >= 5 || started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the import was still running when killed"
    );
    let partial = state(&data).await;
    assert!(
        partial.len() < 60,
        "killed before the end: {} tenants",
        partial.len()
    );

    let rerun = import(&data, &file);
    assert!(rerun.contains("already in place"), "{rerun}");
    assert_eq!(
        state(&data).await,
        expected,
        "resumed import equals the uninterrupted one"
    );
}
