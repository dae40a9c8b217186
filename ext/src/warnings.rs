//! What `lsync_track` warns about: schema that lsync tracks, but on which
//! replication can stop at a row (docs/conflicts.md). A warning never
//! refuses the table.
//!
//! Today one kind: an FK column that is `NOT NULL` and whose FK has no
//! `ON DELETE` action that resolves a dependant of a deleted target. lsync
//! stores a link whose target has not arrived as NULL until the target
//! comes, and such a column cannot hold it (the change waits in the
//! quarantine instead); a delete of the target removes the row
//! (delete-wins) or, with SET NULL, cannot be held.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{self, Table};
use crate::error::Result;
use crate::sql::Db;

/// One warning of `lsync_track`'s `warnings` array.
#[derive(Debug, Serialize)]
pub struct Warning {
    pub table: String,
    pub column: String,
    pub target: String,
    /// The declared FK's `ON DELETE` action as SQLite spells it; None when
    /// the link comes from the `fks` option and no FK is declared.
    pub on_delete: Option<String>,
    pub message: String,
}

/// Warnings about the links that travel as uuids once `t` is tracked: `t`'s
/// own FK columns whose target is tracked (or is `t`), and the FK columns of
/// tracked tables that point at `t`. So the warning shows whichever of the
/// two tables is tracked last.
pub fn for_table(db: Db, t: &Table) -> Result<Vec<Warning>> {
    let tables = catalog::load_all(db)?;
    let tracked = |name: &str| tables.iter().any(|s| *s.name == *name);
    let mut out = Vec::new();
    for (col, target) in t.fks.iter().filter(|(_, target)| tracked(target)) {
        out.extend(fk_column(db, &t.name, col, target)?);
    }
    for s in tables.iter().filter(|s| s.id != t.id) {
        for (col, _) in s.fks.iter().filter(|(_, target)| **target == *t.name) {
            out.extend(fk_column(db, &s.name, col, &t.name)?);
        }
    }
    Ok(out)
}

/// The warning about FK column `table.col` (linked to `target`), if any.
fn fk_column(db: Db, table: &str, col: &str, target: &str) -> Result<Option<Warning>> {
    let mut s = db.prepare(
        "SELECT \"notnull\", dflt_value IS NOT NULL FROM pragma_table_info(?1, 'main') WHERE name = ?2",
    )?;
    s.bind_all(&[table.into(), col.into()])?;
    let (not_null, has_default) = if s.step()? {
        (s.i64(0) != 0, s.i64(1) != 0)
    } else {
        (false, false)
    };
    drop(s);
    if !not_null {
        return Ok(None);
    }
    let on_delete = declared_on_delete(db, table)?.remove(col);
    let owned = catalog::load(db, table)?.is_some_and(|t| t.mode == catalog::Mode::DeviceOwned);
    let waits = format!(
        "a change to {table} whose {target} row has not arrived yet waits in the quarantine \
         (lsync_conflicts) until it does, where a nullable column would hold the link as NULL"
    );
    let message =
        match on_delete.as_deref() {
            Some("CASCADE") => return Ok(None),
            Some("SET DEFAULT") if has_default => return Ok(None),
            Some(set @ ("SET DEFAULT" | "SET NULL")) => {
                format!(
            "{table}.{col} is NOT NULL and its FK to {target} says ON DELETE {set}, which the \
             column cannot hold{}: a delete of a {target} row that {table} rows point at is \
             quarantined (lsync_conflicts) where such rows exist; and {waits}",
            if set == "SET DEFAULT" { " (it has no default)" } else { "" }
        )
            }
            action => format!(
                "{table}.{col} is NOT NULL and {}: {}; and {waits}",
                match action {
                    Some(a) => format!("its FK to {target} has no ON DELETE action ({a})"),
                    None => format!("its link to {target} (the fks option) has no declared FK"),
                },
                if owned {
                    format!(
                        "a delete of a {target} row that {table} rows point at is quarantined \
                         where such rows exist (device-owned rows are detached, and the column \
                         cannot hold the NULL)"
                    )
                } else {
                    format!(
                        "a {table} row whose {target} row is deleted, here or on another device, \
                         is removed with it on every replica (delete-wins)"
                    )
                }
            ),
        };
    Ok(Some(Warning {
        table: table.to_owned(),
        column: col.to_owned(),
        target: target.to_owned(),
        on_delete,
        message,
    }))
}

/// The `ON DELETE` action of each single-column FK of `table`, by column.
fn declared_on_delete(db: Db, table: &str) -> Result<BTreeMap<String, String>> {
    let mut s = db.prepare(
        "SELECT \"from\", on_delete FROM pragma_foreign_key_list(?1, 'main')
         WHERE id IN (SELECT id FROM pragma_foreign_key_list(?1, 'main')
                      GROUP BY id HAVING count(*) = 1)
         ORDER BY id DESC",
    )?;
    s.bind(1, &table.into())?;
    let mut out = BTreeMap::new();
    while s.step()? {
        // A column with two FKs (rare) takes the one with the lowest id.
        out.insert(
            s.text(0).unwrap_or_default(),
            s.text(1).unwrap_or_default().to_ascii_uppercase(),
        );
    }
    Ok(out)
}
