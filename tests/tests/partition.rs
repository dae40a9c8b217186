//! End-to-end: three `lsync run` sidecars in a full mesh under partitions
//! (issue 9, item 3: "deleted rows come back after partitions").
//!
//! Every peer link goes through a TCP proxy on 127.0.0.1 that this test
//! controls. The links have some latency and jitter all along; the test cuts
//! and heals them at random (mostly "sweeps" that first cut one device off
//! one neighbour, then off both, then heal the first link: see
//! `link_plan`), makes them lossy (dropped connections, delayed bytes) for a
//! while, and kills (SIGKILL) and restarts two of the sidecars. Meanwhile one
//! app thread per device makes ordinary writes, busy in bursts and calm in
//! between: tags and tag assignments (shared) inserted, updated and deleted
//! (often rows that arrived lately, from any device), plus device-owned
//! entries. The sidecars run with small batches, so that two peers that meet
//! again after a partition catch up with each other by streams of batches
//! (the next batch exported ahead of the pull), and they prune tombstones on
//! every ACK.
//!
//! At the end every link is healed and the writers stop. Then no row that a
//! writer deleted may be live on any device, the three databases must become
//! identical, and no edit may stay parked (an edit parks when it arrives for
//! a row that is neither there nor tombstoned: after convergence, only an
//! edit that came after its row's tombstone was pruned). The test also
//! checks that tombstones really were pruned while it ran: otherwise it
//! would prove nothing.
//!
//! Settings (environment):
//! - `LSYNC_PARTITION_SECS`: how long the writers and the chaos run
//!   (default 30);
//! - `LSYNC_PARTITION_SEED`: the seed of the writers and the chaos (default:
//!   from the clock; printed either way). Timing is not reproducible, so a
//!   seed repeats the plan, not the outcome;
//! - `LSYNC_PARTITION_KEEP`: a directory to copy the databases and logs to
//!   at the end (pass or fail);
//! - `LSYNC_TEST_LOG` (the sidecars' `RUST_LOG`, e.g. `debug` to see every
//!   prune) and `LSYNC_TEST_SHOW_LOGS`, as in `sidecar.rs`.
//!
//! Links and who dials: A dials B and C, B dials C; the listening side has no
//! `--peer`, so each pair has exactly one session, and it goes through that
//! pair's proxy.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng as _, RngExt, SeedableRng};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use lsync_tests::*;

/// Changes per batch, and the most changes served as one changeset: a peer
/// that missed more than `SINGLE_MAX` changes gets a stream of batches.
const BATCH: &str = "64";
const SINGLE_MAX: &str = "64";
/// How often a delete picks one of the rows that arrived over the last
/// `RECENT` (rows that came in around a partition), rather than any row.
const RECENT_DELETES: f64 = 0.6;
const RECENT: Duration = Duration::from_millis(2000);
/// How long the databases may take to converge once every link is healed.
const CONVERGE: Duration = Duration::from_secs(60);
/// How long three different dumps must stay unchanged to count as settled.
const SETTLED: Duration = Duration::from_secs(10);
/// Tombstone samples, to see pruning happen while the test runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Writers are busy (a write every 1-4 ms) this share of the time, calm
/// (every 20-120 ms) otherwise.
const BUSY: f64 = 0.4;

const NAMES: [&str; 3] = ["A", "B", "C"];

// ---------------------------------------------------------------------------
// A seeded RNG (rand's StdRng), so that a failing run can be repeated as
// far as timing allows.
// ---------------------------------------------------------------------------

struct Rng(StdRng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(StdRng::seed_from_u64(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.random_range(0..n)
        }
    }
    fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p)
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.0.random_range(lo..=hi))
    }
    /// A seed for another stream.
    fn fork(&mut self) -> Rng {
        Rng::new(self.next())
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

// ---------------------------------------------------------------------------
// The app writers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Deleted {
    uuid: String,
    table: &'static str,
    by: &'static str,
    at: Duration,
}

#[derive(Default)]
struct WriterReport {
    ops: u64,
    busy: u64,
    errors: Vec<String>,
    deleted: Vec<Deleted>,
    per_op: BTreeMap<&'static str, u64>,
}

/// A random row of `table`: (id, uuid). With `above`, one of the rows whose
/// local id is above it (rows that arrived or were created lately), if any.
fn pick_row(
    c: &Connection,
    rng: &mut Rng,
    table: &str,
    above: Option<i64>,
) -> rusqlite::Result<Option<(i64, String)>> {
    let floor = above.unwrap_or(i64::MIN);
    let mut n: i64 = c.query_row(
        &format!("SELECT count(*) FROM {table} WHERE id > ?1"),
        [floor],
        |r| r.get(0),
    )?;
    let floor = if n == 0 && above.is_some() {
        n = c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        i64::MIN
    } else {
        floor
    };
    if n == 0 {
        return Ok(None);
    }
    c.query_row(
        &format!("SELECT id, uuid FROM {table} WHERE id > ?1 ORDER BY id LIMIT 1 OFFSET ?2"),
        params![floor, rng.below(n as u64) as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// The highest local ids of tags and tag assignments over the last
/// `RECENT` (sampled as the writer goes), to tell recent rows from others.
struct Recent(VecDeque<(Instant, i64, i64)>);

impl Recent {
    fn sample(&mut self, c: &Connection) -> rusqlite::Result<()> {
        let (t, a) = c.query_row(
            "SELECT (SELECT coalesce(max(id), 0) FROM tags),
                    (SELECT coalesce(max(id), 0) FROM tag_assignments)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let now = Instant::now();
        self.0.push_back((now, t, a));
        // Keep one sample at least RECENT old: it is the floor.
        while self.0.len() > 1 && now - self.0[1].0 >= RECENT {
            self.0.pop_front();
        }
        Ok(())
    }
    fn floors(&self) -> (i64, i64) {
        self.0.front().map_or((0, 0), |s| (s.1, s.2))
    }
}

/// One ordinary write, in one IMMEDIATE transaction. Returns the op's name
/// and the rows it deleted.
fn write_once(
    c: &mut Connection,
    me: &'static str,
    rng: &mut Rng,
    own_locations: &[i64],
    recent: (i64, i64),
    n: u64,
) -> rusqlite::Result<(&'static str, Vec<(&'static str, String)>)> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut deleted = Vec::new();
    let roll = rng.below(100);
    let op = match roll {
        0..=21 => {
            tx.execute(
                "INSERT INTO tags(name, color) VALUES (?1, ?2)",
                params![
                    format!("{me}-tag-{n}"),
                    format!("#{:06x}", rng.below(1 << 24))
                ],
            )?;
            "insert tag"
        }
        22..=35 => {
            if let Some((id, _)) = pick_row(&tx, rng, "tags", None)? {
                if rng.chance(0.5) {
                    tx.execute(
                        "UPDATE tags SET color = ?2 WHERE id = ?1",
                        params![id, format!("#{:06x}", rng.below(1 << 24))],
                    )?;
                } else {
                    tx.execute(
                        "UPDATE tags SET name = ?2 WHERE id = ?1",
                        params![id, format!("{me}-renamed-{n}")],
                    )?;
                }
            }
            "update tag"
        }
        36..=51 => {
            // A tag and its assignments (the app cascades by hand: the
            // example schema declares no ON DELETE).
            let above = rng.chance(RECENT_DELETES).then_some(recent.0);
            if let Some((id, uuid)) = pick_row(&tx, rng, "tags", above)? {
                let assigned: Vec<String> = {
                    let mut s = tx.prepare("SELECT uuid FROM tag_assignments WHERE tag_id = ?1")?;
                    let v = s.query_map([id], |r| r.get(0))?.collect::<Result<_, _>>()?;
                    v
                };
                let gone = tx.execute("DELETE FROM tag_assignments WHERE tag_id = ?1", [id])?;
                assert_eq!(gone, assigned.len());
                deleted.extend(assigned.into_iter().map(|u| ("tag_assignments", u)));
                if tx.execute("DELETE FROM tags WHERE id = ?1", [id])? == 1 {
                    deleted.push(("tags", uuid));
                }
            }
            "delete tag"
        }
        52..=71 => {
            let tag = pick_row(&tx, rng, "tags", None)?;
            let entry = pick_row(&tx, rng, "entries", None)?;
            if let (Some((t, _)), Some((e, _))) = (tag, entry) {
                tx.execute(
                    "INSERT INTO tag_assignments(tag_id, entry_id, created_at) VALUES (?1, ?2, ?3)",
                    params![t, e, 1_700_000_000_000i64 + n as i64],
                )?;
            }
            "insert assignment"
        }
        72..=77 => {
            if let Some((id, _)) = pick_row(&tx, rng, "tag_assignments", None)? {
                tx.execute(
                    "UPDATE tag_assignments SET created_at = created_at + 1 WHERE id = ?1",
                    [id],
                )?;
            }
            "update assignment"
        }
        78..=89 => {
            let above = rng.chance(RECENT_DELETES).then_some(recent.1);
            if let Some((id, uuid)) = pick_row(&tx, rng, "tag_assignments", above)? {
                if tx.execute("DELETE FROM tag_assignments WHERE id = ?1", [id])? == 1 {
                    deleted.push(("tag_assignments", uuid));
                }
            }
            "delete assignment"
        }
        90..=94 => {
            // Device-owned: a few new entries under one of our locations.
            let loc = own_locations[rng.below(own_locations.len() as u64) as usize];
            for k in 0..1 + rng.below(6) {
                tx.execute(
                    "INSERT INTO entries(parent_id, location_id, name, size, kind, mtime)
                     VALUES (NULL, ?1, ?2, ?3, 0, ?4)",
                    params![
                        loc,
                        format!("{me}-file-{n}-{k}"),
                        rng.below(1 << 20) as i64,
                        1_700_000_000_000i64 + n as i64
                    ],
                )?;
            }
            "insert entries"
        }
        _ => {
            let loc = own_locations[rng.below(own_locations.len() as u64) as usize];
            let off = rng.below(16) as i64;
            tx.execute(
                "UPDATE entries SET size = size + 1 WHERE id IN
                   (SELECT id FROM entries WHERE location_id = ?1 ORDER BY id LIMIT 4 OFFSET ?2)",
                params![loc, off],
            )?;
            "update entries"
        }
    };
    tx.commit()?;
    Ok((op, deleted))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Writes on device `me` until `until` (or `stop`), a write every few ms.
fn writer(
    me: &'static str,
    db: PathBuf,
    own_locations: Vec<i64>,
    mut rng: Rng,
    start: Instant,
    until: Instant,
    stop: Arc<AtomicBool>,
) -> WriterReport {
    let mut c = open(&db);
    let mut rep = WriterReport::default();
    let mut n = 0u64;
    // Devices are busy in bursts and calm in between, each on its own
    // schedule, so that one side of a healed link often has much more to
    // send than the other.
    let mut busy = false;
    let mut switch_at = Instant::now();
    let mut recent = Recent(VecDeque::new());
    while Instant::now() < until && !stop.load(Ordering::SeqCst) && n < 1_000_000 {
        n += 1;
        if let Err(e) = recent.sample(&c) {
            if !is_busy(&e) {
                panic!("{me}: {e}");
            }
        }
        match write_once(&mut c, me, &mut rng, &own_locations, recent.floors(), n) {
            Ok((op, deleted)) => {
                rep.ops += 1;
                *rep.per_op.entry(op).or_default() += 1;
                let at = start.elapsed();
                rep.deleted
                    .extend(deleted.into_iter().map(|(table, uuid)| Deleted {
                        uuid,
                        table,
                        by: me,
                        at,
                    }));
            }
            Err(e) if is_busy(&e) => rep.busy += 1,
            Err(e) => {
                if rep.errors.len() < 20 {
                    rep.errors.push(format!(
                        "{me} at {:.1}s: {e}",
                        start.elapsed().as_secs_f64()
                    ));
                }
            }
        }
        if Instant::now() >= switch_at {
            busy = rng.chance(BUSY);
            switch_at = Instant::now() + rng.ms(500, 3000);
        }
        sleep(if busy { rng.ms(1, 4) } else { rng.ms(20, 120) });
    }
    rep
}

// ---------------------------------------------------------------------------
// Watching tombstones
// ---------------------------------------------------------------------------

fn tombstones(c: &Connection) -> BTreeSet<String> {
    let mut s = c
        .prepare("SELECT CAST(uuid AS TEXT) FROM lsync_clock WHERE uuid IS NOT NULL")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Samples each device's tombstones until `stop`; returns, per device, how
/// many tombstones disappeared between two samples (pruned: the writers
/// never insert a uuid again) and the largest count seen.
fn watch_tombstones(dbs: Vec<PathBuf>, stop: Arc<AtomicBool>) -> Vec<(u64, usize)> {
    let conns: Vec<Connection> = dbs.iter().map(|p| open(p)).collect();
    let mut prev: Vec<BTreeSet<String>> = vec![BTreeSet::new(); conns.len()];
    let mut out = vec![(0u64, 0usize); conns.len()];
    // Bounded: at most an hour of samples.
    for _ in 0..(3600 * 1000 / SAMPLE_EVERY.as_millis() as u64) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        for (i, c) in conns.iter().enumerate() {
            let now = tombstones(c);
            out[i].0 += prev[i].difference(&now).count() as u64;
            out[i].1 = out[i].1.max(now.len());
            prev[i] = now;
        }
        sleep(SAMPLE_EVERY);
    }
    out
}

// ---------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------

/// What each device knows of one row: live (local id, clock entries), a
/// tombstone, parked edits.
fn row_story(
    conns: &[&Connection],
    names: &HashMap<String, &str>,
    table: &str,
    uuid: &str,
) -> String {
    let mut out = String::new();
    for (i, c) in conns.iter().enumerate() {
        let tbl: i64 = c
            .query_row(
                "SELECT id FROM lsync_tables WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        let rid: Option<i64> = c
            .query_row(
                &format!("SELECT id FROM {table} WHERE uuid = ?1"),
                [uuid],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        let mut s = c
            .prepare(
                "SELECT k.seq, k.op, k.col, k.hlc, d.id FROM lsync_clock k
                 LEFT JOIN lsync_devices d ON d.idx = k.origin
                 WHERE k.tbl = ?1 AND (k.uuid = ?2 OR (?3 IS NOT NULL AND k.lo <= ?3 AND k.hi >= ?3))
                 ORDER BY k.seq",
            )
            .unwrap();
        let clocks: Vec<String> = s
            .query_map(params![tbl, uuid, rid], |r| {
                let origin: Option<String> = r.get(4)?;
                Ok(format!(
                    "seq {} op {} col {:?} hlc {} from {}",
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    origin
                        .as_deref()
                        .map_or("?", |o| names.get(o).copied().unwrap_or(o))
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let parked: i64 = c
            .query_row(
                "SELECT count(*) FROM lsync_parked WHERE tbl = ?1 AND uuid = ?2",
                params![tbl, uuid],
                |r| r.get(0),
            )
            .unwrap();
        out.push_str(&format!(
            "    {}: {} ; clock [{}] ; parked edits {parked}\n",
            NAMES[i],
            rid.map_or("absent".to_owned(), |r| format!("LIVE as rowid {r}")),
            clocks.join("; ")
        ));
    }
    out
}

/// Copies the databases and logs to `$LSYNC_PARTITION_KEEP`, if set.
fn keep(dir: &Path) {
    let Some(keep) = std::env::var_os("LSYNC_PARTITION_KEEP") else {
        return;
    };
    let keep = PathBuf::from(keep);
    let _ = std::fs::create_dir_all(&keep);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
        }
    }
    eprintln!("kept the databases and logs in {}", keep.display());
}

// ---------------------------------------------------------------------------
// The chaos plan
// ---------------------------------------------------------------------------

/// One move on the links (indexes into [A-B, A-C, B-C]).
#[derive(Debug, Clone, Copy)]
enum Move {
    Cut(usize),
    Heal(usize),
    HealAll,
}

/// The link between devices `i` and `j` (0 = A, 1 = B, 2 = C).
fn link_between(i: usize, j: usize) -> usize {
    match (i.min(j), i.max(j)) {
        (0, 1) => 0,
        (0, 2) => 1,
        (1, 2) => 2,
        _ => unreachable!("no link from a device to itself"),
    }
}

/// Link moves over `total`, at random. Most are "sweeps" around a random
/// device V with neighbours P and Q: cut P-V (V still hears Q, and relays
/// Q's rows that P never gets from V), cut Q-V too (V misses what P
/// deletes meanwhile), heal P-V (P and V catch up with each other, both
/// ways at once), then heal Q-V. The rest (one in five) cut or heal one
/// random link, or heal everything.
fn link_plan(rng: &mut Rng, total: Duration) -> Vec<(Duration, Move)> {
    let mut plan = Vec::new();
    let mut at = rng.ms(300, 1000);
    // Bounded: every step advances `at` by at least 120 ms.
    while at < total && plan.len() < 100_000 {
        match rng.below(10) {
            0..=7 => {
                let v = rng.below(3) as usize;
                let p = (v + 1 + rng.below(2) as usize) % 3;
                let q = 3 - v - p;
                let (pv, qv) = (link_between(p, v), link_between(q, v));
                plan.push((at, Move::Cut(pv)));
                at += rng.ms(300, 1500);
                plan.push((at, Move::Cut(qv)));
                at += rng.ms(200, 900);
                plan.push((at, Move::Heal(pv)));
                at += rng.ms(300, 1200);
                plan.push((at, Move::Heal(qv)));
                at += rng.ms(120, 600);
            }
            8 => {
                let l = rng.below(3) as usize;
                let m = if rng.chance(0.5) {
                    Move::Cut(l)
                } else {
                    Move::Heal(l)
                };
                plan.push((at, m));
                at += rng.ms(200, 1500);
            }
            _ => {
                plan.push((at, Move::HealAll));
                at += rng.ms(200, 1500);
            }
        }
    }
    plan
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// Sets the flag when dropped, so that helper threads stop also when the
/// test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn deleted_shared_rows_stay_deleted_across_partitions_kills_and_pruning() {
    let secs = env_u64("LSYNC_PARTITION_SECS").unwrap_or(30).max(5);
    let seed = env_u64("LSYNC_PARTITION_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!(
        "partition test: {secs} s of writes and chaos, seed {seed} \
         (repeat with LSYNC_PARTITION_SEED={seed} LSYNC_PARTITION_SECS={secs})"
    );
    let mut rng = Rng::new(seed);

    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    let (c_db, c) = library_db(dir.path(), "c");
    let library = library_id(&a);
    for conn in [&b, &c] {
        let _: String = conn
            .query_row("SELECT lsync_library_id(?1)", [&library], |r| r.get(0))
            .unwrap();
    }
    let conns = [&a, &b, &c];
    let dbs = [a_db.clone(), b_db.clone(), c_db.clone()];
    // Each device indexes a small tree first, and tags some of it.
    let mut own_locations = Vec::new();
    for (i, conn) in conns.iter().enumerate() {
        let name = NAMES[i].to_lowercase();
        own_locations.push(vec![
            index_tree(conn, &format!("{name}-disk"), 24),
            index_tree(conn, &format!("{name}-usb"), 8),
        ]);
        for k in 0..5 {
            add_tag(conn, &format!("{name}-seed-{k}"), "grey");
        }
    }
    let names: HashMap<String, &str> = conns
        .iter()
        .enumerate()
        .map(|(i, c)| (device_id(c), NAMES[i]))
        .collect();

    // Sidecars and links. C listens only; B dials C; A dials B and C.
    let extra: Vec<&str> = FAST_RETRY
        .iter()
        .copied()
        .chain(["--batch", BATCH, "--single-max", SINGLE_MAX])
        .collect();
    let node_c = Sidecar::start(dir.path(), "C", &c_db, &secret, &[], &extra);
    let bc = Link::new("B-C", node_c.addr(), rng.next());
    let ac = Link::new("A-C", node_c.addr(), rng.next());
    let node_b = Sidecar::start(dir.path(), "B", &b_db, &secret, &[bc.addr()], &extra);
    let ab = Link::new("A-B", node_b.addr(), rng.next());
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &a_db,
        &secret,
        &[ab.addr(), ac.addr()],
        &extra,
    );
    eprintln!(
        "links: A-B {} -> B {}, A-C {} -> C {}, B-C {} -> C {}; writers start at unix ms {}",
        ab.addr(),
        node_b.addr(),
        ac.addr(),
        node_c.addr(),
        bc.addr(),
        node_c.addr(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let nodes = [&node_a, &node_b, &node_c];
    let links = [&ab, &ac, &bc];
    wait_for("the three devices hold the same seed data", &nodes, || {
        converged(&conns, 2 * 3 + 32 * 3 + 5 * 3)
    });

    // Writers and the tombstone watcher.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let writers: Vec<JoinHandle<WriterReport>> = (0..3)
        .map(|i| {
            let (db, locs, r, s) = (
                dbs[i].clone(),
                own_locations[i].clone(),
                rng.fork(),
                stop.clone(),
            );
            thread::Builder::new()
                .name(format!("writer {}", NAMES[i]))
                .spawn(move || writer(NAMES[i], db, locs, r, start, until, s))
                .unwrap()
        })
        .collect();
    let watch_stop = Arc::new(AtomicBool::new(false));
    let _watch_guard = StopOnDrop(watch_stop.clone());
    let watcher = {
        let (dbs, s) = (dbs.to_vec(), watch_stop.clone());
        thread::spawn(move || watch_tombstones(dbs, s))
    };

    // The chaos: links cut and healed at random (sometimes a whole device
    // isolated, sometimes everything healed), a lossy period, and two
    // sidecars killed and restarted.
    let t = |d: f64| Duration::from_secs_f64(secs as f64 * d);
    let first = rng.below(3) as usize;
    let second = (first + 1 + rng.below(2) as usize) % 3;
    let mut kills = [
        (t(0.3), first, rng.ms(300, 2000), None::<Instant>),
        (t(0.6), second, rng.ms(300, 2000), None::<Instant>),
    ];
    let lossy = (t(0.42), t(0.42) + t(0.25).min(Duration::from_secs(10)));
    let mut lossy_on = false;
    let plan = link_plan(&mut rng, Duration::from_secs(secs));
    let mut next = plan.iter().peekable();
    let mut events = 0u64;
    let log = |what: String| {
        eprintln!("[{:7.3}s] {what}", start.elapsed().as_secs_f64());
    };
    let max_ticks = (secs * 1000 / 10) + 1000;
    for _ in 0..max_ticks {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let el = now - start;
        while let Some((_, m)) = next.next_if(|(at, _)| *at <= el) {
            events += 1;
            match *m {
                Move::Cut(l) => {
                    let n = links[l].cut();
                    log(format!("cut {} ({n} connections)", links[l].name()));
                }
                Move::Heal(l) => {
                    links[l].heal();
                    log(format!("heal {}", links[l].name()));
                }
                Move::HealAll => {
                    for l in links {
                        l.heal();
                    }
                    log("heal all".into());
                }
            }
        }
        for k in kills.iter_mut() {
            let (at, dev, down, killed) = k;
            match killed {
                None if el >= *at => {
                    nodes[*dev].kill9();
                    *killed = Some(now);
                    log(format!("kill -9 {}", NAMES[*dev]));
                }
                Some(when) if now >= *when + *down && !nodes[*dev].alive() => {
                    nodes[*dev].restart();
                    log(format!("restarted {}", NAMES[*dev]));
                }
                _ => {}
            }
        }
        let want_lossy = el >= lossy.0 && el < lossy.1;
        if want_lossy != lossy_on {
            lossy_on = want_lossy;
            for l in links {
                l.set_lossy(lossy_on);
            }
            log(format!("lossy {}", if lossy_on { "on" } else { "off" }));
        }
        sleep(Duration::from_millis(10));
    }

    // Everything heals; the writers stop.
    for l in links {
        l.set_lossy(false);
        l.heal();
    }
    for n in nodes {
        if !n.alive() {
            n.restart();
        }
    }
    log("healed everything".into());
    stop.store(true, Ordering::SeqCst);
    let reports: Vec<WriterReport> = writers
        .into_iter()
        .map(|h| h.join().expect("a writer panicked"))
        .collect();
    watch_stop.store(true, Ordering::SeqCst);
    let pruned: Vec<(u64, usize)> = watcher.join().expect("the watcher panicked");

    // Convergence, bounded. Not `wait_for`: on a timeout the checks below
    // say what is wrong. Three dumps that differ and have not changed for
    // `SETTLED` will not converge any more: stop waiting then.
    let converge_start = Instant::now();
    let mut dumps: Vec<Vec<String>> = Vec::new();
    let mut converged_in = None;
    let mut unchanged_since = Instant::now();
    let polls = CONVERGE.as_millis() / 250 + 1;
    for _ in 0..polls {
        for n in nodes {
            if let Some(s) = n.try_status() {
                panic!("{} exited ({s}) while converging", n.name);
            }
        }
        let now: Vec<Vec<String>> = conns.iter().map(|c| library_dump(c)).collect();
        if now != dumps {
            unchanged_since = Instant::now();
        }
        dumps = now;
        if dumps[1] == dumps[0] && dumps[2] == dumps[0] {
            // Stable for a second, too.
            sleep(Duration::from_secs(1));
            let again: Vec<Vec<String>> = conns.iter().map(|c| library_dump(c)).collect();
            if again == dumps {
                converged_in = Some(converge_start.elapsed());
                break;
            }
            dumps = again;
            unchanged_since = Instant::now();
        }
        if converge_start.elapsed() > CONVERGE || unchanged_since.elapsed() > SETTLED {
            break;
        }
        sleep(Duration::from_millis(250));
    }
    let waited = converge_start.elapsed();

    // What happened.
    let deleted: Vec<Deleted> = reports.iter().flat_map(|r| r.deleted.clone()).collect();
    let ops: u64 = reports.iter().map(|r| r.ops).sum();
    let tomb_now: Vec<usize> = conns.iter().map(|c| tombstones(c).len()).collect();
    let parked: Vec<i64> = conns
        .iter()
        .map(|c| scalar(c, "SELECT count(*) FROM lsync_parked"))
        .collect();
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "writer {}: {} writes ({} busy), {} rows deleted, {:?}",
            NAMES[i],
            r.ops,
            r.busy,
            r.deleted.len(),
            r.per_op
        );
    }
    for l in links {
        eprintln!("link {}", l.stats());
    }
    eprintln!(
        "chaos: {events} link moves; tombstones pruned while running {:?} (most held {:?}); \
         tombstones now {tomb_now:?}; parked edits now {parked:?}; converged {}",
        pruned.iter().map(|p| p.0).collect::<Vec<_>>(),
        pruned.iter().map(|p| p.1).collect::<Vec<_>>(),
        converged_in.map_or("NOT within the limit".to_owned(), |d| format!(
            "in {:.1} s",
            d.as_secs_f64()
        ))
    );

    // 1. No deleted row is live anywhere.
    let mut back = Vec::new();
    for d in &deleted {
        let on: Vec<&str> = conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.query_row(
                    &format!("SELECT 1 FROM {} WHERE uuid = ?1", d.table),
                    [&d.uuid],
                    |_| Ok(()),
                )
                .optional()
                .unwrap()
                .is_some()
            })
            .map(|(i, _)| NAMES[i])
            .collect();
        if !on.is_empty() {
            back.push((d, on));
        }
    }
    if !back.is_empty() {
        let mut msg = format!(
            "{} of {} deleted rows are live again (seed {seed}, {secs} s):\n",
            back.len(),
            deleted.len()
        );
        for (d, on) in back.iter().take(10) {
            msg.push_str(&format!(
                "  {} {} deleted on {} at {:.3} s, live on {:?}:\n{}",
                d.table,
                d.uuid,
                d.by,
                d.at.as_secs_f64(),
                on,
                row_story(&conns, &names, d.table, &d.uuid)
            ));
        }
        keep(dir.path());
        panic!("{msg}");
    }

    // 2. The three databases are identical.
    for i in 1..3 {
        if dumps[i] != dumps[0] {
            keep(dir.path());
            panic!(
                "A and {} differ after {:.0} s of healing (seed {seed}, {secs} s): {}",
                NAMES[i],
                waited.as_secs_f64(),
                first_difference(&dumps[0], &dumps[i])
            );
        }
    }

    // 3. No edit waits forever for a row that is gone: once the replicas
    //    agree, a parked edit is one that arrived after its row's tombstone
    //    was pruned (the older state that pruning must wait for).
    if parked.iter().any(|n| *n > 0) {
        let gone: HashMap<&str, &Deleted> = deleted.iter().map(|d| (d.uuid.as_str(), d)).collect();
        let mut msg =
            format!("edits still parked after convergence {parked:?} (seed {seed}, {secs} s):\n");
        for (i, c) in conns.iter().enumerate() {
            let mut s = c
                .prepare(
                    "SELECT t.name, CAST(p.uuid AS TEXT), p.col, p.hlc, p.origin
                     FROM lsync_parked p JOIN lsync_tables t ON t.id = p.tbl LIMIT 10",
                )
                .unwrap();
            let rows: Vec<(String, String, String, i64, Option<String>)> = s
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for (tbl, uuid, col, hlc, origin) in rows {
                let by = origin
                    .as_deref()
                    .map_or("?", |o| names.get(o).copied().unwrap_or(o));
                msg.push_str(&format!(
                    "  on {}: {tbl} {uuid} column {col} (hlc {hlc}, from {by}); {}\n",
                    NAMES[i],
                    gone.get(uuid.as_str())
                        .map_or("never deleted by a writer".to_owned(), |d| {
                            format!("deleted on {} at {:.3} s", d.by, d.at.as_secs_f64())
                        })
                ));
            }
        }
        keep(dir.path());
        panic!("{msg}");
    }

    // 4. The test tested something: deletes, writes, and tombstones pruned
    //    while links were being cut.
    let errors: Vec<&String> = reports.iter().flat_map(|r| r.errors.iter()).collect();
    assert!(errors.is_empty(), "the writers failed: {errors:#?}");
    assert!(
        ops >= 20 * secs && deleted.len() as u64 >= 5 * secs,
        "too few writes ({ops}) or deletes ({}) to test anything",
        deleted.len()
    );
    assert!(
        pruned.iter().map(|p| p.0).sum::<u64>() > 0,
        "no tombstone was pruned while the test ran: it tested nothing"
    );
    keep(dir.path());
}
