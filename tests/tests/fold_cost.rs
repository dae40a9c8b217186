//! A fold's work is bounded by what changed since the one before, not by
//! the size of the table: the sidecar folds after every commit, so a fold
//! that reads the whole table makes each small commit cost a scan.
//! Measured in SQLite VM steps (a progress handler), which do not depend
//! on the machine or its load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lsync_tests::*;
use rusqlite::Connection;

/// VM steps of one `lsync_flush()` on `conn` (its own statements and the
/// ones the extension runs on the connection).
fn fold_steps(conn: &mut Connection) -> u64 {
    let steps = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&steps);
    conn.progress_handler(
        1,
        Some(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            false
        }),
    )
    .unwrap();
    flush(conn);
    conn.progress_handler(0, None::<fn() -> bool>).unwrap();
    steps.load(Ordering::Relaxed)
}

/// `rows` tags and files, folded; tag 'x' deleted and that folded too;
/// then one new row in each table and 'x' inserted again. Returns the VM
/// steps of folding those, and the ops left for 'x'.
fn fold_after_small_commit(rows: i64) -> (u64, Vec<String>) {
    let dir = TempDir::new();
    let mut conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(&format!(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
         INSERT INTO tags(uuid, name, n) SELECT 't-' || i, 'tag', i FROM c;
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
         INSERT INTO files(uuid, name, n) SELECT 'f-' || i, 'file', i FROM c;
         INSERT INTO tags(uuid, name, n) VALUES ('x', 'x', 0);"
    ))
    .unwrap();
    flush(&conn);
    conn.execute("DELETE FROM tags WHERE uuid = 'x'", [])
        .unwrap();
    flush(&conn);
    conn.execute_batch(
        "INSERT INTO tags(uuid, name, n) VALUES ('new-tag', 'n', 1), ('x', 'back', 2);
         INSERT INTO files(uuid, name, n) VALUES ('new-file', 'n', 1);",
    )
    .unwrap();
    let steps = fold_steps(&mut conn);
    let ops = changes(&conn, 0)
        .into_iter()
        .filter(|c| c.pk_text() == "x")
        .map(|c| c.op)
        .collect();
    (steps, ops)
}

#[test]
fn folding_a_small_commit_costs_the_same_in_a_large_table() {
    let (small, small_ops) = fold_after_small_commit(100);
    let (large, large_ops) = fold_after_small_commit(20_000);
    // The uuid deleted and inserted again is live: its tombstone is gone.
    assert_eq!(small_ops, ["insert"]);
    assert_eq!(large_ops, ["insert"]);
    // 200 times the rows, about the same work (a scan of 20,000 ids alone
    // is over 100,000 steps).
    assert!(
        large < small * 2,
        "folding 3 rows took {small} VM steps among 100 rows, {large} among 20,000"
    );
}

/// Times SQLite prepared the statements this connection keeps again.
fn reprepared(conn: &Connection) -> i64 {
    scalar(
        conn,
        "SELECT coalesce(sum(reprepared), 0) FROM lsync_statements",
    )
}

/// The fold looks up clock entries with `tbl = ?1`. SQLite 3.54 plans
/// again a statement whose plan looked at a bound value (an equality on a
/// parameter does) whenever its bindings are cleared, so clearing them
/// after each run had the fold of 2,000 scattered updates parse and plan
/// its lookup 2,000 times (three quarters of the fold's time).
#[test]
fn a_fold_of_scattered_updates_prepares_nothing_again() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)
         INSERT INTO files(uuid, name, n) SELECT 'f-' || i, 'file', i FROM c;",
    )
    .unwrap();
    flush(&conn);
    let id: i64 = scalar(&conn, "SELECT id FROM lsync_tables WHERE name = 'files'");
    assert_eq!(id, 1);
    conn.execute_batch("UPDATE files SET n = n + 1 WHERE id % 10 = 3")
        .unwrap();
    let before = reprepared(&conn);
    flush(&conn);
    let again = reprepared(&conn) - before;
    assert!(
        again < 20,
        "folding 2,000 updates prepared kept statements again {again} times"
    );
    // The fold did its work: each updated row is listed as updated.
    let updated: i64 = scalar(
        &conn,
        "SELECT count(*) FROM lsync_changes(0) WHERE tbl = 'files' AND op = 'update'",
    );
    assert!(updated >= 2000, "{updated}");
}
