//! The document cache changes nothing a client or a peer can see: a replica
//! that evicts aggressively (one resident document) and one that never evicts
//! go through the same random local writes, remote changes, checkpoints and
//! restarts, and must agree on every document, the digest and the vectors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use meridian_crdt::{ChangeRecord, ColdStore, DocId, Hlc, NodeId, Replica, WriteOp};
use proptest::prelude::*;
use serde_json::json;

/// The "disk": snapshots by document, shared with the replica.
#[derive(Default)]
struct MemStore {
    snapshots: Mutex<HashMap<String, Vec<u8>>>,
    fail: Mutex<bool>,
}

impl ColdStore for MemStore {
    fn load(&self, id: &DocId) -> Result<Option<Vec<u8>>, String> {
        if *self.fail.lock().unwrap() {
            return Err("disk on fire".into());
        }
        Ok(self.snapshots.lock().unwrap().get(id.as_str()).cloned())
    }
}

/// What a checkpoint does: save every resident document, then mark it persisted.
fn checkpoint(replica: &mut Replica, store: &MemStore) {
    let ids = replica.all_doc_ids(None, usize::MAX);
    for id in ids {
        if let Some(snapshot) = replica.snapshot_of(&id) {
            store.snapshots.lock().unwrap().insert(id.as_str().to_string(), snapshot.bytes);
            replica.mark_persisted(&id, snapshot.generation);
        }
    }
    replica.evict_over_limit();
}

fn doc(n: u8) -> DocId {
    DocId::new(&format!("doc-{n}")).unwrap()
}

#[derive(Clone, Debug)]
enum Step {
    Write(u8, i64),
    Delete(u8),
    Remote(u8, i64),
    Checkpoint,
    Persist(u8),
    Evict,
    Read(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..6, 0i64..100).prop_map(|(d, v)| Step::Write(d, v)),
        1 => (0u8..6).prop_map(Step::Delete),
        3 => (0u8..6, 0i64..100).prop_map(|(d, v)| Step::Remote(d, v)),
        1 => Just(Step::Checkpoint),
        2 => (0u8..6).prop_map(Step::Persist),
        2 => Just(Step::Evict),
        2 => (0u8..6).prop_map(Step::Read),
    ]
}

fn all_json(replica: &mut Replica) -> Vec<(String, Option<serde_json::Value>, String)> {
    let ids = replica.all_doc_ids(None, usize::MAX);
    ids.into_iter()
        .map(|id| {
            let state = replica.resident(&id).expect("loads").expect("known");
            (id.as_str().to_string(), state.doc.to_json(), state.doc.etag())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn eviction_is_invisible(steps in proptest::collection::vec(step(), 1..60)) {
        let store = Arc::new(MemStore::default());
        let mut cached = Replica::new(NodeId(1));
        cached.set_cache(store.clone(), 1);
        let mut plain = Replica::new(NodeId(1));
        let mut remote = Replica::new(NodeId(2));
        let mut clock = 1u64;
        for step in &steps {
            clock += 1;
            let hlc = Hlc::new(clock, 0);
            match step {
                Step::Write(d, v) => {
                    let op = WriteOp::MergePatch(json!({ "v": v, format!("k{v}"): d }));
                    let a = cached.local_write(&doc(*d), &op, hlc, None).map(|r| r.etag);
                    let b = plain.local_write(&doc(*d), &op, hlc, None).map(|r| r.etag);
                    prop_assert_eq!(a.ok(), b.ok());
                }
                Step::Delete(d) => {
                    let a = cached.local_write(&doc(*d), &WriteOp::Delete, hlc, None).is_ok();
                    let b = plain.local_write(&doc(*d), &WriteOp::Delete, hlc, None).is_ok();
                    prop_assert_eq!(a, b);
                }
                Step::Remote(d, v) => {
                    let op = WriteOp::MergePatch(json!({ "r": v }));
                    let record: ChangeRecord = remote.local_write(&doc(*d), &op, hlc, None).unwrap().record;
                    let a = cached.apply_records(vec![record.clone()]);
                    let b = plain.apply_records(vec![record]);
                    prop_assert_eq!(a, b);
                }
                Step::Checkpoint => checkpoint(&mut cached, &store),
                Step::Persist(d) => {
                    // One document's snapshot, as a state-transfer install writes it.
                    if let Some(snapshot) = cached.snapshot_of(&doc(*d)) {
                        store.snapshots.lock().unwrap().insert(doc(*d).as_str().to_string(), snapshot.bytes);
                        cached.mark_persisted(&doc(*d), snapshot.generation);
                    }
                }
                Step::Evict => {
                    cached.evict_over_limit();
                }
                Step::Read(d) => {
                    let a = cached.resident(&doc(*d)).unwrap().map(|s| (s.doc.to_json(), s.max_hlc));
                    let b = plain.document(&doc(*d)).map(|s| (s.doc.to_json(), s.max_hlc));
                    prop_assert_eq!(a, b);
                }
            }
            prop_assert_eq!(cached.digest(), plain.digest());
            prop_assert_eq!(cached.version_vector(), plain.version_vector());
            prop_assert_eq!(cached.list("", None, 100), plain.list("", None, 100));
        }
        checkpoint(&mut cached, &store);
        prop_assert!(cached.resident_count() <= 1, "{} resident", cached.resident_count());
        prop_assert_eq!(all_json(&mut cached), all_json(&mut plain));

        // A restart from the index rows alone: same documents, same digest.
        let mut restarted = Replica::new(NodeId(1));
        restarted.set_cache(store.clone(), 1);
        checkpoint(&mut cached, &store);
        let mut index = Vec::new();
        for id in cached.all_doc_ids(None, usize::MAX) {
            let entry = cached.resident(&id).unwrap().map(|_| ()).and_then(|_| cached.snapshot_of(&id)).unwrap().entry;
            index.push((id, entry));
        }
        restarted.restore_cold_all(index);
        restarted.restore_version_vector(cached.version_vector());
        prop_assert_eq!(restarted.digest(), plain.digest());
        prop_assert_eq!(all_json(&mut restarted), all_json(&mut plain));
    }
}

#[test]
fn only_persisted_documents_leave_memory() {
    let store = Arc::new(MemStore::default());
    let mut replica = Replica::new(NodeId(1));
    replica.set_cache(store.clone(), 1);
    for n in 0..3 {
        let op = WriteOp::MergePatch(json!({ "n": n }));
        replica.local_write(&doc(n), &op, Hlc::new(10 + u64::from(n), 0), None).unwrap();
    }
    assert_eq!(replica.evict_over_limit(), 0, "nothing is persisted yet");
    assert_eq!(replica.resident_count(), 3);
    // Persist doc-0 and doc-1, then change doc-1 again: only doc-0 may go.
    for n in 0..2 {
        let snapshot = replica.snapshot_of(&doc(n)).unwrap();
        store.snapshots.lock().unwrap().insert(doc(n).as_str().to_string(), snapshot.bytes);
        replica.mark_persisted(&doc(n), snapshot.generation);
    }
    replica.local_write(&doc(1), &WriteOp::MergePatch(json!({ "again": true })), Hlc::new(20, 0), None).unwrap();
    assert_eq!(replica.evict_over_limit(), 1);
    assert!(replica.document(&doc(0)).is_none(), "doc-0 is cold");
    assert_eq!(replica.resident(&doc(1)).unwrap().unwrap().doc.to_json(), Some(json!({ "n": 1, "again": true })));
    assert_eq!(replica.resident(&doc(0)).unwrap().unwrap().doc.to_json(), Some(json!({ "n": 0 })));
    assert_eq!(replica.cold_loads(), 1);
}

#[test]
fn a_store_that_fails_changes_nothing() {
    let store = Arc::new(MemStore::default());
    let mut replica = Replica::new(NodeId(1));
    replica.set_cache(store.clone(), 1);
    let mut remote = Replica::new(NodeId(2));
    for n in 0..2 {
        replica.local_write(&doc(n), &WriteOp::MergePatch(json!({ "n": n })), Hlc::new(10, 0), None).unwrap();
    }
    checkpoint(&mut replica, &store);
    assert_eq!(replica.resident_count(), 1);
    let cold = if replica.document(&doc(0)).is_none() { doc(0) } else { doc(1) };
    let (digest, vv) = (replica.digest(), replica.version_vector().clone());
    *store.fail.lock().unwrap() = true;
    let err = replica.local_write(&cold, &WriteOp::MergePatch(json!({ "x": 1 })), Hlc::new(11, 0), None).unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert!(replica.resident(&cold).is_err());
    let record =
        remote.local_write(&cold, &WriteOp::MergePatch(json!({ "y": 1 })), Hlc::new(12, 0), None).unwrap().record;
    let outcome = replica.apply_records(vec![record.clone()]);
    assert_eq!((outcome.applied, outcome.unloadable.len()), (0, 1), "{outcome:?}");
    assert_eq!((replica.digest(), replica.version_vector()), (digest, &vv), "nothing changed");
    // Once the store is back, the same delivery applies.
    *store.fail.lock().unwrap() = false;
    assert_eq!(replica.apply_records(vec![record]).applied, 1);
    assert_eq!(replica.resident(&cold).unwrap().unwrap().doc.to_json().unwrap()["y"], json!(1));
}
