//! Issue 13, devices with their own keys, and claims checked against the
//! session: real `lsync run` processes on 127.0.0.1 (see tests/tests/sidecar.rs),
//! plus the extension's side of members through SQL.
//!
//! The `lsync` binary must be built first: `cargo build --release --workspace`.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use rusqlite::Connection;

use lsync_tests::*;

/// Entries whose name starts with `prefix`.
fn entries_named(c: &Connection, prefix: &str) -> i64 {
    c.query_row(
        "SELECT count(*) FROM entries WHERE name LIKE ?1 || '%'",
        [prefix],
        |r| r.get(0),
    )
    .unwrap()
}

/// What `c` has applied of device `device`'s changes.
fn watermark_of(c: &Connection, device: &str) -> i64 {
    c.query_row(
        "SELECT coalesce((SELECT recv_cursor FROM lsync_peers WHERE device_id = ?1), 0)",
        [device],
        |r| r.get(0),
    )
    .unwrap()
}

/// The members as `c` knows them: (device, key, status), sorted.
fn member_rows(c: &Connection) -> Vec<(String, String, String)> {
    let json: String = c
        .query_row("SELECT lsync_members()", [], |r| r.get(0))
        .unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    v.iter()
        .map(|m| {
            (
                m["device"].as_str().unwrap_or_default().to_owned(),
                m["pubkey"].as_str().unwrap_or_default().to_owned(),
                m["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Runs `lsync ARGS`, which must succeed; returns its stdout, trimmed.
fn lsync_cli(args: &[&str]) -> String {
    let out = Command::new(lsync_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "lsync {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A joining sidecar: dials `peer`, joins its library.
fn joiner(dir: &Path, name: &str, db: &Path, secret: &Path, peer: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec![
        "--join",
        FAST_RETRY[0],
        FAST_RETRY[1],
        FAST_RETRY[2],
        FAST_RETRY[3],
    ];
    args.extend_from_slice(extra);
    Sidecar::start(dir, name, db, secret, &[peer], &args)
}

/// A copy of a member's database whose key was replaced (the key is
/// private to the device): with the library secret, it claims the
/// member's device id. The peer refuses it: that id is bound to another
/// key. Its watermark claim (`to` = 10^12) moves nothing, and the real
/// device goes on syncing (before keys, it was refused as "a copy").
#[test]
fn a_peer_with_the_secret_but_another_key_cannot_take_a_members_id() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "from-a", 4);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = joiner(dir.path(), "B", &b_db, &secret, node_a.addr(), &[]);
    index_tree(&b, "from-b", 3);
    wait_for("A and B converge", &[&node_a, &node_b], || {
        entries_named(&a, "from-b") == 3 && entries_named(&b, "from-a") == 4
    });
    let b_id = device_id(&b);
    let before = watermark_of(&a, &b_id);
    assert!(before > 0);

    node_b.stop();
    let c_db = dir.path().join("c.db");
    b.execute("VACUUM INTO ?1", [c_db.to_str().unwrap()])
        .unwrap();
    let c = open(&c_db);
    c.execute_batch(
        "DELETE FROM lsync_config WHERE key = 'device_key'; DELETE FROM lsync_members;",
    )
    .unwrap();
    assert_eq!(device_id(&c), b_id);
    index_tree(&c, "impostor", 2);
    let impostor = Sidecar::start(
        dir.path(),
        "C",
        &c_db,
        &secret,
        &[node_a.addr()],
        &[
            "--test-claim-to",
            "1000000000000",
            FAST_RETRY[0],
            FAST_RETRY[1],
        ],
    );
    wait_for("A refuses the impostor", &[&node_a, &impostor], || {
        node_a.log().contains("is bound to another key")
    });
    sleep(Duration::from_millis(500));
    assert_eq!(entries_named(&a, "impostor"), 0, "{}", node_a.log());
    assert_eq!(watermark_of(&a, &b_id), before);
    drop(impostor);

    // The real B is still B to A.
    node_b.restart();
    index_tree(&b, "b-again", 1);
    wait_for("the real B syncs again", &[&node_a, &node_b], || {
        entries_named(&a, "b-again") == 1
    });
    assert!(!node_b.log().contains("refused"), "{}", node_b.log());
}

/// A member that claims more than it sent (`to` = 10^12 for a changeset
/// that ends far lower) is refused, and the receiver's watermark for it
/// does not move.
#[test]
fn a_spoofed_watermark_claim_does_not_move_the_watermark() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "from-a", 2);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = joiner(
        dir.path(),
        "B",
        &b_db,
        &secret,
        node_a.addr(),
        &["--test-claim-to", "1000000000000"],
    );
    wait_for("B has A's rows", &[&node_a, &node_b], || {
        entries_named(&b, "from-a") == 2
    });
    index_tree(&b, "from-b", 3);
    wait_for("A refuses the claim", &[&node_a, &node_b], || {
        node_a.log().contains("up to cursor 1000000000000")
    });
    let b_id = device_id(&b);
    assert!(watermark_of(&a, &b_id) < 1_000_000_000_000);
    assert_eq!(entries_named(&a, "from-b"), 0);
}

/// X is revoked at B; A learns of it from B, not from X, ends X's
/// session and refuses it since. X's later changes reach neither A nor,
/// through A, B; the members converge on all three.
#[test]
fn a_revoked_device_is_refused_by_a_peer_that_learned_it_through_another() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    let (x_db, x) = library_db(dir.path(), "x");
    index_tree(&a, "from-a", 2);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &[]);
    let node_b = joiner(dir.path(), "B", &b_db, &secret, node_a.addr(), &[]);
    wait_for("B has A's rows", &[&node_a, &node_b], || {
        entries_named(&b, "from-a") == 2
    });
    let node_x = joiner(dir.path(), "X", &x_db, &secret, node_a.addr(), &[]);
    index_tree(&x, "from-x", 2);
    let nodes = [&node_a, &node_b, &node_x];
    wait_for("X's rows reach B through A", &nodes, || {
        entries_named(&b, "from-x") == 2
    });
    wait_for("the members converge", &nodes, || {
        let m = member_rows(&a);
        m.len() == 3 && member_rows(&b) == m && member_rows(&x) == m
    });

    let x_id = device_id(&x);
    lsync_cli(&["device", "revoke", "--db", b_db.to_str().unwrap(), &x_id]);
    wait_for("A learns of the revocation from B", &nodes, || {
        member_rows(&a)
            .iter()
            .any(|m| m.0 == x_id && m.2 == "revoked")
    });
    wait_for("A refuses X", &nodes, || {
        node_a.log().contains(&format!("device {x_id} is revoked"))
    });
    index_tree(&x, "after-revoke", 2);
    index_tree(&b, "canary", 1);
    wait_for("B's canary reaches A", &nodes, || {
        entries_named(&a, "canary") == 1
    });
    sleep(Duration::from_secs(1));
    assert_eq!(entries_named(&a, "after-revoke"), 0, "{}", node_a.log());
    assert_eq!(entries_named(&b, "after-revoke"), 0);
    let listed = lsync_cli(&["device", "list", "--db", a_db.to_str().unwrap()]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&x_id) && l.contains("revoked")),
        "{listed}"
    );
}

/// After `lsync secret rotate` at A, B (a member) learns the new secret in
/// its session; a new device with the old secret cannot join, one with the
/// new secret can.
#[test]
fn after_a_rotation_the_old_secret_cannot_join() {
    let dir = TempDir::new();
    let old = new_secret(dir.path(), "old");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "from-a", 2);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &old, &[], &[]);
    let node_b = joiner(dir.path(), "B", &b_db, &old, node_a.addr(), &[]);
    wait_for("B has A's rows", &[&node_a, &node_b], || {
        entries_named(&b, "from-a") == 2
    });

    let new = lsync_cli(&["secret", "rotate", "--db", a_db.to_str().unwrap()]);
    assert_eq!(new.len(), 64);
    assert_ne!(new, std::fs::read_to_string(&old).unwrap().trim());
    wait_for("B learns the new secret", &[&node_a, &node_b], || {
        lsync_cli(&["secret", "show", "--db", b_db.to_str().unwrap()]) == new
    });

    let (d_db, d) = library_db(dir.path(), "d");
    let node_d = joiner(dir.path(), "D", &d_db, &old, node_a.addr(), &[]);
    wait_for("A refuses D", &[&node_a, &node_d], || {
        node_a.log().contains("offered an old library secret")
    });
    assert_eq!(entries_named(&d, "from-a"), 0);
    drop(node_d);

    let new_file = dir.path().join("new");
    std::fs::write(&new_file, format!("{new}\n")).unwrap();
    let (e_db, e) = library_db(dir.path(), "e");
    let node_e = joiner(dir.path(), "E", &e_db, &new_file, node_a.addr(), &[]);
    // B keeps its sessions through the rotation, with the old file.
    index_tree(&b, "from-b", 1);
    wait_for(
        "E joins; B still syncs",
        &[&node_a, &node_b, &node_e],
        || entries_named(&e, "from-a") == 2 && entries_named(&a, "from-b") == 1,
    );
    node_b.stop();
    node_b.restart();
    index_tree(&b, "b-restarted", 1);
    wait_for("B syncs after a restart", &[&node_a, &node_b], || {
        entries_named(&a, "b-restarted") == 1
    });
}

/// A rotation at A reaches C, which only B dials: B learns the secret in
/// its session with A and sends it on in its session with C, with no
/// commit of an app at B to wake that session.
#[test]
fn a_rotation_is_relayed_to_a_member_that_never_met_its_origin() {
    let dir = TempDir::new();
    let old = new_secret(dir.path(), "old");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, _b) = library_db(dir.path(), "b");
    let (c_db, c) = library_db(dir.path(), "c");
    index_tree(&a, "from-a", 2);
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &old, &[], &[]);
    let node_b = joiner(dir.path(), "B", &b_db, &old, node_a.addr(), &[]);
    let node_c = joiner(dir.path(), "C", &c_db, &old, node_b.addr(), &[]);
    let nodes = [&node_a, &node_b, &node_c];
    wait_for("C has A's rows through B", &nodes, || {
        entries_named(&c, "from-a") == 2
    });
    let new = lsync_cli(&["secret", "rotate", "--db", a_db.to_str().unwrap()]);
    wait_for("C learns the new secret", &nodes, || {
        lsync_cli(&["secret", "show", "--db", c_db.to_str().unwrap()]) == new
    });
}

const NOTES: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, body TEXT);
    SELECT lsync_track('notes', 'shared');";

/// A changeset from a device revoked here is not applied: `revoked` in
/// the report counts it.
#[test]
fn changes_of_a_revoked_device_are_not_applied() {
    let (_dir, a, b) = two_libraries(NOTES);
    a.execute_batch("INSERT INTO notes(body) VALUES ('x'), ('y')")
        .unwrap();
    let cs: Vec<u8> = a
        .query_row("SELECT lsync_changeset(0, 100)", [], |r| r.get(0))
        .unwrap();
    let a_id = device_id(&a);
    b.query_row("SELECT lsync_revoke(?1)", [&a_id], |_| Ok(()))
        .unwrap();
    let report: String = b
        .query_row("SELECT lsync_apply(?1)", [&cs], |r| r.get(0))
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(n(&report, "revoked"), 2, "{report}");
    assert_eq!(n(&report, "applied"), 0, "{report}");
    assert_eq!(count(&b, "notes"), 0);
    // Revocation is terminal: a member list that says otherwise changes nothing.
    let merged: String = b
        .query_row(
            "SELECT lsync_members_merge(json_array(json_object('device', ?1, 'pubkey', ?2, 'status', 'active')))",
            [&a_id, &"ab".repeat(32)],
            |r| r.get(0),
        )
        .unwrap();
    assert!(merged.contains("\"revoked\":0"), "{merged}");
    assert!(member_rows(&b)
        .iter()
        .any(|m| m.0 == a_id && m.2 == "revoked"));
}

/// A device that learns of a revocation relays nothing the revoked device
/// made, not even what it applied before it learned: its changesets and
/// its count of what a peer lacks leave those changes out, and its own
/// changes still travel.
#[test]
fn changes_of_a_revoked_device_are_not_relayed() {
    let (_dir, a, b) = two_libraries(NOTES);
    a.execute_batch("INSERT INTO notes(body) VALUES ('from a 1'), ('from a 2')")
        .unwrap();
    assert_eq!(n(&send(&a, &b, 0), "applied"), 2);
    b.execute("INSERT INTO notes(body) VALUES ('from b')", [])
        .unwrap();
    let relayed = |c: &Connection| -> i64 {
        let cs: Vec<u8> = c
            .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
            .unwrap();
        let info: String = c
            .query_row("SELECT lsync_changeset_info(?1)", [&cs], |r| r.get(0))
            .unwrap();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        n(&info, "count")
    };
    let missing = |c: &Connection| -> i64 { scalar(c, "SELECT lsync_missing(0)") };
    assert_eq!((relayed(&b), missing(&b)), (3, 3), "before the revocation");
    b.query_row("SELECT lsync_revoke(?1)", [device_id(&a)], |_| Ok(()))
        .unwrap();
    assert_eq!((relayed(&b), missing(&b)), (1, 1), "after the revocation");
    assert_eq!(count(&b, "notes"), 3, "what was applied stays");
}

/// The first binding of a device to a key is permanent, and a key binds
/// one device.
#[test]
fn a_members_first_key_binding_stays() {
    let (_dir, _a, b) = two_libraries(NOTES);
    let (d1, d2) = (
        "01900000-0000-7000-8000-000000000001",
        "01900000-0000-7000-8000-000000000002",
    );
    let admit = |d: &str, k: &str, join: bool| -> String {
        b.query_row(
            "SELECT lsync_member_admit(?1, ?2, ?3)",
            rusqlite::params![d, k, join],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (k1, k2) = ("11".repeat(32), "22".repeat(32));
    assert_eq!(admit(d1, &k1, false), "unknown");
    assert_eq!(admit(d1, &k1, true), "joined");
    assert_eq!(admit(d1, &k1, false), "member");
    assert_eq!(admit(d1, &k2, true), "mismatch");
    assert_eq!(admit(d2, &k1, true), "key_taken");
    let merged: String = b
        .query_row(
            "SELECT lsync_members_merge(json_array(json_object('device', ?1, 'pubkey', ?2, 'status', 'active')))",
            [d1, &k2],
            |r| r.get(0),
        )
        .unwrap();
    assert!(merged.contains("first binding stays"), "{merged}");
    assert!(member_rows(&b).iter().any(|m| m.0 == d1 && m.1 == k1));
}

/// This device's private key and the library secrets stay out of every
/// snapshot, and a restore never takes one from a file.
#[test]
fn a_snapshot_never_carries_the_device_key_or_the_secrets() {
    let dir = TempDir::new();
    let (_a_path, a) = library_db(dir.path(), "a");
    index_tree(&a, "rows", 3);
    let private = "5a".repeat(32);
    let secret = "c3".repeat(32);
    a.query_row(
        "SELECT lsync_device_key(?1, ?2), lsync_library_secret(0, ?3)",
        [&private, &"a5".repeat(32), &secret],
        |_| Ok(()),
    )
    .unwrap();
    let snap = dir.path().join("snap.db");
    a.query_row(
        "SELECT lsync_snapshot(?1)",
        [snap.to_str().unwrap()],
        |_| Ok(()),
    )
    .unwrap();
    let bytes = std::fs::read(&snap).unwrap();
    for needle in [&private, &secret] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the snapshot holds a secret"
        );
    }
    let s = open_plain(&snap);
    let keys: i64 = s
        .query_row(
            "SELECT count(*) FROM lsync_config WHERE key IN ('device_key', 'library_secrets')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keys, 0);
    // A crafted snapshot that brings a device key: the restore ignores it
    // (and says so), and the device keeps its own (none yet, here).
    s.execute(
        "INSERT INTO lsync_config(key, value) VALUES ('device_key', ?1)",
        [format!("[\"{}\",\"{}\"]", "77".repeat(32), "88".repeat(32))],
    )
    .unwrap();
    drop(s);
    let (_c_path, c) = library_db(dir.path(), "c");
    join_library(&c, &library_id(&a));
    let report: String = c
        .query_row("SELECT lsync_restore(?1)", [snap.to_str().unwrap()], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(report.contains("setting device_key"), "{report}");
    let key: Option<String> = c
        .query_row("SELECT lsync_device_key(NULL, NULL)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(key, None);
}

/// A database of metadata version 9 (before members) gains the members
/// table on first use, and keeps its identity.
#[test]
fn a_version_9_database_is_upgraded_with_members() {
    let dir = TempDir::new();
    let (path, c) = library_db(dir.path(), "old");
    let id = device_id(&c);
    c.execute_batch(
        "DROP TABLE lsync_members;
         UPDATE lsync_config SET value = 9 WHERE key = 'schema_version';",
    )
    .unwrap();
    drop(c);
    let c = open(&path);
    assert_eq!(member_rows(&c), vec![]);
    assert_eq!(device_id(&c), id);
    let version: i64 = scalar(
        &c,
        "SELECT value FROM lsync_config WHERE key = 'schema_version'",
    );
    assert_eq!(version, current_schema_version());
}
