//! Identifiers: node ids (the origin of changes) and document ids.

use std::fmt;
use std::str::FromStr;

/// A node's stable identity, generated once at first start and persisted.
/// Also the origin of every change the node makes. Shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The automerge actor id for this node's changes.
    pub fn actor(&self) -> automerge::ActorId {
        automerge::ActorId::from(self.0.to_be_bytes())
    }

    /// Recovers the node id from an actor id made by [`NodeId::actor`].
    pub fn from_actor(actor: &automerge::ActorId) -> Option<NodeId> {
        let bytes: [u8; 8] = actor.to_bytes().try_into().ok()?;
        Some(NodeId(u64::from_be_bytes(bytes)))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// A node id that is not 16 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid node id {0:?}: expected 16 hex digits")]
pub struct NodeIdParseError(String);

impl FromStr for NodeId {
    type Err = NodeIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(NodeIdParseError(s.chars().take(40).collect()));
        }
        u64::from_str_radix(s, 16).map(NodeId).map_err(|_| NodeIdParseError(s.to_string()))
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A validated document id: 1 to 256 characters from
/// `A-Z a-z 0-9 . _ ~ : @ - /`, so ids can be hierarchical like `users/42`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DocId(String);

/// Why a document id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocIdError {
    /// The id is empty.
    #[error("document id is empty; use 1 to 256 characters from A-Z a-z 0-9 . _ ~ : @ - /")]
    Empty,
    /// The id is longer than 256 bytes.
    #[error("document id is {0} characters long; the limit is 256")]
    TooLong(usize),
    /// The id holds a character outside the allowed set.
    #[error("document id contains {0:?}, which is not allowed; use only A-Z a-z 0-9 . _ ~ : @ - /")]
    BadChar(char),
}

impl DocId {
    /// The longest id accepted, in characters (all allowed characters are ASCII).
    pub const LEN_MAX: usize = 256;

    /// Validates and wraps an id.
    pub fn new(id: &str) -> Result<DocId, DocIdError> {
        if id.is_empty() {
            return Err(DocIdError::Empty);
        }
        if let Some(bad) = id.chars().find(|c| !Self::allowed(*c)) {
            return Err(DocIdError::BadChar(bad));
        }
        if id.len() > Self::LEN_MAX {
            return Err(DocIdError::TooLong(id.len()));
        }
        Ok(DocId(id.to_string()))
    }

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | ':' | '@' | '-' | '/')
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for DocId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hierarchical_ids() {
        for ok in ["a", "users/42", "A-Z.a_z~0:9@x", &"x".repeat(256)] {
            assert!(DocId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_bad_ids_with_reasons() {
        assert_eq!(DocId::new(""), Err(DocIdError::Empty));
        assert_eq!(DocId::new(&"x".repeat(257)), Err(DocIdError::TooLong(257)));
        assert_eq!(DocId::new("a b"), Err(DocIdError::BadChar(' ')));
        assert_eq!(DocId::new("é"), Err(DocIdError::BadChar('é')));
        assert_eq!(DocId::new("a?b"), Err(DocIdError::BadChar('?')));
    }

    #[test]
    fn node_id_round_trips() {
        let id = NodeId(0x0123_4567_89ab_cdef);
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert_eq!(NodeId::from_actor(&id.actor()), Some(id));
        assert!("xyz".parse::<NodeId>().is_err());
    }
}
