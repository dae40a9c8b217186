//! The page-level import into an empty library: the snapshot (or a copy of
//! it) takes this database's local state, its own tables, device id,
//! settings and peers, then replaces the database through the backup API,
//! which is one write transaction.

use std::path::{Path, PathBuf};

use super::{watermarks, Snap, BUSY_MS};
use crate::catalog;
use crate::error::{Error, Result};
use crate::ident::{q, qm};
use crate::schema;
use crate::snapfile::{objects, private, remove_db_files, SHARED_KEYS};
use crate::sql::{Connection, Db, Value, OPEN_READWRITE};

/// Why the page-level import cannot be used, or `None` when it can.
pub(super) fn empty_path_refusal(db: Db, s: Db) -> Result<Option<String>> {
    if !db.autocommit() || db.in_transaction() {
        return Ok(Some("called inside a transaction".into()));
    }
    if db.filename().is_none() {
        return Ok(Some("the database has no file".into()));
    }
    if schema::get_i64(db, "next_seq")? > 1 {
        return Ok(Some("this database has issued change cursors".into()));
    }
    for meta in [
        "lsync_clock",
        "lsync_dirty",
        "lsync_deleted",
        "lsync_deferred",
        "lsync_parked",
        "lsync_alias",
    ] {
        if db.query_i64(&format!("SELECT EXISTS (SELECT 1 FROM {meta})"), &[])? == Some(1) {
            return Ok(Some(format!("{meta} is not empty")));
        }
    }
    for t in catalog::load_all(db)? {
        if db.query_i64(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", qm(&t.name)),
            &[],
        )? == Some(1)
        {
            return Ok(Some(format!("'{}' has rows", t.name)));
        }
    }
    for pragma in ["page_size", "encoding", "auto_vacuum"] {
        let sql = format!("PRAGMA {pragma}");
        if db.query_value(&sql, &[])? != s.query_value(&sql, &[])? {
            return Ok(Some(format!("a different {pragma}")));
        }
    }
    if tracked_schema(db)? != tracked_schema(s)? {
        return Ok(Some(
            "the tracked tables are defined differently (SQL, indexes or triggers)".into(),
        ));
    }
    Ok(None)
}

/// The SQL of the tracked tables, their indexes and triggers, and their
/// lsync_tables rows (without the high-water mark).
fn tracked_schema(c: Db) -> Result<Vec<Value>> {
    let mut s = c.prepare(
        "SELECT type, name, sql FROM sqlite_schema
         WHERE tbl_name IN (SELECT name FROM lsync_tables)
         UNION ALL SELECT id, name, mode || uuid_col || columns || fks || options FROM lsync_tables
         ORDER BY 1, 2",
    )?;
    let mut out = Vec::new();
    while s.step()? {
        out.extend((0..3).map(|i| s.value(i)));
    }
    Ok(out)
}

pub(super) enum Empty {
    /// Imported; the number of deferred links it holds.
    Done(i64),
    /// The copy could not take this database's local state; merge instead.
    Unusable(String),
}

/// Deletes the working copy however the import ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        remove_db_files(&self.0);
    }
}

/// With `consume`, the local state goes into the snapshot file itself,
/// with a rollback journal so that a failed injection leaves it intact for
/// the merge path; otherwise into a copy that is deleted however it ends.
pub(super) fn restore_empty(
    db: Db,
    file: &Path,
    snap: &Snap,
    me: &str,
    consume: bool,
) -> Result<Empty> {
    let target = db
        .filename()
        .ok_or_else(|| Error::msg("the database has no file"))?;
    let tmp = if consume {
        None
    } else {
        let mut name = target.as_os_str().to_owned();
        name.push(format!("-restore-{}.tmp", uuid::Uuid::now_v7()));
        let tmp = TempFile(PathBuf::from(name));
        std::fs::copy(file, &tmp.0).map_err(|e| {
            Error::msg(format!(
                "cannot copy the snapshot next to the database: {e}"
            ))
        })?;
        Some(tmp)
    };
    let work = tmp.as_ref().map_or(file, |t| t.0.as_path());
    let copy = Connection::open(work, OPEN_READWRITE)?;
    let c = copy.db();
    private(c)?;
    // Scratch either way: no fsync. A copy is deleted on failure, never
    // rolled back, so it needs no journal either.
    c.exec(if consume {
        "PRAGMA synchronous = OFF"
    } else {
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF"
    })?;
    c.run(
        "ATTACH ?1 AS here",
        &[target.to_string_lossy().into_owned().into()],
    )?;
    let injected = (|| -> Result<i64> {
        c.exec("BEGIN")?;
        inject_local_objects(c)?;
        inject_local_state(c, snap, me)?;
        let deferred = c
            .query_i64("SELECT count(*) FROM main.lsync_deferred", &[])?
            .unwrap_or(0);
        c.exec("COMMIT")?;
        Ok(deferred)
    })();
    let _ = c.exec("DETACH here");
    let deferred = match injected {
        Ok(d) => d,
        Err(e) => return Ok(Empty::Unusable(e.detail().to_owned())),
    };
    // One write transaction on this database: all of it or nothing.
    let copied = Connection::open(&target, OPEN_READWRITE).and_then(|dest| {
        dest.db().busy_timeout(BUSY_MS)?;
        dest.db().backup_from(c)
    });
    if copied.is_err() && consume {
        // It now holds this database's local objects: it must not linger.
        drop(copy);
        remove_db_files(file);
    }
    copied.map(|()| Empty::Done(deferred))
}

/// Recreates this database's own objects (its untracked tables with their
/// rows, views, indexes and triggers) in the copy.
fn inject_local_objects(c: Db) -> Result<()> {
    let s = c.prepare(
        "SELECT type, name, sql FROM here.sqlite_schema
         WHERE sql IS NOT NULL
           AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'lsync\\_%' ESCAPE '\\'
           AND NOT (type IN ('table', 'index', 'trigger')
                    AND tbl_name IN (SELECT name FROM here.lsync_tables))
         ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid",
    )?;
    for (kind, name, sql) in &objects(s)? {
        // Creating a virtual table may already have made its shadow tables.
        let exists = c.query_i64(
            "SELECT 1 FROM main.sqlite_schema WHERE name = ?1",
            &[name.as_str().into()],
        )?;
        if exists.is_none() {
            c.exec(sql)?;
        }
        let is_virtual = sql
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("CREATE VIRTUAL");
        if kind == "table" && !is_virtual {
            let n = q(name);
            c.exec(&format!(
                "DELETE FROM main.{n}; INSERT INTO main.{n} SELECT * FROM here.{n};"
            ))?;
        }
    }
    let has = |schema: &str| -> Result<bool> {
        Ok(c.query_i64(
            &format!("SELECT 1 FROM {schema}.sqlite_schema WHERE name = 'sqlite_sequence'"),
            &[],
        )?
        .is_some())
    };
    if has("main")? && has("here")? {
        c.exec(
            "DELETE FROM main.sqlite_sequence WHERE name NOT IN (SELECT name FROM main.lsync_tables);
             INSERT INTO main.sqlite_sequence SELECT * FROM here.sqlite_sequence
               WHERE name NOT IN (SELECT name FROM main.lsync_tables);",
        )?;
    }
    for pragma in ["user_version", "application_id"] {
        let v = c
            .query_i64(&format!("PRAGMA here.{pragma}"), &[])?
            .unwrap_or(0);
        c.exec(&format!("PRAGMA main.{pragma} = {v}"))?;
    }
    Ok(())
}

/// This database's identity, settings and peers, in the copy.
fn inject_local_state(c: Db, snap: &Snap, me: &str) -> Result<()> {
    let shared: Vec<serde_json::Value> = SHARED_KEYS.iter().map(|k| (*k).into()).collect();
    let shared = serde_json::to_string(&shared).map_err(|e| Error::msg(e.to_string()))?;
    c.exec("DELETE FROM main.lsync_config WHERE key LIKE 'snapshot\\_%' ESCAPE '\\'")?;
    c.run(
        "INSERT OR REPLACE INTO main.lsync_config(key, value)
         SELECT key, value FROM here.lsync_config
         WHERE key NOT IN (SELECT value FROM json_each(?1))",
        &[shared.into()],
    )?;
    c.run(
        "INSERT OR IGNORE INTO main.lsync_devices(id) VALUES (?1)",
        &[me.into()],
    )?;
    c.run(
        "UPDATE main.lsync_config SET value = (SELECT idx FROM main.lsync_devices WHERE id = ?1)
         WHERE key = 'device_idx'",
        &[me.into()],
    )?;
    c.exec(
        "UPDATE main.lsync_config SET value = 1 WHERE key = 'library_locked';
         UPDATE main.lsync_config SET value = max(value,
           coalesce((SELECT value FROM here.lsync_config WHERE key = 'hlc'), 0)) WHERE key = 'hlc';
         CREATE TEMP TABLE snap_peers AS SELECT device_id, recv_cursor FROM main.lsync_peers;
         DELETE FROM main.lsync_peers;
         INSERT INTO main.lsync_peers SELECT * FROM here.lsync_peers;",
    )?;
    let mut s = c.prepare("SELECT device_id, recv_cursor FROM temp.snap_peers")?;
    let mut peers = Vec::new();
    while s.step()? {
        peers.push((s.text(0).unwrap_or_default(), s.i64(1)));
    }
    drop(s);
    // Unqualified names resolve to `main` here (temp has no lsync_peers).
    watermarks(&|sql: &str, p: &[Value]| c.run(sql, p), &peers, snap, me)
}
