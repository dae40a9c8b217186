//! FK `ON DELETE` actions, applied the same way on every replica
//! (docs/conflicts.md): when a row is deleted, or a row arrives that
//! links to a deleted row, the link's declared action decides.
//!
//! - `CASCADE`, and `NO ACTION` / `RESTRICT` (delete-wins: a delete that
//!   has happened on another device cannot be refused here): a shared
//!   dependant goes too. A device-owned one is detached (NULL, its link
//!   pending): only its owner changes it.
//! - `SET NULL` / `SET DEFAULT`: the column is set; the link is dropped.
//!
//! A removed shared dependant leaves a tombstone just after its creation,
//! which travels like any delete (a shared delete beats the row's
//! creation, whatever later edits), so every replica ends the same
//! whichever saw the link to the deleted row.

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
    plan: Plan,
}

/// What a deleted row does to the rows that point at it through one column,
/// as statements of its rowid (`?1`).
enum Plan {
    /// Shared dependants: select their rowids and uuids, to remove them.
    Remove(String),
    /// Set the column (SET NULL, SET DEFAULT).
    Set(String),
    /// Device-owned dependants: their owner decides, so they are detached
    /// (NULL, with a link to the deleted row's uuid, `?2`) as before issue
    /// 11: a device-owned row can come back by a newer state of its owner,
    /// and a removal could then not be undone where it was made.
    Detach { link: String, clear: String },
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
            "SELECT 1 FROM lsync_clock WHERE tbl = ?1 AND uuid = ?2 AND op = 2",
            &[tt.id.into(), uuid.clone()],
            |s| s.step(),
        )
    }

    /// Before row `rid` (`key`) of `t` is deleted: its dependants get their
    /// FK's action.
    pub(super) fn target_deleted(&mut self, t: &Table, rid: i64, key: &Value) -> Result<()> {
        for r in self.referrers(t)?.iter() {
            match &r.plan {
                Plan::Set(sql) => self.clock.cache.run(sql, &[rid.into()])?,
                Plan::Detach { link, clear } => {
                    self.links_may_exist = true;
                    self.clock.cache.run(link, &[rid.into(), key.clone()])?;
                    self.clock.cache.run(clear, &[rid.into()])?;
                }
                Plan::Remove(sql) => {
                    let rows = self.clock.cache.with(sql, &[rid.into()], |st| {
                        let mut out = Vec::new();
                        while st.step()? {
                            out.push((st.i64(0), st.value(1)));
                        }
                        Ok(out)
                    })?;
                    for (dependant, uuid) in rows {
                        if ids::is_id(&uuid) {
                            self.kill(&r.table, dependant, &uuid)?;
                        }
                    }
                }
            }
            self.touched.insert(r.table.name.clone());
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
            let (st, c, u) = (qm(&table.name), q(&col), table.gid_of("x"));
            let src = table.src();
            let plan = match (&action, table.mode) {
                (Action::Remove, Mode::Shared) => {
                    Plan::Remove(format!("SELECT rowid, {u} FROM {src} AS x WHERE {c} = ?1"))
                }
                (Action::Remove, Mode::DeviceOwned) => Plan::Detach {
                    link: format!(
                        "INSERT INTO lsync_deferred(tbl, rid, col, uuid, target, target_uuid)
                         SELECT {id}, rowid, {cl}, {u}, {tl}, ?2 FROM {src} AS x
                         WHERE {c} = ?1 AND {u} IS NOT NULL
                         ON CONFLICT(tbl, rid, col) DO UPDATE SET target = excluded.target,
                           target_uuid = excluded.target_uuid",
                        id = table.id,
                        cl = crate::ident::lit(&col),
                        tl = crate::ident::lit(&t.name),
                    ),
                    clear: format!("UPDATE {st} SET {c} = NULL WHERE {c} = ?1"),
                },
                (Action::SetNull, _) => {
                    Plan::Set(format!("UPDATE {st} SET {c} = NULL WHERE {c} = ?1"))
                }
                (Action::SetDefault(e), _) => {
                    Plan::Set(format!("UPDATE {st} SET {c} = ({e}) WHERE {c} = ?1"))
                }
            };
            out.push(Referrer { table, plan });
        }
        let out = Rc::new(out);
        self.referrers.insert(t.id, out.clone());
        Ok(out)
    }

    /// Removes shared dependant row `rid` of `t`, leaving a tombstone just
    /// after its creation, made by this device: any origin beats the
    /// creation with that HLC, and this device's reaches the row's creator
    /// too, which a peer never sends its own changes. A row removed already
    /// is left alone (FK cycles).
    pub(super) fn kill(&mut self, t: &Table, rid: i64, key: &Value) -> Result<()> {
        if !self.removing.insert((t.id, rid)) {
            return Ok(());
        }
        self.end_run()?;
        let (created, _) = self.row_clock(t.id, rid)?;
        self.remove(t, rid, key)?;
        let me = self.clock.self_idx;
        self.bury(t, key, created + 1, me)?;
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
                // A device-owned row's link waits (see `Plan::Detach`).
                Action::Remove if t.mode == Mode::DeviceOwned => kept.push((col, target, uuid)),
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
        if !self.links_may_exist {
            return Ok(());
        }
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
                Action::Remove if t.mode == Mode::DeviceOwned => {}
                Action::Remove => self.kill(&t, rid, &uuid)?,
                Action::SetNull => fk::forget(&self.clock.cache, tbl, rid, Some(&col))?,
                Action::SetDefault(e) => {
                    self.db.run(
                        &format!(
                            "UPDATE {} SET {} = ({e}) WHERE {}",
                            qm(&t.name),
                            q(&col),
                            t.rid_is("?1")
                        ),
                        &[rid.into()],
                    )?;
                    fk::forget(&self.clock.cache, tbl, rid, Some(&col))?;
                }
            }
        }
        Ok(())
    }

    /// A change to a shared row with links whose action removes the row
    /// (`dead`; device-owned rows never have any): applies it as the row's
    /// removal when it wins, and returns true when it has been dealt with.
    /// When it loses those columns, they are left out of `vals` and
    /// `deferred` and it applies as usual (false).
    pub(super) fn dead_change(
        &mut self,
        t: &Table,
        c: &Change,
        existing: Option<i64>,
        dead: &[Arc<str>],
        vals: &mut LocalValues,
        deferred: &mut Vec<Link>,
    ) -> Result<bool> {
        let theirs: Clk = (c.hlc, c.origin.clone());
        match existing {
            Some(rid) => {
                let base = self.row_clock(t.id, rid)?;
                let clocks = self.column_clocks(t, rid, base)?;
                let wins = |col: &Arc<str>| clocks.get(col).is_none_or(|mine| theirs > *mine);
                if !dead.iter().any(wins) {
                    vals.retain(|(col, _)| !dead.contains(col));
                    deferred.retain(|(col, _, _)| !dead.contains(col));
                    return Ok(false);
                }
                self.kill(t, rid, &c.pk)?;
                self.report.applied += 1;
            }
            // An edit of a row not here waits for the row, as any other.
            None if c.op != Op::Insert => return Ok(false),
            None => {
                let tomb = self.tombs.get(&t.name).and_then(|m| m.get(&c.pk));
                if tomb.is_some_and(|tc| theirs <= *tc) {
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
