//! The import into an empty library. The snapshot is attached read-only to
//! a connection of ours and its rows are copied, by `INSERT ... SELECT`,
//! into this database's own tables, in one write transaction: the tracked
//! tables' rows and lsync's metadata, never a schema object of the file.
//! SQLite decodes every row and checks it against this database's
//! constraints, and builds this database's indexes itself; the file's
//! triggers, views, indexes and other tables are never read. (Adopting the
//! file page by page was faster, but made its schema the app's.)

use std::path::Path;

use super::trust::MAX_CURSOR;
use super::{watermarks, Snap, BUSY_MS};
use crate::catalog::{self, Table};
use crate::error::{Error, Result};
use crate::ident::{q, qm};
use crate::snapfile::{harden, private};
use crate::sql::{Connection, Db, Value, OPEN_READWRITE, OPEN_URI};
use crate::{bail, schema};

/// Page cache of the importing connection: enough that building an index
/// on random UUIDs does not thrash.
const CACHE_KIB: i64 = 32 << 10;

/// lsync's metadata taken from the snapshot, whole (its columns are
/// checked to be this database's, `trust::check_metadata`). The local
/// ones are empty in an empty library, except the quarantine, which keeps
/// its rows and gains the snapshot's. Not taken: `lsync_config` (only the
/// allowed settings, checked), `lsync_tables` (only the high-water marks),
/// `lsync_devices` (by `take_devices`), `lsync_peers` (only watermarks),
/// and the captures `lsync_dirty` and `lsync_deleted`, which a snapshot
/// does not hold.
const METADATA: [&str; 5] = [
    "lsync_clock",
    "lsync_gid",
    "lsync_alias",
    "lsync_deferred",
    "lsync_parked",
];

/// Why the import into an empty library cannot be used, or `None` when it
/// can. `s` is the snapshot.
pub(super) fn empty_path_refusal(db: Db, s: Db) -> Result<Option<String>> {
    if !db.autocommit() || db.in_transaction() {
        return Ok(Some("called inside a transaction".into()));
    }
    if db.filename().is_none() {
        return Ok(Some("the database has no file".into()));
    }
    if let Some(why) = has_data(db)? {
        return Ok(Some(why));
    }
    // An attached database must have the main database's text encoding.
    let sql = "PRAGMA encoding";
    if db.query_value(sql, &[])? != s.query_value(sql, &[])? {
        return Ok(Some("a different text encoding".into()));
    }
    if tracked_schema(db)? != tracked_schema(s)? {
        return Ok(Some("the tracked tables are defined differently".into()));
    }
    Ok(None)
}

/// Why this library is not empty, if it is not.
fn has_data(db: Db) -> Result<Option<String>> {
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
        "lsync_gid",
    ] {
        if db.query_i64(&format!("SELECT EXISTS (SELECT 1 FROM main.{meta})"), &[])? == Some(1) {
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
    Ok(None)
}

/// The SQL of the tracked tables and their lsync_tables rows (without the
/// high-water mark): the same on both sides, the rows fit column for
/// column. Their indexes and triggers need not match: neither is taken.
fn tracked_schema(c: Db) -> Result<Vec<Value>> {
    let mut s = c.prepare(
        "SELECT type, lower(name), sql FROM main.sqlite_schema
         WHERE type = 'table' AND lower(name) IN (SELECT lower(name) FROM lsync_tables)
         UNION ALL SELECT id, name, json_array(mode, uuid_col, columns, fks, options)
         FROM lsync_tables
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
    /// The rows did not go in (this database is no longer empty, or the
    /// snapshot's rows break its constraints); merge instead.
    Unusable(String),
}

/// Copies the snapshot's rows into this database, all or nothing.
pub(super) fn restore_empty(db: Db, file: &Path, snap: &Snap, me: &str) -> Result<Empty> {
    let target = db
        .filename()
        .ok_or_else(|| Error::msg("the database has no file"))?;
    let conn = Connection::open(&target, OPEN_READWRITE | OPEN_URI)?;
    let c = conn.db();
    c.busy_timeout(BUSY_MS)?;
    // Neither the app's triggers nor lsync's (not loaded here) fire, and
    // nothing of the file runs.
    private(c)?;
    harden(c)?;
    c.exec(&format!("PRAGMA cache_size = -{CACHE_KIB}"))?;
    let sync = commit_sync(db)?;
    c.exec(&format!("PRAGMA synchronous = {sync}"))?;
    // No checkpoint inside the COMMIT: the import's pages reach the
    // database file by a later one (`settle`).
    c.exec("PRAGMA wal_autocheckpoint = 0")?;
    c.run("ATTACH ?1 AS snap", &[read_only_uri(file).into()])?;
    c.exec("BEGIN IMMEDIATE")?;
    let imported = (|| -> Result<std::result::Result<i64, String>> {
        // Another connection may have written since the first look.
        if let Some(why) = has_data(c)? {
            return Ok(Err(why));
        }
        let tables = catalog::load_all(c)?;
        for t in &tables {
            take_rows(c, t)?;
        }
        take_metadata(c)?;
        for t in tables.iter().filter(|t| t.without_rowid) {
            check_numbered(c, t)?;
        }
        take_devices(c, me)?;
        take_settings(c, snap)?;
        // Unqualified names resolve to `main` here (temp has no lsync_peers).
        watermarks(&|sql: &str, p: &[Value]| c.run(sql, p), snap, me)?;
        Ok(Ok(c
            .query_i64("SELECT count(*) FROM main.lsync_deferred", &[])?
            .unwrap_or(0)))
    })();
    let done = match imported {
        Ok(Ok(deferred)) => c.exec("COMMIT").map(|()| Empty::Done(deferred)),
        Ok(Err(why)) => Ok(Empty::Unusable(why)),
        Err(e) => Ok(Empty::Unusable(e.detail().to_owned())),
    };
    if !matches!(done, Ok(Empty::Done(_))) {
        let _ = c.exec("ROLLBACK");
    }
    let _ = c.exec("DETACH snap");
    if matches!(done, Ok(Empty::Done(_))) {
        settle(c, &target, sync)?;
    }
    done
}

/// `PRAGMA synchronous` values.
const NORMAL: i64 = 1;
const FULL: i64 = 2;

/// How the import commits: as the caller's connection does (a sidecar's
/// runs with NORMAL), and never without syncing at all. In WAL mode NORMAL
/// does not sync the WAL in the COMMIT, so the import is visible to other
/// connections one fsync sooner; `settle` makes it durable before
/// `lsync_restore` returns.
fn commit_sync(db: Db) -> Result<i64> {
    Ok(db
        .query_i64("PRAGMA main.synchronous", &[])?
        .unwrap_or(FULL)
        .max(NORMAL))
}

/// After the COMMIT: syncs the WAL when the COMMIT did not (`NORMAL`), so
/// that whatever happens to the machine after this, the import stays. A
/// failure here comes after the import was committed, and says so.
///
/// The import is not checkpointed here: copying it into the database file
/// and syncing that costs as much again as the WAL's own write (a third of
/// a 1M-row import), and nothing needs it before the call returns. A later
/// checkpoint copies it (SQLite's automatic one at a commit, the last
/// connection's close, or the sidecar's, which it starts right after the
/// import). Readers see the import in the WAL meanwhile.
fn settle(c: Db, target: &Path, sync: i64) -> Result<()> {
    let wal_mode = c.query_text("PRAGMA main.journal_mode", &[]).ok().flatten();
    if wal_mode.as_deref() != Some("wal") || sync >= FULL {
        // A rollback journal's COMMIT synced the file, NORMAL or not, and
        // a FULL COMMIT synced the WAL.
        return Ok(());
    }
    let mut wal = target.as_os_str().to_owned();
    wal.push("-wal");
    let synced = std::fs::File::open(&wal).and_then(|f| f.sync_data());
    match synced {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::msg(format!(
            "lsync_restore: the snapshot was imported, but syncing the WAL failed: {e}"
        ))),
        _ => Ok(()),
    }
}

/// Every row of WITHOUT ROWID table `t` has one number, and every number
/// one row: the snapshot's `lsync_gid` is not trusted to.
fn check_numbered(c: Db, t: &Table) -> Result<()> {
    let rows = c.query_i64(&format!("SELECT count(*) FROM {}", qm(&t.name)), &[])?;
    let numbered = c.query_i64(&format!("SELECT count(*) FROM {}", t.src()), &[])?;
    let numbers = c.query_i64(
        "SELECT count(*) FROM main.lsync_gid WHERE tbl = ?1",
        &[t.id.into()],
    )?;
    if rows != numbered || rows != numbers {
        bail!(
            "the snapshot numbers the rows of '{}' wrongly ({rows:?} rows, {numbered:?} numbered, {numbers:?} numbers)",
            t.name
        );
    }
    Ok(())
}

/// `file:` URI opening `path` read-only (for ATTACH).
fn read_only_uri(path: &Path) -> String {
    let path = path.to_string_lossy();
    let mut uri = String::from(if path.starts_with('/') {
        "file://"
    } else {
        "file:"
    });
    for ch in path.chars() {
        match ch {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            ch => uri.push(ch),
        }
    }
    uri.push_str("?mode=ro");
    uri
}

/// The rows of tracked table `t`, rowids included, read from the table
/// itself (`NOT INDEXED`: an index of the file is never trusted to stand
/// for its table). Its high-water mark covers every row taken.
fn take_rows(c: Db, t: &Table) -> Result<()> {
    let cols = columns(c, &t.name)?.join(", ");
    // A WITHOUT ROWID table's numbers come with `lsync_gid`.
    let (rowid, order, top) = if t.without_rowid {
        let top = format!("SELECT max(rid) FROM snap.lsync_gid WHERE tbl = {}", t.id);
        ("", "", top)
    } else {
        let top = format!("SELECT max(rowid) FROM {}", qm(&t.name));
        ("rowid, ", " ORDER BY rowid", top)
    };
    c.exec(&format!(
        "INSERT INTO {m}({rowid}{cols}) SELECT {rowid}{cols} FROM snap.{n} NOT INDEXED{order}",
        m = qm(&t.name),
        n = q(&t.name),
    ))?;
    let top = c.query_i64(&top, &[])?.unwrap_or(0);
    let theirs = c.query_value(
        "SELECT hwm FROM snap.lsync_tables WHERE id = ?1",
        &[t.id.into()],
    )?;
    let hwm = match theirs {
        Some(Value::Integer(h)) if (0..=MAX_CURSOR).contains(&h) => h.max(top),
        other => {
            return Err(Error::msg(format!(
                "the snapshot's high-water mark of '{}' is out of range ({other:?})",
                t.name
            )))
        }
    };
    c.run(
        "UPDATE main.lsync_tables SET hwm = ?2 WHERE id = ?1",
        &[t.id.into(), hwm.into()],
    )?;
    // AUTOINCREMENT: never below what the snapshot's device handed out.
    let sequence = |schema: &str| -> Result<bool> {
        Ok(c.query_i64(
            &format!("SELECT 1 FROM {schema}.sqlite_schema WHERE name = 'sqlite_sequence'"),
            &[],
        )?
        .is_some())
    };
    if sequence("main")? && sequence("snap")? {
        c.run(
            "UPDATE main.sqlite_sequence SET seq = max(seq, coalesce((SELECT max(seq)
               FROM snap.sqlite_sequence s WHERE s.name = ?1 AND typeof(s.seq) = 'integer'
               AND s.seq BETWEEN 0 AND ?2), 0))
             WHERE name = ?1",
            &[(*t.name).into(), MAX_CURSOR.into()],
        )?;
    }
    Ok(())
}

/// The metadata tables of [`METADATA`], and the snapshot's quarantine
/// (renumbered, as ids are local; one already here is kept).
fn take_metadata(c: Db) -> Result<()> {
    for table in METADATA {
        let cols = columns(c, table)?.join(", ");
        c.exec(&format!(
            "INSERT INTO main.{table}({cols}) SELECT {cols} FROM snap.{table} NOT INDEXED"
        ))?;
    }
    let mut cols = columns(c, "lsync_quarantine")?;
    cols.retain(|col| *col != q("id"));
    let cols = cols.join(", ");
    c.exec(&format!(
        "INSERT OR IGNORE INTO main.lsync_quarantine({cols})
         SELECT {cols} FROM snap.lsync_quarantine NOT INDEXED ORDER BY id"
    ))
}

/// The snapshot's device aliases (ids checked by `trust::check_devices`),
/// which its clock entries use; this database's own device keeps its id,
/// under the alias it gets there.
fn take_devices(c: Db, me: &str) -> Result<()> {
    c.exec(
        "DELETE FROM main.lsync_devices;
         INSERT INTO main.lsync_devices(idx, id) SELECT idx, id FROM snap.lsync_devices NOT INDEXED;",
    )?;
    let idx = schema::device_idx(c, me)?;
    crate::setup::set_device_idx(c, idx)
}

/// The settings taken, as `trust::take_settings` checked them: the next
/// cursor, the HLC (the larger of both), and the library is locked.
fn take_settings(c: Db, snap: &Snap) -> Result<()> {
    schema::set(c, "next_seq", snap.next_seq.into())?;
    schema::set(c, "library_locked", Value::Integer(1))?;
    c.run(
        "UPDATE main.lsync_config SET value = max(value, ?1) WHERE key = 'hlc'",
        &[snap.hlc.into()],
    )
}

/// The columns of `table` as an INSERT lists them: every one but the
/// generated ones, quoted, in order.
fn columns(c: Db, table: &str) -> Result<Vec<String>> {
    let mut s =
        c.prepare("SELECT name FROM pragma_table_xinfo(?1, 'main') WHERE hidden = 0 ORDER BY cid")?;
    s.bind(1, &table.into())?;
    let mut out = Vec::new();
    while s.step()? {
        out.push(q(&s.text(0).unwrap_or_default()));
    }
    Ok(out)
}
