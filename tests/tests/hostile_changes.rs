//! Issue 13, hostile changes: one test per class of a well-formed changeset
//! that lies (names, modes, columns, clocks, ops, fences), each named after
//! its class (catalog: docs/hostile.md). Each is a real peer's changeset,
//! decoded, edited and encoded again. A refused class gets a clear error,
//! nothing written and the real peer's changes still applying
//! (`Hostile::refused`); a class that is applied in part says what is
//! refused and what is believed. Malformed bytes: `hostile_changesets.rs`.

use lsync_tests::*;
use lsync_wire::changeset::{Changeset, Fence, Op};
use lsync_wire::value::Value;

// ------------------------------------------- names, modes and columns

/// `cs` with every mention of table `from` renamed `to`.
fn rename_table(cs: &mut Changeset, from: &str, to: &str) {
    for t in cs.tables.iter_mut().filter(|t| t.name == from) {
        t.name = to.to_owned();
    }
    for c in cs.changes.iter_mut().filter(|c| &*c.tbl == from) {
        c.tbl = to.into();
    }
}

/// `cs` with column `from` of table `tbl` renamed `to`.
fn rename_column(cs: &mut Changeset, tbl: &str, from: &str, to: &str) {
    for t in cs.tables.iter_mut().filter(|t| t.name == tbl) {
        for c in t.columns.iter_mut().filter(|c| *c == from) {
            *c = to.to_owned();
        }
    }
    for ch in cs.changes.iter_mut().filter(|c| &*c.tbl == tbl) {
        for (k, _) in ch.data.iter_mut().filter(|(k, _)| &**k == from) {
            *k = to.into();
        }
    }
}

#[test]
fn a_table_in_another_mode_than_here() {
    // Shared here, device-owned at the "sender": its rows would escape the
    // owner rule, or the other way round.
    let s = Hostile::scene();
    let blob = s.edited(|cs| {
        cs.tables
            .iter_mut()
            .for_each(|t| t.mode = "device_owned".into())
    });
    s.refused(
        &blob,
        "'notes' is 'shared' here but 'device_owned' at the sender",
    );
}

#[test]
fn a_mode_no_lsync_knows() {
    let s = Hostile::scene();
    let blob = s.edited(|cs| cs.tables.iter_mut().for_each(|t| t.mode = "anarchy".into()));
    s.refused(&blob, "but 'anarchy' at the sender");
}

#[test]
fn a_value_for_a_local_column() {
    // `files.here` stays on each device: a peer cannot write it.
    let s = Hostile::scene();
    let blob = s.edited(|cs| {
        let t = cs.tables.iter_mut().find(|t| t.name == "files").unwrap();
        t.columns.push("here".into());
        let c = cs.changes.iter_mut().find(|c| &*c.tbl == "files").unwrap();
        c.data.push(("here".into(), Value::Text("planted".into())));
    });
    s.refused(&blob, "column 'files.here' is missing here");
}

#[test]
fn a_change_to_lsyncs_own_metadata_table() {
    // lsync_config holds the device key and the secrets.
    let s = Hostile::scene();
    let blob = s.edited(|cs| {
        rename_table(cs, "notes", "lsync_config");
        rename_column(cs, "lsync_config", "body", "value");
    });
    s.refused(&blob, "table 'lsync_config' is not tracked here");
}

#[test]
fn a_change_to_sqlite_schema() {
    let s = Hostile::scene();
    let blob = s.edited(|cs| {
        rename_table(cs, "notes", "sqlite_schema");
        rename_column(cs, "sqlite_schema", "body", "sql");
    });
    s.refused(&blob, "table 'sqlite_schema' is not tracked here");
}

#[test]
fn sql_in_a_table_name() {
    let s = Hostile::scene();
    let evil = "notes\"; DROP TABLE files; --";
    s.refused(
        &s.edited(|cs| rename_table(cs, "notes", evil)),
        "is not tracked here",
    );
}

#[test]
fn sql_in_a_column_name() {
    let s = Hostile::scene();
    let evil = "body\" = 1; DROP TABLE files; --";
    let blob = s.edited(|cs| rename_column(cs, "notes", "body", evil));
    s.refused(&blob, "is missing here");
}

// ------------------------------------------------------- clocks and ops

#[test]
fn a_negative_hlc() {
    // No clock reads one. It used to be applied, and then sat in B's
    // lsync_clock, where lsync_restore refuses it as hostile: every
    // snapshot B made afterwards was refused by the devices joining.
    let s = Hostile::scene();
    let blob = s.edited(|cs| cs.changes.iter_mut().for_each(|c| c.hlc = -5));
    s.refused(&blob, "holds HLC -5, which is negative");
    let dir = TempDir::new();
    let snap = dir.path().join("snap.db");
    let snap = snap.to_str().unwrap();
    s.b.query_row("SELECT lsync_snapshot(?1)", [snap], |_| Ok(()))
        .unwrap();
    let fresh = open(&dir.path().join("fresh.db"));
    fresh.execute_batch(HOSTILE_SCHEMA).unwrap();
    join_library(&fresh, &library_id(&s.b));
    let report: String = fresh
        .query_row("SELECT lsync_restore(?1)", [snap], |r| r.get(0))
        .unwrap_or_else(|e| panic!("B's snapshot is refused: {e}"));
    assert!(report.contains("rows"), "{report}");
}

#[test]
fn a_merge_without_a_row_to_merge_into() {
    let s = Hostile::scene();
    let blob = s.edited(|cs| {
        let c = cs.changes.iter_mut().find(|c| &*c.tbl == "notes").unwrap();
        c.op = Op::Merge;
        c.data = vec![("into".into(), Value::Null)];
    });
    s.refused(&blob, "names no row to merge into");
}

/// The rows B holds, by uuid: what a refused change must leave as it is.
fn rows_of_b(s: &Hostile) -> Vec<Vec<String>> {
    query_rows(
        &s.b,
        "SELECT 'n', uuid, body, n FROM notes UNION ALL
         SELECT 'f', uuid, name, (SELECT uuid FROM notes WHERE id = note_id) FROM files
         ORDER BY 1, 2",
    )
}

#[test]
fn a_merge_of_a_device_owned_row() {
    // Merges are for shared rows that clashed on a UNIQUE key: a merge of
    // another device's file into B's own is refused (counted, not an error).
    let s = Hostile::scene();
    let blob = s.edited(|cs| {
        let c = cs.changes.iter_mut().find(|c| &*c.tbl == "files").unwrap();
        c.op = Op::Merge;
        c.pk = Value::Text("A-file".into());
        c.data = vec![("into".into(), Value::Text("B-file".into()))];
        cs.changes.retain(|c| &*c.tbl == "files");
    });
    let before = rows_of_b(&s);
    let report = s.applied(&blob);
    assert_eq!(n(&report, "refused"), 1, "{report}");
    assert_eq!(n(&report, "applied"), 0, "{report}");
    assert_eq!(rows_of_b(&s), before);
    s.still_syncs();
}

#[test]
fn a_merge_of_a_row_into_itself() {
    let s = Hostile::scene();
    s.applied(&s.valid());
    let blob = s.edited(|cs| {
        let c = cs.changes.iter_mut().find(|c| &*c.tbl == "notes").unwrap();
        c.op = Op::Merge;
        c.hlc += 1 << 16;
        c.data = vec![("into".into(), c.pk.clone())];
        cs.changes.retain(|c| c.op == Op::Merge);
    });
    let before = rows_of_b(&s);
    let report = s.applied(&blob);
    assert_eq!(n(&report, "applied"), 0, "{report}");
    assert_eq!(rows_of_b(&s), before, "the row is still there, unchanged");
    s.still_syncs();
}

#[test]
fn one_row_twice_in_a_changeset_out_of_hlc_order() {
    // Two states of one shared row, the newer HLC first: the newer wins,
    // whichever comes last in the changeset.
    let s = Hostile::scene();
    let blob = s.edited(|cs| {
        let mut older = cs
            .changes
            .iter()
            .find(|c| &*c.tbl == "notes")
            .unwrap()
            .clone();
        let mut newer = older.clone();
        newer.hlc += 2 << 16;
        newer.data = vec![("body".into(), Value::Text("newer".into()))];
        older.hlc += 1 << 16;
        older.seq = newer.seq + 1;
        older.op = Op::Update;
        older.data = vec![("body".into(), Value::Text("older".into()))];
        cs.changes.push(newer);
        cs.changes.push(older);
        cs.to += 2;
    });
    s.applied(&blob);
    assert_eq!(
        query_rows(&s.b, "SELECT body FROM notes WHERE uuid = 'A-note'"),
        [["newer"]]
    );
    s.still_syncs();
}

#[test]
fn many_changes_of_one_row_in_few_bytes() {
    // 100,000 updates of one row compress to a few KB: applying them takes
    // bounded time and keeps only the newest.
    let s = Hostile::scene();
    s.applied(&s.valid());
    let blob = s.edited(|cs| {
        let base = cs
            .changes
            .iter()
            .find(|c| &*c.tbl == "notes")
            .unwrap()
            .clone();
        cs.changes = (1..=100_000)
            .map(|i| {
                let mut c = base.clone();
                c.seq = i;
                c.hlc = base.hlc + i;
                c.op = Op::Update;
                c.data = vec![("n".into(), Value::Integer(i))];
                c
            })
            .collect();
        cs.to = 100_000;
    });
    assert!(blob.len() < 128 << 10, "{} bytes", blob.len());
    let started = std::time::Instant::now();
    s.applied(&blob);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        query_rows(&s.b, "SELECT n FROM notes WHERE uuid = 'A-note'"),
        [["100000"]]
    );
    s.still_syncs();
}

// ------------------------------------------------------------ the fence

/// B's `acked_cursor` for A after applying A's changeset with `fence`.
fn ack_after(s: &Hostile, fence: impl FnOnce(&str, &str) -> Fence) -> (i64, i64) {
    let (a, b) = (device_id(&s.a), device_id(&s.b));
    s.b.query_row("SELECT lsync_peer_contact(?1, NULL)", [&a], |_| Ok(()))
        .unwrap();
    let blob = s.edited(|cs| cs.fence = Some(fence(&a, &b)));
    s.applied(&blob);
    let acked: i64 =
        s.b.query_row(
            "SELECT acked_cursor FROM lsync_peers WHERE device_id = ?1",
            [&a],
            |r| r.get(0),
        )
        .unwrap();
    s.still_syncs();
    (acked, cursor(&s.b))
}

#[test]
fn a_fence_made_for_another_receiver() {
    // Its ack is about another device's changes: not taken as B's.
    let s = Hostile::scene();
    let other = "01a20142-c196-70dc-8b46-cc82023ee61a";
    let (acked, _) = ack_after(&s, |a, _| Fence {
        sender: a.into(),
        receiver: other.into(),
        acked: 2,
    });
    assert_eq!(acked, 0);
}

#[test]
fn a_fence_that_acks_beyond_the_receivers_head() {
    // Capped at B's newest cursor: A cannot hold changes never made.
    let s = Hostile::scene();
    let (acked, head) = ack_after(&s, |a, b| Fence {
        sender: a.into(),
        receiver: b.into(),
        acked: i64::MAX,
    });
    assert!(acked <= head && acked > 0, "acked {acked}, head {head}");
}

#[test]
fn a_fence_that_names_the_receiver_as_its_sender() {
    let s = Hostile::scene();
    let (acked, _) = ack_after(&s, |_, b| Fence {
        sender: b.into(),
        receiver: b.into(),
        acked: 2,
    });
    assert_eq!(acked, 0);
}
