//! The capture triggers `lsync_track` installs on a tracked table: the SQL
//! of each, generated from the table's mode, columns and kind of identity.
//!
//! Capture is designed around what the statement journal costs (see
//! DESIGN.md): ordinary INSERTs are captured with no per-row write at all,
//! through the rowid high-water mark `lsync_tables.hwm`; the only INSERT
//! trigger fills NULL uuids and catches rows inserted below the mark. UPDATEs
//! and DELETEs upsert one bounded row each into `lsync_dirty` /
//! `lsync_deleted`, which `flush` folds into `lsync_clock`.

use crate::catalog::{load_all, Ident, Mode, Table};
use crate::error::Result;
use crate::ident::{lit, q};
use crate::opcodes::{OP_INSERT, OP_UPDATE};
use crate::schema;
use crate::shape::shape;
use crate::sql::Db;

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
pub fn install_triggers(db: Db, t: &Table) -> Result<()> {
    install_among(db, t, &load_all(db)?)
}

/// [`install_triggers`], with every tracked table (`all`) at hand.
fn install_among(db: Db, t: &Table, all: &[Table]) -> Result<()> {
    let s = shape(db, &t.name)?;
    // A NOT NULL uuid column is never NULL once the row is in: no fill.
    let fill = match t.uuid_col() {
        Some(c) if !s.is_notnull(c) && !t.without_rowid => s.uuid_fill(c),
        _ => "",
    };
    let referenced = all.iter().any(|s| s.fks.values().any(|n| *n == *t.name));
    let ctx = Context {
        fill,
        referenced,
        me: schema::get_i64(db, "device_idx")?,
        rowid_alias: s.rowid_alias.as_deref(),
    };
    db.exec(&drop_triggers_sql(&t.name))?;
    db.exec(&triggers_sql(t, &ctx))
}

/// Recreates the triggers of every tracked table that still exists: after
/// this device's index changed (the triggers hold it, `setup::set_device_idx`),
/// or on an upgrade that changed the triggers.
pub fn reinstall_all(db: Db) -> Result<()> {
    let all = load_all(db)?;
    for t in &all {
        let exists = db
            .query_i64(
                "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
                &[t.name.to_string().into()],
            )?
            .is_some();
        if exists {
            install_among(db, t, &all)?;
        }
    }
    Ok(())
}

/// What the triggers of a table are generated from besides its catalog row.
struct Context<'a> {
    /// The uuid fill of the INSERT trigger, or "" for none.
    fill: &'a str,
    /// Rows of tracked tables may point at this table's rows.
    referenced: bool,
    /// This device's index in `lsync_devices` (`lsync_config.device_idx`),
    /// written into the ownership checks: a subquery reading it cost each
    /// captured update about a tenth of its time.
    me: i64,
    /// The INTEGER PRIMARY KEY column, another name of the rowid.
    rowid_alias: Option<&'a str>,
}

pub fn drop_triggers_sql(table: &str) -> String {
    ["ins", "ids", "upd", "lnk", "del", "rekey"]
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

/// A statement that rolls the transaction back, with `owned by`, when this
/// device does not own the row (device-owned tables). The owner is the
/// origin of the clock entry that covers the rowid; rows above the
/// high-water mark are new local rows. `me`: this device's index
/// (`Context::me`).
///
/// `RAISE(ROLLBACK)`, as the INSERT path's check in `sql/schema.sql`: a
/// function call or a `RAISE(ABORT)` would make every UPDATE of the table
/// keep a statement journal, to undo the one statement (see
/// [`CAPTURING`]). So the message is a literal (SQLite before 3.47 takes
/// no expression there), naming the table but neither the row nor its owner.
fn owner_check(t: &Table, rowid: &str, me: i64) -> String {
    match t.mode {
        Mode::Shared => String::new(),
        Mode::DeviceOwned => format!(
            "SELECT RAISE(ROLLBACK, {msg}) FROM
               (SELECT hi, origin FROM lsync_clock
                WHERE tbl = {id} AND col IS NULL AND lo <= {rowid}
                ORDER BY lo DESC LIMIT 1) AS c
             WHERE c.hi >= {rowid} AND c.origin IS NOT {me};",
            id = t.id,
            msg = lit(&format!(
                "lsync: this row of '{}' is owned by another device; only its owner may change or delete it (the transaction was rolled back)",
                t.name
            )),
        ),
    }
}

/// Whether this connection captures, in plain SQL: not while lsync's own
/// writes have capture off (the `capture_off` row `capture::quietly`
/// writes). For the triggers that call no function; the others ask
/// `lsync_capturing()`.
///
/// SQLite keeps a statement journal for a statement that writes more than
/// one table and "may abort": one whose program calls any function, or
/// has a constraint that resolves by ABORT. The journal copies each page the
/// statement changes, so that the statement alone can be undone; it cost a
/// captured device-owned UPDATE about a third of its time. A device-owned
/// update's trigger calls nothing and aborts nothing: this check, an
/// ownership check that rolls back (`owner_check`), and an `OR IGNORE`
/// mark (`mark_update`).
const CAPTURING: &str = "NOT EXISTS (SELECT 1 FROM lsync_config WHERE key = 'capture_off')";

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

/// `(NEW.a, NEW.b) IS NOT (OLD.a, OLD.b)` over the tracked columns: whether
/// any changed, in a third of the steps of testing [`change_mask`].
fn any_changed(t: &Table) -> String {
    let side = |s: &str| -> String {
        let cols: Vec<String> = t.columns.iter().map(|c| format!("{s}.{}", q(c))).collect();
        cols.join(", ")
    };
    format!("({}) IS NOT ({})", side("NEW"), side("OLD"))
}

/// The names an UPDATE can change a row's rowid or global id by: SQLite
/// compiles an `UPDATE OF` trigger only into UPDATEs that set one of them,
/// by name, so the others skip the check.
fn id_columns(t: &Table, rowid_alias: Option<&str>) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    if !t.without_rowid {
        cols.extend(["rowid", "oid", "_rowid_"].map(String::from));
        cols.extend(rowid_alias.map(String::from));
    }
    cols.extend(t.uuid_col().map(String::from));
    cols
}

fn triggers_sql(t: &Table, ctx: &Context) -> String {
    let (id, tbl) = (t.id, q(&t.name));
    let old_gid = t.gid_of("OLD");
    let (old_rid, new_rid) = (t.rid_of("OLD"), t.rid_of("NEW"));
    let owner_old = owner_check(t, &old_rid, ctx.me);
    // Where SQLite enforces no FK, a deleted row's referrers are detached
    // as a peer detaches them, before a new row can take its rowid.
    let detach = if ctx.referenced {
        format!("SELECT lsync_on_delete_target({id}, {old_rid}, {old_gid});")
    } else {
        String::new()
    };
    let hlc_bump = hlc_bump();
    // A row whose id lsync keeps has one once its insert is folded: rows
    // without one are not known yet (see `gids`).
    let has_id = match t.uuid_col() {
        Some(c) => format!("OLD.{} IS NOT NULL AND", q(c)),
        None => String::new(),
    };
    let record_delete = format!(
        "INSERT INTO lsync_deleted(tbl, uuid, rid, hlc)
           SELECT {id}, g, {old_rid}, {HLC_VALUE} FROM (SELECT {old_gid} AS g) WHERE g IS NOT NULL
           ON CONFLICT(tbl, uuid, rid) DO UPDATE SET hlc = excluded.hlc;"
    );
    // A local write to an FK column replaces any link still waiting for its
    // target; a deleted row takes its waiting links with it.
    let forget_links: String = t
        .fks
        .keys()
        .map(|c| {
            format!(
                "DELETE FROM lsync_deferred WHERE tbl = {id} AND rid = {new_rid} AND col = {l} AND NEW.{c} IS NOT OLD.{c};",
                l = lit(c),
                c = q(c)
            )
        })
        .collect();
    let immutable = lit("lsync: the rowid and the global id of a tracked row cannot change; delete and re-insert instead");
    let id_changed = match (t.uuid_col(), t.without_rowid) {
        (Some(c), true) => format!("NEW.{c} IS NOT OLD.{c}", c = q(c)),
        (Some(c), false) => format!(
            "NEW.rowid IS NOT OLD.rowid OR NEW.{c} IS NOT OLD.{c}",
            c = q(c)
        ),
        (None, _) => "NEW.rowid IS NOT OLD.rowid".to_owned(),
    };
    // Only UPDATEs of tracked columns compile this trigger (UPDATE OF): the
    // uuid fill in lsync_on_insert then prepares quickly. A row above the
    // high-water mark is an insert not folded yet, which the fold records
    // whole, as it is then (`flush` skips its marks): nothing to capture.
    let (changed, below_hwm) = (
        any_changed(t),
        format!("{new_rid} <= (SELECT hwm FROM lsync_tables WHERE id = {id})"),
    );
    // A shared row's mark holds the HLC of the update, which only a
    // function gives (`lsync_capture_hlc`): its statement journal is kept
    // whatever the WHEN asks, and the function is the cheaper question.
    let update_when = match t.mode {
        Mode::Shared => format!("{has_id} lsync_capturing() AND {changed} AND {below_hwm}"),
        Mode::DeviceOwned => format!("{has_id} {changed} AND {below_hwm} AND {CAPTURING}"),
    };
    let update_trigger = update_of_trigger(
        "upd",
        t,
        &t.columns,
        &update_when,
        &format!("{owner_old} {}", mark_update(t, &new_rid)),
    );
    let ids_trigger = update_of_trigger(
        "ids",
        t,
        &id_columns(t, ctx.rowid_alias),
        &format!("{has_id} ({id_changed}) AND lsync_capturing()"),
        &format!("SELECT RAISE(ABORT, {immutable});"),
    );
    // Its own trigger, which UPDATEs that leave the FK columns alone do not
    // compile at all.
    let fk_cols: Vec<&str> = t.fks.keys().map(String::as_str).collect();
    let links_trigger = update_of_trigger("lnk", t, &fk_cols, "lsync_capturing()", &forget_links);
    format!(
        "{insert_trigger}
         {ids_trigger}
         {rekey}
         {update_trigger}
         {links_trigger}
         CREATE TRIGGER {del} AFTER DELETE ON {tbl}
         WHEN {has_id} lsync_capturing()
         BEGIN
           {owner_old}
           {hlc_bump}
           {record_delete}
           DELETE FROM lsync_dirty WHERE tbl = {id} AND rid = {old_rid};
           DELETE FROM lsync_deferred WHERE tbl = {id} AND rid = {old_rid};
           {detach}
         END;",
        insert_trigger = insert_trigger(t, ctx.fill),
        del = trigger_name("del", &t.name),
        rekey = rekey_trigger(t, &record_delete, ctx.me),
    )
}

/// The mark an update of tracked columns leaves in `lsync_dirty`.
///
/// A shared row's columns merge one by one, each by its HLC: the mark
/// holds the changed columns and the HLC of the update, one per
/// transaction (`lsync_capture_hlc`).
///
/// A device-owned row's version is the row's, whole, and only its owner
/// writes it, so the mark holds neither: the fold gives the row an HLC of
/// its own, later than the update's and than any version folded before,
/// which keeps the row's versions rising (`flush`). A mark already there
/// (an update or a re-insert since the last fold) says the same: this
/// row changed since.
fn mark_update(t: &Table, rid: &str) -> String {
    let id = t.id;
    match t.mode {
        Mode::Shared => {
            let mask = change_mask(t);
            format!(
                "INSERT INTO lsync_dirty(tbl, rid, op, hlc, cols)
                   VALUES ({id}, {rid}, {OP_UPDATE}, lsync_capture_hlc({HLC_VALUE}), {mask})
                   ON CONFLICT(tbl, rid) DO UPDATE SET hlc = excluded.hlc, cols = cols | excluded.cols;"
            )
        }
        // -1: every column, should the table ever be folded as shared.
        // DO NOTHING for a mark already there: an `UPDATE OR FAIL` (or any
        // OR) of the app's overrides the trigger's OR, but not an upsert's
        // clause. OR IGNORE as well, for the NOT NULL columns (never NULL
        // here), whose default ABORT would keep a statement journal (see
        // `CAPTURING`).
        Mode::DeviceOwned => format!(
            "INSERT OR IGNORE INTO lsync_dirty(tbl, rid, op, hlc, cols)
               VALUES ({id}, {rid}, {OP_UPDATE}, 0, -1)
               ON CONFLICT(tbl, rid) DO NOTHING;"
        ),
    }
}

/// `CREATE TRIGGER lsync_<kind>_<table> AFTER UPDATE OF <cols>`, or nothing
/// without columns: SQLite compiles such a trigger only into the UPDATEs
/// that set one of them, so the others pay nothing for it.
fn update_of_trigger<S: AsRef<str>>(
    kind: &str,
    t: &Table,
    cols: &[S],
    when: &str,
    body: &str,
) -> String {
    if cols.is_empty() {
        return String::new();
    }
    let of: Vec<String> = cols.iter().map(|c| q(c.as_ref())).collect();
    format!(
        "CREATE TRIGGER {name} AFTER UPDATE OF {of} ON {tbl}
         WHEN {when}
         BEGIN
           {body}
         END;",
        name = trigger_name(kind, &t.name),
        of = of.join(", "),
        tbl = q(&t.name),
    )
}

/// The INSERT trigger: it records a row inserted at or below the
/// high-water mark (an explicit or reused rowid, INSERT OR REPLACE), which
/// the mark does not find, and fills a NULL uuid column.
///
/// A table whose ids need no fill gets a trigger that calls no function,
/// cannot ABORT, and holds one INSERT into `lsync_reinserted`, whose own
/// trigger does the work (`sql/schema.sql` says why). So the HLC of such a
/// re-insert is the fold's, and a REPLACE of another device's row rolls
/// the transaction back.
fn insert_trigger(t: &Table, uuid_fill: &str) -> String {
    let (id, tbl) = (t.id, q(&t.name));
    let ins = trigger_name("ins", &t.name);
    let below_hwm = format!("NEW.rowid <= (SELECT hwm FROM lsync_tables WHERE id = {id})");
    if let (Some(c), false) = (t.uuid_col(), uuid_fill.is_empty()) {
        // The uuid column's kind, so that the callback needs no lookup of it.
        let blob = i32::from(uuid_fill.contains("'blob'"));
        let null = format!("NEW.{} IS NULL", q(c));
        return format!(
            "CREATE TRIGGER {ins} AFTER INSERT ON {tbl}
             WHEN {null} OR {below_hwm}
             BEGIN
               SELECT lsync_on_insert({id}, NEW.rowid, {null}, {blob});
             END;"
        );
    }
    // A WITHOUT ROWID row is numbered here (`rids`), above the mark unless
    // its key has a number already (INSERT OR REPLACE, a re-insert).
    let (when, number, log) = match (t.without_rowid, t.uuid_col()) {
        (true, Some(k)) => {
            let rid = t.rid_of("NEW");
            (
                String::new(),
                t.number_sql(&format!("NEW.{}", q(k))),
                format!(
                    "SELECT {id}, {rid} WHERE {rid} <= (SELECT hwm FROM lsync_tables WHERE id = {id})"
                ),
            )
        }
        _ => (
            format!("WHEN {below_hwm}"),
            String::new(),
            format!("VALUES ({id}, NEW.rowid)"),
        ),
    };
    format!(
        "CREATE TRIGGER {ins} AFTER INSERT ON {tbl}
         {when}
         BEGIN
           {number}
           INSERT INTO lsync_reinserted(tbl, rid) {log};
         END;"
    )
}

/// A row identified by its key whose key changes is another row: the
/// update is captured as the old row's delete and the new row's insert
/// (the fold gives it its new global id).
fn rekey_trigger(t: &Table, record_delete: &str, me: i64) -> String {
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
        owner_old = owner_check(t, "OLD.rowid", me),
        hlc_bump = hlc_bump(),
        id = t.id,
    )
}
