//! `lsync_track` / `lsync_untrack`: re-tracking after a schema change,
//! idempotence, mode changes and stopping capture.

use std::collections::BTreeSet;

use lsync_tests::*;

#[test]
fn track_returns_a_summary() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    track_library(&conn);
    let summary: String = scalar(&conn, "SELECT lsync_track('entries', 'device_owned')");
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(v["table"], "entries");
    assert_eq!(v["mode"], "device_owned");
    assert_eq!(v["uuid_column"], "uuid");
    assert_eq!(v["fks"]["parent_id"], "entries");
    assert_eq!(v["fks"]["location_id"], "locations");
    // The example library's FK columns are nullable.
    assert_eq!(v["warnings"], serde_json::json!([]));
    let cols: BTreeSet<String> = serde_json::from_value(v["columns"].clone()).unwrap();
    assert!(
        cols.contains("name") && !cols.contains("id") && !cols.contains("uuid"),
        "{cols:?}"
    );
}

#[test]
fn retrack_after_add_column_captures_the_new_column() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(
        "INSERT INTO files(uuid, name) VALUES ('f', 'a');
         INSERT INTO tags(uuid, name) VALUES ('t', 'a');",
    )
    .unwrap();
    // A pending edit made under the old column list.
    flush(&conn);
    conn.execute_batch("UPDATE tags SET n = 3;").unwrap();
    conn.execute_batch(
        "ALTER TABLE files ADD COLUMN color TEXT;
         ALTER TABLE tags ADD COLUMN color TEXT;
         SELECT lsync_track('files', 'device_owned');
         SELECT lsync_track('tags', 'shared');",
    )
    .unwrap();
    let since = cursor(&conn);
    conn.execute_batch("UPDATE files SET color = 'red'; UPDATE tags SET color = 'blue';")
        .unwrap();
    let got = changes(&conn, since);
    let by_tbl = |t: &str| got.iter().find(|c| c.tbl == t).unwrap().data.clone();
    assert_eq!(
        by_tbl("files"),
        serde_json::json!({"name": "a", "n": null, "color": "red"})
    );
    assert_eq!(by_tbl("tags"), serde_json::json!({"color": "blue"}));
    // The edit from before the ALTER kept its column.
    let t_cols: BTreeSet<String> = changes(&conn, 0)
        .into_iter()
        .filter(|c| c.tbl == "tags")
        .flat_map(|c| c.data_keys())
        .collect();
    assert_eq!(
        t_cols,
        ["color", "n", "name"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let mut row = serde_json::Map::new();
    for c in changes(&conn, 0).into_iter().filter(|c| c.tbl == "tags") {
        row.extend(c.data.as_object().unwrap().clone());
    }
    assert_eq!(
        serde_json::Value::Object(row),
        serde_json::json!({"name": "a", "n": 3, "color": "blue"})
    );
}

#[test]
fn tracking_twice_is_harmless() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(
        "INSERT INTO files(uuid, name) VALUES ('f', 'a');
         INSERT INTO tags(uuid, name) VALUES ('t', 'a');
         UPDATE tags SET n = 1;",
    )
    .unwrap();
    flush(&conn);
    let before = changes(&conn, 0);
    let schema_before = query_rows(
        &conn,
        "SELECT type, name, sql FROM sqlite_schema ORDER BY name",
    );
    let first: String = scalar(&conn, "SELECT lsync_track('files', 'device_owned')");
    let second: String = scalar(&conn, "SELECT lsync_track('files', 'device_owned')");
    assert_eq!(first, second);
    conn.execute_batch("SELECT lsync_track('tags', 'shared');")
        .unwrap();
    assert_eq!(changes(&conn, 0), before);
    assert_eq!(
        query_rows(
            &conn,
            "SELECT type, name, sql FROM sqlite_schema ORDER BY name"
        ),
        schema_before
    );
    // And capture still works exactly once per change.
    let since = cursor(&conn);
    conn.execute("UPDATE files SET n = 2", []).unwrap();
    assert_eq!(changes(&conn, since).len(), 1);
}

#[test]
fn changing_mode_needs_untrack_first() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    let err = error_of(&conn, "SELECT lsync_track('files', 'shared')");
    assert!(err.contains("already tracked as 'device_owned'"), "{err}");
    assert!(err.contains("lsync_untrack"), "{err}");
    let mode: String = scalar(&conn, "SELECT mode FROM lsync_tables WHERE name = 'files'");
    assert_eq!(mode, "device_owned");
    conn.execute_batch("SELECT lsync_untrack('files'); SELECT lsync_track('files', 'shared');")
        .unwrap();
    let mode: String = scalar(&conn, "SELECT mode FROM lsync_tables WHERE name = 'files'");
    assert_eq!(mode, "shared");
}

#[test]
fn untrack_stops_capture() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(
        "INSERT INTO files(uuid, name) VALUES ('f', 'a');
         INSERT INTO tags(uuid, name) VALUES ('t', 'a');
         UPDATE files SET n = 1;",
    )
    .unwrap();
    assert_eq!(scalar::<i64>(&conn, "SELECT lsync_untrack('files')"), 1);
    let tables: BTreeSet<String> = changes(&conn, 0).into_iter().map(|c| c.tbl).collect();
    assert_eq!(tables, BTreeSet::from(["tags".to_owned()]));
    let since = cursor(&conn);
    conn.execute_batch(
        "INSERT INTO files(uuid, name) VALUES ('g', 'b');
         UPDATE files SET n = 2;
         DELETE FROM files WHERE uuid = 'f';",
    )
    .unwrap();
    assert_eq!(changes(&conn, since), vec![]);
    let triggers: i64 = scalar(
        &conn,
        "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'files'",
    );
    assert_eq!(triggers, 0);
    // A connection without the extension may write the table again.
    let plain = open_plain(&dir.db());
    plain
        .execute("INSERT INTO files(uuid, name) VALUES ('h', 'c')", [])
        .unwrap();
    let err = error_of(&conn, "SELECT lsync_untrack('files')");
    assert!(err.contains("not tracked"), "{err}");
}

/// Rows already in the table when it is tracked are captured through the
/// high-water mark, which starts at 0: rows with rowid 0 or below (a root
/// entry with id 0 is common) are never above it, and no trigger saw them.
#[test]
fn rows_with_non_positive_rowids_present_at_track_are_captured() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         INSERT INTO t(id, uuid, name) VALUES (0, 'zero', 'root'), (-3, 'neg', 'n'), (1, 'one', 'a');
         SELECT lsync_track('t', 'shared');",
    )
    .unwrap();
    let pks: BTreeSet<String> = changes(&conn, 0).iter().map(Change::pk_text).collect();
    assert_eq!(
        pks,
        ["neg", "one", "zero"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

/// After `DROP TABLE` (or `ALTER TABLE ... RENAME`) of a tracked table,
/// every flush fails on the missing table, so `lsync_changes` stops working
/// for all tables, with a message that does not say what to do.
#[test]
fn dropping_a_tracked_table_does_not_silently_break_sync() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(
        "INSERT INTO files(uuid, name) VALUES ('f', 'a');
         INSERT INTO tags(uuid, name) VALUES ('t', 'a');
         DROP TABLE files;",
    )
    .unwrap();
    match try_changes(&conn, 0) {
        Ok(all) => assert!(all.iter().any(|c| c.pk_text() == "t"), "{all:?}"),
        Err(e) => assert!(
            e.to_string().contains("lsync_untrack"),
            "the error should tell the user to untrack 'files': {e}"
        ),
    }
}

/// A temp table that shadows a tracked table's name (issue 9): lsync works
/// on the table in `main` all the same. `lsync_track` used to put its
/// triggers and its uuid index on the temp table, so `main.t` kept NULL
/// uuids and its updates and deletes went uncaptured; flush, export and
/// apply read and wrote the temp table.
#[test]
fn a_temp_table_of_the_same_name_never_stands_in_for_the_tracked_table() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, uuid TEXT, name TEXT,
                        parent INTEGER REFERENCES t(id));
         INSERT INTO t(name) VALUES ('a'), ('b');
         CREATE TEMP TABLE t(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, other TEXT);
         INSERT INTO temp.t(id, name) VALUES (1, 'temp'), (70, 'temp');",
    )
    .unwrap();
    let summary: String = scalar(&conn, "SELECT lsync_track('t', 'shared')");
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(v["columns"], serde_json::json!(["name", "parent"]), "{v}");
    assert_eq!(v["fks"]["parent"], "t", "{v}");
    let objects = |schema: &str| {
        query_rows(
            &conn,
            &format!(
                "SELECT type, name FROM {schema}.sqlite_schema
                 WHERE tbl_name = 't' AND name LIKE 'lsync%' ORDER BY name"
            ),
        )
    };
    assert_eq!(
        objects("main"),
        [
            ["trigger", "lsync_del_t"],
            ["trigger", "lsync_ids_t"],
            ["trigger", "lsync_ins_t"],
            ["trigger", "lsync_lnk_t"],
            ["trigger", "lsync_upd_t"],
            ["index", "lsync_uuid_t"],
        ]
        .map(|r| r.map(String::from))
    );
    assert!(objects("temp").is_empty(), "{:?}", objects("temp"));
    let nulls = |schema: &str| -> i64 {
        scalar(
            &conn,
            &format!("SELECT count(*) FROM {schema}.t WHERE uuid IS NULL"),
        )
    };
    assert_eq!((nulls("main"), nulls("temp")), (0, 2));

    // Local writes to main.t are captured; writes to temp.t are not.
    let uuid_of = |name: &str| -> String {
        conn.query_row("SELECT uuid FROM main.t WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let b = uuid_of("b");
    conn.execute_batch(
        "INSERT INTO main.t(name, parent) VALUES ('c', 1);
         UPDATE main.t SET name = 'a2' WHERE name = 'a';
         DELETE FROM main.t WHERE name = 'b';
         UPDATE temp.t SET name = 'temp2';
         INSERT INTO temp.t(name) VALUES ('temp3');",
    )
    .unwrap();
    assert_eq!(nulls("main"), 0);
    let (a, c) = (uuid_of("a2"), uuid_of("c"));
    let by_pk: std::collections::BTreeMap<String, (String, serde_json::Value)> = changes(&conn, 0)
        .into_iter()
        .map(|ch| (ch.pk_text(), (ch.op.clone(), ch.data.clone())))
        .collect();
    assert_eq!(by_pk.len(), 3, "{by_pk:?}");
    assert_eq!(by_pk[&b].0, "delete", "{by_pk:?}");
    assert_eq!(by_pk[&a].1["name"], "a2", "{by_pk:?}");
    assert_eq!(
        by_pk[&c].1["parent"],
        a.as_str(),
        "FK as the uuid: {by_pk:?}"
    );

    // A peer gets exactly main.t; its changes land in main.t here.
    let peer = open(&dir.path().join("peer.db"));
    let library: String = scalar(&conn, "SELECT lsync_library_id()");
    peer.query_row("SELECT lsync_library_id(?1)", [&library], |_| Ok(()))
        .unwrap();
    peer.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, uuid TEXT, name TEXT,
                        parent INTEGER REFERENCES t(id));
         SELECT lsync_track('t', 'shared');",
    )
    .unwrap();
    let sync = |from: &rusqlite::Connection, to: &rusqlite::Connection| {
        let blob: Vec<u8> = scalar(from, "SELECT lsync_changeset(0)");
        to.query_row("SELECT lsync_apply(?1)", [blob], |_| Ok(()))
            .unwrap();
    };
    let rows = |c: &rusqlite::Connection| {
        query_rows(
            c,
            "SELECT x.uuid, x.name, p.uuid FROM main.t x LEFT JOIN main.t p ON p.id = x.parent
             ORDER BY x.uuid",
        )
    };
    sync(&conn, &peer);
    assert_eq!(rows(&peer), rows(&conn));
    peer.execute_batch(
        "INSERT INTO t(name) VALUES ('d');
         UPDATE t SET name = 'a3' WHERE name = 'a2';",
    )
    .unwrap();
    sync(&peer, &conn);
    assert_eq!(rows(&conn), rows(&peer));
    assert_eq!(
        query_rows(&conn, "SELECT id, uuid, name FROM temp.t ORDER BY id"),
        [
            ["1", "NULL", "temp2"],
            ["70", "NULL", "temp2"],
            ["71", "NULL", "temp3"]
        ]
    );
}

/// An FK that names its table in another letter case (`REFERENCES TAGS`
/// for table `tags`, or the same in the `fks` option) is an FK to the
/// tracked table, as it is to SQLite: it travels as the target's uuid. It
/// used to be recorded under the other spelling, match no tracked table,
/// and leave the device as a bare local id.
#[test]
fn an_fk_naming_its_table_in_another_letter_case_travels_as_a_uuid() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    conn.execute_batch(
        "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         CREATE TABLE marks(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
                            tag INTEGER REFERENCES TAGS(id), other INTEGER);
         SELECT lsync_track('tags', 'shared');",
    )
    .unwrap();
    let summary: String = scalar(
        &conn,
        r#"SELECT lsync_track('marks', 'shared', '{"fks": {"other": "Tags"}}')"#,
    );
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        v["fks"],
        serde_json::json!({"other": "tags", "tag": "tags"}),
        "{v}"
    );
    conn.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('T1', 'one');
         INSERT INTO marks(uuid, tag, other) VALUES ('M1', 1, 1);",
    )
    .unwrap();
    let m = changes(&conn, 0)
        .into_iter()
        .find(|c| c.tbl == "marks")
        .unwrap();
    assert_eq!(m.data, serde_json::json!({"tag": "T1", "other": "T1"}));
}

/// The `warnings` of `lsync_track` for a table whose FK columns to `tags`
/// are declared as `cols`, tracked after `tags`.
fn warnings_for(cols: &str, options: &str) -> (TempDir, rusqlite::Connection, serde_json::Value) {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    conn.execute_batch(&format!(
        "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         CREATE TABLE tag_on_object(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, obj TEXT, {cols});
         SELECT lsync_track('tags', 'shared');"
    ))
    .unwrap();
    let summary: String = scalar(
        &conn,
        &format!("SELECT lsync_track('tag_on_object', 'shared', '{options}')"),
    );
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    (dir, conn, v["warnings"].clone())
}

/// A NOT NULL FK column cannot hold the NULL that stands for a link whose
/// target has not arrived (or was deleted on another device), so its table
/// is tracked with a warning that says what will happen.
#[test]
fn a_not_null_fk_with_no_on_delete_action_is_tracked_with_a_warning() {
    let (_dir, conn, w) = warnings_for("tag_id INTEGER NOT NULL REFERENCES tags(id)", "{}");
    assert_eq!(w.as_array().unwrap().len(), 1, "{w}");
    let w = &w[0];
    assert_eq!(w["table"], "tag_on_object");
    assert_eq!(w["column"], "tag_id");
    assert_eq!(w["target"], "tags");
    assert_eq!(w["on_delete"], "NO ACTION");
    let msg = w["message"].as_str().unwrap();
    for part in [
        "tag_on_object.tag_id is NOT NULL",
        "FK to tags has no ON DELETE action",
        "is deleted, here or on another device, is removed with it on every replica (delete-wins)",
        "has not arrived yet waits in the quarantine (lsync_conflicts)",
    ] {
        assert!(msg.contains(part), "{msg}");
    }
    // A warning, not a refusal: the table is tracked and captured.
    conn.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('T', 'red');
         INSERT INTO tag_on_object(uuid, tag_id, obj) VALUES ('O', 1, 'x');",
    )
    .unwrap();
    let o = changes(&conn, 0)
        .into_iter()
        .find(|c| c.tbl == "tag_on_object")
        .unwrap();
    assert_eq!(o.data["tag_id"], "T");
}

/// Which FK columns warn: NOT NULL ones whose ON DELETE action leaves a
/// dependant of a deleted target with nowhere to go.
#[test]
fn which_fk_columns_warn() {
    for (col, on_delete) in [
        (
            "INTEGER NOT NULL REFERENCES tags(id) ON DELETE RESTRICT",
            Some("RESTRICT"),
        ),
        (
            "INTEGER NOT NULL REFERENCES tags(id) ON DELETE SET NULL",
            Some("SET NULL"),
        ),
        (
            "INTEGER NOT NULL REFERENCES tags ON DELETE SET DEFAULT",
            Some("SET DEFAULT"),
        ),
        ("INTEGER REFERENCES tags(id)", None),
        ("INTEGER REFERENCES tags(id) ON DELETE SET NULL", None),
        (
            "INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE",
            None,
        ),
        (
            "INTEGER NOT NULL DEFAULT 1 REFERENCES tags ON DELETE SET DEFAULT",
            None,
        ),
    ] {
        let (_dir, _conn, w) = warnings_for(&format!("tag_id {col}"), "{}");
        match on_delete {
            Some(action) => {
                assert_eq!(w.as_array().unwrap().len(), 1, "{col}: {w}");
                assert_eq!(w[0]["on_delete"], action, "{col}: {w}");
            }
            None => assert_eq!(w, serde_json::json!([]), "{col}"),
        }
    }
}

/// A link named by the `fks` option has no declared FK, so no ON DELETE
/// action either.
#[test]
fn a_not_null_link_from_the_fks_option_warns() {
    let (_dir, _conn, w) =
        warnings_for("tag_id INTEGER NOT NULL", r#"{"fks": {"tag_id": "tags"}}"#);
    assert_eq!(w.as_array().unwrap().len(), 1, "{w}");
    assert_eq!(w[0]["column"], "tag_id");
    assert_eq!(w[0]["on_delete"], serde_json::Value::Null);
    let msg = w[0]["message"].as_str().unwrap();
    assert!(msg.contains("no declared FK"), "{msg}");
}

/// A link travels as a uuid, so its target is tracked first (issue 12:
/// tracking the referrer first is refused). The warning comes with the
/// referrer, and again when either table is tracked again.
#[test]
fn the_warning_comes_when_the_second_table_is_tracked() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    conn.execute_batch(
        "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         CREATE TABLE tag_on_object(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
                                    tag_id INTEGER NOT NULL REFERENCES tags(id));",
    )
    .unwrap();
    let warnings = |sql: &str| -> serde_json::Value {
        let s: String = scalar(&conn, sql);
        serde_json::from_str::<serde_json::Value>(&s).unwrap()["warnings"].clone()
    };
    let refused = error_of(&conn, "SELECT lsync_track('tag_on_object', 'shared')");
    assert!(
        refused.contains("'tags', which is not tracked"),
        "{refused}"
    );
    let first = warnings("SELECT lsync_track('tags', 'shared')");
    assert_eq!(first, serde_json::json!([]));
    let second = warnings("SELECT lsync_track('tag_on_object', 'shared')");
    assert_eq!(second.as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second[0]["table"], "tag_on_object");
    assert_eq!(second[0]["column"], "tag_id");
    assert_eq!(second[0]["target"], "tags");
    assert_eq!(warnings("SELECT lsync_track('tags', 'shared')"), second);
}
