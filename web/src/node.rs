//! The seam between the HTTP layer and the node: what the router may ask.

use std::future::Future;

use meridian_crdt::{DocId, Hlc, Token, WriteError, WriteOp};
use serde_json::Value as Json;

/// A successful, durable write.
#[derive(Clone, Debug)]
pub struct WriteAck {
    /// The document written.
    pub id: DocId,
    /// Token naming the write's position (origin and sequence).
    pub token: Token,
    /// The write's HLC timestamp.
    pub hlc: Hlc,
    /// Whether the write brought the document into existence.
    pub created: bool,
    /// The document's ETag after the write.
    pub etag: String,
}

/// A document as read.
#[derive(Clone, Debug)]
pub struct DocRead {
    /// The document's JSON.
    pub json: Json,
    /// Strong validator of the document's state.
    pub etag: String,
    /// Token naming the state the read saw.
    pub token: Token,
}

/// Why the node could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The write itself was refused (bad patch, precondition, missing document).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The node cannot accept work right now (starting, overloaded, or its
    /// storage failed); the request changed nothing that was acknowledged.
    #[error("{0}")]
    Unavailable(String),
    /// The request is well-formed but asks for something invalid (422).
    #[error("{0}")]
    Invalid(String),
    /// The feature is not enabled on this node (404), e.g. faults without replication.
    #[error("{0}")]
    Off(String),
}

/// A link fault as the admin API takes it.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Region of the peers it applies to.
    pub peer_region: String,
    /// One-way delay added to this node's packets towards them.
    #[serde(default)]
    pub delay_ms: u32,
    /// Random extra delay, plus or minus.
    #[serde(default)]
    pub jitter_ms: u32,
    /// Probability of dropping a packet towards them (0.0 to 1.0).
    #[serde(default)]
    pub loss: f64,
    /// Cut the link.
    #[serde(default)]
    pub cut: bool,
    /// For cuts: `both` (default), `outbound` (our packets to them) or `inbound` (theirs to us).
    #[serde(default)]
    pub direction: Option<String>,
}

/// What the HTTP layer needs from a node. The server implements it over its
/// replica and storage; tests implement it in memory.
pub trait Node: Send + Sync + 'static {
    /// Applies a write and resolves once it is durable.
    fn write(
        &self,
        id: DocId,
        op: WriteOp,
        if_match: Option<String>,
    ) -> impl Future<Output = Result<WriteAck, NodeError>> + Send;

    /// Reads a document; `None` if it does not exist. Never returns state
    /// that is not yet durable.
    fn read(&self, id: DocId) -> impl Future<Output = Result<Option<DocRead>, NodeError>> + Send;

    /// Ids of existing documents with `prefix`, after `after`, at most `limit`.
    fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<DocId>, NodeError>;

    /// Whether storage is open and recovery is done.
    fn ready(&self) -> bool;

    /// Appends node-level metrics in Prometheus text format.
    fn render_metrics(&self, out: &mut String);

    /// This node and every member, as `GET /v1/cluster` shows them.
    fn cluster(&self) -> Result<Json, NodeError>;

    /// Link faults in force.
    fn faults(&self) -> Result<Json, NodeError>;

    /// Imposes (or replaces) the fault towards one region.
    fn set_fault(&self, spec: FaultSpec) -> Result<Json, NodeError>;

    /// Heals every link.
    fn clear_faults(&self) -> Result<Json, NodeError>;
}
