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
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("device   {}", s.device_id);
    println!("library  {}", s.library_id);
    println!("head     {}", s.head);
    println!(
        "deferred links: {}   tombstones: {} ({} waiting for ACKs)",
        s.deferred_links, s.tombstones, s.tombstones_awaiting_ack
    );
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
