//! lsync: leaderless replication for SQLite, as a loadable extension.
//!
//! Loading the extension registers the SQL functions documented in
//! `docs/sql-api.md`. Tracking a table installs triggers that record each
//! change in the writing transaction itself; `lsync_changes` lists them.

pub mod api;
pub mod apply;
pub mod changes;
pub mod error;
pub mod export;
pub mod fk;
pub mod flush;
pub mod ident;
pub mod ids;
pub mod peers;
pub mod restore;
pub mod schema;
pub mod snapshot;
pub mod sql;
pub mod stability;
pub mod status;
pub mod track;
pub mod vtab;

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
    let outcome = std::panic::catch_unwind(|| {
        sql::init_api(p_api);
        api::register(Db::from_raw(db))
    });
    match outcome {
        Ok(Ok(())) => 0,
        _ => 1, // SQLITE_ERROR
    }
}
