//! `lsync_apply(blob)`: applying a peer's changeset atomically.
//!
//! The whole changeset is checked before anything is written (format,
//! library, schema, clock drift), then applied inside one savepoint with
//! capture switched off for this connection, so remote changes are not
//! echoed as local ones. They are recorded in the change clock with their
//! own origin and HLC, so this database relays them.
//!
//! Device-owned rows take the owner's latest state; shared rows merge
//! last-writer-wins per column, ordered by (HLC, origin device UUID).
//! Tables are applied parents first; FK uuids are mapped to local ids in
//! memory or with one query per FK column; a missing target defers the link
//! (`lsync_deferred`) until the target arrives.

use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use lsync_wire::changeset::{Change, Changeset, Op};
use std::borrow::Cow;

use crate::catalog::{self, Mode, Table};
use crate::clock::{code_of, Clock};
use crate::conn::{CaptureOff, Conn};
use crate::error::{Error, Result};
use crate::ident::{q, qm};
use crate::ids::{self, IdMap};
use crate::sql::{Db, Stmt, Value};
use crate::{bail, fk, flush, schema, stability};

/// What an apply did, returned as JSON.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// Changes in the changeset.
    pub changes: i64,
    /// Changes that changed this database.
    pub applied: i64,
    /// Changes that lost to newer local state (or were already here).
    pub stale: i64,
    /// FK links left waiting for their target row.
    pub deferred: i64,
    /// Deferred links completed by this apply.
    pub resolved: i64,
    /// Changes to device-owned rows from a device that does not own them.
    pub refused: i64,
    /// Edits of shared rows that arrived before the row; applied when it comes.
    pub parked: i64,
    /// FK lookup queries run (at most one per FK column).
    pub fk_queries: i64,
}

/// Turns triggers off for the apply when every trigger on the tables it
/// touches is lsync's own (capture is off anyway): a trigger program per
/// inserted row is most of the cost of a bulk apply. Tables with app
/// triggers keep them firing, so the app's derived data stays right.
struct TriggersOff {
    db: Db,
    restore: Option<bool>,
}

impl TriggersOff {
    fn new(db: Db, names: &[&str]) -> Result<TriggersOff> {
        let json = serde_json::to_string(&names).map_err(|e| Error::msg(e.to_string()))?;
        // Temp triggers can be on main's tables too; names match as SQLite
        // matches them (a changeset may spell a table in another case).
        let foreign = db.query_i64(
            "SELECT count(*) FROM
               (SELECT name, tbl_name FROM main.sqlite_schema WHERE type = 'trigger'
                UNION ALL SELECT name, tbl_name FROM temp.sqlite_schema WHERE type = 'trigger')
             WHERE name NOT LIKE 'lsync\\_%' ESCAPE '\\'
               AND tbl_name COLLATE NOCASE IN (SELECT value FROM json_each(?1))",
            &[json.into()],
        )?;
        let restore = if foreign == Some(0) {
            Some(db.set_triggers(false)?)
        } else {
            None
        };
        Ok(TriggersOff { db, restore })
    }
}

impl Drop for TriggersOff {
    fn drop(&mut self) {
        if let Some(prev) = self.restore {
            let _ = self.db.set_triggers(prev);
        }
    }
}

pub fn apply(db: Db, conn: &Conn, blob: &[u8]) -> Result<Report> {
    schema::ensure(db)?;
    let cs = Changeset::decode(blob, schema::max_body(db))
        .map_err(|e| Error::msg(format!("lsync_apply: {e}; nothing was applied")))?;
    let library = schema::get_text(db, "library_id")?;
    if cs.library_id != library {
        bail!(
            "lsync_apply: the changeset belongs to library {}, this database to library {library}; nothing was applied",
            cs.library_id
        );
    }
    check_schema(db, &cs)?;
    check_drift(
        db,
        cs.changes.iter().map(|c| c.hlc).max(),
        "lsync_apply",
        "changeset",
    )?;
    stability::check_fresh(db, cs.fence.as_ref(), "lsync_apply", "changeset")?;
    let _off = CaptureOff::new(conn);
    let names: Vec<&str> = cs.tables.iter().map(|t| t.name.as_str()).collect();
    let _triggers = TriggersOff::new(db, &names)?;
    db.savepoint("lsync_apply", || {
        // Fold local captures first: rows above the high-water mark must be
        // recorded as local before remote rows are inserted above them.
        flush::flush(db)?;
        db.exec("PRAGMA defer_foreign_keys = ON")?;
        let tables: HashMap<Arc<str>, Table> = catalog::load_all(db)?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut a = Applier::new(db, tables)?;
        a.run(&cs)?;
        stability::record_ack(db, cs.fence.as_ref())?;
        Ok(a.report)
    })
}

/// Each described table is tracked here (its name matched as SQLite
/// matches names, without regard to letter case), described once, in the
/// same mode, with columns that exist here, each named once. Statements are
/// cached per table and column set and bind by position, so one table
/// must have one column order in a changeset.
fn check_schema(db: Db, cs: &Changeset) -> Result<()> {
    let mut described = HashSet::default();
    for d in &cs.tables {
        let Some(t) = catalog::load(db, &d.name)? else {
            bail!(
                "lsync_apply: schema mismatch: table '{}' is not tracked here; nothing was applied",
                d.name
            );
        };
        if !described.insert(t.id) {
            bail!(
                "lsync_apply: schema mismatch: the changeset describes table '{}' twice; nothing was applied",
                t.name
            );
        }
        let mut names = HashSet::default();
        if let Some(c) = d
            .columns
            .iter()
            .find(|c| !names.insert(c.to_ascii_lowercase()))
        {
            bail!(
                "lsync_apply: schema mismatch: the changeset names column '{}.{c}' twice; nothing was applied",
                d.name
            );
        }
        if t.mode.as_str() != d.mode {
            bail!(
                "lsync_apply: schema mismatch: '{}' is '{}' here but '{}' at the sender; nothing was applied",
                d.name,
                t.mode.as_str(),
                d.mode
            );
        }
        if let Some(c) = d
            .columns
            .iter()
            .find(|c| !t.columns.iter().any(|x| **x == ***c))
        {
            bail!(
                "lsync_apply: schema mismatch: column '{}.{c}' is missing here; nothing was applied",
                d.name
            );
        }
    }
    Ok(())
}

/// Changes read from a source that is not a changeset (a snapshot), applied
/// batch after batch within the caller's savepoint: `next` yields batches
/// until it returns `None`. The caller has checked library and schema.
pub fn apply_stream(
    db: Db,
    conn: &Conn,
    mut next: impl FnMut() -> Result<Option<Changeset>>,
) -> Result<Report> {
    let _off = CaptureOff::new(conn);
    let tables: HashMap<Arc<str>, Table> = catalog::load_all(db)?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let names: Vec<&str> = tables.keys().map(|n| &**n).collect();
    let _triggers = TriggersOff::new(db, &names)?;
    flush::flush(db)?;
    db.exec("PRAGMA defer_foreign_keys = ON")?;
    let mut total = Report::default();
    while let Some(cs) = next()? {
        let mut a = Applier::new(db, tables.clone())?;
        a.run(&cs)?;
        total.add(&a.report);
    }
    Ok(total)
}

impl Report {
    fn add(&mut self, r: &Report) {
        self.changes += r.changes;
        self.applied += r.applied;
        self.stale += r.stale;
        self.deferred += r.deferred;
        self.resolved += r.resolved;
        self.refused += r.refused;
        self.parked += r.parked;
        self.fk_queries += r.fk_queries;
    }
}

/// Refuses HLCs more than the allowed drift ahead of this device's clock;
/// `func` and `what` name the caller and where the HLCs came from.
pub fn check_drift(db: Db, max: Option<i64>, func: &str, what: &str) -> Result<()> {
    let Some(max) = max else {
        return Ok(());
    };
    if max > lsync_wire::hlc::MAX_ACCEPTED {
        bail!(
            "{func}: the {what} holds HLC {max} ({}), beyond the range of HLCs lsync accepts \
             (up to {}): no clock runs that far ahead, so it is corrupt or hostile; refusing it, \
             nothing was applied",
            lsync_wire::hlc::to_text(max),
            lsync_wire::hlc::to_text(lsync_wire::hlc::MAX_ACCEPTED)
        );
    }
    let drift_ms = schema::get_i64(db, "max_drift_ms")?.max(0);
    let wall = lsync_wire::hlc::wall();
    let limit = wall.saturating_add(lsync_wire::hlc::from_millis(drift_ms as u64));
    if max > limit {
        bail!(
            "{func}: the {what} holds HLC {} which is more than {drift_ms} ms ahead of this \
             device's clock ({}); refusing it, nothing was applied. Check the sender's clock, or \
             raise max_drift_ms in lsync_config",
            lsync_wire::hlc::to_text(max),
            lsync_wire::hlc::to_text(wall)
        );
    }
    Ok(())
}

/// Column values ready to write, FK uuids already mapped to local ids.
type LocalValues<'c> = Vec<(&'c Arc<str>, Cow<'c, Value>)>;
/// An FK link to complete later: (column, target table, target uuid).
type Link = (Arc<str>, String, Value);

/// A clock for LWW ordering: (HLC, origin device UUID).
type Clk = (i64, Arc<str>);

/// Consecutive rows from one origin at one HLC, recorded as one range:
/// new rows, or existing rows whose old coverage it replaces.
struct Run {
    tbl: i64,
    lo: i64,
    hi: i64,
    hlc: i64,
    origin: i64,
    op: i64,
    replace: bool,
}

struct Applier {
    db: Db,
    clock: Clock,
    tables: HashMap<Arc<str>, Table>,
    report: Report,
    origin_idx: HashMap<Arc<str>, i64>,
    idx_origin: HashMap<i64, Arc<str>>,
    /// uuid -> local rowid, per table, for rows touched by this changeset.
    rids: HashMap<Arc<str>, IdMap<i64>>,
    tombs: HashMap<Arc<str>, IdMap<Clk>>,
    /// Tables with parked edits (edits that arrived before their row).
    parked: HashSet<i64>,
    /// The last origin looked up (changes from one device share it).
    last_origin: Option<(Arc<str>, i64)>,
    run: Option<Run>,
    inserts: HashMap<(i64, u64), Stmt>,
    updates: HashMap<(i64, u64), Stmt>,
    reads: HashMap<(i64, u64), Stmt>,
    touched: HashSet<Arc<str>>,
}

fn check_id(c: &Change) -> Result<()> {
    if ids::is_id(&c.pk) {
        return Ok(());
    }
    bail!(
        "lsync_apply: a change to '{}' has a row id that is neither text nor blob; nothing was applied",
        c.tbl
    )
}

impl Applier {
    fn new(db: Db, tables: HashMap<Arc<str>, Table>) -> Result<Applier> {
        Ok(Applier {
            db,
            clock: Clock::open(db)?,
            tables,
            report: Report::default(),
            origin_idx: HashMap::default(),
            idx_origin: HashMap::default(),
            rids: HashMap::default(),
            last_origin: None,
            parked: HashSet::default(),
            tombs: HashMap::default(),
            run: None,
            inserts: HashMap::default(),
            updates: HashMap::default(),
            reads: HashMap::default(),
            touched: HashSet::default(),
        })
    }

    fn idx(&mut self, origin: &Arc<str>) -> Result<i64> {
        if let Some((o, i)) = &self.last_origin {
            if Arc::ptr_eq(o, origin) {
                return Ok(*i);
            }
        }
        if let Some(i) = self.origin_idx.get(origin) {
            self.last_origin = Some((origin.clone(), *i));
            return Ok(*i);
        }
        let i = schema::device_idx(self.db, origin)?;
        self.origin_idx.insert(origin.clone(), i);
        self.idx_origin.insert(i, origin.clone());
        Ok(i)
    }

    fn uuid_of(&mut self, idx: i64) -> Result<Arc<str>> {
        if let Some(u) = self.idx_origin.get(&idx) {
            return Ok(u.clone());
        }
        let u: Arc<str> = Arc::from(schema::device_uuid(self.db, idx)?);
        self.idx_origin.insert(idx, u.clone());
        self.origin_idx.insert(u.clone(), idx);
        Ok(u)
    }

    fn clk(&mut self, (hlc, origin): (i64, i64)) -> Result<Clk> {
        Ok((hlc, self.uuid_of(origin)?))
    }

    fn run(&mut self, cs: &Changeset) -> Result<()> {
        self.report.changes = cs.changes.len() as i64;
        // By tracked name: a changeset may spell one in another letter case.
        let names: Vec<Arc<str>> = self.tables.keys().cloned().collect();
        let mut spelled: HashMap<&str, &str> = HashMap::default();
        let mut groups: HashMap<&str, Vec<&Change>> = HashMap::default();
        for c in &cs.changes {
            let name = match spelled.get(&*c.tbl) {
                Some(name) => *name,
                None => {
                    let Some(name) = names.iter().find(|n| n.eq_ignore_ascii_case(&c.tbl)) else {
                        bail!(
                            "lsync_apply: a change is for table '{}', which is not tracked here; nothing was applied",
                            c.tbl
                        );
                    };
                    spelled.insert(&c.tbl, name);
                    name
                }
            };
            groups.entry(name).or_default().push(c);
        }
        let order = parents_first(&self.tables);
        for name in &order {
            let Some(list) = groups.get(&**name) else {
                continue;
            };
            let t = self.tables[name].clone();
            self.prepare_table(&t, list, &groups)?;
            for c in list.iter().filter(|c| c.op != Op::Delete) {
                self.upsert(&t, c)?;
            }
        }
        // Children before parents, so FK checks see a consistent state.
        for name in order.iter().rev() {
            let Some(list) = groups.get(&**name) else {
                continue;
            };
            let t = self.tables[name].clone();
            for c in list.iter().filter(|c| c.op == Op::Delete) {
                self.delete(&t, c)?;
            }
        }
        self.end_run()?;
        let all: Vec<Table> = self.tables.values().cloned().collect();
        self.report.resolved += fk::resolve(self.db, &all)?;
        for name in &self.touched {
            self.db.run(
                &format!(
                    "UPDATE lsync_tables SET hwm = (SELECT coalesce(max(rowid), 0) FROM {})
                     WHERE name = ?1",
                    qm(name)
                ),
                &[(**name).into()],
            )?;
        }
        self.clock.save()?;
        if let Some(max) = cs.changes.iter().map(|c| c.hlc).max() {
            self.db.run(
                "UPDATE lsync_config SET value = max(value, ?1) WHERE key = 'hlc'",
                &[max.into()],
            )?;
        }
        let me = schema::get_text(self.db, "device_id")?;
        if cs.changes.iter().any(|c| *c.origin != *me) {
            schema::set(self.db, "library_locked", 1.into())?;
        }
        Ok(())
    }

    /// Set-based lookups for one table's changes: existing rows by uuid,
    /// tombstones, and the FK targets of every FK column.
    fn prepare_table(
        &mut self,
        t: &Table,
        list: &[&Change],
        groups: &HashMap<&str, Vec<&Change>>,
    ) -> Result<()> {
        let has_rows = self.db.query_i64(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", qm(&t.name)),
            &[],
        )? == Some(1);
        let rids = self.rids.entry(t.name.clone()).or_default();
        rids.reserve(list.len());
        if has_rows {
            let keys: Vec<&Value> = list.iter().map(|c| &c.pk).collect();
            rids.extend(fk::rids_of(self.db, t, &keys)?);
        }
        self.touched.insert(t.name.clone());
        if self.db.query_i64(
            "SELECT EXISTS (SELECT 1 FROM lsync_parked WHERE tbl = ?1)",
            &[t.id.into()],
        )? == Some(1)
        {
            self.parked.insert(t.id);
        }
        let mut tombs = IdMap::default();
        let mut s = self.db.prepare(
            "SELECT uuid, hlc, origin FROM lsync_clock WHERE tbl = ?1 AND uuid IS NOT NULL",
        )?;
        s.bind(1, &t.id.into())?;
        let mut raw = Vec::new();
        while s.step()? {
            raw.push((s.value(0), s.i64(1), s.i64(2)));
        }
        drop(s);
        for (k, hlc, origin) in raw {
            let clk = self.clk((hlc, origin))?;
            tombs.insert(&k, clk);
        }
        self.tombs.insert(t.name.clone(), tombs);

        for (col, target) in &t.fks {
            let Some(tt) = self.tables.get(target.as_str()) else {
                continue;
            };
            // Targets that arrive in this same changeset are mapped in memory.
            let mut incoming: IdMap<()> = IdMap::default();
            for c in groups.get(target.as_str()).into_iter().flatten() {
                incoming.insert(&c.pk, ());
            }
            let known = self.rids.get(target.as_str());
            let mut seen: IdMap<()> = IdMap::default();
            let mut missing: Vec<&Value> = Vec::new();
            for (_, v) in list
                .iter()
                .flat_map(|c| c.data.iter())
                .filter(|(k, _)| **k == **col)
            {
                if ids::is_id(v)
                    && !incoming.contains(v)
                    && known.is_none_or(|m| !m.contains(v))
                    && !seen.contains(v)
                {
                    seen.insert(v, ());
                    missing.push(v);
                }
            }
            if missing.is_empty() {
                continue;
            }
            let found = fk::rids_of(self.db, tt, &missing)?;
            self.report.fk_queries += 1;
            let name = tt.name.clone();
            self.rids.entry(name).or_default().extend(found);
        }
        Ok(())
    }

    /// Column values with FK uuids mapped to local ids; unresolved links are
    /// returned separately and stored as NULL until their target arrives.
    fn local_values<'c>(&self, t: &Table, c: &'c Change) -> (LocalValues<'c>, Vec<Link>) {
        let mut vals = Vec::with_capacity(c.data.len());
        let mut deferred = Vec::new();
        for (col, v) in &c.data {
            let target = if t.fks.is_empty() {
                None
            } else {
                t.fks
                    .get(&**col)
                    .filter(|n| self.tables.contains_key(n.as_str()))
            };
            let local = match target {
                Some(target) if ids::is_id(v) => {
                    match self.rids.get(target.as_str()).and_then(|m| m.get(v)) {
                        Some(rid) => Cow::Owned(Value::Integer(*rid)),
                        None => {
                            deferred.push((col.clone(), target.clone(), v.clone()));
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

    fn upsert(&mut self, t: &Table, c: &Change) -> Result<()> {
        check_id(c)?;
        let key = &c.pk;
        let (vals, mut deferred) = self.local_values(t, c);
        let existing = self.rids.get(&t.name).and_then(|m| m.get(key)).copied();
        let origin = self.idx(&c.origin)?;
        let theirs: Clk = (c.hlc, c.origin.clone());
        let mut inserted = false;
        let rid = match existing {
            Some(rid) => {
                // The clock lookups below must see a pending run that holds rid.
                if self
                    .run
                    .as_ref()
                    .is_some_and(|r| r.tbl == t.id && (r.lo..=r.hi).contains(&rid))
                {
                    self.end_run()?;
                }
                let base = self
                    .clock
                    .row_clock(t.id, rid)?
                    .unwrap_or((0, self.clock.self_idx));
                let written: Vec<Arc<str>> = match t.mode {
                    Mode::DeviceOwned => {
                        if base.1 != origin {
                            self.report.refused += 1;
                            return Ok(());
                        }
                        if c.hlc <= base.0 {
                            Vec::new()
                        } else {
                            self.write(t, rid, &vals)?;
                            self.extend_run(t.id, rid, c.hlc, origin, code_of(c.op), true)?;
                            vals.iter().map(|(c, _)| (*c).clone()).collect()
                        }
                    }
                    Mode::Shared => {
                        let clocks = self.column_clocks(t, rid, base)?;
                        let winners: Vec<(&Arc<str>, Cow<Value>)> = vals
                            .iter()
                            .filter(|(col, _)| clocks.get(*col).is_none_or(|mine| theirs > *mine))
                            .cloned()
                            .collect();
                        self.write(t, rid, &winners)?;
                        // A newer re-insert also renews the row's creation
                        // clock, which is what a delete is compared with.
                        let base = self.clk(base)?;
                        if c.op == Op::Insert && theirs > base {
                            self.clock.rebase_row(t.id, rid, c.hlc, origin)?;
                        }
                        for (col, _) in &winners {
                            self.clock.cover_column(t.id, rid, col, c.hlc, origin)?;
                        }
                        winners.into_iter().map(|(c, _)| c.clone()).collect()
                    }
                };
                if written.is_empty() {
                    self.report.stale += 1;
                    return Ok(());
                }
                for col in written.iter().filter(|c| t.fks.contains_key(&***c)) {
                    fk::forget(&self.clock.cache, t.id, rid, Some(col))?;
                }
                deferred.retain(|(col, _, _)| written.contains(col));
                rid
            }
            None => {
                let tomb = self.tombs.get(&t.name).and_then(|m| m.get(key)).cloned();
                if t.mode == Mode::Shared && c.op != Op::Insert {
                    // An edit of a row that is not here: it lost to the
                    // row's delete, or it came before the row (out-of-order
                    // delivery) and waits for it.
                    if tomb.is_some() {
                        self.report.stale += 1;
                    } else {
                        self.park(t, c)?;
                    }
                    return Ok(());
                }
                if let Some(tc) = &tomb {
                    // Only a newer insert brings a deleted row back.
                    let newer = match t.mode {
                        Mode::DeviceOwned => c.hlc > tc.0,
                        Mode::Shared => theirs > *tc,
                    };
                    if !newer {
                        self.report.stale += 1;
                        return Ok(());
                    }
                    self.clock.drop_tombstone(t.id, &c.pk)?;
                    if let Some(m) = self.tombs.get_mut(&t.name) {
                        m.remove(key);
                    }
                }
                let rid = self.insert(t, &c.pk, &vals)?;
                self.extend_run(t.id, rid, c.hlc, origin, code_of(c.op), false)?;
                self.rids
                    .entry(t.name.clone())
                    .or_default()
                    .insert(key, rid);
                inserted = true;
                rid
            }
        };
        self.report.applied += 1;
        for (col, target, target_uuid) in deferred {
            fk::defer(self.db, t, rid, &c.pk, &col, &target, &target_uuid)?;
            self.report.deferred += 1;
        }
        // Parked edits are newer news about the row: they go on top of the
        // insert, deferred links included (a parked FK edit replaces the
        // insert's waiting link, never the other way round).
        if inserted && self.parked.contains(&t.id) {
            self.unpark(t, &c.pk)?;
        }
        Ok(())
    }

    /// Keeps the edits of a shared row that has not arrived yet; the newest
    /// value per column wins, as it would on the row.
    fn park(&mut self, t: &Table, c: &Change) -> Result<()> {
        for (col, v) in &c.data {
            self.clock.cache.run(
                "INSERT INTO lsync_parked(tbl, uuid, col, value, hlc, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(tbl, uuid, col) DO UPDATE SET value = excluded.value,
                   hlc = excluded.hlc, origin = excluded.origin
                 WHERE excluded.hlc > hlc OR (excluded.hlc = hlc AND excluded.origin > origin)",
                &[
                    t.id.into(),
                    c.pk.clone(),
                    (**col).into(),
                    v.clone(),
                    c.hlc.into(),
                    (*c.origin).into(),
                ],
            )?;
        }
        self.parked.insert(t.id);
        self.report.parked += 1;
        Ok(())
    }

    /// Applies the parked edits of a row that has just arrived.
    fn unpark(&mut self, t: &Table, pk: &Value) -> Result<()> {
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
        for (col, value, hlc, origin) in rows {
            let edit = Change {
                seq: 0,
                hlc,
                origin: Arc::from(origin),
                tbl: t.name.clone(),
                pk: pk.clone(),
                op: Op::Update,
                data: vec![(Arc::from(col), value)],
            };
            self.upsert(t, &edit)?;
        }
        Ok(())
    }

    /// Each column's clock: its own entry, else the row entry's.
    fn column_clocks(
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

    fn delete(&mut self, t: &Table, c: &Change) -> Result<()> {
        check_id(c)?;
        let key = &c.pk;
        let origin = self.idx(&c.origin)?;
        let theirs: Clk = (c.hlc, c.origin.clone());
        let existing = self.rids.get(&t.name).and_then(|m| m.get(key)).copied();
        self.end_run()?;
        let Some(rid) = existing else {
            if self.parked.contains(&t.id) {
                self.clock.cache.run(
                    "DELETE FROM lsync_parked WHERE tbl = ?1 AND uuid = ?2",
                    &[t.id.into(), c.pk.clone()],
                )?;
            }
            let tomb = self.tombs.get(&t.name).and_then(|m| m.get(key));
            if tomb.is_some_and(|tc| theirs <= *tc) {
                self.report.stale += 1;
            } else {
                self.clock.tombstone(t.id, c.pk.clone(), c.hlc, origin)?;
                self.tombs
                    .entry(t.name.clone())
                    .or_default()
                    .insert(key, theirs);
                self.report.applied += 1;
            }
            return Ok(());
        };
        let base = self
            .clock
            .row_clock(t.id, rid)?
            .unwrap_or((0, self.clock.self_idx));
        match t.mode {
            Mode::DeviceOwned => {
                if base.1 != origin {
                    self.report.refused += 1;
                    return Ok(());
                }
                if c.hlc <= base.0 {
                    self.report.stale += 1;
                    return Ok(());
                }
            }
            Mode::Shared => {
                // A delete wins over the row's creation (insert or newer
                // re-insert) when it is newer, whatever later column edits.
                let created = self.clk(base)?;
                if theirs <= created {
                    self.report.stale += 1;
                    return Ok(());
                }
            }
        }
        let all: Vec<&Table> = self.tables.values().collect();
        fk::detach_referrers(self.db, &all, t, rid, &c.pk)?;
        self.db.run(
            &format!("DELETE FROM {} WHERE rowid = ?1", qm(&t.name)),
            &[rid.into()],
        )?;
        self.clock.uncover(t.id, rid)?;
        self.clock.drop_columns(t.id, rid)?;
        fk::forget(&self.clock.cache, t.id, rid, None)?;
        self.clock.tombstone(t.id, c.pk.clone(), c.hlc, origin)?;
        if let Some(m) = self.rids.get_mut(&t.name) {
            m.remove(key);
        }
        self.tombs
            .entry(t.name.clone())
            .or_default()
            .insert(key, theirs);
        self.touched.insert(t.name.clone());
        self.report.applied += 1;
        Ok(())
    }

    fn bit(t: &Table, col: &Arc<str>) -> u64 {
        t.columns
            .iter()
            .position(|x| x == col)
            .map_or(0, |i| 1 << i)
    }

    fn mask(t: &Table, vals: &[(&Arc<str>, Cow<Value>)]) -> u64 {
        vals.iter().fold(0, |m, (c, _)| m | Self::bit(t, c))
    }

    fn insert(&mut self, t: &Table, pk: &Value, vals: &[(&Arc<str>, Cow<Value>)]) -> Result<i64> {
        let mask = Self::mask(t, vals);
        let db = self.db;
        let stmt = cached(&mut self.inserts, (t.id, mask), || {
            let cols: Vec<String> = vals.iter().map(|(c, _)| q(c)).collect();
            let marks: Vec<String> = (0..=vals.len()).map(|i| format!("?{}", i + 1)).collect();
            // OR FAIL: no statement journal per row; the savepoint around the
            // apply still makes it all-or-nothing.
            db.prepare(&format!(
                "INSERT OR FAIL INTO {t}({u}{sep}{cols}) VALUES ({marks})",
                t = qm(&t.name),
                u = q(&t.uuid_col),
                sep = if cols.is_empty() { "" } else { ", " },
                cols = cols.join(", "),
                marks = marks.join(", ")
            ))
        })?;
        let r = stmt.run_borrowed(std::iter::once(pk).chain(vals.iter().map(|(_, v)| v.as_ref())));
        r.map_err(|e| {
            Error::msg(format!(
                "lsync_apply: inserting into '{}': {e}; nothing was applied",
                t.name
            ))
        })?;
        Ok(db.last_insert_rowid())
    }

    fn write(&mut self, t: &Table, rid: i64, vals: &[(&Arc<str>, Cow<Value>)]) -> Result<()> {
        if vals.is_empty() {
            return Ok(());
        }
        // Write only the columns whose value changes: an unchanged indexed
        // or FK column then costs no index update and no FK check.
        let db = self.db;
        let read = cached(&mut self.reads, (t.id, Self::mask(t, vals)), || {
            let cols: Vec<String> = vals.iter().map(|(c, _)| q(c)).collect();
            db.prepare(&format!(
                "SELECT {} FROM {} WHERE rowid = ?1",
                cols.join(", "),
                qm(&t.name)
            ))
        })?;
        read.bind(1, &rid.into())?;
        let current: Vec<Value> = if read.step()? {
            (0..vals.len()).map(|i| read.value(i)).collect()
        } else {
            Vec::new()
        };
        read.reset();
        let changed: Vec<&(&Arc<str>, Cow<Value>)> = vals
            .iter()
            .enumerate()
            .filter(|(i, (_, v))| current.get(*i) != Some(v.as_ref()))
            .map(|(_, cv)| cv)
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let mask = changed.iter().fold(0, |m, (c, _)| m | Self::bit(t, c));
        let stmt = cached(&mut self.updates, (t.id, mask), || {
            let sets: Vec<String> = changed
                .iter()
                .enumerate()
                .map(|(i, (c, _))| format!("{} = ?{}", q(c), i + 2))
                .collect();
            db.prepare(&format!(
                "UPDATE OR FAIL {} SET {} WHERE rowid = ?1",
                qm(&t.name),
                sets.join(", ")
            ))
        })?;
        let rid = Value::Integer(rid);
        stmt.run_borrowed(std::iter::once(&rid).chain(changed.iter().map(|(_, v)| v.as_ref())))
            .map_err(|e| {
                Error::msg(format!(
                    "lsync_apply: updating '{}': {e}; nothing was applied",
                    t.name
                ))
            })
    }

    fn extend_run(
        &mut self,
        tbl: i64,
        rid: i64,
        hlc: i64,
        origin: i64,
        op: i64,
        replace: bool,
    ) -> Result<()> {
        if let Some(r) = &mut self.run {
            if r.tbl == tbl
                && r.hi + 1 == rid
                && r.hlc == hlc
                && r.origin == origin
                && r.op == op
                && r.replace == replace
            {
                r.hi = rid;
                return Ok(());
            }
        }
        self.end_run()?;
        self.run = Some(Run {
            tbl,
            lo: rid,
            hi: rid,
            hlc,
            origin,
            op,
            replace,
        });
        Ok(())
    }

    fn end_run(&mut self) -> Result<()> {
        if let Some(r) = self.run.take() {
            if r.replace {
                self.clock
                    .cover_rows(r.tbl, r.lo, r.hi, r.op, r.hlc, r.origin)?;
            } else {
                self.clock.add(
                    r.tbl,
                    Some((r.lo, r.hi)),
                    None,
                    r.op,
                    r.hlc,
                    r.origin,
                    Value::Null,
                )?;
            }
        }
        Ok(())
    }
}

/// The statement cached under `key`, prepared by `prepare` the first time.
/// Statements bind by position: within one apply every change of a table
/// lists its columns in the changeset's order, so a column set fixes it
/// (`check_schema` refuses a table described twice, or a column named twice).
fn cached(
    cache: &mut HashMap<(i64, u64), Stmt>,
    key: (i64, u64),
    prepare: impl FnOnce() -> Result<Stmt>,
) -> Result<&mut Stmt> {
    match cache.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(prepare()?)),
    }
}

/// Tracked tables ordered so that FK targets come before the tables that
/// point at them (self-references and cycles are left to deferral).
fn parents_first(tables: &HashMap<Arc<str>, Table>) -> Vec<Arc<str>> {
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
