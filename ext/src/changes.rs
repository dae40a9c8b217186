//! Reading the change clock: the changes after a cursor, in cursor order,
//! with FK columns turned into the target rows' UUIDs.
//!
//! Reads are set-based: a range entry is one range scan of the table. The
//! uuids of the rows read are kept for the FKs that point at them.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

pub use lsync_wire::changeset::{Change, Op, MERGE_INTO};

use crate::catalog::{self, Table};
use crate::clock::{op_of, OP_MERGE};
use crate::error::Result;
use crate::ident::q;
use crate::schema;
use crate::sql::{Cache, Db, Value, ValueRef};

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

/// One change as read, borrowed from the statement that read it, for a
/// [`Sink`] to copy or to encode.
pub struct ChangeRef<'a> {
    pub seq: i64,
    pub hlc: i64,
    pub op: Op,
    /// The local alias of the device where it was made, and its id.
    pub origin: i64,
    pub origin_id: &'a Arc<str>,
    pub table: &'a Table,
    /// The table's index in the tables read from.
    pub table_index: usize,
    /// The row's global id.
    pub pk: ValueRef<'a>,
    pub body: Body<'a>,
}

pub enum Body<'a> {
    /// Columns, as ascending indexes into the table's columns, and their
    /// values, FKs as the target rows' uuids. None for a tombstone.
    Columns(&'a [usize], &'a [ValueRef<'a>]),
    /// A merge: the row merged into.
    Into(ValueRef<'a>),
}

impl ChangeRef<'_> {
    /// As [`Change::size`].
    fn size(&self) -> usize {
        let data = match &self.body {
            Body::Columns(_, values) => values.iter().map(ValueRef::size).sum(),
            Body::Into(v) => v.size(),
        };
        Change::HEADER_SIZE + self.pk.size() + data
    }

    /// An owned copy.
    pub fn to_change(&self) -> Change {
        let data = match &self.body {
            Body::Columns(cols, values) => cols
                .iter()
                .zip(values.iter())
                .map(|(j, v)| (self.table.columns[*j].clone(), v.to_owned()))
                .collect(),
            Body::Into(v) => vec![(Arc::from(MERGE_INTO), v.to_owned())],
        };
        Change {
            seq: self.seq,
            hlc: self.hlc,
            origin: self.origin_id.clone(),
            tbl: self.table.name.clone(),
            pk: self.pk.to_owned(),
            op: self.op,
            data,
        }
    }
}

/// Where the changes read go, one at a time, in cursor order.
pub trait Sink {
    fn change(&mut self, c: &ChangeRef<'_>) -> Result<()>;
}

impl Sink for Vec<Change> {
    fn change(&mut self, c: &ChangeRef<'_>) -> Result<()> {
        self.push(c.to_change());
        Ok(())
    }
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

    fn take(&mut self, size: usize) {
        self.changes = self.changes.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
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
    let mut out = Vec::new();
    read_each(db, &catalog::load_all(db)?, since, budget, except, &mut out)?;
    Ok(out)
}

/// Like `read_within`, handing each change to `sink`: changes of `tables`
/// (the catalog; the changes of other tables are left out).
pub fn read_each(
    db: Db,
    tables: &[Table],
    since: i64,
    budget: &mut Budget,
    except: Option<&str>,
    sink: &mut impl Sink,
) -> Result<()> {
    let mut skip = crate::members::revoked_origins(db)?;
    skip.extend(known_device(db, except)?);
    let index: HashMap<i64, usize> = tables.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let mut origins: HashMap<i64, Arc<str>> = HashMap::new();
    let mut r = Reader {
        cache: Cache::new(db),
        tables,
        selects: HashMap::new(),
        fks: Fks::new(tables),
        since,
    };
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
        let Some(&ti) = index.get(&e.tbl) else {
            continue;
        };
        if skip.contains(&e.origin) {
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(v) = origins.entry(e.origin) {
            v.insert(Arc::from(schema::device_uuid(db, e.origin)?));
        }
        r.entry(ti, &e, &origins[&e.origin], budget, sink)?;
    }
    Ok(())
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

/// What reads the rows of clock entries.
struct Reader<'t> {
    cache: Cache,
    tables: &'t [Table],
    /// The SELECT of each (table, column) read.
    selects: HashMap<(i64, Option<String>), Select>,
    fks: Fks,
    since: i64,
}

/// The rows of one table, all columns or one.
struct Select {
    sql: String,
    /// The columns read (indexes into the table's columns), ascending.
    cols: Vec<usize>,
    /// For each column read, the table its values point at (an FK whose
    /// target is tracked).
    targets: Vec<Option<usize>>,
}

impl Reader<'_> {
    /// Hands the changes of clock entry `e`, of table `tables[ti]`, to `sink`.
    fn entry(
        &mut self,
        ti: usize,
        e: &Entry,
        origin_id: &Arc<str>,
        budget: &mut Budget,
        sink: &mut impl Sink,
    ) -> Result<()> {
        let t = &self.tables[ti];
        let mut c = ChangeRef {
            seq: e.seq,
            hlc: e.hlc,
            op: op_of(e.op),
            origin: e.origin,
            origin_id,
            table: t,
            table_index: ti,
            pk: e.uuid.as_ref(),
            body: Body::Columns(&[], &[]),
        };
        let Some(lo) = e.lo else {
            let root;
            if e.op == OP_MERGE {
                // A merge names the row merged away; it goes into its root.
                root = self.cache.with(
                    "SELECT root FROM lsync_alias WHERE tbl = ?1 AND uuid = ?2",
                    &[e.tbl.into(), e.uuid.clone()],
                    |s| Ok(if s.step()? { Some(s.value(0)) } else { None }),
                )?;
                let Some(root) = &root else {
                    return Ok(());
                };
                c.body = Body::Into(root.as_ref());
            }
            budget.take(c.size());
            return sink.change(&c);
        };
        // Row r of the entry has cursor seq - (hi - r): skip rows at or below `since`.
        let first = lo.max(
            e.hi.saturating_sub(e.seq.saturating_sub(self.since))
                .saturating_add(1),
        );
        let Reader {
            cache,
            tables,
            selects,
            fks,
            ..
        } = self;
        // One SELECT per (table, column): entries of one row each are common.
        let sel = selects
            .entry((t.id, e.col.clone()))
            .or_insert_with(|| select(t, e.col.as_deref(), tables));
        let params = [first.into(), e.hi.into(), (budget.changes as i64).into()];
        cache.with(&sel.sql, &params, |s| {
            let mut spare = Vec::new();
            while !budget.spent() && s.step()? {
                let rid = s.i64(0);
                let pk = s.value_ref(1).compact();
                fks.read(ti, rid, &pk);
                let mut values = recycle(spare);
                for (i, target) in sel.targets.iter().enumerate() {
                    let v = s.value_ref(i + 2);
                    values.push(match target {
                        Some(target) => {
                            let col = &t.columns[sel.cols[i]];
                            fks.resolve(cache, (t, col, rid), *target, v)?
                        }
                        None => v,
                    });
                }
                let c = ChangeRef {
                    seq: e.seq - (e.hi - rid),
                    pk,
                    body: Body::Columns(&sel.cols, &values),
                    ..c
                };
                budget.take(c.size());
                sink.change(&c)?;
                spare = recycle(values);
            }
            Ok(())
        })
    }
}

/// An empty vector with `v`'s allocation, for values of another lifetime:
/// the row values of one statement step, reused for the next one without
/// allocating per row (collecting a vector's own iterator reuses it).
// `filter` would not change the lifetime, which is the point.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut v: Vec<ValueRef<'_>>) -> Vec<ValueRef<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// The SELECT of the rows of table `t` with rowids ?1..=?2 (at most ?3),
/// in rowid order: rowid, global id, then the columns read (all, or `col`).
fn select(t: &Table, col: Option<&str>, tables: &[Table]) -> Select {
    let cols: Vec<usize> = (0..t.columns.len())
        .filter(|j| col.is_none_or(|c| *t.columns[*j] == *c))
        .collect();
    let select: Vec<String> = cols.iter().map(|j| q(&t.columns[*j])).collect();
    let sql = format!(
        "SELECT rowid, {u}{sep}{cols} FROM {src} AS x WHERE rowid BETWEEN ?1 AND ?2 ORDER BY rowid LIMIT ?3",
        u = t.gid_of("x"),
        sep = if select.is_empty() { "" } else { ", " },
        cols = select.join(", "),
        src = t.src(),
    );
    let targets = cols
        .iter()
        .map(|j| {
            let target = t.fks.get(&*t.columns[*j])?;
            tables.iter().position(|x| *x.name == **target)
        })
        .collect();
    Select { sql, cols, targets }
}

/// FK ids turned into the uuids of the rows they point at. The uuids of
/// the rows read are kept, as FKs mostly point at rows of the same export;
/// others are looked up one by one (and kept too).
struct Fks {
    /// For each table that FKs point at: rid -> uuid (NULL: no such row).
    known: Vec<Option<ByRid>>,
    /// For each table, the SELECT of one row's uuid by rid.
    lookups: Vec<String>,
    /// For each table, whether `lsync_deferred` holds links of its rows:
    /// asked once per export (nothing writes it meanwhile), so that a NULL
    /// FK of a table without any costs no lookup.
    deferred: FxHashMap<i64, bool>,
}

impl Fks {
    fn new(tables: &[Table]) -> Fks {
        let mut known: Vec<_> = tables.iter().map(|_| None).collect();
        for t in tables {
            for target in t.fks.values() {
                if let Some(i) = tables.iter().position(|x| *x.name == **target) {
                    known[i] = Some(ByRid::default());
                }
            }
        }
        let lookups = tables
            .iter()
            .map(|t| format!("SELECT gid FROM {} WHERE rid = ?1", t.gids()))
            .collect();
        Fks {
            known,
            lookups,
            deferred: FxHashMap::default(),
        }
    }

    /// Row `rid` of table `ti`, whose uuid is `pk`, was read.
    fn read(&mut self, ti: usize, rid: i64, pk: &ValueRef<'_>) {
        if let Some(known) = &mut self.known[ti] {
            known.insert(rid, pk.clone().detach());
        }
    }

    /// The value `v` of FK column `col` of row `rid` of `source`, pointing
    /// at table `target`, as it travels: an id as the target row's uuid
    /// (NULL if it dangles); a NULL whose link is still deferred as the
    /// pending target uuid, so relays never lose a link; anything else as
    /// it is.
    fn resolve<'v>(
        &mut self,
        cache: &Cache,
        (source, col, rid): (&Table, &str, i64),
        target: usize,
        v: ValueRef<'v>,
    ) -> Result<ValueRef<'v>> {
        match v {
            ValueRef::Integer(id) => {
                let known = self.known[target].get_or_insert_default();
                if let Some(uuid) = known.get(id) {
                    return Ok(uuid.clone());
                }
                let uuid = one(cache, &self.lookups[target], &[id.into()])?;
                known.insert(id, uuid.clone());
                Ok(uuid)
            }
            ValueRef::Null if !self.any_deferred(cache, source.id)? => Ok(ValueRef::Null),
            ValueRef::Null => one(
                cache,
                "SELECT target_uuid FROM lsync_deferred WHERE tbl = ?1 AND rid = ?2 AND col = ?3",
                &[source.id.into(), rid.into(), col.into()],
            ),
            other => Ok(other),
        }
    }

    /// Whether `lsync_deferred` holds any link of table `tbl`'s rows.
    fn any_deferred(&mut self, cache: &Cache, tbl: i64) -> Result<bool> {
        if let Some(&any) = self.deferred.get(&tbl) {
            return Ok(any);
        }
        let any = !matches!(
            one(
                cache,
                "SELECT 1 FROM lsync_deferred WHERE tbl = ?1 LIMIT 1",
                &[tbl.into()],
            )?,
            ValueRef::Null
        );
        self.deferred.insert(tbl, any);
        Ok(any)
    }
}

/// One table's uuids by rid. Rows are read in rid order, so most rids
/// extend a run of consecutive ones, kept in a vector (compact, written in
/// order: no hashing, no cache misses); the others go to a map.
#[derive(Default)]
struct ByRid {
    /// The run's first rid, and the uuids from there on.
    start: i64,
    run: Vec<ValueRef<'static>>,
    rest: FxHashMap<i64, ValueRef<'static>>,
}

impl ByRid {
    /// A run shorter than this gives way to a new one that starts elsewhere.
    const SHORT_RUN: usize = 64;

    fn insert(&mut self, rid: i64, uuid: ValueRef<'static>) {
        let next = self.start.checked_add(self.run.len() as i64);
        if next == Some(rid) && !self.run.is_empty() {
            self.run.push(uuid);
        } else if self.run.len() < Self::SHORT_RUN && self.get(rid).is_none() {
            let start = std::mem::replace(&mut self.start, rid);
            let old = std::mem::replace(&mut self.run, vec![uuid]);
            self.rest.extend((start..).zip(old));
        } else {
            self.rest.insert(rid, uuid);
        }
    }

    fn get(&self, rid: i64) -> Option<&ValueRef<'static>> {
        let in_run = usize::try_from(rid.wrapping_sub(self.start)).ok();
        match in_run.and_then(|i| self.run.get(i)) {
            Some(uuid) => Some(uuid),
            None => self.rest.get(&rid),
        }
    }
}

/// The first column of the first row of `sql` (NULL if none).
fn one(cache: &Cache, sql: &str, params: &[Value]) -> Result<ValueRef<'static>> {
    cache.with(sql, params, |s| {
        Ok(match s.step()? {
            true => s.value_ref(0).compact().detach(),
            false => ValueRef::Null,
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_rid_finds_every_rid_in_runs_or_not() {
        let mut m = ByRid::default();
        let uuid = |rid: i64| ValueRef::Integer(rid * 10);
        // A short run, a long one elsewhere, rids out of order, a repeat,
        // negative and extreme rids.
        let rids: Vec<i64> = [5, 6, 7]
            .into_iter()
            .chain(100..300)
            .chain([50, 3, 301, 7, 299, -4, i64::MAX, i64::MIN])
            .chain(302..310)
            .collect();
        for &r in &rids {
            m.insert(r, uuid(r));
        }
        for &r in &rids {
            assert_eq!(m.get(r), Some(&uuid(r)), "rid {r}");
        }
        for r in [0, 4, 8, 99, 310, 1000, -5, i64::MAX - 1] {
            assert_eq!(m.get(r), None, "rid {r}");
        }
        assert!(m.run.len() >= 200, "the long run is kept as a run");
    }
}
