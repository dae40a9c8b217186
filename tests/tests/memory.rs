//! Issue 13, bounded resources: a sidecar's memory follows what it actually
//! received, one piece at a time, never the size of the gap it catches up on
//! (docs/protocol.md, "Memory"). Real `lsync run` processes on 127.0.0.1;
//! peak memory is the kernel's high-water mark of each process (VmHWM).
//!
//! The `lsync` binary must be built first: `cargo build --release --workspace`.

use std::time::Duration;

use lsync_tests::*;

const MIB: i64 = 1 << 20;

const FILES: &str = "CREATE TABLE files(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, data BLOB);
    SELECT lsync_track('files', 'device_owned');";

/// The peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: i32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// Adds `rows` rows of `bytes` random bytes each to `files` at `c`.
fn add_random_files(c: &rusqlite::Connection, rows: i64, bytes: i64) {
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO files(data) SELECT randomblob(?2) FROM n",
        [rows, bytes],
    )
    .unwrap();
}

/// 120 MiB of rows that do not compress reach a fresh peer as a stream of
/// changesets of about 4 MiB each: neither side's peak memory comes near the
/// size of the gap. Sent as one changeset (as before the pieces), the
/// receiver held it at least twice: 240 MiB and more.
#[test]
fn a_catch_up_of_120_mib_is_streamed_in_pieces_of_bounded_memory() {
    let (dir, a, b) = two_libraries(FILES);
    let rows = 40;
    add_random_files(&a, rows, 3 * MIB);
    drop(a);
    let secret = new_secret(dir.path(), "secret");
    let (a_db, b_db) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let na = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &FAST_RETRY);
    let nb = Sidecar::start(dir.path(), "B", &b_db, &secret, &[na.addr()], &FAST_RETRY);
    wait_for("B to have every row", &[&na, &nb], || {
        count(&b, "files") == rows
    });
    let total: i64 = scalar(&b, "SELECT sum(length(data)) FROM files");
    assert_eq!(total, rows * 3 * MIB);
    let (sent, got) = (peak_rss(na.pid()), peak_rss(nb.pid()));
    eprintln!(
        "peak RSS: sender {} MiB, receiver {} MiB, for {} MiB of rows",
        sent / MIB,
        got / MIB,
        total / MIB
    );
    for (who, peak) in [("sender", sent), ("receiver", got)] {
        assert!(
            peak < 80 * MIB,
            "the {who} peaked at {} MiB while {} MiB of rows went through",
            peak / MIB,
            total / MIB
        );
    }
}

/// An authenticated member may send the largest message there is; what the
/// receiver holds for it is about what arrived, once, and the receiver
/// refuses it and goes on.
#[test]
fn a_members_96_mib_message_of_noise_costs_the_receiver_about_its_size() {
    let (dir, a, b) = two_libraries(FILES);
    a.execute("INSERT INTO files(data) VALUES (x'00')", [])
        .unwrap();
    drop((a, b));
    let secret = new_secret(dir.path(), "secret");
    let (a_db, b_db) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let nb = Sidecar::start(dir.path(), "B", &b_db, &secret, &[], &FAST_RETRY);
    std::thread::sleep(Duration::from_millis(300));
    let before = peak_rss(nb.pid());
    let mut args = FAST_RETRY.to_vec();
    args.extend(["--test-junk-changes-mib", "96"]);
    let na = Sidecar::start(dir.path(), "A", &a_db, &secret, &[nb.addr()], &args);
    wait_for_within(
        "B to refuse the noise twice",
        &[&na, &nb],
        Duration::from_secs(60),
        || occurrences(&nb.log(), "the peer's changeset") >= 2,
    );
    let grew = peak_rss(nb.pid()) - before;
    eprintln!("the receiver's peak grew by {} MiB", grew / MIB);
    assert!(
        grew < 96 * MIB * 5 / 4 + 16 * MIB,
        "a 96 MiB message made the receiver's peak grow by {} MiB",
        grew / MIB
    );
    assert!(nb.alive(), "the receiver ended");
}

/// A row larger than a piece travels alone, in a changeset of its own; the
/// receiver holds it a few times over (the message, SQLite's copy bound to
/// `lsync_apply`, the decompressed body, the decoded value, the row
/// written), never more.
#[test]
fn a_32_mib_row_travels_alone_and_costs_a_few_times_its_size() {
    let (dir, a, b) = two_libraries(FILES);
    a.execute(
        "INSERT INTO files(data) VALUES (randomblob(32 * 1048576)), (randomblob(32 * 1048576))",
        [],
    )
    .unwrap();
    drop(a);
    let secret = new_secret(dir.path(), "secret");
    let (a_db, b_db) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let nb = Sidecar::start(dir.path(), "B", &b_db, &secret, &[], &FAST_RETRY);
    std::thread::sleep(Duration::from_millis(300));
    let before = peak_rss(nb.pid());
    let na = Sidecar::start(dir.path(), "A", &a_db, &secret, &[nb.addr()], &FAST_RETRY);
    wait_for("B to have both rows", &[&na, &nb], || {
        count(&b, "files") == 2
    });
    let grew = peak_rss(nb.pid()) - before;
    eprintln!("the receiver's peak grew by {} MiB", grew / MIB);
    assert!(
        grew < 6 * 32 * MIB,
        "a 32 MiB row made the receiver's peak grow by {} MiB",
        grew / MIB
    );
}

/// `lsync_changeset`'s byte budget: a changeset stops at the change that
/// fills it (the first is always taken), its `to` lets the next one go on
/// from there, and the pieces together carry everything, once.
#[test]
fn max_bytes_cuts_a_changeset_after_the_change_that_fills_it() {
    let (_dir, a, b) = two_libraries(FILES);
    add_random_files(&a, 10, 1000);
    let piece = |since: i64, max_bytes: i64| -> (Vec<u8>, i64, i64) {
        let cs: Vec<u8> = a
            .query_row(
                "SELECT lsync_changeset(?1, NULL, NULL, ?2)",
                [since, max_bytes],
                |r| r.get(0),
            )
            .unwrap();
        let info: String = a
            .query_row("SELECT lsync_changeset_info(?1)", [&cs], |r| r.get(0))
            .unwrap();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        (cs, n(&info, "count"), n(&info, "to"))
    };
    // Each change is a little over 1000 bytes: 2500 holds two, and the
    // third fills it.
    let (mut since, mut sizes) = (0, Vec::new());
    for _ in 0..10 {
        let (cs, changes, to) = piece(since, 2500);
        if changes == 0 {
            break;
        }
        let report: String = b
            .query_row("SELECT lsync_apply(?1)", [&cs], |r| r.get(0))
            .unwrap();
        assert!(
            report.contains(&format!("\"applied\":{changes}")),
            "{report}"
        );
        sizes.push(changes);
        since = to;
    }
    assert_eq!(sizes, [3, 3, 3, 1]);
    assert_eq!(dump_by_gid(&a), dump_by_gid(&b));
    // A budget smaller than any change: one change each.
    assert_eq!(piece(0, 1).1, 1);
    assert!(error_of(&a, "SELECT lsync_changeset(0, NULL, NULL, 0)")
        .contains("max_bytes must be positive, got 0"));
}

/// One changeset of 64 MiB of rows that do not compress, applied in a
/// process of its own (the Debian `sqlite3` shell, reading it from a file):
/// the apply decodes and merges it a chunk at a time, so the shell holds the
/// changeset once and a few MiB besides. Decoded whole, as before the
/// chunks, it took three times its size and more (body, decoded rows,
/// changeset).
#[test]
fn one_changeset_of_64_mib_is_applied_in_the_memory_of_a_chunk() {
    use std::io::{BufRead, Write};
    let (dir, a, b) = two_libraries(FILES);
    add_random_files(&a, 16384, 4096);
    let file = dir.path().join("changeset.bin");
    let blob: Vec<u8> = scalar(&a, "SELECT lsync_changeset(0)");
    std::fs::write(&file, &blob).unwrap();
    drop(b);
    let mut shell = std::process::Command::new("/usr/bin/sqlite3")
        .arg("-batch")
        .arg(dir.path().join("b.db"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the Debian sqlite3 shell (make test installs it)");
    let mut input = shell.stdin.take().unwrap();
    writeln!(
        input,
        ".load {}\nSELECT json_extract(lsync_apply(readfile('{}')), '$.applied');",
        ext_path().display(),
        file.display()
    )
    .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let peak = peak_rss(shell.id() as i32);
    drop(input);
    assert!(shell.wait().unwrap().success());
    assert_eq!(line.trim(), "16384", "the apply's report");
    let size = blob.len() as i64;
    eprintln!(
        "the shell peaked at {} MiB applying a changeset of {} MiB",
        peak / MIB,
        size / MIB
    );
    assert!(
        peak < size * 3 / 2,
        "the shell peaked at {} MiB applying a changeset of {} MiB",
        peak / MIB,
        size / MIB
    );
}
