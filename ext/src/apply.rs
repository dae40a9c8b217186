//! `lsync_apply(blob)`: applying a peer's changeset atomically.
//!
//! The whole changeset is checked before anything is written (format,
//! library, schema, clock drift), then applied inside one savepoint with
//! capture switched off for this connection, so remote changes are not
//! echoed as local ones. They are recorded in the change clock with their
//! own origin and HLC, so this database relays them.
//!
//! `merge` applies the changes under each table's policy.

use std::sync::Arc;

use lsync_wire::changeset::Changeset;
use lsync_wire::report::ApplyReport;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::catalog::{self, Table};
use crate::conn::{CaptureOff, Conn};
use crate::error::{Error, Result};
use crate::sql::Db;
use crate::{bail, flush, merge, schema, stability};

/// Turns triggers off for the apply when every trigger on the tables it
/// touches is lsync's own (capture is off anyway): a trigger program per
/// inserted row is most of the cost of a bulk apply. Tables with app
/// triggers keep them firing, so the app's derived data stays right.
struct TriggersOff {
    db: Db,
    restore: Option<bool>,
}

impl TriggersOff {
    fn new(db: Db, names: &[&str]) -> Result<TriggersOff> {
        let json = serde_json::to_string(&names).map_err(|e| Error::msg(e.to_string()))?;
        // Temp triggers can be on main's tables too; names match as SQLite
        // matches them (a changeset may spell a table in another case).
        let foreign = db.query_i64(
            "SELECT count(*) FROM
               (SELECT name, tbl_name FROM main.sqlite_schema WHERE type = 'trigger'
                UNION ALL SELECT name, tbl_name FROM temp.sqlite_schema WHERE type = 'trigger')
             WHERE name NOT LIKE 'lsync\\_%' ESCAPE '\\'
               AND tbl_name COLLATE NOCASE IN (SELECT value FROM json_each(?1))",
            &[json.into()],
        )?;
        let restore = if foreign == Some(0) {
            Some(db.set_triggers(false)?)
        } else {
            None
        };
        Ok(TriggersOff { db, restore })
    }
}

impl Drop for TriggersOff {
    fn drop(&mut self) {
        if let Some(prev) = self.restore {
            let _ = self.db.set_triggers(prev);
        }
    }
}

pub fn apply(db: Db, conn: &Conn, blob: &[u8]) -> Result<ApplyReport> {
    schema::ensure(db)?;
    let cs = Changeset::decode(blob, schema::max_body(db))
        .map_err(|e| Error::msg(format!("lsync_apply: {e}; nothing was applied")))?;
    let library = schema::get_text(db, "library_id")?;
    if cs.library_id != library {
        bail!(
            "lsync_apply: the changeset belongs to library {}, this database to library {library}; nothing was applied",
            cs.library_id
        );
    }
    check_schema(db, &cs)?;
    check_drift(
        db,
        cs.changes.iter().map(|c| c.hlc).max(),
        "lsync_apply",
        "changeset",
    )?;
    stability::check_fresh(db, cs.fence.as_ref(), "lsync_apply", "changeset")?;
    let _off = CaptureOff::new(conn);
    let names: Vec<&str> = cs.tables.iter().map(|t| t.name.as_str()).collect();
    let _triggers = TriggersOff::new(db, &names)?;
    db.savepoint("lsync_apply", || {
        // Fold local captures first: rows above the high-water mark must be
        // recorded as local before remote rows are inserted above them.
        flush::flush(db)?;
        db.exec("PRAGMA defer_foreign_keys = ON")?;
        let report = merge::merge(db, by_name(db)?, &cs)?;
        stability::record_ack(db, cs.fence.as_ref())?;
        Ok(report)
    })
}

/// Each described table is tracked here (its name matched as SQLite
/// matches names, without regard to letter case), described once, in the
/// same mode, with columns that exist here, each named once. Statements are
/// cached per table and column set and bind by position, so one table
/// must have one column order in a changeset.
fn check_schema(db: Db, cs: &Changeset) -> Result<()> {
    let mut described = HashSet::default();
    for d in &cs.tables {
        let Some(t) = catalog::load(db, &d.name)? else {
            bail!(
                "lsync_apply: schema mismatch: table '{}' is not tracked here; nothing was applied",
                d.name
            );
        };
        if !described.insert(t.id) {
            bail!(
                "lsync_apply: schema mismatch: the changeset describes table '{}' twice; nothing was applied",
                t.name
            );
        }
        let mut names = HashSet::default();
        if let Some(c) = d
            .columns
            .iter()
            .find(|c| !names.insert(c.to_ascii_lowercase()))
        {
            bail!(
                "lsync_apply: schema mismatch: the changeset names column '{}.{c}' twice; nothing was applied",
                d.name
            );
        }
        if t.mode.as_str() != d.mode {
            bail!(
                "lsync_apply: schema mismatch: '{}' is '{}' here but '{}' at the sender; nothing was applied",
                d.name,
                t.mode.as_str(),
                d.mode
            );
        }
        if let Some(c) = d
            .columns
            .iter()
            .find(|c| !t.columns.iter().any(|x| **x == ***c))
        {
            bail!(
                "lsync_apply: schema mismatch: column '{}.{c}' is missing here; nothing was applied",
                d.name
            );
        }
    }
    Ok(())
}

/// Changes read from a source that is not a changeset (a snapshot), applied
/// batch after batch within the caller's savepoint: `next` yields batches
/// until it returns `None`. The caller has checked library and schema.
pub fn apply_stream(
    db: Db,
    conn: &Conn,
    mut next: impl FnMut() -> Result<Option<Changeset>>,
) -> Result<ApplyReport> {
    let _off = CaptureOff::new(conn);
    let tables = by_name(db)?;
    let names: Vec<&str> = tables.keys().map(|n| &**n).collect();
    let _triggers = TriggersOff::new(db, &names)?;
    flush::flush(db)?;
    db.exec("PRAGMA defer_foreign_keys = ON")?;
    let mut total = ApplyReport::default();
    while let Some(cs) = next()? {
        total.add(&merge::merge(db, tables.clone(), &cs)?);
    }
    Ok(total)
}

/// `lsync_conflict_retry(id)`: applies quarantined change `id` now, as
/// an apply would; returns JSON `{"id", "applied", "error"}`. Refused
/// again, it stays quarantined with the new error.
pub fn retry_conflict(db: Db, conn: &Conn, id: i64) -> Result<String> {
    schema::ensure(db)?;
    let _off = CaptureOff::new(conn);
    let tables = by_name(db)?;
    let error = db.savepoint("lsync_retry", || {
        flush::flush(db)?;
        db.exec("PRAGMA defer_foreign_keys = ON")?;
        merge::retry_conflict(db, &tables, id)
    })?;
    Ok(serde_json::json!({"id": id, "applied": error.is_none(), "error": error}).to_string())
}

/// The tracked tables by name.
fn by_name(db: Db) -> Result<HashMap<Arc<str>, Table>> {
    Ok(catalog::load_all(db)?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect())
}

/// Refuses HLCs more than the allowed drift ahead of this device's clock;
/// `func` and `what` name the caller and where the HLCs came from.
pub fn check_drift(db: Db, max: Option<i64>, func: &str, what: &str) -> Result<()> {
    let Some(max) = max else {
        return Ok(());
    };
    if max > lsync_wire::hlc::MAX_ACCEPTED {
        bail!(
            "{func}: the {what} holds HLC {max} ({}), beyond the range of HLCs lsync accepts \
             (up to {}): no clock runs that far ahead, so it is corrupt or hostile; refusing it, \
             nothing was applied",
            lsync_wire::hlc::to_text(max),
            lsync_wire::hlc::to_text(lsync_wire::hlc::MAX_ACCEPTED)
        );
    }
    let drift_ms = schema::get_i64(db, "max_drift_ms")?.max(0);
    let wall = lsync_wire::hlc::wall();
    let limit = wall.saturating_add(lsync_wire::hlc::from_millis(drift_ms as u64));
    if max > limit {
        bail!(
            "{func}: the {what} holds HLC {} which is more than {drift_ms} ms ahead of this \
             device's clock ({}); refusing it, nothing was applied. Check the sender's clock, or \
             raise max_drift_ms in lsync_config",
            lsync_wire::hlc::to_text(max),
            lsync_wire::hlc::to_text(wall)
        );
    }
    Ok(())
}
