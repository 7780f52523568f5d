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

use std::collections::BTreeSet;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ChangeHash, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value as AmValue};
use serde_json::{Map, Number, Value as Json};

/// What the mapping reads: a document as of some heads ([`At`]), any
/// automerge transaction in progress, or one that remembers its reads
/// ([`Memoized`]). Values come back owned, so a view may hand out copies.
pub trait View {
    /// The winning value at `prop` of `obj` and its id, as automerge's `get`.
    fn get<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P) -> Result<Got, AutomergeError>;
    /// The keys of the map `obj`, in automerge's order.
    fn keys(&mut self, obj: &ObjId) -> Vec<String>;
    /// The length of the list `obj`.
    fn length(&mut self, obj: &ObjId) -> usize;
    /// The text object `obj` as a string.
    fn text(&mut self, obj: &ObjId) -> String;
}

/// The edits the mapping makes, on top of its reads.
pub trait Edit: View {
    fn put<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P, value: ScalarValue) -> Result<(), AutomergeError>;
    fn put_object<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P, typ: ObjType) -> Result<ObjId, AutomergeError>;
    fn insert(&mut self, list: &ObjId, index: usize, value: ScalarValue) -> Result<(), AutomergeError>;
    fn insert_object(&mut self, list: &ObjId, index: usize, typ: ObjType) -> Result<ObjId, AutomergeError>;
    fn delete<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P) -> Result<(), AutomergeError>;
    fn increment<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P, by: i64) -> Result<(), AutomergeError>;
}

impl<T: Transactable> View for T {
    fn get<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P) -> Result<Got, AutomergeError> {
        Ok(ReadDoc::get(self, obj, prop)?.map(|(value, id)| (value.into_owned(), id)))
    }
    fn keys(&mut self, obj: &ObjId) -> Vec<String> {
        ReadDoc::keys(self, obj).collect()
    }
    fn length(&mut self, obj: &ObjId) -> usize {
        ReadDoc::length(self, obj)
    }
    fn text(&mut self, obj: &ObjId) -> String {
        ReadDoc::text(self, obj).unwrap_or_default()
    }
}

impl<T: Transactable> Edit for T {
    fn put<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P, value: ScalarValue) -> Result<(), AutomergeError> {
        Transactable::put(self, obj, prop, value)
    }
    fn put_object<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P, typ: ObjType) -> Result<ObjId, AutomergeError> {
        Transactable::put_object(self, obj, prop, typ)
    }
    fn insert(&mut self, list: &ObjId, index: usize, value: ScalarValue) -> Result<(), AutomergeError> {
        Transactable::insert(self, list, index, value)
    }
    fn insert_object(&mut self, list: &ObjId, index: usize, typ: ObjType) -> Result<ObjId, AutomergeError> {
        Transactable::insert_object(self, list, index, typ)
    }
    fn delete<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P) -> Result<(), AutomergeError> {
        Transactable::delete(self, obj, prop)
    }
    fn increment<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P, by: i64) -> Result<(), AutomergeError> {
        Transactable::increment(self, obj, prop, by)
    }
}

/// A document read as of `heads` (`None`: its current state).
pub struct At<'a, R> {
    pub doc: &'a R,
    pub heads: Option<&'a [ChangeHash]>,
}

impl<R: ReadDoc> View for At<'_, R> {
    fn get<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P) -> Result<Got, AutomergeError> {
        let got = match self.heads {
            Some(h) => self.doc.get_at(obj, prop, h)?,
            None => self.doc.get(obj, prop)?,
        };
        Ok(got.map(|(value, id)| (value.into_owned(), id)))
    }
    fn keys(&mut self, obj: &ObjId) -> Vec<String> {
        match self.heads {
            Some(h) => self.doc.keys_at(obj, h).collect(),
            None => self.doc.keys(obj).collect(),
        }
    }
    fn length(&mut self, obj: &ObjId) -> usize {
        match self.heads {
            Some(h) => self.doc.length_at(obj, h),
            None => self.doc.length(obj),
        }
    }
    fn text(&mut self, obj: &ObjId) -> String {
        match self.heads {
            Some(h) => self.doc.text_at(obj, h),
            None => self.doc.text(obj),
        }
        .unwrap_or_default()
    }
}

/// What local writes to one document read, kept for its next local write.
///
/// A merge patch reads every value it might change (to leave equal values
/// untouched and to turn numbers written over counters into increments),
/// and those reads were a fifth of a small write's CPU in automerge
/// (profiled in process, `Automerge::get_for`). A document's next local write
/// usually reads the same values, and nothing but this node's own writes
/// changed them in between: the memo answers those reads.
///
/// Valid only while every change to the document goes through a
/// [`Memoized`] transaction that commits: [`crate::Document`] clears it on
/// any other change (remote changes, merges, loads) and on a rollback.
/// Debug builds check every answer against automerge.
///
/// Small vectors searched in order, not maps: a small document's memo holds
/// a handful of values (about half a kilobyte per resident document), and a
/// scan of a few beats hashing an object id.
#[derive(Debug, Default)]
pub struct Memo {
    objects: Vec<ObjectMemo>,
    /// Values remembered over all objects, for the bound.
    entries: usize,
}

/// Most values a [`Memo`] keeps before it starts over: small documents fit,
/// and a large one costs a bounded amount of memory and search.
pub const MEMO_MAX: usize = 64;

/// A value as `get` returns it: the winner and its id, or nothing there.
pub type Got = Option<(AmValue<'static>, ObjId)>;

#[derive(Debug)]
struct ObjectMemo {
    obj: ObjId,
    values: Vec<(Prop, Got)>,
    keys: Option<Vec<String>>,
    length: Option<usize>,
}

impl Memo {
    /// Forgets everything (the document changed some other way).
    pub fn clear(&mut self) {
        self.objects.clear();
        self.entries = 0;
    }

    /// Values remembered now.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn object(&self, obj: &ObjId) -> Option<&ObjectMemo> {
        self.objects.iter().find(|m| &m.obj == obj)
    }

    fn object_mut(&mut self, obj: &ObjId) -> Option<&mut ObjectMemo> {
        self.objects.iter_mut().find(|m| &m.obj == obj)
    }

    fn object_or_new(&mut self, obj: &ObjId) -> &mut ObjectMemo {
        match self.objects.iter().position(|m| &m.obj == obj) {
            Some(at) => &mut self.objects[at],
            None => {
                self.objects.push(ObjectMemo { obj: obj.clone(), values: Vec::new(), keys: None, length: None });
                self.objects.last_mut().expect("just pushed")
            }
        }
    }

    fn value(&self, obj: &ObjId, prop: &Prop) -> Option<&Got> {
        self.object(obj)?.values.iter().find(|(p, _)| p == prop).map(|(_, got)| got)
    }

    fn remember(&mut self, obj: &ObjId, prop: Prop, value: Got) {
        if self.entries >= MEMO_MAX {
            self.clear();
        }
        let memo = self.object_or_new(obj);
        match memo.values.iter_mut().find(|(p, _)| *p == prop) {
            Some((_, got)) => *got = value,
            None => {
                memo.values.push((prop, value));
                self.entries += 1;
            }
        }
    }

    /// Forgets one value (a counter's running total).
    fn forget_value(&mut self, obj: &ObjId, prop: &Prop) {
        if let Some(memo) = self.object_mut(obj) {
            if let Some(at) = memo.values.iter().position(|(p, _)| p == prop) {
                memo.values.swap_remove(at);
                self.entries -= 1;
            }
        }
    }

    /// Forgets one object (a list whose indices shifted).
    fn forget(&mut self, obj: &ObjId) {
        if let Some(at) = self.objects.iter().position(|m| &m.obj == obj) {
            self.entries -= self.objects.swap_remove(at).values.len();
        }
    }
}

/// A transaction that answers reads from a [`Memo`] and keeps it current
/// with its own edits. It also tracks which keys of one map (`watch`, the
/// document's data) its own puts leave set, for [`Memoized::leaves_own_key`].
pub struct Memoized<'m, T> {
    tx: &'m mut T,
    memo: &'m mut Memo,
    watch: &'m ObjId,
    /// Keys of `watch` whose visible value this transaction put (and did
    /// not delete again).
    written: BTreeSet<String>,
}

impl<'m, T: Transactable> Memoized<'m, T> {
    pub fn new(tx: &'m mut T, memo: &'m mut Memo, watch: &'m ObjId) -> Self {
        Memoized { tx, memo, watch, written: BTreeSet::new() }
    }

    /// Whether some key of `watch` now holds a value this transaction put:
    /// an op of its own, concurrent with whatever it is concurrent with.
    pub fn leaves_own_key(&self) -> bool {
        !self.written.is_empty()
    }

    /// Notes a put at `prop` of `obj` that made an op of its own.
    fn own_put(&mut self, obj: &ObjId, prop: &Prop) {
        if let (Prop::Map(key), true) = (prop, obj == self.watch) {
            self.written.insert(key.clone());
        }
    }
}

impl<T: Transactable> Memoized<'_, T> {
    /// A map key was set or removed: the key list is stale unless it already
    /// held the key and still does.
    fn key_written(&mut self, obj: &ObjId, prop: &Prop, present: bool) {
        if let (Prop::Map(key), Some(memo)) = (prop, self.memo.object_mut(obj)) {
            if memo.keys.as_ref().is_some_and(|keys| !present || !keys.contains(key)) {
                memo.keys = None;
            }
        }
    }
}

impl<T: Transactable> View for Memoized<'_, T> {
    fn get<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P) -> Result<Got, AutomergeError> {
        let prop = prop.into();
        if let Some(known) = self.memo.value(obj, &prop) {
            debug_assert_eq!(
                known.as_ref().map(|(v, _)| v),
                View::get(self.tx, obj, prop.clone())?.as_ref().map(|(v, _)| v),
                "the memo of {obj}/{prop:?} is out of step with automerge"
            );
            return Ok(known.clone());
        }
        let got = View::get(self.tx, obj, prop.clone())?;
        self.memo.remember(obj, prop, got.clone());
        Ok(got)
    }
    fn keys(&mut self, obj: &ObjId) -> Vec<String> {
        if let Some(keys) = self.memo.object(obj).and_then(|m| m.keys.clone()) {
            debug_assert_eq!(keys, View::keys(self.tx, obj), "the memo of {obj}'s keys is out of step");
            return keys;
        }
        let keys = View::keys(self.tx, obj);
        self.memo.object_or_new(obj).keys = Some(keys.clone());
        keys
    }
    fn length(&mut self, obj: &ObjId) -> usize {
        if let Some(length) = self.memo.object(obj).and_then(|m| m.length) {
            debug_assert_eq!(length, View::length(self.tx, obj), "the memo of {obj}'s length is out of step");
            return length;
        }
        let length = View::length(self.tx, obj);
        self.memo.object_or_new(obj).length = Some(length);
        length
    }
    fn text(&mut self, obj: &ObjId) -> String {
        View::text(self.tx, obj)
    }
}

impl<T: Transactable> Edit for Memoized<'_, T> {
    fn put<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P, value: ScalarValue) -> Result<(), AutomergeError> {
        let prop = prop.into();
        // automerge makes no op of its own for a put of the winning value
        // (none, or a delete of the losers), so such a put leaves no key.
        let winner = View::get(self, obj, prop.clone())?;
        let same = matches!(&winner, Some((AmValue::Scalar(current), _)) if current.as_ref() == &value);
        Edit::put(self.tx, obj, prop.clone(), value.clone())?;
        if !same {
            self.own_put(obj, &prop);
        }
        self.key_written(obj, &prop, true);
        // A scalar's id is never read back (only objects' are), so the
        // object's own id stands in for the new op's.
        self.memo.remember(obj, prop, Some((AmValue::Scalar(std::borrow::Cow::Owned(value)), obj.clone())));
        Ok(())
    }
    fn put_object<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P, typ: ObjType) -> Result<ObjId, AutomergeError> {
        let prop = prop.into();
        let child = Edit::put_object(self.tx, obj, prop.clone(), typ)?;
        self.own_put(obj, &prop);
        self.key_written(obj, &prop, true);
        self.memo.remember(obj, prop, Some((AmValue::Object(typ), child.clone())));
        Ok(child)
    }
    fn insert(&mut self, list: &ObjId, index: usize, value: ScalarValue) -> Result<(), AutomergeError> {
        self.memo.forget(list);
        Edit::insert(self.tx, list, index, value)
    }
    fn insert_object(&mut self, list: &ObjId, index: usize, typ: ObjType) -> Result<ObjId, AutomergeError> {
        self.memo.forget(list);
        Edit::insert_object(self.tx, list, index, typ)
    }
    fn delete<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P) -> Result<(), AutomergeError> {
        let prop = prop.into();
        Edit::delete(self.tx, obj, prop.clone())?;
        match prop {
            Prop::Map(ref key) => {
                if obj == self.watch {
                    self.written.remove(key);
                }
                self.key_written(obj, &prop, false);
                self.memo.remember(obj, prop, None);
            }
            Prop::Seq(_) => self.memo.forget(obj),
        }
        Ok(())
    }
    fn increment<P: Into<Prop>>(&mut self, obj: &ObjId, prop: P, by: i64) -> Result<(), AutomergeError> {
        let prop = prop.into();
        Edit::increment(self.tx, obj, prop.clone(), by)?;
        // An increment is not a put: a concurrent delete of the counter hides it.
        if let (Prop::Map(key), true) = (&prop, obj == self.watch) {
            self.written.remove(key);
        }
        // A counter's value is its running total: read it afresh next time.
        self.memo.forget_value(obj, &prop);
        Ok(())
    }
}

/// Reads the object `obj` of type `typ` as JSON, optionally as of `heads`.
pub fn read_object<R: ReadDoc>(doc: &R, obj: &ObjId, typ: ObjType, heads: Option<&[ChangeHash]>) -> Json {
    render_object(&mut At { doc, heads }, obj, typ)
}

/// Reads one value (scalar or object) as JSON.
pub fn read_value<R: ReadDoc>(doc: &R, value: AmValue<'_>, id: &ObjId, heads: Option<&[ChangeHash]>) -> Json {
    render_value(&mut At { doc, heads }, value, id)
}

/// The object `obj` of type `typ` as JSON, as `view` sees it.
pub fn render_object<V: View>(view: &mut V, obj: &ObjId, typ: ObjType) -> Json {
    match typ {
        ObjType::Map | ObjType::Table => {
            let mut out = Map::new();
            for key in view.keys(obj) {
                if let Ok(Some((value, id))) = view.get(obj, key.as_str()) {
                    out.insert(key, render_value(view, value, &id));
                }
            }
            Json::Object(out)
        }
        ObjType::List => {
            let len = view.length(obj);
            let mut out = Vec::with_capacity(len);
            for index in 0..len {
                if let Ok(Some((value, id))) = view.get(obj, index) {
                    out.push(render_value(view, value, &id));
                }
            }
            Json::Array(out)
        }
        ObjType::Text => Json::String(view.text(obj)),
    }
}

/// One value (scalar or object) as JSON, as `view` sees it.
pub fn render_value<V: View>(view: &mut V, value: AmValue<'_>, id: &ObjId) -> Json {
    match value {
        AmValue::Object(typ) => render_object(view, id, typ),
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
pub fn put_new<E: Edit>(tx: &mut E, obj: &ObjId, slot: &Slot, value: &Json) -> Result<(), AutomergeError> {
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
pub fn insert_new<E: Edit>(tx: &mut E, list: &ObjId, index: usize, value: &Json) -> Result<(), AutomergeError> {
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

fn fill_map<E: Edit>(tx: &mut E, obj: &ObjId, map: &Map<String, Json>) -> Result<(), AutomergeError> {
    for (key, value) in map {
        put_new(tx, obj, &Slot::Key(key.clone()), value)?;
    }
    Ok(())
}

fn fill_list<E: Edit>(tx: &mut E, obj: &ObjId, items: &[Json]) -> Result<(), AutomergeError> {
    for (index, value) in items.iter().enumerate() {
        insert_new(tx, obj, index, value)?;
    }
    Ok(())
}

/// Makes the map `obj` equal `wanted` with the smallest edit.
pub fn update_map<E: Edit>(tx: &mut E, obj: &ObjId, wanted: &Map<String, Json>) -> Result<(), AutomergeError> {
    let existing: Vec<String> = tx.keys(obj);
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
pub fn update_slot<E: Edit>(tx: &mut E, obj: &ObjId, slot: &Slot, wanted: &Json) -> Result<(), AutomergeError> {
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
            if !json_eq(&render_value(tx, value, &id), wanted) {
                put_new(tx, obj, slot, wanted)?;
            }
            Ok(())
        }
    }
}

/// Makes the list `obj` equal `wanted`: keep the common prefix and suffix,
/// edit the middle element by element, then insert or delete the rest.
pub fn update_list<E: Edit>(tx: &mut E, obj: &ObjId, wanted: &[Json]) -> Result<(), AutomergeError> {
    let current = match render_object(tx, obj, ObjType::List) {
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
pub fn merge_patch_map<E: Edit>(tx: &mut E, obj: &ObjId, patch: &Map<String, Json>) -> Result<(), AutomergeError> {
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
        Edit::put(&mut doc, &automerge::ROOT, "n", ScalarValue::counter(-5)).unwrap();
        update_slot(&mut doc, &automerge::ROOT, &Slot::Key("n".into()), &json!(i64::MAX)).unwrap();
        assert_eq!(read_object(&doc, &automerge::ROOT, ObjType::Map, None), json!({"n": i64::MAX}));
        update_slot(&mut doc, &automerge::ROOT, &Slot::Key("n".into()), &json!(7)).unwrap();
        assert_eq!(read_object(&doc, &automerge::ROOT, ObjType::Map, None), json!({"n": 7}));
    }
}
