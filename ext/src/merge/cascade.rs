//! FK `ON DELETE` actions, applied the same way on every replica
//! (docs/conflicts.md): when a row is deleted, or a row arrives that
//! links to a deleted row, the link's declared action decides.
//!
//! - `CASCADE`, and `NO ACTION` / `RESTRICT` (delete-wins: a delete that
//!   has happened on another device cannot be refused here): the
//!   dependant goes too.
//! - `SET NULL` / `SET DEFAULT`: the column is set; the link is dropped.
//!
//! A removed dependant leaves a tombstone, which travels like any delete,
//! so every replica ends the same whichever saw the link to the deleted
//! row: a device-owned row's at the clock of its owner's state that made
//! the link (older states stay out, a newer one of its owner brings it
//! back); a shared row's just after its creation, made by this device (a
//! shared delete beats the row's creation, whatever later edits).

use std::rc::Rc;
use std::sync::Arc;

use lsync_wire::changeset::{Change, Op};
use rustc_hash::FxHashMap as HashMap;

use super::links::{Link, LocalValues};
use super::{Applier, Clk};
use crate::catalog::{Mode, Table};
use crate::error::Result;
use crate::fk;
use crate::ident::{q, qm};
use crate::ids;
use crate::sql::Value;

/// An FK column that points at a table, as `target_deleted` uses it.
pub(super) struct Referrer {
    table: Table,
    action: Action,
    /// `Remove`: selects the dependants' rowids and uuids; else sets them.
    sql: String,
}

/// What a tracked FK column does when its target row is deleted.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// CASCADE, NO ACTION, RESTRICT, or no declared FK.
    Remove,
    SetNull,
    /// SET DEFAULT, with the column's default expression (NULL without one).
    SetDefault(String),
}

impl Applier {
    /// The action of FK column `col` of `t`, read once per table.
    pub(super) fn action(&mut self, t: &Table, col: &str) -> Result<Action> {
        if !self.actions.contains_key(&t.id) {
            let mut map = HashMap::default();
            for fk in fk::on_delete(self.db, &t.name)? {
                let a = match fk.action.as_str() {
                    "SET NULL" => Action::SetNull,
                    "SET DEFAULT" => {
                        Action::SetDefault(fk.default.unwrap_or_else(|| "NULL".into()))
                    }
                    _ => Action::Remove,
                };
                map.insert(fk.col, a);
            }
            self.actions.insert(t.id, map);
        }
        Ok(self.actions[&t.id]
            .get(col)
            .cloned()
            .unwrap_or(Action::Remove))
    }

    /// Whether the row `uuid` of table `target` has a tombstone here.
    pub(super) fn tombstoned(&mut self, target: &str, uuid: &Value) -> Result<bool> {
        if let Some(m) = self.tombs.get(target) {
            return Ok(m.contains(uuid));
        }
        let Some(tt) = self.tables.get(target) else {
            return Ok(false);
        };
        self.clock.cache.with(
            "SELECT 1 FROM lsync_clock WHERE tbl = ?1 AND uuid = ?2",
            &[tt.id.into(), uuid.clone()],
            |s| s.step(),
        )
    }

    /// Before row `rid` of `t` is deleted: its dependants get their FK's
    /// action.
    pub(super) fn target_deleted(&mut self, t: &Table, rid: i64) -> Result<()> {
        for r in self.referrers(t)?.iter() {
            if r.action != Action::Remove {
                self.clock.cache.run(&r.sql, &[rid.into()])?;
                self.touched.insert(r.table.name.clone());
                continue;
            }
            let rows = self.clock.cache.with(&r.sql, &[rid.into()], |st| {
                let mut out = Vec::new();
                while st.step()? {
                    out.push((st.i64(0), st.value(1)));
                }
                Ok(out)
            })?;
            for (dependant, uuid) in rows {
                if ids::is_id(&uuid) {
                    self.kill(&r.table, dependant, &uuid, None)?;
                }
            }
        }
        Ok(())
    }

    /// The FK columns that point at `t`, with their actions and the
    /// statement each takes for a deleted row (`?1`, its rowid): worked
    /// out once per table per changeset, not per deleted row.
    fn referrers(&mut self, t: &Table) -> Result<Rc<Vec<Referrer>>> {
        if let Some(r) = self.referrers.get(&t.id) {
            return Ok(r.clone());
        }
        let cols: Vec<(Table, String)> = self
            .tables
            .values()
            .flat_map(|s| {
                s.fks
                    .iter()
                    .filter(|(_, target)| ***target == *t.name)
                    .map(move |(col, _)| (s.clone(), col.clone()))
            })
            .collect();
        let mut out = Vec::with_capacity(cols.len());
        for (table, col) in cols {
            let action = self.action(&table, &col)?;
            let (st, c) = (qm(&table.name), q(&col));
            let sql = match &action {
                Action::Remove => {
                    format!(
                        "SELECT rowid, {} FROM {st} WHERE {c} = ?1",
                        q(&table.uuid_col)
                    )
                }
                Action::SetNull => format!("UPDATE {st} SET {c} = NULL WHERE {c} = ?1"),
                Action::SetDefault(e) => format!("UPDATE {st} SET {c} = ({e}) WHERE {c} = ?1"),
            };
            out.push(Referrer { table, action, sql });
        }
        let out = Rc::new(out);
        self.referrers.insert(t.id, out.clone());
        Ok(out)
    }

    /// Removes dependant row `rid` of `t`, leaving a tombstone: a
    /// device-owned row's at `at` (default: the row's clock), a shared
    /// row's just after its creation. A row removed already is left alone
    /// (FK cycles).
    pub(super) fn kill(&mut self, t: &Table, rid: i64, key: &Value, at: Option<Clk>) -> Result<()> {
        if !self.removing.insert((t.id, rid)) {
            return Ok(());
        }
        self.end_run()?;
        let base = self.row_clock(t.id, rid)?;
        let (hlc, origin) = match (t.mode, &at) {
            (Mode::DeviceOwned, Some((hlc, o))) => (*hlc, self.idx(o)?),
            (Mode::DeviceOwned, None) => base,
            // Any origin beats the creation with this HLC; this device's,
            // so that the row's creator, which a peer never sends its own
            // changes, gets the tombstone too.
            (Mode::Shared, _) => (base.0 + 1, self.clock.self_idx),
        };
        self.remove(t, rid, key)?;
        self.bury(t, key, hlc, origin)?;
        self.report.cascaded += 1;
        Ok(())
    }

    /// Records the tombstone of row `key` at (`hlc`, `origin`), in place
    /// of any older one.
    fn bury(&mut self, t: &Table, key: &Value, hlc: i64, origin: i64) -> Result<()> {
        let clk = self.clk((hlc, origin))?;
        self.clock.drop_tombstone(t.id, key)?;
        self.clock.tombstone(t.id, key.clone(), hlc, origin)?;
        self.tombs
            .entry(t.name.clone())
            .or_default()
            .insert(key, clk);
        Ok(())
    }

    /// A change whose FK links name deleted rows: SET NULL and SET DEFAULT
    /// links are set here, in `vals`; returns the columns whose action
    /// removes the row.
    pub(super) fn dead_links(
        &mut self,
        t: &Table,
        c: &Change,
        vals: &mut LocalValues,
        deferred: &mut Vec<Link>,
    ) -> Result<Vec<Arc<str>>> {
        let mut dead = Vec::new();
        let mut kept = Vec::new();
        for (col, target, uuid) in std::mem::take(deferred) {
            // A row that links to itself brings itself back with this change.
            let itself = *target == *t.name && uuid == c.pk;
            if itself || !self.tombstoned(&target, &uuid)? {
                kept.push((col, target, uuid));
                continue;
            }
            match self.action(t, &col)? {
                Action::Remove => {
                    dead.push(col.clone());
                    kept.push((col, target, uuid));
                }
                Action::SetNull => {}
                Action::SetDefault(e) => {
                    let v = self
                        .db
                        .query_value(&format!("SELECT ({e})"), &[])?
                        .unwrap_or(Value::Null);
                    if let Some(slot) = vals.iter_mut().find(|(c, _)| **c == col) {
                        slot.1 = std::borrow::Cow::Owned(v);
                    }
                }
            }
        }
        *deferred = kept;
        Ok(dead)
    }

    /// After the changes: deferred links whose target has a tombstone
    /// (it was deleted before it ever arrived here, or its delete came
    /// while the link waited) get their FK's action; they never wait.
    pub(super) fn sweep_dead_links(&mut self) -> Result<()> {
        let mut s = self.db.prepare(
            "SELECT d.tbl, d.rid, d.col, d.uuid FROM lsync_deferred d
             JOIN lsync_tables tt ON tt.name = d.target
             WHERE EXISTS (SELECT 1 FROM lsync_clock c WHERE c.tbl = tt.id AND c.uuid = d.target_uuid)",
        )?;
        let mut dead = Vec::new();
        while s.step()? {
            dead.push((
                s.i64(0),
                s.i64(1),
                s.text(2).unwrap_or_default(),
                s.value(3),
            ));
        }
        drop(s);
        for (tbl, rid, col, uuid) in dead {
            let Some(t) = self.tables.values().find(|t| t.id == tbl).cloned() else {
                continue;
            };
            match self.action(&t, &col)? {
                Action::Remove => self.kill(&t, rid, &uuid, None)?,
                Action::SetNull => fk::forget(&self.clock.cache, tbl, rid, Some(&col))?,
                Action::SetDefault(e) => {
                    self.db.run(
                        &format!(
                            "UPDATE {} SET {} = ({e}) WHERE rowid = ?1",
                            qm(&t.name),
                            q(&col)
                        ),
                        &[rid.into()],
                    )?;
                    fk::forget(&self.clock.cache, tbl, rid, Some(&col))?;
                }
            }
        }
        Ok(())
    }

    /// A change with links whose action removes the row (`dead`): applies
    /// it as the row's removal when it wins, and returns true when it has
    /// been dealt with. When it loses those columns, they are left out of
    /// `vals` and `deferred` and it applies as usual (false).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dead_change(
        &mut self,
        t: &Table,
        c: &Change,
        existing: Option<i64>,
        origin: i64,
        dead: &[Arc<str>],
        vals: &mut LocalValues,
        deferred: &mut Vec<Link>,
    ) -> Result<bool> {
        let theirs: Clk = (c.hlc, c.origin.clone());
        let tomb = self.tombs.get(&t.name).and_then(|m| m.get(&c.pk)).cloned();
        match (t.mode, existing) {
            (Mode::DeviceOwned, Some(rid)) => {
                let base = self.row_clock(t.id, rid)?;
                if !super::owned::is_owner(base, origin) {
                    self.report.refused += 1;
                } else if c.hlc <= base.0 {
                    self.report.stale += 1;
                } else {
                    self.kill(t, rid, &c.pk, Some(theirs))?;
                    self.report.applied += 1;
                }
            }
            (Mode::DeviceOwned, None) => {
                if tomb.as_ref().is_some_and(|tc| theirs.0 <= tc.0) {
                    self.report.stale += 1;
                } else {
                    self.bury(t, &c.pk, c.hlc, origin)?;
                    self.report.applied += 1;
                }
            }
            (Mode::Shared, Some(rid)) => {
                let base = self.row_clock(t.id, rid)?;
                let clocks = self.column_clocks(t, rid, base)?;
                let wins = |col: &Arc<str>| clocks.get(col).is_none_or(|mine| theirs > *mine);
                if !dead.iter().any(wins) {
                    vals.retain(|(col, _)| !dead.contains(col));
                    deferred.retain(|(col, _, _)| !dead.contains(col));
                    return Ok(false);
                }
                self.kill(t, rid, &c.pk, None)?;
                self.report.applied += 1;
            }
            // An edit of a row not here waits for the row, as any other.
            (Mode::Shared, None) if c.op != Op::Insert => return Ok(false),
            (Mode::Shared, None) => {
                if tomb.is_some_and(|tc| theirs <= tc) {
                    self.report.stale += 1;
                } else {
                    let me = self.clock.self_idx;
                    self.bury(t, &c.pk, c.hlc + 1, me)?;
                    self.report.applied += 1;
                }
            }
        }
        Ok(true)
    }
}
