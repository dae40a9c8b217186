//! Snapshots (issue 5): `lsync_snapshot` writes a standalone file of the
//! tracked tables and their sync metadata; `lsync_restore` imports one,
//! page-level into an empty library, as a merge into one that has data.
//! Every test runs the real `liblsync.so` on database files in WAL mode,
//! with the example library schema (locations and entries device-owned,
//! tags and tag_assignments shared; `devices` local).

use std::path::{Path, PathBuf};

use lsync_tests::*;
use rusqlite::Connection;
use serde_json::Value as Json;

// ---------------------------------------------------------------- helpers

/// A tracked library database at `dir/name.db`, joined to `library` if given.
fn library(dir: &TempDir, name: &str, library: Option<&str>) -> (PathBuf, Connection) {
    let path = dir.path().join(format!("{name}.db"));
    let c = open(&path);
    track_library(&c);
    if let Some(l) = library {
        join_library(&c, l);
    }
    (path, c)
}

fn snapshot(c: &Connection, path: &Path) -> i64 {
    c.query_row("SELECT lsync_snapshot(?1)", [path.to_str().unwrap()], |r| {
        r.get(0)
    })
    .unwrap_or_else(|e| panic!("lsync_snapshot: {e}"))
}

fn restore(c: &Connection, path: &Path) -> Json {
    let s: String = c
        .query_row("SELECT lsync_restore(?1)", [path.to_str().unwrap()], |r| {
            r.get(0)
        })
        .unwrap_or_else(|e| panic!("lsync_restore: {e}"));
    serde_json::from_str(&s).unwrap()
}

fn restore_error(c: &Connection, path: &Path) -> String {
    error_of(
        c,
        &format!(
            "SELECT lsync_restore('{}')",
            path.to_str().unwrap().replace('\'', "''")
        ),
    )
}

/// Everything after `since` from `from`, applied at `to`; returns the new cursor.
fn catch_up(from: &Connection, to: &Connection, since: i64) -> Json {
    let blob: Vec<u8> = from
        .query_row("SELECT lsync_changeset(?1)", [since], |r| r.get(0))
        .expect("lsync_changeset");
    let s: String = to
        .query_row("SELECT lsync_apply(?1)", [&blob], |r| r.get(0))
        .unwrap_or_else(|e| panic!("lsync_apply: {e}"));
    serde_json::from_str(&s).unwrap()
}

/// `c`'s watermark for `peer`: its cursor applied here.
fn watermark(c: &Connection, peer: &Connection) -> i64 {
    c.query_row(
        "SELECT recv_cursor FROM lsync_peers WHERE device_id = ?1",
        [device_id(peer)],
        |r| r.get(0),
    )
    .unwrap()
}

/// The tracked tables, by uuid, with FKs as the target uuids: comparable
/// across databases whatever their local ids.
fn content(c: &Connection) -> Vec<Vec<String>> {
    query_rows(
        c,
        "SELECT 'loc', uuid, path, name, NULL FROM locations
         UNION ALL SELECT 'ent', e.uuid, e.name, p.uuid, l.uuid FROM entries e
           LEFT JOIN entries p ON p.id = e.parent_id LEFT JOIN locations l ON l.id = e.location_id
         UNION ALL SELECT 'tag', uuid, name, color, NULL FROM tags
         UNION ALL SELECT 'ta', a.uuid, t.uuid, e.uuid, a.created_at FROM tag_assignments a
           LEFT JOIN tags t ON t.id = a.tag_id LEFT JOIN entries e ON e.id = a.entry_id
         ORDER BY 1, 2",
    )
}

/// The tracked tables exactly as stored, local ids included.
fn raw(c: &Connection) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for t in ["locations", "entries", "tags", "tag_assignments"] {
        out.extend(query_rows(
            c,
            &format!("SELECT '{t}', * FROM {t} ORDER BY id"),
        ));
    }
    out
}

/// A source with a location, a small tree of entries, tags, assignments and
/// a local `devices` row.
fn seed(c: &Connection) {
    c.execute_batch(
        "INSERT INTO devices(name, os) VALUES ('laptop', 'linux');
         INSERT INTO locations(path, name) VALUES ('/home', 'home');
         INSERT INTO entries(name, location_id) VALUES ('root', 1);
         INSERT INTO entries(name, parent_id, location_id) VALUES ('a', 1, 1), ('b', 1, 1), ('c', 2, 1);
         INSERT INTO tags(name, color) VALUES ('red', '#f00'), ('blue', '#00f');
         INSERT INTO tag_assignments(tag_id, entry_id) VALUES (1, 2), (2, 4);",
    )
    .unwrap();
}

/// A seeded source and its snapshot at `dir/snap.db`.
fn seeded_snapshot(dir: &TempDir) -> (Connection, PathBuf) {
    let (_, src) = library(dir, "src", None);
    seed(&src);
    let snap = dir.path().join("snap.db");
    snapshot(&src, &snap);
    (src, snap)
}

// ---------------------------------------------------------------- tests

#[test]
fn restore_into_an_empty_library_is_identical_and_keeps_the_device_id() {
    let dir = TempDir::new();
    let (_, src) = library(&dir, "src", None);
    seed(&src);
    let snap = dir.path().join("snap.db");
    let bytes = snapshot(&src, &snap);
    assert_eq!(bytes as u64, std::fs::metadata(&snap).unwrap().len());

    let (dst_path, dst) = library(&dir, "dst", Some(&library_id(&src)));
    dst.execute("INSERT INTO devices(name) VALUES ('phone')", [])
        .unwrap();
    // Another connection (a replicator, say) has the database open.
    let other = open(&dst_path);
    assert_eq!(count(&other, "entries"), 0);
    let me = device_id(&dst);
    let report = restore(&dst, &snap);
    assert_eq!(
        count(&other, "entries"),
        4,
        "other connections see the import"
    );
    assert_eq!(report["mode"], "empty", "{report}");
    assert_eq!(report["rows"], 9);
    assert_eq!(report["source_device"], device_id(&src));
    assert_eq!(report["cursor"].as_i64().unwrap(), cursor(&src));
    assert_eq!(report["tables"]["entries"], 4);

    assert_eq!(raw(&dst), raw(&src), "rowids, uuids and FKs are identical");
    assert_eq!(
        device_id(&dst),
        me,
        "the restored database keeps its own device id"
    );
    assert_ne!(device_id(&dst), device_id(&src));
    assert_eq!(
        query_rows(&dst, "SELECT name FROM devices"),
        [["phone"]],
        "local tables are this database's own"
    );
    let mode: String = scalar(&dst, "PRAGMA journal_mode");
    assert_eq!(mode, "wal");
    let watermark = watermark(&dst, &src);
    assert_eq!(watermark, cursor(&src));
}

#[test]
fn the_restored_library_continues_by_changesets() {
    let dir = TempDir::new();
    let (_, src) = library(&dir, "src", None);
    seed(&src);
    // A deleted row: its tombstone travels in the snapshot.
    let gone: String = scalar(&src, "SELECT uuid FROM entries WHERE name = 'b'");
    let before_delete: Vec<u8> = src
        .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
        .unwrap();
    src.execute("DELETE FROM entries WHERE name = 'b'", [])
        .unwrap();
    let snap = dir.path().join("snap.db");
    snapshot(&src, &snap);

    // Written after the snapshot: they must arrive by catch-up, once.
    src.execute_batch(
        "INSERT INTO entries(name, parent_id, location_id) VALUES ('d', 1, 1);
         UPDATE entries SET name = 'a2' WHERE name = 'a';
         UPDATE tags SET color = '#e00' WHERE name = 'red';
         DELETE FROM tag_assignments WHERE entry_id = 4;
         DELETE FROM entries WHERE name = 'c';
         INSERT INTO tags(name) VALUES ('green');",
    )
    .unwrap();

    let (_, dst) = library(&dir, "dst", Some(&library_id(&src)));
    let report = restore(&dst, &snap);
    assert_eq!(report["mode"], "empty");
    let since = report["cursor"].as_i64().unwrap();
    let r = catch_up(&src, &dst, since);
    assert!(r["applied"].as_i64().unwrap() >= 6, "{r}");
    assert_eq!(content(&dst), content(&src));
    for t in ["locations", "entries", "tags", "tag_assignments"] {
        assert_eq!(count(&dst, t), count(&src, t), "{t}: nothing duplicated");
    }

    // The tombstone from the snapshot keeps an old insert from coming back.
    let s: String = dst
        .query_row("SELECT lsync_apply(?1)", [&before_delete], |r| r.get(0))
        .unwrap();
    let old: Json = serde_json::from_str(&s).unwrap();
    assert!(old["stale"].as_i64().unwrap() > 0, "{old}");
    let resurrected: i64 = dst
        .query_row(
            "SELECT count(*) FROM entries WHERE uuid = ?1",
            [&gone],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(resurrected, 0, "a deleted row is not resurrected");
    assert_eq!(content(&dst), content(&src));

    // The restored database writes as itself, and its changes reach the source.
    dst.execute_batch(
        "INSERT INTO locations(path) VALUES ('/phone');
         UPDATE tags SET color = '#0f0' WHERE name = 'green';",
    )
    .unwrap();
    let owner: String = dst
        .query_row(
            "SELECT origin FROM lsync_changes(0) WHERE tbl = 'locations' AND data LIKE '%/phone%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(owner, device_id(&dst));
    catch_up(&dst, &src, 0);
    assert_eq!(content(&dst), content(&src));
    assert!(error_of(&dst, "UPDATE entries SET size = 1 WHERE name = 'root'").contains("owned by"));
}

#[test]
fn writes_between_the_fold_and_the_copy_arrive_by_catch_up() {
    testing_mode();
    let dir = TempDir::new();
    let (_, src) = library(&dir, "src", None);
    seed(&src);
    flush(&src);
    // Left pending (no fold): an insert above the mark, an update, a delete.
    src.execute_batch(
        "UPDATE lsync_config SET value = 1 WHERE key = 'hlc';
         INSERT INTO lsync_config(key, value) VALUES ('test_snapshot_no_flush', 1);
         INSERT INTO entries(name, parent_id, location_id) VALUES ('late', 1, 1);
         INSERT INTO tag_assignments(tag_id, entry_id) VALUES (1, 5);
         UPDATE tags SET color = '#e00' WHERE name = 'red';
         DELETE FROM tag_assignments WHERE entry_id = 4;
         DELETE FROM entries WHERE name = 'c';",
    )
    .unwrap();
    let snap = dir.path().join("snap.db");
    snapshot(&src, &snap);
    let s = Connection::open(&snap).unwrap();
    assert_eq!(
        count(&s, "entries"),
        3,
        "the unfolded insert is left out, the delete is in"
    );
    assert_eq!(count(&s, "lsync_dirty") + count(&s, "lsync_deleted"), 0);
    let pending: i64 = scalar(&s, "SELECT count(*) FROM lsync_deferred");
    assert_eq!(pending, 0, "nothing points at the left-out row");
    // The delete's rowid is no longer covered, so a later local insert there is free.
    let covered: i64 = scalar(
        &s,
        "SELECT count(*) FROM lsync_clock WHERE tbl = (SELECT id FROM lsync_tables WHERE name = 'entries')
           AND col IS NULL AND 4 BETWEEN lo AND hi",
    );
    assert_eq!(covered, 0);
    drop(s);

    let (_, dst) = library(&dir, "dst", Some(&library_id(&src)));
    let since = restore(&dst, &snap)["cursor"].as_i64().unwrap();
    src.execute(
        "DELETE FROM lsync_config WHERE key = 'test_snapshot_no_flush'",
        [],
    )
    .unwrap();
    catch_up(&src, &dst, since);
    assert_eq!(content(&dst), content(&src));
    for t in ["entries", "tags", "tag_assignments"] {
        assert_eq!(count(&dst, t), count(&src, t), "{t}");
    }
    let color: String = scalar(&dst, "SELECT color FROM tags WHERE name = 'red'");
    assert_eq!(color, "#e00", "the update made after the fold arrives");
}

#[test]
fn merge_into_a_library_that_has_rows() {
    let dir = TempDir::new();
    let (_, src) = library(&dir, "src", None);
    seed(&src);
    let (_, dst) = library(&dir, "dst", Some(&library_id(&src)));
    // dst has its own rows, and knows the shared tag 'red' already.
    dst.execute_batch(
        "INSERT INTO locations(path) VALUES ('/phone');
         INSERT INTO entries(name, location_id) VALUES ('mine', 1), ('mine2', 1);
         INSERT INTO tags(name) VALUES ('local-tag');",
    )
    .unwrap();
    catch_up(&src, &dst, 0);
    // Per column, last writer wins: dst's newer color, src's newer name.
    // (HLCs are milliseconds: a pause orders edits made in two databases.)
    let later = || std::thread::sleep(std::time::Duration::from_millis(3));
    src.execute("UPDATE tags SET color = 'src-color' WHERE name = 'red'", [])
        .unwrap();
    flush(&src); // edits of one row folded together share the newest HLC
    later();
    dst.execute("UPDATE tags SET color = 'dst-color' WHERE name = 'red'", [])
        .unwrap();
    later();
    src.execute("UPDATE tags SET name = 'crimson' WHERE name = 'red'", [])
        .unwrap();
    src.execute_batch(
        "INSERT INTO entries(name, parent_id, location_id) VALUES ('new', 2, 1);
         INSERT INTO tag_assignments(tag_id, entry_id) VALUES (1, 5);",
    )
    .unwrap();
    let snap = dir.path().join("snap.db");
    snapshot(&src, &snap);
    let mine_before = query_rows(
        &dst,
        "SELECT * FROM entries WHERE name LIKE 'mine%' ORDER BY id",
    );

    let report = restore(&dst, &snap);
    assert_eq!(report["mode"], "merge", "{report}");
    assert!(!report["why_not_empty"].as_str().unwrap().is_empty());
    assert_eq!(
        query_rows(
            &dst,
            "SELECT name, color FROM tags WHERE name IN ('crimson', 'red')"
        ),
        [["crimson", "dst-color"]]
    );
    assert_eq!(
        query_rows(
            &dst,
            "SELECT * FROM entries WHERE name LIKE 'mine%' ORDER BY id"
        ),
        mine_before,
        "local rows are kept"
    );
    assert_eq!(count(&dst, "tags"), 3);
    assert_eq!(count(&dst, "entries"), 5 + 2);
    // FKs mapped through uuids: the assignment points at dst's own rowid of 'new'.
    let (tag, entry): (String, String) = dst
        .query_row(
            "SELECT t.name, e.name FROM tag_assignments a JOIN tags t ON t.id = a.tag_id
             JOIN entries e ON e.id = a.entry_id WHERE e.name = 'new'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((tag.as_str(), entry.as_str()), ("crimson", "new"));
    let parent: String = scalar(
        &dst,
        "SELECT p.name FROM entries e JOIN entries p ON p.id = e.parent_id WHERE e.name = 'new'",
    );
    assert_eq!(parent, "a");
    // Device-owned rows keep their owner: dst may not change src's rows.
    assert!(error_of(&dst, "UPDATE entries SET size = 1 WHERE name = 'new'").contains("owned by"));
    let watermark = watermark(&dst, &src);
    assert_eq!(watermark, report["cursor"].as_i64().unwrap());

    // Both directions converge from here.
    catch_up(&src, &dst, watermark);
    catch_up(&dst, &src, 0);
    assert_eq!(content(&dst), content(&src));
    assert_ne!(device_id(&dst), device_id(&src));
}

#[test]
fn a_snapshot_of_one_owner_holds_its_rows_and_defers_links_to_others() {
    let dir = TempDir::new();
    let (_, a) = library(&dir, "a", None);
    let (_, b) = library(&dir, "b", Some(&library_id(&a)));
    b.execute_batch(
        "INSERT INTO locations(path) VALUES ('/b');
         INSERT INTO entries(name, location_id) VALUES ('b-root', 1);
         INSERT INTO entries(name, parent_id, location_id) VALUES ('b-child', 1, 1);",
    )
    .unwrap();
    catch_up(&b, &a, 0);
    seed(&a);
    // A shared assignment pointing at A's entry, and one at B's.
    a.execute_batch(
        "INSERT INTO tag_assignments(tag_id, entry_id)
           SELECT 1, id FROM entries WHERE name IN ('root', 'b-child');",
    )
    .unwrap();
    let snap = dir.path().join("b-only.db");
    let owner = device_id(&b);
    a.query_row(
        "SELECT lsync_snapshot(?1, ?2)",
        [snap.to_str().unwrap(), owner.as_str()],
        |r| r.get::<_, i64>(0),
    )
    .unwrap();

    let s = Connection::open(&snap).unwrap();
    assert_eq!(
        query_rows(&s, "SELECT name FROM entries ORDER BY name"),
        [["b-child"], ["b-root"]]
    );
    assert_eq!(query_rows(&s, "SELECT path FROM locations"), [["/b"]]);
    assert_eq!(count(&s, "tags"), 2, "shared tables are whole");
    assert_eq!(count(&s, "tag_assignments"), 4);
    let owners = query_rows(
        &s,
        "SELECT DISTINCT d.id FROM lsync_clock c JOIN lsync_devices d ON d.idx = c.origin
         WHERE c.tbl IN (SELECT id FROM lsync_tables WHERE mode = 'device_owned')",
    );
    assert_eq!(owners, [[owner.clone()]]);
    // The assignment to A's 'root' is a deferred link, never a dangling id.
    let root: String = scalar(&a, "SELECT uuid FROM entries WHERE name = 'root'");
    let dangling: i64 = scalar(
        &s,
        "SELECT count(*) FROM tag_assignments WHERE entry_id IS NOT NULL
           AND entry_id NOT IN (SELECT id FROM entries)",
    );
    assert_eq!(dangling, 0);
    let links = query_rows(&s, "SELECT col, target, target_uuid FROM lsync_pending");
    assert!(
        links.contains(&vec!["entry_id".into(), "entries".into(), root.clone()]),
        "{links:?}"
    );
    assert_eq!(count(&s, "lsync_peers"), 0);
    drop(s);

    // Restored into a fresh library: no watermark moves; catch-up completes the link.
    let (_, c) = library(&dir, "c", Some(&library_id(&a)));
    let report = restore(&c, &snap);
    assert_eq!(report["owner"], owner.as_str());
    assert_eq!(report["cursor"], 0);
    // Links to A's 'root' and 'a' (seed's assignment to entry 4).
    assert_eq!(report["deferred"], 2, "{report}");
    assert_eq!(count(&c, "lsync_peers"), 0);
    catch_up(&a, &c, 0);
    assert_eq!(content(&c), content(&a));
    assert_eq!(count(&c, "lsync_deferred"), 0, "links completed");
}

/// Everything a failed call must leave as it was.
fn whole(c: &Connection) -> Vec<Vec<String>> {
    let mut out = raw(c);
    for t in [
        "lsync_config",
        "lsync_clock",
        "lsync_devices",
        "lsync_peers",
        "lsync_deferred",
        "lsync_tables",
        "devices",
    ] {
        out.extend(query_rows(
            c,
            &format!("SELECT '{t}', * FROM {t} ORDER BY 2, 3"),
        ));
    }
    out
}

#[test]
fn bad_snapshots_are_refused_and_nothing_is_written() {
    let dir = TempDir::new();
    let (src, snap) = seeded_snapshot(&dir);

    let (_, dst) = library(&dir, "dst", Some(&library_id(&src)));
    dst.execute("INSERT INTO tags(name) VALUES ('mine')", [])
        .unwrap();
    flush(&dst);
    let before = whole(&dst);

    // Not a snapshot: an ordinary database, and a file that is not one.
    let plain = dir.path().join("plain.db");
    Connection::open(&plain)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    let e = restore_error(&dst, &plain);
    assert!(e.contains("is not an lsync snapshot"), "{e}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not a database at all ........").unwrap();
    let e = restore_error(&dst, &text);
    assert!(e.contains("is not an lsync snapshot"), "{e}");
    let e = restore_error(&dst, &dir.path().join("missing.db"));
    assert!(e.contains("no such file"), "{e}");
    // A library database that is not a snapshot.
    let (other_path, other) = library(&dir, "other", None);
    other
        .execute("INSERT INTO tags(name) VALUES ('x')", [])
        .unwrap();
    let e = restore_error(&dst, &other_path);
    assert!(e.contains("is not an lsync snapshot"), "{e}");
    // Another library's snapshot.
    let other_snap = dir.path().join("other-snap.db");
    snapshot(&other, &other_snap);
    let e = restore_error(&dst, &other_snap);
    assert!(e.contains("belongs to library"), "{e}");
    // A schema mismatch: one more tracked table here.
    let (_, wider) = library(&dir, "wider", Some(&library_id(&src)));
    wider
        .execute_batch(
            "CREATE TABLE notes(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, body TEXT);
             SELECT lsync_track('notes', 'shared');",
        )
        .unwrap();
    let wider_before = whole(&wider);
    let e = restore_error(&wider, &snap);
    assert!(e.contains("schema mismatch") && e.contains("notes"), "{e}");
    assert_eq!(whole(&wider), wider_before);
    assert_eq!(whole(&dst), before, "nothing was written");

    // lsync_snapshot refuses an existing path and an unknown owner.
    let e = error_of(
        &src,
        &format!("SELECT lsync_snapshot('{}')", snap.display()),
    );
    assert!(e.contains("already exists"), "{e}");
    let fresh = dir.path().join("fresh.db");
    let e = error_of(
        &src,
        &format!(
            "SELECT lsync_snapshot('{}', '{}')",
            fresh.display(),
            uuid::Uuid::new_v4()
        ),
    );
    assert!(e.contains("is not known here"), "{e}");
    assert!(!fresh.exists(), "nothing was written");
    src.execute_batch("BEGIN").unwrap();
    let e = error_of(
        &src,
        &format!("SELECT lsync_snapshot('{}')", fresh.display()),
    );
    assert!(e.contains("outside a transaction"), "{e}");
    src.execute_batch("ROLLBACK").unwrap();
    assert!(!fresh.exists());
}

#[test]
fn a_restore_that_fails_half_way_changes_nothing() {
    let dir = TempDir::new();
    let (_, src) = library(&dir, "src", None);
    // More than one batch (10,000 changes) before the change that fails.
    src.execute_batch(
        "INSERT INTO locations(path) VALUES ('/big');
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 15000)
         INSERT INTO entries(name, location_id) SELECT 'e' || i, 1 FROM n;",
    )
    .unwrap();
    flush(&src);
    src.execute("INSERT INTO tags(name) VALUES ('dup')", [])
        .unwrap();
    let snap = dir.path().join("snap.db");
    snapshot(&src, &snap);

    // Here, an app trigger on tags writes to a table the app has dropped:
    // every insert into tags fails, and not for a constraint (a refused
    // change would be quarantined, see conflicts.rs).
    let (_, dst) = library(&dir, "dst", Some(&library_id(&src)));
    dst.execute_batch(
        "CREATE TABLE audit(name TEXT);
         CREATE TRIGGER tags_audit AFTER INSERT ON tags BEGIN
           INSERT INTO audit VALUES (NEW.name);
         END;
         DROP TABLE audit;
         INSERT INTO locations(path) VALUES ('/mine');",
    )
    .unwrap();
    let before = whole(&dst);
    let e = restore_error(&dst, &snap);
    assert!(
        e.contains("no such table") && e.contains("nothing was restored"),
        "{e}"
    );
    assert_eq!(
        whole(&dst),
        before,
        "the first batches were rolled back too"
    );
    assert_eq!(count(&dst, "entries"), 0);
}

#[test]
fn a_snapshot_holds_nothing_private() {
    let dir = TempDir::new();
    let (_, src) = library(&dir, "src", None);
    seed(&src);
    let secret = "secret-laptop-serial-4711";
    src.execute_batch(&format!(
        "INSERT INTO devices(name, os) VALUES ('{secret}', 'x');
         CREATE INDEX devices_os ON devices(os);
         CREATE VIEW device_names AS SELECT name FROM devices;
         CREATE TABLE audit(msg TEXT);
         CREATE TRIGGER audit_tags AFTER INSERT ON devices BEGIN INSERT INTO audit VALUES (NEW.name); END;
         INSERT INTO lsync_peers(device_id, addr, recv_cursor, last_error)
           VALUES ('01a20000-0000-7000-8000-000000000001', '10.0.0.7:4711', 3, 'oops');
         UPDATE lsync_config SET value = 99000 WHERE key = 'max_drift_ms';"
    ))
    .unwrap();
    let snap = dir.path().join("snap.db");
    snapshot(&src, &snap);

    let s = Connection::open(&snap).unwrap();
    let objects = query_rows(
        &s,
        "SELECT name FROM sqlite_schema WHERE name NOT LIKE 'lsync%' AND name NOT LIKE 'sqlite%'
         ORDER BY 1",
    );
    let names: Vec<&str> = objects.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "entries",
            "entries_location",
            "entries_parent",
            "locations",
            "tag_assignments",
            "tag_assignments_entry",
            "tags"
        ]
    );
    let keys = query_rows(&s, "SELECT key FROM lsync_config ORDER BY 1");
    let keys: Vec<&str> = keys.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        keys,
        [
            "hlc",
            "library_id",
            "library_locked",
            "next_seq",
            "schema_version",
            "snapshot_created_ms",
            "snapshot_cursor",
            "snapshot_device",
            "snapshot_rows"
        ]
    );
    assert_eq!(
        query_rows(
            &s,
            "SELECT device_id, addr, recv_cursor, acked_cursor, last_error FROM lsync_peers"
        ),
        [[
            "01a20000-0000-7000-8000-000000000001",
            "NULL",
            "3",
            "0",
            "NULL"
        ]]
    );
    let journal: String = scalar(&s, "PRAGMA journal_mode");
    assert_eq!(journal, "delete", "a self-contained file");
    drop(s);
    let bytes = std::fs::read(&snap).unwrap();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "no trace of a local row in the file, free pages included"
    );
    assert!(!bytes.windows(12).any(|w| w == b"10.0.0.7:471"));
}

#[test]
fn a_snapshot_taken_while_another_connection_writes_is_consistent() {
    let dir = TempDir::new();
    let (src_path, src) = library(&dir, "src", None);
    seed(&src);
    src.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO entries(name, parent_id, location_id) SELECT 'bulk' || i, 1, 1 FROM n;",
    )
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let w = open(&src_path);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                w.execute_batch(&format!(
                    "INSERT INTO tags(name, color) VALUES ('t{i}', 'c');
                     UPDATE tags SET color = 'c{i}' WHERE name = 'red';
                     UPDATE entries SET size = {i} WHERE id = 1 + {i} % 100;
                     DELETE FROM tags WHERE name = 't{}';",
                    i - 1
                ))
                .unwrap();
            }
            i
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let snaps: Vec<PathBuf> = (0..3)
        .map(|k| {
            let p = dir.path().join(format!("snap{k}.db"));
            snapshot(&src, &p);
            p
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    for (k, snap) in snaps.iter().enumerate() {
        let (_, dst) = library(&dir, &format!("dst{k}"), Some(&library_id(&src)));
        let since = restore(&dst, snap)["cursor"].as_i64().unwrap();
        catch_up(&src, &dst, since);
        assert_eq!(content(&dst), content(&src), "snapshot {k}");
        for t in ["entries", "tags"] {
            assert_eq!(count(&dst, t), count(&src, t), "snapshot {k}: {t}");
        }
        assert_eq!(
            query_rows(&dst, "SELECT id, size FROM entries ORDER BY id"),
            query_rows(&src, "SELECT id, size FROM entries ORDER BY id")
        );
    }
}

#[test]
fn a_restore_inside_a_transaction_merges_and_rolls_back_with_it() {
    let dir = TempDir::new();
    let (src, snap) = seeded_snapshot(&dir);
    let (_, dst) = library(&dir, "dst", Some(&library_id(&src)));

    dst.execute_batch("BEGIN").unwrap();
    let report = restore(&dst, &snap);
    assert_eq!(report["mode"], "merge", "{report}");
    assert_eq!(report["why_not_empty"], "called inside a transaction");
    assert_eq!(count(&dst, "entries"), 4);
    dst.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        count(&dst, "entries"),
        0,
        "the caller's rollback takes it back"
    );
    assert_eq!(count(&dst, "lsync_peers"), 0);

    dst.execute_batch("BEGIN").unwrap();
    restore(&dst, &snap);
    dst.execute_batch("COMMIT").unwrap();
    assert_eq!(content(&dst), content(&src));
    assert_eq!(watermark(&dst, &src), cursor(&src));
}

/// `{"consume": true}`: the file is scratch. The import works in it instead
/// of a copy (the replicator's downloads) and deletes it after a restore by
/// either path; a refused restore leaves it, and bad options are refused.
#[test]
fn a_consumed_snapshot_restores_the_same_and_is_deleted() {
    let dir = TempDir::new();
    let (src, snap) = seeded_snapshot(&dir);
    let consume = |c: &Connection, file: &Path| -> Json {
        let s: String = c
            .query_row(
                r#"SELECT lsync_restore(?1, '{"consume": true}')"#,
                [file.to_str().unwrap()],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("lsync_restore: {e}"));
        serde_json::from_str(&s).unwrap()
    };
    let scratch = |name: &str| {
        let p = dir.path().join(name);
        std::fs::copy(&snap, &p).unwrap();
        p
    };

    // Refused: another library. The file stays as it was.
    let (_, stranger) = library(&dir, "stranger", None);
    let file = scratch("refused.db");
    let err = error_of(
        &stranger,
        &format!(
            r#"SELECT lsync_restore('{}', '{{"consume": true}}')"#,
            file.display()
        ),
    );
    assert!(err.contains("belongs to library"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(&snap).unwrap());

    // An unsynced snapshot ({"sync": false}, the replicator's) is the same file.
    let unsynced = dir.path().join("unsynced.db");
    src.query_row(
        r#"SELECT lsync_snapshot(?1, NULL, '{"sync": false}')"#,
        [unsynced.to_str().unwrap()],
        |_| Ok(()),
    )
    .unwrap();
    let (_, from_unsynced) = library(&dir, "from_unsynced", Some(&library_id(&src)));
    assert_eq!(restore(&from_unsynced, &unsynced)["mode"], "empty");
    assert_eq!(raw(&from_unsynced), raw(&src));

    // The page-level path: the same database as from a copy.
    let lib = library_id(&src);
    let (_, by_copy) = library(&dir, "by_copy", Some(&lib));
    let (_, consumed) = library(&dir, "consumed", Some(&lib));
    for c in [&by_copy, &consumed] {
        c.execute("INSERT INTO devices(name) VALUES ('phone')", [])
            .unwrap();
    }
    assert_eq!(restore(&by_copy, &snap)["mode"], "empty");
    let file = scratch("empty.db");
    let report = consume(&consumed, &file);
    assert_eq!(report["mode"], "empty", "{report}");
    assert!(!file.exists(), "the consumed file is deleted");
    assert!(snap.exists(), "a restore without consume leaves its file");
    assert_eq!(raw(&consumed), raw(&src));
    assert_eq!(
        query_rows(&consumed, "SELECT name FROM devices"),
        [["phone"]],
        "local tables are this database's own"
    );
    assert_eq!(watermark(&consumed, &src), cursor(&src));

    // The merge path deletes it too.
    let file = scratch("merge.db");
    let report = consume(&consumed, &file);
    assert_eq!(report["mode"], "merge", "{report}");
    assert!(!file.exists());
    assert_eq!(raw(&consumed), raw(&src));

    for bad in [r#"{"consume": 1}"#, r#"{"move": true}"#, "not json"] {
        let err = error_of(
            &consumed,
            &format!("SELECT lsync_restore('{}', '{bad}')", snap.display()),
        );
        assert!(
            err.contains("bad options") && err.contains("nothing was done"),
            "{bad}: {err}"
        );
    }
}

/// The number of entries in the database file alone, without its WAL: what
/// is there once a checkpoint copied it.
fn entries_in_file(dir: &TempDir, db: &Path) -> i64 {
    let copy = dir.path().join("file-only.db");
    std::fs::copy(db, &copy).unwrap();
    let n = count(&Connection::open(&copy).unwrap(), "entries");
    std::fs::remove_file(&copy).unwrap();
    n
}

/// An import into an empty library commits with the caller's `synchronous`
/// (a sidecar's NORMAL: other connections see it one sync sooner) and is
/// durable in the WAL when `lsync_restore` returns (synced there); copying
/// it into the database file is left to a later checkpoint, which would
/// cost about as much as the import's own write.
#[test]
fn an_import_is_in_the_wal_when_the_restore_returns_and_a_checkpoint_copies_it() {
    let dir = TempDir::new();
    let (src, snap) = seeded_snapshot(&dir);
    let lib = library_id(&src);
    let (path, dst) = library(&dir, "dst", Some(&lib));
    // The schema is in the file; only what the import writes is not.
    dst.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    assert_eq!(entries_in_file(&dir, &path), 0);
    assert_eq!(restore(&dst, &snap)["mode"], "empty");
    assert_eq!(entries_in_file(&dir, &path), 0, "not copied by the restore");
    assert_eq!(
        count(&open(&path), "entries"),
        4,
        "another connection sees it"
    );
    assert_eq!(scalar::<i64>(&dst, "PRAGMA synchronous"), 1, "unchanged");
    dst.execute_batch("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
    assert_eq!(entries_in_file(&dir, &path), 4, "checkpointed");

    // A reader of the empty library holds the checkpoint back.
    let (path, held) = library(&dir, "held", Some(&lib));
    held.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let reader = open(&path);
    reader.execute_batch("BEGIN").unwrap();
    assert_eq!(count(&reader, "entries"), 0);
    assert_eq!(restore(&held, &snap)["mode"], "empty");
    assert_eq!(count(&reader, "entries"), 0, "its snapshot is older");
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(count(&reader, "entries"), 4);
    assert_eq!(raw(&held), raw(&src));
}

/// `lsync_snapshot` copies the database file itself when every WAL frame is
/// in it, and uses the backup API when a reader of an older state holds
/// frames back: either way the snapshot holds every commit.
#[test]
fn a_snapshot_holds_every_commit_while_a_reader_holds_the_wal_back() {
    let dir = TempDir::new();
    let (src_path, src) = library(&dir, "src", None);
    seed(&src);
    let reader = open(&src_path);
    reader.execute_batch("BEGIN").unwrap();
    assert_eq!(count(&reader, "entries"), 4);
    src.execute_batch(
        "INSERT INTO entries(name, parent_id, location_id) VALUES ('late', 1, 1);
         PRAGMA wal_checkpoint(PASSIVE);",
    )
    .unwrap();
    let snap = dir.path().join("snap-held.db");
    snapshot(&src, &snap);
    let lib = library_id(&src);
    let (_, held) = library(&dir, "held", Some(&lib));
    assert_eq!(restore(&held, &snap)["mode"], "empty");
    assert_eq!(count(&held, "entries"), 5, "the commit after the reader's");
    assert_eq!(raw(&held), raw(&src));

    reader.execute_batch("COMMIT").unwrap();
    let snap = dir.path().join("snap-quiet.db");
    snapshot(&src, &snap);
    let (_, quiet) = library(&dir, "quiet", Some(&lib));
    assert_eq!(restore(&quiet, &snap)["mode"], "empty");
    assert_eq!(raw(&quiet), raw(&src));
}
