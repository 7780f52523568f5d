//! The mapping between JSON values and automerge objects.
//!
//! Reading: maps become JSON objects, lists arrays, counters plain numbers;
//! a key with concurrent values reads as automerge's deterministic winner,
//! the same on every replica.
//!
//! Writing follows one rule: make the smallest edit that turns the current
//! state into the wanted one (only changed keys; lists edited element-wise
//! after trimming their common prefix and suffix). Concurrent writes at other
//! regions to other fields or other list elements then survive the merge.
//! A number written over a counter is applied as an increment by the
//! difference, so concurrent increments are not lost to a read-modify-write.

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ChangeHash, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value as AmValue};
use serde_json::{Map, Number, Value as Json};

/// Reads the object `obj` of type `typ` as JSON, optionally as of `heads`.
pub fn read_object<R: ReadDoc>(doc: &R, obj: &ObjId, typ: ObjType, heads: Option<&[ChangeHash]>) -> Json {
    match typ {
        ObjType::Map | ObjType::Table => {
            let keys: Vec<String> = match heads {
                Some(h) => doc.keys_at(obj, h).collect(),
                None => doc.keys(obj).collect(),
            };
            let mut out = Map::new();
            for key in keys {
                let got = match heads {
                    Some(h) => doc.get_at(obj, key.as_str(), h),
                    None => doc.get(obj, key.as_str()),
                };
                if let Ok(Some((value, id))) = got {
                    out.insert(key, read_value(doc, value, &id, heads));
                }
            }
            Json::Object(out)
        }
        ObjType::List => {
            let len = match heads {
                Some(h) => doc.length_at(obj, h),
                None => doc.length(obj),
            };
            let mut out = Vec::with_capacity(len);
            for index in 0..len {
                let got = match heads {
                    Some(h) => doc.get_at(obj, index, h),
                    None => doc.get(obj, index),
                };
                if let Ok(Some((value, id))) = got {
                    out.push(read_value(doc, value, &id, heads));
                }
            }
            Json::Array(out)
        }
        ObjType::Text => {
            let text = match heads {
                Some(h) => doc.text_at(obj, h),
                None => doc.text(obj),
            };
            Json::String(text.unwrap_or_default())
        }
    }
}

/// Reads one value (scalar or object) as JSON.
pub fn read_value<R: ReadDoc>(doc: &R, value: AmValue<'_>, id: &ObjId, heads: Option<&[ChangeHash]>) -> Json {
    match value {
        AmValue::Object(typ) => read_object(doc, id, typ, heads),
        AmValue::Scalar(scalar) => scalar_to_json(&scalar),
    }
}

/// Converts an automerge scalar to JSON. Counters read as plain numbers.
pub fn scalar_to_json(scalar: &ScalarValue) -> Json {
    match scalar {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(n) => Json::from(*n),
        ScalarValue::Uint(n) => Json::from(*n),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Json::from(*t),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(bytes) => Json::Array(bytes.iter().map(|b| Json::from(*b)).collect()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Json::Null,
    }
}

/// The automerge scalar for a JSON scalar; `None` for arrays and objects.
fn json_to_scalar(value: &Json) -> Option<ScalarValue> {
    Some(match value {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                ScalarValue::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::Array(_) | Json::Object(_) => return None,
    })
}

/// JSON equality with RFC 6902 number semantics (1 equals 1.0).
pub fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Json::Array(x), Json::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Nesting depth of a JSON value (a scalar has depth 0, `{}` depth 1).
pub fn depth(value: &Json) -> usize {
    match value {
        Json::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Json::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Where a value lives inside its parent container.
#[derive(Clone, Debug)]
pub enum Slot {
    /// A map member.
    Key(String),
    /// An existing list element.
    Index(usize),
}

impl Slot {
    fn prop(&self) -> Prop {
        match self {
            Slot::Key(k) => Prop::Map(k.clone()),
            Slot::Index(i) => Prop::Seq(*i),
        }
    }
}

/// Writes `value` into a fresh slot: sets a map key, or overwrites a list element.
pub fn put_new<T: Transactable>(tx: &mut T, obj: &ObjId, slot: &Slot, value: &Json) -> Result<(), AutomergeError> {
    match value {
        Json::Object(map) => {
            let child = tx.put_object(obj, slot.prop(), ObjType::Map)?;
            fill_map(tx, &child, map)
        }
        Json::Array(items) => {
            let child = tx.put_object(obj, slot.prop(), ObjType::List)?;
            fill_list(tx, &child, items)
        }
        scalar => tx.put(obj, slot.prop(), json_to_scalar(scalar).expect("scalar")),
    }
}

/// Inserts `value` into a list at `index`, shifting later elements.
pub fn insert_new<T: Transactable>(tx: &mut T, list: &ObjId, index: usize, value: &Json) -> Result<(), AutomergeError> {
    match value {
        Json::Object(map) => {
            let child = tx.insert_object(list, index, ObjType::Map)?;
            fill_map(tx, &child, map)
        }
        Json::Array(items) => {
            let child = tx.insert_object(list, index, ObjType::List)?;
            fill_list(tx, &child, items)
        }
        scalar => tx.insert(list, index, json_to_scalar(scalar).expect("scalar")),
    }
}

fn fill_map<T: Transactable>(tx: &mut T, obj: &ObjId, map: &Map<String, Json>) -> Result<(), AutomergeError> {
    for (key, value) in map {
        put_new(tx, obj, &Slot::Key(key.clone()), value)?;
    }
    Ok(())
}

fn fill_list<T: Transactable>(tx: &mut T, obj: &ObjId, items: &[Json]) -> Result<(), AutomergeError> {
    for (index, value) in items.iter().enumerate() {
        insert_new(tx, obj, index, value)?;
    }
    Ok(())
}

/// Makes the map `obj` equal `wanted` with the smallest edit.
pub fn update_map<T: Transactable>(tx: &mut T, obj: &ObjId, wanted: &Map<String, Json>) -> Result<(), AutomergeError> {
    let existing: Vec<String> = tx.keys(obj).collect();
    for key in existing {
        if !wanted.contains_key(&key) {
            tx.delete(obj, key.as_str())?;
        }
    }
    for (key, value) in wanted {
        update_slot(tx, obj, &Slot::Key(key.clone()), value)?;
    }
    Ok(())
}

/// Makes the value at `slot` of `obj` equal `wanted` with the smallest edit:
/// recursing into containers of the same kind, incrementing counters, and
/// leaving equal values untouched.
pub fn update_slot<T: Transactable>(tx: &mut T, obj: &ObjId, slot: &Slot, wanted: &Json) -> Result<(), AutomergeError> {
    let current = tx.get(obj, slot.prop())?.map(|(v, id)| (v.into_owned(), id));
    match (current, wanted) {
        (None, _) => put_new(tx, obj, slot, wanted),
        (Some((AmValue::Object(ObjType::Map), child)), Json::Object(map)) => update_map(tx, &child, map),
        (Some((AmValue::Object(ObjType::List), child)), Json::Array(items)) => update_list(tx, &child, items),
        (Some((AmValue::Scalar(scalar), _)), _) => {
            if let (ScalarValue::Counter(counter), Some(target)) = (scalar.as_ref(), wanted.as_i64()) {
                match target.checked_sub(i64::from(counter)) {
                    Some(0) => {}
                    Some(delta) => tx.increment(obj, slot.prop(), delta)?,
                    // A jump wider than i64 overflows automerge's running total
                    // (a panic in debug builds): start a new counter at the target.
                    None => tx.put(obj, slot.prop(), ScalarValue::counter(target))?,
                }
                return Ok(());
            }
            if !json_eq(&scalar_to_json(&scalar), wanted) {
                put_new(tx, obj, slot, wanted)?;
            }
            Ok(())
        }
        (Some((value, id)), _) => {
            // A container replaced by a different kind of value (or text).
            if !json_eq(&read_value(tx, value, &id, None), wanted) {
                put_new(tx, obj, slot, wanted)?;
            }
            Ok(())
        }
    }
}

/// Makes the list `obj` equal `wanted`: keep the common prefix and suffix,
/// edit the middle element by element, then insert or delete the rest.
pub fn update_list<T: Transactable>(tx: &mut T, obj: &ObjId, wanted: &[Json]) -> Result<(), AutomergeError> {
    let current = match read_object(tx, obj, ObjType::List, None) {
        Json::Array(items) => items,
        _ => Vec::new(),
    };
    let prefix = current.iter().zip(wanted).take_while(|(a, b)| json_eq(a, b)).count();
    let suffix =
        current[prefix..].iter().rev().zip(wanted[prefix..].iter().rev()).take_while(|(a, b)| json_eq(a, b)).count();
    let old_middle = current.len() - prefix - suffix;
    let new_middle = wanted.len() - prefix - suffix;
    let shared = old_middle.min(new_middle);
    for offset in 0..shared {
        update_slot(tx, obj, &Slot::Index(prefix + offset), &wanted[prefix + offset])?;
    }
    if new_middle > old_middle {
        for offset in shared..new_middle {
            insert_new(tx, obj, prefix + offset, &wanted[prefix + offset])?;
        }
    } else {
        for _ in shared..old_middle {
            tx.delete(obj, prefix + shared)?;
        }
    }
    Ok(())
}

/// Applies an RFC 7396 merge patch object to the map `obj`.
pub fn merge_patch_map<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    patch: &Map<String, Json>,
) -> Result<(), AutomergeError> {
    for (key, value) in patch {
        match value {
            Json::Null => {
                if tx.get(obj, key.as_str())?.is_some() {
                    tx.delete(obj, key.as_str())?;
                }
            }
            Json::Object(inner) => match tx.get(obj, key.as_str())? {
                Some((AmValue::Object(ObjType::Map), child)) => merge_patch_map(tx, &child, inner)?,
                _ => put_new(tx, obj, &Slot::Key(key.clone()), &strip_nulls(value))?,
            },
            _ => update_slot(tx, obj, &Slot::Key(key.clone()), value)?,
        }
    }
    Ok(())
}

/// A merge-patch value applied to nothing: the value with null members removed.
fn strip_nulls(value: &Json) -> Json {
    match value {
        Json::Object(map) => {
            Json::Object(map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip_nulls(v))).collect())
        }
        other => other.clone(),
    }
}

/// Pure-JSON RFC 7396 merge, used by tests as the reference semantics.
pub fn merge_patch_json(target: &mut Json, patch: &Json) {
    if let Json::Object(patch_map) = patch {
        if !target.is_object() {
            *target = Json::Object(Map::new());
        }
        let target_map = target.as_object_mut().expect("object");
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch_json(target_map.entry(key.clone()).or_insert(Json::Null), value);
            }
        }
    } else {
        *target = patch.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!({"a":[1,{"b":2}]}), &json!({"a":[1.0,{"b":2}]})));
        assert!(!json_eq(&json!("1"), &json!(1)));
        assert!(!json_eq(&json!([1, 2]), &json!([2, 1])));
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a":[{"b":1}]})), 3);
    }

    #[test]
    fn a_counter_jump_wider_than_i64_does_not_overflow() {
        // Found by the json_patch fuzz target: the delta wrapped, and automerge's
        // running total overflowed (a panic in debug builds).
        let mut doc = automerge::AutoCommit::new();
        doc.put(automerge::ROOT, "n", ScalarValue::counter(-5)).unwrap();
        update_slot(&mut doc, &automerge::ROOT, &Slot::Key("n".into()), &json!(i64::MAX)).unwrap();
        assert_eq!(read_object(&doc, &automerge::ROOT, ObjType::Map, None), json!({"n": i64::MAX}));
        update_slot(&mut doc, &automerge::ROOT, &Slot::Key("n".into()), &json!(7)).unwrap();
        assert_eq!(read_object(&doc, &automerge::ROOT, ObjType::Map, None), json!({"n": 7}));
    }
}
