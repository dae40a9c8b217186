//! What a session is doing in each direction, and the one place where it
//! moves from one state to the next.
//!
//! Receiving and sending are independent: both sides run the same session,
//! and each pulls from the other while it serves the other's pulls.

use crate::progress::Progress;

use super::download::Download;

/// What this side is receiving from the peer.
pub(crate) enum Receiving {
    /// Nothing asked for: the peer pushes its new commits, or notifies a
    /// bulk write that we then pull.
    Idle,
    /// A pull of ours is unanswered, or the stream of batches answering it
    /// goes on. `progress` shows a long stream (a catch-up).
    Pulling { progress: Option<Progress> },
    /// A snapshot is coming, chunk by chunk. A pull asked meanwhile (for a
    /// gap in changes the peer pushed) does not end the download.
    Downloading(Download),
}

/// What this side is sending the peer, apart from a snapshot upload
/// (which runs beside these: see `Session::upload`).
pub(crate) enum Sending {
    /// Nothing until the peer pulls: at the start, after notifying it of a
    /// bulk write, or after a push that left more than one batch.
    Idle,
    /// Answering a run of pulls with a stream of batches.
    Streaming,
    /// The peer has all we have: our new commits are pushed as they happen.
    /// `push_owed`: we committed while pulling from the peer; those commits
    /// are mostly its own changes, so one push follows when our pull ends.
    Subscribed { push_owed: bool },
}

impl Receiving {
    /// We sent a pull.
    pub fn pull_sent(&mut self) {
        if let Receiving::Idle = self {
            *self = Receiving::Pulling { progress: None };
        }
    }

    /// The last batch answering our pull is applied.
    pub fn stream_ended(&mut self) {
        if let Receiving::Pulling { .. } = self {
            *self = Receiving::Idle;
        }
    }

    /// The peer answered our pull with a snapshot, or one interrupted by a
    /// restart resumes.
    pub fn download_started(&mut self, d: Download) {
        *self = Receiving::Downloading(d);
    }

    /// The download is over (imported, discarded or gone at the peer).
    pub fn download_ended(&mut self) -> Option<Download> {
        match std::mem::replace(self, Receiving::Idle) {
            Receiving::Downloading(d) => Some(d),
            other => {
                *self = other;
                None
            }
        }
    }

    pub fn is_idle(&self) -> bool {
        matches!(self, Receiving::Idle)
    }

    pub fn is_pulling(&self) -> bool {
        matches!(self, Receiving::Pulling { .. })
    }

    /// The stream we pull has more than one batch: show its progress,
    /// made by `make` the first time.
    pub fn stream_goes_on(&mut self, make: impl FnOnce() -> Progress) {
        if let Receiving::Pulling { progress: p @ None } = self {
            *p = Some(make());
        }
    }

    /// The progress of a long stream we pull.
    pub fn progress(&mut self) -> Option<&mut Progress> {
        match self {
            Receiving::Pulling { progress } => progress.as_mut(),
            _ => None,
        }
    }

    pub fn download(&mut self) -> Option<&mut Download> {
        match self {
            Receiving::Downloading(d) => Some(d),
            _ => None,
        }
    }
}

impl Sending {
    /// We answered the peer's pull; `more` when batches remain.
    pub fn pull_answered(&mut self, more: bool) {
        *self = match (more, &*self) {
            (true, _) => Sending::Streaming,
            (false, Sending::Subscribed { push_owed }) => Sending::Subscribed {
                push_owed: *push_owed,
            },
            (false, _) => Sending::Subscribed { push_owed: false },
        };
    }

    /// We pushed new commits; `more` when more than a batch was pending,
    /// which the peer pulls.
    pub fn pushed(&mut self, more: bool) {
        if more {
            *self = Sending::Idle;
        }
    }

    /// We notified the peer of a bulk write: it pulls at its own pace.
    pub fn notified(&mut self) {
        *self = Sending::Idle;
    }

    /// The peer holds what we sent (our clock is ahead of its): it pulls
    /// again when it can accept it, and pushes meanwhile would be dropped.
    pub fn held(&mut self) {
        *self = Sending::Idle;
    }

    /// We committed while pulling from the peer.
    pub fn owe_push(&mut self) {
        if let Sending::Subscribed { push_owed } = self {
            *push_owed = true;
        }
    }

    /// Our pull ended: whether a push is owed (and no longer).
    pub fn take_owed_push(&mut self) -> bool {
        match self {
            Sending::Subscribed { push_owed } => std::mem::take(push_owed),
            _ => false,
        }
    }

    pub fn is_streaming(&self) -> bool {
        matches!(self, Sending::Streaming)
    }

    pub fn is_subscribed(&self) -> bool {
        matches!(self, Sending::Subscribed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_owed_while_pulling_is_paid_once() {
        let mut s = Sending::Idle;
        s.owe_push();
        assert!(
            !s.take_owed_push(),
            "nothing is owed to a peer not subscribed"
        );
        s.pull_answered(false);
        assert!(s.is_subscribed());
        s.owe_push();
        s.pushed(false);
        assert!(s.take_owed_push());
        assert!(!s.take_owed_push());
    }

    #[test]
    fn sending_moves_between_stream_subscription_and_idle() {
        let mut s = Sending::Idle;
        s.pull_answered(true);
        assert!(s.is_streaming());
        s.pull_answered(false);
        assert!(s.is_subscribed());
        s.pushed(true);
        assert!(matches!(s, Sending::Idle));
        s.pull_answered(false);
        s.notified();
        assert!(matches!(s, Sending::Idle));
        s.pull_answered(true);
        s.held();
        assert!(matches!(s, Sending::Idle));
    }

    #[test]
    fn receiving_pulls_then_goes_idle() {
        let mut r = Receiving::Idle;
        r.pull_sent();
        assert!(r.is_pulling());
        r.pull_sent();
        assert!(r.is_pulling());
        r.stream_ended();
        assert!(r.is_idle());
        assert!(r.download_ended().is_none());
        assert!(r.is_idle());
    }
}
