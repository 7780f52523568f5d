//! The seam between the HTTP layer and the node: what the router may ask.

use std::future::Future;

use meridian_crdt::{DocId, Hlc, NodeId, Token, WriteError, WriteOp};
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

/// A document as read (or found missing), with how fresh the read is.
#[derive(Clone, Debug)]
pub struct DocRead {
    /// The document's JSON, serialised; `None` if it does not exist (as far
    /// as this replica knows).
    pub body: Option<axum::body::Bytes>,
    /// Strong validator of the document's state.
    pub etag: std::sync::Arc<str>,
    /// Freshness of the replica that answered.
    pub freshness: Freshness,
}

/// How stale this replica's view is, and which state it holds.
#[derive(Clone, Debug, Default)]
pub struct Freshness {
    /// Local now minus safe time, in ms: no write older than this is missing here.
    pub staleness_ms: u64,
    /// Staleness towards each other region, in ms.
    pub per_region: Vec<(String, u64)>,
    /// The minimum closed timestamp over all members (ours being now).
    pub safe_time: Hlc,
    /// Token naming the applied state that was read.
    pub token: Token,
}

/// Consistency controls of a read.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// Wait until this replica has applied every change the token names.
    pub after: Option<Token>,
    /// Read the consistent snapshot of changes with HLC <= this time.
    pub at: Option<Hlc>,
    /// Answer only if the read staleness is within this many ms.
    pub max_staleness_ms: Option<u64>,
    /// How long `after` and `at` may wait.
    pub wait: std::time::Duration,
}

/// One applied change, as event streams show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FeedEvent {
    /// The feed index: the event id, increasing in local apply order, stable across restarts.
    #[serde(skip)]
    pub index: u64,
    /// The document.
    pub doc: DocId,
    /// The region the change came from.
    pub region: String,
    /// The origin node.
    pub origin: NodeId,
    /// The origin's sequence number.
    pub seq: u64,
    /// The change's HLC.
    pub hlc: Hlc,
    /// Token naming the change.
    pub token: String,
}

/// How far one region is behind what a read asked for.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Lag {
    /// The region (origin) whose changes are missing or not yet closed.
    pub region: String,
    /// What the read needed: a sequence number (`after`) or a time (`at`).
    pub needed: String,
    /// What this replica has.
    pub have: String,
    /// How far behind, in ms, when known.
    pub behind_ms: Option<u64>,
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
    /// `after` or `at` could not be satisfied within the wait (504).
    #[error("this replica did not catch up within {waited_ms} ms")]
    Behind {
        /// How long the read waited.
        waited_ms: u64,
        /// Who is behind and by how much.
        lags: Vec<Lag>,
    },
    /// The read staleness exceeds `max_staleness_ms` (503).
    #[error("read staleness {staleness_ms} ms exceeds the requested {limit_ms} ms")]
    TooStale {
        /// Current read staleness.
        staleness_ms: u64,
        /// The bound asked for.
        limit_ms: u64,
        /// Staleness per region.
        per_region: Vec<(String, u64)>,
    },
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

    /// Reads a document (its JSON is `None` if it does not exist), always with
    /// the replica's freshness. Never returns state that is not yet durable.
    /// Honours the consistency controls in `options`.
    fn read(&self, id: DocId, options: ReadOptions) -> impl Future<Output = Result<DocRead, NodeError>> + Send;

    /// For each region: whether it has applied the write(s) a token names, and when this node learned so.
    fn receipt(&self, token: Token) -> Result<Json, NodeError>;

    /// The paths of a document holding concurrent values; `None` if the document is unknown.
    fn conflicts(&self, id: DocId) -> Result<Option<Json>, NodeError>;

    /// A document's changes; `None` if the document is unknown.
    fn history(&self, id: DocId) -> Result<Option<Json>, NodeError>;

    /// Turns true when the node begins to stop; long-lived responses (event
    /// streams) end then, so graceful shutdown does not wait on them forever.
    fn stopping(&self) -> tokio::sync::watch::Receiver<bool>;

    /// Live feed of applied changes, and the index of the newest one so far.
    fn subscribe_feed(&self) -> Result<(tokio::sync::broadcast::Receiver<FeedEvent>, u64), NodeError>;

    /// Stored feed entries after `after` (for resuming a stream), at most `limit`.
    fn feed_after(&self, after: u64, limit: usize) -> impl Future<Output = Result<Vec<FeedEvent>, NodeError>> + Send;

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

    /// Removes a member (named by node id or region) from the cluster for
    /// good: it leaves membership, log truncation and safe time, and may not rejoin.
    fn decommission(&self, member: &str) -> Result<Json, NodeError>;

    /// A consistent backup of every document and the changes they cover,
    /// encoded as a backup file (the server owns the format). Holds no local
    /// change that is not durable. Nodes without storage of their own (test
    /// doubles) need not take backups: by default the endpoint is off (404).
    fn backup(&self) -> impl Future<Output = Result<Vec<u8>, NodeError>> + Send {
        std::future::ready(Err(NodeError::Off("this node does not take backups".into())))
    }
}
