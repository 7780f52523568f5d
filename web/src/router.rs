//! The axum router for the v1 API, health, readiness and metrics.
//!
//! Handlers validate everything a client sends (ids, content types, JSON,
//! nesting, query parameters) before the node sees it, so bad input is
//! answered with a 4xx problem and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_crdt::patch::parse_patch;
use meridian_crdt::{base64url, json as crdt_json, DocId, Hlc, Token, WriteOp, DEPTH_MAX};
use serde_json::{json, Value as JsonValue};

use crate::api::{ListResponse, WriteResponse, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, TOKEN_HEADER};
use crate::error::ApiError;
use crate::metrics::HttpMetrics;
use crate::node::{FeedEvent, Freshness, Node, ReadOptions, WriteAck};

/// HTTP-level limits.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// Largest request body accepted (413 beyond).
    pub body_limit_bytes: usize,
    /// Bearer token for `/v1/admin/*`; without one those endpoints answer 404.
    pub admin_token: Option<String>,
    /// Client tokens; with any, requests need a token with the right scope (see `auth.rs`).
    pub tokens: crate::auth::Tokens,
    /// Let requests without a token read and write although tokens exist.
    pub allow_anonymous: bool,
    /// Timeouts, concurrency, rate and connection limits (see `limits.rs`).
    pub limits: crate::limits::Limits,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            body_limit_bytes: 1 << 20,
            admin_token: None,
            tokens: crate::auth::Tokens::new(),
            allow_anonymous: false,
            limits: crate::limits::Limits::default(),
        }
    }
}

/// What every handler shares, behind one `Arc`: axum clones the state for
/// each request, and one reference count (one contended cache line between
/// the worker threads) costs less than one per field.
struct AppState<N>(Arc<AppInner<N>>);

struct AppInner<N> {
    node: Arc<N>,
    http_metrics: Arc<HttpMetrics>,
    auth: Arc<crate::auth::Auth>,
    guard: Arc<crate::limits::Guard>,
}

impl<N> Clone for AppState<N> {
    fn clone(&self) -> Self {
        AppState(self.0.clone())
    }
}

impl<N> std::ops::Deref for AppState<N> {
    type Target = AppInner<N>;
    fn deref(&self) -> &AppInner<N> {
        &self.0
    }
}

/// Builds the router over `node`.
pub fn router<N: Node>(node: Arc<N>, config: WebConfig) -> Router {
    let http_metrics = Arc::new(HttpMetrics::default());
    let dashboard = crate::dashboard::routes(node.clone(), crate::dashboard::DashboardConfig::from_env());
    let auth = Arc::new(crate::auth::Auth::new(config.tokens, config.admin_token.as_deref(), config.allow_anonymous));
    let guard = Arc::new(crate::limits::Guard::new(auth.clone(), config.limits, config.body_limit_bytes));
    let state = AppState(Arc::new(AppInner { node, http_metrics: http_metrics.clone(), auth, guard: guard.clone() }));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<N>))
        .route("/metrics", get(render_metrics::<N>))
        .route("/openapi.json", get(openapi))
        .route("/v1/docs", get(list_docs::<N>))
        .route("/v1/cluster", get(cluster::<N>))
        .route("/v1/writes/{token}", get(get_receipt::<N>))
        .route("/v1/events", get(all_events::<N>))
        .route("/v1/admin/faults", get(get_faults::<N>).post(post_fault::<N>).delete(delete_faults::<N>))
        .route("/v1/admin/members/{member}/decommission", post(decommission::<N>))
        .route("/v1/admin/backup", get(backup::<N>))
        .route("/v1/docs/{*id}", get(get_doc::<N>).put(put_doc::<N>).patch(patch_doc::<N>).delete(delete_doc::<N>))
        .merge(dashboard)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        // CORS, metrics, then authentication, rate limit, load shedding and timeouts
        // (limits.rs), as one layer (front.rs). Applied to the fallbacks too, so
        // preflight requests are answered before routing refuses OPTIONS.
        .layer(crate::front::FrontLayer::new(guard, http_metrics, config.body_limit_bytes))
        .with_state(state)
}

async fn healthz() -> Json<JsonValue> {
    Json(json!({"status": "ok"}))
}

async fn readyz<N: Node>(State(state): State<AppState<N>>) -> Response {
    if state.node.ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "storage is not open or recovery is still running")
            .into_response()
    }
}

async fn render_metrics<N: Node>(State(state): State<AppState<N>>) -> Response {
    let mut out = String::with_capacity(8192);
    state.http_metrics.render(&mut out);
    state.guard.render(&mut out);
    state.node.render_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

async fn openapi() -> Json<JsonValue> {
    static SPEC: std::sync::OnceLock<JsonValue> = std::sync::OnceLock::new();
    Json(SPEC.get_or_init(crate::openapi::spec).clone())
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-route",
        format!("no endpoint at {method} {}; documents live under /v1/docs/{{id}}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not supported on {}; see the Allow header", uri.path()),
    );
    // The document route is one wildcard, so the router would advertise its
    // write methods on the read-only views too.
    match uri.path().strip_prefix("/v1/docs/").map(split_sub_resource) {
        Some((_, Some(_))) => error.with_header(header::ALLOW, "GET, HEAD"),
        _ => error,
    }
}

fn doc_id(path: Result<Path<String>, PathRejection>) -> Result<DocId, ApiError> {
    let Path(raw) =
        path.map_err(|rej| ApiError::bad_request("bad-id", format!("invalid document path: {}", rej.body_text())))?;
    DocId::new(&raw).map_err(|err| ApiError::bad_request("bad-id", err.to_string()))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        let status = rej.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "body-too-large", "request body is larger than the limit; send a smaller document")
        } else {
            ApiError::new(status, "bad-body", format!("could not read the request body: {}", rej.body_text()))
        }
    })
}

/// The media type of the request, lower-cased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

fn parse_json(bytes: &[u8]) -> Result<JsonValue, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("malformed-json", "the request body is empty; send a JSON document"));
    }
    let value: JsonValue = serde_json::from_slice(bytes).map_err(|err| {
        if err.to_string().contains("recursion limit") {
            too_deep()
        } else {
            ApiError::bad_request("malformed-json", format!("the body is not valid JSON: {err}"))
        }
    })?;
    if crdt_json::depth(&value) > DEPTH_MAX {
        return Err(too_deep());
    }
    Ok(value)
}

fn too_deep() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "too-deep",
        format!("the JSON nests deeper than {DEPTH_MAX} levels; flatten the document"),
    )
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<String>, ApiError> {
    match headers.get(&name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| ApiError::bad_request("bad-header", format!("the {name} header is not visible ASCII"))),
    }
}

fn write_response(ack: WriteAck) -> Response {
    let status = if ack.created { StatusCode::CREATED } else { StatusCode::OK };
    let token = ack.token.to_string();
    let body = WriteResponse { id: ack.id.to_string(), token: token.clone(), hlc: ack.hlc.to_string() };
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&token) {
        headers.insert(TOKEN_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&ack.etag) {
        headers.insert(header::ETAG, value);
    }
    if ack.created {
        if let Ok(value) = HeaderValue::from_str(&format!("/v1/docs/{}", ack.id)) {
            headers.insert(header::LOCATION, value);
        }
    }
    response
}

/// Whether an `If-None-Match` list matches `etag` (weak comparison, RFC 9110).
fn none_match(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// Last path segments that name a document's sub-resources rather than a
/// document: ids ending in them cannot be written (they could not be read).
const SUB_RESOURCES: [&str; 3] = ["conflicts", "history", "events"];

/// Splits `users/42/history` into the document and the sub-resource.
fn split_sub_resource(raw: &str) -> (&str, Option<&str>) {
    match raw.rsplit_once('/') {
        Some((doc, last)) if SUB_RESOURCES.contains(&last) && !doc.is_empty() => (doc, Some(last)),
        _ => (raw, None),
    }
}

/// Refuses writes to a sub-resource path (`.../conflicts`, `/history`,
/// `/events`): those are read-only views, so 405 with `Allow`, which also
/// means no document id can end in them (it could never be read back).
fn writable_id(id: &DocId) -> Result<(), ApiError> {
    if let (_, Some(sub)) = split_sub_resource(id.as_str()) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("/{sub} is a read-only view of a document (GET only), so document ids may not end in /{sub}"),
        )
        .with_header(header::ALLOW, "GET, HEAD"));
    }
    Ok(())
}

/// Refuses query parameters an endpoint does not take, naming the ones it does.
pub(crate) fn reject_unknown(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::bad_request(
            "bad-query",
            format!("unknown query parameter {unknown:?}; this endpoint takes {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A whole-number query parameter within `range`, or `default` when absent.
pub(crate) fn bounded_number(
    params: &HashMap<String, String>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "bad-query",
                format!("{name} must be a whole number from {} to {}, got {text:?}", range.start(), range.end()),
            )),
        },
    }
}

/// Largest `wait_ms` a read may ask for.
pub const WAIT_MS_MAX: u64 = 30_000;
/// `wait_ms` when a read does not say.
pub const WAIT_MS_DEFAULT: u64 = 2_000;

fn read_options(params: &HashMap<String, String>, headers: &HeaderMap) -> Result<ReadOptions, ApiError> {
    reject_unknown(params, &["after", "wait_ms", "max_staleness_ms", "at"])?;
    let after_text = match params.get("after") {
        Some(text) => Some(text.clone()),
        None => header_text(headers, header::HeaderName::from_static("meridian-after"))?,
    };
    let after = match after_text {
        None => None,
        Some(text) => {
            Some(Token::parse(text.trim()).map_err(|err| ApiError::bad_request("bad-token", format!("after: {err}")))?)
        }
    };
    let wait_ms = bounded_number(params, "wait_ms", WAIT_MS_DEFAULT, 0..=WAIT_MS_MAX)?;
    let max_staleness_ms = match params.get("max_staleness_ms") {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "bad-query",
                format!("max_staleness_ms must be a whole number of milliseconds, got {text:?}"),
            )
        })?),
    };
    let at = match params.get("at") {
        None => None,
        Some(text) => Some(Hlc::parse(text).map_err(|err| ApiError::bad_request("bad-query", format!("at: {err}")))?),
    };
    Ok(ReadOptions { after, at, max_staleness_ms, wait: std::time::Duration::from_millis(wait_ms) })
}

fn freshness_headers(out: &mut HeaderMap, freshness: &Freshness) {
    use std::fmt::Write as _;
    // Every read answers with these: room for them at once rather than
    // the map growing (and reallocating) header by header.
    out.reserve(4);
    out.insert(header::HeaderName::from_static("meridian-staleness-ms"), HeaderValue::from(freshness.staleness_ms));
    let mut text = String::with_capacity(96);
    let mut set = |name: &'static str, text: &str| {
        if let Ok(value) = HeaderValue::from_str(text) {
            out.insert(header::HeaderName::from_static(name), value);
        }
    };
    for (i, (region, ms)) in freshness.per_region.iter().enumerate() {
        let _ = write!(text, "{}{region}={ms}", if i == 0 { "" } else { ", " });
    }
    // A lone region has no other region to be stale towards: no header, not an empty one.
    if !text.is_empty() {
        set("meridian-staleness", &text);
    }
    text.clear();
    let _ = write!(text, "{}", freshness.safe_time);
    set("meridian-safe-time", &text);
    // The token changes only when a change is applied, and reads far
    // outnumber changes: each worker thread keeps the last one it encoded.
    thread_local! {
        static LAST_TOKEN: std::cell::RefCell<Option<(Token, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    let token = LAST_TOKEN.with_borrow_mut(|last| match last {
        Some((token, value)) if *token == freshness.token => Some(value.clone()),
        _ => {
            text.clear();
            let _ = write!(text, "{}", freshness.token);
            let value = HeaderValue::from_str(&text).ok()?;
            *last = Some((freshness.token.clone(), value.clone()));
            Some(value)
        }
    });
    if let Some(value) = token {
        out.insert(header::HeaderName::from_static(TOKEN_HEADER), value);
    }
}

async fn get_doc<N: Node>(
    State(state): State<AppState<N>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    // The request itself rather than a `HeaderMap` extractor, which copies every header.
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let Path(raw) =
        path.map_err(|rej| ApiError::bad_request("bad-id", format!("invalid document path: {}", rej.body_text())))?;
    let (doc_part, sub) = split_sub_resource(&raw);
    let id = DocId::new(doc_part).map_err(|err| ApiError::bad_request("bad-id", err.to_string()))?;
    match sub {
        Some("conflicts") => {
            return state
                .node
                .conflicts(id.clone())?
                .map(|json| Json(json).into_response())
                .ok_or_else(|| ApiError::doc_not_found(id.as_str()))
        }
        Some("history") => {
            return state
                .node
                .history(id.clone())?
                .map(|json| Json(json).into_response())
                .ok_or_else(|| ApiError::doc_not_found(id.as_str()))
        }
        Some(_) => return events_response(state.node.clone(), EventFilter::Doc(id), headers).await,
        None => {}
    }
    let Query(params) = query.map_err(|rej| ApiError::bad_request("bad-query", rej.body_text()))?;
    let options = read_options(&params, headers)?;
    let if_none_match = header_text(headers, header::IF_NONE_MATCH)?;
    let read = state.node.read(id.clone(), options).await?;
    let Some(body) = read.body else {
        // Missing here, as of this replica's freshness: say how fresh that answer is.
        let mut response = ApiError::doc_not_found(id.as_str()).into_response();
        freshness_headers(response.headers_mut(), &read.freshness);
        return Ok(response);
    };
    let not_modified = if_none_match.is_some_and(|list| none_match(&list, &read.etag));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(axum::body::Body::from(body))
    };
    let out = response.headers_mut();
    // One allocation for every header this answer carries (ours, then
    // Content-Length and the front's) rather than the map regrowing.
    out.reserve(10);
    if !not_modified {
        out.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Ok(value) = HeaderValue::from_str(&read.etag) {
        out.insert(header::ETAG, value);
    }
    freshness_headers(out, &read.freshness);
    Ok(response)
}

async fn get_receipt<N: Node>(
    State(state): State<AppState<N>>,
    Path(token): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    let token = Token::parse(&token).map_err(|err| ApiError::bad_request("bad-token", err.to_string()))?;
    Ok(Json(state.node.receipt(token)?))
}

async fn put_doc<N: Node>(
    State(state): State<AppState<N>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = doc_id(path)?;
    writable_id(&id)?;
    match media_type(&headers).as_deref() {
        Some("application/json") => {}
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!("PUT needs Content-Type: application/json (got {})", other.unwrap_or("none")),
            ))
        }
    }
    let if_match = header_text(&headers, header::IF_MATCH)?;
    let value = parse_json(&body_bytes(body)?)?;
    let JsonValue::Object(object) = value else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-an-object",
            "a document must be a JSON object, like {\"name\": \"ada\"}",
        ));
    };
    let ack = state.node.write(id, WriteOp::Put(object), if_match).await?;
    Ok(write_response(ack))
}

async fn patch_doc<N: Node>(
    State(state): State<AppState<N>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = doc_id(path)?;
    writable_id(&id)?;
    let kind = media_type(&headers);
    let if_match = header_text(&headers, header::IF_MATCH)?;
    let op = match kind.as_deref() {
        Some("application/merge-patch+json") => {
            // The body is judged before If-Match (RFC 9110 13.2.2): a bad patch is 422, never 412.
            let patch = parse_json(&body_bytes(body)?)?;
            if !patch.is_object() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not-an-object",
                    "a merge patch for a document must be a JSON object (the document itself is always an object)",
                ));
            }
            WriteOp::MergePatch(patch)
        }
        Some("application/json-patch+json") => {
            let value = parse_json(&body_bytes(body)?)?;
            let ops = parse_patch(&value).map_err(|err| {
                let problem = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-patch", format!("invalid JSON Patch: {err}"));
                match err.index {
                    Some(index) => problem.with("operation", index),
                    None => problem,
                }
            })?;
            WriteOp::JsonPatch(ops)
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "PATCH needs Content-Type: application/merge-patch+json (RFC 7396) or application/json-patch+json (RFC 6902) (got {})",
                    other.unwrap_or("none")
                ),
            )
            .with_header(header::HeaderName::from_static("accept-patch"), "application/merge-patch+json, application/json-patch+json"))
        }
    };
    let ack = state.node.write(id, op, if_match).await?;
    Ok(write_response(ack))
}

async fn delete_doc<N: Node>(
    State(state): State<AppState<N>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = doc_id(path)?;
    writable_id(&id)?;
    let if_match = header_text(&headers, header::IF_MATCH)?;
    match state.node.write(id.clone(), WriteOp::Delete, if_match).await {
        Err(crate::NodeError::Write(meridian_crdt::WriteError::NotFound)) => Err(ApiError::doc_not_found(id.as_str())),
        other => Ok(write_response(other?)),
    }
}

async fn list_docs<N: Node>(
    State(state): State<AppState<N>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|rej| ApiError::bad_request("bad-query", rej.body_text()))?;
    reject_unknown(&params, &["prefix", "limit", "cursor"])?;
    let prefix = params.get("prefix").map(String::as_str).unwrap_or("");
    if !prefix.is_empty() {
        DocId::new(prefix).map_err(|err| ApiError::bad_request("bad-query", format!("prefix: {err}")))?;
    }
    let limit = bounded_number(&params, "limit", LIST_LIMIT_DEFAULT as u64, 1..=LIST_LIMIT_MAX as u64)? as usize;
    let after = match params.get("cursor") {
        None => None,
        Some(cursor) => {
            let decoded = base64url::decode(cursor)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|id| DocId::new(id).is_ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad-cursor",
                        "invalid cursor; pass next_cursor from the previous page back unchanged",
                    )
                })?;
            Some(decoded)
        }
    };
    let mut ids = state.node.list(prefix, after.as_deref(), limit + 1)?;
    let next_cursor = if ids.len() > limit {
        ids.truncate(limit);
        ids.last().map(|id| base64url::encode(id.as_str().as_bytes()))
    } else {
        None
    };
    Ok(Json(ListResponse { ids: ids.into_iter().map(|id| id.to_string()).collect(), next_cursor }).into_response())
}

async fn cluster<N: Node>(State(state): State<AppState<N>>) -> Result<Json<JsonValue>, ApiError> {
    Ok(Json(state.node.cluster()?))
}

/// Checks `Authorization: Bearer <token>` for the admin scope. The guard
/// middleware already checked every `/v1/admin/` path; admin handlers check
/// again so an admin endpoint is protected wherever it is routed. Without an
/// admin token the admin endpoints do not exist (404), so probing them
/// reveals nothing.
fn require_admin<N>(state: &AppState<N>, headers: &HeaderMap) -> Result<(), ApiError> {
    Ok(state.auth.require(headers, crate::auth::Scope::Admin)?)
}

async fn get_faults<N: Node>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
) -> Result<Json<JsonValue>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.node.faults()?))
}

async fn post_fault<N: Node>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    require_admin(&state, &headers)?;
    if media_type(&headers).as_deref() != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send the fault as Content-Type: application/json",
        ));
    }
    let value = parse_json(&body_bytes(body)?)?;
    let spec: crate::node::FaultSpec = serde_json::from_value(value).map_err(|err| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-fault",
            format!("{err}; send {{\"peer_region\": \"eu-west\", \"delay_ms\": 40, \"jitter_ms\": 5, \"loss\": 0.01}} or {{\"peer_region\": \"eu-west\", \"cut\": true}}"),
        )
    })?;
    Ok(Json(state.node.set_fault(spec)?))
}

async fn delete_faults<N: Node>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
) -> Result<Json<JsonValue>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.node.clear_faults()?))
}

async fn decommission<N: Node>(
    State(state): State<AppState<N>>,
    headers: HeaderMap,
    Path(member): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.node.decommission(&member)?))
}

/// A consistent snapshot of the node as a backup file (`meridian backup`
/// writes it; `meridian restore` reads it). Admin-only: it holds every document.
async fn backup<N: Node>(State(state): State<AppState<N>>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    let bytes = state.node.backup().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.meridian.backup"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"meridian.backup\""),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

/// Which events a stream carries.
#[derive(Clone)]
enum EventFilter {
    /// One document's.
    Doc(DocId),
    /// Documents whose id starts with this prefix (empty: all).
    Prefix(String),
}

impl EventFilter {
    fn matches(&self, event: &FeedEvent) -> bool {
        match self {
            EventFilter::Doc(id) => &event.doc == id,
            EventFilter::Prefix(prefix) => event.doc.as_str().starts_with(prefix.as_str()),
        }
    }
}

async fn all_events<N: Node>(
    State(state): State<AppState<N>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|rej| ApiError::bad_request("bad-query", rej.body_text()))?;
    reject_unknown(&params, &["prefix"])?;
    let prefix = params.get("prefix").cloned().unwrap_or_default();
    if !prefix.is_empty() {
        DocId::new(&prefix).map_err(|err| ApiError::bad_request("bad-query", format!("prefix: {err}")))?;
    }
    events_response(state.node.clone(), EventFilter::Prefix(prefix), &headers).await
}

/// Server-sent events of applied changes. Event ids are feed indices, stable
/// across restarts; `Last-Event-ID` resumes after the given id without gaps
/// or duplicates (within the feed's retention; older ids get a `gap` event).
async fn events_response<N: Node>(
    node: Arc<N>,
    filter: EventFilter,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let last_event_id = match header_text(headers, header::HeaderName::from_static("last-event-id"))? {
        None => None,
        Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "bad-last-event-id",
                "Last-Event-ID must be an event id this stream sent (a whole number)",
            )
        })?),
    };
    // Subscribe before reading the backlog, so nothing committed in between is missed.
    let (live, head) = node.subscribe_feed()?;
    let stopping = node.stopping();
    struct Stream<N> {
        node: Arc<N>,
        live: tokio::sync::broadcast::Receiver<FeedEvent>,
        last: u64,
        backlog: std::collections::VecDeque<FeedEvent>,
        catching_up: bool,
        filter: EventFilter,
        announced_gap: bool,
        stopping: tokio::sync::watch::Receiver<bool>,
        /// An event to send before anything else (a Last-Event-ID this node never issued).
        notice: Option<String>,
    }
    // An id above our newest event is not one of ours (event ids are per node):
    // say so, and resume from now rather than silently skip what comes next.
    let notice = last_event_id
        .filter(|&id| id > head)
        .map(|id| json!({"missing_after": id, "resumes_at": head + 1, "reason": "Last-Event-ID is ahead of this node's feed; event ids are per node"}).to_string());
    let start = Stream {
        node,
        live,
        last: last_event_id.map_or(head, |id| id.min(head)),
        backlog: Default::default(),
        // Always look on disk first: the node skips the live broadcast while
        // nobody listens, and `head` may trail what is already committed, so
        // events committed just before this subscription are read, not missed.
        catching_up: true,
        filter,
        announced_gap: false,
        stopping,
        notice,
    };
    let stream = futures_util::stream::unfold(start, |mut st| async move {
        if let Some(data) = st.notice.take() {
            return Some((Ok::<Event, std::convert::Infallible>(Event::default().event("gap").data(data)), st));
        }
        loop {
            if let Some(event) = st.backlog.pop_front() {
                if event.index <= st.last {
                    continue;
                }
                if event.index > st.last + 1 && !st.announced_gap {
                    // The feed no longer holds what came between: say so rather than skip silently.
                    st.announced_gap = true;
                    let data = json!({"missing_after": st.last, "resumes_at": event.index}).to_string();
                    st.backlog.push_front(event);
                    return Some((Ok(Event::default().event("gap").data(data)), st));
                }
                st.last = event.index;
                if st.filter.matches(&event) {
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    return Some((Ok(Event::default().id(event.index.to_string()).event("change").data(data)), st));
                }
                continue;
            }
            if st.catching_up {
                match st.node.feed_after(st.last, 512).await {
                    Ok(batch) if !batch.is_empty() => {
                        st.backlog.extend(batch);
                        continue;
                    }
                    Ok(_) => st.catching_up = false,
                    Err(_) => return None,
                }
            }
            if *st.stopping.borrow() {
                return None;
            }
            let received = tokio::select! {
                received = st.live.recv() => received,
                _ = st.stopping.changed() => return None,
            };
            match received {
                Ok(event) if event.index <= st.last => continue,
                Ok(event) if event.index == st.last + 1 => st.backlog.push_back(event),
                // Missed something (lag, or events committed before we subscribed): read it from disk.
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => st.catching_up = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))).into_response())
}
