//! End-to-end tests of how a sidecar notices local commits: by a watch on
//! the database's WAL, which lets an idle sidecar sleep and wakes it when
//! the app commits; or, with `--no-watch`, by polling `PRAGMA data_version`.
//! Real `lsync` processes on 127.0.0.1; see `sidecar.rs` for the
//! conventions.

use std::thread::sleep;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use lsync_tests::*;

const WATCHING: &str = "noticing local commits by watching the database's WAL";

/// CPU time (user + system, all threads) process `pid` has used, from
/// `/proc/PID/stat`, in milliseconds. Linux reports it in USER_HZ ticks,
/// 100 per second on every architecture it supports.
fn sidecar_cpu_ms(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name, in parentheses, may hold spaces: count after it.
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().unwrap())
        .sum();
    ticks * 10
}

fn tag_count(c: &Connection, name: &str) -> i64 {
    c.query_row("SELECT count(*) FROM tags WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Two sidecars in session, started with `extra`.
fn pair_in_session(dir: &TempDir, extra: &[&str]) -> (Sidecar, Sidecar, Connection, Connection) {
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], extra);
    let joining = [&["--join"], extra].concat();
    let node_b = Sidecar::start(dir.path(), "B", &b_db, &secret, &[node_a.addr()], &joining);
    add_tag(&a, "first", "#000");
    wait_for("the first row reaches B", &[&node_a, &node_b], || {
        tag_count(&b, "first") == 1
    });
    (node_a, node_b, a, b)
}

/// An idle pair spends next to no CPU (polling `data_version` every 5 ms
/// cost each sidecar about 1% of a core), and the app's commits still reach
/// the peer at once: well before the watch's safety poll (1 s) could have
/// found them, with `--poll-ms` (which only polling uses) set far out of the
/// way. The app's connection syncs each commit (`synchronous=FULL`), so it
/// is published a while after its last write: the looks again find it.
#[test]
fn an_idle_sidecar_sleeps_and_a_commit_wakes_it() {
    let dir = TempDir::new();
    let (node_a, node_b, a, b) = pair_in_session(&dir, &["--poll-ms", "60000"]);
    for n in [&node_a, &node_b] {
        assert!(n.log().contains(WATCHING), "{}:\n{}", n.name, n.log());
    }
    // Let the last acks and heartbeats settle, then measure.
    sleep(Duration::from_secs(1));
    let span = Duration::from_secs(5);
    let before = [sidecar_cpu_ms(node_a.pid()), sidecar_cpu_ms(node_b.pid())];
    sleep(span);
    let after = [sidecar_cpu_ms(node_a.pid()), sidecar_cpu_ms(node_b.pid())];
    for ((n, b0), a0) in [&node_a, &node_b].iter().zip(before).zip(after) {
        // 30 ms of 5 s: 0.6% of a core, half of what polling cost.
        assert!(
            a0 - b0 <= 30,
            "{} used {} ms of CPU in {span:?} while idle",
            n.name,
            a0 - b0
        );
    }
    let mut took = Vec::new();
    for i in 0..9 {
        let name = format!("probe-{i}");
        let started = Instant::now();
        add_tag(&a, &name, "#fff");
        wait_for("a probe reaches B", &[&node_a, &node_b], || {
            tag_count(&b, &name) == 1
        });
        took.push(started.elapsed());
        // Out of step with the safety poll, whatever its phase.
        sleep(Duration::from_millis(137));
    }
    took.sort();
    // wait_for looks every 50 ms: a median of 300 ms leaves room for a
    // loaded machine, and is still far below the 500 ms a safety poll
    // alone would give on average.
    assert!(took[4] < Duration::from_millis(300), "{took:?}");
}

/// With `--no-watch` the sidecar polls, says so, and commits still travel.
#[test]
fn without_a_watch_the_sidecar_polls() {
    let dir = TempDir::new();
    let (node_a, node_b, a, b) = pair_in_session(&dir, &["--no-watch"]);
    for n in [&node_a, &node_b] {
        let log = n.log();
        assert!(
            log.contains("noticing local commits by polling (--no-watch)")
                && !log.contains(WATCHING),
            "{}:\n{log}",
            n.name
        );
    }
    add_tag(&a, "second", "#111");
    wait_for("the second row reaches B", &[&node_a, &node_b], || {
        tag_count(&b, "second") == 1
    });
}
