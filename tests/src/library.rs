//! The test schemas: the demo library (`sql/examples/library.sql`), rows to
//! fill it and a dump that compares replicas whatever their local ids; and
//! the two-table schema of the capture tests.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use crate::connection::open;
use crate::query::query_rows_typed;

/// The example library schema (`sql/examples/library.sql`), or an inline
/// equivalent when that file is missing: locations, entries (with
/// `parent_id` and `location_id`), tags and tag_assignments.
pub fn library_schema() -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/examples/library.sql");
    std::fs::read_to_string(file).unwrap_or_else(|_| INLINE_LIBRARY.to_owned())
}

const INLINE_LIBRARY: &str = "
CREATE TABLE IF NOT EXISTS devices(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS locations(
  id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, device_id INTEGER REFERENCES devices(id),
  path TEXT NOT NULL, name TEXT);
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
        "SELECT lsync_track('locations', 'device_owned', '{\"local_columns\": [\"device_id\"]}');
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

/// A new library database at `dir/name.db`: `sql/examples/library.sql`, then
/// tracked as in `sql/examples/track.sql`. Returns its path and an app
/// connection (extension loaded, WAL, busy timeout).
pub fn library_db(dir: &Path, name: &str) -> (PathBuf, Connection) {
    let path = dir.join(format!("{name}.db"));
    let c = open(&path);
    track_library(&c);
    (path, c)
}

/// Inserts a location and `n` entries under it, in one transaction: a tree in
/// which entry k's parent is entry (k-1)/16. Names are `{root}-{k}`.
/// Returns the location's id.
pub fn index_tree(c: &Connection, root: &str, n: i64) -> i64 {
    let tx = c.unchecked_transaction().unwrap();
    tx.execute(
        "INSERT INTO locations(path, name, total_size, created_at) VALUES (?1, ?2, ?3, 1700000000000)",
        params![format!("/mnt/{root}"), root, n * 7],
    )
    .unwrap();
    let loc = tx.last_insert_rowid();
    let base: i64 = tx
        .query_row("SELECT coalesce(max(id), 0) + 1 FROM entries", [], |r| {
            r.get(0)
        })
        .unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO entries(id, parent_id, location_id, name, size, kind, mtime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .unwrap();
        let dirs = n / 16 + 1;
        for k in 0..n {
            let parent = (k > 0).then(|| base + (k - 1) / 16);
            st.execute(params![
                base + k,
                parent,
                loc,
                format!("{root}-{k}"),
                k * 7,
                i64::from(k >= dirs),
                1_700_000_000_000i64 + k
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    loc
}

/// Inserts a tag; returns its local id.
pub fn add_tag(c: &Connection, name: &str, color: &str) -> i64 {
    c.execute(
        "INSERT INTO tags(name, color) VALUES (?1, ?2)",
        params![name, color],
    )
    .unwrap();
    c.last_insert_rowid()
}

/// Assigns tag `tag` to entry `entry` (local ids).
pub fn assign(c: &Connection, tag: i64, entry: i64) {
    c.execute(
        "INSERT INTO tag_assignments(tag_id, entry_id, created_at) VALUES (?1, ?2, 1700000000000)",
        params![tag, entry],
    )
    .unwrap();
}

/// The local id of the row with this name (tags) or name (entries).
pub fn id_by_name(c: &Connection, table: &str, name: &str) -> Option<i64> {
    c.query_row(
        &format!("SELECT id FROM {table} WHERE name = ?1"),
        [name],
        |r| r.get(0),
    )
    .ok()
}

/// A logical FK: the target's uuid, or the uuid of a link still deferred.
pub fn logical_fk(table: &str, col: &str, target: &str) -> String {
    format!(
        "coalesce((SELECT x.uuid FROM {target} x WHERE x.rowid = t.{col}),
                  (SELECT d.target_uuid FROM lsync_deferred d
                   WHERE d.tbl = (SELECT id FROM lsync_tables WHERE name = '{table}')
                     AND d.rid = t.rowid AND d.col = '{col}'))"
    )
}

/// The queries that read the library by uuid, FKs as uuids, ordered by uuid:
/// local ids never appear, so replicas holding the same data read the same.
/// `locations` reads `location_cols`.
pub fn library_by_uuid(location_cols: &str) -> [String; 4] {
    [
        format!("SELECT 'L', uuid, {location_cols} FROM locations t"),
        format!(
            "SELECT 'E', uuid, {}, {}, name, size, kind, mtime FROM entries t",
            logical_fk("entries", "parent_id", "entries"),
            logical_fk("entries", "location_id", "locations")
        ),
        "SELECT 'T', uuid, name, color FROM tags t".to_owned(),
        format!(
            "SELECT 'A', uuid, {}, {}, created_at FROM tag_assignments t",
            logical_fk("tag_assignments", "tag_id", "tags"),
            logical_fk("tag_assignments", "entry_id", "entries")
        ),
    ]
    .map(|q| format!("{q} ORDER BY uuid"))
}

/// Every tracked table by uuid (see [`library_by_uuid`]), one string per
/// row, values typed: what sidecar tests compare across replicas.
pub fn library_dump(c: &Connection) -> Vec<String> {
    library_by_uuid("device_id, path, name, total_size, created_at")
        .iter()
        .flat_map(|q| query_rows_typed(c, q))
        .map(|row| row.join("|"))
        .collect()
}

/// All replicas hold the same data, and `rows` rows of it.
pub fn converged(conns: &[&Connection], rows: usize) -> bool {
    let first = library_dump(conns[0]);
    first.len() == rows && conns[1..].iter().all(|c| library_dump(c) == first)
}

/// The first difference between two dumps, for failure messages.
pub fn first_difference(a: &[String], b: &[String]) -> String {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return format!("{x}\n  vs\n{y}");
        }
    }
    format!("lengths {} vs {}", a.len(), b.len())
}

/// Two databases, `a.db` and `b.db`, with `schema` run on each (it tracks
/// its own tables), the second joined to the first one's library.
pub fn two_libraries(schema: &str) -> (crate::TempDir, Connection, Connection) {
    let dir = crate::TempDir::new();
    let a = crate::open(&dir.path().join("a.db"));
    let b = crate::open(&dir.path().join("b.db"));
    a.execute_batch(schema).expect("schema at a");
    b.execute_batch(schema).expect("schema at b");
    crate::join_library(&b, &crate::library_id(&a));
    (dir, a, b)
}
