//! The node runtime: owns the replica, the real clock and the storage thread,
//! and implements the web layer's [`Node`] trait.
//!
//! ```text
//!  HTTP write ──► lock replica ─► clock.now() ─► replica.local_write ─► send record (ticket n)
//!                                                                          │ (same lock: channel
//!                                                                          ▼  order = seq order)
//!                  ◄── durable watch (seq ≥ mine) ◄── fsync ◄── storage thread: drain channel,
//!  HTTP 200/201                                                 one redb commit per batch
//! ```
//!
//! **Group commit.** The storage thread takes every record waiting in the
//! channel (up to a bound) and commits them in one fsynced transaction, so
//! concurrent writes share fsyncs.
//!
//! **Durable-only reads.** A change is applied in memory before it is
//! durable, so a reader snapshots the document, then waits until the last
//! local change in it is durable before answering. Nobody sees a change a
//! crash could still take back (its sequence number would be reused).
//!
//! **Checkpoints.** Periodically the storage thread snapshots dirty
//! documents. Order matters (see [`StorageWorker::checkpoint`]): it first
//! commits every record up to a ticket, then snapshots, then truncates the
//! log only below that ticket's vector, so a truncated change is always in a
//! snapshot.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hybrid_clocks::{Clock, WallNS};
use meridian_crdt::{ChangeRecord, DocId, Document, Hlc, NodeId, Replica, Token, WriteOp};
use meridian_web::metrics::{header, Histogram};
use meridian_web::{DocRead, Node, NodeError, WriteAck};
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::storage::{Batch, StorageError, Store};

/// Most records in one storage commit.
pub const BATCH_RECORDS_MAX: usize = 4096;
/// Most change bytes in one storage commit.
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// Most writes waiting for durability at once; more are refused with 503.
pub const WRITES_IN_FLIGHT_MAX: usize = 8192;
/// A checkpoint is also forced when this many documents are dirty.
pub const DIRTY_DOCS_MAX: usize = 50_000;

/// What the storage thread has made durable, published to waiters.
#[derive(Clone, Debug, Default)]
struct Durable {
    /// Highest ticket committed (tickets number every record sent to storage).
    ticket: u64,
    /// Highest local sequence number committed.
    local_seq: u64,
    /// Set when storage failed: the node cannot go on.
    failed: Option<Arc<str>>,
}

enum StorageMsg {
    Append { ticket: u64, record: ChangeRecord },
    Shutdown,
}

/// The replica and the count of records sent to storage, under one lock so
/// the channel sees records in the order they were applied.
struct Core {
    replica: Replica,
    tickets_sent: u64,
    clock: Clock<WallNS>,
}

/// Node-level metrics (the HTTP ones live in the web crate).
#[derive(Default)]
struct NodeMetrics {
    write_latency: Histogram,
    fsync_latency: Histogram,
    checkpoint_latency: Histogram,
    storage_commits: AtomicU64,
    storage_records: AtomicU64,
    recovery_ms: AtomicU64,
}

struct Shared {
    core: Mutex<Core>,
    metrics: NodeMetrics,
}

fn lock(shared: &Shared) -> MutexGuard<'_, Core> {
    // A panic while holding the lock cannot leave the replica half-written in
    // a way a later reader could observe as valid JSON; keep serving.
    shared
        .core
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running node: replica, clock, storage thread.
pub struct NodeRuntime {
    node_id: NodeId,
    region: String,
    shared: Arc<Shared>,
    storage_tx: Mutex<Option<mpsc::Sender<StorageMsg>>>,
    durable: watch::Receiver<Durable>,
    storage_thread: Mutex<Option<JoinHandle<()>>>,
    write_slots: Semaphore,
}

impl NodeRuntime {
    /// Opens storage, recovers every durable change, and starts the storage thread.
    pub fn open(config: &Config) -> Result<NodeRuntime, StorageError> {
        let started = Instant::now();
        let (store, recovered) = Store::open(&config.data_dir, &config.region)?;
        let mut replica = Replica::new(recovered.node_id);
        for (id, bytes) in recovered.snapshots {
            let doc = Document::load(&bytes).map_err(|err| StorageError::Corrupt {
                path: store.path().to_path_buf(),
                what: format!(
                    "snapshot of document {:?} does not load: {err}",
                    id.as_str()
                ),
            })?;
            replica.insert_document(id, doc);
        }
        replica.restore_version_vector(&recovered.checkpoint);
        let dirty: HashSet<DocId> = recovered.log.iter().map(|r| r.doc.clone()).collect();
        let log_len = recovered.log.len();
        let outcome = replica.apply_records(recovered.log);
        if let Some((origin, seq, reason)) = outcome.rejected.first() {
            return Err(StorageError::Corrupt {
                path: store.path().to_path_buf(),
                what: format!("log record ({origin}, {seq}) does not apply: {reason}"),
            });
        }
        let mut clock = Clock::wall_ns().map_err(|err| StorageError::Io {
            path: store.path().to_path_buf(),
            detail: format!("reading the clock: {err}"),
        })?;
        // The HLC never goes below anything persisted, even if the wall clock stepped back.
        clock.observe(&recovered.hlc_high.inner());
        let local_seq = replica.last_seq();
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                replica,
                tickets_sent: 0,
                clock,
            }),
            metrics: NodeMetrics::default(),
        });
        shared
            .metrics
            .recovery_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let (durable_tx, durable_rx) = watch::channel(Durable {
            ticket: 0,
            local_seq,
            failed: None,
        });
        let (storage_tx, storage_rx) = mpsc::channel();
        let worker = StorageWorker {
            store,
            rx: storage_rx,
            durable: durable_tx,
            shared: shared.clone(),
            dirty,
            committed_ticket: 0,
            committed_local_seq: local_seq,
            last_checkpoint: Instant::now(),
            checkpoint_interval: config.checkpoint_interval,
            shutdown_requested: false,
        };
        let thread = std::thread::Builder::new()
            .name("meridian-storage".into())
            .spawn(move || worker.run())
            .map_err(|err| StorageError::Io {
                path: config.data_dir.clone(),
                detail: format!("starting the storage thread: {err}"),
            })?;
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
            storage_tx: Mutex::new(Some(storage_tx)),
            durable: durable_rx,
            storage_thread: Mutex::new(Some(thread)),
            write_slots: Semaphore::new(WRITES_IN_FLIGHT_MAX),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Stops the storage thread after committing everything sent to it and
    /// writing a final checkpoint. Blocks until done.
    pub fn shutdown(&self) {
        if let Some(tx) = self
            .storage_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = tx.send(StorageMsg::Shutdown);
        }
        if let Some(thread) = self
            .storage_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = thread.join();
        }
    }

    fn unavailable(&self) -> Option<NodeError> {
        self.durable.borrow().failed.as_ref().map(|reason| {
            NodeError::Unavailable(format!(
                "storage failed, the node cannot accept work: {reason}"
            ))
        })
    }

    /// Waits until local sequence number `seq` is durable.
    async fn wait_durable(&self, seq: u64) -> Result<(), NodeError> {
        let mut rx = self.durable.clone();
        let state = rx
            .wait_for(|d| d.local_seq >= seq || d.failed.is_some())
            .await
            .map_err(|_| NodeError::Unavailable("the node is shutting down".into()))?
            .clone();
        match state.failed {
            Some(reason) if state.local_seq < seq => Err(NodeError::Unavailable(format!(
                "storage failed before the write was durable: {reason}"
            ))),
            _ => Ok(()),
        }
    }

    async fn write_inner(
        &self,
        id: DocId,
        op: WriteOp,
        if_match: Option<String>,
    ) -> Result<WriteAck, NodeError> {
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        let _slot = self.write_slots.try_acquire().map_err(|_| {
            NodeError::Unavailable(format!(
                "more than {WRITES_IN_FLIGHT_MAX} writes are waiting for disk; retry shortly"
            ))
        })?;
        let started = Instant::now();
        let receipt = {
            let mut core = lock(&self.shared);
            let hlc: Hlc = core
                .clock
                .now()
                .map_err(|err| NodeError::Unavailable(format!("cannot read the clock: {err}")))?
                .into();
            let receipt = core
                .replica
                .local_write(&id, &op, hlc, if_match.as_deref())?;
            core.tickets_sent += 1;
            let ticket = core.tickets_sent;
            // Sent under the lock, so the storage thread sees records in sequence order.
            let sent = self
                .storage_tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|tx| {
                    tx.send(StorageMsg::Append {
                        ticket,
                        record: receipt.record.clone(),
                    })
                    .is_ok()
                })
                .unwrap_or(false);
            if !sent {
                return Err(NodeError::Unavailable("the node is shutting down".into()));
            }
            receipt
        };
        let meta = receipt.record.meta;
        self.wait_durable(meta.seq).await?;
        self.shared.metrics.write_latency.observe(started.elapsed());
        Ok(WriteAck {
            id,
            token: Token::of_change(meta.origin, meta.seq),
            hlc: meta.hlc,
            created: receipt.created,
            etag: receipt.etag,
        })
    }

    async fn read_inner(&self, id: DocId) -> Result<Option<DocRead>, NodeError> {
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        let (json, etag, last_local, token) = {
            let core = lock(&self.shared);
            let Some(state) = core.replica.document(&id) else {
                return Ok(None);
            };
            let durable = self.durable.borrow().local_seq;
            let vv = core.replica.version_vector();
            let mut token = Token::default();
            for origin in vv.origins() {
                let mut seq = vv.contiguous(origin);
                if origin == self.node_id {
                    seq = seq.min(durable.max(state.last_local_seq));
                }
                if seq > 0 {
                    token.entries.insert(origin, seq);
                }
            }
            (
                state.doc.to_json(),
                state.doc.etag(),
                state.last_local_seq,
                token,
            )
        };
        // The snapshot may hold local changes not yet durable: answer only once they are.
        self.wait_durable(last_local).await?;
        Ok(json.map(|json| DocRead { json, etag, token }))
    }
}

impl Node for NodeRuntime {
    fn write(
        &self,
        id: DocId,
        op: WriteOp,
        if_match: Option<String>,
    ) -> impl std::future::Future<Output = Result<WriteAck, NodeError>> + Send {
        self.write_inner(id, op, if_match)
    }

    fn read(
        &self,
        id: DocId,
    ) -> impl std::future::Future<Output = Result<Option<DocRead>, NodeError>> + Send {
        self.read_inner(id)
    }

    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocId>, NodeError> {
        if let Some(err) = self.unavailable() {
            return Err(err);
        }
        Ok(lock(&self.shared).replica.list(prefix, after, limit))
    }

    fn ready(&self) -> bool {
        self.durable.borrow().failed.is_none()
    }

    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let (documents, log_entries, log_bytes, last_seq) = {
            let core = lock(&self.shared);
            (
                core.replica.live_count(),
                core.replica.log().len(),
                core.replica.log().change_bytes(),
                core.replica.last_seq(),
            )
        };
        let durable = self.durable.borrow().clone();
        let m = &self.shared.metrics;
        let region = meridian_web::metrics::escape_label(&self.region);
        header(
            out,
            "meridian_node_info",
            "gauge",
            "Constant 1, labelled with this node's id and region.",
        );
        let _ = writeln!(
            out,
            "meridian_node_info{{node_id=\"{}\",region=\"{region}\"}} 1",
            self.node_id
        );
        header(
            out,
            "meridian_documents",
            "gauge",
            "Documents that currently exist on this node.",
        );
        let _ = writeln!(out, "meridian_documents {documents}");
        header(
            out,
            "meridian_log_entries",
            "gauge",
            "Change records held in the log.",
        );
        let _ = writeln!(out, "meridian_log_entries {log_entries}");
        header(
            out,
            "meridian_log_bytes",
            "gauge",
            "Automerge change bytes held in the log.",
        );
        let _ = writeln!(out, "meridian_log_bytes {log_bytes}");
        header(
            out,
            "meridian_local_sequence",
            "gauge",
            "Last sequence number given to a local write.",
        );
        let _ = writeln!(out, "meridian_local_sequence {last_seq}");
        header(
            out,
            "meridian_durable_sequence",
            "gauge",
            "Last local sequence number known durable.",
        );
        let _ = writeln!(out, "meridian_durable_sequence {}", durable.local_seq);
        header(
            out,
            "meridian_storage_failed",
            "gauge",
            "1 if storage failed and the node refuses work.",
        );
        let _ = writeln!(
            out,
            "meridian_storage_failed {}",
            u8::from(durable.failed.is_some())
        );
        header(
            out,
            "meridian_storage_commits_total",
            "counter",
            "Durable storage commits (each one fsync).",
        );
        let _ = writeln!(
            out,
            "meridian_storage_commits_total {}",
            m.storage_commits.load(Ordering::Relaxed)
        );
        header(
            out,
            "meridian_storage_records_total",
            "counter",
            "Change records committed to storage.",
        );
        let _ = writeln!(
            out,
            "meridian_storage_records_total {}",
            m.storage_records.load(Ordering::Relaxed)
        );
        header(
            out,
            "meridian_recovery_milliseconds",
            "gauge",
            "Time the last start spent recovering from storage.",
        );
        let _ = writeln!(
            out,
            "meridian_recovery_milliseconds {}",
            m.recovery_ms.load(Ordering::Relaxed)
        );
        header(
            out,
            "meridian_write_duration_seconds",
            "histogram",
            "Local write latency, from apply to durable.",
        );
        m.write_latency
            .render(out, "meridian_write_duration_seconds", "");
        header(
            out,
            "meridian_fsync_duration_seconds",
            "histogram",
            "Storage commit (fsync) latency.",
        );
        m.fsync_latency
            .render(out, "meridian_fsync_duration_seconds", "");
        header(
            out,
            "meridian_checkpoint_duration_seconds",
            "histogram",
            "Time to snapshot dirty documents and commit a checkpoint.",
        );
        m.checkpoint_latency
            .render(out, "meridian_checkpoint_duration_seconds", "");
    }
}

/// The storage thread's state.
struct StorageWorker {
    store: Store,
    rx: mpsc::Receiver<StorageMsg>,
    durable: watch::Sender<Durable>,
    shared: Arc<Shared>,
    dirty: HashSet<DocId>,
    committed_ticket: u64,
    committed_local_seq: u64,
    last_checkpoint: Instant,
    checkpoint_interval: Duration,
    shutdown_requested: bool,
}

impl StorageWorker {
    fn run(mut self) {
        loop {
            let wait = self
                .checkpoint_interval
                .saturating_sub(self.last_checkpoint.elapsed())
                .max(Duration::from_millis(1));
            let first = match self.rx.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.shutdown_requested = true;
                    None
                }
            };
            let mut records = Vec::new();
            let mut bytes = 0;
            let mut next = first;
            while let Some(msg) = next.take() {
                match msg {
                    StorageMsg::Append { ticket, record } => {
                        bytes += record.change_bytes();
                        self.note(ticket, &record);
                        records.push(record);
                    }
                    StorageMsg::Shutdown => self.shutdown_requested = true,
                }
                if records.len() < BATCH_RECORDS_MAX
                    && bytes < BATCH_BYTES_MAX
                    && !self.shutdown_requested
                {
                    next = self.rx.try_recv().ok();
                }
            }
            if !records.is_empty()
                && self
                    .commit(Batch {
                        records,
                        ..Batch::default()
                    })
                    .is_err()
            {
                return;
            }
            let due = !self.dirty.is_empty()
                && (self.last_checkpoint.elapsed() >= self.checkpoint_interval
                    || self.dirty.len() >= DIRTY_DOCS_MAX);
            if (due || self.shutdown_requested) && self.checkpoint().is_err() {
                return;
            }
            if self.shutdown_requested {
                return;
            }
        }
    }

    /// Books a record received from the channel.
    fn note(&mut self, ticket: u64, record: &ChangeRecord) {
        self.dirty.insert(record.doc.clone());
        self.committed_ticket = self.committed_ticket.max(ticket);
    }

    /// Commits a batch and publishes what became durable; on failure marks
    /// the node failed (every later request gets 503).
    fn commit(&mut self, batch: Batch) -> Result<(), ()> {
        let started = Instant::now();
        let node = lock(&self.shared).replica.node();
        let local_max = batch
            .records
            .iter()
            .filter(|r| r.meta.origin == node)
            .map(|r| r.meta.seq)
            .max();
        let count = batch.records.len() as u64;
        match self.store.commit(&batch) {
            Ok(()) => {
                let metrics = &self.shared.metrics;
                metrics.fsync_latency.observe(started.elapsed());
                metrics.storage_commits.fetch_add(1, Ordering::Relaxed);
                metrics.storage_records.fetch_add(count, Ordering::Relaxed);
                if let Some(seq) = local_max {
                    self.committed_local_seq = self.committed_local_seq.max(seq);
                }
                let (ticket, local_seq) = (self.committed_ticket, self.committed_local_seq);
                self.durable.send_modify(|d| {
                    d.ticket = ticket;
                    d.local_seq = local_seq;
                });
                Ok(())
            }
            Err(err) => {
                tracing::error!(cause = %err, "storage commit failed; the node stops accepting work");
                let reason: Arc<str> = err.to_string().into();
                self.durable.send_modify(|d| d.failed = Some(reason));
                Err(())
            }
        }
    }

    /// Receives (without committing) every record up to `ticket`.
    fn drain_until(&mut self, ticket: u64, into: &mut Vec<ChangeRecord>) {
        while self.committed_ticket < ticket {
            match self.rx.recv() {
                Ok(StorageMsg::Append { ticket, record }) => {
                    self.note(ticket, &record);
                    into.push(record);
                }
                Ok(StorageMsg::Shutdown) => self.shutdown_requested = true,
                Err(_) => return,
            }
        }
    }

    /// Snapshots every dirty document and records what the snapshots cover.
    ///
    /// 1. Read the vector `V` and ticket `T` under the lock, then receive every
    ///    record up to `T`: now every change in `V` has its document marked dirty.
    /// 2. Snapshot the dirty documents (each holds at least its changes in `V`).
    /// 3. Read the ticket again and receive records up to it: any change inside a
    ///    snapshot is then in this commit's log records too, so a snapshot never
    ///    holds a change whose sequence number a crash could reuse.
    /// 4. Commit records, snapshots and checkpoint `V` atomically; drop from the
    ///    log what `V` covers (single node: no peer needs the log).
    fn checkpoint(&mut self) -> Result<(), ()> {
        let started = Instant::now();
        let (covered, ticket_before, node) = {
            let core = lock(&self.shared);
            (
                core.replica.version_vector().clone(),
                core.tickets_sent,
                core.replica.node(),
            )
        };
        let mut records = Vec::new();
        self.drain_until(ticket_before, &mut records);
        let ids: Vec<DocId> = self.dirty.drain().collect();
        let mut snapshots = Vec::with_capacity(ids.len());
        for id in ids {
            // One document per lock hold, so writers are never stalled for long.
            let core = lock(&self.shared);
            if let Some(state) = core.replica.document(&id) {
                snapshots.push((id, state.doc.save()));
            }
        }
        let ticket_after = lock(&self.shared).tickets_sent;
        self.drain_until(ticket_after, &mut records);
        let truncate_upto = covered.contiguous(node);
        let batch = Batch {
            records,
            snapshots,
            checkpoint: Some(covered),
            truncate: vec![(node, truncate_upto)],
        };
        let snapshot_count = batch.snapshots.len();
        self.commit(batch)?;
        lock(&self.shared)
            .replica
            .log_mut()
            .truncate(node, truncate_upto);
        self.last_checkpoint = Instant::now();
        self.shared
            .metrics
            .checkpoint_latency
            .observe(started.elapsed());
        tracing::debug!(
            snapshots = snapshot_count,
            truncated_upto = truncate_upto,
            "checkpoint"
        );
        Ok(())
    }
}

/// The node as the router sees it while the process starts: not ready until
/// recovery finishes, then the [`NodeRuntime`].
#[derive(Default)]
pub struct NodeHandle {
    runtime: OnceLock<Arc<NodeRuntime>>,
    stopping: AtomicBool,
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
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn get(&self) -> Result<&Arc<NodeRuntime>, NodeError> {
        self.runtime.get().ok_or_else(|| {
            NodeError::Unavailable(
                "the node is starting: recovery from storage is still running".into(),
            )
        })
    }
}

impl Node for NodeHandle {
    async fn write(
        &self,
        id: DocId,
        op: WriteOp,
        if_match: Option<String>,
    ) -> Result<WriteAck, NodeError> {
        self.get()?.write_inner(id, op, if_match).await
    }

    async fn read(&self, id: DocId) -> Result<Option<DocRead>, NodeError> {
        self.get()?.read_inner(id).await
    }

    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DocId>, NodeError> {
        self.get()?.list(prefix, after, limit)
    }

    fn ready(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed) && self.runtime.get().is_some_and(|rt| rt.ready())
    }

    fn render_metrics(&self, out: &mut String) {
        if let Some(runtime) = self.runtime.get() {
            runtime.render_metrics(out);
        }
    }
}
