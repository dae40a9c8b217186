//! The SQL steps of `lsync bench capture`, each with its error context.

use std::path::Path;
use std::time::Instant;

use rusqlite::Connection;

use super::clock::{Stopwatch, Timing};
use super::data::{Entry, Location, Update};
use super::{BenchError, SqlContext};

const SCHEMA: &str = "
CREATE TABLE locations(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, path TEXT);
CREATE TABLE entries(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
    parent_id INTEGER REFERENCES entries(id),
    location_id INTEGER REFERENCES locations(id),
    name TEXT, size INTEGER, kind INTEGER, mtime INTEGER);";
const INSERT_LOCATION: &str = "INSERT INTO locations(uuid, path) VALUES (?, ?)";
const INSERT_ENTRY: &str =
    "INSERT INTO entries(uuid, parent_id, location_id, name, size, kind, mtime) \
     VALUES (?,?,?,?,?,?,?)";
const UPDATE_ENTRY: &str = "UPDATE entries SET size=?, mtime=? WHERE id=?";
/// Pages of every object that lsync created: tables named `lsync*` and
/// their indexes (including `sqlite_autoindex_lsync*`).
const META_BREAKDOWN: &str = "
SELECT name, sum(pgsize) FROM dbstat('main')
 WHERE name LIKE 'lsync%'
    OR name IN (SELECT name FROM sqlite_schema WHERE tbl_name LIKE 'lsync%')
 GROUP BY name ORDER BY 2 DESC, 1";

/// Creates the schema, tracks the tables (unless plain), inserts the
/// locations and checkpoints, so that every timed run starts from an empty
/// WAL.
pub(super) fn setup(
    conn: &Connection,
    mode: Option<&str>,
    locations: &[Location],
    path: &Path,
) -> Result<(), BenchError> {
    let at = || path.display().to_string();
    conn.execute_batch(SCHEMA)
        .sql(|| format!("creating the schema in {}", at()))?;
    if let Some(mode) = mode {
        require_function(conn, "lsync_track")?;
        conn.query_row(
            "SELECT lsync_track('locations', ?1), lsync_track('entries', ?1)",
            [mode],
            |_| Ok(()),
        )
        .sql(|| format!("lsync_track(..., '{mode}') in {}", at()))?;
    }
    let tx = conn
        .unchecked_transaction()
        .sql(|| format!("beginning a transaction in {}", at()))?;
    {
        let mut stmt = tx
            .prepare(INSERT_LOCATION)
            .sql(|| format!("preparing the locations insert in {}", at()))?;
        for loc in locations {
            stmt.execute((&loc.uuid, &loc.path))
                .sql(|| format!("inserting a location in {}", at()))?;
        }
    }
    tx.commit()
        .sql(|| format!("committing the locations in {}", at()))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .sql(|| format!("checkpointing {}", at()))
}

/// Fails clearly when the extension did not register `name`.
pub(super) fn require_function(conn: &Connection, name: &str) -> Result<(), BenchError> {
    let found: bool = conn
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM pragma_function_list WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )
        .sql(|| "listing SQL functions".to_owned())?;
    if found {
        Ok(())
    } else {
        Err(BenchError::Check(format!(
            "the lsync extension is not loaded: SQL function {name}() does not exist"
        )))
    }
}

/// Inserts all entries in one transaction; returns insert+commit seconds.
pub(super) fn insert_entries(
    conn: &mut Connection,
    entries: &[Entry],
    path: &Path,
) -> Result<f64, BenchError> {
    insert_entries_timed(conn, entries, path).map(|t| t.wall_s)
}

/// Inserts all entries in one transaction; times insert+commit.
pub(super) fn insert_entries_timed(
    conn: &mut Connection,
    entries: &[Entry],
    path: &Path,
) -> Result<Timing, BenchError> {
    let at = || path.display().to_string();
    let watch = Stopwatch::start();
    let tx = conn
        .transaction()
        .sql(|| format!("beginning the insert in {}", at()))?;
    {
        let mut stmt = tx
            .prepare(INSERT_ENTRY)
            .sql(|| format!("preparing the insert in {}", at()))?;
        for e in entries {
            stmt.execute((
                &e.uuid,
                e.parent_id,
                e.location_id,
                &e.name,
                e.size,
                e.kind,
                e.mtime,
            ))
            .sql(|| format!("inserting entry {} in {}", e.uuid, at()))?;
        }
    }
    tx.commit()
        .sql(|| format!("committing the insert in {}", at()))?;
    Ok(watch.stop())
}

/// Checks (untimed) that the insert produced ids 1..=rows.
pub(super) fn check_count(conn: &Connection, rows: usize, path: &Path) -> Result<(), BenchError> {
    let (count, max_id): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(max(id), 0) FROM entries",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .sql(|| format!("counting entries in {}", path.display()))?;
    if usize::try_from(count).ok() != Some(rows) || count != max_id {
        return Err(BenchError::Check(format!(
            "{}: expected ids 1..={rows} in entries, found {count} rows with max id {max_id}",
            path.display()
        )));
    }
    Ok(())
}

/// Applies all updates in one transaction; times update+commit.
pub(super) fn update_entries_timed(
    conn: &mut Connection,
    updates: &[Update],
    path: &Path,
) -> Result<Timing, BenchError> {
    let at = || path.display().to_string();
    let watch = Stopwatch::start();
    let tx = conn
        .transaction()
        .sql(|| format!("beginning the update in {}", at()))?;
    let mut changed = 0usize;
    {
        let mut stmt = tx
            .prepare(UPDATE_ENTRY)
            .sql(|| format!("preparing the update in {}", at()))?;
        for u in updates {
            changed += stmt
                .execute((u.size, u.mtime, u.id))
                .sql(|| format!("updating entry {} in {}", u.id, at()))?;
        }
    }
    tx.commit()
        .sql(|| format!("committing the update in {}", at()))?;
    let timing = watch.stop();
    if changed != updates.len() {
        return Err(BenchError::Check(format!(
            "{}: {} updates changed {changed} rows",
            at(),
            updates.len()
        )));
    }
    Ok(timing)
}

/// Runs `SELECT lsync_flush()`; returns its seconds.
pub(super) fn flush(conn: &Connection, path: &Path) -> Result<f64, BenchError> {
    let started = Instant::now();
    conn.query_row("SELECT lsync_flush()", [], |_| Ok(()))
        .sql(|| format!("lsync_flush() in {}", path.display()))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Bytes in pages of each lsync table and index, largest first (dbstat).
pub(super) fn meta_breakdown(
    conn: &Connection,
    path: &Path,
) -> Result<Vec<(String, i64)>, BenchError> {
    let at = || path.display().to_string();
    let mut stmt = conn
        .prepare(META_BREAKDOWN)
        .sql(|| format!("preparing the dbstat query on {}", at()))?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .sql(|| format!("measuring lsync metadata with dbstat in {}", at()))
}

/// `(page_count - freelist_count) * page_size`: bytes in use in the file.
pub(super) fn used_bytes(conn: &Connection, path: &Path) -> Result<i64, BenchError> {
    let pragma = |name: &'static str| -> Result<i64, BenchError> {
        conn.pragma_query_value(None, name, |r| r.get(0))
            .sql(|| format!("PRAGMA {name} on {}", path.display()))
    };
    Ok((pragma("page_count")? - pragma("freelist_count")?) * pragma("page_size")?)
}
