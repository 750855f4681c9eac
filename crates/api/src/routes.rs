//! Handlers. Every tenant-scoped route checks the caller's scope first: a tenant key on
//! another tenant's id gets 404.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use switchyard_store::{NewExtension, NewTenant, ResourceKind, TenantChanges};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, Problem};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant, update_tenant, delete_tenant))
        .routes(routes!(create_range, list_ranges))
        .routes(routes!(delete_range))
        .routes(routes!(create_extension, list_extensions))
        .routes(routes!(get_extension, update_extension, delete_extension))
        .routes(routes!(add_numbers))
        .routes(routes!(assign_number, list_numbers))
        .routes(routes!(release_number))
        .routes(routes!(create_resource, list_resources))
        .routes(routes!(get_resource, replace_resource, delete_resource))
        .routes(routes!(set_number_target))
        .routes(routes!(create_media_pool, list_media_pools))
        .routes(routes!(create_carrier, list_carriers))
        .routes(routes!(delete_carrier))
        .routes(routes!(list_cdrs))
        .routes(routes!(enqueue_import, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
        .routes(routes!(list_bans))
        .routes(routes!(lift_ban))
        .routes(routes!(list_nodes))
        .routes(routes!(drain_node, resume_node))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ApiKeyInput {
    /// The tenant the key is limited to; absent for an operator key.
    tenant: Option<String>,
    /// A read-only key may only GET.
    #[serde(default)]
    read_only: bool,
}

#[derive(Debug, Serialize, ToSchema)]
struct ApiKeyView {
    id: String,
    /// `operator` or the tenant id.
    scope: String,
    read_only: bool,
    created_at: i64,
    /// The bearer token, shown only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl From<switchyard_store::ApiKey> for ApiKeyView {
    fn from(k: switchyard_store::ApiKey) -> Self {
        ApiKeyView {
            id: k.id,
            scope: k.scope,
            read_only: k.read_only,
            created_at: k.created_at,
            key: None,
        }
    }
}

/// Issues an API key: operator-wide, or limited to one tenant (operator keys only). The
/// token is in this answer and nowhere else; only its hash is kept.
#[utoipa::path(post, path = "/v1/api-keys", request_body = ApiKeyInput, security(("api_key" = [])),
    responses((status = 201, body = ApiKeyView), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn create_api_key(
    State(state): State<AppState>,
    who: Principal,
    Body(input): Body<ApiKeyInput>,
) -> Result<(StatusCode, Json<ApiKeyView>), ApiError> {
    who.operator_write()?;
    let scope = input.tenant.as_deref().unwrap_or("operator");
    let (token, record) =
        crate::auth::issue_key_record(&state.store, scope, input.read_only).await?;
    let mut view = ApiKeyView::from(record);
    view.key = Some(token);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Every API key, without secrets (operator keys only).
#[utoipa::path(get, path = "/v1/api-keys", security(("api_key" = [])),
    responses((status = 200, body = [ApiKeyView]), (status = 403, body = Problem)))]
async fn list_api_keys(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    if !who.is_operator() {
        return Err(ApiError::Forbidden("needs an operator key"));
    }
    Ok(Json(
        state
            .store
            .api_keys()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Revokes an API key at once (operator keys only).
#[utoipa::path(delete, path = "/v1/api-keys/{key_id}", security(("api_key" = [])),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn revoke_api_key(
    State(state): State<AppState>,
    who: Principal,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.operator_write()?;
    state.store.delete_api_key(&key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sources the edge has banned, in force now (operator keys only).
#[utoipa::path(get, path = "/v1/bans", security(("api_key" = [])),
    responses((status = 200, body = [crate::BanView]), (status = 403, body = Problem)))]
async fn list_bans(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<crate::BanView>>, ApiError> {
    if !who.is_operator() {
        return Err(ApiError::Forbidden("needs an operator key"));
    }
    Ok(Json(
        state.bans.as_ref().map(|b| b.list()).unwrap_or_default(),
    ))
}

/// Lifts the ban of a source address (operator keys only); its strikes are forgotten.
#[utoipa::path(delete, path = "/v1/bans/{source}", security(("api_key" = [])),
    params(("source" = String, Path, description = "IPv4 or IPv6 address")),
    responses((status = 204), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn lift_ban(
    State(state): State<AppState>,
    who: Principal,
    Path(source): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.operator_write()?;
    let ip: std::net::IpAddr = source
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{source:?} is not an IPv4 or IPv6 address")))?;
    match &state.bans {
        Some(bans) if bans.lift(ip) => Ok(StatusCode::NO_CONTENT),
        _ => Err(ApiError::NotFound("ban".into())),
    }
}

/// The cluster's cores and media nodes with a live heartbeat (operator keys only); empty
/// when this process has no cluster state (no Redis).
#[utoipa::path(get, path = "/v1/cluster/nodes", security(("api_key" = [])),
    responses((status = 200, body = [crate::NodeView]), (status = 403, body = Problem), (status = 503, body = Problem)))]
async fn list_nodes(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<crate::NodeView>>, ApiError> {
    if !who.is_operator() {
        return Err(ApiError::Forbidden("needs an operator key"));
    }
    match &state.cluster {
        Some(c) => c.list().await.map(Json).map_err(ApiError::Unavailable),
        None => Ok(Json(Vec::new())),
    }
}

/// Drains a node (operator keys only): it takes no new calls, its calls go on, and its
/// state becomes `drained` once the last has ended.
#[utoipa::path(post, path = "/v1/cluster/nodes/{id}/drain", security(("api_key" = [])),
    params(("id" = String, Path, description = "The node's id, like core@10.0.0.5:5070")),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)))]
async fn drain_node(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_drain(state, who, id, true).await
}

/// Lets a drained or draining node take calls again (operator keys only).
#[utoipa::path(delete, path = "/v1/cluster/nodes/{id}/drain", security(("api_key" = [])),
    params(("id" = String, Path, description = "The node's id")),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)))]
async fn resume_node(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_drain(state, who, id, false).await
}

async fn set_drain(
    state: AppState,
    who: Principal,
    id: String,
    drain: bool,
) -> Result<StatusCode, ApiError> {
    who.operator_write()?;
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::NotFound("node".into()));
    };
    match cluster.set_drain(id, drain).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::NotFound("node".into())),
        Err(why) => Err(ApiError::Unavailable(why)),
    }
}

/// A JSON body whose rejections become problem+json naming the defect.
pub(crate) struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => {
                let text = e.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&text)
                    .to_owned();
                let field = match detail.split_once(": ") {
                    Some((path, _)) if !path.contains(' ') => path.to_owned(),
                    _ => detail
                        .split('`')
                        .nth(1)
                        .filter(|_| {
                            detail.starts_with("unknown field")
                                || detail.starts_with("missing field")
                        })
                        .unwrap_or("body")
                        .to_owned(),
                };
                Err(ApiError::Unprocessable {
                    field,
                    rule: detail,
                })
            }
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadRequest(format!(
                "malformed JSON: {}",
                e.body_text()
            ))),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "Content-Type must be application/json".into(),
            )),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::TooLarge)
            }
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// Query parameters whose rejections become problem+json.
pub(crate) struct Params<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => {
                let text = e.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_owned();
                let field = detail
                    .split_once(": ")
                    .map(|(f, _)| f.to_owned())
                    .unwrap_or_else(|| "query".into());
                Err(ApiError::Unprocessable {
                    field,
                    rule: detail,
                })
            }
        }
    }
}

/// `?after=KEY&limit=N` on the lists that answer a plain array: the page is the array,
/// and a full page carries `Link: <...?after=LAST&limit=N>; rel="next"` (RFC 8288).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AfterQuery {
    /// The key of the last item of the previous page (as in its `Link` header).
    after: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

impl AfterQuery {
    /// `after` as a number, for lists keyed by one.
    fn after_number(&self) -> Result<Option<i64>, ApiError> {
        self.after
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| ApiError::Unprocessable {
                    field: "after".into(),
                    rule: "must be the number from the previous page's Link header".into(),
                })
            })
            .transpose()
    }
}

/// The page as a JSON array of views, with a `Link` to the next one when it is full
/// (`key` names a row as the next page's `after`).
fn array_page<R, V: Serialize + From<R>>(
    rows: Vec<R>,
    key: impl Fn(&R) -> String,
    limit: i64,
    path: &str,
) -> Response {
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(&key))
        .flatten();
    let items: Vec<V> = rows.into_iter().map(V::from).collect();
    let mut resp = Json(items).into_response();
    let query = next.and_then(|after| {
        serde_urlencoded::to_string([("after", after), ("limit", limit.to_string())]).ok()
    });
    if let Some(v) =
        query.and_then(|q| HeaderValue::from_str(&format!("<{path}?{q}>; rel=\"next\"")).ok())
    {
        resp.headers_mut().insert(axum::http::header::LINK, v);
    }
    resp
}

/// A list's `limit`: 100 by default, 1 to 1000.
fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Unprocessable {
            field: "limit".into(),
            rule: "must be between 1 and 1000".into(),
        });
    }
    Ok(limit)
}

fn with_etag(status: StatusCode, version: i64, body: impl Serialize) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        resp.headers_mut().insert(axum::http::header::ETAG, v);
    }
    resp
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 500, body = Problem)))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.store.list_tenants(None, 1).await?;
    Ok("ready")
}

/// Gauges of this process in the Prometheus text format (calls, media sessions and ports,
/// runtime tasks). Unauthenticated, like health: it names no tenant.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = match &state.metrics {
        Some(m) => crate::render_gauges((m.0)()),
        None => String::new(),
    };
    if let Some(text) = &state.metrics_text {
        out.push_str(&(text.0)());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TenantInput {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// SIP domain, e.g. acme.example.com: a DNS name (letters, digits and inner hyphens in
    /// dot-separated labels of up to 63 characters).
    #[schema(
        max_length = 253,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
    )]
    domain: String,
    #[schema(minimum = 0, maximum = 100000)]
    max_calls: Option<i64>,
    #[schema(minimum = 0, maximum = 10000)]
    calls_per_second: Option<i64>,
    #[schema(minimum = 0, maximum = 1000000)]
    max_registrations: Option<i64>,
    #[schema(minimum = 0, maximum = 1000000)]
    max_extensions: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
struct TenantView {
    id: String,
    name: String,
    domain: String,
    state: String,
    max_calls: i64,
    calls_per_second: i64,
    max_registrations: i64,
    max_extensions: i64,
    config_version: i64,
    /// The number calls out present when the extension names none.
    caller_id: Option<String>,
}

impl From<switchyard_store::Tenant> for TenantView {
    fn from(t: switchyard_store::Tenant) -> Self {
        TenantView {
            id: t.id,
            name: t.name,
            domain: t.domain,
            state: t.state,
            max_calls: t.max_calls,
            calls_per_second: t.calls_per_second,
            max_registrations: t.max_registrations,
            max_extensions: t.max_extensions,
            config_version: t.config_version,
            caller_id: t.caller_id,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct Page<T> {
    items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    cursor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only the tenant with this SIP domain.
    domain: Option<String>,
}

/// Creates a tenant (operator keys only).
#[utoipa::path(post, path = "/v1/tenants", request_body = TenantInput, security(("api_key" = [])),
    responses((status = 201, body = TenantView), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_tenant(
    State(state): State<AppState>,
    who: Principal,
    Body(input): Body<TenantInput>,
) -> Result<Response, ApiError> {
    who.operator_write()?;
    let t = state
        .store
        .create_tenant(&NewTenant {
            name: input.name,
            domain: input.domain,
            max_calls: input.max_calls,
            calls_per_second: input.calls_per_second,
            max_registrations: input.max_registrations,
            max_extensions: input.max_extensions,
        })
        .await?;
    Ok(with_etag(
        StatusCode::CREATED,
        t.config_version,
        TenantView::from(t),
    ))
}

/// Lists tenants: all of them for an operator key, its own for a tenant key.
#[utoipa::path(get, path = "/v1/tenants", params(PageQuery), security(("api_key" = [])),
    responses((status = 200, body = Page<TenantView>)))]
async fn list_tenants(
    State(state): State<AppState>,
    who: Principal,
    Params(q): Params<PageQuery>,
) -> Result<Json<Page<TenantView>>, ApiError> {
    // Checked first: a bad limit is refused whichever branch answers.
    let limit = page_limit(q.limit)?;
    if let Some(own) = &who.tenant {
        let t = state.store.tenant(own).await?;
        return Ok(Json(Page {
            items: vec![t.into()],
            next_cursor: None,
        }));
    }
    if let Some(domain) = &q.domain {
        let items = match state.store.tenant_by_domain(domain).await {
            Ok(t) => vec![t.into()],
            Err(switchyard_store::StoreError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        return Ok(Json(Page {
            items,
            next_cursor: None,
        }));
    }
    let items = state.store.list_tenants(q.cursor.as_deref(), limit).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|t| t.id.clone()))
        .flatten();
    Ok(Json(Page {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// One tenant.
#[utoipa::path(get, path = "/v1/tenants/{id}", security(("api_key" = [])),
    responses((status = 200, body = TenantView), (status = 404, body = Problem)))]
async fn get_tenant(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    who.may_read(&id)?;
    let t = state.store.tenant(&id).await?;
    Ok(with_etag(
        StatusCode::OK,
        t.config_version,
        TenantView::from(t),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    name: Option<String>,
    /// `active` or `suspended`.
    #[schema(pattern = "^(active|suspended)$")]
    state: Option<String>,
    #[schema(minimum = 0, maximum = 100000)]
    max_calls: Option<i64>,
    #[schema(minimum = 0, maximum = 10000)]
    calls_per_second: Option<i64>,
    #[schema(minimum = 0, maximum = 1000000)]
    max_registrations: Option<i64>,
    #[schema(minimum = 0, maximum = 1000000)]
    max_extensions: Option<i64>,
    /// `shared` or the name of a media pool.
    placement: Option<String>,
    reg_expiry_min: Option<i64>,
    reg_expiry_max: Option<i64>,
    reg_expiry_default: Option<i64>,
    /// One of the tenant's numbers, presented on calls out when the extension names
    /// none; `""` clears it.
    caller_id: Option<String>,
}

/// The version an `If-Match: "N"` header names (`*` or absent: any).
fn if_match(headers: &axum::http::HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| {
            ApiError::BadRequest(format!("If-Match {text:?} is not an ETag this API issued"))
        })
}

/// Changes a tenant; with `If-Match`, only if it is still at that version (else 412).
#[utoipa::path(patch, path = "/v1/tenants/{id}", request_body = TenantPatch, security(("api_key" = [])),
    responses((status = 200, body = TenantView), (status = 404, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn update_tenant(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    Body(input): Body<TenantPatch>,
) -> Result<Response, ApiError> {
    who.may_write(&id)?;
    // Limits and suspension are the operator's; a tenant key may rename its tenant.
    if !who.is_operator()
        && (input.state.is_some()
            || input.max_calls.is_some()
            || input.calls_per_second.is_some()
            || input.max_registrations.is_some()
            || input.max_extensions.is_some()
            || input.placement.is_some())
    {
        return Err(ApiError::Forbidden("limits and state need an operator key"));
    }
    let expected = if_match(&headers)?;
    let t = state
        .store
        .update_tenant(
            &id,
            &TenantChanges {
                name: input.name,
                state: input.state,
                max_calls: input.max_calls,
                calls_per_second: input.calls_per_second,
                max_registrations: input.max_registrations,
                max_extensions: input.max_extensions,
                placement: input.placement,
                reg_expiry_min: input.reg_expiry_min,
                reg_expiry_max: input.reg_expiry_max,
                reg_expiry_default: input.reg_expiry_default,
                caller_id: input.caller_id,
            },
            expected,
        )
        .await?;
    Ok(with_etag(
        StatusCode::OK,
        t.config_version,
        TenantView::from(t),
    ))
}

/// Deletes a tenant and everything it owns; its numbers go to quarantine (operator keys).
#[utoipa::path(delete, path = "/v1/tenants/{id}", security(("api_key" = [])),
    responses((status = 204), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn delete_tenant(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, ApiError> {
    who.operator_write()?;
    let expected = if_match(&headers)?;
    state
        .store
        .delete_tenant(&id, quarantine_end(), expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn quarantine_end() -> i64 {
    const THIRTY_DAYS_MS: i64 = 30 * 24 * 3600 * 1000;
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        + THIRTY_DAYS_MS
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RangeInput {
    #[schema(minimum = 1, maximum = 99999999)]
    first_number: i64,
    #[schema(minimum = 1, maximum = 99999999)]
    last_number: i64,
}

#[derive(Debug, Serialize, ToSchema)]
struct RangeView {
    id: String,
    first_number: i64,
    last_number: i64,
}

impl From<switchyard_store::ExtensionRange> for RangeView {
    fn from(r: switchyard_store::ExtensionRange) -> Self {
        RangeView {
            id: r.id,
            first_number: r.first_number,
            last_number: r.last_number,
        }
    }
}

/// Adds an extension range (ranges of one tenant never overlap).
#[utoipa::path(post, path = "/v1/tenants/{id}/extension-ranges", request_body = RangeInput, security(("api_key" = [])),
    responses((status = 201, body = RangeView), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_range(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Body(input): Body<RangeInput>,
) -> Result<(StatusCode, Json<RangeView>), ApiError> {
    who.may_write(&id)?;
    let r = state
        .store
        .add_extension_range(&id, input.first_number, input.last_number)
        .await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

/// The tenant's extension ranges.
#[utoipa::path(get, path = "/v1/tenants/{id}/extension-ranges", params(AfterQuery), security(("api_key" = [])),
    responses((status = 200, body = [RangeView], headers(("Link" = String, description = "the next page, when this one is full"))),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn list_ranges(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Params(q): Params<AfterQuery>,
) -> Result<Response, ApiError> {
    who.may_read(&id)?;
    let limit = page_limit(q.limit)?;
    let after = q.after_number()?;
    state.store.tenant(&id).await?;
    let ranges = state.store.extension_ranges_page(&id, after, limit).await?;
    Ok(array_page::<_, RangeView>(
        ranges,
        |r| r.first_number.to_string(),
        limit,
        &format!("/v1/tenants/{id}/extension-ranges"),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ExtensionInput {
    range_id: String,
    /// A number inside the range; absent for the next free one.
    number: Option<i64>,
    #[serde(default)]
    display_name: String,
    /// Defaults to the number.
    username: Option<String>,
    /// Stored only as HA1 digests.
    #[schema(min_length = 8, max_length = 128)]
    password: String,
    #[serde(default)]
    voicemail: bool,
}

#[derive(Debug, Serialize, ToSchema)]
struct ExtensionView {
    id: String,
    range_id: String,
    number: i64,
    display_name: String,
    username: String,
    voicemail: bool,
    max_registrations: i64,
    forward_always: Option<String>,
    forward_busy: Option<String>,
    forward_no_answer: Option<String>,
    no_answer_seconds: i64,
    /// The number this extension presents on calls out.
    caller_id: Option<String>,
}

impl From<switchyard_store::Extension> for ExtensionView {
    fn from(e: switchyard_store::Extension) -> Self {
        ExtensionView {
            id: e.id,
            range_id: e.range_id,
            number: e.number,
            display_name: e.display_name,
            username: e.username,
            voicemail: e.voicemail,
            max_registrations: e.max_registrations,
            forward_always: e.forward_always,
            forward_busy: e.forward_busy,
            forward_no_answer: e.forward_no_answer,
            no_answer_seconds: e.no_answer_seconds,
            caller_id: e.caller_id,
        }
    }
}

/// Creates an extension (a given number, or the next free one of the range).
#[utoipa::path(post, path = "/v1/tenants/{id}/extensions", request_body = ExtensionInput, security(("api_key" = [])),
    responses((status = 201, body = ExtensionView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_extension(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Body(input): Body<ExtensionInput>,
) -> Result<(StatusCode, Json<ExtensionView>), ApiError> {
    who.may_write(&id)?;
    let e = state
        .store
        .create_extension(
            &id,
            &NewExtension {
                range_id: input.range_id,
                number: input.number,
                display_name: input.display_name,
                username: input.username,
                password: input.password,
                voicemail: input.voicemail,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(e.into())))
}

/// The tenant's extensions in number order, a page at a time (`cursor`: the last number
/// of the previous page).
#[utoipa::path(get, path = "/v1/tenants/{id}/extensions", params(PageQuery), security(("api_key" = [])),
    responses((status = 200, body = Page<ExtensionView>), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn list_extensions(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Params(q): Params<PageQuery>,
) -> Result<Json<Page<ExtensionView>>, ApiError> {
    who.may_read(&id)?;
    state.store.tenant(&id).await?;
    let limit = page_limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| ApiError::Unprocessable {
            field: "cursor".into(),
            rule: "must be a cursor this API returned".into(),
        })?),
    };
    let items = state.store.extensions_page(&id, after, limit).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| e.number.to_string()))
        .flatten();
    Ok(Json(Page {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Deletes an extension.
#[utoipa::path(delete, path = "/v1/tenants/{id}/extensions/{extension_id}", security(("api_key" = [])),
    responses((status = 204), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn delete_extension(
    State(state): State<AppState>,
    who: Principal,
    Path((id, extension_id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, ApiError> {
    who.may_write(&id)?;
    let expected = if_match(&headers)?;
    state
        .store
        .delete_extension(&id, &extension_id, expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NumbersInput {
    /// E.164 numbers to add to the free pool (all or none; at most 10,000, and the body
    /// within the size limit).
    #[schema(min_items = 1)]
    numbers: Vec<E164>,
}

/// A number in E.164: `+`, then 7 to 15 digits, the first not 0.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct E164(String);

impl utoipa::PartialSchema for E164 {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^\+[1-9][0-9]{6,14}$"))
            .description(Some(
                "A number in E.164: `+`, then 7 to 15 digits, the first not 0.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for E164 {}

#[derive(Debug, Serialize, ToSchema)]
struct NumberView {
    number: String,
    state: String,
}

impl From<switchyard_store::Did> for NumberView {
    fn from(d: switchyard_store::Did) -> Self {
        NumberView {
            number: d.number,
            state: d.state,
        }
    }
}

/// Adds numbers to the shared pool (operator keys).
#[utoipa::path(post, path = "/v1/numbers", request_body = NumbersInput, security(("api_key" = [])),
    responses((status = 201), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn add_numbers(
    State(state): State<AppState>,
    who: Principal,
    Body(input): Body<NumbersInput>,
) -> Result<StatusCode, ApiError> {
    who.operator_write()?;
    if input.numbers.is_empty() || input.numbers.len() > 10_000 {
        return Err(ApiError::Unprocessable {
            field: "numbers".into(),
            rule: "1 to 10000 numbers".into(),
        });
    }
    let numbers: Vec<String> = input.numbers.into_iter().map(|n| n.0).collect();
    state.store.add_dids(&numbers).await?;
    Ok(StatusCode::CREATED)
}

/// Assigns the next free number of the pool to the tenant.
#[utoipa::path(post, path = "/v1/tenants/{id}/numbers", security(("api_key" = [])),
    responses((status = 201, body = NumberView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn assign_number(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<NumberView>), ApiError> {
    who.may_write(&id)?;
    let d = state.store.assign_next_did(&id).await?;
    Ok((StatusCode::CREATED, Json(d.into())))
}

/// The tenant's numbers.
#[utoipa::path(get, path = "/v1/tenants/{id}/numbers", params(AfterQuery), security(("api_key" = [])),
    responses((status = 200, body = [NumberView], headers(("Link" = String, description = "the next page, when this one is full"))),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn list_numbers(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Params(q): Params<AfterQuery>,
) -> Result<Response, ApiError> {
    who.may_read(&id)?;
    let limit = page_limit(q.limit)?;
    state.store.tenant(&id).await?;
    let dids = state
        .store
        .dids_page(&id, q.after.as_deref(), limit)
        .await?;
    Ok(array_page::<_, NumberView>(
        dids,
        |d| d.number.clone(),
        limit,
        &format!("/v1/tenants/{id}/numbers"),
    ))
}

/// Releases a number of the tenant into quarantine (30 days) before reuse.
#[utoipa::path(delete, path = "/v1/tenants/{id}/numbers/{number}", security(("api_key" = [])),
    responses((status = 204), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn release_number(
    State(state): State<AppState>,
    who: Principal,
    Path((id, number)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, ApiError> {
    who.may_write(&id)?;
    let expected = if_match(&headers)?;
    state
        .store
        .release_did(&id, &number, quarantine_end(), expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ResourceInput {
    name: String,
    /// The kind's spec (see the schemas RingGroupSpec, IvrMenuSpec, ...).
    #[schema(value_type = Object)]
    spec: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
struct ResourceView {
    id: String,
    kind: String,
    name: String,
    /// The spec without secrets (trunk passwords, voicemail PIN hashes).
    #[schema(value_type = Object)]
    spec: serde_json::Value,
}

impl From<switchyard_store::Resource> for ResourceView {
    fn from(r: switchyard_store::Resource) -> Self {
        let mut spec: serde_json::Value = serde_json::from_str(&r.spec).unwrap_or_default();
        if let Some(o) = spec.as_object_mut() {
            o.remove("password");
            o.remove("pin_sha256");
        }
        ResourceView {
            id: r.id,
            kind: r.kind,
            name: r.name,
            spec,
        }
    }
}

fn kind(k: &str) -> Result<ResourceKind, ApiError> {
    ResourceKind::parse(k).ok_or_else(|| ApiError::NotFound(format!("resource kind {k}")))
}

/// Creates a ring group, IVR menu, voicemail box, time condition, outbound route or trunk.
#[utoipa::path(post, path = "/v1/tenants/{id}/resources/{kind}", request_body = ResourceInput, security(("api_key" = [])),
    params(("kind" = String, Path, description = "ring_group, ivr_menu, voicemail_box, time_condition, outbound_route or trunk")),
    responses((status = 201, body = ResourceView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_resource(
    State(state): State<AppState>,
    who: Principal,
    Path((id, k)): Path<(String, String)>,
    Body(input): Body<ResourceInput>,
) -> Result<(StatusCode, Json<ResourceView>), ApiError> {
    who.may_write(&id)?;
    let k = kind(&k)?;
    let r = state
        .store
        .create_resource(&id, k, &input.name, input.spec)
        .await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

/// The tenant's resources of one kind.
#[utoipa::path(get, path = "/v1/tenants/{id}/resources/{kind}", params(AfterQuery), security(("api_key" = [])),
    responses((status = 200, body = [ResourceView], headers(("Link" = String, description = "the next page, when this one is full"))),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn list_resources(
    State(state): State<AppState>,
    who: Principal,
    Path((id, k)): Path<(String, String)>,
    Params(q): Params<AfterQuery>,
) -> Result<Response, ApiError> {
    who.may_read(&id)?;
    let limit = page_limit(q.limit)?;
    let k = kind(&k)?;
    state.store.tenant(&id).await?;
    let rows = state
        .store
        .resources_page(&id, k, q.after.as_deref(), limit)
        .await?;
    Ok(array_page::<_, ResourceView>(
        rows,
        |r| r.name.clone(),
        limit,
        &format!("/v1/tenants/{id}/resources/{}", k.as_str()),
    ))
}

/// One resource.
#[utoipa::path(get, path = "/v1/tenants/{id}/resources/{kind}/{resource_id}", security(("api_key" = [])),
    responses((status = 200, body = ResourceView), (status = 404, body = Problem)))]
async fn get_resource(
    State(state): State<AppState>,
    who: Principal,
    Path((id, k, rid)): Path<(String, String, String)>,
) -> Result<Json<ResourceView>, ApiError> {
    who.may_read(&id)?;
    let k = kind(&k)?;
    let r = state.store.resource(&id, &rid).await?;
    if r.kind != k.as_str() {
        return Err(ApiError::NotFound("resource".into()));
    }
    Ok(Json(r.into()))
}

/// Deletes a resource that nothing refers to any more.
#[utoipa::path(delete, path = "/v1/tenants/{id}/resources/{kind}/{resource_id}", security(("api_key" = [])),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem)))]
async fn delete_resource(
    State(state): State<AppState>,
    who: Principal,
    Path((id, k, rid)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, ApiError> {
    who.may_write(&id)?;
    let expected = if_match(&headers)?;
    let k = kind(&k)?;
    let r = state.store.resource(&id, &rid).await?;
    if r.kind != k.as_str() {
        return Err(ApiError::NotFound("resource".into()));
    }
    state.store.delete_resource(&id, &rid, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TargetInput {
    /// `{"kind": "extension"|"ring_group"|"ivr_menu"|"voicemail_box"|"time_condition", "id": "..."}`
    /// or `{"kind": "hangup"}`.
    #[schema(value_type = Object)]
    target: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
struct RoutedNumberView {
    number: String,
    state: String,
    target: Option<String>,
}

/// Points one of the tenant's numbers at an extension or call-flow resource of the tenant.
#[utoipa::path(put, path = "/v1/tenants/{id}/numbers/{number}/target", request_body = TargetInput, security(("api_key" = [])),
    responses((status = 200, body = RoutedNumberView), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn set_number_target(
    State(state): State<AppState>,
    who: Principal,
    Path((id, number)): Path<(String, String)>,
    Body(input): Body<TargetInput>,
) -> Result<Json<RoutedNumberView>, ApiError> {
    who.may_write(&id)?;
    let target: switchyard_store::Target =
        serde_json::from_value(input.target).map_err(|e| ApiError::Unprocessable {
            field: "target".into(),
            rule: e.to_string(),
        })?;
    let d = state.store.set_did_target(&id, &number, &target).await?;
    Ok(Json(RoutedNumberView {
        number: d.number,
        state: d.state,
        target: d.target,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CarrierInput {
    /// 1 to 64 of A-Z a-z 0-9 - _.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    name: String,
    /// The networks the carrier's calls come from: addresses or `address/length` (may
    /// be empty for a carrier we register to).
    #[serde(default)]
    #[schema(max_items = 64)]
    addresses: Vec<String>,
    /// Register to the carrier with digest credentials; calls from its registrar's
    /// address are then its calls.
    registration: Option<CarrierRegistrationInput>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CarrierRegistrationInput {
    /// `host` or `host:port` (UDP; port 5060 when none is given).
    registrar: String,
    username: String,
    /// Kept to answer the carrier's challenges; never returned.
    password: String,
    /// Seconds asked for in each REGISTER (60 to 86400; 600 when absent).
    expires: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
struct CarrierView {
    name: String,
    /// Canonical networks (`192.0.2.10/32`).
    addresses: Vec<String>,
    /// The registration we keep with the carrier (without its password).
    registration: Option<CarrierRegistrationView>,
    created_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
struct CarrierRegistrationView {
    registrar: String,
    username: String,
    expires: u32,
}

impl From<switchyard_store::Carrier> for CarrierView {
    fn from(c: switchyard_store::Carrier) -> Self {
        CarrierView {
            name: c.name,
            addresses: c.addresses,
            registration: c.registration.map(|r| CarrierRegistrationView {
                registrar: r.registrar,
                username: r.username,
                expires: r.expires,
            }),
            created_at: c.created_at,
        }
    }
}

/// Adds a carrier: INVITEs from its networks (or, for a carrier we register to, from its
/// registrar's address) to an assigned number of the DID pool reach the tenant holding
/// the number (operator keys). Edges pick it up within seconds and start registering.
#[utoipa::path(post, path = "/v1/carriers", request_body = CarrierInput, security(("api_key" = [])),
    responses((status = 201, body = CarrierView), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_carrier(
    State(state): State<AppState>,
    who: Principal,
    Body(input): Body<CarrierInput>,
) -> Result<(StatusCode, Json<CarrierView>), ApiError> {
    who.operator_write()?;
    let registration = input
        .registration
        .map(|r| switchyard_store::CarrierRegistration {
            registrar: r.registrar,
            username: r.username,
            password: r.password,
            expires: r.expires.unwrap_or(600),
        });
    let c = state
        .store
        .create_carrier_with(&input.name, &input.addresses, registration)
        .await?;
    Ok((StatusCode::CREATED, Json(c.into())))
}

/// Carriers (operator keys).
#[utoipa::path(get, path = "/v1/carriers", security(("api_key" = [])),
    responses((status = 200, body = [CarrierView]), (status = 403, body = Problem)))]
async fn list_carriers(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<CarrierView>>, ApiError> {
    if !who.is_operator() {
        return Err(ApiError::Forbidden("needs an operator key"));
    }
    Ok(Json(
        state
            .store
            .carriers()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Removes a carrier: calls from its networks are no longer taken (operator keys).
#[utoipa::path(delete, path = "/v1/carriers/{name}", security(("api_key" = [])),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn delete_carrier(
    State(state): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.operator_write()?;
    state.store.delete_carrier(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MediaPoolInput {
    name: String,
    /// A tenant the pool serves alone; absent for a shared pool.
    dedicated_tenant_id: Option<String>,
    max_sessions: i64,
    /// cgroup cpu.max as a percentage of one core.
    cpu_percent: i64,
    memory_mb: i64,
}

#[derive(Debug, Serialize, ToSchema)]
struct MediaPoolView {
    name: String,
    dedicated_tenant_id: Option<String>,
    max_sessions: i64,
    cpu_percent: i64,
    memory_mb: i64,
}

impl From<switchyard_store::MediaPool> for MediaPoolView {
    fn from(p: switchyard_store::MediaPool) -> Self {
        MediaPoolView {
            name: p.name,
            dedicated_tenant_id: p.dedicated_tenant_id,
            max_sessions: p.max_sessions,
            cpu_percent: p.cpu_percent,
            memory_mb: p.memory_mb,
        }
    }
}

/// Creates a media pool (operator keys).
#[utoipa::path(post, path = "/v1/media-pools", request_body = MediaPoolInput, security(("api_key" = [])),
    responses((status = 201, body = MediaPoolView), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_media_pool(
    State(state): State<AppState>,
    who: Principal,
    Body(input): Body<MediaPoolInput>,
) -> Result<(StatusCode, Json<MediaPoolView>), ApiError> {
    who.operator_write()?;
    let p = state
        .store
        .create_media_pool(&switchyard_store::MediaPool {
            name: input.name,
            dedicated_tenant_id: input.dedicated_tenant_id,
            max_sessions: input.max_sessions,
            cpu_percent: input.cpu_percent,
            memory_mb: input.memory_mb,
            created_at: 0,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(p.into())))
}

/// Media pools (operator keys).
#[utoipa::path(get, path = "/v1/media-pools", security(("api_key" = [])), responses((status = 200, body = [MediaPoolView])))]
async fn list_media_pools(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<MediaPoolView>>, ApiError> {
    if !who.is_operator() {
        return Err(ApiError::Forbidden("needs an operator key"));
    }
    Ok(Json(
        state
            .store
            .media_pools()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CdrQuery {
    /// Only calls started before this instant (epoch ms): the cursor for the next page.
    before: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
struct CdrView {
    id: String,
    call_id: String,
    from_uri: String,
    to_uri: String,
    started_at: i64,
    answered_at: Option<i64>,
    ended_at: i64,
    duration_ms: i64,
    disposition: String,
    hangup_side: Option<String>,
    /// The legs: A's and B's media counters (packets, bytes, loss, jitter; `leg` is `a`
    /// or `b`), then each destination the call rang in order (`leg` is `attempt`: `to`,
    /// `via`, `reason` such as `dialled`, `forward-busy`, `hunt`, `failover`, `transfer`,
    /// and `result`, the final status it gave).
    #[schema(value_type = Vec<Object>)]
    legs: serde_json::Value,
}

/// The tenant's call detail records, newest first.
#[utoipa::path(get, path = "/v1/tenants/{id}/cdrs", params(CdrQuery), security(("api_key" = [])),
    responses((status = 200, body = [CdrView]), (status = 404, body = Problem)))]
async fn list_cdrs(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Params(q): Params<CdrQuery>,
) -> Result<Json<Vec<CdrView>>, ApiError> {
    who.may_read(&id)?;
    state.store.tenant(&id).await?;
    let limit = page_limit(q.limit)?;
    let rows = state.store.cdrs(&id, q.before, limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|c| CdrView {
                id: c.id,
                call_id: c.call_id,
                from_uri: c.from_uri,
                to_uri: c.to_uri,
                started_at: c.started_at,
                answered_at: c.answered_at,
                ended_at: c.ended_at,
                duration_ms: c.duration_ms,
                disposition: c.disposition,
                hangup_side: c.hangup_side,
                legs: serde_json::from_str(&c.legs)
                    .ok()
                    .filter(serde_json::Value::is_array)
                    .unwrap_or_else(|| serde_json::json!([])),
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ExtensionPatch {
    display_name: Option<String>,
    voicemail: Option<bool>,
    #[schema(minimum = 1, maximum = 20)]
    max_registrations: Option<i64>,
    /// An extension number or E.164 number; `""` clears it.
    forward_always: Option<String>,
    forward_busy: Option<String>,
    forward_no_answer: Option<String>,
    no_answer_seconds: Option<i64>,
    /// One of the tenant's numbers, presented on this extension's calls out; `""` clears.
    caller_id: Option<String>,
}

/// One extension.
#[utoipa::path(get, path = "/v1/tenants/{id}/extensions/{extension_id}", security(("api_key" = [])),
    responses((status = 200, body = ExtensionView), (status = 404, body = Problem)))]
async fn get_extension(
    State(state): State<AppState>,
    who: Principal,
    Path((id, ext)): Path<(String, String)>,
) -> Result<Json<ExtensionView>, ApiError> {
    who.may_read(&id)?;
    Ok(Json(state.store.extension(&id, &ext).await?.into()))
}

/// Changes an extension: display name, voicemail, registrations, call forwarding.
#[utoipa::path(patch, path = "/v1/tenants/{id}/extensions/{extension_id}", request_body = ExtensionPatch, security(("api_key" = [])),
    responses((status = 200, body = ExtensionView), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn update_extension(
    State(state): State<AppState>,
    who: Principal,
    Path((id, ext)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    Body(input): Body<ExtensionPatch>,
) -> Result<Json<ExtensionView>, ApiError> {
    who.may_write(&id)?;
    let e = state
        .store
        .update_extension(
            &id,
            &ext,
            &switchyard_store::ExtensionChanges {
                display_name: input.display_name,
                voicemail: input.voicemail,
                max_registrations: input.max_registrations,
                forward_always: input.forward_always,
                forward_busy: input.forward_busy,
                forward_no_answer: input.forward_no_answer,
                no_answer_seconds: input.no_answer_seconds,
                caller_id: input.caller_id,
                expected_version: if_match(&headers)?,
            },
        )
        .await?;
    Ok(Json(e.into()))
}

#[derive(Debug, Serialize, ToSchema)]
struct JobView {
    id: String,
    /// Place in the tenant's queue.
    seq: i64,
    kind: String,
    /// `queued`, `running`, `done` or `failed`.
    state: String,
    /// What the job did, once it ended.
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
}

impl From<switchyard_store::Job> for JobView {
    fn from(j: switchyard_store::Job) -> Self {
        JobView {
            id: j.id,
            seq: j.seq,
            kind: j.kind,
            state: j.state,
            result: j.result.and_then(|r| serde_json::from_str(&r).ok()),
        }
    }
}

/// Queues a bulk import for the tenant; jobs of one tenant run one after another.
#[utoipa::path(post, path = "/v1/tenants/{id}/jobs/import", request_body = crate::jobs::ImportJob, security(("api_key" = [])),
    responses((status = 202, body = JobView), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn enqueue_import(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Body(input): Body<serde_json::Value>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    who.may_write(&id)?;
    // Checked now so a malformed job is refused at once, not failed later.
    let job = serde_json::from_value::<crate::jobs::ImportJob>(input.clone()).map_err(|e| {
        ApiError::Unprocessable {
            field: "body".into(),
            rule: e.to_string(),
        }
    })?;
    if let Err((field, rule)) = job.check() {
        return Err(ApiError::Unprocessable {
            field: field.into(),
            rule,
        });
    }
    let job = state
        .store
        .enqueue_job(&id, "import", &input.to_string())
        .await?;
    // The worker reads the queue on its own connection: wake it once the job is committed.
    let jobs = state.jobs.clone();
    let tenant = id.clone();
    switchyard_store::after_commit(move || jobs.kick(&tenant));
    Ok((StatusCode::ACCEPTED, Json(job.into())))
}

/// The tenant's jobs in queue order.
#[utoipa::path(get, path = "/v1/tenants/{id}/jobs", params(AfterQuery), security(("api_key" = [])),
    responses((status = 200, body = [JobView], headers(("Link" = String, description = "the next page, when this one is full"))),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn list_jobs(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Params(q): Params<AfterQuery>,
) -> Result<Response, ApiError> {
    who.may_read(&id)?;
    let limit = page_limit(q.limit)?;
    let after = q.after_number()?;
    state.store.tenant(&id).await?;
    let jobs = state.store.jobs_page(&id, after, limit).await?;
    Ok(array_page::<_, JobView>(
        jobs,
        |j| j.seq.to_string(),
        limit,
        &format!("/v1/tenants/{id}/jobs"),
    ))
}

/// One job.
#[utoipa::path(get, path = "/v1/tenants/{id}/jobs/{job_id}", security(("api_key" = [])),
    responses((status = 200, body = JobView), (status = 404, body = Problem)))]
async fn get_job(
    State(state): State<AppState>,
    who: Principal,
    Path((id, job)): Path<(String, String)>,
) -> Result<Json<JobView>, ApiError> {
    who.may_read(&id)?;
    Ok(Json(state.store.job(&id, &job).await?.into()))
}

/// Replaces a resource's name and spec (validated as on creation).
#[utoipa::path(put, path = "/v1/tenants/{id}/resources/{kind}/{resource_id}", request_body = ResourceInput, security(("api_key" = [])),
    responses((status = 200, body = ResourceView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn replace_resource(
    State(state): State<AppState>,
    who: Principal,
    Path((id, k, rid)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
    Body(input): Body<ResourceInput>,
) -> Result<Json<ResourceView>, ApiError> {
    who.may_write(&id)?;
    let k = kind(&k)?;
    let current = state.store.resource(&id, &rid).await?;
    if current.kind != k.as_str() {
        return Err(ApiError::NotFound("resource".into()));
    }
    Ok(Json(
        state
            .store
            .update_resource_if(&id, &rid, &input.name, input.spec, if_match(&headers)?)
            .await?
            .into(),
    ))
}

/// Deletes an extension range that holds no extensions (else 409).
#[utoipa::path(delete, path = "/v1/tenants/{id}/extension-ranges/{range_id}", security(("api_key" = [])),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem)))]
async fn delete_range(
    State(state): State<AppState>,
    who: Principal,
    Path((id, range)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, ApiError> {
    who.may_write(&id)?;
    let expected = if_match(&headers)?;
    state
        .store
        .delete_extension_range(&id, &range, expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
