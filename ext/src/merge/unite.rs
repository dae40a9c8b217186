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

use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;
use std::sync::Arc;

use lsync_wire::changeset::{Change, Op};

use super::{Applier, Clk};
use crate::catalog::{Mode, Table};
use crate::clock::{OP_INSERT, OP_MERGE};
use crate::error::{Error, Result};
use crate::fk;
use crate::ident::{q, qm};
use crate::ids::IdMap;
use crate::sql::Value;

/// Two rows of a shared table found clashing: they are to be one.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Fact {
    pub tbl: Arc<str>,
    pub a: Value,
    pub b: Value,
}

/// The aliases of one table: alias -> root, and the set of roots.
#[derive(Default)]
pub(super) struct Aliases {
    root: IdMap<Value>,
    roots: IdMap<()>,
}

impl Aliases {
    pub(super) fn root_of<'v>(&'v self, id: &'v Value) -> &'v Value {
        self.root.get(id).unwrap_or(id)
    }

    /// Whether row `id` was merged with another row.
    pub(super) fn merged(&self, id: &Value) -> bool {
        self.root.contains(id) || self.roots.contains(id)
    }
}

/// SQLite's order of values (NULL, numbers, text, blobs; text and blobs
/// by bytes). Rows merged together can hold different values under equal
/// clocks (one flush stamps all the rows it records with one HLC), and the
/// join then takes the greater value, so that it does not depend on which
/// row came first.
pub(super) fn value_order(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
        }
    }
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
        (Value::Integer(x), Value::Real(y)) => (*x as f64).total_cmp(y),
        (Value::Real(x), Value::Integer(y)) => x.total_cmp(&(*y as f64)),
        (Value::Real(x), Value::Real(y)) => x.total_cmp(y),
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Whether a column's (clock, value) beats another's: the newer clock, and
/// on equal clocks the greater value (`value_order`).
pub(super) fn beats(theirs: (&Clk, &Value), mine: (&Clk, &Value)) -> bool {
    match theirs.0.cmp(mine.0) {
        Ordering::Equal => value_order(theirs.1, mine.1) == Ordering::Greater,
        o => o == Ordering::Greater,
    }
}

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
                a.roots.insert(&root, ());
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
        let Some(into) = c.merged_into().filter(|v| crate::ids::is_id(v)) else {
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
        self.aliases.remove(&t.id);
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
    fn class(&mut self, t: &Table, root: &Value) -> Result<(Vec<Value>, Vec<(Value, i64)>)> {
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
            &format!(
                "SELECT rowid FROM {} WHERE {} = ?1",
                qm(&t.name),
                q(&t.uuid_col)
            ),
            &[id.clone()],
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
        if let Some((hlc, origin)) = self.clock.row_clock(t.id, rid)? {
            self.clock.uncover(t.id, rid)?;
            self.clock.add(
                t.id,
                Some((rid, rid)),
                None,
                OP_INSERT,
                hlc,
                origin,
                Value::Null,
            )?;
        }
        self.db.run(
            &format!(
                "UPDATE {} SET {} = ?2 WHERE rowid = ?1",
                qm(&t.name),
                q(&t.uuid_col)
            ),
            &[rid.into(), to.clone()],
        )?;
        self.db.run(
            "UPDATE lsync_deferred SET uuid = ?3 WHERE tbl = ?1 AND rid = ?2",
            &[t.id.into(), rid.into(), to.clone()],
        )?;
        let rids = self.rids.entry(t.name.clone()).or_default();
        rids.remove(from);
        rids.insert(to, rid);
        Ok(())
    }

    /// Row `gone` is merged into row `keep`: the rows that point at it
    /// point at `keep`, its columns newer than `keep`'s replace them, with
    /// their clocks and links, and it goes, leaving no tombstone.
    fn absorb(&mut self, t: &Table, keep: i64, gone: i64, gone_id: &Value) -> Result<()> {
        self.end_run()?;
        let base = self.row_clock(t.id, keep)?;
        let mine = self.column_clocks(t, keep, base)?;
        let base = self.row_clock(t.id, gone)?;
        let theirs = self.column_clocks(t, gone, base)?;
        let (my_values, their_values) = (self.row_values(t, keep)?, self.row_values(t, gone)?);
        let mut newer: Vec<(Arc<str>, Clk)> = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        for (i, c) in t.columns.iter().enumerate() {
            let (Some(clk), Some(v)) = (theirs.get(c), their_values.get(i)) else {
                continue;
            };
            let wins = match (mine.get(c), my_values.get(i)) {
                (Some(m), Some(mv)) => beats((clk, v), (m, mv)),
                _ => true,
            };
            if wins {
                newer.push((c.clone(), clk.clone()));
                values.push(v.clone());
            }
        }
        let links = fk::deferred_of(self.db, t.id, gone)?;
        self.repoint(t, gone, keep)?;
        self.db.run(
            &format!("DELETE FROM {} WHERE rowid = ?1", qm(&t.name)),
            &[gone.into()],
        )?;
        self.clock.uncover(t.id, gone)?;
        self.clock.drop_columns(t.id, gone)?;
        fk::forget(&self.clock.cache, t.id, gone, None)?;
        if let Some(m) = self.rids.get_mut(&t.name) {
            m.remove(gone_id);
        }
        let vals: Vec<(&Arc<str>, Cow<Value>)> = newer
            .iter()
            .zip(values)
            .map(|((c, _), v)| (c, Cow::Owned(v)))
            .collect();
        self.write(t, keep, &vals)?;
        let root = self.uuid_at(t, keep)?;
        for (col, clk) in &newer {
            let origin = self.idx(&clk.1)?;
            self.clock.cover_column(t.id, keep, col, clk.0, origin)?;
            if t.fks.contains_key(&**col) {
                fk::forget(&self.clock.cache, t.id, keep, Some(col))?;
                if let Some((_, target, target_uuid)) = links.iter().find(|(c, _, _)| c == &**col) {
                    fk::defer(self.db, t, keep, &root, col, target, target_uuid)?;
                }
            }
        }
        Ok(())
    }

    /// The tracked columns of row `rid` of `t`, in `t.columns` order.
    fn row_values(&self, t: &Table, rid: i64) -> Result<Vec<Value>> {
        if t.columns.is_empty() {
            return Ok(Vec::new());
        }
        let cols: Vec<String> = t.columns.iter().map(|c| q(c)).collect();
        let mut s = self.db.prepare(&format!(
            "SELECT {} FROM {} WHERE rowid = ?1",
            cols.join(", "),
            qm(&t.name)
        ))?;
        s.bind(1, &rid.into())?;
        Ok(if s.step()? {
            (0..cols.len()).map(|i| s.value(i)).collect()
        } else {
            Vec::new()
        })
    }

    /// The global id of row `rid` of `t`.
    pub(super) fn uuid_at(&self, t: &Table, rid: i64) -> Result<Value> {
        Ok(self
            .db
            .query_value(
                &format!(
                    "SELECT {} FROM {} WHERE rowid = ?1",
                    q(&t.uuid_col),
                    qm(&t.name)
                ),
                &[rid.into()],
            )?
            .unwrap_or(Value::Null))
    }

    /// The rows of tracked tables that point at row `from` of `t` point at
    /// `to`. A shared row that then clashes with another on a UNIQUE key
    /// (the same pair in a join table) is merged with it; a device-owned
    /// one is detached (NULL, its link pending), as only its owner changes
    /// it.
    fn repoint(&mut self, t: &Table, from: i64, to: i64) -> Result<()> {
        let referrers: Vec<(Table, Arc<str>)> = self
            .tables
            .values()
            .flat_map(|s| {
                s.fks
                    .iter()
                    .filter(|(_, target)| **target == *t.name)
                    .map(|(col, _)| (s.clone(), Arc::<str>::from(col.as_str())))
            })
            .collect();
        for (rt, col) in referrers {
            let (tn, c) = (qm(&rt.name), q(&col));
            // Each pass repoints or merges away at least one row.
            loop {
                let rows = self.clock.cache.with(
                    &format!("SELECT rowid FROM {tn} WHERE {c} = ?1"),
                    &[from.into()],
                    |s| {
                        let mut out = Vec::new();
                        while s.step()? {
                            out.push(s.i64(0));
                        }
                        Ok(out)
                    },
                )?;
                if rows.is_empty() {
                    break;
                }
                for j in rows {
                    let set = self.db.run(
                        &format!("UPDATE OR FAIL {tn} SET {c} = ?2 WHERE rowid = ?1"),
                        &[j.into(), to.into()],
                    );
                    match set {
                        Ok(()) => {}
                        Err(e) if e.is_constraint() => self.repoint_clash(&rt, &col, j, to, e)?,
                        Err(e) => return Err(e),
                    }
                }
            }
            self.touched.insert(rt.name.clone());
        }
        Ok(())
    }

    /// Row `j` of `rt` cannot point at `to` for a UNIQUE key.
    fn repoint_clash(
        &mut self,
        rt: &Table,
        col: &Arc<str>,
        j: i64,
        to: i64,
        e: Error,
    ) -> Result<()> {
        let vals = [(col, Cow::Owned(Value::Integer(to)))];
        let other = match rt.mode {
            Mode::Shared => self.clash(rt, Some(j), &vals)?,
            Mode::DeviceOwned => None,
        };
        if let Some((other, _)) = other {
            let (a, b) = (self.uuid_at(rt, j)?, self.uuid_at(rt, other)?);
            let hlc = self.clock.hlc()?;
            let me = self.clock.self_idx;
            self.unite(rt, &a, &b, hlc, me)?;
            return Ok(());
        }
        if rt.mode == Mode::Shared {
            return Err(e);
        }
        let Some(target_name) = rt.fks.get(&**col).cloned() else {
            return Err(e);
        };
        let Some(tt) = self.tables.get(target_name.as_str()).cloned() else {
            return Err(e);
        };
        let (id, target_id) = (self.uuid_at(rt, j)?, self.uuid_at(&tt, to)?);
        self.db.run(
            &format!(
                "UPDATE {} SET {} = NULL WHERE rowid = ?1",
                qm(&rt.name),
                q(col)
            ),
            &[j.into()],
        )?;
        fk::defer(self.db, rt, j, &id, col, &target_name, &target_id)
    }

    /// Links whose completion a constraint refused stay pending, unless
    /// the row would clash with another on a UNIQUE key: then the two are
    /// merged, as when the row arrives with its link.
    pub(super) fn links_refused(&mut self, refused: Vec<fk::Refused>) -> Result<()> {
        for (tbl, rid, col, trid, e) in refused {
            let Some(t) = self.tables.values().find(|t| t.id == tbl).cloned() else {
                continue;
            };
            let Some(col) = t.columns.iter().find(|c| ***c == *col).cloned() else {
                continue;
            };
            let vals = [(&col, Cow::Owned(Value::Integer(trid)))];
            let e = self.clash_or(&t, Some(rid), None, &vals, e);
            if matches!(e, Error::Clash { .. }) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Turns a refused write of row `rid` of `t` (None: a new row, `id`)
    /// into a clash with the row that holds the same UNIQUE key, if one
    /// does; otherwise the refusal stands.
    pub(super) fn clash_or(
        &mut self,
        t: &Table,
        rid: Option<i64>,
        id: Option<&Value>,
        vals: &[(&Arc<str>, Cow<Value>)],
        e: Error,
    ) -> Error {
        if !e.is_constraint() || t.mode != Mode::Shared {
            return e;
        }
        let found = (|| -> Result<Option<(Value, Value)>> {
            let Some((other, _)) = self.clash(t, rid, vals)? else {
                return Ok(None);
            };
            let a = match (id, rid) {
                (Some(id), _) => id.clone(),
                (None, Some(rid)) => self.uuid_at(t, rid)?,
                (None, None) => return Ok(None),
            };
            Ok(Some((a, self.uuid_at(t, other)?)))
        })();
        match found {
            Ok(Some((a, b))) => Error::Clash {
                full: format!("{e} (a UNIQUE clash: the rows are merged)"),
                tbl: t.name.clone(),
                a,
                b,
            },
            Ok(None) => e,
            Err(other) => other,
        }
    }
}
