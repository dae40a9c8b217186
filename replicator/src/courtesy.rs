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
//! lock time.
//!
//! An app that was idle cannot be seen until it commits, and its first write
//! may be waiting already. So after every 2 s of back-to-back applies the
//! session also leaves the lock free for 150 ms, longer than the longest
//! sleep of SQLite's busy handler (100 ms) with room for scheduling delays:
//! a waiting writer gets in within about 2 s, well inside a busy timeout of
//! a few seconds, for about 7% of a long catch-up's speed.

use std::time::{Duration, Instant};

/// How long a commit by another connection keeps the session polite.
const RECENT: Duration = Duration::from_secs(1);
/// Bounds of the pause between two applies.
const MIN_PAUSE: Duration = Duration::from_millis(1);
const MAX_PAUSE: Duration = Duration::from_millis(25);
/// Back-to-back applies after which the session leaves the lock free for
/// [`BREATHER`], whether or not anyone else was seen writing.
const BREATHER_EVERY: Duration = Duration::from_secs(2);
const BREATHER: Duration = Duration::from_millis(150);

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
    /// When the current run of back-to-back applies began, and when its
    /// last apply ended.
    run_since: Option<Instant>,
    last_end: Option<Instant>,
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
        let began = now.checked_sub(turn.held).unwrap_or(now);
        let gap = self
            .last_end
            .map_or(Duration::MAX, |e| began.saturating_duration_since(e));
        if self.run_since.is_none() || gap >= BREATHER {
            self.run_since = Some(began);
        }
        self.last_end = Some(now);
    }

    /// How long to leave the write lock free before our next apply.
    pub fn pause(&self) -> Duration {
        self.pause_at(Instant::now())
    }

    fn pause_at(&self, now: Instant) -> Duration {
        let ran = self.run_since.map(|b| now.saturating_duration_since(b));
        // A run that a breather's length of quiet has ended needs none (the
        // first apply after an idle spell must not wait for it).
        let ongoing = self
            .last_end
            .is_some_and(|e| now.saturating_duration_since(e) < BREATHER);
        if ongoing && ran.is_some_and(|r| r >= BREATHER_EVERY) {
            return BREATHER;
        }
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
    fn a_long_run_of_applies_leaves_the_lock_free_for_longer_than_a_busy_sleep() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut c = Courtesy::new(7);
        // Back to back, 10 ms each, nobody else seen: no pause until 2 s.
        let mut t = 0;
        while t + 10 < 2000 {
            t += 10;
            c.record_at(turn(7, 10), ms(t));
            assert_eq!(c.pause_at(ms(t)), Duration::ZERO, "at {t} ms");
        }
        c.record_at(turn(7, 10), ms(2010));
        assert_eq!(c.pause_at(ms(2010)), BREATHER);
        assert!(BREATHER > Duration::from_millis(100));
        // After the breather a new run begins.
        c.record_at(turn(7, 10), ms(2010 + 150 + 10));
        assert_eq!(c.pause_at(ms(2170)), Duration::ZERO);
        // Short gaps do not end a run.
        c.record_at(turn(7, 10), ms(2170 + 50 + 10));
        assert_eq!(c.pause_at(ms(2230)), Duration::ZERO);
        let mut t = 2230;
        while t < 2160 + 2000 {
            t += 10;
            c.record_at(turn(7, 10), ms(t));
        }
        assert_eq!(c.pause_at(ms(t)), BREATHER);
        // A gap of a breather's length (the app idle, say) ends a run.
        c.record_at(turn(7, 10), ms(t + 150 + 10));
        assert_eq!(c.pause_at(ms(t + 160)), Duration::ZERO);
    }

    /// The next apply after a quiet spell (a commit arriving at an idle
    /// sidecar) goes at once, however long the run before the spell was.
    #[test]
    fn no_breather_after_a_quiet_spell() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut c = Courtesy::new(7);
        for t in (10..=2100).step_by(10) {
            c.record_at(turn(7, 10), ms(t));
        }
        assert_eq!(c.pause_at(ms(2100)), BREATHER);
        assert_eq!(c.pause_at(ms(2100 + 6000)), Duration::ZERO);
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
