//! The node runtime: owns the replica, the real clock, the storage thread
//! and (with certificates) the replication driver, and implements the web
//! layer's [`Node`] trait.
//!
//! ```text
//!  HTTP write ──► lock core ─► clock.now() ─► replica.local_write ─► send record (ticket n)
//!                                                                       │ (same lock: channel
//!                                                                       ▼  order = seq order)
//!                  ◄── durable watch (seq ≥ mine) ◄── fsync ◄── storage thread: drain channel,
//!  HTTP 200/201                                                 one redb commit per batch,
//!                                                               then push to gossip / apply remote
//!  peer records ──► driver ──► Host::handle_event ──► storage thread (persist, then apply)
//! ```
//!
//! **Group commit.** The storage thread takes every record waiting in the
//! channel (up to a bound) and commits them in one fsynced transaction, so
//! concurrent writes share fsyncs.
//!
//! **Durable before visible to peers.** Local records reach the gossip core
//! only after their commit; remote records are applied (and so counted in
//! the vector we advertise) only after theirs. A crash can lose what was
//! received but not yet durable; the vector never claimed it, so
//! anti-entropy brings it again.
//!
//! **Durable-only reads.** A reader snapshots the document, then waits until
//! the last local change in it is durable before answering, so nobody sees a
//! change whose sequence number a crash could reuse.
//!
//! **Checkpoints.** See [`StorageWorker::begin_checkpoint`]: records first, then
//! snapshots a few per commit, then truncation below what the snapshots and
//! every member hold. **Document cache.** Snapshots mark their documents
//! persisted, after which the replica may evict them (`--doc-cache`).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hybrid_clocks::{Clock, WallNS};
use meridian_crdt::{ChangeRecord, DocId, Document, Hlc, NodeId, Replica, Token, VersionVector, WriteOp, WriteReceipt};
use meridian_gossip::driver::{self, Clocks, DriverConfig, DriverHandle, Host};
use meridian_gossip::freshness::{local_closed, safe_time};
use meridian_gossip::link::{LinkEmulator, LinkFault};
use meridian_gossip::{Closed, Event, Gossip, GossipConfig};
use meridian_web::metrics::{escape_label, header, Histogram};
use meridian_web::{DocRead, FaultSpec, FeedEvent, Freshness, Lag, Node, NodeError, ReadOptions, WriteAck};
use serde_json::{json, Value as Json};
use tokio::sync::{watch, Notify, Semaphore};

use crate::config::{Config, ReplicationConfig};
use crate::storage::{Batch, FeedEntry, FeedReader, StorageError, Store};

/// Most records in one storage commit.
pub const BATCH_RECORDS_MAX: usize = 4096;
/// Most change bytes in one storage commit.
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// Most writes waiting for durability at once; more are refused with 503.
pub const WRITES_IN_FLIGHT_MAX: usize = 8192;
/// A checkpoint writes its snapshots in about this many steps, one commit
/// each, between ordinary commits: a write waits behind one step, not all.
const CHECKPOINT_STEPS: usize = 50;
/// Snapshots per step, at least and at most: few enough that a step is
/// short, many enough that a large backlog (a bulk load) still drains.
const SNAPSHOTS_PER_STEP: std::ops::RangeInclusive<usize> = 8..=2048;
/// After a step whose snapshots took `t` of CPU, the next waits
/// `CHECKPOINT_PACE * t`: a checkpoint takes about a seventh of one core, so
/// a node near its peak write rate keeps headroom and writes do not queue
/// behind snapshot CPU.
const CHECKPOINT_PACE: u32 = 6;
/// With more dirty documents than this waiting (a bulk load outrunning the
/// checkpoints), or than the forced-checkpoint count if that is lower,
/// steps are not paced: dirty documents stay in memory until their snapshot
/// is durable, so a growing backlog is a growing heap, and local writes may
/// be waiting for the checkpoint (with a limit of 8 and pacing, 600 new
/// documents took two minutes to write, each checkpoint resting between
/// its steps while every write waited).
const DIRTY_BACKLOG_UNPACED: usize = 10_000;
/// Log records deleted per commit once a checkpoint covers them. The
/// deletion follows the checkpoint a chunk per commit, in memory and on
/// disk alike, rather than all at once in its last step: thousands of
/// deletions in one commit (and under the core lock) were the write tail.
const TRUNCATE_PER_COMMIT: u64 = 512;
/// A checkpoint is also forced when this many documents are dirty, or half
/// of `--unpersisted-docs-max` if that is fewer (see [`forced_checkpoint_at`]).
pub const DIRTY_DOCS_MAX: usize = 25_000;

/// Dirty documents that force a checkpoint, given the limit above which
/// local writes wait (`--unpersisted-docs-max`). Local writes wait while
/// more documents than the limit are changed and not yet in a durable
/// snapshot (dirty, or in the checkpoint in progress). Such a document
/// cannot leave memory, so without the wait a bulk load that outruns the
/// checkpoints grows the heap without bound: 1,000,000 new documents written
/// at 4,800/s peaked at 11 GiB, checkpoints persisting about 3,000/s.
///
/// At or below the limit, so that whenever writes wait a checkpoint is in
/// progress or due: either one is running (and its end lowers the count),
/// or every unpersisted document is dirty, more than the limit, so at least
/// this many. Half the limit, so that one usually starts before any write waits.
pub fn forced_checkpoint_at(unpersisted_max: usize) -> usize {
    DIRTY_DOCS_MAX.min(unpersisted_max / 2).max(1)
}
/// Feed entries kept for resuming event streams; older ones are dropped at checkpoints.
pub const FEED_KEEP: u64 = 1_000_000;
/// Live feed events buffered per subscriber before it must catch up from disk.
pub const FEED_BROADCAST_CAPACITY: usize = 4096;
/// Remote records waiting for the storage thread; beyond it new ones are
/// dropped (anti-entropy resends them), so a fast peer cannot grow memory.
pub const REMOTE_RECORDS_IN_FLIGHT_MAX: u64 = 200_000;

/// What the storage thread has made durable, published to waiters.
#[derive(Clone, Debug, Default)]
struct Durable {
    /// Highest local sequence number committed.
    local_seq: u64,
    /// Set when storage failed: the node cannot go on.
    failed: Option<Arc<str>>,
}

enum StorageMsg {
    /// Local records in sequence order; tickets number records, and
    /// `ticket` is the last one's (the writer thread sends a batch at once).
    Append {
        ticket: u64,
        records: Vec<ChangeRecord>,
        /// When the writer thread sent it, for the storage stage of
        /// `meridian_write_stage_seconds`.
        sent: Instant,
    },
    /// Records received from a peer.
    Remote(Vec<ChangeRecord>),
    /// A state-transfer chunk.
    Snapshot {
        docs: Vec<(DocId, Vec<u8>)>,
        covers: Option<VersionVector>,
    },
    Shutdown,
}

/// Everything behind the node's one lock: the replica, the count of local
/// records sent to storage (so the channel sees them in sequence order), the
/// HLC clock, and the gossip core (which reads the replica).
struct Core {
    replica: Replica,
    tickets_sent: u64,
    clock: Clock<WallNS>,
    gossip: Option<Gossip>,
    /// Local writes applied but not yet durable, in sequence (and HLC) order.
    in_flight: VecDeque<(u64, Hlc)>,
    /// Highest local sequence number known durable, as last caught up
    /// from `durable_published` (see [`Core::catch_up_durable`]).
    durable_seq: u64,
    /// Highest local sequence number the storage thread has made durable,
    /// published without the core lock: under write load the writer thread
    /// holds that lock most of the time, and the storage thread blocked on
    /// it after every commit (profiled: 14% of its time), delaying the next
    /// commit. Whoever holds the lock next catches up.
    durable_published: Arc<AtomicU64>,
    /// When this node applied each advance of an origin's prefix: (origin, prefix, wall ns).
    receipts: VecDeque<(NodeId, u64, u64)>,
    /// The durable HLC lease: advertised closed timestamps never exceed it,
    /// and after a restart the clock starts above it, so a restart never
    /// issues an HLC at or below a closed timestamp already published.
    hlc_lease: Hlc,
}

/// How far ahead of the wall clock the persisted HLC lease reaches.
const HLC_LEASE_AHEAD: Duration = Duration::from_millis(1000);
/// The lease is renewed when less than this remains.
const HLC_LEASE_RENEW_BELOW: Duration = Duration::from_millis(500);

/// How long a write waits for a joining node's admission before a 503.
const ADMISSION_WAIT: Duration = Duration::from_secs(5);

/// Receipt transitions kept for this node.
const RECEIPTS_KEPT: usize = 65_536;

impl Core {
    /// This node's closed timestamp: every local change with HLC <= `t` has
    /// sequence <= `n`, and no later change gets an HLC <= `t`. Writes take
    /// their HLC and sequence number together under this lock, so `t` is just
    /// below the oldest write still in flight (or now, with none), and `n` is
    /// the last durable sequence number.
    fn closed(&mut self) -> Closed {
        self.catch_up_durable();
        let now = self.clock.now().map(Hlc::from).unwrap_or_else(|_| Hlc::new(wall_ns(), 0));
        let oldest = self.in_flight.front().map(|&(_, hlc)| hlc);
        local_closed(self.replica.node(), oldest, self.durable_seq, self.replica.last_seq(), now, self.hlc_lease)
    }

    /// Drops from `in_flight` what the storage thread has made durable
    /// since. Until this runs, `in_flight` and `durable_seq` lag behind the
    /// disk, which only holds the closed timestamp lower: still true.
    fn catch_up_durable(&mut self) {
        let durable = self.durable_published.load(Ordering::Acquire);
        if durable > self.durable_seq {
            self.durable_seq = durable;
            while self.in_flight.front().is_some_and(|&(seq, _)| seq <= durable) {
                self.in_flight.pop_front();
            }
        }
    }

    /// Notes advances of the applied prefixes (for receipts).
    fn note_applied(&mut self, before: &BTreeMap<NodeId, u64>) {
        let now = wall_ns();
        let applied = self.replica.applied_version_vector();
        let advances: Vec<(NodeId, u64)> = applied
            .origins()
            .map(|o| (o, applied.contiguous(o)))
            .filter(|(o, prefix)| before.get(o).copied().unwrap_or(0) < *prefix)
            .collect();
        for (origin, prefix) in advances {
            self.receipts.push_back((origin, prefix, now));
            if self.receipts.len() > RECEIPTS_KEPT {
                self.receipts.pop_front();
            }
        }
    }

    fn applied_prefixes(&self) -> BTreeMap<NodeId, u64> {
        let applied = self.replica.applied_version_vector();
        applied.origins().map(|o| (o, applied.contiguous(o))).collect()
    }

    /// Region of a node, as far as this node knows.
    fn region_of(&self, node: NodeId, own_region: &str) -> String {
        if node == self.replica.node() {
            return own_region.to_string();
        }
        self.gossip
            .as_ref()
            .and_then(|g| g.members(Instant::now()).into_iter().find(|m| m.info.node == node).map(|m| m.info.region))
            .unwrap_or_else(|| node.to_string())
    }

    /// How fresh this replica is now: per-member staleness from closed
    /// timestamps whose changes are applied here; safe time is their minimum
    /// (ours is now). Measured on the local wall clock, so under a partition
    /// staleness keeps growing at wall-clock rate.
    fn freshness(&mut self, durable_seq: u64) -> Freshness {
        let now_ns = wall_ns();
        let own = self.replica.node();
        let (safe_time, staleness_ms, per_region) = match &self.gossip {
            Some(gossip) => {
                let safe = safe_time(gossip, &self.replica, now_ns);
                (
                    safe.safe_time,
                    safe.staleness_ms,
                    safe.origins.into_iter().map(|o| (o.region, o.staleness_ms)).collect(),
                )
            }
            None => (Hlc::new(now_ns, 0), 0, Vec::new()),
        };
        let applied = self.replica.applied_version_vector();
        let mut token = Token::default();
        for origin in applied.origins() {
            let mut seq = applied.contiguous(origin);
            if origin == own {
                seq = seq.min(durable_seq);
            }
            if seq > 0 {
                token.entries.insert(origin, seq);
            }
        }
        Freshness { staleness_ms, per_region, safe_time, token }
    }
}

impl NodeMetrics {
    /// Counts what applying `count` remote records (just committed) did,
    /// and logs what was not taken.
    fn note_remote(&self, outcome: &meridian_crdt::ApplyOutcome, count: u64) {
        self.remote_applied.fetch_add(outcome.applied as u64, Ordering::Relaxed);
        self.remote_duplicates.fetch_add(outcome.duplicates as u64, Ordering::Relaxed);
        self.remote_refused.fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
        self.remote_deferred.fetch_add(outcome.deferred.len() as u64, Ordering::Relaxed);
        self.remote_in_flight.fetch_sub(count, Ordering::Relaxed);
        for (origin, seq, reason) in &outcome.rejected {
            tracing::warn!(%origin, seq, reason = %reason, "remote change refused");
        }
        warn_deferred(outcome, "remote");
    }
}

/// Logs records `outcome` deferred, in one line per batch: under a flood of
/// changes whose dependency is missing, one line per record would be the
/// flood again, in the log. Peers send them again.
fn warn_deferred(outcome: &meridian_crdt::ApplyOutcome, which: &str) {
    if let Some((origin, seq)) = outcome.deferred.first() {
        tracing::warn!(
            count = outcome.deferred.len(),
            first_origin = %origin,
            first_seq = seq,
            "{which} changes not taken: too many already wait for a dependency (peers send them again)"
        );
    }
}

/// Node-level metrics (the HTTP ones live in the web crate).
#[derive(Default)]
struct NodeMetrics {
    write_latency: Histogram,
    /// A local write's stages (`meridian_write_stage_seconds`), to tell
    /// where its latency goes. Queued: from its request's hand-off until the
    /// writer thread starts it (the writer busy with earlier writes, or not
    /// on a CPU) ...
    write_stage_queue: Histogram,
    /// ... queued and applied, until its request has the answer (the rest
    /// of its batch and the request's wake-up included) ...
    write_stage_writer: Histogram,
    /// ... then until durable, as its request saw it ...
    write_stage_durable: Histogram,
    /// ... of which handed to storage and committed, as the storage thread saw it.
    write_stage_storage: Histogram,
    fsync_latency: Histogram,
    checkpoint_latency: Histogram,
    storage_commits: AtomicU64,
    storage_records: AtomicU64,
    /// Microseconds, so the seconds gauge keeps sub-millisecond recoveries distinct from zero.
    recovery_us: AtomicU64,
    /// Times the writer held local writes back for checkpoints, and for how
    /// long in all, in microseconds (see [`wait_for_checkpoints`]).
    backpressure_waits: AtomicU64,
    backpressure_us: AtomicU64,
    remote_applied: AtomicU64,
    remote_duplicates: AtomicU64,
    remote_dropped: AtomicU64,
    /// Remote records not taken because too many wait for a dependency.
    remote_deferred: AtomicU64,
    remote_refused: AtomicU64,
    remote_in_flight: AtomicU64,
    snapshots_installed: AtomicU64,
    hlc_not_observed: AtomicU64,
}

struct Shared {
    core: Mutex<Core>,
    /// Documents changed and not yet in a durable snapshot, as the storage
    /// thread last counted them (see [`forced_checkpoint_at`]).
    unpersisted: std::sync::atomic::AtomicUsize,
    /// `--unpersisted-docs-max`: above it, local writes wait for checkpoints.
    unpersisted_max: usize,
    /// Bumped whenever applied state or closed timestamps move: readers waiting for `after` or `at` re-check.
    progress: watch::Sender<u64>,
    /// Committed changes, in feed order, for event streams.
    feed: tokio::sync::broadcast::Sender<FeedEvent>,
    /// Index of the newest feed entry.
    feed_head: AtomicU64,
    /// This node's region.
    region: String,
    metrics: NodeMetrics,
    /// Wakes the replication driver when there is something to send.
    wake: OnceLock<Arc<Notify>>,
    /// Set (under the core lock) when the gossip core is installed, which
    /// happens before the node takes requests (`lib.rs` hands the runtime to
    /// the router only after `start_replication`).
    replicating: AtomicBool,
    /// Peers whose clocks run ahead by more than the limit, with their offset in ms.
    clock_flags: Mutex<BTreeMap<NodeId, i64>>,
    max_clock_offset: Duration,
    /// To the storage thread; taken (closed) at shutdown, so later sends fail.
    storage_tx: Mutex<Option<mpsc::Sender<StorageMsg>>>,
}

impl Shared {
    fn send_storage(&self, msg: StorageMsg) -> bool {
        self.storage_tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|tx| tx.send(msg).is_ok())
    }

    /// Takes the storage channel's only sender: every later send fails, and
    /// once the returned sender is dropped the storage thread sees the
    /// channel closed (it finishes a checkpoint and ends).
    fn close_storage(&self) -> Option<mpsc::Sender<StorageMsg>> {
        self.storage_tx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A local write for the writer thread, answered on `reply`.
struct WriteJob {
    id: DocId,
    op: WriteOp,
    if_match: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<WriteReceipt, NodeError>>,
    /// When its request handed it over, for the queue stage of
    /// `meridian_write_stage_seconds`.
    sent: Instant,
}

/// Most local writes the writer thread applies under one hold of the core lock.
const WRITER_BATCH_MAX: usize = 32;
/// A batch stops taking queued writes once it has held the core lock this
/// long, so a read waits for at most about this plus one write.
const WRITER_BATCH_HOLD: Duration = Duration::from_micros(1000);

/// The writer thread: applies local writes under the core lock, off the
/// async workers. A write's automerge work holds that lock for 100-200 us;
/// done on an async worker, a second write blocked the other worker too,
/// and every request on both (parsing, responses, reads) waited behind them.
///
/// Writes already queued are applied as one batch under one lock hold (up
/// to [`WRITER_BATCH_MAX`] and [`WRITER_BATCH_HOLD`]), their records go to
/// the storage thread in one message, and their answers are sent after the
/// lock is released. One write at a time, each send woke the storage thread
/// and each answer an async worker, and on two cores the woken thread took
/// the CPU from the writer, often while it held the core lock (profiled
/// off-CPU at 70% load). With nothing queued a batch is one write, as before.
/// Ends when the runtime (the only sender) is dropped.
fn writer_loop(shared: Arc<Shared>, jobs: mpsc::Receiver<WriteJob>) {
    let mut replies = Vec::with_capacity(WRITER_BATCH_MAX);
    let mut records = Vec::with_capacity(WRITER_BATCH_MAX);
    while let Ok(first) = jobs.recv() {
        wait_for_checkpoints(&shared);
        let mut next = Some(first);
        {
            let mut core = lock(&shared);
            let held = Instant::now();
            while let Some(job) = next.take() {
                shared.metrics.write_stage_queue.observe(job.sent.elapsed());
                // A panic (a bug) fails this write, not every later one.
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    apply_local_write(&mut core, &job.id, &job.op, job.if_match.as_deref())
                }));
                let result = applied.unwrap_or_else(|_| {
                    tracing::error!(doc = %job.id, "a local write panicked; it was not acknowledged");
                    Err(NodeError::Unavailable("the write failed inside the node (see its log); retry".into()))
                });
                if let Ok(receipt) = &result {
                    records.push(receipt.record.clone());
                }
                replies.push((job.reply, result));
                if replies.len() < WRITER_BATCH_MAX && held.elapsed() < WRITER_BATCH_HOLD {
                    next = jobs.try_recv().ok();
                }
            }
            if !records.is_empty() {
                // Sent under the lock, so the storage thread sees records in
                // sequence order and every ticket counted in `tickets_sent`
                // is in the channel (checkpoints drain up to it).
                let ticket = core.tickets_sent;
                let batch = std::mem::take(&mut records);
                if !shared.send_storage(StorageMsg::Append { ticket, records: batch, sent: Instant::now() }) {
                    for (_, result) in replies.iter_mut() {
                        if result.is_ok() {
                            *result = Err(NodeError::Unavailable("the node is shutting down".into()));
                        }
                    }
                }
            }
        }
        for (reply, result) in replies.drain(..) {
            // The request may have gone (client disconnected): the write stands regardless.
            let _ = reply.send(result);
        }
    }
}

/// Holds local writes back while too many documents wait for a durable
/// snapshot (see [`forced_checkpoint_at`]): writes then go at the pace of
/// the checkpoints, queued in the bounded job channel (full, requests get
/// a 503), instead of growing the heap. Each wait is counted in
/// `meridian_write_backpressure_waits_total` and its time in
/// `meridian_write_backpressure_seconds_total` (and in the `queue` stage of
/// `meridian_write_stage_seconds`). The storage thread zeroes the count
/// when it ends, so no write waits on a node that is stopping.
fn wait_for_checkpoints(shared: &Shared) {
    let mut waiting: Option<Instant> = None;
    loop {
        let unpersisted = shared.unpersisted.load(Ordering::Acquire);
        if unpersisted <= shared.unpersisted_max {
            if let Some(since) = waiting {
                let metrics = &shared.metrics;
                metrics.backpressure_us.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            return;
        }
        if waiting.is_none() {
            tracing::warn!(
                unpersisted,
                limit = shared.unpersisted_max,
                "local writes wait for checkpoints to persist documents (writes outrun snapshots)"
            );
            shared.metrics.backpressure_waits.fetch_add(1, Ordering::Relaxed);
            waiting = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Applies one local write under the core lock and counts its ticket; the
/// caller sends its record to the storage thread before releasing the lock.
/// The HLC and sequence number are taken together (the closed timestamp
/// relies on it).
fn apply_local_write(
    core: &mut Core,
    id: &DocId,
    op: &WriteOp,
    if_match: Option<&str>,
) -> Result<WriteReceipt, NodeError> {
    let hlc: Hlc =
        core.clock.now().map_err(|err| NodeError::Unavailable(format!("cannot read the clock: {err}")))?.into();
    let before = core.applied_prefixes();
    let receipt = core.replica.local_write(id, op, hlc, if_match)?;
    // The replica may have stamped a later HLC (causality within the
    // document); the clock must never issue one below it.
    core.clock.observe(&receipt.record.meta.hlc.inner());
    core.catch_up_durable();
    core.in_flight.push_back((receipt.record.meta.seq, receipt.record.meta.hlc));
    core.note_applied(&before);
    core.tickets_sent += 1;
    Ok(receipt)
}

fn lock(shared: &Shared) -> MutexGuard<'_, Core> {
    // A panic while holding the lock cannot leave a document half-written
    // (automerge transactions roll back); keep serving.
    shared.core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A document that did not load back from the store: the node cannot serve
/// it right now (503), and nothing changed.
fn cold_unavailable(err: meridian_crdt::ColdError) -> NodeError {
    tracing::error!(cause = %err, "document cache");
    NodeError::Unavailable(format!("{err}; retry later"))
}

/// Splits checkpoint snapshots into the batch's rows and the generations to
/// mark persisted once the batch is durable.
fn split_snapshots(
    saved: Vec<(DocId, meridian_crdt::SnapshotOf)>,
) -> (Vec<crate::storage::SnapshotRow>, Vec<(DocId, u64)>) {
    let persisted = saved.iter().map(|(id, s)| (id.clone(), s.generation)).collect();
    (saved.into_iter().map(|(id, s)| (id, s.bytes, s.entry)).collect(), persisted)
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Shared {
    /// Tells waiting readers that something they may wait for has moved.
    fn bump(&self) {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Observes a peer's timestamp unless it is further ahead of our wall
    /// clock than the limit: such a peer must not drag our clock forward.
    fn observe(&self, core: &mut Core, hlc: Hlc) {
        let limit = self.max_clock_offset.as_nanos() as u64;
        if hlc.wall_ns() <= wall_ns().saturating_add(limit) {
            core.clock.observe(&hlc.inner());
        } else {
            self.metrics.hlc_not_observed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    /// The peer listener could not be bound.
    #[error("cannot listen for peers on {addr} (listen_peer): {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        // The writer thread holds the shared state (and through the replica's
        // cold store, the database): end it before the runtime is gone. The
        // storage channel's sender lives in `Shared`, which the threads also
        // hold: close it, so a runtime dropped without `shutdown` still ends
        // its storage thread (after a final checkpoint).
        self.stop_writer();
        self.shared.close_storage();
    }
}

/// A running node: replica, clock, storage thread, writer thread, replication.
pub struct NodeRuntime {
    node_id: NodeId,
    region: String,
    shared: Arc<Shared>,
    /// Local writes go to the writer thread (see [`writer_loop`]); taken
    /// (closed) at shutdown.
    writer_tx: Mutex<Option<mpsc::SyncSender<WriteJob>>>,
    /// Joined at shutdown: it holds the shared state, and with it the store.
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    durable: watch::Receiver<Durable>,
    storage_thread: Mutex<Option<JoinHandle<()>>>,
    write_slots: Semaphore,
    replication: Option<ReplicationConfig>,
    /// Whether this node takes writes (see [`Gossip::admitted`]); true from
    /// the start without replication, latched once the gossip core admits it.
    admitted: AtomicBool,
    driver: OnceLock<DriverHandle>,
    faults: Mutex<BTreeMap<String, FaultSpec>>,
    /// The document cache limit, for metrics.
    doc_cache: usize,
    started: Instant,
    feed_reader: FeedReader,
    /// Turns true in `shutdown`, ending event streams served straight from the runtime.
    stopping: watch::Sender<bool>,
}

impl NodeRuntime {
    /// Opens storage, recovers every durable change, and starts the storage thread.
    pub fn open(config: &Config) -> Result<NodeRuntime, StorageError> {
        let started = Instant::now();
        let (store, recovered) = Store::open_with_cache(&config.data_dir, &config.region, config.storage_cache_bytes)?;
        let mut replica = Replica::new(recovered.node_id);
        replica.set_cache(store.cold_store(), config.doc_cache);
        // Every stored document starts cold: recovery reads no snapshot.
        replica.restore_cold_all(recovered.index);
        replica.restore_version_vector(&recovered.checkpoint);
        // Records the checkpoint covers (a truncation a crash cut short) are
        // already in the snapshots: their documents are not dirty.
        let dirty: HashSet<DocId> = recovered
            .log
            .iter()
            .filter(|r| !recovered.checkpoint.contains(r.meta.origin, r.meta.seq))
            .map(|r| r.doc.clone())
            .collect();
        let log_len = recovered.log.len();
        let outcome = replica.apply_records(recovered.log);
        if let Some((origin, seq, err)) = outcome.unloadable.first() {
            return Err(StorageError::Corrupt {
                path: store.path().to_path_buf(),
                what: format!("log record ({origin}, {seq}) cannot be replayed: {err}"),
            });
        }
        for (origin, seq, reason) in &outcome.rejected {
            if *origin == recovered.node_id {
                // Our own changes were applied before they were stored: one that does not apply now is damage.
                return Err(StorageError::Corrupt {
                    path: store.path().to_path_buf(),
                    what: format!("log record ({origin}, {seq}) does not apply: {reason}"),
                });
            }
            // A peer's change that does not apply is left out, as it was when it arrived.
            tracing::warn!(%origin, seq, reason = %reason, "skipping a stored remote change that does not apply");
        }
        warn_deferred(&outcome, "stored remote");
        let mut clock = Clock::wall_ns().map_err(|err| StorageError::Io {
            path: store.path().to_path_buf(),
            detail: format!("reading the clock: {err}"),
        })?;
        // The HLC never goes below anything persisted, even if the wall clock stepped back.
        clock.observe(&recovered.hlc_high.inner());
        // Closed timestamps advertised before the restart are at most the lease.
        clock.observe(&recovered.hlc_lease.inner());
        let local_seq = replica.last_seq();
        let max_clock_offset = config.replication.as_ref().map_or(Duration::from_millis(500), |r| r.max_clock_offset);
        let node = replica.node();
        let (storage_tx, storage_rx) = mpsc::channel();
        let durable_published = Arc::new(AtomicU64::new(local_seq));
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                replica,
                tickets_sent: 0,
                clock,
                gossip: None,
                in_flight: VecDeque::new(),
                durable_seq: local_seq,
                durable_published: durable_published.clone(),
                receipts: VecDeque::new(),
                hlc_lease: recovered.hlc_lease,
            }),
            metrics: NodeMetrics::default(),
            unpersisted: std::sync::atomic::AtomicUsize::new(0),
            unpersisted_max: config.unpersisted_docs_max,
            progress: watch::channel(0).0,
            feed: tokio::sync::broadcast::channel(FEED_BROADCAST_CAPACITY).0,
            feed_head: AtomicU64::new(recovered.next_feed - 1),
            region: config.region.clone(),
            wake: OnceLock::new(),
            replicating: AtomicBool::new(false),
            clock_flags: Mutex::new(BTreeMap::new()),
            max_clock_offset,
            storage_tx: Mutex::new(Some(storage_tx)),
        });
        shared.metrics.recovery_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let (durable_tx, durable_rx) = watch::channel(Durable { local_seq, failed: None });
        let feed_reader = store.feed_reader();
        let worker = StorageWorker {
            store,
            node,
            rx: storage_rx,
            durable: durable_tx,
            durable_published,
            hlc_lease: recovered.hlc_lease,
            shared: shared.clone(),
            dirty,
            forced_at: forced_checkpoint_at(config.unpersisted_docs_max),
            step_docs: 0,
            committed_ticket: 0,
            committed_local_seq: local_seq,
            checkpoint_vv: recovered.checkpoint,
            next_feed: recovered.next_feed,
            last_checkpoint: Instant::now(),
            checkpoint_interval: config.checkpoint_interval,
            shutdown_requested: false,
            phase: None,
            truncating: BTreeMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("meridian-storage".into())
            .spawn(move || {
                let shared = worker.shared.clone();
                worker.run();
                // Nothing more will be persisted: no write may wait for it.
                shared.unpersisted.store(0, Ordering::Release);
            })
            .map_err(|err| StorageError::Io {
                path: config.data_dir.clone(),
                detail: format!("starting the storage thread: {err}"),
            })?;
        let (writer_tx, writer_rx) = mpsc::sync_channel(WRITES_IN_FLIGHT_MAX);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("meridian-writer".into())
            .spawn(move || writer_loop(writer_shared, writer_rx));
        let writer = match writer {
            Ok(writer) => writer,
            Err(err) => {
                shared.close_storage();
                let _ = thread.join();
                return Err(StorageError::Io {
                    path: config.data_dir.clone(),
                    detail: format!("starting the writer thread: {err}"),
                });
            }
        };
        tracing::info!(
            node_id = %recovered.node_id,
            region = %config.region,
            log_records_replayed = log_len,
            recovery_ms = started.elapsed().as_millis() as u64,
            "recovered"
        );
        Ok(NodeRuntime {
            node_id: recovered.node_id,
            region: config.region.clone(),
            shared,
            writer_tx: Mutex::new(Some(writer_tx)),
            writer_thread: Mutex::new(Some(writer)),
            durable: durable_rx,
            storage_thread: Mutex::new(Some(thread)),
            write_slots: Semaphore::new(WRITES_IN_FLIGHT_MAX),
            replication: config.replication.clone(),
            admitted: AtomicBool::new(config.replication.is_none()),
            driver: OnceLock::new(),
            faults: Mutex::new(BTreeMap::new()),
            doc_cache: config.doc_cache,
            started,
            feed_reader,
            stopping: watch::channel(false).0,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The bound peer address, once replication runs.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.driver.get().map(|d| d.local_addr)
    }

    /// Starts replication if the node has certificates: loads them, binds the
    /// peer listener and starts the driver. Must run inside the tokio runtime.
    pub fn start_replication(self: &Arc<Self>) -> Result<(), ReplicationError> {
        let Some(config) = self.replication.clone() else { return Ok(()) };
        let tls = crate::certs::load(&config.certs, &config.cert_name)?;
        let mut gossip_config = GossipConfig::new(self.node_id, &self.region, &config.cluster, config.advertise_peer);
        gossip_config.seeds = config.peers.clone();
        gossip_config.heartbeat_interval = config.heartbeat;
        gossip_config.suspect_after = config.heartbeat * 5;
        gossip_config.down_after = (config.heartbeat * 30).max(Duration::from_secs(1));
        let mut core = lock(&self.shared);
        // A node that made changes before was admitted then; admission is never taken back.
        gossip_config.joined = core.replica.last_seq() > 0;
        core.gossip = Some(Gossip::new(gossip_config, Instant::now()));
        self.shared.replicating.store(true, Ordering::Release);
        drop(core);
        let link = LinkEmulator::new(self.node_id.0);
        let host = Arc::new(ReplicationHost { shared: self.shared.clone(), runtime: Arc::downgrade(self) });
        let handle = driver::spawn(
            host,
            DriverConfig {
                listen: config.listen_peer,
                server: tls.server,
                client: tls.client,
                server_name: crate::certs::SERVER_NAME.to_string(),
                link,
            },
        )
        .map_err(|source| ReplicationError::Bind { addr: config.listen_peer, source })?;
        let _ = self.shared.wake.set(handle.wake.clone());
        tracing::info!(
            peer_listener = %handle.local_addr,
            advertise = %config.advertise_peer,
            seeds = ?config.peers,
            cluster = %config.cluster,
            "replicating over QUIC with mutual TLS"
        );
        let _ = self.driver.set(handle);
        for spec in config.faults.iter().cloned() {
            if let Err(err) = self.set_fault_inner(spec) {
                tracing::warn!(cause = %err, "fault from the config file not applied");
            }
        }
        Ok(())
    }

    /// Stops replication (closes connections and the endpoint).
    pub async fn stop_replication(&self) {
        if let Some(driver) = self.driver.get() {
            driver.shutdown().await;
        }
    }

    /// Stops the storage thread after committing everything sent to it and
    /// writing a final checkpoint. Blocks until done.
    pub fn shutdown(&self) {
        self.stopping.send_replace(true);
        // Writes already queued still apply and reach storage before it stops.
        self.stop_writer();
        if let Some(tx) = self.shared.close_storage() {
            let _ = tx.send(StorageMsg::Shutdown);
        }
        if let Some(thread) = self.storage_thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }

    /// Closes the writer's queue and waits for it to apply what is queued.
    fn stop_writer(&self) {
        self.writer_tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.writer_thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }

    fn unavailable(&self) -> Option<NodeError> {
        self.durable
            .borrow()
            .failed
            .as_ref()
            .map(|reason| NodeError::Unavailable(format!("storage failed, the node cannot accept work: {reason}")))
    }

    /// Waits until local sequence number `seq` is durable.
    async fn wait_durable(&self, seq: u64) -> Result<(), NodeError> {
        // The common case, a read of state already on disk: no receiver to clone.
        if self.durable.borrow().local_seq >= seq {
            return Ok(());
        }
        let mut rx = self.durable.clone();
        let state = rx
            .wait_for(|d| d.local_seq >= seq || d.failed.is_some())
            .await
            .map_err(|_| NodeError::Unavailable("the node is shutting down".into()))?
            .clone();
        match state.failed {
            Some(reason) if state.local_seq < seq => {
                Err(NodeError::Unavailable(format!("storage failed before the write was durable: {reason}")))
            }
            _ => Ok(()),
        }
    }

    async fn write_inner(&self, id: DocId, op: WriteOp, if_match: Option<String>) -> Result<WriteAck, NodeError> {
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        self.wait_admitted().await?;
        let _slot = self.write_slots.try_acquire().map_err(|_| {
            NodeError::Unavailable(format!(
                "more than {WRITES_IN_FLIGHT_MAX} writes are waiting for disk; retry shortly"
            ))
        })?;
        let started = Instant::now();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = WriteJob { id: id.clone(), op, if_match, reply, sent: started };
        let sent = match self.writer_tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(writer) => writer.try_send(job),
            None => Err(mpsc::TrySendError::Disconnected(job)),
        };
        match sent {
            Ok(()) => {}
            // Only reachable when requests that queued a write went away before it ran.
            Err(mpsc::TrySendError::Full(_)) => {
                return Err(NodeError::Unavailable(format!(
                    "more than {WRITES_IN_FLIGHT_MAX} writes are queued; retry shortly"
                )))
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(NodeError::Unavailable("the node is shutting down".into()))
            }
        }
        let receipt = answer.await.map_err(|_| NodeError::Unavailable("the node is shutting down".into()))??;
        let applied = Instant::now();
        let meta = receipt.record.meta;
        self.wait_durable(meta.seq).await?;
        let metrics = &self.shared.metrics;
        metrics.write_latency.observe(started.elapsed());
        metrics.write_stage_writer.observe(applied - started);
        metrics.write_stage_durable.observe(applied.elapsed());
        Ok(WriteAck {
            id,
            token: Token::of_change(meta.origin, meta.seq),
            hlc: meta.hlc,
            created: receipt.created,
            etag: receipt.etag,
        })
    }

    async fn read_inner(&self, id: DocId, options: ReadOptions) -> Result<DocRead, NodeError> {
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + options.wait;
        // Only reads that may wait subscribe: most reads have nothing to wait for.
        let mut progress = (options.after.is_some() || options.at.is_some()).then(|| self.shared.progress.subscribe());
        // `after`: wait until every change the token names is applied here.
        if let (Some(token), Some(progress)) = (&options.after, progress.as_mut()) {
            loop {
                let lags = self.lags_after(token);
                if lags.is_empty() {
                    break;
                }
                if !self.wait_progress(progress, deadline).await {
                    return Err(NodeError::Behind {
                        waited_ms: started.elapsed().as_millis() as u64,
                        lags: self.lags_after(token),
                    });
                }
            }
        }
        // `at`: wait until `at` is at or below safe time, so the snapshot is complete.
        if let (Some(at), Some(progress)) = (options.at, progress.as_mut()) {
            loop {
                let lags = self.lags_at(at);
                if lags.is_empty() {
                    break;
                }
                if !self.wait_progress(progress, deadline).await {
                    return Err(NodeError::Behind {
                        waited_ms: started.elapsed().as_millis() as u64,
                        lags: self.lags_at(at),
                    });
                }
            }
        }
        let (body, etag, last_local, freshness) = {
            let mut core = lock(&self.shared);
            let durable = self.durable.borrow().local_seq;
            let freshness = core.freshness(durable);
            if let Some(limit) = options.max_staleness_ms {
                if freshness.staleness_ms > limit {
                    return Err(NodeError::TooStale {
                        staleness_ms: freshness.staleness_ms,
                        limit_ms: limit,
                        per_region: freshness.per_region,
                    });
                }
            }
            let Some(state) = core.replica.resident(&id).map_err(cold_unavailable)? else {
                return Ok(DocRead { body: None, etag: "".into(), freshness });
            };
            let (body, etag) = match options.at {
                Some(at) => {
                    let heads = state.doc.heads_at(at);
                    let digest = meridian_crdt::document::heads_digest(&heads);
                    let body = state.doc.to_json_at(&heads).map(|json| {
                        axum::body::Bytes::from(serde_json::to_vec(&json).expect("a JSON value serialises"))
                    });
                    (body, format!("\"{}\"", hex(&digest[..12])).into())
                }
                None => {
                    let (body, etag) = state.doc.rendered();
                    (body.map(axum::body::Bytes::from_owner), etag)
                }
            };
            (body, etag, state.last_local_seq, freshness)
        };
        // The snapshot may hold local changes not yet durable: answer only once they are.
        self.wait_durable(last_local).await?;
        Ok(DocRead { body, etag, freshness })
    }

    /// Waits until the node is admitted to the cluster (see
    /// [`Gossip::admitted`]): a joining node's writes could otherwise hide
    /// below the safe time of a member that does not know it yet.
    async fn wait_admitted(&self) -> Result<(), NodeError> {
        // Admission is never taken back: once seen, no core lock per write.
        // Profiled under write load, this check's lock was where the async
        // workers blocked most (a quarter of their time, behind the writer
        // thread), and a blocked worker stalls every request it holds.
        if self.admitted.load(Ordering::Acquire) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
        let mut progress = self.shared.progress.subscribe();
        loop {
            let waiting: Option<Vec<String>> = {
                let core = lock(&self.shared);
                match &core.gossip {
                    Some(gossip) if !gossip.admitted() => {
                        Some(gossip.not_yet_listing_us().into_iter().map(|m| m.region).collect())
                    }
                    Some(_) => {
                        self.admitted.store(true, Ordering::Release);
                        None
                    }
                    // Replication configured but not started yet: nothing to latch.
                    None => None,
                }
            };
            let Some(waiting) = waiting else { return Ok(()) };
            if !self.wait_progress(&mut progress, deadline).await {
                let detail = if waiting.is_empty() {
                    "it has not reached any member yet (check --peer and the network)".to_string()
                } else {
                    format!("still waiting for {} to know it", waiting.join(", "))
                };
                return Err(NodeError::Unavailable(format!(
                    "this node is joining the cluster and takes writes once every member it knows lists it: {detail}; retry shortly"
                )));
            }
        }
    }

    /// Waits for applied state or closed timestamps to move; false at the deadline.
    async fn wait_progress(&self, progress: &mut watch::Receiver<u64>, deadline: tokio::time::Instant) -> bool {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // Closed timestamps also advance with time alone (our own is "now"), so re-check at least every 10 ms.
        let tick = tokio::time::Instant::now() + Duration::from_millis(10);
        let _ = tokio::time::timeout_at(deadline.min(tick), progress.changed()).await;
        true
    }

    /// What this replica still lacks of `token`'s changes, by origin.
    fn lags_after(&self, token: &Token) -> Vec<Lag> {
        let core = lock(&self.shared);
        let applied = core.replica.applied_version_vector();
        token
            .entries
            .iter()
            .filter(|(origin, seq)| applied.contiguous(**origin) < **seq)
            .map(|(origin, seq)| Lag {
                region: core.region_of(*origin, &self.region),
                needed: format!("change {seq}"),
                have: format!("changes up to {}", applied.contiguous(*origin)),
                behind_ms: None,
            })
            .collect()
    }

    /// Members whose effective closed timestamp is still below `at`.
    fn lags_at(&self, at: Hlc) -> Vec<Lag> {
        let mut core = lock(&self.shared);
        let durable = self.durable.borrow().local_seq;
        let freshness = core.freshness(durable);
        if freshness.safe_time >= at {
            return Vec::new();
        }
        let behind_ms = Some(at.wall_ns().saturating_sub(freshness.safe_time.wall_ns()) / 1_000_000);
        let fallback = || {
            // Safe time is below `at` but no member is to blame: it is our own
            // clock (`at` is in the future) or an origin not yet known as a member.
            vec![Lag {
                region: self.region.clone(),
                needed: format!("safe time at {at}"),
                have: format!("safe time at {}", freshness.safe_time),
                behind_ms,
            }]
        };
        let Some(gossip) = &core.gossip else { return fallback() };
        let applied = core.replica.applied_version_vector();
        let lags: Vec<Lag> = gossip
            .members(Instant::now())
            .into_iter()
            .filter_map(|member| {
                let node = member.info.node;
                let closed = gossip.effective_closed(node, applied.contiguous(node)).map(|c| c.t).unwrap_or_default();
                (closed < at).then(|| Lag {
                    region: member.info.region.clone(),
                    needed: format!("closed at {at}"),
                    have: format!("closed at {closed}"),
                    behind_ms: Some(at.wall_ns().saturating_sub(closed.wall_ns()) / 1_000_000),
                })
            })
            .collect();
        if lags.is_empty() {
            fallback()
        } else {
            lags
        }
    }

    fn receipt_json(&self, token: &Token) -> Json {
        let core = lock(&self.shared);
        let now = Instant::now();
        let applied = core.replica.applied_version_vector();
        let iso = |ns: u64| Hlc::new(ns, 0).to_string();
        let mut regions = Vec::new();
        for (&origin, &seq) in &token.entries {
            let own_receipt =
                core.receipts.iter().find(|(o, prefix, _)| *o == origin && *prefix >= seq).map(|(_, _, at)| *at);
            let mut rows = vec![json!({
                "region": self.region,
                "node": self.node_id.to_string(),
                "applied": applied.contiguous(origin) >= seq,
                "learned_at": own_receipt.map(iso),
            })];
            if let Some(gossip) = &core.gossip {
                for member in gossip.members(now) {
                    let prefix = member.applied.get(&origin).copied().unwrap_or(0);
                    rows.push(json!({
                        "region": member.info.region,
                        "node": member.info.node.to_string(),
                        "applied": prefix >= seq,
                        "learned_at": gossip.receipt(member.info.node, origin, seq).map(iso),
                    }));
                }
            }
            regions.push(json!({
                "origin": core.region_of(origin, &self.region),
                "origin_node": origin.to_string(),
                "seq": seq,
                "regions": rows,
            }));
        }
        json!({ "writes": regions })
    }

    fn set_fault_inner(&self, spec: FaultSpec) -> Result<Json, NodeError> {
        if self.driver.get().is_none() {
            return Err(NodeError::Off(
                "replication is off on this node (no --certs), so there are no peer links to fault".into(),
            ));
        }
        let direction = spec.direction.as_deref().unwrap_or("both");
        if !matches!(direction, "both" | "outbound" | "inbound") {
            return Err(NodeError::Invalid(format!("direction {direction:?} must be both, outbound or inbound")));
        }
        if spec.peer_region.is_empty() || spec.peer_region.len() > 64 {
            return Err(NodeError::Invalid("peer_region must name a region, like eu-west".into()));
        }
        let link = LinkFault { delay_ms: spec.delay_ms, jitter_ms: spec.jitter_ms, loss: spec.loss, cut: spec.cut };
        meridian_gossip::link::validate(&link).map_err(NodeError::Invalid)?;
        {
            let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
            if link.is_healthy() {
                faults.remove(&spec.peer_region);
            } else {
                faults.insert(spec.peer_region.clone(), spec);
            }
        }
        self.sync_link();
        self.faults_json()
    }

    /// Re-applies the faults (kept by region) to the link emulator (kept by
    /// address), for every member currently known in each region.
    fn sync_link(&self) {
        let Some(driver) = self.driver.get() else { return };
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let members = {
            let core = lock(&self.shared);
            core.gossip.as_ref().map(|g| g.members(Instant::now())).unwrap_or_default()
        };
        let link = &driver.link;
        let mut wanted_out = BTreeMap::new();
        let mut wanted_in = Vec::new();
        for member in &members {
            let Some(spec) = faults.get(&member.info.region) else { continue };
            let direction = spec.direction.as_deref().unwrap_or("both");
            let outbound_cut = spec.cut && direction != "inbound";
            let fault =
                LinkFault { delay_ms: spec.delay_ms, jitter_ms: spec.jitter_ms, loss: spec.loss, cut: outbound_cut };
            if !fault.is_healthy() {
                wanted_out.insert(member.info.addr, fault);
            }
            if spec.cut && direction != "outbound" {
                wanted_in.push(member.info.addr);
            }
        }
        let current_out: BTreeMap<_, _> = link.outbound().into_iter().collect();
        let current_in = link.inbound_cuts();
        if current_out != wanted_out || current_in != wanted_in {
            link.clear();
            for (addr, fault) in wanted_out {
                link.set_outbound(addr, fault);
            }
            for addr in wanted_in {
                link.set_inbound_cut(addr, true);
            }
        }
    }

    fn faults_json(&self) -> Result<Json, NodeError> {
        let Some(driver) = self.driver.get() else {
            return Err(NodeError::Off("replication is off on this node (no --certs)".into()));
        };
        let faults: Vec<FaultSpec> = self.faults.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let stats = driver.link.stats();
        Ok(json!({
            "faults": faults,
            "links": driver.link.outbound().iter().map(|(addr, f)| json!({
                "peer_addr": addr.to_string(), "delay_ms": f.delay_ms, "jitter_ms": f.jitter_ms, "loss": f.loss, "cut": f.cut,
            })).collect::<Vec<_>>(),
            "inbound_cuts": driver.link.inbound_cuts().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "packets": {
                "dropped_cut": stats.dropped_cut, "dropped_loss": stats.dropped_loss, "delayed": stats.delayed,
                "dropped_inbound_cut": stats.dropped_inbound_cut,
            },
        }))
    }

    fn cluster_json(&self) -> Json {
        let now = Instant::now();
        let core = lock(&self.shared);
        let hlc = core.clock.clone().now().map(Hlc::from).ok();
        let replica = &core.replica;
        let digest = hex(&replica.digest());
        let vv = replica.version_vector().clone();
        let members = core.gossip.as_ref().map(|g| g.members(now)).unwrap_or_default();
        let counters = core.gossip.as_ref().map(|g| g.counters().clone()).unwrap_or_default();
        let refusals: Vec<Json> = core
            .gossip
            .as_ref()
            .map(|g| {
                g.refusals()
                    .map(|r| {
                        json!({
                            "node": r.node.map(|n| n.to_string()),
                            "claimed": r.claimed,
                            "reason": r.reason,
                            "seconds_ago": now.duration_since(r.at).as_secs_f64(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Convergence matrix: rows are replicas, columns origins; each cell
        // how far the replica has applied the origin, as a sequence number and
        // as staleness (now minus the newest closed timestamp those changes cover).
        let now_ns = wall_ns();
        let own_applied = replica.applied_version_vector();
        let mut origins: Vec<(NodeId, String)> = vec![(self.node_id, self.region.clone())];
        origins.extend(members.iter().map(|m| (m.info.node, m.info.region.clone())));
        let cell = |prefix: u64, origin: NodeId, is_self_origin: bool| {
            let staleness_ms = if is_self_origin {
                0
            } else {
                let closed = core
                    .gossip
                    .as_ref()
                    .and_then(|g| g.effective_closed(origin, prefix))
                    .map(|c| c.t)
                    .unwrap_or_default();
                now_ns.saturating_sub(closed.wall_ns()) / 1_000_000
            };
            json!({ "seq": prefix, "staleness_ms": staleness_ms })
        };
        let mut matrix = Vec::new();
        let row: serde_json::Map<String, Json> = origins
            .iter()
            .map(|(origin, region)| {
                (region.clone(), cell(own_applied.contiguous(*origin), *origin, *origin == self.node_id))
            })
            .collect();
        matrix.push(json!({ "replica": self.region, "origins": row }));
        for member in &members {
            let row: serde_json::Map<String, Json> = origins
                .iter()
                .map(|(origin, region)| {
                    let prefix = member.applied.get(origin).copied().unwrap_or(0);
                    (region.clone(), cell(prefix, *origin, *origin == member.info.node))
                })
                .collect();
            matrix.push(json!({ "replica": member.info.region, "state": member.state.as_str(), "origins": row }));
        }
        let own_prefixes: BTreeMap<NodeId, u64> =
            own_applied.origins().map(|o| (o, own_applied.contiguous(o))).collect();
        let own_digest = replica.digest();
        let member_ids: std::collections::BTreeSet<NodeId> = members.iter().map(|m| m.info.node).collect();
        let knows_every_origin =
            replica.version_vector().origins().all(|o| o == self.node_id || member_ids.contains(&o));
        let converged = knows_every_origin
            && members.iter().filter(|m| m.state != meridian_gossip::PeerState::Down).all(|m| {
                let theirs: BTreeMap<NodeId, u64> =
                    m.applied.iter().filter(|(_, &p)| p > 0).map(|(o, p)| (*o, *p)).collect();
                theirs == own_prefixes && m.digest == Some(own_digest)
            });
        let pending = replica.pending_count();
        // Without replication a node is on its own and always takes writes.
        let admitted = core.gossip.as_ref().is_none_or(|g| g.admitted());
        let log_entries = replica.log().len();
        let documents = replica.live_count();
        drop(core);
        let paths =
            self.driver.get().map(|d| d.paths.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default();
        let flags = self.shared.clock_flags.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let handshakes_refused = self.driver.get().map_or(0, |d| d.stats.handshakes_refused.load(Ordering::Relaxed));
        // The emulated link towards each region, so the dashboard can label links without the admin token.
        let link_faults = self.faults.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let members_json: Vec<Json> = members
            .iter()
            .map(|m| {
                let path = paths.get(&m.info.addr);
                json!({
                    "id": m.info.node.to_string(),
                    "region": m.info.region,
                    "peer_addr": m.info.addr.to_string(),
                    "state": m.state.as_str(),
                    "connected": m.connected,
                    "rtt_ms": path.map(|p| p.rtt.as_secs_f64() * 1000.0),
                    "clock_offset_ms": m.offset_ms,
                    "clock_offset_exceeded": flags.contains_key(&m.info.node),
                    "hlc": m.hlc.map(|h| h.to_string()),
                    "version_vector": m.vv,
                    "applied": m.applied.iter().map(|(o, p)| (o.to_string(), *p)).collect::<BTreeMap<String, u64>>(),
                    "digest": m.digest.map(|d| hex(&d)),
                    "last_heartbeat_ms_ago": m.last_heard_ago.map(|d| d.as_millis() as u64),
                    "bytes_sent": m.stats.bytes_sent,
                    "bytes_received": m.stats.bytes_received,
                    "udp_bytes_sent": path.map(|p| p.udp_bytes_sent),
                    "udp_bytes_received": path.map(|p| p.udp_bytes_received),
                    "changes_sent": m.stats.changes_sent,
                    "changes_received": m.stats.changes_received,
                    "queue_bytes": m.queue_bytes,
                    "queue_drops": m.stats.queue_drops,
                    "state_transfers_sent": m.stats.transfers_sent,
                    "last_dial_error": m.last_dial_error,
                    "link_fault": link_faults.get(&m.info.region),
                })
            })
            .collect();
        json!({
            "node": {
                "id": self.node_id.to_string(),
                "region": self.region,
                "hlc": hlc.map(|h| h.to_string()),
                "version_vector": vv,
                "digest": digest,
                "documents": documents,
                "log_entries": log_entries,
                "received_not_applied": pending,
                "admitted": admitted,
                "replication": self.driver.get().is_some(),
                "peer_listener": self.peer_addr().map(|a| a.to_string()),
                "uptime_seconds": self.started.elapsed().as_secs(),
            },
            "members": members_json,
            "converged": converged,
            "convergence": matrix,
            "refused": refusals,
            "counters": {
                "frames_refused": counters.frames_refused,
                "peers_refused": counters.peers_refused,
                "handshakes_refused": handshakes_refused,
                "dial_failures": counters.dial_failures,
            },
        })
    }
}

/// Backups (format and restore in `crate::backup`).
impl NodeRuntime {
    /// A consistent snapshot of this node, as `crate::backup` writes it.
    ///
    /// The applied vector is read first, then each document is saved in its
    /// own lock hold (so writers stall for one document at most): documents
    /// only grow, so each holds at least its changes in the vector, exactly
    /// as a checkpoint's snapshots do. Documents may also hold later changes,
    /// which a restored node receives again from peers as duplicates.
    ///
    /// Local changes applied but not yet durable may be in the vector or in
    /// a saved document; a crash could take them back and reuse their
    /// sequence numbers. So, like a read, the backup is answered only once
    /// every local change up to the last sequence number issued by the end
    /// of the snapshot is durable (or fails with the storage error). Remote
    /// changes need no wait: their origin made them durable before sending.
    pub async fn backup_snapshot(&self) -> Result<crate::backup::Backup, NodeError> {
        /// Document ids fetched per lock hold while listing.
        const IDS_PER_HOLD: usize = 1024;
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        let covered = lock(&self.shared).replica.applied_version_vector().clone();
        let mut documents = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let ids = lock(&self.shared).replica.all_doc_ids(after.as_deref(), IDS_PER_HOLD);
            let Some(last) = ids.last() else { break };
            after = Some(last.as_str().to_string());
            for id in ids {
                // Cold documents come straight from the store, without loading them.
                let saved = lock(&self.shared).replica.saved(&id).map_err(cold_unavailable)?;
                if let Some(saved) = saved {
                    documents.push((id, saved.bytes));
                }
            }
        }
        let (last_seq, hlc_high) = {
            let core = lock(&self.shared);
            // A clone reads the clock without advancing it; it is at or above every change applied here.
            let hlc = core.clock.clone().now().map(Hlc::from).unwrap_or_else(|_| Hlc::new(wall_ns(), 0));
            (core.replica.last_seq(), hlc)
        };
        self.wait_durable(last_seq).await?;
        Ok(crate::backup::Backup {
            source_node: self.node_id,
            source_region: self.region.clone(),
            covered,
            hlc_high,
            documents,
        })
    }
}

/// A feed entry as event streams show it.
fn feed_event(index: u64, entry: &FeedEntry, region: String) -> FeedEvent {
    FeedEvent {
        index,
        doc: entry.doc.clone(),
        region,
        origin: entry.origin,
        seq: entry.seq,
        hlc: entry.hlc,
        token: Token::of_change(entry.origin, entry.seq).to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Node for NodeRuntime {
    async fn write(&self, id: DocId, op: WriteOp, if_match: Option<String>) -> Result<WriteAck, NodeError> {
        self.write_inner(id, op, if_match).await
    }

    async fn read(&self, id: DocId, options: ReadOptions) -> Result<DocRead, NodeError> {
        self.read_inner(id, options).await
    }

    fn receipt(&self, token: Token) -> Result<Json, NodeError> {
        Ok(self.receipt_json(&token))
    }

    fn conflicts(&self, id: DocId) -> Result<Option<Json>, NodeError> {
        let mut core = lock(&self.shared);
        core.replica.resident(&id).map_err(cold_unavailable)?;
        let Some(state) = core.replica.document(&id) else { return Ok(None) };
        let conflicts: Vec<Json> = state
            .doc
            .conflicts()
            .into_iter()
            .map(|c| {
                let values: Vec<Json> = c
                    .values
                    .iter()
                    .map(|v| {
                        json!({
                            "value": v.value,
                            "region": v.meta.map(|m| core.region_of(m.origin, &self.region)),
                            "origin": v.meta.map(|m| m.origin.to_string()),
                            "seq": v.meta.map(|m| m.seq),
                            "hlc": v.meta.map(|m| m.hlc.to_string()),
                            "wins": v.wins,
                        })
                    })
                    .collect();
                json!({ "path": c.path, "values": values })
            })
            .collect();
        Ok(Some(json!({ "id": id.to_string(), "conflicts": conflicts })))
    }

    fn history(&self, id: DocId) -> Result<Option<Json>, NodeError> {
        let mut core = lock(&self.shared);
        core.replica.resident(&id).map_err(cold_unavailable)?;
        let Some(state) = core.replica.document(&id) else { return Ok(None) };
        let mut changes: Vec<(Option<Hlc>, Json)> = state
            .doc
            .history()
            .into_iter()
            .map(|(hash, meta, size)| {
                let entry = json!({
                    "hash": hex(&hash.0),
                    "region": meta.map(|m| core.region_of(m.origin, &self.region)),
                    "origin": meta.map(|m| m.origin.to_string()),
                    "seq": meta.map(|m| m.seq),
                    "hlc": meta.map(|m| m.hlc.to_string()),
                    "bytes": size,
                    "kind": if meta.is_some() { "write" } else { "internal" },
                });
                (meta.map(|m| m.hlc), entry)
            })
            .collect();
        changes.sort_by_key(|(hlc, _)| *hlc);
        Ok(Some(json!({ "id": id.to_string(), "changes": changes.into_iter().map(|(_, e)| e).collect::<Vec<_>>() })))
    }

    fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    fn subscribe_feed(&self) -> Result<(tokio::sync::broadcast::Receiver<FeedEvent>, u64), NodeError> {
        let receiver = self.shared.feed.subscribe();
        Ok((receiver, self.shared.feed_head.load(Ordering::Acquire)))
    }

    async fn feed_after(&self, after: u64, limit: usize) -> Result<Vec<FeedEvent>, NodeError> {
        let reader = self.feed_reader.clone();
        let entries = tokio::task::spawn_blocking(move || reader.read_after(after, limit))
            .await
            .map_err(|err| NodeError::Unavailable(format!("reading the feed failed: {err}")))?
            .map_err(|err| NodeError::Unavailable(format!("reading the feed failed: {err}")))?;
        let core = lock(&self.shared);
        Ok(entries
            .iter()
            .map(|(index, entry)| feed_event(*index, entry, core.region_of(entry.origin, &self.region)))
            .collect())
    }

    fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<DocId>, NodeError> {
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        Ok(lock(&self.shared).replica.list(prefix, after, limit))
    }

    fn ready(&self) -> bool {
        self.durable.borrow().failed.is_none()
    }

    fn render_metrics(&self, out: &mut String) {
        render_metrics(self, out);
    }

    fn cluster(&self) -> Result<Json, NodeError> {
        Ok(self.cluster_json())
    }

    async fn backup(&self) -> Result<Vec<u8>, NodeError> {
        Ok(crate::backup::encode(&self.backup_snapshot().await?))
    }

    fn faults(&self) -> Result<Json, NodeError> {
        self.faults_json()
    }

    fn set_fault(&self, spec: FaultSpec) -> Result<Json, NodeError> {
        self.set_fault_inner(spec)
    }

    fn clear_faults(&self) -> Result<Json, NodeError> {
        if self.driver.get().is_none() {
            return Err(NodeError::Off("replication is off on this node (no --certs)".into()));
        }
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.sync_link();
        self.faults_json()
    }

    fn decommission(&self, member: &str) -> Result<Json, NodeError> {
        let mut guard = lock(&self.shared);
        let core = &mut *guard;
        let Some(gossip) = core.gossip.as_mut() else {
            return Err(NodeError::Off("replication is off on this node (no --certs), so it has no members".into()));
        };
        let node = match member.parse::<NodeId>() {
            Ok(node) => node,
            Err(_) => {
                let named: Vec<NodeId> = gossip
                    .members(Instant::now())
                    .into_iter()
                    .filter(|m| m.info.region == member)
                    .map(|m| m.info.node)
                    .collect();
                match named.as_slice() {
                    [node] => *node,
                    [] => {
                        return Err(NodeError::Invalid(format!(
                            "no member of region {member:?} is known here; name it by region or node id as GET /v1/cluster shows"
                        )))
                    }
                    _ => {
                        return Err(NodeError::Invalid(format!(
                            "several members are in region {member:?}; name one by its node id"
                        )))
                    }
                }
            }
        };
        let last_seq = gossip.decommission(node, &core.replica).map_err(|err| NodeError::Invalid(err.to_string()))?;
        drop(guard);
        // Safe time may have moved: waiting readers re-check.
        self.shared.bump();
        tracing::warn!(member = %node, last_seq, "member decommissioned");
        Ok(json!({ "decommissioned": node.to_string(), "last_seq": last_seq }))
    }
}

/// A per-peer metric: name, type, help, and how to read it off a member.
type PeerSeries = (&'static str, &'static str, &'static str, fn(&meridian_gossip::MemberStatus) -> f64);

/// This process's resident set size from `/proc/self/status` (Linux only; `None` elsewhere).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// A state-transfer chunk waiting to be installed: documents, and on the last chunk what they cover.
type TransferChunk = (Vec<(DocId, Vec<u8>)>, Option<VersionVector>);

fn render_metrics(runtime: &NodeRuntime, out: &mut String) {
    use std::fmt::Write as _;
    let now = Instant::now();
    let (documents, log_entries, log_bytes, last_seq, members, counters, pending, freshness, cache) = {
        let core = lock(&runtime.shared);
        (
            core.replica.live_count(),
            core.replica.log().len(),
            core.replica.log().change_bytes(),
            core.replica.last_seq(),
            core.gossip.as_ref().map(|g| g.members(now)).unwrap_or_default(),
            core.gossip.as_ref().map(|g| g.counters().clone()).unwrap_or_default(),
            core.replica.pending_count(),
            core.gossip.as_ref().map(|g| safe_time(g, &core.replica, wall_ns())),
            (core.replica.resident_count() as u64, core.replica.cold_loads()),
        )
    };
    let durable = runtime.durable.borrow().clone();
    let m = &runtime.shared.metrics;
    let region = escape_label(&runtime.region);
    header(out, "meridian_node_info", "gauge", "Constant 1, labelled with this node's id and region.");
    let _ = writeln!(out, "meridian_node_info{{node_id=\"{}\",region=\"{region}\"}} 1", runtime.node_id);
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let handshakes_refused = runtime.driver.get().map_or(0, |d| load(&d.stats.handshakes_refused));
    // Every scalar series: name, type, help, value. One table, one loop.
    let series: [(&str, &str, &str, u64); 25] = [
        ("meridian_documents", "gauge", "Documents that currently exist on this node.", documents as u64),
        (
            "meridian_documents_resident",
            "gauge",
            "Documents held in memory by the document cache (the rest load from disk on use).",
            cache.0,
        ),
        (
            "meridian_document_cache_limit",
            "gauge",
            "Documents the cache keeps in memory after an eviction pass (--doc-cache).",
            runtime.doc_cache as u64,
        ),
        ("meridian_document_cache_loads_total", "counter", "Cold documents loaded from disk.", cache.1),
        (
            "meridian_documents_unpersisted",
            "gauge",
            "Documents changed and not yet in a durable snapshot (they stay in memory until they are).",
            runtime.shared.unpersisted.load(Ordering::Relaxed) as u64,
        ),
        (
            "meridian_documents_unpersisted_limit",
            "gauge",
            "Above this many unpersisted documents, local writes wait for checkpoints (--unpersisted-docs-max).",
            runtime.shared.unpersisted_max as u64,
        ),
        (
            "meridian_write_backpressure_waits_total",
            "counter",
            "Times local writes waited for checkpoints to persist documents.",
            load(&m.backpressure_waits),
        ),
        ("meridian_log_entries", "gauge", "Change records held in the log.", log_entries as u64),
        ("meridian_log_bytes", "gauge", "Automerge change bytes held in the log.", log_bytes as u64),
        ("meridian_local_sequence", "gauge", "Last sequence number given to a local write.", last_seq),
        ("meridian_durable_sequence", "gauge", "Last local sequence number known durable.", durable.local_seq),
        (
            "meridian_storage_failed",
            "gauge",
            "1 if storage failed and the node refuses work.",
            u64::from(durable.failed.is_some()),
        ),
        (
            "meridian_storage_commits_total",
            "counter",
            "Durable storage commits (each one fsync).",
            load(&m.storage_commits),
        ),
        ("meridian_storage_records_total", "counter", "Change records committed to storage.", load(&m.storage_records)),
        (
            "meridian_remote_changes_applied_total",
            "counter",
            "Remote change records persisted and applied.",
            load(&m.remote_applied),
        ),
        (
            "meridian_remote_changes_duplicate_total",
            "counter",
            "Remote change records already held when they arrived.",
            load(&m.remote_duplicates),
        ),
        (
            "meridian_remote_changes_dropped_total",
            "counter",
            "Remote records dropped because too many were waiting for disk (resent by anti-entropy).",
            load(&m.remote_dropped),
        ),
        (
            "meridian_remote_changes_deferred_total",
            "counter",
            "Remote records not taken because too many were waiting for a dependency (resent by anti-entropy).",
            load(&m.remote_deferred),
        ),
        (
            "meridian_remote_changes_refused_total",
            "counter",
            "Remote change records refused: they do not decode, or their document refuses a change of theirs (the log says why).",
            load(&m.remote_refused),
        ),
        (
            "meridian_state_transfer_chunks_total",
            "counter",
            "State-transfer chunks installed.",
            load(&m.snapshots_installed),
        ),
        (
            "meridian_hlc_not_observed_total",
            "counter",
            "Peer timestamps not observed because they ran ahead by more than the maximum clock offset.",
            load(&m.hlc_not_observed),
        ),
        (
            "meridian_peer_frames_refused_total",
            "counter",
            "Peer frames refused as malformed, truncated, oversized or out of order.",
            counters.frames_refused,
        ),
        (
            "meridian_peer_hellos_refused_total",
            "counter",
            "Peers refused at hello (other cluster, other protocol version, own id).",
            counters.peers_refused,
        ),
        (
            "meridian_peer_handshakes_refused_total",
            "counter",
            "Peer connections refused during the TLS handshake (e.g. a certificate from another CA).",
            handshakes_refused,
        ),
        (
            "meridian_received_not_applied",
            "gauge",
            "Change records held but not applied (automerge waits for a dependency).",
            pending as u64,
        ),
    ];
    for (name, kind, help, value) in series {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        out,
        "meridian_write_backpressure_seconds_total",
        "counter",
        "Time local writes waited for checkpoints (too many documents not yet in a durable snapshot).",
    );
    let _ = writeln!(out, "meridian_write_backpressure_seconds_total {}", load(&m.backpressure_us) as f64 / 1e6);
    header(out, "meridian_recovery_duration_seconds", "gauge", "Time the last start spent recovering from storage.");
    let _ = writeln!(out, "meridian_recovery_duration_seconds {}", load(&m.recovery_us) as f64 / 1e6);
    // The same figure reads report as staleness_ms; without replication there is nothing to wait for, so 0.
    header(
        out,
        "meridian_staleness_seconds",
        "gauge",
        "How stale an unconstrained read here is now: local time minus safe time.",
    );
    let staleness_ms = freshness.as_ref().map_or(0, |f| f.staleness_ms);
    let _ = writeln!(out, "meridian_staleness_seconds {}", staleness_ms as f64 / 1000.0);
    header(
        out,
        "meridian_peer_staleness_seconds",
        "gauge",
        "Local time minus the newest closed timestamp of the peer whose changes are all applied here.",
    );
    for origin in freshness.iter().flat_map(|f| &f.origins) {
        let _ = writeln!(
            out,
            "meridian_peer_staleness_seconds{{peer_region=\"{}\",peer=\"{}\"}} {}",
            escape_label(&origin.region),
            origin.node,
            origin.staleness_ms as f64 / 1000.0
        );
    }
    if let Some(rss) = resident_memory_bytes() {
        // The client libraries' standard name (no meridian_ prefix), so stock process dashboards find it.
        header(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        let _ = writeln!(out, "process_resident_memory_bytes {rss}");
    }
    let paths =
        runtime.driver.get().map(|d| d.paths.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default();
    let flags = runtime.shared.clock_flags.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let per_peer: [PeerSeries; 7] = [
        ("meridian_peer_bytes_sent_total", "counter", "Frame bytes sent to the peer.", |m| m.stats.bytes_sent as f64),
        ("meridian_peer_bytes_received_total", "counter", "Frame bytes received from the peer.", |m| {
            m.stats.bytes_received as f64
        }),
        ("meridian_peer_changes_sent_total", "counter", "Change records sent to the peer.", |m| {
            m.stats.changes_sent as f64
        }),
        ("meridian_peer_changes_received_total", "counter", "Change records received from the peer.", |m| {
            m.stats.changes_received as f64
        }),
        ("meridian_peer_queue_bytes", "gauge", "Live change bytes queued for the peer.", |m| m.queue_bytes as f64),
        ("meridian_peer_clock_offset_seconds", "gauge", "Peer clock minus ours, from heartbeats.", |m| {
            m.offset_ms as f64 / 1000.0
        }),
        ("meridian_peer_up", "gauge", "1 if the peer is alive (heard from recently).", |m| {
            f64::from(u8::from(m.state == meridian_gossip::PeerState::Alive))
        }),
    ];
    for (name, kind, help, value) in per_peer {
        header(out, name, kind, help);
        for member in &members {
            let _ = writeln!(
                out,
                "{name}{{peer_region=\"{}\",peer=\"{}\"}} {}",
                escape_label(&member.info.region),
                member.info.node,
                value(member)
            );
        }
    }
    // One series per state, so a state change is a value change, not a new series.
    header(out, "meridian_peer_state", "gauge", "1 for the peer's current membership state, 0 for the others.");
    for member in &members {
        use meridian_gossip::PeerState::{Alive, Down, Suspect, Unknown};
        for state in [Unknown, Alive, Suspect, Down] {
            let _ = writeln!(
                out,
                "meridian_peer_state{{peer_region=\"{}\",peer=\"{}\",state=\"{}\"}} {}",
                escape_label(&member.info.region),
                member.info.node,
                state.as_str(),
                u8::from(member.state == state)
            );
        }
    }
    header(out, "meridian_peer_rtt_seconds", "gauge", "QUIC smoothed round-trip time to the peer.");
    for member in &members {
        if let Some(path) = paths.get(&member.info.addr) {
            let _ = writeln!(
                out,
                "meridian_peer_rtt_seconds{{peer_region=\"{}\",peer=\"{}\"}} {}",
                escape_label(&member.info.region),
                member.info.node,
                path.rtt.as_secs_f64()
            );
        }
    }
    header(
        out,
        "meridian_peer_clock_offset_exceeded",
        "gauge",
        "1 if the peer's clock runs ahead by more than the maximum offset.",
    );
    for member in &members {
        let _ = writeln!(
            out,
            "meridian_peer_clock_offset_exceeded{{peer_region=\"{}\",peer=\"{}\"}} {}",
            escape_label(&member.info.region),
            member.info.node,
            u8::from(flags.contains_key(&member.info.node))
        );
    }
    header(out, "meridian_write_duration_seconds", "histogram", "Local write latency, from apply to durable.");
    m.write_latency.render(out, "meridian_write_duration_seconds", "");
    header(
        out,
        "meridian_write_stage_seconds",
        "histogram",
        "Local write latency by stage: queue (until the writer thread starts it), writer (queued and applied, until the request has the answer), durable (from then until durable, as the request saw it), storage (of that, from the writer's hand-off to the commit, as the storage thread saw it).",
    );
    let stages = [
        ("queue", &m.write_stage_queue),
        ("writer", &m.write_stage_writer),
        ("durable", &m.write_stage_durable),
        ("storage", &m.write_stage_storage),
    ];
    for (stage, hist) in stages {
        hist.render(out, "meridian_write_stage_seconds", &format!("stage=\"{stage}\""));
    }
    header(out, "meridian_fsync_duration_seconds", "histogram", "Storage commit (fsync) latency.");
    m.fsync_latency.render(out, "meridian_fsync_duration_seconds", "");
    header(
        out,
        "meridian_checkpoint_duration_seconds",
        "histogram",
        "Time to snapshot dirty documents and commit a checkpoint.",
    );
    m.checkpoint_latency.render(out, "meridian_checkpoint_duration_seconds", "");
}

/// The node as the replication driver sees it.
struct ReplicationHost {
    shared: Arc<Shared>,
    runtime: std::sync::Weak<NodeRuntime>,
}

impl Host for ReplicationHost {
    fn with_core<R>(&self, f: impl FnOnce(&mut Gossip, &Replica, Clocks) -> R) -> R {
        let mut guard = lock(&self.shared);
        let core = &mut *guard;
        let closed = core.closed();
        let hlc = core.clock.now().map(Hlc::from).unwrap_or_else(|_| Hlc::new(wall_ns(), 0));
        let clocks = Clocks { now: Instant::now(), wall_ns: wall_ns(), hlc, closed };
        let gossip = core.gossip.as_mut().expect("the driver runs only with a gossip core");
        f(gossip, &core.replica, clocks)
    }

    fn handle_event(&self, event: Event) {
        let Some(runtime) = self.runtime.upgrade() else { return };
        match event {
            Event::Records { records, .. } => {
                let metrics = &self.shared.metrics;
                let fresh: Vec<ChangeRecord> = {
                    let core = lock(&self.shared);
                    let vv = core.replica.version_vector();
                    let own = core.replica.node();
                    records
                        .into_iter()
                        // Our own changes come back only from peers, and we hold every
                        // durable one already; one we do not hold was lost in a crash and
                        // its sequence number is being reused: never take it back.
                        .filter(|r| r.meta.origin != own && !vv.contains(r.meta.origin, r.meta.seq))
                        // Refuse what does not decode before it reaches the log.
                        .filter(|r| {
                            let decodes = r.changes.iter().all(|bytes| automerge::Change::from_bytes(bytes.clone()).is_ok());
                            if !decodes {
                                metrics.remote_refused.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(origin = %r.meta.origin, seq = r.meta.seq, "remote change does not decode; refused");
                            }
                            decodes
                        })
                        .collect()
                };
                if fresh.is_empty() {
                    return;
                }
                let count = fresh.len() as u64;
                if metrics.remote_in_flight.load(Ordering::Relaxed) + count > REMOTE_RECORDS_IN_FLIGHT_MAX {
                    metrics.remote_dropped.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                metrics.remote_in_flight.fetch_add(count, Ordering::Relaxed);
                runtime.shared.send_storage(StorageMsg::Remote(fresh));
            }
            Event::Snapshot { docs, covers, .. } => {
                runtime.shared.send_storage(StorageMsg::Snapshot { docs, covers });
            }
            Event::PeerClock { node, hlc, offset_ms } => {
                let limit = self.shared.max_clock_offset.as_millis() as i64;
                let mut flags = self.shared.clock_flags.lock().unwrap_or_else(|e| e.into_inner());
                if offset_ms > limit {
                    if flags.insert(node, offset_ms).is_none() {
                        tracing::warn!(peer = %node, offset_ms, limit_ms = limit, "peer clock runs ahead beyond the maximum offset; its changes are applied but it cannot move our clock");
                    }
                } else {
                    if flags.remove(&node).is_some() {
                        tracing::info!(peer = %node, offset_ms, "peer clock back within the maximum offset");
                    }
                    drop(flags);
                    let mut core = lock(&self.shared);
                    self.shared.observe(&mut core, hlc);
                }
                // A heartbeat may have advanced closed timestamps: waiting readers re-check.
                self.shared.bump();
                if !runtime.faults.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                    runtime.sync_link();
                }
            }
            Event::Close { .. } => {}
        }
    }
}

/// The storage thread's state.
struct StorageWorker {
    store: Store,
    /// This node's id, kept here so a commit needs no core lock to know it.
    node: NodeId,
    rx: mpsc::Receiver<StorageMsg>,
    durable: watch::Sender<Durable>,
    /// The core's [`Core::durable_published`].
    durable_published: Arc<AtomicU64>,
    /// The core's `hlc_lease`, which only this thread changes.
    hlc_lease: Hlc,
    shared: Arc<Shared>,
    dirty: HashSet<DocId>,
    /// Dirty documents that force a checkpoint ([`forced_checkpoint_at`]).
    forced_at: usize,
    /// Documents the checkpoint step in progress is saving (taken from the
    /// phase's `todo`, not yet durable).
    step_docs: usize,
    committed_ticket: u64,
    committed_local_seq: u64,
    /// The vector the snapshots on disk cover.
    checkpoint_vv: VersionVector,
    /// The next feed index to assign.
    next_feed: u64,
    last_checkpoint: Instant,
    checkpoint_interval: Duration,
    shutdown_requested: bool,
    /// The checkpoint in progress, if any.
    phase: Option<CheckpointPhase>,
    /// Log records a durable checkpoint covers and every member holds,
    /// still to delete: per origin, (deleted up to, delete up to). Each
    /// commit takes up to [`TRUNCATE_PER_COMMIT`] of them. A crash leaves
    /// the rest on disk, where recovery sees them as already applied.
    truncating: BTreeMap<NodeId, (u64, u64)>,
}

/// A checkpoint in progress: its snapshots go a few per commit, between
/// ordinary commits, so a write never waits behind all of them.
struct CheckpointPhase {
    /// What the snapshots will cover (`V`).
    covered: VersionVector,
    /// Documents still to snapshot.
    todo: Vec<DocId>,
    /// Snapshots per step (see `CHECKPOINT_STEPS`).
    per_step: usize,
    started: Instant,
    /// Snapshots written so far.
    snapshots: usize,
    /// When the next step may run (see `CHECKPOINT_PACE`).
    next_step_at: Instant,
}

/// What one pass of the storage loop received.
#[derive(Default)]
struct Received {
    local: Vec<ChangeRecord>,
    /// When each local batch was sent, and its record count.
    local_sent: Vec<(Instant, u64)>,
    remote: Vec<ChangeRecord>,
    snapshots: Vec<TransferChunk>,
}

impl StorageWorker {
    fn run(mut self) {
        loop {
            // Wake at least every 200 ms: the HLC lease must be renewed before it runs out.
            // During a checkpoint, only take what is already queued between its steps.
            let wait = if let Some(phase) = &self.phase {
                phase.next_step_at.saturating_duration_since(Instant::now()).min(Duration::from_millis(200))
            } else {
                // Once the interval has passed with nothing to checkpoint, the
                // next write or the lease wakes us: waiting "until the interval"
                // would be a 1 ms spin on an idle node (~500 wakeups/s).
                let until = self.checkpoint_interval.saturating_sub(self.last_checkpoint.elapsed());
                if until.is_zero() {
                    Duration::from_millis(200)
                } else {
                    until.min(Duration::from_millis(200))
                }
            };
            // Truncation left to do goes on between writes, or on its own when none come.
            let wait = if self.truncating.is_empty() { wait } else { wait.min(Duration::from_millis(5)) };
            let first = match self.rx.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.shutdown_requested = true;
                    None
                }
            };
            let mut received = Received::default();
            let mut bytes = 0;
            let mut next = first;
            while let Some(msg) = next.take() {
                bytes += self.take(msg, &mut received);
                let count = received.local.len() + received.remote.len();
                if count < BATCH_RECORDS_MAX && bytes < BATCH_BYTES_MAX && !self.shutdown_requested {
                    next = self.rx.try_recv().ok();
                }
            }
            let commits_before = self.shared.metrics.storage_commits.load(Ordering::Relaxed);
            if self.commit_received(received).is_err() {
                return;
            }
            if self.renew_lease().is_err() {
                return;
            }
            if self.phase.is_none() {
                let interval_passed = self.last_checkpoint.elapsed() >= self.checkpoint_interval;
                let due = (!self.dirty.is_empty() && (interval_passed || self.dirty.len() >= self.forced_at))
                    || (interval_passed && self.log_truncatable());
                if (due || self.shutdown_requested) && self.begin_checkpoint().is_err() {
                    return;
                }
            }
            let step_due = self.phase.as_ref().is_some_and(|p| p.next_step_at <= Instant::now());
            if step_due && !self.shutdown_requested && self.checkpoint_step().is_err() {
                return;
            }
            // Nothing else committed this pass: a commit of its own for the next truncation chunk.
            let idle = self.shared.metrics.storage_commits.load(Ordering::Relaxed) == commits_before;
            if idle && !self.truncating.is_empty() && self.commit(Batch::default()).is_err() {
                return;
            }
            self.publish_unpersisted();
            if self.shutdown_requested {
                // Finish the checkpoint in progress, then one more for what arrived during it.
                while self.phase.is_some() {
                    if self.checkpoint_step().is_err() {
                        return;
                    }
                }
                if !self.dirty.is_empty() && self.begin_checkpoint().is_ok() {
                    while self.phase.is_some() {
                        if self.checkpoint_step().is_err() {
                            return;
                        }
                    }
                }
                while !self.truncating.is_empty() {
                    if self.commit(Batch::default()).is_err() {
                        return;
                    }
                }
                return;
            }
        }
    }

    /// Persists a new HLC lease when the current one is close to running out.
    fn renew_lease(&mut self) -> Result<(), ()> {
        // Only this thread changes the lease: its own copy, no core lock per pass.
        let current = self.hlc_lease;
        let renew_below = wall_ns() + HLC_LEASE_RENEW_BELOW.as_nanos() as u64;
        if current.wall_ns() > renew_below {
            return Ok(());
        }
        let lease = Hlc::new(wall_ns() + HLC_LEASE_AHEAD.as_nanos() as u64, 0);
        self.commit(Batch { hlc_lease: Some(lease), ..Batch::default() })?;
        lock(&self.shared).hlc_lease = lease;
        self.hlc_lease = lease;
        Ok(())
    }

    /// Whether the log holds records that the snapshots and every member
    /// already hold (peers' heartbeats may have caught up since the last checkpoint).
    fn log_truncatable(&self) -> bool {
        if !self.truncating.is_empty() {
            // Already on its way out, a chunk per commit.
            return false;
        }
        let core = lock(&self.shared);
        let log = core.replica.log();
        if log.is_empty() {
            return false;
        }
        let points: Vec<(NodeId, u64)> = match &core.gossip {
            Some(gossip) => gossip.truncation_point(&core.replica).into_iter().collect(),
            None => self.checkpoint_vv.origins().map(|o| (o, u64::MAX)).collect(),
        };
        points.into_iter().any(|(origin, upto)| {
            let upto = upto.min(self.checkpoint_vv.contiguous(origin));
            log.first_seq(origin).is_some_and(|first| first <= upto)
        })
    }

    /// Publishes how many documents are changed and not yet in a durable
    /// snapshot, for the writer's backpressure ([`wait_for_checkpoints`]):
    /// dirty, waiting in the checkpoint in progress, or being saved by its
    /// current step. Called as documents turn dirty too, not only once a
    /// loop: a checkpoint step commits the writes that arrive during it
    /// (`commit_waiting`), and a count published only after the step let
    /// a test's writers run 60 documents past a limit of 8.
    fn publish_unpersisted(&self) {
        let in_checkpoint = self.phase.as_ref().map_or(0, |p| p.todo.len()) + self.step_docs;
        self.shared.unpersisted.store(self.dirty.len() + in_checkpoint, Ordering::Release);
    }

    /// Sorts one message into `received`; returns its change bytes.
    fn take(&mut self, msg: StorageMsg, received: &mut Received) -> usize {
        match msg {
            StorageMsg::Append { ticket, records, sent } => {
                self.committed_ticket = self.committed_ticket.max(ticket);
                received.local_sent.push((sent, records.len() as u64));
                let bytes = records.iter().map(ChangeRecord::change_bytes).sum();
                for record in &records {
                    self.dirty.insert(record.doc.clone());
                }
                self.publish_unpersisted();
                received.local.extend(records);
                bytes
            }
            StorageMsg::Remote(records) => {
                let bytes = records.iter().map(ChangeRecord::change_bytes).sum();
                for record in &records {
                    self.dirty.insert(record.doc.clone());
                }
                self.publish_unpersisted();
                received.remote.extend(records);
                bytes
            }
            StorageMsg::Snapshot { docs, covers } => {
                let bytes = docs.iter().map(|(_, d)| d.len()).sum();
                received.snapshots.push((docs, covers));
                bytes
            }
            StorageMsg::Shutdown => {
                self.shutdown_requested = true;
                0
            }
        }
    }

    /// Commits what one pass received, then makes it visible: local records
    /// to the gossip core, remote records and snapshots to the replica.
    fn commit_received(&mut self, received: Received) -> Result<(), ()> {
        let Received { local, local_sent, remote, snapshots } = received;
        if !local.is_empty() || !remote.is_empty() {
            let mut records = local.clone();
            records.extend(remote.iter().cloned());
            self.commit(Batch { records, ..Batch::default() })?;
            self.observe_storage_stage(&local_sent);
            let remote_count = remote.len() as u64;
            let now = Instant::now();
            // A single node's local-only batch needs nothing from the core: no
            // lock, which the writer thread holds most of the time under load
            // (profiled: the storage thread's main wait, delaying the next commit).
            let replicating = self.shared.replicating.load(Ordering::Acquire);
            let mut core = (replicating || !remote.is_empty()).then(|| lock(&self.shared));
            if let Some(core) = core.as_mut().filter(|_| !remote.is_empty()) {
                for record in &remote {
                    self.shared.observe(core, record.meta.hlc);
                }
                let before = core.applied_prefixes();
                let outcome = core.replica.apply_records(remote);
                core.note_applied(&before);
                self.shared.metrics.note_remote(&outcome, remote_count);
            }
            if let Some(gossip) = core.as_mut().and_then(|core| core.gossip.as_mut()) {
                if !local.is_empty() {
                    gossip.handle_local_records(now, &local);
                }
            }
            drop(core);
            self.shared.bump();
            if let Some(wake) = self.shared.wake.get() {
                wake.notify_one();
            }
        }
        for (docs, covers) in snapshots {
            self.install_snapshot(docs, covers)?;
        }
        Ok(())
    }

    /// Merges a state-transfer chunk into the replica and persists the merged
    /// documents; on the last chunk, records (durably, then in memory) that
    /// the snapshots now cover the sender's vector.
    fn install_snapshot(&mut self, docs: Vec<(DocId, Vec<u8>)>, covers: Option<VersionVector>) -> Result<(), ()> {
        let mut saved = Vec::with_capacity(docs.len());
        for (id, bytes) in docs {
            let doc = match Document::load(&bytes) {
                Ok(doc) => doc,
                Err(err) => {
                    tracing::warn!(doc = %id, cause = %err, "state-transfer document does not load; skipped");
                    continue;
                }
            };
            let mut core = lock(&self.shared);
            if let Err(err) = core.replica.merge_document(id.clone(), doc) {
                tracing::warn!(doc = %id, cause = %err, "state-transfer document does not merge; skipped");
                continue;
            }
            if let Some(snapshot) = core.replica.snapshot_of(&id) {
                saved.push((id, snapshot));
            }
        }
        let mut checkpoint = None;
        if let Some(covers) = &covers {
            let mut vv = self.checkpoint_vv.clone();
            vv.merge(covers);
            checkpoint = Some(vv);
        }
        // A merged document may hold a local change still in the channel:
        // commit every local record sent so far in the same transaction, so a
        // snapshot never holds a change a crash could take back.
        let ticket = lock(&self.shared).tickets_sent;
        let mut received = Received::default();
        self.drain_until(ticket, &mut received);
        let records: Vec<ChangeRecord> = received.local.iter().chain(received.remote.iter()).cloned().collect();
        let (snapshots, persisted) = split_snapshots(saved);
        self.commit(Batch { records, snapshots, checkpoint: checkpoint.clone(), ..Batch::default() })?;
        self.mark_persisted(persisted);
        let Received { local, local_sent, remote, snapshots: more } = received;
        self.observe_storage_stage(&local_sent);
        self.publish(local, remote)?;
        if !more.is_empty() {
            // Chunks that arrived meanwhile: install them after this one, in order.
            for (docs, covers) in more {
                self.install_snapshot(docs, covers)?;
            }
        }
        self.shared.metrics.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        if let (Some(covers), Some(checkpoint)) = (covers, checkpoint) {
            self.checkpoint_vv = checkpoint;
            let mut core = lock(&self.shared);
            let before = core.applied_prefixes();
            core.replica.restore_version_vector(&covers);
            core.note_applied(&before);
            drop(core);
            self.shared.bump();
            tracing::info!("state transfer installed");
        }
        Ok(())
    }

    /// Commits a batch and publishes what became durable; on failure marks
    /// the node failed (every later request gets 503).
    fn commit(&mut self, mut batch: Batch) -> Result<(), ()> {
        let started = Instant::now();
        let node = self.node;
        // Several peers may deliver the same remote record at once: store and
        // feed it once. Local records never repeat, so a batch of only local
        // records needs no core lock here: writers hold that lock most of the
        // time at high load, and every wait on it before the commit is a wait
        // for every write in the batch.
        if batch.records.iter().any(|r| r.meta.origin != node) {
            let core = lock(&self.shared);
            let vv = core.replica.version_vector();
            let mut seen = HashSet::new();
            batch.records.retain(|r| {
                let key = (r.meta.origin, r.meta.seq);
                seen.insert(key) && (r.meta.origin == node || !vv.contains(r.meta.origin, r.meta.seq))
            });
        }
        let first_feed = self.next_feed;
        for record in &batch.records {
            let entry = FeedEntry {
                doc: record.doc.clone(),
                origin: record.meta.origin,
                seq: record.meta.seq,
                hlc: record.meta.hlc,
            };
            batch.feed.push((self.next_feed, entry));
            self.next_feed += 1;
        }
        if batch.checkpoint.is_some() {
            batch.feed_keep_from = Some(self.next_feed.saturating_sub(FEED_KEEP));
        }
        let local_max = batch.records.iter().filter(|r| r.meta.origin == node).map(|r| r.meta.seq).max();
        let count = batch.records.len() as u64;
        batch.truncate = self.truncation_chunk();
        match self.store.commit(&batch) {
            Ok(()) => {
                let metrics = &self.shared.metrics;
                metrics.fsync_latency.observe(started.elapsed());
                metrics.storage_commits.fetch_add(1, Ordering::Relaxed);
                metrics.storage_records.fetch_add(count, Ordering::Relaxed);
                if let Some(seq) = local_max {
                    self.committed_local_seq = self.committed_local_seq.max(seq);
                }
                let local_seq = self.committed_local_seq;
                // No core lock here: the writer thread holds it most of the
                // time under load. The core catches up from
                // `durable_published` when next locked (Core::catch_up_durable);
                // published before the acknowledgement, so a read after it sees it.
                self.durable_published.fetch_max(local_seq, Ordering::Release);
                self.durable.send_modify(|d| d.local_seq = local_seq);
                self.truncated(&batch.truncate);
                self.publish_feed(&batch.feed);
                Ok(())
            }
            Err(err) => {
                self.next_feed = first_feed;
                tracing::error!(cause = %err, "storage commit failed; the node stops accepting work");
                let reason: Arc<str> = err.to_string().into();
                self.durable.send_modify(|d| d.failed = Some(reason));
                Err(())
            }
        }
    }

    /// Tells event streams about committed changes.
    fn publish_feed(&self, feed: &[(u64, FeedEntry)]) {
        let Some(&(last, _)) = feed.last() else { return };
        if self.shared.feed.receiver_count() > 0 {
            // Only others' changes need the membership (and so the core lock)
            // for their region; a node taking writes holds that lock in turn.
            let core = feed.iter().any(|(_, e)| e.origin != self.node).then(|| lock(&self.shared));
            for (index, entry) in feed {
                let region = match &core {
                    Some(core) => core.region_of(entry.origin, &self.shared.region),
                    None => self.shared.region.clone(),
                };
                let _ = self.shared.feed.send(feed_event(*index, entry, region));
            }
        }
        self.shared.feed_head.store(last, Ordering::Release);
    }

    /// Commits (and publishes) whatever is already queued, without waiting
    /// for more.
    fn commit_waiting(&mut self) -> Result<(), ()> {
        let mut received = Received::default();
        let mut bytes = 0;
        while received.local.len() + received.remote.len() < BATCH_RECORDS_MAX && bytes < BATCH_BYTES_MAX {
            match self.rx.try_recv() {
                Ok(msg) => bytes += self.take(msg, &mut received),
                Err(_) => break,
            }
        }
        self.commit_received(received)
    }

    /// Receives every local record up to `ticket` (and whatever else arrives meanwhile).
    fn drain_until(&mut self, ticket: u64, received: &mut Received) {
        while self.committed_ticket < ticket {
            match self.rx.recv() {
                Ok(msg) => {
                    self.take(msg, received);
                }
                Err(_) => return,
            }
        }
    }

    /// Starts a checkpoint: snapshots every dirty document, a few per commit
    /// ([`StorageWorker::checkpoint_step`]), then records what they cover.
    ///
    /// 1. Read the vector `V` and ticket `T` under the lock, then receive and
    ///    commit every local record up to `T`: every change in `V` now has its
    ///    document marked dirty (remote changes are in `V` only once applied,
    ///    which marks them dirty first).
    /// 2. Take the dirty set `D`; every step snapshots part of `D` (each
    ///    snapshot holds at least its document's changes in `V`), then reads
    ///    the ticket again and commits the local records up to it in the same
    ///    transaction: a snapshot never holds a change whose sequence number a
    ///    crash could reuse.
    /// 3. The last step commits `V` (merged with what state transfers installed
    ///    meanwhile) as the checkpoint vector, and drops from the log what `V`
    ///    covers and every member holds. Until then the old vector stands, and
    ///    the log still holds everything it does not cover, so a crash
    ///    mid-checkpoint recovers as before it started.
    fn begin_checkpoint(&mut self) -> Result<(), ()> {
        let started = Instant::now();
        let (covered, ticket_before) = {
            let core = lock(&self.shared);
            // Only applied changes are in the documents: one automerge holds back
            // stays in the log (and replays as pending) until it applies.
            (core.replica.applied_version_vector().clone(), core.tickets_sent)
        };
        let mut received = Received::default();
        self.drain_until(ticket_before, &mut received);
        self.commit_received(received)?;
        let todo: Vec<DocId> = self.dirty.drain().collect();
        let per_step = (todo.len() / CHECKPOINT_STEPS).clamp(*SNAPSHOTS_PER_STEP.start(), *SNAPSHOTS_PER_STEP.end());
        self.phase =
            Some(CheckpointPhase { covered, todo, per_step, started, snapshots: 0, next_step_at: Instant::now() });
        Ok(())
    }

    /// Writes the next few snapshots of the checkpoint in progress, or, when
    /// none are left, its vector and truncation (see [`StorageWorker::begin_checkpoint`]).
    fn checkpoint_step(&mut self) -> Result<(), ()> {
        let Some(phase) = self.phase.as_mut() else { return Ok(()) };
        let chunk: Vec<DocId> = phase.todo.split_off(phase.todo.len().saturating_sub(phase.per_step));
        let last = phase.todo.is_empty();
        // Still unpersisted until this step commits (see `publish_unpersisted`).
        self.step_docs = chunk.len();
        let mut saved = Vec::with_capacity(chunk.len());
        let mut saving = Duration::ZERO;
        for id in chunk {
            // One document per lock hold, so writers are never stalled for long.
            // A cold document is not dirty in memory: its stored snapshot is current.
            let started = Instant::now();
            let snapshot = lock(&self.shared).replica.snapshot_of(&id);
            saving += started.elapsed();
            if let Some(snapshot) = snapshot {
                saved.push((id, snapshot));
            }
            // Writes queued meanwhile commit now, not after the whole step:
            // a step's saves take milliseconds, and every write behind them
            // would wait that long (the write tail at 70% load). Records
            // committed here are durable before this step's snapshots, which
            // the invariant allows.
            self.commit_waiting()?;
        }
        let Some(phase) = self.phase.as_mut() else { return Ok(()) };
        phase.snapshots += saved.len();
        // Pace on the saving (CPU), not on the commits (mostly waiting for fsync).
        let backlog = phase.todo.len() + self.dirty.len();
        let pace = if backlog > DIRTY_BACKLOG_UNPACED.min(self.forced_at) { 0 } else { CHECKPOINT_PACE };
        phase.next_step_at = Instant::now() + saving * pace;
        let (snapshots, persisted) = split_snapshots(saved);
        let mut received = Received::default();
        let ticket_after = lock(&self.shared).tickets_sent;
        self.drain_until(ticket_after, &mut received);
        let mut checkpoint = None;
        let mut truncate = Vec::new();
        if last {
            let phase = self.phase.as_ref().expect("in progress");
            let covered = &phase.covered;
            truncate = {
                let core = lock(&self.shared);
                match &core.gossip {
                    // Replicating: only what every member holds may go.
                    Some(gossip) => gossip
                        .truncation_point(&core.replica)
                        .into_iter()
                        .map(|(origin, upto)| (origin, upto.min(covered.contiguous(origin))))
                        .collect(),
                    // Alone: nobody else needs the log.
                    None => covered.origins().map(|origin| (origin, covered.contiguous(origin))).collect(),
                }
            };
            let mut vv = self.checkpoint_vv.clone();
            vv.merge(covered);
            checkpoint = Some(vv);
        }
        let records: Vec<ChangeRecord> = received.local.iter().chain(received.remote.iter()).cloned().collect();
        let batch = Batch { records, snapshots, checkpoint: checkpoint.clone(), ..Batch::default() };
        self.commit(batch)?;
        self.mark_persisted(persisted);
        self.step_docs = 0;
        {
            let mut core = lock(&self.shared);
            // Only now that the checkpoint is durable may what it covers go.
            for (origin, upto) in truncate {
                let Some(first) = core.replica.log().first_seq(origin) else { continue };
                if first <= upto {
                    let pending = self.truncating.entry(origin).or_insert((first.saturating_sub(1), upto));
                    pending.1 = pending.1.max(upto);
                }
            }
            // The snapshots just written let their documents leave memory.
            core.replica.evict_over_limit();
        }
        if let Some(checkpoint) = checkpoint {
            self.checkpoint_vv = checkpoint;
            let phase = self.phase.take().expect("in progress");
            self.last_checkpoint = Instant::now();
            self.shared.metrics.checkpoint_latency.observe(phase.started.elapsed());
            tracing::debug!(snapshots = phase.snapshots, "checkpoint");
        }
        // The records received above are committed; make them visible too.
        let Received { local, local_sent, remote, snapshots: transfers } = received;
        self.observe_storage_stage(&local_sent);
        self.publish(local, remote)?;
        for (docs, covers) in transfers {
            self.install_snapshot(docs, covers)?;
        }
        Ok(())
    }

    /// Records the storage stage of the local writes just committed: from
    /// the writer's hand-off to now.
    fn observe_storage_stage(&self, local_sent: &[(Instant, u64)]) {
        let stage = &self.shared.metrics.write_stage_storage;
        for (sent, count) in local_sent {
            stage.observe_n(sent.elapsed(), *count);
        }
    }

    /// The next chunk of [`StorageWorker::truncating`]: up to
    /// [`TRUNCATE_PER_COMMIT`] sequence numbers, as (origin, delete up to).
    fn truncation_chunk(&self) -> Vec<(NodeId, u64)> {
        let mut budget = TRUNCATE_PER_COMMIT;
        let mut chunk = Vec::new();
        for (&origin, &(done, target)) in &self.truncating {
            if budget == 0 {
                break;
            }
            let upto = target.min(done.saturating_add(budget));
            budget -= upto - done;
            chunk.push((origin, upto));
        }
        chunk
    }

    /// Deletes from memory what a commit just deleted from disk.
    fn truncated(&mut self, chunk: &[(NodeId, u64)]) {
        if chunk.is_empty() {
            return;
        }
        let mut core = lock(&self.shared);
        for &(origin, upto) in chunk {
            core.replica.log_mut().truncate(origin, upto);
            if let Some(pending) = self.truncating.get_mut(&origin) {
                pending.0 = pending.0.max(upto);
                if pending.0 >= pending.1 {
                    self.truncating.remove(&origin);
                }
            }
        }
    }

    /// Tells the replica which snapshots are now durable, so the document
    /// cache may evict those documents if they have not changed since.
    fn mark_persisted(&self, persisted: Vec<(DocId, u64)>) {
        let mut core = lock(&self.shared);
        for (id, generation) in persisted {
            core.replica.mark_persisted(&id, generation);
        }
    }

    /// Makes already-committed records visible (gossip push, remote apply).
    fn publish(&mut self, local: Vec<ChangeRecord>, remote: Vec<ChangeRecord>) -> Result<(), ()> {
        if local.is_empty() && remote.is_empty() {
            return Ok(());
        }
        let remote_count = remote.len() as u64;
        let now = Instant::now();
        let mut core = lock(&self.shared);
        if !remote.is_empty() {
            for record in &remote {
                self.shared.observe(&mut core, record.meta.hlc);
            }
            let before = core.applied_prefixes();
            let outcome = core.replica.apply_records(remote);
            core.note_applied(&before);
            self.shared.metrics.note_remote(&outcome, remote_count);
        }
        if let Some(gossip) = core.gossip.as_mut() {
            if !local.is_empty() {
                gossip.handle_local_records(now, &local);
            }
        }
        drop(core);
        self.shared.bump();
        if let Some(wake) = self.shared.wake.get() {
            wake.notify_one();
        }
        Ok(())
    }
}

/// The node as the router sees it while the process starts: not ready until
/// recovery finishes, then the [`NodeRuntime`].
pub struct NodeHandle {
    runtime: OnceLock<Arc<NodeRuntime>>,
    stopping: watch::Sender<bool>,
}

impl Default for NodeHandle {
    fn default() -> Self {
        NodeHandle { runtime: OnceLock::new(), stopping: watch::channel(false).0 }
    }
}

impl NodeHandle {
    /// Installs the recovered runtime.
    pub fn set(&self, runtime: Arc<NodeRuntime>) {
        let _ = self.runtime.set(runtime);
    }

    /// The runtime, once recovered.
    pub fn runtime(&self) -> Option<&Arc<NodeRuntime>> {
        self.runtime.get()
    }

    /// Marks the node as stopping (readiness turns false).
    pub fn set_stopping(&self) {
        self.stopping.send_replace(true);
    }

    fn get(&self) -> Result<&Arc<NodeRuntime>, NodeError> {
        self.runtime.get().ok_or_else(|| {
            NodeError::Unavailable("the node is starting: recovery from storage is still running".into())
        })
    }
}

impl Node for NodeHandle {
    async fn write(&self, id: DocId, op: WriteOp, if_match: Option<String>) -> Result<WriteAck, NodeError> {
        self.get()?.write_inner(id, op, if_match).await
    }

    async fn read(&self, id: DocId, options: ReadOptions) -> Result<DocRead, NodeError> {
        self.get()?.read_inner(id, options).await
    }

    fn receipt(&self, token: Token) -> Result<Json, NodeError> {
        self.get()?.receipt(token)
    }

    fn conflicts(&self, id: DocId) -> Result<Option<Json>, NodeError> {
        self.get()?.conflicts(id)
    }

    fn history(&self, id: DocId) -> Result<Option<Json>, NodeError> {
        self.get()?.history(id)
    }

    fn subscribe_feed(&self) -> Result<(tokio::sync::broadcast::Receiver<FeedEvent>, u64), NodeError> {
        self.get()?.subscribe_feed()
    }

    fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    async fn feed_after(&self, after: u64, limit: usize) -> Result<Vec<FeedEvent>, NodeError> {
        self.get()?.feed_after(after, limit).await
    }

    fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<DocId>, NodeError> {
        self.get()?.list(prefix, after, limit)
    }

    fn ready(&self) -> bool {
        !*self.stopping.borrow() && self.runtime.get().is_some_and(|rt| rt.ready())
    }

    fn render_metrics(&self, out: &mut String) {
        if let Some(runtime) = self.runtime.get() {
            runtime.render_metrics(out);
        }
    }

    fn cluster(&self) -> Result<Json, NodeError> {
        self.get()?.cluster()
    }

    fn faults(&self) -> Result<Json, NodeError> {
        self.get()?.faults()
    }

    fn set_fault(&self, spec: FaultSpec) -> Result<Json, NodeError> {
        self.get()?.set_fault(spec)
    }

    fn clear_faults(&self) -> Result<Json, NodeError> {
        self.get()?.clear_faults()
    }

    fn decommission(&self, member: &str) -> Result<Json, NodeError> {
        self.get()?.decommission(member)
    }

    async fn backup(&self) -> Result<Vec<u8>, NodeError> {
        self.get()?.backup().await
    }
}
