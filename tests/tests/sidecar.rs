//! End-to-end tests of the `lsync run` sidecar: real replicator processes on
//! 127.0.0.1, each on its own database file, with the app side written
//! through rusqlite and the real `liblsync.so`.
//!
//! Every wait is bounded (a poll every 50 ms, with a deadline) and fails with
//! the logs of the processes involved. Processes are killed when their guard
//! drops, also when a test panics.
//!
//! The `lsync` binary must be built first: `cargo build --release --workspace`
//! (or point `LSYNC_BIN` at it). `LSYNC_TEST_LOG` sets the children's
//! `RUST_LOG` (default `info`); with `LSYNC_TEST_SHOW_LOGS` set, every
//! process prints its logs when it is dropped, not only on failure.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use lsync_tests::*;
// ---------------------------------------------------------------------------
// 1. Two peers
// ---------------------------------------------------------------------------

#[test]
fn two_peers_converge_after_writes_on_both_sides() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");

    // Before any replicator runs: entries on A (pulled on connect).
    index_tree(&a, "a", 40);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join"],
    );
    let nodes = [&node_a, &node_b];

    // While both run: tags on B, more entries on A (pushed).
    let red = add_tag(&b, "red", "#f00");
    add_tag(&b, "blue", "#00f");
    index_tree(&a, "a2", 10);
    // 2 locations + 50 entries + 2 tags.
    wait_for("A and B hold the same entries and tags", &nodes, || {
        converged(&[&a, &b], 54)
    });
    assert_eq!(library_id(&a), library_id(&b), "B joined A's library");

    // A tag assignment on each side, across devices: on A with B's tag, on B
    // with A's entry; and concurrent edits of the same shared tag.
    let red_at_a = id_by_name(&a, "tags", "red").unwrap();
    let entry_at_a = id_by_name(&a, "entries", "a-3").unwrap();
    assign(&a, red_at_a, entry_at_a);
    let entry_at_b = id_by_name(&b, "entries", "a2-5").unwrap();
    assign(&b, red, entry_at_b);
    a.execute(
        "UPDATE tags SET color = 'crimson' WHERE id = ?1",
        [red_at_a],
    )
    .unwrap();
    b.execute("UPDATE tags SET name = 'rouge' WHERE id = ?1", [red])
        .unwrap();
    a.execute("UPDATE entries SET size = 1 WHERE name = 'a-7'", [])
        .unwrap();
    wait_for("A and B converge after cross-device writes", &nodes, || {
        converged(&[&a, &b], 56)
    });
    let d = library_dump(&b);
    assert!(
        d.iter()
            .any(|r| r.contains("\"rouge\"") && r.contains("\"crimson\"")),
        "per-column LWW keeps both edits of the tag: {d:?}"
    );
    assert_eq!(count(&b, "lsync_deferred"), 0);
    assert!(node_a.alive() && node_b.alive());
}

// ---------------------------------------------------------------------------
// 2. Three peers in a line
// ---------------------------------------------------------------------------

#[test]
fn three_peers_in_a_line_converge() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    let (c_db, c) = library_db(dir.path(), "c");
    index_tree(&a, "a", 30);
    add_tag(&b, "from-b", "green");
    add_tag(&c, "from-c", "cyan");
    index_tree(&c, "c", 5);

    // B is the hub: A and C both dial it; A and C never talk.
    let node_b = Sidecar::start(dir.path(), "B", &b_db, &secret, &[], &[]);
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[node_b.addr()],
        &["--join"],
    );
    let node_c = Sidecar::start(
        dir.path(),
        "C",
        &c_db,
        &secret,
        &[node_b.addr()],
        &["--join"],
    );
    let nodes = [&node_a, &node_b, &node_c];
    // 2 locations + 35 entries + 2 tags.
    wait_for("A, B and C converge", &nodes, || {
        converged(&[&a, &b, &c], 39)
    });

    // Writes that must be relayed: A tags an entry of its own with C's tag,
    // C tags A's entry with B's tag, C renames B's tag, A adds entries.
    let t = id_by_name(&a, "tags", "from-c").unwrap();
    let e = id_by_name(&a, "entries", "a-1").unwrap();
    assign(&a, t, e);
    let t = id_by_name(&c, "tags", "from-b").unwrap();
    let e = id_by_name(&c, "entries", "a-2").unwrap();
    assign(&c, t, e);
    c.execute("UPDATE tags SET color = 'lime' WHERE id = ?1", [t])
        .unwrap();
    index_tree(&a, "a-late", 4);
    // + 1 location, 4 entries, 2 assignments.
    wait_for("A, B and C converge after relayed writes", &nodes, || {
        converged(&[&a, &b, &c], 46)
    });
    assert!(library_dump(&a).iter().any(|r| r.contains("\"lime\"")));

    // A and C never had a session with each other.
    let peers_of = |conn: &Connection| -> Vec<String> {
        let mut s = conn.prepare("SELECT device_id FROM lsync_peers").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(peers_of(&a), vec![device_id(&b)]);
    assert_eq!(peers_of(&c), vec![device_id(&b)]);
}

// ---------------------------------------------------------------------------
// 3. Offline, then back
// ---------------------------------------------------------------------------

#[test]
fn a_peer_that_was_offline_catches_up_after_a_restart() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "a", 20);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join"],
    );
    wait_for("B has A's entries", &[&node_a, &node_b], || {
        converged(&[&a, &b], 21)
    });

    node_b.stop();
    // Meanwhile: inserts, an update and a delete on A, a tag on B (offline).
    index_tree(&a, "while-away", 25);
    a.execute("UPDATE entries SET size = -1 WHERE name = 'a-4'", [])
        .unwrap();
    a.execute("DELETE FROM entries WHERE name = 'a-19'", [])
        .unwrap();
    add_tag(&b, "written-offline", "grey");
    sleep(Duration::from_millis(300));
    assert_eq!(count(&b, "entries"), 20, "B is offline");

    node_b.restart();
    let nodes = [&node_a, &node_b];
    // 2 locations + 44 entries + 1 tag.
    wait_for("B catches up after its restart", &nodes, || {
        converged(&[&a, &b], 47)
    });
    // The restarted session resumed from B's watermark, not from zero.
    let log = node_b.log();
    let line = log
        .lines()
        .find(|l| l.contains("session established"))
        .expect("B logged its session");
    assert!(
        logged_cursor(line).is_some_and(|c| c > 0),
        "B resumes from its persisted watermark: {line}"
    );
}

/// A holding `n` entries, and a fresh B (with `b_env`) joining it by a
/// stream of `batch`-change changesets.
fn stream_catch_up(
    n: i64,
    batch: &str,
    b_extra: &[&str],
) -> (TempDir, Connection, Connection, Sidecar, Sidecar) {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "big", n);
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[],
        &["--batch", batch, "--strategy", "batch"],
    );
    let mut b_args = vec!["--join", "--batch", batch, FAST_RETRY[0], FAST_RETRY[1]];
    b_args.extend_from_slice(b_extra);
    let node_b = Sidecar::start(dir.path(), "B", &b_db, &secret, &[node_a.addr()], &b_args);
    (dir, a, b, node_a, node_b)
}

// ---------------------------------------------------------------------------
// 4. SIGKILL in the middle of a 200k-row catch-up
// ---------------------------------------------------------------------------

#[test]
fn a_replicator_killed_mid_catch_up_converges_without_duplicates() {
    const N: i64 = 200_000;
    // A stream of batches, so that B can be killed between two of them (the
    // snapshot path has its own kill tests in initial_sync.rs).
    let (_dir, a, b, node_a, node_b) = stream_catch_up(N, "1000", &[]);
    // Kill B once it holds a tenth of the rows, well before it is done.
    wait_for_within(
        "B holds some but not all rows",
        &[&node_a, &node_b],
        Duration::from_secs(60),
        || {
            let seen = count(&b, "entries");
            if seen >= N {
                panic!("B caught up before it could be killed (poll too slow)");
            }
            seen >= N / 10
        },
    );
    node_b.kill9();
    let held = count(&b, "entries");
    assert!(held > 0 && held < N, "killed mid-way: {held} of {N}");

    // The watermark moved in the same transaction as the rows: B holds
    // exactly A's entries up to it.
    let a_dev = device_id(&a);
    let cursor: i64 = b
        .query_row(
            "SELECT recv_cursor FROM lsync_peers WHERE device_id = ?1",
            [&a_dev],
            |r| r.get(0),
        )
        .unwrap();
    let after: i64 = a
        .query_row(
            "SELECT count(*) FROM lsync_changes(?1) WHERE tbl = 'entries'",
            [cursor],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        held,
        N - after,
        "B holds {held} entries; A has {after} entries after B's watermark {cursor}"
    );

    node_b.restart();
    let nodes = [&node_a, &node_b];
    wait_for_within(
        "B has all the rows after its restart",
        &nodes,
        Duration::from_secs(90),
        || count(&b, "entries") == N,
    );
    let line = node_b
        .log()
        .lines()
        .find(|l| l.contains("session established"))
        .map(str::to_owned)
        .expect("B logged its session");
    assert_eq!(
        logged_cursor(&line),
        Some(cursor),
        "B resumed from its watermark {cursor}: {line}"
    );
    let (total, distinct): (i64, i64) = b
        .query_row(
            "SELECT count(*), count(DISTINCT uuid) FROM entries",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((total, distinct), (N, N), "no duplicates at B");
    assert_eq!(count(&b, "locations"), 1);
    assert_eq!(count(&b, "lsync_deferred"), 0, "every link resolved");
    let (da, db) = (library_dump(&a), library_dump(&b));
    assert!(da == db, "dumps differ: {}", first_difference(&da, &db));
}

// ---------------------------------------------------------------------------
// 5. The app keeps writing while the replicator applies
// ---------------------------------------------------------------------------

#[test]
fn the_app_writes_without_errors_while_the_replicator_applies() {
    const N: i64 = 60_000;
    const TAGS_PER_TX: i64 = 3;
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "big", N);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &["--batch", "500"]);

    // The app on B: small transactions, one tag each, busy_timeout 5 s,
    // until the catch-up is over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = {
        let (path, stop) = (b_db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = open(&path);
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            let (mut ok, mut during, mut errors) = (0i64, 0i64, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                let r = (|| -> rusqlite::Result<i64> {
                    let tx = c.unchecked_transaction()?;
                    for j in 0..TAGS_PER_TX {
                        tx.execute(
                            "INSERT INTO tags(name, color) VALUES (?1, 'app')",
                            [format!("app-{ok}-{j}")],
                        )?;
                    }
                    let seen: i64 =
                        tx.query_row("SELECT count(*) FROM entries", [], |r| r.get(0))?;
                    tx.commit()?;
                    Ok(seen)
                })();
                match r {
                    Ok(seen) => {
                        ok += 1;
                        if seen > 0 && seen < N {
                            during += 1;
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                sleep(Duration::from_millis(2));
            }
            (ok, during, errors)
        })
    };
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", "--batch", "500", FAST_RETRY[0], FAST_RETRY[1]],
    );
    let nodes = [&node_a, &node_b];
    wait_for_within(
        "B catches up with A",
        &nodes,
        Duration::from_secs(30),
        || count(&b, "entries") == N,
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, during, errors) = app.join().expect("app thread");
    assert!(
        errors.is_empty(),
        "the app saw {} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    // SQLite does not queue waiting writers: without the replicator's
    // pauses between applies (see replicator/src/courtesy.rs) the app got
    // 0 to 12 transactions in here; with them, over 100.
    assert!(
        during >= 20,
        "the app committed {ok} transactions, only {during} while the catch-up was in progress"
    );
    // The app's tags reach A too.
    wait_for("A has the app's tags", &nodes, || {
        count(&a, "tags") == ok * TAGS_PER_TX && count(&b, "tags") == ok * TAGS_PER_TX
    });
    let (da, db) = (library_dump(&a), library_dump(&b));
    assert!(da == db, "dumps differ: {}", first_difference(&da, &db));
    // Nor did the replicator's sessions fail because the app held the write
    // lock: it waits for it like the app does.
    for n in nodes {
        let log = n.log();
        assert!(
            !log.contains("database is locked") && !log.contains("escalating"),
            "{}'s sessions failed while the app wrote:\n{}",
            n.name,
            log.lines()
                .filter(|l| l.contains("locked") || l.contains("escalating"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// An app that was idle when a long catch-up began: its first write must
/// get the write lock within its busy timeout, while the catch-up goes on
/// (the replicator leaves the lock free for 150 ms after every 2 s of
/// back-to-back applies, longer than SQLite's longest busy-handler sleep).
#[test]
fn an_idle_apps_first_write_during_a_long_catch_up_gets_in() {
    const N: i64 = 40_000;
    // 200 applies of 200 changes, each holding the lock 40 ms longer:
    // a catch-up of at least 8 s.
    let (_dir, a, b, node_a, node_b) = stream_catch_up(N, "200", &["--test-apply-delay-ms", "40"]);
    let nodes = [&node_a, &node_b];
    wait_for_within(
        "the catch-up begins",
        &nodes,
        Duration::from_secs(30),
        || count(&b, "entries") > 0,
    );
    b.busy_timeout(Duration::from_secs(5)).unwrap();
    let asked = Instant::now();
    let wrote = (|| -> rusqlite::Result<i64> {
        let tx = b.unchecked_transaction()?;
        tx.execute("INSERT INTO tags(name, color) VALUES ('first', 'app')", [])?;
        let seen = tx.query_row("SELECT count(*) FROM entries", [], |r| r.get(0))?;
        tx.commit()?;
        Ok(seen)
    })();
    let waited = asked.elapsed();
    let seen = wrote.unwrap_or_else(|e| panic!("the app's write failed after {waited:?}: {e}"));
    assert!(
        seen < N,
        "the write waited {waited:?}, until the catch-up was over ({seen} entries)"
    );
    wait_for_within(
        "B catches up with A",
        &nodes,
        Duration::from_secs(60),
        || count(&b, "entries") == N && count(&a, "tags") == 1,
    );
}

/// One node, several sessions at once: each session has its own connection,
/// and they must wait for each other's write locks (as they wait for the
/// app's) instead of failing with "database is locked".
#[test]
fn a_hub_with_four_peers_converges_without_lock_errors() {
    const HUB_TAGS: i64 = 20_000;
    const PEER_ROWS: i64 = 20;
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (hub_db, hub) = library_db(dir.path(), "hub");
    // Edits of every shared row, not folded into the change clock yet: the
    // first session's flush writes while the sessions of the peers started
    // right after it begin.
    hub.execute_batch(&format!(
        "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < {HUB_TAGS})
         INSERT INTO tags(name, color) SELECT 'hub-' || k, 'new' FROM n;
         SELECT lsync_flush();
         UPDATE tags SET color = 'edited';"
    ))
    .unwrap();
    let node_hub = Sidecar::start(dir.path(), "HUB", &hub_db, &secret, &[], &[]);
    let mut conns = vec![];
    let mut nodes = vec![];
    for name in ["P1", "P2", "P3", "P4"] {
        let (db, c) = library_db(dir.path(), name);
        for k in 0..PEER_ROWS {
            add_tag(&c, &format!("{name}-{k}"), name);
        }
        index_tree(&c, name, PEER_ROWS);
        nodes.push(Sidecar::start(
            dir.path(),
            name,
            &db,
            &secret,
            &[node_hub.addr()],
            &["--join", FAST_RETRY[0], FAST_RETRY[1]],
        ));
        conns.push(c);
    }
    let mut all: Vec<&Sidecar> = nodes.iter().collect();
    all.push(&node_hub);
    let mut dbs: Vec<&Connection> = conns.iter().collect();
    dbs.push(&hub);
    let tags = HUB_TAGS + 4 * PEER_ROWS;
    let rows = (tags + 4 * (1 + PEER_ROWS)) as usize;
    wait_for("the hub and its 4 peers converge", &all, || {
        dbs.iter().all(|c| count(c, "tags") == tags) && converged(&dbs, rows)
    });
    let mut locked = Vec::new();
    for n in &all {
        for l in n.all_logs().lines() {
            if l.contains("database is locked") {
                locked.push(format!("{}: {l}", n.name));
            }
        }
    }
    assert!(
        locked.is_empty(),
        "sessions failed on lock contention:\n{}",
        locked.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 6. Refusals
// ---------------------------------------------------------------------------

/// Waits until B has been refused at least 3 times (so it did retry) and both
/// logs mention `reason_a` / `reason_b`; then checks that nothing crossed.
fn assert_refused(
    a: &Connection,
    b: &Connection,
    node_a: &Sidecar,
    node_b: &Sidecar,
    reason_a: &str,
    reason_b: &str,
) {
    let nodes = [node_a, node_b];
    wait_for(
        &format!("A logs {reason_a:?}, B logs {reason_b:?}, B retried 3 times"),
        &nodes,
        || {
            let (la, lb) = (node_a.log(), node_b.log());
            la.contains(reason_a)
                && lb.contains(reason_b)
                && occurrences(&lb, "session failed") >= 3
        },
    );
    assert_eq!(count(b, "entries"), 0, "A's entries never reach B");
    assert_eq!(count(b, "locations"), 0);
    assert_eq!(count(a, "tags"), 0, "B's tags never reach A");
    assert_eq!(
        count(a, "lsync_peers"),
        0,
        "no session was established at A"
    );
    assert_ne!(library_id(a), library_id(b), "B did not join A's library");
    assert!(!node_a.log().contains("session established"));
    assert!(!node_b.log().contains("session established"));
}

/// A with a few entries, B with a tag; B is started by `start_b`.
fn refusal_pair(
    dir: &TempDir,
    b_schema: Option<&str>,
) -> (Connection, Connection, PathBuf, PathBuf) {
    let (a_db, a) = library_db(dir.path(), "a");
    index_tree(&a, "a", 5);
    let b_db = dir.path().join("b.db");
    let b = open(&b_db);
    match b_schema {
        Some(sql) => b.execute_batch(sql).unwrap(),
        None => track_library(&b),
    }
    b.execute("INSERT INTO tags(name, color) VALUES ('b-tag', 'x')", [])
        .unwrap();
    (a, b, a_db, b_db)
}

#[test]
fn a_wrong_secret_is_refused() {
    let dir = TempDir::new();
    let secret_a = new_secret(dir.path(), "secret-a");
    let secret_b = new_secret(dir.path(), "secret-b");
    let (a, b, a_db, b_db) = refusal_pair(&dir, None);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret_a, &[], &[]);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret_b,
        &[node_a.addr()],
        &[
            "--join",
            FAST_RETRY[0],
            FAST_RETRY[1],
            FAST_RETRY[2],
            FAST_RETRY[3],
        ],
    );
    // The responder is the side that can tell: the first Noise message does
    // not decrypt under its key.
    assert_refused(
        &a,
        &b,
        &node_a,
        &node_b,
        "authentication failed",
        "session failed",
    );
}

#[test]
fn a_wrong_library_is_refused() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a, b, a_db, b_db) = refusal_pair(&dir, None);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &FAST_RETRY,
    );
    assert_refused(&a, &b, &node_a, &node_b, "library", "library");
}

#[test]
fn a_schema_with_one_table_fewer_is_refused() {
    // One tracked table fewer at B.
    schema_mismatch_is_refused(
        "SELECT lsync_track('locations', 'device_owned', '{\"local_columns\": [\"device_id\"]}');
         SELECT lsync_track('entries', 'device_owned');
         SELECT lsync_track('tags', 'shared');",
    );
}

#[test]
fn a_schema_with_an_extra_tracked_column_is_refused() {
    schema_mismatch_is_refused(
        "ALTER TABLE entries ADD COLUMN note TEXT;
         SELECT lsync_track('locations', 'device_owned', '{\"local_columns\": [\"device_id\"]}');
         SELECT lsync_track('entries', 'device_owned');
         SELECT lsync_track('tags', 'shared');
         SELECT lsync_track('tag_assignments', 'shared');",
    );
}

/// B tracks `b_tracking` on the example schema; A tracks the example's
/// tables. With --join the library alone would not stop B; the schema must.
fn schema_mismatch_is_refused(b_tracking: &str) {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let schema = format!("{}\n{b_tracking}", lsync_tests::library_schema());
    let (a, b, a_db, b_db) = refusal_pair(&dir, Some(&schema));
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &[
            "--join",
            FAST_RETRY[0],
            FAST_RETRY[1],
            FAST_RETRY[2],
            FAST_RETRY[3],
        ],
    );
    assert_refused(&a, &b, &node_a, &node_b, "schema", "schema");
}

// ---------------------------------------------------------------------------
// 7. Clients without the secret
// ---------------------------------------------------------------------------

const NEEDLE: &str = "needle-7f3a9c";

/// Connects to `addr`, sends `bytes`, optionally half-closes, and returns
/// everything the server sends back before it closes (or 3 s pass), plus
/// whether it did close.
fn poke(addr: &str, bytes: &[u8], half_close: bool) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // The server may close before it has read everything: ignore EPIPE.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    read_until_closed(&mut s)
}

fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => break,
        }
    }
    (got, false)
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_client_without_the_secret_can_neither_read_nor_write() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "a", 10);
    a.execute("UPDATE entries SET name = ?1 WHERE name = 'a-3'", [NEEDLE])
        .unwrap();
    add_tag(&a, NEEDLE, "secret-color");
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    wait_for("B has A's rows", &[&node_a, &node_b], || {
        converged(&[&a, &b], 12)
    });
    let before = library_dump(&a);
    let peers_before = count(&a, "lsync_peers");

    // A Noise client that runs the real handshake (protocol 5: a version
    // preamble, then XXpsk0) with a wrong key, then sends a forged hello
    // anyway.
    let wrong_key = [0x42u8; 32];
    let params: snow::params::NoiseParams =
        "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
    let preamble = [b"lsyncv".as_slice(), &5u32.to_be_bytes()].concat();
    let builder = snow::Builder::new(params.clone());
    let static_key = builder.generate_keypair().unwrap().private;
    let mut hs = snow::Builder::new(params)
        .prologue(&preamble)
        .unwrap()
        .local_private_key(&static_key)
        .unwrap()
        .psk(0, &wrong_key)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut msg1 = vec![0u8; 1024];
    let n = hs.write_message(&[], &mut msg1).unwrap();
    let mut noise_client = frame(&[preamble.as_slice(), &msg1[..n]].concat());
    noise_client.extend(frame(br#"{"type":"pull","since":0,"max":100000}"#));

    let mut huge_then_data = 0x8000_0000u32.to_be_bytes().to_vec();
    huge_then_data.extend_from_slice(&[0xAB; 4096]);
    let mut truncated = 1000u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[7u8; 10]);
    let mut plain_json = frame(
        br#"{"type":"hello","protocol":1,"library_id":"x","device_id":"y","schema":"[]","head":0}"#,
    );
    plain_json.extend(frame(br#"{"type":"pull","since":0,"max":1000}"#));
    let garbage: Vec<u8> = (0..2048u32).map(|i| (i * 7919 % 251) as u8).collect();

    let attacks: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        ("garbage bytes", garbage, false),
        ("a fake frame", frame(&[0x55; 48]), false),
        ("a plaintext hello and pull", plain_json, false),
        ("a zero-length frame", frame(&[]), false),
        ("a 2^31 length prefix", huge_then_data, false),
        ("a truncated frame", truncated, true),
        ("a lone partial length prefix", vec![0, 0], true),
        ("a Noise handshake with the wrong key", noise_client, false),
    ];
    for (what, bytes, half_close) in &attacks {
        let (got, closed) = poke(node_a.addr(), bytes, *half_close);
        assert!(
            closed,
            "A did not disconnect a client that sent {what} (got {} bytes)",
            got.len()
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.contains(NEEDLE) && !text.contains("secret-color"),
            "A leaked row data to a client that sent {what}"
        );
        assert!(
            got.is_empty(),
            "A answered {} bytes to a client that sent {what}: {:?}",
            got.len(),
            &got[..got.len().min(64)]
        );
    }
    assert!(node_a.alive(), "A survives the garbage");
    assert_eq!(library_dump(&a), before, "nothing was written to A");
    assert_eq!(count(&a, "lsync_peers"), peers_before);

    // A keeps serving its legitimate peer B, both ways...
    index_tree(&a, "after-garbage", 3);
    add_tag(&b, "from-b-after-garbage", "ok");
    wait_for(
        "B and A converge after the garbage",
        &[&node_a, &node_b],
        || converged(&[&a, &b], 17),
    );
    // ... and accepts a new one.
    let (c_db, c) = library_db(dir.path(), "c");
    let node_c = Sidecar::start(
        dir.path(),
        "C",
        &c_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    wait_for(
        "a new peer C converges with A",
        &[&node_a, &node_b, &node_c],
        || converged(&[&a, &b, &c], 17),
    );
    let log = node_a.log();
    assert!(
        occurrences(&log, "session ended") >= attacks.len(),
        "A logged each rejected client:\n{log}"
    );
}

/// "Logging: tracing, with one span per peer": every line a session logs
/// carries its peer's span, and only its own; lines of the node (accept,
/// dial) carry none.
#[test]
fn each_session_logs_in_its_own_span() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    let (c_db, c) = library_db(dir.path(), "c");
    index_tree(&a, "a", 25_000);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &["--batch", "1000"]);
    let mut nodes = vec![node_a];
    for (name, db) in [("B", &b_db), ("C", &c_db)] {
        let addr = nodes[0].addr().to_owned();
        nodes.push(Sidecar::start(
            dir.path(),
            name,
            db,
            &secret,
            &[&addr],
            &["--join", "--batch", "1000", FAST_RETRY[0], FAST_RETRY[1]],
        ));
        // Garbage connections while the sessions run.
        for _ in 0..3 {
            poke(nodes[0].addr(), &frame(&[0x55; 48]), false);
        }
    }
    let refs: Vec<&Sidecar> = nodes.iter().collect();
    wait_for("B and C catch up with A", &refs, || {
        count(&b, "entries") == 25_000 && count(&c, "entries") == 25_000
    });
    add_tag(&b, "t", "x");
    wait_for("the tag reaches C through A", &refs, || {
        count(&c, "tags") == 1
    });

    let mut bad = Vec::new();
    for n in &nodes {
        for line in n.log().lines() {
            let spans = occurrences(line, "peer{");
            let session_line =
                line.contains(" lsync::peer: ") && !line.contains("joined the peer's library");
            let node_line = line.contains(" lsync::node: ");
            if spans > 1 || (session_line && spans != 1) || (node_line && spans != 0) {
                bad.push(format!("{}: {line}", n.name));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} log lines are in the wrong span (nested, missing, or another session's):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 8. lsync status, ACKs and tombstones
// ---------------------------------------------------------------------------

fn peer_entry<'a>(s: &'a serde_json::Value, device: &str) -> &'a serde_json::Value {
    s["peers"]
        .as_array()
        .expect("peers is an array")
        .iter()
        .find(|p| p["device_id"] == device)
        .unwrap_or_else(|| panic!("no peer {device} in {s}"))
}

#[test]
fn status_shows_lag_and_tombstones_are_pruned_after_acks() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "a", 10);
    add_tag(&a, "doomed", "black");
    add_tag(&a, "kept", "white");
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    let nodes = [&node_a, &node_b];
    wait_for("B has A's rows", &nodes, || converged(&[&a, &b], 13));
    let (dev_a, dev_b) = (device_id(&a), device_id(&b));

    wait_for("A's status shows B with lag 0", &nodes, || {
        let s = lsync_status(&a_db);
        peer_entry(&s, &dev_b)["lag"] == 0
    });
    let s = lsync_status(&a_db);
    assert_eq!(s["device_id"], dev_a.as_str());
    assert_eq!(s["library_id"], library_id(&a).as_str());
    assert_eq!(s["deferred_links"], 0);
    let p = peer_entry(&s, &dev_b);
    assert!(p["last_error"].is_null(), "A's view of B: {p}");
    assert!(p["last_contact_ms"].as_i64().unwrap() > 0, "{p}");
    assert_eq!(p["acked_cursor"], s["head"], "{s}");
    let s = lsync_status(&b_db);
    assert_eq!(s["library_id"], library_id(&a).as_str());
    let p = peer_entry(&s, &dev_a);
    assert!(p["recv_cursor"].as_i64().unwrap() > 0, "{p}");
    // B's first session to A was refused once (the join); an error recorded
    // then may remain, but nothing newer than the session that succeeded.
    eprintln!("B's view of A: {p}");

    // The human-readable form names the peer too.
    let out = Command::new(lsync_bin())
        .args(["status", "--db"])
        .arg(&a_db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&dev_b), "{text}");

    // Delete while B is connected: B applies it and ACKs, A prunes.
    a.execute("DELETE FROM tags WHERE name = 'doomed'", [])
        .unwrap();
    a.execute("DELETE FROM entries WHERE name = 'a-9'", [])
        .unwrap();
    wait_for("B applies the deletes", &nodes, || converged(&[&a, &b], 11));
    wait_for(
        "A prunes the tombstones once B has ACKed them",
        &nodes,
        || {
            let s = lsync_status(&a_db);
            s["tombstones_awaiting_ack"] == 0
                && s["tombstones"] == 0
                && peer_entry(&s, &dev_b)["lag"] == 0
        },
    );
    wait_for(
        "B shows A with lag 0 and no tombstones awaiting ACK",
        &nodes,
        || {
            let s = lsync_status(&b_db);
            s["tombstones_awaiting_ack"] == 0 && peer_entry(&s, &dev_a)["lag"] == 0
        },
    );
}

#[test]
fn status_counts_changes_a_stopped_peer_has_not_acked() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "a", 5);
    add_tag(&a, "doomed", "black");
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    let nodes = [&node_a, &node_b];
    wait_for("B has A's rows", &nodes, || converged(&[&a, &b], 7));
    let dev_b = device_id(&b);
    wait_for("A's status shows B with lag 0", &nodes, || {
        peer_entry(&lsync_status(&a_db), &dev_b)["lag"] == 0
    });

    // B goes away; A deletes a tag. A's replicator keeps running, with no
    // session to export to.
    node_b.stop();
    a.execute("DELETE FROM tags WHERE name = 'doomed'", [])
        .unwrap();
    sleep(Duration::from_millis(200));
    let s = lsync_status(&a_db);
    assert!(
        s["tombstones_awaiting_ack"].as_i64().unwrap() >= 1,
        "a delete B has not ACKed is a tombstone awaiting an ACK: {s}"
    );
    assert!(
        peer_entry(&s, &dev_b)["lag"].as_i64().unwrap() >= 1,
        "B lags behind A by the delete: {s}"
    );

    node_b.restart();
    wait_for(
        "B applies the delete after its restart",
        &[&node_a, &node_b],
        || converged(&[&a, &b], 6),
    );
    wait_for("A prunes the tombstone", &[&node_a, &node_b], || {
        let s = lsync_status(&a_db);
        s["tombstones_awaiting_ack"] == 0 && s["tombstones"] == 0
    });
}

// ---------------------------------------------------------------------------
// 9. Clean shutdown
// ---------------------------------------------------------------------------

#[test]
fn lsync_run_exits_cleanly_on_sigterm_and_sigint() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "a", 5);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    wait_for("B has A's rows", &[&node_a, &node_b], || {
        converged(&[&a, &b], 6)
    });

    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        for node in [&node_a, &node_b] {
            assert!(node.alive());
            let t = Instant::now();
            node.signal(sig);
            let status = node
                .wait_exit(Duration::from_secs(8))
                .unwrap_or_else(|| panic!("{} still runs 8 s after {name}", node.name));
            assert_eq!(
                status.code(),
                Some(0),
                "{} exits with code 0 on {name}: {status}",
                node.name
            );
            assert!(
                t.elapsed() < Duration::from_secs(6),
                "{} took {:?} to stop",
                node.name,
                t.elapsed()
            );
            assert!(
                node.log().contains("stopped"),
                "{} logs its clean stop",
                node.name
            );
        }
        // Start both again (with a live session) for the next signal.
        node_a.restart();
        node_b.restart();
        wait_for("the session is back", &[&node_a, &node_b], || {
            node_b.log().contains("session established")
        });
    }
    // The data survived the restarts.
    assert!(converged(&[&a, &b], 6));
}

/// A peer that stops answering (SIGSTOP) is dropped after 4 heartbeats; once
/// it runs again it reconnects and catches up.
#[test]
fn a_silent_peer_is_dropped_and_reconnects() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "a", 5);
    let beat = ["--heartbeat-ms", "200"];
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &beat);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", beat[0], beat[1], FAST_RETRY[0], FAST_RETRY[1]],
    );
    wait_for("B has A's rows", &[&node_a, &node_b], || {
        converged(&[&a, &b], 6)
    });
    // Counted from here: an earlier session may have logged the same words.
    let silent = "no message from the peer";
    let before = occurrences(&node_a.log(), silent);
    node_b.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    wait_for("A drops the silent B", &[&node_a], || {
        occurrences(&node_a.log(), silent) > before
    });
    assert!(
        stopped.elapsed() >= Duration::from_millis(600),
        "dropped after {:?}, before 4 heartbeats of 200 ms",
        stopped.elapsed()
    );
    index_tree(&a, "while-stopped", 3);
    node_b.signal(libc::SIGCONT);
    wait_for("B reconnects and catches up", &[&node_a, &node_b], || {
        converged(&[&a, &b], 10)
    });
}

// ---------------------------------------------------------------------------
// 10. Backoff
// ---------------------------------------------------------------------------

/// Parses a `Duration` as `Debug` prints it: `100ms`, `1.6s`, `250µs`.
fn parse_debug_duration(s: &str) -> Duration {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .map(|i| s.split_at(i))
        .unwrap_or_else(|| panic!("not a duration: {s:?}"));
    let v: f64 = num
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {s:?}"));
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "µs" | "us" => v / 1e6,
        "ns" => v / 1e9,
        _ => panic!("unknown unit in {s:?}"),
    };
    Duration::from_secs_f64(secs)
}

/// Seconds since midnight of a log line's leading RFC 3339 timestamp.
fn line_time(line: &str) -> f64 {
    let ts = line.split_whitespace().next().unwrap_or_default();
    let t = ts
        .split('T')
        .nth(1)
        .and_then(|t| t.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let parts: Vec<f64> = t.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

/// The `retry_in=` values of the log, with the time of each line.
fn retries(log: &str) -> Vec<(f64, Duration)> {
    log.lines()
        .filter_map(|l| {
            let v = l.split("retry_in=").nth(1)?.split_whitespace().next()?;
            Some((line_time(l), parse_debug_duration(v)))
        })
        .collect()
}

/// Checks that the delays double from `initial` and stop at `max`, and that
/// the process really waited that long between attempts.
fn check_backoff(node: &Sidecar, initial: Duration, max: Duration, want: usize) {
    wait_for(&format!("{want} retries"), &[node], || {
        retries(&node.log()).len() >= want
    });
    let r = retries(&node.log());
    let delays: Vec<Duration> = r.iter().map(|x| x.1).collect();
    let mut expect = initial;
    for (i, d) in delays.iter().enumerate() {
        assert_eq!(
            *d, expect,
            "retry {i}: delays {delays:?} should double from {initial:?} up to {max:?}"
        );
        expect = (expect * 2).min(max);
    }
    assert!(
        delays.iter().filter(|d| **d == max).count() >= 2,
        "the delay stays at the cap: {delays:?}"
    );
    for w in r.windows(2) {
        let mut gap = w[1].0 - w[0].0;
        if gap < 0.0 {
            gap += 86_400.0;
        }
        let promised = w[0].1.as_secs_f64();
        assert!(
            gap >= promised - 0.02,
            "announced a retry in {promised} s but retried after {gap} s: {delays:?}"
        );
    }
}

#[test]
fn retries_back_off_exponentially_up_to_the_cap() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (db, _c) = library_db(dir.path(), "a");
    // A port that nothing listens on.
    let closed = format!("127.0.0.1:{}", free_port());
    let node = Sidecar::start(
        dir.path(),
        "A",
        &db,
        &secret,
        &[&closed],
        &["--backoff-initial-ms", "100", "--backoff-max-ms", "400"],
    );
    check_backoff(
        &node,
        Duration::from_millis(100),
        Duration::from_millis(400),
        6,
    );
    assert!(node.log().contains(&closed));

    // The same settings from a TOML config file (flags for the rest).
    let (db2, _c2) = library_db(dir.path(), "b");
    let cfg = dir.path().join("b.toml");
    std::fs::write(
        &cfg,
        format!("peer = [\"{closed}\"]\nbackoff_initial_ms = 60\nbackoff_max_ms = 240\n"),
    )
    .unwrap();
    let node2 = Sidecar::start(
        dir.path(),
        "B",
        &db2,
        &secret,
        &[],
        &["--config", cfg.to_str().unwrap()],
    );
    check_backoff(
        &node2,
        Duration::from_millis(60),
        Duration::from_millis(240),
        6,
    );
}

// ---------------------------------------------------------------------------
// 11. No resync loops
// ---------------------------------------------------------------------------

/// A database in `library` (a new one when `None`) with one shared table
/// whose `name` is UNIQUE, holding a tag named 'red'.
fn red_tag_db(dir: &std::path::Path, name: &str, library: Option<&str>) -> (PathBuf, Connection) {
    let path = dir.join(format!("{name}.db"));
    let c = open(&path);
    if let Some(l) = library {
        join_library(&c, l);
    }
    c.execute_batch(
        "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         SELECT lsync_track('tags', 'shared');
         INSERT INTO tags(name) VALUES ('red');
         CREATE TRIGGER no_second_red BEFORE INSERT ON tags WHEN NEW.name = 'red'
         BEGIN SELECT json('not json'); END;",
    )
    .unwrap();
    (path, c)
}

/// Issue 11, rule 3: an apply that fails for a reason a resync would hit
/// again (here an app trigger that fails on a second tag 'red' with an
/// error that is not a constraint, so the change cannot be quarantined)
/// never escalates to a full resync over and over. The peer reads as stuck
/// in `lsync status`, retrying goes on, and once the user removes the
/// trigger the change gets through.
#[test]
fn an_apply_that_would_fail_again_does_not_loop_through_full_resyncs() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = red_tag_db(dir.path(), "a", None);
    let (b_db, b) = red_tag_db(dir.path(), "b", Some(&library_id(&a)));
    // Only B refuses a second 'red'.
    a.execute("DROP TRIGGER no_second_red", []).unwrap();
    let a_id = device_id(&a);
    let fast = [
        "--heartbeat-ms",
        "200",
        FAST_RETRY[0],
        FAST_RETRY[1],
        FAST_RETRY[2],
        FAST_RETRY[3],
    ];
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &fast);
    let node_b = Sidecar::start(dir.path(), "B", &b_db, &secret, &[node_a.addr()], &fast);
    let nodes = [&node_a, &node_b];

    // B reports A as stuck, with the apply's error.
    let a_at_b = || {
        let s = lsync_status(&b_db);
        s["peers"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["device_id"] == a_id.as_str()).cloned())
            .unwrap_or_default()
    };
    wait_for(
        "B's status shows A stuck on the trigger's error",
        &nodes,
        || {
            let p = a_at_b();
            p["stuck"] == true
                && p["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("malformed JSON"))
                && p["resync_error"] == p["last_error"]
        },
    );
    // Enough failed sessions to escalate twice (5 each) if they counted...
    let stuck = "not escalating: a resync would fail again";
    wait_for_within(
        "B fails 12 sessions",
        &nodes,
        Duration::from_secs(60),
        || occurrences(&node_b.log(), stuck) >= 12,
    );
    // ... start at most one full resync on each side (none: they never
    // count; one if they did, and the resync then ends the same way).
    let at_most_one_resync = || {
        for n in nodes {
            let log = n.all_logs();
            let escalations = occurrences(&log, "escalating to a full resync");
            assert!(
                escalations <= 1,
                "{}: {escalations} escalations to a full resync:\n{log}",
                n.name
            );
        }
    };
    at_most_one_resync();
    let s = lsync_status(&b_db);
    assert!(
        peer_entry(&s, &a_id)["failures"].as_i64() < Some(5),
        "deterministic failures do not count towards an escalation: {s}"
    );

    // The user removes B's trigger: the sessions, still retrying, get A's
    // tag through, and the stuck state clears.
    b.execute("DROP TRIGGER no_second_red", []).unwrap();
    let tags = |c: &Connection| query_rows(c, "SELECT uuid, name FROM tags ORDER BY uuid");
    wait_for("A and B hold both tags 'red'", &nodes, || {
        let t = tags(&a);
        t.len() == 2 && tags(&b) == t
    });
    wait_for("B's status no longer shows A stuck", &nodes, || {
        let p = a_at_b();
        p["stuck"] == false && p["last_error"].is_null() && p["resync_error"].is_null()
    });
    at_most_one_resync();
}
