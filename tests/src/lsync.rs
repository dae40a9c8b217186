//! lsync's SQL functions, called the way the tests need them.

use std::collections::BTreeSet;

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::query::{scalar, value_text};

/// One row of `lsync_changes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub seq: i64,
    pub hlc: i64,
    pub origin: String,
    pub tbl: String,
    pub pk: Value,
    pub op: String,
    pub data: serde_json::Value,
}

impl Change {
    /// The primary key (the row's uuid) as text: TEXT uuids as they are,
    /// BLOB uuids in lowercase hex.
    pub fn pk_text(&self) -> String {
        value_text(&self.pk)
    }
    /// The column names present in `data`.
    pub fn data_keys(&self) -> BTreeSet<String> {
        self.data
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// `SELECT * FROM lsync_changes(since)`, with `data` decoded.
pub fn changes(conn: &Connection, since: i64) -> Vec<Change> {
    try_changes(conn, since).expect("lsync_changes")
}

pub fn try_changes(conn: &Connection, since: i64) -> rusqlite::Result<Vec<Change>> {
    let mut s = conn.prepare(
        "SELECT seq, hlc, origin, tbl, pk, op, data FROM lsync_changes(?1) ORDER BY seq",
    )?;
    let rows = s.query_map([since], |r| {
        let data: Option<String> = r.get(6)?;
        Ok(Change {
            seq: r.get(0)?,
            hlc: r.get(1)?,
            origin: r.get(2)?,
            tbl: r.get(3)?,
            pk: r.get(4)?,
            op: r.get(5)?,
            data: data
                .map(|d| serde_json::from_str(&d).expect("data is JSON"))
                .unwrap_or(serde_json::Value::Null),
        })
    })?;
    rows.collect()
}

/// The highest cursor so far (0 when there are no changes).
pub fn cursor(conn: &Connection) -> i64 {
    scalar(conn, "SELECT coalesce(max(seq), 0) FROM lsync_changes(0)")
}

/// `SELECT lsync_flush()`.
pub fn flush(conn: &Connection) -> i64 {
    scalar(conn, "SELECT lsync_flush()")
}

/// `SELECT lsync_library_id()`.
pub fn library_id(c: &Connection) -> String {
    scalar(c, "SELECT lsync_library_id()")
}

/// `SELECT lsync_device_id()`.
pub fn device_id(c: &Connection) -> String {
    scalar(c, "SELECT lsync_device_id()")
}

/// Joins `c` to `library` (`lsync_library_id(library)`), which must take.
pub fn join_library(c: &Connection, library: &str) {
    let joined: String = c
        .query_row("SELECT lsync_library_id(?1)", [library], |r| r.get(0))
        .expect("join library");
    assert_eq!(joined, library);
}

/// A number from an `lsync_apply` or `lsync_restore` report.
pub fn n(report: &serde_json::Value, key: &str) -> i64 {
    report[key]
        .as_i64()
        .unwrap_or_else(|| panic!("report has no '{key}': {report}"))
}

/// Everything `from` has after cursor `since`, applied at `to`; the report.
pub fn send(
    from: &rusqlite::Connection,
    to: &rusqlite::Connection,
    since: i64,
) -> serde_json::Value {
    let blob: Vec<u8> = from
        .query_row("SELECT lsync_changeset(?1)", [since], |r| r.get(0))
        .expect("lsync_changeset");
    let report: String = to
        .query_row("SELECT lsync_apply(?1)", [&blob], |r| r.get(0))
        .unwrap_or_else(|e| panic!("lsync_apply: {e}"));
    serde_json::from_str(&report).expect("report")
}
