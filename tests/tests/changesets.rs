//! Changesets (issue 3): export with `lsync_changeset`, apply with
//! `lsync_apply`, one test per semantic rule. Every test runs the real
//! `liblsync.so` on separate database files that joined one library, with
//! the example library schema (locations and entries device-owned, tags and
//! tag_assignments shared).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use lsync_tests::*;
use rusqlite::trace::{TraceEvent, TraceEventCodes};
use rusqlite::Connection;
use serde_json::Value as Json;

// ---------------------------------------------------------------- helpers

fn db_path(dir: &TempDir, i: usize) -> PathBuf {
    dir.path().join(format!("p{i}.db"))
}

/// `N` databases with the library schema tracked, all joined to the first
/// one's library.
fn peers<const N: usize>() -> (TempDir, [Connection; N]) {
    let dir = TempDir::new();
    let conns: [Connection; N] = std::array::from_fn(|i| {
        let c = open(&db_path(&dir, i));
        track_library(&c);
        c
    });
    let library = library_id(&conns[0]);
    for c in &conns[1..] {
        join_library(c, &library);
    }
    (dir, conns)
}

/// The changes after `since`, and the cursor to continue from.
fn changeset(c: &Connection, since: i64) -> (Vec<u8>, i64) {
    let blob: Vec<u8> = c
        .query_row("SELECT lsync_changeset(?1)", [since], |r| r.get(0))
        .expect("lsync_changeset");
    let to = info(c, &blob)["to"].as_i64().unwrap();
    (blob, to)
}

/// At most `max` changes after `since`, and the cursor to continue from.
fn changeset_max(c: &Connection, since: i64, max: i64) -> (Vec<u8>, i64) {
    let blob: Vec<u8> = c
        .query_row("SELECT lsync_changeset(?1, ?2)", [since, max], |r| r.get(0))
        .expect("lsync_changeset");
    let to = info(c, &blob)["to"].as_i64().unwrap();
    (blob, to)
}

fn info(c: &Connection, blob: &[u8]) -> Json {
    let s: String = c
        .query_row("SELECT lsync_changeset_info(?1)", [blob], |r| r.get(0))
        .expect("lsync_changeset_info");
    serde_json::from_str(&s).unwrap()
}

/// Applies a changeset and returns the report.
fn apply(c: &Connection, blob: &[u8]) -> Json {
    let s: String = c
        .query_row("SELECT lsync_apply(?1)", [blob], |r| r.get(0))
        .unwrap_or_else(|e| panic!("lsync_apply: {e}"));
    serde_json::from_str(&s).unwrap()
}

/// Applies a changeset that must be refused; returns the error message.
fn apply_error(c: &Connection, blob: &[u8]) -> String {
    match c.query_row("SELECT lsync_apply(?1)", [blob], |r| r.get::<_, String>(0)) {
        Ok(report) => panic!("lsync_apply accepted a bad changeset: {report}"),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) => m,
        Err(e) => e.to_string(),
    }
}

/// Everything `from` holds, applied at `to`.
fn sync(from: &Connection, to: &Connection) -> Json {
    apply(to, &changeset(from, 0).0)
}

fn rowid(c: &Connection, table: &str, uuid: &str) -> Option<i64> {
    c.query_row(
        &format!("SELECT id FROM {table} WHERE uuid = ?1"),
        [uuid],
        |r| r.get(0),
    )
    .ok()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sets the persisted HLC, so that the next local change gets `hlc + 1`
/// (as long as the wall clock is behind it).
fn set_hlc(c: &Connection, hlc: i64) {
    c.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'hlc'",
        [hlc],
    )
    .unwrap();
}

/// Every tracked table, keyed by uuid, FKs as uuids (local ids never leave a
/// device, so they are not compared).
fn canon(c: &Connection) -> Vec<Vec<String>> {
    library_by_uuid("path, name, total_size, created_at")
        .iter()
        .flat_map(|q| query_rows(c, q))
        .collect()
}

/// The tables and all of lsync's metadata, for "nothing changed" checks.
fn tables_and_metadata(c: &Connection) -> Vec<Vec<String>> {
    let mut out = canon(c);
    for q in [
        "SELECT * FROM lsync_clock ORDER BY seq",
        "SELECT * FROM lsync_config ORDER BY key",
        "SELECT * FROM lsync_devices ORDER BY idx",
        "SELECT * FROM lsync_deferred ORDER BY tbl, rid, col",
        "SELECT * FROM lsync_tables ORDER BY id",
        "SELECT * FROM lsync_dirty ORDER BY tbl, rid",
        "SELECT * FROM lsync_deleted ORDER BY tbl, uuid",
    ] {
        out.push(vec![q.to_owned()]);
        out.extend(query_rows(c, q));
    }
    out
}

/// The tables, the change clock and the deferred links: what a refused
/// change must not touch. (The HLC may still merge: the change was received.)
fn rows_and_clock(c: &Connection) -> Vec<Vec<String>> {
    let mut out = canon(c);
    out.extend(query_rows(c, "SELECT * FROM lsync_clock ORDER BY seq"));
    out.extend(query_rows(
        c,
        "SELECT * FROM lsync_deferred ORDER BY tbl, rid, col",
    ));
    out
}

/// `lsync_pending` as (tbl, pk, col, target, target_uuid) rows.
fn pending_links(c: &Connection) -> Vec<Vec<String>> {
    query_rows(
        c,
        "SELECT tbl, pk, col, target, target_uuid FROM lsync_pending ORDER BY tbl, pk, col",
    )
}

/// Runs `f` with every statement that starts running on `c` recorded
/// (SQLITE_TRACE_STMT fires for the statements the extension runs too, and
/// again each time a cached statement is reset and stepped).
fn traced<T>(c: &mut Connection, f: impl FnOnce(&Connection) -> T) -> (T, Vec<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    c.trace_v2(
        TraceEventCodes::SQLITE_TRACE_STMT,
        Some(move |e: TraceEvent<'_>| {
            if let TraceEvent::Stmt(_, sql) = e {
                sink.lock().unwrap().push(sql.to_owned());
            }
        }),
    )
    .unwrap();
    let out = f(c);
    c.trace_v2(
        TraceEventCodes::SQLITE_TRACE_STMT,
        None::<fn(TraceEvent<'_>)>,
    )
    .unwrap();
    let log = log.lock().unwrap().clone();
    (out, log)
}

/// The traced SELECTs that read one of `tables` (an app table, not lsync's
/// metadata): lookups by uuid or by id. Statements run from inside a
/// function are traced with a `-- ` prefix.
fn selects_on(log: &[String], tables: &[&str]) -> Vec<String> {
    log.iter()
        .filter(|sql| {
            let sql = sql.trim_start();
            let sql = sql.strip_prefix("--").unwrap_or(sql).trim_start();
            sql.to_ascii_uppercase().starts_with("SELECT")
        })
        .filter(|sql| {
            tables
                .iter()
                .any(|t| sql.contains(&format!("\"{t}\"")) || sql.contains(&format!(" {t} ")))
        })
        .cloned()
        .collect()
}

/// A location and a small tree of entries, written at `c`.
fn seed_tree(c: &Connection) {
    c.execute_batch(
        "INSERT INTO locations(uuid, path, name, total_size) VALUES ('L1', '/disk', 'disk', 100);
         INSERT INTO entries(uuid, parent_id, location_id, name, size, kind)
           VALUES ('E1', NULL, 1, 'root', 0, 1);
         INSERT INTO entries(uuid, parent_id, location_id, name, size, kind)
           VALUES ('E2', 1, 1, 'a.txt', 5, 0);",
    )
    .unwrap();
}

// ------------------------------------------------------ device-owned rows

#[test]
fn device_owned_rows_take_the_owners_state_as_is() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    let (c1, cur) = changeset(&a, 0);
    let r = apply(&b, &c1);
    assert_eq!((n(&r, "applied"), n(&r, "refused")), (3, 0), "{r}");
    assert_eq!(canon(&b), canon(&a));

    // Updates, including setting values to NULL, arrive as the owner's state.
    a.execute_batch(
        "UPDATE entries SET name = 'b.txt', size = NULL, mtime = 7 WHERE uuid = 'E2';
         UPDATE locations SET name = NULL, total_size = 200 WHERE uuid = 'L1';",
    )
    .unwrap();
    let (c2, cur) = changeset(&a, cur);
    let r = apply(&b, &c2);
    assert_eq!(n(&r, "applied"), 2, "{r}");
    assert_eq!(
        query_rows(
            &b,
            "SELECT name, size, mtime FROM entries WHERE uuid = 'E2'"
        ),
        [["b.txt", "NULL", "7"]]
    );
    assert_eq!(canon(&b), canon(&a));

    // The owner's delete removes the row at the peer.
    a.execute("DELETE FROM entries WHERE uuid = 'E2'", [])
        .unwrap();
    let (c3, _) = changeset(&a, cur);
    let r = apply(&b, &c3);
    assert_eq!(n(&r, "applied"), 1, "{r}");
    assert_eq!(rowid(&b, "entries", "E2"), None);
    assert_eq!(canon(&b), canon(&a));
}

#[test]
fn applied_device_owned_rows_cannot_be_changed_locally() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    sync(&a, &b);
    let owner = device_id(&a);
    let before = tables_and_metadata(&b);
    for sql in [
        "UPDATE entries SET name = 'mine' WHERE uuid = 'E2'",
        "UPDATE locations SET path = '/elsewhere'",
        "DELETE FROM entries WHERE uuid = 'E2'",
        "DELETE FROM locations",
    ] {
        let err = error_of(&b, sql);
        assert!(err.contains("owned by another device"), "{sql}: {err}");
    }
    assert_eq!(tables_and_metadata(&b), before);
    // The owner is A, as B's clock says.
    let origin = changes(&b, 0).into_iter().find(|c| c.pk_text() == "E2");
    assert_eq!(origin.map(|c| c.origin), Some(owner));
    // B may still add its own rows pointing at A's rows.
    b.execute(
        "INSERT INTO entries(uuid, parent_id, location_id, name) VALUES ('B1', ?1, ?2, 'b')",
        [
            rowid(&b, "entries", "E1").unwrap(),
            rowid(&b, "locations", "L1").unwrap(),
        ],
    )
    .unwrap();
}

/// A change to a device-owned row whose origin is not the row's owner is
/// refused. The honest way to produce one: two devices create a
/// device-owned row with the same uuid. A's row reached B first, so A owns
/// it at B; C's insert and later update and delete of "its" row are changes
/// to A's row made by C, and B refuses all three without touching the row.
#[test]
fn changes_to_device_owned_rows_from_a_non_owner_are_refused() {
    let (_dir, [a, b, c]) = peers();
    a.execute(
        "INSERT INTO locations(uuid, path, name) VALUES ('L1', '/a', 'from-a')",
        [],
    )
    .unwrap();
    sync(&a, &b);
    let before = rows_and_clock(&b);

    c.execute(
        "INSERT INTO locations(uuid, path, name) VALUES ('L1', '/c', 'from-c')",
        [],
    )
    .unwrap();
    let (c1, cur) = changeset(&c, 0);
    let r = apply(&b, &c1);
    assert_eq!((n(&r, "refused"), n(&r, "applied")), (1, 0), "{r}");
    c.execute("UPDATE locations SET name = 'still-c'", [])
        .unwrap();
    let (c2, cur) = changeset(&c, cur);
    let r = apply(&b, &c2);
    assert_eq!((n(&r, "refused"), n(&r, "applied")), (1, 0), "{r}");
    c.execute("DELETE FROM locations", []).unwrap();
    let (c3, _) = changeset(&c, cur);
    let r = apply(&b, &c3);
    assert_eq!((n(&r, "refused"), n(&r, "applied")), (1, 0), "{r}");
    assert_eq!(rows_and_clock(&b), before, "refused changes leave no trace");
    assert_eq!(
        query_rows(&b, "SELECT path, name FROM locations"),
        [["/a", "from-a"]]
    );
}

/// The same rule against a forged changeset: C received A's row and sends
/// an update (and a delete) of it under its own device id. lsync_apply has
/// no way to know who built the blob, so the only defence is the owner
/// check on the change's origin. The control (the same forged update with
/// A as origin) is applied, which shows the refusal is about the origin.
#[test]
fn forged_changes_to_another_devices_row_are_refused() {
    use lsync_wire::changeset::{Changeset, Op, DEFAULT_MAX_BODY};
    use lsync_wire::value::Value;

    let (_dir, [a, b, c]) = peers();
    seed_tree(&a);
    sync(&a, &b);
    sync(&b, &c);
    let (owner, forger) = (device_id(&a), device_id(&c));
    let forge = |origin: &str, op: Op| {
        let mut cs = Changeset::decode(&changeset(&c, 0).0, DEFAULT_MAX_BODY).unwrap();
        cs.changes.retain(|ch| ch.pk == Value::Text("E2".into()));
        assert_eq!(cs.changes.len(), 1);
        let ch = &mut cs.changes[0];
        ch.origin = origin.into();
        ch.op = op;
        ch.hlc += 1 << 20; // later than anything B has for the row
        for (col, v) in &mut ch.data {
            if &**col == "name" {
                *v = Value::Text("forged".into());
            }
        }
        if op == Op::Delete {
            ch.data.clear();
        }
        cs.encode().unwrap()
    };
    let before = rows_and_clock(&b);
    for op in [Op::Update, Op::Delete] {
        let r = apply(&b, &forge(&forger, op));
        assert_eq!((n(&r, "refused"), n(&r, "applied")), (1, 0), "{op:?}: {r}");
        assert_eq!(
            rows_and_clock(&b),
            before,
            "{op:?}: the row and its clock are unchanged"
        );
    }
    // Control: the same update, from the owner, is taken.
    let r = apply(&b, &forge(&owner, Op::Update));
    assert_eq!((n(&r, "refused"), n(&r, "applied")), (0, 1), "{r}");
    assert_eq!(
        query_rows(&b, "SELECT name FROM entries WHERE uuid = 'E2'"),
        [["forged"]]
    );
}

// ------------------------------------------------------------ shared rows

#[test]
fn concurrent_edits_to_different_columns_both_survive() {
    let (_dir, [a, b]) = peers();
    a.execute(
        "INSERT INTO tags(uuid, name, color) VALUES ('T1', 'n0', 'c0')",
        [],
    )
    .unwrap();
    sync(&a, &b);
    a.execute("UPDATE tags SET name = 'nA'", []).unwrap();
    b.execute("UPDATE tags SET color = 'cB'", []).unwrap();
    let (ca, _) = changeset(&a, 0);
    let (cb, _) = changeset(&b, 0);
    apply(&b, &ca);
    apply(&a, &cb);
    for (who, db) in [("A", &a), ("B", &b)] {
        assert_eq!(
            query_rows(db, "SELECT uuid, name, color FROM tags"),
            [["T1", "nA", "cB"]],
            "at {who}"
        );
    }
}

/// The HLC of the latest local change of `tags.name` for row `uuid`.
fn name_hlc(c: &Connection, uuid: &str) -> i64 {
    changes(c, 0)
        .into_iter()
        .filter(|ch| ch.tbl == "tags" && ch.pk_text() == uuid && ch.data.get("name").is_some())
        .map(|ch| ch.hlc)
        .max()
        .unwrap()
}

#[test]
fn concurrent_edits_to_one_column_converge_on_the_higher_hlc_then_origin() {
    let (_dir, [a, b]) = peers();
    a.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('T1', 'n0');
         INSERT INTO tags(uuid, name) VALUES ('T2', 'n0');",
    )
    .unwrap();
    sync(&a, &b);
    // lo has the smaller device id, hi the larger.
    let (lo, hi) = if device_id(&a) < device_id(&b) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let v = (now_ms() + 2_000) << 16;

    // T1: hi writes first (HLC v+1), lo later (v+11): the later write wins
    // although its origin is the smaller one.
    set_hlc(hi, v);
    hi.execute("UPDATE tags SET name = 'hi' WHERE uuid = 'T1'", [])
        .unwrap();
    set_hlc(lo, v + 10);
    lo.execute("UPDATE tags SET name = 'lo' WHERE uuid = 'T1'", [])
        .unwrap();
    assert_eq!(name_hlc(hi, "T1"), v + 1);
    assert_eq!(name_hlc(lo, "T1"), v + 11);

    // T2: both write at the same HLC: the larger origin wins.
    let w = v + 100;
    set_hlc(hi, w);
    set_hlc(lo, w);
    hi.execute("UPDATE tags SET name = 'hi' WHERE uuid = 'T2'", [])
        .unwrap();
    lo.execute("UPDATE tags SET name = 'lo' WHERE uuid = 'T2'", [])
        .unwrap();
    assert_eq!(name_hlc(hi, "T2"), w + 1);
    assert_eq!(name_hlc(lo, "T2"), w + 1);

    let (ca, _) = changeset(&a, 0);
    let (cb, _) = changeset(&b, 0);
    apply(&b, &ca);
    apply(&a, &cb);
    for (who, db) in [("lo", lo), ("hi", hi)] {
        assert_eq!(
            query_rows(db, "SELECT uuid, name FROM tags ORDER BY uuid"),
            [["T1", "lo"], ["T2", "hi"]],
            "at {who}"
        );
    }
}

/// All orders of a list of changesets.
fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for (i, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, *first);
            out.push(p);
        }
    }
    out
}

/// Applies `blobs` in every order, each to a fresh peer of `library`, and
/// returns the canonical dumps (with the order, for messages).
fn every_order(library: &str, blobs: &[Vec<u8>]) -> Vec<(Vec<usize>, Vec<Vec<String>>)> {
    let idx: Vec<usize> = (0..blobs.len()).collect();
    permutations(&idx)
        .into_iter()
        .map(|order| {
            let dir = TempDir::new();
            let p = open(&dir.db());
            track_library(&p);
            join_library(&p, library);
            for &i in &order {
                apply(&p, &blobs[i]);
            }
            let d = canon(&p);
            (order, d)
        })
        .collect()
}

#[test]
fn a_delete_wins_over_older_edits_in_any_order() {
    let (_dir, [a, b]) = peers();
    a.execute(
        "INSERT INTO tags(uuid, name, color) VALUES ('T1', 'n0', 'c0')",
        [],
    )
    .unwrap();
    let (c_ins, a_cur) = changeset(&a, 0);
    apply(&b, &c_ins);
    let b_cur = cursor(&b);
    // B edits (older), then A deletes (newer).
    b.execute("UPDATE tags SET name = 'edited'", []).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    a.execute("DELETE FROM tags", []).unwrap();
    let (c_edit, _) = changeset(&b, b_cur);
    let (c_del, _) = changeset(&a, a_cur);
    assert_eq!(info(&b, &c_edit)["count"], 1);
    assert_eq!(info(&a, &c_del)["ops"]["delete"], 1);

    apply(&a, &c_edit);
    apply(&b, &c_del);
    assert_eq!(
        count(&a, "tags"),
        0,
        "the older edit does not revive the row"
    );
    assert_eq!(
        count(&b, "tags"),
        0,
        "the newer delete removes the edited row"
    );

    for (order, d) in every_order(&library_id(&a), &[c_ins, c_edit, c_del]) {
        assert_eq!(d, canon(&a), "order {order:?}");
    }
}

#[test]
fn a_later_reinsert_wins_over_the_delete_in_any_order() {
    let (_dir, [a, b]) = peers();
    a.execute(
        "INSERT INTO tags(uuid, name, color) VALUES ('T1', 'n0', 'c0')",
        [],
    )
    .unwrap();
    let (c_ins, a_cur) = changeset(&a, 0);
    apply(&b, &c_ins);
    // A deletes the tag; B hears of it and later inserts it again, with the
    // same uuid.
    a.execute("DELETE FROM tags", []).unwrap();
    let (c_del, _) = changeset(&a, a_cur);
    apply(&b, &c_del);
    assert_eq!(count(&b, "tags"), 0);
    let b_cur = cursor(&b);
    std::thread::sleep(std::time::Duration::from_millis(5));
    b.execute(
        "INSERT INTO tags(uuid, name, color) VALUES ('T1', 'again', 'c1')",
        [],
    )
    .unwrap();
    let (c_again, _) = changeset(&b, b_cur);
    apply(&a, &c_again);
    // The delete arriving again (a duplicate, or late) changes nothing.
    apply(&b, &c_del);
    apply(&a, &c_del);
    for (who, db) in [("A", &a), ("B", &b)] {
        assert_eq!(
            query_rows(db, "SELECT uuid, name, color FROM tags"),
            [["T1", "again", "c1"]],
            "at {who}"
        );
    }
    for (order, d) in every_order(&library_id(&a), &[c_ins, c_del, c_again]) {
        assert_eq!(d, canon(&a), "order {order:?}");
    }
}

/// A column edit of a shared row can reach a peer before the row's insert
/// (changesets applied out of order, e.g. a later batch of a split
/// exchange). The row must still come out right when the table has a NOT
/// NULL column the edit does not carry (tags.name).
#[test]
fn an_edit_arriving_before_its_row_works_with_not_null_columns() {
    let (_dir, [a, b]) = peers();
    a.execute(
        "INSERT INTO tags(uuid, name, color) VALUES ('T1', 'n0', 'c0')",
        [],
    )
    .unwrap();
    let (c_ins, _) = changeset(&a, 0);
    apply(&b, &c_ins);
    let b_cur = cursor(&b);
    b.execute("UPDATE tags SET color = 'blue'", []).unwrap();
    let (c_edit, _) = changeset(&b, b_cur);
    apply(&a, &c_edit);
    for (order, d) in every_order(&library_id(&a), &[c_ins, c_edit]) {
        assert_eq!(d, canon(&a), "order {order:?}");
    }
}

/// A delete at A and a later edit of another column at B, exchanged as
/// usual: whatever the outcome, both sides must accept each other's
/// changeset and end up equal. tags.name is NOT NULL in the example schema
/// and B's edit does not carry it.
#[test]
fn a_delete_and_a_newer_edit_of_a_not_null_table_still_converge() {
    let (_dir, [a, b]) = peers();
    a.execute(
        "INSERT INTO tags(uuid, name, color) VALUES ('T1', 'n0', 'red')",
        [],
    )
    .unwrap();
    sync(&a, &b);
    a.execute("DELETE FROM tags", []).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    b.execute("UPDATE tags SET color = 'blue'", []).unwrap();
    let (ca, _) = changeset(&a, 0);
    let (cb, _) = changeset(&b, 0);
    let at_a = a.query_row("SELECT lsync_apply(?1)", [&cb], |r| r.get::<_, String>(0));
    let at_b = b.query_row("SELECT lsync_apply(?1)", [&ca], |r| r.get::<_, String>(0));
    assert!(
        at_a.is_ok() && at_b.is_ok(),
        "replication is stuck: B's edit at A: {at_a:?}; A's delete at B: {at_b:?}"
    );
    assert_eq!(canon(&a), canon(&b));
}

// ---------------------------------------------------- set-based FK lookups

#[test]
fn fk_lookups_are_one_query_per_fk_column_not_per_row() {
    let (_dir, [a, mut b]) = peers();
    a.execute_batch(
        "INSERT INTO locations(uuid, path) VALUES ('L1', '/disk');
         INSERT INTO entries(uuid, parent_id, location_id, name) VALUES ('ROOT', NULL, 1, 'root');",
    )
    .unwrap();
    let (c1, cur) = changeset(&a, 0);
    apply(&b, &c1);
    a.execute_batch(
        "WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < 500)
         INSERT INTO entries(uuid, parent_id, location_id, name, size)
           SELECT 'E' || n, 1, 1, 'file' || n, n FROM i;",
    )
    .unwrap();
    let (c2, _) = changeset(&a, cur);
    assert_eq!(info(&a, &c2)["count"], 500);

    let (r, log) = traced(&mut b, |b| apply(b, &c2));
    assert_eq!(n(&r, "applied"), 500, "{r}");
    assert_eq!(n(&r, "deferred"), 0, "{r}");
    assert!(
        n(&r, "fk_queries") <= 2,
        "two FK columns (parent_id, location_id): {r}"
    );
    // Independently of the report: the statements the apply ran.
    let lookups = selects_on(&log, &["entries", "locations"]);
    assert!(
        !lookups.is_empty(),
        "the trace sees the extension's statements"
    );
    assert!(
        lookups.len() < 20,
        "{} SELECTs on entries/locations for 500 rows: {:#?}",
        lookups.len(),
        &lookups[..lookups.len().min(10)]
    );
    let (root, loc) = (
        rowid(&b, "entries", "ROOT").unwrap(),
        rowid(&b, "locations", "L1").unwrap(),
    );
    let linked: i64 = b
        .query_row(
            "SELECT count(*) FROM entries WHERE parent_id = ?1 AND location_id = ?2",
            [root, loc],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(linked, 500);
    assert_eq!(canon(&b), canon(&a));
}

#[test]
fn export_turns_fk_ids_into_uuids_with_set_based_lookups() {
    let (_dir, [mut a]) = peers();
    a.execute_batch(
        "INSERT INTO locations(uuid, path) VALUES ('L1', '/disk');
         INSERT INTO entries(uuid, parent_id, location_id, name) VALUES ('ROOT', NULL, 1, 'root');",
    )
    .unwrap();
    let (_, cur) = changeset(&a, 0);
    a.execute_batch(
        "WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < 500)
         INSERT INTO entries(uuid, parent_id, location_id, name)
           SELECT 'E' || n, 1, 1, 'file' || n FROM i;",
    )
    .unwrap();
    flush(&a);
    let ((blob, _), log) = traced(&mut a, |a| changeset(a, cur));
    assert_eq!(info(&a, &blob)["count"], 500);
    let lookups = selects_on(&log, &["entries", "locations"]);
    assert!(
        !lookups.is_empty(),
        "the trace sees the extension's statements"
    );
    assert!(
        lookups.len() < 20,
        "{} SELECTs on entries/locations to export 500 rows: {:#?}",
        lookups.len(),
        &lookups[..lookups.len().min(10)]
    );
    let e1 = changes(&a, cur)
        .into_iter()
        .find(|c| c.pk_text() == "E1")
        .unwrap();
    assert_eq!(e1.data["parent_id"], "ROOT");
    assert_eq!(e1.data["location_id"], "L1");
}

/// The same rule for 16-byte BLOB uuids (which lsync supports as global
/// ids): mapping FK uuids to local ids, and finding the changed rows that
/// already exist, must not take one query per row either.
#[test]
fn fk_lookups_are_set_based_for_blob_uuids_too() {
    const SCHEMA: &str = "
      CREATE TABLE folders(id INTEGER PRIMARY KEY, uuid BLOB UNIQUE, name TEXT);
      CREATE TABLE docs(id INTEGER PRIMARY KEY, uuid BLOB UNIQUE,
        folder_id INTEGER REFERENCES folders(id), name TEXT);
      SELECT lsync_track('folders', 'device_owned');
      SELECT lsync_track('docs', 'device_owned');";
    let dir = TempDir::new();
    let a = open(&db_path(&dir, 0));
    let mut b = open(&db_path(&dir, 1));
    a.execute_batch(SCHEMA).unwrap();
    b.execute_batch(SCHEMA).unwrap();
    join_library(&b, &library_id(&a));
    a.execute_batch(
        "WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < 300)
         INSERT INTO folders(name) SELECT 'folder' || n FROM i;",
    )
    .unwrap();
    let (c1, cur) = changeset(&a, 0);
    apply(&b, &c1);
    // One doc per folder: 300 distinct FK targets, all already at B.
    a.execute_batch("INSERT INTO docs(folder_id, name) SELECT id, 'doc' || id FROM folders;")
        .unwrap();
    let (c2, cur) = changeset(&a, cur);
    let (r, log) = traced(&mut b, |b| apply(b, &c2));
    assert_eq!((n(&r, "applied"), n(&r, "deferred")), (300, 0), "{r}");
    let fk_lookups = selects_on(&log, &["folders"]);
    let reported = n(&r, "fk_queries");
    // Updates of 300 existing rows: finding them by uuid is set-based too.
    a.execute("UPDATE docs SET name = name || '!'", []).unwrap();
    let (c3, _) = changeset(&a, cur);
    let (r, log) = traced(&mut b, |b| apply(b, &c3));
    assert_eq!(n(&r, "applied"), 300, "{r}");
    // Lookups by uuid; reading a found row by its rowid before writing it
    // (to skip unchanged columns) is not a lookup.
    let row_lookups: Vec<String> = selects_on(&log, &["docs"])
        .into_iter()
        .filter(|sql| sql.contains("uuid"))
        .collect();
    assert!(
        fk_lookups.len() < 20 && row_lookups.len() < 20,
        "{} SELECTs on folders to map 300 FK uuids (the report says fk_queries = {reported}), \
         {} SELECTs on docs to find 300 existing rows: {:#?}",
        fk_lookups.len(),
        row_lookups.len(),
        [&fk_lookups[..3], &row_lookups[..3]]
    );
}

// ------------------------------------------------- format and cursors

#[test]
fn changeset_info_and_the_apply_report_describe_what_happened() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    a.execute("INSERT INTO tags(uuid, name) VALUES ('T1', 'one')", [])
        .unwrap();
    let (blob, to) = changeset(&a, 0);
    let i = info(&a, &blob);
    assert_eq!(i["format"], 2, "{i}");
    assert_eq!(i["library_id"], library_id(&a).as_str(), "{i}");
    assert_eq!(i["count"], 4, "{i}");
    assert_eq!(i["from"], 0, "{i}");
    assert_eq!(i["to"], to, "{i}");
    assert!(to >= 4, "{i}");
    assert_eq!(i["bytes"], blob.len(), "{i}");
    assert!(i["body_bytes"].as_i64().unwrap() > 0, "{i}");
    assert_eq!(
        i["tables"],
        serde_json::json!({"locations": 1, "entries": 2, "tags": 1})
    );
    assert_eq!(i["ops"], serde_json::json!({"insert": 4}));
    let max = changes(&a, 0).iter().map(|c| c.hlc).max().unwrap();
    assert_eq!(i["max_hlc"], max, "{i}");
    // Info reads the blob only: the receiver's info agrees.
    assert_eq!(info(&b, &blob), i);

    let r = apply(&b, &blob);
    for key in [
        "changes",
        "applied",
        "stale",
        "deferred",
        "resolved",
        "refused",
        "fk_queries",
    ] {
        assert!(r[key].is_i64(), "report has no '{key}': {r}");
    }
    assert_eq!((n(&r, "changes"), n(&r, "applied")), (4, 4), "{r}");
}

#[test]
fn chunks_of_max_changes_continue_where_the_last_one_ended() {
    let (_dir, [a, b, c]) = peers();
    seed_tree(&a);
    a.execute_batch(
        "WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < 40)
         INSERT INTO entries(uuid, parent_id, location_id, name) SELECT 'E' || (n + 2), 1, 1, 'f' || n FROM i;
         INSERT INTO tags(uuid, name) VALUES ('T1', 'one'), ('T2', 'two');
         INSERT INTO tag_assignments(uuid, tag_id, entry_id) VALUES ('X1', 1, 3), ('X2', 2, 4);
         UPDATE entries SET size = 1 WHERE id % 3 = 0;
         DELETE FROM tag_assignments WHERE uuid = 'X2';
         UPDATE tags SET color = 'red' WHERE uuid = 'T1';",
    )
    .unwrap();
    let (whole, _) = changeset(&a, 0);
    apply(&c, &whole);
    let (mut since, mut total, mut chunks) = (0, 0, 0);
    loop {
        let (blob, to) = changeset_max(&a, since, 7);
        let count = info(&a, &blob)["count"].as_i64().unwrap();
        assert!(count <= 7);
        if count == 0 {
            break;
        }
        assert!(to > since, "the cursor advances");
        apply(&b, &blob);
        (since, total, chunks) = (to, total + count, chunks + 1);
    }
    assert!(chunks > 5);
    assert_eq!(total, info(&a, &whole)["count"].as_i64().unwrap());
    assert_eq!(canon(&b), canon(&a));
    assert_eq!(canon(&c), canon(&a));
    let err = error_of(&a, "SELECT lsync_changeset(0, 0)");
    assert!(err.starts_with("lsync"), "{err}");
}

// ---------------------------------------------------------- deferred links

/// A: location L1, then directory D, then file F in D (cursor order L1, D,
/// F). Returns the changeset with L1 and D, and the one with F alone.
fn parents_and_child(a: &Connection) -> (Vec<u8>, Vec<u8>) {
    a.execute_batch(
        "INSERT INTO locations(uuid, path) VALUES ('L1', '/disk');
         INSERT INTO entries(uuid, parent_id, location_id, name, kind) VALUES ('D', NULL, 1, 'dir', 1);
         INSERT INTO entries(uuid, parent_id, location_id, name, kind) VALUES ('F', 1, 1, 'file', 0);",
    )
    .unwrap();
    let (parents, cur) = changeset_max(a, 0, 2);
    assert_eq!(info(a, &parents)["count"], 2);
    let (child, _) = changeset(a, cur);
    assert_eq!(info(a, &child)["count"], 1);
    (parents, child)
}

fn pending_f() -> Vec<Vec<String>> {
    vec![
        vec![
            "entries".into(),
            "F".into(),
            "location_id".into(),
            "locations".into(),
            "L1".into(),
        ],
        vec![
            "entries".into(),
            "F".into(),
            "parent_id".into(),
            "entries".into(),
            "D".into(),
        ],
    ]
}

#[test]
fn a_child_before_its_parents_is_deferred_then_completed() {
    let (_dir, [a, b]) = peers();
    let (parents, child) = parents_and_child(&a);
    let r = apply(&b, &child);
    assert_eq!((n(&r, "applied"), n(&r, "deferred")), (1, 2), "{r}");
    assert_eq!(
        query_rows(
            &b,
            "SELECT parent_id, location_id, name FROM entries WHERE uuid = 'F'"
        ),
        [["NULL", "NULL", "file"]]
    );
    assert_eq!(pending_links(&b), pending_f());

    let r = apply(&b, &parents);
    assert_eq!((n(&r, "applied"), n(&r, "resolved")), (2, 2), "{r}");
    let (d, l) = (
        rowid(&b, "entries", "D").unwrap(),
        rowid(&b, "locations", "L1").unwrap(),
    );
    assert_eq!(
        query_rows(
            &b,
            "SELECT parent_id, location_id FROM entries WHERE uuid = 'F'"
        ),
        [[d.to_string(), l.to_string()]]
    );
    assert!(pending_links(&b).is_empty());
    assert_eq!(canon(&b), canon(&a));
}

/// A local write to an FK column replaces the link still waiting for its
/// target (the `lsync_lnk_*` trigger); a write to other columns keeps it.
#[test]
fn a_local_write_to_an_fk_column_replaces_its_pending_link_only() {
    let (_dir, [a, b]) = peers();
    a.execute_batch(
        "INSERT INTO locations(uuid, path) VALUES ('L1', '/disk');
         INSERT INTO entries(uuid, location_id, name) VALUES ('E', 1, 'e');
         INSERT INTO tags(uuid, name) VALUES ('T', 't');",
    )
    .unwrap();
    let (_, cur) = changeset(&a, 0);
    a.execute_batch("INSERT INTO tag_assignments(uuid, tag_id, entry_id) VALUES ('TA', 1, 1);")
        .unwrap();
    let (assignment, _) = changeset(&a, cur);
    assert_eq!(n(&apply(&b, &assignment), "deferred"), 2);
    let cols = |c: &Connection| -> Vec<String> {
        pending_links(c).into_iter().map(|r| r[2].clone()).collect()
    };
    assert_eq!(cols(&b), ["entry_id", "tag_id"]);
    b.execute_batch("UPDATE tag_assignments SET created_at = 5 WHERE uuid = 'TA';")
        .unwrap();
    assert_eq!(cols(&b), ["entry_id", "tag_id"]);
    b.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('LOCAL', 'local');
         UPDATE tag_assignments SET tag_id = (SELECT id FROM tags WHERE uuid = 'LOCAL')
          WHERE uuid = 'TA';",
    )
    .unwrap();
    assert_eq!(cols(&b), ["entry_id"]);
}

#[test]
fn a_deferred_link_survives_a_restart() {
    let (dir, [a, b]) = peers();
    let (parents, child) = parents_and_child(&a);
    assert_eq!(n(&apply(&b, &child), "deferred"), 2);
    drop(b);
    let b = open(&db_path(&dir, 1));
    assert_eq!(pending_links(&b), pending_f());
    let r = apply(&b, &parents);
    assert_eq!(n(&r, "resolved"), 2, "{r}");
    assert_eq!(
        query_rows(
            &b,
            "SELECT parent_id, location_id FROM entries WHERE uuid = 'F'"
        ),
        [[
            rowid(&b, "entries", "D").unwrap().to_string(),
            rowid(&b, "locations", "L1").unwrap().to_string()
        ]]
    );
    assert!(pending_links(&b).is_empty());
}

#[test]
fn a_self_reference_in_the_same_changeset_is_completed_in_that_apply() {
    let (_dir, [a, b]) = peers();
    // The child gets the lower rowid (and cursor): its parent comes after it
    // in the same changeset.
    a.execute_batch(
        "BEGIN;
         PRAGMA defer_foreign_keys = ON;
         INSERT INTO locations(id, uuid, path) VALUES (1, 'L1', '/disk');
         INSERT INTO entries(id, uuid, parent_id, location_id, name) VALUES (1, 'CHILD', 2, 1, 'c');
         INSERT INTO entries(id, uuid, parent_id, location_id, name) VALUES (2, 'PARENT', NULL, 1, 'p');
         COMMIT;",
    )
    .unwrap();
    let (blob, _) = changeset(&a, 0);
    let r = apply(&b, &blob);
    assert_eq!(n(&r, "applied"), 3, "{r}");
    assert_eq!(n(&r, "deferred"), n(&r, "resolved"), "{r}");
    assert_eq!(
        query_rows(&b, "SELECT parent_id FROM entries WHERE uuid = 'CHILD'"),
        [[rowid(&b, "entries", "PARENT").unwrap().to_string()]]
    );
    assert!(pending_links(&b).is_empty());
    assert_eq!(canon(&b), canon(&a));
}

#[test]
fn a_pending_link_is_relayed_and_completed_at_the_next_peer() {
    let (_dir, [a, b, c]) = peers();
    let (parents, child) = parents_and_child(&a);
    apply(&b, &child);
    // B relays F while its links are pending: they travel as uuids, not NULL.
    let f = changes(&b, 0)
        .into_iter()
        .find(|ch| ch.pk_text() == "F")
        .unwrap();
    assert_eq!(f.data["parent_id"], "D");
    assert_eq!(f.data["location_id"], "L1");
    let r = sync(&b, &c);
    assert_eq!(n(&r, "deferred"), 2, "{r}");
    assert_eq!(pending_links(&c), pending_f());
    let r = apply(&c, &parents);
    assert_eq!(n(&r, "resolved"), 2, "{r}");
    assert_eq!(
        query_rows(
            &c,
            "SELECT parent_id, location_id FROM entries WHERE uuid = 'F'"
        ),
        [[
            rowid(&c, "entries", "D").unwrap().to_string(),
            rowid(&c, "locations", "L1").unwrap().to_string()
        ]]
    );
    assert_eq!(canon(&c), canon(&a));
}

/// A: tag T1 and assignment X -> T1. Returns (changeset with T1, changeset
/// with X alone).
fn tag_and_assignment(a: &Connection) -> (Vec<u8>, Vec<u8>) {
    a.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('T1', 'one');
         INSERT INTO tag_assignments(uuid, tag_id) VALUES ('X', 1);",
    )
    .unwrap();
    let (tag, cur) = changeset_max(a, 0, 1);
    assert_eq!(info(a, &tag)["tables"]["tags"], 1);
    let (x, _) = changeset(a, cur);
    assert_eq!(info(a, &x)["tables"]["tag_assignments"], 1);
    (tag, x)
}

/// A link waiting for its target belongs to the value it came with. When
/// the receiver writes that column itself later (a newer value, shared
/// table), the late target must not overwrite the newer value.
#[test]
fn a_newer_local_edit_of_a_deferred_column_is_not_overwritten_by_the_late_link() {
    let (_dir, [a, b]) = peers();
    let (tag, x) = tag_and_assignment(&a);
    assert_eq!(n(&apply(&b, &x), "deferred"), 1);
    b.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('T2', 'two');
         UPDATE tag_assignments SET tag_id = (SELECT id FROM tags WHERE uuid = 'T2')
           WHERE uuid = 'X';",
    )
    .unwrap();
    apply(&b, &tag);
    sync(&b, &a);
    sync(&a, &b);
    for (who, db) in [("A", &a), ("B", &b)] {
        assert_eq!(
            query_rows(
                db,
                "SELECT t.uuid FROM tag_assignments x JOIN tags t ON t.id = x.tag_id"
            ),
            [["T2"]],
            "at {who}: the newer local edit wins"
        );
    }
    assert_eq!(canon(&a), canon(&b));
}

/// A pending link is tied to its row, not to a rowid: when the receiver
/// deletes the row and a new row reuses the rowid, the late target must not
/// land in the new row.
#[test]
fn a_pending_link_of_a_deleted_row_does_not_land_in_a_row_that_reuses_its_rowid() {
    let (_dir, [a, b]) = peers();
    let (tag, x) = tag_and_assignment(&a);
    assert_eq!(n(&apply(&b, &x), "deferred"), 1);
    let x_rid = rowid(&b, "tag_assignments", "X").unwrap();
    b.execute_batch(
        "DELETE FROM tag_assignments WHERE uuid = 'X';
         INSERT INTO tag_assignments(uuid, tag_id) VALUES ('Y', NULL);",
    )
    .unwrap();
    assert_eq!(
        rowid(&b, "tag_assignments", "Y"),
        Some(x_rid),
        "rowid reused"
    );
    apply(&b, &tag);
    assert_eq!(
        query_rows(&b, "SELECT uuid, tag_id FROM tag_assignments"),
        [["Y", "NULL"]],
        "Y never pointed at T1"
    );
    sync(&b, &a);
    sync(&a, &b);
    assert_eq!(canon(&a), canon(&b));
}

// ------------------------------------------------ idempotent, order-free

/// Three changesets from two devices: inserts with FK chains, updates,
/// deletes and shared edits. Returns them and the two devices, after a full
/// exchange (so both hold the final state).
fn three_changesets() -> (TempDir, Connection, Vec<Vec<u8>>) {
    let (dir, [a, b]) = peers();
    a.execute_batch(
        "INSERT INTO locations(uuid, path) VALUES ('L1', '/disk');
         INSERT INTO entries(uuid, parent_id, location_id, name) VALUES ('R', NULL, 1, 'root');
         INSERT INTO entries(uuid, parent_id, location_id, name) VALUES ('F', 1, 1, 'f');
         INSERT INTO tags(uuid, name, color) VALUES ('T', 't', 'red');
         INSERT INTO tag_assignments(uuid, tag_id, entry_id) VALUES ('X', 1, 2);",
    )
    .unwrap();
    let (c1, a_cur) = changeset(&a, 0);
    apply(&b, &c1);
    let b_cur = cursor(&b);
    b.execute_batch(
        "UPDATE tags SET name = 't-b';
         INSERT INTO tags(uuid, name) VALUES ('T2', 'two');
         INSERT INTO tag_assignments(uuid, tag_id, entry_id)
           VALUES ('X2', (SELECT id FROM tags WHERE uuid = 'T2'),
                         (SELECT id FROM entries WHERE uuid = 'R'));",
    )
    .unwrap();
    let (c2, _) = changeset(&b, b_cur);
    a.execute_batch(
        "UPDATE entries SET size = 99 WHERE uuid = 'F';
         DELETE FROM tag_assignments WHERE uuid = 'X';
         UPDATE tags SET name = 't-a';
         INSERT INTO entries(uuid, parent_id, location_id, name) VALUES ('G', 2, 1, 'g');",
    )
    .unwrap();
    let (c3, _) = changeset(&a, a_cur);
    apply(&a, &c2);
    apply(&b, &c3);
    assert_eq!(canon(&a), canon(&b));
    drop(b);
    (dir, a, vec![c1, c2, c3])
}

#[test]
fn applying_a_changeset_twice_changes_nothing_the_second_time() {
    let (_dir, a, blobs) = three_changesets();
    let dir = TempDir::new();
    let p = open(&dir.db());
    track_library(&p);
    join_library(&p, &library_id(&a));
    for blob in &blobs {
        let first = apply(&p, blob);
        assert!(n(&first, "applied") > 0, "{first}");
        let tables = canon(&p);
        let meta = tables_and_metadata(&p);
        let second = apply(&p, blob);
        assert_eq!(n(&second, "applied"), 0, "{second}");
        assert_eq!(
            n(&second, "stale"),
            n(&second, "changes"),
            "every change is stale news: {second}"
        );
        assert_eq!(canon(&p), tables);
        assert_eq!(
            tables_and_metadata(&p)
                .into_iter()
                .filter(|r| r.first().map(String::as_str) != Some("hlc"))
                .collect::<Vec<_>>(),
            meta.into_iter()
                .filter(|r| r.first().map(String::as_str) != Some("hlc"))
                .collect::<Vec<_>>(),
            "a duplicate adds no metadata"
        );
    }
    assert_eq!(canon(&p), canon(&a));
}

#[test]
fn changesets_applied_in_any_order_give_the_same_tables() {
    let (_dir, a, blobs) = three_changesets();
    let expected = canon(&a);
    for (order, d) in every_order(&library_id(&a), &blobs) {
        assert_eq!(d, expected, "order {order:?}");
    }
}

// --------------------------------------------------------------- no echo

#[test]
fn applied_changes_keep_their_origin_and_hlc_and_are_relayed() {
    let (_dir, [a, b, c]) = peers();
    seed_tree(&a);
    a.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('T1', 'one');
         UPDATE tags SET color = 'red';",
    )
    .unwrap();
    let key = |ch: &Change| {
        (
            ch.tbl.clone(),
            ch.pk_text(),
            ch.op.clone(),
            ch.hlc,
            ch.origin.clone(),
            ch.data.to_string(),
        )
    };
    let mut at_a: Vec<_> = changes(&a, 0).iter().map(key).collect();
    at_a.sort();
    let b_cursor = cursor(&b);
    sync(&a, &b);
    assert_eq!(flush(&b), 0, "applying left no local captures behind");
    let mut at_b: Vec<_> = changes(&b, b_cursor).iter().map(key).collect();
    at_b.sort();
    assert_eq!(at_b, at_a, "B lists A's changes with A's origin and HLCs");
    assert!(changes(&b, 0).iter().all(|ch| ch.origin == device_id(&a)));

    // B relays them to C, still as A's.
    let r = sync(&b, &c);
    assert_eq!(n(&r, "applied"), n(&r, "changes"), "{r}");
    let mut at_c: Vec<_> = changes(&c, 0).iter().map(key).collect();
    at_c.sort();
    assert_eq!(at_c, at_a);
    assert_eq!(canon(&c), canon(&a));
    // A's device-owned rows arrived at C through B and belong to A there:
    // C may not write them, and its clock names A as their origin.
    let err = error_of(&c, "UPDATE entries SET name = 'x' WHERE uuid = 'E1'");
    assert!(err.contains("owned by another device"), "{err}");
    assert!(changes(&c, 0).iter().all(|ch| ch.origin == device_id(&a)));
}

#[test]
fn local_writes_pending_at_apply_time_stay_local() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    // Not folded into B's clock yet when A's rows arrive.
    b.execute("INSERT INTO locations(uuid, path) VALUES ('LB', '/b')", [])
        .unwrap();
    sync(&a, &b);
    let origins: Vec<(String, String)> = changes(&b, 0)
        .into_iter()
        .map(|c| (c.pk_text(), c.origin))
        .collect();
    for (pk, origin) in &origins {
        let want = if pk == "LB" {
            device_id(&b)
        } else {
            device_id(&a)
        };
        assert_eq!(origin, &want, "{pk}: {origins:?}");
    }
    b.execute("UPDATE locations SET name = 'mine' WHERE uuid = 'LB'", [])
        .unwrap();
    let err = error_of(&b, "UPDATE locations SET name = 'x' WHERE uuid = 'L1'");
    assert!(err.contains("owned by"), "{err}");
    sync(&b, &a);
    assert_eq!(canon(&a), canon(&b));
    let err = error_of(&a, "UPDATE locations SET name = 'x' WHERE uuid = 'LB'");
    assert!(err.contains("owned by"), "{err}");
}

#[test]
fn a_device_applying_its_own_changes_back_changes_nothing() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    a.execute("INSERT INTO tags(uuid, name) VALUES ('T1', 'one')", [])
        .unwrap();
    sync(&a, &b);
    let before = tables_and_metadata(&a);
    let r = sync(&b, &a);
    assert_eq!((n(&r, "applied"), n(&r, "refused")), (0, 0), "{r}");
    assert_eq!(tables_and_metadata(&a), before);
}

// -------------------------------------------------------------- HLC merge

#[test]
fn after_an_apply_the_local_hlc_is_above_every_applied_hlc() {
    let (dir, [a, b]) = peers();
    // A's clock runs 30 s ahead (within the allowed drift).
    set_hlc(&a, (now_ms() + 30_000) << 16);
    seed_tree(&a);
    let (blob, _) = changeset(&a, 0);
    let max = info(&a, &blob)["max_hlc"].as_i64().unwrap();
    assert!(
        max >> 16 > now_ms() + 20_000,
        "the changes carry A's fast clock"
    );
    apply(&b, &blob);
    let now: i64 = scalar(&b, "SELECT lsync_hlc_now()");
    assert!(now > max, "{now} <= {max}");
    // B's own next change sorts after A's.
    b.execute("INSERT INTO tags(uuid, name) VALUES ('T', 't')", [])
        .unwrap();
    flush(&b);
    let mine = changes(&b, 0)
        .into_iter()
        .find(|ch| ch.pk_text() == "T")
        .unwrap();
    assert!(mine.hlc > max);
    // And it stays merged after a restart.
    drop(b);
    let b = open(&db_path(&dir, 1));
    assert!(scalar::<i64>(&b, "SELECT lsync_hlc_now()") > max);
}

#[test]
fn a_changeset_too_far_ahead_is_refused_until_the_drift_limit_allows_it() {
    let (_dir, [a, b]) = peers();
    set_hlc(&a, (now_ms() + 3_600_000) << 16);
    seed_tree(&a);
    let (blob, _) = changeset(&a, 0);
    let before = tables_and_metadata(&b);
    let err = apply_error(&b, &blob);
    assert!(err.starts_with("lsync"), "{err}");
    assert!(err.contains("ahead"), "{err}");
    assert_eq!(
        tables_and_metadata(&b),
        before,
        "nothing applied, clock not merged"
    );

    b.execute(
        "UPDATE lsync_config SET value = 7200000 WHERE key = 'max_drift_ms'",
        [],
    )
    .unwrap();
    let r = apply(&b, &blob);
    assert_eq!(n(&r, "applied"), 3, "{r}");
    assert_eq!(canon(&b), canon(&a));
}

/// `lsync_drift` tells a changeset refused by the drift guard for now (the
/// sender's clock is ahead) from one refused for good, from the changeset
/// itself: how far ahead it is and when it will be accepted.
#[test]
fn lsync_drift_says_how_far_ahead_a_changeset_is_and_when_it_is_accepted() {
    let (dir, [a, b]) = peers();
    let drift = |c: &Connection, blob: &[u8]| -> Option<Json> {
        c.query_row("SELECT lsync_drift(?1)", [blob], |r| {
            r.get::<_, Option<String>>(0)
        })
        .expect("lsync_drift")
        .map(|s| serde_json::from_str(&s).unwrap())
    };
    seed_tree(&a);
    let (now, _) = changeset(&a, 0);
    assert_eq!(drift(&b, &now), None, "within the drift: accepted now");

    let ahead = now_ms() + 600_000;
    set_hlc(&a, ahead << 16);
    a.execute("UPDATE entries SET size = 6 WHERE uuid = 'E2'", [])
        .unwrap();
    let (blob, _) = changeset(&a, 0);
    let max = info(&a, &blob)["max_hlc"].as_i64().unwrap();
    let d = drift(&b, &blob).expect("held for drift");
    assert_eq!(d["max_hlc"], max, "{d}");
    assert_eq!(d["max_drift_ms"], 60_000, "{d}");
    assert_eq!(d["accept_at_ms"], (max >> 16) - 60_000 + 1, "{d}");
    let ahead_ms = d["ahead_ms"].as_i64().unwrap();
    assert!((599_000..=600_100).contains(&ahead_ms), "{d}");
    assert!(apply_error(&b, &blob).contains("ahead"));

    // Raising the drift lets it through.
    b.execute(
        "UPDATE lsync_config SET value = 700000 WHERE key = 'max_drift_ms'",
        [],
    )
    .unwrap();
    assert_eq!(drift(&b, &blob), None);

    // Refused for another reason first: that error, not a hold.
    let lone = open(&db_path(&dir, 9));
    track_library(&lone);
    let e = lone
        .query_row("SELECT lsync_drift(?1)", [&blob], |r| {
            r.get::<_, Option<String>>(0)
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lsync_drift: the changeset belongs to library"),
        "{e}"
    );
    // Beyond every clock: refused for good, never held.
    set_hlc(&a, 1 << 62);
    a.execute("UPDATE entries SET size = 7 WHERE uuid = 'E2'", [])
        .unwrap();
    let (far, _) = changeset(&a, 0);
    assert_eq!(drift(&b, &far), None);
    assert!(apply_error(&b, &far).contains("beyond the range"));
}

// -------------------------------------------------------------- bad input

/// Asserts that `blob` is refused with an lsync error containing `needle`,
/// and that the receiver is unchanged.
fn refused(c: &Connection, blob: &[u8], needle: &str) -> String {
    let before = tables_and_metadata(c);
    let err = apply_error(c, blob);
    assert!(err.starts_with("lsync"), "not an lsync error: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert_eq!(tables_and_metadata(c), before, "nothing applied for: {err}");
    err
}

#[test]
fn truncated_changesets_are_refused() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    let (blob, _) = changeset(&a, 0);
    for len in [0, 3, 5, 6, 10, 14, 20, blob.len() / 2, blob.len() - 1] {
        refused(&b, &blob[..len], "");
    }
}

#[test]
fn a_corrupted_byte_is_an_error_never_silently_different_data() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    a.execute(
        "INSERT INTO tags(uuid, name, color) VALUES (lsync_uuid(), 'tag', 'red')",
        [],
    )
    .unwrap();
    let (blob, _) = changeset(&a, 0);
    let expected = canon(&a);
    let before = tables_and_metadata(&b);
    let mut silent = Vec::new();
    for pos in 14..blob.len() {
        for flip in [0x01u8, 0x80] {
            let mut bad = blob.clone();
            bad[pos] ^= flip;
            b.execute_batch("BEGIN").unwrap();
            let outcome = b.query_row("SELECT lsync_apply(?1)", [&bad], |r| r.get::<_, String>(0));
            let got = canon(&b);
            b.execute_batch("ROLLBACK").unwrap();
            match outcome {
                Ok(_) if got != expected => silent.push((pos, flip)),
                Ok(_) => {}
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains("lsync"), "byte {pos}: {msg}");
                }
            }
        }
    }
    assert_eq!(tables_and_metadata(&b), before);
    assert!(
        silent.is_empty(),
        "{} of {} single-bit corruptions of the compressed part were applied as different \
         data without an error (byte, bit): {:?}",
        silent.len(),
        2 * (blob.len() - 14),
        &silent[..silent.len().min(12)]
    );
}

#[test]
fn a_wrong_format_version_is_refused() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    let (mut blob, _) = changeset(&a, 0);
    assert_eq!(info(&a, &blob)["format"], 2);
    blob[5] = 1;
    refused(&b, &blob, "format");
    blob[5] = 3;
    refused(&b, &blob, "format");
    let mut magic = changeset(&a, 0).0;
    magic[0] = b'X';
    refused(&b, &magic, "not an lsync changeset");
}

#[test]
fn a_changeset_from_another_library_is_refused() {
    let (_dir, [a]) = peers();
    seed_tree(&a);
    let (blob, _) = changeset(&a, 0);
    let dir = TempDir::new();
    let stranger = open(&dir.db());
    track_library(&stranger);
    refused(&stranger, &blob, "library");
}

#[test]
fn a_table_not_tracked_here_is_refused() {
    let (_dir, [a]) = peers();
    seed_tree(&a);
    a.execute("INSERT INTO tags(uuid, name) VALUES ('T1', 'one')", [])
        .unwrap();
    let (blob, _) = changeset(&a, 0);
    let dir = TempDir::new();
    let b = open(&dir.db());
    b.execute_batch(&library_schema()).unwrap();
    b.execute_batch(
        "SELECT lsync_track('locations', 'device_owned', '{\"local_columns\": [\"device_id\"]}');
         SELECT lsync_track('entries', 'device_owned');",
    )
    .unwrap();
    join_library(&b, &library_id(&a));
    let err = refused(&b, &blob, "tags");
    assert!(err.contains("schema mismatch"), "{err}");
    assert_eq!(count(&b, "entries"), 0, "not even the tracked tables' rows");
}

#[test]
fn a_column_missing_here_is_refused() {
    let (_dir, [a, b]) = peers();
    a.execute_batch(
        "ALTER TABLE tags ADD COLUMN note TEXT;
         SELECT lsync_track('tags', 'shared');
         INSERT INTO tags(uuid, name, note) VALUES ('T1', 'one', 'hello');",
    )
    .unwrap();
    seed_tree(&a);
    let (blob, _) = changeset(&a, 0);
    let err = refused(&b, &blob, "note");
    assert!(err.contains("schema mismatch"), "{err}");
}

/// A header, then zstd of `body`.
fn framed(claimed_len: u64, body: &[u8]) -> Vec<u8> {
    let mut blob = b"LSYNC".to_vec();
    blob.push(lsync_wire::changeset::FORMAT);
    blob.extend_from_slice(&claimed_len.to_le_bytes());
    blob.extend_from_slice(&zstd::bulk::compress(body, 3).unwrap());
    blob
}

#[test]
fn a_zstd_bomb_is_refused_without_inflating_it() {
    let (_dir, [a, b]) = peers();
    let zeros = vec![0u8; 64 << 20];
    // A lying header: claims 16 bytes.
    let started = std::time::Instant::now();
    refused(&b, &framed(16, &zeros), "");
    // A truthful header above the configured cap.
    b.execute(
        "INSERT OR REPLACE INTO lsync_config(key, value) VALUES ('max_changeset_bytes', 1048576)",
        [],
    )
    .unwrap();
    refused(&b, &framed(zeros.len() as u64, &zeros), "limit");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refusing took {:?}",
        started.elapsed()
    );
    // The cap applies to ordinary changesets too.
    seed_tree(&a);
    let (blob, _) = changeset(&a, 0);
    let body = info(&a, &blob)["body_bytes"].as_i64().unwrap();
    b.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'max_changeset_bytes'",
        [body - 1],
    )
    .unwrap();
    refused(&b, &blob, "limit");
    b.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'max_changeset_bytes'",
        [body],
    )
    .unwrap();
    assert_eq!(n(&apply(&b, &blob), "applied"), 3);
}

/// A header, then `body` in a zstd frame with its checksum, as lsync writes it.
fn framed_checked(body: &[u8]) -> Vec<u8> {
    let mut blob = b"LSYNC".to_vec();
    blob.push(lsync_wire::changeset::FORMAT);
    blob.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut z = zstd::bulk::Compressor::new(3).unwrap();
    z.include_checksum(true).unwrap();
    blob.extend_from_slice(&z.compress(body).unwrap());
    blob
}

/// A body's head: library id, from 0, to 0, no fence.
fn head_of_body() -> Vec<u8> {
    let mut body = vec![7u8; 16];
    body.extend_from_slice(&[0, 0, 0]);
    body
}

#[test]
fn lying_counts_are_refused_by_apply_and_info() {
    // Counts far beyond what the body holds once aborted the app: the
    // decoder allocated for them before reading the items (one class each
    // in wire/tests/bounded_decode.rs, with their memory measured).
    let (_dir, [b]) = peers();
    let origins = [head_of_body(), vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x20]].concat();
    let tables = [head_of_body(), vec![0, 0xff, 0xff, 0xff, 0x7f], vec![0; 64]].concat();
    for (body, claim) in [
        (origins, "it claims 1099511627776 origins"),
        (
            tables,
            "it claims 268435455 tables, but the 64 bytes left hold at most 21",
        ),
    ] {
        let blob = framed_checked(&body);
        let err = refused(&b, &blob, claim);
        assert!(
            err.starts_with("lsync_apply: changeset is truncated or corrupt"),
            "{err}"
        );
        assert!(err.ends_with("nothing was applied"), "{err}");
        let err = b
            .query_row("SELECT lsync_changeset_info(?1)", [&blob], |r| {
                r.get::<_, String>(0)
            })
            .expect_err("info of a lying changeset")
            .to_string();
        assert!(
            err.starts_with("lsync_changeset_info: changeset is"),
            "{err}"
        );
        assert!(err.contains(claim), "{err}");
    }
}

#[test]
fn a_well_formed_changeset_too_large_decoded_is_refused() {
    // 63 NULL columns a change: 75 bytes on the wire, 3 KiB decoded. Under a
    // body cap of 2 MiB the decoded changes may take 64 MiB: 2 MiB of such
    // changes (a few KB compressed) would take 80.
    let (_dir, [b]) = peers();
    b.execute(
        "INSERT OR REPLACE INTO lsync_config(key, value) VALUES ('max_changeset_bytes', 2097152)",
        [],
    )
    .unwrap();
    let mut body = head_of_body();
    body.extend_from_slice(&[1]);
    body.extend_from_slice(&[9; 16]);
    body.extend_from_slice(&[1, 1, b't', 6]);
    body.extend_from_slice(b"shared");
    body.push(63);
    for j in 0..63u8 {
        body.extend_from_slice(&[1, b'A' + j]);
    }
    let change: Vec<u8> = [&[0u8, 1, 2, 2, 0, 0][..], &[0xff; 8], &[0x7f], &[0; 63]].concat();
    let n = ((2 << 20) - body.len() - 4) / change.len();
    let mut varint = n;
    while varint >= 0x80 {
        body.push((varint as u8) | 0x80);
        varint >>= 7;
    }
    body.push(varint as u8);
    for _ in 0..n {
        body.extend_from_slice(&change);
    }
    let blob = framed_checked(&body);
    assert!(blob.len() < 32 << 10, "{} bytes", blob.len());
    let err = refused(&b, &blob, "decodes to more than 67108864 bytes in memory");
    assert!(err.ends_with("nothing was applied"), "{err}");
}

#[test]
fn null_and_non_blob_arguments_are_refused() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    sync(&a, &b);
    let before = tables_and_metadata(&b);
    for sql in [
        "SELECT lsync_apply(NULL)",
        "SELECT lsync_apply('LSYNC')",
        "SELECT lsync_apply(42)",
        "SELECT lsync_apply(x'')",
        "SELECT lsync_changeset_info(NULL)",
        "SELECT lsync_changeset_info('x')",
    ] {
        let err = error_of(&b, sql);
        assert!(err.starts_with("lsync"), "{sql}: {err}");
    }
    assert_eq!(tables_and_metadata(&b), before);
}

// ---------------------------------------------------------- atomic apply

#[test]
fn a_refused_change_leaves_nothing_of_itself_and_the_rest_applies() {
    let (_dir, [a, b]) = peers();
    // B has a rule A lacks: entry names are unique.
    b.execute_batch(
        "CREATE UNIQUE INDEX entries_name ON entries(name);
         INSERT INTO locations(uuid, path) VALUES ('BL', '/b');
         INSERT INTO entries(uuid, location_id, name) VALUES ('BZ', 1, 'z');",
    )
    .unwrap();
    a.execute_batch(
        "INSERT INTO locations(uuid, path) VALUES ('L1', '/disk');
         INSERT INTO entries(uuid, location_id, name) VALUES ('X', 1, 'x');
         INSERT INTO entries(uuid, location_id, name) VALUES ('Y', 1, 'y');",
    )
    .unwrap();
    let (good, cur) = changeset(&a, 0);
    a.execute(
        "INSERT INTO entries(uuid, location_id, name) VALUES ('Z', 1, 'z')",
        [],
    )
    .unwrap();
    let (bad, _) = changeset(&a, 0);
    assert_eq!(info(&a, &bad)["count"], 4);
    assert_eq!(info(&a, &changeset(&a, cur).0)["count"], 1);

    // Inside the caller's write statement SQLite allows no savepoint, so
    // the refused change cannot be set aside: the whole apply fails and
    // leaves nothing (`refused` compares every table and all metadata; B's
    // own pending captures are left as they are).
    b.execute("CREATE TABLE apply_log(report TEXT)", [])
        .unwrap();
    let before = tables_and_metadata(&b);
    let err = match b.execute("INSERT INTO apply_log SELECT lsync_apply(?1)", [&bad]) {
        Ok(_) => panic!("applied a changeset that cannot apply"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("UNIQUE") && err.contains("entries"), "{err}");
    assert_eq!(tables_and_metadata(&b), before);
    assert_eq!(count(&b, "apply_log"), 0);

    // A successful apply rolled back by the caller leaves nothing either.
    flush(&b);
    let before = tables_and_metadata(&b);
    b.execute_batch("BEGIN").unwrap();
    assert_eq!(n(&apply(&b, &good), "applied"), 3);
    b.execute_batch("ROLLBACK").unwrap();
    assert_eq!(tables_and_metadata(&b), before);

    // Inside the caller's transaction: the caller's own writes survive,
    // the refused change is quarantined and leaves nothing of itself, and
    // the rest of the changeset applies.
    b.execute_batch("BEGIN; INSERT INTO tags(uuid, name) VALUES ('BT', 'mine');")
        .unwrap();
    let report = apply(&b, &bad);
    assert_eq!(
        (n(&report, "applied"), n(&report, "quarantined")),
        (3, 1),
        "{report}"
    );
    b.execute_batch("COMMIT").unwrap();
    assert_eq!(query_rows(&b, "SELECT uuid FROM tags"), [["BT"]]);
    assert_eq!(rowid(&b, "entries", "Z"), None);
    assert!(rowid(&b, "entries", "Y").is_some());
    assert!(rowid(&b, "locations", "L1").is_some());
    let q = query_rows(&b, "SELECT tbl, uuid, op, error FROM lsync_conflicts");
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0][..3], ["entries", "Z", "insert"]);
    assert!(
        q[0][3].contains("UNIQUE constraint failed: entries.name"),
        "{q:?}"
    );
    assert!(
        changes(&b, 0).iter().all(|c| c.pk_text() != "Z"),
        "B relays only what it applied"
    );
}

// ------------------------------------- table and column names (issue 9)

/// `blob` with its body edited by `edit` and compressed again with its
/// checksum: changesets that `Changeset::encode` cannot produce.
fn with_body(blob: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = zstd::stream::decode_all(&blob[14..]).unwrap();
    edit(&mut body);
    let mut z = zstd::bulk::Compressor::new(3).unwrap();
    z.include_checksum(true).unwrap();
    let mut out = blob[..6].to_vec();
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&z.compress(&body).unwrap());
    out
}

/// Renames the one length-prefixed string `from` in a changeset body.
fn rename_in_body(body: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let needle: Vec<u8> = std::iter::once(from.len() as u8)
        .chain(from.bytes())
        .collect();
    let at: Vec<usize> = (0..body.len().saturating_sub(needle.len()))
        .filter(|&i| body[i..i + needle.len()] == needle[..])
        .collect();
    assert_eq!(
        at.len(),
        1,
        "'{from}' occurs {} times in the body",
        at.len()
    );
    body[at[0] + 1..at[0] + 1 + to.len()].copy_from_slice(to.as_bytes());
}

fn decoded(blob: &[u8]) -> lsync_wire::changeset::Changeset {
    lsync_wire::changeset::Changeset::decode(blob, lsync_wire::changeset::DEFAULT_MAX_BODY).unwrap()
}

/// SQLite matches table names without regard to letter case, so a
/// changeset naming `tags` as `TAGS` (a peer that declared its tables in
/// another case) applies to `tags`. It used to report `applied: 0` and drop
/// every change without an error.
#[test]
fn a_table_named_in_another_letter_case_is_applied_to_the_tracked_table() {
    let (_dir, [a, b]) = peers();
    seed_tree(&a);
    a.execute_batch(
        "INSERT INTO tags(uuid, name, color) VALUES ('T1', 'one', 'red'), ('T2', 'two', 'blue');
         INSERT INTO tag_assignments(uuid, tag_id, entry_id) VALUES ('A1', 1, 2), ('A2', 2, 1);",
    )
    .unwrap();
    let upper = |blob: &[u8]| {
        let mut cs = decoded(blob);
        for t in &mut cs.tables {
            t.name = t.name.to_uppercase();
        }
        for c in &mut cs.changes {
            c.tbl = c.tbl.to_uppercase().into();
        }
        cs.encode().unwrap()
    };
    let (blob, cur) = changeset(&a, 0);
    let r = apply(&b, &upper(&blob));
    assert_eq!((n(&r, "changes"), n(&r, "applied")), (7, 7), "{r}");
    assert_eq!(n(&r, "deferred"), 0, "FK targets found by their table: {r}");
    assert_eq!(canon(&b), canon(&a));
    // Edits and deletes too, and B relays them under its own spelling.
    a.execute_batch(
        "UPDATE tags SET color = 'green' WHERE uuid = 'T1';
         DELETE FROM tag_assignments WHERE uuid = 'A2';
         DELETE FROM tags WHERE uuid = 'T2';",
    )
    .unwrap();
    let r = apply(&b, &upper(&changeset(&a, cur).0));
    assert_eq!(n(&r, "applied"), 3, "{r}");
    assert_eq!(canon(&b), canon(&a));
    let relayed = decoded(&changeset(&b, 0).0);
    let names: Vec<&str> = relayed.tables.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"tags"), "{names:?}");
}

fn tags_desc(cs: &lsync_wire::changeset::Changeset) -> usize {
    cs.tables.iter().position(|t| t.name == "tags").unwrap()
}

/// A changeset that describes one table twice, the second time with its
/// columns in another order, is refused: the statements prepared for one
/// order used to be reused for the other, writing values into the wrong
/// columns. Also refused: the table twice in two letter cases, and one
/// column named twice in a description.
#[test]
fn a_table_described_twice_or_a_column_named_twice_is_refused() {
    let (_dir, [a, b]) = peers();
    a.execute_batch(
        "INSERT INTO tags(uuid, name, color) VALUES ('T1', 'one', 'red'), ('T2', 'two', 'blue');",
    )
    .unwrap();
    let blob = changeset(&a, 0).0;
    // T2 under a second description of `tags` (encoded as `tagz`, renamed
    // in the body), with its columns in the reverse order.
    let twice = |second_name: &str| {
        let mut cs = decoded(&blob);
        let mut second = cs.tables[tags_desc(&cs)].clone();
        second.name = "tagz".into();
        second.columns.reverse();
        cs.tables.push(second);
        for c in &mut cs.changes {
            if c.pk == lsync_wire::value::Value::Text("T2".into()) {
                c.tbl = "tagz".into();
            }
        }
        let to = second_name.to_owned();
        with_body(&cs.encode().unwrap(), |body| {
            rename_in_body(body, "tagz", &to)
        })
    };
    // Before the fix this applied, and T2 got name 'blue' and color 'two'.
    let err = refused(&b, &twice("tags"), "twice");
    assert!(err.contains("'tags'"), "{err}");
    let err = refused(&b, &twice("TAGS"), "twice");
    assert!(err.contains("schema"), "{err}");

    // One column named twice: `name` then `name` again (encoded `namz`).
    let mut cs = decoded(&blob);
    let i = tags_desc(&cs);
    cs.tables[i].columns.push("namz".into());
    for c in &mut cs.changes {
        c.data.push((
            "namz".into(),
            lsync_wire::value::Value::Text("other".into()),
        ));
    }
    let dup = with_body(&cs.encode().unwrap(), |body| {
        rename_in_body(body, "namz", "name")
    });
    assert_eq!(decoded(&dup).changes[0].data.len(), 3);
    refused(&b, &dup, "twice");
    // The control: the unchanged changeset applies.
    assert_eq!(n(&apply(&b, &blob), "applied"), 2);
    assert_eq!(canon(&b), canon(&a));
}

// ------------------------------------------------- fences and pruned deletes

/// Two peers, each with a row for the other in `lsync_peers`, and their
/// device ids.
fn known_pair() -> (TempDir, [Connection; 2], String, String) {
    let (dir, [a, b]) = peers();
    let (da, db) = (device_id(&a), device_id(&b));
    for (c, other) in [(&a, &db), (&b, &da)] {
        c.execute("INSERT INTO lsync_peers(device_id) VALUES (?1)", [other])
            .unwrap();
    }
    (dir, [a, b], da, db)
}

/// `c`'s changes from the start, exported for `receiver` (with a fence).
fn exported_for(c: &Connection, receiver: &str) -> Vec<u8> {
    c.query_row("SELECT lsync_changeset(0, NULL, ?1)", [receiver], |r| {
        r.get(0)
    })
    .unwrap()
}

/// A changeset exported for one device carries what its sender had applied
/// of that device's changes; applying it records that as the sender's ack,
/// capped at the receiver's newest cursor (a peer cannot hold changes that
/// were never made). Without `except_device` there is no fence.
#[test]
fn a_changeset_for_one_device_carries_its_senders_ack() {
    let (_dir, [a, b], da, db) = known_pair();
    a.execute("INSERT INTO tags(name) VALUES ('x'), ('y'), ('z')", [])
        .unwrap();
    b.execute(
        "UPDATE lsync_peers SET recv_cursor = 5 WHERE device_id = ?1",
        [&da],
    )
    .unwrap();
    b.execute("INSERT INTO tags(name) VALUES ('w')", [])
        .unwrap();
    let blob: Vec<u8> = b
        .query_row("SELECT lsync_changeset(0, NULL, ?1)", [&da], |r| r.get(0))
        .unwrap();
    let fence = &info(&b, &blob)["fence"];
    assert_eq!(fence["sender"], db.as_str(), "{fence}");
    assert_eq!(fence["receiver"], da.as_str(), "{fence}");
    assert_eq!(fence["acked"], 5, "{fence}");
    assert!(info(&b, &changeset(&b, 0).0)["fence"].is_null());
    apply(&a, &blob);
    let acked: i64 = a
        .query_row(
            "SELECT acked_cursor FROM lsync_peers WHERE device_id = ?1",
            [&db],
            |r| r.get(0),
        )
        .unwrap();
    let head: i64 = scalar(
        &a,
        "SELECT value - 1 FROM lsync_config WHERE key = 'next_seq'",
    );
    assert!(head < 5, "the test needs a head below the claim: {head}");
    assert_eq!(acked, head, "b claimed 5; a's newest cursor is {head}");
}

/// After a prune, a changeset read before its sender had applied the pruned
/// delete is refused whole (it holds the deleted row's insert), and one read
/// after is applied.
#[test]
fn a_changeset_read_before_a_pruned_delete_is_refused() {
    let (_dir, [a, b], da, _) = known_pair();
    b.execute("INSERT INTO tags(uuid, name) VALUES ('T1', 'one')", [])
        .unwrap();
    let stale = exported_for(&b, &da);
    apply(&a, &stale);
    a.execute("DELETE FROM tags WHERE uuid = 'T1'", []).unwrap();
    // b applies a's delete and says so in its next changeset.
    let (del, to) = changeset(&a, 0);
    apply(&b, &del);
    b.execute(
        "UPDATE lsync_peers SET recv_cursor = ?2 WHERE device_id = ?1",
        rusqlite::params![da, to],
    )
    .unwrap();
    apply(&a, &exported_for(&b, &da));
    assert_eq!(scalar::<i64>(&a, "SELECT lsync_prune()"), 1);
    let err = refused(&a, &stale, "is stale");
    assert!(err.contains("nothing was applied"), "{err}");
    assert_eq!(count(&a, "tags"), 0);
    apply(&a, &exported_for(&b, &da));
    assert_eq!(count(&a, "tags"), 0);
}

/// A full resync from a peer (`lsync_peer_reset`) pulls its changes again
/// from 0, but what was applied stays applied: the fence of our changesets
/// must not fall with the cursor. It did (the fence was `recv_cursor`): a
/// peer that had pruned on our earlier ACK then refused every changeset of
/// ours as stale, and with both sides reset neither could move; the
/// partition test once ended with 257 deleted rows live again that way.
#[test]
fn a_full_resync_does_not_make_our_changesets_stale() {
    let (_dir, [a, b], da, _) = known_pair();
    a.execute("INSERT INTO tags(uuid, name) VALUES ('T1', 'one')", [])
        .unwrap();
    a.execute("DELETE FROM tags WHERE uuid = 'T1'", []).unwrap();
    // b applies a's changes, delete included, and says so.
    let (del, to) = changeset(&a, 0);
    apply(&b, &del);
    let received = |c: &Connection, peer: &str, cursor: i64| -> i64 {
        c.query_row(
            "SELECT lsync_peer_received(?1, ?2, 1)",
            rusqlite::params![peer, cursor],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(received(&b, &da, to), to);
    apply(&a, &exported_for(&b, &da));
    assert_eq!(scalar::<i64>(&a, "SELECT lsync_prune()"), 1);
    // b starts a over; its next changeset still holds a's delete applied.
    let cursor: i64 = b
        .query_row("SELECT lsync_peer_reset(?1)", [&da], |r| r.get(0))
        .unwrap();
    assert_eq!(cursor, 0);
    b.execute("INSERT INTO tags(uuid, name) VALUES ('T2', 'two')", [])
        .unwrap();
    let report = apply(&a, &exported_for(&b, &da));
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert_eq!(count(&a, "tags"), 1);
    // The resync itself: a's changes from 0 again, then b moves on.
    apply(&b, &changeset(&a, 0).0);
    assert_eq!(received(&b, &da, to), to);
    assert_eq!(count(&b, "tags"), 1, "T1 stays deleted at b");
}

/// Issue 9.2: where SQLite enforces no FK (`foreign_keys` is OFF, as in the
/// `sqlite3` shell and Python), a local delete leaves rows pointing at the
/// deleted row's rowid. The next row that takes that rowid must not become
/// their target: the reference is detached at once (NULL, with a link to
/// the deleted row's uuid), and gets its FK's action at the next apply, as
/// a peer applies it when the delete arrives (issue 11: the default action
/// is delete-wins, so the assignment goes with its tag).
#[test]
fn a_reused_rowid_never_becomes_the_target_of_an_old_reference() {
    let (_dir, [a, b]) = peers();
    a.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    a.execute("INSERT INTO tags(uuid, name) VALUES ('OLD', 'old')", [])
        .unwrap();
    let old = a.last_insert_rowid();
    a.execute(
        "INSERT INTO tag_assignments(uuid, tag_id) VALUES ('A1', ?1)",
        [old],
    )
    .unwrap();
    let (first, to) = changeset(&a, 0);
    apply(&b, &first);
    a.execute("DELETE FROM tags WHERE id = ?1", [old]).unwrap();
    a.execute("INSERT INTO tags(uuid, name) VALUES ('NEW', 'new')", [])
        .unwrap();
    assert_eq!(a.last_insert_rowid(), old, "the test needs a reused rowid");
    let points_at_new: i64 = scalar(
        &a,
        "SELECT count(*) FROM tag_assignments t JOIN tags x ON x.id = t.tag_id WHERE x.uuid = 'NEW'",
    );
    assert_eq!(points_at_new, 0, "A1 took the new tag as its target");
    let link: String = scalar(&a, "SELECT target_uuid FROM lsync_pending WHERE pk = 'A1'");
    assert_eq!(link, "OLD");
    let report = apply(&b, &changeset(&a, to).0);
    assert_eq!(n(&report, "cascaded"), 1, "{report}");
    assert_eq!(
        rowid(&b, "tag_assignments", "A1"),
        None,
        "A1 went with its tag"
    );
    // B's removal travels back (or A's next apply removes it itself).
    apply(&a, &changeset(&b, 0).0);
    assert_eq!(rowid(&a, "tag_assignments", "A1"), None);
    assert_eq!(canon(&a), canon(&b));
    assert_eq!(
        count(&b, "lsync_pending"),
        0,
        "no link waits for a deleted row"
    );
}
