//! Applies that the merge speeds up, checked for what they must still do.
//!
//! - `lsync_apply` merges 16,384 changes at a time. Into a table that was
//!   empty when the apply began, a later chunk does not look up keys the
//!   apply has not inserted (`merge::Fresh`): its changes to rows an
//!   earlier chunk inserted must still find them.
//! - The rows of a bulk update share one clock entry, and the merge keeps
//!   the last one it read (`Clock::row_clock`): a second change to a row in
//!   the same changeset must meet the first one's clock, not the entry's.

use lsync_tests::*;
use lsync_wire::changeset::{Change, Changeset, Op, DEFAULT_MAX_BODY};
use lsync_wire::value::Value;
use rusqlite::Connection;

/// More entries than one chunk of an apply holds (`CHUNK_CHANGES`).
const ROWS: i64 = 20_000;
const CHUNK: usize = 16_384;

/// Two library databases in one library, the first with `ROWS` entries.
fn bulk_pair(dir: &TempDir) -> (Connection, Connection) {
    let (_, a) = library_db(dir.path(), "a");
    let (_, b) = library_db(dir.path(), "b");
    join_library(&b, &library_id(&a));
    index_tree(&a, "bulk", ROWS);
    (a, b)
}

fn decoded_since(c: &Connection, since: i64) -> Changeset {
    let blob: Vec<u8> = c
        .query_row("SELECT lsync_changeset(?1)", [since], |r| r.get(0))
        .unwrap();
    Changeset::decode(&blob, DEFAULT_MAX_BODY).unwrap()
}

fn apply_cs(c: &Connection, cs: &Changeset) -> serde_json::Value {
    let r: String = c
        .query_row("SELECT lsync_apply(?1)", [cs.encode().unwrap()], |r| {
            r.get(0)
        })
        .unwrap();
    serde_json::from_str(&r).unwrap()
}

/// The change to entry `name` in `cs`.
fn entry_change<'a>(cs: &'a Changeset, name: &str) -> &'a Change {
    cs.changes
        .iter()
        .find(|c| {
            &*c.tbl == "entries"
                && c.data
                    .iter()
                    .any(|(k, v)| &**k == "name" && *v == Value::Text(name.into()))
        })
        .unwrap_or_else(|| panic!("no change to {name}"))
}

/// `c` as a later change of its row: `op`, `ticks` later, with `name`.
fn later(c: &Change, op: Op, ticks: i64, name: &str) -> Change {
    let mut c = c.clone();
    c.op = op;
    c.hlc += ticks;
    for (k, v) in &mut c.data {
        if &**k == "name" {
            *v = Value::Text(name.into());
        }
    }
    if op == Op::Delete {
        c.data.clear();
    }
    c
}

fn name_of(c: &Connection, uuid: &Value) -> Option<String> {
    c.query_row(
        "SELECT name FROM entries WHERE uuid = ?1",
        [uuid.as_str().expect("a text uuid")],
        |r| r.get(0),
    )
    .ok()
}

#[test]
fn a_later_chunk_finds_the_rows_an_earlier_chunk_inserted() {
    let dir = TempDir::new();
    let (a, b) = bulk_pair(&dir);
    let mut cs = decoded_since(&a, 0);
    // Entries 3000 and 5000 are leaves, inserted in the first chunk; their
    // edit and delete go last, into the second.
    let (edited, deleted) = (
        entry_change(&cs, "bulk-3000"),
        entry_change(&cs, "bulk-5000"),
    );
    let at = |c: &Change| cs.changes.iter().position(|x| x.pk == c.pk).unwrap();
    assert!(
        at(edited) < CHUNK && at(deleted) < CHUNK,
        "in the first chunk"
    );
    let (edit, delete) = (
        later(edited, Op::Update, 1 << 20, "renamed"),
        later(deleted, Op::Delete, 1 << 20, ""),
    );
    cs.changes.extend([edit.clone(), delete.clone()]);
    assert!(
        cs.changes.len() > CHUNK + 2,
        "the edits are in a later chunk"
    );

    let r = apply_cs(&b, &cs);
    assert_eq!(n(&r, "quarantined"), 0, "{r}");
    assert_eq!(n(&r, "applied"), n(&r, "changes"), "{r}");
    assert_eq!(name_of(&b, &edit.pk).as_deref(), Some("renamed"));
    assert_eq!(name_of(&b, &delete.pk), None, "the row is deleted");
    let count: i64 = scalar(&b, "SELECT count(*) FROM entries");
    assert_eq!(count, ROWS - 1);
    // Children in later chunks point at parents inserted in earlier ones.
    let roots: i64 = scalar(&b, "SELECT count(*) FROM entries WHERE parent_id IS NULL");
    assert_eq!(roots, 1, "only the root has no parent");
    // Applied again, nothing is new: every change finds its row, or its
    // tombstone, whatever chunk it is in.
    let again = apply_cs(&b, &cs);
    assert_eq!(n(&again, "applied"), 0, "{again}");
    assert_eq!(n(&again, "quarantined"), 0, "{again}");
}

#[test]
fn a_second_change_to_a_row_in_one_changeset_meets_the_first() {
    let dir = TempDir::new();
    let (a, b) = bulk_pair(&dir);
    let inserted = decoded_since(&a, 0);
    apply_cs(&b, &inserted);
    let since = cursor(&a);
    a.execute("UPDATE entries SET size = size + 1", []).unwrap();
    let mut cs = decoded_since(&a, since);
    assert_eq!(cs.changes.len() as i64, ROWS, "one update per entry");
    // After the bulk update of its row (the newest state), an older state
    // of entry 7: newer than its insert, older than the update.
    let insert = entry_change(&inserted, "bulk-7").hlc;
    let update = entry_change(&cs, "bulk-7").clone();
    assert!(update.hlc > insert + 1);
    let mut older = later(&update, Op::Update, 0, "older");
    older.hlc = insert + 1;
    // In the same chunk, while the run of updates that holds it is pending.
    let at = cs.changes.iter().position(|c| c.pk == update.pk).unwrap();
    cs.changes.insert(at + 100, older);

    let r = apply_cs(&b, &cs);
    assert_eq!(n(&r, "stale"), 1, "{r}");
    assert_eq!(n(&r, "applied"), ROWS, "{r}");
    assert_eq!(name_of(&b, &update.pk).as_deref(), Some("bulk-7"));
    let sizes: i64 = scalar(&b, "SELECT sum(size) FROM entries");
    let want: i64 = scalar(&a, "SELECT sum(size) FROM entries");
    assert_eq!(sizes, want);
}

/// Every entry as (uuid, name, its parent's uuid), by uuid.
fn tree(c: &Connection) -> Vec<Vec<String>> {
    query_rows(
        c,
        "SELECT e.uuid, e.name, p.uuid FROM entries AS e
           LEFT JOIN entries AS p ON p.id = e.parent_id ORDER BY e.uuid",
    )
}

/// A bulk apply merges its chunks without a savepoint each
/// (`merge::merge_unsaved`). A change refused in a later chunk takes all of
/// it back, and the apply runs again chunk by chunk: the change alone is
/// quarantined, and every other row lands once, linked as at the source.
#[test]
fn a_change_refused_in_a_later_chunk_is_quarantined_alone_and_the_rest_lands_once() {
    let dir = TempDir::new();
    let (a, b) = bulk_pair(&dir);
    let cs = decoded_since(&a, 0);
    let refused = entry_change(&cs, "bulk-19000");
    let at = cs.changes.iter().position(|x| x.pk == refused.pk).unwrap();
    assert!(at > CHUNK, "in the second chunk");
    // A constraint of B's own that A's row breaks.
    b.execute_batch(
        "CREATE UNIQUE INDEX entries_name ON entries(name);
         INSERT INTO locations(path, name) VALUES ('/mnt/b', 'b');
         INSERT INTO entries(location_id, name) VALUES (1, 'bulk-19000');",
    )
    .unwrap();

    let r = apply_cs(&b, &cs);
    assert_eq!(n(&r, "quarantined"), 1, "{r}");
    assert_eq!(n(&r, "applied"), n(&r, "changes") - 1, "{r}");
    assert_eq!(
        query_rows(&b, "SELECT tbl, uuid FROM lsync_conflicts"),
        [[
            "entries".to_string(),
            refused.pk.as_str().unwrap().to_string()
        ]]
    );
    let theirs: Vec<Vec<String>> = tree(&a)
        .into_iter()
        .filter(|r| r[1] != "bulk-19000")
        .collect();
    let (own, mine): (Vec<Vec<String>>, Vec<Vec<String>>) =
        tree(&b).into_iter().partition(|r| r[1] == "bulk-19000");
    assert_eq!(mine.len(), theirs.len(), "each row once");
    assert_eq!(mine, theirs);
    assert_eq!(own.len(), 1, "B's own row stays");
    assert_ne!(own[0][0], refused.pk.as_str().unwrap());
    assert_eq!(scalar::<String>(&b, "PRAGMA integrity_check"), "ok");
    // What was taken back left no clock of its own: applied again, every
    // change but the refused one finds its row.
    let again = apply_cs(&b, &cs);
    assert_eq!(n(&again, "applied"), 0, "{again}");
}

/// Keys that do not rise turn a fresh table from "the last key inserted"
/// to the set of its keys, read back from the table (`merge::Fresh`): a
/// later chunk must still find every row an earlier one inserted, those
/// of the batch not yet written when the keys stopped rising included.
#[test]
fn keys_out_of_order_are_found_in_later_chunks() {
    let dir = TempDir::new();
    let (a, b) = bulk_pair(&dir);
    let mut cs = decoded_since(&a, 0);
    // Siblings swapped two by two: each first of a pair is below the key
    // before it, and its parent is there, so it goes into a batch.
    let parent = |c: &Change| {
        c.data
            .iter()
            .find(|(k, _)| &**k == "parent_id")
            .map(|(_, v)| v.clone())
    };
    let mut i = 0;
    while i + 1 < cs.changes.len() {
        let (x, y) = (&cs.changes[i], &cs.changes[i + 1]);
        if &*x.tbl == "entries"
            && &*y.tbl == "entries"
            && parent(x).is_some()
            && parent(x) == parent(y)
        {
            cs.changes.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
    let first = entry_change(&cs, "bulk-1");
    let at = cs.changes.iter().position(|x| x.pk == first.pk).unwrap();
    assert!(at < 4, "the first pair out of order");
    // An edit of it, last, in the second chunk.
    let edit = later(first, Op::Update, 1 << 20, "renamed");
    cs.changes.push(edit.clone());
    assert!(cs.changes.len() > CHUNK);

    let r = apply_cs(&b, &cs);
    assert_eq!(n(&r, "quarantined"), 0, "{r}");
    assert_eq!(n(&r, "applied"), n(&r, "changes"), "{r}");
    assert_eq!(name_of(&b, &edit.pk).as_deref(), Some("renamed"));
    let mut theirs = tree(&a);
    for row in &mut theirs {
        if row[0] == edit.pk.as_str().unwrap() {
            row[1] = "renamed".into();
        }
    }
    assert_eq!(tree(&b), theirs, "each row once, linked as at A");
    let again = apply_cs(&b, &cs);
    assert_eq!(n(&again, "applied"), 0, "{again}");
}

/// Every entry as (uuid, name, parent's uuid, size, mtime), by uuid.
fn rows(c: &Connection) -> Vec<Vec<String>> {
    query_rows(
        c,
        "SELECT e.uuid, e.name, p.uuid, e.size, e.mtime FROM entries AS e
           LEFT JOIN entries AS p ON p.id = e.parent_id ORDER BY e.uuid",
    )
}

/// A bulk apply finds the rows of its changes by walking the index on
/// their ids in order (`merge::walk`). Ids of rows that are not here lie
/// between those that are (each third row, and a run of 50); updates of
/// scattered rows leave many rows of the index between two ids (the walk
/// seeks again). Each change must meet its own row. (An id the walk missed
/// would cost a pass without batches, which finds the row by a probe: the
/// outcome is the same, so this test catches rows mistaken, not missed.)
#[test]
fn updates_find_their_rows_among_rows_missing_and_rows_passed_over() {
    let dir = TempDir::new();
    let (a, b) = bulk_pair(&dir);
    let mut cs = decoded_since(&a, 0);
    let held_back = |c: &Change| {
        c.data.iter().any(|(k, v)| {
            let number = v
                .as_str()
                .and_then(|s| s.strip_prefix("bulk-"))
                .and_then(|s| s.parse::<i64>().ok());
            &**k == "name" && number.is_some_and(|k| k % 3 == 1 || (10_000..10_050).contains(&k))
        })
    };
    cs.changes.retain(|c| !held_back(c));
    let r = apply_cs(&b, &cs);
    assert_eq!(n(&r, "quarantined"), 0, "{r}");
    let missing = scalar::<i64>(&a, "SELECT count(*) FROM entries")
        - scalar::<i64>(&b, "SELECT count(*) FROM entries");
    assert!(missing > ROWS / 3, "{missing} rows not at B");

    // Every row updated: B has two of three, and not a run of 50.
    let head: i64 = scalar(&a, "SELECT lsync_head()");
    a.execute("UPDATE entries SET size = size + 1", []).unwrap();
    let r = apply_cs(&b, &decoded_since(&a, head));
    assert_eq!(n(&r, "quarantined"), 0, "{r}");
    assert_eq!(rows(&b), rows(&a), "each row once, as at A");

    // One row in 50 updated: the walk passes over 49 rows between two.
    let head: i64 = scalar(&a, "SELECT lsync_head()");
    a.execute("UPDATE entries SET mtime = mtime + 7 WHERE id % 50 = 0", [])
        .unwrap();
    let cs = decoded_since(&a, head);
    assert!(cs.changes.len() as i64 >= ROWS / 50, "{}", cs.changes.len());
    let r = apply_cs(&b, &cs);
    assert_eq!(n(&r, "quarantined"), 0, "{r}");
    assert_eq!(n(&r, "applied"), cs.changes.len() as i64, "{r}");
    assert_eq!(rows(&b), rows(&a), "each row once, as at A");
    assert_eq!(scalar::<String>(&b, "PRAGMA integrity_check"), "ok");
}

/// A changeset of more than one chunk raises the page cache while it
/// applies (`pagecache`); the connection's own setting comes back after,
/// whether the apply succeeds or a later chunk is refused.
#[test]
fn a_bulk_apply_puts_the_page_cache_back() {
    let dir = TempDir::new();
    let (a, b) = bulk_pair(&dir);
    let cs = decoded_since(&a, 0);
    assert!(cs.changes.len() > CHUNK);
    b.execute_batch("PRAGMA cache_size = -3000").unwrap();
    let r = apply_cs(&b, &cs);
    assert_eq!(n(&r, "applied"), n(&r, "changes"), "{r}");
    assert_eq!(scalar::<i64>(&b, "PRAGMA cache_size"), -3000);
    // Refused in its second chunk (a negative HLC): put back all the same.
    let (_, c) = library_db(dir.path(), "c");
    join_library(&c, &library_id(&a));
    c.execute_batch("PRAGMA cache_size = 500").unwrap();
    let mut bad = cs.clone();
    bad.changes[CHUNK + 1].hlc = -1;
    let refused = c.query_row("SELECT lsync_apply(?1)", [bad.encode().unwrap()], |r| {
        r.get::<_, String>(0)
    });
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(scalar::<i64>(&c, "SELECT count(*) FROM entries"), 0);
    assert_eq!(scalar::<i64>(&c, "PRAGMA cache_size"), 500);
}
