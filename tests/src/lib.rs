//! Helpers for the end-to-end tests: they load the real `liblsync.so` into
//! rusqlite's bundled SQLite, exactly as an app would.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, LoadExtensionGuard};

const EXT_FILE: &str = "liblsync.so";

/// Where the extension is: `$LSYNC_EXT`, else `liblsync.so` next to the test
/// binary or in one of its parent directories. `cargo test --release` builds
/// it there through the dev-dependency on `lsync-ext` (the binary lives in
/// `target/release/deps`, the cdylib in `deps` or `target/release`).
pub fn ext_path() -> PathBuf {
    if let Some(p) = std::env::var_os("LSYNC_EXT") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    for dir in exe.ancestors().skip(1).take(4) {
        let candidate = dir.join(EXT_FILE);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "cannot find {EXT_FILE} near {}; run `cargo build --release -p lsync-ext` or set LSYNC_EXT",
        exe.display()
    )
}

fn tune(conn: &Connection) {
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy_timeout");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal", "the test database must be in WAL mode");
}

/// A connection with the extension loaded, in WAL mode with a busy timeout.
pub fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open database");
    load(&conn);
    tune(&conn);
    conn
}

/// Loads the extension into an existing connection: through the testing
/// entry point after `testing_mode()` on this thread.
pub fn load(conn: &Connection) {
    let ext = ext_path();
    let entry = TESTING
        .with(Cell::get)
        .then_some("sqlite3_lsync_testing_init");
    // SAFETY: loading a trusted extension that this workspace built; the
    // guard turns extension loading off again when it drops.
    unsafe {
        let _guard = LoadExtensionGuard::new(conn).expect("enable extension loading");
        conn.load_extension(&ext, entry)
            .unwrap_or_else(|e| panic!("load {}: {e}", ext.display()));
    }
}

/// A connection that did NOT load the extension (an app that forgot, or
/// another tool), in WAL mode with a busy timeout.
pub fn open_plain(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open database");
    tune(&conn);
    conn
}

thread_local! {
    static TESTING: Cell<bool> = const { Cell::new(false) };
}

/// Enables the test-only hooks (`lsync_debug_set_device_id`,
/// `test_snapshot_no_flush`) on the connections this thread (this test)
/// opens from now on: `load` uses the `sqlite3_lsync_testing_init` entry
/// point.
pub fn testing_mode() {
    TESTING.with(|t| t.set(true));
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("lsync-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// A database file path inside the directory.
    pub fn db(&self) -> PathBuf {
        self.0.join("test.db")
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One row of `lsync_changes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub seq: i64,
    pub hlc: i64,
    pub origin: String,
    pub tbl: String,
    pub pk: Value,
    pub op: String,
    pub data: serde_json::Value,
}

impl Change {
    /// The primary key (the row's uuid) as text: TEXT uuids as they are,
    /// BLOB uuids in lowercase hex.
    pub fn pk_text(&self) -> String {
        value_text(&self.pk)
    }
    /// The column names present in `data`.
    pub fn data_keys(&self) -> BTreeSet<String> {
        self.data
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// A SQL value as text, for comparisons: blobs in lowercase hex.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// `SELECT * FROM lsync_changes(since)`, with `data` decoded.
pub fn changes(conn: &Connection, since: i64) -> Vec<Change> {
    try_changes(conn, since).expect("lsync_changes")
}

pub fn try_changes(conn: &Connection, since: i64) -> rusqlite::Result<Vec<Change>> {
    let mut s = conn.prepare(
        "SELECT seq, hlc, origin, tbl, pk, op, data FROM lsync_changes(?1) ORDER BY seq",
    )?;
    let rows = s.query_map([since], |r| {
        let data: Option<String> = r.get(6)?;
        Ok(Change {
            seq: r.get(0)?,
            hlc: r.get(1)?,
            origin: r.get(2)?,
            tbl: r.get(3)?,
            pk: r.get(4)?,
            op: r.get(5)?,
            data: data
                .map(|d| serde_json::from_str(&d).expect("data is JSON"))
                .unwrap_or(serde_json::Value::Null),
        })
    })?;
    rows.collect()
}

/// The highest cursor so far (0 when there are no changes).
pub fn cursor(conn: &Connection) -> i64 {
    scalar(conn, "SELECT coalesce(max(seq), 0) FROM lsync_changes(0)")
}

/// The first column of the first row of a query.
pub fn scalar<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> T {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs a statement that must fail, and returns its error message.
pub fn error_of(conn: &Connection, sql: &str) -> String {
    let outcome = conn.prepare(sql).and_then(|mut s| {
        let mut rows = s.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    });
    match outcome {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) => m,
        Err(e) => e.to_string(),
    }
}

/// `SELECT count(*) FROM <table>`.
pub fn count(conn: &Connection, table: &str) -> i64 {
    scalar(conn, &format!("SELECT count(*) FROM \"{table}\""))
}

/// Every row of a query, as text, for before/after comparisons.
pub fn dump(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut s = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = s.column_count();
    s.query_map([], |r| {
        (0..n)
            .map(|i| r.get::<_, Value>(i).map(|v| value_text(&v)))
            .collect()
    })
    .and_then(|rows| rows.collect())
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The example library schema (`sql/examples/library.sql`), or an inline
/// equivalent when that file is missing: locations, entries (with
/// `parent_id` and `location_id`), tags and tag_assignments.
pub fn library_schema() -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/examples/library.sql");
    std::fs::read_to_string(file).unwrap_or_else(|_| INLINE_LIBRARY.to_owned())
}

const INLINE_LIBRARY: &str = "
CREATE TABLE IF NOT EXISTS locations(
  id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, path TEXT NOT NULL, name TEXT);
CREATE TABLE IF NOT EXISTS entries(
  id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  parent_id INTEGER REFERENCES entries(id),
  location_id INTEGER REFERENCES locations(id),
  name TEXT NOT NULL, size INTEGER, kind INTEGER, mtime INTEGER);
CREATE TABLE IF NOT EXISTS tags(
  id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT NOT NULL, color TEXT);
CREATE TABLE IF NOT EXISTS tag_assignments(
  id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  tag_id INTEGER REFERENCES tags(id),
  entry_id INTEGER REFERENCES entries(id),
  created_at INTEGER);
";

/// Creates the library schema and tracks it: locations and entries
/// device-owned, tags and tag_assignments shared.
pub fn track_library(conn: &Connection) {
    conn.execute_batch(&library_schema())
        .expect("library schema");
    conn.execute_batch(
        "SELECT lsync_track('locations', 'device_owned');
         SELECT lsync_track('entries', 'device_owned');
         SELECT lsync_track('tags', 'shared');
         SELECT lsync_track('tag_assignments', 'shared');",
    )
    .expect("track library");
}

/// A database with two tracked tables: `files` (device-owned) and `tags`
/// (shared), each `(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name, n)`.
pub fn two_tables(conn: &Connection) {
    conn.execute_batch(
        "CREATE TABLE files(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, n INTEGER);
         CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, n INTEGER);
         SELECT lsync_track('files', 'device_owned');
         SELECT lsync_track('tags', 'shared');",
    )
    .expect("create and track files/tags");
}

/// `SELECT lsync_flush()`.
pub fn flush(conn: &Connection) -> i64 {
    scalar(conn, "SELECT lsync_flush()")
}

/// Where the `lsync` binary is: `$LSYNC_BIN`, else `lsync` next to the test
/// binary or in one of its parent directories (`target/release/lsync` for a
/// test binary in `target/release/deps`). `cargo test -p lsync-tests` does
/// not build it: run `cargo build --release --workspace` first.
pub fn lsync_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LSYNC_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    for dir in exe.ancestors().skip(1).take(4) {
        let candidate = dir.join("lsync");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "cannot find the lsync binary near {}; run `cargo build --release --workspace` or set LSYNC_BIN",
        exe.display()
    )
}
