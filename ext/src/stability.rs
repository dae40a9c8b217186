//! Causal stability of deletes: when a tombstone may go, and how a stale
//! changeset is told from a current one once it has gone.
//!
//! A tombstone keeps a deleted row from coming back when an older copy of the
//! row arrives. It may be pruned only when no peer can send such a copy
//! again. A peer's ACK alone does not prove that: a changeset it exported (or
//! prefetched) before it applied the delete may still be on its way, and
//! delivering it after the prune would bring the row back.
//!
//! So an ACK is a *certificate*: "I have applied your changes up to cursor
//! `c`, and whatever I send you from now on was read after that". Every
//! changeset exported for one receiver carries it as its [`Fence`], read in
//! the same transaction as the changes; applying it records it here
//! (`lsync_peers.acked_cursor`). The replicator's ACK messages carry it too,
//! and are sent only when no changeset exported earlier is still on its way.
//!
//! `lsync_prune` drops the tombstones up to the lowest certified cursor of
//! the known peers and remembers the highest cursor it pruned (`pruned_seq`).
//! A changeset whose fence is below that was read before its sender had
//! applied a delete that is no longer recorded here: it is refused whole, and
//! the sender's current state is pulled instead.

use lsync_wire::changeset::Fence;

use crate::error::Result;
use crate::sql::Db;
use crate::{bail, schema};

/// The setting that holds the highest cursor whose tombstone was pruned.
const PRUNED: &str = "pruned_seq";

/// The `lsync_peers` rows whose ACKs gate pruning: every known peer but a
/// forgotten one (`forget.rs`).
pub const GATING: &str = "forgotten_ms IS NULL";

/// Deletes the tombstones that every known peer (`lsync_peers`) but a
/// forgotten one has certified; with no such peer nothing is pruned.
/// Returns how many.
pub fn prune(db: Db) -> Result<i64> {
    crate::setup::ensure(db)?;
    let Some(acked) = db.query_i64(
        &format!("SELECT min(acked_cursor) FROM lsync_peers WHERE {GATING} HAVING count(*) > 0"),
        &[],
    )?
    else {
        return Ok(0);
    };
    db.savepoint("lsync_prune", || {
        let Some(top) = db.query_i64(
            "SELECT max(seq) FROM lsync_clock WHERE uuid IS NOT NULL AND seq <= ?1",
            &[acked.into()],
        )?
        else {
            return Ok(0);
        };
        db.run(
            "DELETE FROM lsync_clock WHERE uuid IS NOT NULL AND seq <= ?1",
            &[top.into()],
        )?;
        let pruned = db.changes();
        if top > schema::get_i64(db, PRUNED)? {
            schema::set(db, PRUNED, top.into())?;
        }
        Ok(pruned)
    })
}

/// The tombstones `prune` must keep: above the lowest ACK of the peers
/// that `gating` (an SQL condition on `lsync_peers`) selects; all of them
/// with no such peer.
pub fn awaiting_ack(db: Db, gating: &str) -> Result<i64> {
    Ok(db
        .query_i64(
            &format!(
                "SELECT count(*) FROM lsync_clock WHERE uuid IS NOT NULL AND op = 2
                   AND seq > coalesce((SELECT min(acked_cursor) FROM lsync_peers
                                       WHERE {gating}), 0)"
            ),
            &[],
        )?
        .unwrap_or(0))
}

/// What the sender of `fence` had applied of this device's changes; nothing
/// when the changeset was not exported for this device.
fn certified(me: &str, fence: Option<&Fence>) -> i64 {
    fence.filter(|f| f.receiver == me).map_or(0, |f| f.acked)
}

/// Refuses a changeset or snapshot read before its sender had applied
/// deletes whose tombstones are pruned here. `func` and `what` name the
/// caller and the input in the error.
pub fn check_fresh(db: Db, fence: Option<&Fence>, func: &str, what: &str) -> Result<()> {
    let horizon = schema::get_i64(db, PRUNED)?;
    if horizon == 0 {
        return Ok(());
    }
    let me = schema::get_text(db, "device_id")?;
    let acked = certified(&me, fence);
    if acked < horizon {
        bail!(
            "{func}: the {what} is stale: it was read before its sender had applied this \
             device's changes up to cursor {horizon} (it had applied them up to {acked}), and \
             the tombstones of deletes among them are pruned here, so it could bring deleted \
             rows back; nothing was applied. Ask the sender for its current changes, exported \
             for this device: lsync_changeset(since, max, '{me}')"
        );
    }
    Ok(())
}

/// Records the sender's certificate in `lsync_peers`, in the caller's
/// transaction. A claim past this device's newest cursor is capped: a peer
/// cannot hold changes that were never made.
pub fn record_ack(db: Db, fence: Option<&Fence>) -> Result<()> {
    let Some(f) = fence else {
        return Ok(());
    };
    let me = schema::get_text(db, "device_id")?;
    if f.receiver != me || f.sender == me {
        return Ok(());
    }
    db.run(
        "UPDATE lsync_peers SET acked_cursor = max(acked_cursor,
           min(?2, coalesce((SELECT value FROM lsync_config WHERE key = 'next_seq'), 1) - 1))
         WHERE device_id = ?1",
        &[f.sender.as_str().into(), f.acked.into()],
    )
}
