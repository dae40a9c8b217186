//! The harness for tests that run real `lsync run` processes (see the header
//! of `tests/tests/sidecar.rs`), and the `lsync` CLI around them.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::artifacts::lsync_bin;
use crate::process::{free_port, sh_quote, spawn_tied, strip_ansi};

pub const POLL: Duration = Duration::from_millis(50);
/// How long any one condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// Fast retries, so that the refused first session of a `--join` (and the
/// refusal tests) do not wait long.
pub const FAST_RETRY: [&str; 4] = ["--backoff-initial-ms", "50", "--backoff-max-ms", "400"];

/// A new library secret from `lsync secret new`, written to `dir/name`.
pub fn new_secret(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(lsync_bin())
        .args(["secret", "new"])
        .output()
        .expect("run lsync secret new");
    assert!(out.status.success(), "lsync secret new: {out:?}");
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.trim();
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "a secret is 64 hex characters, got {hex:?}"
    );
    let path = dir.join(name);
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    path
}

/// One `lsync run` child process. Killed (SIGKILL) when dropped; when the
/// drop happens during a panic, its logs are printed first. It also dies
/// with the test process (see [`spawn_tied`]).
pub struct Sidecar {
    pub name: String,
    dir: PathBuf,
    pub db: PathBuf,
    listen: String,
    /// Everything after `--listen ADDR`.
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: RefCell<Option<Child>>,
    /// Run under script(1), with a pseudo-terminal as stderr: `child` is
    /// script, and `lsync` is its child, with pid `inner`.
    terminal: bool,
    inner: Cell<Option<i32>>,
    /// Number of times the process was started; run `n` logs to `name.n.log`.
    runs: Cell<usize>,
}

impl Sidecar {
    /// Starts `lsync run --db DB --listen 127.0.0.1:<free> --secret-file SECRET
    /// [--peer P]... EXTRA...` and waits until it listens.
    pub fn start(
        dir: &Path,
        name: &str,
        db: &Path,
        secret: &Path,
        peers: &[&str],
        extra: &[&str],
    ) -> Sidecar {
        Self::start_with(dir, name, db, secret, peers, extra, &[], false)
    }

    /// `start` under script(1), with extra environment variables: stderr is
    /// a pseudo-terminal (so progress bars are drawn), and the log is what
    /// that terminal showed.
    pub fn start_on_terminal(
        dir: &Path,
        name: &str,
        db: &Path,
        secret: &Path,
        peers: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Sidecar {
        Self::start_with(dir, name, db, secret, peers, extra, env, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_with(
        dir: &Path,
        name: &str,
        db: &Path,
        secret: &Path,
        peers: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
        terminal: bool,
    ) -> Sidecar {
        let mut args = vec!["--secret-file".to_owned(), secret.display().to_string()];
        for p in peers {
            args.push("--peer".into());
            args.push((*p).to_owned());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut s = Sidecar {
            name: name.to_owned(),
            dir: dir.to_owned(),
            db: db.to_owned(),
            listen: String::new(),
            args,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: RefCell::new(None),
            terminal,
            inner: Cell::new(None),
            runs: Cell::new(0),
        };
        // The port was free a moment ago; if another process took it since,
        // try another one.
        for _ in 0..5 {
            s.listen = format!("127.0.0.1:{}", free_port());
            match s.launch() {
                Ok(()) => return s,
                Err(log) if log.contains("in use") => continue,
                Err(log) => panic!("{name} did not start:\n{log}"),
            }
        }
        panic!("{name}: no free port after 5 attempts");
    }

    pub fn log_path(&self, run: usize) -> PathBuf {
        self.dir.join(format!("{}.{run}.log", self.name))
    }

    /// Spawns the process and waits until its log says it listens. On an
    /// early exit, returns its log.
    pub fn launch(&self) -> Result<(), String> {
        let run = self.runs.get() + 1;
        self.runs.set(run);
        let log = File::create(self.log_path(run)).expect("create log file");
        let mut argv = vec![
            lsync_bin().display().to_string(),
            "run".into(),
            "--db".into(),
            self.db.display().to_string(),
            "--listen".into(),
            self.listen.clone(),
        ];
        argv.extend(self.args.iter().cloned());
        let pid_file = self.dir.join(format!("{}.{run}.pid", self.name));
        let mut cmd = if self.terminal {
            // script runs `$SHELL -c`; the shell notes its pid, which exec
            // hands on to lsync.
            let line = format!(
                "echo $$ > {} && exec {}",
                sh_quote(&pid_file.display().to_string()),
                argv.iter()
                    .map(|a| sh_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let mut cmd = Command::new("script");
            cmd.arg("-qfec")
                .arg(line)
                .arg(self.log_path(run))
                .env("SHELL", "/bin/sh")
                .stderr(Stdio::null());
            cmd
        } else {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]).stderr(log);
            cmd
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("LSYNC_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        self.inner.set(None);
        let child = spawn_tied(cmd).expect("spawn lsync run");
        *self.child.borrow_mut() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.terminal && self.inner.get().is_none() {
                let pid = std::fs::read_to_string(&pid_file).ok();
                self.inner
                    .set(pid.and_then(|p| p.trim().parse().ok()).filter(|&p| p > 0));
            }
            if self.log().contains("listening") && (!self.terminal || self.inner.get().is_some()) {
                return Ok(());
            }
            if let Some(status) = self.try_status() {
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            sleep(Duration::from_millis(10));
        }
        Err(format!("not listening after 15 s:\n{}", self.log()))
    }

    pub fn addr(&self) -> &str {
        &self.listen
    }

    /// The log of the current run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.runs.get()))
            .map(|s| strip_ansi(&s))
            .unwrap_or_default()
    }

    /// The logs of every run, labelled.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for run in 1..=self.runs.get() {
            let text = std::fs::read_to_string(self.log_path(run)).unwrap_or_default();
            let text = strip_ansi(&text);
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(200);
            out.push_str(&format!(
                "----- {} (run {run}, {} lines{}) -----\n",
                self.name,
                lines.len(),
                if skip > 0 { ", last 200" } else { "" }
            ));
            for l in &lines[skip..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The pid of `lsync run` (under script(1), script's child).
    pub fn pid(&self) -> i32 {
        self.inner
            .get()
            .or_else(|| self.child.borrow().as_ref().map(|c| c.id() as i32))
            .expect("process started")
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.child
            .borrow_mut()
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    pub fn alive(&self) -> bool {
        self.child.borrow().is_some() && self.try_status().is_none()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own child, which has not been
        // reaped yet (the Child is still held), so the pid cannot be reused;
        // under script(1), on script's child, which script reaps only as it
        // exits itself.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for a clean exit (code 0) within 10 s.
    pub fn stop(&self) {
        self.signal(libc::SIGTERM);
        match self.wait_exit(Duration::from_secs(10)) {
            Some(s) if s.code() == Some(0) => {}
            Some(s) => panic!("{} exited with {s} after SIGTERM", self.name),
            None => panic!("{} still running 10 s after SIGTERM", self.name),
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&self) {
        if let Some(c) = self.child.borrow_mut().as_mut() {
            kill_and_reap(c, self.inner.get());
        }
    }

    /// Starts the process again, same database, port and flags.
    pub fn restart(&self) {
        assert!(!self.alive(), "{} is still running", self.name);
        if let Err(log) = self.launch() {
            panic!("{} did not restart:\n{log}", self.name);
        }
    }
}

/// SIGKILL to `child`, and first to its own child `inner` (lsync under
/// script(1), which a killed script would leave behind until the terminal
/// hangs up), then reaps `child`.
fn kill_and_reap(child: &mut Child, inner: Option<i32>) {
    if let (Some(pid), Ok(None)) = (inner, child.try_wait()) {
        // SAFETY: kill(2) on script's child while script runs: script reaps
        // it only as it exits itself, so the pid is still lsync's.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let inner = self.inner.get();
        if let Some(c) = self.child.get_mut() {
            kill_and_reap(c, inner);
        }
        if std::thread::panicking() || std::env::var_os("LSYNC_TEST_SHOW_LOGS").is_some() {
            eprintln!("{}", self.all_logs());
        }
    }
}

/// Polls `ok` every 50 ms until it holds, for at most `limit`; fails if it
/// does not, or if one of `nodes` dies meanwhile (their logs are printed by
/// their drop).
pub fn wait_for_within(
    what: &str,
    nodes: &[&Sidecar],
    limit: Duration,
    mut ok: impl FnMut() -> bool,
) {
    let start = Instant::now();
    let max_polls = limit.as_millis() / POLL.as_millis() + 1;
    for _ in 0..max_polls {
        if ok() {
            return;
        }
        for n in nodes {
            if let Some(s) = n.try_status() {
                panic!(
                    "{} exited ({s}) while waiting for: {what}\n{}",
                    n.name,
                    n.all_logs()
                );
            }
        }
        if start.elapsed() > limit {
            break;
        }
        sleep(POLL);
    }
    panic!(
        "timed out after {:.1} s waiting for: {what}",
        start.elapsed().as_secs_f64()
    );
}

/// [`wait_for_within`] with the usual [`PATIENCE`].
pub fn wait_for(what: &str, nodes: &[&Sidecar], ok: impl FnMut() -> bool) {
    wait_for_within(what, nodes, PATIENCE, ok)
}

/// `lsync status --db DB --json`.
pub fn lsync_status(db: &Path) -> serde_json::Value {
    let out = Command::new(lsync_bin())
        .args(["status", "--json", "--db"])
        .arg(db)
        .output()
        .expect("run lsync status");
    assert!(
        out.status.success(),
        "lsync status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lsync status --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The `recv_cursor=N` of a "session established" log line.
pub fn logged_cursor(line: &str) -> Option<i64> {
    line.split("recv_cursor=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .next()?
        .parse()
        .ok()
}

/// How often `needle` occurs in a log.
pub fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}
