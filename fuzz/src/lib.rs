//! Property checks behind Meridian's fuzz targets, and the seed corpus.
//!
//! Each public check takes raw fuzz input and panics when a property fails.
//! "Does not panic" is the least of them: decoders must round-trip what they
//! accept, and the JSON Patch and merge patch paths must agree with the small
//! reference implementations below, survive save/load, and replicate through
//! their binary change records.
//!
//! The same file is compiled twice: as this crate's library (each target in
//! `fuzz_targets/` is one call into it) and, through `#[path]`, as a module of
//! `tests/tests/fuzz_corpus.rs`, which replays the committed corpus under
//! `cargo test`. It therefore uses only meridian-crdt, meridian-gossip and
//! serde_json, which both sides have.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use meridian_crdt::json::{depth, json_eq};
use meridian_crdt::patch::parse_patch;
use meridian_crdt::token::ORIGINS_MAX;
use meridian_crdt::{
    ChangeMeta, ChangeRecord, DocId, DocIdError, Document, Hlc, NodeId, PatchOp, Pointer, Replica, Token,
    VersionVector, WriteOp, DEPTH_MAX,
};
use meridian_gossip::message::{Closed, Heartbeat, Hello, MemberInfo, SnapshotChunk};
use meridian_gossip::{Message, PROTOCOL_VERSION};
use serde_json::{json, Map, Value as Json};

/// A property check: panics when the input breaks a property.
pub type Check = fn(&[u8]);

/// Every target with its check, by the name of its directory under `fuzz/corpus/`.
pub const TARGETS: [(&str, Check); 7] = [
    ("peer_message", peer_message),
    ("change_record", change_record),
    ("json_patch", json_patch),
    ("merge_patch", merge_patch),
    ("token", token),
    ("doc_id", doc_id),
    ("hlc_text", hlc_text),
];

/// The gossip frame decoder: whatever decodes re-encodes to a frame with a
/// correct length prefix that decodes to the same message, and encoding is
/// canonical. Records inside must pass [`change_record`]'s checks, and
/// snapshot documents must load or be refused without a panic.
pub fn peer_message(data: &[u8]) {
    let Ok(message) = Message::decode(data) else { return };
    let frame = message.encode_frame();
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    assert_eq!(len, frame.len() - 4, "length prefix of a re-encoded {}", message.kind());
    let again = Message::decode(&frame[4..])
        .unwrap_or_else(|err| panic!("re-encoded {} does not decode: {err}", message.kind()));
    assert_eq!(again, message, "decode(encode(m)) != m");
    assert_eq!(again.encode_frame(), frame, "encoding is not canonical");
    match &message {
        Message::Changes(records) => {
            for record in records {
                change_record(&record.encode());
            }
        }
        Message::Snapshot(chunk) => {
            for (_, bytes) in &chunk.docs {
                // The receiver loads these; hostile bytes must be an error, not a panic.
                let _ = Document::load(bytes);
            }
        }
        Message::Hello(_) | Message::Heartbeat(_) => {}
    }
}

/// The change record decoder: accepted records re-encode no longer than the
/// input (the encoding is minimal) and decode to themselves, and applying
/// one to a replica accounts for it exactly once without a panic.
pub fn change_record(data: &[u8]) {
    let Ok(record) = ChangeRecord::decode(data) else { return };
    let bytes = record.encode();
    assert!(bytes.len() <= data.len(), "re-encoding grew from {} to {} bytes", data.len(), bytes.len());
    assert_eq!(ChangeRecord::decode(&bytes).as_ref(), Ok(&record), "decode(encode(r)) != r");
    // An origin no seed uses, so the record is never mistaken for a local one.
    let mut replica = Replica::new(NodeId(0xfeed_f00d));
    let outcome = replica.apply_records(vec![record.clone()]);
    assert_eq!(outcome.applied + outcome.duplicates + outcome.rejected.len(), 1, "{outcome:?}");
    let again = replica.apply_records(vec![record]);
    assert_eq!(again.applied, 0, "a record was applied twice: {again:?}");
}

/// JSON Patch through the real write path. Input: a JSON object (the
/// document, written by PUT) followed by a JSON Patch. The write must succeed
/// exactly when [`reference::json_patch`] does, with the same result; a
/// refused write must change nothing; a successful one must survive
/// save/load and replicate.
pub fn json_patch(data: &[u8]) {
    let Some((Json::Object(initial), patch)) = two_json_values(data) else { return };
    let Ok(ops) = parse_patch(&patch) else { return };
    let mut doc = Harness::put(initial.clone());
    let mut expected = Json::Object(initial);
    let floats = has_float(&expected) || has_float(&patch);
    let reference = reference::json_patch(&mut expected, &ops);
    let actual = doc.write(&WriteOp::JsonPatch(ops.clone()));
    match (&actual, &reference) {
        (Ok(()), Ok(())) => {
            let got = doc.json();
            assert!(json_eq(&got, &expected), "patch result {got} differs from the reference {expected}");
            doc.check_save_load_and_replication();
        }
        (Err(_), Err(_)) => {}
        _ if floats && ops.iter().any(|op| matches!(op, PatchOp::Increment { .. })) => {}
        _ => panic!("Meridian says {actual:?}, the reference says {reference:?} for {ops:?}"),
    }
}

/// RFC 7396 merge patch through the real write path. Input: a JSON object
/// (the document) followed by a merge patch. The result must equal
/// [`reference::merge_patch`]; a patch that is not an object is refused and
/// changes nothing; applying the patch again changes nothing (merge patches
/// are idempotent); the result survives save/load and replicates.
pub fn merge_patch(data: &[u8]) {
    let Some((Json::Object(initial), patch)) = two_json_values(data) else { return };
    let mut doc = Harness::put(initial.clone());
    let mut expected = Json::Object(initial);
    reference::merge_patch(&mut expected, &patch);
    let result = doc.write(&WriteOp::MergePatch(patch.clone()));
    if !patch.is_object() {
        assert!(result.is_err(), "a merge patch that is not an object was accepted: {patch}");
        return;
    }
    result.unwrap_or_else(|err| panic!("merge patch {patch} refused: {err}"));
    let got = doc.json();
    assert!(json_eq(&got, &expected), "merge patch result {got} differs from the reference {expected}");
    doc.write(&WriteOp::MergePatch(patch)).expect("the same merge patch again");
    assert!(json_eq(&doc.json(), &got), "a merge patch applied twice is not idempotent");
    doc.check_save_load_and_replication();
}

/// Token parsing: a parsed token prints in a canonical form that parses back
/// to it and is no longer than the input. And any token of at most
/// [`ORIGINS_MAX`] origins built from the input prints and parses back.
pub fn token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = Token::parse(text) {
            assert!(token.entries.len() <= ORIGINS_MAX);
            let shown = token.to_string();
            assert_eq!(Token::parse(&shown).as_ref(), Ok(&token), "parse(display(t)) != t for {text:?}");
            assert!(shown.len() <= text.len(), "canonical form {shown:?} is longer than {text:?}");
        }
    }
    let entries: BTreeMap<NodeId, u64> = data
        .chunks_exact(16)
        .take(ORIGINS_MAX)
        .map(|c| {
            (
                NodeId(u64::from_be_bytes(c[..8].try_into().expect("8"))),
                u64::from_be_bytes(c[8..].try_into().expect("8")),
            )
        })
        .collect();
    let built = Token { entries };
    assert_eq!(Token::parse(&built.to_string()).as_ref(), Ok(&built), "a token Meridian made does not parse");
}

/// Document ids: an accepted id is the input unchanged, 1 to
/// [`DocId::LEN_MAX`] characters from the documented set, and travels in a
/// change record; a refused one is refused for the reason the error names.
pub fn doc_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._~:@-/".contains(c);
    let first_bad = text.chars().find(|&c| !allowed(c));
    match DocId::new(text) {
        Ok(id) => {
            assert_eq!(id.as_str(), text);
            assert_eq!(id.to_string(), text);
            assert!((1..=DocId::LEN_MAX).contains(&text.len()) && first_bad.is_none(), "accepted {text:?}");
            let record = ChangeRecord { meta: sample_meta(1), doc: id, changes: Vec::new() };
            assert_eq!(ChangeRecord::decode(&record.encode()), Ok(record));
        }
        Err(DocIdError::Empty) => assert!(text.is_empty()),
        Err(DocIdError::BadChar(c)) => assert_eq!(Some(c), first_bad, "wrong character named for {text:?}"),
        Err(DocIdError::TooLong(n)) => {
            assert!(n == text.len() && n > DocId::LEN_MAX && first_bad.is_none(), "{n} for {text:?}")
        }
    }
}

/// HLC timestamps: parsed text prints canonically and parses back; any
/// timestamp (from the first 24 input bytes) prints, parses back, keeps its
/// 12-byte form, whose byte order is the timestamps' order, and its
/// successor and predecessor are on the right side of it.
pub fn hlc_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(hlc) = Hlc::parse(text) {
            let shown = hlc.to_string();
            assert_eq!(Hlc::parse(&shown).as_ref(), Ok(&hlc), "parse(display(h)) != h for {text:?}");
            assert_eq!(Hlc::parse(&shown).expect("parsed").to_string(), shown);
        }
    }
    let from = |bytes: &[u8]| bytes.try_into().ok().map(Hlc::from_bytes);
    let (Some(a), Some(b)) = (data.get(..12).and_then(from), data.get(12..24).and_then(from)) else { return };
    for hlc in [a, b] {
        assert_eq!(Hlc::parse(&hlc.to_string()).as_ref(), Ok(&hlc), "{hlc:?} does not parse back");
        assert_eq!(Hlc::from_bytes(hlc.to_bytes()), hlc);
        let max = Hlc::new(u64::MAX, u32::MAX);
        assert!(hlc.successor() > hlc || hlc == max, "successor of {hlc:?} is {:?}", hlc.successor());
        assert!(hlc.predecessor() < hlc || hlc == Hlc::zero(), "predecessor of {hlc:?} is {:?}", hlc.predecessor());
    }
    assert_eq!(a.cmp(&b), a.to_bytes().cmp(&b.to_bytes()), "byte order differs from timestamp order");
}

/// The first two JSON values of the input, if both parse and neither nests
/// deeper than the HTTP layer lets through.
fn two_json_values(data: &[u8]) -> Option<(Json, Json)> {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Json>();
    let first = values.next()?.ok()?;
    let second = values.next()?.ok()?;
    (depth(&first) <= DEPTH_MAX && depth(&second) <= DEPTH_MAX).then_some((first, second))
}

/// Whether a float appears anywhere in `value`. JSON reads 5 and 5.0 as
/// equal, so a write that leaves an equal number in place keeps its old
/// representation, and `increment` (integers only) can then tell apart what
/// the reference cannot: only inputs with floats and increments may disagree.
fn has_float(value: &Json) -> bool {
    match value {
        Json::Number(n) => n.is_f64(),
        Json::Array(items) => items.iter().any(has_float),
        Json::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

fn sample_meta(seq: u64) -> ChangeMeta {
    ChangeMeta { origin: NodeId(1), seq, hlc: Hlc::new(1_795_000_000_000_000_000 + seq, 0) }
}

/// One document on a replica, written through [`Replica::local_write`] like
/// the node does, keeping every record for the replication check.
struct Harness {
    replica: Replica,
    id: DocId,
    records: Vec<ChangeRecord>,
}

impl Harness {
    /// A document created by PUT of `initial`, which must read back equal.
    fn put(initial: Map<String, Json>) -> Harness {
        let mut harness = Harness {
            replica: Replica::new(NodeId(1)),
            id: DocId::new("fuzz/doc").expect("valid"),
            records: Vec::new(),
        };
        let object = Json::Object(initial.clone());
        harness.write(&WriteOp::Put(initial)).unwrap_or_else(|err| panic!("PUT of {object} refused: {err}"));
        assert!(json_eq(&harness.json(), &object), "PUT {object} reads back as {}", harness.json());
        harness
    }

    /// Writes `op`; a refused write must leave the document as it was.
    fn write(&mut self, op: &WriteOp) -> Result<(), meridian_crdt::WriteError> {
        let before = self.replica.document(&self.id).map(|s| (s.doc.to_json(), s.doc.etag()));
        let hlc = Hlc::new(1_795_000_000_000_000_000 + self.records.len() as u64, 0);
        match self.replica.local_write(&self.id, op, hlc, None) {
            Ok(receipt) => {
                self.records.push(receipt.record);
                Ok(())
            }
            Err(err) => {
                let after = self.replica.document(&self.id).map(|s| (s.doc.to_json(), s.doc.etag()));
                assert_eq!(before, after, "a refused write ({err}) changed the document");
                Err(err)
            }
        }
    }

    fn json(&self) -> Json {
        self.replica.document(&self.id).and_then(|s| s.doc.to_json()).expect("the document exists")
    }

    /// The document survives save/load, and a replica fed the records
    /// through their binary form ends in the same state.
    fn check_save_load_and_replication(&self) {
        let doc = &self.replica.document(&self.id).expect("exists").doc;
        let loaded = Document::load(&doc.save()).expect("a saved document loads");
        assert_eq!(loaded.to_json(), doc.to_json(), "save/load changed the document");
        assert_eq!(loaded.heads(), doc.heads());
        let mut peer = Replica::new(NodeId(2));
        let records =
            self.records.iter().map(|r| ChangeRecord::decode(&r.encode()).expect("own record decodes")).collect();
        let outcome = peer.apply_records(records);
        assert!(outcome.rejected.is_empty(), "records refused: {:?}", outcome.rejected);
        assert_eq!(peer.pending_count(), 0, "records held back");
        let replicated = peer.document(&self.id).and_then(|s| s.doc.to_json());
        assert_eq!(replicated, doc.to_json(), "a replica fed the records differs");
        assert_eq!(peer.digest(), self.replica.digest(), "digests differ after replication");
    }
}

/// Reference semantics on plain `serde_json` values, written from the RFCs
/// and Meridian's documented deviations, independently of `crdt/src/json.rs`
/// and `document.rs`.
pub mod reference {
    use super::*;

    /// RFC 7396 `MergePatch(Target, Patch)`, as in its section 2 pseudocode.
    pub fn merge_patch(target: &mut Json, patch: &Json) {
        let Json::Object(members) = patch else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = Json::Object(Map::new());
        }
        let object = target.as_object_mut().expect("just made an object");
        for (name, value) in members {
            if value.is_null() {
                object.remove(name);
            } else {
                merge_patch(object.entry(name.clone()).or_insert(Json::Null), value);
            }
        }
    }

    /// RFC 6902 on a document that must stay an object, all or nothing,
    /// plus Meridian's `increment` (integers only, refused on overflow) and
    /// its nesting limit.
    pub fn json_patch(doc: &mut Json, ops: &[PatchOp]) -> Result<(), String> {
        let mut work = doc.clone();
        for op in ops {
            apply(&mut work, op)?;
        }
        *doc = work;
        Ok(())
    }

    fn apply(doc: &mut Json, op: &PatchOp) -> Result<(), String> {
        match op {
            PatchOp::Add { path, value } => add(doc, path, value.clone()),
            PatchOp::Remove { path } => remove(doc, path).map(drop),
            PatchOp::Replace { path, value } => {
                check_depth(path, value)?;
                match locate(doc, path)? {
                    None => replace_root(doc, value.clone()),
                    Some((parent, last)) => {
                        *existing_mut(parent, last)? = value.clone();
                        Ok(())
                    }
                }
            }
            PatchOp::Move { from, path } => {
                if from.tokens.len() < path.tokens.len() && path.tokens.starts_with(&from.tokens) {
                    return Err("move into its own child".into());
                }
                let value = get(doc, from)?;
                if from == path {
                    return Ok(());
                }
                remove(doc, from)?;
                add(doc, path, value)
            }
            PatchOp::Copy { from, path } => {
                let value = get(doc, from)?;
                add(doc, path, value)
            }
            PatchOp::Test { path, value } => {
                if json_eq(&get(doc, path)?, value) {
                    Ok(())
                } else {
                    Err("test failed".into())
                }
            }
            PatchOp::Increment { path, value } => {
                let (parent, last) = locate(doc, path)?.ok_or("the document is not a counter")?;
                if let Json::Object(map) = parent {
                    if !map.contains_key(last) {
                        map.insert(last.clone(), json!(value));
                        return Ok(());
                    }
                }
                let slot = existing_mut(parent, last)?;
                let current = slot.as_i64().ok_or("not an integer")?;
                *slot = json!(current.checked_add(*value).ok_or("the counter would overflow")?);
                Ok(())
            }
        }
    }

    fn check_depth(path: &Pointer, value: &Json) -> Result<(), String> {
        if path.tokens.len() + depth(value) > DEPTH_MAX {
            return Err("too deep".into());
        }
        Ok(())
    }

    fn replace_root(doc: &mut Json, value: Json) -> Result<(), String> {
        if !value.is_object() {
            return Err("the document must stay an object".into());
        }
        *doc = value;
        Ok(())
    }

    fn add(doc: &mut Json, path: &Pointer, value: Json) -> Result<(), String> {
        check_depth(path, &value)?;
        let Some((parent, last)) = locate(doc, path)? else { return replace_root(doc, value) };
        match parent {
            Json::Object(map) => {
                map.insert(last.clone(), value);
            }
            Json::Array(items) => {
                let index = if last == "-" { items.len() } else { index(last)? };
                if index > items.len() {
                    return Err("index out of range".into());
                }
                items.insert(index, value);
            }
            _ => unreachable!("locate returns containers"),
        }
        Ok(())
    }

    fn remove(doc: &mut Json, path: &Pointer) -> Result<Json, String> {
        let (parent, last) = locate(doc, path)?.ok_or("cannot remove the document")?;
        match parent {
            Json::Object(map) => map.remove(last).ok_or_else(|| "no such member".into()),
            Json::Array(items) => {
                let index = index(last)?;
                if index >= items.len() {
                    return Err("index out of range".into());
                }
                Ok(items.remove(index))
            }
            _ => unreachable!("locate returns containers"),
        }
    }

    fn get(doc: &mut Json, path: &Pointer) -> Result<Json, String> {
        match locate(doc, path)? {
            None => Ok(doc.clone()),
            Some((parent, last)) => existing_mut(parent, last).map(|v| v.clone()),
        }
    }

    /// The value a member or element names, which must exist.
    fn existing_mut<'a>(parent: &'a mut Json, last: &str) -> Result<&'a mut Json, String> {
        match parent {
            Json::Object(map) => map.get_mut(last).ok_or_else(|| "no such member".into()),
            Json::Array(items) => items.get_mut(index(last)?).ok_or_else(|| "index out of range".into()),
            _ => unreachable!("locate returns containers"),
        }
    }

    /// The container holding the last token of `path` (which must exist and
    /// be an object or array) and that token; `None` for the whole document.
    fn locate<'a, 'p>(doc: &'a mut Json, path: &'p Pointer) -> Result<Option<(&'a mut Json, &'p String)>, String> {
        let Some((last, parents)) = path.tokens.split_last() else { return Ok(None) };
        let mut here = doc;
        for token in parents {
            here = match here {
                Json::Object(map) => map.get_mut(token).ok_or("missing parent")?,
                Json::Array(items) => items.get_mut(index(token)?).ok_or("parent index out of range")?,
                _ => return Err("parent is not a container".into()),
            };
        }
        if !(here.is_object() || here.is_array()) {
            return Err("parent is not a container".into());
        }
        Ok(Some((here, last)))
    }

    /// An RFC 6901 array index: digits, no leading zeros (`-` is handled by
    /// the callers that accept it).
    fn index(token: &str) -> Result<usize, String> {
        let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
        if !digits || (token.len() > 1 && token.starts_with('0')) {
            return Err(format!("{token:?} is not an array index"));
        }
        token.parse().map_err(|_| "index too large".into())
    }
}

/// The committed seed corpus, made by the real encoders and write paths:
/// `(target, file name, bytes)`. `tests/tests/fuzz_corpus.rs` writes it to
/// `fuzz/corpus/` when run with `--ignored`, and checks it on every run.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();

    // Change records from real writes: a PUT, a JSON Patch whose increment
    // carries the counter-creation change too, a merge patch, a delete.
    let mut replica = Replica::new(NodeId(0x0123_4567_89ab_cdef));
    let id = DocId::new("users/42").expect("valid");
    let writes = [
        ("put", WriteOp::Put(json!({"name": "ada", "tags": ["math"]}).as_object().expect("object").clone())),
        (
            "json_patch_increment",
            WriteOp::JsonPatch(
                parse_patch(&json!([{"op": "increment", "path": "/views", "value": 1}])).expect("valid"),
            ),
        ),
        ("merge_patch", WriteOp::MergePatch(json!({"city": "london", "tags": null}))),
        ("delete", WriteOp::Delete),
    ];
    let mut records = Vec::new();
    for (seq, (name, op)) in writes.iter().enumerate() {
        let hlc = Hlc::new(1_795_000_000_000_000_000 + seq as u64, seq as u32);
        let receipt = replica.local_write(&id, op, hlc, None).expect("seed write");
        out.push(("change_record", format!("{name}.bin"), receipt.record.encode()));
        records.push(receipt.record);
    }

    // One frame body of each message kind, from the real encoder.
    let member = |node: u64, region: &str, addr: &str| MemberInfo {
        node: NodeId(node),
        region: region.into(),
        addr: addr.parse::<SocketAddr>().expect("address"),
    };
    let mut vv = VersionVector::new();
    vv.insert_range(NodeId(0x0123_4567_89ab_cdef), 1, 4);
    vv.insert(NodeId(7), 9);
    let snapshot_doc = replica.document(&id).expect("written").doc.save();
    let messages = [
        (
            "hello",
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                cluster: "prod".into(),
                me: member(1, "us-east", "10.0.0.1:7170"),
            }),
        ),
        (
            "hello_ipv6",
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                cluster: "c".into(),
                me: member(2, "eu-west", "[::1]:7171"),
            }),
        ),
        (
            "heartbeat",
            Message::Heartbeat(Heartbeat {
                hlc: Hlc::new(1_795_000_000_000_000_000, 2),
                vv: vv.clone(),
                log_floor: vec![(NodeId(7), 3)],
                members: vec![member(1, "us-east", "10.0.0.1:7170"), member(7, "ap-south", "10.0.0.7:7172")],
                applied: vec![(NodeId(0x0123_4567_89ab_cdef), 4)],
                closed: vec![Closed { origin: NodeId(7), t: Hlc::new(1_794_999_999_000_000_000, 0), n: 9 }],
                digest: [0x5a; 32],
                decommissioned: vec![(NodeId(3), 12)],
            }),
        ),
        ("changes", Message::Changes(records)),
        (
            "snapshot",
            Message::Snapshot(SnapshotChunk {
                transfer: 1,
                chunk: 0,
                docs: vec![(id.clone(), snapshot_doc)],
                covers: Some(vv),
            }),
        ),
    ];
    for (name, message) in messages {
        out.push(("peer_message", format!("{name}.bin"), message.encode_frame()[4..].to_vec()));
    }

    // RFC 6902 appendix A examples whose document is an object (A.1 to A.16
    // minus those on a non-object root), plus Meridian's increment.
    let patches = [
        ("a01_add_member", r#"{"foo":"bar"}"#, r#"[{"op":"add","path":"/baz","value":"qux"}]"#),
        ("a02_add_element", r#"{"foo":["bar","baz"]}"#, r#"[{"op":"add","path":"/foo/1","value":"qux"}]"#),
        ("a03_remove", r#"{"baz":"qux","foo":"bar"}"#, r#"[{"op":"remove","path":"/baz"}]"#),
        ("a04_remove_element", r#"{"foo":["bar","qux","baz"]}"#, r#"[{"op":"remove","path":"/foo/1"}]"#),
        ("a05_replace", r#"{"baz":"qux","foo":"bar"}"#, r#"[{"op":"replace","path":"/baz","value":"boo"}]"#),
        (
            "a06_move",
            r#"{"foo":{"bar":"baz","waldo":"fred"},"qux":{"corge":"grault"}}"#,
            r#"[{"op":"move","from":"/foo/waldo","path":"/qux/thud"}]"#,
        ),
        (
            "a07_move_element",
            r#"{"foo":["all","grass","cows","eat"]}"#,
            r#"[{"op":"move","from":"/foo/1","path":"/foo/3"}]"#,
        ),
        (
            "a08_test",
            r#"{"baz":"qux","foo":["a",2,"c"]}"#,
            r#"[{"op":"test","path":"/baz","value":"qux"},{"op":"test","path":"/foo/1","value":2}]"#,
        ),
        ("a09_test_fails", r#"{"baz":"qux"}"#, r#"[{"op":"test","path":"/baz","value":"bar"}]"#),
        ("a10_add_nested", r#"{"foo":"bar"}"#, r#"[{"op":"add","path":"/child","value":{"grandchild":{}}}]"#),
        ("a12_missing_parent", r#"{"foo":"bar"}"#, r#"[{"op":"add","path":"/baz/bat","value":"qux"}]"#),
        ("a14_escapes", r#"{"/":9,"~1":10}"#, r#"[{"op":"test","path":"/~01","value":10}]"#),
        ("a15_test_type", r#"{"/":9,"~1":10}"#, r#"[{"op":"test","path":"/~01","value":"10"}]"#),
        ("a16_add_array", r#"{"foo":["bar"]}"#, r#"[{"op":"add","path":"/foo/-","value":["abc","def"]}]"#),
        (
            "copy_and_append",
            r#"{"langs":[],"user":{"name":"ada"}}"#,
            r#"[{"op":"copy","from":"/user","path":"/author"},{"op":"add","path":"/langs/-","value":"en"}]"#,
        ),
        (
            "increment",
            r#"{"views":1,"stats":{}}"#,
            r#"[{"op":"increment","path":"/views","value":5},{"op":"increment","path":"/stats/hits","value":-2}]"#,
        ),
        (
            "replace_root",
            r#"{"a":[1,2,{"b":null}]}"#,
            r#"[{"op":"replace","path":"","value":{"a":[1,{"b":true}],"c":1.5}}]"#,
        ),
    ];
    for (name, doc, patch) in patches {
        out.push(("json_patch", format!("{name}.json"), format!("{doc}\n{patch}\n").into_bytes()));
    }

    // RFC 7396: the section 3 example and the appendix A cases on objects.
    let merges = [
        (
            "s3_example",
            r#"{"title":"Goodbye!","author":{"givenName":"John","familyName":"Doe"},"tags":["example","sample"],"content":"This will be unchanged"}"#,
            r#"{"title":"Hello!","phoneNumber":"+01-555-1234","author":{"familyName":null},"tags":["example"]}"#,
        ),
        ("a01_replace", r#"{"a":"b"}"#, r#"{"a":"c"}"#),
        ("a02_add", r#"{"a":"b"}"#, r#"{"b":"c"}"#),
        ("a03_remove", r#"{"a":"b"}"#, r#"{"a":null}"#),
        ("a04_remove_one", r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#),
        ("a05_array_replaced", r#"{"a":["b"]}"#, r#"{"a":"c"}"#),
        ("a06_by_array", r#"{"a":"c"}"#, r#"{"a":["b"]}"#),
        ("a07_nested", r#"{"a":{"b":"c"}}"#, r#"{"a":{"b":"d","c":null}}"#),
        ("a08_array_of_objects", r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#),
        ("a12_nulls_inside", r#"{"e":null}"#, r#"{"a":1}"#),
        ("a15_nested_nulls", r#"{}"#, r#"{"a":{"bb":{"ccc":null}}}"#),
        ("not_an_object", r#"{"a":"foo"}"#, r#"["c"]"#),
    ];
    for (name, doc, patch) in merges {
        out.push(("merge_patch", format!("{name}.json"), format!("{doc}\n{patch}\n").into_bytes()));
    }

    let mut joined = Token::of_change(NodeId(0x0123_4567_89ab_cdef), 4);
    joined.join(&Token::of_change(NodeId(7), 9));
    for (name, token) in [("empty", Token::default()), ("one", Token::of_change(NodeId(1), 1)), ("two", joined)] {
        out.push(("token", format!("{name}.txt"), token.to_string().into_bytes()));
    }

    for (name, text) in [
        ("plain", "a".to_string()),
        ("hierarchical", "users/42".to_string()),
        ("every_class", "A-Z.a_z~0:9@x/".to_string()),
        ("longest", "x".repeat(DocId::LEN_MAX)),
        ("too_long", "x".repeat(DocId::LEN_MAX + 1)),
        ("bad_char", "a b".to_string()),
    ] {
        out.push(("doc_id", format!("{name}.txt"), text.into_bytes()));
    }

    for (name, text) in [
        ("with_counter", Hlc::new(1_795_000_000_123_456_789, 7).to_string()),
        ("rfc3339_fraction", "2026-11-22T03:20:12.5Z".to_string()),
        ("rfc3339_offset", "2026-11-22T03:20:12+01:00".to_string()),
        ("epoch", Hlc::zero().to_string()),
    ] {
        out.push(("hlc_text", format!("{name}.txt"), text.into_bytes()));
    }
    out
}
