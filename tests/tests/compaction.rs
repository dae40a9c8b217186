//! Device-owned clock ranges that scattered updates split are compacted by
//! the fold when that pays: the metadata stays small, the rows are sent
//! again once (idempotently), and nothing is lost or brought back.

use lsync_tests::*;
use rusqlite::Connection;

const FILES: &str =
    "CREATE TABLE files(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, n INTEGER);
     SELECT lsync_track('files', 'device_owned');";

/// Inserts files 1..=n (one range entry once folded).
fn insert_files(c: &Connection, n: i64) {
    c.execute(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
         INSERT INTO files(name, n) SELECT 'f' || i, 0 FROM k",
        [n],
    )
    .unwrap();
    flush(c);
}

/// Row entries of `files` in the clock.
fn row_entries(c: &Connection) -> i64 {
    scalar(
        c,
        "SELECT count(*) FROM lsync_clock WHERE lo IS NOT NULL AND col IS NULL",
    )
}

fn files_dump(c: &Connection) -> Vec<Vec<String>> {
    query_rows(c, "SELECT uuid, name, n FROM files ORDER BY uuid")
}

#[test]
fn half_the_rows_updated_at_random_are_compacted_and_sent_again_once() {
    let (_dir, a, b) = two_libraries(FILES);
    insert_files(&a, 10_000);
    send(&a, &b, 0);
    let exported = cursor(&a);
    // Every other row, so no two updated rows are adjacent.
    a.execute("UPDATE files SET n = 1 WHERE id % 2 = 0", [])
        .unwrap();
    flush(&a);
    // Split, this would be 10,000 entries; compacted, one per window of
    // 4096 rows.
    assert!(row_entries(&a) <= 3, "{} entries", row_entries(&a));
    // The peer that had the inserts gets every row once more, each once.
    let again = changes(&a, exported);
    assert_eq!(again.len(), 10_000);
    let mut pks: Vec<String> = again.iter().map(Change::pk_text).collect();
    pks.sort();
    pks.dedup();
    assert_eq!(pks.len(), 10_000);
    // Sent again, they are newer than the peer's copies: applied, and the
    // peer's clock is as compact as ours.
    send(&a, &b, exported);
    assert_eq!(files_dump(&a), files_dump(&b));
    assert!(row_entries(&b) <= 3, "{} entries at b", row_entries(&b));
    // A change after the compaction still wins at the peer.
    a.execute("UPDATE files SET n = 2 WHERE id = 5", [])
        .unwrap();
    flush(&a);
    let before = cursor(&b);
    let report = send(&a, &b, cursor(&a) - 1);
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert_eq!(files_dump(&a), files_dump(&b));
    assert!(cursor(&b) > before);
}

#[test]
fn a_few_scattered_updates_only_split_the_range() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(FILES).unwrap();
    insert_files(&c, 10_000);
    let exported = cursor(&c);
    c.execute("UPDATE files SET n = 1 WHERE id IN (10, 500, 9000)", [])
        .unwrap();
    flush(&c);
    // Not worth sending 10,000 rows again: the three rows go alone.
    assert_eq!(row_entries(&c), 7);
    assert_eq!(changes(&c, exported).len(), 3);
}

#[test]
fn a_compacted_changeset_arriving_after_a_delete_brings_nothing_back() {
    let (_dir, a, b) = two_libraries(FILES);
    insert_files(&a, 5000);
    send(&a, &b, 0);
    let exported = cursor(&a);
    a.execute("UPDATE files SET n = 1 WHERE id % 2 = 1", [])
        .unwrap();
    flush(&a);
    assert!(row_entries(&a) <= 2, "{} entries", row_entries(&a));
    let compacted: Vec<u8> = a
        .query_row("SELECT lsync_changeset(?1)", [exported], |r| r.get(0))
        .unwrap();
    let before_delete = cursor(&a);
    a.execute("DELETE FROM files WHERE id BETWEEN 100 AND 199", [])
        .unwrap();
    flush(&a);
    // The delete arrives first, the older compacted state after it.
    send(&a, &b, before_delete);
    let report: String = b
        .query_row("SELECT lsync_apply(?1)", [&compacted], |r| r.get(0))
        .unwrap();
    assert!(report.contains("\"stale\":100"), "{report}");
    assert_eq!(files_dump(&a), files_dump(&b));
    assert_eq!(count(&b, "files"), 4900);
}

/// A database of metadata version 12 had two indexes of all clock entries;
/// it gets one index per kind of entry, and its clock keeps working.
#[test]
fn a_version_12_clock_gets_its_indexes_replaced() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    c.execute_batch(FILES).unwrap();
    insert_files(&c, 100);
    c.execute_batch(
        "DROP INDEX lsync_clock_row;
         DROP INDEX lsync_clock_col;
         CREATE INDEX lsync_clock_cover ON lsync_clock(tbl, col, lo) WHERE lo IS NOT NULL;
         CREATE INDEX lsync_clock_rid ON lsync_clock(tbl, lo) WHERE lo IS NOT NULL;
         UPDATE lsync_config SET value = 12 WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(c);
    let c = open(&dir.db());
    c.execute("UPDATE files SET n = 1 WHERE id = 50", [])
        .unwrap();
    flush(&c);
    let indexes = query_rows(
        &c,
        "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'lsync_clock' ORDER BY name",
    );
    assert_eq!(
        indexes,
        [
            ["lsync_clock_col"],
            ["lsync_clock_row"],
            ["lsync_clock_tomb"]
        ]
    );
    assert_eq!(
        scalar::<i64>(
            &c,
            "SELECT value FROM lsync_config WHERE key = 'schema_version'"
        ),
        current_schema_version()
    );
    assert_eq!(row_entries(&c), 3);
    assert_eq!(changes(&c, 0).len(), 100);
}

/// At a relay, compaction covers only the relay's own rows: the rows it
/// holds of another owner keep their entries, and a third replica that gets
/// everything through the relay converges.
#[test]
fn a_relay_compacts_its_own_rows_only() {
    let dir = TempDir::new();
    let open_at = |name: &str| {
        let c = open(&dir.path().join(name));
        c.execute_batch(FILES).unwrap();
        c
    };
    let (a, b, c) = (open_at("a.db"), open_at("b.db"), open_at("c.db"));
    join_library(&b, &library_id(&a));
    join_library(&c, &library_id(&a));
    insert_files(&a, 3000);
    send(&a, &b, 0);
    // B's own rows follow A's in B's rowids: one window holds both.
    b.execute(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 3000)
         INSERT INTO files(name, n) SELECT 'b' || i, 0 FROM k",
        [],
    )
    .unwrap();
    flush(&b);
    send(&b, &c, 0);
    let exported = cursor(&b);
    b.execute("UPDATE files SET n = 1 WHERE id > 3000 AND id % 2 = 0", [])
        .unwrap();
    flush(&b);
    let a_origin: i64 = scalar(
        &b,
        &format!(
            "SELECT idx FROM lsync_devices WHERE id = '{}'",
            device_id(&a)
        ),
    );
    // A's rows still have their one entry (under A), B's are compacted.
    assert_eq!(
        scalar::<i64>(
            &b,
            &format!(
                "SELECT count(*) FROM lsync_clock WHERE lo IS NOT NULL AND origin = {a_origin}"
            )
        ),
        1
    );
    assert!(row_entries(&b) <= 4, "{} entries", row_entries(&b));
    // C gets B's rows again (not A's), and applies them as B's.
    let again = changes(&b, exported);
    assert_eq!(again.len(), 3000);
    assert!(again.iter().all(|ch| ch.origin == device_id(&b)));
    let report = send(&b, &c, exported);
    assert_eq!(n(&report, "applied"), 3000, "{report}");
    assert_eq!(files_dump(&b), files_dump(&c));
    assert_eq!(count(&c, "files"), 6000);
}
