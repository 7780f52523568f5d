//! The worked examples of RFC 6902 (JSON Patch, Appendix A) and RFC 7396
//! (JSON Merge Patch, section 3 and Appendix A), run through a [`Replica`]
//! exactly as client writes would be.
//!
//! This file proves that:
//! - every RFC 6902 Appendix A example (A.1 to A.16) gives the RFC's result
//!   or the RFC's error, with the failing operation's index and the right
//!   409/422 class (`conflict`);
//! - every RFC 7396 example gives the RFC's result, and agrees with the
//!   pure-JSON reference `meridian_crdt::json::merge_patch_json`;
//! - Meridian's `increment` extension and the array-index edge cases of
//!   RFC 6901/6902 behave as documented;
//! - every refused write is all-or-nothing: the document's JSON, its ETag and
//!   the replica's sequence number are exactly as before.
//!
//! Meridian documents are always JSON objects, so RFC examples whose target or
//! result is not an object are wrapped under a key `"k"` (RFC 7396 recurses
//! into members, so the wrapped row has exactly the RFC's semantics), and a
//! non-object merge patch applied to the document itself must be refused.

use meridian_crdt::json::merge_patch_json;
use meridian_crdt::patch::parse_patch;
use meridian_crdt::{DocId, DocumentError, Hlc, NodeId, Replica, WriteError, WriteOp};
use serde_json::{json, Value as Json};

/// One document on its own fresh replica, written with increasing HLCs.
struct Doc {
    replica: Replica,
    id: DocId,
    clock: u64,
}

impl Doc {
    /// A replica holding one document created by a PUT of `initial`.
    fn new(initial: Json) -> Doc {
        let Json::Object(object) = initial else {
            panic!("a document must be a JSON object, got {initial}");
        };
        let mut doc = Doc { replica: Replica::new(NodeId(1)), id: DocId::new("doc").unwrap(), clock: 0 };
        doc.write(WriteOp::Put(object)).expect("initial PUT");
        doc
    }

    fn write(&mut self, op: WriteOp) -> Result<(), WriteError> {
        self.clock += 1;
        self.replica.local_write(&self.id, &op, Hlc::new(self.clock, 0), None).map(drop)
    }

    /// The document's current JSON.
    fn json(&self) -> Json {
        self.replica.document(&self.id).and_then(|s| s.doc.to_json()).expect("the document exists")
    }

    /// Everything a refused write must leave untouched.
    fn snapshot(&self) -> (Json, String, u64) {
        let etag = self.replica.document(&self.id).unwrap().doc.etag();
        (self.json(), etag, self.replica.last_seq())
    }

    /// Applies a JSON Patch that must succeed; returns the resulting document.
    fn patch(&mut self, ops: Json) -> Json {
        let parsed = parse_patch(&ops).unwrap_or_else(|e| panic!("{ops} does not parse: {e}"));
        if let Err(err) = self.write(WriteOp::JsonPatch(parsed)) {
            panic!("{ops} failed: {err}");
        }
        self.json()
    }

    /// Applies a merge patch that must succeed; returns the resulting document.
    fn merge(&mut self, patch: Json) -> Json {
        if let Err(err) = self.write(WriteOp::MergePatch(patch.clone())) {
            panic!("merge patch {patch} failed: {err}");
        }
        self.json()
    }

    /// Applies a write that must be refused, checks that it changed nothing,
    /// and returns the document error.
    fn refuse(&mut self, op: WriteOp) -> DocumentError {
        let before = self.snapshot();
        let err = self.write(op.clone()).expect_err(&format!("{op:?} should have been refused"));
        assert_eq!(self.snapshot(), before, "refused write {op:?} ({err}) changed the document");
        match err {
            WriteError::Document(err) => err,
            other => panic!("expected a document error for {op:?}, got {other:?}"),
        }
    }

    /// Applies a JSON Patch that must fail; returns `(index, conflict)` of
    /// the failure after checking that nothing was applied.
    fn patch_fails(&mut self, ops: Json) -> (usize, bool) {
        let parsed = parse_patch(&ops).unwrap_or_else(|e| panic!("{ops} does not parse: {e}"));
        match self.refuse(WriteOp::JsonPatch(parsed)) {
            DocumentError::PatchFailed { index, conflict, .. } => (index, conflict),
            other => panic!("{ops}: expected PatchFailed, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// RFC 6902 Appendix A
// ---------------------------------------------------------------------------

#[test]
fn rfc6902_appendix_a_successful_examples() {
    // (section, target, patch, result), verbatim from the RFC.
    let cases = [
        (
            "A.1 adding an object member",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz", "value": "qux"}]),
            json!({"baz": "qux", "foo": "bar"}),
        ),
        (
            "A.2 adding an array element",
            json!({"foo": ["bar", "baz"]}),
            json!([{"op": "add", "path": "/foo/1", "value": "qux"}]),
            json!({"foo": ["bar", "qux", "baz"]}),
        ),
        (
            "A.3 removing an object member",
            json!({"baz": "qux", "foo": "bar"}),
            json!([{"op": "remove", "path": "/baz"}]),
            json!({"foo": "bar"}),
        ),
        (
            "A.4 removing an array element",
            json!({"foo": ["bar", "qux", "baz"]}),
            json!([{"op": "remove", "path": "/foo/1"}]),
            json!({"foo": ["bar", "baz"]}),
        ),
        (
            "A.5 replacing a value",
            json!({"baz": "qux", "foo": "bar"}),
            json!([{"op": "replace", "path": "/baz", "value": "boo"}]),
            json!({"baz": "boo", "foo": "bar"}),
        ),
        (
            "A.6 moving a value",
            json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
            json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]),
            json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
        ),
        (
            "A.7 moving an array element",
            json!({"foo": ["all", "grass", "cows", "eat"]}),
            json!([{"op": "move", "from": "/foo/1", "path": "/foo/3"}]),
            json!({"foo": ["all", "cows", "eat", "grass"]}),
        ),
        (
            "A.8 testing a value: success",
            json!({"baz": "qux", "foo": ["a", 2, "c"]}),
            json!([
                {"op": "test", "path": "/baz", "value": "qux"},
                {"op": "test", "path": "/foo/1", "value": 2}
            ]),
            json!({"baz": "qux", "foo": ["a", 2, "c"]}),
        ),
        (
            "A.10 adding a nested member object",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/child", "value": {"grandchild": {}}}]),
            json!({"foo": "bar", "child": {"grandchild": {}}}),
        ),
        (
            "A.11 ignoring unrecognized elements",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}]),
            json!({"foo": "bar", "baz": "qux"}),
        ),
        (
            "A.14 ~ escape ordering",
            json!({"/": 9, "~1": 10}),
            json!([{"op": "test", "path": "/~01", "value": 10}]),
            json!({"/": 9, "~1": 10}),
        ),
        (
            "A.16 adding an array value",
            json!({"foo": ["bar"]}),
            json!([{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}]),
            json!({"foo": ["bar", ["abc", "def"]]}),
        ),
    ];
    for (section, target, patch, result) in cases {
        let mut doc = Doc::new(target);
        assert_eq!(doc.patch(patch), result, "RFC 6902 {section}");
    }
}

#[test]
fn rfc6902_appendix_a_failing_examples() {
    // (section, target, patch, failing op index, conflict), from the RFC.
    // All three are state-dependent failures, so 409 (conflict = true).
    let cases = [
        (
            "A.9 testing a value: error",
            json!({"baz": "qux"}),
            json!([{"op": "test", "path": "/baz", "value": "bar"}]),
            0,
            true,
        ),
        (
            "A.12 adding to a nonexistent target",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz/bat", "value": "qux"}]),
            0,
            true,
        ),
        (
            "A.15 comparing strings and numbers",
            json!({"/": 9, "~1": 10}),
            json!([{"op": "test", "path": "/~01", "value": "10"}]),
            0,
            true,
        ),
    ];
    for (section, target, patch, index, conflict) in cases {
        let mut doc = Doc::new(target);
        assert_eq!(doc.patch_fails(patch), (index, conflict), "RFC 6902 {section}: (index, conflict)");
    }
}

/// A.14/A.15 rely on `~01` unescaping to `~1` (not `/`): the `~1` member is
/// the one compared, and the `/` member is reachable as `~1`.
#[test]
fn rfc6902_escape_ordering_selects_the_right_member() {
    let mut doc = Doc::new(json!({"/": 9, "~1": 10}));
    assert_eq!(doc.patch_fails(json!([{"op": "test", "path": "/~01", "value": 9}])), (0, true));
    assert_eq!(
        doc.patch(json!([
            {"op": "test", "path": "/~1", "value": 9},
            {"op": "replace", "path": "/~01", "value": 11}
        ])),
        json!({"/": 9, "~1": 11})
    );
}

/// A.13: `[{"op":"add","path":"/baz","value":"qux","op":"remove"}]` must not
/// be treated as an `add`. serde_json keeps the last of duplicate keys, so
/// the body reads as a `remove`; every other body the parser cannot
/// understand is refused by `parse_patch` before it reaches a document.
#[test]
fn rfc6902_a13_invalid_patch_documents() {
    let duplicate: Json =
        serde_json::from_str(r#"[{ "op": "add", "path": "/baz", "value": "qux", "op": "remove" }]"#).unwrap();
    let ops = parse_patch(&duplicate).unwrap();
    assert!(
        matches!(ops.as_slice(), [meridian_crdt::PatchOp::Remove { .. }]),
        "duplicate \"op\" must not be read as add: {ops:?}"
    );
    // As a remove of a member that is not there, it applies nothing.
    let mut doc = Doc::new(json!({"foo": "bar"}));
    assert_eq!(doc.patch_fails(duplicate), (0, true));

    // (body, index of the blamed operation)
    let invalid = [
        (json!({"op": "add", "path": "/baz", "value": "qux"}), None),
        (json!([{"path": "/baz", "value": "qux"}]), Some(0)),
        (json!([{"op": "add", "value": "qux"}]), Some(0)),
        (json!([{"op": "add", "path": "/baz"}]), Some(0)),
        (json!([{"op": "move", "path": "/baz"}]), Some(0)),
        (json!([{"op": "add", "path": "baz", "value": 1}]), Some(0)),
        (json!([{"op": "add", "path": "/a~2", "value": 1}]), Some(0)),
        (json!([{"op": 1, "path": "/baz", "value": 1}]), Some(0)),
        (json!([{"op": "add", "path": 7, "value": 1}]), Some(0)),
        (json!([{"op": "test", "path": "/a", "value": 1}, "remove /a"]), Some(1)),
        (
            json!([
                {"op": "test", "path": "/a", "value": 1},
                {"op": "frobnicate", "path": "/a"}
            ]),
            Some(1),
        ),
    ];
    for (body, index) in invalid {
        let err = parse_patch(&body).expect_err(&format!("{body} should not parse"));
        assert_eq!(err.index, index, "{body}: {err}");
        assert!(!err.reason.is_empty());
    }
}

#[test]
fn failing_op_in_a_multi_op_patch_applies_nothing() {
    let mut doc = Doc::new(json!({"a": 1, "list": [1, 2]}));
    let (index, conflict) = doc.patch_fails(json!([
        {"op": "add", "path": "/b", "value": 2},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "test", "path": "/a", "value": 2},
        {"op": "remove", "path": "/a"}
    ]));
    assert_eq!((index, conflict), (2, true));
    // `refuse` already checked nothing changed; spell the state out anyway.
    assert_eq!(doc.json(), json!({"a": 1, "list": [1, 2]}));

    // The error names the failing operation and its path.
    let ops = parse_patch(&json!([
        {"op": "remove", "path": "/a"},
        {"op": "add", "path": "/c", "value": 3},
        {"op": "replace", "path": "/missing", "value": 0}
    ]))
    .unwrap();
    match doc.refuse(WriteOp::JsonPatch(ops)) {
        DocumentError::PatchFailed { index, op, path, conflict, .. } => {
            assert_eq!((index, op, path.as_str(), conflict), (2, "replace", "/missing", true))
        }
        other => panic!("expected PatchFailed, got {other:?}"),
    }

    // The same document still accepts a good patch afterwards.
    assert_eq!(doc.patch(json!([{"op": "add", "path": "/b", "value": 2}])), json!({"a": 1, "b": 2, "list": [1, 2]}));
}

// ---------------------------------------------------------------------------
// RFC 7396
// ---------------------------------------------------------------------------

/// Applies `patch` to a document holding `original`, checks the result
/// against `expected` and against the pure-JSON reference implementation.
fn check_merge(label: &str, original: Json, patch: Json, expected: Json) {
    let mut reference = original.clone();
    merge_patch_json(&mut reference, &patch);
    assert_eq!(reference, expected, "{label}: reference merge_patch_json");
    let mut doc = Doc::new(original);
    assert_eq!(doc.merge(patch), expected, "{label}: replica");
}

#[test]
fn rfc7396_section3_example() {
    check_merge(
        "section 3",
        json!({
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged"
        }),
        json!({
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null},
            "tags": ["example"]
        }),
        json!({
            "title": "Hello!",
            "author": {"givenName": "John"},
            "tags": ["example"],
            "content": "This will be unchanged",
            "phoneNumber": "+01-123-456-7890"
        }),
    );
}

/// Every row of RFC 7396 Appendix A, verbatim. Rows with an object original
/// and an object patch run as they are. The others are wrapped: original
/// `{"k": original}`, patch `{"k": patch}`, result `{"k": result}`, except
/// that a `null` result (the `null` patch row) is the member's removal, `{}`.
#[test]
fn rfc7396_appendix_a_table() {
    let rows = [
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
        (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
        (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
        (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
        (json!({"a": "b"}), json!(["c"]), json!(["c"])),
        (json!({"a": "foo"}), json!(null), json!(null)),
        (json!({"a": "foo"}), json!("bar"), json!("bar")),
        (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
        (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
        (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
    ];
    for (row, (original, patch, result)) in rows.into_iter().enumerate() {
        let label = format!("RFC 7396 Appendix A row {}: {original} + {patch}", row + 1);
        if original.is_object() && patch.is_object() {
            check_merge(&label, original, patch, result);
        } else {
            let wrapped_result = if result.is_null() { json!({}) } else { json!({ "k": result }) };
            check_merge(
                &format!("{label} (wrapped under \"k\")"),
                json!({ "k": original }),
                json!({ "k": patch }),
                wrapped_result,
            );
        }
    }
}

/// The unwrapped form of the non-object rows: a merge patch that is not an
/// object would replace the document with a non-object, which is refused
/// and changes nothing.
#[test]
fn rfc7396_non_object_patches_are_refused_on_a_document() {
    for patch in [json!(["c"]), json!(null), json!("bar"), json!(7)] {
        let mut doc = Doc::new(json!({"a": "foo"}));
        let err = doc.refuse(WriteOp::MergePatch(patch.clone()));
        assert!(matches!(err, DocumentError::NotAnObject(_)), "merge patch {patch}: expected NotAnObject, got {err:?}");
    }
}

/// Replacing the whole document with a non-object through JSON Patch is
/// refused too. Note: this is reported as a 422 `PatchFailed`
/// (`conflict == false`), not as `NotAnObject`; both map to HTTP 422.
#[test]
fn json_patch_cannot_make_the_root_a_non_object() {
    let mut doc = Doc::new(json!({"a": 1}));
    for value in [json!([1]), json!(null), json!("x")] {
        for op in ["add", "replace"] {
            assert_eq!(
                doc.patch_fails(json!([{"op": op, "path": "", "value": value}])),
                (0, false),
                "{op} \"\" {value}"
            );
        }
    }
    assert_eq!(doc.patch_fails(json!([{"op": "remove", "path": ""}])), (0, false));
    // Replacing the root with another object is fine.
    assert_eq!(doc.patch(json!([{"op": "replace", "path": "", "value": {"b": 2}}])), json!({"b": 2}));
}

// ---------------------------------------------------------------------------
// The `increment` extension
// ---------------------------------------------------------------------------

#[test]
fn increment_creates_and_adds_to_a_counter() {
    let mut doc = Doc::new(json!({"title": "post"}));
    let after = doc.patch(json!([{"op": "increment", "path": "/views", "value": 5}]));
    assert_eq!(after, json!({"title": "post", "views": 5}));
    assert!(after["views"].is_i64(), "a counter reads as a plain number");
    assert_eq!(
        doc.patch(json!([{"op": "increment", "path": "/views", "value": 3}])),
        json!({"title": "post", "views": 8})
    );
    // The counter compares as the number it reads as.
    doc.patch(json!([{"op": "test", "path": "/views", "value": 8}]));
}

#[test]
fn increment_failures_apply_nothing() {
    let mut doc = Doc::new(json!({"title": "post", "views": 1}));
    assert_eq!(
        doc.patch_fails(json!([{"op": "increment", "path": "/title", "value": 1}])),
        (0, true),
        "increment on a string"
    );
    assert_eq!(
        doc.patch_fails(json!([{"op": "increment", "path": "/missing/views", "value": 1}])),
        (0, true),
        "increment inside a missing parent"
    );
    // A counter that would be created by a patch that then fails is not created.
    assert_eq!(
        doc.patch_fails(json!([
            {"op": "increment", "path": "/likes", "value": 1},
            {"op": "increment", "path": "/views", "value": 1},
            {"op": "test", "path": "/title", "value": "other"}
        ])),
        (2, true)
    );
    assert_eq!(doc.json(), json!({"title": "post", "views": 1}));
}

// ---------------------------------------------------------------------------
// Array indices (RFC 6901 section 4, RFC 6902 section 4.1)
// ---------------------------------------------------------------------------

#[test]
fn array_index_edge_cases() {
    let mut doc = Doc::new(json!({"items": ["a", "b"]}));

    // Leading zeros are not array indices: the patch can never apply (422).
    for ops in [
        json!([{"op": "add", "path": "/items/01", "value": "x"}]),
        json!([{"op": "replace", "path": "/items/01", "value": "x"}]),
        json!([{"op": "remove", "path": "/items/01"}]),
        json!([{"op": "add", "path": "/items/x", "value": "x"}]),
    ] {
        assert_eq!(doc.patch_fails(ops.clone()), (0, false), "{ops}");
    }

    // `-` appends.
    assert_eq!(doc.patch(json!([{"op": "add", "path": "/items/-", "value": "c"}])), json!({"items": ["a", "b", "c"]}));
    // Index == length appends.
    assert_eq!(
        doc.patch(json!([{"op": "add", "path": "/items/3", "value": "d"}])),
        json!({"items": ["a", "b", "c", "d"]})
    );
    // Index == 0 with "0" (a lone zero is a valid index).
    assert_eq!(
        doc.patch(json!([{"op": "add", "path": "/items/0", "value": "z"}])),
        json!({"items": ["z", "a", "b", "c", "d"]})
    );
    // Index > length is out of range: a conflict with the current state (409).
    assert_eq!(doc.patch_fails(json!([{"op": "add", "path": "/items/6", "value": "x"}])), (0, true));
    // Replace and remove need an existing element: index == length fails.
    assert_eq!(doc.patch_fails(json!([{"op": "replace", "path": "/items/5", "value": "x"}])), (0, true));
    assert_eq!(doc.patch_fails(json!([{"op": "remove", "path": "/items/5"}])), (0, true));
    assert_eq!(doc.json(), json!({"items": ["z", "a", "b", "c", "d"]}));
}
