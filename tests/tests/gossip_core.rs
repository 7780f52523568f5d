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
