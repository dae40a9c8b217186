//! Parking: an edit of a shared row that arrives before the row itself
//! (out-of-order delivery) waits in `lsync_parked`, and goes on top of the
//! row when it comes.

use std::sync::Arc;

use lsync_wire::changeset::{Change, Op};
use rustc_hash::FxHashMap as HashMap;

use super::{Applier, Clk};
use crate::catalog::Table;
use crate::error::Result;
use crate::sql::Value;

impl Applier {
    /// Keeps the edits of a shared row that has not arrived yet; the newest
    /// value per column wins, as it would on the row.
    pub(super) fn park(&mut self, t: &Table, c: &Change) -> Result<()> {
        let clk: Clk = (c.hlc, c.origin.clone());
        for (col, v) in &c.data {
            self.park_value(t, &c.pk, col, v, &clk)?;
        }
        self.parked.insert(t.id);
        self.report.parked += 1;
        Ok(())
    }

    /// Parks one column value of row `key` at clock `clk`, unless a newer
    /// one is parked.
    pub(super) fn park_value(
        &mut self,
        t: &Table,
        key: &Value,
        col: &str,
        v: &Value,
        clk: &Clk,
    ) -> Result<()> {
        self.clock.cache.run(
            "INSERT INTO lsync_parked(tbl, uuid, col, value, hlc, origin)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(tbl, uuid, col) DO UPDATE SET value = excluded.value,
               hlc = excluded.hlc, origin = excluded.origin
             WHERE excluded.hlc > hlc OR (excluded.hlc = hlc AND excluded.origin > origin)
                OR (excluded.hlc = hlc AND excluded.origin = origin AND excluded.value > value)",
            &[
                t.id.into(),
                key.clone(),
                col.into(),
                v.clone(),
                clk.0.into(),
                (*clk.1).into(),
            ],
        )
    }

    /// Applies the parked edits of a row that has just arrived.
    pub(super) fn unpark(&mut self, t: &Table, pk: &Value) -> Result<()> {
        let rows = self.clock.cache.with(
            "DELETE FROM lsync_parked WHERE tbl = ?1 AND uuid = ?2 RETURNING col, value, hlc, origin",
            &[t.id.into(), pk.clone()],
            |s| {
                let mut out = Vec::new();
                while s.step()? {
                    out.push((s.text(0).unwrap_or_default(), s.value(1), s.i64(2), s.text(3).unwrap_or_default()));
                }
                Ok(out)
            },
        )?;
        let edits: Vec<Change> = rows
            .into_iter()
            .map(|(col, value, hlc, origin)| Change {
                seq: 0,
                hlc,
                origin: Arc::from(origin),
                tbl: t.name.clone(),
                pk: pk.clone(),
                op: Op::Update,
                data: vec![(Arc::from(col), value)],
            })
            .collect();
        // Their FK targets may be rows this changeset does not name (a
        // receiver's own rows never come back to it): look them up, as
        // for the changeset's own changes.
        let list: Vec<&Change> = edits.iter().collect();
        self.find_targets(t, &list, &HashMap::default())?;
        for edit in &edits {
            self.upsert(t, edit)?;
        }
        Ok(())
    }

    /// A delete of a row that is not here takes its parked edits with it.
    pub(super) fn drop_parked(&mut self, t: &Table, pk: &Value) -> Result<()> {
        if !self.parked.contains(&t.id) {
            return Ok(());
        }
        self.clock.cache.run(
            "DELETE FROM lsync_parked WHERE tbl = ?1 AND uuid = ?2",
            &[t.id.into(), pk.clone()],
        )
    }
}
