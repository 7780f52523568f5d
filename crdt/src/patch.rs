//! Parsing of RFC 6902 JSON Patch documents and RFC 6901 JSON Pointers.
//!
//! This module only validates the shape of a patch; applying it to a
//! document is `document.rs`'s job, inside one automerge transaction so
//! that a failing operation applies nothing.
//!
//! Meridian adds one operation: `{"op":"increment","path":"/views","value":5}`
//! makes `/views` a CRDT counter (created at 0 when absent) so that
//! concurrent increments at different regions add up.

use std::fmt;

use serde_json::Value as Json;

/// Patches with more operations than this are refused (422).
pub const PATCH_OPS_MAX: usize = 1000;

/// An RFC 6901 JSON Pointer, already unescaped into reference tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointer {
    /// Reference tokens; empty for the whole document.
    pub tokens: Vec<String>,
}

impl Pointer {
    /// Parses pointer text such as `/a~1b/0`.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { tokens: Vec::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("JSON pointer {text:?} must be empty or start with '/'"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => return Err(format!("JSON pointer {text:?} has '~' not followed by 0 or 1")),
                    }
                } else {
                    token.push(c);
                }
            }
            tokens.push(token);
        }
        if tokens.len() > crate::DEPTH_MAX {
            return Err(format!("JSON pointer {text:?} is deeper than {}", crate::DEPTH_MAX));
        }
        Ok(Pointer { tokens })
    }

    /// Whether `self` is a proper prefix of `other` (moving a value into its own child).
    pub fn is_proper_prefix_of(&self, other: &Pointer) -> bool {
        self.tokens.len() < other.tokens.len() && other.tokens.starts_with(&self.tokens)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for token in &self.tokens {
            write!(f, "/{}", token.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// One JSON Patch operation.
#[derive(Clone, Debug, PartialEq)]
pub enum PatchOp {
    /// Insert into an array, or set an object member.
    Add { path: Pointer, value: Json },
    /// Remove a value that must exist.
    Remove { path: Pointer },
    /// Replace a value that must exist.
    Replace { path: Pointer, value: Json },
    /// Remove from `from` and add at `path`.
    Move { from: Pointer, path: Pointer },
    /// Copy from `from` to `path`.
    Copy { from: Pointer, path: Pointer },
    /// Require the value at `path` to equal `value`.
    Test { path: Pointer, value: Json },
    /// Meridian extension: add `value` to the counter at `path`.
    Increment { path: Pointer, value: i64 },
}

/// A patch document that is not a valid JSON Patch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}{reason}", index.map(|i| format!("operation {i}: ")).unwrap_or_default())]
pub struct PatchParseError {
    /// Index of the offending operation, if one is to blame.
    pub index: Option<usize>,
    /// What is wrong and what to fix.
    pub reason: String,
}

/// Parses a JSON Patch document (a JSON array of operation objects).
pub fn parse_patch(body: &Json) -> Result<Vec<PatchOp>, PatchParseError> {
    let whole = |reason: String| PatchParseError { index: None, reason };
    let Json::Array(items) = body else {
        return Err(whole("a JSON Patch body must be a JSON array of operations".into()));
    };
    if items.len() > PATCH_OPS_MAX {
        return Err(whole(format!(
            "a JSON Patch may hold at most {PATCH_OPS_MAX} operations, this one has {}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_op(item).map_err(|reason| PatchParseError { index: Some(index), reason }))
        .collect()
}

fn parse_op(item: &Json) -> Result<PatchOp, String> {
    let Json::Object(fields) = item else {
        return Err("each operation must be a JSON object".into());
    };
    let op = fields.get("op").and_then(Json::as_str).ok_or("missing \"op\" (a string)")?;
    let pointer = |name: &str| -> Result<Pointer, String> {
        let text = fields
            .get(name)
            .and_then(Json::as_str)
            .ok_or_else(|| format!("\"{op}\" needs \"{name}\" (a JSON pointer string)"))?;
        Pointer::parse(text)
    };
    let value = || fields.get("value").cloned().ok_or_else(|| format!("\"{op}\" needs \"value\""));
    Ok(match op {
        "add" => PatchOp::Add { path: pointer("path")?, value: value()? },
        "remove" => PatchOp::Remove { path: pointer("path")? },
        "replace" => PatchOp::Replace { path: pointer("path")?, value: value()? },
        "move" => PatchOp::Move { from: pointer("from")?, path: pointer("path")? },
        "copy" => PatchOp::Copy { from: pointer("from")?, path: pointer("path")? },
        "test" => PatchOp::Test { path: pointer("path")?, value: value()? },
        "increment" => {
            let amount = value()?;
            let value = amount.as_i64().ok_or("\"increment\" needs an integer \"value\"")?;
            PatchOp::Increment { path: pointer("path")?, value }
        }
        other => return Err(format!("unknown op {other:?}; use add, remove, replace, move, copy, test or increment")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_unescape_per_rfc6901() {
        assert_eq!(Pointer::parse("/a~1b/m~0n").unwrap().tokens, vec!["a/b", "m~n"]);
        assert_eq!(Pointer::parse("").unwrap().tokens, Vec::<String>::new());
        assert_eq!(Pointer::parse("/").unwrap().tokens, vec![""]);
        assert!(Pointer::parse("a").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        let p = Pointer::parse("/a~1b/m~0n").unwrap();
        assert_eq!(p.to_string(), "/a~1b/m~0n");
    }

    #[test]
    fn bad_operations_name_their_index() {
        let err =
            parse_patch(&json!([{"op":"add","path":"/a","value":1},{"op":"frobnicate","path":"/a"}])).unwrap_err();
        assert_eq!(err.index, Some(1));
        assert!(err.reason.contains("unknown op"));
        let err = parse_patch(&json!([{"op":"add","path":"/a"}])).unwrap_err();
        assert!(err.reason.contains("value"));
        assert!(parse_patch(&json!({"op":"add"})).is_err());
        let err = parse_patch(&json!([{"op":"increment","path":"/a","value":1.5}])).unwrap_err();
        assert!(err.reason.contains("integer"));
    }
}
