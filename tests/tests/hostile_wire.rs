//! Issue 13, hostile peers on the wire: one test per class of what a
//! client of a listening `lsync run` can do, each named after its class
//! (catalog: docs/hostile.md). Every test runs a real pair, A dialing B;
//! the test is the attacker, on B's port: an outsider without the library
//! secret, or a member (a fresh device that joined with the secret, as
//! docs/security.md allows) that then misbehaves. Each test checks how B
//! answers (a clear error in its log, nothing applied) and that B goes on
//! syncing with A, both ways. Clients that send garbage, a replayed
//! handshake, a database file replaced under the sidecar: sidecar.rs,
//! hostile_session.rs, liveness.rs.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use lsync_tests::*;
use serde_json::json;

#[test]
fn a_length_prefix_then_silence() {
    // Slowloris: the handshake must finish within 10 s, and the silent
    // client holds no more than its own socket meanwhile.
    let p = SyncedPair::start(&[]);
    let mut s = TcpStream::connect(p.node_b.addr()).unwrap();
    s.write_all(&100u32.to_be_bytes()).unwrap();
    let start = Instant::now();
    p.still_syncs("during the silence");
    let (closed, got) = closed_within(&mut s, Duration::from_secs(15));
    assert!(
        closed,
        "B still holds a silent client after {:?}",
        start.elapsed()
    );
    assert!(got.is_empty(), "B answered a silent client: {got:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(8),
        "closed early: {:?}",
        start.elapsed()
    );
    p.b_logs("handshake timed out");
    p.still_syncs("after");
}

#[test]
fn a_connection_flood() {
    // 200 connections at once, held open: past the caps (64 sessions, 8
    // from one address) each is closed at once; A's session goes on.
    let p = SyncedPair::start(&[]);
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(p.node_b.addr()).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut closed = 0;
    for mut s in flood.iter().map(|s| s.try_clone().unwrap()) {
        if closed_within(&mut s, Duration::from_millis(20)).0 {
            closed += 1;
        }
    }
    assert!(
        closed >= 150,
        "only {closed} of 200 flood connections were closed"
    );
    p.still_syncs("during the flood");
    drop(flood);
    p.still_syncs("after the flood");
}

#[test]
fn a_preamble_of_another_protocol_version() {
    // An lsync of another version is told which one B speaks, and nothing
    // more; B logs the mismatch.
    let p = SyncedPair::start(&[]);
    let mut s = TcpStream::connect(p.node_b.addr()).unwrap();
    let hello = [&b"lsyncv"[..], &9u32.to_be_bytes(), &[7u8; 48]].concat();
    s.write_all(&length_framed(&hello)).unwrap();
    let (closed, got) = closed_within(&mut s, Duration::from_secs(5));
    assert!(closed, "B kept the connection of another version open");
    let ours = length_framed(&[&b"lsyncv"[..], &5u32.to_be_bytes()].concat());
    assert_eq!(got, ours, "B answers only its own preamble");
    p.b_logs("the peer speaks protocol version 9");
    p.still_syncs("after");
}

// --------------------------------------------- members that hog resources

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `rogue_does` on the rogue in a thread of its own until `stop`.
fn meanwhile(
    mut rogue: Rogue,
    rogue_does: impl Fn(&mut Rogue) -> std::io::Result<()> + Send + 'static,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<usize>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        let mut sent = 0;
        while !flag.load(Ordering::Relaxed) && rogue_does(&mut rogue).is_ok() {
            sent += 1;
        }
        sent
    });
    (stop, t)
}

#[test]
fn a_slow_reader() {
    // A member that pulls 20 MB and never reads, while it keeps its session
    // alive with heartbeats: B's session with it waits on the socket,
    // without buffering the rest, and B's session with A goes on.
    let p = SyncedPair::start(&[]);
    p.b.execute_batch(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 10000)
         INSERT INTO notes(body) SELECT hex(randomblob(1000)) FROM k;",
    )
    .unwrap();
    let mut rogue = Rogue::join(p.node_b.addr(), &p.secret, p.rogue_db("rogue"));
    rogue.send(&json!({"type": "pull", "since": 0, "max": 1000000}), &[]);
    let heartbeat = json!({"type": "heartbeat"});
    let (stop, t) = meanwhile(rogue, move |r| {
        std::thread::sleep(Duration::from_millis(200));
        r.send_plain(&Rogue::plaintext(heartbeat.to_string().as_bytes(), &[]))
    });
    std::thread::sleep(Duration::from_secs(2));
    p.still_syncs("while the rogue does not read");
    let rss = rss_kib(p.node_b.pid());
    assert!(
        rss < 256 << 10,
        "B holds {rss} KiB for a reader that does not read"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
    p.still_syncs("after");
}

#[test]
fn a_flood_of_pulls() {
    // A member sends pulls as fast as it can and reads nothing: each pull
    // costs B an export, but its queue of 4 and TCP's push-back bound them.
    let p = SyncedPair::start(&[]);
    let rogue = Rogue::join(p.node_b.addr(), &p.secret, p.rogue_db("rogue"));
    let pull = json!({"type": "pull", "since": 0, "max": 1000});
    let (stop, t) = meanwhile(rogue, move |r| {
        r.send_plain(&Rogue::plaintext(pull.to_string().as_bytes(), &[]))
    });
    std::thread::sleep(Duration::from_secs(2));
    p.still_syncs("during the flood of pulls");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = t.join().unwrap();
    assert!(sent > 10, "the rogue sent only {sent} pulls");
    p.still_syncs("after");
    // Nor do they flood B's log: one line a second per session at most.
    let lines = occurrences(&p.node_b.log(), "the peer is behind");
    assert!(
        lines <= 15,
        "{sent} pulls wrote {lines} info lines to B's log"
    );
}

#[test]
fn a_database_locked_for_30_seconds() {
    // Another process holds B's database in an exclusive transaction for
    // 30 s: B waits (or retries), never dies, and catches up when it ends.
    let p = SyncedPair::start(&[]);
    p.b.execute_batch("BEGIN EXCLUSIVE; INSERT INTO notes(body) VALUES ('under the lock')")
        .unwrap();
    p.a.execute("INSERT INTO notes(body) VALUES ('during the lock')", [])
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        assert!(
            p.node_b.alive(),
            "B died while its database was locked\n{}",
            p.node_b.log()
        );
        assert!(p.node_a.alive(), "A died while B's database was locked");
        std::thread::sleep(Duration::from_millis(500));
    }
    p.b.execute_batch("COMMIT").unwrap();
    wait_for(
        "the notes of the locked time cross",
        &[&p.node_a, &p.node_b],
        || notes_named(&p.b, "during the lock") == 1 && notes_named(&p.a, "under the lock") == 1,
    );
    p.still_syncs("after the lock");
}
