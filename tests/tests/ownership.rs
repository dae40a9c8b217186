//! Device-owned rows: only the device that inserted a row may change it.

use std::collections::BTreeSet;

use lsync_tests::*;
use rusqlite::Connection;

/// A database whose `files` (device-owned) and `tags` (shared) rows were
/// written by one device, then switched to a new device id. Returns the old
/// and the new device ids.
fn switched() -> (TempDir, Connection, String, String) {
    testing_mode();
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(
        "INSERT INTO files(id, uuid, name, n) VALUES (1, 'f1', 'a', 1), (2, 'f2', 'b', 2);
         INSERT INTO tags(id, uuid, name, n) VALUES (1, 't1', 'a', 1), (2, 't2', 'b', 2);",
    )
    .unwrap();
    let old: String = scalar(&conn, "SELECT lsync_device_id()");
    let new = uuid::Uuid::now_v7().to_string();
    let set: String = conn
        .query_row("SELECT lsync_debug_set_device_id(?1)", [&new], |r| r.get(0))
        .unwrap();
    assert_eq!(set, new);
    assert_eq!(scalar::<String>(&conn, "SELECT lsync_device_id()"), new);
    (dir, conn, old, new)
}

const OTHERS_ROWS: [&str; 4] = [
    "UPDATE files SET n = 10 WHERE id = 1",
    "UPDATE files SET name = 'x'",
    "DELETE FROM files WHERE id = 2",
    "DELETE FROM files",
];

#[test]
fn other_devices_rows_cannot_be_updated_or_deleted() {
    let (_dir, conn, _old, _new) = switched();
    let before = query_rows(&conn, "SELECT * FROM files ORDER BY id");
    let changes_before = changes(&conn, 0);
    for sql in OTHERS_ROWS {
        let err = error_of(&conn, sql);
        assert!(err.contains("owned by another device"), "{sql}: {err}");
        assert!(
            err.contains("'files'"),
            "the message names the table: {err}"
        );
    }
    assert_eq!(query_rows(&conn, "SELECT * FROM files ORDER BY id"), before);
    assert_eq!(changes(&conn, 0), changes_before);
}

/// The refusal rolls the whole transaction back (`RAISE(ROLLBACK)`: a
/// statement that could be undone alone would need a statement journal on
/// every captured update), so nothing of it is half-applied.
#[test]
fn a_write_of_another_devices_row_rolls_the_transaction_back() {
    let (_dir, conn, _old, _new) = switched();
    let files = "SELECT * FROM files ORDER BY id";
    let before = (query_rows(&conn, files), changes(&conn, 0));
    for sql in OTHERS_ROWS {
        conn.execute_batch("BEGIN; INSERT INTO files(uuid, name) VALUES ('mine', 'm');")
            .unwrap();
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(
            err.contains("the transaction was rolled back"),
            "{sql}: {err}"
        );
        assert!(conn.is_autocommit(), "{sql}: the transaction is still open");
        assert_eq!(
            (query_rows(&conn, files), changes(&conn, 0)),
            before,
            "{sql}"
        );
    }
}

#[test]
fn shared_rows_can_be_changed_by_any_device() {
    let (_dir, conn, old, new) = switched();
    conn.execute_batch("UPDATE tags SET n = 10 WHERE id = 1; DELETE FROM tags WHERE id = 2;")
        .unwrap();
    assert_eq!(
        query_rows(&conn, "SELECT uuid, n FROM tags"),
        [["t1", "10"]]
    );
    let mine: BTreeSet<(String, String)> = changes(&conn, 0)
        .into_iter()
        .filter(|c| c.tbl == "tags" && c.origin == new)
        .map(|c| (c.pk_text(), c.op))
        .collect();
    assert_eq!(
        mine,
        BTreeSet::from([
            ("t1".to_owned(), "update".to_owned()),
            ("t2".to_owned(), "delete".to_owned()),
        ])
    );
    // The insert of t1 still names the device that made it.
    let t1_insert = changes(&conn, 0)
        .into_iter()
        .find(|c| c.pk_text() == "t1" && c.op == "insert")
        .unwrap();
    assert_eq!(t1_insert.origin, old);
}

#[test]
fn rows_inserted_after_the_switch_belong_to_the_new_device() {
    let (_dir, conn, _old, new) = switched();
    conn.execute_batch(
        "INSERT INTO files(uuid, name) VALUES ('mine', 'm');
         UPDATE files SET n = 5 WHERE uuid = 'mine';",
    )
    .unwrap();
    flush(&conn);
    // Also once folded into the clock.
    conn.execute_batch(
        "UPDATE files SET n = 6 WHERE uuid = 'mine';
         INSERT INTO files(id, uuid, name) VALUES (-1, 'low', 'below the mark');",
    )
    .unwrap();
    flush(&conn);
    conn.execute("UPDATE files SET n = 7 WHERE uuid = 'low'", [])
        .unwrap();
    let mine: Vec<(String, String)> = changes(&conn, 0)
        .into_iter()
        .filter(|c| c.tbl == "files" && c.origin == new)
        .map(|c| (c.pk_text(), c.op))
        .collect();
    assert!(mine.contains(&("mine".into(), "update".into())), "{mine:?}");
    assert!(mine.contains(&("low".into(), "update".into())), "{mine:?}");
    conn.execute("DELETE FROM files WHERE uuid IN ('mine', 'low')", [])
        .unwrap();
    assert_eq!(count(&conn, "files"), 2);
}

#[test]
fn ownership_survives_reopening() {
    let (dir, conn, _old, _new) = switched();
    drop(conn);
    let conn = open(&dir.db());
    let err = error_of(&conn, "UPDATE files SET n = 0");
    assert!(err.contains("owned by"), "{err}");
}

/// Version 15's triggers hold this device's index; a database of an older
/// version gets them on opening, and they still tell its rows from others'.
#[test]
fn an_older_database_gets_the_triggers_of_this_version() {
    let (dir, conn, _old, _new) = switched();
    conn.execute_batch(
        "DROP TRIGGER lsync_upd_files;
         UPDATE lsync_config SET value = 14 WHERE key = 'schema_version';",
    )
    .unwrap();
    conn.execute("INSERT INTO files(uuid, name) VALUES ('mine', 'm')", [])
        .unwrap();
    flush(&conn);
    drop(conn);
    let conn = open(&dir.db());
    let err = error_of(&conn, "UPDATE files SET n = 0 WHERE id = 1");
    assert!(err.contains("owned by"), "{err}");
    conn.execute("UPDATE files SET n = 7 WHERE uuid = 'mine'", [])
        .unwrap();
    flush(&conn);
    let mine: Vec<(String, String)> = changes(&conn, 0)
        .into_iter()
        .filter(|c| c.pk_text() == "mine")
        .map(|c| (c.op.clone(), c.data["n"].to_string()))
        .collect();
    assert_eq!(mine, [("update".to_owned(), "7".to_owned())]);
    assert_eq!(
        scalar::<i64>(
            &conn,
            "SELECT value FROM lsync_config WHERE key = 'schema_version'"
        ),
        current_schema_version()
    );
}

#[test]
fn set_device_id_needs_testing_mode_flag_and_a_uuid() {
    testing_mode();
    let dir = TempDir::new();
    let conn = open(&dir.db());
    let err = error_of(&conn, "SELECT lsync_debug_set_device_id('nope')");
    assert!(err.starts_with("lsync_debug_set_device_id:"), "{err}");
}

#[test]
fn set_device_id_is_refused_without_the_testing_entry_point() {
    // No testing_mode() on this thread: the ordinary entry point.
    let dir = TempDir::new();
    let conn = open(&dir.db());
    let id = uuid::Uuid::now_v7().to_string();
    let err = error_of(&conn, &format!("SELECT lsync_debug_set_device_id('{id}')"));
    assert!(err.contains("sqlite3_lsync_testing_init"), "{err}");
}

/// The update trigger only fires when a tracked column changes (its WHEN
/// clause tests the column mask), and the uuid and the rowid are not tracked
/// columns: a statement that changes only them skips the "cannot change"
/// check, and peers never learn the new uuid goes with the old one.
#[test]
fn uuid_and_rowid_of_a_tracked_row_cannot_change() {
    let (_dir, conn, _old, _new) = switched();
    conn.execute(
        "INSERT INTO files(id, uuid, name) VALUES (50, 'mine', 'm')",
        [],
    )
    .unwrap();
    for sql in [
        "UPDATE files SET uuid = 'renamed' WHERE id = 50",
        "UPDATE files SET id = 60 WHERE id = 50",
        "UPDATE tags SET uuid = 'renamed' WHERE id = 1",
        // The check runs only in UPDATEs that name the rowid or the uuid
        // (UPDATE OF), so every name SQLite takes for them is tried.
        "UPDATE files SET rowid = 61 WHERE id = 50",
        "UPDATE files SET OID = 62 WHERE id = 50",
        "UPDATE files SET _rowid_ = 63 WHERE id = 50",
        "UPDATE files SET \"ID\" = 64 WHERE id = 50",
        "UPDATE files SET (name, id) = ('m2', 65) WHERE id = 50",
        "UPDATE files SET n = 1, UUID = 'renamed' WHERE id = 50",
        "INSERT INTO files(id, uuid, name) VALUES (50, 'x', 'm')
           ON CONFLICT(id) DO UPDATE SET id = 66",
    ] {
        let outcome = conn.execute(sql, []);
        let err = outcome.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(
            err.contains("cannot change"),
            "{sql}: was allowed ({err:?})"
        );
    }
}

/// The same hole lets a device take over another device's row: moving the
/// rowid above the high-water mark makes the row look like a new local
/// insert, which is then reported with this device as its origin.
#[test]
fn rowid_move_cannot_take_over_another_devices_row() {
    let (_dir, conn, old, new) = switched();
    let outcome = conn.execute("UPDATE files SET id = 1000 WHERE id = 1", []);
    let origin = changes(&conn, 0)
        .into_iter()
        .find(|c| c.pk_text() == "f1")
        .map(|c| c.origin);
    assert!(
        outcome.is_err(),
        "moving another device's row was allowed; f1's origin is now {origin:?} \
         (owner {old}, this device {new})"
    );
    let ids = query_rows(&conn, "SELECT id FROM files ORDER BY id");
    assert_eq!(ids, [["1"], ["2"]]);
}

/// `INSERT OR REPLACE` deletes the old row without firing the delete trigger
/// (SQLite fires it only with `recursive_triggers=ON`), and the insert
/// trigger has no ownership check, so another device's row is taken over.
#[test]
fn replace_cannot_take_over_another_devices_row() {
    let (_dir, conn, old, new) = switched();
    let outcome = conn.execute(
        "INSERT OR REPLACE INTO files(id, uuid, name, n) VALUES (1, 'f1', 'hijacked', 99)",
        [],
    );
    let name: String = scalar(&conn, "SELECT name FROM files WHERE uuid = 'f1'");
    let origin = changes(&conn, 0)
        .into_iter()
        .find(|c| c.pk_text() == "f1")
        .map(|c| c.origin);
    assert!(
        outcome.is_err() && name == "a",
        "REPLACE changed another device's row: {outcome:?}, name now {name:?}, \
         origin now {origin:?} (owner {old}, this device {new})"
    );
}

/// The same in a table whose ids lsync keeps (no uuid column). Its INSERT
/// trigger calls no function and cannot ABORT, or every insert would pay
/// for a statement journal, so the REPLACE rolls the transaction back.
#[test]
fn replace_of_another_devices_row_in_an_integer_keyed_table_rolls_back() {
    testing_mode();
    let dir = TempDir::new();
    let conn = open(&dir.db());
    conn.execute_batch(
        "CREATE TABLE track(id INTEGER PRIMARY KEY, name TEXT);
         SELECT lsync_track('track', 'device_owned');
         INSERT INTO track VALUES (1, 'a'), (2, 'b');
         SELECT lsync_flush();",
    )
    .unwrap();
    let new = uuid::Uuid::now_v7().to_string();
    let _: String = conn
        .query_row("SELECT lsync_debug_set_device_id(?1)", [&new], |r| r.get(0))
        .unwrap();
    conn.execute_batch("BEGIN; INSERT INTO track(name) VALUES ('mine');")
        .unwrap();
    let err = conn
        .execute("INSERT OR REPLACE INTO track VALUES (1, 'hijacked')", [])
        .unwrap_err();
    assert!(err.to_string().contains("owned by another device"), "{err}");
    assert!(conn.is_autocommit(), "the transaction is still open");
    let rows = "SELECT id, name FROM track ORDER BY id";
    assert_eq!(query_rows(&conn, rows), [["1", "a"], ["2", "b"]]);
    // Its own rows this device may replace, and the replacement is captured.
    conn.execute_batch(
        "INSERT INTO track VALUES (3, 'c'); SELECT lsync_flush();
         INSERT OR REPLACE INTO track VALUES (3, 'c2');",
    )
    .unwrap();
    let dirty: i64 = scalar(&conn, "SELECT count(*) FROM lsync_dirty WHERE rid = 3");
    assert_eq!(dirty, 1);
    assert_eq!(query_rows(&conn, rows)[2], ["3", "c2"]);
}

/// A changeset whose changes claim the receiving device as their origin is
/// never applied there (issue 13): here a copy of the device's own file,
/// which shares its device id, edits and deletes its rows later than it
/// did, as a forger would.
#[test]
fn changes_that_claim_the_receiver_as_origin_are_not_applied() {
    let dir = TempDir::new();
    let a = open(&dir.db());
    two_tables(&a);
    a.execute_batch(
        "INSERT INTO files(uuid, name, n) VALUES ('f1', 'mine', 1), ('f2', 'kept', 2);
         INSERT INTO tags(uuid, name, n) VALUES ('t1', 'mine', 1);",
    )
    .unwrap();
    flush(&a);
    let copy = dir.path().join("forger.db");
    a.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    let forger = open(&copy);
    forger
        .execute_batch(
            "UPDATE files SET name = 'forged' WHERE uuid = 'f1';
             DELETE FROM files WHERE uuid = 'f2';
             UPDATE tags SET name = 'forged';",
        )
        .unwrap();
    let blob: Vec<u8> = scalar(&forger, "SELECT lsync_changeset(0)");
    let before = query_rows(
        &a,
        "SELECT uuid, name FROM files UNION ALL SELECT uuid, name FROM tags",
    );
    let report: String = a
        .query_row("SELECT lsync_apply(?1)", [&blob], |r| r.get(0))
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(n(&report, "applied"), 0, "{report}");
    assert_eq!(n(&report, "own"), n(&report, "changes"), "{report}");
    assert!(n(&report, "own") >= 3, "{report}");
    assert_eq!(
        query_rows(
            &a,
            "SELECT uuid, name FROM files UNION ALL SELECT uuid, name FROM tags"
        ),
        before
    );
}
