//! When to look for local commits.
//!
//! `PRAGMA data_version` says whether another connection committed, but
//! asking it every few milliseconds costs an idle sidecar CPU and a commit
//! half an interval of latency on average. A commit writes a file, though:
//! the `-wal` file in WAL mode, the database file itself otherwise. So the
//! sidecar watches the database's directory (inotify on Linux, through the
//! `notify` crate) and looks at `data_version` when one of those files is
//! written. `data_version` stays the truth: a wake without a new commit (a
//! checkpoint, the first writer creating the WAL) costs one pragma and does
//! nothing.
//!
//! A commit is many writes (two per page), and it is published only after
//! the last of them, and after the sync to disk with `synchronous=FULL` (in
//! the wal-index, a memory map that raises no event). So a wake waits until
//! the writes pause for [`QUIET`] and then looks once, rather than once per
//! write; then it looks again after 0.25 ms, 0.5 ms, 1 ms..., doubling up to
//! [`SAFETY_POLL`], counted from the last write: a commit still being
//! synced is seen within about twice its sync time, and the sidecar is back
//! to sleep a second after the last write. With a watch it also looks every
//! [`SAFETY_POLL`] (a missed event, an overflowed inotify queue). Without
//! one (it could not be set up, or `--no-watch`) it polls every
//! `--poll-ms`, as it always did.
//!
//! The waiting blocks: it runs on a thread of its own, which sub-millisecond
//! pauses need (tokio's timers count whole milliseconds).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// How often a watching sidecar looks anyway.
pub const SAFETY_POLL: Duration = Duration::from_secs(1);
/// A pause in the writes this long ends a burst: time to look.
pub const QUIET: Duration = Duration::from_micros(100);
/// A burst that goes on longer than this (a bulk write) is looked at anyway.
const MAX_SETTLE: Duration = Duration::from_millis(2);
/// The first look again after a write; the next ones double.
const FIRST_AGAIN: Duration = Duration::from_micros(250);

enum Signal {
    Written,
    Stop,
}

/// Asks a thread blocked in [`Wakes::next`] to return.
#[derive(Clone)]
pub struct Stopper(Sender<Signal>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(Signal::Stop);
    }
}

/// How local commits are noticed.
pub struct Wakes {
    signals: Receiver<Signal>,
    stopper: Stopper,
    /// Kept alive while watching: dropping it ends the watch.
    watcher: Option<RecommendedWatcher>,
    poll: Duration,
    /// The next look without an event.
    next_look: Instant,
    /// The delay of the next look again after a write.
    again: Duration,
}

impl Wakes {
    /// Watches the directory of `db` unless `watch` is false or the watch
    /// cannot be set up (then it polls, and the error says why).
    pub fn new(db: &Path, poll: Duration, watch: bool) -> (Wakes, Option<notify::Error>) {
        let (tx, signals) = mpsc::channel();
        let (watcher, failed) = match watch.then(|| watch_dir(db, tx.clone())) {
            None => (None, None),
            Some(Ok(w)) => (Some(w), None),
            Some(Err(e)) => (None, Some(e)),
        };
        let wakes = Wakes {
            signals,
            stopper: Stopper(tx),
            watcher,
            poll,
            next_look: Instant::now(),
            again: SAFETY_POLL,
        };
        (wakes, failed)
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Whether a file watch wakes the sidecar (rather than a poll).
    pub fn is_watching(&self) -> bool {
        self.watcher.is_some()
    }

    /// Blocks until `data_version` is worth a look (true), or until asked
    /// to stop (false).
    pub fn next(&mut self) -> bool {
        let wait = self.next_look.saturating_duration_since(Instant::now());
        let woken = match self.signals.recv_timeout(wait) {
            Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
            Ok(Signal::Written) => true,
            Err(RecvTimeoutError::Timeout) => false,
        };
        if woken && !self.settle() {
            return false;
        }
        let wait = if !self.is_watching() {
            self.poll
        } else {
            if woken {
                self.again = FIRST_AGAIN;
            }
            let wait = self.again;
            self.again = (self.again * 2).min(SAFETY_POLL);
            wait
        };
        self.next_look = Instant::now() + wait;
        true
    }

    /// Waits for a pause of [`QUIET`] in the writes (at most
    /// [`MAX_SETTLE`]); false if asked to stop meanwhile.
    fn settle(&self) -> bool {
        let until = Instant::now() + MAX_SETTLE;
        while Instant::now() < until {
            match self.signals.recv_timeout(QUIET) {
                Ok(Signal::Written) => {}
                Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        true
    }
}

/// Sends [`Signal::Written`] for each write to a file a commit writes.
fn watch_dir(db: &Path, tx: Sender<Signal>) -> notify::Result<RecommendedWatcher> {
    let (dir, names) = commit_files(db);
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        // An error (say an overflowed queue) may hide a commit: look.
        let commit = e.map_or(true, |e| {
            !matches!(e.kind, EventKind::Access(_))
                && e.paths.iter().any(|p| names.iter().any(|n| p.ends_with(n)))
        });
        if commit {
            let _ = tx.send(Signal::Written);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// The directory to watch, and the names of the files a commit writes in
/// it. SQLite follows a symlinked database to its target and keeps the WAL
/// beside that.
fn commit_files(db: &Path) -> (PathBuf, [String; 3]) {
    let real = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    let dir = match real.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let names = [format!("{name}-wal"), format!("{name}-journal"), name];
    (dir, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `next` on a thread; whether it returned within `limit`.
    fn looks_within(wakes: Wakes, limit: Duration) -> (Wakes, bool) {
        let (tx, rx) = mpsc::channel();
        let stopper = wakes.stopper();
        let t = std::thread::spawn(move || {
            let mut wakes = wakes;
            let looked = wakes.next();
            let _ = tx.send(());
            (wakes, looked)
        });
        let returned = rx.recv_timeout(limit).is_ok();
        if !returned {
            stopper.stop();
        }
        let (wakes, looked) = t.join().unwrap();
        (wakes, returned && looked)
    }

    /// A write to the WAL wakes the watcher at once; a write to another file
    /// in the directory does not; with nothing written it sleeps.
    #[test]
    fn a_write_to_the_wal_wakes_and_other_files_do_not() {
        let dir = std::env::temp_dir().join(format!("lsync-wake-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        std::fs::write(&db, b"").unwrap();
        let (wakes, err) = Wakes::new(&db, Duration::from_millis(5), true);
        assert!(err.is_none() && wakes.is_watching(), "{err:?}");
        // The first look is at once (as a poll's first tick).
        let (wakes, looked) = looks_within(wakes, Duration::from_millis(300));
        assert!(looked);
        std::fs::write(dir.join("x.db.log"), b"noise").unwrap();
        let (wakes, looked) = looks_within(wakes, Duration::from_millis(300));
        assert!(!looked, "woken by another file");
        std::fs::write(dir.join("x.db-wal"), b"frame").unwrap();
        let (mut wakes, looked) = looks_within(wakes, Duration::from_millis(300));
        assert!(looked, "not woken by the WAL");
        // The looks again, 0.25 ms and doubling: back to one a second.
        let started = Instant::now();
        let slept = (0..25).any(|_| {
            let t = Instant::now();
            assert!(wakes.next());
            t.elapsed() >= SAFETY_POLL - Duration::from_millis(100)
        });
        assert!(slept, "still looking often after {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(4));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn without_a_watch_it_polls_until_stopped() {
        let (mut wakes, err) = Wakes::new(Path::new("x.db"), Duration::from_millis(5), false);
        assert!(err.is_none() && !wakes.is_watching());
        let t = Instant::now();
        for _ in 0..3 {
            assert!(wakes.next());
        }
        assert!(t.elapsed() < Duration::from_secs(1));
        wakes.stopper().stop();
        assert!(!wakes.next());
    }
}
