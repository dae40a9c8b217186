//! What one table's changes need looked up before they merge: their rows
//! that are here, their tombstones, and their FK targets.
//!
//! A bulk apply skips the lookup of keys above the largest the table holds
//! (`top_key`): they cannot be there. Global ids that grow with time (UUID
//! v7, as lsync mints them) and rows sent in the order they were made, as
//! in an initial sync, make that every key of every batch after the first.

use std::cmp::Ordering;

use lsync_wire::changeset::Change;
use rustc_hash::FxHashMap as HashMap;

use super::{batch, walk, Applier};
use crate::catalog::Table;
use crate::error::Result;
use crate::fk;
use crate::ident::{q, qm};
use crate::ids::IdMap;
use crate::sql::{Db, Value};

impl Applier {
    /// Set-based lookups for one table's changes: existing rows by uuid,
    /// tombstones, and the FK targets of every FK column.
    pub(super) fn prepare_table(
        &mut self,
        t: &Table,
        list: &[&Change],
        groups: &HashMap<&str, Vec<&Change>>,
    ) -> Result<()> {
        let has_rows = self.db.query_i64(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", qm(&t.name)),
            &[],
        )? == Some(1);
        if self.batching && !t.without_rowid && list.len() >= batch::MIN_CHANGES {
            self.bulk.insert(t.id);
        }
        // In a bulk apply, ids are found by walking the index on them, and
        // those above the largest there are not looked up at all.
        let index = match has_rows && self.bulk.contains(&t.id) {
            true => walk::key_index(self.db, t)?,
            false => None,
        };
        let top = match &index {
            Some(_) => top_key(self.db, t)?,
            None => None,
        };
        let rids = self.rids.entry(t.name.clone()).or_default();
        rids.reserve(list.len());
        if has_rows {
            let keys: Vec<&Value> = list
                .iter()
                .map(|c| &c.pk)
                .filter(|k| self.fresh.may_hold(t.id, k))
                .filter(|k| top.as_ref().is_none_or(|m| !above(k, m)))
                .collect();
            // The walk takes text ids only; any other kind goes by probes.
            let texts = |_: &String| keys.iter().map(|k| k.as_str()).collect::<Option<Vec<_>>>();
            if !keys.is_empty() {
                rids.extend(match (&index, index.as_ref().and_then(texts)) {
                    (Some(index), Some(mut texts)) => walk::rids(self.db, t, index, &mut texts)?,
                    _ => fk::rids_of(self.db, t, &keys)?,
                });
            }
        }
        self.touched.insert(t.name.clone());
        if self.db.query_i64(
            "SELECT EXISTS (SELECT 1 FROM lsync_parked WHERE tbl = ?1)",
            &[t.id.into()],
        )? == Some(1)
        {
            self.parked.insert(t.id);
        }
        let mut tombs = IdMap::default();
        let mut s = self.db.prepare(
            "SELECT uuid, hlc, origin FROM lsync_clock WHERE tbl = ?1 AND uuid IS NOT NULL AND op = 2",
        )?;
        s.bind(1, &t.id.into())?;
        let mut raw = Vec::new();
        while s.step()? {
            raw.push((s.value(0), s.i64(1), s.i64(2)));
        }
        drop(s);
        for (k, hlc, origin) in raw {
            let clk = self.clk((hlc, origin))?;
            tombs.insert(&k, clk);
        }
        self.tombs.insert(t.name.clone(), tombs);
        self.find_targets(t, list, groups)
    }
}

/// The largest value of `t`'s own global id column, which has a unique
/// index that orders text as bytes do (`walk::key_index`), so that a key
/// above it in SQLite's order is certainly not there.
fn top_key(db: Db, t: &Table) -> Result<Option<Value>> {
    let Some(col) = t.uuid_col() else {
        return Ok(None);
    };
    let top = db.query_value(
        &format!("SELECT max({} COLLATE BINARY) FROM {}", q(col), qm(&t.name)),
        &[],
    )?;
    Ok(top.filter(|v| *v != Value::Null))
}

/// Whether `k` sorts after `top` in SQLite's order under `BINARY`: numbers,
/// then text, then blobs; text and blobs bytewise.
pub(super) fn above(k: &Value, top: &Value) -> bool {
    fn class(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
        }
    }
    match (k, top) {
        (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()) == Ordering::Greater,
        (Value::Blob(a), Value::Blob(b)) => a.as_slice().cmp(b.as_slice()) == Ordering::Greater,
        // Numbers compare by value: left to the lookup.
        (a, b) if class(a) == 1 && class(b) == 1 => false,
        (a, b) => class(a) > class(b),
    }
}

#[cfg(test)]
mod tests {
    use super::above;
    use crate::sql::Value;

    #[test]
    fn a_key_is_above_the_top_only_in_sqlite_order() {
        let t = |s: &str| Value::Text(s.into());
        assert!(above(&t("b"), &t("a")));
        assert!(above(&t("ab"), &t("a")), "a longer key after its prefix");
        assert!(!above(&t("a"), &t("a")), "the top itself is there");
        assert!(!above(&t("A"), &t("a")), "bytewise: upper case sorts first");
        assert!(above(&Value::Blob(vec![0]), &t("z")), "blobs after text");
        assert!(!above(&t("z"), &Value::Blob(vec![0])));
        assert!(above(&t("0"), &Value::Integer(9)), "text after numbers");
        assert!(
            !above(&Value::Integer(10), &Value::Integer(9)),
            "numbers are looked up"
        );
    }
}
