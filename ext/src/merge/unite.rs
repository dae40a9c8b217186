//! UNIQUE keys of shared tables (docs/conflicts.md): rows that clash on one
//! become one row. Of the rows merged together, the one with the lowest
//! global id is the root; the others are its aliases (`lsync_alias`), and a
//! change addressed to an alias applies to the root.
//!
//! A merge is a fact that travels (op 3 in the clock, `Op::Merge` on the
//! wire), and merging is a join: each column takes the newest value of all
//! the rows merged, by its own clock, and a delete of any of them deletes the
//! merged row. A join does not depend on the order it is taken in, so every
//! replica ends the same whatever order rows, edits, deletes and merges
//! arrive in, including replicas where the rows never met.

use std::cmp::Ordering;
use std::rc::Rc;
use std::sync::Arc;

use lsync_wire::changeset::{Change, Op};

use super::{Applier, Clk};
use crate::catalog::{Mode, Table};
use crate::clock::OP_MERGE;
use crate::error::Result;
use crate::ids::IdMap;
use crate::sql::Value;

/// Two rows of a shared table found clashing: they are to be one.
#[derive(Debug, Clone)]
pub(super) struct Fact {
    pub tbl: Arc<str>,
    pub a: Value,
    pub b: Value,
    /// The change being merged when the clash was found: a merge that a
    /// constraint refuses is that change's refusal.
    pub at: Option<usize>,
}

impl Fact {
    pub(super) fn same(&self, o: &Fact) -> bool {
        self.tbl == o.tbl && self.a == o.a && self.b == o.b
    }
}

/// The aliases of one table: alias -> root, and each root's aliases.
#[derive(Default)]
pub(super) struct Aliases {
    root: IdMap<Value>,
    roots: IdMap<Vec<Value>>,
}

impl Aliases {
    /// Row `gone`, and its aliases, become aliases of `root`.
    fn add(&mut self, gone: &Value, root: &Value) {
        let mut moved = self.roots.remove(gone).unwrap_or_default();
        moved.push(gone.clone());
        for m in &moved {
            self.root.insert(m, root.clone());
        }
        match self.roots.get_mut(root) {
            Some(list) => list.extend(moved),
            None => self.roots.insert(root, moved),
        }
    }

    pub(super) fn root_of<'v>(&'v self, id: &'v Value) -> &'v Value {
        self.root.get(id).unwrap_or(id)
    }

    /// Whether row `id` was merged with another row.
    pub(super) fn merged(&self, id: &Value) -> bool {
        self.root.contains(id) || self.roots.contains(id)
    }
}

/// A class's members (the root first), and the rows of them that are here.
type Class = (Vec<Value>, Vec<(Value, i64)>);

/// The order of global ids that picks a class's root: the lowest id.
fn id_order(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        (Value::Text(_), _) => Ordering::Less,
        (_, Value::Text(_)) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

impl Applier {
    /// The aliases of `t`, read once per pass (none read while the library
    /// has none at all).
    pub(super) fn aliases(&mut self, t: &Table) -> Result<Rc<Aliases>> {
        if let Some(a) = self.aliases.get(&t.id) {
            return Ok(a.clone());
        }
        let mut a = Aliases::default();
        if self.any_alias {
            let rows = self.clock.cache.with(
                "SELECT uuid, root FROM lsync_alias WHERE tbl = ?1",
                &[t.id.into()],
                |s| {
                    let mut out = Vec::new();
                    while s.step()? {
                        out.push((s.value(0), s.value(1)));
                    }
                    Ok(out)
                },
            )?;
            for (alias, root) in rows {
                match a.roots.get_mut(&root) {
                    Some(list) => list.push(alias.clone()),
                    None => a.roots.insert(&root, vec![alias.clone()]),
                }
                a.root.insert(&alias, root);
            }
        }
        let a = Rc::new(a);
        self.aliases.insert(t.id, a.clone());
        Ok(a)
    }

    /// The row a change addressed to `id` applies to, when `id` is an alias.
    pub(super) fn redirect(&mut self, t: &Table, id: &Value) -> Result<Option<Value>> {
        if !self.any_alias || t.mode != Mode::Shared {
            return Ok(None);
        }
        let a = self.aliases(t)?;
        let root = a.root_of(id);
        Ok((root != id).then(|| root.clone()))
    }

    /// A change addressed to an alias, made a change of its root: an insert
    /// becomes an edit of all its columns (a merged row never comes back
    /// by an insert).
    pub(super) fn redirected(&mut self, t: &Table, c: &Change, root: Value) -> Result<Change> {
        if let Some(rid) = self.rid_of(t, &root)? {
            self.rids
                .entry(t.name.clone())
                .or_default()
                .insert(&root, rid);
        }
        let mut c = c.clone();
        c.pk = root;
        if c.op == Op::Insert {
            c.op = Op::Update;
        }
        Ok(c)
    }

    /// Applies a merge from a peer.
    pub(super) fn merge_change(&mut self, t: &Table, c: &Change) -> Result<()> {
        self.check(t, c)?;
        let Some(into) = c
            .merged_into()
            .filter(|v| crate::ids::id_problem(v).is_none())
        else {
            crate::bail!(
                "lsync_apply: a merge of a row of '{}' names no row to merge into; nothing was applied",
                t.name
            );
        };
        if t.mode != Mode::Shared {
            self.report.refused += 1;
            return Ok(());
        }
        let origin = self.idx(&c.origin)?;
        if self.unite(t, &c.pk, into, c.hlc, origin)? {
            self.report.applied += 1;
        } else {
            self.report.stale += 1;
        }
        Ok(())
    }

    /// Records that rows `a` and `b` of `t` are one (a merge at clock
    /// `hlc`, `origin`), and merges what is here of them. False when they
    /// were one already.
    pub(super) fn unite(
        &mut self,
        t: &Table,
        a: &Value,
        b: &Value,
        hlc: i64,
        origin: i64,
    ) -> Result<bool> {
        let aliases = self.aliases(t)?;
        let (ra, rb) = (aliases.root_of(a).clone(), aliases.root_of(b).clone());
        if ra == rb {
            return Ok(false);
        }
        let (root, gone) = match id_order(&ra, &rb) {
            Ordering::Greater => (rb, ra),
            _ => (ra, rb),
        };
        // A peer's merge of row `a` is kept under the peer's clock when it
        // is `a` that goes here too. Otherwise this replica merges other
        // rows than the peer named (their groups here differ): that finding
        // is this replica's, and travels under its own clock. Under the
        // peer's, it could never reach that peer, which is neither sent nor
        // takes a change of its own origin (found by `make soak`:
        // `regression_a_label_renamed_onto_a_merged_name_converges`).
        let (hlc, origin) = if origin != self.clock.self_idx && gone != *a {
            (self.clock.hlc()?, self.clock.self_idx)
        } else {
            (hlc, origin)
        };
        self.db.run(
            "INSERT OR REPLACE INTO lsync_alias(tbl, uuid, root) VALUES (?1, ?2, ?3)",
            &[t.id.into(), gone.clone(), root.clone()],
        )?;
        self.db.run(
            "UPDATE lsync_alias SET root = ?3 WHERE tbl = ?1 AND root = ?2",
            &[t.id.into(), gone.clone(), root.clone()],
        )?;
        self.clock
            .add(t.id, None, None, OP_MERGE, hlc, origin, gone.clone())?;
        self.any_alias = true;
        drop(aliases);
        // Kept up to date rather than read again: merges come in bulk.
        match self.aliases.get_mut(&t.id).and_then(Rc::get_mut) {
            Some(a) => a.add(&gone, &root),
            None => {
                self.aliases.remove(&t.id);
            }
        }
        self.report.merged += 1;
        self.touched.insert(t.name.clone());
        self.settle_class(t, &root)?;
        Ok(true)
    }

    /// Whether row `id` of `t` was merged with others.
    pub(super) fn merged(&mut self, t: &Table, id: &Value) -> Result<bool> {
        if !self.any_alias || t.mode != Mode::Shared {
            return Ok(false);
        }
        Ok(self.aliases(t)?.merged(id))
    }

    /// A delete of a row merged with others deletes the merged row,
    /// whatever the clocks of its rows.
    pub(super) fn delete_merged(&mut self, t: &Table, id: &Value, clk: Clk) -> Result<()> {
        let root = self.aliases(t)?.root_of(id).clone();
        let (members, rows) = self.class(t, &root)?;
        let buried = self.class_tomb(t, &members)?;
        if rows.is_empty() && buried.is_some_and(|b| b >= clk) {
            self.report.stale += 1;
            return Ok(());
        }
        self.bury_class(t, &members, &rows, clk)?;
        self.report.applied += 1;
        Ok(())
    }

    /// The members of the class of `root` (the root first), and the rows
    /// of them that are here.
    fn class(&mut self, t: &Table, root: &Value) -> Result<Class> {
        let mut members = vec![root.clone()];
        members.extend(self.clock.cache.with(
            "SELECT uuid FROM lsync_alias WHERE tbl = ?1 AND root = ?2",
            &[t.id.into(), root.clone()],
            |s| {
                let mut out = Vec::new();
                while s.step()? {
                    out.push(s.value(0));
                }
                Ok(out)
            },
        )?);
        let mut rows = Vec::new();
        for m in &members {
            if let Some(rid) = self.rid_of(t, m)? {
                rows.push((m.clone(), rid));
            }
        }
        Ok((members, rows))
    }

    /// Merges the rows here of the class of `root` into one, the root's.
    fn settle_class(&mut self, t: &Table, root: &Value) -> Result<()> {
        let (members, rows) = self.class(t, root)?;
        for m in &members[1..] {
            self.readdress(t, m, root)?;
        }
        if let Some(clk) = self.class_tomb(t, &members)? {
            return self.bury_class(t, &members, &rows, clk);
        }
        let Some(keep) = rows
            .iter()
            .find(|(m, _)| m == root)
            .or_else(|| rows.first())
            .cloned()
        else {
            return Ok(());
        };
        if keep.0 != *root {
            self.rename_row(t, keep.1, &keep.0, root)?;
        }
        for (m, rid) in rows.iter().filter(|(_, rid)| *rid != keep.1) {
            self.absorb(t, keep.1, *rid, m)?;
        }
        if self.parked.contains(&t.id) {
            self.unpark(t, root)?;
        }
        Ok(())
    }

    /// The newest tombstone of a member of a class: a delete of any row
    /// merged deletes the merged row.
    fn class_tomb(&mut self, t: &Table, members: &[Value]) -> Result<Option<Clk>> {
        let mut newest: Option<Clk> = None;
        for m in members {
            let clk = match self.tombs.get(&t.name) {
                Some(map) => map.get(m).cloned(),
                None => {
                    let found = self.clock.cache.with(
                        "SELECT hlc, origin FROM lsync_clock WHERE tbl = ?1 AND uuid = ?2 AND op = 2",
                        &[t.id.into(), m.clone()],
                        |s| Ok(if s.step()? { Some((s.i64(0), s.i64(1))) } else { None }),
                    )?;
                    found.map(|c| self.clk(c)).transpose()?
                }
            };
            if clk
                .as_ref()
                .is_some_and(|c| newest.as_ref().is_none_or(|n| c > n))
            {
                newest = clk;
            }
        }
        Ok(newest)
    }

    /// A class with a deleted member: its row goes (with its FK actions),
    /// and every member gets a tombstone, so none comes back by an insert.
    pub(super) fn bury_class(
        &mut self,
        t: &Table,
        members: &[Value],
        rows: &[(Value, i64)],
        clk: Clk,
    ) -> Result<()> {
        for (m, rid) in rows {
            self.end_run()?;
            self.remove(t, *rid, m)?;
        }
        let origin = self.idx(&clk.1)?;
        for m in members {
            let newer = match self.tombs.get(&t.name) {
                Some(map) => map.get(m).is_none_or(|c| clk > *c),
                None => !self.tombstoned(&t.name, m)?,
            };
            if newer {
                self.clock.tombstone(t.id, m.clone(), clk.0, origin)?;
                if let Some(map) = self.tombs.get_mut(&t.name) {
                    map.insert(m, clk.clone());
                }
            }
            self.drop_parked(t, m)?;
        }
        Ok(())
    }

    /// The local rowid of row `id` of `t`, if it is here.
    pub(super) fn rid_of(&mut self, t: &Table, id: &Value) -> Result<Option<i64>> {
        if let Some(rid) = self.rids.get(&t.name).and_then(|m| m.get(id)) {
            return Ok(Some(*rid));
        }
        self.clock.cache.with(
            &format!("SELECT rid FROM {} WHERE gid = ?1", t.gids()),
            std::slice::from_ref(id),
            |s| Ok(if s.step()? { Some(s.i64(0)) } else { None }),
        )
    }

    /// What was waiting for alias `from` waits for `to`: parked edits
    /// (newest per column) and FK links.
    fn readdress(&mut self, t: &Table, from: &Value, to: &Value) -> Result<()> {
        let params = [t.id.into(), from.clone(), to.clone()];
        self.clock.cache.run(
            "INSERT INTO lsync_parked(tbl, uuid, col, value, hlc, origin)
             SELECT tbl, ?3, col, value, hlc, origin FROM lsync_parked
             WHERE tbl = ?1 AND uuid = ?2
             ON CONFLICT(tbl, uuid, col) DO UPDATE SET value = excluded.value,
               hlc = excluded.hlc, origin = excluded.origin
             WHERE excluded.hlc > hlc OR (excluded.hlc = hlc AND excluded.origin > origin)
                OR (excluded.hlc = hlc AND excluded.origin = origin AND excluded.value > value)",
            &params,
        )?;
        if self.db.changes() > 0 {
            self.parked.insert(t.id);
        }
        self.clock.cache.run(
            "DELETE FROM lsync_parked WHERE tbl = ?1 AND uuid = ?2",
            &params[..2],
        )?;
        self.clock.cache.run(
            "UPDATE lsync_deferred SET target_uuid = ?3
             WHERE target = (SELECT name FROM lsync_tables WHERE id = ?1) AND target_uuid = ?2",
            &params,
        )
    }

    /// Row `rid` (`from`) becomes the root's row: it takes the root's id.
    /// Its row entry moves after the merge in the clock, so that no replica
    /// meets the row under its new id, with the creation clock of `from`,
    /// before it knows of the merge: that insert could bring back a root
    /// deleted there.
    fn rename_row(&mut self, t: &Table, rid: i64, from: &Value, to: &Value) -> Result<()> {
        self.end_run()?;
        crate::triggers::update_id_trigger(self.db, t)?;
        if let Some((hlc, origin)) = self.clock.row_clock(t.id, rid)? {
            self.clock.renew_row(t.id, rid, hlc, origin)?;
        }
        t.set_gid(self.db, rid, to)?;
        self.fresh.forget(t.id);
        self.db.run(
            "UPDATE lsync_deferred SET uuid = ?3 WHERE tbl = ?1 AND rid = ?2",
            &[t.id.into(), rid.into(), to.clone()],
        )?;
        let rids = self.rids.entry(t.name.clone()).or_default();
        rids.remove(from);
        rids.insert(to, rid);
        Ok(())
    }
}
