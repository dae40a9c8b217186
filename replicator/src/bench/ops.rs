//! The SQL steps of `lsync bench capture`, each with its error context.

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, Params};

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
    let tracked = mode
        .into_iter()
        .flat_map(|m| [("locations", m), ("entries", m)]);
    create(conn, SCHEMA, tracked, path)?;
    let rows = locations.iter().map(|l| (&l.uuid, &l.path));
    write_all(conn, INSERT_LOCATION, rows, "inserting a location", path)?;
    checkpoint(conn, path)
}

/// Runs `ddl`, then `lsync_track(table, mode)` for each of `tracked`, in
/// order (FK targets first).
pub(super) fn create<'a>(
    conn: &Connection,
    ddl: &str,
    tracked: impl IntoIterator<Item = (&'a str, &'a str)>,
    path: &Path,
) -> Result<(), BenchError> {
    let at = || path.display().to_string();
    conn.execute_batch(ddl)
        .sql(|| format!("creating the schema in {}", at()))?;
    for (table, mode) in tracked {
        require_function(conn, "lsync_track")?;
        conn.query_row("SELECT lsync_track(?1, ?2)", [table, mode], |_| Ok(()))
            .sql(|| format!("lsync_track('{table}', '{mode}') in {}", at()))?;
    }
    Ok(())
}

/// Empties the WAL, so that the next timed run starts from none.
pub(super) fn checkpoint(conn: &Connection, path: &Path) -> Result<(), BenchError> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .sql(|| format!("checkpointing {}", path.display()))
}

/// Runs `sql` once for each of `rows` in one transaction; times the
/// transaction (begin to commit) and returns the number of rows changed.
/// `what` names one step in an error.
pub(super) fn write_all<P: Params>(
    conn: &Connection,
    sql: &str,
    rows: impl IntoIterator<Item = P>,
    what: &str,
    path: &Path,
) -> Result<(Timing, usize), BenchError> {
    let at = || path.display().to_string();
    let watch = Stopwatch::start();
    let tx = conn
        .unchecked_transaction()
        .sql(|| format!("beginning a transaction in {}", at()))?;
    let mut changed = 0usize;
    {
        let mut stmt = tx
            .prepare(sql)
            .sql(|| format!("preparing {sql} in {}", at()))?;
        for (i, row) in rows.into_iter().enumerate() {
            changed += stmt
                .execute(row)
                .sql(|| format!("{what} (row {}) in {}", i + 1, at()))?;
        }
    }
    tx.commit()
        .sql(|| format!("committing ({what}) in {}", at()))?;
    Ok((watch.stop(), changed))
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
    conn: &Connection,
    entries: &[Entry],
    path: &Path,
) -> Result<f64, BenchError> {
    insert_entries_timed(conn, entries, path).map(|t| t.wall_s)
}

/// Inserts all entries in one transaction; times insert+commit.
pub(super) fn insert_entries_timed(
    conn: &Connection,
    entries: &[Entry],
    path: &Path,
) -> Result<Timing, BenchError> {
    let rows = entries.iter().map(|e| {
        (
            &e.uuid,
            e.parent_id,
            e.location_id,
            &e.name,
            e.size,
            e.kind,
            e.mtime,
        )
    });
    let (timing, _) = write_all(conn, INSERT_ENTRY, rows, "inserting an entry", path)?;
    Ok(timing)
}

/// Checks (untimed) that the insert produced ids 1..=rows.
pub(super) fn check_count(conn: &Connection, rows: usize, path: &Path) -> Result<(), BenchError> {
    check_rows(conn, "entries", rows, path)
}

/// Checks (untimed) that `table` holds rowids 1..=rows.
pub(super) fn check_rows(
    conn: &Connection,
    table: &str,
    rows: usize,
    path: &Path,
) -> Result<(), BenchError> {
    let (count, max_id): (i64, i64) = conn
        .query_row(
            &format!("SELECT count(*), coalesce(max(rowid), 0) FROM \"{table}\""),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .sql(|| format!("counting {table} in {}", path.display()))?;
    if usize::try_from(count).ok() != Some(rows) || count != max_id {
        return Err(BenchError::Check(format!(
            "{}: expected ids 1..={rows} in {table}, found {count} rows with max id {max_id}",
            path.display()
        )));
    }
    Ok(())
}

/// Runs `sql` for each of `rows` in one transaction, timed like an insert,
/// and checks that each changed one row.
pub(super) fn update_all<P: Params>(
    conn: &Connection,
    sql: &str,
    rows: impl ExactSizeIterator<Item = P>,
    path: &Path,
) -> Result<Timing, BenchError> {
    let expected = rows.len();
    let (timing, changed) = write_all(conn, sql, rows, "updating", path)?;
    if changed != expected {
        return Err(BenchError::Check(format!(
            "{}: {expected} updates changed {changed} rows",
            path.display()
        )));
    }
    Ok(timing)
}

/// Applies all updates in one transaction; times update+commit.
pub(super) fn update_entries_timed(
    conn: &Connection,
    updates: &[Update],
    path: &Path,
) -> Result<Timing, BenchError> {
    let rows = updates.iter().map(|u| (u.size, u.mtime, u.id));
    update_all(conn, UPDATE_ENTRY, rows, path)
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
