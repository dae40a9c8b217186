//! The replicator's view of the database. Every call is blocking SQLite work
//! (run it with `spawn_blocking`), and everything goes through the
//! extension's SQL functions: lsync's tables, the peers' included, are the
//! extension's own.

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lsync_wire::report::{ApplyReport, RestoreReport};
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection};

use crate::courtesy::Turn;
use crate::db::{self, DbOptions};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Snap(#[from] crate::snapshot::SnapError),
    #[error("{0}")]
    Corrupt(String),
}

pub type R<T> = Result<T, StoreError>;

/// Who this database is, as told to peers in the handshake.
#[derive(Debug, Clone)]
pub struct Identity {
    pub library_id: String,
    pub device_id: String,
    pub schema: String,
}

/// One changeset ready to send.
pub struct Export {
    pub blob: Vec<u8>,
    pub from: i64,
    pub to: i64,
    pub count: u64,
    pub has_more: bool,
}

/// WAL pages (32 MiB) after which the replicator's commits checkpoint.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;

/// Opens the database the way the sidecar shares it with the app: WAL, a
/// busy timeout, the extension loaded.
pub fn open(path: &Path) -> R<Connection> {
    shared(db::open(path, &OPTIONS)?)
}

/// [`open`] for a database that must already exist: the sidecar's sessions
/// and watchers never create one where theirs was removed.
pub fn open_existing(path: &Path) -> R<Connection> {
    shared(db::open_existing(path, &OPTIONS)?)
}

/// [`open_existing`] for a session, whose connection only ever writes by
/// `lsync_apply` and `lsync_restore`: with triggers off, so that an apply
/// never switches them off and on again. Switching expires every statement
/// the connection keeps prepared, which then costs more to prepare again
/// than a changeset of a thousand rows costs to merge. An apply to a table
/// with an app trigger still turns them on for itself (`lsync_apply`).
pub fn open_session(path: &Path) -> R<Connection> {
    let conn = open_existing(path)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    Ok(conn)
}

const OPTIONS: DbOptions = DbOptions { foreign_keys: true };

fn shared(conn: Connection) -> R<Connection> {
    conn.busy_timeout(Duration::from_secs(30))?;
    // Checkpoints fsync; a stream of small applies checkpointing every 1000
    // pages (SQLite's default) spends much of its time there.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    Ok(conn)
}

/// `PRAGMA wal_checkpoint(PASSIVE)` of `path` on a connection of its own:
/// (busy, frames in the WAL, frames copied). PASSIVE never waits for a
/// reader or a writer; it copies what they leave it.
pub fn checkpoint(path: &Path) -> R<(i64, i64, i64)> {
    let c = open_existing(path)?;
    Ok(c.query_row("PRAGMA main.wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?)
}

pub fn identity(c: &Connection) -> R<Identity> {
    let (library_id, device_id): (String, String) =
        c.query_row("SELECT lsync_library_id(), lsync_device_id()", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let schema: String = c.query_row("SELECT lsync_schema_fingerprint()", [], |r| r.get(0))?;
    Ok(Identity {
        library_id,
        device_id,
        schema,
    })
}

/// Joins the peer's library, allowed while this database has applied
/// nothing from other devices (the extension enforces it).
pub fn join_library(c: &Connection, library_id: &str) -> R<()> {
    c.query_row("SELECT lsync_library_id(?1)", [library_id], |r| {
        r.get::<_, String>(0)
    })?;
    Ok(())
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction. The lsync functions that
/// write (flush, prune) are called from SELECTs; taking the write lock first
/// makes them wait for the app's writes (busy timeout) instead of failing
/// with "database is locked" when the read snapshot is stale.
pub(crate) fn immediate<T>(c: &Connection, f: impl FnOnce(&Connection) -> R<T>) -> R<T> {
    let tx = rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// The newest change cursor of this database.
pub fn head(c: &Connection) -> R<i64> {
    immediate(c, |c| {
        Ok(c.query_row("SELECT lsync_flush()", [], |_| Ok(()))?)
    })?;
    folded_head(c)
}

/// The newest cursor of the changes folded so far.
fn folded_head(c: &Connection) -> R<i64> {
    Ok(c.prepare_cached("SELECT lsync_head()")?
        .query_row([], |r| r.get(0))?)
}

/// Our head, and how many of our changes after `since` the peer `peer`
/// lacks: its own changes relayed back through us do not count.
pub fn behind(c: &Connection, since: i64, peer: &str) -> R<(i64, i64)> {
    immediate(c, |c| behind_in(c, since, peer))
}

/// [`behind`] inside the caller's transaction.
fn behind_in(c: &Connection, since: i64, peer: &str) -> R<(i64, i64)> {
    // lsync_missing folds pending captures first.
    let missing = c
        .prepare_cached("SELECT lsync_missing(?1, ?2)")?
        .query_row(params![since, peer], |r| r.get(0))?;
    Ok((folded_head(c)?, missing))
}

/// What a push after `since` finds: our head, how many of our changes the
/// peer lacks (see [`behind`]), and the changeset to send.
pub struct Push {
    pub head: i64,
    pub pending: i64,
    /// `None` when nothing is pending for the peer (unless `cursor_only`
    /// asked for a changeset that only moves our cursor), or when `bulk`
    /// or more changes are: a bulk write is notified, not pushed.
    pub export: Option<Export>,
}

/// [`behind`], then [`export`] if there is something to push, in one
/// transaction: after a small commit, a push is a single turn at the
/// write lock.
pub fn push(
    c: &Connection,
    since: i64,
    max: u32,
    peer: &str,
    bulk: i64,
    cursor_only: bool,
) -> R<Push> {
    immediate(c, |c| {
        let (head, pending) = behind_in(c, since, peer)?;
        let wanted = pending > 0 || (cursor_only && head > since);
        let export = if wanted && pending < bulk {
            Some(export_in(c, since, max, peer)?)
        } else {
            None
        };
        Ok(Push {
            head,
            pending,
            export,
        })
    })
}

/// Row data one changeset carries, at most, besides its first change: a
/// catch-up is a stream of such pieces, each applied (and acknowledged) on
/// its own, so neither side ever holds more than one piece and the row
/// that ends it, whatever the size of the gap (docs/protocol.md, "Memory").
pub const PIECE_BYTES: usize = 4 << 20;

/// Our changes after `since` for the peer `peer`, leaving out its own: at
/// most `max` changes and about `PIECE_BYTES` of row data.
pub fn export(c: &Connection, since: i64, max: u32, peer: &str) -> R<Export> {
    immediate(c, |c| export_in(c, since, max, peer))
}

/// [`export`] inside the caller's transaction.
fn export_in(c: &Connection, since: i64, max: u32, peer: &str) -> R<Export> {
    let began = Instant::now();
    let blob: Vec<u8> = c
        .prepare_cached("SELECT lsync_changeset(?1, ?2, ?3, ?4)")?
        .query_row(
            params![since, i64::from(max.max(1)), peer, PIECE_BYTES as i64],
            |r| r.get(0),
        )?;
    let head = folded_head(c)?;
    crate::metrics::export_time(began.elapsed());
    // Only the head of the body is read: the peer decodes the rest.
    let s = lsync_wire::changeset::Changeset::summary(&blob, u64::MAX)
        .map_err(|e| StoreError::Corrupt(format!("our own changeset: {e}")))?;
    let (to, count) = (s.to, s.changes);
    Ok(Export {
        blob,
        from: since,
        to,
        count,
        // A changeset that ends before our head stopped at its budget.
        has_more: to < head,
    })
}

/// What this database knows of a peer as a session with it starts.
#[derive(Debug, PartialEq, Eq)]
pub struct Hello {
    /// The peer's cursor we have applied up to (0 after an escalation).
    pub recv_cursor: i64,
    /// This session starts a full resync from the peer.
    pub escalated: bool,
    /// Escalating is due, but a full resync from this peer already ended
    /// with (or would hit again) this error: the session retries from its
    /// watermark instead.
    pub not_escalated: Option<String>,
}

/// The peer's row, created on first contact. Returns its receive watermark,
/// first applying a pending escalation to a full resync: at most one per
/// completed catch-up, since a resync that is already on its way, or that
/// would hit the same error again, gains nothing by starting over.
pub fn peer_hello(c: &Connection, peer: &str, addr: &str, escalate_after: i64) -> R<Hello> {
    c.query_row(
        "SELECT lsync_peer_contact(?1, ?2)",
        params![peer, addr],
        |_| Ok(()),
    )?;
    let row = peer_row(c, peer)?;
    if row.failures < escalate_after {
        return Ok(Hello {
            recv_cursor: row.recv_cursor,
            escalated: false,
            not_escalated: None,
        });
    }
    if let Some(e) = row.resync_error {
        return Ok(Hello {
            recv_cursor: row.recv_cursor,
            escalated: false,
            not_escalated: Some(e),
        });
    }
    c.query_row("SELECT lsync_peer_reset(?1)", [peer], |_| Ok(()))?;
    Ok(Hello {
        recv_cursor: 0,
        escalated: true,
        not_escalated: None,
    })
}

fn peer_row(c: &Connection, peer: &str) -> R<PeerStatus> {
    let row: Option<String> = c.query_row("SELECT lsync_peer(?1)", [peer], |r| r.get(0))?;
    Ok(serde_json::from_str(&row.ok_or_else(|| {
        StoreError::Corrupt(format!("peer {peer} was not recorded"))
    })?)?)
}

/// Why a session failed, as far as escalating to a full resync goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The same changes would be refused again, so a full resync would hit
    /// it again: a constraint, a schema mismatch, an HLC beyond every
    /// clock (one only ahead for now is held, see `held`), a
    /// changeset that contradicts itself, another library. Never counts
    /// towards an escalation.
    Deterministic,
    /// A gap, the transport, a busy or vanished database, a stale
    /// changeset: retrying, or a full resync, may get through.
    Transient,
}

impl Failure {
    /// Classifies an error of ours.
    pub fn of(e: &StoreError) -> Failure {
        match e {
            StoreError::Corrupt(_) => Failure::Deterministic,
            StoreError::Sql(rusqlite::Error::SqliteFailure(f, msg)) => {
                use rusqlite::ErrorCode as C;
                match f.code {
                    C::DatabaseBusy | C::DatabaseLocked | C::SystemIoFailure | C::DiskFull => {
                        Failure::Transient
                    }
                    C::ConstraintViolation => Failure::Deterministic,
                    _ => msg
                        .as_deref()
                        .map_or(Failure::Transient, Failure::of_message),
                }
            }
            _ => Failure::Transient,
        }
    }

    /// Classifies an error by its text: the peer's report of its own
    /// failure arrives as text only. The extension's refusals of a
    /// changeset say "nothing was applied" (or "... restored"); a stale
    /// changeset (pulling again fixes it) and a busy database are the
    /// exceptions.
    pub fn of_message(msg: &str) -> Failure {
        let refused = msg.contains("nothing was applied") || msg.contains("nothing was restored");
        let retry = [
            " is stale: ",
            "database is locked",
            "database table is locked",
        ]
        .iter()
        .any(|m| msg.contains(m));
        if refused && !retry {
            Failure::Deterministic
        } else {
            Failure::Transient
        }
    }
}

/// Records a failed session with the peer. A deterministic failure, or the
/// error a full resync from the peer was started for coming back, marks the
/// peer stuck (`lsync_peer_stuck`) instead of counting towards an
/// escalation; otherwise a failed catch-up counts. Returns whether the peer
/// is stuck: no resync will be started for this error.
pub fn record_failure(
    c: &Connection,
    peer: &str,
    error: &str,
    failure: Failure,
    failed_catch_up: bool,
) -> R<bool> {
    let again = peer_row(c, peer)?.resync_error.as_deref() == Some(error);
    if failure == Failure::Deterministic || again {
        c.query_row(
            "SELECT lsync_peer_stuck(?1, ?2)",
            params![peer, error],
            |_| Ok(()),
        )?;
        return Ok(true);
    }
    record_error(c, peer, error, failed_catch_up)?;
    Ok(false)
}

/// Applies a peer's changeset and advances its watermark in the same
/// transaction: a crash at any point either keeps both or neither.
/// Also returns the transaction's turn at the write lock (see `courtesy`).
pub fn apply(
    c: &mut Connection,
    peer: &str,
    blob: &[u8],
    to: i64,
    caught_up: bool,
    delay: Option<Duration>,
) -> R<(ApplyReport, Turn)> {
    check_claims(peer, blob, to)?;
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let began = Instant::now();
    let version = data_version(&tx)?;
    let report: String = tx
        .prepare_cached("SELECT lsync_apply(?1)")?
        .query_row([blob], |r| r.get(0))?;
    // Test hook: hold the write lock longer, for a long catch-up.
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
    tx.prepare_cached("SELECT lsync_peer_received(?1, ?2, ?3)")?
        .query_row(params![peer, to, caught_up], |_| Ok(()))?;
    tx.commit()?;
    let turn = Turn {
        version,
        held: began.elapsed(),
    };
    crate::metrics::apply_time(turn.held);
    Ok((serde_json::from_str(&report)?, turn))
}

/// What the peer says about a changeset must be what the changeset says:
/// the watermark moves to the changeset's own `to`, and its fence (the ack
/// it records) must name the peer as its sender, not another device.
fn check_claims(peer: &str, blob: &[u8], to: i64) -> R<()> {
    use lsync_wire::changeset::{Changeset, DEFAULT_MAX_BODY};
    let s = Changeset::summary(blob, DEFAULT_MAX_BODY)
        .map_err(|e| StoreError::Corrupt(format!("the peer's changeset: {e}")))?;
    if s.to != to {
        return Err(StoreError::Corrupt(format!(
            "the peer announced a changeset up to cursor {to}, but it holds changes up to {}",
            s.to
        )));
    }
    if let Some(f) = s.fence.filter(|f| !f.sender.eq_ignore_ascii_case(peer)) {
        return Err(StoreError::Corrupt(format!(
            "the peer {peer} sent a changeset that claims to come from device {}",
            f.sender
        )));
    }
    Ok(())
}

/// Imports a verified snapshot file, and deletes it: it is our scratch
/// copy, so the import works in it instead of copying it again.
/// `lsync_restore` is atomic and sets the watermark of the snapshot's device
/// in the same transaction.
pub fn restore(c: &Connection, path: &Path) -> R<RestoreReport> {
    let report: String = c.query_row(
        r#"SELECT lsync_restore(?1, '{"consume": true}')"#,
        [path.to_string_lossy()],
        |r| r.get(0),
    )?;
    Ok(serde_json::from_str(&report)?)
}

/// Whether an apply or restore was refused because its input was read
/// before the peer had applied deletes that this database has pruned since
/// (`lsync_apply`: "the changeset is stale"). Pulling again fixes it.
pub fn is_stale(e: &StoreError) -> bool {
    matches!(e, StoreError::Sql(e) if e.to_string().contains(" is stale: "))
}

/// Records that the peer holds our changes up to `cursor`, then prunes the
/// tombstones that every known peer holds.
pub fn ack(c: &Connection, peer: &str, cursor: i64) -> R<i64> {
    immediate(c, |c| {
        // A peer cannot hold changes that were never made: the extension
        // caps the claim at our newest cursor.
        c.prepare_cached("SELECT lsync_peer_acked(?1, ?2)")?
            .query_row(params![peer, cursor], |_| Ok(()))?;
        Ok(c.prepare_cached("SELECT lsync_prune()")?
            .query_row([], |r| r.get(0))?)
    })
}

pub fn record_error(c: &Connection, peer: &str, error: &str, failed_catch_up: bool) -> R<()> {
    c.query_row(
        "SELECT lsync_peer_error(?1, ?2, ?3)",
        params![peer, error, failed_catch_up],
        |_| Ok(()),
    )?;
    Ok(())
}

/// `PRAGMA data_version`: changes whenever another connection commits.
pub fn data_version(c: &Connection) -> R<i64> {
    Ok(c.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?)
}

/// The per-peer rows for `lsync status` (`lsync_peer`, `lsync_status`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub device_id: String,
    pub addr: Option<String>,
    pub recv_cursor: i64,
    pub acked_cursor: i64,
    pub lag: i64,
    pub failures: i64,
    pub last_contact_ms: Option<i64>,
    pub last_error: Option<String>,
    /// The error a full resync from the peer was started for, or that one
    /// would hit again; cleared by a completed catch-up.
    #[serde(default)]
    pub resync_error: Option<String>,
    /// The last error is `resync_error`: retrying goes on, escalating
    /// stopped (see `record_failure`).
    #[serde(default)]
    pub stuck: bool,
    /// We hold the peer's changes: its clock is ahead (see `held`).
    #[serde(default)]
    pub held: Option<crate::held::Hold>,
    /// The peer holds our changes: our clock is ahead.
    #[serde(default)]
    pub held_by_peer: Option<crate::held::Hold>,
    /// How long ago, by its HLC, the first of our changes the peer lacks
    /// was made (0 when it lacks none).
    #[serde(default)]
    pub lag_ms: i64,
    /// Tombstones kept until the peer acknowledges them.
    #[serde(default)]
    pub tombstones_held: i64,
    /// When the peer was forgotten (`lsync peer forget`), unix ms.
    #[serde(default)]
    pub forgotten_ms: Option<i64>,
}

/// The status document of `lsync_status`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub device_id: String,
    pub library_id: String,
    pub head: i64,
    /// How far this database's HLC is ahead of the wall clock.
    #[serde(default)]
    pub hlc_ahead_ms: i64,
    pub peers: Vec<PeerStatus>,
    pub deferred_links: i64,
    pub tombstones: i64,
    pub tombstones_awaiting_ack: i64,
    /// Changes from peers quarantined here (`lsync_conflicts`).
    #[serde(default)]
    pub conflicts: i64,
}

/// Folds pending captures first, so that unsynced deletes and edits count.
pub fn status(c: &Connection) -> R<Status> {
    head(c)?;
    folded_status(c)
}

/// The status of the changes folded so far: reads only.
pub fn folded_status(c: &Connection) -> R<Status> {
    let s: String = c.query_row("SELECT lsync_status()", [], |r| r.get(0))?;
    Ok(serde_json::from_str(&s)?)
}

/// Forgets a device gone for good (`lsync_forget_peer`), then prunes what
/// no longer waits for it. Returns the tombstones released and pruned.
pub fn forget_peer(c: &Connection, peer: &str) -> R<(i64, i64)> {
    immediate(c, |c| {
        let released = c.query_row("SELECT lsync_forget_peer(?1)", [peer], |r| r.get(0))?;
        let pruned = c.query_row("SELECT lsync_prune()", [], |r| r.get(0))?;
        Ok((released, pruned))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (PathBuf, Connection) {
        crate::db::register(None).unwrap();
        let dir = std::env::temp_dir().join(format!("lsync-store-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let c = open(&path).unwrap();
        c.query_row("SELECT lsync_device_id()", [], |_| Ok(()))
            .unwrap();
        (dir, c)
    }

    /// The peer's changes up to `cursor` are applied here.
    fn received(c: &Connection, peer: &str, cursor: i64) {
        c.query_row(
            "SELECT lsync_peer_received(?1, ?2, 0)",
            params![peer, cursor],
            |_| Ok(()),
        )
        .unwrap();
    }

    /// A peer cannot move our watermark past what it sent, nor have us
    /// record an ack in another device's name.
    #[test]
    fn a_peers_claims_about_its_changeset_are_checked() {
        use lsync_wire::changeset::{Changeset, Fence};
        let (peer, other) = (
            "01a20142-c196-70dc-8b46-cc82023ee619",
            "01a20142-c196-70dc-8b46-cc82023ee61a",
        );
        let blob = |sender: &str| {
            Changeset {
                library_id: "01a20142-c196-70dc-8b46-cc83df4c5b94".into(),
                from: 3,
                to: 9,
                fence: Some(Fence {
                    sender: sender.into(),
                    receiver: other.into(),
                    acked: 1,
                }),
                tables: Vec::new(),
                changes: Vec::new(),
            }
            .encode()
            .unwrap()
        };
        assert!(check_claims(peer, &blob(peer), 9).is_ok());
        let e = check_claims(peer, &blob(peer), 10).unwrap_err().to_string();
        assert!(e.contains("holds changes up to 9"), "{e}");
        let e = check_claims(peer, &blob(other), 9).unwrap_err().to_string();
        assert!(e.contains("claims to come from device"), "{e}");
        assert!(check_claims(peer, b"LSYNCjunk", 9).is_err());
    }

    fn hello(c: &Connection, peer: &str) -> (i64, bool, Option<String>) {
        let h = peer_hello(c, peer, "x", 5).unwrap();
        (h.recv_cursor, h.escalated, h.not_escalated)
    }

    #[test]
    fn five_failed_catch_ups_escalate_to_a_full_resync() {
        let (dir, c) = temp_db();
        let peer = "01a20142-c196-70dc-8b46-cc82023ee619";
        assert_eq!(hello(&c, peer), (0, false, None));
        received(&c, peer, 42);
        for i in 0..5 {
            assert_eq!(hello(&c, peer), (42, false, None), "attempt {i}");
            record_error(&c, peer, "boom", true).unwrap();
        }
        // The sixth session starts over from cursor 0, and the count resets.
        assert_eq!(hello(&c, peer), (0, true, None));
        assert_eq!(hello(&c, peer), (0, false, None));
        // Errors after a completed catch-up do not count.
        received(&c, peer, 7);
        for _ in 0..6 {
            record_error(&c, peer, "gone", false).unwrap();
        }
        assert_eq!(hello(&c, peer), (7, false, None));
        drop(c);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What a resync would hit again never counts, and a resync that ends
    /// with the error it was started for is not started again: retrying
    /// goes on from the watermark, and the peer reads as stuck.
    #[test]
    fn a_failure_a_resync_would_hit_again_never_escalates() {
        let unique = "lsync_apply: inserting into 'tags': UNIQUE constraint failed: tags.name; \
                      nothing was applied";
        assert_eq!(Failure::of_message(unique), Failure::Deterministic);
        let remote = format!("the peer reported: {unique}");
        assert_eq!(Failure::of_message(&remote), Failure::Deterministic);
        for transient in [
            "lsync_apply: the changeset is stale: it was read before ...; nothing was applied",
            "connection reset by peer",
            "no message from the peer for 4s",
            "database is locked",
        ] {
            assert_eq!(
                Failure::of_message(transient),
                Failure::Transient,
                "{transient}"
            );
        }
        let corrupt = StoreError::Corrupt("the peer's changeset: bad magic".into());
        assert_eq!(Failure::of(&corrupt), Failure::Deterministic);

        let (dir, c) = temp_db();
        let peer = "01a20142-c196-70dc-8b46-cc82023ee619";
        let status = |c: &Connection| peer_row(c, peer).unwrap();
        assert_eq!(hello(&c, peer), (0, false, None));
        received(&c, peer, 42);
        // A deterministic failure, however often: no count, stuck at once.
        for _ in 0..7 {
            assert_eq!(hello(&c, peer), (42, false, None));
            assert!(record_failure(&c, peer, unique, Failure::Deterministic, true).unwrap());
        }
        let s = status(&c);
        assert_eq!((s.failures, s.stuck), (0, true));
        assert_eq!(s.resync_error.as_deref(), Some(unique));
        assert_eq!(s.last_error.as_deref(), Some(unique));

        // A completed catch-up clears it.
        c.query_row("SELECT lsync_peer_received(?1, 50, 1)", [peer], |_| Ok(()))
            .unwrap();
        let s = status(&c);
        assert_eq!((s.failures, s.stuck, s.resync_error), (0, false, None));

        // A transient failure counts, and escalates once...
        for _ in 0..5 {
            assert!(!record_failure(&c, peer, "boom", Failure::Transient, true).unwrap());
        }
        assert!(!status(&c).stuck);
        assert_eq!(hello(&c, peer), (0, true, None));
        assert_eq!(status(&c).resync_error.as_deref(), Some("boom"));
        // ... and when the resync ends with the same error, the peer is
        // stuck rather than counting towards another resync.
        assert!(record_failure(&c, peer, "boom", Failure::Transient, true).unwrap());
        let s = status(&c);
        assert_eq!((s.failures, s.stuck), (0, true));
        // Other failures of the resync count, but start no second one while
        // the first has not completed a catch-up.
        for _ in 0..6 {
            assert!(!record_failure(&c, peer, "reset", Failure::Transient, true).unwrap());
        }
        received(&c, peer, 30);
        assert_eq!(hello(&c, peer), (30, false, Some("boom".into())));
        assert!(!status(&c).stuck);

        // The bookkeeping lives in the database: a new connection sees it.
        drop(c);
        let c = open(&dir.join("t.db")).unwrap();
        assert_eq!(status(&c).resync_error.as_deref(), Some("boom"));
        assert_eq!(hello(&c, peer), (30, false, Some("boom".into())));
        drop(c);
        let _ = std::fs::remove_dir_all(dir);
    }
}
