//! Bulk work in a session: choosing how to serve a peer that is behind,
//! and moving snapshots both ways (chunked, checksummed, resumable).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cli::Strategy;
use crate::peer::{blocking, Session, SessionError, R};
use crate::progress::Progress;
use crate::protocol::Msg;
use crate::snapshot::{Chunk, Incoming, Meta, Outgoing, RestoreFailure, SnapError};
use crate::store;

/// Chunks compressed ahead of the socket (they compress in parallel).
const AHEAD: usize = 2;
/// Consecutive corrupt chunks before the download is abandoned.
const MAX_RETRIES: u32 = 5;
/// Largest chunk size a receiver accepts in an offer.
const MAX_CHUNK: u64 = 64 << 20;

/// How to serve a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Snapshot,
    /// One changeset of at most this many changes.
    Single(u32),
    Batches,
}

/// What a peer missing `missing` of our `head` changes gets. A snapshot
/// holds the whole database, so it is chosen only when the peer misses
/// most of it (a fresh peer, or one far behind), never for a bulk write
/// into a large library.
pub fn plan(
    strategy: Strategy,
    missing: u64,
    head: u64,
    single_max: u64,
    snapshot_min: u64,
) -> Plan {
    let far_behind = missing >= snapshot_min && missing.saturating_mul(2) >= head;
    match strategy {
        _ if missing == 0 || (missing <= single_max && strategy != Strategy::Snapshot) => {
            Plan::Single(missing.clamp(1, u64::from(u32::MAX)) as u32)
        }
        Strategy::Snapshot if missing > 0 => Plan::Snapshot,
        Strategy::Auto if far_behind => Plan::Snapshot,
        _ => Plan::Batches,
    }
}

/// A snapshot being sent: chunks come out of a task that reads and
/// compresses them ahead of the socket.
pub struct Upload {
    rx: mpsc::Receiver<Result<Chunk, SnapError>>,
    id: String,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next chunk to send, or never when nothing is being sent. `None`
/// means the upload is over.
pub async fn next_chunk(u: &mut Option<Upload>) -> Option<Result<Chunk, SnapError>> {
    match u {
        Some(u) => u.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A snapshot being received.
pub struct Download {
    inc: Option<Incoming>,
    progress: Progress,
    retries: u32,
    started: Instant,
}

/// Test hook: `LSYNC_TEST_CORRUPT_CHUNK=N` corrupts the N-th chunk (from 0)
/// the first time this process sends it, to exercise the receiver's checks.
fn corrupt_once(index: u64) -> bool {
    static DONE: AtomicBool = AtomicBool::new(false);
    let wanted = std::env::var("LSYNC_TEST_CORRUPT_CHUNK")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    wanted == Some(index) && !DONE.swap(true, Ordering::SeqCst)
}

/// Test hook: `LSYNC_TEST_CHUNK_DELAY_MS` slows an upload down, so that
/// tests can interrupt a transfer in the middle.
fn test_chunk_delay() -> Option<std::time::Duration> {
    std::env::var("LSYNC_TEST_CHUNK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
}

/// How importing a complete download ended.
enum Import {
    Restored(store::Restored),
    /// The file does not match its checksum.
    BadFile,
    /// `lsync_restore` (or reading the file) failed.
    Failed(String),
}

fn snap_err(e: SnapError) -> SessionError {
    SessionError::Store(e.into())
}

impl<W: AsyncWrite + Unpin> Session<W> {
    /// Decides how to serve a pull from `since`, and logs the choice.
    pub(crate) async fn choose(&mut self, since: i64) -> R<Plan> {
        let peer = self.peer.clone();
        let (head, missing) = blocking(&self.conn, move |c| store::behind(c, since, &peer)).await?;
        let missing = missing.max(0) as u64;
        let n = &self.node;
        let head = head.max(0) as u64;
        let mut p = plan(n.strategy, missing, head, n.single_max, n.snapshot_min);
        if p == Plan::Snapshot && self.snapshot_offered.is_some_and(|at| since <= at) {
            // It pulls again from where it was offered a snapshot: it could
            // not use it (its restore failed, or the file was damaged).
            // Another offer would fail the same way.
            warn!(
                since,
                "the peer did not move past the snapshot offered to it: sending changesets instead"
            );
            p = plan(Strategy::Batch, missing, head, n.single_max, n.snapshot_min);
        }
        if missing > 0 {
            let how = match p {
                Plan::Snapshot => "a snapshot",
                Plan::Single(_) => "a single changeset",
                Plan::Batches => "a stream of batched changesets",
            };
            info!(since, head, missing, strategy = ?n.strategy, "the peer is behind: sending {how}");
        }
        Ok(p)
    }

    /// Offers the peer pulling from `since` a snapshot. Returns false, and
    /// offers nothing, when no snapshot would be ahead of `since`.
    pub(crate) async fn offer_snapshot(&mut self, since: i64) -> R<bool> {
        let db = self.node.db_path.clone();
        let started = Instant::now();
        let conn = self.conn.clone();
        let (meta, made) = self
            .keep_alive(async move {
                blocking(&conn, move |c| {
                    Ok(Outgoing::new(&db)?.get_or_make(c, since)?)
                })
                .await
            })
            .await?;
        if meta.cursor <= since {
            warn!(
                since,
                cursor = meta.cursor,
                "a new snapshot is not ahead of the peer: sending changesets instead"
            );
            return Ok(false);
        }
        info!(
            id = %meta.id,
            bytes = meta.size,
            rows = meta.rows,
            cursor = meta.cursor,
            seconds = started.elapsed().as_secs_f64(),
            reused = !made,
            "offering a snapshot"
        );
        let offer = Msg::SnapshotOffer {
            id: meta.id,
            size: meta.size,
            chunk_size: meta.chunk_size,
            checksum: meta.checksum,
            cursor: meta.cursor,
            rows: meta.rows,
        };
        self.tx.send(&offer, &[]).await?;
        self.snapshot_offered = Some(since);
        Ok(true)
    }

    /// Starts (or restarts, from `offset`) sending snapshot `id`.
    pub(crate) async fn start_upload(&mut self, id: String, offset: u64) -> R<()> {
        self.upload = None;
        let db = self.node.db_path.clone();
        let out = Outgoing::new(&db).map_err(snap_err)?;
        let Some(meta) = out.find(&id) else {
            info!(%id, "the peer asked for a snapshot this side no longer has");
            return Ok(self.tx.send(&Msg::SnapshotMissing { id }, &[]).await?);
        };
        if !offset.is_multiple_of(meta.chunk_size.max(1)) || offset > meta.size {
            return Err(SessionError::Refused(format!(
                "snapshot offset {offset} is not a chunk boundary of {id}"
            )));
        }
        if offset > 0 {
            info!(%id, offset, "resuming a snapshot upload");
        }
        let (tx, rx) = mpsc::channel(AHEAD);
        let (out, meta) = (Arc::new(out), Arc::new(meta));
        let task = tokio::spawn(async move {
            let step = meta.chunk_size.max(1) as usize;
            let mut chunks = futures::stream::iter((offset..meta.size).step_by(step))
                .map(|off| {
                    let (out, meta) = (out.clone(), meta.clone());
                    let corrupt = corrupt_once(off / meta.chunk_size.max(1));
                    tokio::task::spawn_blocking(move || out.chunk(&meta, off, corrupt))
                })
                .buffered(AHEAD);
            let delay = test_chunk_delay();
            while let Some(r) = chunks.next().await {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let r = r.unwrap_or_else(|e| {
                    Err(SnapError::Corrupt {
                        offset: 0,
                        why: format!("compressing task failed: {e}"),
                    })
                });
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        self.upload = Some(Upload {
            rx,
            id,
            task,
            started: Instant::now(),
        });
        Ok(())
    }

    pub(crate) async fn send_chunk(&mut self, c: Option<Result<Chunk, SnapError>>) -> R<()> {
        let Some(c) = c else {
            if let Some(u) = self.upload.take() {
                info!(id = %u.id, seconds = u.started.elapsed().as_secs_f64(), "snapshot sent");
            }
            return Ok(());
        };
        let c = c.map_err(snap_err)?;
        let id = self
            .upload
            .as_ref()
            .map(|u| u.id.clone())
            .unwrap_or_default();
        let msg = Msg::SnapshotChunk {
            id,
            offset: c.offset,
            len: c.len,
            checksum: c.checksum,
        };
        self.tx.send(&msg, &c.data).await?;
        Ok(())
    }

    pub(crate) async fn start_download(&mut self, meta: Meta) -> R<()> {
        self.pulling = false;
        if meta.chunk_size == 0 || meta.chunk_size > MAX_CHUNK || meta.size == 0 {
            return Err(SessionError::Refused(format!(
                "bad snapshot offer: {} bytes in chunks of {}",
                meta.size, meta.chunk_size
            )));
        }
        info!(
            id = %meta.id,
            bytes = meta.size,
            rows = meta.rows,
            cursor = meta.cursor,
            "receiving a snapshot"
        );
        let (db, peer) = (self.node.db_path.clone(), self.peer.clone());
        let id = meta.id.clone();
        let inc = tokio::task::spawn_blocking(move || Incoming::begin(&db, &peer, meta))
            .await
            .map_err(|e| SessionError::Internal(e.to_string()))?
            .map_err(snap_err)?;
        self.download = Some(self.new_download(inc));
        self.tx
            .send(&Msg::SnapshotGet { id, offset: 0 }, &[])
            .await?;
        Ok(())
    }

    fn new_download(&self, inc: Incoming) -> Download {
        let mut progress = Progress::new(
            &self.node.db_path,
            &self.peer,
            "snapshot",
            inc.meta.rows.max(0) as u64,
            inc.meta.size,
        );
        progress.advance_bytes(inc.offset);
        Download {
            inc: Some(inc),
            progress,
            retries: 0,
            started: Instant::now(),
        }
    }

    /// At the start of a session: resumes a snapshot download from this
    /// peer that a restart interrupted. Returns whether one was resumed.
    pub(crate) async fn resume_download(&mut self) -> R<bool> {
        let (db, peer) = (self.node.db_path.clone(), self.peer.clone());
        let inc = tokio::task::spawn_blocking(move || Incoming::resume(&db, &peer))
            .await
            .map_err(|e| SessionError::Internal(e.to_string()))?
            .map_err(snap_err)?;
        let Some(inc) = inc else { return Ok(false) };
        if inc.meta.cursor <= self.recv_cursor {
            // Imported already (the crash came after the import).
            inc.discard();
            return Ok(false);
        }
        info!(
            id = %inc.meta.id,
            offset = inc.offset,
            bytes = inc.meta.size,
            "resuming an interrupted snapshot download"
        );
        let (id, offset, done) = (inc.meta.id.clone(), inc.offset, inc.complete());
        self.download = Some(self.new_download(inc));
        if done {
            self.finish_download().await?;
        } else {
            self.tx.send(&Msg::SnapshotGet { id, offset }, &[]).await?;
        }
        Ok(true)
    }

    pub(crate) async fn receive_chunk(
        &mut self,
        id: &str,
        offset: u64,
        len: u64,
        checksum: String,
        data: Vec<u8>,
    ) -> R<()> {
        let Some(d) = self.download.as_mut() else {
            return Ok(());
        };
        let Some(mut inc) = d.inc.take() else {
            return Ok(());
        };
        if inc.meta.id != id {
            d.inc = Some(inc);
            return Ok(());
        }
        let (inc, written) = tokio::task::spawn_blocking(move || {
            let r = inc.write(offset, len, &checksum, &data);
            (inc, r)
        })
        .await
        .map_err(|e| SessionError::Internal(e.to_string()))?;
        let (next, complete) = (inc.offset, inc.complete());
        d.inc = Some(inc);
        match written {
            Ok(true) => {
                d.retries = 0;
                d.progress.advance_bytes(len);
                if complete {
                    self.finish_download().await?;
                }
            }
            Ok(false) => debug!(offset, "ignored a chunk sent before our last request"),
            Err(e @ SnapError::Corrupt { .. }) => {
                d.retries += 1;
                if d.retries > MAX_RETRIES {
                    return Err(snap_err(e));
                }
                warn!("snapshot {e}: asking for it again");
                let id = id.to_owned();
                self.tx
                    .send(&Msg::SnapshotGet { id, offset: next }, &[])
                    .await?;
            }
            Err(e) => return Err(snap_err(e)),
        }
        Ok(())
    }

    /// Checks the whole file, imports it atomically, then catches up with
    /// what changed at the peer since it was made.
    async fn finish_download(&mut self) -> R<()> {
        let Some(mut d) = self.download.take() else {
            return Ok(());
        };
        let Some(mut inc) = d.inc.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let conn = self.conn.clone();
        let (db, peer) = (self.node.db_path.clone(), self.peer.clone());
        let import = async move {
            blocking(&conn, move |c| {
                let (id, cursor) = (inc.meta.id.clone(), inc.meta.cursor);
                let outcome = match inc.verified() {
                    Ok(path) => {
                        let t = Instant::now();
                        let r = store::restore(c, path);
                        debug!(restore_seconds = t.elapsed().as_secs_f64(), "lsync_restore");
                        match r {
                            Ok(r) => Import::Restored(r),
                            Err(e) => Import::Failed(e.to_string()),
                        }
                    }
                    Err(SnapError::BadFile) => Import::BadFile,
                    Err(e) => Import::Failed(e.to_string()),
                };
                // Never resumed nor retried: a failed file would fail again,
                // and the peer's data has moved on since.
                inc.discard();
                match &outcome {
                    Import::Restored(_) => RestoreFailure::clear(&db, &peer),
                    Import::BadFile => {}
                    Import::Failed(error) => {
                        let failure = RestoreFailure {
                            peer: peer.clone(),
                            snapshot: id,
                            cursor,
                            error: error.clone(),
                            at_ms: store::now_ms(),
                        };
                        failure.record(&db)?;
                        let msg = format!("snapshot restore failed: {error}");
                        store::record_error(c, &peer, &msg, false)?;
                    }
                }
                Ok(outcome)
            })
            .await
        };
        let outcome = self.keep_alive(import).await?;
        drop(d.progress);
        let r = match outcome {
            Import::Restored(r) => r,
            Import::BadFile => {
                warn!(
                    "the received snapshot does not match its checksum: discarded, pulling again"
                );
                return self.pull(self.recv_cursor).await;
            }
            Import::Failed(error) => {
                // The peer answers this pull with changesets: it sees that
                // the snapshot did not move our watermark.
                warn!(
                    %error,
                    "the snapshot could not be restored: discarded, catching up by changesets instead"
                );
                return self.pull(self.recv_cursor).await;
            }
        };
        info!(
            mode = %r.mode,
            rows = r.rows,
            cursor = r.cursor,
            import_seconds = started.elapsed().as_secs_f64(),
            seconds = d.started.elapsed().as_secs_f64(),
            "snapshot imported"
        );
        self.recv_cursor = self.recv_cursor.max(r.cursor);
        self.applied_total += r.rows;
        self.tx.send(&Msg::Ack { cursor: r.cursor }, &[]).await?;
        self.pull(self.recv_cursor).await
    }

    pub(crate) async fn snapshot_missing(&mut self, id: &str) -> R<()> {
        let ours = self
            .download
            .as_ref()
            .and_then(|d| d.inc.as_ref())
            .is_some_and(|i| i.meta.id == id);
        if ours {
            if let Some(inc) = self.download.take().and_then(|mut d| d.inc.take()) {
                inc.discard();
            }
            info!("the peer no longer has the snapshot: pulling again");
            self.pull(self.recv_cursor).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_follows_what_the_peer_misses() {
        let p = |s, missing, head| plan(s, missing, head, 5_000, 100_000);
        assert_eq!(p(Strategy::Auto, 10, 1_000_000), Plan::Single(10));
        assert_eq!(p(Strategy::Auto, 0, 1_000_000), Plan::Single(1));
        assert_eq!(p(Strategy::Auto, 50_000, 1_000_000), Plan::Batches);
        // A bulk write into a large library streams; a fresh peer gets a snapshot.
        assert_eq!(p(Strategy::Auto, 200_000, 1_000_000), Plan::Batches);
        assert_eq!(p(Strategy::Auto, 1_000_000, 1_000_000), Plan::Snapshot);
        assert_eq!(p(Strategy::Auto, 600_000, 1_000_000), Plan::Snapshot);
        assert_eq!(p(Strategy::Batch, 1_000_000, 1_000_000), Plan::Batches);
        assert_eq!(p(Strategy::Snapshot, 10, 1_000_000), Plan::Snapshot);
        assert_eq!(p(Strategy::Snapshot, 0, 1_000_000), Plan::Single(1));
    }
}
