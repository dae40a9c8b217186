//! Writing rows and their clock entries: cached statements per column set,
//! and runs of consecutive rows that become one range entry.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::{costly, Applier};
use crate::catalog::Table;
use crate::error::Result;
use crate::ident::{q, qm};
use crate::sql::{Stmt, Value, ValueRef};

/// Consecutive rows from one origin at one HLC, recorded as one range:
/// new rows, or existing rows whose old coverage it replaces.
pub(super) struct Run {
    tbl: i64,
    lo: i64,
    hi: i64,
    hlc: i64,
    origin: i64,
    op: i64,
    replace: bool,
}

impl Applier {
    /// The bits of `vals`' columns among `t`'s.
    pub(super) fn mask(&self, t: &Table, vals: &[(&Arc<str>, Cow<Value>)]) -> u64 {
        vals.iter().fold(0, |m, (c, _)| m | self.col(t, c).bit)
    }

    pub(super) fn insert(
        &mut self,
        t: &Table,
        pk: &Value,
        vals: &[(&Arc<str>, Cow<Value>)],
    ) -> Result<i64> {
        let mask = self.mask(t, vals);
        let db = self.db;
        // A table whose ids lsync keeps gets the row, then its id.
        let id_col = t.uuid_col();
        let stmt = cached(&mut self.inserts, (t.id, mask), || {
            let cols: Vec<Arc<str>> = id_col
                .map(Arc::from)
                .into_iter()
                .chain(vals.iter().map(|(c, _)| Arc::clone(c)))
                .collect();
            db.prepare(&super::batch::insert_sql(&t.name, &cols, 1))
        })?;
        let own_id = id_col.map(|_| pk);
        let r = stmt.run_borrowed(
            own_id
                .into_iter()
                .chain(vals.iter().map(|(_, v)| v.as_ref())),
        );
        if let Err(e) = r {
            let e = e.in_apply(&format!("inserting into '{}'", t.name));
            return Err(self.clash_or(t, None, Some(pk), vals, e));
        }
        if self.fresh.inserted(t.id, pk) {
            self.fresh.read_back(db, t)?;
        }
        let rid = crate::rids::inserted(db, t, pk)?;
        if own_id.is_none() {
            crate::gids::keep(db, t, rid, pk)?;
        }
        Ok(rid)
    }

    pub(super) fn write(
        &mut self,
        t: &Table,
        rid: i64,
        vals: &[(&Arc<str>, Cow<Value>)],
    ) -> Result<()> {
        if vals.is_empty() {
            return Ok(());
        }
        let mask = self.mask(t, vals);
        // Write only the costly columns whose value changes: an unchanged
        // indexed or FK column then costs no index update and no FK check.
        let costly = self.costly_at(t, mask, vals)?;
        let changed = match &costly {
            Some(costly) if !costly.contains(&true) => vals.iter().collect(),
            _ => self.changed_by_reading(t, rid, mask, vals, costly.as_deref())?,
        };
        if changed.is_empty() {
            return Ok(());
        }
        self.update(t, rid, changed, vals)
    }

    /// The columns of `vals` whose value differs from the row's, read first;
    /// with `costly`, only the costly ones are read, and the others count
    /// as changed (writing them costs no more than reading them).
    fn changed_by_reading<'v>(
        &mut self,
        t: &Table,
        rid: i64,
        mask: u64,
        vals: &'v [(&Arc<str>, Cow<Value>)],
        costly: Option<&[bool]>,
    ) -> Result<Vec<&'v (&'v Arc<str>, Cow<'v, Value>)>> {
        let db = self.db;
        let read_at = |i: usize| costly.is_none_or(|c| c[i]);
        let read = cached(&mut self.reads, (t.id, mask), || {
            let cols: Vec<String> = (vals.iter().enumerate())
                .filter(|(i, _)| read_at(*i))
                .map(|(_, (c, _))| q(c))
                .collect();
            db.prepare(&format!(
                "SELECT {} FROM {} WHERE rowid = ?1",
                cols.join(", "),
                t.src()
            ))
        })?;
        read.bind(1, &rid.into())?;
        // Compared where SQLite holds the row, without copying it.
        let changed = read.step().map(|row| {
            let mut at = 0..;
            vals.iter()
                .enumerate()
                .filter(|(i, (_, v))| {
                    !read_at(*i) || !row || !same(&read.value_ref(at.next().unwrap_or(0)), v)
                })
                .map(|(_, cv)| cv)
                .collect()
        });
        read.reset();
        changed
    }

    /// Which of the columns of `mask` (in `vals`' order) are costly
    /// (`costly`), in a bulk apply while no trigger fires: only then may a
    /// column be written without reading the row first (an `UPDATE OF`
    /// trigger would see a column written that did not change). None
    /// otherwise.
    fn costly_at(
        &mut self,
        t: &Table,
        mask: u64,
        vals: &[(&Arc<str>, Cow<Value>)],
    ) -> Result<Option<Rc<[bool]>>> {
        if !self.bulk.contains(&t.id) {
            return Ok(None);
        }
        if let Some(b) = self.costly.get(&(t.id, mask)) {
            return Ok(Some(b.clone()));
        }
        let c = costly::costly(self.db, t)?;
        let flags: Rc<[bool]> = vals
            .iter()
            .map(|(col, _)| costly::any_costly(&c, std::iter::once(&***col)))
            .collect();
        self.costly.insert((t.id, mask), flags.clone());
        Ok(Some(flags))
    }

    /// `UPDATE OR FAIL` of the `changed` columns of row `rid`.
    fn update(
        &mut self,
        t: &Table,
        rid: i64,
        changed: Vec<&(&Arc<str>, Cow<Value>)>,
        vals: &[(&Arc<str>, Cow<Value>)],
    ) -> Result<()> {
        let db = self.db;
        let mask = changed.iter().fold(0, |m, (c, _)| m | self.col(t, c).bit);
        let stmt = cached(&mut self.updates, (t.id, mask), || {
            let sets: Vec<String> = changed
                .iter()
                .enumerate()
                .map(|(i, (c, _))| format!("{} = ?{}", q(c), i + 2))
                .collect();
            db.prepare(&format!(
                "UPDATE OR FAIL {} SET {} WHERE {}",
                qm(&t.name),
                sets.join(", "),
                t.rid_is("?1")
            ))
        })?;
        let key = Value::Integer(rid);
        let r =
            stmt.run_borrowed(std::iter::once(&key).chain(changed.iter().map(|(_, v)| v.as_ref())));
        r.map_err(|e| {
            let e = e.in_apply(&format!("updating '{}'", t.name));
            self.clash_or(t, Some(rid), None, vals, e)
        })
    }

    pub(super) fn extend_run(
        &mut self,
        tbl: i64,
        rid: i64,
        hlc: i64,
        origin: i64,
        op: i64,
        replace: bool,
    ) -> Result<()> {
        if let Some(r) = &mut self.run {
            if r.tbl == tbl
                && r.hi + 1 == rid
                && r.hlc == hlc
                && r.origin == origin
                && r.op == op
                && r.replace == replace
            {
                r.hi = rid;
                return Ok(());
            }
        }
        self.end_run()?;
        self.run = Some(Run {
            tbl,
            lo: rid,
            hi: rid,
            hlc,
            origin,
            op,
            replace,
        });
        Ok(())
    }

    pub(super) fn end_run(&mut self) -> Result<()> {
        if let Some(r) = self.run.take() {
            if r.replace {
                self.clock
                    .cover_rows(r.tbl, r.lo, r.hi, r.op, r.hlc, r.origin)?;
            } else {
                self.clock.add(
                    r.tbl,
                    Some((r.lo, r.hi)),
                    None,
                    r.op,
                    r.hlc,
                    r.origin,
                    Value::Null,
                )?;
            }
        }
        Ok(())
    }

    /// Ends a pending run that holds `rid`: the clock lookups that follow
    /// must see it.
    pub(super) fn end_run_holding(&mut self, tbl: i64, rid: i64) -> Result<()> {
        if self
            .run
            .as_ref()
            .is_some_and(|r| r.tbl == tbl && (r.lo..=r.hi).contains(&rid))
        {
            self.end_run()?;
        }
        Ok(())
    }
}

/// Whether a column as SQLite holds it is `v`, as `Value`'s own equality
/// has it (an integer is not the real of the same number).
fn same(cur: &ValueRef, v: &Value) -> bool {
    match (cur, v) {
        (ValueRef::Null, Value::Null) => true,
        (ValueRef::Integer(a), Value::Integer(b)) => a == b,
        (ValueRef::Real(a), Value::Real(b)) => a == b,
        (ValueRef::Text(a), Value::Text(b)) => **a == **b,
        (ValueRef::Blob(a), Value::Blob(b)) => **a == **b,
        (ValueRef::Uuid(_), _) => cur.to_owned() == *v,
        _ => false,
    }
}

/// The statement cached under `key`, prepared by `prepare` the first time.
/// Statements bind by position: within one apply every change of a table
/// lists its columns in the changeset's order, so a column set fixes it
/// (`check_schema` refuses a table described twice, or a column named twice).
pub(super) fn cached<K: std::hash::Hash + Eq>(
    cache: &mut HashMap<K, Stmt>,
    key: K,
    prepare: impl FnOnce() -> Result<Stmt>,
) -> Result<&mut Stmt> {
    match cache.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(prepare()?)),
    }
}
