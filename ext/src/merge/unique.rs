//! UNIQUE collisions on shared tables (issue 11, rule 1): rows that hold the
//! same values in a UNIQUE index are merged into one. The row created first,
//! by (HLC, origin device UUID), wins; each column takes the newer value by
//! its clock, as any edit would; the loser's referrers move to the winner;
//! and the loser's global id becomes an alias of the winner's
//! (`lsync_alias`), so later changes and FK values that name it apply to the
//! winner.
//!
//! Collisions are found before SQLite would refuse the write: a shared
//! table's UNIQUE indexes are read once per changeset, and a table without
//! one pays nothing per row. Device-owned tables are never merged: a clash
//! there stays a quarantined change.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;
use std::sync::Arc;

use lsync_wire::changeset::{Change, Op};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::links::LocalValues;
use super::{Applier, Clk};
use crate::catalog::{Mode, Table};
use crate::error::Result;
use crate::fk;
use crate::ident::{q, qm};
use crate::ids::{self, IdMap};
use crate::sql::Value;

/// The longest alias chain followed. Chains are kept flat in the table, so
/// this only bounds a hand-edited one.
const MAX_HOPS: usize = 64;

/// A UNIQUE index or constraint of a shared table, over tracked columns.
pub(super) struct Key {
    pub(super) cols: Vec<Arc<str>>,
    /// The row holding given values (?1.., in `cols` order), under the
    /// index's collations.
    find: String,
}

/// What one changeset has looked up of UNIQUE keys and aliases, by table id.
#[derive(Default)]
pub(super) struct Uniques {
    keys: HashMap<i64, Rc<Vec<Key>>>,
    /// Tables whose aliases are loaded; only non-empty maps are kept.
    loaded: HashSet<i64>,
    pub(super) aliases: HashMap<i64, IdMap<Value>>,
}

/// A column of an index (`None`: an expression) and its collation.
type IndexColumn = (Option<String>, String);

/// Where a merged column's value comes from: a local row, or the change
/// being applied (`None`).
pub(super) type Src = Option<i64>;

/// A row's state for a merge: a local row, the incoming change, or rows
/// already merged in memory.
pub(super) struct Side {
    pub(super) uuid: Value,
    pub(super) created: Clk,
    /// The local rows it stands for; the first is the one kept.
    pub(super) rids: Vec<i64>,
    pub(super) cols: HashMap<Arc<str>, (Value, Clk, Src)>,
    /// The incoming change's FK links whose target is not here:
    /// column -> (target table, target uuid).
    pub(super) links: HashMap<Arc<str>, (String, Value)>,
    /// Global ids merged into this one.
    pub(super) losers: Vec<Value>,
}

/// Global ids in SQLite's order (text before blob), for a tie of clocks.
fn cmp_id(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        (Value::Text(_), _) => Ordering::Less,
        (_, Value::Text(_)) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Two rows as one: the earlier creation (then the smaller id) wins the
/// identity, and each column takes the value with the newer clock (the
/// winner's on a tie). Commutative and associative, so every replica gets
/// the same row whatever order it meets the rows in.
pub(super) fn join(a: Side, b: Side) -> Side {
    let a_wins = match a.created.cmp(&b.created) {
        Ordering::Equal => cmp_id(&a.uuid, &b.uuid) != Ordering::Greater,
        o => o == Ordering::Less,
    };
    let (mut w, l) = if a_wins { (a, b) } else { (b, a) };
    for (col, (v, clk, src)) in l.cols {
        if w.cols.get(&col).is_none_or(|(_, mine, _)| clk > *mine) {
            w.cols.insert(col, (v, clk, src));
        }
    }
    w.links.extend(l.links);
    if w.rids.is_empty() {
        w.rids = l.rids;
    } else {
        w.rids.extend(l.rids);
    }
    w.losers.push(l.uuid);
    w.losers.extend(l.losers);
    w
}

impl Applier {
    /// Reads the UNIQUE keys and the aliases of a shared table about to be
    /// merged into, and finds the rows that its changes' aliases name.
    pub(super) fn prepare_unique(&mut self, t: &Table, list: &[&Change]) -> Result<()> {
        if t.mode != Mode::Shared {
            return Ok(());
        }
        self.keys_of(t)?;
        self.load_aliases(t)?;
        let winners: Vec<Value> = list
            .iter()
            .filter_map(|c| self.winner_of(t.id, &c.pk))
            .collect();
        if winners.is_empty() {
            return Ok(());
        }
        let refs: Vec<&Value> = winners.iter().collect();
        let found = fk::rids_of(self.db, t, &refs)?;
        self.rids.entry(t.name.clone()).or_default().extend(found);
        Ok(())
    }

    /// FK values that name an alias of a row of `tt` map to the winner's row.
    pub(super) fn alias_targets(&mut self, tt: &Table, missing: &[&Value]) -> Result<()> {
        if tt.mode != Mode::Shared {
            return Ok(());
        }
        self.load_aliases(tt)?;
        let known = self.rids.get(&tt.name);
        let pairs: Vec<(&Value, Value)> = missing
            .iter()
            .filter(|v| known.is_none_or(|m| !m.contains(v)))
            .filter_map(|v| self.winner_of(tt.id, v).map(|w| (*v, w)))
            .collect();
        if pairs.is_empty() {
            return Ok(());
        }
        let winners: Vec<&Value> = pairs.iter().map(|(_, w)| w).collect();
        let found = fk::rids_of(self.db, tt, &winners)?;
        let rids = self.rids.entry(tt.name.clone()).or_default();
        for (alias, w) in &pairs {
            if let Some(rid) = found.get(w) {
                rids.insert(alias, *rid);
            }
        }
        Ok(())
    }

    /// A change addressed to an alias, readdressed to its winner. An insert
    /// of the loser becomes an edit of the winner: it brings values, never a
    /// newer creation.
    pub(super) fn dealias(&self, t: &Table, c: &Change) -> Option<Change> {
        let w = self.winner_of(t.id, &c.pk)?;
        let op = if c.op == Op::Insert { Op::Update } else { c.op };
        Some(Change {
            pk: w,
            op,
            ..c.clone()
        })
    }

    /// The row an alias stands for, following chains.
    fn winner_of(&self, tbl: i64, id: &Value) -> Option<Value> {
        let m = self.uniq.aliases.get(&tbl)?;
        let mut w = m.get(id)?;
        for _ in 0..MAX_HOPS {
            match m.get(w) {
                Some(next) => w = next,
                None => break,
            }
        }
        Some(w.clone())
    }

    fn load_aliases(&mut self, t: &Table) -> Result<()> {
        if !self.uniq.loaded.insert(t.id) {
            return Ok(());
        }
        let mut m = IdMap::default();
        let mut any = false;
        self.clock.cache.with(
            "SELECT uuid, winner FROM lsync_alias WHERE tbl = ?1",
            &[t.id.into()],
            |s| {
                while s.step()? {
                    m.insert(&s.value(0), s.value(1));
                    any = true;
                }
                Ok(())
            },
        )?;
        if any {
            self.uniq.aliases.insert(t.id, m);
        }
        Ok(())
    }

    /// The UNIQUE keys of a shared table that lsync merges on: every unique
    /// index or constraint over tracked columns, except the global id's own
    /// and partial or expression indexes (those stay SQLite's to refuse).
    pub(super) fn keys_of(&mut self, t: &Table) -> Result<Rc<Vec<Key>>> {
        if let Some(k) = self.uniq.keys.get(&t.id) {
            return Ok(k.clone());
        }
        let mut s = self.db.prepare(
            "SELECT il.name, ii.name, ii.coll FROM pragma_index_list(?1) il
               JOIN pragma_index_xinfo(il.name) ii
             WHERE il.\"unique\" = 1 AND il.partial = 0 AND ii.key = 1
             ORDER BY il.seq, ii.seqno",
        )?;
        s.bind(1, &(*t.name).into())?;
        // (index, [(column, collation)]); an expression has no column name.
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
        let mut keys = Vec::new();
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
            let terms: Vec<String> = tracked
                .iter()
                .enumerate()
                .map(|(i, (c, coll))| format!("{} = ?{} COLLATE {}", q(c), i + 1, q(coll)))
                .collect();
            keys.push(Key {
                cols: tracked.into_iter().map(|(c, _)| c).collect(),
                find: format!(
                    "SELECT rowid FROM {} WHERE {}",
                    qm(&t.name),
                    terms.join(" AND ")
                ),
            });
        }
        let keys = Rc::new(keys);
        self.uniq.keys.insert(t.id, keys.clone());
        Ok(keys)
    }

    fn has_keys(&self, t: &Table) -> bool {
        self.uniq.keys.get(&t.id).is_some_and(|k| !k.is_empty())
    }

    /// Before an incoming row is inserted: if it holds the values of another
    /// row in a UNIQUE key, the two are merged instead. Returns whether it
    /// was.
    pub(super) fn merge_insert(
        &mut self,
        t: &Table,
        c: &Change,
        vals: &LocalValues,
    ) -> Result<bool> {
        if !self.has_keys(t) {
            return Ok(false);
        }
        let clk: Clk = (c.hlc, c.origin.clone());
        let mut side = Side {
            uuid: c.pk.clone(),
            created: clk.clone(),
            rids: Vec::new(),
            cols: HashMap::default(),
            links: HashMap::default(),
            losers: Vec::new(),
        };
        self.overlay(t, c, &mut side, vals.iter().map(|(k, v)| (*k, v)));
        let Some(other) = self.collider(t, &side)? else {
            return Ok(false);
        };
        let other = self.read_side(t, other)?;
        self.fold(t, join(side, other))?;
        self.report.applied += 1;
        Ok(true)
    }

    /// Before an edit that changes a UNIQUE key's column of row `rid` is
    /// written: if the row would then hold another row's values, the two
    /// are merged instead. Returns whether they were.
    pub(super) fn merge_update(
        &mut self,
        t: &Table,
        c: &Change,
        rid: i64,
        winners: &[(&Arc<str>, Cow<Value>)],
    ) -> Result<bool> {
        let Some(keys) = self.uniq.keys.get(&t.id) else {
            return Ok(false);
        };
        let touches = |k: &Key| k.cols.iter().any(|c| winners.iter().any(|(w, _)| *w == c));
        if !keys.iter().any(touches) {
            return Ok(false);
        }
        let mut side = self.read_side(t, rid)?;
        self.overlay(t, c, &mut side, winners.iter().map(|(k, v)| (*k, v)));
        let Some(other) = self.collider(t, &side)? else {
            return Ok(false);
        };
        let other = self.read_side(t, other)?;
        self.fold(t, join(side, other))?;
        Ok(true)
    }

    /// Puts a change's (local) values on a side at the change's clock, with
    /// the links whose target is not here.
    fn overlay<'v>(
        &self,
        t: &Table,
        c: &Change,
        side: &mut Side,
        vals: impl Iterator<Item = (&'v Arc<str>, &'v Cow<'v, Value>)>,
    ) {
        let clk: Clk = (c.hlc, c.origin.clone());
        for (col, v) in vals {
            let sent = c.data.iter().find(|(k, _)| k == col).map(|(_, v)| v);
            if let (Value::Null, Some(target), Some(id)) = (
                v.as_ref(),
                t.fks.get(&**col),
                sent.filter(|v| ids::is_id(v)),
            ) {
                if self.tables.contains_key(target.as_str()) {
                    side.links.insert(col.clone(), (target.clone(), id.clone()));
                }
            }
            side.cols
                .insert(col.clone(), (v.as_ref().clone(), clk.clone(), None));
        }
    }

    /// A row, other than the side's own, that holds the side's values in
    /// some UNIQUE key (NULLs never collide).
    pub(super) fn collider(&self, t: &Table, side: &Side) -> Result<Option<i64>> {
        let Some(keys) = self.uniq.keys.get(&t.id) else {
            return Ok(None);
        };
        'keys: for k in keys.iter() {
            let mut params = Vec::with_capacity(k.cols.len());
            for col in &k.cols {
                match side.cols.get(col) {
                    Some((v, _, _)) if *v != Value::Null => params.push(v.clone()),
                    _ => continue 'keys,
                }
            }
            let found = self
                .clock
                .cache
                .with(&k.find, &params, |s| Ok(s.step()?.then(|| s.i64(0))))?;
            if let Some(rid) = found.filter(|r| !side.rids.contains(r)) {
                return Ok(Some(rid));
            }
        }
        Ok(None)
    }

    /// A local row's state: its values and each column's clock.
    pub(super) fn read_side(&mut self, t: &Table, rid: i64) -> Result<Side> {
        let cols: Vec<String> = std::iter::once(q(&t.uuid_col))
            .chain(t.columns.iter().map(|c| q(c)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE rowid = ?1",
            cols.join(", "),
            qm(&t.name)
        );
        let row = self.clock.cache.with(&sql, &[rid.into()], |s| {
            Ok(if s.step()? {
                (0..cols.len()).map(|i| s.value(i)).collect()
            } else {
                Vec::new()
            })
        })?;
        let Some((uuid, vals)) = row.split_first() else {
            crate::bail!("lsync: row {rid} of '{}' vanished during a merge", t.name);
        };
        let base = self.row_clock(t.id, rid)?;
        let created = self.clk(base)?;
        let clocks = self.column_clocks(t, rid, base)?;
        let cols = t
            .columns
            .iter()
            .zip(vals)
            .map(|(c, v)| {
                let clk = clocks.get(c).cloned().unwrap_or_else(|| created.clone());
                (c.clone(), (v.clone(), clk, Some(rid)))
            })
            .collect();
        Ok(Side {
            uuid: uuid.clone(),
            created,
            rids: vec![rid],
            cols,
            links: HashMap::default(),
            losers: Vec::new(),
        })
    }
}
