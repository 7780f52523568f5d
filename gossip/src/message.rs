//! Peer messages and their binary encoding.
//!
//! A frame on a QUIC stream is `[u32 big-endian length][message]`; the
//! driver enforces [`FRAME_BYTES_MAX`] before reading a body. A message is
//! `[tag u8][fields]` with LEB128 integers and length-prefixed bytes.
//! Decoding never panics and refuses anything malformed, truncated, over a
//! limit, or followed by trailing bytes.
//!
//! Every stream starts with a [`Hello`] stating the protocol version, the
//! cluster name, the node id and region, so a foreign or incompatible peer
//! is refused before anything else is read.

use std::net::SocketAddr;

use meridian_crdt::token::{read_varint, write_varint};
use meridian_crdt::{ChangeRecord, DocId, Hlc, NodeId, VersionVector};

/// The protocol version this build speaks. 3: a write that leaves a key of
/// a document's data holding a value of its own no longer puts `live`
/// (see `meridian_crdt::document`); a version-2 node would read such
/// documents as absent, so the two must not replicate to each other.
pub const PROTOCOL_VERSION: u16 = 3;
/// Largest frame accepted (a snapshot chunk or a batch of records).
pub const FRAME_BYTES_MAX: usize = 16 << 20;
/// Most records in one `Changes` message.
pub const RECORDS_PER_MESSAGE_MAX: usize = 65_536;
/// Most members listed in one heartbeat.
pub const MEMBERS_MAX: usize = 256;
/// Decommissioned members listed in one heartbeat.
pub const DECOMMISSIONED_MAX: usize = 1024;
/// Most documents in one snapshot chunk.
pub const SNAPSHOT_DOCS_MAX: usize = 65_536;
/// Most ranges in one version vector on the wire.
pub const VV_RANGES_MAX: usize = 65_536;
const TEXT_MAX: usize = 256;

/// A member as gossiped: who it is and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node id.
    pub node: NodeId,
    /// Region name.
    pub region: String,
    /// Peer (QUIC) address.
    pub addr: SocketAddr,
}

/// First message on every stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version spoken by the sender.
    pub version: u16,
    /// Cluster name; peers of another cluster are refused.
    pub cluster: String,
    /// The sender.
    pub me: MemberInfo,
}

/// Sent every heartbeat interval on the live stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's HLC when it built the heartbeat.
    pub hlc: Hlc,
    /// Which changes the sender holds durably.
    pub vv: VersionVector,
    /// Per origin, the lowest sequence number still in the sender's log
    /// (changes below it are only in snapshots).
    pub log_floor: Vec<(NodeId, u64)>,
    /// Every member the sender knows, itself included.
    pub members: Vec<MemberInfo>,
    /// Per origin, the prefix of its changes the sender has *applied* (not
    /// just received): what freshness, receipts and convergence speak of.
    pub applied: Vec<(NodeId, u64)>,
    /// Closed timestamps: the sender's own and the latest it knows for
    /// third origins, so they survive partial partitions.
    pub closed: Vec<Closed>,
    /// The sender's state digest.
    pub digest: [u8; 32],
    /// Members removed for good, each with the last sequence number of its
    /// changes: they leave safe time once that prefix is applied.
    pub decommissioned: Vec<(NodeId, u64)>,
}

/// An origin's closed timestamp: every change of `origin` with HLC <= `t`
/// has sequence <= `n`, and no later change of it gets an HLC <= `t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The origin.
    pub origin: NodeId,
    /// Closed up to this time.
    pub t: Hlc,
    /// Every change at or before `t` has a sequence number at most this.
    pub n: u64,
}

/// A chunk of a state transfer: whole documents, and on the last chunk the
/// vector of changes the documents together cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Transfer number (per sender), so chunks of an abandoned transfer are not mixed with a new one.
    pub transfer: u64,
    /// Chunk number within the transfer, from 0: the receiver applies `covers`
    /// only if it saw every chunk, in order.
    pub chunk: u64,
    /// Documents as automerge saves.
    pub docs: Vec<(DocId, Vec<u8>)>,
    /// On the last chunk: what the transfer covers.
    pub covers: Option<VersionVector>,
}

/// Everything that travels between peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Stream opening.
    Hello(Hello),
    /// Liveness, clock and version vector.
    Heartbeat(Heartbeat),
    /// Change records (live push or catch-up).
    Changes(Vec<ChangeRecord>),
    /// State transfer.
    Snapshot(SnapshotChunk),
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ends early.
    #[error("truncated message")]
    Truncated,
    /// Unknown message tag.
    #[error("unknown message type {0}")]
    UnknownTag(u8),
    /// A field is invalid.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// A count or size is over its limit.
    #[error("over limit: {0}")]
    Limit(&'static str),
    /// Bytes remain after the message.
    #[error("trailing bytes after the message")]
    Trailing,
}

const TAG_HELLO: u8 = 1;
const TAG_HEARTBEAT: u8 = 2;
const TAG_CHANGES: u8 = 3;
const TAG_SNAPSHOT: u8 = 4;

impl Message {
    /// Encodes as a frame: length prefix plus body.
    pub fn encode_frame(&self) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        self.encode_into(&mut out);
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Heartbeat(_) => "heartbeat",
            Message::Changes(_) => "changes",
            Message::Snapshot(_) => "snapshot",
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello(hello) => {
                out.push(TAG_HELLO);
                out.extend_from_slice(&hello.version.to_be_bytes());
                put_bytes(out, hello.cluster.as_bytes());
                put_member(out, &hello.me);
            }
            Message::Heartbeat(hb) => {
                out.push(TAG_HEARTBEAT);
                out.extend_from_slice(&hb.hlc.to_bytes());
                put_vv(out, &hb.vv);
                write_varint(out, hb.log_floor.len() as u64);
                for (origin, seq) in &hb.log_floor {
                    out.extend_from_slice(&origin.0.to_be_bytes());
                    write_varint(out, *seq);
                }
                write_varint(out, hb.members.len() as u64);
                for member in &hb.members {
                    put_member(out, member);
                }
                write_varint(out, hb.applied.len() as u64);
                for (origin, seq) in &hb.applied {
                    out.extend_from_slice(&origin.0.to_be_bytes());
                    write_varint(out, *seq);
                }
                write_varint(out, hb.closed.len() as u64);
                for closed in &hb.closed {
                    out.extend_from_slice(&closed.origin.0.to_be_bytes());
                    out.extend_from_slice(&closed.t.to_bytes());
                    write_varint(out, closed.n);
                }
                out.extend_from_slice(&hb.digest);
                write_varint(out, hb.decommissioned.len() as u64);
                for (node, last) in &hb.decommissioned {
                    out.extend_from_slice(&node.0.to_be_bytes());
                    write_varint(out, *last);
                }
            }
            Message::Changes(records) => {
                out.push(TAG_CHANGES);
                write_varint(out, records.len() as u64);
                for record in records {
                    put_bytes(out, &record.encode());
                }
            }
            Message::Snapshot(chunk) => {
                out.push(TAG_SNAPSHOT);
                write_varint(out, chunk.transfer);
                write_varint(out, chunk.chunk);
                write_varint(out, chunk.docs.len() as u64);
                for (id, bytes) in &chunk.docs {
                    put_bytes(out, id.as_str().as_bytes());
                    put_bytes(out, bytes);
                }
                match &chunk.covers {
                    None => out.push(0),
                    Some(vv) => {
                        out.push(1);
                        put_vv(out, vv);
                    }
                }
            }
        }
    }

    /// Decodes a message body (without the length prefix).
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(DecodeError::Limit("frame size"));
        }
        let mut r = Reader(bytes);
        let message = match r.byte()? {
            TAG_HELLO => {
                let version = u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes"));
                let cluster = r.text()?;
                let me = r.member()?;
                Message::Hello(Hello { version, cluster, me })
            }
            TAG_HEARTBEAT => {
                let hlc = Hlc::from_bytes(r.take(12)?.try_into().expect("12 bytes"));
                let vv = r.vv()?;
                let floors = r.count(VV_RANGES_MAX, "log floors")?;
                let mut log_floor = Vec::with_capacity(floors.min(64));
                for _ in 0..floors {
                    log_floor.push((r.node()?, r.varint()?));
                }
                let count = r.count(MEMBERS_MAX, "members")?;
                let mut members = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    members.push(r.member()?);
                }
                let count = r.count(VV_RANGES_MAX, "applied")?;
                let mut applied = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    applied.push((r.node()?, r.varint()?));
                }
                let count = r.count(MEMBERS_MAX, "closed timestamps")?;
                let mut closed = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    let origin = r.node()?;
                    let t = Hlc::from_bytes(r.take(12)?.try_into().expect("12 bytes"));
                    closed.push(Closed { origin, t, n: r.varint()? });
                }
                let digest = r.take(32)?.try_into().expect("32 bytes");
                let count = r.count(DECOMMISSIONED_MAX, "decommissioned members")?;
                let mut decommissioned = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    decommissioned.push((r.node()?, r.varint()?));
                }
                Message::Heartbeat(Heartbeat { hlc, vv, log_floor, members, applied, closed, digest, decommissioned })
            }
            TAG_CHANGES => {
                let count = r.count(RECORDS_PER_MESSAGE_MAX, "records")?;
                let mut records = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let bytes = r.bytes()?;
                    records.push(ChangeRecord::decode(bytes).map_err(|_| DecodeError::Invalid("change record"))?);
                }
                Message::Changes(records)
            }
            TAG_SNAPSHOT => {
                let transfer = r.varint()?;
                let chunk = r.varint()?;
                let count = r.count(SNAPSHOT_DOCS_MAX, "snapshot documents")?;
                let mut docs = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let id = std::str::from_utf8(r.bytes()?).map_err(|_| DecodeError::Invalid("document id"))?;
                    let id = DocId::new(id).map_err(|_| DecodeError::Invalid("document id"))?;
                    docs.push((id, r.bytes()?.to_vec()));
                }
                let covers = match r.byte()? {
                    0 => None,
                    1 => Some(r.vv()?),
                    _ => return Err(DecodeError::Invalid("snapshot covers flag")),
                };
                Message::Snapshot(SnapshotChunk { transfer, chunk, docs, covers })
            }
            tag => return Err(DecodeError::UnknownTag(tag)),
        };
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(message)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_member(out: &mut Vec<u8>, member: &MemberInfo) {
    out.extend_from_slice(&member.node.0.to_be_bytes());
    put_bytes(out, member.region.as_bytes());
    put_bytes(out, member.addr.to_string().as_bytes());
}

fn put_vv(out: &mut Vec<u8>, vv: &VersionVector) {
    let ranges: Vec<_> = vv.origins().flat_map(|o| vv.ranges(o)).collect();
    write_varint(out, ranges.len() as u64);
    for range in ranges {
        out.extend_from_slice(&range.origin.0.to_be_bytes());
        write_varint(out, range.start);
        write_varint(out, range.end - range.start);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let (value, used) = read_varint(self.0).ok_or(DecodeError::Truncated)?;
        self.0 = &self.0[used..];
        Ok(value)
    }

    fn count(&mut self, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > max as u64 {
            return Err(DecodeError::Limit(what));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        if len > self.0.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        self.take(len as usize)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        if bytes.len() > TEXT_MAX {
            return Err(DecodeError::Limit("text field"));
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Invalid("text is not UTF-8"))
    }

    fn node(&mut self) -> Result<NodeId, DecodeError> {
        Ok(NodeId(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"))))
    }

    fn member(&mut self) -> Result<MemberInfo, DecodeError> {
        let node = self.node()?;
        let region = self.text()?;
        let addr = self.text()?.parse().map_err(|_| DecodeError::Invalid("member address"))?;
        Ok(MemberInfo { node, region, addr })
    }

    fn vv(&mut self) -> Result<VersionVector, DecodeError> {
        let count = self.count(VV_RANGES_MAX, "version vector ranges")?;
        let mut vv = VersionVector::new();
        for _ in 0..count {
            let origin = self.node()?;
            let start = self.varint()?;
            let len = self.varint()?;
            let end = start.checked_add(len).ok_or(DecodeError::Invalid("range overflows"))?;
            if start == 0 {
                return Err(DecodeError::Invalid("sequence numbers start at 1"));
            }
            vv.insert_range(origin, start, end);
        }
        Ok(vv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_crdt::ChangeMeta;

    fn samples() -> Vec<Message> {
        let member = MemberInfo { node: NodeId(9), region: "eu-west".into(), addr: "127.0.0.1:7171".parse().unwrap() };
        let mut vv = VersionVector::new();
        vv.insert_range(NodeId(9), 1, 40);
        vv.insert(NodeId(3), 7);
        vec![
            Message::Hello(Hello { version: PROTOCOL_VERSION, cluster: "prod".into(), me: member.clone() }),
            Message::Heartbeat(Heartbeat {
                hlc: Hlc::new(5, 1),
                vv: vv.clone(),
                log_floor: vec![(NodeId(9), 3)],
                members: vec![member],
                applied: vec![(NodeId(9), 40)],
                closed: vec![Closed { origin: NodeId(9), t: Hlc::new(4, 0), n: 40 }],
                digest: [7; 32],
                decommissioned: vec![(NodeId(4), 17)],
            }),
            Message::Changes(vec![ChangeRecord {
                meta: ChangeMeta { origin: NodeId(9), seq: 4, hlc: Hlc::new(1, 0) },
                doc: DocId::new("a/b").unwrap(),
                changes: vec![vec![1, 2, 3]],
            }]),
            Message::Snapshot(SnapshotChunk {
                transfer: 2,
                chunk: 0,
                docs: vec![(DocId::new("d").unwrap(), vec![9; 20])],
                covers: Some(vv),
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let frame = message.encode_frame();
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - 4);
            assert_eq!(Message::decode(&frame[4..]).unwrap(), message);
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for message in samples() {
            let frame = message.encode_frame();
            let body = &frame[4..];
            for len in 0..body.len() {
                assert!(Message::decode(&body[..len]).is_err(), "{} accepted at {len} bytes", message.kind());
            }
            let mut longer = body.to_vec();
            longer.push(0);
            assert_eq!(Message::decode(&longer), Err(DecodeError::Trailing));
        }
        assert_eq!(Message::decode(&[99]), Err(DecodeError::UnknownTag(99)));
    }

    #[test]
    fn huge_counts_are_refused_without_allocating() {
        let mut body = vec![TAG_CHANGES];
        write_varint(&mut body, u64::MAX);
        assert_eq!(Message::decode(&body), Err(DecodeError::Limit("records")));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            let _ = Message::decode(&bytes);
        }
        // And mutations of valid messages.
        for message in samples() {
            let frame = message.encode_frame();
            for i in 4..frame.len() {
                for flip in [1u8, 0x80, 0xff] {
                    let mut body = frame[4..].to_vec();
                    body[i - 4] ^= flip;
                    let _ = Message::decode(&body);
                }
            }
        }
    }
}
