//! The passes of a merge: each in its own savepoint, run again without the
//! changes SQLite refuses until one goes through; or one pass without, for
//! a caller that takes everything back if it fails.

use std::sync::Arc;

use lsync_wire::changeset::Changeset;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::unite::Fact;
use super::{Applier, Fresh};
use crate::catalog::Table;
use crate::error::{Error, Result};
use crate::sql::Db;

/// Passes until one merges all changes but those it refuses (returned).
pub(super) fn passes(
    db: Db,
    tables: &HashMap<Arc<str>, Table>,
    cs: &Changeset,
    fresh: &Fresh,
    quiet: bool,
) -> Result<(Applier, Vec<(usize, Error)>)> {
    let mut refused: Vec<(usize, Error)> = Vec::new();
    let mut facts: Vec<Fact> = Vec::new();
    let mut batching = quiet;
    loop {
        let skip = refused.iter().map(|(i, _)| *i).collect();
        let mut a = Applier::new(db, tables.clone(), skip, facts.clone(), fresh.clone())?;
        a.batching = batching;
        match attempt(db, &mut a, cs) {
            Ok(()) => return Ok((a, refused)),
            // A batch failed: one row at a time, the pass finds the row.
            Err(Attempt::Unbatch(_)) if batching => batching = false,
            Err(Attempt::Unbatch(e)) => return Err(e),
            Err(Attempt::Refused(i, e)) => {
                // A merge found while merging change `i` goes with it.
                facts.retain(|f| f.at != Some(i));
                refused.push((i, e));
            }
            Err(Attempt::Clash(f, e)) => {
                // A clash that its merge did not end is refused, so that
                // every pass makes progress.
                if !facts.iter().any(|x| x.same(&f)) {
                    facts.push(*f);
                } else if let Some(i) = a.current {
                    refused.push((i, e));
                } else {
                    return Err(e);
                }
            }
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
}

/// One pass without a savepoint of its own, for a caller that can take
/// back the whole apply and run it again with them (`Error::Unsaved`) if
/// it fails. Within a savepoint, SQLite copies each page it writes out of
/// its cache (to make room) to the sub-journal first, when the page
/// existed as the savepoint began: a bulk apply outgrows any cache, so
/// that is nearly every page of the table and its indexes (`strace` of a
/// 1M apply: 30k of its 33.5k pages, 62k writes to the temporary file).
pub(super) fn unsaved(
    db: Db,
    tables: &HashMap<Arc<str>, Table>,
    cs: &Changeset,
    fresh: &Fresh,
    quiet: bool,
) -> Result<Applier> {
    let mut a = Applier::new(
        db,
        tables.clone(),
        HashSet::default(),
        Vec::new(),
        fresh.clone(),
    )?;
    a.batching = quiet;
    a.run(cs).map_err(|e| Error::Unsaved(Box::new(e)))?;
    Ok(a)
}

/// Why one pass of a merge stopped.
pub(super) enum Attempt {
    /// SQLite refused change `i` for a constraint; the pass left nothing.
    Refused(usize, Error),
    /// Two rows clash on a UNIQUE key of a shared table: the next pass
    /// merges them first.
    Clash(Box<Fact>, Error),
    Failed(Error),
    /// A batch of new rows failed; the pass left nothing.
    Unbatch(Error),
}

/// One pass of a merge in its own savepoint.
pub(super) fn attempt(db: Db, a: &mut Applier, cs: &Changeset) -> std::result::Result<(), Attempt> {
    if db.exec("SAVEPOINT lsync_merge").is_err() {
        // Inside a running statement: no savepoint, so nothing to quarantine
        // with, and no pass to run again without batches.
        a.batching = false;
        return a.run(cs).map_err(Attempt::Failed);
    }
    match a.run(cs) {
        Ok(()) => db.exec("RELEASE lsync_merge").map_err(Attempt::Failed),
        Err(e) => {
            db.exec("ROLLBACK TO lsync_merge; RELEASE lsync_merge")
                .map_err(Attempt::Failed)?;
            if a.unbatch {
                return Err(Attempt::Unbatch(e));
            }
            let a_current = a.current;
            match (&e, a.current) {
                (Error::Clash { tbl, a, b, .. }, _) => {
                    let f = Fact {
                        tbl: tbl.clone(),
                        a: a.clone(),
                        b: b.clone(),
                        at: a_current,
                    };
                    Err(Attempt::Clash(Box::new(f), e))
                }
                (_, Some(i)) if e.is_constraint() => Err(Attempt::Refused(i, e)),
                _ => Err(Attempt::Failed(e)),
            }
        }
    }
}
