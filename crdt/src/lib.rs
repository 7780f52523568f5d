//! Meridian's replicated data model.
//!
//! Every document is an automerge CRDT holding one JSON object. This crate
//! turns JSON writes (PUT, RFC 7396 merge patch, RFC 6902 JSON Patch with a
//! counter extension, delete) into automerge changes, applies remote changes
//! idempotently, and keeps the replica-wide bookkeeping replication needs:
//! the change log keyed by `(origin, sequence)` and version vectors with gaps.
//!
//! Architecture invariant: this crate does no IO, starts no threads, and never
//! reads a clock. Every timestamp ([`Hlc`]) is passed in by the caller, so the
//! same code runs under the real node runtime and under a deterministic
//! simulation. The document cache reads evicted documents back through a
//! store the caller attaches ([`ColdStore`]); the crate never opens a file.

pub mod base64url;
pub mod cache;
pub mod change;
pub mod document;
pub mod hlc;
pub mod ids;
pub mod json;
pub mod log;
pub mod patch;
pub mod replica;
pub mod token;
pub mod vv;

pub use cache::{ColdEntry, ColdError, ColdStore};
pub use change::{ChangeMeta, ChangeRecord, RecordDecodeError};
pub use document::{Conflict, ConflictValue, Document, DocumentError, NotApplied, RefusedChange, HELD_MAX};
pub use hlc::{Hlc, HlcParseError};
pub use ids::{DocId, DocIdError, NodeId, NodeIdParseError};
pub use log::ChangeLog;
pub use patch::{PatchOp, PatchParseError, Pointer};
pub use replica::{ApplyOutcome, MergeError, Replica, Saved, SnapshotOf, WriteError, WriteOp, WriteReceipt};
pub use token::{Token, TokenParseError};
pub use vv::{SeqRange, VersionVector};

/// Documents nested deeper than this are refused: deep nesting costs stack in
/// every recursive walk, and no reasonable document needs it.
pub const DEPTH_MAX: usize = 64;
