//! A replica: every document a node holds, plus its version vector and change
//! log. A pure state machine: the caller supplies timestamps, persists the
//! records it gets back, and decides when they are durable.
//!
//! Local writes get the next per-origin sequence number here, in the order
//! they are applied, so sequence order equals commit order equals HLC order
//! at the origin (the caller holds one lock around `local_write`).
//!
//! **Document cache.** With [`Replica::set_cache`] the replica keeps at most
//! about `limit` automerge documents in memory; the others are *cold*: only
//! their [`ColdEntry`] stays, and the document is loaded back from the
//! caller's [`ColdStore`] on first use. Only a document whose current state
//! the caller confirmed as persisted ([`Replica::mark_persisted`]) and that
//! has no held-back change is evicted, so eviction never loses a change.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use automerge::Change;
use serde_json::{Map, Value as Json};

use crate::cache::{ColdEntry, ColdError, ColdStore};
use crate::change::{ChangeMeta, ChangeRecord};
use crate::document::{Document, DocumentError, RefusedChange};
use crate::hlc::Hlc;
use crate::ids::{DocId, NodeId};
use crate::log::ChangeLog;
use crate::patch::PatchOp;
use crate::vv::VersionVector;

/// A client write to one document.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Replace the document with this object (smallest edit).
    Put(Map<String, Json>),
    /// RFC 7396 merge patch.
    MergePatch(Json),
    /// RFC 6902 JSON Patch (with the `increment` extension).
    JsonPatch(Vec<PatchOp>),
    /// Delete the document.
    Delete,
}

/// What a successful local write produced.
#[derive(Clone, Debug)]
pub struct WriteReceipt {
    /// The record to persist and replicate.
    pub record: ChangeRecord,
    /// True when the write brought the document into existence.
    pub created: bool,
    /// The document's ETag after the write.
    pub etag: String,
}

/// Why a local write was refused. Nothing changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The document does not exist (DELETE of a missing document).
    #[error("document not found")]
    NotFound,
    /// `If-Match` did not match the document's current ETag.
    #[error("the document has changed: If-Match does not match its current ETag")]
    PreconditionFailed {
        /// The current ETag, if the document exists.
        current: Option<String>,
    },
    /// The document refused the edit.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The document is evicted and could not be loaded back.
    #[error(transparent)]
    Cold(#[from] ColdError),
}

/// Why a state-transfer document was not merged. Nothing changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// automerge refused the merge.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// Our copy is evicted and could not be loaded back.
    #[error(transparent)]
    Cold(#[from] ColdError),
}

/// What applying a batch of records did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Records new to this replica.
    pub applied: usize,
    /// Records already held (duplicates are normal under gossip).
    pub duplicates: usize,
    /// Records whose bytes did not decode, with the reason.
    pub rejected: Vec<(NodeId, u64, String)>,
    /// Records left unapplied (not even received) because their document is
    /// evicted and could not be loaded back; a later delivery retries them.
    pub unloadable: Vec<(NodeId, u64, ColdError)>,
    /// Records left unapplied (not even received) because a change of theirs
    /// would wait for a dependency and there is no room to hold it (see
    /// [`PENDING_MAX`] and [`crate::HELD_MAX`]); a later delivery retries them.
    pub deferred: Vec<(NodeId, u64)>,
}

/// Most records the replica holds received but not applied (waiting for a
/// dependency), over all documents. Each waits in memory, and keeps its
/// document resident, until its dependencies arrive; past this, records
/// that would wait too are deferred (see [`ApplyOutcome::deferred`]).
pub const PENDING_MAX: usize = 100_000;

/// A document's digest term: its id and heads mixed into 32 bytes. Not a
/// cryptographic hash; it only has to make accidental equality between
/// different states vanishingly unlikely.
pub(crate) fn digest_term(id: &DocId, heads: &[automerge::ChangeHash]) -> [u8; 32] {
    let heads = crate::document::heads_digest(heads);
    let mut out = [0u8; 32];
    for (lane, chunk) in out.chunks_mut(8).enumerate() {
        // FNV-1a over (lane, id, heads), one lane per 8 output bytes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (lane as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for &b in id.as_str().as_bytes().iter().chain([0xffu8].iter()).chain(heads.iter()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    out
}

/// One document and the last local sequence number that touched it (so a
/// reader can wait until that change is durable before seeing it).
#[derive(Debug)]
pub struct DocState {
    /// The document.
    pub doc: Document,
    /// Highest local sequence number applied to this document.
    pub last_local_seq: u64,
    /// This document's term in the replica digest.
    digest_term: [u8; 32],
    /// Highest HLC of any change applied to this document.
    pub max_hlc: Hlc,
    /// Bumped on every change to the document in memory.
    generation: u64,
    /// The generation last confirmed persisted; evictable when equal.
    persisted: Option<u64>,
    /// Replica tick of the last use, for least-recently-used eviction.
    last_used: u64,
}

impl DocState {
    fn new(doc: Document, max_hlc: Hlc, tick: u64) -> DocState {
        DocState {
            doc,
            last_local_seq: 0,
            digest_term: [0; 32],
            max_hlc,
            generation: 0,
            persisted: None,
            last_used: tick,
        }
    }

    /// The entry kept once this document is evicted.
    fn cold_entry(&self) -> ColdEntry {
        ColdEntry { digest_term: self.digest_term, max_hlc: self.max_hlc, exists: self.doc.exists() }
    }
}

/// The caller's store, behind a `Debug` the replica can derive.
#[derive(Clone)]
struct Store(Arc<dyn ColdStore>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ColdStore")
    }
}

/// A document saved for a peer or a backup.
#[derive(Debug)]
pub struct Saved {
    /// `Document::save` bytes.
    pub bytes: Vec<u8>,
    /// Highest local sequence number in it (0 for a cold document: it is persisted).
    pub last_local_seq: u64,
}

/// A resident document's state for a checkpoint.
#[derive(Debug)]
pub struct SnapshotOf {
    /// `Document::save` bytes.
    pub bytes: Vec<u8>,
    /// The row to store next to the snapshot.
    pub entry: ColdEntry,
    /// Pass to [`Replica::mark_persisted`] once the snapshot is durable.
    pub generation: u64,
}

/// A record received but not applied: its (origin, seq) and the hashes of
/// its changes, all of which must be in the document before it counts.
type PendingRecord = ((NodeId, u64), Vec<automerge::ChangeHash>);

/// Every document of one node, with its version vector and log.
#[derive(Debug)]
pub struct Replica {
    node: NodeId,
    /// Boxed: a `DocState` is nearly 4 KB (automerge's document inline), and
    /// every lookup probes entries; boxed, the table stays dense and a read
    /// touches only the one state it wants (profiled: an unboxed lookup was
    /// a cache miss per probe).
    docs: HashMap<DocId, Box<DocState>>,
    live_ids: BTreeSet<String>,
    /// Every document held, existing or deleted (deletes must travel in state transfer).
    all_ids: BTreeSet<String>,
    vv: VersionVector,
    log: ChangeLog,
    last_seq: u64,
    /// XOR over documents of `term(id, heads)`, kept up to date on every change.
    digest: [u8; 32],
    /// Records whose changes are all in their document (visible to reads).
    applied: VersionVector,
    /// Records held but not applied: the document holds back a change until its dependencies arrive.
    /// By document, so that settling one document's records (after every
    /// apply to it) looks at that document's only.
    pending: HashMap<DocId, Vec<PendingRecord>>,
    /// Records in `pending`.
    pending_len: usize,
    /// Most entries in `pending` ([`PENDING_MAX`] unless lowered).
    pending_max: usize,
    /// Evicted documents (never also in `docs`).
    cold: HashMap<DocId, ColdEntry>,
    /// Where evicted documents come back from; `None`: nothing is evicted.
    store: Option<Store>,
    /// Resident documents kept after an eviction pass.
    cache_limit: usize,
    /// Counts uses, for least-recently-used eviction.
    tick: u64,
    /// Cold documents loaded back, for metrics.
    cold_loads: u64,
}

impl Replica {
    /// An empty replica for `node`.
    pub fn new(node: NodeId) -> Replica {
        Replica {
            node,
            docs: HashMap::new(),
            live_ids: BTreeSet::new(),
            all_ids: BTreeSet::new(),
            pending_max: PENDING_MAX,
            vv: VersionVector::new(),
            log: ChangeLog::new(),
            last_seq: 0,
            digest: [0; 32],
            applied: VersionVector::new(),
            pending: HashMap::new(),
            pending_len: 0,
            cold: HashMap::new(),
            store: None,
            cache_limit: usize::MAX,
            tick: 0,
            cold_loads: 0,
        }
    }

    /// Bounds the documents kept in memory to about `limit` (at least 1);
    /// evicted ones come back from `store`. Without this nothing is evicted.
    pub fn set_cache(&mut self, store: Arc<dyn ColdStore>, limit: usize) {
        self.store = Some(Store(store));
        self.cache_limit = limit.max(1);
    }

    /// Registers a document known only by its stored entry (recovery): it
    /// starts cold and loads from the store on first use.
    pub fn restore_cold(&mut self, id: DocId, entry: ColdEntry) {
        self.all_ids.insert(id.as_str().to_string());
        if entry.exists {
            self.live_ids.insert(id.as_str().to_string());
        }
        for (d, t) in self.digest.iter_mut().zip(entry.digest_term) {
            *d ^= t;
        }
        if let Some(old) = self.docs.remove(&id) {
            for (d, t) in self.digest.iter_mut().zip(old.digest_term) {
                *d ^= t;
            }
        }
        if let Some(old) = self.cold.insert(id, entry) {
            for (d, t) in self.digest.iter_mut().zip(old.digest_term) {
                *d ^= t;
            }
        }
    }

    /// [`Replica::restore_cold`] for a whole store's index at once (recovery):
    /// the id sets are bulk-built, which matters at a million documents.
    pub fn restore_cold_all(&mut self, entries: Vec<(DocId, ColdEntry)>) {
        if !self.docs.is_empty() || !self.cold.is_empty() || !self.all_ids.is_empty() {
            for (id, entry) in entries {
                self.restore_cold(id, entry);
            }
            return;
        }
        self.all_ids = entries.iter().map(|(id, _)| id.as_str().to_string()).collect();
        self.live_ids = entries.iter().filter(|(_, e)| e.exists).map(|(id, _)| id.as_str().to_string()).collect();
        self.cold.reserve(entries.len());
        for (id, entry) in entries {
            for (d, t) in self.digest.iter_mut().zip(entry.digest_term) {
                *d ^= t;
            }
            self.cold.insert(id, entry);
        }
    }

    /// Loads `id` into memory if it is cold. `Ok(false)`: the replica has never held it.
    fn make_resident(&mut self, id: &DocId) -> Result<bool, ColdError> {
        self.tick += 1;
        if let Some(state) = self.docs.get_mut(id) {
            state.last_used = self.tick;
            return Ok(true);
        }
        self.load_cold(id)
    }

    /// [`Replica::make_resident`]'s slow path, kept out of line: loading a
    /// document needs kilobytes of stack, and inlined into the lookup every
    /// read of a resident document paid for probing that stack.
    #[cold]
    #[inline(never)]
    fn load_cold(&mut self, id: &DocId) -> Result<bool, ColdError> {
        let Some(entry) = self.cold.get(id).copied() else { return Ok(false) };
        let cold_error = |reason: String| ColdError { id: id.as_str().to_string(), reason };
        let store = self.store.as_ref().ok_or_else(|| cold_error("no document store is attached".into()))?;
        let bytes = store.0.load(id).map_err(cold_error)?.ok_or_else(|| cold_error("no snapshot is stored".into()))?;
        let doc = Document::load(&bytes).map_err(|err| cold_error(err.to_string()))?;
        // Make room first, so the document just loaded is never the one
        // evicted. Evicting an eighth below the limit at a time amortises the
        // pass's sort over many loads.
        if self.docs.len() >= self.cache_limit {
            self.evict_to(self.cache_limit.saturating_sub(1 + self.cache_limit / 8));
        }
        self.cold.remove(id);
        let mut state = Box::new(DocState::new(doc, entry.max_hlc, self.tick));
        state.persisted = Some(0);
        state.digest_term = entry.digest_term;
        self.docs.insert(id.clone(), state);
        // The stored entry and the snapshot were written together; should they
        // ever disagree, the digest follows the document actually loaded.
        self.refresh_digest(id);
        self.cold_loads += 1;
        Ok(true)
    }

    /// A document's state, loading it if it is cold: `Ok(None)` when the
    /// replica has never held it.
    pub fn resident(&mut self, id: &DocId) -> Result<Option<&DocState>, ColdError> {
        if !self.make_resident(id)? {
            return Ok(None);
        }
        Ok(self.docs.get(id).map(|state| &**state))
    }

    /// A document's saved bytes, without loading a cold one into memory (for
    /// state transfer and backups, which visit every document once).
    pub fn saved(&self, id: &DocId) -> Result<Option<Saved>, ColdError> {
        if let Some(state) = self.docs.get(id) {
            return Ok(Some(Saved { bytes: state.doc.save(), last_local_seq: state.last_local_seq }));
        }
        if !self.cold.contains_key(id) {
            return Ok(None);
        }
        let cold_error = |reason: String| ColdError { id: id.as_str().to_string(), reason };
        let store = self.store.as_ref().ok_or_else(|| cold_error("no document store is attached".into()))?;
        let bytes = store.0.load(id).map_err(cold_error)?.ok_or_else(|| cold_error("no snapshot is stored".into()))?;
        Ok(Some(Saved { bytes, last_local_seq: 0 }))
    }

    /// A resident document's snapshot for a checkpoint; `None` when it is
    /// cold (then it is persisted already) or unknown.
    pub fn snapshot_of(&self, id: &DocId) -> Option<SnapshotOf> {
        let state = self.docs.get(id)?;
        Some(SnapshotOf { bytes: state.doc.save(), entry: state.cold_entry(), generation: state.generation })
    }

    /// Records that the snapshot [`Replica::snapshot_of`] returned with
    /// `generation` is durable: the document may be evicted if it has not
    /// changed since.
    pub fn mark_persisted(&mut self, id: &DocId, generation: u64) {
        if let Some(state) = self.docs.get_mut(id) {
            if state.persisted.is_none_or(|p| p < generation) {
                state.persisted = Some(generation);
            }
        }
    }

    /// Evicts least-recently-used documents that are persisted and hold no
    /// held-back change until at most the cache limit stay resident (fewer
    /// go when too few qualify). Returns how many were evicted.
    pub fn evict_over_limit(&mut self) -> usize {
        self.evict_to(self.cache_limit)
    }

    fn evict_to(&mut self, target: usize) -> usize {
        if self.store.is_none() || self.docs.len() <= target {
            return 0;
        }
        let waiting: HashSet<&DocId> = self.pending.keys().collect();
        let mut candidates: Vec<(u64, DocId)> = self
            .docs
            .iter()
            .filter(|(id, s)| s.persisted == Some(s.generation) && !waiting.contains(id))
            .map(|(id, s)| (s.last_used, id.clone()))
            .collect();
        let excess = self.docs.len() - target;
        candidates.sort_unstable_by_key(|(used, _)| *used);
        candidates.truncate(excess);
        for (_, id) in &candidates {
            if let Some(state) = self.docs.remove(id) {
                self.cold.insert(id.clone(), state.cold_entry());
            }
        }
        candidates.len()
    }

    /// Documents in memory.
    pub fn resident_count(&self) -> usize {
        self.docs.len()
    }

    /// Documents held, existing or deleted, resident or cold.
    pub fn document_count(&self) -> usize {
        self.all_ids.len()
    }

    /// Cold documents loaded back since start.
    pub fn cold_loads(&self) -> u64 {
        self.cold_loads
    }

    /// This replica's node id (the origin of its local writes).
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The last sequence number given to a local write.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Makes a local write at `hlc`. On success the change is applied in
    /// memory and recorded in the log and version vector; the caller must
    /// persist `receipt.record` before acknowledging it.
    pub fn local_write(
        &mut self,
        id: &DocId,
        op: &WriteOp,
        hlc: Hlc,
        if_match: Option<&str>,
    ) -> Result<WriteReceipt, WriteError> {
        let new_entry = !self.make_resident(id)?;
        let result = self.local_write_inner(id, op, hlc, if_match);
        if result.is_err() && new_entry {
            // A refused write must leave nothing behind, not even an empty document.
            self.docs.remove(id);
            self.all_ids.remove(id.as_str());
        }
        result
    }

    fn local_write_inner(
        &mut self,
        id: &DocId,
        op: &WriteOp,
        hlc: Hlc,
        if_match: Option<&str>,
    ) -> Result<WriteReceipt, WriteError> {
        let state = Self::doc_entry(&mut self.docs, &mut self.all_ids, id);
        // From the id set every path keeps current (`track_existence`), not
        // from automerge: reading `live` there is a lookup in its op set, a
        // tenth of a small write's CPU counting the read after the write.
        let existed = self.live_ids.contains(id.as_str());
        debug_assert_eq!(existed, state.doc.exists(), "live_ids out of step with {id}");
        if let Some(expected) = if_match {
            let matches =
                existed && (expected.trim() == "*" || expected.split(',').any(|tag| tag.trim() == state.doc.etag()));
            if !matches {
                return Err(WriteError::PreconditionFailed { current: existed.then(|| state.doc.etag()) });
            }
        }
        // A change's HLC must exceed its dependencies' even when our clock
        // lags a peer (one beyond the maximum offset cannot move our clock):
        // snapshot reads rely on HLC order respecting causality.
        let hlc = hlc.max(state.max_hlc.successor());
        let meta = ChangeMeta { origin: self.node, seq: self.last_seq + 1, hlc };
        let changes = match op {
            WriteOp::Put(object) => state.doc.put(object, &meta)?,
            WriteOp::MergePatch(patch) => state.doc.merge_patch(patch, &meta)?,
            WriteOp::JsonPatch(ops) => state.doc.json_patch(ops, &meta)?,
            WriteOp::Delete => {
                if !existed {
                    return Err(WriteError::NotFound);
                }
                state.doc.delete(&meta)?
            }
        };
        self.last_seq = meta.seq;
        state.last_local_seq = meta.seq;
        state.max_hlc = meta.hlc;
        state.generation += 1;
        let etag = state.doc.etag();
        // A local change overwrites every value of `live` it sees, so the
        // document exists exactly when this change was not a delete.
        let exists = !matches!(op, WriteOp::Delete);
        debug_assert_eq!(exists, state.doc.exists(), "a local write left `live` ambiguous in {id}");
        let record = ChangeRecord {
            meta,
            doc: id.clone(),
            changes: changes.into_iter().map(|c| c.raw_bytes().to_vec()).collect(),
        };
        self.track_existence(id, exists);
        self.vv.insert(self.node, meta.seq);
        self.applied.insert(self.node, meta.seq);
        self.log.insert(record.clone());
        Ok(WriteReceipt { record, created: exists && !existed, etag })
    }

    /// Applies records (from peers, or from the local log during recovery)
    /// idempotently, batched per document: automerge's apply cost is per
    /// call, so each document gets one call however many records it has.
    pub fn apply_records(&mut self, records: Vec<ChangeRecord>) -> ApplyOutcome {
        let mut outcome = ApplyOutcome::default();
        let mut per_doc: BTreeMap<DocId, Vec<Change>> = BTreeMap::new();
        let mut accepted: Vec<(ChangeRecord, Vec<automerge::ChangeHash>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for record in records {
            let (origin, seq) = (record.meta.origin, record.meta.seq);
            if self.vv.contains(origin, seq) || !seen.insert((origin, seq)) {
                outcome.duplicates += 1;
                continue;
            }
            let decoded: Result<Vec<Change>, _> =
                record.changes.iter().map(|bytes| Change::from_bytes(bytes.clone())).collect();
            match decoded {
                Ok(changes) => {
                    let hashes = changes.iter().map(Change::hash).collect();
                    per_doc.entry(record.doc.clone()).or_default().extend(changes);
                    accepted.push((record, hashes));
                }
                Err(err) => outcome.rejected.push((origin, seq, err.to_string())),
            }
        }
        let mut touched: Vec<DocId> = Vec::with_capacity(per_doc.len());
        // Room left for changes to wait, over all documents.
        let mut pending_room = self.pending_max.saturating_sub(self.pending_len);
        for (id, changes) in per_doc {
            if let Err(err) = self.make_resident(&id) {
                // Not received at all: the vector shows the gap and a later delivery retries.
                accepted.retain(|(r, _)| {
                    let keep = r.doc != id;
                    if !keep {
                        outcome.unloadable.push((r.meta.origin, r.meta.seq, err.clone()));
                    }
                    keep
                });
                continue;
            }
            touched.push(id.clone());
            let state = Self::doc_entry(&mut self.docs, &mut self.all_ids, &id);
            state.generation += 1;
            let mut refused: Vec<(NodeId, u64, String)> = Vec::new();
            let mut refused_changes: Vec<RefusedChange> = Vec::new();
            let mut deferred_changes: Vec<automerge::ChangeHash> = Vec::new();
            let held_before = state.doc.held_count();
            let room = |doc: &Document| crate::HELD_MAX.saturating_sub(doc.held_count()).min(pending_room);
            match state.doc.apply_changes_within(changes, room(&state.doc)) {
                Ok(not) => (refused_changes, deferred_changes) = (not.refused, not.deferred),
                Err(_) => {
                    // One bad change must not take the good ones with it: retry
                    // this document's records one by one, refusing only those that fail.
                    for (record, _) in accepted.iter().filter(|(r, _)| r.doc == id) {
                        let one: Result<Vec<Change>, _> =
                            record.changes.iter().map(|b| Change::from_bytes(b.clone())).collect();
                        match one.map_err(|e| e.to_string()) {
                            Ok(changes) => match state.doc.apply_changes_within(changes, room(&state.doc)) {
                                Ok(not) => {
                                    refused_changes.extend(not.refused);
                                    deferred_changes.extend(not.deferred);
                                }
                                Err(err) => refused.push((record.meta.origin, record.meta.seq, err.to_string())),
                            },
                            Err(err) => refused.push((record.meta.origin, record.meta.seq, err)),
                        }
                    }
                }
            }
            // A record is refused with the first of its changes the document
            // refuses. A refused change held from an earlier call has no record
            // here: that record stays received but not applied, like one whose
            // dependency never arrives.
            for change in refused_changes {
                let owner = accepted.iter().find(|(r, hashes)| r.doc == id && hashes.contains(&change.hash));
                if let Some((record, _)) = owner {
                    let (origin, seq) = (record.meta.origin, record.meta.seq);
                    if !refused.iter().any(|(o, s, _)| (*o, *s) == (origin, seq)) {
                        refused.push((origin, seq, change.reason));
                    }
                }
            }
            accepted.retain(|(r, _)| !refused.iter().any(|(o, s, _)| r.meta.origin == *o && r.meta.seq == *s));
            outcome.rejected.extend(refused);
            // A record with a deferred change is not received at all (not
            // even its changes that did go in: a later delivery finds those
            // present and takes the rest).
            if !deferred_changes.is_empty() {
                let deferred: HashSet<automerge::ChangeHash> = deferred_changes.into_iter().collect();
                accepted.retain(|(r, hashes)| {
                    let keep = r.doc != id || !hashes.iter().any(|h| deferred.contains(h));
                    if !keep {
                        outcome.deferred.push((r.meta.origin, r.meta.seq));
                    }
                    keep
                });
            }
            pending_room = pending_room.saturating_sub(state.doc.held_count().saturating_sub(held_before));
            let exists = state.doc.exists();
            self.track_existence(&id, exists);
        }
        for (record, hashes) in accepted {
            let (origin, seq) = (record.meta.origin, record.meta.seq);
            if origin == self.node {
                self.last_seq = self.last_seq.max(seq);
                if let Some(state) = self.docs.get_mut(&record.doc) {
                    state.last_local_seq = state.last_local_seq.max(seq);
                }
            }
            if let Some(state) = self.docs.get_mut(&record.doc) {
                state.max_hlc = state.max_hlc.max(record.meta.hlc);
            }
            self.vv.insert(origin, seq);
            // Received is not applied: the document holds back a change whose
            // dependencies are missing; it counts as applied once it is in.
            self.pending.entry(record.doc.clone()).or_default().push(((origin, seq), hashes));
            self.pending_len += 1;
            self.log.insert(record);
            outcome.applied += 1;
        }
        for id in touched {
            self.settle_pending(&id);
        }
        outcome
    }

    /// Moves records of `id` whose changes are now all in the document from
    /// pending to applied.
    fn settle_pending(&mut self, id: &DocId) {
        let (Some(state), Some(records)) = (self.docs.get(id), self.pending.get_mut(id)) else { return };
        records.retain(|((origin, seq), hashes)| {
            let settled = hashes.iter().all(|h| state.doc.has_change(h));
            if settled {
                self.applied.insert(*origin, *seq);
                self.pending_len -= 1;
            }
            !settled
        });
        if records.is_empty() {
            self.pending.remove(id);
        }
    }

    /// Which changes are applied: visible to reads. Differs from
    /// [`Replica::version_vector`] while automerge holds changes back.
    pub fn applied_version_vector(&self) -> &VersionVector {
        &self.applied
    }

    /// Records held but not yet applied (waiting for a dependency).
    pub fn pending_count(&self) -> usize {
        self.pending_len
    }

    /// Lowers (or raises) the limit on records received but waiting for a
    /// dependency, [`PENDING_MAX`] by default; past it, such records are
    /// deferred (see [`ApplyOutcome::deferred`]).
    pub fn set_pending_max(&mut self, max: usize) {
        self.pending_max = max;
    }

    /// Installs a document loaded from a snapshot (recovery, state transfer).
    /// It stays resident until [`Replica::mark_persisted`] says it is stored.
    pub fn insert_document(&mut self, id: DocId, doc: Document) {
        self.tick += 1;
        if let Some(old) = self.cold.remove(&id) {
            // Replacing a cold entry: its term leaves the digest (refresh_digest
            // below only knows the resident term, which starts at zero).
            for (d, t) in self.digest.iter_mut().zip(old.digest_term) {
                *d ^= t;
            }
        }
        self.all_ids.insert(id.as_str().to_string());
        let exists = doc.exists();
        let max_hlc = doc.max_hlc();
        let mut state = Box::new(DocState::new(doc, max_hlc, self.tick));
        state.generation = 1;
        if let Some(old) = self.docs.insert(id.clone(), state) {
            for (d, t) in self.digest.iter_mut().zip(old.digest_term) {
                *d ^= t;
            }
        }
        self.track_existence(&id, exists);
    }

    /// Merges a document received by state transfer into ours (automerge
    /// merge: idempotent, order-independent).
    pub fn merge_document(&mut self, id: DocId, mut other: Document) -> Result<(), MergeError> {
        self.make_resident(&id)?;
        match self.docs.get_mut(&id) {
            Some(state) => {
                state.max_hlc = state.max_hlc.max(other.max_hlc());
                state.generation += 1;
                state.doc.merge(&mut other)?
            }
            None => {
                self.insert_document(id.clone(), other);
                return Ok(());
            }
        }
        let exists = self.docs.get(&id).is_some_and(|s| s.doc.exists());
        self.track_existence(&id, exists);
        self.settle_pending(&id);
        Ok(())
    }

    /// Every document id held (existing or deleted), in order, after `after`, at most `limit`.
    pub fn all_doc_ids(&self, after: Option<&str>, limit: usize) -> Vec<DocId> {
        use std::ops::Bound;
        let start = match after {
            Some(after) => Bound::Excluded(after.to_string()),
            None => Bound::Unbounded,
        };
        self.all_ids
            .range::<String, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|id| DocId::new(id).expect("stored ids are valid"))
            .collect()
    }

    /// Records that every change in `vv` is held (their documents came from
    /// snapshots), and that local sequence numbers continue after it.
    pub fn restore_version_vector(&mut self, vv: &VersionVector) {
        self.vv.merge(vv);
        // Snapshots hold their changes: they are applied, not just received.
        self.applied.merge(vv);
        for records in self.pending.values_mut() {
            records.retain(|((origin, seq), _)| !vv.contains(*origin, *seq));
        }
        self.pending.retain(|_, records| !records.is_empty());
        self.pending_len = self.pending.values().map(Vec::len).sum();
        self.last_seq = self.last_seq.max(self.vv.max(self.node));
    }

    /// A resident document's state, whether or not it currently exists;
    /// `None` for a cold document too (see [`Replica::resident`]).
    pub fn document(&self, id: &DocId) -> Option<&DocState> {
        self.docs.get(id).map(|state| &**state)
    }

    /// Ids of existing documents starting with `prefix`, after `after`, in
    /// order, at most `limit`. Ids sharing a prefix are contiguous in sorted
    /// order, so this is one range scan.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<DocId> {
        use std::ops::Bound;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        self.live_ids
            .range::<String, _>((start, Bound::Unbounded))
            .take_while(|id| id.starts_with(prefix))
            .take(limit)
            .map(|id| DocId::new(id).expect("stored ids are valid"))
            .collect()
    }

    /// Number of existing documents.
    pub fn live_count(&self) -> usize {
        self.live_ids.len()
    }

    /// Documents held in memory, existing or not.
    pub fn documents(&self) -> impl Iterator<Item = (&DocId, &DocState)> {
        self.docs.iter().map(|(id, state)| (id, &**state))
    }

    /// Which changes this replica holds.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// The change log.
    pub fn log(&self) -> &ChangeLog {
        &self.log
    }

    /// The change log, for truncation.
    pub fn log_mut(&mut self) -> &mut ChangeLog {
        &mut self.log
    }

    /// The entry for `id`, created (holding only the genesis change) if absent.
    /// Every path that creates a document goes through here, so `all_ids` stays complete.
    fn doc_entry<'a>(
        docs: &'a mut HashMap<DocId, Box<DocState>>,
        all_ids: &mut BTreeSet<String>,
        id: &DocId,
    ) -> &'a mut DocState {
        if !all_ids.contains(id.as_str()) {
            all_ids.insert(id.as_str().to_string());
        }
        docs.entry(id.clone()).or_insert_with(|| Box::new(DocState::new(Document::new(), Hlc::zero(), 0)))
    }

    /// Order-independent digest of every document's heads: equal digests
    /// (with equal vectors) mean equal states.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Replaces a document's term in the digest after its heads changed.
    fn refresh_digest(&mut self, id: &DocId) {
        let Some(state) = self.docs.get_mut(id) else { return };
        let term = digest_term(id, &state.doc.heads());
        for ((d, old), new) in self.digest.iter_mut().zip(state.digest_term).zip(term) {
            *d ^= old ^ new;
        }
        state.digest_term = term;
    }

    fn track_existence(&mut self, id: &DocId, exists: bool) {
        self.refresh_digest(id);
        if exists {
            if !self.live_ids.contains(id.as_str()) {
                self.live_ids.insert(id.as_str().to_string());
            }
        } else {
            self.live_ids.remove(id.as_str());
        }
    }
}
