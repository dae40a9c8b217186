//! Sharing the write lock with the app during long applies.
//!
//! SQLite does not queue connections that wait for the write lock: a waiter
//! sleeps in its busy handler and retries, 1 ms apart at first and up to
//! 100 ms apart later. A session that commits one batch and begins the next
//! at once leaves the lock free for microseconds, so the app's writes can
//! wait for the whole catch-up and time out. So while other connections are
//! committing (seen through `PRAGMA data_version`, which moves only for other
//! connections' commits), a session leaves the lock free between two applies
//! for half as long as it last held it: the app gets about a third of the
//! lock time, and an idle app costs the replicator nothing.

use std::time::{Duration, Instant};

/// How long a commit by another connection keeps the session polite.
const RECENT: Duration = Duration::from_secs(1);
/// Bounds of the pause between two applies.
const MIN_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(25);

/// One write transaction of ours: the `PRAGMA data_version` it began with,
/// and how long it held the write lock.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    pub version: i64,
    pub held: Duration,
}

#[derive(Debug, Default)]
pub struct Courtesy {
    version: Option<i64>,
    others_at: Option<Instant>,
    held: Duration,
}

impl Courtesy {
    /// Starts from the data version a session saw when it opened.
    pub fn new(version: i64) -> Self {
        Courtesy {
            version: Some(version),
            ..Self::default()
        }
    }

    /// Records a write transaction of ours. A data version other than the
    /// one our previous transaction saw means another connection committed.
    pub fn record(&mut self, turn: Turn) {
        self.record_at(turn, Instant::now());
    }

    fn record_at(&mut self, turn: Turn, now: Instant) {
        if self.version.is_some_and(|v| v != turn.version) {
            self.others_at = Some(now);
        }
        self.version = Some(turn.version);
        self.held = turn.held;
    }

    /// How long to leave the write lock free before our next apply.
    pub fn pause(&self) -> Duration {
        self.pause_at(Instant::now())
    }

    fn pause_at(&self, now: Instant) -> Duration {
        match self.others_at {
            Some(t) if now.saturating_duration_since(t) < RECENT => {
                (self.held / 2).clamp(MIN_PAUSE, MAX_PAUSE)
            }
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(version: i64, held_ms: u64) -> Turn {
        Turn {
            version,
            held: Duration::from_millis(held_ms),
        }
    }

    #[test]
    fn no_pause_while_only_we_write() {
        let mut c = Courtesy::new(7);
        for _ in 0..3 {
            c.record(turn(7, 10));
            assert_eq!(c.pause(), Duration::ZERO);
        }
    }

    #[test]
    fn a_commit_by_another_connection_makes_the_session_pause() {
        let t0 = Instant::now();
        let mut c = Courtesy::new(7);
        c.record_at(turn(8, 10), t0);
        assert_eq!(c.pause_at(t0), Duration::from_millis(5));
        // Our own later commits keep the version; the pause lasts RECENT.
        c.record_at(turn(8, 2), t0 + Duration::from_millis(500));
        assert_eq!(c.pause_at(t0 + Duration::from_millis(500)), MIN_PAUSE);
        c.record_at(turn(8, 200), t0 + Duration::from_millis(900));
        assert_eq!(c.pause_at(t0 + Duration::from_millis(900)), MAX_PAUSE);
        assert_eq!(c.pause_at(t0 + RECENT), Duration::ZERO);
    }
}
