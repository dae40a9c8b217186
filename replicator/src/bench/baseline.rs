//! The plain insert that timings are measured against, and issue 14's
//! targets in seconds restated as ratios to it.
//!
//! Issue 14 set two targets in seconds (a 1M-entry batched initial sync in
//! 3 s, 100k propagated updates in 0.5 s) on a machine whose plain prepared
//! insert of the benchmark's entries ran at 841k rows/s. On a slower or
//! busier machine seconds say more about the machine than about lsync, so
//! each such target is also stated as a multiple of the time that insert
//! takes for the same number of rows, measured in the same run.

use std::path::Path;

use super::data::Dataset;
use super::{ops, BenchError, TempDir};
use crate::db::{self, DbOptions};

/// Plain-insert throughput of the machine issue 14's targets were set on.
pub const ISSUE_PLAIN_ROWS_PER_S: f64 = 841_000.0;

/// A target of `seconds` for `rows` rows on that machine, as a multiple of
/// the plain insert of as many rows.
pub fn target_ratio(seconds: f64, rows: f64) -> f64 {
    seconds * ISSUE_PLAIN_ROWS_PER_S / rows
}

/// Best of `rounds` plain prepared inserts of every entry of `data` into an
/// untracked copy of the schema (a fresh file each round), in one
/// transaction each: the baseline `lsync bench apply` reports against.
pub fn plain_insert_seconds(
    dir: &TempDir,
    data: &Dataset,
    rounds: usize,
    name: &str,
) -> Result<f64, BenchError> {
    let mut best = f64::INFINITY;
    for round in 0..rounds {
        best = best.min(plain_insert_once(dir, data, &format!("{name}-{round}"))?);
    }
    Ok(best)
}

/// One plain insert into `<dir>/<prefix>.db`, which is removed after.
pub fn plain_insert_once(dir: &TempDir, data: &Dataset, prefix: &str) -> Result<f64, BenchError> {
    let path = dir.path().join(format!("{prefix}.db"));
    let seconds = insert_into(&path, dir, data)?;
    dir.remove_prefixed(prefix)?;
    Ok(seconds)
}

fn insert_into(path: &Path, dir: &TempDir, data: &Dataset) -> Result<f64, BenchError> {
    let conn = db::open(path, &DbOptions { foreign_keys: true })?;
    ops::setup(&conn, None, &data.locations, path)?;
    dir.settle()?;
    let seconds = ops::insert_entries(&conn, &data.entries, path)?;
    ops::check_count(&conn, data.entries.len(), path)?;
    Ok(seconds)
}
