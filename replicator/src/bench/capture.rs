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

use super::data::{self, Dataset, Entry, Update};
use super::report;
use super::{BenchError, SqlContext, TempDir};
use crate::cli::CaptureArgs;
use crate::db::{self, DbOptions, Extension};

const SCHEMA: &str = "
CREATE TABLE locations(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, path TEXT);
CREATE TABLE entries(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
    parent_id INTEGER REFERENCES entries(id),
    location_id INTEGER REFERENCES locations(id),
    name TEXT, size INTEGER, kind INTEGER, mtime INTEGER);";
const INSERT_LOCATION: &str = "INSERT INTO locations(uuid, path) VALUES (?, ?)";
const INSERT_ENTRY: &str =
    "INSERT INTO entries(uuid, parent_id, location_id, name, size, kind, mtime) \
     VALUES (?,?,?,?,?,?,?)";
const UPDATE_ENTRY: &str = "UPDATE entries SET size=?, mtime=? WHERE id=?";
/// Pages of every object that lsync created: tables named `lsync*` and
/// their indexes (including `sqlite_autoindex_lsync*`).
const META_BREAKDOWN: &str = "
SELECT name, sum(pgsize) FROM dbstat('main')
 WHERE name LIKE 'lsync%'
    OR name IN (SELECT name FROM sqlite_schema WHERE tbl_name LIKE 'lsync%')
 GROUP BY name ORDER BY 2 DESC, 1";

/// The three ways the `entries` and `locations` tables are set up.
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
    pub insert_s: f64,
    pub update_s: f64,
    /// Time of `SELECT lsync_flush()` after the updates (tracked only).
    pub flush_s: Option<f64>,
    /// Bytes in pages of lsync's own tables and indexes, per object.
    pub meta: Vec<(String, i64)>,
    /// `(page_count - freelist_count) * page_size` of the whole database.
    pub used_bytes: i64,
}

impl Measure {
    fn new() -> Self {
        Self {
            insert_s: f64::INFINITY,
            update_s: f64::INFINITY,
            flush_s: None,
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
    let extension = match &args.extension {
        Some(lib) => Extension::Shared(lib.clone()),
        None => Extension::Static,
    };
    db::register(&extension)?;
    let opts = DbOptions {
        extension,
        foreign_keys: args.foreign_keys.is_on(),
    };
    let rows = usize::try_from(args.rows)
        .map_err(|_| BenchError::Check(format!("--rows {} is too large", args.rows)))?;

    preflight(&opts)?;
    let dir = TempDir::new(args.dir.as_deref(), args.keep)?;
    eprintln!("databases in {}", dir.path().display());

    eprintln!(
        "generating {rows} rows with {} uuids...",
        args.uuid.as_str()
    );
    let started = Instant::now();
    let data = data::generate(rows, args.uuid);
    eprintln!("generated in {:.2}s", started.elapsed().as_secs_f64());
    let mut measures = [Measure::new(), Measure::new(), Measure::new()];
    for round in 0..args.repeat {
        let mut order = Variant::ALL;
        order.rotate_left(round as usize % Variant::ALL.len());
        run_round(dir.path(), round + 1, order, &data, &opts, &mut measures)?;
    }

    let outcome = Outcome {
        args,
        updates: data.updates.len(),
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
fn preflight(opts: &DbOptions) -> Result<(), BenchError> {
    let conn = db::connect(Path::new(":memory:"), opts)?;
    require_function(&conn, "lsync_track")?;
    require_function(&conn, "lsync_flush")
}

struct Run {
    variant: Variant,
    path: PathBuf,
    conn: Connection,
}

fn run_round(
    dir: &Path,
    round: u32,
    order: [Variant; 3],
    data: &Dataset,
    opts: &DbOptions,
    measures: &mut [Measure; 3],
) -> Result<(), BenchError> {
    let mut runs = Vec::with_capacity(order.len());
    for variant in order {
        let path = dir.join(format!("{}-{round}.db", variant.name()));
        let conn = db::open(&path, opts)?;
        setup(&conn, variant, data, &path)?;
        runs.push(Run {
            variant,
            path,
            conn,
        });
    }
    for run in &mut runs {
        let secs = insert_entries(&mut run.conn, &data.entries, &run.path)?;
        check_count(&run.conn, data.entries.len(), &run.path)?;
        eprintln!(
            "round {round}: {:<12} insert {:>9.4}s",
            run.variant.name(),
            secs
        );
        let m = &mut measures[run.variant.index()];
        m.insert_s = m.insert_s.min(secs);
    }
    for run in &mut runs {
        let secs = update_entries(&mut run.conn, &data.updates, &run.path)?;
        eprintln!(
            "round {round}: {:<12} update {:>9.4}s",
            run.variant.name(),
            secs
        );
        let m = &mut measures[run.variant.index()];
        m.update_s = m.update_s.min(secs);
    }
    for run in &runs {
        measure_sizes(run, round, &mut measures[run.variant.index()])?;
    }
    Ok(())
}

/// Creates the schema, tracks the tables (unless plain), inserts the
/// locations and checkpoints, so that every timed run starts from an empty
/// WAL.
fn setup(
    conn: &Connection,
    variant: Variant,
    data: &Dataset,
    path: &Path,
) -> Result<(), BenchError> {
    let at = || path.display().to_string();
    conn.execute_batch(SCHEMA)
        .sql(|| format!("creating the schema in {}", at()))?;
    if let Some(mode) = variant.mode() {
        require_function(conn, "lsync_track")?;
        conn.query_row(
            "SELECT lsync_track('locations', ?1), lsync_track('entries', ?1)",
            [mode],
            |_| Ok(()),
        )
        .sql(|| format!("lsync_track(..., '{mode}') in {}", at()))?;
    }
    let tx = conn
        .unchecked_transaction()
        .sql(|| format!("beginning a transaction in {}", at()))?;
    {
        let mut stmt = tx
            .prepare(INSERT_LOCATION)
            .sql(|| format!("preparing the locations insert in {}", at()))?;
        for loc in &data.locations {
            stmt.execute((&loc.uuid, &loc.path))
                .sql(|| format!("inserting a location in {}", at()))?;
        }
    }
    tx.commit()
        .sql(|| format!("committing the locations in {}", at()))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .sql(|| format!("checkpointing {}", at()))
}

/// Fails clearly when the extension did not register `name`.
fn require_function(conn: &Connection, name: &str) -> Result<(), BenchError> {
    let found: bool = conn
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM pragma_function_list WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )
        .sql(|| "listing SQL functions".to_owned())?;
    if found {
        Ok(())
    } else {
        Err(BenchError::Check(format!(
            "the lsync extension is not loaded: SQL function {name}() does not exist"
        )))
    }
}

/// Inserts all entries in one transaction; returns insert+commit seconds.
fn insert_entries(
    conn: &mut Connection,
    entries: &[Entry],
    path: &Path,
) -> Result<f64, BenchError> {
    let at = || path.display().to_string();
    let started = Instant::now();
    let tx = conn
        .transaction()
        .sql(|| format!("beginning the insert in {}", at()))?;
    {
        let mut stmt = tx
            .prepare(INSERT_ENTRY)
            .sql(|| format!("preparing the insert in {}", at()))?;
        for e in entries {
            stmt.execute((
                &e.uuid,
                e.parent_id,
                e.location_id,
                &e.name,
                e.size,
                e.kind,
                e.mtime,
            ))
            .sql(|| format!("inserting entry {} in {}", e.uuid, at()))?;
        }
    }
    tx.commit()
        .sql(|| format!("committing the insert in {}", at()))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Checks (untimed) that the insert produced ids 1..=rows.
fn check_count(conn: &Connection, rows: usize, path: &Path) -> Result<(), BenchError> {
    let (count, max_id): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(max(id), 0) FROM entries",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .sql(|| format!("counting entries in {}", path.display()))?;
    if usize::try_from(count).ok() != Some(rows) || count != max_id {
        return Err(BenchError::Check(format!(
            "{}: expected ids 1..={rows} in entries, found {count} rows with max id {max_id}",
            path.display()
        )));
    }
    Ok(())
}

/// Applies all updates in one transaction; returns update+commit seconds.
fn update_entries(
    conn: &mut Connection,
    updates: &[Update],
    path: &Path,
) -> Result<f64, BenchError> {
    let at = || path.display().to_string();
    let started = Instant::now();
    let tx = conn
        .transaction()
        .sql(|| format!("beginning the update in {}", at()))?;
    let mut changed = 0usize;
    {
        let mut stmt = tx
            .prepare(UPDATE_ENTRY)
            .sql(|| format!("preparing the update in {}", at()))?;
        for u in updates {
            changed += stmt
                .execute((u.size, u.mtime, u.id))
                .sql(|| format!("updating entry {} in {}", u.id, at()))?;
        }
    }
    tx.commit()
        .sql(|| format!("committing the update in {}", at()))?;
    let secs = started.elapsed().as_secs_f64();
    if changed != updates.len() {
        return Err(BenchError::Check(format!(
            "{}: {} updates changed {changed} rows",
            at(),
            updates.len()
        )));
    }
    Ok(secs)
}

/// Flushes pending captures (tracked variants) and records the sizes.
fn measure_sizes(run: &Run, round: u32, m: &mut Measure) -> Result<(), BenchError> {
    let at = || run.path.display().to_string();
    if run.variant.mode().is_some() {
        require_function(&run.conn, "lsync_flush")?;
        let started = Instant::now();
        run.conn
            .query_row("SELECT lsync_flush()", [], |_| Ok(()))
            .sql(|| format!("lsync_flush() in {}", at()))?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "round {round}: {:<12} flush  {secs:>9.4}s",
            run.variant.name()
        );
        m.flush_s = Some(m.flush_s.map_or(secs, |best| best.min(secs)));
        let mut stmt = run
            .conn
            .prepare(META_BREAKDOWN)
            .sql(|| format!("preparing the dbstat query on {}", at()))?;
        m.meta = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .sql(|| format!("measuring lsync metadata with dbstat in {}", at()))?;
    }
    let pragma = |name: &'static str| -> Result<i64, BenchError> {
        run.conn
            .pragma_query_value(None, name, |r| r.get(0))
            .sql(|| format!("PRAGMA {name} on {}", at()))
    };
    m.used_bytes = (pragma("page_count")? - pragma("freelist_count")?) * pragma("page_size")?;
    Ok(())
}
