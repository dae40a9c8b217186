//! A device gone for good (issue 15): `lsync_forget_peer` drops it from the
//! peers whose ACKs gate tombstone pruning, and `lsync_status()` says which
//! peer holds tombstones back, how far behind it is and how far the clock is
//! ahead. The real `liblsync.so` in rusqlite's SQLite, the `lsync` CLI on its
//! database, and at the end real `lsync run` processes on 127.0.0.1.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::Value as Json;

use lsync_tests::*;

const SILENT: &str = "01a20142-c196-70dc-8b46-cc82023ee619";
const ALIVE: &str = "01a20142-c196-70dc-8b46-cc82023ee61a";

fn status_doc(c: &Connection) -> Json {
    serde_json::from_str(&scalar::<String>(c, "SELECT lsync_status()")).unwrap()
}

fn peer_row_of(doc: &Json, device: &str) -> Json {
    doc["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["device_id"] == device))
        .cloned()
        .unwrap_or_else(|| panic!("no peer {device} in {doc}"))
}

fn select_i64(c: &Connection, sql: &str, arg: &str) -> rusqlite::Result<i64> {
    c.query_row(sql, [arg], |r| r.get(0))
}

/// Two known peers and a deleted tag: ALIVE has acknowledged everything,
/// SILENT nothing.
fn two_peers_one_tombstone(c: &Connection) -> i64 {
    two_tables(c);
    c.execute_batch(
        "INSERT INTO tags(name) VALUES ('keep'), ('doomed');
         DELETE FROM tags WHERE name = 'doomed';",
    )
    .unwrap();
    flush(c);
    for p in [SILENT, ALIVE] {
        select_i64(c, "SELECT lsync_peer_contact(?1, NULL) IS NULL", p).unwrap();
    }
    let head = cursor(c);
    c.query_row(
        "SELECT lsync_peer_acked(?1, ?2)",
        rusqlite::params![ALIVE, head],
        |_| Ok(()),
    )
    .unwrap();
    head
}

#[test]
fn forgetting_a_silent_peer_lets_its_tombstones_be_pruned() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    let head = two_peers_one_tombstone(&c);

    // Without forget, the silent peer's missing ACK keeps the tombstone.
    assert_eq!(scalar::<i64>(&c, "SELECT lsync_prune()"), 0);
    let s = status_doc(&c);
    assert_eq!(
        (
            s["tombstones"].as_i64(),
            s["tombstones_awaiting_ack"].as_i64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(peer_row_of(&s, SILENT)["tombstones_held"], 1);
    assert_eq!(peer_row_of(&s, SILENT)["lag"], head);
    assert_eq!(peer_row_of(&s, ALIVE)["tombstones_held"], 0);
    assert_eq!(peer_row_of(&s, ALIVE)["forgotten_ms"], Json::Null);

    // Forgotten: it holds nothing back, and its row (watermarks) stays.
    let released = select_i64(&c, "SELECT lsync_forget_peer(?1)", &SILENT.to_uppercase());
    assert_eq!(released.unwrap(), 1);
    let s = status_doc(&c);
    assert_eq!(s["tombstones_awaiting_ack"], 0);
    let gone = peer_row_of(&s, SILENT);
    assert!(gone["forgotten_ms"].as_i64().unwrap() > 0, "{gone}");
    assert_eq!(gone["tombstones_held"], 0);
    assert_eq!(scalar::<i64>(&c, "SELECT lsync_prune()"), 1);
    assert_eq!(status_doc(&c)["tombstones"], 0);
    // Forgetting again changes nothing.
    assert_eq!(
        select_i64(&c, "SELECT lsync_forget_peer(?1)", SILENT).unwrap(),
        0
    );

    // A session with it is refused from then on.
    let e = select_i64(&c, "SELECT lsync_peer_contact(?1, 'a:1') IS NULL", SILENT).unwrap_err();
    assert!(e.to_string().contains("was forgotten here"), "{e}");
}

#[test]
fn only_forgotten_peers_left_means_nothing_is_pruned() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    two_peers_one_tombstone(&c);
    for p in [SILENT, ALIVE] {
        select_i64(&c, "SELECT lsync_forget_peer(?1)", p).unwrap();
    }
    // As with no known peer at all: a tombstone is never dropped unseen.
    assert_eq!(scalar::<i64>(&c, "SELECT lsync_prune()"), 0);
    assert_eq!(status_doc(&c)["tombstones_awaiting_ack"], 1);
}

#[test]
fn forgetting_a_bad_id_an_unknown_peer_or_oneself_is_a_clear_error() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    two_peers_one_tombstone(&c);
    let me = device_id(&c);
    for (arg, says) in [
        ("nope", "lsync_forget_peer: 'nope' is not a device id"),
        (
            "01a20142-c196-70dc-8b46-000000000000",
            "lsync_forget_peer: no peer 01a20142-c196-70dc-8b46-000000000000 is known here",
        ),
        (me.as_str(), "is this database's own device"),
    ] {
        let e = select_i64(&c, "SELECT lsync_forget_peer(?1)", arg).unwrap_err();
        assert!(e.to_string().contains(says), "{arg}: {e}");
    }
    let e = error_of(&c, "SELECT lsync_forget_peer(NULL)");
    assert!(
        e.starts_with("lsync_forget_peer: device id must not be NULL"),
        "{e}"
    );
    // A refused forget forgot nothing.
    assert_eq!(
        peer_row_of(&status_doc(&c), SILENT)["forgotten_ms"],
        Json::Null
    );
}

#[test]
fn status_says_how_long_a_peer_lags_and_how_far_the_clock_is_ahead() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    two_peers_one_tombstone(&c);
    sleep(Duration::from_millis(300));
    let s = status_doc(&c);
    let lag_ms = peer_row_of(&s, SILENT)["lag_ms"].as_i64().unwrap();
    assert!(
        (300..60_000).contains(&lag_ms),
        "the first change it lacks is 300+ ms old: {s}"
    );
    assert_eq!(peer_row_of(&s, ALIVE)["lag_ms"], 0, "it lacks nothing");
    assert_eq!(s["hlc_ahead_ms"], 0);

    // A peer with a fast clock pushed ours 10 s ahead of the wall clock.
    let ahead = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 10_000)
        << 16;
    c.execute(
        "UPDATE lsync_config SET value = ?1 WHERE key = 'hlc'",
        [ahead],
    )
    .unwrap();
    let s = status_doc(&c);
    let ms = s["hlc_ahead_ms"].as_i64().unwrap();
    assert!((9_000..=10_000).contains(&ms), "{s}");
}

fn forget_cli(args: &[&str], db: &Path) -> std::process::Output {
    Command::new(lsync_bin())
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .expect("run lsync")
}

/// The CLI: `lsync status` warns about the silent peer and names the way
/// out; `lsync peer forget` forgets it and prunes.
#[test]
fn lsync_peer_forget_and_the_status_warning() {
    let dir = TempDir::new();
    let c = open(&dir.db());
    two_peers_one_tombstone(&c);
    let text = String::from_utf8(forget_cli(&["status"], &dir.db()).stdout).unwrap();
    assert!(
        text.contains(&format!("warning: peer {SILENT} holds back 1 tombstone(s)"))
            && text.contains(&format!(
                "lsync peer forget --db {} {SILENT}",
                dir.db().display()
            )),
        "{text}"
    );
    assert!(
        !text.contains(&format!("peer {ALIVE} holds back")),
        "{text}"
    );

    let out = forget_cli(&["peer", "forget", "not-a-uuid"], &dir.db());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'not-a-uuid' is not a device id"), "{err}");

    let out = forget_cli(&["peer", "forget", SILENT], &dir.db());
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("1 tombstone(s) no longer wait for its ACK; 1 pruned"),
        "{said}"
    );
    let text = String::from_utf8(forget_cli(&["status"], &dir.db()).stdout).unwrap();
    assert!(
        text.contains(&format!("peer {SILENT} was forgotten")),
        "{text}"
    );
    assert!(!text.contains("warning:"), "{text}");
    assert_eq!(status_doc(&c)["tombstones"], 0);
}

/// Three devices: B and C dial A. C goes away for good; a delete at A is
/// acknowledged by B but kept for C, and `lsync status` says so. After
/// `lsync peer forget`, A prunes it; C, back with its old database, is
/// refused.
#[test]
fn a_forgotten_device_releases_tombstones_and_is_refused_when_back() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    let (c_db, c) = library_db(dir.path(), "c");
    add_tag(&a, "keep", "green");
    add_tag(&a, "doomed", "black");
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let join = [
        "--join",
        FAST_RETRY[0],
        FAST_RETRY[1],
        FAST_RETRY[2],
        FAST_RETRY[3],
    ];
    let node_b = Sidecar::start(dir.path(), "B", &b_db, &secret, &[node_a.addr()], &join);
    let node_c = Sidecar::start(dir.path(), "C", &c_db, &secret, &[node_a.addr()], &join);
    let nodes = [&node_a, &node_b, &node_c];
    wait_for("all three hold both tags", &nodes, || {
        converged(&[&a, &b, &c], 2)
    });
    let (dev_b, dev_c) = (device_id(&b), device_id(&c));
    wait_for("A's status shows both with lag 0", &nodes, || {
        let s = lsync_status(&a_db);
        s["peers"]
            .as_array()
            .is_some_and(|ps| ps.len() == 2 && ps.iter().all(|p| p["lag"] == 0))
    });

    node_c.stop();
    a.execute("DELETE FROM tags WHERE name = 'doomed'", [])
        .unwrap();
    wait_for(
        "B applies the delete and acks it",
        &[&node_a, &node_b],
        || {
            converged(&[&a, &b], 1) && {
                let s = lsync_status(&a_db);
                s["peers"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["device_id"] == dev_b && p["lag"] == 0))
            }
        },
    );
    // Without forget, the tombstone stays, however long C is silent.
    sleep(Duration::from_millis(500));
    let s = lsync_status(&a_db);
    assert_eq!(
        (
            s["tombstones"].as_i64(),
            s["tombstones_awaiting_ack"].as_i64()
        ),
        (Some(1), Some(1)),
        "{s}"
    );
    let text = String::from_utf8(
        Command::new(lsync_bin())
            .args(["status", "--db"])
            .arg(&a_db)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains(&format!("warning: peer {dev_c} holds back 1 tombstone(s)")),
        "{text}"
    );

    let out = Command::new(lsync_bin())
        .args(["peer", "forget", &dev_c, "--db"])
        .arg(&a_db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 pruned"),
        "{out:?}"
    );
    let s = lsync_status(&a_db);
    assert_eq!(
        (
            s["tombstones"].as_i64(),
            s["tombstones_awaiting_ack"].as_i64()
        ),
        (Some(0), Some(0)),
        "{s}"
    );

    // C comes back with its old database: A refuses it, and C keeps the
    // tag that a pruned tombstone would no longer delete.
    node_c.restart();
    wait_for("A refuses the forgotten C", &[&node_a], || {
        node_a.log().contains("was forgotten here")
    });
    assert_eq!(count(&c, "tags"), 2);
    assert!(node_b.alive());
}
