//! `lsync_apply(blob)`: applying a peer's changeset atomically.
//!
//! A changeset is read as a stream, a chunk at a time, so that one of any
//! size is applied in the memory of a chunk. Its head (format, library,
//! schema) is checked before anything is written, and each chunk (its
//! encoding, clock floor and drift) before it is merged; everything runs
//! inside one savepoint, so a refusal anywhere leaves nothing applied.
//! Capture is off for this connection meanwhile, so remote changes are not
//! echoed as local ones. They are recorded in the change clock with their
//! own origin and HLC, so this database relays them.
//!
//! `merge` applies the changes under each table's policy.

use std::sync::Arc;

use lsync_wire::changeset::{Changeset, DecodeError, Head, Skim, Stream};
use lsync_wire::report::ApplyReport;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::catalog::{self, Table};
use crate::conn::{CaptureOff, Conn};
use crate::defer::FkDefer;
use crate::error::{Error, Result};
use crate::sql::{Db, Value};
use crate::{ahead, bail, capture, flush, merge, pagecache, peers, schema, stability};

/// Turns triggers off for the apply when every trigger on the tables it
/// touches is lsync's own (capture is off anyway): a trigger program per
/// inserted row is most of the cost of a bulk apply. Tables with app
/// triggers have them firing, so the app's derived data stays right, even
/// on a connection that turned triggers off (the sidecar's does, so that
/// its applies never switch them: see [`TRIGGERS_OFF_FROM`]).
struct TriggersOff {
    db: Db,
    /// The setting to put back at the end, when the apply changed it.
    restore: Option<bool>,
    /// Whether no trigger fires during the apply.
    off: bool,
}

impl TriggersOff {
    /// `changes`: how many the apply merges (`u64::MAX` when not known).
    fn new(db: Db, names: &[&str], changes: u64) -> Result<TriggersOff> {
        let on = db.triggers_enabled()?;
        if on && changes < TRIGGERS_OFF_FROM {
            return Ok(TriggersOff {
                db,
                restore: None,
                off: false,
            });
        }
        let want_on = app_triggers(db, names)?;
        let restore = match want_on != on {
            true => Some(db.set_triggers(want_on)?),
            false => None,
        };
        Ok(TriggersOff {
            db,
            restore,
            off: !want_on,
        })
    }

    /// Whether no trigger fires on this connection now.
    fn off(&self) -> bool {
        self.off
    }
}

impl Drop for TriggersOff {
    fn drop(&mut self) {
        if let Some(prev) = self.restore {
            let _ = self.db.set_triggers(prev);
        }
    }
}

/// Whether a trigger that is not lsync's is on one of the tables `names`.
fn app_triggers(db: Db, names: &[&str]) -> Result<bool> {
    // Temp triggers can be on main's tables too; names match as SQLite
    // matches them, ASCII case folded (a changeset may spell a table in
    // another case). Matched here rather than in SQL: every apply runs
    // this, and the simplest statement is the cheapest to prepare.
    let mut s = db.prepare(
        "SELECT name, tbl_name FROM main.sqlite_schema WHERE type = 'trigger'
         UNION ALL SELECT name, tbl_name FROM temp.sqlite_schema WHERE type = 'trigger'",
    )?;
    while s.step()? {
        let (name, on) = (s.text(0).unwrap_or_default(), s.text(1).unwrap_or_default());
        if !name.to_ascii_lowercase().starts_with("lsync_")
            && names.iter().any(|n| n.eq_ignore_ascii_case(&on))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How many changes, and about how many bytes of them, are decoded and
/// merged at a time: a changeset of any size is applied in the memory of
/// one chunk, and the lookups of a chunk stay small enough to be fast.
const CHUNK_CHANGES: usize = 16 << 10;
const CHUNK_BYTES: usize = 4 << 20;

pub fn apply(db: Db, conn: &Conn, blob: &[u8]) -> Result<ApplyReport> {
    const F: &str = "lsync_apply";
    crate::setup::ensure(db)?;
    let speaks = Speaks::read(db)?;
    // Changes a peer cannot speak for are dropped, and their HLCs do not
    // count for the drift guard.
    let counts = |origin: &str| speaks.counts(origin);
    // One pass: each chunk is checked before it is merged, and the
    // savepoint takes back what earlier chunks did when a later one is
    // refused, so nothing is applied. A refusal is reported as a check of
    // the whole blob first would report it: a corrupt body as corrupt,
    // whatever else is wrong with it.
    let one_pass = |careful: bool| {
        let mut stream = Stream::open(blob, schema::max_body(db)).map_err(|e| corrupt(F, e))?;
        let head = stream.head().clone();
        check_head(db, &head, F)?;
        stability::check_fresh(db, head.fence.as_ref(), F, "changeset")?;
        let names: Vec<&str> = head.tables.iter().map(|t| t.name.as_str()).collect();
        let changes = stream.left();
        // Only a changeset of more than one chunk meets rows of its own.
        let chunks_after_first = changes > CHUNK_CHANGES as u64;
        let _cache = match chunks_after_first {
            true => Some(pagecache::Raised::new(db, pagecache::BULK_KIB)?),
            false => None,
        };
        let limits = (CHUNK_CHANGES, CHUNK_BYTES);
        ahead::chunks(&mut stream, limits, chunks_after_first, |next, spent| {
            let chunks = std::iter::from_fn(|| {
                let changes = match next() {
                    Ok(Some(changes)) => changes,
                    Ok(None) => return None,
                    Err(e) => return Some(Err(corrupt(F, e))),
                };
                let hlcs = || changes.iter().map(|c| c.hlc);
                let checks = check_clock_floor(hlcs().min(), F).and_then(|()| {
                    let kept = changes.iter().filter(|c| counts(&c.origin)).map(|c| c.hlc);
                    check_drift(db, kept.max(), F, "changeset")
                });
                Some(checks.map(|()| Changeset::from_head(head.clone(), changes)))
            });
            db.savepoint_if("lsync_apply", |saved| {
                let spent = &mut |cs: Changeset| spent(cs.changes);
                let plan = Plan {
                    changes,
                    many: chunks_after_first,
                    unsaved: saved && !careful,
                };
                let report = merge_all(db, conn, &names, chunks, spent, plan, &speaks)?;
                stability::record_ack(db, head.fence.as_ref())?;
                Ok(report)
            })
        })
    };
    // Chunks are merged without a savepoint each: the apply's own takes
    // back all if a change is refused, and the chunks are merged again
    // with one each, which finds the refused changes and quarantines them
    // (`merge::merge`).
    let result = match one_pass(false) {
        Err(Error::Unsaved(_)) => one_pass(true),
        other => other,
    };
    result.map_err(|e| {
        let whole = checked(db, blob, F, counts)
            .and_then(|(_, skim)| check_drift(db, skim.max_hlc, F, "changeset"));
        whole.err().unwrap_or(e)
    })
}

/// From this many changes on, an apply turns triggers off (when they are
/// all lsync's). Switching them off and on again expires every statement
/// the connection keeps prepared (`sql::cache`), and re-preparing those
/// (about 1.7M instructions after a one-row apply, callgrind) costs more
/// than a few rows' trigger programs, which find capture off and return.
/// A connection that keeps triggers off (the sidecar's) switches nothing,
/// whatever the size, unless an app trigger must fire.
const TRIGGERS_OFF_FROM: u64 = 64;

/// What `merge_all` is given to merge.
struct Plan {
    /// How many changes (`u64::MAX` when not known).
    changes: u64,
    /// Whether there may be more than one batch, so the tables empty at
    /// the start are worth finding (`merge::Fresh`).
    many: bool,
    /// Batches are merged without a savepoint each: the caller takes all
    /// back and runs again with them on `Error::Unsaved`.
    unsaved: bool,
}

/// Merges batch after batch of changes, with capture and (when they are
/// all lsync's, and the changes many) triggers off, within the caller's
/// savepoint. The caller has checked library and schema. Each batch merged
/// goes to `spent`.
fn merge_all(
    db: Db,
    conn: &Conn,
    names: &[&str],
    batches: impl Iterator<Item = Result<Changeset>>,
    spent: &mut dyn FnMut(Changeset),
    Plan {
        changes,
        many,
        unsaved,
    }: Plan,
    speaks: &Speaks,
) -> Result<ApplyReport> {
    let _off = CaptureOff::new(conn);
    let triggers = TriggersOff::new(db, names, changes)?;
    let tables = by_name(db)?;
    let merged = || {
        // Fold local captures first: rows above the high-water mark must be
        // recorded as local before remote rows are inserted above them.
        flush::flush(db)?;
        let mut fk = FkDefer::new(db, &conn.fk_verdicts)?;
        // With app triggers firing, rows may come by a way the merge does
        // not see: no table counts as fresh.
        let fresh = if many && triggers.off() {
            let named = tables
                .values()
                .filter(|t| names.iter().any(|n| n.eq_ignore_ascii_case(&t.name)));
            merge::Fresh::find(db, named)?
        } else {
            merge::Fresh::default()
        };
        let mut total = ApplyReport::default();
        for cs in batches {
            let mut cs = cs?;
            let (own, revoked) = speaks.drop_others(&mut cs);
            fk.before(&tables, &cs)?;
            let how = (triggers.off(), unsaved);
            let mut report = merge::merge(db, tables.clone(), &cs, &fresh, how)?;
            report.changes += own + revoked;
            report.own = own;
            report.revoked = revoked;
            total.add(&report);
            spent(cs);
        }
        Ok(total)
    };
    // With every trigger off, no function-free one reads `capture_off`:
    // setting and clearing it would be two writes for nothing.
    if triggers.off() {
        merged()
    } else {
        capture::quietly(db, merged)
    }
}

/// The origins a peer cannot speak for, read once per call: this device
/// (issue 13), and the devices known here as revoked (`members`).
struct Speaks {
    me: String,
    revoked: std::collections::HashSet<String>,
}

impl Speaks {
    fn read(db: Db) -> Result<Speaks> {
        Ok(Speaks {
            me: schema::get_text(db, "device_id")?,
            revoked: crate::members::revoked(db)?,
        })
    }

    /// Whether a change from `origin` is applied.
    fn counts(&self, origin: &str) -> bool {
        *origin != *self.me
            && (self.revoked.is_empty() || !self.revoked.contains(&origin.to_ascii_lowercase()))
    }

    /// Takes out the changes that name this device as their origin, then
    /// those made by revoked devices (nothing they made is applied here, so
    /// nothing is relayed from here either); returns how many of each.
    fn drop_others(&self, cs: &mut Changeset) -> (i64, i64) {
        let before = cs.changes.len();
        cs.changes.retain(|c| *c.origin != *self.me);
        let own = before - cs.changes.len();
        let before = cs.changes.len();
        if !self.revoked.is_empty() {
            cs.changes
                .retain(|c| !self.revoked.contains(&c.origin.to_ascii_lowercase()));
        }
        (own as i64, (before - cs.changes.len()) as i64)
    }
}

fn corrupt(func: &str, e: DecodeError) -> Error {
    Error::msg(format!("{func}: {e}; nothing was applied"))
}

/// The changeset's head and what its changes hold, if it belongs here:
/// this library, tables tracked here as it describes them, no negative
/// HLC. One streaming pass checks the whole blob without keeping its
/// changes; `keep` chooses by origin the changes whose HLC counts for
/// `max_hlc`.
fn checked(db: Db, blob: &[u8], func: &str, keep: impl Fn(&str) -> bool) -> Result<(Head, Skim)> {
    let (head, skim) = Stream::open(blob, schema::max_body(db))
        .and_then(|s| s.skim(keep))
        .map_err(|e| corrupt(func, e))?;
    check_head(db, &head, func)?;
    check_clock_floor(skim.min_hlc, func)?;
    Ok((head, skim))
}

/// The changeset is for this library, and its tables are tracked here as
/// it describes them.
fn check_head(db: Db, head: &Head, func: &str) -> Result<()> {
    let library = schema::get_text(db, "library_id")?;
    if head.library_id != library {
        bail!(
            "{func}: the changeset belongs to library {}, this database to library {library}; nothing was applied",
            head.library_id
        );
    }
    check_schema(db, head, func)
}

/// Refuses an HLC below zero: no clock reads one, and once applied it would
/// sit in `lsync_clock`, where `lsync_restore` refuses it as hostile, so
/// every snapshot this device made from then on would be refused.
fn check_clock_floor(min_hlc: Option<i64>, func: &str) -> Result<()> {
    if let Some(hlc) = min_hlc.filter(|h| *h < 0) {
        bail!(
            "{func}: the changeset holds HLC {hlc}, which is negative: no clock reads that, \
             so it is corrupt or hostile; refusing it, nothing was applied"
        );
    }
    Ok(())
}

/// Each described table is tracked here (its name matched as SQLite
/// matches names, without regard to letter case), described once, in the
/// same mode, with columns that exist here, each named once. Statements are
/// cached per table and column set and bind by position, so one table
/// must have one column order in a changeset.
fn check_schema(db: Db, cs: &Head, func: &str) -> Result<()> {
    let mut described = HashSet::default();
    for d in &cs.tables {
        let Some(t) = catalog::load(db, &d.name)? else {
            bail!(
                "{func}: schema mismatch: table '{}' is not tracked here; nothing was applied",
                d.name
            );
        };
        if !described.insert(t.id) {
            bail!(
                "{func}: schema mismatch: the changeset describes table '{}' twice; nothing was applied",
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
                "{func}: schema mismatch: the changeset names column '{}.{c}' twice; nothing was applied",
                d.name
            );
        }
        if t.mode.as_str() != d.mode {
            bail!(
                "{func}: schema mismatch: '{}' is '{}' here but '{}' at the sender; nothing was applied",
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
                "{func}: schema mismatch: column '{}.{c}' is missing here; nothing was applied",
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
) -> Result<ApplyReport> {
    let tables = catalog::load_all(db)?;
    let names: Vec<&str> = tables.iter().map(|t| &*t.name).collect();
    merge_all(
        db,
        conn,
        &names,
        std::iter::from_fn(|| next().transpose()),
        &mut drop,
        Plan {
            changes: u64::MAX,
            many: true,
            unsaved: false,
        },
        &Speaks::read(db)?,
    )
}

/// `lsync_conflict_retry(id)`: applies quarantined change `id` now, as
/// an apply would; returns JSON `{"id", "applied", "error"}`. Refused
/// again, it stays quarantined with the new error.
pub fn retry_conflict(db: Db, conn: &Conn, id: i64) -> Result<String> {
    crate::setup::ensure(db)?;
    let _off = CaptureOff::new(conn);
    let tables = by_name(db)?;
    let error = db.savepoint("lsync_conflict_retry", || {
        capture::quietly(db, || {
            flush::flush(db)?;
            db.exec("PRAGMA defer_foreign_keys = ON")?;
            merge::retry_conflict(db, &tables, id)
        })
    })?;
    Ok(serde_json::json!({"id": id, "applied": error.is_none(), "error": error}).to_string())
}

/// The tracked tables by name.
fn by_name(db: Db) -> Result<HashMap<Arc<str>, Table>> {
    Ok(catalog::load_all(db)?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect())
}

/// How far a changeset's newest HLC is ahead of this device's clock, when
/// that is more than `max_drift_ms`: the drift guard refuses it now and
/// accepts it once the wall clock reaches `accept_at_ms` (unix ms).
#[derive(Debug, serde::Serialize)]
pub struct Drift {
    pub max_hlc: i64,
    pub ahead_ms: i64,
    pub max_drift_ms: i64,
    pub accept_at_ms: i64,
}

/// The drift of `max` beyond what this device accepts, or `None` when it is
/// accepted now or is beyond every clock (refused for good: `check_drift`).
pub fn drift(db: Db, max: Option<i64>) -> Result<Option<Drift>> {
    let Some(max) = max.filter(|m| *m <= lsync_wire::hlc::MAX_ACCEPTED) else {
        return Ok(None);
    };
    // Readers create nothing: before lsync's metadata exists, the default.
    let drift_ms = if peers::has_table(db, "lsync_config")? {
        schema::get_i64(db, "max_drift_ms")?.max(0)
    } else {
        schema::DEFAULT_MAX_DRIFT_MS
    };
    let wall = lsync_wire::hlc::wall();
    let limit = wall.saturating_add(lsync_wire::hlc::from_millis(drift_ms as u64));
    if max <= limit {
        return Ok(None);
    }
    let (max_ms, wall_ms) = (
        lsync_wire::hlc::millis(max) as i64,
        lsync_wire::hlc::millis(wall) as i64,
    );
    Ok(Some(Drift {
        max_hlc: max,
        ahead_ms: max_ms - wall_ms,
        max_drift_ms: drift_ms,
        // The first millisecond at which `max <= limit` holds whatever its
        // counter.
        accept_at_ms: max_ms - drift_ms + 1,
    }))
}

/// `lsync_drift(blob)`: the changeset's drift beyond what this device
/// accepts now, as JSON, or NULL when the drift guard lets it through. A
/// changeset `lsync_apply` refuses for another reason first (its library,
/// its schema) gets that error.
pub fn drift_of(db: Db, blob: &[u8]) -> Result<Value> {
    if !peers::has_table(db, "lsync_config")? {
        bail!("lsync_drift: this database has no library yet; nothing was applied");
    }
    let (_, skim) = checked(db, blob, "lsync_drift", |_| true)?;
    let Some(d) = drift(db, skim.max_hlc)? else {
        return Ok(Value::Null);
    };
    serde_json::to_string(&d)
        .map(Value::from)
        .map_err(|e| Error::msg(e.to_string()))
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
    if let Some(d) = drift(db, Some(max))? {
        bail!(
            "{func}: the {what} holds HLC {} which is more than {} ms ahead of this \
             device's clock ({}); refusing it, nothing was applied. Check the sender's clock, or \
             raise max_drift_ms in lsync_config",
            lsync_wire::hlc::to_text(max),
            d.max_drift_ms,
            lsync_wire::hlc::to_text(lsync_wire::hlc::wall())
        );
    }
    Ok(())
}
