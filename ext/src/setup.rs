//! Making a database ready for lsync: its metadata ([`schema`]) and what an
//! upgrade from an older version regenerates beyond it.

use crate::error::Result;
use crate::sql::Db;
use crate::{schema, triggers};

/// The metadata tables, this device's identity, and the upgrades of an
/// older database, in one transaction (`schema::ensure_with`).
pub fn ensure(db: Db) -> Result<()> {
    schema::ensure_with(db, upgrade)
}

fn upgrade(db: Db, from: i64) -> Result<()> {
    // Version 15: the capture triggers hold this device's index, and a
    // device-owned update leaves its HLC to the fold. Version 16: a
    // device-owned update's trigger calls no function and cannot abort,
    // and a write of another device's row rolls the transaction back.
    if from < 16 {
        triggers::reinstall_all(db)?;
    }
    Ok(())
}

/// Makes `idx` this device's index in `lsync_devices`, and regenerates the
/// triggers, whose ownership checks hold it: the one way the index changes.
pub fn set_device_idx(db: Db, idx: i64) -> Result<()> {
    schema::set(db, "device_idx", idx.into())?;
    triggers::reinstall_all(db)
}
