//! Whether an apply defers FK checks to its commit
//! (`PRAGMA defer_foreign_keys = ON`).
//!
//! Setting any flag pragma makes SQLite expire every statement prepared
//! on the connection (OP_Expire): the ones lsync keeps (`sql::cache`) and
//! the app's own (the sidecar's `prepare_cached` ones). Re-preparing them
//! after every apply was most of the cost of a one-row apply, so the pragma
//! is set only when an FK check could fail while the changes are merged:
//! it is left off when SQLite checks no FK on this connection, or when no
//! row the merge writes takes part in an FK whose check could fail. Each
//! batch is looked at before it is merged, and once set the pragma stays
//! on to the end of the transaction (where SQLite clears it).
//!
//! When nothing could be checked mid-apply, deferring changes nothing: a
//! deferred check is the same check, made later.

use std::sync::{Arc, Mutex};

use lsync_wire::changeset::{Changeset, Op};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::catalog::{Ident, Mode, Table};
use crate::error::Result;
use crate::sql::Db;

/// What the schema says of tracked tables (see [`schema_says`]), kept per
/// connection while `PRAGMA schema_version` stays the same: reading every
/// table's FKs for each one-row apply cost more than the apply's merge.
/// Another connection's schema change moves the version, and so empties it.
#[derive(Default)]
pub struct Verdicts {
    schema_version: i64,
    /// By table name, columns, global id and mode (a table tracked again
    /// differently is another key).
    by_table: HashMap<String, bool>,
}

/// Sets `PRAGMA defer_foreign_keys` before the first batch that needs it.
pub struct FkDefer<'a> {
    db: Db,
    /// Deferred already, or SQLite checks no FK here: nothing more to do.
    settled: bool,
    verdicts: &'a Mutex<Verdicts>,
}

impl<'a> FkDefer<'a> {
    pub fn new(db: Db, verdicts: &'a Mutex<Verdicts>) -> Result<FkDefer<'a>> {
        let enforced = db.query_i64("SELECT foreign_keys FROM pragma_foreign_keys", &[])?;
        Ok(FkDefer {
            db,
            settled: enforced != Some(1),
            verdicts,
        })
    }

    /// Defers FK checks now, whatever is merged next.
    pub fn always(&mut self) -> Result<()> {
        if !self.settled {
            self.db.exec("PRAGMA defer_foreign_keys = ON")?;
            self.settled = true;
        }
        Ok(())
    }

    /// Defers FK checks before `cs` is merged, unless none can fail while
    /// it is.
    pub fn before(&mut self, tables: &HashMap<Arc<str>, Table>, cs: &Changeset) -> Result<()> {
        if !self.settled && needed(self.db, tables, cs, self.verdicts)? {
            self.always()?;
        }
        Ok(())
    }
}

/// Whether merging `cs` may make SQLite check an FK that fails until a
/// later statement of the same apply, when checks are not deferred.
/// Conservative: anything but inserts and updates of rows that are in no
/// FK, or are FK targets through columns the merge never writes, needs it.
/// A check fails mid-apply only when a child row is written (an FK cell
/// set before its target row is there), or a parent row is deleted or its
/// key changed while children point at it. So it is not needed when:
/// - no change is a delete;
/// - no table of the changeset has an FK of its own (not even to an
///   untracked table: SQLite checks those too) but links lsync maps
///   (see [`raw_fk`]);
/// - each FK that points at one of them names columns the merge never
///   writes: not tracked columns, nor the global id (a rowid alias is
///   neither);
/// - none of them is a shared table with a UNIQUE key other than its
///   global id, or rows merged away (`lsync_alias`): merging two rows that
///   clash deletes one;
/// - no link waits for a target (`lsync_deferred`) and nothing is
///   quarantined: completing links and retrying quarantined changes write
///   other tables;
/// - no trigger but lsync's is on them, and no temp trigger at all: an
///   app's trigger may write any table.
fn needed(
    db: Db,
    tables: &HashMap<Arc<str>, Table>,
    cs: &Changeset,
    verdicts: &Mutex<Verdicts>,
) -> Result<bool> {
    if cs.changes.is_empty() {
        return Ok(false);
    }
    if cs.changes.iter().any(|c| c.op == Op::Delete) {
        return Ok(true);
    }
    let pending = db.query_i64(
        "SELECT EXISTS (SELECT 1 FROM lsync_deferred) OR EXISTS (SELECT 1 FROM lsync_quarantine)
           OR EXISTS (SELECT 1 FROM temp.sqlite_schema WHERE type = 'trigger')",
        &[],
    )?;
    if pending != Some(0) {
        return Ok(true);
    }
    let version = db.query_i64("PRAGMA schema_version", &[])?.unwrap_or(0);
    let mut verdicts = verdicts.lock().unwrap_or_else(|e| e.into_inner());
    if verdicts.schema_version != version {
        *verdicts = Verdicts {
            schema_version: version,
            by_table: HashMap::default(),
        };
    }
    let mut seen: HashSet<&str> = HashSet::default();
    let mut last: Option<&Arc<str>> = None;
    for c in &cs.changes {
        // Runs of one table share its name: no hashing per change.
        if last.is_some_and(|l| Arc::ptr_eq(l, &c.tbl)) {
            continue;
        }
        last = Some(&c.tbl);
        if !seen.insert(&c.tbl) {
            continue;
        }
        let Some(t) = tables
            .values()
            .find(|t| t.name.eq_ignore_ascii_case(&c.tbl))
        else {
            return Ok(true);
        };
        let key = format!(
            "{}\0{}\0{:?}\0{}",
            t.name,
            t.columns.join("\0"),
            t.ident,
            t.mode.as_str()
        );
        let checked = match verdicts.by_table.get(&key) {
            Some(v) => *v,
            None => {
                let v = schema_says(db, t)?;
                verdicts.by_table.insert(key, v);
                v
            }
        };
        if checked || merged_away(db, t)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `t` has rows merged away (`lsync_alias`): a merged class
/// loses a row when one of its members is deleted.
fn merged_away(db: Db, t: &Table) -> Result<bool> {
    let any = db.query_i64(
        "SELECT EXISTS (SELECT 1 FROM lsync_alias WHERE tbl = ?1)",
        &[t.id.into()],
    )?;
    Ok(any != Some(0))
}

/// Whether `t` has an FK whose cells the merge writes as they come: any but
/// the links lsync maps (`Table::fks`: one column, to a tracked table's
/// rowid), which the merge sets only to a row that is there (a target not
/// here yet leaves the cell NULL and the link waiting in `lsync_deferred`),
/// so their checks cannot fail until a later statement; deletes, merged
/// rows and waiting links, which can, are seen by [`needed`]. A child by a
/// global id, a composite key or a local column can.
fn raw_fk(db: Db, t: &Table) -> Result<bool> {
    let mapped = crate::refs::declared_fks(db, &t.name)?;
    let mut s = db.prepare("SELECT \"from\" FROM pragma_foreign_key_list(?1, 'main')")?;
    s.bind(1, &(*t.name).into())?;
    let mut cols = Vec::new();
    while s.step()? {
        cols.push(s.text(0).unwrap_or_default());
    }
    drop(s);
    for from in cols {
        let target = mapped.get(&from).filter(|&to| t.fks.get(&from) == Some(to));
        // Mapped only while the target is tracked here.
        let lsyncs = match target {
            Some(to) => crate::catalog::load(db, to)?.is_some(),
            None => false,
        };
        if !lsyncs {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the schema lets writing rows of `t` as a merge does make SQLite
/// check an FK that could fail (see [`needed`]).
fn schema_says(db: Db, t: &Table) -> Result<bool> {
    let name = || (*t.name).into();
    // A table with an app's trigger (lsync's are named so).
    let triggered = db.query_i64(
        "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'trigger'
                          AND tbl_name = ?1 COLLATE NOCASE
                          AND name NOT LIKE 'lsync\\_%' ESCAPE '\\')",
        &[name()],
    )?;
    if triggered != Some(0) || raw_fk(db, t)? {
        return Ok(true);
    }
    // The columns FKs point at: named, or the primary key when not. lsync's
    // own tables (the prefix is lsync's) point at none of the app's.
    let mut s = db.prepare(
        "SELECT coalesce(f.\"to\", p.name) FROM main.sqlite_schema m
           JOIN pragma_foreign_key_list(m.name) f
           LEFT JOIN pragma_table_info(?1) p ON f.\"to\" IS NULL AND p.pk > 0
         WHERE m.type = 'table' AND m.name NOT LIKE 'lsync\\_%' ESCAPE '\\'
           AND f.\"table\" = ?1 COLLATE NOCASE",
    )?;
    s.bind(1, &name())?;
    let gid = match &t.ident {
        Ident::Column(c) => Some(c.as_str()),
        Ident::Key(_) | Ident::Rowid => None,
    };
    while s.step()? {
        let Some(col) = s.text(0) else {
            // An FK to a table without a primary key: SQLite's mismatch.
            return Ok(true);
        };
        let written = t.columns.iter().any(|c| c.eq_ignore_ascii_case(&col))
            || gid.is_some_and(|g| g.eq_ignore_ascii_case(&col));
        if written {
            return Ok(true);
        }
    }
    drop(s);
    if t.mode == Mode::Shared {
        // A UNIQUE index over anything but the global id column alone.
        let clash = db.query_i64(
            "SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1) il
               WHERE il.\"unique\" = 1
                 AND (SELECT count(*) <> 1 OR max(ii.name) IS NOT ?2 COLLATE NOCASE
                      FROM pragma_index_info(il.name) ii))",
            &[name(), gid.map_or(crate::sql::Value::Null, Into::into)],
        )?;
        if clash != Some(0) {
            return Ok(true);
        }
    }
    Ok(false)
}
