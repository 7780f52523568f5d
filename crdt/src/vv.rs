//! Version vectors with gaps.
//!
//! Changes from one origin carry contiguous sequence numbers (1, 2, 3, ...)
//! but can arrive out of order: origin X's change 7 may be forwarded by a
//! third node before change 6 arrives. A [`VersionVector`] therefore records,
//! per origin, the set of held sequence numbers as disjoint inclusive ranges.
//! The first range starting at 1 is the contiguous prefix; anything after it
//! is held beyond a gap.
//!
//! Invariant: ranges of one origin are sorted, disjoint and never adjacent
//! (adjacent ranges are merged on insert), so equal sets have equal vectors.

use std::collections::BTreeMap;

use crate::ids::NodeId;

/// An inclusive range of one origin's sequence numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SeqRange {
    /// The origin node.
    pub origin: NodeId,
    /// First sequence number in the range.
    pub start: u64,
    /// Last sequence number in the range (inclusive).
    pub end: u64,
}

/// Which changes a replica holds, per origin, gaps included.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct VersionVector {
    origins: BTreeMap<NodeId, BTreeMap<u64, u64>>,
}

impl VersionVector {
    /// An empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `(origin, seq)`; returns false if it was already held.
    pub fn insert(&mut self, origin: NodeId, seq: u64) -> bool {
        if seq == 0 || self.contains(origin, seq) {
            return false;
        }
        self.insert_range(origin, seq, seq);
        true
    }

    /// Records every sequence number in `start..=end`.
    pub fn insert_range(&mut self, origin: NodeId, start: u64, end: u64) {
        if start == 0 || end < start {
            return;
        }
        let ranges = self.origins.entry(origin).or_default();
        let mut new_start = start;
        let mut new_end = end;
        // Every range that overlaps or touches [start, end] is absorbed.
        let touching: Vec<(u64, u64)> = ranges
            .range(..=end.saturating_add(1))
            .rev()
            .take_while(|(_, &e)| e.saturating_add(1) >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            ranges.remove(&s);
            new_start = new_start.min(s);
            new_end = new_end.max(e);
        }
        ranges.insert(new_start, new_end);
    }

    /// Forgets every sequence number of `origin` above `max`.
    pub fn cap(&mut self, origin: NodeId, max: u64) {
        let Some(ranges) = self.origins.get_mut(&origin) else { return };
        let above: Vec<u64> = ranges.range(max.saturating_add(1)..).map(|(&s, _)| s).collect();
        for start in above {
            ranges.remove(&start);
        }
        if let Some((_, end)) = ranges.range_mut(..=max).next_back() {
            *end = (*end).min(max);
        }
        if ranges.is_empty() {
            self.origins.remove(&origin);
        }
    }

    /// Whether `(origin, seq)` is held.
    pub fn contains(&self, origin: NodeId, seq: u64) -> bool {
        self.origins
            .get(&origin)
            .and_then(|ranges| ranges.range(..=seq).next_back())
            .is_some_and(|(_, &end)| end >= seq)
    }

    /// The highest `n` such that all of `1..=n` from `origin` are held.
    pub fn contiguous(&self, origin: NodeId) -> u64 {
        match self.origins.get(&origin).and_then(|r| r.iter().next()) {
            Some((&1, &end)) => end,
            _ => 0,
        }
    }

    /// The highest sequence number held from `origin`, gaps or not.
    pub fn max(&self, origin: NodeId) -> u64 {
        self.origins.get(&origin).and_then(|r| r.iter().next_back()).map_or(0, |(_, &e)| e)
    }

    /// Whether any origin has changes held beyond a gap.
    pub fn has_gaps(&self) -> bool {
        self.origins.values().any(|r| r.len() > 1 || r.keys().next().is_some_and(|&s| s != 1))
    }

    /// Origins with at least one held change.
    pub fn origins(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.origins.keys().copied()
    }

    /// Held ranges of one origin, in order.
    pub fn ranges(&self, origin: NodeId) -> Vec<SeqRange> {
        self.origins
            .get(&origin)
            .map(|r| r.iter().map(|(&start, &end)| SeqRange { origin, start, end }).collect())
            .unwrap_or_default()
    }

    /// Total number of held changes.
    pub fn count(&self) -> u64 {
        self.origins.values().flat_map(|r| r.iter()).map(|(s, e)| e - s + 1).sum()
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: &VersionVector) {
        for (&origin, ranges) in &other.origins {
            for (&start, &end) in ranges {
                self.insert_range(origin, start, end);
            }
        }
    }

    /// The ranges this vector holds that `other` lacks: what to send a peer
    /// whose vector is `other`.
    pub fn missing_from(&self, other: &VersionVector) -> Vec<SeqRange> {
        let mut out = Vec::new();
        for (&origin, ranges) in &self.origins {
            let theirs = other.origins.get(&origin);
            for (&start, &end) in ranges {
                let mut cursor = start;
                if let Some(theirs) = theirs {
                    // Walk their ranges that could overlap [start, end].
                    let first = theirs.range(..=start).next_back().map(|(&s, _)| s).unwrap_or(start);
                    for (&s, &e) in theirs.range(first..=end) {
                        if e < cursor {
                            continue;
                        }
                        if s > cursor {
                            out.push(SeqRange { origin, start: cursor, end: (s - 1).min(end) });
                        }
                        cursor = e.saturating_add(1);
                        if cursor > end {
                            break;
                        }
                    }
                }
                if cursor <= end {
                    out.push(SeqRange { origin, start: cursor, end });
                }
            }
        }
        out
    }

    /// Whether every `(origin, n)` requirement holds contiguously here.
    pub fn covers(&self, required: &BTreeMap<NodeId, u64>) -> bool {
        required.iter().all(|(&origin, &seq)| self.contiguous(origin) >= seq)
    }
}

impl serde::Serialize for VersionVector {
    /// Wire and status form: `{"<origin>": [[start, end], ...]}`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.origins.len()))?;
        for (origin, ranges) in &self.origins {
            let list: Vec<[u64; 2]> = ranges.iter().map(|(&s, &e)| [s, e]).collect();
            map.serialize_entry(&origin.to_string(), &list)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    #[test]
    fn gaps_fill_in() {
        let mut vv = VersionVector::new();
        assert!(vv.insert(A, 1));
        assert!(vv.insert(A, 3));
        assert!(!vv.insert(A, 3));
        assert_eq!(vv.contiguous(A), 1);
        assert!(vv.has_gaps());
        assert!(vv.insert(A, 2));
        assert_eq!(vv.contiguous(A), 3);
        assert!(!vv.has_gaps());
        assert_eq!(vv.ranges(A).len(), 1);
    }

    #[test]
    fn cap_forgets_everything_above() {
        let mut vv = VersionVector::new();
        vv.insert_range(A, 1, 10);
        vv.insert_range(A, 20, 30);
        vv.cap(A, 5);
        assert_eq!(vv.ranges(A), vec![SeqRange { origin: A, start: 1, end: 5 }]);
        vv.cap(A, 0);
        assert_eq!(vv.origins().count(), 0);
    }

    #[test]
    fn missing_from_lists_what_the_peer_lacks() {
        let mut mine = VersionVector::new();
        mine.insert_range(A, 1, 10);
        mine.insert_range(B, 1, 2);
        let mut theirs = VersionVector::new();
        theirs.insert_range(A, 1, 3);
        theirs.insert_range(A, 6, 7);
        let missing = mine.missing_from(&theirs);
        assert_eq!(
            missing,
            vec![
                SeqRange { origin: A, start: 4, end: 5 },
                SeqRange { origin: A, start: 8, end: 10 },
                SeqRange { origin: B, start: 1, end: 2 },
            ]
        );
    }

    fn model_of(vv: &VersionVector, origins: &[NodeId], max: u64) -> BTreeSet<(u64, u64)> {
        let mut set = BTreeSet::new();
        for &o in origins {
            for s in 1..=max {
                if vv.contains(o, s) {
                    set.insert((o.0, s));
                }
            }
        }
        set
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(a in proptest::collection::vec((0u64..3, 1u64..40), 0..80),
                              b in proptest::collection::vec((0u64..3, 1u64..40), 0..80)) {
            let origins = [NodeId(0), NodeId(1), NodeId(2)];
            let mut va = VersionVector::new();
            let mut sa = BTreeSet::new();
            for &(o, s) in &a { va.insert(NodeId(o), s); sa.insert((o, s)); }
            let mut vb = VersionVector::new();
            let mut sb = BTreeSet::new();
            for &(o, s) in &b { vb.insert(NodeId(o), s); sb.insert((o, s)); }
            prop_assert_eq!(model_of(&va, &origins, 40), sa.clone());
            prop_assert_eq!(va.count() as usize, sa.len());
            // contiguous is the longest prefix 1..=n.
            for &o in &origins {
                let mut n = 0;
                while sa.contains(&(o.0, n + 1)) { n += 1; }
                prop_assert_eq!(va.contiguous(o), n);
            }
            // missing_from is set difference.
            let mut diff = BTreeSet::new();
            for r in va.missing_from(&vb) {
                for s in r.start..=r.end { diff.insert((r.origin.0, s)); }
            }
            let expected: BTreeSet<_> = sa.difference(&sb).copied().collect();
            prop_assert_eq!(diff, expected);
            // merge is union, commutative, idempotent; equal sets give equal vectors.
            let mut ab = va.clone(); ab.merge(&vb);
            let mut ba = vb.clone(); ba.merge(&va);
            prop_assert_eq!(&ab, &ba);
            let mut abb = ab.clone(); abb.merge(&vb);
            prop_assert_eq!(&abb, &ab);
            let union: BTreeSet<_> = sa.union(&sb).copied().collect();
            prop_assert_eq!(model_of(&ab, &origins, 40), union);
        }
    }
}
