//! The quinn driver: the only code that touches sockets and spawns tasks.
//!
//! It owns the QUIC endpoint (over the link-emulating socket), accepts and
//! dials connections, reads and writes length-prefixed frames, and moves
//! inputs and outputs between the network and the protocol core. The core
//! itself lives with the node's replica behind the [`Host`] lock; the driver
//! reaches it only through [`Host::with_core`].
//!
//! Every stream starts with one byte naming its kind (0 live, 1 catch-up),
//! then frames `[u32 length][message]`. A frame over [`FRAME_BYTES_MAX`] or a
//! stream ending inside a frame is reported to the core, which refuses the
//! peer. Per-connection send queues are bounded; a full queue drops the
//! frame and tells the core, whose anti-entropy resends what matters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_crdt::{Hlc, Replica};
use tokio::sync::{mpsc, Notify};

use crate::core::{ConnId, Event, FrameError, Gossip, StreamKind};
use crate::link::LinkEmulator;
use crate::message::FRAME_BYTES_MAX;

/// Frames queued per connection stream before new ones are dropped.
pub const SEND_QUEUE_FRAMES_MAX: usize = 1024;
/// Events from connection tasks waiting for the driver loop.
const EVENT_QUEUE_MAX: usize = 4096;
/// Longest a dial's handshake may take: several round trips of the widest
/// WAN link; a lost handshake is retried with a new dial instead.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Time inputs for one call into the core, read by the host under its lock.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    /// Monotonic now.
    pub now: Instant,
    /// Wall clock, ns since the Unix epoch.
    pub wall_ns: u64,
    /// A fresh HLC timestamp.
    pub hlc: Hlc,
    /// This node's closed timestamp now.
    pub closed: crate::message::Closed,
}

/// The node, as the driver sees it.
pub trait Host: Send + Sync + 'static {
    /// Runs `f` on the core and the replica under the node's lock.
    fn with_core<R>(&self, f: impl FnOnce(&mut Gossip, &Replica, Clocks) -> R) -> R;
    /// Acts on an event from the core (called outside the lock).
    fn handle_event(&self, event: Event);
}

/// Driver settings.
pub struct DriverConfig {
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Accepts peers (mutual TLS).
    pub server: quinn::ServerConfig,
    /// Dials peers (mutual TLS).
    pub client: quinn::ClientConfig,
    /// The TLS server name peers' certificates carry.
    pub server_name: String,
    /// Link emulation (no faults unless configured).
    pub link: LinkEmulator,
}

/// Transport figures per outbound connection, for status and metrics.
#[derive(Clone, Debug, Default)]
pub struct PathInfo {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// UDP bytes sent on the connection.
    pub udp_bytes_sent: u64,
    /// UDP bytes received on the connection.
    pub udp_bytes_received: u64,
}

/// Counters the driver keeps itself.
#[derive(Debug, Default)]
pub struct DriverStats {
    /// TLS/QUIC handshakes that failed on accepted connections (e.g. a certificate from another CA).
    pub handshakes_refused: AtomicU64,
    /// Frames dropped because a send queue was full.
    pub frames_dropped: AtomicU64,
}

/// A running driver.
pub struct DriverHandle {
    /// Wakes the driver loop (new local records, admin changes).
    pub wake: Arc<Notify>,
    /// The bound peer address.
    pub local_addr: SocketAddr,
    /// Per-peer-address transport figures.
    pub paths: Arc<Mutex<HashMap<SocketAddr, PathInfo>>>,
    /// Counters.
    pub stats: Arc<DriverStats>,
    /// The link emulator in force.
    pub link: LinkEmulator,
    shutdown: Arc<Notify>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DriverHandle {
    /// Stops the driver: closes every connection and the endpoint.
    pub async fn shutdown(&self) {
        self.shutdown.notify_one();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

enum NetEvent {
    Accepted { conn: ConnId, connection: quinn::Connection },
    Dialed { addr: SocketAddr, result: Result<(ConnId, quinn::Connection), String> },
    Frame { conn: ConnId, stream: StreamKind, body: Vec<u8> },
    FrameError { conn: ConnId, error: FrameError },
    Closed { conn: ConnId },
}

struct ConnEntry {
    connection: quinn::Connection,
    peer_addr: Option<SocketAddr>,
    senders: HashMap<StreamKind, mpsc::Sender<Vec<u8>>>,
}

/// Binds the endpoint and starts the driver loop.
pub fn spawn<H: Host>(host: Arc<H>, config: DriverConfig) -> std::io::Result<DriverHandle> {
    let socket = config.link.bind(config.listen)?;
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(config.server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(config.client);
    let local_addr = endpoint.local_addr()?;
    let wake = Arc::new(Notify::new());
    let shutdown = Arc::new(Notify::new());
    let paths = Arc::new(Mutex::new(HashMap::new()));
    let stats = Arc::new(DriverStats::default());
    let driver = Driver {
        host,
        endpoint,
        server_name: config.server_name,
        conns: HashMap::new(),
        next_conn: Arc::new(AtomicU64::new(1)),
        wake: wake.clone(),
        paths: paths.clone(),
        stats: stats.clone(),
    };
    let task = tokio::spawn(driver.run(shutdown.clone()));
    Ok(DriverHandle { wake, local_addr, paths, stats, link: config.link, shutdown, task: Mutex::new(Some(task)) })
}

struct Driver<H> {
    host: Arc<H>,
    endpoint: quinn::Endpoint,
    server_name: String,
    conns: HashMap<ConnId, ConnEntry>,
    next_conn: Arc<AtomicU64>,
    wake: Arc<Notify>,
    paths: Arc<Mutex<HashMap<SocketAddr, PathInfo>>>,
    stats: Arc<DriverStats>,
}

impl<H: Host> Driver<H> {
    async fn run(mut self, shutdown: Arc<Notify>) {
        let (events_tx, mut events_rx) = mpsc::channel::<NetEvent>(EVENT_QUEUE_MAX);
        let mut stats_tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let deadline = self.host.with_core(|gossip, _, _| gossip.poll_timeout());
            let sleep = match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = shutdown.notified() => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
                    let events = events_tx.clone();
                    let stats = self.stats.clone();
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(connection) => { let _ = events.send(NetEvent::Accepted { conn, connection }).await; }
                            Err(err) => {
                                stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(cause = %err, "refused a peer connection during the handshake");
                            }
                        }
                    });
                }
                Some(event) = events_rx.recv() => self.handle_net_event(event, &events_tx),
                _ = sleep => {
                    self.host.with_core(|gossip, replica, clocks| gossip.handle_timeout(clocks.now, clocks.hlc, clocks.closed, replica));
                }
                _ = self.wake.notified() => {}
                _ = stats_tick.tick() => self.refresh_paths(),
            }
            self.pump(&events_tx);
        }
        for entry in self.conns.values() {
            entry.connection.close(0u32.into(), b"shutting down");
        }
        self.endpoint.close(0u32.into(), b"shutting down");
    }

    fn handle_net_event(&mut self, event: NetEvent, events_tx: &mpsc::Sender<NetEvent>) {
        match event {
            NetEvent::Accepted { conn, connection } => {
                spawn_readers(conn, connection.clone(), events_tx.clone());
                self.conns.insert(conn, ConnEntry { connection, peer_addr: None, senders: HashMap::new() });
            }
            NetEvent::Dialed { addr, result } => match result {
                Ok((conn, connection)) => {
                    let mut senders = HashMap::new();
                    for stream in [StreamKind::Live, StreamKind::CatchUp] {
                        let (tx, rx) = mpsc::channel(SEND_QUEUE_FRAMES_MAX);
                        senders.insert(stream, tx);
                        tokio::spawn(write_stream(connection.clone(), stream, rx));
                    }
                    let watcher = connection.clone();
                    let events = events_tx.clone();
                    tokio::spawn(async move {
                        watcher.closed().await;
                        let _ = events.send(NetEvent::Closed { conn }).await;
                    });
                    self.conns.insert(conn, ConnEntry { connection, peer_addr: Some(addr), senders });
                    self.host.with_core(|gossip, _, clocks| gossip.handle_dial_result(clocks.now, addr, Ok(conn)));
                }
                Err(reason) => {
                    tracing::debug!(peer = %addr, reason = %reason, "dial failed");
                    self.host.with_core(|gossip, _, clocks| gossip.handle_dial_result(clocks.now, addr, Err(reason)));
                }
            },
            NetEvent::Frame { conn, stream, body } => {
                self.host.with_core(|gossip, replica, clocks| {
                    gossip.handle_frame(clocks.now, clocks.wall_ns, conn, stream, &body, replica)
                });
            }
            NetEvent::FrameError { conn, error } => {
                self.host.with_core(|gossip, _, clocks| gossip.handle_frame_error(clocks.now, conn, error));
            }
            NetEvent::Closed { conn } => {
                if let Some(entry) = self.conns.remove(&conn) {
                    if let Some(addr) = entry.peer_addr {
                        self.paths.lock().unwrap_or_else(|e| e.into_inner()).remove(&addr);
                    }
                }
                self.host.with_core(|gossip, _, clocks| gossip.handle_closed(clocks.now, conn));
            }
        }
    }

    /// Moves everything the core produced onto the network and to the host.
    fn pump(&mut self, events_tx: &mpsc::Sender<NetEvent>) {
        let (transmits, dials, events) = self.host.with_core(|gossip, _, _| {
            let transmits: Vec<_> = std::iter::from_fn(|| gossip.poll_transmit()).collect();
            let dials: Vec<_> = std::iter::from_fn(|| gossip.poll_dial()).collect();
            let events: Vec<_> = std::iter::from_fn(|| gossip.poll_event()).collect();
            (transmits, dials, events)
        });
        let mut dropped = Vec::new();
        for transmit in transmits {
            let Some(sender) = self.conns.get(&transmit.conn).and_then(|c| c.senders.get(&transmit.stream)) else {
                continue;
            };
            if sender.try_send(transmit.frame).is_err() {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                dropped.push(transmit.conn);
            }
        }
        if !dropped.is_empty() {
            self.host.with_core(|gossip, _, _| dropped.iter().for_each(|&conn| gossip.handle_send_dropped(conn)));
        }
        for addr in dials {
            let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
            let events = events_tx.clone();
            let connecting = self.endpoint.connect(addr, &self.server_name);
            tokio::spawn(async move {
                let result = match connecting {
                    // A handshake whose packets were lost (a partition) would otherwise
                    // wait out QUIC's growing retransmission timers, up to the idle
                    // timeout; a fresh dial after DIAL_TIMEOUT finds a healed path sooner.
                    Ok(connecting) => match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
                        Ok(done) => done.map(|c| (conn, c)).map_err(|e| e.to_string()),
                        Err(_) => Err(format!("handshake not done within {} ms", DIAL_TIMEOUT.as_millis())),
                    },
                    Err(err) => Err(err.to_string()),
                };
                let _ = events.send(NetEvent::Dialed { addr, result }).await;
            });
        }
        for event in events {
            match event {
                Event::Close { conn, reason } => {
                    if let Some(entry) = self.conns.remove(&conn) {
                        let reason: String = reason.chars().take(200).collect();
                        entry.connection.close(1u32.into(), reason.as_bytes());
                    }
                }
                other => self.host.handle_event(other),
            }
        }
    }

    fn refresh_paths(&self) {
        let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        for entry in self.conns.values() {
            if let Some(addr) = entry.peer_addr {
                let stats = entry.connection.stats();
                paths.insert(
                    addr,
                    PathInfo {
                        rtt: entry.connection.rtt(),
                        udp_bytes_sent: stats.udp_tx.bytes,
                        udp_bytes_received: stats.udp_rx.bytes,
                    },
                );
            }
        }
    }
}

fn stream_byte(stream: StreamKind) -> u8 {
    match stream {
        StreamKind::Live => 0,
        StreamKind::CatchUp => 1,
    }
}

async fn write_stream(connection: quinn::Connection, stream: StreamKind, mut frames: mpsc::Receiver<Vec<u8>>) {
    let Ok(mut send) = connection.open_uni().await else {
        return;
    };
    if send.write_all(&[stream_byte(stream)]).await.is_err() {
        return;
    }
    while let Some(frame) = frames.recv().await {
        if send.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Accepts the peer's streams on an inbound connection and reads their frames.
fn spawn_readers(conn: ConnId, connection: quinn::Connection, events: mpsc::Sender<NetEvent>) {
    tokio::spawn(async move {
        loop {
            match connection.accept_uni().await {
                Ok(recv) => {
                    tokio::spawn(read_stream(conn, recv, events.clone()));
                }
                Err(_) => {
                    let _ = events.send(NetEvent::Closed { conn }).await;
                    return;
                }
            }
        }
    });
}

async fn read_stream(conn: ConnId, mut recv: quinn::RecvStream, events: mpsc::Sender<NetEvent>) {
    let mut kind = [0u8; 1];
    if recv.read_exact(&mut kind).await.is_err() {
        return;
    }
    let stream = match kind[0] {
        0 => StreamKind::Live,
        1 => StreamKind::CatchUp,
        _ => {
            let _ = events.send(NetEvent::FrameError { conn, error: FrameError::Truncated }).await;
            return;
        }
    };
    loop {
        let mut len = [0u8; 4];
        match recv.read_exact(&mut len).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return,
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                let _ = events.send(NetEvent::FrameError { conn, error: FrameError::Truncated }).await;
                return;
            }
            Err(_) => return,
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > FRAME_BYTES_MAX {
            let _ = events.send(NetEvent::FrameError { conn, error: FrameError::Oversized(len) }).await;
            return;
        }
        let mut body = vec![0u8; len];
        match recv.read_exact(&mut body).await {
            Ok(()) => {
                if events.send(NetEvent::Frame { conn, stream, body }).await.is_err() {
                    return;
                }
            }
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                let _ = events.send(NetEvent::FrameError { conn, error: FrameError::Truncated }).await;
                return;
            }
            Err(_) => return,
        }
    }
}
