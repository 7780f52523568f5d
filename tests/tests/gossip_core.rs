//! The gossip protocol core on the deterministic in-memory network:
//! convergence, line topology, joining through one seed with state transfer
//! after log truncation, and refusal of hostile input.

use std::time::Duration;

use meridian_crdt::patch::parse_patch;
use meridian_crdt::WriteOp;
use meridian_gossip::message::{Hello, MemberInfo, Message, PROTOCOL_VERSION};
use meridian_tests::sim::Sim;
use serde_json::json;

fn increment(n: i64) -> WriteOp {
    WriteOp::JsonPatch(parse_patch(&json!([{"op":"increment","path":"/n","value":n}])).unwrap())
}

fn put(value: serde_json::Value) -> WriteOp {
    WriteOp::Put(value.as_object().unwrap().clone())
}

fn counter(sim: &Sim, index: usize, doc: &str) -> i64 {
    let id = meridian_crdt::DocId::new(doc).unwrap();
    sim.nodes[index].replica.document(&id).and_then(|s| s.doc.to_json()).map_or(0, |j| j["n"].as_i64().unwrap_or(0))
}

#[test]
fn three_nodes_converge_from_one_seed() {
    let mut sim = Sim::new(Duration::from_millis(20));
    let a = sim.add_node("us-east", &[]);
    let b = sim.add_node("eu-west", &[a]);
    let c = sim.add_node("ap-southeast", &[a]);
    sim.run(Duration::from_millis(500));
    for round in 0..20 {
        for node in [a, b, c] {
            sim.write(node, "shared", increment(1));
            sim.write(node, &format!("own/{node}/{round}"), put(json!({"round": round})));
        }
        sim.run(Duration::from_millis(3));
    }
    let took = sim
        .run_until_converged(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("did not converge\n{}", sim.describe()));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    for node in [a, b, c] {
        assert_eq!(counter(&sim, node, "shared"), 60);
    }
}

#[test]
fn line_topology_converges_through_the_middle() {
    let mut sim = Sim::new(Duration::from_millis(10));
    let a = sim.add_node("a", &[]);
    let b = sim.add_node("b", &[a]);
    let c = sim.add_node("c", &[b]);
    sim.cut(a, c, true);
    sim.run(Duration::from_millis(300));
    for i in 0..10 {
        sim.write(a, "from-a", increment(1));
        sim.write(c, &format!("from-c/{i}"), put(json!({"i": i})));
    }
    sim.run_until_converged(Duration::from_secs(5)).expect("line topology did not converge");
    assert_eq!(counter(&sim, c, "from-a"), 10);
}

#[test]
fn partition_then_heal_converges() {
    let mut sim = Sim::new(Duration::from_millis(30));
    let a = sim.add_node("a", &[]);
    let b = sim.add_node("b", &[a]);
    let c = sim.add_node("c", &[a]);
    sim.run(Duration::from_millis(300));
    sim.cut(a, c, true);
    sim.cut(b, c, true);
    for _ in 0..15 {
        sim.write(a, "x", increment(1));
        sim.write(c, "x", increment(10));
        sim.run(Duration::from_millis(5));
    }
    sim.run(Duration::from_millis(500));
    assert!(!sim.converged());
    sim.cut(a, c, false);
    sim.cut(b, c, false);
    sim.run_until_converged(Duration::from_secs(10)).expect("no convergence after heal");
    assert_eq!(counter(&sim, b, "x"), 165);
}

#[test]
fn a_long_partition_heals_within_two_seconds() {
    // A minute of failed dials grows the redial backoff to its maximum (5 s);
    // after the heal, the first side whose dial gets through brings the other back at once.
    let mut sim = Sim::new(Duration::from_millis(5));
    let a = sim.add_node("a", &[]);
    let b = sim.add_node("b", &[a]);
    sim.run(Duration::from_millis(300));
    sim.cut(a, b, true);
    for _ in 0..60 {
        sim.write(a, "x", increment(1));
        sim.write(b, "x", increment(10));
        sim.run(Duration::from_secs(1));
    }
    assert!(!sim.converged());
    sim.cut(a, b, false);
    let took = sim.run_until_converged(Duration::from_secs(10)).expect("no convergence after heal");
    assert!(took <= Duration::from_secs(2), "converged {took:?} after the heal");
    assert_eq!(counter(&sim, b, "x"), 660);
}

#[test]
fn a_late_joiner_gets_truncated_history_by_state_transfer() {
    let mut sim = Sim::new(Duration::from_millis(5));
    let a = sim.add_node("a", &[]);
    let b = sim.add_node("b", &[a]);
    sim.run(Duration::from_millis(300));
    for i in 0..30 {
        sim.write(a, &format!("doc/{}", i % 5), increment(1));
        sim.write(b, "gone", put(json!({"i": i})));
    }
    sim.write(b, "gone", WriteOp::Delete);
    sim.run_until_converged(Duration::from_secs(5)).expect("a and b converge");
    // Truncation waits until every member's heartbeat shows it holds the changes.
    sim.run(Duration::from_millis(300));
    for node in [a, b] {
        let point = sim.nodes[node].gossip.truncation_point(&sim.nodes[node].replica);
        for (origin, upto) in point {
            sim.nodes[node].replica.log_mut().truncate(origin, upto);
        }
        assert!(sim.nodes[node].replica.log().is_empty());
    }
    let d = sim.add_node("d", &[b]);
    sim.run_until_converged(Duration::from_secs(10)).expect("the joiner did not converge");
    assert_eq!(counter(&sim, d, "doc/0"), 6);
    assert!(sim.nodes[d]
        .replica
        .document(&meridian_crdt::DocId::new("gone").unwrap())
        .unwrap()
        .doc
        .to_json()
        .is_none());
    // And the log tail after the transfer still flows.
    sim.write(a, "doc/0", increment(1));
    sim.run_until_converged(Duration::from_secs(5)).expect("tail after transfer");
    assert_eq!(counter(&sim, d, "doc/0"), 7);
}

#[test]
fn hostile_frames_are_refused_and_counted() {
    let mut sim = Sim::new(Duration::from_millis(5));
    let a = sim.add_node("a", &[]);
    sim.inject(a, &[0xff, 0x00, 0x01]);
    assert_eq!(sim.nodes[a].gossip.counters().frames_refused, 1);
    let heartbeat_first = Message::Changes(vec![]).encode_frame();
    sim.inject(a, &heartbeat_first[4..]);
    assert_eq!(sim.nodes[a].gossip.counters().frames_refused, 2);
    let foreign = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster: "someone-else".into(),
        me: MemberInfo { node: meridian_crdt::NodeId(77), region: "x".into(), addr: "10.9.9.9:1".parse().unwrap() },
    })
    .encode_frame();
    sim.inject(a, &foreign[4..]);
    assert_eq!(sim.nodes[a].gossip.counters().peers_refused, 1);
    let reasons: Vec<&str> = sim.nodes[a].closed.iter().map(|(_, r)| r.as_str()).collect();
    assert!(reasons[0].contains("malformed"), "{reasons:?}");
    assert!(reasons[1].contains("before hello"), "{reasons:?}");
    assert!(reasons[2].contains("cluster"), "{reasons:?}");
    assert!(sim.nodes[a].gossip.members(sim.now).is_empty(), "a refused peer must not become a member");
}

/// Frames the core sent, decoded.
fn sent_messages(gossip: &mut meridian_gossip::Gossip) -> Vec<Message> {
    std::iter::from_fn(|| gossip.poll_transmit()).map(|t| Message::decode(&t.frame[4..]).unwrap()).collect()
}

#[test]
fn local_changes_not_yet_durable_are_never_advertised_or_sent() {
    use meridian_crdt::{DocId, Hlc, NodeId, Replica};
    use meridian_gossip::{Closed, Gossip, GossipConfig};
    use std::time::Instant;
    let now = Instant::now();
    let me = NodeId(1);
    let mut replica = Replica::new(me);
    let mut config = GossipConfig::new(me, "a", "c", "10.0.0.1:1".parse().unwrap());
    config.seeds = vec!["10.0.0.2:1".parse().unwrap()];
    let mut gossip = Gossip::new(config, now);
    gossip.handle_timeout(now, Hlc::new(1, 0), Closed { origin: me, t: Hlc::new(1, 0), n: 0 }, &replica);
    let addr = gossip.poll_dial().unwrap();
    gossip.handle_dial_result(now, addr, Ok(7));
    // The peer introduces itself on our inbound side and says it holds nothing.
    let peer = MemberInfo { node: NodeId(2), region: "b".into(), addr };
    let hello = Message::Hello(Hello { version: PROTOCOL_VERSION, cluster: "c".into(), me: peer }).encode_frame();
    gossip.handle_frame(now, 0, 9, meridian_gossip::StreamKind::Live, &hello[4..], &replica);
    // Two local writes; only the first is durable.
    let id = DocId::new("d").unwrap();
    let first = replica.local_write(&id, &put(json!({"v": 1})), Hlc::new(2, 0), None).unwrap();
    replica.local_write(&id, &put(json!({"v": 2})), Hlc::new(3, 0), None).unwrap();
    gossip.handle_local_records(now, &[first.record]);
    let _ = sent_messages(&mut gossip);
    gossip.handle_timeout(now, Hlc::new(4, 0), Closed { origin: me, t: Hlc::new(2, 0), n: 1 }, &replica);
    let empty = meridian_gossip::message::Heartbeat {
        hlc: Hlc::new(4, 0),
        vv: Default::default(),
        log_floor: vec![],
        members: vec![],
        applied: vec![],
        closed: vec![],
        digest: [0; 32],
        decommissioned: vec![],
    };
    let frame = Message::Heartbeat(empty).encode_frame();
    gossip.handle_frame(now, 0, 9, meridian_gossip::StreamKind::Live, &frame[4..], &replica);
    for message in sent_messages(&mut gossip) {
        match message {
            Message::Heartbeat(hb) => {
                assert_eq!(hb.vv.max(me), 1, "advertised a change that is not durable");
                assert!(hb.applied.iter().all(|(o, n)| *o != me || *n <= 1));
            }
            Message::Changes(records) => {
                assert!(
                    records.iter().all(|r| r.meta.seq <= 1),
                    "sent a change that is not durable: {:?}",
                    records.iter().map(|r| r.meta.seq).collect::<Vec<_>>()
                );
            }
            _ => {}
        }
    }
}

#[test]
fn a_state_transfer_with_a_missing_chunk_does_not_claim_its_vector() {
    use meridian_crdt::{Hlc, NodeId, Replica, VersionVector};
    use meridian_gossip::message::SnapshotChunk;
    use meridian_gossip::{Event, Gossip, GossipConfig, StreamKind};
    use std::time::Instant;
    let now = Instant::now();
    let replica = Replica::new(NodeId(1));
    let mut gossip = Gossip::new(GossipConfig::new(NodeId(1), "a", "c", "10.0.0.1:1".parse().unwrap()), now);
    let peer = MemberInfo { node: NodeId(2), region: "b".into(), addr: "10.0.0.2:1".parse().unwrap() };
    let deliver = |gossip: &mut Gossip, message: Message| {
        let frame = message.encode_frame();
        gossip.handle_frame(now, 0, 5, StreamKind::CatchUp, &frame[4..], &replica);
    };
    deliver(&mut gossip, Message::Hello(Hello { version: PROTOCOL_VERSION, cluster: "c".into(), me: peer }));
    let mut covers = VersionVector::new();
    covers.insert_range(NodeId(2), 1, 100);
    deliver(&mut gossip, Message::Snapshot(SnapshotChunk { transfer: 1, chunk: 0, docs: vec![], covers: None }));
    // Chunk 1 was lost; chunk 2 is the last and carries the vector.
    deliver(
        &mut gossip,
        Message::Snapshot(SnapshotChunk { transfer: 1, chunk: 2, docs: vec![], covers: Some(covers.clone()) }),
    );
    let claimed: Vec<bool> = std::iter::from_fn(|| gossip.poll_event())
        .filter_map(|e| match e {
            Event::Snapshot { covers, .. } => Some(covers.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(claimed, vec![false, false], "a transfer with a missing chunk must not claim its vector");
    // A complete transfer does.
    deliver(&mut gossip, Message::Snapshot(SnapshotChunk { transfer: 2, chunk: 0, docs: vec![], covers: None }));
    deliver(
        &mut gossip,
        Message::Snapshot(SnapshotChunk { transfer: 2, chunk: 1, docs: vec![], covers: Some(covers) }),
    );
    let claimed: Vec<bool> = std::iter::from_fn(|| gossip.poll_event())
        .filter_map(|e| match e {
            Event::Snapshot { covers, .. } => Some(covers.is_some()),
            _ => None,
        })
        .collect();
    assert_eq!(claimed, vec![false, true]);
    let _ = Hlc::zero();
}

#[test]
fn a_decommissioned_member_leaves_membership_and_safe_time_everywhere() {
    let mut sim = Sim::new(Duration::from_millis(10));
    let a = sim.add_node("us-east", &[]);
    let b = sim.add_node("eu-west", &[a]);
    let c = sim.add_node("ap-southeast", &[a]);
    sim.run(Duration::from_millis(500));
    sim.write(c, "from-c", put(json!({"x": 1})));
    sim.run_until_converged(Duration::from_secs(5)).unwrap_or_else(|| panic!("did not converge\n{}", sim.describe()));
    let c_id = sim.nodes[c].replica.node();
    // c stops for good: cut it off, and its staleness grows without bound at a.
    sim.cut(a, c, true);
    sim.cut(b, c, true);
    sim.run(Duration::from_secs(5));
    let stale = |sim: &Sim, i: usize| {
        let node = &sim.nodes[i];
        meridian_gossip::freshness::safe_time(&node.gossip, &node.replica, sim.wall_ns())
    };
    assert!(stale(&sim, a).origins.iter().any(|o| o.node == c_id && o.staleness_ms >= 4000));
    let node_a = &mut sim.nodes[a];
    let err = node_a.gossip.decommission(node_a.replica.node(), &node_a.replica).unwrap_err();
    assert_eq!(err, meridian_gossip::DecommissionError::Myself);
    let last = node_a.gossip.decommission(c_id, &node_a.replica).expect("decommission c");
    assert_eq!(last, 1, "c made one change");
    sim.run(Duration::from_millis(500));
    for i in [a, b] {
        let node = &sim.nodes[i];
        assert_eq!(node.gossip.decommissioned(c_id), Some(1), "node {i} learned of it by heartbeat");
        assert!(node.gossip.members(sim.now).iter().all(|m| m.info.node != c_id), "node {i} still lists c");
        let fresh = stale(&sim, i);
        assert!(fresh.origins.iter().all(|o| o.node != c_id), "c still counts towards safe time at node {i}");
        assert!(fresh.staleness_ms < 1000, "node {i} is {} ms stale", fresh.staleness_ms);
    }
    // Its change stays: decommissioning removes the member, not its data.
    let id = meridian_crdt::DocId::new("from-c").unwrap();
    assert!(sim.nodes[b].replica.document(&id).is_some_and(|s| s.doc.exists()));
}
