//! Sending a snapshot: chunks come out of a task that reads and compresses
//! them ahead of the socket, and a request from any chunk boundary restarts
//! it there (how an interrupted transfer resumes).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::info;

use crate::config::TestHooks;
use crate::protocol::Msg;
use crate::snapshot::{Chunk, Outgoing, SnapError};

use super::error::{SessionError, R};

/// Chunks compressed ahead of the socket (they compress in parallel).
const AHEAD: usize = 2;

/// A snapshot being sent.
pub(crate) struct Upload {
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

impl Upload {
    /// Starts (or restarts, from `offset`) sending snapshot `id` of the
    /// database `db`. `None` when this side no longer has it.
    pub fn start(db: &Path, id: &str, offset: u64, hooks: &TestHooks) -> R<Option<Upload>> {
        let out = Outgoing::new(db)?;
        let Some(meta) = out.find(id) else {
            return Ok(None);
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
        let (delay, corrupt_chunk) = (hooks.chunk_delay, hooks.corrupt_chunk);
        let task = tokio::spawn(async move {
            let step = meta.chunk_size.max(1) as usize;
            let mut chunks = futures::stream::iter((offset..meta.size).step_by(step))
                .map(|off| {
                    let (out, meta) = (out.clone(), meta.clone());
                    let corrupt = corrupt_once(corrupt_chunk, off / meta.chunk_size.max(1));
                    tokio::task::spawn_blocking(move || out.chunk(&meta, off, corrupt))
                })
                .buffered(AHEAD);
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
        Ok(Some(Upload {
            rx,
            id: id.to_owned(),
            task,
            started: Instant::now(),
        }))
    }

    /// The next chunk's message and data; `None` when all are sent.
    async fn next(&mut self) -> Option<R<(Msg, Vec<u8>)>> {
        let c = match self.rx.recv().await? {
            Ok(c) => c,
            Err(e) => return Some(Err(e.into())),
        };
        let msg = Msg::SnapshotChunk {
            id: self.id.clone(),
            offset: c.offset,
            len: c.len,
            checksum: c.checksum,
        };
        Some(Ok((msg, c.data)))
    }

    /// Logs the end of a complete upload.
    pub fn finished(self) {
        info!(id = %self.id, seconds = self.started.elapsed().as_secs_f64(), "snapshot sent");
    }
}

/// The next chunk to send, or never when nothing is being sent. `None`
/// means the upload is over.
pub(crate) async fn next_chunk(u: &mut Option<Upload>) -> Option<R<(Msg, Vec<u8>)>> {
    match u {
        Some(u) => u.next().await,
        None => std::future::pending().await,
    }
}

/// Test hook (`--test-corrupt-chunk N`): corrupts the N-th chunk (from 0)
/// the first time this process sends it, to exercise the receiver's checks.
fn corrupt_once(wanted: Option<u64>, index: u64) -> bool {
    static DONE: AtomicBool = AtomicBool::new(false);
    wanted == Some(index) && !DONE.swap(true, Ordering::SeqCst)
}
