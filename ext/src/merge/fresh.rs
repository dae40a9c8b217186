//! Tables that were empty when an apply began. Their rows all come from
//! this apply, so a key that the apply has not inserted is not there: the
//! lookup of a chunk's keys, which would find none of them (a bulk apply's
//! every chunk after the first), is skipped for those keys.
//!
//! While the keys come in rising order (UUID v7, sent in the order they
//! were made, as an initial sync sends them), the largest is all that is
//! kept: a key above it was never inserted. The first key out of order
//! turns the table to a set of 64-bit hashes of its keys, read back from
//! the table once. A key whose hash is not kept is certainly absent, and
//! a collision costs only the lookup it would have cost anyway. A set of
//! a million hashes is some 18 MB whose every probe misses the cache: it
//! cost a tenth of a 1M-row apply (perf, cpu-clock), the rising key none.
//!
//! Rows that come by another way (an app trigger, a quarantined change
//! retried, a merge renaming a row) make the table an ordinary one for the
//! rest of the apply.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet, FxHasher};

use super::prepare::above;
use crate::catalog::Table;
use crate::error::Result;
use crate::ident::{q, qm};
use crate::sql::{Db, Value};

/// Keys per table past which a table stops being tracked (about 18 MB of
/// hashes per million keys): a bigger apply looks its keys up again.
const MAX_KEYS: usize = 4 << 20;

/// What is known of the keys one fresh table holds.
enum Keys {
    /// Every key so far came above the one before; the last (None: no
    /// key yet). Only for tables whose ids are in a column of their own,
    /// where they can be read back.
    Rising(Option<Value>),
    Hashed(HashSet<u64>),
}

/// The fresh tables of one apply, shared by every merge of its chunks.
#[derive(Clone, Default)]
pub struct Fresh(Rc<RefCell<HashMap<i64, Keys>>>);

impl Fresh {
    /// The tables of `tables` that hold no row (and, when lsync keeps their
    /// ids, no id either). Call it when nothing but the apply writes them:
    /// capture is off and no app trigger fires.
    pub fn find<'t>(db: Db, tables: impl IntoIterator<Item = &'t Table>) -> Result<Fresh> {
        let mut fresh = HashMap::default();
        for t in tables {
            let rows = db.query_i64(
                &format!("SELECT EXISTS (SELECT 1 FROM {})", qm(&t.name)),
                &[],
            )? == Some(1);
            let ids = t.mapped()
                && db.query_i64(
                    "SELECT EXISTS (SELECT 1 FROM lsync_gid WHERE tbl = ?1)",
                    &[t.id.into()],
                )? == Some(1);
            if !rows && !ids {
                let keys = match t.uuid_col() {
                    Some(_) => Keys::Rising(None),
                    None => Keys::Hashed(HashSet::default()),
                };
                fresh.insert(t.id, keys);
            }
        }
        Ok(Fresh(Rc::new(RefCell::new(fresh))))
    }

    /// Whether row `key` of table `tbl` may be there: false only when the
    /// table is fresh and the key was never inserted.
    pub fn may_hold(&self, tbl: i64, key: &Value) -> bool {
        match self.0.borrow().get(&tbl) {
            None => true,
            Some(Keys::Rising(None)) => false,
            Some(Keys::Rising(Some(last))) => !above(key, last),
            Some(Keys::Hashed(keys)) => keys.contains(&hash(key)),
        }
    }

    /// Row `key` of table `tbl` is being inserted. True when it came out of
    /// order: once it is in the table, `read_back` must follow.
    #[must_use]
    pub fn inserted(&self, tbl: i64, key: &Value) -> bool {
        let mut all = self.0.borrow_mut();
        match all.get_mut(&tbl) {
            Some(Keys::Rising(last)) => {
                if last.as_ref().is_none_or(|l| above(key, l)) {
                    // In place: a key per row, and no allocation each.
                    match (last.as_mut(), key) {
                        (Some(Value::Text(l)), Value::Text(k)) => l.clone_from(k),
                        (Some(Value::Blob(l)), Value::Blob(k)) => l.clone_from(k),
                        _ => *last = Some(key.clone()),
                    }
                    return false;
                }
                true
            }
            Some(Keys::Hashed(keys)) if keys.len() >= MAX_KEYS => {
                all.remove(&tbl);
                false
            }
            Some(Keys::Hashed(keys)) => {
                keys.insert(hash(key));
                false
            }
            None => false,
        }
    }

    /// After a key out of order (`inserted`): the keys of `t`, all of them
    /// inserted by this apply, are read back into a set of hashes.
    pub fn read_back(&self, db: Db, t: &Table) -> Result<()> {
        let Some(col) = t.uuid_col() else {
            self.forget(t.id);
            return Ok(());
        };
        let mut keys = HashSet::default();
        let mut s = db.prepare(&format!("SELECT {} FROM {}", q(col), qm(&t.name)))?;
        while s.step()? {
            match s.value(0) {
                // A key the table turned into a number would not hash as
                // the change's key: the table is then an ordinary one.
                v @ (Value::Text(_) | Value::Blob(_)) => {
                    keys.insert(hash(&v));
                }
                _ => {
                    drop(s);
                    self.forget(t.id);
                    return Ok(());
                }
            }
        }
        self.0.borrow_mut().insert(t.id, Keys::Hashed(keys));
        Ok(())
    }

    /// Table `tbl` may now hold rows this apply did not record.
    pub fn forget(&self, tbl: i64) {
        self.0.borrow_mut().remove(&tbl);
    }

    /// Every table may now hold rows this apply did not record.
    pub fn forget_all(&self) {
        self.0.borrow_mut().clear();
    }
}

fn hash(key: &Value) -> u64 {
    let mut h = FxHasher::default();
    match key {
        Value::Text(s) => (0u8, s.as_bytes()).hash(&mut h),
        Value::Blob(b) => (1u8, b.as_slice()).hash(&mut h),
        other => (2u8, format!("{other:?}")).hash(&mut h),
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(keys: Keys) -> Fresh {
        Fresh(Rc::new(RefCell::new(HashMap::from_iter([(1, keys)]))))
    }

    #[test]
    fn a_key_is_absent_until_inserted_and_text_is_not_a_blob() {
        let f = fresh(Keys::Hashed(HashSet::default()));
        let k = Value::Text("a".into());
        assert!(!f.may_hold(1, &k));
        assert!(
            f.may_hold(2, &k),
            "a table that is not fresh may hold anything"
        );
        assert!(!f.inserted(1, &k));
        assert!(f.may_hold(1, &k));
        assert!(!f.may_hold(1, &Value::Blob(b"a".to_vec())));
        f.forget(1);
        assert!(f.may_hold(1, &Value::Blob(b"a".to_vec())));
    }

    #[test]
    fn rising_keys_keep_only_the_last_and_one_out_of_order_is_told() {
        let t = |s: &str| Value::Text(s.into());
        let f = fresh(Keys::Rising(None));
        assert!(!f.may_hold(1, &t("a")), "nothing inserted yet");
        assert!(!f.inserted(1, &t("b")));
        assert!(!f.inserted(1, &t("c")));
        assert!(f.may_hold(1, &t("b")));
        assert!(f.may_hold(1, &t("bb")), "below the last: looked up");
        assert!(!f.may_hold(1, &t("d")), "above the last: never inserted");
        assert!(f.inserted(1, &t("a")), "out of order");
        assert!(f.inserted(1, &t("c")), "the last again is not above it");
    }
}
