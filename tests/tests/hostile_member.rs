//! Issue 13, a hostile member: one test per class of what a device that
//! holds the library secret, joined with a key of its own, can send that
//! no lsync sends. Each class is named by its test (catalog:
//! docs/hostile.md). The rogue (`lsync_tests::Rogue`) speaks the protocol
//! by hand against B, a real sidecar synced with its real peer A. Each test
//! checks how B answers (a session it ends, with the reason in its log, or
//! a message it refuses while the session goes on), that nothing the rogue
//! sent was applied, and that B still syncs with A both ways.

use std::time::Duration;

use lsync_tests::*;
use lsync_wire::changeset::{Changeset, Fence, DEFAULT_MAX_BODY};
use serde_json::json;

/// A synced pair, and a rogue member joined at B.
fn rogue_at_b() -> (SyncedPair, Rogue) {
    let p = SyncedPair::start(&[]);
    let rogue = Rogue::join(p.node_b.addr(), &p.secret, p.rogue_db("rogue"));
    (p, rogue)
}

/// B ends the rogue's session and logs `needle`; the rogue's notes are
/// not at B; B still syncs with A.
fn b_ends_it(p: &SyncedPair, rogue: &mut Rogue, needle: &str) {
    let (ended, _) = rogue.ended_by_b(Duration::from_secs(15));
    assert!(ended, "B kept the session open\n{}", p.node_b.log());
    p.b_logs(needle);
    assert_eq!(notes_named(&p.b, "rogue"), 0, "a rogue note reached B");
    p.still_syncs("after the rogue");
}

/// Sends `plain` as the plaintext of one message, cut into frames.
fn send_raw(rogue: &mut Rogue, plain: &[u8]) {
    rogue.send_plain(plain).expect("send to B");
}

// ------------------------------------------------------ framing and codec

#[test]
fn a_header_that_is_not_json() {
    let (p, mut r) = rogue_at_b();
    send_raw(&mut r, &Rogue::plaintext(b"{not json", &[]));
    b_ends_it(&p, &mut r, "malformed message");
}

#[test]
fn a_message_of_an_unknown_type() {
    let (p, mut r) = rogue_at_b();
    r.send(&json!({"type": "format_disk", "now": true}), &[]);
    b_ends_it(&p, &mut r, "unknown variant `format_disk`");
}

#[test]
fn a_message_that_claims_more_than_256_mib() {
    // Refused from its length prefix, before anything is allocated for it.
    let (p, mut r) = rogue_at_b();
    let plain = [&u32::MAX.to_le_bytes()[..], &[0u8; 64]].concat();
    send_raw(&mut r, &plain);
    b_ends_it(&p, &mut r, "exceeds the limit of 268435456");
}

#[test]
fn a_header_longer_than_its_message() {
    let (p, mut r) = rogue_at_b();
    let plain = [
        &12u32.to_le_bytes()[..],
        &1000u32.to_le_bytes(),
        b"{\"a\":1}\0",
    ]
    .concat();
    send_raw(&mut r, &plain);
    b_ends_it(&p, &mut r, "header overruns the message");
}

#[test]
fn a_message_that_overruns_its_length() {
    // A frame that carries more than the message's own length says.
    let (p, mut r) = rogue_at_b();
    let mut plain = Rogue::plaintext(br#"{"type":"heartbeat"}"#, &[]);
    plain.extend_from_slice(&[0u8; 40]);
    send_raw(&mut r, &plain);
    b_ends_it(&p, &mut r, "frame overruns the message");
}

#[test]
fn a_frame_that_fails_decryption() {
    // Bytes in a frame of the right size that are not a Noise message of
    // this session (a tampered or injected frame).
    let (p, mut r) = rogue_at_b();
    use std::io::Write;
    r.sock.write_all(&length_framed(&[0x5a; 80])).unwrap();
    b_ends_it(&p, &mut r, "authentication failed");
}

#[test]
fn a_frame_longer_than_65535_bytes_in_a_session() {
    let (p, mut r) = rogue_at_b();
    use std::io::Write;
    let _ = r.sock.write_all(&length_framed(&vec![0u8; 70_000]));
    b_ends_it(&p, &mut r, "bad frame");
}

// --------------------------------------------------------------- hellos

#[test]
fn a_first_message_that_is_not_a_hello() {
    let p = SyncedPair::start(&[]);
    let mut r = Rogue::handshake(p.node_b.addr(), &p.secret, p.rogue_db("rogue"));
    r.send(&json!({"type": "pull", "since": 0, "max": 1000}), &[]);
    b_ends_it(&p, &mut r, "expected hello");
}

#[test]
fn a_hello_with_the_listeners_own_device_id() {
    let p = SyncedPair::start(&[]);
    let mut r = Rogue::handshake(p.node_b.addr(), &p.secret, p.rogue_db("rogue"));
    let mut hello = r.hello();
    hello["device_id"] = json!(device_id(&p.b));
    r.send(&hello, &[]);
    b_ends_it(&p, &mut r, "this database's own device id");
}

#[test]
fn a_hello_of_another_protocol_version() {
    // The preamble said 5; the hello says 4.
    let p = SyncedPair::start(&[]);
    let mut r = Rogue::handshake(p.node_b.addr(), &p.secret, p.rogue_db("rogue"));
    let mut hello = r.hello();
    hello["protocol"] = json!(4);
    r.send(&hello, &[]);
    b_ends_it(&p, &mut r, "protocol version 4");
}

#[test]
fn a_second_hello_in_a_session() {
    let (p, mut r) = rogue_at_b();
    let hello = r.hello();
    r.send(&hello, &[]);
    b_ends_it(&p, &mut r, "unexpected second hello");
}

// -------------------------------------------------------------- changes

/// The rogue's note, as a changeset its database exports for B, edited.
fn rogue_changes(p: &SyncedPair, r: &Rogue, edit: impl FnOnce(&mut Changeset)) -> Vec<u8> {
    r.db.execute("INSERT INTO notes(body) VALUES ('rogue')", [])
        .unwrap();
    let blob: Vec<u8> =
        r.db.query_row(
            "SELECT lsync_changeset(0, 1000, ?1)",
            [device_id(&p.b)],
            |row| row.get(0),
        )
        .unwrap();
    let mut cs = Changeset::decode(&blob, DEFAULT_MAX_BODY).unwrap();
    edit(&mut cs);
    cs.encode().unwrap()
}

fn changes_header(blob: &[u8]) -> serde_json::Value {
    let cs = Changeset::decode(blob, DEFAULT_MAX_BODY).unwrap();
    json!({"type": "changes", "from": cs.from, "to": cs.to,
           "count": cs.changes.len(), "has_more": false})
}

#[test]
fn changes_whose_fence_names_another_sender() {
    // The fence's ack would be recorded as A's: it must be the sender's.
    let (p, mut r) = rogue_at_b();
    let a = device_id(&p.a);
    let blob = rogue_changes(&p, &r, |cs| {
        let f = cs.fence.as_mut().unwrap();
        *f = Fence {
            sender: a.clone(),
            ..f.clone()
        };
    });
    r.send(&changes_header(&blob), &blob);
    b_ends_it(&p, &mut r, "claims to come from device");
}

#[test]
fn changes_carrying_a_corrupt_changeset() {
    let (p, mut r) = rogue_at_b();
    let mut blob = rogue_changes(&p, &r, |_| {});
    let header = changes_header(&blob);
    let last = blob.len() - 1;
    blob[last] ^= 0x40;
    r.send(&header, &blob);
    b_ends_it(
        &p,
        &mut r,
        "the peer's changeset: changeset is truncated or corrupt",
    );
}

#[test]
fn changes_of_another_library() {
    let (p, mut r) = rogue_at_b();
    let blob = rogue_changes(&p, &r, |cs| {
        cs.library_id = "01a20142-c196-70dc-8b46-cc83df4c5b94".into()
    });
    r.send(&changes_header(&blob), &blob);
    b_ends_it(
        &p,
        &mut r,
        "belongs to library 01a20142-c196-70dc-8b46-cc83df4c5b94",
    );
}

#[test]
fn an_ack_beyond_what_was_sent() {
    // An ack lets B prune tombstones: it is capped at what B sent.
    let (p, mut r) = rogue_at_b();
    r.send(&json!({"type": "ack", "cursor": 1_000_000_000_000i64}), &[]);
    r.send(&json!({"type": "heartbeat"}), &[]);
    let rogue = device_id(&r.db);
    let acked = || -> i64 {
        p.b.query_row(
            "SELECT coalesce(max(acked_cursor), 0) FROM lsync_peers WHERE device_id = ?1",
            [&rogue],
            |row| row.get(0),
        )
        .unwrap()
    };
    p.still_syncs("after the ack");
    assert!(acked() <= cursor(&p.b), "B took an ack of {}", acked());
}

// ----------------------------------------------------- pulls and snapshots

#[test]
fn a_pull_from_a_negative_cursor_for_4_billion_changes() {
    // Answered like any pull, within B's own batch limits; the session goes
    // on.
    let (p, mut r) = rogue_at_b();
    r.send(&json!({"type": "pull", "since": -5, "max": u32::MAX}), &[]);
    let (m, _) = r.recv_until(|m| m["type"] == "changes" || m["type"] == "error");
    assert_eq!(m["type"], "changes", "{m}");
    assert!(m["count"].as_u64().unwrap() < 100_000, "{m}");
    r.send(&json!({"type": "heartbeat"}), &[]);
    p.still_syncs("after the pull");
    assert!(p.node_b.alive());
}

#[test]
fn a_snapshot_get_naming_a_path() {
    // Snapshot ids are uuids: a path is a snapshot B does not have.
    let (p, mut r) = rogue_at_b();
    std::fs::write(p.dir.path().join("outside.db"), b"not for the rogue").unwrap();
    r.send(
        &json!({"type": "snapshot_get", "id": "../../outside", "offset": 0}),
        &[],
    );
    let (m, _) = r.recv_until(|m| {
        m["type"] == "snapshot_missing" || m["type"] == "snapshot_chunk" || m["type"] == "error"
    });
    assert_eq!(m["type"], "snapshot_missing", "{m}");
    p.still_syncs("after the snapshot_get");
}

#[test]
fn a_snapshot_offer_in_chunks_of_zero_bytes() {
    let (p, mut r) = rogue_at_b();
    let offer = json!({"type": "snapshot_offer", "id": "01a20142-c196-70dc-8b46-cc83df4c5b94",
        "size": 1u64 << 40, "chunk_size": 0, "checksum": "00", "cursor": 5, "rows": 1});
    r.send(&offer, &[]);
    b_ends_it(&p, &mut r, "bad snapshot offer");
}

#[test]
fn a_secret_that_is_not_64_hex_characters() {
    let (p, mut r) = rogue_at_b();
    r.send(&json!({"type": "secret", "epoch": 99, "secret": "zz"}), &[]);
    b_ends_it(&p, &mut r, "not 64 hex characters");
}
