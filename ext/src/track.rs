//! `lsync_track` / `lsync_untrack`: validating a table, choosing its global
//! id (`shape::choose`), recording it in `lsync_tables`, and installing the
//! triggers that capture its changes (`triggers`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::catalog::{load, load_all, Ident, Mode, MAX_COLUMNS};
use crate::error::{Error, Result};
use crate::ident::{q, qm};
use crate::refs::{check_composite_fks, declared_fks, declared_name, has_unique_index};
use crate::shape::{check_identity, choose, id_warning, shape, Wanted};
use crate::sql::Db;
use crate::triggers::{drop_triggers_sql, install_triggers};
use crate::{bail, flush, rids, setup, warnings};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    uuid_column: Option<String>,
    /// `"rowid"`, or a key's columns: lsync keeps the global ids.
    identity: Option<serde_json::Value>,
    #[serde(default)]
    fks: BTreeMap<String, String>,
    /// Columns kept on this device: neither captured nor shipped.
    #[serde(default)]
    local_columns: Vec<String>,
}

fn check_trackable(db: Db, table: &str) -> Result<()> {
    if table.starts_with("lsync_") || table.starts_with("sqlite_") {
        bail!("lsync_track: '{table}' is an internal table and cannot be tracked");
    }
    let sql = db.query_text(
        "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
        &[table.into()],
    )?;
    let Some(sql) = sql else {
        bail!("lsync_track: no such table: {table}");
    };
    if sql
        .trim_start()
        .to_ascii_uppercase()
        .starts_with("CREATE VIRTUAL")
    {
        bail!(
            "lsync_track: '{table}' is a virtual table; only ordinary rowid tables can be tracked"
        );
    }
    Ok(())
}

/// Whether `table` is a WITHOUT ROWID table.
fn without_rowid(db: Db, table: &str) -> Result<bool> {
    Ok(db
        .query_i64(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            &[table.into()],
        )?
        .unwrap_or(0)
        != 0)
}

/// `lsync_track(table, mode [, options])`. Returns a JSON summary, with
/// the `warnings` of `warnings::for_table`.
pub fn track(db: Db, table: &str, mode: Mode, options: Option<&str>) -> Result<String> {
    let canonical = declared_name(db, table)?.unwrap_or_else(|| table.to_owned());
    let table = canonical.as_str();
    let opts: Options = match options {
        Some(o) => serde_json::from_str(o).map_err(|e| {
            Error::msg(format!(
                "lsync_track: bad options JSON ({e}); expected {{\"uuid_column\": \"...\" or \"identity\": \"rowid\" | [\"column\", ...], \"fks\": {{\"column\": \"table\"}}, \"local_columns\": [\"...\"]}}"
            ))
        })?,
        None => Options::default(),
    };
    setup::ensure(db)?;
    check_trackable(db, table)?;
    if let Some(existing) = load(db, table)? {
        if existing.mode != mode {
            bail!(
                "lsync_track: '{table}' is already tracked as '{}'; call lsync_untrack('{table}') first to change its mode",
                existing.mode.as_str()
            );
        }
    }
    let shape = shape(db, table)?;
    for col in &opts.local_columns {
        if !shape.columns.contains(col) || Some(col) == shape.rowid_alias.as_ref() {
            bail!(
                "lsync_track: local column '{col}' is not a column of '{table}' other than its ids"
            );
        }
    }
    let mut fks = declared_fks(db, table)?;
    fks.retain(|col, _| !opts.local_columns.contains(col));
    for (col, target) in &opts.fks {
        if !shape.columns.contains(col) || opts.local_columns.contains(col) {
            bail!("lsync_track: FK option names column '{col}', which '{table}' does not track");
        }
        let target = declared_name(db, target)?.unwrap_or_else(|| target.clone());
        fks.insert(col.clone(), target);
    }
    for (col, target) in &fks {
        if *target != table && load(db, target)?.is_none() {
            bail!(
                "lsync_track: '{table}.{col}' holds local ids of '{target}', which is not tracked: \
                 it would reach other devices as a raw id that names another row there. Track \
                 '{target}' first (its rows then travel with global ids), or keep the column on \
                 this device with {{\"local_columns\": [\"{col}\"]}}"
            );
        }
    }
    check_composite_fks(db, table, &opts.local_columns)?;
    let wanted = Wanted {
        uuid_column: opts.uuid_column.as_deref(),
        identity: opts.identity.as_ref(),
        fks: &fks,
        local: &opts.local_columns,
    };
    let (ident, identity) = choose(db, table, &shape, &wanted)?;
    let wr = without_rowid(db, table)?;
    if wr && !matches!(&ident, Ident::Column(c) if shape.pk == std::slice::from_ref(c)) {
        let chosen = match &ident {
            Ident::Column(c) => format!("column '{c}'"),
            Ident::Key(parts) => format!("key ({})", parts.join(", ")),
            Ident::Rowid => "rowid".to_owned(),
        };
        bail!(
            "lsync_track: '{table}' is a WITHOUT ROWID table: lsync tracks one only with its \
             PRIMARY KEY as the global id, and that key must be one TEXT or BLOB column (here \
             the key is ({}), and the global id would be {chosen}); declare it as a rowid \
             table to use another key",
            shape.pk.join(", ")
        );
    }
    if let Some(existing) = load(db, table)?.filter(|t| t.ident != ident) {
        bail!(
            "lsync_track: '{table}' is tracked with another global id ({}); call \
             lsync_untrack('{table}') first to change it",
            existing.ident.to_json()
        );
    }
    if let Ident::Column(uuid_col) = &ident {
        if !shape.columns.contains(uuid_col) {
            bail!(
                "lsync_track: table '{table}' has no column '{uuid_col}' for the global id; \
                 add one (TEXT or 16-byte BLOB) or name it with {{\"uuid_column\": \"...\"}}"
            );
        }
        if shape.rowid_alias.as_ref() == Some(uuid_col) {
            bail!("lsync_track: the uuid column '{uuid_col}' cannot be the INTEGER PRIMARY KEY");
        }
        check_identity(db, table, uuid_col, shape.type_of(uuid_col), &opts.fks)?;
        if opts.local_columns.contains(uuid_col) {
            bail!(
                "lsync_track: local column '{uuid_col}' is not a column of '{table}' other than its ids"
            );
        }
    }
    let uuid_col = ident_column(&ident);
    let columns: Vec<String> = shape
        .columns
        .iter()
        .filter(|c| Some(c.as_str()) != shape.rowid_alias.as_deref() && **c != uuid_col)
        .filter(|c| !opts.local_columns.contains(c))
        .cloned()
        .collect();
    if columns.len() > MAX_COLUMNS {
        bail!(
            "lsync_track: '{table}' has {} columns; lsync tracks at most {MAX_COLUMNS}",
            columns.len()
        );
    }
    db.savepoint("lsync_track", || {
        // Pending captures use the old column order: fold them first.
        if load(db, table)?.is_some() {
            flush::flush(db)?;
        }
        if let Ident::Column(uuid_col) = &ident {
            own_id_column(db, table, uuid_col, &shape)?;
        }
        let cols_json = serde_json::to_string(&columns).map_err(|e| Error::msg(e.to_string()))?;
        let fks_json = serde_json::to_string(&fks).map_err(|e| Error::msg(e.to_string()))?;
        let mut options = serde_json::json!({ "local_columns": opts.local_columns });
        if wr {
            options["without_rowid"] = true.into();
        }
        if uuid_col.is_empty() {
            options["identity"] = ident.to_json();
        }
        db.run(
            "INSERT INTO lsync_tables(name, mode, uuid_col, columns, fks, options)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET uuid_col = excluded.uuid_col,
               columns = excluded.columns, fks = excluded.fks, options = excluded.options",
            &[
                table.into(),
                mode.as_str().into(),
                uuid_col.into(),
                cols_json.into(),
                fks_json.into(),
                options.to_string().into(),
            ],
        )?;
        let t = load(db, table)?.ok_or_else(|| Error::msg("lsync_track: lost the table row"))?;
        rids::number_existing(db, &t)?;
        // Rows already there are folded as local inserts at the next flush,
        // including rowids <= 0 (the mark starts below the smallest one).
        db.run(
            &format!(
                "UPDATE lsync_tables SET hwm = min(hwm, coalesce((SELECT min(rowid) FROM {}), 1) - 1)
                 WHERE name = ?1 AND hwm = 0",
                t.src()
            ),
            &[table.into()],
        )?;
        install_triggers(db, &t)?;
        // A table this one points at now has a referrer to detach on delete.
        for target in t.fks.values().filter(|n| **n != *t.name) {
            if let Some(tt) = load(db, target)? {
                install_triggers(db, &tt)?;
            }
        }
        let mut warnings = serde_json::to_value(warnings::for_table(db, &t)?)
            .map_err(|e| Error::msg(e.to_string()))?;
        if identity != "primary key" {
            if let (Some(w), Some(list)) = (id_warning(db, &t, &shape)?, warnings.as_array_mut()) {
                list.push(w);
            }
        }
        Ok(serde_json::json!({
            "table": t.name, "mode": t.mode.as_str(),
            "uuid_column": t.uuid_col(), "key": match &t.ident { Ident::Key(k) => Some(k), _ => None },
            "identity": identity, "columns": t.columns, "local_columns": opts.local_columns,
            "fks": t.fks, "warnings": warnings,
        })
        .to_string())
    })
}

/// The name `lsync_tables.uuid_col` records: empty when lsync keeps the ids.
fn ident_column(ident: &Ident) -> String {
    match ident {
        Ident::Column(c) => c.clone(),
        _ => String::new(),
    }
}

/// A global id column gets ids where it has none, and a UNIQUE index.
fn own_id_column(db: Db, table: &str, uuid_col: &str, shape: &crate::shape::Shape) -> Result<()> {
    db.run(
        &format!(
            "UPDATE {t} SET {u} = {fill} WHERE {u} IS NULL",
            t = qm(table),
            u = q(uuid_col),
            fill = shape.uuid_fill(uuid_col)
        ),
        &[],
    )?;
    if !has_unique_index(db, table, uuid_col)? {
        // The index named in main is on main's table, whatever temp holds.
        db.exec(&format!(
                "CREATE UNIQUE INDEX main.{} ON {}({})",
                q(&format!("lsync_uuid_{table}")),
                q(table),
                q(uuid_col)
            ))
            .map_err(|e| {
                Error::msg(format!(
                    "lsync_track: cannot index '{table}.{uuid_col}' as unique ({}); global ids must be unique",
                    e.detail()
                ))
            })?;
    }
    Ok(())
}

/// `lsync_untrack(table)`: removes the triggers and the table's metadata.
/// Untracking a table that is not tracked is an error.
pub fn untrack(db: Db, table: &str) -> Result<bool> {
    setup::ensure(db)?;
    let Some(t) = load(db, table)? else {
        bail!("lsync_untrack: '{table}' is not tracked");
    };
    // Their links would travel as raw local ids again (see `track`).
    for s in load_all(db)?.iter().filter(|s| s.id != t.id) {
        if let Some((col, _)) = s.fks.iter().find(|(_, target)| **target == *t.name) {
            bail!(
                "lsync_untrack: '{}.{col}' points at '{}', which must stay tracked while it does: \
                 untrack '{}' first, or track it again with {{\"local_columns\": [\"{col}\"]}}",
                s.name,
                t.name,
                s.name
            );
        }
    }
    db.savepoint("lsync_untrack", || {
        db.exec(&drop_triggers_sql(&t.name))?;
        for meta in ["lsync_clock", "lsync_dirty", "lsync_deleted", "lsync_gid"] {
            db.run(
                &format!("DELETE FROM {meta} WHERE tbl = ?1"),
                &[t.id.into()],
            )?;
        }
        db.run("DELETE FROM lsync_tables WHERE id = ?1", &[t.id.into()])?;
        Ok(true)
    })
}
