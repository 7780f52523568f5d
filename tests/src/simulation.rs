//! The deterministic whole-cluster simulation.
//!
//! One seed decides everything: how many nodes in how many regions, the
//! latency matrix, each node's clock skew and drift, the client workload and
//! the fault schedule. The run is single-threaded on virtual time and drives
//! the real protocol core ([`Gossip`]), the real replica ([`Replica`]) and the
//! real freshness code ([`meridian_gossip::freshness`]); only the wire, the
//! disk and the clocks are simulated, and each mirrors what the server does:
//!
//! - the network delivers frames after the link's latency and jitter, and can
//!   lose, duplicate and reorder them, cut links (both ways or one way) and
//!   break connections;
//! - the disk makes a local write durable after a simulated fsync, and a
//!   crash loses everything not yet durable; a restart recovers from
//!   snapshots plus log, as the server does, with the clock above the lease;
//! - clocks run with skew and drift, one node possibly beyond the maximum
//!   offset.
//!
//! Every client operation goes into a [`History`] judged by the shared
//! checkers in [`crate::history`]; the simulation adds the checks only it can
//! make, because it knows the truth: every per-origin closed timestamp a node
//! relied on must cover every change of that origin that ever became durable
//! with an HLC at or below it, HLCs are monotonic per node and respect
//! causality, and the cluster converges within a bound after the faults stop.
//!
//! [`Variant`]s break the node deliberately, so a test can show that the
//! checkers catch a broken build.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_crdt::{ChangeMeta, ChangeRecord, DocId, Document, Hlc, NodeId, Replica, Token, VersionVector, WriteOp};
use meridian_gossip::core::{ConnId, Event, Gossip, GossipConfig, StreamKind};
use meridian_gossip::freshness::{local_closed, safe_time};
use meridian_gossip::Closed;
use serde_json::json;

use crate::history::{
    check, FinalState, History, ReadOutcome, ReadRecord, Violation, WriteKind, WriteOutcome, WriteRecord,
};

/// Deliberately broken behaviours, to prove the checkers can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The node as built.
    Correct,
    /// One remote change in a thousand is recorded as received but its content dropped.
    DropsRemoteChanges,
    /// The node's closed timestamp ignores local writes that are not durable yet.
    ClosesEarly,
    /// `?after` reads answer without waiting for the token's changes.
    AfterDoesNotWait,
}

impl Variant {
    /// Every broken variant.
    pub const BROKEN: [Variant; 3] = [Variant::DropsRemoteChanges, Variant::ClosesEarly, Variant::AfterDoesNotWait];
}

/// A small deterministic generator (xorshift64*): the simulation's only source of randomness.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What one run does, all derived from the seed unless set by hand.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Behaviour under test.
    pub variant: Variant,
    /// Nodes at the start.
    pub nodes: usize,
    /// Nodes that join during the run.
    pub joins: usize,
    /// Whether one node is decommissioned during the run.
    pub decommission: bool,
    /// Regions (nodes are spread over them round-robin).
    pub regions: usize,
    /// How long clients write while faults happen.
    pub fault_phase: Duration,
    /// Mean time between client operations at each node.
    pub op_interval: Duration,
    /// Upper bound on the time to converge once faults stop.
    pub converge_within: Duration,
    /// Whether one node's clock runs beyond the maximum offset.
    pub clock_beyond_offset: bool,
}

/// The maximum clock offset the nodes are configured with.
pub const MAX_CLOCK_OFFSET: Duration = Duration::from_millis(500);

impl SimConfig {
    /// The configuration `seed` selects.
    pub fn from_seed(seed: u64, variant: Variant) -> SimConfig {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let nodes = rng.range(3, 7) as usize;
        SimConfig {
            seed,
            variant,
            nodes,
            joins: rng.below(3) as usize,
            decommission: rng.chance(0.5),
            regions: rng.range(2, nodes.min(5) as u64) as usize,
            fault_phase: Duration::from_secs(rng.range(12, 20)),
            op_interval: Duration::from_millis(rng.range(10, 40)),
            converge_within: Duration::from_secs(30),
            clock_beyond_offset: rng.chance(0.3),
        }
    }

    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        let variant = match self.variant {
            Variant::Correct => String::new(),
            other => format!("MERIDIAN_SIM_VARIANT={other:?} "),
        };
        format!(
            "{variant}MERIDIAN_SIM_SEED={} cargo test -p meridian-tests --test simulation seeds -- --nocapture",
            self.seed
        )
    }
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Report {
    /// What ran.
    pub config: SimConfig,
    /// Every broken claim.
    pub violations: Vec<Violation>,
    /// Virtual time from heal to convergence.
    pub converged_after: Option<Duration>,
    /// Counters, for the summary line.
    pub stats: Stats,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Acknowledged writes.
    pub writes_acked: u64,
    /// Writes refused.
    pub writes_failed: u64,
    /// Writes lost in crashes before they were durable (never acknowledged).
    pub writes_lost: u64,
    /// Reads answered.
    pub reads_ok: u64,
    /// Reads refused for freshness.
    pub reads_refused: u64,
    /// Freshness claims checked (reads and probes).
    pub claims: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Frames lost, duplicated.
    pub frames_lost: u64,
    /// Frames duplicated.
    pub frames_duplicated: u64,
    /// Crashes.
    pub crashes: u64,
    /// State-transfer snapshots installed.
    pub snapshots: u64,
    /// Fault events.
    pub faults: Vec<String>,
}

impl Report {
    /// One line for the log.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let s = &self.stats;
        format!(
            "seed {} {:?}: {} nodes (+{} joins{}) in {} regions{}; writes {} acked {} failed {} lost in crashes; reads {} ok {} refused; {} claims; frames {} ({} lost, {} duplicated); {} crashes, {} snapshot chunks, {} faults; converged {}",
            c.seed,
            c.variant,
            c.nodes,
            c.joins,
            if c.decommission { ", 1 decommissioned" } else { "" },
            c.regions,
            if c.clock_beyond_offset { ", one clock beyond the max offset" } else { "" },
            s.writes_acked,
            s.writes_failed,
            s.writes_lost,
            s.reads_ok,
            s.reads_refused,
            s.claims,
            s.frames,
            s.frames_lost,
            s.frames_duplicated,
            s.crashes,
            s.snapshots,
            s.faults.len(),
            self.converged_after.map_or("never".to_string(), |d| format!("{} ms after heal", d.as_millis())),
        )
    }
}

/// What survives a crash.
#[derive(Clone, Debug, Default)]
struct Disk {
    log: BTreeMap<(NodeId, u64), ChangeRecord>,
    snapshots: BTreeMap<DocId, Vec<u8>>,
    checkpoint: VersionVector,
    lease: Hlc,
    hlc_high: Hlc,
}

struct InFlight {
    record: ChangeRecord,
    durable_at: Instant,
    write: usize,
}

/// A running node: everything a crash takes away.
struct Live {
    replica: Replica,
    gossip: Gossip,
    /// The HLC clock's last value.
    clock: Hlc,
    in_flight: VecDeque<InFlight>,
    durable_seq: u64,
    lease: Hlc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Up,
    Down {
        until: Instant,
    },
    /// No new client operations; decommissioned once every change it made is held elsewhere.
    Draining,
    Decommissioned,
}

struct SimNode {
    id: NodeId,
    region: String,
    addr: SocketAddr,
    seeds: Vec<SocketAddr>,
    state: NodeState,
    live: Option<Live>,
    disk: Disk,
    skew_ns: i64,
    drift_ppm: i64,
    next_op: Instant,
    next_checkpoint: Instant,
    next_probe: Instant,
    /// The highest HLC any durable local write of this node carried (across restarts).
    last_durable_hlc: Hlc,
}

/// A per-origin freshness claim a node made, judged at the end against
/// every change that ever became durable.
struct Claim {
    node: usize,
    at_ms: u64,
    origin: NodeId,
    closed: Hlc,
    applied: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct LinkFault {
    cut: bool,
    loss: f64,
    duplicate: f64,
    reorder: bool,
}

struct Delivery {
    conn: ConnId,
    stream: StreamKind,
    frame: Vec<u8>,
}

/// A fault and when it ends.
struct ActiveFault {
    until: Instant,
    what: FaultKind,
}

enum FaultKind {
    Links(Vec<(usize, usize)>),
    Flaky(Vec<(usize, usize)>),
    Flapping { links: Vec<(usize, usize)>, period: Duration },
}

/// The simulated cluster.
pub struct Simulation {
    config: SimConfig,
    rng: Rng,
    nodes: Vec<SimNode>,
    now: Instant,
    start: Instant,
    wall_start_ns: u64,
    /// One-way latency between regions, ms.
    latency: Vec<Vec<u64>>,
    links: BTreeMap<(usize, usize), LinkFault>,
    conns: BTreeMap<ConnId, (usize, usize)>,
    deliveries: BTreeMap<(Instant, u64), Delivery>,
    fifo: BTreeMap<(ConnId, StreamKind), Instant>,
    delivery_seq: u64,
    next_conn: ConnId,
    faults: Vec<ActiveFault>,
    history: History,
    claims: Vec<Claim>,
    /// Per origin, every durable local change: (seq, hlc), in sequence order.
    durable: BTreeMap<NodeId, Vec<(u64, Hlc)>>,
    at_points: Vec<Hlc>,
    violations: Vec<Violation>,
    stats: Stats,
}

const SET_DOCS: u64 = 4;
const COUNTER_DOCS: u64 = 3;
const LIST_DOCS: u64 = 2;
const REGISTER_DOCS: u64 = 3;
const CLUSTER: &str = "sim";

impl Simulation {
    /// A cluster as `config` describes, nodes started and lists created.
    pub fn new(config: SimConfig) -> Simulation {
        let mut rng = Rng::new(config.seed);
        let regions = config.regions.max(1);
        let mut latency = vec![vec![0; regions]; regions];
        // A symmetric matrix is filled by index pairs: clearer than iterators here.
        #[allow(clippy::needless_range_loop)]
        for a in 0..regions {
            for b in a..regions {
                let ms = if a == b { rng.range(1, 3) } else { rng.range(10, 120) };
                latency[a][b] = ms;
                latency[b][a] = ms;
            }
        }
        let start = Instant::now();
        let mut sim = Simulation {
            rng,
            nodes: Vec::new(),
            now: start,
            start,
            wall_start_ns: 1_800_000_000_000_000_000,
            latency,
            links: BTreeMap::new(),
            conns: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            fifo: BTreeMap::new(),
            delivery_seq: 0,
            next_conn: 1,
            faults: Vec::new(),
            history: History::default(),
            claims: Vec::new(),
            durable: BTreeMap::new(),
            at_points: Vec::new(),
            violations: Vec::new(),
            stats: Stats::default(),
            config,
        };
        for _ in 0..sim.config.nodes {
            sim.add_node();
        }
        sim
    }

    fn elapsed_ms(&self) -> u64 {
        self.now.duration_since(self.start).as_millis() as u64
    }

    /// Node `index`'s wall clock: true time plus its skew and drift.
    fn wall_ns(&self, index: usize) -> u64 {
        let node = &self.nodes[index];
        let elapsed = self.now.duration_since(self.start).as_nanos() as i64;
        let drift = elapsed / 1_000_000 * node.drift_ppm;
        (self.wall_start_ns as i64 + elapsed + node.skew_ns + drift) as u64
    }

    fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let region = format!("r{}", index % self.config.regions.max(1));
        let addr: SocketAddr = format!("10.0.0.{}:7171", index + 1).parse().expect("addr");
        // A new node knows one or two existing members; gossip spreads the rest.
        // Operators give a joining node members that are still in the cluster.
        let members: Vec<usize> = (0..index)
            .filter(|&i| !matches!(self.nodes[i].state, NodeState::Decommissioned | NodeState::Draining))
            .collect();
        let mut seeds = Vec::new();
        if !members.is_empty() {
            seeds.push(self.nodes[*self.rng.pick(&members)].addr);
            seeds.push(self.nodes[*self.rng.pick(&members)].addr);
        }
        let (skew_ns, drift_ppm) = if self.config.clock_beyond_offset && index == 1 {
            // Far beyond the maximum offset: its clock must not drag others along.
            ((MAX_CLOCK_OFFSET.as_nanos() as i64) * 3, 0)
        } else {
            (self.rng.range(0, 100_000_000) as i64 - 50_000_000, self.rng.range(0, 200) as i64 - 100)
        };
        self.nodes.push(SimNode {
            id: NodeId(index as u64 + 1),
            region,
            addr,
            seeds,
            state: NodeState::Up,
            live: None,
            disk: Disk::default(),
            skew_ns,
            drift_ppm,
            next_op: self.now,
            next_checkpoint: self.now + Duration::from_millis(self.rng.range(500, 1500)),
            next_probe: self.now,
            last_durable_hlc: Hlc::zero(),
        });
        self.boot(index);
        index
    }

    /// Starts node `index` from its disk, as the server's recovery does.
    fn boot(&mut self, index: usize) {
        let wall = self.wall_ns(index);
        let now = self.now;
        let node = &mut self.nodes[index];
        let mut replica = Replica::new(node.id);
        for (id, bytes) in &node.disk.snapshots {
            replica.insert_document(id.clone(), Document::load(bytes).expect("snapshot loads"));
        }
        replica.restore_version_vector(&node.disk.checkpoint);
        let outcome = replica.apply_records(node.disk.log.values().cloned().collect());
        assert!(outcome.rejected.is_empty(), "recovery rejected records: {:?}", outcome.rejected);
        let mut config = GossipConfig::new(node.id, &node.region, CLUSTER, node.addr);
        config.seeds = node.seeds.clone();
        config.seed = self.config.seed ^ node.id.0;
        config.joined = replica.last_seq() > 0;
        let clock = Hlc::new(wall, 0).max(node.disk.hlc_high).max(node.disk.lease);
        let durable_seq = replica.last_seq();
        node.live = Some(Live {
            replica,
            gossip: Gossip::new(config, now),
            clock,
            in_flight: VecDeque::new(),
            durable_seq,
            lease: node.disk.lease,
        });
        node.state = NodeState::Up;
    }

    fn next_hlc(&mut self, index: usize) -> Hlc {
        let wall = self.wall_ns(index);
        let live = self.nodes[index].live.as_mut().expect("up");
        live.clock = if wall > live.clock.wall_ns() { Hlc::new(wall, 0) } else { live.clock.successor() };
        live.clock
    }

    /// Observes a peer's HLC unless it is beyond the maximum offset ahead of our wall clock.
    fn observe(&mut self, index: usize, hlc: Hlc) {
        let limit = self.wall_ns(index) + MAX_CLOCK_OFFSET.as_nanos() as u64;
        if hlc.wall_ns() <= limit {
            let live = self.nodes[index].live.as_mut().expect("up");
            live.clock = live.clock.max(hlc);
        }
    }

    /// Runs the whole scenario and judges it.
    pub fn run(mut self) -> Report {
        // Lists are created once, at one node, before anyone appends: two
        // regions creating the same list concurrently would make two list
        // objects, and appends to the losing one would vanish (documented).
        for k in 0..LIST_DOCS {
            let index = self.client_write(0, format!("list/{k}"), WriteKind::Other { what: "create list".into() }, {
                WriteOp::Put(json!({"items": []}).as_object().cloned().expect("object"))
            });
            let _ = index;
        }
        self.advance(Duration::from_secs(2), false);
        let fault_end = self.now + self.config.fault_phase;
        let mut joins_left = self.config.joins;
        let mut decommission_pending = self.config.decommission;
        let mut next_fault = self.now + Duration::from_millis(500);
        while self.now < fault_end {
            if self.now >= next_fault {
                next_fault = self.now + Duration::from_millis(self.rng.range(400, 2500));
                if joins_left > 0 && self.rng.chance(0.15) {
                    joins_left -= 1;
                    let index = self.add_node();
                    self.stats.faults.push(format!("{} ms: node {index} joins", self.elapsed_ms()));
                } else if decommission_pending && self.rng.chance(0.1) {
                    decommission_pending = false;
                    self.start_draining();
                } else {
                    self.start_fault();
                }
            }
            self.advance(Duration::from_millis(1), true);
        }
        while joins_left > 0 {
            joins_left -= 1;
            self.add_node();
        }
        if decommission_pending {
            self.start_draining();
        }
        self.heal_all();
        let healed = self.now;
        let mut converged_after = None;
        while self.now.duration_since(healed) < self.config.converge_within {
            self.advance(Duration::from_millis(10), false);
            if self.converged() {
                converged_after = Some(self.now.duration_since(healed));
                break;
            }
        }
        if converged_after.is_none() {
            let detail = format!(
                "not converged {} s after the faults stopped:\n{}",
                self.config.converge_within.as_secs(),
                self.describe()
            );
            self.violations.push(Violation { checker: "convergence", detail });
        }
        // Settle: let closed timestamps pass every write, then read everything everywhere.
        self.advance(Duration::from_millis(500), false);
        self.final_reads();
        self.judge(converged_after)
    }

    fn final_reads(&mut self) {
        let docs = self.touched_docs();
        let points = self.at_points.clone();
        for index in self.live_nodes() {
            for doc in &docs {
                self.read(index, doc.clone(), None, None, None);
                for &at in points.iter().take(4) {
                    self.read(index, doc.clone(), None, Some(at), None);
                }
            }
        }
    }

    fn touched_docs(&self) -> Vec<String> {
        let set: BTreeSet<String> = self.history.writes.iter().map(|w| w.doc.clone()).collect();
        set.into_iter().collect()
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].live.is_some()).collect()
    }

    fn judge(mut self, converged_after: Option<Duration>) -> Report {
        let docs = self.touched_docs();
        let finals: Vec<FinalState> = self
            .live_nodes()
            .into_iter()
            .map(|index| {
                let replica = &self.nodes[index].live.as_ref().expect("live").replica;
                FinalState {
                    node: index,
                    docs: docs
                        .iter()
                        .map(|d| {
                            (d.clone(), replica.document(&DocId::new(d).expect("id")).and_then(|s| s.doc.to_json()))
                        })
                        .collect(),
                    digest: hex(&replica.digest()),
                }
            })
            .collect();
        let mut violations = std::mem::take(&mut self.violations);
        if converged_after.is_some() {
            violations.extend(check(&self.history, &finals));
        } else {
            // Not converged: the final-state checkers would only repeat it; reads are still judged.
            let first = finals.get(..1).unwrap_or(&[]);
            violations.extend(check(&self.history, first).into_iter().filter(|v| v.checker != "lost-write"));
        }
        violations.extend(self.check_claims());
        violations.extend(self.check_causality());
        Report { config: self.config, violations, converged_after, stats: self.stats }
    }

    /// Every per-origin closed timestamp a node relied on must cover every
    /// change of that origin that became durable with an HLC at or below it.
    fn check_claims(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        for claim in &self.claims {
            let Some(changes) = self.durable.get(&claim.origin) else { continue };
            // Per origin, HLC order is sequence order, so the changes at or below
            // the claim are a prefix.
            let covered = changes.partition_point(|(_, hlc)| *hlc <= claim.closed);
            if covered == 0 {
                continue;
            }
            let (seq, hlc) = changes[covered - 1];
            if seq > claim.applied {
                out.push(Violation {
                    checker: "staleness",
                    detail: format!(
                        "at {} ms node {} claimed origin {} closed at {} with changes up to {} applied, but its change {seq} (HLC {hlc}) is at or below that and was not applied",
                        claim.at_ms, claim.node, claim.origin, claim.closed, claim.applied
                    ),
                });
                if out.len() > 20 {
                    break;
                }
            }
        }
        out
    }

    /// A change's HLC exceeds the HLCs of the changes it depends on.
    fn check_causality(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        let Some(index) = self.live_nodes().first().copied() else { return out };
        let replica = &self.nodes[index].live.as_ref().expect("live").replica;
        for id in replica.all_doc_ids(None, usize::MAX) {
            let Some(state) = replica.document(&id) else { continue };
            let changes = state.doc.automerge().get_changes(&[]);
            let metas: BTreeMap<automerge::ChangeHash, Option<ChangeMeta>> =
                changes.iter().map(|c| (c.hash(), c.message().and_then(ChangeMeta::from_message))).collect();
            for change in &changes {
                let Some(Some(meta)) = metas.get(&change.hash()) else { continue };
                for dep in change.deps() {
                    if let Some(Some(dep_meta)) = metas.get(dep) {
                        if dep_meta.hlc >= meta.hlc {
                            out.push(Violation {
                                checker: "hlc-causality",
                                detail: format!(
                                    "in {id}: change ({}, {}) at {} depends on ({}, {}) at {}",
                                    meta.origin, meta.seq, meta.hlc, dep_meta.origin, dep_meta.seq, dep_meta.hlc
                                ),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// Advances virtual time by `duration` in 1 ms steps; clients run when `clients`.
    fn advance(&mut self, duration: Duration, clients: bool) {
        let end = self.now + duration;
        while self.now < end {
            self.step(clients);
            self.now += Duration::from_millis(1);
        }
    }

    fn step(&mut self, clients: bool) {
        self.expire_faults();
        for index in 0..self.nodes.len() {
            if let NodeState::Down { until } = self.nodes[index].state {
                if self.now >= until {
                    self.boot(index);
                }
            }
        }
        // Frames due now, in order.
        while let Some(entry) = self.deliveries.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let delivery = entry.remove();
            self.deliver(delivery);
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].live.is_none() {
                continue;
            }
            self.complete_fsyncs(index);
            if clients && self.nodes[index].state == NodeState::Up && self.now >= self.nodes[index].next_op {
                let mean = self.config.op_interval.as_millis() as u64;
                self.nodes[index].next_op = self.now + Duration::from_millis(self.rng.range(1, 2 * mean));
                self.client_op(index);
            }
            if self.now >= self.nodes[index].next_probe {
                self.nodes[index].next_probe = self.now + Duration::from_millis(50);
                self.probe(index);
            }
            if self.now >= self.nodes[index].next_checkpoint {
                self.nodes[index].next_checkpoint = self.now + Duration::from_millis(self.rng.range(700, 1500));
                self.checkpoint(index);
            }
            self.renew_lease(index);
            let due =
                self.nodes[index].live.as_ref().and_then(|l| l.gossip.poll_timeout()).is_some_and(|t| t <= self.now);
            if due {
                let hlc = self.next_hlc(index);
                let closed = self.closed(index, hlc);
                let now = self.now;
                let live = self.nodes[index].live.as_mut().expect("up");
                live.gossip.handle_timeout(now, hlc, closed, &live.replica);
            }
            self.drain(index);
        }
        self.drain_decommission();
    }

    /// The node's closed timestamp, as the server computes it (or broken, per the variant).
    fn closed(&self, index: usize, now_hlc: Hlc) -> Closed {
        let live = self.nodes[index].live.as_ref().expect("up");
        let origin = self.nodes[index].id;
        if self.config.variant == Variant::ClosesEarly {
            return Closed { origin, t: now_hlc.min(live.lease), n: live.durable_seq };
        }
        let oldest = live.in_flight.front().map(|f| f.record.meta.hlc);
        local_closed(origin, oldest, live.durable_seq, live.replica.last_seq(), now_hlc, live.lease)
    }

    /// The server keeps a persisted HLC lease 1 s ahead, renewed below 0.5 s.
    fn renew_lease(&mut self, index: usize) {
        let wall = self.wall_ns(index);
        let node = &mut self.nodes[index];
        let live = node.live.as_mut().expect("up");
        if live.lease.wall_ns() <= wall + 500_000_000 {
            live.lease = Hlc::new(wall + 1_000_000_000, 0);
            node.disk.lease = live.lease;
        }
    }

    /// Local writes whose fsync finished become durable: acknowledged, then sent.
    fn complete_fsyncs(&mut self, index: usize) {
        let now = self.now;
        let mut done = Vec::new();
        {
            let node = &mut self.nodes[index];
            let live = node.live.as_mut().expect("up");
            while live.in_flight.front().is_some_and(|f| f.durable_at <= now) {
                done.push(live.in_flight.pop_front().expect("front"));
            }
        }
        for f in done {
            self.make_durable(index, f);
        }
    }

    fn make_durable(&mut self, index: usize, f: InFlight) {
        let now = self.now;
        let at_ms = self.elapsed_ms();
        let node = &mut self.nodes[index];
        let meta = f.record.meta;
        if meta.hlc <= node.last_durable_hlc {
            self.violations.push(Violation {
                checker: "hlc-monotonic",
                detail: format!(
                    "node {index} made change {} durable with HLC {}, not above its previous {}",
                    meta.seq, meta.hlc, node.last_durable_hlc
                ),
            });
        }
        node.last_durable_hlc = node.last_durable_hlc.max(meta.hlc);
        node.disk.hlc_high = node.disk.hlc_high.max(meta.hlc);
        node.disk.log.insert((meta.origin, meta.seq), f.record.clone());
        let live = node.live.as_mut().expect("up");
        live.durable_seq = meta.seq;
        live.gossip.handle_local_records(now, &[f.record]);
        self.durable.entry(meta.origin).or_default().push((meta.seq, meta.hlc));
        let write = &mut self.history.writes[f.write];
        write.end_ms = at_ms;
        write.outcome =
            WriteOutcome::Acked { token: Token::of_change(meta.origin, meta.seq).to_string(), hlc: meta.hlc };
        self.stats.writes_acked += 1;
        if self.rng.chance(0.05) && self.at_points.len() < 16 {
            self.at_points.push(meta.hlc);
        }
    }

    /// Issues one random client operation at node `index`.
    fn client_op(&mut self, index: usize) {
        let roll = self.rng.below(100);
        let n = self.history.writes.len();
        match roll {
            0..=21 => {
                let doc = format!("set/{}", self.rng.below(SET_DOCS));
                let key = format!("k{n}");
                let op = WriteOp::MergePatch(json!({ key.clone(): index }));
                self.client_write(index, doc, WriteKind::SetAdd { key }, op);
            }
            22..=35 => {
                let doc = format!("ctr/{}", self.rng.below(COUNTER_DOCS));
                let by = self.rng.range(1, 5) as i64;
                let ops = meridian_crdt::patch::parse_patch(&json!([{"op": "increment", "path": "/n", "value": by}]))
                    .expect("patch");
                self.client_write(index, doc, WriteKind::Increment { by }, WriteOp::JsonPatch(ops));
            }
            36..=49 => {
                let doc = format!("list/{}", self.rng.below(LIST_DOCS));
                let value = format!("v{n}");
                let ops =
                    meridian_crdt::patch::parse_patch(&json!([{"op": "add", "path": "/items/-", "value": value}]))
                        .expect("patch");
                self.client_write(index, doc, WriteKind::Append { value }, WriteOp::JsonPatch(ops));
            }
            50..=59 => {
                let doc = format!("reg/{}", self.rng.below(REGISTER_DOCS));
                let (what, op) = match self.rng.below(4) {
                    0 => ("put", WriteOp::Put(json!({"x": n, "by": index}).as_object().cloned().expect("object"))),
                    1 => ("merge", WriteOp::MergePatch(json!({"y": n, "z": null}))),
                    2 => ("delete", WriteOp::Delete),
                    _ => ("nested", WriteOp::MergePatch(json!({"z": {"deep": [n, index]}}))),
                };
                self.client_write(index, doc, WriteKind::Other { what: what.into() }, op);
            }
            _ => self.client_read(index),
        }
    }

    fn client_read(&mut self, index: usize) {
        let docs = ["set", "ctr", "list", "reg"];
        let kind = *self.rng.pick(&docs);
        let count = match kind {
            "set" => SET_DOCS,
            "ctr" => COUNTER_DOCS,
            "list" => LIST_DOCS,
            _ => REGISTER_DOCS,
        };
        let mut doc = format!("{kind}/{}", self.rng.below(count));
        match self.rng.below(10) {
            0..=2 => {
                // `?after` the token of a recent acknowledged write made elsewhere.
                let recent: Vec<usize> = (self.history.writes.len().saturating_sub(40)..self.history.writes.len())
                    .filter(|&i| {
                        let w = &self.history.writes[i];
                        w.node != index && matches!(w.outcome, WriteOutcome::Acked { .. })
                    })
                    .collect();
                if let Some(&w) = recent.get(self.rng.below(recent.len().max(1) as u64) as usize) {
                    doc = self.history.writes[w].doc.clone();
                    self.read(index, doc, Some(w), None, None);
                } else {
                    self.read(index, doc, None, None, None);
                }
            }
            3..=4 => {
                let limit = self.rng.range(0, 1500);
                self.read(index, doc, None, None, Some(limit));
            }
            5..=6 if !self.at_points.is_empty() => {
                let at = *self.rng.pick(&self.at_points);
                self.read(index, doc, None, Some(at), None);
            }
            _ => self.read(index, doc, None, None, None),
        }
    }

    /// A local write, as the server makes it: HLC from the clock, applied in
    /// memory, durable after an fsync, acknowledged then. Returns its history index.
    fn client_write(&mut self, index: usize, doc: String, kind: WriteKind, op: WriteOp) -> usize {
        let write = self.history.writes.len();
        let at_ms = self.elapsed_ms();
        self.history.writes.push(WriteRecord {
            node: index,
            doc: doc.clone(),
            kind,
            start_ms: at_ms,
            end_ms: at_ms,
            outcome: WriteOutcome::Unknown("in flight".into()),
        });
        if !self.nodes[index].live.as_ref().expect("up").gossip.admitted() {
            // The server holds the write until admission; the simulated client gives up at once.
            self.history.writes[write].outcome = WriteOutcome::Failed("joining: not admitted yet".into());
            self.stats.writes_failed += 1;
            return write;
        }
        let hlc = self.next_hlc(index);
        let fsync = Duration::from_millis(self.rng.range(1, 25));
        let now = self.now;
        let live = self.nodes[index].live.as_mut().expect("up");
        match live.replica.local_write(&DocId::new(&doc).expect("id"), &op, hlc, None) {
            Ok(receipt) => {
                live.clock = live.clock.max(receipt.record.meta.hlc);
                // Group commit keeps fsyncs in sequence order.
                let durable_at = live.in_flight.back().map_or(now + fsync, |last| last.durable_at.max(now + fsync));
                live.in_flight.push_back(InFlight { record: receipt.record, durable_at, write });
            }
            Err(err) => {
                self.history.writes[write].outcome = WriteOutcome::Failed(err.to_string());
                self.stats.writes_failed += 1;
            }
        }
        write
    }

    /// A read, as the server answers it (without waiting: the simulated client
    /// does not wait, it is refused instead).
    fn read(
        &mut self,
        index: usize,
        doc: String,
        after: Option<usize>,
        at: Option<Hlc>,
        max_staleness_ms: Option<u64>,
    ) {
        let at_ms = self.elapsed_ms();
        let outcome = self.read_outcome(index, &doc, after, at, max_staleness_ms);
        match outcome {
            ReadOutcome::Ok { .. } => self.stats.reads_ok += 1,
            _ => self.stats.reads_refused += 1,
        }
        self.history.reads.push(ReadRecord {
            node: index,
            doc,
            after,
            at,
            max_staleness_ms,
            start_ms: at_ms,
            end_ms: at_ms,
            outcome,
        });
    }

    fn read_outcome(
        &mut self,
        index: usize,
        doc: &str,
        after: Option<usize>,
        at: Option<Hlc>,
        max_staleness_ms: Option<u64>,
    ) -> ReadOutcome {
        let freshness = self.claim(index);
        let live = self.nodes[index].live.as_ref().expect("up");
        if let Some(w) = after {
            if let WriteOutcome::Acked { token, .. } = &self.history.writes[w].outcome {
                let token = Token::parse(token).expect("token");
                let applied = live.replica.applied_version_vector();
                let behind = token.entries.iter().any(|(o, s)| applied.contiguous(*o) < *s);
                if behind && self.config.variant != Variant::AfterDoesNotWait {
                    return ReadOutcome::Refused("behind the token".into());
                }
            }
        }
        if let Some(at) = at {
            if freshness.safe_time < at {
                return ReadOutcome::Refused("at is above safe time".into());
            }
        }
        if let Some(limit) = max_staleness_ms {
            if freshness.staleness_ms > limit {
                return ReadOutcome::Refused("too stale".into());
            }
        }
        let json = live.replica.document(&DocId::new(doc).expect("id")).and_then(|state| match at {
            Some(at) => state.doc.to_json_at(&state.doc.heads_at(at)),
            None => state.doc.to_json(),
        });
        ReadOutcome::Ok { json, safe_time: freshness.safe_time, staleness_ms: freshness.staleness_ms }
    }

    /// Computes node `index`'s freshness with the server's code and records
    /// every per-origin claim in it for the final judgement.
    fn claim(&mut self, index: usize) -> meridian_gossip::freshness::SafeTime {
        let wall = self.wall_ns(index);
        let at_ms = self.elapsed_ms();
        let live = self.nodes[index].live.as_ref().expect("up");
        let freshness = safe_time(&live.gossip, &live.replica, wall);
        let applied = live.replica.applied_version_vector();
        for origin in &freshness.origins {
            self.claims.push(Claim {
                node: index,
                at_ms,
                origin: origin.node,
                closed: origin.closed,
                applied: applied.contiguous(origin.node),
            });
        }
        self.stats.claims += 1;
        freshness
    }

    /// A freshness probe, as a dashboard or a waiting reader would make.
    fn probe(&mut self, index: usize) {
        self.claim(index);
    }

    /// The server's checkpoint: every local write so far made durable,
    /// snapshots of every document, the log truncated to what every member holds.
    fn checkpoint(&mut self, index: usize) {
        let pending: Vec<InFlight> = self.nodes[index].live.as_mut().expect("up").in_flight.drain(..).collect();
        for f in pending {
            self.make_durable(index, f);
        }
        let node = &mut self.nodes[index];
        let live = node.live.as_mut().expect("up");
        let covered = live.replica.applied_version_vector().clone();
        for id in live.replica.all_doc_ids(None, usize::MAX) {
            if let Some(state) = live.replica.document(&id) {
                node.disk.snapshots.insert(id, state.doc.save());
            }
        }
        node.disk.checkpoint = covered.clone();
        let truncate: Vec<(NodeId, u64)> = live
            .gossip
            .truncation_point(&live.replica)
            .into_iter()
            .map(|(origin, upto)| (origin, upto.min(covered.contiguous(origin))))
            .collect();
        for (origin, upto) in truncate {
            live.replica.log_mut().truncate(origin, upto);
            node.disk.log.retain(|(o, s), _| *o != origin || *s > upto);
        }
    }

    /// Moves a node's outputs onto the network and handles its events.
    fn drain(&mut self, index: usize) {
        let now = self.now;
        loop {
            let Some(live) = self.nodes[index].live.as_mut() else { return };
            let Some(addr) = live.gossip.poll_dial() else { break };
            let target = self.nodes.iter().position(|n| n.addr == addr);
            let result = match target {
                Some(to) if self.nodes[to].live.is_some() && !self.link(index, to).cut && !self.link(to, index).cut => {
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(conn, (index, to));
                    Ok(conn)
                }
                _ => Err("unreachable".to_string()),
            };
            self.nodes[index].live.as_mut().expect("up").gossip.handle_dial_result(now, addr, result);
        }
        loop {
            let Some(live) = self.nodes[index].live.as_mut() else { return };
            let Some(transmit) = live.gossip.poll_transmit() else { break };
            let Some(&(from, to)) = self.conns.get(&transmit.conn) else { continue };
            let link = self.link(from, to);
            if link.cut || self.link(to, from).cut {
                // A cut link breaks the connection, as QUIC's idle timeout would.
                self.close_conn(transmit.conn);
                continue;
            }
            if self.rng.chance(link.loss) {
                self.stats.frames_lost += 1;
                continue;
            }
            let copies = if self.rng.chance(link.duplicate) { 2 } else { 1 };
            self.stats.frames_duplicated += copies - 1;
            for _ in 0..copies {
                let base = self.latency[self.region_of(from)][self.region_of(to)];
                let jitter = self.rng.below(base / 5 + 2);
                let mut at = now + Duration::from_millis(base + jitter);
                if !link.reorder {
                    // QUIC streams are ordered: a frame never overtakes an earlier one on its stream.
                    let key = (transmit.conn, transmit.stream);
                    at = at.max(self.fifo.get(&key).copied().unwrap_or(at));
                    self.fifo.insert(key, at);
                }
                self.delivery_seq += 1;
                self.deliveries.insert(
                    (at, self.delivery_seq),
                    Delivery { conn: transmit.conn, stream: transmit.stream, frame: transmit.frame.clone() },
                );
            }
        }
        loop {
            let Some(live) = self.nodes[index].live.as_mut() else { return };
            let Some(event) = live.gossip.poll_event() else { break };
            self.handle_event(index, event);
        }
    }

    fn handle_event(&mut self, index: usize, event: Event) {
        let now = self.now;
        match event {
            Event::Records { records, .. } => {
                let own = self.nodes[index].id;
                let variant = self.config.variant;
                let fresh: Vec<ChangeRecord> = {
                    let vv = self.nodes[index].live.as_ref().expect("up").replica.version_vector();
                    records
                        .into_iter()
                        .filter(|r| r.meta.origin != own && !vv.contains(r.meta.origin, r.meta.seq))
                        .collect()
                };
                let mut applied = Vec::with_capacity(fresh.len());
                for mut record in fresh {
                    if variant == Variant::DropsRemoteChanges && self.rng.below(1000) == 0 {
                        record.changes.clear();
                    }
                    self.observe(index, record.meta.hlc);
                    applied.push(record);
                }
                let node = &mut self.nodes[index];
                // Committed, then applied, as the server's storage thread does.
                for record in &applied {
                    node.disk.log.insert((record.meta.origin, record.meta.seq), record.clone());
                }
                let live = node.live.as_mut().expect("up");
                live.replica.apply_records(applied);
            }
            Event::Snapshot { docs, covers, .. } => {
                // Local writes in a merged document must be durable first (as the server commits them together).
                let pending: Vec<InFlight> = self.nodes[index].live.as_mut().expect("up").in_flight.drain(..).collect();
                for f in pending {
                    self.make_durable(index, f);
                }
                self.stats.snapshots += 1;
                let node = &mut self.nodes[index];
                let live = node.live.as_mut().expect("up");
                for (id, bytes) in docs {
                    let doc = Document::load(&bytes).expect("snapshot loads");
                    live.replica.merge_document(id.clone(), doc).expect("merge");
                    if let Some(state) = live.replica.document(&id) {
                        node.disk.snapshots.insert(id, state.doc.save());
                    }
                }
                if let Some(covers) = covers {
                    node.disk.checkpoint.merge(&covers);
                    live.replica.restore_version_vector(&covers);
                }
            }
            Event::PeerClock { hlc, offset_ms, .. } => {
                if offset_ms <= MAX_CLOCK_OFFSET.as_millis() as i64 {
                    self.observe(index, hlc);
                }
            }
            Event::Close { conn, .. } => {
                let _ = now;
                self.close_conn(conn);
            }
        }
    }

    fn close_conn(&mut self, conn: ConnId) {
        let Some((a, b)) = self.conns.remove(&conn) else { return };
        let now = self.now;
        for index in [a, b] {
            if let Some(live) = self.nodes[index].live.as_mut() {
                live.gossip.handle_closed(now, conn);
            }
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        let Some(&(from, to)) = self.conns.get(&delivery.conn) else { return };
        if self.link(from, to).cut {
            return;
        }
        let wall = self.wall_ns(to);
        let now = self.now;
        let Some(live) = self.nodes[to].live.as_mut() else { return };
        self.stats.frames += 1;
        live.gossip.handle_frame(now, wall, delivery.conn, delivery.stream, &delivery.frame[4..], &live.replica);
        self.drain(to);
    }

    fn region_of(&self, index: usize) -> usize {
        index % self.config.regions.max(1)
    }

    fn link(&self, from: usize, to: usize) -> LinkFault {
        self.links.get(&(from, to)).copied().unwrap_or_default()
    }

    fn set_links(&mut self, links: &[(usize, usize)], f: impl Fn(&mut LinkFault)) {
        for &pair in links {
            f(self.links.entry(pair).or_default());
        }
    }

    /// Picks and starts a random fault.
    fn start_fault(&mut self) {
        let n = self.nodes.len();
        let active: Vec<usize> = (0..n).filter(|&i| self.nodes[i].state != NodeState::Decommissioned).collect();
        let duration = Duration::from_millis(self.rng.range(500, 4000));
        let until = self.now + duration;
        let all_pairs = |nodes: &[usize]| -> Vec<(usize, usize)> {
            nodes.iter().flat_map(|&a| nodes.iter().map(move |&b| (a, b))).filter(|(a, b)| a != b).collect()
        };
        let mut shuffled = active.clone();
        for i in (1..shuffled.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            shuffled.swap(i, j);
        }
        let (description, fault) = match self.rng.below(9) {
            0 | 1 => {
                // Full partition into two groups.
                let split = self.rng.range(1, shuffled.len() as u64 - 1) as usize;
                let (left, right) = shuffled.split_at(split);
                let links: Vec<(usize, usize)> =
                    left.iter().flat_map(|&a| right.iter().flat_map(move |&b| [(a, b), (b, a)])).collect();
                (format!("partition {left:?} | {right:?}"), FaultKind::Links(links))
            }
            2 => {
                let (a, b) = (shuffled[0], shuffled[1]);
                (format!("one-way cut {a} -> {b}"), FaultKind::Links(vec![(a, b)]))
            }
            3 => {
                // Bridge: two groups that reach each other only through one node.
                let bridge = shuffled[0];
                let rest = &shuffled[1..];
                let split = (rest.len() / 2).max(1);
                let (left, right) = rest.split_at(split);
                let links: Vec<(usize, usize)> =
                    left.iter().flat_map(|&a| right.iter().flat_map(move |&b| [(a, b), (b, a)])).collect();
                (format!("bridge {left:?} <{bridge}> {right:?}"), FaultKind::Links(links))
            }
            4 => {
                // Line: each node reaches only its neighbours in a random order.
                let mut links = all_pairs(&shuffled);
                links.retain(|(a, b)| {
                    let pa = shuffled.iter().position(|x| x == a).unwrap_or(0) as i64;
                    let pb = shuffled.iter().position(|x| x == b).unwrap_or(0) as i64;
                    (pa - pb).abs() > 1
                });
                (format!("line {shuffled:?}"), FaultKind::Links(links))
            }
            5 => {
                let links = all_pairs(&shuffled[..2.min(shuffled.len())]);
                let period = Duration::from_millis(self.rng.range(100, 600));
                (format!("flapping {links:?} every {} ms", period.as_millis()), FaultKind::Flapping { links, period })
            }
            6 => {
                let links = all_pairs(&active);
                ("lossy, duplicating, reordering network".to_string(), FaultKind::Flaky(links))
            }
            _ => {
                // Crash and restart, losing what is not yet durable.
                let victim = shuffled[0];
                if self.nodes[victim].state == NodeState::Up {
                    let down = Duration::from_millis(self.rng.range(200, 5000));
                    self.crash(victim, down);
                    self.stats.faults.push(format!(
                        "{} ms: crash node {victim} for {} ms",
                        self.elapsed_ms(),
                        down.as_millis()
                    ));
                }
                return;
            }
        };
        self.stats.faults.push(format!("{} ms: {description} for {} ms", self.elapsed_ms(), duration.as_millis()));
        match &fault {
            FaultKind::Links(links) | FaultKind::Flapping { links, .. } => self.set_links(links, |l| l.cut = true),
            FaultKind::Flaky(links) => self.set_links(links, |l| {
                l.loss = 0.02;
                l.duplicate = 0.02;
                l.reorder = true;
            }),
        }
        self.faults.push(ActiveFault { until, what: fault });
    }

    fn expire_faults(&mut self) {
        let now = self.now;
        let ms = self.elapsed_ms();
        let mut ended = Vec::new();
        let mut flips = Vec::new();
        self.faults.retain_mut(|fault| {
            if fault.until <= now {
                ended.push(std::mem::replace(&mut fault.what, FaultKind::Links(Vec::new())));
                return false;
            }
            if let FaultKind::Flapping { links, period } = &fault.what {
                if ms.is_multiple_of(period.as_millis() as u64) {
                    flips.push(links.clone());
                }
            }
            true
        });
        for links in flips {
            self.set_links(&links, |l| l.cut = !l.cut);
        }
        for fault in ended {
            match fault {
                FaultKind::Links(links) | FaultKind::Flapping { links, .. } => {
                    self.set_links(&links, |l| l.cut = false)
                }
                FaultKind::Flaky(links) => {
                    self.set_links(&links, |l| *l = LinkFault { cut: l.cut, ..LinkFault::default() })
                }
            }
        }
    }

    /// Kills node `index`: memory, connections and non-durable writes are gone.
    fn crash(&mut self, index: usize, down: Duration) {
        self.stats.crashes += 1;
        let Some(live) = self.nodes[index].live.take() else { return };
        for f in live.in_flight {
            self.history.writes[f.write].outcome =
                WriteOutcome::Unknown("node crashed before the write was durable".into());
            self.stats.writes_lost += 1;
        }
        let conns: Vec<ConnId> =
            self.conns.iter().filter(|(_, (a, b))| *a == index || *b == index).map(|(c, _)| *c).collect();
        for conn in conns {
            self.close_conn(conn);
        }
        self.nodes[index].state = NodeState::Down { until: self.now + down };
    }

    fn heal_all(&mut self) {
        self.faults.clear();
        self.links.clear();
        for index in 0..self.nodes.len() {
            if matches!(self.nodes[index].state, NodeState::Down { .. }) {
                self.boot(index);
            }
        }
        self.stats.faults.push(format!("{} ms: heal", self.elapsed_ms()));
    }

    /// Picks a node to decommission; it stops taking client operations and
    /// is removed once every change it made is held by another member.
    fn start_draining(&mut self) {
        let candidates: Vec<usize> = (1..self.nodes.len()).filter(|&i| self.nodes[i].state == NodeState::Up).collect();
        if candidates.len() < 3 {
            return;
        }
        let victim = *self.rng.pick(&candidates);
        self.nodes[victim].state = NodeState::Draining;
        self.stats.faults.push(format!("{} ms: draining node {victim} for decommission", self.elapsed_ms()));
    }

    fn drain_decommission(&mut self) {
        let Some(victim) = (0..self.nodes.len()).find(|&i| self.nodes[i].state == NodeState::Draining) else { return };
        let Some(live) = self.nodes[victim].live.as_ref() else { return };
        if !live.in_flight.is_empty() {
            return;
        }
        let id = self.nodes[victim].id;
        let last = live.replica.last_seq();
        let others: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != victim && self.nodes[i].live.is_some() && self.nodes[i].state != NodeState::Draining)
            .collect();
        let held = others
            .iter()
            .any(|&i| self.nodes[i].live.as_ref().is_some_and(|l| l.replica.version_vector().contiguous(id) >= last));
        // The operator asks a member that knows the victim (others refuse with
        // `Unknown`, as the admin API does); gossip tells the rest.
        let knowing: Vec<usize> = others
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].live.as_ref().is_some_and(|l| l.gossip.addr_of(id).is_some()))
            .collect();
        if !held || knowing.is_empty() {
            return;
        }
        // Stop it for good, then tell one member.
        self.crash(victim, Duration::from_secs(1_000_000));
        self.nodes[victim].state = NodeState::Decommissioned;
        let at = *self.rng.pick(&knowing);
        let live = self.nodes[at].live.as_mut().expect("up");
        let recorded = live.gossip.decommission(id, &live.replica).expect("decommission");
        self.stats.faults.push(format!(
            "{} ms: node {victim} decommissioned at node {at} (last change {recorded})",
            self.elapsed_ms()
        ));
    }

    /// Whether every live member holds the same changes, documents and digest.
    pub fn converged(&self) -> bool {
        let live: Vec<&Live> = self.nodes.iter().filter_map(|n| n.live.as_ref()).collect();
        let Some(first) = live.first() else { return true };
        live.iter().all(|l| {
            l.replica.version_vector() == first.replica.version_vector()
                && l.replica.applied_version_vector() == first.replica.applied_version_vector()
                && l.replica.digest() == first.replica.digest()
        })
    }

    /// A readable account of how nodes differ, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(live) = &node.live else {
                let _ = writeln!(out, "node {i}: {:?}", node.state);
                continue;
            };
            let members: Vec<String> = live
                .gossip
                .members(self.now)
                .iter()
                .map(|m| format!("{}:{}{}", m.info.node, m.state.as_str(), if m.connected { "+conn" } else { "" }))
                .collect();
            let _ = writeln!(
                out,
                "node {i} ({}, {:?}): vv {} applied {} pending {} log {} digest {} members {members:?}",
                node.id,
                node.state,
                serde_json::to_string(live.replica.version_vector()).unwrap_or_default(),
                serde_json::to_string(live.replica.applied_version_vector()).unwrap_or_default(),
                live.replica.pending_count(),
                live.replica.log().len(),
                &hex(&live.replica.digest())[..12],
            );
        }
        out
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one seed.
pub fn run_seed(seed: u64, variant: Variant) -> Report {
    Simulation::new(SimConfig::from_seed(seed, variant)).run()
}

/// Prints a failing report with its replay command.
pub fn explain(report: &Report) -> String {
    let mut out = format!("{}\nreplay: {}\n", report.summary(), report.config.replay_command());
    for fault in &report.stats.faults {
        let _ = writeln!(out, "  fault {fault}");
    }
    for violation in report.violations.iter().take(30) {
        let _ = writeln!(out, "  {violation}");
    }
    if report.violations.len() > 30 {
        let _ = writeln!(out, "  ... and {} more", report.violations.len() - 30);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_spread() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
        assert_eq!(xs, ys);
        assert!((0..10).all(|v| xs.contains(&v)));
    }
}
