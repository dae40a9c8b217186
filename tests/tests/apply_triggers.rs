//! Which triggers fire during `lsync_apply`, whatever the connection's own
//! setting (`SQLITE_DBCONFIG_ENABLE_TRIGGER`): an app's trigger on a table
//! the apply writes always fires, lsync's never capture, and the setting
//! is the caller's again afterwards. The sidecar keeps triggers off on its
//! session connection, so that its applies never switch them (switching
//! expires every statement the connection keeps prepared).

use lsync_tests::*;
use rusqlite::config::DbConfig;
use rusqlite::Connection;

const TRIGGERS: DbConfig = DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER;

/// A with `rows` entries, B in its library with triggers set to `b_on`.
fn pair(dir: &TempDir, rows: i64, b_on: bool) -> (Connection, Connection) {
    let (_, a) = library_db(dir.path(), "a");
    let (_, b) = library_db(dir.path(), "b");
    join_library(&b, &library_id(&a));
    index_tree(&a, "t", rows);
    b.set_db_config(TRIGGERS, b_on).unwrap();
    (a, b)
}

fn apply_all(a: &Connection, b: &Connection) -> serde_json::Value {
    let blob: Vec<u8> = a
        .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
        .unwrap();
    let r: String = b
        .query_row("SELECT lsync_apply(?1)", [blob], |r| r.get(0))
        .unwrap();
    serde_json::from_str(&r).unwrap()
}

fn audited(b: &Connection) {
    b.execute_batch(
        "CREATE TABLE audit(name TEXT);
         CREATE TRIGGER app_audit AFTER INSERT ON entries BEGIN
           INSERT INTO audit(name) VALUES (NEW.name);
         END;",
    )
    .unwrap();
}

#[test]
fn an_app_trigger_fires_on_a_connection_that_keeps_triggers_off() {
    for rows in [3, 200] {
        let dir = TempDir::new();
        let (a, b) = pair(&dir, rows, false);
        audited(&b);
        let r = apply_all(&a, &b);
        let n = count(&b, "entries");
        assert_eq!(n, rows, "{r}");
        assert_eq!(count(&b, "audit"), n, "{rows} rows");
        assert!(!b.db_config(TRIGGERS).unwrap(), "triggers are off again");
    }
}

#[test]
fn without_app_triggers_an_apply_leaves_the_setting_as_it_found_it() {
    for (rows, on) in [(3, false), (200, false), (3, true), (200, true)] {
        let dir = TempDir::new();
        let (a, b) = pair(&dir, rows, on);
        apply_all(&a, &b);
        assert_eq!(count(&b, "entries"), rows);
        assert_eq!(b.db_config(TRIGGERS).unwrap(), on, "{rows} rows");
        // Nothing applied was captured as B's own change.
        let own: i64 = scalar(
            &b,
            "SELECT count(*) FROM lsync_changes(0) WHERE origin = lsync_device_id()",
        );
        assert_eq!(own, 0, "{rows} rows, triggers {on}");
        // With triggers on again, lsync's own enforce ownership: entry 1
        // is A's.
        b.set_db_config(TRIGGERS, true).unwrap();
        let refused = b.execute("UPDATE entries SET size = size + 1 WHERE id = 1", []);
        assert!(refused.is_err(), "{rows} rows, triggers {on}");
    }
}
