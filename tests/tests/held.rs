//! A peer whose clock is ahead is held, not failed (issue 11): real `lsync`
//! processes on 127.0.0.1 (see `sidecar.rs` for the conventions). Device A
//! writes with its clock a few seconds ahead; B, which accepts 1 s of drift,
//! holds A's changes without an error or an escalation, both sides' status
//! say so, and the changes arrive once B's clock catches up, while C's
//! changes and B's own keep flowing meanwhile.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use lsync_tests::*;

/// How far ahead A's clock runs, and the drift B accepts.
const AHEAD_MS: i64 = 6_000;
const DRIFT_MS: i64 = 1_000;

fn clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn has_tag(c: &Connection, name: &str) -> bool {
    scalar::<i64>(
        c,
        &format!("SELECT count(*) FROM tags WHERE name = '{name}'"),
    ) == 1
}

/// The peer's entry in a `lsync status --json` document.
fn held_peer_entry(db: &std::path::Path, device: &str) -> serde_json::Value {
    let s = lsync_status(db);
    s["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["device_id"] == device))
        .cloned()
        .unwrap_or_else(|| panic!("no peer {device} in {s}"))
}

fn status_text_of(db: &std::path::Path) -> String {
    let out = Command::new(lsync_bin())
        .args(["status", "--db"])
        .arg(db)
        .output()
        .expect("run lsync status");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_peer_whose_clock_is_ahead_is_held_not_failed() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    let (c_db, c) = library_db(dir.path(), "c");
    join_library(&b, &library_id(&a));
    join_library(&c, &library_id(&a));
    b.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'max_drift_ms'",
        [DRIFT_MS],
    )
    .unwrap();
    let (dev_a, dev_b) = (device_id(&a), device_id(&b));

    let node_b = Sidecar::start(dir.path(), "B", &b_db, &secret, &[], &[]);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[node_b.addr()], &[]);
    let node_c = Sidecar::start(dir.path(), "C", &c_db, &secret, &[node_b.addr()], &[]);
    let nodes = [&node_a, &node_b, &node_c];
    add_tag(&a, "before", "x");
    wait_for("C has A's first tag, through B", &nodes, || {
        has_tag(&c, "before")
    });

    // A's clock jumps ahead for one write.
    a.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'hlc'",
        [(clock_ms() + AHEAD_MS) << 16],
    )
    .unwrap();
    let written = clock_ms();
    add_tag(&a, "ahead", "x");

    wait_for("B holds A's changes and says so", &nodes, || {
        !held_peer_entry(&b_db, &dev_a)["held"].is_null()
    });
    let held = held_peer_entry(&b_db, &dev_a);
    let ahead = held["held"]["ahead_ms"].as_i64().unwrap();
    let until = held["held"]["until_ms"].as_i64().unwrap();
    assert!(
        ahead > DRIFT_MS && ahead <= AHEAD_MS,
        "B's view of A: {held}"
    );
    assert!(
        (until - (written + AHEAD_MS - DRIFT_MS)).abs() < 500,
        "accepted once B's clock is within {DRIFT_MS} ms of A's newest HLC: {held}"
    );
    assert_eq!(held["stuck"], false, "{held}");
    assert_eq!(held["failures"], 0, "{held}");
    assert!(held["last_error"].is_null(), "a hold is no error: {held}");
    let text = status_text_of(&b_db);
    assert!(
        text.contains(&format!("held: {dev_a}'s clock is "))
            && text.contains("ahead of ours; its changes wait, and will be accepted at "),
        "{text}"
    );

    wait_for("A learns that B holds its changes", &nodes, || {
        !held_peer_entry(&a_db, &dev_b)["held_by_peer"].is_null()
    });
    let text = status_text_of(&a_db);
    assert!(
        text.contains(&format!("held by {dev_b}: our clock is "))
            && text.contains("it holds our changes, and will accept them at "),
        "{text}"
    );

    // Meanwhile C's changes reach B, and B's reach A.
    add_tag(&c, "from-c", "x");
    add_tag(&b, "from-b", "x");
    wait_for(
        "C's and B's changes flow while A's are held",
        &nodes,
        || has_tag(&b, "from-c") && has_tag(&a, "from-b"),
    );
    assert!(
        clock_ms() < until && !has_tag(&b, "ahead"),
        "A's change waits until B's clock allows it"
    );

    wait_for_within(
        "A's change arrives once B's clock has caught up",
        &nodes,
        Duration::from_millis((AHEAD_MS + 10_000) as u64),
        || has_tag(&b, "ahead") && has_tag(&c, "ahead"),
    );
    assert!(clock_ms() >= until, "not accepted before {until}");
    wait_for("both sides' holds clear", &nodes, || {
        held_peer_entry(&b_db, &dev_a)["held"].is_null()
            && held_peer_entry(&a_db, &dev_b)["held_by_peer"].is_null()
    });
    let p = held_peer_entry(&b_db, &dev_a);
    assert_eq!(
        (p["stuck"].clone(), p["failures"].clone()),
        (false.into(), 0.into()),
        "{p}"
    );
    assert!(!status_text_of(&b_db).contains("held"));

    // No error, no retry of a session, no escalation, on either side.
    for n in [&node_a, &node_b] {
        let log = n.all_logs();
        for bad in [
            "session failed",
            "session ended",
            "escalat",
            "stuck",
            "ERROR",
        ] {
            assert!(!log.contains(bad), "{} logged '{bad}':\n{log}", n.name);
        }
    }
    let log_b = node_b.all_logs();
    assert_eq!(
        occurrences(&log_b, "held: the peer's clock is"),
        1,
        "{log_b}"
    );
    assert!(log_b.contains("no longer held"), "{log_b}");
    let log_a = node_a.all_logs();
    assert_eq!(
        occurrences(&log_a, "held by the peer: our clock is"),
        1,
        "{log_a}"
    );
}
