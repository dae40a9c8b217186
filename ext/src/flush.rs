//! Folding captured changes into the change clock (`lsync_clock`).
//!
//! Triggers only leave cheap, bounded marks (`lsync_dirty`, `lsync_deleted`,
//! and rows above the high-water mark). `flush` turns them into clock entries
//! with cursors (`seq`), keeping the invariant that every live row of a
//! tracked table is covered by exactly one row entry. A bulk insert becomes a
//! single range entry, so sync metadata does not grow per inserted row.

use crate::error::{Error, Result};
use crate::ident::{q, qm};
use crate::schema;
use crate::sql::{Cache, Db, Value};
use crate::track::{self, Mode, Table};

pub const OP_INSERT: i64 = 0;
pub const OP_UPDATE: i64 = 1;
pub const OP_DELETE: i64 = 2;

/// State shared by one flush across tables.
pub struct Clock {
    db: Db,
    pub cache: Cache,
    pub self_idx: i64,
    next_seq: i64,
    hlc: Option<i64>,
}

impl Clock {
    pub fn open(db: Db) -> Result<Clock> {
        Ok(Clock {
            db,
            cache: Cache::new(db),
            self_idx: schema::get_i64(db, "device_idx")?,
            next_seq: schema::get_i64(db, "next_seq")?.max(1),
            hlc: None,
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
    fn hlc(&mut self) -> Result<i64> {
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
        self.cache.with(
            "SELECT hi, hlc, origin FROM lsync_clock
             WHERE tbl = ?1 AND col IS NULL AND lo <= ?2 ORDER BY lo DESC LIMIT 1",
            &[tbl.into(), rid.into()],
            |s| Ok((s.step()? && s.i64(0) >= rid).then(|| (s.i64(1), s.i64(2)))),
        )
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
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND uuid = ?2",
            &[tbl.into(), uuid.clone()],
        )
    }

    /// Gives a shared row a new creation clock (a newer re-insert): its row
    /// entry takes the clock, and column entries older than it go.
    pub fn rebase_row(&mut self, tbl: i64, rid: i64, hlc: i64, origin: i64) -> Result<()> {
        self.uncover(tbl, rid)?;
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND col IS NOT NULL AND lo = ?2 AND hlc < ?3",
            &[tbl.into(), rid.into(), hlc.into()],
        )?;
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

    /// Removes the rowids `lo..=hi` from every row entry that covers them,
    /// keeping the parts outside with their cursors.
    pub fn uncover_range(&self, tbl: i64, lo: i64, hi: i64) -> Result<()> {
        // The entry that starts at or before `lo` (if it reaches it), and
        // those that start inside the range: both found through the index.
        let overlapping = self.cache.with(
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
                    out.push((
                        s.i64(0),
                        s.i64(1),
                        s.i64(2),
                        [s.value(3), s.value(4), s.value(5)],
                    ));
                }
                Ok(out)
            },
        )?;
        for (seq, elo, ehi, rest) in overlapping {
            self.cache
                .run("DELETE FROM lsync_clock WHERE seq = ?1", &[seq.into()])?;
            let keep = |seq: i64, a: i64, b: i64| {
                self.cache.run(
                    "INSERT INTO lsync_clock(seq, tbl, lo, hi, col, op, hlc, origin)
                     VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7)",
                    &[
                        seq.into(),
                        tbl.into(),
                        a.into(),
                        b.into(),
                        rest[0].clone(),
                        rest[1].clone(),
                        rest[2].clone(),
                    ],
                )
            };
            if elo < lo {
                keep(seq - (ehi - lo + 1), elo, lo - 1)?;
            }
            if ehi > hi {
                keep(seq, hi + 1, ehi)?;
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
        self.uncover_range(tbl, lo, hi)?;
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND col IS NOT NULL AND lo BETWEEN ?2 AND ?3",
            &[tbl.into(), lo.into(), hi.into()],
        )?;
        self.add(tbl, Some((lo, hi)), None, op, hlc, origin, Value::Null)
    }

    /// Drops the per-column entries of a row (shared tables).
    pub fn drop_columns(&self, tbl: i64, rid: i64) -> Result<()> {
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND col IS NOT NULL AND lo = ?2",
            &[tbl.into(), rid.into()],
        )
    }

    /// Replaces whatever row entry covers `rid` with a new single-row entry.
    #[allow(clippy::too_many_arguments)]
    pub fn cover_row(&mut self, tbl: i64, rid: i64, op: i64, hlc: i64, origin: i64) -> Result<i64> {
        self.uncover(tbl, rid)?;
        self.drop_columns(tbl, rid)?;
        self.add(tbl, Some((rid, rid)), None, op, hlc, origin, Value::Null)
    }

    /// Records a tombstone for a deleted row, replacing an older one.
    pub fn tombstone(&mut self, tbl: i64, uuid: Value, hlc: i64, origin: i64) -> Result<i64> {
        self.cache.run(
            "DELETE FROM lsync_clock WHERE tbl = ?1 AND uuid = ?2",
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

/// Folds all pending captures of all tracked tables. Returns the number of
/// pending marks and new rows folded.
pub fn flush(db: Db) -> Result<i64> {
    schema::ensure(db)?;
    db.savepoint("lsync_flush", || {
        let mut clock = Clock::open(db)?;
        let mut folded = 0;
        for t in track::load_all(db)? {
            folded += flush_table(db, &t, &mut clock)?;
        }
        // Nothing folded, nothing written: a no-op flush must not commit,
        // or every reader polling data_version would wake up for nothing.
        if folded > 0 {
            clock.save()?;
        }
        Ok(folded)
    })
}

fn flush_table(db: Db, t: &Table, clock: &mut Clock) -> Result<i64> {
    if db
        .query_i64(
            "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
            &[(*t.name).into()],
        )?
        .is_none()
    {
        crate::bail!(
            "lsync: the tracked table '{0}' no longer exists; run SELECT lsync_untrack('{0}') to stop tracking it",
            t.name
        );
    }
    let max_rid = db
        .query_i64(&format!("SELECT max(rowid) FROM {}", qm(&t.name)), &[])?
        .unwrap_or(0);
    let pending = db
        .query_i64(
            "SELECT (SELECT count(*) FROM lsync_dirty WHERE tbl = ?1)
                  + (SELECT count(*) FROM lsync_deleted WHERE tbl = ?1)",
            &[t.id.into()],
        )?
        .unwrap_or(0);
    if pending == 0 && max_rid == t.hwm {
        return Ok(0);
    }
    let me = clock.self_idx;

    // Deletes first: a rowid freed by a delete may already hold a new row.
    let mut s =
        db.prepare("SELECT uuid, rid, hlc FROM lsync_deleted WHERE tbl = ?1 ORDER BY hlc")?;
    s.bind(1, &t.id.into())?;
    let mut deleted = Vec::new();
    while s.step()? {
        deleted.push((s.value(0), s.i64(1), s.i64(2)));
    }
    drop(s);
    for (uuid, rid, hlc) in deleted {
        clock.uncover(t.id, rid)?;
        clock.drop_columns(t.id, rid)?;
        clock.tombstone(t.id, uuid, hlc, me)?;
    }

    let mut s =
        db.prepare("SELECT rid, op, hlc, cols FROM lsync_dirty WHERE tbl = ?1 ORDER BY rid")?;
    s.bind(1, &t.id.into())?;
    let mut dirty = Vec::new();
    while s.step()? {
        dirty.push((s.i64(0), s.i64(1), s.i64(2), s.i64(3)));
    }
    drop(s);
    let mut reinserted = false;
    // Updated device-owned rows with consecutive rowids fold into one range
    // entry; its HLC is the newest of theirs, which keeps every row's version
    // increasing (only the owner writes them).
    let mut run: Option<(i64, i64, i64)> = None;
    for (rid, op, hlc, cols) in dirty {
        // Rows above the mark are folded as new rows below.
        if rid > t.hwm {
            continue;
        }
        if op == OP_INSERT {
            reinserted = true;
        }
        match (t.mode, op) {
            (Mode::Shared, OP_UPDATE) => {
                for (i, col) in t.columns.iter().enumerate() {
                    if cols & (1 << i) != 0 {
                        clock.cover_column(t.id, rid, col, hlc, me)?;
                    }
                }
            }
            (Mode::DeviceOwned, OP_UPDATE) => {
                run = match run {
                    Some((lo, hi, h)) if hi + 1 == rid => Some((lo, rid, h.max(hlc))),
                    Some((lo, hi, h)) => {
                        clock.cover_rows(t.id, lo, hi, OP_UPDATE, h, me)?;
                        Some((rid, rid, hlc))
                    }
                    None => Some((rid, rid, hlc)),
                };
            }
            _ => {
                clock.cover_row(t.id, rid, op, hlc, me)?;
            }
        }
    }
    if let Some((lo, hi, h)) = run {
        clock.cover_rows(t.id, lo, hi, OP_UPDATE, h, me)?;
    }

    if max_rid > t.hwm {
        let hlc = clock.hlc()?;
        for (lo, hi) in new_row_runs(db, t)? {
            clock.add(t.id, Some((lo, hi)), None, OP_INSERT, hlc, me, Value::Null)?;
        }
        reinserted = true;
    }
    if reinserted {
        // A uuid that was deleted and inserted again is live: drop its tombstone.
        db.run(
            &format!(
                "DELETE FROM lsync_clock WHERE tbl = ?1 AND uuid IS NOT NULL
                   AND uuid IN (SELECT {u} FROM {t})",
                u = q(&t.uuid_col),
                t = qm(&t.name)
            ),
            &[t.id.into()],
        )?;
    }
    db.run(
        "UPDATE lsync_tables SET hwm = ?2 WHERE id = ?1",
        &[t.id.into(), max_rid.into()],
    )?;
    db.run("DELETE FROM lsync_dirty WHERE tbl = ?1", &[t.id.into()])?;
    db.run("DELETE FROM lsync_deleted WHERE tbl = ?1", &[t.id.into()])?;
    Ok(pending + (max_rid - t.hwm).max(0))
}

/// The rows above the high-water mark as runs of consecutive rowids. A range
/// entry must cover live rows only: a row inserted and deleted before the
/// fold, or an explicit rowid past the end, leaves a gap that the cursor
/// arithmetic (`lsync_missing`, the cursors of a range) would count as a row.
/// The common case, no gap, costs one count over the new rows.
fn new_row_runs(db: Db, t: &Table) -> Result<Vec<(i64, i64)>> {
    let tn = qm(&t.name);
    let mut s = db.prepare(&format!(
        "SELECT min(rowid), max(rowid), count(*) FROM {tn} WHERE rowid > ?1"
    ))?;
    s.bind(1, &t.hwm.into())?;
    if !s.step()? || s.value(0).as_i64().is_none() {
        return Ok(Vec::new());
    }
    let (lo, hi, n) = (s.i64(0), s.i64(1), s.i64(2));
    drop(s);
    if hi - lo + 1 == n {
        return Ok(vec![(lo, hi)]);
    }
    // Gaps and islands: consecutive rowids share rowid - row_number().
    let mut s = db.prepare(&format!(
        "SELECT min(rowid), max(rowid) FROM
           (SELECT rowid, rowid - row_number() OVER (ORDER BY rowid) AS island
            FROM {tn} WHERE rowid > ?1)
         GROUP BY island ORDER BY 1"
    ))?;
    s.bind(1, &t.hwm.into())?;
    let mut runs = Vec::new();
    while s.step()? {
        runs.push((s.i64(0), s.i64(1)));
    }
    Ok(runs)
}
