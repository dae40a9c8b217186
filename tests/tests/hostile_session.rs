//! Issue 13, the sidecar's door: what an outsider on the network can make a
//! listening `lsync run` do before it knows who is talking.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use lsync_tests::*;

const SCHEMA: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, body TEXT);
    SELECT lsync_track('notes', 'shared');";

/// Open file descriptors of process `pid` on the database (or its WAL).
fn db_handles(pid: i32, db: &Path) -> usize {
    let name = db.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter(|t| {
                    t.file_name()
                        .is_some_and(|f| f.to_string_lossy().starts_with(&name))
                })
                .count()
        })
        .unwrap_or(0)
}

/// One length-delimited frame (4-byte big-endian length, then the bytes).
fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut frame)?;
    Ok(frame)
}

/// The first handshake message of a real dialer, caught on its way.
fn catch_first_message(dir: &Path, db: &Path, secret: &Path) -> Vec<u8> {
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = trap.local_addr().unwrap().to_string();
    let dialer = Sidecar::start(dir, "dialer", db, secret, &[&addr], &FAST_RETRY);
    trap.set_nonblocking(false).unwrap();
    let (mut sock, _) = trap.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let frame = read_frame(&mut sock).unwrap();
    drop(dialer);
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend(frame);
    out
}

/// A replayed first handshake message completes the handshake (NNpsk0),
/// but no message after it can be made without the dialer's key: the
/// listener must not open its database for it, nor hold more than a few
/// such connections from one address; and it goes on serving its peer.
#[test]
fn a_replayed_handshake_never_reaches_the_database() {
    let (dir, a, b) = two_libraries(SCHEMA);
    drop(a);
    let secret = new_secret(dir.path(), "secret");
    let (a_db, b_db) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let first = catch_first_message(dir.path(), &b_db, &secret);
    let node = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &FAST_RETRY);
    let baseline = db_handles(node.pid(), &a_db);

    let mut replays = Vec::new();
    let mut answered = 0;
    for _ in 0..40 {
        let mut s = TcpStream::connect(node.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // A connection past the cap is closed at once: the write may fail.
        if s.write_all(&first).is_ok() && read_frame(&mut s).is_ok() {
            answered += 1;
        }
        replays.push(s);
    }
    // The handshake completes for those let in; beyond the cap per address
    // the connection is closed at once.
    assert!(
        (1..=8).contains(&answered),
        "{answered} replays got a handshake reply"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        db_handles(node.pid(), &a_db),
        baseline,
        "replays opened the database\n{}",
        node.log()
    );
    drop(replays);

    // The real peer still syncs.
    b.execute_batch("INSERT INTO notes(body) VALUES ('after the flood')")
        .unwrap();
    drop(b);
    let peer = Sidecar::start(dir.path(), "B", &b_db, &secret, &[node.addr()], &FAST_RETRY);
    let a = open(&a_db);
    wait_for("the real peer's row", &[&node, &peer], || {
        count(&a, "notes") == 1
    });
}
