//! Tables that were empty when an apply began. Their rows all come from
//! this apply, so a key that the apply has not inserted is not there: the
//! lookup of a chunk's keys, which would find none of them (a bulk apply's
//! every chunk after the first), is skipped for those keys.
//!
//! What is kept is a 64-bit hash of each key inserted, so a key whose hash
//! is not kept is certainly absent, and a collision costs only the lookup
//! it would have cost anyway. Rows that come by another way (an app
//! trigger, a quarantined change retried, a merge renaming a row) make the
//! table an ordinary one for the rest of the apply.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet, FxHasher};

use crate::catalog::Table;
use crate::error::Result;
use crate::ident::qm;
use crate::sql::{Db, Value};

/// Keys per table past which a table stops being tracked (about 18 MB of
/// hashes per million keys): a bigger apply looks its keys up again.
const MAX_KEYS: usize = 4 << 20;

/// The fresh tables of one apply, shared by every merge of its chunks.
#[derive(Clone, Default)]
pub struct Fresh(Rc<RefCell<HashMap<i64, HashSet<u64>>>>);

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
                fresh.insert(t.id, HashSet::default());
            }
        }
        Ok(Fresh(Rc::new(RefCell::new(fresh))))
    }

    /// Whether row `key` of table `tbl` may be there: false only when the
    /// table is fresh and the key was never inserted.
    pub fn may_hold(&self, tbl: i64, key: &Value) -> bool {
        self.0
            .borrow()
            .get(&tbl)
            .is_none_or(|keys| keys.contains(&hash(key)))
    }

    /// Row `key` was inserted into table `tbl`.
    pub fn inserted(&self, tbl: i64, key: &Value) {
        let mut all = self.0.borrow_mut();
        if let Some(keys) = all.get_mut(&tbl) {
            if keys.len() >= MAX_KEYS {
                all.remove(&tbl);
            } else {
                keys.insert(hash(key));
            }
        }
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

    #[test]
    fn a_key_is_absent_until_inserted_and_text_is_not_a_blob() {
        let f = Fresh(Rc::new(RefCell::new(HashMap::from_iter([(
            1,
            HashSet::default(),
        )]))));
        let k = Value::Text("a".into());
        assert!(!f.may_hold(1, &k));
        assert!(
            f.may_hold(2, &k),
            "a table that is not fresh may hold anything"
        );
        f.inserted(1, &k);
        assert!(f.may_hold(1, &k));
        assert!(!f.may_hold(1, &Value::Blob(b"a".to_vec())));
        f.forget(1);
        assert!(f.may_hold(1, &Value::Blob(b"a".to_vec())));
    }
}
