//! Connections that lsync opens itself, through the host's SQLite.

use std::ffi::{c_int, CString};
use std::ptr;

use super::{api, Db, SQLITE_OK};
use crate::error::{Error, Result};

/// A connection that lsync opened itself (a snapshot file, a copy), closed
/// on drop. Opened through the host's SQLite, so it has the same version and
/// VFS; the extension is not loaded into it.
pub struct Connection(Db);

/// `sqlite3_open_v2` flags.
pub const OPEN_READONLY: c_int = 0x01;
pub const OPEN_READWRITE: c_int = 0x02;
pub const OPEN_CREATE: c_int = 0x04;
/// File names may be `file:` URIs (here: for ATTACH with `mode=ro`).
pub const OPEN_URI: c_int = 0x40;
/// The database file may not be a symbolic link (SQLite >= 3.31).
pub const OPEN_NOFOLLOW: c_int = 0x0100_0000;

impl Connection {
    pub fn open(path: &std::path::Path, flags: c_int) -> Result<Connection> {
        let name = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| Error::msg("lsync: a file name contains a NUL byte"))?;
        let mut db = ptr::null_mut();
        // SAFETY: `name` is a valid C string; the handle SQLite returns,
        // even on failure, is closed exactly once (here or in Drop).
        let rc = unsafe { call!(open_v2(name.as_ptr(), &mut db, flags, ptr::null())) };
        if db.is_null() {
            return Err(Error::msg(format!(
                "lsync: cannot open '{}': out of memory",
                path.display()
            )));
        }
        let conn = Connection(Db(db));
        if rc != SQLITE_OK {
            return Err(Error::msg(format!(
                "lsync: cannot open '{}': {}",
                path.display(),
                conn.0.errmsg()
            )));
        }
        Ok(conn)
    }

    pub fn db(&self) -> Db {
        self.0
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: we own the handle; close_v2 defers the close until any
        // statement still alive is finalized.
        unsafe { call!(close_v2(self.0 .0)) };
    }
}
