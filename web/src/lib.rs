//! Meridian's HTTP/JSON API.
//!
//! The router ([`router::router`]) reaches the node only through the
//! [`node::Node`] trait, which the server implements; tests drive the router
//! in-process with an in-memory node. Errors become HTTP statuses in exactly
//! one place: [`error::ApiError`]'s `IntoResponse`. The live convergence
//! dashboard ([`dashboard`]) is served by the same router, at `/`.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod front;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod router;

pub use error::ApiError;
pub use node::{DocRead, FaultSpec, FeedEvent, Freshness, Lag, Node, NodeError, ReadOptions, WriteAck};
pub use router::{router, WebConfig};
