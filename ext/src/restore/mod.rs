//! `lsync_restore(path)`: importing a snapshot atomically.
//!
//! Everything is checked before anything is written. Into an empty library
//! the import is page-level: the snapshot is copied next to the database,
//! this database's local state (its own tables, device id, settings, peers)
//! is put into the copy, and the copy replaces the database with the backup
//! API, which is one write transaction (`empty.rs`). Into a library that has data, the
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
use crate::snapfile::{self, remove_db_files};
use crate::sql::{Connection, Db, Value, OPEN_READONLY};
use crate::{apply, bail, changes, schema, stability};

mod empty;

use empty::{empty_path_refusal, restore_empty, Empty};

/// Changes per batch on the merge path.
const BATCH: usize = 10_000;

/// How long the import waits for other connections' locks.
const BUSY_MS: i32 = 10_000;

/// How `lsync_restore` may treat the snapshot file (its options JSON).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The file is a scratch copy: the page-level import works in it
    /// instead of in a copy of it, and it is deleted after a restore.
    #[serde(default)]
    pub consume: bool,
}

/// What the snapshot says about itself.
struct Snap {
    device: String,
    cursor: i64,
    rows: i64,
    tables: BTreeMap<String, i64>,
    /// Set for a snapshot of one device's rows: it moves no watermark.
    owner: Option<String>,
}

pub fn restore(db: Db, conn: &Conn, path: &str, opts: &Options) -> Result<String> {
    schema::ensure(db)?;
    let file = Path::new(path);
    if !file.is_file() {
        bail!("lsync_restore: no such file: '{path}'; nothing was restored");
    }
    let reader = Connection::open(file, OPEN_READONLY).map_err(restore_error)?;
    let snap = check(db, reader.db(), path)?;
    let me = schema::get_text(db, "device_id")?;
    let mut report = RestoreReport {
        rows: snap.rows,
        tables: snap.tables.clone(),
        source_device: snap.device.clone(),
        cursor: if snap.owner.is_some() { 0 } else { snap.cursor },
        owner: snap.owner.clone(),
        ..Default::default()
    };
    let fallback = match empty_path_refusal(db, reader.db())? {
        None => {
            drop(reader);
            match restore_empty(db, file, &snap, &me, opts.consume) {
                Ok(Empty::Done(deferred)) => {
                    report.mode = RestoreMode::Empty;
                    report.merged.deferred = deferred;
                    if opts.consume {
                        remove_db_files(file);
                    }
                    return to_json(&report);
                }
                Ok(Empty::Unusable(why)) => why,
                Err(e) => return Err(restore_error(e)),
            }
        }
        Some(why) => why,
    };
    let reader = Connection::open(file, OPEN_READONLY).map_err(restore_error)?;
    let peers = peers_of(reader.db())?;
    // What the snapshot's device had applied of ours, as a changeset's fence.
    let fence = Fence {
        sender: snap.device.clone(),
        receiver: me.clone(),
        acked: peers.iter().find(|(d, _)| *d == me).map_or(0, |(_, c)| *c),
    };
    stability::check_fresh(db, Some(&fence), "lsync_restore", "snapshot")?;
    let merged = db
        .write_savepoint("lsync_restore", || {
            let r = merge(db, conn, reader.db())?;
            set_watermarks(db, &peers, &snap, &me)?;
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

/// Validates the snapshot against this database. Writes nothing.
fn check(db: Db, s: Db, path: &str) -> Result<Snap> {
    let settings = snapfile::Settings {
        file: s,
        func: "lsync_restore",
        path,
        tail: "; nothing was restored",
    };
    let not_snapshot = |why: &str| settings.not_snapshot(why);
    let config = |key: &str| settings.get(key);
    let device = settings.device()?;
    let cursor = config("snapshot_cursor")?
        .as_i64()
        .ok_or_else(|| not_snapshot("it has no snapshot_cursor setting"))?;
    let library = schema::get_text(db, "library_id")?;
    let theirs = config("library_id")?;
    if theirs.as_str() != Some(library.as_str()) {
        bail!(
            "lsync_restore: the snapshot belongs to library {}, this database to library {library}; nothing was restored",
            theirs.as_str().unwrap_or("(none)")
        );
    }
    let version = schema::get_i64(db, "schema_version")?;
    if config("schema_version")?.as_i64() != Some(version) {
        bail!(
            "lsync_restore: the snapshot has lsync metadata version {:?}, this database {version}; \
             nothing was restored",
            config("schema_version")?.as_i64()
        );
    }
    let mine = catalog::load_all(db)?;
    let theirs = catalog::load_all(s).map_err(|e| not_snapshot(e.detail()))?;
    check_tables(&mine, &theirs)?;
    let mut tables = BTreeMap::new();
    let mut rows = 0;
    for t in &theirs {
        let n = s
            .query_i64(&format!("SELECT count(*) FROM {}", q(&t.name)), &[])?
            .unwrap_or(0);
        rows += n;
        tables.insert(t.name.to_string(), n);
    }
    // The snapshot's HLC setting becomes this database's when larger, so it
    // is held to the limits of its clock's HLCs (read as the restore reads
    // them, as integers); a REAL or TEXT one would leave a clock that
    // cannot advance.
    let Value::Integer(hlc) = config("hlc")? else {
        return Err(not_snapshot("its HLC setting is not an integer"));
    };
    let max_hlc = s.query_i64("SELECT max(CAST(hlc AS INTEGER)) FROM lsync_clock", &[])?;
    let max_hlc = max_hlc.map_or(hlc, |m| m.max(hlc));
    apply::check_drift(db, Some(max_hlc), "lsync_restore", "snapshot")?;
    Ok(Snap {
        device,
        cursor,
        rows,
        tables,
        owner: config("snapshot_owner")?.as_str().map(str::to_owned),
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

/// The snapshot's own watermarks: (device, recv_cursor).
fn peers_of(s: Db) -> Result<Vec<(String, i64)>> {
    let mut st = s.prepare("SELECT device_id, recv_cursor FROM lsync_peers")?;
    let mut peers = Vec::new();
    while st.step()? {
        peers.push((st.text(0).unwrap_or_default(), st.i64(1)));
    }
    Ok(peers)
}

fn set_watermarks(db: Db, peers: &[(String, i64)], snap: &Snap, me: &str) -> Result<()> {
    watermarks(&|sql: &str, p: &[Value]| db.run(sql, p), peers, snap, me)
}

/// This database now holds what the snapshot's device held: its changes up
/// to the snapshot's cursor, and what it had received from its own peers.
/// Watermarks only move forward; a peer this database does not know is not
/// added (only the snapshot's device is).
fn watermarks(
    run: &dyn Fn(&str, &[Value]) -> Result<()>,
    peers: &[(String, i64)],
    snap: &Snap,
    me: &str,
) -> Result<()> {
    if snap.owner.is_some() || snap.device == me {
        return Ok(());
    }
    for (device, cursor) in peers.iter().filter(|(d, _)| d != me && *d != snap.device) {
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
