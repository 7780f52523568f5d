//! Backup files: a consistent snapshot of one node's documents, and the
//! restore that prepares a fresh data directory from it.
//!
//! A backup holds every document (an automerge save, deleted ones included,
//! since their delete is a change peers must not resend as new), the version
//! vector of applied changes the documents cover, and the node's HLC. The
//! node takes it with the vector read first and each document saved after
//! (so every document holds at least its changes in the vector, as a
//! checkpoint does), then waits until every local change it may contain is
//! durable: a backup never holds a change whose sequence number a crash
//! could reuse.
//!
//! # File format, version 1
//!
//! ```text
//! magic     8 bytes  "MERIDBAK"
//! version   u16 LE   1
//! frames    kind u8 | length u32 LE | crc32 u32 LE of (kind, payload) | payload
//!   kind 1  header   (once, first)
//!             source node id u64 BE | HLC high 12 bytes | region: varint length, UTF-8
//!             | covered vector: varint length, storage encoding | document count u64 BE
//!   kind 2  document (count times)
//!             id: varint length, UTF-8 | automerge save (the rest)
//!   kind 3  trailer  (once, last; nothing may follow)
//!             document count u64 BE | crc32 u32 LE of every byte before this frame
//! ```
//!
//! Each frame carries its own CRC-32 (as every value in `storage.rs` does), so
//! a flipped byte is named by frame; the trailer's count and whole-file CRC
//! catch a file cut short, frames dropped, or frames moved. Readers refuse
//! versions they do not know.
//!
//! # Restore
//!
//! A restored node gets a **new node id**. The original may still be alive
//! (or come back), and it keeps issuing sequence numbers under its id: a
//! second node with the same id would issue different changes under the
//! same `(origin, seq)` pairs, and peers, which deduplicate by that pair,
//! would silently keep one and drop the other. With a new id, the backed-up
//! changes stay the original's (already in the cluster), and the restored
//! node's own writes start at sequence 1 under an id nobody else uses. It
//! joins like any new member (it takes writes once admitted) and catches
//! up from the vector on: anti-entropy from the log, or a state transfer
//! when the log no longer reaches back.

use std::path::{Path, PathBuf};

use meridian_crdt::token::{read_varint, write_varint};
use meridian_crdt::{DocId, Document, Hlc, NodeId, VersionVector};

use crate::storage::{decode_vv, encode_vv, StorageError, Store};

/// First bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"MERIDBAK";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;

const KIND_HEADER: u8 = 1;
const KIND_DOCUMENT: u8 = 2;
const KIND_TRAILER: u8 = 3;
/// Magic, version.
const PREAMBLE_BYTES: usize = 10;
/// Kind, length, checksum.
const FRAME_HEAD_BYTES: usize = 9;

/// A consistent snapshot of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Backup {
    /// The node it was taken from (for the record; a restore never reuses it).
    pub source_node: NodeId,
    /// That node's region.
    pub source_region: String,
    /// Applied changes every document holds (documents may hold more).
    pub covered: VersionVector,
    /// The source's HLC when the backup was taken: at or above every change in it.
    pub hlc_high: Hlc,
    /// Every document, existing or deleted, as an automerge save.
    pub documents: Vec<(DocId, Vec<u8>)>,
}

/// Why a backup could not be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file does not start with the backup magic.
    #[error("{path} is not a Meridian backup (it does not start with {magic:?})", magic = String::from_utf8_lossy(MAGIC))]
    NotABackup {
        /// The file.
        path: PathBuf,
    },
    /// The file is of a format version this build does not read.
    #[error("{path} is backup format version {found}; this meridian reads version {FORMAT_VERSION}. Restore it with the meridian that wrote it, or a newer one")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u16,
    },
    /// The file ends early: a copy or download was cut short.
    #[error("{path} is truncated: {what}. The backup is incomplete; take it again or use another copy")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where it ends.
        what: String,
    },
    /// A checksum does not match, or a frame does not decode.
    #[error("{path} is damaged: {what}. Refusing to restore from it; use another copy")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which part, and how.
        what: String,
    },
    /// The target data directory already holds something.
    #[error("data directory {path} is not empty; restore only into a new or empty directory (a restore never mixes with existing data)")]
    DataDirNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The new store could not be created or filled.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Encodes a backup in the current format.
pub fn encode(backup: &Backup) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + backup.documents.iter().map(|(id, d)| id.as_str().len() + d.len() + 16).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let mut header = Vec::new();
    header.extend_from_slice(&backup.source_node.0.to_be_bytes());
    header.extend_from_slice(&backup.hlc_high.to_bytes());
    write_varint(&mut header, backup.source_region.len() as u64);
    header.extend_from_slice(backup.source_region.as_bytes());
    let vv = encode_vv(&backup.covered);
    write_varint(&mut header, vv.len() as u64);
    header.extend_from_slice(&vv);
    header.extend_from_slice(&(backup.documents.len() as u64).to_be_bytes());
    push_frame(&mut out, KIND_HEADER, &header);
    for (id, save) in &backup.documents {
        let mut payload = Vec::with_capacity(id.as_str().len() + save.len() + 2);
        write_varint(&mut payload, id.as_str().len() as u64);
        payload.extend_from_slice(id.as_str().as_bytes());
        payload.extend_from_slice(save);
        push_frame(&mut out, KIND_DOCUMENT, &payload);
    }
    let mut trailer = Vec::with_capacity(12);
    trailer.extend_from_slice(&(backup.documents.len() as u64).to_be_bytes());
    trailer.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
    push_frame(&mut out, KIND_TRAILER, &trailer);
    out
}

fn push_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    out.push(kind);
    // Frames are bounded by what a node holds in memory; a payload over 4 GiB
    // would be one document larger than any body the API accepts.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes and verifies a backup read from `path` (named in errors): every
/// frame's checksum, the trailer's count and whole-file checksum, every
/// document id, and that every document loads.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Backup, BackupError> {
    let truncated = |what: String| BackupError::Truncated { path: path.to_path_buf(), what };
    let corrupt = |what: String| BackupError::Corrupt { path: path.to_path_buf(), what };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        if !bytes.is_empty() && MAGIC.starts_with(bytes) {
            return Err(truncated("it ends inside the file's magic".into()));
        }
        return Err(BackupError::NotABackup { path: path.to_path_buf() });
    }
    let version = bytes
        .get(MAGIC.len()..PREAMBLE_BYTES)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| truncated("it ends before the format version".into()))?;
    if version != FORMAT_VERSION {
        return Err(BackupError::UnsupportedVersion { path: path.to_path_buf(), found: version });
    }
    let mut offset = PREAMBLE_BYTES;
    let mut header: Option<(NodeId, Hlc, String, VersionVector, u64)> = None;
    let mut documents = Vec::new();
    loop {
        let frame_name = || match &header {
            None => "the header".to_string(),
            Some((.., count)) if (documents.len() as u64) < *count => {
                format!("document {} of {count}", documents.len() + 1)
            }
            Some(_) => "the trailer".to_string(),
        };
        let head = bytes
            .get(offset..offset + FRAME_HEAD_BYTES)
            .ok_or_else(|| truncated(format!("it ends at byte {} where {} should begin", bytes.len(), frame_name())))?;
        let kind = head[0];
        let length = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let sum = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
        let start = offset + FRAME_HEAD_BYTES;
        let payload = bytes.get(start..start.saturating_add(length)).ok_or_else(|| {
            truncated(format!(
                "{} needs {length} bytes but only {} remain",
                frame_name(),
                bytes.len().saturating_sub(start)
            ))
        })?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&[kind]);
        hasher.update(payload);
        if hasher.finalize() != sum {
            return Err(corrupt(format!("{} (at byte {offset}) fails its checksum", frame_name())));
        }
        match (kind, &header) {
            (KIND_HEADER, None) => {
                header = Some(decode_header(payload).ok_or_else(|| corrupt("the header does not decode".into()))?);
            }
            (KIND_DOCUMENT, Some((.., count))) if (documents.len() as u64) < *count => {
                let what = frame_name();
                let (id, save) = decode_document(payload).ok_or_else(|| corrupt(format!("{what} does not decode")))?;
                // Verified here, so a restore never writes a store the node would refuse to start from.
                Document::load(save)
                    .map_err(|err| corrupt(format!("{what} ({:?}) does not load: {err}", id.as_str())))?;
                documents.push((id, save.to_vec()));
            }
            (KIND_TRAILER, Some((.., count))) if documents.len() as u64 == *count => {
                let listed = payload.get(..8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                let file_sum = payload.get(8..12).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                if payload.len() != 12 || listed != Some(*count) {
                    return Err(corrupt("the trailer does not match the header's document count".into()));
                }
                if file_sum != Some(crc32fast::hash(&bytes[..offset])) {
                    return Err(corrupt("the whole-file checksum in the trailer does not match".into()));
                }
                if start + length != bytes.len() {
                    return Err(corrupt(format!("{} bytes follow the trailer", bytes.len() - start - length)));
                }
                let (source_node, hlc_high, source_region, covered, _) = header.expect("matched Some");
                return Ok(Backup { source_node, source_region, covered, hlc_high, documents });
            }
            _ => {
                return Err(corrupt(format!(
                    "found a frame of kind {kind} at byte {offset} where {} belongs",
                    frame_name()
                )))
            }
        }
        offset = start + length;
    }
}

fn decode_header(payload: &[u8]) -> Option<(NodeId, Hlc, String, VersionVector, u64)> {
    let node = NodeId(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?));
    let hlc = Hlc::from_bytes(payload.get(8..20)?.try_into().ok()?);
    let mut rest = payload.get(20..)?;
    let (region_len, used) = read_varint(rest)?;
    rest = rest.get(used..)?;
    let region = std::str::from_utf8(rest.get(..usize::try_from(region_len).ok()?)?).ok()?.to_string();
    rest = rest.get(region.len()..)?;
    let (vv_len, used) = read_varint(rest)?;
    rest = rest.get(used..)?;
    let vv_len = usize::try_from(vv_len).ok()?;
    let vv = decode_vv(rest.get(..vv_len)?)?;
    rest = rest.get(vv_len..)?;
    if rest.len() != 8 {
        return None;
    }
    let count = u64::from_be_bytes(rest.try_into().ok()?);
    Some((node, hlc, region, vv, count))
}

fn decode_document(payload: &[u8]) -> Option<(DocId, &[u8])> {
    let (id_len, used) = read_varint(payload)?;
    let rest = payload.get(used..)?;
    let id_len = usize::try_from(id_len).ok()?;
    let id = DocId::new(std::str::from_utf8(rest.get(..id_len)?).ok()?).ok()?;
    Some((id, rest.get(id_len..)?))
}

/// Reads and verifies a backup file.
pub fn read_file(path: &Path) -> Result<Backup, BackupError> {
    let bytes = std::fs::read(path).map_err(|source| BackupError::Io { action: "read", path: path.into(), source })?;
    decode(path, &bytes)
}

/// What a restore made.
#[derive(Debug)]
pub struct Restored {
    /// The new node's id (never the source's).
    pub node_id: NodeId,
    /// The region the data directory now belongs to.
    pub region: String,
    /// The backup that was restored.
    pub backup: Backup,
}

/// Verifies the backup at `file`, then makes `data_dir` a store holding its
/// documents as snapshots and its vector as the checkpoint, under a new node
/// id. `region` defaults to the source's. The directory must not exist or be
/// empty. The store is built in a sibling directory and renamed into place,
/// so an interrupted restore leaves no half-filled data directory behind.
pub fn restore(file: &Path, data_dir: &Path, region: Option<&str>) -> Result<Restored, BackupError> {
    let backup = read_file(file)?;
    let region = region.unwrap_or(&backup.source_region).to_string();
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Io { action, path, source }
    };
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::DataDirNotEmpty { path: data_dir.to_path_buf() });
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(BackupError::Io { action: "read", path: data_dir.to_path_buf(), source }),
    }
    let name = data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    let staging = parent.join(format!(".{name}.restoring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = (|| {
        let (store, recovered) = Store::open(&staging, &region)?;
        if recovered.node_id == backup.source_node || backup.covered.max(recovered.node_id) > 0 {
            // A 1 in 2^64 draw; refusing beats sharing an id with a member.
            return Err(BackupError::Io {
                action: "make a new node id for",
                path: staging.clone(),
                source: std::io::Error::other("the random id collides with a node in the backup; run restore again"),
            });
        }
        store.install_backup(&backup.documents, &backup.covered, backup.hlc_high)?;
        drop(store);
        // An empty target directory is replaced by the rename; a missing one is created by it.
        if data_dir.exists() {
            std::fs::remove_dir(data_dir).map_err(io("replace", data_dir))?;
        }
        std::fs::rename(&staging, data_dir).map_err(io("move the restored store into", data_dir))?;
        Ok(recovered.node_id)
    })();
    match result {
        Ok(node_id) => Ok(Restored { node_id, region, backup }),
        Err(err) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Backup {
        let doc = Document::new();
        let mut covered = VersionVector::new();
        covered.insert_range(NodeId(9), 1, 4);
        Backup {
            source_node: NodeId(9),
            source_region: "eu-west".into(),
            covered,
            hlc_high: Hlc::new(1_000, 2),
            documents: vec![(DocId::new("users/1").unwrap(), doc.save())],
        }
    }

    #[test]
    fn round_trips() {
        let backup = sample();
        let bytes = encode(&backup);
        assert_eq!(decode(Path::new("b"), &bytes).unwrap(), backup);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            let err = decode(Path::new("b"), &bytes[..len]).unwrap_err();
            assert!(
                matches!(err, BackupError::Truncated { .. } | BackupError::NotABackup { .. }),
                "cut at {len}: {err}"
            );
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(Path::new("b"), &bad).is_err(), "flip at {i} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(Path::new("b"), &longer).unwrap_err().to_string().contains("follow the trailer"));
    }
}
