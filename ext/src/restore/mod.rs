//! `lsync_restore(path)`: importing a snapshot atomically.
//!
//! The file is untrusted input (`trust.rs`): everything is checked before
//! anything is written, and no schema object of the file is ever taken.
//! Into an empty library the rows of the tracked tables and lsync's
//! metadata are copied, by SQLite itself, into this database's own tables
//! in one write transaction (`empty.rs`). Into a library that has data, the
//! snapshot's changes are streamed through the apply code inside one
//! savepoint, so the usual rules (LWW per column, owner state) merge them.

use std::collections::BTreeMap;
use std::path::Path;

use lsync_wire::changeset::{Changeset, Fence};
use lsync_wire::report::{ApplyReport, RestoreMode, RestoreReport};

use crate::catalog::{self, Table};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::ident::q;
use crate::snapfile::{self, harden, remove_db_files};
use crate::sql::{Connection, Db, Value, OPEN_READONLY};
use crate::{apply, bail, changes, schema, stability};

mod empty;
mod trust;

use empty::{empty_path_refusal, restore_empty, Empty};

/// Changes per batch on the merge path.
const BATCH: usize = 10_000;

/// How long the import waits for other connections' locks.
const BUSY_MS: i32 = 10_000;

/// How `lsync_restore` may treat the snapshot file (its options JSON).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The file is a scratch copy: it is deleted after a restore.
    #[serde(default)]
    pub consume: bool,
}

/// What the snapshot says about itself, checked.
struct Snap {
    device: String,
    cursor: i64,
    rows: i64,
    tables: BTreeMap<String, i64>,
    /// Set for a snapshot of one device's rows: it moves no watermark.
    owner: Option<String>,
    /// The snapshot's next cursor, above every clock entry it holds.
    next_seq: i64,
    /// The newest HLC it holds, within the drift guard.
    hlc: i64,
    /// Its own watermarks: (device, recv_cursor).
    peers: Vec<(String, i64)>,
    /// What it holds that the restore does not take.
    ignored: Vec<String>,
}

fn open_snapshot(file: &Path) -> Result<Connection> {
    let reader = Connection::open(file, OPEN_READONLY).map_err(restore_error)?;
    harden(reader.db())?;
    Ok(reader)
}

pub fn restore(db: Db, conn: &Conn, path: &str, opts: &Options) -> Result<String> {
    crate::setup::ensure(db)?;
    let file = Path::new(path);
    if !file.is_file() {
        bail!("lsync_restore: no such file: '{path}'; nothing was restored");
    }
    let reader = open_snapshot(file)?;
    let snap = check(db, reader.db(), path).map_err(|e| {
        if e.detail().starts_with("lsync_restore: ") {
            e
        } else {
            restore_error(e)
        }
    })?;
    let me = schema::get_text(db, "device_id")?;
    let mut report = RestoreReport {
        rows: snap.rows,
        tables: snap.tables.clone(),
        source_device: snap.device.clone(),
        cursor: if snap.owner.is_some() { 0 } else { snap.cursor },
        owner: snap.owner.clone(),
        ignored: snap.ignored.clone(),
        ..Default::default()
    };
    let fallback = match empty_path_refusal(db, reader.db())? {
        None => {
            drop(reader);
            match restore_empty(db, file, &snap, &me) {
                Ok(Empty::Done(deferred)) => {
                    report.mode = RestoreMode::Empty;
                    report.merged.deferred = deferred;
                    if opts.consume {
                        remove_db_files(file);
                    }
                    return to_json(&report);
                }
                Ok(Empty::Unusable(why)) => why,
                // Committed, but not synced (`empty::settle`).
                Err(e) if e.detail().starts_with("lsync_restore: ") => return Err(e),
                Err(e) => return Err(restore_error(e)),
            }
        }
        Some(why) => why,
    };
    let reader = open_snapshot(file)?;
    // What the snapshot's device had applied of ours, as a changeset's fence.
    let fence = Fence {
        sender: snap.device.clone(),
        receiver: me.clone(),
        acked: snap
            .peers
            .iter()
            .find(|(d, _)| *d == me)
            .map_or(0, |(_, c)| *c),
    };
    stability::check_fresh(db, Some(&fence), "lsync_restore", "snapshot")?;
    let merged = db
        .write_savepoint("lsync_restore", || {
            let r = merge(db, conn, reader.db())?;
            set_watermarks(db, &snap, &me)?;
            stability::record_ack(db, Some(&fence))?;
            Ok(r)
        })
        .map_err(restore_error)?;
    report.mode = RestoreMode::Merge;
    report.why_not_empty = Some(fallback);
    report.merged = merged;
    if opts.consume {
        drop(reader);
        remove_db_files(file);
    }
    to_json(&report)
}

fn to_json(report: &RestoreReport) -> Result<String> {
    serde_json::to_string(report).map_err(|e| Error::msg(e.to_string()))
}

fn restore_error(e: Error) -> Error {
    Error::msg(format!(
        "lsync_restore: {}; nothing was restored",
        e.detail()
            .trim_start_matches("lsync_apply: ")
            .trim_end_matches("; nothing was applied")
    ))
}

/// Validates the snapshot against this database (`trust.rs`). Writes
/// nothing, and reads nothing of the file before its metadata tables are
/// known to be tables of the expected shape.
fn check(db: Db, s: Db, path: &str) -> Result<Snap> {
    let settings = snapfile::Settings {
        file: s,
        func: "lsync_restore",
        path,
        tail: "; nothing was restored",
    };
    trust::check_metadata(db, s, &settings, true)?;
    let device = trust::check_library(db, &settings)?;
    trust::check_metadata(db, s, &settings, false)?;
    let taken = trust::take_settings(db, s, &settings, device)?;
    trust::check_devices(s)?;
    let mine = catalog::load_all(db)?;
    let theirs = catalog::load_all(s).map_err(|e| settings.not_snapshot(e.detail()))?;
    check_tables(&mine, &theirs)?;
    trust::check_tracked(s, &theirs)?;
    let mut tables = BTreeMap::new();
    let mut rows = 0;
    for t in &theirs {
        let n = s
            .query_i64(&format!("SELECT count(*) FROM {}", q(&t.name)), &[])?
            .unwrap_or(0);
        rows += n;
        tables.insert(t.name.to_string(), n);
    }
    Ok(Snap {
        device: taken.device,
        cursor: taken.cursor,
        rows,
        tables,
        owner: taken.owner,
        next_seq: taken.next_seq,
        hlc: taken.hlc,
        peers: trust::peers(s)?,
        ignored: trust::ignored(db, s, &theirs)?,
    })
}

/// The same tracked tables, modes, uuid columns, columns and FKs.
fn check_tables(mine: &[Table], theirs: &[Table]) -> Result<()> {
    let mismatch = |what: String| -> Result<()> {
        bail!("lsync_restore: schema mismatch: {what}; nothing was restored")
    };
    for t in theirs {
        let Some(m) = mine.iter().find(|m| m.name == t.name) else {
            return mismatch(format!(
                "table '{}' is tracked in the snapshot but not here",
                t.name
            ));
        };
        if m.mode != t.mode {
            return mismatch(format!(
                "'{}' is '{}' here but '{}' in the snapshot",
                t.name,
                m.mode.as_str(),
                t.mode.as_str()
            ));
        }
        if m.columns != t.columns || m.ident != t.ident || m.fks != t.fks {
            return mismatch(format!(
                "the tracked columns of '{}' differ: {:?} here, {:?} in the snapshot",
                t.name, m.columns, t.columns
            ));
        }
    }
    if let Some(m) = mine
        .iter()
        .find(|m| !theirs.iter().any(|t| t.name == m.name))
    {
        return mismatch(format!(
            "table '{}' is tracked here but not in the snapshot",
            m.name
        ));
    }
    Ok(())
}

fn set_watermarks(db: Db, snap: &Snap, me: &str) -> Result<()> {
    watermarks(&|sql: &str, p: &[Value]| db.run(sql, p), snap, me)
}

/// This database now holds what the snapshot's device held: its changes up
/// to the snapshot's cursor, and what it had received from its own peers.
/// Watermarks only move forward; a peer this database does not know is not
/// added (only the snapshot's device is).
fn watermarks(run: &dyn Fn(&str, &[Value]) -> Result<()>, snap: &Snap, me: &str) -> Result<()> {
    if snap.owner.is_some() || snap.device == me {
        return Ok(());
    }
    for (device, cursor) in snap
        .peers
        .iter()
        .filter(|(d, _)| d != me && *d != snap.device)
    {
        run(
            "UPDATE lsync_peers SET recv_cursor = max(recv_cursor, ?2) WHERE device_id = ?1",
            &[device.as_str().into(), (*cursor).into()],
        )?;
    }
    run(
        "INSERT INTO lsync_peers(device_id, recv_cursor) VALUES (?1, ?2)
         ON CONFLICT(device_id) DO UPDATE SET recv_cursor = max(recv_cursor, excluded.recv_cursor)",
        &[snap.device.as_str().into(), snap.cursor.into()],
    )
}

/// Streams the snapshot's changes (all of them, tombstones included, in
/// cursor order) through the apply code, batch by batch.
fn merge(db: Db, conn: &Conn, s: Db) -> Result<ApplyReport> {
    let library = schema::get_text(db, "library_id")?;
    let mut since = 0;
    let mut done = false;
    apply::apply_stream(db, conn, || {
        if done {
            return Ok(None);
        }
        let batch = changes::read_except(s, since, BATCH, None)?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        let from = since;
        since = last.seq;
        done = batch.len() < BATCH;
        Ok(Some(Changeset {
            library_id: library.clone(),
            from,
            to: since,
            fence: None,
            tables: Vec::new(),
            changes: batch,
        }))
    })
}
