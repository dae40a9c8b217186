//! A row deleted on one device while another device links to it (issue
//! 11, rule 1): the FK's declared `ON DELETE` action applies on every
//! replica, also to links that arrive after the delete; `NO ACTION` and
//! `RESTRICT` are delete-wins. Real `liblsync.so`, two database files.

use lsync_tests::*;
use rusqlite::Connection;

/// Tags, objects and assignments; `action` is the assignment's FK action
/// on tags, `tag_col` its column declaration.
fn schema(tag_col: &str) -> String {
    format!(
        "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         CREATE TABLE objects(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         CREATE TABLE tag_on_object(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, {tag_col},
           object_id INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE, note TEXT);
         SELECT lsync_track('tags', 'shared');
         SELECT lsync_track('objects', 'shared');
         SELECT lsync_track('tag_on_object', 'shared');"
    )
}

/// A and B in one library with tags T and T2 and objects O1..O3 on both;
/// `fk_on` says whether A enforces FKs (B always does).
fn tagged_pair(tag_col: &str, fk_on: bool) -> (TempDir, Connection, Connection) {
    let (dir, a, b) = two_libraries(&schema(tag_col));
    a.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('T', 'red'), ('T2', 'blue');
         INSERT INTO objects(uuid, name) VALUES ('O1', 'a'), ('O2', 'b'), ('O3', 'c');",
    )
    .unwrap();
    send(&a, &b, 0);
    a.execute_batch(if fk_on {
        "PRAGMA foreign_keys = ON"
    } else {
        "PRAGMA foreign_keys = OFF"
    })
    .unwrap();
    b.execute_batch("PRAGMA foreign_keys = ON").unwrap();
    (dir, a, b)
}

/// Both ways, twice (so what each side derived reaches the other).
fn exchange(a: &Connection, b: &Connection) {
    for _ in 0..2 {
        send(a, b, 0);
        send(b, a, 0);
    }
}

/// Assignments as (uuid, tag uuid, object uuid, note), by uuid.
fn tag_links(c: &Connection) -> Vec<Vec<String>> {
    query_rows(
        c,
        &format!(
            "SELECT uuid, {}, {}, note FROM tag_on_object t ORDER BY uuid",
            logical_fk("tag_on_object", "tag_id", "tags"),
            logical_fk("tag_on_object", "object_id", "objects")
        ),
    )
}

fn assert_converged_without_conflicts(a: &Connection, b: &Connection) {
    assert_eq!(tag_links(a), tag_links(b));
    assert_eq!(
        query_rows(a, "SELECT uuid, name FROM tags ORDER BY uuid"),
        query_rows(b, "SELECT uuid, name FROM tags ORDER BY uuid")
    );
    for c in [a, b] {
        assert_eq!(count(c, "lsync_conflicts"), 0);
        assert_eq!(
            count(c, "lsync_pending"),
            0,
            "no link waits for a deleted row"
        );
        let fk: i64 = scalar(c, "SELECT count(*) FROM pragma_foreign_key_check");
        assert_eq!(fk, 0, "no dangling FK");
    }
}

/// B assigns tag T to all three objects while A deletes T.
fn assign_all(b: &Connection, tag: &str) {
    b.execute_batch(&format!(
        "INSERT INTO tag_on_object(uuid, tag_id, object_id)
         SELECT 'J' || o.name, t.id, o.id FROM objects o, tags t WHERE t.uuid = '{tag}'"
    ))
    .unwrap();
}

#[test]
fn cascade_removes_links_made_elsewhere_after_the_delete() {
    let (_dir, a, b) = tagged_pair(
        "tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE",
        true,
    );
    assign_all(&b, "T");
    a.execute_batch("DELETE FROM tags WHERE uuid = 'T'")
        .unwrap();
    // A meets links to a deleted row: it removes them (tombstones that
    // travel), and nothing is quarantined.
    let at_a = send(&b, &a, 0);
    assert_eq!(n(&at_a, "quarantined"), 0, "{at_a}");
    assert_eq!(n(&at_a, "applied"), 3, "the three links, removed: {at_a}");
    // B meets the delete of a row its links point at: they go with it.
    let at_b = send(&a, &b, 0);
    assert_eq!(n(&at_b, "quarantined"), 0, "{at_b}");
    exchange(&a, &b);
    assert!(tag_links(&a).is_empty(), "{:?}", tag_links(&a));
    assert_converged_without_conflicts(&a, &b);
}

#[test]
fn no_action_is_delete_wins() {
    // The case: A removes the tag's assignments first (the FK is
    // enforced), then the tag, while B assigns it to three objects.
    let (_dir, a, b) = tagged_pair("tag_id INTEGER NOT NULL REFERENCES tags(id)", true);
    a.execute_batch("INSERT INTO tag_on_object(uuid, tag_id, object_id) VALUES ('A1', 1, 1);")
        .unwrap();
    send(&a, &b, 0);
    assign_all(&b, "T");
    a.execute_batch(
        "DELETE FROM tag_on_object WHERE tag_id = 1;
         DELETE FROM tags WHERE uuid = 'T';",
    )
    .unwrap();
    exchange(&a, &b);
    assert!(tag_links(&b).is_empty(), "{:?}", tag_links(&b));
    assert_eq!(query_rows(&b, "SELECT uuid FROM tags"), [["T2"]]);
    assert_converged_without_conflicts(&a, &b);
    // The other order of arrival ends the same.
    let (_dir, a, b) = tagged_pair("tag_id INTEGER NOT NULL REFERENCES tags(id)", true);
    assign_all(&b, "T");
    a.execute_batch("DELETE FROM tags WHERE uuid = 'T'")
        .unwrap();
    send(&a, &b, 0);
    send(&b, &a, 0);
    exchange(&a, &b);
    assert!(tag_links(&a).is_empty());
    assert_converged_without_conflicts(&a, &b);
}

/// B assigns tag T to three objects while A deletes T: with a SET NULL or
/// SET DEFAULT FK, every assignment ends with its tag column `expected`.
fn links_made_elsewhere_are_set(tag_col: &str, expected: &str) {
    let (_dir, a, b) = tagged_pair(tag_col, true);
    assign_all(&b, "T");
    a.execute_batch("DELETE FROM tags WHERE uuid = 'T'")
        .unwrap();
    exchange(&a, &b);
    let rows = tag_links(&a);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r[1] == expected), "{rows:?}");
    assert_converged_without_conflicts(&a, &b);
}

#[test]
fn set_null_clears_links_made_elsewhere_and_nothing_waits() {
    links_made_elsewhere_are_set(
        "tag_id INTEGER REFERENCES tags(id) ON DELETE SET NULL",
        "NULL",
    );
}

/// SET DEFAULT sets the column to its declared default, evaluated on each
/// replica: here rowid 2, which is tag T2 on both sides.
#[test]
fn set_default_sets_links_made_elsewhere_to_the_default() {
    links_made_elsewhere_are_set(
        "tag_id INTEGER NOT NULL DEFAULT 2 REFERENCES tags(id) ON DELETE SET DEFAULT",
        "T2",
    );
}

/// B moves an assignment to another tag while A (FKs not enforced, as in
/// the sqlite3 shell) deletes its old tag. A detaches the assignment at
/// once and gives it its FK's action at its next apply: if that apply
/// comes before B's edit, A removes the assignment, and the removal
/// travels, so B ends without it too, although B had moved it. If B's edit
/// comes first, nobody removes it. Either way both sides end the same.
#[test]
fn a_dependant_removed_on_one_device_is_removed_everywhere() {
    for edit_first in [false, true] {
        let (_dir, a, b) = tagged_pair("tag_id INTEGER REFERENCES tags(id)", false);
        a.execute_batch(
            "INSERT INTO tag_on_object(uuid, tag_id, object_id, note) VALUES ('J', 1, 1, 'x');",
        )
        .unwrap();
        send(&a, &b, 0);
        let before_edit: Vec<u8> = b
            .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
            .unwrap();
        b.execute_batch(
            "UPDATE tag_on_object SET tag_id = (SELECT id FROM tags WHERE uuid = 'T2') WHERE uuid = 'J'",
        )
        .unwrap();
        a.execute_batch("DELETE FROM tags WHERE uuid = 'T'")
            .unwrap();
        assert_eq!(
            query_rows(
                &a,
                "SELECT tag_id IS NULL, (SELECT count(*) FROM lsync_pending) FROM tag_on_object"
            ),
            [["1", "1"]],
            "detached at once, the link waiting"
        );
        if !edit_first {
            a.query_row("SELECT lsync_apply(?1)", [&before_edit], |_| Ok(()))
                .unwrap();
            assert!(tag_links(&a).is_empty(), "removed at A's next apply");
        }
        exchange(&a, &b);
        let expected: Vec<Vec<String>> = if edit_first {
            vec![["J", "T2", "O1", "x"].map(String::from).to_vec()]
        } else {
            vec![]
        };
        assert_eq!(tag_links(&b), expected, "edit first: {edit_first}");
        assert_converged_without_conflicts(&a, &b);
    }
}
