//! The UNIQUE keys of shared tables whose clashing rows `unite` merges,
//! read from SQLite's index lists once per changeset, and only when a
//! write was refused; and the lookup of the row that holds a key's values.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::Applier;
use crate::catalog::{Mode, Table};
use lsync_wire::changeset::{Change, Op};

use crate::error::{Error, Result};
use crate::fk;
use crate::ident::q;
use crate::sql::Value;

/// A UNIQUE index or constraint of a shared table, over tracked columns.
pub(super) struct Key {
    pub(super) cols: Vec<Arc<str>>,
    /// Another row holding given values (?1.., in `cols` order; the row
    /// itself, ?n+1, excluded), under the index's collations.
    find: String,
}

/// A column of an index (`None`: an expression) and its collation.
type IndexColumn = (Option<String>, String);

/// The UNIQUE keys read so far, by table id.
pub(super) type Keys = HashMap<i64, Rc<Vec<Key>>>;

impl Applier {
    /// The UNIQUE keys of a shared table that lsync merges on: every unique
    /// index or constraint over tracked columns, except the global id's
    /// own and partial or expression indexes (those stay SQLite's to
    /// refuse, and quarantined).
    pub(super) fn keys_of(&mut self, t: &Table) -> Result<Rc<Vec<Key>>> {
        if let Some(k) = self.keys.get(&t.id) {
            return Ok(k.clone());
        }
        let mut keys = Vec::new();
        if t.mode == Mode::Shared {
            let mut s = self.db.prepare(
                "SELECT il.name, ii.name, ii.coll FROM pragma_index_list(?1) il
                   JOIN pragma_index_xinfo(il.name) ii
                 WHERE il.\"unique\" = 1 AND il.partial = 0 AND ii.key = 1
                 ORDER BY il.seq, ii.seqno",
            )?;
            s.bind(1, &(*t.name).into())?;
            let mut by_index: Vec<(String, Vec<IndexColumn>)> = Vec::new();
            while s.step()? {
                let index = s.text(0).unwrap_or_default();
                let col = (s.text(1), s.text(2).unwrap_or_else(|| "BINARY".into()));
                match by_index.last_mut() {
                    Some((name, cols)) if *name == index => cols.push(col),
                    _ => by_index.push((index, vec![col])),
                }
            }
            drop(s);
            for (_, cols) in by_index {
                let tracked: Option<Vec<(Arc<str>, String)>> = cols
                    .into_iter()
                    .map(|(name, coll)| {
                        let name = name?;
                        let col = t.columns.iter().find(|c| c.eq_ignore_ascii_case(&name))?;
                        Some((col.clone(), coll))
                    })
                    .collect();
                let Some(tracked) = tracked else { continue };
                let n = tracked.len();
                let terms: Vec<String> = tracked
                    .iter()
                    .enumerate()
                    .map(|(i, (c, coll))| format!("{} = ?{} COLLATE {}", q(c), i + 1, q(coll)))
                    .collect();
                keys.push(Key {
                    cols: tracked.into_iter().map(|(c, _)| c).collect(),
                    find: format!(
                        "SELECT rowid FROM {} WHERE {} AND rowid IS NOT ?{} LIMIT 1",
                        t.src(),
                        terms.join(" AND "),
                        n + 1
                    ),
                });
            }
        }
        let keys = Rc::new(keys);
        self.keys.insert(t.id, keys.clone());
        Ok(keys)
    }

    /// A live row other than `rid` that would hold a UNIQUE key value of
    /// row `rid` (None: a new row) once `vals` are written over it.
    pub(super) fn clash(
        &mut self,
        t: &Table,
        rid: Option<i64>,
        vals: &[(&Arc<str>, Cow<Value>)],
    ) -> Result<Option<(i64, Vec<Arc<str>>)>> {
        let keys = self.keys_of(t)?;
        for k in keys.iter() {
            // An edit that writes none of a key's columns leaves its values.
            if rid.is_some() && !k.cols.iter().any(|c| vals.iter().any(|(w, _)| *w == c)) {
                continue;
            }
            let mut args = Vec::with_capacity(k.cols.len() + 1);
            for col in &k.cols {
                let v = match vals.iter().find(|(c, _)| *c == col) {
                    Some((_, v)) => v.as_ref().clone(),
                    None => match rid {
                        Some(rid) => self
                            .db
                            .query_value(
                                &format!("SELECT {} FROM {} WHERE rowid = ?1", q(col), t.src()),
                                &[rid.into()],
                            )?
                            .unwrap_or(Value::Null),
                        None => Value::Null,
                    },
                };
                args.push(v);
            }
            // NULLs never clash in a UNIQUE index.
            if args.contains(&Value::Null) {
                continue;
            }
            args.push(rid.map_or(Value::Null, Value::Integer));
            if let Some(other) = self.db.query_i64(&k.find, &args)? {
                return Ok(Some((other, k.cols.clone())));
            }
        }
        Ok(None)
    }

    /// In a table where this merge has met a clash, a new row that would
    /// clash is merged before it is written, rather than found by a refused
    /// insert and one more pass: many rows created on two devices with the
    /// same names cost one pass, not one per row. True when it merged.
    pub(super) fn clashes_before_insert(
        &mut self,
        t: &Table,
        c: &Change,
        vals: &[(&Arc<str>, Cow<Value>)],
    ) -> Result<bool> {
        if c.op != Op::Insert || !self.clashed.contains(&t.id) {
            return Ok(false);
        }
        // A row with a tombstone is `create`'s to decide.
        if self.tombs.get(&t.name).is_some_and(|m| m.contains(&c.pk)) {
            return Ok(false);
        }
        let Some((other, _)) = self.clash(t, None, vals)? else {
            return Ok(false);
        };
        let other = self.uuid_at(t, other)?;
        let hlc = self.clock.hlc()?;
        let me = self.clock.self_idx;
        self.unite(t, &c.pk, &other, hlc, me)
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
