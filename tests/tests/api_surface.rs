//! The SQL API surface: the registered functions (locked by a snapshot so an
//! accidental rename or flag change shows up in review) and the messages of
//! errors a user can cause.

use lsync_tests::*;
use rusqlite::Connection;

const FUNCTIONS: &[&str] = &[
    "lsync_apply",
    "lsync_capture_hlc",
    "lsync_capturing",
    "lsync_changeset",
    "lsync_changeset_info",
    "lsync_conflict_drop",
    "lsync_conflict_retry",
    "lsync_debug",
    "lsync_debug_set_device_id",
    "lsync_deny_owned",
    "lsync_device_id",
    "lsync_device_key",
    "lsync_drift",
    "lsync_flush",
    "lsync_forget_peer",
    "lsync_head",
    "lsync_hlc_now",
    "lsync_hlc_text",
    "lsync_hlc_wall",
    "lsync_key",
    "lsync_library_id",
    "lsync_library_secret",
    "lsync_member_admit",
    "lsync_members",
    "lsync_members_merge",
    "lsync_missing",
    "lsync_on_delete_target",
    "lsync_on_insert",
    "lsync_peer",
    "lsync_peer_acked",
    "lsync_peer_contact",
    "lsync_peer_error",
    "lsync_peer_held",
    "lsync_peer_held_by",
    "lsync_peer_received",
    "lsync_peer_reset",
    "lsync_peer_stuck",
    "lsync_prune",
    "lsync_restore",
    "lsync_revoke",
    "lsync_schema_fingerprint",
    "lsync_snapshot",
    "lsync_snapshot_info",
    "lsync_status",
    "lsync_track",
    "lsync_untrack",
    "lsync_uuid",
    "lsync_version",
];

fn function_names(conn: &Connection) -> Vec<String> {
    query_rows(
        conn,
        "SELECT DISTINCT name FROM pragma_function_list WHERE name LIKE 'lsync%' ORDER BY 1",
    )
    .into_iter()
    .map(|r| r[0].clone())
    .collect()
}

#[test]
fn function_list_before_and_after_loading() {
    let dir = TempDir::new();
    let conn = open_plain(&dir.db());
    assert_eq!(function_names(&conn), Vec::<String>::new());
    let modules: i64 = scalar(
        &conn,
        "SELECT count(*) FROM pragma_module_list WHERE name LIKE 'lsync%'",
    );
    assert_eq!(modules, 0);

    load(&conn);
    assert_eq!(function_names(&conn), FUNCTIONS);
    let modules = query_rows(
        &conn,
        "SELECT name FROM pragma_module_list WHERE name LIKE 'lsync%' ORDER BY 1",
    );
    assert_eq!(modules, [["lsync_changes"], ["lsync_statements"]]);
}

/// Names, arities and flags: `DIRECTONLY` for functions that change state,
/// `INNOCUOUS` for those the triggers call (so `trusted_schema=OFF` works).
#[test]
fn function_signatures_and_flags() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    let rows = query_rows(
        &conn,
        "SELECT name, narg, flags FROM pragma_function_list
         WHERE name LIKE 'lsync%' ORDER BY name, narg",
    );
    let text: String = rows
        .iter()
        .map(|r| {
            let flags: i64 = r[2].parse().unwrap();
            let mut words = Vec::new();
            for (bit, word) in [
                (0x0000_0800, "deterministic"),
                (0x0008_0000, "directonly"),
                (0x0020_0000, "innocuous"),
            ] {
                if flags & bit != 0 {
                    words.push(word);
                }
            }
            format!("{}({}) {}\n", r[0], r[1], words.join(" "))
        })
        .collect();
    insta::assert_snapshot!(text);
    // The trigger-called functions, spelled out: losing INNOCUOUS breaks
    // every write under trusted_schema=OFF.
    for f in [
        "lsync_capturing",
        "lsync_capture_hlc",
        "lsync_hlc_wall",
        "lsync_on_insert",
        "lsync_deny_owned",
        "lsync_uuid",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{f}(")) && l.contains("innocuous")),
            "{f} must be INNOCUOUS:\n{text}"
        );
    }
}

#[test]
fn version_and_debug() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    let v: String = scalar(&conn, "SELECT lsync_version()");
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let d: String = scalar(&conn, "SELECT lsync_debug()");
    assert!(d.starts_with(&format!("lsync {v} ")), "{d}");
    let sqlite: String = scalar(&conn, "SELECT sqlite_version()");
    assert!(d.contains(&sqlite), "{d} names the host SQLite {sqlite}");
}

/// Errors a user can cause: each is an SQL error whose message starts with
/// `lsync`, and the connection keeps working.
#[test]
fn user_errors_are_clear_and_harmless() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
         CREATE TABLE wr(k TEXT PRIMARY KEY, uuid TEXT) WITHOUT ROWID;
         CREATE TABLE nouuid(name TEXT, n INTEGER);
         CREATE TABLE dupes(id INTEGER PRIMARY KEY, uuid TEXT);
         INSERT INTO dupes(uuid) VALUES ('same'), ('same');
         CREATE VIRTUAL TABLE v USING fts5(uuid, body);
         CREATE TABLE sh(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE);
         SELECT lsync_track('sh', 'shared');",
    )
    .unwrap();
    let cases = [
        "SELECT lsync_track('nope', 'shared')",
        "SELECT lsync_track('t', 'bogus')",
        "SELECT lsync_track(NULL, 'shared')",
        "SELECT lsync_track('t', NULL)",
        "SELECT lsync_track(42, 'shared')",
        "SELECT lsync_track('wr', 'shared')",
        "SELECT lsync_track('nouuid', 'shared')",
        "SELECT lsync_track('t', 'shared', '{not json')",
        "SELECT lsync_track('t', 'shared', '{\"uuid_col\": \"uuid\"}')",
        "SELECT lsync_track('t', 'shared', '{\"fks\": {\"missing\": \"t\"}}')",
        "SELECT lsync_track('t', 'shared', '{\"uuid_column\": \"id\"}')",
        "SELECT lsync_track('dupes', 'shared')",
        "SELECT lsync_track('v', 'shared')",
        "SELECT lsync_track('lsync_config', 'shared')",
        "SELECT lsync_track('sh', 'device_owned')",
        "SELECT lsync_untrack(NULL)",
        "SELECT lsync_untrack('t')",
        "SELECT lsync_hlc_text('x')",
        "SELECT lsync_hlc_text(NULL)",
        "SELECT lsync_library_id('not-a-uuid')",
        "SELECT lsync_library_id(NULL)",
        "SELECT lsync_uuid('hex')",
        "SELECT * FROM lsync_changes('abc')",
        "SELECT * FROM lsync_changes(1.5)",
        "SELECT lsync_restore('/nonexistent', 'not json')",
        "SELECT lsync_snapshot('/nonexistent/s.db', NULL, '{\"sync\": \"no\"}')",
        "SELECT lsync_missing('abc')",
        "SELECT lsync_missing(0, 'not-a-uuid')",
        "SELECT lsync_debug_set_device_id('not-a-uuid')",
    ];
    let mut report = String::new();
    for sql in cases {
        let err = error_of(&conn, sql);
        assert!(err.starts_with("lsync"), "{sql}: {err}");
        report.push_str(&format!("{sql}\n  => {err}\n"));
        // Still usable, and nothing half-done was left behind.
        assert_eq!(
            scalar::<String>(&conn, "SELECT lsync_version()"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(scalar::<bool>(&conn, "SELECT 1 + 1 = 2"));
        assert!(conn.is_autocommit(), "{sql} left a transaction open");
    }
    insta::assert_snapshot!(report);
    let tracked = query_rows(&conn, "SELECT name, mode FROM lsync_tables ORDER BY name");
    assert_eq!(
        tracked,
        [["sh", "shared"]],
        "no failed call tracked anything"
    );
    let triggers: i64 = scalar(
        &conn,
        r"SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name <> 'sh'
           AND tbl_name NOT LIKE 'lsync\_%' ESCAPE '\'",
    );
    assert_eq!(triggers, 0);
    // The dupes table still has its NULL-free duplicate uuids and no index.
    assert_eq!(count(&conn, "dupes"), 2);
}

#[test]
fn changes_with_null_or_no_cursor_starts_at_zero() {
    let dir = TempDir::new();
    let conn = open(&dir.db());
    two_tables(&conn);
    conn.execute("INSERT INTO files(name) VALUES ('a')", [])
        .unwrap();
    assert_eq!(
        scalar::<i64>(&conn, "SELECT count(*) FROM lsync_changes(NULL)"),
        1
    );
    assert_eq!(
        scalar::<i64>(&conn, "SELECT count(*) FROM lsync_changes"),
        1
    );
    assert_eq!(
        scalar::<i64>(&conn, "SELECT count(*) FROM lsync_changes(0)"),
        1
    );
}
