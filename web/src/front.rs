//! The one layer in front of every route: CORS, request metrics, the guard
//! (authentication, rate limit, load shedding, timeout; see `limits.rs`) and
//! the body limit, in that order.
//!
//! Why one hand-written layer instead of four `from_fn` middlewares: axum
//! wraps each route once per layer, and every request then clones each
//! wrapper (a boxed service per layer) and boxes each middleware's future.
//! Profiles of the read benchmark put that machinery, and the allocations it
//! makes, among the largest costs of a read. Here a request pays for two
//! route clones (axum's of this layer, ours of the route inside it) and
//! one boxed future, however many steps the layer has. The behaviour of each
//! step is unchanged, and each still lives with its subject: [`cors`] in
//! `dashboard.rs`, [`track`] in `metrics.rs`, [`guard`] in `limits.rs`.
//!
//! [`cors`]: crate::dashboard::cors
//! [`track`]: crate::metrics::track
//! [`guard`]: crate::limits::guard

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{DefaultBodyLimit, Request};
use axum::response::Response;
use tower::{Layer, Service, ServiceExt};

use crate::limits::Guard;
use crate::metrics::HttpMetrics;

/// Builds [`Front`] services around each route.
#[derive(Clone)]
pub struct FrontLayer {
    guard: Arc<Guard>,
    metrics: Arc<HttpMetrics>,
    body_limit: DefaultBodyLimit,
}

impl FrontLayer {
    /// A layer that guards with `guard`, records into `metrics` and refuses
    /// bodies over `body_limit_bytes` (413).
    pub fn new(guard: Arc<Guard>, metrics: Arc<HttpMetrics>, body_limit_bytes: usize) -> FrontLayer {
        FrontLayer { guard, metrics, body_limit: DefaultBodyLimit::max(body_limit_bytes) }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<<DefaultBodyLimit as Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        Front { guard: self.guard.clone(), metrics: self.metrics.clone(), inner: self.body_limit.layer(inner) }
    }
}

/// One route behind the front layer.
#[derive(Clone)]
pub struct Front<S> {
    guard: Arc<Guard>,
    metrics: Arc<HttpMetrics>,
    inner: S,
}

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is checked on the clone that serves the request (oneshot below).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (guard, metrics, inner) = (self.guard.clone(), self.metrics.clone(), self.inner.clone());
        Box::pin(async move {
            let response = crate::dashboard::cors(request, |request| async move {
                crate::metrics::track(&metrics, request, |request| async move {
                    crate::limits::guard(&guard, request, |request| async move {
                        match inner.oneshot(request).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    })
                    .await
                })
                .await
            })
            .await;
            Ok(response)
        })
    }
}
