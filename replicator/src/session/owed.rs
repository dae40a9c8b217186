//! What a session may send a little later: acks, and pushes that carry no
//! change for the peer.
//!
//! Each of them costs the receiver a write transaction, and a write wakes
//! its sidecar, which looks for commits to push: one small commit used to
//! set off an ack and a cursor-only push coming back (our change, relayed,
//! moves the peer's cursor), each a write here, each a look for commits
//! there, all while the next commit of the app waited for the write lock
//! and the session's loop. So while commits follow each other, an ack goes
//! out at most once per [`LATER`], and a push that would only move our
//! cursor past changes the peer already has (its own, relayed) waits as
//! long: the peer learns the same a moment later, and nothing is lost, as
//! the cursor a push starts from is the last one sent.

use std::time::Duration;

use tokio::time::Instant;

/// Least time between two acks, and the longest a cursor-only push waits.
pub(super) const LATER: Duration = Duration::from_millis(100);

/// Sends held back until [`Owed::due`].
#[derive(Debug, Default)]
pub(super) struct Owed {
    /// The highest of the peer's cursors we applied and have not acked.
    ack: Option<i64>,
    /// A push that only moves our cursor is owed.
    cursor: bool,
    due: Option<Instant>,
}

impl Owed {
    /// An ack of `cursor`, to send at `at` at the latest.
    pub fn ack(&mut self, cursor: i64, at: Instant) {
        self.ack = Some(self.ack.map_or(cursor, |c| c.max(cursor)));
        self.due_by(at);
    }

    /// A cursor-only push, to send at `at` at the latest.
    pub fn cursor(&mut self, at: Instant) {
        self.cursor = true;
        self.due_by(at);
    }

    fn due_by(&mut self, at: Instant) {
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    /// When the owed sends are due; `None` when nothing is owed.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The ack owed, no longer owed: one being sent now covers it.
    pub fn take_ack(&mut self) -> Option<i64> {
        let a = self.ack.take();
        if !self.cursor {
            self.due = None;
        }
        a
    }

    /// Everything owed, no longer owed: the ack, and whether a cursor-only
    /// push is.
    pub fn take_all(&mut self) -> (Option<i64>, bool) {
        self.due = None;
        (self.ack.take(), std::mem::take(&mut self.cursor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_sends_are_due_at_the_earliest_deadline_and_paid_once() {
        let t = Instant::now();
        let mut o = Owed::default();
        assert_eq!(o.due(), None);
        o.ack(5, t + LATER);
        o.ack(3, t + LATER * 2);
        o.cursor(t + LATER * 3);
        assert_eq!(o.due(), Some(t + LATER));
        assert_eq!(o.take_all(), (Some(5), true));
        assert_eq!(o.due(), None);
        assert_eq!(o.take_all(), (None, false));
    }

    #[test]
    fn an_ack_sent_now_leaves_an_owed_push_due() {
        let t = Instant::now();
        let mut o = Owed::default();
        o.ack(7, t);
        assert_eq!(o.take_ack(), Some(7));
        assert_eq!(o.due(), None);
        o.ack(8, t);
        o.cursor(t);
        assert_eq!(o.take_ack(), Some(8));
        assert_eq!(o.due(), Some(t));
        assert_eq!(o.take_all(), (None, true));
    }
}
