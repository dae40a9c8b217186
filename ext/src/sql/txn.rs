//! What a connection's transaction state is: the accessors that capture
//! asks on every captured row, apart from the rest of `Db`.

use std::ffi::c_int;

use super::{api, Db};
use crate::error::Result;

impl Db {
    /// False inside an explicit transaction (BEGIN ... COMMIT).
    pub fn autocommit(&self) -> bool {
        // SAFETY: plain accessor on a live handle.
        unsafe { call!(get_autocommit(self.0)) != 0 }
    }

    /// The pager's data version of `main` (`SQLITE_FCNTL_DATA_VERSION`):
    /// unlike `PRAGMA data_version` it also changes when this connection
    /// commits, so it stays the same for the whole of one transaction.
    pub fn data_version(&self) -> Result<u32> {
        const SQLITE_FCNTL_DATA_VERSION: c_int = 35;
        let mut v: u32 = 0;
        // SAFETY: the handle is live; this opcode writes one unsigned int
        // through the pointer, which outlives the call.
        let rc = unsafe {
            call!(file_control(
                self.0,
                c"main".as_ptr(),
                SQLITE_FCNTL_DATA_VERSION,
                (&mut v as *mut u32).cast()
            ))
        };
        self.check(rc, "data_version")?;
        Ok(v)
    }

    /// Whether this connection holds a read or write transaction on `main`.
    pub fn in_transaction(&self) -> bool {
        // SAFETY: plain accessor on a live handle (SQLite >= 3.34).
        unsafe { call!(txn_state(self.0, c"main".as_ptr())) != 0 }
    }
}
