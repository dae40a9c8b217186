//! One session with one peer: handshake, then pull the peer's changes from
//! our persisted watermark while serving its pulls and pushing our new
//! commits. Both sides run this same state machine.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use crate::bulk;
use crate::courtesy::Courtesy;
use crate::node::Node;
use crate::progress::Progress;
use crate::protocol::{self, Msg, ProtoError, PROTOCOL_VERSION};
use crate::store::{self, Applied, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
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

pub(crate) type R<T> = Result<T, SessionError>;

/// Least time between two acks while a stream of batches goes on.
const ACK_EVERY: Duration = Duration::from_millis(100);

/// Runs blocking database work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> store::R<T> + Send + 'static,
) -> R<T> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = conn
            .lock()
            .map_err(|_| SessionError::Internal("database lock poisoned".into()))?;
        f(&mut c).map_err(SessionError::from)
    })
    .await
    .map_err(|e| SessionError::Internal(e.to_string()))?
}

/// The next batch of a stream, exported ahead of the peer's pull for it.
pub(crate) struct Prefetch {
    since: i64,
    max: u32,
    task: tokio::task::JoinHandle<R<store::Export>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Session state after the handshake.
pub(crate) struct Session<W> {
    pub node: Arc<Node>,
    pub conn: Arc<Mutex<Connection>>,
    pub tx: protocol::Sender<W>,
    pub peer: String,
    /// The peer's newest cursor, as of its hello.
    pub peer_head: i64,
    /// The peer's cursor we have applied up to (persisted in lsync_peers).
    pub recv_cursor: i64,
    /// Our cursor we have sent the peer up to.
    pub sent_cursor: i64,
    /// The peer is caught up with us: push new commits as they happen.
    pub subscribed: bool,
    pub caught_up: bool,
    /// We are answering a run of pulls (a batched stream to the peer).
    pub streaming: bool,
    /// A pull of ours is unanswered.
    pub pulling: bool,
    /// Local commits happened while pulling; push when the pull is done.
    pub push_pending: bool,
    pub applied_total: i64,
    pub started: Instant,
    pub last_ack: Instant,
    /// Bytes received over this session.
    pub wire_bytes: Arc<AtomicU64>,
    /// Progress of a long catch-up from the peer.
    pub catch_up: Option<Progress>,
    /// A snapshot we are sending.
    pub upload: Option<bulk::Upload>,
    /// The next batch of a stream we are sending.
    pub prefetched: Option<Prefetch>,
    /// A snapshot we are receiving.
    pub download: Option<bulk::Download>,
    /// The cursor the peer pulled from when we last offered it a snapshot.
    pub snapshot_offered: Option<i64>,
    /// Whether to leave the write lock to the app between two applies.
    pub courtesy: Courtesy,
}

/// Runs a whole session over an established connection. Returns when the
/// peer disconnects, on error, or on shutdown.
pub async fn run<S>(node: Arc<Node>, io: S, initiator: bool, addr: String) -> R<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = protocol::handshake(io, &node.secret, initiator).await?;
    // Never a session on a file other than the one this sidecar serves.
    node.db_file.check(&node.db_path)?;
    let conn = Arc::new(Mutex::new(store::open_existing(&node.db_path)?));
    let me = blocking(&conn, |c| {
        let id = store::identity(c)?;
        let head = store::head(c)?;
        Ok((id, head))
    })
    .await?;
    let (id, head) = me;
    let hello_with = |library_id: &str| Msg::Hello {
        protocol: PROTOCOL_VERSION,
        library_id: library_id.to_owned(),
        device_id: id.device_id.clone(),
        schema: id.schema.clone(),
        head,
    };
    // A dialer that may join speaks second, so that its hello already
    // carries the library it joins and the first session succeeds.
    let speaks_second = node.join && initiator;
    if !speaks_second {
        tx.send(&hello_with(&id.library_id), &[]).await?;
    }
    let (hello, _) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .map_err(|_| SessionError::Silent(Duration::from_secs(10)))??;
    let Msg::Hello {
        protocol,
        library_id,
        device_id,
        schema,
        head: peer_head,
    } = hello
    else {
        return Err(SessionError::Refused(format!(
            "expected hello, got {hello:?}"
        )));
    };
    let mismatch = if protocol != PROTOCOL_VERSION {
        Some(format!(
            "protocol version {protocol}, this side speaks {PROTOCOL_VERSION}"
        ))
    } else if device_id == id.device_id {
        Some(format!(
            "the peer has this database's own device id {device_id}"
        ))
    } else if schema != id.schema {
        Some(format!(
            "schema mismatch: the peer tracks {schema}, this side tracks {}",
            id.schema
        ))
    } else {
        None
    };
    let mismatch = match (mismatch, library_id == id.library_id) {
        (Some(m), _) => Some(m),
        (None, true) => None,
        (None, false) if node.join => {
            let lib = library_id.clone();
            match blocking(&conn, move |c| store::join_library(c, &lib)).await {
                Ok(()) => {
                    info!(library = %library_id, "joined the peer's library");
                    None
                }
                Err(e) => Some(format!("cannot join library {library_id}: {e}")),
            }
        }
        (None, false) => Some(format!(
            "library mismatch: the peer is in library {library_id}, this side in {} \
             (start a fresh database with --join to join the peer's library)",
            id.library_id
        )),
    };
    if let Some(m) = mismatch {
        let _ = tx.send(&Msg::Error { message: m.clone() }, &[]).await;
        return Err(SessionError::Refused(m));
    }
    if speaks_second {
        // After a join, this database is in the peer's library.
        tx.send(&hello_with(&library_id), &[]).await?;
    }

    let span = tracing::info_span!("peer", device = %short(&device_id), addr = %addr);
    established(node, conn, tx, rx, device_id, addr, peer_head)
        .instrument(span)
        .await
}

/// The part of a session after the hellos matched, inside the peer's span.
async fn established<W, Rd>(
    node: Arc<Node>,
    conn: Arc<Mutex<Connection>>,
    tx: protocol::Sender<W>,
    mut rx: protocol::Receiver<Rd>,
    device_id: String,
    addr: String,
    peer_head: i64,
) -> R<()>
where
    W: AsyncWrite + Unpin + Send + 'static,
    Rd: AsyncRead + Unpin + Send + 'static,
{
    let (peer, a) = (device_id.clone(), addr.clone());
    let escalate = node.escalate_after;
    let (recv_cursor, escalated, version) = blocking(&conn, move |c| {
        let (cursor, escalated) = store::peer_hello(c, &peer, &a, escalate)?;
        Ok((cursor, escalated, store::data_version(c)?))
    })
    .await?;
    if escalated {
        warn!(
            "{escalate} consecutive failed catch-ups: escalating to a full resync from this peer"
        );
    }
    if peer_head < recv_cursor {
        // The same device cannot forget changes it already sent us: this is
        // a copy of its database, or an old backup of it, under its id.
        let m = format!(
            "device {device_id} announces history up to {peer_head}, but this side has \
             already applied its changes up to {recv_cursor}: its database is a copy or an \
             old backup of that device's. Start it from a fresh database that joins \
             (a new device id) instead"
        );
        let mut tx = tx;
        let _ = tx.send(&Msg::Error { message: m.clone() }, &[]).await;
        let (peer, msg) = (device_id.clone(), m.clone());
        let _ = blocking(&conn, move |c| store::record_error(c, &peer, &msg, false)).await;
        return Err(SessionError::Refused(m));
    }
    info!(recv_cursor, peer_head, "session established");
    let wire_bytes = rx.wire_bytes.clone();

    // Frames are read by their own task into a small bounded queue: when we
    // are busy applying, the queue fills, TCP pushes back, the peer waits.
    let (in_tx, mut in_rx) = mpsc::channel::<Result<(Msg, Vec<u8>), ProtoError>>(4);
    let reader = tokio::spawn(async move {
        loop {
            let m = rx.recv().await;
            let end = m.is_err();
            if in_tx.send(m).await.is_err() || end {
                break;
            }
        }
    });

    let mut s = Session {
        node: node.clone(),
        conn,
        tx,
        peer: device_id,
        peer_head,
        recv_cursor,
        sent_cursor: 0,
        subscribed: false,
        caught_up: false,
        streaming: false,
        pulling: false,
        push_pending: false,
        applied_total: 0,
        started: Instant::now(),
        last_ack: Instant::now(),
        wire_bytes,
        catch_up: None,
        upload: None,
        prefetched: None,
        download: None,
        snapshot_offered: None,
        courtesy: Courtesy::new(version),
    };
    let result = s.serve(&mut in_rx).await;
    reader.abort();
    if let Err(e) = &result {
        if !matches!(e, SessionError::Proto(ProtoError::Closed)) {
            let _ =
                s.tx.send(
                    &Msg::Error {
                        message: e.to_string(),
                    },
                    &[],
                )
                .await;
        }
        let (peer, msg, failed) = (s.peer.clone(), e.to_string(), !s.caught_up);
        let _ = blocking(&s.conn, move |c| {
            store::record_error(c, &peer, &msg, failed)
        })
        .await;
    }
    result
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

impl<W: AsyncWrite + Unpin> Session<W> {
    async fn serve(
        &mut self,
        inbox: &mut mpsc::Receiver<Result<(Msg, Vec<u8>), ProtoError>>,
    ) -> R<()> {
        let mut changed: watch::Receiver<u64> = self.node.changed.subscribe();
        let mut shutdown = self.node.shutdown.clone();
        let mut beat = tokio::time::interval(self.node.heartbeat);
        let mut last_heard = Instant::now();
        if !self.resume_download().await? {
            self.pull(self.recv_cursor).await?;
        }
        loop {
            tokio::select! {
                m = inbox.recv() => {
                    let Some(m) = m else { return Err(ProtoError::Closed.into()) };
                    let (msg, payload) = m?;
                    self.handle(msg, payload).await?;
                    // Handling may take long (an import); what queued up
                    // meanwhile shows the peer is alive.
                    last_heard = Instant::now();
                }
                c = bulk::next_chunk(&mut self.upload) => self.send_chunk(c).await?,
                r = changed.changed() => {
                    if r.is_err() { return Ok(()); }
                    // While we pull a stream from this peer, our commits are
                    // mostly its own changes being applied: push once the
                    // stream ends rather than after every batch.
                    if self.pulling {
                        self.push_pending = true;
                    } else if self.subscribed {
                        self.push().await?;
                    }
                }
                _ = beat.tick() => {
                    let silent = last_heard.elapsed();
                    if silent > self.node.heartbeat * 4 {
                        return Err(SessionError::Silent(silent));
                    }
                    self.tx.send(&Msg::Heartbeat, &[]).await?;
                }
                _ = shutdown.changed() => {
                    info!("shutting down the session");
                    return Ok(());
                }
            }
        }
    }

    /// Awaits `work` (long database work) while sending heartbeats, so the
    /// peer does not drop a session that is busy importing or exporting.
    pub(crate) async fn keep_alive<T>(&mut self, work: impl Future<Output = R<T>>) -> R<T> {
        tokio::pin!(work);
        let mut beat = tokio::time::interval(self.node.heartbeat);
        beat.tick().await;
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = beat.tick() => self.tx.send(&Msg::Heartbeat, &[]).await?,
            }
        }
    }

    /// Asks the peer for its changes after `since`.
    pub(crate) async fn pull(&mut self, since: i64) -> R<()> {
        self.pulling = true;
        let max = self.node.batch;
        self.tx.send(&Msg::Pull { since, max }, &[]).await?;
        Ok(())
    }

    async fn handle(&mut self, msg: Msg, payload: Vec<u8>) -> R<()> {
        match msg {
            Msg::Pull { since, max } => self.serve_pull(since, max).await?,
            Msg::Changes {
                from,
                to,
                count,
                has_more,
            } => {
                self.receive_changes(from, to, count, has_more, payload)
                    .await?
            }
            Msg::Ack { cursor } => {
                let peer = self.peer.clone();
                let pruned = blocking(&self.conn, move |c| store::ack(c, &peer, cursor)).await?;
                if pruned > 0 {
                    debug!(pruned, "pruned tombstones every peer has acknowledged");
                }
            }
            Msg::Notify { head } => {
                debug!(head, "the peer notified a bulk write");
                if head > self.recv_cursor && !self.pulling && self.download.is_none() {
                    self.pull(self.recv_cursor).await?;
                }
            }
            Msg::SnapshotOffer {
                id,
                size,
                chunk_size,
                checksum,
                cursor,
                rows,
            } => {
                let meta = crate::snapshot::Meta {
                    id,
                    size,
                    chunk_size,
                    checksum,
                    cursor,
                    rows,
                    created_ms: store::now_ms(),
                };
                self.start_download(meta).await?
            }
            Msg::SnapshotGet { id, offset } => self.start_upload(id, offset).await?,
            Msg::SnapshotChunk {
                id,
                offset,
                len,
                checksum,
            } => {
                self.receive_chunk(&id, offset, len, checksum, payload)
                    .await?
            }
            Msg::SnapshotMissing { id } => self.snapshot_missing(&id).await?,
            Msg::Heartbeat => {}
            Msg::Error { message } => return Err(SessionError::Remote(message)),
            Msg::Hello { .. } => {
                return Err(SessionError::Refused("unexpected second hello".into()))
            }
        }
        Ok(())
    }

    /// Answers a pull: a snapshot for a peer far behind, otherwise one
    /// changeset (a small gap) or the first of a stream of batches.
    async fn serve_pull(&mut self, since: i64, max: u32) -> R<()> {
        let mut max = max.clamp(1, 100_000);
        if !self.streaming {
            match self.choose(since).await? {
                bulk::Plan::Snapshot => {
                    if self.offer_snapshot(since).await? {
                        return Ok(());
                    }
                }
                bulk::Plan::Single(n) => max = n,
                bulk::Plan::Batches => {}
            }
        }
        self.sent_cursor = since;
        let more = self.send_changes(max, true).await?;
        self.streaming = more;
        self.subscribed = !more;
        Ok(())
    }

    async fn receive_changes(
        &mut self,
        from: i64,
        to: i64,
        count: u64,
        has_more: bool,
        payload: Vec<u8>,
    ) -> R<()> {
        if from > self.recv_cursor {
            debug!(
                from,
                have = self.recv_cursor,
                "gap in the change stream: pulling again"
            );
            return self.pull(self.recv_cursor).await;
        }
        if !has_more {
            self.pulling = false;
        }
        // Ask for the next batch before applying this one, so the peer
        // exports while we apply.
        if has_more {
            self.pull(to).await?;
            if self.catch_up.is_none() {
                let total = (self.peer_head - self.recv_cursor).max(0) as u64;
                self.catch_up = Some(Progress::new(
                    &self.node.db_path,
                    &self.peer,
                    "catch-up",
                    total,
                    0,
                ));
            }
        }
        let bytes = payload.len() as u64;
        let report = match self.apply(payload, to, !has_more).await {
            Err(SessionError::Store(e)) if store::is_stale(&e) => {
                // Read before the peer had applied deletes we have pruned
                // since: ask for its current state from our watermark (with a
                // pull already out, its answer shows the gap and re-pulls).
                warn!("the peer sent a changeset read before it had our deletes: pulling again");
                if !has_more {
                    self.pull(self.recv_cursor).await?;
                }
                return Ok(());
            }
            other => other?,
        };
        self.recv_cursor = self.recv_cursor.max(to);
        // During a long stream, one ack per ACK_EVERY is enough: each costs
        // the sender a write transaction. An ack lets the peer prune
        // tombstones, so it is sent only when no batch we exported earlier
        // is still on its way: that batch may predate what we just applied.
        // (Each batch carries its own certificate, read with its changes.)
        if self.prefetched.is_none() && (!has_more || self.last_ack.elapsed() >= ACK_EVERY) {
            self.last_ack = Instant::now();
            self.tx.send(&Msg::Ack { cursor: to }, &[]).await?;
        }
        self.note_applied(count, bytes, &report);
        if !has_more {
            self.catch_up = None;
            if std::mem::take(&mut self.push_pending) && self.subscribed {
                self.push().await?;
            }
            if !self.caught_up {
                self.caught_up = true;
                info!(
                    applied = self.applied_total,
                    seconds = self.started.elapsed().as_secs_f64(),
                    wire_bytes = self.wire_bytes.load(Ordering::Relaxed),
                    "caught up with the peer"
                );
            }
        }
        Ok(())
    }

    /// Sends our changes after `sent_cursor`; returns whether more remain.
    /// A pull is answered even when there is nothing new (`always`); a push
    /// with nothing new sends nothing.
    async fn send_changes(&mut self, max: u32, always: bool) -> R<bool> {
        let since = self.sent_cursor;
        let e = match self.prefetched.take() {
            Some(mut p) if p.since == since && p.max == max => (&mut p.task)
                .await
                .map_err(|e| SessionError::Internal(e.to_string()))??,
            _ => self.export(since, max).await?,
        };
        if e.has_more && always {
            // Export the next batch while this one travels and is applied:
            // the peer's next pull is answered at once.
            let (conn, peer, next) = (self.conn.clone(), self.peer.clone(), e.to);
            self.prefetched = Some(Prefetch {
                since: next,
                max,
                task: tokio::spawn(async move {
                    blocking(&conn, move |c| store::export(c, next, max, &peer)).await
                }),
            });
        }
        if always || e.to != since {
            let msg = Msg::Changes {
                from: e.from,
                to: e.to,
                count: e.count,
                has_more: e.has_more,
            };
            self.tx.send(&msg, &e.blob).await?;
        }
        self.sent_cursor = e.to;
        Ok(e.has_more)
    }

    async fn export(&self, since: i64, max: u32) -> R<store::Export> {
        let peer = self.peer.clone();
        blocking(&self.conn, move |c| store::export(c, since, max, &peer)).await
    }

    /// Pushes commits made since the last send. After a bulk write the peer
    /// only gets a notification and pulls at its own pace; with more pending
    /// than one batch, it pulls the rest.
    async fn push(&mut self) -> R<()> {
        let (since, peer) = (self.sent_cursor, self.peer.clone());
        let (head, pending) = blocking(&self.conn, move |c| store::behind(c, since, &peer)).await?;
        if pending >= self.node.bulk_notify as i64 {
            info!(
                pending,
                "bulk write: notifying the peer, which pulls at its own pace"
            );
            self.tx.send(&Msg::Notify { head }, &[]).await?;
            self.subscribed = false;
            return Ok(());
        }
        let more = self.send_changes(self.node.batch, false).await?;
        self.subscribed = !more;
        Ok(())
    }

    async fn apply(&mut self, blob: Vec<u8>, to: i64, caught_up: bool) -> R<Applied> {
        let pause = self.courtesy.pause();
        if !pause.is_zero() {
            debug!(
                ?pause,
                "other connections are writing: leaving them the write lock"
            );
            tokio::time::sleep(pause).await;
        }
        let peer = self.peer.clone();
        let (report, turn) = blocking(&self.conn, move |c| {
            store::apply(c, &peer, &blob, to, caught_up, None)
        })
        .await?;
        self.courtesy.record(turn);
        Ok(report)
    }

    fn note_applied(&mut self, count: u64, bytes: u64, report: &Applied) {
        let n = count.max(report.changes as u64);
        self.applied_total += n as i64;
        debug!(
            changes = report.changes,
            applied = report.applied,
            resolved = report.resolved,
            deferred = report.deferred,
            "applied a changeset"
        );
        if report.refused > 0 {
            warn!(
                refused = report.refused,
                "changes to rows the sender does not own were refused"
            );
        }
        if let Some(p) = &mut self.catch_up {
            p.advance(n, bytes);
        }
    }
}
