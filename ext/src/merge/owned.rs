//! Device-owned rows: only the device that inserted a row changes it, so
//! its latest state (the newest HLC) wins whole; another device's change is
//! refused.

use lsync_wire::changeset::Change;

use super::links::LocalValues;
use super::{Applier, Outcome};
use crate::catalog::Table;
use crate::clock::code_of;
use crate::error::Result;

/// Whether `origin` owns the row whose row entry has clock `base`.
pub(super) fn is_owner(base: (i64, i64), origin: i64) -> bool {
    base.1 == origin
}

impl Applier {
    /// The owner's newer state replaces the row; consecutive rows at one
    /// HLC share one range entry.
    pub(super) fn update_owned(
        &mut self,
        t: &Table,
        c: &Change,
        rid: i64,
        origin: i64,
        base: (i64, i64),
        vals: &LocalValues,
    ) -> Result<Outcome> {
        if !is_owner(base, origin) {
            return Ok(Outcome::Refused);
        }
        if c.hlc <= base.0 {
            return Ok(Outcome::Stale);
        }
        self.write(t, rid, vals)?;
        self.extend_run(t.id, rid, c.hlc, origin, code_of(c.op), true)?;
        Ok(Outcome::Written(
            vals.iter().map(|(c, _)| (*c).clone()).collect(),
        ))
    }
}
