//! SQLite's own session extension on the same rows, beside `lsync bench
//! apply` (issue 14): the inserts recorded with `sqlite3session`, then
//! applied to an empty peer with `sqlite3changeset_apply`. It is the
//! closest thing to a floor for "apply a changeset": it keeps no clock,
//! maps no foreign key (the local ids travel as they are, and the peer
//! applies with foreign keys off), merges no column, and stops at the first
//! conflict.

use std::time::Instant;

use rusqlite::session::{ConflictAction, ConflictType, Session};

use super::data::Dataset;
use super::ops;
use super::{BenchError, SqlContext, TempDir};
use crate::db::{self, DbOptions};

/// One round of the session extension.
pub(super) struct SessionRound {
    /// The plain insert with a session recording it.
    pub record_s: f64,
    pub apply_s: f64,
    pub changeset_bytes: usize,
}

pub(super) fn round(dir: &TempDir, data: &Dataset, round: u32) -> Result<SessionRound, BenchError> {
    let opts = DbOptions { foreign_keys: true };
    let prefix = format!("session-{round}");
    let src_path = dir.path().join(format!("{prefix}-source.db"));
    let src = db::open(&src_path, &opts)?;
    ops::setup(&src, None, &data.locations, &src_path)?;
    let mut changeset = Vec::new();
    let record_s = {
        let mut session = Session::new(&src).sql(|| "sqlite3session_create".into())?;
        session
            .attach(Some("entries"))
            .sql(|| "sqlite3session_attach(entries)".into())?;
        dir.settle()?;
        let s = ops::insert_entries(&src, &data.entries, &src_path)?;
        session
            .changeset_strm(&mut changeset)
            .sql(|| "sqlite3session_changeset".into())?;
        s
    };
    drop(src);

    // Foreign keys off at the peer: the changeset lists rows in the order of
    // the session's hash table, children before parents, and with deferred
    // violations pending SQLite scans the children of each inserted parent
    // (no index on parent_id): quadratic, minutes for 200k rows.
    let peer_path = dir.path().join(format!("{prefix}-peer.db"));
    let peer = db::open(
        &peer_path,
        &DbOptions {
            foreign_keys: false,
        },
    )?;
    ops::setup(&peer, None, &data.locations, &peer_path)?;
    dir.settle()?;
    let started = Instant::now();
    peer.apply_strm(
        &mut changeset.as_slice(),
        None::<fn(&str) -> bool>,
        |_: ConflictType, _| ConflictAction::SQLITE_CHANGESET_ABORT,
    )
    .sql(|| "sqlite3changeset_apply at the peer".into())?;
    let apply_s = started.elapsed().as_secs_f64();
    ops::check_count(&peer, data.entries.len(), &peer_path)?;
    drop(peer);
    dir.remove_prefixed(&prefix)?;
    Ok(SessionRound {
        record_s,
        apply_s,
        changeset_bytes: changeset.len(),
    })
}
