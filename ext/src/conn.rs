//! Per-connection state, shared by the functions registered on one
//! connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::defer::Verdicts;

pub struct Conn {
    /// False while this connection applies remote changes, so that the
    /// triggers do not echo them as local changes.
    pub capturing: AtomicBool,
    /// Loaded through `sqlite3_lsync_testing_init`: the test-only hooks
    /// work here. Not a setting or an environment variable, so that an app
    /// cannot turn them on by accident.
    pub testing: bool,
    /// The HLC `lsync_capture_hlc` last issued, with the pager's data
    /// version of the transaction it was issued in (`capture::capture_hlc`).
    pub tx_hlc: Mutex<Option<(u32, i64)>>,
    /// Which tracked tables take part in an FK check that could fail
    /// mid-apply, as of one schema version (`defer`).
    pub fk_verdicts: Mutex<Verdicts>,
}

impl Conn {
    pub fn new(testing: bool) -> Conn {
        Conn {
            capturing: AtomicBool::new(true),
            testing,
            tx_hlc: Mutex::new(None),
            fk_verdicts: Mutex::default(),
        }
    }

    pub fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }
}

/// Switches capture off for one connection while it applies.
pub struct CaptureOff<'a>(&'a Conn, bool);

impl<'a> CaptureOff<'a> {
    pub fn new(conn: &'a Conn) -> Self {
        CaptureOff(conn, conn.capturing.swap(false, Ordering::SeqCst))
    }
}

impl Drop for CaptureOff<'_> {
    fn drop(&mut self) {
        self.0.capturing.store(self.1, Ordering::SeqCst);
    }
}
