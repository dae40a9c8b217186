//! One session with one peer: handshake, then pull the peer's changes from
//! our persisted watermark while serving its pulls and pushing our new
//! commits. Both sides run this same session.
//!
//! - `handshake`: the hellos, before anything else;
//! - `state`: what the session is receiving and what it is sending;
//! - `changesets`: pulls, pushes and applies;
//! - `plan`: how to serve a peer that is behind;
//! - `held`: a peer whose clock is ahead is held, not failed;
//! - `snapshots`, `upload`, `download`: snapshot transfers;
//! - `error`: how a session fails, and running database work off the async
//!   threads.

mod changesets;
mod download;
mod error;
mod handshake;
mod held;
mod members;
mod owed;
mod plan;
mod shared;
mod snapshots;
mod state;
mod upload;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::Connection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use crate::courtesy::Courtesy;
use crate::protocol::{self, Msg, ProtoError};
use crate::snapshot::Meta;
use crate::store;

pub use error::SessionError;
pub use shared::Node;

use changesets::Prefetch;
use error::{blocking, R};
use held::Holding;
use owed::Owed;
use state::{Receiving, Sending};
use upload::Upload;

/// Consecutive failed catch-ups from a peer before a full resync from it.
const ESCALATE_AFTER: i64 = 5;

/// A session after the hellos matched.
struct Session<W> {
    node: Arc<Node>,
    conn: Arc<Mutex<Connection>>,
    tx: protocol::Sender<W>,
    /// The peer's device id.
    peer: String,
    /// The peer's newest cursor, as of its hello.
    peer_head: i64,
    /// The peer's cursor we have applied up to (recorded by `lsync_peer_received`).
    recv_cursor: i64,
    /// Our cursor we have sent the peer up to.
    sent_cursor: i64,
    receiving: Receiving,
    sending: Sending,
    /// A snapshot we are sending. It runs beside `sending`: the peer may
    /// pull changesets while the last chunks are on their way.
    upload: Option<Upload>,
    /// The next batch of a stream we are sending.
    prefetched: Option<Prefetch>,
    /// The cursor the peer pulled from when we last offered it a snapshot.
    snapshot_offered: Option<i64>,
    /// This session has caught up with the peer once: failing before that
    /// counts as a failed catch-up.
    caught_up_once: bool,
    applied_total: i64,
    started: Instant,
    last_ack: tokio::time::Instant,
    /// An ack and a cursor-only push held back for a moment.
    owed: Owed,
    /// `PRAGMA data_version` on our connection when we last looked for
    /// commits to push: it moves with other connections' commits only.
    seen_version: Option<i64>,
    /// When the last "the peer is behind" line was logged at info: a peer
    /// that floods pulls must not flood the log.
    plan_logged: Option<Instant>,
    /// Bytes received over this session.
    wire_bytes: Arc<AtomicU64>,
    /// Whether to leave the write lock to the app between two applies.
    courtesy: Courtesy,
    /// Whether we hold the peer's changes (its clock is ahead), and when
    /// we pull them again.
    holding: Holding,
    /// The member list and the newest secret as last sent to the peer.
    members: Vec<protocol::MemberEntry>,
    secret_sent: Option<(i64, protocol::Secret)>,
    /// The highest cursor of ours sent to the peer in this session: its
    /// acks are capped there.
    sent_max: i64,
}

/// Runs a whole session over an established connection. Returns when the
/// peer disconnects, on error, or on shutdown.
pub async fn run<S>(
    node: Arc<Node>,
    io: S,
    initiator: bool,
    addr: String,
    attempt: usize,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (opened, peer) = handshake::hello(&node, io, initiator, attempt).await?;
    let span = tracing::info_span!("peer", device = %short(&peer.device_id), addr = %addr);
    established(node, opened, peer, addr).instrument(span).await
}

/// The part of a session after the hellos matched, inside the peer's span.
async fn established<W, Rd>(
    node: Arc<Node>,
    opened: handshake::Opened<W, Rd>,
    peer: handshake::Peer,
    addr: String,
) -> R<()>
where
    W: AsyncWrite + Unpin + Send + 'static,
    Rd: AsyncRead + Unpin + Send + 'static,
{
    let handshake::Opened { conn, tx, mut rx } = opened;
    let handshake::Peer {
        device_id,
        head: peer_head,
    } = peer;
    let (peer, a) = (device_id.clone(), addr.clone());
    let (hello, version) = blocking(&conn, move |c| {
        let hello = store::peer_hello(c, &peer, &a, ESCALATE_AFTER)?;
        Ok((hello, store::data_version(c)?))
    })
    .await?;
    let recv_cursor = hello.recv_cursor;
    if hello.escalated {
        warn!(
            "{ESCALATE_AFTER} consecutive failed catch-ups: escalating to a full resync from this peer"
        );
    }
    if let Some(e) = &hello.not_escalated {
        warn!("{ESCALATE_AFTER} consecutive failed catch-ups, but not escalating again: a full resync from this peer already ended with: {e}");
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
    let open = crate::metrics::OpenSession::new(&device_id);
    let wire_bytes = rx.wire_bytes.clone();
    let mut tx = tx;
    let (members, secret_sent) = members::send_all(&node, &conn, &mut tx).await?;

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

    let backoff = node.cfg.backoff();
    let mut s = Session {
        node,
        conn,
        tx,
        peer: device_id,
        peer_head,
        recv_cursor,
        sent_cursor: 0,
        receiving: Receiving::Idle,
        sending: Sending::Idle,
        upload: None,
        prefetched: None,
        snapshot_offered: None,
        caught_up_once: false,
        applied_total: 0,
        started: Instant::now(),
        // The first ack goes at once.
        last_ack: tokio::time::Instant::now()
            .checked_sub(owed::LATER)
            .unwrap_or_else(tokio::time::Instant::now),
        owed: Owed::default(),
        seen_version: None,
        plan_logged: None,
        wire_bytes,
        courtesy: Courtesy::new(version),
        holding: Holding::new(backoff),
        members,
        secret_sent,
        sent_max: 0,
    };
    let result = s.serve(&mut in_rx).await;
    reader.abort();
    if let Err(e) = &result {
        open.failed();
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
        // A session that got as far as a hold is no failed catch-up: a
        // resync would be held the same way.
        let failed = !s.caught_up_once && !s.holding.is_held();
        let (peer, msg) = (s.peer.clone(), e.to_string());
        let failure = e.failure();
        let m = msg.clone();
        let stuck = blocking(&s.conn, move |c| {
            store::record_failure(c, &peer, &m, failure, failed)
        })
        .await;
        if let Ok(true) = stuck {
            // Retrying goes on (the user may fix the cause); escalating stops.
            warn!("not escalating: a resync would fail again: {msg}");
        }
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
        let heartbeat = self.node.cfg.heartbeat();
        let mut beat = tokio::time::interval(heartbeat);
        let mut last_heard = Instant::now();
        if !self.resume_download().await? {
            self.pull(self.recv_cursor).await?;
        }
        loop {
            let retry = self.holding.retry_at();
            let owed = self.owed.due();
            tokio::select! {
                m = inbox.recv() => {
                    let Some(m) = m else { return Err(ProtoError::Closed.into()) };
                    let (msg, payload) = m?;
                    self.handle(msg, payload).await?;
                    // Handling may take long (an import); what queued up
                    // meanwhile shows the peer is alive.
                    last_heard = Instant::now();
                }
                c = upload::next_chunk(&mut self.upload) => match c {
                    Some(c) => {
                        let (msg, data) = c?;
                        self.tx.send(&msg, &data).await?;
                        crate::metrics::bytes_sent(&self.peer, data.len() as u64);
                    }
                    None => {
                        if let Some(u) = self.upload.take() {
                            u.finished();
                        }
                    }
                },
                r = changed.changed() => {
                    if r.is_err() { return Ok(()); }
                    self.after_commit().await?;
                }
                _ = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)),
                    if retry.is_some() => self.retry_held().await?,
                _ = tokio::time::sleep_until(owed.unwrap_or_else(tokio::time::Instant::now)),
                    if owed.is_some() => self.pay_owed().await?,
                _ = beat.tick() => {
                    let silent = last_heard.elapsed();
                    if silent > heartbeat * 4 {
                        return Err(SessionError::Silent(silent));
                    }
                    self.tx.send(&Msg::Heartbeat, &[]).await?;
                }
                _ = shutdown.changed() => {
                    info!("shutting down the session");
                    let _ = self.pay_owed_ack().await;
                    return Ok(());
                }
            }
        }
    }

    /// Awaits `work` (long database work) while sending heartbeats, so the
    /// peer does not drop a session that is busy importing or exporting.
    async fn keep_alive<T>(&mut self, work: impl Future<Output = R<T>>) -> R<T> {
        tokio::pin!(work);
        let mut beat = tokio::time::interval(self.node.cfg.heartbeat());
        beat.tick().await;
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = beat.tick() => self.tx.send(&Msg::Heartbeat, &[]).await?,
            }
        }
    }

    async fn handle(&mut self, msg: Msg, payload: Vec<u8>) -> R<()> {
        // Our own commits wake this session too, and it does not look at
        // them (see `after_commit`), except after the rare messages whose
        // writes may call for it: members merged, a secret, a snapshot.
        if !matches!(
            msg,
            Msg::Pull { .. }
                | Msg::Changes { .. }
                | Msg::Ack { .. }
                | Msg::Notify { .. }
                | Msg::Heartbeat
        ) {
            self.seen_version = None;
        }
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
                self.holding.peer_acked();
                // A peer holds at most what this session sent it (or what
                // it had acked before): it cannot claim more.
                let cursor = cursor.min(self.sent_max);
                let peer = self.peer.clone();
                let pruned = blocking(&self.conn, move |c| store::ack(c, &peer, cursor)).await?;
                if pruned > 0 {
                    debug!(pruned, "pruned tombstones every peer has acknowledged");
                }
            }
            Msg::Notify { head } => {
                debug!(head, "the peer notified a bulk write");
                if head > self.recv_cursor && self.receiving.is_idle() && !self.holding.is_held() {
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
                let meta = Meta {
                    id,
                    size,
                    chunk_size,
                    checksum,
                    cursor,
                    rows,
                    created_ms: crate::now::now_ms(),
                };
                self.accept_offer(meta).await?
            }
            Msg::SnapshotGet { id, offset } => self.upload_from(id, offset).await?,
            Msg::SnapshotChunk {
                id,
                offset,
                len,
                checksum,
            } => {
                self.receive_chunk(id, offset, len, checksum, payload)
                    .await?
            }
            Msg::SnapshotMissing { id } => self.snapshot_missing(&id).await?,
            Msg::Held { ahead_ms, until_ms } => {
                self.held_by_peer(crate::held::Hold { ahead_ms, until_ms })
                    .await?
            }
            Msg::Members { members } => self.receive_members(members).await?,
            Msg::Secret { epoch, secret } => self.receive_secret(epoch, &secret).await?,
            Msg::Heartbeat => {}
            Msg::Error { message } => return Err(SessionError::Remote(message)),
            Msg::Hello { .. } | Msg::Join => {
                return Err(SessionError::Refused("unexpected second hello".into()))
            }
        }
        Ok(())
    }
}
