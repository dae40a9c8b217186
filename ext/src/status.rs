//! What the database says about itself, for the replicator and for people:
//! its head cursor, the fingerprint of its tracked schema, a status document,
//! and the description of a snapshot file.
//!
//! The readers of this database create nothing and write nothing (so they
//! are `INNOCUOUS`, and say 0 or an empty list before lsync's metadata
//! exists); `lsync_snapshot_info` opens a file by name, so it is
//! `DIRECTONLY`.

use std::path::Path;

use serde_json::json;

use crate::error::Result;
use crate::peers::{self, has_table};
use crate::sql::{Connection, Db, Value, DIRECTONLY, INNOCUOUS, OPEN_READONLY};
use crate::{bail, merge, schema, snapfile, stability};

pub fn register(db: Db) -> Result<()> {
    db.create_function("lsync_head", 0, INNOCUOUS, |db, _| {
        peers::head(db).map(Value::from)
    })?;
    db.create_function("lsync_schema_fingerprint", 0, INNOCUOUS, |db, _| {
        fingerprint(db).map(Value::from)
    })?;
    db.create_function("lsync_status", 0, INNOCUOUS, |db, _| {
        status(db).map(|s| Value::from(s.to_string()))
    })?;
    db.create_function("lsync_snapshot_info", 1, DIRECTONLY, |_, args| {
        let path = peers::text_arg("lsync_snapshot_info", "path", &args[0])?;
        snapshot_info(&path).map(|s| Value::from(s.to_string()))
    })?;
    Ok(())
}

/// The tracked tables as peers compare them in the handshake: a JSON array
/// of `[name, mode, columns]`, ordered by name.
fn fingerprint(db: Db) -> Result<String> {
    if !has_table(db, "lsync_tables")? {
        return Ok("[]".into());
    }
    Ok(db
        .query_text(
            "SELECT coalesce(json_group_array(json_array(name, mode, json(columns))), '[]')
             FROM (SELECT name, mode, columns FROM lsync_tables ORDER BY name)",
            &[],
        )?
        .unwrap_or_else(|| "[]".into()))
}

/// The status document: identity, head, how far the clock is ahead, the
/// figures of what waits (FK links, tombstones, conflicts) and one row per
/// peer. Captures not yet folded have no
/// cursor: `lsync_flush()` first to count them.
fn status(db: Db) -> Result<serde_json::Value> {
    if !has_table(db, "lsync_peers")? {
        bail!(
            "lsync_status: this database has no lsync metadata yet; it is made by the first \
             lsync function that needs it, e.g. SELECT lsync_device_id()"
        );
    }
    let count = |sql: &str| -> Result<i64> { Ok(db.query_i64(sql, &[])?.unwrap_or(0)) };
    let head = peers::head(db)?;
    Ok(json!({
        "device_id": schema::get(db, "device_id")?.as_str(),
        "library_id": schema::get(db, "library_id")?.as_str(),
        "head": head,
        "hlc_ahead_ms": hlc_ahead_ms(db)?,
        "deferred_links": count("SELECT count(*) FROM lsync_deferred")?,
        "tombstones": count("SELECT count(*) FROM lsync_clock WHERE uuid IS NOT NULL AND op = 2")?,
        "tombstones_awaiting_ack": stability::awaiting_ack(db, peers::gating(db)?)?,
        "conflicts": if has_table(db, "lsync_quarantine")? {
            merge::conflicts(db)?
        } else {
            0
        },
        "peers": peers::rows(db, head, None)?,
    }))
}

/// How far this database's clock (the HLC it last issued or merged) is
/// ahead of the wall clock, in ms; 0 when it is not ahead. A peer whose
/// clock is fast pushes it ahead (up to `max_drift_ms`).
fn hlc_ahead_ms(db: Db) -> Result<i64> {
    let hlc = schema::get(db, "hlc")?.as_i64().unwrap_or(0);
    let ahead = lsync_wire::hlc::millis(hlc) as i64 - peers::now_ms();
    Ok(ahead.max(0))
}

/// What a snapshot file made by `lsync_snapshot` says about itself.
fn snapshot_info(path: &str) -> Result<serde_json::Value> {
    if !Path::new(path).is_file() {
        bail!("lsync_snapshot_info: no such file: '{path}'");
    }
    let reader = Connection::open(Path::new(path), OPEN_READONLY)?;
    snapfile::harden(reader.db())?;
    let settings = snapfile::Settings {
        file: reader.db(),
        func: "lsync_snapshot_info",
        path,
        tail: "",
    };
    // Only a table is read: a view's SQL would run.
    let shape = snapfile::not_ordinary_table(reader.db(), "lsync_config")
        .map_err(|e| settings.not_snapshot(e.detail()))?;
    if let Some(why) = shape {
        return Err(settings.not_snapshot(&why));
    }
    let config = |key: &str| settings.get(key);
    let device = settings.device()?;
    Ok(json!({
        "library_id": config("library_id")?.as_str(),
        "device": device,
        "cursor": config("snapshot_cursor")?.as_i64().unwrap_or(0),
        "rows": config("snapshot_rows")?.as_i64().unwrap_or(0),
        "created_ms": config("snapshot_created_ms")?.as_i64(),
        "owner": config("snapshot_owner")?.as_str(),
    }))
}
