//! Folding captured changes into the change clock (`lsync_clock`).
//!
//! Triggers only leave cheap, bounded marks (`lsync_dirty`, `lsync_deleted`,
//! and rows above the high-water mark). `flush` turns them into clock entries
//! with cursors (`seq`), keeping the invariant that every live row of a
//! tracked table is covered by exactly one row entry. A bulk insert becomes a
//! single range entry, so sync metadata does not grow per inserted row.

use crate::catalog::{self, Ident, Mode, Table};
use crate::clock::{Clock, OP_INSERT, OP_UPDATE};
use crate::compact::{self, Run};
use crate::error::Result;
use crate::gids;
use crate::ident::qm;
use crate::setup;
use crate::sql::{Db, Value};

/// Folds all pending captures of all tracked tables. Returns the number of
/// pending marks and new rows folded.
pub fn flush(db: Db) -> Result<i64> {
    setup::ensure(db)?;
    let tables = catalog::load_all(db)?;
    if seen(db, &tables).is_some_and(|s| !(0..tables.len()).any(|i| s.due(&tables[i], i))) {
        // Most calls (every apply, every export after the fold of a push)
        // find nothing: no savepoint, no clock, no per-table queries.
        return Ok(0);
    }
    db.savepoint("lsync_flush", || {
        // Looked at again inside the savepoint: outside a transaction,
        // another connection may have written or folded since the look
        // above, and a fold must read the catalog and the rows it writes
        // from in one snapshot.
        let tables = catalog::load_all(db)?;
        let seen = seen(db, &tables);
        let due = |i: usize| seen.as_ref().is_none_or(|s| s.due(&tables[i], i));
        let mut clock = Clock::open(db)?;
        let mut folded = 0;
        // A key's FK parts take their targets' global ids: tables keyed by
        // FKs are folded after the others.
        let mut order: Vec<usize> = (0..tables.len()).filter(|&i| due(i)).collect();
        order.sort_by_key(|&i| matches!(tables[i].ident, Ident::Key(_)));
        for i in order {
            let known = seen.as_ref().map(|s| s.of(i));
            folded += flush_table(db, &tables[i], &tables, &mut clock, known)?;
        }
        // Nothing folded, nothing written: a no-op flush must not commit,
        // or every reader polling data_version would wake up for nothing.
        if folded > 0 {
            clock.save()?;
        }
        Ok(folded)
    })
}

/// What one statement saw of all tracked tables: whether `lsync_dirty`
/// or `lsync_deleted` hold any mark, and each table's last rowid. A fold
/// asks it once, where [`flush_table`] would ask three statements per
/// table and read the marks of each: statement preparation is most of a
/// small flush's cost.
struct Seen {
    marks: bool,
    max_rids: Vec<i64>,
}

/// What [`Seen`] knows of one table.
#[derive(Clone, Copy)]
struct Known {
    max_rid: i64,
    marks: bool,
}

impl Seen {
    /// Whether table `t`, the `i`-th, may have something to fold.
    fn due(&self, t: &Table, i: usize) -> bool {
        self.marks || self.max_rids[i] != t.hwm
    }

    fn of(&self, i: usize) -> Known {
        Known {
            max_rid: self.max_rids[i],
            marks: self.marks,
        }
    }
}

/// `None` when the statement cannot be asked (a tracked table was
/// dropped): then each table is looked at on its own, and `flush_table`
/// says what is wrong.
fn seen(db: Db, tables: &[Table]) -> Option<Seen> {
    let maxes: String = tables
        .iter()
        .map(|t| format!(", ({})", t.max_rid_sql()))
        .collect();
    let mut s = db
        .prepare(&format!(
            "SELECT EXISTS (SELECT 1 FROM lsync_dirty) OR EXISTS (SELECT 1 FROM lsync_deleted){maxes}"
        ))
        .ok()?;
    if !s.step().ok()? {
        return None;
    }
    Some(Seen {
        marks: s.i64(0) != 0,
        max_rids: (1..=tables.len()).map(|i| s.i64(i)).collect(),
    })
}

/// Table `t`'s last rowid, whether there may be marks, and how many it has.
fn look(db: Db, t: &Table, known: Option<Known>) -> Result<(i64, bool, i64)> {
    if let Some(k) = known {
        if !k.marks {
            return Ok((k.max_rid, false, 0));
        }
    }
    if known.is_none()
        && db
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
    let max_rid = match known {
        Some(k) => k.max_rid,
        None => db.query_i64(&t.max_rid_sql(), &[])?.unwrap_or(0),
    };
    let pending = db
        .query_i64(
            "SELECT (SELECT count(*) FROM lsync_dirty WHERE tbl = ?1)
                  + (SELECT count(*) FROM lsync_deleted WHERE tbl = ?1)",
            &[t.id.into()],
        )?
        .unwrap_or(0);
    Ok((max_rid, true, pending))
}

/// Folds table `t`'s marks and new rows; `known`: what [`seen`] saw of it.
fn flush_table(
    db: Db,
    t: &Table,
    tables: &[Table],
    clock: &mut Clock,
    known: Option<Known>,
) -> Result<i64> {
    let (max_rid, marks, pending) = look(db, t, known)?;
    if pending == 0 && max_rid == t.hwm {
        return Ok(0);
    }
    // Deletes first: a rowid freed by a delete may already hold a new row.
    if marks {
        fold_deletes(db, t, clock)?;
    }
    let dirty = if marks {
        read_dirty(db, t)?
    } else {
        Vec::new()
    };
    let me = clock.self_idx;
    let mut reinserted = false;
    // Updated device-owned rows with consecutive rowids fold into one range
    // entry; its HLC is the newest of theirs, which keeps every row's version
    // increasing (only the owner writes them).
    let mut runs: Vec<Run> = Vec::new();
    for (rid, op, hlc, cols) in dirty {
        // Rows above the mark are folded as new rows below.
        if rid > t.hwm {
            continue;
        }
        // The function-free INSERT trigger leaves the HLC to the fold.
        let hlc = if hlc == 0 { clock.hlc()? } else { hlc };
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
            (Mode::DeviceOwned, OP_UPDATE) => match runs.last_mut() {
                Some(r) if r.hi + 1 == rid => {
                    r.hi = rid;
                    r.hlc = r.hlc.max(hlc);
                }
                _ => runs.push(Run {
                    lo: rid,
                    hi: rid,
                    hlc,
                }),
            },
            _ => {
                clock.cover_row(t.id, rid, op, hlc, me)?;
            }
        }
    }
    compact::fold_updates(clock, t.id, &runs)?;

    if max_rid > t.hwm {
        let hlc = clock.hlc()?;
        for (lo, hi) in new_row_runs(db, t)? {
            clock.add(t.id, Some((lo, hi)), None, OP_INSERT, hlc, me, Value::Null)?;
        }
        reinserted = true;
    }
    if t.kept() {
        // Two statements: one OR of both would scan the table.
        gids::assign(db, t, tables, &format!("k.rowid > {}", t.hwm))?;
        if marks {
            gids::assign(
                db,
                t,
                tables,
                &format!(
                    "k.rowid IN (SELECT rid FROM lsync_dirty WHERE tbl = {} AND op = {OP_INSERT})",
                    t.id
                ),
            )?;
        }
    }
    if reinserted {
        // A uuid that was deleted and inserted again is live: drop its
        // tombstone. Only the rows this fold records as inserted can be one:
        // those above the mark and those re-inserted below it. (Asking of
        // every row of the table made each fold cost a scan of its ids.)
        db.run(
            &format!(
                "DELETE FROM lsync_clock WHERE tbl = ?1 AND uuid IS NOT NULL AND op = 2
                   AND uuid IN (SELECT gid FROM {g} WHERE rid > ?2
                                UNION ALL
                                SELECT gid FROM {g} WHERE rid IN
                                  (SELECT rid FROM lsync_dirty WHERE tbl = ?1 AND op = {OP_INSERT}))",
                g = t.gids()
            ),
            &[t.id.into(), t.hwm.into()],
        )?;
    }
    db.run(
        "UPDATE lsync_tables SET hwm = ?2 WHERE id = ?1",
        &[t.id.into(), max_rid.into()],
    )?;
    if marks {
        db.run("DELETE FROM lsync_dirty WHERE tbl = ?1", &[t.id.into()])?;
        db.run("DELETE FROM lsync_deleted WHERE tbl = ?1", &[t.id.into()])?;
    }
    Ok(pending + (max_rid - t.hwm).max(0))
}

/// Folds table `t`'s deletes into tombstones.
fn fold_deletes(db: Db, t: &Table, clock: &mut Clock) -> Result<()> {
    let me = clock.self_idx;
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
        if t.kept() {
            db.run(
                "DELETE FROM lsync_gid WHERE tbl = ?1 AND rid = ?2 AND gid = ?3",
                &[t.id.into(), rid.into(), uuid.clone()],
            )?;
        } else if t.without_rowid {
            // A key deleted and inserted again keeps its number.
            db.run(
                &format!(
                    "DELETE FROM lsync_gid WHERE tbl = ?1 AND rid = ?2 AND gid = ?3
                       AND NOT EXISTS (SELECT 1 FROM {} WHERE {})",
                    qm(&t.name),
                    t.rid_is("?2")
                ),
                &[t.id.into(), rid.into(), uuid.clone()],
            )?;
        }
        clock.tombstone(t.id, uuid, hlc, me)?;
    }
    Ok(())
}

/// Table `t`'s marks in `lsync_dirty`: (rid, op, hlc, cols), by rid.
fn read_dirty(db: Db, t: &Table) -> Result<Vec<(i64, i64, i64, i64)>> {
    let mut s =
        db.prepare("SELECT rid, op, hlc, cols FROM lsync_dirty WHERE tbl = ?1 ORDER BY rid")?;
    s.bind(1, &t.id.into())?;
    let mut dirty = Vec::new();
    while s.step()? {
        dirty.push((s.i64(0), s.i64(1), s.i64(2), s.i64(3)));
    }
    Ok(dirty)
}

/// The rows above the high-water mark as runs of consecutive rowids. A range
/// entry must cover live rows only: a row inserted and deleted before the
/// fold, or an explicit rowid past the end, leaves a gap that the cursor
/// arithmetic (`lsync_missing`, the cursors of a range) would count as a row.
/// The common case, no gap, costs one count over the new rows.
fn new_row_runs(db: Db, t: &Table) -> Result<Vec<(i64, i64)>> {
    let tn = t.src();
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
