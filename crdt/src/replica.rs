//! A replica: every document a node holds, plus its version vector and change
//! log. A pure state machine: the caller supplies timestamps, persists the
//! records it gets back, and decides when they are durable.
//!
//! Local writes get the next per-origin sequence number here, in the order
//! they are applied, so sequence order equals commit order equals HLC order
//! at the origin (the caller holds one lock around `local_write`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::Change;
use serde_json::{Map, Value as Json};

use crate::change::{ChangeMeta, ChangeRecord};
use crate::document::{Document, DocumentError};
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
}

/// A document's digest term: its id and heads mixed into 32 bytes. Not a
/// cryptographic hash; it only has to make accidental equality between
/// different states vanishingly unlikely.
fn digest_term(id: &DocId, heads: &[automerge::ChangeHash]) -> [u8; 32] {
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
}

/// Every document of one node, with its version vector and log.
#[derive(Debug)]
pub struct Replica {
    node: NodeId,
    docs: HashMap<DocId, DocState>,
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
    /// Records held but not applied: automerge waits for a dependency.
    pending: BTreeMap<(NodeId, u64), (DocId, Vec<automerge::ChangeHash>)>,
}

impl Replica {
    /// An empty replica for `node`.
    pub fn new(node: NodeId) -> Replica {
        Replica {
            node,
            docs: HashMap::new(),
            live_ids: BTreeSet::new(),
            all_ids: BTreeSet::new(),
            vv: VersionVector::new(),
            log: ChangeLog::new(),
            last_seq: 0,
            digest: [0; 32],
            applied: VersionVector::new(),
            pending: BTreeMap::new(),
        }
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
        let new_entry = !self.docs.contains_key(id);
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
        let existed = state.doc.exists();
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
        let etag = state.doc.etag();
        let exists = state.doc.exists();
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
        let touched: Vec<DocId> = per_doc.keys().cloned().collect();
        for (id, changes) in per_doc {
            let state = Self::doc_entry(&mut self.docs, &mut self.all_ids, &id);
            if state.doc.apply_changes(changes).is_err() {
                // One bad change must not take the good ones with it: retry
                // this document's records one by one, refusing only those that fail.
                let mut refused = Vec::new();
                for (record, _) in accepted.iter().filter(|(r, _)| r.doc == id) {
                    let one: Result<Vec<Change>, _> =
                        record.changes.iter().map(|b| Change::from_bytes(b.clone())).collect();
                    let applied = match one {
                        Ok(changes) => state.doc.apply_changes(changes).map_err(|e| e.to_string()),
                        Err(err) => Err(err.to_string()),
                    };
                    if let Err(err) = applied {
                        refused.push((record.meta.origin, record.meta.seq, err));
                    }
                }
                accepted.retain(|(r, _)| !refused.iter().any(|(o, s, _)| r.meta.origin == *o && r.meta.seq == *s));
                outcome.rejected.extend(refused);
            }
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
            // Received is not applied: automerge holds back a change whose
            // dependencies are missing; it counts as applied once it is in.
            self.pending.insert((origin, seq), (record.doc.clone(), hashes));
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
        let Some(state) = self.docs.get(id) else { return };
        let settled: Vec<(NodeId, u64)> = self
            .pending
            .iter()
            .filter(|(_, (doc, hashes))| doc == id && hashes.iter().all(|h| state.doc.has_change(h)))
            .map(|(key, _)| *key)
            .collect();
        for (origin, seq) in settled {
            self.pending.remove(&(origin, seq));
            self.applied.insert(origin, seq);
        }
    }

    /// Which changes are applied: visible to reads. Differs from
    /// [`Replica::version_vector`] while automerge holds changes back.
    pub fn applied_version_vector(&self) -> &VersionVector {
        &self.applied
    }

    /// Records held but not yet applied (waiting for a dependency).
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Installs a document loaded from a snapshot (recovery, state transfer).
    pub fn insert_document(&mut self, id: DocId, doc: Document) {
        self.all_ids.insert(id.as_str().to_string());
        let exists = doc.exists();
        let max_hlc = doc.max_hlc();
        self.docs.insert(id.clone(), DocState { doc, last_local_seq: 0, digest_term: [0; 32], max_hlc });
        self.track_existence(&id, exists);
    }

    /// Merges a document received by state transfer into ours (automerge
    /// merge: idempotent, order-independent).
    pub fn merge_document(&mut self, id: DocId, mut other: Document) -> Result<(), DocumentError> {
        match self.docs.get_mut(&id) {
            Some(state) => {
                state.max_hlc = state.max_hlc.max(other.max_hlc());
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
        self.pending.retain(|(origin, seq), _| !vv.contains(*origin, *seq));
        self.last_seq = self.last_seq.max(self.vv.max(self.node));
    }

    /// A document's state, whether or not it currently exists.
    pub fn document(&self, id: &DocId) -> Option<&DocState> {
        self.docs.get(id)
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
        self.docs.iter()
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
        docs: &'a mut HashMap<DocId, DocState>,
        all_ids: &mut BTreeSet<String>,
        id: &DocId,
    ) -> &'a mut DocState {
        if !all_ids.contains(id.as_str()) {
            all_ids.insert(id.as_str().to_string());
        }
        docs.entry(id.clone()).or_insert_with(|| DocState {
            doc: Document::new(),
            last_local_seq: 0,
            digest_term: [0; 32],
            max_hlc: Hlc::zero(),
        })
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
