//! The functions the capture triggers call (`lsync_on_insert`,
//! `lsync_capture_hlc`, `lsync_deny_owned`, `lsync_on_delete_target`); `track` generates the
//! triggers, `flush` folds what they leave.

use crate::bail;
use crate::clock::OP_INSERT;
use crate::conn::{CaptureOff, Conn};
use crate::error::Result;
use crate::fk;
use crate::ident::{q, qm};
use crate::schema;
use crate::sql::{Db, Value};

/// `lsync_on_insert(table_id, rowid, uuid_is_null, blob)`, the whole body of the
/// INSERT trigger, which runs only when its WHEN clause holds. The trigger
/// stays one function call because SQLite sets up a trigger program's
/// cursors for every inserted row, even when WHEN is false; a body with an
/// UPDATE in it costs about a third more per insert.
///
/// It fills a NULL uuid with a UUIDv7. A row inserted at or below the
/// high-water mark (an explicit rowid, a reused one, INSERT OR REPLACE) is
/// not found by the mark, so it is recorded in `lsync_dirty`; on a
/// device-owned table it must not land on another device's row.
pub fn on_insert(
    db: Db,
    capturing: bool,
    tbl: i64,
    rowid: i64,
    uuid_is_null: bool,
    blob: bool,
) -> Result<Value> {
    if uuid_is_null {
        fill_uuid(db, tbl, rowid, blob)?;
    }
    if !capturing {
        return Ok(Value::Null);
    }
    // The WHEN clause held: with a uuid given, the row is below the mark.
    if uuid_is_null {
        let hwm = db.query_i64("SELECT hwm FROM lsync_tables WHERE id = ?1", &[tbl.into()])?;
        if hwm.is_none_or(|h| rowid > h) {
            return Ok(Value::Null);
        }
    }
    let owner = db.query_value(
        "SELECT c.origin FROM (SELECT hi, origin FROM lsync_clock
           WHERE tbl = ?1 AND col IS NULL AND lo <= ?2 ORDER BY lo DESC LIMIT 1) AS c
         JOIN lsync_tables t ON t.id = ?1 AND t.mode = 'device_owned'
         WHERE c.hi >= ?2 AND c.origin IS NOT (SELECT value FROM lsync_config WHERE key = 'device_idx')",
        &[tbl.into(), rowid.into()],
    )?;
    if let Some(Value::Integer(owner)) = owner {
        return deny_owned(db, tbl, rowid, owner);
    }
    let hlc = schema::next_hlc(db)?;
    db.run(
        "INSERT INTO lsync_dirty(tbl, rid, op, hlc, cols) VALUES (?1, ?2, ?4, ?3, 0)
         ON CONFLICT(tbl, rid) DO UPDATE SET op = ?4, hlc = excluded.hlc",
        &[tbl.into(), rowid.into(), hlc.into(), OP_INSERT.into()],
    )?;
    Ok(Value::Null)
}

/// Gives row `rowid` of tracked table `tbl` a UUIDv7 in its uuid column,
/// if that is NULL. The statement is made here from the catalog, quoted:
/// the function is INNOCUOUS (triggers call it), so it runs no SQL that an
/// argument could name.
fn fill_uuid(db: Db, tbl: i64, rowid: i64, blob: bool) -> Result<()> {
    let mut s = db.prepare("SELECT name, uuid_col FROM lsync_tables WHERE id = ?1")?;
    s.bind(1, &tbl.into())?;
    if !s.step()? {
        bail!("lsync: no tracked table #{tbl}");
    }
    let (name, col) = (s.text(0).unwrap_or_default(), s.text(1).unwrap_or_default());
    drop(s);
    if col.is_empty() {
        return Ok(());
    }
    let id = uuid::Uuid::now_v7();
    let id: Value = if blob {
        id.as_bytes().to_vec().into()
    } else {
        id.hyphenated().to_string().into()
    };
    db.run(
        &format!(
            "UPDATE {} SET {c} = ?2 WHERE rowid = ?1 AND {c} IS NULL",
            qm(&name),
            c = q(&col)
        ),
        &[rowid.into(), id],
    )
}

/// Runs `f` with capture off for the triggers that call no function too
/// (the INSERT triggers of `triggers::insert_trigger`, and the UPDATE
/// triggers of device-owned tables), which read `capture_off` in
/// `lsync_config` where the others ask `lsync_capturing()`: so wherever
/// a [`CaptureOff`] is in force while triggers fire. Called inside the
/// caller's savepoint (or the statement of the trigger that called it), so
/// a failure rolls the setting back with the rest, and no other connection
/// ever sees it: only a writer could, and this one holds the write lock.
pub fn quietly<T>(db: Db, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let outer = db
        .query_i64("SELECT 1 FROM lsync_config WHERE key = 'capture_off'", &[])?
        .is_some();
    if outer {
        return f();
    }
    db.run(
        "INSERT INTO lsync_config(key, value) VALUES ('capture_off', 1)",
        &[],
    )?;
    let out = f();
    let cleared = db.run("DELETE FROM lsync_config WHERE key = 'capture_off'", &[]);
    let v = out?;
    cleared.map(|()| v)
}

/// `lsync_capture_hlc(persisted)`, the HLC of an UPDATE captured by a
/// trigger, which passes the persisted HLC as `persisted`: the HLC this
/// function issued earlier in the same transaction, as long as nothing has
/// advanced the clock since, and otherwise a new one (`schema::next_hlc`).
/// One write of `lsync_config` per transaction instead of one per updated
/// row: updates of one transaction share an HLC, which still orders them
/// after every change committed before, and a delete or a re-insert in
/// between advances the clock, so that the next update gets a newer one.
///
/// The transaction is told by the pager's data version, which every commit
/// changes; a rollback may not, but it also rolls the persisted HLC back,
/// below the one remembered, so the two differ again. Equal, they prove
/// that no HLC was issued since by anything (every issue makes the clock
/// larger), nor in another connection (this one holds the write lock).
/// The argument is only compared, never stored, so a view calling this
/// can only advance the clock, as `lsync_hlc_now()` does.
pub fn capture_hlc(db: Db, conn: &Conn, persisted: &Value) -> Result<Value> {
    let version = db.data_version()?;
    let last = *conn.tx_hlc.lock().unwrap_or_else(|e| e.into_inner());
    if let (Some((v, h)), Value::Integer(p)) = (last, persisted) {
        if v == version && h == *p {
            return Ok(Value::Integer(h));
        }
    }
    let hlc = schema::next_hlc(db)?;
    *conn.tx_hlc.lock().unwrap_or_else(|e| e.into_inner()) = Some((version, hlc));
    Ok(Value::Integer(hlc))
}

/// Formats the `owned by` refusal for `lsync_deny_owned`.
pub fn deny_owned(db: Db, tbl_id: i64, rowid: i64, owner_idx: i64) -> Result<Value> {
    let name = db
        .query_text(
            "SELECT name FROM lsync_tables WHERE id = ?1",
            &[tbl_id.into()],
        )?
        .unwrap_or_else(|| format!("table #{tbl_id}"));
    let owner = schema::device_uuid(db, owner_idx)?;
    bail!(
        "lsync: row {rowid} of '{name}' is owned by device {owner}; only its owner may change or delete it"
    )
}

/// `lsync_on_delete_target(table_id, rowid, uuid)`: detaches the rows that
/// pointed at a locally deleted row. The detach is the delete's consequence,
/// not a new local change, so it is not captured.
///
/// It is INNOCUOUS, so that triggers call it with `trusted_schema` off; a
/// view could call it too. So it acts only for a row that is gone, under
/// the id its delete recorded (or none, for a row deleted before its fold):
/// never on the referrers of a live row, nor pointing them at another id.
pub fn on_delete_target(db: Db, conn: &Conn, tbl: i64, rowid: i64, uuid: &Value) -> Result<Value> {
    // With foreign_keys on there is nothing to detach: skip the checks
    // below, which would cost every delete of a referenced row three queries.
    if db.query_i64("PRAGMA foreign_keys", &[])? == Some(1) {
        return Ok(Value::Null);
    }
    let Some(t) = crate::catalog::load_id(db, tbl)? else {
        return Ok(Value::Null);
    };
    let live = db.query_i64(
        &format!("SELECT 1 FROM {} WHERE rowid = ?1", t.src()),
        &[rowid.into()],
    )?;
    let recorded = *uuid == Value::Null
        || db
            .query_i64(
                "SELECT 1 FROM lsync_deleted WHERE tbl = ?1 AND rid = ?2 AND uuid = ?3",
                &[tbl.into(), rowid.into(), uuid.clone()],
            )?
            .is_some();
    if live.is_some() || !recorded {
        return Ok(Value::Null);
    }
    let _off = CaptureOff::new(conn);
    quietly(db, || fk::detach_local(db, tbl, rowid, uuid)).map(|()| Value::Null)
}
