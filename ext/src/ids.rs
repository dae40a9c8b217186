//! Maps keyed by a row's global id (TEXT or BLOB uuid), looked up by
//! `&Value` without allocating: the apply path does several lookups per row.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use lsync_wire::changeset::Change;

use crate::bail;
use crate::error::Result;
use crate::sql::Value;

#[derive(Debug)]
pub struct IdMap<V> {
    /// Short text ids (UUIDs are 36 bytes), kept in place: no heap copy of
    /// each key to make and free. A 1M-row apply spent 8% of its time
    /// allocating, hashing, comparing and freeing the boxed keys of its
    /// maps (perf, cpu-clock).
    short: FxHashMap<Short, V>,
    text: FxHashMap<Box<str>, V>,
    blob: FxHashMap<Box<[u8]>, V>,
}

/// The longest text id kept in place.
const SHORT: usize = 39;

/// A text id of at most `SHORT` bytes: its length, and its bytes padded
/// with zeros.
type Short = (u8, [u8; SHORT]);

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            short: FxHashMap::default(),
            text: FxHashMap::default(),
            blob: FxHashMap::default(),
        }
    }
}

/// How an id is kept.
enum Key<'a> {
    Short(Short),
    Text(&'a str),
    Blob(&'a [u8]),
}

fn key_of(id: &Value) -> Option<Key<'_>> {
    match id {
        Value::Text(s) => Some(text_key(s)),
        Value::Blob(b) => Some(Key::Blob(b)),
        _ => None,
    }
}

fn text_key(s: &str) -> Key<'_> {
    let b = s.as_bytes();
    match u8::try_from(b.len()) {
        Ok(n) if b.len() <= SHORT => {
            let mut bytes = [0u8; SHORT];
            bytes[..b.len()].copy_from_slice(b);
            Key::Short((n, bytes))
        }
        _ => Key::Text(s),
    }
}

impl<V> IdMap<V> {
    pub fn get(&self, id: &Value) -> Option<&V> {
        match key_of(id)? {
            Key::Short(k) => self.short.get(&k),
            Key::Text(s) => self.text.get(s),
            Key::Blob(b) => self.blob.get(b),
        }
    }

    pub fn get_mut(&mut self, id: &Value) -> Option<&mut V> {
        match key_of(id)? {
            Key::Short(k) => self.short.get_mut(&k),
            Key::Text(s) => self.text.get_mut(s),
            Key::Blob(b) => self.blob.get_mut(b),
        }
    }

    pub fn contains(&self, id: &Value) -> bool {
        self.get(id).is_some()
    }

    /// Inserts; ids that are neither text nor blob are ignored.
    pub fn insert(&mut self, id: &Value, v: V) {
        if let Some(k) = key_of(id) {
            self.insert_key(k, v);
        }
    }

    /// Inserts under a text id.
    pub fn insert_text(&mut self, id: &str, v: V) {
        self.insert_key(text_key(id), v);
    }

    fn insert_key(&mut self, k: Key, v: V) {
        match k {
            Key::Short(k) => {
                self.short.insert(k, v);
            }
            Key::Text(s) => {
                self.text.insert(s.into(), v);
            }
            Key::Blob(b) => {
                self.blob.insert(b.into(), v);
            }
        }
    }

    pub fn remove(&mut self, id: &Value) -> Option<V> {
        match key_of(id)? {
            Key::Short(k) => self.short.remove(&k),
            Key::Text(s) => self.text.remove(s),
            Key::Blob(b) => self.blob.remove(b),
        }
    }

    pub fn extend(&mut self, other: IdMap<V>) {
        self.short.extend(other.short);
        self.text.extend(other.text);
        self.blob.extend(other.blob);
    }

    pub fn reserve(&mut self, n: usize) {
        self.short.reserve(n);
    }
}

/// Whether a value can be a global id.
pub fn is_id(v: &Value) -> bool {
    matches!(v, Value::Text(_) | Value::Blob(_))
}

/// The longest text id taken from a peer, in bytes.
pub const MAX_TEXT_ID: usize = 1024;

/// Why a value from a peer cannot be a global id, if it cannot: ids are
/// text of 1 to `MAX_TEXT_ID` bytes (uuids, or a key/value table's keys),
/// or 16-byte UUIDs (a version 1 to 8, RFC 4122 variant: lsync's own are
/// 7 and 8).
pub fn id_problem(v: &Value) -> Option<String> {
    match v {
        Value::Text(s) if s.is_empty() => Some("an empty text".into()),
        Value::Text(s) if s.len() > MAX_TEXT_ID => Some(format!(
            "a text of {} bytes (at most {MAX_TEXT_ID})",
            s.len()
        )),
        Value::Text(_) => None,
        Value::Blob(b) => match uuid::Uuid::from_slice(b) {
            Err(_) => Some(format!("a blob of {} bytes, not a 16-byte UUID", b.len())),
            Ok(u)
                if u.get_variant() != uuid::Variant::RFC4122
                    || !(1..=8).contains(&u.get_version_num()) =>
            {
                Some("a 16-byte blob that is not a UUID".into())
            }
            Ok(_) => None,
        },
        Value::Null => Some("NULL".into()),
        Value::Integer(_) | Value::Real(_) => Some("a number (a local id?)".into()),
    }
}

/// A change's row id, and its FK values, are global ids (issue 13): a
/// number in an FK column would be written as a local id here. `fks`: the
/// change's columns that are FKs of `t`, with their values.
pub fn check_change<'c>(
    c: &Change,
    fks: impl Iterator<Item = &'c (Arc<str>, Value)>,
) -> Result<()> {
    if let Some(why) = id_problem(&c.pk) {
        bail!(
            "lsync_apply: a change to '{}' has a row id that is {why}, not a global id; nothing was applied",
            c.tbl
        );
    }
    for (col, v) in fks {
        if *v == Value::Null {
            continue;
        }
        if let Some(why) = id_problem(v) {
            bail!(
                "lsync_apply: a change to '{}' links '{col}' to {why}, not a global id; nothing was applied",
                c.tbl
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_found_only_as_it_was_spelled() {
        let t = |s: &str| Value::Text(s.into());
        let lower = "0192f5e4-7c3a-7d21-9a8b-0123456789ab";
        let mut m = IdMap::default();
        m.insert(&t(lower), 1);
        m.insert(&t("P300"), 2);
        let long = "x".repeat(SHORT + 1);
        m.insert(&t(&long), 5);
        m.insert(&t(&long[..SHORT]), 6);
        m.insert(&Value::Blob(lower.as_bytes().to_vec()), 3);
        m.insert_text("0192f5e4-0000-7000-8000-000000000000", 4);
        assert_eq!(m.get(&t(lower)), Some(&1));
        assert_eq!(m.get(&t(&lower.to_uppercase())), None);
        assert_eq!(m.get(&t("P300")), Some(&2));
        assert_eq!(m.get(&t("P3000")), None);
        assert_eq!(m.get(&t("P30")), None);
        assert_eq!(m.get(&t("P300\0")), None, "padding is not a byte of the id");
        assert_eq!(m.get(&t(&long)), Some(&5));
        assert_eq!(m.get(&t(&long[..SHORT])), Some(&6));
        assert_eq!(m.get(&Value::Blob(lower.as_bytes().to_vec())), Some(&3));
        assert_eq!(m.get(&t("0192f5e4-0000-7000-8000-000000000000")), Some(&4));
        assert_eq!(m.get(&Value::Integer(1)), None);
        assert_eq!(m.remove(&t(lower)), Some(1));
        assert!(!m.contains(&t(lower)));
    }
}
