//! The session's side of a hold (see `crate::held`): when to pull a held
//! peer's changes again, and what the peer is told.

use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{Backoff, Delays};
use crate::held::{self, Hold};
use crate::protocol::Msg;

use super::error::{blocking, R};
use super::Session;

/// Whether we hold the peer's changes, and when we pull them again; and
/// whether the peer holds ours.
pub(super) struct Holding {
    /// When to pull again: `None` while nothing is held.
    retry_at: Option<Instant>,
    /// The longest waits before the next retries: they double with every
    /// hold in a row (the dialing backoff's), so a raised `max_drift_ms`,
    /// or our clock set right, is seen soon.
    delays: Delays,
    /// The peer said it holds our changes, and has acked nothing since.
    held_by_peer: bool,
}

impl Holding {
    pub fn new(backoff: Backoff) -> Holding {
        Holding {
            retry_at: None,
            delays: backoff.delays(),
            held_by_peer: false,
        }
    }

    pub fn is_held(&self) -> bool {
        self.retry_at.is_some()
    }

    /// When to pull again, if something is held.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Holds the changes until they are acceptable (`accept_in`), or until
    /// the backoff runs out, whichever comes first; returns the wait.
    /// Whether this hold is the first in a row, too.
    fn hold(&mut self, accept_in: Duration) -> (Duration, bool) {
        let first = self.delays.is_fresh();
        let wait = accept_in.min(self.delays.next());
        self.retry_at = Some(Instant::now() + wait);
        (wait, first)
    }

    /// The retry is due: the pull goes out, and the hold stays until it is
    /// answered.
    pub fn retrying(&mut self) {
        self.retry_at = Some(Instant::now() + self.delays.max());
    }

    /// The peer acked our changes: it holds none.
    pub fn peer_acked(&mut self) {
        self.held_by_peer = false;
    }

    /// A changeset from the peer applied: nothing is held. Returns whether
    /// something was.
    pub fn released(&mut self) -> bool {
        let was = self.retry_at.take().is_some();
        self.delays.reset();
        was
    }
}

impl<W: AsyncWrite + Unpin> Session<W> {
    /// The peer's changeset waits: its clock is ahead of ours. Tells the
    /// peer, which stops pushing until we pull again.
    pub(super) async fn hold(&mut self, h: Hold) -> R<()> {
        let accept_in = Duration::from_millis((h.until_ms - crate::now::now_ms()).max(0) as u64);
        let (wait, first) = self.holding.hold(accept_in);
        let (ahead, until) = (held::amount(h.ahead_ms), held::time(h.until_ms));
        if first {
            info!(retry_in = ?wait, "held: the peer's clock is {ahead} ahead of ours; its changes wait, and will be accepted at {until}");
        } else {
            debug!(retry_in = ?wait, "still held: the peer's clock is {ahead} ahead of ours");
        }
        self.receiving.stream_ended();
        // An owed ack covers changes applied before this hold: sent after
        // `Held`, the peer would take it for the hold's end.
        self.pay_owed_ack().await?;
        let msg = Msg::Held {
            ahead_ms: h.ahead_ms,
            until_ms: h.until_ms,
        };
        self.tx.send(&msg, &[]).await?;
        Ok(())
    }

    /// The peer holds our changes: our clock is ahead of its.
    pub(super) async fn held_by_peer(&mut self, h: Hold) -> R<()> {
        self.sending.held();
        self.prefetched = None;
        let (ahead, until) = (held::amount(h.ahead_ms), held::time(h.until_ms));
        if std::mem::replace(&mut self.holding.held_by_peer, true) {
            debug!("still held by the peer: our clock is {ahead} ahead of its clock");
        } else {
            warn!("held by the peer: our clock is {ahead} ahead of its clock; it holds our changes, and will accept them at {until} (its clock)");
        }
        let peer = self.peer.clone();
        blocking(&self.conn, move |c| held::held_by(c, &peer, h)).await
    }

    /// The retry of a hold is due: pull the held changes again.
    pub(super) async fn retry_held(&mut self) -> R<()> {
        self.holding.retrying();
        self.pull(self.recv_cursor).await
    }

    /// A changeset from the peer applied.
    pub(super) fn release(&mut self) {
        if self.holding.released() {
            info!("the peer's changes are accepted: no longer held");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_retries_no_sooner_than_needed_with_backoff() {
        let (initial, max) = (Duration::from_millis(200), Duration::from_secs(30));
        let mut h = Holding::new(Backoff { initial, max });
        assert!(!h.is_held());
        let ten_min = Duration::from_secs(600);
        let waits: Vec<_> = (0..10).map(|_| h.hold(ten_min).0).collect();
        assert_eq!(waits[0], initial);
        assert_eq!(waits[1], initial * 2);
        assert_eq!(waits[9], max);
        assert!(h.is_held());
        // Acceptable sooner than the backoff: retried then.
        assert_eq!(
            h.hold(Duration::from_millis(50)).0,
            Duration::from_millis(50)
        );
        // A retry keeps the hold until its answer.
        h.retrying();
        assert!(h.is_held());
        assert!(h.released());
        assert!(!h.is_held() && !h.released());
        assert_eq!(h.hold(ten_min), (initial, true));
    }
}
