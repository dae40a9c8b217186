//! End-to-end tests of the replicator's liveness: no snapshot offered or
//! retried in a loop, a sidecar that notices its database file is gone, no
//! process outliving its test, and a CLI that ends quietly into a closed
//! pipe. Real `lsync` processes on 127.0.0.1; see `sidecar.rs` for the
//! conventions.

use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rusqlite::Connection;

use lsync_tests::*;

/// How long a sidecar may take to notice that its file is gone and stop.
const NOTICE: Duration = Duration::from_secs(10);

fn tag_names(c: &Connection) -> Vec<String> {
    let mut s = c.prepare("SELECT name FROM tags ORDER BY name").unwrap();
    let names = s.query_map([], |r| r.get(0)).unwrap();
    names.collect::<Result<_, _>>().unwrap()
}

/// Files left in `<db>-lsync/incoming` (partial or complete downloads).
fn downloads(db: &Path) -> Vec<String> {
    let mut dir = db.as_os_str().to_owned();
    dir.push("-lsync/incoming");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------

/// A peer that holds a snapshot's cursor already pulls from it again; a
/// snapshot reused because it is recent would bring it nothing, and it would
/// import that same snapshot forever.
#[test]
fn a_snapshot_that_is_not_ahead_of_the_peer_is_never_offered() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    add_tag(&a, "red", "#f00");
    add_tag(&a, "green", "#0f0");
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[],
        &["--strategy", "snapshot"],
    );
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    wait_for("B imports A's snapshot", &[&node_a, &node_b], || {
        node_b.log().contains("snapshot imported") && converged(&[&a, &b], 2)
    });
    // B is offline while A writes: on its return, A's last snapshot (made
    // seconds ago, so recent enough to reuse) holds exactly B's watermark.
    node_b.stop();
    add_tag(&a, "newer", "#00f");
    node_b.restart();
    wait_for(
        "B gets the row written while it was away",
        &[&node_a, &node_b],
        || converged(&[&a, &b], 3),
    );
    let imports = occurrences(&node_b.log(), "snapshot imported");
    assert!(
        imports <= 1,
        "B imported {imports} snapshots after its restart:\n{}",
        node_b.log()
    );
}

/// A snapshot that `lsync_restore` refuses (here a UNIQUE index that only
/// B has) is discarded, never resumed; B catches up by changesets, and once
/// the source no longer collides, it converges. The failure shows in
/// `lsync status`.
#[test]
fn a_snapshot_that_fails_to_restore_is_discarded_for_changesets() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    add_tag(&a, "red", "#f00");
    let a_dup = add_tag(&a, "dup", "#a00");
    // B has data of its own, so the snapshot is merged, and an app trigger
    // at B fails on a new tag named "dup" with an error that is not a
    // constraint (a refused change would be quarantined instead): the
    // restore of A's snapshot fails, whole.
    add_tag(&b, "dup", "#b00");
    b.execute_batch(
        "CREATE TRIGGER tags_dup BEFORE INSERT ON tags WHEN NEW.name = 'dup'
         BEGIN SELECT json('not json'); END",
    )
    .unwrap();
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[],
        &["--strategy", "snapshot"],
    );
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    let nodes = [&node_a, &node_b];
    wait_for(
        "B records that the snapshot failed to restore",
        &nodes,
        || {
            lsync_status(&b_db)["snapshot_failures"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        },
    );
    let s = lsync_status(&b_db);
    let failure = &s["snapshot_failures"][0];
    assert_eq!(failure["peer"], device_id(&a).as_str(), "{s}");
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("malformed JSON"),
        "{failure}"
    );
    let text = Command::new(lsync_bin())
        .args(["status", "--db"])
        .arg(&b_db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("failed to restore"), "{text}");
    wait_for("B falls back to changesets", &nodes, || {
        node_a.log().contains("sending changesets instead")
    });

    // The source changes: its own "dup" is renamed (A holds B's too by now).
    // B converges, which it could not by retrying the snapshot it downloaded
    // before.
    a.execute("UPDATE tags SET name = 'dup-a' WHERE id = ?1", [a_dup])
        .unwrap();
    wait_for("B converges with A", &nodes, || converged(&[&a, &b], 3));
    assert_eq!(tag_names(&b), ["dup", "dup-a", "red"]);
    wait_for("no download is left behind", &nodes, || {
        downloads(&b_db).is_empty()
    });
    let log = node_b.log();
    assert!(
        !log.contains("resuming an interrupted snapshot download"),
        "a failed download was resumed:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// The database file under a running sidecar
// ---------------------------------------------------------------------------

/// A and B in sync, B's database in a directory of its own.
fn synced_pair(dir: &Path) -> (Sidecar, Sidecar, Connection, std::path::PathBuf) {
    let secret = new_secret(dir, "secret");
    let b_dir = dir.join("b");
    std::fs::create_dir(&b_dir).unwrap();
    let (a_db, a) = library_db(dir, "a");
    let (b_db, b) = library_db(&b_dir, "b");
    add_tag(&a, "red", "#f00");
    let node_a = Sidecar::start(dir, "A", &a_db, &secret, &[], &[]);
    let node_b = Sidecar::start(
        dir,
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    wait_for("A and B converge", &[&node_a, &node_b], || {
        converged(&[&a, &b], 1)
    });
    drop(b);
    (node_a, node_b, a, b_db)
}

/// B must stop by itself, with an error that says why.
fn assert_stops(node: &Sidecar, why: &str) {
    let Some(status) = node.wait_exit(NOTICE) else {
        panic!(
            "{} still runs {NOTICE:?} after its database was {why}:\n{}",
            node.name,
            node.log()
        );
    };
    assert!(!status.success(), "{} exited with {status}", node.name);
    let log = node.log();
    assert!(log.contains(&format!("was {why}")), "{log}");
}

#[test]
fn a_sidecar_stops_when_its_database_file_is_deleted() {
    let dir = TempDir::new();
    let (node_a, node_b, a, b_db) = synced_pair(dir.path());
    for suffix in ["", "-wal", "-shm"] {
        let mut f = b_db.as_os_str().to_owned();
        f.push(suffix);
        let _ = std::fs::remove_file(f);
    }
    // A write at A: B's session must not apply it to a new database.
    add_tag(&a, "after", "#000");
    assert_stops(&node_b, "removed");
    assert!(!b_db.exists(), "a new database was created at {b_db:?}");
    assert!(node_a.alive());
}

/// The way a test's temporary directory goes: with the database, its WAL,
/// and the sidecar's own files.
#[test]
fn a_sidecar_stops_when_its_database_directory_is_removed() {
    let dir = TempDir::new();
    let (_node_a, node_b, _a, b_db) = synced_pair(dir.path());
    std::fs::remove_dir_all(b_db.parent().unwrap()).unwrap();
    assert_stops(&node_b, "removed");
    assert!(!b_db.exists(), "a new database was created at {b_db:?}");
}

#[test]
fn a_sidecar_stops_when_its_database_file_is_replaced() {
    let dir = TempDir::new();
    let (_node_a, node_b, _a, b_db) = synced_pair(dir.path());
    let (other, c) = library_db(dir.path(), "other");
    drop(c);
    std::fs::rename(&other, &b_db).unwrap();
    assert_stops(&node_b, "replaced");
}

// ---------------------------------------------------------------------------
// No process outlives its test
// ---------------------------------------------------------------------------

/// Waits until every pid in `pids` has ended, or fails.
fn assert_all_end(pids: &[i32], after: &str) {
    for &pid in pids {
        let ended = (0..200).any(|_| {
            let gone = process_ended(pid);
            if !gone {
                std::thread::sleep(Duration::from_millis(50));
            }
            gone
        });
        assert!(ended, "lsync (pid {pid}) still runs 10 s after {after}");
    }
}

/// A test that panics while a sidecar runs, on a terminal or not, leaves no
/// process behind (the progress-bar test once left its `lsync run --join`
/// running under script(1)).
#[test]
fn sidecars_of_a_test_that_panics_are_stopped() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, _a) = library_db(dir.path(), "a");
    let (b_db, _b) = library_db(dir.path(), "b");
    let (tx, rx) = std::sync::mpsc::channel();
    let (d, s) = (dir.path().to_owned(), secret.clone());
    let test = std::thread::spawn(move || {
        let node_a = Sidecar::start(&d, "A", &a_db, &s, &[], &[]);
        let node_b =
            Sidecar::start_on_terminal(&d, "B", &b_db, &s, &[node_a.addr()], &["--join"], &[]);
        tx.send(vec![node_a.pid(), node_b.pid()]).unwrap();
        panic!("a failing test");
    });
    assert!(test.join().is_err());
    let pids = rx.recv().expect("both sidecars started");
    assert_all_end(&pids, "their test panicked");
}

const TIED_ENV: &str = "LSYNC_TEST_TIED_DIR";

/// A test binary that is killed (SIGKILL, as a CI timeout does) runs no
/// destructor; its sidecars must end anyway. The test runs itself as the
/// process to kill: with `LSYNC_TEST_TIED_DIR` set, it starts the sidecars,
/// writes their pids, and waits.
#[test]
fn sidecars_die_with_the_test_process() {
    if let Some(d) = std::env::var_os(TIED_ENV) {
        let d = std::path::PathBuf::from(d);
        let secret = d.join("secret");
        let node_a = Sidecar::start(&d, "A", &d.join("a.db"), &secret, &[], &[]);
        let node_b = Sidecar::start_on_terminal(
            &d,
            "B",
            &d.join("b.db"),
            &secret,
            &[node_a.addr()],
            &["--join"],
            &[],
        );
        let pids = format!("{} {}", node_a.pid(), node_b.pid());
        std::fs::write(d.join("pids.tmp"), pids).unwrap();
        std::fs::rename(d.join("pids.tmp"), d.join("pids")).unwrap();
        std::thread::sleep(Duration::from_secs(60));
        panic!("not killed within 60 s");
    }
    let dir = TempDir::new();
    new_secret(dir.path(), "secret");
    library_db(dir.path(), "a");
    library_db(dir.path(), "b");
    let mut harness = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sidecars_die_with_the_test_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(TIED_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pids_file = dir.path().join("pids");
    let started = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        pids_file.exists() || harness.try_wait().unwrap().is_some()
    });
    let Ok(pids) = std::fs::read_to_string(&pids_file) else {
        let _ = harness.kill();
        let _ = harness.wait();
        panic!("the inner test did not start its sidecars (started: {started})");
    };
    let pids: Vec<i32> = pids.split(' ').map(|p| p.parse().unwrap()).collect();
    harness.kill().unwrap();
    harness.wait().unwrap();
    assert_all_end(&pids, "their test process was killed");
}

// ---------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------

/// `lsync status --db x.db | head`: the reader goes away; lsync ends
/// quietly instead of panicking on the broken pipe.
#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    let dir = TempDir::new();
    let (db, _c) = library_db(dir.path(), "a");
    for json in [false, true] {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills a two-element array with two new descriptors,
        // each owned once below: the read end is closed at once, the write
        // end is owned by the File and goes to the child as its stdout.
        let write_end = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            libc::close(fds[0]);
            std::fs::File::from_raw_fd(fds[1])
        };
        let mut cmd = Command::new(lsync_bin());
        cmd.args(["status", "--db"]).arg(&db);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.stdout(write_end).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "lsync status (json: {json}) into a closed pipe: {}\n{stderr}",
            out.status
        );
    }
}
