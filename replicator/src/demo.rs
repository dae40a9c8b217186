//! `lsync demo [DIR]`: two devices on loopback. Device A indexes a real
//! directory tree into its `entries`; device B tags some of them; both
//! converge, and the demo prints counts and timings, then stops.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rusqlite::{params, Connection};

use crate::cluster::{wait_until, Cluster, LIBRARY_SQL, TRACK_SQL};

/// Stop indexing after this many entries, to keep the demo short.
const MAX_ENTRIES: usize = 300_000;
const TABLES: [&str; 4] = ["locations", "entries", "tags", "tag_assignments"];

pub fn run(root: &Path, keep: bool) -> Result<()> {
    let root = root
        .canonicalize()
        .with_context(|| format!("cannot index {}", root.display()))?;
    let dir = std::env::temp_dir().join(format!("lsync-demo-{}", std::process::id()));
    println!("lsync demo: two devices in {}", dir.display());
    let mut cluster = Cluster::create(&dir, 2, &format!("{LIBRARY_SQL}\n{TRACK_SQL}"))?;
    cluster.start(0, &[], &[])?;
    cluster.start(1, &[0], &[])?;

    let a = cluster.open(0)?;
    let started = Instant::now();
    let n = index(&a, &root)?;
    let indexed = started.elapsed();
    println!(
        "device A indexed {n} entries of {} in {:.2}s ({:.0}/s)",
        root.display(),
        indexed.as_secs_f64(),
        n as f64 / indexed.as_secs_f64().max(1e-9)
    );

    let b = cluster.open(1)?;
    let some = (n as i64).min(5_000);
    wait_until(Duration::from_millis(20), Duration::from_secs(120), || {
        Ok(count(&b, "entries")? >= some)
    })
    .context("device B received too few entries")?;
    let tagged = tag(&b)?;
    println!("device B created 3 tags and tagged {tagged} entries it received");

    let waited = wait_until(Duration::from_millis(20), Duration::from_secs(300), || {
        Ok(TABLES
            .iter()
            .all(|t| count(&a, t).ok() == count(&b, t).ok()))
    })
    .context("the devices did not converge")?;
    let total = started.elapsed();
    println!(
        "converged {:.2}s after indexing started ({:.2}s after the tags):",
        total.as_secs_f64(),
        waited.as_secs_f64()
    );
    println!("{:<16} {:>10} {:>10}", "table", "device A", "device B");
    for t in TABLES {
        println!("{t:<16} {:>10} {:>10}", count(&a, t)?, count(&b, t)?);
    }
    let sample: Option<(String, String)> = b
        .query_row(
            "SELECT e.name, t.name FROM tag_assignments ta JOIN entries e ON e.id = ta.entry_id
             JOIN tags t ON t.id = ta.tag_id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    if let Some((entry, tag)) = sample {
        let at_a: i64 = a.query_row(
            "SELECT count(*) FROM tag_assignments ta JOIN entries e ON e.id = ta.entry_id
             JOIN tags t ON t.id = ta.tag_id WHERE e.name = ?1 AND t.name = ?2",
            params![entry, tag],
            |r| r.get(0),
        )?;
        println!(
            "e.g. '{entry}' tagged '{tag}' on B is tagged on A too: {}",
            at_a > 0
        );
    }
    drop((a, b));
    cluster.stop(0)?;
    cluster.stop(1)?;
    println!("replicator logs: {}", dir.display());
    if !keep {
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn count(c: &Connection, table: &str) -> Result<i64> {
    Ok(c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
}

fn mtime_ms(m: &std::fs::Metadata) -> Option<i64> {
    m.modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// Walks `root` into `locations` and `entries`, parents before children,
/// in one transaction per 10,000 entries.
fn index(c: &Connection, root: &Path) -> Result<usize> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    c.execute(
        "INSERT INTO locations(path, name, created_at) VALUES (?1, ?2, ?3)",
        params![root.to_string_lossy(), "demo", now],
    )?;
    let location = c.last_insert_rowid();
    let mut stack: Vec<(PathBuf, Option<i64>)> = vec![(root.to_owned(), None)];
    let mut n = 0usize;
    c.execute_batch("BEGIN")?;
    {
        let mut ins = c.prepare(
            "INSERT INTO entries(parent_id, location_id, name, size, kind, mtime) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        'walk: while let Some((dir, parent)) = stack.pop() {
            let Ok(read) = std::fs::read_dir(&dir) else {
                continue;
            };
            for item in read.flatten() {
                let Ok(meta) = item.path().symlink_metadata() else {
                    continue;
                };
                let kind = if meta.is_dir() {
                    1
                } else if meta.file_type().is_symlink() {
                    2
                } else {
                    0
                };
                ins.execute(params![
                    parent,
                    location,
                    item.file_name().to_string_lossy(),
                    meta.len() as i64,
                    kind,
                    mtime_ms(&meta)
                ])?;
                n += 1;
                if kind == 1 {
                    stack.push((item.path(), Some(c.last_insert_rowid())));
                }
                if n.is_multiple_of(10_000) {
                    c.execute_batch("COMMIT; BEGIN")?;
                    eprintln!("  indexed {n} entries ...");
                }
                if n >= MAX_ENTRIES {
                    break 'walk;
                }
            }
        }
    }
    c.execute_batch("COMMIT")?;
    Ok(n)
}

/// Tags on device B: a few shared tags, assigned to entries from A.
fn tag(c: &Connection) -> Result<usize> {
    c.execute_batch(
        "BEGIN;
         INSERT INTO tags(name, color) VALUES ('favorite', '#f5a623'), ('work', '#4a90e2'), ('archive', '#7ed321');
         COMMIT;",
    )?;
    let tagged = c.execute(
        "WITH t AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM tags)
         INSERT INTO tag_assignments(tag_id, entry_id, created_at)
         SELECT t.id, e.id, unixepoch() * 1000
         FROM entries e JOIN t ON t.k = e.id % 3 WHERE e.id % 97 = 0 LIMIT 500",
        [],
    )?;
    Ok(tagged)
}
