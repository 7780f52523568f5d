//! The replica-wide change log, keyed by `(origin, sequence)`.
//!
//! Holds the records a replica may still need to send to peers. It is an
//! in-memory index; the server persists the same records durably. Truncation
//! is the caller's decision (only below what every live member holds).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use crate::change::ChangeRecord;
use crate::ids::NodeId;

/// Records by `(origin, seq)`, with their total encoded size.
#[derive(Default, Debug)]
pub struct ChangeLog {
    records: BTreeMap<(NodeId, u64), ChangeRecord>,
    change_bytes: usize,
}

impl ChangeLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record; returns false if `(origin, seq)` was already present.
    pub fn insert(&mut self, record: ChangeRecord) -> bool {
        let key = (record.meta.origin, record.meta.seq);
        if self.records.contains_key(&key) {
            return false;
        }
        self.change_bytes += record.change_bytes();
        self.records.insert(key, record);
        true
    }

    /// The record for `(origin, seq)`, if held.
    pub fn get(&self, origin: NodeId, seq: u64) -> Option<&ChangeRecord> {
        self.records.get(&(origin, seq))
    }

    /// Records of one origin within a sequence range, in order.
    pub fn range(&self, origin: NodeId, seqs: RangeInclusive<u64>) -> impl Iterator<Item = &ChangeRecord> {
        self.records.range((origin, *seqs.start())..=(origin, *seqs.end())).map(|(_, r)| r)
    }

    /// Drops every record of `origin` with sequence `<= upto`; returns how many.
    pub fn truncate(&mut self, origin: NodeId, upto: u64) -> usize {
        let keys: Vec<_> = self.records.range((origin, 0)..=(origin, upto)).map(|(k, _)| *k).collect();
        for key in &keys {
            if let Some(record) = self.records.remove(key) {
                self.change_bytes -= record.change_bytes();
            }
        }
        keys.len()
    }

    /// Lowest sequence number held for `origin`.
    pub fn first_seq(&self, origin: NodeId) -> Option<u64> {
        self.records.range((origin, 0)..=(origin, u64::MAX)).next().map(|((_, s), _)| *s)
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Total automerge change bytes held.
    pub fn change_bytes(&self) -> usize {
        self.change_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ChangeMeta;
    use crate::hlc::Hlc;
    use crate::ids::DocId;

    fn record(origin: u64, seq: u64) -> ChangeRecord {
        ChangeRecord {
            meta: ChangeMeta { origin: NodeId(origin), seq, hlc: Hlc::new(seq, 0) },
            doc: DocId::new("d").unwrap(),
            changes: vec![vec![0; 10]],
        }
    }

    #[test]
    fn insert_range_truncate() {
        let mut log = ChangeLog::new();
        for seq in 1..=5 {
            assert!(log.insert(record(1, seq)));
        }
        assert!(!log.insert(record(1, 3)));
        log.insert(record(2, 1));
        assert_eq!(log.range(NodeId(1), 2..=4).count(), 3);
        assert_eq!(log.truncate(NodeId(1), 3), 3);
        assert_eq!(log.first_seq(NodeId(1)), Some(4));
        assert_eq!(log.len(), 3);
        assert_eq!(log.change_bytes(), 30);
    }
}
