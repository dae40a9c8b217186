//! Changesets both ways: pulling the peer's changes and applying them, and
//! answering its pulls or pushing our new commits to it.

use std::sync::atomic::Ordering;
use tokio::time::Instant;

use tokio::io::AsyncWrite;
use tracing::{debug, info, warn};

use crate::progress::Progress;
use crate::protocol::Msg;
use lsync_wire::report::ApplyReport;

use crate::held;
use crate::store;

use rusqlite::Connection;

use super::error::{blocking, inline, SessionError, R};
use super::members::read_members;
use super::owed::LATER;
use super::plan::Plan;
use super::Session;

/// What became of a changeset from the peer.
enum Applied {
    Report(ApplyReport),
    Held(held::Hold),
}

/// The next batch of a stream, exported ahead of the peer's pull for it.
pub(super) struct Prefetch {
    since: i64,
    max: u32,
    task: tokio::task::JoinHandle<R<store::Export>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<W: AsyncWrite + Unpin> Session<W> {
    /// Asks the peer for its changes after `since`.
    pub(super) async fn pull(&mut self, since: i64) -> R<()> {
        self.receiving.pull_sent();
        let max = self.node.cfg.batch;
        self.tx.send(&Msg::Pull { since, max }, &[]).await?;
        Ok(())
    }

    /// Answers a pull: a snapshot for a peer far behind, otherwise one
    /// changeset (a small gap) or the first of a stream of batches.
    pub(super) async fn serve_pull(&mut self, since: i64, max: u32) -> R<()> {
        let mut max = max.clamp(1, 100_000);
        if !self.sending.is_streaming() {
            match self.choose(since).await? {
                Plan::Snapshot => {
                    if self.offer_snapshot(since).await? {
                        return Ok(());
                    }
                }
                Plan::Single(n) => max = n,
                Plan::Batches => {}
            }
        }
        self.sent_cursor = since;
        let more = self.send_changes(max).await?;
        self.sending.pull_answered(more);
        Ok(())
    }

    pub(super) async fn receive_changes(
        &mut self,
        from: i64,
        to: i64,
        count: u64,
        has_more: bool,
        payload: Vec<u8>,
    ) -> R<()> {
        if from > self.recv_cursor && self.holding.is_held() {
            // Pushed after the changes we hold: those are pulled again when
            // they are acceptable, and these after them.
            debug!(
                from,
                have = self.recv_cursor,
                "held: leaving pushed changes for later"
            );
            return Ok(());
        }
        if from > self.recv_cursor {
            debug!(
                from,
                have = self.recv_cursor,
                "gap in the change stream: pulling again"
            );
            return self.pull(self.recv_cursor).await;
        }
        // Ask for the next batch before applying this one, so the peer
        // exports while we apply.
        if has_more {
            self.pull(to).await?;
            let total = (self.peer_head - self.recv_cursor).max(0) as u64;
            let (db, peer) = (&self.node.cfg.db, &self.peer);
            self.receiving
                .stream_goes_on(|| Progress::new(db, peer, "catch-up", total, 0));
        }
        let bytes = payload.len() as u64;
        let report = match self.apply(payload, to, !has_more).await {
            Ok(Applied::Held(h)) => return self.hold(h).await,
            Ok(Applied::Report(r)) => Ok(r),
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
            Err(e) => Err(e),
        }?;
        self.release();
        // Our own commit wakes us, but we do not look at it (see
        // `after_commit`), unless the apply did more than write the peer's
        // changes (a merge is a change of ours, which the peer needs).
        // Otherwise the changes applied are relayed under our cursor, and
        // the push that moves the peer past them can wait.
        if did_more_than_apply(&report) {
            self.seen_version = None;
        } else if self.sending.is_subscribed() && (count > 0 || report.changes > 0) {
            self.owed.cursor(Instant::now() + LATER);
        }
        self.recv_cursor = self.recv_cursor.max(to);
        // One ack per LATER is enough (see `owed`): each costs the sender a
        // write transaction. An ack lets the peer prune tombstones, so it is
        // sent only when no batch we exported earlier is still on its way:
        // that batch may predate what we just applied. (Each batch carries
        // its own certificate, read with its changes.)
        if self.prefetched.is_none() && (!has_more || self.last_ack.elapsed() >= LATER) {
            self.ack(to).await?;
        }
        self.note_applied(count, bytes, &report);
        if !has_more {
            self.receiving.stream_ended();
            if self.sending.take_owed_push() {
                self.push().await?;
            }
            if !self.caught_up_once {
                self.caught_up_once = true;
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

    /// Answers a pull with our changes after `sent_cursor`, even when there
    /// is nothing new; returns whether more remain.
    async fn send_changes(&mut self, max: u32) -> R<bool> {
        let since = self.sent_cursor;
        let e = match self.prefetched.take() {
            Some(mut p) if p.since == since && p.max == max => (&mut p.task)
                .await
                .map_err(|e| SessionError::Internal(e.to_string()))??,
            _ => self.export(since, max).await?,
        };
        if e.has_more {
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
        self.send_export(e, true).await
    }

    /// Sends `e`, our changes after `sent_cursor`, unless it is empty and
    /// not `always` (a push with nothing new sends nothing); returns
    /// whether more remain.
    async fn send_export(&mut self, e: store::Export, always: bool) -> R<bool> {
        let since = self.sent_cursor;
        if always || e.to != since {
            let msg = Msg::Changes {
                from: e.from,
                to: self.node.cfg.test.claim_to.unwrap_or(e.to),
                count: e.count,
                has_more: e.has_more,
            };
            match self.node.cfg.test.junk_changes_mib {
                Some(mib) => self.tx.send(&msg, &noise(mib << 20)).await?,
                None => self.tx.send(&msg, &e.blob).await?,
            }
            crate::metrics::sent(&self.peer, e.count, e.blob.len() as u64);
        }
        self.sent_cursor = e.to;
        self.sent_max = self.sent_max.max(e.to);
        Ok(e.has_more)
    }

    async fn export(&self, since: i64, max: u32) -> R<store::Export> {
        let peer = self.peer.clone();
        blocking(&self.conn, move |c| store::export(c, since, max, &peer)).await
    }

    /// Acks the peer's changes up to `to`: now, or once [`LATER`] has
    /// passed since the last ack.
    async fn ack(&mut self, to: i64) -> R<()> {
        let next = self.last_ack + LATER;
        if Instant::now() < next {
            self.owed.ack(to, next);
            return Ok(());
        }
        let to = self.owed.take_ack().map_or(to, |owed| owed.max(to));
        self.send_ack(to).await
    }

    async fn send_ack(&mut self, to: i64) -> R<()> {
        self.last_ack = Instant::now();
        self.tx.send(&Msg::Ack { cursor: to }, &[]).await?;
        Ok(())
    }

    /// Sends the ack and the cursor-only push held back (see `owed`).
    pub(super) async fn pay_owed(&mut self) -> R<()> {
        let (ack, cursor) = self.owed.take_all();
        if let Some(to) = ack {
            if self.prefetched.is_some() {
                // A batch exported earlier is still to go, and it may predate
                // what this acks: later.
                self.owed.ack(to, Instant::now() + LATER);
            } else {
                self.send_ack(to).await?;
            }
        }
        if cursor {
            if self.receiving.is_pulling() {
                self.sending.owe_push();
            } else if self.sending.is_subscribed() {
                let look = self.push_look(true);
                let found = blocking(&self.conn, look).await?;
                self.push_found(found).await?;
            }
        }
        Ok(())
    }

    /// Sends the ack owed, if any (the session is ending, or a hold is
    /// about to be announced).
    pub(super) async fn pay_owed_ack(&mut self) -> R<()> {
        match self.owed.take_ack() {
            Some(to) if self.prefetched.is_none() => self.send_ack(to).await,
            _ => Ok(()),
        }
    }

    /// Pushes commits made since the last send. After a bulk write the peer
    /// only gets a notification and pulls at its own pace; with more pending
    /// than one batch, it pulls the rest. When nothing is pending for the
    /// peer but our cursor moved (past its own changes, relayed), the push
    /// waits (see `owed`).
    pub(super) async fn push(&mut self) -> R<()> {
        let look = self.push_look(false);
        let found = blocking(&self.conn, look).await?;
        self.push_found(found).await
    }

    /// After a commit here: the members (see `members_found`) and, when
    /// the peer is subscribed, a push, read in one turn off the async
    /// threads (each turn is a hand-off between threads, which costs a
    /// busy machine the most). Nothing when no other connection committed
    /// since the last look: our own commits (applies, acks, the folding
    /// of a push) wake the sidecar as well, and a look after each doubled
    /// the work of every small commit on both sides.
    pub(super) async fn after_commit(&mut self) -> R<()> {
        // While we pull a stream from this peer, our commits are mostly its
        // own changes being applied: push once the stream ends rather than
        // after every batch.
        let pulling = self.receiving.is_pulling();
        if pulling {
            self.sending.owe_push();
        }
        let look = (!pulling && self.sending.is_subscribed()).then(|| self.push_look(false));
        let (peer, seen) = (self.peer.clone(), self.seen_version);
        let (version, found) = inline(&self.conn, move |c| {
            let version = store::data_version(c)?;
            if seen == Some(version) {
                return Ok((version, None));
            }
            let members = read_members(c, &peer)?;
            Ok((version, Some((members, look.map(|l| l(c)).transpose()?))))
        })
        .await?;
        self.seen_version = Some(version);
        let Some((members, found)) = found else {
            return self.send_newest_secret().await;
        };
        self.members_found(members).await?;
        match found {
            Some(found) => self.push_found(found).await,
            None => Ok(()),
        }
    }

    /// What a push reads (blocking); `cursor_only`: also a changeset that
    /// only moves our cursor.
    fn push_look(
        &self,
        cursor_only: bool,
    ) -> impl FnOnce(&mut Connection) -> store::R<store::Push> + Send + 'static {
        let (since, max, peer) = (self.sent_cursor, self.node.cfg.batch, self.peer.clone());
        let bulk = i64::try_from(self.node.cfg.bulk_notify).unwrap_or(i64::MAX);
        move |c| store::push(c, since, max, &peer, bulk, cursor_only)
    }

    async fn push_found(&mut self, found: store::Push) -> R<()> {
        let store::Push {
            head,
            pending,
            export,
        } = found;
        if let Some(e) = export {
            let more = self.send_export(e, false).await?;
            self.sending.pushed(more);
        } else if pending > 0 {
            info!(
                pending,
                "bulk write: notifying the peer, which pulls at its own pace"
            );
            self.tx.send(&Msg::Notify { head }, &[]).await?;
            self.sending.notified();
        } else if head > self.sent_cursor {
            self.owed.cursor(Instant::now() + LATER);
        }
        Ok(())
    }

    /// Applies the peer's changeset, unless the drift guard refuses it for
    /// now (the peer's clock is ahead): then it is held.
    async fn apply(&mut self, blob: Vec<u8>, to: i64, caught_up: bool) -> R<Applied> {
        let pause = self.courtesy.pause();
        if !pause.is_zero() {
            debug!(
                ?pause,
                "other connections are writing: leaving them the write lock"
            );
            tokio::time::sleep(pause).await;
        }
        let (peer, delay) = (self.peer.clone(), self.node.cfg.test.apply_delay);
        let applied = inline(&self.conn, move |c| {
            match store::apply(c, &peer, &blob, to, caught_up, delay) {
                Ok(r) => Ok(Ok(r)),
                // A changeset that is not what the peer said it is was
                // refused before SQLite saw it: not a matter of clocks.
                Err(e @ store::StoreError::Corrupt(_)) => Err(e),
                // Only a refused apply asks why: the extension answers
                // from the changeset, so no error text is parsed.
                Err(e) => match held::check(c, &peer, &blob) {
                    Ok(Some(h)) => Ok(Err(h)),
                    _ => Err(e),
                },
            }
        })
        .await?;
        match applied {
            Ok((report, turn)) => {
                self.courtesy.record(turn);
                Ok(Applied::Report(report))
            }
            Err(h) => Ok(Applied::Held(h)),
        }
    }

    fn note_applied(&mut self, count: u64, bytes: u64, report: &ApplyReport) {
        let n = count.max(report.changes as u64);
        self.applied_total += n as i64;
        crate::metrics::received(&self.peer, n, bytes);
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
        if let Some(p) = self.receiving.progress() {
            p.advance(n, bytes);
        }
    }
}

/// Whether an apply wrote more than the peer's changes (or set some aside).
fn did_more_than_apply(r: &ApplyReport) -> bool {
    [
        r.deferred,
        r.resolved,
        r.parked,
        r.quarantined,
        r.retried,
        r.cascaded,
        r.merged,
    ]
    .iter()
    .any(|&n| n > 0)
}

/// `len` bytes that do not compress (xorshift), for the junk test hook.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
