//! Change records: the unit of replication and of the durable log.
//!
//! A [`ChangeRecord`] is one local write: its origin node, the origin's
//! sequence number, its HLC timestamp, the document it touched, and the
//! automerge change bytes that carry it (usually one change; two when the
//! write first creates a counter, see `document.rs`).
//!
//! The same `(origin, seq, hlc)` triple is also written into the automerge
//! change's message ([`ChangeMeta::to_message`]), so it survives document
//! snapshots and state transfer, where records are no longer at hand.

use crate::hlc::Hlc;
use crate::ids::{DocId, NodeId};
use crate::token::{read_varint, write_varint};

/// Who made a change, in which order, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeMeta {
    /// The node that made the change.
    pub origin: NodeId,
    /// Per-origin sequence number, contiguous from 1 in commit order.
    pub seq: u64,
    /// The change's hybrid logical clock timestamp.
    pub hlc: Hlc,
}

const MESSAGE_PREFIX: &str = "meridian/1 ";

impl ChangeMeta {
    /// The automerge change message carrying this metadata.
    pub fn to_message(&self) -> String {
        format!("{MESSAGE_PREFIX}{} {} {} {}", self.origin, self.seq, self.hlc.wall_ns(), self.hlc.logical())
    }

    /// Reads metadata back from a change message; `None` for changes Meridian
    /// did not stamp (the shared genesis change, deterministic counter creations).
    pub fn from_message(message: &str) -> Option<ChangeMeta> {
        let rest = message.strip_prefix(MESSAGE_PREFIX)?;
        let mut parts = rest.split(' ');
        let origin = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let wall_ns = parts.next()?.parse().ok()?;
        let logical = parts.next()?.parse().ok()?;
        Some(ChangeMeta { origin, seq, hlc: Hlc::new(wall_ns, logical) })
    }
}

/// One replicated write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRecord {
    /// Origin, sequence number and timestamp.
    pub meta: ChangeMeta,
    /// The document the write touched.
    pub doc: DocId,
    /// Encoded automerge changes, in the order they must be applied.
    pub changes: Vec<Vec<u8>>,
}

/// Limits on decoded records, so a hostile or corrupt input cannot make us
/// allocate without bound.
pub const RECORD_CHANGES_MAX: usize = 16;
/// Largest single encoded record accepted (a change can carry a whole 1 MiB body).
pub const RECORD_BYTES_MAX: usize = 8 << 20;

/// Why bytes did not decode as a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordDecodeError {
    /// The input ends before the record does.
    #[error("change record is truncated")]
    Truncated,
    /// The version byte is unknown.
    #[error("change record has unknown version {0}")]
    Version(u8),
    /// The document id inside is invalid.
    #[error("change record names an invalid document id")]
    DocId,
    /// A count or size exceeds its limit.
    #[error("change record exceeds a limit: {0}")]
    Limit(&'static str),
    /// Bytes remain after the record.
    #[error("change record has trailing bytes")]
    Trailing,
}

const RECORD_VERSION: u8 = 1;

impl ChangeRecord {
    /// Total size of the automerge changes carried.
    pub fn change_bytes(&self) -> usize {
        self.changes.iter().map(Vec::len).sum()
    }

    /// Binary form: version, origin, seq, hlc, doc id, changes (length-prefixed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.doc.as_str().len() + self.change_bytes());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.meta.origin.0.to_be_bytes());
        write_varint(&mut out, self.meta.seq);
        out.extend_from_slice(&self.meta.hlc.to_bytes());
        write_varint(&mut out, self.doc.as_str().len() as u64);
        out.extend_from_slice(self.doc.as_str().as_bytes());
        write_varint(&mut out, self.changes.len() as u64);
        for change in &self.changes {
            write_varint(&mut out, change.len() as u64);
            out.extend_from_slice(change);
        }
        out
    }

    /// Inverse of [`ChangeRecord::encode`]. Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<ChangeRecord, RecordDecodeError> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(RecordDecodeError::Limit("record size"));
        }
        let mut reader = Reader(bytes);
        let version = reader.take(1)?[0];
        if version != RECORD_VERSION {
            return Err(RecordDecodeError::Version(version));
        }
        let origin = NodeId(u64::from_be_bytes(reader.take(8)?.try_into().expect("8 bytes")));
        let seq = reader.varint()?;
        let hlc = Hlc::from_bytes(reader.take(12)?.try_into().expect("12 bytes"));
        let doc_len = reader.varint()? as usize;
        if doc_len > DocId::LEN_MAX {
            return Err(RecordDecodeError::DocId);
        }
        let doc_text = std::str::from_utf8(reader.take(doc_len)?).map_err(|_| RecordDecodeError::DocId)?;
        let doc = DocId::new(doc_text).map_err(|_| RecordDecodeError::DocId)?;
        let count = reader.varint()? as usize;
        if count > RECORD_CHANGES_MAX {
            return Err(RecordDecodeError::Limit("changes per record"));
        }
        let mut changes = Vec::with_capacity(count);
        for _ in 0..count {
            let len = reader.varint()? as usize;
            changes.push(reader.take(len)?.to_vec());
        }
        if !reader.0.is_empty() {
            return Err(RecordDecodeError::Trailing);
        }
        Ok(ChangeRecord { meta: ChangeMeta { origin, seq, hlc }, doc, changes })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordDecodeError> {
        if self.0.len() < n {
            return Err(RecordDecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, RecordDecodeError> {
        let (value, used) = read_varint(self.0).ok_or(RecordDecodeError::Truncated)?;
        self.0 = &self.0[used..];
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ChangeRecord {
        ChangeRecord {
            meta: ChangeMeta { origin: NodeId(42), seq: 7, hlc: Hlc::new(123_456_789, 3) },
            doc: DocId::new("users/42").unwrap(),
            changes: vec![vec![1, 2, 3], vec![]],
        }
    }

    #[test]
    fn record_round_trips() {
        let record = sample();
        assert_eq!(ChangeRecord::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn message_round_trips() {
        let meta = sample().meta;
        assert_eq!(ChangeMeta::from_message(&meta.to_message()), Some(meta));
        assert_eq!(ChangeMeta::from_message("meridian genesis"), None);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(ChangeRecord::decode(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(ChangeRecord::decode(&longer), Err(RecordDecodeError::Trailing));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ChangeRecord::decode(&bytes);
        }
    }
}
