//! Receiving a snapshot: chunks are checked and written to a file that
//! survives a restart, then the whole file is checked and imported at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::Connection;
use tracing::{debug, info, warn};

use crate::progress::Progress;
use crate::snapshot::{Incoming, Meta, RestoreFailure, SnapError};
use crate::store;

use super::error::{blocking, off_thread, SessionError, R};

/// Consecutive corrupt chunks before the download is abandoned.
const MAX_RETRIES: u32 = 5;
/// Largest chunk size a receiver accepts in an offer.
const MAX_CHUNK: u64 = 64 << 20;

/// A snapshot being received from one peer.
pub(crate) struct Download {
    /// Out only while a chunk is written off the async threads.
    inc: Option<Incoming>,
    progress: Progress,
    retries: u32,
    started: Instant,
}

/// What to do after a chunk arrived.
pub(crate) enum Next {
    /// Wait for the next chunk.
    Wait,
    /// Every chunk is in: import the file.
    Import,
    /// Ask for the chunks again from this offset (one was damaged).
    AskFrom(u64),
}

/// How importing a complete download ended.
pub(crate) enum Import {
    Restored(Box<lsync_wire::report::RestoreReport>),
    /// The file does not match its checksum.
    BadFile,
    /// `lsync_restore` (or reading the file) failed.
    Failed(String),
}

impl Download {
    /// Begins receiving the snapshot the peer offered.
    pub async fn begin(db: &Path, peer: &str, meta: Meta) -> R<Download> {
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
        let (dir, p) = (db.to_owned(), peer.to_owned());
        let inc = off_thread(move || Incoming::begin(&dir, &p, meta)).await??;
        Ok(Self::of(db, peer, inc))
    }

    /// A download from `peer` that a restart interrupted, unless it was
    /// imported already (`recv_cursor` is past it).
    pub async fn resume(db: &Path, peer: &str, recv_cursor: i64) -> R<Option<Download>> {
        let (dir, p) = (db.to_owned(), peer.to_owned());
        let Some(inc) = off_thread(move || Incoming::resume(&dir, &p)).await?? else {
            return Ok(None);
        };
        if inc.meta.cursor <= recv_cursor {
            // Imported already (the crash came after the import).
            inc.discard();
            return Ok(None);
        }
        info!(
            id = %inc.meta.id,
            offset = inc.offset,
            bytes = inc.meta.size,
            "resuming an interrupted snapshot download"
        );
        Ok(Some(Self::of(db, peer, inc)))
    }

    fn of(db: &Path, peer: &str, inc: Incoming) -> Download {
        let mut progress = Progress::new(
            db,
            peer,
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

    pub fn id(&self) -> Option<&str> {
        self.inc.as_ref().map(|i| i.meta.id.as_str())
    }

    /// Where to ask the peer to go on from.
    pub fn offset(&self) -> u64 {
        self.inc.as_ref().map_or(0, |i| i.offset)
    }

    pub fn complete(&self) -> bool {
        self.inc.as_ref().is_some_and(|i| i.complete())
    }

    /// Writes a chunk of snapshot `id` (chunks of another are ignored).
    pub async fn write(
        &mut self,
        id: &str,
        offset: u64,
        len: u64,
        checksum: String,
        data: Vec<u8>,
    ) -> R<Next> {
        let Some(mut inc) = self.inc.take() else {
            return Ok(Next::Wait);
        };
        if inc.meta.id != id {
            self.inc = Some(inc);
            return Ok(Next::Wait);
        }
        let (inc, written) = off_thread(move || {
            let r = inc.write(offset, len, &checksum, &data);
            (inc, r)
        })
        .await?;
        let (next, complete) = (inc.offset, inc.complete());
        self.inc = Some(inc);
        match written {
            Ok(true) => {
                self.retries = 0;
                self.progress.advance_bytes(len);
                Ok(if complete { Next::Import } else { Next::Wait })
            }
            Ok(false) => {
                debug!(offset, "ignored a chunk sent before our last request");
                Ok(Next::Wait)
            }
            Err(e @ SnapError::Corrupt { .. }) => {
                self.retries += 1;
                if self.retries > MAX_RETRIES {
                    return Err(e.into());
                }
                warn!("snapshot {e}: asking for it again");
                Ok(Next::AskFrom(next))
            }
            Err(e @ SnapError::Io { .. }) => {
                // Its files are gone already (`Incoming::write`); closing
                // it frees their space.
                if let Some(inc) = self.inc.take() {
                    inc.discard();
                }
                warn!("snapshot download abandoned, the partial file removed: {e}");
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes what was received (the peer no longer has the snapshot).
    pub fn discard(mut self) {
        if let Some(inc) = self.inc.take() {
            inc.discard();
        }
    }

    /// Checks the whole file and imports it atomically. The file is then
    /// deleted whatever happened: a failed file would fail again, and the
    /// peer's data has moved on since. Also returns when the download began.
    pub async fn import(
        mut self,
        conn: Arc<Mutex<Connection>>,
        db: PathBuf,
        peer: String,
    ) -> R<Option<(Import, Instant)>> {
        let Some(mut inc) = self.inc.take() else {
            return Ok(None);
        };
        let outcome = blocking(&conn, move |c| {
            let (id, cursor) = (inc.meta.id.clone(), inc.meta.cursor);
            let outcome = match inc.verified() {
                Ok(path) => {
                    let t = Instant::now();
                    let r = store::restore(c, path);
                    debug!(restore_seconds = t.elapsed().as_secs_f64(), "lsync_restore");
                    match r {
                        Ok(r) => Import::Restored(Box::new(r)),
                        Err(e) => Import::Failed(e.to_string()),
                    }
                }
                Err(SnapError::BadFile) => Import::BadFile,
                Err(e) => Import::Failed(e.to_string()),
            };
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
                        at_ms: crate::now::now_ms(),
                    };
                    failure.record(&db)?;
                    let msg = format!("snapshot restore failed: {error}");
                    store::record_error(c, &peer, &msg, false)?;
                }
            }
            Ok(outcome)
        })
        .await?;
        Ok(Some((outcome, self.started)))
    }
}
