//! Constraint conflicts end to end (issue 11): two real `lsync run`
//! processes on 127.0.0.1 (see `sidecar.rs` for the conventions), on a file
//! manager's schema: tags with a unique name, objects, a tag-on-object
//! assignment table with a unique (tag, object) pair and `NOT NULL` FKs, and
//! notes with a CHECK.
//!
//! Each test makes its conflicting writes on both devices while no sidecar
//! runs (so that neither has seen the other's), starts both sidecars, and
//! waits for them to agree on the outcome the issue asks for. Then one
//! unrelated change on each side must reach the other within 5 s, and
//! neither log may show an escalation to a full resync or a stuck peer.
//!
//! The scenarios: the same unique name created on both sides; the same pair
//! assigned on both sides; a delete against a concurrent reference, with
//! `ON DELETE CASCADE` and with the default action (delete-wins); a change
//! that one side refuses (an app trigger), quarantined there.

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use lsync_tests::*;

/// How long the two sidecars may take to agree after they start.
const SETTLE: Duration = Duration::from_secs(10);
/// How long an unrelated change may take to reach the other side.
const UNRELATED: Duration = Duration::from_secs(5);

/// The file manager's schema; `{ACTION}` is the `ON DELETE` clause of
/// `tag_on_object.tag_id` (empty: the default, `NO ACTION`).
const FILE_MANAGER: &str = "
CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT UNIQUE, color TEXT);
CREATE TABLE objects(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
CREATE TABLE tag_on_object(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  tag_id INTEGER NOT NULL REFERENCES tags(id) {ACTION},
  object_id INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
  UNIQUE(tag_id, object_id));
CREATE TABLE notes(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  body TEXT CHECK (length(body) <= 20));
SELECT lsync_track('tags', 'shared');
SELECT lsync_track('objects', 'shared');
SELECT lsync_track('tag_on_object', 'shared');
SELECT lsync_track('notes', 'shared');
";

/// Devices A and B in one library, each with the file manager's schema
/// (`action` for `tag_on_object.tag_id`) and `PRAGMA foreign_keys = ON` on
/// the app's connection, as a careful app has it.
struct Devices {
    dir: TempDir,
    secret: PathBuf,
    a_db: PathBuf,
    b_db: PathBuf,
    a: Connection,
    b: Connection,
}

fn file_manager_devices(action: &str) -> Devices {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let schema = FILE_MANAGER.replace("{ACTION}", action);
    let device = |name: &str| {
        let path = dir.path().join(format!("{name}.db"));
        let c = open(&path);
        c.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        c.execute_batch(&schema)
            .unwrap_or_else(|e| panic!("file manager schema at {name}: {e}"));
        (path, c)
    };
    let (a_db, a) = device("a");
    let (b_db, b) = device("b");
    join_library(&b, &library_id(&a));
    Devices {
        dir,
        secret,
        a_db,
        b_db,
        a,
        b,
    }
}

/// Everything `from` has, applied at `to` with the SQL functions, before
/// any sidecar runs: the state both devices start the scenario from.
fn hand_over(from: &Connection, to: &Connection) {
    let blob: Vec<u8> = from
        .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
        .unwrap();
    let report: String = to
        .query_row("SELECT lsync_apply(?1)", [&blob], |r| r.get(0))
        .unwrap_or_else(|e| panic!("lsync_apply: {e}"));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(n(&report, "quarantined"), 0, "the initial state: {report}");
}

/// Sidecars for A (listening) and B (dialing A), with fast retries.
fn start_sidecars(d: &Devices) -> (Sidecar, Sidecar) {
    let node_a = Sidecar::start(d.dir.path(), "A", &d.a_db, &d.secret, &[], &FAST_RETRY);
    let node_b = Sidecar::start(
        d.dir.path(),
        "B",
        &d.b_db,
        &d.secret,
        &[node_a.addr()],
        &FAST_RETRY,
    );
    (node_a, node_b)
}

/// Every tracked table by uuid, FKs as the target's uuid, one string per
/// row: what the two devices must agree on, whatever their local ids.
fn file_manager_dump(c: &Connection) -> Vec<String> {
    [
        "SELECT 'T', uuid, name, color FROM tags t".to_owned(),
        "SELECT 'O', uuid, name FROM objects t".to_owned(),
        format!(
            "SELECT 'A', uuid, {}, {} FROM tag_on_object t",
            logical_fk("tag_on_object", "tag_id", "tags"),
            logical_fk("tag_on_object", "object_id", "objects")
        ),
        "SELECT 'N', uuid, body FROM notes t".to_owned(),
    ]
    .iter()
    .flat_map(|q| query_rows_typed(c, &format!("{q} ORDER BY uuid")))
    .map(|row| row.join("|"))
    .collect()
}

/// The quarantine, as (table, uuid, op, error).
fn quarantine(c: &Connection) -> Vec<Vec<String>> {
    query_rows(
        c,
        "SELECT tbl, uuid, op, error FROM lsync_conflicts ORDER BY id",
    )
}

/// Waits, at most [`SETTLE`], until `done` holds; fails with both devices'
/// data and quarantines (the sidecars print their logs as they drop).
fn settle(
    what: &str,
    d: &Devices,
    nodes: &[&Sidecar],
    mut done: impl FnMut(&Connection, &Connection) -> bool,
) {
    let start = Instant::now();
    let max_polls = SETTLE.as_millis() / POLL.as_millis() + 1;
    for _ in 0..max_polls {
        if done(&d.a, &d.b) {
            return;
        }
        for n in nodes {
            assert!(n.alive(), "{} exited while waiting for: {what}", n.name);
        }
        if start.elapsed() > SETTLE {
            break;
        }
        sleep(POLL);
    }
    panic!(
        "timed out after {:.1} s waiting for: {what}\nA: {:#?}\nB: {:#?}\n\
         quarantined at A: {:?}\nquarantined at B: {:?}",
        start.elapsed().as_secs_f64(),
        file_manager_dump(&d.a),
        file_manager_dump(&d.b),
        quarantine(&d.a),
        quarantine(&d.b),
    );
}

/// Waits until A and B hold the same data, and `expected` holds of it.
fn settle_identical(
    what: &str,
    d: &Devices,
    nodes: &[&Sidecar],
    expected: impl Fn(&Connection) -> bool,
) {
    settle(what, d, nodes, |a, b| {
        file_manager_dump(a) == file_manager_dump(b) && expected(a)
    });
}

/// One unrelated note written on each side reaches the other within 5 s;
/// then neither log shows an escalation or a stuck peer.
fn unrelated_changes_flow_without_escalation(d: &Devices, nodes: &[&Sidecar]) {
    d.a.execute_batch("INSERT INTO notes(uuid, body) VALUES ('note-from-a', 'written at A')")
        .unwrap();
    d.b.execute_batch("INSERT INTO notes(uuid, body) VALUES ('note-from-b', 'written at B')")
        .unwrap();
    let has = |c: &Connection, uuid: &str| {
        scalar::<i64>(
            c,
            &format!("SELECT count(*) FROM notes WHERE uuid = '{uuid}'"),
        ) == 1
    };
    wait_for_within(
        "an unrelated note from each side reaches the other",
        nodes,
        UNRELATED,
        || has(&d.a, "note-from-b") && has(&d.b, "note-from-a"),
    );
    for n in nodes {
        let log = n.all_logs();
        for bad in ["escalat", "stuck"] {
            assert!(!log.contains(bad), "{} logged '{bad}':\n{log}", n.name);
        }
    }
    for db in [&d.a_db, &d.b_db] {
        let s = lsync_status(db);
        let peers = s["peers"].as_array().cloned().unwrap_or_default();
        assert!(
            peers.iter().all(|p| p["stuck"] != true),
            "no peer is stuck: {s}"
        );
    }
}

/// Both devices create a tag 'red' (name is UNIQUE), each with its own
/// uuid, and B assigns its 'red' to an object. The two tags are merged
/// into one on both sides: the lower uuid ('tag-red-a') stays, the other
/// becomes its alias, B's assignment points at it, and nothing is
/// quarantined.
#[test]
fn the_same_unique_name_created_on_both_sides_merges_into_one_tag() {
    let d = file_manager_devices("");
    d.a.execute_batch("INSERT INTO tags(uuid, name, color) VALUES ('tag-red-a', 'red', '#f00')")
        .unwrap();
    sleep(Duration::from_millis(20));
    d.b.execute_batch(
        "INSERT INTO tags(uuid, name, color) VALUES ('tag-red-b', 'red', '#e00');
         INSERT INTO objects(uuid, name) VALUES ('obj-1', 'holiday.jpg');
         INSERT INTO tag_on_object(uuid, tag_id, object_id) VALUES ('assign-b', 1, 1);",
    )
    .unwrap();
    let (node_a, node_b) = start_sidecars(&d);
    let nodes = [&node_a, &node_b];
    settle(
        "both sides hold one 'red', with B's assignment, and know the merge",
        &d,
        &nodes,
        |a, b| {
            file_manager_dump(a) == file_manager_dump(b)
                && count(a, "tags") == 1
                && count(a, "tag_on_object") == 1
                && count(a, "lsync_alias") == 1
                && count(b, "lsync_alias") == 1
        },
    );
    for c in [&d.a, &d.b] {
        assert_eq!(
            query_rows(c, "SELECT uuid, name FROM tags"),
            [["tag-red-a", "red"]]
        );
        assert_eq!(
            query_rows(
                c,
                "SELECT o.uuid, t.uuid FROM tag_on_object o JOIN tags t ON t.id = o.tag_id"
            ),
            [["assign-b", "tag-red-a"]]
        );
        assert_eq!(
            query_rows(c, "SELECT uuid, root FROM lsync_alias"),
            [["tag-red-b", "tag-red-a"]]
        );
        assert!(quarantine(c).is_empty(), "{:?}", quarantine(c));
    }
    unrelated_changes_flow_without_escalation(&d, &nodes);
}

/// A tag and an object are on both devices; each device assigns that tag
/// to that object (the pair is UNIQUE), with its own assignment uuid. The
/// two assignments are merged into one on both sides (the lower uuid,
/// 'assign-a'), and nothing is quarantined.
#[test]
fn the_same_pair_assigned_on_both_sides_merges_into_one_assignment() {
    let d = file_manager_devices("ON DELETE CASCADE");
    d.a.execute_batch(
        "INSERT INTO tags(uuid, name, color) VALUES ('tag-red', 'red', '#f00');
         INSERT INTO objects(uuid, name) VALUES ('obj-1', 'holiday.jpg');",
    )
    .unwrap();
    hand_over(&d.a, &d.b);
    let assign = |c: &Connection, uuid: &str| {
        c.execute(
            "INSERT INTO tag_on_object(uuid, tag_id, object_id)
             VALUES (?1, (SELECT id FROM tags WHERE uuid = 'tag-red'),
                         (SELECT id FROM objects WHERE uuid = 'obj-1'))",
            [uuid],
        )
        .unwrap();
    };
    assign(&d.a, "assign-a");
    sleep(Duration::from_millis(20));
    assign(&d.b, "assign-b");
    let (node_a, node_b) = start_sidecars(&d);
    let nodes = [&node_a, &node_b];
    // Both sides know the merge too: the side whose row stayed learns it
    // from the other, possibly after their tables agree.
    settle(
        "both sides hold one assignment, and know the merge",
        &d,
        &nodes,
        |a, b| {
            file_manager_dump(a) == file_manager_dump(b)
                && query_rows(a, "SELECT uuid FROM tag_on_object") == [["assign-a"]]
                && count(a, "lsync_alias") == 1
                && count(b, "lsync_alias") == 1
        },
    );
    for c in [&d.a, &d.b] {
        assert!(quarantine(c).is_empty(), "{:?}", quarantine(c));
        assert_eq!(
            query_rows(c, "SELECT uuid, root FROM lsync_alias"),
            [["assign-b", "assign-a"]]
        );
    }
    unrelated_changes_flow_without_escalation(&d, &nodes);
}

/// Tag 'doomed' is assigned to obj-1, and objects obj-2..obj-4 exist, on
/// both devices. Then A deletes the tag (with foreign keys on, its
/// assignment goes by the declared action; with `NO ACTION`, A removes it
/// first, as SQLite insists) while B assigns the tag to obj-2..obj-4.
fn a_delete_against_a_concurrent_reference(action: &str) {
    let d = file_manager_devices(action);
    d.a.execute_batch(
        "INSERT INTO tags(uuid, name, color) VALUES ('tag-doomed', 'doomed', '#000');
         INSERT INTO tags(uuid, name, color) VALUES ('tag-kept', 'kept', '#0f0');
         INSERT INTO objects(uuid, name) VALUES ('obj-1', 'a.txt'), ('obj-2', 'b.txt'),
                                                ('obj-3', 'c.txt'), ('obj-4', 'd.txt');
         INSERT INTO tag_on_object(uuid, tag_id, object_id)
           SELECT 'assign-1', t.id, o.id FROM tags t, objects o
           WHERE t.uuid = 'tag-doomed' AND o.uuid = 'obj-1';
         INSERT INTO tag_on_object(uuid, tag_id, object_id)
           SELECT 'assign-kept', t.id, o.id FROM tags t, objects o
           WHERE t.uuid = 'tag-kept' AND o.uuid = 'obj-1';",
    )
    .unwrap();
    hand_over(&d.a, &d.b);

    if action.is_empty() {
        d.a.execute_batch(
            "DELETE FROM tag_on_object
             WHERE tag_id = (SELECT id FROM tags WHERE uuid = 'tag-doomed')",
        )
        .unwrap();
    }
    d.a.execute_batch("DELETE FROM tags WHERE uuid = 'tag-doomed'")
        .unwrap();
    assert_eq!(
        query_rows(&d.a, "SELECT uuid FROM tag_on_object"),
        [["assign-kept"]]
    );
    d.b.execute_batch(
        "INSERT INTO tag_on_object(uuid, tag_id, object_id)
           SELECT 'assign-' || substr(o.uuid, 5), t.id, o.id FROM tags t, objects o
           WHERE t.uuid = 'tag-doomed' AND o.uuid IN ('obj-2', 'obj-3', 'obj-4');",
    )
    .unwrap();
    assert_eq!(count(&d.b, "tag_on_object"), 5);
    let (node_a, node_b) = start_sidecars(&d);
    let nodes = [&node_a, &node_b];

    settle_identical(
        "the tag and every assignment of it gone on both sides",
        &d,
        &nodes,
        |c| {
            query_rows(c, "SELECT uuid FROM tags") == [["tag-kept"]]
                && query_rows(c, "SELECT uuid FROM tag_on_object") == [["assign-kept"]]
                && count(c, "objects") == 4
        },
    );
    for c in [&d.a, &d.b] {
        assert!(quarantine(c).is_empty(), "{:?}", quarantine(c));
        assert_eq!(count(c, "lsync_deferred"), 0, "no link left pending");
    }
    unrelated_changes_flow_without_escalation(&d, &nodes);
}

/// `ON DELETE CASCADE`: the assignments B made to the deleted tag go on
/// both devices.
#[test]
fn a_delete_against_a_concurrent_reference_cascades() {
    a_delete_against_a_concurrent_reference("ON DELETE CASCADE");
}

/// The default action (`NO ACTION`) cannot refuse a delete made on another
/// device: the delete wins, and the assignments B made go on both devices.
#[test]
fn a_delete_against_a_concurrent_reference_wins_with_the_default_action() {
    a_delete_against_a_concurrent_reference("");
}

/// B's app refuses notes that say 'x' (a trigger). A writes 'x' and 'ok':
/// B takes 'ok' and quarantines 'x', says so in `lsync_conflicts` and
/// `lsync status`, and replication goes on in both directions.
#[test]
fn a_quarantined_change_does_not_stop_replication() {
    let d = file_manager_devices("ON DELETE CASCADE");
    d.b.execute_batch(
        "CREATE TRIGGER no_x BEFORE INSERT ON notes WHEN NEW.body = 'x'
         BEGIN SELECT RAISE(ABORT, 'no x'); END;",
    )
    .unwrap();
    d.a.execute_batch(
        "INSERT INTO notes(uuid, body) VALUES ('note-x', 'x');
         INSERT INTO notes(uuid, body) VALUES ('note-ok', 'ok');",
    )
    .unwrap();
    let (node_a, node_b) = start_sidecars(&d);
    let nodes = [&node_a, &node_b];

    settle("B takes 'ok' and quarantines 'x'", &d, &nodes, |_, b| {
        query_rows(b, "SELECT body FROM notes") == [["ok"]] && count(b, "lsync_conflicts") == 1
    });
    let q = quarantine(&d.b);
    assert_eq!(q[0][..3], ["notes", "note-x", "insert"], "{q:?}");
    assert!(q[0][3].contains("no x"), "{q:?}");
    assert!(quarantine(&d.a).is_empty(), "{:?}", quarantine(&d.a));
    assert_eq!(
        query_rows(&d.a, "SELECT body FROM notes ORDER BY uuid"),
        [["ok"], ["x"]]
    );
    let status: serde_json::Value =
        serde_json::from_str(&scalar::<String>(&d.b, "SELECT lsync_status()")).unwrap();
    assert_eq!(status["conflicts"], 1, "lsync_status() at B: {status}");

    unrelated_changes_flow_without_escalation(&d, &nodes);
    // The new note retried the quarantined one, which B still refuses.
    assert_eq!(count(&d.b, "lsync_conflicts"), 1);
    assert_eq!(
        query_rows(&d.b, "SELECT uuid FROM notes ORDER BY uuid"),
        [["note-from-a"], ["note-from-b"], ["note-ok"]]
    );
    // What the sidecar's user sees.
    let status = lsync_status(&d.b_db);
    assert_eq!(status["conflicts"], 1, "lsync status --json at B: {status}");
}
