//! End-to-end benchmarks over real `lsync run` processes on loopback:
//! `lsync bench latency` (single small commits) and `lsync bench propagate`
//! (a bulk update of rows that are already synced).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rusqlite::params;

use super::clock::process_cpu;
use super::{baseline, data, TempDir};
use crate::cli::{LatencyArgs, PropagateArgs, UuidKind};
use crate::cluster::{wait_until, Cluster, LIBRARY_SQL, TRACK_SQL};

fn two_peers(tag: &str, extra: &[&str]) -> Result<(Cluster, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("lsync-bench-{tag}-{}", std::process::id()));
    let mut cluster = Cluster::create(&dir, 2, &format!("{LIBRARY_SQL}\n{TRACK_SQL}"))?;
    cluster.start(0, &[], extra)?;
    cluster.start(1, &[0], extra)?;
    // Wait for the session: a first row must make it across.
    let a = cluster.open(0)?;
    let b = cluster.open(1)?;
    a.execute(
        "INSERT INTO tags(uuid, name) VALUES ('warmup', 'warmup')",
        [],
    )?;
    wait_until(Duration::from_millis(2), Duration::from_secs(30), || {
        Ok(
            b.query_row("SELECT count(*) FROM tags WHERE uuid = 'warmup'", [], |r| {
                r.get::<_, i64>(0)
            })? == 1,
        )
    })
    .context("the two replicators did not connect")?;
    Ok((cluster, dir))
}

/// Stops the replicators and removes their files (kept, and named, with
/// `--keep`, to read the logs).
fn finish(cluster: Cluster, dir: &std::path::Path, keep: bool) {
    drop(cluster);
    if !keep {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        eprintln!("kept {}", dir.display());
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn latency(args: &LatencyArgs) -> Result<()> {
    let extra: &[&str] = if args.no_watch { &["--no-watch"] } else { &[] };
    let (cluster, dir) = two_peers("latency", extra)?;
    let a = cluster.open(0)?;
    let b = cluster.open(1)?;
    let mut seen = b.prepare("SELECT count(*) FROM tags WHERE uuid = ?1")?;
    let mut ms = Vec::with_capacity(args.commits as usize);
    let cpu_before = cpu_times(&cluster)?;
    for i in 0..args.commits {
        let uuid = uuid::Uuid::now_v7().to_string();
        let started = Instant::now();
        a.execute(
            "INSERT INTO tags(uuid, name, color) VALUES (?1, ?2, '#000')",
            params![uuid, format!("probe-{i}")],
        )?;
        loop {
            if seen.query_row([&uuid], |r| r.get::<_, i64>(0))? == 1 {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                anyhow::bail!("commit {i} did not arrive within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let per_commit: Vec<f64> = cpu_times(&cluster)?
        .iter()
        .zip(cpu_before)
        .map(|(a, b)| a.saturating_sub(b).as_secs_f64() * 1000.0 / f64::from(args.commits))
        .collect();
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&ms, 0.50), percentile(&ms, 0.99));
    let idle = idle_cpu(&cluster, Duration::from_secs(args.idle_secs))?;
    let mode = if args.no_watch {
        "polling every 5 ms (--no-watch)"
    } else {
        "watching the WAL"
    };
    println!(
        "lsync bench latency: {} single-row commits on A, time until visible on B; replicators {mode}",
        args.commits
    );
    println!(
        "p50 {p50:.2} ms (target <= 2)   p99 {p99:.2} ms   max {:.2} ms",
        ms[ms.len() - 1]
    );
    println!(
        "CPU per commit: A {:.3} ms, B {:.3} ms",
        per_commit[0], per_commit[1]
    );
    println!(
        "idle CPU over {} s: A {:.3} ms/s, B {:.3} ms/s (target 0)",
        args.idle_secs, idle[0], idle[1]
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"commits": args.commits, "p50_ms": p50, "p99_ms": p99,
                "max_ms": ms[ms.len() - 1], "watch": !args.no_watch,
                "cpu_ms_per_commit": per_commit, "idle_cpu_ms_per_s": idle})
        );
    }
    finish(cluster, &dir, args.keep);
    Ok(())
}

/// CPU time each of the two replicators has consumed so far.
fn cpu_times(cluster: &Cluster) -> Result<[Duration; 2]> {
    let cpu = |i: usize| {
        cluster
            .pid(i)
            .and_then(process_cpu)
            .context("reading a replicator's CPU time from /proc")
    };
    Ok([cpu(0)?, cpu(1)?])
}

/// CPU milliseconds per second each replicator spends over `span` while
/// nothing is written (after a moment for the last commit to settle).
fn idle_cpu(cluster: &Cluster, span: Duration) -> Result<Vec<f64>> {
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_times(cluster)?;
    let started = Instant::now();
    std::thread::sleep(span);
    let secs = started.elapsed().as_secs_f64();
    Ok(cpu_times(cluster)?
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(b).as_secs_f64() * 1000.0 / secs)
        .collect())
}

pub fn propagate(args: &PropagateArgs) -> Result<()> {
    let plain_seconds = {
        eprintln!("measuring a plain insert of as many entries (best of 3) ...");
        let data = data::generate(args.rows as usize, UuidKind::V7, data::DEFAULT_UPDATE_SHARE);
        baseline::plain_insert_seconds(&TempDir::new(None, false)?, &data, 3, "plain")?
    };
    let (cluster, dir) = two_peers("propagate", &["--batch", &args.batch.to_string()])?;
    let mut a = cluster.open(0)?;
    let b = cluster.open(1)?;
    let n = args.rows as i64;
    eprintln!("inserting {n} entries on A and syncing them to B ...");
    {
        let tx = a.transaction()?;
        tx.execute("INSERT INTO locations(path) VALUES ('/bench')", [])?;
        {
            let mut ins = tx.prepare(
                "INSERT INTO entries(location_id, name, size, kind, mtime) VALUES (1, ?1, 0, 0, 0)",
            )?;
            for i in 0..n {
                ins.execute([format!("file-{i:09}.dat")])?;
            }
        }
        tx.commit()?;
    }
    let count = |sql: &str| -> Result<i64> { Ok(b.query_row(sql, [], |r| r.get(0))?) };
    wait_until(Duration::from_millis(50), Duration::from_secs(300), || {
        Ok(count("SELECT count(*) FROM entries")? == n)
    })
    .context("the initial rows did not arrive")?;
    eprintln!("updating all {n} rows on A ...");
    let cpu_before = cpu_times(&cluster)?;
    let started = Instant::now();
    a.execute("UPDATE entries SET size = 1, mtime = 1", [])?;
    let committed = started.elapsed();
    // Changes travel in cursor order, so the last row is the last to land;
    // polling it is cheap. The full check follows, untimed.
    wait_until(Duration::from_millis(2), Duration::from_secs(300), || {
        Ok(count("SELECT size FROM entries WHERE id = (SELECT max(id) FROM entries)")? == 1)
    })
    .context("the updates did not arrive")?;
    let seconds = started.elapsed().as_secs_f64();
    // CPU seconds each replicator spent on the way: less noisy than the
    // wall clock on a shared machine, and it says which side bounds it.
    let cpu: Vec<f64> = cpu_times(&cluster)?
        .iter()
        .zip(cpu_before)
        .map(|(a, b)| a.saturating_sub(b).as_secs_f64())
        .collect();
    let all = count("SELECT count(*) FROM entries WHERE size = 1")?;
    if all != n {
        anyhow::bail!("only {all} of {n} updated rows arrived");
    }
    println!(
        "lsync bench propagate: {n} updated rows reached the peer in {seconds:.3} s (target <= 0.5 s for 100,000; the commit on A took {:.3} s)",
        committed.as_secs_f64()
    );
    println!(
        "replicator CPU on the way: A (sender) {:.3} s, B (receiver) {:.3} s",
        cpu[0], cpu[1]
    );
    println!(
        "plain insert of {n} entries {plain_seconds:.3} s   ratio_to_plain {:.2} \
         (issue 14: <= {:.2}, that is 0.5 s for 100,000 at its machine's plain insert of {:.0} rows/s)",
        seconds / plain_seconds,
        baseline::target_ratio(0.5, 1e5),
        baseline::ISSUE_PLAIN_ROWS_PER_S
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"rows": n, "seconds": seconds, "commit_seconds": committed.as_secs_f64(),
                "cpu_sender": cpu[0], "cpu_receiver": cpu[1], "plain_seconds": plain_seconds,
                "ratio_to_plain": seconds / plain_seconds})
        );
    }
    finish(cluster, &dir, args.keep);
    Ok(())
}
