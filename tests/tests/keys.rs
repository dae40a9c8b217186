//! Issue 12: tables tracked as they are, with the global ids lsync keeps
//! for them (`lsync_gid`): a composite key, a key of one FK (a 1:1
//! extension), and an INTEGER PRIMARY KEY with no global id column.

use lsync_tests::*;
use serde_json::Value as Json;

fn tracked_as(c: &rusqlite::Connection, sql: &str) -> Json {
    let s: String = scalar(c, sql);
    serde_json::from_str(&s).unwrap()
}

/// A file manager's tables: entities with a `pub_id`, an integer-keyed
/// tag table, a join table keyed by its pair, and a 1:1 extension.
const FILES: &str = "
    CREATE TABLE tag(id INTEGER PRIMARY KEY, name TEXT, color TEXT);
    CREATE TABLE object(id INTEGER PRIMARY KEY, pub_id BLOB NOT NULL UNIQUE DEFAULT (lsync_uuid('blob')),
                        kind INTEGER);
    CREATE TABLE tag_on_object(
      tag_id INTEGER NOT NULL REFERENCES tag(id) ON DELETE CASCADE,
      object_id INTEGER NOT NULL REFERENCES object(id) ON DELETE CASCADE,
      added TEXT,
      PRIMARY KEY (tag_id, object_id));
    CREATE TABLE exif_data(id INTEGER PRIMARY KEY,
                           object_id INTEGER NOT NULL UNIQUE REFERENCES object(id) ON DELETE CASCADE,
                           iso INTEGER);
    SELECT lsync_track('tag', 'shared');
    SELECT lsync_track('object', 'shared');
    SELECT lsync_track('tag_on_object', 'shared');
    SELECT lsync_track('exif_data', 'shared');";

/// The join table's rows by what they name, the same on every device.
const PAIRS: &str = "SELECT t.name, o.kind, x.added FROM tag_on_object x
    JOIN tag t ON t.id = x.tag_id JOIN object o ON o.id = x.object_id ORDER BY 1, 2";

fn both_ways(a: &rusqlite::Connection, b: &rusqlite::Connection) {
    send(a, b, 0);
    send(b, a, 0);
}

#[test]
fn each_kind_of_table_says_which_identity_it_got() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(FILES).unwrap();
    let got: Vec<(String, String)> = ["tag", "object", "tag_on_object", "exif_data"]
        .iter()
        .map(|t| {
            let v = tracked_as(&c, &format!("SELECT lsync_track('{t}', 'shared')"));
            (
                v["identity"].as_str().unwrap().to_owned(),
                v["key"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("rowid".to_owned(), "null".to_owned()),
            ("unique column".to_owned(), "null".to_owned()),
            (
                "primary key".to_owned(),
                r#"["tag_id","object_id"]"#.to_owned()
            ),
            ("unique key".to_owned(), r#"["object_id"]"#.to_owned()),
        ]
    );
    // An option picks another identity.
    c.execute_batch(
        "CREATE TABLE album(id INTEGER PRIMARY KEY, pub_id BLOB NOT NULL UNIQUE, title TEXT);",
    )
    .unwrap();
    let v = tracked_as(
        &c,
        r#"SELECT lsync_track('album', 'shared', '{"identity": "rowid"}')"#,
    );
    assert_eq!(v["identity"], "identity option");
    assert_eq!(v["columns"], serde_json::json!(["pub_id", "title"]));
}

/// The same pair assigned on two devices is one row, not a conflict; its
/// other columns merge as any shared row's.
#[test]
fn the_same_pair_assigned_on_two_devices_is_one_row() {
    let (_dir, a, b) = two_libraries(FILES);
    a.execute_batch(
        "INSERT INTO tag(name) VALUES ('red'), ('blue');
         INSERT INTO object(kind) VALUES (1), (2);",
    )
    .unwrap();
    both_ways(&a, &b);
    a.execute_batch("INSERT INTO tag_on_object VALUES (1, 1, 'by a'), (2, 2, 'a only');")
        .unwrap();
    b.execute_batch("INSERT INTO tag_on_object VALUES (1, 1, 'by b'), (2, 1, 'b only');")
        .unwrap();
    both_ways(&a, &b);
    send(&a, &b, 0);
    assert_eq!(query_rows(&a, PAIRS), query_rows(&b, PAIRS));
    assert_eq!(
        query_rows(&a, PAIRS).len(),
        3,
        "{:?}",
        query_rows(&a, PAIRS)
    );
    let conflicts: i64 = scalar(&a, "SELECT count(*) FROM lsync_conflicts");
    assert_eq!(conflicts, 0);
    // Both devices derived the one pair's id alike.
    let ids = "SELECT hex(gid) FROM lsync_gid WHERE tbl = (SELECT id FROM lsync_tables
               WHERE name = 'tag_on_object') ORDER BY 1";
    assert_eq!(query_rows(&a, ids), query_rows(&b, ids));
}

/// Rows of a table with only an INTEGER PRIMARY KEY get global ids from
/// lsync; integer FKs to them map across devices, where the same rowid
/// names different rows.
#[test]
fn integer_keys_map_across_devices() {
    let schema = "
        CREATE TABLE artist(ArtistId INTEGER PRIMARY KEY, Name TEXT);
        CREATE TABLE album(AlbumId INTEGER PRIMARY KEY, Title TEXT,
                           ArtistId INTEGER NOT NULL REFERENCES artist(ArtistId));
        SELECT lsync_track('artist', 'shared');
        SELECT lsync_track('album', 'shared');";
    let (_dir, a, b) = two_libraries(schema);
    a.execute_batch(
        "INSERT INTO artist VALUES (1, 'AC/DC');
         INSERT INTO album VALUES (1, 'Back in Black', 1);",
    )
    .unwrap();
    b.execute_batch(
        "INSERT INTO artist VALUES (1, 'Accept');
         INSERT INTO album VALUES (1, 'Balls to the Wall', 1);",
    )
    .unwrap();
    both_ways(&a, &b);
    let albums =
        "SELECT al.Title, ar.Name FROM album al JOIN artist ar USING (ArtistId) ORDER BY 1";
    let want = [["Back in Black", "AC/DC"], ["Balls to the Wall", "Accept"]];
    assert_eq!(query_rows(&a, albums), want);
    assert_eq!(query_rows(&b, albums), want);
    // Edits and deletes find the row by its id, whatever its rowid here.
    b.execute_batch(
        "UPDATE artist SET Name = 'AC-DC' WHERE Name = 'AC/DC';
         DELETE FROM album WHERE Title = 'Balls to the Wall';",
    )
    .unwrap();
    both_ways(&a, &b);
    let want = [["Back in Black", "AC-DC"]];
    assert_eq!(query_rows(&a, albums), want);
    assert_eq!(query_rows(&b, albums), want);
}

/// A 1:1 extension keyed by its FK has its target's id: written on two
/// devices, it is one row.
#[test]
fn a_table_keyed_by_one_fk_has_its_targets_id() {
    let (_dir, a, b) = two_libraries(FILES);
    a.execute_batch("INSERT INTO object(kind) VALUES (7)")
        .unwrap();
    both_ways(&a, &b);
    a.execute_batch("INSERT INTO exif_data(object_id, iso) VALUES (1, 100)")
        .unwrap();
    b.execute_batch("INSERT INTO exif_data(object_id, iso) VALUES (1, 200)")
        .unwrap();
    both_ways(&a, &b);
    send(&a, &b, 0);
    let exif = "SELECT o.kind, e.iso FROM exif_data e JOIN object o ON o.id = e.object_id";
    assert_eq!(query_rows(&a, exif), query_rows(&b, exif));
    assert_eq!(query_rows(&a, exif).len(), 1);
    let same: i64 = scalar(
        &a,
        "SELECT count(*) FROM lsync_gid g JOIN object o ON g.gid = o.pub_id
         WHERE g.tbl = (SELECT id FROM lsync_tables WHERE name = 'exif_data')",
    );
    assert_eq!(same, 1);
}

/// A key part cannot change in place: the update reaches peers as the old
/// row's delete and the new row's insert.
#[test]
fn changing_a_key_part_is_a_delete_and_an_insert() {
    let (_dir, a, b) = two_libraries(FILES);
    a.execute_batch(
        "INSERT INTO tag(name) VALUES ('red'), ('blue');
         INSERT INTO object(kind) VALUES (1);
         INSERT INTO tag_on_object VALUES (1, 1, 'x');",
    )
    .unwrap();
    both_ways(&a, &b);
    let since = cursor(&a);
    a.execute_batch("UPDATE tag_on_object SET tag_id = 2")
        .unwrap();
    let ops: Vec<String> = changes(&a, since)
        .iter()
        .filter(|c| c.tbl == "tag_on_object")
        .map(|c| c.op.clone())
        .collect();
    assert_eq!(ops, ["delete", "insert"]);
    send(&a, &b, 0);
    assert_eq!(query_rows(&b, PAIRS), [["blue", "1", "x"]]);
    assert_eq!(query_rows(&a, PAIRS), query_rows(&b, PAIRS));
}

/// Each refusal says what would make the table trackable.
#[test]
fn keys_that_cannot_be_identities_are_refused() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(
        "CREATE TABLE folder(id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE item(folder_id INTEGER NOT NULL REFERENCES folder(id), n INTEGER NOT NULL,
                           PRIMARY KEY (folder_id, n));
         CREATE TABLE loose(a TEXT, b TEXT, PRIMARY KEY (a, b));
         CREATE TABLE plain(a TEXT NOT NULL, b TEXT);",
    )
    .unwrap();
    let cases = [
        (
            "SELECT lsync_track('item', 'shared')",
            "'item.folder_id' holds local ids of 'folder', which is not tracked",
        ),
        (
            r#"SELECT lsync_track('item', 'shared', '{"identity": ["folder_id", "n"]}')"#,
            "holds local ids of 'folder', which is not tracked",
        ),
        (
            r#"SELECT lsync_track('loose', 'shared', '{"identity": ["a", "b"]}')"#,
            "key part 'loose.a' may be NULL",
        ),
        (
            r#"SELECT lsync_track('plain', 'shared', '{"identity": ["a"]}')"#,
            "(a) is not a PRIMARY KEY or UNIQUE key of 'plain'",
        ),
        (
            r#"SELECT lsync_track('plain', 'shared', '{"identity": "rowid"}')"#,
            "'plain' has no INTEGER PRIMARY KEY: its implicit rowids may change",
        ),
        (
            "SELECT lsync_track('plain', 'shared')",
            "table 'plain' has no usable key",
        ),
        (
            r#"SELECT lsync_track('plain', 'shared', '{"identity": 5}')"#,
            "the identity option must be \"rowid\" or a list of key columns",
        ),
    ];
    for (sql, expected) in cases {
        let e = error_of(&c, sql);
        assert!(e.contains(expected), "{sql}: {e}");
    }
    assert_eq!(count(&c, "lsync_tables"), 0);
}

/// A composite FK copies its parent's key. To a key of values it travels
/// as it is; to a key with a local id in it, it is refused unless kept on
/// the device.
#[test]
fn a_composite_fk_travels_when_its_parent_key_is_values() {
    let schema = "
        CREATE TABLE folder(vol TEXT NOT NULL, path TEXT NOT NULL, note TEXT,
                            PRIMARY KEY (vol, path));
        CREATE TABLE doc(id INTEGER PRIMARY KEY, vol TEXT, path TEXT, title TEXT,
                         FOREIGN KEY (vol, path) REFERENCES folder(vol, path));
        SELECT lsync_track('folder', 'shared');
        SELECT lsync_track('doc', 'shared');";
    let (dir, a, b) = two_libraries(schema);
    a.execute_batch(
        "INSERT INTO folder VALUES ('v1', '/music', 'x');
         INSERT INTO doc(vol, path, title) VALUES ('v1', '/music', 'readme');",
    )
    .unwrap();
    send(&a, &b, 0);
    let docs = "SELECT d.title, f.note FROM doc d JOIN folder f USING (vol, path)";
    assert_eq!(query_rows(&b, docs), [["readme", "x"]]);

    let c = open(&dir.path().join("c.db"));
    c.execute_batch(
        "CREATE TABLE tag(id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE pair(tag_id INTEGER NOT NULL REFERENCES tag(id), k TEXT NOT NULL,
                           PRIMARY KEY (tag_id, k));
         CREATE TABLE ref(id INTEGER PRIMARY KEY, t INTEGER, k TEXT, note TEXT,
                          CONSTRAINT [to pair] FOREIGN KEY (t, k) REFERENCES pair(tag_id, k));
         SELECT lsync_track('tag', 'shared');
         SELECT lsync_track('pair', 'shared');",
    )
    .unwrap();
    let e = error_of(&c, "SELECT lsync_track('ref', 'shared')");
    assert!(
        e.contains("'ref' has a composite FK (t, k) to 'pair', whose 'tag_id' holds local ids")
            && e.contains(r#"{"local_columns": ["t", "k"]}"#),
        "{e}"
    );
    let v = tracked_as(
        &c,
        r#"SELECT lsync_track('ref', 'shared', '{"local_columns": ["t", "k"]}')"#,
    );
    assert_eq!(v["columns"], serde_json::json!(["note"]));
}

/// A row of an INTEGER-keyed table written again under its id (`INSERT OR
/// REPLACE`) is the same row: it keeps its global id, and peers update it.
#[test]
fn a_row_replaced_under_its_integer_id_keeps_its_global_id() {
    let schema = "CREATE TABLE artist(ArtistId INTEGER PRIMARY KEY, Name TEXT);
        SELECT lsync_track('artist', 'shared');";
    let (_dir, a, b) = two_libraries(schema);
    a.execute_batch("INSERT INTO artist VALUES (1, 'Queen')")
        .unwrap();
    send(&a, &b, 0);
    let ids = "SELECT hex(gid) FROM lsync_gid";
    let before = query_rows(&a, ids);
    a.execute_batch("INSERT OR REPLACE INTO artist VALUES (1, 'Queen II')")
        .unwrap();
    send(&a, &b, 0);
    assert_eq!(query_rows(&a, ids), before);
    assert_eq!(query_rows(&b, "SELECT Name FROM artist"), [["Queen II"]]);
}

/// Both restore paths carry the ids lsync keeps: a device that joins by
/// snapshot (the empty path) and one with rows of its own (the merge path)
/// end with the source's rows under the same global ids, and later edits
/// find them.
#[test]
fn snapshots_carry_the_ids_lsync_keeps() {
    let (dir, a, b) = two_libraries(FILES);
    a.execute_batch(
        "INSERT INTO tag(name) VALUES ('red'), ('blue');
         INSERT INTO object(kind) VALUES (1), (2);
         INSERT INTO tag_on_object VALUES (1, 1, 'x'), (2, 2, 'y');
         INSERT INTO exif_data(object_id, iso) VALUES (2, 400);",
    )
    .unwrap();
    flush(&a);
    let c = open(&dir.path().join("c.db"));
    c.execute_batch(FILES).unwrap();
    join_library(&c, &library_id(&a));
    b.execute_batch("INSERT INTO tag(name) VALUES ('green')")
        .unwrap();
    let snap = dir.path().join("snap.db");
    let _: i64 = scalar(&a, &format!("SELECT lsync_snapshot('{}')", snap.display()));
    let ids = "SELECT l.name, hex(g.gid) FROM lsync_gid g JOIN lsync_tables l ON l.id = g.tbl
               WHERE l.name IN ('tag_on_object', 'exif_data') ORDER BY 1, 2";
    for (target, mode) in [(&c, "empty"), (&b, "merge")] {
        let report: String = scalar(
            target,
            &format!("SELECT lsync_restore('{}')", snap.display()),
        );
        assert!(report.contains(&format!(r#""mode":"{mode}""#)), "{report}");
        assert_eq!(query_rows(target, PAIRS), query_rows(&a, PAIRS), "{mode}");
        assert_eq!(query_rows(target, ids), query_rows(&a, ids), "{mode}");
    }
    // An edit made after the restore reaches the source's row.
    c.execute_batch("UPDATE tag_on_object SET added = 'z' WHERE added = 'x'")
        .unwrap();
    send(&c, &a, 0);
    send(&b, &a, 0);
    assert!(query_rows(&a, PAIRS).contains(&vec!["red".into(), "1".into(), "z".into()]));
    assert_eq!(count(&a, "tag"), 3);
}

/// With foreign_keys off an app can leave a key part dangling: such a row
/// gets an id of its own, so the fold does not fail and two such rows do
/// not share one; the peer takes the rest.
#[test]
fn a_key_part_left_dangling_neither_fails_the_fold_nor_shares_an_id() {
    let (_dir, a, b) = two_libraries(FILES);
    a.execute_batch(
        "PRAGMA foreign_keys = OFF;
         INSERT INTO tag(name) VALUES ('red');
         INSERT INTO tag_on_object VALUES (1, 998, 'x'), (1, 999, 'y');
         INSERT INTO exif_data(object_id, iso) VALUES (997, 1);",
    )
    .unwrap();
    flush(&a);
    let ids: i64 = scalar(
        &a,
        "SELECT count(DISTINCT gid) FROM lsync_gid WHERE tbl IN
           (SELECT id FROM lsync_tables WHERE name IN ('tag_on_object', 'exif_data'))",
    );
    assert_eq!(ids, 3);
    let report = send(&a, &b, 0);
    assert_eq!(count(&b, "tag"), 1, "{report}");
}
