//! Progress of a long transfer from one peer (a snapshot download, or a
//! catch-up of many changes): a log line at least every 10,000 rows or
//! 10 MB with the rate and an ETA, a progress bar when stderr is a
//! terminal, and a small JSON file that `lsync status` reads.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::now::now_ms;
use crate::snapshot::work_dir;

const LOG_ROWS: u64 = 10_000;
const LOG_BYTES: u64 = 10 << 20;
/// The status file is rewritten at most this often.
const FILE_EVERY: Duration = Duration::from_millis(250);
/// `lsync status` ignores a status file not updated for this long (its
/// writer died).
pub const STALE_MS: i64 = 30_000;

/// What `lsync status` shows about a transfer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transfer {
    pub peer: String,
    pub what: String,
    pub rows: u64,
    pub total_rows: u64,
    pub bytes: u64,
    pub total_bytes: u64,
    pub rows_per_s: f64,
    pub eta_s: Option<f64>,
    pub updated_ms: i64,
}

pub struct Progress {
    t: Transfer,
    started: Instant,
    logged: (u64, u64),
    written: Option<Instant>,
    file: Option<PathBuf>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `total_rows` and `total_bytes` may be 0 when unknown.
    pub fn new(db: &Path, peer: &str, what: &str, total_rows: u64, total_bytes: u64) -> Self {
        let file = work_dir(db, "progress")
            .ok()
            .map(|d| d.join(format!("{peer}.json")));
        let bar = std::io::stderr().is_terminal().then(|| {
            let (len, template) = if total_bytes > 0 {
                (
                    total_bytes,
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
            } else {
                (
                    total_rows,
                    "{msg} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
                )
            };
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what.to_owned());
            bar
        });
        Self {
            t: Transfer {
                peer: peer.to_owned(),
                what: what.to_owned(),
                rows: 0,
                total_rows,
                bytes: 0,
                total_bytes,
                rows_per_s: 0.0,
                eta_s: None,
                updated_ms: now_ms(),
            },
            started: Instant::now(),
            logged: (0, 0),
            written: None,
            file,
            bar,
        }
    }

    /// Counts `rows` and `bytes` more as done.
    pub fn advance(&mut self, rows: u64, bytes: u64) {
        self.t.rows += rows;
        self.t.bytes += bytes;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.t.rows_per_s = self.t.rows as f64 / secs;
        self.t.eta_s = self.eta(secs);
        self.t.updated_ms = now_ms();
        if let Some(bar) = &self.bar {
            bar.set_position(if self.t.total_bytes > 0 {
                self.t.bytes
            } else {
                self.t.rows
            });
        }
        if self.t.rows - self.logged.0 >= LOG_ROWS || self.t.bytes - self.logged.1 >= LOG_BYTES {
            self.logged = (self.t.rows, self.t.bytes);
            info!(
                what = %self.t.what,
                rows = self.t.rows,
                total_rows = self.t.total_rows,
                mb = format!("{:.1}", self.t.bytes as f64 / 1e6),
                rate = format!("{:.0} rows/s, {:.1} MB/s", self.t.rows_per_s, self.t.bytes as f64 / 1e6 / secs),
                eta = self.t.eta_s.map_or("-".to_owned(), |s| format!("{s:.1}s")),
                "progress"
            );
        }
        if self.written.is_none_or(|w| w.elapsed() >= FILE_EVERY) {
            self.written = Some(Instant::now());
            self.write_file();
        }
    }

    /// Sets the rows done from a fraction of the bytes (a snapshot's rows are
    /// known only in total).
    pub fn advance_bytes(&mut self, bytes: u64) {
        let rows = if self.t.total_bytes > 0 {
            let done = self.t.bytes + bytes;
            (self.t.total_rows as u128 * done as u128 / self.t.total_bytes as u128) as u64
        } else {
            self.t.rows
        };
        self.advance(rows.saturating_sub(self.t.rows), bytes);
    }

    fn eta(&self, secs: f64) -> Option<f64> {
        let (done, total) = if self.t.total_bytes > 0 {
            (self.t.bytes, self.t.total_bytes)
        } else {
            (self.t.rows, self.t.total_rows)
        };
        (done > 0 && total >= done).then(|| (total - done) as f64 * secs / done as f64)
    }

    fn write_file(&self) {
        if let Some(f) = &self.file {
            let tmp = f.with_extension("tmp");
            if let Ok(b) = serde_json::to_vec(&self.t) {
                if std::fs::write(&tmp, b).is_ok() {
                    let _ = std::fs::rename(&tmp, f);
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Transfers in progress into the database at `db`, for `lsync status`.
pub fn current(db: &Path) -> Vec<Transfer> {
    let mut dir = db.as_os_str().to_owned();
    dir.push("-lsync/progress");
    let Ok(entries) = std::fs::read_dir(PathBuf::from(dir)) else {
        return Vec::new();
    };
    let now = now_ms();
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice::<Transfer>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|t| now - t.updated_ms < STALE_MS)
        .collect()
}
