//! Deletes from a peer: a row goes when the delete is newer than its
//! creation (and, device-owned, comes from its owner), and leaves a
//! tombstone that later edits and older inserts lose to.

use lsync_wire::changeset::Change;

use super::{newer, owned, Applier, Clk};
use crate::catalog::{Mode, Table};
use crate::error::Result;
use crate::fk;
use crate::ident::qm;
use crate::sql::Value;

impl Applier {
    pub(super) fn delete(&mut self, t: &Table, c: &Change) -> Result<()> {
        self.check(t, c)?;
        let key = &c.pk;
        let origin = self.idx(&c.origin)?;
        let theirs: Clk = (c.hlc, c.origin.clone());
        if self.merged(t, key)? {
            return self.delete_merged(t, key, theirs);
        }
        let existing = self.rids.get(&t.name).and_then(|m| m.get(key)).copied();
        self.end_run()?;
        match existing {
            None => {
                self.drop_parked(t, key)?;
                let tomb = self.tombs.get(&t.name).and_then(|m| m.get(key));
                if tomb.is_some_and(|tc| theirs <= *tc) {
                    self.report.stale += 1;
                    return Ok(());
                }
            }
            Some(rid) => {
                let base = self.row_clock(t.id, rid)?;
                // A device-owned row goes only by its owner; a shared row's
                // delete wins over its creation (insert or newer re-insert)
                // when it is newer, whatever later column edits.
                if t.mode == Mode::DeviceOwned && !owned::is_owner(base, origin) {
                    self.report.refused += 1;
                    return Ok(());
                }
                let created = self.clk(base)?;
                if !newer(t.mode, &theirs, &created) {
                    self.report.stale += 1;
                    return Ok(());
                }
                self.remove(t, rid, key)?;
            }
        }
        self.clock.tombstone(t.id, key.clone(), c.hlc, origin)?;
        self.tombs
            .entry(t.name.clone())
            .or_default()
            .insert(key, theirs);
        self.report.applied += 1;
        Ok(())
    }

    /// Deletes row `rid`, its coverage and its links; its dependants get
    /// their FK's action first, so no FK cell is left dangling.
    pub(super) fn remove(&mut self, t: &Table, rid: i64, key: &Value) -> Result<()> {
        self.target_deleted(t, rid, key)?;
        self.drop_row(t, rid, key)?;
        self.touched.insert(t.name.clone());
        Ok(())
    }

    /// Deletes row `rid` (`key`) with its coverage and links, and nothing
    /// else: the caller has dealt with the rows that point at it.
    pub(super) fn drop_row(&mut self, t: &Table, rid: i64, key: &Value) -> Result<()> {
        self.db.run(
            &format!("DELETE FROM {} WHERE {}", qm(&t.name), t.rid_is("?1")),
            &[rid.into()],
        )?;
        self.clock.uncover(t.id, rid)?;
        self.clock.drop_columns(t.id, rid)?;
        fk::forget(&self.clock.cache, t.id, rid, None)?;
        crate::gids::forget(self.db, t, rid)?;
        if let Some(m) = self.rids.get_mut(&t.name) {
            m.remove(key);
        }
        Ok(())
    }
}
