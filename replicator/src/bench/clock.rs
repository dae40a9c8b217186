//! Wall-clock and CPU time of the calling thread.
//!
//! CPU time (user + system, `CLOCK_THREAD_CPUTIME_ID`) is much less
//! disturbed than wall time when other processes compete for the cores;
//! wall time also includes waiting for the disk.

use std::time::Instant;

pub(crate) struct Stopwatch {
    wall: Instant,
    cpu: Option<u64>,
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub wall_s: f64,
    pub cpu_s: Option<f64>,
}

impl Stopwatch {
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: thread_cpu_ns(),
        }
    }

    pub fn stop(&self) -> Timing {
        let wall_s = self.wall.elapsed().as_secs_f64();
        let cpu_s = match (self.cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9),
            _ => None,
        };
        Timing { wall_s, cpu_s }
    }
}

/// The best (smallest) wall and CPU times seen, each on its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Best {
    pub wall_s: f64,
    pub cpu_s: Option<f64>,
}

impl Best {
    pub fn new() -> Self {
        Self {
            wall_s: f64::INFINITY,
            cpu_s: None,
        }
    }

    pub fn add(&mut self, t: Timing) {
        self.wall_s = self.wall_s.min(t.wall_s);
        self.cpu_s = match (self.cpu_s, t.cpu_s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// CPU time consumed by the calling thread, in nanoseconds.
#[cfg(unix)]
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

#[cfg(not(unix))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

/// CPU time (user + system, all threads) consumed so far by process `pid`,
/// from `/proc/PID/stat`.
#[cfg(target_os = "linux")]
pub(crate) fn process_cpu(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(std::time::Duration::from_nanos(
        (utime + stime) * 1_000_000_000 / hz,
    ))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn process_cpu(_pid: u32) -> Option<std::time::Duration> {
    None
}
