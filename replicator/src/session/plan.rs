//! Choosing how to serve a peer that pulls: one changeset, a stream of
//! batches, or a snapshot of the whole database.

use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tracing::{debug, info, warn};

use crate::cli::Strategy;
use crate::store;

use super::error::{blocking, R};
use super::Session;

/// Least time between two "the peer is behind" lines at info.
const PLAN_LOG_EVERY: Duration = Duration::from_secs(1);

/// How to serve a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Snapshot,
    /// One changeset of at most this many changes.
    Single(u32),
    Batches,
}

/// What a peer missing `missing` of our `head` changes gets. A snapshot
/// holds the whole database, so it is chosen only when the peer misses
/// most of it (a fresh peer, or one far behind), never for a bulk write
/// into a large library.
pub fn plan(
    strategy: Strategy,
    missing: u64,
    head: u64,
    single_max: u64,
    snapshot_min: u64,
) -> Plan {
    let far_behind = missing >= snapshot_min && missing.saturating_mul(2) >= head;
    match strategy {
        _ if missing == 0 || (missing <= single_max && strategy != Strategy::Snapshot) => {
            Plan::Single(missing.clamp(1, u64::from(u32::MAX)) as u32)
        }
        Strategy::Snapshot if missing > 0 => Plan::Snapshot,
        Strategy::Auto if far_behind => Plan::Snapshot,
        _ => Plan::Batches,
    }
}

impl<W: AsyncWrite + Unpin> Session<W> {
    /// Decides how to serve a pull from `since`, and logs the choice.
    pub(super) async fn choose(&mut self, since: i64) -> R<Plan> {
        let peer = self.peer.clone();
        let (head, missing) = blocking(&self.conn, move |c| store::behind(c, since, &peer)).await?;
        let missing = missing.max(0) as u64;
        let n = &self.node.cfg;
        let head = head.max(0) as u64;
        let mut p = plan(n.strategy, missing, head, n.single_max, n.snapshot_min);
        if p == Plan::Snapshot && self.snapshot_offered.is_some_and(|at| since <= at) {
            // It pulls again from where it was offered a snapshot: it could
            // not use it (its restore failed, or the file was damaged).
            // Another offer would fail the same way.
            warn!(
                since,
                "the peer did not move past the snapshot offered to it: sending changesets instead"
            );
            p = plan(Strategy::Batch, missing, head, n.single_max, n.snapshot_min);
        }
        if missing > 0 {
            let how = match p {
                Plan::Snapshot => "a snapshot",
                Plan::Single(_) => "a single changeset",
                Plan::Batches => "a stream of batched changesets",
            };
            // At most one line a second at info; the rest at debug.
            if self
                .plan_logged
                .is_none_or(|t| t.elapsed() >= PLAN_LOG_EVERY)
            {
                self.plan_logged = Some(Instant::now());
                info!(since, head, missing, strategy = ?n.strategy, "the peer is behind: sending {how}");
            } else {
                debug!(since, head, missing, "the peer is behind: sending {how}");
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_follows_what_the_peer_misses() {
        let p = |s, missing, head| plan(s, missing, head, 5_000, 100_000);
        assert_eq!(p(Strategy::Auto, 10, 1_000_000), Plan::Single(10));
        assert_eq!(p(Strategy::Auto, 0, 1_000_000), Plan::Single(1));
        assert_eq!(p(Strategy::Auto, 50_000, 1_000_000), Plan::Batches);
        // A bulk write into a large library streams; a fresh peer gets a snapshot.
        assert_eq!(p(Strategy::Auto, 200_000, 1_000_000), Plan::Batches);
        assert_eq!(p(Strategy::Auto, 1_000_000, 1_000_000), Plan::Snapshot);
        assert_eq!(p(Strategy::Auto, 600_000, 1_000_000), Plan::Snapshot);
        assert_eq!(p(Strategy::Batch, 1_000_000, 1_000_000), Plan::Batches);
        assert_eq!(p(Strategy::Snapshot, 10, 1_000_000), Plan::Snapshot);
        assert_eq!(p(Strategy::Snapshot, 0, 1_000_000), Plan::Single(1));
    }
}
