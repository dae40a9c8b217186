//! FK checks deferred by an apply only when one could fail mid-apply
//! (`ext/src/defer.rs`): `PRAGMA defer_foreign_keys` expires every statement
//! prepared on the connection, so a one-row apply into a table that takes
//! part in no checkable FK leaves it off. Real `liblsync.so`, two database
//! files, `PRAGMA foreign_keys = ON` at the receiver.

use lsync_tests::*;
use rusqlite::Connection;

/// Folders that point at their parent by its global id (`uuid`), so a
/// child's FK cell is written as it comes, not deferred as a link; and
/// tags, an FK target through their rowid only.
const SCHEMA: &str = "
    CREATE TABLE folders(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
      parent TEXT REFERENCES folders(uuid), name TEXT);
    CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
    CREATE TABLE notes(id INTEGER PRIMARY KEY, tag_id INTEGER REFERENCES tags(id));
    SELECT lsync_track('folders', 'shared');
    SELECT lsync_track('tags', 'shared');
    PRAGMA foreign_keys = ON;";

fn defer_pair() -> (TempDir, Connection, Connection) {
    two_libraries(SCHEMA)
}

/// Applies what `a` has after `since` at `b` inside a transaction, and
/// returns the report and whether the apply left FK checks deferred (the
/// pragma stays on until the transaction ends).
fn apply_and_deferred(a: &Connection, b: &Connection, since: i64) -> (serde_json::Value, bool) {
    b.execute_batch("BEGIN").unwrap();
    let report = send(a, b, since);
    let deferred: i64 = scalar(b, "PRAGMA defer_foreign_keys");
    b.execute_batch("COMMIT").unwrap();
    (report, deferred == 1)
}

#[test]
fn a_child_before_its_parent_by_global_id_applies_with_fk_checks_on() {
    let (_dir, a, b) = defer_pair();
    // The child comes first in the changeset: its FK cell names a row that
    // only exists once the next change is applied.
    a.execute_batch(
        "BEGIN;
         PRAGMA defer_foreign_keys = ON;
         INSERT INTO folders(uuid, parent, name) VALUES ('C', 'P', 'child');
         INSERT INTO folders(uuid, parent, name) VALUES ('P', NULL, 'parent');
         COMMIT;",
    )
    .unwrap();
    let (report, deferred) = apply_and_deferred(&a, &b, 0);
    assert_eq!(n(&report, "applied"), 2, "{report}");
    assert_eq!(n(&report, "quarantined"), 0, "{report}");
    assert!(
        deferred,
        "a table with an FK of its own needs deferred checks"
    );
    assert_eq!(
        query_rows(&b, "SELECT uuid, parent FROM folders ORDER BY uuid"),
        [["C", "P"], ["P", "NULL"]]
    );
}

#[test]
fn inserts_into_a_target_by_rowid_leave_fk_checks_immediate() {
    let (_dir, a, b) = defer_pair();
    a.execute_batch("INSERT INTO tags(uuid, name) VALUES ('T1', 'red')")
        .unwrap();
    let (report, deferred) = apply_and_deferred(&a, &b, 0);
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert!(!deferred, "no FK check on tags can fail: {report}");
    // An update of a tracked column: still nothing to defer.
    let since = cursor(&a);
    a.execute_batch("UPDATE tags SET name = 'blue'").unwrap();
    let (report, deferred) = apply_and_deferred(&a, &b, since);
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert!(!deferred, "{report}");
}

#[test]
fn a_delete_of_an_fk_target_defers_fk_checks() {
    let (_dir, a, b) = defer_pair();
    a.execute_batch("INSERT INTO tags(uuid, name) VALUES ('T1', 'red')")
        .unwrap();
    send(&a, &b, 0);
    let since = cursor(&a);
    a.execute_batch("DELETE FROM tags").unwrap();
    let (report, deferred) = apply_and_deferred(&a, &b, since);
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert!(deferred, "{report}");
}

#[test]
fn a_target_through_a_written_column_or_a_unique_key_defers_fk_checks() {
    // An FK to a tracked column: an update can change the key it points at.
    let by_name = "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT UNIQUE);
         CREATE TABLE notes(id INTEGER PRIMARY KEY, tag TEXT REFERENCES tags(name));
         SELECT lsync_track('tags', 'shared');
         PRAGMA foreign_keys = ON;";
    // A UNIQUE key of a shared table: clashing rows merge, and one goes.
    let unique = "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT UNIQUE);
         SELECT lsync_track('tags', 'shared');
         PRAGMA foreign_keys = ON;";
    for schema in [by_name, unique] {
        let (_dir, a, b) = two_libraries(schema);
        a.execute_batch("INSERT INTO tags(uuid, name) VALUES ('T1', 'red')")
            .unwrap();
        let (report, deferred) = apply_and_deferred(&a, &b, 0);
        assert_eq!(n(&report, "applied"), 1, "{report}");
        assert!(deferred, "{schema}: {report}");
    }
}

#[test]
fn without_fk_enforcement_nothing_is_deferred() {
    let (_dir, a, b) = defer_pair();
    b.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    a.execute_batch("INSERT INTO folders(uuid, parent, name) VALUES ('P', NULL, 'p')")
        .unwrap();
    let (report, deferred) = apply_and_deferred(&a, &b, 0);
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert!(!deferred, "{report}");
}

#[test]
fn an_fk_added_by_another_connection_is_seen_by_the_next_apply() {
    let (dir, a, b) = defer_pair();
    a.execute_batch("INSERT INTO tags(uuid, name) VALUES ('T1', 'red')")
        .unwrap();
    let (_, deferred) = apply_and_deferred(&a, &b, 0);
    assert!(!deferred);
    // Another connection makes tags a target through their global id,
    // which a merge writes: b's next apply must defer.
    let other = open(&dir.path().join("b.db"));
    other
        .execute_batch("CREATE TABLE pins(id INTEGER PRIMARY KEY, tag TEXT REFERENCES tags(uuid))")
        .unwrap();
    let since = cursor(&a);
    a.execute_batch("INSERT INTO tags(uuid, name) VALUES ('T2', 'blue')")
        .unwrap();
    let (report, deferred) = apply_and_deferred(&a, &b, since);
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert!(deferred, "{report}");
}

#[test]
fn an_app_trigger_on_the_table_defers_fk_checks() {
    // The trigger writes a child row: its FK is checked mid-apply.
    for trigger in [
        "CREATE TRIGGER tag_noted AFTER INSERT ON tags BEGIN
           INSERT INTO notes(tag_id) VALUES (NEW.id); END",
        "CREATE TEMP TRIGGER tag_noted AFTER INSERT ON main.tags BEGIN
           INSERT INTO notes(tag_id) VALUES (NEW.id); END",
    ] {
        let (_dir, a, b) = defer_pair();
        b.execute_batch(trigger).unwrap();
        a.execute_batch("INSERT INTO tags(uuid, name) VALUES ('T1', 'red')")
            .unwrap();
        let (report, deferred) = apply_and_deferred(&a, &b, 0);
        assert_eq!(n(&report, "applied"), 1, "{report}");
        assert!(deferred, "{trigger}: {report}");
        assert_eq!(count(&b, "notes"), 1);
    }
}

/// Links lsync maps (an integer FK to a tracked table's rowid) are set
/// only to a row that is there, or left NULL while the link waits: their
/// checks cannot fail mid-apply, so they stay immediate. Children in a
/// batch, a child that comes before its parent, and a child in another
/// table all land linked, with no FK violated.
#[test]
fn mapped_links_apply_with_fk_checks_immediate() {
    let (_dir, a, b) = two_libraries(
        "CREATE TABLE dirs(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
           parent_id INTEGER REFERENCES dirs(id), name TEXT);
         CREATE TABLE files(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
           dir_id INTEGER REFERENCES dirs(id), name TEXT);
         SELECT lsync_track('dirs', 'device_owned');
         SELECT lsync_track('files', 'device_owned');
         PRAGMA foreign_keys = ON;",
    );
    a.execute_batch(
        "INSERT INTO dirs(uuid, name) VALUES ('D0', 'root');
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO dirs(uuid, parent_id, name) SELECT 'D' || i, (i - 1) / 4 + 1, 'd' || i FROM n;
         INSERT INTO files(uuid, dir_id, name) SELECT 'F' || substr(uuid, 2), id, 'f' FROM dirs;
         -- A child made before its parent, linked after.
         INSERT INTO dirs(uuid, name) VALUES ('LATE-CHILD', 'late child');
         INSERT INTO dirs(uuid, name) VALUES ('LATE-PARENT', 'late parent');
         UPDATE dirs SET parent_id = (SELECT id FROM dirs WHERE uuid = 'LATE-PARENT')
           WHERE uuid = 'LATE-CHILD';",
    )
    .unwrap();
    b.execute_batch("PRAGMA foreign_keys = ON").unwrap();
    let (report, deferred) = apply_and_deferred(&a, &b, 0);
    assert_eq!(n(&report, "quarantined"), 0, "{report}");
    assert!(!deferred, "mapped links need no deferred checks: {report}");
    let links = |c: &Connection| {
        query_rows(
            c,
            "SELECT d.uuid, p.uuid FROM dirs d LEFT JOIN dirs p ON p.id = d.parent_id
             UNION ALL
             SELECT f.uuid, d.uuid FROM files f LEFT JOIN dirs d ON d.id = f.dir_id
             ORDER BY 1",
        )
    };
    assert_eq!(links(&b), links(&a));
    assert!(query_rows(&b, "PRAGMA foreign_key_check").is_empty());
}
