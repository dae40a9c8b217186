//! Constraint conflicts (issue 11): a change that SQLite refuses here is
//! quarantined, never blocking. The rest of its changeset applies, the
//! quarantine is visible (`lsync_conflicts`, `lsync_status`), retried when
//! a later change touches its table, and a DBA can retry or drop it.
//! Real `liblsync.so`, separate database files in one library.

use lsync_tests::*;
use rusqlite::Connection;
use serde_json::Value as Json;

/// The quarantine as (table, uuid, op, error), in id order.
fn conflicts(c: &Connection) -> Vec<Vec<String>> {
    query_rows(
        c,
        "SELECT tbl, uuid, op, error FROM lsync_conflicts ORDER BY id",
    )
}

fn conflict_id(c: &Connection) -> i64 {
    scalar(c, "SELECT min(id) FROM lsync_conflicts")
}

const RANGES: &str = "
CREATE TABLE ranges(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT,
  lo INTEGER, hi INTEGER, CHECK (lo <= hi));
CREATE TABLE notes(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, body TEXT);
SELECT lsync_track('ranges', 'shared');
SELECT lsync_track('notes', 'shared');
";

/// Two edits, each valid where it was made, merge per column into a row
/// the CHECK refuses: the refused change waits in the quarantine, the rest
/// of its changeset applies, and a later edit that makes it fit brings it in.
#[test]
fn a_refused_change_waits_in_the_quarantine_and_the_rest_applies() {
    let (_dir, a, b) = two_libraries(RANGES);
    a.execute_batch("INSERT INTO ranges(uuid, name, lo, hi) VALUES ('R', 'r', 1, 10)")
        .unwrap();
    send(&a, &b, 0);
    let since = cursor(&a);
    b.execute_batch("UPDATE ranges SET lo = 5 WHERE uuid = 'R'")
        .unwrap();
    a.execute_batch(
        "UPDATE ranges SET hi = 3 WHERE uuid = 'R';
         INSERT INTO notes(uuid, body) VALUES ('N', 'unrelated');",
    )
    .unwrap();
    let report = send(&a, &b, since);
    assert_eq!(n(&report, "quarantined"), 1, "{report}");
    assert_eq!(n(&report, "applied"), 1, "{report}");
    // The unrelated change arrived; the refused one left nothing.
    assert_eq!(query_rows(&b, "SELECT body FROM notes"), [["unrelated"]]);
    assert_eq!(query_rows(&b, "SELECT lo, hi FROM ranges"), [["5", "10"]]);
    let q = conflicts(&b);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0][..3], ["ranges", "R", "update"]);
    assert!(q[0][3].contains("CHECK constraint failed"), "{q:?}");
    assert_eq!(
        query_rows(
            &b,
            "SELECT data, origin = lsync_device_id() FROM lsync_conflicts"
        ),
        [[r#"{"hi":3}"#, "0"]]
    );
    let status: Json =
        serde_json::from_str(&scalar::<String>(&b, "SELECT lsync_status()")).unwrap();
    assert_eq!(status["conflicts"], 1, "{status}");
    // B does not relay what it has not applied.
    let relayed: i64 = b
        .query_row(
            "SELECT lsync_changeset_info(lsync_changeset(0)) ->> 'count'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        relayed, 3,
        "B's own edit, and A's row and note, not A's refused edit"
    );

    // Delivered again: still one entry, tried twice.
    let again = send(&a, &b, since);
    assert_eq!(n(&again, "quarantined"), 1, "{again}");
    assert_eq!(
        query_rows(&b, "SELECT count(*), max(tries) FROM lsync_conflicts"),
        [["1", "2"]]
    );

    // A later change to the table that makes room retries it: A lowers lo
    // after B's edit (so it wins), and hi = 3 then fits.
    send(&b, &a, 0);
    let since = cursor(&a);
    a.execute_batch("UPDATE ranges SET lo = 0 WHERE uuid = 'R'")
        .unwrap();
    let report = send(&a, &b, since);
    assert_eq!(n(&report, "retried"), 1, "{report}");
    assert_eq!(query_rows(&b, "SELECT lo, hi FROM ranges"), [["0", "3"]]);
    assert!(conflicts(&b).is_empty());
    assert_eq!(
        query_rows(&a, "SELECT lo, hi FROM ranges"),
        query_rows(&b, "SELECT lo, hi FROM ranges")
    );
}

/// An app trigger that says no, and a NOT NULL data column that one
/// device lacks: each refused change is quarantined; `lsync_conflict_retry`
/// and `lsync_conflict_drop` act on one entry.
#[test]
fn a_dba_retries_or_drops_a_quarantined_change() {
    let (_dir, a, b) = two_libraries(RANGES);
    b.execute_batch(
        "CREATE TRIGGER no_secrets BEFORE INSERT ON notes WHEN NEW.body LIKE 'secret%'
         BEGIN SELECT RAISE(ABORT, 'no secrets here'); END;",
    )
    .unwrap();
    a.execute_batch(
        "INSERT INTO notes(uuid, body) VALUES ('S', 'secret plans');
         INSERT INTO notes(uuid, body) VALUES ('P', 'public');",
    )
    .unwrap();
    let report = send(&a, &b, 0);
    assert_eq!(
        (n(&report, "applied"), n(&report, "quarantined")),
        (1, 1),
        "{report}"
    );
    let q = conflicts(&b);
    assert_eq!(q[0][..3], ["notes", "S", "insert"]);
    assert!(q[0][3].contains("no secrets here"), "{q:?}");
    let id = conflict_id(&b);

    // Retried while the trigger still refuses: stays, with the error.
    let r: Json = serde_json::from_str(&scalar::<String>(
        &b,
        &format!("SELECT lsync_conflict_retry({id})"),
    ))
    .unwrap();
    assert_eq!(r["applied"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("no secrets here"),
        "{r}"
    );
    assert_eq!(scalar::<i64>(&b, "SELECT tries FROM lsync_conflicts"), 2);

    // The DBA lifts the rule and retries: it applies, as a peer's change
    // (no echo as a local write), and leaves the quarantine.
    b.execute_batch("DROP TRIGGER no_secrets").unwrap();
    let before = cursor(&b);
    let r: Json = serde_json::from_str(&scalar::<String>(
        &b,
        &format!("SELECT lsync_conflict_retry({id})"),
    ))
    .unwrap();
    assert_eq!(r["applied"], true, "{r}");
    assert_eq!(
        query_rows(&b, "SELECT body FROM notes ORDER BY uuid"),
        [["public"], ["secret plans"]]
    );
    assert!(conflicts(&b).is_empty());
    let origin: i64 = b
        .query_row(
            "SELECT lsync_changeset_info(lsync_changeset(?1)) ->> 'count'",
            [before],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(origin, 1, "the retried change is recorded once, to relay");
    let relayed = changes(&b, before);
    assert_eq!(relayed[0].origin, device_id(&a), "{relayed:?}");

    // Drop: a NOT NULL column that only B has refuses A's row; dropped, it
    // is gone for good.
    b.execute_batch(
        "CREATE TABLE strict(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, v TEXT NOT NULL);
         SELECT lsync_track('strict', 'shared');",
    )
    .unwrap();
    a.execute_batch(
        "CREATE TABLE strict(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, v TEXT);
         SELECT lsync_track('strict', 'shared');
         INSERT INTO strict(uuid, v) VALUES ('V', NULL);",
    )
    .unwrap();
    let since = cursor(&a) - 1;
    let report = send(&a, &b, since);
    assert_eq!(n(&report, "quarantined"), 1, "{report}");
    let id = conflict_id(&b);
    assert!(conflicts(&b)[0][3].contains("NOT NULL constraint failed"));
    assert_eq!(
        scalar::<i64>(&b, &format!("SELECT lsync_conflict_drop({id})")),
        1
    );
    assert!(conflicts(&b).is_empty());
    assert_eq!(count(&b, "strict"), 0);

    // Ids that do not exist are errors that say where to look.
    for f in ["lsync_conflict_retry", "lsync_conflict_drop"] {
        let err = error_of(&b, &format!("SELECT {f}({id})"));
        assert!(
            err.contains("no quarantined change") && err.contains("lsync_conflicts"),
            "{err}"
        );
    }
}

/// Two owners each hold a row with the same unique path: neither can
/// change the other's row, so each side quarantines the other's, and
/// everything else keeps flowing in both directions.
#[test]
fn a_unique_clash_between_owners_never_stops_replication() {
    let schema = "
        CREATE TABLE places(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, path TEXT UNIQUE);
        CREATE TABLE notes(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, body TEXT);
        SELECT lsync_track('places', 'device_owned');
        SELECT lsync_track('notes', 'shared');";
    let (_dir, a, b) = two_libraries(schema);
    a.execute_batch("INSERT INTO places(uuid, path) VALUES ('PA', '/music')")
        .unwrap();
    b.execute_batch("INSERT INTO places(uuid, path) VALUES ('PB', '/music')")
        .unwrap();
    let (ca, cb) = (cursor(&a), cursor(&b));
    assert_eq!(n(&send(&a, &b, 0), "quarantined"), 1);
    assert_eq!(n(&send(&b, &a, 0), "quarantined"), 1);
    a.execute_batch("INSERT INTO notes(uuid, body) VALUES ('NA', 'from a')")
        .unwrap();
    b.execute_batch("INSERT INTO notes(uuid, body) VALUES ('NB', 'from b')")
        .unwrap();
    send(&a, &b, ca);
    send(&b, &a, cb);
    for c in [&a, &b] {
        assert_eq!(
            query_rows(c, "SELECT body FROM notes ORDER BY uuid"),
            [["from a"], ["from b"]]
        );
        assert_eq!(conflicts(c).len(), 1);
    }
    // B's owner renames its row; the retry then brings it to A.
    let cb = cursor(&b);
    b.execute_batch("UPDATE places SET path = '/music-b' WHERE uuid = 'PB'")
        .unwrap();
    let report = send(&b, &a, cb);
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert!(conflicts(&a).is_empty(), "{:?}", conflicts(&a));
    assert_eq!(
        query_rows(&a, "SELECT uuid, path FROM places ORDER BY uuid"),
        [["PA", "/music"], ["PB", "/music-b"]]
    );
}

/// A snapshot merged into a library that has data goes through the same
/// merge: a row refused here is quarantined and the rest is restored.
#[test]
fn a_snapshot_merge_quarantines_what_it_cannot_apply() {
    let (dir, a, b) = two_libraries(RANGES);
    a.execute_batch("INSERT INTO notes(uuid, body) VALUES ('S', 'secret'), ('P', 'public');")
        .unwrap();
    b.execute_batch(
        "INSERT INTO notes(uuid, body) VALUES ('B', 'mine');
         CREATE TRIGGER no_secrets BEFORE INSERT ON notes WHEN NEW.body = 'secret'
         BEGIN SELECT RAISE(ABORT, 'no secrets here'); END;",
    )
    .unwrap();
    let snap = dir.path().join("a.snap");
    a.query_row(
        "SELECT lsync_snapshot(?1)",
        [snap.to_string_lossy()],
        |_| Ok(()),
    )
    .unwrap();
    let report: Json = serde_json::from_str(&scalar::<String>(
        &b,
        &format!("SELECT lsync_restore('{}')", snap.display()),
    ))
    .unwrap();
    assert_eq!(report["mode"], "merge", "{report}");
    assert_eq!(n(&report, "quarantined"), 1, "{report}");
    assert_eq!(
        query_rows(&b, "SELECT uuid FROM notes ORDER BY uuid"),
        [["B"], ["P"]]
    );
    assert_eq!(conflicts(&b)[0][..3], ["notes", "S", "insert"]);
}

/// A quarantined change that can no longer be applied at all (here its
/// stored form is damaged) stays quarantined with the error, and never
/// blocks the applies that retry it.
#[test]
fn a_quarantined_change_that_cannot_be_read_never_blocks() {
    let (_dir, a, b) = two_libraries(RANGES);
    b.execute_batch(
        "CREATE TRIGGER no_secrets BEFORE INSERT ON notes WHEN NEW.body = 'secret'
         BEGIN SELECT RAISE(ABORT, 'no secrets here'); END;",
    )
    .unwrap();
    a.execute_batch("INSERT INTO notes(uuid, body) VALUES ('S', 'secret')")
        .unwrap();
    let since = cursor(&a);
    assert_eq!(n(&send(&a, &b, 0), "quarantined"), 1);
    b.execute_batch("UPDATE lsync_quarantine SET change = x'00'")
        .unwrap();
    a.execute_batch("INSERT INTO notes(uuid, body) VALUES ('P', 'public')")
        .unwrap();
    let report = send(&a, &b, since);
    assert_eq!(
        (n(&report, "applied"), n(&report, "retried")),
        (1, 0),
        "{report}"
    );
    let q = query_rows(&b, "SELECT tries, error FROM lsync_conflicts");
    assert_eq!(q[0][0], "2", "{q:?}");
    assert!(q[0][1].contains("corrupt"), "{q:?}");
}

/// Two devices assign the same tag to the same object, and both
/// assignments reach a third device before the tag does: their links wait.
/// When the tag arrives, completing both would break the UNIQUE pair: the
/// two assignments are merged into one (the lower uuid), as they would be
/// had the tag come first, and the apply goes through.
#[test]
fn links_that_complete_into_the_same_unique_pair_merge_the_rows() {
    let schema = "
        CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
        CREATE TABLE objects(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
        CREATE TABLE pairs(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
          tag_id INTEGER REFERENCES tags(id), object_id INTEGER REFERENCES objects(id),
          UNIQUE (tag_id, object_id));
        SELECT lsync_track('tags', 'shared');
        SELECT lsync_track('objects', 'shared');
        SELECT lsync_track('pairs', 'shared');";
    let (dir, a, b) = two_libraries(schema);
    let c = open(&dir.path().join("c.db"));
    c.execute_batch(schema).unwrap();
    join_library(&c, &library_id(&a));
    a.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('T', 'red');
         INSERT INTO objects(uuid, name) VALUES ('O', 'photo');",
    )
    .unwrap();
    send(&a, &c, 0);
    let (a_at, c_at) = (cursor(&a), cursor(&c));
    let pair = "INSERT INTO pairs(uuid, tag_id, object_id) VALUES (?1, 1, 1)";
    a.execute(pair, ["PA"]).unwrap();
    c.execute(pair, ["PC"]).unwrap();
    // B gets the object, then both pairs, then the tag.
    let part = |from: &Connection, since: i64, max: i64| -> Vec<u8> {
        from.query_row("SELECT lsync_changeset(?1, ?2)", [since, max], |r| r.get(0))
            .unwrap()
    };
    let apply = |blob: &[u8]| -> Json { serde_json::from_str(&applied_report(&b, blob)).unwrap() };
    apply(&part(&a, 1, 1));
    apply(&part(&a, a_at, 10));
    apply(&part(&c, c_at, 10));
    assert_eq!(count(&b, "lsync_pending"), 2);
    let report = apply(&part(&a, 0, 1));
    assert_eq!(n(&report, "merged"), 1, "{report}");
    assert_eq!(n(&report, "quarantined"), 0, "{report}");
    assert_eq!(count(&b, "lsync_pending"), 0);
    assert_eq!(
        query_rows(&b, "SELECT uuid, tag_id, object_id FROM pairs"),
        [["PA", "1", "1"]]
    );
    assert_eq!(
        query_rows(&b, "SELECT uuid, root FROM lsync_alias"),
        [["PC", "PA"]]
    );
    // Later applies go through too.
    a.execute_batch("INSERT INTO objects(uuid, name) VALUES ('O2', 'video')")
        .unwrap();
    let report = send(&a, &b, a_at);
    assert_eq!(n(&report, "quarantined"), 0, "{report}");
    assert_eq!(count(&b, "objects"), 2);
}

fn applied_report(c: &Connection, blob: &[u8]) -> String {
    c.query_row("SELECT lsync_apply(?1)", [blob], |r| r.get(0))
        .unwrap_or_else(|e| panic!("lsync_apply: {e}"))
}

/// A merge names the row it merges into; one that names none, or a row id
/// that is neither text nor blob, fails the whole apply with a clear error
/// and leaves nothing (a hand-made or corrupt changeset, never a peer's).
#[test]
fn a_merge_that_names_no_row_fails_the_apply_and_leaves_nothing() {
    use lsync_wire::changeset::{Changeset, Op, DEFAULT_MAX_BODY, MERGE_INTO};
    let schema = "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT UNIQUE);
        SELECT lsync_track('tags', 'shared');";
    let (dir, a, b) = two_libraries(schema);
    a.execute_batch("INSERT INTO tags(uuid, name) VALUES ('T1', 'red')")
        .unwrap();
    b.execute_batch("INSERT INTO tags(uuid, name) VALUES ('T2', 'red')")
        .unwrap();
    assert_eq!(n(&send(&a, &b, 0), "merged"), 1);
    // B's changes now hold the merge of T2 into T1.
    let blob: Vec<u8> = b
        .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
        .unwrap();
    let good = Changeset::decode(&blob, DEFAULT_MAX_BODY).unwrap();
    assert!(good.changes.iter().any(|c| c.op == Op::Merge), "{good:?}");
    let c = open(&dir.path().join("c.db"));
    c.execute_batch(schema).unwrap();
    join_library(&c, &library_id(&a));
    for bad in [
        vec![],
        vec![(
            std::sync::Arc::from(MERGE_INTO),
            lsync_wire::value::Value::Integer(7),
        )],
    ] {
        let mut cs = good.clone();
        for ch in cs.changes.iter_mut().filter(|ch| ch.op == Op::Merge) {
            ch.data = bad.clone();
        }
        let e = c
            .query_row("SELECT lsync_apply(?1)", [cs.encode().unwrap()], |r| {
                r.get::<_, String>(0)
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("names no row to merge into; nothing was applied"),
            "{e}"
        );
        assert_eq!(count(&c, "tags"), 0);
        assert_eq!(count(&c, "lsync_alias"), 0);
    }
    let _ = applied_report(&c, &blob);
    assert_eq!(
        query_rows(&c, "SELECT uuid, name FROM tags"),
        [["T1", "red"]]
    );
}

/// A merge can give the row here its root's id. The trigger that refuses
/// an app's change of a global id must let lsync's own through, also on a
/// table with app triggers (which stay on during an apply) and under a
/// trigger made by an older lsync (recreated when first needed).
#[test]
fn a_merge_renames_a_row_of_a_table_with_app_triggers() {
    let schema = "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT UNIQUE);
        CREATE TABLE log(msg TEXT);
        CREATE TRIGGER app_log AFTER UPDATE ON tags BEGIN INSERT INTO log VALUES ('upd'); END;
        SELECT lsync_track('tags', 'shared');";
    for older in [false, true] {
        let (_dir, a, b) = two_libraries(schema);
        if older {
            b.execute_batch(
                "DROP TRIGGER lsync_ids_tags;
                 CREATE TRIGGER lsync_ids_tags AFTER UPDATE ON tags
                 WHEN OLD.uuid IS NOT NULL AND (NEW.rowid IS NOT OLD.rowid OR NEW.uuid IS NOT OLD.uuid)
                 BEGIN SELECT RAISE(ABORT, 'older trigger'); END;",
            )
            .unwrap();
        }
        a.execute_batch("INSERT INTO tags(uuid, name) VALUES ('A', 'red')")
            .unwrap();
        b.execute_batch("INSERT INTO tags(uuid, name) VALUES ('B', 'red')")
            .unwrap();
        // B has only its own row: it takes the root's id, 'A'.
        let report = send(&a, &b, 0);
        assert_eq!(
            (n(&report, "merged"), n(&report, "quarantined")),
            (1, 0),
            "older trigger: {older}: {report}"
        );
        assert_eq!(
            query_rows(&b, "SELECT uuid, name FROM tags"),
            [["A", "red"]]
        );
        // The app still cannot change a global id.
        let e = error_of(&b, "UPDATE tags SET uuid = 'C'");
        assert!(e.contains("cannot change"), "{e}");
    }
}
