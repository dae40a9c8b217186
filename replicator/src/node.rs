//! `lsync run`: the sidecar. It listens for peers, dials the configured
//! ones with capped exponential backoff, notices local commits through
//! `PRAGMA data_version`, and shuts down cleanly on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cli::Strategy;
use crate::config::RunConfig;
use crate::dbfile::{self, FileId};
use crate::protocol::Secret;
use crate::{peer, store};

/// What every session of this sidecar shares.
pub struct Node {
    pub db_path: PathBuf,
    /// The file `db_path` named at start; sessions refuse to open another.
    pub db_file: FileId,
    pub secret: Secret,
    pub join: bool,
    pub batch: u32,
    pub heartbeat: Duration,
    pub escalate_after: i64,
    pub strategy: Strategy,
    pub snapshot_min: u64,
    pub single_max: u64,
    pub bulk_notify: u64,
    /// Bumped whenever another connection commits to the database.
    pub changed: watch::Sender<u64>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let secret = crate::secret::read(&cfg.secret_file)?;
    // Fail early, before listening, if the database cannot be opened.
    let conn = store::open(&cfg.db)?;
    let id = store::identity(&conn)?;
    let db_file = FileId::of(&cfg.db)?;
    drop(conn);
    info!(db = %cfg.db.display(), device = %id.device_id, library = %id.library_id, "lsync replicator starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let (changed, _) = watch::channel(0u64);
    let node = Arc::new(Node {
        db_path: cfg.db.clone(),
        db_file,
        secret,
        join: cfg.join,
        batch: cfg.batch,
        heartbeat: Duration::from_millis(cfg.heartbeat_ms),
        escalate_after: 5,
        strategy: cfg.strategy,
        snapshot_min: cfg.snapshot_min,
        single_max: cfg.single_max,
        bulk_notify: cfg.bulk_notify,
        changed,
        shutdown: stop_rx,
    });

    let listener = TcpListener::bind(&cfg.listen).await?;
    info!(listen = %listener.local_addr()?, "listening");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch_commits(
        node.clone(),
        Duration::from_millis(cfg.poll_ms),
    ));
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

/// Polls `PRAGMA data_version` on a connection of its own. The value moves
/// when any other connection (the app, or a session's apply) commits.
async fn watch_commits(node: Arc<Node>, every: Duration) {
    let mut stop = node.shutdown.clone();
    let conn = match store::open_existing(&node.db_path) {
        Ok(c) => c,
        Err(e) => {
            error!("cannot open the database to watch commits: {e}");
            return;
        }
    };
    let mut last = store::data_version(&conn).unwrap_or(0);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match store::data_version(&conn) {
            Ok(v) if v != last => {
                last = v;
                node.changed.send_modify(|n| *n += 1);
            }
            Ok(_) => {}
            Err(e) => warn!("data_version: {e}"),
        }
    }
}

async fn accept(node: Arc<Node>, listener: TcpListener) {
    let mut stop = node.shutdown.clone();
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let (sock, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { warn!("accept: {e}"); continue; }
            },
            _ = stop.changed() => break,
        };
        let _ = sock.set_nodelay(true);
        let node = node.clone();
        sessions.spawn(async move {
            let addr = addr.to_string();
            if let Err(e) = peer::run(node, sock, false, addr.clone()).await {
                warn!(peer = %addr, "session ended: {e}");
            }
        });
        // Reap finished sessions so the set does not grow.
        while sessions.try_join_next().is_some() {}
    }
    while sessions.join_next().await.is_some() {}
}

/// Capped exponential backoff for dialing a peer.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

/// Keeps a session open to one configured peer, retrying with capped
/// exponential backoff. The delay resets after a session that lasted.
async fn dial(node: Arc<Node>, addr: String, backoff: Backoff) {
    let mut stop = node.shutdown.clone();
    let mut delay = backoff.initial;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = match TcpStream::connect(&addr).await {
            Ok(sock) => {
                let _ = sock.set_nodelay(true);
                peer::run(node.clone(), sock, true, addr.clone())
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("connect: {e}")),
        };
        if *stop.borrow() {
            return;
        }
        match outcome {
            Ok(()) => info!(peer = %addr, "session closed"),
            Err(e) => warn!(peer = %addr, retry_in = ?delay, "session failed: {e}"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            delay = backoff.initial;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(backoff.max);
    }
}
