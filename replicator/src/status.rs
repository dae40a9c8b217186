//! `lsync status`: what the database knows about its peers.

use anyhow::Result;

use crate::cli::StatusArgs;
use crate::store;

pub fn run(args: &StatusArgs) -> Result<()> {
    if !args.db.exists() {
        anyhow::bail!("no database at {}", args.db.display());
    }
    let conn = store::open(&args.db)?;
    let s = store::status(&conn)?;
    let transfers = crate::progress::current(&args.db);
    if args.json {
        let mut v = serde_json::to_value(&s)?;
        v["transfers"] = serde_json::to_value(&transfers)?;
        println!("{v}");
        return Ok(());
    }
    println!("device   {}", s.device_id);
    println!("library  {}", s.library_id);
    println!("head     {}", s.head);
    println!(
        "deferred links: {}   tombstones: {} ({} waiting for ACKs)",
        s.deferred_links, s.tombstones, s.tombstones_awaiting_ack
    );
    for t in &transfers {
        let pct = if t.total_bytes > 0 {
            100.0 * t.bytes as f64 / t.total_bytes as f64
        } else if t.total_rows > 0 {
            100.0 * t.rows as f64 / t.total_rows as f64
        } else {
            0.0
        };
        println!(
            "receiving {} from {}: {pct:.0}% ({} of {} rows, {:.1} of {:.1} MB), {:.0} rows/s, eta {}",
            t.what,
            t.peer,
            t.rows,
            t.total_rows,
            t.bytes as f64 / 1e6,
            t.total_bytes as f64 / 1e6,
            t.rows_per_s,
            t.eta_s.map_or("-".to_owned(), |s| format!("{s:.1}s")),
        );
    }
    if s.peers.is_empty() {
        println!("no peers yet");
        return Ok(());
    }
    println!(
        "{:<38} {:<22} {:>10} {:>10} {:>8} {:>8} {:>14}  last error",
        "peer", "addr", "received", "acked", "lag", "failures", "last contact"
    );
    let now = store::now_ms();
    for p in &s.peers {
        let ago = p.last_contact_ms.map_or("never".to_owned(), |t| {
            format!("{:.1}s ago", (now - t) as f64 / 1000.0)
        });
        println!(
            "{:<38} {:<22} {:>10} {:>10} {:>8} {:>8} {:>14}  {}",
            p.device_id,
            p.addr.as_deref().unwrap_or("-"),
            p.recv_cursor,
            p.acked_cursor,
            p.lag,
            p.failures,
            ago,
            p.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
