//! Overload protection and authentication, written once: one middleware
//! ([`guard`]) that every route passes through, and the connection loop
//! ([`serve`]) that bounds what a client can hold open.
//!
//! A request meets, in order:
//!
//! ```text
//!  accept ── over connections_max? ─► 503 written straight to the socket, closed
//!    │        (hyper: headers must arrive within header_read_timeout, idle keep-alive too)
//!    ▼
//!  guard: probe (/healthz, /readyz)? ───────────────────────► handler, nothing else applies
//!    │    identify the token (Authorization, or ?access_token= on reads)
//!    │    rate limit per token, or per peer IP without one ─► 429 + Retry-After
//!    │    scope for this method and path ──────────────────► 401 (+ WWW-Authenticate) / 403
//!    │    Content-Length over the body limit ──────────────► 413
//!    │    in-flight requests at concurrency_max ───────────► 503 + Retry-After
//!    ▼
//!  handler, under request_timeout (+ the read's wait_ms) ───► 503 + Retry-After
//!    │
//!    ▼  an event stream? it holds one of streams_max until it ends, else ► 503
//!  response
//! ```
//!
//! Why these and not tower's: the concurrency limit sheds instead of
//! queueing (a queue under overload only adds latency to every request), the
//! timeout covers producing the response head, not streaming the body, so
//! server-sent event streams are exempt from it for free while still counted
//! against their own limit, and every refusal is a problem+json from
//! `error.rs` like every other error. Each is a few lines.
//!
//! Guarantees: every refusal here happens before the node sees the request,
//! so a shed request changed nothing; every map and queue is bounded; probes
//! are never shed, so an orchestrator sees a busy node as alive.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{self, Access, Auth, Identity};
use crate::error::ApiError;
use crate::metrics::header as metric_header;

/// The limits, as configured (see the README's "Authentication and limits").
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Longest a request may take to produce its response head; a read's
    /// `wait_ms` is added to it, since the client asked to wait that long.
    pub request_timeout: Duration,
    /// Requests handled at once (not counting open event streams); beyond, 503.
    pub concurrency_max: usize,
    /// Server-sent event streams open at once; beyond, 503.
    pub streams_max: usize,
    /// Sustained requests per second per token (per peer IP without one); 0 turns the limit off.
    pub rate_limit_per_second: u32,
    /// Requests a client may make in a burst above the sustained rate.
    pub rate_limit_burst: u32,
    /// TCP connections open at once; beyond, new ones get a 503 and are closed.
    pub connections_max: usize,
    /// Longest a client may take to send a request's headers, and longest
    /// an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT),
            concurrency_max: CONCURRENCY_MAX_DEFAULT,
            streams_max: STREAMS_MAX_DEFAULT,
            rate_limit_per_second: RATE_LIMIT_PER_SECOND_DEFAULT,
            rate_limit_burst: RATE_LIMIT_BURST_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            header_read_timeout: Duration::from_millis(HEADER_READ_TIMEOUT_MS_DEFAULT),
        }
    }
}

/// Default request timeout: generous for a write's fsync under load, short
/// enough that a stuck request frees its slot.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default in-flight requests: far more than two cores can work on at
/// once, so it only bites when requests pile up waiting (disk, replicas).
pub const CONCURRENCY_MAX_DEFAULT: usize = 512;
/// Default open event streams: each costs a task and a feed subscription.
pub const STREAMS_MAX_DEFAULT: usize = 256;
/// Default sustained rate per client: well above what one well-behaved
/// client needs (the demo's workload peaks at 5000 writes/s across all regions).
pub const RATE_LIMIT_PER_SECOND_DEFAULT: u32 = 5_000;
/// Default burst per client.
pub const RATE_LIMIT_BURST_DEFAULT: u32 = 10_000;
/// Default open connections: below a default 1024 file descriptor limit's
/// worth of room for the store and the peers' sockets.
pub const CONNECTIONS_MAX_DEFAULT: usize = 768;
/// Default time to send the headers, and keep-alive idle time.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Most clients the rate limiter tracks; new clients beyond share one bucket.
pub const RATE_CLIENTS_MAX: usize = 10_000;

/// Why the guard refused a request (mapped to HTTP in `error.rs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// This client (token or IP) is over its rate (429).
    #[error("too many requests from this client; retry after {retry_after_s} s")]
    RateLimited {
        /// Whole seconds until a request would be admitted.
        retry_after_s: u64,
    },
    /// Every request slot is taken (503).
    #[error("the node is handling {concurrency_max} requests already; retry shortly")]
    Overloaded {
        /// The configured limit.
        concurrency_max: usize,
    },
    /// The request took too long to answer (503); a write may still have been applied.
    #[error("no answer within {after_ms} ms; retry (a write may have been applied: read it back or use If-Match)")]
    TimedOut {
        /// The timeout that expired.
        after_ms: u64,
    },
    /// Every event stream slot is taken (503).
    #[error("{streams_max} event streams are open already; retry shortly")]
    TooManyStreams {
        /// The configured limit.
        streams_max: usize,
    },
    /// The declared body is over the limit (413).
    #[error("the request body is {length} bytes, more than the {limit_bytes}-byte limit; send a smaller document")]
    BodyTooLarge {
        /// Declared length.
        length: u64,
        /// The configured limit.
        limit_bytes: usize,
    },
}

/// Counts of refused requests, for `/metrics` (refusals are counted, not logged one by one).
#[derive(Default, Debug)]
struct Refusals {
    unauthorized: AtomicU64,
    forbidden: AtomicU64,
    rate_limited: AtomicU64,
    overloaded: AtomicU64,
    timed_out: AtomicU64,
    streams: AtomicU64,
    body_too_large: AtomicU64,
}

/// The guard's shared state: authentication, limits and their counters.
pub struct Guard {
    auth: Arc<Auth>,
    limits: Limits,
    body_limit_bytes: usize,
    in_flight: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    rate: RateLimiter,
    refusals: Refusals,
}

impl Guard {
    /// A guard enforcing `auth` and `limits` (with `body_limit_bytes` for declared lengths).
    pub fn new(auth: Arc<Auth>, limits: Limits, body_limit_bytes: usize) -> Guard {
        Guard {
            in_flight: Arc::new(Semaphore::new(limits.concurrency_max.min(Semaphore::MAX_PERMITS))),
            streams: Arc::new(Semaphore::new(limits.streams_max.min(Semaphore::MAX_PERMITS))),
            rate: RateLimiter::new(limits.rate_limit_per_second, limits.rate_limit_burst, RATE_CLIENTS_MAX),
            auth,
            limits,
            body_limit_bytes,
            refusals: Refusals::default(),
        }
    }

    /// Writes the refusal counters and the in-flight and stream gauges.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let r = &self.refusals;
        metric_header(
            out,
            "meridian_http_refused_total",
            "counter",
            "Requests refused before reaching the node, by reason.",
        );
        for (reason, count) in [
            ("unauthorized", &r.unauthorized),
            ("forbidden", &r.forbidden),
            ("rate_limited", &r.rate_limited),
            ("overloaded", &r.overloaded),
            ("timed_out", &r.timed_out),
            ("streams_full", &r.streams),
            ("body_too_large", &r.body_too_large),
        ] {
            let _ =
                writeln!(out, "meridian_http_refused_total{{reason=\"{reason}\"}} {}", count.load(Ordering::Relaxed));
        }
        let in_flight = self.limits.concurrency_max.saturating_sub(self.in_flight.available_permits());
        metric_header(out, "meridian_http_in_flight_requests", "gauge", "Requests being handled now.");
        let _ = writeln!(out, "meridian_http_in_flight_requests {in_flight}");
        let streams = self.limits.streams_max.saturating_sub(self.streams.available_permits());
        metric_header(out, "meridian_http_open_streams", "gauge", "Server-sent event streams open now.");
        let _ = writeln!(out, "meridian_http_open_streams {streams}");
    }

    fn refuse(&self, counter: &AtomicU64, error: impl Into<ApiError>) -> Response {
        counter.fetch_add(1, Ordering::Relaxed);
        error.into().into_response()
    }
}

/// The middleware: authentication, rate limit, body size, load shedding,
/// timeout and stream accounting, in that order (see the module docs).
pub async fn guard<F>(guard: &Guard, mut request: Request, next: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    let access = auth::access(request.method(), request.uri().path());
    if access == Access::Probe {
        return next(request).await;
    }
    let credential = credential(&mut request);
    let identity = guard.auth.identify(credential.as_deref());
    let key = match identity {
        Identity::Token { index, .. } => RateKey::Token(index),
        _ => match request.extensions().get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => RateKey::ip(peer.ip()),
            None => RateKey::Unknown,
        },
    };
    if let Err(retry_after_s) = guard.rate.check(key, Instant::now()) {
        return guard.refuse(&guard.refusals.rate_limited, LimitError::RateLimited { retry_after_s });
    }
    if let Access::Needs(scope) = access {
        if let Err(err) = guard.auth.authorize(&identity, scope) {
            if let Identity::Token { index, .. } = identity {
                tracing::debug!(token = guard.auth.label(index), path = request.uri().path(), "{err}");
            }
            let counter = match err {
                auth::AuthError::Forbidden { .. } => &guard.refusals.forbidden,
                _ => &guard.refusals.unauthorized,
            };
            return guard.refuse(counter, err);
        }
    }
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > guard.body_limit_bytes as u64) {
        let limit_bytes = guard.body_limit_bytes;
        return guard.refuse(&guard.refusals.body_too_large, LimitError::BodyTooLarge { length, limit_bytes });
    }
    // Shed rather than queue: a queued request only waits longer for the same answer.
    let Ok(slot) = guard.in_flight.clone().try_acquire_owned() else {
        let concurrency_max = guard.limits.concurrency_max;
        return guard.refuse(&guard.refusals.overloaded, LimitError::Overloaded { concurrency_max });
    };
    let timeout = guard.limits.request_timeout + asked_wait(&request);
    let response = match tokio::time::timeout(timeout, next(request)).await {
        Ok(response) => response,
        Err(_) => {
            let after_ms = timeout.as_millis() as u64;
            return guard.refuse(&guard.refusals.timed_out, LimitError::TimedOut { after_ms });
        }
    };
    drop(slot);
    if is_event_stream(&response) {
        // The stream outlives the handler: it holds a stream slot, not a request slot, until it ends.
        let Ok(stream_slot) = guard.streams.clone().try_acquire_owned() else {
            let streams_max = guard.limits.streams_max;
            return guard.refuse(&guard.refusals.streams, LimitError::TooManyStreams { streams_max });
        };
        return hold_until_end(response, stream_slot);
    }
    response
}

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Ties `slot` to the response body, so it is released when the stream ends
/// or the client goes away (the body is dropped either way).
fn hold_until_end(response: Response, slot: OwnedSemaphorePermit) -> Response {
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// How long the client asked a read to wait (`wait_ms`, or the default wait
/// when it asked to read after a token), which the timeout must not cut short.
fn asked_wait(request: &Request) -> Duration {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Duration::ZERO;
    }
    let query = request.uri().query().unwrap_or("");
    let mut after = request.headers().contains_key("meridian-after");
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "wait_ms" => {
                let ms = value.parse::<u64>().unwrap_or(0).min(crate::router::WAIT_MS_MAX);
                return Duration::from_millis(ms);
            }
            "after" => after = true,
            _ => {}
        }
    }
    if after {
        Duration::from_millis(crate::router::WAIT_MS_DEFAULT)
    } else {
        Duration::ZERO
    }
}

/// The request's bearer token: from `Authorization`, or for reads from an
/// `access_token` query parameter (RFC 6750 section 2.3), which a browser's
/// `EventSource` needs because it cannot set headers. The parameter is
/// removed from the URI, so handlers never see it (they refuse unknown
/// parameters) and nothing downstream can log it.
fn credential(request: &mut Request) -> Option<String> {
    if let Some(token) = auth::bearer(request.headers()) {
        return Some(token);
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let query = request.uri().query()?;
    if !query.split('&').any(|pair| pair.starts_with("access_token=")) {
        return None;
    }
    let mut token = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("access_token=") {
            Some(value) => {
                token.get_or_insert_with(|| percent_decode(value));
                false
            }
            None => true,
        })
        .collect();
    let path = request.uri().path();
    let path_and_query = if rest.is_empty() { path.to_string() } else { format!("{path}?{}", rest.join("&")) };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    token
}

/// Decodes `%XX` escapes (a token's `+`, `/` and `=` arrive escaped by
/// `encodeURIComponent`); anything malformed stays as it is and then
/// matches no token.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whom a rate limit applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RateKey {
    /// A configured token, by index.
    Token(u32),
    /// A client without a valid token, by address (IPv6 by its /64, which
    /// one host usually holds whole).
    Ip(IpAddr),
    /// No peer address known (in-process tests).
    Unknown,
    /// New clients once [`RATE_CLIENTS_MAX`] are tracked: they share one bucket.
    Overflow,
}

impl RateKey {
    fn ip(ip: IpAddr) -> RateKey {
        match ip {
            IpAddr::V4(v4) => RateKey::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => RateKey::Ip(IpAddr::V4(v4)),
                None => RateKey::Ip(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())),
            },
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets per client, in a map bounded to `clients_max` entries.
struct RateLimiter {
    per_second: f64,
    burst: f64,
    clients_max: usize,
    state: Mutex<RateState>,
}

struct RateState {
    buckets: HashMap<RateKey, Bucket>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    fn new(per_second: u32, burst: u32, clients_max: usize) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            clients_max,
            state: Mutex::new(RateState { buckets: HashMap::new(), last_sweep: None }),
        }
    }

    /// Takes one token from `key`'s bucket, or says in how many whole seconds one will be there.
    fn check(&self, key: RateKey, now: Instant) -> Result<(), u64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = key;
        if !state.buckets.contains_key(&key) && state.buckets.len() >= self.clients_max {
            // Forget clients whose bucket has refilled (they are as good as new), at most once a
            // second so a flood of new addresses cannot make every request walk the map.
            if state.last_sweep.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                state.last_sweep = Some(now);
                let (rate, burst) = (self.per_second, self.burst);
                state.buckets.retain(|_, b| b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst);
            }
            if state.buckets.len() >= self.clients_max {
                key = RateKey::Overflow;
            }
        }
        let bucket = state.buckets.entry(key).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - bucket.tokens) / self.per_second).ceil() as u64).max(1))
        }
    }
}

/// What a client over `connections_max` gets before its connection is closed.
const CONNECTIONS_FULL: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 137\r\n\r\n\
{\"type\":\"urn:meridian:problem:overloaded\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"too many open connections; retry shortly\"}";

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish and returns once every
/// connection has closed. Each connection must send its request headers
/// within `header_read_timeout` (which also closes idle keep-alive
/// connections), and at most `connections_max` are open at once. Requests
/// carry the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let connections = Arc::new(Semaphore::new(limits.connections_max.clamp(1, Semaphore::MAX_PERMITS)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every connection task holds a clone of `open_rx`; `open_tx.closed()` resolves when all are gone.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    let header_read_timeout = limits.header_read_timeout;
    let mut last_full_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before accept: wait a moment, go on.
                    tracing::warn!(%err, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            // Best effort and non-blocking: a fresh socket's send buffer has room for this.
            let _ = stream.try_write(CONNECTIONS_FULL.as_bytes());
            if last_full_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                last_full_warning = Some(Instant::now());
                tracing::warn!(connections_max = limits.connections_max, "refusing connections: too many open");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _open = open;
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(request)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let stopping = tokio::select! {
                _ = connection.as_mut() => false,
                stopped = stop.wait_for(|stopping| *stopping) => stopped.is_ok(),
            };
            if stopping {
                // Finish the request in progress, then close; an idle connection closes at once.
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate_and_say_when_to_retry() {
        let limiter = RateLimiter::new(2, 3, 100);
        let start = Instant::now();
        let key = RateKey::Token(0);
        for _ in 0..3 {
            assert!(limiter.check(key, start).is_ok());
        }
        assert_eq!(limiter.check(key, start), Err(1));
        assert!(limiter.check(RateKey::Token(1), start).is_ok(), "buckets are per client");
        assert!(limiter.check(key, start + Duration::from_millis(600)).is_ok());
        assert!(RateLimiter::new(0, 0, 1).check(key, start).is_ok(), "a rate of 0 turns the limit off");
    }

    #[test]
    fn the_client_map_stays_bounded() {
        let limiter = RateLimiter::new(1, 1, 4);
        let now = Instant::now();
        for i in 0..100u32 {
            let _ = limiter.check(RateKey::ip(IpAddr::from([10, 0, (i >> 8) as u8, i as u8])), now);
        }
        let state = limiter.state.lock().unwrap();
        assert!(state.buckets.len() <= 5, "{} buckets", state.buckets.len());
        assert!(state.buckets.contains_key(&RateKey::Overflow));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_bit_prefix() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert_eq!(RateKey::ip(a), RateKey::ip(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(RateKey::ip(mapped), RateKey::Ip(IpAddr::from([10, 0, 0, 1])));
    }

    #[test]
    fn access_tokens_leave_the_query() {
        let mut request =
            Request::builder().uri("/v1/events?prefix=a&access_token=ab%2Bc%3D&x=1").body(Body::empty()).unwrap();
        assert_eq!(credential(&mut request).as_deref(), Some("ab+c="));
        assert_eq!(request.uri().to_string(), "/v1/events?prefix=a&x=1");
        let mut request = Request::builder().uri("/v1/events?access_token=abc").body(Body::empty()).unwrap();
        assert_eq!(credential(&mut request).as_deref(), Some("abc"));
        assert_eq!(request.uri().to_string(), "/v1/events");
        let mut request =
            Request::builder().method("PUT").uri("/v1/docs/a?access_token=abc").body(Body::empty()).unwrap();
        assert_eq!(credential(&mut request), None, "only reads may carry the token in the query");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn the_canned_refusal_is_well_formed() {
        let (head, body) = CONNECTIONS_FULL.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
