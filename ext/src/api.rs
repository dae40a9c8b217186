//! The SQL surface: every function `liblsync.so` registers, with the
//! strictest flags that still work (docs/sql-api.md documents each one).

use std::sync::Arc;

use crate::catalog::Mode;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::sql::{Db, Value, DETERMINISTIC, DIRECTONLY, INNOCUOUS};
use crate::track;
use crate::{
    apply, bail, capture, changes, export, flush, merge, restore, schema, snapshot, stability,
};

/// Registers everything on a connection. Called from the entry point.
pub fn register(db: Db) -> Result<()> {
    register_on(db, Conn::new(false))
}

/// Registers everything on a test connection: the test-only hooks work on
/// it. Called from the `sqlite3_lsync_testing_init` entry point.
pub fn register_testing(db: Db) -> Result<()> {
    register_on(db, Conn::new(true))
}

fn register_on(db: Db, conn: Conn) -> Result<()> {
    let conn = Arc::new(conn);
    let pure = DETERMINISTIC | INNOCUOUS;

    db.create_function("lsync_version", 0, pure, |_, _| {
        Ok(env!("CARGO_PKG_VERSION").into())
    })?;
    db.create_function("lsync_debug", 0, INNOCUOUS, |db, _| {
        debug_info(db).map(Value::from)
    })?;
    db.create_function("lsync_device_id", 0, INNOCUOUS, |db, _| {
        crate::setup::ensure(db)?;
        schema::get(db, "device_id")
    })?;
    db.create_function("lsync_library_id", 0, INNOCUOUS, |db, _| {
        crate::setup::ensure(db)?;
        schema::get(db, "library_id")
    })?;
    db.create_function("lsync_library_id", 1, DIRECTONLY, |db, args| {
        let id = uuid_arg("lsync_library_id", &args[0])?;
        join_library(db, &id).map(Value::from)
    })?;
    db.create_function("lsync_hlc_now", 0, DIRECTONLY, |db, _| {
        crate::setup::ensure(db)?;
        schema::next_hlc(db).map(Value::from)
    })?;
    db.create_function("lsync_hlc_text", 1, pure, |_, args| {
        let h = int_arg("lsync_hlc_text", "hlc", &args[0])?;
        Ok(lsync_wire::hlc::to_text(h).into())
    })?;
    for n in [0, 1] {
        db.create_function("lsync_uuid", n, INNOCUOUS, |_, args| new_uuid(args.first()))?;
    }
    db.create_function("lsync_key", -1, pure, |_, args| {
        if args.is_empty() {
            bail!("lsync_key: give the key's parts, at least one");
        }
        Ok(crate::gids::key_uuid(args))
    })?;
    for n in [2, 3] {
        db.create_function("lsync_track", n, DIRECTONLY, |db, args| {
            let table = text_arg("lsync_track", "table", &args[0])?;
            let mode = Mode::parse(&text_arg("lsync_track", "mode", &args[1])?)?;
            let options = match args.get(2) {
                None | Some(Value::Null) => None,
                Some(v) => Some(text_arg("lsync_track", "options", v)?),
            };
            track::track(db, &table, mode, options.as_deref()).map(Value::from)
        })?;
    }
    db.create_function("lsync_untrack", 1, DIRECTONLY, |db, args| {
        let table = text_arg("lsync_untrack", "table", &args[0])?;
        track::untrack(db, &table).map(|b| Value::Integer(b.into()))
    })?;
    db.create_function("lsync_flush", 0, DIRECTONLY, |db, _| {
        flush::flush(db).map(Value::from)
    })?;

    for n in [1, 2, 3, 4] {
        db.create_function("lsync_changeset", n, DIRECTONLY, |db, args| {
            let since = int_arg("lsync_changeset", "since", &args[0])?;
            let budget = changes::Budget {
                changes: positive_arg("max_changes", args.get(1))?,
                bytes: positive_arg("max_bytes", args.get(3))?,
            };
            let except = opt_uuid_arg("lsync_changeset", args.get(2))?;
            export::changeset(db, since, budget, except.as_deref()).map(Value::from)
        })?;
    }
    for n in [1, 2] {
        db.create_function("lsync_missing", n, DIRECTONLY, |db, args| {
            let since = int_arg("lsync_missing", "since", &args[0])?;
            let except = opt_uuid_arg("lsync_missing", args.get(1))?;
            flush::flush(db)?;
            changes::missing(db, since, except.as_deref()).map(Value::from)
        })?;
    }
    db.create_function("lsync_prune", 0, DIRECTONLY, |db, _| {
        stability::prune(db).map(Value::from)
    })?;
    db.create_blob_function("lsync_changeset_info", INNOCUOUS, |db, arg| {
        let blob = blob_arg("lsync_changeset_info", arg)?;
        export::info(db, blob).map(Value::from)
    })?;
    db.create_blob_function("lsync_drift", INNOCUOUS, |db, arg| {
        let blob = blob_arg("lsync_drift", arg)?;
        apply::drift_of(db, blob)
    })?;
    let c = conn.clone();
    db.create_blob_function("lsync_apply", DIRECTONLY, move |db, arg| {
        let blob = blob_arg("lsync_apply", arg)?;
        let report = apply::apply(db, &c, blob)?;
        serde_json::to_string(&report)
            .map(Value::from)
            .map_err(|e| Error::msg(e.to_string()))
    })?;

    let c = conn.clone();
    db.create_function("lsync_conflict_retry", 1, DIRECTONLY, move |db, args| {
        let id = int_arg("lsync_conflict_retry", "id", &args[0])?;
        apply::retry_conflict(db, &c, id).map(Value::from)
    })?;
    db.create_function("lsync_conflict_drop", 1, DIRECTONLY, |db, args| {
        let id = int_arg("lsync_conflict_drop", "id", &args[0])?;
        crate::setup::ensure(db)?;
        merge::drop_conflict(db, id).map(|()| Value::from(1))
    })?;

    for n in [1, 2, 3] {
        let c = conn.clone();
        db.create_function("lsync_snapshot", n, DIRECTONLY, move |db, args| {
            let path = text_arg("lsync_snapshot", "path", &args[0])?;
            let owner = opt_uuid_arg("lsync_snapshot", args.get(1))?;
            let opts: snapshot::Options =
                options_arg("lsync_snapshot", args.get(2), r#"{"sync": true|false}"#)?;
            snapshot::snapshot(db, &c, &path, owner.as_deref(), &opts).map(Value::from)
        })?;
    }
    let c = conn.clone();
    for n in [1, 2] {
        let c = c.clone();
        db.create_function("lsync_restore", n, DIRECTONLY, move |db, args| {
            let path = text_arg("lsync_restore", "path", &args[0])?;
            let opts: restore::Options =
                options_arg("lsync_restore", args.get(1), r#"{"consume": true|false}"#)?;
            restore::restore(db, &c, &path, &opts).map(Value::from)
        })?;
    }

    // Called by the generated triggers, so INNOCUOUS (trusted_schema=OFF).
    let c = conn.clone();
    db.create_function("lsync_capturing", 0, INNOCUOUS, move |_, _| {
        Ok(Value::Integer(c.capturing().into()))
    })?;
    let c = conn.clone();
    db.create_function("lsync_on_insert", 4, INNOCUOUS, move |db, args| {
        let tbl = int_arg("lsync_on_insert", "table id", &args[0])?;
        let rowid = int_arg("lsync_on_insert", "rowid", &args[1])?;
        let null_uuid = int_arg("lsync_on_insert", "uuid_is_null", &args[2])? != 0;
        // Whether the uuid column takes 16-byte blobs. Triggers made by an
        // earlier lsync pass the fill statement here: it is read for
        // that alone, never run.
        let blob = match &args[3] {
            Value::Integer(i) => *i != 0,
            Value::Text(old) => old.contains("lsync_uuid('blob')"),
            _ => false,
        };
        capture::on_insert(db, c.capturing(), tbl, rowid, null_uuid, blob)
    })?;
    let c = conn.clone();
    db.create_function("lsync_on_delete_target", 3, INNOCUOUS, move |db, args| {
        let tbl = int_arg("lsync_on_delete_target", "table id", &args[0])?;
        let rowid = int_arg("lsync_on_delete_target", "rowid", &args[1])?;
        capture::on_delete_target(db, &c, tbl, rowid, &args[2])
    })?;
    db.create_function("lsync_hlc_wall", 0, INNOCUOUS, |_, _| {
        Ok(lsync_wire::hlc::wall().into())
    })?;
    let c = conn.clone();
    db.create_function("lsync_capture_hlc", 1, INNOCUOUS, move |db, args| {
        capture::capture_hlc(db, &c, &args[0])
    })?;
    db.create_function("lsync_deny_owned", 3, INNOCUOUS, |db, args| {
        let id = int_arg("lsync_deny_owned", "table id", &args[0])?;
        let rowid = int_arg("lsync_deny_owned", "rowid", &args[1])?;
        let owner = int_arg("lsync_deny_owned", "owner", &args[2])?;
        capture::deny_owned(db, id, rowid, owner)
    })?;
    let c = conn.clone();
    db.create_function(
        "lsync_debug_set_device_id",
        1,
        DIRECTONLY,
        move |db, args| {
            let id = uuid_arg("lsync_debug_set_device_id", &args[0])?;
            set_device_id_for_testing(db, &c, &id).map(Value::from)
        },
    )?;

    crate::peers::register(db)?;
    crate::forget::register(db)?;
    crate::members::register(db)?;
    crate::status::register(db)?;

    db.create_table_function::<crate::vtab::ChangesTable>("lsync_changes")?;
    crate::statements::register(db)
}

fn text_arg(func: &str, what: &str, v: &Value) -> Result<String> {
    match v {
        Value::Text(s) => Ok(s.clone()),
        Value::Null => bail!("{func}: {what} must not be NULL"),
        other => bail!("{func}: {what} must be text, got {}", describe(other)),
    }
}

/// A value as a person would name it in an error message.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => format!("the integer {i}"),
        Value::Real(f) => format!("the real {f}"),
        Value::Text(s) => format!("the text '{s}'"),
        Value::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

fn blob_arg<'a>(func: &str, v: std::result::Result<&'a [u8], Value>) -> Result<&'a [u8]> {
    match v {
        Ok(b) => Ok(b),
        Err(Value::Null) => bail!("{func}: the changeset must not be NULL"),
        Err(other) => bail!(
            "{func}: expected a changeset BLOB, got {}",
            describe(&other)
        ),
    }
}

fn int_arg(func: &str, what: &str, v: &Value) -> Result<i64> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::Null => bail!("{func}: {what} must not be NULL"),
        other => bail!("{func}: {what} must be an INTEGER, got {}", describe(other)),
    }
}

/// An optional positive limit of `lsync_changeset`: absent or NULL is none.
fn positive_arg(what: &str, v: Option<&Value>) -> Result<usize> {
    match v {
        None | Some(Value::Null) => Ok(usize::MAX),
        Some(v) => match int_arg("lsync_changeset", what, v)? {
            m if m > 0 => Ok(usize::try_from(m).unwrap_or(usize::MAX)),
            m => bail!("lsync_changeset: {what} must be positive, got {m}"),
        },
    }
}

fn uuid_arg(func: &str, v: &Value) -> Result<String> {
    let s = text_arg(func, "id", v)?;
    uuid::Uuid::parse_str(&s)
        .map(|u| u.hyphenated().to_string())
        .map_err(|e| Error::msg(format!("{func}: '{s}' is not a UUID ({e})")))
}

/// An optional device id argument: absent or NULL is `None`.
fn opt_uuid_arg(func: &str, v: Option<&Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => uuid_arg(func, v).map(Some),
    }
}

/// An optional options JSON argument: absent or NULL is the defaults.
/// `shape` shows the accepted object in the error message.
fn options_arg<T: serde::de::DeserializeOwned + Default>(
    func: &str,
    v: Option<&Value>,
    shape: &str,
) -> Result<T> {
    let json = match v {
        None | Some(Value::Null) => return Ok(T::default()),
        Some(v) => text_arg(func, "options", v)?,
    };
    serde_json::from_str(&json).map_err(|e| {
        Error::msg(format!(
            "{func}: bad options {json:?} ({e}); expected {shape}; nothing was done"
        ))
    })
}

fn new_uuid(format: Option<&Value>) -> Result<Value> {
    let u = uuid::Uuid::now_v7();
    match format {
        None | Some(Value::Null) => Ok(u.hyphenated().to_string().into()),
        Some(Value::Text(f)) if f == "text" => Ok(u.hyphenated().to_string().into()),
        Some(Value::Text(f)) if f == "blob" => Ok(u.as_bytes().to_vec().into()),
        Some(other) => bail!(
            "lsync_uuid: format must be 'text' or 'blob', got {}",
            describe(other)
        ),
    }
}

fn debug_info(db: Db) -> Result<String> {
    let sqlite = db
        .query_text("SELECT sqlite_version()", &[])?
        .unwrap_or_default();
    Ok(format!(
        "lsync {} ({} build, {}-{}), SQLite API {}, host SQLite {sqlite}",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::env::consts::ARCH,
        std::env::consts::OS,
        crate::sql::api_version(),
    ))
}

/// Joins another library: allowed until changes from a library have been
/// applied here.
fn join_library(db: Db, id: &str) -> Result<String> {
    crate::setup::ensure(db)?;
    let current = schema::get_text(db, "library_id")?;
    if current != id && schema::get_i64(db, "library_locked")? != 0 {
        bail!(
            "lsync_library_id: this database already holds changes applied from library {current}; \
             it cannot join library {id}. Start from a fresh database file to join another library"
        );
    }
    schema::set(db, "library_id", id.into())?;
    Ok(id.to_owned())
}

/// Test-only: gives this database another device id, after folding pending
/// captures under the old one. Refused except on a test connection, because
/// two databases sharing a device id breaks ownership.
fn set_device_id_for_testing(db: Db, conn: &Conn, id: &str) -> Result<String> {
    if !conn.testing {
        bail!(
            "lsync_debug_set_device_id: test-only; it works only on a connection that loaded \
             the extension with the entry point sqlite3_lsync_testing_init"
        );
    }
    flush::flush(db)?;
    db.savepoint("lsync_device", || {
        let idx = schema::device_idx(db, id)?;
        schema::set(db, "device_id", id.into())?;
        crate::setup::set_device_idx(db, idx)?;
        Ok(id.to_owned())
    })
}
