//! FK links: changesets carry FK targets as uuids; here they become local
//! rowids, looked up once per FK column per changeset, and a link whose
//! target is not here yet is deferred (`lsync_deferred`) until it arrives.

use std::borrow::Cow;
use std::sync::Arc;

use lsync_wire::changeset::Change;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{cols, Applier};
use crate::catalog::{Mode, Table};
use crate::error::Result;
use crate::fk;
use crate::ids::{self, IdMap};
use crate::sql::Value;

/// Column values ready to write, FK uuids already mapped to local ids.
pub(super) type LocalValues<'c> = Vec<(&'c Arc<str>, Cow<'c, Value>)>;
/// An FK link to complete later: (column, target table, target uuid).
pub(super) type Link = (Arc<str>, String, Value);

impl Applier {
    /// Finds the local rows of the FK targets that one table's changes
    /// name, one query per FK column; targets that arrive in the same
    /// changeset are mapped in memory.
    pub(super) fn find_targets(
        &mut self,
        t: &Table,
        list: &[&Change],
        groups: &HashMap<&str, Vec<&Change>>,
    ) -> Result<()> {
        for (col, target) in &t.fks {
            let Some(tt) = self.tables.get(target.as_str()).cloned() else {
                continue;
            };
            // A link to a row merged into another is a link to that row.
            let aliases = if self.any_alias && tt.mode == Mode::Shared {
                Some(self.aliases(&tt)?)
            } else {
                None
            };
            // Targets that arrive in this same changeset are mapped in memory.
            let theirs = groups.get(target.as_str()).map_or(&[][..], |l| &l[..]);
            // Sized at once: grown step by step, it rehashed every key.
            let mut incoming: HashSet<(bool, &[u8])> =
                HashSet::with_capacity_and_hasher(theirs.len(), Default::default());
            incoming.extend(theirs.iter().filter_map(|c| id_key(&c.pk)));
            let known = self.rids.get(target.as_str());
            let mut seen: IdMap<()> = IdMap::default();
            let mut missing: Vec<&Value> = Vec::new();
            for (_, v) in list
                .iter()
                .flat_map(|c| c.data.iter())
                .filter(|(k, _)| **k == **col)
            {
                let v = aliases.as_ref().map_or(v, |a| a.root_of(v));
                // Cheapest first: `fresh` spans the whole apply, and its
                // probes miss the cache.
                if ids::is_id(v)
                    && id_key(v).is_none_or(|k| !incoming.contains(&k))
                    && known.is_none_or(|m| !m.contains(v))
                    && !seen.contains(v)
                    && self.fresh.may_hold(tt.id, v)
                {
                    seen.insert(v, ());
                    missing.push(v);
                }
            }
            if missing.is_empty() {
                continue;
            }
            let found = fk::rids_of(self.db, &tt, &missing)?;
            self.report.fk_queries += 1;
            let name = tt.name.clone();
            self.rids.entry(name).or_default().extend(found);
        }
        Ok(())
    }

    /// Column values with FK uuids mapped to local ids; unresolved links are
    /// returned separately and stored as NULL until their target arrives.
    pub(super) fn local_values<'c>(
        &self,
        c: &'c Change,
        shape: &cols::Shape,
    ) -> (LocalValues<'c>, Vec<Link>) {
        let mut vals = Vec::with_capacity(c.data.len());
        let mut deferred = Vec::new();
        for ((col, v), target) in c.data.iter().zip(&shape.targets) {
            let local = match target {
                Some(target) if ids::is_id(v) => {
                    let v = self.root_in(target, v);
                    match self.rids.get(target).and_then(|m| m.get(v)) {
                        Some(rid) => Cow::Owned(Value::Integer(*rid)),
                        None => {
                            deferred.push((col.clone(), target.to_string(), v.clone()));
                            Cow::Owned(Value::Null)
                        }
                    }
                }
                _ => Cow::Borrowed(v),
            };
            vals.push((col, local));
        }
        (vals, deferred)
    }

    /// The row that a link to row `v` of table `target` points at: its
    /// root, when `v` was merged into another row.
    fn root_in<'a>(&'a self, target: &str, v: &'a Value) -> &'a Value {
        self.tables
            .get(target)
            .and_then(|tt| self.aliases.get(&tt.id))
            .map_or(v, |a| a.root_of(v))
    }

    /// After a write of `rid`: links of the `written` FK columns are
    /// replaced (all of them for a new row, `written` = None), and those
    /// still missing their target are deferred.
    pub(super) fn settle_links(
        &mut self,
        t: &Table,
        rid: i64,
        pk: &Value,
        written: Option<&[Arc<str>]>,
        mut deferred: Vec<Link>,
    ) -> Result<()> {
        if let Some(written) = written {
            if self.links_may_exist {
                for col in written.iter().filter(|c| t.fks.contains_key(&***c)) {
                    fk::forget(&self.clock.cache, t.id, rid, Some(col))?;
                }
            }
            deferred.retain(|(col, _, _)| written.contains(col));
        }
        self.links_may_exist |= !deferred.is_empty();
        for (col, target, target_uuid) in deferred {
            fk::defer(self.db, t, rid, pk, &col, &target, &target_uuid)?;
            self.report.deferred += 1;
        }
        Ok(())
    }
}

/// A global id as a set key that borrows it (`IdMap` would copy it):
/// whether it is text, and its bytes.
fn id_key(v: &Value) -> Option<(bool, &[u8])> {
    match v {
        Value::Text(s) => Some((true, s.as_bytes())),
        Value::Blob(b) => Some((false, b.as_slice())),
        _ => None,
    }
}

/// Tracked tables ordered so that FK targets come before the tables that
/// point at them (self-references and cycles are left to deferral).
pub(super) fn parents_first(tables: &HashMap<Arc<str>, Table>) -> Vec<Arc<str>> {
    fn visit(
        t: &Table,
        tables: &HashMap<Arc<str>, Table>,
        seen: &mut HashSet<i64>,
        out: &mut Vec<Arc<str>>,
    ) {
        if !seen.insert(t.id) {
            return;
        }
        for target in t.fks.values().filter(|n| **n != *t.name) {
            if let Some(tt) = tables.get(target.as_str()) {
                visit(tt, tables, seen, out);
            }
        }
        out.push(t.name.clone());
    }
    let mut all: Vec<&Table> = tables.values().collect();
    all.sort_by_key(|t| t.id);
    let (mut seen, mut out) = (HashSet::default(), Vec::new());
    for t in all {
        visit(t, tables, &mut seen, &mut out);
    }
    out
}
