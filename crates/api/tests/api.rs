//! The API through its router, on SQLite and on the real PostgreSQL: auth, tenant
//! isolation on every route, problem+json for bad input, and the OpenAPI document.

#[path = "../../store/tests/common/mod.rs"]
mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use switchyard_api::{AppState, issue_key, router};
use switchyard_store::Store;

struct Api {
    app: axum::Router,
}

impl Api {
    fn new(store: &Store) -> Api {
        Api {
            app: router(AppState::new(store.clone())),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Option<String>, Value) {
        self.raw(
            method,
            path,
            key,
            body.map(|b| b.to_string()),
            "application/json",
        )
        .await
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
        ctype: &str,
    ) -> (StatusCode, Option<String>, Value) {
        self.full(method, path, key, body, ctype, None).await.0
    }

    /// `POST /v1/tenants` with a name and a domain; the answer's body.
    async fn create_tenant(&self, key: &str, name: &str, domain: &str) -> Value {
        self.call(
            Method::POST,
            "/v1/tenants",
            Some(key),
            Some(json!({"name": name, "domain": domain})),
        )
        .await
        .2
    }

    /// The job once it is `done` or `failed` (polled for up to 10 s).
    async fn finished_job(&self, key: &str, tenant: &str, job: &str) -> Value {
        for _ in 0..200 {
            let (_, _, j) = self
                .call(
                    Method::GET,
                    &format!("/v1/tenants/{tenant}/jobs/{job}"),
                    Some(key),
                    None,
                )
                .await;
            if j["state"] == "done" || j["state"] == "failed" {
                return j;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("job {job} did not finish");
    }

    /// With an Idempotency-Key; also says whether the answer was a replay.
    async fn idem(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
        idem: &str,
    ) -> ((StatusCode, Option<String>, Value), bool) {
        let body = body.map(|b| b.to_string());
        self.full(
            method,
            path,
            Some(key),
            body,
            "application/json",
            Some(idem),
        )
        .await
    }

    async fn full(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
        ctype: &str,
        idem: Option<&str>,
    ) -> ((StatusCode, Option<String>, Value), bool) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(i) = idem {
            req = req.header("Idempotency-Key", i);
        }
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let req = match body {
            Some(b) => req
                .header("Content-Type", ctype)
                .body(Body::from(b))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let replayed = resp.headers().contains_key("idempotent-replayed");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        ((status, ctype, json), replayed)
    }
}

fn assert_problem(
    r: &(StatusCode, Option<String>, Value),
    status: StatusCode,
    field: Option<&str>,
) {
    assert_eq!(r.0, status, "{:?}", r.2);
    assert_eq!(r.1.as_deref(), Some("application/problem+json"));
    assert_eq!(r.2["status"], status.as_u16());
    assert!(r.2["detail"].as_str().is_some_and(|d| !d.is_empty()));
    if let Some(f) = field {
        assert_eq!(r.2["field"], f, "{:?}", r.2);
    }
}

on_both!(keys_are_required_and_checked, |store| {
    let api = Api::new(&store);
    let r = api.call(Method::GET, "/v1/tenants", None, None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, None);
    let r = api
        .call(Method::GET, "/v1/tenants", Some("sy_nope_nope"), None)
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, None);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let forged = format!("{}x", &op[..op.len() - 1]);
    let r = api
        .call(Method::GET, "/v1/tenants", Some(&forged), None)
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, None);
    assert_eq!(
        api.call(Method::GET, "/v1/tenants", Some(&op), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::GET, "/healthz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::GET, "/readyz", None, None).await.0,
        StatusCode::OK
    );
});

on_both!(bad_input_gets_problem_json_and_writes_nothing, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let r = api
        .call(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some(json!({"name": "Acme", "domain": "not a domain"})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("domain"));
    let r = api
        .call(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some(json!({"name": "Acme", "domain": "acme.example.com", "bogus": 1})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("bogus"));
    let r = api
        .call(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some(json!({"name": "Acme"})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("domain"));
    let r = api
        .call(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some(json!({"name": "Acme", "domain": "a.example.com", "max_calls": "many"})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("max_calls"));
    let r = api
        .raw(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some("{\"name\": ".into()),
            "application/json",
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, None);
    let r = api
        .raw(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some("name=x".into()),
            "text/plain",
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, None);
    let huge = json!({"name": "x".repeat(100_000), "domain": "big.example.com"}).to_string();
    let r = api
        .raw(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some(huge),
            "application/json",
        )
        .await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, None);
    assert!(
        store.list_tenants(None, 10).await.unwrap().is_empty(),
        "nothing was written"
    );
    let r = api
        .call(
            Method::GET,
            "/v1/tenants?limit=-99999999999999999999999",
            Some(&op),
            None,
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("limit"));
    let r = api
        .call(Method::GET, "/v1/tenants?limit=0", Some(&op), None)
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("limit"));
    let r = api.call(Method::GET, "/v1/nowhere", Some(&op), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, None);
});

on_both!(provisioning_a_tenant_end_to_end, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let (s, _, t) = api
        .call(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some(json!({"name": "Acme", "domain": "acme.example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = t["id"].as_str().unwrap().to_owned();
    let r = api
        .call(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some(json!({"name": "Again", "domain": "ACME.example.com"})),
        )
        .await;
    assert_problem(&r, StatusCode::CONFLICT, None);
    let (s, _, range) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{id}/extension-ranges"),
            Some(&op),
            Some(json!({"first_number": 1000, "last_number": 1999})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let r = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{id}/extension-ranges"),
            Some(&op),
            Some(json!({"first_number": 1500, "last_number": 2500})),
        )
        .await;
    assert_problem(&r, StatusCode::CONFLICT, None);
    let (s, _, e) = api
        .call(Method::POST, &format!("/v1/tenants/{id}/extensions"), Some(&op), Some(json!({"range_id": range["id"], "password": "s3cret-pass", "display_name": "Alice"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    assert_eq!(e["number"], 1000);
    assert!(
        e.get("password").is_none() && !e.to_string().contains("s3cret"),
        "the password is never returned"
    );
    let (_, _, list) = api
        .call(
            Method::GET,
            &format!("/v1/tenants/{id}/extensions"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    for _ in 0..4 {
        api.call(
            Method::POST,
            &format!("/v1/tenants/{id}/extensions"),
            Some(&op),
            Some(json!({"range_id": range["id"], "password": "more-passwords"})),
        )
        .await;
    }
    let (_, _, page1) = api
        .call(
            Method::GET,
            &format!("/v1/tenants/{id}/extensions?limit=3"),
            Some(&op),
            None,
        )
        .await;
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let (_, _, page2) = api
        .call(
            Method::GET,
            &format!("/v1/tenants/{id}/extensions?limit=3&cursor={cursor}"),
            Some(&op),
            None,
        )
        .await;
    let numbers: Vec<i64> = page1["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["items"].as_array().unwrap())
        .map(|e| e["number"].as_i64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        vec![1000, 1001, 1002, 1003, 1004],
        "two pages, every extension once, in order"
    );
    assert!(page2["next_cursor"].is_null());
    let r = api
        .call(
            Method::GET,
            &format!("/v1/tenants/{id}/extensions?cursor=abc"),
            Some(&op),
            None,
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("cursor"));
    assert_eq!(
        api.call(
            Method::POST,
            "/v1/numbers",
            Some(&op),
            Some(json!({"numbers": ["+14155550100"]}))
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let r = api
        .call(
            Method::POST,
            "/v1/numbers",
            Some(&op),
            Some(json!({"numbers": ["+14155550101", "555"]})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("number"));
    let (s, _, n) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{id}/numbers"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (s, n["number"].as_str()),
        (StatusCode::CREATED, Some("+14155550100"))
    );
    let r = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{id}/numbers"),
            Some(&op),
            None,
        )
        .await;
    assert_problem(&r, StatusCode::CONFLICT, None);
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("/v1/tenants/{id}/numbers/%2B14155550100"),
            Some(&op),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        store.did("+14155550100").await.unwrap().state,
        "quarantined"
    );
    let ext_id = e["id"].as_str().unwrap();
    let (s, _, patched) = api
        .call(
            Method::PATCH,
            &format!("/v1/tenants/{id}/extensions/{ext_id}"),
            Some(&op),
            Some(json!({"forward_busy": "+4930123456", "no_answer_seconds": 30, "display_name": "Alice B"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{patched}");
    assert_eq!(
        (
            patched["forward_busy"].as_str(),
            patched["no_answer_seconds"].as_i64()
        ),
        (Some("+4930123456"), Some(30))
    );
    let r = api
        .call(
            Method::PATCH,
            &format!("/v1/tenants/{id}/extensions/{ext_id}"),
            Some(&op),
            Some(json!({"forward_always": "not a number"})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("forward_always"));
    let (_, _, got) = api
        .call(
            Method::GET,
            &format!("/v1/tenants/{id}/extensions/{ext_id}"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(got["display_name"], "Alice B");
    let r = api
        .call(
            Method::PATCH,
            &format!("/v1/tenants/{id}"),
            Some(&op),
            Some(json!({"placement": "nowhere"})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("placement"));
    let r = api
        .call(
            Method::PATCH,
            &format!("/v1/tenants/{id}"),
            Some(&op),
            Some(json!({"reg_expiry_min": 600, "reg_expiry_default": 300})),
        )
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("reg_expiry_default"),
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("/v1/tenants/{id}/extensions/{ext_id}"),
            Some(&op),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("/v1/tenants/{id}"),
            Some(&op),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_problem(
        &api.call(Method::GET, &format!("/v1/tenants/{id}"), Some(&op), None)
            .await,
        StatusCode::NOT_FOUND,
        None,
    );
});

on_both!(a_tenant_key_never_reaches_another_tenant, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let mut ids = Vec::new();
    for d in ["a.example.com", "b.example.com"] {
        let (_, _, t) = api
            .call(
                Method::POST,
                "/v1/tenants",
                Some(&op),
                Some(json!({"name": d, "domain": d})),
            )
            .await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    let (a, b) = (&ids[0], &ids[1]);
    let (_, _, rb) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{b}/extension-ranges"),
            Some(&op),
            Some(json!({"first_number": 100, "last_number": 199})),
        )
        .await;
    api.call(
        Method::POST,
        &format!("/v1/tenants/{b}/extensions"),
        Some(&op),
        Some(json!({"range_id": rb["id"], "password": "b-password"})),
    )
    .await;
    let (_, _, trunk_b) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{b}/resources/trunk"),
            Some(&op),
            Some(json!({"name": "carrier", "spec": {"host": "sip.carrier.example", "port": 5060, "transport": "udp",
                "username": "acct", "password": "carrier-secret", "codecs": ["PCMU", "PCMA"], "max_channels": 30}})),
        )
        .await;
    assert!(trunk_b["id"].is_string(), "{trunk_b}");
    assert!(
        !trunk_b.to_string().contains("carrier-secret"),
        "trunk passwords are never returned"
    );
    let key_a = issue_key(&store, a, false).await.unwrap();
    // Every tenant-scoped route, aimed at B with A's key: 404, never B's data.
    let ext_b = store.extensions(b).await.unwrap().remove(0);
    let cases = [
        (Method::GET, format!("/v1/tenants/{b}"), None),
        (Method::DELETE, format!("/v1/tenants/{b}"), None),
        (
            Method::PATCH,
            format!("/v1/tenants/{b}"),
            Some(json!({"name": "hijacked"})),
        ),
        (
            Method::GET,
            format!("/v1/tenants/{b}/extension-ranges"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/tenants/{b}/extension-ranges"),
            Some(json!({"first_number": 500, "last_number": 599})),
        ),
        (Method::GET, format!("/v1/tenants/{b}/extensions"), None),
        (
            Method::POST,
            format!("/v1/tenants/{b}/extensions"),
            Some(json!({"range_id": rb["id"], "password": "intruder1"})),
        ),
        (
            Method::DELETE,
            format!("/v1/tenants/{b}/extensions/{}", ext_b.id),
            None,
        ),
        (
            Method::GET,
            format!("/v1/tenants/{b}/extensions/{}", ext_b.id),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/tenants/{b}/extensions/{}", ext_b.id),
            Some(json!({"forward_always": "+4930123456"})),
        ),
        (Method::GET, format!("/v1/tenants/{b}/numbers"), None),
        (
            Method::GET,
            format!("/v1/tenants/{b}/resources/ring_group"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/tenants/{b}/resources/trunk"),
            Some(
                json!({"name": "t", "spec": {"host": "sip.carrier.example", "port": null, "transport": "udp", "username": null, "password": null, "codecs": ["PCMU"], "max_channels": 10}}),
            ),
        ),
        (
            Method::GET,
            format!(
                "/v1/tenants/{b}/resources/trunk/{}",
                trunk_b["id"].as_str().unwrap()
            ),
            None,
        ),
        (
            Method::PUT,
            format!(
                "/v1/tenants/{b}/resources/trunk/{}",
                trunk_b["id"].as_str().unwrap()
            ),
            Some(
                json!({"name": "stolen", "spec": {"host": "evil.example", "port": null, "transport": "udp", "username": null, "password": null, "codecs": ["PCMU"], "max_channels": 1}}),
            ),
        ),
        (
            Method::DELETE,
            format!(
                "/v1/tenants/{b}/resources/trunk/{}",
                trunk_b["id"].as_str().unwrap()
            ),
            None,
        ),
        (Method::POST, format!("/v1/tenants/{b}/numbers"), None),
        (
            Method::DELETE,
            format!("/v1/tenants/{b}/numbers/%2B14155550100"),
            None,
        ),
        (
            Method::PUT,
            format!("/v1/tenants/{b}/numbers/%2B14155550100/target"),
            Some(json!({"target": {"kind": "hangup"}})),
        ),
        (Method::GET, format!("/v1/tenants/{b}/cdrs"), None),
        (
            Method::DELETE,
            format!(
                "/v1/tenants/{b}/extension-ranges/{}",
                rb["id"].as_str().unwrap()
            ),
            None,
        ),
        (Method::GET, format!("/v1/tenants/{b}/jobs"), None),
        (
            Method::GET,
            format!("/v1/tenants/{b}/jobs/00000000000000000000000000000000"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/tenants/{b}/jobs/import"),
            Some(json!({})),
        ),
    ];
    // The list covers every tenant-scoped route the OpenAPI document declares.
    let (_, _, doc) = api.call(Method::GET, "/openapi.json", None, None).await;
    let mut declared: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with("/v1/tenants/{id}"))
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {p}", m.to_uppercase()))
        })
        .collect();
    let trunk_id = trunk_b["id"].as_str().unwrap();
    let mut covered: Vec<String> = cases
        .iter()
        .map(|(m, p, _)| (m, p))
        .map(|(m, p)| {
            let t = p
                .replacen(&format!("/v1/tenants/{b}"), "/v1/tenants/{id}", 1)
                .replace(&ext_b.id, "{extension_id}")
                .replace(trunk_id, "{resource_id}")
                .replace(rb["id"].as_str().unwrap(), "{range_id}")
                .replace("00000000000000000000000000000000", "{job_id}")
                .replace("%2B14155550100", "{number}")
                .replace("/resources/trunk", "/resources/{kind}")
                .replace("/resources/ring_group", "/resources/{kind}");
            format!("{m} {t}")
        })
        .collect();
    declared.sort();
    declared.dedup();
    covered.sort();
    covered.dedup();
    assert_eq!(
        covered, declared,
        "every tenant-scoped route is tried with another tenant's key"
    );
    for (method, path, body) in cases {
        let r = api.call(method.clone(), &path, Some(&key_a), body).await;
        let expected = if method == Method::DELETE && path.ends_with(b.as_str()) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::NOT_FOUND
        };
        assert_problem(&r, expected, None);
        assert!(
            !r.2.to_string().contains("b.example.com"),
            "{path} leaked B"
        );
    }
    // A's key cannot use B's range id in A's own tenant either.
    let r = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{a}/extensions"),
            Some(&key_a),
            Some(json!({"range_id": rb["id"], "password": "intruder1"})),
        )
        .await;
    assert_problem(&r, StatusCode::NOT_FOUND, None);
    assert_eq!(store.extensions(b).await.unwrap().len(), 1, "B unchanged");
    let (_, _, list) = api
        .call(Method::GET, "/v1/tenants", Some(&key_a), None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], a.as_str());
    // Operator-wide routes need an operator key; read-only keys cannot write.
    assert_problem(
        &api.call(
            Method::POST,
            "/v1/tenants",
            Some(&key_a),
            Some(json!({"name": "c", "domain": "c.example.com"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        None,
    );
    assert_problem(
        &api.call(
            Method::POST,
            "/v1/numbers",
            Some(&key_a),
            Some(json!({"numbers": ["+14155550199"]})),
        )
        .await,
        StatusCode::FORBIDDEN,
        None,
    );
    let ro = issue_key(&store, a, true).await.unwrap();
    assert_eq!(
        api.call(Method::GET, &format!("/v1/tenants/{a}"), Some(&ro), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_problem(
        &api.call(
            Method::POST,
            &format!("/v1/tenants/{a}/extension-ranges"),
            Some(&ro),
            Some(json!({"first_number": 1, "last_number": 9})),
        )
        .await,
        StatusCode::FORBIDDEN,
        None,
    );
});

on_both!(idempotency_keys_replay_refuse_and_run_once, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let body = json!({"name": "Acme", "domain": "acme.example.com"});
    let (first, replayed) = api
        .idem(Method::POST, "/v1/tenants", &op, Some(body.clone()), "k-1")
        .await;
    assert_eq!((first.0, replayed), (StatusCode::CREATED, false));
    let (again, replayed) = api
        .idem(Method::POST, "/v1/tenants", &op, Some(body.clone()), "k-1")
        .await;
    assert!(replayed);
    assert_eq!(
        (again.0, &again.2),
        (StatusCode::CREATED, &first.2),
        "same status and body"
    );
    assert_eq!(
        store.list_tenants(None, 10).await.unwrap().len(),
        1,
        "done once"
    );
    let (other, _) = api
        .idem(
            Method::POST,
            "/v1/tenants",
            &op,
            Some(json!({"name": "X", "domain": "x.example.com"})),
            "k-1",
        )
        .await;
    assert_problem(
        &other,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("Idempotency-Key"),
    );
    // A refused request is replayed as refused (a 4xx is an answer, not a failure).
    let (conflict, _) = api
        .idem(Method::POST, "/v1/tenants", &op, Some(body.clone()), "k-2")
        .await;
    assert_problem(&conflict, StatusCode::CONFLICT, None);
    let (conflict_again, replayed) = api
        .idem(Method::POST, "/v1/tenants", &op, Some(body), "k-2")
        .await;
    assert!(replayed);
    assert_problem(&conflict_again, StatusCode::CONFLICT, None);
    // Keys are scoped to the API key that sent them.
    let op2 = issue_key(&store, "operator", false).await.unwrap();
    let (fresh, replayed) = api
        .idem(
            Method::POST,
            "/v1/tenants",
            &op2,
            Some(json!({"name": "B", "domain": "b.example.com"})),
            "k-1",
        )
        .await;
    assert_eq!((fresh.0, replayed), (StatusCode::CREATED, false));

    // 16 concurrent requests with one key: one number assigned, one answer for all.
    let id = first.2["id"].as_str().unwrap().to_owned();
    let pool: Vec<String> = (0..20).map(|i| format!("+1415555{i:04}")).collect();
    store.add_dids(&pool).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..16 {
        let app = api.app.clone();
        let (op, id) = (op.clone(), id.clone());
        handles.push(tokio::spawn(async move {
            let api = Api { app };
            api.idem(
                Method::POST,
                &format!("/v1/tenants/{id}/numbers"),
                &op,
                None,
                "assign-once",
            )
            .await
            .0
        }));
    }
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    assert!(
        answers
            .iter()
            .all(|a| a.0 == StatusCode::CREATED && a.2 == answers[0].2),
        "{answers:?}"
    );
    assert_eq!(
        store.dids_of(&id).await.unwrap().len(),
        1,
        "executed exactly once"
    );
});

on_both!(updates_honour_if_match, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let t = api.create_tenant(&op, "Acme", "acme.example.com").await;
    let id = t["id"].as_str().unwrap();
    let version = t["config_version"].as_i64().unwrap();
    let patch = |if_match: String, body: Value| {
        let app = api.app.clone();
        let (op, id) = (op.clone(), id.to_owned());
        async move {
            let req = Request::builder()
                .method(Method::PATCH)
                .uri(format!("/v1/tenants/{id}"))
                .header("Authorization", format!("Bearer {op}"))
                .header("Content-Type", "application/json")
                .header("If-Match", if_match)
                .body(Body::from(body.to_string()))
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let etag = resp
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_owned());
            (resp.status(), etag)
        }
    };
    let (s, etag) = patch(format!("\"{version}\""), json!({"max_calls": 50})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(etag, Some(format!("\"{}\"", version + 1)));
    let (s, _) = patch(format!("\"{version}\""), json!({"max_calls": 60})).await;
    assert_eq!(
        s,
        StatusCode::PRECONDITION_FAILED,
        "a stale ETag is refused"
    );
    assert_eq!(
        store.tenant(id).await.unwrap().max_calls,
        50,
        "and changes nothing"
    );
    let (s, _) = patch("*".into(), json!({"state": "suspended"})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = patch("*".into(), json!({"state": "paused"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
});

on_both!(
    numbers_route_to_targets_of_their_own_tenant_and_cdrs_read_back,
    |store| {
        let api = Api::new(&store);
        let op = issue_key(&store, "operator", false).await.unwrap();
        let t = api.create_tenant(&op, "Acme", "acme.example.com").await;
        let other = api.create_tenant(&op, "Other", "other.example.com").await;
        let id = t["id"].as_str().unwrap();
        let (_, _, r) = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{id}/extension-ranges"),
                Some(&op),
                Some(json!({"first_number": 100, "last_number": 199})),
            )
            .await;
        let (_, _, e) = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{id}/extensions"),
                Some(&op),
                Some(json!({"range_id": r["id"], "password": "long-password"})),
            )
            .await;
        let oid = other["id"].as_str().unwrap();
        let (_, _, ro) = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{oid}/extension-ranges"),
                Some(&op),
                Some(json!({"first_number": 100, "last_number": 199})),
            )
            .await;
        let (_, _, eo) = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{oid}/extensions"),
                Some(&op),
                Some(json!({"range_id": ro["id"], "password": "long-password"})),
            )
            .await;
        api.call(
            Method::POST,
            "/v1/numbers",
            Some(&op),
            Some(json!({"numbers": ["+14155550100"]})),
        )
        .await;
        api.call(
            Method::POST,
            &format!("/v1/tenants/{id}/numbers"),
            Some(&op),
            None,
        )
        .await;
        let path = format!("/v1/tenants/{id}/numbers/%2B14155550100/target");
        let (s, _, routed) = api
            .call(
                Method::PUT,
                &path,
                Some(&op),
                Some(json!({"target": {"kind": "extension", "id": e["id"]}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{routed}");
        assert_eq!(
            routed["target"],
            format!("extension:{}", e["id"].as_str().unwrap())
        );
        // Another tenant's extension is no target for this tenant's number.
        let r = api
            .call(
                Method::PUT,
                &path,
                Some(&op),
                Some(json!({"target": {"kind": "extension", "id": eo["id"]}})),
            )
            .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("target"));
        let r = api
            .call(
                Method::PUT,
                &path,
                Some(&op),
                Some(json!({"target": {"kind": "fax"}})),
            )
            .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("target"));

        store
            .insert_cdr(&switchyard_store::Cdr {
                id: "cdr1".into(),
                tenant_id: id.to_owned(),
                call_id: "c1".into(),
                from_uri: "sip:100@acme.example.com".into(),
                to_uri: "sip:101@acme.example.com".into(),
                started_at: 1000,
                answered_at: Some(2000),
                ended_at: 62_000,
                duration_ms: 60_000,
                disposition: "answered".into(),
                hangup_side: Some("caller".into()),
                legs: "[{\"packets\": 3000}]".into(),
            })
            .await
            .unwrap();
        let (s, _, cdrs) = api
            .call(
                Method::GET,
                &format!("/v1/tenants/{id}/cdrs"),
                Some(&op),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(cdrs[0]["duration_ms"], 60000);
        assert_eq!(cdrs[0]["legs"][0]["packets"], 3000);
        let (_, _, none) = api
            .call(
                Method::GET,
                &format!("/v1/tenants/{oid}/cdrs"),
                Some(&op),
                None,
            )
            .await;
        assert_eq!(
            none.as_array().unwrap().len(),
            0,
            "CDRs stay with their tenant"
        );

        let (s, _, pool) = api
        .call(Method::POST, "/v1/media-pools", Some(&op), Some(json!({"name": "acme-dedicated", "dedicated_tenant_id": id, "max_sessions": 200, "cpu_percent": 150, "memory_mb": 2048})))
        .await;
        assert_eq!(s, StatusCode::CREATED, "{pool}");
        let r = api.call(Method::POST, "/v1/media-pools", Some(&op), Some(json!({"name": "acme-dedicated", "max_sessions": 1, "cpu_percent": 1, "memory_mb": 64, "dedicated_tenant_id": null}))).await;
        assert_problem(&r, StatusCode::CONFLICT, None);
        let key = issue_key(&store, id, false).await.unwrap();
        assert_problem(
            &api.call(Method::GET, "/v1/media-pools", Some(&key), None)
                .await,
            StatusCode::FORBIDDEN,
            None,
        );
    }
);

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let t = common::sqlite().await;
    let app = router(AppState::with_rate(t.store.clone(), 5));
    let op = issue_key(&t.store, "operator", false).await.unwrap();
    let other = issue_key(&t.store, "operator", false).await.unwrap();
    let get = |key: String| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .uri("/v1/tenants")
                .header("Authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap();
            app.oneshot(req).await.unwrap()
        }
    };
    let mut limited = None;
    for _ in 0..20 {
        let resp = get(op.clone()).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("a burst beyond 2x the rate is refused");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(
        get(other).await.status(),
        StatusCode::OK,
        "other keys are not affected"
    );
}

on_both!(
    a_job_queued_with_an_idempotency_key_runs_once_its_request_commits,
    |store| {
        // The job is queued inside the request's transaction; the worker, which reads the
        // queue on its own connection, is woken after the commit and must find the job.
        let api = Api::new(&store);
        let op = issue_key(&store, "operator", false).await.unwrap();
        let t = api.create_tenant(&op, "Acme", "acme.example.com").await;
        let id = t["id"].as_str().unwrap().to_owned();
        let job = json!({"ranges": [{"first_number": 100, "last_number": 199}], "extensions": [], "dids": 0});
        let path = format!("/v1/tenants/{id}/jobs/import");
        let ((status, _, queued), replayed) = api
            .idem(Method::POST, &path, &op, Some(job.clone()), "job-1")
            .await;
        assert_eq!((status, replayed), (StatusCode::ACCEPTED, false));
        let ((again, _, same), replayed) =
            api.idem(Method::POST, &path, &op, Some(job), "job-1").await;
        assert_eq!((again, replayed), (StatusCode::ACCEPTED, true));
        assert_eq!(same["id"], queued["id"], "the replay names the same job");
        let job_id = queued["id"].as_str().unwrap().to_owned();
        let finished = api.finished_job(&op, &id, &job_id).await;
        assert_eq!(finished["state"], "done");
        assert_eq!(
            store.jobs_page(&id, None, 10).await.unwrap().len(),
            1,
            "queued once"
        );
    }
);

on_both!(
    jobs_of_one_tenant_run_in_order_and_never_interleave,
    |store| {
        let api = Api::new(&store);
        let op = issue_key(&store, "operator", false).await.unwrap();
        let t = api.create_tenant(&op, "Acme", "acme.example.com").await;
        let id = t["id"].as_str().unwrap().to_owned();
        let other = api.create_tenant(&op, "B", "b.example.com").await;
        api.call(
            Method::POST,
            "/v1/numbers",
            Some(&op),
            Some(json!({"numbers": ["+14155550100", "+14155550101", "+14155550102"]})),
        )
        .await;
        let ext = |n: i64| json!({"number": n, "password": format!("password-{n}"), "display_name": format!("U{n}")});
        let first = json!({"ranges": [{"first_number": 100, "last_number": 199}], "extensions": (120..150).map(ext).collect::<Vec<_>>(), "dids": 2});
        let second = json!({"ranges": [{"first_number": 100, "last_number": 199}], "extensions": (145..155).map(ext).collect::<Vec<_>>(), "dids": 2});
        let (s1, _, j1) = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{id}/jobs/import"),
                Some(&op),
                Some(first),
            )
            .await;
        let (s2, _, j2) = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{id}/jobs/import"),
                Some(&op),
                Some(second),
            )
            .await;
        assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
        assert_eq!((j1["seq"].as_i64(), j2["seq"].as_i64()), (Some(1), Some(2)));
        let bad = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{id}/jobs/import"),
                Some(&op),
                Some(json!({"rangez": []})),
            )
            .await;
        assert_problem(&bad, StatusCode::UNPROCESSABLE_ENTITY, Some("body"));
        let d1 = api.finished_job(&op, &id, j1["id"].as_str().unwrap()).await;
        let d2 = api.finished_job(&op, &id, j2["id"].as_str().unwrap()).await;
        assert_eq!(
            (d1["state"].as_str(), d2["state"].as_str()),
            (Some("done"), Some("done")),
            "{d1} {d2}"
        );
        assert!(
            d2["result"]["started_at"].as_i64() >= d1["result"]["finished_at"].as_i64(),
            "the second job started after the first ended"
        );
        assert_eq!(
            d2["result"]["existing"],
            1 + 5 + 2,
            "the range, the 5 shared extensions and the 2 numbers were in place"
        );
        let exts = store.extensions(&id).await.unwrap();
        assert_eq!(exts.len(), 35);
        assert_eq!(
            store.dids_of(&id).await.unwrap().len(),
            2,
            "a count, so no over-assignment"
        );
        // Jobs stay with their tenant.
        let key_b = issue_key(&store, other["id"].as_str().unwrap(), false)
            .await
            .unwrap();
        let r = api
            .call(
                Method::GET,
                &format!("/v1/tenants/{id}/jobs/{}", j1["id"].as_str().unwrap()),
                Some(&key_b),
                None,
            )
            .await;
        assert_problem(&r, StatusCode::NOT_FOUND, None);
        let r = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{id}/jobs/import"),
                Some(&key_b),
                Some(json!({})),
            )
            .await;
        assert_problem(&r, StatusCode::NOT_FOUND, None);
    }
);

#[tokio::test]
async fn jobs_left_by_a_restart_run_when_the_api_starts() {
    let t = common::sqlite().await;
    let tenant = t
        .store
        .create_tenant(&switchyard_store::NewTenant {
            name: "A".into(),
            domain: "a.example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Queued while no API ran (or by one that died).
    let job = t
        .store
        .enqueue_job(
            &tenant.id,
            "import",
            &json!({"ranges": [{"first_number": 10, "last_number": 19}]}).to_string(),
        )
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(switchyard_api::serve(
        listener,
        AppState::new(t.store.clone()),
        stop,
    ));
    let mut state = String::new();
    for _ in 0..200 {
        state = t.store.job(&tenant.id, &job.id).await.unwrap().state;
        if state == "done" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    assert_eq!(state, "done");
    assert_eq!(t.store.extension_ranges(&tenant.id).await.unwrap().len(), 1);
}

on_both!(writes_inside_a_tenant_honour_the_tenants_etag, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let t = api.create_tenant(&op, "Acme", "acme.example.com").await;
    let id = t["id"].as_str().unwrap().to_owned();
    let (_, _, r) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{id}/extension-ranges"),
            Some(&op),
            Some(json!({"first_number": 100, "last_number": 199})),
        )
        .await;
    let (_, _, e) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{id}/extensions"),
            Some(&op),
            Some(json!({"range_id": r["id"], "password": "long-password"})),
        )
        .await;
    let version = store.tenant(&id).await.unwrap().config_version;
    let patch = |if_match: i64, body: Value| {
        let app = api.app.clone();
        let (op, path) = (
            op.clone(),
            format!("/v1/tenants/{id}/extensions/{}", e["id"].as_str().unwrap()),
        );
        async move {
            let req = Request::builder()
                .method(Method::PATCH)
                .uri(path)
                .header("Authorization", format!("Bearer {op}"))
                .header("Content-Type", "application/json")
                .header("If-Match", format!("\"{if_match}\""))
                .body(Body::from(body.to_string()))
                .unwrap();
            app.oneshot(req).await.unwrap().status()
        }
    };
    assert_eq!(
        patch(version, json!({"display_name": "First"})).await,
        StatusCode::OK
    );
    assert_eq!(
        patch(version, json!({"display_name": "Lost update"})).await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        store.extensions(&id).await.unwrap()[0].display_name,
        "First",
        "the stale write changed nothing"
    );
    assert_eq!(
        patch(version + 1, json!({"display_name": "Second"})).await,
        StatusCode::OK
    );
});

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let t = common::sqlite().await;
    let api = Api::new(&t.store);
    let (s, _, doc) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/v1/tenants",
        "/v1/tenants/{id}",
        "/v1/tenants/{id}/extensions",
        "/v1/tenants/{id}/numbers",
        "/v1/numbers",
        "/healthz",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

on_both!(deletes_honour_the_tenants_etag, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let t = api.create_tenant(&op, "Acme", "acme.example.com").await;
    let id = t["id"].as_str().unwrap().to_owned();
    let (_, _, r) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{id}/extension-ranges"),
            Some(&op),
            Some(json!({"first_number": 100, "last_number": 199})),
        )
        .await;
    let (_, _, e) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{id}/extensions"),
            Some(&op),
            Some(json!({"range_id": r["id"], "password": "long-password"})),
        )
        .await;
    let delete = |path: String, if_match: i64| {
        let (app, op) = (api.app.clone(), op.clone());
        async move {
            let req = Request::builder()
                .method(Method::DELETE)
                .uri(path)
                .header("Authorization", format!("Bearer {op}"))
                .header("If-Match", format!("\"{if_match}\""))
                .body(Body::empty())
                .unwrap();
            app.oneshot(req).await.unwrap().status()
        }
    };
    let ext_path = format!("/v1/tenants/{id}/extensions/{}", e["id"].as_str().unwrap());
    let range_path = format!(
        "/v1/tenants/{id}/extension-ranges/{}",
        r["id"].as_str().unwrap()
    );
    let version = store.tenant(&id).await.unwrap().config_version;
    // A delete against an older version of the tenant changes nothing.
    assert_eq!(
        delete(ext_path.clone(), version - 1).await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(store.extensions(&id).await.unwrap().len(), 1);
    assert_eq!(
        store.tenant(&id).await.unwrap().config_version,
        version,
        "a refused delete bumps no version"
    );
    assert_eq!(delete(ext_path, version).await, StatusCode::NO_CONTENT);
    assert!(store.extensions(&id).await.unwrap().is_empty());
    // The range, then the tenant: each with the ETag the previous change left.
    assert_eq!(
        delete(range_path.clone(), version).await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        delete(range_path, version + 1).await,
        StatusCode::NO_CONTENT
    );
    let tenant_path = format!("/v1/tenants/{id}");
    assert_eq!(
        delete(tenant_path.clone(), version + 1).await,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        delete(tenant_path, version + 2).await,
        StatusCode::NO_CONTENT
    );
});

on_both!(plain_lists_page_with_after_and_a_next_link, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let t = api.create_tenant(&op, "Acme", "acme.example.com").await;
    let id = t["id"].as_str().unwrap().to_owned();
    let numbers = ["+14155550101", "+14155550102", "+14155550103"];
    let (s, _, _) = api
        .call(
            Method::POST,
            "/v1/numbers",
            Some(&op),
            Some(json!({"numbers": numbers})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for (i, name) in ["alpha", "bravo", "charlie"].iter().enumerate() {
        let first = 100 * (i as i64 + 1);
        let posts = [
            (
                format!("/v1/tenants/{id}/extension-ranges"),
                Some(json!({"first_number": first, "last_number": first + 99})),
            ),
            (format!("/v1/tenants/{id}/numbers"), None),
            (
                format!("/v1/tenants/{id}/resources/trunk"),
                Some(
                    json!({"name": name, "spec": {"host": "sip.carrier.example", "port": 5060,
                    "transport": "udp", "codecs": ["PCMU"], "max_channels": 2}}),
                ),
            ),
            (format!("/v1/tenants/{id}/jobs/import"), Some(json!({}))),
        ];
        for (path, body) in posts {
            let (s, _, v) = api.call(Method::POST, &path, Some(&op), body).await;
            assert!(s.is_success(), "{path}: {s} {v}");
        }
    }
    let get = |path: String| {
        let (app, op) = (api.app.clone(), op.clone());
        async move {
            let req = Request::builder()
                .uri(path)
                .header("Authorization", format!("Bearer {op}"))
                .body(Body::empty())
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let link = resp
                .headers()
                .get("link")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (
                status,
                link,
                serde_json::from_slice::<Value>(&body).unwrap(),
            )
        }
    };
    for list in ["extension-ranges", "numbers", "resources/trunk", "jobs"] {
        let (s, link, first) = get(format!("/v1/tenants/{id}/{list}?limit=2")).await;
        assert_eq!(s, StatusCode::OK, "{list}: {first}");
        assert_eq!(first.as_array().unwrap().len(), 2, "{list}: {first}");
        let link = link.unwrap_or_else(|| panic!("{list}: a full page links to the next"));
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(u, rest)| {
                assert_eq!(rest, "; rel=\"next\"");
                u.to_owned()
            })
            .unwrap();
        let (s, link, second) = get(next).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(second.as_array().unwrap().len(), 1, "{list}: {second}");
        assert!(link.is_none(), "{list}: the last page has no next link");
        let (_, _, all) = get(format!("/v1/tenants/{id}/{list}")).await;
        // Compared by key: jobs change state while the test reads.
        let key = |v: &Value| {
            if v["id"].is_string() {
                v["id"].clone()
            } else {
                v["number"].clone()
            }
        };
        let paged: Vec<Value> = first
            .as_array()
            .unwrap()
            .iter()
            .chain(second.as_array().unwrap())
            .map(key)
            .collect();
        let whole: Vec<Value> = all.as_array().unwrap().iter().map(key).collect();
        assert_eq!(
            paged, whole,
            "{list}: the pages are the whole list, in order"
        );
    }
    let (s, _, p) = get(format!("/v1/tenants/{id}/jobs?after=soon")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["field"], "after");
});

on_both!(operators_issue_list_and_revoke_keys, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let t = api.create_tenant(&op, "Acme", "acme.example.com").await;
    let other = api.create_tenant(&op, "Other", "other.example.com").await;
    let (acme, other) = (t["id"].as_str().unwrap(), other["id"].as_str().unwrap());
    let (s, _, k) = api
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&op),
            Some(json!({"tenant": acme, "read_only": true})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let token = k["key"].as_str().unwrap().to_owned();
    assert_eq!(k["scope"], acme);
    assert_eq!(k["read_only"], true);
    // The new key reads its tenant, writes nothing, sees no other tenant, manages no keys.
    let get = |path: String| {
        let (api, token) = (&api, token.clone());
        async move { api.call(Method::GET, &path, Some(&token), None).await }
    };
    assert_eq!(get(format!("/v1/tenants/{acme}")).await.0, StatusCode::OK);
    assert_eq!(
        get(format!("/v1/tenants/{other}")).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, _, _) = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{acme}/extension-ranges"),
            Some(&token),
            Some(json!({"first_number": 100, "last_number": 199})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(get("/v1/api-keys".into()).await.0, StatusCode::FORBIDDEN);
    let (s, _, _) = api
        .call(Method::POST, "/v1/api-keys", Some(&token), Some(json!({})))
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a tenant key cannot mint an operator key"
    );
    // The list shows it, never a secret.
    let (s, _, list) = api.call(Method::GET, "/v1/api-keys", Some(&op), None).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&k["id"].as_str().unwrap()));
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("key").is_none())
    );
    // A key for a tenant that does not exist is refused; a revoked key stops working.
    let (s, _, _) = api
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&op),
            Some(json!({"tenant": "nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{}", k["id"].as_str().unwrap()),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        get(format!("/v1/tenants/{acme}")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _, _) = api
        .call(Method::DELETE, "/v1/api-keys/nope", Some(&op), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
});

on_both!(a_time_condition_needs_a_real_time_zone, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let (_, _, t) = api
        .call(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some(json!({"name": "tz", "domain": "tz.example.com"})),
        )
        .await;
    let tenant = t["id"].as_str().unwrap().to_owned();
    let spec = |zone: &str| {
        json!({"name": "office hours", "spec": {"timezone": zone,
            "rules": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}],
            "open_target": {"kind": "hangup"}, "closed_target": {"kind": "hangup"}}})
    };
    let path = format!("/v1/tenants/{tenant}/resources/time_condition");
    // Spelled like a zone but in no database: refused, naming what is wrong.
    for bad in [
        "Mars/Olympus",
        "Europe/Berlinn",
        "CET-1CEST,M3.5.0,M10.5.0/3",
    ] {
        let r = api
            .call(Method::POST, &path, Some(&op), Some(spec(bad)))
            .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("spec"));
        assert!(
            r.2["detail"].as_str().unwrap().contains("IANA"),
            "{bad}: {:?}",
            r.2
        );
    }
    let r = api
        .call(Method::POST, &path, Some(&op), Some(spec("Europe/Berlin")))
        .await;
    assert_eq!(r.0, StatusCode::CREATED, "{:?}", r.2);
    // Nothing was written by the refused ones.
    let (_, _, list) = api.call(Method::GET, &path, Some(&op), None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
});

on_both!(operators_add_list_and_remove_carriers, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let (s, _, c) = api
        .call(
            Method::POST,
            "/v1/carriers",
            Some(&op),
            Some(json!({"name": "pstn-a", "addresses": ["192.0.2.10", "198.51.100.0/24"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["addresses"], json!(["192.0.2.10/32", "198.51.100.0/24"]));
    let r = api
        .call(
            Method::POST,
            "/v1/carriers",
            Some(&op),
            Some(json!({"name": "pstn-a", "addresses": ["192.0.2.11"]})),
        )
        .await;
    assert_problem(&r, StatusCode::CONFLICT, None);
    let r = api
        .call(
            Method::POST,
            "/v1/carriers",
            Some(&op),
            Some(json!({"name": "pstn-b", "addresses": ["not-an-address"]})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("addresses"));

    // A carrier we register to: no networks needed, its password never shown.
    let (s, _, c) = api
        .call(
            Method::POST,
            "/v1/carriers",
            Some(&op),
            Some(json!({"name": "pstn-reg", "registration": {
                "registrar": "sip.carrier.example:5070", "username": "pbx-1", "password": "s3cret"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(
        c["registration"],
        json!({"registrar": "sip.carrier.example:5070", "username": "pbx-1", "expires": 600})
    );
    let r = api
        .call(
            Method::POST,
            "/v1/carriers",
            Some(&op),
            Some(json!({"name": "pstn-c", "registration": {
                "registrar": "sip.carrier.example", "username": "pbx-1", "password": "", "expires": 600}})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("registration"));
    let r = api
        .call(
            Method::POST,
            "/v1/carriers",
            Some(&op),
            Some(json!({"name": "pstn-c"})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("addresses"));
    let (_, _, list) = api.call(Method::GET, "/v1/carriers", Some(&op), None).await;
    assert!(!list.to_string().contains("s3cret"), "{list}");
    let (s, _, _) = api
        .call(Method::DELETE, "/v1/carriers/pstn-reg", Some(&op), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Carriers are the operator's: a tenant key neither sees nor adds them.
    let t = api.create_tenant(&op, "Acme", "acme.example.com").await;
    let key = issue_key(&store, t["id"].as_str().unwrap(), false)
        .await
        .unwrap();
    assert_problem(
        &api.call(Method::GET, "/v1/carriers", Some(&key), None)
            .await,
        StatusCode::FORBIDDEN,
        None,
    );
    let r = api
        .call(
            Method::POST,
            "/v1/carriers",
            Some(&key),
            Some(json!({"name": "mine", "addresses": ["192.0.2.99"]})),
        )
        .await;
    assert_problem(&r, StatusCode::FORBIDDEN, None);

    let (s, _, list) = api.call(Method::GET, "/v1/carriers", Some(&op), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (s, _, _) = api
        .call(Method::DELETE, "/v1/carriers/pstn-a", Some(&op), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_problem(
        &api.call(Method::DELETE, "/v1/carriers/pstn-a", Some(&op), None)
            .await,
        StatusCode::NOT_FOUND,
        None,
    );
});

on_both!(caller_ids_are_the_tenants_own_numbers, |store| {
    let api = Api::new(&store);
    let op = issue_key(&store, "operator", false).await.unwrap();
    let a = api.create_tenant(&op, "Acme", "acme.example.com").await;
    let b = api.create_tenant(&op, "Beta", "beta.example.com").await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let r = api
        .call(
            Method::POST,
            "/v1/numbers",
            Some(&op),
            Some(json!({"numbers": ["+15550100101", "+15550100102"]})),
        )
        .await;
    assert!(r.0.is_success(), "{:?}", r.2);
    let mut held = Vec::new();
    for t in [a, b] {
        let (s, _, n) = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{t}/numbers"),
                Some(&op),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{n}");
        held.push(n["number"].as_str().unwrap().to_owned());
    }
    // B's number is not A's to present; nothing changes.
    let r = api
        .call(
            Method::PATCH,
            &format!("/v1/tenants/{a}"),
            Some(&op),
            Some(json!({"caller_id": held[1], "max_calls": 7})),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, Some("caller_id"));
    let (_, _, t) = api
        .call(Method::GET, &format!("/v1/tenants/{a}"), Some(&op), None)
        .await;
    assert_ne!(t["max_calls"], 7, "a refused change leaves nothing behind");
    let (s, _, t) = api
        .call(
            Method::PATCH,
            &format!("/v1/tenants/{a}"),
            Some(&op),
            Some(json!({"caller_id": held[0]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["caller_id"], held[0]);
    let (s, _, t) = api
        .call(
            Method::PATCH,
            &format!("/v1/tenants/{a}"),
            Some(&op),
            Some(json!({"caller_id": ""})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["caller_id"], Value::Null);
});
