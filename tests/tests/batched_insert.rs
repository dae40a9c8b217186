//! New rows are inserted many to a statement (`merge::batch`), with their
//! rowids predicted so that links to them resolve before the statement
//! runs. Whatever the numbering or the constraints here, every row must
//! land, linked to the right row, or be quarantined alone.
//! Bulk updates of columns nothing else reads skip reading the row.
//! Real `liblsync.so`, separate database files in one library.

use lsync_tests::*;
use rusqlite::Connection;

/// More new rows than one statement takes (256), in a parent and a child
/// table.
const ROWS: i64 = 600;

fn places_schema(places: &str, mode: &str) -> String {
    format!(
        "CREATE TABLE places({places}, uuid TEXT UNIQUE, path TEXT UNIQUE);
         CREATE TABLE items(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
           place_id INTEGER REFERENCES places(id), name TEXT);
         SELECT lsync_track('places', '{mode}');
         SELECT lsync_track('items', '{mode}');"
    )
}

/// `ROWS` places, each with an item, written at `c`.
fn write_rows(c: &Connection) {
    c.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
         INSERT INTO places(uuid, path) SELECT 'P' || i, '/p/' || i FROM n;
         INSERT INTO items(uuid, place_id, name)
           SELECT 'I' || substr(uuid, 2), id, 'item ' || substr(uuid, 2) FROM places;"
    ))
    .unwrap();
}

/// Every item with the uuid of the place it links to, and its name.
fn links(c: &Connection) -> Vec<Vec<String>> {
    query_rows(
        c,
        "SELECT i.uuid, p.uuid, p.path, i.name FROM items AS i
           LEFT JOIN places AS p ON p.id = i.place_id ORDER BY i.uuid",
    )
}

/// `sql` at `b`, then A's rows applied there: B must hold them all, each
/// item linked to its place, and its own rows untouched.
fn rows_arrive_after(places: &str, mode: &str, sql: &str) {
    let (_dir, a, b) = two_libraries(&places_schema(places, mode));
    b.execute_batch(sql).unwrap();
    let own = query_rows(&b, "SELECT rowid, uuid, path FROM places ORDER BY rowid");
    write_rows(&a);
    let report = send(&a, &b, 0);
    assert_eq!(n(&report, "applied"), 2 * ROWS, "{report}");
    assert_eq!(n(&report, "quarantined"), 0, "{report}");
    assert_eq!(links(&b), links(&a));
    let mine = query_rows(
        &b,
        "SELECT rowid, uuid, path FROM places WHERE uuid NOT LIKE 'P%' ORDER BY rowid",
    );
    assert_eq!(mine, own, "B's own rows are as they were");
    assert_eq!(
        scalar::<String>(&b, "PRAGMA integrity_check"),
        "ok",
        "indexes agree with the rows"
    );
}

#[test]
fn new_rows_link_to_their_parents_in_a_table_with_rows() {
    for mode in ["device_owned", "shared"] {
        rows_arrive_after(
            "id INTEGER PRIMARY KEY",
            mode,
            "INSERT INTO places(uuid, path) VALUES ('B1', '/b/1'), ('B2', '/b/2')",
        );
    }
}

/// AUTOINCREMENT numbers new rows after the highest rowid ever used, not
/// the highest there is: B's deleted top rows must not be reused.
#[test]
fn autoincrement_rows_are_numbered_after_the_sequence() {
    rows_arrive_after(
        "id INTEGER PRIMARY KEY AUTOINCREMENT",
        "device_owned",
        "INSERT INTO places(uuid, path) VALUES ('B1', '/b/1'), ('B2', '/b/2'), ('B3', '/b/3');
         DELETE FROM places WHERE uuid IN ('B2', 'B3');",
    );
}

/// A table whose largest rowid is the largest there can be makes SQLite
/// pick rowids at random: nothing can be predicted, and each row goes in
/// on its own.
#[test]
fn rows_of_a_table_numbered_at_the_ceiling_still_arrive() {
    rows_arrive_after(
        "id INTEGER PRIMARY KEY",
        "device_owned",
        "INSERT INTO places(id, uuid, path) VALUES (9223372036854775807, 'B1', '/b/1')",
    );
}

/// A row that a constraint refuses in the middle of a run of new rows: it
/// alone is quarantined, and the rows around it land with their links.
#[test]
fn a_refused_row_among_new_rows_is_quarantined_alone() {
    let (_dir, a, b) = two_libraries(&places_schema("id INTEGER PRIMARY KEY", "device_owned"));
    b.execute_batch("INSERT INTO places(uuid, path) VALUES ('B1', '/p/300')")
        .unwrap();
    write_rows(&a);
    let report = send(&a, &b, 0);
    assert_eq!(n(&report, "quarantined"), 1, "{report}");
    assert_eq!(n(&report, "applied"), 2 * ROWS - 1, "{report}");
    assert_eq!(
        query_rows(&b, "SELECT tbl, uuid FROM lsync_conflicts"),
        [["places", "P300"]]
    );
    // Every item arrived; the refused place's item waits for its link.
    let expected: Vec<Vec<String>> = links(&a)
        .into_iter()
        .map(|mut r| {
            if r[1] == "P300" {
                r[1..3].fill("NULL".into());
            }
            r
        })
        .collect();
    assert_eq!(links(&b), expected);
    assert_eq!(
        scalar::<i64>(&b, "SELECT count(*) FROM places WHERE uuid LIKE 'P%'"),
        ROWS - 1
    );
}

/// A bulk update writes columns that no index, FK or referrer reads
/// without reading the row first (`merge::costly`), and the others only
/// where they change: both land, and the indexes agree with the rows.
#[test]
fn bulk_updates_land_whether_or_not_the_row_is_read_first() {
    for mode in ["device_owned", "shared"] {
        let (_dir, a, b) = two_libraries(&places_schema("id INTEGER PRIMARY KEY", mode));
        write_rows(&a);
        send(&a, &b, 0);
        let since = cursor(&a);
        a.execute_batch(
            "UPDATE items SET name = name || ' renamed';
             UPDATE places SET path = path || '/moved' WHERE id % 3 = 0;",
        )
        .unwrap();
        let report = send(&a, &b, since);
        assert_eq!(n(&report, "quarantined"), 0, "{report}");
        assert_eq!(links(&b), links(&a), "{mode}");
        assert_eq!(
            scalar::<String>(&b, "PRAGMA integrity_check"),
            "ok",
            "{mode}"
        );
    }
}

/// A bulk apply does not look up keys above the largest one the table
/// holds (`merge::prepare`). A changeset that arrives again, whole, after
/// part of it was applied holds keys on both sides of that line: the rows
/// already here must be found, not inserted twice, and the rest land.
#[test]
fn a_changeset_that_arrives_again_after_part_of_it_applies_the_rest() {
    let (_dir, a, b) = two_libraries(&places_schema("id INTEGER PRIMARY KEY", "shared"));
    write_rows(&a);
    let part: Vec<u8> = a
        .query_row("SELECT lsync_changeset(0, ?1)", [ROWS], |r| r.get(0))
        .unwrap();
    let first: String = b
        .query_row("SELECT lsync_apply(?1)", [&part], |r| r.get(0))
        .unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let done = n(&first, "applied");
    assert!(done > 0 && done < 2 * ROWS, "{first}");
    let report = send(&a, &b, 0);
    assert_eq!(n(&report, "applied"), 2 * ROWS - done, "{report}");
    assert_eq!(n(&report, "stale"), done, "{report}");
    assert_eq!(n(&report, "quarantined"), 0, "{report}");
    assert_eq!(links(&b), links(&a));
    let again = send(&a, &b, 0);
    assert_eq!(n(&again, "applied"), 0, "{again}");
    assert_eq!(scalar::<String>(&b, "PRAGMA integrity_check"), "ok");
}
