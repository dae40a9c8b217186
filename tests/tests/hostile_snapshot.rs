//! Snapshots are untrusted input (issue 13): a file crafted from a real
//! snapshot, with plain SQL and no extension loaded, as an attacker with
//! the library secret (or a person handing over a file) would make it.
//! One test per class of hostile file, named after it. Each checks that a
//! restore takes only the rows of the tracked tables and validated lsync
//! metadata, never a schema object or a setting off the allow-list, and
//! that a refusal is a clear error with nothing written. Then
//! `lsync_snapshot` through symbolic links, and a snapshot download that
//! fills the disk, on a small tmpfs with two real `lsync run` processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lsync_tests::*;
use rusqlite::Connection;
use serde_json::Value as Json;

// ---------------------------------------------------------------- helpers

/// A source library with a location, a tree of entries, a tag and an
/// assignment; and an empty library database joined to it, whose local
/// `devices` table holds one row. Returns the directory, the source, and
/// the empty one's path and connection.
fn hostile_pair() -> (TempDir, Connection, PathBuf, Connection) {
    let dir = TempDir::new();
    let (_, src) = library_db(dir.path(), "src");
    index_tree(&src, "home", 20);
    let tag = add_tag(&src, "red", "#f00");
    assign(&src, tag, 2);
    let (dst_path, dst) = library_db(dir.path(), "dst");
    join_library(&dst, &library_id(&src));
    dst.execute("INSERT INTO devices(name) VALUES ('phone')", [])
        .unwrap();
    (dir, src, dst_path, dst)
}

/// A real snapshot of `src` at `dir/name.db`, then changed by `sql` on a
/// plain connection (lsync's triggers, which call its functions, are off
/// there).
fn crafted_snapshot(dir: &Path, src: &Connection, name: &str, sql: &str) -> PathBuf {
    let path = dir.join(format!("{name}.db"));
    src.query_row(
        "SELECT lsync_snapshot(?1)",
        [path.to_str().unwrap()],
        |_| Ok(()),
    )
    .expect("lsync_snapshot");
    let c = Connection::open(&path).unwrap();
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .unwrap();
    c.execute_batch(&format!("PRAGMA foreign_keys = OFF; {sql}"))
        .unwrap_or_else(|e| panic!("crafting {name}: {e}"));
    path
}

/// `lsync_restore(path)`, which must succeed: its report.
fn restore_report(c: &Connection, path: &Path) -> Json {
    let s: String = c
        .query_row("SELECT lsync_restore(?1)", [path.to_str().unwrap()], |r| {
            r.get(0)
        })
        .unwrap_or_else(|e| panic!("lsync_restore: {e}"));
    serde_json::from_str(&s).unwrap()
}

/// `lsync_restore(path)`, which must fail and change nothing: its error.
fn restore_refusal(c: &Connection, path: &Path) -> String {
    let before = hostile_state(c);
    let e = error_of(
        c,
        &format!(
            "SELECT lsync_restore('{}')",
            path.to_str().unwrap().replace('\'', "''")
        ),
    );
    assert!(e.contains("nothing was restored"), "{e}");
    assert_eq!(hostile_state(c), before, "a refusal writes nothing: {e}");
    e
}

/// Everything in a database: its schema, and every row of every table.
fn hostile_state(c: &Connection) -> Vec<Vec<String>> {
    let mut out = query_rows(
        c,
        "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name",
    );
    let tables = query_rows(
        c,
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql LIKE 'CREATE TABLE%'
         ORDER BY name",
    );
    for t in tables {
        let mut rows = query_rows(c, &format!("SELECT '{0}', * FROM \"{0}\"", t[0]));
        rows.sort();
        out.extend(rows);
    }
    out
}

/// The names of the database's schema objects.
fn schema_names(c: &Connection) -> Vec<String> {
    query_rows(c, "SELECT name FROM sqlite_schema ORDER BY name")
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

/// The SQL of schema object `name`.
fn sql_of(c: &Connection, name: &str) -> String {
    scalar(
        c,
        &format!(
            "SELECT sql FROM sqlite_schema WHERE name = '{}'",
            name.replace('\'', "''")
        ),
    )
}

/// Ordinary app writes to local and tracked tables, and lsync's own work
/// after them (a fold, a changeset): all succeed, running no planted code.
fn app_writes_succeed(c: &Connection) {
    c.execute_batch(
        "INSERT INTO devices(name) VALUES ('tablet');
         UPDATE devices SET os = 'linux';
         INSERT INTO tags(name, color) VALUES ('blue', '#00f');
         UPDATE tags SET color = '#0f0' WHERE name = 'red';
         INSERT INTO locations(path) VALUES ('/phone');
         INSERT INTO entries(name, location_id) VALUES ('mine', (SELECT max(id) FROM locations));
         DELETE FROM tag_assignments;",
    )
    .unwrap_or_else(|e| panic!("app writes after the restore: {e}"));
    flush(c);
    let _: Vec<u8> = scalar(c, "SELECT lsync_changeset(0)");
}

/// The report's `ignored` list.
fn ignored_of(report: &Json) -> Vec<String> {
    report["ignored"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The data arrived: the tracked tables are the source's, compared by
/// global id; local rows are this database's own.
fn rows_arrived(src: &Connection, dst: &Connection) {
    let (a, b) = (library_dump(src), library_dump(dst));
    assert!(a == b, "dumps differ: {}", first_difference(&a, &b));
    assert_eq!(
        query_rows(dst, "SELECT name FROM devices ORDER BY id"),
        [["phone"]],
        "the local table keeps its own rows"
    );
}

// ------------------------------------------------------- schema objects

#[test]
fn planted_trigger_is_not_taken_and_app_writes_run_no_planted_code() {
    let (dir, src, _, dst) = hostile_pair();
    let devices = sql_of(&src, "devices");
    let snap = crafted_snapshot(
        dir.path(),
        &src,
        "planted-trigger",
        &format!(
            "CREATE TRIGGER planted_trigger AFTER INSERT ON tags
               BEGIN SELECT RAISE(ABORT, 'planted code ran'); END;
             {devices};
             CREATE TRIGGER planted_on_devices AFTER INSERT ON devices
               BEGIN SELECT RAISE(ABORT, 'planted code ran'); END;
             CREATE TRIGGER lsync_planted AFTER UPDATE ON lsync_config
               BEGIN SELECT RAISE(ABORT, 'planted code ran'); END;"
        ),
    );
    let report = restore_report(&dst, &snap);
    assert_eq!(report["mode"], "empty", "{report}");
    let ignored = ignored_of(&report);
    for planted in [
        "trigger planted_trigger",
        "trigger planted_on_devices",
        "trigger lsync_planted",
    ] {
        assert!(ignored.iter().any(|i| i == planted), "{planted}: {report}");
    }
    let names = schema_names(&dst);
    assert!(
        !names.iter().any(|n| n.contains("planted")),
        "no planted trigger in the app's database: {names:?}"
    );
    rows_arrived(&src, &dst);
    app_writes_succeed(&dst);
}

#[test]
fn planted_view_is_not_taken() {
    let (dir, src, _, dst) = hostile_pair();
    let pending = sql_of(&dst, "lsync_pending");
    let snap = crafted_snapshot(
        dir.path(),
        &src,
        "planted-view",
        "CREATE VIEW planted_view AS SELECT 1 AS x;
         CREATE VIEW devices AS SELECT 1 AS id, 'intruder' AS name;
         DROP VIEW lsync_pending;
         CREATE VIEW lsync_pending AS SELECT 'planted' AS tbl;",
    );
    let report = restore_report(&dst, &snap);
    assert_eq!(report["mode"], "empty", "{report}");
    let ignored = ignored_of(&report);
    assert!(
        ignored.contains(&"view planted_view".to_owned()),
        "{report}"
    );
    assert!(ignored.contains(&"view devices".to_owned()), "{report}");
    assert!(!schema_names(&dst).contains(&"planted_view".to_owned()));
    assert_eq!(
        scalar::<String>(
            &dst,
            "SELECT type FROM sqlite_schema WHERE name = 'devices'"
        ),
        "table",
        "the local table stays a table"
    );
    assert_eq!(
        sql_of(&dst, "lsync_pending"),
        pending,
        "lsync's view is ours"
    );
    rows_arrived(&src, &dst);
    app_writes_succeed(&dst);
}

#[test]
fn planted_extra_table_is_not_taken() {
    let (dir, src, _, dst) = hostile_pair();
    let devices = sql_of(&dst, "devices");
    let snap = crafted_snapshot(
        dir.path(),
        &src,
        "planted-table",
        "CREATE TABLE planted_table(x);
         INSERT INTO planted_table VALUES ('evil');
         CREATE TABLE devices(id INTEGER PRIMARY KEY, name TEXT, evil TEXT);
         INSERT INTO devices VALUES (7, 'intruder', 'x');
         CREATE TABLE lsync_planted(x);
         INSERT INTO lsync_planted VALUES (1);",
    );
    let report = restore_report(&dst, &snap);
    assert_eq!(report["mode"], "empty", "{report}");
    let ignored = ignored_of(&report);
    for planted in [
        "table planted_table",
        "table devices",
        "table lsync_planted",
    ] {
        assert!(ignored.iter().any(|i| i == planted), "{planted}: {report}");
    }
    let names = schema_names(&dst);
    assert!(!names.iter().any(|n| n.contains("planted")), "{names:?}");
    assert_eq!(
        sql_of(&dst, "devices"),
        devices,
        "the local table as the app made it"
    );
    rows_arrived(&src, &dst);
    app_writes_succeed(&dst);
}

#[test]
fn planted_index_is_not_taken() {
    let (dir, src, _, dst) = hostile_pair();
    let snap = crafted_snapshot(
        dir.path(),
        &src,
        "planted-index",
        "CREATE INDEX planted_index ON entries(name);
         CREATE UNIQUE INDEX planted_unique ON tags(color);
         CREATE INDEX lsync_planted_index ON lsync_clock(hlc);",
    );
    let report = restore_report(&dst, &snap);
    assert_eq!(report["mode"], "empty", "{report}");
    let ignored = ignored_of(&report);
    for planted in [
        "index planted_index",
        "index planted_unique",
        "index lsync_planted_index",
    ] {
        assert!(ignored.iter().any(|i| i == planted), "{planted}: {report}");
    }
    let names = schema_names(&dst);
    assert!(!names.iter().any(|n| n.contains("planted")), "{names:?}");
    rows_arrived(&src, &dst);
    // The planted UNIQUE index would refuse a second tag of the same color.
    dst.execute(
        "INSERT INTO tags(name, color) VALUES ('crimson', '#f00')",
        [],
    )
    .expect("no planted constraint");
    app_writes_succeed(&dst);
}

#[test]
fn tracked_table_whose_sql_differs_is_merged_into_the_local_table() {
    let (dir, src, _, dst) = hostile_pair();
    let tags = sql_of(&dst, "tags");
    let snap = crafted_snapshot(
        dir.path(),
        &src,
        "tags-differ",
        "ALTER TABLE tags ADD COLUMN planted TEXT DEFAULT 'planted';",
    );
    let report = restore_report(&dst, &snap);
    assert_eq!(report["mode"], "merge", "{report}");
    assert_eq!(
        report["why_not_empty"], "the tracked tables are defined differently",
        "{report}"
    );
    assert_eq!(
        sql_of(&dst, "tags"),
        tags,
        "the local table as the app made it"
    );
    rows_arrived(&src, &dst);
    app_writes_succeed(&dst);
}

#[test]
fn tracked_table_that_is_a_view_is_refused() {
    let (dir, src, _, dst) = hostile_pair();
    let snap = crafted_snapshot(
        dir.path(),
        &src,
        "tags-view",
        "DROP TABLE tags;
         CREATE VIEW tags AS SELECT 1 AS id, 'x' AS uuid, 'planted' AS name, NULL AS color;",
    );
    let e = restore_refusal(&dst, &snap);
    assert!(
        e.contains("'tags' cannot be read: its tags is a view"),
        "{e}"
    );
}

// ------------------------------------------------------------- metadata

#[test]
fn metadata_tables_of_another_shape_are_refused() {
    let (dir, src, _, dst) = hostile_pair();
    for (name, sql, says) in [
        (
            "config-view",
            "CREATE TABLE planted_config AS SELECT * FROM lsync_config;
             DROP TABLE lsync_config;
             CREATE VIEW lsync_config AS SELECT * FROM planted_config;",
            "its lsync_config is a view, not a table",
        ),
        (
            "clock-view",
            "DROP TABLE lsync_clock;
             CREATE VIEW lsync_clock AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)
               SELECT i AS seq, 1 AS tbl, i AS lo, i AS hi, NULL AS col, 0 AS op, 1 AS hlc,
                      1 AS origin, NULL AS uuid FROM n;",
            "its lsync_clock is a view, not a table",
        ),
        (
            "peers-wider",
            "ALTER TABLE lsync_peers ADD COLUMN planted TEXT;",
            "its table lsync_peers has other columns than lsync's",
        ),
        (
            "no-gid",
            "DROP TABLE lsync_gid;",
            "it has no table lsync_gid",
        ),
    ] {
        let snap = crafted_snapshot(dir.path(), &src, name, sql);
        let e = restore_refusal(&dst, &snap);
        assert!(
            e.contains("is not an lsync snapshot") && e.contains(says),
            "{name}: {e}"
        );
    }
}

#[test]
fn poisoned_hlc_at_the_top_of_its_range_is_refused() {
    let (dir, src, _, dst) = hostile_pair();
    let top = i64::MAX;
    let hour_ahead = format!(
        "(SELECT value FROM lsync_config WHERE key = 'hlc') + {}",
        3_600_000i64 << 16
    );
    for (name, sql, says) in [
        (
            "hlc-setting",
            format!("UPDATE lsync_config SET value = {top} WHERE key = 'hlc';"),
            "beyond the range of HLCs lsync accepts",
        ),
        (
            "hlc-clock",
            format!("UPDATE lsync_clock SET hlc = {top} WHERE seq = (SELECT max(seq) FROM lsync_clock);"),
            "beyond the range of HLCs lsync accepts",
        ),
        (
            "hlc-parked",
            format!(
                "INSERT INTO lsync_parked VALUES (1, '{}', 'name', 'x', {top}, '{}');",
                uuid::Uuid::now_v7(),
                device_id(&src)
            ),
            "beyond the range of HLCs lsync accepts",
        ),
        (
            "hlc-real",
            "UPDATE lsync_config SET value = 9.3e18 WHERE key = 'hlc';".to_owned(),
            "its HLC setting is not an integer",
        ),
        (
            "hlc-text-in-clock",
            "UPDATE lsync_clock SET hlc = 'soon' WHERE seq = (SELECT max(seq) FROM lsync_clock);"
                .to_owned(),
            "HLCs that are not non-negative integers",
        ),
        (
            "hlc-an-hour-ahead",
            format!("UPDATE lsync_config SET value = {hour_ahead} WHERE key = 'hlc';"),
            "ms ahead of this device's clock",
        ),
    ] {
        let snap = crafted_snapshot(dir.path(), &src, name, &sql);
        let e = restore_refusal(&dst, &snap);
        assert!(e.contains(says), "{name}: {e}");
    }
    // Nothing stuck: the database restores a sound snapshot and writes.
    let sound = crafted_snapshot(dir.path(), &src, "sound", "");
    assert_eq!(restore_report(&dst, &sound)["mode"], "empty");
    rows_arrived(&src, &dst);
    app_writes_succeed(&dst);
}

#[test]
fn poisoned_max_changeset_bytes_is_not_taken() {
    let (dir, src, _, dst) = hostile_pair();
    let snap = crafted_snapshot(
        dir.path(),
        &src,
        "max-bytes",
        "INSERT INTO lsync_config(key, value) VALUES ('max_changeset_bytes', 1);",
    );
    let report = restore_report(&dst, &snap);
    assert_eq!(report["mode"], "empty", "{report}");
    assert!(
        ignored_of(&report).contains(&"setting max_changeset_bytes".to_owned()),
        "{report}"
    );
    assert_eq!(
        count_where(&dst, "key = 'max_changeset_bytes'"),
        0,
        "the setting is not taken"
    );
    // The device still exports and applies, both ways.
    let since = report["cursor"].as_i64().unwrap();
    src.execute("UPDATE tags SET color = '#e00'", []).unwrap();
    let r = send(&src, &dst, since);
    assert!(n(&r, "applied") >= 1, "{r}");
    app_writes_succeed(&dst);
    let r = send(&dst, &src, 0);
    assert!(n(&r, "applied") >= 1, "{r}");
}

/// Rows of `dst`'s lsync_config matching `cond`.
fn count_where(c: &Connection, cond: &str) -> i64 {
    scalar(
        c,
        &format!("SELECT count(*) FROM lsync_config WHERE {cond}"),
    )
}

#[test]
fn lsync_config_with_unknown_keys_takes_none_of_them() {
    let (dir, src, _, dst) = hostile_pair();
    let me = device_id(&dst);
    let drift: i64 = scalar(
        &dst,
        "SELECT value FROM lsync_config WHERE key = 'max_drift_ms'",
    );
    let before = query_rows(
        &dst,
        "SELECT key, value FROM lsync_config WHERE key NOT IN
        ('hlc', 'next_seq', 'library_locked', 'device_idx') ORDER BY key",
    );
    let snap = crafted_snapshot(
        dir.path(),
        &src,
        "unknown-keys",
        &format!(
            "INSERT INTO lsync_config(key, value) VALUES
               ('planted_key', 'x'), ('device_id', '{}'), ('device_idx', 99),
               ('max_drift_ms', 1000000000000), ('test_snapshot_no_flush', 1);",
            uuid::Uuid::now_v7()
        ),
    );
    let report = restore_report(&dst, &snap);
    assert_eq!(report["mode"], "empty", "{report}");
    let ignored = ignored_of(&report);
    for key in [
        "planted_key",
        "device_id",
        "device_idx",
        "max_drift_ms",
        "test_snapshot_no_flush",
    ] {
        assert!(
            ignored.contains(&format!("setting {key}")),
            "{key}: {report}"
        );
    }
    assert_eq!(device_id(&dst), me, "the device keeps its id");
    let after: i64 = scalar(
        &dst,
        "SELECT value FROM lsync_config WHERE key = 'max_drift_ms'",
    );
    assert_eq!(after, drift);
    assert_eq!(
        count_where(&dst, "key IN ('planted_key', 'test_snapshot_no_flush')"),
        0
    );
    assert_eq!(
        query_rows(
            &dst,
            "SELECT key, value FROM lsync_config WHERE key NOT IN
            ('hlc', 'next_seq', 'library_locked', 'device_idx') ORDER BY key"
        ),
        before,
        "only the allowed settings changed"
    );
    rows_arrived(&src, &dst);
    app_writes_succeed(&dst);
}

#[test]
fn out_of_range_cursors_and_device_ids_are_refused() {
    let (dir, src, _, dst) = hostile_pair();
    for (name, sql, says) in [
        (
            "next-seq-top",
            format!(
                "UPDATE lsync_config SET value = {} WHERE key = 'next_seq';",
                i64::MAX
            ),
            "next cursor 9223372036854775807 is out of range",
        ),
        (
            "next-seq-below-clock",
            "UPDATE lsync_config SET value = 1 WHERE key = 'next_seq';".to_owned(),
            "next cursor 1 is out of range",
        ),
        (
            "cursor-negative",
            "UPDATE lsync_config SET value = -5 WHERE key = 'snapshot_cursor';".to_owned(),
            "cursor -5 is out of range",
        ),
        (
            "device-not-uuid",
            "UPDATE lsync_config SET value = '../../etc' WHERE key = 'snapshot_device';".to_owned(),
            "device id '../../etc' is not a UUID",
        ),
        (
            "devices-not-uuid",
            "INSERT INTO lsync_devices(id) VALUES ('not a device');".to_owned(),
            "lsync_devices holds 1 device ids that are not UUIDs",
        ),
        (
            "peer-watermark-top",
            format!(
                "INSERT INTO lsync_peers(device_id, recv_cursor) VALUES ('{}', {});",
                uuid::Uuid::now_v7(),
                i64::MAX
            ),
            "which is out of range",
        ),
    ] {
        let snap = crafted_snapshot(dir.path(), &src, name, &sql);
        let e = restore_refusal(&dst, &snap);
        assert!(e.contains(says), "{name}: {e}");
    }
}

/// A clock entry whose origin is no device of the file (a REAL, or an alias
/// its `lsync_devices` lacks), and parked or quarantined changes whose
/// origin is no UUID. Taken whole by the empty path, the first left a
/// device that could never export again ("'unknown-device-0' is not a
/// UUID"): found by the restore_file fuzz target.
#[test]
fn clock_and_parked_origins_of_no_device_are_refused() {
    let (dir, src, _, dst) = hostile_pair();
    let first = "(SELECT min(seq) FROM lsync_clock)";
    for (name, sql, says) in [
        (
            "clock-origin-real",
            format!("UPDATE lsync_clock SET origin = 5.58648141679506e-91 WHERE seq = {first};"),
            "lsync_clock holds 1 changes whose origin is no device",
        ),
        (
            "clock-origin-unknown-alias",
            format!("UPDATE lsync_clock SET origin = 999 WHERE seq = {first};"),
            "lsync_clock holds 1 changes whose origin is no device",
        ),
        (
            "parked-origin-not-uuid",
            "INSERT INTO lsync_parked(tbl, uuid, col, value, hlc, origin)
             VALUES (1, 'x', 'name', 'v', 1, 'nobody');"
                .to_owned(),
            "lsync_parked holds 1 changes whose origin is not a device UUID",
        ),
    ] {
        let snap = crafted_snapshot(dir.path(), &src, name, &sql);
        let e = restore_refusal(&dst, &snap);
        assert!(e.contains(says), "{name}: {e}");
    }
    // Refused, the library still exports.
    let _: Vec<u8> = dst
        .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
        .expect("export after the refusals");
}

// ------------------------------------------------------- snapshot paths

#[test]
fn dangling_symlink_target_for_lsync_snapshot_is_refused() {
    let (dir, src, _, _) = hostile_pair();
    let target = dir.path().join("elsewhere.db");
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = error_of(
        &src,
        &format!("SELECT lsync_snapshot('{}')", link.display()),
    );
    assert!(
        e.contains("is a symbolic link") && e.contains("nothing was written"),
        "{e}"
    );
    assert!(!target.exists(), "nothing was written through the link");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
}

#[test]
fn symlink_to_an_existing_file_for_lsync_snapshot_is_refused() {
    let (dir, src, _, _) = hostile_pair();
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let e = error_of(
        &src,
        &format!("SELECT lsync_snapshot('{}')", link.display()),
    );
    assert!(e.contains("is a symbolic link"), "{e}");
    // A journal name that is a link: SQLite would write through it.
    let fresh = dir.path().join("fresh.db");
    std::os::unix::fs::symlink(&precious, dir.path().join("fresh.db-journal")).unwrap();
    let e = error_of(
        &src,
        &format!("SELECT lsync_snapshot('{}')", fresh.display()),
    );
    assert!(e.contains("fresh.db-journal' is a symbolic link"), "{e}");
    assert!(!fresh.exists());
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
}

// ------------------------------------------------------------- downloads

/// A tmpfs of `kib` KiB at `dir`, unmounted (lazily) on drop.
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn mount_small_disk(dir: &Path, kib: u64) -> Option<SmallDisk> {
    std::fs::create_dir_all(dir).ok()?;
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?
        .success()
        .then(|| SmallDisk(dir.to_owned()))
}

/// B's database is on a 2 MiB disk and A's snapshot is larger: the download
/// fails, and its partial file is removed, so the app at B still writes.
#[test]
fn full_disk_during_a_snapshot_download_removes_the_partial_file() {
    let dir = TempDir::new();
    let small = dir.path().join("small");
    let Some(_disk) = mount_small_disk(&small, 2048) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    index_tree(&a, "big", 40_000);
    let (b_db, b) = library_db(&small, "b");
    join_library(&b, &library_id(&a));
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[],
        &["--strategy", "snapshot"],
    );
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &[
            "--join",
            "--backoff-initial-ms",
            "5000",
            "--backoff-max-ms",
            "5000",
        ],
    );
    let nodes = [&node_a, &node_b];
    wait_for_within(
        "B's download fills its disk",
        &nodes,
        Duration::from_secs(60),
        || node_b.log().contains("snapshot download abandoned"),
    );
    node_b.stop();
    let log = node_b.log();
    assert!(log.contains("No space left on device"), "{log}");
    let incoming = small.join("b.db-lsync").join("incoming");
    let left: Vec<_> = std::fs::read_dir(&incoming)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the partial download is removed: {left:?}");
    // The app writes a quarter of a megabyte.
    b.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 250)
         INSERT INTO devices(name) SELECT hex(randomblob(500)) || i FROM n;",
    )
    .expect("the app can write after the failed download");
    drop(b);
}
