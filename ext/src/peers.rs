//! The replication peers (`lsync_peers`): what this database has applied of
//! each peer's changes, what each peer holds of ours, and how contact with it
//! went. The replicator keeps this bookkeeping through these functions only;
//! the tables stay the extension's.
//!
//! Every writer is `DIRECTONLY`; `lsync_peer` only reads, so it is
//! `INNOCUOUS`.

use lsync_wire::changeset::Fence;
use serde_json::json;

use crate::error::{Error, Result};
use crate::sql::{Db, Value, DIRECTONLY, INNOCUOUS};
use crate::{bail, schema, stability};

pub fn register(db: Db) -> Result<()> {
    db.create_function("lsync_peer", 1, INNOCUOUS, |db, args| {
        let peer = device_arg("lsync_peer", &args[0])?;
        if !has_table(db, "lsync_peers")? {
            return Ok(Value::Null);
        }
        let head = head(db)?;
        Ok(rows(db, head, Some(&peer))?
            .pop()
            .map(|r| Value::from(r.to_string()))
            .unwrap_or(Value::Null))
    })?;
    db.create_function("lsync_peer_contact", 2, DIRECTONLY, |db, args| {
        let peer = device_arg("lsync_peer_contact", &args[0])?;
        let addr = match &args[1] {
            Value::Null => None,
            v => Some(text_arg("lsync_peer_contact", "addr", v)?),
        };
        contact(db, &peer, addr).map(|()| Value::Null)
    })?;
    db.create_function("lsync_peer_received", 3, DIRECTONLY, |db, args| {
        let f = "lsync_peer_received";
        let peer = device_arg(f, &args[0])?;
        let cursor = int_arg(f, "cursor", &args[1])?;
        let caught_up = int_arg(f, "caught_up", &args[2])? != 0;
        received(db, &peer, cursor, caught_up)
    })?;
    db.create_function("lsync_peer_acked", 2, DIRECTONLY, |db, args| {
        let peer = device_arg("lsync_peer_acked", &args[0])?;
        let cursor = int_arg("lsync_peer_acked", "cursor", &args[1])?;
        acked(db, &peer, cursor)
    })?;
    db.create_function("lsync_peer_error", 3, DIRECTONLY, |db, args| {
        let f = "lsync_peer_error";
        let peer = device_arg(f, &args[0])?;
        let error = text_arg(f, "error", &args[1])?;
        let failed_catch_up = int_arg(f, "failed_catch_up", &args[2])? != 0;
        failed(db, &peer, &error, failed_catch_up)
    })?;
    db.create_function("lsync_peer_reset", 1, DIRECTONLY, |db, args| {
        let peer = device_arg("lsync_peer_reset", &args[0])?;
        reset(db, &peer)
    })?;
    db.create_function("lsync_peer_stuck", 2, DIRECTONLY, |db, args| {
        let f = "lsync_peer_stuck";
        let peer = device_arg(f, &args[0])?;
        let error = text_arg(f, "error", &args[1])?;
        stuck(db, &peer, &error)
    })?;
    for (name, ours) in [("lsync_peer_held", true), ("lsync_peer_held_by", false)] {
        db.create_function(name, 3, DIRECTONLY, move |db, args| {
            let peer = device_arg(name, &args[0])?;
            let ahead = opt_int_arg(name, "ahead_ms", &args[1])?;
            let until = opt_int_arg(name, "until_ms", &args[2])?;
            held(db, &peer, ours, ahead, until)
        })?;
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Notes contact with a peer at `addr`, creating its row on first contact.
/// A forgotten peer is refused.
fn contact(db: Db, peer: &str, addr: Option<String>) -> Result<()> {
    crate::setup::ensure(db)?;
    refuse_forgotten(db, peer)?;
    db.run(
        "INSERT INTO lsync_peers(device_id, addr, last_contact) VALUES (?1, ?2, ?3)
         ON CONFLICT(device_id) DO UPDATE SET addr = excluded.addr,
           last_contact = excluded.last_contact",
        &[peer.into(), addr.into(), now_ms().into()],
    )
}

/// A forgotten peer (`forget.rs`) is refused: tombstones it never
/// acknowledged may be pruned.
fn refuse_forgotten(db: Db, peer: &str) -> Result<()> {
    let forgotten = db.query_i64(
        "SELECT forgotten_ms FROM lsync_peers WHERE device_id = ?1",
        &[peer.into()],
    )?;
    if let Some(ms) = forgotten {
        bail!(
            "lsync_peer_contact: device {peer} was forgotten here (lsync_forget_peer, unix ms \
             {ms}): tombstones it never acknowledged may be pruned, so its database could \
             bring deleted rows back. It syncs again only as a new device: a fresh database \
             that joins (lsync run --join)"
        );
    }
    Ok(())
}

/// Runs `sql` on the peer's row. An unknown peer is left alone (its row is
/// made by `lsync_peer_contact`), and the caller's result is then NULL.
fn update(db: Db, sql: &str, params: &[Value]) -> Result<()> {
    crate::setup::ensure(db)?;
    db.run(sql, params)
}

/// The peer's changes up to `cursor` are applied here: called in the
/// transaction of the apply, so that the watermark moves with the data.
/// A completed catch-up clears the failure count, the last error and the
/// resync's error (escalating is allowed again); any apply ends a hold.
fn received(db: Db, peer: &str, cursor: i64, caught_up: bool) -> Result<Value> {
    update(
        db,
        "UPDATE lsync_peers SET recv_cursor = max(recv_cursor, ?2), last_contact = ?3,
           failures = CASE WHEN ?4 THEN 0 ELSE failures END,
           last_error = CASE WHEN ?4 THEN NULL ELSE last_error END,
           resync_error = CASE WHEN ?4 THEN NULL ELSE resync_error END,
           held_ahead_ms = NULL, held_until_ms = NULL
         WHERE device_id = ?1",
        &[
            peer.into(),
            cursor.into(),
            now_ms().into(),
            i64::from(caught_up).into(),
        ],
    )?;
    column(db, "recv_cursor", peer)
}

/// The peer holds our changes up to `cursor` (its ack message). Recorded as
/// a certificate, like the fence of a changeset, and capped the same way.
/// The peer applied something of ours, so it no longer holds our changes.
fn acked(db: Db, peer: &str, cursor: i64) -> Result<Value> {
    db.savepoint("lsync_peer_acked", || {
        update(
            db,
            "UPDATE lsync_peers SET last_contact = ?2,
               held_by_peer_ahead_ms = NULL, held_by_peer_until_ms = NULL
             WHERE device_id = ?1",
            &[peer.into(), now_ms().into()],
        )?;
        let fence = Fence {
            sender: peer.to_owned(),
            receiver: schema::get_text(db, "device_id")?,
            acked: cursor,
        };
        stability::record_ack(db, Some(&fence))?;
        column(db, "acked_cursor", peer)
    })
}

/// A session with the peer failed; a failed catch-up counts towards the
/// escalation to a full resync.
fn failed(db: Db, peer: &str, error: &str, failed_catch_up: bool) -> Result<Value> {
    update(
        db,
        "UPDATE lsync_peers SET last_error = ?2,
           failures = failures + CASE WHEN ?3 THEN 1 ELSE 0 END
         WHERE device_id = ?1",
        &[peer.into(), error.into(), i64::from(failed_catch_up).into()],
    )?;
    column(db, "failures", peer)
}

/// Starts the peer over: its changes are pulled again from cursor 0. The
/// error the resync is for (the last one) is kept until a catch-up
/// completes, so that a resync ending the same way is not started again.
/// What was applied stays applied: `applied_cursor` keeps the highest
/// cursor a reset took back (recv_cursor only grows between resets, so
/// the larger of the two is the highest ever), and our fences keep
/// certifying it (a fence of 0 would make every
/// changeset of ours stale at a peer that pruned on our earlier ACK, while
/// it may refuse ours the same way: neither side could move).
fn reset(db: Db, peer: &str) -> Result<Value> {
    update(
        db,
        "UPDATE lsync_peers SET applied_cursor = max(coalesce(applied_cursor, 0), recv_cursor),
           recv_cursor = 0, failures = 0,
           resync_error = coalesce(last_error, 'unknown error')
         WHERE device_id = ?1",
        &[peer.into()],
    )?;
    column(db, "recv_cursor", peer)
}

/// A session with the peer failed in a way that a full resync would hit
/// again: recorded as its last error and as the resync's error, without
/// counting towards an escalation. Returns the failure count.
fn stuck(db: Db, peer: &str, error: &str) -> Result<Value> {
    update(
        db,
        "UPDATE lsync_peers SET last_error = ?2, resync_error = ?2 WHERE device_id = ?1",
        &[peer.into(), error.into()],
    )?;
    column(db, "failures", peer)
}

/// A peer whose clock is ahead is held, not failed. `ours`: we hold the
/// peer's changes (its newest HLC is `ahead` ms ahead of our clock) until
/// `until` (unix ms, our clock); else the peer holds ours, as it reported
/// (`until` by its clock). NULLs clear it. Returns `until`.
fn held(db: Db, peer: &str, ours: bool, ahead: Option<i64>, until: Option<i64>) -> Result<Value> {
    let (a, u) = if ours {
        ("held_ahead_ms", "held_until_ms")
    } else {
        ("held_by_peer_ahead_ms", "held_by_peer_until_ms")
    };
    update(
        db,
        &format!("UPDATE lsync_peers SET {a} = ?2, {u} = ?3 WHERE device_id = ?1"),
        &[peer.into(), ahead.into(), until.into()],
    )?;
    column(db, u, peer)
}

fn column(db: Db, col: &str, peer: &str) -> Result<Value> {
    Ok(db
        .query_value(
            &format!("SELECT {col} FROM lsync_peers WHERE device_id = ?1"),
            &[peer.into()],
        )?
        .unwrap_or(Value::Null))
}

/// The newest cursor of the change clock: 0 before the first change.
pub fn head(db: Db) -> Result<i64> {
    if !has_table(db, "lsync_config")? {
        return Ok(0);
    }
    Ok((schema::get_i64(db, "next_seq")?.max(1)) - 1)
}

/// Whether lsync's metadata table `name` exists yet (readers create
/// nothing).
pub fn has_table(db: Db, name: &str) -> Result<bool> {
    Ok(db
        .query_i64(
            "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
            &[name.into()],
        )?
        .is_some())
}

/// The SQL condition on `lsync_peers` selecting the peers whose ACKs gate
/// pruning (`stability::GATING`); every peer in a database not yet upgraded
/// to schema version 12, which forgets none (readers create nothing).
pub fn gating(db: Db) -> Result<&'static str> {
    Ok(if has_column(db, "forgotten_ms")? {
        stability::GATING
    } else {
        "1"
    })
}

/// The peers' rows as JSON objects, ordered by device id; only `only`'s when
/// given. `lag` is how far the peer's ack is behind `head`, and `lag_ms` how
/// long ago (by its HLC) the first change it lacks was made; `stuck` says
/// that the last error is one a full resync would hit again
/// (`resync_error`); `held` and `held_by_peer` say whose clock is ahead (see
/// `held`); `tombstones_held` counts the tombstones kept for its ACK.
pub fn rows(db: Db, head: i64, only: Option<&str>) -> Result<Vec<serde_json::Value>> {
    // Readers create nothing: a database not yet upgraded to schema
    // version 6 has no resync_error column, and reads as none.
    let upgraded = has_column(db, "resync_error")?;
    let resync = if upgraded { "resync_error" } else { "NULL" };
    // Likewise version 7's hold columns.
    let held = if has_column(db, "held_until_ms")? {
        schema::HELD_COLUMNS.join(", ")
    } else {
        "NULL, NULL, NULL, NULL".to_owned()
    };
    // And version 12's forgotten peers, which hold no tombstone back.
    let forgotten = if has_column(db, "forgotten_ms")? {
        "forgotten_ms"
    } else {
        "NULL"
    };
    let mut s = db.prepare(&format!(
        "SELECT device_id, addr, recv_cursor, acked_cursor, failures, last_contact, last_error,
           {resync}, {resync} IS NOT NULL AND {resync} IS last_error, {held}, {forgotten},
           (SELECT hlc FROM lsync_clock WHERE seq > acked_cursor ORDER BY seq LIMIT 1),
           CASE WHEN {forgotten} IS NULL THEN
             (SELECT count(*) FROM lsync_clock
              WHERE uuid IS NOT NULL AND op = 2 AND seq > acked_cursor)
           ELSE 0 END
         FROM lsync_peers WHERE ?1 IS NULL OR device_id = ?1 ORDER BY device_id"
    ))?;
    s.bind(1, &only.into())?;
    let now = now_ms();
    let mut out = Vec::new();
    while s.step()? {
        let acked = s.i64(3);
        let lag_ms = s
            .value(14)
            .as_i64()
            .filter(|_| head > acked)
            .map_or(0, |h| (now - lsync_wire::hlc::millis(h) as i64).max(0));
        out.push(json!({
            "device_id": s.text(0),
            "addr": s.text(1),
            "recv_cursor": s.i64(2),
            "acked_cursor": acked,
            "lag": (head - acked).max(0),
            "failures": s.i64(4),
            "last_contact_ms": s.value(5).as_i64(),
            "last_error": s.text(6),
            "resync_error": s.text(7),
            "stuck": s.i64(8) != 0,
            "held": hold(s.value(9).as_i64(), s.value(10).as_i64()),
            "held_by_peer": hold(s.value(11).as_i64(), s.value(12).as_i64()),
            "forgotten_ms": s.value(13).as_i64(),
            "lag_ms": lag_ms,
            "tombstones_held": s.i64(15),
        }));
    }
    Ok(out)
}

/// A hold as JSON: `{"ahead_ms", "until_ms"}`, or null.
fn hold(ahead: Option<i64>, until: Option<i64>) -> serde_json::Value {
    match (ahead, until) {
        (Some(a), Some(u)) => json!({ "ahead_ms": a, "until_ms": u }),
        _ => serde_json::Value::Null,
    }
}

fn has_column(db: Db, col: &str) -> Result<bool> {
    Ok(db
        .query_i64(
            "SELECT 1 FROM pragma_table_info('lsync_peers') WHERE name = ?1",
            &[col.into()],
        )?
        .is_some())
}

pub fn text_arg(func: &str, what: &str, v: &Value) -> Result<String> {
    match v {
        Value::Text(s) => Ok(s.clone()),
        Value::Null => bail!("{func}: {what} must not be NULL"),
        _ => bail!("{func}: {what} must be text"),
    }
}

fn int_arg(func: &str, what: &str, v: &Value) -> Result<i64> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::Null => bail!("{func}: {what} must not be NULL"),
        _ => bail!("{func}: {what} must be an INTEGER"),
    }
}

fn opt_int_arg(func: &str, what: &str, v: &Value) -> Result<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        v => int_arg(func, what, v).map(Some),
    }
}

/// A device id, in the hyphenated lower-case form `lsync_peers` keys on.
pub(crate) fn device_arg(func: &str, v: &Value) -> Result<String> {
    let s = text_arg(func, "device id", v)?;
    uuid::Uuid::parse_str(&s)
        .map(|u| u.hyphenated().to_string())
        .map_err(|e| Error::msg(format!("{func}: '{s}' is not a device id (a UUID): {e}")))
}
