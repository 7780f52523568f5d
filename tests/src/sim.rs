//! A deterministic in-memory network for the gossip protocol core: virtual
//! time, single-threaded, one seed. Drives the real [`Gossip`] core and real
//! [`Replica`]s; nothing is mocked but the wire and the disk (records count as
//! durable as soon as they are applied).
//!
//! This is the seed of the whole-cluster simulation: faults so far are link
//! cuts (per direction) and a fixed one-way latency.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_crdt::{DocId, Document, Hlc, NodeId, Replica, WriteOp};
use meridian_gossip::core::{ConnId, Event, Gossip, GossipConfig, StreamKind};
use meridian_gossip::Closed;

/// One simulated node.
pub struct SimNode {
    /// The node's replica.
    pub replica: Replica,
    /// The node's protocol core.
    pub gossip: Gossip,
    /// Its peer address.
    pub addr: SocketAddr,
    /// Connections closed by the core (refusals), for assertions.
    pub closed: Vec<(ConnId, String)>,
    /// The last HLC this node issued; the next is strictly larger.
    last_hlc: Hlc,
}

impl SimNode {
    /// A fresh HLC at `wall_ns`, strictly above every one issued before.
    fn next_hlc(&mut self, wall_ns: u64) -> Hlc {
        let next = if wall_ns > self.last_hlc.wall_ns() {
            Hlc::new(wall_ns, 0)
        } else {
            Hlc::new(self.last_hlc.wall_ns(), self.last_hlc.logical() + 1)
        };
        self.last_hlc = next;
        next
    }
}

struct Delivery {
    at: Instant,
    conn: ConnId,
    stream: StreamKind,
    frame: Vec<u8>,
}

/// The simulated cluster.
pub struct Sim {
    /// Nodes by index.
    pub nodes: Vec<SimNode>,
    /// Virtual now.
    pub now: Instant,
    start: Instant,
    wall_start_ns: u64,
    latency: Duration,
    /// Directed cuts (from index, to index).
    pub cuts: BTreeSet<(usize, usize)>,
    conns: HashMap<ConnId, (usize, usize)>,
    in_flight: VecDeque<Delivery>,
    next_conn: ConnId,
    cluster: String,
}

impl Sim {
    /// An empty simulation with a fixed one-way latency.
    pub fn new(latency: Duration) -> Sim {
        let start = Instant::now();
        Sim {
            nodes: Vec::new(),
            now: start,
            start,
            wall_start_ns: 1_800_000_000_000_000_000,
            latency,
            cuts: BTreeSet::new(),
            conns: HashMap::new(),
            in_flight: VecDeque::new(),
            next_conn: 1,
            cluster: "sim".into(),
        }
    }

    /// Virtual wall-clock time in ns.
    pub fn wall_ns(&self) -> u64 {
        self.wall_start_ns + self.now.duration_since(self.start).as_nanos() as u64
    }

    /// Adds a node seeded with the addresses of the given nodes; returns its index.
    pub fn add_node(&mut self, region: &str, seeds: &[usize]) -> usize {
        let index = self.nodes.len();
        let node = NodeId(index as u64 + 1);
        let addr: SocketAddr = format!("10.0.0.{}:7171", index + 1).parse().expect("addr");
        let mut config = GossipConfig::new(node, region, &self.cluster, addr);
        config.seeds = seeds.iter().map(|&i| self.nodes[i].addr).collect();
        self.nodes.push(SimNode {
            replica: Replica::new(node),
            gossip: Gossip::new(config, self.now),
            addr,
            closed: Vec::new(),
            last_hlc: Hlc::zero(),
        });
        index
    }

    /// A local write at node `index`, pushed to peers as a durable change.
    pub fn write(&mut self, index: usize, doc: &str, op: WriteOp) {
        let (now, wall) = (self.now, self.wall_ns());
        let node = &mut self.nodes[index];
        let hlc = node.next_hlc(wall);
        let receipt = node.replica.local_write(&DocId::new(doc).expect("id"), &op, hlc, None).expect("write");
        node.gossip.handle_local_records(now, &[receipt.record]);
    }

    /// Cuts or heals both directions between two nodes.
    pub fn cut(&mut self, a: usize, b: usize, cut: bool) {
        for pair in [(a, b), (b, a)] {
            if cut {
                self.cuts.insert(pair);
            } else {
                self.cuts.remove(&pair);
            }
        }
    }

    /// Delivers a raw frame body to `to` on a fresh inbound connection (for hostile-input tests).
    pub fn inject(&mut self, to: usize, body: &[u8]) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (now, wall) = (self.now, self.wall_ns());
        let node = &mut self.nodes[to];
        node.gossip.handle_frame(now, wall, conn, StreamKind::Live, body, &node.replica);
        self.drain(to);
        conn
    }

    /// Runs for `duration` of virtual time in 1 ms steps.
    pub fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.step();
            self.now += Duration::from_millis(1);
        }
    }

    /// Runs until every node holds the same vector and documents, or `limit` passes; returns the time taken.
    pub fn run_until_converged(&mut self, limit: Duration) -> Option<Duration> {
        let began = self.now;
        while self.now.duration_since(began) < limit {
            self.run(Duration::from_millis(10));
            if self.converged() {
                return Some(self.now.duration_since(began));
            }
        }
        None
    }

    /// Whether all nodes hold the same changes and identical documents.
    pub fn converged(&self) -> bool {
        let first = &self.nodes[0].replica;
        self.nodes.iter().all(|n| n.replica.version_vector() == first.version_vector()) && {
            let view = |r: &Replica| -> BTreeMap<String, (Option<serde_json::Value>, String)> {
                r.all_doc_ids(None, usize::MAX)
                    .into_iter()
                    .filter_map(|id| r.document(&id).map(|s| (id.to_string(), (s.doc.to_json(), s.doc.etag()))))
                    .collect()
            };
            let expected = view(first);
            self.nodes.iter().all(|n| view(&n.replica) == expected)
        }
    }

    fn step(&mut self) {
        // Deliver what is due, in order.
        while self.in_flight.front().is_some_and(|d| d.at <= self.now) {
            let delivery = self.in_flight.pop_front().expect("front");
            let Some(&(from, to)) = self.conns.get(&delivery.conn) else {
                continue;
            };
            if self.cuts.contains(&(from, to)) {
                continue;
            }
            let (now, wall) = (self.now, self.wall_ns());
            let node = &mut self.nodes[to];
            node.gossip.handle_frame(now, wall, delivery.conn, delivery.stream, &delivery.frame[4..], &node.replica);
            self.drain(to);
        }
        for index in 0..self.nodes.len() {
            let (now, wall) = (self.now, self.wall_ns());
            let node = &mut self.nodes[index];
            if node.gossip.poll_timeout().is_some_and(|t| t <= now) {
                // Writes are durable at once here, so nothing is in flight:
                // closed up to now, at the last sequence number.
                let hlc = node.next_hlc(wall);
                let closed = Closed { origin: node.replica.node(), t: hlc, n: node.replica.last_seq() };
                node.gossip.handle_timeout(now, hlc, closed, &node.replica);
            }
            self.drain(index);
        }
    }

    /// Moves a node's outputs onto the simulated network and applies its events.
    fn drain(&mut self, index: usize) {
        let now = self.now;
        while let Some(addr) = self.nodes[index].gossip.poll_dial() {
            let target = self.nodes.iter().position(|n| n.addr == addr);
            let result = match target {
                Some(to) if !self.cuts.contains(&(index, to)) => {
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(conn, (index, to));
                    Ok(conn)
                }
                _ => Err("unreachable".to_string()),
            };
            self.nodes[index].gossip.handle_dial_result(now, addr, result);
        }
        while let Some(transmit) = self.nodes[index].gossip.poll_transmit() {
            let Some(&(from, to)) = self.conns.get(&transmit.conn) else {
                continue;
            };
            if self.cuts.contains(&(from, to)) {
                // A cut link breaks the connection, as QUIC's idle timeout would.
                self.conns.remove(&transmit.conn);
                self.nodes[from].gossip.handle_closed(now, transmit.conn);
                self.nodes[to].gossip.handle_closed(now, transmit.conn);
                continue;
            }
            self.in_flight.push_back(Delivery {
                at: now + self.latency,
                conn: transmit.conn,
                stream: transmit.stream,
                frame: transmit.frame,
            });
        }
        while let Some(event) = self.nodes[index].gossip.poll_event() {
            let node = &mut self.nodes[index];
            match event {
                Event::Records { records, .. } => {
                    node.replica.apply_records(records);
                }
                Event::Snapshot { docs, covers, .. } => {
                    for (id, bytes) in docs {
                        let doc = Document::load(&bytes).expect("snapshot loads");
                        node.replica.merge_document(id, doc).expect("merge");
                    }
                    if let Some(covers) = covers {
                        node.replica.restore_version_vector(&covers);
                    }
                }
                Event::PeerClock { .. } => {}
                Event::Close { conn, reason } => {
                    node.closed.push((conn, reason));
                    self.conns.remove(&conn);
                }
            }
        }
    }
}

impl Sim {
    /// A readable account of how nodes differ, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let first = &self.nodes[0].replica;
        for id in first.all_doc_ids(None, usize::MAX) {
            let views: Vec<String> = self
                .nodes
                .iter()
                .map(|n| {
                    n.replica
                        .document(&id)
                        .map(|s| {
                            format!(
                                "{:?} {} missing-deps {}",
                                s.doc.to_json(),
                                s.doc.etag(),
                                s.doc.missing_deps().len()
                            )
                        })
                        .unwrap_or_default()
                })
                .collect();
            if views.iter().any(|v| v != &views[0]) {
                out.push_str(&format!("doc {id} differs: {views:#?}\n"));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let members: Vec<String> = node
                .gossip
                .members(self.now)
                .iter()
                .map(|m| format!("{}:{}{}", m.info.region, m.state.as_str(), if m.connected { "+conn" } else { "" }))
                .collect();
            out.push_str(&format!(
                "node {i}: vv {:?} log {} docs {} members {:?}\n",
                serde_json::to_string(node.replica.version_vector()).unwrap_or_default(),
                node.replica.log().len(),
                node.replica.all_doc_ids(None, usize::MAX).len(),
                members
            ));
        }
        out
    }
}
