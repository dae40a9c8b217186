//! End-to-end tests of bulk sync: a fresh peer joining a large library by
//! snapshot (with kills of either side mid-transfer, a corrupted chunk,
//! writes during the transfer), bulk notifications, and the refusal of a
//! copied database. Real `lsync run` processes on 127.0.0.1; see
//! `sidecar.rs` for the conventions.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

use lsync_tests::*;

const N: i64 = 200_000;
const LONG: Duration = Duration::from_secs(120);

/// A with N entries (a tree: parent and location FKs) plus tags, and a
/// fresh B. Returns both connections and paths.
fn big_source(
    dir: &Path,
) -> (
    std::path::PathBuf,
    Connection,
    std::path::PathBuf,
    Connection,
) {
    let (a_db, a) = library_db(dir, "a");
    let (b_db, b) = library_db(dir, "b");
    index_tree(&a, "big", N);
    let t = add_tag(&a, "red", "#f00");
    assign(&a, t, 1);
    assign(&a, t, N);
    (a_db, a, b_db, b)
}

/// B holds exactly A's data, with no duplicate and no pending link.
fn assert_identical(a: &Connection, b: &Connection, rows: i64) {
    let (total, distinct): (i64, i64) = b
        .query_row(
            "SELECT count(*), count(DISTINCT uuid) FROM entries",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((total, distinct), (rows, rows), "no duplicates at B");
    assert_eq!(count(b, "lsync_deferred"), 0, "every link resolved");
    let (da, db) = (library_dump(a), library_dump(b));
    assert!(da == db, "dumps differ: {}", first_difference(&da, &db));
}

fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn line_with<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains(needle))
}

#[test]
fn a_fresh_peer_joins_by_snapshot_and_writes_made_meanwhile_arrive() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a, b_db, b) = big_source(dir.path());
    let b_device = device_id(&b);
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[],
        &["--test-chunk-delay-ms", "150"],
    );
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    // Write at A until B has imported the snapshot: inserts, updates and
    // deletes, some of them while the snapshot is in flight.
    let mut in_flight = 0;
    let mut k = 0;
    let nodes = [&node_a, &node_b];
    wait_for_within("B imports the snapshot", &nodes, LONG, || {
        let offered = node_a.log().contains("offering a snapshot");
        let tx = a.unchecked_transaction().unwrap();
        tx.execute(
            "INSERT INTO entries(location_id, name, size, kind, mtime) VALUES (1, ?1, 1, 0, 1)",
            [format!("during-{k}")],
        )
        .unwrap();
        tx.execute(
            "UPDATE entries SET size = size + 1000 WHERE id = ?1",
            [10 + k],
        )
        .unwrap();
        tx.execute("DELETE FROM entries WHERE id = ?1", [N - 10 - k])
            .unwrap();
        tx.commit().unwrap();
        k += 1;
        let imported = node_b.log().contains("snapshot imported");
        if offered && !imported {
            in_flight += 1;
        }
        imported
    });
    assert!(in_flight > 0, "some writes happened during the transfer");
    wait_for_within("B converges with A", &nodes, LONG, || {
        count(&b, "entries") == count(&a, "entries") && converged(&[&a, &b], library_dump(&a).len())
    });
    assert_identical(&a, &b, count(&a, "entries"));
    // B now relays all of A's changes, but A is missing none of them: B
    // must not notify A of a bulk write, nor offer it its own library.
    std::thread::sleep(Duration::from_secs(1));
    let (la, lb) = (node_a.log(), node_b.log());
    for (log, line) in [
        (&lb, "offering a snapshot"),
        (&lb, "bulk write"),
        (&la, "receiving a snapshot"),
    ] {
        assert!(!log.contains(line), "{line:?} after the join:\n{log}");
    }
    let chose = line_with(&la, "the peer is behind").expect("A logged its choice");
    assert!(chose.contains("a snapshot"), "{chose}");
    let imported = line_with(&lb, "snapshot imported").unwrap();
    assert!(imported.contains("mode=empty"), "{imported}");
    // The restore left copying the import into the file to a checkpoint,
    // which B runs after it, on a connection of its own.
    let checkpoint = line_with(&lb, "checkpointed the import").expect("B checkpointed the import");
    assert!(field(checkpoint, "frames").unwrap() > 0, "{checkpoint}");
    // Progress: lines with a rate and an ETA during the download.
    let progress: Vec<&str> = lb
        .lines()
        .filter(|l| l.contains("progress") && l.contains("what=snapshot"))
        .collect();
    assert!(!progress.is_empty(), "B logged snapshot progress:\n{lb}");
    assert!(progress
        .iter()
        .all(|l| l.contains("rate=") && l.contains("eta=")));
    // The snapshot is smaller than the database and travels compressed.
    let bytes = field(line_with(&lb, "receiving a snapshot").unwrap(), "bytes").unwrap();
    let wire = field(
        line_with(&lb, "caught up with the peer").unwrap(),
        "wire_bytes",
    )
    .unwrap();
    assert!(wire < bytes, "compressed on the wire: {wire} < {bytes}");
    // B keeps its own device id; the incoming files are gone.
    assert_eq!(device_id(&b), b_device);
    let incoming = std::fs::read_dir(dir.path().join("b.db-lsync/incoming"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(incoming, 0, "the download's files are removed after import");
}

/// Kills `victim` once B has received part of the snapshot, restarts it,
/// and checks the transfer resumed and B ends identical.
fn killed_mid_transfer(kill_sender: bool) {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a, b_db, b) = big_source(dir.path());
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[],
        &["--test-chunk-delay-ms", "300"],
    );
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", FAST_RETRY[0], FAST_RETRY[1]],
    );
    let part = dir
        .path()
        .join(format!("b.db-lsync/incoming/{}.part", device_id(&a)));
    let nodes = [&node_a, &node_b];
    wait_for_within("B holds two chunks", &nodes, LONG, || {
        std::fs::metadata(&part).is_ok_and(|m| m.len() >= 8 << 20)
    });
    // lsync status shows the transfer while it runs.
    let s = lsync_status(&b_db);
    let t = &s["transfers"][0];
    assert_eq!(t["what"], "snapshot", "{s}");
    assert!(t["total_bytes"].as_u64().unwrap() > t["bytes"].as_u64().unwrap());
    assert_eq!(count(&b, "entries"), 0, "nothing imported before the end");

    let victim = if kill_sender { &node_a } else { &node_b };
    victim.kill9();
    let held = std::fs::metadata(&part).unwrap().len();
    victim.restart();
    wait_for_within("B converges after the restart", &nodes, LONG, || {
        count(&b, "entries") == N && converged(&[&a, &b], library_dump(&a).len())
    });
    assert_identical(&a, &b, N);
    let (la, lb) = (node_a.all_logs(), node_b.all_logs());
    let resumed = line_with(&lb, "resuming an interrupted snapshot download")
        .unwrap_or_else(|| panic!("B resumed its download:\n{lb}"));
    let from = field(resumed, "offset").unwrap();
    assert!(
        from >= 4 << 20 && from <= held,
        "resumed at {from}, held {held}"
    );
    let upload = line_with(&la, "resuming a snapshot upload")
        .unwrap_or_else(|| panic!("A resumed its upload:\n{la}"));
    assert_eq!(field(upload, "offset"), Some(from));
    assert_eq!(
        la.matches("offering a snapshot").count(),
        1,
        "the same snapshot was resumed, not made again"
    );
}

#[test]
fn a_receiver_killed_mid_snapshot_resumes_and_ends_identical() {
    killed_mid_transfer(false);
}

#[test]
fn a_sender_killed_mid_snapshot_resumes_and_ends_identical() {
    killed_mid_transfer(true);
}

#[test]
fn a_corrupted_chunk_is_detected_and_sent_again() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a, b_db, b) = big_source(dir.path());
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[],
        &["--test-corrupt-chunk", "1"],
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
    wait_for_within("B converges with A", &nodes, LONG, || {
        count(&b, "entries") == N && converged(&[&a, &b], library_dump(&a).len())
    });
    assert_identical(&a, &b, N);
    let lb = node_b.log();
    let bad = line_with(&lb, "is corrupt").unwrap_or_else(|| panic!("B detected it:\n{lb}"));
    assert!(bad.contains("offset 4194304"), "{bad}");
    assert!(bad.contains("asking for it again"), "{bad}");
    assert_eq!(lb.matches("snapshot imported").count(), 1);
    // The chunk was sent again from its offset, in the same session.
    assert_eq!(node_b.log().matches("session established").count(), 1);
}

#[test]
fn a_bulk_write_is_notified_and_pulled_in_batches() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "small", 10);
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
    wait_for("B has the first rows", &nodes, || {
        count(&b, "entries") == 10
    });
    // A small commit is pushed as it is.
    index_tree(&a, "one", 1);
    wait_for("B has the small commit", &nodes, || {
        count(&b, "entries") == 11
    });
    assert!(!node_a.log().contains("bulk write"));
    // A logs its choice of how to serve a pull at info at most once a
    // second (the join's was the last): past that, the next one is logged.
    std::thread::sleep(Duration::from_millis(1100));
    // A bulk write of 30,000 entries: a notification, then pulls.
    index_tree(&a, "bulk", 30_000);
    wait_for_within("B has the bulk write", &nodes, LONG, || {
        count(&b, "entries") == 30_011
    });
    let la = node_a.log();
    let note = line_with(&la, "bulk write: notifying the peer")
        .unwrap_or_else(|| panic!("A notified:\n{la}"));
    assert!(field(note, "pending").unwrap() >= 30_001, "{note}");
    let chose = la
        .lines()
        .rfind(|l| l.contains("the peer is behind"))
        .unwrap();
    assert!(
        chose.contains("batched"),
        "a bulk write streams batches: {chose}"
    );
    wait_for("B converges with A", &nodes, || {
        converged(&[&a, &b], library_dump(&a).len())
    });
}

#[test]
fn a_copy_of_a_database_is_refused_by_peers_that_know_its_device() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "a", 10);
    // A's device key, made now (`lsync device list` makes it), so that the
    // copy holds it too: a copy with another key is refused earlier, as
    // an impostor (tests/tests/device_keys.rs).
    let listed = std::process::Command::new(lsync_bin())
        .args(["device", "list", "--db", a_db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    // A copy of A's file, taken now, under A's device id and key.
    let copy_db = dir.path().join("copy.db");
    a.execute("VACUUM INTO ?1", [copy_db.to_string_lossy()])
        .unwrap();
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
    // A keeps writing after the copy; B applies it.
    index_tree(&a, "after-copy", 10);
    wait_for("B has A's rows", &nodes, || count(&b, "entries") == 20);
    node_a.stop();

    // The copy comes online with new writes of its own under A's id.
    let copy = lsync_tests::open(&copy_db);
    assert_eq!(device_id(&copy), device_id(&a));
    copy.execute(
        "INSERT INTO entries(location_id, name, size, kind, mtime) VALUES (1, 'from-the-copy', 1, 0, 1)",
        params![],
    )
    .unwrap();
    let node_copy = Sidecar::start(
        dir.path(),
        "copy",
        &copy_db,
        &secret,
        &[node_b.addr()],
        &[FAST_RETRY[0], FAST_RETRY[1]],
    );
    wait_for("B refuses the copy", &[&node_b, &node_copy], || {
        node_b.log().contains("is a copy or an")
    });
    assert_eq!(id_by_name(&b, "entries", "from-the-copy"), None);
    assert_eq!(count(&b, "entries"), 20);
}

#[test]
fn a_snapshot_download_draws_a_progress_bar_on_a_terminal() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, _a, b_db, b) = big_source(dir.path());
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[],
        &["--test-chunk-delay-ms", "150"],
    );
    // B's stderr is a pseudo-terminal; its log is what the terminal showed.
    let node_b = Sidecar::start_on_terminal(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join"],
        &[],
    );
    wait_for_within("B receives the snapshot", &[&node_a, &node_b], LONG, || {
        count(&b, "entries") == N
    });
    // The bar: "snapshot [====>   ] 12.00 MiB/27.00 MiB 40 MiB/s eta 1s".
    let shown = node_b.log();
    let bar = shown
        .split(['\r', '\n'])
        .find(|l| l.contains("snapshot [") && l.contains("eta"))
        .unwrap_or_else(|| panic!("no progress bar on B's terminal:\n{shown}"));
    assert!(bar.contains("MiB") || bar.contains("KiB"), "{bar}");
}

#[test]
fn a_peer_with_data_merges_the_snapshot_and_the_session_stays_alive() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a, b_db, b) = big_source(dir.path());
    // B has rows of its own: the snapshot is merged, not copied, which takes
    // longer than four heartbeats.
    index_tree(&b, "b-own", 50);
    let b_tag = add_tag(&b, "blue", "#00f");
    let beat = ["--heartbeat-ms", "100"];
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &beat);
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", beat[0], beat[1], FAST_RETRY[0], FAST_RETRY[1]],
    );
    let nodes = [&node_a, &node_b];
    wait_for_within("A and B converge", &nodes, LONG, || {
        count(&b, "entries") == N + 50 && converged(&[&a, &b], library_dump(&a).len())
    });
    assert!(id_by_name(&a, "tags", "blue").is_some() && b_tag > 0);
    let lb = node_b.log();
    let imported = line_with(&lb, "snapshot imported").unwrap_or_else(|| panic!("{lb}"));
    assert!(imported.contains("mode=merge"), "{imported}");
    let secs: f64 = imported
        .split("import_seconds=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        secs > 0.4,
        "the import outlasted four heartbeats ({secs} s)"
    );
    for n in nodes {
        let log = n.all_logs();
        assert!(!log.contains("no message from the peer"), "{log}");
        assert_eq!(log.matches("session established").count(), 1, "{log}");
    }
}
