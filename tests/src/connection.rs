//! Connections to test databases, with or without the extension.

use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, LoadExtensionGuard};

use crate::artifacts::ext_path;

fn tune(conn: &Connection) {
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy_timeout");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal", "the test database must be in WAL mode");
}

/// A connection with the extension loaded, in WAL mode with a busy timeout.
pub fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open database");
    load(&conn);
    tune(&conn);
    conn
}

/// Loads the extension into an existing connection: through the testing
/// entry point after `testing_mode()` on this thread.
pub fn load(conn: &Connection) {
    let ext = ext_path();
    let entry = TESTING
        .with(Cell::get)
        .then_some("sqlite3_lsync_testing_init");
    // SAFETY: loading a trusted extension that this workspace built; the
    // guard turns extension loading off again when it drops.
    unsafe {
        let _guard = LoadExtensionGuard::new(conn).expect("enable extension loading");
        conn.load_extension(&ext, entry)
            .unwrap_or_else(|e| panic!("load {}: {e}", ext.display()));
    }
}

/// A connection that did NOT load the extension (an app that forgot, or
/// another tool), in WAL mode with a busy timeout.
pub fn open_plain(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open database");
    tune(&conn);
    conn
}

thread_local! {
    static TESTING: Cell<bool> = const { Cell::new(false) };
}

/// Enables the test-only hooks (`lsync_debug_set_device_id`,
/// `test_snapshot_no_flush`) on the connections this thread (this test)
/// opens from now on: `load` uses the `sqlite3_lsync_testing_init` entry
/// point.
pub fn testing_mode() {
    TESTING.with(|t| t.set(true));
}

/// The lsync metadata version this build creates, read from a new
/// database: what an upgrade of an older one must arrive at, without each
/// upgrade test naming the number.
pub fn current_schema_version() -> i64 {
    let conn = Connection::open_in_memory().expect("open in-memory database");
    load(&conn);
    conn.query_row("SELECT lsync_library_id()", [], |_| Ok(()))
        .expect("create the metadata");
    conn.query_row(
        "SELECT value FROM lsync_config WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )
    .expect("schema_version")
}
