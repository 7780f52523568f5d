//! Freshness from closed timestamps: a node's own closed timestamp, and how
//! stale its applied state is towards every origin. Pure functions of the
//! core, the replica and the times passed in, so the server and the
//! deterministic simulation compute exactly the same answer.

use std::collections::BTreeMap;

use meridian_crdt::{Hlc, NodeId, Replica};

use crate::core::Gossip;
use crate::message::Closed;

/// This node's closed timestamp: every local change with HLC <= `t` has
/// sequence <= `n`, and no later change gets an HLC <= `t`.
///
/// Writes take their HLC and sequence number together under one lock, so
/// `t` is just below the oldest write not yet durable (or `now`, with none in
/// flight), and `n` is the last durable sequence number. `t` never passes the
/// persisted HLC lease, so a restart (whose clock starts above the lease) can
/// never issue an HLC at or below a closed timestamp already published.
pub fn local_closed(
    origin: NodeId,
    oldest_in_flight: Option<Hlc>,
    durable_seq: u64,
    last_seq: u64,
    now: Hlc,
    lease: Hlc,
) -> Closed {
    match oldest_in_flight {
        Some(hlc) => Closed { origin, t: hlc.predecessor().min(lease), n: durable_seq },
        None => Closed { origin, t: now.min(lease), n: last_seq },
    }
}

/// One origin's contribution to staleness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginFreshness {
    /// The origin.
    pub node: NodeId,
    /// Its region as far as this node knows (its id when unknown).
    pub region: String,
    /// Its newest closed timestamp whose changes are all applied here.
    pub closed: Hlc,
    /// Local now minus `closed`, in ms.
    pub staleness_ms: u64,
}

/// How stale a replica's applied state is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafeTime {
    /// The minimum effective closed timestamp over other origins (ours is now):
    /// every change of any origin with an HLC at or below it is applied here.
    pub safe_time: Hlc,
    /// Local now minus safe time, in ms.
    pub staleness_ms: u64,
    /// Per other origin.
    pub origins: Vec<OriginFreshness>,
}

/// Per-origin staleness from closed timestamps whose changes are applied
/// here; safe time is their minimum (ours is `now_ns`). Measured on the local
/// wall clock, so under a partition staleness keeps growing at wall-clock rate.
///
/// Every member counts, and every origin whose changes we hold even if it is
/// not (yet) a known member, e.g. right after a restart before gossip
/// reconnects: an origin with no closed timestamp here is as stale as can be,
/// never silently fresh. A node joining through seeds that has not heard
/// from any member yet knows of no origin at all, so its safe time is zero,
/// not now. Decommissioned members whose every change is applied here no
/// longer count.
pub fn safe_time(gossip: &Gossip, replica: &Replica, now_ns: u64) -> SafeTime {
    if !gossip.config().seeds.is_empty() && !gossip.heard_from_any_member() {
        let safe = Hlc::zero();
        return SafeTime { safe_time: safe, staleness_ms: now_ns / 1_000_000, origins: Vec::new() };
    }
    let own = replica.node();
    let applied = replica.applied_version_vector();
    // Every read asks this, so the member list is borrowed, not cloned
    // (`members()` copies each peer's version vector and stats).
    let mut origins: BTreeMap<NodeId, String> =
        gossip.member_regions().map(|(node, region)| (node, region.to_string())).collect();
    for origin in replica.version_vector().origins().chain(applied.origins()) {
        origins.entry(origin).or_insert_with(|| origin.to_string());
    }
    origins.remove(&own);
    let mut safe = Hlc::new(now_ns, 0);
    let mut out = Vec::new();
    for (node, region) in origins {
        let prefix = applied.contiguous(node);
        if gossip.decommissioned(node).is_some_and(|last| prefix >= last) {
            continue;
        }
        let closed = gossip.effective_closed(node, prefix).map(|c| c.t).unwrap_or_default();
        let staleness_ms = now_ns.saturating_sub(closed.wall_ns()) / 1_000_000;
        out.push(OriginFreshness { node, region, closed, staleness_ms });
        safe = safe.min(closed);
    }
    SafeTime { safe_time: safe, staleness_ms: now_ns.saturating_sub(safe.wall_ns()) / 1_000_000, origins: out }
}
