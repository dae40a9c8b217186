//! lsync's metadata tables (`sql/schema.sql`) and the settings kept in them:
//! device id, library id and the persisted HLC.

use crate::error::{Error, Result};
use crate::sql::{Db, Value};

const SCHEMA_SQL: &str = include_str!("../../sql/schema.sql");
/// The library's members (`members.rs`), in a file of their own.
const MEMBERS_SQL: &str = include_str!("../../sql/members.sql");

/// Bumped whenever sql/schema.sql gains objects; every statement there is
/// idempotent, so older databases are upgraded by running it again. A
/// column added to an existing table also needs its `ALTER TABLE` in
/// [`migrate`] (`CREATE TABLE IF NOT EXISTS` leaves an old table as it is).
/// Also bumped when an upgrade must do more than the schema: such steps
/// are in `setup::upgrade` (version 15 regenerated the capture triggers).
const SCHEMA_VERSION: i64 = 16;

/// Default maximum clock drift accepted from a peer, in milliseconds.
pub const DEFAULT_MAX_DRIFT_MS: i64 = 60_000;

/// Creates the metadata tables and this database's identity on first use.
/// Idempotent, and safe when two connections race: both run in a write
/// transaction and `INSERT OR IGNORE` keeps the first identity. `upgrade`
/// runs in the same transaction on a database of an older version, with
/// that version (`setup::ensure` passes what lies beyond this module).
pub fn ensure_with(db: Db, upgrade: fn(Db, i64) -> Result<()>) -> Result<()> {
    let version = db
        .query_i64(
            "SELECT value FROM lsync_config WHERE key = 'schema_version'",
            &[],
        )
        .ok()
        .flatten();
    if version == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    db.savepoint("lsyncschema", || {
        db.exec(SCHEMA_SQL)?;
        // Version 10: the library's members (issue 13).
        db.exec(MEMBERS_SQL)?;
        migrate(db)?;
        let device = uuid::Uuid::now_v7().to_string();
        let library = uuid::Uuid::now_v7().to_string();
        db.run(
            "INSERT OR IGNORE INTO lsync_config(key, value) VALUES
               ('device_id', ?1), ('library_id', ?2), ('hlc', 0),
               ('max_drift_ms', ?3), ('library_locked', 0)",
            &[device.into(), library.into(), DEFAULT_MAX_DRIFT_MS.into()],
        )?;
        let id = get_text(db, "device_id")?;
        let idx = device_idx(db, &id)?;
        db.run(
            "INSERT OR IGNORE INTO lsync_config(key, value) VALUES ('device_idx', ?1)",
            &[idx.into()],
        )?;
        if let Some(v) = version {
            upgrade(db, v)?;
        }
        set(db, "schema_version", SCHEMA_VERSION.into())
    })
}

/// The columns of a held peer in `lsync_peers` (schema version 7).
pub const HELD_COLUMNS: [&str; 4] = [
    "held_ahead_ms",
    "held_until_ms",
    "held_by_peer_ahead_ms",
    "held_by_peer_until_ms",
];

/// Columns added to tables that older databases already have, and indexes
/// replaced. (Tables added, such as version 7's `lsync_quarantine`, need
/// nothing here.)
fn migrate(db: Db) -> Result<()> {
    // Version 6: lsync_peers.resync_error (no resync loops, issue 11).
    add_column(db, "lsync_peers", "resync_error", "TEXT")?;
    // Version 7: a peer whose clock is ahead is held (issue 11).
    for col in HELD_COLUMNS {
        add_column(db, "lsync_peers", col, "INTEGER")?;
    }
    // Version 12: a peer gone for good is forgotten (issue 15).
    add_column(db, "lsync_peers", "forgotten_ms", "INTEGER")?;
    // Version 13: row entries and column entries each have an index of
    // their own (lsync_clock_row, lsync_clock_col); the indexes of all
    // entries go. Their rows doubled a split range's metadata.
    db.exec("DROP INDEX IF EXISTS lsync_clock_cover; DROP INDEX IF EXISTS lsync_clock_rid")?;
    // Version 14: a full resync lowers recv_cursor, not what our fences
    // certify (lsync_peers.applied_cursor).
    add_column(db, "lsync_peers", "applied_cursor", "INTEGER")?;
    Ok(())
}

/// `ALTER TABLE table ADD COLUMN col decl`, unless the column is there.
fn add_column(db: Db, table: &str, col: &str, decl: &str) -> Result<()> {
    let has = db.query_i64(
        "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2",
        &[table.into(), col.into()],
    )?;
    if has.is_none() {
        db.exec(&format!("ALTER TABLE {table} ADD COLUMN {col} {decl}"))?;
    }
    Ok(())
}

pub fn get(db: Db, key: &str) -> Result<Value> {
    Ok(db
        .query_value(
            "SELECT value FROM lsync_config WHERE key = ?1",
            &[key.into()],
        )?
        .unwrap_or(Value::Null))
}

pub fn get_text(db: Db, key: &str) -> Result<String> {
    match get(db, key)? {
        Value::Text(s) => Ok(s),
        other => Err(Error::msg(format!(
            "lsync: setting '{key}' is missing or corrupt ({other:?})"
        ))),
    }
}

pub fn get_i64(db: Db, key: &str) -> Result<i64> {
    Ok(get(db, key)?.as_i64().unwrap_or(0))
}

pub fn set(db: Db, key: &str, value: Value) -> Result<()> {
    db.run(
        "INSERT INTO lsync_config(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        &[key.into(), value],
    )
}

/// The decompressed-size cap for changesets (`max_changeset_bytes`).
pub fn max_body(db: Db) -> u64 {
    get_i64(db, "max_changeset_bytes")
        .ok()
        .filter(|v| *v > 0)
        .map_or(lsync_wire::changeset::DEFAULT_MAX_BODY, |v| v as u64)
}

/// The local alias of a device UUID in `lsync_devices`, created if new.
pub fn device_idx(db: Db, id: &str) -> Result<i64> {
    db.run(
        "INSERT OR IGNORE INTO lsync_devices(id) VALUES (?1)",
        &[id.into()],
    )?;
    db.query_i64("SELECT idx FROM lsync_devices WHERE id = ?1", &[id.into()])?
        .ok_or_else(|| Error::msg("lsync: device table is corrupt"))
}

/// The device UUID behind a local alias.
pub fn device_uuid(db: Db, idx: i64) -> Result<String> {
    Ok(db
        .query_text("SELECT id FROM lsync_devices WHERE idx = ?1", &[idx.into()])?
        .unwrap_or_else(|| format!("unknown-device-{idx}")))
}

/// Issues a new HLC: strictly greater than every HLC this database has issued
/// or applied, in any connection or process, because it is persisted in the
/// same write transaction. At the top of the i64 range there is none: that
/// is an error, and the setting stays an integer (`value + 1` would
/// overflow into a REAL that nothing could read again).
pub fn next_hlc(db: Db) -> Result<i64> {
    let wall = lsync_wire::hlc::wall();
    db.query_i64(
        "UPDATE lsync_config SET value = max(value + 1, ?1)
         WHERE key = 'hlc' AND typeof(value) = 'integer' AND value < 9223372036854775807
         RETURNING value",
        &[wall.into()],
    )?
    .map_or_else(|| Err(hlc_stuck(db)), Ok)
}

/// Why the persisted HLC cannot advance (the triggers say `HLC_STUCK`).
fn hlc_stuck(db: Db) -> Error {
    let why = match get(db, "hlc") {
        Ok(Value::Integer(h)) => format!(
            "lsync: the HLC is at the top of its range ({h}, {}): no later HLC exists, so no \
             change can be recorded. No real clock gets there: it was set by hand or from \
             corrupt metadata",
            lsync_wire::hlc::to_text(h)
        ),
        Ok(Value::Null) => "lsync: the HLC setting is missing".to_owned(),
        Ok(other) => {
            format!("lsync: the HLC setting is corrupt ({other:?}); it must be an integer")
        }
        Err(e) => return e,
    };
    Error::msg(why)
}

/// The error of a trigger that cannot advance the HLC.
pub const HLC_STUCK: &str = "lsync: the HLC is at the top of its range (or not an integer), so no \
    change can be recorded; SELECT lsync_hlc_now() says more";
