//! Histories of client operations, and the checkers that judge them.
//!
//! Both the deterministic simulation and the real-process nemesis test record
//! every operation they issue and its outcome in a [`History`], then hand it,
//! with each node's final state, to [`check`]. The checkers know nothing of
//! how the history was made, so the same claims are tested the same way:
//!
//! - convergence: every node ends with identical documents and digests;
//! - no acknowledged write is lost: every acknowledged set-add is present,
//!   every acknowledged list append is present exactly once, and a counter is
//!   the sum of its acknowledged increments (plus some of those whose outcome
//!   is unknown);
//! - truthful staleness: a read that reports safe time `S` reflects every
//!   acknowledged write to that document with an HLC at or below `S`;
//! - `?after` reads reflect the token's write;
//! - `?at=T` reads reflect exactly the acknowledged writes at or below `T`,
//!   and agree with each other across nodes.
//!
//! The workload keeps writes checkable by giving each a unique mark: set-adds
//! write a key no other write uses, appends add a value no other append uses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use meridian_crdt::Hlc;
use serde_json::Value as Json;

/// What a write did, as far as the checkers care.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteKind {
    /// A merge patch adding the unique key `key` to a set document.
    SetAdd {
        /// The unique key.
        key: String,
    },
    /// A JSON Patch `increment` of the counter at `/n`.
    Increment {
        /// Amount, always positive (so partial sums bound reads from below).
        by: i64,
    },
    /// A JSON Patch `add` of the unique `value` at `/items/-`.
    Append {
        /// The unique value.
        value: String,
    },
    /// Any other write (PUT, delete, replace) to a register document: judged
    /// by convergence only.
    Other {
        /// For failure messages.
        what: String,
    },
}

/// How a write ended, as seen by its client.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOutcome {
    /// Acknowledged: durable at its node, with its token and HLC.
    Acked {
        /// Position token of the write.
        token: String,
        /// The write's HLC.
        hlc: Hlc,
    },
    /// Refused: definitely not applied.
    Failed(String),
    /// No answer (timeout, crash): it may or may not have been applied.
    Unknown(String),
}

/// One write.
#[derive(Clone, Debug)]
pub struct WriteRecord {
    /// Node the write was sent to.
    pub node: usize,
    /// Document id.
    pub doc: String,
    /// What it wrote.
    pub kind: WriteKind,
    /// When it was sent and answered (ms since the run started).
    pub start_ms: u64,
    /// When it was answered.
    pub end_ms: u64,
    /// The answer.
    pub outcome: WriteOutcome,
}

impl WriteRecord {
    fn acked_hlc(&self) -> Option<Hlc> {
        match &self.outcome {
            WriteOutcome::Acked { hlc, .. } => Some(*hlc),
            _ => None,
        }
    }
}

/// How a read ended.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadOutcome {
    /// Answered: the document (None when absent) and the freshness reported with it.
    Ok {
        /// The document, or None for a 404.
        json: Option<Json>,
        /// The reported safe time.
        safe_time: Hlc,
        /// The reported staleness.
        staleness_ms: u64,
    },
    /// Refused for freshness (behind the token, too stale, `at` not yet safe): fine by itself.
    Refused(String),
    /// Any other failure.
    Failed(String),
}

/// One read.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    /// Node asked.
    pub node: usize,
    /// Document id.
    pub doc: String,
    /// `?after`: index into [`History::writes`] of the acknowledged write whose token was passed.
    pub after: Option<usize>,
    /// `?at`.
    pub at: Option<Hlc>,
    /// `?max_staleness_ms`.
    pub max_staleness_ms: Option<u64>,
    /// When it was sent.
    pub start_ms: u64,
    /// When it was answered.
    pub end_ms: u64,
    /// The answer.
    pub outcome: ReadOutcome,
}

/// A node's state once the faults stopped and the cluster was given time to converge.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalState {
    /// Node index.
    pub node: usize,
    /// Every document the workload touched (None when absent).
    pub docs: BTreeMap<String, Option<Json>>,
    /// The node's state digest.
    pub digest: String,
}

/// Everything a run did.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Writes, in the order they were issued.
    pub writes: Vec<WriteRecord>,
    /// Reads.
    pub reads: Vec<ReadRecord>,
}

/// A broken claim.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// Which checker.
    pub checker: &'static str,
    /// What it saw.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.checker, self.detail)
    }
}

/// Which document namespace a write kind belongs to, so the workloads and the checkers agree.
pub fn doc_kind(doc: &str) -> &str {
    doc.split('/').next().unwrap_or("")
}

/// Runs every checker; an empty result means the history is valid.
pub fn check(history: &History, finals: &[FinalState]) -> Vec<Violation> {
    let mut out = Vec::new();
    check_convergence(finals, &mut out);
    if let Some(first) = finals.first() {
        check_final(history, first, &mut out);
    }
    check_reads(history, &mut out);
    check_at_agreement(history, &mut out);
    out
}

fn check_convergence(finals: &[FinalState], out: &mut Vec<Violation>) {
    let Some(first) = finals.first() else { return };
    for other in &finals[1..] {
        for (doc, json) in &first.docs {
            let theirs = other.docs.get(doc).cloned().flatten();
            if &theirs != json {
                out.push(Violation {
                    checker: "convergence",
                    detail: format!(
                        "document {doc:?} differs: node {} has {json:?}, node {} has {theirs:?}",
                        first.node, other.node
                    ),
                });
            }
        }
        if other.digest != first.digest {
            out.push(Violation {
                checker: "convergence",
                detail: format!(
                    "digests differ: node {} {}, node {} {}",
                    first.node, first.digest, other.node, other.digest
                ),
            });
        }
    }
}

/// A document as the checkers look at it: its JSON and, computed once, its list items.
struct View<'a> {
    json: Option<&'a Json>,
    items: BTreeSet<String>,
}

impl<'a> View<'a> {
    fn new(json: Option<&'a Json>) -> View<'a> {
        View { json, items: items(json).into_iter().collect() }
    }

    /// Whether it reflects one write (set-adds and appends only; increments are checked as sums).
    fn reflects(&self, kind: &WriteKind) -> bool {
        match kind {
            WriteKind::SetAdd { key } => self.json.and_then(|j| j.get(key)).is_some(),
            WriteKind::Append { value } => self.items.contains(value),
            WriteKind::Increment { .. } | WriteKind::Other { .. } => true,
        }
    }
}

fn items(json: Option<&Json>) -> Vec<String> {
    json.and_then(|j| j.get("items")).and_then(Json::as_array).map_or_else(Vec::new, |a| {
        a.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect()
    })
}

fn counter(json: Option<&Json>) -> i64 {
    json.and_then(|j| j.get("n")).and_then(Json::as_i64).unwrap_or(0)
}

fn check_final(history: &History, state: &FinalState, out: &mut Vec<Violation>) {
    let mut by_doc: BTreeMap<&str, Vec<&WriteRecord>> = BTreeMap::new();
    for write in &history.writes {
        by_doc.entry(write.doc.as_str()).or_default().push(write);
    }
    for (doc, writes) in by_doc {
        let json = state.docs.get(doc).cloned().flatten();
        let json = json.as_ref();
        let view = View::new(json);
        let mut attempted_values = BTreeSet::new();
        let (mut acked_sum, mut unknown_sum) = (0i64, 0i64);
        for write in &writes {
            let acked = matches!(write.outcome, WriteOutcome::Acked { .. });
            match &write.kind {
                WriteKind::Increment { by } => match write.outcome {
                    WriteOutcome::Acked { .. } => acked_sum += by,
                    WriteOutcome::Unknown(_) => unknown_sum += by,
                    WriteOutcome::Failed(_) => {}
                },
                WriteKind::Append { value } => {
                    if !matches!(write.outcome, WriteOutcome::Failed(_)) {
                        attempted_values.insert(value.clone());
                    }
                    if acked && !view.reflects(&write.kind) {
                        out.push(Violation {
                            checker: "lost-write",
                            detail: format!(
                                "acknowledged append {value:?} to {doc:?} at node {} is missing: {json:?}",
                                write.node
                            ),
                        });
                    }
                }
                WriteKind::SetAdd { key } => {
                    if acked && !view.reflects(&write.kind) {
                        out.push(Violation {
                            checker: "lost-write",
                            detail: format!(
                                "acknowledged key {key:?} of {doc:?} written at node {} is missing",
                                write.node
                            ),
                        });
                    }
                }
                WriteKind::Other { .. } => {}
            }
        }
        if writes.iter().any(|w| matches!(w.kind, WriteKind::Increment { .. })) {
            let n = counter(json);
            if n < acked_sum || n > acked_sum + unknown_sum {
                out.push(Violation {
                    checker: "counter",
                    detail: format!(
                        "counter {doc:?} is {n}; acknowledged increments sum to {acked_sum} (plus up to {unknown_sum} unknown)"
                    ),
                });
            }
        }
        if writes.iter().any(|w| matches!(w.kind, WriteKind::Append { .. })) {
            let list = items(json);
            let mut seen = BTreeSet::new();
            for value in &list {
                if !seen.insert(value) {
                    out.push(Violation {
                        checker: "list-append",
                        detail: format!("{doc:?} holds {value:?} more than once"),
                    });
                }
                if !attempted_values.contains(value) {
                    out.push(Violation {
                        checker: "list-append",
                        detail: format!("{doc:?} holds {value:?}, which no write that may have succeeded appended"),
                    });
                }
            }
        }
    }
}

fn check_reads(history: &History, out: &mut Vec<Violation>) {
    let mut by_doc: BTreeMap<&str, Vec<&WriteRecord>> = BTreeMap::new();
    for write in &history.writes {
        by_doc.entry(write.doc.as_str()).or_default().push(write);
    }
    for read in &history.reads {
        let ReadOutcome::Ok { json, safe_time, staleness_ms } = &read.outcome else { continue };
        let json = json.as_ref();
        let view = View::new(json);
        let writes = by_doc.get(read.doc.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(limit) = read.max_staleness_ms {
            if *staleness_ms > limit {
                out.push(Violation {
                    checker: "max-staleness",
                    detail: format!(
                        "read of {:?} at node {} answered with staleness {staleness_ms} ms over the limit {limit} ms",
                        read.doc, read.node
                    ),
                });
            }
        }
        if let Some(index) = read.after {
            let write = &history.writes[index];
            if !view.reflects(&write.kind) {
                out.push(Violation {
                    checker: "read-after",
                    detail: format!(
                        "read of {:?} at node {} after the token of {:?} (written at node {}) does not reflect it: {json:?}",
                        read.doc, read.node, write.kind, write.node
                    ),
                });
            }
        }
        // What the read claims to hold: everything at or below its safe time,
        // or below `at` for a snapshot read.
        let horizon = match read.at {
            Some(at) => at,
            None => *safe_time,
        };
        let mut required_sum = 0;
        for write in writes.iter().filter(|w| w.acked_hlc().is_some_and(|h| h <= horizon)) {
            if let WriteKind::Increment { by } = write.kind {
                required_sum += by;
            } else if !view.reflects(&write.kind) {
                out.push(Violation {
                    checker: if read.at.is_some() { "read-at" } else { "staleness" },
                    detail: format!(
                        "read of {:?} at node {} (at {:?}, safe time {safe_time}, staleness {staleness_ms} ms, sent at {} ms) misses {:?} written at node {} with HLC {} <= {horizon}",
                        read.doc,
                        read.node,
                        read.at.map(|t| t.to_string()),
                        read.start_ms,
                        write.kind,
                        write.node,
                        write.acked_hlc().unwrap_or_default()
                    ),
                });
            }
        }
        if counter(json) < required_sum {
            out.push(Violation {
                checker: if read.at.is_some() { "read-at" } else { "staleness" },
                detail: format!(
                    "read of counter {:?} at node {} (at {:?}, safe time {safe_time}) shows {} but increments at or below {horizon} sum to {required_sum}",
                    read.doc,
                    read.node,
                    read.at.map(|t| t.to_string()),
                    counter(json)
                ),
            });
        }
        // A snapshot read must not show acknowledged writes from after `at`.
        if let Some(at) = read.at {
            for write in writes.iter().filter(|w| w.acked_hlc().is_some_and(|h| h > at)) {
                let shows = match &write.kind {
                    WriteKind::SetAdd { .. } | WriteKind::Append { .. } => view.reflects(&write.kind),
                    _ => false,
                };
                if shows {
                    out.push(Violation {
                        checker: "read-at",
                        detail: format!(
                            "read of {:?} at node {} at {at} shows {:?}, written later at HLC {}",
                            read.doc,
                            read.node,
                            write.kind,
                            write.acked_hlc().unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }
}

fn check_at_agreement(history: &History, out: &mut Vec<Violation>) {
    let mut seen: BTreeMap<(&str, Hlc), (usize, Option<&Json>)> = BTreeMap::new();
    for read in &history.reads {
        let (Some(at), ReadOutcome::Ok { json, .. }) = (read.at, &read.outcome) else { continue };
        match seen.get(&(read.doc.as_str(), at)) {
            None => {
                seen.insert((read.doc.as_str(), at), (read.node, json.as_ref()));
            }
            Some((node, first)) if *first != json.as_ref() => out.push(Violation {
                checker: "read-at",
                detail: format!(
                    "reads of {:?} at {at} disagree: node {node} saw {first:?}, node {} saw {json:?}",
                    read.doc, read.node
                ),
            }),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn acked(node: usize, doc: &str, kind: WriteKind, hlc: u64) -> WriteRecord {
        WriteRecord {
            node,
            doc: doc.into(),
            kind,
            start_ms: 0,
            end_ms: 1,
            outcome: WriteOutcome::Acked { token: String::new(), hlc: Hlc::new(hlc, 0) },
        }
    }

    fn state(node: usize, docs: &[(&str, Json)]) -> FinalState {
        FinalState {
            node,
            docs: docs.iter().map(|(d, j)| (d.to_string(), Some(j.clone()))).collect(),
            digest: "d".into(),
        }
    }

    #[test]
    fn each_checker_catches_its_violation() {
        let mut history = History::default();
        history.writes.push(acked(0, "set/a", WriteKind::SetAdd { key: "k1".into() }, 10));
        history.writes.push(acked(1, "ctr/a", WriteKind::Increment { by: 2 }, 20));
        history.writes.push(acked(1, "list/a", WriteKind::Append { value: "v1".into() }, 30));
        let good = [
            state(0, &[("set/a", json!({"k1": 1})), ("ctr/a", json!({"n": 2})), ("list/a", json!({"items": ["v1"]}))]),
            state(1, &[("set/a", json!({"k1": 1})), ("ctr/a", json!({"n": 2})), ("list/a", json!({"items": ["v1"]}))]),
        ];
        assert_eq!(check(&history, &good), vec![]);

        let lost =
            [state(0, &[("set/a", json!({})), ("ctr/a", json!({"n": 1})), ("list/a", json!({"items": ["v1", "v1"]}))])];
        let found: BTreeSet<&str> = check(&history, &lost).iter().map(|v| v.checker).collect();
        assert_eq!(found, BTreeSet::from(["lost-write", "counter", "list-append"]));

        let mut diverged = good.clone();
        diverged[1].docs.insert("set/a".into(), Some(json!({})));
        assert!(check(&history, &diverged).iter().any(|v| v.checker == "convergence"));

        let read = |at: Option<u64>, safe: u64, json: Json| ReadRecord {
            node: 2,
            doc: "set/a".into(),
            after: None,
            at: at.map(|t| Hlc::new(t, 0)),
            max_staleness_ms: None,
            start_ms: 0,
            end_ms: 0,
            outcome: ReadOutcome::Ok { json: Some(json), safe_time: Hlc::new(safe, 0), staleness_ms: 0 },
        };
        let mut stale = history.clone();
        stale.reads.push(read(None, 9, json!({})));
        assert_eq!(check(&stale, &good), vec![], "safe time below the write: not claimed");
        stale.reads.push(read(None, 10, json!({})));
        assert!(check(&stale, &good).iter().any(|v| v.checker == "staleness"));

        let mut at = history.clone();
        at.reads.push(read(Some(5), 50, json!({"k1": 1})));
        assert!(check(&at, &good).iter().any(|v| v.checker == "read-at"), "shows a later write");
        let mut disagree = history.clone();
        disagree.reads.push(read(Some(15), 50, json!({"k1": 1})));
        let mut other = read(Some(15), 50, json!({"k1": 1, "x": 2}));
        other.node = 1;
        disagree.reads.push(other);
        assert!(check(&disagree, &good).iter().any(|v| v.checker == "read-at"));

        let mut after = history.clone();
        let mut r = read(None, 0, json!({}));
        r.after = Some(0);
        after.reads.push(r);
        assert!(check(&after, &good).iter().any(|v| v.checker == "read-after"));
    }
}
