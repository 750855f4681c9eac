//! `Idempotency-Key` on POST, PUT, PATCH and DELETE. A replay with the same key and the
//! same request gets the first response (status and body) without the work being done
//! again; the same key with a different request gets 422; concurrent requests with one key
//! run once, the others wait for that response. Keys are scoped to the API key that sent
//! them and kept 24 h.
//!
//! The claim of the key, everything the handler writes and the stored answer commit in one
//! transaction ([`switchyard_store::RequestTx`]), so the change and its record exist
//! together or not at all: a crash mid-request, a failed commit or a 5xx answer leaves
//! nothing, and a retry runs again. Concurrent requests with one key queue behind the
//! first one's transaction (SQLite's writer lock, PostgreSQL's unique index) and then find
//! its answer.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use switchyard_store::Claim;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::{AppState, MAX_BODY};

const HEADER: &str = "idempotency-key";
const WAIT_STEP: Duration = Duration::from_millis(50);
const WAIT_STEPS: usize = 200;

pub(crate) async fn idempotency(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let writes = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    if !writes {
        return next.run(req).await;
    }
    let key = match key.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
            k.to_owned()
        }
        _ => {
            return ApiError::Unprocessable {
                field: "Idempotency-Key".into(),
                rule: "1 to 255 visible ASCII characters".into(),
            }
            .into_response();
        }
    };
    let (mut parts, body) = req.into_parts();
    let who = match Principal::from_request_parts(&mut parts, &state).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return ApiError::TooLarge.into_response(),
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b"\n");
    h.update(parts.uri.to_string().as_bytes());
    h.update(b"\n");
    h.update(&bytes);
    let fingerprint: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();

    // The claim, the handler's work and the stored answer are one transaction: either all
    // of it commits or none (a 5xx answer or a crash leaves nothing, and a retry runs anew).
    let mut work = None;
    for _ in 0..WAIT_STEPS {
        let tx = match state.store.begin_request().await {
            Ok(tx) => tx,
            Err(e) if e.is_transient() => {
                tokio::time::sleep(WAIT_STEP).await;
                continue;
            }
            Err(e) => return ApiError::from(e).into_response(),
        };
        let claim = tx
            .run(
                state
                    .store
                    .claim_idempotent(&who.key_id, &key, &fingerprint),
            )
            .await;
        if let Ok(Claim::Run) = claim {
            work = Some(tx);
            break;
        }
        // Nothing of this attempt is kept; roll back now rather than on drop, so the
        // writer lock is free when the next writer takes it.
        if let Err(e) = tx.rollback().await {
            tracing::warn!(error = %e, "rollback of an idempotency claim failed");
        }
        match claim {
            Ok(Claim::Replay { status, body }) => return replay(status, body),
            Ok(Claim::Mismatch) => {
                return ApiError::Unprocessable {
                    field: "Idempotency-Key".into(),
                    rule: "already used with a different request".into(),
                }
                .into_response();
            }
            // Only a claim left by an older version's crashed request stays pending.
            Ok(Claim::InProgress | Claim::Run) => {}
            Err(e) if e.is_transient() => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
        tokio::time::sleep(WAIT_STEP).await;
    }
    let Some(tx) = work else {
        return ApiError::Conflict(
            "a request with this Idempotency-Key is still in progress".into(),
        )
        .into_response();
    };
    let resp = tx
        .run(next.run(Request::from_parts(parts, Body::from(bytes))))
        .await;
    let (parts, body) = resp.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::Internal.into_response();
    };
    if parts.status.is_server_error() {
        if let Err(e) = tx.rollback().await {
            tracing::warn!(error = %e, "rollback after a server error failed");
        }
        return Response::from_parts(parts, Body::from(body));
    }
    let text = String::from_utf8_lossy(&body);
    let stored = tx
        .run(
            state
                .store
                .finish_idempotent(&who.key_id, &key, parts.status.as_u16(), &text),
        )
        .await;
    // Nothing the request did is kept unless its answer is kept with it.
    if let Err(e) = stored {
        tracing::error!(error = %e, "idempotency record not stored; request rolled back");
        return ApiError::from(e).into_response();
    }
    if let Err(e) = tx.commit().await {
        tracing::error!(error = %e, "request transaction did not commit");
        return ApiError::from(e).into_response();
    }
    Response::from_parts(parts, Body::from(body))
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ctype = if body.is_empty() {
        None
    } else if status.is_client_error() || status.is_server_error() {
        Some("application/problem+json")
    } else {
        Some("application/json")
    };
    let mut resp = (status, body).into_response();
    match ctype {
        Some(c) => {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(c));
        }
        None => {
            resp.headers_mut().remove(header::CONTENT_TYPE);
        }
    }
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}
