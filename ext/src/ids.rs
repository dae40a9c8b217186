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
    /// Text ids written as lsync writes UUIDs, as their 128 bits: no heap
    /// copy of each key, and a cheaper hash and compare. A 1M-row apply
    /// spent 8% of its time allocating, hashing, comparing and freeing
    /// the boxed keys of its maps (perf, cpu-clock).
    uuid: FxHashMap<u128, V>,
    text: FxHashMap<Box<str>, V>,
    blob: FxHashMap<Box<[u8]>, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            uuid: FxHashMap::default(),
            text: FxHashMap::default(),
            blob: FxHashMap::default(),
        }
    }
}

/// How an id is kept.
enum Key<'a> {
    Uuid(u128),
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
    canonical_uuid(s).map_or(Key::Text(s), Key::Uuid)
}

/// The bits of `s` when it is a UUID in lower-case hex with hyphens, as
/// lsync writes them: one text per number, so the number stands for the
/// text. (The parser also takes upper case, and other lengths for other
/// spellings.)
fn canonical_uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 || b.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    uuid::Uuid::try_parse_ascii(b).ok().map(|u| u.as_u128())
}

impl<V> IdMap<V> {
    pub fn get(&self, id: &Value) -> Option<&V> {
        match key_of(id)? {
            Key::Uuid(u) => self.uuid.get(&u),
            Key::Text(s) => self.text.get(s),
            Key::Blob(b) => self.blob.get(b),
        }
    }

    pub fn get_mut(&mut self, id: &Value) -> Option<&mut V> {
        match key_of(id)? {
            Key::Uuid(u) => self.uuid.get_mut(&u),
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
            Key::Uuid(u) => {
                self.uuid.insert(u, v);
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
            Key::Uuid(u) => self.uuid.remove(&u),
            Key::Text(s) => self.text.remove(s),
            Key::Blob(b) => self.blob.remove(b),
        }
    }

    pub fn extend(&mut self, other: IdMap<V>) {
        self.uuid.extend(other.uuid);
        self.text.extend(other.text);
        self.blob.extend(other.blob);
    }

    pub fn reserve(&mut self, n: usize) {
        self.uuid.reserve(n);
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
    fn only_the_lower_case_hyphenated_spelling_is_kept_as_a_number() {
        let u = "0192f5e4-7c3a-7d21-9a8b-0123456789ab";
        assert_eq!(
            canonical_uuid(u),
            Some(0x0192f5e4_7c3a_7d21_9a8b_0123456789ab)
        );
        for other in [
            "0192F5E4-7C3A-7D21-9A8B-0123456789AB",
            "0192f5e47c3a7d219a8b0123456789ab",
            "0192f5e4-7c3a-7d21-9a8b-0123456789a",
            "0192f5e4-7c3a-7d21-9a8b-0123456789ag",
            "0192f5e4+7c3a-7d21-9a8b-0123456789ab",
        ] {
            assert_eq!(canonical_uuid(other), None, "{other}");
        }
    }

    #[test]
    fn an_id_is_found_only_as_it_was_spelled() {
        let t = |s: &str| Value::Text(s.into());
        let lower = "0192f5e4-7c3a-7d21-9a8b-0123456789ab";
        let mut m = IdMap::default();
        m.insert(&t(lower), 1);
        m.insert(&t("P300"), 2);
        m.insert(&Value::Blob(lower.as_bytes().to_vec()), 3);
        m.insert_text("0192f5e4-0000-7000-8000-000000000000", 4);
        assert_eq!(m.get(&t(lower)), Some(&1));
        assert_eq!(m.get(&t(&lower.to_uppercase())), None);
        assert_eq!(m.get(&t("P300")), Some(&2));
        assert_eq!(m.get(&Value::Blob(lower.as_bytes().to_vec())), Some(&3));
        assert_eq!(m.get(&t("0192f5e4-0000-7000-8000-000000000000")), Some(&4));
        assert_eq!(m.get(&Value::Integer(1)), None);
        assert_eq!(m.remove(&t(lower)), Some(1));
        assert!(!m.contains(&t(lower)));
    }
}
