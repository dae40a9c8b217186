//! Reading the change clock: the changes after a cursor, in cursor order,
//! with FK columns turned into the target rows' UUIDs.
//!
//! Reads are set-based: a range entry is one range scan of the table, and
//! FK ids are resolved with one query per FK column per batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use lsync_wire::changeset::{Change, Op, MERGE_INTO};

use crate::catalog::{self, Table};
use crate::clock::{op_of, OP_MERGE};
use crate::error::Result;
use crate::fk;
use crate::ident::q;
use crate::schema;
use crate::sql::{Cache, Db, Value};

/// A change with the local rowid it was read from (tombstones have none).
struct Row {
    rid: Option<i64>,
    change: Change,
}

struct Entry {
    seq: i64,
    tbl: i64,
    lo: Option<i64>,
    hi: i64,
    col: Option<String>,
    op: i64,
    hlc: i64,
    origin: i64,
    uuid: Value,
}

/// How much one read may take: a count of changes, and bytes of their
/// values. The first change is always taken, however large, so that a row
/// bigger than the byte budget still travels (alone).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub changes: usize,
    pub bytes: usize,
}

impl Budget {
    /// At most `changes` changes, of any size.
    pub fn changes(changes: usize) -> Budget {
        Budget {
            changes,
            bytes: usize::MAX,
        }
    }

    pub fn spent(&self) -> bool {
        self.changes == 0 || self.bytes == 0
    }

    fn take(&mut self, c: &Change) {
        self.changes = self.changes.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(c.size());
    }
}

/// Up to `limit` changes with cursor greater than `since`, in cursor order.
/// The caller flushes first if pending captures should be included.
pub fn read(db: Db, since: i64, limit: usize) -> Result<Vec<Change>> {
    read_except(db, since, limit, None)
}

/// Like `read`, leaving out changes made at device `except` (a peer never
/// needs its own changes back) and at revoked devices.
pub fn read_except(db: Db, since: i64, limit: usize, except: Option<&str>) -> Result<Vec<Change>> {
    read_within(db, since, &mut Budget::changes(limit), except)
}

/// Like `read_except`, within `budget`, which says on return what was left
/// of it: a spent budget means that more changes may follow.
pub fn read_within(
    db: Db,
    since: i64,
    budget: &mut Budget,
    except: Option<&str>,
) -> Result<Vec<Change>> {
    let mut skip = crate::members::revoked_origins(db)?;
    skip.extend(known_device(db, except)?);
    let tables: HashMap<i64, Table> = catalog::load_all(db)?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    let mut origins: HashMap<i64, Arc<str>> = HashMap::new();
    let cache = Cache::new(db);
    let mut sqls = HashMap::new();
    let mut out: Vec<Row> = Vec::new();
    let mut s = db.prepare(
        "SELECT seq, tbl, lo, hi, col, op, hlc, origin, uuid FROM lsync_clock
         WHERE seq > ?1 ORDER BY seq",
    )?;
    s.bind(1, &since.into())?;
    while !budget.spent() && s.step()? {
        let e = Entry {
            seq: s.i64(0),
            tbl: s.i64(1),
            lo: s.value(2).as_i64(),
            hi: s.i64(3),
            col: s.text(4),
            op: s.i64(5),
            hlc: s.i64(6),
            origin: s.i64(7),
            uuid: s.value(8),
        };
        let Some(t) = tables.get(&e.tbl) else {
            continue;
        };
        if skip.contains(&e.origin) {
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(v) = origins.entry(e.origin) {
            v.insert(Arc::from(schema::device_uuid(db, e.origin)?));
        }
        let origin = origins[&e.origin].clone();
        read_entry(&cache, &mut sqls, t, &e, since, budget, origin, &mut out)?;
    }
    drop(s);
    resolve_fks(db, &tables, &mut out)?;
    Ok(out.into_iter().map(|r| r.change).collect())
}

/// The local alias of device `id`, if this database has seen it.
fn known_device(db: Db, id: Option<&str>) -> Result<Option<i64>> {
    match id {
        Some(id) => db.query_i64("SELECT idx FROM lsync_devices WHERE id = ?1", &[id.into()]),
        None => Ok(None),
    }
}

/// How many changes `read_except` would return after `since` with no
/// limit, counted from the clock without reading a row: an entry covering
/// rowids lo..hi holds the cursors seq - (hi - lo) ..= seq.
pub fn missing(db: Db, since: i64, except: Option<&str>) -> Result<i64> {
    // Cursors start at 1; a lower `since` must not overflow `seq - since`.
    let since = since.max(0);
    let mut skip = crate::members::revoked_origins(db)?;
    skip.extend(known_device(db, except)?);
    // The aliases to leave out, as a JSON array for json_each.
    let skip = serde_json::Value::from(skip.into_iter().collect::<Vec<i64>>()).to_string();
    Ok(db
        .query_i64(
            "SELECT coalesce(sum(CASE WHEN lo IS NULL THEN 1
                                      ELSE min(hi - lo + 1, seq - ?1) END), 0)
             FROM lsync_clock
             WHERE seq > ?1 AND origin NOT IN (SELECT value FROM json_each(?2))
               AND tbl IN (SELECT id FROM lsync_tables)",
            &[since.into(), skip.into()],
        )?
        .unwrap_or(0))
}

#[allow(clippy::too_many_arguments)]
fn read_entry(
    cache: &Cache,
    sqls: &mut HashMap<(i64, Option<String>), String>,
    t: &Table,
    e: &Entry,
    since: i64,
    budget: &mut Budget,
    origin: Arc<str>,
    out: &mut Vec<Row>,
) -> Result<()> {
    let change = |seq: i64, rid: Option<i64>, pk: Value, data: Vec<(Arc<str>, Value)>| Row {
        rid,
        change: Change {
            seq,
            hlc: e.hlc,
            origin: origin.clone(),
            tbl: t.name.clone(),
            pk,
            op: op_of(e.op),
            data,
        },
    };
    let Some(lo) = e.lo else {
        let mut data = Vec::new();
        if e.op == OP_MERGE {
            // A merge names the row merged away; it goes into its root.
            let root = cache.with(
                "SELECT root FROM lsync_alias WHERE tbl = ?1 AND uuid = ?2",
                &[e.tbl.into(), e.uuid.clone()],
                |s| Ok(if s.step()? { Some(s.value(0)) } else { None }),
            )?;
            let Some(root) = root else {
                return Ok(());
            };
            data.push((Arc::from(MERGE_INTO), root));
        }
        let row = change(e.seq, None, e.uuid.clone(), data);
        budget.take(&row.change);
        out.push(row);
        return Ok(());
    };
    // Row r of the entry has cursor seq - (hi - r): skip rows at or below `since`.
    let first = lo.max(
        e.hi.saturating_sub(e.seq.saturating_sub(since))
            .saturating_add(1),
    );
    let cols: Vec<&Arc<str>> = match &e.col {
        Some(c) => t.columns.iter().filter(|x| ***x == **c).collect(),
        None => t.columns.iter().collect(),
    };
    // One SQL text per (table, column): entries of one row each are common.
    let sql = sqls.entry((t.id, e.col.clone())).or_insert_with(|| {
        let select: Vec<String> = cols.iter().map(|c| q(c)).collect();
        format!(
            "SELECT rowid, {u}{sep}{cols} FROM {src} AS x WHERE rowid BETWEEN ?1 AND ?2 ORDER BY rowid LIMIT ?3",
            u = t.gid_of("x"),
            sep = if select.is_empty() { "" } else { ", " },
            cols = select.join(", "),
            src = t.src(),
        )
    });
    cache.with(
        sql,
        &[first.into(), e.hi.into(), (budget.changes as i64).into()],
        |s| {
            while !budget.spent() && s.step()? {
                let rid = s.i64(0);
                let data = cols
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ((*c).clone(), s.value(i + 2)))
                    .collect();
                let row = change(e.seq - (e.hi - rid), Some(rid), s.value(1), data);
                budget.take(&row.change);
                out.push(row);
            }
            Ok(())
        },
    )
}

/// Replaces local FK ids with the target rows' uuids: targets read in the
/// same batch are mapped in memory, the rest with one query per (table, FK
/// column). A NULL FK whose link is still deferred carries the pending
/// target uuid, so relays never lose a link. A dangling id becomes NULL.
fn resolve_fks(db: Db, tables: &HashMap<i64, Table>, rows: &mut [Row]) -> Result<()> {
    let by_name: HashMap<&str, &Table> = tables.values().map(|t| (&*t.name, t)).collect();
    // Rows read in this batch, by table: rid -> uuid.
    let mut in_batch: HashMap<Arc<str>, HashMap<i64, Value>> = HashMap::new();
    // (source table, FK column, target table) present in the batch.
    let mut wanted: BTreeMap<(Arc<str>, Arc<str>), Arc<str>> = BTreeMap::new();
    for r in rows.iter() {
        if let Some(rid) = r.rid {
            in_batch
                .entry(r.change.tbl.clone())
                .or_default()
                .insert(rid, r.change.pk.clone());
        }
        let Some(t) = by_name.get(&*r.change.tbl) else {
            continue;
        };
        for (col, _) in &r.change.data {
            if let Some(target) = t.fks.get(&**col).and_then(|n| by_name.get(n.as_str())) {
                wanted
                    .entry((r.change.tbl.clone(), col.clone()))
                    .or_insert_with(|| target.name.clone());
            }
        }
    }
    let empty = HashMap::new();
    for ((tbl, col), target_name) in wanted {
        let target = by_name[&*target_name];
        let source = by_name[&*tbl];
        let known = in_batch.get(&target_name).unwrap_or(&empty);
        let mut missing: Vec<i64> = Vec::new();
        let mut nulls: Vec<i64> = Vec::new();
        for r in rows.iter().filter(|r| r.change.tbl == tbl) {
            for (_, v) in r.change.data.iter().filter(|(k, _)| *k == col) {
                match v {
                    Value::Integer(id) if !known.contains_key(id) => missing.push(*id),
                    Value::Null => nulls.extend(r.rid),
                    _ => {}
                }
            }
        }
        let fetched = fk::uuids_of(db, target, &missing)?;
        let pending = fk::deferred_links(db, source.id, &col, &nulls)?;
        let mapped: Vec<Option<Value>> = rows
            .iter()
            .filter(|r| r.change.tbl == tbl)
            .map(|r| {
                r.change
                    .data
                    .iter()
                    .find(|(k, _)| *k == col)
                    .map(|(_, v)| match v {
                        Value::Integer(id) => known
                            .get(id)
                            .or_else(|| fetched.get(id))
                            .cloned()
                            .unwrap_or(Value::Null),
                        Value::Null => r
                            .rid
                            .and_then(|rid| pending.get(&rid).cloned())
                            .unwrap_or(Value::Null),
                        other => other.clone(),
                    })
            })
            .collect();
        for (r, m) in rows.iter_mut().filter(|r| r.change.tbl == tbl).zip(mapped) {
            if let (Some(slot), Some(v)) = (r.change.data.iter_mut().find(|(k, _)| *k == col), m) {
                slot.1 = v;
            }
        }
    }
    Ok(())
}

/// A value as JSON: blobs as lowercase hex text.
pub fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => (*i).into(),
        Value::Real(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(s) => s.clone().into(),
        Value::Blob(b) => b
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into(),
    }
}

/// The `data` column of `lsync_changes`.
pub fn data_json(data: &[(Arc<str>, Value)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), value_json(v)))
        .collect();
    serde_json::Value::Object(map).to_string()
}
