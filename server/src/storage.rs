//! Durable storage: one redb file per node holding the change log and
//! per-document snapshots.
//!
//! Layout (`<data-dir>/meridian.redb`):
//!
//! | table  | key             | value                                        |
//! |--------|-----------------|----------------------------------------------|
//! | `meta` | name            | node id, region, checkpoint vector, HLC high |
//! | `log`  | (origin, seq)   | an encoded [`ChangeRecord`]                  |
//! | `docs` | document id     | an automerge save of the document            |
//! | `docindex` | document id | its [`ColdEntry`]: digest term, HLC, exists  |
//! | `feed` | feed index      | which change was applied (event streams)     |
//!
//! Every value is sealed with a CRC-32 of its bytes, checked on every read:
//! a damaged value stops recovery with a message naming the file and the
//! record, instead of serving wrong data. redb itself makes each commit
//! atomic and, with `Durability::Immediate`, fsynced before `commit` returns.
//!
//! Recovery reads the `docindex` rows, not the snapshots: every document
//! starts cold and loads on first use (see `meridian_crdt::cache`), so a
//! restart costs microseconds per document, not an automerge load each. It
//! then replays only the log records the checkpoint vector does not already
//! cover. Every snapshot is written in the same transaction as its index row;
//! a store written before the index existed gets its index built once, at open.

use std::path::{Path, PathBuf};

use meridian_crdt::token::{read_varint, write_varint};
use meridian_crdt::{ChangeRecord, ColdEntry, ColdStore, DocId, Document, Hlc, NodeId, VersionVector};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("log");
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const DOCINDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("docindex");
const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");

/// File name of the store inside the data directory.
pub const FILE_NAME: &str = "meridian.redb";
const FORMAT_VERSION: u8 = 1;
/// Meta key present once every snapshot has its `docindex` row.
const INDEXED: &str = "docindex";

/// Why storage failed. Any of these stops the node: it cannot go on safely.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data directory could not be created or read.
    #[error("cannot use data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// redb could not open the file (locked by another process, damaged, or not a store).
    #[error("cannot open {path}: {detail}. If another meridian is using this --data-dir, stop it; if the file is damaged, move it away and restore from a backup or let the node start empty")]
    Open {
        /// The store file.
        path: PathBuf,
        /// What redb said.
        detail: String,
    },
    /// A stored value failed its checksum or did not decode.
    #[error("{path} is damaged: {what}. The node refuses to start rather than serve wrong data; move the file away and restore from a backup (or let the node start empty and catch up from peers)")]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// Which value, and how it is wrong.
        what: String,
    },
    /// The data directory belongs to another region.
    #[error("data directory {path} belongs to region {stored:?}, not {configured:?}; pass --region {stored} or use another --data-dir")]
    RegionMismatch {
        /// The data directory.
        path: PathBuf,
        /// Region stored in it.
        stored: String,
        /// Region configured now.
        configured: String,
    },
    /// A redb operation failed at run time (IO error, disk full).
    #[error("storage failure in {path}: {detail}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// What recovery found on disk.
pub struct Recovered {
    /// This node's stable id.
    pub node_id: NodeId,
    /// Changes covered by the snapshots.
    pub checkpoint: VersionVector,
    /// Every stored document's index row (the snapshots stay on disk).
    pub index: Vec<(DocId, ColdEntry)>,
    /// Log records, in key order.
    pub log: Vec<ChangeRecord>,
    /// Highest HLC ever persisted: the clock must not go below it after a restart.
    pub hlc_high: Hlc,
    /// The next feed index to assign.
    pub next_feed: u64,
    /// The HLC lease: no closed timestamp this node ever advertised is above it.
    pub hlc_lease: Hlc,
}

/// One entry of the change feed: which change was applied, in local apply order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEntry {
    /// The document.
    pub doc: DocId,
    /// The change's origin.
    pub origin: NodeId,
    /// Its sequence number.
    pub seq: u64,
    /// Its HLC.
    pub hlc: Hlc,
}

impl FeedEntry {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.doc.as_str().len());
        out.extend_from_slice(&self.origin.0.to_be_bytes());
        write_varint(&mut out, self.seq);
        out.extend_from_slice(&self.hlc.to_bytes());
        out.extend_from_slice(self.doc.as_str().as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<FeedEntry> {
        let origin = NodeId(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?));
        let (seq, used) = read_varint(bytes.get(8..)?)?;
        let rest = bytes.get(8 + used..)?;
        let hlc = Hlc::from_bytes(rest.get(..12)?.try_into().ok()?);
        let doc = DocId::new(std::str::from_utf8(rest.get(12..)?).ok()?).ok()?;
        Some(FeedEntry { doc, origin, seq, hlc })
    }
}

/// Reads the feed from any thread while the storage thread writes.
#[derive(Clone)]
pub struct FeedReader {
    db: std::sync::Arc<Database>,
    path: PathBuf,
}

impl FeedReader {
    /// Up to `limit` entries with index greater than `after`, in order.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, FeedEntry)>, StorageError> {
        let io = |e: &dyn std::fmt::Display| StorageError::Io { path: self.path.clone(), detail: e.to_string() };
        let tx = self.db.begin_read().map_err(|e| io(&e))?;
        let feed = tx.open_table(FEED).map_err(|e| io(&e))?;
        let mut out = Vec::new();
        for entry in feed.range(after.saturating_add(1)..).map_err(|e| io(&e))?.take(limit) {
            let (key, value) = entry.map_err(|e| io(&e))?;
            let index = key.value();
            let bytes = unseal(&self.path, &|| format!("feed entry {index}"), value.value())?;
            let entry = FeedEntry::decode(bytes).ok_or_else(|| StorageError::Corrupt {
                path: self.path.clone(),
                what: format!("feed entry {index} does not decode"),
            })?;
            out.push((index, entry));
        }
        Ok(out)
    }
}

/// Reads snapshots for the document cache.
struct SnapshotReader {
    db: std::sync::Arc<Database>,
    path: PathBuf,
}

impl ColdStore for SnapshotReader {
    fn load(&self, id: &DocId) -> Result<Option<Vec<u8>>, String> {
        let tx = self.db.begin_read().map_err(|e| e.to_string())?;
        let docs = tx.open_table(DOCS).map_err(|e| e.to_string())?;
        let Some(value) = docs.get(id.as_str()).map_err(|e| e.to_string())? else { return Ok(None) };
        let bytes = unseal(&self.path, &|| format!("snapshot of document {:?}", id.as_str()), value.value())
            .map_err(|e| e.to_string())?;
        Ok(Some(bytes.to_vec()))
    }
}

/// A snapshot to write: the document, its saved bytes and its index row.
pub type SnapshotRow = (DocId, Vec<u8>, ColdEntry);

/// One atomic, durable commit.
#[derive(Default)]
pub struct Batch {
    /// Records to append to the log.
    pub records: Vec<ChangeRecord>,
    /// Document snapshots to write, each with its index row.
    pub snapshots: Vec<SnapshotRow>,
    /// New checkpoint vector (covered by all snapshots written so far).
    pub checkpoint: Option<VersionVector>,
    /// Log records to drop: per origin, everything up to this sequence.
    pub truncate: Vec<(NodeId, u64)>,
    /// Feed entries to append, with their indices.
    pub feed: Vec<(u64, FeedEntry)>,
    /// Drop feed entries below this index (retention).
    pub feed_keep_from: Option<u64>,
    /// A new HLC lease to persist.
    pub hlc_lease: Option<Hlc>,
}

/// The node's store.
pub struct Store {
    db: std::sync::Arc<Database>,
    path: PathBuf,
}

fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn unseal<'a>(path: &Path, what: &dyn Fn() -> String, bytes: &'a [u8]) -> Result<&'a [u8], StorageError> {
    let corrupt = |how: &str| StorageError::Corrupt { path: path.to_path_buf(), what: format!("{} {how}", what()) };
    if bytes.len() < 4 {
        return Err(corrupt("is truncated"));
    }
    let (sum, payload) = bytes.split_at(4);
    if u32::from_le_bytes(sum.try_into().expect("4 bytes")) != crc32fast::hash(payload) {
        return Err(corrupt("fails its checksum"));
    }
    Ok(payload)
}

/// A version vector as stored (also the encoding inside backup files).
pub(crate) fn encode_vv(vv: &VersionVector) -> Vec<u8> {
    let mut out = Vec::new();
    for origin in vv.origins() {
        for range in vv.ranges(origin) {
            out.extend_from_slice(&origin.0.to_be_bytes());
            write_varint(&mut out, range.start);
            write_varint(&mut out, range.end);
        }
    }
    out
}

/// Decodes [`encode_vv`]; `None` if the bytes are not a vector.
pub(crate) fn decode_vv(mut bytes: &[u8]) -> Option<VersionVector> {
    let mut vv = VersionVector::new();
    while !bytes.is_empty() {
        let origin = NodeId(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?));
        bytes = &bytes[8..];
        let (start, used) = read_varint(bytes)?;
        bytes = &bytes[used..];
        let (end, used) = read_varint(bytes)?;
        bytes = &bytes[used..];
        vv.insert_range(origin, start, end);
    }
    Some(vv)
}

impl Store {
    /// Opens (or creates) the store in `dir` with the default page cache
    /// and reads everything recovery needs.
    pub fn open(dir: &Path, region: &str) -> Result<(Store, Recovered), StorageError> {
        Store::open_with_cache(dir, region, crate::config::STORAGE_CACHE_MB_DEFAULT << 20)
    }

    /// [`Store::open`] with `cache_bytes` of page cache.
    pub fn open_with_cache(dir: &Path, region: &str, cache_bytes: usize) -> Result<(Store, Recovered), StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Dir { path: dir.to_path_buf(), source })?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder().set_cache_size(cache_bytes).create(&path).map_err(|err| StorageError::Open {
            path: path.clone(),
            detail: err.to_string().trim_end_matches('.').to_string(),
        })?;
        let store = Store { db: std::sync::Arc::new(db), path };
        let recovered = store.recover(region)?;
        Ok((store, recovered))
    }

    fn io(&self, err: impl std::fmt::Display) -> StorageError {
        StorageError::Io { path: self.path.clone(), detail: err.to_string() }
    }

    fn corrupt(&self, what: String) -> StorageError {
        StorageError::Corrupt { path: self.path.clone(), what }
    }

    fn recover(&self, region: &str) -> Result<Recovered, StorageError> {
        // Make sure the tables exist and the identity is set, in one durable commit.
        let tx = self.db.begin_write().map_err(|e| self.io(e))?;
        let node_id = {
            let mut meta = tx.open_table(META).map_err(|e| self.io(e))?;
            tx.open_table(LOG).map_err(|e| self.io(e))?;
            tx.open_table(DOCS).map_err(|e| self.io(e))?;
            tx.open_table(DOCINDEX).map_err(|e| self.io(e))?;
            tx.open_table(FEED).map_err(|e| self.io(e))?;
            let stored_format = meta.get("format").map_err(|e| self.io(e))?.map(|v| v.value().to_vec());
            match stored_format {
                None => {
                    let id = NodeId(getrandom::u64().map_err(|e| self.io(e))?);
                    meta.insert("format", seal(&[FORMAT_VERSION]).as_slice()).map_err(|e| self.io(e))?;
                    meta.insert(INDEXED, seal(&[1]).as_slice()).map_err(|e| self.io(e))?;
                    meta.insert("node_id", seal(&id.0.to_be_bytes()).as_slice()).map_err(|e| self.io(e))?;
                    meta.insert("region", seal(region.as_bytes()).as_slice()).map_err(|e| self.io(e))?;
                    id
                }
                Some(format) => {
                    let format = unseal(&self.path, &|| "meta.format".into(), &format)?;
                    if format != [FORMAT_VERSION] {
                        return Err(self.corrupt(format!(
                            "unknown store format {format:?}; this meridian understands format {FORMAT_VERSION}"
                        )));
                    }
                    let raw = meta
                        .get("node_id")
                        .map_err(|e| self.io(e))?
                        .ok_or_else(|| self.corrupt("meta.node_id is missing".into()))?;
                    let bytes = unseal(&self.path, &|| "meta.node_id".into(), raw.value())?;
                    let id = NodeId(u64::from_be_bytes(
                        bytes.try_into().map_err(|_| self.corrupt("meta.node_id has the wrong length".into()))?,
                    ));
                    let raw = meta
                        .get("region")
                        .map_err(|e| self.io(e))?
                        .ok_or_else(|| self.corrupt("meta.region is missing".into()))?;
                    let stored = String::from_utf8_lossy(unseal(&self.path, &|| "meta.region".into(), raw.value())?)
                        .into_owned();
                    if stored != region {
                        return Err(StorageError::RegionMismatch {
                            path: self.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                            stored,
                            configured: region.to_string(),
                        });
                    }
                    id
                }
            }
        };
        let indexed = tx.open_table(META).map_err(|e| self.io(e))?.get(INDEXED).map_err(|e| self.io(e))?.is_some();
        if !indexed {
            self.build_index(&tx)?;
        }
        let mut tx = tx;
        tx.set_durability(Durability::Immediate).map_err(|e| self.io(e))?;
        tx.commit().map_err(|e| self.io(e))?;

        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let meta = tx.open_table(META).map_err(|e| self.io(e))?;
        let checkpoint = match meta.get("checkpoint").map_err(|e| self.io(e))? {
            None => VersionVector::new(),
            Some(raw) => {
                let bytes = unseal(&self.path, &|| "meta.checkpoint".into(), raw.value())?;
                decode_vv(bytes).ok_or_else(|| self.corrupt("meta.checkpoint does not decode".into()))?
            }
        };
        let hlc_high = match meta.get("hlc_high").map_err(|e| self.io(e))? {
            None => Hlc::zero(),
            Some(raw) => {
                let bytes = unseal(&self.path, &|| "meta.hlc_high".into(), raw.value())?;
                Hlc::from_bytes(
                    bytes.try_into().map_err(|_| self.corrupt("meta.hlc_high has the wrong length".into()))?,
                )
            }
        };
        let mut index = Vec::new();
        let rows = tx.open_table(DOCINDEX).map_err(|e| self.io(e))?;
        for entry in rows.iter().map_err(|e| self.io(e))? {
            let (key, value) = entry.map_err(|e| self.io(e))?;
            let id_text = key.value();
            let id = DocId::new(id_text)
                .map_err(|_| self.corrupt(format!("docindex key {id_text:?} is not a valid document id")))?;
            let bytes = unseal(&self.path, &|| format!("index row of document {id_text:?}"), value.value())?;
            let row = ColdEntry::decode(bytes)
                .ok_or_else(|| self.corrupt(format!("index row of document {id_text:?} does not decode")))?;
            index.push((id, row));
        }
        let mut log = Vec::new();
        let log_table = tx.open_table(LOG).map_err(|e| self.io(e))?;
        for entry in log_table.iter().map_err(|e| self.io(e))? {
            let (key, value) = entry.map_err(|e| self.io(e))?;
            let (origin, seq) = key.value();
            let what = || format!("log record ({}, {seq})", NodeId(origin));
            let bytes = unseal(&self.path, &what, value.value())?;
            let record = ChangeRecord::decode(bytes)
                .map_err(|err| self.corrupt(format!("{} does not decode: {err}", what())))?;
            if record.meta.origin != NodeId(origin) || record.meta.seq != seq {
                return Err(self.corrupt(format!("{} is stored under the wrong key", what())));
            }
            log.push(record);
        }
        let feed = tx.open_table(FEED).map_err(|e| self.io(e))?;
        let next_feed = feed.last().map_err(|e| self.io(e))?.map_or(1, |(key, _)| key.value() + 1);
        let hlc_lease = match meta.get("hlc_lease").map_err(|e| self.io(e))? {
            None => Hlc::zero(),
            Some(raw) => {
                let bytes = unseal(&self.path, &|| "meta.hlc_lease".into(), raw.value())?;
                Hlc::from_bytes(
                    bytes.try_into().map_err(|_| self.corrupt("meta.hlc_lease has the wrong length".into()))?,
                )
            }
        };
        Ok(Recovered { node_id, checkpoint, index, log, hlc_high, next_feed, hlc_lease })
    }

    /// Commits `batch` atomically and durably (fsync before returning).
    pub fn commit(&self, batch: &Batch) -> Result<(), StorageError> {
        let mut tx = self.db.begin_write().map_err(|e| self.io(e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| self.io(e))?;
        {
            let mut log = tx.open_table(LOG).map_err(|e| self.io(e))?;
            let mut hlc_high = None;
            for record in &batch.records {
                let key = (record.meta.origin.0, record.meta.seq);
                log.insert(key, seal(&record.encode()).as_slice()).map_err(|e| self.io(e))?;
                hlc_high = hlc_high.max(Some(record.meta.hlc));
            }
            for &(origin, upto) in &batch.truncate {
                log.retain_in((origin.0, 0)..=(origin.0, upto), |_, _| false).map_err(|e| self.io(e))?;
            }
            let mut feed = tx.open_table(FEED).map_err(|e| self.io(e))?;
            for (index, entry) in &batch.feed {
                feed.insert(*index, seal(&entry.encode()).as_slice()).map_err(|e| self.io(e))?;
            }
            if let Some(keep_from) = batch.feed_keep_from {
                feed.retain_in(..keep_from, |_, _| false).map_err(|e| self.io(e))?;
            }
            let mut docs = tx.open_table(DOCS).map_err(|e| self.io(e))?;
            let mut rows = tx.open_table(DOCINDEX).map_err(|e| self.io(e))?;
            for (id, bytes, row) in &batch.snapshots {
                docs.insert(id.as_str(), seal(bytes).as_slice()).map_err(|e| self.io(e))?;
                rows.insert(id.as_str(), seal(&row.encode()).as_slice()).map_err(|e| self.io(e))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.io(e))?;
            if let Some(lease) = batch.hlc_lease {
                meta.insert("hlc_lease", seal(&lease.to_bytes()).as_slice()).map_err(|e| self.io(e))?;
            }
            if let Some(checkpoint) = &batch.checkpoint {
                meta.insert("checkpoint", seal(&encode_vv(checkpoint)).as_slice()).map_err(|e| self.io(e))?;
            }
            if let Some(hlc) = hlc_high {
                let previous = match meta.get("hlc_high").map_err(|e| self.io(e))? {
                    Some(raw) => unseal(&self.path, &|| "meta.hlc_high".into(), raw.value())?
                        .try_into()
                        .ok()
                        .map(Hlc::from_bytes),
                    None => None,
                };
                if previous.is_none_or(|p| p < hlc) {
                    meta.insert("hlc_high", seal(&hlc.to_bytes()).as_slice()).map_err(|e| self.io(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.io(e))
    }

    /// Fills a freshly created store from a backup, in one durable commit:
    /// the documents as snapshots, `covered` as the checkpoint vector they
    /// cover, and `hlc_high` so the clock starts above every change held.
    /// Refuses a store that already holds documents, a checkpoint or log
    /// records: restoring over state would mix two histories.
    pub fn install_backup(
        &self,
        documents: &[(DocId, Vec<u8>)],
        covered: &VersionVector,
        hlc_high: Hlc,
    ) -> Result<(), StorageError> {
        let mut tx = self.db.begin_write().map_err(|e| self.io(e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| self.io(e))?;
        {
            let mut docs = tx.open_table(DOCS).map_err(|e| self.io(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.io(e))?;
            let log = tx.open_table(LOG).map_err(|e| self.io(e))?;
            let holds_state = docs.first().map_err(|e| self.io(e))?.is_some()
                || log.first().map_err(|e| self.io(e))?.is_some()
                || meta.get("checkpoint").map_err(|e| self.io(e))?.is_some();
            if holds_state {
                return Err(self.io("the store already holds data; a backup is restored only into a new store"));
            }
            let mut rows = tx.open_table(DOCINDEX).map_err(|e| self.io(e))?;
            for (id, bytes) in documents {
                let doc = Document::load(bytes)
                    .map_err(|err| self.corrupt(format!("backup document {:?} does not load: {err}", id.as_str())))?;
                docs.insert(id.as_str(), seal(bytes).as_slice()).map_err(|e| self.io(e))?;
                rows.insert(id.as_str(), seal(&ColdEntry::of(id, &doc).encode()).as_slice()).map_err(|e| self.io(e))?;
            }
            meta.insert("checkpoint", seal(&encode_vv(covered)).as_slice()).map_err(|e| self.io(e))?;
            meta.insert("hlc_high", seal(&hlc_high.to_bytes()).as_slice()).map_err(|e| self.io(e))?;
        }
        tx.commit().map_err(|e| self.io(e))
    }

    /// Writes the index row of every stored snapshot (a store from before
    /// the index), loading each snapshot once, inside the open's first commit.
    fn build_index(&self, tx: &redb::WriteTransaction) -> Result<(), StorageError> {
        let docs = tx.open_table(DOCS).map_err(|e| self.io(e))?;
        let mut rows = tx.open_table(DOCINDEX).map_err(|e| self.io(e))?;
        let mut built = 0usize;
        for entry in docs.iter().map_err(|e| self.io(e))? {
            let (key, value) = entry.map_err(|e| self.io(e))?;
            let id_text = key.value();
            let id = DocId::new(id_text)
                .map_err(|_| self.corrupt(format!("docs key {id_text:?} is not a valid document id")))?;
            let bytes = unseal(&self.path, &|| format!("snapshot of document {id_text:?}"), value.value())?;
            let doc = Document::load(bytes)
                .map_err(|err| self.corrupt(format!("snapshot of document {id_text:?} does not load: {err}")))?;
            rows.insert(id_text, seal(&ColdEntry::of(&id, &doc).encode()).as_slice()).map_err(|e| self.io(e))?;
            built += 1;
        }
        drop(rows);
        tx.open_table(META).map_err(|e| self.io(e))?.insert(INDEXED, seal(&[1]).as_slice()).map_err(|e| self.io(e))?;
        tracing::info!(documents = built, "built the document index of a store written before it existed");
        Ok(())
    }

    /// Where a replica loads its evicted documents from: this store's
    /// snapshots, read in their own read transactions (any thread).
    pub fn cold_store(&self) -> std::sync::Arc<dyn ColdStore> {
        std::sync::Arc::new(SnapshotReader { db: self.db.clone(), path: self.path.clone() })
    }

    /// A reader of the feed usable from other threads.
    pub fn feed_reader(&self) -> FeedReader {
        FeedReader { db: self.db.clone(), path: self.path.clone() }
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_crdt::ChangeMeta;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meridian-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn record(seq: u64) -> ChangeRecord {
        ChangeRecord {
            meta: ChangeMeta { origin: NodeId(7), seq, hlc: Hlc::new(seq * 10, 0) },
            doc: DocId::new("d").unwrap(),
            changes: vec![vec![seq as u8; 8]],
        }
    }

    fn entry() -> ColdEntry {
        ColdEntry { digest_term: [9; 32], max_hlc: Hlc::new(5, 1), exists: true }
    }

    #[test]
    fn cold_documents_load_from_their_snapshot() {
        let dir = temp_dir("cold");
        let (store, _) = Store::open(&dir, "eu-west").unwrap();
        let id = DocId::new("d").unwrap();
        store.commit(&Batch { snapshots: vec![(id.clone(), vec![1, 2, 3], entry())], ..Batch::default() }).unwrap();
        let cold = store.cold_store();
        assert_eq!(cold.load(&id).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(cold.load(&DocId::new("other").unwrap()).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_without_the_index_gets_it_built_at_open() {
        let dir = temp_dir("legacy");
        let (store, _) = Store::open(&dir, "eu-west").unwrap();
        let id = DocId::new("d").unwrap();
        let mut doc = Document::new();
        let meta = meridian_crdt::ChangeMeta { origin: NodeId(1), seq: 1, hlc: Hlc::new(10, 0) };
        doc.merge_patch(&serde_json::json!({"a": 1}), &meta).unwrap();
        // Write the snapshot as a store from before the index did: no row, no flag.
        let tx = store.db.begin_write().unwrap();
        tx.open_table(DOCS).unwrap().insert(id.as_str(), seal(&doc.save()).as_slice()).unwrap();
        tx.open_table(META).unwrap().remove(INDEXED).unwrap();
        tx.commit().unwrap();
        drop(store);
        let (_, again) = Store::open(&dir, "eu-west").unwrap();
        assert_eq!(again.index, vec![(id.clone(), ColdEntry::of(&id, &doc))]);
        assert!(again.index[0].1.exists);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identity_log_and_checkpoint_survive_reopen() {
        let dir = temp_dir("reopen");
        let (store, first) = Store::open(&dir, "eu-west").unwrap();
        let mut checkpoint = VersionVector::new();
        checkpoint.insert_range(NodeId(7), 1, 2);
        store
            .commit(&Batch {
                records: vec![record(1), record(2), record(3)],
                snapshots: vec![(DocId::new("d").unwrap(), vec![1, 2, 3], entry())],
                checkpoint: Some(checkpoint.clone()),
                truncate: vec![(NodeId(7), 2)],
                feed: (1..=3)
                    .map(|seq| {
                        let r = record(seq);
                        (seq, FeedEntry { doc: r.doc, origin: r.meta.origin, seq, hlc: r.meta.hlc })
                    })
                    .collect(),
                feed_keep_from: None,
                hlc_lease: Some(Hlc::new(77, 0)),
            })
            .unwrap();
        let feed = store.feed_reader().read_after(1, 10).unwrap();
        assert_eq!(feed.iter().map(|(i, e)| (*i, e.seq)).collect::<Vec<_>>(), vec![(2, 2), (3, 3)]);
        drop(store);
        let (_, again) = Store::open(&dir, "eu-west").unwrap();
        assert_eq!(again.node_id, first.node_id);
        assert_eq!(again.checkpoint, checkpoint);
        assert_eq!(again.log, vec![record(3)]);
        assert_eq!(
            again.index,
            vec![(DocId::new("d").unwrap(), entry())],
            "recovery reads the index, not the snapshots"
        );
        assert_eq!(again.hlc_high, Hlc::new(30, 0));
        assert_eq!(again.next_feed, 4, "feed indices continue after a restart");
        assert_eq!(again.hlc_lease, Hlc::new(77, 0), "the HLC lease survives a restart");
        let err = Store::open(&dir, "us-east").err().unwrap();
        assert!(err.to_string().contains("belongs to region \"eu-west\""), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_flipped_byte_is_detected_and_named() {
        let dir = temp_dir("flip");
        let (store, _) = Store::open(&dir, "r").unwrap();
        store.commit(&Batch { records: vec![record(1)], ..Batch::default() }).unwrap();
        drop(store);
        // Overwrite the stored record with one whose checksum does not match.
        let db = Database::create(dir.join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            let mut bad = seal(&record(1).encode());
            let last = bad.len() - 1;
            bad[last] ^= 0xff;
            log.insert((7, 1), bad.as_slice()).unwrap();
        }
        tx.commit().unwrap();
        drop(db);
        let err = Store::open(&dir, "r").err().unwrap().to_string();
        assert!(err.contains("log record (0000000000000007, 1) fails its checksum"), "{err}");
        assert!(err.contains(FILE_NAME), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
