//! `lsync status`: a printer of the database's own status document
//! (`lsync_status()`), with what only the sidecar's files know added: the
//! snapshot transfers under way and the snapshots that failed to restore.

use std::fmt::Write as _;

use anyhow::Result;

use crate::cli::{print, StatusArgs};
use crate::snapshot::RestoreFailure;
use crate::store;

pub fn run(args: &StatusArgs) -> Result<()> {
    if !args.db.exists() {
        anyhow::bail!("no database at {}", args.db.display());
    }
    let conn = store::open(&args.db)?;
    let s = store::status(&conn)?;
    let transfers = crate::progress::current(&args.db);
    let failures = RestoreFailure::all(&args.db);
    let text = if args.json {
        let mut v = serde_json::to_value(&s)?;
        v["transfers"] = serde_json::to_value(&transfers)?;
        v["snapshot_failures"] = serde_json::to_value(&failures)?;
        format!("{v}\n")
    } else {
        table(&s, &transfers, &failures, &args.db)?
    };
    print(&text)?;
    Ok(())
}

fn table(
    s: &store::Status,
    transfers: &[crate::progress::Transfer],
    failures: &[RestoreFailure],
    db: &std::path::Path,
) -> Result<String, std::fmt::Error> {
    let mut o = String::new();
    writeln!(o, "device   {}", s.device_id)?;
    writeln!(o, "library  {}", s.library_id)?;
    writeln!(o, "head     {}", s.head)?;
    if s.hlc_ahead_ms > 0 {
        writeln!(
            o,
            "clock    {:.1}s ahead of the wall clock (a peer's clock is ahead)",
            s.hlc_ahead_ms as f64 / 1000.0
        )?;
    }
    writeln!(
        o,
        "deferred links: {}   tombstones: {} ({} waiting for ACKs)   conflicts: {}",
        s.deferred_links, s.tombstones, s.tombstones_awaiting_ack, s.conflicts
    )?;
    if s.conflicts > 0 {
        writeln!(
            o,
            "  {} change(s) from peers quarantined: SELECT * FROM lsync_conflicts (docs/conflicts.md)",
            s.conflicts
        )?;
    }
    let now = crate::now::now_ms();
    let ago = |t: i64| format!("{:.1}s ago", (now - t) as f64 / 1000.0);
    for t in transfers {
        let pct = if t.total_bytes > 0 {
            100.0 * t.bytes as f64 / t.total_bytes as f64
        } else if t.total_rows > 0 {
            100.0 * t.rows as f64 / t.total_rows as f64
        } else {
            0.0
        };
        writeln!(
            o,
            "receiving {} from {}: {pct:.0}% ({} of {} rows, {:.1} of {:.1} MB), {:.0} rows/s, eta {}",
            t.what,
            t.peer,
            t.rows,
            t.total_rows,
            t.bytes as f64 / 1e6,
            t.total_bytes as f64 / 1e6,
            t.rows_per_s,
            t.eta_s.map_or("-".to_owned(), |s| format!("{s:.1}s")),
        )?;
    }
    for f in failures {
        writeln!(
            o,
            "snapshot from {} (cursor {}) failed to restore {}; changesets are pulled instead: {}",
            f.peer,
            f.cursor,
            ago(f.at_ms),
            f.error
        )?;
    }
    if s.peers.is_empty() {
        writeln!(o, "no peers yet")?;
        return Ok(o);
    }
    writeln!(
        o,
        "{:<38} {:<22} {:>10} {:>10} {:>8} {:>9} {:>8} {:>14}  last error",
        "peer", "addr", "received", "acked", "lag", "lag time", "failures", "last contact"
    )?;
    for p in &s.peers {
        writeln!(
            o,
            "{:<38} {:<22} {:>10} {:>10} {:>8} {:>9} {:>8} {:>14}  {}",
            p.device_id,
            p.addr.as_deref().unwrap_or("-"),
            p.recv_cursor,
            p.acked_cursor,
            p.lag,
            format!("{:.1}s", p.lag_ms as f64 / 1000.0),
            p.failures,
            p.last_contact_ms.map_or("never".to_owned(), ago),
            p.last_error.as_deref().unwrap_or("-")
        )?;
    }
    for p in s.peers.iter().filter(|p| p.stuck) {
        writeln!(
            o,
            "peer {} is stuck: a full resync would fail again, so none is started (retrying \
             continues until the cause is fixed): {}",
            p.device_id,
            p.resync_error.as_deref().unwrap_or("-")
        )?;
    }
    for p in &s.peers {
        for l in crate::held::lines(&p.device_id, p.held, p.held_by_peer, now) {
            writeln!(o, "{l}")?;
        }
    }
    for p in &s.peers {
        if let Some(t) = p.forgotten_ms {
            writeln!(
                o,
                "peer {} was forgotten {}: its ACKs no longer hold back pruning, and sessions \
                 with it are refused",
                p.device_id,
                ago(t)
            )?;
        } else if p.tombstones_held > 0 {
            writeln!(
                o,
                "warning: peer {} holds back {} tombstone(s): it has acknowledged this \
                 device's changes up to cursor {} (last contact {}). They are pruned once it \
                 acknowledges them; if it is gone for good: lsync peer forget --db {} {}",
                p.device_id,
                p.tombstones_held,
                p.acked_cursor,
                p.last_contact_ms.map_or("never".to_owned(), ago),
                db.display(),
                p.device_id
            )?;
        }
    }
    Ok(o)
}
