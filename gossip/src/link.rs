//! Link emulation: WAN conditions imposed inside the node, on its own UDP socket.
//!
//! The machines Meridian is tested on have no `netem`, so delay, jitter,
//! loss and partitions between regions are emulated here, by a wrapper
//! around the UDP socket quinn uses ([`LinkEmulator::bind`]). Because the
//! faults are applied to real datagrams below QUIC, the real QUIC stack
//! reacts to them as it would on a real WAN: RTT estimates grow,
//! congestion control backs off, lost packets are retransmitted, handshakes
//! and idle connections time out, and the driver reconnects.
//!
//! What is emulated, and where:
//!
//! * **Outgoing packets of this node**, per remote address
//!   ([`LinkEmulator::set_outbound`]): a one-way delay with uniform jitter
//!   (`delay ± jitter`, never negative; jitter reorders packets, as real
//!   networks do), random loss, or a full cut. Each node only ever delays
//!   or drops what *it* sends, so a symmetric 40 ms link is 40 ms on both
//!   nodes.
//! * **Incoming packets**, per source address
//!   ([`LinkEmulator::set_inbound_cut`]): datagrams from a cut source are
//!   dropped before quinn sees them. With outbound cuts this allows
//!   one-directional (asymmetric) partitions to be made from either end.
//!
//! It is off unless configured: with no outbound fault configured, sending
//! costs one relaxed atomic load before the real socket is called, and with
//! no inbound cut, receiving costs one relaxed atomic load too. Faults are
//! looked up (under a read lock) only while some fault is configured.
//!
//! Loss and jitter come from a seeded SplitMix64 generator, so a run is
//! reproducible up to the interleaving of the threads that send.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime as _, UdpPoller};

/// Largest accepted one-way delay, in milliseconds.
pub const MAX_DELAY_MS: u32 = 60_000;
/// Largest accepted jitter, in milliseconds.
pub const MAX_JITTER_MS: u32 = 10_000;
/// Most outgoing transmits that may wait in the delay line at once (per
/// emulator); beyond it, packets are dropped (and counted) so memory
/// stays bounded whatever the send rate.
pub const MAX_DELAYED_IN_FLIGHT: usize = 16_384;
/// How many times a delayed packet is retried when the socket is full.
const SEND_RETRIES: u32 = 3;
/// Pause between those retries.
const SEND_RETRY_PAUSE: Duration = Duration::from_millis(1);
/// How many batches `poll_recv` reads and wholly discards (every datagram
/// from a cut source) before yielding to the executor.
const MAX_FILTERED_ROUNDS: usize = 32;

/// The fault imposed on packets this node sends to one peer.
///
/// The default (all zero, `cut: false`) is a healthy link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFault {
    /// One-way delay added to every outgoing packet, in milliseconds.
    pub delay_ms: u32,
    /// Each packet's delay is drawn uniformly from `delay ± jitter`
    /// (clamped at zero), in milliseconds.
    pub jitter_ms: u32,
    /// Probability, `0.0..=1.0`, that an outgoing packet is dropped.
    pub loss: f64,
    /// Drop every outgoing packet to this peer.
    pub cut: bool,
}

impl LinkFault {
    /// Whether this is the healthy link (nothing to emulate).
    pub fn is_healthy(&self) -> bool {
        let no_loss = self.loss.is_nan() || self.loss <= 0.0;
        !self.cut && self.delay_ms == 0 && self.jitter_ms == 0 && no_loss
    }

    /// The fault clamped into the accepted ranges (NaN loss counts as 0).
    fn sanitized(self) -> Self {
        let loss = if self.loss.is_nan() { 0.0 } else { self.loss.clamp(0.0, 1.0) };
        Self {
            delay_ms: self.delay_ms.min(MAX_DELAY_MS),
            jitter_ms: self.jitter_ms.min(MAX_JITTER_MS),
            loss,
            cut: self.cut,
        }
    }
}

/// Checks that `fault` is within the accepted ranges; the error says what
/// to fix (it is shown to the admin API's caller).
pub fn validate(fault: &LinkFault) -> Result<(), String> {
    if fault.delay_ms > MAX_DELAY_MS {
        return Err(format!("delay_ms is {}; it must be at most {MAX_DELAY_MS} (60 s)", fault.delay_ms));
    }
    if fault.jitter_ms > MAX_JITTER_MS {
        return Err(format!("jitter_ms is {}; it must be at most {MAX_JITTER_MS} (10 s)", fault.jitter_ms));
    }
    if fault.loss.is_nan() {
        return Err("loss is NaN; it must be a probability from 0.0 to 1.0".to_string());
    }
    if !(0.0..=1.0).contains(&fault.loss) {
        return Err(format!(
            "loss is {}; it must be a probability from 0.0 to 1.0 (0.2 drops 20% of packets)",
            fault.loss
        ));
    }
    Ok(())
}

/// Counters of what the emulator did, in datagrams (a GSO batch counts
/// once per segment). They only grow; [`LinkEmulator::clear`] keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Outgoing datagrams dropped by an outbound cut (including delayed
    /// ones whose link was cut before their time to leave came).
    pub dropped_cut: u64,
    /// Outgoing datagrams dropped by random loss.
    pub dropped_loss: u64,
    /// Outgoing datagrams put in the delay line.
    pub delayed: u64,
    /// Outgoing datagrams dropped because the delay line was full
    /// ([`MAX_DELAYED_IN_FLIGHT`]).
    pub dropped_overflow: u64,
    /// Delayed datagrams that the real socket refused when their time came
    /// (still full after retries, or an I/O error).
    pub dropped_send_error: u64,
    /// Incoming datagrams dropped by an inbound cut.
    pub dropped_inbound_cut: u64,
}

/// Shared, thread-safe table of faults per remote address. Cheap to clone
/// (an `Arc` inside); every clone and every socket it wrapped see the same
/// table.
#[derive(Clone, Debug, Default)]
pub struct LinkEmulator {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Some outbound fault is configured. Kept equal to
    /// `!table.outbound.is_empty()` (written under the table's write lock).
    outbound_active: AtomicBool,
    /// Some inbound cut is configured.
    inbound_active: AtomicBool,
    table: RwLock<Table>,
    /// SplitMix64 state.
    rng: AtomicU64,
    /// Transmits waiting in the delay line.
    in_flight: AtomicUsize,
    dropped_cut: AtomicU64,
    dropped_loss: AtomicU64,
    delayed: AtomicU64,
    dropped_overflow: AtomicU64,
    dropped_send_error: AtomicU64,
    dropped_inbound_cut: AtomicU64,
}

#[derive(Debug, Default)]
struct Table {
    outbound: HashMap<SocketAddr, LinkFault>,
    inbound_cuts: HashSet<SocketAddr>,
}

impl LinkEmulator {
    /// An emulator with no faults; `seed` seeds the generator used for
    /// loss and jitter.
    pub fn new(seed: u64) -> Self {
        let emulator = Self::default();
        emulator.shared.rng.store(seed, Relaxed);
        emulator
    }

    /// Sets (replaces) the fault on packets sent to `peer`. A healthy
    /// fault (the default) removes the entry. Out-of-range values are
    /// clamped; call [`validate`] first to refuse them instead.
    pub fn set_outbound(&self, peer: SocketAddr, fault: LinkFault) {
        let peer = canonical(peer);
        let fault = fault.sanitized();
        let mut table = self.shared.write();
        if fault.is_healthy() {
            table.outbound.remove(&peer);
        } else {
            table.outbound.insert(peer, fault);
        }
        self.shared.sync_flags(&table);
    }

    /// Drops (or stops dropping) packets arriving from `peer`.
    pub fn set_inbound_cut(&self, peer: SocketAddr, cut: bool) {
        let peer = canonical(peer);
        let mut table = self.shared.write();
        if cut {
            table.inbound_cuts.insert(peer);
        } else {
            table.inbound_cuts.remove(&peer);
        }
        self.shared.sync_flags(&table);
    }

    /// Heals every link, both directions. Packets already in the delay line
    /// still leave at their time (they are "on the wire").
    pub fn clear(&self) {
        let mut table = self.shared.write();
        table.outbound.clear();
        table.inbound_cuts.clear();
        self.shared.sync_flags(&table);
    }

    /// The configured outbound faults, sorted by address.
    pub fn outbound(&self) -> Vec<(SocketAddr, LinkFault)> {
        let mut faults: Vec<_> = self.shared.read().outbound.iter().map(|(peer, fault)| (*peer, *fault)).collect();
        faults.sort_by_key(|(peer, _)| *peer);
        faults
    }

    /// The sources whose packets are dropped on arrival, sorted.
    pub fn inbound_cuts(&self) -> Vec<SocketAddr> {
        let mut cuts: Vec<_> = self.shared.read().inbound_cuts.iter().copied().collect();
        cuts.sort();
        cuts
    }

    /// What the emulator has done so far.
    pub fn stats(&self) -> LinkStats {
        let s = &self.shared;
        LinkStats {
            dropped_cut: s.dropped_cut.load(Relaxed),
            dropped_loss: s.dropped_loss.load(Relaxed),
            delayed: s.delayed.load(Relaxed),
            dropped_overflow: s.dropped_overflow.load(Relaxed),
            dropped_send_error: s.dropped_send_error.load(Relaxed),
            dropped_inbound_cut: s.dropped_inbound_cut.load(Relaxed),
        }
    }

    /// Binds a UDP socket at `addr` and wraps it; use the result with
    /// `quinn::Endpoint::new_with_abstract_socket(.., Arc::new(quinn::TokioRuntime))`.
    ///
    /// Must be called inside a tokio runtime: delayed packets are sent by
    /// tasks spawned on it.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let handle = runtime_handle()?;
        let socket = std::net::UdpSocket::bind(addr)?;
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        Ok(self.wrap_with(inner, handle))
    }

    /// Wraps an already made quinn socket (for callers that need their own
    /// socket options). Must be called inside a tokio runtime.
    pub fn wrap(&self, inner: Arc<dyn AsyncUdpSocket>) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(self.wrap_with(inner, runtime_handle()?))
    }

    fn wrap_with(&self, inner: Arc<dyn AsyncUdpSocket>, handle: tokio::runtime::Handle) -> Arc<dyn AsyncUdpSocket> {
        Arc::new(EmulatedSocket { inner, shared: self.shared.clone(), handle })
    }
}

fn runtime_handle() -> io::Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("link emulation needs a tokio runtime: {e}")))
}

/// The form addresses are keyed by: an IPv4-mapped IPv6 address (what a
/// dual-stack socket reports) becomes the IPv4 address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => SocketAddr::new(v6.ip().to_canonical(), v6.port()),
        v4 => v4,
    }
}

/// Number of datagrams in a buffer of `len` bytes cut every `segment`
/// bytes (at least one).
fn segments(len: usize, segment: Option<usize>) -> usize {
    match segment {
        Some(size) if size > 0 => len.div_ceil(size).max(1),
        _ => 1,
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    fn sync_flags(&self, table: &Table) {
        self.outbound_active.store(!table.outbound.is_empty(), Relaxed);
        self.inbound_active.store(!table.inbound_cuts.is_empty(), Relaxed);
    }

    fn outbound_fault(&self, peer: SocketAddr) -> Option<LinkFault> {
        if !self.outbound_active.load(Relaxed) {
            return None;
        }
        self.read().outbound.get(&canonical(peer)).copied()
    }

    /// SplitMix64 on an atomic state: lock-free and thread-safe.
    fn next_u64(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self.rng.fetch_add(GAMMA, Relaxed).wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn lose(&self, loss: f64) -> bool {
        loss > 0.0 && self.next_f64() < loss
    }

    /// `delay ± jitter`, uniform with microsecond resolution, never negative.
    fn sample_delay(&self, fault: &LinkFault) -> Duration {
        let delay_us = i64::from(fault.delay_ms) * 1000;
        let jitter_us = i64::from(fault.jitter_ms) * 1000;
        let offset_us =
            if jitter_us > 0 { (self.next_u64() % (2 * jitter_us as u64 + 1)) as i64 - jitter_us } else { 0 };
        Duration::from_micros((delay_us + offset_us).max(0) as u64)
    }

    fn count(counter: &AtomicU64, datagrams: usize) {
        counter.fetch_add(datagrams as u64, Relaxed);
    }
}

/// The socket handed to quinn: the real socket plus the emulator.
struct EmulatedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
}

impl fmt::Debug for EmulatedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatedSocket").field("inner", &self.inner).finish_non_exhaustive()
    }
}

/// An outgoing transmit copied out of quinn's buffer, waiting in the
/// delay line.
struct DelayedTransmit {
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    contents: Vec<u8>,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
}

impl DelayedTransmit {
    fn as_transmit(&self) -> Transmit<'_> {
        Transmit {
            destination: self.destination,
            ecn: self.ecn,
            contents: &self.contents,
            segment_size: self.segment_size,
            src_ip: self.src_ip,
        }
    }

    fn datagrams(&self) -> usize {
        segments(self.contents.len(), self.segment_size)
    }
}

/// Releases a delay-line slot when the delayed send ends, however it ends
/// (including the task being dropped at runtime shutdown).
struct InFlightSlot(Arc<Shared>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl EmulatedSocket {
    /// `try_send` while some outbound fault is configured.
    fn send_with_faults(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let Some(fault) = self.shared.outbound_fault(transmit.destination) else {
            return self.inner.try_send(transmit);
        };
        let total = segments(transmit.contents.len(), transmit.segment_size);
        if fault.cut {
            // Drops must look like success: quinn treats any error other
            // than WouldBlock from try_send as fatal for the connection.
            Shared::count(&self.shared.dropped_cut, total);
            return Ok(());
        }

        // Loss is per datagram, so a GSO batch loses segments, not all.
        let mut survivors: Option<(Vec<u8>, usize)> = None;
        if fault.loss > 0.0 {
            match transmit.segment_size {
                Some(size) if total > 1 => {
                    let mut kept = Vec::with_capacity(transmit.contents.len());
                    let mut kept_count = 0;
                    for segment in transmit.contents.chunks(size) {
                        if self.shared.lose(fault.loss) {
                            Shared::count(&self.shared.dropped_loss, 1);
                        } else {
                            // Only the last segment may be short, and it
                            // stays last, so the batch remains valid GSO.
                            kept.extend_from_slice(segment);
                            kept_count += 1;
                        }
                    }
                    if kept_count == 0 {
                        return Ok(());
                    }
                    if kept_count < total {
                        survivors = Some((kept, kept_count));
                    }
                }
                _ => {
                    if self.shared.lose(fault.loss) {
                        Shared::count(&self.shared.dropped_loss, total);
                        return Ok(());
                    }
                }
            }
        }
        let (contents, segment_size, count) = match &survivors {
            Some((kept, count)) => (kept.as_slice(), transmit.segment_size.filter(|_| *count > 1), *count),
            None => (transmit.contents, transmit.segment_size, total),
        };

        if fault.delay_ms == 0 && fault.jitter_ms == 0 {
            // On WouldBlock quinn retries the same transmit and the loss dice
            // are rolled again: harmless, though `dropped_loss` may count a
            // datagram twice.
            return self.inner.try_send(&Transmit { contents, segment_size, ..*transmit });
        }

        if self.shared.in_flight.fetch_add(1, Relaxed) >= MAX_DELAYED_IN_FLIGHT {
            self.shared.in_flight.fetch_sub(1, Relaxed);
            Shared::count(&self.shared.dropped_overflow, count);
            return Ok(());
        }
        let slot = InFlightSlot(self.shared.clone());
        Shared::count(&self.shared.delayed, count);
        let delayed = DelayedTransmit {
            destination: transmit.destination,
            ecn: transmit.ecn,
            contents: match survivors {
                Some((kept, _)) => kept,
                None => transmit.contents.to_vec(),
            },
            segment_size,
            src_ip: transmit.src_ip,
        };
        let delay = self.shared.sample_delay(&fault);
        // A weak reference: once quinn drops the endpoint, packets still in
        // the delay line are lost instead of keeping the socket open.
        let socket = Arc::downgrade(&self.inner);
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            let _slot = slot;
            tokio::time::sleep(delay).await;
            send_delayed(&shared, &socket, &delayed).await;
        });
        Ok(())
    }

    /// Moves the datagrams not from a cut source to the front of `bufs` and
    /// `meta`, returning how many there are. Buffers are swapped, not
    /// copied: every `IoSliceMut` moves with its `RecvMeta`.
    fn filter_inbound(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let table = self.shared.read();
        let mut kept = 0;
        for i in 0..meta.len() {
            if table.inbound_cuts.contains(&canonical(meta[i].addr)) {
                let stride = (meta[i].stride > 0).then_some(meta[i].stride);
                Shared::count(&self.shared.dropped_inbound_cut, segments(meta[i].len, stride));
                continue;
            }
            if kept != i {
                bufs.swap(kept, i);
                meta[kept] = meta[i];
            }
            kept += 1;
        }
        kept
    }
}

async fn send_delayed(shared: &Shared, socket: &Weak<dyn AsyncUdpSocket>, packet: &DelayedTransmit) {
    // A link cut while the packet was on its way loses it.
    if shared.outbound_fault(packet.destination).is_some_and(|fault| fault.cut) {
        Shared::count(&shared.dropped_cut, packet.datagrams());
        return;
    }
    let mut attempt = 0;
    loop {
        let Some(socket_now) = socket.upgrade() else {
            return; // the endpoint is gone
        };
        match socket_now.try_send(&packet.as_transmit()) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && attempt < SEND_RETRIES => {
                attempt += 1;
                drop(socket_now);
                tokio::time::sleep(SEND_RETRY_PAUSE).await;
            }
            Err(e) => {
                tracing::trace!(error = %e, destination = %packet.destination, "delayed packet dropped");
                Shared::count(&shared.dropped_send_error, packet.datagrams());
                return;
            }
        }
    }
}

impl AsyncUdpSocket for EmulatedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // try_send only reports WouldBlock when the real socket did, so the
        // real socket's writability is the right thing to wait for.
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if !self.shared.outbound_active.load(Relaxed) {
            return self.inner.try_send(transmit);
        }
        self.send_with_faults(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if !self.shared.inbound_active.load(Relaxed) {
            return self.inner.poll_recv(cx, bufs, meta);
        }
        for _ in 0..MAX_FILTERED_ROUNDS {
            let received = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(received)) => received,
                other => return other,
            };
            let received = received.min(bufs.len()).min(meta.len());
            let kept = self.filter_inbound(&mut bufs[..received], &mut meta[..received]);
            if kept > 0 || received == 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything was from cut sources: read again rather than
            // report an empty batch (the real socket registers the waker
            // when it runs dry and returns Pending).
        }
        // A flood from cut sources: yield, but ask to be polled again since
        // the real socket may still hold datagrams.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    use quinn::{ClientConfig, Connection, Endpoint, EndpointConfig, ServerConfig};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::time::Instant;
    use tokio::time::timeout;

    /// Self-signed P-256 test certificate (CN and SAN `meridian`,
    /// `localhost`; valid for 100 years). TEST ONLY.
    const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUOgAwIBAgIUdyw//B3xyRX51BDMjfyFrUmY+E8wCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwIbWVyaWRpYW4wIBcNMjYxMTIyMDM0NTIyWhgPMjEyNjEwMjkw
MzQ1MjJaMBMxETAPBgNVBAMMCG1lcmlkaWFuMFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAESqM3HkgTehjrdqFEJGrdoRTA9wuCpDl+7gVutpuLedJwad8ywGIojzqH
oJY2fokocgCXrfzh5BHUECzN3ODFOqNzMHEwHQYDVR0OBBYEFBB5LlVQmFit5qoc
P8oyywWTwOToMB8GA1UdIwQYMBaAFBB5LlVQmFit5qocP8oyywWTwOToMA8GA1Ud
EwEB/wQFMAMBAf8wHgYDVR0RBBcwFYIIbWVyaWRpYW6CCWxvY2FsaG9zdDAKBggq
hkjOPQQDAgNHADBEAiAw2905oa09DUIYiagTf5ugrAjYEm9/ZgV2gsDVYeO4zwIg
dD3aR5ea0Antem0IKTgI7TnnjQrzJdkPH4+4pwqwmqM=
-----END CERTIFICATE-----
";
    /// The key of [`CERT_PEM`]. TEST ONLY.
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgpjpFyyu3MhKO6vfO
whimuA+095qV9rttsr1UXkPBVqOhRANCAARKozceSBN6GOt2oUQkat2hFMD3C4Kk
OX7uBW62m4t50nBp3zLAYiiPOoegljZ+iShyAJet/OHkEdQQLM3c4MU6
-----END PRIVATE KEY-----
";

    /// Bound on any single await that should complete.
    const STEP: Duration = Duration::from_secs(5);

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Accepts any server certificate, checking only that the handshake
    /// signatures are valid for it. DANGEROUS, TEST ONLY.
    #[derive(Debug)]
    struct AcceptAnyCert(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyCert {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    fn server_config() -> ServerConfig {
        let cert = CertificateDer::from_pem_slice(CERT_PEM.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(KEY_PEM.as_bytes()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()))
    }

    fn client_config(idle_timeout: Duration) -> ClientConfig {
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
            .with_no_client_auth();
        let mut config = ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(idle_timeout.try_into().unwrap()));
        config.transport_config(Arc::new(transport));
        config
    }

    fn localhost() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// A server endpoint that echoes every bidirectional stream and
    /// reports every unidirectional stream's contents on the channel.
    fn echo_server(emulator: &LinkEmulator) -> (Endpoint, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let socket = emulator.bind(localhost()).unwrap();
        let endpoint = Endpoint::new_with_abstract_socket(
            EndpointConfig::default(),
            Some(server_config()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        let (uni_tx, uni_rx) = tokio::sync::mpsc::unbounded_channel();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let uni_tx = uni_tx.clone();
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    let uni_connection = connection.clone();
                    tokio::spawn(async move {
                        while let Ok(mut recv) = uni_connection.accept_uni().await {
                            if let Ok(data) = recv.read_to_end(1 << 20).await {
                                let _ = uni_tx.send(data);
                            }
                        }
                    });
                    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                        tokio::spawn(async move {
                            if let Ok(data) = recv.read_to_end(1 << 16).await {
                                let _ = send.write_all(&data).await;
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        });
        (endpoint, uni_rx)
    }

    fn client(emulator: &LinkEmulator, idle_timeout: Duration) -> Endpoint {
        let socket = emulator.bind(localhost()).unwrap();
        let mut endpoint =
            Endpoint::new_with_abstract_socket(EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime))
                .unwrap();
        endpoint.set_default_client_config(client_config(idle_timeout));
        endpoint
    }

    async fn connect(client: &Endpoint, server: SocketAddr) -> Connection {
        timeout(STEP, client.connect(server, "meridian").unwrap()).await.expect("connect hung").expect("connect failed")
    }

    /// One echo round trip on a new stream; returns how long it took.
    async fn echo(connection: &Connection, message: &[u8]) -> Duration {
        let start = Instant::now();
        let round_trip = async {
            let (mut send, mut recv) = connection.open_bi().await.unwrap();
            send.write_all(message).await.unwrap();
            send.finish().unwrap();
            recv.read_to_end(1 << 16).await.unwrap()
        };
        let reply = timeout(STEP, round_trip).await.expect("echo hung");
        assert_eq!(reply, message);
        start.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn link_delay_raises_rtt() {
        let client_link = LinkEmulator::new(1);
        let server_link = LinkEmulator::new(2);
        let (server, _uni) = echo_server(&server_link);
        let server_addr = server.local_addr().unwrap();
        let client = client(&client_link, Duration::from_secs(5));
        let client_addr = client.local_addr().unwrap();

        // Healthy loopback first.
        let fast = connect(&client, server_addr).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            slowest = slowest.max(echo(&fast, b"ping").await);
        }
        eprintln!("healthy: echo max {slowest:?}, quinn rtt {:?}", fast.rtt());
        assert!(slowest < Duration::from_millis(20), "{slowest:?}");
        assert!(fast.rtt() < Duration::from_millis(20), "{:?}", fast.rtt());
        assert_eq!(client_link.stats(), LinkStats::default());

        // 40 ms each way.
        let wan = LinkFault { delay_ms: 40, ..LinkFault::default() };
        client_link.set_outbound(server_addr, wan);
        server_link.set_outbound(client_addr, wan);
        let slow = connect(&client, server_addr).await;
        let mut fastest = Duration::MAX;
        for _ in 0..3 {
            fastest = fastest.min(echo(&slow, b"ping").await);
        }
        eprintln!("40 ms each way: echo min {fastest:?}, quinn rtt {:?}, min_rtt {:?}", slow.rtt(), slow.min_rtt());
        assert!(fastest >= Duration::from_millis(80), "{fastest:?}");
        assert!(slow.rtt() >= Duration::from_millis(80), "{:?}", slow.rtt());
        assert!(client_link.stats().delayed > 0);
        assert!(server_link.stats().delayed > 0);
        assert_eq!(client_link.outbound(), vec![(server_addr, wan)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn link_outbound_cut_blocks_connections_until_cleared() {
        let client_link = LinkEmulator::new(3);
        let (server, _uni) = echo_server(&LinkEmulator::new(4));
        let server_addr = server.local_addr().unwrap();
        let client = client(&client_link, Duration::from_secs(1));

        client_link.set_outbound(server_addr, LinkFault { cut: true, ..LinkFault::default() });
        let attempt = timeout(STEP, client.connect(server_addr, "meridian").unwrap())
            .await
            .expect("connect hung past its idle timeout");
        assert!(matches!(attempt, Err(quinn::ConnectionError::TimedOut)), "{attempt:?}");
        assert!(client_link.stats().dropped_cut > 0);

        client_link.clear();
        assert!(client_link.outbound().is_empty());
        let connection = connect(&client, server_addr).await;
        echo(&connection, b"healed").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn link_inbound_cut_blocks_connections() {
        let server_link = LinkEmulator::new(5);
        let (server, _uni) = echo_server(&server_link);
        let server_addr = server.local_addr().unwrap();
        let client = client(&LinkEmulator::new(6), Duration::from_secs(1));
        let client_addr = client.local_addr().unwrap();

        server_link.set_inbound_cut(client_addr, true);
        assert_eq!(server_link.inbound_cuts(), vec![client_addr]);
        let attempt = timeout(STEP, client.connect(server_addr, "meridian").unwrap())
            .await
            .expect("connect hung past its idle timeout");
        assert!(matches!(attempt, Err(quinn::ConnectionError::TimedOut)), "{attempt:?}");
        assert!(server_link.stats().dropped_inbound_cut > 0);

        server_link.set_inbound_cut(client_addr, false);
        assert!(server_link.inbound_cuts().is_empty());
        let connection = connect(&client, server_addr).await;
        echo(&connection, b"healed").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn link_loss_is_repaired_by_quic() {
        let client_link = LinkEmulator::new(7);
        let server_link = LinkEmulator::new(8);
        let (server, mut uni) = echo_server(&server_link);
        let server_addr = server.local_addr().unwrap();
        let client = client(&client_link, Duration::from_secs(5));
        let client_addr = client.local_addr().unwrap();
        let connection = connect(&client, server_addr).await;

        // 20% loss both ways (data one way, acks the other).
        let lossy = LinkFault { loss: 0.2, ..LinkFault::default() };
        client_link.set_outbound(server_addr, lossy);
        server_link.set_outbound(client_addr, lossy);

        let payload: Vec<u8> = (0..200 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let start = Instant::now();
        let send = async {
            let mut stream = connection.open_uni().await.unwrap();
            stream.write_all(&payload).await.unwrap();
            stream.finish().unwrap();
            uni.recv().await.unwrap()
        };
        let received = timeout(Duration::from_secs(8), send).await.expect("lossy transfer hung");
        let stats = client_link.stats();
        eprintln!(
            "200 KB at 20% loss: {:?}, client {stats:?}, server {:?}, quinn lost {}",
            start.elapsed(),
            server_link.stats(),
            connection.stats().path.lost_packets
        );
        assert!(received == payload, "payload corrupted");
        assert!(stats.dropped_loss > 0);
        assert!(server_link.stats().dropped_loss > 0);
    }

    /// Datagrams one `poll_recv` call returns, with their sources.
    type Batch = Vec<(SocketAddr, Vec<u8>)>;

    /// A stand-in for the real socket: records what is sent, and serves
    /// queued batches of `(source, datagram)` to `poll_recv`.
    #[derive(Debug, Default)]
    struct FakeSocket {
        sent: std::sync::Mutex<Vec<(Vec<u8>, Option<usize>)>>,
        batches: std::sync::Mutex<std::collections::VecDeque<Batch>>,
    }

    #[derive(Debug)]
    struct AlwaysWritable;

    impl UdpPoller for AlwaysWritable {
        fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for FakeSocket {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(AlwaysWritable)
        }

        fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
            let sent = (transmit.contents.to_vec(), transmit.segment_size);
            self.sent.lock().unwrap().push(sent);
            Ok(())
        }

        fn poll_recv(
            &self,
            _cx: &mut Context<'_>,
            bufs: &mut [IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            let Some(batch) = self.batches.lock().unwrap().pop_front() else {
                return Poll::Pending;
            };
            for (i, (addr, data)) in batch.iter().enumerate() {
                bufs[i][..data.len()].copy_from_slice(data);
                meta[i] = RecvMeta { addr: *addr, len: data.len(), stride: data.len(), ..RecvMeta::default() };
            }
            Poll::Ready(Ok(batch.len()))
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok("127.0.0.1:1".parse().unwrap())
        }
    }

    fn fake(link: &LinkEmulator) -> (Arc<FakeSocket>, Arc<dyn AsyncUdpSocket>) {
        let fake = Arc::new(FakeSocket::default());
        let wrapped = link.wrap(fake.clone()).unwrap();
        (fake, wrapped)
    }

    fn transmit(destination: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
        Transmit { destination, ecn: None, contents, segment_size, src_ip: None }
    }

    #[tokio::test]
    async fn link_loss_drops_gso_segments_not_batches() {
        let link = LinkEmulator::new(10);
        let (fake, socket) = fake(&link);
        let peer: SocketAddr = "10.0.0.1:1".parse().unwrap();
        // Ten segments of 100 bytes, the last one short; segment k is all k.
        let contents: Vec<u8> = (0..950).map(|i| (i / 100) as u8).collect();
        link.set_outbound(peer, LinkFault { loss: 0.5, ..LinkFault::default() });
        for _ in 0..200 {
            socket.try_send(&transmit(peer, &contents, Some(100))).unwrap();
        }
        let sent = fake.sent.lock().unwrap().clone();
        let mut delivered = 0;
        for (data, segment_size) in &sent {
            let segments: Vec<&[u8]> = data.chunks(100).collect();
            assert_eq!(segment_size.is_some(), segments.len() > 1);
            // Survivors keep their order and contents; only the last may be short.
            let ids: Vec<u8> = segments.iter().map(|s| s[0]).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
            for (id, segment) in ids.iter().zip(&segments) {
                assert!(segment.iter().all(|b| b == id));
                assert_eq!(segment.len(), if *id == 9 { 50 } else { 100 });
            }
            delivered += segments.len() as u64;
        }
        let stats = link.stats();
        assert_eq!(delivered + stats.dropped_loss, 2000);
        assert!((800..1200).contains(&stats.dropped_loss), "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn link_delay_line_holds_cuts_and_bounds_packets() {
        let link = LinkEmulator::new(11);
        let (fake, socket) = fake(&link);
        let peer: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let delay = LinkFault { delay_ms: 40, ..LinkFault::default() };
        link.set_outbound(peer, delay);
        socket.try_send(&transmit(peer, b"first", None)).unwrap();
        tokio::time::sleep(Duration::from_millis(39)).await;
        assert!(fake.sent.lock().unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(fake.sent.lock().unwrap().clone(), vec![(b"first".to_vec(), None)]);

        // Cut while on the wire: lost.
        socket.try_send(&transmit(peer, b"second", None)).unwrap();
        link.set_outbound(peer, LinkFault { cut: true, ..LinkFault::default() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.sent.lock().unwrap().len(), 1);
        assert_eq!(link.stats().dropped_cut, 1);

        // The delay line is bounded.
        link.set_outbound(peer, delay);
        for _ in 0..MAX_DELAYED_IN_FLIGHT + 10 {
            socket.try_send(&transmit(peer, b"x", None)).unwrap();
        }
        assert_eq!(link.stats().dropped_overflow, 10);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.sent.lock().unwrap().len(), 1 + MAX_DELAYED_IN_FLIGHT);
        assert_eq!(link.shared.in_flight.load(Relaxed), 0);
        assert_eq!(link.stats().delayed, 2 + MAX_DELAYED_IN_FLIGHT as u64);
    }

    #[tokio::test]
    async fn link_inbound_filter_compacts_batches() {
        let link = LinkEmulator::new(12);
        let (fake, socket) = fake(&link);
        let good: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let cut: SocketAddr = "10.0.0.2:1".parse().unwrap();
        link.set_inbound_cut(cut, true);
        {
            let mut batches = fake.batches.lock().unwrap();
            batches.push_back(vec![
                (cut, b"c1".to_vec()),
                (good, b"g1".to_vec()),
                (cut, b"c2".to_vec()),
                (good, b"g2".to_vec()),
            ]);
            batches.push_back(vec![(cut, b"c3".to_vec())]);
            batches.push_back(vec![(cut, b"c4".to_vec()), (good, b"g3".to_vec())]);
            batches.push_back(vec![(cut, b"c5".to_vec())]);
        }
        let mut storage = [[0u8; 16]; 4];
        let mut bufs: Vec<IoSliceMut<'_>> = storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = [RecvMeta::default(); 4];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut receive = |bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]| -> Poll<Batch> {
            socket
                .poll_recv(&mut cx, bufs, meta)
                .map(|n| (0..n.unwrap()).map(|i| (meta[i].addr, bufs[i][..meta[i].len].to_vec())).collect())
        };
        assert_eq!(receive(&mut bufs, &mut meta), Poll::Ready(vec![(good, b"g1".to_vec()), (good, b"g2".to_vec())]));
        // A wholly cut batch is skipped; the next one is read at once.
        assert_eq!(receive(&mut bufs, &mut meta), Poll::Ready(vec![(good, b"g3".to_vec())]));
        // Only cut datagrams left, then nothing: Pending, never Ready(0).
        assert_eq!(receive(&mut bufs, &mut meta), Poll::Pending);
        assert_eq!(link.stats().dropped_inbound_cut, 5);
    }

    #[test]
    fn link_validate_explains_what_to_fix() {
        assert_eq!(validate(&LinkFault::default()), Ok(()));
        let ok = LinkFault { delay_ms: 60_000, jitter_ms: 10_000, loss: 1.0, cut: true };
        assert_eq!(validate(&ok), Ok(()));

        let error = validate(&LinkFault { loss: 1.5, ..LinkFault::default() }).unwrap_err();
        assert!(error.contains("loss") && error.contains("0.0 to 1.0"), "{error}");
        let error = validate(&LinkFault { loss: f64::NAN, ..LinkFault::default() }).unwrap_err();
        assert!(error.contains("NaN"), "{error}");
        let error = validate(&LinkFault { loss: -0.1, ..LinkFault::default() }).unwrap_err();
        assert!(error.contains("loss"), "{error}");
        let error = validate(&LinkFault { delay_ms: 1_000_000, ..LinkFault::default() }).unwrap_err();
        assert!(error.contains("delay_ms") && error.contains("60000"), "{error}");
        let error = validate(&LinkFault { jitter_ms: 10_001, ..LinkFault::default() }).unwrap_err();
        assert!(error.contains("jitter_ms"), "{error}");
    }

    #[test]
    fn link_table_replaces_removes_and_clears() {
        let link = LinkEmulator::new(9);
        let a: SocketAddr = "10.0.0.1:4433".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:4433".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:4433".parse().unwrap();
        assert!(!link.shared.outbound_active.load(Relaxed));

        let delay = LinkFault { delay_ms: 10, ..LinkFault::default() };
        link.set_outbound(a, delay);
        link.set_outbound(b, delay);
        // Mapped and plain IPv4 are the same peer; this replaces a's fault.
        let cut = LinkFault { cut: true, ..LinkFault::default() };
        link.set_outbound(mapped, cut);
        assert_eq!(link.outbound(), vec![(a, cut), (b, delay)]);
        assert!(link.shared.outbound_active.load(Relaxed));

        // Healthy removes; clamping keeps the table in range.
        link.set_outbound(a, LinkFault::default());
        link.set_outbound(b, LinkFault { loss: f64::NAN, ..LinkFault::default() });
        assert!(link.outbound().is_empty());
        assert!(!link.shared.outbound_active.load(Relaxed));
        link.set_outbound(a, LinkFault { loss: 7.0, delay_ms: u32::MAX, ..LinkFault::default() });
        assert_eq!(link.outbound()[0].1.loss, 1.0);
        assert_eq!(link.outbound()[0].1.delay_ms, MAX_DELAY_MS);

        link.set_inbound_cut(mapped, true);
        assert_eq!(link.inbound_cuts(), vec![a]);
        assert!(link.shared.inbound_active.load(Relaxed));
        link.clear();
        assert!(link.outbound().is_empty() && link.inbound_cuts().is_empty());
        assert!(!link.shared.outbound_active.load(Relaxed));
        assert!(!link.shared.inbound_active.load(Relaxed));
    }

    #[test]
    fn link_randomness_is_seeded_and_in_range() {
        let fault = LinkFault { delay_ms: 5, jitter_ms: 20, ..LinkFault::default() };
        let (one, two) = (LinkEmulator::new(42), LinkEmulator::new(42));
        let mut zero_delays = 0;
        for _ in 0..10_000 {
            let delay = one.shared.sample_delay(&fault);
            assert_eq!(delay, two.shared.sample_delay(&fault));
            assert!(delay <= Duration::from_millis(25));
            if delay.is_zero() {
                zero_delays += 1;
            }
        }
        // delay - jitter < 0 is clamped at 0 (about 15/40 of the draws).
        assert!((3_000..4_500).contains(&zero_delays), "{zero_delays}");

        let lost = (0..10_000).filter(|_| one.shared.lose(0.2)).count();
        assert!((1_700..2_300).contains(&lost), "{lost}");
        assert!(!(0..1000).any(|_| one.shared.lose(0.0)));
        assert!((0..1000).all(|_| one.shared.lose(1.0)));
    }
}
