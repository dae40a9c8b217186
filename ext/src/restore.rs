//! `lsync_restore(path)`: importing a snapshot atomically.
//!
//! Everything is checked before anything is written. Into an empty library
//! the import is page-level: the snapshot is copied next to the database,
//! this database's local state (its own tables, device id, settings, peers)
//! is put into the copy, and the copy replaces the database with the backup
//! API, which is one write transaction. Into a library that has data, the
//! snapshot's changes are streamed through the apply code inside one
//! savepoint, so the usual rules (LWW per column, owner state) merge them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lsync_wire::changeset::{Changeset, Fence};
use lsync_wire::report::{ApplyReport, RestoreMode, RestoreReport};

use crate::catalog::{self, Table};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::ident::{q, qm};
use crate::snapshot::{objects, private, remove_db_files, SHARED_KEYS};
use crate::sql::{Connection, Db, Value, OPEN_READONLY, OPEN_READWRITE};
use crate::{apply, bail, changes, schema, snapshot, stability};

/// Changes per batch on the merge path.
const BATCH: usize = 10_000;

/// How long the import waits for other connections' locks.
const BUSY_MS: i32 = 10_000;

/// How `lsync_restore` may treat the snapshot file (its options JSON).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The file is a scratch copy: the page-level import works in it
    /// instead of in a copy of it, and it is deleted after a restore.
    #[serde(default)]
    pub consume: bool,
}

/// What the snapshot says about itself.
struct Snap {
    device: String,
    cursor: i64,
    rows: i64,
    tables: BTreeMap<String, i64>,
    /// Set for a snapshot of one device's rows: it moves no watermark.
    owner: Option<String>,
}

pub fn restore(db: Db, conn: &Conn, path: &str, opts: &Options) -> Result<String> {
    schema::ensure(db)?;
    let file = Path::new(path);
    if !file.is_file() {
        bail!("lsync_restore: no such file: '{path}'; nothing was restored");
    }
    let reader = Connection::open(file, OPEN_READONLY).map_err(restore_error)?;
    let snap = check(db, reader.db(), path)?;
    let me = schema::get_text(db, "device_id")?;
    let mut report = RestoreReport {
        rows: snap.rows,
        tables: snap.tables.clone(),
        source_device: snap.device.clone(),
        cursor: if snap.owner.is_some() { 0 } else { snap.cursor },
        owner: snap.owner.clone(),
        ..Default::default()
    };
    let fallback = match empty_path_refusal(db, reader.db())? {
        None => {
            drop(reader);
            match restore_empty(db, file, &snap, &me, opts.consume) {
                Ok(Empty::Done(deferred)) => {
                    report.mode = RestoreMode::Empty;
                    report.merged.deferred = deferred;
                    if opts.consume {
                        remove_db_files(file);
                    }
                    return to_json(&report);
                }
                Ok(Empty::Unusable(why)) => why,
                Err(e) => return Err(restore_error(e)),
            }
        }
        Some(why) => why,
    };
    let reader = Connection::open(file, OPEN_READONLY).map_err(restore_error)?;
    let peers = peers_of(reader.db())?;
    // What the snapshot's device had applied of ours, as a changeset's fence.
    let fence = Fence {
        sender: snap.device.clone(),
        receiver: me.clone(),
        acked: peers.iter().find(|(d, _)| *d == me).map_or(0, |(_, c)| *c),
    };
    stability::check_fresh(db, Some(&fence), "lsync_restore", "snapshot")?;
    let merged = db
        .write_savepoint("lsync_restore", || {
            let r = merge(db, conn, reader.db())?;
            set_watermarks(db, &peers, &snap, &me)?;
            stability::record_ack(db, Some(&fence))?;
            Ok(r)
        })
        .map_err(restore_error)?;
    report.mode = RestoreMode::Merge;
    report.why_not_empty = Some(fallback);
    report.merged = merged;
    if opts.consume {
        drop(reader);
        remove_db_files(file);
    }
    to_json(&report)
}

fn to_json(report: &RestoreReport) -> Result<String> {
    serde_json::to_string(report).map_err(|e| Error::msg(e.to_string()))
}

fn restore_error(e: Error) -> Error {
    Error::msg(format!(
        "lsync_restore: {}; nothing was restored",
        e.detail()
            .trim_start_matches("lsync_apply: ")
            .trim_end_matches("; nothing was applied")
    ))
}

/// Validates the snapshot against this database. Writes nothing.
fn check(db: Db, s: Db, path: &str) -> Result<Snap> {
    let settings = snapshot::Settings {
        file: s,
        func: "lsync_restore",
        path,
        tail: "; nothing was restored",
    };
    let not_snapshot = |why: &str| settings.not_snapshot(why);
    let config = |key: &str| settings.get(key);
    let device = settings.device()?;
    let cursor = config("snapshot_cursor")?
        .as_i64()
        .ok_or_else(|| not_snapshot("it has no snapshot_cursor setting"))?;
    let library = schema::get_text(db, "library_id")?;
    let theirs = config("library_id")?;
    if theirs.as_str() != Some(library.as_str()) {
        bail!(
            "lsync_restore: the snapshot belongs to library {}, this database to library {library}; nothing was restored",
            theirs.as_str().unwrap_or("(none)")
        );
    }
    let version = schema::get_i64(db, "schema_version")?;
    if config("schema_version")?.as_i64() != Some(version) {
        bail!(
            "lsync_restore: the snapshot has lsync metadata version {:?}, this database {version}; \
             nothing was restored",
            config("schema_version")?.as_i64()
        );
    }
    let mine = catalog::load_all(db)?;
    let theirs = catalog::load_all(s).map_err(|e| not_snapshot(e.detail()))?;
    check_tables(&mine, &theirs)?;
    let mut tables = BTreeMap::new();
    let mut rows = 0;
    for t in &theirs {
        let n = s
            .query_i64(&format!("SELECT count(*) FROM {}", q(&t.name)), &[])?
            .unwrap_or(0);
        rows += n;
        tables.insert(t.name.to_string(), n);
    }
    // The snapshot's HLC setting becomes this database's when larger, so it
    // is held to the limits of its clock's HLCs (read as the restore reads
    // them, as integers); a REAL or TEXT one would leave a clock that
    // cannot advance.
    let Value::Integer(hlc) = config("hlc")? else {
        return Err(not_snapshot("its HLC setting is not an integer"));
    };
    let max_hlc = s.query_i64("SELECT max(CAST(hlc AS INTEGER)) FROM lsync_clock", &[])?;
    let max_hlc = max_hlc.map_or(hlc, |m| m.max(hlc));
    apply::check_drift(db, Some(max_hlc), "lsync_restore", "snapshot")?;
    Ok(Snap {
        device,
        cursor,
        rows,
        tables,
        owner: config("snapshot_owner")?.as_str().map(str::to_owned),
    })
}

/// The same tracked tables, modes, uuid columns, columns and FKs.
fn check_tables(mine: &[Table], theirs: &[Table]) -> Result<()> {
    let mismatch = |what: String| -> Result<()> {
        bail!("lsync_restore: schema mismatch: {what}; nothing was restored")
    };
    for t in theirs {
        let Some(m) = mine.iter().find(|m| m.name == t.name) else {
            return mismatch(format!(
                "table '{}' is tracked in the snapshot but not here",
                t.name
            ));
        };
        if m.mode != t.mode {
            return mismatch(format!(
                "'{}' is '{}' here but '{}' in the snapshot",
                t.name,
                m.mode.as_str(),
                t.mode.as_str()
            ));
        }
        if m.columns != t.columns || m.uuid_col != t.uuid_col || m.fks != t.fks {
            return mismatch(format!(
                "the tracked columns of '{}' differ: {:?} here, {:?} in the snapshot",
                t.name, m.columns, t.columns
            ));
        }
    }
    if let Some(m) = mine
        .iter()
        .find(|m| !theirs.iter().any(|t| t.name == m.name))
    {
        return mismatch(format!(
            "table '{}' is tracked here but not in the snapshot",
            m.name
        ));
    }
    Ok(())
}

/// Why the page-level import cannot be used, or `None` when it can.
fn empty_path_refusal(db: Db, s: Db) -> Result<Option<String>> {
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

enum Empty {
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
fn restore_empty(db: Db, file: &Path, snap: &Snap, me: &str, consume: bool) -> Result<Empty> {
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

/// The snapshot's own watermarks: (device, recv_cursor).
fn peers_of(s: Db) -> Result<Vec<(String, i64)>> {
    let mut st = s.prepare("SELECT device_id, recv_cursor FROM lsync_peers")?;
    let mut peers = Vec::new();
    while st.step()? {
        peers.push((st.text(0).unwrap_or_default(), st.i64(1)));
    }
    Ok(peers)
}

fn set_watermarks(db: Db, peers: &[(String, i64)], snap: &Snap, me: &str) -> Result<()> {
    watermarks(&|sql: &str, p: &[Value]| db.run(sql, p), peers, snap, me)
}

/// This database now holds what the snapshot's device held: its changes up
/// to the snapshot's cursor, and what it had received from its own peers.
/// Watermarks only move forward; a peer this database does not know is not
/// added (only the snapshot's device is).
fn watermarks(
    run: &dyn Fn(&str, &[Value]) -> Result<()>,
    peers: &[(String, i64)],
    snap: &Snap,
    me: &str,
) -> Result<()> {
    if snap.owner.is_some() || snap.device == me {
        return Ok(());
    }
    for (device, cursor) in peers.iter().filter(|(d, _)| d != me && *d != snap.device) {
        run(
            "UPDATE lsync_peers SET recv_cursor = max(recv_cursor, ?2) WHERE device_id = ?1",
            &[device.as_str().into(), (*cursor).into()],
        )?;
    }
    run(
        "INSERT INTO lsync_peers(device_id, recv_cursor) VALUES (?1, ?2)
         ON CONFLICT(device_id) DO UPDATE SET recv_cursor = max(recv_cursor, excluded.recv_cursor)",
        &[snap.device.as_str().into(), snap.cursor.into()],
    )
}

/// Streams the snapshot's changes (all of them, tombstones included, in
/// cursor order) through the apply code, batch by batch.
fn merge(db: Db, conn: &Conn, s: Db) -> Result<ApplyReport> {
    let library = schema::get_text(db, "library_id")?;
    let mut since = 0;
    let mut done = false;
    apply::apply_stream(db, conn, || {
        if done {
            return Ok(None);
        }
        let batch = changes::read_except(s, since, BATCH, None)?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        let from = since;
        since = last.seq;
        done = batch.len() < BATCH;
        Ok(Some(Changeset {
            library_id: library.clone(),
            from,
            to: since,
            fence: None,
            tables: Vec::new(),
            changes: batch,
        }))
    })
}
