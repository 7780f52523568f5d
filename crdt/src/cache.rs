//! The document cache's vocabulary: what a replica remembers about a document
//! it has evicted from memory, and where it gets the document back.
//!
//! A replica with a cache limit keeps every document's id, digest term,
//! highest HLC and existence in memory ([`ColdEntry`], under 100 bytes), but
//! the automerge document itself (about 20 KiB even when small) only for the
//! most recently used ones. An evicted ("cold") document is loaded again from
//! the caller's [`ColdStore`] when a read, write or remote change needs it.
//!
//! The crate still does no IO itself: the store is the caller's, passed in
//! once, like a clock would be. Only documents whose last saved state the
//! caller has confirmed as persisted ([`crate::Replica::mark_persisted`]) are
//! evicted, so what comes back is exactly what left.

use crate::hlc::Hlc;
use crate::ids::DocId;

/// What the replica keeps about an evicted document: enough for the digest,
/// listings, existence checks and HLC causality without loading it. Also the
/// per-document row a store keeps next to the snapshot, so recovery needs no
/// snapshot at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColdEntry {
    /// The document's term in the replica digest (see `Replica::digest`).
    pub digest_term: [u8; 32],
    /// Highest HLC of any change in the document.
    pub max_hlc: Hlc,
    /// Whether the document currently exists (not deleted).
    pub exists: bool,
}

impl ColdEntry {
    /// The entry of `doc` stored as `id`.
    pub fn of(id: &DocId, doc: &crate::Document) -> ColdEntry {
        ColdEntry {
            digest_term: crate::replica::digest_term(id, &doc.heads()),
            max_hlc: doc.max_hlc(),
            exists: doc.exists(),
        }
    }

    /// Encoded length: 32 digest bytes, 12 HLC bytes, 1 existence byte.
    pub const ENCODED_LEN: usize = 45;

    /// Fixed-width encoding, for storage.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..32].copy_from_slice(&self.digest_term);
        out[32..44].copy_from_slice(&self.max_hlc.to_bytes());
        out[44] = u8::from(self.exists);
        out
    }

    /// Decodes [`ColdEntry::encode`]'s output; `None` when the length or the
    /// existence byte is wrong.
    pub fn decode(bytes: &[u8]) -> Option<ColdEntry> {
        if bytes.len() != Self::ENCODED_LEN || bytes[44] > 1 {
            return None;
        }
        Some(ColdEntry {
            digest_term: bytes[..32].try_into().ok()?,
            max_hlc: Hlc::from_bytes(bytes[32..44].try_into().ok()?),
            exists: bytes[44] == 1,
        })
    }
}

/// Where a replica gets an evicted document back: the caller's store.
pub trait ColdStore: Send + Sync {
    /// The bytes of `id`'s last persisted snapshot (`Document::save` output),
    /// `Ok(None)` when the store holds none, `Err` with the reason when it
    /// cannot be read.
    fn load(&self, id: &DocId) -> Result<Option<Vec<u8>>, String>;
}

/// An evicted document could not be loaded back: the store failed or holds
/// something that is not the document. Nothing changed in the replica.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("document {id:?} could not be loaded from the store: {reason}")]
pub struct ColdError {
    /// The document.
    pub id: String,
    /// What went wrong.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_bytes_are_refused() {
        let entry = ColdEntry { digest_term: [7; 32], max_hlc: Hlc::new(42, 3), exists: true };
        assert_eq!(ColdEntry::decode(&entry.encode()), Some(entry));
        assert_eq!(ColdEntry::decode(&entry.encode()[..44]), None);
        let mut bad = entry.encode();
        bad[44] = 2;
        assert_eq!(ColdEntry::decode(&bad), None);
    }
}
