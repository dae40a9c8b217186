//! `lsync_track` / `lsync_untrack`: validating a table and generating the
//! triggers that capture its changes.
//!
//! Capture is designed around what the statement journal costs (see
//! DESIGN.md): ordinary INSERTs are captured with no per-row write at all,
//! through the rowid high-water mark `lsync_tables.hwm`; the only INSERT
//! trigger fills NULL uuids and catches rows inserted below the mark. UPDATEs
//! and DELETEs upsert one bounded row each into `lsync_dirty` /
//! `lsync_deleted`, which `flush` folds into `lsync_clock`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::catalog::{load, load_all, Ident, Mode, Table, MAX_COLUMNS};
use crate::clock::{OP_INSERT, OP_UPDATE};
use crate::error::{Error, Result};
use crate::ident::{lit, q, qm};
use crate::shape::{check_identity, choose, id_warning, shape, Wanted};
use crate::sql::Db;
use crate::{bail, flush, schema, warnings};

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
    if db
        .prepare(&format!("SELECT rowid FROM {} LIMIT 0", qm(table)))
        .is_err()
    {
        bail!(
            "lsync_track: table '{table}' has no usable primary key: it is a WITHOUT ROWID table; \
             lsync needs a rowid or INTEGER PRIMARY KEY as the local id"
        );
    }
    Ok(())
}

/// Single-column FKs that hold the target's local integer id.
fn declared_fks(db: Db, table: &str) -> Result<BTreeMap<String, String>> {
    let mut s = db.prepare(
        "SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list(?1, 'main')
         WHERE id IN (SELECT id FROM pragma_foreign_key_list(?1, 'main')
                      GROUP BY id HAVING count(*) = 1)",
    )?;
    s.bind(1, &table.into())?;
    let mut out = BTreeMap::new();
    while s.step()? {
        let (from, target) = (s.text(0).unwrap_or_default(), s.text(1).unwrap_or_default());
        // `REFERENCES Tags` names table `tags`: FK targets are compared
        // with tracked names, so take the declared spelling.
        let target = declared_name(db, &target)?.unwrap_or(target);
        let to = s.text(2);
        let alias = shape(db, &target)?.rowid_alias;
        let to_rowid = match to.as_deref() {
            None => true,
            Some(t) => alias.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(t)),
        };
        if to_rowid {
            out.insert(from, target);
        }
    }
    Ok(out)
}

fn has_unique_index(db: Db, table: &str, col: &str) -> Result<bool> {
    Ok(db
        .query_i64(
            "SELECT 1 FROM pragma_index_list(?1, 'main') il
             WHERE il.\"unique\"
               AND (SELECT count(*) FROM pragma_index_info(il.name, 'main')) = 1
               AND (SELECT name FROM pragma_index_info(il.name, 'main')) = ?2",
            &[table.into(), col.into()],
        )?
        .is_some())
}

/// The declared spelling of a table of `main`: SQLite matches table names
/// without regard to (ASCII) letter case, and so does NOCASE.
fn declared_name(db: Db, table: &str) -> Result<Option<String>> {
    db.query_text(
        "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        &[table.into()],
    )
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
    schema::ensure(db)?;
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
    let wanted = Wanted {
        uuid_column: opts.uuid_column.as_deref(),
        identity: opts.identity.as_ref(),
        fks: &fks,
        local: &opts.local_columns,
    };
    let (ident, identity) = choose(db, table, &shape, &wanted)?;
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
        // Rows already there are folded as local inserts at the next flush,
        // including rowids <= 0 (the mark starts below the smallest one).
        db.run(
            &format!(
                "UPDATE lsync_tables SET hwm = min(hwm, coalesce((SELECT min(rowid) FROM {}), 1) - 1)
                 WHERE name = ?1 AND hwm = 0",
                qm(table)
            ),
            &[table.into()],
        )?;
        let t = load(db, table)?.ok_or_else(|| Error::msg("lsync_track: lost the table row"))?;
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
    schema::ensure(db)?;
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

/// A trigger of `main`: `CREATE TRIGGER main.x ... ON t` puts it on `main.t`
/// even while a temp table `t` exists (and its body's unqualified tables
/// are main's), where an unqualified name would make it a temp trigger on
/// the temp table.
fn trigger_name(kind: &str, table: &str) -> String {
    format!("main.{}", q(&format!("lsync_{kind}_{table}")))
}

/// Recreates the triggers of a table tracked by an older lsync whose
/// trigger refusing a change of the global id also refuses lsync's own
/// (a merge gives a row its root's id while capture is off, `merge/unite`).
pub fn update_id_trigger(db: Db, t: &Table) -> Result<()> {
    let sql = db.query_text(
        "SELECT sql FROM main.sqlite_schema WHERE type = 'trigger' AND name = ?1",
        &[format!("lsync_ids_{}", t.name).into()],
    )?;
    if sql.is_some_and(|s| !s.contains("lsync_capturing()")) {
        install_triggers(db, t)?;
    }
    Ok(())
}

/// (Re)creates the capture triggers of a tracked table.
fn install_triggers(db: Db, t: &Table) -> Result<()> {
    let fill = match t.uuid_col() {
        Some(c) => shape(db, &t.name)?.uuid_fill(c),
        None => "",
    };
    let referenced = load_all(db)?
        .iter()
        .any(|s| s.fks.values().any(|n| *n == *t.name));
    db.exec(&drop_triggers_sql(&t.name))?;
    db.exec(&triggers_sql(t, fill, referenced))
}

fn drop_triggers_sql(table: &str) -> String {
    ["ins", "ids", "upd", "del", "rekey"]
        .iter()
        .map(|k| format!("DROP TRIGGER IF EXISTS {};", trigger_name(k, table)))
        .collect()
}

/// The statement that advances the persisted HLC; the new value is then read
/// back with `HLC_VALUE`. Pure SQL, so it runs inside the writing transaction
/// and stays monotonic across connections and processes. At the top of the
/// i64 range (where `value + 1` would become a REAL) it fails the write.
fn hlc_bump() -> String {
    format!(
        "UPDATE lsync_config SET value = CASE
           WHEN typeof(value) = 'integer' AND value < 9223372036854775807
           THEN max(value + 1, lsync_hlc_wall())
           ELSE RAISE(ABORT, {}) END
         WHERE key = 'hlc';",
        lit(schema::HLC_STUCK)
    )
}
const HLC_VALUE: &str = "(SELECT value FROM lsync_config WHERE key = 'hlc')";

/// A statement that fails with `owned by` when this device does not own the
/// row (device-owned tables). The owner is the origin of the clock entry that
/// covers the rowid; rows above the high-water mark are new local rows.
fn owner_check(t: &Table, rowid: &str, when: &str) -> String {
    match t.mode {
        Mode::Shared => String::new(),
        Mode::DeviceOwned => format!(
            "SELECT lsync_deny_owned({id}, {rowid}, c.origin) FROM
               (SELECT hi, origin FROM lsync_clock
                WHERE tbl = {id} AND col IS NULL AND lo <= {rowid}
                ORDER BY lo DESC LIMIT 1) AS c
             WHERE {when} c.hi >= {rowid}
               AND c.origin IS NOT (SELECT value FROM lsync_config WHERE key = 'device_idx');",
            id = t.id
        ),
    }
}

/// `NEW.c IS NOT OLD.c` for each tracked column, as a bit mask.
fn change_mask(t: &Table) -> String {
    if t.columns.is_empty() {
        return "0".into();
    }
    t.columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("((NEW.{c} IS NOT OLD.{c}) << {i})", c = q(c)))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `referenced`: rows of tracked tables may point at this table's rows.
fn triggers_sql(t: &Table, uuid_fill: &str, referenced: bool) -> String {
    let (id, tbl) = (t.id, q(&t.name));
    let old_gid = t.gid_of("OLD");
    let below_hwm = format!("NEW.rowid <= (SELECT hwm FROM lsync_tables WHERE id = {id})");
    let owner_old = owner_check(t, "OLD.rowid", "");
    // Where SQLite enforces no FK, a deleted row's referrers are detached
    // as a peer detaches them, before a new row can take its rowid.
    let detach = if referenced {
        format!("SELECT lsync_on_delete_target({id}, OLD.rowid, {old_gid});")
    } else {
        String::new()
    };
    let mask = change_mask(t);
    let hlc_bump = hlc_bump();
    // A row whose id lsync keeps has one once its insert is folded: rows
    // without one are not known yet (see `gids`).
    let (has_id, new_id_null, fill_sql) = match t.uuid_col() {
        Some(c) => (
            format!("OLD.{} IS NOT NULL AND", q(c)),
            format!("NEW.{} IS NULL", q(c)),
            // The statement that fills a NULL uuid, passed as a constant so
            // the trigger body needs no lookup per row.
            lit(&format!(
                "UPDATE {} SET {u} = {uuid_fill} WHERE rowid = ?1 AND {u} IS NULL",
                qm(&t.name),
                u = q(c)
            )),
        ),
        None => (String::new(), "0".to_owned(), "''".to_owned()),
    };
    let record_delete = format!(
        "INSERT INTO lsync_deleted(tbl, uuid, rid, hlc)
           SELECT {id}, g, OLD.rowid, {HLC_VALUE} FROM (SELECT {old_gid} AS g) WHERE g IS NOT NULL
           ON CONFLICT(tbl, uuid, rid) DO UPDATE SET hlc = excluded.hlc;"
    );
    // A local write to an FK column replaces any link still waiting for its
    // target; a deleted row takes its waiting links with it.
    let forget_links: String = t
        .fks
        .keys()
        .map(|c| {
            format!(
                "DELETE FROM lsync_deferred WHERE tbl = {id} AND rid = NEW.rowid AND col = {l} AND NEW.{c} IS NOT OLD.{c};",
                l = lit(c),
                c = q(c)
            )
        })
        .collect();
    let immutable = lit("lsync: the rowid and the global id of a tracked row cannot change; delete and re-insert instead");
    let id_changed = match t.uuid_col() {
        Some(c) => format!(
            "NEW.rowid IS NOT OLD.rowid OR NEW.{c} IS NOT OLD.{c}",
            c = q(c)
        ),
        None => "NEW.rowid IS NOT OLD.rowid".to_owned(),
    };
    // Only UPDATEs of tracked columns compile this trigger (UPDATE OF): the
    // uuid fill in lsync_on_insert then prepares quickly.
    let update_trigger = if t.columns.is_empty() {
        String::new()
    } else {
        let of: Vec<String> = t.columns.iter().map(|c| q(c)).collect();
        format!(
            "CREATE TRIGGER {upd} AFTER UPDATE OF {of} ON {tbl}
             WHEN {has_id} lsync_capturing() AND ({mask}) <> 0
             BEGIN
               {owner_old}
               {hlc_bump}
               INSERT INTO lsync_dirty(tbl, rid, op, hlc, cols)
                 VALUES ({id}, NEW.rowid, {OP_UPDATE}, {HLC_VALUE}, {mask})
                 ON CONFLICT(tbl, rid) DO UPDATE SET hlc = excluded.hlc, cols = cols | excluded.cols;
               {forget_links}
             END;",
            upd = trigger_name("upd", &t.name),
            of = of.join(", "),
        )
    };
    format!(
        "CREATE TRIGGER {ins} AFTER INSERT ON {tbl}
         WHEN {new_id_null} OR {below_hwm}
         BEGIN
           SELECT lsync_on_insert({id}, NEW.rowid, {new_id_null}, {fill_sql});
         END;
         CREATE TRIGGER {ids} AFTER UPDATE ON {tbl}
         WHEN {has_id} ({id_changed}) AND lsync_capturing()
         BEGIN
           SELECT RAISE(ABORT, {immutable});
         END;
         {rekey}
         {update_trigger}
         CREATE TRIGGER {del} AFTER DELETE ON {tbl}
         WHEN {has_id} lsync_capturing()
         BEGIN
           {owner_old}
           {hlc_bump}
           {record_delete}
           DELETE FROM lsync_dirty WHERE tbl = {id} AND rid = OLD.rowid;
           DELETE FROM lsync_deferred WHERE tbl = {id} AND rid = OLD.rowid;
           {detach}
         END;",
        ins = trigger_name("ins", &t.name),
        del = trigger_name("del", &t.name),
        ids = trigger_name("ids", &t.name),
        rekey = rekey_trigger(t, &record_delete),
    )
}

/// A row identified by its key whose key changes is another row: the
/// update is captured as the old row's delete and the new row's insert
/// (the fold gives it its new global id).
fn rekey_trigger(t: &Table, record_delete: &str) -> String {
    let Ident::Key(parts) = &t.ident else {
        return String::new();
    };
    let changed: Vec<String> = parts
        .iter()
        .map(|c| format!("NEW.{c} IS NOT OLD.{c}", c = q(c)))
        .collect();
    let of: Vec<String> = parts.iter().map(|c| q(c)).collect();
    format!(
        "CREATE TRIGGER {rekey} AFTER UPDATE OF {of} ON {tbl}
         WHEN ({changed}) AND lsync_capturing()
         BEGIN
           {owner_old}
           {hlc_bump}
           {record_delete}
           INSERT INTO lsync_dirty(tbl, rid, op, hlc, cols)
             VALUES ({id}, NEW.rowid, {OP_INSERT}, {HLC_VALUE}, 0)
             ON CONFLICT(tbl, rid) DO UPDATE SET op = excluded.op, hlc = excluded.hlc;
         END;",
        rekey = trigger_name("rekey", &t.name),
        of = of.join(", "),
        tbl = q(&t.name),
        changed = changed.join(" OR "),
        owner_old = owner_check(t, "OLD.rowid", ""),
        hlc_bump = hlc_bump(),
        id = t.id,
    )
}
