//! The live convergence dashboard: its embedded page, its live cluster
//! stream, and the CORS rules that let a dashboard at one region read the
//! others.
//!
//! The page is plain HTML, CSS and JavaScript modules compiled into the
//! binary with `include_str!`, so a node serves it with no files on disk, no
//! CDN and no build step. It draws from three sources:
//!
//! - `GET /v1/cluster/stream`: server-sent events carrying the same JSON as
//!   `GET /v1/cluster`, a few times a second (`interval_ms`, 100 to 5000).
//! - `GET /v1/dashboard`: which other regions' HTTP addresses this node was
//!   told about (`MERIDIAN_DASHBOARD_REGIONS`) and, under `meridian demo`,
//!   where the demo's control endpoint is (`MERIDIAN_DEMO_CONTROL`). The
//!   node cannot learn peers' HTTP addresses from gossip (peers only know each
//!   other's QUIC addresses), so whoever starts the nodes says so.
//! - The other regions' own streams and documents, fetched cross-origin.
//!
//! Guarantee: the stream never holds a lock across an await and ends when the
//! node starts to stop, so graceful shutdown never waits on a dashboard tab.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::node::Node;
use crate::router::{bounded_number, reject_unknown};

/// Environment variable naming other regions' HTTP base URLs: `name=url,name=url`.
pub const REGIONS_ENV: &str = "MERIDIAN_DASHBOARD_REGIONS";
/// Environment variable naming the `meridian demo` control endpoint's URL.
pub const DEMO_CONTROL_ENV: &str = "MERIDIAN_DEMO_CONTROL";
/// Most regions a dashboard shows (the demo's limit too).
pub const REGIONS_MAX: usize = 9;
/// Default and bounds of the cluster stream's period.
pub const STREAM_INTERVAL_MS_DEFAULT: u64 = 500;
const STREAM_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=5_000;

/// Where the dashboard finds the other regions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DashboardConfig {
    /// Other regions' HTTP base URLs, by region name, in the order given.
    pub regions: Vec<(String, String)>,
    /// The demo supervisor's control endpoint, when run under `meridian demo`.
    pub demo_control: Option<String>,
}

impl DashboardConfig {
    /// Reads [`REGIONS_ENV`] and [`DEMO_CONTROL_ENV`]; malformed entries are
    /// dropped with a warning rather than stopping the node, since the
    /// dashboard is an aid, not something the data path depends on.
    pub fn from_env() -> DashboardConfig {
        let regions = std::env::var(REGIONS_ENV).ok().unwrap_or_default();
        let demo = std::env::var(DEMO_CONTROL_ENV).ok();
        DashboardConfig::parse(&regions, demo.as_deref())
    }

    /// Parses the two settings (see [`DashboardConfig::from_env`]).
    pub fn parse(regions: &str, demo_control: Option<&str>) -> DashboardConfig {
        let mut out = Vec::new();
        for entry in regions.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                Some((name, url)) if valid_name(name) && valid_url(url) && out.len() < REGIONS_MAX => {
                    out.push((name.to_string(), url.trim_end_matches('/').to_string()))
                }
                _ => tracing::warn!(entry, "{REGIONS_ENV}: ignoring an entry that is not region=http://host:port"),
            }
        }
        let demo_control = demo_control.map(str::trim).filter(|url| {
            let ok = valid_url(url);
            if !ok {
                tracing::warn!(url, "{DEMO_CONTROL_ENV}: ignoring a value that is not http://host:port");
            }
            ok
        });
        DashboardConfig { regions: out, demo_control: demo_control.map(|u| u.trim_end_matches('/').to_string()) }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 200
        && url.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b'`'))
}

/// One embedded file: its name under `/dashboard/`, media type and contents.
struct Asset {
    name: &'static str,
    media_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// Everything the page loads, compiled in.
const ASSETS: &[Asset] = &[
    Asset { name: "style.css", media_type: "text/css; charset=utf-8", body: include_str!("../assets/style.css") },
    Asset { name: "app.js", media_type: JS, body: include_str!("../assets/app.js") },
    Asset { name: "model.js", media_type: JS, body: include_str!("../assets/model.js") },
    Asset { name: "views.js", media_type: JS, body: include_str!("../assets/views.js") },
    Asset { name: "panels.js", media_type: JS, body: include_str!("../assets/panels.js") },
    Asset { name: "util.js", media_type: JS, body: include_str!("../assets/util.js") },
];

const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The page may talk to other regions (connect-src) but loads code and styles
/// only from this node: nothing else can be injected into an admin's session.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self' http: https:; frame-ancestors 'none'";

fn asset_response(media_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(media_type)),
            // Revalidate every time: a restarted node may serve a newer page.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's routes, for any router state (handlers capture the node).
pub fn routes<N: Node, S: Clone + Send + Sync + 'static>(node: Arc<N>, config: DashboardConfig) -> Router<S> {
    let config = Arc::new(config);
    let stream_node = node.clone();
    Router::new()
        .route("/", get(|| async { asset_response("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/dashboard/{file}", get(asset))
        .route(
            "/v1/dashboard",
            get(move || {
                let (node, config) = (node.clone(), config.clone());
                async move { dashboard_config(&*node, &config) }
            }),
        )
        .route("/v1/cluster/stream", get(move |query| cluster_stream(stream_node.clone(), query)))
}

async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    ASSETS.iter().find(|a| a.name == file).map(|a| asset_response(a.media_type, a.body)).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "no-route", format!("the dashboard has no file {file:?}; open / instead"))
    })
}

fn dashboard_config<N: Node>(node: &N, config: &DashboardConfig) -> Result<Json<serde_json::Value>, ApiError> {
    let cluster = node.cluster()?;
    let regions: Vec<serde_json::Value> =
        config.regions.iter().map(|(name, url)| json!({"region": name, "url": url})).collect();
    Ok(Json(json!({
        "region": cluster["node"]["region"],
        "regions": regions,
        "demo_control": config.demo_control,
        "stream_interval_ms": STREAM_INTERVAL_MS_DEFAULT,
    })))
}

/// `GET /v1/cluster/stream`: the cluster JSON as `cluster` events, every
/// `interval_ms`. A failed snapshot becomes an `unavailable` event rather
/// than ending the stream, so a dashboard rides out a node that is starting.
async fn cluster_stream<N: Node>(
    node: Arc<N>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|rej| ApiError::bad_request("bad-query", rej.body_text()))?;
    reject_unknown(&params, &["interval_ms"])?;
    let interval_ms = bounded_number(&params, "interval_ms", STREAM_INTERVAL_MS_DEFAULT, STREAM_INTERVAL_MS_RANGE)?;
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    // A slow client gets fresh snapshots, not a burst of stale ones.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stopping = node.stopping();
    let stream =
        futures_util::stream::unfold((node, ticker, stopping), |(node, mut ticker, mut stopping)| async move {
            if *stopping.borrow() {
                return None;
            }
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopping.changed() => return None,
            }
            let event = match node.cluster() {
                Ok(cluster) => Event::default().event("cluster").data(cluster.to_string()),
                Err(err) => Event::default().event("unavailable").data(json!({"detail": err.to_string()}).to_string()),
            };
            Some((Ok::<Event, std::convert::Infallible>(event), (node, ticker, stopping)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// Response headers a cross-origin page may read: the freshness headers and validators.
const EXPOSED_HEADERS: &str =
    "etag, location, meridian-token, meridian-staleness-ms, meridian-staleness, meridian-safe-time";

/// CORS for the dashboard at one region reading the others.
///
/// Reads (GET) are open to any origin, as they are to any client today.
/// Cross-origin *writes* of documents are not allowed: that would let any
/// web page a user visits write to a node on their machine. The admin
/// endpoints are allowed cross-origin because they are useless without the
/// bearer token, which a browser never attaches by itself (no cookies here,
/// so no `Access-Control-Allow-Credentials`); the dashboard's controls need
/// them to cut a link at a region other than the one serving the page.
pub async fn cors<F>(request: Request, next: impl FnOnce(Request) -> F) -> Response
where
    F: std::future::Future<Output = Response>,
{
    let has_origin = request.headers().contains_key(header::ORIGIN);
    let preflight = request.method() == Method::OPTIONS
        && has_origin
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let admin = request.uri().path().starts_with("/v1/admin/");
        let (methods, headers) = if admin {
            ("GET, POST, DELETE", "authorization, content-type")
        } else {
            // authorization: a dashboard reads other regions with the token the user entered.
            ("GET, HEAD", "authorization, if-none-match, meridian-after, last-event-id, cache-control")
        };
        return (
            StatusCode::NO_CONTENT,
            [
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                (header::ACCESS_CONTROL_ALLOW_METHODS, methods),
                (header::ACCESS_CONTROL_ALLOW_HEADERS, headers),
                (header::ACCESS_CONTROL_MAX_AGE, "600"),
            ],
        )
            .into_response();
    }
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    let is_admin = request.uri().path().starts_with("/v1/admin/");
    let mut response = next(request).await;
    if has_origin && (is_read || is_admin) {
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_lists_keep_good_entries_and_drop_bad_ones() {
        let config = DashboardConfig::parse(
            "us-east=http://127.0.0.1:7070/, bad entry,eu-west=https://eu.example:443,x=ftp://no,=http://a",
            Some("http://127.0.0.1:7069"),
        );
        assert_eq!(
            config.regions,
            vec![
                ("us-east".to_string(), "http://127.0.0.1:7070".to_string()),
                ("eu-west".to_string(), "https://eu.example:443".to_string())
            ]
        );
        assert_eq!(config.demo_control.as_deref(), Some("http://127.0.0.1:7069"));
        assert_eq!(DashboardConfig::parse("", Some("javascript:alert(1)")), DashboardConfig::default());
    }

    #[test]
    fn every_asset_the_page_imports_is_embedded() {
        for asset in ASSETS {
            for line in asset.body.lines().filter(|l| l.starts_with("import ")) {
                let name = line.rsplit("./").next().unwrap_or("").trim_end_matches(['\'', '"', ';']);
                assert!(ASSETS.iter().any(|a| a.name == name), "{} imports {name}, which is not embedded", asset.name);
            }
        }
        for name in ["style.css", "app.js"] {
            assert!(INDEX_HTML.contains(&format!("/dashboard/{name}")), "index.html does not load {name}");
        }
    }
}
