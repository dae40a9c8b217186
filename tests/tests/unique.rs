//! Issue 11, rule 1: rows of a shared table that hold the same values in a
//! UNIQUE index merge into one, the earliest created, on every replica and
//! whatever order the changes arrive in. Real `liblsync.so`, separate
//! database files in one library.

use lsync_tests::*;
use rusqlite::Connection;
use serde_json::Value as Json;

const SCHEMA: &str = "
CREATE TABLE entries(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT UNIQUE, color TEXT);
CREATE TABLE tag_assignments(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  tag_id INTEGER REFERENCES tags(id), entry_id INTEGER REFERENCES entries(id),
  UNIQUE (tag_id, entry_id));
SELECT lsync_track('entries', 'shared');
SELECT lsync_track('tags', 'shared');
SELECT lsync_track('tag_assignments', 'shared');
";

/// `n` databases with `SCHEMA`, all in the first one's library.
fn devices(n: usize) -> (TempDir, Vec<Connection>) {
    let dir = TempDir::new();
    let mut out: Vec<Connection> = Vec::new();
    for i in 0..n {
        let c = open(&dir.path().join(format!("d{i}.db")));
        if let Some(first) = out.first() {
            join_library(&c, &library_id(first));
        }
        c.execute_batch(SCHEMA).unwrap();
        out.push(c);
    }
    (dir, out)
}

fn export(from: &Connection, since: i64) -> Vec<u8> {
    from.query_row("SELECT lsync_changeset(?1)", [since], |r| r.get(0))
        .unwrap()
}

fn import(to: &Connection, blob: &[u8]) -> Json {
    let report: String = to
        .query_row("SELECT lsync_apply(?1)", [blob], |r| r.get(0))
        .unwrap_or_else(|e| panic!("lsync_apply: {e}"));
    serde_json::from_str(&report).unwrap()
}

/// Everything `from` has, applied at `to`; the report.
fn deliver(from: &Connection, to: &Connection) -> Json {
    import(to, &export(from, 0))
}

/// Every pair, both ways, twice: what a mesh of sidecars does.
fn sync_all(cs: &[&Connection]) {
    for _ in 0..2 {
        for a in cs {
            for b in cs {
                if !std::ptr::eq(*a, *b) {
                    deliver(a, b);
                }
            }
        }
    }
}

/// The tables by uuid, FKs as the target's uuid: what replicas compare.
fn dump(c: &Connection) -> Vec<Vec<String>> {
    [
        "SELECT 'E', uuid, name FROM entries ORDER BY uuid",
        "SELECT 'T', uuid, name, color FROM tags ORDER BY uuid",
        "SELECT 'A', a.uuid, t.uuid, e.uuid FROM tag_assignments a
           LEFT JOIN tags t ON t.id = a.tag_id LEFT JOIN entries e ON e.id = a.entry_id
         ORDER BY a.uuid",
    ]
    .iter()
    .flat_map(|q| query_rows(c, q))
    .collect()
}

fn tick() {
    std::thread::sleep(std::time::Duration::from_millis(3));
}

fn quarantined(c: &Connection) -> i64 {
    scalar(c, "SELECT count(*) FROM lsync_conflicts")
}

fn tags(c: &Connection) -> Vec<Vec<String>> {
    query_rows(c, "SELECT uuid, name, color FROM tags ORDER BY name")
}

fn new_tag(c: &Connection, uuid: &str, name: &str, color: &str) {
    c.execute(
        "INSERT INTO tags(uuid, name, color) VALUES (?1, ?2, ?3)",
        [uuid, name, color],
    )
    .unwrap();
    // The fold gives the row its creation clock: the order of these calls
    // is the order of creation (a clock tick apart).
    tick();
    flush(c);
}

fn pair_up(c: &Connection, uuid: &str, tag: &str, entry: &str) {
    c.execute(
        "INSERT INTO tag_assignments(uuid, tag_id, entry_id)
         VALUES (?1, (SELECT id FROM tags WHERE uuid = ?2), (SELECT id FROM entries WHERE uuid = ?3))",
        [uuid, tag, entry],
    )
    .unwrap();
    tick();
    flush(c);
}

/// The assignments as (assignment, tag, entry) uuids.
fn assignments(c: &Connection) -> Vec<Vec<String>> {
    query_rows(
        c,
        "SELECT a.uuid, t.uuid, e.uuid FROM tag_assignments a
           JOIN tags t ON t.id = a.tag_id JOIN entries e ON e.id = a.entry_id
         ORDER BY a.uuid",
    )
}

/// Two devices create a tag 'red': after a sync both ways there is one,
/// with the earlier one's uuid and the colour written last; the loser's
/// referrers point at it, and nothing is quarantined.
#[test]
fn two_devices_create_the_same_tag_and_get_one() {
    let (_dir, d) = devices(2);
    let (a, b) = (&d[0], &d[1]);
    a.execute_batch("INSERT INTO entries(uuid, name) VALUES ('E1', 'one'), ('E2', 'two')")
        .unwrap();
    deliver(a, b);
    new_tag(a, "TA", "red", "#a00");
    new_tag(b, "TB", "red", "#b00");
    pair_up(a, "AA", "TA", "E1");
    pair_up(b, "AB", "TB", "E2");
    let report = deliver(a, b);
    assert_eq!(n(&report, "merged"), 1, "{report}");
    // B sends the merged row: A has nothing to merge.
    deliver(b, a);
    for c in [a, b] {
        assert_eq!(tags(c), [["TA", "red", "#b00"]]);
        assert_eq!(
            assignments(c),
            [["AA", "TA", "E1"], ["AB", "TA", "E2"]],
            "the loser's referrers point at the winner"
        );
        assert_eq!(quarantined(c), 0);
    }
    sync_all(&[a, b]);
    assert_eq!(dump(a), dump(b));
    assert_eq!(
        query_rows(b, "SELECT uuid, winner FROM lsync_alias"),
        [["TB", "TA"]]
    );
}

/// A third device that had only the loser edits it: the edit lands on the
/// winner everywhere, and the third device merges too when the winner
/// reaches it.
#[test]
fn an_edit_addressed_to_the_loser_lands_on_the_winner() {
    let (_dir, d) = devices(3);
    let (a, b, c) = (&d[0], &d[1], &d[2]);
    new_tag(a, "TA", "red", "#a00");
    new_tag(b, "TB", "red", "#b00");
    deliver(b, c);
    // A merges B's tag; C has only B's, and edits it.
    deliver(b, a);
    assert_eq!(tags(a), [["TA", "red", "#b00"]]);
    let since = cursor(c);
    c.execute_batch("UPDATE tags SET color = '#c00' WHERE uuid = 'TB'")
        .unwrap();
    let report = import(a, &export(c, since));
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert_eq!(tags(a), [["TA", "red", "#c00"]]);
    // C learns of A's tag and merges its own into it.
    deliver(a, c);
    assert_eq!(tags(c), [["TA", "red", "#c00"]]);
    sync_all(&[a, b, c]);
    for x in [b, c] {
        assert_eq!(dump(x), dump(a));
    }
    for x in [a, b, c] {
        assert_eq!(quarantined(x), 0);
    }
}

/// The same pair assigned on both devices becomes one assignment: the
/// join table's UNIQUE (tag_id, entry_id) compares local ids, after the
/// tags themselves merged.
#[test]
fn the_same_pair_assigned_on_two_devices_becomes_one() {
    let (_dir, d) = devices(2);
    let (a, b) = (&d[0], &d[1]);
    a.execute_batch("INSERT INTO entries(uuid, name) VALUES ('E1', 'one')")
        .unwrap();
    new_tag(a, "TA", "red", "#a00");
    deliver(a, b);
    // The same pair on the same tag.
    pair_up(a, "AA", "TA", "E1");
    pair_up(b, "AB", "TA", "E1");
    // And the same pair on two tags that merge.
    new_tag(a, "GA", "green", "#0a0");
    new_tag(b, "GB", "green", "#0b0");
    pair_up(b, "GAB", "GB", "E1");
    pair_up(a, "GAA", "GA", "E1");
    deliver(a, b);
    deliver(b, a);
    for c in [a, b] {
        assert_eq!(
            assignments(c),
            [["AA", "TA", "E1"], ["GAB", "GA", "E1"]],
            "one assignment per pair, the earliest"
        );
        assert_eq!(quarantined(c), 0);
    }
    sync_all(&[a, b]);
    assert_eq!(dump(a), dump(b));
}

/// A rename that collides with a name another device has just created:
/// the earlier-created row wins, the rename's other columns merge in.
#[test]
fn a_rename_onto_an_existing_name_merges_the_two() {
    let (_dir, d) = devices(2);
    let (a, b) = (&d[0], &d[1]);
    new_tag(a, "BLUE", "blue", "#00f");
    a.execute_batch("INSERT INTO entries(uuid, name) VALUES ('E1', 'one')")
        .unwrap();
    deliver(a, b);
    new_tag(a, "GREEN", "green", "#0f0");
    pair_up(a, "AG", "GREEN", "E1");
    b.execute_batch("UPDATE tags SET name = 'green', color = '#0b0' WHERE uuid = 'BLUE'")
        .unwrap();
    flush(b);
    let report = deliver(b, a);
    assert_eq!(n(&report, "merged"), 1, "{report}");
    // A sends the merged row, under the winner's id: B has it already.
    deliver(a, b);
    for c in [a, b] {
        assert_eq!(tags(c), [["BLUE", "green", "#0b0"]]);
        assert_eq!(assignments(c), [["AG", "BLUE", "E1"]]);
        assert_eq!(quarantined(c), 0);
    }
    sync_all(&[a, b]);
    assert_eq!(dump(a), dump(b));
}

/// All orderings of k items.
fn orders(k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for p in orders(k - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, k - 1);
            out.push(q);
        }
    }
    out
}

/// Three devices each create 'red' (and 'blue' on two of them), assign
/// it, and edit the other's; every order of their changesets, applied to
/// a fresh replica, gives the same dump, which is also what the three
/// reach by syncing.
#[test]
fn three_devices_converge_whatever_the_order() {
    let (dir, d) = devices(3);
    let (a, b, c) = (&d[0], &d[1], &d[2]);
    a.execute_batch("INSERT INTO entries(uuid, name) VALUES ('E1', 'one'), ('E2', 'two')")
        .unwrap();
    let base = export(a, 0);
    import(b, &base);
    import(c, &base);
    let since: Vec<i64> = d.iter().map(cursor).collect();
    new_tag(b, "RB", "red", "#b00");
    new_tag(a, "RA", "red", "#a00");
    new_tag(c, "RC", "red", "#c00");
    new_tag(c, "BC", "blue", "#00c");
    new_tag(a, "BA", "blue", "#00a");
    pair_up(a, "XA", "RA", "E1");
    pair_up(b, "XB", "RB", "E1");
    pair_up(c, "XC", "RC", "E2");
    pair_up(c, "YC", "BC", "E1");
    a.execute_batch("UPDATE tags SET color = '#a11' WHERE uuid = 'BA'")
        .unwrap();
    flush(a);
    let sets: Vec<Vec<u8>> = d.iter().zip(&since).map(|(x, s)| export(x, *s)).collect();
    let mut seen: Option<Vec<Vec<String>>> = None;
    for (i, order) in orders(3).iter().enumerate() {
        let r = open(&dir.path().join(format!("p{i}.db")));
        join_library(&r, &library_id(a));
        r.execute_batch(SCHEMA).unwrap();
        import(&r, &base);
        for k in order {
            import(&r, &sets[*k]);
        }
        assert_eq!(quarantined(&r), 0, "order {order:?}");
        let got = dump(&r);
        match &seen {
            None => seen = Some(got),
            Some(first) => assert_eq!(&got, first, "order {order:?}"),
        }
    }
    let expected = seen.unwrap();
    // The earliest 'red' (B's) and 'blue' (C's) win; colours are the last
    // written; the pair (red, E1) is assigned once, by A, the earliest.
    let t: Vec<&Vec<String>> = expected.iter().filter(|r| r[0] == "T").collect();
    assert_eq!(
        t,
        [
            &vec!["T", "BC", "blue", "#a11"],
            &vec!["T", "RB", "red", "#c00"]
        ]
    );
    let x: Vec<&Vec<String>> = expected.iter().filter(|r| r[0] == "A").collect();
    assert_eq!(
        x,
        [
            &vec!["A", "XA", "RB", "E1"],
            &vec!["A", "XC", "RB", "E2"],
            &vec!["A", "YC", "BC", "E1"]
        ]
    );
    sync_all(&[a, b, c]);
    for x in [a, b, c] {
        assert_eq!(dump(x), expected);
        assert_eq!(quarantined(x), 0);
    }
}
