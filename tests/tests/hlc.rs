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
