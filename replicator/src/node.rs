//! `lsync run`: the sidecar. It listens for peers, dials the configured
//! ones with capped exponential backoff, notices local commits through
//! `PRAGMA data_version` (looked at when the WAL is written, see
//! [`crate::wake`]), and shuts down cleanly on SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::admit::{AcceptBackoff, Admission};
use crate::config::{Backoff, RunConfig};
use crate::dbfile::{self, FileId};
use crate::members;
use crate::session::{self, Node};
use crate::store;
use crate::wake::{self, Wakes};

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let secret = crate::secret::read(&cfg.secret_file)?;
    // Fail early, before listening, if the database cannot be opened.
    let conn = store::open(&cfg.db)?;
    let id = store::identity(&conn)?;
    // The device key and the secrets are read now: a listener proves them
    // before it may touch the database.
    let keys = members::device_keys(&conn)?;
    let secrets = members::seed_secret(&conn, &secret)?;
    let db_file = FileId::of(&cfg.db)?;
    // Kept to watch commits on: open before the sidecar says it listens.
    info!(db = %cfg.db.display(), device = %id.device_id, library = %id.library_id,
        key = %members::hex(&keys.public), "lsync replicator starting");
    if secrets.first().is_some_and(|(_, s)| *s != secret) {
        warn!("the secret file holds an older library secret: this database has learned of a rotation; new devices need the current one (`lsync secret show`)");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (changed, _) = watch::channel(0u64);
    let node = Arc::new(Node {
        cfg,
        db_file,
        keys,
        secrets: std::sync::RwLock::new(secrets),
        changed,
        shutdown: stop_rx,
    });
    let cfg = &node.cfg;

    let listener = TcpListener::bind(&cfg.listen).await?;
    info!(listen = %listener.local_addr()?, "listening");
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = cfg.metrics {
        crate::metrics::serve(addr)?;
        info!(metrics = %addr, "serving Prometheus metrics");
        tasks.spawn(crate::metrics::refresh(
            cfg.db.clone(),
            node.shutdown.clone(),
        ));
    }
    tasks.spawn(watch_commits(node.clone(), conn));
    tasks.spawn(accept(node.clone(), listener));
    for addr in &cfg.peers {
        tasks.spawn(dial(node.clone(), addr.clone(), cfg.backoff()));
    }

    // A sidecar whose database was removed (or replaced) would go on
    // writing to a file nobody can open again: stop, and say why.
    let gone = tokio::select! {
        _ = shutdown_signal() => None,
        gone = dbfile::watch(cfg.db.clone(), db_file) => Some(gone),
    };
    match &gone {
        None => info!("shutting down"),
        Some(g) => error!("{g}"),
    }
    let _ = stop_tx.send(true);
    let grace = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    });
    if grace.await.is_err() {
        warn!("sessions did not stop within 5 s; aborting them");
        tasks.abort_all();
    }
    info!("stopped");
    match gone {
        None => Ok(()),
        Some(g) => Err(g.into()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Reads `PRAGMA data_version` on a connection of its own whenever
/// [`Wakes`] says a commit may have happened (on a thread of its own: the
/// waiting blocks). The value moves when any other connection (the app, or
/// a session's apply) commits.
async fn watch_commits(node: Arc<Node>, conn: rusqlite::Connection) {
    let mut stop = node.shutdown.clone();
    let poll = Duration::from_millis(node.cfg.poll_ms);
    let (wakes, failed) = Wakes::new(&node.cfg.db, poll, !node.cfg.no_watch);
    match failed {
        None if wakes.is_watching() => info!(
            safety_poll = ?wake::SAFETY_POLL,
            "noticing local commits by watching the database's WAL"
        ),
        None => info!(every = ?poll, "noticing local commits by polling (--no-watch)"),
        Some(e) => warn!(every = ?poll,
            "noticing local commits by polling: cannot watch the database's directory: {e}"),
    }
    let stopper = wakes.stopper();
    let mut looker = tokio::task::spawn_blocking(move || look_for_commits(&node, &conn, wakes));
    tokio::select! {
        _ = &mut looker => return,
        _ = stop.changed() => {}
    }
    stopper.stop();
    let _ = looker.await;
}

/// How long after a commit the watcher reads the library secrets. A
/// rotation (`lsync secret rotate`, by another process) is a commit like any
/// other, and the only way to see one is to read them; reading them at every
/// commit cost each sidecar a twentieth of its CPU per small commit, on the
/// cores a commit's way to the peers needs.
const SECRETS_AFTER: Duration = Duration::from_millis(10);

fn look_for_commits(node: &Node, conn: &rusqlite::Connection, mut wakes: Wakes) {
    let mut last = store::data_version(conn).unwrap_or(0);
    // Set by a commit whose secrets are not read yet: when to read them.
    let mut secrets_due: Option<Instant> = None;
    while wakes.next() {
        match store::data_version(conn) {
            Ok(v) if v != last => {
                last = v;
                node.changed.send_modify(|n| *n += 1);
                secrets_due.get_or_insert_with(|| Instant::now() + SECRETS_AFTER);
            }
            Ok(_) => {}
            Err(e) => warn!("data_version: {e}"),
        }
        // After a commit the watch looks again at 0.25 ms, 0.5 ms, 1 ms...
        // (see `wake`): one of those looks is past the due time. When the
        // secrets changed the sessions wake again: one that woke for the
        // commit found no new secret to send.
        if secrets_due.is_some_and(|t| Instant::now() >= t) {
            secrets_due = None;
            if members::secrets(conn).is_ok_and(|s| node.set_secrets(s)) {
                node.changed.send_modify(|n| *n += 1);
            }
        }
    }
}

async fn accept(node: Arc<Node>, listener: TcpListener) {
    let mut stop = node.shutdown.clone();
    let mut sessions = tokio::task::JoinSet::new();
    let mut admission = Admission::default();
    let mut backoff = AcceptBackoff::default();
    loop {
        let (sock, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => { backoff.succeeded(); x }
                Err(e) => {
                    let pause = backoff.failed();
                    warn!(retry_in = ?pause, "accept: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => break,
                    }
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // Reap finished sessions so the set does not grow.
        while sessions.try_join_next().is_some() {}
        let Some(slot) = admission.admit(addr.ip()) else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let node = node.clone();
        sessions.spawn(async move {
            let _slot = slot;
            let addr = addr.to_string();
            if let Err(e) = session::run(node, sock, false, addr.clone(), 0).await {
                warn!(peer = %addr, "session ended: {e}");
            }
        });
    }
    while sessions.join_next().await.is_some() {}
}

/// Keeps a session open to one configured peer, retrying with capped
/// exponential backoff. The delay resets after a session that lasted.
async fn dial(node: Arc<Node>, addr: String, backoff: Backoff) {
    let mut stop = node.shutdown.clone();
    let mut delays = backoff.delays();
    // Which of our secrets to offer: the next older one after a failed
    // handshake, the newest again after one that worked.
    let mut attempt = 0;
    loop {
        crate::metrics::dial_backoff(&addr, Duration::ZERO);
        let started = tokio::time::Instant::now();
        let outcome = match TcpStream::connect(&addr).await {
            Ok(sock) => {
                let _ = sock.set_nodelay(true);
                let r = session::run(node.clone(), sock, true, addr.clone(), attempt).await;
                attempt = match &r {
                    Err(e) if e.is_handshake() => attempt + 1,
                    _ => 0,
                };
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("connect: {e}")),
        };
        if *stop.borrow() {
            return;
        }
        if started.elapsed() > Duration::from_secs(10) {
            delays.reset();
        }
        let delay = delays.next();
        match outcome {
            Ok(()) => info!(peer = %addr, "session closed"),
            Err(e) => {
                crate::metrics::dial_failed(&addr);
                warn!(peer = %addr, retry_in = ?delay, "session failed: {e}")
            }
        }
        crate::metrics::dial_backoff(&addr, delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}
