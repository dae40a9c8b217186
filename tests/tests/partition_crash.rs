//! End-to-end (issue 13, "partition and crash tests"): three real `lsync
//! run` sidecars in a full mesh, every link through a proxy on 127.0.0.1
//! that the test cuts and heals (`lsync_tests::Link`), while an app writer
//! on each device inserts and edits rows. Links are cut and healed at
//! random and sidecars are killed with SIGKILL and restarted, from one
//! seeded plan (the seed is printed; timing is not reproducible, so a seed
//! repeats the plan, not the outcome). At the end every link heals and the
//! writers stop; then the three databases must read the same through global
//! ids, hold every row a writer committed (nothing lost) and nothing twice.
//!
//! "Nothing twice" is the point of the schema: `notes` has no id column of
//! its own (lsync keeps its global ids), and `marks` is identified by its
//! pair of FKs, so the same pair marked on two devices at once must end as
//! one row. No uuid UNIQUE constraint would catch a change applied twice.
//!
//! Loopback only (no network namespaces: they need root and iproute2, which a
//! clean CI machine may not have). Bounded: `LSYNC_CRASH_SECS` of chaos
//! (default 12), then at most `CONVERGE` to converge. `LSYNC_CRASH_SEED`
//! repeats a plan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng as _, RngExt, SeedableRng};
use rusqlite::{params, Connection, TransactionBehavior};

use lsync_tests::*;

/// A device-owned table, a shared one whose ids lsync keeps, and a shared
/// join table identified by its two FKs.
const CRASH_SCHEMA: &str = "
CREATE TABLE files(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT NOT NULL, size INTEGER);
CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL, n INTEGER);
CREATE TABLE marks(
  file_id INTEGER NOT NULL REFERENCES files(id),
  note_id INTEGER NOT NULL REFERENCES notes(id),
  weight INTEGER,
  PRIMARY KEY (file_id, note_id));
SELECT lsync_track('files', 'device_owned');
SELECT lsync_track('notes', 'shared');
SELECT lsync_track('marks', 'shared');
";

const DEVICES: [&str; 3] = ["A", "B", "C"];
/// How long the databases may take to converge once every link is healed.
const CONVERGE: Duration = Duration::from_secs(30);
/// Small batches: a peer that missed more catches up by a stream of them.
const SIDECAR_FLAGS: [&str; 4] = ["--batch", "32", "--single-max", "32"];
/// Links delay a fifth of the chunks by up to 20 ms.
const LINK_JITTER: (f64, u64) = (0.2, 20);
/// Kills at most, over the run.
const MAX_KILLS: u32 = 6;

/// What a writer committed: every file, note and mark (by names, which are
/// unique per writer, so the same on every device).
#[derive(Default)]
struct Ledger {
    files: BTreeSet<String>,
    notes: BTreeSet<String>,
    marks: BTreeSet<(String, String)>,
    writes: u64,
    busy: u64,
}

/// The `k`-th of `n` rows of `sql` (one text column), if any.
fn nth_name(c: &Connection, sql: &str, rng: &mut StdRng) -> rusqlite::Result<Option<String>> {
    let n: i64 = c.query_row(&format!("SELECT count(*) FROM ({sql})"), [], |r| r.get(0))?;
    if n == 0 {
        return Ok(None);
    }
    let k = rng.random_range(0..n);
    c.query_row(&format!("{sql} LIMIT 1 OFFSET ?1"), [k], |r| r.get(0))
        .map(Some)
}

/// One write in one IMMEDIATE transaction; what it committed goes to
/// `ledger` only once the commit succeeded.
fn crash_write_once(
    c: &mut Connection,
    dev: &str,
    k: u64,
    rng: &mut StdRng,
    ledger: &mut Ledger,
) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let roll = rng.random_range(0..100);
    let mut file = None;
    let mut note = None;
    let mut mark = None;
    if roll < 30 {
        let name = format!("{dev}-f{k}");
        tx.execute(
            "INSERT INTO files(name, size) VALUES (?1, ?2)",
            params![name, k as i64],
        )?;
        file = Some(name);
    } else if roll < 55 {
        let body = format!("{dev}-n{k}");
        tx.execute("INSERT INTO notes(body, n) VALUES (?1, 0)", [&body])?;
        note = Some(body);
    } else if roll < 65 {
        // Only the owner writes its files.
        let own = format!("SELECT name FROM files WHERE name LIKE '{dev}-%' ORDER BY name");
        if let Some(name) = nth_name(&tx, &own, rng)? {
            tx.execute("UPDATE files SET size = size + 1 WHERE name = ?1", [name])?;
        }
    } else if roll < 75 {
        let any = "SELECT body FROM notes ORDER BY body";
        if let Some(body) = nth_name(&tx, any, rng)? {
            tx.execute("UPDATE notes SET n = n + 1 WHERE body = ?1", [body])?;
        }
    } else {
        // A mark on any file and note this device holds, from whichever
        // device: the same pair is often marked on two devices at once.
        let f = nth_name(&tx, "SELECT name FROM files ORDER BY name", rng)?;
        let n = nth_name(&tx, "SELECT body FROM notes ORDER BY body", rng)?;
        if let (Some(f), Some(n)) = (f, n) {
            let done = tx.execute(
                "INSERT INTO marks(file_id, note_id, weight)
                   SELECT f.id, n.id, ?3 FROM files f, notes n WHERE f.name = ?1 AND n.body = ?2
                 ON CONFLICT (file_id, note_id) DO UPDATE SET weight = excluded.weight",
                params![f, n, k as i64],
            )?;
            if done == 1 {
                mark = Some((f, n));
            }
        }
    }
    tx.commit()?;
    ledger.writes += 1;
    ledger.files.extend(file);
    ledger.notes.extend(note);
    ledger.marks.extend(mark);
    Ok(())
}

/// One device's app: writes until `stop`, busy or calm at random.
fn crash_writer(dev: &'static str, db: PathBuf, seed: u64, stop: Arc<AtomicBool>) -> Ledger {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = open(&db);
    let mut ledger = Ledger::default();
    // Bounded anyway: a write takes at least a millisecond of sleep.
    for k in 0..200_000u64 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match crash_write_once(&mut c, dev, k, &mut rng, &mut ledger) {
            Ok(()) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                ledger.busy += 1
            }
            Err(e) => panic!("writer {dev}: {e}"),
        }
        sleep(Duration::from_millis(rng.random_range(2..=25)));
    }
    ledger
}

/// Names repeated within one table, and global ids repeated in the dump:
/// "nothing twice".
fn crash_duplicates(c: &Connection) -> Vec<Vec<String>> {
    let mut dup = query_rows(
        c,
        "SELECT 'file', name, count(*) FROM files GROUP BY name HAVING count(*) > 1
         UNION ALL
         SELECT 'note', body, count(*) FROM notes GROUP BY body HAVING count(*) > 1
         UNION ALL
         SELECT 'mark', f.name || ' ' || n.body, count(*)
           FROM marks m JOIN files f ON f.id = m.file_id JOIN notes n ON n.id = m.note_id
          GROUP BY f.name, n.body HAVING count(*) > 1",
    );
    let mut gids: BTreeMap<String, usize> = BTreeMap::new();
    for row in dump_by_gid(c) {
        let key = row.split(" | ").next().unwrap_or_default().to_owned();
        *gids.entry(key).or_default() += 1;
    }
    dup.extend(
        gids.into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(g, n)| vec!["gid".into(), g, n.to_string()]),
    );
    dup
}

/// What `ledger` committed that `c` lacks, and how many rows `c` holds
/// beyond the ledgers (seed rows aside).
fn crash_missing(c: &Connection, all: &Ledger) -> (Vec<String>, [i64; 3]) {
    let names = |sql: &str| -> BTreeSet<String> {
        query_rows(c, sql)
            .into_iter()
            .map(|mut r| r.remove(0))
            .collect()
    };
    let files = names("SELECT name FROM files");
    let notes = names("SELECT body FROM notes");
    let marks = names(
        "SELECT f.name || ' ' || n.body FROM marks m
           JOIN files f ON f.id = m.file_id JOIN notes n ON n.id = m.note_id",
    );
    let mut missing: Vec<String> = Vec::new();
    missing.extend(all.files.difference(&files).map(|f| format!("file {f}")));
    missing.extend(all.notes.difference(&notes).map(|n| format!("note {n}")));
    missing.extend(
        all.marks
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .filter(|m| !marks.contains(m))
            .map(|m| format!("mark {m}")),
    );
    let extra = [
        count(c, "files") - all.files.len() as i64,
        count(c, "notes") - all.notes.len() as i64,
        count(c, "marks") - all.marks.len() as i64,
    ];
    (missing, extra)
}

/// Sets the `StopOnDrop`-like flag when the test ends, panicking or not, so
/// that no writer outlives it.
struct CrashStop(Arc<AtomicBool>);

impl Drop for CrashStop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn crash_env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

fn crash_db(dir: &Path, name: &str, library: Option<&str>) -> (PathBuf, Connection) {
    let path = dir.join(format!("{name}.db"));
    let c = open(&path);
    c.execute_batch(CRASH_SCHEMA).expect("schema and tracking");
    if let Some(lib) = library {
        join_library(&c, lib);
    }
    (path, c)
}

#[test]
fn three_peers_converge_without_duplicates_across_random_cuts_and_kill_9() {
    let secs = crash_env("LSYNC_CRASH_SECS").unwrap_or(12).clamp(3, 600);
    let seed = crash_env("LSYNC_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!(
        "partition and crash test: {secs} s, seed {seed} \
         (repeat with LSYNC_CRASH_SEED={seed} LSYNC_CRASH_SECS={secs})"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = crash_db(dir.path(), "a", None);
    let library = library_id(&a);
    let (b_db, b) = crash_db(dir.path(), "b", Some(&library));
    let (c_db, c) = crash_db(dir.path(), "c", Some(&library));
    let conns = [&a, &b, &c];
    let dbs = [a_db, b_db, c_db];

    // C listens only; B dials C; A dials B and C: one session per pair,
    // each through its link.
    let mut flags: Vec<&str> = FAST_RETRY.to_vec();
    flags.extend(SIDECAR_FLAGS);
    let node_c = Sidecar::start(dir.path(), "C", &dbs[2], &secret, &[], &flags);
    let bc = Link::with_jitter("B-C", node_c.addr(), rng.next_u64(), LINK_JITTER);
    let ac = Link::with_jitter("A-C", node_c.addr(), rng.next_u64(), LINK_JITTER);
    let node_b = Sidecar::start(dir.path(), "B", &dbs[1], &secret, &[bc.addr()], &flags);
    let ab = Link::with_jitter("A-B", node_b.addr(), rng.next_u64(), LINK_JITTER);
    let node_a = Sidecar::start(
        dir.path(),
        "A",
        &dbs[0],
        &secret,
        &[ab.addr(), ac.addr()],
        &flags,
    );
    let nodes = [&node_a, &node_b, &node_c];
    let links = [&ab, &ac, &bc];

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = CrashStop(stop.clone());
    let writers: Vec<JoinHandle<Ledger>> = (0..3)
        .map(|i| {
            let (db, s, seed) = (dbs[i].clone(), stop.clone(), rng.next_u64());
            thread::Builder::new()
                .name(format!("writer {}", DEVICES[i]))
                .spawn(move || crash_writer(DEVICES[i], db, seed, s))
                .unwrap()
        })
        .collect();

    // The chaos: a move every 0.2-1 s. Two kills are certain (at a quarter
    // and at three fifths of the run); the rest is drawn.
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let log = |what: String| eprintln!("[{:6.2}s] {what}", start.elapsed().as_secs_f64());
    let mut down: [Option<Instant>; 3] = [None; 3];
    let mut is_cut = [false; 3];
    let (mut kills, mut cuts, mut heals) = (0u32, 0u32, 0u32);
    let forced = [
        until - Duration::from_secs(secs) * 3 / 4,
        until - Duration::from_secs(secs) * 2 / 5,
    ];
    let mut next = start + Duration::from_millis(rng.random_range(200..=1000));
    let max_ticks = secs * 100 + 100;
    for _ in 0..max_ticks {
        let now = Instant::now();
        if now >= until {
            break;
        }
        for (i, d) in down.iter_mut().enumerate() {
            if d.is_some_and(|at| now >= at) {
                nodes[i].restart();
                *d = None;
                log(format!("restarted {}", DEVICES[i]));
            }
        }
        let must_kill = forced.iter().filter(|f| now >= **f).count() as u32 > kills;
        if now >= next || must_kill {
            next = now + Duration::from_millis(rng.random_range(200..=1000));
            let roll = rng.random_range(0..10);
            let up: Vec<usize> = (0..3).filter(|i| down[*i].is_none()).collect();
            if (must_kill || (roll < 2 && kills < MAX_KILLS)) && up.len() > 1 {
                let v = up[rng.random_range(0..up.len())];
                nodes[v].kill9();
                down[v] = Some(now + Duration::from_millis(rng.random_range(200..=1500)));
                kills += 1;
                log(format!("kill -9 {}", DEVICES[v]));
            } else {
                // Cut a live link, or heal a cut one (whichever there is,
                // when there is only one kind).
                let live: Vec<usize> = (0..3).filter(|l| !is_cut[*l]).collect();
                let dead: Vec<usize> = (0..3).filter(|l| is_cut[*l]).collect();
                if !live.is_empty() && (roll < 6 || dead.is_empty()) {
                    let l = live[rng.random_range(0..live.len())];
                    let n = links[l].cut();
                    is_cut[l] = true;
                    cuts += 1;
                    log(format!("cut {} ({n} connections)", links[l].name()));
                } else {
                    let l = dead[rng.random_range(0..dead.len())];
                    links[l].heal();
                    is_cut[l] = false;
                    heals += 1;
                    log(format!("heal {}", links[l].name()));
                }
            }
        }
        sleep(Duration::from_millis(10));
    }

    // Everything heals; the writers stop.
    for l in links {
        l.heal();
    }
    for (i, d) in down.iter().enumerate() {
        if d.is_some() {
            nodes[i].restart();
        }
    }
    stop.store(true, Ordering::SeqCst);
    let ledgers: Vec<Ledger> = writers
        .into_iter()
        .map(|h| h.join().expect("a writer panicked"))
        .collect();
    log(format!(
        "healed everything; {kills} kills, {cuts} cuts, {heals} heals; writes {:?} (busy {:?})",
        ledgers.iter().map(|l| l.writes).collect::<Vec<_>>(),
        ledgers.iter().map(|l| l.busy).collect::<Vec<_>>()
    ));
    let mut all = Ledger::default();
    for l in &ledgers {
        all.files.extend(l.files.iter().cloned());
        all.notes.extend(l.notes.iter().cloned());
        all.marks.extend(l.marks.iter().cloned());
        all.writes += l.writes;
    }

    // Converged: the same through global ids on all three, no link waiting.
    let same = || {
        let d: Vec<Vec<String>> = conns.iter().map(|c| dump_by_gid(c)).collect();
        d[0] == d[1]
            && d[0] == d[2]
            && conns
                .iter()
                .all(|c| scalar::<i64>(c, "SELECT count(*) FROM lsync_deferred") == 0)
    };
    wait_for_within(
        "three devices the same through global ids",
        &nodes,
        CONVERGE,
        || {
            let want = all.files.len() as i64;
            conns.iter().all(|c| count(c, "files") >= want) && same()
        },
    );
    log("converged".into());
    let dumps: Vec<Vec<String>> = conns.iter().map(|c| dump_by_gid(c)).collect();
    for i in 1..3 {
        assert_eq!(
            dumps[i],
            dumps[0],
            "A and {} differ (seed {seed}): {}",
            DEVICES[i],
            first_difference(&dumps[0], &dumps[i])
        );
    }

    // Nothing twice, nothing lost, nothing invented; and the run tested
    // something.
    for (i, c) in conns.iter().enumerate() {
        let dup = crash_duplicates(c);
        assert!(
            dup.is_empty(),
            "duplicates on {} (seed {seed}): {dup:?}",
            DEVICES[i]
        );
        let (missing, extra) = crash_missing(c, &all);
        assert!(
            missing.is_empty(),
            "{} of the committed rows are missing on {} (seed {seed}): {:?}",
            missing.len(),
            DEVICES[i],
            &missing[..missing.len().min(10)]
        );
        assert_eq!(
            extra,
            [0, 0, 0],
            "rows no writer committed on {} (seed {seed})",
            DEVICES[i]
        );
        let q = query_rows(c, "SELECT tbl, op, error FROM lsync_conflicts");
        assert!(q.is_empty(), "quarantined on {}: {q:?}", DEVICES[i]);
    }
    assert!(
        kills >= 2 && cuts >= 2,
        "too little chaos: {kills} kills, {cuts} cuts"
    );
    assert!(
        all.files.len() >= 3 && all.notes.len() >= 3 && !all.marks.is_empty(),
        "too few writes to test anything: {} files, {} notes, {} marks",
        all.files.len(),
        all.notes.len(),
        all.marks.len()
    );
    for n in nodes {
        assert!(n.alive(), "{} exited", n.name);
    }
}
