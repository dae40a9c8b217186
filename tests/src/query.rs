//! Plain SQL: one value, every row, or the error of a statement that must fail.

use rusqlite::types::{FromSql, Value};
use rusqlite::Connection;

/// A SQL value as text, for comparisons: blobs in lowercase hex.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// The first column of the first row of a query.
pub fn scalar<T: FromSql>(conn: &Connection, sql: &str) -> T {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs a statement that must fail, and returns its error message.
pub fn error_of(conn: &Connection, sql: &str) -> String {
    let outcome = conn.prepare(sql).and_then(|mut s| {
        let mut rows = s.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    });
    match outcome {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) => m,
        Err(e) => e.to_string(),
    }
}

/// `SELECT count(*) FROM <table>`.
pub fn count(conn: &Connection, table: &str) -> i64 {
    scalar(conn, &format!("SELECT count(*) FROM \"{table}\""))
}

/// Every row of a query, each value as [`value_text`], for before/after
/// comparisons.
pub fn query_rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    rows_with(conn, sql, |v| value_text(&v))
}

/// Every row of a query, each value in its `Debug` form, which keeps the
/// type: replicas that agree on `1` but not on `1` vs `'1'` differ here.
pub fn query_rows_typed(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    rows_with(conn, sql, |v| format!("{v:?}"))
}

fn rows_with(conn: &Connection, sql: &str, show: fn(Value) -> String) -> Vec<Vec<String>> {
    let mut s = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = s.column_count();
    s.query_map([], |r| {
        (0..n).map(|i| r.get::<_, Value>(i).map(show)).collect()
    })
    .and_then(|rows| rows.collect())
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
