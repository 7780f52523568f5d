//! CRDT laws as property tests: replicas that receive the same changes in any
//! order, with duplicates, end identical; concurrent increments sum;
//! concurrent list appends all survive; concurrent PUTs to different fields
//! both survive; a delete concurrent with an update keeps the update.

use meridian_crdt::patch::parse_patch;
use meridian_crdt::{ChangeRecord, DocId, Hlc, NodeId, Replica, WriteOp};
use proptest::prelude::*;
use serde_json::{json, Value as Json};

fn doc() -> DocId {
    DocId::new("d").unwrap()
}

fn patch(ops: Json) -> WriteOp {
    WriteOp::JsonPatch(parse_patch(&ops).unwrap())
}

fn json_of(replica: &Replica) -> Option<Json> {
    replica.document(&doc()).and_then(|s| s.doc.to_json())
}

fn heads_of(replica: &Replica) -> Vec<automerge::ChangeHash> {
    replica.document(&doc()).map(|s| s.doc.heads()).unwrap_or_default()
}

/// A random client operation, as generated for the laws below.
#[derive(Clone, Debug)]
enum Op {
    SetField(u8, i64),
    RemoveField(u8),
    Increment(u8, i64),
    Append(i64),
    MergeNested(u8, Option<i64>),
    Delete,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, -5i64..5).prop_map(|(f, v)| Op::SetField(f, v)),
        (0u8..4).prop_map(Op::RemoveField),
        (0u8..2, -3i64..10).prop_map(|(f, v)| Op::Increment(f, v)),
        (0i64..100).prop_map(Op::Append),
        (0u8..3, proptest::option::of(0i64..9)).prop_map(|(f, v)| Op::MergeNested(f, v)),
        Just(Op::Delete),
    ]
}

fn to_write(op: &Op) -> WriteOp {
    match op {
        Op::SetField(f, v) => patch(json!([{"op":"add","path":format!("/f{f}"),"value":v}])),
        Op::RemoveField(f) => WriteOp::MergePatch(json!({ format!("f{f}"): null })),
        Op::Increment(f, v) => patch(json!([{"op":"increment","path":format!("/c{f}"),"value":v}])),
        Op::Append(v) => patch(json!([{"op":"add","path":"/items","value":[]}])).clone_if_absent(*v),
        Op::MergeNested(f, v) => WriteOp::MergePatch(json!({"nested": { format!("n{f}"): v }})),
        Op::Delete => WriteOp::Delete,
    }
}

trait AppendHelper {
    fn clone_if_absent(self, v: i64) -> WriteOp;
}

impl AppendHelper for WriteOp {
    /// Appends are written as `add /items/-`; the list is created by the
    /// first PUT of the scenario so appends never race on creating it.
    fn clone_if_absent(self, v: i64) -> WriteOp {
        patch(json!([{"op":"add","path":"/items/-","value":v}]))
    }
}

/// Runs each node's ops locally (each node seeing only its own writes), then
/// returns every record made.
fn run_concurrently(nodes: &mut [Replica], ops: &[(usize, Op)]) -> Vec<ChangeRecord> {
    let mut records = Vec::new();
    let mut clock = 1_000u64;
    for (node, op) in ops {
        clock += 1;
        let replica = &mut nodes[*node % nodes.len()];
        if let Ok(receipt) = replica.local_write(&doc(), &to_write(op), Hlc::new(clock, 0), None) {
            records.push(receipt.record);
        }
    }
    records
}

fn seeded_replicas(count: u64) -> (Vec<Replica>, ChangeRecord) {
    // A common starting point all replicas share: the list exists.
    let mut origin = Replica::new(NodeId(99));
    let seed = origin
        .local_write(&doc(), &WriteOp::Put(json!({"items": []}).as_object().unwrap().clone()), Hlc::new(1, 0), None)
        .unwrap()
        .record;
    let mut nodes: Vec<Replica> = (1..=count).map(|n| Replica::new(NodeId(n))).collect();
    for node in &mut nodes {
        node.apply_records(vec![seed.clone()]);
    }
    (nodes, seed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_order_with_duplicates_converges(
        ops in proptest::collection::vec((0usize..3, op_strategy()), 1..25),
        order_seed in any::<u64>(),
        batch in 1usize..6,
    ) {
        let (mut nodes, seed) = seeded_replicas(3);
        let mut records = run_concurrently(&mut nodes, &ops);
        records.push(seed);
        // Two observers receive every record: one in order, one shuffled with duplicates and in batches.
        let mut in_order = Replica::new(NodeId(1000));
        in_order.apply_records(records.clone());
        let mut shuffled_records = records.clone();
        shuffled_records.extend(records.iter().take(records.len() / 2).cloned());
        let mut state = order_seed | 1;
        for i in (1..shuffled_records.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled_records.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut shuffled = Replica::new(NodeId(1001));
        for chunk in shuffled_records.chunks(batch) {
            shuffled.apply_records(chunk.to_vec());
        }
        // And every writer receives everyone else's records.
        for node in &mut nodes {
            node.apply_records(records.clone());
        }
        let expected_json = json_of(&in_order);
        let expected_heads = heads_of(&in_order);
        prop_assert_eq!(json_of(&shuffled), expected_json.clone());
        prop_assert_eq!(heads_of(&shuffled), expected_heads.clone());
        for node in &nodes {
            prop_assert_eq!(json_of(node), expected_json.clone());
            prop_assert_eq!(heads_of(node), expected_heads.clone());
        }
        prop_assert_eq!(shuffled.version_vector(), in_order.version_vector());
        // Once everything is delivered, everything received is applied.
        prop_assert_eq!(shuffled.applied_version_vector(), shuffled.version_vector());
        prop_assert_eq!(shuffled.pending_count(), 0);
        // Snapshot reads: any cut in HLC order reads identically everywhere.
        let hlcs: Vec<u64> = records.iter().map(|r| r.meta.hlc.wall_ns()).collect();
        for &at in hlcs.iter().step_by(3) {
            let at = Hlc::new(at, 0);
            let read_at = |r: &Replica| r.document(&doc()).and_then(|s| s.doc.to_json_at(&s.doc.heads_at(at)));
            prop_assert_eq!(read_at(&shuffled), read_at(&in_order));
            for node in &nodes {
                prop_assert_eq!(read_at(node), read_at(&in_order));
            }
        }
        // Past every change, the snapshot is the current state.
        let end = Hlc::new(u64::MAX / 2, 0);
        let state = in_order.document(&doc()).unwrap();
        prop_assert_eq!(state.doc.heads_at(end), state.doc.heads());
        // The incrementally kept digest agrees wherever the states agree.
        prop_assert_eq!(shuffled.digest(), in_order.digest());
        for node in &nodes {
            prop_assert_eq!(node.digest(), in_order.digest());
        }
    }

    #[test]
    fn concurrent_increments_sum(incs in proptest::collection::vec((0usize..3, -50i64..50), 1..30)) {
        // The counter does not exist anywhere yet: each node creates it concurrently.
        let mut nodes: Vec<Replica> = (1..=3).map(|n| Replica::new(NodeId(n))).collect();
        let ops: Vec<(usize, Op)> = incs.iter().map(|&(n, v)| (n, Op::Increment(0, v))).collect();
        let records = run_concurrently(&mut nodes, &ops);
        for node in &mut nodes {
            node.apply_records(records.clone());
        }
        let total: i64 = incs.iter().map(|(_, v)| v).sum();
        for node in &nodes {
            prop_assert_eq!(json_of(node).unwrap()["c0"].as_i64(), Some(total));
        }
    }

    #[test]
    fn concurrent_appends_all_survive(appends in proptest::collection::vec((0usize..3, 0i64..1000), 1..30)) {
        let (mut nodes, _) = seeded_replicas(3);
        let ops: Vec<(usize, Op)> = appends.iter().map(|&(n, v)| (n, Op::Append(v))).collect();
        let records = run_concurrently(&mut nodes, &ops);
        for node in &mut nodes {
            node.apply_records(records.clone());
        }
        let mut expected: Vec<i64> = appends.iter().map(|(_, v)| *v).collect();
        expected.sort();
        for node in &nodes {
            let mut got: Vec<i64> = json_of(node).unwrap()["items"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            got.sort();
            prop_assert_eq!(&got, &expected);
        }
    }
}

#[test]
fn concurrent_puts_to_different_fields_both_survive() {
    // Neither replica has the document: both create it concurrently.
    let mut a = Replica::new(NodeId(1));
    let mut b = Replica::new(NodeId(2));
    let ra = a
        .local_write(
            &doc(),
            &WriteOp::Put(json!({"name": "ada", "shared": 1}).as_object().unwrap().clone()),
            Hlc::new(10, 0),
            None,
        )
        .unwrap();
    let rb = b
        .local_write(
            &doc(),
            &WriteOp::Put(json!({"city": "paris", "shared": 1}).as_object().unwrap().clone()),
            Hlc::new(11, 0),
            None,
        )
        .unwrap();
    a.apply_records(vec![rb.record.clone()]);
    b.apply_records(vec![ra.record.clone()]);
    let expected = json!({"name": "ada", "city": "paris", "shared": 1});
    assert_eq!(json_of(&a), Some(expected.clone()));
    assert_eq!(json_of(&b), Some(expected));
    // Then concurrent PUTs of the full document each changing one field.
    let ra = a
        .local_write(
            &doc(),
            &WriteOp::Put(json!({"name": "ada lovelace", "city": "paris", "shared": 1}).as_object().unwrap().clone()),
            Hlc::new(12, 0),
            None,
        )
        .unwrap();
    let rb = b
        .local_write(
            &doc(),
            &WriteOp::Put(json!({"name": "ada", "city": "london", "shared": 1}).as_object().unwrap().clone()),
            Hlc::new(13, 0),
            None,
        )
        .unwrap();
    a.apply_records(vec![rb.record]);
    b.apply_records(vec![ra.record]);
    let expected = json!({"name": "ada lovelace", "city": "london", "shared": 1});
    assert_eq!(json_of(&a), Some(expected.clone()));
    assert_eq!(json_of(&b), Some(expected));
}

#[test]
fn update_concurrent_with_delete_wins_with_its_own_fields() {
    let mut a = Replica::new(NodeId(1));
    let mut b = Replica::new(NodeId(2));
    let created = a
        .local_write(&doc(), &WriteOp::Put(json!({"x": 1, "y": 2}).as_object().unwrap().clone()), Hlc::new(1, 0), None)
        .unwrap();
    b.apply_records(vec![created.record]);
    let deleted = a.local_write(&doc(), &WriteOp::Delete, Hlc::new(2, 0), None).unwrap();
    let updated = b.local_write(&doc(), &WriteOp::MergePatch(json!({"y": 3, "z": 4})), Hlc::new(3, 0), None).unwrap();
    a.apply_records(vec![updated.record]);
    b.apply_records(vec![deleted.record]);
    // The update's fields survive; x, which only the delete touched, is gone.
    let expected = json!({"y": 3, "z": 4});
    assert_eq!(json_of(&a), Some(expected.clone()));
    assert_eq!(json_of(&b), Some(expected));
    // A delete after both is final.
    let deleted = a.local_write(&doc(), &WriteOp::Delete, Hlc::new(4, 0), None).unwrap();
    b.apply_records(vec![deleted.record]);
    assert_eq!(json_of(&a), None);
    assert_eq!(json_of(&b), None);
    assert_eq!(b.list("", None, 10).len(), 0);
}

#[test]
fn counter_reads_as_number_and_put_applies_the_difference() {
    let mut a = Replica::new(NodeId(1));
    let mut b = Replica::new(NodeId(2));
    let r = a
        .local_write(&doc(), &patch(json!([{"op":"increment","path":"/views","value":5}])), Hlc::new(1, 0), None)
        .unwrap();
    b.apply_records(vec![r.record]);
    assert_eq!(json_of(&b), Some(json!({"views": 5})));
    // A read-modify-write PUT at a, concurrent with an increment at b: both count.
    let ra = a
        .local_write(&doc(), &WriteOp::Put(json!({"views": 7}).as_object().unwrap().clone()), Hlc::new(2, 0), None)
        .unwrap();
    let rb = b
        .local_write(&doc(), &patch(json!([{"op":"increment","path":"/views","value":10}])), Hlc::new(3, 0), None)
        .unwrap();
    a.apply_records(vec![rb.record]);
    b.apply_records(vec![ra.record]);
    assert_eq!(json_of(&a), Some(json!({"views": 17})));
    assert_eq!(json_of(&b), Some(json!({"views": 17})));
}

#[test]
fn a_change_held_back_for_a_missing_dependency_is_received_but_not_applied() {
    let mut a = Replica::new(NodeId(1));
    let first = a
        .local_write(&doc(), &WriteOp::Put(json!({"v": 1}).as_object().unwrap().clone()), Hlc::new(1, 0), None)
        .unwrap();
    let second = a.local_write(&doc(), &WriteOp::MergePatch(json!({"v": 2})), Hlc::new(2, 0), None).unwrap();
    let mut b = Replica::new(NodeId(2));
    b.apply_records(vec![second.record]);
    assert!(b.version_vector().contains(NodeId(1), 2), "received");
    assert!(!b.applied_version_vector().contains(NodeId(1), 2), "not applied: its dependency is missing");
    assert_eq!(b.pending_count(), 1);
    b.apply_records(vec![first.record]);
    assert_eq!(b.applied_version_vector().contiguous(NodeId(1)), 2);
    assert_eq!(b.pending_count(), 0);
    assert_eq!(json_of(&b), Some(json!({"v": 2})));
}

#[test]
fn past_the_pending_limit_a_record_that_would_wait_is_deferred_not_received() {
    let mut a = Replica::new(NodeId(1));
    let records: Vec<ChangeRecord> = (1..=3)
        .map(|v| a.local_write(&doc(), &WriteOp::MergePatch(json!({"v": v})), Hlc::new(v, 0), None).unwrap().record)
        .collect();
    let mut b = Replica::new(NodeId(2));
    b.set_pending_max(1);
    // The third waits for the second; that takes the only place.
    let outcome = b.apply_records(vec![records[2].clone()]);
    assert!(outcome.deferred.is_empty());
    assert_eq!(b.pending_count(), 1);
    // The second would wait for the first: no room, so not taken at all.
    let outcome = b.apply_records(vec![records[1].clone()]);
    assert_eq!(outcome.deferred, vec![(NodeId(1), 2)]);
    assert_eq!(outcome.applied, 0);
    assert!(outcome.rejected.is_empty(), "deferred, not refused: {:?}", outcome.rejected);
    assert!(!b.version_vector().contains(NodeId(1), 2), "not received: a peer sends it again");
    assert!(b.version_vector().contains(NodeId(1), 3), "what was held stays received");
    assert_eq!(b.pending_count(), 1);
    // The first applies; the third still waits for the second, which comes again and applies.
    b.apply_records(vec![records[0].clone()]);
    assert_eq!(b.applied_version_vector().contiguous(NodeId(1)), 1);
    let outcome = b.apply_records(vec![records[1].clone()]);
    assert!(outcome.deferred.is_empty() && outcome.applied == 1, "{outcome:?}");
    assert_eq!(b.applied_version_vector().contiguous(NodeId(1)), 3);
    assert_eq!(b.pending_count(), 0);
    assert_eq!(json_of(&b), Some(json!({"v": 3})));
}

#[test]
fn snapshot_reads_see_exactly_the_changes_up_to_a_time() {
    let mut a = Replica::new(NodeId(1));
    a.local_write(&doc(), &WriteOp::Put(json!({"v": 1}).as_object().unwrap().clone()), Hlc::new(100, 0), None).unwrap();
    a.local_write(&doc(), &WriteOp::MergePatch(json!({"v": 2, "w": true})), Hlc::new(200, 0), None).unwrap();
    a.local_write(&doc(), &WriteOp::Delete, Hlc::new(300, 0), None).unwrap();
    let state = a.document(&doc()).unwrap();
    let at = |t: u64| state.doc.to_json_at(&state.doc.heads_at(Hlc::new(t, 0)));
    assert_eq!(at(50), None, "before creation the document did not exist");
    assert_eq!(at(100), Some(json!({"v": 1})));
    assert_eq!(at(250), Some(json!({"v": 2, "w": true})));
    assert_eq!(at(300), None, "deleted at 300");
}
