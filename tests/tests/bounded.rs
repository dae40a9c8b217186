//! Sync metadata is bounded by rows (× columns for shared tables), never by
//! the number of edits.

use lsync_tests::*;
use rusqlite::Connection;

#[derive(Debug, PartialEq)]
struct Footprint {
    clock: i64,
    dirty: i64,
    deleted: i64,
    /// Bytes of every page of every lsync_* table and index (dbstat).
    bytes: i64,
}

fn footprint(conn: &Connection) -> Footprint {
    Footprint {
        clock: count(conn, "lsync_clock"),
        dirty: count(conn, "lsync_dirty"),
        deleted: count(conn, "lsync_deleted"),
        bytes: scalar(
            conn,
            "SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'lsync\\_%' ESCAPE '\\'",
        ),
    }
}

fn dirty_rows(conn: &Connection, table: &str) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM lsync_dirty WHERE tbl = (SELECT id FROM lsync_tables WHERE name = ?1)",
        [table],
        |r| r.get(0),
    )
    .unwrap()
}

fn edit(conn: &Connection, times: i64) {
    conn.execute_batch("BEGIN").unwrap();
    let mut own = conn
        .prepare("UPDATE files SET n = ?1, name = 'f' || ?1 WHERE id = 1")
        .unwrap();
    let mut shared = conn
        .prepare("UPDATE tags SET n = ?1, name = 't' || ?1 WHERE id = 1")
        .unwrap();
    for i in 0..times {
        own.execute([i]).unwrap();
        shared.execute([i]).unwrap();
    }
    drop((own, shared));
    conn.execute_batch("COMMIT").unwrap();
}

#[test]
fn metadata_does_not_grow_with_edits() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(
        "INSERT INTO files(id, name, n) VALUES (1, 'f', 0), (2, 'g', 0);
         INSERT INTO tags(id, name, n) VALUES (1, 't', 0), (2, 'u', 0);",
    )
    .unwrap();
    flush(&conn);
    edit(&conn, 10);
    flush(&conn);
    let after_ten = footprint(&conn);
    assert!(after_ten.clock > 0 && after_ten.bytes > 0, "{after_ten:?}");
    assert_eq!((after_ten.dirty, after_ten.deleted), (0, 0));

    edit(&conn, 10_000);
    // Before folding: one pending mark per edited row, not per edit.
    assert_eq!(dirty_rows(&conn, "files"), 1);
    assert_eq!(dirty_rows(&conn, "tags"), 1);
    flush(&conn);
    assert_eq!(footprint(&conn), after_ten);

    // The changes still describe the current rows.
    let latest: Vec<serde_json::Value> = changes(&conn, 0)
        .into_iter()
        .filter(|c| c.pk_text() == scalar::<String>(&conn, "SELECT uuid FROM files WHERE id = 1"))
        .map(|c| c.data)
        .collect();
    assert_eq!(latest, [serde_json::json!({"name": "f9999", "n": 9999})]);
}

#[test]
fn bulk_insert_is_one_clock_entry() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5000)
         INSERT INTO files(name, n) SELECT 'f' || i, i FROM c;",
    )
    .unwrap();
    flush(&conn);
    assert_eq!(count(&conn, "lsync_clock"), 1);
    assert_eq!(changes(&conn, 0).len(), 5000);
}

#[test]
fn repeated_delete_and_reinsert_of_one_uuid_stays_bounded() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute("INSERT INTO tags(uuid, name) VALUES ('x', 'a')", [])
        .unwrap();
    flush(&conn);
    let before = footprint(&conn);
    for _ in 0..200 {
        conn.execute_batch(
            "DELETE FROM tags WHERE uuid = 'x';
             INSERT INTO tags(uuid, name) VALUES ('x', 'a');",
        )
        .unwrap();
        flush(&conn);
    }
    let after = footprint(&conn);
    assert_eq!(
        (after.clock, after.dirty, after.deleted),
        (before.clock, 0, 0)
    );
}
