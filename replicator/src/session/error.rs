//! How a session fails, and the helper that runs database work off the
//! async threads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use crate::protocol::ProtoError;
use crate::snapshot::SnapError;
use crate::store::{self, Failure, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The Noise handshake failed (or the peer's protocol differs).
    #[error(transparent)]
    Handshake(ProtoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the peer reported: {0}")]
    Remote(String),
    #[error("no message from the peer for {0:?}")]
    Silent(Duration),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    DbGone(#[from] crate::dbfile::Gone),
}

impl SessionError {
    /// Whether the session failed in its handshake: a dialer then offers
    /// its next older secret.
    pub fn is_handshake(&self) -> bool {
        matches!(self, SessionError::Handshake(_))
    }

    /// Whether a full resync from the peer could get past this failure.
    /// The peer's report of its own failure counts as deterministic when
    /// the peer refused our changes: a resync from it changes what we
    /// apply, never what it does.
    pub(crate) fn failure(&self) -> Failure {
        match self {
            SessionError::Store(e) => Failure::of(e),
            SessionError::Remote(m) | SessionError::Refused(m) => Failure::of_message(m),
            _ => Failure::Transient,
        }
    }
}

impl From<SnapError> for SessionError {
    fn from(e: SnapError) -> Self {
        SessionError::Store(e.into())
    }
}

pub(crate) type R<T> = Result<T, SessionError>;

/// Runs blocking database work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> store::R<T> + Send + 'static,
) -> R<T> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || locked(&conn, f))
        .await
        .map_err(|e| SessionError::Internal(e.to_string()))?
}

/// [`blocking`] on this thread rather than the blocking pool's: for the
/// database work on a small commit's way to the peer (a push's look, an
/// apply), where the hand-off to a pool thread and back was two of the
/// thread wake-ups each side pays per commit (`lsync bench latency`, two
/// sets of alternated runs: median p50 2.01 to 1.85 ms, 2.30 to 2.02 ms).
/// `block_in_place` hands this worker's
/// other tasks (the frame reader among them) to another thread meanwhile;
/// the caller's own task waits, as it did for the pool. So not for work a
/// caller overlaps with something else (`keep_alive`). Without a
/// multi-threaded runtime (tests), the pool as before.
pub(crate) async fn inline<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> store::R<T> + Send + 'static,
) -> R<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
        return blocking(conn, f).await;
    }
    // A panic ends the session with an error, as one on a pool thread does,
    // rather than the task that runs it (a dialer's retry loop).
    let run = std::panic::AssertUnwindSafe(|| locked(conn, f));
    tokio::task::block_in_place(|| std::panic::catch_unwind(run))
        .unwrap_or_else(|_| Err(SessionError::Internal("database work panicked".into())))
}

/// Runs `f` on the session's connection, on the calling thread.
fn locked<T>(conn: &Mutex<Connection>, f: impl FnOnce(&mut Connection) -> store::R<T>) -> R<T> {
    let mut c = conn
        .lock()
        .map_err(|_| SessionError::Internal("database lock poisoned".into()))?;
    f(&mut c).map_err(SessionError::from)
}

/// Runs blocking work that needs no connection off the async threads.
pub(crate) async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> R<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::Internal(e.to_string()))
}
