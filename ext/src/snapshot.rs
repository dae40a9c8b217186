//! `lsync_snapshot(path [, owner_device])`: a standalone SQLite file holding
//! the tracked tables and the sync metadata needed to continue from it.
//!
//! The copy is page-level (the backup API: one read transaction, so it is
//! consistent while other connections write), then stripped in place: local
//! objects, device identity and captures not yet in the clock go. Row
//! contents may be newer than their clock entry (an update after the flush);
//! that change still has a clock entry to come, so it arrives again by
//! catch-up with its real HLC and the usual rules converge.

use std::path::Path;

use crate::catalog::{self, Mode, Table};
use crate::clock::{Clock, OP_INSERT};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::ident::{q, qm};
use crate::snapfile::{objects, private, remove_db_files, SHARED_KEYS};
use crate::sql::{Connection, Db, Value, OPEN_NOFOLLOW, OPEN_READWRITE};
use crate::{bail, dbcopy, flush, schema};

/// `lsync_snapshot`'s options JSON.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// fsync the file before returning. A replicator's snapshots are
    /// scratch files it can check and make again, so it skips the sync.
    #[serde(default = "yes")]
    pub sync: bool,
}

fn yes() -> bool {
    true
}

impl Default for Options {
    fn default() -> Self {
        Options { sync: true }
    }
}

/// Writes the snapshot and returns its size in bytes.
pub fn snapshot(
    db: Db,
    conn: &Conn,
    path: &str,
    owner: Option<&str>,
    opts: &Options,
) -> Result<i64> {
    crate::setup::ensure(db)?;
    if !db.autocommit() {
        bail!(
            "lsync_snapshot: call it outside a transaction: a snapshot holds committed data only"
        );
    }
    let file = Path::new(path);
    if path.is_empty() {
        bail!("lsync_snapshot: the path is empty; choose a new file name (nothing was written)");
    }
    refuse_existing(file, path)?;
    let owner_idx = match owner {
        None => None,
        Some(o) => Some(
            db.query_i64("SELECT idx FROM lsync_devices WHERE id = ?1", &[o.into()])?
                .ok_or_else(|| {
                    Error::msg(format!(
                        "lsync_snapshot: device {o} is not known here, so it owns no rows; nothing was written"
                    ))
                })?,
        ),
    };
    // Every row folded and committed, so the clock covers what is copied.
    // (Tests skip it to stand for writes that land between fold and copy.)
    if !skip_flush_for_testing(db, conn)? {
        db.write_savepoint("lsync_snapshot", || flush::flush(db))?;
    }
    let mut created = create_new(file, path)?;
    let written = (|| -> Result<i64> {
        // Written through the handle that made the file, never a path.
        let by_file = dbcopy::copy_quiet_file(db, &mut created)?;
        drop(created);
        // The file we just made, never a link put in its place since.
        let copy = Connection::open(file, OPEN_READWRITE | OPEN_NOFOLLOW)?;
        if !opts.sync {
            copy.db().exec("PRAGMA synchronous = OFF")?;
        }
        if !by_file {
            copy.db().backup_from(db)?;
        }
        strip(copy.db(), owner, owner_idx)?;
        drop(copy);
        Ok(std::fs::metadata(file)
            .map_err(|e| Error::msg(format!("lsync_snapshot: '{path}': {e}")))?
            .len() as i64)
    })();
    if written.is_err() {
        remove_db_files(file);
    }
    written.map_err(|e| {
        Error::msg(format!(
            "lsync_snapshot: {}; nothing was written",
            e.detail()
        ))
    })
}

/// Refuses a path that exists in any form, a symbolic link (dangling or
/// not) included, and one whose journal or WAL files exist: SQLite would
/// open those through a link.
fn refuse_existing(file: &Path, path: &str) -> Result<()> {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut p = file.as_os_str().to_owned();
        p.push(suffix);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let name = format!("{path}{suffix}");
        if meta.file_type().is_symlink() {
            bail!(
                "lsync_snapshot: '{name}' is a symbolic link; a snapshot is never written through                  one: choose a new file name (nothing was written)"
            );
        }
        bail!(
            "lsync_snapshot: '{name}' already exists; choose a new file name (nothing was written)"
        );
    }
    Ok(())
}

/// Creates the snapshot file: `O_CREAT | O_EXCL`, which fails on any
/// existing name, a symbolic link included, so nothing is written through
/// a link that appeared after the check.
fn create_new(file: &Path, path: &str) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                "already exists (a file or a symbolic link)".to_owned()
            } else {
                format!("cannot be created: {e}")
            };
            Error::msg(format!(
                "lsync_snapshot: '{path}' {why}; choose a new file name (nothing was written)"
            ))
        })
}

/// `test_snapshot_no_flush` = 1 in lsync_config, honoured only on a test
/// connection (`sqlite3_lsync_testing_init`): the captures left pending are
/// then exactly what another connection could commit between the fold and
/// the copy.
fn skip_flush_for_testing(db: Db, conn: &Conn) -> Result<bool> {
    Ok(conn.testing && schema::get_i64(db, "test_snapshot_no_flush")? == 1)
}

fn strip(c: Db, owner: Option<&str>, owner_idx: Option<i64>) -> Result<()> {
    private(c)?;
    // The copy has the source's header: leave WAL mode so the snapshot is
    // one self-contained file.
    let mode = c.query_text("PRAGMA journal_mode = DELETE", &[])?;
    if mode.as_deref() != Some("delete") {
        bail!("cannot leave WAL mode in the copy (journal_mode is {mode:?})");
    }
    // Nothing private may stay in free pages.
    c.exec("PRAGMA secure_delete = ON")?;
    c.exec("BEGIN IMMEDIATE")?;
    let stripped = (|| {
        let tables = catalog::load_all(c)?;
        drop_local_objects(c, &tables)?;
        blank_local_columns(c, &tables)?;
        let mut clock = Clock::open(c)?;
        for t in &tables {
            drop_uncommitted_captures(c, &tables, t, &mut clock)?;
        }
        c.exec("DELETE FROM lsync_dirty; DELETE FROM lsync_deleted;")?;
        if let Some(idx) = owner_idx {
            for t in tables.iter().filter(|t| t.mode == Mode::DeviceOwned) {
                keep_owner(c, &tables, t, idx)?;
            }
        }
        let source = schema::get_text(c, "device_id")?;
        let keep: Vec<Value> = SHARED_KEYS.iter().map(|k| (*k).into()).collect();
        c.run(
            "DELETE FROM lsync_config WHERE key NOT IN (SELECT value FROM json_each(?1))",
            &[json(&keep)?.into()],
        )?;
        if owner.is_some() {
            // A partial snapshot holds no peer's full state.
            c.exec("DELETE FROM lsync_peers")?;
        } else {
            c.exec(
                "UPDATE lsync_peers SET addr = NULL, acked_cursor = 0, failures = 0,
                   last_contact = NULL, last_error = NULL, resync_error = NULL,
                   forgotten_ms = NULL",
            )?;
        }
        let mut rows = 0;
        for t in &tables {
            rows += c
                .query_i64(&format!("SELECT count(*) FROM {}", qm(&t.name)), &[])?
                .unwrap_or(0);
        }
        let cursor = (schema::get_i64(c, "next_seq")? - 1).max(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for (k, v) in [
            ("snapshot_device", Value::from(source)),
            ("snapshot_cursor", cursor.into()),
            ("snapshot_rows", rows.into()),
            ("snapshot_created_ms", now.into()),
            ("snapshot_owner", owner.map(str::to_owned).into()),
        ] {
            if v != Value::Null {
                schema::set(c, k, v)?;
            }
        }
        Ok(())
    })();
    match stripped {
        Ok(()) => c.exec("COMMIT")?,
        Err(e) => {
            let _ = c.exec("ROLLBACK");
            return Err(e);
        }
    }
    let free = c.query_i64("PRAGMA freelist_count", &[])?.unwrap_or(0);
    let pages = c.query_i64("PRAGMA page_count", &[])?.unwrap_or(0);
    if free * 4 > pages {
        c.exec("VACUUM")?;
    }
    Ok(())
}

/// Local columns (`lsync_track`'s `local_columns`) are never shipped: in
/// the snapshot they take their default, or NULL (a NOT NULL column with no
/// default keeps the source's values, as no other value fits).
fn blank_local_columns(c: Db, tables: &[Table]) -> Result<()> {
    for t in tables {
        let mut s = c.prepare(
            "SELECT i.name, i.dflt_value, i.\"notnull\"
             FROM lsync_tables l, json_each(l.options, '$.local_columns') j,
                  pragma_table_info(l.name, 'main') i
             WHERE l.id = ?1 AND i.name = j.value",
        )?;
        s.bind(1, &t.id.into())?;
        let mut sets = Vec::new();
        while s.step()? {
            let col = s.text(0).unwrap_or_default();
            match (s.text(1), s.i64(2) != 0) {
                (Some(default), _) => sets.push(format!("{} = {default}", q(&col))),
                (None, false) => sets.push(format!("{} = NULL", q(&col))),
                (None, true) => {}
            }
        }
        drop(s);
        if !sets.is_empty() {
            c.exec(&format!("UPDATE {} SET {}", qm(&t.name), sets.join(", ")))?;
        }
    }
    Ok(())
}

fn json(v: &[Value]) -> Result<String> {
    let items: Vec<serde_json::Value> = v.iter().map(crate::changes::value_json).collect();
    serde_json::to_string(&items).map_err(|e| Error::msg(e.to_string()))
}

/// Drops every object that is neither a tracked table (with its indexes
/// and triggers) nor lsync's own, and the statistics kept about them.
fn drop_local_objects(c: Db, tables: &[Table]) -> Result<()> {
    let names: Vec<Value> = tables.iter().map(|t| (*t.name).into()).collect();
    let tracked = json(&names)?;
    let mut s = c.prepare(
        "SELECT type, name, sql FROM sqlite_schema
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'lsync\\_%' ESCAPE '\\'
           AND NOT (type IN ('table', 'index', 'trigger')
                    AND tbl_name IN (SELECT value FROM json_each(?1)))
         ORDER BY CASE type WHEN 'view' THEN 0 WHEN 'trigger' THEN 1 WHEN 'table' THEN 2 ELSE 3 END",
    )?;
    s.bind(1, &tracked.clone().into())?;
    for (kind, name, sql) in objects(s)? {
        // Dropping a table took its indexes, triggers and shadow tables.
        let exists = c.query_i64(
            "SELECT 1 FROM sqlite_schema WHERE type = ?1 AND name = ?2",
            &[kind.as_str().into(), name.as_str().into()],
        )?;
        if exists.is_none() {
            continue;
        }
        let dropped = c.exec(&format!("DROP {} {}", kind.to_uppercase(), q(&name)));
        if let Err(e) = dropped {
            // A virtual table whose module is not loaded here cannot be
            // dropped; it has no pages of its own (its shadow tables are
            // ordinary tables, dropped above), so its schema row goes.
            if !sql
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE VIRTUAL")
            {
                return Err(e);
            }
            c.exec("PRAGMA writable_schema = ON")?;
            let r = c.run("DELETE FROM sqlite_schema WHERE name = ?1", &[name.into()]);
            c.exec("PRAGMA writable_schema = OFF")?;
            r?;
        }
    }
    for (stat, col) in [
        ("sqlite_sequence", "name"),
        ("sqlite_stat1", "tbl"),
        ("sqlite_stat4", "tbl"),
    ] {
        let exists = c.query_i64(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            &[stat.into()],
        )?;
        if exists.is_some() {
            c.run(
                &format!("DELETE FROM {stat} WHERE {col} NOT IN (SELECT value FROM json_each(?1))"),
                &[tracked.clone().into()],
            )?;
        }
    }
    Ok(())
}

/// Takes out what other connections wrote after the flush and before the
/// copy: it has no clock entry here, so it arrives later by catch-up.
/// Deleted rows lose their coverage (as a flush would do); rows inserted
/// since (above the high-water mark, or at an uncovered rowid) go.
fn drop_uncommitted_captures(c: Db, tables: &[Table], t: &Table, clock: &mut Clock) -> Result<()> {
    let mut s = c.prepare(
        "SELECT rid FROM lsync_deleted WHERE tbl = ?1
         UNION SELECT rid FROM lsync_dirty WHERE tbl = ?1 AND op = ?2",
    )?;
    s.bind_all(&[t.id.into(), OP_INSERT.into()])?;
    let mut rids = Vec::new();
    while s.step()? {
        rids.push(s.i64(0));
    }
    drop(s);
    let deleted: Vec<i64> = {
        let mut s = c.prepare("SELECT DISTINCT rid FROM lsync_deleted WHERE tbl = ?1")?;
        s.bind(1, &t.id.into())?;
        let mut v = Vec::new();
        while s.step()? {
            v.push(s.i64(0));
        }
        v
    };
    for rid in deleted {
        clock.uncover(t.id, rid)?;
        clock.drop_columns(t.id, rid)?;
    }
    let mut uncovered = Vec::new();
    for rid in rids {
        if clock.row_clock(t.id, rid)?.is_none() {
            uncovered.push(rid);
        }
    }
    remove_rows(
        c,
        tables,
        t,
        &format!(
            "SELECT rowid, {u} FROM {n} AS x WHERE rowid > ?1 OR rowid IN (SELECT value FROM json_each(?2))",
            u = t.gid_of("x"),
            n = t.src()
        ),
        &[t.hwm.into(), json(&uncovered.into_iter().map(Value::from).collect::<Vec<_>>())?.into()],
    )
}

/// Keeps only the rows of device-owned table `t` owned by device `idx`, and
/// their clock entries.
fn keep_owner(c: Db, tables: &[Table], t: &Table, idx: i64) -> Result<()> {
    remove_rows(
        c,
        tables,
        t,
        &format!(
            "SELECT rowid, {u} FROM {n} AS y WHERE rowid NOT IN
               (SELECT x.rowid FROM lsync_clock k JOIN {n} x ON x.rowid BETWEEN k.lo AND k.hi
                WHERE k.tbl = ?1 AND k.col IS NULL AND k.lo IS NOT NULL AND k.origin = ?2)",
            u = t.gid_of("y"),
            n = t.src()
        ),
        &[t.id.into(), idx.into()],
    )?;
    c.run(
        "DELETE FROM lsync_clock WHERE tbl = ?1 AND origin <> ?2",
        &[t.id.into(), idx.into()],
    )
}

/// Deletes the rows of `t` that `select` lists (rowid, uuid). FK cells
/// pointing at them become deferred links to their uuid, as a remote delete
/// leaves them: never a dangling integer.
fn remove_rows(c: Db, tables: &[Table], t: &Table, select: &str, params: &[Value]) -> Result<()> {
    c.exec("CREATE TEMP TABLE IF NOT EXISTS gone(rid INTEGER PRIMARY KEY, uuid ANY)")?;
    c.exec("DELETE FROM temp.gone")?;
    c.run(
        &format!("INSERT INTO temp.gone(rid, uuid) {select}"),
        params,
    )?;
    if c.query_i64("SELECT count(*) FROM temp.gone", &[])? == Some(0) {
        return Ok(());
    }
    for s in tables {
        for (col, _) in s.fks.iter().filter(|(_, target)| **target == *t.name) {
            c.run(
                &format!(
                    "INSERT INTO lsync_deferred(tbl, rid, col, uuid, target, target_uuid)
                     SELECT ?1, x.rowid, ?2, {su}, ?3, g.uuid FROM {sn} x JOIN temp.gone g ON g.rid = x.{c}
                     WHERE {su} IS NOT NULL
                     ON CONFLICT(tbl, rid, col) DO UPDATE SET target = excluded.target,
                       target_uuid = excluded.target_uuid",
                    su = s.gid_of("x"),
                    sn = s.src(),
                    c = q(col),
                ),
                &[s.id.into(), col.as_str().into(), (*t.name).into()],
            )?;
            c.run(
                &format!(
                    "UPDATE {sn} SET {c} = NULL WHERE {c} IN (SELECT rid FROM temp.gone)",
                    sn = qm(&s.name),
                    c = q(col)
                ),
                &[],
            )?;
        }
    }
    c.run(
        &format!(
            "DELETE FROM {} WHERE {}",
            qm(&t.name),
            t.rid_in("SELECT rid FROM temp.gone")
        ),
        &[],
    )?;
    c.run(
        "DELETE FROM lsync_gid WHERE tbl = ?1 AND rid IN (SELECT rid FROM temp.gone)",
        &[t.id.into()],
    )?;
    c.run(
        "DELETE FROM lsync_deferred WHERE tbl = ?1 AND rid IN (SELECT rid FROM temp.gone)",
        &[t.id.into()],
    )
}
