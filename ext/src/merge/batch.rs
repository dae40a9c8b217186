//! New rows inserted many to a statement. A one-row INSERT pays for its
//! statement on every row: opening and closing the cursors of the table,
//! its indexes and its FK targets, and halting the VM. A statement of many
//! rows pays once for all of them: about 5k instructions fewer per row,
//! a third of the insert (callgrind, 200k rows of a two-index table).
//!
//! A queued row's rowid is predicted, so that what follows it in the
//! changeset (a child's FK, the clock's run) can use it before the
//! statement runs: SQLite numbers new rows from the largest rowid (or the
//! AUTOINCREMENT sequence) up, one by one. The flush checks that it did.
//! Any failure of a batch, a refused row or a rowid not as predicted,
//! fails the pass, and the merge runs it again one row at a time, which
//! finds the row to refuse.
//!
//! Only while no trigger fires (an app trigger could insert rows of its
//! own), only into rowid tables, and only for a table with enough changes
//! in the changeset for the rowid lookup to pay.

use std::borrow::Cow;
use std::sync::Arc;

use lsync_wire::changeset::{Change, Op};

use super::links::Link;
use super::Applier;
use crate::catalog::{Mode, Table};
use crate::clock::code_of;
use crate::error::{Error, Result};
use crate::ident::{q, qm};
use crate::sql::Value;

/// Rows per statement, at most. A table with an FK (not DEFERRABLE) makes
/// SQLite open a statement journal for an INSERT of many rows, which
/// copies the pages the statement finds and changes (the right edge of
/// each B-tree) once per statement: more rows to a statement, fewer copies.
const ROWS: usize = 256;
/// Changes of a table in one changeset from which its new rows are batched.
pub(super) const MIN_CHANGES: usize = 8;
/// Above this rowid nothing is predicted: SQLite may number at random.
const ROWID_CEILING: i64 = i64::MAX - (1 << 32);

/// Rows queued for one statement: one table, one column list.
pub(super) struct Batch {
    tbl: i64,
    name: Arc<str>,
    mask: u64,
    /// The columns bound per row, in order (the uuid column first).
    cols: Vec<Arc<str>>,
    /// The rowid predicted for the first row.
    first: i64,
    rows: usize,
    values: Slots,
}

/// The values bound to a batch's statement. Slots are overwritten in place
/// from one batch to the next, so a text value reuses the buffer of the one
/// before it instead of a new allocation (and a free) per value: about a
/// tenth of a bulk apply's instructions went to the allocator.
#[derive(Default)]
pub(super) struct Slots {
    values: Vec<Value>,
    used: usize,
}

impl Slots {
    fn put(&mut self, v: &Value) {
        match self.values.get_mut(self.used) {
            Some(slot) => assign(slot, v),
            None => self.values.push(v.clone()),
        }
        self.used += 1;
    }

    fn filled(&self) -> &[Value] {
        &self.values[..self.used]
    }

    /// Empty again, its buffers kept.
    fn emptied(mut self) -> Slots {
        self.used = 0;
        self
    }
}

/// `*slot = v.clone()`, in the slot's own buffer when both are text or
/// both are blobs.
fn assign(slot: &mut Value, v: &Value) {
    match (slot, v) {
        (Value::Text(s), Value::Text(n)) => {
            s.clear();
            s.push_str(n);
        }
        (Value::Blob(b), Value::Blob(n)) => {
            b.clear();
            b.extend_from_slice(n);
        }
        (slot, v) => *slot = v.clone(),
    }
}

impl Applier {
    /// Whether a change is a new row that a batch can take.
    pub(super) fn batchable(
        &self,
        t: &Table,
        c: &Change,
        existing: Option<i64>,
        deferred: &[Link],
    ) -> bool {
        self.bulk.contains(&t.id)
            && existing.is_none()
            && deferred.is_empty()
            && (c.op == Op::Insert || (c.op == Op::Update && t.mode == Mode::DeviceOwned))
            && !self.parked.contains(&t.id)
            && !self.clashed.contains(&t.id)
            && !self.tombs.get(&t.name).is_some_and(|m| m.contains(&c.pk))
    }

    /// Queues a new row (`batchable` said so) and does what inserting it
    /// entails; false when its rowid cannot be predicted.
    pub(super) fn queue(
        &mut self,
        t: &Table,
        c: &Change,
        origin: i64,
        vals: &[(&Arc<str>, Cow<Value>)],
        mask: u64,
    ) -> Result<bool> {
        // `vals` are the change's columns, in its order; `mask` their bits.
        if self
            .batch
            .as_ref()
            .is_some_and(|b| b.tbl != t.id || b.mask != mask)
        {
            self.flush_batch()?;
        }
        if self.batch.is_none() {
            if vals.is_empty() && t.uuid_col().is_none() {
                // DEFAULT VALUES takes one row only.
                return Ok(false);
            }
            let Some(first) = self.next_rowid(t)? else {
                return Ok(false);
            };
            let cols: Vec<Arc<str>> = t
                .uuid_col()
                .map(Arc::from)
                .into_iter()
                .chain(vals.iter().map(|(c, _)| Arc::clone(c)))
                .collect();
            self.batch = Some(Batch {
                tbl: t.id,
                name: t.name.clone(),
                mask,
                values: std::mem::take(&mut self.spare).emptied(),
                cols,
                first,
                rows: 0,
            });
        }
        let Some(b) = self.batch.as_mut() else {
            return Ok(false);
        };
        let rid = b.first + b.rows as i64;
        if t.uuid_col().is_some() {
            b.values.put(&c.pk);
        }
        for (_, v) in vals {
            b.values.put(v);
        }
        b.rows += 1;
        let full = b.rows >= ROWS.min(self.max_params / b.cols.len().max(1)).max(1);
        if self.fresh.inserted(t.id, &c.pk) {
            self.flush_batch()?;
            self.fresh.read_back(self.db, t)?;
        }
        if t.uuid_col().is_none() {
            crate::gids::keep(self.db, t, rid, &c.pk)?;
        }
        self.extend_run(t.id, rid, c.hlc, origin, code_of(c.op), false)?;
        self.note_rid(t, &c.pk, rid);
        self.report.applied += 1;
        if full {
            self.flush_batch()?;
        }
        Ok(true)
    }

    /// Before a change that does not go into a batch: it reads the table,
    /// so queued rows go in first, and it may write rows, so the next
    /// batch's rowids are looked up again.
    pub(super) fn unbatched(&mut self) -> Result<()> {
        self.flush_batch()?;
        self.next_rid = None;
        Ok(())
    }

    /// Inserts the queued rows, and checks that SQLite numbered them as
    /// predicted.
    pub(super) fn flush_batch(&mut self) -> Result<()> {
        let Some(b) = self.batch.take() else {
            return Ok(());
        };
        let db = self.db;
        let stmt = super::write::cached(&mut self.batches, (b.tbl, b.mask, b.rows), || {
            db.prepare(&insert_sql(&b.name, &b.cols, b.rows))
        })?;
        let ran = stmt.run_borrowed(b.values.filled());
        let last = b.first + b.rows as i64 - 1;
        let r = match ran {
            Err(e) => Err(e.in_apply(&format!("inserting into '{}'", b.name))),
            Ok(()) if db.last_insert_rowid() != last || db.changes() != b.rows as i64 => {
                Err(Error::msg(format!(
                    "lsync_apply: the rows inserted into '{}' were not numbered as predicted",
                    b.name
                )))
            }
            Ok(()) => {
                self.next_rid = Some((b.tbl, last + 1));
                Ok(())
            }
        };
        self.spare = b.values;
        // The pass is run again one row at a time.
        self.unbatch |= r.is_err();
        r
    }

    /// The rowid SQLite gives the next new row of `t`, if it is predictable.
    fn next_rowid(&mut self, t: &Table) -> Result<Option<i64>> {
        // After a batch, unless a row went in another way since.
        if let Some((tbl, next)) = self.next_rid {
            if tbl == t.id {
                return Ok(Some(next));
            }
        }
        let seq = match self.has_sequence {
            Some(s) => s,
            None => {
                let s = self.db.query_i64(
                    "SELECT count(*) FROM main.sqlite_schema WHERE name = 'sqlite_sequence'",
                    &[],
                )? == Some(1);
                self.has_sequence = Some(s);
                s
            }
        };
        let top = self
            .db
            .query_i64(&format!("SELECT max(rowid) FROM {}", qm(&t.name)), &[])?
            .unwrap_or(0);
        let top = if seq {
            let s = self.db.query_i64(
                "SELECT seq FROM main.sqlite_sequence WHERE name = ?1 COLLATE NOCASE",
                &[(*t.name).into()],
            )?;
            top.max(s.unwrap_or(0))
        } else {
            top
        };
        Ok((top < ROWID_CEILING).then_some(top + 1))
    }
}

/// `INSERT OR FAIL` of `rows` rows of `cols` into table `name`; one row is
/// the one-row insert. OR FAIL: a one-row insert needs no statement journal
/// (the apply's savepoint makes it all-or-nothing); a multi-row one into a
/// table with an FK gets one all the same (see `ROWS`).
pub(super) fn insert_sql(name: &str, cols: &[Arc<str>], rows: usize) -> String {
    if cols.is_empty() {
        return format!("INSERT OR FAIL INTO {} DEFAULT VALUES", qm(name));
    }
    let names: Vec<String> = cols.iter().map(|c| q(c)).collect();
    // Anonymous marks, numbered in order: SQLite looks each `?NNN` up in
    // a list of those seen, which makes preparing many rows quadratic.
    let row = format!("({})", vec!["?"; cols.len()].join(","));
    format!(
        "INSERT OR FAIL INTO {}({}) VALUES {}",
        qm(name),
        names.join(", "),
        vec![row; rows].join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots written over by the next batch hold exactly its values, of
    /// whatever kind each slot held before, and no more of them.
    #[test]
    fn slots_reused_hold_only_the_next_batchs_values() {
        let first = [
            Value::Text("a long name, longer than the next".into()),
            Value::Integer(7),
            Value::Blob(vec![1, 2, 3]),
            Value::Null,
            Value::Text("dropped".into()),
        ];
        let second = [
            Value::Text("short".into()),
            Value::Text("was an integer".into()),
            Value::Blob(vec![9]),
            Value::Real(1.5),
        ];
        let mut slots = Slots::default();
        first.iter().for_each(|v| slots.put(v));
        assert_eq!(slots.filled(), first);
        let mut slots = slots.emptied();
        assert!(slots.filled().is_empty());
        second.iter().for_each(|v| slots.put(v));
        assert_eq!(slots.filled(), second);
    }
}
