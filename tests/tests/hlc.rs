//! Identity and clocks: the HLC is monotonic across connections and
//! reopening; device and library ids are stable.

use lsync_tests::*;

fn hlc_now(conn: &rusqlite::Connection) -> i64 {
    scalar(conn, "SELECT lsync_hlc_now()")
}

#[test]
fn hlc_is_strictly_increasing_across_connections_and_reopen() {
    let dir = TempDir::new();
    let a = open(&dir.db());
    let b = open(&dir.db());
    let mut last = 0;
    for i in 0..100 {
        let conn = if i % 2 == 0 { &a } else { &b };
        let h = hlc_now(conn);
        assert!(h > last, "call {i}: {h} <= {last}");
        last = h;
    }
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (last >> 16) - wall_ms < 60_000 && wall_ms - (last >> 16) < 60_000,
        "the HLC tracks the wall clock: {last}"
    );
    drop(a);
    drop(b);
    let c = open(&dir.db());
    assert!(hlc_now(&c) > last);
}

#[test]
fn hlc_never_goes_below_the_persisted_value() {
    // A persisted HLC far ahead of the wall clock (as after applying a
    // change from a fast peer, or a clock stepping back): the next one is
    // still larger.
    let dir = TempDir::new();
    let conn = open(&dir.db());
    let first = hlc_now(&conn);
    let ahead = first + (3_600_000 << 16);
    conn.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'hlc'",
        [ahead],
    )
    .unwrap();
    let next = hlc_now(&conn);
    assert_eq!(next, ahead + 1);
    drop(conn);
    let conn = open(&dir.db());
    assert!(hlc_now(&conn) > next);
    // Capture uses the same clock.
    two_tables(&conn);
    conn.execute("INSERT INTO tags(name) VALUES ('x')", [])
        .unwrap();
    flush(&conn);
    conn.execute("UPDATE tags SET n = 1", []).unwrap();
    let [ins, upd] = changes(&conn, 0).try_into().unwrap();
    assert!(ins.hlc > next, "{} <= {next}", ins.hlc);
    assert!(upd.hlc > ins.hlc);
}

#[test]
fn changes_recorded_later_have_larger_hlcs() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch(
        "INSERT INTO files(name) VALUES ('a'), ('b');
         INSERT INTO tags(name) VALUES ('a'), ('b');",
    )
    .unwrap();
    let before = changes(&conn, 0);
    let max_before = before.iter().map(|c| c.hlc).max().unwrap();
    let since = cursor(&conn);
    // A second connection writes too: both share the persisted clock.
    let other = open(&dir.db());
    conn.execute("UPDATE files SET n = 1 WHERE name = 'a'", [])
        .unwrap();
    other
        .execute("UPDATE tags SET n = 1 WHERE name = 'b'", [])
        .unwrap();
    other
        .execute("DELETE FROM files WHERE name = 'b'", [])
        .unwrap();
    let after = changes(&conn, since);
    assert_eq!(after.len(), 3);
    for c in &after {
        assert!(c.hlc > max_before, "{c:?} vs {max_before}");
    }
    let mut hlcs: Vec<i64> = after.iter().map(|c| c.hlc).collect();
    hlcs.sort();
    hlcs.dedup();
    assert_eq!(hlcs.len(), 3, "each change has its own HLC");
    assert!(hlc_now(&conn) > *hlcs.last().unwrap());
}

/// (pk, op, hlc) of the changes after `since`, in cursor order.
fn hlcs_since(conn: &rusqlite::Connection, since: i64) -> Vec<(String, String, i64)> {
    changes(conn, since)
        .iter()
        .map(|c| (c.pk_text(), c.op.clone(), c.hlc))
        .collect()
}

fn persisted_hlc(conn: &rusqlite::Connection) -> i64 {
    scalar(conn, "SELECT value FROM lsync_config WHERE key = 'hlc'")
}

/// Updates take one HLC per transaction (`lsync_capture_hlc`): the clock is
/// written once, not once per row. Anything that issues an HLC in between
/// gives the next update a newer one, and the next transaction a newer one
/// still.
#[test]
fn updates_of_one_transaction_share_an_hlc_and_nothing_goes_back() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    // Shared rows, whose changes keep each its own HLC (device-owned ones
    // with consecutive rowids fold into one entry under the newest).
    conn.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('a', 'a'), ('b', 'b'), ('x', 'x');
         INSERT INTO files(uuid, name) VALUES ('c', 'c');",
    )
    .unwrap();
    flush(&conn);
    let since = cursor(&conn);
    let before = hlc_now(&conn);
    conn.execute_batch(
        "BEGIN;
         UPDATE tags SET n = 1 WHERE name = 'a';
         UPDATE tags SET n = 1 WHERE name = 'b';
         DELETE FROM files WHERE name = 'c';
         UPDATE tags SET n = 1 WHERE name = 'x';
         UPDATE tags SET n = 2 WHERE name = 'a';
         COMMIT;",
    )
    .unwrap();
    let got = hlcs_since(&conn, since);
    let hlc = |pk: &str| got.iter().find(|c| c.0 == pk).unwrap().2;
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(hlc("b") > before && hlc("b") < hlc("c"), "{got:?}");
    // The delete advanced the clock: the updates after it are newer.
    assert!(hlc("x") > hlc("c") && hlc("a") == hlc("x"), "{got:?}");
    assert!(persisted_hlc(&conn) >= hlc("x"));
    // Autocommit updates are one transaction each.
    let since = cursor(&conn);
    conn.execute("UPDATE tags SET n = 3 WHERE name = 'a'", [])
        .unwrap();
    conn.execute("UPDATE tags SET n = 3 WHERE name = 'b'", [])
        .unwrap();
    let next = hlcs_since(&conn, since);
    assert_eq!(next.len(), 2, "{next:?}");
    assert!(next[0].2 > hlc("x") && next[1].2 > next[0].2, "{next:?}");
}

/// A rollback undoes the HLC a capture wrote; the HLC remembered for the
/// transaction is not reused then, and every HLC that was recorded stays
/// at or below the persisted clock.
#[test]
fn a_rolled_back_capture_hlc_is_not_reused() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute_batch("INSERT INTO files(uuid, name) VALUES ('a', 'a'), ('b', 'b');")
        .unwrap();
    flush(&conn);
    let since = cursor(&conn);
    // The clock far ahead of the wall clock, so that the bumps are +1 and
    // a reused HLC would show.
    let ahead = hlc_now(&conn) + (3_600_000 << 16);
    conn.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'hlc'",
        [ahead],
    )
    .unwrap();
    conn.execute_batch(
        "BEGIN;
         SAVEPOINT s;
         UPDATE files SET n = 1 WHERE name = 'a';
         ROLLBACK TO s;
         RELEASE s;
         UPDATE files SET n = 1 WHERE name = 'b';
         COMMIT;",
    )
    .unwrap();
    let got = hlcs_since(&conn, since);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].2, ahead + 1, "{got:?}");
    assert_eq!(persisted_hlc(&conn), ahead + 1);
    // A whole transaction rolled back: its HLC is not carried over either.
    conn.execute_batch(
        "BEGIN;
         UPDATE files SET n = 2 WHERE name = 'a';
         ROLLBACK;
         UPDATE files SET n = 2 WHERE name = 'b';",
    )
    .unwrap();
    let got = hlcs_since(&conn, since);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].2, ahead + 2, "{got:?}");
    assert!(hlc_now(&conn) > ahead + 2);
}

#[test]
fn hlc_text_is_iso_time_and_counter() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    let text: String = scalar(&conn, "SELECT lsync_hlc_text((1700000000123 << 16) + 7)");
    assert_eq!(text, "2023-11-14T22:13:20.123Z#7");
    let text: String = scalar(&conn, "SELECT lsync_hlc_text(0)");
    assert_eq!(text, "1970-01-01T00:00:00.000Z#0");
}

#[test]
fn device_id_is_a_stable_uuid() {
    let dir = TempDir::new();
    let a = open(&dir.db());
    let b = open(&dir.db());
    let id: String = scalar(&a, "SELECT lsync_device_id()");
    assert_eq!(
        uuid::Uuid::parse_str(&id).unwrap().hyphenated().to_string(),
        id
    );
    assert_eq!(scalar::<String>(&b, "SELECT lsync_device_id()"), id);
    drop(a);
    drop(b);
    let c = open(&dir.db());
    assert_eq!(scalar::<String>(&c, "SELECT lsync_device_id()"), id);

    // Another database file is another device.
    let dir2 = TempDir::new();
    let d = open(&dir2.db());
    assert_ne!(scalar::<String>(&d, "SELECT lsync_device_id()"), id);
}

#[test]
fn library_id_can_be_joined_and_is_kept() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    let own: String = scalar(&conn, "SELECT lsync_library_id()");
    assert!(uuid::Uuid::parse_str(&own).is_ok(), "{own}");
    assert_eq!(scalar::<String>(&conn, "SELECT lsync_library_id()"), own);

    let x = uuid::Uuid::new_v4();
    let upper = x.hyphenated().to_string().to_uppercase();
    let joined: String = conn
        .query_row("SELECT lsync_library_id(?1)", [&upper], |r| r.get(0))
        .unwrap();
    assert_eq!(
        joined,
        x.hyphenated().to_string(),
        "normalised to lowercase"
    );
    assert_eq!(scalar::<String>(&conn, "SELECT lsync_library_id()"), joined);
    drop(conn);
    let conn = open(&dir.db());
    assert_eq!(scalar::<String>(&conn, "SELECT lsync_library_id()"), joined);
    assert_ne!(joined, own);
}

#[test]
fn uuid_function_gives_v7_text_or_blob() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    let t: String = scalar(&conn, "SELECT lsync_uuid()");
    assert_eq!(uuid::Uuid::parse_str(&t).unwrap().get_version_num(), 7);
    let t2: String = scalar(&conn, "SELECT lsync_uuid('text')");
    assert_eq!(uuid::Uuid::parse_str(&t2).unwrap().get_version_num(), 7);
    assert_ne!(t, t2);
    let b: Vec<u8> = scalar(&conn, "SELECT lsync_uuid('blob')");
    assert_eq!(uuid::Uuid::from_slice(&b).unwrap().get_version_num(), 7);
    // Not deterministic: two calls in one statement differ.
    let same: i64 = scalar(&conn, "SELECT lsync_uuid() = lsync_uuid()");
    assert_eq!(same, 0);
}

/// A second database joined to `conn`'s library, with the same two tables.
fn peer_of(dir: &TempDir, conn: &rusqlite::Connection, name: &str) -> rusqlite::Connection {
    let peer = open(&dir.path().join(name));
    let library: String = scalar(conn, "SELECT lsync_library_id()");
    peer.query_row("SELECT lsync_library_id(?1)", [&library], |_| Ok(()))
        .unwrap();
    two_tables(&peer);
    peer
}

fn hlc_setting(conn: &rusqlite::Connection) -> (String, String) {
    conn.query_row(
        "SELECT typeof(value), value FROM lsync_config WHERE key = 'hlc'",
        [],
        |r| Ok((r.get(0)?, r.get::<_, rusqlite::types::Value>(1)?)),
    )
    .map(|(t, v)| (t, value_text(&v)))
    .unwrap()
}

/// An HLC at the top of its range (issue 9): the next one used to overflow
/// into a REAL, after which lsync_hlc_now, lsync_changeset and lsync_apply
/// failed for good with "the HLC setting is missing". Now the setting stays
/// an integer, whatever needs a later HLC is refused with a clear error,
/// and what needs none still works.
#[test]
fn an_hlc_at_the_top_of_its_range_stays_an_integer_and_says_so() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute("INSERT INTO tags(uuid, name) VALUES ('t1', 'a')", [])
        .unwrap();
    flush(&conn);
    // Only a hand edit (or corrupt metadata) gets here: see the next test.
    conn.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'hlc'",
        [i64::MAX - 1],
    )
    .unwrap();
    assert_eq!(hlc_now(&conn), i64::MAX);
    let top = ("integer".to_owned(), i64::MAX.to_string());
    for sql in [
        "SELECT lsync_hlc_now()",
        "UPDATE tags SET n = 1",
        "DELETE FROM tags",
    ] {
        let err = error_of(&conn, sql);
        assert!(
            err.starts_with("lsync") && err.contains("top of its range"),
            "{sql}: {err}"
        );
        assert_eq!(hlc_setting(&conn), top, "{sql}");
    }
    assert_eq!(
        query_rows(&conn, "SELECT name, n FROM tags"),
        [["a", "NULL"]]
    );
    // Export and apply need no new HLC.
    let peer = peer_of(&dir, &conn, "peer.db");
    peer.execute("INSERT INTO tags(uuid, name) VALUES ('t2', 'b')", [])
        .unwrap();
    let mine: Vec<u8> = scalar(&conn, "SELECT lsync_changeset(0)");
    let theirs: Vec<u8> = scalar(&peer, "SELECT lsync_changeset(0)");
    let report: String = conn
        .query_row("SELECT lsync_apply(?1)", [theirs], |r| r.get(0))
        .unwrap();
    assert!(report.contains("\"applied\":1"), "{report}");
    assert_eq!(hlc_setting(&conn), top);
    // A new local row needs an HLC when it is folded: a clear error too.
    conn.execute("INSERT INTO tags(uuid, name) VALUES ('t3', 'c')", [])
        .unwrap();
    let err = error_of(&conn, "SELECT lsync_changeset(0)");
    assert!(err.contains("top of its range"), "{err}");
    assert_eq!(hlc_setting(&conn), top);
    // What it exported before is still good for its peers.
    let report: String = peer
        .query_row("SELECT lsync_apply(?1)", [mine], |r| r.get(0))
        .unwrap();
    assert!(report.contains("\"applied\":1"), "{report}");
}

/// How an HLC got to the top of its range: a changeset (or a snapshot)
/// carrying one, accepted because max_drift_ms was set very large. No
/// clock can be that far ahead: it is refused whatever the drift setting,
/// and this device keeps a clock it can advance.
#[test]
fn hlcs_beyond_the_accepted_range_are_refused_whatever_the_drift_limit() {
    let dir = TempDir::new();
    let a = open(&dir.db());
    two_tables(&a);
    let b = peer_of(&dir, &a, "b.db");
    b.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'max_drift_ms'",
        [i64::MAX],
    )
    .unwrap();
    a.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'hlc'",
        [i64::MAX - 5],
    )
    .unwrap();
    a.execute("INSERT INTO tags(uuid, name) VALUES ('t1', 'a')", [])
        .unwrap();
    let blob: Vec<u8> = scalar(&a, "SELECT lsync_changeset(0)");
    let before = hlc_setting(&b);
    let err = match b.query_row("SELECT lsync_apply(?1)", [&blob], |r| r.get::<_, String>(0)) {
        Ok(r) => panic!("applied: {r}"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("beyond"), "{err}");
    assert_eq!(hlc_setting(&b), before);
    assert_eq!(count(&b, "tags"), 0);
    for _ in 0..10 {
        hlc_now(&b);
    }

    // A snapshot whose HLC setting is huge, or not an integer at all.
    let snap = dir.path().join("snap.db");
    let fresh = peer_of(&dir, &b, "fresh.db");
    b.query_row(
        "SELECT lsync_snapshot(?1)",
        [snap.to_str().unwrap()],
        |_| Ok(()),
    )
    .unwrap();
    for bad in ["9223372036854775807", "'garbage'", "1e300"] {
        let plain = rusqlite::Connection::open(&snap).unwrap();
        plain
            .execute(
                &format!("UPDATE lsync_config SET value = {bad} WHERE key = 'hlc'"),
                [],
            )
            .unwrap();
        drop(plain);
        let before = hlc_setting(&fresh);
        let err = error_of(
            &fresh,
            &format!("SELECT lsync_restore('{}')", snap.display()),
        );
        assert!(err.contains("HLC") || err.contains("hlc"), "{bad}: {err}");
        assert_eq!(hlc_setting(&fresh), before, "{bad}");
        hlc_now(&fresh);
    }
}
