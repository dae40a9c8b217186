//! Writing a merge of rows that collided in a UNIQUE key (`unique`): the
//! losers' rows go, their referrers moved to the kept row (a join pair that
//! then meets its twin merges in turn), the kept row takes the merged
//! identity, values and clocks, and the losers' ids become aliases.

use std::sync::Arc;

use super::unique::{join, Side};
use super::Applier;
use crate::catalog::{Mode, Table};
use crate::clock::OP_INSERT;
use crate::error::Result;
use crate::fk;
use crate::ident::{q, qm};
use crate::sql::Value;

impl Applier {
    /// Merges every row that collides with `side`, then writes the result.
    pub(super) fn fold(&mut self, t: &Table, mut side: Side) -> Result<()> {
        while let Some(other) = self.collider(t, &side)? {
            let other = self.read_side(t, other)?;
            side = join(side, other);
        }
        self.settle(t, side)
    }

    /// Writes a merged row: the losers' rows go (their referrers moved to
    /// the kept row), the kept row takes the merged identity, values and
    /// clocks, and the losers' ids become aliases.
    fn settle(&mut self, t: &Table, m: Side) -> Result<()> {
        self.end_run()?;
        let Some((&keep, gone)) = m.rids.split_first() else {
            return Ok(());
        };
        for &g in gone {
            self.repoint(t, g, keep)?;
            self.db.run(
                &format!("DELETE FROM {} WHERE rowid = ?1", qm(&t.name)),
                &[g.into()],
            )?;
            self.clock.uncover(t.id, g)?;
            self.clock.drop_columns(t.id, g)?;
        }
        let cols: Vec<&Arc<str>> = t
            .columns
            .iter()
            .filter(|c| m.cols.contains_key(*c))
            .collect();
        let sets: Vec<String> = std::iter::once(q(&t.uuid_col))
            .chain(cols.iter().map(|c| q(c)))
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 2))
            .collect();
        let params: Vec<Value> = [Value::Integer(keep), m.uuid.clone()]
            .into_iter()
            .chain(cols.iter().map(|c| m.cols[*c].0.clone()))
            .collect();
        self.db
            .run(
                &format!(
                    "UPDATE OR FAIL {} SET {} WHERE rowid = ?1",
                    qm(&t.name),
                    sets.join(", ")
                ),
                &params,
            )
            .map_err(|e| e.in_apply(&format!("merging rows of '{}'", t.name)))?;
        self.touched.insert(t.name.clone());
        if m.losers.is_empty() {
            // A referrer moved to a merged row, colliding with nothing.
            return Ok(());
        }
        self.settle_clocks(t, keep, &m)?;
        self.settle_merged_links(t, keep, gone, &m)?;
        self.record_aliases(t, keep, &m)
    }

    /// The kept row's clock: the winner's creation as its row entry, and an
    /// entry for each column whose value is newer than that.
    fn settle_clocks(&mut self, t: &Table, keep: i64, m: &Side) -> Result<()> {
        let origin = self.idx(&m.created.1)?;
        let hlc = m.created.0;
        if self.row_clock(t.id, keep)? != (hlc, origin) {
            self.clock.uncover(t.id, keep)?;
            self.clock.add(
                t.id,
                Some((keep, keep)),
                None,
                OP_INSERT,
                hlc,
                origin,
                Value::Null,
            )?;
        }
        self.clock.drop_columns(t.id, keep)?;
        for col in &t.columns {
            let Some((_, clk, _)) = m.cols.get(col) else {
                continue;
            };
            if *clk != m.created {
                let o = self.idx(&clk.1)?;
                self.clock.cover_column(t.id, keep, col, clk.0, o)?;
            }
        }
        Ok(())
    }

    /// Each FK column keeps the link of the row its value came from.
    fn settle_merged_links(&mut self, t: &Table, keep: i64, gone: &[i64], m: &Side) -> Result<()> {
        let cache = &self.clock.cache;
        for col in t.fks.keys() {
            match m.cols.get(col.as_str()).map(|(_, _, src)| *src) {
                None => {}
                Some(Some(r)) if r == keep => {}
                Some(Some(r)) => {
                    fk::forget(cache, t.id, keep, Some(col))?;
                    cache.run(
                        "UPDATE lsync_deferred SET rid = ?2 WHERE tbl = ?1 AND rid = ?3 AND col = ?4",
                        &[t.id.into(), keep.into(), r.into(), col.as_str().into()],
                    )?;
                }
                Some(None) => {
                    fk::forget(cache, t.id, keep, Some(col))?;
                    if let Some((target, id)) = m.links.get(col.as_str()) {
                        fk::defer(self.db, t, keep, &m.uuid, col, target, id)?;
                        self.report.deferred += 1;
                    }
                }
            }
        }
        for &g in gone {
            fk::forget(cache, t.id, g, None)?;
        }
        cache.run(
            "UPDATE lsync_deferred SET uuid = ?3 WHERE tbl = ?1 AND rid = ?2",
            &[t.id.into(), keep.into(), m.uuid.clone()],
        )
    }

    /// The losers' ids become aliases of the winner's (chains flattened),
    /// and links and parked edits that name them go to the winner.
    fn record_aliases(&mut self, t: &Table, keep: i64, m: &Side) -> Result<()> {
        self.report.merged += m.losers.len() as i64;
        let rids = self.rids.entry(t.name.clone()).or_default();
        rids.insert(&m.uuid, keep);
        for l in &m.losers {
            rids.insert(l, keep);
        }
        let aliases = self.uniq.aliases.entry(t.id).or_default();
        for l in &m.losers {
            aliases.insert(l, m.uuid.clone());
            let p = [t.id.into(), l.clone(), m.uuid.clone()];
            let cache = &self.clock.cache;
            cache.run(
                "INSERT OR REPLACE INTO lsync_alias(tbl, uuid, winner) VALUES (?1, ?2, ?3)",
                &p,
            )?;
            cache.run(
                "UPDATE lsync_alias SET winner = ?3 WHERE tbl = ?1 AND winner = ?2",
                &p,
            )?;
            cache.run(
                "UPDATE lsync_deferred SET target_uuid = ?3 WHERE target = ?4 AND target_uuid = ?2",
                &[t.id.into(), l.clone(), m.uuid.clone(), (*t.name).into()],
            )?;
        }
        if self.parked.contains(&t.id) {
            for l in &m.losers {
                self.unpark(t, l)?;
            }
        }
        Ok(())
    }

    /// Moves the FK cells that point at row `gone` of `t` to row `keep`. A
    /// referrer whose UNIQUE key holds the FK (a join pair) may then meet
    /// its twin: the two merge, as any collision does.
    fn repoint(&mut self, t: &Table, gone: i64, keep: i64) -> Result<()> {
        let mut referrers: Vec<(Table, String)> = Vec::new();
        for s in self.tables.values() {
            for (col, target) in &s.fks {
                if **target == *t.name {
                    referrers.push((s.clone(), col.clone()));
                }
            }
        }
        referrers.sort_by_key(|(s, _)| s.id);
        for (s, col) in referrers {
            self.touched.insert(s.name.clone());
            let keyed = s.mode == Mode::Shared
                && self
                    .keys_of(&s)?
                    .iter()
                    .any(|k| k.cols.iter().any(|c| **c == *col));
            let (st, c) = (qm(&s.name), q(&col));
            if !keyed {
                self.db.run(
                    &format!("UPDATE {st} SET {c} = ?1 WHERE {c} = ?2"),
                    &[keep.into(), gone.into()],
                )?;
                continue;
            }
            let mut rows = Vec::new();
            self.clock.cache.with(
                &format!("SELECT rowid FROM {st} WHERE {c} = ?1 ORDER BY rowid"),
                &[gone.into()],
                |stmt| {
                    while stmt.step()? {
                        rows.push(stmt.i64(0));
                    }
                    Ok(())
                },
            )?;
            for r in rows {
                let mut side = self.read_side(&s, r)?;
                if let Some(cell) = side.cols.get_mut(col.as_str()) {
                    cell.0 = Value::Integer(keep);
                }
                self.fold(&s, side)?;
            }
        }
        Ok(())
    }
}
