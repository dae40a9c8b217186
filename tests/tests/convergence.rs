//! The heart of lsync: three replicas (separate database files with the real
//! extension) make random inserts, updates and deletes on device-owned and
//! shared tables, including FK chains and self-references, and exchange
//! changesets between random pairs, in random order, partially, duplicated
//! and late. After a final full exchange every replica must hold the same
//! tracked tables, compared as a canonical dump keyed by uuid with FKs as
//! uuids. Replicas also take snapshots of each other (`lsync_snapshot` and
//! `lsync_restore`: the copy into a replica that never wrote, or the merge
//! into one that has data), fresh or stale.

use proptest::prelude::*;
use rusqlite::Connection;

use lsync_tests::{open, TempDir};

const SCHEMA: &str = "
CREATE TABLE locations(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, path TEXT);
CREATE TABLE entries(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  parent_id INTEGER REFERENCES entries(id), location_id INTEGER REFERENCES locations(id),
  name TEXT, size INTEGER);
CREATE INDEX entries_parent ON entries(parent_id);
CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, color TEXT);
CREATE TABLE tag_assignments(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  tag_id INTEGER REFERENCES tags(id), entry_id INTEGER REFERENCES entries(id), note TEXT);
SELECT lsync_track('locations', 'device_owned');
SELECT lsync_track('entries', 'device_owned');
SELECT lsync_track('tags', 'shared');
SELECT lsync_track('tag_assignments', 'shared');
";

const TABLES: [&str; 4] = ["locations", "entries", "tags", "tag_assignments"];

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
}

fn step() -> impl Strategy<Value = Step> {
    let r = 0..3usize;
    prop_oneof![
        4 => (r.clone(), 0..4usize, any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(at, table, a, b, v)| Step::Insert { at, table, a, b, v }),
        3 => (r.clone(), 0..4usize, any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(at, table, row, col, v)| Step::Update { at, table, row, col, v }),
        2 => (r.clone(), 0..4usize, any::<u8>())
            .prop_map(|(at, table, row)| Step::Delete { at, table, row }),
        3 => (r.clone(), r.clone(), proptest::option::of(1..8i64), proptest::bool::weighted(0.25))
            .prop_map(|(from, to, max, hold)| Step::Sync { from, to, max, hold }),
        1 => any::<u8>().prop_map(|pick| Step::Release { pick }),
        1 => any::<u8>().prop_map(|pick| Step::Duplicate { pick }),
        1 => (r.clone(), r.clone()).prop_map(|(from, to)| Step::Snapshot { from, to }),
        1 => (any::<u8>(), r).prop_map(|(pick, to)| Step::OldSnapshot { pick, to }),
    ]
}

/// A random existing row id of `table` at one replica.
fn pick(c: &Connection, table: &str, n: u8) -> Option<i64> {
    let count: i64 = c
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .ok()?;
    if count == 0 {
        return None;
    }
    c.query_row(
        &format!("SELECT id FROM {table} ORDER BY id LIMIT 1 OFFSET ?1"),
        [i64::from(n) % count],
        |r| r.get(0),
    )
    .ok()
}

/// A local write, as an app would make it. Refusals (ownership, FK
/// constraints) are part of normal life and leave nothing behind.
fn local_write(c: &Connection, s: &Step) {
    let _ = match *s {
        Step::Insert { table, a, b, v, .. } => match table {
            0 => c.execute(
                "INSERT INTO locations(path) VALUES (?1)",
                [format!("/vol{v}")],
            ),
            1 => c.execute(
                "INSERT INTO entries(parent_id, location_id, name, size) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    pick(c, "entries", a),
                    pick(c, "locations", b),
                    format!("f{v}"),
                    v
                ],
            ),
            2 => c.execute(
                "INSERT INTO tags(name, color) VALUES (?1, ?2)",
                [format!("tag{v}"), format!("#{a:02x}{b:02x}")],
            ),
            _ => c.execute(
                "INSERT INTO tag_assignments(tag_id, entry_id, note) VALUES (?1, ?2, ?3)",
                rusqlite::params![pick(c, "tags", a), pick(c, "entries", b), format!("n{v}")],
            ),
        },
        Step::Update {
            table, row, col, v, ..
        } => {
            let Some(id) = pick(c, TABLES[table], row) else {
                return;
            };
            let (col, val): (&str, rusqlite::types::Value) = match (table, col % 3) {
                (0, _) => ("path", format!("/p{v}").into()),
                (1, 0) => ("parent_id", pick(c, "entries", v).into()),
                (1, 1) => ("name", format!("g{v}").into()),
                (1, _) => ("size", i64::from(v).into()),
                (2, 0) => ("name", format!("t{v}").into()),
                (2, _) => ("color", format!("c{v}").into()),
                (_, 0) => ("tag_id", pick(c, "tags", v).into()),
                (_, 1) => ("entry_id", pick(c, "entries", v).into()),
                (_, _) => ("note", format!("m{v}").into()),
            };
            c.execute(
                &format!("UPDATE {} SET {col} = ?1 WHERE id = ?2", TABLES[table]),
                rusqlite::params![val, id],
            )
        }
        Step::Delete { table, row, .. } => {
            let Some(id) = pick(c, TABLES[table], row) else {
                return;
            };
            c.execute(
                &format!("DELETE FROM {} WHERE id = ?1", TABLES[table]),
                [id],
            )
        }
        _ => return,
    };
}

/// A logical FK: the target's uuid, or the uuid of a link still deferred.
fn fk(table: &str, col: &str, target: &str) -> String {
    format!(
        "coalesce((SELECT x.uuid FROM {target} x WHERE x.id = t.{col}),
                  (SELECT d.target_uuid FROM lsync_deferred d
                   WHERE d.tbl = (SELECT id FROM lsync_tables WHERE name = '{table}')
                     AND d.rid = t.id AND d.col = '{col}'))"
    )
}

/// Every tracked table, keyed by uuid, FKs as uuids.
fn dump(c: &Connection) -> Vec<Vec<String>> {
    let queries = [
        "SELECT 'L', uuid, path FROM locations t".to_owned(),
        format!(
            "SELECT 'E', uuid, {}, {}, name, size FROM entries t",
            fk("entries", "parent_id", "entries"),
            fk("entries", "location_id", "locations")
        ),
        "SELECT 'T', uuid, name, color FROM tags t".to_owned(),
        format!(
            "SELECT 'A', uuid, {}, {}, note FROM tag_assignments t",
            fk("tag_assignments", "tag_id", "tags"),
            fk("tag_assignments", "entry_id", "entries")
        ),
    ];
    let mut rows = Vec::new();
    for q in queries {
        let mut s = c.prepare(&format!("{q} ORDER BY uuid")).unwrap();
        let n = s.column_count();
        let mut r = s.query([]).unwrap();
        while let Some(row) = r.next().unwrap() {
            rows.push(
                (0..n)
                    .map(|i| format!("{:?}", row.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect(),
            );
        }
    }
    rows
}

/// Applies a changeset; returns how many changes it applied.
fn deliver(to: &Connection, blob: &[u8]) -> Result<i64, TestCaseError> {
    to.query_row("SELECT lsync_apply(?1) ->> 'applied'", [blob], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| TestCaseError::fail(format!("apply failed: {e}")))
}

fn export(from: &Connection, since: i64, max: Option<i64>) -> (Vec<u8>, i64) {
    let blob: Vec<u8> = match max {
        Some(m) => from.query_row("SELECT lsync_changeset(?1, ?2)", [since, m], |r| r.get(0)),
        None => from.query_row("SELECT lsync_changeset(?1)", [since], |r| r.get(0)),
    }
    .unwrap();
    let to: i64 = from
        .query_row("SELECT lsync_changeset_info(?1) ->> 'to'", [&blob], |r| {
            r.get(0)
        })
        .unwrap();
    (blob, to)
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

/// Restores a snapshot file; returns the source's cursor it covers.
fn restore(to: &Connection, file: &std::path::Path) -> Result<i64, TestCaseError> {
    to.query_row(
        "SELECT lsync_restore(?1) ->> 'cursor'",
        [file.to_string_lossy()],
        |r| r.get::<_, i64>(0),
    )
    .map_err(|e| TestCaseError::fail(format!("restore failed: {e}")))
}

fn run(steps: &[Step], order: &[(usize, usize)]) -> Result<(), TestCaseError> {
    let dir = TempDir::new();
    let dbs: Vec<Connection> = (0..3)
        .map(|i| {
            let c = open(&dir.path().join(format!("r{i}.db")));
            c.execute_batch(SCHEMA).unwrap();
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
    // seen[to][from]: the cursor of `from` that `to` has received up to.
    let mut seen = [[0i64; 3]; 3];
    let mut held: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut delivered: Vec<(usize, Vec<u8>)> = Vec::new();
    // (source replica, file) of every snapshot made.
    let mut snapshots: Vec<(usize, std::path::PathBuf)> = Vec::new();
    for s in steps {
        match *s {
            Step::Insert { at, .. } | Step::Update { at, .. } | Step::Delete { at, .. } => {
                local_write(&dbs[at], s)
            }
            Step::Sync {
                from,
                to,
                max,
                hold,
            } if from != to => {
                check_missing(&dbs[from], seen[to][from], &devices[to])?;
                let (blob, cursor) = export(&dbs[from], seen[to][from], max);
                seen[to][from] = cursor;
                if hold {
                    held.push((to, blob));
                } else {
                    deliver(&dbs[to], &blob)?;
                    delivered.push((to, blob));
                }
            }
            Step::Release { pick } if !held.is_empty() => {
                let (to, blob) = held.remove(usize::from(pick) % held.len());
                deliver(&dbs[to], &blob)?;
                delivered.push((to, blob));
            }
            Step::Duplicate { pick } if !delivered.is_empty() => {
                let (to, blob) = &delivered[usize::from(pick) % delivered.len()];
                deliver(&dbs[*to], blob)?;
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
                let cursor = restore(&dbs[to], &file)?;
                seen[to][from] = seen[to][from].max(cursor);
                snapshots.push((from, file));
            }
            Step::OldSnapshot { pick, to } if !snapshots.is_empty() => {
                let (from, file) = &snapshots[usize::from(pick) % snapshots.len()];
                if *from != to {
                    let cursor = restore(&dbs[to], file)?;
                    seen[to][*from] = seen[to][*from].max(cursor);
                }
            }
            _ => {}
        }
    }
    for (to, blob) in held.drain(..) {
        deliver(&dbs[to], &blob)?;
    }
    // Final exchange: incremental, from each replica's cursors, in the
    // given pair order, until a whole round applies nothing.
    let mut rounds = 0;
    loop {
        let mut applied = 0;
        for &(from, to) in order {
            let (blob, cursor) = export(&dbs[from], seen[to][from], None);
            seen[to][from] = cursor;
            applied += deliver(&dbs[to], &blob)?;
        }
        rounds += 1;
        if applied == 0 {
            break;
        }
        prop_assert!(rounds < 8, "no fixpoint after {} rounds", rounds);
    }
    let first = dump(&dbs[0]);
    for (i, c) in dbs.iter().enumerate().skip(1) {
        let other = dump(c);
        prop_assert_eq!(&first, &other, "replica {} differs from replica 0", i);
    }
    // Converged state is a fixpoint: everything each replica holds is stale
    // news to the others.
    for from in 0..3 {
        for to in (0..3).filter(|t| *t != from) {
            let (blob, _) = export(&dbs[from], 0, None);
            let applied = deliver(&dbs[to], &blob)?;
            prop_assert_eq!(
                applied,
                0,
                "full changeset {} -> {} changed the target",
                from,
                to
            );
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
        run(&steps, &order)?;
    }
}
