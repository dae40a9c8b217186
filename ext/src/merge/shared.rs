//! Shared rows: any device may change them; each column takes the newest
//! value, ordered by (HLC, origin device UUID).

use std::borrow::Cow;
use std::sync::Arc;

use lsync_wire::changeset::{Change, Op};
use rustc_hash::FxHashMap as HashMap;

use super::join::beats;
use super::links::LocalValues;
use super::{Applier, Clk, Outcome};
use crate::catalog::Table;
use crate::error::Result;
use crate::ident::q;
use crate::sql::Value;

impl Applier {
    /// Writes the columns whose clock the change beats.
    pub(super) fn update_shared(
        &mut self,
        t: &Table,
        c: &Change,
        rid: i64,
        origin: i64,
        base: (i64, i64),
        vals: &LocalValues,
    ) -> Result<Outcome> {
        let theirs: Clk = (c.hlc, c.origin.clone());
        let clocks = self.column_clocks(t, rid, base)?;
        // Rows merged together can hold different values under one clock:
        // equal clocks then compare values (`unite::beats`). Elsewhere an
        // equal clock is the same write.
        let current = if self.merged(t, &c.pk)? {
            let cols: Vec<String> = vals.iter().map(|(col, _)| q(col)).collect();
            let sql = format!(
                "SELECT {} FROM {} WHERE rowid = ?1",
                cols.join(", "),
                t.src()
            );
            let mut s = self.db.prepare(&sql)?;
            s.bind(1, &rid.into())?;
            s.step()?;
            (0..vals.len()).map(|i| s.value(i)).collect()
        } else {
            Vec::new()
        };
        let winners: Vec<(&Arc<str>, Cow<Value>)> = vals
            .iter()
            .enumerate()
            .filter(|(i, (col, v))| {
                clocks.get(*col).is_none_or(|mine| match current.get(*i) {
                    Some(cur) => beats((&theirs, v.as_ref()), (mine, cur)),
                    None => theirs > *mine,
                })
            })
            .map(|(_, cv)| cv.clone())
            .collect();
        self.write(t, rid, &winners)?;
        // A newer re-insert also renews the row's creation clock, which is
        // what a delete is compared with.
        let base = self.clk(base)?;
        if c.op == Op::Insert && theirs > base {
            self.clock.rebase_row(t.id, rid, c.hlc, origin)?;
        }
        for (col, _) in &winners {
            self.clock.cover_column(t.id, rid, col, c.hlc, origin)?;
        }
        Ok(Outcome::Written(
            winners.into_iter().map(|(c, _)| c.clone()).collect(),
        ))
    }

    /// Each column's clock: its own entry, else the row entry's.
    pub(super) fn column_clocks(
        &mut self,
        t: &Table,
        rid: i64,
        base: (i64, i64),
    ) -> Result<HashMap<Arc<str>, Clk>> {
        let base = self.clk(base)?;
        let mut out: HashMap<Arc<str>, Clk> = t
            .columns
            .iter()
            .map(|c| (c.clone(), base.clone()))
            .collect();
        for (col, hlc, origin) in self.clock.column_clocks(t.id, rid)? {
            let clk = self.clk((hlc, origin))?;
            out.insert(Arc::from(col), clk);
        }
        Ok(out)
    }
}
