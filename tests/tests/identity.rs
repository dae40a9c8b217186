//! Issue 12, the part that is built: what `lsync_track` takes as a row's
//! global id, the ids it refuses (with a message that says what would
//! work), columns kept on one device (`local_columns`), FKs to tables that
//! are not tracked, and a `NOT NULL` global id filled by its default.

use lsync_tests::*;
use serde_json::Value as Json;

fn track(c: &rusqlite::Connection, sql: &str) -> Json {
    let s: String = scalar(c, sql);
    serde_json::from_str(&s).unwrap()
}

/// A PRIMARY KEY of one TEXT column is the global id when no column is
/// named `uuid`: two devices that write the same key write one row.
#[test]
fn a_text_primary_key_is_the_global_id() {
    let schema = "CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT);";
    let (_dir, a, b) = two_libraries(schema);
    for c in [&a, &b] {
        let v = track(c, "SELECT lsync_track('settings', 'shared')");
        assert_eq!(
            (&v["uuid_column"], &v["identity"]),
            (&Json::from("key"), &Json::from("primary key"))
        );
        assert_eq!(v["columns"], serde_json::json!(["value"]));
    }
    a.execute_batch("INSERT INTO settings VALUES ('theme', 'dark')")
        .unwrap();
    b.execute_batch("INSERT INTO settings VALUES ('theme', 'light'), ('lang', 'fr')")
        .unwrap();
    send(&a, &b, 0);
    send(&b, &a, 0);
    let all = "SELECT key, value FROM settings ORDER BY key";
    assert_eq!(query_rows(&a, all), query_rows(&b, all));
    assert_eq!(query_rows(&a, all).len(), 2);
}

/// A column named `uuid` is still taken first; the option picks another.
#[test]
fn the_result_says_which_identity_was_chosen() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(
        "CREATE TABLE docs(code TEXT PRIMARY KEY, uuid TEXT UNIQUE, body TEXT);
         CREATE TABLE pages(code TEXT PRIMARY KEY, uuid TEXT UNIQUE, body TEXT);",
    )
    .unwrap();
    let v = track(&c, "SELECT lsync_track('docs', 'shared')");
    assert_eq!(
        (&v["uuid_column"], &v["identity"]),
        (&Json::from("uuid"), &Json::from("uuid column"))
    );
    let v = track(
        &c,
        r#"SELECT lsync_track('pages', 'shared', '{"uuid_column": "code"}')"#,
    );
    assert_eq!(
        (&v["uuid_column"], &v["identity"]),
        (&Json::from("code"), &Json::from("uuid_column option"))
    );
    assert_eq!(v["columns"], serde_json::json!(["uuid", "body"]));
}

/// Each refusal says what would make the table trackable.
#[test]
fn ids_that_are_local_are_refused_with_what_would_work() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(
        "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         SELECT lsync_track('tags', 'shared');
         CREATE TABLE tag_on_object(tag_id INTEGER REFERENCES tags(id), object_id INTEGER,
                                    note TEXT);
         CREATE TABLE exif(object_ref TEXT REFERENCES tags(id), iso INTEGER);
         CREATE TABLE counters(n INTEGER, label TEXT);",
    )
    .unwrap();
    let cases = [
        (
            r#"SELECT lsync_track('tag_on_object', 'shared', '{"uuid_column": "object_id"}')"#,
            "'tag_on_object.object_id' is an INTEGER column: it holds local ids",
        ),
        (
            r#"SELECT lsync_track('exif', 'shared', '{"uuid_column": "object_ref"}')"#,
            "'exif.object_ref' is an FK to 'tags'",
        ),
        (
            "SELECT lsync_track('counters', 'shared')",
            "table 'counters' has no usable key: no column 'uuid', no PRIMARY KEY or UNIQUE key whose parts are NOT NULL, and no INTEGER PRIMARY KEY",
        ),
    ];
    for (sql, expected) in cases {
        let e = error_of(&c, sql);
        assert!(e.contains(expected), "{sql}: {e}");
    }
    // Nothing was tracked, and no index was made on the FK column.
    assert_eq!(count(&c, "lsync_tables"), 1);
    let idx: i64 = scalar(
        &c,
        "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'tag_on_object'",
    );
    assert_eq!(idx, 0);
}

/// An FK to a table that is not tracked would reach peers as a raw local
/// id, naming another row there: refused, unless the column is local.
#[test]
fn an_fk_to_an_untracked_table_is_refused_unless_local() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(
        "CREATE TABLE instances(id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE objects(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT,
                              instance_id INTEGER REFERENCES instances(id));",
    )
    .unwrap();
    let e = error_of(&c, "SELECT lsync_track('objects', 'shared')");
    assert!(
        e.contains("'objects.instance_id' holds local ids of 'instances', which is not tracked")
            && e.contains(r#"{"local_columns": ["instance_id"]}"#),
        "{e}"
    );
    let v = track(
        &c,
        r#"SELECT lsync_track('objects', 'shared', '{"local_columns": ["instance_id"]}')"#,
    );
    assert_eq!(v["columns"], serde_json::json!(["name"]));
    assert_eq!(v["local_columns"], serde_json::json!(["instance_id"]));
    assert_eq!(v["fks"], serde_json::json!({}));
    let e = error_of(
        &c,
        r#"SELECT lsync_track('objects', 'shared', '{"local_columns": ["nope"]}')"#,
    );
    assert!(
        e.contains("local column 'nope' is not a column of 'objects'"),
        "{e}"
    );
}

/// A local column is neither captured nor shipped: each device keeps its
/// own value, and a write to it alone records no change.
#[test]
fn a_local_column_stays_as_each_device_set_it() {
    let schema = "CREATE TABLE instances(id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE objects(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT,
                             instance_id INTEGER REFERENCES instances(id), thumb BLOB);
        SELECT lsync_track('objects', 'shared', '{\"local_columns\": [\"instance_id\", \"thumb\"]}');";
    let (_dir, a, b) = two_libraries(schema);
    a.execute_batch(
        "INSERT INTO instances(name) VALUES ('laptop');
         INSERT INTO objects(uuid, name, instance_id, thumb) VALUES ('O', 'photo', 1, x'aa');",
    )
    .unwrap();
    let report = send(&a, &b, 0);
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert_eq!(
        query_rows(&b, "SELECT uuid, name, instance_id, thumb FROM objects"),
        [["O", "photo", "NULL", "NULL"]]
    );
    let at = flush(&a);
    a.execute_batch("UPDATE objects SET thumb = x'bb', instance_id = NULL")
        .unwrap();
    assert_eq!(
        flush(&a),
        at,
        "a write to local columns alone records nothing"
    );
    b.execute_batch("UPDATE objects SET thumb = x'cc'").unwrap();
    send(&b, &a, 0);
    assert_eq!(query_rows(&a, "SELECT hex(thumb) FROM objects"), [["BB"]]);
}

/// A `NOT NULL` global id with no default warns; with
/// `DEFAULT (lsync_uuid('blob'))` an insert that leaves it out gets a
/// UUIDv7, even with `trusted_schema` off, and the row travels.
#[test]
fn a_not_null_global_id_is_filled_by_its_default() {
    let schema = "PRAGMA trusted_schema = OFF;
        CREATE TABLE objects(id INTEGER PRIMARY KEY,
          pub_id BLOB NOT NULL UNIQUE DEFAULT (lsync_uuid('blob')), name TEXT);
        CREATE TABLE strict_ids(id INTEGER PRIMARY KEY, pub_id BLOB NOT NULL UNIQUE, name TEXT);";
    let (_dir, a, b) = two_libraries(schema);
    for c in [&a, &b] {
        let v = track(
            c,
            r#"SELECT lsync_track('objects', 'shared', '{"uuid_column": "pub_id"}')"#,
        );
        assert_eq!(v["warnings"], serde_json::json!([]));
    }
    let v = track(
        &a,
        r#"SELECT lsync_track('strict_ids', 'shared', '{"uuid_column": "pub_id"}')"#,
    );
    let w = v["warnings"][0]["message"].as_str().unwrap_or_default();
    assert!(
        w.contains("strict_ids.pub_id, the global id, is NOT NULL with no default")
            && w.contains("DEFAULT (lsync_uuid('blob'))"),
        "{v}"
    );
    a.execute_batch("INSERT INTO objects(name) VALUES ('a'), ('b')")
        .unwrap();
    let ids = query_rows(
        &a,
        "SELECT length(pub_id), hex(substr(pub_id, 7, 1)) FROM objects",
    );
    // 16-byte UUIDv7s: the version nibble is 7.
    assert!(
        ids.iter().all(|r| r[0] == "16" && r[1].starts_with('7')),
        "{ids:?}"
    );
    let report = send(&a, &b, 0);
    assert_eq!(n(&report, "applied"), 2, "{report}");
    let by_id = "SELECT hex(pub_id), name FROM objects ORDER BY pub_id";
    assert_eq!(query_rows(&a, by_id), query_rows(&b, by_id));
}

/// FKs are found in each of SQLite's spellings: a column constraint with
/// and without the target column, a table constraint, and bracketed,
/// quoted and backquoted names, the target named in another letter case.
#[test]
fn fks_are_found_in_every_spelling() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(
        r#"CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
           SELECT lsync_track('tags', 'shared');
           CREATE TABLE spelled(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
             a INTEGER REFERENCES tags(id),
             b INTEGER REFERENCES tags,
             c INTEGER,
             [d col] INTEGER REFERENCES [Tags]([id]),
             "e""q" INTEGER REFERENCES "TAGS"("id"),
             `f` INTEGER CONSTRAINT named_fk REFERENCES `tags` ON DELETE CASCADE,
             g INTEGER,
             FOREIGN KEY (c) REFERENCES tags(id),
             CONSTRAINT g_fk FOREIGN KEY ("g") REFERENCES Tags);"#,
    )
    .unwrap();
    let v = track(&c, "SELECT lsync_track('spelled', 'shared')");
    let expected: serde_json::Map<String, Json> = ["a", "b", "c", "d col", "e\"q", "f", "g"]
        .iter()
        .map(|col| (col.to_string(), Json::from("tags")))
        .collect();
    assert_eq!(v["fks"], Json::Object(expected), "{v}");
}

/// A table that tracked tables point at stays tracked while they do: its
/// untracking would send their links as raw local ids.
#[test]
fn a_table_that_others_point_at_is_not_untracked_under_them() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(
        "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         CREATE TABLE tag_on(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
                             tag_id INTEGER REFERENCES tags(id));
         SELECT lsync_track('tags', 'shared');
         SELECT lsync_track('tag_on', 'shared');",
    )
    .unwrap();
    let e = error_of(&c, "SELECT lsync_untrack('tags')");
    assert!(
        e.contains("'tag_on.tag_id' points at 'tags', which must stay tracked"),
        "{e}"
    );
    assert_eq!(count(&c, "lsync_tables"), 2);
    let _: bool = scalar(&c, "SELECT lsync_untrack('tag_on')");
    let _: bool = scalar(&c, "SELECT lsync_untrack('tags')");
    assert_eq!(count(&c, "lsync_tables"), 0);
}

/// A snapshot ships no local column either: restored on the empty-library
/// path, they take their default, or NULL.
#[test]
fn a_snapshot_carries_no_local_column() {
    let schema = "CREATE TABLE instances(id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE objects(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT,
                             instance_id INTEGER REFERENCES instances(id),
                             thumb BLOB NOT NULL DEFAULT x'00');
        SELECT lsync_track('objects', 'shared', '{\"local_columns\": [\"instance_id\", \"thumb\"]}');";
    let (dir, a, b) = two_libraries(schema);
    a.execute_batch(
        "INSERT INTO instances(name) VALUES ('laptop');
         INSERT INTO objects(uuid, name, instance_id, thumb) VALUES ('O', 'photo', 1, x'aa');",
    )
    .unwrap();
    let snap = dir.path().join("snap.db");
    let _: i64 = a
        .query_row("SELECT lsync_snapshot(?1)", [snap.to_str().unwrap()], |r| {
            r.get(0)
        })
        .unwrap();
    let report: String = b
        .query_row("SELECT lsync_restore(?1)", [snap.to_str().unwrap()], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(report.contains(r#""mode":"empty""#), "{report}");
    assert_eq!(
        query_rows(
            &b,
            "SELECT uuid, name, instance_id, hex(thumb) FROM objects"
        ),
        [["O", "photo", "NULL", "00"]]
    );
    // The source keeps its own.
    assert_eq!(
        query_rows(&a, "SELECT instance_id, hex(thumb) FROM objects"),
        [["1", "AA"]]
    );
}
