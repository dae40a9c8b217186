//! Maps keyed by a row's global id (TEXT or BLOB uuid), looked up by
//! `&Value` without allocating: the apply path does several lookups per row.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use lsync_wire::changeset::Change;

use crate::bail;
use crate::catalog::Table;
use crate::error::Result;
use crate::sql::Value;

#[derive(Debug)]
pub struct IdMap<V> {
    text: FxHashMap<Box<str>, V>,
    blob: FxHashMap<Box<[u8]>, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            text: FxHashMap::default(),
            blob: FxHashMap::default(),
        }
    }
}

impl<V> IdMap<V> {
    pub fn get(&self, id: &Value) -> Option<&V> {
        match id {
            Value::Text(s) => self.text.get(s.as_str()),
            Value::Blob(b) => self.blob.get(b.as_slice()),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: &Value) -> Option<&mut V> {
        match id {
            Value::Text(s) => self.text.get_mut(s.as_str()),
            Value::Blob(b) => self.blob.get_mut(b.as_slice()),
            _ => None,
        }
    }

    pub fn contains(&self, id: &Value) -> bool {
        self.get(id).is_some()
    }

    /// Inserts; ids that are neither text nor blob are ignored.
    pub fn insert(&mut self, id: &Value, v: V) {
        match id {
            Value::Text(s) => {
                self.text.insert(s.as_str().into(), v);
            }
            Value::Blob(b) => {
                self.blob.insert(b.as_slice().into(), v);
            }
            _ => {}
        }
    }

    /// Inserts under a text id.
    pub fn insert_text(&mut self, id: &str, v: V) {
        self.text.insert(id.into(), v);
    }

    pub fn remove(&mut self, id: &Value) -> Option<V> {
        match id {
            Value::Text(s) => self.text.remove(s.as_str()),
            Value::Blob(b) => self.blob.remove(b.as_slice()),
            _ => None,
        }
    }

    pub fn extend(&mut self, other: IdMap<V>) {
        self.text.extend(other.text);
        self.blob.extend(other.blob);
    }

    pub fn reserve(&mut self, n: usize) {
        self.text.reserve(n);
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
/// number in an FK column would be written as a local id here. `is_fk`:
/// whether a column of the change is one of `t`'s FK columns.
pub fn check_change(t: &Table, c: &Change, is_fk: impl Fn(&Arc<str>) -> bool) -> Result<()> {
    if let Some(why) = id_problem(&c.pk) {
        bail!(
            "lsync_apply: a change to '{}' has a row id that is {why}, not a global id; nothing was applied",
            c.tbl
        );
    }
    if t.fks.is_empty() {
        return Ok(());
    }
    for (col, v) in &c.data {
        if *v == Value::Null || !is_fk(col) {
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
