//! One replicated JSON document: an automerge document plus Meridian's
//! conventions for existence, deletes and counters.
//!
//! # Layout inside automerge
//!
//! ```text
//! ROOT
//! ├── "data": Map   ← the user's JSON object (created by the shared genesis change)
//! └── "live"        ← a multi-value register: a write that leaves no key of
//!                     `data` holding a value of its own puts a value unique
//!                     to it ("<origin>:<seq>"), DELETE puts false
//! ```
//!
//! **Shared genesis.** Every replica starts each document from the same
//! deterministic change (fixed actor, time 0) that creates `data`. Two
//! regions creating the same document concurrently therefore edit the *same*
//! map and their fields merge, instead of two competing maps where one wins.
//!
//! **Deletes.** DELETE removes every field the deleting replica has seen and
//! writes `live = false`. A document exists while *any* concurrent value of
//! `live` is not false, or while a key of `data` holds a value a write put
//! (a counter's shared creation change does not count: it depends on the
//! genesis alone, so it is concurrent with every delete). So an update concurrent
//! with a delete wins: the document survives, holding the fields that update
//! wrote (fields only the deleter saw are gone). A write causally after a
//! delete recreates the document.
//!
//! Why a write may skip `live`: a write *W* that puts a value at a key of
//! `data` (an op of its own, in the same change as its `live` value would
//! be) has that value seen by exactly the deletes that would have seen its
//! `live` value. A delete that saw *W* removes the value (it removes every
//! field it sees), and one concurrent with *W* cannot, so `data` keeps a key
//! exactly when `live` would have kept *W*'s value. Every other write (only
//! nested edits, deletions, increments, or no change to `data`) puts `live`.
//! Existence is the same function of the history either way. (Builds before
//! this rule read `live` alone, so they would miss documents written by
//! later ones: gossip protocol version 3 refuses their peers.) A put of the value already
//! there makes no op of its own in automerge, so it does not count. Each
//! `live` value is unique for the same reason: a skipped put would not be
//! concurrent with a delete.
//!
//! **Counters.** `increment` on an absent member creates a counter there.
//! Creation is itself a deterministic change (fixed actor derived from the
//! parent object and key, depending only on the change that created the
//! parent), so two regions creating the same counter concurrently produce
//! the *identical* change and their increments add up. That creation change
//! travels with the write that needed it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, Automerge, AutomergeError, Change, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value as AmValue,
    ROOT,
};
use serde_json::{Map, Value as Json};

use crate::change::ChangeMeta;
use crate::hlc::Hlc;
use crate::json::{self, Memo, Memoized, Slot};
use crate::patch::{PatchOp, Pointer};

const GENESIS_ACTOR: &[u8] = b"meridian/genesis";
const GENESIS_MESSAGE: &str = "meridian genesis";
const COUNTER_MESSAGE: &str = "meridian counter";
const DATA_KEY: &str = "data";
const LIVE_KEY: &str = "live";

/// Most remote changes one document holds back waiting for a dependency.
/// Past it, a change that would wait too is deferred: not taken at all, so
/// its record stays out of the version vector and a peer sends it again
/// later, when its dependencies may be here. Changes already held are never
/// dropped to make room: their records count as received, and no peer would
/// send them again.
pub const HELD_MAX: usize = 10_000;

/// Why a write could not be applied. Nothing is changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// A JSON Patch operation failed; `conflict` tells a failed `test` or a
    /// path that does not fit the current state (409) from a patch that can
    /// never apply (422).
    #[error("operation {index} ({op} {path}): {reason}")]
    PatchFailed {
        /// Index of the failing operation.
        index: usize,
        /// The operation name.
        op: &'static str,
        /// Its path.
        path: String,
        /// What went wrong.
        reason: String,
        /// True for state-dependent failures (409), false for invalid ones (422).
        conflict: bool,
    },
    /// The result would not be a JSON object.
    #[error("{0}")]
    NotAnObject(String),
    /// Stored bytes are not a valid automerge document or change.
    #[error("corrupt document data: {0}")]
    Corrupt(String),
    /// automerge refused an operation Meridian built: a bug, not bad input.
    #[error("internal CRDT error: {0}")]
    Internal(#[from] AutomergeError),
}

/// A replicated JSON document.
#[derive(Debug)]
pub struct Document {
    doc: Automerge,
    data: ObjId,
    /// The last rendering for reads. Every change to `doc` goes through
    /// [`Document::doc_mut`], which drops it, so a rendering present is one
    /// of the current state (debug builds check this against the heads on
    /// every read). Comparing heads on each read instead cost an allocation
    /// and a sort per read, a tenth of a cached read's CPU.
    rendered: OnceLock<Rendered>,
    /// Remote changes waiting for a dependency. Meridian holds them itself
    /// rather than in automerge's queue, so that automerge only ever sees
    /// changes that are ready and checked (see [`Document::apply_changes`]).
    held: Vec<Change>,
    /// The actors with a change in the document, built on first need (it
    /// costs a walk over the history) and kept up to date after that.
    actors: Option<HashSet<ActorId>>,
    /// What local writes read, for the next one (see [`Memo`]): kept across
    /// this node's own committed writes, cleared by [`Document::doc_mut`]
    /// (every other change) and by a rolled-back write.
    memo: Memo,
    /// Puts `live` on every write, as builds before the skip did: the
    /// reference the skip is tested against.
    #[cfg(test)]
    always_live: bool,
}

/// What [`Document::apply_changes_within`] did not take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotApplied {
    /// Changes refused for good, and why.
    pub refused: Vec<RefusedChange>,
    /// Changes that would have waited for a dependency with no room left to
    /// hold them: not taken, to be offered again later.
    pub deferred: Vec<ChangeHash>,
}

/// A remote change [`Document::apply_changes`] refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedChange {
    /// The refused change.
    pub hash: ChangeHash,
    /// What is wrong with it.
    pub reason: String,
}

/// A rendering of the document as reads return it.
#[derive(Debug)]
struct Rendered {
    /// The heads it was made at, kept for the debug-build check only.
    heads: Vec<ChangeHash>,
    body: Option<Arc<[u8]>>,
    etag: Arc<str>,
}

impl Default for Document {
    fn default() -> Self {
        Self::new()
    }
}

impl Document {
    /// A document holding only the shared genesis change: it does not exist
    /// yet (reads 404) until a write makes it live.
    pub fn new() -> Document {
        let mut doc = Automerge::new().with_actor(ActorId::from(GENESIS_ACTOR));
        let mut tx = doc.transaction();
        let data =
            Transactable::put_object(&mut tx, ROOT, DATA_KEY, ObjType::Map).expect("genesis put on an empty document");
        tx.commit_with(CommitOptions::default().with_message(GENESIS_MESSAGE).with_time(0));
        Document::wrap(doc, data)
    }

    fn wrap(doc: Automerge, data: ObjId) -> Document {
        Document {
            doc,
            data,
            rendered: Default::default(),
            held: Vec::new(),
            actors: None,
            memo: Memo::default(),
            #[cfg(test)]
            always_live: false,
        }
    }

    /// Loads a document saved by [`Document::save`].
    pub fn load(bytes: &[u8]) -> Result<Document, DocumentError> {
        let doc = Automerge::load(bytes).map_err(|e| DocumentError::Corrupt(e.to_string()))?;
        let data = match doc.get(ROOT, DATA_KEY) {
            Ok(Some((AmValue::Object(ObjType::Map), id))) => id,
            _ => return Err(DocumentError::Corrupt("no data map: not a Meridian document".into())),
        };
        Ok(Document::wrap(doc, data))
    }

    /// The compact encoding of the whole document.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// Whether the document exists (some concurrent `live` value is not false).
    pub fn exists(&self) -> bool {
        live_at(&self.doc, &self.data, None)
    }

    /// The document as JSON, or `None` if it does not exist.
    pub fn to_json(&self) -> Option<Json> {
        self.exists().then(|| json::read_object(&self.doc, &self.data, ObjType::Map, None))
    }

    /// [`Document::to_json`], serialised, and [`Document::etag`] together,
    /// rendered once per state: repeated reads of an unchanged document cost
    /// a comparison of heads and two reference counts instead of a walk
    /// through automerge's op set, a clone of the JSON and its serialisation.
    pub fn rendered(&self) -> (Option<Arc<[u8]>>, Arc<str>) {
        // A `OnceLock`, not a `Mutex`: a hit is one atomic load instead of a
        // lock and an unlock. Two threads racing on a miss may both render;
        // one result is kept, and both are the same state's.
        let hit = self.rendered.get_or_init(|| {
            let heads = self.heads();
            let body = self.to_json().map(|json| serde_json::to_vec(&json).expect("a JSON value serialises").into());
            Rendered { heads, body, etag: self.etag().into() }
        });
        debug_assert_eq!(hit.heads, self.heads(), "a change to the document bypassed Document::doc_mut");
        (hit.body.clone(), hit.etag.clone())
    }

    /// The automerge document, for a change: drops the rendering for reads
    /// and the memo of local writes' reads. The only way to change `doc`
    /// (but for a local write's own transaction, which keeps the memo
    /// current), so that neither outlives the state it describes.
    fn doc_mut(&mut self) -> &mut Automerge {
        self.rendered.take();
        self.memo.clear();
        &mut self.doc
    }

    /// Current heads, sorted, so equal states give equal lists.
    pub fn heads(&self) -> Vec<ChangeHash> {
        let mut heads = self.doc.get_heads();
        heads.sort();
        heads
    }

    /// A strong validator of the document's state, quoted for the ETag header.
    pub fn etag(&self) -> String {
        // The digest is order-independent, so the heads need no sort; and
        // one push per digit, not a `format!` per byte (every write and
        // every read computes this).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = heads_digest(&self.doc.get_heads());
        let mut tag = String::with_capacity(26);
        tag.push('"');
        for byte in &digest[..12] {
            tag.push(char::from(HEX[usize::from(byte >> 4)]));
            tag.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        tag.push('"');
        tag
    }

    /// Number of changes in the document's history.
    pub fn history_len(&self) -> usize {
        self.doc.get_changes(&[]).len()
    }

    /// Access to the automerge document for read-only inspection.
    pub fn automerge(&self) -> &Automerge {
        &self.doc
    }

    /// Applies remote changes in one batch (one call: automerge's cost is per
    /// call, proportional to history). Changes already in the document are
    /// ignored; changes whose dependencies are missing are held back here
    /// until they arrive.
    ///
    /// Automerge is handed only the changes that are ready (every dependency
    /// present), and only once each of them passes the check automerge 0.12
    /// does not make itself: every actor a change names (its own, and those
    /// of the operations it references) must already have a change in the
    /// document or be introduced by a first change (sequence number 1) in
    /// the same ready set. Automerge registers only those, and a change
    /// naming any other actor panics inside it (`lookup_actor(..).unwrap()`),
    /// which a peer could otherwise do to a node at will. A change that fails
    /// is refused and returned; changes that depend on it stay held, as if it
    /// had never arrived. `Err` is automerge's own refusal of the batch (a
    /// reused sequence number, for one) and leaves the document as it was.
    ///
    /// At most [`HELD_MAX`] changes are held; a new change past that is
    /// refused too, with a reason saying so (see
    /// [`Document::apply_changes_within`], which tells the two apart).
    pub fn apply_changes(&mut self, changes: Vec<Change>) -> Result<Vec<RefusedChange>, DocumentError> {
        let room = HELD_MAX.saturating_sub(self.held.len());
        let NotApplied { mut refused, deferred } = self.apply_changes_within(changes, room)?;
        refused.extend(deferred.into_iter().map(|hash| RefusedChange {
            hash,
            reason: format!(
                "change {hash} waits for a dependency, and this document already holds {HELD_MAX} changes that do"
            ),
        }));
        Ok(refused)
    }

    /// [`Document::apply_changes`], holding at most `room` of the new
    /// changes back for a missing dependency: the rest of those are
    /// deferred, not taken, and returned apart from the refused ones. The
    /// changes held from earlier calls stay held whatever `room` is.
    pub fn apply_changes_within(&mut self, changes: Vec<Change>, room: usize) -> Result<NotApplied, DocumentError> {
        let mut pool: Vec<Change> = Vec::with_capacity(self.held.len() + changes.len());
        let mut seen = HashSet::with_capacity(pool.capacity());
        for change in self.held.iter().cloned().chain(changes) {
            let hash = change.hash();
            if seen.insert(hash) && !self.has_change(&hash) {
                pool.push(change);
            }
        }
        if pool.is_empty() {
            return Ok(NotApplied::default());
        }
        let earlier: HashSet<ChangeHash> = self.held.iter().map(Change::hash).collect();
        let mut refused = Vec::new();
        let (ready, held) = loop {
            let (ready, held) = split_ready(pool, |hash| self.has_change(hash));
            let introduced: HashSet<&ActorId> = ready.iter().filter(|c| c.seq() == 1).map(|c| c.actor_id()).collect();
            let ready_actors: HashMap<ChangeHash, &ActorId> = ready.iter().map(|c| (c.hash(), c.actor_id())).collect();
            let mut bad = Vec::new();
            for (i, change) in ready.iter().enumerate() {
                // Cheapest evidence first: a first change in the ready set, or
                // a direct dependency by that actor (in the document, or ready
                // and so checked itself: a refused one makes this change
                // unready in the next round). Only then the whole actor set,
                // which costs a walk over the history the first time (about
                // 50 ms for 100,000 changes). Every op in `data` names the
                // genesis actor, which no dependency shows directly.
                let known = |actor: &ActorId, doc: &mut Document| {
                    introduced.contains(actor)
                        || (actor.to_bytes() == GENESIS_ACTOR && doc.has_change(genesis_hash()))
                        || change.deps().iter().any(|dep| match ready_actors.get(dep) {
                            Some(by) => *by == actor,
                            None => doc.doc.get_change_meta_by_hash(dep).is_some_and(|m| m.actor.as_ref() == actor),
                        })
                        || doc.knows_actor(actor)
                };
                if let Some(actor) = change.actors().find(|a| !known(a, self)) {
                    let reason = format!(
                        "change {} (actor {}, seq {}) names actor {actor}, which has no change in the document \
                         and no first change in this batch",
                        change.hash(),
                        change.actor_id(),
                        change.seq()
                    );
                    bad.push(i);
                    refused.push(RefusedChange { hash: change.hash(), reason });
                }
            }
            if bad.is_empty() {
                break (ready, held);
            }
            // Without the refused changes, their dependents are not ready
            // and a refused first change introduces nobody: split again.
            pool =
                ready.into_iter().enumerate().filter(|(i, _)| !bad.contains(i)).map(|(_, c)| c).chain(held).collect();
        };
        if !ready.is_empty() {
            let actors: Vec<ActorId> = ready.iter().map(|c| c.actor_id().clone()).collect();
            self.doc_mut().apply_changes(ready)?;
            for actor in actors {
                self.note_actor(actor);
            }
        }
        // In arrival order: the first new changes to wait take the room.
        let mut room = room;
        let mut deferred = Vec::new();
        self.held = held
            .into_iter()
            .filter(|change| {
                let hash = change.hash();
                if earlier.contains(&hash) {
                    true
                } else if room > 0 {
                    room -= 1;
                    true
                } else {
                    deferred.push(hash);
                    false
                }
            })
            .collect();
        Ok(NotApplied { refused, deferred })
    }

    /// Whether `actor` has a change in the document.
    fn knows_actor(&mut self, actor: &ActorId) -> bool {
        let doc = &self.doc;
        self.actors
            .get_or_insert_with(|| doc.get_changes_meta(&[]).into_iter().map(|m| m.actor.into_owned()).collect())
            .contains(actor)
    }

    /// Keeps the actor set (once built) up to date after a change by `actor`.
    fn note_actor(&mut self, actor: ActorId) {
        if let Some(actors) = self.actors.as_mut() {
            actors.insert(actor);
        }
    }

    /// Number of remote changes held back for a missing dependency.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// The document as of `heads`, or `None` if it did not exist then.
    pub fn to_json_at(&self, heads: &[ChangeHash]) -> Option<Json> {
        live_at(&self.doc, &self.data, Some(heads))
            .then(|| json::read_object(&self.doc, &self.data, ObjType::Map, Some(heads)))
    }

    /// Whether the change with this hash is in the document.
    pub fn has_change(&self, hash: &ChangeHash) -> bool {
        // Metadata only: building the whole change is wasted work here, and
        // automerge's debug self-check in that path panics on some held-back
        // changes (found by the change_record fuzz target).
        self.doc.get_change_meta_by_hash(hash).is_some()
    }

    /// The heads of the set of changes with HLC `<= at`: a causally closed set
    /// because a change's HLC exceeds its dependencies'. Changes Meridian did
    /// not stamp (genesis, deterministic counter creations) belong to the set
    /// when all their dependencies do.
    pub fn heads_at(&self, at: Hlc) -> Vec<ChangeHash> {
        use std::collections::{BTreeSet, HashMap};
        let metas = self.doc.get_changes_meta(&[]);
        let by_hash: HashMap<ChangeHash, (Option<ChangeMeta>, Vec<ChangeHash>)> = metas
            .iter()
            .map(|m| (m.hash, (m.message.as_deref().and_then(ChangeMeta::from_message), m.deps.clone())))
            .collect();
        let mut included: HashMap<ChangeHash, bool> = HashMap::new();
        for start in by_hash.keys() {
            // Iterative post-order walk: a change is in the set if its own HLC
            // qualifies and all its dependencies are in the set.
            let mut stack = vec![(*start, false)];
            while let Some((hash, expanded)) = stack.pop() {
                if included.contains_key(&hash) {
                    continue;
                }
                let Some((meta, deps)) = by_hash.get(&hash) else {
                    included.insert(hash, false);
                    continue;
                };
                if !expanded {
                    stack.push((hash, true));
                    stack.extend(deps.iter().filter(|d| !included.contains_key(*d)).map(|d| (*d, false)));
                    continue;
                }
                let own = meta.is_none_or(|m| m.hlc <= at);
                let deps_in = deps.iter().all(|d| included.get(d).copied().unwrap_or(false));
                included.insert(hash, own && deps_in);
            }
        }
        let members: BTreeSet<ChangeHash> = included.iter().filter(|(_, &inside)| inside).map(|(h, _)| *h).collect();
        let named_as_dep: BTreeSet<ChangeHash> =
            members.iter().flat_map(|h| by_hash.get(h).map(|(_, deps)| deps.clone()).unwrap_or_default()).collect();
        members.difference(&named_as_dep).copied().collect()
    }

    /// The highest HLC stamped on any of the document's changes.
    pub fn max_hlc(&self) -> Hlc {
        self.doc
            .get_changes_meta(&[])
            .iter()
            .filter_map(|m| m.message.as_deref().and_then(ChangeMeta::from_message))
            .map(|m| m.hlc)
            .max()
            .unwrap_or_default()
    }

    /// Every change of the document with its Meridian metadata (None for the
    /// genesis and counter-creation changes) and its encoded size.
    pub fn history(&self) -> Vec<(ChangeHash, Option<ChangeMeta>, usize)> {
        self.doc
            .get_changes(&[])
            .into_iter()
            .map(|c| (c.hash(), c.message().and_then(ChangeMeta::from_message), c.raw_bytes().len()))
            .collect()
    }

    /// Paths holding concurrent values: for each, every value with the
    /// metadata of the change that wrote it, and which one reads return.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        self.collect_conflicts(&self.data, ObjType::Map, &mut Vec::new(), &mut out);
        out
    }

    fn collect_conflicts(&self, obj: &ObjId, typ: ObjType, path: &mut Vec<String>, out: &mut Vec<Conflict>) {
        if out.len() >= CONFLICTS_MAX || path.len() > crate::DEPTH_MAX {
            return;
        }
        let props: Vec<automerge::Prop> = match typ {
            ObjType::Map | ObjType::Table => self.doc.keys(obj).map(automerge::Prop::Map).collect(),
            ObjType::List => (0..self.doc.length(obj)).map(automerge::Prop::Seq).collect(),
            ObjType::Text => return,
        };
        for prop in props {
            let token = match &prop {
                automerge::Prop::Map(k) => k.clone(),
                automerge::Prop::Seq(i) => i.to_string(),
            };
            path.push(token);
            let all = self.doc.get_all(obj, prop.clone()).unwrap_or_default();
            if all.len() > 1 {
                let winner = self.doc.get(obj, prop.clone()).ok().flatten().map(|(_, id)| id);
                let values = all
                    .iter()
                    .map(|(value, id)| {
                        let meta = self
                            .doc
                            .hash_for_opid(id)
                            .and_then(|h| self.doc.get_change_by_hash(&h))
                            .and_then(|c| c.message().and_then(ChangeMeta::from_message));
                        ConflictValue {
                            value: json::read_value(&self.doc, value.clone(), id, None),
                            meta,
                            wins: winner.as_ref() == Some(id),
                        }
                    })
                    .collect();
                let pointer = crate::patch::Pointer { tokens: path.clone() }.to_string();
                out.push(Conflict { path: pointer, values });
            }
            if let Ok(Some((AmValue::Object(child_type), child))) = self.doc.get(obj, prop) {
                self.collect_conflicts(&child, child_type, path, out);
            }
            path.pop();
        }
    }

    /// Merges another replica's copy of this document into this one.
    pub fn merge(&mut self, other: &mut Document) -> Result<(), DocumentError> {
        self.doc_mut().merge(&mut other.doc)?;
        // The merge brought actors the set does not know; rebuilt on next need.
        self.actors = None;
        if !self.held.is_empty() {
            // The merged state may hold what held changes were waiting for.
            // One refused now is dropped: its record stays received but not
            // applied, as a record whose dependency never arrives does.
            self.apply_changes(Vec::new())?;
        }
        Ok(())
    }

    /// Hashes of dependencies that are referenced but missing (changes held back).
    pub fn missing_deps(&self) -> Vec<ChangeHash> {
        let held: HashSet<ChangeHash> = self.held.iter().map(Change::hash).collect();
        let mut missing: Vec<ChangeHash> = self
            .held
            .iter()
            .flat_map(|c| c.deps().iter().copied())
            .filter(|d| !held.contains(d) && !self.has_change(d))
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// Replaces the document's content with `object` (PUT).
    pub fn put(&mut self, object: &Map<String, Json>, meta: &ChangeMeta) -> Result<Vec<Change>, DocumentError> {
        let data = self.data.clone();
        self.commit(meta, Vec::new(), |tx| {
            json::update_map(tx, &data, object)?;
            Ok(())
        })
    }

    /// Applies an RFC 7396 merge patch (PATCH, `application/merge-patch+json`).
    pub fn merge_patch(&mut self, patch: &Json, meta: &ChangeMeta) -> Result<Vec<Change>, DocumentError> {
        let Json::Object(patch) = patch else {
            return Err(DocumentError::NotAnObject(
                "a merge patch for a document must be a JSON object (the document itself is always an object)".into(),
            ));
        };
        let data = self.data.clone();
        self.commit(meta, Vec::new(), |tx| {
            json::merge_patch_map(tx, &data, patch)?;
            Ok(())
        })
    }

    /// Applies an RFC 6902 JSON Patch, all or nothing (PATCH, `application/json-patch+json`).
    pub fn json_patch(&mut self, ops: &[PatchOp], meta: &ChangeMeta) -> Result<Vec<Change>, DocumentError> {
        // First pass: find counters that must be created. Creating them is a
        // separate deterministic change, which cannot be undone, so it is only
        // made once the whole patch is known to succeed.
        let mut wanted_counters = Vec::new();
        {
            let data = self.data.clone();
            let mut tx = self.doc_mut().transaction();
            let outcome = apply_ops(&mut tx, &data, ops, &mut wanted_counters);
            tx.rollback();
            outcome?;
        }
        let mut prelude = Vec::new();
        for (obj, key) in wanted_counters {
            if let Some(change) = self.create_counter(&obj, &key)? {
                prelude.push(change);
            }
        }
        let data = self.data.clone();
        self.commit(meta, prelude, |tx| apply_ops(tx, &data, ops, &mut Vec::new()))
    }

    /// Deletes the document: removes every field seen here and marks it not live.
    pub fn delete(&mut self, meta: &ChangeMeta) -> Result<Vec<Change>, DocumentError> {
        let data = self.data.clone();
        self.commit_inner(meta, Vec::new(), false, |tx| {
            let keys: Vec<String> = json::View::keys(tx, &data);
            for key in keys {
                json::Edit::delete(tx, &data, key.as_str())?;
            }
            Ok(())
        })
    }

    fn commit<F>(&mut self, meta: &ChangeMeta, prelude: Vec<Change>, edit: F) -> Result<Vec<Change>, DocumentError>
    where
        F: FnOnce(&mut Memoized<'_, automerge::transaction::Transaction<'_>>) -> Result<(), DocumentError>,
    {
        self.commit_inner(meta, prelude, true, edit)
    }

    /// Runs `edit` and the `live` write in one transaction stamped with
    /// `meta`; rolls back on any error. Returns the prelude changes followed
    /// by the new change.
    fn commit_inner<F>(
        &mut self,
        meta: &ChangeMeta,
        mut prelude: Vec<Change>,
        live: bool,
        edit: F,
    ) -> Result<Vec<Change>, DocumentError>
    where
        F: FnOnce(&mut Memoized<'_, automerge::transaction::Transaction<'_>>) -> Result<(), DocumentError>,
    {
        // Not `doc_mut`: this transaction keeps the memo current itself.
        self.rendered.take();
        self.doc.set_actor(meta.origin.actor());
        let mut tx = self.doc.transaction();
        let mut memoized = Memoized::new(&mut tx, &mut self.memo, &self.data);
        let edited = edit(&mut memoized);
        let leaves_own_key = memoized.leaves_own_key();
        #[cfg(test)]
        let leaves_own_key = leaves_own_key && !self.always_live;
        // `live` is at the root, outside the data the memo covers. A write
        // that leaves a key of `data` holding a value of its own needs no
        // `live` value: that value is concurrent with exactly the deletes
        // its `live` value would be, and survives them just the same (see
        // the module docs). Skipping it saves a put per write, the most
        // expensive part of a small one.
        let live_value = match (live, leaves_own_key) {
            (true, true) => None,
            (true, false) => Some(ScalarValue::Str(format!("{}:{}", meta.origin, meta.seq).into())),
            (false, _) => Some(ScalarValue::Boolean(false)),
        };
        let marked = edited.and_then(|()| match live_value {
            Some(value) => Ok(Transactable::put(&mut tx, ROOT, LIVE_KEY, value)?),
            None => Ok(()),
        });
        if let Err(err) = marked {
            tx.rollback();
            self.memo.clear();
            return Err(err);
        }
        let options = CommitOptions::default()
            .with_message(meta.to_message())
            .with_time(i64::try_from(meta.hlc.wall_ms()).unwrap_or(i64::MAX));
        let (hash, _) = tx.commit_with(options);
        let hash = hash.expect("a transaction that wrote `live` or a key of `data` has at least one op");
        let change = self.doc.get_change_by_hash(&hash).expect("just committed");
        self.note_actor(change.actor_id().clone());
        prelude.push(change);
        Ok(prelude)
    }

    /// Makes (and applies) the deterministic change that creates a zero
    /// counter at `key` of `obj`; `None` if that change is already in the
    /// history (the counter was created and later deleted: an ordinary put
    /// then recreates it).
    fn create_counter(&mut self, obj: &ObjId, key: &str) -> Result<Option<Change>, DocumentError> {
        let Some(parent_change) = self.doc.hash_for_opid(obj) else {
            return Ok(None);
        };
        let mut fork = self.doc.fork_at(&[parent_change])?;
        fork.set_actor(ActorId::from(format!("{COUNTER_ACTOR_PREFIX}{obj}/{key}").into_bytes()));
        let mut tx = fork.transaction();
        Transactable::put(&mut tx, obj, key, ScalarValue::counter(0))?;
        let (hash, _) = tx.commit_with(CommitOptions::default().with_message(COUNTER_MESSAGE).with_time(0));
        let hash = hash.expect("one op");
        if self.doc.get_change_by_hash(&hash).is_some() {
            return Ok(None);
        }
        let change = fork.get_change_by_hash(&hash).expect("just committed");
        self.doc_mut().apply_changes([change.clone()])?;
        self.note_actor(change.actor_id().clone());
        Ok(Some(change))
    }
}

/// The hash of the shared genesis change, the same in every document.
fn genesis_hash() -> &'static ChangeHash {
    static HASH: std::sync::OnceLock<ChangeHash> = std::sync::OnceLock::new();
    HASH.get_or_init(|| Document::new().doc.get_heads()[0])
}

/// Splits `pool` into the changes whose dependencies are all present (in
/// the document, as `present` tells, or ready themselves) and the rest,
/// in their original order. Kahn's algorithm: linear in the pool and its
/// dependency edges whatever order the changes came in.
fn split_ready(pool: Vec<Change>, present: impl Fn(&ChangeHash) -> bool) -> (Vec<Change>, Vec<Change>) {
    let index: HashMap<ChangeHash, usize> = pool.iter().enumerate().map(|(i, c)| (c.hash(), i)).collect();
    let mut waiting = vec![0usize; pool.len()];
    let mut blocked = vec![false; pool.len()];
    let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, change) in pool.iter().enumerate() {
        for dep in change.deps() {
            match index.get(dep) {
                Some(&j) => {
                    waiting[i] += 1;
                    dependents.entry(j).or_default().push(i);
                }
                None if present(dep) => {}
                None => blocked[i] = true,
            }
        }
    }
    let mut ready = vec![false; pool.len()];
    let mut queue: Vec<usize> = (0..pool.len()).filter(|&i| waiting[i] == 0 && !blocked[i]).collect();
    while let Some(i) = queue.pop() {
        ready[i] = true;
        for &d in dependents.get(&i).map(Vec::as_slice).unwrap_or_default() {
            waiting[d] -= 1;
            if waiting[d] == 0 && !blocked[d] {
                queue.push(d);
            }
        }
    }
    let (ready, rest): (Vec<_>, Vec<_>) = pool.into_iter().zip(ready).partition(|(_, r)| *r);
    (ready.into_iter().map(|(c, _)| c).collect(), rest.into_iter().map(|(c, _)| c).collect())
}

/// Most conflicts reported for one document.
pub const CONFLICTS_MAX: usize = 1000;

/// A path with concurrent values.
#[derive(Clone, Debug)]
pub struct Conflict {
    /// JSON pointer of the member or element.
    pub path: String,
    /// The concurrent values.
    pub values: Vec<ConflictValue>,
}

/// One of several concurrent values.
#[derive(Clone, Debug)]
pub struct ConflictValue {
    /// The value.
    pub value: Json,
    /// Who wrote it and when (None for changes Meridian did not stamp).
    pub meta: Option<ChangeMeta>,
    /// Whether reads return this one.
    pub wins: bool,
}

/// The actors of counter-creation changes start with this.
const COUNTER_ACTOR_PREFIX: &str = "meridian/counter/";

/// Whether the document exists (at `heads`, or now): `live` holds a value
/// other than false, or a key of `data` holds a value a write put (see the
/// module docs).
fn live_at<R: ReadDoc>(doc: &R, data: &ObjId, heads: Option<&[ChangeHash]>) -> bool {
    let values = match heads {
        Some(h) => doc.get_all_at(ROOT, LIVE_KEY, h),
        None => doc.get_all(ROOT, LIVE_KEY),
    };
    let marked = values
        .unwrap_or_default()
        .iter()
        .any(|(value, _)| !matches!(value, AmValue::Scalar(s) if matches!(s.as_ref(), ScalarValue::Boolean(false))));
    marked || has_written_key(doc, data, heads)
}

/// Whether some key of `data` holds a value put by a write, not only by a
/// counter's creation change: that change is shared, depends on the
/// genesis alone and is stamped at time 0, so it is concurrent with every
/// delete and in every snapshot, and must not make a document exist (the
/// write that needed it puts `live`, as an increment is not a put).
fn has_written_key<R: ReadDoc>(doc: &R, data: &ObjId, heads: Option<&[ChangeHash]>) -> bool {
    let keys: Vec<String> = match heads {
        Some(h) => doc.keys_at(data, h).collect(),
        None => doc.keys(data).collect(),
    };
    keys.iter().any(|key| {
        let values = match heads {
            Some(h) => doc.get_all_at(data, key.as_str(), h),
            None => doc.get_all(data, key.as_str()),
        };
        values.unwrap_or_default().iter().any(|(_, id)| match id {
            ObjId::Id(_, actor, _) => !actor.to_bytes().starts_with(COUNTER_ACTOR_PREFIX.as_bytes()),
            ObjId::Root => false,
        })
    })
}

/// Order-independent digest of a set of heads: XOR of the hashes. Heads are
/// distinct SHA-256 values, so XOR is as good as hashing the sorted list.
pub fn heads_digest(heads: &[ChangeHash]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for head in heads {
        for (o, b) in out.iter_mut().zip(head.0.iter()) {
            *o ^= b;
        }
    }
    out
}

/// Where a JSON pointer lands.
enum Target {
    /// The whole document.
    Root,
    /// A member of a map (which may or may not exist).
    Member { obj: ObjId, key: String },
    /// An index of a list (may be one past the end).
    Element { obj: ObjId, index: usize, len: usize },
    /// `-`: one past the end of a list.
    End { obj: ObjId, len: usize },
}

/// Failure while applying one operation: message and whether it is a 409.
struct OpFailure {
    reason: String,
    conflict: bool,
}

fn conflict(reason: impl Into<String>) -> OpFailure {
    OpFailure { reason: reason.into(), conflict: true }
}

fn invalid(reason: impl Into<String>) -> OpFailure {
    OpFailure { reason: reason.into(), conflict: false }
}

impl From<AutomergeError> for OpFailure {
    fn from(err: AutomergeError) -> Self {
        invalid(format!("internal CRDT error: {err}"))
    }
}

fn apply_ops<E: json::Edit>(
    tx: &mut E,
    data: &ObjId,
    ops: &[PatchOp],
    counters: &mut Vec<(ObjId, String)>,
) -> Result<(), DocumentError> {
    for (index, op) in ops.iter().enumerate() {
        let (name, path) = match op {
            PatchOp::Add { path, .. } => ("add", path),
            PatchOp::Remove { path } => ("remove", path),
            PatchOp::Replace { path, .. } => ("replace", path),
            PatchOp::Move { path, .. } => ("move", path),
            PatchOp::Copy { path, .. } => ("copy", path),
            PatchOp::Test { path, .. } => ("test", path),
            PatchOp::Increment { path, .. } => ("increment", path),
        };
        apply_op(tx, data, op, counters).map_err(|failure| DocumentError::PatchFailed {
            index,
            op: name,
            path: path.to_string(),
            reason: failure.reason,
            conflict: failure.conflict,
        })?;
    }
    Ok(())
}

fn apply_op<E: json::Edit>(
    tx: &mut E,
    data: &ObjId,
    op: &PatchOp,
    counters: &mut Vec<(ObjId, String)>,
) -> Result<(), OpFailure> {
    match op {
        PatchOp::Add { path, value } => add(tx, data, path, value),
        PatchOp::Remove { path } => remove(tx, data, path),
        PatchOp::Replace { path, value } => {
            check_depth(path, value)?;
            match resolve(tx, data, path)? {
                Target::Root => replace_root(tx, data, value),
                Target::Member { obj, key } => {
                    if tx.get(&obj, key.as_str())?.is_none() {
                        return Err(conflict(format!("no member {key:?} to replace")));
                    }
                    Ok(json::update_slot(tx, &obj, &Slot::Key(key), value)?)
                }
                Target::Element { obj, index, len } if index < len => {
                    Ok(json::update_slot(tx, &obj, &Slot::Index(index), value)?)
                }
                Target::Element { index, len, .. } => {
                    Err(conflict(format!("index {index} is out of range (array length {len})")))
                }
                Target::End { .. } => Err(invalid("'-' names no element to replace")),
            }
        }
        PatchOp::Move { from, path } => {
            if from.is_proper_prefix_of(path) {
                return Err(invalid("cannot move a value into one of its own children"));
            }
            let value = read(tx, data, from)?;
            if from == path {
                return Ok(());
            }
            remove(tx, data, from)?;
            add(tx, data, path, &value)
        }
        PatchOp::Copy { from, path } => {
            let value = read(tx, data, from)?;
            add(tx, data, path, &value)
        }
        PatchOp::Test { path, value } => {
            let current = read(tx, data, path)?;
            if json::json_eq(&current, value) {
                Ok(())
            } else {
                Err(conflict(format!("test failed: the value is {current}, not {value}")))
            }
        }
        PatchOp::Increment { path, value } => {
            let (obj, slot) = match resolve(tx, data, path)? {
                Target::Root => return Err(invalid("the document itself cannot be a counter")),
                Target::Member { obj, key } => (obj, Slot::Key(key)),
                Target::Element { obj, index, len } if index < len => (obj, Slot::Index(index)),
                Target::Element { .. } | Target::End { .. } => {
                    return Err(conflict("no array element there; counters in arrays must already exist"))
                }
            };
            let prop = match &slot {
                Slot::Key(k) => automerge::Prop::Map(k.clone()),
                Slot::Index(i) => automerge::Prop::Seq(*i),
            };
            match tx.get(&obj, prop.clone())?.map(|(v, _)| v.into_owned()) {
                None => {
                    if let Slot::Key(key) = &slot {
                        counters.push((obj.clone(), key.clone()));
                    }
                    tx.put(&obj, prop, ScalarValue::counter(*value))?;
                }
                Some(AmValue::Scalar(s)) if matches!(s.as_ref(), ScalarValue::Counter(_)) => {
                    checked_total(s.as_i64().unwrap_or(0), *value)?;
                    tx.increment(&obj, prop, *value)?;
                }
                Some(AmValue::Scalar(s)) if exact_i64(&s).is_some() => {
                    // A plain integer becomes a counter starting from its value.
                    let start = checked_total(exact_i64(&s).unwrap_or(0), *value)?;
                    tx.put(&obj, prop, ScalarValue::counter(start))?;
                }
                Some(_) => return Err(conflict("the value there is not an integer or counter")),
            }
            Ok(())
        }
    }
}

/// The integer a scalar holds if it is exactly an i64. `ScalarValue::as_i64`
/// is not that: it casts a u64 above `i64::MAX` to a negative number.
fn exact_i64(scalar: &ScalarValue) -> Option<i64> {
    match scalar {
        ScalarValue::Int(n) => Some(*n),
        ScalarValue::Uint(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// `current + by`, refused when it leaves i64: a wrapped counter would
/// silently turn a large total negative (and debug builds panic in automerge).
fn checked_total(current: i64, by: i64) -> Result<i64, OpFailure> {
    current
        .checked_add(by)
        .ok_or_else(|| conflict(format!("incrementing {current} by {by} would overflow a 64-bit counter")))
}

fn check_depth(path: &Pointer, value: &Json) -> Result<(), OpFailure> {
    if path.tokens.len() + json::depth(value) > crate::DEPTH_MAX {
        return Err(invalid(format!("the result would nest deeper than {} levels", crate::DEPTH_MAX)));
    }
    Ok(())
}

fn replace_root<E: json::Edit>(tx: &mut E, data: &ObjId, value: &Json) -> Result<(), OpFailure> {
    match value {
        Json::Object(map) => Ok(json::update_map(tx, data, map)?),
        _ => Err(invalid("the document itself must stay a JSON object")),
    }
}

fn add<E: json::Edit>(tx: &mut E, data: &ObjId, path: &Pointer, value: &Json) -> Result<(), OpFailure> {
    check_depth(path, value)?;
    match resolve(tx, data, path)? {
        Target::Root => replace_root(tx, data, value),
        Target::Member { obj, key } => Ok(json::update_slot(tx, &obj, &Slot::Key(key), value)?),
        Target::Element { obj, index, len } if index <= len => Ok(json::insert_new(tx, &obj, index, value)?),
        Target::Element { index, len, .. } => {
            Err(conflict(format!("index {index} is out of range (array length {len})")))
        }
        Target::End { obj, len } => Ok(json::insert_new(tx, &obj, len, value)?),
    }
}

fn remove<E: json::Edit>(tx: &mut E, data: &ObjId, path: &Pointer) -> Result<(), OpFailure> {
    match resolve(tx, data, path)? {
        Target::Root => Err(invalid("cannot remove the whole document; use DELETE")),
        Target::Member { obj, key } => {
            if tx.get(&obj, key.as_str())?.is_none() {
                return Err(conflict(format!("no member {key:?} to remove")));
            }
            Ok(tx.delete(&obj, key.as_str())?)
        }
        Target::Element { obj, index, len } if index < len => Ok(tx.delete(&obj, index)?),
        Target::Element { index, len, .. } => {
            Err(conflict(format!("index {index} is out of range (array length {len})")))
        }
        Target::End { .. } => Err(invalid("'-' names no element to remove")),
    }
}

fn read<E: json::Edit>(tx: &mut E, data: &ObjId, path: &Pointer) -> Result<Json, OpFailure> {
    let missing = || conflict(format!("nothing at {path}"));
    match resolve(tx, data, path)? {
        Target::Root => Ok(json::render_object(tx, data, ObjType::Map)),
        Target::Member { obj, key } => {
            let (value, id) = tx.get(&obj, key.as_str())?.ok_or_else(missing)?;
            Ok(json::render_value(tx, value, &id))
        }
        Target::Element { obj, index, len } if index < len => {
            let (value, id) = tx.get(&obj, index)?.ok_or_else(missing)?;
            Ok(json::render_value(tx, value, &id))
        }
        Target::Element { .. } | Target::End { .. } => Err(missing()),
    }
}

/// Walks `path` to its parent container and classifies the last token.
fn resolve<E: json::Edit>(tx: &mut E, data: &ObjId, path: &Pointer) -> Result<Target, OpFailure> {
    let Some((last, parents)) = path.tokens.split_last() else {
        return Ok(Target::Root);
    };
    let mut obj = data.clone();
    let mut typ = ObjType::Map;
    for (depth, token) in parents.iter().enumerate() {
        let here = || Pointer { tokens: path.tokens[..=depth].to_vec() };
        let child = match typ {
            ObjType::Map | ObjType::Table => tx.get(&obj, token.as_str())?,
            ObjType::List => {
                let index = parse_index(token, tx.length(&obj))?;
                tx.get(&obj, index)?
            }
            ObjType::Text => None,
        };
        match child {
            Some((AmValue::Object(child_type), child_id)) if child_type != ObjType::Text => {
                obj = child_id;
                typ = child_type;
            }
            Some(_) => return Err(conflict(format!("{} is not an object or array", here()))),
            None => return Err(conflict(format!("{} does not exist", here()))),
        }
    }
    match typ {
        ObjType::List => {
            let len = tx.length(&obj);
            if last == "-" {
                Ok(Target::End { obj, len })
            } else {
                let index = parse_index(last, usize::MAX)?;
                Ok(Target::Element { obj, index, len })
            }
        }
        _ => Ok(Target::Member { obj, key: last.clone() }),
    }
}

fn parse_index(token: &str, len: usize) -> Result<usize, OpFailure> {
    let valid =
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) && (token == "0" || !token.starts_with('0'));
    let index: usize = if valid {
        token.parse().map_err(|_| invalid(format!("array index {token:?} is too large")))?
    } else {
        return Err(invalid(format!("{token:?} is not an array index (digits without leading zeros, or '-')")));
    };
    if index >= len && len != usize::MAX {
        return Err(conflict(format!("index {index} is out of range (array length {len})")));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use proptest::prelude::*;
    use serde_json::json;

    /// One step of a three-replica history for [`skipping_live_changes_no_existence`].
    #[derive(Clone, Debug)]
    enum Step {
        Patch { at: usize, patch: Json },
        Increment { at: usize, key: &'static str },
        Delete { at: usize },
        Sync { from: usize, to: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        // Two keys and many syncs: writes meet concurrent deletes often.
        let key = prop::sample::select(vec!["a", "b"]);
        let value = prop_oneof![
            (0i64..3).prop_map(Json::from),
            Just(Json::Null),
            (0i64..2).prop_map(|x| json!({ "x": x })),
            (0i64..2).prop_map(|y| json!({ "y": y })),
        ];
        let patch = prop::collection::btree_map(key.clone(), value, 0..=2)
            .prop_map(|members| Json::Object(members.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
        prop_oneof![
            4 => (0..3usize, patch).prop_map(|(at, patch)| Step::Patch { at, patch }),
            1 => (0..3usize, key).prop_map(|(at, key)| Step::Increment { at, key }),
            2 => (0..3usize).prop_map(|at| Step::Delete { at }),
            4 => (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Sync { from, to }),
        ]
    }

    /// Runs `steps` on three replicas; after each, whether each replica's
    /// document exists.
    fn run(steps: &[Step], always_live: bool) -> Vec<Vec<bool>> {
        let mut docs: Vec<Document> = (0..3).map(|_| Document { always_live, ..Document::new() }).collect();
        let mut seqs = [0u64; 3];
        let mut seen = Vec::new();
        for (n, step) in steps.iter().enumerate() {
            let mut meta = |at: usize| {
                seqs[at] += 1;
                ChangeMeta { origin: NodeId(at as u64 + 1), seq: seqs[at], hlc: Hlc::new(n as u64 + 1, 0) }
            };
            match step {
                Step::Patch { at, patch } => {
                    let meta = meta(*at);
                    let _ = docs[*at].merge_patch(patch, &meta);
                }
                Step::Increment { at, key } => {
                    let meta = meta(*at);
                    let ops =
                        crate::patch::parse_patch(&json!([{"op": "increment", "path": format!("/{key}"), "value": 1}]))
                            .unwrap();
                    let _ = docs[*at].json_patch(&ops, &meta);
                }
                // As the API: a DELETE of a document that does not exist is a 404.
                Step::Delete { at } if docs[*at].exists() => {
                    let meta = meta(*at);
                    docs[*at].delete(&meta).unwrap();
                }
                Step::Delete { .. } => {}
                Step::Sync { from, to } => {
                    let changes = docs[*from].doc.get_changes(&[]);
                    docs[*to].apply_changes(changes).unwrap();
                }
            }
            seen.push(docs.iter().map(Document::exists).collect());
        }
        seen
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// A write that skips `live` (it leaves a key of `data` of its own)
        /// gives every replica, at every step, the same existence as when
        /// every write puts `live`. Values, and even keys, may differ: the
        /// skipped op shifts op counters, so which concurrent value of a
        /// key wins, and so whether a later edit of that key goes into the
        /// winning map or replaces a winning scalar (the regression file
        /// keeps such a case).
        #[test]
        fn skipping_live_changes_no_existence(steps in prop::collection::vec(step(), 1..40)) {
            prop_assert_eq!(run(&steps, false), run(&steps, true));
        }
    }

    #[test]
    fn a_write_with_a_key_of_its_own_skips_live_and_a_nested_one_does_not() {
        let mut doc = Document::new();
        doc.merge_patch(&json!({"a": {"x": 1}}), &meta(1)).unwrap();
        let lives = |doc: &Document| doc.doc.get_all(ROOT, LIVE_KEY).unwrap().len();
        assert_eq!(lives(&doc), 0, "a put of its own at the top: no live value");
        doc.merge_patch(&json!({"a": {"x": 2}}), &meta(2)).unwrap();
        assert_eq!(lives(&doc), 1, "a nested edit only: a live value");
        doc.delete(&meta(4)).unwrap();
        assert!(!doc.exists());
        doc.merge_patch(&json!({"b": 1}), &meta(5)).unwrap();
        assert!(doc.exists(), "a write after a delete recreates the document without a live value");
    }

    #[test]
    fn a_counters_creation_change_alone_makes_no_document() {
        // Found by the cluster simulation: a snapshot read at a time before
        // the increment saw the creation change (time 0) and no `live`.
        let mut doc = Document::new();
        let changes = increment(&mut doc, 1, "/n", 0).unwrap();
        assert_eq!(changes.len(), 2, "the creation change, then the write");
        let mut other = Document::new();
        other.apply_changes(vec![changes[0].clone()]).unwrap();
        assert!(!other.exists());
        other.apply_changes(vec![changes[1].clone()]).unwrap();
        assert_eq!(other.to_json(), Some(json!({"n": 0})));
    }

    #[test]
    fn a_nested_edit_concurrent_with_a_delete_keeps_the_document_and_so_does_a_top_level_one() {
        let at = |n: u64, seq: u64| ChangeMeta { origin: NodeId(n), seq, hlc: Hlc::new(seq, 0) };
        for (edit, survives) in [(json!({"a": {"x": 2}}), json!({})), (json!({"b": 1}), json!({"b": 1}))] {
            let mut one = Document::new();
            one.merge_patch(&json!({"a": {"x": 1}}), &at(1, 1)).unwrap();
            let mut two = Document::new();
            two.apply_changes(one.doc.get_changes(&[])).unwrap();
            one.merge_patch(&edit, &at(1, 2)).unwrap();
            two.delete(&at(2, 1)).unwrap();
            let (from_one, from_two) = (one.doc.get_changes(&[]), two.doc.get_changes(&[]));
            one.apply_changes(from_two).unwrap();
            two.apply_changes(from_one).unwrap();
            assert_eq!(one.to_json(), Some(survives.clone()), "after {edit}");
            assert_eq!(two.to_json(), Some(survives), "after {edit}");
        }
    }

    fn meta(seq: u64) -> ChangeMeta {
        ChangeMeta { origin: NodeId(1), seq, hlc: Hlc::new(seq, 0) }
    }

    fn increment(doc: &mut Document, seq: u64, path: &str, value: i64) -> Result<Vec<Change>, DocumentError> {
        let ops = crate::patch::parse_patch(&json!([{"op": "increment", "path": path, "value": value}])).unwrap();
        doc.json_patch(&ops, &meta(seq))
    }

    /// The cached rendering, parsed back, with its ETag.
    fn rendered(doc: &Document) -> (Option<Json>, String) {
        let (body, etag) = doc.rendered();
        (body.map(|b| serde_json::from_slice(&b).unwrap()), etag.to_string())
    }

    #[test]
    fn the_read_cache_follows_every_change() {
        let mut doc = Document::new();
        assert_eq!(rendered(&doc), (None, doc.etag()));
        doc.put(json!({"a": 1}).as_object().unwrap(), &meta(1)).unwrap();
        assert_eq!(rendered(&doc), (Some(json!({"a": 1})), doc.etag()));
        assert_eq!(rendered(&doc), (Some(json!({"a": 1})), doc.etag()), "a cache hit answers the same");
        // A change applied from elsewhere (not through a local edit) is seen too.
        let mut other = Document::load(&doc.save()).unwrap();
        let changes = other
            .merge_patch(&json!({"b": 2}), &ChangeMeta { origin: NodeId(2), seq: 1, hlc: Hlc::new(5, 0) })
            .unwrap();
        doc.apply_changes(changes).unwrap();
        assert_eq!(rendered(&doc), (Some(json!({"a": 1, "b": 2})), doc.etag()));
        doc.merge_patch(&json!({"c": 3}), &meta(3)).unwrap();
        assert_eq!(rendered(&doc), (Some(json!({"a": 1, "b": 2, "c": 3})), doc.etag()));
        let mut third = Document::load(&doc.save()).unwrap();
        third.merge_patch(&json!({"d": 4}), &ChangeMeta { origin: NodeId(3), seq: 1, hlc: Hlc::new(9, 0) }).unwrap();
        doc.merge(&mut third).unwrap();
        assert_eq!(rendered(&doc), (Some(json!({"a": 1, "b": 2, "c": 3, "d": 4})), doc.etag()));
        doc.delete(&meta(2)).unwrap();
        assert_eq!(rendered(&doc), (None, doc.etag()));
    }

    fn node_meta(node: u64, seq: u64) -> ChangeMeta {
        ChangeMeta { origin: NodeId(node), seq, hlc: Hlc::new(100 + seq, 0) }
    }

    /// `change` re-encoded with other fields, as a hostile or broken peer
    /// could send it: automerge accepts the bytes (the hash is recomputed).
    fn forged(change: &Change, edit: impl FnOnce(&mut automerge::ExpandedChange)) -> Change {
        let mut expanded = change.decode();
        expanded.hash = None;
        edit(&mut expanded);
        Change::from(expanded)
    }

    fn genesis_heads() -> Vec<ChangeHash> {
        Document::new().heads()
    }

    #[test]
    fn a_change_naming_an_unknown_actor_is_refused_not_a_panic() {
        // Found by the peer_message fuzz target: automerge 0.12 registers
        // only actors with a first change in the batch, then unwraps the
        // lookup of every actor a change names.
        let mut source = Document::new();
        let first = source.put(json!({"a": 1}).as_object().unwrap(), &node_meta(7, 1)).unwrap().remove(0);
        let bad = forged(&first, |c| c.seq = 2);
        let mut good_source = Document::new();
        let good = good_source.put(json!({"b": 2}).as_object().unwrap(), &node_meta(8, 1)).unwrap();

        let mut doc = Document::new();
        let mut batch = vec![bad.clone()];
        batch.extend(good.iter().cloned());
        let refused = doc.apply_changes(batch).expect("the batch applies without the bad change");
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].hash, bad.hash());
        assert!(refused[0].reason.contains("seq 2"), "{}", refused[0].reason);
        assert!(!doc.has_change(&bad.hash()));
        assert_eq!(doc.to_json(), Some(json!({"b": 2})), "the good change in the same batch is applied");
        assert_eq!(doc.held_count(), 0);

        // The same change alone, and again: refused each time, the document untouched.
        let before = doc.heads();
        assert_eq!(doc.apply_changes(vec![bad.clone()]).unwrap().len(), 1);
        assert_eq!(doc.heads(), before);
    }

    #[test]
    fn a_change_referencing_an_unknown_actors_ops_is_refused() {
        // Y overwrites X's field, so its op names X in a pred; with X's change
        // missing from its dependencies it is ready but names an actor the
        // document has never seen.
        let mut source = Document::new();
        let x1 = source.put(json!({"a": 1}).as_object().unwrap(), &node_meta(7, 1)).unwrap().remove(0);
        let y1 = source.put(json!({"a": 2}).as_object().unwrap(), &node_meta(8, 1)).unwrap().remove(0);
        assert!(y1.other_actor_ids().contains(x1.actor_id()), "the test needs a change naming another actor");
        let bad = forged(&y1, |c| c.deps = genesis_heads());

        let mut doc = Document::new();
        let refused = doc.apply_changes(vec![bad.clone()]).unwrap();
        assert_eq!(refused.iter().map(|r| r.hash).collect::<Vec<_>>(), vec![bad.hash()]);
        assert_eq!(doc.heads(), genesis_heads());
        // The honest pair, in either order, applies.
        let mut doc = Document::new();
        assert!(doc.apply_changes(vec![y1.clone(), x1.clone()]).unwrap().is_empty());
        assert_eq!(doc.to_json(), Some(json!({"a": 2})));
    }

    /// Three changes by one actor, each depending on the one before.
    fn chain_of_three() -> [Change; 3] {
        let mut source = Document::new();
        let x1 = source.put(json!({"a": 1}).as_object().unwrap(), &node_meta(7, 1)).unwrap().remove(0);
        let x2 = source.merge_patch(&json!({"b": 2}), &node_meta(7, 2)).unwrap().remove(0);
        let x3 = source.merge_patch(&json!({"c": 3}), &node_meta(7, 3)).unwrap().remove(0);
        [x1, x2, x3]
    }

    #[test]
    fn held_changes_wait_for_their_dependencies_and_are_checked_when_ready() {
        let [x1, x2, x3] = chain_of_three();

        // Out of order: the later changes wait for the first, then all apply.
        let mut doc = Document::new();
        assert!(doc.apply_changes(vec![x3.clone()]).unwrap().is_empty());
        assert!(doc.apply_changes(vec![x2.clone()]).unwrap().is_empty());
        assert_eq!(doc.held_count(), 2);
        assert_eq!(doc.missing_deps(), vec![x1.hash()]);
        assert_eq!(doc.heads(), genesis_heads(), "nothing held is visible");
        assert!(doc.apply_changes(vec![x1.clone()]).unwrap().is_empty());
        assert_eq!(doc.held_count(), 0);
        assert!(doc.missing_deps().is_empty());
        assert_eq!(doc.to_json(), Some(json!({"a": 1, "b": 2, "c": 3})));

        // A forged change held for a dependency is checked once that arrives:
        // the dependency applies, the forgery is refused, nothing panics.
        let mut other = Document::new();
        let z1 = other.put(json!({"z": 1}).as_object().unwrap(), &node_meta(9, 1)).unwrap().remove(0);
        let bad = forged(&x1, |c| {
            c.seq = 5;
            c.deps = vec![z1.hash()];
        });
        let mut doc = Document::new();
        assert!(doc.apply_changes(vec![bad.clone()]).unwrap().is_empty());
        assert_eq!(doc.held_count(), 1);
        let refused = doc.apply_changes(vec![z1.clone()]).unwrap();
        assert_eq!(refused.iter().map(|r| r.hash).collect::<Vec<_>>(), vec![bad.hash()]);
        assert_eq!(doc.held_count(), 0);
        assert_eq!(doc.to_json(), Some(json!({"z": 1})));
    }

    #[test]
    fn past_its_room_a_change_that_would_wait_is_deferred_and_earlier_held_ones_stay() {
        let [x1, x2, x3] = chain_of_three();

        let mut doc = Document::new();
        assert_eq!(doc.apply_changes_within(vec![x3.clone()], 1).unwrap(), NotApplied::default());
        assert_eq!(doc.held_count(), 1);
        // No room: x2 would wait too, so it is deferred; x3 stays held.
        let not = doc.apply_changes_within(vec![x2.clone()], 0).unwrap();
        assert_eq!(not, NotApplied { refused: Vec::new(), deferred: vec![x2.hash()] });
        assert_eq!(doc.held_count(), 1);
        assert!(!doc.has_change(&x2.hash()));
        // A ready change needs no room.
        assert_eq!(doc.apply_changes_within(vec![x1.clone()], 0).unwrap(), NotApplied::default());
        assert_eq!(doc.to_json(), Some(json!({"a": 1})));
        assert_eq!(doc.held_count(), 1, "x3 still waits for x2");
        // Offered again, x2 applies and releases x3.
        assert_eq!(doc.apply_changes_within(vec![x2.clone()], 0).unwrap(), NotApplied::default());
        assert_eq!(doc.held_count(), 0);
        assert_eq!(doc.to_json(), Some(json!({"a": 1, "b": 2, "c": 3})));

        // `apply_changes` holds up to HELD_MAX and refuses past it, saying why.
        // (A full queue stood in for by one held change counted HELD_MAX times.)
        let mut doc = Document::new();
        let full: Vec<Change> = std::iter::repeat_n(x3.clone(), HELD_MAX).collect();
        doc.held = full;
        let refused = doc.apply_changes(vec![x2.clone()]).unwrap();
        assert_eq!(refused.iter().map(|r| r.hash).collect::<Vec<_>>(), vec![x2.hash()]);
        assert!(refused[0].reason.contains("already holds"), "{}", refused[0].reason);
    }

    #[test]
    fn a_refused_first_change_introduces_nobody() {
        // X's forged first change names an unknown actor W and is refused.
        // X's second change, forged to depend on genesis only, is ready in
        // the same batch and was introduced only by that first change: it
        // must be refused too, not handed to automerge with X unregistered.
        let mut source = Document::new();
        let x1 = source.put(json!({"a": 1}).as_object().unwrap(), &node_meta(7, 1)).unwrap().remove(0);
        let x2 = source.merge_patch(&json!({"b": 2}), &node_meta(7, 2)).unwrap().remove(0);
        let w = NodeId(6).actor();
        let x1_bad = forged(&x1, |c| c.operations[0].pred = vec![automerge::legacy::OpId(1, w)].into());
        let x2_bad = forged(&x2, |c| c.deps = genesis_heads());
        let mut doc = Document::new();
        let refused = doc.apply_changes(vec![x1_bad.clone(), x2_bad.clone()]).unwrap();
        let mut hashes: Vec<ChangeHash> = refused.iter().map(|r| r.hash).collect();
        hashes.sort();
        let mut expected = vec![x1_bad.hash(), x2_bad.hash()];
        expected.sort();
        assert_eq!(hashes, expected, "{refused:?}");
        assert_eq!(doc.heads(), genesis_heads());
    }

    #[test]
    fn increments_that_leave_i64_are_refused() {
        // Found by the json_patch fuzz target: i64::MAX + 1 wrapped to i64::MIN,
        // and u64::MAX was taken for -1.
        let mut doc = Document::new();
        doc.put(json!({"int": i64::MAX, "big": u64::MAX}).as_object().unwrap(), &meta(1)).unwrap();
        for path in ["/int", "/big"] {
            let err = increment(&mut doc, 2, path, 1).unwrap_err();
            assert!(matches!(err, DocumentError::PatchFailed { conflict: true, .. }), "{err}");
        }
        increment(&mut doc, 2, "/views", i64::MAX).unwrap();
        assert!(increment(&mut doc, 3, "/views", 1).is_err());
        increment(&mut doc, 3, "/views", -1).unwrap();
        assert_eq!(doc.to_json().unwrap(), json!({"int": i64::MAX, "big": u64::MAX, "views": i64::MAX - 1}));
    }
}
