//! A bulk apply's page cache. A changeset of many chunks writes the right
//! edge of every B-tree it fills, reads the FK targets' index, and keeps
//! its clock's run: with SQLite's default of 2 MiB that working set does
//! not fit, so dirty pages are written to the WAL before the commit and
//! read back, only to be written again. Measured on 1M entries (`strace`):
//! 50k WAL frames and 34k reads back at 2 MiB, against 33.5k frames (the
//! database's size) and none at 8 MiB.
//!
//! The cache is raised for the apply only, and put back as it was after.

use crate::error::Result;
use crate::sql::Db;

/// The cache a bulk apply runs with, at least.
pub const BULK_KIB: i64 = 16 << 10;

/// The connection's `main` page cache, raised to at least `kib` until
/// dropped.
pub struct Raised {
    db: Db,
    /// The setting to put back, as `PRAGMA cache_size` gave it; None when
    /// the cache was large enough already.
    prev: Option<i64>,
}

impl Raised {
    pub fn new(db: Db, kib: i64) -> Result<Raised> {
        let prev = db.query_i64("PRAGMA main.cache_size", &[])?.unwrap_or(0);
        // Positive: pages; negative: KiB.
        let now_kib = match prev {
            p if p < 0 => -p,
            p => {
                let page = db.query_i64("PRAGMA main.page_size", &[])?.unwrap_or(4096);
                p.saturating_mul(page) / 1024
            }
        };
        if now_kib >= kib {
            return Ok(Raised { db, prev: None });
        }
        db.exec(&format!("PRAGMA main.cache_size = -{kib}"))?;
        Ok(Raised {
            db,
            prev: Some(prev),
        })
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        if let Some(prev) = self.prev {
            let _ = self.db.exec(&format!("PRAGMA main.cache_size = {prev}"));
        }
    }
}
