//! The change clock (`lsync_clock`) and the op codes it records.
//!
//! Every live row of a tracked table is covered by exactly one row entry (a
//! range of rowids with one HLC, origin and op); shared rows may add one
//! entry per column; deleted rows leave a tombstone keyed by uuid. Each
//! entry holds cursors (`seq`): a range of n rows holds n of them.

use lsync_wire::changeset::Op;

use crate::error::{Error, Result};
use crate::schema;
use crate::sql::{Cache, Db, Value};

pub use crate::opcodes::{OP_DELETE, OP_INSERT, OP_MERGE, OP_UPDATE};

/// The op of a clock code; an unknown code reads as an update.
pub fn op_of(code: i64) -> Op {
    u8::try_from(code)
        .ok()
        .and_then(Op::from_code)
        .unwrap_or(Op::Update)
}

/// The clock code of an op.
pub fn code_of(op: Op) -> i64 {
    op.code().into()
}

/// A row entry: rowids `lo..=hi` hold the cursors `seq - (hi - lo) ..= seq`.
pub struct RowEntry {
    pub seq: i64,
    pub lo: i64,
    pub hi: i64,
    pub op: Value,
    pub hlc: Value,
    pub origin: Value,
}

/// The clock as one flush or apply writes it: cursors are allocated in
/// memory and saved once at the end.
pub struct Clock {
    db: Db,
    pub cache: Cache,
    pub self_idx: i64,
    next_seq: i64,
    hlc: Option<i64>,
    /// The row entry the last `row_clock` found. The rows of a bulk update
    /// share one entry, so each would look it up again; any write to the
    /// clock forgets it.
    last_row: std::cell::Cell<Option<FoundRow>>,
}

/// A row entry `row_clock` found: table, `lo..=hi`, HLC and origin.
#[derive(Clone, Copy)]
struct FoundRow {
    tbl: i64,
    lo: i64,
    hi: i64,
    hlc: i64,
    origin: i64,
}

impl Clock {
    pub fn open(db: Db) -> Result<Clock> {
        Ok(Clock {
            db,
            cache: Cache::new(db),
            self_idx: schema::get_i64(db, "device_idx")?,
            next_seq: schema::get_i64(db, "next_seq")?.max(1),
            hlc: None,
            last_row: std::cell::Cell::new(None),
        })
    }

    /// Allocates `n` consecutive cursors and returns the last one.
    pub fn alloc(&mut self, n: i64) -> Result<i64> {
        let last = self
            .next_seq
            .checked_add(n - 1)
            .ok_or_else(|| Error::msg("lsync: change cursor overflow"))?;
        self.next_seq = last + 1;
        Ok(last)
    }

    /// One HLC for everything folded by this flush that has none of its own.
    pub fn hlc(&mut self) -> Result<i64> {
        match self.hlc {
            Some(h) => Ok(h),
            None => {
                let h = schema::next_hlc(self.db)?;
                self.hlc = Some(h);
                Ok(h)
            }
        }
    }

    /// Persists the cursor counter. Cursors are never reused, even when the
    /// entry holding the highest one is later replaced.
    pub fn save(&self) -> Result<()> {
        schema::set(self.db, "next_seq", self.next_seq.into())
    }

    /// Adds a clock entry covering `lo..=hi` (or a tombstone when `lo` is
    /// `None`); returns its seq.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        tbl: i64,
        span: Option<(i64, i64)>,
        col: Option<&str>,
        op: i64,
        hlc: i64,
        origin: i64,
        uuid: Value,
    ) -> Result<i64> {
        self.edit();
        let len = span.map_or(1, |(lo, hi)| hi - lo + 1);
        let seq = self.alloc(len)?;
        let (lo, hi) = match span {
            Some((lo, hi)) => (Value::Integer(lo), Value::Integer(hi)),
            None => (Value::Null, Value::Null),
        };
        self.cache.run(
            "INSERT INTO lsync_clock(seq, tbl, lo, hi, col, op, hlc, origin, uuid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            &[
                seq.into(),
                tbl.into(),
                lo,
                hi,
                col.map(str::to_owned).into(),
                op.into(),
                hlc.into(),
                origin.into(),
                uuid,
            ],
        )?;
        Ok(seq)
    }

    /// Removes `rid` from the row entry that covers it, splitting a range in
    /// two. The rows left in the range keep their cursors.
    pub fn uncover(&self, tbl: i64, rid: i64) -> Result<()> {
        self.uncover_range(tbl, rid, rid)
    }

    /// The (hlc, origin) of the row entry covering `rid`.
    pub fn row_clock(&self, tbl: i64, rid: i64) -> Result<Option<(i64, i64)>> {
        if let Some(f) = self.last_row.get() {
            if f.tbl == tbl && (f.lo..=f.hi).contains(&rid) {
                return Ok(Some((f.hlc, f.origin)));
            }
        }
        let found = self.cache.with(
            "SELECT lo, hi, hlc, origin FROM lsync_clock
             WHERE tbl = ?1 AND col IS NULL AND lo <= ?2 ORDER BY lo DESC LIMIT 1",
            &[tbl.into(), rid.into()],
            |s| {
                Ok((s.step()? && s.i64(1) >= rid).then(|| FoundRow {
                    tbl,
                    lo: s.i64(0),
                    hi: s.i64(1),
                    hlc: s.i64(2),
                    origin: s.i64(3),
                }))
            },
        )?;
        self.last_row.set(found);
        Ok(found.map(|f| (f.hlc, f.origin)))
    }

    /// The clock is about to change: what `row_clock` found may not hold.
    fn edit(&self) {
        self.last_row.set(None);
    }

    /// The (hlc, origin) of each column of `rid` that has its own entry.
    pub fn column_clocks(&self, tbl: i64, rid: i64) -> Result<Vec<(String, i64, i64)>> {
        self.cache.with(
            "SELECT col, hlc, origin FROM lsync_clock WHERE tbl = ?1 AND col IS NOT NULL AND lo = ?2",
            &[tbl.into(), rid.into()],
            |s| {
                let mut out = Vec::new();
                while s.step()? {
                    out.push((s.text(0).unwrap_or_default(), s.i64(1), s.i64(2)));
                }
                Ok(out)
            },
        )
    }

    /// Removes the tombstone of a row that is live again.
    pub fn drop_tombstone(&self, tbl: i64, uuid: &Value) -> Result<()> {
        self.edit();
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND uuid = ?2 AND op = 2",
            &[tbl.into(), uuid.clone()],
        )
    }

    /// Gives a shared row a new creation clock (a newer re-insert): its row
    /// entry takes the clock, and column entries older than it go.
    pub fn rebase_row(&mut self, tbl: i64, rid: i64, hlc: i64, origin: i64) -> Result<()> {
        self.edit();
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND col IS NOT NULL AND lo = ?2 AND hlc < ?3",
            &[tbl.into(), rid.into(), hlc.into()],
        )?;
        self.renew_row(tbl, rid, hlc, origin)
    }

    /// Records row `rid`'s entry again at clock (`hlc`, `origin`), after
    /// everything in the clock, with its column entries after it.
    pub fn renew_row(&mut self, tbl: i64, rid: i64, hlc: i64, origin: i64) -> Result<()> {
        self.edit();
        self.uncover(tbl, rid)?;
        self.add(
            tbl,
            Some((rid, rid)),
            None,
            OP_INSERT,
            hlc,
            origin,
            Value::Null,
        )?;
        // Newer column entries move after the row entry: a reader always gets
        // a row's column entries after the row entry that carries the values.
        for (col, h, o) in self.column_clocks(tbl, rid)? {
            self.cover_column(tbl, rid, &col, h, o)?;
        }
        Ok(())
    }

    /// The row entries that cover any of the rowids `lo..=hi`: the one that
    /// starts at or before `lo` (if it reaches it), and those that start
    /// inside the range, both found through the index.
    pub fn row_entries(&self, tbl: i64, lo: i64, hi: i64) -> Result<Vec<RowEntry>> {
        self.cache.with(
            "SELECT * FROM (SELECT seq, lo, hi, op, hlc, origin FROM lsync_clock
               WHERE tbl = ?1 AND col IS NULL AND lo <= ?2 ORDER BY lo DESC LIMIT 1)
             WHERE hi >= ?2
             UNION ALL
             SELECT seq, lo, hi, op, hlc, origin FROM lsync_clock
             WHERE tbl = ?1 AND col IS NULL AND lo > ?2 AND lo <= ?3",
            &[tbl.into(), lo.into(), hi.into()],
            |s| {
                let mut out = Vec::new();
                while s.step()? {
                    out.push(RowEntry {
                        seq: s.i64(0),
                        lo: s.i64(1),
                        hi: s.i64(2),
                        op: s.value(3),
                        hlc: s.value(4),
                        origin: s.value(5),
                    });
                }
                Ok(out)
            },
        )
    }

    /// Removes the rowids `lo..=hi` from every row entry that covers them,
    /// keeping the parts outside with their cursors.
    pub fn uncover_range(&self, tbl: i64, lo: i64, hi: i64) -> Result<()> {
        self.edit();
        for e in self.row_entries(tbl, lo, hi)? {
            self.cache
                .run("DELETE FROM lsync_clock WHERE seq = ?1", &[e.seq.into()])?;
            let keep = |seq: i64, a: i64, b: i64| {
                self.cache.run(
                    "INSERT INTO lsync_clock(seq, tbl, lo, hi, col, op, hlc, origin)
                     VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7)",
                    &[
                        seq.into(),
                        tbl.into(),
                        a.into(),
                        b.into(),
                        e.op.clone(),
                        e.hlc.clone(),
                        e.origin.clone(),
                    ],
                )
            };
            if e.lo < lo {
                keep(e.seq - (e.hi - lo + 1), e.lo, lo - 1)?;
            }
            if e.hi > hi {
                keep(e.seq, hi + 1, e.hi)?;
            }
        }
        Ok(())
    }

    /// Replaces the coverage of rows `lo..=hi` with one new range entry.
    pub fn cover_rows(
        &mut self,
        tbl: i64,
        lo: i64,
        hi: i64,
        op: i64,
        hlc: i64,
        origin: i64,
    ) -> Result<i64> {
        self.edit();
        self.uncover_range(tbl, lo, hi)?;
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND col IS NOT NULL AND lo BETWEEN ?2 AND ?3",
            &[tbl.into(), lo.into(), hi.into()],
        )?;
        self.add(tbl, Some((lo, hi)), None, op, hlc, origin, Value::Null)
    }

    /// Drops the per-column entries of a row (shared tables).
    pub fn drop_columns(&self, tbl: i64, rid: i64) -> Result<()> {
        self.edit();
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND col IS NOT NULL AND lo = ?2",
            &[tbl.into(), rid.into()],
        )
    }

    /// Replaces whatever row entry covers `rid` with a new single-row entry.
    #[allow(clippy::too_many_arguments)]
    pub fn cover_row(&mut self, tbl: i64, rid: i64, op: i64, hlc: i64, origin: i64) -> Result<i64> {
        self.edit();
        self.uncover(tbl, rid)?;
        self.drop_columns(tbl, rid)?;
        self.add(tbl, Some((rid, rid)), None, op, hlc, origin, Value::Null)
    }

    /// Records a tombstone for a deleted row, replacing an older one.
    pub fn tombstone(&mut self, tbl: i64, uuid: Value, hlc: i64, origin: i64) -> Result<i64> {
        self.edit();
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND uuid = ?2 AND op = 2",
            &[tbl.into(), uuid.clone()],
        )?;
        self.add(tbl, None, None, OP_DELETE, hlc, origin, uuid)
    }

    /// Records a new value of one column of a shared row.
    pub fn cover_column(
        &mut self,
        tbl: i64,
        rid: i64,
        col: &str,
        hlc: i64,
        origin: i64,
    ) -> Result<i64> {
        self.edit();
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND col = ?2 AND lo = ?3",
            &[tbl.into(), col.into(), rid.into()],
        )?;
        self.add(
            tbl,
            Some((rid, rid)),
            Some(col),
            OP_UPDATE,
            hlc,
            origin,
            Value::Null,
        )
    }
}
