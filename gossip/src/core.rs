//! The replication protocol core: a state machine with no IO.
//!
//! ```text
//!            handle_frame(now, wall, conn, stream, bytes, &replica)
//!            handle_timeout(now, hlc, &replica)        ┌──────────────┐
//!  driver ──► handle_local_records(now, records)  ───► │    Gossip    │
//!            handle_dial_result / handle_closed        │  members,    │
//!                                                      │  dials,      │
//!  driver ◄── poll_transmit()  (frames per conn)  ◄─── │  queues,     │
//!        ◄── poll_dial()      (addresses to dial)      │  transfers   │
//!        ◄── poll_event()     (records to persist,     └──────────────┘
//!                               snapshots, clocks, closes)
//!        ◄── poll_timeout()   (next deadline)
//! ```
//!
//! Connections are one-way: a node sends only on connections it dialed and
//! receives only on connections it accepted. Each outbound connection has two
//! streams, `Live` (hello, heartbeats, live changes) and `CatchUp`
//! (anti-entropy and state transfer), so catch-up never delays live deltas.
//!
//! Anti-entropy: a heartbeat carries the sender's version vector; on receipt
//! we send what we hold and they lack, including third nodes' changes, from
//! our log. When they lack changes our log no longer holds, we send document
//! snapshots (state transfer) and the log tail follows.
//!
//! The caller persists and applies received records (`Event::Records`); a
//! change counts in the vector we advertise only once it is durable, which is
//! the caller's replica vector.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_crdt::{ChangeRecord, DocId, Hlc, NodeId, Replica, SeqRange, VersionVector};

use crate::message::{
    Closed, DecodeError, Heartbeat, Hello, MemberInfo, Message, SnapshotChunk, DECOMMISSIONED_MAX, MEMBERS_MAX,
    PROTOCOL_VERSION,
};

/// Identifies one QUIC connection; assigned by the driver.
pub type ConnId = u64;

/// Which stream of a connection a frame travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// Hello, heartbeats and live changes, in order.
    Live,
    /// Anti-entropy catch-up and state transfer.
    CatchUp,
}

/// Tunables, with limits on every queue and batch.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// This node.
    pub node: NodeId,
    /// This node's region.
    pub region: String,
    /// Cluster name; peers of other clusters are refused.
    pub cluster: String,
    /// The address peers dial to reach this node.
    pub advertise: SocketAddr,
    /// Addresses to dial at start.
    pub seeds: Vec<SocketAddr>,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Silence after which a peer is suspect.
    pub suspect_after: Duration,
    /// Silence after which a peer is down.
    pub down_after: Duration,
    /// How long local changes wait to be batched before sending.
    pub linger: Duration,
    /// Largest batch of live changes in one message, in change bytes.
    pub batch_bytes_max: usize,
    /// Largest per-peer queue of unsent live changes; beyond it the queue is
    /// dropped and anti-entropy catches the peer up.
    pub queue_bytes_max: usize,
    /// Catch-up bytes sent per peer per heartbeat.
    pub catchup_bytes_per_tick: usize,
    /// Snapshot bytes sent per peer per heartbeat during state transfer.
    pub snapshot_bytes_per_tick: usize,
    /// After this long, changes sent but still missing from a peer's vector are sent again.
    pub resend_after: Duration,
    /// Reconnect backoff bounds.
    pub redial_min: Duration,
    /// Reconnect backoff bounds.
    pub redial_max: Duration,
    /// Pause before starting another state transfer to the same peer.
    pub transfer_cooldown: Duration,
    /// Seed for jitter.
    pub seed: u64,
    /// Whether this node was admitted before (it made changes then). A node
    /// with seeds that was not must wait for admission before taking writes.
    pub joined: bool,
}

impl GossipConfig {
    /// Defaults for a node.
    pub fn new(node: NodeId, region: &str, cluster: &str, advertise: SocketAddr) -> GossipConfig {
        GossipConfig {
            node,
            region: region.to_string(),
            cluster: cluster.to_string(),
            advertise,
            seeds: Vec::new(),
            heartbeat_interval: Duration::from_millis(100),
            suspect_after: Duration::from_millis(500),
            down_after: Duration::from_secs(3),
            linger: Duration::from_millis(2),
            batch_bytes_max: 256 << 10,
            queue_bytes_max: 8 << 20,
            catchup_bytes_per_tick: 2 << 20,
            snapshot_bytes_per_tick: 2 << 20,
            resend_after: Duration::from_secs(2),
            redial_min: Duration::from_millis(100),
            // Low enough that a healed partition reconnects within about a
            // second; a down peer then costs one handshake attempt (given up
            // after the driver's 1 s timeout) every second or two.
            redial_max: Duration::from_secs(1),
            transfer_cooldown: Duration::from_secs(2),
            seed: node.0,
            joined: false,
        }
    }
}

/// A frame to write on a connection's stream.
#[derive(Debug)]
pub struct Transmit {
    /// Outbound connection.
    pub conn: ConnId,
    /// Stream.
    pub stream: StreamKind,
    /// Length-prefixed message.
    pub frame: Vec<u8>,
}

/// What the node must act on.
#[derive(Debug)]
pub enum Event {
    /// Records received from a peer: persist, then apply.
    Records {
        /// The peer they came from (not necessarily their origin).
        from: NodeId,
        /// The records.
        records: Vec<ChangeRecord>,
    },
    /// A state-transfer chunk: merge these documents; on the last chunk, the
    /// vector they cover.
    Snapshot {
        /// Sender.
        from: NodeId,
        /// Documents.
        docs: Vec<(DocId, Vec<u8>)>,
        /// Present on the last chunk.
        covers: Option<VersionVector>,
    },
    /// A peer's HLC from a heartbeat, with its estimated offset from our wall clock.
    PeerClock {
        /// The peer.
        node: NodeId,
        /// Its HLC.
        hlc: Hlc,
        /// Its wall clock minus ours, in ms (positive: ahead).
        offset_ms: i64,
    },
    /// Close this connection (refused peer or protocol violation).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for logs and the peer.
        reason: String,
    },
}

/// Why the driver could not read a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix exceeds the limit.
    Oversized(usize),
    /// The stream ended inside a frame.
    Truncated,
}

/// Liveness of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerState {
    /// Known (gossiped or seeded) but never heard from.
    Unknown,
    /// Heard from recently.
    Alive,
    /// Missed several heartbeats.
    Suspect,
    /// Silent for longer than `down_after`.
    Down,
}

impl PeerState {
    /// Lower-case name for status and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            PeerState::Unknown => "unknown",
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
        }
    }
}

/// Per-peer counters.
#[derive(Clone, Debug, Default)]
pub struct PeerStats {
    /// Frame bytes sent to the peer.
    pub bytes_sent: u64,
    /// Frame bytes received from the peer.
    pub bytes_received: u64,
    /// Change records sent.
    pub changes_sent: u64,
    /// Change records received.
    pub changes_received: u64,
    /// Live queues dropped because the peer fell behind.
    pub queue_drops: u64,
    /// State transfers sent.
    pub transfers_sent: u64,
}

struct Peer {
    info: MemberInfo,
    /// Per origin, the prefix of changes the peer has applied (from heartbeats).
    applied: BTreeMap<NodeId, u64>,
    /// When we first learned of each advance of `applied`: (origin, new prefix, our wall ns).
    receipts: VecDeque<(NodeId, u64, u64)>,
    digest: Option<[u8; 32]>,
    /// Whether its heartbeats list us as a member (it knows we exist).
    lists_us: bool,
    /// The state transfer being received from this peer: (id, next chunk expected, a chunk was missed).
    incoming_transfer: Option<(u64, u64, bool)>,
    last_heard: Option<Instant>,
    vv: VersionVector,
    hlc: Option<Hlc>,
    offset_ms: i64,
    log_floor: BTreeMap<NodeId, u64>,
    /// Changes sent on the current connection that the peer's vector may not show yet.
    sent: VersionVector,
    sent_reset_at: Option<Instant>,
    pending: Vec<ChangeRecord>,
    pending_bytes: usize,
    pending_since: Option<Instant>,
    /// When live changes were last sent to this peer (for the linger rule).
    last_flush: Option<Instant>,
    catchup: VecDeque<SeqRange>,
    transfer: Option<Transfer>,
    transfer_done_at: Option<Instant>,
    stats: PeerStats,
}

struct Transfer {
    id: u64,
    covers: VersionVector,
    after: Option<String>,
    chunks_sent: u64,
}

struct Dial {
    conn: Option<ConnId>,
    dialing: bool,
    next_attempt: Instant,
    backoff: Duration,
    last_error: Option<String>,
}

#[derive(Default)]
struct Inbound {
    node: Option<NodeId>,
    hello_seen: BTreeSet<StreamKind>,
}

/// A peer that was refused, for status.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// When.
    pub at: Instant,
    /// Who, if it said.
    pub node: Option<NodeId>,
    /// Its claimed region or address, if known.
    pub claimed: String,
    /// Why.
    pub reason: String,
}

/// Why a member could not be decommissioned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecommissionError {
    /// A node cannot decommission itself.
    #[error("a node cannot decommission itself; ask another member")]
    Myself,
    /// No member or origin by that id is known here.
    #[error("no member {0} is known here")]
    Unknown(NodeId),
}

/// Protocol-wide counters.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Frames refused as malformed, truncated or oversized.
    pub frames_refused: u64,
    /// Peers refused at hello (foreign cluster, wrong version, self).
    pub peers_refused: u64,
    /// Dial attempts that failed.
    pub dial_failures: u64,
}

/// One member as shown in status.
#[derive(Clone, Debug)]
pub struct MemberStatus {
    /// Member info.
    pub info: MemberInfo,
    /// Liveness.
    pub state: PeerState,
    /// Time since the last frame from it.
    pub last_heard_ago: Option<Duration>,
    /// Its version vector (from its heartbeats).
    pub vv: VersionVector,
    /// Its last HLC.
    pub hlc: Option<Hlc>,
    /// Estimated clock offset (its minus ours), ms.
    pub offset_ms: i64,
    /// Whether our outbound connection is up.
    pub connected: bool,
    /// Last dial error.
    pub last_dial_error: Option<String>,
    /// Live changes queued for it.
    pub queue_bytes: usize,
    /// Counters.
    pub stats: PeerStats,
    /// Per origin, the prefix of changes it has applied.
    pub applied: BTreeMap<NodeId, u64>,
    /// Its state digest, from its last heartbeat.
    pub digest: Option<[u8; 32]>,
}

/// The protocol state machine.
pub struct Gossip {
    config: GossipConfig,
    rng: u64,
    peers: BTreeMap<NodeId, Peer>,
    dials: BTreeMap<SocketAddr, Dial>,
    outbound: BTreeMap<ConnId, SocketAddr>,
    inbound: BTreeMap<ConnId, Inbound>,
    transmits: VecDeque<Transmit>,
    dial_queue: VecDeque<SocketAddr>,
    events: VecDeque<Event>,
    next_heartbeat: Option<Instant>,
    refusals: VecDeque<Refusal>,
    counters: Counters,
    next_transfer_id: u64,
    /// Closed timestamps known per origin (ours too), oldest first, bounded.
    closed: BTreeMap<NodeId, VecDeque<Closed>>,
    /// The last local sequence number known durable. Local changes above it
    /// are applied in memory but a crash could still take them back (and the
    /// sequence number would be reused), so they are never advertised, sent
    /// by anti-entropy, or included in a state transfer.
    local_durable: u64,
    /// Members removed for good, with the last sequence number of their changes.
    decommissioned: BTreeMap<NodeId, u64>,
    /// Whether this node may take writes: every member it knows knows it.
    admitted: bool,
}

/// Closed timestamps kept per origin: enough that one whose changes are
/// applied here is usually still at hand while newer ones wait.
const CLOSED_KEPT: usize = 4096;
/// Receipt transitions kept per member.
const RECEIPTS_KEPT: usize = 8192;

const REFUSALS_KEPT: usize = 16;

impl Gossip {
    /// A core for `config`; `now` starts the timers.
    pub fn new(config: GossipConfig, now: Instant) -> Gossip {
        let rng = config.seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut gossip = Gossip {
            rng: if rng == 0 { 1 } else { rng },
            peers: BTreeMap::new(),
            dials: BTreeMap::new(),
            outbound: BTreeMap::new(),
            inbound: BTreeMap::new(),
            transmits: VecDeque::new(),
            dial_queue: VecDeque::new(),
            events: VecDeque::new(),
            next_heartbeat: Some(now),
            refusals: VecDeque::new(),
            counters: Counters::default(),
            next_transfer_id: 1,
            closed: BTreeMap::new(),
            local_durable: 0,
            decommissioned: BTreeMap::new(),
            admitted: config.joined || config.seeds.is_empty(),
            config,
        };
        for seed in gossip.config.seeds.clone() {
            gossip.ensure_dial(seed, now);
        }
        gossip
    }

    /// The configuration.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// `base` scaled by a random factor in [0.5, 1.5).
    fn jitter(&mut self, base: Duration) -> Duration {
        let factor = 0.5 + (self.random() % 1000) as f64 / 1000.0;
        base.mul_f64(factor)
    }

    fn ensure_dial(&mut self, addr: SocketAddr, now: Instant) {
        if addr == self.config.advertise {
            return;
        }
        self.dials.entry(addr).or_insert(Dial {
            conn: None,
            dialing: false,
            next_attempt: now,
            backoff: self.config.redial_min,
            last_error: None,
        });
    }

    fn hello(&self) -> Message {
        Message::Hello(Hello { version: PROTOCOL_VERSION, cluster: self.config.cluster.clone(), me: self.me() })
    }

    fn me(&self) -> MemberInfo {
        MemberInfo { node: self.config.node, region: self.config.region.clone(), addr: self.config.advertise }
    }

    fn conn_of(&self, node: NodeId) -> Option<ConnId> {
        let peer = self.peers.get(&node)?;
        self.dials.get(&peer.info.addr)?.conn
    }

    fn send(&mut self, node: NodeId, stream: StreamKind, message: &Message) -> bool {
        let Some(conn) = self.conn_of(node) else {
            return false;
        };
        let frame = message.encode_frame();
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.stats.bytes_sent += frame.len() as u64;
            if let Message::Changes(records) = message {
                peer.stats.changes_sent += records.len() as u64;
            }
        }
        self.transmits.push_back(Transmit { conn, stream, frame });
        true
    }

    fn refuse(&mut self, conn: ConnId, node: Option<NodeId>, claimed: String, reason: String, now: Instant) {
        tracing::warn!(conn, node = ?node, claimed = %claimed, reason = %reason, "refusing peer");
        self.refusals.push_back(Refusal { at: now, node, claimed, reason: reason.clone() });
        while self.refusals.len() > REFUSALS_KEPT {
            self.refusals.pop_front();
        }
        self.inbound.remove(&conn);
        self.events.push_back(Event::Close { conn, reason });
    }

    /// A new outbound connection to `addr` is up (or failed).
    pub fn handle_dial_result(&mut self, now: Instant, addr: SocketAddr, result: Result<ConnId, String>) {
        let hello = self.hello();
        let (min, max) = (self.config.redial_min, self.config.redial_max);
        let Some(dial) = self.dials.get_mut(&addr) else {
            return;
        };
        dial.dialing = false;
        match result {
            Ok(conn) => {
                dial.conn = Some(conn);
                dial.backoff = min;
                dial.last_error = None;
                self.outbound.insert(conn, addr);
                let frame = hello.encode_frame();
                for stream in [StreamKind::Live, StreamKind::CatchUp] {
                    self.transmits.push_back(Transmit { conn, stream, frame: frame.clone() });
                }
                // Send a heartbeat right away so the peer learns our vector.
                self.next_heartbeat = Some(now);
            }
            Err(reason) => {
                self.counters.dial_failures += 1;
                dial.last_error = Some(reason);
                let backoff = dial.backoff;
                dial.backoff = (backoff * 2).min(max);
                let wait = self.jitter(backoff);
                if let Some(dial) = self.dials.get_mut(&addr) {
                    dial.next_attempt = now + wait;
                }
            }
        }
    }

    /// A connection closed (either direction).
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        self.inbound.remove(&conn);
        let Some(addr) = self.outbound.remove(&conn) else {
            return;
        };
        let wait = {
            let backoff = self.dials.get(&addr).map_or(self.config.redial_min, |d| d.backoff);
            self.jitter(backoff)
        };
        let max = self.config.redial_max;
        if let Some(dial) = self.dials.get_mut(&addr) {
            if dial.conn == Some(conn) {
                dial.conn = None;
                dial.next_attempt = now + wait;
                dial.backoff = (dial.backoff * 2).min(max);
            }
        }
        // Whatever was in flight on that connection may be lost: forget it.
        for peer in self.peers.values_mut().filter(|p| p.info.addr == addr) {
            peer.sent = VersionVector::new();
            peer.pending.clear();
            peer.pending_bytes = 0;
            peer.pending_since = None;
            peer.catchup.clear();
            peer.transfer = None;
        }
    }

    /// The driver could not queue a frame (its per-connection queue is full);
    /// anti-entropy will resend what the peer still lacks.
    pub fn handle_send_dropped(&mut self, conn: ConnId) {
        if let Some(addr) = self.outbound.get(&conn) {
            let addr = *addr;
            for peer in self.peers.values_mut().filter(|p| p.info.addr == addr) {
                peer.sent = VersionVector::new();
                peer.stats.queue_drops += 1;
                // A lost chunk breaks a state transfer: start over rather than claim its vector.
                peer.transfer = None;
            }
        }
    }

    /// The driver could not read a frame.
    pub fn handle_frame_error(&mut self, now: Instant, conn: ConnId, error: FrameError) {
        self.counters.frames_refused += 1;
        let node = self.inbound.get(&conn).and_then(|c| c.node);
        let reason = match error {
            FrameError::Oversized(len) => format!("frame of {len} bytes exceeds the limit"),
            FrameError::Truncated => "stream ended inside a frame".to_string(),
        };
        self.refuse(conn, node, String::new(), reason, now);
    }

    /// A frame arrived on an inbound connection.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        wall_ns: u64,
        conn: ConnId,
        stream: StreamKind,
        body: &[u8],
        replica: &Replica,
    ) {
        let message = match Message::decode(body) {
            Ok(message) => message,
            Err(err) => return self.refuse_malformed(now, conn, err),
        };
        let state = self.inbound.entry(conn).or_default();
        let node = state.node;
        let first_on_stream = !state.hello_seen.contains(&stream);
        match message {
            Message::Hello(hello) => self.handle_hello(now, conn, stream, hello),
            _ if first_on_stream => {
                self.counters.frames_refused += 1;
                self.refuse(conn, node, String::new(), format!("{} before hello", message.kind()), now);
            }
            message => {
                let Some(node) = node else { return };
                self.handle_message(now, wall_ns, node, body.len() as u64 + 4, message, replica);
            }
        }
    }

    fn refuse_malformed(&mut self, now: Instant, conn: ConnId, err: DecodeError) {
        self.counters.frames_refused += 1;
        let node = self.inbound.get(&conn).and_then(|c| c.node);
        self.refuse(conn, node, String::new(), format!("malformed message: {err}"), now);
    }

    fn handle_hello(&mut self, now: Instant, conn: ConnId, stream: StreamKind, hello: Hello) {
        let claimed = format!("{} at {}", hello.me.region, hello.me.addr);
        let refusal = if hello.version != PROTOCOL_VERSION {
            Some(format!("protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})", hello.version))
        } else if hello.cluster != self.config.cluster {
            Some(format!("peer belongs to cluster {:?}, not {:?}", hello.cluster, self.config.cluster))
        } else if hello.me.node == self.config.node {
            Some("peer claims this node's own id".to_string())
        } else if self.decommissioned.contains_key(&hello.me.node) {
            Some(format!("member {} was decommissioned and may not rejoin", hello.me.node))
        } else {
            let state = self.inbound.entry(conn).or_default();
            match state.node {
                Some(existing) if existing != hello.me.node => {
                    Some("hello names a different node than earlier on this connection".into())
                }
                _ => None,
            }
        };
        if let Some(reason) = refusal {
            self.counters.peers_refused += 1;
            return self.refuse(conn, Some(hello.me.node), claimed, reason, now);
        }
        let node = hello.me.node;
        let state = self.inbound.entry(conn).or_default();
        state.node = Some(node);
        state.hello_seen.insert(stream);
        let addr = hello.me.addr;
        self.learn_member(hello.me, now);
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.last_heard = Some(now);
        }
        // The peer just reached us, so the path works again: do not sit out a
        // redial backoff earned while it was unreachable (after a partition
        // heals, whichever side dials first brings the other back at once).
        let min = self.config.redial_min;
        if let Some(dial) = self.dials.get_mut(&addr) {
            if dial.conn.is_none() && !dial.dialing && dial.next_attempt > now {
                dial.next_attempt = now;
                dial.backoff = min;
            }
        }
    }

    fn learn_member(&mut self, info: MemberInfo, now: Instant) {
        if info.node == self.config.node || self.decommissioned.contains_key(&info.node) {
            return;
        }
        let addr = info.addr;
        match self.peers.get_mut(&info.node) {
            Some(peer) => {
                if peer.info.addr != info.addr || peer.info.region != info.region {
                    peer.info = info;
                }
            }
            None => {
                if self.peers.len() >= MEMBERS_MAX {
                    return;
                }
                tracing::info!(node = %info.node, region = %info.region, addr = %info.addr, "new member");
                self.peers.insert(
                    info.node,
                    Peer {
                        info,
                        applied: BTreeMap::new(),
                        receipts: VecDeque::new(),
                        digest: None,
                        lists_us: false,
                        incoming_transfer: None,
                        last_heard: None,
                        vv: VersionVector::new(),
                        hlc: None,
                        offset_ms: 0,
                        log_floor: BTreeMap::new(),
                        sent: VersionVector::new(),
                        sent_reset_at: None,
                        pending: Vec::new(),
                        pending_bytes: 0,
                        pending_since: None,
                        last_flush: None,
                        catchup: VecDeque::new(),
                        transfer: None,
                        transfer_done_at: None,
                        stats: PeerStats::default(),
                    },
                );
            }
        }
        self.ensure_dial(addr, now);
    }

    fn handle_message(
        &mut self,
        now: Instant,
        wall_ns: u64,
        from: NodeId,
        frame_len: u64,
        message: Message,
        replica: &Replica,
    ) {
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        peer.last_heard = Some(now);
        peer.stats.bytes_received += frame_len;
        match message {
            Message::Hello(_) => {}
            Message::Heartbeat(heartbeat) => self.handle_heartbeat(now, wall_ns, from, heartbeat, replica),
            Message::Changes(records) => {
                peer.stats.changes_received += records.len() as u64;
                if !records.is_empty() {
                    self.events.push_back(Event::Records { from, records });
                }
            }
            Message::Snapshot(chunk) => {
                // `covers` may only be claimed if every chunk of this transfer arrived, in order.
                let state = match peer.incoming_transfer {
                    Some((id, next, missed)) if id == chunk.transfer => {
                        (id, chunk.chunk + 1, missed || chunk.chunk != next)
                    }
                    _ => (chunk.transfer, chunk.chunk + 1, chunk.chunk != 0),
                };
                peer.incoming_transfer = Some(state);
                let covers = match chunk.covers {
                    Some(covers) if !state.2 => Some(covers),
                    Some(_) => {
                        tracing::warn!(peer = %from, transfer = chunk.transfer, "state transfer missed a chunk; its vector is not claimed");
                        None
                    }
                    None => None,
                };
                if covers.is_some() {
                    peer.incoming_transfer = None;
                }
                self.events.push_back(Event::Snapshot { from, docs: chunk.docs, covers });
            }
        }
    }

    fn handle_heartbeat(&mut self, now: Instant, wall_ns: u64, from: NodeId, heartbeat: Heartbeat, replica: &Replica) {
        let offset_ms = (heartbeat.hlc.wall_ns() as i128 - wall_ns as i128) / 1_000_000;
        for closed in &heartbeat.closed {
            self.note_closed(*closed);
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            for &(origin, seq) in &heartbeat.applied {
                let previous = peer.applied.insert(origin, seq).unwrap_or(0);
                if seq > previous {
                    peer.receipts.push_back((origin, seq, wall_ns));
                    if peer.receipts.len() > RECEIPTS_KEPT {
                        peer.receipts.pop_front();
                    }
                }
            }
            peer.digest = Some(heartbeat.digest);
            peer.lists_us = heartbeat.members.iter().any(|m| m.node == self.config.node);
            peer.vv = heartbeat.vv;
            peer.hlc = Some(heartbeat.hlc);
            peer.offset_ms = offset_ms as i64;
            peer.log_floor = heartbeat.log_floor.into_iter().collect();
        }
        self.events.push_back(Event::PeerClock { node: from, hlc: heartbeat.hlc, offset_ms: offset_ms as i64 });
        for (node, last) in heartbeat.decommissioned {
            if node != self.config.node {
                self.remove_member(node, last);
            }
        }
        for member in heartbeat.members {
            self.learn_member(member, now);
        }
        if !self.admitted && self.peers.values().all(|p| p.lists_us) {
            tracing::info!(members = self.peers.len(), "admitted: every known member knows this node");
            self.admitted = true;
        }
        self.anti_entropy(now, from, replica);
    }

    /// Plans what `node` lacks: catch-up from the log, or a state transfer
    /// when the log no longer reaches back far enough.
    fn anti_entropy(&mut self, now: Instant, node: NodeId, replica: &Replica) {
        let resend_after = self.config.resend_after;
        let cooldown = self.config.transfer_cooldown;
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        if peer.transfer.is_some() {
            return;
        }
        if peer.sent_reset_at.is_none_or(|at| now.duration_since(at) >= resend_after) {
            // Anything sent long ago and still missing is sent again.
            peer.sent = VersionVector::new();
            peer.sent_reset_at = Some(now);
        }
        let mut known = peer.vv.clone();
        known.merge(&peer.sent);
        let mut advertised = replica.version_vector().clone();
        advertised.cap(self.config.node, self.local_durable);
        let missing = advertised.missing_from(&known);
        if missing.is_empty() {
            peer.catchup.clear();
            return;
        }
        let log = replica.log();
        // The log must hold every record of every missing range; a range it
        // holds only in part (below its floor, or with holes after an earlier
        // state transfer) can only be served by a state transfer.
        let needs_transfer = missing.iter().any(|range| {
            log.range(range.origin, range.start..=range.end).count() as u64 != range.end - range.start + 1
        });
        if needs_transfer {
            if peer.transfer_done_at.is_some_and(|at| now.duration_since(at) < cooldown) {
                return;
            }
            let id = self.next_transfer_id;
            self.next_transfer_id += 1;
            tracing::info!(peer = %node, transfer = id, "peer lacks changes the log no longer holds; starting state transfer");
            peer.catchup.clear();
            // A transfer covers what is applied (a change automerge holds back
            // is not in the saved documents) and durable.
            let mut covers = replica.applied_version_vector().clone();
            covers.cap(self.config.node, self.local_durable);
            peer.transfer = Some(Transfer { id, covers, after: None, chunks_sent: 0 });
            peer.stats.transfers_sent += 1;
        } else {
            peer.catchup = missing.into_iter().collect();
        }
        self.pump_catchup(now, node, replica);
    }

    /// Sends up to one tick's budget of catch-up or snapshot data to `node`.
    fn pump_catchup(&mut self, now: Instant, node: NodeId, replica: &Replica) {
        if self.conn_of(node).is_none() {
            return;
        }
        let batch_bytes_max = self.config.batch_bytes_max;
        let local_durable = self.local_durable;
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        if let Some(transfer) = &mut peer.transfer {
            let budget = self.config.snapshot_bytes_per_tick;
            let mut docs = Vec::new();
            let mut bytes = 0;
            let mut finished = true;
            for id in replica.all_doc_ids(transfer.after.as_deref(), usize::MAX) {
                // A cold document's bytes come from the node's store without loading it.
                let saved = match replica.saved(&id) {
                    Ok(Some(saved)) => saved,
                    Ok(None) => continue,
                    Err(err) => {
                        // Never skip it silently: the peer would believe it holds everything.
                        tracing::warn!(doc = %id, cause = %err, "state transfer paused: a document does not load");
                        finished = false;
                        break;
                    }
                };
                if saved.last_local_seq > local_durable {
                    // Holds a local change not durable yet: wait for it (next tick).
                    finished = false;
                    break;
                }
                let saved = saved.bytes;
                if saved.len() + 1024 > crate::message::FRAME_BYTES_MAX {
                    // Cannot travel in one frame; the peer gets its changes from the log instead, if it still holds them.
                    tracing::warn!(doc = %id, bytes = saved.len(), "document too large for a state-transfer frame; skipped");
                    transfer.after = Some(id.as_str().to_string());
                    continue;
                }
                if !docs.is_empty() && bytes + saved.len() > budget {
                    finished = false;
                    break;
                }
                bytes += saved.len();
                transfer.after = Some(id.as_str().to_string());
                docs.push((id, saved));
            }
            let covers = finished.then(|| transfer.covers.clone());
            let chunk = Message::Snapshot(SnapshotChunk {
                transfer: transfer.id,
                chunk: transfer.chunks_sent,
                docs,
                covers: covers.clone(),
            });
            transfer.chunks_sent += 1;
            if finished {
                peer.transfer = None;
                peer.transfer_done_at = Some(now);
                // What the transfer covered counts as sent from now on.
                peer.sent_reset_at = Some(now);
                if let Some(covers) = &covers {
                    peer.sent.merge(covers);
                }
            }
            self.send(node, StreamKind::CatchUp, &chunk);
            return;
        }
        let mut budget = self.config.catchup_bytes_per_tick;
        let mut batches: Vec<Vec<ChangeRecord>> = Vec::new();
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while budget > 0 {
            let Some(range) = peer.catchup.front_mut() else {
                break;
            };
            let mut next_start = range.end + 1;
            for record in replica.log().range(range.origin, range.start..=range.end) {
                let size = record.change_bytes() + 48;
                if size > budget && !batch.is_empty() {
                    next_start = record.meta.seq;
                    budget = 0;
                    break;
                }
                budget = budget.saturating_sub(size);
                peer.sent.insert(record.meta.origin, record.meta.seq);
                batch_bytes += size;
                batch.push(record.clone());
                if batch_bytes >= batch_bytes_max {
                    batches.push(std::mem::take(&mut batch));
                    batch_bytes = 0;
                }
            }
            if next_start > range.end {
                peer.catchup.pop_front();
            } else {
                range.start = next_start;
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        for batch in batches {
            self.send(node, StreamKind::CatchUp, &Message::Changes(batch));
        }
    }

    /// New durable local changes: queue them for every connected peer.
    pub fn handle_local_records(&mut self, now: Instant, records: &[ChangeRecord]) {
        let own = self.config.node;
        if let Some(max) = records.iter().filter(|r| r.meta.origin == own).map(|r| r.meta.seq).max() {
            self.local_durable = self.local_durable.max(max);
        }
        let queue_max = self.config.queue_bytes_max;
        let connected: Vec<NodeId> = self.peers.keys().copied().filter(|n| self.conn_of(*n).is_some()).collect();
        for node in connected {
            let Some(peer) = self.peers.get_mut(&node) else {
                continue;
            };
            for record in records {
                peer.pending_bytes += record.change_bytes();
                peer.pending.push(record.clone());
            }
            if peer.pending_bytes > queue_max {
                // The peer fell behind: drop its queue; anti-entropy catches it up.
                peer.pending.clear();
                peer.pending_bytes = 0;
                peer.pending_since = None;
                peer.stats.queue_drops += 1;
                continue;
            }
            if peer.pending_since.is_none() && !peer.pending.is_empty() {
                // Linger only right after a send: a link that was quiet for a
                // whole linger sends at once, so light load pays no batching
                // delay and heavy load still sends at most one batch per linger.
                let idle = peer.last_flush.is_none_or(|t| now.duration_since(t) >= self.config.linger);
                peer.pending_since = Some(if idle { now.checked_sub(self.config.linger).unwrap_or(now) } else { now });
            }
        }
        self.flush_live(now, false);
    }

    fn flush_live(&mut self, now: Instant, force: bool) {
        let linger = self.config.linger;
        let batch_max = self.config.batch_bytes_max;
        let due: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                !p.pending.is_empty()
                    && (force
                        || p.pending_bytes >= batch_max
                        || p.pending_since.is_some_and(|t| now.duration_since(t) >= linger))
            })
            .map(|(n, _)| *n)
            .collect();
        for node in due {
            let Some(peer) = self.peers.get_mut(&node) else {
                continue;
            };
            let records = std::mem::take(&mut peer.pending);
            peer.pending_bytes = 0;
            peer.pending_since = None;
            peer.last_flush = Some(now);
            for record in &records {
                peer.sent.insert(record.meta.origin, record.meta.seq);
            }
            // Split into messages of at most `batch_bytes_max` change bytes.
            let mut batch = Vec::new();
            let mut bytes = 0;
            for record in records {
                bytes += record.change_bytes();
                batch.push(record);
                if bytes >= batch_max {
                    self.send(node, StreamKind::Live, &Message::Changes(std::mem::take(&mut batch)));
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                self.send(node, StreamKind::Live, &Message::Changes(batch));
            }
        }
    }

    /// What this node may claim to hold: its vector without local changes that are not durable yet.
    fn advertised(&self, replica: &Replica) -> VersionVector {
        let mut vv = replica.version_vector().clone();
        vv.cap(self.config.node, self.local_durable);
        vv
    }

    /// Applied changes this node may claim (same cap as [`Gossip::advertised`]).
    fn advertised_applied(&self, replica: &Replica) -> VersionVector {
        let mut vv = replica.applied_version_vector().clone();
        vv.cap(self.config.node, self.local_durable);
        vv
    }

    /// Records a closed timestamp, keeping per origin an increasing, bounded history.
    fn note_closed(&mut self, closed: Closed) {
        let history = self.closed.entry(closed.origin).or_default();
        if history.back().is_some_and(|last| last.t >= closed.t) {
            return;
        }
        history.push_back(closed);
        if history.len() > CLOSED_KEPT {
            history.pop_front();
        }
    }

    /// The newest closed timestamp of `origin` whose changes up to `n` are
    /// all applied here (`applied_prefix`): origin is closed up to its `t` here.
    pub fn effective_closed(&self, origin: NodeId, applied_prefix: u64) -> Option<Closed> {
        self.closed.get(&origin)?.iter().rev().find(|c| c.n <= applied_prefix).copied()
    }

    /// When we first learned that `member` had applied `origin`'s change `seq` (our wall ns).
    pub fn receipt(&self, member: NodeId, origin: NodeId, seq: u64) -> Option<u64> {
        let peer = self.peers.get(&member)?;
        peer.receipts.iter().find(|(o, prefix, _)| *o == origin && *prefix >= seq).map(|(_, _, at)| *at)
    }

    /// Timers: heartbeats, linger flushes, dials, catch-up pacing. `closed`
    /// is this node's own closed timestamp, computed by the caller.
    pub fn handle_timeout(&mut self, now: Instant, hlc: Hlc, closed: Closed, replica: &Replica) {
        // Our own closed `n` is the last durable local sequence number.
        self.local_durable = self.local_durable.max(closed.n);
        self.note_closed(closed);
        self.flush_live(now, false);
        for (addr, dial) in self.dials.iter_mut() {
            if dial.conn.is_none() && !dial.dialing && dial.next_attempt <= now {
                dial.dialing = true;
                self.dial_queue.push_back(*addr);
            }
        }
        if self.next_heartbeat.is_some_and(|t| t <= now) {
            self.next_heartbeat = Some(now + self.config.heartbeat_interval);
            let heartbeat = Message::Heartbeat(self.heartbeat(hlc, replica));
            let nodes: Vec<NodeId> = self.peers.keys().copied().collect();
            for node in nodes {
                self.send(node, StreamKind::Live, &heartbeat);
                let busy = self.peers.get(&node).is_some_and(|p| p.transfer.is_some() || !p.catchup.is_empty());
                if busy {
                    self.pump_catchup(now, node, replica);
                }
            }
        }
    }

    fn heartbeat(&self, hlc: Hlc, replica: &Replica) -> Heartbeat {
        let vv = self.advertised(replica);
        let applied_vv = &self.advertised_applied(replica);
        let applied = applied_vv.origins().map(|o| (o, applied_vv.contiguous(o))).collect();
        let closed = self.closed.values().filter_map(|h| h.back().copied()).take(MEMBERS_MAX).collect();
        let log_floor = vv
            .origins()
            .map(|origin| (origin, replica.log().first_seq(origin).unwrap_or(vv.contiguous(origin) + 1)))
            .collect();
        let mut members: Vec<MemberInfo> = vec![self.me()];
        members.extend(self.peers.values().map(|p| p.info.clone()).take(MEMBERS_MAX - 1));
        let decommissioned = self.decommissioned.iter().map(|(n, s)| (*n, *s)).take(DECOMMISSIONED_MAX).collect();
        Heartbeat { hlc, vv, log_floor, members, applied, closed, digest: replica.digest(), decommissioned }
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next address to dial; answer with [`Gossip::handle_dial_result`].
    pub fn poll_dial(&mut self) -> Option<SocketAddr> {
        self.dial_queue.pop_front()
    }

    /// The next event for the node.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let linger = self.peers.values().filter_map(|p| p.pending_since.map(|t| t + self.config.linger));
        let dials = self.dials.values().filter(|d| d.conn.is_none() && !d.dialing).map(|d| d.next_attempt);
        self.next_heartbeat.into_iter().chain(linger).chain(dials).min()
    }

    /// Liveness of a peer at `now`.
    pub fn peer_state(&self, node: NodeId, now: Instant) -> PeerState {
        let Some(peer) = self.peers.get(&node) else {
            return PeerState::Unknown;
        };
        match peer.last_heard {
            None => PeerState::Unknown,
            Some(t) if now.duration_since(t) < self.config.suspect_after => PeerState::Alive,
            Some(t) if now.duration_since(t) < self.config.down_after => PeerState::Suspect,
            Some(_) => PeerState::Down,
        }
    }

    /// Per origin, the highest sequence number every member holds
    /// contiguously (ourselves included): the log may be truncated up to it.
    /// A member never heard from, or down, holds it back.
    pub fn truncation_point(&self, replica: &Replica) -> BTreeMap<NodeId, u64> {
        let local = replica.version_vector();
        local
            .origins()
            .map(|origin| {
                let everyone = self.peers.values().map(|p| p.vv.contiguous(origin)).min().unwrap_or(u64::MAX);
                (origin, local.contiguous(origin).min(everyone))
            })
            .collect()
    }

    /// Status of every member.
    pub fn members(&self, now: Instant) -> Vec<MemberStatus> {
        self.peers
            .values()
            .map(|peer| {
                let dial = self.dials.get(&peer.info.addr);
                MemberStatus {
                    info: peer.info.clone(),
                    state: self.peer_state(peer.info.node, now),
                    last_heard_ago: peer.last_heard.map(|t| now.duration_since(t)),
                    vv: peer.vv.clone(),
                    hlc: peer.hlc,
                    offset_ms: peer.offset_ms,
                    connected: dial.is_some_and(|d| d.conn.is_some()),
                    last_dial_error: dial.and_then(|d| d.last_error.clone()),
                    queue_bytes: peer.pending_bytes,
                    stats: peer.stats.clone(),
                    applied: peer.applied.clone(),
                    digest: peer.digest,
                }
            })
            .collect()
    }

    /// Every member's node and region, borrowed: for the per-read freshness
    /// computation, where [`Gossip::members`] would copy far more than it needs.
    pub fn member_regions(&self) -> impl Iterator<Item = (NodeId, &str)> + '_ {
        self.peers.values().map(|peer| (peer.info.node, peer.info.region.as_str()))
    }

    /// Recently refused peers, newest last.
    pub fn refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals.iter()
    }

    /// Protocol counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The node a connection belongs to, once its hello arrived.
    pub fn node_of(&self, conn: ConnId) -> Option<NodeId> {
        self.inbound.get(&conn).and_then(|c| c.node).or_else(|| {
            let addr = self.outbound.get(&conn)?;
            self.peers.values().find(|p| p.info.addr == *addr).map(|p| p.info.node)
        })
    }

    /// Removes `node` from the cluster for good: it leaves membership, the
    /// log-truncation point and (once its last change, as far as any member
    /// here knows, is applied) safe time; it may not rejoin. Spreads by
    /// heartbeat. Returns the last sequence number recorded for it.
    ///
    /// Meant for a member that is stopped for good: changes it made that no
    /// other member holds are lost with it.
    pub fn decommission(&mut self, node: NodeId, replica: &Replica) -> Result<u64, DecommissionError> {
        if node == self.config.node {
            return Err(DecommissionError::Myself);
        }
        let known = self.peers.contains_key(&node)
            || self.decommissioned.contains_key(&node)
            || replica.version_vector().origins().any(|o| o == node);
        if !known {
            return Err(DecommissionError::Unknown(node));
        }
        let held =
            self.peers.values().map(|p| p.vv.contiguous(node)).chain([replica.version_vector().contiguous(node)]);
        let last = held.max().unwrap_or(0);
        self.remove_member(node, last);
        Ok(self.decommissioned[&node])
    }

    fn remove_member(&mut self, node: NodeId, last: u64) {
        let entry = self.decommissioned.entry(node).or_insert(0);
        *entry = (*entry).max(last);
        let Some(peer) = self.peers.remove(&node) else { return };
        tracing::info!(node = %node, region = %peer.info.region, last_seq = last, "member decommissioned");
        if let Some(dial) = self.dials.remove(&peer.info.addr) {
            if let Some(conn) = dial.conn {
                self.outbound.remove(&conn);
                self.events.push_back(Event::Close { conn, reason: "member decommissioned".into() });
            }
        }
        let inbound: Vec<ConnId> =
            self.inbound.iter().filter(|(_, c)| c.node == Some(node)).map(|(conn, _)| *conn).collect();
        for conn in inbound {
            self.inbound.remove(&conn);
            self.events.push_back(Event::Close { conn, reason: "member decommissioned".into() });
        }
    }

    /// Whether this node has heard from any member yet. A node that joins
    /// through seeds knows nothing of the cluster until then, so it cannot
    /// claim any freshness.
    pub fn heard_from_any_member(&self) -> bool {
        self.peers.values().any(|p| p.last_heard.is_some())
    }

    /// Whether this node may take writes. A node joining through seeds is
    /// admitted once every member it knows lists it in a heartbeat, so no
    /// member computes safe time without it: a write made before some member
    /// knew the writer existed could hide below that member's safe time.
    /// Founding nodes (no seeds) and nodes that were admitted before are
    /// admitted at once. Admission is never taken back.
    pub fn admitted(&self) -> bool {
        self.admitted
    }

    /// Known members that do not list this node yet (while joining).
    pub fn not_yet_listing_us(&self) -> Vec<MemberInfo> {
        self.peers.values().filter(|p| !p.lists_us).map(|p| p.info.clone()).collect()
    }

    /// The last sequence number of a decommissioned member, if it is one.
    pub fn decommissioned(&self, node: NodeId) -> Option<u64> {
        self.decommissioned.get(&node).copied()
    }

    /// Every decommissioned member with its last sequence number.
    pub fn decommissioned_members(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.decommissioned.iter().map(|(n, s)| (*n, *s))
    }

    /// The address of a known member.
    pub fn addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        self.peers.get(&node).map(|p| p.info.addr)
    }
}
