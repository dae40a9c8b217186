//! lsync: leaderless replication for SQLite, as a loadable extension.
//!
//! Loading the extension registers the SQL functions documented in
//! `docs/sql-api.md`. Tracking a table installs triggers that record each
//! change in the writing transaction itself; `lsync_changes` lists them.

pub mod ahead;
pub mod api;
pub mod apply;
pub mod capture;
pub mod catalog;
pub mod changes;
pub mod clock;
pub mod compact;
pub mod conn;
pub mod dbcopy;
pub mod defer;
pub mod error;
pub mod export;
pub mod fk;
pub mod flush;
pub mod forget;
pub mod gids;
pub mod ident;
pub mod ids;
pub mod members;
pub mod merge;
mod opcodes;
pub mod pagecache;
pub mod peers;
pub mod refs;
pub mod restore;
pub mod rids;
pub mod schema;
mod setup;
pub mod shape;
pub mod snapfile;
pub mod snapshot;
pub mod sql;
pub mod stability;
pub mod statements;
pub mod status;
pub mod track;
pub mod triggers;
pub mod vtab;
pub mod warnings;

use std::ffi::{c_char, c_int};

use sql::{sqlite3, sqlite3_api_routines, Db};

/// The SQLite entry point: `.load liblsync` finds it by name.
///
/// # Safety
/// Called by SQLite with a valid connection and API table.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_lsync_init(
    db: *mut sqlite3,
    _pz_err_msg: *mut *mut c_char,
    p_api: *mut sqlite3_api_routines,
) -> c_int {
    init(db, p_api, api::register)
}

/// The entry point for tests (`.load liblsync sqlite3_lsync_testing_init`):
/// registers as usual and marks the connection as a test connection, where
/// the test-only hooks (`lsync_debug_set_device_id`) work.
///
/// # Safety
/// Called by SQLite with a valid connection and API table.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_lsync_testing_init(
    db: *mut sqlite3,
    _pz_err_msg: *mut *mut c_char,
    p_api: *mut sqlite3_api_routines,
) -> c_int {
    init(db, p_api, api::register_testing)
}

fn init(
    db: *mut sqlite3,
    p_api: *mut sqlite3_api_routines,
    register: fn(Db) -> error::Result<()>,
) -> c_int {
    let outcome = std::panic::catch_unwind(|| {
        sql::init_api(p_api);
        register(Db::from_raw(db))
    });
    match outcome {
        Ok(Ok(())) => 0,
        _ => 1, // SQLITE_ERROR
    }
}
