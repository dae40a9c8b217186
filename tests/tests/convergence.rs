//! The heart of lsync: three replicas (separate database files with the real
//! extension) make random inserts, updates and deletes on device-owned and
//! shared tables, including FK chains and self-references, and exchange
//! changesets between random pairs, in random order, partially, duplicated
//! and late. After a final full exchange every replica must hold the same
//! tracked tables, compared as a canonical dump keyed by uuid with FKs as
//! uuids. Replicas also take snapshots of each other (`lsync_snapshot` and
//! `lsync_restore`: the copy into a replica that never wrote, or the merge
//! into one that has data), fresh or stale.
//!
//! A second property adds what the replicator does about tombstones: each
//! replica knows the other two as peers (`lsync_peers`), advances its
//! watermark in the apply transaction, exports for one receiver (so every
//! changeset carries its sender's certificate), acknowledges, and prunes.
//! Held changesets then stand for batches exported before a delete was
//! applied and delivered after its tombstone was pruned: they must be
//! refused, never bring the row back. In both properties no row deleted
//! anywhere may be live anywhere at the end.
//!
//! The schema has constraints of real apps (issue 11): a NOT NULL CASCADE
//! FK, a RESTRICT FK and FKs with no action (both delete-wins), and a CHECK
//! that local writes sometimes break. Replicas must end with nothing
//! quarantined.
//!
//! A third property adds UNIQUE keys to the shared tables: a tag's name,
//! drawn from four values so that clashes are frequent, and an
//! assignment's (tag, entry) pair. Rows that clash are merged into one
//! (docs/conflicts.md); replicas must end with identical tables and nothing
//! quarantined. It also writes a key/value table whose TEXT primary key is
//! the global id (issue 12): keys from three values, written on several
//! replicas, deleted and written again; a table with an INTEGER PRIMARY KEY
//! only (`labels`), and a join table keyed by its pair of FKs
//! (`label_on_entry`), whose global ids lsync keeps. Labels' names are
//! UNIQUE too, so merged labels repoint pairs, which may then merge.
//!
//! A fourth property adds bulk inserts and scattered updates of
//! device-owned rows, so that the fold compacts the clock ranges the
//! updates split (issue 14): the rows it covers again travel again, under
//! new cursors and a newer HLC, and must change nothing but what changed.

use proptest::prelude::*;
use rusqlite::Connection;

use lsync_tests::{logical_fk, open, query_rows_typed, TempDir};

const SCHEMA: &str = "
CREATE TABLE locations(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, path TEXT);
CREATE TABLE entries(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  parent_id INTEGER REFERENCES entries(id), location_id INTEGER REFERENCES locations(id),
  name TEXT, size INTEGER);
CREATE INDEX entries_parent ON entries(parent_id);
CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, color TEXT);
CREATE TABLE tag_assignments(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
  entry_id INTEGER REFERENCES entries(id) ON DELETE RESTRICT,
  note TEXT CHECK (length(note) <= 3));
SELECT lsync_track('locations', 'device_owned');
SELECT lsync_track('entries', 'device_owned');
SELECT lsync_track('tags', 'shared');
SELECT lsync_track('tag_assignments', 'shared');
CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
SELECT lsync_track('settings', 'shared');
CREATE TABLE labels(id INTEGER PRIMARY KEY, name TEXT);
SELECT lsync_track('labels', 'shared');
CREATE TABLE label_on_entry(
  label_id INTEGER NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
  entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
  note TEXT, PRIMARY KEY (label_id, entry_id));
SELECT lsync_track('label_on_entry', 'shared');
";

const TABLES: [&str; 7] = [
    "locations",
    "entries",
    "tags",
    "tag_assignments",
    "settings",
    "labels",
    "label_on_entry",
];

/// The global id of row `t` of `table` as text: its uuid column, or the id
/// lsync keeps (`labels` has an INTEGER PRIMARY KEY only, `label_on_entry`
/// a composite key).
fn gid_of(table: &str) -> String {
    match table {
        "labels" | "label_on_entry" => kept_id(table, "t.rowid"),
        "settings" => "t.key".into(),
        _ => "t.uuid".into(),
    }
}

fn kept_id(table: &str, rid: &str) -> String {
    format!(
        "(SELECT hex(g.gid) FROM lsync_gid g WHERE g.rid = {rid}
           AND g.tbl = (SELECT id FROM lsync_tables WHERE name = '{table}'))"
    )
}

/// A logical FK to `labels`: its kept id, or the id of a link deferred.
fn label_fk(table: &str, col: &str) -> String {
    format!(
        "coalesce({}, (SELECT hex(d.target_uuid) FROM lsync_deferred d
                   WHERE d.tbl = (SELECT id FROM lsync_tables WHERE name = '{table}')
                     AND d.rid = t.rowid AND d.col = '{col}'))",
        kept_id("labels", &format!("t.{col}"))
    )
}

#[derive(Debug, Clone)]
enum Step {
    Insert {
        at: usize,
        table: usize,
        a: u8,
        b: u8,
        v: u8,
    },
    Update {
        at: usize,
        table: usize,
        row: u8,
        col: u8,
        v: u8,
    },
    Delete {
        at: usize,
        table: usize,
        row: u8,
    },
    /// Export from `from` what `to` has not seen (at most `max` changes) and
    /// apply it now, or hold it back to deliver later.
    Sync {
        from: usize,
        to: usize,
        max: Option<i64>,
        hold: bool,
    },
    /// Deliver a held changeset.
    Release {
        pick: u8,
    },
    /// Apply an already delivered changeset again.
    Duplicate {
        pick: u8,
    },
    /// `to` restores a snapshot of `from` made now.
    Snapshot {
        from: usize,
        to: usize,
    },
    /// `to` restores a snapshot made earlier (stale by now).
    OldSnapshot {
        pick: u8,
        to: usize,
    },
    /// `by` tells `of` what it has applied of its changes (the replicator's
    /// ACK message), unless a changeset `by` exported for `of` earlier is
    /// still held: the replicator acks only with no batch in flight.
    Ack {
        by: usize,
        of: usize,
    },
    /// `lsync_prune()` at one replica.
    Prune {
        at: usize,
    },
    /// `n` rows inserted at once into a device-owned table (one range).
    Bulk {
        at: usize,
        table: usize,
        n: u8,
    },
    /// Every `stride`-th row of a device-owned table updated, one statement
    /// a row (the rows of other devices refuse): once the range was
    /// exported, the fold compacts what these updates split.
    Scatter {
        at: usize,
        table: usize,
        stride: u8,
        v: u8,
    },
}

/// Whether the replicas model the replicator's peers, acks and pruning.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Pruning,
    /// Plain, with UNIQUE keys on the shared tables (issue 11).
    UniqueKeys,
}

/// The UNIQUE keys of the third property.
const UNIQUE_KEYS: &str = "
CREATE UNIQUE INDEX tags_name ON tags(name);
CREATE UNIQUE INDEX tag_assignments_pair ON tag_assignments(tag_id, entry_id);
CREATE UNIQUE INDEX labels_name ON labels(name);
";

fn step() -> impl Strategy<Value = Step> {
    step_in(4)
}

/// Steps on the first `tables` of `TABLES` (the third property adds the
/// text-keyed `settings`; the first two keep theirs, so that their
/// checked-in seeds still mean what they meant).
fn step_in(tables: usize) -> impl Strategy<Value = Step> {
    let r = 0..3usize;
    prop_oneof![
        4 => (r.clone(), 0..tables, any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(at, table, a, b, v)| Step::Insert { at, table, a, b, v }),
        3 => (r.clone(), 0..tables, any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(at, table, row, col, v)| Step::Update { at, table, row, col, v }),
        2 => (r.clone(), 0..tables, any::<u8>())
            .prop_map(|(at, table, row)| Step::Delete { at, table, row }),
        3 => (r.clone(), r.clone(), proptest::option::of(1..8i64), proptest::bool::weighted(0.25))
            .prop_map(|(from, to, max, hold)| Step::Sync { from, to, max, hold }),
        1 => any::<u8>().prop_map(|pick| Step::Release { pick }),
        1 => any::<u8>().prop_map(|pick| Step::Duplicate { pick }),
        1 => (r.clone(), r.clone()).prop_map(|(from, to)| Step::Snapshot { from, to }),
        1 => (any::<u8>(), r).prop_map(|(pick, to)| Step::OldSnapshot { pick, to }),
    ]
}

/// The plain steps, plus acks and prunes.
fn pruning_step() -> impl Strategy<Value = Step> {
    let r = 0..3usize;
    // More syncs held back, releases, duplicates and prunes than in the
    // plain property: a resurrection needs a changeset read before a
    // delete, the acks of both other replicas, and a prune before that
    // changeset is delivered (again).
    prop_oneof![
        10 => step(),
        4 => (r.clone(), r.clone(), proptest::bool::weighted(0.5))
            .prop_map(|(from, to, hold)| Step::Sync { from, to, max: None, hold }),
        2 => any::<u8>().prop_map(|pick| Step::Release { pick }),
        3 => any::<u8>().prop_map(|pick| Step::Duplicate { pick }),
        2 => (r.clone(), r.clone()).prop_map(|(by, of)| Step::Ack { by, of }),
        3 => r.prop_map(|at| Step::Prune { at }),
    ]
}

/// The plain steps, plus bulk inserts and scattered updates of
/// device-owned rows, so that the fold compacts split ranges.
fn compaction_step() -> impl Strategy<Value = Step> {
    let r = 0..3usize;
    prop_oneof![
        8 => step(),
        2 => (r.clone(), 0..2usize, 16..64u8)
            .prop_map(|(at, table, n)| Step::Bulk { at, table, n }),
        3 => (r, 0..2usize, 2..4u8, any::<u8>())
            .prop_map(|(at, table, stride, v)| Step::Scatter { at, table, stride, v }),
    ]
}

/// A random existing row id of `table` at one replica.
/// The column that names a row of `table` locally: `settings` is a
/// WITHOUT ROWID table.
fn row_loc(table: &str) -> &'static str {
    if table == "settings" {
        "key"
    } else {
        "rowid"
    }
}

/// Row `n` (modulo the count) of `table`, by `row_loc`.
fn pick_local_row(c: &Connection, table: &str, n: u8) -> Option<rusqlite::types::Value> {
    let count: i64 = c
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .ok()?;
    if count == 0 {
        return None;
    }
    let loc = row_loc(table);
    c.query_row(
        &format!("SELECT {loc} FROM {table} ORDER BY {loc} LIMIT 1 OFFSET ?1"),
        [i64::from(n) % count],
        |r| r.get(0),
    )
    .ok()
}

fn pick_id(c: &Connection, table: &str, n: u8) -> Option<i64> {
    let count: i64 = c
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .ok()?;
    if count == 0 {
        return None;
    }
    c.query_row(
        &format!("SELECT rowid FROM {table} ORDER BY rowid LIMIT 1 OFFSET ?1"),
        [i64::from(n) % count],
        |r| r.get(0),
    )
    .ok()
}

/// A local write, as an app would make it. Refusals (ownership, FK
/// constraints) are part of normal life and leave nothing behind. Returns
/// the uuid of a row it deleted.
fn local_write(c: &Connection, s: &Step) -> Option<String> {
    let _ = match *s {
        Step::Insert { table, a, b, v, .. } => match table {
            0 => c.execute(
                "INSERT INTO locations(path) VALUES (?1)",
                [format!("/vol{v}")],
            ),
            1 => c.execute(
                "INSERT INTO entries(parent_id, location_id, name, size) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    pick_id(c, "entries", a),
                    pick_id(c, "locations", b),
                    format!("f{v}"),
                    v
                ],
            ),
            2 => c.execute(
                "INSERT INTO tags(name, color) VALUES (?1, ?2)",
                [format!("tag{}", v % 4), format!("#{a:02x}{b:02x}")],
            ),
            4 => c.execute(
                "INSERT INTO settings(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [format!("k{}", v % 3), format!("s{a}")],
            ),
            5 => c.execute(
                "INSERT INTO labels(name) VALUES (?1)",
                [format!("l{}", v % 5)],
            ),
            6 => c.execute(
                "INSERT INTO label_on_entry(label_id, entry_id, note) VALUES (?1, ?2, ?3)",
                rusqlite::params![
                    pick_id(c, "labels", a),
                    pick_id(c, "entries", b),
                    format!("n{v}")
                ],
            ),
            _ => c.execute(
                "INSERT INTO tag_assignments(tag_id, entry_id, note) VALUES (?1, ?2, ?3)",
                rusqlite::params![
                    pick_id(c, "tags", a),
                    pick_id(c, "entries", b),
                    format!("n{v}")
                ],
            ),
        },
        Step::Update {
            table, row, col, v, ..
        } => {
            let id = pick_local_row(c, TABLES[table], row)?;
            let (col, val): (&str, rusqlite::types::Value) = match (table, col % 3) {
                (0, _) => ("path", format!("/p{v}").into()),
                (1, 0) => ("parent_id", pick_id(c, "entries", v).into()),
                (1, 1) => ("name", format!("g{v}").into()),
                (1, _) => ("size", i64::from(v).into()),
                (2, 0) => ("name", format!("tag{}", v % 4).into()),
                (2, _) => ("color", format!("c{v}").into()),
                (4, _) => ("value", format!("u{v}").into()),
                (5, _) => ("name", format!("l{}", v % 5).into()),
                (6, 0) => ("label_id", pick_id(c, "labels", v).into()),
                (6, 1) => ("entry_id", pick_id(c, "entries", v).into()),
                (6, _) => ("note", format!("o{v}").into()),
                (_, 0) => ("tag_id", pick_id(c, "tags", v).into()),
                (_, 1) => ("entry_id", pick_id(c, "entries", v).into()),
                (_, _) => ("note", format!("m{v}").into()),
            };
            c.execute(
                &format!(
                    "UPDATE {} SET {col} = ?1 WHERE {} = ?2",
                    TABLES[table],
                    row_loc(TABLES[table])
                ),
                rusqlite::params![val, id],
            )
        }
        Step::Delete { table, row, .. } => {
            let id = pick_local_row(c, TABLES[table], row)?;
            let loc = row_loc(TABLES[table]);
            if matches!(TABLES[table], "settings" | "label_on_entry") {
                // A key may be written again after its delete: not a row
                // that must stay deleted.
                let _ = c.execute(
                    &format!("DELETE FROM {} WHERE {loc} = ?1", TABLES[table]),
                    [id],
                );
                return None;
            }
            let uuid: String = c
                .query_row(
                    &format!(
                        "SELECT {} FROM {} t WHERE rowid = ?1",
                        gid_of(TABLES[table]),
                        TABLES[table]
                    ),
                    [&id],
                    |r| r.get(0),
                )
                .ok()?;
            let deleted = c.execute(
                &format!("DELETE FROM {} WHERE rowid = ?1", TABLES[table]),
                [id],
            );
            return (deleted.ok() == Some(1)).then_some(uuid);
        }
        Step::Bulk { table, n, .. } => {
            let sql = match table {
                0 => "INSERT INTO locations(path) SELECT '/bulk' || i FROM n",
                _ => "INSERT INTO entries(name, size) SELECT 'b' || i, i FROM n",
            };
            let rows =
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) ";
            let sql = format!("{rows}{sql}");
            c.execute(&sql, [n])
        }
        Step::Scatter {
            table, stride, v, ..
        } => {
            let (name, set) = match table {
                0 => ("locations", "path = '/s' || ?1"),
                _ => ("entries", "size = ?1"),
            };
            let rows: Vec<i64> = lsync_tests::query_rows(
                c,
                &format!("SELECT rowid FROM {name} WHERE rowid % {stride} = 0"),
            )
            .iter()
            .filter_map(|r| r[0].parse().ok())
            .collect();
            for rid in rows {
                let _ = c.execute(
                    &format!("UPDATE {name} SET {set} WHERE rowid = ?2"),
                    rusqlite::params![v, rid],
                );
            }
            return None;
        }
        _ => return None,
    };
    None
}

/// Every tracked table, keyed by uuid, FKs as uuids.
fn replica_dump(c: &Connection) -> Vec<Vec<String>> {
    let queries = [
        "SELECT 'L', uuid, path FROM locations t".to_owned(),
        format!(
            "SELECT 'E', uuid, {}, {}, name, size FROM entries t",
            logical_fk("entries", "parent_id", "entries"),
            logical_fk("entries", "location_id", "locations")
        ),
        "SELECT 'T', uuid, name, color FROM tags t".to_owned(),
        "SELECT 'S', key AS uuid, value FROM settings t".to_owned(),
        format!(
            "SELECT 'A', uuid, {}, {}, note FROM tag_assignments t",
            logical_fk("tag_assignments", "tag_id", "tags"),
            logical_fk("tag_assignments", "entry_id", "entries")
        ),
        format!(
            "SELECT 'B', {} AS uuid, name FROM labels t",
            gid_of("labels")
        ),
        format!(
            "SELECT 'K', {} AS uuid, {}, {}, note FROM label_on_entry t",
            gid_of("label_on_entry"),
            label_fk("label_on_entry", "label_id"),
            logical_fk("label_on_entry", "entry_id", "entries")
        ),
    ];
    queries
        .iter()
        .flat_map(|q| query_rows_typed(c, &format!("{q} ORDER BY uuid")))
        .collect()
}

/// Three replicas of one library, and how changesets travel between them.
struct Replicas {
    dbs: Vec<Connection>,
    devices: Vec<String>,
    mode: Mode,
}

/// What a replica says when it refuses a changeset or snapshot read before
/// its sender had applied deletes whose tombstones it has pruned.
const STALE: &str = "is stale";

impl Replicas {
    fn new(dir: &std::path::Path, mode: Mode) -> Replicas {
        let dbs: Vec<Connection> = (0..3)
            .map(|i| {
                let c = open(&dir.join(format!("r{i}.db")));
                // Durability is not under test here, and fsyncs would be
                // most of the run time.
                c.execute_batch("PRAGMA synchronous = OFF").unwrap();
                // Replica 2 writes as the sqlite3 shell does, with FKs not
                // enforced: its deletes leave references for lsync to detach.
                if i == 2 {
                    c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
                }
                c.execute_batch(SCHEMA).unwrap();
                if mode == Mode::UniqueKeys {
                    c.execute_batch(UNIQUE_KEYS).unwrap();
                }
                c
            })
            .collect();
        let library: String = dbs[0]
            .query_row("SELECT lsync_library_id()", [], |r| r.get(0))
            .unwrap();
        for c in &dbs[1..] {
            c.query_row("SELECT lsync_library_id(?1)", [&library], |r| {
                r.get::<_, String>(0)
            })
            .unwrap();
        }
        let devices: Vec<String> = dbs
            .iter()
            .map(|c| {
                c.query_row("SELECT lsync_device_id()", [], |r| r.get(0))
                    .unwrap()
            })
            .collect();
        if mode == Mode::Pruning {
            for (i, c) in dbs.iter().enumerate() {
                for (j, d) in devices.iter().enumerate().filter(|(j, _)| *j != i) {
                    c.execute(
                        "INSERT INTO lsync_peers(device_id, addr) VALUES (?1, ?2)",
                        [d.clone(), format!("r{j}")],
                    )
                    .unwrap();
                }
            }
        }
        Replicas { dbs, devices, mode }
    }

    /// The cursor of `from` that `to` has applied up to (pruning mode).
    fn watermark(&self, to: usize, from: usize) -> i64 {
        self.dbs[to]
            .query_row(
                "SELECT recv_cursor FROM lsync_peers WHERE device_id = ?1",
                [&self.devices[from]],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Exports from `from` the changes after `since`; in pruning mode for
    /// `to` alone, as the replicator does, so it carries a certificate.
    fn export(&self, from: usize, to: usize, since: i64, max: Option<i64>) -> (Vec<u8>, i64) {
        let except = (self.mode == Mode::Pruning).then(|| self.devices[to].clone());
        let c = &self.dbs[from];
        let blob: Vec<u8> = c
            .query_row(
                "SELECT lsync_changeset(?1, ?2, ?3)",
                rusqlite::params![since, max, except],
                |r| r.get(0),
            )
            .unwrap();
        let cursor: i64 = c
            .query_row("SELECT lsync_changeset_info(?1) ->> 'to'", [&blob], |r| {
                r.get(0)
            })
            .unwrap();
        (blob, cursor)
    }

    /// Applies a changeset from `from` at `to`; returns how many changes it
    /// applied. In pruning mode the watermark advances in the same
    /// transaction when the changeset continues it, and a stale changeset's
    /// refusal is part of normal life.
    fn deliver(&self, from: usize, to: usize, blob: &[u8]) -> Result<i64, TestCaseError> {
        let c = &self.dbs[to];
        if self.mode != Mode::Pruning {
            return c
                .query_row("SELECT lsync_apply(?1) ->> 'applied'", [blob], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(|e| TestCaseError::fail(format!("apply failed: {e}")));
        }
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        let applied = c.query_row(
            "SELECT lsync_apply(?1) ->> 'applied', lsync_changeset_info(?1) ->> 'from',
                    lsync_changeset_info(?1) ->> 'to'",
            [blob],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        );
        match applied {
            Ok((n, lo, hi)) => {
                c.execute(
                    "UPDATE lsync_peers SET recv_cursor = max(recv_cursor, ?2)
                     WHERE device_id = ?1 AND recv_cursor >= ?3",
                    rusqlite::params![self.devices[from], hi, lo],
                )
                .unwrap();
                c.execute_batch("COMMIT").unwrap();
                Ok(n)
            }
            Err(e) => {
                c.execute_batch("ROLLBACK").unwrap();
                if e.to_string().contains(STALE) {
                    Ok(0)
                } else {
                    Err(TestCaseError::fail(format!("apply failed: {e}")))
                }
            }
        }
    }

    /// `by` acks what it has applied of `of`'s changes.
    fn ack(&self, by: usize, of: usize) {
        let cursor = self.watermark(by, of);
        self.dbs[of]
            .execute(
                "UPDATE lsync_peers SET acked_cursor = max(acked_cursor, ?2) WHERE device_id = ?1",
                rusqlite::params![self.devices[by], cursor],
            )
            .unwrap();
    }

    /// Restores a snapshot file at `to`; returns the source's cursor it
    /// covers, or `None` for a stale snapshot refused in pruning mode.
    fn restore(&self, to: usize, file: &std::path::Path) -> Result<Option<i64>, TestCaseError> {
        let r = self.dbs[to].query_row(
            "SELECT lsync_restore(?1) ->> 'cursor'",
            [file.to_string_lossy()],
            |r| r.get::<_, i64>(0),
        );
        match r {
            Ok(cursor) => Ok(Some(cursor)),
            Err(e) if self.mode == Mode::Pruning && e.to_string().contains(STALE) => Ok(None),
            Err(e) => Err(TestCaseError::fail(format!("restore failed: {e}"))),
        }
    }

    /// No row that a replica deleted is live on any replica.
    fn check_deleted(&self, deleted: &[String]) -> Result<(), TestCaseError> {
        for (i, c) in self.dbs.iter().enumerate() {
            for t in TABLES
                .iter()
                .filter(|t| !matches!(**t, "settings" | "label_on_entry"))
            {
                for u in deleted {
                    let live: i64 = c
                        .query_row(
                            &format!("SELECT count(*) FROM {t} t WHERE {} = ?1", gid_of(t)),
                            [u],
                            |r| r.get(0),
                        )
                        .unwrap();
                    prop_assert_eq!(
                        live,
                        0,
                        "deleted row {} of {} is live on replica {}",
                        u,
                        t,
                        i
                    );
                }
            }
        }
        Ok(())
    }
}

/// `lsync_missing` counts exactly the changes that an unlimited
/// `lsync_changeset` from the same cursor holds, with and without leaving
/// out one device's own.
fn check_missing(from: &Connection, since: i64, except: &str) -> Result<(), TestCaseError> {
    for except in [None, Some(except)] {
        let (missing, count): (i64, i64) = from
            .query_row(
                "SELECT lsync_missing(?1, ?2),
                        lsync_changeset_info(lsync_changeset(?1, NULL, ?2)) ->> 'count'",
                rusqlite::params![since, except],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        prop_assert_eq!(
            missing,
            count,
            "lsync_missing({}, {:?}) disagrees with lsync_changeset",
            since,
            except
        );
    }
    Ok(())
}

fn run_replicas(steps: &[Step], order: &[(usize, usize)], mode: Mode) -> Result<(), TestCaseError> {
    let dir = TempDir::new();
    let r = Replicas::new(dir.path(), mode);
    let dbs = &r.dbs;
    // seen[to][from]: the cursor of `from` that `to` has pulled up to
    // (plain mode; pruning mode pulls from the applied watermark).
    let mut seen = [[0i64; 3]; 3];
    let since = |seen: &[[i64; 3]; 3], to: usize, from: usize| match mode {
        Mode::Plain | Mode::UniqueKeys => seen[to][from],
        Mode::Pruning => r.watermark(to, from),
    };
    // (from, to, changeset)
    let mut held: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut delivered: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    // (source replica, file) of every snapshot made.
    let mut snapshots: Vec<(usize, std::path::PathBuf)> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    for s in steps {
        match *s {
            Step::Insert { at, .. }
            | Step::Update { at, .. }
            | Step::Delete { at, .. }
            | Step::Bulk { at, .. }
            | Step::Scatter { at, .. } => deleted.extend(local_write(&dbs[at], s)),
            Step::Sync {
                from,
                to,
                max,
                hold,
            } if from != to => {
                let start = since(&seen, to, from);
                check_missing(&dbs[from], start, &r.devices[to])?;
                let (blob, cursor) = r.export(from, to, start, max);
                seen[to][from] = cursor;
                if hold {
                    held.push((from, to, blob));
                } else {
                    r.deliver(from, to, &blob)?;
                    delivered.push((from, to, blob));
                }
            }
            Step::Release { pick } if !held.is_empty() => {
                let (from, to, blob) = held.remove(usize::from(pick) % held.len());
                r.deliver(from, to, &blob)?;
                delivered.push((from, to, blob));
            }
            Step::Duplicate { pick } if !delivered.is_empty() => {
                let (from, to, blob) = &delivered[usize::from(pick) % delivered.len()];
                r.deliver(*from, *to, blob)?;
            }
            Step::Snapshot { from, to } if from != to => {
                let file = dir.path().join(format!("snap-{}.db", snapshots.len()));
                dbs[from]
                    .query_row(
                        "SELECT lsync_snapshot(?1)",
                        [file.to_string_lossy()],
                        |_| Ok(()),
                    )
                    .map_err(|e| TestCaseError::fail(format!("snapshot failed: {e}")))?;
                if let Some(cursor) = r.restore(to, &file)? {
                    seen[to][from] = seen[to][from].max(cursor);
                }
                snapshots.push((from, file));
            }
            Step::OldSnapshot { pick, to } if !snapshots.is_empty() => {
                let (from, file) = &snapshots[usize::from(pick) % snapshots.len()];
                if *from != to {
                    if let Some(cursor) = r.restore(to, file)? {
                        seen[to][*from] = seen[to][*from].max(cursor);
                    }
                }
            }
            Step::Ack { by, of }
                if by != of && !held.iter().any(|(f, t, _)| *f == by && *t == of) =>
            {
                r.ack(by, of)
            }
            Step::Prune { at } => {
                dbs[at]
                    .query_row("SELECT lsync_prune()", [], |_| Ok(()))
                    .map_err(|e| TestCaseError::fail(format!("prune failed: {e}")))?;
            }
            _ => {}
        }
    }
    for (from, to, blob) in held.drain(..) {
        r.deliver(from, to, &blob)?;
    }
    // Final exchange: incremental, from each replica's cursors, in the
    // given pair order, until a whole round applies nothing.
    let mut rounds = 0;
    loop {
        let mut applied = 0;
        for &(from, to) in order {
            let (blob, cursor) = r.export(from, to, since(&seen, to, from), None);
            seen[to][from] = cursor;
            applied += r.deliver(from, to, &blob)?;
        }
        rounds += 1;
        if applied == 0 {
            break;
        }
        prop_assert!(rounds < 8, "no fixpoint after {} rounds", rounds);
    }
    let first = replica_dump(&dbs[0]);
    for (i, c) in dbs.iter().enumerate().skip(1) {
        let other = replica_dump(c);
        prop_assert_eq!(&first, &other, "replica {} differs from replica 0", i);
    }
    r.check_deleted(&deleted)?;
    // Every conflict the constraints make is resolved the same way
    // everywhere: nothing is left quarantined.
    for (i, c) in dbs.iter().enumerate() {
        let q = lsync_tests::query_rows(c, "SELECT tbl, uuid, op, error FROM lsync_conflicts");
        prop_assert!(
            q.is_empty(),
            "replica {} has quarantined changes: {:?}",
            i,
            q
        );
    }
    // Converged state is a fixpoint: everything each replica holds is stale
    // news to the others. (With pruning, a tombstone that one replica has
    // pruned and another still holds is recorded again: the tables stay.)
    for from in 0..3 {
        for to in (0..3).filter(|t| *t != from) {
            let (blob, _) = r.export(from, to, 0, None);
            let applied = r.deliver(from, to, &blob)?;
            match mode {
                Mode::Plain | Mode::UniqueKeys => prop_assert_eq!(
                    applied,
                    0,
                    "full changeset {} -> {} changed the target",
                    from,
                    to
                ),
                Mode::Pruning => prop_assert_eq!(
                    &replica_dump(&dbs[to]),
                    &first,
                    "full changeset {} -> {} changed the target's tables",
                    from,
                    to
                ),
            }
        }
    }
    Ok(())
}

fn pairs() -> impl Strategy<Value = Vec<(usize, usize)>> {
    let all: Vec<(usize, usize)> = (0..3)
        .flat_map(|f| (0..3).filter(move |t| *t != f).map(move |t| (f, t)))
        .collect();
    Just(all).prop_shuffle()
}

fn cases() -> u32 {
    std::env::var("LSYNC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(steps in proptest::collection::vec(step(), 1..80), order in pairs()) {
        run_replicas(&steps, &order, Mode::Plain)?;
    }

    #[test]
    fn replicas_converge_with_acks_and_pruning(
        steps in proptest::collection::vec(pruning_step(), 1..80),
        order in pairs(),
    ) {
        run_replicas(&steps, &order, Mode::Pruning)?;
    }

    #[test]
    fn replicas_converge_with_compaction(
        steps in proptest::collection::vec(compaction_step(), 1..80),
        order in pairs(),
    ) {
        run_replicas(&steps, &order, Mode::Plain)?;
    }

    #[test]
    fn replicas_converge_with_unique_keys(
        steps in proptest::collection::vec(step_in(7), 1..80),
        order in pairs(),
    ) {
        run_replicas(&steps, &order, Mode::UniqueKeys)?;
    }
}

/// Every pair, in the fixed order used by the checked-in regression cases.
fn all_pairs() -> Vec<(usize, usize)> {
    (0..3)
        .flat_map(|f| (0..3).filter(move |t| *t != f).map(move |t| (f, t)))
        .collect()
}

fn ins(at: usize, table: usize) -> Step {
    Step::Insert {
        at,
        table,
        a: 0,
        b: 0,
        v: 0,
    }
}

fn sync_step(from: usize, to: usize, hold: bool) -> Step {
    Step::Sync {
        from,
        to,
        max: None,
        hold,
    }
}

/// Issue 9.1: a delete of a row inserted since the last fold left a hole in
/// the new rows' range entry, which `lsync_missing` counted and
/// `lsync_changeset` skipped.
#[test]
fn regression_missing_counts_a_row_deleted_before_its_fold() {
    let steps = [
        ins(0, 3),
        ins(0, 3),
        ins(0, 3),
        ins(0, 3),
        Step::Delete {
            at: 0,
            table: 3,
            row: 1,
        },
        sync_step(0, 1, false),
    ];
    run_replicas(&steps, &all_pairs(), Mode::Plain).unwrap();
}

/// Issue 9.2: replicas disagreed on which tag an assignment points to. An
/// insert whose FK target is missing unparked a newer edit of that FK, then
/// recorded its own (older) deferred link on top of it.
#[test]
fn regression_a_parked_fk_edit_beats_the_inserts_deferred_link() {
    let steps = [
        ins(0, 2),
        sync_step(0, 2, false),
        ins(0, 2),
        Step::Delete {
            at: 0,
            table: 2,
            row: 48,
        },
        ins(1, 0),
        ins(2, 3),
        sync_step(2, 1, true),
        sync_step(0, 2, false),
        Step::Update {
            at: 2,
            table: 3,
            row: 0,
            col: 21,
            v: 0,
        },
        sync_step(2, 1, false),
    ];
    run_replicas(&steps, &all_pairs(), Mode::Plain).unwrap();
}

/// Issue 9.3 in miniature: replica 1 exports a changeset holding a tag's
/// insert, then applies replica 0's delete of it, certifies that to replica
/// 0 with a later changeset, and replica 0 prunes the tombstone. The first
/// changeset, delivered last, must not bring the tag back.
#[test]
fn regression_a_changeset_read_before_a_pruned_delete_is_refused() {
    let steps = [
        ins(2, 2),
        sync_step(2, 1, false),
        sync_step(1, 0, true),
        sync_step(2, 0, false),
        Step::Delete {
            at: 0,
            table: 2,
            row: 0,
        },
        sync_step(0, 1, false),
        sync_step(1, 0, false),
        sync_step(0, 2, false),
        sync_step(2, 0, false),
        Step::Prune { at: 0 },
        Step::Release { pick: 0 },
    ];
    run_replicas(&steps, &all_pairs(), Mode::Pruning).unwrap();
}

/// The same with a changeset delivered once before the delete and again
/// (a retransmission) after the prune.
#[test]
fn regression_a_changeset_delivered_again_after_a_pruned_delete_is_refused() {
    let steps = [
        ins(2, 2),
        sync_step(2, 1, false),
        sync_step(1, 0, false),
        Step::Delete {
            at: 0,
            table: 2,
            row: 0,
        },
        sync_step(0, 1, false),
        sync_step(1, 0, false),
        sync_step(0, 2, false),
        sync_step(2, 0, false),
        Step::Prune { at: 0 },
        Step::Duplicate { pick: 1 },
    ];
    run_replicas(&steps, &all_pairs(), Mode::Pruning).unwrap();
}

/// Issue 11: an entry whose parent was deleted was removed with it
/// (delete-wins) and buried; its owner's newer state, parented to itself,
/// then counted its own tombstone as a deleted target and stayed removed on
/// one replica.
#[test]
fn regression_a_row_that_links_to_itself_comes_back_over_its_tombstone() {
    let steps = [
        ins(0, 0),
        ins(0, 0),
        ins(0, 0),
        ins(0, 1),
        sync_step(0, 1, false),
        Step::Delete {
            at: 0,
            table: 1,
            row: 0,
        },
        Step::Snapshot { from: 0, to: 2 },
        ins(1, 1),
        sync_step(1, 2, false),
        Step::Update {
            at: 1,
            table: 1,
            row: 43,
            col: 15,
            v: 43,
        },
    ];
    run_replicas(&steps, &all_pairs(), Mode::Plain).unwrap();
}

/// UNIQUE keys (issue 11): replica 0 has tags 'tag0' and 'tag2'; replica 1
/// creates X 'tag0' (held on its way to replica 2) and renames it 'tag2'.
/// X meets each of replica 0's tags under a different name on different
/// replicas, so all three are merged, and every replica ends with X's
/// newest name.
#[test]
fn regression_a_row_renamed_into_a_second_clash_merges_all_three() {
    let tag = |at, v| Step::Insert {
        at,
        table: 2,
        a: 0,
        b: 0,
        v,
    };
    let steps = [
        tag(1, 88),
        tag(0, 28),
        tag(0, 54),
        sync_step(1, 2, true),
        Step::Update {
            at: 1,
            table: 2,
            row: 131,
            col: 165,
            v: 234,
        },
    ];
    let order = [(2, 0), (0, 1), (1, 2), (2, 1), (0, 2), (1, 0)];
    run_replicas(&steps, &order, Mode::UniqueKeys).unwrap();
}

/// A tag named `tag{v}` created at replica `at`.
fn tag_step(at: usize, v: u8) -> Step {
    Step::Insert {
        at,
        table: 2,
        a: 0,
        b: 0,
        v,
    }
}

/// The first counterexample to merging rows only where they meet: X and Y
/// are both 'tag3'. Replica 1 meets both and merges them; replica 0
/// renames X to 'tag0' before Y arrives, so they never meet there. The
/// merge travels: every replica ends with one row, under its newest name.
#[test]
fn regression_rows_merged_on_one_replica_are_merged_where_they_never_met() {
    let steps = [
        tag_step(0, 3),
        tag_step(2, 3),
        sync_step(0, 1, false),
        sync_step(2, 1, false),
        Step::Update {
            at: 0,
            table: 2,
            row: 0,
            col: 0,
            v: 0,
        },
    ];
    run_replicas(&steps, &all_pairs(), Mode::UniqueKeys).unwrap();
}

/// The second counterexample: X and L are both 'tag1'. Replica 0 deletes X
/// before L arrives, so L lives there; replica 1 merged them first. A
/// delete of any merged row deletes the merged row: nothing is left.
#[test]
fn regression_a_delete_of_a_merged_row_deletes_it_everywhere() {
    let steps = [
        tag_step(0, 1),
        tag_step(2, 1),
        sync_step(0, 1, false),
        sync_step(2, 1, false),
        Step::Delete {
            at: 0,
            table: 2,
            row: 0,
        },
        sync_step(2, 0, false),
    ];
    run_replicas(&steps, &all_pairs(), Mode::UniqueKeys).unwrap();
}

/// Issue 12: tables whose ids lsync keeps. The same pair assigned on two
/// replicas, a key part changed (a delete and an insert), a label deleted
/// under its pairs, and a snapshot taken into a replica with data.
#[test]
fn kept_ids_converge_through_pairs_key_changes_deletes_and_snapshots() {
    let (label, entry, pair) = (5, 1, 6);
    let steps = [
        ins(0, label),
        ins(0, label),
        ins(0, entry),
        sync_step(0, 1, false),
        sync_step(0, 2, false),
        ins(1, pair),
        ins(2, pair),
        Step::Update {
            at: 2,
            table: pair,
            row: 0,
            col: 2,
            v: 9,
        },
        sync_step(1, 0, false),
        Step::Update {
            at: 0,
            table: pair,
            row: 0,
            col: 0,
            v: 1,
        },
        Step::Delete {
            at: 1,
            table: label,
            row: 0,
        },
        Step::Snapshot { from: 0, to: 2 },
        sync_step(2, 1, true),
        sync_step(0, 1, false),
        Step::Release { pick: 0 },
    ];
    run_replicas(&steps, &all_pairs(), Mode::Plain).unwrap();
    run_replicas(&steps, &all_pairs(), Mode::UniqueKeys).unwrap();
}

/// Found by `make soak` (issue 13's stop): snapshots taken both ways among
/// three replicas, with a held changeset and an assignment whose tag
/// changed, left one replica without the assignment.
#[test]
fn regression_an_assignment_moved_across_snapshots_reaches_every_replica() {
    let upd = |at, table, row, col, v| Step::Update {
        at,
        table,
        row,
        col,
        v,
    };
    let tag = |at, v| Step::Insert {
        at,
        table: 2,
        a: 0,
        b: 0,
        v,
    };
    let steps = [
        tag(0, 57),
        tag(1, 70),
        sync_step(0, 2, false),
        ins(2, 3),
        sync_step(2, 1, true),
        Step::Snapshot { from: 1, to: 0 },
        Step::Snapshot { from: 2, to: 0 },
        Step::Snapshot { from: 0, to: 2 },
        upd(2, 3, 0, 3, 19),
        sync_step(2, 1, false),
        sync_step(0, 1, false),
    ];
    run_replicas(&steps, &all_pairs(), Mode::UniqueKeys).unwrap();
}

/// Found by `make soak` (10,000 cases): labels are UNIQUE by name. Replica
/// 1 has 'l1'; replica 2 has 'l4' and 'l1', its changes held back; replica
/// 0 has 'l4', sends it to 1, and renames it 'l1'. In the end replica 0
/// kept its label as 'l4' beside 'l1', while replica 1 has 'l1' only.
#[test]
fn regression_a_label_renamed_onto_a_merged_name_converges() {
    let label = |at: usize, v: u8| Step::Insert {
        at,
        table: 5,
        a: 0,
        b: 0,
        v,
    };
    let steps = [
        label(1, 231),
        label(2, 4),
        label(2, 231),
        sync_step(0, 1, false),
        label(0, 14),
        sync_step(2, 0, true),
        sync_step(0, 1, false),
        Step::Update {
            at: 0,
            table: 5,
            row: 0,
            col: 0,
            v: 126,
        },
    ];
    let order = [(1, 2), (0, 1), (0, 2), (1, 0), (2, 1), (2, 0)];
    run_replicas(&steps, &order, Mode::UniqueKeys).unwrap();
}

/// The compaction property's steps reach the fold's compaction: a bulk
/// insert, exported, then every second row updated, leaves a handful of
/// row entries where the updates alone would leave about 60, and the
/// compacted rows converge at the peer.
#[test]
fn scattered_updates_of_a_bulk_insert_are_compacted_and_converge() {
    let dir = TempDir::new();
    let r = Replicas::new(dir.path(), Mode::Plain);
    let entries = |at: usize| -> i64 {
        r.dbs[at]
            .query_row(
                "SELECT count(*) FROM lsync_clock WHERE lo IS NOT NULL AND col IS NULL
                   AND tbl = (SELECT id FROM lsync_tables WHERE name = 'entries')",
                [],
                |x| x.get(0),
            )
            .unwrap()
    };
    let bulk = Step::Bulk {
        at: 0,
        table: 1,
        n: 60,
    };
    local_write(&r.dbs[0], &bulk);
    let (blob, cursor) = r.export(0, 1, 0, None);
    r.deliver(0, 1, &blob).unwrap();
    let scatter = Step::Scatter {
        at: 0,
        table: 1,
        stride: 2,
        v: 200,
    };
    local_write(&r.dbs[0], &scatter);
    let (blob, _) = r.export(0, 1, cursor, None);
    assert!(entries(0) <= 3, "{} row entries after the fold", entries(0));
    r.deliver(0, 1, &blob).unwrap();
    assert_eq!(replica_dump(&r.dbs[0]), replica_dump(&r.dbs[1]));
    let sizes: i64 = r.dbs[1]
        .query_row("SELECT count(*) FROM entries WHERE size = 200", [], |x| {
            x.get(0)
        })
        .unwrap();
    assert_eq!(sizes, 30);
}
