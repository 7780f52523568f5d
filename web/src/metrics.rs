//! A small Prometheus text-format registry: atomic histograms and the HTTP
//! request metrics middleware. Small enough that a metrics dependency would
//! cost more build time than it saves.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;

/// Latency bucket bounds in seconds, from 100 µs to 2.5 s.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A lock-free latency histogram with [`LATENCY_BUCKETS_SECONDS`] buckets.
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, duration: Duration) {
        self.observe_n(duration, 1);
    }

    /// Records `n` observations of the same duration (a batch's items).
    pub fn observe_n(&self, duration: Duration, n: u64) {
        let seconds = duration.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_SECONDS.iter().position(|&bound| seconds <= bound) {
            self.buckets[i].fetch_add(n, Ordering::Relaxed);
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_nanos.fetch_add((duration.as_nanos() as u64).saturating_mul(n), Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes `_bucket`, `_sum` and `_count` lines; `labels` is either empty
    /// or `key="value",...` without braces.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS_SECONDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Escapes a Prometheus label value.
pub fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes a `# HELP` and `# TYPE` header.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One route's series, by method (one of [`method_label`]'s) and status.
type RouteSeries = BTreeMap<(&'static str, u16), Arc<Histogram>>;

/// HTTP request counts and latencies by route template, method and status.
#[derive(Default, Debug)]
pub struct HttpMetrics {
    /// Keyed by route first so that a request looks its series up by `&str`
    /// without allocating; methods are [`method_label`]'s fixed set.
    series: Mutex<BTreeMap<String, RouteSeries>>,
}

impl HttpMetrics {
    fn histogram(&self, route: &str, method: &'static str, status: u16) -> Arc<Histogram> {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if !series.contains_key(route) {
            series.insert(route.to_string(), BTreeMap::new());
        }
        let by_route = series.get_mut(route).expect("inserted above");
        by_route.entry((method, status)).or_default().clone()
    }

    /// Renders `meridian_http_requests_total` and `meridian_http_request_duration_seconds`.
    pub fn render(&self, out: &mut String) {
        let series: Vec<(String, RouteSeries)> = {
            let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            series.iter().map(|(route, by)| (route.clone(), by.clone())).collect()
        };
        type Key<'a> = (&'a str, &'static str, u16);
        let series: Vec<(Key, &Arc<Histogram>)> = series
            .iter()
            .flat_map(|(route, by)| by.iter().map(move |(&(m, s), h)| ((route.as_str(), m, s), h)))
            .collect();
        let label = |(route, method, status): &Key| {
            format!("route=\"{}\",method=\"{}\",status=\"{status}\"", escape_label(route), escape_label(method))
        };
        header(
            out,
            "meridian_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status.",
        );
        for (key, histogram) in &series {
            let _ = writeln!(out, "meridian_http_requests_total{{{}}} {}", label(key), histogram.count());
        }
        header(
            out,
            "meridian_http_request_duration_seconds",
            "histogram",
            "HTTP request latency, by route template, method and status.",
        );
        for (key, histogram) in &series {
            histogram.render(out, "meridian_http_request_duration_seconds", &label(key));
        }
    }
}

/// Middleware recording every request's route, method, status and latency.
pub async fn track<F>(metrics: &HttpMetrics, request: Request, next: impl FnOnce(Request) -> F) -> Response
where
    F: std::future::Future<Output = Response>,
{
    let start = Instant::now();
    // MatchedPath holds the template in an Arc: cloning it is a count, not a copy.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let response = next(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics.histogram(route, method, response.status().as_u16()).observe(start.elapsed());
    response
}

/// The method as a label value. Clients can send any token as a method, and
/// each would otherwise become a new series; unknown ones share `other`.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0001\"} 1"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3"));
        assert!(out.contains("x_count{a=\"b\"} 3"));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let made_up = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&made_up), "other");
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
    }
}
