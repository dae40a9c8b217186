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
//! The watch's own thread sees every event; this one wakes only for the
//! first write after a look, then waits for the writes, whose times the
//! watch's thread notes, to pause. Each wake is a hand-off between threads:
//! one per event cost this thread about thirty futex calls per small commit
//! (its own, its peer's apply in the same directory, the fold of a push);
//! waking once saved 5–9% of a sending sidecar's CPU per commit.
//!
//! A bulk write (a snapshot's import, a large apply, a checkpoint) writes
//! thousands of pages, and each write raised an event that a thread of the
//! watch, then this one, woke for: on two cores that took about a third of
//! a 1M-row import's time. So writes at a bulk rate ([`BULK_EVENTS`] within
//! [`BULK_WINDOW`]) drop the watch for [`BULK_PAUSE`], and the sidecar
//! polls `data_version` every `--poll-ms` meanwhile; then the watch is set
//! up again, and looked through at once. A bulk write still going on then
//! drops it for twice as long, up to [`SAFETY_POLL`]. Writes to other files of the
//! directory count too: each raises an event all the same, which the watch
//! then filters out. The watch's thread counts them, and says when the
//! rate is a bulk one.
//!
//! The waiting blocks: it runs on a thread of its own, which sub-millisecond
//! pauses need (tokio's timers count whole milliseconds).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, warn};

/// How often a watching sidecar looks anyway.
pub const SAFETY_POLL: Duration = Duration::from_secs(1);
/// A pause in the writes this long ends a burst: time to look.
pub const QUIET: Duration = Duration::from_micros(100);
/// A burst that goes on longer than this (a bulk write) is looked at anyway.
const MAX_SETTLE: Duration = Duration::from_millis(2);
/// The first look again after a write; the next ones double.
const FIRST_AGAIN: Duration = Duration::from_micros(250);
/// Writes within [`BULK_WINDOW`] that make a bulk write: 50 pages in WAL
/// mode (a frame is two writes). Small commits a few milliseconds apart
/// raise a fifth of that; an import on a loaded machine, ten times more.
pub const BULK_EVENTS: u32 = 100;
/// See [`BULK_EVENTS`].
const BULK_WINDOW: Duration = Duration::from_millis(10);
/// How long a bulk write leaves the watch dropped, at first.
pub const BULK_PAUSE: Duration = Duration::from_millis(100);

enum Signal {
    /// A file a commit writes was written: the first such write since
    /// [`Writes::signalled`] was cleared.
    Written,
    /// Events at a bulk rate: drop the watch for a while.
    Bulk,
    Stop,
}

/// What the watch's thread tells this one without waking it.
struct Writes {
    base: Instant,
    /// When the last write to a file a commit writes was seen, in
    /// nanoseconds after `base`.
    last: AtomicU64,
    /// Set when [`Signal::Written`] was sent; cleared by the waiting thread
    /// once the writes paused, so that the next write wakes it again.
    signalled: AtomicBool,
}

impl Writes {
    fn new() -> Writes {
        Writes {
            base: Instant::now(),
            last: AtomicU64::new(0),
            signalled: AtomicBool::new(false),
        }
    }

    /// Notes a write; whether the waiting thread is to be woken for it.
    fn note(&self) -> bool {
        let nanos = self.base.elapsed().as_nanos();
        self.last
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), SeqCst);
        !self.signalled.swap(true, SeqCst)
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last.load(SeqCst))
    }
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
    writes: Arc<Writes>,
    stopper: Stopper,
    /// Kept alive while watching: dropping it ends the watch.
    watcher: Option<RecommendedWatcher>,
    /// The watched directory.
    dir: PathBuf,
    /// Set while a bulk write has the watch dropped: until when.
    paused_until: Option<Instant>,
    /// The next pause, and when the last one ended: a pause soon after it
    /// is the same bulk write, and is twice as long.
    pause: (Duration, Instant),
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
        let writes = Arc::new(Writes::new());
        let (dir, names) = commit_files(db);
        let watching = watch.then(|| watch_dir(&dir, names, tx.clone(), writes.clone()));
        let (watcher, failed) = match watching {
            None => (None, None),
            Some(Ok(w)) => (Some(w), None),
            Some(Err(e)) => (None, Some(e)),
        };
        let wakes = Wakes {
            signals,
            writes,
            stopper: Stopper(tx),
            watcher,
            dir,
            paused_until: None,
            pause: (BULK_PAUSE, Instant::now()),
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

    /// Whether a bulk write has the watch dropped for now.
    pub fn is_paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// Blocks until `data_version` is worth a look (true), or until asked
    /// to stop (false).
    pub fn next(&mut self) -> bool {
        if self.paused_until.is_some_and(|t| Instant::now() >= t) {
            self.resume();
            return true;
        }
        let woken = loop {
            let wait = self.next_look.saturating_duration_since(Instant::now());
            match self.signals.recv_timeout(wait) {
                Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                Ok(Signal::Written) => break true,
                Ok(Signal::Bulk) => self.drop_watch(),
                Err(RecvTimeoutError::Timeout) => break false,
            }
        };
        if woken && !self.settle() {
            return false;
        }
        let wait = if !self.is_watching() || self.is_paused() {
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
    /// [`MAX_SETTLE`]); false if asked to stop meanwhile. The watch's thread
    /// notes the time of each write, and does not wake this one for them
    /// until [`Writes::signalled`] is cleared here.
    fn settle(&mut self) -> bool {
        let until = Instant::now() + MAX_SETTLE;
        loop {
            let last = self.writes.last();
            let now = Instant::now();
            let quiet_at = last + QUIET;
            if now >= quiet_at || now >= until {
                self.writes.signalled.store(false, SeqCst);
                // A write between the look at the time and the flag sent no
                // signal: wait for the pause after it too.
                if self.writes.last() == last || now >= until {
                    return true;
                }
                continue;
            }
            match self.signals.recv_timeout(quiet_at - now) {
                Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                Ok(Signal::Bulk) => self.drop_watch(),
                // Sent after the flag was cleared: the wait goes on.
                Ok(Signal::Written) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Drops the watch for a while: the watch's thread counted writes at a
    /// bulk rate (see [`BULK_EVENTS`]).
    fn drop_watch(&mut self) {
        if self.is_paused() {
            return;
        }
        let now = Instant::now();
        if let Some(w) = self.watcher.as_mut() {
            if w.unwatch(&self.dir).is_ok() {
                // Polling from now on: no event will come.
                let (last, resumed) = self.pause;
                let pause = if now.duration_since(resumed) <= BULK_WINDOW * 2 {
                    (last * 2).min(SAFETY_POLL)
                } else {
                    BULK_PAUSE
                };
                debug!(?pause, "bulk writes: the watch is dropped for a while");
                self.paused_until = Some(now + pause);
                self.pause = (pause, resumed);
                self.next_look = self.next_look.min(now + self.poll);
            }
        }
    }

    /// Sets the watch up again after a bulk pause; the caller looks at
    /// once, for the writes between the last poll and the new watch.
    fn resume(&mut self) {
        self.paused_until = None;
        self.pause.1 = Instant::now();
        self.writes.signalled.store(false, SeqCst);
        self.again = FIRST_AGAIN;
        self.next_look = Instant::now() + FIRST_AGAIN;
        if let Some(w) = self.watcher.as_mut() {
            if let Err(e) = w.watch(&self.dir, RecursiveMode::NonRecursive) {
                warn!(every = ?self.poll, "noticing local commits by polling: cannot watch the database's directory again: {e}");
                self.watcher = None;
            }
        }
    }
}

/// Notes each write to a file a commit writes, and sends
/// [`Signal::Written`] for the first since the waiting thread last looked;
/// counts every event of the directory, and sends [`Signal::Bulk`] at
/// [`BULK_EVENTS`] within [`BULK_WINDOW`].
fn watch_dir(
    dir: &Path,
    names: [String; 3],
    tx: Sender<Signal>,
    writes: Arc<Writes>,
) -> notify::Result<RecommendedWatcher> {
    let mut window = (Instant::now(), 0u32);
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        let now = Instant::now();
        if now.duration_since(window.0) > BULK_WINDOW {
            window = (now, 0);
        }
        window.1 += 1;
        if window.1 == BULK_EVENTS {
            let _ = tx.send(Signal::Bulk);
        }
        // An error (say an overflowed queue) may hide a commit: look.
        let commit = e.map_or(true, |e| {
            !matches!(e.kind, EventKind::Access(_))
                && e.paths.iter().any(|p| names.iter().any(|n| p.ends_with(n)))
        });
        if commit && writes.note() {
            let _ = tx.send(Signal::Written);
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
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

    /// A new directory holding an empty `x.db`, and a watch on it.
    fn watched_dir(tag: &str) -> (PathBuf, Wakes) {
        let dir = std::env::temp_dir().join(format!("lsync-{tag}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.db"), b"").unwrap();
        let (wakes, err) = Wakes::new(&dir.join("x.db"), Duration::from_millis(5), true);
        assert!(err.is_none() && wakes.is_watching(), "{err:?}");
        (dir, wakes)
    }

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
        let (dir, wakes) = watched_dir("wake");
        // The first look is at once (as a poll's first tick).
        let (wakes, looked) = looks_within(wakes, Duration::from_millis(300));
        assert!(looked);
        std::fs::write(dir.join("x.db.log"), b"noise").unwrap();
        let (wakes, looked) = looks_within(wakes, Duration::from_millis(300));
        assert!(!looked, "woken by another file");
        std::fs::write(dir.join("x.db-wal"), b"frame").unwrap();
        let (mut wakes, looked) = looks_within(wakes, Duration::from_millis(300));
        assert!(looked, "not woken by the WAL");
        assert!(!wakes.is_paused(), "one write taken for a bulk write");
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

    /// The watch's thread wakes this one only for the first write after a
    /// look: a look that left the flag set would sleep through every commit
    /// after it, until the safety poll.
    #[test]
    fn each_look_lets_the_next_write_wake_it() {
        let (dir, mut wakes) = watched_dir("flag");
        assert!(wakes.next());
        for i in 0..5 {
            // A burst of writes, as a commit makes.
            for _ in 0..4 {
                std::fs::write(dir.join("x.db-wal"), b"frame").unwrap();
            }
            let t = Instant::now();
            assert!(wakes.next());
            assert!(t.elapsed() < Duration::from_millis(300), "round {i}");
            assert!(
                !wakes.writes.signalled.load(SeqCst),
                "round {i}: the flag is still set after the look"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Calls `next` until a call sleeps about [`SAFETY_POLL`]: the looks
    /// after a write are over. Panics after `limit`.
    fn until_asleep(wakes: &mut Wakes, limit: Duration) {
        let started = Instant::now();
        loop {
            let t = Instant::now();
            assert!(wakes.next());
            if t.elapsed() >= SAFETY_POLL - Duration::from_millis(100) {
                return;
            }
            assert!(started.elapsed() < limit, "still looking often");
        }
    }

    /// Writes at a bulk rate to `file` beside the database drop the watch
    /// (so they raise no events), and it is set up again [`BULK_PAUSE`]
    /// later: a single write to the WAL wakes again.
    fn bulk_writes_drop_the_watch(file: &str) {
        let (dir, mut wakes) = watched_dir("bulk");
        assert!(wakes.next());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (stop, path) = (stop.clone(), dir.join(file));
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::File::create(path).unwrap();
                let mut writes = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && writes < 5_000_000 {
                    f.write_all(b"page").unwrap();
                    writes += 1;
                }
            })
        };
        let started = Instant::now();
        while !wakes.is_paused() && started.elapsed() < Duration::from_secs(10) {
            assert!(wakes.next());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(
            wakes.is_paused(),
            "a bulk write to {file} did not drop the watch"
        );
        // Paused: looks every poll interval, then the watch comes back.
        let t = Instant::now();
        while wakes.is_paused() {
            assert!(wakes.next());
            assert!(t.elapsed() < BULK_PAUSE * 10, "still paused");
        }
        assert!(
            t.elapsed() >= BULK_PAUSE / 2,
            "resumed after {:?}",
            t.elapsed()
        );
        until_asleep(&mut wakes, Duration::from_secs(5));
        std::fs::write(dir.join("x.db-wal"), b"frame").unwrap();
        let (wakes, looked) = looks_within(wakes, Duration::from_millis(300));
        assert!(looked, "not woken by the WAL after the pause");
        assert!(!wakes.is_paused());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_bulk_write_to_the_wal_drops_the_watch_for_a_while() {
        bulk_writes_drop_the_watch("x.db-wal");
    }

    /// Another sidecar's import beside ours (the benchmarks' two databases
    /// share a directory).
    #[test]
    fn a_bulk_write_to_another_file_drops_the_watch_too() {
        bulk_writes_drop_the_watch("y.db-wal");
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
