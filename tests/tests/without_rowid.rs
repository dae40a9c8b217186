//! Issue 12: a WITHOUT ROWID table keyed by a TEXT or BLOB id is tracked as
//! it is. It has no rowid, so lsync numbers its rows in `lsync_gid`; every
//! path that addresses rows (capture, fold, export, apply, merge, both
//! restore paths) goes through that number.

use lsync_tests::*;

const SETTINGS: &str = "
    CREATE TABLE folder(id INTEGER PRIMARY KEY, name TEXT);
    SELECT lsync_track('folder', 'shared');
    CREATE TABLE setting(key TEXT PRIMARY KEY, value TEXT, n INTEGER,
                         folder_id INTEGER REFERENCES folder(id)) WITHOUT ROWID;
    CREATE TABLE blob_kv(id BLOB PRIMARY KEY, body TEXT) WITHOUT ROWID;
    SELECT lsync_track('setting', 'shared');
    SELECT lsync_track('blob_kv', 'device_owned');";

const ROWS: &str = "SELECT 'setting', key, value, n FROM setting
    UNION ALL SELECT 'blob_kv', body, length(id), NULL FROM blob_kv ORDER BY 1, 2";

fn exchange_and_compare(a: &rusqlite::Connection, b: &rusqlite::Connection) {
    send(a, b, 0);
    send(b, a, 0);
    assert_eq!(query_rows(a, ROWS), query_rows(b, ROWS));
}

#[test]
fn a_without_rowid_table_is_tracked_by_its_key() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch("CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID")
        .unwrap();
    let s: String = scalar(&c, "SELECT lsync_track('kv', 'shared')");
    let got: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(got["identity"], "primary key", "{got}");
    assert_eq!(got["uuid_column"], "k", "{got}");
}

#[test]
fn a_without_rowid_table_with_another_key_is_refused() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(
        "CREATE TABLE pair(a TEXT, b TEXT, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
         CREATE TABLE counted(n INTEGER PRIMARY KEY, v) WITHOUT ROWID;",
    )
    .unwrap();
    for table in ["pair", "counted"] {
        let e = error_of(&c, &format!("SELECT lsync_track('{table}', 'shared')"));
        assert!(
            e.contains("WITHOUT ROWID") && e.contains("one TEXT or BLOB column"),
            "{table}: {e}"
        );
    }
}

/// Inserts, concurrent writes of one key, updates, deletes, a delete and
/// re-insert before any fold, and INSERT OR REPLACE reach the peer.
#[test]
fn without_rowid_rows_converge() {
    let (_dir, a, b) = two_libraries(SETTINGS);
    a.execute_batch(
        "INSERT INTO setting(key, value, n) VALUES ('theme', 'dark', 1), ('lang', 'en', 2);
         INSERT INTO blob_kv VALUES (lsync_uuid('blob'), 'one'), (lsync_uuid('blob'), 'two');",
    )
    .unwrap();
    b.execute_batch(
        "INSERT INTO setting(key, value, n) VALUES ('lang', 'fr', 3), ('font', 'mono', 4)",
    )
    .unwrap();
    exchange_and_compare(&a, &b);
    assert_eq!(count(&a, "setting"), 3);
    // An integer FK of a WITHOUT ROWID row travels as its target's id: the
    // folder has another local id on B.
    b.execute_batch("INSERT INTO folder(name) VALUES ('b-only')")
        .unwrap();
    a.execute_batch(
        "INSERT INTO folder(name) VALUES ('docs');
         UPDATE setting SET folder_id = (SELECT id FROM folder WHERE name = 'docs')
         WHERE key = 'font';",
    )
    .unwrap();
    exchange_and_compare(&a, &b);
    let folder_of_font = "SELECT f.name FROM setting s JOIN folder f ON f.id = s.folder_id
                          WHERE s.key = 'font'";
    assert_eq!(query_rows(&b, folder_of_font), [["docs"]]);
    assert_ne!(
        scalar::<i64>(&a, "SELECT folder_id FROM setting WHERE key = 'font'"),
        scalar::<i64>(&b, "SELECT folder_id FROM setting WHERE key = 'font'"),
        "the local ids differ, so the FK was mapped"
    );
    b.execute_batch(
        "UPDATE setting SET value = 'light' WHERE key = 'theme';
         DELETE FROM setting WHERE key = 'font';",
    )
    .unwrap();
    a.execute_batch(
        "UPDATE blob_kv SET body = 'uno' WHERE body = 'one';
         DELETE FROM setting WHERE key = 'lang';
         INSERT INTO setting(key, value, n) VALUES ('lang', 'de', 5);
         INSERT OR REPLACE INTO blob_kv SELECT id, 'dos' FROM blob_kv WHERE body = 'two';",
    )
    .unwrap();
    exchange_and_compare(&a, &b);
    assert_eq!(
        query_rows(&a, ROWS),
        [
            ["blob_kv", "dos", "16", "NULL"],
            ["blob_kv", "uno", "16", "NULL"],
            ["setting", "lang", "de", "5"],
            ["setting", "theme", "light", "1"],
        ]
    );
    // A delete does not come back, and the peer's own rows are its own.
    a.execute_batch("DELETE FROM setting WHERE key = 'theme'")
        .unwrap();
    exchange_and_compare(&a, &b);
    assert_eq!(count(&b, "setting"), 1);
    let e = error_of(&b, "UPDATE blob_kv SET body = 'mine' WHERE body = 'uno'");
    assert!(e.contains("owned by"), "{e}");
    // A REPLACE of A's row under its key is refused too (and rolls back).
    let e = error_of(
        &b,
        "INSERT OR REPLACE INTO blob_kv SELECT id, 'taken' FROM blob_kv WHERE body = 'uno'",
    );
    assert!(e.contains("owned by another device"), "{e}");
    assert_eq!(count(&b, "blob_kv"), 2);
    assert!(query_rows(&b, "SELECT body FROM blob_kv WHERE body = 'taken'").is_empty());
    let numbered: i64 = scalar(
        &b,
        "SELECT count(*) FROM lsync_gid
         WHERE tbl IN (SELECT id FROM lsync_tables WHERE name IN ('setting', 'blob_kv'))",
    );
    assert_eq!(numbered, 3, "one number per live row");
}

/// Rows already in the table when it is tracked are its device's inserts.
#[test]
fn rows_there_before_tracking_are_sent() {
    let (_dir, a, b) = two_libraries(
        "CREATE TABLE setting(key TEXT PRIMARY KEY, value TEXT, n INTEGER) WITHOUT ROWID;",
    );
    a.execute_batch(
        "INSERT INTO setting(key, value, n) VALUES ('a', '1', 1), ('b', '2', 2);
         SELECT lsync_track('setting', 'shared');
         INSERT INTO setting(key, value, n) VALUES ('c', '3', 3);",
    )
    .unwrap();
    b.execute_batch("SELECT lsync_track('setting', 'shared')")
        .unwrap();
    send(&a, &b, 0);
    assert_eq!(count(&b, "setting"), 3);
}

/// Both restore paths: a device that joins by snapshot (the empty path)
/// and one with rows of its own (the merge path) get the rows, and later
/// edits on either side reach the other.
#[test]
fn without_rowid_rows_travel_in_snapshots() {
    let (dir, a, b) = two_libraries(SETTINGS);
    a.execute_batch(
        "INSERT INTO setting(key, value, n) VALUES ('theme', 'dark', 1), ('lang', 'en', 2);
         INSERT INTO blob_kv VALUES (lsync_uuid('blob'), 'one');",
    )
    .unwrap();
    flush(&a);
    let c = open(&dir.path().join("c.db"));
    c.execute_batch(SETTINGS).unwrap();
    join_library(&c, &library_id(&a));
    b.execute_batch("INSERT INTO setting(key, value, n) VALUES ('font', 'mono', 3)")
        .unwrap();
    let snap = dir.path().join("snap.db");
    let _: i64 = scalar(&a, &format!("SELECT lsync_snapshot('{}')", snap.display()));
    for (target, mode, key) in [(&c, "empty", "lang"), (&b, "merge", "theme")] {
        let report: String = scalar(
            target,
            &format!("SELECT lsync_restore('{}')", snap.display()),
        );
        assert!(report.contains(&format!(r#""mode":"{mode}""#)), "{report}");
        target
            .execute("UPDATE setting SET n = n + 10 WHERE key = ?1", [key])
            .unwrap();
        send(target, &a, 0);
    }
    send(&a, &c, 0);
    send(&a, &b, 0);
    assert_eq!(query_rows(&a, ROWS), query_rows(&b, ROWS));
    assert_eq!(query_rows(&a, ROWS), query_rows(&c, ROWS));
    assert_eq!(
        query_rows(&a, "SELECT key, n FROM setting ORDER BY key"),
        [["font", "3"], ["lang", "12"], ["theme", "11"]]
    );
}

/// A key written again keeps its number, whatever conflict clause the
/// statement has: in a trigger, the outer statement's clause replaces the
/// trigger's own (`INSERT OR REPLACE` would renumber the key, and `INSERT
/// OR ABORT` of a key deleted before the fold would fail).
#[test]
fn a_key_written_again_keeps_its_number() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(
        "CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         SELECT lsync_track('kv', 'device_owned');
         INSERT INTO kv VALUES ('a', 1), ('b', 2);
         SELECT lsync_flush();",
    )
    .unwrap();
    let numbers = "SELECT rid, gid FROM lsync_gid ORDER BY rid";
    let before = query_rows(&c, numbers);
    c.execute_batch(
        "INSERT OR REPLACE INTO kv VALUES ('a', 9);
         DELETE FROM kv WHERE k = 'b';
         INSERT OR ABORT INTO kv VALUES ('b', 3);",
    )
    .unwrap();
    assert_eq!(query_rows(&c, numbers), before);
    let ops = "SELECT pk, op, data FROM lsync_changes(2) ORDER BY seq";
    assert_eq!(
        query_rows(&c, ops),
        [["a", "insert", r#"{"v":9}"#], ["b", "insert", r#"{"v":3}"#]]
    );
}
