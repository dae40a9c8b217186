//! `lsync_restore` of a crafted file, on a copy of a receiver of the same
//! library (`lsync_fuzz::World`): empty (restore's `empty` path, the one
//! every joining device takes) or holding rows of its own (`merge`).
//!
//! Input layout: the first byte chooses
//! - bit 0: the receiver with rows of its own, else the empty one;
//! - bits 1-2, what the file is made of:
//!   0. the rest, as the file;
//!   1. one of the world's real snapshots (next byte), edited through SQL
//!      as a hostile sender would (`craft`): rows and settings changed,
//!      duplicated or deleted, schema objects added or dropped;
//!   2. one of the world's real snapshots (next byte), with bytes flipped:
//!      (u32 offset, u8 xor) pairs from the rest;
//!   3. as 1, then as 2.
//!
//! Errors are fine. A crash, an abort, a leak or an allocation over the
//! malloc limit is not; nor, after a restore that succeeded, a schema
//! object the app did not make, a device setting that changed, or a
//! database that cannot export its changes or apply its peer's.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lsync_fuzz::input::{to_sql, Input};
use lsync_fuzz::{debug, fresh, open, remove_db, world};
use lsync_wire::changeset::Changeset;
use rusqlite::Connection;

/// Statements a crafted snapshot may carry or lack, besides its rows.
const SCHEMA_EDITS: &[&str] = &[
    "CREATE TRIGGER evil AFTER INSERT ON labels BEGIN DELETE FROM folders; END",
    "CREATE VIEW lsync_view AS SELECT 1",
    "CREATE TABLE local_notes(x)",
    "CREATE INDEX by_color ON labels(color)",
    "ALTER TABLE labels ADD COLUMN extra TEXT DEFAULT 'x'",
    "ALTER TABLE labels RENAME COLUMN color TO colour",
    "DROP TABLE pins",
    "DROP TABLE lsync_clock",
    "ALTER TABLE lsync_config RENAME TO lsync_config_old; CREATE VIEW lsync_config AS SELECT * FROM lsync_config_old",
    "DROP TABLE lsync_devices; CREATE TABLE lsync_devices(idx, id)",
    "PRAGMA user_version = 7",
    "PRAGMA application_id = 42",
    "DROP INDEX IF EXISTS sqlite_autoindex_labels_2",
];

const CONFIG_KEYS: &[&str] = &[
    "hlc",
    "next_seq",
    "library_id",
    "schema_version",
    "snapshot_device",
    "snapshot_cursor",
    "snapshot_owner",
    "snapshot_rows",
    "device_id",
    "max_drift_ms",
    "max_changeset_bytes",
    "library_locked",
];

/// Edits a copy of a real snapshot at `path` as a hostile sender would.
fn craft(path: &Path, inp: &mut Input) {
    let w = world();
    let s = open(path);
    // Raw edits: lsync's triggers in the file would record them.
    s.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .unwrap();
    let ops = usize::from(inp.u8() % 8) + 1;
    for _ in 0..ops {
        let (table, cols) = inp.pick(&w.snapshot_tables);
        let row = i64::from(inp.u8() % 8);
        let target = format!("rowid IN (SELECT rowid FROM \"{table}\" LIMIT 1 OFFSET {row})");
        let _ = match inp.u8() % 6 {
            0 => {
                let col = inp.pick(cols);
                let v = to_sql(&inp.value(&w.ids));
                s.execute(
                    &format!("UPDATE \"{table}\" SET \"{col}\" = ?1 WHERE {target}"),
                    [v],
                )
            }
            1 => s.execute(&format!("DELETE FROM \"{table}\" WHERE {target}"), []),
            2 => s.execute(
                &format!(
                    "INSERT OR IGNORE INTO \"{table}\" SELECT * FROM \"{table}\" WHERE {target}"
                ),
                [],
            ),
            3 => {
                let key = inp.pick(CONFIG_KEYS);
                let v = to_sql(&inp.value(&w.ids));
                s.execute(
                    "INSERT OR REPLACE INTO lsync_config(key, value) VALUES (?1, ?2)",
                    rusqlite::params![key, v],
                )
            }
            4 => {
                // A row of `table` whose every column is a value of ours.
                let vals: Vec<rusqlite::types::Value> =
                    cols.iter().map(|_| to_sql(&inp.value(&w.ids))).collect();
                let marks = vec!["?"; cols.len()].join(", ");
                s.execute(
                    &format!("INSERT OR REPLACE INTO \"{table}\" VALUES ({marks})"),
                    rusqlite::params_from_iter(vals),
                )
            }
            _ => s.execute_batch(inp.pick::<&str>(SCHEMA_EDITS)).map(|_| 0),
        };
    }
}

fn file(inp: &mut Input, mode: u8, path: &Path) {
    let w = world();
    if mode == 0 {
        std::fs::write(path, inp.rest()).unwrap();
        return;
    }
    std::fs::write(path, inp.pick(&w.snapshots)).unwrap();
    if mode & 1 != 0 {
        craft(path, inp);
        remove_db_sidecars(path);
    }
    if mode & 2 != 0 {
        let mut bytes = std::fs::read(path).unwrap();
        while !inp.is_empty() && !bytes.is_empty() {
            let at = inp.u32() as usize % bytes.len();
            bytes[at] ^= inp.u8().max(1);
        }
        std::fs::write(path, bytes).unwrap();
    }
}

/// Leaves the file alone on disk: no journal beside it.
fn remove_db_sidecars(path: &Path) {
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

fn rows(c: &Connection, sql: &str) -> Vec<String> {
    let mut st = c.prepare(sql).unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// What a restore must never change: the schema (as the app made it, with
/// lsync's own) and every setting but the clock's, the lock a restore
/// sets on the library id, and this device's local alias (the restored
/// device table numbers it anew; its id stays).
fn untouchable(c: &Connection) -> Vec<String> {
    let mut all = rows(
        c,
        "SELECT type || ' ' || name || ': ' || quote(sql) FROM sqlite_master",
    );
    all.extend(rows(
        c,
        "SELECT 'setting ' || key || ' = ' || quote(value) FROM lsync_config
         WHERE key NOT IN ('hlc', 'next_seq', 'library_locked', 'device_idx')",
    ));
    all.sort();
    all
}

fuzz_target!(init: { world(); }, |data: &[u8]| {
    let w = world();
    let mut inp = Input::new(data);
    let how = inp.u8();
    let snap = w.dir.join("input.snap");
    remove_db(&snap);
    file(&mut inp, (how >> 1) & 3, &snap);
    let template = if how & 1 != 0 { &w.receiver } else { &w.empty };
    let (c, _path) = fresh(template);
    let before = untouchable(&c);
    let name = snap.to_str().unwrap();
    let _ = c.query_row("SELECT lsync_snapshot_info(?1)", [name], |r| {
        r.get::<_, String>(0)
    });
    let restored = c.query_row("SELECT lsync_restore(?1)", [name], |r| r.get::<_, String>(0));
    if debug() {
        eprintln!("mode {} template {}: {restored:?}", (how >> 1) & 3, how & 1);
        // The file as restored, to look into after a crash.
        let _ = std::fs::copy(&snap, std::env::temp_dir().join("lsync-fuzz-last.snap"));
    }
    if let Ok(report) = restored {
        let after = untouchable(&c);
        if after != before {
            let gone: Vec<&String> = before.iter().filter(|x| !after.contains(x)).collect();
            let new: Vec<&String> = after.iter().filter(|x| !before.contains(x)).collect();
            panic!("a restore changed the schema or settings ({report}): gone {gone:?}, new {new:?}");
        }
        let export = c.query_row("SELECT lsync_changeset(0)", [], |r| r.get::<_, Vec<u8>>(0));
        let exported = export.unwrap_or_else(|e| panic!("no export after a restore ({report}): {e}"));
        Changeset::decode(&exported, 1 << 30).expect("the export decodes");
        let all = &w.changesets[2];
        if let Err(e) = c.query_row("SELECT lsync_apply(?1)", [all], |r| r.get::<_, String>(0)) {
            panic!("the peer's changes do not apply after a restore ({report}): {e}");
        }
    }
});
