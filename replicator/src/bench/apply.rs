//! `lsync bench apply`: applying a changeset of N file entries to an empty
//! peer, against a plain prepared-statement insert of the same rows into an
//! untracked table, and against SQLite's session extension applying the same
//! rows (`session`), in the same process.

use std::time::Instant;

use super::baseline;
use super::data;
use super::ops;
use super::session;
use super::{BenchError, SqlContext, TempDir};
use crate::cli::ApplyArgs;
use crate::db::{self, DbOptions};

#[derive(Debug, serde::Serialize)]
struct Outcome {
    rows: u64,
    uuid: &'static str,
    plain_s: f64,
    apply_s: f64,
    export_s: f64,
    plain_rows_per_s: f64,
    apply_rows_per_s: f64,
    apply_ratio: f64,
    /// SQLite's session extension: its apply, and the plain insert with a
    /// session recording it.
    session_apply_s: f64,
    session_record_s: f64,
    session_changeset_bytes: usize,
    /// lsync's apply throughput over the session extension's.
    apply_vs_session: f64,
    export_rows_per_s: f64,
    changeset_bytes: usize,
    changeset_bytes_per_row: f64,
    fk_queries: i64,
    deferred: i64,
    sqlite_version: String,
}

pub fn run(args: &ApplyArgs) -> Result<(), BenchError> {
    let opts = DbOptions { foreign_keys: true };
    let rows = args.rows as usize;
    eprintln!("generating {rows} entries ...");
    let data = data::generate(rows, args.uuid, data::DEFAULT_UPDATE_SHARE);
    let dir = TempDir::new(args.dir.as_deref(), args.keep)?;

    let src_path = dir.path().join("source.db");
    let src = db::open(&src_path, &opts)?;
    ops::setup(&src, Some("device_owned"), &data.locations, &src_path)?;
    ops::insert_entries(&src, &data.entries, &src_path)?;
    src.query_row("SELECT lsync_flush()", [], |_| Ok(()))
        .sql(|| "lsync_flush() at the source".into())?;
    eprintln!("exporting ...");
    let started = Instant::now();
    let blob: Vec<u8> = src
        .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
        .sql(|| "lsync_changeset(0) at the source".into())?;
    let export_s = started.elapsed().as_secs_f64();
    let library: String = src
        .query_row("SELECT lsync_library_id()", [], |r| r.get(0))
        .sql(|| "lsync_library_id()".into())?;
    drop(src);

    let (mut plain_s, mut apply_s) = (f64::INFINITY, f64::INFINITY);
    let (mut session_apply_s, mut session_record_s) = (f64::INFINITY, f64::INFINITY);
    let mut session_changeset_bytes = 0;
    let (mut fk_queries, mut deferred) = (0, 0);
    for round in 0..args.repeat {
        eprintln!("round {}: plain insert ...", round + 1);
        plain_s = plain_s.min(baseline::plain_insert_once(
            &dir,
            &data,
            &format!("plain-{round}"),
        )?);

        let peer_path = dir.path().join(format!("peer-{round}.db"));
        let peer = db::open(&peer_path, &opts)?;
        ops::setup(&peer, Some("device_owned"), &[], &peer_path)?;
        peer.query_row("SELECT lsync_library_id(?1)", [&library], |_| Ok(()))
            .sql(|| "joining the library at the peer".into())?;
        dir.settle()?;
        eprintln!("round {}: lsync_apply ...", round + 1);
        let started = Instant::now();
        let report: String = peer
            .query_row("SELECT lsync_apply(?1)", [&blob], |r| r.get(0))
            .sql(|| "lsync_apply at the peer".into())?;
        apply_s = apply_s.min(started.elapsed().as_secs_f64());
        let r: serde_json::Value = serde_json::from_str(&report)?;
        fk_queries = r["fk_queries"].as_i64().unwrap_or(-1);
        deferred = r["deferred"].as_i64().unwrap_or(-1);
        let (count, linked): (i64, i64) = peer
            .query_row("SELECT count(*), count(parent_id) FROM entries", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .sql(|| "counting at the peer".into())?;
        let want_linked = data
            .entries
            .iter()
            .filter(|e| e.parent_id.is_some())
            .count() as i64;
        if count != rows as i64 || linked != want_linked {
            return Err(BenchError::Check(format!(
                "the peer has {count} entries ({linked} with a parent), expected {rows} ({want_linked})"
            )));
        }
        drop(peer);
        eprintln!("round {}: session extension ...", round + 1);
        let s = session::round(&dir, &data, round)?;
        session_apply_s = session_apply_s.min(s.apply_s);
        session_record_s = session_record_s.min(s.record_s);
        session_changeset_bytes = s.changeset_bytes;
        dir.remove_prefixed(&format!("peer-{round}"))?;
    }

    let n = rows as f64;
    let o = Outcome {
        rows: args.rows,
        uuid: args.uuid.as_str(),
        plain_s,
        apply_s,
        export_s,
        plain_rows_per_s: n / plain_s,
        apply_rows_per_s: n / apply_s,
        apply_ratio: plain_s / apply_s,
        session_apply_s,
        session_record_s,
        session_changeset_bytes,
        apply_vs_session: session_apply_s / apply_s,
        export_rows_per_s: n / export_s,
        changeset_bytes: blob.len(),
        changeset_bytes_per_row: blob.len() as f64 / n,
        fk_queries,
        deferred,
        sqlite_version: rusqlite::version().to_owned(),
    };
    println!(
        "lsync bench apply: {} entries (parent and location FKs), uuid {}, best of {}, SQLite {}",
        o.rows, o.uuid, args.repeat, o.sqlite_version
    );
    println!("{:<28} {:>12} {:>14}", "step", "seconds", "rows/s");
    println!(
        "{:<28} {:>12.3} {:>14.0}",
        "plain prepared insert", o.plain_s, o.plain_rows_per_s
    );
    println!(
        "{:<28} {:>12.3} {:>14.0}",
        "lsync_apply (empty peer)", o.apply_s, o.apply_rows_per_s
    );
    println!(
        "{:<28} {:>12.3} {:>14.0}",
        "lsync_changeset (export)", o.export_s, o.export_rows_per_s
    );
    println!(
        "{:<28} {:>12.3} {:>14.0}",
        "session: insert + record",
        o.session_record_s,
        n / o.session_record_s
    );
    println!(
        "{:<28} {:>12.3} {:>14.0}",
        "session: changeset_apply",
        o.session_apply_s,
        n / o.session_apply_s
    );
    println!(
        "apply_ratio {:.2} (target >= 0.8)   changeset {} B = {:.1} B/row (target <= 45)   fk_queries {}",
        o.apply_ratio, o.changeset_bytes, o.changeset_bytes_per_row, o.fk_queries
    );
    println!(
        "apply_vs_session {:.2} (lsync_apply rows/s over sqlite3changeset_apply's)   \
         session changeset {} B = {:.1} B/row   export_ratio {:.2} (target >= 1.5)",
        o.apply_vs_session,
        o.session_changeset_bytes,
        o.session_changeset_bytes as f64 / n,
        o.plain_s / o.export_s
    );
    if args.json {
        println!("{}", serde_json::to_string(&o)?);
    }
    Ok(())
}
