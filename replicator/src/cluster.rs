//! A few `lsync run` processes on loopback, each with its own database, for
//! `lsync demo` and the end-to-end benchmarks. Children are stopped (SIGTERM,
//! then SIGKILL) when the cluster is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use crate::store;

pub const LIBRARY_SQL: &str = include_str!("../../sql/examples/library.sql");
pub const TRACK_SQL: &str = include_str!("../../sql/examples/track.sql");

pub struct Member {
    pub db: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    secret: PathBuf,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

impl Cluster {
    /// `n` databases under `dir` (`device-a/device-a.db`...), with `schema`
    /// applied, all in one library; their logs are in `dir`.
    pub fn create(dir: &Path, n: usize, schema: &str) -> Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let secret = dir.join("library.secret");
        std::fs::write(&secret, crate::secret::new()?)?;
        let mut members = Vec::new();
        let mut library: Option<String> = None;
        for i in 0..n {
            // A directory per device, as on separate machines: each sidecar
            // watches its database's directory, and would otherwise be woken
            // by every write of the others.
            let name = format!("device-{}", (b'a' + i as u8) as char);
            let home = dir.join(&name);
            std::fs::create_dir_all(&home)?;
            let db = home.join(format!("{name}.db"));
            let c = store::open(&db)?;
            c.execute_batch(schema).context("creating the schema")?;
            match &library {
                None => library = Some(c.query_row("SELECT lsync_library_id()", [], |r| r.get(0))?),
                Some(l) => {
                    c.query_row("SELECT lsync_library_id(?1)", [l], |r| {
                        r.get::<_, String>(0)
                    })?;
                }
            }
            members.push(Member {
                db,
                port: free_port()?,
                log: dir.join(format!("{name}.log")),
                child: None,
            });
        }
        Ok(Cluster { members, secret })
    }

    /// A cluster over existing databases, which must already be in one
    /// library or be started with --join; the secret and the logs go in
    /// `dir`. Give each database a directory of its own, as `create` does.
    pub fn adopt(dir: &Path, dbs: &[PathBuf]) -> Result<Cluster> {
        let secret = dir.join("library.secret");
        std::fs::write(&secret, crate::secret::new()?)?;
        let members = dbs
            .iter()
            .map(|db| {
                Ok(Member {
                    db: db.clone(),
                    port: free_port()?,
                    // Beside the database's directory, not in it: the
                    // sidecar watches that one.
                    log: dir.join(db.with_extension("log").file_name().unwrap_or_default()),
                    child: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Cluster { members, secret })
    }

    /// The process id of member `i`'s replicator, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(|c| c.id())
    }

    /// Starts member `i`'s replicator, dialing `peers`.
    pub fn start(&mut self, i: usize, peers: &[usize], extra: &[&str]) -> Result<()> {
        let exe = std::env::current_exe()?;
        let peer_addrs: Vec<String> = peers
            .iter()
            .map(|p| format!("127.0.0.1:{}", self.members[*p].port))
            .collect();
        let m = &mut self.members[i];
        let log = std::fs::File::create(&m.log)?;
        let mut cmd = Command::new(exe);
        // The extension this process loads, wherever it was found.
        cmd.arg("--extension")
            .arg(crate::db::extension()?)
            .arg("run")
            .arg("--db")
            .arg(&m.db)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", m.port))
            .arg("--secret-file")
            .arg(&self.secret)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env("NO_COLOR", "1");
        for p in peer_addrs {
            cmd.arg("--peer").arg(p);
        }
        m.child = Some(cmd.spawn().context("starting lsync run")?);
        Ok(())
    }

    /// Stops member `i` with SIGTERM and waits for it (SIGKILL after 10 s).
    pub fn stop(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.members[i].child.take() {
            // SIGTERM asks for the clean shutdown path.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn open(&self, i: usize) -> Result<Connection> {
        Ok(store::open(&self.members[i].db)?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.stop(i);
        }
    }
}

/// Polls `check` every `every` until it returns true, or fails after `limit`.
pub fn wait_until(
    every: Duration,
    limit: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if check()? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("timed out after {limit:?}");
        }
        std::thread::sleep(every);
    }
}
