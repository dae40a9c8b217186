//! Helpers shared by the end-to-end tests that run real `lsync run`
//! processes: see the header of `sidecar.rs`.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params, Connection};

use lsync_tests::{lsync_bin, open, scalar, track_library};

pub const POLL: Duration = Duration::from_millis(50);
/// How long any one condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// Fast retries, so that the refused first session of a `--join` (and the
/// refusal tests) do not wait long.
pub const FAST_RETRY: [&str; 4] = ["--backoff-initial-ms", "50", "--backoff-max-ms", "400"];

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1 (bound, then released for the child).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Removes ANSI colour sequences, in case the logger writes them.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that it dies with this test process, however that ends:
/// a guard's drop covers a test that passes, fails or panics, but not a
/// test binary that is killed (a CI timeout, say).
///
/// The child gets `PR_SET_PDEATHSIG(SIGKILL)`. Linux sends that signal when
/// the *thread* that forked the child ends, so every child is forked by one
/// thread that lives as long as the process: a sidecar started (or
/// restarted) from a short-lived helper thread does not die with it.
pub fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure makes only async-signal-safe
    // calls (prctl, getppid) and does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The test process died before the prctl: no signal will come.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("lsync-test-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .expect("the spawner thread runs");
    answer.recv().expect("the spawner thread answers")
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
pub fn process_ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Single-quotes `s` for `sh -c`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

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

pub fn wait_for(what: &str, nodes: &[&Sidecar], ok: impl FnMut() -> bool) {
    wait_for_within(what, nodes, PATIENCE, ok)
}

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

/// A new library database at `dir/name.db`: `sql/examples/library.sql`, then
/// tracked as in `sql/examples/track.sql`. Returns its path and an app
/// connection (extension loaded, WAL, busy timeout).
pub fn library_db(dir: &Path, name: &str) -> (PathBuf, Connection) {
    let path = dir.join(format!("{name}.db"));
    let c = open(&path);
    track_library(&c);
    (path, c)
}

/// Inserts a location and `n` entries under it, in one transaction: a tree in
/// which entry k's parent is entry (k-1)/16. Names are `{root}-{k}`.
/// Returns the location's id.
pub fn index_tree(c: &Connection, root: &str, n: i64) -> i64 {
    let tx = c.unchecked_transaction().unwrap();
    tx.execute(
        "INSERT INTO locations(path, name, total_size, created_at) VALUES (?1, ?2, ?3, 1700000000000)",
        params![format!("/mnt/{root}"), root, n * 7],
    )
    .unwrap();
    let loc = tx.last_insert_rowid();
    let base: i64 = tx
        .query_row("SELECT coalesce(max(id), 0) + 1 FROM entries", [], |r| {
            r.get(0)
        })
        .unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO entries(id, parent_id, location_id, name, size, kind, mtime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .unwrap();
        let dirs = n / 16 + 1;
        for k in 0..n {
            let parent = (k > 0).then(|| base + (k - 1) / 16);
            st.execute(params![
                base + k,
                parent,
                loc,
                format!("{root}-{k}"),
                k * 7,
                i64::from(k >= dirs),
                1_700_000_000_000i64 + k
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    loc
}

pub fn add_tag(c: &Connection, name: &str, color: &str) -> i64 {
    c.execute(
        "INSERT INTO tags(name, color) VALUES (?1, ?2)",
        params![name, color],
    )
    .unwrap();
    c.last_insert_rowid()
}

pub fn assign(c: &Connection, tag: i64, entry: i64) {
    c.execute(
        "INSERT INTO tag_assignments(tag_id, entry_id, created_at) VALUES (?1, ?2, 1700000000000)",
        params![tag, entry],
    )
    .unwrap();
}

/// The local id of the row with this name (tags) or name (entries).
pub fn id_by_name(c: &Connection, table: &str, name: &str) -> Option<i64> {
    c.query_row(
        &format!("SELECT id FROM {table} WHERE name = ?1"),
        [name],
        |r| r.get(0),
    )
    .ok()
}

pub fn count(c: &Connection, table: &str) -> i64 {
    scalar(c, &format!("SELECT count(*) FROM {table}"))
}

pub fn library_id(c: &Connection) -> String {
    scalar(c, "SELECT lsync_library_id()")
}

pub fn device_id(c: &Connection) -> String {
    scalar(c, "SELECT lsync_device_id()")
}

/// A logical FK: the target's uuid, or the uuid of a link still deferred.
pub fn fk(table: &str, col: &str, target: &str) -> String {
    format!(
        "coalesce((SELECT x.uuid FROM {target} x WHERE x.id = t.{col}),
                  (SELECT d.target_uuid FROM lsync_deferred d
                   WHERE d.tbl = (SELECT id FROM lsync_tables WHERE name = '{table}')
                     AND d.rid = t.id AND d.col = '{col}'))"
    )
}

/// Every tracked table, keyed by uuid, FKs as uuids, one string per row.
/// Local ids never appear, so two replicas compare equal when they hold the
/// same data.
pub fn dump(c: &Connection) -> Vec<String> {
    let queries = [
        "SELECT 'L', uuid, device_id, path, name, total_size, created_at FROM locations t"
            .to_owned(),
        format!(
            "SELECT 'E', uuid, {}, {}, name, size, kind, mtime FROM entries t",
            fk("entries", "parent_id", "entries"),
            fk("entries", "location_id", "locations")
        ),
        "SELECT 'T', uuid, name, color FROM tags t".to_owned(),
        format!(
            "SELECT 'A', uuid, {}, {}, created_at FROM tag_assignments t",
            fk("tag_assignments", "tag_id", "tags"),
            fk("tag_assignments", "entry_id", "entries")
        ),
    ];
    let mut rows = Vec::new();
    for q in queries {
        let mut s = c.prepare(&format!("{q} ORDER BY uuid")).unwrap();
        let n = s.column_count();
        let mut r = s.query([]).unwrap();
        while let Some(row) = r.next().unwrap() {
            let cols: Vec<String> = (0..n)
                .map(|i| format!("{:?}", row.get::<_, Value>(i).unwrap()))
                .collect();
            rows.push(cols.join("|"));
        }
    }
    rows
}

/// All replicas hold the same data, and `rows` rows of it.
pub fn converged(conns: &[&Connection], rows: usize) -> bool {
    let first = dump(conns[0]);
    first.len() == rows && conns[1..].iter().all(|c| dump(c) == first)
}

/// The first difference between two dumps, for failure messages.
pub fn first_difference(a: &[String], b: &[String]) -> String {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return format!("{x}\n  vs\n{y}");
        }
    }
    format!("lengths {} vs {}", a.len(), b.len())
}

/// `lsync status --db DB --json`.
pub fn status(db: &Path) -> serde_json::Value {
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

pub fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}
