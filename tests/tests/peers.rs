//! The functions through which the replicator keeps its bookkeeping and
//! reads lsync's state: the peers' rows (`lsync_peer*`), the head cursor,
//! the schema fingerprint, the status document and a snapshot's description.

use lsync_tests::*;
use rusqlite::{params, Connection};
use serde_json::Value as Json;

const PEER: &str = "01a20142-c196-70dc-8b46-cc82023ee619";
const OTHER: &str = "01a20142-c196-70dc-8b46-cc82023ee61a";

fn json(c: &Connection, sql: &str) -> Json {
    let text: String = scalar(c, sql);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql}: {e}: {text}"))
}

fn peer(c: &Connection, id: &str) -> Json {
    let text: Option<String> = c
        .query_row("SELECT lsync_peer(?1)", [id], |r| r.get(0))
        .unwrap();
    text.map_or(Json::Null, |t| serde_json::from_str(&t).unwrap())
}

fn call(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::types::Value {
    c.query_row(sql, p, |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[test]
fn a_peers_row_records_contact_cursors_and_failures() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    assert_eq!(peer(&c, PEER), Json::Null, "unknown before first contact");
    // Writers leave an unknown peer alone and say NULL.
    use rusqlite::types::Value::{Integer, Null};
    assert_eq!(
        call(&c, "SELECT lsync_peer_received(?1, 5, 1)", [PEER]),
        Null
    );
    assert_eq!(call(&c, "SELECT lsync_peer_reset(?1)", [PEER]), Null);
    assert_eq!(peer(&c, PEER), Json::Null);

    call(&c, "SELECT lsync_peer_contact(?1, '10.0.0.1:7000')", [PEER]);
    let row = peer(&c, PEER);
    assert_eq!(row["device_id"], PEER);
    assert_eq!(row["addr"], "10.0.0.1:7000");
    assert_eq!(row["recv_cursor"], 0);
    assert_eq!(row["failures"], 0);
    assert!(row["last_contact_ms"].as_i64().unwrap() > 0);
    // A device id is matched as a UUID, in any letter case.
    assert_eq!(peer(&c, &PEER.to_uppercase())["device_id"], PEER);

    // The watermark only moves forward.
    let received = "SELECT lsync_peer_received(?1, ?2, ?3)";
    assert_eq!(call(&c, received, params![PEER, 42, false]), Integer(42));
    assert_eq!(call(&c, received, params![PEER, 7, false]), Integer(42));
    // Failed catch-ups count; other errors only leave their message.
    let error = "SELECT lsync_peer_error(?1, ?2, ?3)";
    assert_eq!(call(&c, error, params![PEER, "boom", true]), Integer(1));
    assert_eq!(call(&c, error, params![PEER, "gone", false]), Integer(1));
    assert_eq!(peer(&c, PEER)["last_error"], "gone");
    // A completed catch-up clears both; one that is not leaves them.
    call(&c, received, params![PEER, 43, false]);
    assert_eq!(peer(&c, PEER)["failures"], 1);
    call(&c, received, params![PEER, 44, true]);
    let row = peer(&c, PEER);
    assert_eq!(
        (&row["recv_cursor"], &row["failures"], &row["last_error"]),
        (&Json::from(44), &Json::from(0), &Json::Null)
    );
    // A reset starts the peer over from cursor 0.
    call(&c, error, params![PEER, "boom", true]);
    assert_eq!(call(&c, "SELECT lsync_peer_reset(?1)", [PEER]), Integer(0));
    let row = peer(&c, PEER);
    assert_eq!(
        (&row["recv_cursor"], &row["failures"]),
        (&0.into(), &0.into())
    );
    // A new address replaces the old one.
    call(&c, "SELECT lsync_peer_contact(?1, 'b:1')", [PEER]);
    assert_eq!(peer(&c, PEER)["addr"], "b:1");
}

/// The received cursor moves with the apply: rolled back together.
/// A failure a full resync would hit again: the peer reads as stuck until a
/// catch-up completes; a reset remembers the error it was for.
#[test]
fn a_stuck_peer_and_the_error_of_its_resync() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    use rusqlite::types::Value::{Integer, Null};
    assert_eq!(call(&c, "SELECT lsync_peer_stuck(?1, 'x')", [PEER]), Null);
    call(&c, "SELECT lsync_peer_contact(?1, NULL)", [PEER]);
    let p = peer(&c, PEER);
    assert_eq!(
        (&p["stuck"], &p["resync_error"]),
        (&Json::Bool(false), &Json::Null)
    );
    let unique = "UNIQUE constraint failed: tags.name; nothing was applied";
    assert_eq!(
        call(&c, "SELECT lsync_peer_stuck(?1, ?2)", params![PEER, unique]),
        Integer(0)
    );
    let p = peer(&c, PEER);
    assert_eq!(p["stuck"], true);
    assert_eq!(
        (p["last_error"].as_str(), p["resync_error"].as_str()),
        (Some(unique), Some(unique))
    );
    // Another error is not the one a resync would hit again.
    call(&c, "SELECT lsync_peer_error(?1, 'reset', 1)", [PEER]);
    assert_eq!(peer(&c, PEER)["stuck"], false);
    call(&c, "SELECT lsync_peer_received(?1, 3, 1)", [PEER]);
    let p = peer(&c, PEER);
    assert_eq!(
        (&p["stuck"], &p["resync_error"], &p["last_error"]),
        (&Json::Bool(false), &Json::Null, &Json::Null)
    );
    // A reset keeps the error it was for.
    call(&c, "SELECT lsync_peer_error(?1, 'boom', 1)", [PEER]);
    call(&c, "SELECT lsync_peer_reset(?1)", [PEER]);
    assert_eq!(peer(&c, PEER)["resync_error"], "boom");
    assert_eq!(peer(&c, PEER)["stuck"], true);
}

/// A database made before `resync_error` (schema version 5) reads as before
/// and gains the column on its first write.
#[test]
fn an_older_peers_table_is_upgraded() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    call(&c, "SELECT lsync_peer_contact(?1, NULL)", [PEER]);
    c.execute_batch(
        "ALTER TABLE lsync_peers DROP COLUMN resync_error;
         ALTER TABLE lsync_peers DROP COLUMN held_ahead_ms;
         ALTER TABLE lsync_peers DROP COLUMN held_until_ms;
         ALTER TABLE lsync_peers DROP COLUMN held_by_peer_ahead_ms;
         ALTER TABLE lsync_peers DROP COLUMN held_by_peer_until_ms;
         ALTER TABLE lsync_peers DROP COLUMN forgotten_ms;
         UPDATE lsync_config SET value = 5 WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(c);
    let c = open(&dir.db());
    let p = peer(&c, PEER);
    assert_eq!(
        (
            &p["stuck"],
            &p["resync_error"],
            &p["held"],
            &p["forgotten_ms"]
        ),
        (&Json::Bool(false), &Json::Null, &Json::Null, &Json::Null)
    );
    // The status reads it too, before any write upgrades it.
    assert_eq!(
        json(&c, "SELECT lsync_status()")["tombstones_awaiting_ack"],
        0
    );
    call(&c, "SELECT lsync_peer_stuck(?1, 'x')", [PEER]);
    assert_eq!(peer(&c, PEER)["resync_error"], "x");
    call(&c, "SELECT lsync_peer_held(?1, 600000, 42)", [PEER]);
    assert_eq!(peer(&c, PEER)["held"]["until_ms"], 42);
    let version: i64 = scalar(
        &c,
        "SELECT value FROM lsync_config WHERE key = 'schema_version'",
    );
    assert_eq!(version, current_schema_version());
    // Version 12's forgotten peers.
    assert_eq!(
        call(&c, "SELECT lsync_forget_peer(?1)", [PEER]),
        rusqlite::types::Value::Integer(0)
    );
    // Version 8's table of merged rows is there too, version 9's of the
    // global ids lsync keeps, and version 10's of the members.
    assert_eq!(scalar::<i64>(&c, "SELECT count(*) FROM lsync_members"), 0);
    assert_eq!(scalar::<i64>(&c, "SELECT count(*) FROM lsync_alias"), 0);
    assert_eq!(scalar::<i64>(&c, "SELECT count(*) FROM lsync_gid"), 0);
}

/// A hold is no error; an apply from the peer ends ours, its ack ends its.
#[test]
fn holds_are_recorded_and_cleared_by_an_apply_and_an_ack() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    call(&c, "SELECT lsync_peer_contact(?1, NULL)", [PEER]);
    call(&c, "SELECT lsync_peer_held(?1, 600000, 42)", [PEER]);
    call(&c, "SELECT lsync_peer_held_by(?1, 5000, 43)", [PEER]);
    let p = peer(&c, PEER);
    assert_eq!(
        p["held"],
        serde_json::json!({"ahead_ms": 600000, "until_ms": 42})
    );
    assert_eq!(
        p["held_by_peer"],
        serde_json::json!({"ahead_ms": 5000, "until_ms": 43})
    );
    assert_eq!(
        (&p["stuck"], &p["failures"], &p["last_error"]),
        (&Json::Bool(false), &Json::from(0), &Json::Null)
    );
    call(&c, "SELECT lsync_peer_received(?1, 1, 0)", [PEER]);
    let p = peer(&c, PEER);
    assert!(p["held"].is_null() && !p["held_by_peer"].is_null(), "{p}");
    call(&c, "SELECT lsync_peer_acked(?1, 0)", [PEER]);
    assert!(peer(&c, PEER)["held_by_peer"].is_null());
    call(&c, "SELECT lsync_peer_held(?1, 1, 2)", [PEER]);
    call(&c, "SELECT lsync_peer_held(?1, NULL, NULL)", [PEER]);
    assert!(peer(&c, PEER)["held"].is_null());
}

#[test]
fn the_received_cursor_is_part_of_the_callers_transaction() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    call(&c, "SELECT lsync_peer_contact(?1, NULL)", [PEER]);
    c.execute_batch("BEGIN IMMEDIATE").unwrap();
    call(&c, "SELECT lsync_peer_received(?1, 9, 1)", [PEER]);
    assert_eq!(peer(&c, PEER)["recv_cursor"], 9);
    c.execute_batch("ROLLBACK").unwrap();
    assert_eq!(peer(&c, PEER)["recv_cursor"], 0);
}

/// An ack is capped at our head and never goes back; `lsync_prune` then
/// drops the tombstones that every peer holds.
#[test]
fn an_ack_is_capped_at_the_head_and_lets_prune_go() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    two_tables(&c);
    c.execute_batch(
        "INSERT INTO tags(name) VALUES ('a'), ('b');
         DELETE FROM tags WHERE name = 'a';",
    )
    .unwrap();
    flush(&c);
    let head: i64 = scalar(&c, "SELECT lsync_head()");
    assert_eq!(head, cursor(&c));
    use rusqlite::types::Value::{Integer, Null};
    let acked = "SELECT lsync_peer_acked(?1, ?2)";
    assert_eq!(call(&c, acked, params![PEER, head]), Null, "unknown peer");
    call(&c, "SELECT lsync_peer_contact(?1, NULL)", [PEER]);
    assert_eq!(call(&c, acked, params![PEER, 1_000]), Integer(head));
    assert_eq!(call(&c, acked, params![PEER, 1]), Integer(head));
    assert_eq!(peer(&c, PEER)["lag"], 0);
    // Our own device id is no peer whose ack counts.
    let me: String = scalar(&c, "SELECT lsync_device_id()");
    assert_eq!(call(&c, acked, params![me, head]), Null);
    let s = json(&c, "SELECT lsync_status()");
    assert_eq!(s["tombstones"], 1);
    assert_eq!(s["tombstones_awaiting_ack"], 0);
    assert_eq!(scalar::<i64>(&c, "SELECT lsync_prune()"), 1);
    assert_eq!(json(&c, "SELECT lsync_status()")["tombstones"], 0);
}

#[test]
fn head_and_schema_fingerprint() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    // Before lsync's metadata exists: nothing, and nothing is created.
    assert_eq!(scalar::<i64>(&c, "SELECT lsync_head()"), 0);
    assert_eq!(
        scalar::<String>(&c, "SELECT lsync_schema_fingerprint()"),
        "[]"
    );
    assert_eq!(
        scalar::<i64>(
            &c,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'lsync%'"
        ),
        0
    );
    two_tables(&c);
    assert_eq!(
        scalar::<String>(&c, "SELECT lsync_schema_fingerprint()"),
        r#"[["files","device_owned",["name","n"]],["tags","shared",["name","n"]]]"#
    );
    c.execute("INSERT INTO files(name) VALUES ('x'), ('y')", [])
        .unwrap();
    // Captures get their cursor when folded.
    assert_eq!(scalar::<i64>(&c, "SELECT lsync_head()"), 0);
    flush(&c);
    assert_eq!(scalar::<i64>(&c, "SELECT lsync_head()"), cursor(&c));
    assert!(cursor(&c) > 0);
}

#[test]
fn the_status_document() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    let e = error_of(&c, "SELECT lsync_status()");
    assert!(e.starts_with("lsync_status: "), "{e}");
    two_tables(&c);
    c.execute_batch(
        "INSERT INTO files(name) VALUES ('x');
         INSERT INTO tags(name) VALUES ('t');
         DELETE FROM tags;",
    )
    .unwrap();
    flush(&c);
    call(&c, "SELECT lsync_peer_contact(?1, 'a:1')", [PEER]);
    call(&c, "SELECT lsync_peer_contact(?1, 'b:1')", [OTHER]);
    call(&c, "SELECT lsync_peer_acked(?1, 1)", [PEER]);
    let s = json(&c, "SELECT lsync_status()");
    assert_eq!(
        s["device_id"],
        scalar::<String>(&c, "SELECT lsync_device_id()")
    );
    assert_eq!(
        s["library_id"],
        scalar::<String>(&c, "SELECT lsync_library_id()")
    );
    let head = cursor(&c);
    assert_eq!(s["head"], head);
    assert_eq!(s["deferred_links"], 0);
    assert_eq!(s["tombstones"], 1);
    assert_eq!(s["tombstones_awaiting_ack"], 1);
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    // `lag_ms` is read from the wall clock: equal up to the time between
    // the two reads.
    let without_lag_ms = |v: &serde_json::Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("lag_ms");
        v
    };
    let alone = peer(&c, PEER);
    assert_eq!(
        without_lag_ms(&peers[0]),
        without_lag_ms(&alone),
        "ordered by device id"
    );
    let lag_ms = |v: &serde_json::Value| v["lag_ms"].as_i64().unwrap();
    assert!(
        (0..=lag_ms(&alone)).contains(&lag_ms(&peers[0])),
        "{peers:?}"
    );
    assert_eq!(peers[0]["lag"], head - 1);
    assert_eq!(peers[1]["device_id"], OTHER);
    assert_eq!(peers[1]["lag"], head);
}

#[test]
fn a_snapshot_describes_itself() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    two_tables(&c);
    c.execute("INSERT INTO files(name) VALUES ('x'), ('y')", [])
        .unwrap();
    let snap = dir.path().join("s.db");
    let path = snap.to_string_lossy().to_string();
    call(&c, "SELECT lsync_snapshot(?1)", [&path]);
    let info: String = c
        .query_row("SELECT lsync_snapshot_info(?1)", [&path], |r| r.get(0))
        .unwrap();
    let info: Json = serde_json::from_str(&info).unwrap();
    assert_eq!(
        info["device"],
        scalar::<String>(&c, "SELECT lsync_device_id()")
    );
    assert_eq!(
        info["library_id"],
        scalar::<String>(&c, "SELECT lsync_library_id()")
    );
    assert_eq!(info["cursor"], cursor(&c));
    assert_eq!(info["rows"], 2);
    assert_eq!(info["owner"], Json::Null);
    assert!(info["created_ms"].as_i64().unwrap() > 0);

    let e = error_of(&c, "SELECT lsync_snapshot_info('/nonexistent/s.db')");
    assert!(e.starts_with("lsync_snapshot_info: no such file"), "{e}");
    let e = error_of(
        &c,
        &format!(
            "SELECT lsync_snapshot_info('{}')",
            dir.db().to_string_lossy()
        ),
    );
    assert!(e.contains("is not an lsync snapshot"), "{e}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    for (sql, says) in [
        (
            "SELECT lsync_peer('nope')",
            "lsync_peer: 'nope' is not a device id",
        ),
        (
            "SELECT lsync_peer_contact(NULL, 'a')",
            "lsync_peer_contact: device id must not be NULL",
        ),
        (
            "SELECT lsync_peer_contact(lsync_uuid(), 3)",
            "lsync_peer_contact: addr must be text",
        ),
        (
            "SELECT lsync_peer_received(lsync_uuid(), 'x', 1)",
            "lsync_peer_received: cursor must be an INTEGER",
        ),
        (
            "SELECT lsync_peer_acked(lsync_uuid(), NULL)",
            "lsync_peer_acked: cursor must not be NULL",
        ),
        (
            "SELECT lsync_peer_error(lsync_uuid(), NULL, 1)",
            "lsync_peer_error: error must not be NULL",
        ),
        (
            "SELECT lsync_peer_reset(42)",
            "lsync_peer_reset: device id must be text",
        ),
        (
            "SELECT lsync_snapshot_info(NULL)",
            "lsync_snapshot_info: path must not be NULL",
        ),
    ] {
        let e = error_of(&c, sql);
        assert!(e.starts_with(says), "{sql}: {e}");
    }
}
