//! The session's side of snapshot transfers: offering one to a peer far
//! behind, and driving an [`Upload`] or a [`Download`] with the messages
//! that concern them.

use std::path::PathBuf;
use std::time::Instant;

use lsync_wire::report::RestoreMode;
use tokio::io::AsyncWrite;
use tracing::{info, warn};

use crate::protocol::Msg;
use crate::snapshot::{Meta, Outgoing};

use super::download::{Download, Import, Next};
use super::error::{blocking, R};
use super::upload::Upload;
use super::Session;

impl<W: AsyncWrite + Unpin> Session<W> {
    /// Offers the peer pulling from `since` a snapshot. Returns false, and
    /// offers nothing, when no snapshot would be ahead of `since`.
    pub(super) async fn offer_snapshot(&mut self, since: i64) -> R<bool> {
        let db = self.node.cfg.db.clone();
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
        self.sent_max = self.sent_max.max(meta.cursor);
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

    /// The peer asks for snapshot `id` from `offset`: (re)starts the upload.
    pub(super) async fn upload_from(&mut self, id: String, offset: u64) -> R<()> {
        self.upload = None;
        let cfg = &self.node.cfg;
        self.upload = Upload::start(&cfg.db, &id, offset, &cfg.test)?;
        if self.upload.is_none() {
            info!(%id, "the peer asked for a snapshot this side no longer has");
            self.tx.send(&Msg::SnapshotMissing { id }, &[]).await?;
        }
        Ok(())
    }

    /// The peer offers a snapshot in answer to our pull.
    pub(super) async fn accept_offer(&mut self, meta: Meta) -> R<()> {
        let id = meta.id.clone();
        let d = Download::begin(&self.node.cfg.db, &self.peer, meta).await?;
        self.receiving.download_started(d);
        self.tx
            .send(&Msg::SnapshotGet { id, offset: 0 }, &[])
            .await?;
        Ok(())
    }

    /// At the start of a session: resumes a snapshot download from this
    /// peer that a restart interrupted. Returns whether one was resumed.
    pub(super) async fn resume_download(&mut self) -> R<bool> {
        let d = Download::resume(&self.node.cfg.db, &self.peer, self.recv_cursor).await?;
        let Some(d) = d else { return Ok(false) };
        let (id, offset, done) = (
            d.id().unwrap_or_default().to_owned(),
            d.offset(),
            d.complete(),
        );
        self.receiving.download_started(d);
        if done {
            self.finish_download().await?;
        } else {
            self.tx.send(&Msg::SnapshotGet { id, offset }, &[]).await?;
        }
        Ok(true)
    }

    pub(super) async fn receive_chunk(
        &mut self,
        id: String,
        offset: u64,
        len: u64,
        checksum: String,
        data: Vec<u8>,
    ) -> R<()> {
        crate::metrics::bytes_received(&self.peer, data.len() as u64);
        let Some(d) = self.receiving.download() else {
            return Ok(());
        };
        match d.write(&id, offset, len, checksum, data).await? {
            Next::Wait => {}
            Next::Import => self.finish_download().await?,
            Next::AskFrom(offset) => {
                self.tx.send(&Msg::SnapshotGet { id, offset }, &[]).await?;
            }
        }
        Ok(())
    }

    /// Imports a complete download, then catches up with what changed at
    /// the peer since the snapshot was made.
    async fn finish_download(&mut self) -> R<()> {
        let Some(d) = self.receiving.download_ended() else {
            return Ok(());
        };
        let started = Instant::now();
        let import = d.import(
            self.conn.clone(),
            self.node.cfg.db.clone(),
            self.peer.clone(),
        );
        let Some((outcome, began)) = self.keep_alive(import).await? else {
            return Ok(());
        };
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
            seconds = began.elapsed().as_secs_f64(),
            "snapshot imported"
        );
        if r.mode == RestoreMode::Empty {
            checkpoint_soon(self.node.cfg.db.clone());
        }
        self.recv_cursor = self.recv_cursor.max(r.cursor);
        self.applied_total += r.rows;
        self.tx.send(&Msg::Ack { cursor: r.cursor }, &[]).await?;
        self.pull(self.recv_cursor).await
    }

    /// The peer no longer has the snapshot we are downloading.
    pub(super) async fn snapshot_missing(&mut self, id: &str) -> R<()> {
        let ours = self
            .receiving
            .download()
            .is_some_and(|d| d.id() == Some(id));
        if ours {
            if let Some(d) = self.receiving.download_ended() {
                d.discard();
            }
            info!("the peer no longer has the snapshot: pulling again");
            self.pull(self.recv_cursor).await?;
        }
        Ok(())
    }
}

/// Copies an import into an empty library from the WAL into the database
/// file, in the background: `lsync_restore` made it durable in the WAL and
/// left this to a later checkpoint, which would otherwise fall on the next
/// commit past `wal_autocheckpoint` (the catch-up's, most likely) and hold
/// it up.
fn checkpoint_soon(db: PathBuf) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        match crate::store::checkpoint(&db) {
            Ok((busy, frames, copied)) => info!(
                busy,
                frames,
                copied,
                seconds = started.elapsed().as_secs_f64(),
                "checkpointed the import"
            ),
            Err(error) => {
                warn!(%error, "checkpointing the import failed; a later checkpoint copies it")
            }
        }
    });
}
