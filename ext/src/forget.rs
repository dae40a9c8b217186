//! A device gone for good: `lsync_forget_peer` drops it from the peers whose
//! ACKs gate tombstone pruning (`stability::prune`), which otherwise waits
//! for it forever.
//!
//! The peer's row stays, marked `forgotten_ms`: its watermarks keep every
//! fence this database exports true. A session with a forgotten device is
//! refused (`lsync_peer_contact`): tombstones it never acknowledged may be
//! pruned, so its old database could bring deleted rows back. It comes back
//! as a new device, from a fresh database that joins.

use crate::error::Result;
use crate::peers::{device_arg, now_ms};
use crate::sql::{Db, Value, DIRECTONLY};
use crate::{bail, schema, stability};

pub fn register(db: Db) -> Result<()> {
    db.create_function("lsync_forget_peer", 1, DIRECTONLY, |db, args| {
        let peer = device_arg("lsync_forget_peer", &args[0])?;
        forget(db, &peer).map(Value::from)
    })
}

/// Marks `peer` forgotten. Returns how many tombstones no longer wait for
/// an ACK (they go at the next `lsync_prune`).
fn forget(db: Db, peer: &str) -> Result<i64> {
    crate::setup::ensure(db)?;
    if peer == schema::get_text(db, "device_id")? {
        bail!(
            "lsync_forget_peer: {peer} is this database's own device; forget it from another \
             device"
        );
    }
    let known = db.query_i64(
        "SELECT 1 FROM lsync_peers WHERE device_id = ?1",
        &[peer.into()],
    )?;
    if known.is_none() {
        bail!(
            "lsync_forget_peer: no peer {peer} is known here; the known peers are listed by \
             SELECT lsync_status()"
        );
    }
    db.savepoint("lsync_forget_peer", || {
        let before = stability::awaiting_ack(db, stability::GATING)?;
        db.run(
            "UPDATE lsync_peers SET forgotten_ms = coalesce(forgotten_ms, ?2)
             WHERE device_id = ?1",
            &[peer.into(), now_ms().into()],
        )?;
        Ok(before - stability::awaiting_ack(db, stability::GATING)?)
    })
}
