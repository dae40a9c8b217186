//! `lsync bench capture`: what change capture costs on inserts and updates,
//! and how much sync metadata it leaves behind.
//!
//! The same pre-generated rows go into three databases (one file per run):
//! untracked, tracked `device_owned` and tracked `shared`. The variants run
//! interleaved, rotating which goes first in each round, and the best time of
//! each is kept; ratios compare against the untracked run of the same process.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::Connection;

use super::clock::{Best, Timing};
use super::ops;
use super::report;
use super::workload::Workload;
use super::{BenchError, TempDir};
use crate::cli::CaptureArgs;
use crate::db::{self, DbOptions};

/// The three ways the tables of a `--schema` are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    Plain,
    DeviceOwned,
    Shared,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Plain, Variant::DeviceOwned, Variant::Shared];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::DeviceOwned => "device_owned",
            Variant::Shared => "shared",
        }
    }

    /// The `lsync_track` mode, or `None` for the untracked variant.
    fn mode(self) -> Option<&'static str> {
        match self {
            Variant::Plain => None,
            Variant::DeviceOwned => Some("device_owned"),
            Variant::Shared => Some("shared"),
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Results for one variant: best times over all rounds, sizes of the last.
#[derive(Debug, Clone)]
pub(crate) struct Measure {
    pub insert: Best,
    pub update: Best,
    /// Time of `SELECT lsync_flush()` after the updates (tracked only).
    pub flush_s: Option<f64>,
    /// Time of the flush between insert and update, with --flush-before-update.
    pub insert_flush_s: Option<f64>,
    /// Bytes in pages of lsync's own tables and indexes, per object.
    pub meta: Vec<(String, i64)>,
    /// `(page_count - freelist_count) * page_size` of the whole database.
    pub used_bytes: i64,
}

impl Measure {
    fn new() -> Self {
        Self {
            insert: Best::new(),
            update: Best::new(),
            flush_s: None,
            insert_flush_s: None,
            meta: Vec::new(),
            used_bytes: 0,
        }
    }

    pub fn meta_bytes(&self) -> i64 {
        self.meta.iter().map(|(_, b)| b).sum()
    }
}

/// Everything the report needs.
pub(crate) struct Outcome<'a> {
    pub args: &'a CaptureArgs,
    pub updates: usize,
    pub sqlite_version: &'static str,
    pub measures: [Measure; 3],
}

impl Outcome<'_> {
    pub fn get(&self, v: Variant) -> &Measure {
        &self.measures[v.index()]
    }
}

/// Runs `lsync bench capture`, printing progress to stderr and the results
/// to stdout.
pub fn run(args: &CaptureArgs) -> Result<(), BenchError> {
    let opts = DbOptions {
        foreign_keys: args.foreign_keys.is_on(),
    };
    let rows = usize::try_from(args.rows)
        .map_err(|_| BenchError::Check(format!("--rows {} is too large", args.rows)))?;

    preflight()?;
    let dir = TempDir::new(args.dir.as_deref(), args.keep)?;
    eprintln!("databases in {}", dir.path().display());

    eprintln!(
        "generating {rows} rows of schema {} with {} uuids...",
        args.schema.as_str(),
        args.uuid.as_str()
    );
    let started = Instant::now();
    let data = Workload::generate(args.schema, rows, args.uuid, args.update_share);
    eprintln!("generated in {:.2}s", started.elapsed().as_secs_f64());
    let mut measures = [Measure::new(), Measure::new(), Measure::new()];
    for round in 0..args.repeat {
        let mut order = Variant::ALL;
        order.rotate_left(round as usize % Variant::ALL.len());
        run_round(
            &dir,
            round + 1,
            order,
            &data,
            &opts,
            &mut measures,
            args.flush_before_update,
        )?;
        if round + 1 < args.repeat {
            // Free the disk between rounds (a no-op with --keep).
            for v in Variant::ALL {
                dir.remove_prefixed(&file_prefix(v, round + 1))?;
            }
        }
    }

    let outcome = Outcome {
        args,
        updates: data.updates(),
        sqlite_version: rusqlite::version(),
        measures,
    };
    report::print_breakdown(&outcome);
    report::print_table(&outcome);
    if args.json {
        println!("{}", report::json(&outcome)?);
    }
    Ok(())
}

/// Checks, before any work, that the extension provides what we call.
fn preflight() -> Result<(), BenchError> {
    let conn = db::connect(Path::new(":memory:"))?;
    ops::require_function(&conn, "lsync_track")?;
    ops::require_function(&conn, "lsync_flush")
}

struct Run {
    variant: Variant,
    path: PathBuf,
    conn: Connection,
}

/// Databases are named `<variant>-<round>.db` (plus `-wal` and `-shm`).
fn file_prefix(variant: Variant, round: u32) -> String {
    format!("{}-{round}.db", variant.name())
}

fn run_round(
    dir: &TempDir,
    round: u32,
    order: [Variant; 3],
    data: &Workload,
    opts: &DbOptions,
    measures: &mut [Measure; 3],
    flush_before_update: bool,
) -> Result<(), BenchError> {
    let mut runs = Vec::with_capacity(order.len());
    for variant in order {
        let path = dir.path().join(file_prefix(variant, round));
        let conn = db::open(&path, opts)?;
        data.setup(&conn, variant.mode(), &path)?;
        runs.push(Run {
            variant,
            path,
            conn,
        });
    }
    for run in &runs {
        dir.settle()?;
        let t = data.insert(&run.conn, &run.path)?;
        log_timing(round, run.variant, "insert", t);
        measures[run.variant.index()].insert.add(t);
    }
    if flush_before_update {
        for run in &runs {
            if let Some(secs) = flush(run, round, "flush before update")? {
                let m = &mut measures[run.variant.index()];
                m.insert_flush_s = Some(m.insert_flush_s.map_or(secs, |b| b.min(secs)));
            }
        }
    }
    for run in &runs {
        dir.settle()?;
        let t = data.update(&run.conn, &run.path)?;
        log_timing(round, run.variant, "update", t);
        measures[run.variant.index()].update.add(t);
    }
    for run in &runs {
        measure_sizes(run, round, &mut measures[run.variant.index()])?;
    }
    Ok(())
}

fn log_timing(round: u32, variant: Variant, what: &str, t: Timing) {
    let cpu = t
        .cpu_s
        .map_or_else(String::new, |c| format!(" (cpu {c:.2}s)"));
    eprintln!(
        "round {round}: {:<12} {what} {:>9.4}s{cpu}",
        variant.name(),
        t.wall_s
    );
}

/// Runs `lsync_flush()` on a tracked database and logs it.
fn flush(run: &Run, round: u32, label: &str) -> Result<Option<f64>, BenchError> {
    if run.variant.mode().is_none() {
        return Ok(None);
    }
    let secs = ops::flush(&run.conn, &run.path)?;
    eprintln!(
        "round {round}: {:<12} {label} {secs:>9.4}s",
        run.variant.name()
    );
    Ok(Some(secs))
}

/// Flushes pending captures (tracked variants) and records the sizes.
fn measure_sizes(run: &Run, round: u32, m: &mut Measure) -> Result<(), BenchError> {
    if let Some(secs) = flush(run, round, "flush ")? {
        m.flush_s = Some(m.flush_s.map_or(secs, |best| best.min(secs)));
        m.meta = ops::meta_breakdown(&run.conn, &run.path)?;
    }
    m.used_bytes = ops::used_bytes(&run.conn, &run.path)?;
    Ok(())
}
