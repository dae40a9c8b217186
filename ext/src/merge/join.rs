//! Joining rows merged on a UNIQUE clash (`unite`): each column takes the
//! newest value of the rows, by its own clock, and the rows that pointed at
//! a row merged away point at the one that stays.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use super::{Applier, Clk};
use crate::catalog::{Mode, Table};
use crate::error::{Error, Result};
use crate::fk;
use crate::ident::{q, qm};
use crate::sql::Value;

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

impl Applier {
    /// Row `gone` is merged into row `keep`: the rows that point at it
    /// point at `keep`, its columns newer than `keep`'s replace them, with
    /// their clocks and links, and it goes, leaving no tombstone.
    pub(super) fn absorb(
        &mut self,
        t: &Table,
        keep: i64,
        gone: i64,
        gone_id: &Value,
    ) -> Result<()> {
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
        self.links_may_exist |= !links.is_empty();
        self.repoint(t, gone, keep)?;
        self.drop_row(t, gone, gone_id)?;
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
            t.src()
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
                &format!("SELECT gid FROM {} WHERE rid = ?1", t.gids()),
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
            let (tn, c, src, at) = (qm(&rt.name), q(&col), rt.src(), rt.rid_is("?1"));
            // Each pass repoints or merges away at least one row.
            loop {
                let rows = self.clock.cache.with(
                    &format!("SELECT rowid FROM {src} WHERE {c} = ?1"),
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
                        &format!("UPDATE OR FAIL {tn} SET {c} = ?2 WHERE {at}"),
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
        self.links_may_exist = true;
        self.db.run(
            &format!(
                "UPDATE {} SET {} = NULL WHERE {}",
                qm(&rt.name),
                q(col),
                rt.rid_is("?1")
            ),
            &[j.into()],
        )?;
        fk::defer(self.db, rt, j, &id, col, &target_name, &target_id)
    }
}
