//! A snapshot file is untrusted input: whoever made it controls every byte,
//! and SQLite runs what a database's schema says (triggers, views, column
//! defaults) once that database is the app's. So a restore takes no schema
//! object from the file. It reads rows only from ordinary tables whose
//! columns it has checked (the tracked tables and lsync's own), and settings
//! only from an allow-list, each within its range. Whatever else the file
//! holds stays there, and the report names it in `ignored`.

use std::collections::HashSet;

use crate::catalog::Table;
use crate::error::{Error, Result};
use crate::snapfile::{not_ordinary_table, Settings};
use crate::sql::{Db, Value};
use crate::{apply, schema};

/// The largest cursor (`next_seq`, `snapshot_cursor`, a peer's watermark)
/// or high-water mark a snapshot may claim. No device issues 2^53 changes,
/// and a value near the top of the i64 range would leave no room for the
/// next one.
pub(super) const MAX_CURSOR: i64 = 1 << 53;

/// The settings a restore reads from a snapshot; any other is ignored.
const READ_KEYS: [&str; 10] = [
    "library_id",
    "schema_version",
    "next_seq",
    "hlc",
    "library_locked",
    "snapshot_device",
    "snapshot_cursor",
    "snapshot_rows",
    "snapshot_created_ms",
    "snapshot_owner",
];

/// Names listed in `ignored`, at most; the rest are counted.
const MAX_LISTED: usize = 20;

/// What a restore takes from a snapshot's settings, validated.
pub(super) struct Taken {
    pub device: String,
    pub cursor: i64,
    pub owner: Option<String>,
    /// The file's next cursor, above every clock entry it holds.
    pub next_seq: i64,
    /// The newest HLC in the file (its setting and its clock), within
    /// the drift guard.
    pub hlc: i64,
}

/// lsync's own tables must be in the file as ordinary tables with exactly
/// the columns they have here. Nothing else is read before this holds: an
/// `lsync_config` that is a view would run the view. `lsync_config` comes
/// first, so that a snapshot of another metadata version is named as such
/// (`check_library`) rather than as one whose tables differ.
pub(super) fn check_metadata(here: Db, s: Db, file: &Settings, first: bool) -> Result<()> {
    let mut st = here.prepare(
        "SELECT name FROM main.sqlite_schema
         WHERE type = 'table' AND name LIKE 'lsync\\_%' ESCAPE '\\'
           AND (name = 'lsync_config') = ?1
         ORDER BY name",
    )?;
    st.bind(1, &i64::from(first).into())?;
    let mut names = Vec::new();
    while st.step()? {
        names.push(st.text(0).unwrap_or_default());
    }
    drop(st);
    for name in names {
        if let Some(why) =
            not_ordinary_table(s, &name).map_err(|e| file.not_snapshot(e.detail()))?
        {
            return Err(file.not_snapshot(&why));
        }
        if columns(here, &name)? != columns(s, &name).map_err(|e| file.not_snapshot(e.detail()))? {
            return Err(
                file.not_snapshot(&format!("its table {name} has other columns than lsync's"))
            );
        }
    }
    Ok(())
}

/// The tracked tables are read for their rows: each must be an ordinary
/// table of the file, not a view (whose SQL would run) or a virtual table.
pub(super) fn check_tracked(s: Db, tables: &[Table]) -> Result<()> {
    for t in tables {
        if let Some(why) = not_ordinary_table(s, &t.name)? {
            return Err(Error::msg(format!(
                "lsync_restore: the snapshot's tracked table '{}' cannot be read: {why}; it is \
                 corrupt or hostile; nothing was restored",
                t.name
            )));
        }
    }
    Ok(())
}

/// A table's columns as `pragma table_xinfo` describes them.
fn columns(c: Db, table: &str) -> Result<Vec<Value>> {
    let mut st = c.prepare(
        "SELECT name, type, \"notnull\", dflt_value, pk, hidden
         FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
    )?;
    st.bind(1, &table.into())?;
    let mut out = Vec::new();
    while st.step()? {
        out.extend((0..6).map(|i| st.value(i)));
    }
    Ok(out)
}

/// The snapshot's identity: made by a device (a UUID), for this library,
/// with this metadata version. Returns the device.
pub(super) fn check_library(db: Db, file: &Settings) -> Result<String> {
    let config = |key: &str| file.get(key);
    let device = file.device()?;
    if !is_uuid(&device) {
        return Err(hostile(format!(
            "device id '{}' is not a UUID",
            clip(&device)
        )));
    }
    let library = schema::get_text(db, "library_id")?;
    let theirs = config("library_id")?;
    if theirs.as_str() != Some(library.as_str()) {
        return Err(Error::msg(format!(
            "lsync_restore: the snapshot belongs to library {}, this database to library {library}; nothing was restored",
            theirs.as_str().map_or("(none)".into(), clip)
        )));
    }
    let version = schema::get_i64(db, "schema_version")?;
    if config("schema_version")?.as_i64() != Some(version) {
        return Err(Error::msg(format!(
            "lsync_restore: the snapshot has lsync metadata version {:?}, this database {version}; \
             nothing was restored",
            config("schema_version")?.as_i64()
        )));
    }
    Ok(device)
}

/// The settings the restore takes, each checked: cursors in range with the
/// clock below `next_seq`, an owner that is a UUID, and HLCs (the setting,
/// the clock's, the parked edits' and the quarantine's) that are
/// non-negative integers within the drift guard.
pub(super) fn take_settings(db: Db, s: Db, file: &Settings, device: String) -> Result<Taken> {
    let config = |key: &str| file.get(key);
    let owner = match config("snapshot_owner")? {
        Value::Null => None,
        Value::Text(o) if is_uuid(&o) => Some(o),
        other => return Err(hostile(format!("owner {} is not a UUID", shown(&other)))),
    };
    let max_seq = s
        .query_i64("SELECT max(seq) FROM lsync_clock", &[])?
        .unwrap_or(0);
    // Absent until a device issues its first cursor: then it is 1.
    let next_seq = match config("next_seq")? {
        Value::Null => Value::Integer(1),
        v => v,
    };
    let next_seq = match next_seq {
        Value::Integer(n) if n > max_seq && n <= MAX_CURSOR => n,
        other => {
            return Err(hostile(format!(
                "next cursor {} is out of range (its clock reaches {max_seq}, the limit is {MAX_CURSOR})",
                shown(&other)
            )))
        }
    };
    let cursor = match config("snapshot_cursor")? {
        Value::Null => return Err(file.not_snapshot("it has no snapshot_cursor setting")),
        Value::Integer(c) if (0..next_seq).contains(&c) => c,
        other => {
            return Err(hostile(format!(
                "cursor {} is out of range (its next cursor is {next_seq})",
                shown(&other)
            )))
        }
    };
    // The snapshot's HLC setting becomes this database's when larger, and
    // its clock's HLCs are read as integers: a REAL or TEXT one would leave
    // a clock that cannot advance, one far ahead a device that can write
    // nothing (the drift guard says how far is too far).
    let Value::Integer(mut hlc) = config("hlc")? else {
        return Err(file.not_snapshot("its HLC setting is not an integer"));
    };
    if hlc < 0 {
        return Err(hostile(format!("HLC setting {hlc} is negative")));
    }
    for table in ["lsync_clock", "lsync_parked", "lsync_quarantine"] {
        let mut st = s.prepare(&format!(
            "SELECT max(hlc), sum(typeof(hlc) <> 'integer' OR hlc < 0) FROM {table}"
        ))?;
        st.step()?;
        if st.i64(1) > 0 {
            return Err(hostile(format!(
                "{table} holds {} HLCs that are not non-negative integers",
                st.i64(1)
            )));
        }
        hlc = hlc.max(st.i64(0));
    }
    apply::check_drift(db, Some(hlc), "lsync_restore", "snapshot").map_err(|e| {
        Error::msg(
            e.detail()
                .replace("nothing was applied", "nothing was restored"),
        )
    })?;
    Ok(Taken {
        device,
        cursor,
        owner,
        next_seq,
        hlc,
    })
}

/// The snapshot's own watermarks, (device, recv_cursor), checked: device
/// ids that are UUIDs and cursors in range.
pub(super) fn peers(s: Db) -> Result<Vec<(String, i64)>> {
    let mut st = s.prepare("SELECT device_id, recv_cursor FROM lsync_peers")?;
    let mut out = Vec::new();
    while st.step()? {
        let (device, cursor) = (st.value(0), st.value(1));
        match (&device, &cursor) {
            (Value::Text(d), Value::Integer(c)) if is_uuid(d) && (0..=MAX_CURSOR).contains(c) => {
                out.push((d.clone(), *c));
            }
            _ => {
                return Err(hostile(format!(
                "lsync_peers holds a watermark of device {} at cursor {}, which is out of range",
                shown(&device),
                shown(&cursor)
            )))
            }
        }
    }
    Ok(out)
}

/// The snapshot's device aliases: its clock names origins by them, and an
/// empty library takes them whole. Each must be an integer alias of a
/// UUID, and every origin the file names must be a device: an alias it
/// holds (the clock) or a UUID (parked edits, the quarantine). A clock
/// entry of no known device, taken whole, left a device that could export
/// nothing again (found by the restore_file fuzz target).
pub(super) fn check_devices(s: Db) -> Result<()> {
    let orphans = s
        .query_i64(
            "SELECT count(*) FROM lsync_clock NOT INDEXED
             WHERE typeof(origin) <> 'integer'
                OR origin NOT IN (SELECT idx FROM lsync_devices NOT INDEXED)",
            &[],
        )?
        .unwrap_or(0);
    if orphans > 0 {
        return Err(hostile(format!(
            "lsync_clock holds {orphans} changes whose origin is no device in lsync_devices"
        )));
    }
    for table in ["lsync_parked", "lsync_quarantine"] {
        let bad = s
            .query_i64(
                &format!(
                    "SELECT count(*) FROM {table}
                     WHERE typeof(origin) <> 'text' OR length(origin) <> 36
                        OR lower(origin) NOT GLOB ?1"
                ),
                &[uuid_glob().into()],
            )?
            .unwrap_or(0);
        if bad > 0 {
            return Err(hostile(format!(
                "{table} holds {bad} changes whose origin is not a device UUID"
            )));
        }
    }
    let bad = s
        .query_i64(
            "SELECT count(*) FROM lsync_devices NOT INDEXED
             WHERE typeof(idx) <> 'integer' OR typeof(id) <> 'text' OR length(id) <> 36
                OR lower(id) NOT GLOB ?1",
            &[uuid_glob().into()],
        )?
        .unwrap_or(0);
    if bad > 0 {
        return Err(hostile(format!(
            "lsync_devices holds {bad} device ids that are not UUIDs"
        )));
    }
    Ok(())
}

/// A GLOB pattern matching a hyphenated UUID in lowercase.
fn uuid_glob() -> String {
    [8, 4, 4, 4, 12]
        .iter()
        .map(|n| "[0-9a-f]".repeat(*n))
        .collect::<Vec<_>>()
        .join("-")
}

/// What the file holds that a restore leaves there and that a snapshot of
/// this database's schema would not hold: objects that are not here with
/// the same SQL (lsync's own objects by name and type: their SQL names
/// table ids), and settings off the allow-list.
pub(super) fn ignored(here: Db, s: Db, tracked: &[Table]) -> Result<Vec<String>> {
    let mut ours = HashSet::new();
    let mut st = here.prepare("SELECT type, lower(name), sql FROM main.sqlite_schema")?;
    while st.step()? {
        ours.insert((st.text(0), st.text(1), st.text(2)));
        ours.insert((st.text(0), st.text(1), None));
    }
    drop(st);
    let tracked: HashSet<String> = tracked.iter().map(|t| t.name.to_lowercase()).collect();
    let mut out = Vec::new();
    let mut st = s.prepare(
        "SELECT type, lower(name), sql, name FROM main.sqlite_schema
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid",
    )?;
    while st.step()? {
        let (kind, name, sql) = (st.text(0), st.text(1), st.text(2));
        let lsync = name.as_deref().is_some_and(|n| n.starts_with("lsync_"));
        let tracked_table =
            kind.as_deref() == Some("table") && name.as_ref().is_some_and(|n| tracked.contains(n));
        let known = if lsync {
            ours.contains(&(kind.clone(), name.clone(), None))
        } else {
            ours.contains(&(kind.clone(), name.clone(), sql))
        };
        if !known && !tracked_table {
            out.push(format!(
                "{} {}",
                kind.unwrap_or_default(),
                clip(&st.text(3).unwrap_or_default())
            ));
        }
    }
    drop(st);
    let allowed = serde_json::to_string(&READ_KEYS).map_err(|e| Error::msg(e.to_string()))?;
    let mut st = s.prepare(
        "SELECT key FROM lsync_config WHERE key NOT IN (SELECT value FROM json_each(?1)) ORDER BY 1",
    )?;
    st.bind(1, &allowed.into())?;
    while st.step()? {
        out.push(format!("setting {}", clip(&st.text(0).unwrap_or_default())));
    }
    if out.len() > MAX_LISTED {
        let more = out.len() - MAX_LISTED;
        out.truncate(MAX_LISTED);
        out.push(format!("and {more} more"));
    }
    Ok(out)
}

/// The refusal of a snapshot whose `what` no lsync_snapshot writes.
fn hostile(what: String) -> Error {
    Error::msg(format!(
        "lsync_restore: the snapshot's {what}; it is corrupt or hostile, refusing it; \
         nothing was restored"
    ))
}

/// A device id as lsync makes them: a hyphenated UUID.
fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

/// A value from the file, short enough for an error message.
fn shown(v: &Value) -> String {
    match v {
        Value::Text(t) => format!("'{}'", clip(t)),
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

/// At most 64 characters of a name from the file.
fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}
