//! Merging changes into this database, one change at a time, under the
//! table's policy: device-owned rows take their owner's latest state
//! (`owned`); shared rows merge last-writer-wins per column, ordered by
//! (HLC, origin device UUID) (`shared`). Edits that come before their row
//! are parked (`park`); FK links whose target is missing are deferred
//! (`links`); rows and clock entries are written in `write`. Tables are
//! merged parents first, so FK targets are usually here before their
//! referrers.

mod batch;
mod cascade;
mod cols;
mod costly;
mod delete;
mod fresh;
mod join;
mod keys;
mod links;
mod owned;
mod park;
mod passes;
mod prepare;
mod quarantine;
mod shared;
mod unite;
mod walk;
mod write;

use std::sync::Arc;

use lsync_wire::changeset::{Change, Changeset, Op};
use lsync_wire::report::ApplyReport;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::catalog::{Mode, Table};
use crate::clock::{code_of, Clock};
use crate::error::Result;
use crate::ids::{self, IdMap};
use crate::sql::{Db, Stmt, Value};
use crate::{bail, fk, schema};

use links::parents_first;
use unite::Fact;
use write::Run;

/// A clock for LWW ordering: (HLC, origin device UUID).
type Clk = (i64, Arc<str>);

pub use fresh::Fresh;
pub use quarantine::{count as conflicts, drop as drop_conflict, retry as retry_conflict};

/// Merges one changeset's changes (the caller has checked it, and holds the
/// savepoint); returns what it did.
///
/// A change that SQLite refuses for a constraint is quarantined: the merge
/// is rolled back and run again without it, so the rest of the changeset
/// applies. Nothing conflicts on the fast path, which costs one savepoint;
/// each refused change costs one more pass. Inside a running statement no
/// savepoint can be taken, and a refusal fails the whole merge instead.
///
/// `quiet`: no trigger fires on the connection, so new rows may be
/// inserted many to a statement (`batch`). `unsaved`: no savepoint of its
/// own, and any refusal fails it with `Error::Unsaved` (`passes::unsaved`).
pub fn merge(
    db: Db,
    tables: HashMap<Arc<str>, Table>,
    cs: &Changeset,
    fresh: &Fresh,
    (quiet, unsaved): (bool, bool),
) -> Result<ApplyReport> {
    let (a, refused) = match unsaved {
        true => (passes::unsaved(db, &tables, cs, fresh, quiet)?, Vec::new()),
        false => passes::passes(db, &tables, cs, fresh, quiet)?,
    };
    let mut report = a.report;
    report.retried += quarantine::retry_after(db, &tables, &a.touched)?;
    if report.retried > 0 {
        // Retried changes insert rows that `fresh` did not see.
        fresh.forget_all();
    }
    for (i, e) in &refused {
        quarantine::record(db, &tables, &cs.changes[*i], e)?;
    }
    report.quarantined += refused.len() as i64;
    Ok(report)
}

/// What a table's policy makes of a change to a row that is here.
enum Outcome {
    /// A device-owned row of another device.
    Refused,
    /// The row's own state is as new or newer.
    Stale,
    /// These columns took the change (none: stale).
    Written(Vec<Arc<str>>),
}

/// One changeset's merge: what was looked up once for all its changes, the
/// statements it prepared, and the run of rows pending as one clock entry.
struct Applier {
    db: Db,
    clock: Clock,
    tables: HashMap<Arc<str>, Table>,
    report: ApplyReport,
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
    /// Changes (by index in the changeset) this pass leaves out: refused
    /// by an earlier pass, they are quarantined.
    skip: HashSet<usize>,
    /// The change being merged, to which an error belongs.
    current: Option<usize>,
    /// FK `ON DELETE` actions, per table id and column (`cascade`).
    actions: HashMap<i64, HashMap<String, cascade::Action>>,
    /// Rows being removed with their FK target, so FK cycles end.
    removing: HashSet<(i64, i64)>,
    /// The FK columns that point at each table (`cascade`).
    referrers: HashMap<i64, std::rc::Rc<Vec<cascade::Referrer>>>,
    /// UNIQUE keys of shared tables, read when a write clashes (`keys`).
    keys: keys::Keys,
    /// Whether the library has merged rows at all (`lsync_alias`).
    any_alias: bool,
    aliases: HashMap<i64, std::rc::Rc<unite::Aliases>>,
    /// Clashes found by earlier passes, merged before this one starts.
    facts: Vec<Fact>,
    /// Tables where they were found: their new rows are checked for a
    /// clash before they are written (`keys`).
    clashed: HashSet<i64>,
    /// Tables empty when the apply began, and the keys it inserted.
    fresh: Fresh,
    /// Whether `lsync_deferred` may hold links: while it holds none, a
    /// write has no pending link to forget. Set by whatever defers one.
    links_may_exist: bool,
    /// Whether new rows may be batched in this pass, the tables whose new
    /// rows are, the rows queued, and the statements that insert them.
    batching: bool,
    bulk: HashSet<i64>,
    batch: Option<batch::Batch>,
    /// The value slots of the last batch: the next one overwrites them in
    /// place, reusing their text buffers (`batch::Slots`).
    spare: batch::Slots,
    batches: HashMap<(i64, u64, usize), Stmt>,
    /// A batch failed: the pass must run again without.
    unbatch: bool,
    /// Whether the database has `sqlite_sequence` (AUTOINCREMENT).
    has_sequence: Option<bool>,
    /// The rowid the next new row of a table gets, known since its batch.
    next_rid: Option<(i64, i64)>,
    /// Parameters per statement, at most (rows per batch follow from it).
    max_params: usize,
    /// Which columns of a column set of a table are costly to write
    /// (`write::costly_at`).
    costly: HashMap<(i64, u64), std::rc::Rc<[bool]>>,
    /// The changeset's columns, by the address of their names.
    cols: cols::Cols,
}

impl Applier {
    fn new(
        db: Db,
        tables: HashMap<Arc<str>, Table>,
        skip: HashSet<usize>,
        facts: Vec<Fact>,
        fresh: Fresh,
    ) -> Result<Applier> {
        let any_alias = db.query_i64("SELECT EXISTS (SELECT 1 FROM lsync_alias)", &[])? == Some(1);
        let links_may_exist =
            db.query_i64("SELECT EXISTS (SELECT 1 FROM lsync_deferred)", &[])? == Some(1);
        let clashed = facts
            .iter()
            .filter_map(|f| tables.get(&f.tbl).map(|t| t.id))
            .collect();
        Ok(Applier {
            db,
            clock: Clock::open(db)?,
            tables,
            report: ApplyReport::default(),
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
            skip,
            current: None,
            actions: HashMap::default(),
            removing: HashSet::default(),
            referrers: HashMap::default(),
            keys: HashMap::default(),
            any_alias,
            aliases: HashMap::default(),
            facts,
            clashed,
            fresh,
            links_may_exist,
            batching: false,
            bulk: HashSet::default(),
            batch: None,
            spare: batch::Slots::default(),
            batches: HashMap::default(),
            unbatch: false,
            has_sequence: None,
            next_rid: None,
            max_params: db.max_params(),
            costly: HashMap::default(),
            cols: cols::Cols::default(),
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
        for f in std::mem::take(&mut self.facts) {
            self.current = f.at;
            if let Some(t) = self.tables.get(&f.tbl).cloned() {
                let hlc = self.clock.hlc()?;
                let me = self.clock.self_idx;
                self.unite(&t, &f.a, &f.b, hlc, me)?;
            }
        }
        self.current = None;
        // By tracked name: a changeset may spell one in another letter case.
        let names: Vec<Arc<str>> = self.tables.keys().cloned().collect();
        let mut spelled: HashMap<&str, &str> = HashMap::default();
        let mut groups: HashMap<&str, Vec<&Change>> = HashMap::default();
        // A run of changes to one table shares its name (`Arc`): it is
        // looked up once per run, not hashed twice per change.
        let mut run: Option<(&Arc<str>, &str)> = None;
        let mut list: Vec<&Change> = Vec::new();
        for (i, c) in cs.changes.iter().enumerate() {
            if !self.skip.is_empty() && self.skip.contains(&i) {
                continue;
            }
            if run.is_some_and(|(tbl, _)| Arc::ptr_eq(tbl, &c.tbl)) {
                list.push(c);
                continue;
            }
            if let Some((_, name)) = run {
                groups.entry(name).or_default().append(&mut list);
            }
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
            run = Some((&c.tbl, name));
            list.push(c);
        }
        if let Some((_, name)) = run {
            groups.entry(name).or_default().append(&mut list);
        }
        let order = parents_first(&self.tables);
        for name in &order {
            let Some(list) = groups.get(&**name) else {
                continue;
            };
            let t = self.tables[name].clone();
            self.prepare_table(&t, list, &groups)?;
            for c in list {
                self.current = index_of(cs, c);
                match c.op {
                    Op::Delete => {}
                    Op::Merge => {
                        self.unbatched()?;
                        self.merge_change(&t, c)?
                    }
                    Op::Insert | Op::Update => self.upsert(&t, c)?,
                }
            }
            self.current = None;
            self.unbatched()?;
        }
        // Children before parents, so FK checks see a consistent state.
        for name in order.iter().rev() {
            let Some(list) = groups.get(&**name) else {
                continue;
            };
            let t = self.tables[name].clone();
            for c in list {
                if c.op == Op::Delete {
                    self.current = index_of(cs, c);
                    self.delete(&t, c)?;
                }
            }
        }
        self.current = None;
        self.end_run()?;
        self.sweep_dead_links()?;
        self.end_run()?;
        let all: Vec<Table> = self.tables.values().cloned().collect();
        self.links_may_exist = true;
        let (resolved, refused) = fk::resolve(self.db, &all)?;
        self.report.resolved += resolved;
        self.links_refused(refused)?;
        for name in &self.touched {
            let Some(t) = self.tables.get(name) else {
                continue;
            };
            self.db.run(
                &format!(
                    "UPDATE lsync_tables SET hwm = coalesce(({}), 0) WHERE name = ?1",
                    t.max_rid_sql()
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

    fn upsert(&mut self, t: &Table, c: &Change) -> Result<()> {
        // Looked up once: each row asks it three times.
        let shape = self.shape(t, c);
        check_ids(c, &shape)?;
        if let Some(root) = self.redirect(t, &c.pk)? {
            let c = self.redirected(t, c, root)?;
            return self.upsert(t, &c);
        }
        let (mut vals, mut deferred) = self.local_values(c, &shape);
        let existing = self.rids.get(&t.name).and_then(|m| m.get(&c.pk)).copied();
        let origin = self.idx(&c.origin)?;
        if self.batchable(t, c, existing, &deferred)
            && self.queue(t, c, origin, &vals, shape.mask)?
        {
            return Ok(());
        }
        self.unbatched()?;
        if !deferred.is_empty() {
            let dead = self.dead_links(t, c, &mut vals, &mut deferred)?;
            if !dead.is_empty()
                && self.dead_change(t, c, existing, &dead, &mut vals, &mut deferred)?
            {
                return Ok(());
            }
        }
        let Some(rid) = existing else {
            if self.clashes_before_insert(t, c, &vals)? {
                return self.upsert(t, c);
            }
            let Some(rid) = self.create(t, c, origin, &vals)? else {
                return Ok(());
            };
            self.report.applied += 1;
            self.settle_links(t, rid, &c.pk, None, deferred)?;
            // Parked edits are newer news about the row: they go on top of
            // the insert, deferred links included (a parked FK edit replaces
            // the insert's waiting link, never the other way round).
            if self.parked.contains(&t.id) {
                self.unpark(t, &c.pk)?;
            }
            return Ok(());
        };
        self.end_run_holding(t.id, rid)?;
        let base = self.row_clock(t.id, rid)?;
        let outcome = match t.mode {
            Mode::DeviceOwned => self.update_owned(t, c, rid, origin, base, &vals)?,
            Mode::Shared => self.update_shared(t, c, rid, origin, base, &vals)?,
        };
        match outcome {
            Outcome::Refused => self.report.refused += 1,
            Outcome::Written(cols) if !cols.is_empty() => {
                self.report.applied += 1;
                self.settle_links(t, rid, &c.pk, Some(&cols), deferred)?;
            }
            Outcome::Stale | Outcome::Written(_) => self.report.stale += 1,
        }
        Ok(())
    }

    /// The change's row id and FK values are global ids (`ids`).
    fn check(&self, t: &Table, c: &Change) -> Result<()> {
        check_ids(c, &self.shape(t, c))
    }

    /// What the merge needs to know of the columns of change `c` to `t`.
    fn shape(&self, t: &Table, c: &Change) -> std::rc::Rc<cols::Shape> {
        self.cols.shape(t, &self.tables, c)
    }

    /// What the merge needs to know of column `name` of `t`.
    fn col(&self, t: &Table, name: &Arc<str>) -> std::rc::Rc<cols::Col> {
        self.cols.of(t, &self.tables, name)
    }

    /// The (hlc, origin) of the row entry covering `rid`; a row with none
    /// counts as this device's, from the beginning of time.
    fn row_clock(&self, tbl: i64, rid: i64) -> Result<(i64, i64)> {
        Ok(self
            .clock
            .row_clock(tbl, rid)?
            .unwrap_or((0, self.clock.self_idx)))
    }

    /// A change to a row that is not here: inserts it unless its tombstone
    /// is newer; a shared row's edit is parked until the row comes. Returns
    /// the new row's rowid.
    fn create(
        &mut self,
        t: &Table,
        c: &Change,
        origin: i64,
        vals: &links::LocalValues,
    ) -> Result<Option<i64>> {
        let key = &c.pk;
        let tomb = self.tombs.get(&t.name).and_then(|m| m.get(key)).cloned();
        if t.mode == Mode::Shared && c.op != Op::Insert {
            // It lost to the row's delete, or it came before the row.
            if tomb.is_some() {
                self.report.stale += 1;
            } else {
                self.park(t, c)?;
            }
            return Ok(None);
        }
        if let Some(tc) = &tomb {
            // Only a newer insert brings a deleted row back, and never a
            // row merged with others (`unite`: a delete of one is final).
            if !newer(t.mode, &(c.hlc, c.origin.clone()), tc) || self.merged(t, key)? {
                self.report.stale += 1;
                return Ok(None);
            }
            self.clock.drop_tombstone(t.id, key)?;
            if let Some(m) = self.tombs.get_mut(&t.name) {
                m.remove(key);
            }
        }
        let rid = self.insert(t, key, vals)?;
        self.extend_run(t.id, rid, c.hlc, origin, code_of(c.op), false)?;
        self.note_rid(t, key, rid);
        Ok(Some(rid))
    }

    /// Row `key` of `t` is `rid` here (`prepare_table` made its map).
    fn note_rid(&mut self, t: &Table, key: &Value, rid: i64) {
        match self.rids.get_mut(&t.name) {
            Some(m) => m.insert(key, rid),
            None => self
                .rids
                .entry(t.name.clone())
                .or_default()
                .insert(key, rid),
        }
    }
}

/// The index in `cs.changes` of `c`, a reference into it: by address, so
/// that grouping the changes by table needs no second map. (None for a
/// change from elsewhere: its errors then fail the whole merge.)
fn index_of(cs: &Changeset, c: &Change) -> Option<usize> {
    let offset = (std::ptr::from_ref(c) as usize).checked_sub(cs.changes.as_ptr() as usize)?;
    let i = offset / std::mem::size_of::<Change>();
    (i < cs.changes.len()).then_some(i)
}

/// Whether a change beats the state it meets: device-owned rows have one
/// writer, so the HLC orders them; shared rows order by (HLC, origin).
fn newer(mode: Mode, theirs: &Clk, mine: &Clk) -> bool {
    match mode {
        Mode::DeviceOwned => theirs.0 > mine.0,
        Mode::Shared => theirs > mine,
    }
}

/// [`Applier::check`] with the change's shape at hand.
fn check_ids(c: &Change, shape: &cols::Shape) -> Result<()> {
    ids::check_change(c, shape.fks.iter().map(|&i| &c.data[i]))
}
