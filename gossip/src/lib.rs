//! Meridian's replication protocol.
//!
//! The protocol core does no IO: it takes inputs (`handle_*`) with the
//! current monotonic time passed in, and hands out outputs (`poll_*`):
//! messages to send, connections to open, timers, and events for the node.
//! No tokio, no quinn, no clock reads; randomness comes from a seed. The
//! same core runs under the quinn driver and under the deterministic
//! simulation in `tests/`.
//!
//! Behind the `driver` feature: link emulation (a UDP socket wrapper that
//! imposes delay, jitter, loss and cuts per peer).

pub mod core;
pub mod freshness;
pub mod message;

#[cfg(feature = "driver")]
pub mod driver;
#[cfg(feature = "driver")]
pub mod link;

pub use crate::core::{
    ConnId, DecommissionError, Event, FrameError, Gossip, GossipConfig, MemberStatus, PeerState, StreamKind, Transmit,
};
pub use message::{Closed, Message, FRAME_BYTES_MAX, PROTOCOL_VERSION};
