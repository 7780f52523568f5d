//! The one place where errors become HTTP statuses.
//!
//! Every error response is RFC 9457 `application/problem+json` with a
//! `detail` that says what to fix. Client mistakes are 4xx and change
//! nothing; 5xx is reserved for the node's own trouble.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_crdt::{DocumentError, WriteError};
use serde_json::{json, Map, Value as Json};

use crate::node::NodeError;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Short machine-friendly problem kind, used in the `type` URI.
    pub kind: &'static str,
    /// What went wrong and what to fix.
    pub detail: String,
    /// Extension members (e.g. `operation` for JSON Patch failures).
    pub extra: Map<String, Json>,
    /// Extra headers (e.g. `Allow`, `ETag`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// A problem with the given status, kind and detail.
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, kind, detail: detail.into(), extra: Map::new(), headers: Vec::new() }
    }

    /// 400: the request is malformed.
    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, kind, detail)
    }

    /// 404 for a document id.
    pub fn doc_not_found(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("document {id:?} does not exist"))
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<Json>) -> ApiError {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: header::HeaderName, value: &str) -> ApiError {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }
}

impl From<NodeError> for ApiError {
    fn from(err: NodeError) -> ApiError {
        match err {
            NodeError::Unavailable(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
                .with_header(header::RETRY_AFTER, "1"),
            NodeError::Invalid(reason) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", reason),
            NodeError::Off(reason) => ApiError::new(StatusCode::NOT_FOUND, "off", reason),
            NodeError::Behind { waited_ms, lags } => {
                let summary: Vec<String> = lags
                    .iter()
                    .map(|l| match l.behind_ms {
                        Some(ms) => format!("{} is {ms} ms behind (needs {}, has {})", l.region, l.needed, l.have),
                        None => format!("{} needs {}, has {}", l.region, l.needed, l.have),
                    })
                    .collect();
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "not-caught-up",
                    format!("waited {waited_ms} ms and this replica is still behind: {}; retry, raise wait_ms, or read elsewhere", summary.join("; ")),
                )
                .with("behind", serde_json::to_value(&lags).unwrap_or_default())
            }
            NodeError::TooStale { staleness_ms, limit_ms, per_region } => {
                let regions: Map<String, Json> =
                    per_region.iter().map(|(r, ms)| (r.clone(), Json::from(*ms))).collect();
                let retry = ((staleness_ms.saturating_sub(limit_ms)) / 1000).clamp(1, 60);
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too-stale",
                    format!("this replica is {staleness_ms} ms stale, more than the {limit_ms} ms you asked for; retry later or read in another region"),
                )
                .with("staleness_ms", staleness_ms)
                .with("staleness_by_region", Json::Object(regions))
                .with_header(header::RETRY_AFTER, &retry.to_string())
            }
            NodeError::Write(WriteError::NotFound) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", "document does not exist")
            }
            NodeError::Write(WriteError::PreconditionFailed { current }) => {
                let detail = match &current {
                    Some(etag) => format!(
                        "If-Match does not match: the document's current ETag is {etag}; read it again and retry"
                    ),
                    None => "If-Match was given but the document does not exist".to_string(),
                };
                let mut err = ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition-failed", detail);
                if let Some(etag) = current {
                    err = err.with_header(header::ETAG, &etag);
                }
                err
            }
            NodeError::Write(WriteError::Document(DocumentError::PatchFailed {
                index,
                op,
                path,
                reason,
                conflict,
            })) => {
                let status = if conflict { StatusCode::CONFLICT } else { StatusCode::UNPROCESSABLE_ENTITY };
                ApiError::new(
                    status,
                    "patch-failed",
                    format!("JSON Patch operation {index} ({op} {path}) failed: {reason}; nothing was applied"),
                )
                .with("operation", index)
                .with("path", path)
            }
            NodeError::Write(WriteError::Document(DocumentError::NotAnObject(reason))) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not-an-object", reason)
            }
            NodeError::Write(WriteError::Cold(err)) => {
                tracing::error!(cause = %err, "write failed: the document did not load from the store");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("{err}; nothing was applied, retry later"),
                )
                .with_header(header::RETRY_AFTER, "1")
            }
            NodeError::Write(WriteError::Document(err @ (DocumentError::Corrupt(_) | DocumentError::Internal(_)))) => {
                tracing::error!(cause = %err, "write failed inside the CRDT layer");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the node failed to apply the write; nothing was acknowledged",
                )
            }
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(err: crate::auth::AuthError) -> ApiError {
        use crate::auth::AuthError;
        let detail = err.to_string();
        match err {
            // RFC 6750: a missing or wrong token says which scheme to use.
            AuthError::Missing { .. } => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
                .with_header(header::WWW_AUTHENTICATE, "Bearer"),
            AuthError::Invalid { .. } => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
                .with_header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""),
            AuthError::Forbidden { needed, .. } => ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
                .with("needed_scope", needed.name())
                .with_header(
                    header::WWW_AUTHENTICATE,
                    &format!("Bearer error=\"insufficient_scope\", scope=\"{needed}\""),
                ),
            AuthError::AdminOff => ApiError::new(StatusCode::NOT_FOUND, "no-route", detail),
        }
    }
}

impl From<crate::limits::LimitError> for ApiError {
    fn from(err: crate::limits::LimitError) -> ApiError {
        use crate::limits::LimitError;
        let detail = err.to_string();
        match err {
            LimitError::RateLimited { retry_after_s } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail)
                    .with_header(header::RETRY_AFTER, &retry_after_s.to_string())
            }
            LimitError::Overloaded { .. } | LimitError::TooManyStreams { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail)
                    .with_header(header::RETRY_AFTER, "1")
            }
            LimitError::TimedOut { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", detail).with_header(header::RETRY_AFTER, "1")
            }
            LimitError::BodyTooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let mut body = json!({
            "type": format!("urn:meridian:problem:{}", self.kind),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Json::Object(map) = &mut body {
            map.extend(self.extra);
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}
